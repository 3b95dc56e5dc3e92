@testable import CustosBroker
import CustosCanonicalJSON
import CustosEvidence
import CustosKafka
import CustosModel
import CustosPKI
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// `BrokerStore.ingest` — what the response consumer applies for each Kafka message — against
/// a real PostgreSQL: idempotency by message id, dead letters, and verification.
@Suite("Ingesting provider messages", .timeLimit(.minutes(2)))
struct IngestTests {
    let pki: TestPKI
    let provider: SigningKey

    init() throws {
        try self.init(pki: TestPKI(signerName: "prov-a"))
    }

    init(pki: TestPKI) throws {
        self.pki = pki
        provider = try SigningKey(pem: pki.signerKey)
    }
    let topic = "custos.from.prov-a"

    struct Approved {
        var id: UUID
        var hash: String
    }

    func approvedRequest(_ store: BrokerStore) async throws -> Approved {
        try await store.registerProvider(id: "prov-a", certificate: pki.signer, caCertificate: pki.providerCA, by: .testAdmin)
        let inv = try await store.addUser(name: "inv", role: .investigator, by: .testAdmin).0
        let appr = try await store.addUser(name: "appr", role: .approver, by: .testAdmin).0
        let c = try await store.createCase(title: "c", by: inv)
        let id = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: inv)
        try await store.submit(id, by: inv)
        try await store.approve(id, by: appr)
        return Approved(id: id, hash: try #require(try await store.request(id, viewer: nil).requestHash))
    }

    var offset = Offsets()
    final class Offsets: @unchecked Sendable {  // test-local counter, used from one task
        var next: Int64 = 0
    }

    func message<Body: Codable & Sendable>(_ type: MessageType, _ request: UUID, _ body: Body, id: UUID = UUID(), signer: SigningKey? = nil, chunk: [UInt8]? = nil) throws -> KafkaMessage {
        let bytes = try SignedEnvelope.encode(Envelope(type: type, id: id, requestId: request, sender: "prov-a", body: body), signer: signer ?? provider)
        offset.next += 1
        if let chunk {
            return KafkaMessage(topic: topic, partition: 0, offset: offset.next, key: [], value: chunk, headers: [KafkaHeader(key: Topics.envelopeHeader, value: bytes)])
        }
        return KafkaMessage(topic: topic, partition: 0, offset: offset.next, key: [], value: bytes)
    }

    struct Package {
        var manifest: Manifest
        var body: ManifestBody
        var chunks: [[UInt8]]
    }

    /// Signs the manifest as a provider does: CMS over its canonical JSON, time-stamped.
    func signed(_ manifest: Manifest, by pki: TestPKI) throws -> ManifestBody {
        let signature = try CMS.sign(try CanonicalJSON.encode(manifest), certificate: pki.signer, key: pki.signerKey)
        let tsr = try pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(signature), nonce: TimeStamp.makeNonce()), serial: 7)
        return ManifestBody(manifest: manifest, signature: Data(signature).base64EncodedString(), timeStamp: Data(tsr).base64EncodedString())
    }

    /// 40 valid traffic records; `extra` lines after them, in the same result.
    func package(for r: Approved, chunkSize: Int = 700, partial: Bool = false, extra: [String] = [], tamper: ((inout [[UInt8]]) -> Void)? = nil) throws -> Package {
        var tree = RecordTree()
        var content: [UInt8] = []
        let lines = (0..<40).map { n in
            // A valid traffic record (schemas/records/traffic.json), each one different.
            Self.traffic(target: "+84912345678", seconds: n)
        } + extra
        for text in lines {
            let line = Array(text.utf8)
            line.withUnsafeBytes { tree.append(record: $0) }
            content += line + [0x0A]
        }
        var acc = ChunkAccumulator(chunkSize: chunkSize)
        acc.append(content)
        let (chunks, root, size) = acc.finish()
        let manifest = Manifest(
            packageId: UUID(), requestId: r.id, requestHash: r.hash, providerId: "prov-a", asOf: Timestamp.now(), createdAt: Timestamp.now(),
            results: [.init(target: Target(type: .msisdn, value: "+84912345678"), category: .traffic, status: .data, recordCount: lines.count,
                            size: tree.size, recordsRoot: tree.root,
                            coverage: .init(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z", retainedSince: "2025-11-01T00:00:00Z"))],
            content: .init(size: size, recordCount: lines.count), chunks: chunks, chunksRoot: root, partial: partial ? true : nil)
        var slices = stride(from: 0, to: content.count, by: chunkSize).map { Array(content[$0..<min($0 + chunkSize, content.count)]) }
        tamper?(&slices)
        return Package(manifest: manifest, body: try signed(manifest, by: pki), chunks: slices)
    }

    static func traffic(target: String, seconds: Int, time: String = "2026-10-15T08:30:00Z") -> String {
        "{\"category\":\"traffic\",\"record\":{\"direction\":\"outgoing\",\"durationSeconds\":\(seconds),\"otherParty\":\"+84907000123\","
            + "\"pad\":\"\(String(repeating: "z", count: 20))\"},\"target\":{\"type\":\"msisdn\",\"value\":\"\(target)\"},"
            + "\"time\":\"\(time)\"}"
    }

    /// The package's messages (package protocol v2): its chunks, each in result 0 (the
    /// package has one result), and the manifest, which is sent last.
    func messages(_ p: Package, _ r: Approved) throws -> (manifest: KafkaMessage, chunks: [KafkaMessage]) {
        let pid = p.manifest.packageId
        let m = try message(.manifest, r.id, p.body, id: .derived("m", pid.lowercased))
        let cs = try p.chunks.enumerated().map { i, bytes in
            try message(.chunk, r.id, ChunkBody(packageId: pid, index: i, size: bytes.count, sha256: Digest.sha256Hex(bytes), results: [.init(result: 0, offset: 0)]),
                        id: .derived("c", pid.lowercased, "\(i)"), chunk: bytes)
        }
        return (m, cs)
    }


    /// The UUIDs of a JSON document in upper case, as some UUID libraries write them (Custos
    /// writes lower case, as RFC 9562 §4 does).
    static func upperCasingUUIDs(_ value: JSONValue) -> JSONValue {
        switch value {
        case .string(let s) where UUID(uuidString: s) != nil: .string(s.uppercased())
        case .array(let items): .array(items.map(upperCasingUUIDs))
        case .object(let members): .object(members.mapValues(upperCasingUUIDs))
        default: value
        }
    }

    /// A third party's connector, built from `schemas/` alone, spelling its UUIDs in another
    /// case than Custos: the broker keeps, hashes and checks the manifest's bytes as signed,
    /// never re-encoded (it used to re-encode them, and every such delivery failed), and its
    /// receipt echoes the package id as the manifest spells it.
    @Test func aManifestWrittenWithUpperCaseUUIDsIsKeptAndVerifiedAsSigned() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            let p = try package(for: r)
            let manifestJSON = Self.upperCasingUUIDs(try JSONParser.parse(try CanonicalJSON.encode(p.manifest)))
            let signed = CanonicalJSON.serialize(manifestJSON)
            #expect(signed != (try CanonicalJSON.encode(p.manifest)))
            let signature = try CMS.sign(signed, certificate: pki.signer, key: pki.signerKey)
            let tsr = try pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(signature), nonce: TimeStamp.makeNonce()), serial: 8)
            // The manifest message as that connector writes it: canonical, signed by its key.
            let pid = p.manifest.packageId
            let template = try JSONParser.parse(try SignedEnvelope.encode(Envelope(type: .manifest, id: .derived("m", pid.lowercased), requestId: r.id,
                                                                                    sender: "prov-a", body: p.body), signer: provider))
            guard case .object(var envelope) = template else { Issue.record("not an object"); return }
            envelope["signature"] = nil
            envelope["body"] = .object(["manifest": manifestJSON, "signature": .string(Data(signature).base64EncodedString()),
                                        "timeStamp": .string(Data(tsr).base64EncodedString())])
            let value = try provider.sign(CanonicalJSON.serialize(.object(envelope)))
            envelope["signature"] = .object(["alg": .string(provider.algorithm), "keyId": .string(provider.publicKey.keyId), "value": .string(value)])
            offset.next += 1
            let m = KafkaMessage(topic: topic, partition: 0, offset: offset.next, key: [], value: CanonicalJSON.serialize(.object(envelope)))
            let (_, chunks) = try messages(p, r)
            for msg in chunks + [m] {
                let outcome = try await store.ingest(msg, providerKeys: keys)
                if case .deadLettered(let why) = outcome { Issue.record("dead-lettered: \(why)") }
            }
            let view = try await store.package(pid, viewer: nil)
            #expect(view.state == .verified, "\(view.verification?.failures ?? [])")
            #expect(view.manifestText.map { Array($0.utf8) } == signed)
            #expect(view.manifestSha256 == Digest.sha256Hex(signed))
            #expect(view.criteria?.admissible == true)
            let bundleManifest = try await store.bundleParts(pid).manifest
            #expect(bundleManifest == signed)
            let receipt = try await client.query("SELECT payload FROM outbox WHERE message_type = 'receipt'").collect()[0].decode(ByteBuffer.self)
            let opened = try SignedEnvelope.open(Array(receipt.readableBytesView)) { _ in store.signer.publicKey }
            #expect(try SignedEnvelope.body(ReceiptBody.self, from: opened.json).body.packageId == pid.uuidString.uppercased())
            // The same message (under a new id) not in RFC 8785 form — a space after a colon —
            // is refused with its reason, rather than "fixed".
            envelope["signature"] = nil
            envelope["id"] = .string(UUID().uuidString.lowercased())
            let again = try provider.sign(CanonicalJSON.serialize(.object(envelope)))
            envelope["signature"] = .object(["alg": .string(provider.algorithm), "keyId": .string(provider.publicKey.keyId), "value": .string(again)])
            var spaced = CanonicalJSON.serialize(.object(envelope))
            let colon = try #require(spaced.firstIndex(of: UInt8(ascii: ":")))
            spaced.insert(UInt8(ascii: " "), at: colon + 1)
            offset.next += 1
            let outcome = try await store.ingest(KafkaMessage(topic: topic, partition: 0, offset: offset.next, key: [], value: spaced), providerKeys: keys)
            guard case .deadLettered(let why) = outcome else { Issue.record("not refused: \(outcome)"); return }
            #expect(why.contains("canonical"), "\(why)")
        }
    }

    @Test func aCompletePackageIsJudgedOnTheFourCriteria() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            let good = try package(for: r)
            let (m, chunks) = try messages(good, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let view = try await store.package(good.manifest.packageId, viewer: nil)
            let criteria = try #require(view.criteria)
            #expect(criteria.admissible, "\(criteria.criteria)")
            #expect(criteria.counts == Verdict.Counts(records: 40, quarantined: 0, duplicates: 0, invalid: 0))
            #expect(criteria.quality["traffic.cellId"] == Verdict.FieldQuality(records: 40, present: 0))
            let events = try await client.query("SELECT count(*) FROM custody_events WHERE package_id = \(good.manifest.packageId) AND kind = 'package.criteria'")
                .collect()[0].decode(Int.self)
            #expect(events == 1)

            // Tampered content: signed and counted as declared no more (đúng, đủ fail).
            let bad = try package(for: r) { slices in slices[0][30] ^= 0x01 }
            let (m2, chunks2) = try messages(bad, r)
            for msg in chunks2 + [m2] { _ = try await store.ingest(msg, providerKeys: keys) }
            let badCriteria = try #require(try await store.package(bad.manifest.packageId, viewer: nil).criteria)
            #expect(!badCriteria.admissible && badCriteria.status(.correct) == .fail)
        }
    }

    /// A manifest too large for one Kafka message comes in parts (any order, repeated): the
    /// package is applied once every part is in, and a forged part is dead-lettered.
    @Test func aManifestInPartsIsAppliedOnceEveryPartIsIn() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            let p = try package(for: r)
            let (_, chunks) = try messages(p, r)
            let whole = try CanonicalJSON.encode(p.body)
            let cut = [0, whole.count / 3, 2 * whole.count / 3, whole.count]
            let pid = p.manifest.packageId
            func part(_ i: Int, bytes: [UInt8]? = nil, count: Int = 3) throws -> KafkaMessage {
                let b = bytes ?? Array(whole[cut[i]..<cut[i + 1]])
                return try message(.manifestPart, r.id, ManifestPartBody(packageId: pid, index: i, count: count, size: b.count, sha256: Digest.sha256Hex(b),
                                                                         bodySha256: Digest.sha256Hex(whole)),
                                   id: .derived("manifest-part", pid.lowercased, String(i)), chunk: b)
            }
            // A part whose bytes differ from its envelope's hash, and one that disagrees on the count.
            var forged = try part(1)
            forged.value[0] ^= 0x01
            #expect(try await store.ingest(forged, providerKeys: keys) == .deadLettered("manifest part SHA-256 differs from its envelope"))
            #expect(try await store.ingest(try part(2), providerKeys: keys) == .applied(.manifestPart))
            let disagreeing = try message(.manifestPart, r.id, ManifestPartBody(packageId: pid, index: 0, count: 4, size: 3, sha256: Digest.sha256Hex([1, 2, 3]),
                                                                                 bodySha256: Digest.sha256Hex(whole)), chunk: [1, 2, 3])
            if case .deadLettered(let why) = try await store.ingest(disagreeing, providerKeys: keys) { #expect(why.contains("disagrees")) } else { Issue.record("accepted") }
            #expect(try await store.ingest(try part(0), providerKeys: keys) == .applied(.manifestPart))
            #expect(try await store.ingest(try part(0), providerKeys: keys) == .duplicate)
            var missing = try await client.query("SELECT count(*) FROM packages WHERE id = \(pid)").collect()[0].decode(Int.self)
            #expect(missing == 0)  // not yet: a part is missing
            #expect(try await store.ingest(try part(1), providerKeys: keys) == .applied(.manifestPart))
            for msg in chunks { _ = try await store.ingest(msg, providerKeys: keys) }
            let view = try await store.package(pid, viewer: nil)
            #expect(view.state == .verified && view.criteria?.admissible == true)
            missing = try await client.query("SELECT count(*) FROM manifest_parts").collect()[0].decode(Int.self)
            #expect(missing == 0)  // the parts are gone once applied
        }
    }

    @Test func everyStatusUpdatesTheProgressShown() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, _, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            #expect(try await store.request(r.id, viewer: nil).progress == nil)
            _ = try await store.ingest(try message(.status, r.id, StatusBody(phase: .extracting, percent: 10)), providerKeys: keys)
            _ = try await store.ingest(try message(.status, r.id, StatusBody(phase: .streaming, percent: 60)), providerKeys: keys)
            let view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .inProgress)
            #expect(view.progress?.phase == "streaming" && view.progress?.percent == 60)
            #expect(view.timeline.filter { $0.state == "in-progress" }.count == 1)
        }
    }

    /// A message id seen before: the same content (even signed again: ES256 signatures differ)
    /// is a duplicate; other content is a conflict, dead-lettered with its reason, and has no
    /// effect (it used to be dropped silently). Out-of-range numbers are refused too.
    @Test func aMessageIdAppliedBeforeWithOtherContentIsAConflict() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, _, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            let id = UUID()
            #expect(try await store.ingest(try message(.status, r.id, StatusBody(phase: .extracting, percent: 10), id: id), providerKeys: keys) == .applied(.status))
            #expect(try await store.ingest(try message(.status, r.id, StatusBody(phase: .extracting, percent: 10), id: id), providerKeys: keys) == .duplicate)
            let conflict = try await store.ingest(try message(.status, r.id, StatusBody(phase: .streaming, percent: 90), id: id), providerKeys: keys)
            guard case .deadLettered(let why) = conflict else { Issue.record("not refused: \(conflict)"); return }
            #expect(why.contains("conflict"))
            #expect(try await store.request(r.id, viewer: nil).progress?.percent == 10)
            for percent in [101, -1, Int.max] {
                let bad = try await store.ingest(try message(.status, r.id, StatusBody(phase: .streaming, percent: percent)), providerKeys: keys)
                guard case .deadLettered(let reason) = bad else { Issue.record("percent \(percent) accepted"); continue }
                #expect(reason == "malformed: body.percent must be an integer from 0 to 100", "\(reason)")
            }
        }
    }

    @Test func aWholePackageIsVerifiedOnceEvenWhenEveryMessageArrivesTwice() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            #expect(try await store.ingest(try message(.ack, r.id, AckBody(requestHash: r.hash), id: .derived("ack")), providerKeys: keys) == .applied(.ack))
            let p = try package(for: r)
            let (m, chunks) = try messages(p, r)
            // The manifest first, then the chunks in reverse: each waits in the chunk store until
            // those before it are in, and finalisation waits for the last piece.
            for msg in [m] + chunks.reversed() {
                let type = try SignedEnvelope.open(msg.header(Topics.envelopeHeader) ?? msg.value) { _ in provider.publicKey }.header.type
                #expect(try await store.ingest(msg, providerKeys: keys) == .applied(type))
            }
            // Redelivery of everything: no second effect.
            for msg in chunks + [m] {
                #expect(try await store.ingest(msg, providerKeys: keys) == .duplicate)
            }
            let view = try await store.request(r.id, viewer: nil)
            #expect(view.state == .verified)
            #expect(view.packages.count == 1)
            #expect(view.packages[0].chunksReceived == p.chunks.count)
            let stored = try await client.query("SELECT count(*) FROM package_chunks").collect()[0].decode(Int.self)
            #expect(stored == p.chunks.count)
            let receipts = try await client.query("SELECT count(*) FROM outbox WHERE message_type = 'receipt'").collect()[0].decode(Int.self)
            #expect(receipts == 1)
            let pkg = try await store.package(p.manifest.packageId, viewer: nil)
            #expect(pkg.verification?.valid == true)
            #expect(pkg.signer == "prov-a" && pkg.timeStampedAt != nil)
            #expect(pkg.timeStampAccuracyMicroseconds == 1_000_000)
        }
    }

    @Test func aProviderWithAnRSACertificateDeliversAVerifiedPackage() async throws {
        let rsa = try IngestTests(pki: TestPKI(signerName: "prov-a", rsaSigner: true))
        try await TestServices.withStore(tsaTrust: rsa.pki.tsaCA) { store, _, _ in
            let r = try await rsa.approvedRequest(store)
            let keys = try await store.providers()
            let p = try rsa.package(for: r)
            let (m, chunks) = try rsa.messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let pkg = try await store.package(p.manifest.packageId, viewer: nil)
            #expect(pkg.state == .verified, "\(pkg.verification?.failures ?? [])")
        }
    }

    @Test func signaturesByAnotherCAOrTimeStampsFromAnUntrustedTSAAreRejected() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, _, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            // Same provider name, but a certificate from another CA and another TSA.
            let impostor = try TestPKI(signerName: "prov-a")
            var p = try package(for: r)
            p.body = try signed(p.manifest, by: impostor)
            let (m, chunks) = try messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let pkg = try await store.package(p.manifest.packageId, viewer: nil)
            #expect(pkg.state == .rejected)
            let codes = Set(pkg.verification?.failures.map { String($0.prefix { $0 != ":" }) } ?? [])
            #expect(codes == ["untrusted-signer", "time-stamp"])
        }
    }

    @Test func aSignatureByAnotherProvidersCertificateIsRejected() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, _, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            var p = try package(for: r)
            // A certificate from the same CA, issued to another provider.
            let otherKey = try X509.generateKey()
            let other = try X509.issue(commonName: "prov-z", subjectKey: otherKey, issuerCertificate: pki.providerCA, issuerKey: pki.providerCAKey,
                                       notBefore: Date(timeIntervalSinceNow: -60), notAfter: Date(timeIntervalSinceNow: 86_400), serial: 9, role: .signer)
            let signature = try CMS.sign(try CanonicalJSON.encode(p.manifest), certificate: other, key: otherKey)
            let tsr = try pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(signature), nonce: TimeStamp.makeNonce()), serial: 8)
            p.body = ManifestBody(manifest: p.manifest, signature: Data(signature).base64EncodedString(), timeStamp: Data(tsr).base64EncodedString())
            let (m, chunks) = try messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let pkg = try await store.package(p.manifest.packageId, viewer: nil)
            #expect(pkg.verification?.failures.contains { $0.hasPrefix("wrong-provider") } == true)
        }
    }

    @Test func badMessagesGoToDeadLettersWithAReasonAndTheConsumerMovesOn() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            var garbage = KafkaMessage(topic: topic, partition: 0, offset: 9001, key: [], value: Array("{not json".utf8))
            guard case .deadLettered(let why) = try await store.ingest(garbage, providerKeys: keys) else { Issue.record("garbage accepted"); return }
            #expect(why.hasPrefix("malformed"))
            let forged = try message(.ack, r.id, AckBody(requestHash: r.hash), signer: SigningKey.generate())
            #expect(try await store.ingest(forged, providerKeys: keys) == .deadLettered("badSignature: signature does not verify with the sender's registered key"))
            let unknown = try message(.ack, UUID(), AckBody(requestHash: r.hash))
            #expect(try await store.ingest(unknown, providerKeys: keys) == .deadLettered("unknown request"))
            let wrongHash = try message(.ack, r.id, AckBody(requestHash: String(repeating: "0", count: 64)))
            guard case .deadLettered = try await store.ingest(wrongHash, providerKeys: keys) else { Issue.record("wrong hash accepted"); return }
            var wrongTopic = try message(.ack, r.id, AckBody(requestHash: r.hash))
            wrongTopic.topic = "custos.from.someone-else"
            #expect(try await store.ingest(wrongTopic, providerKeys: keys) == .deadLettered("unknownSender: sender is not registered"))
            // A chunk whose bytes differ from its own envelope's hash.
            let p = try package(for: r)
            var (m, chunks) = try messages(p, r)
            #expect(try await store.ingest(m, providerKeys: keys) == .applied(.manifest))
            chunks[0].value[0] ^= 0x01
            #expect(try await store.ingest(chunks[0], providerKeys: keys) == .deadLettered("chunk SHA-256 differs from its envelope"))
            // The same offset redelivered dead-letters once; a good message afterwards is applied.
            garbage.offset = 9001
            _ = try await store.ingest(garbage, providerKeys: keys)
            #expect(try await store.ingest(try message(.ack, r.id, AckBody(requestHash: r.hash)), providerKeys: keys) == .applied(.ack))
            let letters = try await client.query("SELECT reason FROM dead_letters ORDER BY id").collect().map { try $0.decode(String.self) }
            #expect(letters.count == 6)
            #expect(letters.allSatisfy { !$0.contains("+849") })
        }
    }

    /// A message as another implementation may write it: its ids in upper case, signed as sent.
    func upperCaseMessage<Body: Codable & Sendable>(_ type: MessageType, _ request: UUID, _ body: Body) throws -> (KafkaMessage, id: String) {
        let id = UUID().uuidString
        #expect(id == id.uppercased())
        guard case .object(var members) = try CanonicalJSON.tree(Envelope(type: type, id: UUID(), requestId: request, sender: "prov-a", body: body)) else {
            throw IngestRejection(reason: "not an object")
        }
        members["id"] = .string(id)
        members["requestId"] = .string(request.uuidString)
        let signature = try provider.sign(CanonicalJSON.serialize(.object(members)))
        members["signature"] = .object(["alg": .string(provider.algorithm), "keyId": .string(provider.publicKey.keyId), "value": .string(signature)])
        offset.next += 1
        return (KafkaMessage(topic: topic, partition: 0, offset: offset.next, key: [], value: CanonicalJSON.serialize(.object(members))), id)
    }

    @Test func everyAuthenticatedMessageNotAppliedIsAnsweredWithASignedReceiptThatEchoesItsId() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            func receipts() async throws -> [(topic: String, envelope: Envelope<ReceiptBody>, bytes: [UInt8])] {
                try await client.query("SELECT topic, payload FROM outbox WHERE message_type = 'receipt' ORDER BY id").collect().map { row in
                    let (topic, payload) = try row.decode((String, ByteBuffer).self)
                    let bytes = Array(payload.readableBytesView)
                    let opened = try SignedEnvelope.open(bytes) { $0 == "broker" ? store.signer.publicKey : nil }
                    return (topic, try SignedEnvelope.body(ReceiptBody.self, from: opened.json), bytes)
                }
            }
            // An ack whose hash is not the request's, with its id in upper case.
            let (wrongHash, id) = try upperCaseMessage(.ack, r.id, AckBody(requestHash: String(repeating: "0", count: 64)))
            guard case .deadLettered(let reason) = try await store.ingest(wrongHash, providerKeys: keys) else { Issue.record("wrong hash accepted"); return }
            var answered = try await receipts()
            try #require(answered.count == 1)
            let receipt = answered[0]
            #expect(receipt.topic == Topics.toProvider("prov-a") && receipt.envelope.requestId == r.id)
            #expect(receipt.envelope.body.messageId == id, "the id is echoed as sent, in upper case")
            #expect(receipt.envelope.body.messageType == "ack" && receipt.envelope.body.outcome == .rejected)
            #expect(receipt.envelope.body.reasons == [reason] && receipt.envelope.body.packageId == nil)
            #expect(!String(decoding: receipt.bytes, as: UTF8.self).contains(r.id.uuidString), "Custos writes its own ids in lower case")
            // Redelivered (at another offset): dead-lettered again, answered once.
            var again = wrongHash
            again.offset += 1000
            _ = try await store.ingest(again, providerKeys: keys)
            #expect(try await receipts().count == 1)
            // A message for a request the broker does not know, and a status out of range.
            let stranger = UUID()
            _ = try await store.ingest(try message(.ack, stranger, AckBody(requestHash: r.hash)), providerKeys: keys)
            _ = try await store.ingest(try message(.status, r.id, StatusBody(phase: .streaming, percent: 101)), providerKeys: keys)
            answered = try await receipts()
            #expect(answered.map(\.envelope.body.reasons) == [[reason], ["unknown request"], ["malformed: body.percent must be an integer from 0 to 100"]])
            #expect(answered[1].envelope.requestId == stranger)
            // Chunks whose results do not start at offset 0: one answer for the package and
            // reason, not one per chunk.
            let p = try package(for: r)
            try #require(p.chunks.count > 1)
            for (i, bytes) in p.chunks.enumerated() {
                let chunk = try message(.chunk, r.id, ChunkBody(packageId: p.manifest.packageId, index: i, size: bytes.count, sha256: Digest.sha256Hex(bytes),
                                                               results: [.init(result: 0, offset: 1)]), chunk: bytes)
                _ = try await store.ingest(chunk, providerKeys: keys)
            }
            answered = try await receipts()
            try #require(answered.count == 4)
            #expect(answered[3].envelope.body.messageType == "chunk")
            #expect(answered[3].envelope.body.reasons.first?.hasPrefix("malformed: the chunk's results") == true, "\(answered[3].envelope.body.reasons)")
            // What cannot be authenticated is never answered: it may not come from the provider.
            _ = try await store.ingest(try message(.ack, r.id, AckBody(requestHash: r.hash), signer: SigningKey.generate()), providerKeys: keys)
            _ = try await store.ingest(KafkaMessage(topic: topic, partition: 0, offset: 777, key: [], value: Array("{not json".utf8)), providerKeys: keys)
            #expect(try await receipts().count == 4)
        }
    }

    @Test func aPackageWhoseContentDiffersFromItsSignedManifestIsRejectedWithReasons() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            // Each chunk is consistent with its own envelope, but not with the signed manifest.
            let p = try package(for: r) { $0[1][3] ^= 0x20 }
            let (m, chunks) = try messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let pkg = try await store.package(p.manifest.packageId, viewer: nil)
            #expect(pkg.state == .rejected)
            #expect(pkg.verification?.failures.contains { $0.hasPrefix("chunk-hash") } == true)
            #expect(pkg.verification?.failures.contains { $0.hasPrefix("records-root") } == true)
            #expect(try await store.request(r.id, viewer: nil).state == .delivered)
            let receipt = try await client.query("SELECT payload FROM outbox WHERE message_type = 'receipt'").collect()[0].decode(ByteBuffer.self)
            let opened = try SignedEnvelope.open(Array(receipt.readableBytesView)) { _ in store.signer.publicKey }
            let body = try SignedEnvelope.body(ReceiptBody.self, from: opened.json).body
            #expect(body.outcome == .rejected && !body.reasons.isEmpty)
        }
    }

    @Test func aManifestBoundToAnotherRequestHashIsRejected() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, _, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            var other = r
            other.hash = String(repeating: "e", count: 64)
            let p = try package(for: other)
            let (m, chunks) = try messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: keys) }
            let pkg = try await store.package(p.manifest.packageId, viewer: nil)
            #expect(pkg.state == .rejected)
            #expect(pkg.verification?.failures.contains { $0.hasPrefix("request-hash") } == true)
        }
    }
}
