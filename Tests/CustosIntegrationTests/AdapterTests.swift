import CustosConnector
import CustosModel
import CustosRuntime
import CustosTestSupport
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// The sql adapter against the real PostgreSQL (a provider's table of CDRs in a schema of its
/// own), and the file-drop adapter against a real folder.
@Suite("SQL and file-drop adapters", .timeLimit(.minutes(2)))
struct AdapterTests {
    static let spec = SyntheticRequest.spec
    static let request = SyntheticRequest.approved

    /// A CDR table, in a fresh schema, holding rows in and out of the request's scope.
    func withCDRs(_ body: @Sendable (PostgresURL, String) async throws -> Void) async throws {
        let url = try TestServices.databaseURL()
        let schema = TestServices.unique("cdr_")
        let client = PostgresClient(configuration: try Self.configuration(url), backgroundLogger: TestServices.logger)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await client.query(PostgresQuery(unsafeSQL: "CREATE SCHEMA \(schema)"))
            try await client.query(PostgresQuery(unsafeSQL:
                "CREATE TABLE \(schema).cdr (msisdn text NOT NULL, started_at timestamptz NOT NULL, other text NOT NULL, seconds int NOT NULL, cell text)"))
            try await client.query(PostgresQuery(unsafeSQL: """
                INSERT INTO \(schema).cdr VALUES
                  ('+84912345678', '2026-10-15 15:30:00+07', '+84907000123', 61, '452-04-1234-56'),
                  ('+84912345678', '2026-10-20 08:00:00Z', '+84907000124', 7, NULL),
                  ('+84912345678', '2026-12-01 00:00:00Z', '+84907000125', 9, NULL),
                  ('+84987654321', '2026-10-21 08:00:00Z', '+84907000126', 3, NULL),
                  ('+84900000001', '2026-10-21 08:00:00Z', '+84907000127', 5, NULL)
                """))
            do {
                try await body(try PostgresURL(url, key: "test"), schema)
                try await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \(schema) CASCADE"))
            } catch {
                _ = try? await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \(schema) CASCADE"))
                throw error
            }
        }
    }

    static func configuration(_ url: String) throws -> PostgresClient.Configuration {
        let u = try PostgresURL(url, key: "test")
        return PostgresClient.Configuration(host: u.host, port: u.port, username: u.username, password: u.password, database: u.database, tls: .disable)
    }

    static func query(_ schema: String) -> String {
        """
        SELECT started_at AS time, CASE WHEN seconds > 0 THEN 'outgoing' ELSE 'incoming' END AS direction, other AS "otherParty",
               seconds AS "durationSeconds", cell AS "cellId"
        FROM \(schema).cdr WHERE msisdn = $1 AND started_at >= $2 AND started_at < $3 ORDER BY started_at
        """
    }

    func run(_ adapter: SQLAdapter, request: ApprovedRequest = Self.request) async throws -> (records: [String], output: ExecAdapter.Output) {
        let records = Mutex<[String]>([])
        let output = try await adapter.run(request: request, category: .traffic, sink: { _, r in records.withLock { $0.append(String(decoding: r, as: UTF8.self)) } },
                                           logger: TestServices.logger)
        return (records.withLock { $0 }, output)
    }

    @Test func theSQLAdapterRunsItsTemplateWithBoundParametersAndStreamsRowsAsRecords() async throws {
        try await withCDRs { db, schema in
            let (records, output) = try await run(try SQLAdapter(database: db, query: Self.query(schema), timeout: .seconds(30)))
            // In the window, for the two targets; times in UTC; null columns left out.
            #expect(records == [
                #"{"category":"traffic","record":{"cellId":"452-04-1234-56","direction":"outgoing","durationSeconds":61,"otherParty":"+84907000123"},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-15T08:30:00Z"}"#,
                #"{"category":"traffic","record":{"direction":"outgoing","durationSeconds":7,"otherParty":"+84907000124"},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-20T08:00:00Z"}"#,
                #"{"category":"traffic","record":{"direction":"outgoing","durationSeconds":3,"otherParty":"+84907000126"},"target":{"type":"msisdn","value":"+84987654321"},"time":"2026-10-21T08:00:00Z"}"#,
            ])
            #expect(output.outOfScope == 0)
            // A template that ignores the window: what it returns outside it is dropped, and counted.
            let loose = "SELECT started_at AS time, 'outgoing' AS direction, other AS \"otherParty\", seconds AS \"durationSeconds\" FROM \(schema).cdr WHERE msisdn = $1"
            let (_, looseOutput) = try await run(try SQLAdapter(database: db, query: loose, timeout: .seconds(30)))
            #expect(looseOutput.dropped == [.window: 1])
        }
    }

    @Test func anInjectionAttemptInATargetValueIsInert() async throws {
        try await withCDRs { db, schema in
            var spec = Self.spec
            spec.targets = [Target(type: .account, value: "x' OR '1'='1"), Target(type: .account, value: "'; DROP TABLE \(schema).cdr; --")]
            let hostile = SyntheticRequest.approve(spec)
            let (records, _) = try await run(try SQLAdapter(database: db, query: Self.query(schema), timeout: .seconds(30)), request: hostile)
            #expect(records.isEmpty)
            // The table is there, whole.
            let conn = try await PostgresConnection.connect(configuration: .init(host: db.host, port: db.port, username: db.username, password: db.password,
                                                                                  database: db.database, tls: .disable), id: 9, logger: TestServices.logger)
            let n = try await conn.query(PostgresQuery(unsafeSQL: "SELECT count(*) FROM \(schema).cdr"), logger: TestServices.logger).collect()[0].decode(Int.self)
            try await conn.close()
            #expect(n == 5)
        }
    }

    @Test func aQueryIsStoppedByItsTimeOutOrWhenTheRequestIsCancelled() async throws {
        try await withCDRs { db, schema in
            let slow = "SELECT started_at AS time FROM \(schema).cdr, pg_sleep(30) WHERE msisdn = $1"
            let started = ContinuousClock.now
            await #expect { _ = try await run(try SQLAdapter(database: db, query: slow, timeout: .seconds(1))) } throws: {
                String(describing: $0).contains("time-out")
            }
            #expect(ContinuousClock.now - started < .seconds(10))
            // Cancelled while the query runs, and while the adapter is still connecting: both
            // are "cancelled". (The second used to be reported as "cannot connect ...:
            // clientClosedConnection" when a loaded machine was slow to connect: the full suite
            // failed once that way, the test alone passed.)
            for delay in [Duration.milliseconds(500), .zero, .milliseconds(5)] {
                let task = Task { try await run(try SQLAdapter(database: db, query: slow, timeout: .seconds(60))) }
                if delay > .zero { try await Task.sleep(for: delay) }
                task.cancel()
                let cancelledAt = ContinuousClock.now
                await #expect { _ = try await task.value } throws: { String(describing: $0).contains("cancelled") }
                #expect(ContinuousClock.now - cancelledAt < .seconds(5))
            }
            // Bad SQL is reported by its SQLSTATE only (a message could quote a target).
            await #expect { _ = try await run(try SQLAdapter(database: db, query: "SELEC nonsense WHERE $1", timeout: .seconds(5))) } throws: {
                String(describing: $0).contains("SQLSTATE 42601")
            }
        }
    }

    @Test func aFileDropIsWaitedForClaimedOnceAndRead() async throws {
        let fm = FileManager.default
        let root = fm.temporaryDirectory.appendingPathComponent("custos-drop-\(UUID().uuidString)")
        let drop = root.appendingPathComponent("drop"), job = root.appendingPathComponent("job")
        try fm.createDirectory(at: drop, withIntermediateDirectories: true)
        try fm.createDirectory(at: job, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: root) }
        let id = Self.request.requestId
        let adapter = FileDropAdapter(directory: drop.path, timeout: .seconds(20), pollInterval: .milliseconds(100),
                                      normalisation: .init(defaultCountryCode: "84"))
        let csv = """
            category,target_type,target_value,time,direction,otherParty,durationSeconds
            traffic,msisdn,0912345678,2026-10-15T15:30:00+07:00,outgoing,+84907000123,61
            location,msisdn,+84912345678,2026-10-15T15:30:00+07:00,,,
            traffic,msisdn,+84900000001,2026-10-15T08:30:00Z,outgoing,+84907000123,61

            """
        // Staff write it under another name, then rename it: only the final name is taken.
        let claimed = Task { try await adapter.claim(id, into: job.appendingPathComponent("drop")) }
        try Data(csv.utf8).write(to: drop.appendingPathComponent("\(id.lowercased).csv.partial"))
        try await Task.sleep(for: .milliseconds(400))
        #expect(fm.fileExists(atPath: drop.appendingPathComponent("\(id.lowercased).csv.partial").path))
        try fm.moveItem(at: drop.appendingPathComponent("\(id.lowercased).csv.partial"), to: drop.appendingPathComponent("\(id.lowercased).csv"))
        let file = try await claimed.value
        #expect(file.lastPathComponent == "drop.csv" && !fm.fileExists(atPath: drop.appendingPathComponent("\(id.lowercased).csv").path))
        // Claimed again after a crash: the same file, without waiting.
        #expect(try await adapter.claim(id, into: job.appendingPathComponent("drop")) == file)
        let records = Mutex<[Target]>([])
        let output = try adapter.read(file, request: Self.request, category: .traffic, sink: { t, _ in records.withLock { $0.append(t) } }, coverage: { _, _ in })
        #expect(records.withLock { $0 } == [Target(type: .msisdn, value: "+84912345678")])
        // Another person's record, and one of a category the request does not ask for: counted, not sent.
        #expect(output.dropped == [RecordGate.Drop.target: 1, .category: 1])
        // No drop in time: a clear failure.
        let none = FileDropAdapter(directory: drop.path, timeout: .milliseconds(300), pollInterval: .milliseconds(100))
        await #expect { _ = try await none.claim(UUID(), into: job.appendingPathComponent("other")) } throws: { String(describing: $0).contains("within the time-out") }
    }
}
