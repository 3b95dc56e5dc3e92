import CustosEvidence
import Foundation
import JWTKit

/// Bearer tokens issued by an identity provider the broker trusts: JWS compact serialization
/// (RFC 7515) of JWT claims (RFC 7519), signed ES256 (P-256) or PS256 (RSA), parsed and
/// verified by vapor/jwt-kit. Custos adds its own rules on top:
/// - the algorithm comes from the trusted key, never from the token, so `none` or a swapped
///   algorithm fails (RFC 8725 §3.1);
/// - a token whose `crit` header names any extension is refused, since Custos understands
///   none (RFC 7515 §4.1.11);
/// - `exp` and `nbf` are NumericDates (RFC 7519 §2): any JSON number of seconds, fractions
///   included; comparisons are in floating point, so no value can overflow.
public enum JSONWebToken {
    /// What Custos reads from a token: who (`sub`), which agency, which roles; times are
    /// instants (`exp`, `nbf`, `iat`, RFC 7519 §4.1.4–4.1.6).
    public struct Claims: Sendable, Equatable {
        public var sub: String
        public var agency: String
        public var roles: [String]
        /// `aud`: one string or several (RFC 7519 §4.1.3).
        public var aud: [String]
        public var iss: String?
        public var exp: Date
        public var nbf: Date?
        public var iat: Date?

        public init(sub: String, agency: String, roles: [String], aud: String, iss: String? = nil, exp: Date, nbf: Date? = nil, iat: Date? = nil) {
            self.sub = sub
            self.agency = agency
            self.roles = roles
            self.aud = [aud]
            self.iss = iss
            self.exp = exp
            self.nbf = nbf
            self.iat = iat
        }
    }

    /// Why a token was refused; the HTTP layer answers 401 with the reason (never the token).
    public struct Failure: Error, Sendable, Equatable, CustomStringConvertible {
        public var description: String
        init(_ d: String) { description = d }
    }

    /// The claims as jwt-kit reads them. Validity is checked by `verify` (with leeway and a
    /// reason for each refusal), not here.
    struct Payload: JWTPayload {
        var sub: SubjectClaim
        var agency: String
        var roles: [String]
        var aud: AudienceClaim
        var iss: IssuerClaim?
        var exp: ExpirationClaim
        var nbf: NotBeforeClaim?
        var iat: IssuedAtClaim?

        func verify(using algorithm: some JWTAlgorithm) async throws {}

        init(_ c: Claims) {
            sub = .init(value: c.sub)
            agency = c.agency
            roles = c.roles
            aud = .init(value: c.aud)
            iss = c.iss.map { .init(value: $0) }
            exp = .init(value: c.exp)
            nbf = c.nbf.map { .init(value: $0) }
            iat = c.iat.map { .init(value: $0) }
        }

        var claims: Claims {
            var c = Claims(sub: sub.value, agency: agency, roles: roles, aud: "", iss: iss?.value, exp: exp.value, nbf: nbf?.value, iat: iat?.value)
            c.aud = aud.value
            return c
        }
    }

    /// A trusted key in jwt-kit's form, made once from the PEM.
    enum TrustedKey: Sendable {
        case es256(ES256PublicKey)
        case ps256(Insecure.RSA.PublicKey)

        init(_ key: VerifyingKey) throws {
            switch key.algorithm {
            case "ES256": self = .es256(try ES256PublicKey(pem: key.pem))
            default: self = .ps256(try Insecure.RSA.PublicKey(pem: key.pem))
            }
        }

        var algorithm: String {
            switch self {
            case .es256: "ES256"
            case .ps256: "PS256"
            }
        }

        func collection() async -> JWTKeyCollection {
            let c = JWTKeyCollection()
            switch self {
            case .es256(let k): await c.add(ecdsa: k)
            case .ps256(let k): await c.add(pss: k, digestAlgorithm: .sha256)
            }
            return c
        }
    }

    /// Checks tokens against a set of trusted keys, an audience and (when set) an issuer.
    public struct Verifier: Sendable {
        let keys: [TrustedKey]
        let audience: String
        let issuer: String?
        let leeway: TimeInterval

        /// `leeway`: seconds of clock skew allowed on `exp` and `nbf`.
        /// Throws `KeyError` when a key cannot be used for JWTs.
        public init(keys: [VerifyingKey], audience: String, issuer: String?, leeway: TimeInterval = 60) throws(KeyError) {
            do { self.keys = try keys.map(TrustedKey.init) } catch { throw KeyError(reason: "the key cannot verify JWTs") }
            self.audience = audience
            self.issuer = issuer
            self.leeway = leeway
        }

        /// Checks signature, algorithm, `crit`, audience, issuer and validity period, and
        /// returns the claims; throws `Failure` with a reason fit for a 401 answer.
        public func verify(_ token: String, now: Date = Date()) async throws(Failure) -> Claims {
            let bytes = Array(token.utf8)
            let header: JWTHeader
            do {
                header = try DefaultJWTParser().parse(bytes, as: HeaderOnly.self).header
            } catch {
                throw Failure("the token is not a JWS compact serialization")
            }
            let algorithm = header.alg ?? ""
            guard let key = keys.first(where: { $0.algorithm == algorithm }) else {
                // The header's text is the caller's: it is not echoed into the answer or the log.
                throw Failure("the token's algorithm is not accepted (the trusted key's: \(keys.map(\.algorithm).joined(separator: ", ")))")
            }
            if header.fields["crit"] != nil {
                throw Failure("the token's crit header names extensions this broker does not understand (RFC 7515 §4.1.11)")
            }
            let payload: Payload
            do {
                payload = try await key.collection().verify(bytes, as: Payload.self)
            } catch let e as JWTError where e.errorType == .signatureVerificationFailed {
                throw Failure("the token's signature does not verify")
            } catch let e as JWTError where e.errorType == .malformedToken {
                throw Failure("the token's claims are unreadable or lack sub, agency, roles, aud or exp")
            } catch {
                throw Failure("the token's signature does not verify")
            }
            let claims = payload.claims
            let t = now.timeIntervalSince1970
            guard t <= claims.exp.timeIntervalSince1970 + leeway else { throw Failure("the token has expired") }
            if let nbf = claims.nbf, t + leeway < nbf.timeIntervalSince1970 { throw Failure("the token is not valid yet") }
            guard claims.aud.contains(audience) else { throw Failure("the token is for another audience") }
            if let issuer, claims.iss != issuer { throw Failure("the token is from another issuer") }
            guard !claims.sub.isEmpty, claims.sub.count <= 100 else { throw Failure("the token's subject is empty or too long") }
            return claims
        }
    }

    /// Reads any payload, so that the header can be looked at before the signature is checked.
    struct HeaderOnly: JWTPayload {
        init(from decoder: any Decoder) throws {}
        func encode(to encoder: any Encoder) throws {}
        func verify(using algorithm: some JWTAlgorithm) async throws {}
    }

    /// Signs claims (for identity providers written in Swift, and the tests). `header` adds
    /// header parameters (the tests use it for `crit`).
    public static func sign(_ claims: Claims, with key: SigningKey, header: JWTHeader = JWTHeader()) async throws -> String {
        let c = JWTKeyCollection()
        switch key.algorithm {
        case "ES256": await c.add(ecdsa: try ES256PrivateKey(pem: key.pem))
        default: await c.add(pss: try Insecure.RSA.PrivateKey(pem: key.pem), digestAlgorithm: .sha256)
        }
        var h = header
        h.typ = "JWT"
        return try await c.sign(Payload(claims), header: h)
    }
}
