@testable import CustosBroker
import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import CustosTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresNIO
import Testing

/// The HTTP API through `buildRouter`, the function `custos-broker serve` uses, against a
/// real PostgreSQL schema of each test's own.
@Suite("Broker HTTP API", .timeLimit(.minutes(2)))
struct BrokerAPITests {
    struct World {
        var investigator: String
        var investigator2: String
        var approver: String
        var caseId: UUID
    }

    static func spec(caseId: UUID, provider: String = "prov-a") -> RequestSpec {
        RequestSpec(caseId: caseId, providerId: provider,
                    legalBasis: LegalBasis(decisionNumber: "QD-7/2026", issuingAuthority: "Test Authority", issuedOn: "2026-11-01",
                                           document: SyntheticDecision.document),
                    targets: [Target(type: .msisdn, value: "+84912345678")], categories: [.traffic],
                    window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"))
    }

    static func setUp(_ store: BrokerStore) async throws -> World {
        let pki = try TestPKI(signerName: "prov-a")
        try await store.registerProvider(id: "prov-a", certificate: pki.signer, caCertificate: pki.providerCA, by: .testAdmin)
        let inv = try await store.addUser(name: "inv", role: .investigator, by: .testAdmin)
        let inv2 = try await store.addUser(name: "inv2", role: .investigator, by: .testAdmin)
        let appr = try await store.addUser(name: "appr", role: .approver, by: .testAdmin)
        let c = try await store.createCase(title: "Case", by: inv.0)
        _ = try await store.uploadDecision(by: inv.0)
        return World(investigator: inv.token, investigator2: inv2.token, approver: appr.token, caseId: c.id)
    }

    func withApp(_ body: @escaping @Sendable (BrokerStore, PostgresClient, World, any TestClientProtocol) async throws -> Void) async throws {
        try await TestServices.withStore { store, client, _ in
            let world = try await Self.setUp(store)
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, logger: TestServices.logger))
            try await app.test(.router) { http in try await body(store, client, world, http) }
        }
    }

    static func json(_ value: some Encodable) throws -> ByteBuffer { ByteBuffer(data: try JSONEncoder().encode(value)) }
    static func auth(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)", .contentType: "application/json"] }
    static func problem(_ r: TestResponse) throws -> API.Problem { try JSONDecoder().decode(API.Problem.self, from: Data(buffer: r.body)) }

    @Test func requestsWithoutAValidTokenGet401ProblemDetails() async throws {
        try await withApp { _, _, _, http in
            try await http.execute(uri: "/v1/me", method: .get) { (r: TestResponse) throws in
                #expect(r.status == .unauthorized)
                #expect(r.headers[.contentType] == "application/problem+json")
                #expect(r.headers[.wwwAuthenticate] != nil)
                #expect(try Self.problem(r).status == 401)
            }
            try await http.execute(uri: "/v1/me", method: .get, headers: [.authorization: "Bearer nope"]) { (r: TestResponse) throws in
                #expect(r.status == .unauthorized)
            }
        }
    }

    /// Numbers from outside are range-checked before use: a custody index past Int64 used to
    /// stop the broker (the connection closed, the process exited). Each answer is a 4xx, and
    /// the broker goes on answering.
    @Test func numbersPastWhatTheLogCanHoldGet4xxNotACrash() async throws {
        try await withApp { _, _, w, http in
            for uri in ["/v1/custody/events/9223372036854775808", "/v1/custody/events/18446744073709551616", "/v1/custody/events/99999999999999999999999",
                        "/v1/custody/events/-1", "/v1/custody/events/+1", "/v1/custody/events/%201", "/v1/custody/events/9223372036854775808/proof",
                        "/v1/custody/checkpoints/9223372036854775808", "/v1/custody/checkpoints/-0"] {
                try await http.execute(uri: uri, method: .get, headers: Self.auth(w.investigator)) { (r: TestResponse) in
                    #expect(r.status == .notFound, "\(uri)")
                }
            }
            for uri in ["/v1/custody/events/0/proof?size=9223372036854775808", "/v1/custody/events/0/proof?size=-5", "/v1/custody/consistency?from=0&to=18446744073709551616",
                        "/v1/custody/consistency?from=1e3&to=2"] {
                try await http.execute(uri: uri, method: .get, headers: Self.auth(w.investigator)) { (r: TestResponse) in
                    #expect(r.status == .badRequest, "\(uri)")
                }
            }
            // The largest index the log can hold is a number it understands: "no such event".
            try await http.execute(uri: "/v1/custody/events/9223372036854775807", method: .get, headers: Self.auth(w.investigator)) { (r: TestResponse) in
                #expect(r.status == .notFound)
            }
        }
    }

    /// Text PostgreSQL cannot hold (U+0000) is refused with 400 naming the field, on every
    /// route alike: it used to be 503 ("the database is unavailable") for a case title or a
    /// withdrawal reason, and stored (201) in request notes.
    @Test func textTheDatabaseCannotHoldIsA400NamingTheField() async throws {
        try await withApp { _, client, w, http in
            func expectRefused(_ uri: String, _ body: String, field: String) async throws {
                try await http.execute(uri: uri, method: .post, headers: Self.auth(w.investigator), body: ByteBuffer(string: body)) { (r: TestResponse) throws in
                    #expect(r.status == .badRequest, "\(uri)")
                    #expect(try Self.problem(r).violations?.map(\.field) == [field], "\(uri)")
                }
            }
            let requestsBefore = try await client.query("SELECT count(*) FROM requests", logger: TestServices.logger).decode(Int.self).first { _ in true }
            try await expectRefused("/v1/cases", #"{"title":"Case \u0000 one"}"#, field: "title")
            var spec = Self.spec(caseId: w.caseId)
            spec.notes = "before\u{0}after"
            try await expectRefused("/v1/requests", String(decoding: try JSONEncoder().encode(spec), as: UTF8.self), field: "notes")
            spec.notes = nil
            spec.targets = [Target(type: .account, value: "user\u{0}name")]
            try await expectRefused("/v1/requests", String(decoding: try JSONEncoder().encode(spec), as: UTF8.self), field: "targets[0].value")
            let requestsAfter = try await client.query("SELECT count(*) FROM requests", logger: TestServices.logger).decode(Int.self).first { _ in true }
            #expect(requestsAfter == requestsBefore)  // nothing stored
            // A request that exists: its withdrawal reason.
            var id: UUID?
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.auth(w.investigator), body: try Self.json(Self.spec(caseId: w.caseId))) { (r: TestResponse) throws in
                #expect(r.status == .created)
                id = try JSONDecoder().decode(API.RequestView.self, from: Data(buffer: r.body)).id
            }
            let requestId = try #require(id)
            try await expectRefused("/v1/requests/\(requestId.uuidString)/withdraw", #"{"reason":"no longer \u0000 needed"}"#, field: "reason")
            try await expectRefused("/v1/cases", #"{"title\u0000":"x","title":"y"}"#, field: "(member name)")
            try await http.execute(uri: "/v1/documents/\(String(repeating: "0", count: 63))%00", method: .get, headers: Self.auth(w.investigator)) { (r: TestResponse) in
                #expect(r.status == .notFound)
            }
        }
    }

    @Test func badBodiesGetA400NamingTheFieldAndTheRule() async throws {
        try await withApp { _, _, w, http in
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.auth(w.investigator), body: ByteBuffer(string: "{not json")) { (r: TestResponse) throws in
                #expect(r.status == .badRequest)
                #expect(try Self.problem(r).detail?.contains("not valid JSON") == true)
            }
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.auth(w.investigator), body: ByteBuffer(string: #"{"caseId":"x"}"#)) { (r: TestResponse) throws in
                #expect(r.status == .badRequest)
                #expect(try Self.problem(r).violations?.map(\.field) == ["caseId"])
            }
            var spec = Self.spec(caseId: w.caseId)
            spec.targets[0].value = "0912"  // not E.164
            spec.window = TimeWindow(from: "2026-11-02T00:00:00Z", to: "2026-11-01T00:00:00Z")
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.auth(w.investigator), body: try Self.json(spec)) { (r: TestResponse) throws in
                #expect(r.status == .badRequest)
                let p = try Self.problem(r)
                #expect(Set(p.violations?.map(\.field) ?? []) == ["targets[0].value", "window"])
                #expect(!String(buffer: r.body).contains("0912"))  // never echo a target
            }
            spec = Self.spec(caseId: UUID())
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.auth(w.investigator), body: try Self.json(spec)) { (r: TestResponse) throws in
                #expect(try Self.problem(r).violations?.map(\.field) == ["caseId"])
            }
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.auth(w.investigator),
                                   body: ByteBuffer(repeating: UInt8(ascii: " "), count: 100 * 1024)) { (r: TestResponse) throws in
                #expect(r.status == .contentTooLarge)
            }
            try await http.execute(uri: "/v1/requests/not-a-uuid", method: .get, headers: Self.auth(w.investigator)) { (r: TestResponse) throws in
                #expect(r.status == .notFound)
            }
            try await http.execute(uri: "/v1/requests/\(UUID().uuidString)", method: .get, headers: Self.auth(w.investigator)) { (r: TestResponse) throws in
                #expect(r.status == .notFound)
                #expect(r.headers[.contentType] == "application/problem+json")
            }
        }
    }

    @Test func fourEyesIsEnforcedAndApprovalQueuesASignedRequestInTheOutbox() async throws {
        let brokerKey = SigningKey.generate()
        try await TestServices.withStore(signer: brokerKey) { store, client, _ in
            let w = try await Self.setUp(store)
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, logger: TestServices.logger))
            try await app.test(.router) { http in
                var id = UUID()
                try await http.execute(uri: "/v1/requests", method: .post, headers: Self.auth(w.investigator), body: try Self.json(Self.spec(caseId: w.caseId))) { (r: TestResponse) throws in
                    #expect(r.status == .created)
                    let v = try JSONDecoder().decode(API.RequestView.self, from: Data(buffer: r.body))
                    #expect(v.state == .draft)
                    id = v.id
                }
                let path = "/v1/requests/\(id.uuidString.lowercased())"
                // Only the author submits; nobody approves a draft.
                try await http.execute(uri: path + "/submit", method: .post, headers: Self.auth(w.investigator2)) { #expect($0.status == .forbidden) }
                try await http.execute(uri: path + "/approve", method: .post, headers: Self.auth(w.approver)) { #expect($0.status == .conflict) }
                try await http.execute(uri: path + "/submit", method: .post, headers: Self.auth(w.investigator)) { #expect($0.status == .ok) }
                // The submitter cannot approve; neither can another investigator.
                try await http.execute(uri: path + "/approve", method: .post, headers: Self.auth(w.investigator)) { #expect($0.status == .forbidden) }
                try await http.execute(uri: path + "/approve", method: .post, headers: Self.auth(w.investigator2)) { #expect($0.status == .forbidden) }
                try await http.execute(uri: path + "/approve", method: .post, headers: Self.auth(w.approver)) { (r: TestResponse) throws in
                    #expect(r.status == .ok)
                    let v = try JSONDecoder().decode(API.RequestView.self, from: Data(buffer: r.body))
                    #expect(v.state == .approved)
                    #expect(v.timeline.map(\.state) == ["draft", "submitted", "approved"])
                }
                try await http.execute(uri: path + "/approve", method: .post, headers: Self.auth(w.approver)) { #expect($0.status == .conflict) }

                // Exactly one outbox row, signed by the broker, binding the hash of the request as approved.
                let rows = try await client.query("SELECT topic, payload FROM outbox WHERE request_id = \(id)").collect()
                #expect(rows.count == 1)
                let (topic, payload) = try rows[0].decode((String, ByteBuffer).self)
                #expect(topic == "custos.to.prov-a")
                let opened = try SignedEnvelope.open(Array(payload.readableBytesView)) { $0 == "broker" ? brokerKey.publicKey : nil }
                let body = try SignedEnvelope.body(CustosModel.RequestBody.self, from: opened.json).body
                #expect(try body.request.hash() == body.requestHash)
                #expect(body.request.submittedBy == "inv" && body.request.approvedBy == "appr")
            }
            // Even a direct write cannot make the submitter the approver.
            await #expect(throws: PSQLError.self) {
                try await client.query("UPDATE requests SET approved_by = submitted_by")
            }
        }
    }

    @Test func rejectionRecordsTheReasonAndDispatchesNothing() async throws {
        try await withApp { store, client, w, http in
            let inv = try #require(try await store.user(token: w.investigator))
            let id = try await store.draft(Self.spec(caseId: w.caseId), by: inv)
            try await store.submit(id, by: inv)
            try await http.execute(uri: "/v1/requests/\(id.uuidString)/reject", method: .post, headers: Self.auth(w.approver),
                                   body: try Self.json(API.Decision(reason: "insufficient grounds"))) { (r: TestResponse) throws in
                let v = try JSONDecoder().decode(API.RequestView.self, from: Data(buffer: r.body))
                #expect(v.state == .rejected)
                #expect(v.timeline.last?.note == "insufficient grounds")
            }
            #expect(try await client.query("SELECT 1 FROM outbox").collect().isEmpty)
        }
    }

    @Test func aProviderCertificateMustNameTheProvider() async throws {
        try await TestServices.withStore { store, _, _ in
            let pki = try TestPKI(signerName: "someone-else")
            await #expect { try await store.registerProvider(id: "prov-b", certificate: pki.signer, caCertificate: pki.providerCA, by: .testAdmin) } throws: {
                ($0 as? BrokerError)?.code == .invalid && String(describing: $0).contains("someone-else")
            }
            await #expect { try await store.registerProvider(id: "prov-b", certificate: "junk", caCertificate: pki.providerCA, by: .testAdmin) } throws: {
                ($0 as? BrokerError)?.code == .invalid
            }
        }
    }

    @Test func migrationsCanBeAppliedAgain() async throws {
        try await TestServices.withStore { _, client, db in
            try await Migrator.migrate(client: client, schema: db.schema, logger: TestServices.logger)
            try await Migrator.migrate(client: client, schema: db.schema, logger: TestServices.logger)
            let n = try await client.query("SELECT count(*) FROM schema_migrations").collect()[0].decode(Int.self)
            #expect(n == Migrations.all.count)
        }
    }
}
