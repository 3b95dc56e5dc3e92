@testable import CustosBroker
import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// End-to-end acknowledgement of packages at the broker (issue 18; package SPEC §7, "Gaps"),
/// against a real PostgreSQL: a package whose manifest is in while chunks are missing has
/// exactly those asked for with a signed `resend`, after its wait and twice as long each time,
/// and at once when the provider sends the manifest again; a manifest sent again for a package
/// judged gets its receipt sent again.
@Suite("Missing chunks asked for, receipts sent again", .timeLimit(.minutes(2)))
struct PackageResendTests {
    let ingest = try! IngestTests()

    struct Resend {
        var body: ResendBody
        var topic: String
        var sent: Bool
    }

    static func resends(_ client: PostgresClient) async throws -> [Resend] {
        var out: [Resend] = []
        for try await (payload, topic, sent) in try await client.query(
            "SELECT payload, topic, sent_at IS NOT NULL FROM outbox WHERE message_type = 'resend' ORDER BY id", logger: TestServices.logger
        ).decode((ByteBuffer, String, Bool).self) {
            let json = try JSONParser.parse(Array(payload.readableBytesView))
            out.append(Resend(body: try SignedEnvelope.body(ResendBody.self, from: json).body, topic: topic, sent: sent))
        }
        return out
    }

    static func events(_ client: PostgresClient, _ kind: String) async throws -> Int {
        try await client.query("SELECT count(*) FROM custody_events WHERE kind = \(kind)", logger: TestServices.logger).collect()[0].decode(Int.self)
    }

    @Test func missingChunksAreAskedForExactlyWithBackOffAndAManifestSentAgainGetsItsReceiptAgain() async throws {
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, client, _ in
            let r = try await ingest.approvedRequest(store)
            let keys = try await store.providers()
            _ = try await store.ingest(try ingest.message(.ack, r.id, AckBody(requestHash: r.hash), id: .derived("ack")), providerKeys: keys)
            let p = try ingest.package(for: r)
            let (m, chunks) = try ingest.messages(p, r)
            #expect(chunks.count >= 6)
            // Kafka lost chunks 2 and 5: everything else arrives, the manifest last.
            for (i, c) in chunks.enumerated() where i != 2 && i != 5 { _ = try await store.ingest(c, providerKeys: keys) }
            #expect(try await store.ingest(m, providerKeys: keys) == .applied(.manifest))
            #expect(try await store.request(r.id, viewer: nil).packages[0].state == .receiving)

            var settings = ChunkResendSettings()
            settings.after = .seconds(60)
            settings.maxRequests = 3
            let watcher = LegalClockWatcher(store: store, chunkResend: settings, logger: TestServices.logger)
            let t0 = Date()
            try await watcher.fire(at: t0.addingTimeInterval(50))
            #expect(try await Self.resends(client).isEmpty, "asked for before the package was quiet for its wait")
            try await watcher.fire(at: t0.addingTimeInterval(65))
            var asked = try await Self.resends(client)
            try #require(asked.count == 1)
            let manifestSha = Digest.sha256Hex(try CanonicalJSON.encode(p.manifest))
            #expect(asked[0].body == ResendBody(packageId: p.manifest.packageId.lowercased, manifestSha256: manifestSha, indices: [2, 5], attempt: 1))
            #expect(asked[0].topic == "custos.to.prov-a" && !asked[0].sent)
            #expect(try await Self.events(client, "package.chunks-requested") == 1)
            // Twice as long before the next request.
            try await watcher.fire(at: t0.addingTimeInterval(65 + 100))
            #expect(try await Self.resends(client).count == 1)
            try await watcher.fire(at: t0.addingTimeInterval(65 + 125))
            #expect(try await Self.resends(client).map(\.body.attempt) == [1, 2])

            // The provider sends its manifest again (it has no receipt): the chunks are asked for at once.
            #expect(try await store.ingest(m, providerKeys: keys) == .duplicate)
            asked = try await Self.resends(client)
            #expect(asked.map(\.body.attempt) == [1, 2, 3] && asked[2].body.indices == [2, 5])
            // At most maxRequests times by the clock.
            try await watcher.fire(at: t0.addingTimeInterval(100_000))
            #expect(try await Self.resends(client).count == 3)

            // The two chunks come: the package is verified, each chunk stored once, one receipt.
            for i in [5, 2] { #expect(try await store.ingest(chunks[i], providerKeys: keys) == .applied(.chunk)) }
            #expect(try await store.request(r.id, viewer: nil).state == .verified)
            #expect(try await client.query("SELECT count(*) FROM package_chunks").collect()[0].decode(Int.self) == chunks.count)
            try await watcher.fire(at: t0.addingTimeInterval(200_000))
            #expect(try await Self.resends(client).count == 3, "a verified package is never asked for")

            // The receipt was sent; the manifest comes again: the same receipt row goes again.
            func receiptRows() async throws -> [(UUID, String, Bool, Int)] {
                var rows: [(UUID, String, Bool, Int)] = []
                for try await (id, payload, sent, resends) in try await client.query(
                    "SELECT message_id, payload, sent_at IS NOT NULL, resends FROM outbox WHERE message_type = 'receipt'", logger: TestServices.logger
                ).decode((UUID, ByteBuffer, Bool, Int).self) { rows.append((id, Digest.sha256Hex(Array(payload.readableBytesView)), sent, resends)) }
                return rows
            }
            try await client.query("UPDATE outbox SET sent_at = now() WHERE message_type = 'receipt'", logger: TestServices.logger)
            let before = try await receiptRows()
            try #require(before.count == 1 && before[0].2)
            #expect(try await store.ingest(m, providerKeys: keys) == .duplicate)
            let after = try await receiptRows()
            #expect(after.count == 1 && after[0].0 == before[0].0 && after[0].1 == before[0].1 && !after[0].2 && after[0].3 == 1)
            #expect(try await Self.events(client, "package.receipt-resent") == 1)
            // Not sent yet: a manifest again adds nothing (the receipt goes anyway).
            #expect(try await store.ingest(m, providerKeys: keys) == .duplicate)
            #expect(try await Self.events(client, "package.receipt-resent") == 1)
        }
    }
}
