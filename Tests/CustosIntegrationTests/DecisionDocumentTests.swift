@testable import CustosBroker
import CustosEvidence
import CustosModel
import CustosTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import NIOCore
import PostgresNIO
import Testing

/// The decision behind a request: uploaded, hashed, required to submit, held per agency, and
/// bound by its hash into the request as approved.
@Suite("Decision documents", .timeLimit(.minutes(2)))
struct DecisionDocumentTests {
    static func violations(_ error: any Error) -> [String] { (error as? BrokerError)?.violations.map(\.field) ?? [] }

    @Test func aRequestIsSubmittedOnlyWithItsAgencysDecisionAndTheHashTravelsWithIt() async throws {
        try await TestServices.withStore { store, client, _ in
            let w = try await BrokerAPITests.setUp(store)
            let inv = try #require(try await store.user(token: w.investigator))
            let approver = try #require(try await store.user(token: w.approver))
            try await store.addAgency(id: "other", name: "Another agency", by: .testAdmin)
            let outsider = try await store.addUser(name: "inv-b", role: .investigator, agency: "other", by: .testAdmin).0

            // A draft may lack the decision; submitting it may not.
            var spec = BrokerAPITests.spec(caseId: w.caseId)
            spec.legalBasis.document = nil
            let bare = try await store.createRequest(spec, by: inv)
            await #expect { try await store.submit(bare, by: inv) } throws: { Self.violations($0) == ["legalBasis.document"] }

            // A decision some other agency uploaded is not this agency's.
            let theirs = try await store.uploadDocument(ByteBuffer(bytes: Array("%PDF-1.4 another agency's decision".utf8)), mediaType: "application/pdf", by: outsider)
            spec.legalBasis.document = theirs.document
            await #expect { try await store.createRequest(spec, by: inv) } throws: { Self.violations($0) == ["legalBasis.document.sha256"] }
            // The size and type must be the uploaded ones.
            var wrongSize = SyntheticDecision.document
            wrongSize.size += 1
            spec.legalBasis.document = wrongSize
            await #expect { try await store.createRequest(spec, by: inv) } throws: { Self.violations($0) == ["legalBasis.document"] }
            // Garbage is named field by field.
            spec.legalBasis.document = LegalDocument(sha256: "ABC", mediaType: "text/html", size: 0)
            await #expect { try await store.createRequest(spec, by: inv) } throws: {
                Set(Self.violations($0)) == ["legalBasis.document.sha256", "legalBasis.document.mediaType", "legalBasis.document.size"]
            }

            // Only investigators upload; only the document types a decision comes in; not empty.
            await #expect { try await store.uploadDocument(ByteBuffer(bytes: SyntheticDecision.pdf), mediaType: "application/pdf", by: approver) } throws: {
                ($0 as? BrokerError)?.code == .forbidden
            }
            await #expect { try await store.uploadDocument(ByteBuffer(string: "<html>"), mediaType: "text/html", by: inv) } throws: { ($0 as? BrokerError)?.code == .invalid }
            await #expect { try await store.uploadDocument(ByteBuffer(), mediaType: "application/pdf", by: inv) } throws: { ($0 as? BrokerError)?.code == .invalid }

            // With its decision, it goes through, and the hash is in what the provider receives.
            let id = try await store.draft(BrokerAPITests.spec(caseId: w.caseId), by: inv)
            try await store.submit(id, by: inv)
            try await store.approve(id, by: approver)
            let approved = try #require(try await client.query("SELECT approved_request FROM requests WHERE id = \(id)").collect().first?.decode(String.self))
            let request = try JSONDecoder().decode(ApprovedRequest.self, from: Data(approved.utf8))
            #expect(request.legalBasis.document == SyntheticDecision.document)
            #expect(SyntheticDecision.document.sha256 == Digest.sha256Hex(SyntheticDecision.pdf))
            let kinds = try await client.query("SELECT kind FROM custody_events WHERE kind LIKE 'document.%'").collect().map { try $0.decode(String.self) }
            #expect(kinds.filter { $0 == "document.uploaded" }.count == 2)  // ours once (uploaded again: no event), theirs once
        }
    }

    @Test func uploadAndFetchOverHTTP() async throws {
        try await TestServices.withStore { store, _, _ in
            let w = try await BrokerAPITests.setUp(store)
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, logger: TestServices.logger))
            try await app.test(.router) { http in
                let png = Array("\u{89}PNG synthetic scan".utf8)
                var headers = BrokerAPITests.auth(w.investigator)
                headers[.contentType] = "image/png"
                try await http.execute(uri: "/v1/documents", method: .post, headers: headers, body: ByteBuffer(bytes: png)) { (r: TestResponse) throws in
                    #expect(r.status == .created)
                    let view = try JSONDecoder().decode(API.DocumentView.self, from: Data(buffer: r.body))
                    #expect(view.document == LegalDocument(sha256: Digest.sha256Hex(png), mediaType: "image/png", size: png.count))
                    #expect(r.headers[.location] == "/v1/documents/\(Digest.sha256Hex(png))")
                }
                headers[.contentType] = "text/plain"
                try await http.execute(uri: "/v1/documents", method: .post, headers: headers, body: ByteBuffer(bytes: png)) { #expect($0.status == .badRequest) }
                // Larger than a decision may be (20 MiB): refused before it is stored.
                headers[.contentType] = "application/pdf"
                try await http.execute(uri: "/v1/documents", method: .post, headers: headers,
                                       body: ByteBuffer(repeating: 0x25, count: LegalDocument.maximumSize + 1)) { #expect($0.status == .contentTooLarge) }
                try await http.execute(uri: "/v1/documents/\(Digest.sha256Hex(png))", method: .get, headers: BrokerAPITests.auth(w.approver)) { (r: TestResponse) throws in
                    #expect(r.status == .ok && Array(r.body.readableBytesView) == png && r.headers[.contentType] == "image/png")
                }
                try await http.execute(uri: "/v1/documents/\(String(repeating: "0", count: 64))", method: .get, headers: BrokerAPITests.auth(w.approver)) {
                    #expect($0.status == .notFound)
                }
            }
        }
    }
}
