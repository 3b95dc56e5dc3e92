import CustosCanonicalJSON
import CustosModel
import CustosRuntime
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// Runs a category's query template against the provider's PostgreSQL, once per target. The
/// template is the operator's SQL; the request's values are only ever bound as parameters,
/// never put into the text:
///
///   `$1` the target's value (text), `$2` the window's start, `$3` its end (timestamptz),
///   `$4` the target's type (text).
///
/// Each row is a record: its `time` column (a timestamptz; UTC on the way out) is the
/// record's time, every other non-null column a field of the record, named as the column.
/// Rows stream (PostgreSQL's back-pressure), so an export of any size runs in constant memory.
/// Each query runs at most the adapter time-out (the session's `statement_timeout`).
public struct SQLAdapter: Sendable {
    public var database: PostgresURL
    public var query: String
    public var timeout: Duration
    public var normalisation: RecordGate.Settings

    public init(database: PostgresURL, query: String, timeout: Duration, normalisation: RecordGate.Settings = .init()) throws {
        self.database = database
        self.query = query
        self.timeout = timeout
        self.normalisation = normalisation
        _ = try Self.parameterCount(query)
    }

    /// How many of `$1`…`$4` the template uses (the highest named); a higher one is an error.
    static func parameterCount(_ query: String) throws -> Int {
        var highest = 0
        var chars = Array(query.utf8)[...]
        while let dollar = chars.firstIndex(of: UInt8(ascii: "$")) {
            chars = chars[(dollar + 1)...]
            let digits = chars.prefix { (0x30...0x39).contains($0) }
            if let n = Int(String(decoding: digits, as: UTF8.self)) { highest = max(highest, n) }
            chars = chars.dropFirst(digits.count)
        }
        guard highest <= 4 else { throw ExecAdapter.Failure(reason: "the query names $\(highest); only $1 (target value), $2 (window start), $3 (window end) and $4 (target type) are bound") }
        return highest
    }

    var configuration: PostgresConnection.Configuration {
        PostgresConnection.Configuration(host: database.host, port: database.port, username: database.username, password: database.password,
                                         database: database.database, tls: .disable)
    }

    /// Runs the query for every target of the request; every row goes through the record gate
    /// to `sink`. Cancelling the calling task (or the time-out) closes the connection, which
    /// ends the query.
    public func run(request: ApprovedRequest, category: DataCategory, sink: @escaping ExecAdapter.Sink, logger: Logger) async throws -> ExecAdapter.Output {
        let gate = RecordGate(request: request, category: category, settings: normalisation)
        let count = try Self.parameterCount(query)
        let connection: PostgresConnection
        let backend: Int32
        do {
            connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
            backend = try await connection.query("SELECT pg_backend_pid()", logger: logger).collect()[0].decode(Int32.self)
            // The server ends a query that runs past the time-out itself.
            let milliseconds = max(1, timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
            try await connection.query(PostgresQuery(unsafeSQL: "SET statement_timeout = \(milliseconds)"), logger: logger)
        } catch {
            // Cancelled while connecting (PostgresNIO then reports the connection it closed):
            // the request was stopped, not the database lost.
            if Task.isCancelled { throw ExecAdapter.Failure(reason: "stopped: the request was cancelled") }
            // Not the request's fault: the job stays, and resumes on the next start.
            throw ConnectorError(reason: "cannot connect to the SQL adapter's database \(database.host):\(database.port)/\(database.database): \(Self.describe(error))")
        }
        let cancelled = LockedValue(false)
        let finished = LockedValue(false)
        do {
            // A request cancelled upstream: the running query is cancelled on the server, from
            // a second connection (closing this one would wait for the query to end). A cancel
            // that reaches the server before the query does cancels nothing, so it is sent
            // again every 250 ms until the query has ended (the time-out bounds it anyway).
            let output = try await withTaskCancellationHandler {
                try await rows(connection, request, category, gate, count, sink, logger)
            } onCancel: {
                cancelled.withLock { $0 = true }
                let configuration = self.configuration, attempts = max(1, Int(timeout.components.seconds) * 4 + 4)
                Task {
                    guard let other = try? await PostgresConnection.connect(configuration: configuration, id: 2, logger: logger) else { return }
                    for _ in 0..<attempts where !finished.withLock({ $0 }) {
                        _ = try? await other.query("SELECT pg_cancel_backend(\(backend))", logger: logger)
                        try? await Task.sleep(for: .milliseconds(250))
                    }
                    try? await other.close()
                }
            }
            finished.withLock { $0 = true }
            try? await connection.close()
            return output
        } catch {
            finished.withLock { $0 = true }
            try? await connection.close()
            if error is ExecAdapter.Failure { throw error }
            if cancelled.withLock({ $0 }) { throw ExecAdapter.Failure(reason: "stopped: the request was cancelled") }
            if (error as? PSQLError)?.serverInfo?[.sqlState] == "57014" { throw ExecAdapter.Failure(reason: "the query ran past its time-out") }
            throw ExecAdapter.Failure(reason: "the query failed: \(Self.describe(error))")
        }
    }

    private func rows(_ connection: PostgresConnection, _ request: ApprovedRequest, _ category: DataCategory, _ gate: RecordGate, _ count: Int,
                      _ sink: @escaping ExecAdapter.Sink, _ logger: Logger) async throws -> ExecAdapter.Output {
        var dropped: [RecordGate.Drop: Int] = [:]
        var unreadableRows: [Int] = []  // numbered across the request's targets, from 1
        var notSent: [ExecAdapter.NotSentKey: Int] = [:]
        var row = 0
        for target in request.targets {
            try Task.checkCancellation()
            var binds = PostgresBindings()
            let values: [any PostgresEncodable & Sendable] = [target.value, Timestamp.parse(request.window.from) ?? .distantPast,
                                                            Timestamp.parse(request.window.to) ?? .distantFuture, target.type.rawValue]
            for v in values.prefix(count) { Self.bind(v, &binds) }
            let rows = try await connection.query(PostgresQuery(unsafeSQL: "SELECT row_to_json(q)::text FROM (\(query)) q", binds: binds), logger: logger)
            var n = 0
            for try await text in rows.decode(String.self) {
                n += 1
                row += 1
                guard case .object(var columns)? = try? JSONParser.parse(text), case .string(let time)? = columns.removeValue(forKey: "time") else {
                    throw ExecAdapter.Failure(reason: "row \(n) has no time column (a timestamptz)")  // the template is wrong: every row would be
                }
                columns = columns.filter { $0.value != .null }
                var t: [String: JSONValue] = ["type": .string(target.type.rawValue), "value": .string(target.value)]
                if let port = target.port { t["port"] = .number(Double(port)) }
                let frame: [String: JSONValue] = ["category": .string(category.rawValue), "time": .string(time), "record": .object(columns), "target": .object(t)]
                switch gate.admit(frame) {
                case .record(let t, let bytes): try bytes.withUnsafeBytes { try sink(t, $0) }
                case .dropped(let why): dropped[why, default: 0] += 1
                case .unreadable(let reason, let t, let c):
                    dropped[.unreadable, default: 0] += 1
                    notSent[ExecAdapter.NotSentKey(reason: reason, category: c ?? category, target: t), default: 0] += 1
                    if unreadableRows.count < AdapterOutput.unreadableLinesKept { unreadableRows.append(row) }
                }
            }
        }
        return ExecAdapter.Output(dropped: dropped, unreadableLines: unreadableRows, notSent: notSent)
    }

    static func bind(_ value: any PostgresEncodable & Sendable, _ binds: inout PostgresBindings) {
        switch value {
        case let s as String: binds.append(s)
        case let d as Date: binds.append(d)
        default: break
        }
    }

    /// The SQLSTATE only: PostgreSQL's messages may quote a bound value (a target), which
    /// must not reach a log or the refusal. The operator runs the query by hand to see more.
    static func describe(_ error: any Error) -> String {
        if let e = error as? PSQLError, let state = e.serverInfo?[.sqlState] { return "SQLSTATE \(state)" }
        return "\((error as? PSQLError)?.code.description ?? "connection error")"
    }
}
