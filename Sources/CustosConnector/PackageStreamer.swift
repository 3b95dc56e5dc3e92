import CustosCanonicalJSON
import CustosEvidence
import CustosKafka
import CustosModel
import CustosPKI
import Foundation

/// Package protocol v2 (`schemas/package/SPEC.md` §7): the content goes out as chunks while
/// the adapters still run — read from the result spools in result order as they are written,
/// each chunk at most 512 KiB — and the signed, time-stamped manifest goes last. At most
/// `inFlight` chunks wait for Kafka at once; `progress` records the first chunk of the job's
/// package (`package-id`) not yet acknowledged, so a restarted connector resumes there.
struct PackageStreamer: Sendable {
    let jobs: JobStore
    let producer: KafkaProducer
    let signer: SigningKey
    let identity: SignerIdentity
    let providerId: String
    let inFlight: Int

    /// The chunks of a package, once its content has been streamed whole (`chunks.json`).
    struct ChunkList: Codable, Sendable {
        var packageId: UUID
        var chunks: [Manifest.Chunk]
        var chunksRoot: String
        var size: Int64
    }

    /// The job's package id: kept while its content is the same (every adapter had finished
    /// before a restart), new otherwise — chunks already sent under the old id may hold records
    /// of an adapter that runs again, so they are never mixed with the new ones.
    func packageId(_ id: UUID, contentIsFinal: Bool) throws -> UUID {
        if contentIsFinal, let data = try? jobs.read(id, "package-id"), let kept = UUID(uuidString: String(decoding: data, as: UTF8.self)) {
            return kept
        }
        let fresh = UUID()
        try jobs.write(id, "progress", Data("0".utf8))
        try jobs.write(id, "package-id", Data(fresh.lowercased.utf8))
        return fresh
    }

    /// Streams the content of `spools` — result by result, each read up to what has been
    /// written, waiting while its adapter runs — as chunks of `packageId`. Chunks below the
    /// job's `progress` were acknowledged before a restart: they are hashed, not sent again.
    /// Returns once every result is closed and read and every chunk acknowledged; writes
    /// `chunks.json`.
    ///
    /// `only` (the broker's `resend`, package SPEC §7 "Gaps"): send just these chunks again,
    /// each checked first against the SHA-256 its signed manifest lists (index → hex), and
    /// write nothing to the job; throws if a chunk's bytes are no longer those.
    func streamContent(_ id: UUID, packageId: UUID, spools: SpoolProgress, only: [Int: String]? = nil) async throws -> ChunkList {
        let key = Array(id.lowercased.utf8)
        let topic = Topics.fromProvider(providerId, urgent: jobs.isUrgent(id))
        let skip = jobs.progress(id)
        var accumulator = ChunkAccumulator()
        var buffer: [UInt8] = []
        buffer.reserveCapacity(Topics.maximumChunkBytes)
        var starts: [ChunkBody.ResultStart] = []
        var window: [(index: Int, future: DeliveryFuture)] = []

        func acknowledge(all: Bool) async throws {
            while let first = window.first, all || window.count >= inFlight {
                _ = try await first.future.value
                window.removeFirst()
                if only == nil { try jobs.write(id, "progress", Data(String(window.first?.index ?? first.index + 1).utf8)) }
            }
        }
        func emit() async throws {
            guard !buffer.isEmpty else { return }
            let index = accumulator.chunks.count
            accumulator.append(buffer)
            accumulator.cut()
            let chunk = accumulator.chunks[index]
            if let expected = only?[index], expected != chunk.sha256 {
                throw JobStoreError(reason: "chunk \(index) asked for again is not the chunk the manifest lists: the result spools changed")
            }
            if only.map({ $0[index] != nil }) ?? (index >= skip) {
                let envelope = Envelope(type: .chunk, id: .derived("chunk", packageId.lowercased, String(index)), requestId: id, sender: providerId,
                                        body: ChunkBody(packageId: packageId, index: index, size: chunk.size, sha256: chunk.sha256, results: starts))
                window.append((index, try producer.enqueue(OutgoingMessage(
                    topic: topic, key: key, value: buffer,
                    headers: [KafkaHeader(key: Topics.envelopeHeader, value: try SignedEnvelope.encode(envelope, signer: signer))]))))
                try await acknowledge(all: false)
            }
            buffer.removeAll(keepingCapacity: true)
            starts = starts.last.map { [ChunkBody.ResultStart(result: $0.result, offset: 0)] } ?? []
        }

        for result in 0..<spools.count {
            var read: Int64 = 0
            var handle: FileHandle?
            defer { try? handle?.close() }
            while true {
                let (written, closed) = spools.snapshot(result)
                if written > read {
                    if handle == nil { handle = try FileHandle(forReadingFrom: ResultSpools.file(spools.directory, result)) }
                    try handle!.seek(toOffset: UInt64(read))
                    guard let block = try handle!.read(upToCount: Int(min(written - read, 1 << 20))), !block.isEmpty else {
                        throw JobStoreError(reason: "result spool \(result) is shorter than written")
                    }
                    if read == 0 {
                        // The result's first bytes: it begins here (a chunk starts in one result only).
                        if buffer.isEmpty { starts = [.init(result: result, offset: 0)] } else { starts.append(.init(result: result, offset: buffer.count)) }
                    }
                    read += Int64(block.count)
                    var offset = 0
                    while offset < block.count {
                        let n = min(Topics.maximumChunkBytes - buffer.count, block.count - offset)
                        block.withUnsafeBytes { buffer.append(contentsOf: $0[offset..<offset + n]) }
                        offset += n
                        if buffer.count == Topics.maximumChunkBytes { try await emit() }
                    }
                } else if closed {
                    break
                } else {
                    try await Task.sleep(for: .milliseconds(2))  // the adapter is still writing this result
                }
            }
        }
        try await emit()
        try await acknowledge(all: true)
        let (chunks, root, size) = accumulator.finish()
        let list = ChunkList(packageId: packageId, chunks: chunks, chunksRoot: root, size: size)
        if only == nil { try jobs.write(id, "chunks.json", Data(try CanonicalJSON.encode(list))) }
        return list
    }

    /// Builds the manifest from the streamed chunks and the extraction, and signs it, once.
    func buildPackage(_ request: ApprovedRequest, requestHash: String, extraction: Extraction, chunks list: ChunkList) throws {
        var results: [Manifest.Result] = []
        for target in request.targets {
            for category in request.categories {
                let summary = extraction.results[results.count]
                if let reason = extraction.cannotExecute[category.rawValue] {
                    results.append(Manifest.Result(target: target, category: category, status: .cannotExecute, recordCount: 0, size: 0,
                                                   recordsRoot: summary.recordsRoot, reason: reason))
                } else {
                    var result = Manifest.Result(target: target, category: category, status: summary.recordCount > 0 ? .data : .noData,
                                                 recordCount: summary.recordCount, size: summary.size, recordsRoot: summary.recordsRoot,
                                                 coverage: summary.coverage)
                    result.notSent = extraction.notSent(target: target, category: category)
                    results.append(result)
                }
            }
        }
        var manifest = Manifest(
            packageId: list.packageId, requestId: request.requestId, requestHash: requestHash, providerId: providerId,
            asOf: extraction.asOf, createdAt: Timestamp.now(), results: results,
            content: .init(size: list.size, recordCount: results.reduce(0) { $0 + $1.recordCount }), chunks: list.chunks, chunksRoot: list.chunksRoot)
        manifest.notSent = extraction.unattributedNotSent
        let canonical = try CanonicalJSON.encode(manifest)
        let signature = try CMS.sign(canonical, certificate: identity.certificate, key: identity.key, chain: identity.chain)
        try jobs.write(request.requestId, "manifest.p7s", Data(signature))
        try jobs.write(request.requestId, "manifest.json", Data(canonical))
    }

    /// Sends the signed, time-stamped manifest — the package's last message — as the bytes
    /// that were signed, never re-encoded; one too large for a Kafka message goes in parts.
    /// `again`: a re-send for want of a receipt (the job's `sent` keeps its first time).
    func sendManifest(_ id: UUID, again: Bool = false) async throws {
        let key = Array(id.lowercased.utf8)
        let topic = Topics.fromProvider(providerId, urgent: jobs.isUrgent(id))
        let signedManifest = Array(try jobs.read(id, "manifest.json"))
        let manifestJSON = try JSONParser.parse(signedManifest)
        guard CanonicalJSON.serialize(manifestJSON) == signedManifest, let packageId = manifestJSON["packageId"]?.stringValue.flatMap(UUID.init(uuidString:)) else {
            throw JobStoreError(reason: "the job's manifest.json is not RFC 8785 canonical JSON with a packageId")
        }
        // ManifestBody's members, with the manifest as parsed from its signed bytes.
        let bodyJSON = JSONValue.object(["manifest": manifestJSON, "signature": .string(try jobs.read(id, "manifest.p7s").base64EncodedString()),
                                         "timeStamp": .string(try jobs.read(id, "manifest.tsr").base64EncodedString())])
        let manifestEnvelope = Envelope(type: .manifest, id: .derived("manifest", packageId.lowercased), requestId: id, sender: providerId, body: bodyJSON)
        let manifestMessage = try SignedEnvelope.encode(manifestEnvelope, signer: signer)
        if manifestMessage.count <= Topics.maximumManifestMessageBytes {
            try await producer.send(OutgoingMessage(topic: topic, key: key, value: manifestMessage))
        } else {
            let whole = CanonicalJSON.serialize(bodyJSON)
            let parts = stride(from: 0, to: whole.count, by: Topics.maximumChunkBytes).map { whole[$0..<min($0 + Topics.maximumChunkBytes, whole.count)] }
            guard parts.count <= Topics.maximumManifestParts else { throw JobStoreError(reason: "the manifest is too large even in parts (\(parts.count) parts)") }
            let bodySha = Digest.sha256Hex(whole)
            var sent: [DeliveryFuture] = []
            for (i, part) in parts.enumerated() {
                let envelope = Envelope(type: .manifestPart, id: .derived("manifest-part", packageId.lowercased, String(i)), requestId: id,
                                        sender: providerId, body: ManifestPartBody(packageId: packageId, index: i, count: parts.count, size: part.count,
                                                                                   sha256: Digest.sha256Hex(Array(part)), bodySha256: bodySha))
                sent.append(try producer.enqueue(OutgoingMessage(topic: topic, key: key, value: Array(part),
                                                                 headers: [KafkaHeader(key: Topics.envelopeHeader, value: try SignedEnvelope.encode(envelope, signer: signer))])))
            }
            for f in sent { _ = try await f.value }
        }
        if !again { try jobs.write(id, "sent", Data()) }
    }
}

/// What the adapters produced, written once they have all finished.
struct Extraction: Codable, Sendable {
    /// Per result, in manifest order (target by target, category by category).
    struct ResultSummary: Codable, Sendable {
        var recordCount: Int
        var size: Int64
        var recordsRoot: String
        /// What the adapter declared its records cover.
        var coverage: Manifest.Coverage?
    }
    var asOf: String
    var results: [ResultSummary]
    var outOfScope: Int
    /// Categories no adapter could serve, with the reason.
    var cannotExecute: [String: String]
    /// The records not sent because they could not be read, by where they belong and why.
    var notSent: [NotSentCount]?

    struct NotSentCount: Codable, Sendable, Hashable {
        var key: ExecAdapter.NotSentKey
        var count: Int
    }

    /// Each adapter's counts, merged: a file drop's lines that are no record at all (no
    /// category) are met again in each category's reading of the same file, so they count
    /// once (the largest); every other count adds up.
    static func merge(_ runs: [[ExecAdapter.NotSentKey: Int]]) -> [NotSentCount] {
        var total: [ExecAdapter.NotSentKey: Int] = [:]
        for run in runs {
            for (key, n) in run {
                total[key] = key.category == nil ? max(total[key] ?? 0, n) : (total[key] ?? 0) + n
            }
        }
        return total.map { NotSentCount(key: $0.key, count: $0.value) }
            .sorted { ($0.key.reason.rawValue, $0.key.category?.rawValue ?? "", $0.key.target?.value ?? "") < ($1.key.reason.rawValue, $1.key.category?.rawValue ?? "", $1.key.target?.value ?? "") }
    }

    /// The manifest's `notSent` for one result: the records tied to its target and category.
    func notSent(target: Target, category: DataCategory) -> [Manifest.NotSent]? {
        let own = (notSent ?? []).filter { $0.key.target == target && $0.key.category == category }
        return own.isEmpty ? nil : own.map { Manifest.NotSent(reason: $0.key.reason, count: $0.count) }
    }

    /// The manifest's top-level `notSent`: the records tied to no one result.
    var unattributedNotSent: [Manifest.NotSent]? {
        let rest = (notSent ?? []).filter { $0.key.target == nil }
        return rest.isEmpty ? nil : rest.map { Manifest.NotSent(category: $0.key.category, reason: $0.key.reason, count: $0.count) }
    }
}
