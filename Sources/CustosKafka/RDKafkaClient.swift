import CRdKafka
import Dispatch
import Synchronization

/// Owns one librdkafka handle and frees it in `deinit`. No other type touches the C pointer.
///
/// `@unchecked Sendable`: librdkafka documents its `rd_kafka_t` as thread-safe for every call
/// used here; the Swift-side mutable state is behind `Mutex`.
final class RDKafkaClient: @unchecked Sendable {
    enum Kind { case producer, consumer }

    let handle: OpaquePointer
    let kind: Kind

    init(kind: Kind, properties: [String: String]) throws {
        try LibRdKafka.checkVersion()
        let conf = rd_kafka_conf_new()!
        var errstr = [CChar](repeating: 0, count: 512)
        for (key, value) in properties.sorted(by: { $0.key < $1.key }) {
            if rd_kafka_conf_set(conf, key, value, &errstr, errstr.count) != RD_KAFKA_CONF_OK {
                rd_kafka_conf_destroy(conf)
                throw KafkaError(reason: "configuration \(key): \(cString(errstr))")
            }
        }
        if kind == .producer {
            rd_kafka_conf_set_dr_msg_cb(conf, deliveryReportCallback)
            rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(producerState).toOpaque())
        }
        guard let rk = rd_kafka_new(kind == .producer ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER, conf, &errstr, errstr.count) else {
            rd_kafka_conf_destroy(conf)  // only on failure does the caller still own conf
            throw KafkaError(reason: "cannot create Kafka client: \(cString(errstr))")
        }
        self.handle = rk
        self.kind = kind
        if kind == .consumer { rd_kafka_poll_set_consumer(rk) }
    }

    deinit {
        rd_kafka_destroy(handle)
    }

    /// Set by a delivery report whose error says the cluster no longer knows this idempotent
    /// producer's id, epoch or sequence — a Kafka that lost its state answers so — after which
    /// every message it sends fails the same way: the instance must be replaced.
    final class ProducerState: Sendable {
        let lost = Atomic<Bool>(false)
    }
    let producerState = ProducerState()

    /// Whether this producer must be replaced: librdkafka's fatal error, or `ProducerState.lost`.
    func unusableReason() -> String? {
        var reason = [CChar](repeating: 0, count: 512)
        if rd_kafka_fatal_error(handle, &reason, reason.count) != RD_KAFKA_RESP_ERR_NO_ERROR { return cString(reason) }
        return producerState.lost.load(ordering: .acquiring) ? "the cluster no longer knows this producer's id or epoch" : nil
    }
}

/// Delivery errors after which an idempotent producer's instance is of no more use.
private let producerStateErrors: Set<rd_kafka_resp_err_t> = [
    RD_KAFKA_RESP_ERR_PRODUCER_FENCED, RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID, RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH,
    RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
]

/// The pending outcome of one produced message, fulfilled by its delivery report. It travels
/// through librdkafka's per-message opaque pointer.
public final class DeliveryFuture: Sendable {
    private enum State {
        case pending(CheckedContinuation<DeliveryReport, any Error>?)
        case done(Result<DeliveryReport, KafkaError>)
    }
    private let state = Mutex(State.pending(nil))

    init() {}

    func fulfill(_ result: Result<DeliveryReport, KafkaError>) {
        let waiter = state.withLock { s -> CheckedContinuation<DeliveryReport, any Error>? in
            guard case .pending(let c) = s else { return nil }
            s = .done(result)
            return c
        }
        waiter?.resume(with: result.mapError { $0 as any Error })
    }

    /// Waits for the broker's acknowledgement, or the delivery error.
    public var value: DeliveryReport {
        get async throws {
            try await withCheckedThrowingContinuation { c in
                let ready = state.withLock { s -> Result<DeliveryReport, KafkaError>? in
                    switch s {
                    case .done(let r): return r
                    case .pending: s = .pending(c); return nil
                    }
                }
                if let ready { c.resume(with: ready.mapError { $0 as any Error }) }
            }
        }
    }
}

public struct DeliveryReport: Sendable {
    public var topic: String
    public var partition: Int32
    public var offset: Int64
}

/// Runs on the producer's poll thread, once per message.
private let deliveryReportCallback: @convention(c) (OpaquePointer?, UnsafePointer<rd_kafka_message_t>?, UnsafeMutableRawPointer?) -> Void = { _, message, state in
    guard let message, let opaque = message.pointee._private else { return }
    let future = Unmanaged<DeliveryFuture>.fromOpaque(opaque).takeRetainedValue()
    let m = message.pointee
    if producerStateErrors.contains(m.err), let state {
        Unmanaged<RDKafkaClient.ProducerState>.fromOpaque(state).takeUnretainedValue().lost.store(true, ordering: .releasing)
    }
    if m.err != RD_KAFKA_RESP_ERR_NO_ERROR {
        future.fulfill(.failure(KafkaError(m.err, "delivery failed")))
    } else {
        let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
        future.fulfill(.success(DeliveryReport(topic: topic, partition: m.partition, offset: m.offset)))
    }
}

/// Text of a NUL-terminated C buffer.
func cString(_ buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
