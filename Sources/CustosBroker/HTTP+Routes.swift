import Crypto
import CustosCanonicalJSON
import CustosETSI
import CustosEvidence
import CustosModel
import CustosPKI
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Prometheus
import NIOSSL
import PostgresNIO

extension API.CaseView: ResponseEncodable {}
extension API.RequestView: ResponseEncodable {}
extension API.HI1ImportView: ResponseEncodable {}
extension API.Timeline: ResponseEncodable {}
extension API.PackageView: ResponseEncodable {}
extension API.UserView: ResponseEncodable {}
extension API.DocumentView: ResponseEncodable {}
extension API.CheckpointView: ResponseEncodable {}
extension API.CustodyEventView: ResponseEncodable {}
extension API.CustodyEventList: ResponseEncodable {}
extension API.InclusionProofView: ResponseEncodable {}
extension API.ConsistencyProofView: ResponseEncodable {}
extension API.Page: ResponseEncodable {}
extension API.CaseSummary: ResponseEncodable {}
extension API.Inbox: ResponseEncodable {}
extension API.NotificationSettings: ResponseEncodable {}

/// The request context of the broker's routes: Hummingbird's basics plus the client's address,
/// which the custody log records for every access, and its connection, whose TLS client
/// certificate (if any) can name the caller.
public struct BrokerRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?
    let channel: any Channel

    /// Responses are RFC 8785 canonical JSON, with ids in lower case (RFC 9562 §4) like
    /// everything else Custos writes.
    public var responseEncoder: CanonicalResponseEncoder { CanonicalResponseEncoder() }

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
        channel = source.channel
    }

    /// SHA-256 of the client certificate the TLS handshake verified, or nil (no TLS, or none
    /// presented).
    func clientCertificateSha256() async -> String? {
        guard let certificate = try? await channel.nioSSL_peerCertificate().get(), let der = try? certificate.toDERBytes() else { return nil }
        return Digest.sha256Hex(der)
    }
}

/// Writes a handler's value as RFC 8785 canonical JSON (`CanonicalJSON.encode`): members in
/// canonical order, UUIDs in lower case; `application/json; charset=utf-8`.
public struct CanonicalResponseEncoder: ResponseEncoder {
    public func encode(_ value: some Encodable, from request: Request, context: some RequestContext) throws -> Response {
        let bytes = try CanonicalJSON.encode(value)
        return Response(status: .ok, headers: [.contentType: "application/json; charset=utf-8", .contentLength: "\(bytes.count)"],
                        body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
}

/// The HTTP API. Tests call this same function with a test client; `buildApplication` wraps it.
/// `exportWait`: how long an export may wait for the checkpoint that includes it (a few
/// checkpoint intervals).
/// `jwt`: when set, bearer tokens may also be JWTs from that identity provider.
/// `metrics`: when set, `GET /metrics` exports it (Prometheus text format), and every request
/// is counted and timed by matched route and status (Hummingbird's `MetricsMiddleware`).
/// `health`: what `GET /health` checks (without it, only that the process answers).
/// `liveFeed`: what `GET /v1/events` streams (without it, that route answers 503).
/// `portal`: when set and enabled, the web portal is served under `/portal/` (`Portal`).
public func buildRouter(store: BrokerStore, maxBodyBytes: Int, timeStampAuthority: TimeStamp.Authority? = nil, exportWait: Duration = .seconds(10),
                        jwt: JWTSettings? = nil, metrics: PrometheusCollectorRegistry? = nil, health: BrokerHealth? = nil,
                        liveFeed: LiveFeed? = nil, portal: PortalSettings? = nil,
                        hi1: HI1.Endpoint = HI1.Endpoint(countryCode: "VN", uniqueIdentifier: "custos"), logger: Logger) -> Router<BrokerRequestContext> {
    let router = Router(context: BrokerRequestContext.self)
    if metrics != nil { router.add(middleware: MetricsMiddleware()) }
    router.add(middleware: ProblemMiddleware(logger: logger))
    let api = BrokerAPI(store: store, maxBodyBytes: maxBodyBytes, jwt: jwt, exportWait: exportWait)
    if let portal, portal.enabled {
        Portal(store: store, api: api, settings: portal, liveFeed: liveFeed, logger: logger).add(to: router)
    }

    router.get("/health") { _, _ -> Response in
        let report = await health?.check() ?? BrokerHealth.Report(status: "ok", database: "not checked", kafka: "not checked", custody: "not checked")
        let bytes = try JSONEncoder().encode(report)
        return Response(status: report.status == "ok" ? .ok : .serviceUnavailable, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
    }
    if let metrics {
        router.get("/metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                     body: .init(byteBuffer: ByteBuffer(bytes: metrics.emitToBuffer())))
        }
    }
    if let authority = timeStampAuthority {
        // RFC 3161 §3.4, time-stamp protocol via HTTP. Answers even a malformed request with a
        // signed rejection status, as the RFC asks; only a wrong media type is refused outright.
        router.post("/tsa") { request, _ in
            guard request.headers[.contentType]?.lowercased().hasPrefix("application/timestamp-query") == true else {
                throw BrokerError(.invalid, "a time-stamp request is sent as application/timestamp-query")
            }
            let body: ByteBuffer
            do { body = try await request.body.collect(upTo: 64 * 1024) } catch {
                throw BrokerError(.tooLarge, "a time-stamp request is at most 64 KiB")
            }
            let answer = try authority.respond(to: Array(body.readableBytesView), serial: Int64.random(in: 1...Int64.max))
            return Response(status: .ok, headers: [.contentType: "application/timestamp-reply"], body: .init(byteBuffer: ByteBuffer(bytes: answer)))
        }
    }
    let v1 = router.group("v1")
    v1.get("me") { request, context in
        let u = try await api.user(request, context)
        return API.UserView(id: u.id, name: u.name, role: u.role, roles: Role.allCases.filter(u.roles.contains), agency: u.agency)
    }
    v1.get("me/notifications") { request, context in
        try await store.notificationSettings(for: try await api.staff(request, context))
    }
    v1.put("me/notifications") { request, context in
        let user = try await api.staff(request, context)
        return try await store.setNotifications(try await api.decode(API.SetNotifications.self, request, context), for: user)
    }
    v1.post("cases") { request, context in
        let user = try await api.staff(request, context)
        let body = try await api.decode(API.CreateCase.self, request, context)
        return EditedResponse(status: .created, response: try await store.createCase(title: body.title, by: user))
    }
    v1.get("cases") { request, context in
        let user = try await api.staff(request, context)
        let q = request.uri.queryParameters
        try api.onlyParameters(request, ["mine", "limit", "cursor"])
        return try await store.listCases(mine: try api.flag(q.get("mine"), "mine"), limit: try api.limit(q.get("limit")),
                                         cursor: try api.cursor(q.get("cursor")), viewer: user)
    }
    v1.get("cases/:id") { request, context in
        let user = try await api.staff(request, context)
        return try await store.caseSummary(try api.id(context), viewer: user)
    }
    v1.post("cases/:id/members") { request, context in
        let user = try await api.staff(request, context)
        let body = try await api.decode(API.AddMember.self, request, context)
        return try await store.addCaseMember(try api.id(context), user: body.user, by: user)
    }
    v1.get("requests") { request, context in
        let user = try await api.staff(request, context)
        return try await store.listRequests(try api.requestFilter(request), viewer: user)
    }
    v1.get("inbox") { request, context in
        let user = try await api.staff(request, context)
        return try await store.inbox(for: user)
    }
    v1.get("events") { request, context in
        let user = try await api.staff(request, context)
        guard let liveFeed else { throw BrokerError(.unavailable, "live events are not served by this instance") }
        try api.onlyParameters(request, ["request", "case"])
        let q = request.uri.queryParameters
        var filter = LiveFeed.Filter(agency: user.agency)
        filter.requestId = try q.get("request").map { try api.uuid($0, "request") }
        filter.caseId = try q.get("case").map { try api.uuid($0, "case") }
        // One of the caller's agency's, or not found (as every route answers another agency's ids).
        if let id = filter.requestId { _ = try await store.requestState(id, viewer: user) }
        if let id = filter.caseId { _ = try await store.caseSummary(id, viewer: user) }
        let lastEventId = request.headers[HTTPField.Name("Last-Event-ID")!].flatMap { Int64($0) }
        return liveFeed.response(filter, lastEventId: lastEventId)
    }
    v1.post("documents") { request, context in
        let user = try await api.staff(request, context)
        let mediaType = (request.headers[.contentType] ?? "").split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        let body: ByteBuffer
        do { body = try await request.body.collect(upTo: LegalDocument.maximumSize) } catch {
            throw BrokerError(.tooLarge, "a decision is at most \(LegalDocument.maximumSize) bytes")
        }
        let view = try await store.uploadDocument(body, mediaType: mediaType, by: user)
        return EditedResponse(status: .created, headers: [.location: "/v1/documents/\(view.document.sha256)"], response: view)
    }
    v1.get("documents/:sha256") { request, context in
        let user = try await api.staff(request, context)
        guard let sha = context.parameters.get("sha256"), sha.utf8.count == 64, sha.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
            throw BrokerError(.notFound, "the document name in the path is not a lower-case hex SHA-256")
        }
        let (view, content) = try await store.document(sha, viewer: user)
        return Response(status: .ok, headers: [.contentType: view.document.mediaType, .init("Custos-Sha256")!: view.document.sha256],
                        body: .init(byteBuffer: content))
    }
    v1.post("requests") { request, context -> Response in
        let user = try await api.staff(request, context)
        if HI1HTTP.isXML(request.headers[.contentType]) {
            // An authority's HI-1 CREATE message (ETSI TS 103 120): a case and its drafts.
            let body: ByteBuffer
            do { body = try await request.body.collect(upTo: min(api.maxBodyBytes, HI1Import.maximumBytes)) } catch {
                throw BrokerError(.tooLarge, "request body is larger than \(min(api.maxBodyBytes, HI1Import.maximumBytes)) bytes")
            }
            let imported = try await store.importHI1(Array(body.readableBytesView), by: user)
            return try EditedResponse(status: .created, headers: [.location: "/v1/cases/\(imported.caseId.lowercased)"], response: imported)
                .response(from: request, context: context)
        }
        let spec = try await api.decode(RequestSpec.self, request, context)
        let id = try await store.createRequest(spec, by: user)
        return try EditedResponse(status: .created, headers: [.location: "/v1/requests/\(id.lowercased)"], response: try await store.request(id, viewer: user))
            .response(from: request, context: context)
    }
    v1.get("requests/:id") { request, context -> Response in
        let user = try await api.staff(request, context)
        let id = try api.id(context)
        let view = try await store.request(id, viewer: user)
        try await store.recordAccess(.requestViewed, by: user, subject: .init(caseId: view.spec.caseId, requestId: id))
        if HI1HTTP.prefersXML(request.headers[.accept]) {
            // ETSI TS 103 120: a GETResponse of the task with its status.
            let xml = HI1Export.status(view, parties: .init(sender: hi1, receiver: HI1.Endpoint(countryCode: hi1.countryCode, uniqueIdentifier: user.agency),
                                                           providerCountry: hi1.countryCode))
            return HI1HTTP.response(xml)
        }
        return try view.response(from: request, context: context)
    }
    v1.get("requests/:id/hi1") { request, context -> Response in
        let user = try await api.staff(request, context)
        let id = try api.id(context)
        let xml = try await store.exportHI1(id, viewer: user, endpoint: hi1)
        try await store.recordAccess(.requestViewed, by: user, subject: .init(requestId: id))
        return HI1HTTP.response(xml)
    }
    v1.get("requests/:id/timeline") { request, context in
        let user = try await api.staff(request, context)
        let id = try api.id(context)
        let timeline = try await store.timeline(id, viewer: user)
        try await store.recordAccess(.requestViewed, by: user, subject: .init(requestId: id))
        return timeline
    }
    /// `POST /v1/requests/{id}/<path>`: an action on a request by the caller; the answer is the
    /// request as they see it afterwards.
    func requestAction(_ path: String, _ act: @escaping @Sendable (Request, BrokerRequestContext, UUID, AuthenticatedUser) async throws -> Void) {
        v1.post("requests/:id/\(path)") { request, context in
            let user = try await api.staff(request, context)
            let id = try api.id(context)
            try await act(request, context, id, user)
            return try await store.request(id, viewer: user)
        }
    }
    requestAction("review") { request, context, id, user in
        let body = try await api.decode(API.Review.self, request, context)
        try await store.review(id, decision: body.decision, reason: body.reason, by: user)
    }
    requestAction("clarifications/:question/answer") { request, context, id, user in
        guard let text = context.parameters.get("question"), let question = UUID(uuidString: text) else {
            throw BrokerError(.notFound, "the question id in the path is not a UUID")
        }
        let body = try await api.decode(API.Answer.self, request, context)
        try await store.answer(id, question: question, answer: body.answer, by: user)
    }
    requestAction("extend") { _, _, id, user in try await store.extendPreservation(id, by: user) }
    requestAction("release") { request, context, id, user in
        let body = try await api.decode(API.Decision.self, request, context)
        try await store.releasePreservation(id, reason: body.reason, by: user)
    }
    requestAction("withdraw") { request, context, id, user in
        let decision = try await api.decode(API.Decision.self, request, context)
        try await store.withdraw(id, by: user, reason: decision.reason)
    }
    requestAction("submit") { _, _, id, user in try await store.submit(id, by: user) }
    requestAction("approve") { _, _, id, user in try await store.approve(id, by: user) }
    requestAction("reject") { request, context, id, user in
        let decision = try await api.decode(API.Decision.self, request, context)
        try await store.reject(id, by: user, reason: decision.reason)
    }
    v1.get("packages/:id") { request, context in
        let user = try await api.staff(request, context)
        let id = try api.id(context)
        let view = try await store.package(id, viewer: user)
        try await store.recordAccess(.packageViewed, by: user, subject: .init(requestId: view.requestId, packageId: id))
        try await store.markOpened(package: id, by: user)
        return view
    }
    for (path, sealed) in [("packages/:id/seal", true), ("packages/:id/unseal", false)] {
        v1.post(RouterPath(path)) { request, context in
            let user = try await api.staff(request, context)
            let id = try api.id(context)
            let body = try await api.decode(API.Seal.self, request, context)
            try await store.setSealed(sealed, package: id, reason: body.reason, by: user)
            return try await store.package(id, viewer: user)
        }
    }
    v1.get("packages/:id/custody") { request, context in
        let user = try await api.staff(request, context)
        return API.CustodyEventList(events: try await store.custodyEvents(package: try api.id(context), viewer: user))
    }
    v1.get("packages/:id/content") { request, context in
        try await api.content(try api.id(context), for: try await api.staff(request, context))
    }
    v1.get("packages/:id/bundle") { request, context in
        try await api.bundle(try api.id(context), for: try await api.staff(request, context))
    }

    // The custody log: checkpoints, events and proofs for auditors and witnesses.
    v1.get("custody/checkpoint") { request, context in
        _ = try await api.user(request, context)
        guard let c = try await store.latestCheckpoint() else { throw BrokerError(.notFound, "no checkpoint yet") }
        return c
    }
    v1.get("custody/checkpoints/:size") { request, context in
        _ = try await api.user(request, context)
        return try await store.checkpoint(size: try api.number(context, "size"))
    }
    v1.post("custody/checkpoints/:size/cosignatures") { request, context in
        let user = try await api.user(request, context)
        let size = try api.number(context, "size")
        let body = try await api.decode(API.Cosign.self, request, context)
        return EditedResponse(status: .created, response: try await store.cosign(size: size, signature: body.signature, by: user))
    }
    v1.get("custody/events/:index") { request, context in
        let user = try await api.user(request, context)
        return try await store.custodyEvent(index: try api.number(context, "index"), viewer: user)
    }
    v1.get("custody/events/:index/proof") { request, context in
        let user = try await api.user(request, context)
        let size = try api.queryNumber(request, "size")
        return try await store.inclusionProof(index: try api.number(context, "index"), size: size, viewer: user)
    }
    v1.get("custody/consistency") { request, context in
        _ = try await api.user(request, context)
        guard let from = try api.queryNumber(request, "from"), let to = try api.queryNumber(request, "to") else {
            throw BrokerError(.invalid, "from and to must be checkpoint sizes")
        }
        return try await store.consistencyProof(from: from, to: to)
    }
    return router
}

/// Content negotiation for HI-1 (ETSI TS 103 120) XML.
enum HI1HTTP {
    static let mediaType = "application/xml; charset=utf-8"

    static func isXML(_ contentType: String?) -> Bool {
        guard let base = contentType?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased() else { return false }
        return base == "application/xml" || base == "text/xml" || base.hasSuffix("+xml")
    }

    /// An `Accept` that names XML and not JSON.
    static func prefersXML(_ accept: String?) -> Bool {
        guard let accept = accept?.lowercased() else { return false }
        return accept.split(separator: ",").contains { isXML(String($0)) } && !accept.contains("application/json")
    }

    static func response(_ xml: [UInt8]) -> Response {
        Response(status: .ok, headers: [.contentType: mediaType, .contentLength: "\(xml.count)"], body: .init(byteBuffer: ByteBuffer(bytes: xml)))
    }
}

struct BrokerAPI: Sendable {
    let store: BrokerStore
    let maxBodyBytes: Int
    let jwt: JWTSettings?
    var exportWait: Duration = .seconds(10)

    /// A verified package's content, streamed chunk by chunk (redacted for all but auditors
    /// when it withholds records: SPEC §11); recorded as `package.downloaded`. The API's
    /// `GET /v1/packages/{id}/content` and the portal's download are this one function.
    func content(_ id: UUID, for user: AuthenticatedUser) async throws -> Response {
        let store = self.store
        let package = try await store.package(id, viewer: user)
        guard package.state == .verified else {
            throw BrokerError(.conflict, "package is \(package.state.rawValue); only verified packages are released")
        }
        guard !package.sealed else { throw BrokerError(.forbidden, "package is sealed (\(package.sealReason ?? "no reason given")); its content is not released") }
        // Records outside the request (quarantined) or unreadable are for auditors only: anyone
        // else gets the content redacted (SPEC §11), every record shown still provable.
        let redact = package.withholdsRecords && !user.roles.contains(.auditor)
        var objects = ["manifestSha256": package.manifestSha256, "chunksRoot": package.manifest.chunksRoot]
        if redact { objects["redacted"] = "quarantined and unreadable records withheld" }
        try await store.recordAccess(.packageDownloaded, by: user, subject: .init(requestId: package.requestId, packageId: id), objects: objects)
        try await store.markOpened(package: id, by: user)
        let chunkCount = package.manifest.chunks.count
        var headers: HTTPFields = [
            .contentType: package.manifest.content.mediaType,
            HTTPField.Name("Custos-Chunks-Root")!: package.manifest.chunksRoot,
        ]
        guard redact else {
            headers[.contentLength] = "\(package.manifest.content.size)"
            return Response(status: .ok, headers: headers, body: ResponseBody { writer in
                for i in 0..<chunkCount {
                    try await writer.write(try await store.chunk(package: id, index: i))
                }
                try await writer.finish(nil)
            })
        }
        let approved = try JSONDecoder().decode(ApprovedRequest.self, from: Data(try await store.bundleParts(id).request))
        headers[HTTPField.Name("Custos-Content")!] = "redacted"
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            var redactor = ContentRedactor(request: approved, manifest: package.manifest)
            for i in 0..<chunkCount {
                var out = ByteBuffer()
                let chunk = try await store.chunk(package: id, index: i)
                chunk.withUnsafeReadableBytes { bytes in redactor.consume(bytes) { out.writeBytes($0) } }
                if i == chunkCount - 1 { redactor.finish { out.writeBytes($0) } }
                try await writer.write(out)
            }
            try await writer.finish(nil)
        })
    }

    /// A package's evidence bundle (tar, SPEC §8), streamed; recorded as `package.exported`,
    /// and it waits for the checkpoint that includes that event. The API's
    /// `GET /v1/packages/{id}/bundle` and the portal's export are this one function.
    func bundle(_ id: UUID, for user: AuthenticatedUser) async throws -> Response {
        let store = self.store
        let exportWait = self.exportWait
        let package = try await store.package(id, viewer: user)
        guard package.state != .receiving else { throw BrokerError(.conflict, "package is still being received") }
        guard !package.sealed else { throw BrokerError(.forbidden, "package is sealed (\(package.sealReason ?? "no reason given")); it is not exported") }
        if package.withholdsRecords && !user.roles.contains(.auditor) {
            let counts = package.criteria?.counts
            throw BrokerError(.forbidden, "the package holds \(counts?.quarantined ?? 0) quarantined (out-of-scope) and \(counts?.unreadable ?? 0) unreadable records; "
                              + "a bundle carries the signed content whole, so only an auditor exports it. The content endpoint gives the "
                              + "records you may see, each provable against its signed records root")
        }
        let parts = try await store.bundleParts(id)
        let m = package.manifest
        // The README a court's expert follows is bound like every other member: the export's
        // custody event records its hash, and custos verify checks it (SPEC §8).
        let readme = EvidenceBundle.readme(manifest: m, signer: package.signer, timeStampedAt: package.timeStampedAt)
        // The export is itself a custody event, and the bundle proves it: wait for the checkpoint that includes it.
        // The manifest time-stamp's renewals so far (RFC 4998-style), bound by the export's event.
        let renewalTokens = try await store.timeStampRenewals(subject: "package", id: id.lowercased)
        let renewals = renewalTokens.isEmpty ? nil : try CanonicalJSON.encode(RenewalsFile(manifest: renewalTokens))
        var exported = ["manifestSha256": package.manifestSha256, "readmeSha256": Digest.sha256Hex(Array(readme.utf8)),
                        "caseContextSha256": CASEGraph.contextSha256]
        if let renewals { exported["renewalsSha256"] = Digest.sha256Hex(renewals) }
        let exportIndex = try await store.recordAccess(.packageExported, by: user, subject: .init(requestId: package.requestId, packageId: id),
                                                       objects: exported)
        try await store.markOpened(package: id, by: user)
        let (checkpoint, proofs) = try await store.custodyProofs(package: id, including: exportIndex, timeout: exportWait)
        let custody = EvidenceBundle.Custody(
            checkpoint: Array(checkpoint.text.utf8), signature: Array(Data(base64Encoded: checkpoint.signature) ?? Data()),
            timeStamp: Array(Data(base64Encoded: checkpoint.timeStamp) ?? Data()), proofs: try CanonicalJSON.encode(proofs))
        let members = EvidenceBundle.members(
            manifest: parts.manifest, request: parts.request, signature: Array(Data(base64Encoded: package.signature) ?? Data()),
            timeStamp: Array(Data(base64Encoded: package.timeStamp) ?? Data()), signerPEM: parts.signerPEM, verification: parts.verification,
            criteria: parts.criteria, custody: custody, readme: readme, renewals: renewals)
        let head = EvidenceBundle.head(members: members, packageId: id, contentSize: m.content.size)
        // case.jsonld (CASE/UCO) follows the content and states its SHA-256, hashed while it
        // streams; its length does not depend on the hash's value, so it is known now.
        let approved = try JSONDecoder().decode(ApprovedRequest.self, from: Data(parts.request))
        @Sendable func caseGraph(_ contentSha256: String) throws -> [UInt8] {
            try EvidenceBundle.caseGraph(members: members, contentSize: m.content.size, contentSha256: contentSha256, request: approved, manifest: m)
        }
        let tailLength = EvidenceBundle.tail(contentSize: m.content.size, caseGraph: (id, try caseGraph(String(repeating: "0", count: 64)))).count
        let length = Int64(head.count) + m.content.size + Int64(tailLength)
        let headers: HTTPFields = [
            .contentType: "application/x-tar",
            .contentLength: "\(length)",
            .contentDisposition: "attachment; filename=\"\(EvidenceBundle.folder(id)).tar\"",
        ]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            try await writer.write(ByteBuffer(bytes: head))
            var hash = SHA256()
            for i in 0..<m.chunks.count {
                let chunk = try await store.chunk(package: id, index: i)
                chunk.withUnsafeReadableBytes { hash.update(bufferPointer: $0) }
                try await writer.write(chunk)
            }
            let tail = EvidenceBundle.tail(contentSize: m.content.size,
                                           caseGraph: (id, try caseGraph(hash.finalize().map { String(format: "%02x", $0) }.joined())))
            guard tail.count == tailLength else { throw BrokerError(.unavailable, "case.jsonld changed length while the bundle was written") }
            try await writer.write(ByteBuffer(bytes: tail))
            try await writer.finish(nil)
        })
    }

    /// The authenticated caller, with the client it came from (for the custody log).
    func user(_ request: Request, _ context: BrokerRequestContext) async throws -> AuthenticatedUser {
        guard let auth = request.headers[.authorization] else {
            // No token: a client certificate the TLS handshake verified may name the caller.
            guard let fingerprint = await context.clientCertificateSha256() else {
                throw BrokerError(.unauthorized, "a bearer token or a registered client certificate is required")
            }
            guard var user = try await store.user(certificateSha256: fingerprint) else {
                throw BrokerError(.unauthorized, "the client certificate is not registered to a user")
            }
            user.address = context.remoteAddress?.ipAddress
            user.agent = request.headers[.userAgent].map { String($0.prefix(200)) }
            return user
        }
        guard auth.hasPrefix("Bearer "), auth.count > 7 else {
            throw BrokerError(.unauthorized, "a bearer token is required")
        }
        let token = String(auth.dropFirst(7))
        var user: AuthenticatedUser
        if token.split(separator: ".", omittingEmptySubsequences: false).count == 3 {
            guard let jwt else { throw BrokerError(.unauthorized, "this broker accepts no JWTs") }
            let claims: JSONWebToken.Claims
            do { claims = try await jwt.verifier.verify(token) } catch {
                throw BrokerError(.unauthorized, error.description)
            }
            user = try await store.user(claims: claims)
        } else {
            guard let known = try await store.user(token: token) else { throw BrokerError(.unauthorized, "the bearer token is not valid") }
            user = known
        }
        user.address = context.remoteAddress?.ipAddress
        user.agent = request.headers[.userAgent].map { String($0.prefix(200)) }
        return user
    }

    /// A caller who works on cases: anyone but an outside witness, who only sees the custody log.
    func staff(_ request: Request, _ context: BrokerRequestContext) async throws -> AuthenticatedUser {
        let user = try await user(request, context)
        guard !user.isOnlyWitness else { throw BrokerError(.forbidden, "witnesses see only the custody log") }
        return user
    }

    /// A UUID from the query (400 otherwise).
    func uuid(_ text: String, _ name: String) throws -> UUID {
        guard let id = UUID(uuidString: text) else {
            throw BrokerError(.invalid, "\(name) must be a UUID", violations: [FieldViolation(field: name, rule: "must be a UUID")])
        }
        return id
    }

    /// Refuses query parameters other than `allowed` (a misspelt filter would otherwise list everything).
    func onlyParameters(_ request: Request, _ allowed: Set<String>) throws {
        for (name, _) in request.uri.queryParameters where !allowed.contains(String(name)) {
            throw BrokerError(.invalid, "unknown query parameter", violations: [
                FieldViolation(field: String(name.prefix(64)), rule: "is not a parameter of this list; known: \(allowed.sorted().joined(separator: ", "))"),
            ])
        }
    }

    /// `true` or `false` (absent: false).
    func flag(_ text: String?, _ name: String) throws -> Bool {
        guard let text else { return false }
        guard text == "true" || text == "false" else {
            throw BrokerError(.invalid, "\(name) must be true or false", violations: [FieldViolation(field: name, rule: "true or false")])
        }
        return text == "true"
    }

    /// A page size from 1 to `BrokerStore.maximumPage` (absent: 50).
    func limit(_ text: String?) throws -> Int {
        guard let text else { return 50 }
        guard let n = Int(text), (1...BrokerStore.maximumPage).contains(n) else {
            throw BrokerError(.invalid, "limit must be a whole number from 1 to \(BrokerStore.maximumPage)",
                              violations: [FieldViolation(field: "limit", rule: "whole number from 1 to \(BrokerStore.maximumPage)")])
        }
        return n
    }

    /// A cursor from a previous page (400 for anything else).
    func cursor(_ text: String?) throws -> BrokerStore.ListCursor? {
        guard let text else { return nil }
        guard let c = BrokerStore.ListCursor(String(text)) else {
            throw BrokerError(.invalid, "the cursor is not one this broker gave", violations: [FieldViolation(field: "cursor", rule: "must be a page's `next`")])
        }
        return c
    }

    /// An RFC 3339 time from the query (400 otherwise).
    func time(_ text: String?, _ name: String) throws -> Date? {
        guard let text else { return nil }
        guard let d = Timestamp.parse(String(text)) else {
            throw BrokerError(.invalid, "\(name) must be an RFC 3339 time", violations: [FieldViolation(field: name, rule: "RFC 3339 time, e.g. 2026-11-30T08:00:00Z")])
        }
        return d
    }

    /// The filters of `GET /v1/requests`, each checked (400 with the field otherwise).
    func requestFilter(_ request: Request) throws -> BrokerStore.RequestFilter {
        try onlyParameters(request, ["state", "priority", "kind", "provider", "case", "submitter", "mine", "createdAfter", "createdBefore",
                                     "updatedAfter", "updatedBefore", "sort", "limit", "cursor"])
        let q = request.uri.queryParameters
        var f = BrokerStore.RequestFilter()
        for text in q.getAll("state") {
            for name in text.split(separator: ",") {
                guard let state = RequestState(rawValue: String(name)) else {
                    throw BrokerError(.invalid, "unknown state", violations: [
                        FieldViolation(field: "state", rule: "one or more of \(RequestState.allCases.map(\.rawValue).joined(separator: ", "))"),
                    ])
                }
                f.states.append(state)
            }
        }
        if let text = q.get("priority") {
            guard let p = Priority(rawValue: String(text)) else {
                throw BrokerError(.invalid, "unknown priority", violations: [FieldViolation(field: "priority", rule: "normal or emergency")])
            }
            f.priority = p
        }
        if let text = q.get("kind") {
            guard let k = RequestKind(rawValue: String(text)) else {
                throw BrokerError(.invalid, "unknown kind", violations: [FieldViolation(field: "kind", rule: "production or preservation")])
            }
            f.kind = k
        }
        if let text = q.get("provider") {
            guard (1...64).contains(text.utf8.count) else {
                throw BrokerError(.invalid, "invalid provider", violations: [FieldViolation(field: "provider", rule: "1 to 64 characters")])
            }
            f.provider = String(text)
        }
        f.caseId = try q.get("case").map { try uuid(String($0), "case") }
        if let text = q.get("submitter") {
            guard (1...200).contains(text.utf8.count), !text.utf8.contains(0) else {
                throw BrokerError(.invalid, "invalid submitter", violations: [FieldViolation(field: "submitter", rule: "a user name")])
            }
            f.submitter = String(text)
        }
        f.mine = try flag(q.get("mine"), "mine")
        f.createdAfter = try time(q.get("createdAfter"), "createdAfter")
        f.createdBefore = try time(q.get("createdBefore"), "createdBefore")
        f.updatedAfter = try time(q.get("updatedAfter"), "updatedAfter")
        f.updatedBefore = try time(q.get("updatedBefore"), "updatedBefore")
        if let text = q.get("sort") {
            guard let sort = BrokerStore.ListSort(rawValue: String(text)) else {
                throw BrokerError(.invalid, "unknown sort", violations: [FieldViolation(field: "sort", rule: "updated or created")])
            }
            f.sort = sort
        }
        f.limit = try limit(q.get("limit"))
        f.cursor = try cursor(q.get("cursor"))
        return f
    }

    func id(_ context: BrokerRequestContext) throws -> UUID {
        guard let text = context.parameters.get("id"), let id = UUID(uuidString: text) else {
            throw BrokerError(.notFound, "the id in the path is not a UUID")
        }
        return id
    }

    /// The path (`targets[0].value`) of the first member name or string that PostgreSQL's
    /// `text` cannot hold, or nil. The JSON parser has already refused invalid UTF-8 and lone
    /// surrogates; what is left is U+0000, which every PostgreSQL text type refuses (and a
    /// `bytea` or canonical-JSON column would keep, so it is refused for every field alike).
    static func unstorableText(in value: JSONValue, path: String = "") -> String? {
        switch value {
        case .string(let s):
            return s.utf8.contains(0) ? (path.isEmpty ? "(body)" : path) : nil
        case .array(let items):
            for (i, item) in items.enumerated() {
                if let found = unstorableText(in: item, path: "\(path)[\(i)]") { return found }
            }
            return nil
        case .object(let members):
            for (name, member) in members.sorted(by: { $0.key < $1.key }) {
                let p = path.isEmpty ? name : "\(path).\(name)"
                if name.utf8.contains(0) { return path.isEmpty ? "(member name)" : "\(path) (member name)" }
                if let found = unstorableText(in: member, path: p) { return found }
            }
            return nil
        case .null, .bool, .number:
            return nil
        }
    }

    /// A custody log index or size from the path: a whole number the log can hold
    /// (0...2^63-1, PostgreSQL's `bigint`); anything else names nothing here (404).
    func number(_ context: BrokerRequestContext, _ name: String) throws -> UInt64 {
        guard let text = context.parameters.get(name), let n = Self.logNumber(text) else {
            throw BrokerError(.notFound, "the \(name) in the path is not a whole number from 0 to 9223372036854775807")
        }
        return n
    }

    /// A custody log index or size from the query: absent is nil; present, it must be a whole
    /// number from 0 to 2^63-1 (400 otherwise).
    func queryNumber(_ request: Request, _ name: String) throws -> UInt64? {
        guard let text = request.uri.queryParameters.get(name) else { return nil }
        guard let n = Self.logNumber(text) else {
            throw BrokerError(.invalid, "\(name) must be a whole number from 0 to 9223372036854775807",
                              violations: [FieldViolation(field: name, rule: "whole number from 0 to 9223372036854775807")])
        }
        return n
    }

    /// Decimal digits only (no sign, no spaces), at most Int64.max: every index and size the
    /// custody log stores fits, so later arithmetic on it cannot overflow a `bigint`.
    static func logNumber(_ text: some StringProtocol) -> UInt64? {
        guard !text.isEmpty, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = UInt64(text), n <= UInt64(Int64.max) else { return nil }
        return n
    }

    func decode<T: Decodable>(_ type: T.Type, _ request: Request, _ context: BrokerRequestContext) async throws -> T {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: maxBodyBytes) } catch {
            throw BrokerError(.tooLarge, "request body is larger than \(maxBodyBytes) bytes")
        }
        if buffer.readableBytes == 0, let empty = try? JSONDecoder().decode(T.self, from: Data("{}".utf8)) { return empty }
        let tree: JSONValue
        do {
            tree = try JSONParser.parse(buffer.readableBytesView)
        } catch {
            throw BrokerError(.invalid, "request body is not valid JSON: \(error.description)")
        }
        if let field = Self.unstorableText(in: tree) {
            throw BrokerError(.invalid, "request body holds text that cannot be stored",
                              violations: [FieldViolation(field: field, rule: "must not contain the NUL character (U+0000)")])
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch {
            throw BrokerError(.invalid, "request body does not match the schema", violations: [decodingViolation(error)])
        }
    }
}
