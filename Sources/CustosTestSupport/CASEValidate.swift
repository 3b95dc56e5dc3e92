import Foundation

/// case-utils' `case_validate` (PyPI, installed by ops/install into `.custos/python`, with the
/// CASE/UCO ontology bundled, so offline), for tests: `CUSTOS_CASE_VALIDATE`, else the
/// project's own virtual environment.
public enum CASEValidate {
    public struct Missing: Error, CustomStringConvertible {
        public var description = "case_validate not found: run ops/install (it puts case-utils in .custos/python) or set CUSTOS_CASE_VALIDATE"
    }

    public static var executable: String? {
        if let path = ProcessInfo.processInfo.environment["CUSTOS_CASE_VALIDATE"] { return path }
        var root = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { root.deleteLastPathComponent() }
        let path = root.appendingPathComponent(".custos/python/bin/case_validate").path
        return FileManager.default.isExecutableFile(atPath: path) ? path : nil
    }

    /// Validates a JSON-LD graph against the newest CASE release case-utils bundles; nil when
    /// it conforms (no violation, warning or information), else the report.
    public static func check(_ graph: [UInt8]) async throws -> String? {
        try await offPool { try checkBlocking(graph) }
    }

    static func checkBlocking(_ graph: [UInt8]) throws -> String? {
        guard let executable else { throw Missing() }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("case-\(UUID()).jsonld")
        try Data(graph).write(to: file)
        defer { try? FileManager.default.removeItem(at: file) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = [file.path]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        return p.terminationStatus == 0 ? nil : text
    }
}
