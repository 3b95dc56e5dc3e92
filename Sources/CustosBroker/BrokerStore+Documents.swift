import CustosCustody
import CustosEvidence
import CustosModel
import Foundation
import Logging
import NIOCore
import PostgresNIO

extension BrokerStore {
    /// Stores a decision document for the uploader's agency, named by its SHA-256 (uploading
    /// the same bytes again is harmless). Investigators upload; the hash is what a request's
    /// legal basis names.
    public func uploadDocument(_ bytes: ByteBuffer, mediaType: String, by user: AuthenticatedUser) async throws -> API.DocumentView {
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, "only investigators upload decisions") }
        guard LegalDocument.mediaTypes.contains(mediaType) else {
            throw BrokerError(.invalid, "a decision is sent as one of \(LegalDocument.mediaTypes.sorted().joined(separator: ", ")), not \(mediaType)")
        }
        guard (1...LegalDocument.maximumSize).contains(bytes.readableBytes) else {
            throw BrokerError(.invalid, "a decision is 1 to \(LegalDocument.maximumSize) bytes")
        }
        let sha = Digest.sha256Hex(Array(bytes.readableBytesView))
        let document = LegalDocument(sha256: sha, mediaType: mediaType, size: bytes.readableBytes)
        return try await client.custodyTransaction(logger: logger) { conn, custody in
            let fresh = try await conn.query("""
                INSERT INTO documents (agency, sha256, media_type, size, content, uploaded_by)
                VALUES (\(user.agency), \(sha), \(mediaType), \(bytes.readableBytes), \(bytes), \(user.id))
                ON CONFLICT (agency, sha256) DO NOTHING RETURNING 1
                """, logger: logger).decode(Int.self).first { _ in true } != nil
            if fresh {
                custody.record(CustodyEvent(kind: .documentUploaded, at: Timestamp.now(), actor: user.actor, subject: .init(agency: user.agency),
                                            objects: ["documentSha256": sha], details: ["mediaType": mediaType, "size": "\(bytes.readableBytes)"]))
            }
            return try await Self.document(conn, sha, agency: user.agency, logger: logger) ?? API.DocumentView(document: document, uploadedBy: user.name, uploadedAt: Timestamp.now())
        }
    }

    /// A document of the caller's agency, and its bytes; the access is a custody event.
    public func document(_ sha256: String, viewer: AuthenticatedUser) async throws -> (API.DocumentView, ByteBuffer) {
        var found: (API.DocumentView, ByteBuffer)?
        for try await (type, size, by, at, content) in try await client.query("""
            SELECT d.media_type, d.size, u.name, d.uploaded_at, d.content FROM documents d JOIN users u ON u.id = d.uploaded_by
            WHERE d.agency = \(viewer.agency) AND d.sha256 = \(sha256)
            """, logger: logger).decode((String, Int, String, Date, ByteBuffer).self) {
            found = (API.DocumentView(document: LegalDocument(sha256: sha256, mediaType: type, size: size), uploadedBy: by, uploadedAt: Timestamp.format(at)),
                     content)
        }
        guard let found else { throw BrokerError(.notFound, "no such document") }
        try await recordAccess(.documentViewed, by: viewer, subject: .init(agency: viewer.agency), objects: ["documentSha256": sha256])
        return found
    }

    static func document(_ conn: PostgresConnection, _ sha256: String, agency: String, logger: Logger) async throws -> API.DocumentView? {
        for try await (type, size, by, at) in try await conn.query("""
            SELECT d.media_type, d.size, u.name, d.uploaded_at FROM documents d JOIN users u ON u.id = d.uploaded_by
            WHERE d.agency = \(agency) AND d.sha256 = \(sha256)
            """, logger: logger).decode((String, Int, String, Date).self) {
            return API.DocumentView(document: LegalDocument(sha256: sha256, mediaType: type, size: size), uploadedBy: by, uploadedAt: Timestamp.format(at))
        }
        return nil
    }

    /// The rule a request's decision document must meet, or nil: uploaded by the request's
    /// agency, as the spec describes it.
    static func checkDocument(_ conn: PostgresConnection, _ named: LegalDocument, agency: String, logger: Logger) async throws -> FieldViolation? {
        guard let held = try await document(conn, named.sha256, agency: agency, logger: logger) else {
            return FieldViolation(field: "legalBasis.document.sha256", rule: "must name a document your agency uploaded (POST /v1/documents)")
        }
        guard held.document == named else {
            return FieldViolation(field: "legalBasis.document", rule: "must give the uploaded document's media type and size")
        }
        return nil
    }
}
