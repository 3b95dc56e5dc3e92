import CustosEvidence
import CustosKafka
import CustosModel
import Foundation
import Logging

/// `custos-bench kafka-noise BROKERS TOPIC COUNT [REQUEST-ID]` (run by `ops/chaos`): produces
/// COUNT malformed messages on TOPIC, the kinds a provider's topic can carry by mistake or
/// malice — bytes that are not JSON, an envelope whose signature is not the sender's (signed
/// by a key nobody registered), and a chunk header without its envelope — so that the campaign
/// can check that each goes to the broker's dead letters and nothing else does. Prints
/// `kafka-noise: N messages` once Kafka has acknowledged them all.
enum ChaosNoise {
    static func run(brokers: String, topic: String, count: Int, requestId: UUID) async throws {
        var logger = Logger(label: "custos-bench")
        logger.logLevel = .warning
        let producer = try KafkaProducer(configuration: KafkaConfiguration(bootstrapServers: brokers, clientId: "custos-chaos-noise"), logger: logger)
        defer { producer.shutdown() }
        let stranger = SigningKey.generate()
        let sender = Topics.provider(fromTopic: topic) ?? "unknown"
        var sent = 0
        for i in 0..<count {
            let key = Array(requestId.lowercased.utf8)
            let message: OutgoingMessage
            switch i % 3 {
            case 0:
                message = OutgoingMessage(topic: topic, key: key, value: Array("not json \(UUID().uuidString)".utf8))
            case 1:
                let envelope = Envelope(type: .status, id: UUID(), requestId: requestId, sender: sender, body: StatusBody(phase: .extracting, percent: 1))
                message = OutgoingMessage(topic: topic, key: key, value: try SignedEnvelope.encode(envelope, signer: stranger))
            default:
                message = OutgoingMessage(topic: topic, key: key, value: Array(repeating: 0x41, count: 64),
                                          headers: [KafkaHeader(key: Topics.envelopeHeader, value: Array("{}".utf8))])
            }
            _ = try await producer.send(message)
            sent += 1
        }
        print("kafka-noise: \(sent) messages")
    }
}
