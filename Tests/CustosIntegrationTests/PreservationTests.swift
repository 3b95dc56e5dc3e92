@testable import CustosBroker
import CustosEvidence
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// Preservation orders against a real PostgreSQL: 60 days from approval, extended once by 30,
/// released early or ended by their clock, each change told to the provider; nothing delivered.
@Suite("Preservation orders", .timeLimit(.minutes(2)))
struct PreservationTests {
    static func status(_ error: any Error) -> BrokerError.Code? { (error as? BrokerError)?.code }

    static func order(_ store: BrokerStore, _ ingest: IngestTests, kind: RequestKind = .preservation) async throws -> (IngestTests.Approved, AuthenticatedUser) {
        try await store.registerProvider(id: "prov-a", certificate: ingest.pki.signer, caCertificate: ingest.pki.providerCA, by: .testAdmin)
        let inv = try await store.addUser(name: "inv", role: .investigator, by: .testAdmin).0
        let appr = try await store.addUser(name: "appr", role: .approver, by: .testAdmin).0
        let c = try await store.createCase(title: "c", by: inv)
        var spec = BrokerAPITests.spec(caseId: c.id)
        spec.kind = kind
        let id = try await store.draft(spec, by: inv)
        try await store.submit(id, by: inv)
        try await store.approve(id, by: appr)
        return (IngestTests.Approved(id: id, hash: try #require(try await store.request(id, viewer: nil).requestHash)), inv)
    }

    static func sent<Body: Codable & Sendable>(_ client: PostgresClient, _ store: BrokerStore, _ id: UUID, _ type: MessageType, _ body: Body.Type) async throws -> [Body] {
        try await client.query("SELECT payload FROM outbox WHERE request_id = \(id) AND message_type = \(type.rawValue) ORDER BY id").collect().map { row in
            let payload = try row.decode(ByteBuffer.self)
            return try SignedEnvelope.body(Body.self, from: try SignedEnvelope.open(Array(payload.readableBytesView)) { _ in store.signer.publicKey }.json).body
        }
    }

    @Test func anOrderIsConfirmedExtendedOnceAndReleasedAndTheProviderHearsOfEach() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            let (r, inv) = try await Self.order(store, ingest)
            let keys = try await store.providers()
            var view = try await store.request(r.id, viewer: nil)
            #expect(view.clocks.map(\.clock).sorted() == ["acknowledgement", "preservation"])  // no delivery clock
            let clock = try #require(view.clocks.first { $0.clock == "preservation" })
            let until = try #require(Timestamp.parse(clock.deadline))
            #expect(abs(until.timeIntervalSince(try #require(Timestamp.parse(clock.startedAt))) - 60 * 86_400) < 5)
            // The order as sent says what it is and until when.
            let request = try #require(try await Self.sent(client, store, r.id, .request, RequestBody.self).first).request
            #expect(request.kind == .preservation && request.preserveUntil.flatMap(Timestamp.parse).map { abs($0.timeIntervalSince(until)) < 0.01 } == true)

            // Nothing is delivered for it.
            let package = try ingest.package(for: r)
            let (m, _) = try ingest.messages(package, r)
            #expect(try await store.ingest(m, providerKeys: keys) == .deadLettered("a preservation order delivers no data"))
            // The provider confirms; a confirmation bound to another request hash is refused.
            let wrong = try ingest.message(.preserved, r.id, PreservationTermBody(requestHash: String(repeating: "0", count: 64), until: clock.deadline))
            guard case .deadLettered = try await store.ingest(wrong, providerKeys: keys) else { Issue.record("a mismatched confirmation was applied"); return }
            let confirmed = try ingest.message(.preserved, r.id, PreservationTermBody(requestHash: r.hash, until: clock.deadline))
            #expect(try await store.ingest(confirmed, providerKeys: keys) == .applied(.preserved))
            view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .preserved)
            #expect(view.clocks.first { $0.clock == "acknowledgement" }?.stoppedAt != nil)

            // Extended once, by 30 days; the provider is told the new end.
            let approver = try await store.addUser(name: "appr-2", role: .approver, by: .testAdmin).0
            await #expect { try await store.extendPreservation(r.id, by: approver) } throws: { Self.status($0) == .forbidden }
            try await store.extendPreservation(r.id, by: inv)
            await #expect { try await store.extendPreservation(r.id, by: inv) } throws: { Self.status($0) == .conflict }
            view = try await store.request(r.id, viewer: nil)
            let extended = try #require(view.clocks.first { $0.clock == "preservation" }.flatMap { Timestamp.parse($0.deadline) })
            #expect(abs(extended.timeIntervalSince(until) - 30 * 86_400) < 1)
            let extensions = try await Self.sent(client, store, r.id, .preservationExtension, PreservationTermBody.self)
            #expect(extensions.count == 1 && extensions[0].requestHash == r.hash && Timestamp.parse(extensions[0].until) == extended)

            // Released early: it ends, its clocks stop, the provider may let go.
            try await store.releasePreservation(r.id, reason: "the suspect was identified otherwise", by: inv)
            view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .released && view.clocks.allSatisfy { $0.stoppedAt != nil })
            let releases = try await Self.sent(client, store, r.id, .preservationRelease, PreservationReleaseBody.self)
            #expect(releases.count == 1 && releases[0].reason == .released && releases[0].requestHash == r.hash)
            await #expect { try await store.extendPreservation(r.id, by: inv) } throws: { Self.status($0) == .conflict }
            await #expect { try await store.releasePreservation(r.id, reason: nil, by: inv) } throws: { Self.status($0) == .conflict }
            #expect(view.timeline.map(\.state).suffix(3) == ["preserved", "preserved", "released"])
            // The extension's confirmation crossed the release on the wire: applied, changing nothing.
            let late = try ingest.message(.preserved, r.id, PreservationTermBody(requestHash: r.hash, until: Timestamp.format(extended)))
            #expect(try await store.ingest(late, providerKeys: keys) == .applied(.preserved))
            #expect(try await store.request(r.id, viewer: nil).state == .released)
        }
    }

    @Test func anOrderEndsAtItsClockAndOnlyOrdersArePreservedExtendedOrReleased() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            let (r, inv) = try await Self.order(store, ingest)
            let clock = try #require(try await store.request(r.id, viewer: nil).clocks.first { $0.clock == "preservation" })
            let until = try #require(Timestamp.parse(clock.deadline))
            let watcher = LegalClockWatcher(store: store, logger: TestServices.logger)
            try await watcher.fire(at: until.addingTimeInterval(-1))
            #expect(try await store.request(r.id, viewer: nil).state != .expired)
            try await watcher.fire(at: until.addingTimeInterval(0.5))  // within a second of its end
            let view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .expired && view.clocks.allSatisfy { $0.stoppedAt != nil })
            // A first confirmation after the end is no crossing on the wire: refused, and told.
            let keys = try await store.providers()
            let late = try ingest.message(.preserved, r.id, PreservationTermBody(requestHash: r.hash, until: clock.deadline))
            #expect(try await store.ingest(late, providerKeys: keys) == .deadLettered("the preservation order is expired"))
            let releases = try await Self.sent(client, store, r.id, .preservationRelease, PreservationReleaseBody.self)
            #expect(releases.map(\.reason) == [.expired])
            #expect(try await watcher.fire(at: until.addingTimeInterval(10_000)) == 0)  // once

            // A production request is not preserved, extended or released.
            let c = try await store.createCase(title: "c2", by: inv)
            let appr = try await store.addUser(name: "appr-3", role: .approver, by: .testAdmin).0
            let production = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: inv)
            try await store.submit(production, by: inv)
            try await store.approve(production, by: appr)
            await #expect { try await store.extendPreservation(production, by: inv) } throws: { Self.status($0) == .conflict }
            await #expect { try await store.releasePreservation(production, reason: nil, by: inv) } throws: { Self.status($0) == .conflict }
            let hash = try #require(try await store.request(production, viewer: nil).requestHash)
            _ = keys
            let confirmed = try ingest.message(.preserved, production, PreservationTermBody(requestHash: hash, until: Timestamp.now()))
            #expect(try await store.ingest(confirmed, providerKeys: keys) == .deadLettered("only a preservation order is confirmed as preserved"))
            #expect(try await store.request(production, viewer: nil).clocks.map(\.clock).sorted() == ["acknowledgement", "delivery"])
        }
    }
}
