import CustosCanonicalJSON
import CustosMerkle
import CustosModel
import CustosPKI
import Crypto
import Foundation

/// Time-stamp renewal in the manner of RFC 4998 (Evidence Record Syntax) §5.2: before the
/// certificate of a time-stamping authority (or of the signer) expires, a new RFC 3161
/// time-stamp is made over the signed data, its signature and every item of the chain so far,
/// so that the chain stays provable after each certificate has expired. As in RFC 4998, one
/// time-stamp renews many chains at once: it covers the root of a Merkle tree (RFC 9162
/// hashing) whose leaves are the chains' imprints, and each chain keeps its leaf's audit path
/// (a `RenewalElement`).
///
/// A chain is `[T0, E1, …, En]`: `T0` is the original token (over SHA-256 of the signature);
/// `Ei`'s leaf is `imprint(data, signature, [T0, E1 … Ei−1])`. Checked at a date D, each item
/// is checked at the time the next proves (its genTime), and `En` at D: each certificate must
/// have been valid when the next item proved the chain existed.
public enum TimeStampRenewal {
    /// Domain separation of the renewal imprint.
    public static let label = Array("custos.renewal.v1\n".utf8)

    /// SHA-256(label ‖ SHA-256(data) ‖ SHA-256(signature) ‖ SHA-256(item 0) ‖ … ‖ SHA-256(item k)),
    /// the imprint the renewal after `items` covers (32 bytes); item 0 is the original token's
    /// DER, each later one a `RenewalElement`'s canonical JSON.
    public static func imprint(data: [UInt8], signature: [UInt8], tokens items: [[UInt8]]) -> [UInt8] {
        Digest.sha256Bytes(label + Digest.sha256Bytes(data) + Digest.sha256Bytes(signature) + items.flatMap(Digest.sha256Bytes))
    }

    /// Many chains renewed under one time-stamp: the tree over their imprints. Stamp `root`,
    /// then `elements(token:)` gives each chain its element, in the imprints' order.
    public struct Batch: Sendable {
        let tree: LeafTree
        public var root: [UInt8] { tree.root }

        public init(imprints: [[UInt8]]) { tree = LeafTree(leaves: imprints.map(MerkleTree.leafHash)) }

        public func elements(token: [UInt8]) -> [RenewalElement] {
            (0..<tree.size).map { RenewalElement(token: token, index: UInt64($0), size: UInt64(tree.size), path: tree.path($0)) }
        }
    }

    /// The root a renewal element's path leads to from `imprint`, or nil.
    static func root(of element: RenewalElement, imprint: [UInt8]) -> [UInt8]? {
        guard let path = element.pathDigests,
              let leaf = SHA256Digest(bytes: MerkleTree.leafHash(imprint)),
              let root = try? MerkleProof.rootFromInclusion(leafHash: leaf, index: element.index, size: element.size, proof: path)
        else { return nil }
        return root.bytes
    }

    /// What a chain proves at a date.
    public struct Check: Sendable {
        /// Each names the object, the token and, for an expiry, the gap.
        public var failures: [String]
        /// The original token's genTime, when it verifies (at the time the chain proves it).
        public var genTime: Date?
        public var accuracyMicroseconds: Int64?
    }

    /// Checks `[original] + renewals` at `date` (now when nil).
    /// - Parameters:
    ///   - object: how failures name it (`manifest.tsr`, `checkpoint 1234`).
    ///   - renewals: `RenewalElement`s, oldest first.
    public static func check(object: String, data: [UInt8], signature: [UInt8], original: [UInt8], renewals: [RenewalElement],
                             tsaTrust: String, at date: Date?) -> Check {
        var result = Check(failures: [], genTime: nil, accuracyMicroseconds: nil)
        let items = [original] + renewals.map(\.bytes)
        // What each item's token is over, and its token.
        var targets: [(token: [UInt8], over: [UInt8]?)] = [(original, Digest.sha256Bytes(signature))]
        for (i, e) in renewals.enumerated() {
            targets.append((e.tokenBytes ?? [], root(of: e, imprint: imprint(data: data, signature: signature, tokens: Array(items[...i])))))
        }
        var proven: [Date?] = []
        for (i, target) in targets.enumerated() {
            let name = i == 0 ? object : "\(object) renewal \(i)"
            guard let over = target.over else {
                proven.append(nil)
                result.failures.append("\(name)'s audit path does not lead from the chain before it to a root")
                continue
            }
            // The time the next item proves, else the date asked about.
            let nextTime: Date? = i + 1 < targets.count ? targets[i + 1].over.flatMap { genTime(of: targets[i + 1].token, over: $0, trust: tsaTrust) } : date
            switch TimeStamp.verify(response: target.token, sha256: over, trust: tsaTrust, at: nextTime) {
            case .valid(let t):
                proven.append(t.genTime)
                if i == 0 { result.genTime = t.genTime; result.accuracyMicroseconds = t.accuracyMicroseconds }
                if i > 0, let before = proven[i - 1], t.genTime < before {
                    result.failures.append("\(name) is dated before the time-stamp it renews")
                }
            case .invalid(let why):
                proven.append(nil)
                let when = nextTime ?? Date()
                if let notAfter = TimeStamp.signerNotAfter(response: target.token), notAfter < when {
                    result.failures.append("\(name): its TSA certificate expired on \(Timestamp.format(notAfter)), and no renewal made before then covers it "
                                           + "(a gap from \(Timestamp.format(notAfter)) to \(Timestamp.format(when)))")
                } else {
                    result.failures.append(i == 0 ? "time-stamp does not verify over the signature: \(why)" : "\(name) does not verify: \(why)")
                }
            }
        }
        return result
    }

    /// A token's genTime when its signature and imprint verify, whatever its certificate's
    /// validity now (the time it states is checked against the item before it).
    static func genTime(of token: [UInt8], over imprint: [UInt8], trust: String) -> Date? {
        // Valid at some instant of its TSA certificate's life: its notAfter.
        let at = TimeStamp.signerNotAfter(response: token)?.addingTimeInterval(-1)
        if case .valid(let t) = TimeStamp.verify(response: token, sha256: imprint, trust: trust, at: at) { return t.genTime }
        return nil
    }
}

/// One chain's part of a renewal: the time-stamp over a tree's root, and the audit path of
/// the chain's leaf (RFC 9162 §2.1.3) in a tree of `size` leaves.
public struct RenewalElement: Codable, Sendable, Equatable {
    /// Base64 DER TimeStampResp over the root.
    public var token: String
    public var index: UInt64
    public var size: UInt64
    /// Base64 hashes, leaf side first.
    public var path: [String]

    public init(token: [UInt8], index: UInt64, size: UInt64, path: [[UInt8]]) {
        self.token = Data(token).base64EncodedString()
        self.index = index
        self.size = size
        self.path = path.map { Data($0).base64EncodedString() }
    }

    public var tokenBytes: [UInt8]? { Data(base64Encoded: token).map(Array.init) }
    var pathDigests: [SHA256Digest]? {
        let d = path.compactMap { Data(base64Encoded: $0).flatMap { SHA256Digest(bytes: $0) } }
        return d.count == path.count ? d : nil
    }

    /// RFC 8785 canonical JSON: what the next renewal covers, and what is stored.
    public var bytes: [UInt8] { (try? CanonicalJSON.encode(self)) ?? [] }

    /// Reads stored or carried bytes.
    public init?(bytes: [UInt8]) {
        guard let e = try? JSONDecoder().decode(RenewalElement.self, from: Data(bytes)), e.bytes == bytes else { return nil }
        self = e
    }
}

/// A tree over leaf hashes (RFC 9162 §2.1.1), every perfect subtree kept, for audit paths.
struct LeafTree: Sendable {
    /// levels[k][i]: the perfect subtree of 2^k leaves from i·2^k.
    let levels: [[[UInt8]]]
    let size: Int

    init(leaves: [[UInt8]]) {
        size = leaves.count
        var levels = [leaves]
        while levels.last!.count > 1 {
            let below = levels.last!
            levels.append(stride(from: 0, to: below.count - 1, by: 2).map { MerkleTree.nodeHash(below[$0], below[$0 + 1]) })
        }
        self.levels = levels
    }

    var root: [UInt8] { MerkleTree.root(leafHashes: levels[0][...]) }

    func path(_ index: Int) -> [[UInt8]] {
        guard let plan = try? MerkleProof.inclusionPlan(index: UInt64(index), size: UInt64(size)) else { return [] }
        return plan.build { node in SHA256Digest(bytes: levels[node.level][Int(node.index)])! }.map(\.bytes)
    }
}

/// `renewals.json` in an export bundle: the renewal elements of the manifest's chain, in
/// order (`manifest.tsr` is `T0`).
public struct RenewalsFile: Codable, Sendable, Equatable {
    public static let currentFormat = "custos.renewals.v1"
    public var format: String
    public var manifest: [RenewalElement]

    public init(manifest: [RenewalElement]) {
        format = Self.currentFormat
        self.manifest = manifest
    }
}
