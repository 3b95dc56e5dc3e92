import CustosCanonicalJSON
import CustosMerkle
import CustosModel
import CustosPKI
import Crypto
import Foundation

/// The custody part of an export bundle (`custody.json`): a package's custody events, each
/// with its inclusion proof into the checkpoint that travels beside it (`checkpoint.txt`,
/// `checkpoint.p7s`, `checkpoint.tsr`), and the witnesses' co-signatures of that checkpoint.
public struct CustodyProofs: Codable, Sendable, Equatable {
    public static let currentFormat = "custos.custody.v1"

    public struct Event: Codable, Sendable, Equatable {
        /// The event's position in the log (its leaf index).
        public var index: UInt64
        /// The log entry, exactly: RFC 8785 canonical JSON of the event.
        public var entry: String
        /// RFC 9162 audit path to the checkpoint's root, base64 hashes, leaf side first.
        public var proof: [String]

        public init(index: UInt64, entry: String, proof: [String]) {
            self.index = index
            self.entry = entry
            self.proof = proof
        }
    }

    /// An earlier checkpoint that witnesses co-signed, and the RFC 9162 consistency proof from
    /// it to the bundle's checkpoint: the witnesses vouch for the log up to its size, and the
    /// proof shows the bundle's checkpoint only appends to it. (A checkpoint made for an export
    /// is too new for anyone to have co-signed it yet.)
    public struct Witnessed: Codable, Sendable, Equatable {
        /// The checkpoint text, exactly as signed.
        public var checkpoint: String
        /// The log's CMS signature over it, base64 DER.
        public var signature: String
        public var cosignatures: [Cosignature]
        /// Base64 hashes.
        public var consistency: [String]

        public init(checkpoint: String, signature: String, cosignatures: [Cosignature], consistency: [String]) {
            self.checkpoint = checkpoint
            self.signature = signature
            self.cosignatures = cosignatures
            self.consistency = consistency
        }
    }

    public var format: String
    public var events: [Event]
    /// Co-signatures of the bundle's own checkpoint.
    public var cosignatures: [Cosignature]
    public var witnessed: Witnessed?

    public init(events: [Event], cosignatures: [Cosignature], witnessed: Witnessed? = nil) {
        format = Self.currentFormat
        self.events = events
        self.cosignatures = cosignatures
        self.witnessed = witnessed
    }
}

/// What the custody part of a bundle proves, as a value: every failure, and what was shown.
public struct CustodyCheck: Sendable {
    public enum Code: String, Sendable, CaseIterable {
        case format = "custody-format"
        case event = "custody-event"
        case proof = "custody-proof"
        case checkpointSignature = "checkpoint-signature"
        case checkpointTimeStamp = "checkpoint-time-stamp"
        case cosignature
    }

    public struct Witness: Sendable, Equatable {
        public var name: String
        /// The size of the checkpoint it co-signed.
        public var checkpointSize: UInt64
        /// The signing certificate's common name, when the co-signature covers the checkpoint.
        public var signer: String?
        /// Whether that certificate is one the verifier was told to trust.
        public var trusted: Bool
    }

    public var failures: [(code: Code, detail: String)] = []
    public var checkpoint: Checkpoint?
    public var logSigner: String?
    public var timeStampedAt: Date?
    public var events: [CustodyEvent] = []
    public var witnesses: [Witness] = []
}

/// A checkpoint as the log serves it: text, CMS signature and RFC 3161 time-stamp.
public enum CheckpointVerifier {
    public struct Result: Sendable {
        public var checkpoint: Checkpoint?
        public var signer: String?
        public var genTime: Date?
        public var failures: [(code: CustodyCheck.Code, detail: String)]
        public var valid: Bool { checkpoint != nil && failures.isEmpty }
    }

    /// Checks the text's format, the time-stamp over the signature (TSA chaining to
    /// `tsaTrust`) and the signature over the text by a certificate chaining to `logTrust`,
    /// valid at the time-stamp's time. `at`: the time the TSA's certificate must be valid at
    /// (now when nil; `custos verify --at`).
    public static func verify(text: [UInt8], signature: [UInt8], timeStamp: [UInt8], logTrust: String, tsaTrust: String, at: Date? = nil) -> Result {
        var r = Result(checkpoint: nil, signer: nil, genTime: nil, failures: [])
        do { r.checkpoint = try Checkpoint(text: text) } catch {
            r.failures.append((.format, "checkpoint: \(error)"))
            return r
        }
        switch TimeStamp.verify(response: timeStamp, sha256: Digest.sha256Bytes(signature), trust: tsaTrust, at: at) {
        case .valid(let token): r.genTime = token.genTime
        case .invalid(let why):
            if let at, let notAfter = TimeStamp.signerNotAfter(response: timeStamp), notAfter < at {
                r.failures.append((.checkpointTimeStamp, "checkpoint.tsr: its TSA certificate expired on \(Timestamp.format(notAfter)), and no renewal covers it "
                                   + "(a gap from \(Timestamp.format(notAfter)) to \(Timestamp.format(at)); export the bundle again for the log's renewed checkpoint)"))
            } else {
                r.failures.append((.checkpointTimeStamp, "the checkpoint's time-stamp does not verify over its signature: \(why)"))
            }
        }
        switch CMS.verify(signature: signature, data: text, trust: logTrust, at: r.genTime) {
        case .valid(let signer): r.signer = signer.commonName
        case .invalid(let why): r.failures.append((.checkpointSignature, "the checkpoint's signature does not verify against the custody log's CA: \(why)"))
        }
        return r
    }
}

public enum CustodyVerifier {
    /// The event kinds a delivered package's history must contain.
    public static let requiredKinds: [CustodyEvent.Kind] = [.request("approved"), .packageCompleted, .verdict]

    /// Checks, with trust anchors from the caller only:
    /// 1. the checkpoint text, its CMS signature by a log certificate chaining to `logTrust`,
    ///    and the RFC 3161 time-stamp over that signature (TSA chaining to `tsaTrust`);
    /// 2. every event: canonical entry, about this package or its request, and its inclusion
    ///    proof leading to the checkpoint's root;
    /// 3. that the history holds the approval, the completion and the verdict;
    /// 4. each co-signature covers the checkpoint; a witness counts as trusted only when its
    ///    certificate is one of `witnessCertificates`.
    public static func verify(
        checkpoint checkpointBytes: [UInt8], signature: [UInt8], timeStamp: [UInt8], proofs proofBytes: [UInt8],
        logTrust: String, tsaTrust: String, witnessCertificates: [CertificateInfo],
        packageId: UUID, requestId: UUID, at: Date? = nil
    ) -> CustodyCheck {
        var check = CustodyCheck()
        func fail(_ c: CustodyCheck.Code, _ d: String) { check.failures.append((c, d)) }

        let head = CheckpointVerifier.verify(text: checkpointBytes, signature: signature, timeStamp: timeStamp, logTrust: logTrust, tsaTrust: tsaTrust, at: at)
        check.failures += head.failures
        check.logSigner = head.signer
        check.timeStampedAt = head.genTime
        guard let checkpoint = head.checkpoint else { return check }
        check.checkpoint = checkpoint

        let proofs: CustodyProofs
        do {
            _ = try JSONParser.parse(proofBytes)
            proofs = try JSONDecoder().decode(CustodyProofs.self, from: Data(proofBytes))
        } catch {
            fail(.format, "custody.json is not a custody proof document")
            return check
        }
        guard proofs.format == CustodyProofs.currentFormat else {
            fail(.format, "custody.json format is not \(CustodyProofs.currentFormat)")
            return check
        }
        var lastIndex: UInt64?
        for e in proofs.events {
            if let last = lastIndex, e.index <= last { fail(.format, "events are not in increasing log order at index \(e.index)") }
            lastIndex = e.index
            let entry = Array(e.entry.utf8)
            let event: CustodyEvent
            do { event = try CustodyEvent.decode(entry: entry) } catch {
                fail(.event, "event \(e.index): \(error)")
                continue
            }
            if event.subject.packageId != packageId && !(event.subject.packageId == nil && event.subject.requestId == requestId) {
                fail(.event, "event \(e.index) is about another package or request")
            }
            let path = e.proof.compactMap { Data(base64Encoded: $0).flatMap { SHA256Digest(bytes: $0) } }
            guard path.count == e.proof.count else {
                fail(.proof, "event \(e.index): proof holds something other than base64 SHA-256 hashes")
                continue
            }
            do {
                try MerkleProof.verifyInclusion(leafHash: CustodyEvent.leafHash(entry: entry), index: e.index, size: checkpoint.size,
                                                proof: path, root: checkpoint.root)
                check.events.append(event)
            } catch {
                fail(.proof, "event \(e.index) (\(event.kind)): \(error)")
            }
        }
        let kinds = Set(check.events.filter { $0.subject.packageId == packageId || $0.subject.packageId == nil }.map(\.kind))
        for required in requiredKinds where !kinds.contains(required) {
            fail(.event, "the history lacks a proven \(required) event")
        }

        func checkCosignatures(_ list: [Cosignature], over text: [UInt8], size: UInt64) {
            for c in list {
                guard let der = Data(base64Encoded: c.signature) else {
                    fail(.cosignature, "co-signature of \(c.witness) is not base64")
                    continue
                }
                switch CMS.verifyIntegrity(signature: Array(der), data: text) {
                case .valid(let signer):
                    let trusted = witnessCertificates.contains { $0.der == signer.der }
                    check.witnesses.append(.init(name: c.witness, checkpointSize: size, signer: signer.commonName, trusted: trusted))
                case .invalid(let why):
                    fail(.cosignature, "co-signature of \(c.witness) does not cover checkpoint \(size): \(why)")
                    check.witnesses.append(.init(name: c.witness, checkpointSize: size, signer: nil, trusted: false))
                }
            }
        }
        checkCosignatures(proofs.cosignatures, over: checkpointBytes, size: checkpoint.size)
        if let w = proofs.witnessed {
            let text = Array(w.checkpoint.utf8)
            guard let earlier = try? Checkpoint(text: text) else {
                fail(.format, "the witnessed checkpoint is not a checkpoint")
                return check
            }
            if earlier.origin != checkpoint.origin { fail(.cosignature, "the witnessed checkpoint belongs to another log (\(earlier.origin))") }
            if case .invalid(let why) = CMS.verify(signature: Array(Data(base64Encoded: w.signature) ?? Data()), data: text, trust: logTrust, at: nil) {
                fail(.cosignature, "the witnessed checkpoint \(earlier.size) is not signed by the custody log: \(why)")
            }
            let path = w.consistency.compactMap { Data(base64Encoded: $0).flatMap { SHA256Digest(bytes: $0) } }
            do {
                guard path.count == w.consistency.count else { throw ProofError("the consistency proof holds something other than base64 SHA-256 hashes") }
                try MerkleProof.verifyConsistency(oldSize: earlier.size, newSize: checkpoint.size, oldRoot: earlier.root, newRoot: checkpoint.root, proof: path)
            } catch {
                fail(.cosignature, "the bundle's checkpoint is not consistent with the witnessed checkpoint \(earlier.size): \(error)")
            }
            checkCosignatures(w.cosignatures, over: text, size: earlier.size)
        }
        return check
    }

    /// Splits a PEM bundle into certificates; text that is not a certificate is an error.
    public static func certificates(pem: String) throws -> [CertificateInfo] {
        let marker = "-----BEGIN CERTIFICATE-----"
        return try pem.components(separatedBy: marker).dropFirst().map { part in
            try CertificateInfo(pem: marker + part)
        }
    }
}
