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
        // A manifest (or its first part) sent again names its package: its provider lacks the receipt.
        let manifestAgainOf: UUID? = switch header.type {
        case .manifest: opened.json["body"]?["manifest"]?["packageId"]?.stringValue.flatMap(UUID.init(uuidString:))
        case .manifestPart where opened.json["body"]?["index"] == .number(0): opened.json["body"]?["packageId"]?.stringValue.flatMap(UUID.init(uuidString:))
        default: nil
        }
        do {
            let (outcome, queued) = try await client.custodyTransaction(logger: logger) { conn, custody -> (IngestOutcome, Bool) in
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
                    // The receipt again, or the missing chunks asked for (package SPEC §7, "Gaps").
                    if let manifestAgainOf {
                        return (.duplicate, try await PackageResend.manifestAgain(conn, packageId: manifestAgainOf, signer: signer, custody: custody, logger: logger))
                    }
                    return (.duplicate, false)
                }
                try await apply(conn, header: header, json: opened.json, value: message.value, valueSha256: valueSha256?.hexString,
                                provider: expectedSender, custody: custody)
                return (.applied(header.type), false)
            }
            if queued { outboxWakeup.signal() }
            return outcome
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
            try await packages.acceptManifest(conn, body, signedBytes: CanonicalJSON.serialize(manifestJSON), requestId: header.requestId, provider: provider,
                                              custody: custody)
        case .manifestPart:
            guard !row.spec.isPreservation else { throw IngestRejection(reason: "a preservation order delivers no data") }
            let part = try SignedEnvelope.body(ManifestPartBody.self, from: json).body
            if let (body, signedBytes) = try await packages.acceptManifestPart(conn, part, bytes: value, requestId: header.requestId) {
                guard body.manifest.packageId == part.packageId else { throw IngestRejection(reason: "manifest parts name another package than their manifest") }
                try await packages.acceptManifest(conn, body, signedBytes: signedBytes, requestId: header.requestId, provider: provider, custody: custody)
            }
        case .chunk:
            guard !row.spec.isPreservation else { throw IngestRejection(reason: "a preservation order delivers no data") }
            let body = try SignedEnvelope.body(ChunkBody.self, from: json).body
            try await packages.acceptChunk(conn, body, bytes: value, sha256: valueSha256 ?? Digest.sha256Hex(value), requestId: header.requestId,
                                           provider: provider, custody: custody)
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
            try await LiveEvents.publish(conn, requestId: header.requestId, kind: .question, questionId: header.id, state: "asked", actor: provider, logger: logger)
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
        case .request, .receipt, .revocation, .clarification, .preservationExtension, .preservationRelease, .resend:
            throw IngestRejection(reason: "not a provider message")
        }
    }
}
