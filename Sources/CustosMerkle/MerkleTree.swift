import Crypto
import Foundation

/// RFC 9162 §2.1.1 Merkle tree hashing, with leaf and node domain separation:
/// leaf = SHA-256(0x00 ‖ data), node = SHA-256(0x01 ‖ left ‖ right), and the tree over n
/// leaves splits at the largest power of two below n. The empty tree's root is SHA-256("").
public enum MerkleTree {
    public static func leafHash<Bytes: DataProtocol>(_ data: Bytes) -> [UInt8] {
        var h = SHA256()
        h.update(data: [0x00])
        h.update(data: data)
        return Array(h.finalize())
    }

    public static func nodeHash(_ left: [UInt8], _ right: [UInt8]) -> [UInt8] {
        var h = SHA256()
        h.update(data: [0x01])
        h.update(data: left)
        h.update(data: right)
        return Array(h.finalize())
    }

    public static let emptyRoot: [UInt8] = Array(SHA256.hash(data: [UInt8]()))

    /// The root over already-hashed leaves, by the recursive definition (for tests and small trees).
    public static func root(leafHashes: ArraySlice<[UInt8]>) -> [UInt8] {
        switch leafHashes.count {
        case 0: return emptyRoot
        case 1: return leafHashes.first!
        default:
            var k = 1
            while k << 1 < leafHashes.count { k <<= 1 }
            let mid = leafHashes.startIndex + k
            return nodeHash(root(leafHashes: leafHashes[..<mid]), root(leafHashes: leafHashes[mid...]))
        }
    }

    /// Builds the same root while leaves stream past, in O(log n) memory: complete subtrees are
    /// merged as soon as two of equal size meet, and the remainder is folded right to left at
    /// the end, which matches the split at the largest power of two. Digests stay fixed-size
    /// values (no heap allocation per leaf), since this runs once per record.
    public struct Builder: Sendable {
        private var stack: [(size: UInt64, hash: SHA256Digest)] = []
        public private(set) var count: UInt64 = 0

        public init() {}

        public mutating func append(leafHash: [UInt8]) {
            append(leafDigest: leafHash.withUnsafeBytes { SHA256Digest(copying: $0) })
        }

        public mutating func append(leafDigest: SHA256Digest) {
            var node = (size: UInt64(1), hash: leafDigest)
            while let top = stack.last, top.size == node.size {
                stack.removeLast()
                node = (top.size &* 2, MerkleTree.node(top.hash, node.hash))
            }
            stack.append(node)
            count += 1
        }

        public var root: [UInt8] {
            guard var acc = stack.last?.hash else { return MerkleTree.emptyRoot }
            for node in stack.dropLast().reversed() { acc = MerkleTree.node(node.hash, acc) }
            return Array(acc)
        }
    }

    private static let leafPrefix: UInt8 = 0x00
    private static let nodePrefix: UInt8 = 0x01

    public static func node(_ left: SHA256Digest, _ right: SHA256Digest) -> SHA256Digest {
        var h = SHA256()
        withUnsafeBytes(of: nodePrefix) { h.update(bufferPointer: $0) }
        left.withUnsafeBytes { h.update(bufferPointer: $0) }
        right.withUnsafeBytes { h.update(bufferPointer: $0) }
        return h.finalize()
    }

    /// A hasher already fed the leaf prefix: update it with the leaf data, then finalize.
    public static func leafHasher() -> SHA256 {
        var h = SHA256()
        withUnsafeBytes(of: leafPrefix) { h.update(bufferPointer: $0) }
        return h
    }
}

extension SHA256Digest {
    /// A digest from 32 raw bytes (a leaf hash computed elsewhere).
    public init(copying bytes: UnsafeRawBufferPointer) {
        precondition(bytes.count == 32 && MemoryLayout<SHA256Digest>.size == 32)
        // Hashing is the only public way to make a digest; recover one by reinterpreting the
        // 32 bytes, which is how the type lays them out.
        self = withUnsafeTemporaryAllocation(of: SHA256Digest.self, capacity: 1) { slot in
            let raw = UnsafeMutableRawPointer(slot.baseAddress!)
            raw.copyMemory(from: bytes.baseAddress!, byteCount: 32)
            return slot.baseAddress!.pointee
        }
    }

    /// A digest from 32 bytes, or nil for any other length.
    public init?<Bytes: Collection<UInt8>>(bytes: Bytes) {
        guard bytes.count == 32 else { return nil }
        self = Array(bytes).withUnsafeBytes { SHA256Digest(copying: $0) }
    }

    public var bytes: [UInt8] { Array(self) }
}
