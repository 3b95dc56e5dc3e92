import Foundation

/// Bodies of the HTTP API (`/v1/...`), shared by the broker, the client and the CLI.
public enum API {
    public struct CreateCase: Codable, Sendable {
        public var title: String
        public init(title: String) { self.title = title }
    }

    public struct CaseView: Codable, Sendable {
        public var id: UUID
        public var title: String
        public var createdBy: String
        public var createdAt: String

        public init(id: UUID, title: String, createdBy: String, createdAt: String) {
            self.id = id
            self.title = title
            self.createdBy = createdBy
            self.createdAt = createdAt
        }
    }

    public struct Decision: Codable, Sendable {
        public var reason: String?
        public init(reason: String? = nil) { self.reason = reason }
    }

    public struct TimelineEntry: Codable, Sendable, Hashable {
        public var at: String
        public var state: String
        public var actor: String
        public var note: String?

        public init(at: String, state: String, actor: String, note: String?) {
            self.at = at
            self.state = state
            self.actor = actor
            self.note = note
        }
    }

    /// A reviewer's decision on an emergency request.
    public struct Review: Codable, Sendable {
        public enum Decision: String, Codable, Sendable, CaseIterable { case confirm, revoke }
        public var decision: Decision
        /// Required to revoke.
        public var reason: String?
        public init(decision: Decision, reason: String? = nil) {
            self.decision = decision
            self.reason = reason
        }
    }

    /// Where an emergency request's review stands.
    public struct ReviewView: Codable, Sendable, Hashable {
        public enum State: String, Codable, Sendable { case pending, confirmed, revoked, lapsed }
        public var state: State
        /// The review clock's deadline: unconfirmed by then, the emergency lapses.
        public var dueAt: String?
        public var reviewedBy: String?
        public var reviewedAt: String?
        public init(state: State, dueAt: String?, reviewedBy: String?, reviewedAt: String?) {
            self.state = state
            self.dueAt = dueAt
            self.reviewedBy = reviewedBy
            self.reviewedAt = reviewedAt
        }
    }

    /// One legal clock of a request.
    public struct ClockView: Codable, Sendable, Hashable {
        /// `acknowledgement`, `delivery` or `review`.
        public var clock: String
        public var startedAt: String
        /// Moved later by the time spent waiting for answers to the provider's questions.
        public var deadline: String
        /// Set while the provider waits for an answer: the clock does not run.
        public var pausedAt: String?
        public var stoppedAt: String?
        public var lateAt: String?
        public var escalatedAt: String?
        public var expiredAt: String?
        public init(clock: String, startedAt: String, deadline: String, pausedAt: String? = nil, stoppedAt: String?, lateAt: String?, escalatedAt: String?,
                    expiredAt: String?) {
            self.pausedAt = pausedAt
            self.clock = clock
            self.startedAt = startedAt
            self.deadline = deadline
            self.stoppedAt = stoppedAt
            self.lateAt = lateAt
            self.escalatedAt = escalatedAt
            self.expiredAt = expiredAt
        }
    }

    /// A decision document held by the broker for an agency.
    public struct DocumentView: Codable, Sendable, Hashable {
        public var document: LegalDocument
        public var uploadedBy: String
        public var uploadedAt: String
        public init(document: LegalDocument, uploadedBy: String, uploadedAt: String) {
            self.document = document
            self.uploadedBy = uploadedBy
            self.uploadedAt = uploadedAt
        }
    }

    /// The provider's latest status: what it is doing, how far along, and when it said so.
    public struct ProgressView: Codable, Sendable, Hashable {
        public var phase: String
        public var percent: Int
        public var at: String
        public init(phase: String, percent: Int, at: String) {
            self.phase = phase
            self.percent = percent
            self.at = at
        }
    }

    /// One provider's part of a request to several providers.
    public struct PartView: Codable, Sendable, Hashable {
        public var id: UUID
        public var providerId: String
        public var state: RequestState
        public init(id: UUID, providerId: String, state: RequestState) {
            self.id = id
            self.providerId = providerId
            self.state = state
        }
    }

    /// A provider's question about a request, and the investigator's answer.
    public struct ClarificationView: Codable, Sendable, Hashable {
        public var id: UUID
        public var question: String
        public var askedAt: String
        public var answer: String?
        public var answeredBy: String?
        public var answeredAt: String?
        public init(id: UUID, question: String, askedAt: String, answer: String?, answeredBy: String?, answeredAt: String?) {
            self.id = id
            self.question = question
            self.askedAt = askedAt
            self.answer = answer
            self.answeredBy = answeredBy
            self.answeredAt = answeredAt
        }
    }

    public struct Answer: Codable, Sendable {
        public var answer: String
        public init(answer: String) { self.answer = answer }
    }

    public struct Timeline: Codable, Sendable {
        public var requestId: UUID
        public var state: RequestState
        public var timeline: [TimelineEntry]
        public init(requestId: UUID, state: RequestState, timeline: [TimelineEntry]) {
            self.requestId = requestId
            self.state = state
            self.timeline = timeline
        }
    }

    /// What `POST /v1/requests` answers to an HI-1 message (ETSI TS 103 120): the case it
    /// opened and one draft per `LDTaskObject`, in message order.
    public struct HI1ImportView: Codable, Sendable, Equatable {
        public var caseId: UUID
        public var requestIds: [UUID]

        public init(caseId: UUID, requestIds: [UUID]) {
            self.caseId = caseId
            self.requestIds = requestIds
        }
    }

    public struct RequestView: Codable, Sendable {
        public var id: UUID
        public var state: RequestState
        public var spec: RequestSpec
        public var submittedBy: String?
        public var approvedBy: String?
        public var requestHash: String?
        public var createdAt: String
        public var timeline: [TimelineEntry]
        public var packages: [PackageSummary]
        /// The legal clocks, from approval.
        public var clocks: [ClockView]
        /// For an emergency request, once approved.
        public var review: ReviewView?
        /// The provider's questions, and their answers.
        public var clarifications: [ClarificationView]
        /// For a request to several providers: every part (this one included), each its own request.
        public var parts: [PartView]?
        /// The provider's latest status, once it sent one.
        public var progress: ProgressView?

        public init(id: UUID, state: RequestState, spec: RequestSpec, submittedBy: String?, approvedBy: String?, requestHash: String?, createdAt: String,
                    timeline: [TimelineEntry], packages: [PackageSummary], clocks: [ClockView] = [], review: ReviewView? = nil,
                    clarifications: [ClarificationView] = [], parts: [PartView]? = nil, progress: ProgressView? = nil) {
            self.progress = progress
            self.parts = parts
            self.clarifications = clarifications
            self.clocks = clocks
            self.review = review
            self.id = id
            self.state = state
            self.spec = spec
            self.submittedBy = submittedBy
            self.approvedBy = approvedBy
            self.requestHash = requestHash
            self.createdAt = createdAt
            self.timeline = timeline
            self.packages = packages
        }
    }

    /// A package of the request. Its chunks come first and its signed manifest last (package
    /// protocol v2): until the manifest is in, only `chunksReceived` is known, and
    /// `chunkCount`, `contentSize`, `chunksRoot` and `manifestSha256` are absent.
    public struct PackageSummary: Codable, Sendable, Hashable {
        public var id: UUID
        public var state: PackageState
        public var chunkCount: Int?
        public var chunksReceived: Int
        /// Bytes.
        public var contentSize: Int64?
        public var chunksRoot: String?
        public var manifestSha256: String?

        public init(id: UUID, state: PackageState, chunkCount: Int?, chunksReceived: Int, contentSize: Int64?, chunksRoot: String?, manifestSha256: String?) {
            self.id = id
            self.state = state
            self.chunkCount = chunkCount
            self.chunksReceived = chunksReceived
            self.contentSize = contentSize
            self.chunksRoot = chunksRoot
            self.manifestSha256 = manifestSha256
        }
    }

    public struct PackageView: Codable, Sendable {
        public var id: UUID
        public var requestId: UUID
        public var providerId: String
        public var state: PackageState
        public var manifest: Manifest
        /// The manifest exactly as the provider signed and sent it (RFC 8785 canonical JSON,
        /// UTF-8): what `signature` covers and `manifestSha256` hashes. `manifest` is the same
        /// document decoded, for reading; never re-encode it to check the signature.
        public var manifestText: String?
        /// CMS SignedData over the manifest's canonical JSON, DER, base64.
        public var signature: String
        /// RFC 3161 TimeStampResp over the signature, DER, base64.
        public var timeStamp: String
        public var timeStampedAt: String?
        /// The accuracy the TSA states for `timeStampedAt`, in microseconds.
        public var timeStampAccuracyMicroseconds: Int64?
        public var signer: String?
        public var manifestSha256: String
        public var verification: PackageVerificationSummary?
        public var receivedAt: String
        /// A sealed package is kept but neither its content nor its bundle is released.
        public var sealed: Bool
        /// Why it is sealed.
        public var sealReason: String?
        /// The four criteria's verdict, once the package is complete.
        public var criteria: Verdict?
        /// Whether the verdict found records investigators may not see (quarantined or
        /// unreadable): the content is then redacted for all but auditors (SPEC §11).
        public var withholdsRecords: Bool { (criteria?.counts.withheld ?? 0) > 0 }

        public init(id: UUID, requestId: UUID, providerId: String, state: PackageState, manifest: Manifest, signature: String, timeStamp: String,
                    timeStampedAt: String?, timeStampAccuracyMicroseconds: Int64?, signer: String?, manifestSha256: String, verification: PackageVerificationSummary?, receivedAt: String,
                    sealed: Bool = false, sealReason: String? = nil, criteria: Verdict? = nil, manifestText: String? = nil) {
            self.manifestText = manifestText
            self.criteria = criteria
            self.sealed = sealed
            self.sealReason = sealReason
            self.id = id
            self.requestId = requestId
            self.providerId = providerId
            self.state = state
            self.manifest = manifest
            self.signature = signature
            self.timeStamp = timeStamp
            self.timeStampedAt = timeStampedAt
            self.timeStampAccuracyMicroseconds = timeStampAccuracyMicroseconds
            self.signer = signer
            self.manifestSha256 = manifestSha256
            self.verification = verification
            self.receivedAt = receivedAt
        }
    }

    public struct PackageVerificationSummary: Codable, Sendable {
        public var valid: Bool
        public var failures: [String]
        public var checkedAt: String

        public init(valid: Bool, failures: [String], checkedAt: String) {
            self.valid = valid
            self.failures = failures
            self.checkedAt = checkedAt
        }
    }

    public struct UserView: Codable, Sendable {
        public var id: UUID
        public var name: String
        public var role: Role
        /// Every role held (a JWT may name several); `role` is the first of them.
        public var roles: [Role]
        public var agency: String

        public init(id: UUID, name: String, role: Role, roles: [Role]? = nil, agency: String) {
            self.id = id
            self.name = name
            self.role = role
            self.roles = roles ?? [role]
            self.agency = agency
        }
    }

    /// RFC 9457 problem details.
    public struct Problem: Codable, Sendable, Error, CustomStringConvertible {
        public var type: String
        public var title: String
        public var status: Int
        public var detail: String?
        public var violations: [FieldViolation]?

        public init(type: String, title: String, status: Int, detail: String? = nil, violations: [FieldViolation]? = nil) {
            self.type = type
            self.title = title
            self.status = status
            self.detail = detail
            self.violations = violations
        }

        public var description: String {
            var s = "\(status) \(title)"
            if let detail { s += ": \(detail)" }
            if let violations, !violations.isEmpty { s += "\n" + violations.map { "  - \($0)" }.joined(separator: "\n") }
            return s
        }
    }
}

public enum Role: String, Codable, Sendable, CaseIterable {
    case investigator, approver, admin
    /// Reads the custody log and its proofs.
    case auditor
    /// An outside witness (e.g. the procuracy): reads checkpoints and co-signs them.
    case witness
    /// Approves emergency requests alone (the fast track); normal ones need an `approver`.
    case dutyApprover = "duty-approver"
    /// Confirms or revokes an emergency request after the fact, inside its review clock.
    case reviewer
}

/// Request states, after ETSI TS 103 120's task life cycle (DESIGN.md). Each is set by the
/// party that owns it: people set draft…rejected; the broker sets dispatched; the provider's
/// messages set acknowledged, in-progress and refused; the broker's checks set delivered and
/// verified.
public enum RequestState: String, Codable, Sendable, CaseIterable {
    case draft, submitted, approved, rejected, withdrawn, dispatched, acknowledged
    case inProgress = "in-progress"
    /// A partial package arrived (and was checked); more follow.
    case partiallyDelivered = "partially-delivered"
    case delivered, verified, refused
    /// Its delivery clock ran out (and the grace after it): set by the broker's legal clock.
    case expired
    /// An emergency request that a reviewer revoked, or that nobody confirmed inside its review
    /// clock, before it was delivered: the provider is told to stop.
    case revoked
    /// A preservation order the provider confirmed: the data is frozen until its clock ends.
    case preserved
    /// A preservation order the investigator ended before its clock: the provider may let go.
    case released

    /// States off the happy path that end a request: nothing moves it on from them (the
    /// broker's `RequestLifecycle` holds the transitions).
    public static let ended: Set<RequestState> = [.rejected, .refused, .withdrawn, .expired, .revoked, .released]
}

public enum PackageState: String, Codable, Sendable {
    case receiving, verified, rejected
}
