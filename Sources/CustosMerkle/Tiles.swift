import Crypto

/// Where a tiled store keeps the tree (the layout of C2SP tlog-tiles, with height 8): tile
/// level `t` holds the hashes of the perfect subtrees of height `8t`, 256 to a tile, so tile
/// `(0, i)` holds leaf hashes `256i…256i+255` and tile `(1, i)` the roots of the full level-0
/// tiles `256i…`. About 32 bytes per leaf in all, and any proof reads a handful of tiles.
/// The rightmost tile of a level may be partial; it only ever grows.
public struct TileID: Hashable, Sendable, CustomStringConvertible {
    public var level: Int
    public var index: UInt64

    public init(level: Int, index: UInt64) {
        self.level = level
        self.index = index
    }

    public var description: String { "tile(\(level), \(index))" }
}

public enum Tiles {
    public static let height = 8
    public static let width: UInt64 = 256

    /// The tile holding a perfect node, and the slice of its entries the node is made of.
    public static func location(of node: NodeID) -> (tile: TileID, entries: Range<Int>) {
        let t = node.level / height, r = node.level % height
        let first = node.index << UInt64(r)  // index of the node's first entry at tile level t
        let offset = Int(first % width)
        return (TileID(level: t, index: first / width), offset..<offset + (1 << r))
    }

    /// The tiles a set of nodes needs.
    public static func tiles(for nodes: [NodeID]) -> [TileID] {
        var seen = Set<TileID>()
        return nodes.map { location(of: $0).tile }.filter { seen.insert($0).inserted }
    }

    /// A node's hash from its tile; nil when the tile lacks the entries (a store that is
    /// behind the size asked about).
    public static func hash(of node: NodeID, in tiles: [TileID: [SHA256Digest]]) -> SHA256Digest? {
        let (tile, entries) = location(of: node)
        guard let hashes = tiles[tile], hashes.count >= entries.upperBound else { return nil }
        return perfectRoot(hashes[entries])
    }

    /// The root of 2^k hashes of equal height.
    static func perfectRoot(_ hashes: ArraySlice<SHA256Digest>) -> SHA256Digest {
        var level = Array(hashes)
        while level.count > 1 {
            level = stride(from: 0, to: level.count, by: 2).map { MerkleTree.node(level[$0], level[$0 + 1]) }
        }
        return level[0]
    }

    /// The tiles that integrating leaves into a tree of `size` starts from: the partial
    /// rightmost tile of each level (a full one never changes again).
    public static func edge(size: UInt64) -> [TileID] {
        var out: [TileID] = []
        var count = size, level = 0
        while count > 0 {
            if count % width != 0 { out.append(TileID(level: level, index: count / width)) }
            count /= width
            level += 1
        }
        return out
    }

    /// Appends leaf hashes to a tree of `size` whose edge tiles are given, and returns every
    /// tile that changed (to be written back). Pure: the store does the reading and writing.
    /// Entries an edge tile holds beyond `size` are stale (a log cut back by hand) and are
    /// replaced; an edge tile with fewer entries than `size` implies is an error.
    public static func integrate(size: UInt64, leafHashes: [SHA256Digest], edge: [TileID: [SHA256Digest]]) throws(ProofError) -> [TileID: [SHA256Digest]] {
        var changed: [TileID: [SHA256Digest]] = [:]
        var entries = leafHashes
        var start = size  // index of the first new entry at this level
        var level = 0
        while !entries.isEmpty {
            var completed: [SHA256Digest] = []
            var position = start, i = 0
            while i < entries.count {
                let id = TileID(level: level, index: position / width)
                var tile = changed[id] ?? edge[id] ?? []
                let expected = Int(position % width)
                guard tile.count >= expected else { throw ProofError("\(id) holds \(tile.count) entries, \(expected) expected: the tiles are behind the tree") }
                tile.removeLast(tile.count - expected)
                let take = min(Int(width) - tile.count, entries.count - i)
                tile += entries[i..<i + take]
                changed[id] = tile
                if tile.count == Int(width) { completed.append(perfectRoot(tile[...])) }
                position += UInt64(take)
                i += take
            }
            entries = completed
            start = (start / width)  // full tiles of this level before the batch = entries of the next
            level += 1
        }
        return changed
    }
}
