import CCustosOpenSSL
import Foundation

/// Keys and certificates for Custos' PKI roles. Generation exists for test PKIs, demos and
/// self-hosted set-ups; production keys come from the operator's own CA.
public enum X509 {
    /// A new EC P-256 private key, PKCS#8 PEM.
    public static func generateKey() throws(PKIError) -> String {
        String(decoding: try Shim.required(Shim.call { out, err, n in custos_ec_key_generate(out, err, n) }), as: UTF8.self)
    }

    /// A new RSA private key (for providers whose PKI uses RSA), PKCS#8 PEM.
    public static func generateRSAKey(bits: Int32 = 2048) throws(PKIError) -> String {
        String(decoding: try Shim.required(Shim.call { out, err, n in custos_rsa_key_generate(bits, out, err, n) }), as: UTF8.self)
    }

    public enum Role: Sendable { case certificateAuthority, signer, timeStamping }

    /// Issues a certificate for `subjectKey`'s public key. With no issuer it is self-signed
    /// (a root CA). Returns PEM.
    public static func issue(
        commonName: String, organization: String? = nil, subjectKey: String,
        issuerCertificate: String?, issuerKey: String,
        notBefore: Date, notAfter: Date, serial: Int64, role: Role
    ) throws(PKIError) -> String {
        let subject = subjectKey.bytes, issuerCert = issuerCertificate?.bytes ?? [], key = issuerKey.bytes
        let out = Shim.call { out, err, n in
            subject.withPointer { sk, skn in
                issuerCert.withPointer { ic, icn in
                    key.withPointer { ik, ikn in
                        custos_x509_issue(commonName, organization ?? "", sk, skn, ic, icn, ik, ikn,
                                          Int64(notBefore.timeIntervalSince1970), Int64(notAfter.timeIntervalSince1970), serial,
                                          role == .certificateAuthority ? 1 : 0, role == .timeStamping ? 1 : 0, out, err, n)
                    }
                }
            }
        }
        return String(decoding: try Shim.required(out), as: UTF8.self)
    }
}

/// What Custos reads of a certificate.
public struct CertificateInfo: Sendable, Hashable {
    public var commonName: String
    public var notBefore: Date
    public var notAfter: Date
    /// DER encoding.
    public var der: [UInt8]
    /// The subject's public key, SubjectPublicKeyInfo DER.
    public var publicKeyDER: [UInt8]

    /// Parses a PEM or DER certificate.
    public init(_ certificate: [UInt8]) throws(PKIError) {
        var cn = [CChar](repeating: 0, count: 256)
        var nb: Int64 = 0, na: Int64 = 0
        var spki = custos_buf(data: nil, len: 0)
        defer { custos_buf_free(&spki) }
        let out = cn.withUnsafeMutableBufferPointer { c in
            Shim.call { out, err, n in certificate.withPointer { p, len in custos_x509_info(p, len, c.baseAddress, c.count, &nb, &na, out, &spki, err, n) } }
        }
        der = try Shim.required(out)
        publicKeyDER = Array(UnsafeBufferPointer(start: spki.data, count: spki.len))
        commonName = String(decoding: cn.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        notBefore = Date(timeIntervalSince1970: TimeInterval(nb))
        notAfter = Date(timeIntervalSince1970: TimeInterval(na))
    }

    public init(pem: String) throws(PKIError) { try self.init(pem.bytes) }

    /// PEM encoding.
    public var pem: String {
        let b64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
        return "-----BEGIN CERTIFICATE-----\n\(b64)\n-----END CERTIFICATE-----\n"
    }

    public func isValid(at date: Date) -> Bool { notBefore <= date && date <= notAfter }
}
