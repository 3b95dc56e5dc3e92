import Configuration
import CustosCriteria
import CustosKafka
import CustosModel
import CustosRuntime
import Foundation

/// Every setting of `custos-connector`. Config-file keys are shown; each also reads from the
/// environment as `CUSTOS_` + the key in upper snake case.
public struct ConnectorConfiguration: Sendable {
    /// `providerId`: this provider's id, as registered at the broker.
    public var providerId: String
    /// `kafka.*`: brokers, client id and librdkafka pass-through properties (SASL, TLS...).
    public var kafka: KafkaConfiguration
    /// `kafka.groupId`: defaults to `custos-connector-<providerId>`.
    public var groupId: String
    /// `signingKeyFile`: the private key (PEM) of the provider's signing certificate; signs
    /// manifests (CMS) and every message (ES256).
    public var signingKeyFile: String
    /// `certificateFile`: the provider's signing certificate (PEM); its common name is the
    /// provider id, and it chains to the CA registered for the provider at the broker.
    public var certificateFile: String
    /// `certificateChainFile`: intermediate CA certificates (PEM), carried in every signature.
    public var certificateChainFile: String?
    /// `tsa.url`: the RFC 3161 time-stamping authority (the broker serves one at /tsa).
    public var tsaURL: String
    /// `tsa.trustFile`: CA certificates (PEM) the TSA's certificate must chain to.
    public var tsaTrustFile: String
    /// `brokerPublicKeyFile`: the broker's public key (PEM); requests not signed by it are refused.
    public var brokerPublicKeyFile: String
    /// `stateDirectory`: durable job state; the connector resumes from it after a crash.
    public var stateDirectory: String
    /// How a category's data is extracted.
    public enum Adapter: Sendable, Hashable {
        /// `adapters.<category>.command`: a program and its arguments (`ExecAdapter`).
        case exec([String])
        /// `adapters.<category>.sql`: a query template for the provider's PostgreSQL
        /// (`SQLAdapter`; the database is `adapters.sql.databaseURL`).
        case sql(String)
        /// `adapters.<category>.fileDrop: true`: an export dropped by hand into
        /// `adapters.fileDrop.directory` (`FileDropAdapter`).
        case fileDrop

        /// Its name in metrics and messages.
        public var kind: String {
            switch self {
            case .exec: "exec"
            case .sql: "sql"
            case .fileDrop: "file-drop"
            }
        }
    }

    /// The adapter per category (category keys in snake case: `ip_session`, `kyc_document`);
    /// `adapters.default` serves categories without one of their own. Each names one kind.
    public var adapters: [DataCategory: Adapter]
    /// `adapters.<category>.retentionDays` (or `adapters.default.retentionDays`): how long the
    /// provider keeps this category's data. Set, it declares the coverage of every result the
    /// adapter does not declare itself (a CSV, SQL or file-drop export cannot): the request's
    /// window up to the extraction, from no earlier than the retention horizon
    /// (`coverage(window:asOf:retention:)`). Unset: undeclared coverage, which keeps a package
    /// from being admissible (đủ warns).
    public var retention: [DataCategory: Duration] = [:]
    /// `adapters.sql.databaseURL`: `postgres://user:password@host:port/database`, for the sql adapters.
    public var sqlDatabase: PostgresURL?
    /// `adapters.fileDrop.directory`: where staff drop exports; `adapters.fileDrop.pollSeconds` (default 2).
    public var fileDropDirectory: String?
    public var fileDropPoll: Duration = .seconds(2)
    /// `http.address`: HOST:PORT of the operator's endpoint (`/metrics`, `/health`); unset: none.
    public var httpAddress: String?
    /// `normalisation.defaultCountryCode`: digits (e.g. `84`) that make national numbers E.164.
    public var normalisation = RecordGate.Settings()
    /// `adapters.preservation.command`: the program that freezes (and later lets go of) the
    /// data a preservation order names (see `PreservationAdapter`). Unset: such orders are
    /// refused, since nothing here could honour them.
    public var preservationCommand: [String] = []
    /// `adapters.timeoutSeconds`: an adapter running longer is stopped and the request refused.
    public var adapterTimeout: Duration = .seconds(3600)
    /// `concurrency`: requests processed at once (urgent ones first).
    public var concurrency: Int = 2
    /// `urgentConcurrency`: further workers that take only emergency requests, so one is
    /// started at once even while `concurrency` normal ones run.
    public var urgentConcurrency: Int = 1
    /// `kafka.urgentFetchWaitMilliseconds`: the urgent topic's consumer asks the Kafka broker
    /// to hold a fetch at most this long (librdkafka's `fetch.wait.max.ms`, default 500 there).
    public var urgentFetchWaitMilliseconds: Int = 10
    /// `streaming.inFlightChunks`: chunks handed to Kafka but not yet acknowledged, at most.
    public var inFlightChunks: Int = 32
    /// `criteria.maximumExtractionAgeSeconds` (default 86400) and
    /// `criteria.maximumTimeStampDistanceSeconds` (default 3600): the broker's bounds for
    /// sống, so that the verdict foreseen before sending is the one the broker will give.
    public var criteria = PackageJudge.Bounds()
    /// `receipts.timeoutSeconds` (default 600) and `receipts.emergencyTimeoutSeconds` (default
    /// 60): a package sent whose receipt has not come within this is sent again — its signed
    /// manifest, after which the broker answers with the receipt or asks for the chunks it
    /// lacks — after twice as long each time, at most every `receipts.longestWaitSeconds`
    /// (default 21600, 6 hours) (schemas/README.md, "Re-sending").
    public var receiptTimeout: Duration = .seconds(600)
    public var emergencyReceiptTimeout: Duration = .seconds(60)
    public var receiptLongestWait: Duration = .seconds(21_600)
    /// `receipts.retentionDays` (default 30): how long a package without its receipt keeps its
    /// content (the result spools) for sending again; then the content is deleted, loudly.
    public var receiptRetention: Duration = .seconds(30 * 86_400)
    /// `receipts.warningHours` (default 72): an error is logged each hour, for each package
    /// still without its receipt, once less than this is left of its retention.
    public var receiptWarning: Duration = .seconds(72 * 3600)

    public init(reader: ConfigReader) throws {
        providerId = try reader.require("providerId")
        guard ProviderID.isValid(providerId) else { throw ConfigurationError(key: "providerId", reason: "must match \(ProviderID.pattern)") }
        kafka = try reader.kafkaConfiguration(clientId: "custos-connector-\(providerId)")
        groupId = reader.string(forKey: "kafka.groupId", default: "custos-connector-\(providerId)")
        signingKeyFile = try reader.require("signingKeyFile")
        certificateFile = try reader.require("certificateFile")
        certificateChainFile = reader.string(forKey: "certificateChainFile")
        tsaURL = try reader.require("tsa.url")
        tsaTrustFile = try reader.require("tsa.trustFile")
        brokerPublicKeyFile = try reader.require("brokerPublicKeyFile")
        stateDirectory = try reader.require("stateDirectory")
        func adapter(_ prefix: String) throws -> Adapter? {
            let command = reader.stringArray(forKey: ConfigKey("\(prefix).command"), default: [])
            let sql = reader.string(forKey: ConfigKey("\(prefix).sql"))
            let drop = reader.bool(forKey: ConfigKey("\(prefix).fileDrop"), default: false)
            let kinds = [!command.isEmpty, sql != nil, drop].filter { $0 }.count
            guard kinds <= 1 else { throw ConfigurationError(key: prefix, reason: "names more than one of command, sql and fileDrop") }
            if !command.isEmpty { return .exec(command) }
            if let sql {
                _ = try SQLAdapter.parameterCount(sql)
                return .sql(sql)
            }
            return drop ? .fileDrop : nil
        }
        func retentionDays(_ prefix: String) throws -> Duration? {
            guard let days = reader.int(forKey: ConfigKey("\(prefix).retentionDays")) else { return nil }
            guard (1...36_500).contains(days) else { throw ConfigurationError(key: "\(prefix).retentionDays", reason: "must be 1 to 36500 days") }
            return .seconds(days * 86_400)
        }
        var adapters: [DataCategory: Adapter] = [:]
        let fallback = try adapter("adapters.default")
        let fallbackRetention = try retentionDays("adapters.default")
        for c in DataCategory.allCases {
            let prefix = "adapters.\(c.rawValue.replacingOccurrences(of: "-", with: "_"))"
            if let a = try adapter(prefix) ?? fallback { adapters[c] = a }
            if let r = try retentionDays(prefix) ?? fallbackRetention { retention[c] = r }
        }
        guard !adapters.isEmpty else {
            throw ConfigurationError(key: "adapters", reason: "configure adapters.default or at least one adapters.<category> (command, sql or fileDrop)")
        }
        self.adapters = adapters
        if let url = reader.string(forKey: "adapters.sql.databaseURL") { sqlDatabase = try PostgresURL(url, key: "adapters.sql.databaseURL") }
        if adapters.values.contains(where: { if case .sql = $0 { true } else { false } }), sqlDatabase == nil {
            throw ConfigurationError(key: "adapters.sql.databaseURL", reason: "is required for the sql adapters")
        }
        httpAddress = reader.string(forKey: "http.address")
        fileDropDirectory = reader.string(forKey: "adapters.fileDrop.directory")
        if adapters.values.contains(.fileDrop), fileDropDirectory == nil {
            throw ConfigurationError(key: "adapters.fileDrop.directory", reason: "is required for the fileDrop adapters")
        }
        fileDropPoll = try reader.seconds("adapters.fileDrop.pollSeconds", default: fileDropPoll)
        if let cc = reader.string(forKey: "normalisation.defaultCountryCode") {
            guard (1...3).contains(cc.count), cc.allSatisfy(\.isNumber), !cc.hasPrefix("0") else {
                throw ConfigurationError(key: "normalisation.defaultCountryCode", reason: "must be a country calling code: 1 to 3 digits, e.g. 84")
            }
            normalisation.defaultCountryCode = cc
        }
        preservationCommand = reader.stringArray(forKey: "adapters.preservation.command", default: [])
        adapterTimeout = .seconds(reader.int(forKey: "adapters.timeoutSeconds", default: 3600))
        concurrency = reader.int(forKey: "concurrency", default: 2)
        inFlightChunks = reader.int(forKey: "streaming.inFlightChunks", default: 32)
        guard concurrency >= 1 else { throw ConfigurationError(key: "concurrency", reason: "must be at least 1") }
        urgentConcurrency = reader.int(forKey: "urgentConcurrency", default: urgentConcurrency)
        urgentFetchWaitMilliseconds = reader.int(forKey: "kafka.urgentFetchWaitMilliseconds", default: urgentFetchWaitMilliseconds)
        guard (1...500).contains(urgentFetchWaitMilliseconds) else {
            throw ConfigurationError(key: "kafka.urgentFetchWaitMilliseconds", reason: "must be 1 to 500")
        }
        guard urgentConcurrency >= 0 else { throw ConfigurationError(key: "urgentConcurrency", reason: "must be 0 or more") }
        guard (1...1024).contains(inFlightChunks) else { throw ConfigurationError(key: "streaming.inFlightChunks", reason: "must be 1 to 1024") }
        criteria.maximumExtractionAge = try reader.seconds("criteria.maximumExtractionAgeSeconds", default: criteria.maximumExtractionAge)
        criteria.maximumTimeStampDistance = try reader.seconds("criteria.maximumTimeStampDistanceSeconds", default: criteria.maximumTimeStampDistance)
        receiptTimeout = try reader.seconds("receipts.timeoutSeconds", default: receiptTimeout)
        emergencyReceiptTimeout = try reader.seconds("receipts.emergencyTimeoutSeconds", default: emergencyReceiptTimeout)
        receiptLongestWait = try reader.seconds("receipts.longestWaitSeconds", default: receiptLongestWait)
        receiptRetention = .seconds(reader.int(forKey: "receipts.retentionDays", default: 30) * 86_400)
        receiptWarning = .seconds(reader.int(forKey: "receipts.warningHours", default: 72) * 3600)
        guard receiptRetention > .zero else { throw ConfigurationError(key: "receipts.retentionDays", reason: "must be at least 1") }
        guard receiptTimeout > .zero, emergencyReceiptTimeout > .zero else {
            throw ConfigurationError(key: "receipts.timeoutSeconds", reason: "receipt time-outs must be positive")
        }
    }
}

extension ConnectorConfiguration {
    /// The coverage a provider that keeps a category for `retention` can state for a request
    /// extracted at `asOf`: the request's window, from no earlier than the retention horizon
    /// (asOf − retention) and to no later than `asOf`; the horizon itself as `retainedSince`.
    /// A horizon inside the window is a declared retention gap (đủ warns); nil when nothing of
    /// the window can be covered (it ends before the horizon or starts after `asOf`).
    public static func coverage(window: TimeWindow, asOf: Date, retention: Duration) -> Manifest.Coverage? {
        guard let from = Timestamp.parse(window.from), let to = Timestamp.parse(window.to) else { return nil }
        let horizon = asOf.addingTimeInterval(-Double(retention.components.seconds))
        let start = max(from, horizon), end = min(to, asOf)
        guard start <= end else { return nil }
        return Manifest.Coverage(from: start == from ? window.from : Timestamp.format(start), to: end == to ? window.to : Timestamp.format(end),
                                 retainedSince: Timestamp.format(horizon))
    }
}
