import CRdKafka
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

public struct KafkaHeader: Sendable, Hashable {
    public var key: String
    public var value: [UInt8]
    public init(key: String, value: [UInt8]) {
        self.key = key
        self.value = value
    }
}

public struct OutgoingMessage: Sendable {
    public var topic: String
    public var key: [UInt8]
    public var value: [UInt8]
    public var headers: [KafkaHeader]

    public init(topic: String, key: [UInt8], value: [UInt8], headers: [KafkaHeader] = []) {
        self.topic = topic
        self.key = key
        self.value = value
        self.headers = headers
    }
}

/// An idempotent producer with `acks=all`. `send` returns when the broker has acknowledged
/// the message (its delivery report), so a caller can commit its own state after that.
/// Delivery reports are served by a dedicated thread, off the cooperative pool.
///
/// An idempotent producer's fatal error (librdkafka's `rd_kafka_fatal_error`), a delivery
/// error saying that the cluster no longer knows its producer id, epoch or sequence (a Kafka
/// that lost its state fences it: PRODUCER_FENCED, UNKNOWN_PRODUCER_ID, …), or a message not
/// delivered within `message.timeout.ms` leaves the librdkafka instance unusable, so it is
/// replaced by a new one: the messages it still held fail (their callers retry them, through
/// the new instance), and nothing sent after is lost.
public final class KafkaProducer: Sendable {
    /// The librdkafka instance in use now.
    var client: RDKafkaClient { lifecycle.clients.withLock { $0.current } }
    private let logger: Logger
    private let lifecycle: Lifecycle
    private let pollThreadDone = DispatchSemaphore(value: 0)

    /// Shared with the poll thread, which must not retain the producer itself.
    private final class Lifecycle: Sendable {
        let closed = Atomic<Bool>(false)
        /// The instance in use, and those replaced after a fatal error whose queues are still
        /// being drained (their delivery reports fail every message they held).
        let clients: Mutex<(current: RDKafkaClient, retired: [RDKafkaClient])>
        let properties: [String: String]
        let logger: Logger
        static let replaced = Metrics.Counter(label: "custos_kafka_producers_replaced_total")

        init(properties: [String: String], logger: Logger) throws {
            clients = Mutex((try RDKafkaClient(kind: .producer, properties: properties), []))
            self.properties = properties
            self.logger = logger
        }

        /// Replaces the instance in use when it is unusable (`RDKafkaClient.unusableReason`):
        /// its queued and in-flight messages are purged at once, so that their callers hear
        /// of the failure now rather than at `message.timeout.ms`. Returns the one to use.
        func replaceIfUnusable() -> RDKafkaClient {
            clients.withLock { clients in
                guard let reason = clients.current.unusableReason() else { return clients.current }
                do {
                    let fresh = try RDKafkaClient(kind: .producer, properties: properties)
                    let old = clients.current
                    rd_kafka_purge(old.handle, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
                    clients.retired.append(old)
                    clients.current = fresh
                    Self.replaced.increment()
                    logger.error("the Kafka producer became unusable and was replaced by a new one; the messages it held are sent again by their callers",
                                 metadata: ["kafka.error": "\(reason)"])
                } catch {
                    logger.error("the Kafka producer became unusable and could not be replaced yet", metadata: ["kafka.error": "\(error)"])
                }
                return clients.current
            }
        }
    }

    public init(configuration: KafkaConfiguration, logger: Logger) throws {
        lifecycle = try Lifecycle(properties: configuration.producerProperties(), logger: logger)
        self.logger = logger
        let thread = Thread { [lifecycle, pollThreadDone] in
            // Poll until closed and nothing is in flight, so every continuation is resumed.
            while true {
                let current = lifecycle.replaceIfUnusable()
                let retired = lifecycle.clients.withLock { $0.retired }
                rd_kafka_poll(current.handle, retired.isEmpty ? 100 : 10)
                for old in retired { rd_kafka_poll(old.handle, 0) }
                if !retired.isEmpty {
                    // Freed once every report of a replaced instance has been served (outside
                    // the lock: rd_kafka_destroy waits for the instance's threads).
                    _ = lifecycle.clients.withLock { clients -> [RDKafkaClient] in
                        let drained = clients.retired.filter { rd_kafka_outq_len($0.handle) == 0 }
                        clients.retired.removeAll { rd_kafka_outq_len($0.handle) == 0 }
                        return drained  // released after the lock, at the end of this statement
                    }
                }
                if lifecycle.closed.load(ordering: .acquiring) && rd_kafka_outq_len(current.handle) == 0 && retired.isEmpty { break }
            }
            pollThreadDone.signal()
        }
        thread.name = "custos-kafka-producer-poll"
        thread.start()
    }

    /// The librdkafka instance to produce with (replaced first if it has become unusable).
    private func usableClient() -> RDKafkaClient { lifecycle.replaceIfUnusable() }

    /// Sends one message and waits for its delivery report.
    @discardableResult
    public func send(_ message: OutgoingMessage) async throws -> DeliveryReport {
        try await enqueue(message).value
    }

    /// Sends the messages in order (so one key's messages keep their order) and waits for
    /// every delivery report.
    @discardableResult
    public func send(batch: [OutgoingMessage]) async throws -> [DeliveryReport] {
        let futures = try batch.map { try enqueue($0) }
        var reports: [DeliveryReport] = []
        for f in futures { reports.append(try await f.value) }
        return reports
    }

    /// Hands one message to librdkafka and returns at once; the future completes with its
    /// delivery report. When librdkafka's local queue is full this waits for it to drain
    /// (back-pressure), blocking the calling thread briefly.
    public func enqueue(_ message: OutgoingMessage) throws -> DeliveryFuture {
        if lifecycle.closed.load(ordering: .acquiring) { throw KafkaError(reason: "producer is shut down") }
        let future = DeliveryFuture()
        let opaque = Unmanaged.passRetained(future).toOpaque()
        var attempts = 0
        while true {
            guard let err = produce(message, opaque: opaque, client: usableClient()) else { return future }
            let code = rd_kafka_error_code(err)
            rd_kafka_error_destroy(err)
            if code == RD_KAFKA_RESP_ERR__QUEUE_FULL && attempts < 3000 {
                attempts += 1
                usleep(10_000)
                continue
            }
            Unmanaged<DeliveryFuture>.fromOpaque(opaque).release()
            throw KafkaError(code, "produce to \(message.topic)")
        }
    }

    private func produce(_ message: OutgoingMessage, opaque: UnsafeMutableRawPointer, client: RDKafkaClient) -> OpaquePointer? {
        message.topic.withCString { topic in
            message.key.withUnsafeBytes { key in
                message.value.withUnsafeBytes { value in
                    var vus: [rd_kafka_vu_t] = []
                    var v = rd_kafka_vu_t()
                    v.vtype = RD_KAFKA_VTYPE_TOPIC; v.u.cstr = topic; vus.append(v)
                    v = rd_kafka_vu_t()
                    v.vtype = RD_KAFKA_VTYPE_KEY
                    v.u.mem.ptr = UnsafeMutableRawPointer(mutating: key.baseAddress); v.u.mem.size = key.count; vus.append(v)
                    v = rd_kafka_vu_t()
                    v.vtype = RD_KAFKA_VTYPE_VALUE
                    v.u.mem.ptr = UnsafeMutableRawPointer(mutating: value.baseAddress); v.u.mem.size = value.count; vus.append(v)
                    v = rd_kafka_vu_t()
                    v.vtype = RD_KAFKA_VTYPE_MSGFLAGS; v.u.i = RD_KAFKA_MSG_F_COPY; vus.append(v)
                    v = rd_kafka_vu_t()
                    v.vtype = RD_KAFKA_VTYPE_OPAQUE; v.u.ptr = opaque; vus.append(v)
                    return withHeaders(message.headers, into: vus) { all in
                        all.withUnsafeBufferPointer { rd_kafka_produceva(client.handle, $0.baseAddress, $0.count) }
                    }
                }
            }
        }
    }

    /// Adds header entries whose pointers stay valid for the duration of `body`
    /// (librdkafka copies header names and values during the produce call).
    private func withHeaders<R>(_ headers: [KafkaHeader], into vus: [rd_kafka_vu_t], _ body: ([rd_kafka_vu_t]) -> R) -> R {
        guard let first = headers.first else { return body(vus) }
        return first.key.withCString { name in
            first.value.withUnsafeBytes { value in
                var v = rd_kafka_vu_t()
                v.vtype = RD_KAFKA_VTYPE_HEADER
                v.u.header.name = name
                v.u.header.val = value.baseAddress
                v.u.header.size = value.count
                return withHeaders(Array(headers.dropFirst()), into: vus + [v], body)
            }
        }
    }

    /// Waits for every message in flight, then stops the poll thread. Idempotent.
    public func shutdown(timeout: Duration = .seconds(30)) {
        guard !lifecycle.closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        let ms = Int32(timeout.components.seconds * 1000)
        let client = self.client
        let err = rd_kafka_flush(client.handle, ms)
        if err != RD_KAFKA_RESP_ERR_NO_ERROR {
            logger.warning("Kafka producer flush did not finish", metadata: ["kafka.error": "\(String(cString: rd_kafka_err2str(err)))"])
            // Purge so that every waiting caller hears of the failure instead of hanging.
            rd_kafka_purge(client.handle, Int32(RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT))
        }
        pollThreadDone.wait()
    }

    deinit { shutdown(timeout: .seconds(5)) }
}

/// Runs a producer inside a `ServiceGroup`: on graceful shutdown it flushes.
public struct KafkaProducerService: Service {
    public let producer: KafkaProducer
    public init(producer: KafkaProducer) { self.producer = producer }

    public func run() async throws {
        // Wait for the group to shut down (or be cancelled), then flush what is in flight.
        try? await gracefulShutdown()
        producer.shutdown()
    }
}
