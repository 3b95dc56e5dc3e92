import CustosMerkle
import CustosModel
import CustosPKI
import Crypto
import Foundation

/// A signed tree head in the C2SP tlog-checkpoint body format — the origin line, the tree
/// size, the base64 root hash — with one extension line giving the time it was made:
///
///     custos.example/custody
///     1234
///     Tm9ub3RhcmVhbGhhc2guLi4uLi4uLi4uLi4uLi4uLi4=
///     time 2026-11-25T04:12:25.123Z
///
/// The text is signed as CMS SignedData (RFC 5652, detached, with the log's certificate), the
/// signature is time-stamped with RFC 3161, and witnesses co-sign the same text, so stock
/// `openssl cms -verify` and `openssl ts -verify` check each part.
public struct Checkpoint: Sendable, Equatable {
    public var origin: String
    public var size: UInt64
    public var root: SHA256Digest
    public var time: String

    public init(origin: String, size: UInt64, root: SHA256Digest, time: String) {
        self.origin = origin
        self.size = size
        self.root = root
        self.time = time
    }

    public var text: String {
        "\(origin)\n\(size)\n\(Data(root.bytes).base64EncodedString())\ntime \(time)\n"
    }

    public var bytes: [UInt8] { Array(text.utf8) }

    /// Parses the exact format above; anything else is refused.
    public init(text bytes: [UInt8]) throws {
        guard bytes.last == 0x0A, let text = String(bytes: bytes, encoding: .utf8) else {
            throw CustodyError("checkpoint is not UTF-8 text ending in a newline")
        }
        let lines = text.dropLast().split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count == 4 else { throw CustodyError("checkpoint has \(lines.count) lines, not 4") }
        guard Self.isValidOrigin(lines[0]) else { throw CustodyError("checkpoint origin is empty or has spaces") }
        guard let size = UInt64(lines[1]), String(size) == lines[1] else { throw CustodyError("checkpoint size is not a decimal number") }
        guard let rootBytes = Data(base64Encoded: lines[2]), let root = SHA256Digest(bytes: rootBytes),
              Data(rootBytes).base64EncodedString() == lines[2]
        else { throw CustodyError("checkpoint root is not a base64 SHA-256 hash") }
        guard lines[3].hasPrefix("time "), Timestamp.parse(String(lines[3].dropFirst(5))) != nil else {
            throw CustodyError("checkpoint time line is not `time <RFC 3339 UTC>`")
        }
        self.init(origin: lines[0], size: size, root: root, time: String(lines[3].dropFirst(5)))
        guard self.text == text else { throw CustodyError("checkpoint is not in canonical form") }
    }

    public static func isValidOrigin(_ s: String) -> Bool {
        !s.isEmpty && s.count <= 200 && s.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7F }
    }

    /// CMS signature by the log (or by a witness: the same operation, another identity).
    public func sign(certificate: String, key: String, chain: String = "") throws -> [UInt8] {
        try CMS.sign(bytes, certificate: certificate, key: key, chain: chain)
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
