import CustosCanonicalJSON
import CustosModel
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The live feed's rows (`live_events`): one per state change, clock, provider question,
/// package verdict and case member, written in the transaction that causes it, so the feed
/// says what the database says. Ids and states only: never a target or free text.
enum LiveEvents {
    /// What a row's `data` holds besides its columns.
    struct Data: Codable, Sendable {
        var packageId: UUID?
        var questionId: UUID?
        var clock: String?
        var state: String?
        var actor: String?
        var reason: String?
    }

    /// Publishes an event about request `requestId`, in the caller's transaction.
    static func publish(_ conn: PostgresConnection, requestId: UUID, kind: API.LiveEvent.Kind, packageId: UUID? = nil, questionId: UUID? = nil,
                        clock: String? = nil, state: String? = nil, actor: String? = nil, reason: String? = nil, logger: Logger) async throws {
        let data = String(decoding: try CanonicalJSON.encode(Data(packageId: packageId, questionId: questionId, clock: clock, state: state, actor: actor,
                                                                  reason: reason)), as: UTF8.self)
        try await conn.query("""
            INSERT INTO live_events (agency, case_id, request_id, kind, data) SELECT agency, case_id, id, \(kind.rawValue), \(data) FROM requests WHERE id = \(requestId)
            """, logger: logger)
        // The people on duty hear of it by e-mail, queued in the same transaction.
        try await Notifications.enqueue(conn, requestId: requestId, kind: kind, state: state, clock: clock, packageId: packageId, questionId: questionId,
                                        logger: logger)
    }

    /// Publishes an event about a case, in the caller's transaction.
    static func publish(_ conn: PostgresConnection, caseId: UUID, agency: String, kind: API.LiveEvent.Kind, logger: Logger) async throws {
        try await conn.query("""
            INSERT INTO live_events (agency, case_id, kind, data) VALUES (\(agency), \(caseId), \(kind.rawValue), '{}')
            """, logger: logger)
    }

    /// Rows with ids above `after`, in id order, at most `limit`; `agency` nil: every agency's.
    /// `requestId`, `caseId`: only that request's or case's; `ids`: only those ids (a gap being
    /// looked at again).
    static func read(_ client: PostgresClient, after: Int64, agency: String?, requestId: UUID? = nil, caseId: UUID? = nil, ids: [Int64]? = nil,
                     limit: Int, logger: Logger) async throws -> [(agency: String, event: API.LiveEvent)] {
        var out: [(agency: String, event: API.LiveEvent)] = []
        for try await (id, at, rowAgency, caseId, requestId, kind, data) in try await client.query("""
            SELECT id, at, agency, case_id, request_id, kind, data FROM live_events
            WHERE id > \(after) AND (\(agency)::text IS NULL OR agency = \(agency)) AND (\(requestId)::uuid IS NULL OR request_id = \(requestId))
              AND (\(caseId)::uuid IS NULL OR case_id = \(caseId)) AND (\(ids)::bigint[] IS NULL OR id = ANY(\(ids)))
            ORDER BY id LIMIT \(limit)
            """, logger: logger).decode((Int64, Date, String, UUID, UUID?, String, String).self) {
            guard let kind = API.LiveEvent.Kind(rawValue: kind) else { continue }
            let d = (try? JSONDecoder().decode(Data.self, from: Foundation.Data(data.utf8))) ?? Data()
            out.append((rowAgency, API.LiveEvent(id: id, kind: kind, at: Timestamp.format(at), caseId: caseId, requestId: requestId, packageId: d.packageId,
                                                 questionId: d.questionId, clock: d.clock, state: d.state, actor: d.actor, reason: d.reason)))
        }
        return out
    }
}

/// Fans the live feed out to this process's Server-Sent Events clients (`GET /v1/events`):
/// one query every `interval` for every client together. Ids come from a sequence, and a
/// transaction may commit after one with a higher id: rows are read again for `window` after
/// the newest was first seen, and each is delivered once.
public final class LiveFeed: Service, Sendable {
    /// What one client wants: its agency's events, or one request's or one case's.
    public struct Filter: Sendable {
        public var agency: String
        public var requestId: UUID?
        public var caseId: UUID?
        public init(agency: String, requestId: UUID? = nil, caseId: UUID? = nil) {
            self.agency = agency
            self.requestId = requestId
            self.caseId = caseId
        }

        func matches(agency: String, _ e: API.LiveEvent) -> Bool {
            agency == self.agency && (requestId == nil || e.requestId == requestId) && (caseId == nil || e.caseId == caseId)
        }
    }

    struct Subscriber {
        var filter: Filter
        var continuation: AsyncStream<API.LiveEvent>.Continuation
    }

    struct State {
        var subscribers: [UUID: Subscriber] = [:]
        /// Every row with an id at or below it has been delivered or will never be.
        var floor: Int64 = -1
        /// Ids delivered above the floor, and when each was first seen.
        var seen: [Int64: ContinuousClock.Instant] = [:]
    }

    let client: PostgresClient
    let logger: Logger
    let interval: Duration
    let window: Duration
    /// Events buffered for a client that does not keep up; past it, its stream ends and it
    /// resumes from its last id.
    let bufferLimit: Int
    /// Opens once the schema is migrated.
    let ready: Gate
    private let state = Mutex(State())

    public init(client: PostgresClient, interval: Duration = .milliseconds(200), window: Duration = .seconds(60), bufferLimit: Int = 10_000,
                ready: Gate = Gate(open: true), logger: Logger) {
        self.ready = ready
        self.client = client
        self.interval = interval
        self.window = window
        self.bufferLimit = bufferLimit
        self.logger = logger
    }

    /// A stream of the events `filter` wants from now on; `cancel` with the returned id ends it.
    public func subscribe(_ filter: Filter) -> (UUID, AsyncStream<API.LiveEvent>) {
        let id = UUID()
        let (stream, continuation) = AsyncStream<API.LiveEvent>.makeStream(bufferingPolicy: .bufferingOldest(bufferLimit))
        state.withLock { $0.subscribers[id] = Subscriber(filter: filter, continuation: continuation) }
        continuation.onTermination = { [weak self] _ in self?.cancel(id) }
        return (id, stream)
    }

    public func cancel(_ id: UUID) {
        state.withLock { $0.subscribers.removeValue(forKey: id) }?.continuation.finish()
    }

    /// Events of `filter` with ids above `after`, from the table (a client resuming with
    /// `Last-Event-ID`), at most `limit`.
    /// The most events one replay returns; a client further behind gets the rest page by page.
    public static let replayPage = 1000

    public func replay(_ filter: Filter, after: Int64, limit: Int = LiveFeed.replayPage) async throws -> [API.LiveEvent] {
        try await LiveEvents.read(client, after: after, agency: filter.agency, requestId: filter.requestId, caseId: filter.caseId, limit: limit, logger: logger)
            .map(\.event)
    }

    public func run() async throws {
        await ready.wait()
        await cancelWhenGracefulShutdown {
            var failures = 0
            var passes = 0
            while !Task.isCancelled {
                do {
                    try await self.poll()
                    passes += 1
                    // About every ten minutes: rows older than the resume window go.
                    if passes % 3000 == 1 { try await self.prune() }
                    failures = 0
                    try await Task.sleep(for: self.interval)
                } catch is CancellationError {
                    break
                } catch {
                    failures += 1
                    self.logger.error("live feed poll failed; retrying", metadata: [LogKey.error: "\(loggable(error))"])
                    try? await Task.sleep(for: Backoff.delay(attempt: failures))
                }
            }
        }
        let all = state.withLock { s -> [Subscriber] in defer { s.subscribers = [:] }; return Array(s.subscribers.values) }
        for s in all { s.continuation.finish() }
    }

    /// How long a client may be away and still resume from its `Last-Event-ID`.
    public static let retention: Duration = .seconds(7 * 24 * 3600)

    func prune() async throws {
        try await client.query("DELETE FROM live_events WHERE at < now() - make_interval(secs => \(Double(Self.retention.components.seconds)))",
                               logger: logger)
    }

    /// One pass: reads the rows above the floor and delivers those not delivered yet.
    func poll() async throws {
        var floor = state.withLock { $0.floor }
        if floor < 0 {
            // Starting: from the newest row on (earlier ones are replayed per client).
            floor = try await client.query("SELECT coalesce(max(id), 0) FROM live_events", logger: logger).decode(Int64.self).first { _ in true } ?? 0
            state.withLock { $0.floor = floor }
        }
        // New rows above the newest seen, and the ids below it not seen yet (a transaction that
        // took its id earlier and committed later): each read once, however many rows wait.
        let (newest, gaps) = state.withLock { s -> (Int64, [Int64]) in
            let newest = max(s.floor, s.seen.keys.max() ?? s.floor)
            var gaps: [Int64] = []
            if newest > s.floor {
                var id = s.floor + 1
                while id < newest && gaps.count < 1000 && id - s.floor < 100_000 {
                    if s.seen[id] == nil { gaps.append(id) }
                    id += 1
                }
            }
            return (newest, gaps)
        }
        var rows = try await LiveEvents.read(client, after: newest, agency: nil, limit: 5000, logger: logger)
        if !gaps.isEmpty { rows = try await LiveEvents.read(client, after: floor, agency: nil, ids: gaps, limit: gaps.count, logger: logger) + rows }
        let now = ContinuousClock.now
        let targets = state.withLock { s -> [(API.LiveEvent, [AsyncStream<API.LiveEvent>.Continuation])] in
            var out: [(API.LiveEvent, [AsyncStream<API.LiveEvent>.Continuation])] = []
            for (agency, event) in rows where s.seen[event.id] == nil {
                s.seen[event.id] = now
                out.append((event, s.subscribers.values.filter { $0.filter.matches(agency: agency, event) }.map(\.continuation)))
            }
            // Ids first seen longer than the window ago are settled: the floor moves up to them.
            if let settled = s.seen.filter({ now - $0.value > window }).keys.max() {
                s.floor = max(s.floor, settled)
                s.seen = s.seen.filter { $0.key > s.floor }
            }
            return out
        }
        for (event, continuations) in targets {
            for c in continuations {
                if case .dropped = c.yield(event) { c.finish() }  // too far behind: it resumes from its last id
            }
        }
    }

    /// The Server-Sent Events response for `filter` (WHATWG HTML §9.2): first what the client
    /// missed since `lastEventId` (its `Last-Event-ID`), then each event as it happens, with a
    /// comment every 15 s to keep proxies from closing an idle stream. Each event:
    /// `id: <n>`, `event: <kind>`, `data: <API.LiveEvent as JSON>`.
    func response(_ filter: Filter, lastEventId: Int64?) -> Response {
        let (id, stream) = subscribe(filter)
        let feed = self
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream; charset=utf-8", .cacheControl: "no-store", HTTPField.Name("X-Accel-Buffering")!: "no"],
            body: ResponseBody { writer in
                // The stream ends when the broker shuts down (so that it stops at once), and after
                // `maximumLifetime` (so that a login's end is noticed: the client resumes, and is
                // authenticated again).
                try await withGracefulShutdownHandler {
                    defer { feed.cancel(id) }
                    try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
                    var sent = Set<Int64>()
                    if let lastEventId {
                        // What the client missed, page by page until caught up.
                        var after = lastEventId
                        while true {
                            let page = try await feed.replay(filter, after: after)
                            for event in page {
                                sent.insert(event.id)
                                try await writer.write(Self.frame(event))
                            }
                            guard let last = page.last, page.count == Self.replayPage else { break }
                            after = last.id
                        }
                    }
                    // Events and keep-alive comments through one bounded sequence, so that one task
                    // writes; a client that does not keep up loses its stream and resumes.
                    let limit = feed.bufferLimit
                    let merged = AsyncStream<API.LiveEvent?>(bufferingPolicy: .bufferingOldest(limit)) { continuation in
                        let pump = Task {
                            for await event in stream {
                                if case .dropped = continuation.yield(event) { break }
                            }
                            continuation.finish()
                        }
                        let beat = Task {
                            while !Task.isCancelled {
                                try? await Task.sleep(for: .seconds(15))
                                continuation.yield(nil)
                            }
                        }
                        let end = Task {
                            try? await Task.sleep(for: Self.maximumLifetime)
                            continuation.finish()
                        }
                        continuation.onTermination = { _ in pump.cancel(); beat.cancel(); end.cancel() }
                    }
                    for await item in merged {
                        if let event = item {
                            guard !sent.contains(event.id) else { continue }
                            try await writer.write(Self.frame(event))
                        } else {
                            try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                        }
                    }
                } onGracefulShutdown: {
                    feed.cancel(id)
                }
                try await writer.finish(nil)
            })
    }

    /// How long one event stream lasts before the broker ends it (the client resumes from its
    /// last id, authenticated again).
    public static let maximumLifetime: Duration = .seconds(15 * 60)

    /// One event in the text/event-stream format.
    static func frame(_ event: API.LiveEvent) -> ByteBuffer {
        let json = (try? CanonicalJSON.encode(event)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return ByteBuffer(string: "id: \(event.id)\nevent: \(event.kind.rawValue)\ndata: \(json)\n\n")
    }

    /// The newest id this feed has delivered or skipped (for tests).
    var newest: Int64 { state.withLock { max($0.floor, $0.seen.keys.max() ?? -1) } }

    /// The number of connected clients (for tests and metrics).
    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }
}
