@testable import CustosBroker
import CustosModel
import Foundation
import Testing

/// The portal's templates, catalogs and time handling, without a server.
@Suite("Portal resources")
struct PortalResourcesTests {
    func resources() throws -> PortalResources { try PortalResources.shared.get() }

    @Test func everyStringIsInBothCatalogsWithItsDiacritics() throws {
        let r = try resources()
        let vi = try #require(r.catalogs[.vi]), en = try #require(r.catalogs[.en])
        #expect(Set(vi.keys) == Set(en.keys))
        #expect(vi.values.allSatisfy { !$0.isEmpty } && en.values.allSatisfy { !$0.isEmpty })
        // Every key a template names.
        let templates = try PortalResources.directory().appendingPathComponent("templates")
        for name in try FileManager.default.contentsOfDirectory(atPath: templates.path) {
            let text = try String(contentsOf: templates.appendingPathComponent(name), encoding: .utf8)
            let keys = text.matches(of: /\{\{[#^\/]?t\.([a-z0-9_]+)\}\}/).map { String($0.1) }
            for key in keys { #expect(vi[key] != nil, "template \(name) names t.\(key), missing from the catalogs") }
        }
        // Every value the pages label from an enumeration.
        let dynamic = RequestState.allCases.map { "state_\($0.rawValue)" } + Priority.allCases.map { "priority_\($0.rawValue)" }
            + RequestKind.allCases.map { "kind_\($0.rawValue)" } + Role.allCases.map { "role_\($0.rawValue)" }
            + EmergencyGrounds.Ground.allCases.map { "ground_\($0.rawValue)" } + DataCategory.allCases.map { "category_\($0.rawValue)" }
            + TargetType.allCases.map { "target_\($0.rawValue)" } + API.InboxItem.Task.allCases.map { "task_\($0.rawValue)" }
            + Verdict.Criterion.allCases.map { "criterion_\($0.rawValue)" } + ["pass", "warn", "fail"].map { "status_\($0)" }
            + ["acknowledgement", "delivery", "review", "preservation"].map { "clock_\($0)" }
            + ["receiving", "verified", "rejected"].map { "package_\($0)" } + ["pending", "confirmed", "revoked", "lapsed"].map { "review_\($0)" }
            + ["unauthorized", "forbidden", "not-found", "conflict", "invalid", "too-large", "unavailable", "storage-failure"].map { "error_\($0)" }
        for key in dynamic { #expect(vi[key] != nil, "\(key) missing") }
        // Vietnamese with its diacritics, composed (NFC) as the web expects.
        #expect(vi["sign_in"] == "Đăng nhập" && vi["criterion_complete"] == "đủ" && vi["criterion_live"] == "sống")
        #expect(vi.values.allSatisfy { $0 == $0.precomposedStringWithCanonicalMapping })
    }

    @Test func everyTemplateRendersAndAssetsAreVersionedByHash() throws {
        let r = try resources()
        for name in ["signin", "dashboard", "inbox", "emergencies", "reviews", "custody", "users", "new-request", "request", "request-live", "error"] {
            let html = try r.render(name, ["t": r.catalogs[.en]!, "lang": "en"])
            #expect(!html.isEmpty, "\(name)")
        }
        let css = try #require(r.assetURLs["css"]), js = try #require(r.assetURLs["js"])
        #expect(css.hasPrefix("/portal/assets/portal.") && css.hasSuffix(".css") && js.hasSuffix(".js"))
        #expect(r.assets.count == 2)
    }

    @Test func timesAreShownLocallyWithUTCBesideAndFormTimesAreReadLocally() throws {
        let r = try resources()
        let hcm = PortalTime(timeZone: TimeZone(identifier: "Asia/Ho_Chi_Minh")!, language: .vi)
        #expect(hcm.show("2026-11-30T14:06:00Z") == "30/11/2026 21:06 GMT+7 (14:06 UTC)" || hcm.show("2026-11-30T14:06:00Z").hasSuffix("(14:06 UTC)"))
        #expect(hcm.show("2026-11-30T20:00:00Z").hasPrefix("01/12/2026 03:00") && hcm.show("2026-11-30T20:00:00Z").hasSuffix("(30/11 20:00 UTC)"))
        #expect(hcm.utc(fromLocal: "2026-11-20T08:30") == "2026-11-20T01:30:00.000Z")
        #expect(hcm.utc(fromLocal: "2026-02-30T08:30") == nil && hcm.utc(fromLocal: "yesterday") == nil && hcm.utc(fromLocal: "2026-11-20T24:00") == nil)
        let now = Date(timeIntervalSince1970: 1_000_000)
        #expect(hcm.left(until: now.addingTimeInterval(2 * 3600 + 14 * 60 + 5), now: now, resources: r).text == "còn 2 giờ 14 phút")
        let late = PortalTime(timeZone: TimeZone(identifier: "UTC")!, language: .en).left(until: now.addingTimeInterval(-300), now: now, resources: r)
        #expect(late.text == "overdue by 5 min" && late.overdue)
    }

    @Test func totpCodesFollowRFC6238AndDriftOneStep() {
        // RFC 6238 Appendix B, SHA-1: secret "12345678901234567890", T = 59 s → 94287082 (8 digits); 6 digits: 287082.
        let secret = "12345678901234567890"
        #expect(PortalSignIn.code(secret: secret, at: Date(timeIntervalSince1970: 59)) == "287082")
        #expect(PortalSignIn.code(secret: secret, at: Date(timeIntervalSince1970: 1_111_111_109)) == "081804")
        let now = Date(timeIntervalSince1970: 1_111_111_109)
        #expect(PortalSignIn.matchingStep(code: "081804", secret: secret, now: now) == Int64(37_037_036))
        #expect(PortalSignIn.matchingStep(code: "081804", secret: secret, now: now.addingTimeInterval(30)) != nil)
        #expect(PortalSignIn.matchingStep(code: "081804", secret: secret, now: now.addingTimeInterval(90)) == nil)
        #expect(PortalSignIn.matchingStep(code: "81804", secret: secret, now: now) == nil)
        #expect(PortalSignIn.matchingStep(code: "08180a", secret: secret, now: now) == nil)
    }

    @Test func formsParseAndRedirectsStayInThePortal() throws {
        let f = try PortalForm.urlEncoded("a=1&b=two+words&b=%C4%91%C3%BAng&c=")
        #expect(f.value("a") == "1" && f.values("b") == ["two words", "đúng"] && f.value("c") == "")
        #expect(throws: BrokerError.self) { try PortalForm.urlEncoded("a=%ZZ") }
        #expect(Portal.safeNext("/portal/inbox") == "/portal/inbox")
        for evil in ["https://evil.example/", "//evil.example/portal/", "/portal/\\evil", nil, "/v1/me"] { #expect(Portal.safeNext(evil) == "/portal/") }
    }
}
