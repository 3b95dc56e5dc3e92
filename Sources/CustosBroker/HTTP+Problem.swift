import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import PostgresNIO

/// Turns every error into an RFC 9457 problem response. This is the one place where
/// overload and lost dependencies become 503 with Retry-After.
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    let logger: Logger

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            return problemResponse(for: error, path: request.uri.path)
        }
    }

    func problemResponse(for error: any Error, path: String) -> Response {
        let problem: API.Problem
        var headers: HTTPFields = [.contentType: "application/problem+json"]
        switch error {
        case let e as BrokerError:
            let status = e.code.status
            problem = API.Problem(type: "urn:custos:problem:\(e.code.rawValue)", title: status.reasonPhrase, status: status.code,
                                  detail: e.reason, violations: e.violations.isEmpty ? nil : e.violations)
            if e.code == .unauthorized { headers[.wwwAuthenticate] = "Bearer realm=\"custos\"" }
            if e.code == .unavailable { headers[.retryAfter] = "5" }
        case let e as HTTPError:
            problem = API.Problem(type: "about:blank", title: e.status.reasonPhrase, status: e.status.code, detail: e.body)
        case let e as PSQLError where e.serverInfo?[.sqlState].map(Self.isRefusedValue) == true:
            // A value the database cannot hold that no check before it caught (SQLSTATE class
            // 22, data exception: a NUL byte, a number out of range): the caller's input, 400.
            logger.warning("value refused by the database", metadata: [LogKey.error: "SQLSTATE \(e.serverInfo?[.sqlState] ?? "")"])
            problem = API.Problem(type: "urn:custos:problem:invalid", title: "Bad Request", status: 400,
                                  detail: "a value in the request cannot be stored (SQLSTATE \(e.serverInfo?[.sqlState] ?? ""))")
        case is PSQLError, is PostgresError:
            logger.error("database unavailable", metadata: [LogKey.error: "\(loggable(error))"])
            problem = API.Problem(type: "urn:custos:problem:unavailable", title: "Service Unavailable", status: 503,
                                  detail: "the database is unavailable; try again shortly")
            headers[.retryAfter] = "5"
        default:
            logger.error("unexpected error", metadata: [LogKey.error: "\(loggable(error))", "http.path": "\(path)"])
            problem = API.Problem(type: "about:blank", title: "Internal Server Error", status: 500)
        }
        let body = (try? CanonicalJSON.encode(problem)) ?? []
        return Response(status: .init(code: problem.status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: body)))
    }

    /// SQLSTATE class 22 (data exception): the value, not the database, is at fault.
    static func isRefusedValue(_ sqlState: String) -> Bool { sqlState.hasPrefix("22") }
}

extension BrokerError.Code {
    /// The HTTP status the API's problem details and the portal's pages answer with.
    var status: HTTPResponse.Status {
        switch self {
        case .unauthorized: .unauthorized
        case .forbidden: .forbidden
        case .notFound: .notFound
        case .conflict: .conflict
        case .invalid: .badRequest
        case .tooLarge: .contentTooLarge
        case .unavailable: .serviceUnavailable
        case .storageFailure: .internalServerError
        }
    }
}
