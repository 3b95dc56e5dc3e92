@testable import CustosBroker
import CustosCanonicalJSON
import CustosModel
import CustosTestSupport
import Foundation
import Hummingbird
import Logging
import PostgresNIO
import Synchronization
import Testing

/// Webhooks for legal clocks against a real PostgreSQL and a real HTTP endpoint on loopback:
/// queued with the clock's event, signed, retried, given up, filtered by event.
@Suite("Webhooks", .timeLimit(.minutes(2)))
struct WebhookTests {
    struct Delivery: Sendable {
        var event: String
        var id: String
        var signature: String
        var body: [UInt8]
    }

    /// An HTTP endpoint that records what it receives and answers 500 to the first `failures`.
    final class Receiver: Sendable {
        let deliveries = Mutex<[Delivery]>([])
        let failures: Mutex<Int>
        init(failures: Int) { self.failures = Mutex(failures) }
    }

    static let secret = Array("a shared secret of the duty desk".utf8)

    static func withReceiver(failures: Int = 0, _ body: @Sendable (String, Receiver) async throws -> Void) async throws {
        let receiver = Receiver(failures: failures)
        let router = Router()
        router.post("hook") { request, _ -> Response in
            let bytes = try await request.body.collect(upTo: 1 << 20)
            func header(_ name: String) -> String { request.headers.first { $0.name.canonicalName == name.lowercased() }?.value ?? "" }
            let delivery = Delivery(event: header("Custos-Event"), id: header("Custos-Delivery"), signature: header("Custos-Signature"),
                                    body: Array(bytes.readableBytesView))
            receiver.deliveries.withLock { $0.append(delivery) }
            let fail = receiver.failures.withLock { n -> Bool in n -= 1; return n >= 0 }
            return Response(status: fail ? .internalServerError : .noContent)
        }
        let address = Mutex<Int?>(nil)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { channel in address.withLock { $0 = channel.localAddress?.port } }, logger: TestServices.logger)
        let server = Task { try await app.runService() }
        defer { server.cancel() }
        var port: Int?
        while port == nil { try await Task.sleep(for: .milliseconds(10)); port = address.withLock { $0 } }
        try await body("http://127.0.0.1:\(port!)/hook", receiver)
    }

    static func settings(_ urls: [String], events: Set<WebhookSettings.Event> = Set(WebhookSettings.Event.allCases)) -> WebhookSettings {
        var s = WebhookSettings(urls: urls, secret: secret, events: events)
        s.timeout = .seconds(2)
        s.maxAttempts = 3
        return s
    }

    /// When the request's clocks started, as the database has it (a slow test machine must not
    /// move the times the watcher is fired at).
    static func approvedAt(_ store: BrokerStore, _ id: UUID) async throws -> Date {
        let clock = try #require(try await store.request(id, viewer: nil).clocks.first { $0.clock == "acknowledgement" })
        return try #require(Timestamp.parse(clock.startedAt))
    }

    @Test func aLateClockIsSignedAndDeliveredAndRetriedUntilTheEndpointTakesIt() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await Self.withReceiver(failures: 1) { url, receiver in
            try await TestServices.withStore { _, client, _ in
                let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: LegalClockTests.clocks(), logger: TestServices.logger)
                let id = try await LegalClockTests.approved(store, pki, 0)
                let start = try await Self.approvedAt(store, id)
                let settings = Self.settings([url])
                let watcher = LegalClockWatcher(store: store, webhooks: settings, logger: TestServices.logger)
                let notifier = WebhookNotifier(client: client, settings: settings, wakeup: Wakeup(), logger: TestServices.logger)
                try await watcher.fire(at: start.addingTimeInterval(65))  // the acknowledgement clock is late

                // First attempt: the endpoint fails; the notification waits for its retry.
                let t = Date()
                #expect(try await notifier.deliverDue(at: t) == 1)
                let (attempts, error, next) = try #require(try await client.query(
                    "SELECT attempts, last_error, next_attempt_at FROM notifications WHERE request_id = \(id)").collect().first?.decode((Int, String?, Date).self))
                #expect(attempts == 1 && error == "HTTP 500")
                #expect(abs(next.timeIntervalSince(t) - 5) < 1)
                #expect(try await notifier.deliverDue(at: t.addingTimeInterval(1)) == 0)  // not due yet
                #expect(try await notifier.deliverDue(at: t.addingTimeInterval(6)) == 1)
                #expect(try await client.query("SELECT count(*) FROM notifications WHERE delivered_at IS NOT NULL").collect()[0].decode(Int.self) == 1)

                let got = receiver.deliveries.withLock { $0 }
                #expect(got.count == 2 && got[0].id == got[1].id && got[0].event == "clock.late")  // a retry is the same delivery
                // The signature is HMAC-SHA256 over "t.body" with the shared secret.
                let parts = Dictionary(uniqueKeysWithValues: got[1].signature.split(separator: ",").map { p in
                    (String(p.split(separator: "=")[0]), String(p.split(separator: "=")[1]))
                })
                let stamp = try #require(parts["t"].flatMap { Int($0) })
                #expect(WebhookSettings.signature(secret: Self.secret, timestamp: stamp, body: got[1].body) == got[1].signature)
                #expect(WebhookSettings.signature(secret: Array("another secret, not theirs".utf8), timestamp: stamp, body: got[1].body) != got[1].signature)
                // The body names the request and the clock, never a target.
                let json = try JSONParser.parse(got[1].body)
                #expect(json["event"] == .string("clock.late") && json["requestId"] == .string(id.lowercased) && json["clock"] == .string("acknowledgement"))
                #expect(json["agency"] == .string("default") && json["priority"] == .string("normal"))
                #expect(!String(decoding: got[1].body, as: UTF8.self).contains("+849"))
            }
        }
    }

    @Test func workQueueEventsReachTheWebhooksThatChoseThem() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await Self.withReceiver { url, receiver in
            try await TestServices.withStore { _, client, _ in
                let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: LegalClockTests.clocks(), logger: TestServices.logger)
                // One endpoint takes submissions; another only clock events.
                var settings = Self.settings([url], events: [.requestSubmitted, .emergencySubmitted])
                try await settings.record(on: client, logger: TestServices.logger)
                let id = try await LegalClockTests.approved(store, pki, 0)  // drafted, submitted, approved
                let queued = try await client.query("SELECT event, channel, request_id FROM notifications").collect()
                    .map { try $0.decode((String, String, UUID).self) }
                #expect(queued.count == 1 && queued[0] == ("request.submitted", "webhook", id))
                let notifier = WebhookNotifier(client: client, settings: settings, wakeup: Wakeup(), logger: TestServices.logger)
                #expect(try await notifier.deliverDue(at: Date()) == 1)
                let got = try #require(receiver.deliveries.withLock { $0 }.first)
                #expect(got.event == "request.submitted")
                let json = try JSONParser.parse(got.body)
                #expect(json["event"] == .string("request.submitted") && json["requestId"] == .string(id.lowercased) && json["state"] != nil)
                #expect(json["id"] == .string(got.id) && json["agency"] == .string("default") && json["priority"] == .string("normal"))
                #expect(WebhookSettings.signature(secret: Self.secret, timestamp: Int(got.signature.split(separator: ",")[0].dropFirst(2))!, body: got.body)
                    == got.signature)
                #expect(!String(decoding: got.body, as: UTF8.self).contains("+849"))
                // Recorded again with other choices, the endpoints table follows the configuration.
                settings.events = [.clockLate]
                try await settings.record(on: client, logger: TestServices.logger)
                _ = try await LegalClockTests.approved(store, pki, 1)
                #expect(try await client.query("SELECT count(*) FROM notifications").collect()[0].decode(Int.self) == 1)
            }
        }
    }

    @Test func onlySubscribedEventsAreSentAndAnUnreachableEndpointIsGivenUp() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { _, client, _ in
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: LegalClockTests.clocks(), logger: TestServices.logger)
            let id = try await LegalClockTests.approved(store, pki, 0)
            let start = try await Self.approvedAt(store, id)
            // Nothing listens on port 9 of loopback here (discard is not run).
            let settings = Self.settings(["http://127.0.0.1:9/hook"], events: [.clockEscalated])
            let watcher = LegalClockWatcher(store: store, webhooks: settings, logger: TestServices.logger)
            try await watcher.fire(at: start.addingTimeInterval(65))  // late only: not subscribed
            #expect(try await client.query("SELECT count(*) FROM notifications").collect()[0].decode(Int.self) == 0)
            try await watcher.fire(at: start.addingTimeInterval(95))  // escalated
            let events = try await client.query("SELECT event FROM notifications WHERE request_id = \(id)").collect().map { try $0.decode(String.self) }
            #expect(events == ["clock.escalated"])

            let notifier = WebhookNotifier(client: client, settings: settings, wakeup: Wakeup(), logger: TestServices.logger)
            var t = Date()
            for _ in 0..<settings.maxAttempts {
                #expect(try await notifier.deliverDue(at: t) == 1)
                t = t.addingTimeInterval(3700)
            }
            #expect(try await notifier.deliverDue(at: t) == 0)
            let (attempts, givenUp, delivered) = try #require(try await client.query(
                "SELECT attempts, given_up_at IS NOT NULL, delivered_at IS NOT NULL FROM notifications").collect().first?.decode((Int, Bool, Bool).self))
            #expect(attempts == 3 && givenUp && !delivered)
        }
    }
}
