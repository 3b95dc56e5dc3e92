@testable import CustosBroker
import CustosETSI
import CustosModel
import CustosTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import Testing

/// ETSI TS 103 120 (HI-1) at the broker's API: an authority's CREATE message becomes a case
/// and drafts under the same rules as JSON, violations name XML paths, and a request answers
/// in HI-1 form.
@Suite("HI-1 at the API", .timeLimit(.minutes(3)))
struct HI1APITests {
    static func xml(_ token: String) -> HTTPFields { [.authorization: "Bearer \(token)", .contentType: "application/xml"] }

    /// A message as an authority's system would send it: a decision and one task (written by
    /// Custos' own exporter from a draft-like view, so that it is valid HI-1).
    static func message(provider: String, categories: [DataCategory] = [.traffic]) throws -> ByteBuffer {
        var spec = BrokerAPITests.spec(caseId: UUID(), provider: provider)
        spec.legalBasis.document = nil
        spec.categories = categories
        let view = API.RequestView(id: UUID(), state: .approved, spec: spec, submittedBy: nil, approvedBy: nil, requestHash: nil,
                                   createdAt: Timestamp.now(), timeline: [], packages: [])
        let bytes = try HI1Export.message([HI1Export.Part(request: view, packages: [])],
                                          parties: .init(sender: .init(countryCode: "VN", uniqueIdentifier: "hanoi-police-cms"),
                                                         receiver: .init(countryCode: "VN", uniqueIdentifier: "custos"), providerCountry: "VN"))
        return ByteBuffer(bytes: bytes)
    }

    @Test func anAuthoritysMessageBecomesACaseAndADraftUnderTheSameRules() async throws {
        try await BrokerAPITests().withApp { store, _, w, http in
            // Imported: a new case, one draft, exactly the request the message states.
            var imported: API.HI1ImportView?
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.xml(w.investigator), body: try Self.message(provider: "prov-a")) { (r: TestResponse) throws in
                #expect(r.status == .created)
                imported = try JSONDecoder().decode(API.HI1ImportView.self, from: Data(buffer: r.body))
            }
            let result = try #require(imported)
            #expect(result.requestIds.count == 1)
            let inv = try #require(try await store.user(token: w.investigator))
            let draft = try await store.request(result.requestIds[0], viewer: inv)
            #expect(draft.state == .draft && draft.spec.caseId == result.caseId)
            #expect(draft.spec.targets == [Target(type: .msisdn, value: "+84912345678")] && draft.spec.legalBasis.decisionNumber == "QD-7/2026")

            // Its status in HI-1 form, on request.
            let path = "/v1/requests/\(result.requestIds[0].uuidString.lowercased())"
            try await http.execute(uri: path, method: .get, headers: [.authorization: "Bearer \(w.investigator)", .accept: "application/xml"]) { (r: TestResponse) in
                #expect(r.status == .ok && r.headers[.contentType]?.hasPrefix("application/xml") == true)
                let text = String(buffer: r.body)
                #expect(text.contains("<common:Value>AwaitingApproval</common:Value>") && text.contains("<common:Value>draft</common:Value>"))
            }
            // A draft is not exported: HI-1 knows a request once approved.
            try await http.execute(uri: path + "/hi1", method: .get, headers: BrokerAPITests.auth(w.investigator)) { #expect($0.status == .conflict) }

            // An unknown provider, a missing category: each violation names its XML path, and nothing is created.
            let before = try await store.listCases(mine: false, limit: 100, cursor: nil, viewer: inv).items.count
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.xml(w.investigator),
                                   body: try Self.message(provider: "nobody", categories: [])) { (r: TestResponse) throws in
                #expect(r.status == .badRequest)
                let fields = Set(try BrokerAPITests.problem(r).violations?.map(\.field) ?? [])
                #expect(fields == ["/HI1Message/Payload/RequestPayload/ActionRequests/ActionRequest[2]/CREATE/HI1Object/task:RequestDetails/task:Subtype"])
            }
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.xml(w.investigator),
                                   body: try Self.message(provider: "nobody")) { (r: TestResponse) throws in
                #expect(r.status == .badRequest)
                #expect(try BrokerAPITests.problem(r).violations?.map(\.field) == ["/HI1Message/Payload/RequestPayload/ActionRequests/ActionRequest[2]/CREATE/HI1Object/task:CSPID/UniqueIdentifier"])
            }
            #expect(try await store.listCases(mine: false, limit: 100, cursor: nil, viewer: inv).items.count == before)
            // Only investigators; and a DTD is refused.
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.xml(w.approver), body: try Self.message(provider: "prov-a")) {
                #expect($0.status == .forbidden)
            }
            try await http.execute(uri: "/v1/requests", method: .post, headers: Self.xml(w.investigator),
                                   body: ByteBuffer(string: "<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"b\">]><x>&a;</x>")) { #expect($0.status == .badRequest) }
        }
    }
}
