import Crypto
import CustosBroker
import CustosCustody
import CustosEvidence
import CustosMerkle
import CustosModel
import CustosTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// `custos-bench custody` (run by `ops/bench custody`): the custody log against the real
/// PostgreSQL named by CUSTOS_DATABASE_URL, in a schema of its own that is dropped afterwards.
/// In one run it measures
///   1. the baseline: one event per transaction, one client (what a naive log does);
///   2. appends per second through the broker's group-committing appender, many concurrent
///      callers, each append durable (committed) before it returns, with the integrator issuing
///      signed, RFC 3161 time-stamped checkpoints every second meanwhile;
///   3. the time from an append's return to the commit of the first checkpoint including it;
///   4. the time to build an inclusion proof once the log holds 1,000,000 events (and, for
///      information, the time `custos-broker audit` takes over that log);
///   5. storage bytes per event.
/// The last line is `custody appends/s: N`.
let arguments = CommandLine.arguments.dropFirst()
if arguments.first == "criteria" {
    try CriteriaBench.run(records: arguments.dropFirst().first.flatMap { Int($0) } ?? 2_000_000)
    exit(0)
}
if arguments.first == "urgent" {
    try await UrgentBench.run(count: arguments.dropFirst().first.flatMap { Int($0) } ?? 1000,
                              loadPackages: arguments.dropFirst(2).first.flatMap { Int($0) } ?? 10,
                              loadMB: arguments.dropFirst(3).first.flatMap { Int($0) } ?? 100)
    exit(0)
}
if arguments.first == "return" {
    try await ReturnBench.run(bulkMB: arguments.dropFirst().first.flatMap { Int($0) } ?? 2000,
                              count: arguments.dropFirst(2).first.flatMap { Int($0) } ?? 100)
    exit(0)
}
if arguments.first == "portal" {
    let n = arguments.dropFirst().compactMap { Int($0) }
    try await PortalBench.run(requests: n.first ?? 100_000, cases: n.dropFirst().first ?? 5_000, seconds: n.dropFirst(2).first ?? 10)
    exit(0)
}
if arguments.first == "lists" {
    try await ListsBench.run(requests: arguments.dropFirst().first.flatMap { Int($0) } ?? 100_000, cases: arguments.dropFirst(2).first.flatMap { Int($0) } ?? 5_000,
                             seconds: arguments.dropFirst(3).first.flatMap { Int($0) } ?? 10)
    exit(0)
}
if arguments.first == "connector" {
    let rest = arguments.dropFirst().filter { $0 != "--without-baseline" }
    try await ConnectorBench.run(records: rest.first.flatMap { Int($0) } ?? 10_000_000, padding: rest.dropFirst().first.flatMap { Int($0) } ?? 0,
                                 baseline: !arguments.contains("--without-baseline"))
    exit(0)
}
if arguments.first == "kafka-noise" {
    let rest = Array(arguments.dropFirst())
    guard rest.count >= 3, let count = Int(rest[2]) else {
        FileHandle.standardError.write(Data("usage: custos-bench kafka-noise BROKERS TOPIC COUNT [REQUEST-ID]\n".utf8))
        exit(2)
    }
    try await ChaosNoise.run(brokers: rest[0], topic: rest[1], count: count, requestId: rest.count > 3 ? UUID(uuidString: rest[3]) ?? UUID() : UUID())
    exit(0)
}
guard arguments.first == "custody" else {
    FileHandle.standardError.write(Data("usage: custos-bench custody [SECONDS] [CONCURRENCY] [PROOF-LOG-SIZE] | custos-bench urgent [COUNT] [LOAD-PACKAGES] [LOAD-MB] | custos-bench criteria [RECORDS] | custos-bench connector [RECORDS] [PADDING] [--without-baseline] | custos-bench return [BULK-MB] [COUNT] | custos-bench lists [REQUESTS] [CASES] [SECONDS] | custos-bench portal [REQUESTS] [CASES] [SECONDS] | custos-bench kafka-noise BROKERS TOPIC COUNT [REQUEST-ID]\n".utf8))
    exit(2)
}
let seconds = arguments.dropFirst().first.flatMap { Double($0) } ?? 20
let concurrency = arguments.dropFirst(2).first.flatMap { Int($0) } ?? 2048
let proofLogSize = arguments.dropFirst(3).first.flatMap { Int($0) } ?? 1_000_000

try await CustodyBench.run(seconds: seconds, concurrency: concurrency, proofLogSize: proofLogSize)

enum CustodyBench {
    static func run(seconds: Double, concurrency: Int, proofLogSize: Int) async throws {
        var logger = Logger(label: "custos-bench")
        logger.logLevel = .error
        guard let url = ProcessInfo.processInfo.environment["CUSTOS_DATABASE_URL"] else {
            FileHandle.standardError.write(Data("custos-bench: set CUSTOS_DATABASE_URL (ops/services env)\n".utf8))
            exit(2)
        }
        let schema = "bench_custody_\(UInt32.random(in: 0...UInt32.max))"
        var db = try DatabaseConfiguration(url: url, schema: schema)
        db.maxConnections = 8
        let client = db.makeClient(logger: logger)
        let pki = try TestPKI()
        let signer = try CheckpointSigner(origin: "bench.custos/custody", certificate: pki.custodyCertificate, key: pki.custodyKey,
                                      timeStamp: CheckpointSigner.stamping(with: pki.tsa))

        func event(_ n: Int) -> CustodyEvent {
            // The size of a typical event: a download, with the client and two hashes.
            CustodyEvent(kind: .packageDownloaded, at: Timestamp.now(), actor: .init(type: .user, id: "investigator-\(n % 97)", address: "10.20.\(n % 250).\(n % 199)", agent: "custos/1.0"),
                         subject: .init(requestId: UUID(), packageId: UUID()),
                         objects: ["manifestSha256": Digest.sha256Hex(Array("m\(n)".utf8)), "chunksRoot": Digest.sha256Hex(Array("c\(n)".utf8))])
        }

        func percentile(_ sorted: [Double], _ p: Double) -> Double { sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1000 + Double(d.components.attoseconds) / 1e15 }

        /// Checkpoints as they commit: (size, when).
        let checkpoints = Mutex<[(UInt64, ContinuousClock.Instant)]>([])

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await Migrator.migrate(client: client, schema: schema, logger: logger)
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", logger: logger)

            // 1. Baseline: one event per transaction, one client, for a few seconds.
            var baselineCount = 0
            let baselineStart = ContinuousClock.now
            while ContinuousClock.now - baselineStart < .seconds(4) {
                let e = event(baselineCount)
                _ = try await client.transaction(logger: logger) { conn in try await CustodyLog.append([(e, entry: try e.entry())], on: conn, logger: logger) }
                baselineCount += 1
            }
            let baselineRate = Double(baselineCount) / (ms(ContinuousClock.now - baselineStart) / 1000)
            print(String(format: "baseline (one event per transaction, 1 client): %8.0f events/s", baselineRate))

            // 2 and 3. Concurrent appends for `seconds`, the integrator checkpointing every second.
            let integrator = CustodyIntegrator(client: client, signer: signer, interval: .seconds(1), logger: logger) { outcome in
                let now = ContinuousClock.now
                checkpoints.withLock { $0.append((outcome.checkpoint.size, now)) }
            }
            let integration = Task { try await integrator.run() }
            let start = ContinuousClock.now
            let deadline = start + .seconds(seconds)
            let appended = try await withThrowingTaskGroup(of: [(Int64, ContinuousClock.Instant)].self) { appenders in
                for worker in 0..<concurrency {
                    appenders.addTask {
                        var mine: [(Int64, ContinuousClock.Instant)] = []
                        var n = worker
                        while ContinuousClock.now < deadline {
                            let index = try await store.custody.append(event(n))
                            mine.append((index, ContinuousClock.now))
                            n += concurrency
                        }
                        return mine
                    }
                }
                return try await appenders.reduce(into: []) { $0 += $1 }
            }
            let elapsed = ms(ContinuousClock.now - start) / 1000
            let rate = Double(appended.count) / elapsed
            // Wait for the checkpoint that includes the last append.
            let highest = UInt64(appended.map(\.0).max() ?? 0)
            while !(checkpoints.withLock { $0.contains { $0.0 > highest } }) { try await Task.sleep(for: .milliseconds(50)) }
            integration.cancel()
            let heads = checkpoints.withLock { $0 }.sorted { $0.0 < $1.0 }
            var latencies: [Double] = []
            latencies.reserveCapacity(appended.count)
            for (index, at) in appended {
                // The first checkpoint whose size exceeds the index (binary search over sizes).
                var lo = 0, hi = heads.count - 1
                while lo < hi { let mid = (lo + hi) / 2; if heads[mid].0 > UInt64(index) { hi = mid } else { lo = mid + 1 } }
                latencies.append(max(0, ms(heads[lo].1 - at)))
            }
            latencies.sort()
            print(String(format: "appends: %d events in %.1f s from %d concurrent callers, each durable before returning; %d checkpoints meanwhile",
                         appended.count, elapsed, concurrency, heads.count))
            print(String(format: "append -> signed, time-stamped checkpoint: p50 %.0f ms, p99 %.0f ms, max %.0f ms (interval 1 s; target p99 < 1500 ms)",
                         percentile(latencies, 0.5), percentile(latencies, 0.99), latencies.last ?? .nan))

            // 4. Fill the log up to `proofLogSize` events in large transactions, integrate, time proofs.
            var size = Int(highest) + 1
            let fillStart = ContinuousClock.now
            while size < proofLogSize {
                let n = min(20_000, proofLogSize - size)
                let batch = try (0..<n).map { i -> (CustodyEvent, entry: [UInt8]) in let e = event(size + i); return (e, entry: try e.entry()) }
                _ = try await client.transaction(logger: logger) { conn in try await CustodyLog.append(batch, on: conn, logger: logger) }
                size += n
            }
            while let outcome = try await integrator.integrateOnce(), outcome.checkpoint.size < UInt64(size) {}
            let fillSeconds = ms(ContinuousClock.now - fillStart) / 1000
            let head = try await store.latestCheckpoint()!
            var proofBuild: [Double] = [], proofCall: [Double] = []
            var rng = SystemRandomNumberGenerator()
            for _ in 0..<1_000 {
                let index = UInt64.random(in: 0..<head.size, using: &rng)
                let t0 = ContinuousClock.now
                let plan = try MerkleProof.inclusionPlan(index: index, size: head.size)
                let hashes = try await store.build(plan)
                proofBuild.append(ms(ContinuousClock.now - t0))
                precondition(hashes.count == plan.elements.count)
                let t1 = ContinuousClock.now
                let full = try await store.inclusionProof(index: index, size: head.size)
                proofCall.append(ms(ContinuousClock.now - t1))
                // Spot-check that what was timed is a proof.
                if proofCall.count % 100 == 0 {
                    let cp = try Checkpoint(text: Array(full.checkpoint.text.utf8))
                    try MerkleProof.verifyInclusion(leafHash: CustodyEvent.leafHash(entry: Array(full.entry.utf8)), index: index, size: cp.size,
                                                    proof: full.proof.map { SHA256Digest(bytes: Data(base64Encoded: $0)!)! }, root: cp.root)
                }
            }
            proofBuild.sort()
            proofCall.sort()
            print(String(format: "log filled to %d events and integrated in %.1f s", head.size, fillSeconds))
            print(String(format: "inclusion proof at %d events: build (plan, one tile query, hashing) p50 %.3f ms, p99 %.3f ms; whole API answer (event, checkpoint, proof) p50 %.3f ms (target < 1 ms)",
                         head.size, percentile(proofBuild, 0.5), percentile(proofBuild, 0.99), percentile(proofCall, 0.5)))

            // The audit recomputes the whole tree from the stored events.
            let auditStart = ContinuousClock.now
            let audit = try await store.audit(logCertificate: pki.custodyCertificate)
            precondition(audit.ok, "the audit found problems in a log nobody tampered with: \(audit.problems)")
            print(String(format: "audit of %d events against %d checkpoints: %.1f s, consistent", audit.events, audit.checkpoints,
                         ms(ContinuousClock.now - auditStart) / 1000))

            // 5. Storage.
            try await client.query("VACUUM ANALYZE custody_events", logger: logger)
            let sizes = try await client.query("""
                SELECT pg_total_relation_size('custody_events'), pg_total_relation_size('custody_tiles'),
                       pg_total_relation_size('custody_checkpoints'), (SELECT count(*) FROM custody_events)
                """, logger: logger).decode((Int64, Int64, Int64, Int64).self).first { _ in true }!
            let entryBytes = try await client.query("SELECT avg(length(entry))::float8 FROM custody_events", logger: logger).decode(Double.self).first { _ in true }!
            let count = Double(sizes.3)
            print(String(format: "storage: %.0f bytes/event in custody_events (entry %.0f bytes, row and two indexes the rest), %.1f in tiles, %.1f in checkpoints; %.0f bytes/event in all",
                         Double(sizes.0) / count, entryBytes, Double(sizes.1) / count, Double(sizes.2) / count, Double(sizes.0 + sizes.1 + sizes.2) / count))
            print(String(format: "appends/s vs baseline: %.1fx (target >= 20,000 events/s)", rate / baselineRate))
            print(String(format: "custody appends/s: %.0f", rate))
            try await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \"\(schema)\" CASCADE"))
        }
    }
}
