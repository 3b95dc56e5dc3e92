import CustosCanonicalJSON
import CustosModel
import Foundation
import Logging
import PostgresNIO

/// The SQL of package ingest, and nothing else: the rows `PackageIngest` reads and writes for
/// packages whose chunks and manifests are arriving (package protocol v2,
/// `schemas/package/SPEC.md` §7). Each function runs in the caller's transaction.
enum PackageStore {
    /// An arriving package's row: who sends it, how many chunks are checked and stored, whether
    /// its manifest is in.
    struct ArrivalRow: Sendable, Equatable {
        var requestId: UUID
        var provider: String
        var checked: Int
        var stored: Int
        var manifestIn: Bool
    }

    /// Makes the package's arrival row (its first chunk or its manifest does) or marks its
    /// manifest in, and locks it for the transaction (one statement).
    static func claimArrival(_ conn: PostgresConnection, packageId: UUID, requestId: UUID, provider: String, manifest: Bool, logger: Logger) async throws
        -> ArrivalRow
    {
        var row: ArrivalRow?
        for try await (request, sender, checked, stored, manifestIn) in try await conn.query("""
            INSERT INTO arriving_packages (package_id, request_id, provider_id, manifest_in) VALUES (\(packageId), \(requestId), \(provider), \(manifest))
            ON CONFLICT (package_id) DO UPDATE SET manifest_in = arriving_packages.manifest_in OR EXCLUDED.manifest_in
            RETURNING request_id, provider_id, checked, stored, manifest_in
            """, logger: logger).decode((UUID, String, Int, Int, Bool).self) {
            row = ArrivalRow(requestId: request, provider: sender, checked: checked, stored: stored, manifestIn: manifestIn)
        }
        guard let row else { throw BrokerError(.unavailable, "the arrival row was not returned") }
        return row
    }

    /// How many of the package's chunks are checked (0 before its first).
    static func checkedCount(_ conn: PostgresConnection, packageId: UUID, logger: Logger) async throws -> Int {
        try await conn.query("SELECT checked FROM arriving_packages WHERE package_id = \(packageId)", logger: logger)
            .decode(Int.self).first { _ in true } ?? 0
    }

    /// Records how many chunks are checked (and, when known, stored).
    static func recordCounts(_ conn: PostgresConnection, packageId: UUID, checked: Int, stored: Int?, logger: Logger) async throws {
        if let stored {
            try await conn.query("UPDATE arriving_packages SET checked = \(checked), stored = \(stored), last_at = now() WHERE package_id = \(packageId)", logger: logger)
        } else {
            try await conn.query("UPDATE arriving_packages SET checked = \(checked), last_at = now() WHERE package_id = \(packageId)", logger: logger)
        }
    }

    /// Packages of `requestId` other than `except` that never got a manifest.
    static func abandonedArrivals(_ conn: PostgresConnection, requestId: UUID, except: UUID, logger: Logger) async throws -> [UUID] {
        var out: [UUID] = []
        for try await id in try await conn.query("""
            SELECT package_id FROM arriving_packages WHERE request_id = \(requestId) AND package_id <> \(except) AND NOT manifest_in
            """, logger: logger).decode(UUID.self) { out.append(id) }
        return out
    }

    /// The package's state, nil before its manifest.
    static func state(_ conn: PostgresConnection, packageId: UUID, logger: Logger) async throws -> PackageState? {
        try await conn.query("SELECT state FROM packages WHERE id = \(packageId)", logger: logger).decode(String.self).first { _ in true }
            .flatMap(PackageState.init(rawValue:))
    }

    /// Indexes a chunk; returns false when it was indexed before (sent again after a crash).
    static func indexChunk(_ conn: PostgresConnection, _ body: ChunkBody, requestId: UUID, location: String, logger: Logger) async throws -> Bool {
        try await conn.query("""
            INSERT INTO package_chunks (package_id, idx, request_id, sha256, size, location, results)
            VALUES (\(body.packageId), \(body.index), \(requestId), \(body.sha256), \(body.size), \(location),
                    \(String(decoding: try CanonicalJSON.encode(body.results), as: UTF8.self)))
            ON CONFLICT DO NOTHING RETURNING 1
            """, logger: logger).decode(Int.self).first { _ in true } != nil
    }

    /// The indexes of the package's chunks from `from` on, in order.
    static func chunkIndexes(_ conn: PostgresConnection, packageId: UUID, from: Int, logger: Logger) async throws -> [Int] {
        var out: [Int] = []
        for try await idx in try await conn.query("""
            SELECT idx FROM package_chunks WHERE package_id = \(packageId) AND idx >= \(from) ORDER BY idx
            """, logger: logger).decode(Int.self) { out.append(idx) }
        return out
    }

    /// One chunk's index row.
    struct ChunkRow: Sendable {
        var index: Int
        var sha256: String
        /// Where the chunk store keeps it; nil for a chunk stored before there was one.
        var location: String?
        var results: [ChunkBody.ResultStart]
        /// The bytes, for a chunk stored before the chunk store.
        var data: ByteBuffer?
    }

    /// The index rows of chunks `from ..< to`, in order.
    static func chunkRows(_ conn: PostgresConnection, packageId: UUID, from: Int, to: Int, logger: Logger) async throws -> [ChunkRow] {
        var rows: [ChunkRow] = []
        for try await (idx, sha, location, resultsJSON, data) in try await conn.query("""
            SELECT idx, sha256, location, results, data FROM package_chunks WHERE package_id = \(packageId) AND idx >= \(from) AND idx < \(to) ORDER BY idx
            """, logger: logger).decode((Int, String, String?, String?, ByteBuffer?).self) {
            let results = resultsJSON.flatMap { try? JSONDecoder().decode([ChunkBody.ResultStart].self, from: Data($0.utf8)) } ?? [.init(result: 0, offset: 0)]
            rows.append(ChunkRow(index: idx, sha256: sha, location: location, results: results, data: data))
        }
        return rows
    }

    /// How many chunks are indexed at or past `index`.
    static func chunksBeyond(_ conn: PostgresConnection, packageId: UUID, index: Int, logger: Logger) async throws -> Int {
        try await conn.query("SELECT count(*) FROM package_chunks WHERE package_id = \(packageId) AND idx >= \(index)", logger: logger)
            .decode(Int.self).first { _ in true } ?? 0
    }

    /// The SHA-256 (hex) of each chunk indexed below `count`, by index.
    static func chunkHashes(_ conn: PostgresConnection, packageId: UUID, below count: Int, logger: Logger) async throws -> [(Int, String)] {
        var out: [(Int, String)] = []
        for try await row in try await conn.query(
            "SELECT idx, sha256 FROM package_chunks WHERE package_id = \(packageId) AND idx < \(count) ORDER BY idx", logger: logger
        ).decode((Int, String).self) { out.append(row) }
        return out
    }

    /// The request as approved, nil when it cannot be read.
    static func approvedRequest(_ conn: PostgresConnection, _ requestId: UUID, logger: Logger) async throws -> ApprovedRequest? {
        let text = try await conn.query("SELECT approved_request FROM requests WHERE id = \(requestId)", logger: logger)
            .decode(String?.self).first { _ in true } ?? nil
        return text.flatMap { try? JSONDecoder().decode(ApprovedRequest.self, from: Data($0.utf8)) }
    }

    // MARK: Manifests sent in parts

    /// The count and body hash the package's parts already in agree on, nil before the first.
    static func manifestPartsAgreement(_ conn: PostgresConnection, packageId: UUID, logger: Logger) async throws -> (count: Int, bodySha256: String)? {
        var out: (Int, String)?
        for try await row in try await conn.query(
            "SELECT count, body_sha256 FROM manifest_parts WHERE package_id = \(packageId) LIMIT 1", logger: logger
        ).decode((Int, String).self) { out = row }
        return out
    }

    /// Keeps one part; returns how many of the package's parts are in.
    static func keepManifestPart(_ conn: PostgresConnection, _ part: ManifestPartBody, requestId: UUID, bytes: [UInt8], logger: Logger) async throws -> Int {
        try await conn.query("""
            INSERT INTO manifest_parts (package_id, request_id, idx, count, body_sha256, data)
            VALUES (\(part.packageId), \(requestId), \(part.index), \(part.count), \(part.bodySha256), \(ByteBuffer(bytes: bytes)))
            ON CONFLICT DO NOTHING
            """, logger: logger)
        return try await conn.query("SELECT count(*) FROM manifest_parts WHERE package_id = \(part.packageId)", logger: logger)
            .decode(Int.self).first { _ in true } ?? 0
    }

    /// The parts' bytes joined in order; the parts are removed.
    static func takeManifestParts(_ conn: PostgresConnection, packageId: UUID, logger: Logger) async throws -> [UInt8] {
        var whole: [UInt8] = []
        for try await data in try await conn.query(
            "SELECT data FROM manifest_parts WHERE package_id = \(packageId) ORDER BY idx", logger: logger
        ).decode(ByteBuffer.self) { whole += data.readableBytesView }
        try await conn.query("DELETE FROM manifest_parts WHERE package_id = \(packageId)", logger: logger)
        return whole
    }

    // MARK: Packages

    /// Stores a package's signed manifest, as sent; returns false when it was stored before.
    static func insertPackage(_ conn: PostgresConnection, _ m: Manifest, provider: String, signedBytes: [UInt8], signature: Data, timeStamp: Data,
                              manifestSha256: String, sealReason: String?, logger: Logger) async throws -> Bool {
        try await conn.query("""
            INSERT INTO packages (id, request_id, provider_id, manifest, manifest_signature, time_stamp, manifest_sha256, chunk_count, content_size, chunks_root,
                                  sealed, seal_reason)
            VALUES (\(m.packageId), \(m.requestId), \(provider), \(String(decoding: signedBytes, as: UTF8.self)), \(ByteBuffer(data: signature)),
                    \(ByteBuffer(data: timeStamp)), \(manifestSha256), \(m.chunks.count), \(m.content.size), \(m.chunksRoot), \(sealReason != nil), \(sealReason))
            ON CONFLICT (id) DO NOTHING RETURNING 1
            """, logger: logger).decode(Int.self).first { _ in true } != nil
    }

    /// What finalising a package reads: the manifest as signed and sent, its signature and
    /// time-stamp, and what the verdict is judged against.
    struct Received: Sendable {
        var requestId: UUID
        var provider: String
        var manifest: [UInt8]
        var signature: [UInt8]
        var timeStamp: [UInt8]
        var chunkCount: Int
        var state: PackageState
    }

    static func received(_ conn: PostgresConnection, packageId: UUID, logger: Logger) async throws -> Received? {
        var out: Received?
        for try await (request, provider, manifest, signature, timeStamp, count, state) in try await conn.query("""
            SELECT request_id, provider_id, manifest, manifest_signature, time_stamp, chunk_count, state FROM packages WHERE id = \(packageId)
            """, logger: logger).decode((UUID, String, String, ByteBuffer, ByteBuffer, Int, String).self) {
            out = Received(requestId: request, provider: provider, manifest: Array(manifest.utf8), signature: Array(signature.readableBytesView),
                           timeStamp: Array(timeStamp.readableBytesView), chunkCount: count, state: PackageState(rawValue: state) ?? .receiving)
        }
        return out
    }

    /// What a verdict is judged against: the provider's registered CA, the request's hash as
    /// approved, and its delivery deadline.
    static func judgedAgainst(_ conn: PostgresConnection, provider: String, requestId: UUID, logger: Logger) async throws
        -> (providerTrust: String, requestHash: String, deliveryDeadline: Date?)
    {
        var trust = ""
        for try await ca in try await conn.query("SELECT ca_certificate_pem FROM providers WHERE id = \(provider)", logger: logger).decode(String.self) {
            trust = ca
        }
        let hash = try await conn.query("SELECT request_hash FROM requests WHERE id = \(requestId)", logger: logger)
            .decode(String?.self).first { _ in true } ?? nil
        let deadline = try await conn.query("SELECT deadline FROM request_clocks WHERE request_id = \(requestId) AND clock = 'delivery'", logger: logger)
            .decode(Date.self).first { _ in true }
        return (trust, hash ?? "", deadline)
    }

    /// Records a package's verdict (and its criteria, time-stamp and signer).
    static func recordVerdict(_ conn: PostgresConnection, packageId: UUID, _ f: PackageIngest.Finalisation, logger: Logger) async throws {
        try await conn.query("""
            UPDATE packages SET state = \(f.state.rawValue), verification = \(f.verdictJSON), verified_at = now(),
                criteria = \(f.criteriaJSON), admissible = \(f.criteria?.admissible),
                time_stamped_at = \(f.signature.genTime), time_stamp_accuracy_us = \(f.signature.accuracyMicroseconds),
                signer = \(f.signature.signer?.commonName),
                signer_certificate = \(f.signature.signer?.pem)
            WHERE id = \(packageId)
            """, logger: logger)
    }
}
