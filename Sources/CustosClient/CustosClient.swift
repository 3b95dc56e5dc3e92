import AsyncHTTPClient
import Crypto
import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1

/// Talks to the broker's HTTP API. Non-2xx answers become `API.Problem` errors.
public struct CustosClient: Sendable {
    public let baseURL: String
    public let token: String?
    let http: HTTPClient

    public init(baseURL: String, token: String?, http: HTTPClient = .shared) {
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.token = token
        self.http = http
    }

    public struct ClientError: Error, CustomStringConvertible, Sendable {
        public var reason: String
        public var description: String { reason }
    }

    func makeRequest(_ method: HTTPMethod, _ path: String) -> HTTPClientRequest {
        var r = HTTPClientRequest(url: baseURL + path)
        r.method = method
        if let token { r.headers.add(name: "Authorization", value: "Bearer \(token)") }
        r.headers.add(name: "Accept", value: "application/json")
        return r
    }

    func call<Response: Decodable>(_ method: HTTPMethod, _ path: String, body: (some Encodable)? = Optional<String>.none,
                                   as: Response.Type = Response.self) async throws -> Response {
        var request = makeRequest(method, path)
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try CanonicalJSON.encode(body)))
        }
        let response: HTTPClientResponse
        do { response = try await http.execute(request, timeout: .seconds(60)) } catch {
            throw ClientError(reason: "cannot reach the broker at \(baseURL): \(error)")
        }
        let bytes = try await response.body.collect(upTo: 64 << 20)
        guard (200..<300).contains(response.status.code) else { throw Self.problem(response.status, bytes) }
        return try JSONDecoder().decode(Response.self, from: Data(buffer: bytes))
    }

    static func problem(_ status: HTTPResponseStatus, _ bytes: ByteBuffer) -> any Error {
        (try? JSONDecoder().decode(API.Problem.self, from: Data(buffer: bytes)))
            ?? API.Problem(type: "about:blank", title: status.reasonPhrase, status: Int(status.code))
    }

    public func me() async throws -> API.UserView { try await call(.GET, "/v1/me") }
    public func createCase(title: String) async throws -> API.CaseView { try await call(.POST, "/v1/cases", body: API.CreateCase(title: title)) }
    public func createRequest(_ spec: RequestSpec) async throws -> API.RequestView { try await call(.POST, "/v1/requests", body: spec) }
    /// Uploads a decision document (its media type from the file name's extension).
    public func uploadDocument(_ bytes: [UInt8], mediaType: String) async throws -> API.DocumentView {
        var r = makeRequest(.POST, "/v1/documents")
        r.headers.replaceOrAdd(name: "Content-Type", value: mediaType)
        r.body = .bytes(ByteBuffer(bytes: bytes))
        let response = try await http.execute(r, timeout: .seconds(120))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .created else { throw Self.problem(response.status, body) }
        return try JSONDecoder().decode(API.DocumentView.self, from: Data(buffer: body))
    }
    public func request(_ id: UUID) async throws -> API.RequestView { try await call(.GET, "/v1/requests/\(id.lowercased)") }
    /// Imports an authority's HI-1 `CREATE` message (ETSI TS 103 120, XML): a new case and its drafts.
    public func importHI1(_ xml: [UInt8]) async throws -> API.HI1ImportView {
        var r = makeRequest(.POST, "/v1/requests")
        r.headers.replaceOrAdd(name: "Content-Type", value: "application/xml")
        r.body = .bytes(ByteBuffer(bytes: xml))
        let response = try await http.execute(r, timeout: .seconds(60))
        let body = try await response.body.collect(upTo: 1 << 20)
        guard response.status == .created else { throw Self.problem(response.status, body) }
        return try JSONDecoder().decode(API.HI1ImportView.self, from: Data(buffer: body))
    }
    /// The request as approved, as an HI-1 message (`GET /v1/requests/{id}/hi1`), or its status
    /// as an HI-1 `GETResponse` (`GET /v1/requests/{id}` with `Accept: application/xml`).
    public func hi1(_ id: UUID, statusOnly: Bool = false) async throws -> [UInt8] {
        var r = makeRequest(.GET, "/v1/requests/\(id.lowercased)" + (statusOnly ? "" : "/hi1"))
        r.headers.replaceOrAdd(name: "Accept", value: "application/xml")
        let response = try await http.execute(r, timeout: .seconds(120))
        let body = try await response.body.collect(upTo: 256 << 20)
        guard response.status == .ok else { throw Self.problem(response.status, body) }
        return Array(body.readableBytesView)
    }
    public func submit(_ id: UUID) async throws -> API.RequestView { try await call(.POST, "/v1/requests/\(id.lowercased)/submit", body: API.Decision()) }
    public func approve(_ id: UUID) async throws -> API.RequestView { try await call(.POST, "/v1/requests/\(id.lowercased)/approve", body: API.Decision()) }
    public func reject(_ id: UUID, reason: String?) async throws -> API.RequestView {
        try await call(.POST, "/v1/requests/\(id.lowercased)/reject", body: API.Decision(reason: reason))
    }
    public func withdraw(_ id: UUID, reason: String?) async throws -> API.RequestView {
        try await call(.POST, "/v1/requests/\(id.lowercased)/withdraw", body: API.Decision(reason: reason))
    }
    public func extendPreservation(_ id: UUID) async throws -> API.RequestView {
        try await call(.POST, "/v1/requests/\(id.lowercased)/extend", body: API.Decision())
    }
    public func releasePreservation(_ id: UUID, reason: String?) async throws -> API.RequestView {
        try await call(.POST, "/v1/requests/\(id.lowercased)/release", body: API.Decision(reason: reason))
    }
    public func review(_ id: UUID, decision: API.Review.Decision, reason: String?) async throws -> API.RequestView {
        try await call(.POST, "/v1/requests/\(id.lowercased)/review", body: API.Review(decision: decision, reason: reason))
    }
    public func answer(_ id: UUID, question: UUID, answer: String) async throws -> API.RequestView {
        try await call(.POST, "/v1/requests/\(id.lowercased)/clarifications/\(question.lowercased)/answer", body: API.Answer(answer: answer))
    }
    public func timeline(_ id: UUID) async throws -> API.Timeline { try await call(.GET, "/v1/requests/\(id.lowercased)/timeline") }

    /// `GET /v1/requests` with its query (`state=submitted&limit=50`…, already encoded).
    public func listRequests(query: String) async throws -> API.Page<API.RequestSummary> {
        try await call(.GET, "/v1/requests" + (query.isEmpty ? "" : "?" + query))
    }
    /// `GET /v1/cases`.
    public func listCases(query: String) async throws -> API.Page<API.CaseSummary> {
        try await call(.GET, "/v1/cases" + (query.isEmpty ? "" : "?" + query))
    }
    public func caseSummary(_ id: UUID) async throws -> API.CaseSummary { try await call(.GET, "/v1/cases/\(id.lowercased)") }
    public func addCaseMember(_ id: UUID, user: String) async throws -> API.CaseSummary {
        try await call(.POST, "/v1/cases/\(id.lowercased)/members", body: API.AddMember(user: user))
    }
    public func inbox() async throws -> API.Inbox { try await call(.GET, "/v1/inbox") }
    public func notificationSettings() async throws -> API.NotificationSettings { try await call(.GET, "/v1/me/notifications") }
    public func setNotifications(_ change: API.SetNotifications) async throws -> API.NotificationSettings {
        try await call(.PUT, "/v1/me/notifications", body: change)
    }

    /// The live feed (`GET /v1/events`, Server-Sent Events) of one request, one case or the
    /// caller's agency, as decoded events, from `lastEventId` on. It ends when the broker
    /// closes the stream; the caller reconnects with the last id it got.
    /// `onOpen`: called once the broker has answered 200, so that the caller knows from when
    /// on nothing is missed (or once opening failed: the stream then throws why).
    public func events(request: UUID? = nil, case caseId: UUID? = nil, lastEventId: Int64? = nil,
                       onOpen: @escaping @Sendable () -> Void = {}) -> AsyncThrowingStream<API.LiveEvent, any Error> {
        var query: [String] = []
        if let request { query.append("request=\(request.lowercased)") }
        if let caseId { query.append("case=\(caseId.lowercased)") }
        var r = makeRequest(.GET, "/v1/events" + (query.isEmpty ? "" : "?" + query.joined(separator: "&")))
        r.headers.replaceOrAdd(name: "Accept", value: "text/event-stream")
        if let lastEventId { r.headers.add(name: "Last-Event-ID", value: "\(lastEventId)") }
        let request = r, http = self.http, baseURL = self.baseURL
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    let response: HTTPClientResponse
                    do { response = try await http.execute(request, timeout: .hours(24)) } catch {
                        throw ClientError(reason: "cannot reach the broker at \(baseURL): \(error)")
                    }
                    guard response.status == .ok else {
                        throw Self.problem(response.status, try await response.body.collect(upTo: 1 << 20))
                    }
                    onOpen()
                    var parser = ServerSentEvents.Parser()
                    for try await buffer in response.body {
                        for e in parser.consume(buffer.readableBytesView) {
                            guard let event = try? JSONDecoder().decode(API.LiveEvent.self, from: Data(e.data.utf8)) else { continue }
                            continuation.yield(event)
                        }
                    }
                    continuation.finish()
                } catch {
                    onOpen()
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
    public func package(_ id: UUID) async throws -> API.PackageView { try await call(.GET, "/v1/packages/\(id.lowercased)") }
    public func setSealed(_ sealed: Bool, package id: UUID, reason: String) async throws -> API.PackageView {
        try await call(.POST, "/v1/packages/\(id.lowercased)/\(sealed ? "seal" : "unseal")", body: API.Seal(reason: reason))
    }

    // The custody log.
    public func packageCustody(_ id: UUID) async throws -> API.CustodyEventList { try await call(.GET, "/v1/packages/\(id.lowercased)/custody") }
    public func latestCheckpoint() async throws -> API.CheckpointView { try await call(.GET, "/v1/custody/checkpoint") }
    public func checkpoint(size: UInt64) async throws -> API.CheckpointView { try await call(.GET, "/v1/custody/checkpoints/\(size)") }
    public func custodyEvent(_ index: UInt64) async throws -> API.CustodyEventView { try await call(.GET, "/v1/custody/events/\(index)") }
    public func inclusionProof(_ index: UInt64, size: UInt64? = nil) async throws -> API.InclusionProofView {
        try await call(.GET, "/v1/custody/events/\(index)/proof" + (size.map { "?size=\($0)" } ?? ""))
    }
    public func consistencyProof(from: UInt64, to: UInt64) async throws -> API.ConsistencyProofView {
        try await call(.GET, "/v1/custody/consistency?from=\(from)&to=\(to)")
    }
    public func cosign(size: UInt64, signature: [UInt8]) async throws -> API.CheckpointView {
        try await call(.POST, "/v1/custody/checkpoints/\(size)/cosignatures", body: API.Cosign(signature: Data(signature).base64EncodedString()))
    }

    /// Streams a package's export bundle into `path` (written under a temporary name first).
    public func exportBundle(_ id: UUID, to path: String, progress: @Sendable (Int64, Int64) -> Void = { _, _ in }) async throws -> Int64 {
        let response = try await http.execute(makeRequest(.GET, "/v1/packages/\(id.lowercased)/bundle"), timeout: .hours(2))
        guard response.status == .ok else { throw Self.problem(response.status, try await response.body.collect(upTo: 1 << 20)) }
        let total = response.headers.first(name: "Content-Length").flatMap { Int64($0) } ?? 0
        let partial = path + ".partial"
        guard FileManager.default.createFile(atPath: partial, contents: nil), let out = FileHandle(forWritingAtPath: partial) else {
            throw ClientError(reason: "cannot write \(partial)")
        }
        var written: Int64 = 0
        do {
            for try await buffer in response.body {
                try out.write(contentsOf: buffer.readableBytesView)
                written += Int64(buffer.readableBytes)
                progress(written, total)
            }
            try out.synchronize()
            try out.close()
        } catch {
            try? out.close()
            try? FileManager.default.removeItem(atPath: partial)
            throw error
        }
        guard total == 0 || written == total else {
            try? FileManager.default.removeItem(atPath: partial)
            throw ClientError(reason: "the bundle ended after \(written) of \(total) bytes")
        }
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.moveItem(atPath: partial, toPath: path)
        return written
    }

    public struct Download: Sendable {
        public var contentPath: String
        public var manifestPath: String
        public var size: Int64
        /// SHA-256 of the downloaded file, as `sha256sum` prints it.
        public var sha256: String
        public var recordCount: Int
        public var chunksRoot: String
        /// Records withheld from this copy (quarantined or unreadable: SPEC §11); when
        /// non-zero the copy is redacted, and was checked against the records roots only.
        public var withheld: Int = 0
        public var redacted: Bool = false
    }

    /// Downloads a verified package into `directory`: `<id>.ndjson` (the records),
    /// `<id>.manifest.json` (canonical, as signed), `<id>.manifest.p7s` (CMS signature, DER) and
    /// `<id>.manifest.tsr` (RFC 3161 time-stamp response, DER). Every chunk and the whole are checked
    /// against the manifest as the bytes arrive; on any mismatch the partial file is removed.
    /// A redacted copy (records withheld from all but auditors) is checked record by record
    /// against every result's signed records root and count instead.
    public func download(_ id: UUID, into directory: String, progress: @Sendable (Int64, Int64) -> Void = { _, _ in }) async throws -> Download {
        let package = try await package(id)
        let manifest = package.manifest
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let base = (directory as NSString).appendingPathComponent(id.lowercased)
        let contentPath = base + ".ndjson", partial = contentPath + ".partial"
        let response = try await http.execute(makeRequest(.GET, "/v1/packages/\(id.lowercased)/content"), timeout: .hours(2))
        guard response.status == .ok else { throw Self.problem(response.status, try await response.body.collect(upTo: 1 << 20)) }
        guard FileManager.default.createFile(atPath: partial, contents: nil), let out = FileHandle(forWritingAtPath: partial) else {
            throw ClientError(reason: "cannot write \(partial)")
        }
        var ok = false
        defer {
            try? out.close()
            if !ok { try? FileManager.default.removeItem(atPath: partial) }
        }
        // Every chunk, the chunks' Merkle root and every result's records root are checked as the
        // bytes arrive; the SHA-256 of the whole file is computed for the user alongside.
        let redacted = response.headers.first(name: "Custos-Content") == "redacted"
        var checker = ContentVerifier(manifest: manifest)
        var records = RedactedContentVerifier(manifest: manifest)
        var whole = SHA256()
        var received: Int64 = 0
        for try await buffer in response.body {
            buffer.withUnsafeReadableBytes { bytes in
                if redacted { records.consume(bytes) } else { checker.consume(bytes) }
                whole.update(bufferPointer: bytes)
            }
            try out.write(contentsOf: buffer.readableBytesView)
            received += Int64(buffer.readableBytes)
            guard redacted || received <= manifest.content.size else { throw ClientError(reason: "more bytes than the manifest lists") }
            progress(min(received, manifest.content.size), manifest.content.size)
        }
        let failures = redacted ? records.finish() : checker.finish()
        guard failures.isEmpty else {
            throw ClientError(reason: "the package does not match its signed manifest: " + failures.map(\.description).joined(separator: "; "))
        }
        let sha = whole.finalize().hexString
        try out.synchronize()
        try? FileManager.default.removeItem(atPath: contentPath)
        try FileManager.default.moveItem(atPath: partial, toPath: contentPath)
        ok = true
        // Exactly the bytes that were signed and time-stamped, so that stock openssl can check them.
        // The bytes the provider signed (a broker older than manifestText: its canonical re-encoding).
        try Data(package.manifestText.map { Array($0.utf8) } ?? (try CanonicalJSON.encode(manifest))).write(to: URL(fileURLWithPath: base + ".manifest.json"))
        try (Data(base64Encoded: package.signature) ?? Data()).write(to: URL(fileURLWithPath: base + ".manifest.p7s"))
        try (Data(base64Encoded: package.timeStamp) ?? Data()).write(to: URL(fileURLWithPath: base + ".manifest.tsr"))
        return Download(contentPath: contentPath, manifestPath: base + ".manifest.json", size: received, sha256: sha,
                        recordCount: manifest.content.recordCount, chunksRoot: manifest.chunksRoot,
                        withheld: redacted ? records.withheld : 0, redacted: redacted)
    }
}
