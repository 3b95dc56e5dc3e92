import CustosCustody
import CustosEvidence
import CustosModel
import Foundation
import Logging
import PostgresNIO

/// The review after the fact of an emergency request. From its approval by one duty approver
/// it is `pending`; a reviewer (neither its submitter nor its approver) confirms or revokes it
/// before its review clock runs out, or it lapses. A revoked or lapsed emergency has every
/// package sealed — those already received and those still to come — which cannot be
/// unsealed, and the provider is told on the urgent topic to stop.
enum Emergency {
    enum Outcome: String {
        case confirmed, revoked, lapsed

        /// Why the packages are sealed, shown when their release is refused.
        var sealReason: String {
            switch self {
            case .confirmed: ""
            case .revoked: "the emergency was revoked by a reviewer"
            case .lapsed: "the emergency was not confirmed by a reviewer inside its review clock"
            }
        }
    }

    /// Ends the review of `id` with `outcome`, in the caller's transaction; a review that is
    /// not pending (decided before, or no emergency) is left alone. Returns whether it ended.
    @discardableResult
    static func end(_ conn: PostgresConnection, _ id: UUID, outcome: Outcome, reviewer: UUID?, actor: CustodyEvent.Actor, reason: String?,
                    signer: SigningKey, custody: CustodyRecorder, logger: Logger) async throws -> Bool {
        var found: (String, String?, UUID)?
        for try await r in try await conn.query("""
            UPDATE requests SET review = \(outcome.rawValue), reviewed_by = \(reviewer), reviewed_at = now(), updated_at = now()
            WHERE id = \(id) AND review = 'pending'
            RETURNING provider_id, request_hash, case_id
            """, logger: logger).decode((String, String?, UUID).self) { found = r }
        guard let (provider, hash, caseId) = found else { return false }
        try await conn.query(
            "UPDATE request_clocks SET stopped_at = now() WHERE request_id = \(id) AND clock = 'review' AND stopped_at IS NULL", logger: logger)
        try await conn.query(
            "INSERT INTO request_events (request_id, state, actor, note) VALUES (\(id), \("emergency-" + outcome.rawValue), \(actor.id), \(reason))",
            logger: logger)
        var objects: [String: String] = [:]
        if let reason { objects["noteSha256"] = Digest.sha256Hex(Array(reason.utf8)) }
        custody.record(CustodyEvent(kind: .request("emergency-" + outcome.rawValue), at: Timestamp.now(), actor: actor,
                                    subject: .init(caseId: caseId, requestId: id), objects: objects))
        guard outcome != .confirmed else { return true }

        // Not yet delivered: the request ends here, and its clocks stop.
        try await BrokerStore.advance(conn, id, .revoke, actor: actor, note: outcome.sealReason, custody: custody, caseId: caseId, logger: logger)
        var sealed: [UUID] = []
        for try await p in try await conn.query("""
            UPDATE packages SET sealed = true, seal_reason = \(outcome.sealReason) WHERE request_id = \(id) AND NOT sealed RETURNING id
            """, logger: logger).decode(UUID.self) { sealed.append(p) }
        for p in sealed {
            custody.record(CustodyEvent(kind: .packageSealed, at: Timestamp.now(), actor: actor, subject: .init(caseId: caseId, requestId: id, packageId: p),
                                        objects: ["noteSha256": Digest.sha256Hex(Array(outcome.sealReason.utf8))], details: ["review": outcome.rawValue]))
        }
        let envelope = Envelope(type: .revocation, id: UUID.derived("revocation", id.lowercased), requestId: id, sender: "broker",
                                body: RevocationBody(requestHash: hash ?? "", reason: outcome == .revoked ? .revoked : .lapsed, decidedAt: Timestamp.now()))
        try await BrokerStore.enqueue(conn, envelope, topic: Topics.toProviderUrgent(provider), urgent: true, signer: signer, logger: logger)
        return true
    }

    /// Whether packages of `request` must be sealed on arrival, and why.
    static func sealOnArrival(_ conn: PostgresConnection, request id: UUID, logger: Logger) async throws -> String? {
        for try await review in try await conn.query("SELECT review FROM requests WHERE id = \(id)", logger: logger).decode(String?.self) {
            if let review, let outcome = Outcome(rawValue: review), outcome != .confirmed { return outcome.sealReason }
        }
        return nil
    }
}

extension BrokerStore {
    /// A reviewer confirms or revokes an emergency request whose review is pending. Revoking
    /// needs a reason; it seals the request's packages and tells the provider to stop.
    public func review(_ id: UUID, decision: API.Review.Decision, reason: String?, by user: AuthenticatedUser) async throws {
        guard user.roles.contains(.reviewer) else { throw BrokerError(.forbidden, "only reviewers review emergency requests") }
        let text = reason?.trimmingCharacters(in: .whitespacesAndNewlines)
        if decision == .revoke {
            guard let text, (1...2000).contains(text.count) else {
                throw BrokerError(.invalid, "invalid review", violations: [FieldViolation(field: "reason", rule: "is required to revoke, 1 to 2000 characters")])
            }
        } else if (text?.count ?? 0) > 2000 {
            throw BrokerError(.invalid, "invalid review", violations: [FieldViolation(field: "reason", rule: "must be at most 2000 characters")])
        }
        let revoked = try await client.custodyTransaction(logger: logger) { conn, custody in
            let row = try await Self.lockRequest(conn, id, agency: user.agency, logger: logger)
            guard row.spec.priority == .emergency else { throw BrokerError(.conflict, "only emergency requests are reviewed") }
            var current: (String?, UUID?)?
            for try await r in try await conn.query("SELECT review, approved_by FROM requests WHERE id = \(id)", logger: logger)
                .decode((String?, UUID?).self) { current = r }
            guard let review = current?.0 else { throw BrokerError(.conflict, "request is \(row.state.rawValue); an emergency is reviewed after its approval") }
            guard review == "pending" else { throw BrokerError(.conflict, "the emergency's review is already \(review)") }
            guard row.submittedBy != user.id, current?.1 != user.id else {
                throw BrokerError(.forbidden, "the submitter or approver of an emergency cannot review it")
            }
            try await Emergency.end(conn, id, outcome: decision == .confirm ? .confirmed : .revoked, reviewer: user.id, actor: user.actor,
                                    reason: text?.isEmpty == false ? text : nil, signer: signer, custody: custody, logger: logger)
            return decision == .revoke
        }
        if revoked { outboxWakeup.signal() }
    }
}
