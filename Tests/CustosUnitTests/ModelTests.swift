import CustosCanonicalJSON
import CustosModel
import Foundation
import Testing

@Suite("Request validation and hashing")
struct ModelTests {
    static func spec() -> RequestSpec {
        RequestSpec(
            caseId: UUID(), providerId: "viettel-test",
            legalBasis: LegalBasis(decisionNumber: "QD-1/2026", issuingAuthority: "Authority", issuedOn: "2026-11-01"),
            targets: [Target(type: .msisdn, value: "+84912345678"), Target(type: .ipv4, value: "203.0.113.7")],
            categories: [.traffic, .location],
            window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"))
    }

    @Test func aValidSpecPasses() throws {
        try Self.spec().validate()
    }

    @Test(arguments: [
        ("providerId", { @Sendable (s: inout RequestSpec) in s.providerId = "Bad_Provider" }),
        ("legalBasis.decisionNumber", { @Sendable (s: inout RequestSpec) in s.legalBasis.decisionNumber = " " }),
        ("legalBasis.issuedOn", { @Sendable (s: inout RequestSpec) in s.legalBasis.issuedOn = "2026-13-45" }),
        ("targets", { @Sendable (s: inout RequestSpec) in s.targets = [] }),
        ("targets", { @Sendable (s: inout RequestSpec) in s.targets = [s.targets[0], s.targets[0]] }),
        ("targets[0].value", { @Sendable (s: inout RequestSpec) in s.targets[0].value = "0912345678" }),
        ("targets[1].value", { @Sendable (s: inout RequestSpec) in s.targets[1].value = "203.0.113.256" }),
        ("categories", { @Sendable (s: inout RequestSpec) in s.categories = [] }),
        ("window.from", { @Sendable (s: inout RequestSpec) in s.window.from = "2026-10-01 00:00" }),
        ("window", { @Sendable (s: inout RequestSpec) in s.window = TimeWindow(from: "2026-11-02T00:00:00Z", to: "2026-11-01T00:00:00Z") }),
        // Emergencies give their grounds; normal requests have none.
        ("emergency", { @Sendable (s: inout RequestSpec) in s.priority = .emergency }),
        ("emergency", { @Sendable (s: inout RequestSpec) in s.emergency = EmergencyGrounds(ground: .childSafety, statement: String(repeating: "x", count: 40)) }),
        ("emergency.statement", { @Sendable (s: inout RequestSpec) in
            s.priority = .emergency
            s.emergency = EmergencyGrounds(ground: .childSafety, statement: "urgent")
        }),
        // CGNAT: a port goes with a time, and only on addresses.
        ("targets[1].at", { @Sendable (s: inout RequestSpec) in s.targets[1].port = 40_000 }),
        ("targets[1].port", { @Sendable (s: inout RequestSpec) in s.targets[1].port = 70_000; s.targets[1].at = "2026-10-05T10:00:00Z" }),
        ("targets[0].port", { @Sendable (s: inout RequestSpec) in s.targets[0].port = 443 }),
        ("targets[1].at", { @Sendable (s: inout RequestSpec) in s.targets[1].at = "yesterday" }),
        // Accounts name their platform; nothing else does.
        ("targets[0].platform", { @Sendable (s: inout RequestSpec) in s.targets[0] = Target(type: .account, value: "user-123") }),
        ("targets[0].platform", { @Sendable (s: inout RequestSpec) in s.targets[0].platform = "zalo" }),
        // IPv6 only in its RFC 5952 form.
        ("targets[1].value", { @Sendable (s: inout RequestSpec) in s.targets[1] = Target(type: .ipv6, value: "2001:DB8::1") }),
        ("targets[1].value", { @Sendable (s: inout RequestSpec) in s.targets[1] = Target(type: .ipv6, value: "2001:db8:0:0:0:0:0:1") }),
        ("targets[1].value", { @Sendable (s: inout RequestSpec) in s.targets[1] = Target(type: .ipv6, value: "2001:db8::0:1") }),
        ("targets[1].value", { @Sendable (s: inout RequestSpec) in s.targets[1] = Target(type: .ipv6, value: "::ffff:zz") }),
    ] as [(String, @Sendable (inout RequestSpec) -> Void)])
    func eachRuleNamesItsField(field: String, breakIt: @Sendable (inout RequestSpec) -> Void) {
        var s = Self.spec()
        breakIt(&s)
        #expect {
            try s.validate()
        } throws: { error in
            guard let v = error as? ValidationError else { return false }
            // The field is named, and the value is never echoed back.
            return v.violations.contains { $0.field == field } && !v.description.contains("0912345678")
        }
    }

    @Test func qualifiedTargetsAndEmergenciesPass() throws {
        var s = Self.spec()
        s.targets = [Target(type: .ipv4, value: "203.0.113.7", port: 40_000, at: "2026-10-05T10:00:00Z"),
                     Target(type: .ipv6, value: "2001:db8::1", at: "2026-10-05T10:00:00Z"),
                     Target(type: .ipv6, value: "2001:db8:0:1::1"),
                     Target(type: .account, value: "user-123", platform: "zalo")]
        s.priority = .emergency
        s.emergency = EmergencyGrounds(ground: .ongoingCyberattack, statement: "Ransomware spreading through the grid operator's network.")
        try s.validate()
        #expect(canonicalIPv6("2001:DB8:0:0:0:0:0:1") == "2001:db8::1")
        #expect(canonicalIPv6("2001:db8:0:1:1:1:1:1") == "2001:db8:0:1:1:1:1:1")  // one zero group is not compressed
    }

    @Test func aNormalRequestHashesAsBeforeTheEmergencyFieldsExisted() throws {
        // Optional fields are left out when unset, so hashes of normal requests did not change.
        var spec = Self.spec()
        let a = ApprovedRequest(requestId: UUID(uuidString: "00000000-0000-4000-8000-000000000001")!, spec: spec, submittedBy: "alice",
                                approvedBy: "bob", approvedAt: "2026-11-25T00:00:00.000Z")
        let text = String(decoding: try CanonicalJSON.encode(a), as: UTF8.self)
        #expect(!text.contains("emergency") && !text.contains("port") && !text.contains("platform"))
        #expect(!text.contains("kind") && !text.contains("preserveUntil") && !text.contains("document"))
        // A production order said in so many words is the same request, with the same hash.
        spec.kind = .production
        let b = ApprovedRequest(requestId: a.requestId, spec: spec, submittedBy: "alice", approvedBy: "bob", approvedAt: a.approvedAt)
        #expect(try b.hash() == a.hash())
        spec.kind = .preservation
        let c = ApprovedRequest(requestId: a.requestId, spec: spec, submittedBy: "alice", approvedBy: "bob", approvedAt: a.approvedAt)
        #expect(try c.hash() != a.hash() && c.isPreservation)
    }

    @Test func everyViolationIsReportedAtOnce() {
        var s = Self.spec()
        s.providerId = "X"
        s.categories = []
        s.targets[0].value = "nope"
        #expect(throws: ValidationError.self) { try s.validate() }
        do { try s.validate() } catch { #expect(error.violations.count == 3) }
    }

    @Test func requestHashIsStableAndSensitive() throws {
        let spec = Self.spec()
        let id = UUID()
        let a = ApprovedRequest(requestId: id, spec: spec, submittedBy: "alice", approvedBy: "bob", approvedAt: "2026-11-25T00:00:00.000Z")
        var b = a
        #expect(try a.hash() == b.hash())
        #expect(try Digest.isSHA256Hex(a.hash()))
        b.targets[0].value = "+84912345679"
        #expect(try a.hash() != b.hash())
    }

    @Test func derivedIdsAreStableVersion8UUIDs() {
        let a = UUID.derived("chunk", "p", "1"), b = UUID.derived("chunk", "p", "1"), c = UUID.derived("chunk", "p", "2")
        #expect(a == b)
        #expect(a != c)
        #expect(a.uuidString.dropFirst(14).first == "8")
    }
}
