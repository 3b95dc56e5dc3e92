import Crypto
import CustosModel
import CustosPKI
import Foundation

/// An ECDSA P-256 signing key. The package-format issue moves package signatures to CMS with
/// X.509 chains; message signatures stay on this.
public struct SigningKey: Sendable {
    public let privateKey: P256.Signing.PrivateKey

    public init(privateKey: P256.Signing.PrivateKey) { self.privateKey = privateKey }

    public init(pem: String) throws(KeyError) {
        do { privateKey = try P256.Signing.PrivateKey(pemRepresentation: pem) } catch {
            throw KeyError(reason: "not a PEM-encoded P-256 private key")
        }
    }

    public static func generate() -> SigningKey { SigningKey(privateKey: P256.Signing.PrivateKey()) }

    public var publicKey: VerifyingKey { VerifyingKey(publicKey: privateKey.publicKey) }
    public var pem: String { privateKey.pemRepresentation }

    /// Raw r‖s, base64.
    public func sign<Bytes: DataProtocol>(_ bytes: Bytes) throws -> String {
        try privateKey.signature(for: bytes).rawRepresentation.base64EncodedString()
    }
}

public struct VerifyingKey: Sendable, Hashable {
    public let publicKey: P256.Signing.PublicKey

    public init(publicKey: P256.Signing.PublicKey) { self.publicKey = publicKey }

    public init(pem: String) throws(KeyError) {
        do { publicKey = try P256.Signing.PublicKey(pemRepresentation: pem) } catch {
            throw KeyError(reason: "not a PEM-encoded P-256 public key")
        }
    }

    public var pem: String { publicKey.pemRepresentation }

    /// The public key of a P-256 certificate: the key a provider signs its messages with.
    public init(certificate: CertificateInfo) throws(KeyError) {
        do { publicKey = try P256.Signing.PublicKey(derRepresentation: certificate.publicKeyDER) } catch {
            throw KeyError(reason: "the certificate's key is not a P-256 public key")
        }
    }

    /// SHA-256 of the SubjectPublicKeyInfo, hex: names the key in signatures.
    public var keyId: String { Digest.sha256Hex(publicKey.derRepresentation) }

    public func isValidSignature<Bytes: DataProtocol>(_ base64: String, for bytes: Bytes) -> Bool {
        guard let raw = Data(base64Encoded: base64),
              let signature = try? P256.Signing.ECDSASignature(rawRepresentation: raw)
        else { return false }
        return publicKey.isValidSignature(signature, for: bytes)
    }

    public static func == (a: VerifyingKey, b: VerifyingKey) -> Bool { a.publicKey.derRepresentation == b.publicKey.derRepresentation }
    public func hash(into hasher: inout Hasher) { hasher.combine(publicKey.derRepresentation) }
}

public struct KeyError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public var description: String { "key error: \(reason)" }
}

extension SigningKey {
    /// Loads a private key from a PEM file.
    public static func load(path: String) throws -> SigningKey {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw KeyError(reason: "cannot read private key file \(path)")
        }
        return try SigningKey(pem: text)
    }

    /// Writes the private key (mode 0600) and its public key next to it.
    public func write(privatePath: String, publicPath: String) throws {
        let fm = FileManager.default
        guard fm.createFile(atPath: privatePath, contents: Data(pem.utf8), attributes: [.posixPermissions: 0o600]) else {
            throw KeyError(reason: "cannot write \(privatePath)")
        }
        try Data(publicKey.pem.utf8).write(to: URL(fileURLWithPath: publicPath))
    }
}

extension VerifyingKey {
    public static func load(path: String) throws -> VerifyingKey {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw KeyError(reason: "cannot read public key file \(path)")
        }
        return try VerifyingKey(pem: text)
    }
}
