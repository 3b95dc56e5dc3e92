import Crypto
import CustosModel

/// Cuts a byte stream into chunks of `chunkSize` bytes as it passes, hashing each chunk and
/// the whole, in constant memory. Feed it the package content in any slices.
public struct ChunkAccumulator: Sendable {
    public let chunkSize: Int
    private var whole = SHA256()
    private var current = SHA256()
    private var currentSize = 0
    public private(set) var chunks: [Manifest.Chunk] = []
    public private(set) var totalSize: Int64 = 0

    public init(chunkSize: Int = Topics.maximumChunkBytes) {
        precondition(chunkSize > 0)
        self.chunkSize = chunkSize
    }

    public mutating func append(_ bytes: UnsafeRawBufferPointer) {
        whole.update(bufferPointer: bytes)
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
        chunks.append(Manifest.Chunk(index: chunks.count, size: currentSize, sha256: current.finalize().hexString))
        current = SHA256()
        currentSize = 0
    }

    /// Closes the last partial chunk and returns the chunk list and the SHA-256 of the whole.
    public mutating func finish() -> (chunks: [Manifest.Chunk], sha256: String, size: Int64) {
        if currentSize > 0 { closeChunk() }
        return (chunks, whole.finalize().hexString, totalSize)
    }
}
