import CustosETSI
import CustosModel
import Foundation
import PostgresNIO

/// ETSI TS 103 120 (HI-1) at the API: an authority's `CREATE` message becomes a case and
/// its draft requests; a request as approved is written as an HI-1 message; a request's status
/// answers a `GET` in HI-1 form. Every rule is the JSON API's: the drafts go through
/// `createRequest`, and reading goes through `request(_:viewer:)`.
extension BrokerStore {
    /// Imports an HI-1 `CREATE` message as one new case of the caller's agency, holding one
    /// draft per `LDTaskObject`.
    /// - Throws: `BrokerError.invalid` with violations naming XML paths, for a message that is
    ///   not HI-1, asks for what Custos does not do, or fails validation; `.forbidden` for
    ///   anyone but an investigator.
    public func importHI1(_ bytes: [UInt8], by user: AuthenticatedUser) async throws -> API.HI1ImportView {
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, "only investigators create requests") }
        let message: HI1Import.Message
        do { message = try HI1Import.read(bytes, caseId: UUID()) } catch {
            switch error {
            case .malformed(let why): throw BrokerError(.invalid, "not an HI-1 message: \(why)")
            case .unsupported(let v): throw BrokerError(.invalid, "the HI-1 message asks for what Custos does not do", violations: v)
            case .invalid(let v): throw BrokerError(.invalid, "invalid HI-1 request", violations: v)
            }
        }
        // Every provider registered, before anything is created.
        var registered = Set<String>()
        for try await id in try await client.query("SELECT id FROM providers", logger: logger).decode(String.self) { registered.insert(id) }
        let unknown = message.tasks.filter { !registered.contains($0.spec.providerId) }
        guard unknown.isEmpty else {
            throw BrokerError(.invalid, "invalid HI-1 request", violations: unknown.map {
                FieldViolation(field: $0.path(forField: "providerId"), rule: "must name a registered provider (CSPID UniqueIdentifier is its provider id)")
            })
        }
        let title = String("HI-1 \(message.decisionNumber)".prefix(500))
        let created = try await createCase(title: title, by: user)
        var ids: [UUID] = []
        for task in message.tasks {
            var spec = task.spec
            spec.caseId = created.id
            do { ids.append(try await createRequest(spec, by: user)) } catch var e as BrokerError {
                e.violations = e.violations.map { FieldViolation(field: task.path(forField: $0.field), rule: $0.rule) }
                throw e
            }
        }
        return API.HI1ImportView(caseId: created.id, requestIds: ids)
    }

    /// The request (with every part of its group) as approved, as one HI-1 message.
    /// - Throws: `.conflict` before approval; `.notFound` outside the viewer's agency.
    public func exportHI1(_ id: UUID, viewer: AuthenticatedUser, endpoint: HI1.Endpoint) async throws -> [UInt8] {
        let view = try await request(id, viewer: viewer)
        var parts: [HI1Export.Part] = []
        for partId in view.parts?.map(\.id) ?? [id] {
            let part = partId == id ? view : try await request(partId, viewer: viewer)
            var packages: [API.PackageView] = []
            for p in part.packages where p.state == .verified { packages.append(try await package(p.id, viewer: viewer)) }
            parts.append(HI1Export.Part(request: part, packages: packages))
        }
        do {
            return try HI1Export.message(parts, parties: .init(sender: endpoint, receiver: HI1.Endpoint(countryCode: endpoint.countryCode, uniqueIdentifier: viewer.agency),
                                                               providerCountry: endpoint.countryCode))
        } catch let e as HI1Export.NotExportable {
            throw BrokerError(.conflict, e.description)
        }
    }
}
