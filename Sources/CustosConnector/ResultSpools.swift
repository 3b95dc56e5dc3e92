import CustosEvidence
import CustosModel
import Foundation

/// One spool file per result while adapters run (`results/<index>.ndjson` in the job
/// directory), so that the content can be grouped by result without holding it in memory.
/// Records are buffered per result and written in blocks; each result's record count, size
/// and records Merkle root are built as records arrive.
///
/// `@unchecked Sendable`: a request's adapters run one after another and each calls the sink
/// from its single reading thread, so the state is never touched concurrently.
final class ResultSpools: @unchecked Sendable {
    let directory: URL
    let index: [ResultKey: Int]
    private(set) var trees: [RecordTree]
    private var buffers: [Int: [UInt8]] = [:]
    private var buffered = 0

    struct ResultKey: Hashable { var target: Target; var category: DataCategory }

    /// Results are ordered target by target, then category by category, as in the request.
    init(directory: URL, request: ApprovedRequest) throws {
        self.directory = directory
        var index: [ResultKey: Int] = [:]
        for t in request.targets { for c in request.categories { index[ResultKey(target: t, category: c)] = index.count } }
        self.index = index
        trees = Array(repeating: RecordTree(), count: index.count)
        try? FileManager.default.removeItem(at: directory)  // a rerun starts from empty
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    func file(_ i: Int) -> URL { directory.appendingPathComponent("\(i).ndjson") }

    func append(target: Target, category: DataCategory, record: UnsafeRawBufferPointer) throws {
        guard let i = index[ResultKey(target: target, category: category)] else { return }
        trees[i].append(record: record)
        buffers[i, default: []].append(contentsOf: record)
        buffers[i]!.append(0x0A)
        buffered += record.count + 1
        if buffered > 8 << 20 || buffers[i]!.count > 256 << 10 { try flush() }
    }

    func flush() throws {
        for (i, bytes) in buffers where !bytes.isEmpty {
            let url = file(i)
            if !FileManager.default.fileExists(atPath: url.path) { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
            let h = try FileHandle(forWritingTo: url)
            try h.seekToEnd()
            try h.write(contentsOf: bytes)
            try h.close()
        }
        buffers.removeAll(keepingCapacity: true)
        buffered = 0
    }

    /// Concatenates the spools in result order into `content`, durably, and removes them.
    func concatenate(into content: URL) throws {
        try flush()
        _ = FileManager.default.createFile(atPath: content.path, contents: nil)
        let out = try FileHandle(forWritingTo: content)
        defer { try? out.close() }
        for i in 0..<trees.count where FileManager.default.fileExists(atPath: file(i).path) {
            let input = try FileHandle(forReadingFrom: file(i))
            while let block = try input.read(upToCount: 1 << 20), !block.isEmpty { try out.write(contentsOf: block) }
            try input.close()
        }
        try out.synchronize()
        try? FileManager.default.removeItem(at: directory)
    }
}
