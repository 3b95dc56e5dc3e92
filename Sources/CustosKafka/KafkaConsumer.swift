import CRdKafka
import Dispatch
import Foundation
import Logging
import Metrics
import Synchronization

public struct KafkaMessage: Sendable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
    public var key: [UInt8]
    public var value: [UInt8]
    public var headers: [KafkaHeader]

    public init(topic: String, partition: Int32, offset: Int64, key: [UInt8], value: [UInt8], headers: [KafkaHeader] = []) {
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.key = key
        self.value = value
        self.headers = headers
    }

    public func header(_ key: String) -> [UInt8]? { headers.last { $0.key == key }?.value }
}

/// A group consumer read by pulling: `messages` is an `AsyncSequence` that polls librdkafka
/// only when the caller asks for the next message, so a slow caller slows the consumer
/// (natural back-pressure). Offsets are committed only for messages passed to `store(_:)`.
///
/// A watchdog replaces the librdkafka instance when its group membership has not been
/// steady for `KafkaConfiguration.groupStallSeconds` of unbroken polling with the group's
/// coordinator connected (`RDKafkaClient.GroupState`), as after a
/// Kafka cluster that restarted and forgot the group: librdkafka can then wait for good in
/// `wait-unassign-to-complete` on a member id the coordinator no longer knows. The new
/// instance joins afresh and reads from the committed offsets; messages read and not yet
/// stored come again (every consumer of Custos applies a message once by its id).
public final class KafkaConsumer: Sendable {
    /// The librdkafka instance in use now.
    var client: RDKafkaClient { state.withLock { $0.client } }
    private let logger: Logger
    private let properties: [String: String]
    /// 0 turns the watchdog off.
    private let stallLimit: Duration
    /// Blocking librdkafka polls run here, never on the cooperative pool.
    private let queue = DispatchQueue(label: "custos-kafka-consumer-poll")
    private let state: Mutex<State>
    private static let recreated = Metrics.Counter(label: "custos_kafka_consumers_recreated_total")

    private struct State {
        var client: RDKafkaClient
        var topics: [String] = []
        var closed = false
        var stored: [TopicPartition: Int64] = [:]
    }

    struct TopicPartition: Hashable { var topic: String; var partition: Int32 }

    public init(configuration: KafkaConfiguration, groupId: String, topics: [String], logger: Logger) throws {
        properties = configuration.consumerProperties(groupId: groupId)
        stallLimit = .seconds(configuration.groupStallSeconds)
        state = Mutex(State(client: try RDKafkaClient(kind: .consumer, properties: properties)))
        self.logger = logger
        try subscribe(topics: topics)
    }

    /// Replaces the subscription; the group rebalances. Under the lock, so that a replacement
    /// by the watchdog never subscribes the new instance to the list before.
    public func subscribe(topics: [String]) throws {
        try state.withLock { s in
            try Self.subscribe(s.client, to: topics)
            s.topics = topics
        }
    }

    private static func subscribe(_ client: RDKafkaClient, to topics: [String]) throws {
        let list = rd_kafka_topic_partition_list_new(Int32(topics.count))
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for t in topics { rd_kafka_topic_partition_list_add(list, t, -1) }
        let err = rd_kafka_subscribe(client.handle, list)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR else { throw KafkaError(err, "subscribe") }
    }

    /// The watchdog, on the poll queue: replaces the instance whose group membership has not
    /// been steady for `stallLimit`. The old one is freed at once, without leaving its group
    /// (kept alive and unpolled, it would hold its partitions and stall the group's rebalance),
    /// or, if a call on another thread holds it at that moment, when that call returns: every
    /// call keeps the instance it uses alive until it is done. Returns the instance to poll.
    private func replaceIfStalled() -> RDKafkaClient {
        let current = client
        guard stallLimit > .zero, let reading = current.groupState.stalled(for: stallLimit, now: .now) else { return current }
        do {
            let fresh = try RDKafkaClient(kind: .consumer, properties: properties)
            current.abandoned.store(true, ordering: .releasing)
            try state.withLock { s in
                try Self.subscribe(fresh, to: s.topics)
                s.client = fresh
                s.stored = [:]
            }
            Self.recreated.increment()
            logger.error("the Kafka consumer's group membership stalled and the consumer was replaced by a new one; messages not yet stored are read again",
                         metadata: ["kafka.group.state": "\(reading.state)", "kafka.group.join_state": "\(reading.joinState)",
                                    "kafka.group.stall_seconds": "\(stallLimit.components.seconds)"])
            return fresh
        } catch {
            logger.error("the Kafka consumer's group membership stalled and the consumer could not be replaced yet", metadata: ["kafka.error": "\(error)"])
            return current
        }
    }

    public var messages: Messages { Messages(consumer: self) }

    public struct Messages: AsyncSequence, Sendable {
        let consumer: KafkaConsumer
        public func makeAsyncIterator() -> Iterator { Iterator(consumer: consumer) }

        public struct Iterator: AsyncIteratorProtocol {
            let consumer: KafkaConsumer
            /// Returns nil once the consumer is closed or the task is cancelled.
            public mutating func next() async throws -> KafkaMessage? {
                try await consumer.poll()
            }
        }
    }

    private func poll() async throws -> KafkaMessage? {
        let cancelled = Atomic<Bool>(false)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<KafkaMessage?, any Error>) in
                queue.async { [self] in
                    while true {
                        if cancelled.load(ordering: .relaxed) || state.withLock({ $0.closed }) {
                            c.resume(returning: nil); return
                        }
                        let client = replaceIfStalled()
                        guard let raw = rd_kafka_consumer_poll(client.handle, 100) else { continue }
                        defer { rd_kafka_message_destroy(raw) }
                        let m = raw.pointee
                        if m.err != RD_KAFKA_RESP_ERR_NO_ERROR {
                            if m.err == RD_KAFKA_RESP_ERR__PARTITION_EOF { continue }
                            let error = KafkaError(m.err, "consume")
                            if rd_kafka_fatal_error(client.handle, nil, 0) != RD_KAFKA_RESP_ERR_NO_ERROR {
                                c.resume(throwing: error); return
                            }
                            // Transient (broker down, topic not yet created): librdkafka retries.
                            logger.debug("Kafka consumer notice", metadata: ["kafka.error": "\(error.reason)"])
                            continue
                        }
                        c.resume(returning: Self.copy(raw)); return
                    }
                }
            }
        } onCancel: {
            cancelled.store(true, ordering: .relaxed)
        }
    }

    private static func copy(_ raw: UnsafeMutablePointer<rd_kafka_message_t>) -> KafkaMessage {
        let m = raw.pointee
        let bytes = { (p: UnsafeMutableRawPointer?, n: Int) -> [UInt8] in
            guard let p, n > 0 else { return [] }
            return Array(UnsafeRawBufferPointer(start: p, count: n))
        }
        var headers: [KafkaHeader] = []
        var hdrs: OpaquePointer?
        if rd_kafka_message_headers(raw, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR, let hdrs {
            var i = 0
            var name: UnsafePointer<CChar>?
            var value: UnsafeRawPointer?
            var size = 0
            while rd_kafka_header_get_all(hdrs, i, &name, &value, &size) == RD_KAFKA_RESP_ERR_NO_ERROR {
                let v = value.map { Array(UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
                headers.append(KafkaHeader(key: name.map { String(cString: $0) } ?? "", value: v))
                i += 1
            }
        }
        return KafkaMessage(
            topic: m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? "",
            partition: m.partition, offset: m.offset,
            key: bytes(m.key, m.key_len), value: bytes(m.payload, m.len), headers: headers)
    }

    /// Marks `message` as processed: its offset is committed by the next auto-commit (within
    /// `auto.commit.interval.ms`), by `commit()`, or when the consumer closes. Call it only
    /// after the message's effects are durable.
    public func store(_ message: KafkaMessage) throws {
        try store(topic: message.topic, partition: message.partition, next: message.offset + 1)
    }

    /// Keeps the highest offset stored per partition for `commit()`, and forgets a partition
    /// this consumer no longer holds (committing it would rewind its new owner).
    private func remember(_ tp: TopicPartition, _ next: Int64, assigned: Bool) {
        state.withLock { s in
            if assigned { s.stored[tp] = max(s.stored[tp] ?? next, next) } else { s.stored[tp] = nil }
        }
    }

    /// Marks everything before `next` in `topic`/`partition` as processed (`next` is the
    /// offset of the first message not yet processed), as `store(_:)` does for one message.
    /// For a consumer whose messages finish out of order: the caller passes the low watermark.
    public func store(topic: String, partition: Int32, next: Int64) throws {
        let client = self.client
        defer { withExtendedLifetime(client) {} }
        let list = rd_kafka_topic_partition_list_new(1)
        defer { rd_kafka_topic_partition_list_destroy(list) }
        rd_kafka_topic_partition_list_add(list, topic, partition)!.pointee.offset = next
        let err = rd_kafka_offsets_store(client.handle, list)
        // _STATE means the partition was revoked meanwhile; whoever owns it now re-reads the
        // message and finds it already processed (every message is idempotent by id).
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__STATE else { throw KafkaError(err, "store offset") }
        remember(TopicPartition(topic: topic, partition: partition), next, assigned: err == RD_KAFKA_RESP_ERR_NO_ERROR)
    }

    /// Consumer lag of each partition assigned to this consumer: the partition's high
    /// watermark (as of the last fetch) minus this consumer's position, in messages. A
    /// partition not fetched yet is left out. Asks the Kafka cluster nothing.
    public func lag() -> [(topic: String, partition: Int32, messages: Int64)] {
        guard !state.withLock({ $0.closed }) else { return [] }
        let client = self.client
        defer { withExtendedLifetime(client) {} }
        var assigned: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        guard rd_kafka_assignment(client.handle, &assigned) == RD_KAFKA_RESP_ERR_NO_ERROR, let assigned else { return [] }
        defer { rd_kafka_topic_partition_list_destroy(assigned) }
        _ = rd_kafka_position(client.handle, assigned)
        var out: [(topic: String, partition: Int32, messages: Int64)] = []
        for i in 0..<Int(assigned.pointee.cnt) {
            let tp = assigned.pointee.elems[i]
            var low: Int64 = 0, high: Int64 = 0
            guard tp.offset >= 0, rd_kafka_get_watermark_offsets(client.handle, tp.topic, tp.partition, &low, &high) == RD_KAFKA_RESP_ERR_NO_ERROR,
                  high >= 0
            else { continue }
            out.append((String(cString: tp.topic), tp.partition, max(0, high - tp.offset)))
        }
        return out
    }

    /// Commits the stored offsets of the partitions this consumer holds now, and waits for the
    /// broker's answer.
    public func commit() throws {
        let client = self.client
        defer { withExtendedLifetime(client) {} }
        var stored = state.withLock { $0.stored }
        var assigned: UnsafeMutablePointer<rd_kafka_topic_partition_list_t>?
        if rd_kafka_assignment(client.handle, &assigned) == RD_KAFKA_RESP_ERR_NO_ERROR, let assigned {
            defer { rd_kafka_topic_partition_list_destroy(assigned) }
            var held = Set<TopicPartition>()
            for i in 0..<Int(assigned.pointee.cnt) {
                held.insert(TopicPartition(topic: String(cString: assigned.pointee.elems[i].topic), partition: assigned.pointee.elems[i].partition))
            }
            stored = stored.filter { held.contains($0.key) }
        }
        guard !stored.isEmpty else { return }
        let list = rd_kafka_topic_partition_list_new(Int32(stored.count))
        defer { rd_kafka_topic_partition_list_destroy(list) }
        for (tp, offset) in stored {
            rd_kafka_topic_partition_list_add(list, tp.topic, tp.partition)!.pointee.offset = offset
        }
        let err = rd_kafka_commit(client.handle, list, 0)
        guard err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__NO_OFFSET else { throw KafkaError(err, "commit") }
    }

    /// How long `close` waits for librdkafka to leave the group. A broker that forgot the
    /// member (Tansu after a restart) can keep `rd_kafka_consumer_close` waiting for ever
    /// (`wait-unassign-to-complete`), which kept a stopping process alive.
    public static let closeTimeout: Duration = .seconds(10)

    /// Commits stored offsets, leaves the group (waiting at most `closeTimeout`; past it the
    /// instance is abandoned and freed without leaving) and stops iteration. Idempotent.
    public func close() {
        let first = state.withLock { s -> Bool in
            defer { s.closed = true }
            return !s.closed
        }
        guard first else { return }
        let client = queue.sync { () -> RDKafkaClient in
            try? commit()
            return self.client
        }
        // On a thread of its own, holding only the instance (close may run in deinit).
        let left = DispatchSemaphore(value: 0)
        Thread {
            withExtendedLifetime(client) { _ = rd_kafka_consumer_close(client.handle) }
            left.signal()
        }.start()
        let seconds = Double(Self.closeTimeout.components.seconds)
        if left.wait(timeout: .now() + seconds) == .timedOut {
            // The waiting thread keeps the instance alive; it is never destroyed while it waits,
            // and the process may exit meanwhile.
            client.abandoned.store(true, ordering: .releasing)
        }
    }

    deinit { close() }
}
