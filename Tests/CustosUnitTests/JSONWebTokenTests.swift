@testable import CustosBroker
import CustosEvidence
import CustosPKI
import Foundation
import JWTKit
import Testing

/// JWT bearer tokens: only a token signed by the trusted key, for this audience and issuer,
/// inside its validity period, is accepted; the algorithm comes from the key; no claim value
/// can crash the verifier.
@Suite("JSON Web Tokens")
struct JSONWebTokenTests {
    let key = SigningKey.generate()
    let now = Date()

    func claims(exp: TimeInterval = 300, aud: String = "custos", iss: String? = "idp", nbf: TimeInterval? = nil) -> JSONWebToken.Claims {
        JSONWebToken.Claims(sub: "alice", agency: "default", roles: ["investigator", "auditor"], aud: aud, iss: iss,
                            exp: now.addingTimeInterval(exp), nbf: nbf.map { now.addingTimeInterval($0) })
    }

    func verify(_ token: String, keys: [VerifyingKey]? = nil) async throws -> JSONWebToken.Claims {
        try await JSONWebToken.Verifier(keys: keys ?? [key.publicKey], audience: "custos", issuer: "idp").verify(token, now: now)
    }

    func refusal(_ token: String, keys: [VerifyingKey]? = nil) async -> String? {
        do { _ = try await verify(token, keys: keys); return nil } catch { return "\(error)" }
    }

    /// A token with any payload JSON, signed by `key` (ES256): for claim values that
    /// `Claims` cannot express.
    func raw(payload: String, header: String = #"{"alg":"ES256","typ":"JWT"}"#, key: SigningKey? = nil) throws -> String {
        func b64(_ s: String) -> String {
            Data(s.utf8).base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_")
                .replacingOccurrences(of: "=", with: "")
        }
        let input = "\(b64(header)).\(b64(payload))"
        let signature = Data(base64Encoded: try (key ?? self.key).sign(Array(input.utf8)))!.base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        return "\(input).\(signature)"
    }

    func payload(exp: String) -> String { #"{"sub":"alice","agency":"default","roles":["investigator"],"aud":"custos","iss":"idp","exp":\#(exp)}"# }

    @Test func aGoodTokenGivesItsClaims() async throws {
        let c = try await verify(try await JSONWebToken.sign(claims(), with: key))
        #expect(c.sub == "alice" && c.agency == "default" && c.roles == ["investigator", "auditor"])
        // RSA identity providers sign PS256.
        let rsa = try SigningKey(pem: try X509.generateRSAKey())
        #expect(try await verify(try await JSONWebToken.sign(claims(), with: rsa), keys: [rsa.publicKey]).sub == "alice")
    }

    @Test func badTokensAreRefusedWithTheirReason() async throws {
        #expect(await refusal(try await JSONWebToken.sign(claims(exp: -120), with: key))?.contains("expired") == true)
        #expect(await refusal(try await JSONWebToken.sign(claims(exp: -30), with: key)) == nil)  // within the leeway for clock skew
        #expect(await refusal(try await JSONWebToken.sign(claims(aud: "elsewhere"), with: key))?.contains("audience") == true)
        #expect(await refusal(try await JSONWebToken.sign(claims(iss: "other-idp"), with: key))?.contains("issuer") == true)
        #expect(await refusal(try await JSONWebToken.sign(claims(nbf: 600), with: key))?.contains("not valid yet") == true)
        #expect(await refusal(try await JSONWebToken.sign(claims(), with: .generate()))?.contains("signature") == true)
        let good = try await JSONWebToken.sign(claims(), with: key)
        let parts = good.split(separator: ".").map(String.init)
        // A payload changed after signing (another agency), and "alg": "none".
        let otherPayload = try await JSONWebToken.sign(JSONWebToken.Claims(sub: "alice", agency: "other", roles: ["admin"], aud: "custos", iss: "idp",
                                                                           exp: now.addingTimeInterval(300)), with: .generate()).split(separator: ".")[1]
        #expect(await refusal("\(parts[0]).\(otherPayload).\(parts[2])")?.contains("signature") == true)
        let none = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64EncodedString().replacingOccurrences(of: "=", with: "")
        #expect(await refusal("\(none).\(parts[1]).")?.contains("algorithm") == true)
        // An RSA-signed token against the P-256 key: the algorithm comes from the key.
        let rsa = try SigningKey(pem: try X509.generateRSAKey())
        #expect(await refusal(try await JSONWebToken.sign(claims(), with: rsa))?.contains("algorithm") == true)
        for garbage in ["", "a.b", "a.b.c.d", "not a token at all", "\(parts[0]).!!!.\(parts[2])", "...", "\(parts[0])..\(parts[2])"] {
            #expect(await refusal(garbage) != nil, "\(garbage)")
        }
    }

    /// RFC 7519 §2: a NumericDate is any JSON number; huge ones are far-future dates, never an
    /// arithmetic overflow (the broker used to crash on `exp` = Int64.max).
    @Test func numericDatesOfAnySizeOrPrecision() async throws {
        let t = now.timeIntervalSince1970
        #expect(await refusal(try raw(payload: payload(exp: "9223372036854775807"))) == nil)
        #expect(await refusal(try raw(payload: payload(exp: "\(t + 300.5)"))) == nil)
        #expect(await refusal(try raw(payload: payload(exp: "1e300"))) == nil)
        #expect(await refusal(try raw(payload: payload(exp: "18446744073709551616"))) == nil)
        #expect(await refusal(try raw(payload: payload(exp: "-9223372036854775808")))?.contains("expired") == true)
        #expect(await refusal(try raw(payload: payload(exp: "\(t - 3600.25)")))?.contains("expired") == true)
        // Not numbers at all: refused, and the reason says the claims are unreadable.
        for bad in [#""tomorrow""#, "null", "1e400", "[1]", "true"] {
            #expect(await refusal(try raw(payload: payload(exp: bad)))?.contains("claims") == true, "\(bad)")
        }
        let nbfHuge = #"{"sub":"alice","agency":"default","roles":["investigator"],"aud":"custos","iss":"idp","exp":\#(t + 300),"nbf":9223372036854775807}"#
        #expect(await refusal(try raw(payload: nbfHuge))?.contains("not valid yet") == true)
    }

    /// RFC 7515 §4.1.11: a `crit` naming an extension the verifier does not understand is
    /// refused; Custos understands none.
    @Test func critNamingAnyExtensionIsRefused() async throws {
        let t = now.timeIntervalSince1970 + 300
        let critical = #"{"alg":"ES256","typ":"JWT","crit":["http://example.invalid/ext"],"http://example.invalid/ext":true}"#
        #expect(await refusal(try raw(payload: payload(exp: "\(t)"), header: critical))?.contains("crit") == true)
        #expect(await refusal(try raw(payload: payload(exp: "\(t)"), header: #"{"alg":"ES256","crit":[]}"#))?.contains("crit") == true)
        #expect(await refusal(try raw(payload: payload(exp: "\(t)"), header: #"{"alg":"ES256","crit":["exp"]}"#))?.contains("crit") == true)
        var header = JWTHeader()
        header.crit = ["http://example.invalid/ext"]
        #expect(await refusal(try await JSONWebToken.sign(claims(), with: key, header: header))?.contains("crit") == true)
        #expect(await refusal(try raw(payload: payload(exp: "\(t)"))) == nil)
    }
}
