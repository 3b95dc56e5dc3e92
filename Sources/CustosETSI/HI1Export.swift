import Crypto
import CustosModel
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// Writing a request as approved as one HI-1 message (TS 103 120 §6.4, §7): action 0 is the
/// `CREATE` of the `AuthorisationObject` (the decision and its approval), then one `CREATE` of
/// an `LDTaskObject` per provider part, then one `DELIVER` of a `DeliveryObject` per verified
/// package: its `Manifest` is the provider's signed manifest, byte for byte, whose `chunks`
/// list every chunk's SHA-256, and its checksum is the manifest's SHA-256.
public enum HI1Export {
    /// One provider part of the request and its packages.
    public struct Part: Sendable {
        public var request: API.RequestView
        /// The part's packages, oldest first; only verified ones are written.
        public var packages: [API.PackageView]

        public init(request: API.RequestView, packages: [API.PackageView]) {
            self.request = request
            self.packages = packages
        }
    }

    /// Who sends and who receives, and each provider's country.
    public struct Parties: Sendable {
        public var sender: HI1.Endpoint
        public var receiver: HI1.Endpoint
        /// `CountryCode` of providers' `CSPID`s.
        public var providerCountry: String

        public init(sender: HI1.Endpoint, receiver: HI1.Endpoint, providerCountry: String) {
            self.sender = sender
            self.receiver = receiver
            self.providerCountry = providerCountry
        }
    }

    public struct NotExportable: Error, CustomStringConvertible, Sendable {
        public var description: String
    }

    /// The message, UTF-8 XML.
    /// - Throws: `NotExportable` when a part is not approved yet (an HI-1 task exists only once
    ///   the request is approved).
    public static func message(_ parts: [Part], parties: Parties, transaction: UUID = UUID(), at: Date = Date()) throws -> [UInt8] {
        guard let first = parts.first else { throw NotExportable(description: "nothing to export") }
        for p in parts where [.draft, .submitted, .rejected, .withdrawn].contains(p.request.state) {
            throw NotExportable(description: "request \(p.request.id.lowercased) is \(p.request.state.rawValue): only a request as approved is exported")
        }
        let c = HI1.Namespace.core, a = HI1.Namespace.authorisation, d = HI1.Namespace.delivery, m = HI1.Namespace.common
        typealias X = XMLBuilder
        let spec = first.request.spec
        let kind = spec.kind ?? .production
        let authID = HI1.derivedUUID("authorisation", first.request.id)
        let approvedAt = first.request.timeline.first { $0.state == "approved" }.flatMap { HI1.date($0.at) }
        let deadline = first.request.clocks.map(\.deadline).compactMap(HI1.date).max()

        var actions: [XMLElement] = []
        func action(_ verb: String, _ body: [XMLNode]) {
            actions.append(X.element(c, "ActionRequest", [X.text(c, "ActionIdentifier", "\(actions.count)"), X.element(c, verb, body)]))
        }

        // 0: the authorisation.
        var auth: [XMLNode] = [
            X.text(c, "ObjectIdentifier", authID), X.text(c, "CountryCode", parties.sender.countryCode),
            X.text(c, "OwnerIdentifier", parties.sender.uniqueIdentifier), X.text(c, "ExternalIdentifier", spec.caseId.lowercased),
            X.text(a, "AuthorisationReference", spec.legalBasis.decisionNumber),
        ]
        if let approvedAt {
            var span: [XMLNode] = [X.text(a, "StartTime", HI1.qualified(approvedAt))]
            if let deadline { span.append(X.text(a, "EndTime", HI1.qualified(deadline.rounded(.up)))) }
            auth.append(X.element(a, "AuthorisationTimespan", span))
        }
        auth.append(X.element(a, "AuthorisationCSPID", parts.map {
            X.endpoint(a, "CSPID", HI1.Endpoint(countryCode: parties.providerCountry, uniqueIdentifier: $0.request.spec.providerId))
        }))
        auth.append(X.element(a, "AuthorisationApprovalDetails", [
            X.text(m, "ApprovalType", "IssuingAuthority"), X.text(m, "ApprovalReference", spec.legalBasis.decisionNumber),
            X.element(m, "ApproverDetails", [X.text(m, "ApproverName", spec.legalBasis.issuingAuthority)]),
            X.text(m, "ApprovalTimestamp", spec.legalBasis.issuedOn + "T00:00:00Z"),
        ]))
        var approval: [XMLNode] = [X.text(m, "ApprovalType", "CustosApproval")]
        if let by = first.request.approvedBy { approval.append(X.element(m, "ApproverDetails", [X.text(m, "ApproverName", by)])) }
        if let approvedAt { approval.append(X.text(m, "ApprovalTimestamp", HI1.qualified(approvedAt))) }
        approval.append(X.text(m, "ApprovalIsEmergency", spec.priority == .emergency ? "true" : "false"))
        auth.append(X.element(a, "AuthorisationApprovalDetails", approval))
        if let emergency = spec.emergency {
            auth.append(X.element(a, "AuthorisationFlags", [
                X.entry(a, "AuthorisationFlag", HI1.Entry("ETSI", "AuthorisationFlag", "IsEmergency")),
                X.entry(a, "AuthorisationFlag", HI1.Entry("Custos", "EmergencyGround", emergency.ground.rawValue)),
            ]))
            auth.append(X.text(a, "AuthorisationManualInformation", emergency.statement))
        }
        action("CREATE", [X.object("auth:AuthorisationObject", auth)])

        // 1…: one task per part.
        for part in parts {
            let r = part.request
            action("CREATE", [X.object("task:LDTaskObject", taskElements(r, authID: authID, parties: parties, kind: kind, status: nil))])
        }
        // Then one delivery per verified package.
        for part in parts {
            let verified = part.packages.filter { $0.state == .verified }
            for (i, p) in verified.enumerated() {
                let manifest = Array((p.manifestText ?? "").utf8)
                let last = i == verified.count - 1 && [.verified, .delivered].contains(part.request.state) && p.manifest.partial != true
                let object = X.object("delivery:DeliveryObject", [
                    X.text(c, "ObjectIdentifier", p.id.lowercased), X.text(c, "CountryCode", parties.providerCountry),
                    X.text(c, "OwnerIdentifier", p.providerId),
                    X.element(c, "AssociatedObjects", [X.text(c, "AssociatedObject", part.request.id.lowercased)]),
                    X.element(d, "Reference", [X.text(d, "LDID", reference(part.request.id, parties))]),
                    X.text(d, "DeliveryID", HI1.derivedUUID("delivery", part.request.id)),
                    X.text(d, "SequenceNumber", "\(i + 1)"),
                    X.text(d, "LastSequence", last ? "true" : "false"),
                    X.element(d, "Manifest", [X.element(d, "ExternalSchema", [
                        X.text(d, "ManifestID", "custos.manifest.v1"),
                        X.element(d, "ManifestContents", [X.element(d, "BinaryData", [
                            X.text(d, "Data", Data(manifest).base64EncodedString()),
                            X.text(d, "ContentType", "application/json"),
                            X.text(d, "Checksum", Digest.sha256Hex(manifest)),
                            X.text(d, "ChecksumType", "SHA-256"),
                        ])]),
                    ])]),
                ])
                action("DELIVER", [X.text(c, "Identifier", p.id.lowercased), object])
            }
        }
        let payload = X.element(c, "Payload", [X.element(c, "RequestPayload", [X.element(c, "ActionRequests", actions)])])
        return X.message(header: X.header(sender: parties.sender, receiver: parties.receiver, transaction: transaction, at: at), payload: payload)
    }

    /// The answer to a `GET` of a task (TS 103 120 §7.2): a `GETResponse` with the task and its
    /// status (`HI1Status`), and the exact Custos state as a flag.
    public static func status(_ request: API.RequestView, parties: Parties, transaction: UUID = UUID(), at: Date = Date()) -> [UInt8] {
        let c = HI1.Namespace.core
        typealias X = XMLBuilder
        let kind = request.spec.kind ?? .production
        // The authorisation is the group's: named after its first part, as in the export.
        let group = request.parts?.first?.id ?? request.id
        let task = X.object("task:LDTaskObject", taskElements(request, authID: HI1.derivedUUID("authorisation", group), parties: parties,
                                                              kind: kind, status: HI1Status.status(request.state, kind: kind)))
        let payload = X.element(c, "Payload", [X.element(c, "ResponsePayload", [X.element(c, "ActionResponses", [
            X.element(c, "ActionResponse", [X.text(c, "ActionIdentifier", "0"), X.element(c, "GETResponse", [task])]),
        ])])])
        return X.message(header: X.header(sender: parties.sender, receiver: parties.receiver, transaction: transaction, at: at), payload: payload)
    }

    static func reference(_ id: UUID, _ parties: Parties) -> String {
        "\(parties.sender.countryCode)-\(parties.sender.uniqueIdentifier)-\(id.lowercased)"
    }

    /// An `LDTaskObject`'s elements, in the XSD's order.
    static func taskElements(_ r: API.RequestView, authID: String, parties: Parties, kind: RequestKind, status: HI1.Entry?) -> [XMLNode] {
        let c = HI1.Namespace.core, t = HI1.Namespace.task
        typealias X = XMLBuilder
        let spec = r.spec
        var task: [XMLNode] = [
            X.text(c, "ObjectIdentifier", r.id.lowercased), X.text(c, "CountryCode", parties.sender.countryCode),
            X.text(c, "OwnerIdentifier", parties.sender.uniqueIdentifier),
            X.element(c, "AssociatedObjects", [X.text(c, "AssociatedObject", authID)]),
            X.text(t, "Reference", reference(r.id, parties)),
        ]
        if let status { task.append(X.entry(t, "Status", status)) }
        task.append(X.entry(t, "DesiredStatus", HI1Status.desiredStatus(r.state, kind: kind)))
        var details: [XMLNode] = [X.entry(t, "Type", HI1.Entry("Custos", "RequestKind", kind.rawValue))]
        if let from = HI1.date(spec.window.from), let to = HI1.date(spec.window.to) {
            // Whole seconds, widened so that the window never narrows.
            details.append(X.text(t, "StartTime", HI1.qualified(from.rounded(.down))))
            details.append(X.text(t, "EndTime", HI1.qualified(to.rounded(.up))))
        }
        details.append(X.element(t, "RequestValues", spec.targets.map { target in
            let (format, value) = HI1TargetFormat.requestValue(target)
            return X.element(t, "RequestValue", [
                X.element(t, "FormatType", [X.text(t, "FormatOwner", format.owner), X.text(t, "FormatName", format.value)]),
                X.text(t, "Value", value),
            ])
        }))
        details.append(X.element(t, "Subtype", spec.categories.map { X.entry(t, "RequestSubtype", HI1.Entry("Custos", "DataCategory", $0.rawValue)) }))
        task.append(X.element(t, "RequestDetails", details))
        task.append(X.element(t, "DeliveryDetails", [X.element(t, "LDDeliveryDestination", [
            X.element(t, "DeliveryAddress", [X.endpoint(t, "EndpointID", parties.sender)]),
        ])]))
        if spec.priority == .emergency {
            task.append(X.element(t, "ApprovalDetails", [X.text(HI1.Namespace.common, "ApprovalIsEmergency", "true")]))
        }
        task.append(X.endpoint(t, "CSPID", HI1.Endpoint(countryCode: parties.providerCountry, uniqueIdentifier: spec.providerId)))
        if status != nil {
            task.append(X.element(t, "Flags", [X.entry(t, "LDTaskFlag", HI1.Entry("Custos", "RequestState", r.state.rawValue))]))
        }
        return task
    }
}

extension Date {
    /// To whole seconds.
    func rounded(_ rule: FloatingPointRoundingRule) -> Date {
        Date(timeIntervalSince1970: timeIntervalSince1970.rounded(rule))
    }
}
