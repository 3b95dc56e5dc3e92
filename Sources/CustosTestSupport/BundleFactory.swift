import CustosCanonicalJSON
import CustosCriteria
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
        // Authentic bundles whose package fails one of the four criteria (named
        // criteria-<criterion>-<reason>): `custos verify` finds them inadmissible.
        case criteriaCorrectTargetOutOfScope = "criteria-correct-target-out-of-scope"
        case criteriaCompleteMissingResult = "criteria-complete-missing-result"
        case criteriaCleanDuplicateRecord = "criteria-clean-duplicate-record"
        case criteriaLiveDeliveredLate = "criteria-live-delivered-late"
        /// A no-data result while records of its category could not be read and were not sent
        /// (the manifest's `notSent`): đủ warns, and a warning is not admissible.
        case criteriaCompleteRecordsNotSent = "criteria-complete-records-not-sent"

        /// For a criteria defect: the criterion that fails and its reason code.
        public var criterion: (Verdict.Criterion, String)? {
            switch self {
            case .criteriaCorrectTargetOutOfScope: (.correct, "target-out-of-scope")
            case .criteriaCompleteMissingResult: (.complete, "missing-result")
            case .criteriaCleanDuplicateRecord: (.clean, "duplicate-record")
            case .criteriaLiveDeliveredLate: (.live, "delivered-late")
            case .criteriaCompleteRecordsNotSent: (.complete, "no-data-with-records-not-sent")
            default: nil
            }
        }

        /// For a criteria defect: the criterion's status (a warning is not a pass either).
        public var criterionStatus: Verdict.Status { self == .criteriaCompleteRecordsNotSent ? .warn : .fail }

        /// The failure each defect must be reported with.
        public var expected: PackageVerification.Failure.Code {
            switch self {
            case .criteriaCorrectTargetOutOfScope, .criteriaCompleteMissingResult, .criteriaCleanDuplicateRecord, .criteriaLiveDeliveredLate,
                 .criteriaCompleteRecordsNotSent: .notAdmissible
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
        /// Whether the bundle carries the broker's verdict on the four criteria (criteria.json).
        public var judged: Bool

        public init(targets: [Target], categories: [DataCategory], records: [Int], cannotExecute: Set<DataCategory> = [], chunkSize: Int, judged: Bool = true) {
            self.targets = targets
            self.categories = categories
            self.records = records
            self.cannotExecute = cannotExecute
            self.chunkSize = chunkSize
            self.judged = judged
        }

        /// Two targets, two categories, one result without data, several chunks; judged admissible.
        public static let standard = Shape(targets: [Target(type: .msisdn, value: "+84912345678"), Target(type: .msisdn, value: "+84987650001")],
                                           categories: [.traffic, .location], records: [12, 0, 9, 5], chunkSize: 1024)
        /// One category the provider cannot execute, one chunk; a bundle without a verdict
        /// (criteria.json is optional: a cannot-execute result would make the package only `warn` on đủ).
        public static let withCannotExecute = Shape(targets: [Target(type: .msisdn, value: "+84987654321")], categories: [.subscriber, .financial],
                                                    records: [3, 0], cannotExecute: [.financial], chunkSize: 4096, judged: false)
    }

    /// A record valid against its category's schema (schemas/records/), the `i`-th of its result.
    static func record(_ category: DataCategory, _ target: Target, _ i: Int) -> String {
        let fields = switch category {
        case .traffic: #"{"cellId":"452-04-1234-56","direction":"outgoing","durationSeconds":\#(60 + i),"otherParty":"+84907000123"}"#
        case .location: #"{"cellId":"452-04-1234-\#(10 + i)","latitude":21.0285,"longitude":105.8542}"#
        case .subscriber: #"{"contractStart":"2020-01-0\#(1 + i % 9)","name":"Synthetic Subscriber \#(i)"}"#
        case .financial: #"{"amount":\#(1000 + i),"counterparty":"SYN\#(i)","currency":"VND"}"#
        case .ipSession: #"{"bytesDown":\#(i),"bytesUp":\#(i),"publicIp":"203.0.113.7","publicPort":\#(1024 + i)}"#
        case .kycDocument: #"{"documentType":"national-id-card","sha256":"\#(String(repeating: "0", count: 62))\#(String(format: "%02x", i % 256))"}"#
        }
        return #"{"category":"\#(category.rawValue)","target":{"type":"\#(target.type.rawValue)","value":"\#(target.value)"},"time":"2026-10-1\#(i % 10)T12:00:00Z","record":\#(fields)}"#
    }

    /// A whole bundle; with a defect, the one mutation it names.
    /// `manifestTSA`: who time-stamps the manifest (default: the PKI's TSA); `renewedBy`: a
    /// TSA that renews that time-stamp at once (`renewals.json`, `TimeStampRenewal`).
    public func bundle(_ shape: Shape = .standard, defect: Defect? = nil, manifestTSA: TimeStamp.Authority? = nil,
                       renewedBy: TimeStamp.Authority? = nil) throws -> [UInt8] {
        let request = ApprovedRequest(
            requestId: UUID(), spec: RequestSpec(
                caseId: UUID(), providerId: Self.provider,
                legalBasis: LegalBasis(decisionNumber: "QD-VECTOR/2026", issuingAuthority: "Synthetic Authority", issuedOn: "2026-11-01"),
                targets: shape.targets, categories: shape.categories,
                window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z")),
            submittedBy: "investigator", approvedBy: "approver", approvedAt: "2026-11-02T08:00:00.000Z")
        let requestBytes = try CanonicalJSON.encode(request)
        let now = Date()

        var content: [UInt8] = []
        var results: [Manifest.Result] = []
        var n = 0
        for target in shape.targets {
            for category in shape.categories {
                var tree = RecordTree()
                let count = shape.cannotExecute.contains(category) ? 0 : shape.records[n]
                var lines = (0..<count).map { Self.record(category, target, $0) }
                if n == 0, defect == .criteriaCorrectTargetOutOfScope { lines.append(Self.record(category, Target(type: .msisdn, value: "+84900000009"), count)) }
                if n == 0, defect == .criteriaCleanDuplicateRecord { lines.append(lines[0]) }
                for text in lines {
                    let line = Array(text.utf8)
                    line.withUnsafeBytes { tree.append(record: $0) }
                    content += line + [0x0A]
                }
                let status: Manifest.Result.Status = shape.cannotExecute.contains(category) ? .cannotExecute : count > 0 ? .data : .noData
                results.append(.init(target: target, category: category, status: status, recordCount: lines.count, size: tree.size, recordsRoot: tree.root,
                                     reason: status == .cannotExecute ? "no adapter configured for this category" : nil,
                                     coverage: status == .data ? .init(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z", retainedSince: "2025-10-01T00:00:00Z") : nil))
                n += 1
            }
        }
        // A requested (target × category) left without a result: the no-data one.
        if defect == .criteriaCompleteMissingResult, let i = results.firstIndex(where: { $0.status == .noData }) { results.remove(at: i) }
        var acc = ChunkAccumulator(chunkSize: shape.chunkSize)
        acc.append(content)
        let (chunks, root, size) = acc.finish()
        var manifest = Manifest(
            packageId: UUID(), requestId: request.requestId, requestHash: Digest.sha256Hex(requestBytes), providerId: Self.provider,
            // Extracted just before the vectors are written, so that sống holds for the time-stamp made now.
            asOf: Timestamp.format(now.addingTimeInterval(-600)), createdAt: Timestamp.format(now.addingTimeInterval(-300)), results: results,
            content: .init(size: size, recordCount: results.reduce(0) { $0 + $1.recordCount }), chunks: chunks, chunksRoot: root)
        if defect == .criteriaCompleteRecordsNotSent, let noData = results.first(where: { $0.status == .noData }) {
            manifest.notSent = [.init(category: noData.category, reason: .unreadableTarget, count: 2)]
        }
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
        let timeStamp = try (manifestTSA ?? pki.tsa).respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(stamped), nonce: TimeStamp.makeNonce()), serial: 1)
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
        let custodyDefect: TestCustodyLog.Defect? = switch defect {
        case .custodyEventEdited: .eventEditedAfterProof
        case .checkpointSignedByStranger: .checkpointSignedByStranger
        case .verdictEventLeftOut: .verdictEventLeftOut
        default: nil
        }
        // The broker's verdict, judged on the content as sent (before any mutation of the bytes
        // above), against a delivery right after the time-stamp and a clock ten days on.
        var criteria: [UInt8]?
        if shape.judged {
            var judge = PackageJudge(request: request, manifest: manifest)
            content.withUnsafeBytes { judge.consume(content: $0) }
            let delivered = now.addingTimeInterval(5)
            let deadline = defect == .criteriaLiveDeliveredLate ? now.addingTimeInterval(-3600) : now.addingTimeInterval(10 * 86_400)
            // (The time-stamp over other data has no time that counts: judged against none.)
            var stampedAt: Date?
            if case .valid(let token) = TimeStamp.verify(response: timeStamp, sha256: Digest.sha256Bytes(signature), trust: pki.tsaCA) { stampedAt = token.genTime }
            criteria = try CanonicalJSON.encode(judge.finish(checks: [], delivery: .init(deliveredAt: delivered, deadline: deadline, timeStampedAt: stampedAt),
                                                             judgedAt: Timestamp.format(delivered)))
        }
        let signerInfo = try CertificateInfo(pem: signerCert)
        let readme = EvidenceBundle.readme(manifest: manifest, signer: signerInfo.commonName, timeStampedAt: nil)
        let renewals = try renewedBy.map { tsa in
            // Renewed with two other chains, under one time-stamp over their tree.
            let imprint = TimeStampRenewal.imprint(data: manifestBytes, signature: signature, tokens: [timeStamp])
            let batch = TimeStampRenewal.Batch(imprints: [Digest.sha256Bytes([1]), imprint, Digest.sha256Bytes([2])])
            let token = try tsa.respond(to: try TimeStamp.request(sha256: batch.root, nonce: TimeStamp.makeNonce()), serial: 2)
            return try CanonicalJSON.encode(RenewalsFile(manifest: [batch.elements(token: token)[1]]))
        }
        var log = TestCustodyLog()
        try log.recordHistory(of: manifest, members: .init(manifest: manifestBytes, signature: signature, timeStamp: timeStamp, verification: verification,
                                                           criteria: criteria, readme: readme, renewals: renewals))
        let custody = try log.custody(packageId: manifest.packageId, requestId: manifest.requestId, pki: pki, stranger: stranger, defect: custodyDefect)
        let members = EvidenceBundle.members(manifest: manifestBytes, request: requestBytes, signature: signature, timeStamp: timeStamp,
                                             signerPEM: signerInfo.pem, verification: verification, criteria: criteria, custody: custody, readme: readme,
                                             renewals: renewals)
        var out = EvidenceBundle.head(members: members, packageId: manifest.packageId, contentSize: Int64(body.count))
        // case.jsonld (CASE/UCO), as the broker writes it after the content.
        let graph = try EvidenceBundle.caseGraph(members: members, contentSize: Int64(body.count), contentSha256: Digest.sha256Hex(body),
                                                 request: request, manifest: manifest)
        out += body + EvidenceBundle.tail(contentSize: Int64(body.count), caseGraph: (manifest.packageId, graph))
        if defect == .trailingGarbage { out += Array("TRAILING GARBAGE".utf8) }
        return out
    }
}
