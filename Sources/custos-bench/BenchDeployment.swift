import Configuration
import CustosBroker
import CustosEvidence
import CustosRuntime
import CustosTestSupport
import Foundation
import Logging
import Synchronization

/// What the urgent and connector benchmarks share: a folder of identities as files (as a
/// deployment has them), the broker's configuration in a schema of its own, and the broker
/// itself, as `custos-broker serve` assembles it, in this process.
struct BenchDeployment {
    let dir: URL
    let pki: TestPKI
    let services: [String: String]
    let brokerConfiguration: BrokerConfiguration

    /// `name`: the benchmark's, in its folder, schema and group names.
    init(_ name: String, tag: String, provider: String, databaseURL: String, brokers: String, in parent: URL = FileManager.default.temporaryDirectory) async throws {
        let dir = parent.appendingPathComponent("custos-bench-\(name)-\(tag)")
        self.dir = dir
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try SigningKey.generate().write(privatePath: dir.appendingPathComponent("broker.key").path, publicPath: dir.appendingPathComponent("broker.pub").path)
        pki = try TestPKI(signerName: provider)
        for (file, text) in [("provider-ca.pem", pki.providerCA), ("provider.pem", pki.signer), ("provider.key", pki.signerKey),
                             ("tsa-ca.pem", pki.tsaCA), ("tsa.pem", pki.tsa.certificate), ("tsa.key", pki.tsa.key),
                             ("custody.pem", pki.custodyCertificate), ("custody.key", pki.custodyKey)] {
            try Data(text.utf8).write(to: dir.appendingPathComponent(file))
        }
        let services = ["CUSTOS_DATABASE_URL": databaseURL, "CUSTOS_KAFKA_BROKERS": brokers]
        self.services = services
        let path = { (file: String) in dir.appendingPathComponent(file).path }
        try Data(DirectoryChunkStore.newKeyText().utf8).write(to: dir.appendingPathComponent("storage.key"))
        try JSONSerialization.data(withJSONObject: [
            "storage": ["directory": path("chunks"), "keyFile": path("storage.key")],
            "signingKeyFile": path("broker.key"), "http": ["host": "127.0.0.1", "port": 0], "providers": ["refreshSeconds": 1],
            "database": ["schema": "bench_\(name)_\(tag)"], "kafka": ["groupId": "custos-bench-\(tag)"],
            "tsa": ["trustFile": path("tsa-ca.pem"), "certificateFile": path("tsa.pem"), "keyFile": path("tsa.key")],
            "custody": ["certificateFile": path("custody.pem"), "keyFile": path("custody.key"), "origin": "bench.custos/custody"],
        ] as [String: Any]).write(to: dir.appendingPathComponent("broker.json"))
        brokerConfiguration = try BrokerConfiguration(reader: try await ConfigSource.reader(configFile: path("broker.json"), environment: services))
    }

    /// CUSTOS_DATABASE_URL and CUSTOS_KAFKA_BROKERS, or a clear exit (status 2).
    static func servicesFromEnvironment() -> (databaseURL: String, brokers: String) {
        let env = ProcessInfo.processInfo.environment
        guard let databaseURL = env["CUSTOS_DATABASE_URL"], let brokers = env["CUSTOS_KAFKA_BROKERS"] else {
            FileHandle.standardError.write(Data("custos-bench: set CUSTOS_DATABASE_URL and CUSTOS_KAFKA_BROKERS (ops/services env)\n".utf8))
            exit(2)
        }
        return (databaseURL, brokers)
    }

    /// The path of `program`, built beside this benchmark, or a clear exit (status 2).
    static func besideThis(_ program: String) -> String {
        let path = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(program).path
        guard FileManager.default.isExecutableFile(atPath: path) else {
            FileHandle.standardError.write(Data("custos-bench: \(program) must be built beside it (\(path))\n".utf8))
            exit(2)
        }
        return path
    }

    /// A fresh name part for one run's provider, schema, groups and folder.
    static func newTag() -> String { String(UInt32.random(in: 0...UInt32.max), radix: 36) }

    func path(_ file: String) -> String { dir.appendingPathComponent(file).path }

    /// Writes a config file and reads it with the services' environment.
    func reader(_ config: [String: Any], _ file: String) async throws -> ConfigReader {
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path(file)))
        return try await ConfigSource.reader(configFile: path(file), environment: services)
    }

    /// Starts the broker; returns its URL and the task that runs it.
    func startBroker(logger: Logger) async throws -> (url: String, task: Task<Void, any Error>) {
        let address = Mutex<String?>(nil)
        let app = try buildApplication(configuration: brokerConfiguration, logger: logger) { url in address.withLock { $0 = url } }
        let task = Task { try await app.runService() }
        while true {
            if let url = address.withLock({ $0 }) { return (url, task) }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    func remove() { try? FileManager.default.removeItem(at: dir) }
}
