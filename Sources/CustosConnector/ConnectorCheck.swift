import CustosClient
import CustosEvidence
import CustosKafka
import CustosModel
import CustosPKI
import Foundation
import Logging
import PostgresNIO

/// `custos-connector check`: every file and connection a configuration names, tested without
/// producing anything to Kafka or touching a job. The TSA is asked for one time-stamp over a
/// fixed test digest (to prove its trust chain); sql templates are planned (`EXPLAIN`) with
/// harmless parameters, never run.
public enum ConnectorCheck {
    public struct Item: Sendable, CustomStringConvertible {
        public enum Outcome: String, Sendable { case ok, warn, fail }
        public var outcome: Outcome
        public var name: String
        public var detail: String
        public var description: String { "\(outcome.rawValue.uppercased().padding(toLength: 4, withPad: " ", startingAt: 0)) \(name): \(detail)" }
    }

    public static func run(_ c: ConnectorConfiguration, logger: Logger) async -> [Item] {
        var items: [Item] = []
        func add(_ name: String, _ body: () async throws -> (Item.Outcome, String)) async {
            do {
                let (outcome, detail) = try await body()
                items.append(Item(outcome: outcome, name: name, detail: detail))
            } catch {
                items.append(Item(outcome: .fail, name: name, detail: String(describing: error)))
            }
        }
        await add("signing certificate and key") {
            let identity = try SignerIdentity(configuration: c)
            let info = try CertificateInfo(pem: identity.certificate)
            return (.ok, "\"\(info.commonName)\", valid until \(Timestamp.format(info.notAfter)); the key signs for it")
        }
        await add("broker public key") {
            let keys = try VerifyingKey.loadAll(path: c.brokerPublicKeyFile)
            return (.ok, "\(c.brokerPublicKeyFile): " + keys.map { "\($0.algorithm) key \($0.keyId.prefix(16))…" }.joined(separator: ", "))
        }
        await add("state directory") {
            let jobs = try JobStore(stateDirectory: c.stateDirectory)
            guard jobs.isWritable() else { return (.fail, "\(c.stateDirectory) does not take writes") }
            return (.ok, "\(c.stateDirectory), \(jobs.jobs().count) jobs")
        }
        await add("time-stamping authority") {
            let trust = try String(contentsOfFile: c.tsaTrustFile, encoding: .utf8)
            let (_, token) = try await TimeStampClient(url: c.tsaURL, trust: trust).timeStamp(sha256: Digest.sha256Bytes(Array("custos-connector check".utf8)))
            return (.ok, "\(c.tsaURL) granted a time-stamp at \(Timestamp.format(token.genTime)) that chains to \(c.tsaTrustFile)")
        }
        await add("kafka") {
            let producer = try KafkaProducer(configuration: c.kafka, logger: logger)
            defer { producer.shutdown(timeout: .seconds(1)) }
            let topics = Topics.all(c.providerId)
            let (brokers, existing) = try await producer.metadata(topics: topics)
            let missing = topics.filter { !existing.contains($0) }
            if missing.isEmpty { return (.ok, "\(c.kafka.bootstrapServers): \(brokers) broker(s); topics \(topics.joined(separator: ", ")) exist") }
            return (.warn, "\(c.kafka.bootstrapServers): \(brokers) broker(s); missing \(missing.joined(separator: ", ")) (created at start where the cluster allows)")
        }
        for category in DataCategory.allCases {
            guard let adapter = c.adapters[category] else {
                items.append(Item(outcome: .warn, name: "adapter \(category.rawValue)", detail: "none: requests for it are answered cannot-execute"))
                continue
            }
            await add("adapter \(category.rawValue) (\(adapter.kind))") {
                switch adapter {
                case .exec(let command):
                    guard let program = command.first, let path = ExecAdapter.resolve(program) else {
                        return (.fail, "program \(command.first ?? "(none)") not found or not executable")
                    }
                    return (.ok, path)
                case .sql(let query):
                    guard let db = c.sqlDatabase else { return (.fail, "adapters.sql.databaseURL is not set") }
                    try await SQLAdapter(database: db, query: query, timeout: .seconds(30)).explain(logger: logger)
                    return (.ok, "the query plans on \(db.host):\(db.port)/\(db.database)")
                case .fileDrop:
                    guard let dir = c.fileDropDirectory else { return (.fail, "adapters.fileDrop.directory is not set") }
                    var isDirectory: ObjCBool = false
                    guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDirectory), isDirectory.boolValue else {
                        return (.fail, "\(dir) is not a directory")
                    }
                    guard FileManager.default.isReadableFile(atPath: dir), FileManager.default.isWritableFile(atPath: dir) else {
                        return (.fail, "\(dir) must be readable and writable (drops are moved out of it)")
                    }
                    return (.ok, dir)
                }
            }
        }
        if let program = c.preservationCommand.first {
            await add("preservation adapter") {
                ExecAdapter.resolve(program).map { (.ok, $0) } ?? (.fail, "program \(program) not found or not executable")
            }
        }
        return items
    }
}

extension SQLAdapter {
    /// Plans the template with harmless parameters (`EXPLAIN`): its syntax, tables, columns
    /// and types are checked by the server; nothing is run.
    func explain(logger: Logger) async throws {
        let count = try Self.parameterCount(query)
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 3, logger: logger)
        do {
            var binds = PostgresBindings()
            let values: [any PostgresEncodable & Sendable] = ["", Date(timeIntervalSince1970: 0), Date(timeIntervalSince1970: 0), "msisdn"]
            for v in values.prefix(count) { Self.bind(v, &binds) }
            _ = try await connection.query(PostgresQuery(unsafeSQL: "EXPLAIN SELECT row_to_json(q)::text FROM (\(query)) q", binds: binds), logger: logger).collect()
            try? await connection.close()
        } catch {
            try? await connection.close()
            throw ExecAdapter.Failure(reason: "the query does not plan: \(Self.describe(error))")
        }
    }
}
