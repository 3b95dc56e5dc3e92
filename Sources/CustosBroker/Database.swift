import Foundation
import Logging
import NIOCore
import PostgresNIO

extension DatabaseConfiguration {
    /// A pool whose sessions all work in `schema`. Each session names this process to the
    /// server (`application_name`, shown in `pg_stat_activity`): `custos-broker/<pid>` by
    /// default, so that an operator sees which instance holds which lock.
    public func makeClient(logger: Logger, applicationName: String = "custos-broker/\(getpid())") -> PostgresClient {
        var c = PostgresClient.Configuration(
            host: host, port: port, username: username, password: password, database: database,
            tls: requireTLS ? .require(.clientDefault) : .disable)
        c.options.maximumConnections = maxConnections
        c.options.additionalStartupParameters = [("search_path", schema), ("application_name", applicationName)]
        return PostgresClient(configuration: c, backgroundLogger: logger)
    }
}

public enum Migrator {
    /// Creates the schema if needed and applies the migrations not yet applied.
    public static func migrate(client: PostgresClient, schema: String, logger: Logger) async throws {
        try await client.transaction(logger: logger) { conn in
            // Serialises concurrent starts of several broker instances.
            try await conn.query("SELECT pg_advisory_xact_lock(hashtext(\(schema)))", logger: logger)
            try await conn.query(PostgresQuery(unsafeSQL: "CREATE SCHEMA IF NOT EXISTS \"\(schema)\""), logger: logger)
            try await conn.query("""
                CREATE TABLE IF NOT EXISTS schema_migrations (
                    version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())
                """, logger: logger)
            var applied = Set<Int>()
            for try await v in try await conn.query("SELECT version FROM schema_migrations", logger: logger).decode(Int.self) {
                applied.insert(v)
            }
            for m in Migrations.all where !applied.contains(m.version) {
                logger.info("applying migration", metadata: ["migration.version": "\(m.version)", "migration.name": "\(m.name)"])
                for statement in m.statements {
                    try await conn.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                }
                try await conn.query("INSERT INTO schema_migrations (version, name) VALUES (\(m.version), \(m.name))", logger: logger)
            }
        }
    }
}
