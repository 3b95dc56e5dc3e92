import CRdKafka
import Dispatch
import Foundation
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
        groupState = GroupState(interval: .milliseconds(Int(properties["statistics.interval.ms"] ?? "") ?? 0))
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
        } else {
            rd_kafka_conf_set_stats_cb(conf, statisticsCallback)
            rd_kafka_conf_set_opaque(conf, Unmanaged.passUnretained(groupState).toOpaque())
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
        if abandoned.load(ordering: .acquiring) {
            // Its group membership is what went wrong: leaving the group would wait on it.
            rd_kafka_destroy_flags(handle, Int32(RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE))
        } else {
            rd_kafka_destroy(handle)
        }
    }

    /// Set on a consumer replaced because its group membership stalled: it is freed without
    /// leaving its group (`RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE`).
    let abandoned = Atomic<Bool>(false)

    /// A consumer's group membership as librdkafka's statistics (`statistics.interval.ms`)
    /// report it: the `cgrp` object's `state` and `join_state` (librdkafka STATISTICS.md).
    ///
    /// Only unbroken time counts as a stall: readings no more than `gap` apart (they arrive
    /// only while the consumer is polled), with the coordinator connected (`state` "up") and
    /// the membership other than "steady" throughout. A pause in polling (back-pressure) or a
    /// cluster that is unreachable starts the count again.
    final class GroupState: Sendable {
        struct Reading: Sendable {
            /// `cgrp.state`: "up" once the coordinator is known and connected.
            var state: String
            /// `cgrp.join_state`: "steady" once this member holds its assignment.
            var joinState: String
            /// When this reading was taken.
            var at: ContinuousClock.Instant
            /// The first of the unbroken run of unsteady readings up to this one, if it is one.
            var unsteadySince: ContinuousClock.Instant?
        }
        let last = Mutex<Reading?>(nil)
        /// Readings further apart than this break a run.
        let gap: Duration

        /// - Parameter interval: `statistics.interval.ms`; a run breaks after three of them
        ///   (at least 15 s) without a reading.
        init(interval: Duration) {
            gap = max(interval * 3, .seconds(15))
        }

        /// Notes one statistics report.
        func note(state: String, joinState: String, at now: ContinuousClock.Instant) {
            last.withLock { r in
                let unbroken = r.map { now - $0.at <= gap } ?? false
                let since = (state == "up" && joinState != "steady") ? ((unbroken ? r?.unsteadySince : nil) ?? now) : nil
                r = Reading(state: state, joinState: joinState, at: now, unsteadySince: since)
            }
        }

        /// The last reading, when it is recent (within `gap`) and ends an unbroken run of
        /// unsteady readings that began `limit` or longer ago.
        func stalled(for limit: Duration, now: ContinuousClock.Instant) -> Reading? {
            last.withLock { r in
                guard let r, now - r.at <= gap, let since = r.unsteadySince, now - since >= limit else { return nil }
                return r
            }
        }
    }
    let groupState: GroupState

    /// Set by a delivery report whose error leaves this idempotent producer of no more use
    /// (`producerStateErrors`): the instance must be replaced. Holds the error's code, 0 while
    /// none came.
    final class ProducerState: Sendable {
        let lost = Atomic<Int32>(0)
    }
    let producerState = ProducerState()

    /// Whether this producer must be replaced, and why: librdkafka's fatal error, or the
    /// delivery error noted in `ProducerState.lost`.
    func unusableReason() -> String? {
        var reason = [CChar](repeating: 0, count: 512)
        if rd_kafka_fatal_error(handle, &reason, reason.count) != RD_KAFKA_RESP_ERR_NO_ERROR { return cString(reason) }
        let lost = producerState.lost.load(ordering: .acquiring)
        return lost == 0 ? nil : String(cString: rd_kafka_err2str(rd_kafka_resp_err_t(rawValue: lost)))
    }
}

/// Delivery errors after which an idempotent producer's instance is of no more use:
/// - the cluster no longer knows its producer id, epoch or sequence, and every later message
///   would fail the same way (a Kafka that lost its state answers so);
/// - a message not delivered within `message.timeout.ms`: either the cluster was unreachable
///   all that time (a new instance costs nothing then), or the instance is caught in a loop
///   it does not leave by itself, such as an epoch bump (KIP-360) that a Kafka which lost its
///   state accepts and then answers UNKNOWN_PRODUCER_ID again, for ever (seen with Tansu).
private let producerStateErrors: Set<rd_kafka_resp_err_t> = [
    RD_KAFKA_RESP_ERR_PRODUCER_FENCED, RD_KAFKA_RESP_ERR_UNKNOWN_PRODUCER_ID, RD_KAFKA_RESP_ERR_INVALID_PRODUCER_EPOCH,
    RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT,
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
        Unmanaged<RDKafkaClient.ProducerState>.fromOpaque(state).takeUnretainedValue().lost.store(Int32(m.err.rawValue), ordering: .releasing)
    }
    if m.err != RD_KAFKA_RESP_ERR_NO_ERROR {
        future.fulfill(.failure(KafkaError(m.err, "delivery failed")))
    } else {
        let topic = m.rkt.map { String(cString: rd_kafka_topic_name($0)) } ?? ""
        future.fulfill(.success(DeliveryReport(topic: topic, partition: m.partition, offset: m.offset)))
    }
}

/// Runs on the consumer's poll thread, inside `rd_kafka_consumer_poll`, once per
/// `statistics.interval.ms`. Reads only the `cgrp` object's `state` and `join_state`.
/// Returns 0: librdkafka frees the JSON.
private let statisticsCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>?, Int, UnsafeMutableRawPointer?) -> Int32 = { _, json, length, opaque in
    guard let json, let opaque else { return 0 }
    let text = UnsafeRawBufferPointer(start: json, count: length)
    if let group = groupMembership(in: text) {
        Unmanaged<RDKafkaClient.GroupState>.fromOpaque(opaque).takeUnretainedValue()
            .note(state: group.state, joinState: group.joinState, at: .now)
    }
    return 0
}

/// The `cgrp` object's `state` and `join_state` in librdkafka's statistics JSON
/// (STATISTICS.md), or nil when there is none (a producer, or no group yet). librdkafka writes
/// that object with spaces after its colons and the brokers' with none, so the text is read
/// as JSON, never matched byte for byte.
func groupMembership(in json: UnsafeRawBufferPointer) -> (state: String, joinState: String)? {
    struct Statistics: Decodable {
        struct Group: Decodable {
            var state: String
            var join_state: String
        }
        var cgrp: Group?
    }
    guard let group = (try? JSONDecoder().decode(Statistics.self, from: Data(json)))?.cgrp else { return nil }
    return (group.state, group.join_state)
}

/// Text of a NUL-terminated C buffer.
func cString(_ buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}
