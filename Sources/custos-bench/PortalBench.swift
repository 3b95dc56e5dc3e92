import CustosBroker
import CustosCustody
import CustosModel
import Foundation
import Hummingbird
import Logging
import NIOCore
import PostgresNIO
import Synchronization

/// `custos-bench portal [REQUESTS] [CASES] [SECONDS]` (run by `ops/bench portal`): the portal's
/// pages over HTTP on loopback, for one agency of REQUESTS (default 100,000) requests over CASES
/// (default 5,000) cases (`ListsBench.fill`), in a schema of its own that is dropped afterwards.
/// People sign in as the portal's form does (password and TOTP, `BrokerStore.signIn`); then wrk,
/// at about 200 requests/s for SECONDS (default 10) each, loads with the session cookie:
///   - `GET /v1/me` with a bearer token (the baseline: the same server, no page);
///   - the dashboard (`GET /portal/`) as the investigator;
///   - the inbox (`GET /portal/inbox`) as the approver;
///   - a request page (`GET /portal/requests/{id}`) as the investigator (each view a custody event).
/// Prints p50 and p99 of each and its p99 against the baseline's; the last line is
/// `portal p99: N ms` (the worst page). Target: p99 < 100 ms.
enum PortalBench {
    static func run(requests: Int, cases: Int, seconds: Int) async throws {
        let logger = { var l = Logger(label: "custos-bench"); l.logLevel = .error; return l }()
        guard let url = ProcessInfo.processInfo.environment["CUSTOS_DATABASE_URL"] else {
            FileHandle.standardError.write(Data("custos-bench: set CUSTOS_DATABASE_URL (ops/services env)\n".utf8))
            exit(2)
        }
        let schema = "bench_portal_\(UInt32.random(in: 0...UInt32.max))"
        var db = try DatabaseConfiguration(url: url, schema: schema)
        db.maxConnections = 8
        let client = db.makeClient(logger: logger, applicationName: "custos-bench")
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await client.run() }
            defer { group.cancelAll() }
            try await Migrator.migrate(client: client, schema: schema, logger: logger)
            let store = BrokerStore(client: client, signer: .generate(), tsaTrust: "", logger: logger)
            let (inv, invToken, _) = try await ListsBench.fill(store: store, client: client, requests: requests, cases: cases, logger: logger)
            let admin = CustodyEvent.Actor(type: .admin, id: "bench")
            let password = "bench-portal-password"
            var cookies: [String: String] = [:]
            for name in ["inv", "appr"] {
                let secret = try await store.enrol(name: name, password: password, by: admin)
                guard case .success(let token) = try await store.signIn(name: name, password: password, code: PortalSignIn.code(secret: secret),
                                                                        address: "127.0.0.1", agent: "custos-bench") else {
                    throw ListsBench.BenchError("\(name) could not sign in")
                }
                cookies[name] = "Cookie: custos_session=\(token)"
            }
            // A request in the middle of the agency's history, with its running clock.
            let requestId = try await client.query("""
                SELECT r.id FROM requests r JOIN request_clocks k ON k.request_id = r.id ORDER BY r.created_at DESC OFFSET \(requests / 4) LIMIT 1
                """, logger: logger).decode(UUID.self).first { _ in true } ?? UUID()
            _ = inv
            // The fill shares one spec among all requests; this one names its own case, as a real one does.
            try await client.query("""
                UPDATE requests SET spec = jsonb_set(spec::jsonb, '{caseId}', to_jsonb(case_id::text))::text WHERE id = \(requestId)
                """, logger: logger)

            let address = Mutex<String?>(nil)
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, portal: PortalSettings(), logger: logger),
                                  configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "custos-bench"),
                                  onServerRunning: { channel in address.withLock { $0 = "http://127.0.0.1:\(channel.localAddress?.port ?? 0)" } },
                                  logger: logger)
            group.addTask { try await app.runService() }
            var base: String?
            while base == nil {
                try await Task.sleep(for: .milliseconds(50))
                base = address.withLock { $0 }
            }
            let root = base!
            let script = FileManager.default.temporaryDirectory.appendingPathComponent("custos-bench-wrk-\(getpid()).lua")
            // Each connection waits 10 ms after each answer: two make about 200 requests/s.
            try Data("function delay()\n  return 10\nend\n".utf8).write(to: script)
            defer { try? FileManager.default.removeItem(at: script) }
            var worst = 0.0
            var baseline = 0.0
            for (label, path, header) in [
                ("GET /v1/me (baseline)", "/v1/me", "Authorization: Bearer \(invToken)"),
                ("dashboard GET /portal/ (investigator)", "/portal/", cookies["inv"]!),
                ("inbox GET /portal/inbox (approver)", "/portal/inbox", cookies["appr"]!),
                ("request page GET /portal/requests/{id} (investigator)", "/portal/requests/\(requestId.uuidString.lowercased())", cookies["inv"]!),
            ] {
                let r = try ListsBench.wrk(root + path, header: header, seconds: seconds, script: script.path)
                if path == "/v1/me" { baseline = r.p99 } else { worst = max(worst, r.p99) }
                let ratio = path == "/v1/me" ? "" : String(format: ", %.2f× the baseline's p99", r.p99 / baseline)
                print(String(format: "%@: %.0f requests/s, p50 %.1f ms, p99 %.1f ms%@", label, r.rate, r.p50, r.p99, ratio))
            }
            print("target: p99 < 100 ms")
            try await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \"\(schema)\" CASCADE"), logger: logger)
            print(String(format: "portal p99: %.1f ms", worst))
        }
    }
}
