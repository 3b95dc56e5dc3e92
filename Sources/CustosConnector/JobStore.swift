import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import Foundation

/// Durable per-request state under `<stateDirectory>/jobs/<request id>/`. Every file is
/// written whole (temporary file, fsync, rename), so after a crash a file is either absent
/// or complete, and the phase of a job is read off which files exist:
///
/// | file | written when |
/// | --- | --- |
/// | `request.json` | the request arrived (before its Kafka offset is stored) |
/// | `results/<i>.ndjson`, `results/done-<category>.json` | result *i*'s records, as its adapter writes them (the content is the spools in result order); a category's adapter finished |
/// | `package-id`, `progress` | the package the chunks go out under (new when an adapter has to run again after a restart); every chunk below `progress` is acknowledged by Kafka |
/// | `extraction.json` | the adapters finished; the content is final |
/// | `chunks.json` | every chunk is acknowledged: their list, root and total size |
/// | `manifest.json`, `manifest.p7s` | the package was built and signed (CMS, DER) |
/// | `manifest.tsr` | the signature was time-stamped (RFC 3161 response, DER) |
/// | `sent` | the manifest, the package's last message, is acknowledged |
/// | `criteria.json` | the connector's own verdict on the four criteria, made after sending |
/// | `receipt.json` | the broker's signed receipt arrived (the message as received) |
/// | `answer-<question id>.json` | the investigator's answer to a question (the message as received) |
/// | `revoked.json` | the broker revoked the (emergency) request: nothing more is done or sent |
/// | `preserved` | a preservation order's data is frozen and confirmed |
/// | `extension-<message id>.json`, `.done` | the broker extended the order (as received); applied and confirmed |
/// | `released.json`, `released.done` | the order ended (as received); the data was let go |
public struct JobStore: Sendable {
    public let root: URL

    public init(stateDirectory: String) throws {
        root = URL(fileURLWithPath: stateDirectory).appendingPathComponent("jobs")
        try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
    }

    public func directory(_ id: UUID) -> URL { root.appendingPathComponent(id.lowercased) }
    public func file(_ id: UUID, _ name: String) -> URL { directory(id).appendingPathComponent(name) }
    public func exists(_ id: UUID, _ name: String) -> Bool { FileManager.default.fileExists(atPath: file(id, name).path) }

    public func read(_ id: UUID, _ name: String) throws -> Data { try Data(contentsOf: file(id, name)) }

    /// Atomically replaces `name` with `data`, durably.
    public func write(_ id: UUID, _ name: String, _ data: Data) throws {
        try FileManager.default.createDirectory(at: directory(id), withIntermediateDirectories: true)
        let tmp = file(id, name + ".tmp")
        let fd = open(tmp.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        guard fd >= 0 else { throw JobStoreError(reason: "cannot create \(name) (errno \(errno))") }
        let ok = data.withUnsafeBytes { buf -> Bool in
            var off = 0
            while off < buf.count {
                let n = Foundation.write(fd, buf.baseAddress! + off, buf.count - off)
                if n <= 0 { return false }
                off += n
            }
            return fsync(fd) == 0
        }
        close(fd)
        guard ok else { throw JobStoreError(reason: "cannot write \(name)") }
        guard rename(tmp.path, file(id, name).path) == 0 else { throw JobStoreError(reason: "cannot rename \(name)") }
        let dirfd = open(directory(id).path, O_RDONLY)
        if dirfd >= 0 { fsync(dirfd); close(dirfd) }
    }

    public func remove(_ id: UUID, _ name: String) {
        try? FileManager.default.removeItem(at: file(id, name))
    }

    /// Every job whose request was accepted, oldest first.
    public func jobs() -> [UUID] {
        let entries = (try? FileManager.default.contentsOfDirectory(at: root, includingPropertiesForKeys: [.creationDateKey])) ?? []
        return entries
            .compactMap { url -> (UUID, Date)? in
                guard let id = UUID(uuidString: url.lastPathComponent), FileManager.default.fileExists(atPath: url.appendingPathComponent("request.json").path) else { return nil }
                let date = (try? url.resourceValues(forKeys: [.creationDateKey]).creationDate) ?? .distantPast
                return (id, date)
            }
            .sorted { $0.1 < $1.1 }
            .map(\.0)
    }

    /// The job's files whose names start with `prefix` and end in `.json`, sorted.
    public func files(_ id: UUID, prefix: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory(id).path)) ?? []
        return names.filter { $0.hasPrefix(prefix) && $0.hasSuffix(".json") }.sorted()
    }

    /// The investigator's answers to this provider's questions, as received.
    public func answers(_ id: UUID) -> [ClarificationBody] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory(id).path)) ?? []
        return names.filter { $0.hasPrefix("answer-") && $0.hasSuffix(".json") }.sorted().compactMap { name in
            guard let data = try? read(id, name), let json = try? JSONParser.parse(Array(data)),
                  let body = try? SignedEnvelope.body(ClarificationBody.self, from: json).body else { return nil }
            return body
        }
    }

    /// Whether the job's request is an emergency (it goes in the urgent lane).
    public func isUrgent(_ id: UUID) -> Bool {
        guard let data = try? read(id, "request.json"), let body = try? JSONDecoder().decode(RequestBody.self, from: data) else { return false }
        return body.request.priority == .emergency
    }

    public enum Phase: String, Sendable, Codable {
        case received, extracted, packaged, sent, done, revoked
    }

    public func phase(_ id: UUID) -> Phase {
        if exists(id, "revoked.json") { return .revoked }
        if exists(id, "receipt.json") { return .done }
        if exists(id, "sent") { return .sent }
        if exists(id, "manifest.json") { return .packaged }
        if exists(id, "extraction.json") { return .extracted }
        return .received
    }

    /// What the extraction found, for `custos-connector status`: records kept, records outside
    /// the request (not sent), and the categories no adapter could serve.
    public func extractionSummary(_ id: UUID) -> (records: Int, outOfScope: Int, cannotExecute: [String])? {
        guard let data = try? read(id, "extraction.json"), let e = try? JSONDecoder().decode(Extraction.self, from: data) else { return nil }
        return (e.results.reduce(0) { $0 + $1.recordCount }, e.outOfScope, Array(e.cannotExecute.keys))
    }

    /// Whether the state directory takes a durable write now (for the health endpoint).
    public func isWritable() -> Bool {
        let probe = root.appendingPathComponent(".health-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: probe) }
        return FileManager.default.createFile(atPath: probe.path, contents: Data("ok".utf8))
    }

    public func progress(_ id: UUID) -> Int {
        (try? read(id, "progress")).flatMap { Int(String(decoding: $0, as: UTF8.self)) } ?? 0
    }
}

public struct JobStoreError: Error, CustomStringConvertible, Sendable {
    public var reason: String
    public var description: String { "state directory: \(reason)" }
}
