import Foundation

/// The custody log over HTTP (`/v1/custody/…`). Hashes and DER are base64; entries are the
/// exact canonical JSON the log hashed.
extension API {
    public struct CosignatureView: Codable, Sendable, Equatable {
        public var witness: String
        /// CMS SignedData over the checkpoint text, DER, base64.
        public var signature: String
        public var at: String

        public init(witness: String, signature: String, at: String) {
            self.witness = witness
            self.signature = signature
            self.at = at
        }
    }

    public struct CheckpointView: Codable, Sendable, Equatable {
        public var origin: String
        public var size: UInt64
        public var root: String
        /// When it was made (RFC 3339 UTC): the legacy `time` line of older checkpoints, else the
        /// time the log stored it; the RFC 3161 token in `timeStamp` proves it independently.
        public var time: String
        /// The signed text: a C2SP tlog-checkpoint body (three lines; four with a legacy `time` line).
        public var text: String
        /// CMS SignedData over `text` by the log's certificate, DER, base64.
        public var signature: String
        /// RFC 3161 TimeStampResp over the SHA-256 of the signature, DER, base64.
        public var timeStamp: String
        public var cosignatures: [CosignatureView]
        /// The C2SP signed note (c2sp.org/signed-note): `text`, a blank line, the log's Ed25519
        /// signature line, and the tlog-cosignature lines of C2SP witnesses. Absent for
        /// checkpoints made before the log had a note key.
        public var note: String?

        public init(origin: String, size: UInt64, root: String, time: String, text: String, signature: String, timeStamp: String,
                    cosignatures: [CosignatureView], note: String? = nil) {
            self.origin = origin
            self.size = size
            self.root = root
            self.time = time
            self.text = text
            self.signature = signature
            self.timeStamp = timeStamp
            self.cosignatures = cosignatures
            self.note = note
        }
    }

    public struct CustodyEventView: Codable, Sendable, Equatable {
        public var index: UInt64
        public var entry: String

        public init(index: UInt64, entry: String) {
            self.index = index
            self.entry = entry
        }
    }

    public struct CustodyEventList: Codable, Sendable {
        public var events: [CustodyEventView]
        public init(events: [CustodyEventView]) { self.events = events }
    }

    /// RFC 9162 §2.1.3: the audit path of one event into the tree of `size`.
    public struct InclusionProofView: Codable, Sendable {
        public var index: UInt64
        public var size: UInt64
        public var entry: String
        public var proof: [String]
        public var checkpoint: CheckpointView

        public init(index: UInt64, size: UInt64, entry: String, proof: [String], checkpoint: CheckpointView) {
            self.index = index
            self.size = size
            self.entry = entry
            self.proof = proof
            self.checkpoint = checkpoint
        }
    }

    /// RFC 9162 §2.1.4: the proof that the tree of `from` is a prefix of the tree of `to`.
    public struct ConsistencyProofView: Codable, Sendable {
        public var from: UInt64
        public var to: UInt64
        public var proof: [String]

        public init(from: UInt64, to: UInt64, proof: [String]) {
            self.from = from
            self.to = to
            self.proof = proof
        }
    }

    public struct Cosign: Codable, Sendable {
        /// CMS SignedData over the checkpoint text by the witness's registered certificate, DER, base64.
        public var signature: String
        public init(signature: String) { self.signature = signature }
    }

    public struct Seal: Codable, Sendable {
        /// Why; stored in the timeline, hashed into the custody log.
        public var reason: String
        public init(reason: String) { self.reason = reason }
    }
}
