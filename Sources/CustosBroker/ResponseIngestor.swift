import CustosEvidence
import CustosKafka
import CustosModel
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Consumes every registered provider's `custos.from.<provider>` and, with a consumer of its
/// own, the urgent return lane `custos.from.<provider>.urgent`, and applies each message
/// through `BrokerStore.ingest`.
///
/// Messages go to lanes, one per request (`IngestLanes`): each request's messages are applied
/// in order, different requests and providers in parallel, by `concurrency` workers, and
/// `urgentConcurrency` more that take only emergencies' messages. An emergency's lane is taken
/// before any other, whichever topic its messages came on (the broker knows its requests).
/// A partition's offset is stored only up to its first message not yet applied
/// (`PartitionProgress`); each consumer stops reading while `bufferBytes` read wait to be
/// applied (`IngestSource`). A message the store cannot apply because of the message is dead-lettered by
/// `ingest`; only a failure of the database is retried, the same message, never skipped.
struct ResponseIngestor: Service {
    let store: BrokerStore
    let producer: KafkaProducer
    let kafka: KafkaConfiguration
    let groupId: String
    /// Where the consumers are shown, once made (for their lag, `BrokerGauges`).
    let consumers: IngestConsumers
    let refreshInterval: Duration
    let concurrency: Int
    let urgentConcurrency: Int
    let bufferBytes: Int
    let ready: Gate
    let logger: Logger

    final class Keys: Sendable {
        let value = Mutex<[String: VerifyingKey]>([:])
    }

    /// Whether a request is an emergency, by id, as the database says (asked once per request).
    final class Emergencies: Sendable {
        private let known = Mutex<[UUID: Bool]>([:])

        func isEmergency(_ id: UUID, store: BrokerStore) async -> Bool {
            if let k = known.withLock({ $0[id] }) { return k }
            guard let answer = try? await store.isEmergency(id) else { return false }
            known.withLock { k in
                if k.count >= 100_000 { k.removeAll() }
                k[id] = answer
            }
            return answer
        }
    }

    func run() async throws {
        await ready.wait()
        let keys = Keys()
        // No provider, no topic to consume: wait for the first registration.
        var initial: [String: VerifyingKey] = [:]
        while initial.isEmpty {
            initial = (try? await store.providers()) ?? [:]
            if initial.isEmpty {
                guard (try? await gracefulSleep(refreshInterval)) != nil, !Task.isShuttingDownGracefully else { return }
            }
        }
        keys.value.withLock { $0 = initial }
        await ensureTopics(initial)
        var kafka = kafka
        // librdkafka's own read-ahead stays small (a quarter of the lanes' buffer): it is one queue
        // for every partition, so a bulk partition read far ahead would keep the others waiting.
        kafka.properties["queued.max.messages.kbytes"] = kafka.properties["queued.max.messages.kbytes"] ?? "\(max(1024, bufferBytes / 4096))"
        var urgentKafka = kafka
        // The urgent lane's fetches return at once rather than waiting to fill a batch.
        urgentKafka.properties["fetch.wait.max.ms"] = urgentKafka.properties["fetch.wait.max.ms"] ?? "10"
        let normal = IngestSource(consumer: try KafkaConsumer(configuration: kafka, groupId: groupId, topics: topics(initial, urgent: false), logger: logger),
                                  urgent: false, bufferLimit: bufferBytes)
        let urgent = IngestSource(consumer: try KafkaConsumer(configuration: urgentKafka, groupId: groupId + ".urgent", topics: topics(initial, urgent: true),
                                                              logger: logger),
                                  urgent: true, bufferLimit: bufferBytes)
        logger.info("consuming provider topics", metadata: ["kafka.topics": "\((topics(initial, urgent: false) + topics(initial, urgent: true)).joined(separator: ","))"])
        consumers.set([normal, urgent])
        let lanes = IngestLanes<IngestWork>()
        let emergencies = Emergencies()

        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await refreshProviders(keys: keys, sources: [normal, urgent]) }
                group.addTask { [producer, logger] in
                    await producer.keepTopics({ keys.value.withLock { $0.keys.sorted().flatMap(Topics.all) } }, every: .seconds(15), logger: logger)
                }
                for source in [normal, urgent] {
                    group.addTask { try await read(source, into: lanes, emergencies: emergencies) }
                }
                group.addTask {
                    // Workers end once the lanes close (graceful shutdown), each after its message.
                    await withTaskGroup(of: Void.self) { workers in
                        for urgentOnly in Array(repeating: false, count: concurrency) + Array(repeating: true, count: urgentConcurrency) {
                            workers.addTask { await work(lanes, keys: keys, urgentOnly: urgentOnly) }
                        }
                    }
                }
                defer {
                    // However the group ends (shutdown, or a consumer's fatal error), the workers
                    // and readers are let go before it waits for them.
                    lanes.close()
                    normal.release()
                    urgent.release()
                    group.cancelAll()
                }
                try await group.next()
            }
        } onGracefulShutdown: {
            lanes.close()
            normal.release()
            urgent.release()
        }
        // Commits the offsets stored, after the last message applied.
        normal.consumer.close()
        urgent.consumer.close()
    }

    /// Creates the four topics of every provider if they are missing, so that neither side waits
    /// for a metadata refresh to see them. Where the cluster does not allow it, operators
    /// create them beforehand, and this only warns.
    private func ensureTopics(_ keys: [String: VerifyingKey]) async {
        await producer.ensureTopicsOrWarn(keys.keys.sorted().flatMap(Topics.all), logger: logger)
    }

    private func topics(_ keys: [String: VerifyingKey], urgent: Bool) -> [String] {
        keys.keys.sorted().map { Topics.fromProvider($0, urgent: urgent) }
    }

    /// Reads `source`'s messages into their request's lane, until cancelled.
    private func read(_ source: IngestSource, into lanes: IngestLanes<IngestWork>, emergencies: Emergencies) async throws {
        for try await message in source.consumer.messages {
            // Shutdown: a message polled meanwhile is not read (it is read again on restart).
            if lanes.isClosed { return }
            let ticket = source.read(message)
            // The Kafka key is the request id (SPEC §7); a message without one has a lane per partition.
            let requestId = UUID(uuidString: String(decoding: message.key, as: UTF8.self))
            let lane = requestId.map { "r:" + $0.lowercased } ?? "p:\(message.topic)/\(message.partition)"
            var urgent = source.urgent
            if !urgent, let requestId { urgent = await emergencies.isEmergency(requestId, store: store) }
            IngestMetrics.read(topic: message.topic, bytes: ticket.bytes)
            lanes.submit(IngestWork(message: message, source: source, ticket: ticket), lane: lane, urgent: urgent)
            // Back-pressure: no more is read while the buffer is full.
            await source.room()
            if lanes.isClosed { return }
        }
    }

    /// A worker: applies the messages the lanes hand it, one at a time.
    private func work(_ lanes: IngestLanes<IngestWork>, keys: Keys, urgentOnly: Bool) async {
        while let (lane, work) = await lanes.next(urgentOnly: urgentOnly) {
            guard await apply(work.message, keys: keys, lanes: lanes) else { return }
            do {
                try work.source.applied(work.message, work.ticket)
            } catch {
                logger.warning("could not store a Kafka offset; the message will be read again", metadata: [
                    LogKey.topic: "\(work.message.topic)", LogKey.offset: "\(work.message.offset)", LogKey.error: "\(loggable(error))",
                ])
            }
            lanes.done(lane)
        }
    }

    /// Attempts at a message whose failure is of no foreseen kind (`IngestFailure.unforeseen`)
    /// before it is dead-lettered: about 20 s of back-off.
    static let unforeseenAttempts = 8

    /// Applies one message; a failure of the database is retried, the same message, with
    /// back-off, for as long as it takes; one not foreseen, `unforeseenAttempts` times, then
    /// the message is dead-lettered. Returns false only when shutdown stopped it before it was
    /// applied.
    private func apply(_ message: KafkaMessage, keys: Keys, lanes: IngestLanes<IngestWork>) async -> Bool {
        var attempt = 0
        while true {
            do {
                let outcome = try await store.ingest(message, providerKeys: keys.value.withLock { $0 })
                IngestMetrics.applied(outcome, topic: message.topic)
                return true
            } catch {
                attempt += 1
                if Task.isCancelled || lanes.isClosed { return false }
                if case .unforeseen(let kind) = IngestFailure.cause(of: error), attempt >= Self.unforeseenAttempts,
                   let outcome = try? await store.deadLetter(message, reason: "not applied after \(attempt) attempts (\(kind))") {
                    IngestMetrics.applied(outcome, topic: message.topic)
                    return true
                }
                logger.error("ingest failed; retrying the same message", metadata: [
                    LogKey.topic: "\(message.topic)", LogKey.offset: "\(message.offset)", LogKey.error: "\(loggable(error))",
                ])
                do { try await Task.sleep(for: Backoff.delay(attempt: attempt)) } catch { return false }
            }
        }
    }

    private func refreshProviders(keys: Keys, sources: [IngestSource]) async throws {
        while !Task.isCancelled {
            try await Task.sleep(for: refreshInterval)
            guard let fresh = try? await store.providers() else { continue }
            let before = keys.value.withLock { s -> [String: VerifyingKey] in defer { s = fresh }; return s }
            if Set(before.keys) != Set(fresh.keys) {
                await ensureTopics(fresh)
                for source in sources { try source.consumer.subscribe(topics: topics(fresh, urgent: source.urgent)) }
                logger.info("provider set changed; resubscribed", metadata: ["kafka.topics": "\(fresh.keys.sorted().flatMap { [Topics.fromProvider($0), Topics.fromProviderUrgent($0)] }.joined(separator: ","))"])
            }
        }
    }
}

func gracefulSleep(_ d: Duration) async throws {
    try await cancelWhenGracefulShutdown { try await Task.sleep(for: d) }
}
