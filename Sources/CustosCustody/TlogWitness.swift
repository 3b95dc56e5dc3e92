import Crypto
import CustosMerkle
import Foundation

/// The first three lines of a C2SP checkpoint (c2sp.org/tlog-checkpoint): origin, tree size,
/// base64 root hash; extension lines may follow and are carried, not interpreted.
public struct TlogCheckpointHead: Sendable, Equatable {
    public var origin: String
    public var size: UInt64
    public var root: SHA256Digest

    public init(origin: String, size: UInt64, root: SHA256Digest) {
        self.origin = origin
        self.size = size
        self.root = root
    }

    /// Parses a checkpoint's note text (ending in a newline).
    /// - Throws: `NoteError` when the three lines are not origin, decimal size without leading
    ///   zeros, and base64 of 32 bytes.
    public init(text: [UInt8]) throws {
        guard let s = String(validating: text, as: UTF8.self), s.hasSuffix("\n") else { throw NoteError("the checkpoint is not UTF-8 text ending in a newline") }
        let lines = s.dropLast().split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        guard lines.count >= 3, !lines[0].isEmpty else { throw NoteError("a checkpoint has an origin, a size and a root hash") }
        guard let size = UInt64(lines[1]), String(size) == lines[1] else { throw NoteError("the checkpoint's size is not a decimal number") }
        guard let raw = Data(base64Encoded: lines[2]), let root = SHA256Digest(bytes: raw) else {
            throw NoteError("the checkpoint's root is not base64 of a SHA-256 hash")
        }
        guard lines.dropFirst(3).allSatisfy({ !$0.isEmpty }) else { throw NoteError("the checkpoint has an empty extension line") }
        self.init(origin: lines[0], size: size, root: root)
    }
}

/// The body of a c2sp.org/tlog-witness `add-checkpoint` request: `old <size>\n`, up to 63
/// base64 consistency-proof hashes one per line, an empty line, the signed checkpoint.
public struct AddCheckpointRequest: Sendable, Equatable {
    public static let maximumProofLines = 63

    public var oldSize: UInt64
    /// RFC 6962 §2.1.2 consistency proof from `oldSize` to the checkpoint's size.
    public var proof: [SHA256Digest]
    /// The signed note, exactly as sent.
    public var checkpoint: [UInt8]

    public init(oldSize: UInt64, proof: [SHA256Digest], checkpoint: [UInt8]) {
        self.oldSize = oldSize
        self.proof = proof
        self.checkpoint = checkpoint
    }

    public var body: [UInt8] {
        Array(("old \(oldSize)\n" + proof.map { Data($0.bytes).base64EncodedString() + "\n" }.joined() + "\n").utf8) + checkpoint
    }

    /// - Throws: `NoteError` for a malformed body (a witness answers 400).
    public init(parsing body: [UInt8]) throws {
        var lines: [String] = []
        var start = 0
        // The header lines end at the first empty line; the rest is the checkpoint.
        while true {
            guard let nl = body[start...].firstIndex(of: 0x0A) else { throw NoteError("the request ends before the empty line that precedes the checkpoint") }
            if nl == start { start = nl + 1; break }
            guard let line = String(validating: body[start..<nl], as: UTF8.self) else { throw NoteError("the request's header is not UTF-8") }
            lines.append(line)
            guard lines.count <= 1 + Self.maximumProofLines else { throw NoteError("more than \(Self.maximumProofLines) consistency proof lines") }
            start = nl + 1
        }
        guard let first = lines.first, first.hasPrefix("old "), let old = UInt64(first.dropFirst(4)), String(old) == first.dropFirst(4) else {
            throw NoteError("the first line is not `old <size>` in decimal without leading zeros")
        }
        var proof: [SHA256Digest] = []
        for line in lines.dropFirst() {
            guard let raw = Data(base64Encoded: line), let h = SHA256Digest(bytes: raw) else { throw NoteError("a consistency proof line is not base64 of a SHA-256 hash") }
            proof.append(h)
        }
        self.init(oldSize: old, proof: proof, checkpoint: Array(body[start...]))
    }
}

/// What a witness answers when it does not cosign (c2sp.org/tlog-witness §add-checkpoint).
public enum WitnessRefusal: Error, Sendable, Equatable, CustomStringConvertible {
    /// 400: the body, the note or the checkpoint is malformed, or the old size is above the
    /// checkpoint's.
    case malformed(String)
    /// 404: no log with this origin is configured.
    case unknownLog
    /// 403: no signature verifies against the log's keys.
    case badSignature
    /// 409: the old size is not the witness's, or the same size with another root; carries the
    /// witness's size (body `<size>\n`, `Content-Type: text/x.tlog.size`).
    case conflict(UInt64)
    /// 422: the consistency proof does not verify.
    case badProof

    public var status: Int {
        switch self {
        case .malformed: 400
        case .unknownLog: 404
        case .badSignature: 403
        case .conflict: 409
        case .badProof: 422
        }
    }

    public var description: String {
        switch self {
        case .malformed(let why): "malformed: \(why)"
        case .unknownLog: "unknown log"
        case .badSignature: "no signature by the log's key verifies"
        case .conflict(let size): "the witness's latest checkpoint of this log has size \(size)"
        case .badProof: "the consistency proof does not verify"
        }
    }
}

/// A witness's record of one log: the latest checkpoint it cosigned.
public struct WitnessedLog: Codable, Sendable, Equatable {
    public var origin: String
    public var size: UInt64
    /// Base64 root hash.
    public var root: String
    /// The signed checkpoint as received.
    public var checkpoint: String

    public init(origin: String, size: UInt64, root: String, checkpoint: String) {
        self.origin = origin
        self.size = size
        self.root = root
        self.checkpoint = checkpoint
    }
}

/// The checks of an `add-checkpoint` request, in the spec's order, without I/O: the caller
/// reads the log's record, calls `judge`, and stores the new record before answering (both
/// under one lock, so two requests never roll the size back).
public struct TlogWitnessPolicy: Sendable {
    /// Origin → the log's verifier keys (type 0x01).
    public var logs: [String: [NoteVerifierKey]]

    public init(logs: [String: [NoteVerifierKey]]) { self.logs = logs }

    /// The parsed head when the request passes every check; the new record to store is
    /// `WitnessedLog(head, checkpoint)`.
    /// - Parameter current: the witness's record for this origin, nil if it never cosigned one.
    public func judge(_ request: AddCheckpointRequest, current: (UInt64, SHA256Digest)?) throws(WitnessRefusal) -> TlogCheckpointHead {
        let note: SignedNote
        let head: TlogCheckpointHead
        do {
            note = try SignedNote(parsing: request.checkpoint)
            head = try TlogCheckpointHead(text: note.text)
        } catch { throw .malformed("\(error)") }
        guard let keys = logs[head.origin] else { throw .unknownLog }
        // Unknown keys are ignored; a known key's signature that fails rejects the note
        // (signed-note §Signatures), and at least one must verify.
        var verified = false
        for key in keys {
            do { verified = try !note.verified(by: key).isEmpty || verified } catch { throw .badSignature }
        }
        guard verified else { throw .badSignature }
        guard request.oldSize <= head.size else { throw .malformed("old size \(request.oldSize) is above the checkpoint's size \(head.size)") }
        let empty = SHA256Digest(bytes: MerkleTree.emptyRoot)!
        if head.size == 0, head.root != empty { throw .malformed("a checkpoint of size 0 has the empty tree's root") }
        let (size, root) = current ?? (0, empty)
        guard request.oldSize == size else { throw .conflict(size) }
        if request.oldSize == head.size {
            // The same size again: an empty proof, and the same root.
            guard request.proof.isEmpty else { throw .badProof }
            guard root == head.root else { throw .conflict(size) }
        } else if request.oldSize == 0 {
            guard request.proof.isEmpty else { throw .badProof }
        } else {
            do {
                try MerkleProof.verifyConsistency(oldSize: request.oldSize, newSize: head.size, oldRoot: root, newRoot: head.root, proof: request.proof)
            } catch { throw .badProof }
        }
        return head
    }
}
