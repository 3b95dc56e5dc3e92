import Crypto
import CustosCanonicalJSON
import CustosCriteria
import CustosCustody
import CustosEvidence
import CustosKafka
import CustosModel
import Foundation
import Logging
import Metrics
import PostgresNIO

/// A provider message that is well-formed but cannot be accepted (unknown request, a chunk
/// that does not match its hash...). It goes to the dead-letter table with this reason.
struct IngestRejection: Error, CustomStringConvertible {
    var reason: String
    var description: String { reason }
}

public enum IngestOutcome: Sendable, Equatable {
    case applied(MessageType)
    case duplicate
    case deadLettered(String)
}

extension BrokerStore {
    /// Applies one message from `custos.from.<provider>` in one transaction. The caller
    /// stores the Kafka offset only after this returns; a message seen before (by id) has
    /// no second effect, so redelivery after any crash is harmless.
    public func ingest(_ message: KafkaMessage, providerKeys: [String: VerifyingKey]) async throws -> IngestOutcome {
        // The sender a message on this topic must be signed by (either lane).
        let expectedSender = Topics.provider(fromTopic: message.topic) ?? ""
        let envelopeBytes = message.header(Topics.envelopeHeader) ?? message.value
        let opened: (header: EnvelopeHeader, json: JSONValue)
        do {
            opened = try SignedEnvelope.open(envelopeBytes) { sender in sender == expectedSender ? providerKeys[sender] : nil }
        } catch {
            return try await deadLetter(message, reason: error.description)
        }
        let header = opened.header
        // The sender is authenticated from here on: whatever stops its message is answered
        // with a signed message receipt, so that the provider learns why (SPEC §7).
        let answer = Answer(provider: expectedSender, requestId: header.requestId,
                            messageId: opened.json["id"]?.stringValue ?? header.id.lowercased, messageType: header.type.rawValue,
                            packageId: (header.type == .chunk || header.type == .manifestPart) ? opened.json["body"]?["packageId"]?.stringValue : nil)
        guard header.type.direction == .fromProvider else {
            return try await deadLetter(message, reason: "wrongDirection: \(header.type.rawValue) is not a provider message", answer: answer)
        }
        // The Kafka key is the request id (SPEC §7): each request's messages are applied in order
        // by it, so a message keyed otherwise could overtake its request's others.
        if !message.key.isEmpty, UUID(uuidString: String(decoding: message.key, as: UTF8.self)) != header.requestId {
            return try await deadLetter(message, reason: "malformed: the Kafka key is not the message's request id", answer: answer)
        }
        // Every number and string within the bounds its schema sets, before the database sees any.
        if let violation = MessageBounds.violation(in: opened.json, type: header.type) {
            return try await deadLetter(message, reason: violation, answer: answer)
        }
        guard (message.header(Topics.envelopeHeader) != nil) == (header.type == .chunk || header.type == .manifestPart) else {
            return try await deadLetter(message, reason: "malformed: only chunk and manifest-part messages carry their envelope in a header", answer: answer)
        }
        // What the message says: its type, request, sender and body, and a chunk's data — not
        // when it was sent or its signature (a sender may send the same message again after a
        // restart, signed anew: ES256 signatures differ each time).
        var said: [String: JSONValue] = [:]
        if case .object(let members) = opened.json {
            for key in ["type", "requestId", "sender", "body"] { said[key] = members[key] }
        }
        var content = CanonicalJSON.serialize(.object(said))
        // A chunk's (or manifest part's) SHA-256, taken once: it is checked against the envelope too.
        let valueSha256 = message.header(Topics.envelopeHeader) != nil ? Digest.sha256Bytes(message.value) : nil
        if let valueSha256 { content += valueSha256 }
        let contentSha256 = Digest.sha256Hex(content)
        do {
            return try await client.custodyTransaction(logger: logger) { conn, custody in
                let fresh = try await conn.query("""
                    INSERT INTO inbox (message_id, message_type, request_id, content_sha256) VALUES (\(header.id), \(header.type.rawValue), \(header.requestId), \(contentSha256))
                    ON CONFLICT DO NOTHING RETURNING 1
                    """, logger: logger).decode(Int.self).first { _ in true } != nil
                guard fresh else {
                    // Seen before: the same content is a redelivery; other content under the
                    // same id is a conflict, refused with its reason rather than dropped.
                    let applied = try await conn.query("SELECT content_sha256 FROM inbox WHERE message_id = \(header.id)", logger: logger)
                        .decode(String?.self).first { _ in true } ?? nil
                    if let applied, applied != contentSha256 {
                        throw IngestRejection(reason: "conflict: a message with this id was already applied with other content")
                    }
                    return .duplicate
                }
                try await apply(conn, header: header, json: opened.json, value: message.value, valueSha256: valueSha256?.hexString,
                                provider: expectedSender, custody: custody)
                return .applied(header.type)
            }
        } catch let rejection as IngestRejection {
            return try await deadLetter(message, reason: rejection.reason, answer: answer)
        } catch {
            // A failure about the message is dead-lettered at once; one about the database (or
            // the chunk store), or one not foreseen, is thrown for the consumer to retry.
            guard case .message(let reason) = IngestFailure.cause(of: error) else { throw error }
            return try await deadLetter(message, reason: reason, answer: answer)
        }
    }

    /// Whom to tell that a message was not applied: its authenticated sender, on its topic.
    struct Answer {
        var provider: String
        var requestId: UUID
        /// The message's `id` and `type` exactly as it wrote them.
        var messageId: String
        var messageType: String
        /// A chunk's or manifest part's package: its messages are answered once per package
        /// and reason (a refused manifest would otherwise bring one receipt per chunk).
        var packageId: String?

        /// The receipt's id: the same each time the same thing is answered, and never the same
        /// for two providers.
        func receiptId(reason: String) -> UUID {
            if let packageId {
                return UUID.derived("receipt", provider, messageType, packageId.lowercased(), reason)
            }
            return UUID.derived("receipt", provider, "message", messageId.lowercased())
        }
    }

    /// Keeps a message that cannot be applied in `dead_letters` with its reason, and, when its
    /// sender is authenticated (`answer`), queues a signed message receipt that tells it why, in
    /// the same transaction. The receipt's id derives from the message's id, so a redelivered
    /// message is answered once.
    func deadLetter(_ m: KafkaMessage, reason: String, answer: Answer? = nil) async throws -> IngestOutcome {
        let payload = m.header(Topics.envelopeHeader) ?? m.value
        try await client.transaction(logger: logger) { conn in
            try await conn.query("""
                INSERT INTO dead_letters (topic, kafka_partition, kafka_offset, reason, payload)
                VALUES (\(m.topic), \(Int(m.partition)), \(m.offset), \(reason), \(ByteBuffer(bytes: payload)))
                ON CONFLICT DO NOTHING
                """, logger: logger)
            if let answer {
                let receipt = Envelope(type: .receipt, id: answer.receiptId(reason: reason), requestId: answer.requestId, sender: "broker",
                                       body: ReceiptBody(rejectedMessageId: answer.messageId, messageType: answer.messageType, reason: reason,
                                                         receivedAt: Timestamp.now()))
                try await Self.enqueue(conn, receipt, topic: Topics.toProvider(answer.provider), signer: signer, logger: logger)
            }
        }
        logger.warning("message dead-lettered", metadata: [
            LogKey.topic: "\(m.topic)", LogKey.partition: "\(m.partition)", LogKey.offset: "\(m.offset)", LogKey.reason: "\(reason)",
        ])
        return .deadLettered(reason)
    }

    private func apply(_ conn: PostgresConnection, header: EnvelopeHeader, json: JSONValue, value: [UInt8], valueSha256: String?, provider: String,
                       custody: CustodyRecorder) async throws {
        let actor = CustodyEvent.Actor(type: .provider, id: provider)
        let row: RequestRow
        do { row = try await Self.lockRequest(conn, header.requestId, logger: logger) } catch is BrokerError {
            throw IngestRejection(reason: "unknown request")
        }
        // The same words as for a request that does not exist: a provider cannot learn of
        // another's requests from the answer.
        guard row.providerId == provider else { throw IngestRejection(reason: "unknown request") }
        guard RequestLifecycle.sent.contains(row.state) else {
            throw IngestRejection(reason: "request is \(row.state.rawValue), not dispatched")
        }
        switch header.type {
        case .ack:
            let body = try SignedEnvelope.body(AckBody.self, from: json).body
            guard body.requestHash == row.requestHash else { throw IngestRejection(reason: "acknowledged request hash differs from the request as approved") }
            try await Self.advance(conn, header.requestId, .acknowledge, actor: actor, custody: custody, logger: logger)
        case .status:
            let body = try SignedEnvelope.body(StatusBody.self, from: json).body
            guard (0...100).contains(body.percent) else { throw IngestRejection(reason: "status percent is outside 0 to 100") }
            // Every status updates the progress shown; the first also moves the request on.
            try await conn.query("""
                UPDATE requests SET progress_phase = \(body.phase.rawValue), progress_percent = \(body.percent), progress_at = now()
                WHERE id = \(header.requestId)
                """, logger: logger)
            try await Self.advance(conn, header.requestId, .progress, actor: actor, note: "\(body.phase.rawValue) \(body.percent)%", custody: custody,
                                   details: ["phase": body.phase.rawValue, "percent": "\(body.percent)"], logger: logger)
        case .refusal:
            let body = try SignedEnvelope.body(RefusalBody.self, from: json).body
            // A refusal that crossed the request's end on the wire (verified, expired, revoked)
            // changes nothing, and a repeated one is not recorded twice.
            try await Self.advance(conn, header.requestId, .refuse, actor: actor, note: body.reason.rawValue, custody: custody,
                                   details: ["reason": body.reason.rawValue], logger: logger)
        case .manifest:
            guard !row.spec.isPreservation else { throw IngestRejection(reason: "a preservation order delivers no data") }
            let body = try SignedEnvelope.body(ManifestBody.self, from: json).body
            // The manifest's bytes as the provider signed them: its member of the message,
            // which must itself be RFC 8785 canonical (then the member is exactly the bytes sent).
            guard CanonicalJSON.serialize(json).elementsEqual(value) else {
                throw IngestRejection(reason: "malformed: the manifest message is not RFC 8785 canonical JSON, so its signed manifest cannot be kept as sent")
            }
            guard case .object(let members) = json, case .object(let bodyMembers)? = members["body"], let manifestJSON = bodyMembers["manifest"] else {
                throw IngestRejection(reason: "malformed: the manifest message has no body.manifest")
            }
            try await acceptManifest(conn, body, signedBytes: CanonicalJSON.serialize(manifestJSON), header: header, provider: provider, custody: custody)
        case .manifestPart:
            guard !row.spec.isPreservation else { throw IngestRejection(reason: "a preservation order delivers no data") }
            let part = try SignedEnvelope.body(ManifestPartBody.self, from: json).body
            if let (body, signedBytes) = try await acceptManifestPart(conn, part, bytes: value, header: header) {
                guard body.manifest.packageId == part.packageId else { throw IngestRejection(reason: "manifest parts name another package than their manifest") }
                try await acceptManifest(conn, body, signedBytes: signedBytes, header: header, provider: provider, custody: custody)
            }
        case .chunk:
            guard !row.spec.isPreservation else { throw IngestRejection(reason: "a preservation order delivers no data") }
            let body = try SignedEnvelope.body(ChunkBody.self, from: json).body
            try await acceptChunk(conn, body, bytes: value, sha256: valueSha256 ?? Digest.sha256Hex(value), header: header, provider: provider, custody: custody)
        case .clarificationRequest:
            let body = try SignedEnvelope.body(ClarificationRequestBody.self, from: json).body
            let question = body.question.trimmingCharacters(in: .whitespacesAndNewlines)
            guard (1...ClarificationRequestBody.maximumLength).contains(question.count) else {
                throw IngestRejection(reason: "clarification question must be 1 to \(ClarificationRequestBody.maximumLength) characters")
            }
            guard RequestLifecycle.awaitsProvider(row.state) else {
                throw IngestRejection(reason: "request is \(row.state.rawValue); nothing to clarify")
            }
            try await conn.query("INSERT INTO clarifications (id, request_id, question) VALUES (\(header.id), \(header.requestId), \(question))", logger: logger)
            try await LegalClock.pause(conn, header.requestId, logger: logger)
            try await conn.query(
                "INSERT INTO request_events (request_id, state, actor, note) VALUES (\(header.requestId), 'clarification-requested', \(provider), NULL)",
                logger: logger)
            custody.record(CustodyEvent(kind: .request("clarification-requested"), at: Timestamp.now(), actor: actor,
                                        subject: .init(caseId: row.spec.caseId, requestId: header.requestId),
                                        objects: ["questionSha256": Digest.sha256Hex(Array(question.utf8))], details: ["question": header.id.lowercased]))
        case .preserved:
            let body = try SignedEnvelope.body(PreservationTermBody.self, from: json).body
            guard row.spec.isPreservation else { throw IngestRejection(reason: "only a preservation order is confirmed as preserved") }
            guard body.requestHash == row.requestHash else { throw IngestRejection(reason: "preserved request hash differs from the request as approved") }
            guard let until = Timestamp.parse(body.until) else { throw IngestRejection(reason: "until must be an RFC 3339 UTC time") }
            let confirmedBefore = try await conn.query(
                "SELECT 1 FROM request_events WHERE request_id = \(header.requestId) AND state = 'preserved' LIMIT 1", logger: logger
            ).decode(Int.self).first { _ in true } != nil
            guard !RequestState.ended.contains(row.state) || !confirmedBefore else {
                // A confirmation that crossed the order's end on the wire (an extension confirmed
                // after the release was sent): nothing to change, and nothing wrong to report.
                // A first confirmation after the end is refused below, and the provider told.
                logger.info("preservation confirmed after the order ended; nothing to change", metadata: [
                    LogKey.request: "\(header.requestId.lowercased)", LogKey.outcome: "\(row.state.rawValue)",
                ])
                return
            }
            guard !RequestState.ended.contains(row.state) else { throw IngestRejection(reason: "the preservation order is \(row.state.rawValue)") }
            // The first confirmation moves the order on; one after an extension is recorded too.
            let note = "frozen until \(Timestamp.format(until))"
            try await Self.advance(conn, header.requestId, .preserve, actor: actor, note: note, custody: custody,
                                   details: ["until": Timestamp.format(until)], recordAnyway: true, logger: logger)
        case .request, .receipt, .revocation, .clarification, .preservationExtension, .preservationRelease:
            throw IngestRejection(reason: "not a provider message")
        }
    }

    /// Keeps one part of a manifest sent in parts; once every part is in, returns the body
    /// they make (checked against its SHA-256) with the manifest's bytes as signed, and removes
    /// the parts.
    private func acceptManifestPart(_ conn: PostgresConnection, _ part: ManifestPartBody, bytes: [UInt8], header: EnvelopeHeader) async throws
        -> (ManifestBody, [UInt8])?
    {
        guard (2...Topics.maximumManifestParts).contains(part.count), (0..<part.count).contains(part.index), part.size == bytes.count,
              (1...Topics.maximumChunkBytes).contains(bytes.count), Digest.isSHA256Hex(part.sha256), Digest.isSHA256Hex(part.bodySha256)
        else { throw IngestRejection(reason: "manifest part is malformed") }
        guard Digest.sha256Hex(bytes) == part.sha256 else { throw IngestRejection(reason: "manifest part SHA-256 differs from its envelope") }
        var others: (count: Int, body: String)?
        for try await (count, body) in try await conn.query(
            "SELECT count, body_sha256 FROM manifest_parts WHERE package_id = \(part.packageId) LIMIT 1", logger: logger
        ).decode((Int, String).self) { others = (count, body) }
        if let others, others.count != part.count || others.body != part.bodySha256 {
            throw IngestRejection(reason: "manifest part disagrees with the package's other parts")
        }
        try await conn.query("""
            INSERT INTO manifest_parts (package_id, request_id, idx, count, body_sha256, data)
            VALUES (\(part.packageId), \(header.requestId), \(part.index), \(part.count), \(part.bodySha256), \(ByteBuffer(bytes: bytes)))
            ON CONFLICT DO NOTHING
            """, logger: logger)
        let have = try await conn.query("SELECT count(*) FROM manifest_parts WHERE package_id = \(part.packageId)", logger: logger)
            .decode(Int.self).first { _ in true } ?? 0
        guard have == part.count else { return nil }
        var whole: [UInt8] = []
        for try await data in try await conn.query(
            "SELECT data FROM manifest_parts WHERE package_id = \(part.packageId) ORDER BY idx", logger: logger
        ).decode(ByteBuffer.self) { whole += data.readableBytesView }
        try await conn.query("DELETE FROM manifest_parts WHERE package_id = \(part.packageId)", logger: logger)
        guard Digest.sha256Hex(whole) == part.bodySha256 else { throw IngestRejection(reason: "manifest parts do not make the body their SHA-256 names") }
        guard case .object(let members)? = try? JSONParser.parse(whole), let manifestJSON = members["manifest"],
              let body = try? JSONDecoder().decode(ManifestBody.self, from: Data(whole))
        else { throw IngestRejection(reason: "manifest parts do not make a manifest message body") }
        if let violation = MessageBounds.violation(in: .object(["body": .object(members)]), type: .manifest) { throw IngestRejection(reason: violation) }
        guard CanonicalJSON.serialize(.object(members)).elementsEqual(whole) else {
            throw IngestRejection(reason: "malformed: the manifest parts' body is not RFC 8785 canonical JSON, so its signed manifest cannot be kept as sent")
        }
        return (body, CanonicalJSON.serialize(manifestJSON))
    }

    /// `signedBytes`: the manifest exactly as the provider signed and sent it; they are what is
    /// stored, hashed and verified, never a re-encoding of the decoded manifest.
    private func acceptManifest(_ conn: PostgresConnection, _ body: ManifestBody, signedBytes canonical: [UInt8], header: EnvelopeHeader, provider: String,
                                custody: CustodyRecorder) async throws {
        let m = body.manifest
        guard m.requestId == header.requestId else { throw IngestRejection(reason: "manifest names another request than its envelope") }
        guard m.chunks.count <= 1_000_000, m.chunks.allSatisfy({ $0.size > 0 && $0.size <= Topics.maximumChunkBytes && Digest.isSHA256Hex($0.sha256) }) else {
            throw IngestRejection(reason: "manifest chunk list is malformed")
        }
        guard let signature = Data(base64Encoded: body.signature), let timeStamp = Data(base64Encoded: body.timeStamp),
              !signature.isEmpty, !timeStamp.isEmpty, signature.count < 1 << 20, timeStamp.count < 1 << 20
        else { throw IngestRejection(reason: "manifest signature or time-stamp is not base64 DER") }
        let manifestSha = Digest.sha256Hex(canonical)
        let actor = CustodyEvent.Actor(type: .provider, id: provider)
        try await claimArrival(conn, packageId: m.packageId, requestId: m.requestId, provider: provider, manifest: true)
        // A package for a revoked or lapsed emergency is kept, but sealed from the start.
        let sealReason = try await Emergency.sealOnArrival(conn, request: m.requestId, logger: logger)
        let inserted = try await conn.query("""
            INSERT INTO packages (id, request_id, provider_id, manifest, manifest_signature, time_stamp, manifest_sha256, chunk_count, content_size, chunks_root,
                                  sealed, seal_reason)
            VALUES (\(m.packageId), \(m.requestId), \(provider), \(String(decoding: canonical, as: UTF8.self)), \(ByteBuffer(data: signature)),
                    \(ByteBuffer(data: timeStamp)), \(manifestSha), \(m.chunks.count), \(m.content.size), \(m.chunksRoot), \(sealReason != nil), \(sealReason))
            ON CONFLICT (id) DO NOTHING RETURNING 1
            """, logger: logger).decode(Int.self).first { _ in true } != nil
        if inserted {
            custody.record(CustodyEvent(
                kind: .manifestReceived, at: Timestamp.now(), actor: actor, subject: .init(requestId: m.requestId, packageId: m.packageId),
                objects: ["manifestSha256": manifestSha, "signatureSha256": Digest.sha256Hex(signature), "timeStampSha256": Digest.sha256Hex(timeStamp)],
                details: ["chunks": "\(m.chunks.count)", "size": "\(m.content.size)"]))
            if let sealReason {
                custody.record(CustodyEvent(kind: .packageSealed, at: Timestamp.now(), actor: .broker, subject: .init(requestId: m.requestId, packageId: m.packageId),
                                            objects: ["noteSha256": Digest.sha256Hex(Array(sealReason.utf8))], details: ["onArrival": "true"]))
            }
        }
        try await Self.advance(conn, header.requestId, .progress, actor: actor, note: "manifest received: \(m.chunks.count) chunks",
                               custody: custody, packageId: m.packageId, logger: logger)
        // The manifest comes last (package protocol v2): the package may be complete now.
        try await finalizeIfComplete(conn, packageId: m.packageId, custody: custody)
    }

    /// When the signed manifest is in and every chunk it lists has been checked as it arrived
    /// (`acceptChunk`), finalises the package: compares the roots, sizes and counts built on
    /// the way with the manifest, checks the signature and the time-stamp, finishes the four
    /// criteria's verdict, records it, and queues a signed receipt. Reads no chunk again, unless
    /// this process has no arrival for the package (after a restart: it is rebuilt from the
    /// chunk store).
    func finalizeIfComplete(_ conn: PostgresConnection, packageId: UUID, custody: CustodyRecorder) async throws {
        var row: (UUID, String, String, ByteBuffer, ByteBuffer, Int, String)?
        for try await r in try await conn.query("""
            SELECT request_id, provider_id, manifest, manifest_signature, time_stamp, chunk_count, state FROM packages WHERE id = \(packageId)
            """, logger: logger).decode((UUID, String, String, ByteBuffer, ByteBuffer, Int, String).self) { row = r }
        guard let (requestId, provider, manifestJSON, signatureBuffer, timeStampBuffer, chunkCount, state) = row,
              state == PackageState.receiving.rawValue
        else { return }
        let checked = try await conn.query("SELECT checked FROM arriving_packages WHERE package_id = \(packageId)", logger: logger)
            .decode(Int.self).first { _ in true } ?? 0
        guard checked >= chunkCount else { return }
        let finalising = Meter(label: "custos_packages_finalising")
        finalising.increment()
        let started = ContinuousClock.now
        defer {
            finalising.decrement()
            Metrics.Timer(label: "custos_package_finalise_seconds", preferredDisplayUnit: .seconds).record(duration: ContinuousClock.now - started)
        }
        var arrival = try await advance(conn, packageId: packageId, requestId: requestId)
        defer { arrivals.remove(packageId) }
        let beyond = try await conn.query("SELECT count(*) FROM package_chunks WHERE package_id = \(packageId) AND idx >= \(chunkCount)", logger: logger)
            .decode(Int.self).first { _ in true } ?? 0

        let manifest = try JSONDecoder().decode(Manifest.self, from: Data(manifestJSON.utf8))
        let subject = CustodyEvent.Subject(requestId: requestId, packageId: packageId)
        let providerActor = CustodyEvent.Actor(type: .provider, id: provider)
        custody.record(CustodyEvent(kind: .packageCompleted, at: Timestamp.now(), actor: providerActor, subject: subject,
                                    objects: ["manifestSha256": Digest.sha256Hex(Array(manifestJSON.utf8)), "chunksRoot": manifest.chunksRoot],
                                    details: ["chunks": "\(chunkCount)", "size": "\(manifest.content.size)"]))
        var providerRow: (String, String)?
        for try await r in try await conn.query("SELECT ca_certificate_pem, certificate_pem FROM providers WHERE id = \(provider)", logger: logger)
            .decode((String, String).self) { providerRow = r }
        let requestHash = try await conn.query("SELECT request_hash FROM requests WHERE id = \(requestId)", logger: logger)
            .decode(String?.self).first { _ in true } ?? nil
        var failures = PackageVerifier.checkManifest(manifest, expectedProvider: provider, expectedRequest: requestId, expectedRequestHash: requestHash ?? "")
        let manifestBytes = Array(manifestJSON.utf8)  // as the provider signed and sent them
        let signatureCheck = PackageSignatureVerifier.verify(
            manifest: manifestBytes, signature: Array(signatureBuffer.readableBytesView), timeStamp: Array(timeStampBuffer.readableBytesView),
            providerId: provider, providerTrust: providerRow?.0 ?? "", tsaTrust: tsaTrust)
        failures += signatureCheck.failures
        // Built as the chunks arrived: compared with the manifest now, nothing read again.
        var contentFailures = arrival.content.finish(against: manifest)
        if beyond > 0, !contentFailures.contains(where: { $0.code == .trailingData }) {
            contentFailures.append(.init(code: .trailingData, detail: "\(beyond) chunks past the last chunk of the manifest"))
        }
        if contentFailures.contains(where: { $0.code == .chunkHash }) {
            // Which chunks differ, by index (the index's hashes against the manifest's list).
            var named: [PackageVerification.Failure] = []
            for try await (idx, sha) in try await conn.query(
                "SELECT idx, sha256 FROM package_chunks WHERE package_id = \(packageId) AND idx < \(chunkCount) ORDER BY idx", logger: logger
            ).decode((Int, String).self) where named.count < 1000 && idx < manifest.chunks.count && manifest.chunks[idx].sha256 != sha {
                named.append(.init(code: .chunkHash, detail: "chunk \(idx) SHA-256 differs from the manifest"))
            }
            if !named.isEmpty { contentFailures = contentFailures.filter { $0.code != .chunkHash } + named }
        }
        failures += contentFailures
        if arrival.digests?.failed == true {
            logger.warning("the duplicate count is incomplete: record digests could not be written", metadata: [LogKey.package: "\(packageId.lowercased)"])
        }
        let verification = PackageVerification(failures: failures, manifestSha256: Digest.sha256Hex(manifestBytes), checkedAt: Timestamp.now())
        // The verdict: delivered now, against the delivery clock (if it has one), time-stamped when the token says.
        let deadline = try await conn.query("SELECT deadline FROM request_clocks WHERE request_id = \(requestId) AND clock = 'delivery'", logger: logger)
            .decode(Date.self).first { _ in true }
        let criteria = arrival.judge?.finish(manifest: manifest, checks: failures.map(\.code.rawValue), delivery: .init(deliveredAt: Date(), deadline: deadline, timeStampedAt: signatureCheck.genTime),
                                     bounds: criteriaBounds)
        let criteriaJSON = try criteria.map { String(decoding: try CanonicalJSON.encode($0), as: UTF8.self) }
        if let criteria, let criteriaJSON {
            var details = ["admissible": "\(criteria.admissible)"]
            for c in Verdict.Criterion.allCases { details[c.rawValue] = criteria.status(c)?.rawValue ?? "" }
            custody.record(CustodyEvent(kind: .criteria, at: Timestamp.now(), actor: .broker, subject: subject,
                                        objects: ["criteriaSha256": Digest.sha256Hex(Array(criteriaJSON.utf8))], details: details))
        }
        let verdict = String(decoding: try CanonicalJSON.encode(verification), as: UTF8.self)
        let newState: PackageState = verification.valid ? .verified : .rejected
        custody.record(CustodyEvent(kind: .verdict, at: Timestamp.now(), actor: .broker, subject: subject,
                                    objects: ["verdictSha256": Digest.sha256Hex(Array(verdict.utf8)), "manifestSha256": verification.manifestSha256],
                                    details: ["outcome": newState.rawValue, "failures": Set(verification.failures.map(\.code.rawValue)).sorted().joined(separator: ",")]))
        try await conn.query("""
            UPDATE packages SET state = \(newState.rawValue), verification = \(verdict), verified_at = now(),
                criteria = \(criteriaJSON), admissible = \(criteria?.admissible),
                time_stamped_at = \(signatureCheck.genTime), time_stamp_accuracy_us = \(signatureCheck.accuracyMicroseconds),
                signer = \(signatureCheck.signer?.commonName),
                signer_certificate = \(signatureCheck.signer?.pem)
            WHERE id = \(packageId)
            """, logger: logger)
        if manifest.partial == true {
            // More follow: the request stays open and its delivery clock runs on; it is verified
            // only with its final package. A second partial package is still on the timeline.
            let note = "partial package \(packageId.lowercased) \(verification.valid ? "verified" : "failed verification")"
            try await Self.advance(conn, requestId, .deliverPart, actor: providerActor, note: note, custody: custody,
                                   packageId: packageId, details: ["outcome": newState.rawValue], recordAnyway: true, logger: logger)
        } else {
            // Packages of this request abandoned without a manifest (a connector that restarted
            // mid-extraction sends anew under another id) will not complete: what this process
            // holds of them in memory, and their digest files, go.
            for try await abandoned in try await conn.query("""
                SELECT package_id FROM arriving_packages WHERE request_id = \(requestId) AND package_id <> \(packageId) AND NOT manifest_in
                """, logger: logger).decode(UUID.self) {
                arrivals.remove(abandoned)
            }
            try await Self.advance(conn, requestId, .deliver, actor: providerActor, note: "package \(packageId.lowercased) complete",
                                   custody: custody, packageId: packageId, logger: logger)
            if verification.valid {
                try await Self.advance(conn, requestId, .verify, actor: .broker, note: "package \(packageId.lowercased) verified",
                                       custody: custody, packageId: packageId, logger: logger)
            } else {
                try await Self.event(conn, requestId, .delivered, actor: .broker,
                                     note: "package \(packageId.lowercased) failed verification: " + verification.failures.map(\.code.rawValue).joined(separator: ","),
                                     custody: custody, packageId: packageId, logger: logger)
            }
        }
        // The package id as the provider's signed manifest spells it.
        let packageIdAsSent = (try? JSONParser.parse(manifestBytes))?["packageId"]?.stringValue ?? packageId.lowercased
        let receipt = Envelope(
            type: .receipt, id: UUID.derived("receipt", packageId.lowercased), requestId: requestId, sender: "broker",
            body: ReceiptBody(packageId: packageIdAsSent, outcome: verification.valid ? .accepted : .rejected,
                              manifestSha256: verification.manifestSha256, reasons: verification.failures.map(\.description),
                              receivedAt: Timestamp.now()))
        try await Self.enqueue(conn, receipt, topic: Topics.toProvider(provider), signer: signer, logger: logger)
        logger.info("package finalised", metadata: [LogKey.package: "\(packageId.lowercased)", LogKey.outcome: "\(newState.rawValue)"])
    }
}
