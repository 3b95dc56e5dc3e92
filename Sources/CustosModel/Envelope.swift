import CustosCanonicalJSON
import Foundation

/// Kinds of message on the Kafka contract (DESIGN.md, "Kafka contract").
public enum MessageType: String, Codable, Sendable, CaseIterable {
    // broker → provider, on custos.to.<provider> (emergencies on custos.to.<provider>.urgent)
    case request
    case receipt
    /// An emergency request was revoked or not confirmed in time: stop, and send nothing more.
    case revocation
    /// The investigator's answer to a provider's question about a request.
    case clarification
    /// A preservation order's freeze is extended (once, by 30 days by default).
    case preservationExtension = "preservation-extension"
    /// A preservation order ended: released by the investigator, or its clock ran out.
    case preservationRelease = "preservation-release"
    /// The broker asks for chunks of a package it lacks (its manifest is in; package SPEC §7).
    case resend
    // provider → broker, on custos.from.<provider>
    case ack
    case status
    case refusal
    case manifest
    /// One part of a manifest too large for one Kafka message (its bytes are the value).
    case manifestPart = "manifest-part"
    case chunk
    /// The provider asks the investigator a question about the request (its clocks pause).
    case clarificationRequest = "clarification-request"
    /// The provider confirms a preservation order: the data is frozen until `until`.
    case preserved

    public var direction: Direction {
        switch self {
        case .request, .receipt, .revocation, .clarification, .preservationExtension, .preservationRelease, .resend: return .toProvider
        case .ack, .status, .refusal, .manifest, .manifestPart, .chunk, .clarificationRequest, .preserved: return .fromProvider
        }
    }

    public enum Direction: Sendable { case toProvider, fromProvider }
}

public enum Topics {
    public static func toProvider(_ providerId: String) -> String { "custos.to.\(providerId)" }
    public static func toProviderUrgent(_ providerId: String) -> String { "custos.to.\(providerId).urgent" }
    public static func fromProvider(_ providerId: String) -> String { "custos.from.\(providerId)" }
    /// The urgent return lane: every message a provider sends about an emergency request (ack,
    /// status, chunks, manifest, questions). The broker consumes it apart, with workers of its
    /// own, so that no bulk delivery delays an emergency's.
    public static func fromProviderUrgent(_ providerId: String) -> String { "custos.from.\(providerId).urgent" }
    /// Where a provider sends a message about a request: the urgent return lane for an emergency.
    public static func fromProvider(_ providerId: String, urgent: Bool) -> String { urgent ? fromProviderUrgent(providerId) : fromProvider(providerId) }
    /// The provider whose messages `topic` carries (`custos.from.<provider>` or
    /// `custos.from.<provider>.urgent`; provider ids hold no dot), or nil for another topic.
    public static func provider(fromTopic topic: String) -> String? {
        guard topic.hasPrefix("custos.from.") else { return nil }
        var name = topic.dropFirst("custos.from.".count)
        if name.hasSuffix(".urgent") { name = name.dropLast(".urgent".count) }
        return name.isEmpty || name.contains(".") ? nil : String(name)
    }

    /// Every topic of one provider, both ways.
    public static func all(_ providerId: String) -> [String] {
        [toProvider(providerId), toProviderUrgent(providerId), fromProvider(providerId), fromProviderUrgent(providerId)]
    }

    /// Kafka header that carries the envelope of a binary chunk message.
    public static let envelopeHeader = "custos-envelope"
    /// Largest chunk payload: with headers it stays below Kafka's default 1 MiB message limit.
    public static let maximumChunkBytes = 512 * 1024
    /// A manifest message larger than this (Kafka's default limit is 1 MB) goes in parts of
    /// `maximumChunkBytes` (`manifest-part`).
    public static let maximumManifestMessageBytes = 900 * 1024
    /// At most this many parts: a body of up to 512 MiB (a million chunks).
    public static let maximumManifestParts = 1024
}

/// A detached signature over the canonical JSON of an envelope without its `signature` member.
public struct MessageSignature: Codable, Sendable, Hashable {
    /// `ES256` (ECDSA P-256 with SHA-256, raw r‖s) or `PS256` (RSASSA-PSS with SHA-256), base64.
    public var alg: String
    /// SHA-256 of the signer's SubjectPublicKeyInfo (DER), hex.
    public var keyId: String
    public var value: String

    public init(alg: String, keyId: String, value: String) {
        self.alg = alg
        self.keyId = keyId
        self.value = value
    }
}

/// Every message on the Kafka contract is one of these. The schema lives in
/// `schemas/messages/envelope.json`.
public struct Envelope<Body: Codable & Sendable>: Codable, Sendable {
    public static var currentVersion: Int { 1 }

    public var version: Int
    public var type: MessageType
    public var id: UUID
    public var requestId: UUID
    public var sender: String
    public var sentAt: String
    public var body: Body
    public var signature: MessageSignature?

    public init(type: MessageType, id: UUID, requestId: UUID, sender: String, sentAt: String = Timestamp.now(), body: Body) {
        self.version = Self.currentVersion
        self.type = type
        self.id = id
        self.requestId = requestId
        self.sender = sender
        self.sentAt = sentAt
        self.body = body
        self.signature = nil
    }

    /// The bytes a signature covers: the canonical envelope without `signature`.
    public func signedBytes() throws -> [UInt8] {
        var unsigned = self
        unsigned.signature = nil
        return try CanonicalJSON.encode(unsigned)
    }
}

/// The fields every envelope has, read before the body's type is known.
public struct EnvelopeHeader: Codable, Sendable {
    public var version: Int
    public var type: MessageType
    public var id: UUID
    public var requestId: UUID
    public var sender: String
    public var sentAt: String
}

// MARK: - Bodies

public struct RequestBody: Codable, Sendable, Hashable {
    public var request: ApprovedRequest
    public var requestHash: String
    /// The delivery clock's deadline when the request was approved (none for a preservation
    /// order); a clarification's wait moves it (`ClarificationBody.deliverBy`). For the
    /// provider's own planning and its judgement of sống before it sends.
    public var deliverBy: String?

    public init(request: ApprovedRequest, requestHash: String, deliverBy: String? = nil) {
        self.request = request
        self.requestHash = requestHash
        self.deliverBy = deliverBy
    }
}

/// The broker's signed answer on `custos.to.<provider>` (schema `messages/receipt.json`), of
/// one of two kinds:
/// - a **package receipt**, once a package is complete and judged: `packageId` and
///   `manifestSha256`, `accepted` or `rejected` with every reason;
/// - a **message receipt**, for an authenticated provider message the broker could not apply
///   (SPEC §7): `messageId` and `messageType`, always `rejected`, with the reason.
/// Ids are echoed exactly as the provider wrote them, whatever their case.
public struct ReceiptBody: Codable, Sendable, Hashable {
    public enum Outcome: String, Codable, Sendable { case accepted, rejected }
    /// The package, as its manifest spells its id (package receipts).
    public var packageId: String?
    /// SHA-256 of the manifest's bytes as signed, lower-case hex (package receipts).
    public var manifestSha256: String?
    /// The message not applied, its envelope `id` as sent (message receipts).
    public var messageId: String?
    /// That message's `type` (message receipts).
    public var messageType: String?
    public var outcome: Outcome
    /// Why, for `rejected`: failure codes with their detail (package), or the reason the message
    /// could not be applied. Never quotes the message's content.
    public var reasons: [String]
    public var receivedAt: String

    /// A package receipt.
    public init(packageId: String, outcome: Outcome, manifestSha256: String, reasons: [String], receivedAt: String) {
        self.packageId = packageId
        self.manifestSha256 = manifestSha256
        self.outcome = outcome
        self.reasons = reasons
        self.receivedAt = receivedAt
    }

    /// A message receipt: `message` could not be applied, for `reason`.
    public init(rejectedMessageId: String, messageType: String, reason: String, receivedAt: String) {
        self.messageId = rejectedMessageId
        self.messageType = messageType
        self.outcome = .rejected
        self.reasons = [reason]
        self.receivedAt = receivedAt
    }
}

/// The broker's signed request for chunks it lacks (schema `messages/resend.json`, package
/// SPEC §7, "Gaps"): the package's manifest is in, but chunks it lists have not arrived within
/// the broker's wait — Kafka acknowledged them to the connector and then lost them. The
/// connector sends exactly those chunks again, the same bytes under the same message ids.
public struct ResendBody: Codable, Sendable, Hashable {
    /// The package, as its signed manifest spells its id.
    public var packageId: String
    /// SHA-256 of the manifest's bytes as signed: the package whose chunks are meant.
    public var manifestSha256: String
    /// The missing chunk indices, ascending, at most `maximumIndices` (a longer gap is asked
    /// for again once these are in).
    public var indices: [Int]
    /// 1 for the first request for this package, then 2, 3…
    public var attempt: Int

    public static let maximumIndices = 10_000

    public init(packageId: String, manifestSha256: String, indices: [Int], attempt: Int) {
        self.packageId = packageId
        self.manifestSha256 = manifestSha256
        self.indices = indices
        self.attempt = attempt
    }
}

public struct RevocationBody: Codable, Sendable, Hashable {
    public enum Reason: String, Codable, Sendable {
        /// A reviewer revoked the emergency.
        case revoked
        /// Nobody confirmed the emergency inside its review clock.
        case lapsed
    }
    public var requestHash: String
    public var reason: Reason
    public var decidedAt: String

    public init(requestHash: String, reason: Reason, decidedAt: String) {
        self.requestHash = requestHash
        self.reason = reason
        self.decidedAt = decidedAt
    }
}

public struct ClarificationRequestBody: Codable, Sendable, Hashable {
    /// What the provider needs to know. Free text: it may name targets, so it is never logged.
    public var question: String
    public init(question: String) { self.question = question }
    public static let maximumLength = 4_000
}

public struct ClarificationBody: Codable, Sendable, Hashable {
    /// The id of the provider's `clarification-request` message this answers.
    public var questionId: UUID
    public var answer: String
    /// The delivery deadline once the clocks run again (moved by the time waited), when this
    /// answer closed the last open question of a request that has one.
    public var deliverBy: String?
    public init(questionId: UUID, answer: String, deliverBy: String? = nil) {
        self.questionId = questionId
        self.answer = answer
        self.deliverBy = deliverBy
    }
}

/// A preservation order's term: in `preservation-extension` (broker → provider) the order now
/// runs until `until`; in `preserved` (provider → broker) the data is frozen until `until`.
public struct PreservationTermBody: Codable, Sendable, Hashable {
    public var requestHash: String
    public var until: String
    public init(requestHash: String, until: String) {
        self.requestHash = requestHash
        self.until = until
    }
}

/// broker → provider: the preservation order ended; the frozen data may be let go.
public struct PreservationReleaseBody: Codable, Sendable, Hashable {
    public enum Reason: String, Codable, Sendable {
        /// The investigator released it.
        case released
        /// Its clock ran out.
        case expired
    }
    public var requestHash: String
    public var reason: Reason
    public var decidedAt: String
    public init(requestHash: String, reason: Reason, decidedAt: String) {
        self.requestHash = requestHash
        self.reason = reason
        self.decidedAt = decidedAt
    }
}


public struct AckBody: Codable, Sendable, Hashable {
    public var requestHash: String
    public init(requestHash: String) { self.requestHash = requestHash }
}

public struct StatusBody: Codable, Sendable, Hashable {
    public enum Phase: String, Codable, Sendable { case extracting, packaging, streaming }
    public var phase: Phase
    public var percent: Int
    public init(phase: Phase, percent: Int) {
        self.phase = phase
        self.percent = percent
    }
}

public struct RefusalBody: Codable, Sendable, Hashable {
    public enum Reason: String, Codable, Sendable {
        case notOurCustomer = "not-our-customer"
        case dataNotRetained = "data-not-retained"
        case legallyImpossible = "legally-impossible"
        case needsClarification = "needs-clarification"
        case invalidRequest = "invalid-request"
        case extractionFailed = "extraction-failed"
        /// The request's `requestHash` is not the SHA-256 of its canonical `request` member
        /// (SPEC §2): the provider cannot know what was approved, so it does nothing.
        case requestHashMismatch = "request-hash-mismatch"
    }
    public var reason: Reason
    public var detail: String
    public init(reason: Reason, detail: String) {
        self.reason = reason
        self.detail = detail
    }
}

public struct ManifestBody: Codable, Sendable, Hashable {
    public var manifest: Manifest
    /// CMS SignedData (RFC 5652), detached, over the manifest's canonical JSON, carrying the
    /// provider's certificate chain: DER, base64.
    public var signature: String
    /// RFC 3161 TimeStampResp over the SHA-256 of the signature's DER bytes: DER, base64.
    public var timeStamp: String

    public init(manifest: Manifest, signature: String, timeStamp: String) {
        self.manifest = manifest
        self.signature = signature
        self.timeStamp = timeStamp
    }
}

/// One chunk of a package's content (package protocol v2, `schemas/package/SPEC.md` §7): the
/// chunk's bytes are the Kafka value; this body travels in the `custos-envelope` header.
/// Chunks go out while the extraction runs, before the manifest, which comes last.
public struct ChunkBody: Codable, Sendable, Hashable {
    /// Where a result's bytes begin in this chunk.
    public struct ResultStart: Codable, Sendable, Hashable {
        /// The result's index in the manifest's `results` (SPEC §3: target by target, category
        /// by category as in the request).
        public var result: Int
        /// The byte offset in this chunk at which the result's bytes (or their continuation
        /// from the previous chunk, for the first entry) begin.
        public var offset: Int

        public init(result: Int, offset: Int) {
            self.result = result
            self.offset = offset
        }
    }

    public var packageId: UUID
    /// 0, 1, 2... in content order.
    public var index: Int
    /// Bytes, 1 to 524,288 (`Topics.maximumChunkBytes`).
    public var size: Int
    /// SHA-256 of the chunk's bytes, 64 lower-case hex digits.
    public var sha256: String
    /// The results whose bytes this chunk holds, in content order: the first at offset 0 (the
    /// result the chunk begins in, which may continue from the previous chunk), then each that
    /// begins in this chunk. Offsets and result indices strictly increase; results without
    /// records appear in no chunk. The broker builds each result's records Merkle tree from
    /// these as the chunks arrive; the manifest confirms them at the end.
    public var results: [ResultStart]

    public init(packageId: UUID, index: Int, size: Int, sha256: String, results: [ResultStart]) {
        self.packageId = packageId
        self.index = index
        self.size = size
        self.sha256 = sha256
        self.results = results
    }

    /// Whether `results` is well formed for this chunk (SPEC §7): non-empty, the first at
    /// offset 0, offsets inside the chunk, offsets and result indices strictly increasing.
    public var resultsAreWellFormed: Bool {
        guard let first = results.first, first.offset == 0, first.result >= 0, results.count <= size else { return false }
        return zip(results, results.dropFirst()).allSatisfy { a, b in b.offset > a.offset && b.offset < size && b.result > a.result }
    }
}

/// A manifest message's body (`ManifestBody`, RFC 8785 canonical JSON) too large for one
/// Kafka message travels in parts, in order, after the package's chunks: part `index` of
/// `count` is the Kafka value, `size` bytes with SHA-256 `sha256`; `bodySha256` is the SHA-256
/// of the whole body. The broker applies the manifest once every part is in.
public struct ManifestPartBody: Codable, Sendable, Hashable {
    public var packageId: UUID
    public var index: Int
    public var count: Int
    public var size: Int
    public var sha256: String
    public var bodySha256: String

    public init(packageId: UUID, index: Int, count: Int, size: Int, sha256: String, bodySha256: String) {
        self.packageId = packageId
        self.index = index
        self.count = count
        self.size = size
        self.sha256 = sha256
        self.bodySha256 = bodySha256
    }
}

extension UUID {
    /// A name-based UUID (version 8, RFC 9562 §5.8) from SHA-256, for message ids that must be
    /// the same when a message is sent again after a crash.
    public static func derived(_ parts: String...) -> UUID {
        var bytes = Array(Digest.sha256Bytes(Array(parts.joined(separator: "\u{1F}").utf8)).prefix(16))
        bytes[6] = (bytes[6] & 0x0F) | 0x80
        bytes[8] = (bytes[8] & 0x3F) | 0x80
        return UUID(uuid: (bytes[0], bytes[1], bytes[2], bytes[3], bytes[4], bytes[5], bytes[6], bytes[7],
                           bytes[8], bytes[9], bytes[10], bytes[11], bytes[12], bytes[13], bytes[14], bytes[15]))
    }

    /// Lower-case text form, as on the wire.
    public var lowercased: String { uuidString.lowercased() }
}
