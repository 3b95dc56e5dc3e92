import Crypto
import CustosClient
import CustosCustody
import CustosEvidence
import CustosMerkle
import CustosModel
import CustosKafka
import CustosPKI
import CustosRuntime
import Foundation
import Hummingbird
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Prometheus
import ServiceLifecycle

/// Assembles `custos-broker serve`: the HTTP API, the PostgreSQL pool, the outbox relay, the
/// response ingestor and the Kafka producer, in one service group with signal handling.
/// `onRunning` receives the address the HTTP server actually listens on.
/// `metrics`: the registry `GET /metrics` exports (the caller bootstraps swift-metrics with it).
public func buildApplication(
    configuration: BrokerConfiguration, metrics: PrometheusCollectorRegistry? = nil, logger: Logger,
    onRunning: @escaping @Sendable (String) async -> Void = { _ in }
) throws -> some ApplicationProtocol {
    try LibRdKafka.checkVersion()
    let signer = try SigningKey.load(path: configuration.signingKeyFile)
    let tsaTrust = try readFile(configuration.tsaTrustFile, key: "tsa.trustFile")
    let authority = try configuration.tsaCertificateFile.map { cert in
        TimeStamp.Authority(certificate: try readFile(cert, key: "tsa.certificateFile"), key: try readFile(configuration.tsaKeyFile!, key: "tsa.keyFile"),
                            chain: try configuration.tsaChainFile.map { try readFile($0, key: "tsa.chainFile") } ?? "", policy: configuration.tsaPolicy)
    }
    if let authority {  // fail at start, not at the first request, when the TSA identity is broken
        _ = try authority.respond(to: TimeStamp.request(sha256: Array(repeating: 0, count: 32), nonce: [1]), serial: 1)
    }
    let noteKey: NoteSigner? = try configuration.custodyNoteKeyFile.map { path in
        do { return try NoteSigner(skey: try readFile(path, key: "custody.noteKeyFile")) } catch let e as NoteError {
            throw ConfigurationError(key: "custody.noteKeyFile", reason: e.description)
        }
    }
    let checkpointSigner: CheckpointSigner
    do {
        checkpointSigner = try CheckpointSigner(
        origin: configuration.custodyOrigin,
        certificate: try readFile(configuration.custodyCertificateFile, key: "custody.certificateFile"),
        key: try readFile(configuration.custodyKeyFile, key: "custody.keyFile"),
        chain: try configuration.custodyChainFile.map { try readFile($0, key: "custody.chainFile") } ?? "",
        note: noteKey,
        timeStamp: try renewalStamp(configuration))
    } catch let e as NoteError {
        throw ConfigurationError(key: "custody.noteKeyFile", reason: e.description)
    }
    // Fail at start, not at the first checkpoint, when the log's identity is broken.
    _ = try Checkpoint(origin: configuration.custodyOrigin, size: 0, root: SHA256Digest(bytes: MerkleTree.emptyRoot)!)
        .sign(certificate: checkpointSigner.certificate, key: checkpointSigner.key, chain: checkpointSigner.chain)
    let jwt = try configuration.jwtPublicKeyFile.map { path in
        do {
            return try JWTSettings(keys: [try VerifyingKey(pem: try readFile(path, key: "auth.jwt.publicKeyFile"))],
                               audience: configuration.jwtAudience, issuer: configuration.jwtIssuer)
        } catch let e as KeyError { throw ConfigurationError(key: "auth.jwt.publicKeyFile", reason: e.reason) }
    }
    let postgres = configuration.database.makeClient(logger: logger)
    let producer = try KafkaProducer(configuration: configuration.kafka, logger: logger)
    let chunkStore = try DirectoryChunkStore(root: URL(fileURLWithPath: configuration.storageDirectory),
                                             key: try DirectoryChunkStore.loadKey(path: configuration.storageKeyFile))
    let store = BrokerStore(client: postgres, signer: signer, tsaTrust: tsaTrust, clocks: configuration.clocks, criteriaBounds: configuration.criteriaBounds,
                            chunks: chunkStore, logger: logger)
    let ready = Gate()
    let relay = OutboxRelay(client: postgres, producer: producer, pollInterval: configuration.outboxPollInterval, wakeup: store.outboxWakeup, ready: ready, logger: logger)
    var webhooks = configuration.webhooks
    if let file = configuration.webhookSecretFile {
        webhooks.secret = Array(try readFile(file, key: "webhooks.secretFile").trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        guard webhooks.secret.count >= 16 else { throw ConfigurationError(key: "webhooks.secretFile", reason: "the secret must be at least 16 characters") }
    }
    let webhookWakeup = Wakeup()
    let clockWatcher = LegalClockWatcher(store: store, interval: configuration.clockCheckInterval, ready: ready, webhooks: webhooks,
                                         webhookWakeup: webhookWakeup, resend: configuration.resend,
                                         chunkResend: configuration.chunkResend, logger: logger)
    var email = configuration.email
    if var smtp = email.smtp {
        if let file = configuration.smtpPasswordFile {
            smtp.password = try readFile(file, key: "notifications.smtp.passwordFile").trimmingCharacters(in: .newlines)
        }
        if let file = configuration.smtpCAFile {
            do { smtp.trustRoots = try NIOSSLCertificate.fromPEMBytes(Array(try readFile(file, key: "notifications.smtp.caFile").utf8)) } catch let e as ConfigurationError {
                throw e
            } catch { throw ConfigurationError(key: "notifications.smtp.caFile", reason: "is not PEM certificates") }
        }
        email.smtp = smtp
    }
    let configuredWebhooks = webhooks
    let notifier = WebhookNotifier(client: postgres, settings: webhooks, email: email, wakeup: webhookWakeup, ready: ready, logger: logger)
    let integrator = CustodyIntegrator(client: postgres, signer: checkpointSigner, interval: configuration.checkpointInterval, ready: ready, logger: logger)
    let consumers = IngestConsumers()
    let liveFeed = LiveFeed(client: postgres, ready: ready, logger: logger)
    let gauges = BrokerGauges(client: postgres, consumers: consumers, interval: .seconds(5), ready: ready, logger: logger)
    let health = BrokerHealth(client: postgres, producer: producer, custodyStaleAfter: max(.seconds(30), configuration.checkpointInterval * 10), logger: logger)
    let ingestor = ResponseIngestor(store: store, producer: producer, kafka: configuration.kafka, groupId: configuration.consumerGroup, consumers: consumers,
                                    refreshInterval: configuration.providerRefreshInterval, concurrency: configuration.ingestConcurrency,
                                    urgentConcurrency: configuration.ingestUrgentConcurrency,
                                    bufferBytes: configuration.ingestBufferBytes, ready: ready, logger: logger)
    let tls = try configuration.tlsCertificateFile.map { file in
        try brokerTLSConfiguration(certificateChain: try readFile(file, key: "http.tls.certificateFile"),
                                   key: try readFile(configuration.tlsKeyFile!, key: "http.tls.keyFile"),
                                   clientCAs: try configuration.tlsClientTrustFile.map { try readFile($0, key: "http.tls.clientTrustFile") })
    }
    var app = Application(
        router: buildRouter(store: store, maxBodyBytes: configuration.maxBodyBytes, timeStampAuthority: authority,
                            exportWait: max(.seconds(10), configuration.checkpointInterval * 3), jwt: jwt, metrics: metrics, health: health,
                            liveFeed: liveFeed, portal: { var p = configuration.portal; p.secureCookies = configuration.portalSecureCookies ?? (tls != nil); return p }(),
                            hi1: configuration.hi1Endpoint, logger: logger),
        server: try brokerServer(tls: tls),
        configuration: .init(address: .hostname(configuration.httpHost, port: configuration.httpPort), serverName: "custos-broker"),
        services: [postgres, relay, ingestor, integrator, clockWatcher, liveFeed, KafkaProducerService(producer: producer)] as [any Service]
            + (configuration.renewalIntervalHours == 0 ? [] : [TimeStampRenewalService(
                store: store, horizon: TimeInterval(configuration.renewalHorizonDays) * 86_400, interval: .seconds(configuration.renewalIntervalHours * 3600),
                stamp: checkpointSigner.timeStamp, ready: ready, logger: logger)])
            + (configuration.custodyWitnesses.isEmpty ? [] : [WitnessPusher(store: store, witnesses: configuration.custodyWitnesses,
                                                                            interval: configuration.checkpointInterval, ready: ready, logger: logger)])
            + (metrics == nil ? [] : [gauges])
            + (webhooks.urls.isEmpty && email.smtp == nil ? [] : [notifier]),
        onServerRunning: { channel in
            let port = channel.localAddress?.port ?? configuration.httpPort
            await onRunning("\(tls == nil ? "http" : "https")://\(configuration.httpHost):\(port)")
        },
        logger: logger)
    app.beforeServerStarts {
        try await Migrator.migrate(client: postgres, schema: configuration.database.schema, logger: logger)
        try await configuredWebhooks.record(on: postgres, logger: logger)
        try await store.recordKeyChanges([
            "message-signing": signer.publicKey.keyId,
            "custody-log": Digest.sha256Hex(try CertificateInfo(pem: checkpointSigner.certificate).der),
        ].merging(try authority.map { ["time-stamping": Digest.sha256Hex(try CertificateInfo(pem: $0.certificate).der)] } ?? [:]) { a, _ in a })
        ready.open()
        // Temporary files of chunk writes a killed instance never finished (never served).
        Task.detached(priority: .background) {
            let removed = chunkStore.sweepTemporaryFiles(olderThan: 3600)
            if removed > 0 { logger.notice("removed unfinished chunk writes", metadata: ["files": "\(removed)"]) }
        }
    }
    return app
}

/// Runs `body` with a started pool and migrated schema, for the admin commands.
public func withBrokerStore<R: Sendable>(
    configuration: DatabaseConfiguration, signingKeyFile: String?, chunks: (any ChunkStore)? = nil, logger: Logger,
    _ body: @Sendable (BrokerStore) async throws -> R
) async throws -> R {
    // The pool's run() task starts concurrently with the first query; PostgresNIO warns about
    // that race although the query simply waits. Only the pool's own errors are worth showing here.
    var poolLogger = logger
    poolLogger.logLevel = .error
    let client = configuration.makeClient(logger: poolLogger)
    return try await withThrowingTaskGroup(of: R?.self) { group in
        group.addTask { await client.run(); return nil }
        defer { group.cancelAll() }
        try await Migrator.migrate(client: client, schema: configuration.schema, logger: logger)
        let signer = try signingKeyFile.map { try SigningKey.load(path: $0) } ?? SigningKey.generate()
        return try await body(BrokerStore(client: client, signer: signer, tsaTrust: "", chunks: chunks, logger: logger))
    }
}

/// The log's RFC 3161 time-stamping, which also renews time-stamps: `custody.tsaURL` (its
/// answers checked against `tsa.trustFile`), else the built-in TSA (`tsa.certificateFile`).
/// Returns a TimeStampResp (DER) over a SHA-256.
/// - Throws: `ConfigurationError` when neither is configured or a file cannot be read.
public func renewalStamp(_ configuration: BrokerConfiguration) throws -> @Sendable ([UInt8]) async throws -> [UInt8] {
    if let url = configuration.custodyTSAURL {
        let client = TimeStampClient(url: url, trust: try readFile(configuration.tsaTrustFile, key: "tsa.trustFile"))
        return { sha256 in try await client.timeStamp(sha256: sha256).response }
    }
    guard let cert = configuration.tsaCertificateFile, let key = configuration.tsaKeyFile else {
        throw ConfigurationError(key: "custody.tsaURL", reason: "checkpoints need a TSA: set custody.tsaURL, or tsa.certificateFile and tsa.keyFile")
    }
    return CheckpointSigner.stamping(with: TimeStamp.Authority(
        certificate: try readFile(cert, key: "tsa.certificateFile"), key: try readFile(key, key: "tsa.keyFile"),
        chain: try configuration.tsaChainFile.map { try readFile($0, key: "tsa.chainFile") } ?? "", policy: configuration.tsaPolicy))
}

func readFile(_ path: String, key: String) throws -> String {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw ConfigurationError(key: key, reason: "cannot read \(path)")
    }
    return text
}
