import CustosEvidence
import CustosModel
import Foundation
import Synchronization

/// How far each result's spool has been written, and whether it is closed (its category's
/// adapter has finished, so no record will be added): what the package streamer reads up to
/// while the adapters still run (package protocol v2, chunks go out during extraction).
final class SpoolProgress: Sendable {
    private let state: Mutex<(sizes: [Int64], closed: [Bool])>
    let directory: URL

    init(directory: URL, results: Int) {
        self.directory = directory
        state = Mutex((Array(repeating: 0, count: results), Array(repeating: false, count: results)))
    }

    /// Every spool in `directory` as it is on disk, every result closed: a finished extraction.
    static func finished(directory: URL, results: Int) -> SpoolProgress {
        let p = SpoolProgress(directory: directory, results: results)
        for i in 0..<results {
            let size = (try? FileManager.default.attributesOfItem(atPath: ResultSpools.file(directory, i).path)[.size] as? NSNumber)?.int64Value ?? 0
            p.set(i, size: size, closed: true)
        }
        return p
    }

    var count: Int { state.withLock { $0.sizes.count } }

    func set(_ i: Int, size: Int64? = nil, closed: Bool? = nil) {
        state.withLock { s in
            if let size { s.sizes[i] = size }
            if let closed { s.closed[i] = closed }
        }
    }

    func grow(_ i: Int, by n: Int) { state.withLock { $0.sizes[i] += Int64(n) } }

    /// Result `i`'s bytes written so far, and whether it is closed.
    func snapshot(_ i: Int) -> (size: Int64, closed: Bool) { state.withLock { ($0.sizes[i], $0.closed[i]) } }
}

/// One spool file per result while adapters run (`results/<index>.ndjson` in the job
/// directory), so that the content can be grouped by result without holding it in memory.
/// Records are buffered per result and written in blocks; each result's record count, size
/// and records Merkle root are built as records arrive. When a category's adapter has
/// finished, its spools are made durable and `results/done-<category>.json` says so (with what
/// the adapter declared and dropped): after a crash that category is not extracted again, its
/// trees rebuilt from its spools; a category that was running starts again from empty.
///
/// `@unchecked Sendable`: a request's adapters run one after another and each calls the sink
/// from its single reading thread, so the state is never touched concurrently.
final class ResultSpools: @unchecked Sendable {
    let directory: URL
    let index: [ResultKey: Int]
    private(set) var trees: [RecordTree]
    private var buffers: [[UInt8]]
    private var buffered = 0
    /// The last record's result (consecutive records mostly share it).
    private var last: (key: ResultKey, index: Int)?
    /// What the streamer may read.
    let progress: SpoolProgress

    struct ResultKey: Hashable { var target: Target; var category: DataCategory }

    /// Results are ordered target by target, then category by category, as in the request.
    init(directory: URL, request: ApprovedRequest) throws {
        self.directory = directory
        var index: [ResultKey: Int] = [:]
        for t in request.targets { for c in request.categories { index[ResultKey(target: t, category: c)] = index.count } }
        self.index = index
        trees = Array(repeating: RecordTree(), count: index.count)
        buffers = Array(repeating: [], count: index.count)
        progress = SpoolProgress(directory: directory, results: index.count)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    /// When the extraction first started (kept, so that a resumed one keeps it).
    func asOf() throws -> String {
        let url = directory.appendingPathComponent("as-of")
        if let data = FileManager.default.contents(atPath: url.path), let text = String(data: data, encoding: .utf8), Timestamp.parse(text) != nil {
            return text
        }
        let now = Timestamp.now()
        try Data(now.utf8).write(to: url, options: .atomic)
        return now
    }

    /// What a finished category's adapter left besides its records.
    struct Done: Codable, Sendable {
        struct Declared: Codable, Sendable {
            var target: Target
            var coverage: Manifest.Coverage
        }
        var dropped: [String: Int]
        var coverage: [Declared]
        /// The unreadable records by where they belong and why (absent in jobs begun before
        /// the manifest's `notSent`).
        var notSent: [Extraction.NotSentCount]?
    }

    func doneFile(_ category: DataCategory) -> URL { directory.appendingPathComponent("done-\(category.rawValue).json") }

    /// The indices of a category's results.
    func results(of category: DataCategory) -> [Int] { index.filter { $0.key.category == category }.map(\.value).sorted() }

    /// Before a category's adapter runs: whatever an interrupted run left is removed.
    func begin(_ category: DataCategory) throws {
        try flush()
        for i in results(of: category) {
            try? FileManager.default.removeItem(at: file(i))
            trees[i] = RecordTree()
            progress.set(i, size: 0, closed: false)
        }
    }

    /// A category no adapter serves: its results are closed, empty.
    func close(_ category: DataCategory) {
        for i in results(of: category) { progress.set(i, closed: true) }
    }

    /// After it finished: its spools and the marker are made durable.
    func finish(_ category: DataCategory, _ done: Done) throws {
        try flush()
        for i in results(of: category) where FileManager.default.fileExists(atPath: file(i).path) {
            let h = try FileHandle(forUpdating: file(i))
            try h.synchronize()
            try h.close()
        }
        let data = try JSONEncoder().encode(done)
        _ = FileManager.default.createFile(atPath: doneFile(category).path, contents: data)
        let h = try FileHandle(forUpdating: doneFile(category))
        try h.synchronize()
        try h.close()
        close(category)
    }

    /// A category finished before a restart: its marker, and its results' trees rebuilt from
    /// the spools. Nil when it had not finished.
    func restore(_ category: DataCategory) throws -> Done? {
        guard let data = FileManager.default.contents(atPath: doneFile(category).path) else { return nil }
        let done = try JSONDecoder().decode(Done.self, from: data)
        for i in results(of: category) {
            trees[i] = RecordTree()
            guard let h = FileHandle(forReadingAtPath: file(i).path) else { continue }
            defer { try? h.close() }
            var pending: [UInt8] = []
            while let block = try h.read(upToCount: 1 << 20), !block.isEmpty {
                pending.append(contentsOf: block)
                var start = 0
                while let nl = pending[start...].firstIndex(of: 0x0A) {
                    pending.withUnsafeBytes { trees[i].append(record: UnsafeRawBufferPointer(rebasing: $0[start..<nl])) }
                    start = nl + 1
                }
                pending.removeFirst(start)
            }
        }
        for i in results(of: category) {
            progress.set(i, size: trees[i].size, closed: true)
        }
        return done
    }

    func file(_ i: Int) -> URL { Self.file(directory, i) }

    /// Result `i`'s spool in `directory`.
    static func file(_ directory: URL, _ i: Int) -> URL { directory.appendingPathComponent("\(i).ndjson") }

    func append(target: Target, category: DataCategory, record: UnsafeRawBufferPointer) throws {
        let i: Int
        if let last, last.key.category == category, last.key.target == target {
            i = last.index
        } else {
            let key = ResultKey(target: target, category: category)
            guard let found = index[key] else { return }
            last = (key, found)
            i = found
        }
        trees[i].append(record: record)
        buffers[i].append(contentsOf: record)
        buffers[i].append(0x0A)
        buffered += record.count + 1
        if buffered > 8 << 20 || buffers[i].count > 256 << 10 { try flush() }
    }

    func flush() throws {
        for (i, bytes) in buffers.enumerated() where !bytes.isEmpty {
            let url = file(i)
            if !FileManager.default.fileExists(atPath: url.path) { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
            let h = try FileHandle(forWritingTo: url)
            try h.seekToEnd()
            try h.write(contentsOf: bytes)
            try h.close()
            progress.grow(i, by: bytes.count)
        }
        for i in buffers.indices { buffers[i].removeAll(keepingCapacity: true) }
        buffered = 0
    }

    /// The content — every spool in `directory`, in result order — in blocks of up to 1 MiB.
    static func readContent(directory: URL, results: Int, _ body: (UnsafeRawBufferPointer) throws -> Void) throws {
        for i in 0..<results {
            guard let input = FileHandle(forReadingAtPath: file(directory, i).path) else { continue }
            defer { try? input.close() }
            while let block = try input.read(upToCount: 1 << 20), !block.isEmpty {
                try block.withUnsafeBytes { try body($0) }
            }
        }
    }
}
