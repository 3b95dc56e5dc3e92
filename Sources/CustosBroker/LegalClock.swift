import CustosCustody
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
    public enum Kind: String, Sendable, CaseIterable { case acknowledgement, delivery }

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

        public init() {}
    }

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

    /// Starts both clocks, in the approval's transaction.
    static func start(_ conn: PostgresConnection, _ id: UUID, settings: Settings, logger: Logger) async throws {
        for (kind, duration) in [(Kind.acknowledgement, settings.acknowledgement), (.delivery, settings.delivery)] {
            let deadline = seconds(duration), escalate = seconds(duration + settings.escalateAfter)
            let expire: Double? = kind == .delivery ? seconds(duration + settings.expireAfter) : nil
            try await conn.query("""
                INSERT INTO request_clocks (request_id, clock, started_at, deadline, escalate_at, expire_at)
                VALUES (\(id), \(kind.rawValue), now(), now() + make_interval(secs => \(deadline)), now() + make_interval(secs => \(escalate)),
                        now() + make_interval(secs => \(expire)))
                ON CONFLICT DO NOTHING
                """, logger: logger)
        }
    }

    /// Stops the clocks a state satisfies: acknowledgement stops the first, delivery (or an
    /// end: refusal, verification) both.
    static func stop(_ conn: PostgresConnection, _ id: UUID, reaching state: RequestState, logger: Logger) async throws {
        let kinds: [String] = switch state {
        case .acknowledged, .inProgress: [Kind.acknowledgement.rawValue]
        case .delivered, .verified, .refused, .withdrawn, .rejected, .expired: Kind.allCases.map(\.rawValue)
        default: []
        }
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
    let interval: Duration
    let ready: Gate
    let logger: Logger
    let now: @Sendable () -> Date

    public init(client: PostgresClient, interval: Duration = .seconds(1), ready: Gate = Gate(open: true), logger: Logger,
                now: @escaping @Sendable () -> Date = Date.init) {
        self.client = client
        self.interval = interval
        self.ready = ready
        self.logger = logger
        self.now = now
    }

    public func run() async throws {
        await ready.wait()
        try await cancelWhenGracefulShutdown {
            var failures = 0
            while !Task.isCancelled {
                do {
                    while try await fire(at: now()) > 0 {}
                    failures = 0
                    try await Task.sleep(for: interval)
                } catch is CancellationError {
                    return
                } catch {
                    failures += 1
                    logger.error("legal clock check failed; retrying", metadata: [LogKey.error: "\(loggable(error))"])
                    try? await Task.sleep(for: Backoff.delay(attempt: failures))
                }
            }
        }
    }

    /// One pass at time `t`: records what is due, and returns how many clocks it touched.
    @discardableResult
    public func fire(at t: Date, limit: Int = 500) async throws -> Int {
        try await client.custodyTransaction(logger: logger) { conn, custody in
            var due: [(UUID, String, Date, Date, Date?, Date?, Date?, Date?, UUID)] = []
            for try await row in try await conn.query("""
                SELECT c.request_id, c.clock, c.deadline, c.escalate_at, c.expire_at, c.late_at, c.escalated_at, c.expired_at, r.case_id
                FROM request_clocks c JOIN requests r ON r.id = c.request_id
                WHERE c.stopped_at IS NULL AND ((c.late_at IS NULL AND c.deadline <= \(t)) OR (c.escalated_at IS NULL AND c.escalate_at <= \(t))
                      OR (c.expired_at IS NULL AND c.expire_at <= \(t)))
                ORDER BY c.deadline LIMIT \(limit) FOR UPDATE OF c SKIP LOCKED
                """, logger: logger).decode((UUID, String, Date, Date, Date?, Date?, Date?, Date?, UUID).self) { due.append(row) }
            for (id, clock, deadline, escalateAt, expireAt, lateAt, escalatedAt, expiredAt, caseId) in due {
                let subject = CustodyEvent.Subject(caseId: caseId, requestId: id)
                func record(_ kind: CustodyEvent.Kind, _ at: Date) {
                    custody.record(CustodyEvent(kind: kind, at: Timestamp.now(), actor: .broker, subject: subject,
                                                details: ["clock": clock, "deadline": Timestamp.format(deadline), "due": Timestamp.format(at)]))
                }
                if lateAt == nil && deadline <= t {
                    try await conn.query("UPDATE request_clocks SET late_at = now() WHERE request_id = \(id) AND clock = \(clock)", logger: logger)
                    record(.clockLate, deadline)
                    logger.warning("legal clock late", metadata: [LogKey.request: "\(id.lowercased)", "clock": "\(clock)"])
                }
                if escalatedAt == nil && escalateAt <= t {
                    try await conn.query("UPDATE request_clocks SET escalated_at = now() WHERE request_id = \(id) AND clock = \(clock)", logger: logger)
                    record(.clockEscalated, escalateAt)
                    logger.warning("legal clock escalated", metadata: [LogKey.request: "\(id.lowercased)", "clock": "\(clock)"])
                }
                if let expireAt, expiredAt == nil, expireAt <= t {
                    try await conn.query(
                        "UPDATE request_clocks SET expired_at = now(), stopped_at = now() WHERE request_id = \(id) AND clock = \(clock)", logger: logger)
                    record(.clockExpired, expireAt)
                    try await BrokerStore.advance(conn, id, to: .expired, actor: .broker, note: "\(clock) clock expired", custody: custody, logger: logger)
                }
            }
            return due.count
        }
    }
}
