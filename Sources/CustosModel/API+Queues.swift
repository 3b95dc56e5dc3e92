import Foundation

/// Work queues for people (`GET /v1/requests`, `/v1/cases`, `/v1/inbox`, `/v1/events`): ids,
/// states, names of people and times. A request's targets never appear in a list; a case's
/// title does (it is the agency's own label for its case, shown only to that agency).
extension API {
    /// One request in a list.
    public struct RequestSummary: Codable, Sendable, Hashable {
        public var id: UUID
        public var caseId: UUID
        /// For a request to several providers: the id of its first part, shared by all parts.
        public var groupId: UUID?
        public var providerId: String
        public var state: RequestState
        public var priority: Priority
        public var kind: RequestKind
        /// Who drafted it and who submitted it (user names).
        public var createdBy: String
        public var submittedBy: String?
        /// RFC 3339 UTC.
        public var createdAt: String
        public var updatedAt: String
        /// The nearest deadline of a running, unpaused legal clock, and which clock.
        public var nextDeadline: String?
        public var nextClock: String?

        public init(id: UUID, caseId: UUID, groupId: UUID?, providerId: String, state: RequestState, priority: Priority, kind: RequestKind,
                    createdBy: String, submittedBy: String?, createdAt: String, updatedAt: String, nextDeadline: String?, nextClock: String?) {
            self.id = id
            self.caseId = caseId
            self.groupId = groupId
            self.providerId = providerId
            self.state = state
            self.priority = priority
            self.kind = kind
            self.createdBy = createdBy
            self.submittedBy = submittedBy
            self.createdAt = createdAt
            self.updatedAt = updatedAt
            self.nextDeadline = nextDeadline
            self.nextClock = nextClock
        }
    }

    /// A page of a list. `next`: the opaque cursor of the page after this one (`?cursor=`),
    /// absent on the last page.
    public struct Page<Item: Codable & Sendable & Hashable>: Codable, Sendable, Hashable {
        public var items: [Item]
        public var next: String?
        public init(items: [Item], next: String?) {
            self.items = items
            self.next = next
        }
    }

    /// One case in a list, with its members (user names) and how many requests it holds.
    public struct CaseSummary: Codable, Sendable, Hashable {
        public var id: UUID
        public var title: String
        public var createdBy: String
        public var createdAt: String
        /// Everyone who sees and acts on its requests as its author does, the author included.
        public var members: [String]
        /// Its requests, and how many of them have not reached an end (verified, refused…).
        public var requests: Int
        public var open: Int

        public init(id: UUID, title: String, createdBy: String, createdAt: String, members: [String], requests: Int, open: Int) {
            self.id = id
            self.title = title
            self.createdBy = createdBy
            self.createdAt = createdAt
            self.members = members
            self.requests = requests
            self.open = open
        }
    }

    /// `POST /v1/cases/{id}/members`: a colleague of the same agency, by user name.
    public struct AddMember: Codable, Sendable {
        public var user: String
        public init(user: String) { self.user = user }
    }

    /// What waits for the caller (`GET /v1/inbox`), nearest deadline first.
    public struct Inbox: Codable, Sendable, Hashable {
        public var items: [InboxItem]
        public init(items: [InboxItem]) { self.items = items }
    }

    public struct InboxItem: Codable, Sendable, Hashable {
        public enum Task: String, Codable, Sendable, CaseIterable {
            /// A submitted normal request that the caller did not submit: approve or reject it.
            case approve
            /// A submitted emergency: a duty approver's fast track.
            case approveEmergency = "approve-emergency"
            /// An emergency approved without review: confirm or revoke it before its review clock ends.
            case review
            /// A provider's question about a request of the caller's cases.
            case answer
            /// A package delivered for a request of the caller's cases that nobody has opened yet.
            case open
        }
        public var task: Task
        public var requestId: UUID
        public var caseId: UUID
        public var priority: Priority
        public var state: RequestState
        /// The question to answer, or the package to open.
        public var questionId: UUID?
        public var packageId: UUID?
        /// Since when it waits, and by when it must be done (when a clock says).
        public var since: String
        public var deadline: String?

        public init(task: Task, requestId: UUID, caseId: UUID, priority: Priority, state: RequestState, questionId: UUID? = nil, packageId: UUID? = nil,
                    since: String, deadline: String?) {
            self.task = task
            self.requestId = requestId
            self.caseId = caseId
            self.priority = priority
            self.state = state
            self.questionId = questionId
            self.packageId = packageId
            self.since = since
            self.deadline = deadline
        }
    }

    /// One event of the live feed (`GET /v1/events`, Server-Sent Events: `id` is the feed's
    /// sequence number, `event` the kind, `data` this as JSON).
    public struct LiveEvent: Codable, Sendable, Hashable {
        public enum Kind: String, Codable, Sendable, CaseIterable {
            /// A request moved to `state` (its timeline's step).
            case request
            /// A legal clock (`clock`) ran late, was escalated or expired (`state`).
            case clock
            /// A provider asked a question (`questionId`), or it was answered (`state`: `answered`).
            case question
            /// A package was judged (`state`: `verified` or `rejected`).
            case package
            /// A colleague was added to a case.
            case caseMember = "case-member"
        }
        public var id: Int64
        public var kind: Kind
        public var at: String
        public var caseId: UUID
        public var requestId: UUID?
        public var packageId: UUID?
        public var questionId: UUID?
        public var clock: String?
        public var state: String?
        /// Who caused it: a user name, a provider id or `broker` (an id, never free text).
        public var actor: String?
        /// For a refusal, the provider's reason, one of the refusal message's codes
        /// (`schemas/messages/refusal.json`); never free text.
        public var reason: String?

        public init(id: Int64, kind: Kind, at: String, caseId: UUID, requestId: UUID? = nil, packageId: UUID? = nil, questionId: UUID? = nil,
                    clock: String? = nil, state: String? = nil, actor: String? = nil, reason: String? = nil) {
            self.reason = reason
            self.actor = actor
            self.id = id
            self.kind = kind
            self.at = at
            self.caseId = caseId
            self.requestId = requestId
            self.packageId = packageId
            self.questionId = questionId
            self.clock = clock
            self.state = state
        }
    }
}
