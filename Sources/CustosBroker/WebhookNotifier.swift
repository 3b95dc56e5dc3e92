import AsyncHTTPClient
import Crypto
import CustosCanonicalJSON
import CustosModel
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import PostgresNIO
import ServiceLifecycle

/// Webhooks that tell people when a legal clock runs late: every endpoint gets every event it
/// subscribed to, at least once, signed, retried with back-off. A notification is queued in the
/// transaction that records its custody event (so none is lost to a crash), and delivered by
/// `WebhookNotifier` afterwards.
public struct WebhookSettings: Sendable {
    /// The events a webhook may subscribe to.
    public enum Event: String, Sendable, CaseIterable {
        case clockLate = "clock.late"
        case clockEscalated = "clock.escalated"
        case clockExpired = "clock.expired"
        /// Nobody confirmed an emergency inside its review clock: its packages are sealed.
        case emergencyLapsed = "emergency.lapsed"
        /// The work-queue events, as e-mailed to people (`Notifications.Event`): a request or an
        /// emergency submitted, a review due, a provider's question, a package delivered.
        case requestSubmitted = "request.submitted"
        case emergencySubmitted = "emergency.submitted"
        case reviewDue = "review.due"
        case questionAsked = "question.asked"
        case packageDelivered = "package.delivered"
    }

    /// `webhooks.urls`: the endpoints (http or https); empty, no webhooks.
    public var urls: [String] = []
    /// `webhooks.secretFile`: the shared secret (a file) that signs every delivery, HMAC-SHA256.
    public var secret: [UInt8] = []
    /// `webhooks.events`: the events sent (default: all of them).
    public var events: Set<Event> = Set(Event.allCases)
    /// `webhooks.timeoutSeconds`: how long one delivery may take.
    public var timeout: Duration = .seconds(10)
    /// `webhooks.maxAttempts`: deliveries tried before one is given up (and logged as an error).
    public var maxAttempts: Int = 12

    public init(urls: [String] = [], secret: [UInt8] = [], events: Set<Event> = Set(Event.allCases)) {
        self.urls = urls
        self.secret = secret
        self.events = events
    }

    /// The wait before attempt `n + 1`, after `n` failed ones: 5 s doubling, at most an hour.
    static func retryDelay(afterAttempts n: Int) -> TimeInterval {
        min(3600, 5 * pow(2, Double(max(0, n - 1))))
    }

    /// `Custos-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">`, so a
    /// receiver can check both origin and freshness (as Stripe's and GitHub's webhooks do).
    public static func signature(secret: [UInt8], timestamp: Int, body: [UInt8]) -> String {
        var mac = HMAC<SHA256>(key: SymmetricKey(data: secret))
        mac.update(data: Array("\(timestamp).".utf8))
        mac.update(data: body)
        return "t=\(timestamp),v1=" + Data(mac.finalize()).map { String(format: "%02x", $0) }.joined()
    }

    /// Records the endpoints and their events in the database (`webhook_endpoints`), at start,
    /// so that a transaction that causes a work-queue event queues its webhooks in SQL
    /// (`Notifications.enqueue`). Every instance has the same configuration.
    func record(on client: PostgresClient, logger: Logger) async throws {
        let urls = self.urls, events = self.events.map(\.rawValue).sorted()
        try await client.transaction(logger: logger) { conn in
            try await conn.query("SELECT pg_advisory_xact_lock(hashtext('custos.webhook.endpoints'))", logger: logger)
            try await conn.query("DELETE FROM webhook_endpoints", logger: logger)
            for url in urls {
                try await conn.query("INSERT INTO webhook_endpoints (url, events) VALUES (\(url), \(events))", logger: logger)
            }
        }
    }

    /// Queues `event` about request `id` for every endpoint that subscribed to it, in the
    /// caller's transaction. The body names the request, its case, agency and priority and the
    /// clock: never a target identifier, never free text.
    func enqueue(_ conn: PostgresConnection, _ event: Event, request id: UUID, details: [String: String], logger: Logger) async throws {
        guard !urls.isEmpty, events.contains(event) else { return }
        var row: (UUID, String, String, String)?
        for try await r in try await conn.query("""
            SELECT case_id, agency, state, priority FROM requests WHERE id = \(id)
            """, logger: logger).decode((UUID, String, String, String).self) { row = r }
        guard let (caseId, agency, state, priority) = row else { return }
        for url in urls {
            let notification = UUID()
            var body: [String: JSONValue] = [
                "id": .string(notification.lowercased), "event": .string(event.rawValue), "at": .string(Timestamp.now()),
                "requestId": .string(id.lowercased), "caseId": .string(caseId.lowercased), "agency": .string(agency),
                "state": .string(state), "priority": .string(priority),
            ]
            for (k, v) in details { body[k] = .string(v) }
            let payload = String(decoding: CanonicalJSON.serialize(.object(body)), as: UTF8.self)
            try await conn.query("""
                INSERT INTO notifications (id, endpoint, event, request_id, payload) VALUES (\(notification), \(url), \(event.rawValue), \(id), \(payload))
                """, logger: logger)
        }
    }
}

/// `notifications.*`: e-mail to the people on duty.
public struct EmailSettings: Sendable {
    /// `notifications.smtp.*`; nil: no e-mail is sent (none is queued for sending either:
    /// queued ones wait until it is configured).
    public var smtp: SMTPSettings?
    /// `notifications.link`: the address the e-mails link to (`<link>/requests/<id>`), e.g.
    /// the portal's; absent, they name the CLI command.
    public var link: String?
    public init(smtp: SMTPSettings? = nil, link: String? = nil) {
        self.smtp = smtp
        self.link = link
    }
}

/// Delivers queued notifications, webhooks and e-mails: claims due ones (so several broker
/// instances share the work), POSTs or mails each, and records the outcome; failures are
/// retried with back-off, and an e-mail the server refuses for good (5xx) is given up at once.
public struct WebhookNotifier: Service {
    let client: PostgresClient
    let settings: WebhookSettings
    let email: EmailSettings
    let wakeup: Wakeup
    let ready: Gate
    let http: HTTPClient
    let logger: Logger

    public init(client: PostgresClient, settings: WebhookSettings, email: EmailSettings = EmailSettings(), wakeup: Wakeup, ready: Gate = Gate(open: true),
                http: HTTPClient = .shared, logger: Logger) {
        self.email = email
        self.client = client
        self.settings = settings
        self.wakeup = wakeup
        self.ready = ready
        self.http = http
        self.logger = logger
    }

    /// How long an idle notifier waits before it looks again: a duty approver hears of an
    /// emergency within this and one delivery (the query is one partial-index probe).
    static let idleWait: Duration = .milliseconds(250)

    public func run() async throws {
        try await runPolling(ready: ready, logger: logger, failure: "webhook delivery pass failed; retrying",
                             pass: { try await deliverDue(at: Date()) }, idle: { await wakeup.wait(timeout: Self.idleWait) })
    }

    /// One pass at time `t`: tries every notification due by then (at most `limit`); returns
    /// how many it tried.
    @discardableResult
    public func deliverDue(at t: Date, limit: Int = 10) async throws -> Int {
        // Claimed for as long as the batch may take, one time-out each (the longer of a webhook's
        // and an e-mail's), so another instance does not send them meanwhile.
        let each = max(settings.timeout, email.smtp?.timeout ?? .zero)
        let lease = t.addingTimeInterval(Double(limit) * Double(each.components.seconds) + 1)
        var due: [(UUID, String, String, String, Int, String)] = []
        let channels = (settings.urls.isEmpty ? [] : ["webhook"]) + (email.smtp == nil ? [] : ["email"])
        for try await row in try await client.query("""
            UPDATE notifications SET next_attempt_at = \(lease)
            WHERE id IN (SELECT id FROM notifications WHERE delivered_at IS NULL AND given_up_at IS NULL AND next_attempt_at <= \(t)
                           AND channel = ANY(\(channels))
                         ORDER BY next_attempt_at LIMIT \(limit) FOR UPDATE SKIP LOCKED)
            RETURNING id, endpoint, event, payload, attempts, channel
            """, logger: logger).decode((UUID, String, String, String, Int, String).self) { due.append(row) }
        for (id, endpoint, event, payload, attempts, channel) in due {
            let (error, lasting) = channel == "email" ? await mail(endpoint, id: id, payload: payload) : (await post(endpoint, event: event, id: id, payload: Array(payload.utf8), at: t), false)
            let attempt = attempts + 1
            if let error {
                let givenUp = lasting || attempt >= settings.maxAttempts
                let next = t.addingTimeInterval(WebhookSettings.retryDelay(afterAttempts: attempt))
                try await client.query("""
                    UPDATE notifications SET attempts = \(attempt), last_error = \(error), next_attempt_at = \(next),
                        given_up_at = CASE WHEN \(givenUp) THEN now() END WHERE id = \(id)
                    """, logger: logger)
                let metadata: Logger.Metadata = ["notification": "\(id.lowercased)", "event": "\(event)", "attempt": "\(attempt)", LogKey.reason: "\(error)"]
                if givenUp { logger.error("webhook given up", metadata: metadata) } else { logger.warning("webhook failed; will retry", metadata: metadata) }
            } else {
                try await client.query("UPDATE notifications SET attempts = \(attempt), delivered_at = now(), last_error = NULL WHERE id = \(id)", logger: logger)
            }
        }
        return due.count
    }

    /// Mails one notification; returns why it failed (nil: sent), and whether the server
    /// refused it for good.
    func mail(_ address: String, id: UUID, payload: String) async -> (String?, Bool) {
        guard let smtp = email.smtp else { return ("no SMTP server is configured", false) }
        guard let message = Notifications.mail(to: address, id: id, payload: payload, link: email.link) else { return ("unreadable payload", true) }
        do {
            try await SMTPClient.send(message, settings: smtp)
            return (nil, false)
        } catch let e as SMTPError {
            return (e.description, !e.isTransient)
        } catch {
            return ("\(type(of: error))", false)
        }
    }

    /// POSTs one notification; returns why it failed, or nil.
    func post(_ endpoint: String, event: String, id: UUID, payload: [UInt8], at t: Date) async -> String? {
        var request = HTTPClientRequest(url: endpoint)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "custos-broker")
        request.headers.add(name: "Custos-Event", value: event)
        request.headers.add(name: "Custos-Delivery", value: id.lowercased)  // the same on every retry: receivers drop repeats
        request.headers.add(name: "Custos-Signature", value: WebhookSettings.signature(secret: settings.secret, timestamp: Int(t.timeIntervalSince1970), body: payload))
        request.body = .bytes(ByteBuffer(bytes: payload))
        do {
            let response = try await http.execute(request, timeout: .seconds(Int64(settings.timeout.components.seconds)))
            _ = try? await response.body.collect(upTo: 64 * 1024)
            return (200..<300).contains(response.status.code) ? nil : "HTTP \(response.status.code)"
        } catch {
            return "\(type(of: error))"  // the endpoint's own words may echo the payload: not kept
        }
    }
}
