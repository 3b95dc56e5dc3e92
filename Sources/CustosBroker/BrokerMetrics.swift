import CustosKafka
import Foundation
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle
import Synchronization

/// The consumers the response ingestor reads with, once it has made them (for their lag).
final class IngestConsumers: Sendable {
    private let sources = Mutex<[IngestSource]>([])

    func set(_ s: [IngestSource]) { sources.withLock { $0 = s } }
    var all: [IngestSource] { sources.withLock { $0 } }
}

/// Samples, every `interval`, the broker's state that is not a count of events, as gauges
/// (Prometheus names; labels are provider topics, partitions, clock kinds and states — never a
/// target, a payload or free text):
/// - `custos_ingest_consumer_lag_messages{topic, partition}`: librdkafka's high watermark minus
///   this instance's position, per partition it is assigned;
/// - `custos_ingest_buffered_bytes{lane}`: read and not yet applied;
/// - `custos_outbox_depth_messages`, `custos_outbox_oldest_seconds`: rows not yet relayed, and
///   the age of the oldest;
/// - `custos_packages_receiving`: packages whose chunks are arriving (no verdict yet);
/// - `custos_custody_integration_lag_events`: custody events not yet in a checkpoint;
/// - `custos_legal_clocks{clock, state}`: running, paused, late and escalated clocks by kind.
///
/// Counters and timers are recorded where things happen: `custos_ingest_*` (`IngestMetrics`),
/// `custos_package_finalise_seconds`, `custos_packages_finalising`, and Hummingbird's
/// `http_requests_total`/`http_request_duration_seconds` by matched route and status.
struct BrokerGauges: Service {
    let client: PostgresClient
    let consumers: IngestConsumers
    let interval: Duration
    let ready: Gate
    let logger: Logger

    func run() async throws {
        try await runPolling(ready: ready, logger: logger, failure: "sampling broker metrics failed; retrying",
                             pass: { try await sample(); return 0 }, idle: { try await Task.sleep(for: interval) })
    }

    /// Partitions whose lag the last sample reported (one revoked since drops to 0).
    final class Reported: Sendable {
        let partitions = Mutex<Set<[String]>>([])
    }
    let reported = Reported()

    func sample() async throws {
        var now = Set<[String]>()
        for source in consumers.all {
            for (topic, partition, messages) in source.consumer.lag() {
                Gauge(label: "custos_ingest_consumer_lag_messages", dimensions: [("topic", topic), ("partition", "\(partition)")]).record(messages)
                now.insert([topic, "\(partition)"])
            }
            Gauge(label: "custos_ingest_buffered_bytes", dimensions: [("lane", source.urgent ? "urgent" : "normal")]).record(source.bytesInFlight)
        }
        // Partitions taken over by another instance: this one no longer lags on them.
        for gone in reported.partitions.withLock({ p -> Set<[String]> in defer { p = now }; return p.subtracting(now) }) {
            Gauge(label: "custos_ingest_consumer_lag_messages", dimensions: [("topic", gone[0]), ("partition", gone[1])]).record(0)
        }
        let rows = try await client.query("""
            SELECT (SELECT count(*) FROM outbox WHERE sent_at IS NULL),
                   (SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 FROM outbox WHERE sent_at IS NULL),
                   (SELECT count(*) FROM arriving_packages a LEFT JOIN packages p ON p.id = a.package_id
                    WHERE p.id IS NULL OR p.state = 'receiving'),
                   (SELECT coalesce(max(idx) + 1, 0) FROM custody_events) - (SELECT coalesce(max(size), 0) FROM custody_checkpoints)
            """, logger: logger).decode((Int, Double, Int, Int64).self)
        for try await (depth, oldest, receiving, lag) in rows {
            Gauge(label: "custos_outbox_depth_messages").record(depth)
            Gauge(label: "custos_outbox_oldest_seconds").record(oldest)
            Gauge(label: "custos_packages_receiving").record(receiving)
            Gauge(label: "custos_custody_integration_lag_events").record(lag)
        }
        var clocks: [String: [String: Int]] = [:]
        for try await (clock, state, n) in try await client.query("""
            SELECT clock, CASE WHEN paused_at IS NOT NULL THEN 'paused' WHEN escalated_at IS NOT NULL THEN 'escalated'
                               WHEN late_at IS NOT NULL THEN 'late' ELSE 'running' END, count(*)
            FROM request_clocks WHERE stopped_at IS NULL GROUP BY 1, 2
            """, logger: logger).decode((String, String, Int).self) { clocks[clock, default: [:]][state] = n }
        // Every kind and state is written, zero included, so that a state left empty drops to 0.
        for clock in LegalClock.Kind.allCases.map(\.rawValue) {
            for state in ["running", "paused", "late", "escalated"] {
                Gauge(label: "custos_legal_clocks", dimensions: [("clock", clock), ("state", state)]).record(clocks[clock]?[state] ?? 0)
            }
        }
    }
}

/// `GET /health`: whether this broker instance can do its work. Each check is bounded by a
/// time-out; the answer is 200 when all pass, 503 otherwise, with each check's outcome:
/// - `database`: PostgreSQL answers a query;
/// - `kafka`: the Kafka cluster answers a metadata request;
/// - `custody`: the checkpoint integrator keeps up — no custody event waits, or the newest
///   checkpoint is younger than `custodyStaleAfter`.
public struct BrokerHealth: Sendable {
    let client: PostgresClient
    let producer: KafkaProducer
    let custodyStaleAfter: Duration
    let logger: Logger

    public struct Report: Codable, Sendable {
        public var status: String
        public var database: String
        public var kafka: String
        public var custody: String
        /// Custody events not yet in a checkpoint, when the database answered.
        public var custodyLagEvents: Int64?
    }

    func check() async -> Report {
        // Custody events not yet in a checkpoint, and the newest checkpoint's age in seconds.
        async let database = probe { () async throws -> (lag: Int64, age: Double) in
            try await client.query("""
                SELECT (SELECT coalesce(max(idx) + 1, 0) FROM custody_events) - (SELECT coalesce(max(size), 0) FROM custody_checkpoints),
                       coalesce((SELECT extract(epoch FROM now() - max(created_at)) FROM custody_checkpoints), 1e9)::float8
                """, logger: logger).decode((Int64, Double).self).first { _ in true } ?? (0, 0)
        }
        async let kafka = probe { try await producer.metadata(topics: [], timeout: .seconds(3)).brokers }
        let (db, k) = await (database, kafka)
        var report = Report(status: "ok", database: "ok", kafka: "ok", custody: "ok")
        switch db {
        case .success(let (lag, age)):
            report.custodyLagEvents = lag
            // Events waiting and no checkpoint for a while: the integrator is stuck.
            if lag > 0 && age > Double(custodyStaleAfter.components.seconds) { report.custody = "stale: \(lag) events wait for a checkpoint" }
        case .failure:
            report.database = "unreachable"
            report.custody = "unknown"
        }
        if case .failure = k { report.kafka = "unreachable" }
        if report.database != "ok" || report.kafka != "ok" || report.custody != "ok" { report.status = "unhealthy" }
        return report
    }

    /// Runs `body` for at most 5 s: a check that never answers (a connection that hangs) is a
    /// failed check, and the answer does not wait for it.
    private func probe<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async -> Result<T, any Error> {
        let once = Once<T>()
        return await withCheckedContinuation { (c: CheckedContinuation<Result<T, any Error>, Never>) in
            once.waiting.withLock { $0 = c }
            let work = Task {
                do { once.resume(.success(try await body())) } catch { once.resume(.failure(error)) }
            }
            Task {
                try? await Task.sleep(for: .seconds(5))
                work.cancel()
                once.resume(.failure(CancellationError()))
            }
        }
    }
}

/// A continuation resumed once, by whichever comes first (`BrokerHealth`'s probes).
private final class Once<T: Sendable>: Sendable {
    let waiting = Mutex<CheckedContinuation<Result<T, any Error>, Never>?>(nil)
    func resume(_ r: Result<T, any Error>) { waiting.withLock { c in defer { c = nil }; return c }?.resume(returning: r) }
}
