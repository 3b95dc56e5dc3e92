import CRdKafka
import Dispatch
import Logging

extension KafkaProducer {
    /// Creates the topics that do not exist yet (CreateTopics, through this client's
    /// connection) and returns, for each topic that could not be created, the broker's reason.
    /// A topic that exists already is not an error. Consumers of topics created here see them
    /// at once, instead of after their next metadata refresh.
    ///
    /// - `partitions`, `replicationFactor`: -1 leaves the choice to the cluster's defaults.
    public func ensureTopics(_ names: [String], partitions: Int32 = -1, replicationFactor: Int32 = -1,
                             timeout: Duration = .seconds(15)) async throws -> [String: String] {
        guard !names.isEmpty else { return [:] }
        let client = self.client  // Sendable wrapper; the handle is read on the admin thread
        let ms = Int32(timeout.components.seconds * 1000)
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try Self.createTopics(client.handle, names, partitions, replicationFactor, ms) })
            }
        }
    }

    /// `ensureTopics`, for start-up: topics that cannot be created (the cluster may forbid it,
    /// with operators creating them beforehand) are logged as warnings, not thrown.
    public func ensureTopicsOrWarn(_ names: [String], logger: Logger) async {
        do {
            for (topic, reason) in try await ensureTopics(names) {
                logger.warning("could not create topic", metadata: ["kafka.topic": "\(topic)", "kafka.reason": "\(reason)"])
            }
        } catch {
            logger.warning("could not create topics", metadata: ["kafka.error": "\(error)"])
        }
    }

    /// Keeps `names()`' topics in existence until the task is cancelled: every `interval`, a
    /// Metadata request; the topics missing from it are created (`ensureTopicsOrWarn`). A
    /// Kafka that lost its state (a cluster rebuilt, or a Tansu in memory restarted) comes
    /// back without them, and a producer's messages for a missing topic would wait until
    /// `message.timeout.ms`. An unreachable cluster is not an error here: it is asked again.
    ///
    /// - Returns: only when cancelled.
    public func keepTopics(_ names: @Sendable () async -> [String], every interval: Duration, logger: Logger) async {
        while !Task.isCancelled {
            do { try await Task.sleep(for: interval) } catch { return }
            let wanted = await names()
            guard !wanted.isEmpty, let existing = try? await metadata(topics: wanted).existing else { continue }
            let missing = wanted.filter { !existing.contains($0) }
            guard !missing.isEmpty else { continue }
            logger.warning("topics missing from the Kafka cluster; creating them", metadata: ["kafka.topics": "\(missing.joined(separator: ","))"])
            await ensureTopicsOrWarn(missing, logger: logger)
        }
    }

    /// What the cluster says of itself (a Metadata request; nothing is produced): its
    /// brokers, and which of `topics` exist.
    public func metadata(topics: [String], timeout: Duration = .seconds(10)) async throws -> (brokers: Int, existing: Set<String>) {
        let client = self.client
        let ms = Int32(timeout.components.seconds * 1000)
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result {
                    var md: UnsafePointer<rd_kafka_metadata>?
                    let err = rd_kafka_metadata(client.handle, 1, nil, &md, ms)
                    guard err == RD_KAFKA_RESP_ERR_NO_ERROR, let md else { throw KafkaError(err, "Metadata") }
                    defer { rd_kafka_metadata_destroy(md) }
                    var existing = Set<String>()
                    for i in 0..<Int(md.pointee.topic_cnt) {
                        let t = md.pointee.topics[i]
                        let name = String(cString: t.topic)
                        if t.err == RD_KAFKA_RESP_ERR_NO_ERROR, topics.contains(name) { existing.insert(name) }
                    }
                    return (Int(md.pointee.broker_cnt), existing)
                })
            }
        }
    }

    private static func createTopics(_ rk: OpaquePointer, _ names: [String], _ partitions: Int32, _ rf: Int32, _ ms: Int32) throws -> [String: String] {
        var errstr = [CChar](repeating: 0, count: 512)
        var topics: [OpaquePointer?] = []
        defer { topics.forEach { rd_kafka_NewTopic_destroy($0) } }
        for name in names {
            guard let t = rd_kafka_NewTopic_new(name, partitions, rf, &errstr, errstr.count) else {
                throw KafkaError(reason: "topic \(name): \(cString(errstr))")
            }
            topics.append(t)
        }
        let queue = rd_kafka_queue_new(rk)
        defer { rd_kafka_queue_destroy(queue) }
        let options = rd_kafka_AdminOptions_new(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS)
        defer { rd_kafka_AdminOptions_destroy(options) }
        _ = rd_kafka_AdminOptions_set_operation_timeout(options, ms, &errstr, errstr.count)
        _ = rd_kafka_AdminOptions_set_request_timeout(options, ms, &errstr, errstr.count)
        topics.withUnsafeMutableBufferPointer { rd_kafka_CreateTopics(rk, $0.baseAddress, $0.count, options, queue) }
        guard let event = rd_kafka_queue_poll(queue, ms + 1000) else { throw KafkaError(reason: "CreateTopics timed out") }
        defer { rd_kafka_event_destroy(event) }
        if rd_kafka_event_error(event) != RD_KAFKA_RESP_ERR_NO_ERROR {
            throw KafkaError(rd_kafka_event_error(event), "CreateTopics")
        }
        var count = 0
        guard let result = rd_kafka_event_CreateTopics_result(event), let results = rd_kafka_CreateTopics_result_topics(result, &count) else {
            throw KafkaError(reason: "CreateTopics returned no result")
        }
        var refused: [String: String] = [:]
        for i in 0..<count {
            let r = results[i]
            let err = rd_kafka_topic_result_error(r)
            guard err != RD_KAFKA_RESP_ERR_NO_ERROR, err != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS else { continue }
            let reason = rd_kafka_topic_result_error_string(r).map { String(cString: $0) } ?? String(cString: rd_kafka_err2str(err))
            refused[String(cString: rd_kafka_topic_result_name(r))] = reason
        }
        return refused
    }
}
