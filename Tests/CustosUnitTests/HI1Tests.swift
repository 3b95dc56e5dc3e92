import CustosCanonicalJSON
@testable import CustosETSI
import CustosModel
import CustosTestSupport
import Foundation
import Testing

/// ETSI TS 103 120 (HI-1): what Custos writes validates against ETSI's own XSDs (xmllint), it
/// reads back as the same request, ETSI's example messages import or are refused with their
/// reason and path, and the status table in `schemas/etsi/README.md` is the code's.
@Suite("ETSI TS 103 120 (HI-1)")
struct HI1Tests {
    static func sharedDirectory() throws -> String { try ETSISchemas.required() }
    static func xmllint(_ xml: [UInt8]) async throws -> String? { try await ETSISchemas.xmllint(xml) }

    static let caseId = UUID()

    /// A request to two providers, an emergency, with a target of every type.
    static func spec(provider: String, emergency: Bool = true) -> RequestSpec {
        RequestSpec(
            caseId: caseId, providerId: provider,
            legalBasis: LegalBasis(decisionNumber: "123/2026/QĐ-VKSND", issuingAuthority: "Viện kiểm sát nhân dân thành phố Hà Nội", issuedOn: "2026-11-20"),
            targets: [
                Target(type: .msisdn, value: "+84912345678"), Target(type: .imsi, value: "452040123456789"),
                Target(type: .imei, value: "490154203237518"), Target(type: .imei, value: "4901542032375181"),
                Target(type: .ipv4, value: "203.0.113.7"), Target(type: .ipv6, value: "2001:db8::7"),
                Target(type: .ipv4, value: "198.51.100.9", port: 51234, at: "2026-11-02T03:15:00Z"),
                Target(type: .ipv6, value: "2001:db8::9", port: 443, at: "2026-11-02T03:16:00Z"),
                Target(type: .email, value: "nguyen.van.a@example.vn"), Target(type: .email, value: "người.dùng@example.vn"),
                Target(type: .account, value: "user:12345", platform: "chat-example"),
                Target(type: .bankAccount, value: "0011004455667"), Target(type: .nationalId, value: "001099012345"),
            ],
            categories: [.subscriber, .traffic, .location], window: TimeWindow(from: "2026-10-01T00:00:00.250Z", to: "2026-11-01T00:00:00Z"),
            priority: emergency ? .emergency : .normal,
            emergency: emergency ? EmergencyGrounds(ground: .threatToLife, statement: "A hostage will be harmed within hours, the caller said.") : nil)
    }

    static func view(_ id: UUID, provider: String, state: RequestState, emergency: Bool = true, packages: [API.PackageSummary] = []) -> API.RequestView {
        API.RequestView(
            id: id, state: state, spec: spec(provider: provider, emergency: emergency), submittedBy: "investigator-1", approvedBy: "duty-1",
            requestHash: nil, createdAt: "2026-11-21T08:00:00.000Z",
            timeline: [.init(at: "2026-11-21T08:00:00.000Z", state: "submitted", actor: "investigator-1", note: nil),
                       .init(at: "2026-11-21T08:05:07.431Z", state: "approved", actor: "duty-1", note: nil)],
            packages: packages,
            clocks: [.init(clock: "delivery", startedAt: "2026-11-21T08:05:07.431Z", deadline: "2026-11-21T16:05:07.431Z", stoppedAt: nil, lateAt: nil,
                           escalatedAt: nil, expiredAt: nil)])
    }

    static func package(_ request: UUID, provider: String, partial: Bool) throws -> API.PackageView {
        let manifest = Manifest(packageId: UUID(), requestId: request, requestHash: String(repeating: "a", count: 64), providerId: provider,
                                asOf: "2026-11-21T09:00:00.000Z", createdAt: "2026-11-21T09:01:00.000Z", results: [],
                                content: .init(size: 20, recordCount: 2),
                                chunks: [.init(index: 0, size: 10, sha256: String(repeating: "b", count: 64)), .init(index: 1, size: 10, sha256: String(repeating: "c", count: 64))],
                                chunksRoot: String(repeating: "d", count: 64), partial: partial ? true : nil)
        let text = String(decoding: try CanonicalJSON.encode(manifest), as: UTF8.self)
        return API.PackageView(id: manifest.packageId, requestId: request, providerId: provider, state: .verified, manifest: manifest, signature: "", timeStamp: "",
                               timeStampedAt: nil, timeStampAccuracyMicroseconds: nil, signer: nil, manifestSha256: Digest.sha256Hex(Array(text.utf8)),
                               verification: nil, receivedAt: "2026-11-21T09:02:00.000Z", manifestText: text)
    }

    static let parties = HI1Export.Parties(sender: .init(countryCode: "VN", uniqueIdentifier: "custos"),
                                           receiver: .init(countryCode: "VN", uniqueIdentifier: "hanoi-police"), providerCountry: "VN")

    static func exported() throws -> (xml: [UInt8], parts: [HI1Export.Part]) {
        let a = UUID(), b = UUID()
        let parts = [
            HI1Export.Part(request: view(a, provider: "telco-one", state: .verified),
                           packages: [try package(a, provider: "telco-one", partial: true), try package(a, provider: "telco-one", partial: false)]),
            HI1Export.Part(request: view(b, provider: "mail-two", state: .inProgress), packages: [try package(b, provider: "mail-two", partial: true)]),
        ]
        return (try HI1Export.message(parts, parties: parties), parts)
    }

    @Test func theExportValidatesAgainstETSIsSchemas() async throws {
        let (xml, parts) = try Self.exported()
        #expect(try await Self.xmllint(xml) == nil)
        let text = String(decoding: xml, as: UTF8.self)
        // What it carries: the decision, the emergency, both tasks, three deliveries with the signed manifests.
        #expect(text.contains("<auth:AuthorisationReference>123/2026/QĐ-VKSND</auth:AuthorisationReference>"))
        #expect(text.contains("<common:ApprovalIsEmergency>true</common:ApprovalIsEmergency>"))
        #expect(text.contains("<common:Value>IsEmergency</common:Value>"))
        #expect(text.components(separatedBy: "xsi:type=\"task:LDTaskObject\"").count == 3)
        #expect(text.components(separatedBy: "<DELIVER").count == 4)
        #expect(text.contains("<task:Value>84912345678</task:Value>"))  // E.164 without +
        #expect(text.contains("<task:Value>2001:0db8:0000:0000:0000:0000:0000:0007</task:Value>"))
        #expect(text.contains("<task:StartTime>2026-10-01T00:00:00Z</task:StartTime>"))  // widened to whole seconds
        for p in parts.flatMap(\.packages) {
            #expect(text.contains("<delivery:Checksum>\(p.manifestSha256)</delivery:Checksum>"))
            #expect(text.contains(Data(p.manifestText!.utf8).base64EncodedString()))
        }
        // The verified part's last package ends its sequence; the part still in progress does not.
        #expect(text.components(separatedBy: "<delivery:LastSequence>true</delivery:LastSequence>").count == 2)
        // Not before approval.
        #expect(throws: HI1Export.NotExportable.self) {
            try HI1Export.message([HI1Export.Part(request: Self.view(UUID(), provider: "telco-one", state: .submitted), packages: [])], parties: Self.parties)
        }
    }

    @Test(arguments: RequestState.allCases) func everyStatusAnswerValidates(_ state: RequestState) async throws {
        for emergency in [true, false] {
            var v = Self.view(UUID(), provider: "telco-one", state: state, emergency: emergency)
            let xml = HI1Export.status(v, parties: Self.parties)
            #expect(try await Self.xmllint(xml) == nil, "\(state)")
            let status = HI1Status.status(state, kind: .production)
            #expect(String(decoding: xml, as: UTF8.self).contains("<common:Value>\(status.value)</common:Value>"))
            v.spec.kind = .preservation
            #expect(try await Self.xmllint(HI1Export.status(v, parties: Self.parties)) == nil, "\(state), preservation")
        }
    }

    @Test func anExportReadsBackAsTheSameRequests() async throws {
        // Deliveries are not requests: an import takes CREATEs only, so the tasks without them.
        let parts = try Self.exported().parts.map { HI1Export.Part(request: $0.request, packages: []) }
        let xml = try HI1Export.message(parts, parties: Self.parties)
        let message = try HI1Import.read(xml, caseId: Self.caseId)
        #expect(message.tasks.count == 2)
        for (task, part) in zip(message.tasks, parts) {
            var expected = part.request.spec
            expected.window.from = "2026-10-01T00:00:00.000Z"  // widened to whole seconds
            expected.window.to = "2026-11-01T00:00:00.000Z"
            #expect(task.spec == expected)
            #expect(task.objectIdentifier == part.request.id.uuidString.lowercased())
        }
    }

    /// Each of ETSI's example messages: imported, or refused with the reason and the element.
    @Test func etsisExamplesImportOrAreRefusedWithTheirReasonAndPath() async throws {
        let dir = try Self.sharedDirectory() + "/examples/"
        func outcome(_ name: String) throws -> HI1Import.Failure? {
            let bytes = Array(try Data(contentsOf: URL(fileURLWithPath: dir + name)))
            do { _ = try HI1Import.read(bytes, caseId: UUID()); return nil } catch { return error }
        }
        let task = "/HI1Message/Payload/RequestPayload/ActionRequests/ActionRequest[2]/CREATE/HI1Object"
        let auth = "/HI1Message/Payload/RequestPayload/ActionRequests/ActionRequest[1]/CREATE/HI1Object"
        // request4: a stored-data task for a telephone number, without the decision's issuer and
        // date, or any data category: each missing element named.
        guard case .invalid(let v4)? = try outcome("request4.xml") else { Issue.record("request4.xml was not refused as invalid"); return }
        #expect(Set(v4.map(\.field)) == [auth + "/auth:AuthorisationApprovalDetails/common:ApproverDetails/common:ApproverName",
                                        auth + "/auth:AuthorisationApprovalDetails/common:ApprovalTimestamp",
                                        task + "/task:RequestDetails/task:Subtype"])
        // request6: an IP address at observed times, with no window.
        guard case .invalid(let v6)? = try outcome("request6.xml") else { Issue.record("request6.xml was not refused as invalid"); return }
        #expect(v6.contains { $0.field == task + "/task:RequestDetails/task:StartTime" })
        // 3GPP identity association (cell, tracking area, 5G-S-TMSI): no Custos target type.
        guard case .unsupported(let l)? = try outcome("ldtask.xml") else { Issue.record("ldtask.xml was not refused as unsupported"); return }
        #expect(l.contains { $0.field.hasSuffix("task:RequestValue[1]/task:FormatType") && $0.rule.contains("3GPP/NRCellIdentity") })
        #expect(l.contains { $0.field.hasSuffix("task:RequestDetails/task:Type") })
        guard case .unsupported(let p)? = try outcome("private_ldtask.xml") else { Issue.record("private_ldtask.xml was not refused"); return }
        #expect(p.contains { $0.rule.contains("private information retrieval") })
        // Interception tasks: Custos requests stored data only.
        for name in ["request1.xml", "request6_signed.xml", "mutliple-auth-example-request.xml"] {
            guard case .unsupported(let v)? = try outcome(name) else { Issue.record("\(name) was not refused as unsupported"); continue }
            #expect(v.contains { $0.rule.contains("LITaskObject") }, "\(name)")
        }
        // Responses and other objects are not requests to import.
        for name in ["response1.xml", "response2.xml", "error.xml", "top_level_error.xml"] {
            guard case .malformed? = try outcome(name) else { Issue.record("\(name) was not refused as not a request"); continue }
        }
        #expect(try outcome("request3.xml") != nil)  // a DocumentObject alone
        // request4 completed with what Custos needs (issuer and date, a category, a known provider) imports.
        var text = try String(contentsOfFile: dir + "request4.xml", encoding: .utf8)
        text = text.replacingOccurrences(of: "</auth:AuthorisationTimespan>", with: """
            </auth:AuthorisationTimespan>
            <auth:AuthorisationApprovalDetails xmlns:common="\(HI1.Namespace.common)">
              <common:ApprovalType>IssuingAuthority</common:ApprovalType>
              <common:ApproverDetails><common:ApproverName>Test Procuracy</common:ApproverName></common:ApproverDetails>
              <common:ApprovalTimestamp>2019-09-29T10:00:00+07:00</common:ApprovalTimestamp>
            </auth:AuthorisationApprovalDetails>
            """)
        text = text.replacingOccurrences(of: "</task:RequestValues>", with: """
            </task:RequestValues>
            <task:Subtype xmlns:common="\(HI1.Namespace.common)"><task:RequestSubtype>
              <common:Owner>Custos</common:Owner><common:Name>DataCategory</common:Name><common:Value>traffic</common:Value>
            </task:RequestSubtype></task:Subtype>
            """)
        #expect(try await Self.xmllint(Array(text.utf8)) == nil)
        let imported = try HI1Import.read(Array(text.utf8), caseId: Self.caseId)
        let spec = try #require(imported.tasks.first?.spec)
        #expect(spec.targets == [Target(type: .msisdn, value: "+442079460223")])
        #expect(spec.legalBasis == LegalBasis(decisionNumber: "W000001", issuingAuthority: "Test Procuracy", issuedOn: "2019-09-29"))
        #expect(spec.window == TimeWindow(from: "2019-09-30T12:00:00.000Z", to: "2019-12-30T12:00:00.000Z"))
        #expect(spec.categories == [.traffic] && spec.providerId == "actor02" && spec.priority == .normal)
    }

    @Test func hostileOrBrokenXMLIsRefusedWithoutExpanding() async throws {
        let billion = """
            <?xml version="1.0"?>
            <!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
            <HI1Message xmlns="\(HI1.Namespace.core)">&lol2;</HI1Message>
            """
        let external = """
            <?xml version="1.0"?><!doctype x [<!ENTITY e SYSTEM "file:///etc/passwd">]><HI1Message xmlns="\(HI1.Namespace.core)">&e;</HI1Message>
            """
        for bad in [billion, external, "<HI1Message", "not xml at all", "<Other xmlns=\"urn:x\"/>", "<HI1Message xmlns=\"\(HI1.Namespace.core)\"/>",
                    "", "\u{0}", "<?xml version=\"1.0\" encoding=\"ISO-8859-1\"?><HI1Message xmlns=\"\(HI1.Namespace.core)\"/>"] {
            #expect(throws: HI1Import.Failure.self, "\(bad.prefix(40))") { try HI1Import.read(Array(bad.utf8), caseId: UUID()) }
        }
        // UTF-16 (where a byte search for <!DOCTYPE finds nothing) and a truncated message are refused too.
        let utf16 = Array(billion.data(using: .utf16)!)
        #expect(throws: HI1Import.Failure.self) { try HI1Import.read(utf16, caseId: UUID()) }
        let whole = try HI1Export.message([HI1Export.Part(request: Self.view(UUID(), provider: "telco-one", state: .approved), packages: [])], parties: Self.parties)
        for cut in [whole.count / 2, whole.count - 30] {
            #expect(throws: HI1Import.Failure.self, "cut at \(cut)") { try HI1Import.read(Array(whole[..<cut]), caseId: UUID()) }
        }
        #expect(throws: HI1Import.Failure.self) { try HI1Import.read(Array(repeating: 0x20, count: HI1Import.maximumBytes + 1), caseId: UUID()) }
    }

    /// `schemas/etsi/README.md`'s status table is the code's, row for row.
    @Test func theStatusTableInSchemasIsTheCodes() async throws {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        let doc = try String(contentsOf: url.appendingPathComponent("schemas/etsi/README.md"), encoding: .utf8)
        var rows: [String: [String]] = [:]
        for line in doc.split(separator: "\n") where line.hasPrefix("| `") {
            let cells = line.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: "`", with: "") }
            rows[cells[0]] = Array(cells.dropFirst())
        }
        for state in RequestState.allCases {
            let row = try #require(rows[state.rawValue], "no row for \(state.rawValue)")
            func show(_ e: HI1.Entry) -> String { "\(e.owner)/\(e.name)/\(e.value)" }
            #expect(row == [show(HI1Status.status(state, kind: .production)), show(HI1Status.desiredStatus(state, kind: .production)),
                            show(HI1Status.status(state, kind: .preservation)), show(HI1Status.desiredStatus(state, kind: .preservation))], "\(state)")
        }
    }

    @Test func targetFormatsRoundTripAndTheLuhnDigitIsRight() async throws {
        for t in Self.spec(provider: "p").targets {
            let (format, value) = HI1TargetFormat.requestValue(t)
            #expect(try HI1TargetFormat.target(owner: format.owner, name: format.value, value: value) == t)
        }
        // A 14-digit IMEI gets its check digit (3GPP TS 23.003 Annex B).
        #expect(try HI1TargetFormat.target(owner: "ETSI", name: "IMEI", value: "49015420323751").value == "490154203237518")
        #expect(try HI1TargetFormat.target(owner: "ETSI", name: "TELURI", value: "tel:+84912345678").value == "+84912345678")
        #expect(throws: HI1TargetFormat.Refusal.self) { try HI1TargetFormat.target(owner: "3GPP", name: "NRCellIdentity", value: "01") }
        #expect(throws: HI1TargetFormat.Refusal.self) { try HI1TargetFormat.target(owner: "ETSI", name: "IPv4Address", value: "300.1.1.1") }
    }
}
