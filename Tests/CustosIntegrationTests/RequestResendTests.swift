@testable import CustosBroker
import CustosCustody
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// End-to-end acknowledgement of request messages (issue 18), against a real PostgreSQL: a
/// request message its provider has not acknowledged is marked unsent again (same outbox row:
/// same message id, same signed bytes), after twice as long each time, at most `maxResends`
/// times, each time a `request.resent` custody event; an acknowledged request never is.
@Suite("Request messages sent again until acknowledged", .timeLimit(.minutes(2)))
struct RequestResendTests {
    struct Row: Equatable {
        var messageId: UUID
        var payloadSha256: String
        var sent: Bool
        var resends: Int
    }

    static func row(_ client: PostgresClient, _ id: UUID) async throws -> Row {
        for try await (messageId, payload, sent, resends) in try await client.query("""
            SELECT message_id, payload, sent_at IS NOT NULL, resends FROM outbox WHERE request_id = \(id) AND message_type = 'request'
            """, logger: TestServices.logger).decode((UUID, ByteBuffer, Bool, Int).self) {
            return Row(messageId: messageId, payloadSha256: Digest.sha256Hex(Array(payload.readableBytesView)), sent: sent, resends: resends)
        }
        throw BrokerError(.notFound, "no request message")
    }

    /// What the outbox relay does after Kafka's acknowledgement: marks it sent (at `at`) and
    /// the request dispatched.
    static func relayed(_ client: PostgresClient, _ id: UUID, at: Date) async throws {
        _ = try await client.custodyTransaction(logger: TestServices.logger) { conn, custody in
            try await conn.query("UPDATE outbox SET sent_at = \(at) WHERE request_id = \(id)", logger: TestServices.logger)
            try await BrokerStore.advance(conn, id, .dispatch, actor: .broker, custody: custody, logger: TestServices.logger)
        }
    }

    @Test func anUnacknowledgedRequestIsSentAgainWithBackOffUntilItsAck() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { store, client, _ in
            let silent = try await LegalClockTests.approved(store, pki, 0)
            let answered = try await LegalClockTests.approved(store, pki, 1)
            var settings = ResendSettings()
            settings.after = .seconds(60)
            settings.maxResends = 3
            let watcher = LegalClockWatcher(store: store, resend: settings, logger: TestServices.logger)
            let first = try await Self.row(client, silent)
            let t0 = Date()
            for id in [silent, answered] { try await Self.relayed(client, id, at: t0) }
            _ = try await client.custodyTransaction(logger: TestServices.logger) { conn, custody in
                try await BrokerStore.advance(conn, answered, .acknowledge, actor: .init(type: .provider, id: "prov-a"), custody: custody,
                                              logger: TestServices.logger)
            }
            // Not before its time.
            try await watcher.fire(at: t0.addingTimeInterval(59))
            #expect(try await Self.row(client, silent).sent)
            // Then unsent again: the same row, id and bytes, for the relay to send at once.
            try await watcher.fire(at: t0.addingTimeInterval(61))
            var now = try await Self.row(client, silent)
            #expect(now == Row(messageId: first.messageId, payloadSha256: first.payloadSha256, sent: false, resends: 1))
            try await watcher.fire(at: t0.addingTimeInterval(3600))  // not sent yet: nothing more
            #expect(try await Self.row(client, silent).resends == 1)
            // Sent again at t1: the next wait is twice as long.
            let t1 = t0.addingTimeInterval(100)
            try await Self.relayed(client, silent, at: t1)
            try await watcher.fire(at: t1.addingTimeInterval(119))
            #expect(try await Self.row(client, silent).sent)
            try await watcher.fire(at: t1.addingTimeInterval(121))
            #expect(try await Self.row(client, silent).resends == 2)
            // At most maxResends times.
            try await Self.relayed(client, silent, at: t1)
            try await watcher.fire(at: t1.addingTimeInterval(1000))
            #expect(try await Self.row(client, silent).resends == 3)
            try await Self.relayed(client, silent, at: t1)
            try await watcher.fire(at: t1.addingTimeInterval(100_000))
            now = try await Self.row(client, silent)
            #expect(now.sent && now.resends == 3)
            // The acknowledged request never was.
            let other = try await Self.row(client, answered)
            #expect(other.sent && other.resends == 0)
            // Each re-send is a custody event naming the attempt and the message id.
            var attempts: [String] = []
            for try await entry in try await client.query("""
                SELECT entry FROM custody_events WHERE kind = 'request.resent' ORDER BY idx
                """, logger: TestServices.logger).decode(ByteBuffer.self) {
                let e = try CustodyEvent.decode(entry: Array(entry.readableBytesView))
                #expect(e.subject.requestId == silent && e.details["messageId"] == first.messageId.lowercased)
                attempts.append(e.details["attempt"] ?? "")
            }
            #expect(attempts == ["1", "2", "3"])
        }
    }

    /// A preservation order acknowledged and never confirmed (its `preserved` lost with a
    /// Kafka that lost its state) is sent again, so that the connector confirms it again; once
    /// confirmed it never is.
    @Test func aPreservationOrderAcknowledgedButNotConfirmedIsSentAgain() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            let (r, _) = try await PreservationTests.order(store, ingest)
            var settings = ResendSettings()
            settings.after = .seconds(60)
            let watcher = LegalClockWatcher(store: store, resend: settings, logger: TestServices.logger)
            let t0 = Date()
            try await Self.relayed(client, r.id, at: t0)
            _ = try await client.custodyTransaction(logger: TestServices.logger) { conn, custody in
                try await BrokerStore.advance(conn, r.id, .acknowledge, actor: .init(type: .provider, id: "prov-a"), custody: custody,
                                              logger: TestServices.logger)
            }
            // The wait counts from the acknowledgement's own time, which a loaded machine may
            // record well after t0.
            var acked = t0
            for try await at in try await client.query("""
                SELECT max(at) FROM request_events WHERE request_id = \(r.id) AND state = 'acknowledged'
                """, logger: TestServices.logger).decode(Date.self) { acked = at }
            try await watcher.fire(at: acked.addingTimeInterval(59))
            #expect(try await Self.row(client, r.id).resends == 0)
            try await watcher.fire(at: acked.addingTimeInterval(61))
            #expect(try await Self.row(client, r.id).resends == 1)
            // Confirmed: never again.
            let until = try #require(try await store.request(r.id, viewer: nil).clocks.first { $0.clock == "preservation" }).deadline
            let confirmed = try ingest.message(.preserved, r.id, PreservationTermBody(requestHash: r.hash, until: until))
            #expect(try await store.ingest(confirmed, providerKeys: try await store.providers()) == .applied(.preserved))
            try await client.query("UPDATE outbox SET sent_at = \(t0) WHERE request_id = \(r.id)", logger: TestServices.logger)
            try await watcher.fire(at: t0.addingTimeInterval(100_000))
            let after = try await Self.row(client, r.id)
            #expect(after.sent && after.resends == 1)
        }
    }

    @Test func anEmergencyIsSentAgainSooner() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { store, client, _ in
            let p = try await EmergencyTests.people(store, pki)
            let id = try await EmergencyTests.submitted(store, by: p.inv)
            try await store.approve(id, by: p.duty)
            let watcher = LegalClockWatcher(store: store, logger: TestServices.logger)  // defaults: 300 s, and 30 s for an emergency
            let t0 = Date()
            try await Self.relayed(client, id, at: t0)
            try await watcher.fire(at: t0.addingTimeInterval(29))
            #expect(try await Self.row(client, id).sent)
            try await watcher.fire(at: t0.addingTimeInterval(31))
            #expect(try await Self.row(client, id).resends == 1)
        }
    }
}
