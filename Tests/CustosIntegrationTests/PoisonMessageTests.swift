@testable import CustosBroker
import CustosKafka
import CustosModel
import Foundation
import PostgresNIO
import Testing

/// Poison messages (issue 15): one message signed by a registered provider must never stop
/// ingestion. A failure about the message is dead-lettered at once with its reason; only one
/// about the database is retried; after each, the next message still applies.
extension IngestTests {
    @Test func aStatusTooLargeForItsColumnAndTextHoldingNULAreDeadLetteredAndIngestionGoesOn() async throws {
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            let poison: [(KafkaMessage, String)] = [
                (try message(.status, r.id, StatusBody(phase: .extracting, percent: 1_000_000_000_000)), "body.percent"),
                (try message(.clarificationRequest, r.id, ClarificationRequestBody(question: "which\u{0} number?")), "NUL"),
                (try message(.refusal, r.id, RefusalBody(reason: .invalidRequest, detail: "bad\u{0}")), "NUL"),
            ]
            for (m, named) in poison {
                let outcome = try await store.ingest(m, providerKeys: keys)
                guard case .deadLettered(let reason) = outcome else { Issue.record("applied: \(outcome)"); continue }
                #expect(reason.contains(named), "\(reason)")
                #expect(!reason.contains("which") && !reason.contains("bad"), "a reason never quotes the message")
            }
            let letters = try await client.query("SELECT count(*) FROM dead_letters").collect()[0].decode(Int.self)
            #expect(letters == 3)
            // The provider is told why, with a signed receipt for each.
            let receipts = try await client.query("SELECT count(*) FROM outbox WHERE message_type = 'receipt'").collect()[0].decode(Int.self)
            #expect(receipts == 3)
            // And the next message applies.
            #expect(try await store.ingest(try message(.status, r.id, StatusBody(phase: .extracting, percent: 5)), providerKeys: keys) == .applied(.status))
            #expect(try await store.request(r.id, viewer: nil).progress?.percent == 5)
        }
    }

    /// Every SQLSTATE class (PostgreSQL Appendix A), raised by the real database while a message
    /// is applied (a trigger on the inbox, as a fault would): the message's classes are
    /// dead-lettered at once; the database's are thrown for the consumer to retry, and the same
    /// message applies once the fault is gone.
    @Test func eachSQLSTATEClassIsDeadLetteredOrRetriedAsItsClassSays() async throws {
        // The message's: a data exception, an integrity violation, a program limit. Every other
        // class is the database's, a read-only standby and a schema not yet migrated included.
        let messageClasses = ["22012", "22P05", "22003", "23505", "23503", "54000"]
        let databaseClasses = ["08006", "40001", "40P01", "53100", "55P03", "57014", "57P01", "58030", "XX000", "25006", "42P01", "42501",
                               "0A000", "21000", "P0001"]
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            let r = try await approvedRequest(store)
            let keys = try await store.providers()
            try await client.query("CREATE SEQUENCE poison_attempts")
            try await client.query("CREATE TABLE poison (message_id uuid PRIMARY KEY, sqlstate text NOT NULL, times int NOT NULL)")
            try await client.query("""
                CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
                DECLARE p poison;
                BEGIN
                  SELECT * INTO p FROM poison WHERE message_id = NEW.message_id;
                  IF FOUND AND nextval('poison_attempts') <= p.times THEN
                    RAISE EXCEPTION 'injected fault' USING ERRCODE = p.sqlstate;
                  END IF;
                  RETURN NEW;
                END $$
                """)
            try await client.query("CREATE TRIGGER poison BEFORE INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION poison()")
            var percent = 0
            func status(_ id: UUID = UUID()) throws -> KafkaMessage {
                percent += 1
                return try message(.status, r.id, StatusBody(phase: .extracting, percent: percent), id: id)
            }
            for state in messageClasses + databaseClasses {
                let id = UUID()
                try await client.query("ALTER SEQUENCE poison_attempts RESTART")
                try await client.query("INSERT INTO poison (message_id, sqlstate, times) VALUES (\(id), \(state), 2)")
                let m = try status(id)
                if messageClasses.contains(state) {
                    let outcome = try await store.ingest(m, providerKeys: keys)
                    #expect(outcome == .deadLettered("the database refused a value of the message (SQLSTATE \(state))"), "\(state): \(outcome)")
                    let attempts = try await client.query("SELECT last_value FROM poison_attempts").collect()[0].decode(Int.self)
                    #expect(attempts == 1, "\(state): tried \(attempts) times")
                } else {
                    for attempt in 1...2 {
                        do {
                            let outcome = try await store.ingest(m, providerKeys: keys)
                            Issue.record("\(state), attempt \(attempt): not thrown but \(outcome)")
                        } catch {
                            #expect(IngestFailure.cause(of: error) == .database, "\(state): \(IngestFailure.cause(of: error))")
                        }
                    }
                    // The fault is gone: the same message applies, once.
                    #expect(try await store.ingest(m, providerKeys: keys) == .applied(.status), "\(state)")
                    #expect(try await store.ingest(m, providerKeys: keys) == .duplicate, "\(state)")
                }
                // After each, the next message applies.
                #expect(try await store.ingest(try status(), providerKeys: keys) == .applied(.status), "after \(state)")
            }
            let letters = try await client.query("SELECT count(*) FROM dead_letters").collect()[0].decode(Int.self)
            #expect(letters == messageClasses.count)
        }
    }

    /// What is not an SQLSTATE: the chunk store and the transaction's own failures are the
    /// database's (retried); a body that does not decode is the message's; anything else is
    /// unforeseen (retried a few times, then dead-lettered).
    @Test func failuresOtherThanSQLSTATEsAreClassifiedByWhoseFaultTheyAre() {
        struct Odd: Error {}
        #expect(IngestFailure.cause(of: ChunkStoreError(kind: .unwritable, location: "ab/cd", detail: "disk full")) == .database)
        #expect(IngestFailure.cause(of: BrokerError(.storageFailure, "chunk 3 is missing")) == .database)
        #expect(IngestFailure.cause(of: CancellationError()) == .database)
        #expect(IngestFailure.cause(of: IngestRejection(reason: "unknown request")) == .message("unknown request"))
        #expect(IngestFailure.cause(of: DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "x"))) == .message("malformed: the message body does not decode"))
        #expect(IngestFailure.cause(of: Odd()) == .unforeseen("Odd"))
    }
}
