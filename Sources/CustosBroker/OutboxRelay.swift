import CustosCustody
import CustosKafka
import CustosModel
import Foundation
import Logging
import Metrics
import PostgresNIO
import ServiceLifecycle

/// Relays outbox rows to Kafka: produced in order, and marked sent in the same transaction
/// once Kafka has acknowledged them. A crash between the two only sends a message again,
/// under the same id, which the provider ignores.
///
/// One relay runs at a time, whichever broker instance it is in: each pass first takes a
/// transaction-scoped advisory lock (`pg_try_advisory_xact_lock`); an instance that does not
/// get it does nothing this pass. Two relays taking rows side by side could send one request's
/// messages out of order. The lock goes with the transaction, so when its holder dies the
/// next pass of another instance takes over.
struct OutboxRelay: Service {
    let client: PostgresClient
    let producer: KafkaProducer
    let pollInterval: Duration
    /// Signalled when an urgent message was queued: the relay stops waiting for its next poll.
    let wakeup: Wakeup
    let ready: Gate
    let logger: Logger
    let relayed = Counter(label: "custos.outbox.relayed.messages")

    func run() async throws {
        try await runPolling(ready: ready, logger: logger, failure: "outbox relay failed; retrying",
                             pass: { try await relayOnce() }, idle: { await wakeup.wait(timeout: pollInterval) })
    }

    func relayOnce(limit: Int = 200) async throws -> Int {
        try await client.custodyTransaction(logger: logger) { conn, custody in
            let mine = try await conn.query("SELECT pg_try_advisory_xact_lock(hashtext('custos.outbox.relay'))", logger: logger)
                .decode(Bool.self).first { _ in true } ?? false
            guard mine else { return 0 }
            var rows: [(Int64, String, UUID, String, ByteBuffer)] = []
            for try await r in try await conn.query("""
                SELECT id, message_type, request_id, topic, payload FROM outbox
                WHERE sent_at IS NULL ORDER BY urgent DESC, id LIMIT \(limit) FOR UPDATE SKIP LOCKED
                """, logger: logger).decode((Int64, String, UUID, String, ByteBuffer).self) { rows.append(r) }
            guard !rows.isEmpty else { return 0 }
            let messages = rows.map { _, _, requestId, topic, payload in
                OutgoingMessage(topic: topic, key: Array(requestId.lowercased.utf8), value: Array(payload.readableBytesView))
            }
            try await producer.send(batch: messages)
            try await conn.query("UPDATE outbox SET sent_at = now() WHERE id = ANY(\(rows.map(\.0)))", logger: logger)
            for (_, type, requestId, _, _) in rows where type == MessageType.request.rawValue {
                try await BrokerStore.advance(conn, requestId, .dispatch, actor: .broker, custody: custody, logger: logger)
            }
            relayed.increment(by: rows.count)
            return rows.count
        }
    }
}

/// Retry delays for background work whose dependency (PostgreSQL, Kafka) is away:
/// 200 ms doubling up to 5 s.
enum Backoff {
    static func delay(attempt: Int) -> Duration {
        .milliseconds(min(5_000, 100 * (1 << min(max(attempt, 1), 6))))
    }
}
