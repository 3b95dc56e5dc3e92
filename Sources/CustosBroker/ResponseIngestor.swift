import CustosEvidence
import CustosKafka
import CustosModel
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// Consumes `custos.from.<provider>` for every registered provider and applies each message
/// through `BrokerStore.ingest`. A message's offset is stored only after its transaction has
/// committed; while the database is unreachable the same message is retried, never skipped.
struct ResponseIngestor: Service {
    let store: BrokerStore
    let producer: KafkaProducer
    let kafka: KafkaConfiguration
    let groupId: String
    let refreshInterval: Duration
    let ready: Gate
    let logger: Logger
    let ingested = Counter(label: "custos.ingest.messages")
    let deadLettered = Counter(label: "custos.ingest.dead_letters")

    final class Keys: Sendable {
        let value = Mutex<[String: VerifyingKey]>([:])
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
        let consumer = try KafkaConsumer(configuration: kafka, groupId: groupId, topics: topics(initial), logger: logger)
        logger.info("consuming provider topics", metadata: ["kafka.topics": "\(topics(initial).joined(separator: ","))"])

        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await refreshProviders(keys: keys, consumer: consumer) }
                group.addTask { try await consume(consumer: consumer, keys: keys) }
                try await group.next()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            consumer.close()
        }
        consumer.close()
    }

    /// Creates the three topics of every provider if they are missing, so that neither side waits
    /// for a metadata refresh to see them. Where the cluster does not allow it, operators
    /// create them beforehand, and this only warns.
    private func ensureTopics(_ keys: [String: VerifyingKey]) async {
        await producer.ensureTopicsOrWarn(keys.keys.sorted().flatMap { [Topics.toProvider($0), Topics.toProviderUrgent($0), Topics.fromProvider($0)] }, logger: logger)
    }

    private func topics(_ keys: [String: VerifyingKey]) -> [String] { keys.keys.sorted().map(Topics.fromProvider) }

    private func consume(consumer: KafkaConsumer, keys: Keys) async throws {
        for try await message in consumer.messages {
            var attempt = 0
            while true {
                do {
                    let outcome = try await store.ingest(message, providerKeys: keys.value.withLock { $0 })
                    if case .deadLettered = outcome { deadLettered.increment() } else { ingested.increment() }
                    break
                } catch {
                    attempt += 1
                    if Task.isCancelled || Task.isShuttingDownGracefully { return }
                    logger.error("ingest failed; retrying the same message", metadata: [
                        LogKey.topic: "\(message.topic)", LogKey.offset: "\(message.offset)", LogKey.error: "\(loggable(error))",
                    ])
                    try await Task.sleep(for: Backoff.delay(attempt: attempt))
                }
            }
            try consumer.store(message)
        }
    }

    private func refreshProviders(keys: Keys, consumer: KafkaConsumer) async throws {
        while !Task.isCancelled {
            try await Task.sleep(for: refreshInterval)
            guard let fresh = try? await store.providers() else { continue }
            let before = keys.value.withLock { s -> [String: VerifyingKey] in defer { s = fresh }; return s }
            if Set(before.keys) != Set(fresh.keys) {
                await ensureTopics(fresh)
                try consumer.subscribe(topics: topics(fresh))
                logger.info("provider set changed; resubscribed", metadata: ["kafka.topics": "\(topics(fresh).joined(separator: ","))"])
            }
        }
    }
}

func gracefulSleep(_ d: Duration) async throws {
    try await cancelWhenGracefulShutdown { try await Task.sleep(for: d) }
}
