import CustosCanonicalJSON
import CustosCriteria
import CustosCustody
import CustosEvidence
import CustosKafka
import CustosModel
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// What has been checked of one package whose chunks are arriving (package protocol v2,
/// `schemas/package/SPEC.md` §7): the content checks and the four-criteria judge, fed chunk by
/// chunk in index order. `checked` chunks (0 ..< checked) are in it.
struct Arrival: Sendable {
    var checked = 0
    var content = ArrivingContent()
    /// Nil when the request as approved cannot be read (the verdict then has no criteria).
    var judge: PackageJudge?
    /// Where the judge's record digests spill (removed with the arrival).
    var digests: SpillingDigests?

    mutating func consume(_ bytes: [UInt8], sha256: [UInt8], results: [ChunkBody.ResultStart]) {
        bytes.withUnsafeBytes { raw in
            content.consume(chunk: raw, sha256: sha256, results: results)
            let leaves = content.takeLeaves()
            judge?.consume(content: raw, leaves: leaves)
        }
        checked += 1
    }

    func discard() {
        if let digests { try? FileManager.default.removeItem(at: digests.directory) }
    }
}

/// The arrivals this broker process is working on, by package. An arrival is taken out while a
/// chunk is applied and put back with the number of chunks its transaction recorded as
/// checked; one whose count differs from the database's (a transaction that rolled back, or
/// another broker instance that took the partition over) is rebuilt from the chunk store.
final class Arrivals: Sendable {
    private let entries = Mutex<[UUID: Arrival]>([:])
    let spool: URL

    init() {
        spool = FileManager.default.temporaryDirectory.appendingPathComponent("custos-broker-judging-\(getpid())")
    }

    /// The arrival of `id` if it has exactly `checked` chunks in it; any other is discarded.
    func take(_ id: UUID, checked: Int) -> Arrival? {
        guard let arrival = entries.withLock({ $0.removeValue(forKey: id) }) else { return nil }
        if arrival.checked == checked { return arrival }
        arrival.discard()
        return nil
    }

    func put(_ id: UUID, _ arrival: Arrival) {
        let previous = entries.withLock { e -> Arrival? in defer { e[id] = arrival }; return e[id] }
        previous?.discard()
    }

    func remove(_ id: UUID) {
        entries.withLock { $0.removeValue(forKey: id) }?.discard()
    }

    /// A new, empty arrival for a package of `request` (nil: its criteria cannot be judged).
    func start(_ id: UUID, request: ApprovedRequest?) -> Arrival {
        var arrival = Arrival()
        if let request {
            let digests = try? SpillingDigests(directory: spool.appendingPathComponent(id.lowercased + "-" + UUID().uuidString.lowercased()))
            arrival.digests = digests
            arrival.judge = PackageJudge(request: request, digests: digests)
            arrival.content = ArrivingContent(collectsLeaves: true)
        }
        return arrival
    }
}

extension BrokerStore {
    /// The chunk store, or a clear error where none is configured (the admin commands).
    func chunkStore() throws -> any ChunkStore {
        guard let chunks else { throw BrokerError(.storageFailure, "no chunk store is configured (storage.directory)") }
        return chunks
    }

    /// A chunk of package protocol v2: checked against its authenticated envelope, indexed
    /// once and written to the chunk store (durably, in the same transaction, before the caller
    /// stores its Kafka offset), then fed to the package's checks in index order — a chunk that arrives early waits in the
    /// store. When the manifest is in and every chunk it lists has been checked, the package
    /// is finalised.
    /// `sha256`: the SHA-256 of `bytes` (hex), taken once by the caller.
    func acceptChunk(_ conn: PostgresConnection, _ body: ChunkBody, bytes: [UInt8], sha256: String, header: EnvelopeHeader, provider: String,
                     custody: CustodyRecorder) async throws {
        guard bytes.count == body.size, (1...Topics.maximumChunkBytes).contains(bytes.count) else {
            throw IngestRejection(reason: "chunk size differs from its envelope")
        }
        guard Digest.isSHA256Hex(body.sha256), sha256 == body.sha256 else { throw IngestRejection(reason: "chunk SHA-256 differs from its envelope") }
        guard (0..<Self.maximumChunks).contains(body.index) else { throw IngestRejection(reason: "chunk index outside 0 to \(Self.maximumChunks - 1)") }
        guard body.resultsAreWellFormed, body.results.allSatisfy({ $0.result < Self.maximumResults }) else {
            throw IngestRejection(reason: "malformed: the chunk's results must start at offset 0 and increase in offset and result, inside the chunk")
        }
        let claim = try await claimArrival(conn, packageId: body.packageId, requestId: header.requestId, provider: provider)
        if claim.manifestIn {
            let state = try await conn.query("SELECT state FROM packages WHERE id = \(body.packageId)", logger: logger).decode(String.self).first { _ in true }
            guard state == nil || state == PackageState.receiving.rawValue else { return }  // finalised already: a redelivery
        }
        // Indexed first, stored second: if the store fails, the transaction (and the index row)
        // is rolled back, and the message is tried again. A chunk indexed before (sent again
        // after a crash) adds nothing.
        let store = try chunkStore()
        let location = store.location(sha256: body.sha256)
        let inserted = try await conn.query("""
            INSERT INTO package_chunks (package_id, idx, request_id, sha256, size, location, results)
            VALUES (\(body.packageId), \(body.index), \(header.requestId), \(body.sha256), \(body.size), \(location),
                    \(String(decoding: try CanonicalJSON.encode(body.results), as: UTF8.self)))
            ON CONFLICT DO NOTHING RETURNING 1
            """, logger: logger).decode(Int.self).first { _ in true } != nil
        guard inserted else { return }
        let stored = try bytes.withUnsafeBytes { try store.put($0, sha256: body.sha256) }
        guard stored == location else {
            throw ChunkStoreError(kind: .unwritable, location: stored, detail: "the store put the chunk elsewhere than its content address \(location)")
        }
        custody.record(CustodyEvent(
            kind: .chunkReceived, at: Timestamp.now(), actor: .init(type: .provider, id: provider),
            subject: .init(requestId: header.requestId, packageId: body.packageId, chunk: body.index),
            objects: ["chunkSha256": body.sha256], details: ["size": "\(body.size)"]))
        try await advance(conn, packageId: body.packageId, requestId: header.requestId, arrived: (body, bytes),
                          known: (claim.checked, claim.stored + 1))
        if claim.manifestIn { try await finalizeIfComplete(conn, packageId: body.packageId, custody: custody) }
    }

    /// The package's arrival row — who sends it, how many chunks are checked and stored,
    /// whether its manifest is in — made by its first chunk or its manifest, and locked for
    /// this transaction (one statement). A package id another request or provider uses is
    /// refused.
    @discardableResult
    func claimArrival(_ conn: PostgresConnection, packageId: UUID, requestId: UUID, provider: String, manifest: Bool = false) async throws
        -> (checked: Int, stored: Int, manifestIn: Bool)
    {
        var row: (UUID, String, Int, Int, Bool)?
        for try await r in try await conn.query("""
            INSERT INTO arriving_packages (package_id, request_id, provider_id, manifest_in) VALUES (\(packageId), \(requestId), \(provider), \(manifest))
            ON CONFLICT (package_id) DO UPDATE SET manifest_in = arriving_packages.manifest_in OR EXCLUDED.manifest_in
            RETURNING request_id, provider_id, checked, stored, manifest_in
            """, logger: logger).decode((UUID, String, Int, Int, Bool).self) { row = r }
        guard let row, row.0 == requestId, row.1 == provider else { throw IngestRejection(reason: "the package belongs to another request") }
        return (row.2, row.3, row.4)
    }

    /// A package's chunks are indexed 0 ..< this.
    static let maximumChunks = 1_000_000
    /// A request's results are fewer than this (targets × categories).
    static let maximumResults = 1_000_000

    /// Feeds the package's checks every chunk from the first unchecked one on, as long as the
    /// next is stored: `arrived` from the message in hand, the others read back from the chunk
    /// store (and checked against their index). Records the new count.
    @discardableResult
    /// `known`: the arrival row's counts as this transaction has them (checked, and stored
    /// with the chunk in hand), when the caller has them already; they spare a query, and
    /// the search for early chunks when none waits.
    func advance(_ conn: PostgresConnection, packageId: UUID, requestId: UUID, arrived: (ChunkBody, [UInt8])? = nil,
                 known: (checked: Int, stored: Int)? = nil) async throws -> Arrival {
        var checked = 0, stored = Int.max
        if let known {
            (checked, stored) = known
        } else {
            checked = try await conn.query("SELECT checked FROM arriving_packages WHERE package_id = \(packageId)", logger: logger)
                .decode(Int.self).first { _ in true } ?? 0
        }
        var arrival: Arrival
        if let kept = arrivals.take(packageId, checked: checked) {
            arrival = kept
        } else {
            // Not in this process's memory (a restart, or another instance checked the first
            // chunks): rebuilt from the chunk store, never trusted blindly.
            arrival = arrivals.start(packageId, request: try await approvedRequest(conn, requestId))
            if checked > 0 { try await feed(conn, packageId: packageId, into: &arrival, from: 0, to: checked) }
        }
        do {
            if let (body, bytes) = arrived, body.index == arrival.checked {
                arrival.consume(bytes, sha256: Digest.bytes(hex: body.sha256)!, results: body.results)
            }
            if stored > arrival.checked {
                // Chunks that arrived early, now next in line.
                var next = arrival.checked
                for try await idx in try await conn.query("""
                    SELECT idx FROM package_chunks WHERE package_id = \(packageId) AND idx >= \(arrival.checked) ORDER BY idx
                    """, logger: logger).decode(Int.self) where idx == next {
                    next += 1
                }
                if next > arrival.checked { try await feed(conn, packageId: packageId, into: &arrival, from: arrival.checked, to: next) }
            }
            if let known {
                try await conn.query("UPDATE arriving_packages SET checked = \(arrival.checked), stored = \(known.stored) WHERE package_id = \(packageId)",
                                     logger: logger)
            } else if arrival.checked != checked {
                try await conn.query("UPDATE arriving_packages SET checked = \(arrival.checked) WHERE package_id = \(packageId)", logger: logger)
            }
        } catch {
            arrival.discard()
            throw error
        }
        arrivals.put(packageId, arrival)
        return arrival
    }

    /// Reads chunks `from ..< to` back from the store (or, for packages stored before the
    /// chunk store, from the index row) and feeds them to `arrival`. A chunk that cannot be
    /// read is recorded as a `chunk-missing` failure, by location; the rest go on.
    private func feed(_ conn: PostgresConnection, packageId: UUID, into arrival: inout Arrival, from: Int, to: Int) async throws {
        var rows: [(Int, String, String?, String?, ByteBuffer?)] = []
        for try await r in try await conn.query("""
            SELECT idx, sha256, location, results, data FROM package_chunks WHERE package_id = \(packageId) AND idx >= \(from) AND idx < \(to) ORDER BY idx
            """, logger: logger).decode((Int, String, String?, String?, ByteBuffer?).self) { rows.append(r) }
        for (idx, sha, location, resultsJSON, data) in rows {
            let results = resultsJSON.flatMap { try? JSONDecoder().decode([ChunkBody.ResultStart].self, from: Data($0.utf8)) } ?? [.init(result: 0, offset: 0)]
            do {
                let bytes = try readChunk(sha256: sha, location: location, data: data)
                arrival.consume(bytes, sha256: Digest.bytes(hex: sha)!, results: results)
            } catch {
                logger.error("a stored chunk cannot be read", metadata: [LogKey.package: "\(packageId.lowercased)", "custos.chunk": "\(idx)", LogKey.error: "\(error)"])
                arrival.content.unreadable(idx, "\(error)")
                arrival.checked += 1
            }
        }
    }

    /// One stored chunk's bytes: from the chunk store, or from the index row for a chunk stored
    /// before there was one. Throws `ChunkStoreError` for a chunk missing or corrupted.
    func readChunk(sha256: String, location: String?, data: ByteBuffer?) throws -> [UInt8] {
        if let location { return try chunkStore().get(location: location, sha256: sha256) }
        guard let data else { throw ChunkStoreError(kind: .missing, location: "database", detail: "no location and no data") }
        let bytes = Array(data.readableBytesView)
        guard Digest.sha256Hex(bytes) == sha256 else { throw ChunkStoreError(kind: .corrupted, location: "database", detail: "its SHA-256 differs from the index") }
        return bytes
    }

    func approvedRequest(_ conn: PostgresConnection, _ requestId: UUID) async throws -> ApprovedRequest? {
        let text = try await conn.query("SELECT approved_request FROM requests WHERE id = \(requestId)", logger: logger)
            .decode(String?.self).first { _ in true } ?? nil
        return text.flatMap { try? JSONDecoder().decode(ApprovedRequest.self, from: Data($0.utf8)) }
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
                    let bytes = try readChunk(sha256: sha, location: location, data: data)
                    if bytes.count != size { audit.problems.append("package \(package.lowercased) chunk \(idx): \(bytes.count) bytes, the index says \(size)") }
                } catch let e as ChunkStoreError {
                    audit.problems.append("package \(package.lowercased) chunk \(idx): \(e.kind.rawValue) at \(e.location): \(e.detail)")
                }
            }
        }
    }
}
