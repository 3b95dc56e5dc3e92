import Crypto
import CustosCustody
import CustosMerkle
import CustosModel
import CustosPKI
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// `custos-broker audit`: recomputes the Merkle tree from the stored events alone and holds
/// it against every signed checkpoint — the log's own and any a witness kept — reporting
/// the first divergence. Nothing derived (tiles, tree size) is trusted; tiles only help to
/// name the first event whose hash differs from what was integrated.
public struct CustodyAudit: Sendable {
    public struct Divergence: Codable, Sendable, Equatable {
        /// The signed checkpoint the stored events no longer reproduce.
        public var checkpointSize: UInt64
        public var source: String
        public var signedRoot: String
        /// The root the stored events give at that size; nil when the log holds fewer events.
        public var recomputedRoot: String?
        /// The first event whose hash differs from the one integrated, when tiles tell.
        public var firstChangedEvent: UInt64?
        public var reason: String
    }

    public struct Report: Codable, Sendable {
        public var events: UInt64
        public var checkpoints: Int
        public var witnessCheckpoints: Int
        public var firstDivergence: Divergence?
        /// Everything else that is wrong: gaps, entries that are not canonical, index columns
        /// that disagree with their entry, signatures that do not verify.
        public var problems: [String]
        public var ok: Bool { firstDivergence == nil && problems.isEmpty }
    }

    /// A checkpoint to hold the log against: its text and the log's CMS signature.
    public struct SignedCheckpoint: Sendable {
        public var text: [UInt8]
        public var signature: [UInt8]
        public var source: String

        public init(text: [UInt8], signature: [UInt8], source: String) {
            self.text = text
            self.signature = signature
            self.source = source
        }
    }

    let client: PostgresClient
    /// The log's certificate (PEM): checkpoint signatures must be by it.
    let logCertificate: String
    let logger: Logger

    public init(client: PostgresClient, logCertificate: String, logger: Logger) {
        self.client = client
        self.logCertificate = logCertificate
        self.logger = logger
    }

    public func run(witnessCheckpoints: [SignedCheckpoint] = []) async throws -> Report {
        var problems: [String] = []
        let expectedSigner = try CertificateInfo(pem: logCertificate)
        var references: [(Checkpoint, String)] = []
        var stored: [SignedCheckpoint] = []
        for try await (body, signature) in try await client.query(
            "SELECT body, signature FROM custody_checkpoints ORDER BY size", logger: logger
        ).decode((String, ByteBuffer).self) {
            stored.append(.init(text: Array(body.utf8), signature: Array(signature.readableBytesView), source: "log"))
        }
        for s in stored + witnessCheckpoints {
            guard let cp = try? Checkpoint(text: s.text) else {
                problems.append("a \(s.source) checkpoint is not in checkpoint format")
                continue
            }
            switch CMS.verifyIntegrity(signature: s.signature, data: s.text) {
            case .valid(let signer) where signer.der == expectedSigner.der:
                references.append((cp, s.source))
            case .valid(let signer):
                problems.append("\(s.source) checkpoint \(cp.size) is signed by \"\(signer.commonName)\", not by the log's certificate")
            case .invalid(let why):
                problems.append("\(s.source) checkpoint \(cp.size): signature does not verify: \(why)")
            }
        }
        references.sort { $0.0.size < $1.0.size }

        var builder = MerkleTree.Builder()
        var expected: UInt64 = 0
        var next = 0  // the next reference to compare
        var divergence: Divergence?
        var tile: (index: UInt64, hashes: [SHA256Digest])?
        var firstChanged: UInt64?
        let rows = try await client.query("SELECT idx, kind, request_id, package_id, entry FROM custody_events ORDER BY idx", logger: logger)
        for try await (idx, kind, requestId, packageId, entry) in rows.decode((Int64, String, UUID?, UUID?, ByteBuffer).self) {
            let index = UInt64(idx)
            if index != expected {
                problems.append(index > expected ? "events \(expected)..<\(index) are missing" : "event \(index) appears twice")
                expected = index
            }
            let bytes = Array(entry.readableBytesView)
            if let event = try? CustodyEvent.decode(entry: bytes) {
                if event.kind.rawValue != kind || event.subject.requestId != requestId || event.subject.packageId != packageId {
                    problems.append("event \(index): its index columns disagree with its entry")
                }
            } else {
                problems.append("event \(index): entry is not a canonical custody event")
            }
            let leaf = CustodyEvent.leafHash(entry: bytes)
            if firstChanged == nil {
                let t = index / Tiles.width
                if tile?.index != t {
                    tile = (t, try await client.withConnection { try await TileStore.read([TileID(level: 0, index: t)], on: $0, logger: logger) }[TileID(level: 0, index: t)] ?? [])
                }
                let offset = Int(index % Tiles.width)
                if let hashes = tile?.hashes, offset < hashes.count, hashes[offset] != leaf { firstChanged = index }
            }
            builder.append(leafDigest: leaf)
            expected += 1
            while next < references.count && references[next].0.size == builder.count {
                let (cp, source) = references[next]
                let root = SHA256Digest(bytes: builder.root)!
                if divergence == nil && root != cp.root {
                    divergence = Divergence(
                        checkpointSize: cp.size, source: source, signedRoot: BrokerStore.b64(cp.root), recomputedRoot: BrokerStore.b64(root),
                        firstChangedEvent: firstChanged, reason: "the stored events do not reproduce the signed root (an event was altered, removed or inserted)")
                }
                next += 1
            }
        }
        while next < references.count && references[next].0.size < builder.count { next += 1 }
        if divergence == nil, next < references.count {
            let (cp, source) = references[next]
            divergence = Divergence(
                checkpointSize: cp.size, source: source, signedRoot: BrokerStore.b64(cp.root), recomputedRoot: nil, firstChangedEvent: nil,
                reason: "the log holds \(builder.count) events, but a checkpoint of size \(cp.size) was signed: events were deleted (truncation)")
        }
        return Report(events: builder.count, checkpoints: stored.count, witnessCheckpoints: witnessCheckpoints.count,
                      firstDivergence: divergence, problems: problems)
    }
}

extension BrokerStore {
    public func audit(logCertificate: String, witnessCheckpoints: [CustodyAudit.SignedCheckpoint] = []) async throws -> CustodyAudit.Report {
        try await CustodyAudit(client: client, logCertificate: logCertificate, logger: logger).run(witnessCheckpoints: witnessCheckpoints)
    }
}
