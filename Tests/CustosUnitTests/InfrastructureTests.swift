@testable import CustosBroker
import CustosKafka
import Testing

@Suite("Kafka configuration and migrations")
struct InfrastructureTests {
    @Test func linkedLibrdkafkaIsRecentEnough() throws {
        try LibRdKafka.checkVersion()
    }

    @Test func propertiesParse() throws {
        let p = try KafkaConfiguration.parseProperties(["security.protocol = SASL_SSL", "sasl.mechanisms=SCRAM-SHA-512", ""])
        #expect(p == ["security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512"])
        #expect(throws: KafkaError.self) { try KafkaConfiguration.parseProperties(["no-equals-sign"]) }
        #expect(throws: KafkaError.self) { try KafkaConfiguration.parseProperties(["=value"]) }
    }

    @Test func migrationsSplitIntoStatementsOutsideDollarBodies() {
        let m = Migration(version: 9, name: "t", sql: """
            CREATE TABLE a (x int);
            CREATE FUNCTION f() RETURNS trigger AS $$
            BEGIN
              RAISE EXCEPTION 'no;';
            END;
            $$ LANGUAGE plpgsql;
            CREATE INDEX i ON a(x);
            """)
        #expect(m.statements.count == 3)
        #expect(m.statements[1].contains("RAISE EXCEPTION"))
    }

    @Test func migrationVersionsAreUniqueAndIncreasing() {
        let versions = Migrations.all.map(\.version)
        #expect(versions == versions.sorted() && Set(versions).count == versions.count)
    }

    @Test func databaseURLsParseAndBadOnesAreRefused() throws {
        let c = try DatabaseConfiguration(url: "postgres://u:p%40ss@db.internal:6543/custos")
        #expect(c.host == "db.internal" && c.port == 6543 && c.username == "u" && c.password == "p@ss" && c.database == "custos")
        #expect(throws: (any Error).self) { try DatabaseConfiguration(url: "mysql://x") }
        #expect(throws: (any Error).self) { try DatabaseConfiguration(url: "postgres://h/db", schema: "Robert'); DROP") }
    }
}
