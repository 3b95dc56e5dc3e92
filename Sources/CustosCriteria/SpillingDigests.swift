import Foundation

/// The judge's record digests kept on disk, so that a verdict takes constant memory whatever
/// the package's size (the connector's foreseen verdict, the broker's as chunks arrive, and `custos verify` on a court
/// expert's laptop): each digest (16 bytes) goes to one of 256 partition files by its first
/// byte, and at the end each partition is counted on its own in memory (1/256th of the
/// digests at a time: 5 M records take about 0.3 MiB then). The files and `directory` are
/// removed afterwards.
///
/// `@unchecked Sendable`: one judge uses it, from one task.
public final class SpillingDigests: DigestStore, @unchecked Sendable {
    static let partitions = 256
    /// Each partition's write buffer: 256 of them take 1 MiB.
    static let bufferBytes = 4 << 10
    public let directory: URL
    private var buffers: [[UInt8]]
    /// True when a partition file could not be written: the duplicate count is then
    /// incomplete, and must be reported so rather than trusted.
    public private(set) var failed = false

    /// Errors: `directory` cannot be created.
    public init(directory: URL) throws {
        self.directory = directory
        try? FileManager.default.removeItem(at: directory)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        buffers = Array(repeating: [], count: Self.partitions)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    func file(_ p: Int) -> URL { directory.appendingPathComponent("\(p)") }

    public func insert(_ a: UInt64, _ b: UInt64) -> Bool {
        let p = Int(a >> 56)
        withUnsafeBytes(of: a.littleEndian) { buffers[p].append(contentsOf: $0) }
        withUnsafeBytes(of: b.littleEndian) { buffers[p].append(contentsOf: $0) }
        if buffers[p].count >= Self.bufferBytes { flush(p) }
        return true
    }

    private func flush(_ p: Int) {
        guard !buffers[p].isEmpty else { return }
        // Opened for each block and closed again: a judge holds no file descriptors between
        // blocks, so that a broker judging many packages at once does not run out of them.
        let fd = open(file(p).path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        if fd < 0 {
            failed = true
        } else {
            let n = buffers[p].withUnsafeBytes { write(fd, $0.baseAddress!, $0.count) }
            if n != buffers[p].count { failed = true }
            close(fd)
        }
        buffers[p].removeAll(keepingCapacity: true)
    }

    public func finish() -> Int {
        var duplicates = 0
        for p in 0..<Self.partitions {
            flush(p)
            guard let data = FileManager.default.contents(atPath: file(p).path) else { continue }
            var set = DigestSet(capacity: data.count / 16)
            data.withUnsafeBytes { raw in
                for i in stride(from: 0, to: raw.count - 15, by: 16) {
                    let a = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i, as: UInt64.self))
                    let b = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: i + 8, as: UInt64.self))
                    if !set.insert(a, b) { duplicates += 1 }
                }
            }
            try? FileManager.default.removeItem(at: file(p))
        }
        buffers = Array(repeating: [], count: Self.partitions)
        return duplicates
    }
}
