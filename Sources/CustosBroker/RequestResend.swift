import CustosCustody
import CustosModel
import Foundation
import Logging
import Metrics
import PostgresNIO

/// End-to-end acknowledgement of request messages, so that Kafka is not the only guard
/// (`schemas/README.md`, "Re-sending"). Kafka's acknowledgement of a produced message says that
/// Kafka holds it, not that the provider got it: a Kafka that loses acknowledged data (an
/// unclean leader election, a lost disk, a broker keeping topics in memory) would otherwise
/// lose the request, and only the legal clock would notice, days later.
///
/// A request message whose provider has not acknowledged it (the request is still
/// `dispatched`) within `after` (`emergencyAfter` for an emergency) of its last sending is sent
/// again: the same outbox row, so the same message id and the same signed bytes, after twice as
/// long each time, at most `maxResends` times. A connector applies a message id once and
/// acknowledges the request each time it sees it, so a re-send after a lost `ack` costs one
/// duplicate and nothing else. A preservation order acknowledged and not yet confirmed
/// (`preserved`) is sent again the same way: a connector that has carried it out answers with
/// its confirmations again.
public struct ResendSettings: Sendable {
    /// `outbox.acknowledgementTimeoutSeconds`: the first wait for a normal request's `ack` (5 minutes).
    public var after: Duration = .seconds(300)
    /// `outbox.emergencyAcknowledgementTimeoutSeconds`: the same for an emergency (30 seconds).
    public var emergencyAfter: Duration = .seconds(30)
    /// `outbox.maxResends`: how many times a request message is sent again at most (10); the
    /// legal clocks still run, and record the silence as late.
    public var maxResends = 10

    public init() {}
}

enum RequestResend {
    /// `custos_outbox_resent_messages_total`: request messages sent again for want of an `ack`.
    static let resent = Counter(label: "custos.outbox.resent.messages")

    /// Marks the request messages due for a re-send at `t` unsent again, so that the outbox
    /// relay sends them at once; each is a `request.resent` custody event (details: the attempt
    /// and the message id). Runs in the caller's transaction; returns how many.
    static func markDue(_ conn: PostgresConnection, at t: Date, settings: ResendSettings, custody: CustodyRecorder, limit: Int = 100,
                        logger: Logger) async throws -> Int {
        guard settings.maxResends > 0 else { return 0 }
        var due: [(Int64, UUID, UUID, Int, UUID, String)] = []
        // An acknowledged preservation order's wait counts from its acknowledgement, not from
        // the sending: the provider's program may take a while to freeze the data.
        for try await row in try await conn.query("""
            SELECT o.id, o.request_id, o.message_id, o.resends, r.case_id, r.state
            FROM requests r JOIN outbox o ON o.request_id = r.id AND o.message_type = 'request'
            WHERE (r.state = 'dispatched' OR (r.state = 'acknowledged' AND r.kind = 'preservation')) AND o.sent_at IS NOT NULL AND o.resends < \(settings.maxResends)
              AND GREATEST(o.sent_at, CASE WHEN r.state = 'acknowledged' THEN
                    (SELECT max(e.at) FROM request_events e WHERE e.request_id = r.id AND e.state = 'acknowledged') END)
                  + make_interval(secs => (CASE WHEN r.priority = 'emergency' THEN \(LegalClock.seconds(settings.emergencyAfter))
                                               ELSE \(LegalClock.seconds(settings.after)) END) * power(2, o.resends)) <= \(t)
            ORDER BY o.sent_at LIMIT \(limit) FOR UPDATE OF o SKIP LOCKED
            """, logger: logger).decode((Int64, UUID, UUID, Int, UUID, String).self) { due.append(row) }
        for (rowId, requestId, messageId, resends, caseId, state) in due {
            try await conn.query("UPDATE outbox SET sent_at = NULL, resends = resends + 1 WHERE id = \(rowId)", logger: logger)
            custody.record(CustodyEvent(kind: .requestResent, at: Timestamp.now(), actor: .broker, subject: .init(caseId: caseId, requestId: requestId),
                                        details: ["attempt": "\(resends + 1)", "messageId": messageId.lowercased]))
            logger.warning(state == "dispatched" ? "request not acknowledged by its provider; sent again"
                                                 : "preservation order acknowledged but not confirmed by its provider; sent again", metadata: [
                LogKey.request: "\(requestId.lowercased)", "custos.attempt": "\(resends + 1)",
            ])
        }
        if !due.isEmpty { resent.increment(by: due.count) }
        return due.count
    }
}
