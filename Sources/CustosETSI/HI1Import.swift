import CustosModel
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// Reading an authority's HI-1 `CREATE` message (TS 103 120 §7.3) as draft requests: its
/// `AuthorisationObject` is the decision (`AuthorisationReference` → the decision number, the
/// `IssuingAuthority` approval's `ApproverName` and date → the issuing authority and the date),
/// and each `LDTaskObject` linked to it is one draft request (targets from `RequestValues`,
/// categories from `Subtype`, window from `StartTime`/`EndTime`, provider from `CSPID`).
///
/// It goes through the same validation as a JSON request; every violation names the XML
/// path of the element it is about, e.g.
/// `/HI1Message/Payload/RequestPayload/ActionRequests/ActionRequest[2]/CREATE/HI1Object/task:RequestDetails/task:Subtype`.
/// What Custos does not do (interception tasks, private information retrieval, formats with
/// no Custos target type, actions other than `CREATE`) is refused as unsupported, with its path.
public enum HI1Import {
    /// Largest message accepted, in bytes.
    public static let maximumBytes = 4 << 20

    /// One task read as a request (its `caseId` is set by whoever creates the case).
    public struct Task: Sendable {
        public var spec: RequestSpec
        /// The `LDTaskObject`'s path.
        public var path: String
        /// The task's `ObjectIdentifier`.
        public var objectIdentifier: String
        /// Spec field (as `RequestSpec.validate` names them) → XML path.
        var paths: [String: String]

        /// The spec's violations, each naming its XML path.
        public func violations() -> [FieldViolation] {
            do { try spec.validate() } catch {
                return error.violations.map { v in FieldViolation(field: path(forField: v.field), rule: v.rule) }
            }
            return []
        }

        /// The XML path of a spec field (`targets[2].value`, `window.from`, `providerId`…).
        public func path(forField field: String) -> String {
            if let p = paths[field] { return p }
            // targets[3].port → the value's path; window.from → its element.
            var f = field
            while let dot = f.lastIndex(where: { $0 == "." || $0 == "[" }) {
                f = String(f[..<dot])
                if let p = paths[f] { return p }
            }
            return path
        }
    }

    public struct Message: Sendable {
        /// `AuthorisationReference`: the decision number (a case title for the import).
        public var decisionNumber: String
        public var tasks: [Task]
        public var sender: HI1.Endpoint?
    }

    /// Why a message was not read.
    public enum Failure: Error, Sendable, CustomStringConvertible {
        /// Not an HI-1 message, or not well-formed XML.
        case malformed(String)
        /// It asks for what Custos does not do; each violation names its element.
        case unsupported([FieldViolation])
        /// Values missing or wrong; each names its element.
        case invalid([FieldViolation])

        public var description: String {
            switch self {
            case .malformed(let why): "not an HI-1 message: \(why)"
            case .unsupported(let v): "unsupported: " + v.map(\.description).joined(separator: "; ")
            case .invalid(let v): "invalid: " + v.map(\.description).joined(separator: "; ")
            }
        }
    }

    /// Reads the message; the specs still need `Task.violations()` (done here: a message whose
    /// tasks do not validate is `.invalid`).
    /// - Parameter caseId: the case the drafts will belong to.
    public static func read(_ bytes: [UInt8], caseId: UUID) throws(Failure) -> Message {
        guard !bytes.isEmpty else { throw .malformed("the message is empty") }
        guard bytes.count <= maximumBytes else { throw .malformed("the message is larger than \(maximumBytes) bytes") }
        // UTF-8 only, so that the checks below see the text as the parser will: no byte-order
        // mark of UTF-16 or UTF-32, no NUL, valid UTF-8, and no other encoding declared.
        guard !bytes.contains(0), bytes.first != 0xFE, bytes.first != 0xFF, String(validating: bytes, as: UTF8.self) != nil else {
            throw .malformed("the message is not UTF-8 text")
        }
        if let declared = declaredEncoding(bytes), !["utf-8", "utf8"].contains(declared.lowercased()) {
            throw .malformed("the message declares the encoding \(declared); only UTF-8 is accepted")
        }
        // No DTD: entities are how XML expands to gigabytes or reads local files.
        if containsDoctype(bytes) { throw .malformed("a document type declaration (DTD) is not accepted") }
        // Well-formed, checked by a parser that stops at the first error (XMLDocument recovers
        // from errors on Linux, and would read a truncated message as a shorter one).
        guard WellFormedGate.check(bytes) else { throw .malformed("the XML is not well-formed") }
        let doc: XMLDocument
        do { doc = try XMLDocument(data: Data(bytes), options: [.nodeLoadExternalEntitiesNever]) } catch {
            throw .malformed("the XML is not well-formed")
        }
        guard let root = doc.rootElement(), root.localName == "HI1Message", root.uri == HI1.Namespace.core else {
            throw .malformed("the root element is not HI1Message in \(HI1.Namespace.core)")
        }
        let c = HI1.Namespace.core
        var unsupported: [FieldViolation] = []
        var invalid: [FieldViolation] = []
        var sender: HI1.Endpoint?
        if let s = root.first(c, "Header")?.first(c, "SenderIdentifier"),
           let cc = s.first(c, "CountryCode")?.text, let id = s.first(c, "UniqueIdentifier")?.text {
            sender = HI1.Endpoint(countryCode: cc, uniqueIdentifier: id)
        }
        guard let actionsElement = root.first(c, "Payload")?.first(c, "RequestPayload")?.first(c, "ActionRequests") else {
            throw .malformed("no Payload/RequestPayload/ActionRequests: only requests are imported")
        }
        let base = "/HI1Message/Payload/RequestPayload/ActionRequests"
        var authorisations: [String: Authorisation] = [:]
        var taskElements: [(XMLElement, String)] = []
        for (i, action) in actionsElement.all(c, "ActionRequest").enumerated() {
            let path = "\(base)/ActionRequest[\(i + 1)]"
            if action.first(c, "ActionIdentifier")?.text != "\(i)" {
                invalid.append(.init(field: path + "/ActionIdentifier", rule: "must number the actions 0, 1, 2… in order"))
            }
            guard let create = action.first(c, "CREATE") else {
                let verb = action.elements.first { $0.localName != "ActionIdentifier" }?.localName ?? "nothing"
                unsupported.append(.init(field: path + "/" + verb, rule: "only CREATE is imported; a request's status is read with GET /v1/requests/{id}"))
                continue
            }
            guard let object = create.first(c, "HI1Object") else {
                invalid.append(.init(field: path + "/CREATE", rule: "must hold an HI1Object"))
                continue
            }
            let objectPath = path + "/CREATE/HI1Object"
            switch object.xsiType {
            case (HI1.Namespace.authorisation, "AuthorisationObject"):
                let a = Authorisation(object, path: objectPath)
                authorisations[a.id] = a
            case (HI1.Namespace.task, "LDTaskObject"):
                taskElements.append((object, objectPath))
            case (HI1.Namespace.task, "LITaskObject"):
                unsupported.append(.init(field: objectPath, rule: "LITaskObject (lawful interception) is real-time; Custos requests stored data (LDTaskObject) only"))
            case (HI1.Namespace.task, "PrivateLDTaskObject"):
                unsupported.append(.init(field: objectPath, rule: "PrivateLDTaskObject (private information retrieval) is not supported"))
            case ("http://uri.etsi.org/03120/common/2020/09/Document", "DocumentObject"):
                unsupported.append(.init(field: objectPath, rule: "a DocumentObject is not imported: upload the decision with POST /v1/documents and name it in the draft"))
            case (let ns, let name):
                unsupported.append(.init(field: objectPath, rule: "HI1Object of type \(name) (\(ns ?? "no namespace")) is not a request Custos imports"))
            }
        }
        var tasks: [Task] = []
        for (element, path) in taskElements {
            do { tasks.append(try task(element, path: path, authorisations: authorisations, caseId: caseId)) } catch {
                switch error {
                case .unsupported(let v): unsupported += v
                case .invalid(let v): invalid += v
                case .malformed(let why): invalid.append(.init(field: path, rule: why))
                }
            }
        }
        if tasks.isEmpty && unsupported.isEmpty && invalid.isEmpty {
            invalid.append(.init(field: base, rule: "must CREATE at least one LDTaskObject"))
        }
        for t in tasks { invalid += t.violations() }
        if !unsupported.isEmpty { throw .unsupported(unsupported + invalid) }
        if !invalid.isEmpty { throw .invalid(invalid) }
        let decision = tasks.first?.spec.legalBasis.decisionNumber ?? ""
        return Message(decisionNumber: decision, tasks: tasks, sender: sender)
    }

    /// The decision as the `AuthorisationObject` states it.
    struct Authorisation {
        var id: String
        var path: String
        var reference: String?
        var issuingAuthority: String?
        var issuingAuthorityPath: String
        var issuedOn: String?
        var issuedOnPath: String
        var emergency = false
        var ground: String?
        var statement: String?

        init(_ e: XMLElement, path: String) {
            let c = HI1.Namespace.core, a = HI1.Namespace.authorisation, m = HI1.Namespace.common
            self.path = path
            id = e.first(c, "ObjectIdentifier")?.text ?? ""
            reference = e.first(a, "AuthorisationReference")?.text
            let approvals = e.all(a, "AuthorisationApprovalDetails")
            // The issuing authority's approval: the one typed IssuingAuthority, else the first.
            let index = approvals.firstIndex { $0.first(m, "ApprovalType")?.text == "IssuingAuthority" } ?? 0
            let approvalPath = path + "/auth:AuthorisationApprovalDetails" + (approvals.count > 1 ? "[\(index + 1)]" : "")
            issuingAuthorityPath = approvalPath + "/common:ApproverDetails/common:ApproverName"
            issuedOnPath = approvalPath + "/common:ApprovalTimestamp"
            if index < approvals.count {
                issuingAuthority = approvals[index].first(m, "ApproverDetails")?.first(m, "ApproverName")?.text
                issuedOn = approvals[index].first(m, "ApprovalTimestamp")?.text.flatMap(HI1.date).map { HI1.qualified($0).prefix(10) }.map(String.init)
            }
            emergency = approvals.contains { $0.first(m, "ApprovalIsEmergency")?.text == "true" }
            for flag in e.first(a, "AuthorisationFlags")?.all(a, "AuthorisationFlag") ?? [] {
                let entry = flag.entry
                if entry == HI1.Entry("ETSI", "AuthorisationFlag", "IsEmergency") { emergency = true }
                if entry?.owner == "Custos", entry?.name == "EmergencyGround" { ground = entry?.value }
            }
            statement = e.first(a, "AuthorisationManualInformation")?.text
        }
    }

    static func task(_ e: XMLElement, path: String, authorisations: [String: Authorisation], caseId: UUID) throws(Failure) -> Task {
        let c = HI1.Namespace.core, t = HI1.Namespace.task, m = HI1.Namespace.common
        var paths: [String: String] = [:]
        var unsupported: [FieldViolation] = []
        var invalid: [FieldViolation] = []
        let objectID = e.first(c, "ObjectIdentifier")?.text ?? ""
        if e.first(t, "Status") != nil {
            invalid.append(.init(field: path + "/task:Status", rule: "a CREATE carries no Status: the provider sets it"))
        }
        // The authorisation it is linked to.
        let linked = (e.first(c, "AssociatedObjects")?.all(c, "AssociatedObject") ?? []).compactMap { $0.text }
        let auth = linked.lazy.compactMap { authorisations[$0] }.first ?? (linked.isEmpty && authorisations.count == 1 ? authorisations.values.first : nil)
        guard let auth else {
            throw .invalid([.init(field: path + "/AssociatedObjects", rule: "must name the AuthorisationObject created in the same message")])
        }
        paths["legalBasis.decisionNumber"] = auth.path + "/auth:AuthorisationReference"
        paths["legalBasis.issuingAuthority"] = auth.issuingAuthorityPath
        paths["legalBasis.issuedOn"] = auth.issuedOnPath
        paths["emergency"] = auth.path + "/auth:AuthorisationFlags"
        paths["emergency.statement"] = auth.path + "/auth:AuthorisationManualInformation"

        let detailsPath = path + "/task:RequestDetails"
        let details = e.first(t, "RequestDetails")
        // Kind and categories.
        var kind = RequestKind.production
        var categories: [DataCategory] = []
        if let type = details?.first(t, "Type")?.entry {
            switch (type.owner, type.name) {
            case ("Custos", "RequestKind"):
                guard let k = RequestKind(rawValue: type.value) else {
                    throw .invalid([.init(field: detailsPath + "/task:Type", rule: "Custos/RequestKind is production or preservation")])
                }
                kind = k
            case ("ETSI", "RequestType"):
                switch type.value {
                case "SubscriberData": categories = [.subscriber]
                case "TrafficData": categories = [.traffic]
                default: unsupported.append(.init(field: detailsPath + "/task:Type", rule: "RequestType \(type.owner)/\(type.value) has no Custos data category"))
                }
            default:
                unsupported.append(.init(field: detailsPath + "/task:Type", rule: "RequestType \(type.owner)/\(type.name)/\(type.value) is not one Custos handles"))
            }
        }
        paths["categories"] = detailsPath + "/task:Subtype"
        for (i, sub) in (details?.first(t, "Subtype")?.all(t, "RequestSubtype") ?? []).enumerated() {
            let p = detailsPath + "/task:Subtype/task:RequestSubtype[\(i + 1)]"
            guard let entry = sub.entry, entry.owner == "Custos", entry.name == "DataCategory", let category = DataCategory(rawValue: entry.value) else {
                unsupported.append(.init(field: p, rule: "a RequestSubtype is a Custos/DataCategory entry: \(DataCategory.allCases.map(\.rawValue).joined(separator: ", "))"))
                continue
            }
            categories.append(category)
        }
        // The window, in UTC.
        paths["window"] = detailsPath
        paths["window.from"] = detailsPath + "/task:StartTime"
        paths["window.to"] = detailsPath + "/task:EndTime"
        let from = details?.first(t, "StartTime")?.text.map { s in HI1.date(s).map(Timestamp.format) ?? s } ?? ""
        let to = details?.first(t, "EndTime")?.text.map { s in HI1.date(s).map(Timestamp.format) ?? s } ?? ""
        // Targets; an observed time applies to the IP addresses.
        let observed = (details?.first(t, "ObservedTime")?.text).flatMap(HI1.date).map(Timestamp.format)
        var targets: [Target] = []
        paths["targets"] = detailsPath + "/task:RequestValues"
        for (i, value) in (details?.first(t, "RequestValues")?.all(t, "RequestValue") ?? []).enumerated() {
            let p = detailsPath + "/task:RequestValues/task:RequestValue[\(i + 1)]"
            let format = value.first(t, "FormatType")
            let owner = format?.first(t, "FormatOwner")?.text ?? "", name = format?.first(t, "FormatName")?.text ?? ""
            do {
                var target = try HI1TargetFormat.target(owner: owner, name: name, value: value.first(t, "Value")?.text ?? "")
                if target.at == nil, [.ipv4, .ipv6].contains(target.type), let observed { target.at = observed }
                paths["targets[\(targets.count)]"] = p + "/task:Value"
                targets.append(target)
            } catch {
                switch error {
                case .unsupported(let why): unsupported.append(.init(field: p + "/task:FormatType", rule: why))
                case .invalid(let why): invalid.append(.init(field: p + "/task:Value", rule: why))
                }
            }
        }
        // The provider.
        paths["providerId"] = path + "/task:CSPID/UniqueIdentifier"
        let provider = e.first(t, "CSPID")?.first(c, "UniqueIdentifier")?.text?.lowercased() ?? ""
        // Emergency.
        let emergency = auth.emergency || (e.all(t, "ApprovalDetails").contains { $0.first(m, "ApprovalIsEmergency")?.text == "true" })
        var grounds: EmergencyGrounds?
        if emergency {
            guard let g = auth.ground.flatMap(EmergencyGrounds.Ground.init(rawValue:)) else {
                throw .invalid(invalid + [.init(field: auth.path + "/auth:AuthorisationFlags",
                                                rule: "an emergency names its ground as a Custos/EmergencyGround flag: \(EmergencyGrounds.Ground.allCases.map(\.rawValue).joined(separator: ", "))")])
            }
            grounds = EmergencyGrounds(ground: g, statement: auth.statement ?? "")
        }
        if !unsupported.isEmpty { throw .unsupported(unsupported + invalid) }
        if !invalid.isEmpty { throw .invalid(invalid) }
        let spec = RequestSpec(
            caseId: caseId, providerId: provider,
            legalBasis: LegalBasis(decisionNumber: auth.reference ?? "", issuingAuthority: auth.issuingAuthority ?? "", issuedOn: auth.issuedOn ?? ""),
            targets: targets, categories: categories, window: TimeWindow(from: from, to: to),
            priority: emergency ? .emergency : .normal, emergency: grounds, kind: kind == .production ? nil : kind)
        return Task(spec: spec, path: path, objectIdentifier: objectID, paths: paths)
    }

    /// The `encoding` of the XML declaration, when there is one.
    static func declaredEncoding(_ bytes: [UInt8]) -> String? {
        guard bytes.starts(with: Array("<?xml".utf8)), let end = bytes.firstIndex(of: UInt8(ascii: ">")) else { return nil }
        let decl = String(decoding: bytes[..<end], as: UTF8.self)
        guard let r = decl.range(of: "encoding") else { return nil }
        let rest = decl[r.upperBound...].drop { $0 == " " || $0 == "=" }
        guard let quote = rest.first, quote == "\"" || quote == "'" else { return nil }
        return String(rest.dropFirst().prefix { $0 != quote })
    }

    static func containsDoctype(_ bytes: [UInt8]) -> Bool {
        let needle = Array("<!DOCTYPE".utf8)
        guard bytes.count >= needle.count else { return false }
        for i in 0...(bytes.count - needle.count) where bytes[i] == 0x3C {
            if Array(bytes[i..<i + needle.count]).map({ $0 >= 0x61 && $0 <= 0x7A ? $0 - 32 : $0 }) == needle { return true }
        }
        return false
    }
}

extension XMLElement {
    var elements: [XMLElement] { (children ?? []).compactMap { $0 as? XMLElement } }
    func all(_ ns: String, _ local: String) -> [XMLElement] { elements.filter { $0.localName == local && $0.uri == ns } }
    func first(_ ns: String, _ local: String) -> XMLElement? { elements.first { $0.localName == local && $0.uri == ns } }
    /// The trimmed text, nil when empty.
    var text: String? {
        let s = (stringValue ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
        return s.isEmpty ? nil : s
    }

    /// `xsi:type`, its prefix resolved through the namespaces in scope.
    var xsiType: (String?, String) {
        guard let value = attribute(forLocalName: "type", uri: HI1.Namespace.xsi)?.stringValue else { return (nil, "") }
        let parts = value.split(separator: ":", maxSplits: 1).map(String.init)
        if parts.count == 2 { return (resolveNamespace(forName: value)?.stringValue, parts[1]) }
        return (resolveNamespace(forName: ":\(value)")?.stringValue, value)
    }

    /// A `DictionaryEntry`'s three fields.
    var entry: HI1.Entry? {
        let m = HI1.Namespace.common
        guard let o = first(m, "Owner")?.text, let n = first(m, "Name")?.text, let v = first(m, "Value")?.text else { return nil }
        return HI1.Entry(o, n, v)
    }
}

/// Whether a document is well-formed and whole, read with the streaming parser before the
/// tree is built: Foundation's `XMLParser` on Linux reports no error for input that ends early
/// (`<HI1Message`), and `XMLDocument` recovers from errors (reading a truncated message as a
/// shorter one) or fails on such input with a trap; so the gate also requires exactly one root
/// element, opened and closed, and nothing after it.
final class WellFormedGate: NSObject, XMLParserDelegate {
    private var depth = 0
    private var roots = 0
    private var closed = false
    private var failed = false

    static func check(_ bytes: [UInt8]) -> Bool {
        let parser = XMLParser(data: Data(bytes))
        let gate = WellFormedGate()
        parser.delegate = gate
        parser.shouldResolveExternalEntities = false
        let parsed = parser.parse()
        return parsed && !gate.failed && gate.roots == 1 && gate.depth == 0 && gate.closed
    }

    func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?, qualifiedName qName: String?,
                attributes attributeDict: [String: String] = [:]) {
        if depth == 0 { roots += 1 }
        depth += 1
    }

    func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName qName: String?) {
        depth -= 1
        if depth == 0 { closed = true }
    }

    func parser(_ parser: XMLParser, parseErrorOccurred parseError: any Error) { failed = true }
    func parser(_ parser: XMLParser, validationErrorOccurred validationError: any Error) { failed = true }
}
