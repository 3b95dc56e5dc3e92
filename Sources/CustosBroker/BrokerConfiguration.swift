import Configuration
import CustosCriteria
import CustosCustody
import CustosETSI
import CustosKafka
import CustosRuntime
import Foundation

/// Every setting of `custos-broker`. Config-file keys are shown; each also reads from the
/// environment as `CUSTOS_` + the key in upper snake case (`http.port` is `CUSTOS_HTTP_PORT`).
public struct BrokerConfiguration: Sendable {
    /// `http.host`: address the HTTP API listens on.
    public var httpHost: String = "127.0.0.1"
    /// `http.port`: port of the HTTP API; 0 picks a free one.
    public var httpPort: Int = 8080
    /// `http.tls.certificateFile`, `http.tls.keyFile`: serve HTTPS with this certificate (and
    /// chain) and key, PEM. Unset: plain HTTP (behind a TLS-terminating proxy, or on loopback).
    public var tlsCertificateFile: String?
    public var tlsKeyFile: String?
    /// `http.tls.clientTrustFile`: with HTTPS, TLS client certificates issued by these CAs are
    /// verified in the handshake; one registered to a user (`users add-certificate`)
    /// authenticates that user (mutual TLS). Clients without one still use bearer tokens.
    public var tlsClientTrustFile: String?
    /// `http.maxBodyBytes`: largest request body accepted.
    public var maxBodyBytes: Int = 1 << 20
    /// `database.*`: see `DatabaseConfiguration`.
    public var database: DatabaseConfiguration
    /// `kafka.*`: brokers, client id and librdkafka pass-through properties.
    public var kafka: KafkaConfiguration
    /// `kafka.groupId`: consumer group shared by all broker instances.
    public var consumerGroup: String = "custos-broker"
    /// `signingKeyFile`: the broker's P-256 private key (PEM), which signs every message it
    /// sends to providers.
    public var signingKeyFile: String
    /// `tsa.trustFile`: CA certificates (PEM) that the time-stamping authorities of providers'
    /// packages must chain to.
    public var tsaTrustFile: String
    /// `storage.directory`: the chunk store, a directory (local, or a filesystem that every
    /// broker instance mounts) where package chunks are kept, content-addressed
    /// (`DirectoryChunkStore`). PostgreSQL keeps only their index.
    public var storageDirectory: String
    /// `storage.keyFile`: the AES-256-GCM key that encrypts chunks at rest, 64 hex digits
    /// (`custos-broker keys storage-key` writes one). Losing it loses every stored package.
    public var storageKeyFile: String
    /// `tsa.certificateFile`, `tsa.keyFile`, `tsa.chainFile`, `tsa.policy`: when set, the broker
    /// also serves RFC 3161 time-stamps at `POST /tsa` with this identity (self-hosted and tests;
    /// an external TSA is a configuration change at the connector).
    public var tsaCertificateFile: String?
    public var tsaKeyFile: String?
    public var tsaChainFile: String?
    public var tsaPolicy: String = "1.3.6.1.4.1.55555.1.1"
    /// `outbox.pollMilliseconds`: how often the outbox relay looks for new rows when idle.
    public var outboxPollInterval: Duration = .milliseconds(100)
    /// `providers.refreshSeconds`: how often the list of registered providers (and so the
    /// topics consumed) is re-read.
    public var providerRefreshInterval: Duration = .seconds(5)
    /// `ingest.concurrency`: provider messages applied at once, each request's in order
    /// (requests and providers in parallel, urgent ones first).
    public var ingestConcurrency: Int = 4
    /// `ingest.urgentConcurrency`: further workers that apply only emergency requests' messages
    /// (from `custos.from.<provider>.urgent`, or of a request the broker knows is an emergency),
    /// so that no bulk delivery delays them.
    public var ingestUrgentConcurrency: Int = 2
    /// `ingest.bufferBytes`: message bytes read and not yet applied, per consumer (the normal
    /// topics', and the urgent return lane's); past this reading waits until half of them are
    /// applied, so memory stays bounded.
    public var ingestBufferBytes: Int = 32 << 20
    /// `custody.origin`: the name of this custody log, the first line of every checkpoint;
    /// witnesses tell logs apart by it.
    public var custodyOrigin: String = "custos.local/custody"
    /// `custody.certificateFile`, `custody.keyFile`, `custody.chainFile`: the log's signing
    /// identity (PEM); checkpoints are CMS-signed with it. Auditors trust its CA.
    public var custodyCertificateFile: String
    public var custodyKeyFile: String
    public var custodyChainFile: String?
    /// `custody.noteKeyFile`: the log's C2SP signed-note key, in the
    /// `PRIVATE+KEY+<origin>+<hex id>+<base64>` encoding (`custos-broker custody note-key
    /// generate`); unset, it is derived from `custody.keyFile` (`CheckpointSigner.derivedNoteSigner`).
    public var custodyNoteKeyFile: String?
    /// `custody.witnesses`: C2SP witnesses the broker pushes every checkpoint to with
    /// tlog-witness `add-checkpoint`, each `"<witness vkey> <submission prefix URL>"`.
    public var custodyWitnesses: [C2SPWitness] = []
    /// `hi1.countryCode` (default VN) and `hi1.identifier` (default custos): this broker's
    /// `EndpointID` in ETSI TS 103 120 (HI-1) messages, and the country of providers' `CSPID`s.
    public var hi1Endpoint = HI1.Endpoint(countryCode: "VN", uniqueIdentifier: "custos")
    /// `renewal.horizonDays` (default 90) and `renewal.intervalHours` (default 24): every
    /// interval, time-stamps whose TSA (or signer) certificate expires within the horizon are
    /// renewed (`BrokerStore.renewTimeStamps`); `renewal.intervalHours` 0 turns the schedule off
    /// (`custos-broker renew` still works).
    public var renewalHorizonDays = 90
    public var renewalIntervalHours = 24
    /// `custody.tsaURL`: the RFC 3161 TSA that time-stamps checkpoints (its answers must chain
    /// to `tsa.trustFile`). Unset: the built-in TSA (`tsa.certificateFile`), called in process.
    public var custodyTSAURL: String?
    /// `custody.checkpointMilliseconds`: a checkpoint is issued at least this often while there
    /// are new events.
    public var checkpointInterval: Duration = .seconds(1)
    /// `auth.jwt.publicKeyFile`, `auth.jwt.audience`, `auth.jwt.issuer`: accept JWT bearer
    /// tokens signed by this identity provider's key (see `JWTSettings`); unset, only tokens
    /// from `custos-broker users add`.
    public var jwtPublicKeyFile: String?
    public var jwtAudience: String = "custos"
    public var jwtIssuer: String?
    /// `outbox.acknowledgementTimeoutSeconds`, `outbox.emergencyAcknowledgementTimeoutSeconds`,
    /// `outbox.maxResends`: see `ResendSettings`.
    public var resend = ResendSettings()
    /// `packages.missingChunksAfterSeconds`, `packages.emergencyMissingChunksAfterSeconds`,
    /// `packages.maxResendRequests`: see `ChunkResendSettings`.
    public var chunkResend = ChunkResendSettings()
    /// `clocks.*`: see `LegalClock.Settings`.
    public var clocks = LegalClock.Settings()
    /// `clocks.checkMilliseconds`: how often due clocks are looked for (a clock fires within this).
    public var clockCheckInterval: Duration = .seconds(1)
    /// `criteria.maximumExtractionAgeSeconds` (default 86400) and
    /// `criteria.maximumTimeStampDistanceSeconds` (default 3600): for sống (live), how long before
    /// delivery a package's data may have been extracted, and how far from delivery its
    /// time-stamp may be.
    public var criteriaBounds = PackageJudge.Bounds()
    /// `webhooks.*`: see `WebhookSettings` (the secret is read from `webhooks.secretFile` at start).
    public var webhooks = WebhookSettings()
    public var webhookSecretFile: String?
    /// `notifications.*`: e-mail (the SMTP password is read from `notifications.smtp.passwordFile` at start).
    public var email = EmailSettings()
    public var smtpPasswordFile: String?
    public var smtpCAFile: String?
    /// `portal.enabled` and `portal.timeZone`: see `PortalSettings`.
    public var portal = PortalSettings()
    /// `portal.secureCookies`: cookies carry `Secure`; default: when the broker serves HTTPS.
    /// Set it to true when TLS ends at a proxy in front of the broker.
    public var portalSecureCookies: Bool?

    public init(reader: ConfigReader) throws {
        database = try DatabaseConfiguration(reader: reader)
        kafka = try reader.kafkaConfiguration(clientId: "custos-broker")
        signingKeyFile = try reader.require("signingKeyFile")
        tsaTrustFile = try reader.require("tsa.trustFile")
        storageDirectory = try reader.require("storage.directory")
        storageKeyFile = try reader.require("storage.keyFile")
        tsaCertificateFile = reader.string(forKey: "tsa.certificateFile")
        tsaKeyFile = reader.string(forKey: "tsa.keyFile")
        tsaChainFile = reader.string(forKey: "tsa.chainFile")
        tsaPolicy = reader.string(forKey: "tsa.policy", default: tsaPolicy)
        guard (tsaCertificateFile == nil) == (tsaKeyFile == nil) else {
            throw ConfigurationError(key: "tsa.certificateFile", reason: "tsa.certificateFile and tsa.keyFile go together")
        }
        httpHost = reader.string(forKey: "http.host", default: httpHost)
        httpPort = reader.int(forKey: "http.port", default: httpPort)
        maxBodyBytes = reader.int(forKey: "http.maxBodyBytes", default: maxBodyBytes)
        tlsCertificateFile = reader.string(forKey: "http.tls.certificateFile")
        tlsKeyFile = reader.string(forKey: "http.tls.keyFile")
        tlsClientTrustFile = reader.string(forKey: "http.tls.clientTrustFile")
        guard (tlsCertificateFile == nil) == (tlsKeyFile == nil) else {
            throw ConfigurationError(key: "http.tls.certificateFile", reason: "http.tls.certificateFile and http.tls.keyFile go together")
        }
        guard tlsClientTrustFile == nil || tlsCertificateFile != nil else {
            throw ConfigurationError(key: "http.tls.clientTrustFile", reason: "client certificates need HTTPS: set http.tls.certificateFile and http.tls.keyFile")
        }
        consumerGroup = reader.string(forKey: "kafka.groupId", default: consumerGroup)
        outboxPollInterval = .milliseconds(reader.int(forKey: "outbox.pollMilliseconds", default: 100))
        providerRefreshInterval = .seconds(reader.int(forKey: "providers.refreshSeconds", default: 5))
        ingestConcurrency = reader.int(forKey: "ingest.concurrency", default: ingestConcurrency)
        guard (1...256).contains(ingestConcurrency) else { throw ConfigurationError(key: "ingest.concurrency", reason: "must be 1 to 256") }
        ingestUrgentConcurrency = reader.int(forKey: "ingest.urgentConcurrency", default: ingestUrgentConcurrency)
        guard (0...64).contains(ingestUrgentConcurrency) else { throw ConfigurationError(key: "ingest.urgentConcurrency", reason: "must be 0 to 64") }
        ingestBufferBytes = reader.int(forKey: "ingest.bufferBytes", default: ingestBufferBytes)
        guard ingestBufferBytes >= 4 << 20 else {
            throw ConfigurationError(key: "ingest.bufferBytes", reason: "must be at least 4 MiB (eight chunks)")
        }
        custodyOrigin = reader.string(forKey: "custody.origin", default: custodyOrigin)
        custodyCertificateFile = try reader.require("custody.certificateFile")
        custodyKeyFile = try reader.require("custody.keyFile")
        custodyChainFile = reader.string(forKey: "custody.chainFile")
        custodyTSAURL = reader.string(forKey: "custody.tsaURL")
        custodyNoteKeyFile = reader.string(forKey: "custody.noteKeyFile")
        renewalHorizonDays = reader.int(forKey: "renewal.horizonDays", default: renewalHorizonDays)
        renewalIntervalHours = reader.int(forKey: "renewal.intervalHours", default: renewalIntervalHours)
        guard (1...3650).contains(renewalHorizonDays) else { throw ConfigurationError(key: "renewal.horizonDays", reason: "must be 1 to 3650") }
        guard (0...8760).contains(renewalIntervalHours) else { throw ConfigurationError(key: "renewal.intervalHours", reason: "must be 0 to 8760") }
        hi1Endpoint = HI1.Endpoint(countryCode: reader.string(forKey: "hi1.countryCode", default: hi1Endpoint.countryCode),
                                   uniqueIdentifier: reader.string(forKey: "hi1.identifier", default: hi1Endpoint.uniqueIdentifier))
        guard HI1.Endpoint.isValidCountryCode(hi1Endpoint.countryCode) else {
            throw ConfigurationError(key: "hi1.countryCode", reason: "must be an ISO 3166-1 alpha-2 code in capitals, e.g. VN")
        }
        guard (1...255).contains(hi1Endpoint.uniqueIdentifier.count), !hi1Endpoint.uniqueIdentifier.contains(where: \.isWhitespace) else {
            throw ConfigurationError(key: "hi1.identifier", reason: "must be 1 to 255 characters without spaces")
        }
        custodyWitnesses = try reader.stringArray(forKey: "custody.witnesses", default: []).map { entry in
            do { return try C2SPWitness(entry) } catch {
                throw ConfigurationError(key: "custody.witnesses", reason: "each is \"<witness vkey> <URL>\": \(error)")
            }
        }
        let checkpointMilliseconds = reader.int(forKey: "custody.checkpointMilliseconds", default: 1000)
        guard (10...3_600_000).contains(checkpointMilliseconds) else {
            throw ConfigurationError(key: "custody.checkpointMilliseconds", reason: "must be 10 to 3600000")
        }
        checkpointInterval = .milliseconds(checkpointMilliseconds)
        jwtPublicKeyFile = reader.string(forKey: "auth.jwt.publicKeyFile")
        jwtAudience = reader.string(forKey: "auth.jwt.audience", default: jwtAudience)
        jwtIssuer = reader.string(forKey: "auth.jwt.issuer")
        func seconds(_ key: String, _ value: Duration) throws -> Duration { try reader.seconds(key, default: value) }
        clocks.acknowledgement = try seconds("clocks.acknowledgementSeconds", clocks.acknowledgement)
        clocks.delivery = try seconds("clocks.deliverySeconds", clocks.delivery)
        clocks.escalateAfter = try seconds("clocks.escalateAfterSeconds", clocks.escalateAfter)
        clocks.expireAfter = try seconds("clocks.expireAfterSeconds", clocks.expireAfter)
        clocks.emergencyAcknowledgement = try seconds("clocks.emergencyAcknowledgementSeconds", clocks.emergencyAcknowledgement)
        clocks.emergencyDelivery = try seconds("clocks.emergencyDeliverySeconds", clocks.emergencyDelivery)
        clocks.emergencyEscalateAfter = try seconds("clocks.emergencyEscalateAfterSeconds", clocks.emergencyEscalateAfter)
        clocks.review = try seconds("clocks.reviewSeconds", clocks.review)
        clocks.preservation = try seconds("clocks.preservationSeconds", clocks.preservation)
        clocks.preservationExtension = try seconds("clocks.preservationExtensionSeconds", clocks.preservationExtension)
        clockCheckInterval = .milliseconds(max(10, reader.int(forKey: "clocks.checkMilliseconds", default: 1000)))
        resend.after = try seconds("outbox.acknowledgementTimeoutSeconds", resend.after)
        resend.emergencyAfter = try seconds("outbox.emergencyAcknowledgementTimeoutSeconds", resend.emergencyAfter)
        resend.maxResends = reader.int(forKey: "outbox.maxResends", default: resend.maxResends)
        guard (0...100).contains(resend.maxResends) else { throw ConfigurationError(key: "outbox.maxResends", reason: "must be 0 to 100") }
        chunkResend.after = try seconds("packages.missingChunksAfterSeconds", chunkResend.after)
        chunkResend.emergencyAfter = try seconds("packages.emergencyMissingChunksAfterSeconds", chunkResend.emergencyAfter)
        chunkResend.maxRequests = reader.int(forKey: "packages.maxResendRequests", default: chunkResend.maxRequests)
        guard (0...100).contains(chunkResend.maxRequests) else { throw ConfigurationError(key: "packages.maxResendRequests", reason: "must be 0 to 100") }
        criteriaBounds.maximumExtractionAge = try seconds("criteria.maximumExtractionAgeSeconds", criteriaBounds.maximumExtractionAge)
        criteriaBounds.maximumTimeStampDistance = try seconds("criteria.maximumTimeStampDistanceSeconds", criteriaBounds.maximumTimeStampDistance)
        webhooks.urls = reader.stringArray(forKey: "webhooks.urls", default: [])
        for url in webhooks.urls {
            guard let c = URLComponents(string: url), c.scheme == "http" || c.scheme == "https", c.host?.isEmpty == false else {
                throw ConfigurationError(key: "webhooks.urls", reason: "every entry must be an http or https URL")
            }
        }
        webhookSecretFile = reader.string(forKey: "webhooks.secretFile")
        guard webhooks.urls.isEmpty || webhookSecretFile != nil else {
            throw ConfigurationError(key: "webhooks.secretFile", reason: "is required with webhooks.urls: every delivery is signed with it")
        }
        let events = reader.stringArray(forKey: "webhooks.events", default: WebhookSettings.Event.allCases.map(\.rawValue))
        webhooks.events = Set(try events.map { name in
            guard let e = WebhookSettings.Event(rawValue: name) else {
                throw ConfigurationError(key: "webhooks.events", reason: "must be among \(WebhookSettings.Event.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return e
        })
        webhooks.timeout = try seconds("webhooks.timeoutSeconds", webhooks.timeout)
        webhooks.maxAttempts = reader.int(forKey: "webhooks.maxAttempts", default: webhooks.maxAttempts)
        guard (1...100).contains(webhooks.maxAttempts) else { throw ConfigurationError(key: "webhooks.maxAttempts", reason: "must be 1 to 100") }
        if let host = reader.string(forKey: "notifications.smtp.host") {
            guard let from = reader.string(forKey: "notifications.smtp.from"), from.contains("@"), !from.contains(where: { "<> \r\n".contains($0) }) else {
                throw ConfigurationError(key: "notifications.smtp.from", reason: "is required with notifications.smtp.host: the sender's address")
            }
            var smtp = SMTPSettings(host: host, port: reader.int(forKey: "notifications.smtp.port", default: 587), from: from)
            guard (1...65535).contains(smtp.port) else { throw ConfigurationError(key: "notifications.smtp.port", reason: "must be 1 to 65535") }
            let security = reader.string(forKey: "notifications.smtp.security", default: SMTPSettings.Security.startTLS.rawValue)
            guard let s = SMTPSettings.Security(rawValue: security) else {
                throw ConfigurationError(key: "notifications.smtp.security", reason: "must be starttls or none")
            }
            guard s == .startTLS || ["127.0.0.1", "::1", "localhost"].contains(host) else {
                throw ConfigurationError(key: "notifications.smtp.security", reason: "none (no TLS) is allowed only for a relay on loopback")
            }
            smtp.security = s
            smtp.username = reader.string(forKey: "notifications.smtp.username")
            smtpPasswordFile = reader.string(forKey: "notifications.smtp.passwordFile")
            guard (smtp.username == nil) == (smtpPasswordFile == nil) else {
                throw ConfigurationError(key: "notifications.smtp.passwordFile", reason: "username and passwordFile go together")
            }
            smtpCAFile = reader.string(forKey: "notifications.smtp.caFile")
            smtp.timeout = try seconds("notifications.smtp.timeoutSeconds", smtp.timeout)
            email.smtp = smtp
        }
        if let link = reader.string(forKey: "notifications.link") {
            guard let c = URLComponents(string: link), c.scheme == "http" || c.scheme == "https", c.host?.isEmpty == false else {
                throw ConfigurationError(key: "notifications.link", reason: "must be an http or https URL")
            }
            email.link = link.hasSuffix("/") ? String(link.dropLast()) : link
        }
        portal.enabled = reader.bool(forKey: "portal.enabled", default: true)
        portalSecureCookies = reader.bool(forKey: "portal.secureCookies")
        portal.timeZone = reader.string(forKey: "portal.timeZone", default: portal.timeZone)
        guard TimeZone(identifier: portal.timeZone) != nil else {
            throw ConfigurationError(key: "portal.timeZone", reason: "must be an IANA time zone, e.g. Asia/Ho_Chi_Minh")
        }
        guard Checkpoint.isValidOrigin(custodyOrigin) else {
            throw ConfigurationError(key: "custody.origin", reason: "must be 1 to 200 printable ASCII characters without spaces")
        }
        guard custodyTSAURL != nil || tsaCertificateFile != nil else {
            throw ConfigurationError(key: "custody.tsaURL", reason: "checkpoints need a TSA: set custody.tsaURL, or tsa.certificateFile and tsa.keyFile for the built-in one")
        }
        guard (0...65535).contains(httpPort) else { throw ConfigurationError(key: "http.port", reason: "must be 0 to 65535") }
    }
}

public struct DatabaseConfiguration: Sendable {
    /// `database.url`: `postgres://user:password@host:port/database`.
    public var host: String
    public var port: Int
    public var username: String
    public var password: String?
    public var database: String
    /// `database.schema`: the schema Custos keeps its tables in; tests use one each.
    public var schema: String = "custos"
    /// `database.maxConnections`: size of the connection pool.
    public var maxConnections: Int = 20
    /// `database.tls`: `disable` or `require`.
    public var requireTLS: Bool = false

    public init(url: String, schema: String = "custos") throws {
        let u = try PostgresURL(url, key: "database.url")
        (host, port, username, password, database) = (u.host, u.port, u.username, u.password, u.database)
        self.schema = schema
        try Self.checkSchemaName(schema)
    }

    init(reader: ConfigReader) throws {
        try self.init(url: reader.require("database.url"), schema: reader.string(forKey: "database.schema", default: "custos"))
        maxConnections = reader.int(forKey: "database.maxConnections", default: maxConnections)
        requireTLS = reader.string(forKey: "database.tls", default: "disable") == "require"
    }

    static func checkSchemaName(_ s: String) throws {
        let ok = !s.isEmpty && s.count <= 63 && s.allSatisfy { $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "_") }
            && !(s.first!.isNumber)
        guard ok else { throw ConfigurationError(key: "database.schema", reason: "must be lower-case letters, digits and _") }
    }
}
