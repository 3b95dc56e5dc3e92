@testable import CustosBroker
import CustosModel
import CustosRuntime
import Foundation
import PostgresNIO
import Testing

/// Several broker instances (issue 15): two `custos-broker serve` processes on one PostgreSQL,
/// one Kafka consumer group and one chunk store. The one ingesting a package is killed with
/// `kill -9` in the middle of it — its custody integrator running its one-second checkpoints,
/// its outbox relay, its clock watcher: the other takes its partitions and its work over, and
/// the package is verified once, with nothing lost and nothing stored twice. Then one is killed
/// inside a custody checkpoint's transaction, and the other checkpoints in its place.
@Suite("Several broker instances", .serialized, .timeLimit(.minutes(6)))
struct BrokerFailoverTests {
    /// The messages this instance applied for `provider` on its normal lane (its metrics).
    func applied(_ url: String, provider: String) async throws -> Int {
        let metrics = try await TestServices.httpGet(url + "/metrics").body
        return metrics.split(separator: "\n").filter {
            $0.hasPrefix("custos_ingest_messages_total{") && $0.contains("provider=\"\(provider)\"") && $0.contains("lane=\"normal\"")
        }.reduce(0) { $0 + (Int(Double($1.split(separator: " ").last ?? "0") ?? 0)) }
    }

    @Test func theOtherInstanceTakesOverAKilledOnesPartitionsAndWorkAndThePackageIsVerifiedOnce() async throws {
        // A group member that dies is noticed within the session time-out (librdkafka's default
        // is 45 s): shortened here, as an operator would for fast failover.
        let d = try Deployment(adapter: [ExchangeEndToEndTests.synth, "--records-per-target", "100000", "--padding", "330"], inFlightChunks: 2,
                               environment: ["CUSTOS_KAFKA_PROPERTIES": "session.timeout.ms=6000,heartbeat.interval.ms=500"])
        defer { d.stop() }
        try await d.setUp()
        // A time-stamping authority apart from both instances (a broker on a schema of its own,
        // with no provider: it consumes nothing), so that the connector keeps its TSA.
        let (tsa, tsaURL) = try await d.startAnotherBroker("tsa", environment: [
            "CUSTOS_DATABASE_SCHEMA": TestServices.unique("tsa_"), "CUSTOS_KAFKA_GROUP_ID": TestServices.unique("custos-tsa-"),
        ])
        defer { tsa.stop() }
        try await d.startBroker()
        let (second, secondURL) = try await d.startAnotherBroker("broker-2")
        defer { second.stop() }
        let firstURL = d.url
        #expect(try await TestServices.httpGet(firstURL + "/health").status == 200)
        try await d.startConnector(tsa: tsaURL)
        let request = try await d.submitRequest(targets: ["msisdn:+84912345678"], categories: ["traffic"])
        _ = try await d.cliOK(d.approver, ["request", "approve", request])

        // Whichever instance ingests the provider's messages is killed while chunks arrive.
        var ingesting: (process: ChildProcess, url: String)?
        var received = 0
        let deadline = ContinuousClock.now + .seconds(180)
        while ContinuousClock.now < deadline {
            let status = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
            received = ((status["packages"] as? [[String: Any]])?.first?["chunksReceived"] as? Int) ?? 0
            if received >= 10 {
                let (a, b) = (try await applied(firstURL, provider: d.provider), try await applied(secondURL, provider: d.provider))
                ingesting = a >= b ? (d.broker!, firstURL) : (second, secondURL)
                break
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        let victim = try #require(ingesting, "no chunk arrived within 180 s")
        victim.process.kill9()
        let survivor = victim.url == firstURL ? secondURL : firstURL
        d.url = survivor

        // The survivor takes the partitions over; the package completes and verifies.
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "240"])
        #expect(watched.status == 0, "survivor: \((victim.url == firstURL ? second : d.broker!).output.suffix(3000))\nconnector: \(d.connector!.output.suffix(2000))")
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        #expect(view["state"] as? String == "verified")
        let packages = try #require(view["packages"] as? [[String: Any]])
        try #require(packages.count == 1)
        let packageId = try #require(packages[0]["id"] as? String)
        let chunkCount = try #require(packages[0]["chunkCount"] as? Int)
        #expect(received < chunkCount, "killed after the last chunk (\(received) of \(chunkCount))")
        #expect(try await applied(survivor, provider: d.provider) > 0, "the survivor applied none of the provider's messages")

        // Verified once, each chunk indexed and stored once, every message relayed, and the
        // custody log's checkpoints went on (the survivor integrates; the audit finds it whole).
        let db = try DatabaseConfiguration(url: TestServices.databaseURL(), schema: try #require(d.env["CUSTOS_DATABASE_SCHEMA"]))
        let client = db.makeClient(logger: TestServices.logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            func count(_ sql: String) async throws -> Int {
                try await client.query(PostgresQuery(unsafeSQL: sql)).collect()[0].decode(Int.self)
            }
            #expect(try await count("SELECT count(*) FROM custody_events WHERE kind = 'package.verdict' AND package_id = '\(packageId)'") == 1)
            #expect(try await count("SELECT count(*) FROM package_chunks WHERE package_id = '\(packageId)'") == chunkCount)
            /// The count `sql` gives once it is 0, or after 30 s.
            func settled(_ sql: String) async throws -> Int {
                let deadline = ContinuousClock.now + .seconds(30)
                var n = try await count(sql)
                while n != 0 && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(200))
                    n = try await count(sql)
                }
                return n
            }
            let lag = try await settled("SELECT (SELECT count(*) FROM custody_events) - (SELECT coalesce(max(size), 0) FROM custody_checkpoints)")
            #expect(lag == 0, "\(lag) custody events never reached a checkpoint")
            let waiting = try await settled("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
            #expect(waiting == 0, "\(waiting) outbox messages never relayed")
        }
        // One file per chunk; a write the killed instance had begun may have left its temporary
        // file, which is never served and is swept once an hour old.
        let files = try FileManager.default.subpathsOfDirectory(atPath: d.path("chunks")).filter { $0.contains("/") }
        let stored = files.filter { !$0.hasSuffix(".tmp") }
        #expect(stored.count == chunkCount, "\(stored.count) files for \(chunkCount) chunks")
        #expect(files.count - stored.count <= 2, "\(files.count - stored.count) unfinished writes")
        let store = try DirectoryChunkStore(root: URL(fileURLWithPath: d.path("chunks")), key: DirectoryChunkStore.loadKey(path: d.path("storage.key")))
        #expect(store.sweepTemporaryFiles(olderThan: 0) == files.count - stored.count)
        #expect(try FileManager.default.subpathsOfDirectory(atPath: d.path("chunks")).filter { $0.contains("/") }.count == chunkCount)
        #expect(try await d.admin(["audit"]).hasPrefix("custody audit: CONSISTENT"))
        let health = try await TestServices.httpGet(survivor + "/health")
        #expect(health.status == 200 && health.body.contains("\"custody\":\"ok\""), "\(health.body)")

        // Then an instance killed in the middle of a checkpoint: a third joins, and the one whose
        // integrator is inside its checkpoint transaction (integration lock taken, new leaves
        // read and hashed, its tiles being written) is killed there. Its transaction rolls back, its
        // advisory lock goes with it, and the other integrates the same events into the next
        // checkpoint: the log stays whole.
        let (third, thirdURL) = try await d.startAnotherBroker("broker-3")
        defer { third.stop() }
        let survivorProcess = victim.url == firstURL ? second : d.broker!
        let blocker = db.makeClient(logger: TestServices.logger, applicationName: "custos-tests")
        do { try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await blocker.run() }
            defer { group.cancelAll() }
            let checkpointsBefore = try await blocker.query("SELECT count(*) FROM custody_checkpoints").collect()[0].decode(Int.self)
            let killed: ChildProcess = try await blocker.withConnection { conn in
                // Holding the tiles in EXCLUSIVE mode lets proofs read them but stops the integrator
                // that holds the integration lock at its tile INSERT. (The checkpoints table is
                // append-only: not even the broker's role may lock it.)
                try await conn.query("BEGIN", logger: TestServices.logger)
                try await conn.query("LOCK TABLE custody_tiles IN EXCLUSIVE MODE", logger: TestServices.logger)
                _ = try await d.submitRequest(targets: ["msisdn:+84912345679"])  // new custody events to integrate
                var holder: Int32?
                let deadline = ContinuousClock.now + .seconds(30)
                while holder == nil && ContinuousClock.now < deadline {
                    for try await name in try await blocker.query("""
                        SELECT application_name FROM pg_stat_activity
                        WHERE application_name LIKE 'custos-broker/%' AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO custody_tiles%'
                        """).decode(String.self) { holder = Int32(name.split(separator: "/").last ?? "") }
                    if holder == nil { try await Task.sleep(for: .milliseconds(100)) }
                }
                let pid = try #require(holder, "no instance reached its checkpoint's tile INSERT within 30 s")
                let killed = try #require([survivorProcess, third].first { $0.process.processIdentifier == pid }, "pid \(pid) is neither instance")
                killed.kill9()
                try await conn.query("COMMIT", logger: TestServices.logger)
                return killed
            }
            let alive = killed === third ? survivor : thirdURL
            // The living instance checkpoints every event, past the killed one's attempt.
            let deadline = ContinuousClock.now + .seconds(30)
            var lag = -1
            while lag != 0 && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(200))
                lag = try await blocker.query("SELECT (SELECT count(*) FROM custody_events) - (SELECT coalesce(max(size), 0) FROM custody_checkpoints)")
                    .collect()[0].decode(Int.self)
            }
            #expect(lag == 0, "\(lag) custody events never reached a checkpoint after the kill")
            let checkpointsAfter = try await blocker.query("SELECT count(*) FROM custody_checkpoints").collect()[0].decode(Int.self)
            #expect(checkpointsAfter > checkpointsBefore)
            let health = try await TestServices.httpGet(alive + "/health")
            #expect(health.status == 200 && health.body.contains("\"custody\":\"ok\""), "\(health.body)")
        } } catch { Issue.record("\(String(reflecting: error))"); throw error }
        #expect(try await d.admin(["audit"]).hasPrefix("custody audit: CONSISTENT"))
    }

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }
}
