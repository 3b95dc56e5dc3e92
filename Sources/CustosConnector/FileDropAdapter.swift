import CustosModel
import Foundation

/// For data no program can reach: the provider's staff export it by hand and drop the file
/// into a folder, named after the request: `<request id>.ndjson` or `<request id>.csv`
/// (`AdapterOutput`'s formats; one file for every category served this way). Write it under
/// another name (e.g. with `.partial` at the end) and rename it when complete: the connector
/// takes only those two names. It waits for the file (up to the adapter time-out), moves it
/// into the job directory (so that it is read once, and again after a crash), checks every
/// line and takes the records of each category it serves.
public struct FileDropAdapter: Sendable {
    public var directory: String
    public var timeout: Duration
    public var pollInterval: Duration
    public var normalisation: RecordGate.Settings

    public init(directory: String, timeout: Duration, pollInterval: Duration = .seconds(2), normalisation: RecordGate.Settings = .init()) {
        self.directory = directory
        self.timeout = timeout
        self.pollInterval = pollInterval
        self.normalisation = normalisation
    }

    /// The names a drop for `id` may have.
    public static func names(_ id: UUID) -> [String] { ["\(id.lowercased).ndjson", "\(id.lowercased).csv"] }

    /// Waits for the drop and moves it to `claimed` (a path in the job directory, without its
    /// extension); returns the claimed file. A drop claimed before (a resumed job) is used again.
    public func claim(_ id: UUID, into claimed: URL) async throws -> URL {
        let fm = FileManager.default
        for ext in ["ndjson", "csv"] where fm.fileExists(atPath: claimed.appendingPathExtension(ext).path) {
            return claimed.appendingPathExtension(ext)
        }
        let start = ContinuousClock.now
        while true {
            for name in Self.names(id) {
                let source = URL(fileURLWithPath: directory).appendingPathComponent(name)
                guard fm.fileExists(atPath: source.path) else { continue }
                let target = claimed.appendingPathExtension(source.pathExtension)
                do {
                    try fm.moveItem(at: source, to: target)
                } catch {
                    // Another file system: copy, make it durable, then remove the drop.
                    try fm.copyItem(at: source, to: target)
                    let h = try FileHandle(forUpdating: target)
                    try h.synchronize()
                    try h.close()
                    try fm.removeItem(at: source)
                }
                return target
            }
            guard ContinuousClock.now - start < timeout else {
                throw ExecAdapter.Failure(reason: "no export was dropped as \(Self.names(id).joined(separator: " or ")) in \(directory) within the time-out")
            }
            try await Task.sleep(for: pollInterval)
        }
    }

    /// Reads a claimed drop for one category: its records (the other categories' are skipped
    /// here; each category served by file drop reads the same file) to `sink`.
    public func read(_ file: URL, request: ApprovedRequest, category: DataCategory, sink: @escaping ExecAdapter.Sink,
                     coverage: @escaping ExecAdapter.CoverageSink) throws -> ExecAdapter.Output {
        var output = AdapterOutput(gate: RecordGate(request: request, category: category, settings: normalisation), category: category,
                                   holdsOtherCategories: true, sink: sink, coverage: coverage)
        guard let handle = FileHandle(forReadingAtPath: file.path) else { throw ExecAdapter.Failure(reason: "cannot read the claimed drop \(file.lastPathComponent)") }
        defer { try? handle.close() }
        while let block = try handle.read(upToCount: 1 << 20), !block.isEmpty {
            try Task.checkCancellation()
            try output.consume(block)
        }
        try output.finish()
        var dropped = output.dropped
        // Records of the other requested categories the file holds are read in their turn.
        dropped[.elsewhere] = nil
        return ExecAdapter.Output(dropped: dropped, unreadableLines: output.unreadableLines, notSent: output.notSent)
    }
}
