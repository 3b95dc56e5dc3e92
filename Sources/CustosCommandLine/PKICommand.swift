import ArgumentParser
import CustosPKI
import Foundation

/// `pki ca` and `pki issue`: a small PKI for self-hosted set-ups, demos and tests. In
/// production, providers' signing certificates come from their own CA and the TSA's from
/// whoever runs it.
public struct PKICommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "pki", abstract: "Create CA, signer and time-stamping certificates (P-256, PEM).", subcommands: [CA.self, Issue.self])
    public init() {}

    public struct CA: ParsableCommand {
        public static let configuration = CommandConfiguration(abstract: "Create a self-signed CA certificate and its key.")
        @Option(help: "The CA's name (certificate common name).") var name: String
        @Option(help: "Where to write the CA's private key.") var keyOut: String
        @Option(help: "Where to write the CA's certificate.") var certificateOut: String
        @Option(help: "Validity in days.") var days: Int = 3650
        public init() {}

        public func run() throws {
            let key = try X509.generateKey()
            let cert = try X509.issue(commonName: name, subjectKey: key, issuerCertificate: nil, issuerKey: key,
                                      notBefore: Date(timeIntervalSinceNow: -300), notAfter: Date(timeIntervalSinceNow: Double(days) * 86_400),
                                      serial: Int64.random(in: 1...Int64.max), role: .certificateAuthority)
            try writeSecret(key, to: keyOut)
            try Data(cert.utf8).write(to: URL(fileURLWithPath: certificateOut))
            print("wrote \(keyOut) and \(certificateOut)")
        }
    }

    public struct Issue: ParsableCommand {
        public static let configuration = CommandConfiguration(
            abstract: "Issue a certificate from a CA: role signer (a provider; the name must be its provider id) or tsa (time-stamping).")
        @Option(help: "Certificate common name: the provider id for a signer.") var name: String
        @Option(help: "signer or tsa.") var role: String
        @Option(help: "The issuing CA's certificate.") var caCertificate: String
        @Option(help: "The issuing CA's private key.") var caKey: String
        @Option(help: "Where to write the new private key.") var keyOut: String
        @Option(help: "Where to write the new certificate.") var certificateOut: String
        @Option(help: "Organization name to put in the certificate.") var organization: String?
        @Option(help: "Validity in days.") var days: Int = 825
        @Option(help: "Key type of the new certificate: p256 (ECDSA) or rsa (3072 bits).") var keyType: String = "p256"
        public init() {}

        public func run() throws {
            let r: X509.Role
            switch role {
            case "signer": r = .signer
            case "tsa": r = .timeStamping
            default: throw ValidationError("--role must be signer or tsa")
            }
            let caCert = try String(contentsOfFile: caCertificate, encoding: .utf8)
            let caKeyPEM = try String(contentsOfFile: caKey, encoding: .utf8)
            let key: String
            switch keyType {
            case "p256": key = try X509.generateKey()
            case "rsa": key = try X509.generateRSAKey(bits: 3072)
            default: throw ValidationError("--key-type must be p256 or rsa")
            }
            let cert = try X509.issue(commonName: name, organization: organization, subjectKey: key, issuerCertificate: caCert, issuerKey: caKeyPEM,
                                      notBefore: Date(timeIntervalSinceNow: -300), notAfter: Date(timeIntervalSinceNow: Double(days) * 86_400),
                                      serial: Int64.random(in: 1...Int64.max), role: r)
            try writeSecret(key, to: keyOut)
            try Data(cert.utf8).write(to: URL(fileURLWithPath: certificateOut))
            print("wrote \(keyOut) and \(certificateOut)")
        }
    }
}

/// Writes a private key readable by its owner only.
func writeSecret(_ pem: String, to path: String) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(pem.utf8), attributes: [.posixPermissions: 0o600]) else {
        throw ValidationError("cannot write \(path)")
    }
}
