import CustosMerkle
import CustosEvidence
import CustosModel
import Testing

@Suite("RFC 9162 Merkle trees")
struct MerkleTreeTests {
    // The reference leaves and roots of RFC 6962's test suite (certificate-transparency).
    static let leaves: [[UInt8]] = [[], [0x00], [0x10], [0x20, 0x21], [0x30, 0x31], [0x40, 0x41, 0x42, 0x43],
                                    [0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57], [0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f]]
    static let roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]

    @Test func referenceRootsForOneToEightLeaves() {
        #expect(MerkleTree.emptyRoot.hexString == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        let hashes = Self.leaves.map { MerkleTree.leafHash($0) }
        for n in 1...8 {
            #expect(MerkleTree.root(leafHashes: hashes.prefix(n)).hexString == Self.roots[n - 1], "size \(n)")
        }
    }

    @Test(arguments: [0, 1, 2, 3, 5, 7, 8, 9, 31, 32, 33, 100, 1000])
    func streamingBuilderMatchesTheDefinition(n: Int) {
        let hashes = (0..<n).map { MerkleTree.leafHash([UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)]) }
        var b = MerkleTree.Builder()
        hashes.forEach { b.append(leafHash: $0) }
        #expect(b.root == MerkleTree.root(leafHashes: hashes[...]))
        #expect(b.count == UInt64(n))
    }

    @Test func leavesAndNodesAreDomainSeparated() {
        // A node's preimage presented as a leaf must not give the node's hash.
        let l = MerkleTree.leafHash([1]), r = MerkleTree.leafHash([2])
        #expect(MerkleTree.leafHash(l + r) != MerkleTree.nodeHash(l, r))
        // Swapping, dropping or flipping a leaf changes the root.
        let base = Self.leaves.map { MerkleTree.leafHash($0) }
        let root = MerkleTree.root(leafHashes: base[...])
        #expect(MerkleTree.root(leafHashes: [base[1], base[0]] + base[2...]) != root)
        #expect(MerkleTree.root(leafHashes: base.dropLast()) != root)
        var flipped = base
        flipped[3][0] ^= 1
        #expect(MerkleTree.root(leafHashes: flipped[...]) != root)
    }
}
