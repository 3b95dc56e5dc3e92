import Crypto
import CustosCustody
import CustosMerkle
import CustosModel
import CustosPKI
import Foundation
import Logging
import Metrics
import NIOCore
import PostgresNIO
import ServiceLifecycle

/// The log's signing identity and its time-stamping: what turns a tree head into a checkpoint.
public struct CheckpointSigner: Sendable {
    public var origin: String
    public var certificate: String
    public var key: String
    public var chain: String
    /// The C2SP signed-note key (Ed25519, named after the origin): every checkpoint also carries
    /// its note signature, which C2SP witnesses check.
    public var note: NoteSigner
    /// RFC 3161: returns a TimeStampResp (DER) over the given SHA-256.
    public var timeStamp: @Sendable (_ sha256: [UInt8]) async throws -> [UInt8]

    /// - Parameter note: the signed-note key; nil derives it from `key` (`derivedNoteSigner`).
    public init(origin: String, certificate: String, key: String, chain: String = "", note: NoteSigner? = nil,
                timeStamp: @escaping @Sendable (_ sha256: [UInt8]) async throws -> [UInt8]) throws {
        guard NoteKeys.isValidName(origin) else {
            throw NoteError("custody.origin \(origin) cannot name a C2SP note key (no spaces, no +)")
        }
        self.origin = origin
        self.certificate = certificate
        self.key = key
        self.chain = chain
        self.note = try note ?? Self.derivedNoteSigner(origin: origin, key: key)
        self.timeStamp = timeStamp
        guard self.note.name == origin, self.note.type == .ed25519 else {
            throw NoteError("the log's note key must be an Ed25519 (0x01) key named \(origin)")
        }
    }

    /// The note key derived from the log's P-256 key (PEM): its Ed25519 seed is
    /// HKDF-SHA256 (RFC 5869) of the P-256 private scalar, with info
    /// "custos custody checkpoint note key v1" — one secret to keep, two signatures.
    /// - Throws: `NoteError` when `key` is not a P-256 private key PEM.
    public static func derivedNoteSigner(origin: String, key: String) throws -> NoteSigner {
        let p256: P256.Signing.PrivateKey
        do { p256 = try P256.Signing.PrivateKey(pemRepresentation: key) } catch {
            throw NoteError("custody.keyFile is not a P-256 key, so no note key derives from it: set custody.noteKeyFile (custos-broker note-key generate)")
        }
        let seed = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: p256.rawRepresentation),
                                          info: Array("custos custody checkpoint note key v1".utf8), outputByteCount: 32)
        let ed = try seed.withUnsafeBytes { try Curve25519.Signing.PrivateKey(rawRepresentation: Array($0)) }
        return NoteSigner(name: origin, type: .ed25519, privateKey: ed)
    }

    /// Time-stamps with an in-process authority (the broker's built-in TSA).
    public static func stamping(with authority: TimeStamp.Authority) -> @Sendable ([UInt8]) async throws -> [UInt8] {
        { sha256 in try authority.respond(to: try TimeStamp.request(sha256: sha256, nonce: TimeStamp.makeNonce()), serial: Int64.random(in: 1...Int64.max)) }
    }
}

/// Integrates sequenced events into the Merkle tree and issues checkpoints: every
/// `interval`, when there are new events, it hashes them into the tiles, signs the new tree
/// head, has the signature time-stamped, and stores all of it in one transaction (a
/// checkpoint never exists without its time-stamp). Several broker instances may run it; an
/// advisory lock lets one at a time work.
public struct CustodyIntegrator: Service {
    let client: PostgresClient
    let signer: CheckpointSigner
    let interval: Duration
    let maximumBatch: Int
    let ready: Gate
    let logger: Logger
    /// Called after each checkpoint is committed (the benchmark measures inclusion latency with it).
    let onCheckpoint: @Sendable (Outcome) -> Void
    private let integrated = Counter(label: "custos.custody.integrated.events")
    private let duration = Timer(label: "custos.custody.checkpoint.duration")

    public init(client: PostgresClient, signer: CheckpointSigner, interval: Duration = .seconds(1), maximumBatch: Int = 200_000,
                ready: Gate = Gate(open: true), logger: Logger, onCheckpoint: @escaping @Sendable (Outcome) -> Void = { _ in }) {
        self.client = client
        self.signer = signer
        self.interval = interval
        self.maximumBatch = maximumBatch
        self.ready = ready
        self.logger = logger
        self.onCheckpoint = onCheckpoint
    }

    public func run() async throws {
        await ready.wait()
        await cancelWhenGracefulShutdown {
            var failures = 0
            var next = ContinuousClock.now
            while !Task.isCancelled {
                do {
                    // A fixed cadence (not a sleep after each pass), so an event waits at most
                    // one interval plus one pass.
                    try await Task.sleep(until: next)
                    next = next + interval
                    while let outcome = try await integrateOnce(), outcome.more {}
                    failures = 0
                } catch is CancellationError {
                    return
                } catch {
                    failures += 1
                    logger.error("custody integration failed; retrying", metadata: [LogKey.error: "\(loggable(error))"])
                    try? await Task.sleep(for: Backoff.delay(attempt: failures))
                    next = ContinuousClock.now
                }
            }
        }
    }

    public struct Outcome: Sendable {
        public var checkpoint: Checkpoint
        public var integrated: Int
        /// More events were waiting than one pass takes.
        public var more: Bool
    }

    /// One pass: nil when there was nothing new.
    @discardableResult
    public func integrateOnce() async throws -> Outcome? {
        let start = ContinuousClock.now
        let outcome: Outcome? = try await client.transaction(logger: logger) { conn in
            // One integrator at a time; every pass ends in a checkpoint, so the newest one's size
            // is how far the tree is integrated.
            try await conn.query("SELECT pg_advisory_xact_lock(hashtext('custos.custody.integrate'))", logger: logger)
            let size = UInt64(try await conn.query("SELECT coalesce(max(size), 0) FROM custody_checkpoints", logger: logger)
                .decode(Int64.self).first { _ in true } ?? 0)
            var leaves: [SHA256Digest] = []
            var expected = Int64(size)
            for try await (idx, entry) in try await conn.query(
                "SELECT idx, entry FROM custody_events WHERE idx >= \(Int64(size)) ORDER BY idx LIMIT \(maximumBatch + 1)", logger: logger
            ).decode((Int64, ByteBuffer).self) {
                guard idx == expected, leaves.count < maximumBatch else { break }  // integrate the gap-free prefix only
                var h = MerkleTree.leafHasher()
                entry.withUnsafeReadableBytes { h.update(bufferPointer: $0) }
                leaves.append(h.finalize())
                expected += 1
            }
            guard !leaves.isEmpty else { return nil }
            let newSize = size + UInt64(leaves.count)
            let edgeIDs = Tiles.edge(size: size)
            let edge = try await TileStore.read(edgeIDs, on: conn, logger: logger)
            guard edgeIDs.allSatisfy({ edge[$0] != nil }) else { throw BrokerError(.unavailable, "custody tiles are missing at the tree's edge") }
            let changed = try Tiles.integrate(size: size, leafHashes: leaves, edge: edge)
            let ids = Array(changed.keys)
            try await conn.query("""
                INSERT INTO custody_tiles (level, idx, hashes)
                SELECT * FROM unnest(\(ids.map(\.level))::int[], \(ids.map { Int64($0.index) })::bigint[],
                                     \(ids.map { id in ByteBuffer(bytes: changed[id]!.flatMap(\.bytes)) })::bytea[])
                ON CONFLICT (level, idx) DO UPDATE SET hashes = EXCLUDED.hashes
                """, logger: logger)
            // The root from the perfect subtrees that make up the new size.
            let rootPlan = MerkleProof.rootPlan(size: newSize)
            var known = changed
            let missing = Tiles.tiles(for: rootPlan.nodes).filter { known[$0] == nil }
            for (id, hashes) in try await TileStore.read(missing, on: conn, logger: logger) { known[id] = hashes }
            let root = try TileStore.build(rootPlan, from: known)[0]
            let checkpoint = Checkpoint(origin: signer.origin, size: newSize, root: root)
            let signature = try checkpoint.sign(certificate: signer.certificate, key: signer.key, chain: signer.chain)
            let note = try checkpoint.noteSignature(by: signer.note)
            let timeStamp = try await signer.timeStamp(Digest.sha256Bytes(signature))
            try await conn.query("""
                INSERT INTO custody_checkpoints (size, root, body, signature, time_stamp, note_signature)
                VALUES (\(Int64(newSize)), \(ByteBuffer(bytes: root.bytes)), \(checkpoint.text), \(ByteBuffer(bytes: signature)),
                        \(ByteBuffer(bytes: timeStamp)), \(note.line))
                """, logger: logger)
            return Outcome(checkpoint: checkpoint, integrated: leaves.count, more: leaves.count == maximumBatch)
        }
        if let outcome {
            onCheckpoint(outcome)
            integrated.increment(by: outcome.integrated)
            duration.record(duration: ContinuousClock.now - start)
        }
        return outcome
    }
}

/// Tile reads shared by the integrator and the proof queries.
enum TileStore {
    static func read(_ ids: [TileID], on conn: PostgresConnection, logger: Logger) async throws -> [TileID: [SHA256Digest]] {
        guard !ids.isEmpty else { return [:] }
        var out: [TileID: [SHA256Digest]] = [:]
        for try await (level, idx, hashes) in try await conn.query("""
            SELECT level, idx, hashes FROM custody_tiles
            WHERE (level, idx) IN (SELECT * FROM unnest(\(ids.map(\.level))::int[], \(ids.map { Int64($0.index) })::bigint[]))
            """, logger: logger).decode((Int, Int64, ByteBuffer).self) {
            out[TileID(level: level, index: UInt64(idx))] = digests(hashes)
        }
        return out
    }

    /// A plan's hashes from tiles already read; a tile short of a node means the store is
    /// behind the size asked about.
    static func build(_ plan: ProofPlan, from tiles: [TileID: [SHA256Digest]]) throws -> [SHA256Digest] {
        try plan.build { node in
            guard let h = Tiles.hash(of: node, in: tiles) else { throw BrokerError(.unavailable, "the custody tree is not integrated that far") }
            return h
        }
    }

    static func digests(_ buffer: ByteBuffer) -> [SHA256Digest] {
        buffer.withUnsafeReadableBytes { raw in
            stride(from: 0, to: raw.count - 31, by: 32).map { SHA256Digest(copying: UnsafeRawBufferPointer(rebasing: raw[$0..<$0 + 32])) }
        }
    }
}
