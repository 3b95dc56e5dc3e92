import CustosMerkle
import CustosModel
import CustosPKI
import Crypto
import Foundation

/// A signed tree head in the C2SP tlog-checkpoint body format (c2sp.org/tlog-checkpoint):
/// the origin line, the tree size, the base64 root hash:
///
///     custos.example/custody
///     1234
///     Tm9ub3RhcmVhbGhhc2guLi4uLi4uLi4uLi4uLi4uLi4=
///
/// The text is signed twice: as CMS SignedData (RFC 5652, detached, with the log's
/// certificate), whose signature is time-stamped with RFC 3161, so stock `openssl cms -verify`
/// and `openssl ts -verify` check each part; and as a C2SP signed note (Ed25519, key name = the
/// origin), so that any C2SP witness can check and cosign it. The time it was made is the
/// RFC 3161 token's, beside the note, as C2SP advises, not a line inside it.
///
/// Checkpoints made before that carried a fourth line, `time <RFC 3339 UTC>` (an extension
/// line); they still parse, and `time` holds it.
public struct Checkpoint: Sendable, Equatable {
    public var origin: String
    public var size: UInt64
    public var root: SHA256Digest
    /// The legacy `time` extension line's value; nil for checkpoints in the C2SP form.
    public var time: String?

    public init(origin: String, size: UInt64, root: SHA256Digest, time: String? = nil) {
        self.origin = origin
        self.size = size
        self.root = root
        self.time = time
    }

    public var text: String {
        "\(origin)\n\(size)\n\(Data(root.bytes).base64EncodedString())\n" + (time.map { "time \($0)\n" } ?? "")
    }

    public var bytes: [UInt8] { Array(text.utf8) }

    /// Parses the exact format above (three lines, or four with the legacy `time` line);
    /// anything else is refused.
    public init(text bytes: [UInt8]) throws {
        guard bytes.last == 0x0A, let text = String(bytes: bytes, encoding: .utf8) else {
            throw CustodyError("checkpoint is not UTF-8 text ending in a newline")
        }
        let lines = text.dropLast().split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count == 3 || lines.count == 4 else { throw CustodyError("checkpoint has \(lines.count) lines, not 3") }
        guard Self.isValidOrigin(lines[0]) else { throw CustodyError("checkpoint origin is empty or has spaces") }
        guard let size = UInt64(lines[1]), String(size) == lines[1] else { throw CustodyError("checkpoint size is not a decimal number") }
        guard let rootBytes = Data(base64Encoded: lines[2]), let root = SHA256Digest(bytes: rootBytes),
              Data(rootBytes).base64EncodedString() == lines[2]
        else { throw CustodyError("checkpoint root is not a base64 SHA-256 hash") }
        var time: String?
        if lines.count == 4 {
            guard lines[3].hasPrefix("time "), Timestamp.parse(String(lines[3].dropFirst(5))) != nil else {
                throw CustodyError("checkpoint time line is not `time <RFC 3339 UTC>`")
            }
            time = String(lines[3].dropFirst(5))
        }
        self.init(origin: lines[0], size: size, root: root, time: time)
        guard self.text == text else { throw CustodyError("checkpoint is not in canonical form") }
    }

    public static func isValidOrigin(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 200 && s.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7F }
    }

    /// CMS signature by the log (or by a witness: the same operation, another identity).
    public func sign(certificate: String, key: String, chain: String = "") throws -> [UInt8] {
        try CMS.sign(bytes, certificate: certificate, key: key, chain: chain)
    }

    /// The log's C2SP signed note of this text: its Ed25519 signature line (c2sp.org/signed-note),
    /// made with a key whose name is the origin.
    /// - Throws: `NoteError` when the key is not an Ed25519 (0x01) key named after the origin.
    public func noteSignature(by signer: NoteSigner) throws -> NoteSignature {
        guard signer.name == origin else { throw NoteError("the log's note key is named \(signer.name), not after the origin \(origin)") }
        return try signer.sign(bytes)
    }
}

/// A witness's co-signature: CMS SignedData over the same checkpoint text, carrying the
/// witness's certificate.
public struct Cosignature: Codable, Sendable, Equatable {
    public var witness: String
    /// Base64 DER.
    public var signature: String
    public var at: String?

    public init(witness: String, signature: String, at: String? = nil) {
        self.witness = witness
        self.signature = signature
        self.at = at
    }
}
