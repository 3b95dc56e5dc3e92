import Crypto
import CustosModel
import CustosPKI
import Foundation

/// A message-signing key: ECDSA P-256 (ES256, through swift-crypto) or RSA of 2048 bits or
/// more (PS256, through the OpenSSL shim), whichever a provider's certificate holds. The
/// broker's own key is P-256.
public struct SigningKey: Sendable {
    enum Storage: Sendable {
        case p256(P256.Signing.PrivateKey)
        case rsa(pem: String, publicKey: [UInt8])
    }
    let storage: Storage

    public init(privateKey: P256.Signing.PrivateKey) { storage = .p256(privateKey) }

    /// Reads a PEM private key (PKCS#8 or SEC 1 for P-256; PKCS#8 or PKCS#1 for RSA).
    public init(pem: String) throws(KeyError) {
        if let key = try? P256.Signing.PrivateKey(pemRepresentation: pem) {
            storage = .p256(key)
            return
        }
        guard let spki = try? PS256.publicKey(ofPrivateKey: pem), case .rsa(let bits)? = PS256.kind(ofPublicKey: spki) else {
            throw KeyError(reason: "not a PEM-encoded P-256 or RSA private key")
        }
        guard bits >= 2048 else { throw KeyError(reason: "RSA keys must have at least 2048 bits") }
        storage = .rsa(pem: pem, publicKey: spki)
    }

    public static func generate() -> SigningKey { SigningKey(privateKey: P256.Signing.PrivateKey()) }

    public var publicKey: VerifyingKey {
        switch storage {
        case .p256(let k): VerifyingKey(publicKey: k.publicKey)
        case .rsa(_, let spki): VerifyingKey(storage: .rsa(spki))
        }
    }

    /// The JOSE name of the signature algorithm: `ES256` or `PS256`.
    public var algorithm: String { publicKey.algorithm }

    /// ES256: raw r‖s; PS256: the RSA signature. Base64 either way.
    public func sign<Bytes: DataProtocol>(_ bytes: Bytes) throws -> String {
        switch storage {
        case .p256(let k): return try k.signature(for: bytes).rawRepresentation.base64EncodedString()
        case .rsa(let pem, _): return Data(try PS256.sign(Array(bytes), key: pem)).base64EncodedString()
        }
    }

    /// PEM of a P-256 key (generated keys are P-256).
    public var pem: String {
        switch storage {
        case .p256(let k): k.pemRepresentation
        case .rsa(let pem, _): pem
        }
    }
}

public struct VerifyingKey: Sendable, Hashable {
    enum Storage: Sendable, Hashable {
        case p256(P256.Signing.PublicKey)
        case rsa([UInt8])

        static func == (a: Storage, b: Storage) -> Bool { a.spki == b.spki }
        func hash(into hasher: inout Hasher) { hasher.combine(spki) }

        var spki: [UInt8] {
            switch self {
            case .p256(let k): Array(k.derRepresentation)
            case .rsa(let der): der
            }
        }
    }
    let storage: Storage

    init(storage: Storage) { self.storage = storage }
    public init(publicKey: P256.Signing.PublicKey) { storage = .p256(publicKey) }

    /// Reads a PEM public key (SubjectPublicKeyInfo): P-256 or RSA.
    public init(pem: String) throws(KeyError) {
        if let key = try? P256.Signing.PublicKey(pemRepresentation: pem) {
            self.init(storage: .p256(key))
            return
        }
        let body = pem.split(separator: "\n").filter { !$0.hasPrefix("-----") }.joined()
        guard pem.contains("BEGIN PUBLIC KEY"), let der = Data(base64Encoded: body) else {
            throw KeyError(reason: "not a PEM-encoded P-256 or RSA public key")
        }
        try self.init(spki: Array(der))
    }

    /// The public key of a certificate: the key its holder signs messages with.
    public init(certificate: CertificateInfo) throws(KeyError) {
        try self.init(spki: certificate.publicKeyDER)
    }

    init(spki: [UInt8]) throws(KeyError) {
        switch PS256.kind(ofPublicKey: spki) {
        case .p256?:
            guard let key = try? P256.Signing.PublicKey(derRepresentation: spki) else { throw KeyError(reason: "unreadable P-256 key") }
            storage = .p256(key)
        case .rsa(let bits)? where bits >= 2048:
            storage = .rsa(spki)
        case .rsa?:
            throw KeyError(reason: "RSA keys must have at least 2048 bits")
        default:
            throw KeyError(reason: "the key is neither P-256 nor RSA")
        }
    }

    /// SubjectPublicKeyInfo, PEM.
    public var pem: String {
        switch storage {
        case .p256(let k): return k.pemRepresentation
        case .rsa(let der):
            let b64 = Data(der).base64EncodedString(options: [.lineLength64Characters, .endLineWithLineFeed])
            return "-----BEGIN PUBLIC KEY-----\n\(b64)\n-----END PUBLIC KEY-----"
        }
    }

    public var algorithm: String {
        switch storage {
        case .p256: "ES256"
        case .rsa: "PS256"
        }
    }

    /// SHA-256 of the SubjectPublicKeyInfo, hex: names the key in signatures.
    public var keyId: String { Digest.sha256Hex(storage.spki) }

    public func isValidSignature<Bytes: DataProtocol>(_ base64: String, for bytes: Bytes) -> Bool {
        guard let raw = Data(base64Encoded: base64) else { return false }
        switch storage {
        case .p256(let k):
            guard let signature = try? P256.Signing.ECDSASignature(rawRepresentation: raw) else { return false }
            return k.isValidSignature(signature, for: bytes)
        case .rsa(let spki):
            return PS256.isValid(signature: Array(raw), for: Array(bytes), publicKey: spki)
        }
    }
}

public struct KeyError: Error, Sendable, CustomStringConvertible {
    public var reason: String
    public init(reason: String) { self.reason = reason }
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

    /// Every public key in a PEM file (one `-----BEGIN PUBLIC KEY-----` block each,
    /// SubjectPublicKeyInfo, RFC 5280 §4.1.2.7), in file order: a receiver holds the current
    /// key and, around a key change, the next or the previous one too.
    /// Errors: the file cannot be read, holds no key, or a block is not a P-256 or RSA key.
    public static func loadAll(path: String) throws -> [VerifyingKey] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw KeyError(reason: "cannot read public key file \(path)")
        }
        let end = "-----END PUBLIC KEY-----"
        var keys: [VerifyingKey] = []
        var rest = Substring(text)
        while let begin = rest.range(of: "-----BEGIN PUBLIC KEY-----") {
            guard let close = rest.range(of: end, range: begin.upperBound..<rest.endIndex) else {
                throw KeyError(reason: "public key file \(path) has a key without its END line")
            }
            keys.append(try VerifyingKey(pem: String(rest[begin.lowerBound..<close.upperBound])))
            rest = rest[close.upperBound...]
        }
        guard !keys.isEmpty else { throw KeyError(reason: "public key file \(path) holds no PUBLIC KEY block") }
        return keys
    }
}
