import CustosCanonicalJSON
import CustosCustody
import CustosModel
import CustosEvidence
import Foundation
import Logging
import Metrics
import PostgresNIO

/// When the broker waits for chunks a package's manifest lists (package SPEC §7, "Gaps").
///
/// In package protocol v2 the manifest is a package's last message: by the time it is in, the
/// connector has had every chunk acknowledged by Kafka. A chunk still missing once the package
/// has been quiet for `after` (`emergencyAfter` for an emergency) was lost between them, so the
/// broker asks for exactly the missing ones with a signed `resend` message, then again after
/// twice as long each time, at most `maxRequests` times.
public struct ChunkResendSettings: Sendable {
    /// `packages.missingChunksAfterSeconds`: how long a package with its manifest in may be
    /// quiet before its missing chunks are asked for (60 seconds).
    public var after: Duration = .seconds(60)
    /// `packages.emergencyMissingChunksAfterSeconds`: the same for an emergency (10 seconds).
    public var emergencyAfter: Duration = .seconds(10)
    /// `packages.maxResendRequests`: how many times the broker asks at most (10).
    public var maxRequests = 10

    public init() {}
}

enum PackageResend {
    /// `custos_packages_chunks_requested_total`: chunks asked for again with `resend` messages.
    static let chunksRequested = Counter(label: "custos.packages.chunks.requested")
    /// `custos_packages_receipts_resent_total`: receipts sent again for a manifest sent again.
    static let receiptsResent = Counter(label: "custos.packages.receipts.resent")

    /// Queues `resend` messages for packages due at `t`: manifest in, chunks missing, quiet for
    /// the wait (doubled after each request). Runs in the caller's transaction; returns how many
    /// messages it queued (the caller wakes the outbox relay).
    static func markDue(_ conn: PostgresConnection, at t: Date, settings: ChunkResendSettings, signer: SigningKey, custody: CustodyRecorder,
                        limit: Int = 50, logger: Logger) async throws -> Int {
        guard settings.maxRequests > 0 else { return 0 }
        var due: [UUID] = []
        for try await id in try await conn.query("""
            SELECT a.package_id FROM arriving_packages a
            JOIN packages p ON p.id = a.package_id JOIN requests r ON r.id = a.request_id
            WHERE a.manifest_in AND p.state = 'receiving' AND a.resend_requests < \(settings.maxRequests)
              AND greatest(a.last_at, p.received_at, coalesce(a.resend_requested_at, p.received_at))
                  + make_interval(secs => (CASE WHEN r.priority = 'emergency' THEN \(LegalClock.seconds(settings.emergencyAfter))
                                                ELSE \(LegalClock.seconds(settings.after)) END) * power(2, a.resend_requests)) <= \(t)
            ORDER BY p.received_at LIMIT \(limit) FOR UPDATE OF a SKIP LOCKED
            """, logger: logger).decode(UUID.self) { due.append(id) }
        var queued = 0
        for packageId in due where try await request(conn, packageId: packageId, at: t, signer: signer, custody: custody, logger: logger) { queued += 1 }
        return queued
    }

    /// Asks the provider for the chunks of `packageId` that are not stored, when its manifest is
    /// in and it is still receiving: one signed `resend` message (the first
    /// `ResendBody.maximumIndices` missing indices), a `package.chunks-requested` custody event.
    /// Returns false when nothing is missing (the package then waits for its checks). `t`: now
    /// (the time the next wait is counted from).
    static func request(_ conn: PostgresConnection, packageId: UUID, at t: Date = Date(), signer: SigningKey, custody: CustodyRecorder,
                        logger: Logger) async throws -> Bool {
        var row: (UUID, String, String, String, Int, Int, String?, UUID)?
        for try await r in try await conn.query("""
            SELECT p.request_id, p.provider_id, p.manifest, p.manifest_sha256, p.chunk_count, a.resend_requests, r.priority, r.case_id
            FROM packages p JOIN arriving_packages a ON a.package_id = p.id JOIN requests r ON r.id = p.request_id
            WHERE p.id = \(packageId) AND p.state = 'receiving'
            """, logger: logger).decode((UUID, String, String, String, Int, Int, String?, UUID).self) { row = r }
        guard let (requestId, provider, manifest, manifestSha, chunkCount, attempts, priority, caseId) = row else { return false }
        var missing: [Int] = []
        for try await i in try await conn.query("""
            SELECT i FROM generate_series(0, \(chunkCount - 1)) i
            WHERE NOT EXISTS (SELECT 1 FROM package_chunks c WHERE c.package_id = \(packageId) AND c.idx = i)
            ORDER BY i LIMIT \(ResendBody.maximumIndices)
            """, logger: logger).decode(Int.self) { missing.append(i) }
        guard !missing.isEmpty else { return false }
        let attempt = attempts + 1
        try await conn.query("UPDATE arriving_packages SET resend_requests = \(attempt), resend_requested_at = \(t) WHERE package_id = \(packageId)",
                             logger: logger)
        // The package id as the provider's signed manifest spells it.
        let packageIdAsSent = (try? JSONParser.parse(Array(manifest.utf8)))?["packageId"]?.stringValue ?? packageId.lowercased
        let urgent = priority == Priority.emergency.rawValue
        let envelope = Envelope(type: .resend, id: UUID.derived("resend", packageId.lowercased, String(attempt)), requestId: requestId, sender: "broker",
                                body: ResendBody(packageId: packageIdAsSent, manifestSha256: manifestSha, indices: missing, attempt: attempt))
        try await BrokerStore.enqueue(conn, envelope, topic: urgent ? Topics.toProviderUrgent(provider) : Topics.toProvider(provider), urgent: urgent,
                                      signer: signer, logger: logger)
        custody.record(CustodyEvent(kind: .chunksRequested, at: Timestamp.now(), actor: .broker,
                                    subject: .init(caseId: caseId, requestId: requestId, packageId: packageId),
                                    details: ["attempt": "\(attempt)", "missing": "\(missing.count)", "messageId": envelope.id.lowercased]))
        chunksRequested.increment(by: missing.count)
        logger.warning("chunks of a package missing after its manifest; asked for again", metadata: [
            LogKey.package: "\(packageId.lowercased)", "custos.missing": "\(missing.count)", "custos.attempt": "\(attempt)",
        ])
        return true
    }

    /// The provider sent a package's manifest again: it has not had the receipt. A package
    /// judged already has its receipt sent again (the same outbox row: same id and signed
    /// bytes; a `package.receipt-resent` event); one still receiving has its missing chunks
    /// asked for at once. Returns whether a message was queued.
    static func manifestAgain(_ conn: PostgresConnection, packageId: UUID, signer: SigningKey, custody: CustodyRecorder, logger: Logger) async throws -> Bool {
        guard let state = try await conn.query("SELECT state FROM packages WHERE id = \(packageId)", logger: logger)
            .decode(String.self).first(where: { _ in true }) else { return false }
        if state == PackageState.receiving.rawValue {
            return try await request(conn, packageId: packageId, signer: signer, custody: custody, logger: logger)
        }
        let receiptId = UUID.derived("receipt", packageId.lowercased)
        var resent: (UUID, UUID)?
        for try await r in try await conn.query("""
            UPDATE outbox o SET sent_at = NULL, resends = resends + 1 FROM requests r
            WHERE o.message_id = \(receiptId) AND o.sent_at IS NOT NULL AND r.id = o.request_id
            RETURNING o.request_id, r.case_id
            """, logger: logger).decode((UUID, UUID).self) { resent = r }
        guard let (requestId, caseId) = resent else { return false }  // not sent yet: it goes anyway
        custody.record(CustodyEvent(kind: .receiptResent, at: Timestamp.now(), actor: .broker,
                                    subject: .init(caseId: caseId, requestId: requestId, packageId: packageId),
                                    details: ["messageId": receiptId.lowercased]))
        receiptsResent.increment()
        logger.warning("a provider sent a package's manifest again; its receipt is sent again", metadata: [LogKey.package: "\(packageId.lowercased)"])
        return true
    }
}
