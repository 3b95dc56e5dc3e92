import CustosModel
import Foundation
import Logging
import PostgresNIO

/// E-mail notifications to the people on duty: what happened, to whom, and the message. Each
/// is queued in the transaction that causes it (`LiveEvents.publish` calls `enqueue`), in the
/// `notifications` table beside the webhooks, so a crash loses none; `WebhookNotifier`
/// delivers both. A message carries ids, states, deadlines and a link, never a target or free
/// text.
public enum Notifications {
    /// What a person may be told by e-mail; each chooses which (`PUT /v1/me/notifications`).
    public enum Event: String, Sendable, CaseIterable, Codable {
        /// A normal request was submitted: to the approvers of its agency.
        case requestSubmitted = "request.submitted"
        /// An emergency was submitted: to the duty approvers of its agency.
        case emergencySubmitted = "emergency.submitted"
        /// An emergency was approved on the fast track and waits for review: to the reviewers.
        case reviewDue = "review.due"
        /// A provider asked a question: to the investigators of the case.
        case questionAsked = "question.asked"
        /// A package was delivered and judged: to the investigators of the case.
        case packageDelivered = "package.delivered"
        /// A legal clock ran late, was escalated or expired: to the investigators of the case.
        case clockLate = "clock.late"
        case clockEscalated = "clock.escalated"
        case clockExpired = "clock.expired"

        /// Who hears of it, as SQL over `requests r` and `users u`.
        var audience: String {
            switch self {
            // A request to several providers is decided as one: its first part speaks for all.
            case .requestSubmitted: "u.role = 'approver' AND u.id IS DISTINCT FROM r.submitted_by AND (r.group_id IS NULL OR r.group_id = r.id)"
            case .emergencySubmitted: "u.role = 'duty-approver' AND u.id IS DISTINCT FROM r.submitted_by AND (r.group_id IS NULL OR r.group_id = r.id)"
            // Each part of an emergency to several providers is reviewed on its own.
            case .reviewDue: "u.role = 'reviewer' AND u.id IS DISTINCT FROM r.submitted_by AND u.id IS DISTINCT FROM r.approved_by"
            case .questionAsked, .packageDelivered, .clockLate, .clockEscalated, .clockExpired:
                "EXISTS (SELECT 1 FROM case_members m WHERE m.case_id = r.case_id AND m.user_id = u.id)"
            }
        }

        /// Whether it goes to webhooks from here (clock events go from the clock watcher).
        var webhook: Bool { ![.clockLate, .clockEscalated, .clockExpired].contains(self) }

        /// The notification a live event brings, if any.
        static func of(kind: API.LiveEvent.Kind, state: String?, priority: Priority?) -> Event? {
            switch (kind, state) {
            case (.request, "submitted"): priority == .emergency ? .emergencySubmitted : .requestSubmitted
            case (.request, "approved"): priority == .emergency ? .reviewDue : nil
            case (.question, "asked"): .questionAsked
            case (.package, _): .packageDelivered
            case (.clock, "late"): .clockLate
            case (.clock, "escalated"): .clockEscalated
            case (.clock, "expired"): .clockExpired
            default: nil
            }
        }
    }

    /// Queues the e-mails `kind`/`state` brings about request `requestId`, one per person of
    /// its agency whose role or case makes them concerned, who gave an address and did not
    /// turn that event off; in the caller's transaction. The payload: ids, states, deadline.
    static func enqueue(_ conn: PostgresConnection, requestId: UUID, kind: API.LiveEvent.Kind, state: String?, clock: String?, packageId: UUID?,
                        questionId: UUID?, logger: Logger) async throws {
        // Most events notify nobody: the priority is read only for those that may.
        guard [.request, .question, .package, .clock].contains(kind) else { return }
        var priority: Priority?
        if kind == .request {
            guard state == "submitted" || state == "approved" else { return }
            priority = try await conn.query("SELECT priority FROM requests WHERE id = \(requestId)", logger: logger)
                .decode(String.self).first { _ in true }.flatMap(Priority.init(rawValue:))
        }
        guard let event = Event.of(kind: kind, state: state, priority: priority) else { return }
        try await conn.query(PostgresQuery(unsafeSQL: """
            INSERT INTO notifications (id, channel, recipient, endpoint, event, request_id, payload)
            SELECT gen_random_uuid(), 'email', u.id, u.email, $1, r.id,
                   json_build_object('event', $1::text, 'requestId', r.id, 'caseId', r.case_id, 'priority', r.priority, 'state', r.state,
                                     'clock', $2::text, 'packageId', $3::uuid, 'questionId', $4::uuid,
                                     'deadline', (SELECT min(k.deadline) FROM request_clocks k WHERE k.request_id = r.id AND k.stopped_at IS NULL
                                                  AND ($2::text IS NULL OR k.clock = $2::text)))::text
            FROM requests r JOIN users u ON u.agency = r.agency
            WHERE r.id = $5 AND u.email IS NOT NULL AND (u.email_events IS NULL OR $1 = ANY(u.email_events)) AND \(event.audience)
            """, binds: bindings(event.rawValue, event == .reviewDue ? LegalClock.Kind.review.rawValue : clock, packageId, questionId, requestId)), logger: logger)
        // The same events go to the webhooks that subscribed to them (clock events already go
        // there from the clock watcher). A body of ids and states, like the clocks' webhooks.
        guard event.webhook else { return }
        var binds = PostgresBindings()
        binds.append(event.rawValue)
        binds.append(packageId)
        binds.append(questionId)
        binds.append(requestId)
        try await conn.query(PostgresQuery(unsafeSQL: """
            INSERT INTO notifications (id, channel, endpoint, event, request_id, payload)
            SELECT n.id, 'webhook', n.url, $1, r.id,
                   json_build_object('id', n.id, 'event', $1::text, 'at', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                                     'requestId', r.id, 'caseId', r.case_id, 'agency', r.agency, 'state', r.state, 'priority', r.priority,
                                     'packageId', $2::uuid, 'questionId', $3::uuid)::text
            FROM (SELECT gen_random_uuid() AS id, w.url FROM webhook_endpoints w WHERE $1 = ANY(w.events)) n, requests r
            WHERE r.id = $4 AND (r.group_id IS NULL OR r.group_id = r.id OR $1 NOT IN ('request.submitted', 'emergency.submitted'))
            """, binds: binds), logger: logger)
    }

    private static func bindings(_ event: String, _ clock: String?, _ packageId: UUID?, _ questionId: UUID?, _ requestId: UUID) -> PostgresBindings {
        var b = PostgresBindings()
        b.append(event)
        b.append(clock)
        b.append(packageId)
        b.append(questionId)
        b.append(requestId)
        return b
    }

    /// The e-mail for a queued notification's payload: a subject and lines of ids, states and
    /// times, and a link (`notifications.link` + `/requests/<id>`) or the CLI command.
    static func mail(to address: String, id: UUID, payload: String, link: String?) -> EMail? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any],
              let event = (object["event"] as? String).flatMap(Event.init(rawValue:)), let request = object["requestId"] as? String
        else { return nil }
        let request8 = String(request.prefix(8))
        let subject = switch event {
        case .requestSubmitted: "Request \(request8) awaits approval"
        case .emergencySubmitted: "EMERGENCY request \(request8) awaits a duty approver"
        case .reviewDue: "Emergency \(request8) awaits review"
        case .questionAsked: "The provider asks about request \(request8)"
        case .packageDelivered: "A package arrived for request \(request8)"
        case .clockLate, .clockEscalated, .clockExpired: "Request \(request8): \(object["clock"] as? String ?? "a") clock \(event.rawValue.dropFirst(6))"
        }
        var lines = ["Custos: \(event.rawValue)", "", "Request:  \(request)"]
        for (label, key) in [("Case:", "caseId"), ("Priority:", "priority"), ("State:", "state"), ("Clock:", "clock"), ("Deadline:", "deadline"),
                             ("Package:", "packageId"), ("Question:", "questionId")] {
            if let value = object[key] as? String { lines.append("\(label.padding(toLength: 10, withPad: " ", startingAt: 0))\(value)") }
        }
        lines += ["", link.map { "Open: \($0)/requests/\(request)" } ?? "Open: custos request status \(request)", "",
                  "You get this because of your role or your cases. Choose what you get: custos notifications set."]
        return EMail(to: address, subject: "[Custos] " + subject, body: lines.joined(separator: "\n"), messageId: "\(id.lowercased)@custos")
    }
}
