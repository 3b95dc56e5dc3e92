import Crypto
import CustosMerkle
import Foundation

/// The Merkle proof vectors of `schemas/custody/vectors/`: valid proofs over a fixed list of
/// leaves, and negatives made by mutating each valid one the way transparency-dev/merkle's
/// test data does (wrong leaf, flipped bit, trailing and preceding garbage, a removed hash,
/// wrong index or size, swapped roots). Deterministic, so a test can regenerate and compare.
public enum MerkleVectors {
    public struct InclusionCase: Codable, Sendable, Equatable {
        public var name: String
        public var leafIndex: UInt64
        public var treeSize: UInt64
        public var leafHash: String
        public var root: String
        public var proof: [String]
        public var valid: Bool
    }

    public struct ConsistencyCase: Codable, Sendable, Equatable {
        public var name: String
        public var size1: UInt64
        public var size2: UInt64
        public var root1: String
        public var root2: String
        public var proof: [String]
        public var valid: Bool
    }

    public struct File<Case: Codable & Sendable & Equatable>: Codable, Sendable, Equatable {
        public var description: String
        /// Leaf data (hex); leaf i's hash is SHA-256(0x00 ‖ leaves[i]).
        public var leaves: [String]
        public var cases: [Case]
    }

    /// The eight leaves of RFC 6962's reference tests, then synthetic ones up to 21.
    public static let leaves: [[UInt8]] = {
        var l: [[UInt8]] = [[], [0x00], [0x10], [0x20, 0x21], [0x30, 0x31], [0x40, 0x41, 0x42, 0x43],
                            Array(0x50...0x57), Array(0x60...0x6f)]
        for i in 8..<21 { l.append(Array("custody leaf \(i)".utf8)) }
        return l
    }()

    static var leafHashes: [SHA256Digest] { leaves.map { MerkleTree.leafHash($0) }.map { SHA256Digest(bytes: $0)! } }

    /// A perfect node's hash, straight from the definition.
    public static func node(_ id: NodeID, _ hashes: [SHA256Digest]) -> SHA256Digest {
        let begin = Int(id.index << UInt64(id.level)), end = begin + (1 << id.level)
        return SHA256Digest(bytes: MerkleTree.root(leafHashes: hashes[begin..<end].map(\.bytes)[...]))!
    }

    public static func root(_ size: UInt64, _ hashes: [SHA256Digest]) -> SHA256Digest {
        SHA256Digest(bytes: MerkleTree.root(leafHashes: hashes[0..<Int(size)].map(\.bytes)[...]))!
    }

    static func b64(_ d: SHA256Digest) -> String { Data(d.bytes).base64EncodedString() }
    static func flip(_ s: String, bit: Int) -> String {
        var d = Array(Data(base64Encoded: s)!)
        d[bit / 8] ^= 1 << UInt8(bit % 8)
        return Data(d).base64EncodedString()
    }

    public static func inclusion() -> File<InclusionCase> {
        let hashes = leafHashes
        var cases: [InclusionCase] = []
        let picks: [(UInt64, UInt64)] = [(0, 1), (0, 8), (5, 8), (7, 8), (0, 7), (3, 7), (4, 7), (6, 7), (2, 3), (12, 21), (20, 21), (16, 17)]
        for (index, size) in picks {
            let proof = try! MerkleProof.inclusionPlan(index: index, size: size).build { node($0, hashes) }.map(b64)
            let good = InclusionCase(name: "leaf \(index) of \(size)", leafIndex: index, treeSize: size, leafHash: b64(hashes[Int(index)]),
                                     root: b64(root(size, hashes)), proof: proof, valid: true)
            cases.append(good)
            func bad(_ what: String, _ change: (inout InclusionCase) -> Void) {
                var c = good
                change(&c)
                c.name = "leaf \(index) of \(size): \(what)"
                c.valid = false
                if c != good.with(valid: false) { cases.append(c) }
            }
            bad("wrong leaf") { $0.leafHash = b64(hashes[index == 20 ? 19 : Int(index) + 1]) }
            bad("flipped bit in leaf hash") { $0.leafHash = flip($0.leafHash, bit: 3) }
            bad("flipped bit in root") { $0.root = flip($0.root, bit: 200) }
            for i in proof.indices { bad("flipped bit in proof[\(i)]") { $0.proof[i] = flip($0.proof[i], bit: 17) } }
            bad("trailing garbage") { $0.proof.append(b64(hashes[0])) }
            bad("preceding garbage") { $0.proof.insert(b64(hashes[1]), at: 0) }
            if !proof.isEmpty { bad("removed last hash") { $0.proof.removeLast() } }
            bad("index plus one") { $0.leafIndex += 1 }
            if index > 0 { bad("index minus one") { $0.leafIndex -= 1 } }
            bad("size doubled") { $0.treeSize *= 2 }
            if size > 1 { bad("size halved") { $0.treeSize /= 2 } }
            bad("root of the tree one smaller") { $0.root = size > 1 ? b64(root(size - 1, hashes)) : b64(hashes[1]) }
        }
        return File(description: "RFC 9162 §2.1.3 inclusion proofs: leaf hash, index and size, audit path (base64, leaf side first) and root; valid ones and mutated negatives.",
                    leaves: leaves.map { $0.map { String(format: "%02x", $0) }.joined() }, cases: cases)
    }

    public static func consistency() -> File<ConsistencyCase> {
        let hashes = leafHashes
        var cases: [ConsistencyCase] = []
        let picks: [(UInt64, UInt64)] = [(1, 8), (3, 7), (4, 7), (6, 7), (5, 8), (2, 5), (6, 8), (1, 2), (7, 21), (16, 21), (13, 20), (8, 8), (0, 5)]
        for (m, n) in picks {
            let proof = try! MerkleProof.consistencyPlan(from: m, to: n).build { node($0, hashes) }.map(b64)
            let good = ConsistencyCase(name: "\(m) to \(n)", size1: m, size2: n, root1: b64(m == 0 ? SHA256Digest(bytes: MerkleTree.emptyRoot)! : root(m, hashes)),
                                       root2: b64(root(n, hashes)), proof: proof, valid: true)
            cases.append(good)
            func bad(_ what: String, _ change: (inout ConsistencyCase) -> Void) {
                var c = good
                change(&c)
                c.name = "\(m) to \(n): \(what)"
                c.valid = false
                if c != good.with(valid: false) { cases.append(c) }
            }
            guard m > 0 else {
                bad("non-empty proof from the empty tree") { $0.proof = [b64(hashes[0])] }
                continue
            }
            if m != n { bad("swapped roots") { swap(&$0.root1, &$0.root2) } }
            bad("flipped bit in old root") { $0.root1 = flip($0.root1, bit: 9) }
            bad("flipped bit in new root") { $0.root2 = flip($0.root2, bit: 250) }
            for i in proof.indices { bad("flipped bit in proof[\(i)]") { $0.proof[i] = flip($0.proof[i], bit: 4) } }
            bad("trailing garbage") { $0.proof.append(b64(hashes[2])) }
            bad("preceding garbage") { $0.proof.insert(b64(hashes[3]), at: 0) }
            if !proof.isEmpty { bad("removed last hash") { $0.proof.removeLast() } }
            if m + 1 < n { bad("old size plus one") { $0.size1 += 1 } }
            if m != n { bad("old root of another size") { $0.root1 = b64(root(m + 1, hashes)) } }
        }
        return File(description: "RFC 9162 §2.1.4 consistency proofs: sizes, roots and proof (base64); valid ones and mutated negatives.",
                    leaves: leaves.map { $0.map { String(format: "%02x", $0) }.joined() }, cases: cases)
    }

    public static func json<T: Encodable>(_ value: T) throws -> [UInt8] {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try e.encode(value)) + [0x0A]
    }
}

extension MerkleVectors.InclusionCase {
    func with(valid: Bool) -> Self { var c = self; c.valid = valid; return c }
}

extension MerkleVectors.ConsistencyCase {
    func with(valid: Bool) -> Self { var c = self; c.valid = valid; return c }
}
