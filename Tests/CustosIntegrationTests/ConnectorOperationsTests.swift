import CustosEvidence
import CustosKafka
import CustosModel
import CustosRuntime
import CustosTestSupport
import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import PostgresNIO
import Testing

/// The connector as its operators live with it, as real processes over the real Kafka and
/// PostgreSQL: `custos-connector check`, the metrics and health endpoint, the sql and file-drop
/// adapters in a whole exchange, and a crash while an adapter runs.
@Suite("Connector operations", .serialized, .timeLimit(.minutes(10)))
struct ConnectorOperationsTests {
    static let synth = ExchangeEndToEndTests.synth

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    func lines(_ path: String) -> Int { ((try? String(contentsOfFile: path, encoding: .utf8)) ?? "").split(separator: "\n").count }

    func waitFor(_ path: String, _ deadline: ContinuousClock.Instant) async throws {
        while !FileManager.default.fileExists(atPath: path) && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        try #require(FileManager.default.fileExists(atPath: path), "\(path) never appeared")
    }

    @Test func aConnectorKilledWhileAnAdapterRunsDoesNotRunTheAdaptersThatFinished() async throws {
        let d = try Deployment(adapter: [Self.synth])
        defer { d.stop() }
        let (trafficRuns, locationRuns, release) = (d.path("runs-traffic"), d.path("runs-location"), d.path("release"))
        d.connectorConfig["adapters"] = [
            "traffic": ["command": ["/bin/sh", "-c", "echo run >> \(trafficRuns); exec \(Self.synth) --records-per-target 50"]],
            // Holds on until the test lets it go, the first time; then writes its records.
            "location": ["command": ["/bin/sh", "-c", "echo run >> \(locationRuns); while [ ! -e \(release) ]; do sleep 0.1; done; exec \(Self.synth) --records-per-target 20"]],
        ]
        try await d.setUp()
        try await d.startBroker()
        try await d.startConnector()
        let request = try await d.submitRequest(categories: ["traffic", "location"])
        _ = try await d.cliOK(d.approver, ["request", "approve", request])
        // Traffic has finished (its spools are durable), location is running: kill -9.
        let deadline = ContinuousClock.now + .seconds(120)
        try await waitFor(locationRuns, deadline)
        try await waitFor(d.path("state/jobs/\(request)/results/done-traffic.json"), deadline)
        d.connector!.kill9()
        try await d.startConnector()
        try await waitFor(d.path("state/jobs/\(request)/results/done-traffic.json"), deadline)
        while lines(locationRuns) < 2 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        _ = FileManager.default.createFile(atPath: release, contents: nil)
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "120"])
        #expect(watched.status == 0, "connector: \(d.connector!.output.suffix(2000))")
        #expect(lines(trafficRuns) == 1, "the finished traffic adapter ran again")
        #expect(lines(locationRuns) == 2)
        #expect(d.connector!.output.contains("adapter finished before the restart; not run again"))
        // Every record of both, once: 2 targets × (50 + 20).
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        let packageId = try #require((view["packages"] as? [[String: Any]])?.first?["id"] as? String)
        let package = try json(try await d.cliOK(d.investigator, ["package", "show", packageId, "--json"]))
        let manifest = try #require(package["manifest"] as? [String: Any])
        #expect((manifest["content"] as? [String: Any])?["recordCount"] as? Int == 140)
        #expect((package["criteria"] as? [String: Any])?["admissible"] as? Bool == true, "\(package["criteria"] ?? "")")
    }

    /// A request whose `requestHash` is not the SHA-256 of its request member is refused with
    /// `request-hash-mismatch` (the hash is taken over the member as received). The broker
    /// cannot apply that refusal — the request was never approved — and answers it with a
    /// signed message receipt that the connector reports: both sides learn why.
    @Test func aRequestWhoseHashDoesNotMatchIsRefusedAndTheBrokerSaysWhyItCannotApplyTheRefusal() async throws {
        let d = try Deployment(adapter: [Self.synth])
        defer { d.stop() }
        try await d.setUp()
        try await d.startBroker()
        let request = try #require(UUID(uuidString: try await d.submitRequest(categories: ["traffic"])))
        var spec = SyntheticRequest.spec
        spec.providerId = d.provider
        var approved = SyntheticRequest.approve(spec)
        approved.requestId = request
        let brokerKey = try SigningKey.load(path: d.path("broker.key"))
        let envelope = Envelope(type: .request, id: UUID(), requestId: request, sender: "broker",
                                body: RequestBody(request: approved, requestHash: String(repeating: "a", count: 64), deliverBy: nil))
        let producer = try KafkaProducer(configuration: try TestServices.kafka(), logger: TestServices.logger)
        defer { producer.shutdown() }
        _ = try await producer.ensureTopics([Topics.toProvider(d.provider)])
        try await producer.send(OutgoingMessage(topic: Topics.toProvider(d.provider), key: Array(request.lowercased.utf8),
                                                value: try SignedEnvelope.encode(envelope, signer: brokerKey)))
        try await d.startConnector()
        let connector = try #require(d.connector)
        _ = try await connector.waitFor("request refused: its requestHash is not the SHA-256 of its request", timeout: .seconds(60))
        let answer = try await connector.waitFor("the broker could not apply a message", timeout: .seconds(60))
        #expect(answer.contains("refusal") && answer.contains("not dispatched"), "\(answer)")
        #expect(!FileManager.default.fileExists(atPath: d.path("state/jobs/\(request.lowercased)/request.json")), "nothing was started")
    }

    /// "No data, 2 records not sent: unreadable target" — in the signed manifest, not only in
    /// the operator's log: the provider's system returned two records for the number, written
    /// as a number that is none, and one with no time. The package says so and đủ warns.
    @Test func recordsThatCouldNotBeReadAreCountedInTheSignedManifestAndĐủWarns() async throws {
        let d = try Deployment(adapter: [Self.synth])
        defer { d.stop() }
        func line(_ value: String, time: String?) -> String {
            #"{"category":"traffic","record":{"direction":"outgoing","durationSeconds":61,"otherParty":"+84907000123"},"target":{"type":"msisdn","value":"\#(value)"}"#
                + (time.map { #","time":"\#($0)"}"# } ?? "}")
        }
        let output = [#"{"coverage":{"from":"2026-11-01T00:00:00Z","to":"2026-11-20T00:00:00Z"}}"#,
                      line("+84 12", time: "2026-11-05T08:30:00Z"), line("call me maybe", time: "2026-11-05T08:31:00Z"),
                      line("+84912345678", time: nil), line("+84987654321", time: "2026-11-05T08:32:00Z")].joined(separator: "\n") + "\n"
        try Data(output.utf8).write(to: URL(fileURLWithPath: d.path("export.ndjson")))
        d.connectorConfig["adapters"] = ["traffic": ["command": ["/bin/cat", d.path("export.ndjson")]]]
        try await d.setUp()
        try await d.startBroker()
        try await d.startConnector()
        let request = try await d.submitRequest(targets: ["msisdn:+84912345678", "msisdn:+84987654321"], categories: ["traffic"])
        _ = try await d.cliOK(d.approver, ["request", "approve", request])
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "60"])
        #expect(watched.status == 0, "connector: \(d.connector!.output.suffix(3000))")
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        let packageId = try #require((view["packages"] as? [[String: Any]])?.first?["id"] as? String)
        let package = try json(try await d.cliOK(d.investigator, ["package", "show", packageId, "--json"]))
        let manifest = try #require(package["manifest"] as? [String: Any])
        let results = try #require(manifest["results"] as? [[String: Any]])
        #expect(results.map { $0["status"] as? String } == ["no-data", "data"])
        func notSent(_ value: Any?) -> [String] {
            (value as? [[String: Any]] ?? []).map { "\($0["category"] ?? "-") \($0["reason"] ?? "") \($0["count"] ?? "")" }
        }
        #expect(notSent(results[0]["notSent"]) == ["- unreadable-time 1"])
        #expect(results[1]["notSent"] == nil)
        #expect(notSent(manifest["notSent"]) == ["traffic unreadable-target 2"])
        let criteria = try #require(package["criteria"] as? [String: Any])
        #expect(criteria["admissible"] as? Bool == false)
        let complete = try #require((criteria["criteria"] as? [String: Any])?["complete"] as? [String: Any])
        let reasons = (complete["reasons"] as? [[String: Any]] ?? []).map { "\($0["code"] ?? "") \($0["status"] ?? "") \($0["count"] ?? "")" }
        #expect(Set(reasons) == ["records-not-sent warn 3", "no-data-with-records-not-sent warn 1"], "\(reasons)")
        #expect(!d.connector!.output.contains("+849") && !d.connector!.output.contains("call me"), "the connector's log names a target")
    }

    /// SIGTERM stops the connector within 10 s even while an adapter runs — one that ignores
    /// SIGTERM and leaves a child holding its output, here — and the job is kept: the next
    /// start runs it to the end (it used to need SIGKILL).
    @Test func sigtermStopsTheConnectorPromptlyAndKeepsTheJob() async throws {
        let d = try Deployment(adapter: [Self.synth])
        defer { d.stop() }
        let (runs, release) = (d.path("runs"), d.path("release"))
        d.connectorConfig["adapters"] = [
            "traffic": ["command": ["/bin/sh", "-c",
                                    "echo run >> \(runs); if [ ! -e \(release) ]; then trap '' TERM; sleep 600 & wait; sleep 600; fi; exec \(Self.synth) --records-per-target 10"]],
        ]
        try await d.setUp()
        try await d.startBroker()
        try await d.startConnector()
        let request = try await d.submitRequest(categories: ["traffic"])
        _ = try await d.cliOK(d.approver, ["request", "approve", request])
        try await waitFor(runs, ContinuousClock.now + .seconds(120))
        try await Task.sleep(for: .milliseconds(500))
        let connector = try #require(d.connector)
        let stoppedAt = ContinuousClock.now
        kill(connector.process.processIdentifier, SIGTERM)
        while connector.process.isRunning && ContinuousClock.now - stoppedAt < .seconds(15) { try await Task.sleep(for: .milliseconds(100)) }
        let took = ContinuousClock.now - stoppedAt
        if connector.process.isRunning { connector.kill9() }
        try #require(took < .seconds(10), "the connector took \(took) to stop")
        #expect(connector.process.terminationReason == .exit, "it was killed, not stopped")
        #expect(connector.output.contains("stopped for shutdown"), "\(connector.output.suffix(2000))")
        #expect(!connector.output.contains("refusing the request"))
        #expect(FileManager.default.fileExists(atPath: d.path("state/jobs/\(request)/request.json")))
        // The next start resumes the job, and this time the adapter finishes.
        _ = FileManager.default.createFile(atPath: release, contents: nil)
        try await d.startConnector()
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "120"])
        #expect(watched.status == 0, "connector: \(d.connector!.output.suffix(2000))")
        #expect(lines(runs) == 2)
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        #expect(view["state"] as? String == "verified")
    }

    @Test func checkTestsEveryConnectionAndTheSQLAndFileDropAdaptersServeAWholeExchangeWatchedByMetrics() async throws {
        let d = try Deployment(adapter: [Self.synth])
        defer { d.stop() }
        // The provider's own database: a subscriber table in a schema of its own.
        let db = try PostgresURL(try TestServices.databaseURL(), key: "test")
        let schema = TestServices.unique("billing_")
        let conn = try await PostgresConnection.connect(configuration: .init(host: db.host, port: db.port, username: db.username, password: db.password,
                                                                              database: db.database, tls: .disable), id: 7, logger: TestServices.logger)
        defer { Task { _ = try? await conn.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \(schema) CASCADE"), logger: TestServices.logger); try? await conn.close() } }
        for sql in ["CREATE SCHEMA \(schema)",
                    "CREATE TABLE \(schema).subscribers (msisdn text, full_name text, since date, seen timestamptz)",
                    "INSERT INTO \(schema).subscribers VALUES ('+84912345678', 'Synthetic Subscriber A', '2020-03-01', '2026-11-05 10:00:00+07'),"
                        + " ('+84900000009', 'Someone Else', '2021-01-01', '2026-11-05 10:00:00Z')"] {
            try await conn.query(PostgresQuery(unsafeSQL: sql), logger: TestServices.logger)
        }
        let drop = d.path("drop")
        try FileManager.default.createDirectory(atPath: drop, withIntermediateDirectories: true)
        d.connectorConfig["adapters"] = [
            "traffic": ["command": [Self.synth, "--records-per-target", "30"]],
            // SQL and file-drop exports have no coverage line: the retention declares it.
            "subscriber": ["sql": """
                SELECT seen AS time, full_name AS name, to_char(since, 'YYYY-MM-DD') AS "contractStart"
                FROM \(schema).subscribers WHERE msisdn = $1 AND seen >= $2 AND seen < $3
                """, "retentionDays": 730],
            "financial": ["fileDrop": true, "retentionDays": 3650],
            "sql": ["databaseURL": try TestServices.databaseURL()],
            "fileDrop": ["directory": drop, "pollSeconds": 1],
        ]
        d.connectorConfig["http"] = ["address": "127.0.0.1:0"]
        d.connectorConfig["normalisation"] = ["defaultCountryCode": "84"]
        try await d.setUp()
        try await d.startBroker()

        // check: every connection, nothing sent.
        var config = d.connectorConfig
        config["tsa"] = ["url": d.url + "/tsa", "trustFile": d.path("tsa-ca.pem")]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: d.path("check.json")))
        let ok = try await run("custos-connector", ["check", "--config", d.path("check.json")], environment: d.env)
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
        for line in ["OK   signing certificate and key", "OK   time-stamping authority", "OK   kafka", "OK   adapter traffic (exec)",
                     "OK   adapter subscriber (sql): the query plans", "OK   adapter financial (file-drop)", "WARN adapter location: none"] {
            #expect(ok.stdout.contains(line), "check lacks \(line):\n\(ok.stdout)")
        }
        var broken = config
        broken["adapters"] = ["traffic": ["command": ["/nonexistent/extract"]], "subscriber": ["sql": "SELECT x FROM \(schema).missing WHERE $1 <> ''"],
                              "sql": ["databaseURL": try TestServices.databaseURL()]]
        broken["tsa"] = ["url": "http://127.0.0.1:9/tsa", "trustFile": d.path("tsa-ca.pem")]
        try JSONSerialization.data(withJSONObject: broken).write(to: URL(fileURLWithPath: d.path("broken.json")))
        let bad = try await run("custos-connector", ["check", "--config", d.path("broken.json")], environment: d.env)
        #expect(bad.status == 1)
        for line in ["FAIL adapter traffic (exec): program /nonexistent/extract not found", "FAIL adapter subscriber (sql): adapter: the query does not plan: SQLSTATE 42P01",
                     "FAIL time-stamping authority"] {
            #expect(bad.stdout.contains(line), "check lacks \(line):\n\(bad.stdout)")
        }

        try await d.startConnector()
        let endpoint = try #require(try await d.connector!.waitFor("custos-connector metrics and health on").split(separator: " ").last.map(String.init))
        let request = try await d.submitRequest(targets: ["msisdn:+84912345678"], categories: ["traffic", "subscriber", "financial"])
        _ = try await d.cliOK(d.approver, ["request", "approve", request])
        // The bank's staff drop their export (CSV, local times) under a temporary name, then rename it.
        let csv = """
            category,target_type,target_value,time,amount,currency,counterparty
            financial,msisdn,0912 345 678,2026-11-10T09:00:00+07:00,150000,VND,SYN001
            financial,msisdn,+84912345678,2026-11-11T02:00:00Z,99000,VND,SYN002
            financial,msisdn,+84900000009,2026-11-11T02:00:00Z,1,VND,SYN003

            """
        try Data(csv.utf8).write(to: URL(fileURLWithPath: drop + "/\(request).csv.partial"))
        try FileManager.default.moveItem(atPath: drop + "/\(request).csv.partial", toPath: drop + "/\(request).csv")
        let watched = try await d.cli(d.investigator, ["request", "status", request, "--watch", "--timeout", "120"])
        #expect(watched.status == 0, "connector: \(d.connector!.output.suffix(3000))")
        let view = try json(try await d.cliOK(d.investigator, ["request", "status", request, "--json"]))
        let packageId = try #require((view["packages"] as? [[String: Any]])?.first?["id"] as? String)
        _ = try await d.cliOK(d.investigator, ["download", packageId, "--out", d.path("dl"), "--quiet"])
        let content = try String(contentsOfFile: d.path("dl/\(packageId.lowercased()).ndjson"), encoding: .utf8)
        // 30 CDRs, the subscriber row (its time in UTC), the two payments in scope (the national number made E.164).
        #expect(content.split(separator: "\n").count == 33)
        #expect(content.contains(#""name":"Synthetic Subscriber A""#) && content.contains(#""time":"2026-11-05T03:00:00Z""#))
        #expect(content.contains(#""counterparty":"SYN001""#) && content.contains(#""time":"2026-11-10T02:00:00Z""#) && content.contains(#""amount":150000"#))
        #expect(!content.contains("Someone Else") && !content.contains("SYN003"))
        #expect(!FileManager.default.fileExists(atPath: drop + "/\(request).csv"))  // claimed
        // Every result's coverage declared (the exec adapter's own, the others' from retention):
        // the package is admissible.
        let package = try json(try await d.cliOK(d.investigator, ["package", "show", packageId, "--json"]))
        #expect((package["criteria"] as? [String: Any])?["admissible"] as? Bool == true, "\(package["criteria"] ?? "")")
        // The operator's list: what was kept and what was not sent.
        let status = try await run("custos-connector", ["status", "--config", d.path("connector.json")], environment: d.env)
        #expect(status.stdout.contains("extracted: 33 records, 1 outside the request (not sent)"), "\(status.stdout)")

        // The operator's endpoint: metrics (never a target) and health.
        let metrics = try await TestServices.httpGet(endpoint + "/metrics")
        #expect(metrics.status == 200)
        for line in ["custos_connector_packages_sent_total 1", "custos_connector_records_extracted_total 33", "custos_connector_requests_total 1",
                     #"custos_connector_records_out_of_scope_total{reason="target"} 1"#] {
            #expect(metrics.body.contains(line), "metrics lack \(line):\n\(metrics.body)")
        }
        #expect(!metrics.body.contains("8491234") && !metrics.body.contains("8490000"))
        let health = try await TestServices.httpGet(endpoint + "/health")
        #expect(health.status == 200 && health.body.contains(#""status":"ok""#), "\(health.body)")
        #expect(!d.connector!.output.contains("+849"), "the connector's log names a target")
    }

}
