import CustosCanonicalJSON
import CustosCriteria
import CustosEvidence
import CustosKafka
import CustosClient
import CustosModel
import CustosPKI
import Foundation
import Logging
import Metrics
import ServiceLifecycle
import Synchronization

/// `custos-connector run`: consumes this provider's request topics, keeps every accepted
/// request in the state directory before storing its Kafka offset, and works through the
/// jobs — extraction, packaging, streaming — up to `concurrency` at once. The urgent lane
/// (`custos.to.<provider>.urgent`) has its own consumer, so no backlog delays it, and urgent
/// jobs are taken before any other, with `urgentConcurrency` workers kept for them alone. On
/// start it resumes every job that was not fully sent.
public struct ProviderConnector: Service {
    let configuration: ConnectorConfiguration
    let jobs: JobStore
    let producer: KafkaProducer
    let signer: SigningKey
    let identity: SignerIdentity
    let timeStamps: TimeStampClient
    /// The broker's public keys (`brokerPublicKeyFile`): its current key and, around a key
    /// change, the next or previous one.
    let brokerKeys: [VerifyingKey]
    let logger: Logger
    let onAccepted: @Sendable (UUID, Priority) -> Void
    let running = RunningJobs()
    let metrics = ConnectorMetrics()

    /// `onAccepted` is called once a request is kept in the state directory (benchmarks use it).
    public init(configuration: ConnectorConfiguration, producer: KafkaProducer, logger: Logger,
                onAccepted: @escaping @Sendable (UUID, Priority) -> Void = { _, _ in }) throws {
        try LibRdKafka.checkVersion()
        self.configuration = configuration
        self.jobs = try JobStore(stateDirectory: configuration.stateDirectory)
        self.producer = producer
        self.signer = try SigningKey.load(path: configuration.signingKeyFile)
        self.identity = try SignerIdentity(configuration: configuration)
        self.timeStamps = TimeStampClient(url: configuration.tsaURL, trust: try String(contentsOfFile: configuration.tsaTrustFile, encoding: .utf8))
        self.brokerKeys = try VerifyingKey.loadAll(path: configuration.brokerPublicKeyFile)
        self.logger = logger
        self.onAccepted = onAccepted
    }

    public func run() async throws {
        let provider = configuration.providerId
        // The topics exist before anyone waits on them (where the cluster allows creating them).
        await producer.ensureTopicsOrWarn(Topics.all(provider), logger: logger)
        let consumer = try KafkaConsumer(configuration: configuration.kafka, groupId: configuration.groupId,
                                         topics: [Topics.toProvider(provider)], logger: logger)
        // Its own group, so that the normal lane's rebalances and backlog never hold it up.
        // A short fetch wait: a broker that holds a fetch for its whole wait even when data
        // arrives (Tansu does) would otherwise add up to that wait to every emergency.
        var urgentKafka = configuration.kafka
        urgentKafka.properties["fetch.wait.max.ms"] = urgentKafka.properties["fetch.wait.max.ms"] ?? "\(configuration.urgentFetchWaitMilliseconds)"
        let urgentConsumer = try KafkaConsumer(configuration: urgentKafka, groupId: configuration.groupId + ".urgent",
                                               topics: [Topics.toProviderUrgent(provider)], logger: logger)
        let queue = JobQueue()
        for id in jobs.jobs() where [.received, .extracted, .packaged].contains(jobs.phase(id)) || hasResendWork(id) {
            logger.info("resuming job", metadata: [LogKey.request: "\(id.lowercased)", LogKey.phase: "\(jobs.phase(id).rawValue)"])
            queue.schedule(id, urgent: jobs.isUrgent(id))
        }
        try await withGracefulShutdownHandler {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await consume(consumer, queue: queue, urgent: false) }
                group.addTask { try await consume(urgentConsumer, queue: queue, urgent: true) }
                group.addTask { try await watchReceipts(queue: queue) }
                group.addTask { [producer, logger] in
                    await producer.keepTopics({ Topics.all(provider) }, every: .seconds(15), logger: logger)
                }
                group.addTask {
                    // Workers pull from one queue, urgent jobs first: at most `concurrency` general
                    // workers, plus `urgentConcurrency` that take urgent jobs only.
                    try await withThrowingTaskGroup(of: Void.self) { workers in
                        for lane in Array(repeating: false, count: configuration.concurrency) + Array(repeating: true, count: configuration.urgentConcurrency) {
                            workers.addTask {
                                while let id = await queue.next(urgentOnly: lane) {
                                    metrics.inFlight.record(running.count + 1)
                                    let failed = Mutex(false)
                                    await running.run(id) {
                                        let ok = await process(id)
                                        failed.withLock { $0 = !ok }
                                    }
                                    metrics.inFlight.record(running.count)
                                    queue.done(id)
                                    if failed.withLock({ $0 }) {
                                        // A job that stopped on a failure (Kafka or the TSA away) is taken up again.
                                        let urgent = jobs.isUrgent(id)
                                        Task {
                                            try? await Task.sleep(for: Self.retryDelay)
                                            queue.schedule(id, urgent: urgent)
                                        }
                                    }
                                }
                            }
                        }
                        try await workers.waitForAll()
                    }
                }
                try await group.next()
                queue.finish()
                group.cancelAll()
            }
        } onGracefulShutdown: {
            // SIGTERM or SIGINT: stop now, not when the running adapters finish (they can run
            // for an hour). Each running job is cancelled — its adapter stopped, its query
            // cancelled on the server — and stays in the state directory, resumed at the next
            // start; nothing is refused or sent for it.
            running.stopAll()
            consumer.close()
            urgentConsumer.close()
            queue.finish()
        }
        consumer.close()
        urgentConsumer.close()
    }

    private func consume(_ consumer: KafkaConsumer, queue: JobQueue, urgent: Bool) async throws {
        for try await message in consumer.messages {
            do {
                try await handle(message, queue: queue, urgent: urgent)
            } catch {
                // Nothing about this message is kept; it is reported and skipped.
                logger.warning("request message refused", metadata: [
                    LogKey.offset: "\(message.offset)", LogKey.reason: "\(String(describing: error))",
                ])
            }
            try consumer.store(message)
        }
    }

    /// The member paths of `received` that `known` (the same value as this connector's types
    /// read and write it) lacks, e.g. `request.window.narrowedTo`. Names only, never values.
    static func unknownMembers(_ received: JSONValue, _ known: JSONValue, at path: String = "request") -> [String] {
        switch (received, known) {
        case (.object(let r), .object(let k)):
            return r.keys.sorted().flatMap { key in
                k[key].map { unknownMembers(r[key]!, $0, at: "\(path).\(key)") } ?? ["\(path).\(key)"]
            }
        case (.array(let r), .array(let k)) where r.count == k.count:
            return zip(r, k).enumerated().flatMap { i, pair in unknownMembers(pair.0, pair.1, at: "\(path)[\(i)]") }
        default:
            return []
        }
    }

    private func handle(_ message: KafkaMessage, queue: JobQueue, urgent lane: Bool) async throws {
        let (header, json) = try SignedEnvelope.open(message.value, keysFor: { $0 == "broker" ? brokerKeys : [] })
        switch header.type {
        case .request:
            let body = try SignedEnvelope.body(RequestBody.self, from: json).body
            let id = body.request.requestId
            guard id == header.requestId, body.request.providerId == configuration.providerId else {
                throw ConnectorError(reason: "request is addressed to another provider or id")
            }
            // The hash is checked over the request member as received, never re-encoded (SPEC §2).
            guard let requestMember = json["body"]?["request"], Digest.sha256Hex(CanonicalJSON.serialize(requestMember)) == body.requestHash else {
                logger.error("request refused: its requestHash is not the SHA-256 of its request", metadata: [LogKey.request: "\(id.lowercased)"])
                try await send(.refusal, id: .derived("refusal", id.lowercased), request: id,
                               body: RefusalBody(reason: .requestHashMismatch, detail: "requestHash is not the SHA-256 of the canonical request member"))
                return
            }
            // What this connector would drop when it reads the request (a member a later broker
            // added, which may narrow what was approved) is refused, never ignored.
            let unknown = Self.unknownMembers(requestMember, try CanonicalJSON.tree(body.request))
            guard unknown.isEmpty else {
                logger.error("request refused: it has members this connector does not know", metadata: [
                    LogKey.request: "\(id.lowercased)", "custos.members": "\(unknown.joined(separator: ","))",
                ])
                try await send(.refusal, id: .derived("refusal", id.lowercased), request: id,
                               body: RefusalBody(reason: .invalidRequest, detail: "members this connector does not know: \(unknown.joined(separator: ", "))"))
                return
            }
            let urgent = body.request.priority == .emergency
            guard urgent == lane else { throw ConnectorError(reason: "\(body.request.priority.rawValue) request on the \(lane ? "urgent" : "normal") topic") }
            if !jobs.exists(id, "request.json") {
                try jobs.write(id, "request.json", Data(try CanonicalJSON.encode(body)))
                metrics.requests.increment()
                onAccepted(id, body.request.priority)
                logger.info("request accepted", metadata: [LogKey.request: "\(id.lowercased)", "custos.priority": "\(body.request.priority.rawValue)"])
            }
            let ack: @Sendable () async throws -> Void = { try await self.send(.ack, id: .derived("ack", id.lowercased), request: id, body: AckBody(requestHash: body.requestHash)) }
            if urgent {
                // The request is kept; the next urgent one is not held up behind this ack's
                // delivery. The job's first status waits for it, so the broker sees them in order.
                running.acknowledging(id) {
                    do { try await ack() } catch { logger.warning("ack not sent", metadata: [LogKey.request: "\(id.lowercased)", LogKey.reason: "\(error)"]) }
                }
            } else {
                try await ack()
            }
            if [.received, .extracted, .packaged].contains(jobs.phase(id)) {
                queue.schedule(id, urgent: urgent)
            } else if !running.isRunning(id) {
                if urgent { await running.acknowledged(id) }  // the answer follows its ack, as the first time
                try await answerAgain(id, body)
            }
        case .receipt:
            let body = try SignedEnvelope.body(ReceiptBody.self, from: json).body
            if let messageId = body.messageId {
                // One of our messages the broker could not apply, and why: the operator's cue.
                metrics.messagesNotApplied.increment()
                logger.error("the broker could not apply a message", metadata: [
                    LogKey.request: "\(header.requestId.lowercased)", "custos.message_id": "\(messageId)",
                    "custos.message_type": "\(body.messageType ?? "")", LogKey.reason: "\(body.reasons.joined(separator: "; "))",
                ])
                // Kept as received, beside the job it concerns, when there is one.
                if jobs.exists(header.requestId, "request.json"), UUID(uuidString: messageId) != nil {
                    try jobs.write(header.requestId, "not-applied-\(messageId.lowercased()).json", Data(message.value))
                }
                return
            }
            guard jobs.exists(header.requestId, "request.json") else { throw ConnectorError(reason: "receipt for an unknown request") }
            // The signed message itself, as received: the provider's proof of delivery (or of the rejection and why).
            try jobs.write(header.requestId, "receipt.json", Data(message.value))
            removeContentIfAccepted(header.requestId)
            logger.info("receipt received", metadata: [LogKey.request: "\(header.requestId.lowercased)", LogKey.outcome: "\(body.outcome.rawValue)"])
        case .resend:
            let body = try SignedEnvelope.body(ResendBody.self, from: json).body
            guard let manifest = try? jobs.read(header.requestId, "manifest.json") else { throw ConnectorError(reason: "resend for a package this connector has not sent") }
            guard Digest.sha256Hex(Array(manifest)) == body.manifestSha256, !body.indices.isEmpty,
                  body.indices.count <= ResendBody.maximumIndices else {
                throw ConnectorError(reason: "resend names another package than this request's, or no chunk")
            }
            // Kept as received; the job sends the chunks (and does so after a crash).
            let name = "resend-\(header.id.lowercased).json"
            guard !jobs.exists(header.requestId, name) else { return }
            try jobs.write(header.requestId, name, Data(message.value))
            metrics.resendsReceived.increment()
            logger.warning("the broker lacks chunks of a package and asks for them again", metadata: [
                LogKey.request: "\(header.requestId.lowercased)", "custos.missing": "\(body.indices.count)", "custos.attempt": "\(body.attempt)",
            ])
            queue.schedule(header.requestId, urgent: jobs.isUrgent(header.requestId))
        case .revocation:
            let body = try SignedEnvelope.body(RevocationBody.self, from: json).body
            // Kept even for a request not seen yet, so that it is never started; the job stops.
            try jobs.write(header.requestId, "revoked.json", Data(message.value))
            running.cancel(header.requestId)
            logger.warning("emergency request revoked; its job is stopped and nothing more is sent", metadata: [
                LogKey.request: "\(header.requestId.lowercased)", LogKey.reason: "\(body.reason.rawValue)",
            ])
        case .preservationExtension, .preservationRelease:
            guard jobs.exists(header.requestId, "request.json") else { throw ConnectorError(reason: "\(header.type.rawValue) for an unknown request") }
            // Kept as received; the job carries it out (and resumes it after a crash).
            let name = header.type == .preservationExtension ? "extension-\(header.id.lowercased).json" : "released.json"
            guard !jobs.exists(header.requestId, name) else { return }
            try jobs.write(header.requestId, name, Data(message.value))
            jobs.remove(header.requestId, "sent")
            queue.schedule(header.requestId, urgent: jobs.isUrgent(header.requestId))
            logger.info("preservation order changed", metadata: [LogKey.request: "\(header.requestId.lowercased)", "custos.message_type": "\(header.type.rawValue)"])
        case .clarification:
            let body = try SignedEnvelope.body(ClarificationBody.self, from: json).body
            guard jobs.exists(header.requestId, "request.json") else { throw ConnectorError(reason: "clarification for an unknown request") }
            // Kept as received, for the operator (`custos-connector status` shows it); never logged.
            try jobs.write(header.requestId, "answer-\(body.questionId.lowercased).json", Data(message.value))
            logger.info("the investigator answered a question", metadata: [LogKey.request: "\(header.requestId.lowercased)"])
        default:
            throw ConnectorError(reason: "\(header.type.rawValue) is not a message for providers")
        }
    }

    private func send<Body: Codable & Sendable>(_ type: MessageType, id: UUID, request: UUID, body: Body) async throws {
        try await Self.send(type, id: id, request: request, body: body, providerId: configuration.providerId, signer: signer, producer: producer,
                            urgent: jobs.isUrgent(request))
    }

    /// Signs a message as this provider and sends it on `custos.from.<provider>`, or on
    /// `custos.from.<provider>.urgent` when the request is an emergency (`urgent`).
    public static func send<Body: Codable & Sendable>(_ type: MessageType, id: UUID, request: UUID, body: Body, providerId: String,
                                                      signer: SigningKey, producer: KafkaProducer, urgent: Bool) async throws {
        let envelope = Envelope(type: type, id: id, requestId: request, sender: providerId, body: body)
        try await producer.send(OutgoingMessage(topic: Topics.fromProvider(providerId, urgent: urgent), key: Array(request.lowercased.utf8),
                                                value: try SignedEnvelope.encode(envelope, signer: signer)))
    }

    /// How long a job that stopped on a failure waits before it is taken up again.
    static let retryDelay: Duration = .seconds(5)

    /// Takes one job as far as it goes. Failures are logged and the job stays where it was;
    /// it is taken up again after `retryDelay` (returns false then), and the next start
    /// resumes it too.
    @discardableResult
    func process(_ id: UUID) async -> Bool {
        var meta: Logger.Metadata = [LogKey.request: "\(id.lowercased)"]
        // A revoked request goes no further (checked again between the steps below).
        func revoked() -> Bool { jobs.phase(id) == .revoked || Task.isCancelled }
        do {
            guard !revoked() else { return true }
            await running.acknowledged(id)
            let body = try JSONDecoder().decode(RequestBody.self, from: try jobs.read(id, "request.json"))
            if body.request.isPreservation {
                try await preserve(id, body)
                return true
            }
            let streamer = PackageStreamer(jobs: jobs, producer: producer, signer: signer, identity: identity, providerId: configuration.providerId,
                                           inFlight: configuration.inFlightChunks)
            let spoolDirectory = jobs.file(id, "results")
            let resultCount = body.request.targets.count * body.request.categories.count
            if jobs.phase(id) == .received {
                try await send(.status, id: .derived("status", id.lowercased, "extracting"), request: id, body: StatusBody(phase: .extracting, percent: 0))
                let started = ContinuousClock.now
                // Package protocol v2: the chunks go out while the adapters run. The package id
                // is kept only when no adapter runs again (their content is then the same).
                let final = body.request.categories.allSatisfy { configuration.adapters[$0] == nil || FileManager.default.fileExists(
                    atPath: spoolDirectory.appendingPathComponent("done-\($0.rawValue).json").path) }
                let packageId = try streamer.packageId(id, contentIsFinal: final)
                do {
                    let spools = try ResultSpools(directory: spoolDirectory, request: body.request)
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask { _ = try await streamer.streamContent(id, packageId: packageId, spools: spools.progress) }
                        try await extract(body.request, spools: spools)
                        try await group.waitForAll()
                    }
                } catch let failure as ExecAdapter.Failure {
                    if running.stopping { logger.warning("extraction stopped for shutdown; the job resumes on the next start", metadata: meta); return true }
                    if revoked() { logger.warning("extraction stopped: request revoked", metadata: meta); return true }
                    metrics.refusals.increment()
                    meta[LogKey.reason] = "\(failure.reason)"
                    logger.error("extraction failed; refusing the request", metadata: meta)
                    try await refuse(id, RefusalBody(reason: .extractionFailed, detail: failure.reason))
                    try jobs.write(id, "sent", Data())
                    return true
                }
                let took = ContinuousClock.now - started
                metrics.extractionSeconds.recordNanoseconds(took.components.seconds * 1_000_000_000 + took.components.attoseconds / 1_000_000_000)
                meta["custos.duration_ms"] = "\(took.components.seconds * 1000 + took.components.attoseconds / 1_000_000_000_000_000)"
                logger.info("extraction finished; every chunk is acknowledged", metadata: meta)
            }
            guard !revoked() else { return true }
            if jobs.phase(id) == .extracted {
                let extraction = try JSONDecoder().decode(Extraction.self, from: try jobs.read(id, "extraction.json"))
                let list: PackageStreamer.ChunkList
                if let data = try? jobs.read(id, "chunks.json"), let kept = try? JSONDecoder().decode(PackageStreamer.ChunkList.self, from: data) {
                    list = kept
                } else {
                    // Stopped while chunks were still going out: the rest go now, from the spools.
                    list = try await streamer.streamContent(id, packageId: try streamer.packageId(id, contentIsFinal: true),
                                                            spools: .finished(directory: spoolDirectory, results: resultCount))
                }
                try streamer.buildPackage(body.request, requestHash: body.requestHash, extraction: extraction, chunks: list)
            }
            if jobs.phase(id) == .packaged && !jobs.exists(id, "manifest.tsr") {
                try await timeStamp(id)
            }
            guard !revoked() else { return true }
            if jobs.phase(id) == .packaged {
                try await send(.status, id: .derived("status", id.lowercased, "streaming"), request: id, body: StatusBody(phase: .streaming, percent: 100))
                try await streamer.sendManifest(id)
                metrics.packagesSent.increment()
                if let manifest = try? JSONDecoder().decode(Manifest.self, from: try jobs.read(id, "manifest.json")) {
                    metrics.chunksSent.increment(by: manifest.chunks.count)
                    metrics.bytesSent.increment(by: Int(manifest.content.size))
                }
                logger.info("package sent", metadata: meta)
                // After the manifest, not before: the verdict is the broker's to give, and the
                // package does not wait for this one.
                if !jobs.exists(id, "criteria.json") {
                    do { try foresee(id, body, results: resultCount) } catch {
                        logger.warning("the four criteria could not be foreseen", metadata: [LogKey.request: "\(id.lowercased)", LogKey.reason: "\(error)"])
                    }
                }
                removeContentIfAccepted(id, byTheJob: true)
            }
            guard !revoked() else { return true }
            if jobs.phase(id) == .sent { try await sendAgain(id, resultCount: resultCount, streamer: streamer) }
        } catch {
            if running.stopping {
                logger.warning("job stopped for shutdown; it resumes on the next start", metadata: meta)
                return true
            }
            metrics.jobFailures.increment()
            meta[LogKey.reason] = "\(String(describing: error))"
            logger.error("job stopped; it is taken up again shortly", metadata: meta)
            return false
        }
        return true
    }

    /// Judges the package on the four criteria as the broker will (delivered now; the clock's
    /// deadline is the broker's to know), keeps the verdict in the job (`custos-connector
    /// status` shows it) and tells the operator what would not pass — reason codes and counts,
    /// never a record. The package is sent either way: the verdict is the broker's to give.
    private func foresee(_ id: UUID, _ body: RequestBody, results: Int) throws {
        let manifest = try JSONDecoder().decode(Manifest.self, from: try jobs.read(id, "manifest.json"))
        // Digests on disk: constant memory however many records (the broker keeps them in memory).
        let digests = try SpillingDigests(directory: jobs.file(id, "digests"))
        var judge = PackageJudge(request: body.request, manifest: manifest, digests: digests)
        defer { if digests.failed { logger.warning("the duplicate count is incomplete: record digests could not be written to the job directory", metadata: [LogKey.request: "\(id.lowercased)"]) } }
        try ResultSpools.readContent(directory: jobs.file(id, "results"), results: results) { judge.consume(content: $0) }
        var stampedAt: Date?
        if let response = try? jobs.read(id, "manifest.tsr"), let signature = try? jobs.read(id, "manifest.p7s"),
           case .valid(let token) = TimeStamp.verify(response: [UInt8](response), sha256: Digest.sha256Bytes([UInt8](signature)), trust: timeStamps.trust) {
            stampedAt = token.genTime
        }
        // The delivery deadline as the broker last told it: in the request, or moved by the
        // time a question waited (deadlines only move later).
        let deadline = ([body.deliverBy] + jobs.answers(id).map(\.deliverBy)).compactMap { $0.flatMap(Timestamp.parse) }.max()
        let verdict = judge.finish(checks: [], delivery: .init(deliveredAt: Date(), deadline: deadline, timeStampedAt: stampedAt),
                                   bounds: configuration.criteria)
        try jobs.write(id, "criteria.json", Data(try CanonicalJSON.encode(verdict)))
        var metadata: Logger.Metadata = [LogKey.request: "\(id.lowercased)", "custos.admissible": "\(verdict.admissible)"]
        for c in Verdict.Criterion.allCases {
            metadata["custos.\(c.rawValue)"] = "\(verdict.status(c)?.rawValue ?? "-")\(verdict.reasons(c).map { " \($0.code)×\($0.count)" }.joined())"
        }
        if verdict.admissible {
            logger.info("the package passes the four criteria", metadata: metadata)
        } else {
            logger.warning("the package would not be admissible; sending it, the broker judges", metadata: metadata)
        }
    }

    /// Carries out a preservation order: freezes the data (then confirms with `preserved`),
    /// applies each extension the broker sent (confirming the new end), and lets go once the
    /// order is released or has ended. Each step is done once; the job is `sent` when all are.
    private func preserve(_ id: UUID, _ body: RequestBody) async throws {
        let request = body.request
        guard !configuration.preservationCommand.isEmpty else {
            logger.error("preservation order refused: no adapters.preservation.command is configured", metadata: [LogKey.request: "\(id.lowercased)"])
            try await refuse(id, RefusalBody(reason: .extractionFailed, detail: "this provider has no preservation program configured"))
            try jobs.write(id, "sent", Data())
            return
        }
        let adapter = PreservationAdapter(command: configuration.preservationCommand, timeout: configuration.adapterTimeout)
        let stderr = jobs.file(id, "preservation.stderr")
        do {
            if !jobs.exists(id, "preserved") {
                try await adapter.run(.preserve, request: request, until: request.preserveUntil, stderrFile: stderr)
                let until = request.preserveUntil ?? Timestamp.now()
                try await confirmPreservation(id, body, until: until, step: "preserve")
                try jobs.write(id, "preserved", Data(until.utf8))
                logger.info("data preserved", metadata: [LogKey.request: "\(id.lowercased)"])
            }
            for name in jobs.files(id, prefix: "extension-") where !jobs.exists(id, name + ".done") {
                let (_, json) = try SignedEnvelope.open([UInt8](try jobs.read(id, name)), keysFor: { $0 == "broker" ? brokerKeys : [] })
                let extension_ = try SignedEnvelope.body(PreservationTermBody.self, from: json).body
                try await adapter.run(.extend, request: request, until: extension_.until, stderrFile: stderr)
                try await confirmPreservation(id, body, until: extension_.until, step: extension_.until)
                try jobs.write(id, name + ".done", Data())
                logger.info("preservation extended", metadata: [LogKey.request: "\(id.lowercased)"])
            }
            if jobs.exists(id, "released.json") && !jobs.exists(id, "released.done") {
                try await adapter.run(.release, request: request, until: nil, stderrFile: stderr)
                try jobs.write(id, "released.done", Data())
                logger.info("preservation released", metadata: [LogKey.request: "\(id.lowercased)"])
            }
            try jobs.write(id, "sent", Data())
        } catch let failure as ExecAdapter.Failure where !jobs.exists(id, "preserved") {
            logger.error("preservation failed; refusing the order", metadata: [LogKey.request: "\(id.lowercased)", LogKey.reason: "\(failure.reason)"])
            try await refuse(id, RefusalBody(reason: .extractionFailed, detail: failure.reason))
            try jobs.write(id, "sent", Data())
        }
    }

    /// The signed `preserved` confirmation of one step of a preservation order: the order
    /// itself (`step` "preserve") or an extension (`step` its new end). Its message id is
    /// derived from the request and the step, so a confirmation sent again is applied once.
    private func confirmPreservation(_ id: UUID, _ body: RequestBody, until: String, step: String) async throws {
        try await send(.preserved, id: .derived("preserved", id.lowercased, step), request: id, body: PreservationTermBody(requestHash: body.requestHash, until: until))
    }

    /// Refuses a job's request: the body is kept in the job (`refusal.json`), so that the same
    /// refusal, under the same message id, can be sent again (`answerAgain`).
    private func refuse(_ id: UUID, _ refusal: RefusalBody) async throws {
        try jobs.write(id, "refusal.json", try JSONEncoder().encode(refusal))
        try await send(.refusal, id: .derived("refusal", id.lowercased), request: id, body: refusal)
    }

    /// Answers again a request already carried out, when the broker sends it again: it does so
    /// while it has no answer, which a Kafka that lost it would otherwise leave unnoticed
    /// (`schemas/README.md`, "Re-sending"). The answer is the job's refusal, or a preservation
    /// order's confirmations; a package has its own guard (the manifest sent again).
    private func answerAgain(_ id: UUID, _ body: RequestBody) async throws {
        if let kept = try? jobs.read(id, "refusal.json"), let refusal = try? JSONDecoder().decode(RefusalBody.self, from: kept) {
            try await send(.refusal, id: .derived("refusal", id.lowercased), request: id, body: refusal)
            logger.info("request received again; its refusal sent again", metadata: [LogKey.request: "\(id.lowercased)"])
            return
        }
        try await confirmPreservationAgain(id, body)
    }

    /// Sends again the confirmations of a preservation order already carried out.
    private func confirmPreservationAgain(_ id: UUID, _ body: RequestBody) async throws {
        guard body.request.isPreservation, let first = try? jobs.read(id, "preserved") else { return }
        // Jobs from before the end was kept in the file confirm the order's own end.
        let until = first.isEmpty ? (body.request.preserveUntil ?? Timestamp.now()) : String(decoding: first, as: UTF8.self)
        try await confirmPreservation(id, body, until: until, step: "preserve")
        for name in jobs.files(id, prefix: "extension-") where !name.hasSuffix(".done") && jobs.exists(id, name + ".done") {
            let (_, json) = try SignedEnvelope.open([UInt8](try jobs.read(id, name)), keysFor: { $0 == "broker" ? brokerKeys : [] })
            let extension_ = try SignedEnvelope.body(PreservationTermBody.self, from: json).body
            try await confirmPreservation(id, body, until: extension_.until, step: extension_.until)
        }
        logger.info("preservation order received again; its confirmations sent again", metadata: [LogKey.request: "\(id.lowercased)"])
    }

    /// The content (the result spools) is let go once the broker has accepted the package, and
    /// the job no longer reads it (its own verdict, written after the manifest is sent).
    private func removeContentIfAccepted(_ id: UUID, byTheJob: Bool = false) {
        guard byTheJob || jobs.exists(id, "criteria.json") || !running.isRunning(id),
              let data = try? jobs.read(id, "receipt.json"), let (_, json) = try? SignedEnvelope.open([UInt8](data), keysFor: { $0 == "broker" ? brokerKeys : [] }),
              let receipt = try? SignedEnvelope.body(ReceiptBody.self, from: json).body, receipt.outcome == .accepted
        else { return }
        jobs.remove(id, "results")
    }

    /// Gets an RFC 3161 time-stamp over the package signature, retrying while the TSA is away.
    private func timeStamp(_ id: UUID) async throws {
        let signature = [UInt8](try jobs.read(id, "manifest.p7s"))
        var attempt = 0
        while true {
            do {
                let (response, token) = try await timeStamps.timeStamp(sha256: Digest.sha256Bytes(signature))
                try jobs.write(id, "manifest.tsr", Data(response))
                logger.info("package time-stamped", metadata: [
                    LogKey.request: "\(id.lowercased)", "custos.gen_time": "\(Timestamp.format(token.genTime))",
                    "custos.accuracy_us": "\(token.accuracyMicroseconds.map(String.init) ?? "unstated")",
                ])
                return
            } catch {
                attempt += 1
                if attempt >= 6 { throw error }
                logger.warning("time-stamp failed; retrying", metadata: [LogKey.request: "\(id.lowercased)", LogKey.reason: "\(error)"])
                try await Task.sleep(for: .seconds(1 << attempt))
            }
        }
    }

    /// One category's adapter, whichever kind it is.
    private func run(_ adapter: ConnectorConfiguration.Adapter, _ request: ApprovedRequest, _ category: DataCategory,
                     sink: @escaping ExecAdapter.Sink, declared: Declarations) async throws -> ExecAdapter.Output {
        let id = request.requestId
        do {
            switch adapter {
            case .exec(let command):
                return try await ExecAdapter(command: command, timeout: configuration.adapterTimeout, normalisation: configuration.normalisation)
                    .run(request: request, category: category, sink: sink, coverage: { target, c in declared.add(target, c) },
                         stderrFile: jobs.file(id, "adapter-\(category.rawValue).stderr"))
            case .sql(let query):
                return try await SQLAdapter(database: configuration.sqlDatabase!, query: query, timeout: configuration.adapterTimeout,
                                            normalisation: configuration.normalisation)
                    .run(request: request, category: category, sink: sink, logger: logger)
            case .fileDrop:
                let drop = FileDropAdapter(directory: configuration.fileDropDirectory!, timeout: configuration.adapterTimeout,
                                           pollInterval: configuration.fileDropPoll, normalisation: configuration.normalisation)
                let file = try await drop.claim(id, into: jobs.file(id, "drop"))
                return try drop.read(file, request: request, category: category, sink: sink, coverage: { target, c in declared.add(target, c) })
            }
        } catch let failure as ExecAdapter.Failure {
            metrics.adapterFailure(adapter.kind).increment()
            throw failure
        }
    }

    /// Runs each requested category's adapter (those that finished before a restart are not
    /// run again), grouping records per result, then writes the content file and the
    /// extraction summary.
    private func extract(_ request: ApprovedRequest, spools: ResultSpools) async throws {
        let id = request.requestId
        let asOf = try spools.asOf()
        var outOfScope = 0
        var cannotExecute: [String: String] = [:]
        var coverage: [ResultSpools.ResultKey: Manifest.Coverage] = [:]
        var dropped: [RecordGate.Drop: Int] = [:]
        var notSent: [[ExecAdapter.NotSentKey: Int]] = []
        func counts(_ entries: [Extraction.NotSentCount]?) -> [ExecAdapter.NotSentKey: Int] {
            Dictionary((entries ?? []).map { ($0.key, $0.count) }, uniquingKeysWith: +)
        }
        for category in request.categories {
            guard let adapter = configuration.adapters[category] else {
                cannotExecute[category.rawValue] = "no adapter configured for this category"
                spools.close(category)
                continue
            }
            // Finished before a restart: not run again.
            if let done = try spools.restore(category) {
                for d in done.coverage { coverage[ResultSpools.ResultKey(target: d.target, category: category)] = d.coverage }
                let output = ExecAdapter.Output(dropped: Dictionary(uniqueKeysWithValues: done.dropped.compactMap { k, v in RecordGate.Drop(rawValue: k).map { ($0, v) } }))
                outOfScope += output.outOfScope
                dropped.merge(output.dropped, uniquingKeysWith: +)
                notSent.append(counts(done.notSent))
                logger.info("adapter finished before the restart; not run again", metadata: [LogKey.request: "\(id.lowercased)", "custos.category": "\(category.rawValue)"])
                continue
            }
            try spools.begin(category)
            let declared = Declarations()
            let sink: ExecAdapter.Sink = { target, record in try spools.append(target: target, category: category, record: record) }
            let output = try await run(adapter, request, category, sink: sink, declared: declared)
            var declaredNow: [ResultSpools.Done.Declared] = []
            for target in request.targets {
                // What the adapter did not declare, the configured retention does (CSV, SQL and
                // file-drop exports have no coverage line).
                if declared.coverage(for: target) == nil, let retention = configuration.retention[category],
                   let c = ConnectorConfiguration.coverage(window: request.window, asOf: Timestamp.parse(asOf) ?? Date(), retention: retention) {
                    declared.add(target, c)
                }
                if let c = declared.coverage(for: target) {
                    coverage[ResultSpools.ResultKey(target: target, category: category)] = c
                    declaredNow.append(.init(target: target, coverage: c))
                }
            }
            try spools.finish(category, .init(dropped: Dictionary(uniqueKeysWithValues: output.dropped.map { ($0.key.rawValue, $0.value) }), coverage: declaredNow,
                                              notSent: output.notSent.map { Extraction.NotSentCount(key: $0.key, count: $0.value) }))
            notSent.append(output.notSent)
            outOfScope += output.outOfScope
            dropped.merge(output.dropped, uniquingKeysWith: +)
            for (why, n) in output.dropped { metrics.outOfScope(why).increment(by: n) }
            if !output.unreadableLines.isEmpty {
                // Line numbers only: the operator finds the rows in the export; their content
                // (targets, payload) is never logged.
                logger.warning("adapter output has unreadable records; they are not sent, the rest is", metadata: [
                    LogKey.request: "\(id.lowercased)", "custos.category": "\(category.rawValue)",
                    "custos.unreadable": "\(output.dropped[.unreadable] ?? 0)",
                    "custos.unreadable_lines": "\(output.unreadableLines.map(String.init).joined(separator: ","))",
                ])
            }
        }
        try spools.flush()
        if outOfScope > 0 {
            var metadata: Logger.Metadata = [LogKey.request: "\(id.lowercased)", "custos.out_of_scope": "\(outOfScope)"]
            for (why, n) in dropped { metadata["custos.out_of_scope.\(why.rawValue)"] = "\(n)" }
            logger.warning("adapter returned out-of-scope records; they are not sent", metadata: metadata)
        }
        let keys = request.targets.flatMap { t in request.categories.map { ResultSpools.ResultKey(target: t, category: $0) } }
        let results = zip(keys, spools.trees).map { key, tree in
            Extraction.ResultSummary(recordCount: tree.count, size: tree.size, recordsRoot: tree.root, coverage: coverage[key])
        }
        metrics.recordsExtracted.increment(by: results.reduce(0) { $0 + $1.recordCount })
        let extraction = Extraction(asOf: asOf, results: results, outOfScope: outOfScope, cannotExecute: cannotExecute,
                                    notSent: Extraction.merge(notSent))
        try jobs.write(id, "extraction.json", Data(try CanonicalJSON.encode(extraction)))
    }
}

/// Coverage declared by one adapter run: per target, and for all targets.
/// `@unchecked Sendable`: the adapter calls it from its single reading thread, and it is read
/// only after the adapter has finished.
final class Declarations: @unchecked Sendable {
    private var all: Manifest.Coverage?
    private var byTarget: [Target: Manifest.Coverage] = [:]

    func add(_ target: Target?, _ c: Manifest.Coverage) {
        if let target { byTarget[target] = c } else { all = c }
    }

    func coverage(for target: Target) -> Manifest.Coverage? { byTarget[target] ?? all }
}

/// Jobs waiting for a worker, in two lanes: urgent jobs are always handed out first. A job
/// already queued or running is not queued twice.
final class JobQueue: Sendable {
    private struct State {
        var urgent: [UUID] = []
        var normal: [UUID] = []
        var queued: Set<UUID> = []
        var waiters: [(urgentOnly: Bool, continuation: CheckedContinuation<UUID?, Never>)] = []
        var finished = false
    }
    private let state = Mutex(State())

    func schedule(_ id: UUID, urgent: Bool) {
        let waiter = state.withLock { s -> CheckedContinuation<UUID?, Never>? in
            guard !s.finished, s.queued.insert(id).inserted else { return nil }
            if let i = s.waiters.firstIndex(where: { urgent || !$0.urgentOnly }) { return s.waiters.remove(at: i).continuation }
            if urgent { s.urgent.append(id) } else { s.normal.append(id) }
            return nil
        }
        waiter?.resume(returning: id)
    }

    /// The next job (urgent first; only urgent ones for `urgentOnly`), or nil once finished.
    func next(urgentOnly: Bool) async -> UUID? {
        await withCheckedContinuation { c in
            enum Take { case job(UUID), finished, wait }
            let take = state.withLock { s -> Take in
                if !s.urgent.isEmpty { return .job(s.urgent.removeFirst()) }
                if !urgentOnly, !s.normal.isEmpty { return .job(s.normal.removeFirst()) }
                if s.finished { return .finished }
                s.waiters.append((urgentOnly, c))
                return .wait
            }
            switch take {
            case .job(let id): c.resume(returning: id)
            case .finished: c.resume(returning: nil)
            case .wait: break
            }
        }
    }

    func done(_ id: UUID) { state.withLock { _ = $0.queued.remove(id) } }

    func finish() {
        let waiters = state.withLock { s -> [CheckedContinuation<UUID?, Never>] in
            s.finished = true
            defer { s.waiters = [] }
            return s.waiters.map(\.continuation)
        }
        waiters.forEach { $0.resume(returning: nil) }
    }
}

/// The jobs being worked on, so that a revocation can stop one; and acknowledgements still
/// being sent, which a job's first status waits for.
final class RunningJobs: Sendable {
    private let tasks = Mutex<[UUID: Task<Void, Never>]>([:])
    private let acks = Mutex<[UUID: Task<Void, Never>]>([:])

    func acknowledging(_ id: UUID, _ send: @escaping @Sendable () async -> Void) {
        acks.withLock { $0[id] = Task { await send() } }
    }

    func acknowledged(_ id: UUID) async {
        guard let task = acks.withLock({ $0[id] }) else { return }
        await task.value
        acks.withLock { _ = $0.removeValue(forKey: id) }
    }

    func run(_ id: UUID, _ body: @escaping @Sendable () async -> Void) async {
        let task = Task { await body() }
        tasks.withLock { $0[id] = task }
        if stopping { task.cancel() }
        await task.value
        tasks.withLock { _ = $0.removeValue(forKey: id) }
    }

    func cancel(_ id: UUID) { tasks.withLock { $0[id] }?.cancel() }

    func isRunning(_ id: UUID) -> Bool { tasks.withLock { $0[id] != nil } }

    private let stoppingFlag = Mutex(false)

    /// Whether the connector is shutting down (a cancelled job then stays to be resumed).
    var stopping: Bool { stoppingFlag.withLock { $0 } }

    /// Shutdown: every running job is cancelled, and any that starts afterwards too.
    func stopAll() {
        stoppingFlag.withLock { $0 = true }
        tasks.withLock { Array($0.values) }.forEach { $0.cancel() }
    }

    var count: Int { tasks.withLock { $0.count } }
}

/// The provider's signing certificate, its chain and key, checked at start: the certificate
/// must name this provider and belong to the key.
struct SignerIdentity: Sendable {
    let certificate: String
    let chain: String
    let key: String

    init(configuration: ConnectorConfiguration) throws {
        func read(_ path: String, _ what: String) throws -> String {
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw ConnectorError(reason: "cannot read \(what) \(path)") }
            return text
        }
        certificate = try read(configuration.certificateFile, "certificateFile")
        chain = try configuration.certificateChainFile.map { try read($0, "certificateChainFile") } ?? ""
        key = try read(configuration.signingKeyFile, "signingKeyFile")
        let info = try CertificateInfo(pem: certificate)
        guard info.commonName == configuration.providerId else {
            throw ConnectorError(reason: "certificateFile names \(info.commonName), not this provider (\(configuration.providerId))")
        }
        guard info.isValid(at: Date()) else { throw ConnectorError(reason: "certificateFile is not valid now") }
        _ = try CMS.sign([0], certificate: certificate, key: key, chain: chain)  // the key belongs to the certificate
    }
}

public struct ConnectorError: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public var description: String { reason }
}

enum LogKey {
    static let request = "custos.request_id"
    static let phase = "custos.phase"
    static let outcome = "custos.outcome"
    static let reason = "custos.reason"
    static let offset = "kafka.offset"
}
