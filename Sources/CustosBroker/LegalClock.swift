import CustosCustody
import CustosEvidence
import CustosModel
import Foundation
import Logging
import PostgresNIO
import ServiceLifecycle

/// The legal clocks of a request: from approval, the provider must acknowledge within one
/// clock and deliver within another. A clock that runs out is a custody event (`clock.late`),
/// and so is its escalation after a further delay (`clock.escalated`); a delivery clock still
/// running at its expiry expires the request (`clock.expired`, state `expired`). Deadlines are
/// rows in PostgreSQL, so clocks survive restarts; `LegalClockWatcher` fires them.
public enum LegalClock {
    public enum Kind: String, Sendable, CaseIterable {
        case acknowledgement, delivery
        /// An emergency request's review after the fact: at its deadline an unconfirmed emergency lapses.
        case review
        /// How long a preservation order keeps the data frozen: at its deadline the order ends.
        case preservation
    }

    /// Durations, per deployment (`clocks.*`).
    public struct Settings: Sendable {
        /// `clocks.acknowledgementSeconds`: from approval to the provider's acknowledgement.
        public var acknowledgement: Duration = .seconds(24 * 3600)
        /// `clocks.deliverySeconds`: from approval to delivery (10 days for a normal request).
        public var delivery: Duration = .seconds(10 * 24 * 3600)
        /// `clocks.escalateAfterSeconds`: how long a clock may run late before escalation.
        public var escalateAfter: Duration = .seconds(3600)
        /// `clocks.expireAfterSeconds`: how long after its delivery deadline a request expires.
        public var expireAfter: Duration = .seconds(10 * 24 * 3600)
        /// `clocks.emergencyAcknowledgementSeconds`: an emergency's acknowledgement (30 minutes).
        public var emergencyAcknowledgement: Duration = .seconds(30 * 60)
        /// `clocks.emergencyDeliverySeconds`: an emergency's delivery (8 hours).
        public var emergencyDelivery: Duration = .seconds(8 * 3600)
        /// `clocks.emergencyEscalateAfterSeconds`: how long an emergency's clock may run late
        /// before escalation (15 minutes).
        public var emergencyEscalateAfter: Duration = .seconds(15 * 60)
        /// `clocks.reviewSeconds`: from an emergency's approval to the deadline of its review
        /// (48 hours); unconfirmed by then, its packages are sealed.
        public var review: Duration = .seconds(48 * 3600)
        /// `clocks.preservationSeconds`: how long a preservation order freezes the data (60 days).
        public var preservation: Duration = .seconds(60 * 24 * 3600)
        /// `clocks.preservationExtensionSeconds`: the one extension of a preservation order (30 days).
        public var preservationExtension: Duration = .seconds(30 * 24 * 3600)

        public init() {}

        /// (acknowledgement, delivery, escalation delay) for a priority.
        func durations(_ priority: Priority) -> (Duration, Duration, Duration) {
            switch priority {
            case .normal: (acknowledgement, delivery, escalateAfter)
            case .emergency: (emergencyAcknowledgement, emergencyDelivery, emergencyEscalateAfter)
            }
        }
    }

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

    /// Starts the clocks of a request, in the approval's transaction: an emergency's are
    /// shorter, and it has a review clock as well; a preservation order has no delivery clock
    /// but a preservation clock, whose deadline ends the order.
    static func start(_ conn: PostgresConnection, _ id: UUID, spec: RequestSpec, preserveUntil: Date?, settings: Settings, logger: Logger) async throws {
        let priority = spec.priority
        let (acknowledgement, delivery, escalateAfter) = settings.durations(priority)
        if let preserveUntil {
            // Ends exactly when the order as approved (and sent) says.
            try await conn.query("""
                INSERT INTO request_clocks (request_id, clock, started_at, deadline, escalate_at, expire_at)
                VALUES (\(id), 'preservation', now(), \(preserveUntil), \(preserveUntil), \(preserveUntil))
                ON CONFLICT DO NOTHING
                """, logger: logger)
        }
        let clocks = spec.isPreservation ? [(Kind.acknowledgement, acknowledgement)] : [(Kind.acknowledgement, acknowledgement), (.delivery, delivery)]
        for (kind, duration) in clocks {
            let deadline = seconds(duration), escalate = seconds(duration + escalateAfter)
            let expire: Double? = kind == .delivery ? seconds(duration + settings.expireAfter) : nil
            try await conn.query("""
                INSERT INTO request_clocks (request_id, clock, started_at, deadline, escalate_at, expire_at)
                VALUES (\(id), \(kind.rawValue), now(), now() + make_interval(secs => \(deadline)), now() + make_interval(secs => \(escalate)),
                        now() + make_interval(secs => \(expire)))
                ON CONFLICT DO NOTHING
                """, logger: logger)
        }
        if priority == .emergency {
            // The review clock has one moment: its deadline is its expiry.
            let review = seconds(settings.review)
            try await conn.query("""
                INSERT INTO request_clocks (request_id, clock, started_at, deadline, escalate_at, expire_at)
                VALUES (\(id), 'review', now(), now() + make_interval(secs => \(review)), now() + make_interval(secs => \(review)),
                        now() + make_interval(secs => \(review)))
                ON CONFLICT DO NOTHING
                """, logger: logger)
        }
    }

    /// The running delivery clock's deadline, as the provider is told it (none for a
    /// preservation order, or once delivered).
    static func deliveryDeadline(_ conn: PostgresConnection, _ id: UUID, logger: Logger) async throws -> String? {
        for try await deadline in try await conn.query(
            "SELECT deadline FROM request_clocks WHERE request_id = \(id) AND clock = 'delivery' AND stopped_at IS NULL", logger: logger
        ).decode(Date.self) { return Timestamp.format(deadline) }
        return nil
    }

    /// Pauses the provider's running clocks while it waits for an answer (not the review or
    /// preservation clock, which are the authority's own).
    static func pause(_ conn: PostgresConnection, _ id: UUID, logger: Logger) async throws {
        try await conn.query("""
            UPDATE request_clocks SET paused_at = now()
            WHERE request_id = \(id) AND clock IN ('acknowledgement', 'delivery') AND stopped_at IS NULL AND paused_at IS NULL
            """, logger: logger)
    }

    /// Resumes paused clocks, their deadlines moved by the time they were paused.
    static func resume(_ conn: PostgresConnection, _ id: UUID, logger: Logger) async throws {
        try await conn.query("""
            UPDATE request_clocks SET deadline = deadline + (now() - paused_at), escalate_at = escalate_at + (now() - paused_at),
                expire_at = expire_at + (now() - paused_at), paused_at = NULL
            WHERE request_id = \(id) AND paused_at IS NOT NULL
            """, logger: logger)
    }

    /// Stops the clocks `transition` satisfies (`RequestLifecycle.clocksStopped(by:)`), in the
    /// caller's transaction.
    static func stop(_ conn: PostgresConnection, _ id: UUID, by transition: RequestLifecycle.Transition, logger: Logger) async throws {
        let kinds = RequestLifecycle.clocksStopped(by: transition).map(\.rawValue)
        guard !kinds.isEmpty else { return }
        try await conn.query(
            "UPDATE request_clocks SET stopped_at = now() WHERE request_id = \(id) AND clock = ANY(\(kinds)) AND stopped_at IS NULL", logger: logger)
    }
}

/// Fires legal clocks: every `interval` it looks for clocks whose deadline, escalation or
/// expiry has passed and records each once, so each fires within one interval of its time.
/// `now` is injectable, for tests.
public struct LegalClockWatcher: Service {
    let client: PostgresClient
    let signer: SigningKey
    let wakeup: Wakeup
    let interval: Duration
    let ready: Gate
    let logger: Logger
    let now: @Sendable () -> Date
    let webhooks: WebhookSettings
    let webhookWakeup: Wakeup
    /// When unacknowledged request messages are sent again (`RequestResend`).
    let resend: ResendSettings
    /// When missing chunks are asked for (`PackageResend`).
    let chunkResend: ChunkResendSettings

    public init(store: BrokerStore, interval: Duration = .seconds(1), ready: Gate = Gate(open: true),
                webhooks: WebhookSettings = WebhookSettings(), webhookWakeup: Wakeup = Wakeup(), resend: ResendSettings = ResendSettings(),
                chunkResend: ChunkResendSettings = ChunkResendSettings(), logger: Logger, now: @escaping @Sendable () -> Date = Date.init) {
        self.resend = resend
        self.chunkResend = chunkResend
        self.webhooks = webhooks
        self.webhookWakeup = webhookWakeup
        self.client = store.client
        self.signer = store.signer
        self.wakeup = store.outboxWakeup
        self.interval = interval
        self.ready = ready
        self.logger = logger
        self.now = now
    }

    public func run() async throws {
        try await runPolling(ready: ready, logger: logger, failure: "legal clock check failed; retrying",
                             pass: { try await fire(at: now()) }, idle: { try await Task.sleep(for: interval) })
    }

    /// One pass at time `t`: records what is due, and returns how many clocks it touched; then
    /// marks unacknowledged request messages due at `t` for a re-send (`RequestResend`).
    @discardableResult
    public func fire(at t: Date, limit: Int = 500) async throws -> Int {
        let clocks = try await fireClocks(at: t, limit: limit)
        let resent = try await client.custodyTransaction(logger: logger) { conn, custody in
            try await RequestResend.markDue(conn, at: t, settings: resend, custody: custody, logger: logger)
                + PackageResend.markDue(conn, at: t, settings: chunkResend, signer: signer, custody: custody, logger: logger)
        }
        if resent > 0 { wakeup.signal() }
        return clocks
    }

    func fireClocks(at t: Date, limit: Int) async throws -> Int {
        let (count, lapsed) = try await client.custodyTransaction(logger: logger) { conn, custody in
            var lapsed = false
            var due: [(UUID, String, Date, Date, Date?, Date?, Date?, Date?, UUID)] = []
            for try await row in try await conn.query("""
                SELECT c.request_id, c.clock, c.deadline, c.escalate_at, c.expire_at, c.late_at, c.escalated_at, c.expired_at, r.case_id
                FROM request_clocks c JOIN requests r ON r.id = c.request_id
                WHERE c.stopped_at IS NULL AND c.paused_at IS NULL AND ((c.late_at IS NULL AND c.deadline <= \(t)) OR (c.escalated_at IS NULL AND c.escalate_at <= \(t))
                      OR (c.expired_at IS NULL AND c.expire_at <= \(t)))
                ORDER BY c.deadline LIMIT \(limit) FOR UPDATE OF c SKIP LOCKED
                """, logger: logger).decode((UUID, String, Date, Date, Date?, Date?, Date?, Date?, UUID).self) { due.append(row) }
            for (id, clock, deadline, escalateAt, expireAt, lateAt, escalatedAt, expiredAt, caseId) in due {
                let subject = CustodyEvent.Subject(caseId: caseId, requestId: id)
                if clock == LegalClock.Kind.preservation.rawValue || clock == LegalClock.Kind.review.rawValue {
                    // A clock of one moment: its deadline is its end.
                    try await conn.query(
                        "UPDATE request_clocks SET late_at = now(), escalated_at = now(), expired_at = now(), stopped_at = now() WHERE request_id = \(id) AND clock = \(clock)",
                        logger: logger)
                    custody.record(CustodyEvent(kind: .clockExpired, at: Timestamp.now(), actor: .broker, subject: subject,
                                                details: ["clock": clock, "deadline": Timestamp.format(deadline), "due": Timestamp.format(deadline)]))
                    lapsed = true
                    if clock == LegalClock.Kind.preservation.rawValue {
                        // The order has run its course: it ends, and the provider may let the data go.
                        try await Preservation.end(conn, id, reason: .expired, actor: .broker, note: "preservation clock ran out", signer: signer,
                                                   custody: custody, logger: logger)
                        continue
                    }
                    // Nobody confirmed the emergency in time: it lapses, like a revocation.
                    try await Emergency.end(conn, id, outcome: .lapsed, reviewer: nil, actor: .broker, reason: nil, signer: signer, custody: custody, logger: logger)
                    try await webhooks.enqueue(conn, .emergencyLapsed, request: id, details: ["clock": clock, "deadline": Timestamp.format(deadline)], logger: logger)
                    logger.warning("emergency review lapsed; packages sealed", metadata: [LogKey.request: "\(id.lowercased)"])
                    continue
                }
                func record(_ kind: CustodyEvent.Kind, _ event: WebhookSettings.Event, _ at: Date) async throws {
                    let details = ["clock": clock, "deadline": Timestamp.format(deadline), "due": Timestamp.format(at)]
                    custody.record(CustodyEvent(kind: kind, at: Timestamp.now(), actor: .broker, subject: subject, details: details))
                    try await webhooks.enqueue(conn, event, request: id, details: details, logger: logger)
                    try await LiveEvents.publish(conn, requestId: id, kind: .clock, clock: clock,
                                                 state: String(kind.rawValue.dropFirst("clock.".count)), actor: "broker", logger: logger)
                }
                if lateAt == nil && deadline <= t {
                    try await conn.query("UPDATE request_clocks SET late_at = now() WHERE request_id = \(id) AND clock = \(clock)", logger: logger)
                    try await record(.clockLate, .clockLate, deadline)
                    logger.warning("legal clock late", metadata: [LogKey.request: "\(id.lowercased)", "clock": "\(clock)"])
                }
                if escalatedAt == nil && escalateAt <= t {
                    try await conn.query("UPDATE request_clocks SET escalated_at = now() WHERE request_id = \(id) AND clock = \(clock)", logger: logger)
                    try await record(.clockEscalated, .clockEscalated, escalateAt)
                    logger.warning("legal clock escalated", metadata: [LogKey.request: "\(id.lowercased)", "clock": "\(clock)"])
                }
                if let expireAt, expiredAt == nil, expireAt <= t {
                    try await conn.query(
                        "UPDATE request_clocks SET expired_at = now(), stopped_at = now() WHERE request_id = \(id) AND clock = \(clock)", logger: logger)
                    try await record(.clockExpired, .clockExpired, expireAt)
                    try await BrokerStore.advance(conn, id, .expire, actor: .broker, note: "\(clock) clock expired", custody: custody, logger: logger)
                }
            }
            return (due.count, lapsed)
        }
        if lapsed { wakeup.signal() }
        if count > 0 && !webhooks.urls.isEmpty { webhookWakeup.signal() }
        return count
    }
}
