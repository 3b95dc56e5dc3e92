import Crypto
import CustosCustody
import CustosEvidence
import CustosModel
import Foundation
import NIOCore
import PostgresNIO

/// Which JWTs the broker accepts (`auth.jwt.*`).
public struct JWTSettings: Sendable {
    /// `auth.jwt.publicKeyFile`: the identity provider's public key (P-256 → ES256, RSA → PS256).
    public var keys: [VerifyingKey]
    /// `auth.jwt.audience`: the `aud` a token must name (default `custos`).
    public var audience: String
    /// `auth.jwt.issuer`: the `iss` a token must carry, when set.
    public var issuer: String?
    /// Checks tokens against the settings above.
    public let verifier: JSONWebToken.Verifier

    /// Throws `KeyError` when a key cannot verify JWTs.
    public init(keys: [VerifyingKey], audience: String = "custos", issuer: String? = nil) throws(KeyError) {
        self.keys = keys
        self.audience = audience
        self.issuer = issuer
        verifier = try JSONWebToken.Verifier(keys: keys, audience: audience, issuer: issuer)
    }
}

extension BrokerStore {
    /// The person a verified JWT names. Its roles and agency come from the token; the first
    /// time a subject is seen it is recorded as a user (so cases and requests can name it),
    /// which is an `admin.user-added` custody event by the identity provider.
    public func user(claims: JSONWebToken.Claims) async throws -> AuthenticatedUser {
        let roles = Set(claims.roles.compactMap(Role.init(rawValue:)))
        guard let primary = Role.allCases.first(where: roles.contains) else {
            throw BrokerError(.unauthorized, "the token names no Custos role")
        }
        let id = UUID.derived("jwt-subject", claims.sub)
        var stored: (String, String)?
        for try await row in try await client.query("SELECT role, agency FROM users WHERE id = \(id)", logger: logger).decode((String, String).self) {
            stored = row
        }
        if stored.map({ $0 != (primary.rawValue, claims.agency) }) ?? true {
            try await client.custodyTransaction(logger: logger) { conn, custody in
                let agencyExists = try await conn.query("SELECT 1 FROM agencies WHERE id = \(claims.agency)", logger: logger)
                    .decode(Int.self).first { _ in true } != nil
                guard agencyExists else { throw BrokerError(.unauthorized, "the token names an agency this broker does not know") }
                var random = SystemRandomNumberGenerator()
                let unusable = ByteBuffer(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &random) })  // no opaque token logs in as it
                do {
                    let inserted = try await conn.query("""
                        INSERT INTO users (id, name, role, token_sha256, agency) VALUES (\(id), \(claims.sub), \(primary.rawValue), \(unusable), \(claims.agency))
                        ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, agency = EXCLUDED.agency
                        RETURNING (xmax = 0)
                        """, logger: logger).decode(Bool.self).first { _ in true } ?? false
                    if inserted {
                        custody.record(CustodyEvent(kind: .userAdded, at: Timestamp.now(), actor: .init(type: .admin, id: "identity-provider"),
                                                    subject: .init(user: claims.sub, agency: claims.agency), details: ["role": primary.rawValue, "via": "jwt"]))
                    }
                } catch let e as PSQLError where e.serverInfo?[.sqlState] == "23505" {
                    throw BrokerError(.unauthorized, "the token's subject is the name of a user created here")
                }
            }
        }
        var user = AuthenticatedUser(id: id, name: claims.sub, role: primary, agency: claims.agency)
        user.roles = roles
        return user
    }
}
