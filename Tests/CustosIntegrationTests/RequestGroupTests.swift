@testable import CustosBroker
import CustosEvidence
import CustosKafka
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// A request to several providers against a real PostgreSQL: one part per provider, decided
/// on as one, then each tracked on its own (state, clocks, packages, message to its provider).
@Suite("Requests to several providers", .timeLimit(.minutes(2)))
struct RequestGroupTests {
    static func violations(_ error: any Error) -> [String] { (error as? BrokerError)?.violations.map(\.field) ?? [] }

    @Test func eachProvidersPartIsDecidedAsOneAndTrackedOnItsOwn() async throws {
        let ingest = try IngestTests()
        let pkiB = try TestPKI(signerName: "prov-b")
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            try await store.registerProvider(id: "prov-a", certificate: ingest.pki.signer, caCertificate: ingest.pki.providerCA, by: .testAdmin)
            try await store.registerProvider(id: "prov-b", certificate: pkiB.signer, caCertificate: pkiB.providerCA, by: .testAdmin)
            let inv = try await store.addUser(name: "inv", role: .investigator, by: .testAdmin).0
            let appr = try await store.addUser(name: "appr", role: .approver, by: .testAdmin).0
            let c = try await store.createCase(title: "c", by: inv)
            var spec = BrokerAPITests.spec(caseId: c.id)

            // Field by field: repeats, a list not led by providerId, an unknown provider.
            spec.providerIds = ["prov-a", "prov-a"]
            await #expect { try await store.draft(spec, by: inv) } throws: { Self.violations($0) == ["providerIds"] }
            spec.providerIds = ["prov-b", "prov-a"]
            await #expect { try await store.draft(spec, by: inv) } throws: { Self.violations($0) == ["providerIds"] }
            spec.providerIds = ["prov-a", "prov-z"]
            await #expect { try await store.draft(spec, by: inv) } throws: { Self.violations($0) == ["providerIds"] }

            spec.providerIds = ["prov-a", "prov-b"]
            let first = try await store.draft(spec, by: inv)
            let parts = try #require(try await store.request(first, viewer: inv).parts)
            #expect(parts.map(\.providerId) == ["prov-a", "prov-b"] && parts[0].id == first)
            let second = parts[1].id
            // Each part is a request to one provider.
            let secondView = try await store.request(second, viewer: inv)
            #expect(secondView.spec.providerId == "prov-b" && secondView.spec.providerIds == nil)

            // Submitted and approved as one (from either part), four eyes included.
            try await store.submit(second, by: inv)
            #expect(try await store.request(first, viewer: inv).parts?.map(\.state) == [.submitted, .submitted])
            await #expect { try await store.approve(first, by: inv) } throws: { ($0 as? BrokerError)?.code == .forbidden }
            try await store.approve(first, by: appr)
            // Each its own request as approved, hash, message on its provider's topic, and clocks.
            let rows = try await client.query("SELECT request_id, topic FROM outbox WHERE message_type = 'request' ORDER BY topic").collect()
                .map { try $0.decode((UUID, String).self) }
            #expect(rows.map(\.1) == ["custos.to.prov-a", "custos.to.prov-b"])
            #expect(Set(rows.map(\.0)) == [first, second])
            let a = try await store.request(first, viewer: nil), b = try await store.request(second, viewer: nil)
            #expect(a.requestHash != nil && b.requestHash != nil && a.requestHash != b.requestHash)
            #expect(a.clocks.count == 2 && b.clocks.count == 2)

            // Then each goes its own way: prov-a delivers, prov-b refuses.
            let keys = try await store.providers()
            let package = try ingest.package(for: IngestTests.Approved(id: first, hash: try #require(a.requestHash)))
            let (m, chunks) = try ingest.messages(package, IngestTests.Approved(id: first, hash: a.requestHash!))
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let refusal = try SignedEnvelope.encode(Envelope(type: .refusal, id: UUID(), requestId: second, sender: "prov-b",
                                                             body: RefusalBody(reason: .notOurCustomer, detail: "")), signer: try SigningKey(pem: pkiB.signerKey))
            let outcome = try await store.ingest(KafkaMessage(topic: "custos.from.prov-b", partition: 0, offset: 1, key: [], value: refusal), providerKeys: keys)
            #expect(outcome == .applied(.refusal))
            // prov-a may not speak for prov-b's part.
            let forged = try ingest.message(.ack, second, AckBody(requestHash: b.requestHash!))
            guard case .deadLettered = try await store.ingest(forged, providerKeys: keys) else { Issue.record("prov-a acknowledged prov-b's part"); return }
            let states = try await store.request(first, viewer: inv).parts?.map(\.state)
            #expect(states == [.verified, .refused])
            #expect(try await store.request(second, viewer: nil).packages.isEmpty)
        }
    }
}
