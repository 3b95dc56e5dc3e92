import AsyncHTTPClient
import CustosModel
import CustosPKI
import Foundation
import NIOCore
import NIOFoundationCompat

/// An RFC 3161 client over HTTP (RFC 3161 §3.4): posts `application/timestamp-query`,
/// expects `application/timestamp-reply`, and accepts the answer only when it is granted,
/// signed by a TSA that chains to `trust`, over the digest asked for, with the nonce sent.
public struct TimeStampClient: Sendable {
    public let url: String
    public let trust: String
    let http: HTTPClient

    public init(url: String, trust: String, http: HTTPClient = .shared) {
        self.url = url
        self.trust = trust
        self.http = http
    }

    public struct Failure: Error, CustomStringConvertible, Sendable {
        public var reason: String
        public var description: String { "time-stamp: \(reason)" }
    }

    /// Returns the TimeStampResp (DER) and what it attests.
    public func timeStamp(sha256: [UInt8]) async throws -> (response: [UInt8], token: TimeStamp.Token) {
        let nonce = TimeStamp.makeNonce()
        var request = HTTPClientRequest(url: url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/timestamp-query")
        request.body = .bytes(ByteBuffer(bytes: try TimeStamp.request(sha256: sha256, nonce: nonce)))
        let response: HTTPClientResponse
        do { response = try await http.execute(request, timeout: .seconds(30)) } catch {
            throw Failure(reason: "cannot reach the TSA at \(url): \(error)")
        }
        let body = Array(try await response.body.collect(upTo: 1 << 20).readableBytesView)
        guard response.status == .ok else { throw Failure(reason: "TSA answered HTTP \(response.status.code)") }
        guard response.headers.first(name: "Content-Type")?.lowercased().hasPrefix("application/timestamp-reply") == true else {
            throw Failure(reason: "TSA answered with another content type than application/timestamp-reply")
        }
        switch TimeStamp.verify(response: body, sha256: sha256, trust: trust) {
        case .invalid(let why): throw Failure(reason: why)
        case .valid(let token):
            guard token.nonce == nonce else { throw Failure(reason: "the TSA's answer carries another nonce (replay?)") }
            return (body, token)
        }
    }
}
