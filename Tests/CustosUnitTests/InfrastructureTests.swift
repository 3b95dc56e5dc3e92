@testable import CustosBroker
@testable import CustosKafka
import Testing

@Suite("Kafka configuration and migrations")
struct InfrastructureTests {
    @Test func linkedLibrdkafkaIsRecentEnough() throws {
        try LibRdKafka.checkVersion()
    }

    /// The `cgrp` members the consumer watchdog reads from librdkafka's statistics JSON
    /// (STATISTICS.md), in librdkafka's own spacing: its `cgrp` object has a space after each
    /// colon, its brokers' objects none, and the brokers come first.
    @Test func groupMembershipIsReadFromLibrdkafkaStatistics() {
        let json = #"{ "name": "c#consumer-2", "client_id": "c", "type": "consumer", "ts":1, "brokers":{ "127.0.0.1:9092/1": { "name":"127.0.0.1:9092/1", "nodeid":1, "state":"UP", "stateage":1 } }, "topics":{ }, "cgrp": { "state": "up", "stateage": 6003, "join_state": "wait-unassign-to-complete", "rebalance_age": 5001, "rebalance_cnt": 3, "rebalance_reason": "group is rebalancing", "assignment_size": 0 }}"#
        let read = Array(json.utf8).withUnsafeBytes { groupMembership(in: $0) }
        #expect(read?.state == "up")
        #expect(read?.joinState == "wait-unassign-to-complete")
        #expect(Array(#"{ "name": "p#producer-1", "type": "producer", "brokers":{ } }"#.utf8).withUnsafeBytes { groupMembership(in: $0) } == nil)
        #expect(Array(#"{ "cgrp": { "state": "up", "join_state": "stea"#.utf8).withUnsafeBytes { groupMembership(in: $0) } == nil)
    }

    /// A membership counts as stalled only after `limit` of unbroken readings (no more than
    /// `gap` apart), all unsteady with the coordinator connected; a steady reading, a gap (the
    /// consumer was not polled) or a coordinator lost starts the count again.
    @Test func aGroupMembershipStallsOnlyAfterItsLimitOfUnbrokenUnsteadyReadings() {
        let group = RDKafkaClient.GroupState(interval: .seconds(5))
        #expect(group.gap == .seconds(15))
        let t0 = ContinuousClock.now
        func readings(_ join: String, state: String = "up", from a: Int, to b: Int) {
            for t in stride(from: a, through: b, by: 5) { group.note(state: state, joinState: join, at: t0 + .seconds(t)) }
        }
        readings("steady", from: 0, to: 100)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(100)) == nil)
        readings("wait-join", from: 105, to: 200)
        readings("wait-unassign-to-complete", from: 205, to: 220)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(220)) == nil)  // 115 s so far
        readings("wait-unassign-to-complete", from: 225, to: 225)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(225))?.joinState == "wait-unassign-to-complete")
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(260)) == nil)  // no reading for 35 s: not polled
        // Polling resumes after a pause: the count starts again.
        readings("wait-join", from: 300, to: 400)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(400)) == nil)
        readings("wait-join", from: 405, to: 420)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(420)) != nil)
        // A cluster out of reach (no coordinator) is not a stall.
        readings("init", state: "query-coord", from: 425, to: 1000)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(1000)) == nil)
        readings("steady", from: 1005, to: 1005)
        #expect(group.stalled(for: .seconds(120), now: t0 + .seconds(1005)) == nil)
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
