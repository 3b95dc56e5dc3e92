@testable import CustosBroker
import CustosCustody
import CustosEvidence
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// The emergency fast track against a real PostgreSQL: who may approve and review, the
/// urgent topic, the short clocks, and what a revoked or lapsed emergency does to packages.
@Suite("Emergency fast track", .timeLimit(.minutes(2)))
struct EmergencyTests {
    static func emergencySpec(caseId: UUID) -> RequestSpec {
        var s = BrokerAPITests.spec(caseId: caseId)
        s.priority = .emergency
        s.emergency = EmergencyGrounds(ground: .threatToLife, statement: "Kidnapping in progress; the victim's phone was last seen an hour ago.")
        return s
    }

    static func settings() -> LegalClock.Settings {
        var s = LegalClock.Settings()
        s.emergencyAcknowledgement = .seconds(1800)
        s.emergencyDelivery = .seconds(8 * 3600)
        s.review = .seconds(48 * 3600)
        return s
    }

    struct People {
        var inv: AuthenticatedUser
        var approver: AuthenticatedUser
        var duty: AuthenticatedUser
        var reviewer: AuthenticatedUser
        var dutyInvestigator: AuthenticatedUser
    }

    static func people(_ store: BrokerStore, _ pki: TestPKI) async throws -> People {
        try await store.registerProvider(id: "prov-a", certificate: pki.signer, caCertificate: pki.providerCA, by: .testAdmin)
        var dutyInvestigator = try await store.addUser(name: "duty-inv", role: .investigator, by: .testAdmin).0
        dutyInvestigator.roles.insert(.dutyApprover)
        return People(
            inv: try await store.addUser(name: "inv", role: .investigator, by: .testAdmin).0,
            approver: try await store.addUser(name: "appr", role: .approver, by: .testAdmin).0,
            duty: try await store.addUser(name: "duty", role: .dutyApprover, by: .testAdmin).0,
            reviewer: try await store.addUser(name: "rev", role: .reviewer, by: .testAdmin).0,
            dutyInvestigator: dutyInvestigator)
    }

    static func submitted(_ store: BrokerStore, by inv: AuthenticatedUser, emergency: Bool = true) async throws -> UUID {
        let c = try await store.createCase(title: "c", by: inv)
        let id = try await store.draft(emergency ? emergencySpec(caseId: c.id) : BrokerAPITests.spec(caseId: c.id), by: inv)
        try await store.submit(id, by: inv)
        return id
    }

    static func status(_ error: any Error) -> BrokerError.Code? { (error as? BrokerError)?.code }

    @Test func onlyADutyApproverApprovesAnEmergencyAndItGoesOutOnTheUrgentTopicWithShortClocks() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { _, client, _ in
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: Self.settings(), logger: TestServices.logger)
            let p = try await Self.people(store, pki)
            let id = try await Self.submitted(store, by: p.inv)
            // An approver is not on the fast track; the duty approver is.
            await #expect { try await store.approve(id, by: p.approver) } throws: { Self.status($0) == .forbidden }
            let normal = try await Self.submitted(store, by: p.inv, emergency: false)
            await #expect { try await store.approve(normal, by: p.duty) } throws: { Self.status($0) == .forbidden }
            // The submitter never approves, even with the duty role.
            let own = try await Self.submitted(store, by: p.dutyInvestigator)
            await #expect { try await store.approve(own, by: p.dutyInvestigator) } throws: { Self.status($0) == .forbidden }

            let before = Date()
            try await store.approve(id, by: p.duty)
            let outbox = try await client.query("SELECT topic, urgent FROM outbox WHERE request_id = \(id)").collect()
            #expect(outbox.count == 1)
            #expect(try outbox[0].decode((String, Bool).self) == ("custos.to.prov-a.urgent", true))
            try await store.approve(normal, by: p.approver)
            let normalRow = try await client.query("SELECT topic, urgent FROM outbox WHERE request_id = \(normal)").collect()
            #expect(try normalRow[0].decode((String, Bool).self) == ("custos.to.prov-a", false))

            let view = try await store.request(id, viewer: p.inv)
            #expect(view.review?.state == .pending)
            func deadline(_ clock: String) throws -> TimeInterval {
                let c = try #require(view.clocks.first { $0.clock == clock })
                return try #require(Timestamp.parse(c.deadline)).timeIntervalSince(before)
            }
            #expect(abs(try deadline("acknowledgement") - 1800) < 5)
            #expect(abs(try deadline("delivery") - 8 * 3600) < 5)
            #expect(abs(try deadline("review") - 48 * 3600) < 5)
            // The request as sent carries its grounds.
            let approved = try #require(try await client.query("SELECT approved_request FROM requests WHERE id = \(id)").collect().first?.decode(String.self))
            let decoded = try JSONDecoder().decode(ApprovedRequest.self, from: Data(approved.utf8))
            #expect(decoded.priority == .emergency && decoded.emergency?.ground == .threatToLife)
            // A normal request has no review.
            #expect(try await store.request(normal, viewer: p.inv).review == nil)
        }
    }

    @Test func reviewersAreSomebodyElseAndRevokingNeedsAReason() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { _, client, _ in
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: Self.settings(), logger: TestServices.logger)
            let p = try await Self.people(store, pki)
            let id = try await Self.submitted(store, by: p.inv)
            await #expect { try await store.review(id, decision: .confirm, reason: nil, by: p.reviewer) } throws: { Self.status($0) == .conflict }
            try await store.approve(id, by: p.duty)
            await #expect { try await store.review(id, decision: .confirm, reason: nil, by: p.approver) } throws: { Self.status($0) == .forbidden }
            var dutyReviewer = p.duty
            dutyReviewer.roles.insert(.reviewer)
            await #expect { try await store.review(id, decision: .confirm, reason: nil, by: dutyReviewer) } throws: { Self.status($0) == .forbidden }
            await #expect { try await store.review(id, decision: .revoke, reason: "  ", by: p.reviewer) } throws: { Self.status($0) == .invalid }
            try await store.review(id, decision: .confirm, reason: nil, by: p.reviewer)
            let view = try await store.request(id, viewer: p.inv)
            #expect(view.review?.state == .confirmed && view.review?.reviewedBy == "rev")
            #expect(view.clocks.first { $0.clock == "review" }?.stoppedAt != nil)
            #expect(view.timeline.last?.state == "emergency-confirmed")
            await #expect { try await store.review(id, decision: .revoke, reason: "second thoughts", by: p.reviewer) } throws: { Self.status($0) == .conflict }
            let normal = try await Self.submitted(store, by: p.inv, emergency: false)
            try await store.approve(normal, by: p.approver)
            await #expect { try await store.review(normal, decision: .confirm, reason: nil, by: p.reviewer) } throws: { Self.status($0) == .conflict }
            let kinds = try await client.query("SELECT kind FROM custody_events WHERE request_id = \(id) ORDER BY idx").collect().map { try $0.decode(String.self) }
            #expect(kinds.contains("request.emergency-confirmed"))
        }
    }

    @Test func aRevokedEmergencySealsItsPackagesForGoodAndTellsTheProvider() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { base, client, _ in
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: ingest.pki.tsaCA, clocks: Self.settings(), chunks: base.chunks,
                                    logger: TestServices.logger)
            let p = try await Self.people(store, ingest.pki)
            let id = try await Self.submitted(store, by: p.inv)
            try await store.approve(id, by: p.duty)
            let r = IngestTests.Approved(id: id, hash: try #require(try await store.request(id, viewer: nil).requestHash))
            let keys = try await store.providers()
            // One package delivered before the review...
            let first = try ingest.package(for: r)
            let (m, chunks) = try ingest.messages(first, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            #expect(try await store.package(first.manifest.packageId, viewer: nil).state == .verified)

            try await store.review(id, decision: .revoke, reason: "no threat to life after all", by: p.reviewer)
            let sealed = try await store.package(first.manifest.packageId, viewer: p.inv)
            #expect(sealed.sealed && sealed.sealReason == "the emergency was revoked by a reviewer")
            // It cannot be unsealed, not even by an approver.
            await #expect { try await store.setSealed(false, package: first.manifest.packageId, reason: "please", by: p.approver) } throws: {
                Self.status($0) == .forbidden
            }
            // The provider is told, on the urgent topic.
            let told = try await client.query("SELECT topic, urgent, payload FROM outbox WHERE request_id = \(id) AND message_type = 'revocation'").collect()
            #expect(told.count == 1)
            let (topic, urgent, payload) = try told[0].decode((String, Bool, ByteBuffer).self)
            #expect(topic == "custos.to.prov-a.urgent" && urgent)
            let body = try SignedEnvelope.body(RevocationBody.self, from: try SignedEnvelope.open(Array(payload.readableBytesView)) { _ in store.signer.publicKey }.json).body
            #expect(body.reason == .revoked && body.requestHash == r.hash)
            // Already delivered: the request keeps its state; its packages are what is sealed.
            #expect(try await store.request(id, viewer: nil).state == .verified)

            // ...and one that arrives afterwards is sealed on arrival.
            let late = try ingest.package(for: r)
            let (m2, chunks2) = try ingest.messages(late, r)
            for msg in chunks2 + [m2] { _ = try await store.ingest(msg, providerKeys: keys) }
            let lateView = try await store.package(late.manifest.packageId, viewer: p.inv)
            #expect(lateView.sealed && lateView.sealReason == "the emergency was revoked by a reviewer")
        }
    }

    @Test func anEmergencyNobodyConfirmsLapsesAtItsReviewDeadline() async throws {
        let pki = try TestPKI(signerName: "prov-a")
        try await TestServices.withStore { _, client, _ in
            var settings = Self.settings()
            settings.review = .seconds(600)
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", clocks: settings, logger: TestServices.logger)
            let p = try await Self.people(store, pki)
            let id = try await Self.submitted(store, by: p.inv)
            let start = Date()
            try await store.approve(id, by: p.duty)
            let watcher = LegalClockWatcher(store: store, logger: TestServices.logger)
            try await watcher.fire(at: start.addingTimeInterval(590))
            #expect(try await store.request(id, viewer: nil).review?.state == .pending)
            try await watcher.fire(at: start.addingTimeInterval(601))
            let view = try await store.request(id, viewer: nil)
            #expect(view.review?.state == .lapsed)
            // Not yet acknowledged: the request ends, and its clocks stop.
            #expect(view.state == .revoked)
            #expect(view.clocks.allSatisfy { $0.stoppedAt != nil })
            let revocations = try await client.query("SELECT count(*) FROM outbox WHERE request_id = \(id) AND message_type = 'revocation'").collect()[0].decode(Int.self)
            #expect(revocations == 1)
            #expect(try await watcher.fire(at: start.addingTimeInterval(10_000)) == 0)  // once
            // A reviewer is too late now.
            await #expect { try await store.review(id, decision: .confirm, reason: nil, by: p.reviewer) } throws: { Self.status($0) == .conflict }
            let kinds = try await client.query("SELECT kind FROM custody_events WHERE request_id = \(id) ORDER BY idx").collect().map { try $0.decode(String.self) }
            #expect(kinds.suffix(3) == ["clock.expired", "request.emergency-lapsed", "request.revoked"])
        }
    }
}
