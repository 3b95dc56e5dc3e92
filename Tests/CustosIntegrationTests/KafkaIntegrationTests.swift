import CustosKafka
import Foundation
import Testing

/// The librdkafka wrapper against the real broker that ops/services started.
@Suite("Kafka wrapper against a real broker", .timeLimit(.minutes(3)))
struct KafkaIntegrationTests {
    func first(_ n: Int, from consumer: KafkaConsumer, store: Bool) async throws -> [KafkaMessage] {
        var out: [KafkaMessage] = []
        for try await m in consumer.messages {
            out.append(m)
            if store { try consumer.store(m) }
            if out.count == n { break }
        }
        return out
    }

    @Test func messagesArriveInOrderWithHeadersAndStoredOffsetsAreCommitted() async throws {
        let kafka = try TestServices.kafka()
        let topic = TestServices.unique("custos.test.order.")
        let group = TestServices.unique("custos-test-")
        let producer = try KafkaProducer(configuration: kafka, logger: TestServices.logger)
        let batch = (0..<50).map { i in
            OutgoingMessage(topic: topic, key: Array("k".utf8), value: Array("m\(i)".utf8), headers: [KafkaHeader(key: "h", value: [UInt8(i)])])
        }
        let reports = try await producer.send(batch: batch)
        #expect(reports.count == 50)
        #expect(Set(reports.map(\.partition)).count == 1)  // one key, one partition
        #expect(zip(reports, reports.dropFirst()).allSatisfy { $0.offset < $1.offset })

        let consumer = try KafkaConsumer(configuration: kafka, groupId: group, topics: [topic], logger: TestServices.logger)
        let got = try await first(50, from: consumer, store: true)
        #expect(got.map { String(decoding: $0.value, as: UTF8.self) } == (0..<50).map { "m\($0)" })
        #expect(got.map { $0.header("h") } == (0..<50).map { [UInt8($0)] })
        try consumer.commit()
        consumer.close()

        // A new member of the group starts after the committed offsets.
        try await producer.send(OutgoingMessage(topic: topic, key: Array("k".utf8), value: Array("after".utf8)))
        let again = try KafkaConsumer(configuration: kafka, groupId: group, topics: [topic], logger: TestServices.logger)
        let next = try await first(1, from: again, store: true)
        #expect(next.map { String(decoding: $0.value, as: UTF8.self) } == ["after"])
        again.close()
        producer.shutdown()
    }

    @Test func messagesWhoseOffsetsWereNotStoredAreDeliveredAgain() async throws {
        let kafka = try TestServices.kafka()
        let topic = TestServices.unique("custos.test.redeliver.")
        let group = TestServices.unique("custos-test-")
        let producer = try KafkaProducer(configuration: kafka, logger: TestServices.logger)
        try await producer.send(batch: (0..<3).map { OutgoingMessage(topic: topic, key: Array("k".utf8), value: [UInt8($0)]) })

        let crashed = try KafkaConsumer(configuration: kafka, groupId: group, topics: [topic], logger: TestServices.logger)
        let seen = try await first(3, from: crashed, store: false)  // processed, never committed
        #expect(seen.map(\.value) == [[0], [1], [2]])
        crashed.close()

        let restarted = try KafkaConsumer(configuration: kafka, groupId: group, topics: [topic], logger: TestServices.logger)
        let redelivered = try await first(3, from: restarted, store: true)
        #expect(redelivered.map(\.value) == [[0], [1], [2]])
        restarted.close()
        producer.shutdown()
    }

    @Test func topicsAreCreatedOnceAndExistingOnesAreNotAnError() async throws {
        let producer = try KafkaProducer(configuration: try TestServices.kafka(), logger: TestServices.logger)
        let names = [TestServices.unique("custos.test.create."), TestServices.unique("custos.test.create.")]
        #expect(try await producer.ensureTopics(names) == [:])
        #expect(try await producer.ensureTopics(names) == [:])
        producer.shutdown()
    }

    @Test func aProducerWithBadSettingsFailsWithAClearError() {
        var kafka = KafkaConfiguration(bootstrapServers: "127.0.0.1:1")
        kafka.properties["no.such.property"] = "1"
        #expect { _ = try KafkaProducer(configuration: kafka, logger: TestServices.logger) } throws: {
            String(describing: $0).contains("no.such.property")
        }
    }
}
