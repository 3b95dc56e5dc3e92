@testable import CustosBroker
import CustosCustody
import CustosModel
import CustosTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresNIO
import Testing

/// Nobody sees another agency's cases: every route the server registers is called by people
/// of another agency with the first agency's ids, and none of them answers with its data.
@Suite("Agency isolation", .timeLimit(.minutes(2)))
struct AgencyIsolationTests {
    @Test func everyRouteRefusesAnotherAgencysIds() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            // Agency "default": a request, approved, delivered and verified.
            let r = try await ingest.approvedRequest(store)
            let keys = try await store.providers()
            let p = try ingest.package(for: r)
            let (m, chunks) = try ingest.messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let packageId = p.manifest.packageId
            #expect(try await store.package(packageId, viewer: nil).state == .verified)
            let caseId = try await store.request(r.id, viewer: nil).spec.caseId
            let signer = try CheckpointSigner(origin: "tests.custos/custody", certificate: ingest.pki.custodyCertificate, key: ingest.pki.custodyKey,
                                          timeStamp: CheckpointSigner.stamping(with: ingest.pki.tsa))
            let checkpoint = try #require(try await CustodyIntegrator(client: client, signer: signer, logger: TestServices.logger).integrateOnce()).checkpoint
            let eventIndex = try await client.query("SELECT min(idx) FROM custody_events WHERE request_id = \(r.id)", logger: TestServices.logger)
                .decode(Int64.self).first { _ in true }!

            // Agency "other": an investigator, an approver, an admin and a reviewer of their own.
            try await store.addAgency(id: "other", name: "Another agency", by: .testAdmin)
            let outsiders = [
                try await store.addUser(name: "inv-b", role: .investigator, agency: "other", by: .testAdmin).token,
                try await store.addUser(name: "appr-b", role: .approver, agency: "other", by: .testAdmin).token,
                try await store.addUser(name: "admin-b", role: .admin, agency: "other", by: .testAdmin).token,
                try await store.addUser(name: "rev-b", role: .reviewer, agency: "other", by: .testAdmin).token,
            ]
            let insider = try await store.addUser(name: "inv-a", role: .investigator, by: .testAdmin).token

            let feed = LiveFeed(client: client, logger: TestServices.logger)
            let router = buildRouter(store: store, maxBodyBytes: 64 * 1024, timeStampAuthority: ingest.pki.tsa, liveFeed: feed, logger: TestServices.logger)
            let routes = router.routes.map { ($0.method, $0.path.description) }
            let app = Application(router: router)
            try await app.test(.router) { http in
                var covered = 0
                for (method, template) in routes {
                    let path = template
                        .replacingOccurrences(of: "{id}", with: template.hasPrefix("/v1/packages") ? packageId.lowercased
                                                                : template.hasPrefix("/v1/cases") ? caseId.lowercased : r.id.lowercased)
                        .replacingOccurrences(of: "{size}", with: "\(checkpoint.size)")
                        .replacingOccurrences(of: "{index}", with: "\(eventIndex)")
                        .replacingOccurrences(of: "{question}", with: UUID().uuidString.lowercased())
                        .replacingOccurrences(of: "{sha256}", with: SyntheticDecision.document.sha256)
                    let body: ByteBuffer? = switch template {
                    case "/v1/requests" where method == .post: try BrokerAPITests.json(BrokerAPITests.spec(caseId: caseId))
                    case "/v1/cases" where method == .post: ByteBuffer(string: #"{"title":"theirs"}"#)
                    case _ where template.hasSuffix("/members"): ByteBuffer(string: #"{"user":"inv-b"}"#)
                    case _ where template.hasSuffix("seal"): ByteBuffer(string: #"{"reason":"looking"}"#)
                    case _ where template.hasSuffix("cosignatures"): ByteBuffer(string: #"{"signature":"AAAA"}"#)
                    case _ where template.hasSuffix("review"): ByteBuffer(string: #"{"decision":"confirm"}"#)
                    case _ where template.hasSuffix("answer"): ByteBuffer(string: #"{"answer":"the account named in the decision"}"#)
                    case _ where method == .post: ByteBuffer(string: "{}")
                    default: nil
                    }
                    // The live feed of one of the first agency's requests (the whole feed of one's own
                    // agency is a stream that does not end: the live events test reads it).
                    let uri = template == "/v1/custody/consistency" ? path + "?from=\(checkpoint.size)&to=\(checkpoint.size)"
                        : template == "/v1/events" ? path + "?request=\(r.id.lowercased)" : path
                    // What another agency may get: nothing about the first agency's cases.
                    let allowed: Set<HTTPResponse.Status>
                    switch template {
                    case "/health", "/tsa": continue
                    case "/v1/me", "/v1/custody/checkpoint", "/v1/custody/checkpoints/{size}", "/v1/custody/consistency":
                        allowed = [.ok]  // no case data: hashes of the whole log
                    case "/v1/cases" where method == .post: allowed = [.created]  // a case of their own
                    case "/v1/requests" where method == .post: allowed = [.badRequest, .forbidden]  // the case "does not exist" for them
                    case "/v1/cases", "/v1/requests", "/v1/inbox": allowed = [.ok]  // their own agency's lists: none of the first's
                    case "/v1/me/notifications": allowed = [.ok]  // their own settings
                    case "/v1/events": allowed = [.notFound]  // a request of the first agency
                    case "/v1/documents": allowed = [.badRequest, .forbidden]  // no document in the body: nothing stored
                    case "/v1/documents/{sha256}": allowed = [.notFound]  // the first agency's decision
                    case "/v1/custody/checkpoints/{size}/cosignatures": allowed = [.forbidden]  // not a witness
                    default:
                        #expect(template.contains("{id}") || template.contains("{index}"), "no rule for \(method) \(template): add it to this test")
                        allowed = [.notFound]
                    }
                    let entitledToAll = template == "/v1/events" || template == "/v1/cases/{id}"
                    covered += 1
                    for (n, token) in outsiders.enumerated() {
                        // The admin reads the whole custody log, but no case data. A role that may not
                        // act at all is refused first (403, whatever the id); the approver may act on
                        // every route but the review, which is the reviewer's, and the answer to a provider's
                        // question and a preservation order's extension or release, which are the
                        // investigator's: those must meet "not found".
                        var expected = allowed
                        let entitled = template.hasSuffix("/review") ? 3 : ["/answer", "/extend", "/release", "/members"].contains { template.hasSuffix($0) } ? 0 : 1
                        if allowed == [.notFound] && n != entitled && !entitledToAll { expected.insert(.forbidden) }
                        if n == 2 && template.hasPrefix("/v1/custody/events") { expected = [.ok] }
                        try await http.execute(uri: uri, method: method, headers: BrokerAPITests.auth(token), body: body) { (response: TestResponse) in
                            #expect(expected.contains(response.status), "\(method) \(template) as outsider \(n): \(response.status)")
                            if response.status == .badRequest || response.status == .notFound || response.status == .ok && allowed == [.ok] {
                                #expect(!String(buffer: response.body).contains(caseId.lowercased), "\(method) \(template) names the case")
                                #expect(!String(buffer: response.body).contains(r.id.lowercased), "\(method) \(template) names the request")
                            }
                        }
                    }
                    // The rule is not vacuous: the agency's own people see the same ids.
                    // (The bundle waits for a checkpoint that includes its export; the end-to-end test covers it.)
                    if method == .get && allowed == [.notFound] && !template.hasSuffix("/bundle") && template != "/v1/events" {
                        try await http.execute(uri: uri, method: .get, headers: BrokerAPITests.auth(insider)) { (response: TestResponse) in
                            #expect(response.status == .ok, "GET \(template) as the agency's own investigator: \(response.status)")
                        }
                    }
                }
                #expect(covered >= 26)
                // The agency's own lists do hold what the outsiders' do not.
                for list in ["/v1/cases", "/v1/requests"] {
                    try await http.execute(uri: list, method: .get, headers: BrokerAPITests.auth(insider)) { (response: TestResponse) in
                        #expect(response.status == .ok && String(buffer: response.body).contains(caseId.lowercased), "GET \(list) as the agency's own")
                    }
                }
            }
            // Nothing the outsiders tried changed the request or the package.
            #expect(try await store.request(r.id, viewer: nil).state == .verified)
            #expect(try await store.package(packageId, viewer: nil).sealed == false)
        }
    }
}
