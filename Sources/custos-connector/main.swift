import ArgumentParser
import CustosConnector
import CustosCommandLine
import CustosEvidence
import CustosKafka
import CustosModel
import CustosRuntime
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

@main
struct ConnectorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custos-connector",
        abstract: "Custos provider connector: receives approved requests over Kafka, extracts, packages, signs and streams evidence back.",
        subcommands: [Run.self, Check.self, Status.self, Clarify.self, KeysCommand.self, PKICommand.self],
        defaultSubcommand: Run.self)
}

struct Options: ParsableArguments {
    @Option(name: .long, help: "JSON config file (see deploy/connector.example.json). Keys can also come from CUSTOS_<KEY> environment variables.")
    var config: String?
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run until SIGINT or SIGTERM (running adapters are stopped, their jobs kept and resumed at the next start), resuming unfinished jobs from the state directory first.",
        discussion: """
            Settings: config file key (environment variable); the environment wins over the file.
              providerId (CUSTOS_PROVIDER_ID)
                  this provider's id, as registered at the broker (required)
              kafka.brokers (CUSTOS_KAFKA_BROKERS)
                  bootstrap servers (required)
              kafka.properties (CUSTOS_KAFKA_PROPERTIES)
                  librdkafka key=value items, e.g. sasl.mechanisms=SCRAM-SHA-512
              kafka.groupId (CUSTOS_KAFKA_GROUP_ID)
                  (default custos-connector-<providerId>)
              kafka.groupStallSeconds (CUSTOS_KAFKA_GROUP_STALL_SECONDS)
                  a consumer whose group membership is not steady this long is replaced (default 360; 0: never)
              signingKeyFile (CUSTOS_SIGNING_KEY_FILE)
                  the private key of the provider's signing certificate, PEM (required)
              certificateFile (CUSTOS_CERTIFICATE_FILE)
                  the signing certificate, PEM; its common name is the provider id (required)
              certificateChainFile (CUSTOS_CERTIFICATE_CHAIN_FILE)
                  intermediate CA certificates, PEM, carried in every signature
              tsa.url (CUSTOS_TSA_URL)
                  the RFC 3161 time-stamping authority, e.g. the broker's http://HOST:PORT/tsa (required)
              tsa.trustFile (CUSTOS_TSA_TRUST_FILE)
                  CA certificates, PEM, the TSA must chain to (required)
              brokerPublicKeyFile (CUSTOS_BROKER_PUBLIC_KEY_FILE)
                  the broker's public key, PEM; requests it did not sign are refused (required). Around a
                  key change the file holds both keys: each message is checked with the one it names
              stateDirectory (CUSTOS_STATE_DIRECTORY)
                  durable job state, resumed after a crash (required)
              adapters.<category>.command | .sql | .fileDrop
                  the adapter per category (subscriber, traffic, location, ip_session, financial, kyc_document), one kind each;
                  adapters.default.* serves the categories without their own:
                  command: a program and its arguments (exec; records as JSON lines or CSV on stdout)
                  sql: a query template for the provider's PostgreSQL, with $1 the target's value, $2 and $3 the window's start
                       and end (timestamptz), $4 the target's type, always bound; each row is a record, its time column the
                       record's time
                  fileDrop: true: an export the provider's staff drop into adapters.fileDrop.directory as <request id>.ndjson
                       or <request id>.csv (write it under another name, then rename it)
              adapters.<category>.retentionDays (or adapters.default.retentionDays)
                  how many days the provider keeps this data (1 to 36500); declares the coverage of every result the adapter
                  does not declare itself (CSV, SQL and file-drop exports cannot): the window up to the extraction, from no
                  earlier than the retention horizon. Unset: undeclared coverage, and the package is not admissible
              adapters.sql.databaseURL (CUSTOS_ADAPTERS_SQL_DATABASE_URL)
                  postgres://user:password@host:port/database, for the sql adapters
              adapters.fileDrop.directory, adapters.fileDrop.pollSeconds
                  the drop folder, and how often it is looked at (default 2)
              normalisation.defaultCountryCode
                  the country calling code (digits, e.g. 84) of numbers written without one (0912..., 912..., 84912...),
                  read by libphonenumber into E.164; identifiers are put in canonical form and times in UTC before records
                  are kept, and a record that cannot be read is counted (its line number logged) and not sent
              adapters.preservation.command
                  the program that freezes the data of a preservation order; it gets {"action": "preserve" | "extend" | "release",
                  "request": ..., "until": ...} on stdin, and exit status 0 means done (unset: preservation orders are refused)
              adapters.timeoutSeconds
                  an adapter (or a query, or the wait for a drop) running longer is stopped (default 3600)
              concurrency (CUSTOS_CONCURRENCY)
                  requests processed at once, emergencies first (default 2)
              urgentConcurrency (CUSTOS_URGENT_CONCURRENCY)
                  further workers kept for emergency requests (custos.to.<provider>.urgent) alone (default 1); everything
                  about an emergency goes back on custos.from.<provider>.urgent, the broker's urgent return lane
              kafka.urgentFetchWaitMilliseconds
                  longest wait of a fetch on the urgent topic (default 10; librdkafka's fetch.wait.max.ms)
              streaming.inFlightChunks
                  chunks awaiting Kafka's acknowledgement at once (default 32)
              receipts.timeoutSeconds, receipts.emergencyTimeoutSeconds, receipts.longestWaitSeconds
                  a package sent whose receipt has not come within this (default 600; 60 for an emergency) has its manifest
                  sent again, after twice as long each time, at most every longestWaitSeconds (default 21600); the broker answers with the receipt, or
                  asks for the chunks it lacks with a resend message, and those alone are sent again
              receipts.retentionDays, receipts.warningHours
                  a package's content is kept until an accepted receipt, at most this many days (default 30); an error is
                  logged each hour of the last warningHours (default 72), and another when it is deleted
              criteria.maximumExtractionAgeSeconds, criteria.maximumTimeStampDistanceSeconds
                  the broker's bounds for the four criteria's sống, to foresee its verdict (defaults 86400 and 3600)
              http.address (CUSTOS_HTTP_ADDRESS)
                  HOST:PORT serving GET /metrics (Prometheus) and GET /health (unset: no endpoint)
              log.level (CUSTOS_LOG_LEVEL)
                  (default info)
            An exec adapter gets {"category": ..., "request": ...} as JSON on stdin and writes records on stdout: JSON lines
            {"category", "target": {"type", "value", ...}, "time", "record": {...}}, or CSV with a header (category,
            target_type, target_value, time, then the record's fields). Records outside the request's targets, categories
            or window are not sent, only counted. A revoked emergency request stops its adapter (SIGTERM; a query is
            cancelled on the server) and sends nothing more.
            """)
    @OptionGroup var options: Options

    func run() async throws {
        let reader = try await ConfigSource.reader(configFile: options.config)
        _ = LogSetup.bootstrap(level: reader.string(forKey: "log.level"))
        let logger = Logger(label: "custos-connector")
        let configuration = try ConnectorConfiguration(reader: reader)
        let producer = try KafkaProducer(configuration: configuration.kafka, logger: logger)
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        let connector = try ProviderConnector(configuration: configuration, producer: producer, logger: logger)
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: connector), .init(service: KafkaProducerService(producer: producer))]
        if let address = configuration.httpAddress {
            services.append(.init(service: try ConnectorHTTP(address: address, registry: registry, jobs: try JobStore(stateDirectory: configuration.stateDirectory),
                                                             logger: logger)))
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        print("custos-connector running for provider \(configuration.providerId)")
        fflush(nil)
        try await group.run()
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a config file and test every file and connection it names, sending nothing.",
        discussion: """
            Checks the signing certificate and key, the broker's public key, the state directory, the time-stamping \
            authority (one time-stamp over a fixed test digest, checked against tsa.trustFile), Kafka (a metadata request: \
            the brokers, and whether this provider's topics exist), and each category's adapter (exec: the program is \
            executable; sql: the query plans on the database, EXPLAIN only; fileDrop: the folder is readable and writable). \
            Nothing is produced to Kafka. Exit status: 0 when nothing failed (warnings allowed), 1 otherwise.
            """)
    @OptionGroup var options: Options

    func run() async throws {
        let reader = try await ConfigSource.reader(configFile: options.config)
        _ = LogSetup.bootstrap(level: reader.string(forKey: "log.level") ?? "error")
        let configuration: ConnectorConfiguration
        do { configuration = try ConnectorConfiguration(reader: reader) } catch {
            print("FAIL configuration: \(error)")
            throw ExitCode(1)
        }
        print("OK   configuration: provider \(configuration.providerId)")
        let items = await ConnectorCheck.run(configuration, logger: Logger(label: "custos-connector"))
        items.forEach { print($0) }
        if items.contains(where: { $0.outcome == .fail }) { throw ExitCode(1) }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the jobs in the state directory with their phase and progress.")
    @OptionGroup var options: Options

    func run() async throws {
        let reader = try await ConfigSource.reader(configFile: options.config)
        let jobs = try JobStore(stateDirectory: try reader.require("stateDirectory"))
        let ids = jobs.jobs()
        if ids.isEmpty { print("no jobs"); return }
        for id in ids {
            let phase = jobs.phase(id)
            let progress = [.received, .extracted, .packaged].contains(phase) && jobs.exists(id, "package-id") ? " (chunks acknowledged: \(jobs.progress(id)))" : ""
            print("\(id.uuidString.lowercased())  \(phase.rawValue)\(progress)")
            if let summary = jobs.extractionSummary(id) {
                print("  extracted: \(summary.records) records\(summary.outOfScope > 0 ? ", \(summary.outOfScope) outside the request (not sent)" : "")"
                      + (summary.cannotExecute.isEmpty ? "" : "; cannot execute: \(summary.cannotExecute.sorted().joined(separator: ", "))"))
            }
            if let data = try? jobs.read(id, "criteria.json"), let v = try? JSONDecoder().decode(Verdict.self, from: data) {
                let failing = Verdict.Criterion.allCases.filter { v.status($0) != .pass }.map { c in
                    "\(c.name) \(v.status(c)?.rawValue ?? "-"): " + v.reasons(c).map { "\($0.code) ×\($0.count)" }.joined(separator: ", ")
                }
                print("  criteria: \(v.admissible ? "admissible" : "would not be admissible — " + failing.joined(separator: "; "))")
            }
            for answer in jobs.answers(id) {
                print("  answer to question \(answer.questionId.lowercased): \(answer.answer)")
            }
        }
    }
}

struct Clarify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask the investigator a question about a request; its legal clocks pause until the answer comes.",
        discussion: "The answer arrives over Kafka while `custos-connector run` runs; `custos-connector status` shows it.")
    @OptionGroup var options: Options
    @Argument(help: "Request id.") var request: String
    @Option(help: "The question (1 to 4000 characters).") var question: String

    func run() async throws {
        guard let id = UUID(uuidString: request) else { throw ValidationError("'\(request)' is not a request id") }
        let text = question.trimmingCharacters(in: .whitespacesAndNewlines)
        guard (1...ClarificationRequestBody.maximumLength).contains(text.count) else { throw ValidationError("--question must be 1 to 4000 characters") }
        let reader = try await ConfigSource.reader(configFile: options.config)
        _ = LogSetup.bootstrap(level: reader.string(forKey: "log.level"))
        let configuration = try ConnectorConfiguration(reader: reader)
        let jobs = try JobStore(stateDirectory: configuration.stateDirectory)
        guard jobs.exists(id, "request.json") else { throw ValidationError("no request \(request) in the state directory") }
        let logger = Logger(label: "custos-connector")
        let producer = try KafkaProducer(configuration: configuration.kafka, logger: logger)
        let questionId = UUID()
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { try await KafkaProducerService(producer: producer).run() }
            defer { group.cancelAll() }
            try await ProviderConnector.send(.clarificationRequest, id: questionId, request: id, body: ClarificationRequestBody(question: text),
                                             providerId: configuration.providerId, signer: try SigningKey.load(path: configuration.signingKeyFile),
                                             producer: producer, urgent: jobs.isUrgent(id))
        }
        print("question \(questionId.uuidString.lowercased()) sent")
    }
}

