import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import Foundation
import Testing

@Suite("Signed envelopes")
struct EnvelopeTests {
    let broker = SigningKey.generate()
    let other = SigningKey.generate()

    func sample() throws -> [UInt8] {
        let envelope = Envelope(type: .ack, id: UUID(), requestId: UUID(), sender: "broker",
                                body: AckBody(requestHash: String(repeating: "a", count: 64)))
        return try SignedEnvelope.encode(envelope, signer: broker)
    }

    func open(_ bytes: [UInt8]) throws -> EnvelopeHeader {
        try SignedEnvelope.open(bytes) { $0 == "broker" ? broker.publicKey : nil }.header
    }

    @Test func roundTrips() throws {
        let header = try open(try sample())
        #expect(header.type == .ack)
    }

    @Test func aFlippedBitIsCaught() throws {
        var bytes = try sample()
        let i = try #require(bytes.firstIndex(of: UInt8(ascii: "a")))
        bytes[i] ^= 0x02  // 'a' → 'c': still valid JSON, different content
        #expect { try open(bytes) } throws: { ($0 as? SignedEnvelope.DecodeError)?.code == .badSignature }
    }

    @Test func anotherKeysSignatureIsRefused() throws {
        let bytes = try sample()
        #expect { try SignedEnvelope.open(bytes) { _ in other.publicKey } } throws: { ($0 as? SignedEnvelope.DecodeError)?.code == .badSignature }
    }

    @Test func unknownSendersAndGarbageAreRefused() throws {
        var bytes = try sample()
        #expect { try SignedEnvelope.open(bytes) { _ in nil } } throws: { ($0 as? SignedEnvelope.DecodeError)?.code == .unknownSender }
        bytes += Array(" trailing".utf8)
        #expect { try open(bytes) } throws: { ($0 as? SignedEnvelope.DecodeError)?.code == .malformed }
    }

    @Test func aStrippedSignatureIsRefused() throws {
        guard case .object(var members) = try JSONParser.parse(try sample()) else { Issue.record("not an object"); return }
        members["signature"] = nil
        #expect { try open(CanonicalJSON.serialize(.object(members))) } throws: { ($0 as? SignedEnvelope.DecodeError)?.code == .badSignature }
    }

    @Test func reorderedMembersStillVerify() throws {
        // A JSON library on the other side may reorder members; canonicalisation makes that harmless.
        guard case .object(let members) = try JSONParser.parse(try sample()) else { return }
        let reordered = "{" + members.keys.sorted(by: >).map { k in
            "\"\(k)\":" + String(decoding: CanonicalJSON.serialize(members[k]!), as: UTF8.self)
        }.joined(separator: ", ") + "}"
        #expect(try open(Array(reordered.utf8)).type == .ack)
    }
}

@Suite("Chunking")
struct ChunkTests {
    @Test(arguments: [0, 1, 1023, 1024, 1025, 4096, 10_000])
    func sizesAndHashesDoNotDependOnSlicing(length: Int) {
        let data = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        var whole = ChunkAccumulator(chunkSize: 1024)
        whole.append(data)
        var sliced = ChunkAccumulator(chunkSize: 1024)
        var i = 0
        while i < data.count { let n = min(7 + i % 300, data.count - i); sliced.append(Array(data[i..<i + n])); i += n }
        let a = whole.finish(), b = sliced.finish()
        #expect(a.chunks == b.chunks)
        #expect(a.sha256 == b.sha256)
        #expect(a.size == Int64(length))
        #expect(a.chunks.count == (length + 1023) / 1024)
        #expect(a.chunks.allSatisfy { $0.size <= 1024 && $0.size > 0 })
        #expect(a.sha256 == Digest.sha256Hex(data))
        if let first = a.chunks.first { #expect(first.sha256 == Digest.sha256Hex(data.prefix(1024))) }
    }
}

@Suite("Package verification")
struct PackageVerifierTests {
    let provider = SigningKey.generate()
    let requestId = UUID()
    let requestHash = String(repeating: "b", count: 64)
    let content: [UInt8] = Array(String(repeating: "{\"category\":\"traffic\"}\n", count: 200).utf8)

    func build() throws -> (Manifest, String, ObservedContent) {
        var acc = ChunkAccumulator(chunkSize: 1000)
        acc.append(content)
        let (chunks, sha, size) = acc.finish()
        let manifest = Manifest(
            packageId: UUID(), requestId: requestId, requestHash: requestHash, providerId: "prov", asOf: Timestamp.now(), createdAt: Timestamp.now(),
            results: [.init(target: Target(type: .msisdn, value: "+84912345678"), category: .traffic, status: .data, recordCount: 200)],
            content: .init(size: size, sha256: sha, recordCount: 200), chunks: chunks)
        var observed: [Int: (sha256: String, size: Int)] = [:]
        for (i, c) in chunks.enumerated() { observed[i] = (c.sha256, c.size) }
        return (manifest, try provider.sign(CanonicalJSON.encode(manifest)), ObservedContent(chunkHashes: observed, contentSha256: sha, contentSize: size))
    }

    func verify(_ m: Manifest, _ sig: String, _ o: ObservedContent, key: VerifyingKey? = nil, hash: String? = nil) -> PackageVerification {
        PackageVerifier.verify(manifest: m, signature: sig, providerKey: key ?? provider.publicKey, expectedProvider: "prov",
                               expectedRequest: requestId, expectedRequestHash: hash ?? requestHash, observed: o)
    }

    @Test func aGoodPackageVerifies() throws {
        let (m, s, o) = try build()
        #expect(verify(m, s, o).valid)
    }

    @Test func mutationsAreEachCaught() throws {
        let (m, s, o) = try build()
        var missing = o; missing.chunkHashes[2] = nil
        #expect(verify(m, s, missing).failures.map(\.code).contains(.chunkMissing))
        var flipped = o; flipped.chunkHashes[1] = (String(repeating: "0", count: 64), 1000)
        #expect(verify(m, s, flipped).failures.map(\.code).contains(.chunkHash))
        var content = o; content.contentSha256 = String(repeating: "1", count: 64)
        #expect(verify(m, s, content).failures.map(\.code).contains(.contentHash))
        var edited = m; edited.content.recordCount += 1
        #expect(verify(edited, s, o).failures.map(\.code).contains(.signature))
        #expect(verify(m, s, o, key: SigningKey.generate().publicKey).failures.map(\.code) == [.signature])
        #expect(verify(m, s, o, hash: String(repeating: "c", count: 64)).failures.map(\.code) == [.requestHash])
    }

    @Test func everyFailureIsReportedNotJustTheFirst() throws {
        let (m, s, o) = try build()
        var bad = o
        bad.chunkHashes[0] = nil
        bad.contentSha256 = String(repeating: "1", count: 64)
        let codes = Set(verify(m, s, bad, key: SigningKey.generate().publicKey).failures.map(\.code))
        #expect(codes.isSuperset(of: [.chunkMissing, .contentHash, .signature]))
    }
}
