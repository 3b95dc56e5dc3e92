import CustosEvidence
import CustosModel
import CustosPKI
import Foundation
import Logging
import NIOCore
import PostgresNIO
import ServiceLifecycle

/// Long-term evidence: before a time-stamping authority's (or a signer's) certificate expires,
/// each package's time-stamp and signature, and each checkpoint's, get a renewal time-stamp
/// over the chain so far (`TimeStampRenewal`, in the manner of RFC 4998 §5.2). Export bundles
/// carry a package's renewals (`renewals.json`), so that `custos verify --at` proves it decades
/// on. Idempotent: a chain whose newest token's certificate outlives the horizon is left alone.
extension BrokerStore {
    /// What one pass did.
    public struct RenewalReport: Sendable, Codable, Equatable {
        /// Packages and checkpoints looked at.
        public var checked: Int
        /// Renewal time-stamps added.
        public var renewed: Int
        /// Chains that need renewing but whose renewal would expire within the horizon too
        /// (the TSA's own certificate is about to expire): renew the TSA's certificate first.
        public var blocked: Int
    }

    /// One renewal pass, under an advisory lock (one broker instance at a time). Chains are
    /// read a page at a time, and each page's due chains are renewed under one time-stamp over
    /// the tree of their imprints (`TimeStampRenewal.Batch`).
    /// - Parameters:
    ///   - horizon: renew chains whose newest token's TSA certificate (or, for a chain never
    ///     renewed, the signer's certificate) expires before `now + horizon`, in seconds.
    ///   - stamp: RFC 3161: a TimeStampResp over the given SHA-256.
    public func renewTimeStamps(horizon: TimeInterval, now: Date = Date(), pageSize: Int = 2_000,
                                stamp: @Sendable ([UInt8]) async throws -> [UInt8]) async throws -> RenewalReport {
        let limit = now.addingTimeInterval(horizon)
        // One transaction: its lock keeps a second instance out (it skips the pass), and a pass
        // cut short stores nothing, to be done again by the next.
        return try await client.transaction(logger: logger) { conn in
            let locked = try await conn.query("SELECT pg_try_advisory_xact_lock(hashtext('custos.renewal'))", logger: logger)
                .decode(Bool.self).first { _ in true } ?? false
            guard locked else { return RenewalReport(checked: 0, renewed: 0, blocked: 0) }
            var report = RenewalReport(checked: 0, renewed: 0, blocked: 0)
            for subject in ["package", "checkpoint"] {
                var after = ""
                while true {
                    let page = try await renewalPage(conn, subject: subject, after: after, limit: pageSize)
                    guard let last = page.last else { break }
                    after = last.id
                    report.checked += page.count
                    let due = page.filter { $0.expires < limit }
                    guard !due.isEmpty else { continue }
                    let batch = TimeStampRenewal.Batch(imprints: due.map { TimeStampRenewal.imprint(data: $0.data, signature: $0.signature, tokens: $0.items) })
                    let token = try await stamp(batch.root)
                    guard let newNotAfter = TimeStamp.signerNotAfter(response: token) else {
                        throw BrokerError(.unavailable, "the TSA's renewal carries no signing certificate")
                    }
                    guard newNotAfter >= limit else {
                        report.blocked += due.count
                        logger.warning("time-stamp renewal not stored: the TSA's own certificate expires within the renewal horizon",
                                       metadata: ["custos.subject": "\(subject)", "custos.tsa_not_after": "\(Timestamp.format(newNotAfter))"])
                        continue
                    }
                    let elements = batch.elements(token: token)
                    let inserted = try await conn.query("""
                        INSERT INTO time_stamp_renewals (subject, subject_id, seq, token, tsa_not_after)
                        SELECT \(subject), i, s, e, \(newNotAfter)
                        FROM unnest(\(due.map(\.id))::text[], \(due.map { $0.items.count })::int[], \(elements.map { ByteBuffer(bytes: $0.bytes) })::bytea[]) AS t(i, s, e)
                        ON CONFLICT DO NOTHING RETURNING 1
                        """, logger: logger).decode(Int.self).reduce(0) { n, _ in n + 1 }
                    report.renewed += inserted
                }
            }
            return report
        }
    }

    /// One chain as a renewal pass sees it.
    struct RenewalChain {
        var id: String
        var data: [UInt8]
        var signature: [UInt8]
        /// T0's DER, then each renewal element's canonical JSON.
        var items: [[UInt8]]
        /// When the chain needs renewing by.
        var expires: Date
    }

    /// A page of chains after `after` (ids in text order), each with its renewals so far.
    private func renewalPage(_ conn: PostgresConnection, subject: String, after: String, limit: Int) async throws -> [RenewalChain] {
        var rows: [(String, [UInt8], [UInt8], [UInt8], String?)] = []
        let query: PostgresQuery = subject == "package" ? """
            SELECT id::text, manifest, manifest_signature, time_stamp, signer_certificate FROM packages
            WHERE state = 'verified' AND id::text > \(after) ORDER BY id::text LIMIT \(limit)
            """ : """
            SELECT size::text, body, signature, time_stamp, NULL::text FROM custody_checkpoints
            WHERE size::text > \(after) ORDER BY size::text LIMIT \(limit)
            """
        for try await (id, data, signature, timeStamp, signer) in try await conn.query(query, logger: logger)
            .decode((String, String, ByteBuffer, ByteBuffer, String?).self) {
            rows.append((id, Array(data.utf8), Array(signature.readableBytesView), Array(timeStamp.readableBytesView), signer))
        }
        guard !rows.isEmpty else { return [] }
        var renewals: [String: [[UInt8]]] = [:]
        for try await (id, item) in try await conn.query("""
            SELECT subject_id, token FROM time_stamp_renewals WHERE subject = \(subject) AND subject_id = ANY(\(rows.map(\.0))::text[]) ORDER BY subject_id, seq
            """, logger: logger).decode((String, ByteBuffer).self) { renewals[id, default: []].append(Array(item.readableBytesView)) }
        return rows.compactMap { id, data, signature, original, signer in
            let items = [original] + (renewals[id] ?? [])
            let newest = items.count == 1 ? original : RenewalElement(bytes: items.last!)?.tokenBytes ?? []
            guard let tsaNotAfter = TimeStamp.signerNotAfter(response: newest) else { return nil }
            // The signer's certificate matters until the chain has been renewed once.
            var signerNotAfter: Date?
            if items.count == 1 {
                if let signer { signerNotAfter = (try? CertificateInfo(pem: signer))?.notAfter }
                else if case .valid(let c) = CMS.verifyIntegrity(signature: signature, data: data) { signerNotAfter = c.notAfter }
            }
            return RenewalChain(id: id, data: data, signature: signature, items: items, expires: min(tsaNotAfter, signerNotAfter ?? tsaNotAfter))
        }
    }

    /// A package's (or a checkpoint's, `id` its size) renewal elements, oldest first.
    public func timeStampRenewals(subject: String, id: String) async throws -> [RenewalElement] {
        var out: [RenewalElement] = []
        for try await item in try await client.query("""
            SELECT token FROM time_stamp_renewals WHERE subject = \(subject) AND subject_id = \(id) ORDER BY seq
            """, logger: logger).decode(ByteBuffer.self) {
            guard let e = RenewalElement(bytes: Array(item.readableBytesView)) else { throw BrokerError(.storageFailure, "a stored renewal does not read") }
            out.append(e)
        }
        return out
    }
}

/// Runs `renewTimeStamps` on a schedule (`renewal.intervalHours`, `renewal.horizonDays`).
public struct TimeStampRenewalService: Service {
    let store: BrokerStore
    let horizon: TimeInterval
    let interval: Duration
    let stamp: @Sendable ([UInt8]) async throws -> [UInt8]
    let ready: Gate
    let logger: Logger

    public init(store: BrokerStore, horizon: TimeInterval, interval: Duration, stamp: @escaping @Sendable ([UInt8]) async throws -> [UInt8],
                ready: Gate = Gate(open: true), logger: Logger) {
        self.store = store
        self.horizon = horizon
        self.interval = interval
        self.stamp = stamp
        self.ready = ready
        self.logger = logger
    }

    public func run() async throws {
        await ready.wait()
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    let r = try await store.renewTimeStamps(horizon: horizon, stamp: stamp)
                    if r.renewed > 0 || r.blocked > 0 {
                        logger.notice("time-stamps renewed", metadata: ["renewed": "\(r.renewed)", "blocked": "\(r.blocked)", "checked": "\(r.checked)"])
                    }
                } catch is CancellationError {
                    return
                } catch {
                    logger.error("time-stamp renewal failed; will retry", metadata: [LogKey.error: "\(loggable(error))"])
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}
