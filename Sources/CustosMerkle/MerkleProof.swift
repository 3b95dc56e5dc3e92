import Crypto

/// A perfect subtree of the log: the 2^level leaves `[index << level, (index + 1) << level)`.
/// Its hash never changes once the log holds those leaves, which is what storage keeps.
public struct NodeID: Hashable, Sendable, CustomStringConvertible {
    public var level: Int
    public var index: UInt64

    public init(level: Int, index: UInt64) {
        self.level = level
        self.index = index
    }

    public var description: String { "(\(level), \(index))" }
}

/// What a proof needs from storage, and how to assemble it. Each proof element is the hash
/// of one range of leaves; a range is made of perfect subtrees, left to right, folded from the
/// right (RFC 9162 §2.1.1 splits at the largest power of two, so a range `[a, b)` with `a`
/// aligned is its binary decomposition). Planning is pure arithmetic; building reads only the
/// perfect nodes, which a tiled store answers in one query.
public struct ProofPlan: Sendable, Equatable {
    public var elements: [[NodeID]]

    /// Every perfect node the proof reads, without repeats.
    public var nodes: [NodeID] {
        var seen = Set<NodeID>()
        return elements.flatMap { $0 }.filter { seen.insert($0).inserted }
    }

    public func build(_ hash: (NodeID) throws -> SHA256Digest) rethrows -> [SHA256Digest] {
        try elements.map { parts in
            var acc = try hash(parts[parts.count - 1])
            for node in parts.dropLast().reversed() { acc = MerkleTree.node(try hash(node), acc) }
            return acc
        }
    }
}

/// Why a proof was refused. The verifier returns it rather than a bare `false`, so that the
/// caller can show what did not hold.
public struct ProofError: Error, Equatable, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}

/// RFC 9162 §2.1.3 inclusion proofs and §2.1.4 consistency proofs: generation (as a plan over
/// perfect nodes) and verification.
public enum MerkleProof {
    /// The perfect subtrees that make up `[begin, end)`, largest first; `begin` must be a
    /// multiple of the largest power of two not above `end - begin` (true of every range the
    /// RFC's recursions produce).
    public static func perfectNodes(begin: UInt64, end: UInt64) -> [NodeID] {
        var out: [NodeID] = []
        var a = begin
        while a < end {
            var level = 63 - (end - a).leadingZeroBitCount  // largest 2^level <= end - a
            while level > 0 && a & ((1 << UInt64(level)) - 1) != 0 { level -= 1 }
            out.append(NodeID(level: level, index: a >> UInt64(level)))
            a += 1 << UInt64(level)
        }
        return out
    }

    /// The largest power of two strictly below `n` (n >= 2).
    static func split(_ n: UInt64) -> UInt64 { 1 << UInt64(63 - (n - 1).leadingZeroBitCount) }

    /// PATH(m, D[n]) (RFC 9162 §2.1.3.1): the audit path of leaf `index` in the tree of `size`.
    public static func inclusionPlan(index: UInt64, size: UInt64) throws(ProofError) -> ProofPlan {
        guard index < size else { throw ProofError("leaf index \(index) is not below tree size \(size)") }
        var topDown: [[NodeID]] = []
        var (lo, hi) = (UInt64(0), size)
        while hi - lo > 1 {
            let k = split(hi - lo)
            if index < lo + k {
                topDown.append(perfectNodes(begin: lo + k, end: hi))
                hi = lo + k
            } else {
                topDown.append(perfectNodes(begin: lo, end: lo + k))
                lo += k
            }
        }
        return ProofPlan(elements: topDown.reversed())
    }

    /// PROOF(m, D[n]) (RFC 9162 §2.1.4.1): what shows that the tree of `oldSize` is a prefix of
    /// the tree of `newSize`. Empty when the sizes are equal or the old tree is empty.
    public static func consistencyPlan(from oldSize: UInt64, to newSize: UInt64) throws(ProofError) -> ProofPlan {
        guard oldSize <= newSize else { throw ProofError("old size \(oldSize) is above new size \(newSize)") }
        guard oldSize > 0 && oldSize < newSize else { return ProofPlan(elements: []) }
        var topDown: [[NodeID]] = []
        var (lo, hi) = (UInt64(0), newSize)
        var includeSubtree = false  // the `b` of SUBPROOF: true at the top
        while oldSize != hi {
            let k = split(hi - lo)
            if oldSize <= lo + k {
                topDown.append(perfectNodes(begin: lo + k, end: hi))
                hi = lo + k
            } else {
                topDown.append(perfectNodes(begin: lo, end: lo + k))
                lo += k
                includeSubtree = true
            }
        }
        if includeSubtree { topDown.append(perfectNodes(begin: lo, end: hi)) }
        return ProofPlan(elements: topDown.reversed())
    }

    /// RFC 9162 §2.1.3.2: the root an inclusion proof leads to.
    public static func rootFromInclusion(
        leafHash: SHA256Digest, index: UInt64, size: UInt64, proof: [SHA256Digest]
    ) throws(ProofError) -> SHA256Digest {
        guard index < size else { throw ProofError("leaf index \(index) is not below tree size \(size)") }
        var fn = index, sn = size - 1
        var r = leafHash
        for p in proof {
            guard sn != 0 else { throw ProofError("the proof has more hashes than a tree of size \(size) needs") }
            if fn & 1 == 1 || fn == sn {
                r = MerkleTree.node(p, r)
                while fn & 1 == 0 && fn != 0 {
                    fn >>= 1
                    sn >>= 1
                }
            } else {
                r = MerkleTree.node(r, p)
            }
            fn >>= 1
            sn >>= 1
        }
        guard sn == 0 else { throw ProofError("the proof has fewer hashes than a tree of size \(size) needs") }
        return r
    }

    public static func verifyInclusion(
        leafHash: SHA256Digest, index: UInt64, size: UInt64, proof: [SHA256Digest], root: SHA256Digest
    ) throws(ProofError) {
        let computed = try rootFromInclusion(leafHash: leafHash, index: index, size: size, proof: proof)
        guard computed == root else { throw ProofError("the proof leads to another root than the checkpoint's") }
    }

    /// RFC 9162 §2.1.4.2: checks that `oldRoot` (tree of `oldSize`) is a prefix of `newRoot`.
    public static func verifyConsistency(
        oldSize: UInt64, newSize: UInt64, oldRoot: SHA256Digest, newRoot: SHA256Digest, proof: [SHA256Digest]
    ) throws(ProofError) {
        guard oldSize <= newSize else { throw ProofError("old size \(oldSize) is above new size \(newSize)") }
        if oldSize == newSize {
            guard proof.isEmpty else { throw ProofError("trees of equal size take an empty proof") }
            guard oldRoot == newRoot else { throw ProofError("two trees of size \(oldSize) with different roots") }
            return
        }
        if oldSize == 0 {
            guard proof.isEmpty else { throw ProofError("consistency with the empty tree takes an empty proof") }
            return
        }
        guard !proof.isEmpty else { throw ProofError("the consistency proof is empty") }
        var path = proof
        if oldSize & (oldSize - 1) == 0 { path.insert(oldRoot, at: 0) }
        var fn = oldSize - 1, sn = newSize - 1
        while fn & 1 == 1 {
            fn >>= 1
            sn >>= 1
        }
        var fr = path[0], sr = path[0]
        for c in path.dropFirst() {
            guard sn != 0 else { throw ProofError("the proof has more hashes than these sizes need") }
            if fn & 1 == 1 || fn == sn {
                fr = MerkleTree.node(c, fr)
                sr = MerkleTree.node(c, sr)
                while fn & 1 == 0 && fn != 0 {
                    fn >>= 1
                    sn >>= 1
                }
            } else {
                sr = MerkleTree.node(sr, c)
            }
            fn >>= 1
            sn >>= 1
        }
        guard sn == 0 else { throw ProofError("the proof has fewer hashes than these sizes need") }
        guard fr == oldRoot else { throw ProofError("the proof does not lead to the old checkpoint's root") }
        guard sr == newRoot else { throw ProofError("the proof does not lead to the new checkpoint's root") }
    }

    /// The root of the tree of `size` from its perfect nodes (the binary decomposition of the size).
    public static func rootPlan(size: UInt64) -> ProofPlan {
        size == 0 ? ProofPlan(elements: []) : ProofPlan(elements: [perfectNodes(begin: 0, end: size)])
    }
}
