import CustosCustody
import CustosEvidence
import CustosModel
import Foundation
import Logging
import PostgresNIO

extension BrokerStore {
    /// An investigator of the request's agency answers a provider's question. The answer goes
    /// to the provider (on the urgent topic for an emergency), and once no question is left
    /// open the provider's clocks run again, their deadlines moved by the time waited.
    public func answer(_ requestId: UUID, question: UUID, answer text: String, by user: AuthenticatedUser) async throws {
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, "only investigators answer a provider's questions") }
        let answer = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard (1...ClarificationRequestBody.maximumLength).contains(answer.count) else {
            throw BrokerError(.invalid, "invalid answer", violations: [FieldViolation(field: "answer", rule: "must be 1 to \(ClarificationRequestBody.maximumLength) characters")])
        }
        let urgent = try await client.custodyTransaction(logger: logger) { conn, custody in
            let row = try await Self.lockRequest(conn, requestId, agency: user.agency, logger: logger)
            var open: Bool?
            for try await answered in try await conn.query(
                "SELECT answer IS NOT NULL FROM clarifications WHERE id = \(question) AND request_id = \(requestId) FOR UPDATE", logger: logger
            ).decode(Bool.self) { open = !answered }
            guard let open else { throw BrokerError(.notFound, "no such question for this request") }
            guard open else { throw BrokerError(.conflict, "the question is already answered") }
            try await conn.query("""
                UPDATE clarifications SET answer = \(answer), answered_by = \(user.id), answered_at = now() WHERE id = \(question)
                """, logger: logger)
            let stillOpen = try await conn.query("SELECT count(*) FROM clarifications WHERE request_id = \(requestId) AND answer IS NULL", logger: logger)
                .decode(Int.self).first { _ in true } ?? 0
            var deliverBy: String?
            if stillOpen == 0 {
                try await LegalClock.resume(conn, requestId, logger: logger)
                deliverBy = try await LegalClock.deliveryDeadline(conn, requestId, logger: logger)
            }
            try await conn.query(
                "INSERT INTO request_events (request_id, state, actor, note) VALUES (\(requestId), 'clarification-answered', \(user.name), NULL)", logger: logger)
            custody.record(CustodyEvent(kind: .request("clarification-answered"), at: Timestamp.now(), actor: user.actor,
                                        subject: .init(caseId: row.spec.caseId, requestId: requestId),
                                        objects: ["answerSha256": Digest.sha256Hex(Array(answer.utf8))], details: ["question": question.lowercased]))
            try await LiveEvents.publish(conn, requestId: requestId, kind: .question, questionId: question, state: "answered", actor: user.name, logger: logger)
            let emergency = row.spec.priority == .emergency
            let envelope = Envelope(type: .clarification, id: UUID.derived("clarification", question.lowercased), requestId: requestId, sender: "broker",
                                    body: ClarificationBody(questionId: question, answer: answer, deliverBy: deliverBy))
            try await Self.enqueue(conn, envelope, topic: emergency ? Topics.toProviderUrgent(row.providerId) : Topics.toProvider(row.providerId),
                                   urgent: emergency, signer: signer, logger: logger)
            return emergency
        }
        if urgent { outboxWakeup.signal() }
    }

    func clarifications(_ requestId: UUID) async throws -> [API.ClarificationView] {
        var out: [API.ClarificationView] = []
        for try await (id, question, asked, answer, by, answered) in try await client.query("""
            SELECT c.id, c.question, c.asked_at, c.answer, u.name, c.answered_at
            FROM clarifications c LEFT JOIN users u ON u.id = c.answered_by WHERE c.request_id = \(requestId) ORDER BY c.asked_at
            """, logger: logger).decode((UUID, String, Date, String?, String?, Date?).self) {
            out.append(API.ClarificationView(id: id, question: question, askedAt: Timestamp.format(asked), answer: answer, answeredBy: by,
                                             answeredAt: answered.map(Timestamp.format)))
        }
        return out
    }
}
