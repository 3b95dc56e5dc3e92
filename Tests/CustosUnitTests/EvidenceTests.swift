import CustosMerkle
import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import CustosPKI
import CustosTestSupport
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

    /// Around a key change the receiver holds both keys, read from one PEM file: each message
    /// is checked with the key its keyId names; a third key's signature is still refused.
    @Test func aReceiverHoldingTheOldAndTheNewKeyVerifiesBoth() throws {
        let next = SigningKey.generate()
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("custos-keys-\(UUID().uuidString.lowercased()).pem")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data((broker.publicKey.pem + "\n" + next.publicKey.pem).utf8).write(to: file)
        let keys = try VerifyingKey.loadAll(path: file.path)
        #expect(keys == [broker.publicKey, next.publicKey])
        let envelope = Envelope(type: .ack, id: UUID(), requestId: UUID(), sender: "broker", body: AckBody(requestHash: String(repeating: "a", count: 64)))
        for signer in [broker, next] {
            #expect(try SignedEnvelope.open(try SignedEnvelope.encode(envelope, signer: signer), keysFor: { _ in keys }).header.type == .ack)
        }
        #expect { try SignedEnvelope.open(try SignedEnvelope.encode(envelope, signer: other), keysFor: { _ in keys }) } throws: {
            ($0 as? SignedEnvelope.DecodeError)?.code == .badSignature
        }
        try Data("no key here".utf8).write(to: file)
        #expect { try VerifyingKey.loadAll(path: file.path) } throws: { "\($0)".contains("holds no PUBLIC KEY") }
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

    @Test func rsaProvidersSignWithPS256AndAlgorithmsCannotBeSwapped() throws {
        let pki = try TestPKI(rsaSigner: true)
        let rsa = try SigningKey(pem: pki.signerKey)
        #expect(rsa.algorithm == "PS256")
        let fromCertificate = try VerifyingKey(certificate: try CertificateInfo(pem: pki.signer))
        #expect(fromCertificate == rsa.publicKey)
        #expect(try VerifyingKey(pem: fromCertificate.pem) == fromCertificate)
        let envelope = Envelope(type: .ack, id: UUID(), requestId: UUID(), sender: "prov-a", body: AckBody(requestHash: String(repeating: "a", count: 64)))
        let bytes = try SignedEnvelope.encode(envelope, signer: rsa)
        #expect(try SignedEnvelope.open(bytes) { _ in fromCertificate }.header.type == .ack)
        // An RSA-signed message is not accepted where a P-256 key is registered, nor the reverse.
        #expect { try SignedEnvelope.open(bytes) { _ in broker.publicKey } } throws: { ($0 as? SignedEnvelope.DecodeError)?.code == .badSignature }
        #expect { try SignedEnvelope.open(try sample()) { _ in fromCertificate } } throws: { ($0 as? SignedEnvelope.DecodeError)?.code == .badSignature }
        // CMS with an RSA signer verifies like P-256.
        let data = Array("manifest".utf8)
        let sig = try CMS.sign(data, certificate: pki.signer, key: pki.signerKey)
        guard case .valid = CMS.verify(signature: sig, data: data, trust: pki.providerCA, at: nil) else { Issue.record("RSA CMS refused"); return }
        #expect(throws: KeyError.self) { try SigningKey(pem: try X509.generateRSAKey(bits: 1024)) }
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
        #expect(a.chunksRoot == b.chunksRoot)
        #expect(a.size == Int64(length))
        #expect(a.chunks.count == (length + 1023) / 1024)
        #expect(a.chunks.allSatisfy { $0.size <= 1024 && $0.size > 0 })
        if let first = a.chunks.first { #expect(first.sha256 == Digest.sha256Hex(data.prefix(1024))) }
        let leaves = a.chunks.map { MerkleTree.leafHash(Data(hex: $0.sha256)!) }
        #expect(a.chunksRoot == MerkleTree.root(leafHashes: leaves[...]).hexString)
    }
}

/// A package built the way the connector builds one: records grouped by result.
struct SamplePackage {
    var manifest: Manifest
    var content: [UInt8]

    static let targets = [Target(type: .msisdn, value: "+84912345678"), Target(type: .msisdn, value: "+84987654321")]

    init(requestId: UUID = UUID(), requestHash: String = String(repeating: "b", count: 64), provider: String = "prov",
         recordsPerResult: [Int] = [40, 0, 25, 7], chunkSize: Int = 1000) {
        var content: [UInt8] = []
        var results: [Manifest.Result] = []
        var n = 0
        for target in Self.targets {
            for category in [DataCategory.traffic, .location] {
                var tree = RecordTree()
                for _ in 0..<recordsPerResult[n] {
                    let line = Array("{\"category\":\"\(category.rawValue)\",\"target\":{\"type\":\"msisdn\",\"value\":\"\(target.value)\"},\"n\":\(content.count)}".utf8)
                    line.withUnsafeBytes { tree.append(record: $0) }
                    content += line + [0x0A]
                }
                results.append(.init(target: target, category: category, status: tree.count > 0 ? .data : .noData,
                                     recordCount: tree.count, size: tree.size, recordsRoot: tree.root))
                n += 1
            }
        }
        var acc = ChunkAccumulator(chunkSize: chunkSize)
        acc.append(content)
        let (chunks, root, size) = acc.finish()
        manifest = Manifest(packageId: UUID(), requestId: requestId, requestHash: requestHash, providerId: provider, asOf: Timestamp.now(),
                            createdAt: Timestamp.now(), results: results, content: .init(size: size, recordCount: results.reduce(0) { $0 + $1.recordCount }),
                            chunks: chunks, chunksRoot: root)
        self.content = content
    }

    func check(_ content: [UInt8]? = nil, manifest: Manifest? = nil, slice: Int = 333) -> Set<PackageVerification.Failure.Code> {
        var v = ContentVerifier(manifest: manifest ?? self.manifest)
        let bytes = content ?? self.content
        var i = 0
        while i < bytes.count { let n = min(slice, bytes.count - i); v.consume(Array(bytes[i..<i + n])); i += n }
        return Set(v.finish().map(\.code))
    }
}

@Suite("Package content verification")
struct ContentVerifierTests {
    let sample = SamplePackage()

    @Test(arguments: [1, 7, 333, 1000, 100_000])
    func aGoodPackageVerifiesWhateverTheSlicing(slice: Int) {
        #expect(sample.check(slice: slice).isEmpty)
        #expect(PackageVerifier.checkManifest(sample.manifest, expectedProvider: "prov", expectedRequest: sample.manifest.requestId,
                                              expectedRequestHash: sample.manifest.requestHash).isEmpty)
    }

    @Test func mutationsAreEachCaughtWithTheirOwnReason() {
        var flipped = sample.content
        flipped[1500] ^= 0x01
        #expect(sample.check(flipped).isSuperset(of: [.chunkHash, .recordsRoot]))
        let missingChunk = Array(sample.content[..<1000] + sample.content[2000...])
        #expect(sample.check(missingChunk).contains(.chunkHash))
        #expect(sample.check(missingChunk).contains(.contentSize))
        let reordered = Array(sample.content[1000..<2000] + sample.content[..<1000] + sample.content[2000...])
        #expect(sample.check(reordered).contains(.chunkHash))
        #expect(sample.check(sample.content + Array("garbage".utf8)) == [.trailingData, .contentSize])
        #expect(sample.check(Array(sample.content.dropLast(10))).contains(.chunkMissing))
        var swapped = sample.manifest
        swapped.results[0].recordsRoot = sample.manifest.results[2].recordsRoot
        #expect(sample.check(manifest: swapped) == [.recordsRoot])
        var badRoot = sample.manifest
        badRoot.chunksRoot = String(repeating: "0", count: 64)
        #expect(sample.check(manifest: badRoot) == [.chunksRoot])
        var miscounted = sample.manifest
        miscounted.results[2].recordCount += 1
        #expect(sample.check(manifest: miscounted) == [.resultCount])
    }

    @Test func theManifestIsCheckedAgainstTheRequest() {
        let m = sample.manifest
        let codes = PackageVerifier.checkManifest(m, expectedProvider: "other", expectedRequest: UUID(), expectedRequestHash: "c").map(\.code)
        #expect(Set(codes) == [.wrongProvider, .wrongRequest, .requestHash])
        var oversized = m
        oversized.chunks[0].size = Topics.maximumChunkBytes + 1
        #expect(PackageVerifier.checkManifest(oversized, expectedProvider: "prov", expectedRequest: m.requestId, expectedRequestHash: m.requestHash)
            .map(\.code).contains(.chunkSize))
        var inconsistent = m
        inconsistent.content.recordCount += 1
        #expect(PackageVerifier.checkManifest(inconsistent, expectedProvider: "prov", expectedRequest: m.requestId, expectedRequestHash: m.requestHash)
            .map(\.code) == [.resultCounts])
    }

    /// A provider's sizes and counts that wrap around Int64 when added (or are negative) fail
    /// as not adding up; they used to be summed unchecked, an arithmetic overflow that stops
    /// the broker or `custos verify`.
    @Test func sizesThatOverflowWhenAddedFailInsteadOfCrashing() {
        let m = sample.manifest
        #expect(m.results.count >= 1)
        var huge = m
        huge.results = Array(repeating: m.results[0], count: 3)
        for i in huge.results.indices { huge.results[i].size = Int64.max / 2; huge.results[i].recordCount = Int.max / 2 }
        huge.content.size = Int64.max
        huge.content.recordCount = Int.max
        let codes = PackageVerifier.checkManifest(huge, expectedProvider: "prov", expectedRequest: m.requestId, expectedRequestHash: m.requestHash).map(\.code)
        #expect(codes.contains(.resultSize) && codes.contains(.resultCounts) && codes.contains(.contentSize))
        var negative = m
        negative.results[0].size = -1
        #expect(PackageVerifier.checkManifest(negative, expectedProvider: "prov", expectedRequest: m.requestId, expectedRequestHash: m.requestHash)
            .map(\.code).contains(.resultSize))
    }
}

extension Data {
    init?(hex: String) {
        var bytes: [UInt8] = []
        var i = hex.startIndex
        while i < hex.endIndex {
            guard let j = hex.index(i, offsetBy: 2, limitedBy: hex.endIndex), let b = UInt8(hex[i..<j], radix: 16) else { return nil }
            bytes.append(b)
            i = j
        }
        self.init(bytes)
    }
}
