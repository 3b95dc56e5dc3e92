import Crypto
@testable import CustosBroker
import CustosCustody
import CustosEvidence
import CustosKafka
import CustosModel
import CustosTestSupport
import Foundation
import FoundationNetworking
import Logging
import PostgresNIO
import Testing

/// The real services the tests run against: whatever `CUSTOS_DATABASE_URL` and
/// `CUSTOS_KAFKA_BROKERS` name, else the ones `ops/services up` started (its env file).
enum TestServices {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let binDirectory = root.appendingPathComponent(".build/debug")

    static let environment: [String: String] = {
        var env: [String: String] = [:]
        let file = root.appendingPathComponent(".custos/services.env")
        if let text = try? String(contentsOf: file, encoding: .utf8) {
            for line in text.split(separator: "\n") where line.hasPrefix("export ") {
                let kv = line.dropFirst("export ".count)
                if let eq = kv.firstIndex(of: "=") { env[String(kv[..<eq])] = String(kv[kv.index(after: eq)...]) }
            }
        }
        for (k, v) in ProcessInfo.processInfo.environment where k.hasPrefix("CUSTOS_") { env[k] = v }
        return env
    }()

    static func databaseURL() throws -> String {
        try #require(environment["CUSTOS_DATABASE_URL"], "no CUSTOS_DATABASE_URL: run ops/services up, or set it")
    }

    /// A superuser's URL, for the tests that tamper with the custody log on purpose:
    /// `CUSTOS_DATABASE_ADMIN_URL`, else `CUSTOS_DATABASE_URL` (which must then be a superuser's).
    static func adminDatabaseURL() throws -> String {
        try environment["CUSTOS_DATABASE_ADMIN_URL"] ?? databaseURL()
    }

    static func kafka() throws -> KafkaConfiguration {
        let brokers = try #require(environment["CUSTOS_KAFKA_BROKERS"], "no CUSTOS_KAFKA_BROKERS: run ops/services up, or set it")
        return KafkaConfiguration(bootstrapServers: brokers, clientId: "custos-tests")
    }

    /// GET `url`: the status and the body as text.
    static func httpGet(_ url: String) async throws -> (status: Int, body: String) {
        let (data, response) = try await URLSession.shared.data(from: try #require(URL(string: url)))
        return ((response as? HTTPURLResponse)?.statusCode ?? 0, String(decoding: data, as: UTF8.self))
    }

    static func unique(_ prefix: String) -> String {
        prefix + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(12)
    }

    static var logger: Logger {
        var l = Logger(label: "custos-tests")
        l.logLevel = .warning
        return l
    }

    /// A migrated schema of its own for one test, dropped afterwards.
    static func withStore<R: Sendable>(signer: SigningKey = .generate(), tsaTrust: String = "", _ body: @Sendable (BrokerStore, PostgresClient, DatabaseConfiguration) async throws -> R) async throws -> R {
        let db = try DatabaseConfiguration(url: databaseURL(), schema: unique("t_"))
        let client = db.makeClient(logger: logger)
        return try await withThrowingTaskGroup(of: R?.self) { group in
            group.addTask { await client.run(); return nil }
            defer { group.cancelAll() }
            try await Migrator.migrate(client: client, schema: db.schema, logger: logger)
            // A chunk store of its own, under a fresh AES-256 key, removed afterwards.
            let chunkDirectory = FileManager.default.temporaryDirectory.appendingPathComponent(unique("custos-chunks-"))
            defer { try? FileManager.default.removeItem(at: chunkDirectory) }
            let chunks = try DirectoryChunkStore(root: chunkDirectory, key: SymmetricKey(size: .bits256))
            do {
                let r = try await body(BrokerStore(client: client, signer: signer, tsaTrust: tsaTrust, chunks: chunks, logger: logger), client, db)
                try await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \"\(db.schema)\" CASCADE"))
                return r
            } catch {
                _ = try? await client.query(PostgresQuery(unsafeSQL: "DROP SCHEMA \"\(db.schema)\" CASCADE"))
                throw error
            }
        }
    }
}

extension CustodyEvent.Actor {
    static let testAdmin = CustodyEvent.Actor(type: .admin, id: "tests")
}

extension BrokerStore {
    /// Uploads the synthetic decision for `user`'s agency (again is harmless).
    @discardableResult
    func uploadDecision(by user: AuthenticatedUser) async throws -> API.DocumentView {
        try await uploadDocument(ByteBuffer(bytes: SyntheticDecision.pdf), mediaType: "application/pdf", by: user)
    }

    /// Creates a draft whose legal basis names the synthetic decision, uploaded first.
    func draft(_ spec: RequestSpec, by user: AuthenticatedUser) async throws -> UUID {
        var spec = spec
        spec.legalBasis.document = try await uploadDecision(by: user).document
        return try await createRequest(spec, by: user)
    }
}
