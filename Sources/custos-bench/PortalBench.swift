import CustosBroker
import CustosCustody
import CustosModel
import Foundation
import Hummingbird
import Logging
import NIOCore
import PostgresNIO

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
            let (_, invToken, _) = try await ListsBench.fill(store: store, client: client, requests: requests, cases: cases, logger: logger)
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
            // The fill shares one spec among all requests; this one names its own case, as a real one does.
            try await client.query("""
                UPDATE requests SET spec = jsonb_set(spec::jsonb, '{caseId}', to_jsonb(case_id::text))::text WHERE id = \(requestId)
                """, logger: logger)

            let root = try await ListsBench.serve(buildRouter(store: store, maxBodyBytes: 64 * 1024, portal: PortalSettings(), logger: logger),
                                                  logger: logger, group: &group)
            let worst = try ListsBench.measure(root, [
                ("GET /v1/me (baseline)", "/v1/me", "Authorization: Bearer \(invToken)"),
                ("dashboard GET /portal/ (investigator)", "/portal/", cookies["inv"]!),
                ("inbox GET /portal/inbox (approver)", "/portal/inbox", cookies["appr"]!),
                ("request page GET /portal/requests/{id} (investigator)", "/portal/requests/\(requestId.uuidString.lowercased())", cookies["inv"]!),
            ], seconds: seconds)
            print("target: p99 < 100 ms")
            try await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \"\(schema)\" CASCADE"), logger: logger)
            print(String(format: "portal p99: %.1f ms", worst))
        }
    }
}
