import CustosModel
import CustosPKI
import Foundation

/// What the package signature and its time-stamp prove, as a value.
public struct SignatureCheck: Sendable {
    public var failures: [PackageVerification.Failure]
    /// The time-stamp's genTime, when the time-stamp verifies.
    public var genTime: Date?
    public var accuracyMicroseconds: Int64?
    /// The signing certificate, when the signature verifies.
    public var signer: CertificateInfo?
}

public enum PackageSignatureVerifier {
    /// Checks, with trust anchors given by the caller only:
    /// 1. the RFC 3161 time-stamp: granted, by a TSA chaining to `tsaTrust`, over SHA-256 of
    ///    the signature's DER bytes;
    /// 2. the CMS signature over the canonical manifest, by a certificate chaining to
    ///    `providerTrust` and valid at the time-stamp's time (now, when there is no valid one);
    /// 3. that the signer is the provider the manifest is for (its common name).
    ///
    /// With `renewals` (RFC 4998-style, `TimeStampRenewal`), the time-stamp is checked as the
    /// first token of that chain, at `at` (now when nil).
    public static func verify(manifest: [UInt8], signature: [UInt8], timeStamp: [UInt8], providerId: String,
                              providerTrust: String, tsaTrust: String, renewals: [RenewalElement] = [], at: Date? = nil) -> SignatureCheck {
        var check = SignatureCheck(failures: [], genTime: nil, accuracyMicroseconds: nil, signer: nil)
        let chain = TimeStampRenewal.check(object: "manifest.tsr", data: manifest, signature: signature, original: timeStamp, renewals: renewals,
                                           tsaTrust: tsaTrust, at: at)
        check.failures += chain.failures.map { .init(code: .timeStamp, detail: $0) }
        if chain.failures.isEmpty || chain.genTime != nil {
            check.genTime = chain.genTime
            check.accuracyMicroseconds = chain.accuracyMicroseconds
        }
        switch CMS.verify(signature: signature, data: manifest, trust: providerTrust, at: check.genTime) {
        case .valid(let signer):
            check.signer = signer
            if signer.commonName != providerId {
                check.failures.append(.init(code: .wrongProvider, detail: "signed by \(signer.commonName), not by the provider \(providerId)"))
            }
        case .invalid(let why):
            // Tell an altered manifest from a certificate problem, and expiry from an unknown CA.
            let when = check.genTime ?? Date()
            let at = check.genTime.map { "the time-stamp's time \(Timestamp.format($0))" } ?? "now (no valid time-stamp)"
            switch CMS.verifyIntegrity(signature: signature, data: manifest) {
            case .invalid:
                check.failures.append(.init(code: .signature, detail: "the signature does not cover this manifest (altered after signing, or not a signature): \(why)"))
            case .valid(let signer) where !signer.isValid(at: when):
                check.failures.append(.init(code: .certificateExpired, detail: "the signing certificate \(signer.commonName) was not valid at \(at)"))
            case .valid(let signer):
                check.failures.append(.init(code: .untrustedSigner, detail: "the signing certificate \(signer.commonName) does not chain to a trusted provider CA at \(at): \(why)"))
            }
        }
        return check
    }
}
