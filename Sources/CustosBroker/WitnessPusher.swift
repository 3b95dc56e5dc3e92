import AsyncHTTPClient
import Crypto
import CustosCustody
import CustosMerkle
import Foundation
import Logging
import Metrics
import NIOCore
import PostgresNIO
import ServiceLifecycle

/// A C2SP witness the broker pushes checkpoints to: its verifier key (type 0x04) and its
/// submission prefix.
public struct C2SPWitness: Sendable, Equatable {
    public var key: NoteVerifierKey
    /// The submission prefix; requests go to `<url>/add-checkpoint`.
    public var url: String

    /// Parses `"<vkey> <URL>"`.
    /// - Throws: `NoteError` when the key is not a cosignature (0x04) vkey or the URL is not http(s).
    public init(_ entry: String) throws {
        let parts = entry.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard parts.count == 2 else { throw NoteError("expected a vkey and a URL separated by a space") }
        key = try NoteVerifierKey(vkey: parts[0])
        guard key.type == .cosignatureV1 else { throw NoteError("the witness key is not a tlog-cosignature (0x04) key") }
        guard let u = URL(string: parts[1]), ["http", "https"].contains(u.scheme ?? ""), u.host != nil else {
            throw NoteError("the witness URL is not http(s)")
        }
        url = parts[1].hasSuffix("/") ? String(parts[1].dropLast()) : parts[1]
    }

    public init(key: NoteVerifierKey, url: String) {
        self.key = key
        self.url = url
    }
}

/// Pushes the newest checkpoint to each configured C2SP witness with c2sp.org/tlog-witness
/// `add-checkpoint` (the old size the witness holds, the RFC 6962 consistency proof from it,
/// the checkpoint signed as a note), checks the returned cosignature against the witness's key,
/// and stores it beside the checkpoint (`custody_note_cosignatures`). A 409 teaches it the
/// witness's size; the next push starts there. Every other refusal is logged and counted
/// (`custos_custody_witness_refusals_total{status}`) and tried again with back-off.
public struct WitnessPusher: Service {
    let store: BrokerStore
    let witnesses: [C2SPWitness]
    let interval: Duration
    let http: HTTPClient
    let ready: Gate
    let logger: Logger

    public init(store: BrokerStore, witnesses: [C2SPWitness], interval: Duration = .seconds(1), http: HTTPClient = .shared,
                ready: Gate = Gate(open: true), logger: Logger) {
        self.store = store
        self.witnesses = witnesses
        self.interval = interval
        self.http = http
        self.ready = ready
        self.logger = logger
    }

    public func run() async throws {
        await ready.wait()
        await cancelWhenGracefulShutdown {
            await withTaskGroup(of: Void.self) { group in
                for witness in witnesses {
                    group.addTask { await loop(witness) }
                }
            }
        }
    }

    private func loop(_ witness: C2SPWitness) async {
        var failures = 0
        while !Task.isCancelled {
            do {
                try await pushOnce(to: witness)
                failures = 0
                try await Task.sleep(for: interval)
            } catch is CancellationError {
                return
            } catch {
                failures += 1
                logger.warning("checkpoint push to a witness failed; will retry", metadata: [
                    "tlog.witness": "\(witness.key.name)", LogKey.error: "\(loggable(error))", "attempt": "\(failures)"])
                try? await Task.sleep(for: Backoff.delay(attempt: failures))
            }
        }
    }

    public enum Outcome: Sendable, Equatable {
        /// Nothing newer than the witness holds (or no C2SP checkpoint yet).
        case upToDate
        /// Cosigned at this size.
        case cosigned(UInt64)
        /// The witness holds another size (409); the next push starts from it.
        case resynchronised(UInt64)
    }

    /// One push of the newest C2SP checkpoint to one witness.
    /// - Throws: `WitnessPushError` for a refusal other than 409, or a cosignature that does not verify.
    @discardableResult
    public func pushOnce(to witness: C2SPWitness) async throws -> Outcome {
        guard let latest = try await store.latestNoteCheckpoint() else { return .upToDate }
        guard try await !store.hasNoteCosignature(size: latest.size, witness: witness.key.vkey) else { return .upToDate }
        let held = try await store.witnessSize(witness.key.vkey)
        // The witness may hold this very size (a 409 said so) without our having its
        // cosignature: the same size again, with an empty proof, gets it.
        guard held <= latest.size else { return .upToDate }
        let proof: [SHA256Digest] = held == 0 || held == latest.size ? [] : try await store.consistencyProof(from: held, to: latest.size).proof.map {
            SHA256Digest(bytes: Data(base64Encoded: $0)!)!
        }
        let body = AddCheckpointRequest(oldSize: held, proof: proof, checkpoint: latest.note).body
        var request = HTTPClientRequest(url: witness.url + "/add-checkpoint")
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
        request.body = .bytes(ByteBuffer(bytes: body))
        let response = try await http.execute(request, timeout: .seconds(30))
        let answer = try await response.body.collect(upTo: 64 * 1024)
        let text = String(buffer: answer)
        switch response.status.code {
        case 200:
            let note = try SignedNote(parsing: latest.text + [0x0A] + Array(text.utf8))
            guard let line = try note.verified(by: witness.key).first else {
                throw WitnessPushError(status: 200, reason: "the answer holds no cosignature by the witness's key")
            }
            try await store.storeNoteCosignature(size: latest.size, witness: witness.key.vkey, line: line.line)
            logger.info("checkpoint cosigned by a C2SP witness", metadata: ["tlog.witness": "\(witness.key.name)", "tlog.size": "\(latest.size)"])
            return .cosigned(latest.size)
        case 409:
            guard let size = UInt64(text.trimmingCharacters(in: .newlines)), text.hasSuffix("\n") else {
                throw WitnessPushError(status: 409, reason: "the answer is not a tree size")
            }
            guard size <= latest.size else {
                // A witness ahead of the log: it saw a checkpoint this log never made, or lost ours.
                Counter(label: "custos_custody_witness_refusals_total", dimensions: [("status", "409")]).increment()
                throw WitnessPushError(status: 409, reason: "the witness holds size \(size), above the log's \(latest.size)")
            }
            try await store.setWitnessSize(witness.key.vkey, size)
            return .resynchronised(size)
        default:
            Counter(label: "custos_custody_witness_refusals_total", dimensions: [("status", "\(response.status.code)")]).increment()
            throw WitnessPushError(status: Int(response.status.code), reason: "refused")
        }
    }
}

/// A witness refused a checkpoint, or its answer did not check.
public struct WitnessPushError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var reason: String
    public var description: String { "witness answered \(status): \(reason)" }
}

extension BrokerStore {
    /// The newest checkpoint that has a note signature: its text and the signed note.
    func latestNoteCheckpoint() async throws -> (size: UInt64, text: [UInt8], note: [UInt8])? {
        for try await (size, body, line) in try await client.query("""
            SELECT size, body, note_signature FROM custody_checkpoints
            WHERE size = (SELECT max(size) FROM custody_checkpoints) AND note_signature IS NOT NULL
            """, logger: logger).decode((Int64, String, String).self) {
            let text = Array(body.utf8)
            return (UInt64(size), text, text + [0x0A] + Array(line.utf8))
        }
        return nil
    }

    /// Whether a witness's cosignature of the checkpoint of `size` is stored.
    func hasNoteCosignature(size: UInt64, witness: String) async throws -> Bool {
        try await client.query("""
            SELECT 1 FROM custody_note_cosignatures WHERE checkpoint_size = \(Int64(size)) AND witness = \(witness)
            """, logger: logger).decode(Int.self).first { _ in true } != nil
    }

    /// The size a witness holds for this log, as it last said (0 before any).
    func witnessSize(_ witness: String) async throws -> UInt64 {
        for try await size in try await client.query("SELECT size FROM c2sp_witness_sizes WHERE witness = \(witness)", logger: logger).decode(Int64.self) {
            return UInt64(size)
        }
        return 0
    }

    func setWitnessSize(_ witness: String, _ size: UInt64) async throws {
        try await client.query("""
            INSERT INTO c2sp_witness_sizes (witness, size) VALUES (\(witness), \(Int64(size)))
            ON CONFLICT (witness) DO UPDATE SET size = EXCLUDED.size, updated_at = now()
            """, logger: logger)
    }

    /// Stores a checked cosignature line and the witness's new size, together.
    func storeNoteCosignature(size: UInt64, witness: String, line: String) async throws {
        try await client.transaction(logger: logger) { conn in
            try await conn.query("""
                INSERT INTO custody_note_cosignatures (checkpoint_size, witness, line) VALUES (\(Int64(size)), \(witness), \(line))
                ON CONFLICT DO NOTHING
                """, logger: logger)
            try await conn.query("""
                INSERT INTO c2sp_witness_sizes (witness, size) VALUES (\(witness), \(Int64(size)))
                ON CONFLICT (witness) DO UPDATE SET size = EXCLUDED.size, updated_at = now()
                """, logger: logger)
        }
    }
}
