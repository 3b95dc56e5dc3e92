/// librdkafka settings. Properties name their librdkafka key; anything else, such as
/// `security.protocol`, `sasl.mechanisms`, `sasl.username`, `ssl.ca.location`, passes
/// through `properties` unchanged, so a real Apache Kafka cluster is a configuration change.
public struct KafkaConfiguration: Sendable {
    /// `bootstrap.servers`: comma-separated host:port list.
    public var bootstrapServers: String
    /// `client.id`
    public var clientId: String
    /// Any other librdkafka property; these win over the defaults below.
    public var properties: [String: String]

    /// Seconds a consumer's group membership may stay other than steady (librdkafka's
    /// `cgrp.join_state`, read from its statistics every `statistics.interval.ms`, 5000 by
    /// default) through unbroken polling with the coordinator connected, before the consumer
    /// is replaced by a new instance; 0, or `statistics.interval.ms` 0, turns this watchdog
    /// off. Default 360: above the longest a classic rebalance may rightly wait for a member,
    /// `max.poll.interval.ms` (300 s) plus `session.timeout.ms`.
    public var groupStallSeconds: Int64

    public init(bootstrapServers: String, clientId: String = "custos", properties: [String: String] = [:], groupStallSeconds: Int64 = 360) {
        self.bootstrapServers = bootstrapServers
        self.clientId = clientId
        self.properties = properties
        self.groupStallSeconds = groupStallSeconds
    }

    /// Producer defaults: no loss and no duplicates from retries (`enable.idempotence`
    /// implies `acks=all`), a short linger for batching, and 120 s for a message to be
    /// delivered (`message.timeout.ms`, four times librdkafka's `request.timeout.ms`, so a
    /// slow request still has retries): past it the caller hears of the failure and sends it
    /// again, through a new instance (`KafkaProducer`), rather than waiting on one that may be
    /// stuck. Every message Custos sends is applied once by its id, so a message sent twice
    /// is harmless.
    func producerProperties() -> [String: String] {
        var p: [String: String] = [
            "bootstrap.servers": bootstrapServers,
            "client.id": clientId,
            "enable.idempotence": "true",
            "acks": "all",
            "linger.ms": "5",
            "message.timeout.ms": "120000",
            "log.connection.close": "false",
        ]
        p.merge(properties) { _, new in new }
        return p
    }

    /// Consumer defaults: offsets are stored only by the application after its own commit,
    /// and librdkafka's auto-commit then commits only those stored offsets.
    func consumerProperties(groupId: String) -> [String: String] {
        var p: [String: String] = [
            "bootstrap.servers": bootstrapServers,
            "client.id": clientId,
            "group.id": groupId,
            "enable.auto.commit": "true",
            "enable.auto.offset.store": "false",
            "auto.commit.interval.ms": "1000",
            "auto.offset.reset": "earliest",
            "allow.auto.create.topics": "true",
            "session.timeout.ms": "6000",
            "heartbeat.interval.ms": "1000",
            "topic.metadata.refresh.interval.ms": "10000",
            "log.connection.close": "false",
            // The group-membership watchdog reads these (see `groupStallSeconds`).
            "statistics.interval.ms": "5000",
        ]
        p.merge(properties) { _, new in new }
        // These two are what makes "commit after the database commit" true; not overridable.
        p["enable.auto.offset.store"] = "false"
        p["group.id"] = groupId
        return p
    }

    /// Parses `key=value` items, as given in config files and `CUSTOS_KAFKA_PROPERTIES`.
    public static func parseProperties(_ items: [String]) throws -> [String: String] {
        var out: [String: String] = [:]
        for item in items where !item.isEmpty {
            guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
                throw KafkaError(reason: "Kafka property must be key=value")
            }
            out[String(item[..<eq]).trimmingSpaces] = String(item[item.index(after: eq)...]).trimmingSpaces
        }
        return out
    }
}

extension String {
    var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " { s.removeFirst() }
        while s.last == " " { s.removeLast() }
        return String(s)
    }
}
