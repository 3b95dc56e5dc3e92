@testable import CustosBroker
import Crypto
import CustosCustody
import CustosMerkle
import CustosModel
import CustosPKI
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// The custody log against the real PostgreSQL: dense sequencing under concurrency, the
/// append-only guarantees, checkpoints with proofs, witness co-signatures, and the audit
/// catching a tampered and a truncated log.
@Suite("Custody log", .timeLimit(.minutes(3)))
struct CustodyLogTests {
    let pki: TestPKI

    init() throws { pki = try TestPKI(signerName: "prov-a") }

    var signer: CheckpointSigner {
        try! CheckpointSigner(origin: "tests.custos/custody", certificate: pki.custodyCertificate, key: pki.custodyKey,
                         timeStamp: CheckpointSigner.stamping(with: pki.tsa))
    }

    func integrator(_ client: PostgresClient, batch: Int = 200_000) -> CustodyIntegrator {
        CustodyIntegrator(client: client, signer: signer, maximumBatch: batch, logger: TestServices.logger)
    }

    static func event(_ n: Int, package: UUID? = nil) -> CustodyEvent {
        CustodyEvent(kind: .packageViewed, at: Timestamp.now(), actor: .init(type: .user, id: "user-\(n % 7)", address: "192.0.2.\(n % 200)"),
                     subject: .init(requestId: UUID(), packageId: package ?? UUID()), objects: ["manifestSha256": Digest.sha256Hex(Array("\(n)".utf8))])
    }

    /// A client on the test's schema as the superuser (`CUSTOS_DATABASE_ADMIN_URL`), for tampering.
    static func withAdmin<R: Sendable>(_ db: DatabaseConfiguration, _ body: @Sendable (PostgresClient) async throws -> R) async throws -> R {
        var quiet = TestServices.logger
        quiet.logLevel = .error  // the pool warns when the first query races its run()
        let admin = try DatabaseConfiguration(url: TestServices.adminDatabaseURL(), schema: db.schema).makeClient(logger: quiet)
        return try await withThrowingTaskGroup(of: R?.self) { group in
            group.addTask { await admin.run(); return nil }
            defer { group.cancelAll() }
            return try await body(admin)
        }
    }

    func verifiedCheckpoint(_ c: API.CheckpointView) throws -> Checkpoint {
        let r = CheckpointVerifier.verify(text: Array(c.text.utf8), signature: Array(Data(base64Encoded: c.signature)!),
                                          timeStamp: Array(Data(base64Encoded: c.timeStamp)!), logTrust: pki.custodyCA, tsaTrust: pki.tsaCA)
        #expect(r.failures.isEmpty, "\(r.failures)")
        return try #require(r.checkpoint)
    }

    static func digests(_ b64: [String]) -> [SHA256Digest] { b64.map { SHA256Digest(bytes: Data(base64Encoded: $0)!)! } }

    @Test func concurrentAppendsGetDenseIndicesAndTheLogRefusesChanges() async throws {
        try await TestServices.withStore { store, client, db in
            // Group-committed appends from many tasks, and appends inside state-changing transactions, at once.
            let indices = try await withThrowingTaskGroup(of: [Int64].self) { group in
                for t in 0..<16 {
                    group.addTask {
                        var mine: [Int64] = []
                        for i in 0..<40 { mine.append(try await store.custody.append(Self.event(t * 100 + i))) }
                        return mine
                    }
                }
                group.addTask {
                    var mine: [Int64] = []
                    for i in 0..<20 {
                        let range = try await client.transaction(logger: TestServices.logger) { conn in
                            try await CustodyLog.append([(Self.event(i), entry: try Self.event(i).entry()), (Self.event(i + 1), entry: try Self.event(i + 1).entry())],
                                                        on: conn, logger: TestServices.logger)
                        }
                        mine += Array(range)
                    }
                    return mine
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(indices.sorted() == Array(0..<Int64(16 * 40 + 40)))
            let stored = try await client.query("SELECT count(*), max(idx) FROM custody_events", logger: TestServices.logger)
                .decode((Int, Int64).self).first { _ in true }
            #expect(stored?.0 == 680 && stored?.1 == 679)

            // A transaction that rolls back leaves no gap: the next index is the one it had taken.
            await #expect(throws: (any Error).self) {
                try await client.custodyTransaction(logger: TestServices.logger) { _, custody in
                    custody.record(Self.event(1))
                    throw BrokerError(.conflict, "rolled back")
                }
            }
            #expect(try await store.custody.append(Self.event(2)) == 680)

            // The broker's own role may not change the log; the triggers refuse even the superuser.
            let isSuperuser = try await client.query("SELECT usesuper FROM pg_user WHERE usename = current_user", logger: TestServices.logger)
                .decode(Bool.self).first { _ in true } ?? true
            for statement in ["UPDATE custody_events SET kind = 'x' WHERE idx = 3", "DELETE FROM custody_events WHERE idx = 680",
                              "TRUNCATE custody_events", "DELETE FROM custody_checkpoints"] {
                do {
                    try await client.query(PostgresQuery(unsafeSQL: statement), logger: TestServices.logger)
                    Issue.record("\(statement) was allowed")
                } catch let e as PSQLError {
                    let state = e.serverInfo?[.sqlState], message = e.serverInfo?[.message] ?? ""
                    #expect(isSuperuser ? message.contains("append-only") : state == "42501", "\(statement): \(state ?? "?") \(message)")
                }
            }
            try await Self.withAdmin(db) { admin in
                do {
                    try await admin.query("UPDATE custody_events SET kind = 'x' WHERE idx = 3", logger: TestServices.logger)
                    Issue.record("the superuser's UPDATE was allowed")
                } catch let e as PSQLError {
                    #expect(e.serverInfo?[.message]?.contains("custody log is append-only: UPDATE") == true)
                }
            }
        }
    }

    @Test func checkpointsAreSignedAndTimeStampedAndEveryProofVerifies() async throws {
        try await TestServices.withStore { store, client, _ in
            let integrator = integrator(client, batch: 700)
            #expect(try await integrator.integrateOnce() == nil)  // nothing to integrate, no checkpoint
            for i in 0..<300 { try await store.custody.append(Self.event(i)) }
            let first = try #require(try await integrator.integrateOnce())
            #expect(first.checkpoint.size == 300 && !first.more)
            for i in 0..<1_200 { try await store.custody.append(Self.event(i)) }
            #expect(try await integrator.integrateOnce()?.more == true)  // 700 of 1,200
            #expect(try await integrator.integrateOnce()?.checkpoint.size == 1_500)

            let latest = try #require(try await store.latestCheckpoint())
            let head = try verifiedCheckpoint(latest)
            #expect(head.size == 1_500 && head.origin == "tests.custos/custody")
            // The signed root is the definition's root over the stored entries.
            var entries: [SHA256Digest] = []
            for try await e in try await client.query("SELECT entry FROM custody_events ORDER BY idx", logger: TestServices.logger).decode(ByteBuffer.self) {
                entries.append(CustodyEvent.leafHash(entry: Array(e.readableBytesView)))
            }
            #expect(head.root == MerkleVectors.root(1_500, entries))

            for index: UInt64 in [0, 255, 256, 299, 300, 1_000, 1_499] {
                let p = try await store.inclusionProof(index: index, size: nil)
                let cp = try verifiedCheckpoint(p.checkpoint)
                #expect(cp.size == (index < 300 ? 300 : index < 1_000 ? 1_000 : 1_500))
                try MerkleProof.verifyInclusion(leafHash: CustodyEvent.leafHash(entry: Array(p.entry.utf8)), index: index, size: cp.size,
                                                proof: Self.digests(p.proof), root: cp.root)
                let intoLatest = try await store.inclusionProof(index: index, size: 1_500)
                try MerkleProof.verifyInclusion(leafHash: CustodyEvent.leafHash(entry: Array(intoLatest.entry.utf8)), index: index, size: 1_500,
                                                proof: Self.digests(intoLatest.proof), root: head.root)
            }
            let old = try verifiedCheckpoint(try await store.checkpoint(size: 300))
            let c = try await store.consistencyProof(from: 300, to: 1_500)
            try MerkleProof.verifyConsistency(oldSize: 300, newSize: 1_500, oldRoot: old.root, newRoot: head.root, proof: Self.digests(c.proof))
            await #expect(throws: BrokerError.self) { try await store.consistencyProof(from: 301, to: 1_500) }  // no such checkpoint
            await #expect(throws: BrokerError.self) { try await store.inclusionProof(index: 1_500, size: nil) }  // not in a checkpoint yet
        }
    }

    @Test func witnessesCoSignWithTheirRegisteredCertificateOnly() async throws {
        try await TestServices.withStore { store, client, _ in
            try await store.custody.append(Self.event(1))
            let cp = try #require(try await integrator(client).integrateOnce()).checkpoint
            _ = try await store.registerWitness(name: "procuracy", certificate: pki.witnessCertificate, by: .testAdmin)
            let witness = try #require(try await store.user(token: try await store.registerWitness(
                name: "procuracy-2", certificate: pki.witnessCertificate, by: .testAdmin)))
            let procuracy = AuthenticatedUser(id: UUID(), name: "procuracy", role: .witness)
            let stranger = try TestPKI()
            let forged = try cp.sign(certificate: stranger.witnessCertificate, key: stranger.witnessKey)
            await #expect(throws: BrokerError.self) { try await store.cosign(size: cp.size, signature: Data(forged).base64EncodedString(), by: procuracy) }
            let overOther = try Checkpoint(origin: cp.origin, size: cp.size, root: cp.root, time: "2020-01-01T00:00:00Z")
                .sign(certificate: pki.witnessCertificate, key: pki.witnessKey)
            await #expect(throws: BrokerError.self) { try await store.cosign(size: cp.size, signature: Data(overOther).base64EncodedString(), by: procuracy) }
            let investigator = AuthenticatedUser(id: UUID(), name: "procuracy", role: .investigator)
            let good = Data(try cp.sign(certificate: pki.witnessCertificate, key: pki.witnessKey)).base64EncodedString()
            await #expect(throws: BrokerError.self) { try await store.cosign(size: cp.size, signature: good, by: investigator) }
            let shown = try await store.cosign(size: cp.size, signature: good, by: procuracy)
            #expect(shown.cosignatures.map(\.witness) == ["procuracy"])
            #expect(try await store.cosign(size: cp.size, signature: good, by: witness).cosignatures.map(\.witness).sorted() == ["procuracy", "procuracy-2"])
            #expect(try await store.latestCheckpoint()?.cosignatures.count == 2)
        }
    }

    @Test func theAuditFindsAnEventRewrittenInTheDatabase() async throws {
        try await TestServices.withStore { store, client, db in
            let integrator = integrator(client)
            for round in 0..<3 {
                for i in 0..<400 { try await store.custody.append(Self.event(round * 1000 + i)) }
                try await integrator.integrateOnce()
            }
            #expect(try await store.audit(logCertificate: pki.custodyCertificate).ok)

            // A superuser rewrites event 555 — the user who viewed a package — bypassing the triggers.
            try await Self.withAdmin(db) { admin in
                try await admin.withTransaction(logger: TestServices.logger) { conn in
                    try await conn.query("SET LOCAL session_replication_role = replica", logger: TestServices.logger)
                    try await conn.query("""
                        UPDATE custody_events SET entry = convert_to(replace(convert_from(entry, 'UTF8'), '"user-', '"someone-else-'), 'UTF8')
                        WHERE idx = 555
                        """, logger: TestServices.logger)
                }
            }
            let report = try await store.audit(logCertificate: pki.custodyCertificate)
            #expect(!report.ok)
            let divergence = try #require(report.firstDivergence)
            #expect(divergence.checkpointSize == 800 && divergence.source == "log")  // the first checkpoint covering event 555
            #expect(divergence.firstChangedEvent == 555)
            #expect(divergence.recomputedRoot != divergence.signedRoot)
        }
    }

    @Test func deletingTheNewestEventsIsCaughtAgainstAWitnessHeldCheckpoint() async throws {
        try await TestServices.withStore { store, client, db in
            let integrator = integrator(client)
            for i in 0..<500 { try await store.custody.append(Self.event(i)) }
            try await integrator.integrateOnce()
            for i in 0..<300 { try await store.custody.append(Self.event(i)) }
            try await integrator.integrateOnce()
            // The witness keeps the newest checkpoint it co-signed.
            let held = try #require(try await store.latestCheckpoint())
            #expect(held.size == 800)
            let witnessHeld = CustodyAudit.SignedCheckpoint(text: Array(held.text.utf8), signature: Array(Data(base64Encoded: held.signature)!), source: "witness")

            // A superuser truncates the log to 500 events and removes every trace beyond it:
            // the events, the newer checkpoint and the counter.
            try await Self.withAdmin(db) { admin in
                try await admin.withTransaction(logger: TestServices.logger) { conn in
                    try await conn.query("SET LOCAL session_replication_role = replica", logger: TestServices.logger)
                    try await conn.query("DELETE FROM custody_events WHERE idx >= 500", logger: TestServices.logger)
                    try await conn.query("DELETE FROM custody_checkpoints WHERE size > 500", logger: TestServices.logger)
                    try await conn.query("UPDATE custody_sequence SET next_index = 500", logger: TestServices.logger)
                }
            }
            // Against its own (doctored) checkpoints the log looks whole...
            #expect(try await store.audit(logCertificate: pki.custodyCertificate).ok)
            // ...but not against the checkpoint the witness holds.
            let report = try await store.audit(logCertificate: pki.custodyCertificate, witnessCheckpoints: [witnessHeld])
            let divergence = try #require(report.firstDivergence)
            #expect(divergence.checkpointSize == 800 && divergence.source == "witness" && divergence.recomputedRoot == nil)
            #expect(divergence.reason.contains("truncation"))
            // The broker carries on over the cut-back log (stale tile entries are replaced), and
            // the witness's checkpoint still tells: the new events do not reproduce its root.
            for i in 0..<400 { try await store.custody.append(Self.event(10_000 + i)) }
            #expect(try await integrator.integrateOnce()?.checkpoint.size == 900)
            let after = try await store.audit(logCertificate: pki.custodyCertificate, witnessCheckpoints: [witnessHeld])
            #expect(after.firstDivergence?.checkpointSize == 800 && after.firstDivergence?.source == "witness")
            #expect(after.problems.isEmpty)
        }
    }

    @Test func everyStepOfTheWorkflowAndEveryAdminActionIsAnEvent() async throws {
        try await TestServices.withStore { store, client, _ in
            try await store.registerProvider(id: "prov-a", certificate: pki.signer, caCertificate: pki.providerCA, by: .testAdmin)
            let (inv, _) = try await store.addUser(name: "inv", role: .investigator, by: .testAdmin)
            let (appr, _) = try await store.addUser(name: "appr", role: .approver, by: .testAdmin)
            try await store.setRole(name: "appr", role: .admin, by: .testAdmin)
            try await store.setRole(name: "appr", role: .approver, by: .testAdmin)
            _ = try await store.registerWitness(name: "procuracy", certificate: pki.witnessCertificate, by: .testAdmin)
            try await store.recordKeyChanges(["message-signing": "aa", "custody-log": "bb"])
            try await store.recordKeyChanges(["message-signing": "aa", "custody-log": "cc"])  // only the changed key is recorded
            let c = try await store.createCase(title: "case with a name that stays out of the log", by: inv)
            let rejected = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: inv)
            try await store.submit(rejected, by: inv)
            try await store.reject(rejected, by: appr, reason: "free text that stays out of the log")
            let withdrawn = try await store.draft(BrokerAPITests.spec(caseId: c.id), by: inv)
            try await store.withdraw(withdrawn, by: inv, reason: nil)
            await #expect(throws: BrokerError.self) { try await store.withdraw(withdrawn, by: inv, reason: nil) }
            try await store.recordAccess(.requestViewed, by: inv, subject: .init(requestId: rejected))

            var kinds: [String] = []
            var entries: [String] = []
            for try await (kind, entry) in try await client.query("SELECT kind, entry FROM custody_events ORDER BY idx", logger: TestServices.logger)
                .decode((String, ByteBuffer).self) {
                kinds.append(kind)
                entries.append(String(decoding: entry.readableBytesView, as: UTF8.self))
            }
            #expect(kinds == ["admin.provider-registered", "admin.user-added", "admin.user-added", "admin.user-role-changed", "admin.user-role-changed",
                              "admin.user-added", "admin.witness-registered", "admin.key-changed", "admin.key-changed", "admin.key-changed",
                              "case.created", "document.uploaded", "request.drafted", "request.submitted", "request.rejected", "request.drafted", "request.withdrawn",
                              "request.viewed"])
            // Free text and target identifiers never enter the log, only their hashes.
            #expect(!entries.joined().contains("stays out of the log"))
            #expect(!entries.joined().contains("+849"))
            #expect(entries.allSatisfy { (try? CustodyEvent.decode(entry: Array($0.utf8))) != nil })
        }
    }
}
