@testable import CustosKafka
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

    /// The watchdog: a consumer whose group membership is reported other than steady for
    /// `groupStallSeconds` is replaced, and the new instance reads on from the committed offset.
    /// The stall is noted by hand, as librdkafka's statistics would note it (they are turned
    /// off here so that a real report cannot come between).
    @Test func aConsumerWhoseGroupMembershipStalledIsReplacedAndReadsOnFromTheCommittedOffset() async throws {
        var kafka = try TestServices.kafka()
        kafka.groupStallSeconds = 1
        kafka.properties["statistics.interval.ms"] = "0"
        let topic = TestServices.unique("custos.test.stall.")
        let group = TestServices.unique("custos-test-")
        let producer = try KafkaProducer(configuration: kafka, logger: TestServices.logger)
        try await producer.send(batch: (0..<3).map { OutgoingMessage(topic: topic, key: Array("k".utf8), value: [UInt8($0)]) })

        let consumer = try KafkaConsumer(configuration: kafka, groupId: group, topics: [topic], logger: TestServices.logger)
        #expect(try await first(1, from: consumer, store: true).map(\.value) == [[0]])
        try consumer.commit()
        #expect(try await first(1, from: consumer, store: false).map(\.value) == [[1]])  // read, not stored

        weak let stalled = consumer.client
        stalled?.groupState.note(state: "up", joinState: "wait-unassign-to-complete", at: .now - .seconds(5))
        #expect(stalled?.groupState.stalled(for: .seconds(1), now: .now)?.joinState == "wait-unassign-to-complete")
        let after = try await first(2, from: consumer, store: true)
        #expect(after.map(\.value) == [[1], [2]])  // from the committed offset: message 1 comes again
        #expect(stalled == nil)  // the stalled instance was freed (without leaving its group)
        consumer.close()
        producer.shutdown()
    }

    /// A topic missing from the cluster (as after a Kafka that lost its state) is created
    /// again by `keepTopics` within its interval, and a message sent to it then arrives.
    /// The watchdog's readings come from librdkafka's real statistics: a consumer that holds
    /// its partitions reads "up" and "steady" within a few statistics intervals.
    @Test func aConsumerReadsItsGroupMembershipFromLibrdkafkasStatistics() async throws {
        var kafka = try TestServices.kafka()
        kafka.properties["statistics.interval.ms"] = "500"
        let topic = TestServices.unique("custos.test.statistics.")
        let producer = try KafkaProducer(configuration: kafka, logger: TestServices.logger)
        try await producer.send(OutgoingMessage(topic: topic, key: Array("k".utf8), value: [1]))
        let consumer = try KafkaConsumer(configuration: kafka, groupId: TestServices.unique("custos-test-"), topics: [topic], logger: TestServices.logger)
        #expect(try await first(1, from: consumer, store: true).map(\.value) == [[1]])
        let reader = Task { for try await _ in consumer.messages {} }  // keeps polling, so that statistics are served
        var reading: RDKafkaClient.GroupState.Reading?
        for _ in 0..<100 where reading?.joinState != "steady" {
            try await Task.sleep(for: .milliseconds(100))
            reading = consumer.client.groupState.last.withLock { $0 }
        }
        reader.cancel()
        #expect(reading?.state == "up")
        #expect(reading?.joinState == "steady")
        #expect(reading?.unsteadySince == nil)
        consumer.close()
        producer.shutdown()
    }

    @Test func keptTopicsThatGoMissingAreCreatedAgain() async throws {
        let kafka = try TestServices.kafka()
        let topic = TestServices.unique("custos.test.kept.")
        let producer = try KafkaProducer(configuration: kafka, logger: TestServices.logger)
        #expect(try await producer.metadata(topics: [topic]).existing.isEmpty)
        let keeper = Task { await producer.keepTopics({ [topic] }, every: .milliseconds(200), logger: TestServices.logger) }
        defer { keeper.cancel() }
        var existing: Set<String> = []
        for _ in 0..<100 where existing.isEmpty {
            try await Task.sleep(for: .milliseconds(100))
            existing = try await producer.metadata(topics: [topic]).existing
        }
        #expect(existing == [topic])
        try await producer.send(OutgoingMessage(topic: topic, key: Array("k".utf8), value: Array("kept".utf8)))
        let consumer = try KafkaConsumer(configuration: kafka, groupId: TestServices.unique("custos-test-"), topics: [topic], logger: TestServices.logger)
        #expect(try await first(1, from: consumer, store: true).map { String(decoding: $0.value, as: UTF8.self) } == ["kept"])
        consumer.close()
        producer.shutdown()
    }

    /// A message not delivered within `message.timeout.ms` fails to its caller, and the
    /// instance is replaced, so that the caller's retry goes through a new one (an instance
    /// can be caught for good in an epoch-bump loop by a Kafka that lost its state). Here the
    /// cluster is simply unreachable.
    @Test func aProducerWhoseMessageTimedOutIsReplaced() async throws {
        let unreachable = KafkaConfiguration(bootstrapServers: "127.0.0.1:1", clientId: "custos-tests",
                                             properties: ["message.timeout.ms": "1000"])
        let producer = try KafkaProducer(configuration: unreachable, logger: TestServices.logger)
        weak let first = producer.client
        let error = await #expect(throws: KafkaError.self) {
            try await producer.send(OutgoingMessage(topic: "custos.test.unreachable", key: [1], value: [1]))
        }
        #expect(error?.reason.contains("timed out") == true)
        for _ in 0..<50 where first != nil { try await Task.sleep(for: .milliseconds(100)) }
        #expect(first == nil)  // replaced by the poll thread, and freed once drained
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
