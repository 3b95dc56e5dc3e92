import Foundation

/// ETSI TS 103 120's schemas and examples, for tests: `../shared/etsi-ts-103120` beside the
/// project (found by walking up from this file), or `CUSTOS_ETSI_TS_103120_DIR`. They are
/// ETSI's data and are not copied into the repository.
public enum ETSISchemas {
    public struct Missing: Error, CustomStringConvertible {
        public var description = "ETSI TS 103 120 schemas not found: put them in ../shared/etsi-ts-103120 or set CUSTOS_ETSI_TS_103120_DIR"
    }

    public static let directory: String? = {
        if let dir = ProcessInfo.processInfo.environment["CUSTOS_ETSI_TS_103120_DIR"] { return dir }
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            let candidate = url.appendingPathComponent("shared/etsi-ts-103120").path
            if FileManager.default.fileExists(atPath: candidate + "/schema/all.xsd") { return candidate }
        }
        return nil
    }()

    /// The directory, or `Missing`.
    public static func required() throws -> String {
        guard let directory else { throw Missing() }
        return directory
    }

    /// `xmllint --noout --nonet --schema all.xsd`: nil when the message validates, else
    /// xmllint's complaint. Waits for the process on a thread of its own, never on Swift
    /// concurrency's cooperative pool (two threads on this machine: a test blocking one
    /// stalls every other test's timers).
    public static func xmllint(_ xml: [UInt8]) async throws -> String? {
        try await offPool { try xmllintBlocking(xml) }
    }

    static func xmllintBlocking(_ xml: [UInt8]) throws -> String? {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("hi1-\(UUID()).xml")
        try Data(xml).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/xmllint")
        p.arguments = ["--noout", "--nonet", "--schema", try required() + "/schema/all.xsd", file.path]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return p.terminationStatus == 0 ? nil : text
    }
}

/// Runs `body` on a new thread and waits for it without holding a cooperative thread.
public func offPool<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try body() }) }.start()
    }
}
