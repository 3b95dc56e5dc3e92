import CCustosOpenSSL
import Foundation

/// RSASSA-PSS with SHA-256 (JOSE "PS256"): how providers whose certificate holds an RSA key
/// sign their messages. ECDSA P-256 keys use ES256 through swift-crypto instead.
public enum PS256 {
    public enum KeyKind: Sendable, Equatable { case p256, rsa(bits: Int), other }

    /// What kind of key a SubjectPublicKeyInfo (DER) holds.
    public static func kind(ofPublicKey spki: [UInt8]) -> KeyKind? {
        var bits: Int32 = 0
        let k = spki.withPointer { p, n in custos_spki_kind(p, n, &bits) }
        switch k {
        case 1: return .p256
        case 2: return .rsa(bits: Int(bits))
        case 0: return .other
        default: return nil
        }
    }

    /// The public key (SubjectPublicKeyInfo DER) of a private key (PEM).
    public static func publicKey(ofPrivateKey pem: String) throws(PKIError) -> [UInt8] {
        let k = pem.bytes
        return try Shim.required(Shim.call { out, err, n in k.withPointer { p, len in custos_public_key_of(p, len, out, err, n) } })
    }

    public static func sign(_ data: [UInt8], key: String) throws(PKIError) -> [UInt8] {
        let k = key.bytes
        return try Shim.required(Shim.call { out, err, n in
            k.withPointer { kp, kn in data.withPointer { d, dn in custos_ps256_sign(kp, kn, d, dn, out, err, n) } }
        })
    }

    public static func isValid(signature: [UInt8], for data: [UInt8], publicKey spki: [UInt8]) -> Bool {
        spki.withPointer { sp, sn in data.withPointer { d, dn in signature.withPointer { s, ssn in custos_ps256_verify(sp, sn, d, dn, s, ssn) == 1 } } }
    }
}
