import CustosBroker
import CustosClient
import CustosCustody
import CustosEvidence
import CustosKafka
import CustosModel
import CustosPKI
import CustosRuntime
import CustosTestSupport
import Foundation
import Logging
import PostgresNIO
import NIOCore
import Synchronization

/// `custos-bench connector [RECORDS] [PADDING] [--without-baseline]` (run by `ops/bench
/// connector`): the broker (as
/// `custos-broker serve` assembles it) in this process, `custos-connector run` as a process of
/// its own whose exec adapter, custos-synth, writes RECORDS (default 10,000,000) synthetic CDR
/// rows for one target. It times the connector from the approval to the last chunk
/// acknowledged by Kafka (package protocol v2: the chunks go out while the adapter runs) and
/// on to the package verified in the broker (which checks each chunk as it arrives), and reads
/// the connector's and the broker's peak RSS (VmHWM). In the same run it produces the same
/// bytes, in the same 512 KiB messages, with librdkafka's producer alone: the baseline; the
/// lines before the last are `broker verified/raw-kafka ratio: X.XX` (raw time / approval →
/// verified) and the last is
/// `connector/raw-kafka ratio: X.XX` (raw time / connector time). PADDING adds that many bytes
/// of filler to every record (to make a large export); `--without-baseline` leaves the
/// baseline out (the local Kafka keeps every message in memory), and the last line is then
/// `connector peak RSS: N MiB`.
enum ConnectorBench {
    static func run(records: Int, padding: Int, baseline: Bool) async throws {
        var logger = Logger(label: "custos-bench")
        logger.logLevel = .error
        let env = ProcessInfo.processInfo.environment
        let (databaseURL, brokers) = BenchDeployment.servicesFromEnvironment()
        let bin = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let synth = bin.appendingPathComponent("custos-synth").path, connectorBinary = bin.appendingPathComponent("custos-connector").path
        for program in [synth, connectorBinary] where !FileManager.default.isExecutableFile(atPath: program) {
            FileHandle.standardError.write(Data("custos-bench: \(program) must be built beside it\n".utf8))
            exit(2)
        }
        let tag = BenchDeployment.newTag()
        let provider = "bench-connector-\(tag)", schema = "bench_connector_\(tag)"
        let deployment = try await BenchDeployment("connector", tag: tag, provider: provider, databaseURL: databaseURL, brokers: brokers,
                                                   in: URL(fileURLWithPath: env["CUSTOS_BENCH_DIR"] ?? FileManager.default.temporaryDirectory.path))
        defer { deployment.remove() }
        let (pki, services, brokerConfiguration) = (deployment.pki, deployment.services, deployment.brokerConfiguration)
        func path(_ name: String) -> String { deployment.path(name) }

        let (approver, requestId) = try await withBrokerStore(configuration: brokerConfiguration.database, signingKeyFile: nil, logger: logger) { store in
            let admin = CustodyEvent.Actor(type: .admin, id: "bench")
            try await store.registerProvider(id: provider, certificate: pki.signer, caCertificate: pki.providerCA, by: admin)
            let inv = try await store.addUser(name: "inv-\(tag)", role: .investigator, by: admin).0
            let approver = try await store.addUser(name: "appr-\(tag)", role: .approver, by: admin).token
            let c = try await store.createCase(title: "connector benchmark", by: inv)
            let decision = try await store.uploadDocument(ByteBuffer(bytes: SyntheticDecision.pdf), mediaType: "application/pdf", by: inv).document
            let id = try await store.createRequest(RequestSpec(
                caseId: c.id, providerId: provider,
                legalBasis: LegalBasis(decisionNumber: "QD-BENCH/2026", issuingAuthority: "Benchmark Authority", issuedOn: "2026-11-01", document: decision),
                targets: [Target(type: .msisdn, value: "+84912345678")], categories: [.traffic],
                window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z")), by: inv)
            try await store.submit(id, by: inv)
            return (approver, id)
        }

        let (url, brokerTask) = try await deployment.startBroker(logger: logger)
        defer { brokerTask.cancel() }

        // The connector, as an operator runs it.
        try JSONSerialization.data(withJSONObject: [
            "providerId": provider, "signingKeyFile": path("provider.key"), "certificateFile": path("provider.pem"),
            "brokerPublicKeyFile": path("broker.pub"), "stateDirectory": path("state"),
            "tsa": ["url": url + "/tsa", "trustFile": path("tsa-ca.pem")],
            "adapters": ["traffic": ["command": [synth, "--records-per-target", "\(records)", "--padding", "\(padding)"]]],
            "kafka": ["groupId": "custos-connector-bench-\(tag)"], "log": ["level": "warning"],
        ] as [String: Any]).write(to: URL(fileURLWithPath: path("connector.json")))
        let connector = Process()
        connector.executableURL = URL(fileURLWithPath: connectorBinary)
        connector.arguments = ["run", "--config", path("connector.json")]
        connector.environment = env.merging(services) { _, b in b }
        let out = Pipe()
        connector.standardOutput = out
        connector.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try connector.run()
        defer { if connector.isRunning { connector.terminate() } }
        let started = Mutex(false)
        out.fileHandleForReading.readabilityHandler = { h in
            if String(decoding: h.availableData, as: UTF8.self).contains("custos-connector running") { started.withLock { $0 = true } }
        }
        let startDeadline = ContinuousClock.now + .seconds(60)
        while !started.withLock({ $0 }) && ContinuousClock.now < startDeadline { try await Task.sleep(for: .milliseconds(20)) }
        out.fileHandleForReading.readabilityHandler = nil

        // Approval → every chunk acknowledged (package protocol v2: chunks go out while the
        // adapter runs) → manifest signed, time-stamped and sent → verified in the broker.
        let client = CustosClient(baseURL: url, token: approver)
        let job = path("state/jobs/\(requestId.uuidString.lowercased())")
        let t0 = ContinuousClock.now
        _ = try await client.approve(requestId)
        var marks: [String: ContinuousClock.Instant] = [:]
        var peak = 0
        let deadline = t0 + .seconds(3600)
        while marks["sent"] == nil && ContinuousClock.now < deadline {
            for file in ["extraction.json", "chunks.json", "manifest.json", "manifest.tsr", "sent"] where marks[file] == nil {
                if FileManager.default.fileExists(atPath: job + "/" + file) { marks[file] = .now }
            }
            peak = max(peak, Self.peakRSS(connector.processIdentifier))
            try await Task.sleep(for: .milliseconds(20))
        }
        guard let acknowledged = marks["chunks.json"], let manifestData = FileManager.default.contents(atPath: job + "/manifest.json") else {
            FileHandle.standardError.write(Data("custos-bench: the connector did not finish within an hour\n".utf8))
            exit(1)
        }
        let manifest = try JSONDecoder().decode(Manifest.self, from: manifestData)
        while try await client.request(requestId).state != .verified && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(100)) }
        let verified = ContinuousClock.now
        peak = max(peak, Self.peakRSS(connector.processIdentifier))
        // The broker runs in this process: its peak so far (before the baseline's producer).
        let brokerPeak = Self.peakRSS(getpid())
        connector.terminate()
        connector.waitUntilExit()
        brokerTask.cancel()
        // The benchmark's data goes (it can be gigabytes).
        let cleanup = brokerConfiguration.database.makeClient(logger: logger)
        let cleaner = Task { await cleanup.run() }
        do { try await cleanup.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \"\(schema)\" CASCADE"), logger: logger) } catch {
            print("note: schema \(schema) was not dropped: \(String(reflecting: error))")
        }
        cleaner.cancel()

        func s(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        let size = Double(manifest.content.size), n = Double(manifest.content.recordCount)
        let connectorSeconds = s(acknowledged - t0)
        let brokerSeconds = s(verified - t0)
        func phase(_ a: String?, _ b: String) -> String {
            guard let end = marks[b] else { return "-" }
            return String(format: "%.1f s", s(end - (a.flatMap { marks[$0] } ?? t0)))
        }
        print(String(format: "%d CDR records, %.2f GB (%.2f GiB) in %d chunks of %d KiB, one target", manifest.content.recordCount, size / 1e9,
                     size / 1_073_741_824, manifest.chunks.count, Topics.maximumChunkBytes / 1024))
        print("connector phases: extraction \(phase(nil, "extraction.json")), every chunk acknowledged \(phase(nil, "chunks.json")), "
              + "then manifest signed \(phase("chunks.json", "manifest.json")), time-stamped \(phase("manifest.json", "manifest.tsr")), "
              + "sent \(phase("manifest.tsr", "sent"))")
        print(String(format: "connector (approval → every chunk acknowledged by Kafka): %.1f s, %.0f records/s, %.1f MB/s, peak RSS %.1f MiB",
                     connectorSeconds, n / connectorSeconds, size / 1e6 / connectorSeconds, Double(peak) / 1024))
        print(String(format: "into the broker (approval → package verified): %.1f s, %.0f records/s, %.1f MB/s, broker peak RSS %.1f MiB",
                     brokerSeconds, n / brokerSeconds, size / 1e6 / brokerSeconds, Double(brokerPeak) / 1024))
        print(String(format: "broker verified/connector acknowledged: %.2f (target <= 1.5)", brokerSeconds / connectorSeconds))
        guard baseline else {
            print("target: connector peak RSS < 256 MiB, broker peak RSS < 512 MiB (no baseline in this run)")
            print(String(format: "broker peak RSS: %.1f MiB", Double(brokerPeak) / 1024))
            print(String(format: "connector peak RSS: %.1f MiB", Double(peak) / 1024))
            return
        }

        // The baseline: the same bytes (custos-synth, same request, same seed), in the same
        // message size, produced by librdkafka alone to a topic of their own.
        let approved = try JSONDecoder().decode(RequestBody.self, from: Data(contentsOf: URL(fileURLWithPath: job + "/request.json"))).request
        let same = path("same.ndjson")
        let generator = Process()
        generator.executableURL = URL(fileURLWithPath: synth)
        generator.arguments = ["--records-per-target", "\(records)", "--padding", "\(padding)"]
        let input = Pipe()
        generator.standardInput = input
        _ = FileManager.default.createFile(atPath: same, contents: nil)
        generator.standardOutput = FileHandle(forWritingAtPath: same)
        try generator.run()
        try input.fileHandleForWriting.write(contentsOf: try JSONEncoder().encode(["category": AnyEncodable(DataCategory.traffic), "request": AnyEncodable(approved)]))
        try input.fileHandleForWriting.close()
        generator.waitUntilExit()
        let producer = try KafkaProducer(configuration: KafkaConfiguration(bootstrapServers: brokers, clientId: "custos-bench-raw"), logger: logger)
        let pump = Task { try await KafkaProducerService(producer: producer).run() }
        defer { pump.cancel() }
        let topic = "custos.bench.raw.\(tag)"
        _ = try await producer.ensureTopics([topic])
        let handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: same))
        var messages: [[UInt8]] = []
        var total = 0
        while total < manifest.content.size, let block = try handle.read(upToCount: Topics.maximumChunkBytes), !block.isEmpty {
            let take = Int(min(Int64(block.count), manifest.content.size - Int64(total)))
            messages.append(Array(block.prefix(take)))
            total += take
        }
        try handle.close()
        // The topic's metadata and the connections first, as the connector had them already.
        _ = try await producer.send(OutgoingMessage(topic: topic, key: Array("warm".utf8), value: Array("warm".utf8)))
        let r0 = ContinuousClock.now
        var futures: [DeliveryFuture] = []
        for (i, m) in messages.enumerated() {
            futures.append(try producer.enqueue(OutgoingMessage(topic: topic, key: Array("raw-\(i % 64)".utf8), value: m)))
        }
        for f in futures { _ = try await f.value }
        let raw = ContinuousClock.now - r0

        print(String(format: "raw Kafka (librdkafka's producer alone, the same bytes, %d messages): %.1f s, %.1f MB/s", messages.count, s(raw), size / 1e6 / s(raw)))
        print("target: connector ratio >= 0.7, broker ratio >= 0.5, peak RSS < 256 MiB")
        print(String(format: "broker verified/raw-kafka ratio: %.2f", s(raw) / brokerSeconds))
        print(String(format: "connector/raw-kafka ratio: %.2f", s(raw) / connectorSeconds))
    }

    /// VmHWM of a live process, KiB (0 once it is gone).
    static func peakRSS(_ pid: Int32) -> Int {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }) else { return 0 }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
    }
}

/// A value of any Encodable type, for a heterogeneous JSON object.
struct AnyEncodable: Encodable {
    let encode: (any Encoder) throws -> Void
    init(_ value: some Encodable) { encode = value.encode }
    func encode(to encoder: any Encoder) throws { try encode(encoder) }
}
