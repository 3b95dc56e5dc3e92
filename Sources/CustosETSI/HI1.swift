import Crypto
import CustosModel
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif

/// ETSI TS 103 120 V1.12.1 (HI-1): the message format between issuing authorities' case
/// systems and providers' disclosure desks. Custos writes a request as approved (and its
/// deliveries) as an HI-1 `CREATE`/`DELIVER` message, reads an authority's `CREATE` of an
/// `AuthorisationObject` and `LDTaskObject`s as a draft request, and answers a `GET` of a task
/// with its status. Built and read with FoundationXML (libxml2), never by string concatenation.
public enum HI1 {
    /// The schema version written in every header (`Version/ETSIVersion`).
    public static let etsiVersion = "V1.12.1"

    /// The namespaces of TS 103 120 V1.12.1 (§C, the XSDs' target namespaces).
    public enum Namespace {
        public static let core = "http://uri.etsi.org/03120/common/2019/10/Core"
        public static let common = "http://uri.etsi.org/03120/common/2016/02/Common"
        public static let authorisation = "http://uri.etsi.org/03120/common/2020/09/Authorisation"
        public static let task = "http://uri.etsi.org/03120/common/2020/09/Task"
        public static let delivery = "http://uri.etsi.org/03120/common/2019/10/Delivery"
        public static let xsi = "http://www.w3.org/2001/XMLSchema-instance"

        /// Prefix → namespace, as written on the root element.
        static let prefixes: [(String, String)] = [
            ("common", common), ("auth", authorisation), ("task", task), ("delivery", delivery), ("xsi", xsi),
        ]
        static func prefix(of uri: String) -> String? {
            uri == core ? "" : prefixes.first { $0.1 == uri }?.0
        }
    }

    /// An `EndpointID` (TS 103 120 §6.2.2): an ISO 3166-1 alpha-2 country code and an identifier.
    public struct Endpoint: Sendable, Equatable, Codable {
        public var countryCode: String
        public var uniqueIdentifier: String

        public init(countryCode: String, uniqueIdentifier: String) {
            self.countryCode = countryCode
            self.uniqueIdentifier = uniqueIdentifier
        }

        /// `[A-Z]{2}`, as `ISOCountryCode` requires.
        public static func isValidCountryCode(_ s: String) -> Bool {
            s.utf8.count == 2 && s.utf8.allSatisfy { (0x41...0x5A).contains($0) }
        }
    }

    /// A `DictionaryEntry` (TS 103 120 §6.2.4): owner, dictionary name, value.
    public struct Entry: Sendable, Equatable, Hashable, Codable {
        public var owner: String
        public var name: String
        public var value: String

        public init(_ owner: String, _ name: String, _ value: String) {
            self.owner = owner
            self.name = name
            self.value = value
        }
    }

    /// TS 103 120's `QualifiedDateTime`: whole seconds, UTC, `Z` (fractions are not allowed).
    static func qualified(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        return f.string(from: date)
    }

    /// TS 103 120's `QualifiedMicrosecondDateTime` (the header's `Timestamp`): six fraction digits.
    static func microseconds(_ date: Date) -> String {
        let seconds = floor(date.timeIntervalSince1970)
        let micros = Int((date.timeIntervalSince1970 - seconds) * 1_000_000)
        let base = qualified(Date(timeIntervalSince1970: seconds)).dropLast()  // without the Z
        return base + "." + String(format: "%06d", min(max(micros, 0), 999_999)) + "Z"
    }

    /// Parses an `xs:dateTime` with a zone (`Z` or `±hh:mm`), fractions allowed.
    static func date(_ s: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: s) { return d }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: s)
    }

    /// A stable UUID for an object Custos derives from another id (`DeliveryID`,
    /// `AuthorisationObject`): SHA-256 of the label and id, shaped as an RFC 9562 version 8 UUID.
    static func derivedUUID(_ label: String, _ id: UUID) -> String {
        var b = Array(SHA256.hash(data: Array("custos.hi1.\(label):\(id.lowercased)".utf8)).prefix(16))
        b[6] = (b[6] & 0x0F) | 0x80
        b[8] = (b[8] & 0x3F) | 0x80
        let hex = b.map { String(format: "%02x", $0) }.joined()
        let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
        return parts.joined(separator: "-")
    }
}

extension UUID {
    /// Lower case, as `etsi:UUID` requires.
    var lowercased: String { uuidString.lowercased() }
}

/// Building elements in their namespaces: each element is named with its namespace's prefix,
/// and the root declares every prefix (and Core as the default), so nothing is redeclared.
struct XMLBuilder {
    static func element(_ ns: String, _ name: String, _ children: [XMLNode] = []) -> XMLElement {
        let prefix = HI1.Namespace.prefix(of: ns) ?? ""
        let e = XMLElement(name: prefix.isEmpty ? name : "\(prefix):\(name)")
        for c in children { e.addChild(c) }
        return e
    }

    static func text(_ ns: String, _ name: String, _ value: String) -> XMLElement {
        let e = element(ns, name)
        e.stringValue = value
        return e
    }

    static func entry(_ ns: String, _ name: String, _ entry: HI1.Entry) -> XMLElement {
        element(ns, name, [
            text(HI1.Namespace.common, "Owner", entry.owner), text(HI1.Namespace.common, "Name", entry.name),
            text(HI1.Namespace.common, "Value", entry.value),
        ])
    }

    static func endpoint(_ ns: String, _ name: String, _ e: HI1.Endpoint) -> XMLElement {
        element(ns, name, [text(HI1.Namespace.core, "CountryCode", e.countryCode), text(HI1.Namespace.core, "UniqueIdentifier", e.uniqueIdentifier)])
    }

    /// An `HI1Object` of the given `xsi:type` (e.g. `task:LDTaskObject`).
    static func object(_ type: String, _ children: [XMLNode]) -> XMLElement {
        let e = element(HI1.Namespace.core, "HI1Object", children)
        e.addAttribute(XMLNode.attribute(withName: "xsi:type", uri: HI1.Namespace.xsi, stringValue: type) as! XMLNode)
        return e
    }

    /// The whole message: the root with every prefix declared, header and payload.
    static func message(header: XMLElement, payload: XMLElement) -> [UInt8] {
        let root = element(HI1.Namespace.core, "HI1Message", [header, payload])
        root.addNamespace(XMLNode.namespace(withName: "", stringValue: HI1.Namespace.core) as! XMLNode)
        for (p, ns) in HI1.Namespace.prefixes { root.addNamespace(XMLNode.namespace(withName: p, stringValue: ns) as! XMLNode) }
        let doc = XMLDocument(rootElement: root)
        doc.characterEncoding = "UTF-8"
        doc.version = "1.0"
        return Array(doc.xmlData(options: [.nodePrettyPrint]))
    }

    /// The `Header`: sender, receiver, transaction, time, version.
    static func header(sender: HI1.Endpoint, receiver: HI1.Endpoint, transaction: UUID, at: Date) -> XMLElement {
        element(HI1.Namespace.core, "Header", [
            endpoint(HI1.Namespace.core, "SenderIdentifier", sender),
            endpoint(HI1.Namespace.core, "ReceiverIdentifier", receiver),
            text(HI1.Namespace.core, "TransactionIdentifier", transaction.lowercased),
            text(HI1.Namespace.core, "Timestamp", HI1.microseconds(at)),
            element(HI1.Namespace.core, "Version", [
                text(HI1.Namespace.core, "ETSIVersion", HI1.etsiVersion),
                text(HI1.Namespace.core, "NationalProfileOwner", "Custos"),
                text(HI1.Namespace.core, "NationalProfileVersion", "v1"),
            ]),
        ])
    }
}
