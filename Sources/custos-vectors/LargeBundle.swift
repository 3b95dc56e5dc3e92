import Crypto
import CustosCanonicalJSON
import CustosCriteria
import CustosEvidence
import CustosModel
import CustosPKI
import CustosTestSupport
import Foundation

/// A large valid bundle for the verify benchmark, written in constant memory: the content goes
/// to a temporary file while chunks and the records root are computed, then the bundle is
/// assembled around a copy of it. `judged`: it also carries the broker's verdict on the four
/// criteria (criteria.json, admissible), so that `custos verify` judges the content again.
enum LargeBundle {
    static func write(mebibytes: Int, to path: String, trustDirectory: String, judged: Bool = false) throws {
        let pki = try TestPKI(signerName: BundleFactory.provider)
        let target = Target(type: .msisdn, value: "+84912345678")
        let request = ApprovedRequest(
            requestId: UUID(), spec: RequestSpec(
                caseId: UUID(), providerId: BundleFactory.provider,
                legalBasis: LegalBasis(decisionNumber: "QD-BENCH/2026", issuingAuthority: "Synthetic Authority", issuedOn: "2026-11-01"),
                targets: [target], categories: [.traffic], window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z")),
            submittedBy: "investigator", approvedBy: "approver", approvedAt: "2026-11-02T08:00:00.000Z")
        let requestBytes = try CanonicalJSON.encode(request)

        let contentPath = path + ".content"
        _ = FileManager.default.createFile(atPath: contentPath, contents: nil)
        let content = try FileHandle(forWritingTo: URL(fileURLWithPath: contentPath))
        var chunker = ChunkAccumulator()
        var tree = RecordTree()
        let goal = Int64(mebibytes) << 20
        var block: [UInt8] = []
        var n = 0
        var rng = SystemRandomNumberGenerator()
        while chunker.totalSize + Int64(block.count) < goal {
            // A CDR-sized record: about 230 bytes.
            let line = Array(#"{"category":"traffic","record":{"cellId":"452-04-\#(n % 65535)-\#(n % 251)","direction":"\#(n % 2 == 0 ? "outgoing" : "incoming")","durationSeconds":\#(UInt16.random(in: 0...3600, using: &rng)),"otherParty":"+849\#(10_000_000 + n % 89_999_999)"},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-\#(10 + n % 20)T12:\#(10 + n % 50):00Z"}"#.utf8)
            line.withUnsafeBytes { tree.append(record: $0) }
            block += line
            block.append(0x0A)
            n += 1
            if block.count >= 1 << 20 {
                chunker.append(block)
                try content.write(contentsOf: block)
                block.removeAll(keepingCapacity: true)
            }
        }
        chunker.append(block)
        try content.write(contentsOf: block)
        try content.close()
        let (chunks, root, size) = chunker.finish()
        let manifest = Manifest(
            packageId: UUID(), requestId: request.requestId, requestHash: Digest.sha256Hex(requestBytes), providerId: BundleFactory.provider,
            asOf: Timestamp.now(), createdAt: Timestamp.now(),
            results: [.init(target: target, category: .traffic, status: .data, recordCount: tree.count, size: tree.size, recordsRoot: tree.root,
                            coverage: .init(from: request.window.from, to: request.window.to, retainedSince: "2025-10-01T00:00:00Z"))],
            content: .init(size: size, recordCount: tree.count), chunks: chunks, chunksRoot: root)
        let manifestBytes = try CanonicalJSON.encode(manifest)
        let signature = try CMS.sign(manifestBytes, certificate: pki.signer, key: pki.signerKey)
        let timeStamp = try pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(signature), nonce: TimeStamp.makeNonce()), serial: 1)

        // The broker's verdict: the content judged as the broker judges it, delivered just
        // after its time-stamp, its clock ten days on; the digests on disk (constant memory).
        var criteria: [UInt8]?
        if judged {
            let spill = try SpillingDigests(directory: URL(fileURLWithPath: path + ".digests"))
            var judge = PackageJudge(request: request, manifest: manifest, digests: spill)
            let input = try FileHandle(forReadingFrom: URL(fileURLWithPath: contentPath))
            while let data = try input.read(upToCount: 8 << 20), !data.isEmpty { data.withUnsafeBytes { judge.consume(content: $0) } }
            try input.close()
            guard case .valid(let token) = TimeStamp.verify(response: timeStamp, sha256: Digest.sha256Bytes(signature), trust: pki.tsaCA) else {
                throw ValidationFailure("the bench time-stamp does not verify")
            }
            let delivered = Date().addingTimeInterval(5)
            criteria = try CanonicalJSON.encode(judge.finish(checks: [], delivery: .init(deliveredAt: delivered, deadline: delivered.addingTimeInterval(10 * 86_400),
                                                                                          timeStampedAt: token.genTime),
                                                             judgedAt: Timestamp.format(delivered)))
        }

        var log = TestCustodyLog()
        let verification = Array("{}".utf8)
        let signerPEM = try CertificateInfo(pem: pki.signer).pem
        let readme = EvidenceBundle.readme(manifest: manifest, signer: BundleFactory.provider, timeStampedAt: nil)
        try log.recordHistory(of: manifest, members: .init(manifest: manifestBytes, signature: signature, timeStamp: timeStamp, verification: verification,
                                                           criteria: criteria, readme: readme))
        let custody = try log.custody(packageId: manifest.packageId, requestId: manifest.requestId, pki: pki, stranger: pki)

        _ = FileManager.default.createFile(atPath: path, contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: path))
        let members = EvidenceBundle.members(manifest: manifestBytes, request: requestBytes, signature: signature, timeStamp: timeStamp,
                                             signerPEM: signerPEM, verification: verification, criteria: criteria, custody: custody, readme: readme)
        try out.write(contentsOf: EvidenceBundle.head(members: members, packageId: manifest.packageId, contentSize: size))
        let input = try FileHandle(forReadingFrom: URL(fileURLWithPath: contentPath))
        var contentHash = SHA256()
        while let data = try input.read(upToCount: 8 << 20), !data.isEmpty {
            contentHash.update(data: data)
            try out.write(contentsOf: data)
        }
        try input.close()
        // case.jsonld (CASE/UCO) after the content, as the broker writes it.
        let graph = try EvidenceBundle.caseGraph(members: members, contentSize: size,
                                                 contentSha256: contentHash.finalize().map { String(format: "%02x", $0) }.joined(),
                                                 request: request, manifest: manifest)
        try out.write(contentsOf: EvidenceBundle.tail(contentSize: size, caseGraph: (manifest.packageId, graph)))
        try out.close()
        try FileManager.default.removeItem(atPath: contentPath)
        try FileManager.default.createDirectory(atPath: trustDirectory, withIntermediateDirectories: true)
        try Data(pki.providerCA.utf8).write(to: URL(fileURLWithPath: trustDirectory + "/provider-ca.pem"))
        try Data(pki.tsaCA.utf8).write(to: URL(fileURLWithPath: trustDirectory + "/tsa-ca.pem"))
        try Data(pki.custodyCA.utf8).write(to: URL(fileURLWithPath: trustDirectory + "/custody-ca.pem"))
        try Data(pki.witnessCertificate.utf8).write(to: URL(fileURLWithPath: trustDirectory + "/witnesses.pem"))
        print("wrote \(path): \(tree.count) records, \(size) bytes of content in \(chunks.count) chunks")
    }
}

struct ValidationFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
