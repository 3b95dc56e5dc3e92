import Crypto
import CustosCanonicalJSON
import CustosCustody
import CustosEvidence
import CustosMerkle
import CustosModel
import CustosPKI
import Foundation

/// A custody log in memory, for bundles made without a broker: append events, then prove a
/// package's events into a signed, time-stamped and co-signed checkpoint.
public struct TestCustodyLog: Sendable {
    public private(set) var entries: [[UInt8]] = []

    public init() {}

    @discardableResult
    public mutating func append(_ event: CustodyEvent) throws -> UInt64 {
        entries.append(try event.entry())
        return UInt64(entries.count - 1)
    }

    public enum Defect: Sendable { case eventEditedAfterProof, checkpointSignedByStranger, verdictEventLeftOut }

    /// The custody entries of a bundle for `packageId` (and its request's events).
    public func custody(packageId: UUID, requestId: UUID, pki: TestPKI, stranger: TestPKI, cosigned: Bool = true,
                        defect: Defect? = nil) throws -> EvidenceBundle.Custody {
        let leaves = entries.map { CustodyEvent.leafHash(entry: $0) }
        let size = UInt64(leaves.count)
        let tiles = try Tiles.integrate(size: 0, leafHashes: leaves, edge: [:])
        func hash(_ node: NodeID) -> SHA256Digest { Tiles.hash(of: node, in: tiles)! }
        let root = MerkleProof.rootPlan(size: size).build(hash)[0]
        let checkpoint = Checkpoint(origin: "test.custos/custody", size: size, root: root)
        let signer = defect == .checkpointSignedByStranger ? stranger : pki
        let signature = try checkpoint.sign(certificate: signer.custodyCertificate, key: signer.custodyKey)
        let timeStamp = try pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(signature), nonce: TimeStamp.makeNonce()), serial: 9)
        var events: [CustodyProofs.Event] = []
        for (i, entry) in entries.enumerated() {
            let event = try CustodyEvent.decode(entry: entry)
            guard event.subject.packageId == packageId || (event.subject.packageId == nil && event.subject.requestId == requestId) else { continue }
            if defect == .verdictEventLeftOut && event.kind == .verdict { continue }
            let proof = try MerkleProof.inclusionPlan(index: UInt64(i), size: size).build(hash).map { Data($0.bytes).base64EncodedString() }
            var text = String(decoding: entry, as: UTF8.self)
            if defect == .eventEditedAfterProof && event.kind == .packageCompleted {
                var edited = event
                edited.at = "2026-01-01T00:00:00.000Z"
                text = String(decoding: try edited.entry(), as: UTF8.self)
            }
            events.append(.init(index: UInt64(i), entry: text, proof: proof))
        }
        // A witness co-signed an earlier checkpoint (before the verdict and the export); the
        // bundle's checkpoint is proven consistent with it.
        var witnessed: CustodyProofs.Witnessed?
        if cosigned {
            let earlierSize = size - 2
            let earlier = Checkpoint(origin: checkpoint.origin, size: earlierSize, root: MerkleProof.rootPlan(size: earlierSize).build(hash)[0],
                                     time: Timestamp.now())
            let cosignature = Cosignature(witness: "test-witness", signature: Data(try earlier.sign(certificate: pki.witnessCertificate, key: pki.witnessKey)).base64EncodedString(),
                                          at: Timestamp.now())
            witnessed = .init(checkpoint: earlier.text, signature: Data(try earlier.sign(certificate: signer.custodyCertificate, key: signer.custodyKey)).base64EncodedString(),
                              cosignatures: [cosignature],
                              consistency: try MerkleProof.consistencyPlan(from: earlierSize, to: size).build(hash).map { Data($0.bytes).base64EncodedString() })
        }
        return EvidenceBundle.Custody(checkpoint: checkpoint.bytes, signature: signature, timeStamp: timeStamp,
                                      proofs: try CanonicalJSON.encode(CustodyProofs(events: events, cosignatures: [], witnessed: witnessed)))
    }

    /// The bundle members the broker's custody events record the hashes of.
    public struct Members {
        public var manifest: [UInt8]
        public var signature: [UInt8]
        public var timeStamp: [UInt8]
        public var verification: [UInt8]
        public var criteria: [UInt8]?
        public var readme: String
        /// `renewals.json`, when the export carries one (its hash goes into the export's event).
        public var renewals: [UInt8]?

        public init(manifest: [UInt8], signature: [UInt8], timeStamp: [UInt8], verification: [UInt8], criteria: [UInt8]?, readme: String,
                    renewals: [UInt8]? = nil) {
            self.renewals = renewals
            self.manifest = manifest
            self.signature = signature
            self.timeStamp = timeStamp
            self.verification = verification
            self.criteria = criteria
            self.readme = readme
        }
    }

    /// The history of one package as the broker records it, between unrelated events.
    public mutating func recordHistory(of manifest: Manifest, members: Members) throws {
        let provider = CustodyEvent.Actor(type: .provider, id: manifest.providerId)
        let request = CustodyEvent.Subject(requestId: manifest.requestId)
        let package = CustodyEvent.Subject(requestId: manifest.requestId, packageId: manifest.packageId)
        let manifestSha = Digest.sha256Hex(members.manifest)
        try append(.init(kind: .caseCreated, at: Timestamp.now(), actor: .init(type: .user, id: "someone-else"), subject: .init(caseId: UUID())))
        try append(.init(kind: .request("approved"), at: Timestamp.now(), actor: .init(type: .user, id: "approver"), subject: request,
                         objects: ["requestHash": manifest.requestHash]))
        try append(.init(kind: .request("dispatched"), at: Timestamp.now(), actor: .broker, subject: request))
        try append(.init(kind: .manifestReceived, at: Timestamp.now(), actor: provider, subject: package,
                         objects: ["manifestSha256": manifestSha, "signatureSha256": Digest.sha256Hex(members.signature),
                                   "timeStampSha256": Digest.sha256Hex(members.timeStamp)]))
        for c in manifest.chunks {
            try append(.init(kind: .chunkReceived, at: Timestamp.now(), actor: provider,
                             subject: .init(requestId: manifest.requestId, packageId: manifest.packageId, chunk: c.index), objects: ["chunkSha256": c.sha256]))
            if c.index % 3 == 1 { try append(.init(kind: .request("viewed"), at: Timestamp.now(), actor: .init(type: .user, id: "other"), subject: .init(requestId: UUID()))) }
        }
        try append(.init(kind: .packageCompleted, at: Timestamp.now(), actor: provider, subject: package,
                         objects: ["manifestSha256": manifestSha, "chunksRoot": manifest.chunksRoot]))
        if let criteria = members.criteria {
            try append(.init(kind: .criteria, at: Timestamp.now(), actor: .broker, subject: package, objects: ["criteriaSha256": Digest.sha256Hex(criteria)]))
        }
        try append(.init(kind: .verdict, at: Timestamp.now(), actor: .broker, subject: package,
                         objects: ["verdictSha256": Digest.sha256Hex(members.verification), "manifestSha256": manifestSha], details: ["outcome": "verified"]))
        var exported = ["manifestSha256": manifestSha, "readmeSha256": Digest.sha256Hex(Array(members.readme.utf8)), "caseContextSha256": CASEGraph.contextSha256]
        if let renewals = members.renewals { exported["renewalsSha256"] = Digest.sha256Hex(renewals) }
        try append(.init(kind: .packageExported, at: Timestamp.now(), actor: .init(type: .user, id: "investigator", address: "192.0.2.10", agent: "custos"),
                         subject: package, objects: exported))
    }
}
