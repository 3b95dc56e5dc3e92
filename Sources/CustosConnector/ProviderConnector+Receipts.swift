import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import Foundation
import Logging

/// End-to-end acknowledgement of packages (schemas/README.md, "Re-sending"; package SPEC §7,
/// "Gaps"). Kafka's acknowledgement of a chunk or a manifest says that Kafka holds it, not
/// that the broker got it, so a package is not done until the broker's signed receipt is in:
/// - a package whose receipt has not come within `receipts.timeoutSeconds` has its signed
///   manifest sent again (the same message id), after twice as long each time, at most every
///   `receipts.longestWaitSeconds` (6 hours). The broker answers with the receipt again, or asks with `resend` for the chunks
///   it lacks;
/// - a `resend` has exactly the chunks it lists sent again from the result spools, each checked
///   first against the manifest's SHA-256 for it;
/// - the content (the result spools) is kept until an `accepted` receipt, at most
///   `receipts.retentionDays`; each hour of the last `receipts.warningHours` an error is logged,
///   and at the end the content is deleted with another.
///
/// Job files: `manifest-again` (a re-send is due), `manifest-resends` (how many so far; its
/// time is the last), `resend-<message id>.json` (the broker's message as received) and its
/// `.done`, `content-expired`.
extension ProviderConnector {
    /// Whether a job that was sent has re-sending to do.
    func hasResendWork(_ id: UUID) -> Bool {
        guard jobs.phase(id) == .sent else { return false }
        return jobs.exists(id, "manifest-again") || jobs.files(id, prefix: "resend-").contains { !jobs.exists(id, $0 + ".done") }
    }

    /// Sends again what is due for job `id`, whose package was sent: its manifest when no
    /// receipt came, and the chunks each pending `resend` asks for.
    func sendAgain(_ id: UUID, resultCount: Int, streamer: PackageStreamer) async throws {
        let meta: Logger.Metadata = [LogKey.request: "\(id.lowercased)"]
        if jobs.exists(id, "manifest-again") {
            try await streamer.sendManifest(id, again: true)
            let count = (try? jobs.read(id, "manifest-resends")).flatMap { Int(String(decoding: $0, as: UTF8.self)) } ?? 0
            try jobs.write(id, "manifest-resends", Data(String(count + 1).utf8))
            jobs.remove(id, "manifest-again")
            metrics.manifestsResent.increment()
            logger.warning("no receipt for a package sent; its manifest was sent again", metadata: meta.merging(["custos.attempt": "\(count + 1)"]) { $1 })
        }
        for name in jobs.files(id, prefix: "resend-") where !jobs.exists(id, name + ".done") {
            let (_, json) = try SignedEnvelope.open([UInt8](try jobs.read(id, name)), keysFor: { $0 == "broker" ? brokerKeys : [] })
            let body = try SignedEnvelope.body(ResendBody.self, from: json).body
            let manifest = try JSONDecoder().decode(Manifest.self, from: try jobs.read(id, "manifest.json"))
            let spools = jobs.file(id, "results")
            guard FileManager.default.fileExists(atPath: spools.path) else {
                logger.error("the broker asks for chunks whose content this connector no longer holds (deleted after an accepted receipt or at receipts.retentionDays); the package must be extracted again",
                             metadata: meta)
                try jobs.write(id, name + ".done", Data())
                continue
            }
            var wanted: [Int: String] = [:]
            for i in body.indices where manifest.chunks.indices.contains(i) { wanted[i] = manifest.chunks[i].sha256 }
            _ = try await streamer.streamContent(id, packageId: manifest.packageId, spools: .finished(directory: spools, results: resultCount), only: wanted)
            try jobs.write(id, name + ".done", Data())
            metrics.chunksResent.increment(by: wanted.count)
            logger.warning("chunks the broker asked for were sent again", metadata: meta.merging(["custos.chunks": "\(wanted.count)"]) { $1 })
        }
    }

    /// Every 5 seconds: schedules a manifest re-send for each package sent whose receipt is
    /// overdue, warns about content near the end of its retention, and deletes content past it.
    func watchReceipts(queue: JobQueue) async throws {
        var warned: [UUID: Date] = [:]
        while !Task.isCancelled {
            try await Task.sleep(for: .seconds(5))
            let now = Date()
            var awaiting = 0
            for id in jobs.jobs() where jobs.phase(id) == .sent && jobs.exists(id, "manifest.json") && !jobs.exists(id, "content-expired") {
                guard let sentAt = modified(id, "sent") else { continue }
                awaiting += 1
                let meta: Logger.Metadata = [LogKey.request: "\(id.lowercased)"]
                let age = now.timeIntervalSince(sentAt)
                let retention = Double(configuration.receiptRetention.components.seconds)
                if age >= retention {
                    guard !running.isRunning(id) else { continue }
                    jobs.remove(id, "results")
                    try jobs.write(id, "content-expired", Data())
                    warned[id] = nil
                    metrics.contentExpired.increment()
                    logger.error("no receipt came within receipts.retentionDays: the package's content was deleted; it can no longer be sent again",
                                 metadata: meta)
                    continue
                }
                if retention - age < Double(configuration.receiptWarning.components.seconds), now.timeIntervalSince(warned[id] ?? .distantPast) >= 3600 {
                    warned[id] = now
                    logger.error("no receipt yet: the package's content will be deleted at receipts.retentionDays", metadata: meta.merging([
                        "custos.hours_left": "\(Int((retention - age) / 3600))",
                    ]) { $1 })
                }
                let attempts = (try? jobs.read(id, "manifest-resends")).flatMap { Int(String(decoding: $0, as: UTF8.self)) } ?? 0
                let last = modified(id, "manifest-resends") ?? sentAt
                let first = jobs.isUrgent(id) ? configuration.emergencyReceiptTimeout : configuration.receiptTimeout
                let wait = min(Double(first.components.seconds) * pow(2, Double(min(attempts, 20))), Double(configuration.receiptLongestWait.components.seconds))
                if now.timeIntervalSince(last) >= wait && !jobs.exists(id, "manifest-again") && !running.isRunning(id) {
                    try jobs.write(id, "manifest-again", Data())
                    queue.schedule(id, urgent: jobs.isUrgent(id))
                }
            }
            metrics.awaitingReceipt.record(awaiting)
        }
    }

    private func modified(_ id: UUID, _ name: String) -> Date? {
        (try? FileManager.default.attributesOfItem(atPath: jobs.file(id, name).path))?[.modificationDate] as? Date
    }
}
