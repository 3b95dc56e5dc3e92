import CustosCanonicalJSON
import Crypto
import CustosCriteria
import CustosCustody
import CustosPKI
import CustosModel
import Foundation

/// The export bundle, format `custos.bundle.v1`: one ustar file whose entries sit in a folder
/// `custos-<package id>/`, in this order, the content next to last:
///
/// | entry | what |
/// | --- | --- |
/// | `README.txt` | for a court's expert: what is here and how to check it with stock openssl |
/// | `request.json` | the request as approved (RFC 8785 canonical JSON); its SHA-256 is the manifest's `requestHash` |
/// | `manifest.json` | the manifest, exactly the bytes that were signed |
/// | `manifest.p7s` | CMS SignedData, detached, over `manifest.json`, with the provider's certificates (DER) |
/// | `manifest.tsr` | RFC 3161 TimeStampResp over the SHA-256 of `manifest.p7s` (DER) |
/// | `signer.pem` | the signing certificate, for reading (trust never comes from the bundle) |
/// | `verification.json` | the broker's verdict when it received the package, for reading |
/// | `checkpoint.txt` | the custody log's checkpoint (C2SP tlog-checkpoint body; a time line in older bundles) |
/// | `checkpoint.p7s` | CMS SignedData, detached, over `checkpoint.txt`, with the log's certificate (DER) |
/// | `checkpoint.tsr` | RFC 3161 TimeStampResp over the SHA-256 of `checkpoint.p7s` (DER) |
/// | `custody.json` | the package's custody events, each with its inclusion proof into the checkpoint, and the witnesses' co-signatures |
/// | `renewals.json` | (when the manifest's time-stamp was renewed) the renewal time-stamps, RFC 4998-style (`TimeStampRenewal`) |
/// | `content.ndjson` | the records; chunk *i* is the slice after chunks 0…*i*−1 |
/// | `case.jsonld` | the bundle in CASE/UCO (`CASEGraph`): every other file with its SHA-256, the chain of custody as provenance records; absent in bundles made before it |
public enum EvidenceBundle {
    public static let format = "custos.bundle.v1"

    public enum Entry: String, CaseIterable, Sendable {
        case readme = "README.txt"
        case request = "request.json"
        case manifest = "manifest.json"
        case signature = "manifest.p7s"
        case timeStamp = "manifest.tsr"
        case signer = "signer.pem"
        case verification = "verification.json"
        /// The broker's verdict on the four criteria; `custos verify` judges the content again.
        case criteria = "criteria.json"
        case checkpoint = "checkpoint.txt"
        case checkpointSignature = "checkpoint.p7s"
        case checkpointTimeStamp = "checkpoint.tsr"
        case custody = "custody.json"
        /// The manifest time-stamp's renewals (`RenewalsFile`), when it has any.
        case renewals = "renewals.json"
        case content = "content.ndjson"
        /// After the content, whose SHA-256 it states (`CASEGraph`).
        case caseGraph = "case.jsonld"
    }

    /// The custody entries of a bundle.
    public struct Custody: Sendable {
        public var checkpoint: [UInt8]
        public var signature: [UInt8]
        public var timeStamp: [UInt8]
        public var proofs: [UInt8]

        public init(checkpoint: [UInt8], signature: [UInt8], timeStamp: [UInt8], proofs: [UInt8]) {
            self.checkpoint = checkpoint
            self.signature = signature
            self.timeStamp = timeStamp
            self.proofs = proofs
        }
    }

    public static func folder(_ packageId: UUID) -> String { "custos-\(packageId.lowercased)" }

    /// The small entries before the content, in bundle order.
    public static func members(
        manifest: [UInt8], request: [UInt8], signature: [UInt8], timeStamp: [UInt8], signerPEM: String,
        verification: [UInt8], criteria: [UInt8]? = nil, custody: Custody, readme: String, renewals: [UInt8]? = nil
    ) -> [(Entry, [UInt8])] {
        [(Entry.readme, Array(readme.utf8)), (.request, request), (.manifest, manifest), (.signature, signature),
         (.timeStamp, timeStamp), (.signer, Array(signerPEM.utf8)), (.verification, verification)]
            + (criteria.map { [(Entry.criteria, $0)] } ?? []) + [
                (.checkpoint, custody.checkpoint), (.checkpointSignature, custody.signature),
                (.checkpointTimeStamp, custody.timeStamp), (.custody, custody.proofs)]
            + (renewals.map { [(Entry.renewals, $0)] } ?? [])
    }

    /// Everything before the content's bytes: the small entries, then the content's header.
    public static func head(members: [(Entry, [UInt8])], packageId: UUID, contentSize: Int64) -> [UInt8] {
        let dir = folder(packageId)
        var out: [UInt8] = []
        for (entry, bytes) in members { out += Tar.file("\(dir)/\(entry.rawValue)", bytes) }
        out += Tar.header(name: "\(dir)/\(Entry.content.rawValue)", size: contentSize)
        return out
    }

    /// `head(members:…)` of `members(…)`.
    public static func head(
        manifest: [UInt8], request: [UInt8], signature: [UInt8], timeStamp: [UInt8], signerPEM: String,
        verification: [UInt8], criteria: [UInt8]? = nil, custody: Custody, packageId: UUID, contentSize: Int64, readme: String
    ) -> [UInt8] {
        head(members: members(manifest: manifest, request: request, signature: signature, timeStamp: timeStamp, signerPEM: signerPEM,
                              verification: verification, criteria: criteria, custody: custody, readme: readme),
             packageId: packageId, contentSize: contentSize)
    }

    /// Everything after the content's bytes: its padding, `case.jsonld` when given, the end.
    public static func tail(contentSize: Int64, caseGraph: (packageId: UUID, bytes: [UInt8])? = nil) -> [UInt8] {
        Tar.padding(after: contentSize) + (caseGraph.map { Tar.file("\(folder($0.packageId))/\(Entry.caseGraph.rawValue)", $0.bytes) } ?? []) + Tar.end
    }

    /// `case.jsonld` for a bundle of these members and content (`CASEGraph.build`), its
    /// custody events read from `custody.json`.
    /// - Throws: when `custody.json` or an entry in it does not read.
    public static func caseGraph(members: [(Entry, [UInt8])], contentSize: Int64, contentSha256: String, request: ApprovedRequest,
                                 manifest: Manifest, toolVersion: String = CustosRelease.version) throws -> [UInt8] {
        let proofs = try JSONDecoder().decode(CustodyProofs.self, from: Data(members.first { $0.0 == .custody }?.1 ?? []))
        let events = try proofs.events.map { (index: $0.index, event: try CustodyEvent.decode(entry: Array($0.entry.utf8))) }
        let files = members.map { CASEGraph.File(name: $0.0.rawValue, bytes: $0.1) }
            + [CASEGraph.File(name: Entry.content.rawValue, size: contentSize, sha256: contentSha256)]
        return CASEGraph.build(request: request, manifest: manifest, files: files, events: events, toolVersion: toolVersion)
    }

    /// The README for a court's expert. The openssl commands are run as written by the tests.
    public static func readme(manifest: Manifest, signer: String?, timeStampedAt: String?) -> String {
        """
        CUSTOS EVIDENCE BUNDLE (\(format))

        Package   \(manifest.packageId.lowercased)
        Request   \(manifest.requestId.lowercased)
        Provider  \(manifest.providerId)\(signer.map { ", signed by the certificate \"\($0)\"" } ?? "")
        Extracted \(manifest.asOf) (as-of time declared by the provider)
        Stamped   \(timeStampedAt ?? "see manifest.tsr") (RFC 3161 time-stamp over the signature)
        Content   \(manifest.content.recordCount) records, \(manifest.content.size) bytes, \(manifest.chunks.count) chunks

        WHAT IS HERE
          request.json       the request as approved, RFC 8785 canonical JSON. Its SHA-256 is the
                             manifest's "requestHash", which binds the package to this request.
          manifest.json      the provider's manifest, exactly the bytes it signed.
          manifest.p7s       the provider's signature: CMS SignedData (RFC 5652), detached, DER,
                             carrying its certificate chain.
          manifest.tsr       an RFC 3161 time-stamp response over the SHA-256 of manifest.p7s.
          content.ndjson     the records, one JSON object per line, grouped per (target x
                             category) result in the order of the manifest's "results".
          signer.pem, verification.json
                             for reading: the signing certificate (the one in manifest.p7s),
                             and the broker's verdict (its hash is in the custody events).
          criteria.json      (when present) the broker's verdict on the four criteria of
                             Directive 57: đúng (correct), đủ (complete), sạch (clean), sống
                             (live); custos verify judges the content again and compares.
          checkpoint.txt     a checkpoint of the broker's custody log: log name, tree size and
                             Merkle root (base64); checkpoint.tsr proves when it was made.
          checkpoint.p7s     the log's signature over checkpoint.txt (CMS, detached, DER).
          checkpoint.tsr     an RFC 3161 time-stamp response over the SHA-256 of checkpoint.p7s.
          custody.json       the chain of custody: every event of this package and of its
                             request (approval, each chunk received, completion, verdict, every
                             view, download and export...), each the exact log entry with its
                             RFC 9162 inclusion proof into checkpoint.txt's root, and the
                             co-signatures of outside witnesses over checkpoint.txt.
          renewals.json      (when present) renewal time-stamps of manifest.tsr, RFC 4998-style:
                             each over the manifest, the signature and every time-stamp before
                             it, so that the proof outlives the certificates' expiry.
          case.jsonld        (after content.ndjson) the same in CASE/UCO, for forensic tools:
                             the investigation, the decision, the provider, the tool, every
                             other file here with its SHA-256 (check one: sha256sum FILE), and
                             each custody event as a provenance record.

        Nothing in this bundle is to be trusted on its own: the checks below use trust anchors
        that you obtain independently (the provider's CA certificate, the time-stamping
        authority's CA certificate and the custody log's CA certificate), here called
        $TRUST/provider-ca.pem, $TRUST/tsa-ca.pem and $TRUST/custody-ca.pem.

        CHECKING WITH STOCK OPENSSL (run inside this folder)
          1. The signature covers manifest.json and chains to the provider's CA:
        openssl cms -verify -binary -inform DER -in manifest.p7s -content manifest.json -CAfile "$TRUST/provider-ca.pem" -out /dev/null
          2. The time-stamp covers manifest.p7s and comes from the trusted TSA:
        openssl ts -verify -in manifest.tsr -data manifest.p7s -CAfile "$TRUST/tsa-ca.pem"
          3. The time it attests (genTime):
        openssl ts -reply -in manifest.tsr -text
          4. The request binding: this must print the manifest's "requestHash":
        sha256sum request.json
          5. The custody checkpoint is signed by the custody log and time-stamped:
        openssl cms -verify -binary -inform DER -in checkpoint.p7s -content checkpoint.txt -CAfile "$TRUST/custody-ca.pem" -out /dev/null
        openssl ts -verify -in checkpoint.tsr -data checkpoint.p7s -CAfile "$TRUST/tsa-ca.pem"
          6. Each witness's co-signature is base64 DER in custody.json ("cosignatures"). Decode
             one to witness.p7s, check it with the certificate the witness published:
               openssl cms -verify -binary -inform DER -in witness.p7s -content checkpoint.txt -CAfile witness.pem -partial_chain -out /dev/null

        THE CONTENT
          The manifest lists every chunk with its size and SHA-256; chunk i is the slice of
          content.ndjson after chunks 0..i-1. With every chunk but the last of the same size S,
          chunk i is: dd if=content.ndjson bs=S skip=i count=1 | sha256sum
          "chunksRoot" is the RFC 9162 Merkle root over the chunks (leaf = SHA-256(0x00 ||
          chunk SHA-256), node = SHA-256(0x01 || left || right)); each result's "recordsRoot"
          is the Merkle root over its records (leaf data: one line without its newline).

        CHECKING EVERYTHING AT ONCE
          custos verify <this bundle file> --trust <folder with provider-ca.pem, tsa-ca.pem,
          custody-ca.pem and, optionally, witnesses.pem>
          checks all of the above, every chunk, both kinds of Merkle root, every result, every
          custody event's inclusion proof and every co-signature, that every file here is the
          one the custody events or signatures bind (this README included: its SHA-256 is
          recorded in the export's custody event), and prints every failure it finds. Exit status: 0 valid, 1 invalid, 2 unusable input, 3 authentic but not
          admissible on the four criteria (criteria.json).

        """
    }
}

/// The outcome of `custos verify`: every failure found, and what the bundle claims.
public struct BundleReport: Codable, Sendable {
    /// `inadmissible`: authentic and intact in every check, but the four criteria, judged
    /// again, do not all pass (the only failure is `not-admissible`).
    public enum Outcome: String, Codable, Sendable { case valid, invalid, unusable, inadmissible }
    public var outcome: Outcome
    public var format: String
    public var packageId: String?
    public var requestId: String?
    public var providerId: String?
    public var signer: String?
    public var timeStampedAt: String?
    public var asOf: String?
    public var recordCount: Int?
    public var contentSize: Int64?
    public var chunkCount: Int?
    /// What the custody part shows, when it could be read.
    public var custody: CustodySummary?
    /// The four criteria, judged again here from the content (when the bundle carries the
    /// broker's verdict, whose delivery facts — time, clock, bounds — it is judged against).
    public var criteria: Verdict?
    /// Named checks and whether each passed.
    public var checks: [String: Bool]
    public var failures: [PackageVerification.Failure]
    /// Why the bundle could not be checked at all (exit status 2).
    public var unusable: String?

    public init(outcome: Outcome, format: String, checks: [String: Bool], failures: [PackageVerification.Failure], unusable: String?) {
        self.outcome = outcome
        self.format = format
        self.checks = checks
        self.failures = failures
        self.unusable = unusable
    }
}

public struct CustodySummary: Codable, Sendable {
    public struct Witness: Codable, Sendable {
        public var name: String
        /// The checkpoint it co-signed: the bundle's, or an earlier one the bundle's extends.
        public var checkpointSize: UInt64
        public var signer: String?
        /// The co-signing certificate is one of those in the verifier's witnesses.pem.
        public var trusted: Bool
    }
    public var origin: String
    public var checkpointSize: UInt64
    /// The legacy `time` line of an older checkpoint, else the RFC 3161 time of its signature.
    public var checkpointTime: String
    public var logSigner: String?
    public var timeStampedAt: String?
    /// Proven events, in log order: index, kind, time, actor.
    public var events: [String]
    public var witnesses: [Witness]
}

/// Checks a bundle while its bytes stream past: constant memory whatever the content's size.
/// Trust anchors come only from the caller, never from the bundle.
public struct BundleVerifier: Sendable {
    public let providerTrust: String
    public let tsaTrust: String
    public let custodyTrust: String
    public let witnesses: [CertificateInfo]
    private var tar = Tar.Reader()
    private var current: (entry: EvidenceBundle.Entry?, name: String, bytes: [UInt8])?
    private var files: [EvidenceBundle.Entry: [UInt8]] = [:]
    private var seen: Set<String> = []
    private var content: ContentVerifier?
    private var manifest: Manifest?
    private var request: ApprovedRequest?
    /// Judges on a thread of its own while this one hashes (nil: integrity only).
    private var judge: PipelinedJudge?
    /// Where the judge's record digests go (removed when the verifier is done with them).
    private var spill: SpillingDigests?
    private var failures: [PackageVerification.Failure] = []
    private var unusable: String?
    private var folder: String?
    /// Entry names in the order they came.
    private var order: [String] = []
    private let at: Date?
    /// The content's SHA-256 and length, for `case.jsonld`, on a core of its own.
    private var contentHash = PipelinedHash()

    /// Small entries larger than this make a bundle unusable (the content has no limit).
    public static let maximumSmallEntry = 64 << 20

    /// `custodyTrust`: the custody log's CA certificates; `witnesses`: the certificates of the
    /// witnesses the caller trusts (a co-signature by any other is reported, not counted).
    /// `at`: check as of this date (`custos verify --at`): every certificate valid at the time
    /// its time-stamp proves, and a renewal covering every expiry up to `at` (now when nil).
    public init(providerTrust: String, tsaTrust: String, custodyTrust: String, witnesses: [CertificateInfo] = [], at: Date? = nil) {
        self.at = at
        self.providerTrust = providerTrust
        self.tsaTrust = tsaTrust
        self.custodyTrust = custodyTrust
        self.witnesses = witnesses
    }

    public mutating func consume(_ bytes: UnsafeRawBufferPointer) {
        guard unusable == nil else { return }
        do {
            var events: [Tar.Event] = []
            try tar.consume(bytes) { events.append($0) }
            for e in events { try handle(e) }
        } catch let e as Tar.FormatError {
            unusable = e.description
        } catch {
            unusable = String(describing: error)
        }
    }

    private mutating func handle(_ event: Tar.Event) throws {
        switch event {
        case .begin(let name, let size):
            let parts = name.split(separator: "/", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { throw Unusable("entry \(name) is not inside the bundle's folder") }
            if folder == nil { folder = parts[0] }
            guard folder == parts[0] else { throw Unusable("entries of more than one folder") }
            guard seen.insert(parts[1]).inserted else { throw Unusable("entry \(parts[1]) appears twice") }
            order.append(parts[1])
            let entry = EvidenceBundle.Entry(rawValue: parts[1])
            if entry == nil { failures.append(.init(code: .manifestFormat, detail: "unexpected entry \(parts[1]) in the bundle")) }
            if entry == .content {
                guard let manifest else { throw Unusable("content.ndjson comes before manifest.json") }
                content = ContentVerifier(manifest: manifest, collectsLeaves: files[.criteria] != nil && request != nil)
                // The four criteria are judged again only for a bundle that states a verdict
                // (criteria.json comes before the content); a bundle without one is checked on
                // integrity alone. The duplicate search's digests go to temporary files, so
                // that memory stays flat whatever the bundle's size.
                if files[.criteria] != nil, let request {
                    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("custos-verify-\(UUID().uuidString.lowercased())")
                    do { spill = try SpillingDigests(directory: directory) } catch {
                        throw Unusable("the duplicate search cannot write its temporary files in \(FileManager.default.temporaryDirectory.path) (TMPDIR)")
                    }
                    judge = PipelinedJudge(PackageJudge(request: request, manifest: manifest, digests: spill))
                }
            } else if size > Int64(Self.maximumSmallEntry) {
                throw Unusable("entry \(parts[1]) is larger than \(Self.maximumSmallEntry) bytes")
            }
            current = (entry, parts[1], [])
        case .data(let bytes):
            if current?.entry == .content {
                bytes.withUnsafeBytes { content!.consume($0) }
                contentHash.consume(bytes)
                judge?.consume(content: bytes, leaves: content!.takeLeaves())
            } else if current?.entry != nil {
                current!.bytes += bytes
            }
        case .endOfFile:
            if let c = current, let entry = c.entry, entry != .content {
                files[entry] = c.bytes
                if entry == .request { request = try? JSONDecoder().decode(ApprovedRequest.self, from: Data(c.bytes)) }
                if entry == .manifest {
                    do { manifest = try JSONDecoder().decode(Manifest.self, from: Data(c.bytes)) } catch {
                        throw Unusable("manifest.json is not a manifest: \(DecodingErrorDescription(error))")
                    }
                }
            }
            current = nil
        case .trailingData(let n):
            failures.append(.init(code: .trailingData, detail: "\(n) bytes after the end of the archive"))
        case .nonCanonical(let why):
            if !failures.contains(where: { $0.code == .bundleFormat && $0.detail == why }) { failures.append(.init(code: .bundleFormat, detail: why)) }
        }
    }

    /// SPEC §8: every member is bound — by a hash in a proven custody event, by a signature,
    /// or (the content) by the signed manifest's chunk hashes — and the bundle's bytes are
    /// canonical. A member that differs from what binds it, one the custody events name but
    /// the bundle lacks, and one nothing binds are each a `bundle-member` failure; an edit can
    /// never leave the outcome better than the untouched bundle's.
    private func bindings(manifest: Manifest, custody: CustodyCheck, signer: CertificateInfo?) -> [PackageVerification.Failure] {
        var out: [PackageVerification.Failure] = []
        func fail(_ d: String) { out.append(.init(code: .bundleMember, detail: d)) }
        let events = custody.events.filter { $0.subject.packageId == manifest.packageId && $0.subject.chunk == nil }
        func hashes(_ kind: CustodyEvent.Kind, _ key: String) -> [String] { events.filter { $0.kind == kind }.compactMap { $0.objects[key] } }
        func sha(_ entry: EvidenceBundle.Entry) -> String? { files[entry].map(Digest.sha256Hex) }
        /// `entry` must be present and match every proven `kind` event's `key` (at least one).
        func check(_ entry: EvidenceBundle.Entry, _ kind: CustodyEvent.Kind, _ key: String, matchAny: Bool = false) {
            let named = hashes(kind, key)
            guard !named.isEmpty else { return fail("no proven \(kind) event records the SHA-256 of \(entry.rawValue)") }
            guard let have = sha(entry) else { return fail("\(entry.rawValue) is missing, but a proven \(kind) event names it") }
            let ok = matchAny ? named.contains(have) : named.allSatisfy { $0 == have }
            if !ok { fail("\(entry.rawValue) differs from the SHA-256 a proven \(kind) event records") }
        }
        check(.manifest, .manifestReceived, "manifestSha256")
        check(.signature, .manifestReceived, "signatureSha256")
        check(.timeStamp, .manifestReceived, "timeStampSha256")
        check(.verification, .verdict, "verdictSha256")
        if !hashes(.criteria, "criteriaSha256").isEmpty || files[.criteria] != nil { check(.criteria, .criteria, "criteriaSha256") }
        // The README is written at export; each export records the hash of the one it wrote.
        check(.readme, .packageExported, "readmeSha256", matchAny: true)
        // case.jsonld (CASE/UCO): every hash it states is the file's, and the whole graph is the
        // one the bundle's bound members give (so nothing in it can be edited either).
        // renewals.json: when the export's own (newest proven) event names it, it is there and
        // is that one; stripping it would lose the proof that outlives the certificates.
        if let named = events.last(where: { $0.kind == .packageExported })?.objects["renewalsSha256"], sha(.renewals) != named {
            fail(files[.renewals] == nil ? "renewals.json is missing, but the bundle's export event records it"
                                         : "renewals.json differs from the SHA-256 the bundle's export event records")
        }
        // Its own export (the newest proven) says whether it wrote a case.jsonld.
        if files[.caseGraph] == nil, events.last(where: { $0.kind == .packageExported })?.objects["caseContextSha256"] == CASEGraph.contextSha256 {
            fail("case.jsonld is missing, but the bundle's export event records that it was written")
        }
        if let graph = files[.caseGraph] {
            let (contentSha256, contentBytes) = contentHash.finish()
            let members = order.compactMap { EvidenceBundle.Entry(rawValue: $0) }.filter { $0 != .content && $0 != .caseGraph }
                .compactMap { e in files[e].map { (e, $0) } }
            var actual = Dictionary(members.map { ($0.0.rawValue, Digest.sha256Hex($0.1)) }, uniquingKeysWith: { a, _ in a })
            actual[EvidenceBundle.Entry.content.rawValue] = contentSha256
            // Built again from the members and compared: equal bytes settle it. Only when they
            // differ is the graph read, to name what differs.
            let rebuilt = CASEGraph.statedToolVersion(graph).flatMap { version in
                request.flatMap {
                    try? EvidenceBundle.caseGraph(members: members, contentSize: contentBytes, contentSha256: contentSha256, request: $0,
                                                  manifest: manifest, toolVersion: version)
                }
            }
            if rebuilt != graph {
                if let stated = CASEGraph.read(graph) {
                    if stated.format != CASEGraph.format {
                        fail("case.jsonld is of format \(stated.format ?? "(none)"), which this verifier does not know (it knows \(CASEGraph.format))")
                    }
                    for (name, hash) in stated.files.sorted(by: { $0.key < $1.key }) where actual[name] != hash {
                        fail(actual[name] == nil ? "case.jsonld lists \(name), which the bundle lacks" : "case.jsonld states a SHA-256 for \(name) that differs from the file")
                    }
                    for name in actual.keys.sorted() where stated.files[name] == nil { fail("case.jsonld does not list \(name)") }
                    if stated.format == CASEGraph.format { fail("case.jsonld differs from the CASE/UCO graph this bundle's members state") }
                } else {
                    fail("case.jsonld is not a CASE/UCO graph of a Custos bundle")
                }
            }
        }
        // The signer's certificate, for reading: exactly the one the CMS signature carries
        // (when the signature could not be checked, that failure is already reported).
        if let signer, files[.signer] != Array(signer.pem.utf8) {
            fail("signer.pem is not the certificate that signed the manifest")
        }
        // Canonical bytes: the folder is the package's, the entries in their order.
        if folder != EvidenceBundle.folder(manifest.packageId) {
            out.append(.init(code: .bundleFormat, detail: "the bundle's folder is not named after its package"))
        }
        let expected = EvidenceBundle.Entry.allCases.filter { ($0 != .criteria || files[.criteria] != nil) && ($0 != .caseGraph || files[.caseGraph] != nil)
            && ($0 != .renewals || files[.renewals] != nil) }
            .map(\.rawValue)
        if order != expected { out.append(.init(code: .bundleFormat, detail: "the entries are not in the bundle's order")) }
        return out
    }

    struct Unusable: Error, CustomStringConvertible {
        var description: String
        init(_ d: String) { description = d }
    }

    /// Every check, once the last byte is in.
    public mutating func finish() -> BundleReport {
        var report = BundleReport(outcome: .unusable, format: EvidenceBundle.format, checks: [:], failures: [], unusable: unusable)
        if unusable == nil && !tar.finished { report.unusable = "the archive ends before its end-of-archive marker" }
        for required in [EvidenceBundle.Entry.request, .manifest, .signature, .timeStamp, .checkpoint, .checkpointSignature,
                         .checkpointTimeStamp, .custody, .content] where report.unusable == nil {
            if required == .content ? content == nil : files[required] == nil { report.unusable = "\(required.rawValue) is missing" }
        }
        guard report.unusable == nil, let manifest, var content else { return report }

        var all = failures
        // The request binding.
        let requestBytes = files[.request]!
        var request: ApprovedRequest?
        var requestHash = ""
        do {
            requestHash = Digest.sha256Hex(try CanonicalJSON.canonicalize(requestBytes))
            request = try JSONDecoder().decode(ApprovedRequest.self, from: Data(requestBytes))
        } catch {
            all.append(.init(code: .requestHash, detail: "request.json is not an approved request"))
        }
        all += PackageVerifier.checkManifest(manifest, expectedProvider: request?.providerId ?? manifest.providerId,
                                             expectedRequest: request?.requestId ?? manifest.requestId, expectedRequestHash: requestHash)
        // The signature, its time-stamp, the signer.
        let manifestBytes = files[.manifest]!
        if (try? CanonicalJSON.canonicalize(manifestBytes)) != manifestBytes {
            all.append(.init(code: .manifestFormat, detail: "manifest.json is not in RFC 8785 canonical form"))
        }
        var renewals: [RenewalElement] = []
        if let file = files[.renewals] {
            if let r = try? JSONDecoder().decode(RenewalsFile.self, from: Data(file)), r.format == RenewalsFile.currentFormat,
               (try? CanonicalJSON.encode(r)) == file {
                renewals = r.manifest
            } else {
                all.append(.init(code: .bundleFormat, detail: "renewals.json is not a \(RenewalsFile.currentFormat) document in canonical form"))
            }
        }
        let signatures = PackageSignatureVerifier.verify(
            manifest: manifestBytes, signature: files[.signature]!, timeStamp: files[.timeStamp]!,
            providerId: manifest.providerId, providerTrust: providerTrust, tsaTrust: tsaTrust, renewals: renewals, at: at)
        all += signatures.failures
        // The content.
        let contentFailures = content.finish()
        all += contentFailures
        // The chain of custody.
        let custody = CustodyVerifier.verify(
            checkpoint: files[.checkpoint]!, signature: files[.checkpointSignature]!, timeStamp: files[.checkpointTimeStamp]!,
            proofs: files[.custody]!, logTrust: custodyTrust, tsaTrust: tsaTrust, witnessCertificates: witnesses,
            packageId: manifest.packageId, requestId: manifest.requestId, at: at)
        all += custody.failures.map { .init(code: PackageVerification.Failure.Code(rawValue: $0.code.rawValue)!, detail: $0.detail) }
        if let cp = custody.checkpoint {
            report.custody = CustodySummary(
                origin: cp.origin, checkpointSize: cp.size, checkpointTime: cp.time ?? custody.timeStampedAt.map(Timestamp.format) ?? "", logSigner: custody.logSigner,
                timeStampedAt: custody.timeStampedAt.map(Timestamp.format),
                events: custody.events.map { "\($0.at)  \($0.kind)  \($0.actor.type.rawValue) \($0.actor.id)" },
                witnesses: custody.witnesses.map { .init(name: $0.name, checkpointSize: $0.checkpointSize, signer: $0.signer, trusted: $0.trusted) })
        }

        all += bindings(manifest: manifest, custody: custody, signer: signatures.signer)

        // The four criteria, judged again from what is here, against the delivery facts the
        // broker's verdict states (its time-stamp time replaced by the one verified here).
        if let carried = files[.criteria] {
            if let stated = try? JSONDecoder().decode(Verdict.self, from: Data(carried)), var judge = judge?.drain(),
               let delivery = PackageJudge.Delivery(stated.delivery, timeStampedAt: signatures.genTime) {
                let again = judge.finish(checks: all.map(\.code.rawValue), delivery: delivery,
                                         bounds: PackageJudge.Bounds(stated.delivery), judgedAt: stated.judgedAt)
                if spill?.failed == true {
                    // The duplicate count is incomplete: the bundle cannot be judged here.
                    report.unusable = "the duplicate search could not write its temporary files in \(FileManager.default.temporaryDirectory.path) (TMPDIR full?)"
                    return report
                }
                spill = nil
                report.criteria = again
                if again.admissible != stated.admissible || again.criteria != stated.criteria || again.counts != stated.counts || again.quality != stated.quality {
                    all.append(.init(code: .criteria, detail: "the bundle's verdict on the four criteria differs from the one judged here"))
                }
                if !again.admissible {
                    let short = Verdict.Criterion.allCases.filter { again.status($0) != .pass }.map { c in
                        "\(c.name) (\(c.rawValue)) \(again.status(c)?.rawValue ?? "-"): " + again.reasons(c).map { "\($0.code) ×\($0.count)" }.joined(separator: ", ")
                    }
                    all.append(.init(code: .notAdmissible, detail: "not admissible on the four criteria: " + short.joined(separator: "; ")))
                }
            } else {
                all.append(.init(code: .criteria, detail: "criteria.json is not a verdict on this package's request"))
            }
        }

        let codes = Set(all.map(\.code))
        report.checks = [
            "request binding": codes.isDisjoint(with: [.requestHash, .wrongRequest, .wrongProvider]),
            "time-stamp": !codes.contains(.timeStamp),
            "signature and signer": codes.isDisjoint(with: [.signature, .wrongProvider, .certificateExpired, .untrustedSigner]),
            "chunks": codes.isDisjoint(with: [.chunkHash, .chunkMissing, .chunkSize, .contentSize, .trailingData]),
            "chunks Merkle root": !codes.contains(.chunksRoot),
            "results and records Merkle roots": codes.isDisjoint(with: [.resultSize, .resultCount, .recordsRoot, .resultCounts]),
            "manifest format": !codes.contains(.manifestFormat),
            "custody events and inclusion proofs": codes.isDisjoint(with: [.custodyFormat, .custodyEvent, .custodyProof]),
            "custody checkpoint signature and time-stamp": codes.isDisjoint(with: [.checkpointSignature, .checkpointTimeStamp]),
            "witness co-signatures": !codes.contains(.cosignature),
            "every member bound, canonical bytes": codes.isDisjoint(with: [.bundleMember, .bundleFormat]),
        ]
        if files[.caseGraph] != nil {
            report.checks["CASE/UCO graph (case.jsonld) agrees with the bundle"] = !all.contains { $0.code == .bundleMember && $0.detail.hasPrefix("case.jsonld") }
        }
        if files[.criteria] != nil {
            report.checks["four criteria judged again"] = !codes.contains(.criteria)
            report.checks["admissible on the four criteria"] = !codes.contains(.notAdmissible)
        }
        report.failures = all
        report.outcome = all.isEmpty ? .valid : codes == [.notAdmissible] ? .inadmissible : .invalid
        report.packageId = manifest.packageId.lowercased
        report.requestId = manifest.requestId.lowercased
        report.providerId = manifest.providerId
        report.signer = signatures.signer?.commonName
        report.timeStampedAt = signatures.genTime.map(Timestamp.format)
        report.asOf = manifest.asOf
        report.recordCount = manifest.content.recordCount
        report.contentSize = manifest.content.size
        report.chunkCount = manifest.chunks.count
        return report
    }
}
