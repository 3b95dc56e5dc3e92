import Crypto
import Foundation

/// A C2SP signed note (c2sp.org/signed-note v1.0.0): a UTF-8 text ending in a newline, a blank
/// line, then one or more signature lines `— <key name> base64(key ID ‖ signature)`.
///
/// The text is kept exactly as received; signatures are checked over those bytes. Parsing
/// refuses anything the spec forbids: control characters other than newline, a missing blank
/// line, a malformed signature line, more than `maximumSignatures` lines.
public struct SignedNote: Sendable, Equatable {
    /// Verifiers must accept at least 16 signatures (§Format); this is the limit here.
    public static let maximumSignatures = 100
    /// Notes larger than this are refused before parsing (a checkpoint with a hundred
    /// post-quantum signatures stays well below it).
    public static let maximumBytes = 1 << 20

    /// The note text, including its final newline (not the separating blank line).
    public var text: [UInt8]
    public var signatures: [NoteSignature]

    public init(text: [UInt8], signatures: [NoteSignature]) {
        self.text = text
        self.signatures = signatures
    }

    /// The note's bytes: text, blank line, signature lines.
    public var bytes: [UInt8] {
        text + [0x0A] + signatures.flatMap { Array($0.line.utf8) }
    }

    /// Parses a signed note; the text is separated from the signatures by the last empty line.
    /// - Throws: `NoteError` naming what is malformed.
    public init(parsing bytes: [UInt8]) throws {
        guard bytes.count <= Self.maximumBytes else { throw NoteError("the note is larger than \(Self.maximumBytes) bytes") }
        guard String(validating: bytes, as: UTF8.self) != nil else { throw NoteError("the note is not UTF-8") }
        guard !bytes.contains(where: { $0 < 0x20 && $0 != 0x0A }) else { throw NoteError("the note holds a control character") }
        guard bytes.last == 0x0A else { throw NoteError("the note does not end in a newline") }
        // The last "\n\n": the text ends at its first newline.
        var split: Int?
        var i = bytes.count - 2
        while i >= 0 {
            if bytes[i] == 0x0A && bytes[i + 1] == 0x0A { split = i; break }
            i -= 1
        }
        guard let split else { throw NoteError("the note has no blank line before its signatures") }
        let text = Array(bytes[...split])
        var signatures: [NoteSignature] = []
        var start = split + 2
        while start < bytes.count {
            let end = bytes[start...].firstIndex(of: 0x0A)!
            signatures.append(try NoteSignature(line: Array(bytes[start...end])))
            guard signatures.count <= Self.maximumSignatures else { throw NoteError("the note has more than \(Self.maximumSignatures) signatures") }
            start = end + 1
        }
        guard !signatures.isEmpty else { throw NoteError("the note has no signature") }
        self.init(text: text, signatures: signatures)
    }

    /// The signatures made by `key` (same name and key ID) that verify over the text. A
    /// signature by a known key that fails is an error (the spec says clients SHOULD reject
    /// the whole note); signatures by other keys are ignored.
    /// - Throws: `NoteError` when a signature by `key` does not verify.
    public func verified(by key: NoteVerifierKey) throws -> [NoteSignature] {
        var good: [NoteSignature] = []
        // Names compare as bytes, as the reference implementation does (not by Unicode equivalence).
        for s in signatures where Array(s.name.utf8) == Array(key.name.utf8) && s.keyID == key.keyID {
            guard key.verify(s, over: text) else { throw NoteError("the signature by \(key.name) does not verify") }
            good.append(s)
        }
        return good
    }
}

/// One signature line of a signed note: `— <name> base64(key ID ‖ signature)\n`.
public struct NoteSignature: Sendable, Equatable {
    public var name: String
    /// The uint32 key ID (big-endian in the line).
    public var keyID: UInt32
    /// The bytes after the key ID (for Ed25519, the 64-byte signature; for a cosignature, the
    /// 8-byte timestamp and the signature).
    public var signature: [UInt8]

    public init(name: String, keyID: UInt32, signature: [UInt8]) {
        self.name = name
        self.keyID = keyID
        self.signature = signature
    }

    /// The line, with its newline.
    public var line: String {
        "— \(name) \(Data(NoteKeys.bigEndian(keyID) + signature).base64EncodedString())\n"
    }

    /// Parses one line (with its newline).
    /// - Throws: `NoteError` when it is not `— name base64\n` with at least a key ID.
    public init(line bytes: [UInt8]) throws {
        guard let line = String(validating: bytes, as: UTF8.self), line.hasPrefix("— "), line.hasSuffix("\n") else {
            throw NoteError("a signature line does not start with an em dash and a space")
        }
        let fields = line.dropFirst(2).dropLast().split(separator: " ", omittingEmptySubsequences: false)
        guard fields.count == 2, NoteKeys.isValidName(String(fields[0])) else { throw NoteError("a signature line is not `— <name> <base64>`") }
        guard let blob = Data(base64Encoded: String(fields[1])), blob.count >= 5 else {
            throw NoteError("a signature line's signature is not base64 of a key ID and a signature")
        }
        let b = Array(blob)
        self.init(name: String(fields[0]), keyID: NoteKeys.uint32(b[0..<4]), signature: Array(b[4...]))
    }
}

/// Why a note, key or witness message was refused.
public struct NoteError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Signature types of c2sp.org/signed-note §Signature types.
public enum NoteSignatureType: UInt8, Sendable {
    /// Ed25519 over the note text.
    case ed25519 = 0x01
    /// A timestamped Ed25519 witness cosignature (c2sp.org/tlog-cosignature).
    case cosignatureV1 = 0x04
}

/// A verifier key, in the `vkey` encoding `<name>+<hex key ID>+<base64(type ‖ public key)>`
/// (c2sp.org/signed-note §Verifier keys), for Ed25519 (0x01) and Ed25519 cosignatures (0x04).
public struct NoteVerifierKey: Sendable, Equatable {
    public var name: String
    public var type: NoteSignatureType
    public var publicKey: Curve25519.Signing.PublicKey
    public var keyID: UInt32 { NoteKeys.keyID(name: name, type: type, publicKey: publicKey.rawRepresentation) }

    public init(name: String, type: NoteSignatureType, publicKey: Curve25519.Signing.PublicKey) {
        self.name = name
        self.type = type
        self.publicKey = publicKey
    }

    /// Parses a vkey; its key ID must be the one its name, type and key give.
    /// - Throws: `NoteError` on any other spelling.
    public init(vkey: String) throws {
        // The base64 key may itself hold `+`.
        let parts = vkey.split(separator: "+", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 3, NoteKeys.isValidName(parts[0]), parts[1].count == 8, let id = UInt32(parts[1], radix: 16),
              let blob = Data(base64Encoded: parts[2]), blob.count == 33, let type = NoteSignatureType(rawValue: blob[blob.startIndex]),
              let key = try? Curve25519.Signing.PublicKey(rawRepresentation: blob.dropFirst())
        else { throw NoteError("not a verifier key `name+hexid+base64(type‖Ed25519 key)`") }
        self.init(name: parts[0], type: type, publicKey: key)
        guard keyID == id else { throw NoteError("the verifier key's id does not match its name and key") }
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.name == b.name && a.type == b.type && a.publicKey.rawRepresentation == b.publicKey.rawRepresentation
    }

    /// The vkey encoding.
    public var vkey: String {
        "\(name)+\(NoteKeys.hex(keyID))+\(Data([type.rawValue] + publicKey.rawRepresentation).base64EncodedString())"
    }

    /// Checks an Ed25519 (0x01) note signature over `text`, or a cosignature (0x04, whose
    /// signed message is built from `text` as tlog-cosignature §Ed25519 signed message says).
    public func verify(_ s: NoteSignature, over text: [UInt8]) -> Bool {
        switch type {
        case .ed25519:
            return s.signature.count == 64 && publicKey.isValidSignature(s.signature, for: text)
        case .cosignatureV1:
            guard s.signature.count == 72 else { return false }
            let time = NoteKeys.uint64(s.signature[0..<8])
            guard time <= UInt64(Int64.max) else { return false }
            return publicKey.isValidSignature(Array(s.signature[8...]), for: TlogCosignature.message(time: time, checkpoint: text))
        }
    }
}

/// A signer: Ed25519 private key with its name, in the Go `note` private-key encoding
/// `PRIVATE+KEY+<name>+<hex key ID>+<base64(type ‖ 32-byte seed)>`.
public struct NoteSigner: Sendable {
    public var name: String
    public var type: NoteSignatureType
    public var privateKey: Curve25519.Signing.PrivateKey

    public init(name: String, type: NoteSignatureType, privateKey: Curve25519.Signing.PrivateKey) {
        self.name = name
        self.type = type
        self.privateKey = privateKey
    }

    /// A new random key.
    public static func generate(name: String, type: NoteSignatureType) throws -> NoteSigner {
        guard NoteKeys.isValidName(name) else { throw NoteError("a key name must be non-empty, without spaces or +") }
        return NoteSigner(name: name, type: type, privateKey: Curve25519.Signing.PrivateKey())
    }

    /// - Throws: `NoteError` when it is not that encoding or its key ID is wrong.
    public init(skey: String) throws {
        let trimmed = skey.trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = trimmed.split(separator: "+", maxSplits: 4, omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 5, parts[0] == "PRIVATE", parts[1] == "KEY", NoteKeys.isValidName(parts[2]), parts[3].count == 8,
              let id = UInt32(parts[3], radix: 16), let blob = Data(base64Encoded: parts[4]), blob.count == 33,
              let type = NoteSignatureType(rawValue: blob[blob.startIndex]),
              let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: blob.dropFirst())
        else { throw NoteError("not a private key `PRIVATE+KEY+name+hexid+base64(type‖seed)`") }
        self.init(name: parts[2], type: type, privateKey: key)
        guard verifier.keyID == id else { throw NoteError("the private key's id does not match its name and key") }
    }

    public var skey: String {
        "PRIVATE+KEY+\(name)+\(NoteKeys.hex(verifier.keyID))+\(Data([type.rawValue] + privateKey.rawRepresentation).base64EncodedString())"
    }

    public var verifier: NoteVerifierKey { NoteVerifierKey(name: name, type: type, publicKey: privateKey.publicKey) }

    /// Writes `skey` and a newline to a new file of mode 0600.
    /// - Throws: `NoteError` when the file exists (a key is never overwritten) or cannot be written.
    public func writeNewKeyFile(_ path: String) throws {
        guard !FileManager.default.fileExists(atPath: path) else { throw NoteError("\(path) exists; a key is never overwritten") }
        guard FileManager.default.createFile(atPath: path, contents: Data((skey + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw NoteError("cannot write \(path)")
        }
    }

    /// An Ed25519 (0x01) signature over the note text (RFC 8032, deterministic).
    public func sign(_ text: [UInt8]) throws -> NoteSignature {
        guard type == .ed25519 else { throw NoteError("a cosigner key signs with TlogCosignature.sign") }
        return NoteSignature(name: name, keyID: verifier.keyID, signature: Array(try privateKey.signature(for: text)))
    }
}

/// c2sp.org/tlog-cosignature, the Ed25519 type (0x04): a witness's timestamped statement that
/// the checkpoint is the largest consistent one it has seen for that log.
public enum TlogCosignature {
    /// `cosignature/v1\ntime <t>\n` then the checkpoint's note text.
    public static func message(time: UInt64, checkpoint text: [UInt8]) -> [UInt8] {
        Array("cosignature/v1\ntime \(time)\n".utf8) + text
    }

    /// The signature line's blob after the key ID: the 8-byte big-endian timestamp and the
    /// 64-byte Ed25519 signature.
    /// - Parameter time: POSIX seconds.
    public static func sign(checkpoint text: [UInt8], time: UInt64, by signer: NoteSigner) throws -> NoteSignature {
        guard signer.type == .cosignatureV1 else { throw NoteError("a cosignature needs a key of type 0x04") }
        guard time <= UInt64(Int64.max) else { throw NoteError("a cosignature's time must be below 2^63") }
        let sig = try signer.privateKey.signature(for: message(time: time, checkpoint: text))
        return NoteSignature(name: signer.name, keyID: signer.verifier.keyID, signature: NoteKeys.bigEndian(time) + Array(sig))
    }

    /// The POSIX time a cosignature line states (not checked; see `NoteVerifierKey.verify`).
    public static func time(of s: NoteSignature) -> UInt64? {
        s.signature.count == 72 ? NoteKeys.uint64(s.signature[0..<8]) : nil
    }
}

/// Key IDs and the small encodings the note formats share.
public enum NoteKeys {
    /// `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]` (signed-note §Signatures).
    public static func keyID(name: String, type: NoteSignatureType, publicKey: some DataProtocol) -> UInt32 {
        var h = SHA256()
        h.update(data: Array(name.utf8) + [0x0A, type.rawValue])
        h.update(data: publicKey)
        return uint32(Array(h.finalize()).prefix(4))
    }

    /// Non-empty, no Unicode space, no `+`.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && !name.unicodeScalars.contains { $0.properties.isWhitespace || $0 == "+" || $0.value < 0x20 }
    }

    static func hex(_ v: UInt32) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 8 - s.count) + s
    }

    static func bigEndian(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (24 - 8 * $0)) } }
    static func bigEndian(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * UInt64($0))) } }
    static func uint32(_ b: some Collection<UInt8>) -> UInt32 { b.reduce(0) { $0 << 8 | UInt32($1) } }
    static func uint64(_ b: some Collection<UInt8>) -> UInt64 { b.reduce(0) { $0 << 8 | UInt64($1) } }
}
