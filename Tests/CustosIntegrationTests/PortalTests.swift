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

/// The web portal through `buildRouter` against a real PostgreSQL: sign-in with password and
/// TOTP, lock-out, sessions that end, CSRF, the second factor asked again, four eyes, agency
/// isolation, the request form, and the security headers. Whole journeys in a real browser are
/// `Tests/Browser/portal_journeys.py` (ops/test).
@Suite("Web portal", .timeLimit(.minutes(3)))
struct PortalTests {
    static let password = "correct horse battery staple"

    /// A browser without JavaScript: keeps cookies, reads forms' CSRF tokens.
    struct Browser {
        var http: any TestClientProtocol
        var cookies: [String: String] = [:]

        mutating func send(_ method: HTTPRequest.Method, _ uri: String, form: [(String, String)]? = nil, raw: ByteBuffer? = nil,
                           contentType: String? = nil) async throws -> (status: HTTPResponse.Status, headers: HTTPFields, body: String) {
            var headers: HTTPFields = [:]
            if !cookies.isEmpty { headers[.cookie] = cookies.map { "\($0.key)=\($0.value)" }.joined(separator: "; ") }
            var body: ByteBuffer?
            if let form {
                headers[.contentType] = "application/x-www-form-urlencoded"
                let allowed = CharacterSet.alphanumerics.union(.init(charactersIn: "-._~"))
                body = ByteBuffer(string: form.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: allowed)!)" }.joined(separator: "&"))
            } else if let raw {
                headers[.contentType] = contentType
                body = raw
            }
            let response = try await http.execute(uri: uri, method: method, headers: headers, body: body)
            for value in response.headers[values: .setCookie] {
                let pair = value.split(separator: ";")[0].split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = String(pair[0]), content = pair.count > 1 ? String(pair[1]) : ""
                if content.isEmpty || value.contains("Max-Age=0") { cookies[name] = nil } else { cookies[name] = content }
            }
            return (response.status, response.headers, String(buffer: response.body))
        }

        static func field(_ name: String, in html: String) -> String? {
            guard let r = html.range(of: "name=\"\(name)\" value=\"") else { return nil }
            return String(html[r.upperBound...].prefix { $0 != "\"" })
        }

        /// Signs in through the form; returns the final status (303 on success).
        mutating func signIn(_ name: String, password: String = PortalTests.password, code: String) async throws -> HTTPResponse.Status {
            let page = try await send(.get, "/portal/sign-in")
            let csrf = try #require(Self.field("_csrf", in: page.body))
            return try await send(.post, "/portal/sign-in", form: [("_csrf", csrf), ("next", "/portal/"), ("name", name), ("password", password), ("code", code)]).status
        }
    }

    struct World {
        var p: EmergencyTests.People
        var secrets: [String: String]
    }

    func withPortal(_ body: @escaping @Sendable (BrokerStore, PostgresClient, World, any TestClientProtocol) async throws -> Void) async throws {
        try await TestServices.withStore { store, client, _ in
            let pki = try TestPKI(signerName: "prov-a")
            let p = try await EmergencyTests.people(store, pki)
            var secrets: [String: String] = [:]
            for name in ["inv", "appr", "duty", "rev"] { secrets[name] = try await store.enrol(name: name, password: Self.password, by: .testAdmin) }
            let world = World(p: p, secrets: secrets)
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 1 << 20, portal: PortalSettings(), logger: TestServices.logger))
            try await app.test(.router) { http in try await body(store, client, world, http) }
        }
    }

    @Test func signInWithPasswordAndCodeOpensASessionWithSafeCookiesAndHeaders() async throws {
        try await withPortal { store, client, w, http in
            var b = Browser(http: http)
            // Not signed in: sent to sign in, and back afterwards.
            let first = try await b.send(.get, "/portal/inbox")
            #expect(first.status == .seeOther && first.headers[.location] == "/portal/sign-in?next=/portal/inbox")
            let page = try await b.send(.get, "/portal/sign-in")
            #expect(page.status == .ok && page.body.contains("lang=\"vi\"") && page.body.contains("Đăng nhập"))
            let csrf = try #require(Browser.field("_csrf", in: page.body))
            let response = try await b.send(.post, "/portal/sign-in", form: [("_csrf", csrf), ("next", "/portal/inbox"), ("name", "inv"),
                                                                             ("password", Self.password), ("code", PortalSignIn.code(secret: w.secrets["inv"]!))])
            #expect(response.status == .seeOther && response.headers[.location] == "/portal/inbox")
            let setCookie = response.headers[values: .setCookie].first { $0.hasPrefix("custos_session=") } ?? ""
            #expect(setCookie.contains("HttpOnly") && setCookie.contains("SameSite=Strict") && setCookie.contains("Path=/portal"))
            let dashboard = try await b.send(.get, "/portal/")
            #expect(dashboard.status == .ok && dashboard.body.contains("inv"))
            let csp = dashboard.headers[.contentSecurityPolicy] ?? ""
            #expect(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline") && csp.contains("frame-ancestors 'none'"))
            #expect(dashboard.headers[HTTPField.Name("X-Frame-Options")!] == "DENY" && dashboard.headers[HTTPField.Name("Referrer-Policy")!] == "no-referrer")
            #expect(!dashboard.body.contains("<script>") && !dashboard.body.contains("onclick="))  // no inline script
            // English on request, remembered.
            #expect(try await b.send(.get, "/portal/?lang=en").body.contains("Dashboard"))
            #expect(try await b.send(.get, "/portal/inbox").body.contains("Inbox"))
            // Signed in and out are custody events.
            let out = try await b.send(.post, "/portal/sign-out", form: [("_csrf", try #require(Browser.field("_csrf", in: dashboard.body)))])
            #expect(out.status == .seeOther && out.headers[.location] == "/portal/sign-in")
            #expect(try await b.send(.get, "/portal/").status == .seeOther)
            var kinds: [String] = []
            for try await k in try await client.query("SELECT kind FROM custody_events ORDER BY idx", logger: TestServices.logger).decode(String.self) { kinds.append(k) }
            #expect(kinds.contains("user.signed-in") && kinds.contains("user.signed-out") && kinds.contains("admin.user-enrolled"))
        }
    }

    @Test func wrongCodesLockTheUserOutAndACodeIsAcceptedOnce() async throws {
        try await withPortal { _, client, w, http in
            var b = Browser(http: http)
            let secret = w.secrets["appr"]!
            // A code is accepted once (RFC 6238 §5.2): replayed, it fails.
            let code = PortalSignIn.code(secret: secret)
            #expect(try await b.signIn("appr", code: code) == .seeOther)
            var other = Browser(http: http)
            #expect(try await other.signIn("appr", code: code) == .unauthorized)
            // Wrong passwords count too; the fifth failure locks, and then even the right ones fail
            // (with the same answer, so that a lock-out does not tell which names exist).
            for _ in 0..<4 { #expect(try await other.signIn("appr", password: "not the password", code: "000000") == .unauthorized) }
            #expect(try await other.signIn("appr", code: PortalSignIn.code(secret: secret, at: Date().addingTimeInterval(30))) == .unauthorized)
            // The session opened before the lock-out is not touched by it; wrong codes inside a
            // session count the same way (below, in fourEyesSecondFactorAgainAndAnotherAgencysIds).
            let locked = try await client.query("SELECT locked_until > now() FROM users WHERE name = 'appr'", logger: TestServices.logger)
                .decode(Bool.self).first { _ in true }
            #expect(locked == true)
            var kinds: [String] = []
            for try await k in try await client.query("SELECT kind FROM custody_events ORDER BY idx", logger: TestServices.logger).decode(String.self) { kinds.append(k) }
            #expect(kinds.filter { $0 == "user.locked-out" }.count == 1)
            // An unknown name answers exactly as a wrong password.
            #expect(try await other.signIn("nobody", code: "123456") == .unauthorized)
        }
    }

    @Test func sessionsEndWhenIdleOrOldAndFormsNeedTheirToken() async throws {
        try await withPortal { store, client, w, http in
            var b = Browser(http: http)
            #expect(try await b.signIn("appr", code: PortalSignIn.code(secret: w.secrets["appr"]!)) == .seeOther)
            let c = try await store.createCase(title: "c", by: w.p.inv)
            let id = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: w.p.inv)
            try await store.submit(id, by: w.p.inv)
            // A form without its CSRF token is refused, and nothing changes.
            let refused = try await b.send(.post, "/portal/requests/\(id.lowercased)/approve", form: [("code", "000000")])
            #expect(refused.status == .forbidden)
            #expect(try await store.request(id, viewer: w.p.inv).state == .submitted)
            // Idle for more than 15 minutes: back to sign-in.
            try await client.query("UPDATE portal_sessions SET last_seen_at = now() - interval '16 minutes'", logger: TestServices.logger)
            let expired = try await b.send(.get, "/portal/requests/\(id.lowercased)")
            #expect(expired.status == .seeOther && expired.headers[.location]?.hasPrefix("/portal/sign-in") == true)
            // At most 8 hours, however active.
            #expect(try await b.signIn("appr", code: PortalSignIn.code(secret: w.secrets["appr"]!, at: Date().addingTimeInterval(30))) == .seeOther)
            #expect(try await b.send(.get, "/portal/").status == .ok)
            try await client.query("UPDATE portal_sessions SET created_at = now() - interval '8 hours 1 minute'", logger: TestServices.logger)
            #expect(try await b.send(.get, "/portal/").status == .seeOther)
        }
    }

    @Test func fourEyesSecondFactorAgainAndAnotherAgencysIds() async throws {
        try await withPortal { store, client, w, http in
            let c = try await store.createCase(title: "c", by: w.p.inv)
            let id = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: w.p.inv)
            try await store.submit(id, by: w.p.inv)
            // The submitter finds no approve button, and the server refuses it anyway.
            var inv = Browser(http: http)
            #expect(try await inv.signIn("inv", code: PortalSignIn.code(secret: w.secrets["inv"]!)) == .seeOther)
            let own = try await inv.send(.get, "/portal/requests/\(id.lowercased)")
            #expect(own.status == .ok && !own.body.contains("id=\"approve\""))
            let csrf = try #require(Browser.field("_csrf", in: own.body))
            let tried = try await inv.send(.post, "/portal/requests/\(id.lowercased)/approve", form: [("_csrf", csrf)])
            #expect(tried.status == .forbidden)
            #expect(try await store.request(id, viewer: w.p.inv).state == .submitted)
            // The approver sees the button; past 5 minutes the code is asked again.
            var appr = Browser(http: http)
            #expect(try await appr.signIn("appr", code: PortalSignIn.code(secret: w.secrets["appr"]!)) == .seeOther)
            try await client.query("UPDATE portal_sessions SET second_factor_at = now() - interval '6 minutes'", logger: TestServices.logger)
            let page = try await appr.send(.get, "/portal/requests/\(id.lowercased)")
            #expect(page.body.contains("id=\"approve\"") && page.body.contains("id=\"code-approve\""))
            let token = try #require(Browser.field("_csrf", in: page.body))
            let withoutCode = try await appr.send(.post, "/portal/requests/\(id.lowercased)/approve", form: [("_csrf", token)])
            #expect(withoutCode.status == .forbidden)
            let wrongCode = try await appr.send(.post, "/portal/requests/\(id.lowercased)/approve", form: [("_csrf", token), ("code", "000000")])
            #expect(wrongCode.status == .forbidden)
            #expect(try await client.query("SELECT failed_signins FROM users WHERE name = 'appr'", logger: TestServices.logger)
                .decode(Int.self).first { _ in true } == 1)  // a wrong code counts towards the lock-out (a missing one does not)
            #expect(try await store.request(id, viewer: w.p.inv).state == .submitted)
            let next = PortalSignIn.code(secret: w.secrets["appr"]!, at: Date().addingTimeInterval(30))
            let approved = try await appr.send(.post, "/portal/requests/\(id.lowercased)/approve", form: [("_csrf", token), ("code", next)])
            #expect(approved.status == .seeOther)
            #expect(try await store.request(id, viewer: w.p.inv).state == .approved)
            // Another agency's request is "not found", as in the API.
            try await store.addAgency(id: "other", name: "Other", by: .testAdmin)
            let stranger = try await store.addUser(name: "stranger", role: .investigator, agency: "other", by: .testAdmin).0
            let secret = try await store.enrol(name: "stranger", password: Self.password, by: .testAdmin)
            var s = Browser(http: http)
            #expect(try await s.signIn(stranger.name, code: PortalSignIn.code(secret: secret)) == .seeOther)
            #expect(try await s.send(.get, "/portal/requests/\(id.lowercased)").status == .notFound)
            #expect(try await s.send(.get, "/portal/requests/\(id.lowercased)/live").status == .notFound)
            #expect(try await s.send(.get, "/portal/?case=\(c.id.lowercased)").status == .notFound)
        }
    }

    @Test func theRequestFormConvertsLocalTimeAndNamesEachRuleBroken() async throws {
        try await withPortal { store, _, w, http in
            var b = Browser(http: http)
            #expect(try await b.signIn("inv", code: PortalSignIn.code(secret: w.secrets["inv"]!)) == .seeOther)
            let page = try await b.send(.get, "/portal/requests/new")
            #expect(page.status == .ok && page.body.contains("prov-a"))
            let csrf = try #require(Browser.field("_csrf", in: page.body))
            func multipart(_ fields: [(String, String)], document: [UInt8] = []) -> ByteBuffer {
                var body = ByteBuffer()
                for (k, v) in fields { body.writeString("--B0UNDARY\r\nContent-Disposition: form-data; name=\"\(k)\"\r\n\r\n\(v)\r\n") }
                body.writeString("--B0UNDARY\r\nContent-Disposition: form-data; name=\"document\"; filename=\"\(document.isEmpty ? "" : "QD-12.pdf")\"\r\n")
                body.writeString("Content-Type: application/pdf\r\n\r\n")
                body.writeBytes(document)
                body.writeString("\r\n--B0UNDARY--\r\n")
                return body
            }
            var fields: [(String, String)] = [
                ("_csrf", csrf), ("case", ""), ("caseTitle", "Vụ lừa đảo tổng hợp"), ("provider", "prov-a"), ("decisionNumber", "QĐ-12/2026"),
                ("authority", "Cơ quan điều tra tổng hợp"), ("issuedOn", "2026-11-20"),
                ("targetType", "msisdn"), ("targetValue", "not a number"), ("targetType", "msisdn"), ("targetValue", ""),
                ("category", "traffic"), ("from", "2026-11-01T07:00"), ("to", "2026-11-20T07:00"), ("then", "submit"),
            ]
            let bad = try await b.send(.post, "/portal/requests", raw: multipart(fields), contentType: "multipart/form-data; boundary=B0UNDARY")
            #expect(bad.status == .badRequest)
            #expect(bad.body.contains("targets[0].value"))  // the rule, named beside its field
            #expect(try await store.listCases(mine: false, limit: 10, cursor: nil, viewer: w.p.inv).items.isEmpty)  // no case made for it
            fields[8] = ("targetValue", "0912 345 678")
            let noDecision = try await b.send(.post, "/portal/requests", raw: multipart(fields), contentType: "multipart/form-data; boundary=B0UNDARY")
            #expect(noDecision.status == .badRequest && noDecision.body.contains("văn bản quyết định để gửi"))
            let good = try await b.send(.post, "/portal/requests", raw: multipart(fields, document: SyntheticDecision.pdf),
                                        contentType: "multipart/form-data; boundary=B0UNDARY")
            #expect(good.status == .seeOther, "\(good.body.matches(of: /(field-error|alert error)[^>]*>([^\n]*)/).map { String($0.2) })")
            let location = try #require(good.headers[.location])
            let id = try #require(UUID(uuidString: String(location.split(separator: "/").last!)))
            let view = try await store.request(id, viewer: w.p.inv)
            // Asia/Ho_Chi_Minh is UTC+7: 07:00 local is midnight UTC.
            #expect(view.spec.window == TimeWindow(from: "2026-11-01T00:00:00.000Z", to: "2026-11-20T00:00:00.000Z"))
            #expect(view.state == .submitted && view.spec.targets == [Target(type: .msisdn, value: "+84912345678")])
            let shown = try await b.send(.get, location)
            #expect(shown.status == .ok && shown.body.contains("Vụ lừa đảo tổng hợp") && shown.body.contains("(00:00 UTC)"))
            #expect(view.spec.legalBasis.document == SyntheticDecision.document)
            let document = try await b.send(.get, "/portal/documents/\(SyntheticDecision.document.sha256)")
            #expect(document.status == .ok && document.headers[.contentType] == "application/pdf")
            // Shown inline by the portal's own pages, and by no one else's.
            #expect(document.headers[.contentSecurityPolicy]?.contains("frame-ancestors 'self'") == true)
            #expect(document.headers[HTTPField.Name("X-Frame-Options")!] == "SAMEORIGIN")
            // A path the portal does not have: its own page, not the API's JSON.
            let missing = try await b.send(.get, "/portal/users")
            #expect(missing.status == .notFound && missing.headers[.contentType]?.hasPrefix("text/html") == true)
            #expect(missing.headers[.contentSecurityPolicy] == PortalHeaders.contentSecurityPolicy)
        }
    }
}
