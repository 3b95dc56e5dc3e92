import Crypto
import CustosModel
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

    public static func leafHash(_ data: UnsafeRawBufferPointer) -> [UInt8] {
        var h = SHA256()
        h.update(data: [0x00])
        h.update(bufferPointer: data)
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
    /// the end, which matches the split at the largest power of two.
    public struct Builder: Sendable {
        private var stack: [(size: UInt64, hash: [UInt8])] = []
        public private(set) var count: UInt64 = 0

        public init() {}

        public mutating func append(leafHash: [UInt8]) {
            var node = (size: UInt64(1), hash: leafHash)
            while let top = stack.last, top.size == node.size {
                stack.removeLast()
                node = (top.size * 2, MerkleTree.nodeHash(top.hash, node.hash))
            }
            stack.append(node)
            count += 1
        }

        public var root: [UInt8] {
            guard var acc = stack.last?.hash else { return MerkleTree.emptyRoot }
            for node in stack.dropLast().reversed() { acc = MerkleTree.nodeHash(node.hash, acc) }
            return acc
        }
    }
}
