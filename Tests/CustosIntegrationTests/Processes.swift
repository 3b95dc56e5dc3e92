import CustosBroker
import CustosEvidence
import CustosTestSupport
import Foundation
import Testing

/// A child process of the test, with stdout and stderr in files.
final class ChildProcess: @unchecked Sendable {  // used from one test task at a time
    let process = Process()
    let log: URL

    init(_ executable: String, _ arguments: [String], environment: [String: String], log: URL) throws {
        self.log = log
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        handle.seekToEndOfFile()
        process.executableURL = TestServices.binDirectory.appendingPathComponent(executable)
        process.arguments = arguments
        process.environment = environment
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    var output: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    func waitFor(_ text: String, timeout: Duration = .seconds(60)) async throws -> String {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            if let line = output.split(separator: "\n").first(where: { $0.contains(text) }) { return String(line) }
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        Issue.record("\(process.executableURL!.lastPathComponent) did not print '\(text)'; its output:\n\(output.suffix(3000))")
        throw CancellationError()
    }

    func kill9() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// SIGTERM, then at most 30 s for it to exit; past that, SIGKILL (named on standard error),
    /// so that a process that does not stop cannot hold the test run for ever.
    func stop() {
        if process.isRunning { process.terminate() }
        let deadline = Date().addingTimeInterval(30)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            FileHandle.standardError.write(Data("\(process.executableURL!.lastPathComponent) did not stop within 30 s of SIGTERM; killed\n".utf8))
            kill9()
        }
        process.waitUntilExit()
    }
}

/// Runs one of the project's executables to completion and returns its status and output. The
/// wait happens on a thread of its own: blocked there, it would starve the cooperative pool
/// (two threads on a 2-core machine) that every other test's tasks run on.
func run(_ executable: String, _ arguments: [String], environment: [String: String]) async throws -> (status: Int32, stdout: String, stderr: String) {
    try await offPool { try runBlocking(executable, arguments, environment: environment) }
}

// `offPool` (CustosTestSupport) runs blocking work on a thread of its own.

private func runBlocking(_ executable: String, _ arguments: [String], environment: [String: String]) throws -> (status: Int32, stdout: String, stderr: String) {
    let p = Process()
    p.executableURL = TestServices.binDirectory.appendingPathComponent(executable)
    p.arguments = arguments
    p.environment = environment
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: o, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines),
            String(decoding: e, as: UTF8.self))
}

/// One broker and one connector as separate processes, each test with its own schema,
/// provider id (so its own topics), state directory and users.
final class Deployment: @unchecked Sendable {  // used from one test task at a time
    let dir: URL
    let provider: String
    let env: [String: String]
    var broker: ChildProcess?
    var connector: ChildProcess?
    var url = ""
    var investigator = ""
    var approver = ""

    var connectorConfig: [String: Any] = [:]
    /// More settings for the connector's process alone (`CUSTOS_…`).
    var connectorEnvironment: [String: String] = [:]

    /// `environment`: more settings for every process (`CUSTOS_…`).
    init(adapter: [String], inFlightChunks: Int = 32, environment: [String: String] = [:]) throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent(TestServices.unique("custos-e2e-"))
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        provider = TestServices.unique("prov-")
        var env = ProcessInfo.processInfo.environment
        env["CUSTOS_DATABASE_URL"] = try TestServices.databaseURL()
        env["CUSTOS_KAFKA_BROKERS"] = try TestServices.kafka().bootstrapServers
        env["CUSTOS_DATABASE_SCHEMA"] = TestServices.unique("e2e_")
        env["CUSTOS_KAFKA_GROUP_ID"] = TestServices.unique("custos-broker-")
        env["CUSTOS_LOG_LEVEL"] = "info"
        self.env = env.merging(environment) { _, b in b }
        try SigningKey.generate().write(privatePath: path("broker.key"), publicPath: path("broker.pub"))
        // The provider's CA and signing certificate, and the broker's TSA, as files.
        let pki = try TestPKI(signerName: provider)
        for (name, text) in [("provider-ca.pem", pki.providerCA), ("provider.pem", pki.signer), ("provider.key", pki.signerKey),
                             ("tsa-ca.pem", pki.tsaCA), ("tsa.pem", pki.tsa.certificate), ("tsa.key", pki.tsa.key),
                             ("custody-ca.pem", pki.custodyCA), ("custody.pem", pki.custodyCertificate), ("custody.key", pki.custodyKey),
                             ("witness.pem", pki.witnessCertificate), ("witness.key", pki.witnessKey)] {
            try Data(text.utf8).write(to: URL(fileURLWithPath: path(name)))
        }
        try Data(DirectoryChunkStore.newKeyText().utf8).write(to: URL(fileURLWithPath: path("storage.key")))
        let broker: [String: Any] = [
            "storage": ["directory": path("chunks"), "keyFile": path("storage.key")],
            "signingKeyFile": path("broker.key"), "http": ["host": "127.0.0.1", "port": 0], "providers": ["refreshSeconds": 1],
            "tsa": ["trustFile": path("tsa-ca.pem"), "certificateFile": path("tsa.pem"), "keyFile": path("tsa.key")],
            "custody": ["certificateFile": path("custody.pem"), "keyFile": path("custody.key"), "origin": "tests.custos/custody"],
        ]
        connectorConfig = [
            "providerId": provider, "signingKeyFile": path("provider.key"), "certificateFile": path("provider.pem"),
            "brokerPublicKeyFile": path("broker.pub"), "stateDirectory": path("state"), "adapters": ["default": ["command": adapter]],
            "streaming": ["inFlightChunks": inFlightChunks],
        ]
        try JSONSerialization.data(withJSONObject: broker).write(to: URL(fileURLWithPath: path("broker.json")))
        try Data(SyntheticDecision.pdf).write(to: URL(fileURLWithPath: path("decision.pdf")))
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }

    func admin(_ args: [String]) async throws -> String {
        let r = try await run("custos-broker", args + ["--config", path("broker.json")], environment: env)
        try #require(r.status == 0, "custos-broker \(args.joined(separator: " ")) failed: \(r.stderr)")
        return r.stdout
    }

    func setUp() async throws {
        _ = try await admin(["migrate"])
        _ = try await admin(["providers", "add", provider, "--certificate", path("provider.pem"), "--ca-certificate", path("provider-ca.pem")])
        investigator = try await admin(["users", "add", TestServices.unique("inv-"), "--role", "investigator"])
        approver = try await admin(["users", "add", TestServices.unique("appr-"), "--role", "approver"])
    }

    func startBroker() async throws {
        broker = try ChildProcess("custos-broker", ["serve", "--config", path("broker.json")], environment: env, log: dir.appendingPathComponent("broker.log"))
        let line = try await broker!.waitFor("custos-broker listening on http")
        url = String(line.split(separator: " ").last!)
    }

    /// Another `custos-broker serve` on the same configuration, database and consumer group
    /// (`environment` changes some of it); returns it and its URL.
    func startAnotherBroker(_ name: String, environment: [String: String] = [:]) async throws -> (ChildProcess, String) {
        let other = try ChildProcess("custos-broker", ["serve", "--config", path("broker.json")], environment: env.merging(environment) { _, b in b },
                                     log: dir.appendingPathComponent("\(name).log"))
        let line = try await other.waitFor("custos-broker listening on http")
        return (other, String(line.split(separator: " ").last!))
    }

    /// Starts the connector, time-stamping with the broker's built-in TSA (or `tsa`'s).
    func startConnector(tsa: String? = nil) async throws {
        var config = connectorConfig
        config["tsa"] = ["url": (tsa ?? url) + "/tsa", "trustFile": path("tsa-ca.pem")]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: path("connector.json")))
        connector = try ChildProcess("custos-connector", ["run", "--config", path("connector.json")],
                                     environment: env.merging(connectorEnvironment) { _, b in b }, log: dir.appendingPathComponent("connector.log"))
        _ = try await connector!.waitFor("custos-connector running")
    }

    /// Runs the `custos` CLI as `token`'s user.
    func cli(_ token: String, _ args: [String]) async throws -> (status: Int32, stdout: String, stderr: String) {
        var e = env
        e["CUSTOS_URL"] = url
        e["CUSTOS_TOKEN"] = token
        return try await run("custos", args, environment: e)
    }

    func cliOK(_ token: String, _ args: [String]) async throws -> String {
        let r = try await cli(token, args)
        try #require(r.status == 0, "custos \(args.joined(separator: " ")) failed: \(r.stderr)")
        return r.stdout
    }

    /// Opens a case and submits a request as the investigator; returns the request id.
    func submitRequest(targets: [String] = ["msisdn:+84912345678", "msisdn:+84987654321"], categories: [String] = ["traffic"],
                       extra: [String] = []) async throws -> String {
        let caseId = try await cliOK(investigator, ["case", "create", "--title", "E2E case"])
        return try await cliOK(investigator, ["request", "create", "--case", caseId, "--provider", provider,
                                        "--decision-number", "QD-9/2026", "--authority", "Test Authority", "--issued-on", "2026-11-20",
                                        "--decision-file", path("decision.pdf"),
                                        "--from", "2026-11-01T00:00:00Z", "--to", "2026-11-20T00:00:00Z", "--submit"]
                         + targets.flatMap { ["--target", $0] } + categories.flatMap { ["--category", $0] } + extra)
    }

    func stop() {
        connector?.stop()
        broker?.stop()
    }

    deinit {
        stop()
        if ProcessInfo.processInfo.environment["CUSTOS_KEEP_TEST_DIRS"] == nil { try? FileManager.default.removeItem(at: dir) }
    }
}
