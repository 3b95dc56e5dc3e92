import Crypto
import CustosCustody
import Foundation
import Hummingbird
import Logging
import NIOCore

/// A transparency-log witness speaking c2sp.org/tlog-witness: `POST <prefix>/add-checkpoint`
/// with an old size, a consistency proof and a signed checkpoint; it answers with a
/// c2sp.org/tlog-cosignature (Ed25519, type 0x04) line, or with the spec's status codes:
/// 400 malformed, 403 no valid signature by the log's key, 404 unknown log, 409 stale old size
/// (body `<size>\n`, `Content-Type: text/x.tlog.size`), 422 bad consistency proof.
///
/// Each log's latest cosigned checkpoint is kept in `stateDirectory`, one JSON file per
/// origin, replaced atomically (write, fsync, rename, fsync of the directory) before the
/// answer; the check and the store run under one lock, so two requests never roll a log back.
public struct WitnessServer: Sendable {
    public struct Settings: Sendable {
        /// The cosigning key (type 0x04); its name is the witness's name.
        public var signer: NoteSigner
        /// The logs it witnesses: their verifier keys (type 0x01), whose names are their origins.
        public var logs: [NoteVerifierKey]
        public var stateDirectory: String
        /// The submission prefix (e.g. "" or "/witness").
        public var prefix: String

        public init(signer: NoteSigner, logs: [NoteVerifierKey], stateDirectory: String, prefix: String = "") {
            self.signer = signer
            self.logs = logs
            self.stateDirectory = stateDirectory
            self.prefix = prefix
        }
    }

    /// A request body's limit: the header (≤ 64 lines of ≤ 45 bytes) and a note.
    public static let maximumBodyBytes = SignedNote.maximumBytes + 4096

    let settings: Settings
    let state: WitnessState
    let logger: Logger

    /// - Throws: when the state directory cannot be created or holds an unreadable record.
    public init(settings: Settings, logger: Logger) throws {
        guard settings.signer.type == .cosignatureV1 else { throw NoteError("a witness's key must be of type 0x04 (tlog-cosignature)") }
        for key in settings.logs where key.type != .ed25519 {
            throw NoteError("the log key \(key.name) is not an Ed25519 (0x01) note key")
        }
        self.settings = settings
        self.state = try WitnessState(directory: settings.stateDirectory)
        self.logger = logger
    }

    /// The router, for an `Application` of the caller's choosing (tests bind port 0).
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        let policy = TlogWitnessPolicy(logs: Dictionary(grouping: settings.logs, by: \.name))
        let signer = settings.signer
        let state = self.state
        let logger = self.logger
        router.post("\(settings.prefix)/add-checkpoint") { request, _ -> Response in
            let body: ByteBuffer
            do { body = try await request.body.collect(upTo: Self.maximumBodyBytes) } catch {
                return Self.text(.contentTooLarge, "the request is larger than \(Self.maximumBodyBytes) bytes\n")
            }
            let parsed: AddCheckpointRequest
            do { parsed = try AddCheckpointRequest(parsing: Array(body.readableBytesView)) } catch {
                return Self.text(.badRequest, "\(error)\n")
            }
            do {
                let line = try await state.update { records in
                    // The origin is only known once the note parses; the policy parses it again.
                    let origin = (try? SignedNote(parsing: parsed.checkpoint)).flatMap { try? TlogCheckpointHead(text: $0.text) }?.origin
                    let current = origin.flatMap { records[$0] }.flatMap { r in Data(base64Encoded: r.root).flatMap(SHA256Digest.init(bytes:)).map { (r.size, $0) } }
                    let head = try policy.judge(parsed, current: current)
                    let note = try SignedNote(parsing: parsed.checkpoint)
                    let time = UInt64(max(0, Date().timeIntervalSince1970))
                    let cosignature = try TlogCosignature.sign(checkpoint: note.text, time: time, by: signer)
                    records[head.origin] = WitnessedLog(origin: head.origin, size: head.size, root: Data(head.root.bytes).base64EncodedString(),
                                                        checkpoint: String(decoding: parsed.checkpoint, as: UTF8.self))
                    return (head.origin, cosignature.line)
                }
                logger.info("checkpoint cosigned", metadata: ["tlog.origin": "\(line.0)"])
                return Self.text(.ok, line.1)
            } catch let refusal as WitnessRefusal {
                logger.notice("checkpoint refused", metadata: ["http.status": "\(refusal.status)", "custos.reason": "\(refusal)"])
                if case .conflict(let size) = refusal {
                    return Response(status: .conflict, headers: [.contentType: "text/x.tlog.size"], body: .init(byteBuffer: ByteBuffer(string: "\(size)\n")))
                }
                return Self.text(.init(code: refusal.status), "\(refusal)\n")
            }
        }
        return router
    }

    static func text(_ status: HTTPResponse.Status, _ body: String) -> Response {
        Response(status: status, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    /// The witness's record of a log, nil if it never cosigned one.
    public func record(origin: String) async -> WitnessedLog? { await state.records[origin] }
}

/// The records, in memory and on disk; `update` is the one lock.
actor WitnessState {
    let directory: URL
    private(set) var records: [String: WitnessedLog] = [:]

    init(directory: String) throws {
        self.directory = URL(fileURLWithPath: directory, isDirectory: true)
        try FileManager.default.createDirectory(at: self.directory, withIntermediateDirectories: true)
        for name in try FileManager.default.contentsOfDirectory(atPath: directory) where name.hasSuffix(".json") {
            let data = try Data(contentsOf: self.directory.appendingPathComponent(name))
            let record = try JSONDecoder().decode(WitnessedLog.self, from: data)
            guard Self.fileName(record.origin) == name else { throw NoteError("the witness state file \(name) does not hold its own log") }
            records[record.origin] = record
        }
    }

    static func fileName(_ origin: String) -> String {
        SHA256.hash(data: Array(origin.utf8)).map { String(format: "%02x", $0) }.joined() + ".json"
    }

    /// Runs `body` on the records and persists every changed one before returning.
    func update<R: Sendable>(_ body: (inout [String: WitnessedLog]) throws -> R) throws -> R {
        var copy = records
        let result = try body(&copy)
        for (origin, record) in copy where records[origin] != record {
            try persist(record)
            records[origin] = record
        }
        return result
    }

    private func persist(_ record: WitnessedLog) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
        let final = directory.appendingPathComponent(Self.fileName(record.origin))
        let temporary = directory.appendingPathComponent(".\(Self.fileName(record.origin)).tmp")
        let data = try encoder.encode(record)
        guard FileManager.default.createFile(atPath: temporary.path, contents: nil) else { throw NoteError("cannot write \(temporary.path)") }
        let handle = try FileHandle(forWritingTo: temporary)
        try handle.write(contentsOf: data)
        try handle.synchronize()
        try handle.close()
        guard rename(temporary.path, final.path) == 0 else { throw NoteError("cannot replace \(final.path): errno \(errno)") }
        let dir = open(directory.path, O_RDONLY)
        if dir >= 0 {
            _ = fsync(dir)
            close(dir)
        }
    }
}
