import CustosEvidence
import CustosModel
import Foundation
import NIOCore
import PostgresNIO

extension BrokerStore {
    /// A package as `viewer` may see it: one of its own agency's (nil: internal use, any).
    public func package(_ id: UUID, viewer: AuthenticatedUser?) async throws -> API.PackageView {
        let agency = viewer?.agency
        var row: (UUID, String, String, String, ByteBuffer, ByteBuffer, Date?, Int64?, String?, String, String?, Date, Bool, String?, String?)?
        for try await r in try await client.query("""
            SELECT p.request_id, p.provider_id, p.state, p.manifest, p.manifest_signature, p.time_stamp, p.time_stamped_at, p.time_stamp_accuracy_us,
                   p.signer, p.manifest_sha256, p.verification, p.received_at, p.sealed, p.seal_reason, p.criteria
            FROM packages p JOIN requests r ON r.id = p.request_id JOIN cases c ON c.id = r.case_id
            WHERE p.id = \(id) AND (\(agency)::text IS NULL OR c.agency = \(agency))
            """, logger: logger).decode((UUID, String, String, String, ByteBuffer, ByteBuffer, Date?, Int64?, String?, String, String?, Date, Bool, String?, String?).self) { row = r }
        guard let (requestId, provider, state, manifest, signature, timeStamp, stampedAt, accuracy, signer, sha, verification, receivedAt, sealed, sealReason, criteria) = row else {
            throw BrokerError(.notFound, "no such package")
        }
        let summary = try verification.map { v -> API.PackageVerificationSummary in
            let pv = try JSONDecoder().decode(PackageVerification.self, from: Data(v.utf8))
            return API.PackageVerificationSummary(valid: pv.valid, failures: pv.failures.map(\.description), checkedAt: pv.checkedAt)
        }
        return API.PackageView(
            id: id, requestId: requestId, providerId: provider, state: PackageState(rawValue: state) ?? .receiving,
            manifest: try JSONDecoder().decode(Manifest.self, from: Data(manifest.utf8)),
            signature: Data(signature.readableBytesView).base64EncodedString(), timeStamp: Data(timeStamp.readableBytesView).base64EncodedString(),
            timeStampedAt: stampedAt.map(Timestamp.format), timeStampAccuracyMicroseconds: accuracy, signer: signer,
            manifestSha256: sha, verification: summary, receivedAt: Timestamp.format(receivedAt), sealed: sealed,
            sealReason: sealReason, criteria: try criteria.map { try JSONDecoder().decode(Verdict.self, from: Data($0.utf8)) }, manifestText: manifest)
    }

    /// Chunk `index` of a package, read from the chunk store and checked against its index
    /// (SHA-256). A chunk that is missing or corrupted is never served: it is a failed package
    /// read, reported with its location (`BrokerError` internal; the caller's response says so).
    public func chunk(package id: UUID, index: Int) async throws -> ByteBuffer {
        for try await (sha, location, data) in try await client.query(
            "SELECT sha256, location, data FROM package_chunks WHERE package_id = \(id) AND idx = \(index)", logger: logger
        ).decode((String, String?, ByteBuffer?).self) {
            do {
                return ByteBuffer(bytes: try packages.readChunk(sha256: sha, location: location, data: data))
            } catch let e as ChunkStoreError {
                logger.error("package read failed: a stored chunk cannot be read", metadata: [
                    LogKey.package: "\(id.lowercased)", "custos.chunk": "\(index)", LogKey.error: "\(e)",
                ])
                throw BrokerError(.storageFailure, "package read failed: chunk \(index) is \(e.kind.rawValue) in the chunk store (\(e.location))")
            }
        }
        throw BrokerError(.notFound, "chunk \(index) of the package is missing")
    }
}

extension BrokerStore {
    /// What an export bundle needs besides the manifest and the chunks.
    public struct BundleParts: Sendable {
        public var request: [UInt8]
        public var signerPEM: String
        public var verification: [UInt8]
        /// The four criteria's verdict (canonical JSON), when the package has one.
        public var criteria: [UInt8]?
        /// The manifest exactly as the provider signed and sent it.
        public var manifest: [UInt8]
    }

    public func bundleParts(_ id: UUID) async throws -> BundleParts {
        for try await (request, signer, verification, criteria, manifest) in try await client.query("""
            SELECT r.approved_request, p.signer_certificate, p.verification, p.criteria, p.manifest FROM packages p JOIN requests r ON r.id = p.request_id
            WHERE p.id = \(id)
            """, logger: logger).decode((String?, String?, String?, String?, String).self) {
            return BundleParts(request: Array((request ?? "").utf8), signerPEM: signer ?? "", verification: Array((verification ?? "").utf8),
                               criteria: criteria.map { Array($0.utf8) }, manifest: Array(manifest.utf8))
        }
        throw BrokerError(.notFound, "no such package")
    }
}

extension BrokerStore {
    /// What `custos-broker audit` found in the chunk store.
    public struct ChunkAudit: Codable, Sendable {
        /// Chunks the index lists, and their bytes.
        public var chunks: Int
        public var bytes: Int64
        /// Each chunk that is missing or corrupted, by package, index and location.
        public var problems: [String]
    }

    /// Reads every chunk the index lists back from the chunk store (or, for chunks stored
    /// before it, from the index row) and checks it against the index's SHA-256 and size.
    public func auditChunks() async throws -> ChunkAudit {
        var audit = ChunkAudit(chunks: 0, bytes: 0, problems: [])
        var after: (UUID, Int)? = nil
        while true {
            // In pages, so that memory does not grow with the store.
            var page: [(UUID, Int, String, Int, String?, ByteBuffer?)] = []
            let (lastPackage, lastIndex) = after ?? (UUID(uuid: (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)), -1)
            for try await r in try await client.query("""
                SELECT package_id, idx, sha256, size, location, data FROM package_chunks
                WHERE (package_id, idx) > (\(lastPackage), \(lastIndex)) ORDER BY package_id, idx LIMIT 256
                """, logger: logger).decode((UUID, Int, String, Int, String?, ByteBuffer?).self) { page.append(r) }
            guard let last = page.last else { return audit }
            after = (last.0, last.1)
            for (package, idx, sha, size, location, data) in page {
                audit.chunks += 1
                audit.bytes += Int64(size)
                do {
                    let bytes = try packages.readChunk(sha256: sha, location: location, data: data)
                    if bytes.count != size { audit.problems.append("package \(package.lowercased) chunk \(idx): \(bytes.count) bytes, the index says \(size)") }
                } catch let e as ChunkStoreError {
                    audit.problems.append("package \(package.lowercased) chunk \(idx): \(e.kind.rawValue) at \(e.location): \(e.detail)")
                }
            }
        }
    }
}
