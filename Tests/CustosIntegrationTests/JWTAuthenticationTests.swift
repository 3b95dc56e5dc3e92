@testable import CustosBroker
import CustosEvidence
import CustosModel
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresNIO
import Testing

/// JWT bearer tokens through the router: the token's roles and agency decide, the subject
/// becomes a user once, and bad tokens get 401.
@Suite("JWT authentication", .timeLimit(.minutes(2)))
struct JWTAuthenticationTests {
    @Test func aTrustedTokenWorksAndBadOnesGet401() async throws {
        let idp = SigningKey.generate()
        try await TestServices.withStore { store, client, _ in
            try await store.addAgency(id: "hanoi-police", name: "Hanoi police", by: .testAdmin)
            let router = buildRouter(store: store, maxBodyBytes: 64 * 1024, jwt: try JWTSettings(keys: [idp.publicKey], audience: "custos", issuer: "idp"),
                                     logger: TestServices.logger)
            @Sendable func token(_ sub: String, agency: String = "hanoi-police", roles: [String] = ["investigator"], aud: String = "custos", exp: TimeInterval = 300,
                       key: SigningKey? = nil) async throws -> String {
                try await JSONWebToken.sign(JSONWebToken.Claims(sub: sub, agency: agency, roles: roles, aud: aud, iss: "idp",
                                                                exp: Date().addingTimeInterval(exp)), with: key ?? idp)
            }
            try await Application(router: router).test(.router) { http in
                let alice = try await token("alice", roles: ["investigator", "auditor"])
                try await http.execute(uri: "/v1/me", method: .get, headers: BrokerAPITests.auth(alice)) { (r: TestResponse) throws in
                    #expect(r.status == .ok)
                    let me = try JSONDecoder().decode(API.UserView.self, from: Data(buffer: r.body))
                    #expect(me.name == "alice" && me.agency == "hanoi-police" && me.roles == [.investigator, .auditor])
                }
                // Acting with it: a case of the token's agency, created by the token's subject.
                try await http.execute(uri: "/v1/cases", method: .post, headers: BrokerAPITests.auth(alice), body: ByteBuffer(string: #"{"title":"t"}"#)) { (r: TestResponse) in
                    #expect(r.status == .created)
                }
                try await http.execute(uri: "/v1/me", method: .get, headers: BrokerAPITests.auth(try await token("alice", roles: ["investigator"]))) { (r: TestResponse) in
                    #expect(r.status == .ok)
                }
                // exp = Int64.max used to stop the broker (an arithmetic overflow): a far-future
                // expiry is simply valid; the broker answers the next request too.
                let farFuture = try await token("carol", exp: 9.223372036854775807e18 - Date().timeIntervalSince1970)
                for _ in 0..<2 {
                    try await http.execute(uri: "/v1/me", method: .get, headers: BrokerAPITests.auth(farFuture)) { (r: TestResponse) in
                        #expect(r.status == .ok)
                    }
                }
                for (bad, why) in [(try await token("bob", exp: -3600), "expired"), (try await token("bob", aud: "other"), "audience"),
                                   (try await token("bob", key: .generate()), "signature"), (try await token("bob", agency: "nowhere"), "agency"),
                                   (try await token("bob", roles: ["janitor"]), "role")] {
                    try await http.execute(uri: "/v1/me", method: .get, headers: BrokerAPITests.auth(bad)) { (r: TestResponse) throws in
                        #expect(r.status == .unauthorized, "\(why)")
                        #expect(try BrokerAPITests.problem(r).detail?.contains(why) == true, "\(why)")
                    }
                }
            }
            let cases = try await client.query("SELECT count(*) FROM cases c JOIN users u ON u.id = c.created_by WHERE u.name = 'alice' AND c.agency = 'hanoi-police'",
                                               logger: TestServices.logger).decode(Int.self).first { _ in true }
            #expect(cases == 1)
            let added = try await client.query("SELECT count(*) FROM custody_events WHERE kind = 'admin.user-added' AND convert_from(entry, 'UTF8') LIKE '%\"via\":\"jwt\"%'",
                                               logger: TestServices.logger).decode(Int.self).first { _ in true }
            #expect(added == 2)  // each subject (alice, carol) became a user once
        }
    }
}
