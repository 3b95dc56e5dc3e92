import Configuration
import CustosBroker
import CustosClient
import CustosConnector
import CustosCustody
import CustosKafka
import CustosModel
import CustosRuntime
import CustosTestSupport
import Foundation
import Logging
import NIOCore
import ServiceLifecycle

/// `custos-bench return [BULK-MB] [COUNT]` (run by `ops/bench return`): the way back. The time
/// from an emergency approval at the broker to its package `verified` at the broker — out to
/// provider A's connector, extracted, streamed back on the urgent return lane, checked and
/// finalised — over the real PostgreSQL and Kafka named by CUSTOS_DATABASE_URL and
/// CUSTOS_KAFKA_BROKERS. The broker (`buildApplication`, as `custos-broker serve` runs it) and
/// both providers' connectors run in this process. COUNT (default 100) emergency approvals to
/// provider A, one after another, twice: on an idle system, then while provider B delivers a
/// bulk package of BULK-MB (default 2,000 MB) — through its streaming, the broker's ingest and
/// its finalisation. Prints p50, p99 and max for each, and how many approvals fell in each of
/// B's phases. The last line is `urgent return p99 under bulk: N ms`.
enum ReturnBench {
    static func run(bulkMB: Int, count: Int) async throws {
        let logger = { var l = Logger(label: "custos-bench"); l.logLevel = .error; return l }()
        let (databaseURL, brokers) = BenchDeployment.servicesFromEnvironment()
        let synth = BenchDeployment.besideThis("custos-synth")
        let tag = BenchDeployment.newTag()
        let providerA = "bench-return-a-\(tag)", providerB = "bench-return-b-\(tag)"
        let deployment = try await BenchDeployment("return", tag: tag, provider: providerA, databaseURL: databaseURL, brokers: brokers)
        defer { deployment.remove() }
        let pkiB = try TestPKI(signerName: providerB)
        for (file, text) in [("provider-b-ca.pem", pkiB.providerCA), ("provider-b.pem", pkiB.signer), ("provider-b.key", pkiB.signerKey)] {
            try Data(text.utf8).write(to: URL(fileURLWithPath: deployment.path(file)))
        }
        let (pki, brokerConfiguration) = (deployment.pki, deployment.brokerConfiguration)
        func path(_ name: String) -> String { deployment.path(name) }

        let emergencies = 2 * (count + warmUp)
        let (duty, approver, urgent, bulk) = try await withBrokerStore(configuration: brokerConfiguration.database, signingKeyFile: nil, logger: logger) { store in
            let admin = CustodyEvent.Actor(type: .admin, id: "bench")
            try await store.registerProvider(id: providerA, certificate: pki.signer, caCertificate: pki.providerCA, by: admin)
            try await store.registerProvider(id: providerB, certificate: pkiB.signer, caCertificate: pkiB.providerCA, by: admin)
            let inv = try await store.addUser(name: "inv-\(tag)", role: .investigator, by: admin).0
            let duty = try await store.addUser(name: "duty-\(tag)", role: .dutyApprover, by: admin).token
            let approver = try await store.addUser(name: "appr-\(tag)", role: .approver, by: admin).token
            let c = try await store.createCase(title: "return benchmark", by: inv)
            let decision = try await store.uploadDocument(ByteBuffer(bytes: SyntheticDecision.pdf), mediaType: "application/pdf", by: inv).document
            func spec(_ provider: String, emergency: Bool) -> RequestSpec {
                RequestSpec(caseId: c.id, providerId: provider,
                            legalBasis: LegalBasis(decisionNumber: "QD-BENCH/2026", issuingAuthority: "Benchmark Authority", issuedOn: "2026-11-01",
                                                   document: decision),
                            targets: [Target(type: .msisdn, value: "+84912345678")], categories: [.traffic],
                            window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"),
                            priority: emergency ? .emergency : .normal,
                            emergency: emergency ? EmergencyGrounds(ground: .threatToLife, statement: "Synthetic emergency for the benchmark.") : nil)
            }
            var urgent: [UUID] = []
            for _ in 0..<emergencies {
                let id = try await store.createRequest(spec(providerA, emergency: true), by: inv)
                try await store.submit(id, by: inv)
                urgent.append(id)
            }
            let bulk = try await store.createRequest(spec(providerB, emergency: false), by: inv)
            try await store.submit(bulk, by: inv)
            return (duty, approver, urgent, bulk)
        }

        let (url, brokerTask) = try await deployment.startBroker(logger: logger)
        defer { brokerTask.cancel() }

        // Provider A answers each emergency with 200 CDR rows (one chunk); B's bulk package is
        // BULK-MB of them (about 400 bytes each with the padding).
        func connector(_ provider: String, key: String, certificate: String, records: Int) async throws -> Task<Void, any Error> {
            let configuration = try ConnectorConfiguration(reader: try await deployment.reader([
                "providerId": provider, "signingKeyFile": path(key), "certificateFile": path(certificate),
                "brokerPublicKeyFile": path("broker.pub"), "stateDirectory": path("state-\(provider)"),
                "tsa": ["url": url + "/tsa", "trustFile": path("tsa-ca.pem")],
                "adapters": ["traffic": ["command": [synth, "--records-per-target", "\(records)", "--padding", "260"]]],
                "concurrency": 2, "urgentConcurrency": 2, "kafka": ["groupId": "custos-connector-bench-\(provider)"],
            ], "connector-\(provider).json"))
            let producer = try KafkaProducer(configuration: configuration.kafka, logger: logger)
            let connector = try ProviderConnector(configuration: configuration, producer: producer, logger: logger)
            return Task {
                try await ServiceGroup(configuration: .init(services: [.init(service: connector), .init(service: KafkaProducerService(producer: producer))],
                                                            logger: logger)).run()
            }
        }
        let connectorA = try await connector(providerA, key: "provider.key", certificate: "provider.pem", records: 200)
        defer { connectorA.cancel() }
        let connectorB = try await connector(providerB, key: "provider-b.key", certificate: "provider-b.pem", records: bulkMB * 1_000_000 / 400)
        defer { connectorB.cancel() }

        let dutyClient = CustosClient(baseURL: url, token: duty)
        let approverClient = CustosClient(baseURL: url, token: approver)
        var next = urgent.makeIterator()
        func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 }
        func seconds(_ d: Duration) -> Double { ms(d) / 1000 }
        /// Approval → verified at the broker, for one emergency (polled every 5 ms).
        func once() async throws -> Double {
            let id = next.next()!
            let start = ContinuousClock.now
            _ = try await dutyClient.approve(id)
            let deadline = start + .seconds(120)
            while ContinuousClock.now < deadline {
                let state = try await dutyClient.request(id).state
                if state == .verified { return ms(ContinuousClock.now - start) }
                if state == .refused || state == .expired { break }
                try await Task.sleep(for: .milliseconds(5))
            }
            FileHandle.standardError.write(Data("custos-bench: emergency \(id.lowercased) was not verified within 120 s\n".utf8))
            exit(1)
        }
        func percentile(_ sorted: [Double], _ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        func report(_ label: String, _ s: [Double]) {
            let s = s.sorted()
            print(String(format: "%@ %d emergency approvals → verified at the broker: p50 %.0f ms, p99 %.0f ms, max %.0f ms",
                         label, s.count, percentile(s, 0.5), percentile(s, 0.99), s.last!))
        }

        // The first few set up connections, topics and metadata on every side: not counted.
        for _ in 0..<warmUp { _ = try await once() }
        var idle: [Double] = []
        for _ in 0..<count { idle.append(try await once()) }
        report("idle:      ", idle)

        // The bulk: B's package is approved; the emergencies are measured through its streaming,
        // the broker's ingest and its finalisation.
        let bulkStart = ContinuousClock.now
        _ = try await approverClient.approve(bulk)
        func bulkPhase() async throws -> String {
            let view = try await approverClient.request(bulk)
            if view.state == .verified { return "after" }
            return view.packages.contains { $0.chunksReceived > 0 } ? "receiving" : "extracting"
        }
        let watcher = Task {
            while true {
                if try await approverClient.request(bulk).state == .verified { return ContinuousClock.now }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        for _ in 0..<warmUp { _ = try await once() }
        var loaded: [Double] = []
        var phases: [String: Int] = [:]
        for _ in 0..<count {
            let phase = try await bulkPhase()
            loaded.append(try await once())
            phases[phase, default: 0] += 1
            // Spread over the bulk: while it is still coming, no faster than one a second.
            if phase != "after", let last = loaded.last, last < 1000 { try await Task.sleep(for: .milliseconds(1000 - Int(last))) }
        }
        report("under bulk:", loaded)
        let bulkVerified = try await withThrowingTaskGroup(of: ContinuousClock.Instant?.self) { group in
            group.addTask { try await watcher.value }
            group.addTask { try await Task.sleep(for: .seconds(1800)); return nil }
            let first = try await group.next()!
            group.cancelAll()
            return first
        }
        watcher.cancel()
        print(String(format: "bulk: provider B's package of %d MB, approval → verified in %@; emergencies measured while it was extracted: %d, streamed in: %d, after it was verified: %d",
                     bulkMB, bulkVerified.map { String(format: "%.1f s", seconds($0 - bulkStart)) } ?? "more than 30 min",
                     phases["extracting"] ?? 0, phases["receiving"] ?? 0, phases["after"] ?? 0))
        if (phases["after"] ?? 0) > count / 2 { print("note: most emergencies came after the bulk package was verified; run with a larger BULK-MB") }
        print("target: p99 < 2000 ms, max < 5000 ms under bulk")
        print(String(format: "urgent return p99 idle: %.0f ms", percentile(idle.sorted(), 0.99)))
        print(String(format: "urgent return p99 under bulk: %.0f ms", percentile(loaded.sorted(), 0.99)))
        connectorA.cancel()
        connectorB.cancel()
        brokerTask.cancel()
    }

    static let warmUp = 5
}
