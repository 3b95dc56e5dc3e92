import CCustosOpenSSL
import Foundation

/// RFC 5652 SignedData, detached: how providers sign manifests.
public enum CMS {
    /// Signs `data` with `key` (PEM) as `certificate` (PEM), carrying `chain` (PEM bundle,
    /// may be empty) so that a verifier needs only the root. Returns DER.
    public static func sign(_ data: [UInt8], certificate: String, key: String, chain: String = "") throws(PKIError) -> [UInt8] {
        let cert = certificate.bytes, k = key.bytes, ch = chain.bytes
        return try Shim.required(Shim.call { out, err, n in
            cert.withPointer { c, cn in k.withPointer { kp, kn in ch.withPointer { chp, chn in data.withPointer { d, dn in
                custos_cms_sign(c, cn, kp, kn, chp, chn, d, dn, out, err, n)
            } } } }
        })
    }

    public enum Verification: Sendable, Equatable {
        /// The signature is over `data`, by `signer`, whose chain reaches a trust anchor and was
        /// valid at the time asked for.
        case valid(signer: CertificateInfo)
        /// Why not (OpenSSL's reason).
        case invalid(String)
    }

    /// Verifies a detached signature. Trust anchors come only from `trust` (PEM bundle);
    /// the chain is checked at `time` (nil: now). Unusable input is `.invalid` too.
    public static func verify(signature: [UInt8], data: [UInt8], trust: String, at time: Date?) -> Verification {
        verify(signature: signature, data: data, trust: trust, at: time, checkChain: true)
    }

    /// Checks only that the signature covers `data` (no trust anchors, no chain): how an
    /// altered document is told apart from an untrusted or expired certificate.
    public static func verifyIntegrity(signature: [UInt8], data: [UInt8]) -> Verification {
        verify(signature: signature, data: data, trust: "", at: nil, checkChain: false)
    }

    static func verify(signature: [UInt8], data: [UInt8], trust: String, at time: Date?, checkChain: Bool) -> Verification {
        let t = trust.bytes
        let at = time.map { Int64($0.timeIntervalSince1970) } ?? -1
        let out = Shim.call { out, err, n in
            signature.withPointer { s, sn in data.withPointer { d, dn in t.withPointer { tp, tn in
                custos_cms_verify(s, sn, d, dn, tp, tn, at, checkChain ? 1 : 0, out, err, n)
            } } }
        }
        guard out.status == 1 else { return .invalid(out.error) }
        do { return .valid(signer: try CertificateInfo(out.output)) } catch { return .invalid(error.reason) }
    }
}
