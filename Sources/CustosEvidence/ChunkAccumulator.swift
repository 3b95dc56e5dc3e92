import CustosMerkle
import Crypto
import CustosModel

/// Cuts a byte stream into chunks of `chunkSize` bytes as it passes, hashing each chunk and
/// building the Merkle root over them, in constant memory. Feed it the content in any slices.
public struct ChunkAccumulator: Sendable {
    public let chunkSize: Int
    private var current = SHA256()
    private var currentSize = 0
    private var tree = MerkleTree.Builder()
    public private(set) var chunks: [Manifest.Chunk] = []
    public private(set) var totalSize: Int64 = 0

    public init(chunkSize: Int = Topics.maximumChunkBytes) {
        precondition(chunkSize > 0)
        self.chunkSize = chunkSize
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        totalSize += Int64(bytes.count)
        var offset = 0
        while offset < bytes.count {
            let n = min(chunkSize - currentSize, bytes.count - offset)
            current.update(bufferPointer: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]))
            currentSize += n
            offset += n
            if currentSize == chunkSize { closeChunk() }
        }
    }

    public mutating func append(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { append($0) }
    }

    private mutating func closeChunk() {
        let digest = current.finalize()
        chunks.append(Manifest.Chunk(index: chunks.count, size: currentSize, sha256: digest.hexString))
        var leaf = MerkleTree.leafHasher()
        digest.withUnsafeBytes { leaf.update(bufferPointer: $0) }
        tree.append(leafDigest: leaf.finalize())
        current = SHA256()
        currentSize = 0
    }

    /// Ends the current chunk here, even short of `chunkSize` (a chunk already ended, or none
    /// begun, is left alone).
    public mutating func cut() {
        if currentSize > 0 { closeChunk() }
    }

    /// Closes the last partial chunk; returns the chunk list, their Merkle root and the size.
    public mutating func finish() -> (chunks: [Manifest.Chunk], chunksRoot: String, size: Int64) {
        if currentSize > 0 { closeChunk() }
        return (chunks, tree.root.hexString, totalSize)
    }
}

/// Builds one result's record count, size and records Merkle root from JSON lines.
public struct RecordTree: Sendable {
    private var tree = MerkleTree.Builder()
    public private(set) var size: Int64 = 0

    public init() {}

    /// Adds one record: its bytes without the newline.
    public mutating func append(record: UnsafeRawBufferPointer) {
        var leaf = MerkleTree.leafHasher()
        leaf.update(bufferPointer: record)
        tree.append(leafDigest: leaf.finalize())
        size += Int64(record.count + 1)
    }

    /// Adds a record whose leaf hash was computed incrementally.
    mutating func appendLeaf(_ leaf: SHA256Digest, length: Int) {
        tree.append(leafDigest: leaf)
        size += Int64(length + 1)
    }

    /// Adds a record known only by its leaf hash and its size with the newline (a withheld one).
    mutating func appendLeaf(_ leafHash: [UInt8], size: Int) {
        tree.append(leafHash: leafHash)
        self.size += Int64(size)
    }

    public var count: Int { Int(tree.count) }
    public var root: String { tree.root.hexString }
}
