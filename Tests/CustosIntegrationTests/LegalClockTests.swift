@testable import CustosBroker
import CustosCustody
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Synchronization
import Testing

/// Legal clocks in PostgreSQL: late, escalated and expired, each recorded once as a custody
/// event, stopped by the state they wait for, fired by a watcher with an injectable clock.
@Suite("Legal clocks", .timeLimit(.minutes(2)))
struct LegalClockTests {
    static func clocks() -> LegalClock.Settings {
        var s = LegalClock.Settings()
        s.acknowledgement = .seconds(60)
        s.delivery = .seconds(120)
        s.escalateAfter = .seconds(30)
        s.expireAfter = .seconds(60)
        return s
    }

    static func approved(_ store: BrokerStore, _ pki: TestPKI, _ n: Int) async throws -> UUID {
        if n == 0 { try await store.registerProvider(id: "prov-a", certificate: pki.signer, caCertificate: pki.providerCA, by: .testAdmin) }
        let (inv, _) = try await store.addUser(name: "inv\(n)", role: .investigator, by: .testAdmin)
        let (appr, _) = try await store.addUser(name: "appr\(n)", role: .approver, by: .testAdmin)
        let c = try await store.createCase(title: "c", by: inv)
        let id = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: inv)
        try await store.submit(id, by: inv)
        try await store.approve(id, by: appr)
        return id
    }

    static func clockEvents(_ client: PostgresClient, _ id: UUID) async throws -> [String] {
        var out: [String] = []
        for try await (kind, entry) in try await client.query(
            "SELECT kind, entry FROM custody_events WHERE request_id = \(id) AND (kind LIKE 'clock.%' OR kind = 'request.expired') ORDER BY idx",
            logger: TestServices.logger
        ).decode((String, ByteBuffer).self) {
            let e = try CustodyEvent.decode(entry: Array(entry.readableBytesView))
            out.append(kind + (e.details["clock"].map { ":" + $0 } ?? ""))
        }
        return out
    }

    @Test func clocksRunLateEscalateAndExpireOnceEach() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { _, client, _ in
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: Self.clocks(), logger: TestServices.logger)
            let silent = try await Self.approved(store, pki, 0)
            let acknowledged = try await Self.approved(store, pki, 1)
            // The moment `silent` was approved, as its clock says (on a loaded machine, seconds
            // may pass between taking the time here and the approval).
            let start = try await client.query(
                "SELECT deadline FROM request_clocks WHERE request_id = \(silent) AND clock = 'acknowledgement'", logger: TestServices.logger
            ).collect()[0].decode(Date.self).addingTimeInterval(-60)
            _ = try await client.custodyTransaction(logger: TestServices.logger) { conn, custody in
                try await BrokerStore.advance(conn, acknowledged, .acknowledge, actor: .init(type: .provider, id: "prov-a"), custody: custody, logger: TestServices.logger)
            }
            let watcher = LegalClockWatcher(store: store, logger: TestServices.logger)
            #expect(try await watcher.fire(at: start.addingTimeInterval(55)) == 0)
            try await watcher.fire(at: start.addingTimeInterval(65))
            #expect(try await Self.clockEvents(client, silent) == ["clock.late:acknowledgement"])
            #expect(try await Self.clockEvents(client, acknowledged).isEmpty)  // its acknowledgement stopped that clock
            try await watcher.fire(at: start.addingTimeInterval(95))
            try await watcher.fire(at: start.addingTimeInterval(96))  // nothing fires twice
            #expect(try await Self.clockEvents(client, silent) == ["clock.late:acknowledgement", "clock.escalated:acknowledgement"])
            try await watcher.fire(at: start.addingTimeInterval(200))
            #expect(try await Self.clockEvents(client, silent) == ["clock.late:acknowledgement", "clock.escalated:acknowledgement",
                                                                  "clock.late:delivery", "clock.escalated:delivery", "clock.expired:delivery", "request.expired"])
            #expect(try await Self.clockEvents(client, acknowledged) == ["clock.late:delivery", "clock.escalated:delivery", "clock.expired:delivery", "request.expired"])
            #expect(try await store.request(silent, viewer: nil).state == .expired)
            #expect(try await watcher.fire(at: start.addingTimeInterval(10_000)) == 0)  // expired clocks are stopped
        }
    }

    @Test func theWatcherFiresInTheFirstPassAfterTheDeadline() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { _, client, _ in
            var settings = Self.clocks()
            settings.acknowledgement = .seconds(2)
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: settings, logger: TestServices.logger)
            let id = try await Self.approved(store, pki, 0)
            var deadline = Date()
            for try await d in try await client.query("SELECT deadline FROM request_clocks WHERE request_id = \(id) AND clock = 'acknowledgement'",
                                                      logger: TestServices.logger).decode(Date.self) { deadline = d }
            // Each pass asks the clock once, at its start: the times it asked are the passes.
            final class Passes: Sendable { let starts = Mutex<[Date]>([]) }
            let passes = Passes()
            let watcher = Task {
                try await LegalClockWatcher(store: store, interval: .seconds(1), logger: TestServices.logger,
                                            now: { let t = Date(); passes.starts.withLock { $0.append(t) }; return t }).run()
            }
            defer { watcher.cancel() }
            var firedAt: Date?
            while firedAt == nil && Date() < deadline.addingTimeInterval(30) {
                // When the watcher recorded it: the custody event's own time.
                for try await (entry) in try await client.query(
                    "SELECT entry FROM custody_events WHERE request_id = \(id) AND kind = 'clock.late'", logger: TestServices.logger
                ).decode(ByteBuffer.self) {
                    firedAt = Timestamp.parse(try CustodyEvent.decode(entry: Array(entry.readableBytesView)).at)
                }
                try await Task.sleep(for: .milliseconds(50))
            }
            let fired = try #require(firedAt, "the acknowledgement clock did not fire")
            // The pass that recorded it is the first one that started at or after the deadline
            // (how long after depends on the interval and on how long the pass before took, which
            // on two cores shared with the rest of the suite can be seconds).
            let starts = passes.starts.withLock { $0 }
            let first = try #require(starts.firstIndex { $0 >= deadline.addingTimeInterval(-0.001) }, "no pass after the deadline")
            // (The event's time has millisecond precision.)
            #expect(fired >= starts[first].addingTimeInterval(-0.001), "recorded before the first pass after the deadline began")
            if first + 1 < starts.count {
                #expect(fired < starts[first + 1], "not recorded in the first pass after the deadline")
            }
            // Until then, passes that found nothing to do waited the interval between them.
            let gaps = (1..<(first + 1)).map { starts[$0].timeIntervalSince(starts[$0 - 1]) }
            #expect(gaps.allSatisfy { $0 >= 0.99 }, "passes closer than the interval: \(gaps)")
        }
    }
}
