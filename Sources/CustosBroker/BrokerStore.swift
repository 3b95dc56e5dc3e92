import Crypto
import CustosCanonicalJSON
import CustosCriteria
import CustosCustody
import CustosEvidence
import CustosModel
import CustosPKI
import Foundation
import Logging
import NIOCore
import PostgresNIO

public struct AuthenticatedUser: Sendable, Hashable {
    public var id: UUID
    public var name: String
    /// Its role as stored (for people created with `users add`, its only one).
    public var role: Role
    /// Every role it holds: the stored one, or those a JWT names.
    public var roles: Set<Role>
    /// The agency it belongs to: it sees only that agency's cases.
    public var agency: String
    /// The client it came from (address without port, user agent), for the custody log.
    public var address: String?
    public var agent: String?

    public init(id: UUID, name: String, role: Role, agency: String = AuthenticatedUser.defaultAgency, address: String? = nil, agent: String? = nil) {
        self.id = id
        self.name = name
        self.role = role
        self.roles = [role]
        self.agency = agency
        self.address = address
        self.agent = agent
    }

    /// The agency of users created without naming one (and of data from before agencies).
    public static let defaultAgency = "default"

    /// Roles that read the whole custody log, whichever agency an event concerns.
    public var readsWholeCustodyLog: Bool { !roles.isDisjoint(with: [.auditor, .witness, .admin]) }

    /// Only an outside witness: it sees the custody log and nothing else.
    public var isOnlyWitness: Bool { roles == [.witness] }

    public var actor: CustodyEvent.Actor {
        CustodyEvent.Actor(type: isOnlyWitness ? .witness : .user, id: name, address: address, agent: agent)
    }
}

/// Everything the broker keeps in PostgreSQL. Each method is one transaction.
public struct BrokerStore: Sendable {
    let client: PostgresClient
    let logger: Logger
    let signer: SigningKey
    /// CA certificates (PEM) that providers' time-stamping authorities must chain to.
    let tsaTrust: String
    /// Appends the custody events that change no state (views, downloads, exports).
    public let custody: CustodyAppender
    /// The legal clocks' durations.
    public let clocks: LegalClock.Settings
    /// `criteria.*`: how close to delivery a package's extraction and time-stamp must be (sống).
    public let criteriaBounds: PackageJudge.Bounds
    /// Signalled after a transaction queues an urgent message; the outbox relay waits on it.
    public let outboxWakeup = Wakeup()

    /// Where package chunks are kept (`storage.*`); nil for the admin commands, which read none.
    public let chunks: (any ChunkStore)?
    /// Package ingest: chunks checked as they arrive, manifests, verdicts.
    let packages: PackageIngest

    public init(client: PostgresClient, signer: SigningKey, tsaTrust: String, clocks: LegalClock.Settings = .init(),
                criteriaBounds: PackageJudge.Bounds = .init(), chunks: (any ChunkStore)? = nil, logger: Logger) {
        self.chunks = chunks
        self.criteriaBounds = criteriaBounds
        self.client = client
        self.signer = signer
        self.tsaTrust = tsaTrust
        self.clocks = clocks
        self.logger = logger
        self.custody = CustodyAppender(client: client, logger: logger)
        self.packages = PackageIngest(chunks: chunks, tsaTrust: tsaTrust, criteriaBounds: criteriaBounds, signer: signer, logger: logger)
    }

    /// Records an access (a view, a download, an export) durably before it is served.
    @discardableResult
    public func recordAccess(_ kind: CustodyEvent.Kind, by user: AuthenticatedUser, subject: CustodyEvent.Subject,
                             objects: [String: String] = [:]) async throws -> Int64 {
        try await custody.append(CustodyEvent(kind: kind, at: Timestamp.now(), actor: user.actor, subject: subject, objects: objects))
    }

    // MARK: Users

    static func tokenHash(_ token: String) -> [UInt8] { Array(SHA256.hash(data: Array(token.utf8))) }

    /// Creates a user and returns the bearer token, which is shown once and stored only as a hash.
    public func addUser(name: String, role: Role, agency: String = AuthenticatedUser.defaultAgency, by actor: CustodyEvent.Actor) async throws
        -> (AuthenticatedUser, token: String)
    {
        try await client.custodyTransaction(logger: logger) { conn, custody in
            try await Self.addUser(conn, name: name, role: role, agency: agency, by: actor, custody: custody, logger: logger)
        }
    }

    static func addUser(_ conn: PostgresConnection, name: String, role: Role, agency: String = AuthenticatedUser.defaultAgency,
                        by actor: CustodyEvent.Actor, custody: CustodyRecorder, logger: Logger) async throws -> (AuthenticatedUser, token: String) {
        guard (1...100).contains(name.count), name.allSatisfy({ $0.isLetter || $0.isNumber || "._-".contains($0) }) else {
            throw BrokerError(.invalid, "user name must be 1 to 100 letters, digits, '.', '_' or '-'")
        }
        var random = SystemRandomNumberGenerator()
        let token = "ct_" + (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }.hexString
        let id = UUID()
        let agencyExists = try await conn.query("SELECT 1 FROM agencies WHERE id = \(agency)", logger: logger).decode(Int.self).first { _ in true } != nil
        guard agencyExists else { throw BrokerError(.invalid, "no agency \(agency): add it first (custos-broker agencies add)") }
        let inserted = try await conn.query("""
            INSERT INTO users (id, name, role, token_sha256, agency) VALUES (\(id), \(name), \(role.rawValue), \(ByteBuffer(bytes: Self.tokenHash(token))), \(agency))
            ON CONFLICT DO NOTHING RETURNING 1
            """, logger: logger).decode(Int.self).first { _ in true } != nil
        guard inserted else { throw BrokerError(.conflict, "a user with that name exists") }
        custody.record(CustodyEvent(kind: .userAdded, at: Timestamp.now(), actor: actor, subject: .init(user: name, agency: agency), details: ["role": role.rawValue]))
        return (AuthenticatedUser(id: id, name: name, role: role, agency: agency), token)
    }

    /// Adds an agency, whose users see only its cases.
    public func addAgency(id: String, name: String, by actor: CustodyEvent.Actor) async throws {
        guard ProviderID.isValid(id) else { throw BrokerError(.invalid, "agency id must match \(ProviderID.pattern)") }
        let n = name.trimmingCharacters(in: .whitespacesAndNewlines)
        guard (1...200).contains(n.count) else { throw BrokerError(.invalid, "agency name must be 1 to 200 characters") }
        try await client.custodyTransaction(logger: logger) { conn, custody in
            let inserted = try await conn.query("INSERT INTO agencies (id, name) VALUES (\(id), \(n)) ON CONFLICT DO NOTHING RETURNING 1", logger: logger)
                .decode(Int.self).first { _ in true } != nil
            guard inserted else { throw BrokerError(.conflict, "an agency with that id exists") }
            custody.record(CustodyEvent(kind: .agencyAdded, at: Timestamp.now(), actor: actor, subject: .init(agency: id),
                                        objects: ["nameSha256": Digest.sha256Hex(Array(n.utf8))]))
        }
    }

    /// Gives a user another role.
    public func setRole(name: String, role: Role, by actor: CustodyEvent.Actor) async throws {
        try await client.custodyTransaction(logger: logger) { conn, custody in
            var old: String?
            for try await r in try await conn.query("SELECT role FROM users WHERE name = \(name) FOR UPDATE", logger: logger).decode(String.self) { old = r }
            guard let old else { throw BrokerError(.notFound, "no such user") }
            guard old != role.rawValue else { return }
            try await conn.query("UPDATE users SET role = \(role.rawValue) WHERE name = \(name)", logger: logger)
            custody.record(CustodyEvent(kind: .userRoleChanged, at: Timestamp.now(), actor: actor, subject: .init(user: name),
                                        details: ["role": role.rawValue, "previousRole": old]))
        }
    }

    /// Registers a TLS client certificate for a user: presented in the handshake (and verified
    /// against `http.tls.clientTrustFile`), it authenticates them without a token.
    public func addUserCertificate(name: String, certificate: String, by actor: CustodyEvent.Actor) async throws {
        let info: CertificateInfo
        do { info = try CertificateInfo(pem: certificate) } catch { throw BrokerError(.invalid, "not a PEM certificate: \(error.reason)") }
        let fingerprint = Digest.sha256Hex(info.der)
        try await client.custodyTransaction(logger: logger) { conn, custody in
            var userId: UUID?
            for try await id in try await conn.query("SELECT id FROM users WHERE name = \(name)", logger: logger).decode(UUID.self) { userId = id }
            guard let userId else { throw BrokerError(.notFound, "no such user") }
            let added = try await conn.query("""
                INSERT INTO user_certificates (sha256, user_id, subject, not_after) VALUES (\(fingerprint), \(userId), \(info.commonName), \(info.notAfter))
                ON CONFLICT (sha256) DO NOTHING RETURNING 1
                """, logger: logger).decode(Int.self).first { _ in true } != nil
            guard added else { throw BrokerError(.conflict, "this certificate is already registered") }
            custody.record(CustodyEvent(kind: .userCertificateAdded, at: Timestamp.now(), actor: actor, subject: .init(user: name),
                                        objects: ["certificateSha256": fingerprint]))
        }
    }

    public func user(certificateSha256: String) async throws -> AuthenticatedUser? {
        let rows = try await client.query("""
            SELECT u.id, u.name, u.role, u.agency FROM user_certificates c JOIN users u ON u.id = c.user_id
            WHERE c.sha256 = \(certificateSha256) AND c.not_after > now()
            """, logger: logger)
        for try await (id, name, role, agency) in rows.decode((UUID, String, String, String).self) {
            return AuthenticatedUser(id: id, name: name, role: Role(rawValue: role) ?? .investigator, agency: agency)
        }
        return nil
    }

    public func user(token: String) async throws -> AuthenticatedUser? {
        let rows = try await client.query("SELECT id, name, role, agency FROM users WHERE token_sha256 = \(ByteBuffer(bytes: Self.tokenHash(token)))", logger: logger)
        for try await (id, name, role, agency) in rows.decode((UUID, String, String, String).self) {
            return AuthenticatedUser(id: id, name: name, role: Role(rawValue: role) ?? .investigator, agency: agency)
        }
        return nil
    }

    // MARK: Providers

    /// Registers a provider (or replaces its certificates): its signing certificate, whose
    /// common name must be the provider id and whose P-256 key signs its messages, and the CA
    /// its package signatures must chain to.
    public func registerProvider(id: String, certificate: String, caCertificate: String, by actor: CustodyEvent.Actor) async throws {
        guard ProviderID.isValid(id) else { throw BrokerError(.invalid, "provider id must match \(ProviderID.pattern)") }
        let info: CertificateInfo
        do {
            info = try CertificateInfo(pem: certificate)
            _ = try CertificateInfo(pem: caCertificate)
        } catch { throw BrokerError(.invalid, "not a PEM certificate: \(error.reason)") }
        guard info.commonName == id else { throw BrokerError(.invalid, "the certificate names \(info.commonName), not \(id)") }
        let key: VerifyingKey
        do { key = try VerifyingKey(certificate: info) } catch { throw BrokerError(.invalid, error.reason) }
        let caInfo = try CertificateInfo(pem: caCertificate)
        try await client.custodyTransaction(logger: logger) { conn, custody in
            try await conn.query("""
                INSERT INTO providers (id, certificate_pem, ca_certificate_pem, public_key_pem)
                VALUES (\(id), \(certificate), \(caCertificate), \(key.pem))
                ON CONFLICT (id) DO UPDATE SET certificate_pem = EXCLUDED.certificate_pem, ca_certificate_pem = EXCLUDED.ca_certificate_pem,
                    public_key_pem = EXCLUDED.public_key_pem, updated_at = now()
                """, logger: logger)
            custody.record(CustodyEvent(kind: .providerRegistered, at: Timestamp.now(), actor: actor, subject: .init(provider: id),
                                        objects: ["certificateSha256": Digest.sha256Hex(info.der), "caCertificateSha256": Digest.sha256Hex(caInfo.der)]))
        }
    }

    /// Registers an outside witness: its certificate (which must sign its co-signatures) and a
    /// user of role `witness` under the same name, whose bearer token is returned.
    public func registerWitness(name: String, certificate: String, by actor: CustodyEvent.Actor) async throws -> String {
        let info: CertificateInfo
        do { info = try CertificateInfo(pem: certificate) } catch { throw BrokerError(.invalid, "not a PEM certificate: \(error.reason)") }
        return try await client.custodyTransaction(logger: logger) { conn, custody in
            let token = try await Self.addUser(conn, name: name, role: .witness, by: actor, custody: custody, logger: logger).token
            try await conn.query("INSERT INTO witnesses (name, certificate_pem) VALUES (\(name), \(info.pem))", logger: logger)
            custody.record(CustodyEvent(kind: .witnessRegistered, at: Timestamp.now(), actor: actor, subject: .init(witness: name),
                                        objects: ["certificateSha256": Digest.sha256Hex(info.der)]))
            return token
        }
    }

    /// Whether request `id` is an emergency (priority `emergency`); false for an unknown id.
    func isEmergency(_ id: UUID) async throws -> Bool {
        try await client.query("SELECT (spec::jsonb ->> 'priority') = 'emergency' FROM requests WHERE id = \(id)", logger: logger)
            .decode(Bool?.self).first { _ in true }.flatMap { $0 } ?? false
    }

    public func providers() async throws -> [String: VerifyingKey] {
        var out: [String: VerifyingKey] = [:]
        for try await (id, pem) in try await client.query("SELECT id, public_key_pem FROM providers", logger: logger).decode((String, String).self) {
            out[id] = try VerifyingKey(pem: pem)
        }
        return out
    }

    // MARK: Cases

    public func createCase(title: String, by user: AuthenticatedUser) async throws -> API.CaseView {
        let t = title.trimmingCharacters(in: .whitespacesAndNewlines)
        guard (1...500).contains(t.count) else {
            throw BrokerError(.invalid, "invalid case", violations: [FieldViolation(field: "title", rule: "must be 1 to 500 characters")])
        }
        let id = UUID()
        let at = try await client.custodyTransaction(logger: logger) { conn, custody in
            var at = Date()
            for try await d in try await conn.query(
                "INSERT INTO cases (id, title, created_by, agency) VALUES (\(id), \(t), \(user.id), \(user.agency)) RETURNING created_at", logger: logger
            ).decode(Date.self) { at = d }
            try await conn.query("INSERT INTO case_members (case_id, user_id) VALUES (\(id), \(user.id))", logger: logger)
            custody.record(CustodyEvent(kind: .caseCreated, at: Timestamp.format(at), actor: user.actor, subject: .init(caseId: id),
                                        objects: ["titleSha256": Digest.sha256Hex(Array(t.utf8))]))
            return at
        }
        return API.CaseView(id: id, title: t, createdBy: user.name, createdAt: Timestamp.format(at))
    }

    // MARK: Requests

    /// Creates a request in `draft`. The spec is validated field by field.
    public func createRequest(_ spec: RequestSpec, by user: AuthenticatedUser) async throws -> UUID {
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, "only investigators create requests") }
        var spec = spec
        spec.targets = spec.targets.map(\.normalized)  // NFC before the request is stored and hashed
        do { try spec.validate() } catch { throw BrokerError(.invalid, "invalid request", violations: error.violations) }
        let id = UUID()
        try await client.custodyTransaction(logger: logger) { conn, custody in
            let caseExists = try await conn.query("SELECT 1 FROM cases WHERE id = \(spec.caseId) AND agency = \(user.agency)", logger: logger)
                .decode(Int.self).first { _ in true } != nil
            guard caseExists else {
                throw BrokerError(.invalid, "invalid request", violations: [FieldViolation(field: "caseId", rule: "must name an existing case")])
            }
            guard try await Self.isCaseMember(conn, spec.caseId, user.id, logger: logger) else {
                throw BrokerError(.forbidden, "only a member of the case (its author, or a colleague it is shared with) adds requests to it")
            }
            let providers = spec.providerIds ?? [spec.providerId]
            let registered = try await conn.query("SELECT count(*) FROM providers WHERE id = ANY(\(providers))", logger: logger).decode(Int.self).first { _ in true } ?? 0
            guard registered == providers.count else {
                throw BrokerError(.invalid, "invalid request", violations: [
                    FieldViolation(field: spec.providerIds == nil ? "providerId" : "providerIds", rule: "must name registered providers"),
                ])
            }
            if let document = spec.legalBasis.document, let violation = try await Self.checkDocument(conn, document, agency: user.agency, logger: logger) {
                throw BrokerError(.invalid, "invalid request", violations: [violation])
            }
            // One part per provider, each tracked on its own; the first part's id names the group.
            // Their creation times are a microsecond apart, so the parts list in providerIds' order.
            for (n, provider) in providers.enumerated() {
                var part = spec
                part.providerId = provider
                part.providerIds = nil
                let partId = n == 0 ? id : UUID()
                let partJSON = String(decoding: try CanonicalJSON.encode(part), as: UTF8.self)
                try await conn.query("""
                    INSERT INTO requests (id, case_id, provider_id, spec, state, created_by, group_id, agency, priority, kind, created_at)
                    VALUES (\(partId), \(spec.caseId), \(provider), \(partJSON), 'draft', \(user.id), \(providers.count > 1 ? id : nil),
                            \(user.agency), \(spec.priority.rawValue), \((spec.kind ?? .production).rawValue),
                            now() + \(n) * interval '1 microsecond')
                    """, logger: logger)
                try await Self.event(conn, partId, .draft, actor: user.actor, note: nil, custody: custody, caseId: spec.caseId,
                                     objects: ["specSha256": Digest.sha256Hex(Array(partJSON.utf8))], logger: logger)
            }
        }
        return id
    }

    public func submit(_ id: UUID, by user: AuthenticatedUser) async throws {
        try await client.custodyTransaction(logger: logger) { conn, custody in
            // A request to several providers is decided as one: every part at once.
            for id in try await Self.parts(conn, id, agency: user.agency, logger: logger) {
                let row = try await Self.lockRequest(conn, id, agency: user.agency, logger: logger)
                guard try await Self.actsAsAuthor(conn, row, user, logger: logger) else {
                    throw BrokerError(.forbidden, "only the request's author, or a colleague the case is shared with, submits it")
                }
                try Self.check(.submit, from: row.state, by: .author)
                guard row.spec.legalBasis.document != nil else {
                    throw BrokerError(.invalid, "a request is submitted with its decision", violations: [
                        FieldViolation(field: "legalBasis.document", rule: "is required to submit: upload the decision (POST /v1/documents) and name it"),
                    ])
                }
                try await conn.query(
                    "UPDATE requests SET state = 'submitted', submitted_by = \(user.id), updated_at = now() WHERE id = \(id)", logger: logger)
                try await Self.event(conn, id, .submitted, actor: user.actor, note: nil, custody: custody, caseId: row.spec.caseId, logger: logger)
            }
        }
    }

    /// The author withdraws a request that no approver has decided on yet.
    public func withdraw(_ id: UUID, by user: AuthenticatedUser, reason: String?) async throws {
        guard (reason?.count ?? 0) <= 2000 else {
            throw BrokerError(.invalid, "invalid decision", violations: [FieldViolation(field: "reason", rule: "must be at most 2000 characters")])
        }
        try await client.custodyTransaction(logger: logger) { conn, custody in
            // A request to several providers is decided as one: every part at once.
            for id in try await Self.parts(conn, id, agency: user.agency, logger: logger) {
                let row = try await Self.lockRequest(conn, id, agency: user.agency, logger: logger)
                guard try await Self.actsAsAuthor(conn, row, user, logger: logger) else {
                    throw BrokerError(.forbidden, "only the request's author, or a colleague the case is shared with, withdraws it")
                }
                try Self.check(.withdraw, from: row.state, by: .author)
                try await conn.query("UPDATE requests SET state = 'withdrawn', updated_at = now() WHERE id = \(id)", logger: logger)
                try await Self.event(conn, id, .withdrawn, actor: user.actor, note: reason, custody: custody, caseId: row.spec.caseId, logger: logger)
            }
        }
    }

    /// Approves a submitted request and, in the same transaction, queues the signed request
    /// message in the outbox. A normal request needs an approver, an emergency a duty
    /// approver (the fast track: urgent topic, short clocks, a review after the fact); either
    /// way another person than the submitter.
    public func approve(_ id: UUID, by user: AuthenticatedUser) async throws {
        guard !user.roles.isDisjoint(with: [.approver, .dutyApprover]) else { throw BrokerError(.forbidden, "only approvers approve requests") }
        let urgent = try await client.custodyTransaction(logger: logger) { conn, custody in
            var urgent = false
            // A request to several providers is decided as one: every part at once, each with its
            // own request as approved, hash, message, clocks and (for an emergency) review.
            for id in try await Self.parts(conn, id, agency: user.agency, logger: logger) {
                let row = try await Self.lockRequest(conn, id, agency: user.agency, logger: logger)
                let emergency = row.spec.priority == .emergency
                if emergency {
                    guard user.roles.contains(.dutyApprover) else { throw BrokerError(.forbidden, "emergency requests are approved by a duty approver") }
                } else {
                    guard user.roles.contains(.approver) else { throw BrokerError(.forbidden, "normal requests are approved by an approver, not on the fast track") }
                }
                try Self.check(.approve, from: row.state, by: RequestLifecycle.approver(for: row.spec.priority))
                guard row.submittedBy != user.id else { throw BrokerError(.forbidden, "the submitter of a request cannot approve it (four eyes)") }
                let submitter = try await Self.userName(conn, row.submittedBy!, logger: logger)
                let now = Date()
                let preserveUntil = row.spec.isPreservation ? now.addingTimeInterval(LegalClock.seconds(clocks.preservation)) : nil
                let approved = ApprovedRequest(requestId: id, spec: row.spec, submittedBy: submitter, approvedBy: user.name, approvedAt: Timestamp.format(now),
                                               preserveUntil: preserveUntil.map(Timestamp.format))
                let hash = try approved.hash()
                let approvedJSON = String(decoding: try CanonicalJSON.encode(approved), as: UTF8.self)
                try await conn.query("""
                    UPDATE requests SET state = 'approved', approved_by = \(user.id), approved_request = \(approvedJSON),
                        request_hash = \(hash), review = \(emergency ? "pending" : nil), updated_at = now() WHERE id = \(id)
                    """, logger: logger)
                // Clocks first: the approval's notifications (a review due) name their deadlines.
                try await LegalClock.start(conn, id, spec: row.spec, preserveUntil: preserveUntil, settings: clocks, logger: logger)
                try await Self.event(conn, id, .approved, actor: user.actor, note: nil, custody: custody, caseId: row.spec.caseId,
                                     objects: ["requestHash": hash], details: ["priority": row.spec.priority.rawValue], logger: logger)
                let envelope = Envelope(type: .request, id: UUID.derived("request", id.lowercased), requestId: id, sender: "broker",
                                        body: RequestBody(request: approved, requestHash: hash, deliverBy: try await LegalClock.deliveryDeadline(conn, id, logger: logger)))
                try await Self.enqueue(conn, envelope, topic: emergency ? Topics.toProviderUrgent(row.spec.providerId) : Topics.toProvider(row.spec.providerId),
                                       urgent: emergency, signer: signer, logger: logger)
                urgent = urgent || emergency
            }
            return urgent
        }
        if urgent { outboxWakeup.signal() }
    }

    public func reject(_ id: UUID, by user: AuthenticatedUser, reason: String?) async throws {
        guard user.roles.contains(.approver) else { throw BrokerError(.forbidden, "only approvers reject requests") }
        guard (reason?.count ?? 0) <= 2000 else {
            throw BrokerError(.invalid, "invalid decision", violations: [FieldViolation(field: "reason", rule: "must be at most 2000 characters")])
        }
        try await client.custodyTransaction(logger: logger) { conn, custody in
            // A request to several providers is decided as one: every part at once.
            for id in try await Self.parts(conn, id, agency: user.agency, logger: logger) {
                let row = try await Self.lockRequest(conn, id, agency: user.agency, logger: logger)
                try Self.check(.reject, from: row.state, by: .approver)
                guard row.submittedBy != user.id else { throw BrokerError(.forbidden, "the submitter of a request cannot decide on it (four eyes)") }
                try await conn.query("UPDATE requests SET state = 'rejected', updated_at = now() WHERE id = \(id)", logger: logger)
                try await Self.event(conn, id, .rejected, actor: user.actor, note: reason, custody: custody, caseId: row.spec.caseId, logger: logger)
            }
        }
    }

    /// A request as `viewer` may see it: one of its own agency's (nil: internal use, any).
    public func request(_ id: UUID, viewer: AuthenticatedUser?) async throws -> API.RequestView {
        let agency = viewer?.agency
        let rows = try await client.query("""
            SELECT r.spec, r.state, s.name, a.name, r.request_hash, r.created_at, r.review, v.name, r.reviewed_at,
                   r.progress_phase, r.progress_percent, r.progress_at
            FROM requests r JOIN cases c ON c.id = r.case_id
                 LEFT JOIN users s ON s.id = r.submitted_by LEFT JOIN users a ON a.id = r.approved_by LEFT JOIN users v ON v.id = r.reviewed_by
            WHERE r.id = \(id) AND (\(agency)::text IS NULL OR c.agency = \(agency))
            """, logger: logger)
        var found: (String, String, String?, String?, String?, Date, String?, String?, Date?, String?, Int?, Date?)?
        for try await r in rows.decode((String, String, String?, String?, String?, Date, String?, String?, Date?, String?, Int?, Date?).self) { found = r }
        guard let (specJSON, state, submittedBy, approvedBy, hash, createdAt, review, reviewedBy, reviewedAt, phase, percent, progressAt) = found else {
            throw BrokerError(.notFound, "no such request")
        }
        let timeline = try await timelineEntries(id)
        var packages: [API.PackageSummary] = []
        // Packages with their manifest, then those whose chunks are still arriving without one.
        for try await (pid, pstate, count, size, sha, msha, received) in try await client.query("""
            SELECT a.package_id, coalesce(p.state, 'receiving'), p.chunk_count, p.content_size, p.chunks_root, p.manifest_sha256,
                   (SELECT count(*) FROM package_chunks c WHERE c.package_id = a.package_id)
            FROM arriving_packages a LEFT JOIN packages p ON p.id = a.package_id
            WHERE a.request_id = \(id) ORDER BY p.received_at NULLS LAST, a.first_at
            """, logger: logger).decode((UUID, String, Int?, Int64?, String?, String?, Int).self) {
            packages.append(API.PackageSummary(id: pid, state: PackageState(rawValue: pstate) ?? .receiving, chunkCount: count,
                                               chunksReceived: received, contentSize: size, chunksRoot: sha, manifestSha256: msha))
        }
        var clocks: [API.ClockView] = []
        for try await (clock, started, deadline, paused, stopped, late, escalated, expired) in try await client.query("""
            SELECT clock, started_at, deadline, paused_at, stopped_at, late_at, escalated_at, expired_at FROM request_clocks WHERE request_id = \(id) ORDER BY deadline
            """, logger: logger).decode((String, Date, Date, Date?, Date?, Date?, Date?, Date?).self) {
            clocks.append(API.ClockView(clock: clock, startedAt: Timestamp.format(started), deadline: Timestamp.format(deadline),
                                        pausedAt: paused.map(Timestamp.format), stoppedAt: stopped.map(Timestamp.format), lateAt: late.map(Timestamp.format),
                                        escalatedAt: escalated.map(Timestamp.format), expiredAt: expired.map(Timestamp.format)))
        }
        let reviewView = review.flatMap(API.ReviewView.State.init(rawValue:)).map { s in
            API.ReviewView(state: s, dueAt: clocks.first { $0.clock == LegalClock.Kind.review.rawValue }?.deadline,
                           reviewedBy: reviewedBy, reviewedAt: reviewedAt.map(Timestamp.format))
        }
        return API.RequestView(
            id: id, state: RequestState(rawValue: state) ?? .draft,
            spec: try JSONDecoder().decode(RequestSpec.self, from: Data(specJSON.utf8)),
            submittedBy: submittedBy, approvedBy: approvedBy, requestHash: hash,
            createdAt: Timestamp.format(createdAt), timeline: timeline, packages: packages, clocks: clocks, review: reviewView,
            clarifications: try await clarifications(id), parts: try await parts(of: id),
            progress: phase.flatMap { p in percent.flatMap { n in progressAt.map { API.ProgressView(phase: p, percent: n, at: Timestamp.format($0)) } } })
    }

    /// The parts of the request's group, or nil for a request to one provider.
    func parts(of id: UUID) async throws -> [API.PartView]? {
        var out: [API.PartView] = []
        for try await (part, provider, state) in try await client.query("""
            SELECT id, provider_id, state FROM requests WHERE group_id = (SELECT group_id FROM requests WHERE id = \(id)) ORDER BY created_at, id
            """, logger: logger).decode((UUID, String, String).self) {
            out.append(API.PartView(id: part, providerId: provider, state: RequestState(rawValue: state) ?? .draft))
        }
        return out.isEmpty ? nil : out
    }

    /// A request's timeline as `viewer` may see it: every transition, decision and provider
    /// response, oldest first.
    public func timeline(_ id: UUID, viewer: AuthenticatedUser) async throws -> API.Timeline {
        API.Timeline(requestId: id, state: try await requestState(id, viewer: viewer), timeline: try await timelineEntries(id))
    }

    /// The state of one of the viewer's agency's requests (another agency's: not found).
    public func requestState(_ id: UUID, viewer: AuthenticatedUser) async throws -> RequestState {
        var state: String?
        for try await s in try await client.query("""
            SELECT r.state FROM requests r JOIN cases c ON c.id = r.case_id WHERE r.id = \(id) AND c.agency = \(viewer.agency)
            """, logger: logger).decode(String.self) { state = s }
        guard let state else { throw BrokerError(.notFound, "no such request") }
        return RequestState(rawValue: state) ?? .draft
    }

    private func timelineEntries(_ id: UUID) async throws -> [API.TimelineEntry] {
        var timeline: [API.TimelineEntry] = []
        for try await (at, st, actor, note) in try await client.query(
            "SELECT at, state, actor, note FROM request_events WHERE request_id = \(id) ORDER BY id", logger: logger
        ).decode((Date, String, String, String?).self) {
            timeline.append(API.TimelineEntry(at: Timestamp.format(at), state: st, actor: actor, note: note))
        }
        return timeline
    }

    // MARK: Shared pieces

    struct RequestRow {
        var state: RequestState
        var spec: RequestSpec
        var createdBy: UUID
        var submittedBy: UUID?
        var providerId: String
        var requestHash: String?
    }

    /// Locks a request for a change; with `agency`, only one of that agency's (else not found).
    /// The request and, for a request to several providers, its other parts, in a fixed order
    /// (so that concurrent decisions lock them alike). Another agency's request: none.
    static func parts(_ conn: PostgresConnection, _ id: UUID, agency: String?, logger: Logger) async throws -> [UUID] {
        var out: [UUID] = []
        for try await part in try await conn.query("""
            SELECT r.id FROM requests r JOIN cases c ON c.id = r.case_id
            WHERE (r.id = \(id) OR r.group_id = (SELECT group_id FROM requests WHERE id = \(id))) AND (\(agency)::text IS NULL OR c.agency = \(agency))
            ORDER BY r.id
            """, logger: logger).decode(UUID.self) { out.append(part) }
        guard !out.isEmpty else { throw BrokerError(.notFound, "no such request") }
        return out
    }

    static func lockRequest(_ conn: PostgresConnection, _ id: UUID, agency: String? = nil, logger: Logger) async throws -> RequestRow {
        let rows = try await conn.query("""
            SELECT r.state, r.spec, r.created_by, r.submitted_by, r.provider_id, r.request_hash
            FROM requests r JOIN cases c ON c.id = r.case_id
            WHERE r.id = \(id) AND (\(agency)::text IS NULL OR c.agency = \(agency)) FOR UPDATE OF r
            """, logger: logger)
        for try await (state, spec, createdBy, submittedBy, provider, hash) in rows.decode((String, String, UUID, UUID?, String, String?).self) {
            return RequestRow(
                state: RequestState(rawValue: state) ?? .draft,
                spec: try JSONDecoder().decode(RequestSpec.self, from: Data(spec.utf8)),
                createdBy: createdBy, submittedBy: submittedBy, providerId: provider, requestHash: hash)
        }
        throw BrokerError(.notFound, "no such request")
    }

    /// Whether `user` acts on the request as its author (`RequestLifecycle.Owner.author`): the
    /// investigator who drafted it, or a member of its case.
    static func actsAsAuthor(_ conn: PostgresConnection, _ row: RequestRow, _ user: AuthenticatedUser, logger: Logger) async throws -> Bool {
        if row.createdBy == user.id { return true }
        guard user.roles.contains(.investigator) else { return false }
        return try await isCaseMember(conn, row.spec.caseId, user.id, logger: logger)
    }

    static func userName(_ conn: PostgresConnection, _ id: UUID, logger: Logger) async throws -> String {
        for try await name in try await conn.query("SELECT name FROM users WHERE id = \(id)", logger: logger).decode(String.self) {
            return name
        }
        throw BrokerError(.notFound, "no such user")
    }

    /// A step in the request's timeline, and its custody event (kind `request.<state>`). The
    /// note stays in the timeline; the custody log gets only its hash (it may be free text).
    static func event(_ conn: PostgresConnection, _ id: UUID, _ state: RequestState, actor: CustodyEvent.Actor, note: String?,
                      custody: CustodyRecorder, caseId: UUID? = nil, packageId: UUID? = nil,
                      objects: [String: String] = [:], details: [String: String] = [:], logger: Logger) async throws {
        try await conn.query(
            "INSERT INTO request_events (request_id, state, actor, note) VALUES (\(id), \(state.rawValue), \(actor.id), \(note))",
            logger: logger)
        var objects = objects
        if let note { objects["noteSha256"] = Digest.sha256Hex(Array(note.utf8)) }
        custody.record(CustodyEvent(kind: .request(state.rawValue), at: Timestamp.now(), actor: actor,
                                    subject: .init(caseId: caseId, requestId: id, packageId: packageId), objects: objects, details: details))
        // A refusal's reason is a code of the refusal message (an enum), not free text.
        try await LiveEvents.publish(conn, requestId: id, kind: .request, packageId: packageId, state: state.rawValue, actor: actor.id,
                                     reason: state == .refused ? details["reason"] : nil, logger: logger)
    }

    /// Checks a person's `transition` against `RequestLifecycle`: `BrokerError.conflict` (409)
    /// from a state it does not leave from, `.forbidden` (403) for an owner who may not cause it.
    static func check(_ transition: RequestLifecycle.Transition, from state: RequestState, by owner: RequestLifecycle.Owner) throws {
        switch RequestLifecycle.decide(transition, from: state, by: owner) {
        case .move, .stay: return
        case .refuse(let refusal):
            if case .notOwner = refusal { throw BrokerError(.forbidden, refusal.reason) }
            throw BrokerError(.conflict, refusal.reason)
        }
    }

    /// Carries out `transition` (a message's or a clock's: `RequestLifecycle`) on a request,
    /// in the caller's transaction: the request moves if its state is one the transition
    /// leaves from, and then its event is recorded and the clocks it satisfies stop. Returns
    /// whether it moved; late or repeated messages thus never move a request back.
    /// `recordAnyway`: the step is on the timeline even when the request does not move (a
    /// second partial package, a confirmation after an extension).
    @discardableResult
    static func advance(_ conn: PostgresConnection, _ id: UUID, _ transition: RequestLifecycle.Transition, actor: CustodyEvent.Actor, note: String? = nil,
                        custody: CustodyRecorder, caseId: UUID? = nil, packageId: UUID? = nil, details: [String: String] = [:],
                        recordAnyway: Bool = false, logger: Logger) async throws -> Bool {
        let rule = RequestLifecycle.rule(transition)
        let rows = try await conn.query(
            "UPDATE requests SET state = \(rule.to.rawValue), updated_at = now() WHERE id = \(id) AND state = ANY(\(rule.from.map(\.rawValue))) RETURNING 1",
            logger: logger)
        let moved = try await rows.decode(Int.self).first { _ in true } != nil
        if moved || recordAnyway {
            try await event(conn, id, rule.to, actor: actor, note: note, custody: custody, caseId: caseId, packageId: packageId, details: details,
                            logger: logger)
        }
        if moved { try await LegalClock.stop(conn, id, by: transition, logger: logger) }
        return moved
    }

    /// Writes a signed message into the outbox, in the caller's transaction. Urgent messages
    /// are relayed before all others.
    static func enqueue<Body>(_ conn: PostgresConnection, _ envelope: Envelope<Body>, topic: String, urgent: Bool = false, signer: SigningKey,
                              logger: Logger) async throws {
        let payload = try SignedEnvelope.encode(envelope, signer: signer)
        try await conn.query("""
            INSERT INTO outbox (message_id, message_type, request_id, topic, payload, urgent)
            VALUES (\(envelope.id), \(envelope.type.rawValue), \(envelope.requestId), \(topic), \(ByteBuffer(bytes: payload)), \(urgent))
            ON CONFLICT (message_id) DO NOTHING
            """, logger: logger)
    }
}
