import ArgumentParser
import Metrics
import Prometheus
import CustosCanonicalJSON
import CustosBroker
import CustosCommandLine
import CustosCustody
import CustosEvidence
import CustosModel
import CustosRuntime
import Foundation
import Hummingbird
import Logging
import PostgresNIO

struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "JSON config file. Every key can also come from the environment as CUSTOS_<KEY> (e.g. CUSTOS_DATABASE_URL), which wins over the file.")
    var config: String?
}

@main
struct BrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custos-broker",
        abstract: "Custos broker: HTTP API, workflow, Kafka outbox relay and response ingestion, package verification.",
        subcommands: [Serve.self, Migrate.self, Agencies.self, Users.self, Providers.self, Witnesses.self, Audit.self, KeysCommand.self, StorageKey.self,
                      PKICommand.self, NoteKey.self, Renew.self],
        defaultSubcommand: Serve.self)
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the broker until SIGINT or SIGTERM. Applies pending migrations first.",
        discussion: """
            Settings: config file key (environment variable); the environment wins over the file.
              database.url (CUSTOS_DATABASE_URL)
                  postgres://user:password@host:port/db (required)
              database.schema (CUSTOS_DATABASE_SCHEMA)
                  schema for Custos' tables (default custos)
              database.tls (CUSTOS_DATABASE_TLS)
                  require or disable (default disable)
              database.maxConnections (CUSTOS_DATABASE_MAX_CONNECTIONS)
                  pool size (default 20)
              kafka.brokers (CUSTOS_KAFKA_BROKERS)
                  bootstrap servers (required)
              kafka.properties (CUSTOS_KAFKA_PROPERTIES)
                  librdkafka key=value items (comma-separated in the environment), e.g. security.protocol=SASL_SSL
              kafka.groupId (CUSTOS_KAFKA_GROUP_ID)
                  consumer group of all broker instances (default custos-broker)
              kafka.groupStallSeconds (CUSTOS_KAFKA_GROUP_STALL_SECONDS)
                  a consumer whose group membership is not steady this long is replaced (default 360; 0: never)
              kafka.clientId (CUSTOS_KAFKA_CLIENT_ID)
                  (default custos-broker)
              signingKeyFile (CUSTOS_SIGNING_KEY_FILE)
                  the broker's P-256 private key, PEM (required)
              tsa.trustFile (CUSTOS_TSA_TRUST_FILE)
                  CA certificates, PEM, that providers' time-stamping authorities must chain to (required)
              tsa.certificateFile, tsa.keyFile, tsa.chainFile, tsa.policy
                  when set, the broker also serves RFC 3161 time-stamps at POST /tsa with this identity
              custody.certificateFile, custody.keyFile (CUSTOS_CUSTODY_CERTIFICATE_FILE, CUSTOS_CUSTODY_KEY_FILE)
                  the custody log's signing certificate and key, PEM; checkpoints are CMS-signed with them (required)
              custody.chainFile (CUSTOS_CUSTODY_CHAIN_FILE)
                  intermediate certificates to include in checkpoint signatures
              custody.origin (CUSTOS_CUSTODY_ORIGIN)
                  the log's name, first line of each checkpoint (default custos.local/custody)
              custody.tsaURL (CUSTOS_CUSTODY_TSA_URL)
                  RFC 3161 TSA for checkpoints (answers must chain to tsa.trustFile); default: the built-in TSA
              custody.checkpointMilliseconds (CUSTOS_CUSTODY_CHECKPOINT_MILLISECONDS)
                  a new checkpoint at least this often while there are new events (default 1000)
              custody.noteKeyFile (CUSTOS_CUSTODY_NOTE_KEY_FILE)
                  the log's C2SP signed-note key (custos-broker note-key generate); default: derived from custody.keyFile
              hi1.countryCode, hi1.identifier (CUSTOS_HI1_COUNTRY_CODE, CUSTOS_HI1_IDENTIFIER)
                  this broker's EndpointID in ETSI TS 103 120 (HI-1) messages (default VN, custos)
              renewal.horizonDays, renewal.intervalHours (CUSTOS_RENEWAL_HORIZON_DAYS, CUSTOS_RENEWAL_INTERVAL_HOURS)
                  renew time-stamps whose TSA or signer certificate expires within the horizon (default 90 days), every interval (default 24 h; 0: off)
              custody.witnesses (CUSTOS_CUSTODY_WITNESSES)
                  C2SP witnesses to push each checkpoint to (tlog-witness add-checkpoint), each "<witness vkey> <URL>"
              auth.jwt.publicKeyFile (CUSTOS_AUTH_JWT_PUBLIC_KEY_FILE)
                  accept JWT bearer tokens (claims sub, agency, roles, aud, exp) signed by this public key (P-256: ES256, RSA: PS256)
              auth.jwt.audience, auth.jwt.issuer
                  the aud a token must name (default custos), and the iss it must carry (when set)
              clocks.acknowledgementSeconds, clocks.deliverySeconds (CUSTOS_CLOCKS_ACKNOWLEDGEMENT_SECONDS, ...)
                  legal clocks from approval (defaults 86400 and 864000: 24 hours, 10 days)
              clocks.escalateAfterSeconds, clocks.expireAfterSeconds
                  a late clock escalates after (default 3600) and a request expires after its delivery deadline (default 864000)
              clocks.emergencyAcknowledgementSeconds, clocks.emergencyDeliverySeconds, clocks.emergencyEscalateAfterSeconds
                  an emergency's clocks (defaults 1800, 28800 and 900: 30 minutes, 8 hours, 15 minutes)
              clocks.reviewSeconds (CUSTOS_CLOCKS_REVIEW_SECONDS)
                  from an emergency's approval to its review deadline; unconfirmed by then, its packages are sealed (default 172800: 48 hours)
              clocks.preservationSeconds, clocks.preservationExtensionSeconds
                  how long a preservation order freezes the data, and its one extension (defaults 5184000 and 2592000: 60 and 30 days)
              clocks.checkMilliseconds (CUSTOS_CLOCKS_CHECK_MILLISECONDS)
                  how often due clocks are looked for (default 1000)
              criteria.maximumExtractionAgeSeconds, criteria.maximumTimeStampDistanceSeconds
                  for sống (live): how long before delivery a package's data may have been extracted (default 86400),
                  and how far from delivery its time-stamp may be (default 3600)
              webhooks.urls (CUSTOS_WEBHOOKS_URLS)
                  http(s) endpoints told when a legal clock runs late, escalates or expires, an emergency lapses,
                  or a request or emergency is submitted, a review falls due, a provider asks or a package arrives
                  (comma-separated in the environment; default none)
              webhooks.secretFile (CUSTOS_WEBHOOKS_SECRET_FILE)
                  shared secret (at least 16 characters) signing every delivery: header Custos-Signature t=UNIX,v1=HMAC-SHA256("t.body")
              webhooks.events (CUSTOS_WEBHOOKS_EVENTS)
                  clock.late, clock.escalated, clock.expired, emergency.lapsed, request.submitted, emergency.submitted,
                  review.due, question.asked, package.delivered (default all)
              webhooks.timeoutSeconds, webhooks.maxAttempts
                  one delivery's time-out (default 10), and attempts before one is given up (default 12; retries back off 5 s to 1 h;
                  e-mails too)
              notifications.smtp.host, notifications.smtp.port (CUSTOS_NOTIFICATIONS_SMTP_HOST, …_PORT)
                  the SMTP server e-mails go to (default none: no e-mail; port default 587)
              notifications.smtp.from
                  the sender's address (required with a host)
              notifications.smtp.security
                  starttls (default: STARTTLS required) or none (only for a relay on loopback)
              notifications.smtp.username, notifications.smtp.passwordFile
                  AUTH PLAIN, over TLS only
              notifications.smtp.caFile, notifications.smtp.timeoutSeconds
                  CA certificates (PEM) the server's certificate chains to when not a public one; one delivery's time-out (default 30)
              notifications.link
                  the address e-mails link to as <link>/requests/<id> (the portal's); default: they name the CLI command
              portal.enabled, portal.timeZone, portal.secureCookies
                  serve the web portal under /portal/ (default true); the time zone it shows times in until a person
                  picks another (default Asia/Ho_Chi_Minh; UTC is shown beside it); whether its cookies carry Secure
                  (default: with HTTPS; set true when TLS ends at a proxy). People sign in with the password and
                  TOTP second factor of `users enrol`, or a certificate of `users add-certificate` (with HTTPS)
              http.host, http.port (CUSTOS_HTTP_HOST, CUSTOS_HTTP_PORT)
                  listen address (default 127.0.0.1:8080; port 0 picks one)
              http.tls.certificateFile, http.tls.keyFile (CUSTOS_HTTP_TLS_CERTIFICATE_FILE, CUSTOS_HTTP_TLS_KEY_FILE)
                  serve HTTPS with this certificate (chain) and key, PEM (default: plain HTTP)
              http.tls.clientTrustFile (CUSTOS_HTTP_TLS_CLIENT_TRUST_FILE)
                  with HTTPS: accept TLS client certificates issued by these CAs (PEM); a certificate registered with
                  `users add-certificate` authenticates its user without a token (mutual TLS)
              http.maxBodyBytes (CUSTOS_HTTP_MAX_BODY_BYTES)
                  largest request body (default 1048576)
              outbox.pollMilliseconds (CUSTOS_OUTBOX_POLL_MILLISECONDS)
                  idle outbox poll interval (default 100); urgent messages leave at once
              outbox.acknowledgementTimeoutSeconds, outbox.emergencyAcknowledgementTimeoutSeconds, outbox.maxResends
                  a request message its provider has not acknowledged within this (default 300; 30 for an emergency) is
                  sent again, same id and bytes, after twice as long each time, at most maxResends times (default 10)
              packages.missingChunksAfterSeconds, packages.emergencyMissingChunksAfterSeconds, packages.maxResendRequests
                  a package whose manifest is in but which lacks chunks, quiet for this long (default 60; 10 for an
                  emergency), has exactly those asked for with a signed resend message, after twice as long each
                  time, at most maxResendRequests times (default 10)
              providers.refreshSeconds (CUSTOS_PROVIDERS_REFRESH_SECONDS)
                  how often newly registered providers are picked up (default 5)
              ingest.concurrency, ingest.urgentConcurrency (CUSTOS_INGEST_CONCURRENCY, CUSTOS_INGEST_URGENT_CONCURRENCY)
                  workers applying provider messages, each request's in order (default 4), and more
                  for emergencies' messages alone, from custos.from.<provider>.urgent (default 2)
              ingest.bufferBytes (CUSTOS_INGEST_BUFFER_BYTES)
                  bytes read and not yet applied, per consumer, before reading waits (default 33554432)
              log.level (CUSTOS_LOG_LEVEL)
                  trace, debug, info, notice, warning, error (default info)
            GET /metrics (Prometheus) and GET /health (database, Kafka and the custody log's checkpoints; 503 when
            one fails) answer without authentication: expose them to the operators' network only.
            On start it prints one line, "custos-broker listening on http://HOST:PORT".
            """)
    @OptionGroup var options: ConfigOptions

    func run() async throws {
        let reader = try await ConfigSource.reader(configFile: options.config)
        _ = LogSetup.bootstrap(level: reader.string(forKey: "log.level"))
        let logger = Logger(label: "custos-broker")
        let configuration = try BrokerConfiguration(reader: reader)
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let app = try buildApplication(configuration: configuration, metrics: registry, logger: logger) { address in
            // One line on stdout that scripts can wait for.
            print("custos-broker listening on \(address)")
            fflush(nil)
        }
        try await app.runService()
    }
}

struct Migrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Apply pending database migrations and exit (harmless to repeat).")
    @OptionGroup var options: ConfigOptions

    func run() async throws {
        try await withAdminStore(options) { _ in }
        print("migrations applied")
    }
}

struct Users: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage users.", subcommands: [Add.self, SetRole.self, AddCertificate.self, Enrol.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a user and print its bearer token (shown once; only its hash is stored). Recorded in the custody log.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "User name: letters, digits, '.', '_' or '-'.") var name: String
        @Option(help: "Role: \(roleNames).") var role: String
        @Option(help: "The agency the user belongs to; it sees only that agency's cases.") var agency: String = AuthenticatedUser.defaultAgency

        func run() async throws {
            guard let role = Role(rawValue: role), role != .witness else {
                throw ValidationError("--role must be \(roleNames) (witnesses are added with custos-broker witnesses add)")
            }
            let token = try await withAdminStore(options) { store in
                try await store.addUser(name: name, role: role, agency: agency, by: adminActor).token
            }
            print(token)
        }
    }

    struct SetRole: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Give a user another role. Recorded in the custody log.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "User name.") var name: String
        @Option(help: "Role: \(roleNames).") var role: String

        func run() async throws {
            guard let role = Role(rawValue: role), role != .witness else { throw ValidationError("--role must be \(roleNames)") }
            try await withAdminStore(options) { store in try await store.setRole(name: name, role: role, by: adminActor) }
            print("\(name) is now \(role.rawValue)")
        }
    }
}

extension Users {
    struct AddCertificate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a TLS client certificate for a user (mutual TLS): presented to the broker, it authenticates them without a token.",
            discussion: "The broker must serve TLS with http.tls.clientTrustFile naming the CA that issued it. Recorded in the custody log.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "User name.") var name: String
        @Option(help: "The client certificate, PEM.") var certificate: String

        func run() async throws {
            guard let pem = try? String(contentsOfFile: certificate, encoding: .utf8) else { throw ValidationError("cannot read \(certificate)") }
            try await withAdminStore(options) { store in try await store.addUserCertificate(name: name, certificate: pem, by: adminActor) }
            print("certificate registered for \(name)")
        }
    }
}

extension Users {
    struct Enrol: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give a user a portal password and a new TOTP second factor, and print the otpauth:// URI for their authenticator app (shown once).",
            discussion: """
                The password is read from standard input (one line, 12 to 72 bytes), never from the command line. Enrolling \
                again replaces both and ends the user's portal sessions. The portal asks for the password and a 6-digit code (RFC 6238, 30 s steps) at sign-in, \
                and the code again before approving, rejecting, reviewing or exporting when the last one is older than 5 \
                minutes. Recorded in the custody log as admin.user-enrolled.
                """)
        @OptionGroup var options: ConfigOptions
        @Argument(help: "User name.") var name: String

        func run() async throws {
            guard let line = readLine(strippingNewline: true), !line.isEmpty else { throw ValidationError("give the password on standard input") }
            let secret = try await withAdminStore(options) { store in try await store.enrol(name: name, password: line, by: adminActor) }
            print(PortalSignIn.authenticatorURI(secret: secret, user: name))
        }
    }
}

struct Providers: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage providers.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a provider (or replace its certificates). The broker starts consuming custos.from.<id> within seconds.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "Provider id: lower-case letters, digits and '-'.") var id: String
        @Option(help: "The provider's signing certificate, PEM: its common name is the provider id; its P-256 key signs the provider's messages.")
        var certificate: String
        @Option(help: "The CA certificate, PEM, that the provider's package signatures must chain to.") var caCertificate: String

        func run() async throws {
            guard ProviderID.isValid(id) else { throw ValidationError("provider id must match \(ProviderID.pattern)") }
            let cert = try String(contentsOfFile: certificate, encoding: .utf8)
            let ca = try String(contentsOfFile: caCertificate, encoding: .utf8)
            try await withAdminStore(options) { store in
                try await store.registerProvider(id: id, certificate: cert, caCertificate: ca, by: adminActor)
            }
            print("provider \(id) registered")
        }
    }
}

struct Agencies: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage agencies: each user belongs to one and sees only its cases.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Add an agency (the agency \"\(AuthenticatedUser.defaultAgency)\" always exists). Recorded in the custody log.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "Agency id: lower-case letters, digits and '-'.") var id: String
        @Option(help: "Its name.") var name: String

        func run() async throws {
            try await withAdminStore(options) { store in try await store.addAgency(id: id, name: name, by: adminActor) }
            print("agency \(id) added")
        }
    }
}

struct Witnesses: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Manage outside witnesses of the custody log.", subcommands: [Add.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a witness (e.g. the procuracy) and print its bearer token: it may read checkpoints and proofs and co-sign checkpoints.",
            discussion: "Its co-signatures must be CMS signatures by the certificate given here (custos witness cosign makes them). Recorded in the custody log.")
        @OptionGroup var options: ConfigOptions
        @Argument(help: "Witness name: letters, digits, '.', '_' or '-'.") var name: String
        @Option(help: "The witness's signing certificate, PEM.") var certificate: String

        func run() async throws {
            let pem = try String(contentsOfFile: certificate, encoding: .utf8)
            let token = try await withAdminStore(options) { store in
                try await store.registerWitness(name: name, certificate: pem, by: adminActor)
            }
            print(token)
        }
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Recompute the custody log's Merkle tree from the stored events and report the first divergence from any signed checkpoint; check every stored chunk against its index.",
        discussion: """
            Every checkpoint the log signed is checked, and so is each checkpoint given with --checkpoint (for instance the \
            one a witness last co-signed: custos witness cosign keeps it in its state file), which catches a log whose \
            newest events and checkpoints were deleted. Reads custody.certificateFile from the configuration to check \
            checkpoint signatures. Then every package chunk the index lists is read back from the chunk store \
            (storage.directory, decrypted with storage.keyFile) and checked against its SHA-256 and size; each one missing \
            or corrupted is named. Exit status: 0 consistent, 1 divergence or other problems found.
            """)
    @OptionGroup var options: ConfigOptions
    @Option(name: .customLong("checkpoint"), help: "A checkpoint held elsewhere: JSON as custos custody checkpoint --json prints it (repeatable).")
    var checkpoints: [String] = []
    @Flag(help: "Print the report as JSON.") var json = false

    func run() async throws {
        let reader = try await ConfigSource.reader(configFile: options.config)
        let certificatePath = try reader.require("custody.certificateFile")
        guard let certificate = try? String(contentsOfFile: certificatePath, encoding: .utf8) else {
            throw ValidationError("cannot read custody.certificateFile \(certificatePath)")
        }
        let held = try checkpoints.map { path -> CustodyAudit.SignedCheckpoint in
            guard let data = FileManager.default.contents(atPath: path),
                  let view = try? JSONDecoder().decode(API.CheckpointView.self, from: data),
                  let signature = Data(base64Encoded: view.signature)
            else { throw ValidationError("\(path) is not a checkpoint (JSON as custos custody checkpoint --json prints)") }
            return .init(text: Array(view.text.utf8), signature: Array(signature), source: "witness-held (\(path))")
        }
        let chunkStore = try DirectoryChunkStore(root: URL(fileURLWithPath: try reader.require("storage.directory")),
                                                 key: try DirectoryChunkStore.loadKey(path: try reader.require("storage.keyFile")))
        let (report, chunks) = try await withAdminStore(options, chunks: chunkStore) { store in
            let result = (try await store.audit(logCertificate: certificate, witnessCheckpoints: held), try await store.auditChunks())
            // What the portal shows auditors as the audit's last result.
            try await store.recordAudit(result.0, chunks: result.1)
            return result
        }
        if json {
            print(CanonicalJSON.pretty(.object(["custody": try CanonicalJSON.tree(report), "chunks": try CanonicalJSON.tree(chunks)])))
        } else {
            print("custody audit: \(report.ok ? "CONSISTENT" : "DIVERGENT")")
            print("  \(report.events) events, \(report.checkpoints) signed checkpoints, \(report.witnessCheckpoints) held elsewhere")
            if let d = report.firstDivergence {
                print("  first divergence: checkpoint \(d.checkpointSize) (\(d.source)): \(d.reason)")
                print("    signed root     \(d.signedRoot)")
                print("    recomputed root \(d.recomputedRoot ?? "(the log is shorter)")")
                if let e = d.firstChangedEvent { print("    first event whose hash differs from the one integrated: \(e)") }
            }
            for p in report.problems { print("  - \(p)") }
            print("chunk store: \(chunks.problems.isEmpty ? "CONSISTENT" : "DAMAGED"): \(chunks.chunks) chunks, \(chunks.bytes) bytes checked")
            for p in chunks.problems { print("  - \(p)") }
        }
        if !report.ok || !chunks.problems.isEmpty { throw ExitCode(1) }
    }
}

struct StorageKey: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "storage-key",
        abstract: "Write a new AES-256 key for the chunk store (storage.keyFile): 64 hex digits, mode 0600. Refuses to overwrite a file.",
        discussion: "Every stored chunk is encrypted under this key (AES-256-GCM). Keep a copy apart from the store: without it, no package can be read.")
    @Option(help: "Where to write the key.") var out: String

    func run() throws {
        guard !FileManager.default.fileExists(atPath: out) else { throw ValidationError("\(out) exists; a storage key is never overwritten") }
        guard FileManager.default.createFile(atPath: out, contents: Data(DirectoryChunkStore.newKeyText().utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ValidationError("cannot write \(out)")
        }
        print("wrote \(out)")
    }
}

struct Renew: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Renew time-stamps before their certificates expire: every package's time-stamp and signature, and every checkpoint's (RFC 4998-style).",
        discussion: """
            A chain whose newest time-stamp's TSA certificate (or, never renewed, whose signer's certificate) expires within \
            --horizon-days gets a new RFC 3161 time-stamp over the signed data, its signature and every time-stamp so far, from \
            custody.tsaURL or the built-in TSA. Idempotent: run it again and nothing changes. The broker runs the same on a \
            schedule (renewal.intervalHours). Export bundles carry a package's renewals (renewals.json); custos verify --at \
            checks them.
            """)
    @OptionGroup var options: ConfigOptions
    @Option(help: "Renew what expires within this many days (default: renewal.horizonDays).") var horizonDays: Int?

    func run() async throws {
        let reader = try await ConfigSource.reader(configFile: options.config)
        let configuration = try BrokerConfiguration(reader: reader)
        let stamp = try renewalStamp(configuration)
        let horizon = TimeInterval(horizonDays ?? configuration.renewalHorizonDays) * 86_400
        let report = try await withAdminStore(options) { store in try await store.renewTimeStamps(horizon: horizon, stamp: stamp) }
        print("renewal: \(report.checked) time-stamp chains checked, \(report.renewed) renewed, \(report.blocked) blocked (the TSA's certificate expires too soon)")
        if report.blocked > 0 { throw ExitCode(1) }
    }
}

struct NoteKey: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "note-key",
        abstract: "The custody log's C2SP signed-note key (Ed25519, named after custody.origin): every checkpoint carries its signature.",
        subcommands: [Show.self, Generate.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the log's verifier key (vkey): what a C2SP witness is configured with (custos witness serve --log).")
        @OptionGroup var options: ConfigOptions
        func run() async throws {
            let configuration = try BrokerConfiguration(reader: try await ConfigSource.reader(configFile: options.config))
            let key = try String(contentsOfFile: configuration.custodyKeyFile, encoding: .utf8)
            let signer = try configuration.custodyNoteKeyFile.map { try NoteSigner(skey: try String(contentsOfFile: $0, encoding: .utf8)) }
                ?? CheckpointSigner.derivedNoteSigner(origin: configuration.custodyOrigin, key: key)
            print(signer.verifier.vkey)
        }
    }

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write a new note key for custody.noteKeyFile (mode 0600) and print its vkey. Refuses to overwrite a file.")
        @Option(help: "The log's origin (custody.origin): the key's name.") var origin: String
        @Option(help: "Where to write the private key.") var out: String
        func run() throws {
            let signer = try NoteSigner.generate(name: origin, type: .ed25519)
            do { try signer.writeNewKeyFile(out) } catch let e as NoteError { throw ValidationError(e.description) }
            print(signer.verifier.vkey)
        }
    }
}

let roleNames = Role.allCases.filter { $0 != .witness }.map(\.rawValue).joined(separator: ", ")

/// Who runs an admin command, for the custody log: the operating-system account.
let adminActor = CustodyEvent.Actor(type: .admin, id: ProcessInfo.processInfo.environment["SUDO_USER"] ?? ProcessInfo.processInfo.userName)

/// Runs an admin command against the database. PostgresNIO's errors are generic on purpose
/// (they may sit in logs); an operator at a terminal gets the server's message and SQLSTATE.
func withAdminStore<R: Sendable>(_ options: ConfigOptions, chunks: (any ChunkStore)? = nil, _ body: @Sendable (BrokerStore) async throws -> R) async throws -> R {
    let (db, logger) = try await adminSetup(options)
    do {
        return try await withBrokerStore(configuration: db, signingKeyFile: nil, chunks: chunks, logger: logger, body)
    } catch let error as PSQLError {
        let message = error.serverInfo?[.message] ?? "\(error.code)"
        let state = error.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
        throw AdminError(description: "database: \(message)\(state)")
    } catch let error as BrokerError {
        throw AdminError(description: error.reason)
    }
}

struct AdminError: Error, CustomStringConvertible {
    var description: String
}

func adminSetup(_ options: ConfigOptions) async throws -> (DatabaseConfiguration, Logger) {
    let reader = try await ConfigSource.reader(configFile: options.config)
    _ = LogSetup.bootstrap(level: reader.string(forKey: "log.level") ?? "warning")
    return (try DatabaseConfiguration(url: try reader.require("database.url"), schema: reader.string(forKey: "database.schema", default: "custos")),
            Logger(label: "custos-broker"))
}
