@testable import CustosBroker
import CustosEvidence
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// A provider's questions (its clocks pause until the investigator answers, and the answer goes
/// back to it signed) and partial deliveries (the request stays open until the final package),
/// against a real PostgreSQL.
@Suite("Provider questions and partial deliveries", .timeLimit(.minutes(2)))
struct ClarificationTests {
    static func status(_ error: any Error) -> BrokerError.Code? { (error as? BrokerError)?.code }

    @Test func aQuestionPausesTheProvidersClocksAndTheAnswerGoesBackAndMovesTheirDeadlines() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            let r = try await ingest.approvedRequest(store)
            let keys = try await store.providers()
            let inv = try await store.addUser(name: "inv-2", role: .investigator, by: .testAdmin).0
            let approver = try await store.addUser(name: "appr-2", role: .approver, by: .testAdmin).0
            try await store.addAgency(id: "other", name: "Another agency", by: .testAdmin)
            let outsider = try await store.addUser(name: "inv-b", role: .investigator, agency: "other", by: .testAdmin).0
            let before = try await store.request(r.id, viewer: nil).clocks

            // Too long, or empty: refused, nothing recorded.
            let tooLong = try ingest.message(.clarificationRequest, r.id, ClarificationRequestBody(question: String(repeating: "?", count: 4_001)))
            guard case .deadLettered = try await store.ingest(tooLong, providerKeys: keys) else { Issue.record("a 4001-character question was accepted"); return }
            let blank = try ingest.message(.clarificationRequest, r.id, ClarificationRequestBody(question: "  \n"))
            guard case .deadLettered = try await store.ingest(blank, providerKeys: keys) else { Issue.record("a blank question was accepted"); return }

            let questionId = UUID()
            let ask = try ingest.message(.clarificationRequest, r.id, ClarificationRequestBody(question: "Which of the two contracts on this number?"), id: questionId)
            #expect(try await store.ingest(ask, providerKeys: keys) == .applied(.clarificationRequest))
            #expect(try await store.ingest(ask, providerKeys: keys) == .duplicate)
            var view = try await store.request(r.id, viewer: nil)
            #expect(view.clarifications.map(\.id) == [questionId] && view.clarifications[0].answer == nil)
            #expect(view.timeline.last?.state == "clarification-requested")
            #expect(view.clocks.filter { $0.pausedAt != nil }.map(\.clock).sorted() == ["acknowledgement", "delivery"])

            // While it waits, no clock runs late, however long the wait.
            let watcher = LegalClockWatcher(store: store, logger: TestServices.logger)
            #expect(try await watcher.fire(at: Date().addingTimeInterval(30 * 86_400)) == 0)

            // Only an investigator of the request's agency answers, once, a question that exists.
            await #expect { try await store.answer(r.id, question: questionId, answer: "The prepaid one.", by: approver) } throws: { Self.status($0) == .forbidden }
            await #expect { try await store.answer(r.id, question: questionId, answer: "The prepaid one.", by: outsider) } throws: { Self.status($0) == .notFound }
            await #expect { try await store.answer(r.id, question: UUID(), answer: "The prepaid one.", by: inv) } throws: { Self.status($0) == .notFound }
            await #expect { try await store.answer(r.id, question: questionId, answer: " ", by: inv) } throws: { Self.status($0) == .invalid }

            // The provider waited an hour (moved back in the database, as the clock would have).
            try await client.query("UPDATE request_clocks SET paused_at = paused_at - interval '1 hour' WHERE request_id = \(r.id)")
            try await store.answer(r.id, question: questionId, answer: "The prepaid one.", by: inv)
            await #expect { try await store.answer(r.id, question: questionId, answer: "Again.", by: inv) } throws: { Self.status($0) == .conflict }
            view = try await store.request(r.id, viewer: nil)
            #expect(view.clarifications[0].answer == "The prepaid one." && view.clarifications[0].answeredBy == "inv-2")
            #expect(view.timeline.last?.state == "clarification-answered")
            for clock in ["acknowledgement", "delivery"] {
                let old = try #require(before.first { $0.clock == clock }), new = try #require(view.clocks.first { $0.clock == clock })
                #expect(new.pausedAt == nil)
                let moved = try #require(Timestamp.parse(new.deadline)).timeIntervalSince(try #require(Timestamp.parse(old.deadline)))
                #expect(moved >= 3_600 && moved < 3_660, "\(clock) moved by \(moved) s")
            }

            // The answer goes to the provider, signed by the broker, naming the question.
            let rows = try await client.query("SELECT topic, payload FROM outbox WHERE request_id = \(r.id) AND message_type = 'clarification'").collect()
            #expect(rows.count == 1)
            let (topic, payload) = try rows[0].decode((String, ByteBuffer).self)
            #expect(topic == "custos.to.prov-a")
            let body = try SignedEnvelope.body(ClarificationBody.self, from: try SignedEnvelope.open(Array(payload.readableBytesView)) { _ in store.signer.publicKey }.json).body
            // With the delivery deadline as moved, for the connector's judgement of sống; the
            // request message had the one from approval.
            let delivery = try #require(view.clocks.first { $0.clock == "delivery" })
            #expect(body == ClarificationBody(questionId: questionId, answer: "The prepaid one.", deliverBy: delivery.deadline))
            let sent = try await client.query("SELECT payload FROM outbox WHERE request_id = \(r.id) AND message_type = 'request'").collect()[0].decode(ByteBuffer.self)
            let request = try SignedEnvelope.body(RequestBody.self, from: try SignedEnvelope.open(Array(sent.readableBytesView)) { _ in store.signer.publicKey }.json).body
            #expect(request.deliverBy == before.first { $0.clock == "delivery" }?.deadline)
            // The custody log has both, as hashes only.
            let kinds = try await client.query("SELECT kind FROM custody_events WHERE request_id = \(r.id) ORDER BY idx").collect().map { try $0.decode(String.self) }
            #expect(kinds.contains("request.clarification-requested") && kinds.contains("request.clarification-answered"))
            let entries = try await client.query("SELECT convert_from(entry, 'UTF8') FROM custody_events WHERE request_id = \(r.id)").collect()
                .map { try $0.decode(String.self) }
            #expect(!entries.contains { $0.contains("prepaid") || $0.contains("contracts") })
        }
    }

    @Test func partialPackagesKeepTheRequestOpenUntilTheFinalOne() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            let r = try await ingest.approvedRequest(store)
            let keys = try await store.providers()
            func deliver(_ p: IngestTests.Package) async throws {
                let (m, chunks) = try ingest.messages(p, r)
                for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            }
            let first = try ingest.package(for: r, partial: true)
            try await deliver(first)
            var view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .partiallyDelivered)
            #expect(try await store.package(first.manifest.packageId, viewer: nil).state == .verified)
            // The delivery clock runs on; the acknowledgement clock is satisfied.
            #expect(view.clocks.first { $0.clock == "delivery" }?.stoppedAt == nil)
            #expect(view.clocks.first { $0.clock == "acknowledgement" }?.stoppedAt != nil)

            try await deliver(try ingest.package(for: r, partial: true))
            view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .partiallyDelivered)
            #expect(view.timeline.filter { $0.state == "partially-delivered" }.count == 2)

            try await deliver(try ingest.package(for: r))
            view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .verified && view.packages.count == 3)
            #expect(view.clocks.first { $0.clock == "delivery" }?.stoppedAt != nil)
            // Each package got its receipt.
            let receipts = try await client.query("SELECT count(*) FROM outbox WHERE request_id = \(r.id) AND message_type = 'receipt'").collect()[0].decode(Int.self)
            #expect(receipts == 3)
        }
    }
}
