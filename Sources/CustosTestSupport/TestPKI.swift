import CustosPKI
import Foundation

/// A throw-away PKI made inside the tests: a provider CA and a signer, a TSA CA and a TSA.
public struct TestPKI: Sendable {
    public let providerCA: String, providerCAKey: String
    public let signer: String, signerKey: String
    public let tsaCA: String, tsaCAKey: String
    public let tsa: TimeStamp.Authority
    /// The custody log's CA and its checkpoint-signing certificate.
    public let custodyCA: String, custodyCertificate: String, custodyKey: String
    /// An outside witness's self-issued certificate.
    public let witnessCertificate: String, witnessKey: String

    public init(signerName: String = "prov-a", signerValidity: ClosedRange<Date> = Date(timeIntervalSinceNow: -86_400)...Date(timeIntervalSinceNow: 365 * 86_400),
                caYears: Double = 1, rsaSigner: Bool = false) throws {
        let year = Date(timeIntervalSinceNow: caYears * 365 * 86_400), past = Date(timeIntervalSinceNow: -86_400)
        providerCAKey = try X509.generateKey()
        providerCA = try X509.issue(commonName: "Test Provider CA", subjectKey: providerCAKey, issuerCertificate: nil, issuerKey: providerCAKey,
                                    notBefore: past, notAfter: year, serial: 1, role: .certificateAuthority)
        signerKey = rsaSigner ? try X509.generateRSAKey() : try X509.generateKey()
        signer = try X509.issue(commonName: signerName, organization: "Test Telco", subjectKey: signerKey, issuerCertificate: providerCA,
                                issuerKey: providerCAKey, notBefore: signerValidity.lowerBound, notAfter: signerValidity.upperBound, serial: 2, role: .signer)
        tsaCAKey = try X509.generateKey()
        tsaCA = try X509.issue(commonName: "Test TSA CA", subjectKey: tsaCAKey, issuerCertificate: nil, issuerKey: tsaCAKey,
                               notBefore: past, notAfter: year, serial: 1, role: .certificateAuthority)
        let tsaKey = try X509.generateKey()
        let tsaCert = try X509.issue(commonName: "Test TSA", subjectKey: tsaKey, issuerCertificate: tsaCA, issuerKey: tsaCAKey,
                                     notBefore: past, notAfter: year, serial: 2, role: .timeStamping)
        tsa = TimeStamp.Authority(certificate: tsaCert, key: tsaKey)
        let custodyCAKey = try X509.generateKey()
        custodyCA = try X509.issue(commonName: "Test Custody CA", subjectKey: custodyCAKey, issuerCertificate: nil, issuerKey: custodyCAKey,
                                   notBefore: past, notAfter: year, serial: 1, role: .certificateAuthority)
        custodyKey = try X509.generateKey()
        custodyCertificate = try X509.issue(commonName: "Test Custody Log", subjectKey: custodyKey, issuerCertificate: custodyCA, issuerKey: custodyCAKey,
                                            notBefore: past, notAfter: year, serial: 2, role: .signer)
        witnessKey = try X509.generateKey()
        witnessCertificate = try X509.issue(commonName: "Test Witness", subjectKey: witnessKey, issuerCertificate: nil, issuerKey: witnessKey,
                                            notBefore: past, notAfter: year, serial: 1, role: .signer)
    }
}

