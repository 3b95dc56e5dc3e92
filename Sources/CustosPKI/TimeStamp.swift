import CCustosOpenSSL
import Foundation

/// RFC 3161 time-stamps: the request a client sends, the answer a TSA gives, and its check.
public enum TimeStamp {
    /// A TimeStampReq (DER) for a SHA-256 digest, with `nonce` (big-endian, first byte non-zero)
    /// and certReq set, so the answer carries the TSA's certificate.
    public static func request(sha256: [UInt8], nonce: [UInt8]) throws(PKIError) -> [UInt8] {
        guard sha256.count == 32 else { throw PKIError(reason: "a SHA-256 digest has 32 bytes") }
        return try Shim.required(Shim.call { out, err, n in
            sha256.withPointer { d, _ in nonce.withPointer { np, nn in custos_ts_request(d, np, nn, out, err, n) } }
        })
    }

    /// A fresh random nonce of 8 bytes that encodes as a positive INTEGER without padding.
    public static func makeNonce() -> [UInt8] {
        var n = (0..<8).map { _ in UInt8.random(in: 0...255) }
        n[0] = (n[0] & 0x7F) | 0x01
        return n
    }

    /// The signing identity of a time-stamping authority.
    public struct Authority: Sendable {
        public var certificate: String
        public var key: String
        public var chain: String
        /// The TSA policy OID put in every token.
        public var policy: String

        public init(certificate: String, key: String, chain: String = "", policy: String = "1.3.6.1.4.1.55555.1.1") {
            self.certificate = certificate
            self.key = key
            self.chain = chain
            self.policy = policy
        }

        /// Answers a TimeStampReq with a TimeStampResp (DER). A request it cannot grant gets a
        /// signed rejection status, as RFC 3161 §2.4.2 has it; only a broken TSA set-up throws.
        public func respond(to request: [UInt8], serial: Int64) throws(PKIError) -> [UInt8] {
            let c = certificate.bytes, k = key.bytes, ch = chain.bytes
            return try Shim.required(Shim.call { out, err, n in
                request.withPointer { r, rn in c.withPointer { cp, cn in k.withPointer { kp, kn in ch.withPointer { chp, chn in
                    custos_ts_respond(r, rn, cp, cn, kp, kn, chp, chn, policy, serial, out, err, n)
                } } } }
            })
        }
    }

    public struct Token: Sendable, Equatable {
        public var genTime: Date
        /// Accuracy the TSA claims, in microseconds, when it states one.
        public var accuracyMicroseconds: Int64?
        public var nonce: [UInt8]
    }

    public enum Verification: Sendable, Equatable {
        case valid(Token)
        case invalid(String)
    }

    /// Checks a TimeStampResp: granted, signed by a TSA that chains to `trust`, over `sha256`.
    /// - Parameter at: the time the TSA's certificates must be valid at (default: now). A
    ///   renewal (RFC 4998 §5.2) proves an earlier token at the time the renewal states.
    public static func verify(response: [UInt8], sha256: [UInt8], trust: String, at: Date? = nil) -> Verification {
        guard sha256.count == 32 else { return .invalid("a SHA-256 digest has 32 bytes") }
        if let at, at.timeIntervalSince1970 < 0 { return .invalid("a date before 1970 is not one a certificate can be checked at") }
        let t = trust.bytes
        let atTime = at.map { Int64($0.timeIntervalSince1970.rounded(.down)) } ?? -1
        var genTime: Int64 = 0, accuracy: Int64 = -1
        let out = Shim.call { out, err, n in
            response.withPointer { r, rn in sha256.withPointer { d, _ in t.withPointer { tp, tn in
                custos_ts_verify(r, rn, d, tp, tn, atTime, &genTime, &accuracy, out, err, n)
            } } }
        }
        guard out.status == 1 else { return .invalid(out.error) }
        return .valid(Token(genTime: Date(timeIntervalSince1970: TimeInterval(genTime)),
                            accuracyMicroseconds: accuracy >= 0 ? accuracy : nil, nonce: out.output))
    }

    /// When the certificate that signed a TimeStampResp (carried in it) expires; nil when the
    /// response carries no single signing certificate.
    public static func signerNotAfter(response: [UInt8]) -> Date? {
        var notAfter: Int64 = 0
        let out = Shim.call { _, err, n in
            response.withPointer { r, rn in custos_ts_signer_not_after(r, rn, &notAfter, err, n) }
        }
        return out.status == 1 ? Date(timeIntervalSince1970: TimeInterval(notAfter)) : nil
    }
}
