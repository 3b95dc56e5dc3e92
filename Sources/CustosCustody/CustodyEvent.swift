import CustosCanonicalJSON
import CustosMerkle
import Crypto
import Foundation

/// One entry of the custody log: who did what to which request or package, when, from which
/// client, and the hashes of the objects concerned. Never payload, never a target identifier,
/// never free text a person typed (that is referred to by its hash). The log's leaf is the
/// event's RFC 8785 canonical JSON, so anyone can recompute its hash from the event alone.
public struct CustodyEvent: Codable, Sendable, Equatable {
    public static let version = 1

    /// What happened, as `<object>.<verb>`. An open set: a verifier reads kinds it does not know.
    public struct Kind: RawRepresentable, Codable, Hashable, Sendable, CustomStringConvertible {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public init(_ raw: String) { rawValue = raw }
        public init(from decoder: any Decoder) throws { rawValue = try decoder.singleValueContainer().decode(String.self) }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.singleValueContainer()
            try c.encode(rawValue)
        }
        public var description: String { rawValue }

        /// A request entering `state`: request.drafted, .submitted, .approved, .rejected,
        /// .withdrawn, .dispatched, .acknowledged, .in-progress, .refused, .delivered, .verified.
        public static func request(_ state: String) -> Kind { Kind("request.\(state == "draft" ? "drafted" : state)") }
        public static let caseCreated = Kind("case.created")
        /// An investigator shared a case with a colleague (`details.member`: the colleague's user name).
        public static let caseMemberAdded = Kind("case.member-added")
        public static let requestViewed = Kind("request.viewed")
        /// A request message sent again, same id and bytes, for want of the provider's `ack`
        /// (`details.attempt`, `details.messageId`).
        public static let requestResent = Kind("request.resent")
        /// The broker asked the provider for chunks of a package it lacks, with a signed
        /// `resend` message (`details.attempt`, `details.missing`: how many, `details.messageId`).
        public static let chunksRequested = Kind("package.chunks-requested")
        /// A package's receipt sent again, same id and bytes, because its provider sent the
        /// manifest again (it had not got the receipt) (`details.messageId`).
        public static let receiptResent = Kind("package.receipt-resent")
        public static let manifestReceived = Kind("package.manifest-received")
        public static let chunkReceived = Kind("package.chunk-received")
        public static let packageCompleted = Kind("package.completed")
        public static let verdict = Kind("package.verdict")
        /// The four criteria's verdict (đúng, đủ, sạch, sống) on a package.
        public static let criteria = Kind("package.criteria")
        public static let packageViewed = Kind("package.viewed")
        public static let packageDownloaded = Kind("package.downloaded")
        public static let packageExported = Kind("package.exported")
        public static let packageSealed = Kind("package.sealed")
        public static let packageUnsealed = Kind("package.unsealed")
        public static let clockLate = Kind("clock.late")
        public static let clockEscalated = Kind("clock.escalated")
        public static let clockExpired = Kind("clock.expired")
        public static let userAdded = Kind("admin.user-added")
        public static let userRoleChanged = Kind("admin.user-role-changed")
        public static let providerRegistered = Kind("admin.provider-registered")
        public static let witnessRegistered = Kind("admin.witness-registered")
        public static let agencyAdded = Kind("admin.agency-added")
        public static let keyChanged = Kind("admin.key-changed")
        public static let userCertificateAdded = Kind("admin.user-certificate-added")
        /// A user was given a portal password and TOTP secret (`custos-broker users enrol`).
        public static let userEnrolled = Kind("admin.user-enrolled")
        /// Portal sign-in (`details.via`: password or certificate), sign-out, and a lock-out after
        /// failed sign-ins.
        public static let userSignedIn = Kind("user.signed-in")
        public static let userSignedOut = Kind("user.signed-out")
        public static let userLockedOut = Kind("user.locked-out")
        public static let documentUploaded = Kind("document.uploaded")
        public static let documentViewed = Kind("document.viewed")
    }

    public struct Actor: Codable, Sendable, Equatable {
        public enum Kind: String, Codable, Sendable { case user, provider, broker, admin, witness }
        public var type: Kind
        /// User name, provider id, witness name; for `admin`, the operating-system account.
        public var id: String
        /// For people: the client's address and user agent.
        public var address: String?
        public var agent: String?

        public init(type: Kind, id: String, address: String? = nil, agent: String? = nil) {
            self.type = type
            self.id = id
            self.address = address
            self.agent = agent
        }

        public static let broker = Actor(type: .broker, id: "broker")
    }

    /// The ids the event is about; only those that apply are present.
    public struct Subject: Codable, Sendable, Equatable {
        public var caseId: UUID?
        public var requestId: UUID?
        public var packageId: UUID?
        public var chunk: Int?
        public var user: String?
        public var provider: String?
        public var witness: String?
        public var agency: String?

        public init(caseId: UUID? = nil, requestId: UUID? = nil, packageId: UUID? = nil, chunk: Int? = nil,
                    user: String? = nil, provider: String? = nil, witness: String? = nil, agency: String? = nil) {
            self.agency = agency
            self.caseId = caseId
            self.requestId = requestId
            self.packageId = packageId
            self.chunk = chunk
            self.user = user
            self.provider = provider
            self.witness = witness
        }

        enum CodingKeys: String, CodingKey { case caseId, requestId, packageId, chunk, user, provider, witness, agency }

        // Ids in lower case, as everywhere in what Custos hashes.
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encodeIfPresent(caseId?.uuidString.lowercased(), forKey: .caseId)
            try c.encodeIfPresent(requestId?.uuidString.lowercased(), forKey: .requestId)
            try c.encodeIfPresent(packageId?.uuidString.lowercased(), forKey: .packageId)
            try c.encodeIfPresent(chunk, forKey: .chunk)
            try c.encodeIfPresent(user, forKey: .user)
            try c.encodeIfPresent(provider, forKey: .provider)
            try c.encodeIfPresent(witness, forKey: .witness)
            try c.encodeIfPresent(agency, forKey: .agency)
        }
    }

    public var v: Int
    public var kind: Kind
    /// RFC 3339 UTC, when the broker recorded it.
    public var at: String
    public var actor: Actor
    public var subject: Subject
    /// Name → SHA-256 (hex) of each object the event refers to: `requestHash`,
    /// `manifestSha256`, `chunkSha256`, `verdictSha256`, `noteSha256`, `certificateSha256`…
    public var objects: [String: String]
    /// Short machine-readable facts: a state, a reason code, failure codes, a role.
    public var details: [String: String]

    public init(kind: Kind, at: String, actor: Actor, subject: Subject, objects: [String: String] = [:], details: [String: String] = [:]) {
        self.v = Self.version
        self.kind = kind
        self.at = at
        self.actor = actor
        self.subject = subject
        self.objects = objects
        self.details = details
    }

    /// The log entry: exactly these bytes are hashed into the tree.
    public func entry() throws -> [UInt8] { try CanonicalJSON.encode(self) }

    public static func leafHash(entry: [UInt8]) -> SHA256Digest {
        var h = MerkleTree.leafHasher()
        h.update(data: entry)
        return h.finalize()
    }

    /// Reads an entry back, refusing bytes that are not its canonical form (the hash must be
    /// recomputable from the event alone).
    public static func decode(entry: [UInt8]) throws -> CustodyEvent {
        guard (try? CanonicalJSON.canonicalize(entry)) == entry else { throw CustodyError("entry is not RFC 8785 canonical JSON") }
        do {
            return try JSONDecoder().decode(CustodyEvent.self, from: Data(entry))
        } catch {
            throw CustodyError("entry is not a custody event")
        }
    }
}

public struct CustodyError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ d: String) { description = d }
}
