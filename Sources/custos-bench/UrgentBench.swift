import Configuration
import CustosBroker
import CustosClient
import CustosConnector
import CustosCustody
import CustosEvidence
import CustosKafka
import CustosModel
import CustosRuntime
import CustosTestSupport
import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// `custos-bench urgent` (run by `ops/bench urgent`): the time from an emergency approval —
/// the duty approver's HTTP call to the broker — to the provider's connector holding the
/// request, over the real PostgreSQL and Kafka named by CUSTOS_DATABASE_URL and
/// CUSTOS_KAFKA_BROKERS. The broker (`buildApplication`, as `custos-broker serve` runs it) and
/// the connector run in this process, so both ends read one clock. COUNT approvals, one after
/// another, twice: on an idle system, then while LOAD-PACKAGES normal packages of LOAD-MB
/// each stream from the same connector into the same broker. The last line is
/// `urgent p99 under load: N ms`.
enum UrgentBench {
    /// Arrival times of requests at the connector, and whoever waits for one.
    final class Arrivals: Sendable {
        private let state = Mutex<(seen: [UUID: ContinuousClock.Instant], waiting: [UUID: CheckedContinuation<ContinuousClock.Instant, Never>])>(([:], [:]))

        func arrived(_ id: UUID) {
            let now = ContinuousClock.now
            let waiter = state.withLock { s -> CheckedContinuation<ContinuousClock.Instant, Never>? in
                if let w = s.waiting.removeValue(forKey: id) { return w }
                s.seen[id] = now
                return nil
            }
            waiter?.resume(returning: now)
        }

        func wait(_ id: UUID) async -> ContinuousClock.Instant {
            await withCheckedContinuation { c in
                let seen = state.withLock { s -> ContinuousClock.Instant? in
                    if let t = s.seen.removeValue(forKey: id) { return t }
                    s.waiting[id] = c
                    return nil
                }
                if let seen { c.resume(returning: seen) }
            }
        }
    }

    static func run(count: Int, loadPackages: Int, loadMB: Int) async throws {
        var logger = Logger(label: "custos-bench")
        logger.logLevel = .error
        let (databaseURL, brokers) = BenchDeployment.servicesFromEnvironment()
        let synth = BenchDeployment.besideThis("custos-synth")
        let tag = BenchDeployment.newTag()
        let provider = "bench-urgent-\(tag)"
        let deployment = try await BenchDeployment("urgent", tag: tag, provider: provider, databaseURL: databaseURL, brokers: brokers)
        defer { deployment.remove() }
        let (pki, brokerConfiguration) = (deployment.pki, deployment.brokerConfiguration)
        func path(_ name: String) -> String { deployment.path(name) }
        func reader(_ config: [String: Any], _ name: String) async throws -> ConfigReader { try await deployment.reader(config, name) }

        // People, the provider, and the requests waiting for approval.
        let emergencies = 2 * (count + warmUp)
        let (duty, approver, urgent, normal) = try await withBrokerStore(configuration: brokerConfiguration.database, signingKeyFile: nil, logger: logger) { store in
            let admin = CustodyEvent.Actor(type: .admin, id: "bench")
            try await store.registerProvider(id: provider, certificate: pki.signer, caCertificate: pki.providerCA, by: admin)
            let inv = try await store.addUser(name: "inv-\(tag)", role: .investigator, by: admin).0
            let duty = try await store.addUser(name: "duty-\(tag)", role: .dutyApprover, by: admin).token
            let approver = try await store.addUser(name: "appr-\(tag)", role: .approver, by: admin).token
            let c = try await store.createCase(title: "urgent benchmark", by: inv)
            let decision = try await store.uploadDocument(ByteBuffer(bytes: SyntheticDecision.pdf), mediaType: "application/pdf", by: inv).document
            func spec(_ emergency: Bool) -> RequestSpec {
                RequestSpec(caseId: c.id, providerId: provider,
                            legalBasis: LegalBasis(decisionNumber: "QD-BENCH/2026", issuingAuthority: "Benchmark Authority", issuedOn: "2026-11-01",
                                                   document: decision),
                            targets: [Target(type: .msisdn, value: "+84912345678")], categories: [emergency ? .subscriber : .traffic],
                            window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"),
                            priority: emergency ? .emergency : .normal,
                            emergency: emergency ? EmergencyGrounds(ground: .threatToLife, statement: "Synthetic emergency for the benchmark.") : nil)
            }
            var urgent: [UUID] = [], normal: [UUID] = []
            for _ in 0..<emergencies {
                let id = try await store.createRequest(spec(true), by: inv)
                try await store.submit(id, by: inv)
                urgent.append(id)
            }
            for _ in 0..<loadPackages {
                let id = try await store.createRequest(spec(false), by: inv)
                try await store.submit(id, by: inv)
                normal.append(id)
            }
            return (duty, approver, urgent, normal)
        }

        // The broker, as `custos-broker serve` assembles it.
        let (url, brokerTask) = try await deployment.startBroker(logger: logger)
        defer { brokerTask.cancel() }

        // The connector: an emergency asks for subscriber data, which the provider has none of
        // (a signed "no data" package goes back); the load asks for traffic, LOAD-MB per package.
        let recordsPerPackage = loadMB * 1_000_000 / 400
        let connectorConfiguration = try ConnectorConfiguration(reader: try await reader([
            "providerId": provider, "signingKeyFile": path("provider.key"), "certificateFile": path("provider.pem"),
            "brokerPublicKeyFile": path("broker.pub"), "stateDirectory": path("state"),
            "tsa": ["url": url + "/tsa", "trustFile": path("tsa-ca.pem")],
            "adapters": ["subscriber": ["command": ["/bin/sh", "-c", "cat >/dev/null"]],
                         "traffic": ["command": [synth, "--records-per-target", "\(recordsPerPackage)", "--padding", "260"]]],
            "concurrency": max(1, loadPackages), "urgentConcurrency": 2, "kafka": ["groupId": "custos-connector-bench-\(tag)"],
        ], "connector.json"))
        let arrivals = Arrivals()
        let producer = try KafkaProducer(configuration: connectorConfiguration.kafka, logger: logger)
        let connector = try ProviderConnector(configuration: connectorConfiguration, producer: producer, logger: logger) { id, _ in arrivals.arrived(id) }
        let connectorTask = Task {
            try await ServiceGroup(configuration: .init(services: [.init(service: connector), .init(service: KafkaProducerService(producer: producer))],
                                                        logger: logger)).run()
        }
        defer { connectorTask.cancel() }

        let dutyClient = CustosClient(baseURL: url, token: duty)
        var next = urgent.makeIterator()
        func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 }
        /// Approval → arrival, and of that the approval call itself (the broker's transaction).
        func measure(_ n: Int) async throws -> (arrival: [Double], call: [Double]) {
            var out: [Double] = [], calls: [Double] = []
            for _ in 0..<n {
                let id = next.next()!
                async let arrived = arrivals.wait(id)
                let start = ContinuousClock.now
                _ = try await dutyClient.approve(id)
                calls.append(ms(ContinuousClock.now - start))
                out.append(ms(await arrived - start))
            }
            return (out.sorted(), calls.sorted())
        }
        func percentile(_ sorted: [Double], _ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        func report(_ label: String, _ m: (arrival: [Double], call: [Double])) {
            let s = m.arrival
            print(String(format: "%@ %d emergency approvals → connector: p50 %.1f ms, p99 %.1f ms, max %.1f ms (the approval call alone: p50 %.1f ms, p99 %.1f ms)",
                         label, s.count, percentile(s, 0.5), percentile(s, 0.99), s.last!, percentile(m.call, 0.5), percentile(m.call, 0.99)))
        }

        // The first few set up connections and topic metadata on both sides: not counted.
        _ = try await measure(warmUp)
        let idle = try await measure(count)
        report("idle:      ", idle)

        // The load: normal requests approved, their packages streaming in.
        let approverClient = CustosClient(baseURL: url, token: approver)
        for id in normal { _ = try await approverClient.approve(id) }
        func receivedBytes() async throws -> Int64 {
            var total: Int64 = 0
            for id in normal {
                for p in try await approverClient.request(id).packages { total += Int64(p.chunksReceived) * Int64(Topics.maximumChunkBytes) }
            }
            return total
        }
        let streamingDeadline = ContinuousClock.now + .seconds(300)
        while try await receivedBytes() == 0 && ContinuousClock.now < streamingDeadline { try await Task.sleep(for: .milliseconds(100)) }
        _ = try await measure(warmUp)
        let before = try await receivedBytes()
        let started = ContinuousClock.now
        let loaded = try await measure(count)
        let elapsed = ContinuousClock.now - started
        let after = try await receivedBytes()
        let total = Int64(loadPackages) * Int64(loadMB) * 1_000_000
        report("under load:", loaded)
        print(String(format: "load: %d normal packages of %d MB; %.0f MB streamed into the broker during the %.1f s measured (%.0f MB/s), %.0f MB before it",
                     loadPackages, loadMB, Double(after - before) / 1e6, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18,
                     Double(after - before) / 1e6 / max(0.001, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18),
                     Double(before) / 1e6))
        if after >= total { print("note: the load finished streaming before the last urgent approval; the tail was measured without it") }
        print("target: p99 < 100 ms in both cases")
        print(String(format: "urgent p99 under load: %.0f ms", percentile(loaded.arrival, 0.99)))
        connectorTask.cancel()
        brokerTask.cancel()
    }

    static let warmUp = 10
}
