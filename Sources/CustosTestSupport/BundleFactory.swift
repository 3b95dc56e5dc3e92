import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import CustosPKI
import Foundation

/// Makes export bundles from synthetic data, good ones and ones with one defect each: for the
/// test vectors in `schemas/package/vectors/` (written by `custos-vectors`) and for the tests.
public struct BundleFactory: Sendable {
    public static let provider = "vector-telco"
    public let pki: TestPKI
    /// Another CA, whose certificates the trust anchors do not cover.
    public let stranger: TestPKI

    public init(caYears: Double = 1) throws {
        pki = try TestPKI(signerName: Self.provider, signerValidity: Date(timeIntervalSinceNow: -86_400)...Date(timeIntervalSinceNow: caYears * 365 * 86_400), caYears: caYears)
        stranger = try TestPKI(signerName: Self.provider, caYears: caYears)
    }

    public enum Defect: String, CaseIterable, Sendable {
        case flippedBitInChunk = "flipped-bit-in-chunk"
        case missingChunk = "missing-chunk"
        case reorderedChunks = "reordered-chunks"
        case trailingGarbage = "trailing-garbage"
        case swappedMerkleRoot = "swapped-merkle-root"
        case manifestEditedAfterSigning = "manifest-edited-after-signing"
        case wrongSigner = "wrong-signer"
        case expiredCertificate = "expired-certificate"
        case untrustedCA = "untrusted-ca"
        case timeStampOverOtherData = "time-stamp-over-other-data"
        case custodyEventEdited = "custody-event-edited"
        case checkpointSignedByStranger = "checkpoint-signed-by-stranger"
        case verdictEventLeftOut = "verdict-event-left-out"

        /// The failure each defect must be reported with.
        public var expected: PackageVerification.Failure.Code {
            switch self {
            case .flippedBitInChunk, .reorderedChunks: .chunkHash
            case .missingChunk: .contentSize
            case .trailingGarbage: .trailingData
            case .swappedMerkleRoot: .recordsRoot
            case .manifestEditedAfterSigning: .signature
            case .expiredCertificate: .certificateExpired
            case .untrustedCA: .untrustedSigner
            case .wrongSigner: .wrongProvider
            case .timeStampOverOtherData: .timeStamp
            case .custodyEventEdited: .custodyProof
            case .checkpointSignedByStranger: .checkpointSignature
            case .verdictEventLeftOut: .custodyEvent
            }
        }
    }

    public struct Shape: Sendable {
        public var targets: [Target]
        public var categories: [DataCategory]
        /// Records per (target × category), in result order.
        public var records: [Int]
        public var cannotExecute: Set<DataCategory>
        public var chunkSize: Int

        public init(targets: [Target], categories: [DataCategory], records: [Int], cannotExecute: Set<DataCategory> = [], chunkSize: Int) {
            self.targets = targets
            self.categories = categories
            self.records = records
            self.cannotExecute = cannotExecute
            self.chunkSize = chunkSize
        }

        /// Two targets, two categories, one result without data, several chunks.
        public static let standard = Shape(targets: [Target(type: .msisdn, value: "+84912345678"), Target(type: .ipv4, value: "203.0.113.7")],
                                           categories: [.traffic, .location], records: [12, 0, 9, 5], chunkSize: 1024)
        /// One category the provider cannot execute, one chunk.
        public static let withCannotExecute = Shape(targets: [Target(type: .msisdn, value: "+84987654321")], categories: [.subscriber, .financial],
                                                    records: [3, 0], cannotExecute: [.financial], chunkSize: 4096)
    }

    /// A whole bundle; with a defect, the one mutation it names.
    public func bundle(_ shape: Shape = .standard, defect: Defect? = nil) throws -> [UInt8] {
        let request = ApprovedRequest(
            requestId: UUID(), spec: RequestSpec(
                caseId: UUID(), providerId: Self.provider,
                legalBasis: LegalBasis(decisionNumber: "QD-VECTOR/2026", issuingAuthority: "Synthetic Authority", issuedOn: "2026-11-01"),
                targets: shape.targets, categories: shape.categories,
                window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z")),
            submittedBy: "investigator", approvedBy: "approver", approvedAt: "2026-11-02T08:00:00.000Z")
        let requestBytes = try CanonicalJSON.encode(request)

        var content: [UInt8] = []
        var results: [Manifest.Result] = []
        var n = 0
        for target in shape.targets {
            for category in shape.categories {
                var tree = RecordTree()
                let count = shape.cannotExecute.contains(category) ? 0 : shape.records[n]
                for i in 0..<count {
                    let line = Array(#"{"category":"\#(category.rawValue)","record":{"seq":\#(i),"synthetic":true},"target":{"type":"\#(target.type.rawValue)","value":"\#(target.value)"},"time":"2026-10-1\#(i % 10)T12:00:00Z"}"#.utf8)
                    line.withUnsafeBytes { tree.append(record: $0) }
                    content += line + [0x0A]
                }
                let status: Manifest.Result.Status = shape.cannotExecute.contains(category) ? .cannotExecute : count > 0 ? .data : .noData
                results.append(.init(target: target, category: category, status: status, recordCount: count, size: tree.size, recordsRoot: tree.root,
                                     reason: status == .cannotExecute ? "no adapter configured for this category" : nil))
                n += 1
            }
        }
        var acc = ChunkAccumulator(chunkSize: shape.chunkSize)
        acc.append(content)
        let (chunks, root, size) = acc.finish()
        var manifest = Manifest(
            packageId: UUID(), requestId: request.requestId, requestHash: Digest.sha256Hex(requestBytes), providerId: Self.provider,
            asOf: "2026-11-02T09:00:00.000Z", createdAt: "2026-11-02T09:00:05.000Z", results: results,
            content: .init(size: size, recordCount: results.reduce(0) { $0 + $1.recordCount }), chunks: chunks, chunksRoot: root)
        if defect == .swappedMerkleRoot { (manifest.results[0].recordsRoot, manifest.results[2].recordsRoot) = (manifest.results[2].recordsRoot, manifest.results[0].recordsRoot) }

        var manifestBytes = try CanonicalJSON.encode(manifest)
        let signerCert: String, signerKey: String
        switch defect {
        case .wrongSigner:
            signerKey = try X509.generateKey()
            signerCert = try X509.issue(commonName: "another-telco", subjectKey: signerKey, issuerCertificate: pki.providerCA, issuerKey: pki.providerCAKey,
                                        notBefore: Date(timeIntervalSinceNow: -3600), notAfter: Date(timeIntervalSinceNow: 365 * 86_400), serial: 77, role: .signer)
        case .expiredCertificate:
            signerKey = try X509.generateKey()
            signerCert = try X509.issue(commonName: Self.provider, subjectKey: signerKey, issuerCertificate: pki.providerCA, issuerKey: pki.providerCAKey,
                                        notBefore: Date(timeIntervalSinceNow: -30 * 86_400), notAfter: Date(timeIntervalSinceNow: -86_400), serial: 78, role: .signer)
        case .untrustedCA:
            (signerCert, signerKey) = (stranger.signer, stranger.signerKey)
        default:
            (signerCert, signerKey) = (pki.signer, pki.signerKey)
        }
        let signature = try CMS.sign(manifestBytes, certificate: signerCert, key: signerKey)
        let stamped = defect == .timeStampOverOtherData ? Array("other data".utf8) : signature
        let timeStamp = try pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(stamped), nonce: TimeStamp.makeNonce()), serial: 1)
        if defect == .manifestEditedAfterSigning {
            manifest.asOf = "2026-11-01T09:00:00.000Z"
            manifestBytes = try CanonicalJSON.encode(manifest)
        }

        var body = content
        let c = shape.chunkSize
        switch defect {
        case .flippedBitInChunk: body[c + 17] ^= 0x04
        case .missingChunk: body.removeSubrange(c..<2 * c)
        case .reorderedChunks: body = Array(body[c..<2 * c] + body[..<c] + body[(2 * c)...])
        default: break
        }
        let verification = Array("{}".utf8)
        var log = TestCustodyLog()
        try log.recordHistory(of: manifest, verification: verification)
        let custodyDefect: TestCustodyLog.Defect? = switch defect {
        case .custodyEventEdited: .eventEditedAfterProof
        case .checkpointSignedByStranger: .checkpointSignedByStranger
        case .verdictEventLeftOut: .verdictEventLeftOut
        default: nil
        }
        let custody = try log.custody(packageId: manifest.packageId, requestId: manifest.requestId, pki: pki, stranger: stranger, defect: custodyDefect)
        let readme = EvidenceBundle.readme(manifest: manifest, signer: try CertificateInfo(pem: signerCert).commonName, timeStampedAt: nil)
        var out = EvidenceBundle.head(manifest: manifestBytes, request: requestBytes, signature: signature, timeStamp: timeStamp,
                                      signerPEM: signerCert, verification: verification, custody: custody, packageId: manifest.packageId,
                                      contentSize: Int64(body.count), readme: readme)
        out += body + EvidenceBundle.tail(contentSize: Int64(body.count))
        if defect == .trailingGarbage { out += Array("TRAILING GARBAGE".utf8) }
        return out
    }
}
