import Crypto
import CustosCanonicalJSON
import CustosCustody
import CustosModel
import Foundation

/// `case.jsonld`: the bundle described in CASE/UCO (caseontology.org, CASE 1.x on UCO 1.x),
/// the exchange format of forensic tools, as JSON-LD in RFC 8785 canonical form.
///
/// It states the investigation (the case) and its authorisation (the decision), the
/// investigative action of the request (by the issuing authority, with Custos as instrument
/// and the provider as participant), the provider as an `identity:Organization`, Custos as a
/// `tool:Tool` with its version, every other file of the bundle as an `observable:File` with
/// its size and SHA-256, and the chain of custody: one `case-investigation:InvestigativeAction`
/// per custody event, each resulting in a `case-investigation:ProvenanceRecord` over the
/// package's files.
///
/// Every statement comes from the bundle's bound members (the request, the manifest, the
/// custody events, the files' bytes), and node ids are derived from them, so the graph is a
/// function of the bundle and the tool version: `custos verify` builds it again and requires
/// the same bytes, and names any file whose listed hash differs.
public enum CASEGraph {
    /// The file name in the bundle.
    public static let fileName = "case.jsonld"
    /// The graph's shape, stated as the tool node's `core:description`. The shape of a format
    /// never changes (verifiers build the graph again and compare bytes): a new shape is a new
    /// format, and the builder of the old one stays.
    public static let format = "custos.case.v1"

    /// A file of the bundle as the graph lists it.
    public struct File: Sendable, Equatable {
        public var name: String
        public var size: Int64
        /// Lower-case hex.
        public var sha256: String

        public init(name: String, size: Int64, sha256: String) {
            self.name = name
            self.size = size
            self.sha256 = sha256
        }

        public init(name: String, bytes: [UInt8]) {
            self.init(name: name, size: Int64(bytes.count), sha256: Digest.sha256Hex(bytes))
        }
    }

    static let context: JSONValue = .object([
        "kb": .string("urn:custos:kb:"),
        "case-investigation": .string("https://ontology.caseontology.org/case/investigation/"),
        "core": .string("https://ontology.unifiedcyberontology.org/uco/core/"),
        "identity": .string("https://ontology.unifiedcyberontology.org/uco/identity/"),
        "observable": .string("https://ontology.unifiedcyberontology.org/uco/observable/"),
        "tool": .string("https://ontology.unifiedcyberontology.org/uco/tool/"),
        "types": .string("https://ontology.unifiedcyberontology.org/uco/types/"),
        "action": .string("https://ontology.unifiedcyberontology.org/uco/action/"),
        "xsd": .string("http://www.w3.org/2001/XMLSchema#"),
    ])

    /// SHA-256 of the graph's `@context` (canonical JSON). The export's custody event records
    /// it (`caseContextSha256`): that export wrote a `case.jsonld`, so a bundle whose own
    /// export says so and lacks one has lost a member.
    public static let contextSha256 = Digest.sha256Hex(CanonicalJSON.serialize(context))

    /// The graph's bytes.
    /// - Parameters:
    ///   - files: every other file of the bundle, in bundle order.
    ///   - events: the custody events `custody.json` proves, in log order.
    ///   - toolVersion: the Custos release that wrote it (`CustosRelease.version` at export).
    public static func build(request: ApprovedRequest, manifest: Manifest, files: [File], events: [(index: UInt64, event: CustodyEvent)],
                             toolVersion: String) -> [UInt8] {
        let seed = manifest.packageId
        func id(_ kind: String, _ key: String) -> JSONValue { .object(["@id": .string(iri(kind, key, seed))]) }
        func node(_ kind: String, _ key: String, _ type: String, _ properties: [String: JSONValue]) -> JSONValue {
            var p = properties
            p["@id"] = .string(iri(kind, key, seed))
            p["@type"] = .string(type)
            return .object(p)
        }
        func time(_ s: String) -> JSONValue { .object(["@type": .string("xsd:dateTime"), "@value": .string(s)]) }
        func integer(_ n: Int64) -> JSONValue { .object(["@type": .string("xsd:integer"), "@value": .string(String(n))]) }

        let legal = request.legalBasis
        let kind = (request.kind ?? .production).rawValue
        var graph: [JSONValue] = []
        // The case, its decision, the people and things in it.
        graph.append(node("investigation", request.caseId.lowercased, "case-investigation:Investigation", [
            "core:name": .string("case \(request.caseId.lowercased)"),
            "case-investigation:relevantAuthorization": .array([id("authorization", legal.decisionNumber)]),
            "core:object": .array([id("action", "request")]),
        ]))
        graph.append(node("authorization", legal.decisionNumber, "case-investigation:Authorization", [
            "case-investigation:authorizationType": .string("\(kind) order"),
            "case-investigation:authorizationIdentifier": .array([.string(legal.decisionNumber)]),
            "core:description": .string("decision \(legal.decisionNumber) of \(legal.issuingAuthority), issued \(legal.issuedOn)"),
            "core:startTime": time(legal.issuedOn + "T00:00:00Z"),
        ]))
        graph.append(node("organization", "authority", "identity:Organization", ["core:name": .string(legal.issuingAuthority)]))
        graph.append(node("organization", "provider", "identity:Organization", ["core:name": .string(manifest.providerId)]))
        graph.append(node("tool", "custos", "tool:Tool", [
            "core:name": .string("Custos"), "tool:version": .string(toolVersion), "tool:toolType": .string("electronic-evidence exchange broker"),
            "core:description": .string(format),
        ]))
        // The files.
        var fileRefs: [JSONValue] = []
        for f in files {
            fileRefs.append(id("file", f.name))
            graph.append(node("file", f.name, "observable:File", [
                "core:hasFacet": .array([
                    node("file-facet", f.name, "observable:FileFacet", ["observable:fileName": .string(f.name), "observable:sizeInBytes": integer(f.size)]),
                    node("content-data-facet", f.name, "observable:ContentDataFacet", [
                        "observable:sizeInBytes": integer(f.size),
                        "observable:hash": .array([node("hash", f.name, "types:Hash", [
                            "types:hashMethod": .string("SHA256"),
                            "types:hashValue": .object(["@type": .string("xsd:hexBinary"), "@value": .string(f.sha256)]),
                        ])]),
                    ]),
                ]),
            ]))
        }
        // The request: the investigative action the decision authorises.
        graph.append(node("action", "request", "case-investigation:InvestigativeAction", [
            "core:name": .string("\(kind) order \(request.requestId.lowercased)"),
            "core:description": .string("request \(request.requestId.lowercased) under decision \(legal.decisionNumber), approved by \(request.approvedBy)"),
            "action:startTime": time(request.approvedAt),
            "action:performer": id("organization", "authority"),
            "action:instrument": id("tool", "custos"),
            "action:participant": .array([id("organization", "provider")]),
            "action:result": .array(fileRefs),
        ]))
        // The chain of custody: each event an action, each action a provenance record over the
        // evidence itself (the signed manifest and the content it binds).
        let evidenceRefs = files.filter { $0.name == "manifest.json" || $0.name == "content.ndjson" }.map { id("file", $0.name) }
        for (index, event) in events {
            let key = "custody-\(index)"
            var action: [String: JSONValue] = [
                "core:name": .string(event.kind.rawValue),
                "core:description": .string("custody event \(index): \(event.actor.type.rawValue) \(event.actor.id)"
                                            + (event.subject.chunk.map { ", chunk \($0)" } ?? "")),
                "action:startTime": time(event.at),
                "action:instrument": id("tool", "custos"),
                "action:result": .array([id("provenance-record", key)]),
            ]
            if event.actor.type == .provider { action["action:performer"] = id("organization", "provider") }
            graph.append(node("action", key, "case-investigation:InvestigativeAction", action))
            graph.append(node("provenance-record", key, "case-investigation:ProvenanceRecord", [
                "case-investigation:exhibitNumber": .string("\(manifest.packageId.lowercased)/\(index)"),
                "core:object": .array(evidenceRefs),
            ]))
        }
        return CanonicalJSON.serialize(.object(["@context": context, "@graph": .array(graph)]))
    }

    /// A node id: `urn:custos:kb:<kind>-<UUID>`, the UUID derived from the package, the kind
    /// and a key (UCO asks that ids end in a UUID), so that the same bundle gives the same ids.
    static func iri(_ kind: String, _ key: String, _ seed: UUID) -> String {
        var b = Array(SHA256.hash(data: Array("\(seed.lowercased)/\(kind)/\(key)".utf8)).prefix(16))
        b[6] = (b[6] & 0x0F) | 0x50  // version 5's layout: the UUID pattern UCO checks wants 0-5 there
        b[8] = (b[8] & 0x3F) | 0x80
        let h = b.map { String(format: "%02x", $0) }.joined()
        return "kb:\(kind)-\(h.prefix(8))-\(h.dropFirst(8).prefix(4))-\(h.dropFirst(12).prefix(4))-\(h.dropFirst(16).prefix(4))-\(h.dropFirst(20))"
    }

    /// What a `case.jsonld` states, read back: the tool version and each file's hash.
    public struct Stated: Sendable {
        /// The tool node's `core:description`: the graph's format.
        public var format: String?
        public var toolVersion: String
        /// File name → SHA-256.
        public var files: [String: String]
    }

    /// The tool version a graph states, found without parsing it (canonical JSON has the one
    /// `"tool:version":"…"` member), so that checking a graph costs one graph in memory.
    public static func statedToolVersion(_ bytes: [UInt8]) -> String? {
        let needle = Array("\"tool:version\":\"".utf8)
        guard bytes.count > needle.count else { return nil }
        var i = 0
        while i <= bytes.count - needle.count {
            if bytes[i] == needle[0], Array(bytes[i..<i + needle.count]) == needle {
                let start = i + needle.count
                guard let end = bytes[start...].firstIndex(of: UInt8(ascii: "\"")) else { return nil }
                return String(decoding: bytes[start..<end], as: UTF8.self)
            }
            i += 1
        }
        return nil
    }

    /// Reads the tool version and the files' hashes; nil when it is not such a graph.
    public static func read(_ bytes: [UInt8]) -> Stated? {
        guard let tree = try? JSONParser.parse(bytes), case .array(let graph)? = tree["@graph"] else { return nil }
        var version: String?
        var format: String?
        var files: [String: String] = [:]
        for n in graph {
            if n["@type"]?.stringValue == "tool:Tool" {
                version = n["tool:version"]?.stringValue
                format = n["core:description"]?.stringValue
            }
            if n["@type"]?.stringValue == "observable:File", case .array(let facets)? = n["core:hasFacet"] {
                let name = facets.compactMap { $0["observable:fileName"]?.stringValue }.first
                let hash = facets.compactMap { f -> String? in
                    guard case .array(let hashes)? = f["observable:hash"] else { return nil }
                    return hashes.first?["types:hashValue"]?["@value"]?.stringValue
                }.first
                if let name, let hash { files[name] = hash }
            }
        }
        guard let version else { return nil }
        return Stated(format: format, toolVersion: version, files: files)
    }
}

/// The Custos release, written into `case.jsonld` as the tool's version.
public enum CustosRelease {
    public static let version = "0.19.0"
}
