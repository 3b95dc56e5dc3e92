import CustosCustody
import CustosModel
import Foundation
import Logging
import NIOCore
import PostgresNIO

/// Lists, the inbox and shared cases: what waits for whom. Every query is within the caller's
/// agency, and each list is one index range scan (migration 17's indexes), so it stays fast as
/// the agency grows (`ops/bench lists`).
extension BrokerStore {
    /// Filters of `GET /v1/requests`; nil or empty means any.
    public struct RequestFilter: Sendable {
        public var states: [RequestState] = []
        public var priority: Priority?
        public var kind: RequestKind?
        public var provider: String?
        public var caseId: UUID?
        /// A user name: requests that person submitted.
        public var submitter: String?
        /// Requests of the caller's cases, or that the caller submitted or approved.
        public var mine = false
        public var createdAfter: Date?
        public var createdBefore: Date?
        public var updatedAfter: Date?
        public var updatedBefore: Date?
        public var sort: ListSort = .updated
        public var limit = 50
        public var cursor: ListCursor?
        public init() {}
    }

    /// Lists are newest first, by last change (`updated`) or by creation (`created`).
    public enum ListSort: String, Sendable, CaseIterable {
        case updated, created
    }

    /// Where a page ends: the sort, the sort key in microseconds since 1970 and the id of its
    /// last item. Opaque to clients: base64url of `<sort>.<microseconds>.<uuid>`.
    public struct ListCursor: Sendable, Equatable {
        public var sort: ListSort
        public var micros: Int64
        public var id: UUID

        public var text: String {
            Data("\(sort.rawValue).\(micros).\(id.lowercased)".utf8).base64EncodedString()
                .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        }

        /// Parses a cursor this broker made; nil for anything else.
        public init?(_ text: String) {
            guard text.utf8.count <= 200 else { return nil }
            var b64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
            while b64.utf8.count % 4 != 0 { b64 += "=" }
            guard let data = Data(base64Encoded: b64), let plain = String(data: data, encoding: .utf8) else { return nil }
            let parts = plain.split(separator: ".", omittingEmptySubsequences: false)
            guard parts.count == 3, let sort = ListSort(rawValue: String(parts[0])), let micros = Int64(parts[1]), let id = UUID(uuidString: String(parts[2]))
            else { return nil }
            self.init(sort: sort, micros: micros, id: id)
        }

        public init(sort: ListSort, micros: Int64, id: UUID) {
            self.sort = sort
            self.micros = micros
            self.id = id
        }
    }

    /// The largest page.
    public static let maximumPage = 200

    /// A page of the requests of the caller's agency that pass `filter`, newest first.
    public func listRequests(_ filter: RequestFilter, viewer: AuthenticatedUser) async throws -> API.Page<API.RequestSummary> {
        let limit = max(1, min(Self.maximumPage, filter.limit))
        let sortColumn = filter.sort == .created ? "r.created_at" : "r.updated_at"
        var binds = PostgresBindings()
        var conditions: [String] = []
        func bind<T: PostgresEncodable>(_ value: T) throws -> String {
            try binds.append(value)
            return "$\(binds.count)"
        }
        try conditions.append("r.agency = \(bind(viewer.agency))")
        if !filter.states.isEmpty { try conditions.append("r.state = ANY(\(bind(filter.states.map(\.rawValue))))") }
        if let p = filter.priority { try conditions.append("r.priority = \(bind(p.rawValue))") }
        if let k = filter.kind { try conditions.append("r.kind = \(bind(k.rawValue))") }
        if let p = filter.provider { try conditions.append("r.provider_id = \(bind(p))") }
        if let c = filter.caseId { try conditions.append("r.case_id = \(bind(c))") }
        if let s = filter.submitter { try conditions.append("r.submitted_by = (SELECT id FROM users WHERE name = \(bind(s)))") }
        if filter.mine {
            let me = try bind(viewer.id)
            conditions.append("""
                (r.created_by = \(me) OR r.submitted_by = \(me) OR r.approved_by = \(me)
                 OR EXISTS (SELECT 1 FROM case_members m WHERE m.case_id = r.case_id AND m.user_id = \(me)))
                """)
        }
        if let d = filter.createdAfter { try conditions.append("r.created_at >= \(bind(d))") }
        if let d = filter.createdBefore { try conditions.append("r.created_at < \(bind(d))") }
        if let d = filter.updatedAfter { try conditions.append("r.updated_at >= \(bind(d))") }
        if let d = filter.updatedBefore { try conditions.append("r.updated_at < \(bind(d))") }
        if let c = filter.cursor {
            guard c.sort == filter.sort else { throw BrokerError(.invalid, "the cursor belongs to another sort", violations: [FieldViolation(field: "cursor", rule: "must come from a page of the same sort")]) }
            try conditions.append("(\(sortColumn), r.id) < (timestamptz 'epoch' + \(bind(c.micros)) * interval '1 microsecond', \(bind(c.id)))")
        }
        let sql = """
            SELECT r.id, r.case_id, r.group_id, r.provider_id, r.state, r.priority, r.kind, cu.name, su.name, r.created_at, r.updated_at,
                   (extract(epoch FROM \(sortColumn)) * 1000000)::bigint, k.deadline, k.clock
            FROM requests r
                 JOIN users cu ON cu.id = r.created_by LEFT JOIN users su ON su.id = r.submitted_by
                 LEFT JOIN LATERAL (SELECT clock, deadline FROM request_clocks k
                                    WHERE k.request_id = r.id AND k.stopped_at IS NULL AND k.paused_at IS NULL ORDER BY deadline LIMIT 1) k ON true
            WHERE \(conditions.joined(separator: " AND "))
            ORDER BY \(sortColumn) DESC, r.id DESC
            LIMIT \(limit + 1)
            """
        var items: [API.RequestSummary] = []
        var keys: [Int64] = []
        let rows = try await client.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
        for try await (id, caseId, groupId, provider, state, priority, kind, createdBy, submittedBy, createdAt, updatedAt, key, deadline, clock)
            in rows.decode((UUID, UUID, UUID?, String, String, String, String, String, String?, Date, Date, Int64, Date?, String?).self) {
            items.append(API.RequestSummary(
                id: id, caseId: caseId, groupId: groupId, providerId: provider, state: RequestState(rawValue: state) ?? .draft,
                priority: Priority(rawValue: priority) ?? .normal, kind: RequestKind(rawValue: kind) ?? .production, createdBy: createdBy,
                submittedBy: submittedBy, createdAt: Timestamp.format(createdAt), updatedAt: Timestamp.format(updatedAt),
                nextDeadline: deadline.map(Timestamp.format), nextClock: clock))
            keys.append(key)
        }
        var next: String?
        if items.count > limit {
            items.removeLast()
            next = ListCursor(sort: filter.sort, micros: keys[limit - 1], id: items[limit - 1].id).text
        }
        return API.Page(items: items, next: next)
    }

    /// A page of the cases of the caller's agency, newest first; `mine`: those the caller is
    /// a member of (the author included).
    public func listCases(mine: Bool, limit: Int, cursor: ListCursor?, viewer: AuthenticatedUser) async throws -> API.Page<API.CaseSummary> {
        let limit = max(1, min(Self.maximumPage, limit))
        if let cursor, cursor.sort != .created {
            throw BrokerError(.invalid, "the cursor belongs to another list", violations: [FieldViolation(field: "cursor", rule: "must come from a page of cases")])
        }
        let micros = cursor?.micros ?? Int64.max
        let after = cursor?.id ?? UUID(uuidString: "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF")!
        var rows: [(UUID, String, String, Date, Int64)] = []
        for try await row in try await client.query("""
            SELECT c.id, c.title, u.name, c.created_at, (extract(epoch FROM c.created_at) * 1000000)::bigint
            FROM cases c JOIN users u ON u.id = c.created_by
            WHERE c.agency = \(viewer.agency)
              AND (NOT \(mine) OR EXISTS (SELECT 1 FROM case_members m WHERE m.case_id = c.id AND m.user_id = \(viewer.id)))
              AND (\(cursor == nil) OR (c.created_at, c.id) < (timestamptz 'epoch' + \(micros) * interval '1 microsecond', \(after)))
            ORDER BY c.created_at DESC, c.id DESC
            LIMIT \(limit + 1)
            """, logger: logger).decode((UUID, String, String, Date, Int64).self) { rows.append(row) }
        var next: String?
        if rows.count > limit {
            rows.removeLast()
            next = ListCursor(sort: .created, micros: rows[limit - 1].4, id: rows[limit - 1].0).text
        }
        let details = try await caseDetails(rows.map(\.0))
        return API.Page(items: rows.map { id, title, author, at, _ in
            API.CaseSummary(id: id, title: title, createdBy: author, createdAt: Timestamp.format(at), members: details[id]?.members ?? [author],
                            requests: details[id]?.requests ?? 0, open: details[id]?.open ?? 0)
        }, next: next)
    }

    /// One case of the caller's agency.
    public func caseSummary(_ id: UUID, viewer: AuthenticatedUser) async throws -> API.CaseSummary {
        var found: (String, String, Date)?
        for try await row in try await client.query("""
            SELECT c.title, u.name, c.created_at FROM cases c JOIN users u ON u.id = c.created_by WHERE c.id = \(id) AND c.agency = \(viewer.agency)
            """, logger: logger).decode((String, String, Date).self) { found = row }
        guard let (title, author, at) = found else { throw BrokerError(.notFound, "no such case") }
        let details = try await caseDetails([id])
        return API.CaseSummary(id: id, title: title, createdBy: author, createdAt: Timestamp.format(at), members: details[id]?.members ?? [author],
                               requests: details[id]?.requests ?? 0, open: details[id]?.open ?? 0)
    }

    /// Members (by name, in the order they joined) and request counts of some cases.
    private func caseDetails(_ ids: [UUID]) async throws -> [UUID: (members: [String], requests: Int, open: Int)] {
        guard !ids.isEmpty else { return [:] }
        var out: [UUID: (members: [String], requests: Int, open: Int)] = [:]
        for try await (id, name) in try await client.query("""
            SELECT m.case_id, u.name FROM case_members m JOIN users u ON u.id = m.user_id WHERE m.case_id = ANY(\(ids)) ORDER BY m.added_at, u.name
            """, logger: logger).decode((UUID, String).self) { out[id, default: ([], 0, 0)].members.append(name) }
        let finished = RequestLifecycle.final.map(\.rawValue)
        for try await (id, total, open) in try await client.query("""
            SELECT case_id, count(*), count(*) FILTER (WHERE NOT state = ANY(\(finished))) FROM requests WHERE case_id = ANY(\(ids)) GROUP BY case_id
            """, logger: logger).decode((UUID, Int, Int).self) {
            out[id, default: ([], 0, 0)].requests = total
            out[id, default: ([], 0, 0)].open = open
        }
        return out
    }

    /// A member of a case adds a colleague of the same agency, who then sees and acts on the
    /// case's requests as its author does. Recorded in custody (`case.member-added`).
    public func addCaseMember(_ caseId: UUID, user name: String, by user: AuthenticatedUser) async throws -> API.CaseSummary {
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, "only investigators share their cases") }
        try await client.custodyTransaction(logger: logger) { conn, custody in
            guard try await Self.caseAgency(conn, caseId, logger: logger) == user.agency else { throw BrokerError(.notFound, "no such case") }
            guard try await Self.isCaseMember(conn, caseId, user.id, logger: logger) else {
                throw BrokerError(.forbidden, "only a member of the case shares it")
            }
            var colleague: (UUID, String, String)?
            for try await row in try await conn.query("SELECT id, role, agency FROM users WHERE name = \(name)", logger: logger)
                .decode((UUID, String, String).self) { colleague = row }
            // Another agency's user is answered as one who does not exist.
            guard let (id, role, agency) = colleague, agency == user.agency else {
                throw BrokerError(.invalid, "invalid member", violations: [FieldViolation(field: "user", rule: "must name a user of your agency")])
            }
            guard role == Role.investigator.rawValue else {
                throw BrokerError(.invalid, "invalid member", violations: [FieldViolation(field: "user", rule: "must name an investigator")])
            }
            let added = try await conn.query("""
                INSERT INTO case_members (case_id, user_id, added_by) VALUES (\(caseId), \(id), \(user.id)) ON CONFLICT DO NOTHING RETURNING 1
                """, logger: logger).decode(Int.self).first { _ in true } != nil
            guard added else { return }
            custody.record(CustodyEvent(kind: .caseMemberAdded, at: Timestamp.now(), actor: user.actor, subject: .init(caseId: caseId),
                                        details: ["member": name]))
            try await LiveEvents.publish(conn, caseId: caseId, agency: user.agency, kind: .caseMember, logger: logger)
        }
        return try await caseSummary(caseId, viewer: user)
    }

    static func caseAgency(_ conn: PostgresConnection, _ caseId: UUID, logger: Logger) async throws -> String? {
        try await conn.query("SELECT agency FROM cases WHERE id = \(caseId)", logger: logger).decode(String.self).first { _ in true }
    }

    /// Whether `userId` is a member of the case (its author is).
    static func isCaseMember(_ conn: PostgresConnection, _ caseId: UUID, _ userId: UUID, logger: Logger) async throws -> Bool {
        try await conn.query("SELECT 1 FROM case_members WHERE case_id = \(caseId) AND user_id = \(userId)", logger: logger)
            .decode(Int.self).first { _ in true } != nil
    }

    /// What waits for the caller, by role, nearest deadline first (then oldest first): for an
    /// approver, submitted normal requests they did not submit; for a duty approver, submitted
    /// emergencies; for a reviewer, emergencies awaiting review; for an investigator, provider
    /// questions and unopened packages of their cases. A request to several providers is one
    /// item (its first part): deciding on it decides on all.
    public func inbox(for user: AuthenticatedUser) async throws -> API.Inbox {
        var items: [API.InboxItem] = []
        func submitted(_ priority: Priority, _ task: API.InboxItem.Task) async throws {
            for try await (id, caseId, at) in try await client.query("""
                SELECT r.id, r.case_id, r.updated_at FROM requests r
                WHERE r.agency = \(user.agency) AND r.state = 'submitted' AND r.priority = \(priority.rawValue) AND r.submitted_by <> \(user.id)
                  AND (r.group_id IS NULL OR r.group_id = r.id)
                ORDER BY r.updated_at LIMIT \(Self.maximumPage)
                """, logger: logger).decode((UUID, UUID, Date).self) {
                items.append(API.InboxItem(task: task, requestId: id, caseId: caseId, priority: priority, state: .submitted, since: Timestamp.format(at), deadline: nil))
            }
        }
        if user.roles.contains(.approver) { try await submitted(.normal, .approve) }
        if user.roles.contains(.dutyApprover) { try await submitted(.emergency, .approveEmergency) }
        if user.roles.contains(.reviewer) {
            for try await (id, caseId, state, since, deadline) in try await client.query("""
                SELECT r.id, r.case_id, r.state, k.started_at, k.deadline FROM requests r JOIN request_clocks k ON k.request_id = r.id AND k.clock = 'review'
                WHERE r.agency = \(user.agency) AND r.review = 'pending' AND r.submitted_by <> \(user.id) AND r.approved_by <> \(user.id)
                ORDER BY k.deadline LIMIT \(Self.maximumPage)
                """, logger: logger).decode((UUID, UUID, String, Date, Date).self) {
                items.append(API.InboxItem(task: .review, requestId: id, caseId: caseId, priority: .emergency, state: RequestState(rawValue: state) ?? .approved,
                                           since: Timestamp.format(since), deadline: Timestamp.format(deadline)))
            }
        }
        if user.roles.contains(.investigator) {
            for try await (question, id, caseId, priority, state, asked, deadline) in try await client.query("""
                SELECT q.id, r.id, r.case_id, r.priority, r.state, q.asked_at,
                       (SELECT min(deadline) FROM request_clocks k WHERE k.request_id = r.id AND k.stopped_at IS NULL)
                FROM clarifications q JOIN requests r ON r.id = q.request_id JOIN case_members m ON m.case_id = r.case_id AND m.user_id = \(user.id)
                WHERE q.answer IS NULL AND r.agency = \(user.agency)
                ORDER BY q.asked_at LIMIT \(Self.maximumPage)
                """, logger: logger).decode((UUID, UUID, UUID, String, String, Date, Date?).self) {
                items.append(API.InboxItem(task: .answer, requestId: id, caseId: caseId, priority: Priority(rawValue: priority) ?? .normal,
                                           state: RequestState(rawValue: state) ?? .approved, questionId: question, since: Timestamp.format(asked),
                                           deadline: deadline.map(Timestamp.format)))
            }
            for try await (package, id, caseId, priority, state, at) in try await client.query("""
                SELECT p.id, r.id, r.case_id, r.priority, r.state, coalesce(p.verified_at, p.received_at)
                FROM packages p JOIN requests r ON r.id = p.request_id JOIN case_members m ON m.case_id = r.case_id AND m.user_id = \(user.id)
                WHERE p.opened_at IS NULL AND p.state <> 'receiving' AND r.agency = \(user.agency)
                ORDER BY 6 LIMIT \(Self.maximumPage)
                """, logger: logger).decode((UUID, UUID, UUID, String, String, Date).self) {
                items.append(API.InboxItem(task: .open, requestId: id, caseId: caseId, priority: Priority(rawValue: priority) ?? .normal,
                                           state: RequestState(rawValue: state) ?? .delivered, packageId: package, since: Timestamp.format(at), deadline: nil))
            }
        }
        return API.Inbox(items: Self.inboxOrder(items))
    }

    /// Nearest deadline first; without one, emergencies before normal requests, then oldest first.
    static func inboxOrder(_ items: [API.InboxItem]) -> [API.InboxItem] {
        items.sorted { a, b in
            switch (a.deadline, b.deadline) {
            case let (x?, y?) where x != y: return x < y
            case (.some, nil): return true
            case (nil, .some): return false
            default:
                if a.priority != b.priority { return a.priority == .emergency }
                return a.since < b.since
            }
        }
    }

    /// Marks a package opened the first time an investigator views, downloads or exports it
    /// (it then leaves the inbox).
    public func markOpened(package id: UUID, by user: AuthenticatedUser) async throws {
        guard user.roles.contains(.investigator) else { return }
        try await client.query("UPDATE packages SET opened_at = now() WHERE id = \(id) AND opened_at IS NULL", logger: logger)
    }
}
