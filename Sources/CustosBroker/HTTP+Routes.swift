import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import CustosPKI
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import PostgresNIO

extension API.CaseView: ResponseEncodable {}
extension API.RequestView: ResponseEncodable {}
extension API.PackageView: ResponseEncodable {}
extension API.UserView: ResponseEncodable {}

/// The HTTP API. Tests call this same function with a test client; `buildApplication` wraps it.
public func buildRouter(store: BrokerStore, maxBodyBytes: Int, timeStampAuthority: TimeStamp.Authority? = nil, logger: Logger) -> Router<BasicRequestContext> {
    let router = Router()
    router.add(middleware: ProblemMiddleware(logger: logger))
    let api = BrokerAPI(store: store, maxBodyBytes: maxBodyBytes)

    router.get("/health") { _, _ in "ok" }
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
    v1.get("me") { request, _ in
        let u = try await api.user(request)
        return API.UserView(id: u.id, name: u.name, role: u.role)
    }
    v1.post("cases") { request, context in
        let user = try await api.user(request)
        let body = try await api.decode(API.CreateCase.self, request, context)
        return EditedResponse(status: .created, response: try await store.createCase(title: body.title, by: user))
    }
    v1.post("requests") { request, context in
        let user = try await api.user(request)
        let spec = try await api.decode(RequestSpec.self, request, context)
        let id = try await store.createRequest(spec, by: user)
        return EditedResponse(status: .created, headers: [.location: "/v1/requests/\(id.lowercased)"], response: try await store.request(id))
    }
    v1.get("requests/:id") { request, context in
        _ = try await api.user(request)
        return try await store.request(try api.id(context))
    }
    v1.post("requests/:id/submit") { request, context in
        let user = try await api.user(request)
        let id = try api.id(context)
        try await store.submit(id, by: user)
        return try await store.request(id)
    }
    v1.post("requests/:id/approve") { request, context in
        let user = try await api.user(request)
        let id = try api.id(context)
        try await store.approve(id, by: user)
        return try await store.request(id)
    }
    v1.post("requests/:id/reject") { request, context in
        let user = try await api.user(request)
        let id = try api.id(context)
        let decision = try await api.decode(API.Decision.self, request, context)
        try await store.reject(id, by: user, reason: decision.reason)
        return try await store.request(id)
    }
    v1.get("packages/:id") { request, context in
        _ = try await api.user(request)
        return try await store.package(try api.id(context))
    }
    v1.get("packages/:id/content") { request, context in
        _ = try await api.user(request)
        let id = try api.id(context)
        let package = try await store.package(id)
        guard package.state == .verified else {
            throw BrokerError(.conflict, "package is \(package.state.rawValue); only verified packages are released")
        }
        let headers: HTTPFields = [
            .contentType: package.manifest.content.mediaType,
            .contentLength: "\(package.manifest.content.size)",
            HTTPField.Name("Custos-Chunks-Root")!: package.manifest.chunksRoot,
        ]
        let chunkCount = package.manifest.chunks.count
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            for i in 0..<chunkCount {
                try await writer.write(try await store.chunk(package: id, index: i))
            }
            try await writer.finish(nil)
        })
    }
    v1.get("packages/:id/bundle") { request, context in
        _ = try await api.user(request)
        let id = try api.id(context)
        let package = try await store.package(id)
        guard package.state != .receiving else { throw BrokerError(.conflict, "package is still being received") }
        let parts = try await store.bundleParts(id)
        let m = package.manifest
        let head = EvidenceBundle.head(
            manifest: try CanonicalJSON.encode(m), request: parts.request, signature: Array(Data(base64Encoded: package.signature) ?? Data()),
            timeStamp: Array(Data(base64Encoded: package.timeStamp) ?? Data()), signerPEM: parts.signerPEM, verification: parts.verification,
            packageId: id, contentSize: m.content.size,
            readme: EvidenceBundle.readme(manifest: m, signer: package.signer, timeStampedAt: package.timeStampedAt))
        let tail = EvidenceBundle.tail(contentSize: m.content.size)
        let length = Int64(head.count) + m.content.size + Int64(tail.count)
        let headers: HTTPFields = [
            .contentType: "application/x-tar",
            .contentLength: "\(length)",
            .contentDisposition: "attachment; filename=\"\(EvidenceBundle.folder(id)).tar\"",
        ]
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            try await writer.write(ByteBuffer(bytes: head))
            for i in 0..<m.chunks.count { try await writer.write(try await store.chunk(package: id, index: i)) }
            try await writer.write(ByteBuffer(bytes: tail))
            try await writer.finish(nil)
        })
    }
    return router
}

struct BrokerAPI: Sendable {
    let store: BrokerStore
    let maxBodyBytes: Int

    func user(_ request: Request) async throws -> AuthenticatedUser {
        guard let auth = request.headers[.authorization], auth.hasPrefix("Bearer "), auth.count > 7 else {
            throw BrokerError(.unauthorized, "a bearer token is required")
        }
        guard let user = try await store.user(token: String(auth.dropFirst(7))) else {
            throw BrokerError(.unauthorized, "the bearer token is not valid")
        }
        return user
    }

    func id(_ context: BasicRequestContext) throws -> UUID {
        guard let text = context.parameters.get("id"), let id = UUID(uuidString: text) else {
            throw BrokerError(.notFound, "the id in the path is not a UUID")
        }
        return id
    }

    func decode<T: Decodable>(_ type: T.Type, _ request: Request, _ context: BasicRequestContext) async throws -> T {
        let buffer: ByteBuffer
        do { buffer = try await request.body.collect(upTo: maxBodyBytes) } catch {
            throw BrokerError(.tooLarge, "request body is larger than \(maxBodyBytes) bytes")
        }
        if buffer.readableBytes == 0, let empty = try? JSONDecoder().decode(T.self, from: Data("{}".utf8)) { return empty }
        do {
            _ = try JSONParser.parse(buffer.readableBytesView)
        } catch {
            throw BrokerError(.invalid, "request body is not valid JSON: \(error.description)")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(buffer.readableBytesView))
        } catch {
            throw BrokerError(.invalid, "request body does not match the schema", violations: [decodingViolation(error)])
        }
    }
}
