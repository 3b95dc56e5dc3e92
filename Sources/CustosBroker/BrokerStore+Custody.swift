import Crypto
import CustosCustody
import CustosMerkle
import CustosModel
import CustosPKI
import Foundation
import NIOCore
import PostgresNIO

/// Reading the custody log: checkpoints, events, inclusion and consistency proofs, witness
/// co-signatures, and the custody part of an export bundle.
extension BrokerStore {
    static func b64(_ d: SHA256Digest) -> String { Data(d.bytes).base64EncodedString() }

    /// The newest checkpoint, or nil before the first one.
    public func latestCheckpoint() async throws -> API.CheckpointView? {
        try await checkpoints(where: "size = (SELECT max(size) FROM custody_checkpoints)").first
    }

    public func checkpoint(size: UInt64) async throws -> API.CheckpointView {
        guard size <= UInt64(Int64.max), let c = try await checkpoints(where: "size = \(size)").first else {
            throw BrokerError(.notFound, "no checkpoint of size \(size)")
        }
        return c
    }

    /// The smallest checkpoint that includes the event at `index`.
    func checkpoint(covering index: UInt64) async throws -> API.CheckpointView? {
        try await checkpoints(where: "size = (SELECT min(size) FROM custody_checkpoints WHERE size > \(index))").first
    }

    private func checkpoints(where condition: String) async throws -> [API.CheckpointView] {
        var out: [API.CheckpointView] = []
        for try await (size, body, signature, timeStamp, noteLine, createdAt) in try await client.query(PostgresQuery(unsafeSQL: """
            SELECT size, body, signature, time_stamp, note_signature, created_at FROM custody_checkpoints WHERE \(condition)
            """), logger: logger).decode((Int64, String, ByteBuffer, ByteBuffer, String?, Date).self) {
            let cp = try Checkpoint(text: Array(body.utf8))
            var cosignatures: [API.CosignatureView] = []
            for try await (witness, sig, at) in try await client.query(
                "SELECT witness, signature, created_at FROM custody_cosignatures WHERE checkpoint_size = \(size) ORDER BY created_at", logger: logger
            ).decode((String, ByteBuffer, Date).self) {
                cosignatures.append(.init(witness: witness, signature: Data(sig.readableBytesView).base64EncodedString(), at: Timestamp.format(at)))
            }
            var note: String?
            if let noteLine {
                var lines = noteLine
                for try await line in try await client.query(
                    "SELECT line FROM custody_note_cosignatures WHERE checkpoint_size = \(size) ORDER BY created_at", logger: logger
                ).decode(String.self) { lines += line }
                note = body + "\n" + lines
            }
            out.append(API.CheckpointView(
                origin: cp.origin, size: cp.size, root: Self.b64(cp.root), time: cp.time ?? Timestamp.format(createdAt), text: body,
                signature: Data(signature.readableBytesView).base64EncodedString(), timeStamp: Data(timeStamp.readableBytesView).base64EncodedString(),
                cosignatures: cosignatures, note: note))
        }
        return out
    }

    /// One entry. Auditors, witnesses and admins read any; others only those about their own
    /// agency's requests (anything else is "not found", so its existence does not leak).
    public func custodyEvent(index: UInt64, viewer: AuthenticatedUser?) async throws -> API.CustodyEventView {
        let agency = viewer.map { $0.readsWholeCustodyLog ? nil : $0.agency } ?? nil
        guard let idx = Int64(exactly: index) else { throw BrokerError(.notFound, "no custody event at index \(index)") }
        for try await entry in try await client.query("""
            SELECT e.entry FROM custody_events e
            WHERE e.idx = \(idx) AND (\(agency)::text IS NULL OR EXISTS (
                SELECT 1 FROM requests r JOIN cases c ON c.id = r.case_id WHERE r.id = e.request_id AND c.agency = \(agency)))
            """, logger: logger).decode(ByteBuffer.self) {
            return API.CustodyEventView(index: index, entry: String(decoding: entry.readableBytesView, as: UTF8.self))
        }
        throw BrokerError(.notFound, "no custody event \(index)")
    }

    /// A package's events (and those of its request that name no package), in log order; for
    /// a viewer, only a package of its own agency.
    public func custodyEvents(package id: UUID, viewer: AuthenticatedUser? = nil, upTo size: UInt64 = .max) async throws -> [API.CustodyEventView] {
        let agency = viewer?.agency
        var requestId: UUID?
        for try await r in try await client.query("""
            SELECT p.request_id FROM packages p JOIN requests r ON r.id = p.request_id JOIN cases c ON c.id = r.case_id
            WHERE p.id = \(id) AND (\(agency)::text IS NULL OR c.agency = \(agency))
            """, logger: logger).decode(UUID.self) { requestId = r }
        guard let requestId else { throw BrokerError(.notFound, "no such package") }
        var out: [API.CustodyEventView] = []
        for try await (idx, entry) in try await client.query("""
            SELECT idx, entry FROM custody_events
            WHERE (package_id = \(id) OR (request_id = \(requestId) AND package_id IS NULL)) AND idx < \(Int64(clamping: size))
            ORDER BY idx
            """, logger: logger).decode((Int64, ByteBuffer).self) {
            out.append(API.CustodyEventView(index: UInt64(idx), entry: String(decoding: entry.readableBytesView, as: UTF8.self)))
        }
        return out
    }

    /// A request's events (its packages' included), in log order, at most `limit`; only a
    /// request of the viewer's own agency (else not found), as for a package's events.
    public func custodyEvents(request id: UUID, viewer: AuthenticatedUser, limit: Int = 500) async throws -> [API.CustodyEventView] {
        let agency: String? = viewer.agency
        let known = try await client.query("""
            SELECT 1 FROM requests r JOIN cases c ON c.id = r.case_id WHERE r.id = \(id) AND (\(agency)::text IS NULL OR c.agency = \(agency))
            """, logger: logger).decode(Int.self).first { _ in true } != nil
        guard known else { throw BrokerError(.notFound, "no such request") }
        var out: [API.CustodyEventView] = []
        for try await (idx, entry) in try await client.query("""
            SELECT idx, entry FROM custody_events WHERE request_id = \(id) ORDER BY idx LIMIT \(limit)
            """, logger: logger).decode((Int64, ByteBuffer).self) {
            out.append(API.CustodyEventView(index: UInt64(idx), entry: String(decoding: entry.readableBytesView, as: UTF8.self)))
        }
        return out
    }

    /// Reads tiles; a tile the store lacks is simply absent from the answer.
    func tiles(_ ids: [TileID]) async throws -> [TileID: [SHA256Digest]] {
        try await client.withConnection { try await TileStore.read(ids, on: $0, logger: logger) }
    }

    /// A proof's hashes from the tiles: one query, then hashing.
    public func build(_ plan: ProofPlan) async throws -> [SHA256Digest] {
        try TileStore.build(plan, from: try await tiles(Tiles.tiles(for: plan.nodes)))
    }

    /// The audit path of event `index` into the checkpoint of `size` (default: the smallest
    /// checkpoint that includes it).
    public func inclusionProof(index: UInt64, size: UInt64?, viewer: AuthenticatedUser? = nil) async throws -> API.InclusionProofView {
        let event = try await custodyEvent(index: index, viewer: viewer)
        let checkpoint: API.CheckpointView
        if let size {
            checkpoint = try await self.checkpoint(size: size)
        } else {
            guard let c = try await self.checkpoint(covering: index) else {
                throw BrokerError(.unavailable, "event \(index) is not in a checkpoint yet; checkpoints follow within seconds")
            }
            checkpoint = c
        }
        let plan: ProofPlan
        do { plan = try MerkleProof.inclusionPlan(index: index, size: checkpoint.size) } catch {
            throw BrokerError(.invalid, error.description)
        }
        return API.InclusionProofView(index: index, size: checkpoint.size, entry: event.entry,
                                      proof: try await build(plan).map(Self.b64), checkpoint: checkpoint)
    }

    /// The proof that checkpoint `from` is a prefix of checkpoint `to` (both must exist).
    public func consistencyProof(from: UInt64, to: UInt64) async throws -> API.ConsistencyProofView {
        guard from <= to else { throw BrokerError(.invalid, "from must not be above to") }
        if from > 0 { _ = try await checkpoint(size: from) }
        _ = try await checkpoint(size: to)
        let plan = try MerkleProof.consistencyPlan(from: from, to: to)
        return API.ConsistencyProofView(from: from, to: to, proof: try await build(plan).map(Self.b64))
    }

    /// Stores a witness's co-signature of a checkpoint after checking it: CMS over the
    /// checkpoint's exact text, signed by the certificate registered for that witness.
    public func cosign(size: UInt64, signature: String, by user: AuthenticatedUser) async throws -> API.CheckpointView {
        guard user.roles.contains(.witness) else { throw BrokerError(.forbidden, "only witnesses co-sign checkpoints") }
        let checkpoint = try await self.checkpoint(size: size)
        guard let der = Data(base64Encoded: signature), !der.isEmpty, der.count < 1 << 16 else {
            throw BrokerError(.invalid, "invalid co-signature", violations: [FieldViolation(field: "signature", rule: "must be base64 DER, under 64 KiB")])
        }
        var registered: String?
        for try await pem in try await client.query("SELECT certificate_pem FROM witnesses WHERE name = \(user.name)", logger: logger).decode(String.self) {
            registered = pem
        }
        guard let registered, let expected = try? CertificateInfo(pem: registered) else {
            throw BrokerError(.forbidden, "no certificate is registered for witness \(user.name)")
        }
        switch CMS.verifyIntegrity(signature: Array(der), data: Array(checkpoint.text.utf8)) {
        case .invalid(let why):
            throw BrokerError(.invalid, "the co-signature does not cover checkpoint \(size): \(why)")
        case .valid(let signer):
            guard signer.der == expected.der else { throw BrokerError(.forbidden, "the co-signature is not by the certificate registered for \(user.name)") }
            guard signer.isValid(at: Date()) else { throw BrokerError(.invalid, "the witness certificate is not valid now") }
        }
        try await client.query("""
            INSERT INTO custody_cosignatures (checkpoint_size, witness, signature) VALUES (\(Int64(size)), \(user.name), \(ByteBuffer(data: der)))
            ON CONFLICT DO NOTHING
            """, logger: logger)
        return try await self.checkpoint(size: size)
    }

    /// What a bundle carries for custody: the newest checkpoint, and every event of the
    /// package with its proof into it. Waits (briefly) until `index`, typically the export's
    /// own event, is inside a checkpoint.
    public func custodyProofs(package id: UUID, including index: Int64, timeout: Duration = .seconds(10)) async throws
        -> (checkpoint: API.CheckpointView, proofs: CustodyProofs)
    {
        let deadline = ContinuousClock.now + timeout
        var checkpoint = try await latestCheckpoint()
        while checkpoint.map({ $0.size <= UInt64(index) }) ?? true {
            guard ContinuousClock.now < deadline else {
                throw BrokerError(.unavailable, "the custody log has not checkpointed the export yet; try again in a few seconds")
            }
            try await Task.sleep(for: .milliseconds(100))
            checkpoint = try await latestCheckpoint()
        }
        let cp = checkpoint!
        let events = try await custodyEvents(package: id, upTo: cp.size)
        let plans = try events.map { try MerkleProof.inclusionPlan(index: $0.index, size: cp.size) }
        let tiles = try await tiles(Tiles.tiles(for: plans.flatMap(\.nodes)))
        let proven = try zip(events, plans).map { event, plan in
            CustodyProofs.Event(index: event.index, entry: event.entry, proof: try TileStore.build(plan, from: tiles).map(Self.b64))
        }
        // The newest earlier checkpoint that witnesses co-signed, and the proof that this one extends it.
        var witnessed: CustodyProofs.Witnessed?
        let witnessedSize = try await client.query(
            "SELECT max(checkpoint_size) FROM custody_cosignatures WHERE checkpoint_size < \(Int64(cp.size))", logger: logger
        ).decode(Int64?.self).first { _ in true } ?? nil
        if let witnessedSize {
            let w = try await self.checkpoint(size: UInt64(witnessedSize))
            witnessed = .init(checkpoint: w.text, signature: w.signature, cosignatures: w.cosignatures.map(Self.cosignature),
                              consistency: try await build(try MerkleProof.consistencyPlan(from: w.size, to: cp.size)).map(Self.b64))
        }
        return (cp, CustodyProofs(events: proven, cosignatures: cp.cosignatures.map(Self.cosignature), witnessed: witnessed))
    }

    static func cosignature(_ c: API.CosignatureView) -> Cosignature {
        Cosignature(witness: c.witness, signature: c.signature, at: c.at)
    }

    /// Seals or unseals a package: it stays stored, but while sealed neither its content nor
    /// its bundle is released. The reason goes to the timeline; the log gets its hash.
    public func setSealed(_ sealed: Bool, package id: UUID, reason: String, by user: AuthenticatedUser) async throws {
        guard !user.roles.isDisjoint(with: [.admin, .approver]) else { throw BrokerError(.forbidden, "only approvers and admins seal or unseal packages") }
        let r = reason.trimmingCharacters(in: .whitespacesAndNewlines)
        guard (1...2000).contains(r.count) else {
            throw BrokerError(.invalid, "invalid decision", violations: [FieldViolation(field: "reason", rule: "must be 1 to 2000 characters")])
        }
        try await client.custodyTransaction(logger: logger) { conn, custody in
            var found: (UUID, Bool, String?)?
            for try await row in try await conn.query("""
                SELECT p.request_id, p.sealed, r.review FROM packages p JOIN requests r ON r.id = p.request_id JOIN cases c ON c.id = r.case_id
                WHERE p.id = \(id) AND c.agency = \(user.agency) FOR UPDATE OF p
                """, logger: logger).decode((UUID, Bool, String?).self) { found = row }
            guard let (requestId, current, review) = found else { throw BrokerError(.notFound, "no such package") }
            guard current != sealed else { throw BrokerError(.conflict, "package is already \(sealed ? "sealed" : "unsealed")") }
            if !sealed, let review, let outcome = Emergency.Outcome(rawValue: review), outcome != .confirmed {
                throw BrokerError(.forbidden, "package stays sealed: \(outcome.sealReason)")
            }
            try await conn.query("UPDATE packages SET sealed = \(sealed), seal_reason = \(sealed ? r : nil) WHERE id = \(id)", logger: logger)
            try await conn.query("""
                INSERT INTO request_events (request_id, state, actor, note)
                SELECT \(requestId), state, \(user.name), \("package \(id.lowercased) \(sealed ? "sealed" : "unsealed"): \(r)") FROM requests WHERE id = \(requestId)
                """, logger: logger)
            custody.record(CustodyEvent(kind: sealed ? .packageSealed : .packageUnsealed, at: Timestamp.now(), actor: user.actor,
                                        subject: .init(requestId: requestId, packageId: id), objects: ["reasonSha256": Digest.sha256Hex(Array(r.utf8))]))
        }
    }
}

extension BrokerStore {
    /// Records a key change: for each purpose (message signing, custody log, time-stamping),
    /// an `admin.key-changed` event when the key in use is not the one last recorded.
    public func recordKeyChanges(_ fingerprints: [String: String]) async throws {
        try await client.custodyTransaction(logger: logger) { conn, custody in
            try await conn.query("SELECT pg_advisory_xact_lock(hashtext('custos.custody.keys'))", logger: logger)
            var latest: [String: String] = [:]
            for try await entry in try await conn.query(
                "SELECT entry FROM custody_events WHERE kind = 'admin.key-changed' ORDER BY idx", logger: logger
            ).decode(ByteBuffer.self) {
                if let e = try? CustodyEvent.decode(entry: Array(entry.readableBytesView)), let purpose = e.details["purpose"] {
                    latest[purpose] = e.objects["keySha256"]
                }
            }
            for (purpose, fingerprint) in fingerprints.sorted(by: { $0.key < $1.key }) where latest[purpose] != fingerprint {
                var details = ["purpose": purpose]
                if let previous = latest[purpose] { details["previousKeySha256"] = previous }
                custody.record(CustodyEvent(kind: .keyChanged, at: Timestamp.now(), actor: .broker, subject: .init(),
                                            objects: ["keySha256": fingerprint], details: details))
            }
        }
    }
}
