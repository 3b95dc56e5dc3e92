import Crypto
import CustosMerkle
import CustosTestSupport
import Foundation
import Testing

/// Inclusion and consistency proofs (RFC 9162 §2.1.3–2.1.4), the tile layout, and the vector
/// files in schemas/custody/vectors.
@Suite("Merkle proofs and tiles")
struct MerkleProofTests {
    static let vectors = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("schemas/custody/vectors")

    static func d(_ b64: String) -> SHA256Digest { SHA256Digest(bytes: Data(base64Encoded: b64)!)! }
    static func hashes(_ n: Int) -> [SHA256Digest] {
        (0..<n).map { SHA256Digest(bytes: MerkleTree.leafHash(Array("leaf \($0)".utf8)))! }
    }

    /// Independent of this code: RFC 6962's reference tree of eight leaves, as published in
    /// transparency-dev/merkle's test data (inclusion of leaf 0, consistency 1 → 8).
    @Test func referenceProofsFromRFC6962TestData() throws {
        let proof = ["lqKW0iTyhcZ77pPDD4owkVfw2qNdxbh+QQt4YwoJz8c=", "Xwg/ChozygdqlSeYMlgNs+DvRYS9/x9UyKNg9Q3jAx4=",
                     "a0eq8p7jwq+a+Im8H7klTavTEXfxYjLdaqsDXKOb9uQ="].map(Self.d)
        let root8 = Self.d("XcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg="), leaf0 = Self.d("bjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=")
        try MerkleProof.verifyInclusion(leafHash: leaf0, index: 0, size: 8, proof: proof, root: root8)
        try MerkleProof.verifyConsistency(oldSize: 1, newSize: 8, oldRoot: leaf0, newRoot: root8, proof: proof)
        let hashes = MerkleVectors.leaves.prefix(8).map { SHA256Digest(bytes: MerkleTree.leafHash($0))! }
        #expect(try MerkleProof.inclusionPlan(index: 0, size: 8).build { MerkleVectors.node($0, hashes) } == proof)
    }

    /// The labelled seven-leaf example of C2SP's merkle-tree specification.
    @Test func sevenLeafExample() throws {
        let h = Self.hashes(7)
        func n(_ l: SHA256Digest, _ r: SHA256Digest) -> SHA256Digest { MerkleTree.node(l, r) }
        let (a, b, c, dd, e, f, g) = (h[0], h[1], h[2], h[3], h[4], h[5], h[6])
        let hh = n(a, b), i = n(c, dd), j = n(e, f), k = n(hh, i), l = n(j, g)
        func inc(_ m: UInt64) throws -> [SHA256Digest] { try MerkleProof.inclusionPlan(index: m, size: 7).build { MerkleVectors.node($0, h) } }
        func con(_ m: UInt64) throws -> [SHA256Digest] { try MerkleProof.consistencyPlan(from: m, to: 7).build { MerkleVectors.node($0, h) } }
        #expect(try inc(0) == [b, i, l])
        #expect(try inc(3) == [c, hh, l])
        #expect(try inc(4) == [f, g, k])
        #expect(try inc(6) == [j, k])
        #expect(try con(3) == [c, dd, hh, l])
        #expect(try con(4) == [l])
        #expect(try con(6) == [j, g, k])
    }

    @Test func inclusionVectorFile() throws {
        let file = try JSONDecoder().decode(MerkleVectors.File<MerkleVectors.InclusionCase>.self,
                                            from: Data(contentsOf: Self.vectors.appendingPathComponent("inclusion.json")))
        #expect(file == MerkleVectors.inclusion(), "schemas/custody/vectors is stale: run custos-vectors --custody")
        #expect(file.cases.filter { !$0.valid }.count > 100)
        for c in file.cases {
            let proof = c.proof.compactMap { Data(base64Encoded: $0).flatMap { SHA256Digest(bytes: $0) } }
            var ok = proof.count == c.proof.count
            if ok {
                do { try MerkleProof.verifyInclusion(leafHash: Self.d(c.leafHash), index: c.leafIndex, size: c.treeSize, proof: proof, root: Self.d(c.root)) } catch { ok = false }
            }
            #expect(ok == c.valid, "\(c.name)")
        }
    }

    @Test func consistencyVectorFile() throws {
        let file = try JSONDecoder().decode(MerkleVectors.File<MerkleVectors.ConsistencyCase>.self,
                                            from: Data(contentsOf: Self.vectors.appendingPathComponent("consistency.json")))
        #expect(file == MerkleVectors.consistency(), "schemas/custody/vectors is stale: run custos-vectors --custody")
        #expect(file.cases.filter { !$0.valid }.count > 100)
        for c in file.cases {
            let proof = c.proof.map(Self.d)
            var ok = true
            do { try MerkleProof.verifyConsistency(oldSize: c.size1, newSize: c.size2, oldRoot: Self.d(c.root1), newRoot: Self.d(c.root2), proof: proof) } catch { ok = false }
            #expect(ok == c.valid, "\(c.name)")
        }
    }

    @Test func everyProofUpToSixtyFourLeavesVerifies() throws {
        let h = Self.hashes(64)
        for n in 1...UInt64(64) {
            let root = MerkleVectors.root(n, h)
            #expect(MerkleProof.rootPlan(size: n).build { MerkleVectors.node($0, h) } == [root])
            for i in 0..<n {
                let p = try MerkleProof.inclusionPlan(index: i, size: n).build { MerkleVectors.node($0, h) }
                try MerkleProof.verifyInclusion(leafHash: h[Int(i)], index: i, size: n, proof: p, root: root)
            }
            for m in 0...n {
                let p = try MerkleProof.consistencyPlan(from: m, to: n).build { MerkleVectors.node($0, h) }
                let old = m == 0 ? SHA256Digest(bytes: MerkleTree.emptyRoot)! : MerkleVectors.root(m, h)
                try MerkleProof.verifyConsistency(oldSize: m, newSize: n, oldRoot: old, newRoot: root, proof: p)
            }
        }
        #expect(throws: ProofError.self) { try MerkleProof.inclusionPlan(index: 5, size: 5) }
        #expect(throws: ProofError.self) { try MerkleProof.consistencyPlan(from: 6, to: 5) }
    }

    /// Tiles built in uneven batches answer every node exactly as the definition does, and a
    /// full tile never changes afterwards.
    @Test func tilesIntegratedInBatchesMatchTheDefinition() throws {
        let total = 70_000
        let h = Self.hashes(total)
        var tiles: [TileID: [SHA256Digest]] = [:]
        var size: UInt64 = 0
        var batch = 1
        while size < UInt64(total) {
            let n = min(batch, total - Int(size))
            let edgeIDs = Tiles.edge(size: size)
            let changed = try Tiles.integrate(size: size, leafHashes: Array(h[Int(size)..<Int(size) + n]),
                                          edge: Dictionary(uniqueKeysWithValues: edgeIDs.map { ($0, tiles[$0]!) }))
            for (id, hashes) in changed {
                if let before = tiles[id] { #expect(before.count < Int(Tiles.width) && hashes.starts(with: before), "\(id) rewritten") }
                tiles[id] = hashes
            }
            size += UInt64(n)
            batch = batch * 3 + 7
        }
        // 70,000 leaves: 273 full level-0 tiles and a partial one; one full subtree of 65,536 at level 2.
        #expect(tiles[TileID(level: 0, index: 273)]?.count == 70_000 % 256)
        #expect(tiles[TileID(level: 2, index: 0)]?.count == 1)
        for (i, n) in [(0, UInt64(1)), (255, 256), (256, 257), (65_535, 65_536), (65_536, 70_000), (69_999, 70_000), (12_345, 66_000)] {
            let plan = try MerkleProof.inclusionPlan(index: UInt64(i), size: n)
            let fromTiles = try plan.build { try #require(Tiles.hash(of: $0, in: tiles)) }
            let root = try MerkleProof.rootPlan(size: n).build { try #require(Tiles.hash(of: $0, in: tiles)) }[0]
            #expect(root == MerkleVectors.root(n, h))
            try MerkleProof.verifyInclusion(leafHash: h[i], index: UInt64(i), size: n, proof: fromTiles, root: root)
            #expect(Tiles.tiles(for: plan.nodes).count <= 6)
        }
    }
}
