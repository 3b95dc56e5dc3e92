@testable import CustosBroker
@testable import CustosKafka
import Testing

@Suite("Kafka configuration and migrations")
struct InfrastructureTests {
    @Test func linkedLibrdkafkaIsRecentEnough() throws {
        try LibRdKafka.checkVersion()
    }

    /// The `cgrp` members the consumer watchdog reads from librdkafka's statistics JSON
    /// (STATISTICS.md), in the order librdkafka writes them: brokers, with their own "state",
    /// come first.
    @Test func groupMembershipIsReadFromLibrdkafkaStatistics() {
        let json = #"{"name":"c#consumer-1","type":"consumer","brokers":{"127.0.0.1:9092/1":{"name":"127.0.0.1:9092/1","state":"UP","stateage":1}},"topics":{},"cgrp":{"state":"up","stateage":6003,"join_state":"wait-unassign-to-complete","rebalance_age":5001,"rebalance_cnt":3,"rebalance_reason":"group is rebalancing","assignment_size":0}}"#
        let read = Array(json.utf8).withUnsafeBytes { groupMembership(in: $0) }
        #expect(read?.state == "up")
        #expect(read?.joinState == "wait-unassign-to-complete")
        #expect(Array(#"{"name":"p#producer-1","type":"producer","brokers":{}}"#.utf8).withUnsafeBytes { groupMembership(in: $0) } == nil)
        #expect(Array(#"{"cgrp":{"state":"up","join_state":"stea"#.utf8).withUnsafeBytes { groupMembership(in: $0) } == nil)
    }

    /// A membership counts as stalled only after `limit` of readings none of which was steady.
    @Test func aGroupMembershipStallsOnlyAfterItsLimitWithoutASteadyReading() {
        let group = RDKafkaClient.GroupState()
        let t0 = ContinuousClock.now
        group.note(state: "up", joinState: "steady", at: t0)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(600)) == nil)
        group.note(state: "up", joinState: "wait-join", at: t0 + .seconds(10))
        group.note(state: "up", joinState: "wait-unassign-to-complete", at: t0 + .seconds(60))
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(129)) == nil)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(130))?.joinState == "wait-unassign-to-complete")
        group.note(state: "up", joinState: "steady", at: t0 + .seconds(131))
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(1000)) == nil)
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
