import Crypto
import CustosCustody
import CustosModel
import Foundation
import HummingbirdBcrypt
import HummingbirdOTP
import NIOCore
import NIOPosix
import PostgresNIO

/// The portal's sign-in: a bcrypt password (hummingbird-auth's `Bcrypt`) with a mandatory
/// RFC 6238 TOTP second factor (`TOTP`, 6 digits, 30 s steps, HMAC-SHA-1 as authenticator apps
/// expect), or a registered TLS client certificate. Sessions are rows of `portal_sessions`.
public enum PortalSignIn {
    /// Failed sign-ins in a row before the user is locked out.
    public static let attemptsBeforeLockout = 5
    /// How long a lock-out lasts.
    public static let lockout: TimeInterval = 15 * 60
    /// A session ends after this long without a request…
    public static let idleTimeout: TimeInterval = 15 * 60
    /// …and this long after sign-in, whatever happens.
    public static let maximumLifetime: TimeInterval = 8 * 3600
    /// Approving, rejecting, reviewing and exporting ask for the second factor again when the
    /// last one is older than this.
    public static let secondFactorFreshness: TimeInterval = 5 * 60
    /// Shortest password `users enrol` accepts (NIST SP 800-63B §5.1.1.2 asks at least 8; 12 here).
    public static let minimumPasswordLength = 12
    /// Time steps either side of now whose code is accepted (RFC 6238 §5.2: clock drift).
    public static let drift = 1

    /// The TOTP time step (RFC 6238 §4: T = floor(unix time / 30)) of a date.
    public static func step(_ date: Date) -> Int64 { Int64(date.timeIntervalSince1970.rounded(.down)) / 30 }

    /// The time step whose code `code` is, among `now`'s and its `drift` neighbours, for
    /// `secret`; nil when none matches. `code` is exactly 6 ASCII digits.
    public static func matchingStep(code: String, secret: String, now: Date = Date()) -> Int64? {
        guard code.utf8.count == 6, code.utf8.allSatisfy({ (0x30...0x39).contains($0) }), let value = Int(code) else { return nil }
        let totp = TOTP(secret: secret)
        let current = step(now)
        for delta in (-Int64(drift))...Int64(drift) {
            let s = current + delta
            if totp.compute(date: Date(timeIntervalSince1970: TimeInterval(s * 30))) == value { return s }
        }
        return nil
    }

    /// The 6-digit code of `secret` at `date` (RFC 6238 §4), zero-padded: what an
    /// authenticator app shows.
    public static func code(secret: String, at date: Date = Date()) -> String {
        let value = TOTP(secret: secret).compute(date: date)
        let text = String(value)
        return String(repeating: "0", count: max(0, 6 - text.count)) + text
    }

    /// The `otpauth://totp/…` URI an authenticator app reads (Google Authenticator's Key Uri Format).
    public static func authenticatorURI(secret: String, user: String) -> String {
        TOTP(secret: secret).createAuthenticatorURL(label: "Custos:\(user)", issuer: "Custos")
    }

    /// What a failed sign-in tells the person: never which of name, password or code was wrong.
    public enum Failure: Error, Equatable {
        case wrongCredentials
        case lockedOut(until: Date)
    }
}

/// One signed-in portal session.
public struct PortalSession: Sendable {
    public var user: AuthenticatedUser
    /// The token every form of this session carries (CSRF).
    public var csrf: String
    public var method: String
    public var certificateSha256: String?
    public var secondFactorAt: Date
    public var createdAt: Date
    /// Whether the user has a TOTP secret (certificate users may have none).
    public var hasTOTP: Bool
    /// The second factor is recent enough for approving, rejecting, reviewing and exporting.
    public func secondFactorFresh(now: Date = Date()) -> Bool {
        now.timeIntervalSince(secondFactorAt) < PortalSignIn.secondFactorFreshness
    }
}

extension BrokerStore {
    /// Gives a user a portal password and a new TOTP secret (both replace any earlier ones) and
    /// returns the secret, to be shown once as an `otpauth://` URI. Recorded as
    /// `admin.user-enrolled`. Throws `.invalid` for a password shorter than
    /// `PortalSignIn.minimumPasswordLength`, `.notFound` for an unknown user.
    public func enrol(name: String, password: String, by actor: CustodyEvent.Actor) async throws -> String {
        guard password.count >= PortalSignIn.minimumPasswordLength, password.utf8.count <= 72 else {
            throw BrokerError(.invalid, "a password is \(PortalSignIn.minimumPasswordLength) to 72 bytes long (bcrypt reads 72)")
        }
        var random = SystemRandomNumberGenerator()
        // RFC 4226 §4 asks at least 128 bits of shared secret; these are 160, as 32 base-32-safe characters.
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        let secret = String((0..<32).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &random)] })
        let hash = Bcrypt.hash(password, cost: 12)
        try await client.custodyTransaction(logger: logger) { conn, custody in
            let agency = try await conn.query("""
                UPDATE users SET password_bcrypt = \(hash), totp_secret = \(secret), totp_last_step = 0, failed_signins = 0, locked_until = NULL
                WHERE name = \(name) RETURNING agency
                """, logger: logger).decode(String.self).first { _ in true }
            guard let agency else { throw BrokerError(.notFound, "no such user") }
            // A new password ends every session the old one opened.
            try await conn.query("""
                UPDATE portal_sessions SET ended_at = now() WHERE user_id = (SELECT id FROM users WHERE name = \(name)) AND ended_at IS NULL
                """, logger: logger)
            custody.record(CustodyEvent(kind: .userEnrolled, at: Timestamp.now(), actor: actor, subject: .init(user: name, agency: agency)))
        }
        return secret
    }

    /// Checks a name, password and TOTP code and opens a session; returns its cookie token.
    /// Every failure counts towards the lock-out (`PortalSignIn.attemptsBeforeLockout`), and the
    /// one that reaches it is recorded as `user.locked-out`; success is `user.signed-in`.
    public func signIn(name: String, password: String, code: String, address: String?, agent: String?,
                       now: Date = Date()) async throws -> Result<String, PortalSignIn.Failure> {
        struct Row { var id: UUID; var hash: String?; var secret: String?; var lastStep: Int64; var lockedUntil: Date?; var agency: String }
        var row: Row?
        for try await (id, hash, secret, lastStep, lockedUntil, agency) in try await client.query("""
            SELECT id, password_bcrypt, totp_secret, totp_last_step, locked_until, agency FROM users WHERE name = \(name) AND role <> 'witness'
            """, logger: logger).decode((UUID, String?, String?, Int64, Date?, String).self) {
            row = Row(id: id, hash: hash, secret: secret, lastStep: lastStep, lockedUntil: lockedUntil, agency: agency)
        }
        if let until = row?.lockedUntil, until > now { return .failure(.lockedOut(until: until)) }
        // bcrypt runs whether or not the name exists, so that timing does not tell names apart,
        // and on NIO's thread pool: its quarter second would hold a concurrency thread.
        let hash = row?.hash ?? Self.unusableBcrypt
        let passwordOK = try await NIOThreadPool.singleton.runIfActive { Bcrypt.verify(password, hash: hash) }
        let step = row?.secret.flatMap { PortalSignIn.matchingStep(code: code, secret: $0, now: now) }
        guard let row, row.hash != nil, passwordOK, let step, step > row.lastStep else {
            guard let row else { return .failure(.wrongCredentials) }
            return try await client.custodyTransaction(logger: logger) { conn, custody in
                let locked = try await conn.query("""
                    UPDATE users SET failed_signins = CASE WHEN failed_signins + 1 >= \(PortalSignIn.attemptsBeforeLockout) THEN 0 ELSE failed_signins + 1 END,
                                     locked_until = CASE WHEN failed_signins + 1 >= \(PortalSignIn.attemptsBeforeLockout)
                                                         THEN \(now.addingTimeInterval(PortalSignIn.lockout)) ELSE locked_until END
                    WHERE id = \(row.id) RETURNING locked_until > \(now)
                    """, logger: logger).decode(Bool?.self).first { _ in true }
                if locked == true {
                    custody.record(CustodyEvent(kind: .userLockedOut, at: Timestamp.now(), actor: .init(type: .user, id: name, address: address, agent: agent),
                                                subject: .init(user: name, agency: row.agency)))
                    return .failure(.lockedOut(until: now.addingTimeInterval(PortalSignIn.lockout)))
                }
                return .failure(.wrongCredentials)
            }
        }
        guard let token = try await openSession(userId: row.id, name: name, agency: row.agency, method: "password", certificate: nil,
                                                totpStep: step, address: address, agent: agent, now: now) else {
            return .failure(.wrongCredentials)  // the same code used meanwhile, or locked meanwhile
        }
        return .success(token)
    }

    /// Opens a session for the user a verified TLS client certificate names (`users
    /// add-certificate`); nil when the certificate is not registered.
    public func signIn(certificateSha256: String, address: String?, agent: String?) async throws -> String? {
        // An outside witness reads the custody log through the API only, as there.
        guard let user = try await user(certificateSha256: certificateSha256), !user.isOnlyWitness else { return nil }
        return try await openSession(userId: user.id, name: user.name, agency: user.agency, method: "certificate", certificate: certificateSha256,
                                     totpStep: nil, address: address, agent: agent, now: Date())
    }

    /// Opens a session; nil when a TOTP step is given and it is not newer than the last one
    /// accepted, or the user is locked out (checked and recorded in one statement, so that two
    /// sign-ins with one code, or one racing a lock-out, cannot both succeed).
    private func openSession(userId: UUID, name: String, agency: String, method: String, certificate: String?, totpStep: Int64?,
                             address: String?, agent: String?, now: Date) async throws -> String? {
        let token = Self.randomToken()
        let csrf = Self.randomToken()
        return try await client.custodyTransaction(logger: logger) { conn, custody -> String? in
            if let totpStep {
                let accepted = try await conn.query("""
                    UPDATE users SET totp_last_step = \(totpStep), failed_signins = 0, locked_until = NULL
                    WHERE id = \(userId) AND totp_last_step < \(totpStep) AND (locked_until IS NULL OR locked_until <= \(now)) RETURNING 1
                    """, logger: logger).decode(Int.self).first { _ in true } != nil
                guard accepted else { return nil }
            }
            // Sessions past their lifetime are of no use to anyone: dropped as new ones open.
            try await conn.query("""
                DELETE FROM portal_sessions WHERE user_id = \(userId) AND (ended_at IS NOT NULL OR created_at < \(now.addingTimeInterval(-PortalSignIn.maximumLifetime)))
                """, logger: logger)
            try await conn.query("""
                INSERT INTO portal_sessions (id_sha256, user_id, csrf, method, certificate_sha256)
                VALUES (\(ByteBuffer(bytes: Self.tokenHash(token))), \(userId), \(csrf), \(method), \(certificate))
                """, logger: logger)
            custody.record(CustodyEvent(kind: .userSignedIn, at: Timestamp.now(), actor: .init(type: .user, id: name, address: address, agent: agent),
                                        subject: .init(user: name, agency: agency), details: ["via": method]))
            return token
        }
    }

    /// The open session a cookie token names: not ended, seen within the idle time-out and
    /// younger than the maximum lifetime. Seeing it moves its idle time-out on (written at most
    /// every 30 s, so that page loads do not each write).
    /// `touch`: false for what a page does on its own (the live part's refreshes, the event
    /// stream), which must not keep an unattended session alive.
    public func session(token: String, now: Date = Date(), touch: Bool = true) async throws -> PortalSession? {
        guard token.utf8.count == 64 else { return nil }
        let hash = ByteBuffer(bytes: Self.tokenHash(token))
        let idle = now.addingTimeInterval(-PortalSignIn.idleTimeout)
        let born = now.addingTimeInterval(-PortalSignIn.maximumLifetime)
        var found: PortalSession?
        var lastSeen = now
        for try await (id, name, role, agency, csrf, method, cert, factorAt, createdAt, seen, secret) in try await client.query("""
            SELECT u.id, u.name, u.role, u.agency, s.csrf, s.method, s.certificate_sha256, s.second_factor_at, s.created_at, s.last_seen_at, u.totp_secret
            FROM portal_sessions s JOIN users u ON u.id = s.user_id
            WHERE s.id_sha256 = \(hash) AND s.ended_at IS NULL AND s.last_seen_at > \(idle) AND s.created_at > \(born)
            """, logger: logger).decode((UUID, String, String, String, String, String, String?, Date, Date, Date, String?).self) {
            // A role this version does not know grants nothing.
            guard let role = Role(rawValue: role) else { return nil }
            found = PortalSession(user: AuthenticatedUser(id: id, name: name, role: role, agency: agency),
                                  csrf: csrf, method: method, certificateSha256: cert, secondFactorAt: factorAt, createdAt: createdAt, hasTOTP: secret != nil)
            lastSeen = seen
        }
        if touch, found != nil, now.timeIntervalSince(lastSeen) > 30 {
            try await client.query("UPDATE portal_sessions SET last_seen_at = \(now) WHERE id_sha256 = \(hash)", logger: logger)
        }
        return found
    }

    /// Checks a TOTP code again inside a session (before approving, rejecting, reviewing or
    /// exporting) and, when right, renews the session's second factor. A code is accepted once.
    public func confirmSecondFactor(token: String, userId: UUID, code: String, now: Date = Date()) async throws -> Bool {
        var secret: String?
        for try await s in try await client.query("SELECT totp_secret FROM users WHERE id = \(userId)", logger: logger).decode(String?.self) { secret = s }
        let step = secret.flatMap { PortalSignIn.matchingStep(code: code, secret: $0, now: now) }
        return try await client.custodyTransaction(logger: logger) { conn, custody in
            if let step {
                let accepted = try await conn.query("""
                    UPDATE users SET totp_last_step = \(step), failed_signins = 0 WHERE id = \(userId) AND totp_last_step < \(step) RETURNING 1
                    """, logger: logger).decode(Int.self).first { _ in true } != nil
                if accepted {
                    try await conn.query("UPDATE portal_sessions SET second_factor_at = \(now) WHERE id_sha256 = \(ByteBuffer(bytes: Self.tokenHash(token)))",
                                         logger: logger)
                    return true
                }
            }
            // A wrong code counts as a failed sign-in: the fifth in a row locks the user out and
            // ends their sessions, so that a stolen session cannot guess its way to an approval.
            let locked = try await conn.query("""
                UPDATE users SET failed_signins = CASE WHEN failed_signins + 1 >= \(PortalSignIn.attemptsBeforeLockout) THEN 0 ELSE failed_signins + 1 END,
                                 locked_until = CASE WHEN failed_signins + 1 >= \(PortalSignIn.attemptsBeforeLockout)
                                                     THEN \(now.addingTimeInterval(PortalSignIn.lockout)) ELSE locked_until END
                WHERE id = \(userId) RETURNING locked_until > \(now), name, agency
                """, logger: logger).decode((Bool?, String, String).self).first { _ in true }
            if let locked, locked.0 == true {
                try await conn.query("UPDATE portal_sessions SET ended_at = \(now) WHERE user_id = \(userId) AND ended_at IS NULL", logger: logger)
                custody.record(CustodyEvent(kind: .userLockedOut, at: Timestamp.now(), actor: .init(type: .user, id: locked.1),
                                            subject: .init(user: locked.1, agency: locked.2)))
            }
            return false
        }
    }

    /// Ends a session (sign-out), recorded as `user.signed-out`.
    public func signOut(token: String, user: AuthenticatedUser) async throws {
        try await client.custodyTransaction(logger: logger) { conn, custody in
            let ended = try await conn.query("""
                UPDATE portal_sessions SET ended_at = now() WHERE id_sha256 = \(ByteBuffer(bytes: Self.tokenHash(token))) AND ended_at IS NULL RETURNING 1
                """, logger: logger).decode(Int.self).first { _ in true } != nil
            if ended { custody.record(CustodyEvent(kind: .userSignedOut, at: Timestamp.now(), actor: user.actor, subject: .init(user: user.name, agency: user.agency))) }
        }
    }

    /// A bcrypt hash no password matches (cost 12, as real ones), checked when a name is unknown.
    static let unusableBcrypt = "$2b$12$" + String(repeating: "A", count: 53)

    /// 32 random bytes as 64 lower-case hex digits.
    static func randomToken() -> String {
        var random = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) }.hexString
    }

    // MARK: What the portal shows beyond the API

    /// One user of an agency, for its admin.
    public struct AgencyUser: Sendable {
        public var name: String
        public var role: String
        public var email: String?
        public var enrolled: Bool
        public var certificates: Int
        public var lockedUntil: Date?
        public var createdAt: Date
    }

    /// The users of `viewer`'s agency (admins only: `.forbidden` otherwise), by name.
    public func agencyUsers(viewer: AuthenticatedUser) async throws -> [AgencyUser] {
        guard viewer.roles.contains(.admin) else { throw BrokerError(.forbidden, "only an admin lists the agency's users") }
        var users: [AgencyUser] = []
        for try await (name, role, email, enrolled, certificates, locked, created) in try await client.query("""
            SELECT u.name, u.role, u.email, u.password_bcrypt IS NOT NULL, (SELECT count(*) FROM user_certificates c WHERE c.user_id = u.id AND c.not_after > now())::int,
                   CASE WHEN u.locked_until > now() THEN u.locked_until END, u.created_at
            FROM users u WHERE u.agency = \(viewer.agency) AND u.role <> 'witness' ORDER BY u.name LIMIT 1000
            """, logger: logger).decode((String, String, String?, Bool, Int, Date?, Date).self) {
            users.append(AgencyUser(name: name, role: role, email: email, enrolled: enrolled, certificates: certificates, lockedUntil: locked, createdAt: created))
        }
        return users
    }

    /// Dead letters (provider messages the broker could not apply) counted by reason, newest
    /// first; auditors and admins only. Reasons are the broker's own words, never payload.
    public func deadLettersByReason(viewer: AuthenticatedUser) async throws -> [(reason: String, count: Int, latest: Date)] {
        guard !viewer.roles.isDisjoint(with: [.auditor, .admin]) else { throw BrokerError(.forbidden, "only auditors and admins see dead letters") }
        var rows: [(String, Int, Date)] = []
        for try await r in try await client.query("""
            SELECT reason, count(*)::int, max(received_at) FROM dead_letters GROUP BY reason ORDER BY max(received_at) DESC LIMIT 200
            """, logger: logger).decode((String, Int, Date).self) { rows.append(r) }
        return rows.map { (reason: $0.0, count: $0.1, latest: $0.2) }
    }

    /// The last `custos-broker audit` result, if one was recorded.
    public struct AuditResult: Sendable {
        public var at: Date
        public var consistent: Bool
        public var events: Int64
        public var checkpoints: Int64
        public var chunks: Int64
        public var problems: Int
    }

    /// Records what `custos-broker audit` found, for the portal's auditors.
    public func recordAudit(_ report: CustodyAudit.Report, chunks: ChunkAudit) async throws {
        try await client.query("""
            INSERT INTO audit_results (consistent, events, checkpoints, chunks, problems)
            VALUES (\(report.ok && chunks.problems.isEmpty), \(Int64(report.events)), \(Int64(report.checkpoints)), \(Int64(chunks.chunks)),
                    \(report.problems.count + chunks.problems.count + (report.firstDivergence == nil ? 0 : 1)))
            """, logger: logger)
    }

    /// The newest recorded audit result, or nil.
    public func lastAudit() async throws -> AuditResult? {
        for try await (at, ok, events, checkpoints, chunks, problems) in try await client.query("""
            SELECT at, consistent, events, checkpoints, chunks, problems FROM audit_results ORDER BY id DESC LIMIT 1
            """, logger: logger).decode((Date, Bool, Int64, Int64, Int64, Int).self) {
            return AuditResult(at: at, consistent: ok, events: events, checkpoints: checkpoints, chunks: chunks, problems: problems)
        }
        return nil
    }

    /// Registered provider ids, for the request form.
    public func providerIds() async throws -> [String] {
        var ids: [String] = []
        for try await id in try await client.query("SELECT id FROM providers ORDER BY id", logger: logger).decode(String.self) { ids.append(id) }
        return ids
    }
}
