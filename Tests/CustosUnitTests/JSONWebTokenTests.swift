import CustosEvidence
import CustosPKI
import Foundation
import Testing

/// JWT bearer tokens: only a token signed by the trusted key, for this audience and issuer,
/// inside its validity period, is accepted; the algorithm comes from the key.
@Suite("JSON Web Tokens")
struct JSONWebTokenTests {
    let key = SigningKey.generate()
    let now = Date()

    func claims(exp: TimeInterval = 300, aud: String = "custos", iss: String? = "idp", nbf: TimeInterval? = nil) -> JSONWebToken.Claims {
        JSONWebToken.Claims(sub: "alice", agency: "default", roles: ["investigator", "auditor"], aud: aud, iss: iss,
                            exp: Int64(now.timeIntervalSince1970 + exp), nbf: nbf.map { Int64(now.timeIntervalSince1970 + $0) })
    }

    func verify(_ token: String, keys: [VerifyingKey]? = nil) throws(JSONWebToken.Failure) -> JSONWebToken.Claims {
        try JSONWebToken.verify(token, keys: keys ?? [key.publicKey], audience: "custos", issuer: "idp", now: now)
    }

    func refusal(_ token: String, keys: [VerifyingKey]? = nil) -> String? {
        do { _ = try verify(token, keys: keys); return nil } catch { return error.description }
    }

    @Test func aGoodTokenGivesItsClaims() throws {
        let c = try verify(try JSONWebToken.sign(claims(), with: key))
        #expect(c.sub == "alice" && c.agency == "default" && c.roles == ["investigator", "auditor"])
        // RSA identity providers sign PS256.
        let rsa = try SigningKey(pem: try X509.generateRSAKey())
        #expect(try verify(try JSONWebToken.sign(claims(), with: rsa), keys: [rsa.publicKey]).sub == "alice")
    }

    @Test func badTokensAreRefusedWithTheirReason() throws {
        #expect(refusal(try JSONWebToken.sign(claims(exp: -120), with: key))?.contains("expired") == true)
        #expect(refusal(try JSONWebToken.sign(claims(exp: -30), with: key)) == nil)  // within the leeway for clock skew
        #expect(refusal(try JSONWebToken.sign(claims(aud: "elsewhere"), with: key))?.contains("audience") == true)
        #expect(refusal(try JSONWebToken.sign(claims(iss: "other-idp"), with: key))?.contains("issuer") == true)
        #expect(refusal(try JSONWebToken.sign(claims(nbf: 600), with: key))?.contains("not valid yet") == true)
        #expect(refusal(try JSONWebToken.sign(claims(), with: .generate()))?.contains("signature") == true)
        let good = try JSONWebToken.sign(claims(), with: key)
        let parts = good.split(separator: ".").map(String.init)
        // A payload changed after signing (another agency), and "alg": "none".
        let otherPayload = try JSONWebToken.sign(JSONWebToken.Claims(sub: "alice", agency: "other", roles: ["admin"], aud: "custos", iss: "idp",
                                                                     exp: Int64(now.timeIntervalSince1970 + 300)), with: .generate()).split(separator: ".")[1]
        #expect(refusal("\(parts[0]).\(otherPayload).\(parts[2])")?.contains("signature") == true)
        let none = Data(#"{"alg":"none","typ":"JWT"}"#.utf8).base64EncodedString().replacingOccurrences(of: "=", with: "")
        #expect(refusal("\(none).\(parts[1]).")?.contains("algorithm") == true)
        // An RSA-signed token against the P-256 key: the algorithm comes from the key.
        let rsa = try SigningKey(pem: try X509.generateRSAKey())
        #expect(refusal(try JSONWebToken.sign(claims(), with: rsa))?.contains("algorithm") == true)
        for garbage in ["", "a.b", "a.b.c.d", "not a token at all", "\(parts[0]).!!!.\(parts[2])"] {
            #expect(refusal(garbage) != nil, "\(garbage)")
        }
    }
}
