import CustosCanonicalJSON
import CustosModel
import Foundation

/// Bearer tokens issued by an identity provider the broker trusts: JWS compact serialization
/// (RFC 7515) of JWT claims (RFC 7519), signed ES256 (P-256) or PS256 (RSA). The algorithm
/// comes from the trusted key, never from the token, so `none` or a swapped algorithm fails.
public enum JSONWebToken {
    /// What Custos reads from a token: who (`sub`), which agency, which roles.
    public struct Claims: Codable, Sendable, Equatable {
        public var sub: String
        public var agency: String
        public var roles: [String]
        public var aud: Audience
        public var iss: String?
        public var exp: Int64
        public var nbf: Int64?
        public var iat: Int64?

        public init(sub: String, agency: String, roles: [String], aud: String, iss: String? = nil, exp: Int64, nbf: Int64? = nil, iat: Int64? = nil) {
            self.sub = sub
            self.agency = agency
            self.roles = roles
            self.aud = Audience(values: [aud])
            self.iss = iss
            self.exp = exp
            self.nbf = nbf
            self.iat = iat
        }
    }

    /// `aud` is a string or an array of strings (RFC 7519 §4.1.3).
    public struct Audience: Codable, Sendable, Equatable {
        public var values: [String]
        public init(values: [String]) { self.values = values }
        public init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let many = try? c.decode([String].self) { values = many } else { values = [try c.decode(String.self)] }
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            if values.count == 1 { try c.encode(values[0]) } else { try c.encode(values) }
        }
    }

    /// Why a token was refused; the HTTP layer answers 401 with the reason (never the token).
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    struct Header: Codable { var alg: String; var typ: String? }

    /// Checks signature, algorithm, audience, issuer and validity period (with `leeway` for
    /// clock skew), and returns the claims.
    public static func verify(_ token: String, keys: [VerifyingKey], audience: String, issuer: String?, now: Date = Date(),
                              leeway: TimeInterval = 60) throws(Failure) -> Claims {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let headerBytes = base64URLDecode(parts[0]), let payload = base64URLDecode(parts[1]),
              let header = try? JSONDecoder().decode(Header.self, from: headerBytes)
        else { throw Failure("the token is not a JWS compact serialization") }
        let signingInput = Array("\(parts[0]).\(parts[1])".utf8)
        let signature = base64URLDecode(parts[2]).map { $0.base64EncodedString() } ?? ""
        guard keys.contains(where: { $0.algorithm == header.alg && $0.isValidSignature(signature, for: signingInput) }) else {
            throw Failure(keys.contains { $0.algorithm == header.alg } ? "the token's signature does not verify" : "the token's algorithm \(header.alg) is not accepted")
        }
        guard (try? JSONParser.parse(payload)) != nil, let claims = try? JSONDecoder().decode(Claims.self, from: payload) else {
            throw Failure("the token lacks sub, agency, roles, aud or exp")
        }
        let t = Int64(now.timeIntervalSince1970)
        guard t <= claims.exp + Int64(leeway) else { throw Failure("the token has expired") }
        if let nbf = claims.nbf, t + Int64(leeway) < nbf { throw Failure("the token is not valid yet") }
        guard claims.aud.values.contains(audience) else { throw Failure("the token is for another audience") }
        if let issuer, claims.iss != issuer { throw Failure("the token is from another issuer") }
        guard !claims.sub.isEmpty, claims.sub.count <= 100 else { throw Failure("the token's subject is empty or too long") }
        return claims
    }

    /// Signs claims (for identity providers written in Swift, and the tests).
    public static func sign(_ claims: Claims, with key: SigningKey) throws -> String {
        let header = base64URL(Array(#"{"alg":"\#(key.algorithm)","typ":"JWT"}"#.utf8))
        let payload = base64URL(try CanonicalJSON.encode(claims))
        let signature = try key.sign(Array("\(header).\(payload)".utf8))
        return "\(header).\(payload).\(base64URL(Array(Data(base64Encoded: signature) ?? Data())))"
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        Data(bytes).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    static func base64URLDecode(_ s: Substring) -> Data? {
        guard s.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }), s.allSatisfy(\.isASCII) else { return nil }
        var b = s.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while b.count % 4 != 0 { b += "=" }
        return Data(base64Encoded: b)
    }
}
