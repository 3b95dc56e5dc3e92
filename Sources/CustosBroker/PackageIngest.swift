import CustosCanonicalJSON
import CustosCriteria
import CustosCustody
import CustosEvidence
import CustosKafka
import CustosModel
import Foundation
import Logging
import Metrics
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

/// Package ingest (package protocol v2, `schemas/package/SPEC.md` §7): each chunk checked
/// against its signed envelope as it arrives, stored, and fed in index order to the package's
/// checks (`ArrivingContent`: the chunks' Merkle root, every result's records root, RFC 9162)
/// and to the four criteria's judge; when the signed manifest is in and every chunk it lists
/// is checked, the package is finalised without reading a chunk again.
///
/// The rules are here; the rows are `PackageStore`'s (SQL only), the bytes the chunk store's,
/// the request's steps `RequestLifecycle`'s. What a package is judged to be (`judge`) is a pure
/// function of what was received and built on the way.
struct PackageIngest: Sendable {
    /// Where chunks are kept (`storage.*`); nil for the admin commands, which ingest nothing.
    let chunks: (any ChunkStore)?
    /// CA certificates (PEM) that providers' time-stamping authorities must chain to.
    let tsaTrust: String
    /// `criteria.*`: how close to delivery a package's extraction and time-stamp must be (sống).
    let criteriaBounds: PackageJudge.Bounds
    /// Signs the receipts.
    let signer: SigningKey
    let logger: Logger
    /// Packages whose chunks are arriving: what has been checked so far, in memory.
    let arrivals = Arrivals()

    /// A package's chunks are indexed 0 ..< this.
    static let maximumChunks = 1_000_000
    /// A request's results are fewer than this (targets × categories).
    static let maximumResults = 1_000_000

    /// The chunk store, or a clear error where none is configured (the admin commands).
    func chunkStore() throws -> any ChunkStore {
        guard let chunks else { throw BrokerError(.storageFailure, "no chunk store is configured (storage.directory)") }
        return chunks
    }

    // MARK: The rules, pure

    /// Why a chunk cannot be accepted as its envelope describes it, or nil. `count`: its
    /// bytes; `sha256`: their SHA-256 (hex).
    static func rejection(of body: ChunkBody, count: Int, sha256: String) -> String? {
        guard count == body.size, (1...Topics.maximumChunkBytes).contains(count) else { return "chunk size differs from its envelope" }
        guard Digest.isSHA256Hex(body.sha256), sha256 == body.sha256 else { return "chunk SHA-256 differs from its envelope" }
        guard (0..<maximumChunks).contains(body.index) else { return "chunk index outside 0 to \(maximumChunks - 1)" }
        guard body.resultsAreWellFormed, body.results.allSatisfy({ $0.result < maximumResults }) else {
            return "malformed: the chunk's results must start at offset 0 and increase in offset and result, inside the chunk"
        }
        return nil
    }

    /// Why a manifest part cannot be accepted as its envelope describes it, or nil.
    static func rejection(of part: ManifestPartBody, bytes: [UInt8]) -> String? {
        guard (2...Topics.maximumManifestParts).contains(part.count), (0..<part.count).contains(part.index), part.size == bytes.count,
              (1...Topics.maximumChunkBytes).contains(bytes.count), Digest.isSHA256Hex(part.sha256), Digest.isSHA256Hex(part.bodySha256)
        else { return "manifest part is malformed" }
        guard Digest.sha256Hex(bytes) == part.sha256 else { return "manifest part SHA-256 differs from its envelope" }
        return nil
    }

    /// The manifest message body that a package's parts make, joined in order (`whole`), with
    /// the manifest's bytes exactly as signed. Throws `IngestRejection` with the reason.
    static func assemble(_ whole: [UInt8], bodySha256: String) throws -> (ManifestBody, [UInt8]) {
        guard Digest.sha256Hex(whole) == bodySha256 else { throw IngestRejection(reason: "manifest parts do not make the body their SHA-256 names") }
        guard case .object(let members)? = try? JSONParser.parse(whole), let manifestJSON = members["manifest"],
              let body = try? JSONDecoder().decode(ManifestBody.self, from: Data(whole))
        else { throw IngestRejection(reason: "manifest parts do not make a manifest message body") }
        if let violation = MessageBounds.violation(in: .object(["body": .object(members)]), type: .manifest) { throw IngestRejection(reason: violation) }
        guard CanonicalJSON.serialize(.object(members)).elementsEqual(whole) else {
            throw IngestRejection(reason: "malformed: the manifest parts' body is not RFC 8785 canonical JSON, so its signed manifest cannot be kept as sent")
        }
        return (body, CanonicalJSON.serialize(manifestJSON))
    }

    /// A manifest message's signature and time-stamp (DER), once its manifest is checked to be
    /// for `requestId` with a well-formed chunk list. Throws `IngestRejection` with the reason.
    static func checked(_ body: ManifestBody, requestId: UUID) throws -> (signature: Data, timeStamp: Data) {
        let m = body.manifest
        guard m.requestId == requestId else { throw IngestRejection(reason: "manifest names another request than its envelope") }
        guard m.chunks.count <= maximumChunks, m.chunks.allSatisfy({ $0.size > 0 && $0.size <= Topics.maximumChunkBytes && Digest.isSHA256Hex($0.sha256) }) else {
            throw IngestRejection(reason: "manifest chunk list is malformed")
        }
        guard let signature = Data(base64Encoded: body.signature), let timeStamp = Data(base64Encoded: body.timeStamp),
              !signature.isEmpty, !timeStamp.isEmpty, signature.count < 1 << 20, timeStamp.count < 1 << 20
        else { throw IngestRejection(reason: "manifest signature or time-stamp is not base64 DER") }
        return (signature, timeStamp)
    }

    /// What finalising a package decides.
    struct Finalisation: Sendable {
        var verification: PackageVerification
        var state: PackageState
        var verdictJSON: String
        var criteria: Verdict?
        var criteriaJSON: String?
        var signature: SignatureCheck
        /// The custody events of the verdict (criteria, then verdict), in order.
        var events: [CustodyEvent]
    }

    /// Judges a package whose every chunk has been checked: the manifest's binding to its
    /// request, the signature and time-stamp, the content built on the way (`contentFailures`,
    /// with `chunkHashes` naming the chunks that differ when there are such), and the four
    /// criteria. Pure: everything it needs is given.
    static func judge(_ received: PackageStore.Received, packageId: UUID, manifest: Manifest, contentFailures: [PackageVerification.Failure],
                      judge: inout PackageJudge?, against: (providerTrust: String, requestHash: String, deliveryDeadline: Date?),
                      tsaTrust: String, bounds: PackageJudge.Bounds, deliveredAt: Date) throws -> Finalisation {
        let subject = CustodyEvent.Subject(requestId: received.requestId, packageId: packageId)
        var failures = PackageVerifier.checkManifest(manifest, expectedProvider: received.provider, expectedRequest: received.requestId,
                                                     expectedRequestHash: against.requestHash)
        let signatureCheck = PackageSignatureVerifier.verify(
            manifest: received.manifest, signature: received.signature, timeStamp: received.timeStamp,
            providerId: received.provider, providerTrust: against.providerTrust, tsaTrust: tsaTrust)
        failures += signatureCheck.failures
        failures += contentFailures
        let verification = PackageVerification(failures: failures, manifestSha256: Digest.sha256Hex(received.manifest), checkedAt: Timestamp.now())
        // The verdict: delivered now, against the delivery clock (if it has one), time-stamped when the token says.
        let criteria = judge?.finish(manifest: manifest, checks: failures.map(\.code.rawValue),
                                     delivery: .init(deliveredAt: deliveredAt, deadline: against.deliveryDeadline, timeStampedAt: signatureCheck.genTime),
                                     bounds: bounds)
        let criteriaJSON = try criteria.map { String(decoding: try CanonicalJSON.encode($0), as: UTF8.self) }
        var events: [CustodyEvent] = []
        if let criteria, let criteriaJSON {
            var details = ["admissible": "\(criteria.admissible)"]
            for c in Verdict.Criterion.allCases { details[c.rawValue] = criteria.status(c)?.rawValue ?? "" }
            events.append(CustodyEvent(kind: .criteria, at: Timestamp.now(), actor: .broker, subject: subject,
                                       objects: ["criteriaSha256": Digest.sha256Hex(Array(criteriaJSON.utf8))], details: details))
        }
        let verdict = String(decoding: try CanonicalJSON.encode(verification), as: UTF8.self)
        let state: PackageState = verification.valid ? .verified : .rejected
        events.append(CustodyEvent(kind: .verdict, at: Timestamp.now(), actor: .broker, subject: subject,
                                   objects: ["verdictSha256": Digest.sha256Hex(Array(verdict.utf8)), "manifestSha256": verification.manifestSha256],
                                   details: ["outcome": state.rawValue, "failures": Set(verification.failures.map(\.code.rawValue)).sorted().joined(separator: ",")]))
        return Finalisation(verification: verification, state: state, verdictJSON: verdict, criteria: criteria, criteriaJSON: criteriaJSON,
                            signature: signatureCheck, events: events)
    }

    /// The content failures as built on the way, with chunks past the manifest's last counted,
    /// and a chunk-hash failure named by chunk where the index's hashes (`chunkHashes`, by
    /// index; at most 1,000 named) show which differ from the manifest's list.
    static func contentFailures(_ built: [PackageVerification.Failure], manifest: Manifest, beyond: Int,
                                chunkHashes: [(Int, String)]) -> [PackageVerification.Failure] {
        var failures = built
        if beyond > 0, !failures.contains(where: { $0.code == .trailingData }) {
            failures.append(.init(code: .trailingData, detail: "\(beyond) chunks past the last chunk of the manifest"))
        }
        if failures.contains(where: { $0.code == .chunkHash }) {
            var named: [PackageVerification.Failure] = []
            for (idx, sha) in chunkHashes where named.count < 1000 && idx < manifest.chunks.count && manifest.chunks[idx].sha256 != sha {
                named.append(.init(code: .chunkHash, detail: "chunk \(idx) SHA-256 differs from the manifest"))
            }
            if !named.isEmpty { failures = failures.filter { $0.code != .chunkHash } + named }
        }
        return failures
    }

    // MARK: Ingest, in the message's transaction

    /// A chunk: checked against its authenticated envelope, indexed once and written to the
    /// chunk store (durably, in the same transaction, before the caller stores its Kafka
    /// offset), then fed to the package's checks in index order — a chunk that arrives early
    /// waits in the store. When the manifest is in and every chunk it lists has been checked,
    /// the package is finalised. `sha256`: the SHA-256 of `bytes` (hex), taken once by the caller.
    func acceptChunk(_ conn: PostgresConnection, _ body: ChunkBody, bytes: [UInt8], sha256: String, requestId: UUID, provider: String,
                     custody: CustodyRecorder) async throws {
        if let reason = Self.rejection(of: body, count: bytes.count, sha256: sha256) { throw IngestRejection(reason: reason) }
        let claim = try await claimArrival(conn, packageId: body.packageId, requestId: requestId, provider: provider)
        if claim.manifestIn {
            let state = try await PackageStore.state(conn, packageId: body.packageId, logger: logger)
            guard state == nil || state == .receiving else { return }  // finalised already: a redelivery
        }
        // Indexed first, stored second: if the store fails, the transaction (and the index row)
        // is rolled back, and the message is tried again. A chunk indexed before (sent again
        // after a crash) adds nothing.
        let store = try chunkStore()
        let location = store.location(sha256: body.sha256)
        guard try await PackageStore.indexChunk(conn, body, requestId: requestId, location: location, logger: logger) else { return }
        let stored = try bytes.withUnsafeBytes { try store.put($0, sha256: body.sha256) }
        guard stored == location else {
            throw ChunkStoreError(kind: .unwritable, location: stored, detail: "the store put the chunk elsewhere than its content address \(location)")
        }
        custody.record(CustodyEvent(
            kind: .chunkReceived, at: Timestamp.now(), actor: .init(type: .provider, id: provider),
            subject: .init(requestId: requestId, packageId: body.packageId, chunk: body.index),
            objects: ["chunkSha256": body.sha256], details: ["size": "\(body.size)"]))
        try await advance(conn, packageId: body.packageId, requestId: requestId, arrived: (body, bytes), known: (claim.checked, claim.stored + 1))
        if claim.manifestIn { try await finalizeIfComplete(conn, packageId: body.packageId, custody: custody) }
    }

    /// The package's arrival row, made by its first chunk or its manifest and locked for this
    /// transaction. A package id another request or provider uses is refused.
    @discardableResult
    func claimArrival(_ conn: PostgresConnection, packageId: UUID, requestId: UUID, provider: String, manifest: Bool = false) async throws
        -> PackageStore.ArrivalRow
    {
        let row = try await PackageStore.claimArrival(conn, packageId: packageId, requestId: requestId, provider: provider, manifest: manifest, logger: logger)
        guard row.requestId == requestId, row.provider == provider else { throw IngestRejection(reason: "the package belongs to another request") }
        return row
    }

    /// Feeds the package's checks every chunk from the first unchecked one on, as long as the
    /// next is stored: `arrived` from the message in hand, the others read back from the chunk
    /// store (and checked against their index). Records the new count.
    /// `known`: the arrival row's counts as this transaction has them (checked, and stored
    /// with the chunk in hand), when the caller has them already; they spare a query, and
    /// the search for early chunks when none waits.
    @discardableResult
    func advance(_ conn: PostgresConnection, packageId: UUID, requestId: UUID, arrived: (ChunkBody, [UInt8])? = nil,
                 known: (checked: Int, stored: Int)? = nil) async throws -> Arrival {
        var checked = 0, stored = Int.max
        if let known {
            (checked, stored) = known
        } else {
            checked = try await PackageStore.checkedCount(conn, packageId: packageId, logger: logger)
        }
        var arrival: Arrival
        if let kept = arrivals.take(packageId, checked: checked) {
            arrival = kept
        } else {
            // Not in this process's memory (a restart, or another instance checked the first
            // chunks): rebuilt from the chunk store, never trusted blindly.
            arrival = arrivals.start(packageId, request: try await PackageStore.approvedRequest(conn, requestId, logger: logger))
            if checked > 0 { try await feed(conn, packageId: packageId, into: &arrival, from: 0, to: checked) }
        }
        do {
            if let (body, bytes) = arrived, body.index == arrival.checked {
                arrival.consume(bytes, sha256: Digest.bytes(hex: body.sha256)!, results: body.results)
            }
            if stored > arrival.checked {
                // Chunks that arrived early, now next in line.
                var next = arrival.checked
                for idx in try await PackageStore.chunkIndexes(conn, packageId: packageId, from: arrival.checked, logger: logger) where idx == next {
                    next += 1
                }
                if next > arrival.checked { try await feed(conn, packageId: packageId, into: &arrival, from: arrival.checked, to: next) }
            }
            if let known {
                try await PackageStore.recordCounts(conn, packageId: packageId, checked: arrival.checked, stored: known.stored, logger: logger)
            } else if arrival.checked != checked {
                try await PackageStore.recordCounts(conn, packageId: packageId, checked: arrival.checked, stored: nil, logger: logger)
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
        for row in try await PackageStore.chunkRows(conn, packageId: packageId, from: from, to: to, logger: logger) {
            do {
                let bytes = try readChunk(sha256: row.sha256, location: row.location, data: row.data)
                arrival.consume(bytes, sha256: Digest.bytes(hex: row.sha256)!, results: row.results)
            } catch {
                logger.error("a stored chunk cannot be read", metadata: [LogKey.package: "\(packageId.lowercased)", "custos.chunk": "\(row.index)", LogKey.error: "\(error)"])
                arrival.content.unreadable(row.index, "\(error)")
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

    /// Keeps one part of a manifest sent in parts; once every part is in, returns the body
    /// they make (checked against its SHA-256) with the manifest's bytes as signed, and removes
    /// the parts.
    func acceptManifestPart(_ conn: PostgresConnection, _ part: ManifestPartBody, bytes: [UInt8], requestId: UUID) async throws -> (ManifestBody, [UInt8])? {
        if let reason = Self.rejection(of: part, bytes: bytes) { throw IngestRejection(reason: reason) }
        if let others = try await PackageStore.manifestPartsAgreement(conn, packageId: part.packageId, logger: logger),
           others.count != part.count || others.bodySha256 != part.bodySha256 {
            throw IngestRejection(reason: "manifest part disagrees with the package's other parts")
        }
        let have = try await PackageStore.keepManifestPart(conn, part, requestId: requestId, bytes: bytes, logger: logger)
        guard have == part.count else { return nil }
        return try Self.assemble(try await PackageStore.takeManifestParts(conn, packageId: part.packageId, logger: logger), bodySha256: part.bodySha256)
    }

    /// The signed manifest, which comes last. `signedBytes`: the manifest exactly as the
    /// provider signed and sent it; they are what is stored, hashed and verified, never a
    /// re-encoding of the decoded manifest.
    func acceptManifest(_ conn: PostgresConnection, _ body: ManifestBody, signedBytes canonical: [UInt8], requestId: UUID, provider: String,
                        custody: CustodyRecorder) async throws {
        let m = body.manifest
        let (signature, timeStamp) = try Self.checked(body, requestId: requestId)
        let manifestSha = Digest.sha256Hex(canonical)
        let actor = CustodyEvent.Actor(type: .provider, id: provider)
        try await claimArrival(conn, packageId: m.packageId, requestId: m.requestId, provider: provider, manifest: true)
        // A package for a revoked or lapsed emergency is kept, but sealed from the start.
        let sealReason = try await Emergency.sealOnArrival(conn, request: m.requestId, logger: logger)
        if try await PackageStore.insertPackage(conn, m, provider: provider, signedBytes: canonical, signature: signature, timeStamp: timeStamp,
                                                manifestSha256: manifestSha, sealReason: sealReason, logger: logger) {
            custody.record(CustodyEvent(
                kind: .manifestReceived, at: Timestamp.now(), actor: actor, subject: .init(requestId: m.requestId, packageId: m.packageId),
                objects: ["manifestSha256": manifestSha, "signatureSha256": Digest.sha256Hex(signature), "timeStampSha256": Digest.sha256Hex(timeStamp)],
                details: ["chunks": "\(m.chunks.count)", "size": "\(m.content.size)"]))
            if let sealReason {
                custody.record(CustodyEvent(kind: .packageSealed, at: Timestamp.now(), actor: .broker, subject: .init(requestId: m.requestId, packageId: m.packageId),
                                            objects: ["noteSha256": Digest.sha256Hex(Array(sealReason.utf8))], details: ["onArrival": "true"]))
            }
        }
        try await BrokerStore.advance(conn, requestId, .progress, actor: actor, note: "manifest received: \(m.chunks.count) chunks",
                                      custody: custody, packageId: m.packageId, logger: logger)
        // The manifest comes last (package protocol v2): the package may be complete now.
        try await finalizeIfComplete(conn, packageId: m.packageId, custody: custody)
    }

    /// When the signed manifest is in and every chunk it lists has been checked as it arrived,
    /// finalises the package (`judge`), records its verdict, moves the request on, and queues a
    /// signed receipt. Reads no chunk again, unless this process has no arrival for the package
    /// (after a restart: it is rebuilt from the chunk store).
    func finalizeIfComplete(_ conn: PostgresConnection, packageId: UUID, custody: CustodyRecorder) async throws {
        guard let received = try await PackageStore.received(conn, packageId: packageId, logger: logger), received.state == .receiving else { return }
        guard try await PackageStore.checkedCount(conn, packageId: packageId, logger: logger) >= received.chunkCount else { return }
        let finalising = Meter(label: "custos_packages_finalising")
        finalising.increment()
        let started = ContinuousClock.now
        defer {
            finalising.decrement()
            Metrics.Timer(label: "custos_package_finalise_seconds", preferredDisplayUnit: .seconds).record(duration: ContinuousClock.now - started)
        }
        let requestId = received.requestId
        var arrival = try await advance(conn, packageId: packageId, requestId: requestId)
        defer { arrivals.remove(packageId) }
        let beyond = try await PackageStore.chunksBeyond(conn, packageId: packageId, index: received.chunkCount, logger: logger)
        let manifest = try JSONDecoder().decode(Manifest.self, from: Data(received.manifest))
        let providerActor = CustodyEvent.Actor(type: .provider, id: received.provider)
        custody.record(CustodyEvent(kind: .packageCompleted, at: Timestamp.now(), actor: providerActor, subject: .init(requestId: requestId, packageId: packageId),
                                    objects: ["manifestSha256": Digest.sha256Hex(received.manifest), "chunksRoot": manifest.chunksRoot],
                                    details: ["chunks": "\(received.chunkCount)", "size": "\(manifest.content.size)"]))
        // Built as the chunks arrived: compared with the manifest now, nothing read again.
        let built = arrival.content.finish(against: manifest)
        let hashes = built.contains { $0.code == .chunkHash }
            ? try await PackageStore.chunkHashes(conn, packageId: packageId, below: received.chunkCount, logger: logger) : []
        if arrival.digests?.failed == true {
            logger.warning("the duplicate count is incomplete: record digests could not be written", metadata: [LogKey.package: "\(packageId.lowercased)"])
        }
        let against = try await PackageStore.judgedAgainst(conn, provider: received.provider, requestId: requestId, logger: logger)
        let f = try Self.judge(received, packageId: packageId, manifest: manifest,
                               contentFailures: Self.contentFailures(built, manifest: manifest, beyond: beyond, chunkHashes: hashes),
                               judge: &arrival.judge, against: against, tsaTrust: tsaTrust, bounds: criteriaBounds, deliveredAt: Date())
        for event in f.events { custody.record(event) }
        try await PackageStore.recordVerdict(conn, packageId: packageId, f, logger: logger)
        try await LiveEvents.publish(conn, requestId: requestId, kind: .package, packageId: packageId, state: f.state.rawValue, actor: "broker", logger: logger)
        if manifest.partial == true {
            // More follow: the request stays open and its delivery clock runs on; it is verified
            // only with its final package. A second partial package is still on the timeline.
            let note = "partial package \(packageId.lowercased) \(f.verification.valid ? "verified" : "failed verification")"
            try await BrokerStore.advance(conn, requestId, .deliverPart, actor: providerActor, note: note, custody: custody,
                                          packageId: packageId, details: ["outcome": f.state.rawValue], recordAnyway: true, logger: logger)
        } else {
            // Packages of this request abandoned without a manifest (a connector that restarted
            // mid-extraction sends anew under another id) will not complete: what this process
            // holds of them in memory, and their digest files, go.
            for abandoned in try await PackageStore.abandonedArrivals(conn, requestId: requestId, except: packageId, logger: logger) {
                arrivals.remove(abandoned)
            }
            try await BrokerStore.advance(conn, requestId, .deliver, actor: providerActor, note: "package \(packageId.lowercased) complete",
                                          custody: custody, packageId: packageId, logger: logger)
            if f.verification.valid {
                try await BrokerStore.advance(conn, requestId, .verify, actor: .broker, note: "package \(packageId.lowercased) verified",
                                              custody: custody, packageId: packageId, logger: logger)
            } else {
                try await BrokerStore.event(conn, requestId, .delivered, actor: .broker,
                                            note: "package \(packageId.lowercased) failed verification: " + f.verification.failures.map(\.code.rawValue).joined(separator: ","),
                                            custody: custody, packageId: packageId, logger: logger)
            }
        }
        // The package id as the provider's signed manifest spells it.
        let packageIdAsSent = (try? JSONParser.parse(received.manifest))?["packageId"]?.stringValue ?? packageId.lowercased
        let receipt = Envelope(
            type: .receipt, id: UUID.derived("receipt", packageId.lowercased), requestId: requestId, sender: "broker",
            body: ReceiptBody(packageId: packageIdAsSent, outcome: f.verification.valid ? .accepted : .rejected,
                              manifestSha256: f.verification.manifestSha256, reasons: f.verification.failures.map(\.description),
                              receivedAt: Timestamp.now()))
        try await BrokerStore.enqueue(conn, receipt, topic: Topics.toProvider(received.provider), signer: signer, logger: logger)
        logger.info("package finalised", metadata: [LogKey.package: "\(packageId.lowercased)", LogKey.outcome: "\(f.state.rawValue)"])
    }
}
