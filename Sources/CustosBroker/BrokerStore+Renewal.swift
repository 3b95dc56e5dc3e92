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

    /// One renewal pass.
    /// - Parameters:
    ///   - horizon: renew chains whose newest token's TSA certificate (or, for a chain never
    ///     renewed, the signer's certificate) expires before `now + horizon`.
    ///   - stamp: RFC 3161: a TimeStampResp over the given SHA-256.
    public func renewTimeStamps(horizon: TimeInterval, now: Date = Date(), stamp: @Sendable ([UInt8]) async throws -> [UInt8]) async throws -> RenewalReport {
        var report = RenewalReport(checked: 0, renewed: 0, blocked: 0)
        let limit = now.addingTimeInterval(horizon)
        // Packages: the manifest as signed, its signature, its time-stamp, its signer.
        var packages: [(String, [UInt8], [UInt8], [UInt8], String?)] = []
        for try await (id, manifest, signature, timeStamp, signer) in try await client.query("""
            SELECT id::text, manifest, manifest_signature, time_stamp, signer_certificate FROM packages WHERE state = 'verified' ORDER BY received_at
            """, logger: logger).decode((String, String, ByteBuffer, ByteBuffer, String?).self) {
            packages.append((id, Array(manifest.utf8), Array(signature.readableBytesView), Array(timeStamp.readableBytesView), signer))
        }
        for (id, manifest, signature, timeStamp, signer) in packages {
            report.checked += 1
            let signerNotAfter = signer.flatMap { try? CertificateInfo(pem: $0) }?.notAfter
            try await renew(subject: "package", id: id, data: manifest, signature: signature, original: timeStamp, signerNotAfter: signerNotAfter,
                            limit: limit, stamp: stamp, report: &report)
        }
        // Checkpoints: the text, the log's CMS signature, its time-stamp.
        var checkpoints: [(Int64, String, [UInt8], [UInt8])] = []
        for try await (size, body, signature, timeStamp) in try await client.query(
            "SELECT size, body, signature, time_stamp FROM custody_checkpoints ORDER BY size", logger: logger
        ).decode((Int64, String, ByteBuffer, ByteBuffer).self) {
            checkpoints.append((size, body, Array(signature.readableBytesView), Array(timeStamp.readableBytesView)))
        }
        for (size, body, signature, timeStamp) in checkpoints {
            report.checked += 1
            var signerNotAfter: Date?
            if case .valid(let c) = CMS.verifyIntegrity(signature: signature, data: Array(body.utf8)) { signerNotAfter = c.notAfter }
            try await renew(subject: "checkpoint", id: String(size), data: Array(body.utf8), signature: signature, original: timeStamp,
                            signerNotAfter: signerNotAfter, limit: limit, stamp: stamp, report: &report)
        }
        return report
    }

    private func renew(subject: String, id: String, data: [UInt8], signature: [UInt8], original: [UInt8], signerNotAfter: Date?, limit: Date,
                       stamp: @Sendable ([UInt8]) async throws -> [UInt8], report: inout RenewalReport) async throws {
        let renewals = try await timeStampRenewals(subject: subject, id: id)
        let newest = renewals.last ?? original
        guard let tsaNotAfter = TimeStamp.signerNotAfter(response: newest) else { return }
        // The signer's certificate matters until the chain has been renewed once.
        let expires = renewals.isEmpty ? min(tsaNotAfter, signerNotAfter ?? tsaNotAfter) : tsaNotAfter
        guard expires < limit else { return }
        let token = try await stamp(TimeStampRenewal.imprint(data: data, signature: signature, tokens: [original] + renewals))
        guard let newNotAfter = TimeStamp.signerNotAfter(response: token) else { throw BrokerError(.unavailable, "the TSA's renewal carries no signing certificate") }
        guard newNotAfter >= limit else {
            report.blocked += 1
            logger.warning("time-stamp renewal not stored: the TSA's own certificate expires within the renewal horizon",
                           metadata: ["custos.subject": "\(subject)", "custos.tsa_not_after": "\(Timestamp.format(newNotAfter))"])
            return
        }
        try await client.query("""
            INSERT INTO time_stamp_renewals (subject, subject_id, seq, token, tsa_not_after)
            VALUES (\(subject), \(id), \(renewals.count + 1), \(ByteBuffer(bytes: token)), \(newNotAfter))
            ON CONFLICT DO NOTHING
            """, logger: logger)
        report.renewed += 1
    }

    /// A package's (or a checkpoint's, `id` its size) renewal tokens, oldest first.
    public func timeStampRenewals(subject: String, id: String) async throws -> [[UInt8]] {
        var out: [[UInt8]] = []
        for try await token in try await client.query("""
            SELECT token FROM time_stamp_renewals WHERE subject = \(subject) AND subject_id = \(id) ORDER BY seq
            """, logger: logger).decode(ByteBuffer.self) { out.append(Array(token.readableBytesView)) }
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
