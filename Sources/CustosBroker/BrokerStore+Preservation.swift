import CustosCustody
import CustosEvidence
import CustosModel
import Foundation
import Logging
import PostgresNIO

/// Preservation orders: the provider freezes the data the order names for 60 days (the
/// `preservation` clock, from approval), which an investigator may extend once, by 30 days,
/// or release early. The order ends at its clock's deadline; either way the provider is told
/// with a signed `preservation-release`. Nothing is delivered for it.
enum Preservation {
    /// Ends an order that is still running (acknowledged or preserved, or not yet either), in
    /// the caller's transaction: state `released` (by a person) or `expired` (its clock), its
    /// clocks stopped, the provider told. Returns whether it ended.
    @discardableResult
    static func end(_ conn: PostgresConnection, _ id: UUID, reason: PreservationReleaseBody.Reason, actor: CustodyEvent.Actor, note: String?,
                    signer: SigningKey, custody: CustodyRecorder, logger: Logger) async throws -> Bool {
        let rule = RequestLifecycle.rule(reason == .released ? .release : .endPreservation)
        let state = rule.to
        var found: (String, String, UUID, String)?
        for try await r in try await conn.query("""
            UPDATE requests SET state = \(state.rawValue), updated_at = now()
            WHERE id = \(id) AND state = ANY(\(rule.from.map(\.rawValue)))
            RETURNING provider_id, request_hash, case_id, spec
            """, logger: logger).decode((String, String, UUID, String).self) { found = r }
        guard let (provider, hash, caseId, specJSON) = found else { return false }
        try await BrokerStore.event(conn, id, state, actor: actor, note: note, custody: custody, caseId: caseId, logger: logger)
        try await LegalClock.stop(conn, id, by: reason == .released ? .release : .endPreservation, logger: logger)
        let spec = try JSONDecoder().decode(RequestSpec.self, from: Data(specJSON.utf8))
        let envelope = Envelope(type: .preservationRelease, id: UUID.derived("preservation-release", id.lowercased), requestId: id, sender: "broker",
                                body: PreservationReleaseBody(requestHash: hash, reason: reason, decidedAt: Timestamp.now()))
        try await BrokerStore.enqueue(conn, envelope, topic: spec.priority == .emergency ? Topics.toProviderUrgent(provider) : Topics.toProvider(provider),
                                      urgent: spec.priority == .emergency, signer: signer, logger: logger)
        return true
    }
}

extension BrokerStore {
    /// An investigator of the order's agency extends a running preservation order, once, by
    /// `clocks.preservationExtension`; the provider is told the new end.
    public func extendPreservation(_ id: UUID, by user: AuthenticatedUser) async throws {
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, "only investigators extend preservation orders") }
        try await client.custodyTransaction(logger: logger) { conn, custody in
            let row = try await Self.lockRequest(conn, id, agency: user.agency, logger: logger)
            guard row.spec.isPreservation else { throw BrokerError(.conflict, "only a preservation order is extended") }
            guard RequestLifecycle.preservationRunning.contains(row.state), let hash = row.requestHash else {
                throw BrokerError(.conflict, "the preservation order is \(row.state.rawValue), not running")
            }
            let extra = LegalClock.seconds(clocks.preservationExtension)
            var until: Date?
            for try await d in try await conn.query("""
                UPDATE request_clocks SET deadline = deadline + make_interval(secs => \(extra)), escalate_at = escalate_at + make_interval(secs => \(extra)),
                    expire_at = expire_at + make_interval(secs => \(extra)), extended_at = now()
                WHERE request_id = \(id) AND clock = 'preservation' AND stopped_at IS NULL AND extended_at IS NULL
                RETURNING deadline
                """, logger: logger).decode(Date.self) { until = d }
            guard let until else { throw BrokerError(.conflict, "a preservation order is extended once") }
            try await Self.event(conn, id, RequestState.preserved, actor: user.actor, note: "extended until \(Timestamp.format(until))", custody: custody,
                                 caseId: row.spec.caseId, details: ["until": Timestamp.format(until), "extension": "true"], logger: logger)
            let envelope = Envelope(type: .preservationExtension, id: UUID.derived("preservation-extension", id.lowercased), requestId: id, sender: "broker",
                                    body: PreservationTermBody(requestHash: hash, until: Timestamp.format(until)))
            try await Self.enqueue(conn, envelope, topic: row.spec.priority == .emergency ? Topics.toProviderUrgent(row.providerId) : Topics.toProvider(row.providerId),
                                   urgent: row.spec.priority == .emergency, signer: signer, logger: logger)
        }
    }

    /// An investigator of the order's agency releases a running preservation order early.
    public func releasePreservation(_ id: UUID, reason: String?, by user: AuthenticatedUser) async throws {
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, "only investigators release preservation orders") }
        guard (reason?.count ?? 0) <= 2000 else {
            throw BrokerError(.invalid, "invalid decision", violations: [FieldViolation(field: "reason", rule: "must be at most 2000 characters")])
        }
        try await client.custodyTransaction(logger: logger) { conn, custody in
            let row = try await Self.lockRequest(conn, id, agency: user.agency, logger: logger)
            guard row.spec.isPreservation else { throw BrokerError(.conflict, "only a preservation order is released") }
            guard try await Preservation.end(conn, id, reason: .released, actor: user.actor, note: reason, signer: signer, custody: custody, logger: logger) else {
                throw BrokerError(.conflict, "the preservation order is \(row.state.rawValue), not running")
            }
        }
    }
}
