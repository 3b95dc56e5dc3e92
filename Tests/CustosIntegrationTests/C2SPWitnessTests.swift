@testable import CustosBroker
import CustosCustody
import CustosMerkle
import CustosModel
import CustosTestSupport
import CustosWitness
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import PostgresNIO
import Testing

/// The broker's checkpoints as C2SP signed notes, pushed to a real `custos witness serve`
/// witness over HTTP with tlog-witness `add-checkpoint`, and the cosignatures kept beside them.
@Suite("C2SP witness push", .timeLimit(.minutes(3)))
struct C2SPWitnessTests {
    @Test func checkpointsAreSignedNotesThatAWitnessCosignsAsTheLogGrows() async throws {
        let logTests = try CustodyLogTests()
        try await TestServices.withStore { store, client, _ in
            let integrator = logTests.integrator(client)
            let logKey = logTests.signer.note.verifier
            let witnessKey = try NoteSigner.generate(name: "witness.test/procuracy", type: .cosignatureV1)
            let state = FileManager.default.temporaryDirectory.appendingPathComponent("witness-\(UUID())").path
            defer { try? FileManager.default.removeItem(atPath: state) }
            let server = try WitnessServer(settings: .init(signer: witnessKey, logs: [logKey], stateDirectory: state, prefix: "/w"),
                                           logger: TestServices.logger)
            try await Application(router: server.router()).test(.live) { http in
                let witness = C2SPWitness(key: witnessKey.verifier, url: "http://127.0.0.1:\(http.port!)/w")
                let pusher = WitnessPusher(store: store, witnesses: [witness], logger: TestServices.logger)
                #expect(try await pusher.pushOnce(to: witness) == .upToDate)  // no checkpoint yet

                for i in 0..<5 { try await store.custody.append(CustodyLogTests.event(i)) }
                try await integrator.integrateOnce()
                // The checkpoint: three lines (no time line), the log's note signature by its derived key.
                let first = try #require(try await store.latestCheckpoint())
                #expect(first.text.split(separator: "\n").count == 3)
                let note = try SignedNote(parsing: Array(try #require(first.note).utf8))
                #expect(note.text == Array(first.text.utf8))
                #expect(try note.verified(by: logKey).count == 1)
                #expect(try await pusher.pushOnce(to: witness) == .cosigned(5))
                #expect(try await pusher.pushOnce(to: witness) == .upToDate)

                // The log grows: the push carries a consistency proof from 5.
                for i in 5..<23 { try await store.custody.append(CustodyLogTests.event(i)) }
                try await integrator.integrateOnce()
                #expect(try await pusher.pushOnce(to: witness) == .cosigned(23))
                #expect(await server.record(origin: logKey.name)?.size == 23)

                // The served note carries the witness's cosignature, which verifies over the text.
                let served = try #require(try await store.checkpoint(size: 23).note)
                let cosigned = try SignedNote(parsing: Array(served.utf8))
                #expect(try cosigned.verified(by: logKey).count == 1)
                let line = try #require(try cosigned.verified(by: witnessKey.verifier).first)
                #expect(TlogCosignature.time(of: line).map { abs(Double($0) - Date().timeIntervalSince1970) < 60 } == true)

                // The broker forgot what the witness holds (a restored database): 409 teaches it.
                try await client.query("DELETE FROM c2sp_witness_sizes", logger: TestServices.logger)
                for i in 23..<30 { try await store.custody.append(CustodyLogTests.event(i)) }
                try await integrator.integrateOnce()
                #expect(try await pusher.pushOnce(to: witness) == .resynchronised(23))
                #expect(try await pusher.pushOnce(to: witness) == .cosigned(30))

                // A witness that does not know this log: refused, counted, nothing stored.
                let strangerKey = try NoteSigner.generate(name: "witness.test/stranger", type: .cosignatureV1)
                let stranger = try WitnessServer(settings: .init(signer: strangerKey, logs: [try NoteSigner.generate(name: "other.test/log", type: .ed25519).verifier],
                                                                 stateDirectory: state + "-2"), logger: TestServices.logger)
                defer { try? FileManager.default.removeItem(atPath: state + "-2") }
                try await Application(router: stranger.router()).test(.live) { other in
                    let w = C2SPWitness(key: strangerKey.verifier, url: "http://127.0.0.1:\(other.port!)")
                    await #expect(throws: WitnessPushError.self) { try await pusher.pushOnce(to: w) }
                }
                // The cosignatures are append-only, like the rest of the log.
                await #expect(throws: (any Error).self) {
                    try await client.query("DELETE FROM custody_note_cosignatures", logger: TestServices.logger)
                }
            }
        }
    }

    @Test func aWitnessEntryIsAVkeyAndAURL() throws {
        let key = try NoteSigner.generate(name: "witness.test/w", type: .cosignatureV1).verifier
        let w = try C2SPWitness("\(key.vkey) http://127.0.0.1:7380/")
        #expect(w.url == "http://127.0.0.1:7380" && w.key == key)
        #expect(throws: NoteError.self) { try C2SPWitness(key.vkey) }
        #expect(throws: NoteError.self) { try C2SPWitness("\(key.vkey) ftp://x") }
        let logKey = try NoteSigner.generate(name: "log.test", type: .ed25519).verifier
        #expect(throws: NoteError.self) { try C2SPWitness("\(logKey.vkey) http://127.0.0.1:1") }
    }
}
