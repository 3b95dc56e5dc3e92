import CustosCanonicalJSON
import CustosEvidence
import CustosKafka
import CustosModel
import CustosPKI
import Foundation

/// Builds the package from a finished spool and streams it: the manifest, every chunk (each
/// at most 512 KiB, read from disk as it goes, so memory stays constant), then completion.
/// At most `inFlight` chunks wait for Kafka at once; `progress` records the first chunk
/// not yet acknowledged, so a restarted connector resumes there.
struct PackageStreamer: Sendable {
    let jobs: JobStore
    let producer: KafkaProducer
    let signer: SigningKey
    let identity: SignerIdentity
    let providerId: String
    let inFlight: Int

    /// Hashes the content into chunks and writes the signed manifest, once.
    func buildPackage(_ request: ApprovedRequest, requestHash: String, extraction: Extraction) throws {
        var chunker = ChunkAccumulator()
        let handle = try FileHandle(forReadingFrom: jobs.file(request.requestId, "records.ndjson"))
        defer { try? handle.close() }
        while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty {
            data.withUnsafeBytes { chunker.append($0) }
        }
        let (chunks, chunksRoot, size) = chunker.finish()
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
            packageId: UUID(), requestId: request.requestId, requestHash: requestHash, providerId: providerId,
            asOf: extraction.asOf, createdAt: Timestamp.now(), results: results,
            content: .init(size: size, recordCount: results.reduce(0) { $0 + $1.recordCount }), chunks: chunks, chunksRoot: chunksRoot)
        manifest.notSent = extraction.unattributedNotSent
        let canonical = try CanonicalJSON.encode(manifest)
        let signature = try CMS.sign(canonical, certificate: identity.certificate, key: identity.key, chain: identity.chain)
        try jobs.write(request.requestId, "manifest.p7s", Data(signature))
        try jobs.write(request.requestId, "manifest.json", Data(canonical))
    }

    func loadManifest(_ id: UUID) throws -> (Manifest, ManifestBody) {
        let manifest = try JSONDecoder().decode(Manifest.self, from: try jobs.read(id, "manifest.json"))
        let body = ManifestBody(manifest: manifest, signature: try jobs.read(id, "manifest.p7s").base64EncodedString(),
                                timeStamp: try jobs.read(id, "manifest.tsr").base64EncodedString())
        return (manifest, body)
    }

    func stream(_ id: UUID, onProgress: @Sendable (Int) async -> Void = { _ in }) async throws {
        let (manifest, body) = try loadManifest(id)
        let key = Array(id.lowercased.utf8)
        let topic = Topics.fromProvider(providerId)
        // The manifest goes as the bytes that were signed, never re-encoded (they may predate
        // this version of the connector): its member of the body is exactly manifest.json.
        let signedManifest = Array(try jobs.read(id, "manifest.json"))
        let manifestSha = Digest.sha256Hex(signedManifest)
        let manifestJSON = try JSONParser.parse(signedManifest)
        guard CanonicalJSON.serialize(manifestJSON) == signedManifest else {
            throw JobStoreError(reason: "the job's manifest.json is not RFC 8785 canonical JSON")
        }
        // ManifestBody's members, with the manifest as parsed from its signed bytes.
        let bodyJSON = JSONValue.object(["manifest": manifestJSON, "signature": .string(body.signature), "timeStamp": .string(body.timeStamp)])

        // The manifest goes (again) first: the broker ignores it if it has it already. One too
        // large for a Kafka message (a package of thousands of chunks) goes in parts, in order.
        let manifestEnvelope = Envelope(type: .manifest, id: .derived("manifest", manifest.packageId.lowercased), requestId: id,
                                        sender: providerId, body: bodyJSON)
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
                let envelope = Envelope(type: .manifestPart, id: .derived("manifest-part", manifest.packageId.lowercased, String(i)), requestId: id,
                                        sender: providerId, body: ManifestPartBody(packageId: manifest.packageId, index: i, count: parts.count, size: part.count,
                                                                                   sha256: Digest.sha256Hex(Array(part)), bodySha256: bodySha))
                sent.append(try producer.enqueue(OutgoingMessage(topic: topic, key: key, value: Array(part),
                                                                 headers: [KafkaHeader(key: Topics.envelopeHeader, value: try SignedEnvelope.encode(envelope, signer: signer))])))
            }
            for f in sent { _ = try await f.value }
        }

        let handle = try FileHandle(forReadingFrom: jobs.file(id, "records.ndjson"))
        defer { try? handle.close() }
        var next = jobs.progress(id)
        var window: [(index: Int, future: DeliveryFuture)] = []
        var offset = manifest.chunks.prefix(next).reduce(Int64(0)) { $0 + Int64($1.size) }
        try handle.seek(toOffset: UInt64(offset))
        var lastReported = -1
        for chunk in manifest.chunks.dropFirst(next) {
            guard let data = try handle.read(upToCount: chunk.size), data.count == chunk.size else {
                throw JobStoreError(reason: "spool is shorter than its manifest")
            }
            offset += Int64(chunk.size)
            let envelope = Envelope(
                type: .chunk, id: .derived("chunk", manifest.packageId.lowercased, String(chunk.index)), requestId: id, sender: providerId,
                body: ChunkBody(packageId: manifest.packageId, index: chunk.index, size: chunk.size, sha256: chunk.sha256))
            let message = OutgoingMessage(
                topic: topic, key: key, value: Array(data),
                headers: [KafkaHeader(key: Topics.envelopeHeader, value: try SignedEnvelope.encode(envelope, signer: signer))])
            window.append((chunk.index, try producer.enqueue(message)))
            // Back-pressure: wait for the oldest chunk once the window is full.
            while window.count >= inFlight || (chunk.index == manifest.chunks.count - 1 && !window.isEmpty) {
                _ = try await window.removeFirst().future.value
                next = window.first?.index ?? chunk.index + 1
                try jobs.write(id, "progress", Data(String(next).utf8))
                let percent = manifest.chunks.isEmpty ? 100 : next * 100 / manifest.chunks.count
                if percent / 10 != lastReported / 10 {
                    lastReported = percent
                    await onProgress(percent)
                }
            }
        }
        let complete = Envelope(type: .complete, id: .derived("complete", manifest.packageId.lowercased), requestId: id, sender: providerId,
                                body: CompleteBody(packageId: manifest.packageId, chunkCount: manifest.chunks.count, manifestSha256: manifestSha))
        try await producer.send(OutgoingMessage(topic: topic, key: key, value: try SignedEnvelope.encode(complete, signer: signer)))
        try jobs.write(id, "sent", Data())
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
