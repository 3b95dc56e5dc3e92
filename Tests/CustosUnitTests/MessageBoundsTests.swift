import CustosCanonicalJSON
import CustosModel
import Foundation
import Testing

/// `MessageBounds` — the bounds the broker enforces on a provider's message before the database
/// sees it — against `schemas/messages/`: schema and code agree on every bound, every number
/// and string of a provider message is bounded, and each bound is enforced at its edge.
@Suite("Provider message bounds")
struct MessageBoundsTests {
    static let schemas = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("schemas")
    static let providerTypes = MessageType.allCases.filter { $0.direction == .fromProvider }

    /// A number or string the schema describes, at its path in the message.
    struct Leaf: Hashable {
        var path: String
        var node: [String: JSONValue]
    }

    /// Every integer, number and string under `node`, following `$ref`s across files.
    static func leaves(_ node: JSONValue, path: String, file: URL) throws -> [Leaf] {
        guard case .object(let n) = node else { return [] }
        if let ref = n["$ref"]?.stringValue {
            let parts = ref.split(separator: "#", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let target = parts[0].isEmpty ? file : file.deletingLastPathComponent().appendingPathComponent(parts[0]).standardizedFileURL
            var resolved = try JSONParser.parse(Array(Data(contentsOf: target)))
            for key in (parts.count > 1 ? parts[1] : "").split(separator: "/") { resolved = try #require(resolved[String(key)]) }
            return try leaves(resolved, path: path, file: target)
        }
        if n["enum"] != nil || n["const"] != nil { return [] }
        switch n["type"]?.stringValue {
        case "object":
            var out: [Leaf] = []
            for (key, child) in n["properties"]?.objectValue ?? [:] {
                out += try leaves(child, path: path.isEmpty ? key : path + "." + key, file: file)
            }
            return out
        case "array":
            return try n["items"].map { try leaves($0, path: path + "[]", file: file) } ?? []
        case "integer", "number", "string":
            return [Leaf(path: path, node: n)]
        default:
            return []
        }
    }

    /// What the schemas say of one provider message type: its envelope's leaves and its body's.
    static func schemaLeaves(_ type: MessageType) throws -> [Leaf] {
        let envelopeFile = schemas.appendingPathComponent("messages/envelope.json")
        var envelope = try JSONParser.parse(Array(Data(contentsOf: envelopeFile)))
        if case .object(var top) = envelope, case .object(var props)? = top["properties"] {
            props["body"] = nil  // described by the type's own schema
            top["properties"] = .object(props)
            envelope = .object(top)
        }
        let bodyFile = schemas.appendingPathComponent("messages/\(type.rawValue).json")
        let body = try JSONParser.parse(Array(Data(contentsOf: bodyFile)))
        return try leaves(envelope, path: "", file: envelopeFile) + leaves(body, path: "body", file: bodyFile)
    }

    static func number(_ v: JSONValue?) -> Int64? {
        if case .number(let d)? = v { return Int64(exactly: d) }
        return nil
    }

    @Test(arguments: providerTypes)
    func schemaAndCodeAgreeOnEveryBound(_ type: MessageType) throws {
        let found = try Self.schemaLeaves(type)
        #expect(!found.isEmpty)
        let table = (MessageBounds.fields[type] ?? [:]).merging(MessageBounds.envelope) { a, _ in a }
        for leaf in found {
            let code = table[leaf.path]
            switch leaf.node["type"]?.stringValue {
            case "integer":
                let min = try #require(Self.number(leaf.node["minimum"]), "\(type.rawValue) \(leaf.path): an integer needs a minimum")
                let max = try #require(Self.number(leaf.node["maximum"]), "\(type.rawValue) \(leaf.path): an integer needs a maximum")
                #expect(code == .integer(min...max), "\(type.rawValue) \(leaf.path): schema \(min)...\(max), code \(String(describing: code))")
            case "string":
                if let max = Self.number(leaf.node["maxLength"]) {
                    #expect(code == .string(maxLength: Int(max)), "\(type.rawValue) \(leaf.path): schema maxLength \(max), code \(String(describing: code))")
                    // Free text (no pattern of its own shape) must say it holds no NUL.
                    #expect(leaf.node["pattern"] != nil || leaf.node["contentEncoding"] != nil, "\(type.rawValue) \(leaf.path): free text needs the no-NUL pattern")
                } else {
                    #expect(leaf.node["pattern"] != nil, "\(type.rawValue) \(leaf.path): a string needs a maxLength or a pattern")
                    #expect(code == nil)
                }
            default:
                Issue.record("\(type.rawValue) \(leaf.path): a number must be an integer")
            }
        }
        // And the code bounds nothing the schema does not describe.
        let paths = Set(found.map(\.path))
        for path in table.keys { #expect(paths.contains(path), "\(type.rawValue): the code bounds \(path), which the schema does not have") }
    }

    /// A message holding only `value` at `path` (`a.b[].c`).
    static func message(_ path: String, _ value: JSONValue) -> JSONValue {
        func build(_ parts: ArraySlice<Substring>) -> JSONValue {
            guard let first = parts.first else { return value }
            let inner = build(parts.dropFirst())
            if first.hasSuffix("[]") { return .object([String(first.dropLast(2)): .array([inner])]) }
            return .object([String(first): inner])
        }
        return build(path.split(separator: ".")[...])
    }

    @Test(arguments: providerTypes)
    func everyBoundIsEnforcedAtItsEdge(_ type: MessageType) {
        let table = (MessageBounds.fields[type] ?? [:]).merging(MessageBounds.envelope) { a, _ in a }
        for (path, bound) in table {
            switch bound {
            case .integer(let range):
                #expect(MessageBounds.violation(in: Self.message(path, .number(Double(range.lowerBound))), type: type) == nil)
                #expect(MessageBounds.violation(in: Self.message(path, .number(Double(range.upperBound))), type: type) == nil)
                for bad in [Double(range.lowerBound) - 1, Double(range.upperBound) + 1, Double(range.lowerBound) + 0.5, 1e300] {
                    let why = MessageBounds.violation(in: Self.message(path, .number(bad)), type: type)
                    #expect(why?.contains(path) == true, "\(type.rawValue) \(path) = \(bad): \(why ?? "accepted")")
                }
            case .string(let max):
                #expect(MessageBounds.violation(in: Self.message(path, .string(String(repeating: "ế", count: max))), type: type) == nil)
                let why = MessageBounds.violation(in: Self.message(path, .string(String(repeating: "a", count: max + 1))), type: type)
                #expect(why?.contains(path) == true, "\(type.rawValue) \(path): \(why ?? "accepted")")
            }
        }
    }

    @Test func noStringAnywhereMayHoldNULAndNoNumberMayPassTwoToTheFiftyThree() {
        // Anywhere: in a member the table knows, one it does not, and a member's name.
        let nul = "before\u{0}after"
        #expect(MessageBounds.violation(in: Self.message("body.question", .string(nul)), type: .clarificationRequest)?.contains("body.question") == true)
        let elsewhere = MessageBounds.violation(in: Self.message("body.anything[].deeper", .string(nul)), type: .status)
        #expect(elsewhere?.contains("NUL") == true)
        #expect(elsewhere?.contains("anything") == false, "a path the schema does not have is the sender's words: not repeated")
        #expect(MessageBounds.violation(in: .object(["a\u{0}": .null]), type: .ack)?.contains("NUL") == true)
        #expect(MessageBounds.violation(in: Self.message("body.other", .number(9_007_199_254_740_992)), type: .ack) != nil)
        #expect(MessageBounds.violation(in: Self.message("body.other", .number(-9_007_199_254_740_991)), type: .ack) == nil)
        #expect(MessageBounds.violation(in: Self.message("body.other", .number(.infinity)), type: .ack) != nil)
        // The issue's example: a status whose percent does not fit the database column.
        #expect(MessageBounds.violation(in: Self.message("body.percent", .number(1e12)), type: .status)?.contains("body.percent") == true)
    }
}
