import CustosCriteria
import Crypto
import CustosMerkle
import CustosModel
import Foundation

/// Package protocol v2 (`schemas/package/SPEC.md` §7): a package's content checked chunk by
/// chunk as the chunks arrive, before the manifest, which comes last. Chunks are fed in index
/// order (the caller buffers one that arrives early); each one's SHA-256 has been checked
/// against its authenticated envelope. Built as they pass: the chunks Merkle root (§4), a
/// digest of the chunk sizes, and per result (as each chunk's `results` places them) the
/// record count, size and records Merkle root. `finish(against:)` then compares them with the
/// signed manifest without reading a byte again: memory is O(results + log chunks), however
/// large the package.
public struct ArrivingContent: Sendable {
    /// What one result's bytes came to.
    public struct ResultTotals: Sendable, Hashable {
        public var count: Int
        public var size: Int64
        public var root: String
    }

    /// Chunks consumed so far (the next index expected).
    public private(set) var chunkCount = 0
    /// Bytes consumed so far.
    public private(set) var size: Int64 = 0
    private var chunkTree = MerkleTree.Builder()
    private var chunkSizes = SHA256()
    private var closed: [Int: ResultTotals] = [:]
    private var current: (index: Int, records: RecordTree)?
    private var recordHash = MerkleTree.leafHasher()
    private var recordLength = 0
    private var failures: [PackageVerification.Failure] = []
    /// Whether to keep each record's leaf digest for `takeLeaves()` (for the judge).
    private let collectsLeaves: Bool
    private var leaves: [RecordLeaf] = []

    /// `collectsLeaves`: keep each complete record's leaf digest until `takeLeaves()`, so
    /// that a `PackageJudge` fed the same chunks need not hash the records again.
    public init(collectsLeaves: Bool = false) {
        self.collectsLeaves = collectsLeaves
    }

    /// The leaf digests of the records completed since the last call (content order; empty
    /// unless made with `collectsLeaves`), for `PackageJudge.consume(content:leaves:)`.
    public mutating func takeLeaves() -> [RecordLeaf] {
        defer { leaves.removeAll(keepingCapacity: true) }
        return leaves
    }

    private mutating func fail(_ code: PackageVerification.Failure.Code, _ detail: String) {
        if failures.count < 1000 { failures.append(.init(code: code, detail: detail)) }
    }

    /// The next chunk: its bytes, the SHA-256 already checked against its envelope (32 bytes),
    /// and its envelope's `results` (checked well formed, `ChunkBody.resultsAreWellFormed`).
    public mutating func consume(chunk bytes: UnsafeRawBufferPointer, sha256 digest: [UInt8], results: [ChunkBody.ResultStart]) {
        precondition(digest.count == 32 && !results.isEmpty)
        var leaf = MerkleTree.leafHasher()
        leaf.update(data: digest)
        chunkTree.append(leafDigest: leaf.finalize())
        withUnsafeBytes(of: UInt64(bytes.count).bigEndian) { chunkSizes.update(bufferPointer: $0) }
        for (k, start) in results.enumerated() {
            let end = k + 1 < results.count ? results[k + 1].offset : bytes.count
            if k > 0 || current?.index != start.result {
                // A result ends at a chunk boundary or inside this chunk; the next begins.
                if let current, start.result < current.index {
                    fail(.resultSize, "chunk \(chunkCount) goes back from result \(current.index) to result \(start.result)")
                }
                closeCurrent()
                if closed[start.result] != nil { fail(.resultSize, "result \(start.result) appears twice in the content") }
                current = (start.result, RecordTree())
            }
            consumeRecords(UnsafeRawBufferPointer(rebasing: bytes[start.offset..<end]), at: size + Int64(start.offset))
        }
        size += Int64(bytes.count)
        chunkCount += 1
    }

    public mutating func consume(chunk bytes: [UInt8], sha256 digest: [UInt8], results: [ChunkBody.ResultStart]) {
        bytes.withUnsafeBytes { consume(chunk: $0, sha256: digest, results: results) }
    }

    /// A chunk that could not be read back (from a store): the package cannot be checked whole.
    public mutating func unreadable(_ index: Int, _ why: String) {
        fail(.chunkMissing, "chunk \(index) could not be read: \(why)")
    }

    /// `offset`: where `bytes` begin in the content.
    private mutating func consumeRecords(_ bytes: UnsafeRawBufferPointer, at offset: Int64) {
        guard !bytes.isEmpty, let base = bytes.baseAddress else { return }
        var start = 0
        while start < bytes.count {
            var i = bytes.count
            if let nl = memchr(base + start, 0x0A, bytes.count - start) { i = base.distance(to: UnsafeRawPointer(nl)) }
            recordHash.update(bufferPointer: UnsafeRawBufferPointer(start: base + start, count: i - start))
            recordLength += i - start
            if i < bytes.count {
                let leaf = recordHash.finalize()
                current!.records.appendLeaf(leaf, length: recordLength)
                if collectsLeaves { leaves.append(RecordLeaf(end: offset + Int64(i), length: recordLength, digest: leaf)) }
                recordHash = MerkleTree.leafHasher()
                recordLength = 0
                i += 1
            }
            start = i
        }
    }

    private mutating func closeCurrent() {
        guard let c = current else { return }
        if recordLength != 0 {
            fail(.resultSize, "result \(c.index) does not end with a newline")
            recordHash = MerkleTree.leafHasher()
            recordLength = 0
        }
        closed[c.index] = ResultTotals(count: c.records.count, size: c.records.size, root: c.records.root)
        current = nil
    }

    /// Every failure found, once the signed manifest is in and every chunk it lists has been
    /// consumed: the chunk count, the chunks root and the chunk sizes, the content size, and
    /// each result's size, record count and records root (`PackageVerification.Failure.Code`,
    /// SPEC §8). Reads nothing again.
    public mutating func finish(against manifest: Manifest) -> [PackageVerification.Failure] {
        closeCurrent()
        if chunkCount < manifest.chunks.count {
            fail(.chunkMissing, "content ended in chunk \(chunkCount) of \(manifest.chunks.count)")
        } else if chunkCount > manifest.chunks.count {
            fail(.trailingData, "content continues past the last chunk of the manifest")
        } else {
            var tree = MerkleTree.Builder()
            var sizes = SHA256()
            for c in manifest.chunks {
                var leaf = MerkleTree.leafHasher()
                leaf.update(data: Digest.bytes(hex: c.sha256) ?? [])
                tree.append(leafDigest: leaf.finalize())
                withUnsafeBytes(of: UInt64(max(0, c.size)).bigEndian) { sizes.update(bufferPointer: $0) }
            }
            if tree.root != chunkTree.root {
                fail(.chunkHash, "the chunks received differ from the manifest's chunk list")
            }
            if chunkTree.root.hexString != manifest.chunksRoot {
                fail(.chunksRoot, "Merkle root over the chunks differs from the manifest")
            }
            if Array(sizes.finalize()) != Array(chunkSizes.finalize()) {
                fail(.chunkSize, "the chunk sizes differ from the manifest's")
            }
        }
        if size != manifest.content.size { fail(.contentSize, "content size differs from the manifest") }
        for (i, r) in manifest.results.enumerated() {
            let got = closed[i] ?? ResultTotals(count: 0, size: 0, root: RecordTree().root)
            if got.size != r.size { fail(.resultSize, "result \(i) holds another number of bytes than declared") }
            if got.count != r.recordCount { fail(.resultCount, "result \(i) holds another number of records than declared") }
            if got.root != r.recordsRoot { fail(.recordsRoot, "result \(i) records Merkle root differs from the manifest") }
        }
        if let beyond = closed.keys.filter({ $0 >= manifest.results.count }).min() {
            fail(.resultSize, "the chunks place records in result \(beyond), which the manifest does not list")
        }
        return failures
    }
}
