import CustosCriteria
import CustosMerkle
import Crypto
import CustosCanonicalJSON
import CustosModel
import Foundation

/// The outcome of checking a package: a value listing every failure found, not a thrown error.
public struct PackageVerification: Codable, Sendable, Hashable {
    public struct Failure: Codable, Sendable, Hashable, CustomStringConvertible {
        public enum Code: String, Codable, Sendable {
            case manifestFormat = "manifest-format"
            case signature
            case certificateExpired = "certificate-expired"
            case untrustedSigner = "untrusted-signer"
            case timeStamp = "time-stamp"
            case wrongProvider = "wrong-provider"
            case wrongRequest = "wrong-request"
            case requestHash = "request-hash"
            case chunkMissing = "chunk-missing"
            case chunkHash = "chunk-hash"
            case chunkSize = "chunk-size"
            case chunksRoot = "chunks-root"
            case trailingData = "trailing-data"
            case contentSize = "content-size"
            case resultSize = "result-size"
            case resultCount = "result-count"
            case recordsRoot = "records-root"
            case resultCounts = "result-counts"
            // The custody part of a bundle (CustodyCheck.Code, same names).
            case custodyFormat = "custody-format"
            case custodyEvent = "custody-event"
            case custodyProof = "custody-proof"
            case checkpointSignature = "checkpoint-signature"
            case checkpointTimeStamp = "checkpoint-time-stamp"
            case cosignature
            /// The bundle's verdict on the four criteria differs from the one judged again here.
            case criteria
            /// A bundle member differs from what binds it (the hash a proven custody event
            /// records, or the CMS signature), a member the custody events name is missing, or
            /// a member nothing binds is present.
            case bundleMember = "bundle-member"
            /// The bundle's bytes are not canonical: a tar header, padding or end other than
            /// custos writes, entries out of order, or a folder not named after the package.
            case bundleFormat = "bundle-format"
            /// Authentic, but the four criteria (judged again) do not all pass.
            case notAdmissible = "not-admissible"
        }
        public var code: Code
        public var detail: String
        public var description: String { "\(code.rawValue): \(detail)" }

        public init(code: Code, detail: String) {
            self.code = code
            self.detail = detail
        }
    }

    public var valid: Bool { failures.isEmpty }
    public var failures: [Failure]
    public var manifestSha256: String
    public var checkedAt: String

    public init(failures: [Failure], manifestSha256: String, checkedAt: String) {
        self.failures = failures
        self.manifestSha256 = manifestSha256
        self.checkedAt = checkedAt
    }
}

/// Checks a package's content against its manifest while the bytes stream past, in constant
/// memory: every chunk's size and SHA-256, the Merkle root over the chunks, and for every
/// result its size, record count and records Merkle root. Feed it the content in order, in
/// slices of any size, then call `finish()`.
public struct ContentVerifier: Sendable {
    public let manifest: Manifest
    private var failures: [PackageVerification.Failure] = []
    private var received: Int64 = 0
    // Chunks
    private var chunkIndex = 0
    private var inChunk = 0
    private var chunkHash = SHA256()
    private var chunkTree = MerkleTree.Builder()
    // Results and records
    private var results: ResultCursor
    private var recordHash = SHA256()
    private var recordLength = 0
    /// Whether to keep each record's leaf digest for `takeLeaves()` (for the judge).
    private let collectsLeaves: Bool
    private var leaves: [RecordLeaf] = []

    /// `collectsLeaves`: keep each complete record's leaf digest until `takeLeaves()`, so
    /// that a `PackageJudge` fed the same content need not hash the records again.
    public init(manifest: Manifest, collectsLeaves: Bool = false) {
        self.manifest = manifest
        self.collectsLeaves = collectsLeaves
        results = ResultCursor(manifest.results)
        recordHash = MerkleTree.leafHasher()
    }

    private mutating func fail(_ code: PackageVerification.Failure.Code, _ detail: String) {
        if failures.count < 1000 { failures.append(.init(code: code, detail: detail)) }
    }

    public mutating func consume(_ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count {
            guard chunkIndex < manifest.chunks.count else {
                fail(.trailingData, "content continues past the last chunk of the manifest")
                received += Int64(bytes.count - offset)
                return
            }
            let n = min(manifest.chunks[chunkIndex].size - inChunk, bytes.count - offset)
            let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
            chunkHash.update(bufferPointer: slice)
            consumeRecords(slice)
            inChunk += n
            offset += n
            received += Int64(n)
            if inChunk == manifest.chunks[chunkIndex].size { closeChunk() }
        }
    }

    public mutating func consume(_ bytes: [UInt8]) { bytes.withUnsafeBytes { consume($0) } }

    private mutating func closeChunk() {
        let digest = chunkHash.finalize()
        if digest.hexString != manifest.chunks[chunkIndex].sha256 {
            fail(.chunkHash, "chunk \(chunkIndex) SHA-256 differs from the manifest")
        }
        var leaf = MerkleTree.leafHasher()
        digest.withUnsafeBytes { leaf.update(bufferPointer: $0) }
        chunkTree.append(leafDigest: leaf.finalize())
        chunkHash = SHA256()
        inChunk = 0
        chunkIndex += 1
    }

    /// Closes the current result (a record left open is a defect) and moves to the next.
    private mutating func nextResult() {
        if recordLength != 0 { fail(.resultSize, "result \(results.index) does not end with a newline") }
        resetRecord()
        results.advance()
    }

    private mutating func resetRecord() {
        recordHash = MerkleTree.leafHasher()
        recordLength = 0
    }

    private mutating func consumeRecords(_ bytes: UnsafeRawBufferPointer) {
        var start = 0
        while start < bytes.count {
            guard !results.done else { return }  // the size checks report it
            let limit = start + Int(min(results.remaining, Int64(bytes.count - start)))
            let base = bytes.baseAddress!
            var i = limit
            if let nl = memchr(base + start, 0x0A, limit - start) { i = base.distance(to: UnsafeRawPointer(nl)) }
            recordHash.update(bufferPointer: UnsafeRawBufferPointer(start: base + start, count: i - start))
            recordLength += i - start
            if i < limit {  // a newline: the record is complete
                let leaf = recordHash.finalize()
                results.records.appendLeaf(leaf, length: recordLength)
                if collectsLeaves { leaves.append(RecordLeaf(end: received + Int64(i), length: recordLength, digest: leaf)) }
                resetRecord()
                i += 1
            }
            results.remaining -= Int64(i - start)
            start = i
            if results.remaining == 0 { nextResult() }
        }
    }

    /// The leaf digests of the records completed since the last call (content order; empty
    /// unless made with `collectsLeaves`), for `PackageJudge.consume(content:leaves:)`.
    public mutating func takeLeaves() -> [RecordLeaf] {
        defer { leaves.removeAll(keepingCapacity: true) }
        return leaves
    }

    /// Every failure found, after the last byte.
    public mutating func finish() -> [PackageVerification.Failure] {
        if chunkIndex < manifest.chunks.count {
            fail(.chunkMissing, "content ended in chunk \(chunkIndex) of \(manifest.chunks.count)")
        } else if chunkTree.root.hexString != manifest.chunksRoot {
            fail(.chunksRoot, "Merkle root over the chunks differs from the manifest")
        }
        if received != manifest.content.size { fail(.contentSize, "content size differs from the manifest") }
        if !results.done && received == manifest.content.size {
            fail(.resultSize, "result sizes do not add up to the content")
        }
        return failures + results.failures
    }
}

/// Walks a manifest's results in content order, building each one's records Merkle tree;
/// as each closes, its record count and records root are checked (empty results in passing).
struct ResultCursor: Sendable {
    let results: [Manifest.Result]
    private(set) var index = 0
    /// Bytes of the current result still to come.
    var remaining: Int64 = 0
    var records = RecordTree()
    private(set) var failures: [PackageVerification.Failure] = []
    var done: Bool { index >= results.count }

    init(_ results: [Manifest.Result]) {
        self.results = results
        enter()
    }

    /// Closes the current result and moves to the next one that has bytes.
    mutating func advance() {
        close()
        enter()
    }

    private mutating func enter() {
        while index < results.count && results[index].size == 0 { close() }
        remaining = index < results.count ? results[index].size : 0
    }

    private mutating func close() {
        let r = results[index]
        func fail(_ code: PackageVerification.Failure.Code, _ detail: String) {
            if failures.count < 1000 { failures.append(.init(code: code, detail: detail)) }
        }
        if records.count != r.recordCount { fail(.resultCount, "result \(index) holds another number of records than declared") }
        if records.root != r.recordsRoot { fail(.recordsRoot, "result \(index) records Merkle root differs from the manifest") }
        records = RecordTree()
        index += 1
    }
}


public enum PackageVerifier {
    /// Checks what the manifest says of itself and of the request: format, provider, request,
    /// request hash, and that its declared totals agree. Content and signature are checked
    /// by `ContentVerifier` and by the signature check of the caller's trust model.
    public static func checkManifest(
        _ manifest: Manifest, expectedProvider: String, expectedRequest: UUID, expectedRequestHash: String
    ) -> [PackageVerification.Failure] {
        var failures: [PackageVerification.Failure] = []
        func fail(_ c: PackageVerification.Failure.Code, _ d: String) { failures.append(.init(code: c, detail: d)) }
        if manifest.format != Manifest.currentFormat { fail(.manifestFormat, "format is not \(Manifest.currentFormat)") }
        if manifest.providerId != expectedProvider { fail(.wrongProvider, "manifest names another provider than the one addressed") }
        if manifest.requestId != expectedRequest { fail(.wrongRequest, "manifest names another request") }
        if manifest.requestHash != expectedRequestHash { fail(.requestHash, "manifest's request hash differs from the request as approved") }
        if let bad = manifest.chunks.first(where: { $0.size < 1 || $0.size > Topics.maximumChunkBytes }) {
            fail(.chunkSize, "chunk \(bad.index) is empty or larger than \(Topics.maximumChunkBytes) bytes")
        }
        if manifest.chunks.map(\.index) != Array(0..<manifest.chunks.count) {
            fail(.manifestFormat, "chunk indices are not 0..<\(manifest.chunks.count) in order")
        }
        // The sizes and counts are the provider's: added with overflow checked, so a manifest
        // whose numbers wrap around fails as not adding up instead of stopping the process.
        if checkedSum(manifest.chunks.map { Int64($0.size) }) != manifest.content.size {
            fail(.contentSize, "chunk sizes do not add up to the content size")
        }
        if checkedSum(manifest.results.map(\.size)) != manifest.content.size {
            fail(.resultSize, "result sizes do not add up to the content size")
        }
        if checkedSum(manifest.results.map { Int64($0.recordCount) }) != Int64(manifest.content.recordCount) {
            fail(.resultCounts, "per-result record counts do not add up to the content's record count")
        }
        // Records not sent (SPEC §3): each count at least 1; a result's entries are its own
        // category's, so they name none.
        let notSent = (manifest.notSent ?? []) + manifest.results.flatMap { $0.notSent ?? [] }
        let lists = [manifest.notSent] + manifest.results.map(\.notSent)
        if notSent.contains(where: { $0.count < 1 }) || manifest.results.contains(where: { ($0.notSent ?? []).contains { $0.category != nil } })
            || lists.contains(where: { $0?.isEmpty == true }) {
            fail(.manifestFormat, "notSent counts must be at least 1, a notSent list is left out rather than empty, and a result's notSent names no category")
        }
        return failures
    }
}

/// The sum of `values`, or nil when it overflows `Int64` or a value is negative.
func checkedSum(_ values: [Int64]) -> Int64? {
    var total: Int64 = 0
    for v in values {
        guard v >= 0 else { return nil }
        let (sum, overflow) = total.addingReportingOverflow(v)
        if overflow { return nil }
        total = sum
    }
    return total
}
