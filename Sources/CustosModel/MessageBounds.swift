import CustosCanonicalJSON

/// The bounds that `schemas/messages/` (and `schemas/package/manifest.json`, which the
/// manifest message carries) set on every number and free-text string of a provider's
/// message. The broker checks them on the message as parsed, before anything reaches the
/// database, so that no value a provider sends can make a statement fail (a number too large
/// for its column, a NUL character PostgreSQL cannot store in text): such a message is refused
/// with its reason and dead-lettered, and ingestion goes on.
///
/// The unit tests read the schemas and check that every bound there is the one here.
public enum MessageBounds {
    public enum Bound: Sendable, Hashable {
        /// A JSON Schema `integer` with `minimum` and `maximum` (both inclusive).
        case integer(ClosedRange<Int64>)
        /// A string with `maxLength`, counted in Unicode code points (JSON Schema 2020-12 §6.3.1).
        case string(maxLength: Int)
    }

    /// The largest integer every JSON implementation reads exactly (I-JSON, RFC 7493 §2.2):
    /// 2^53 − 1. Counts and sizes in a manifest are bounded by it; it also fits PostgreSQL's
    /// `bigint`.
    public static let safeInteger: Int64 = 9_007_199_254_740_991

    /// Base64 of at most 1 MiB (a CMS signature or an RFC 3161 token).
    public static let base64MiB = 1_398_104

    /// Bounds by message type and field path: members joined by `.`, array items as `[]`
    /// (`body.results[].offset`). Paths under `signature` apply to every type.
    public static let fields: [MessageType: [String: Bound]] = {
        let target: [String: Bound] = ["value": .string(maxLength: 254), "port": .integer(1...65535)]
        var manifest: [String: Bound] = [
            "body.signature": .string(maxLength: base64MiB),
            "body.timeStamp": .string(maxLength: base64MiB),
            "body.manifest.results[].recordCount": .integer(0...safeInteger),
            "body.manifest.results[].size": .integer(0...safeInteger),
            "body.manifest.results[].reason": .string(maxLength: 500),
            "body.manifest.results[].coverage.gaps[].reason": .string(maxLength: 500),
            "body.manifest.results[].notSent[].count": .integer(1...safeInteger),
            "body.manifest.content.size": .integer(0...safeInteger),
            "body.manifest.content.recordCount": .integer(0...safeInteger),
            "body.manifest.chunks[].index": .integer(0...999_999),
            "body.manifest.chunks[].size": .integer(1...524_288),
            "body.manifest.notSent[].count": .integer(1...safeInteger),
        ]
        for (k, v) in target { manifest["body.manifest.results[].target." + k] = v }
        return [
            .status: ["body.percent": .integer(0...100)],
            .chunk: [
                "body.index": .integer(0...999_999), "body.size": .integer(1...524_288),
                "body.results[].result": .integer(0...999_999), "body.results[].offset": .integer(0...524_287),
            ],
            .manifestPart: ["body.index": .integer(0...1023), "body.count": .integer(2...1024), "body.size": .integer(1...524_288)],
            .clarificationRequest: ["body.question": .string(maxLength: 4000)],
            .refusal: ["body.detail": .string(maxLength: 2000)],
            .manifest: manifest,
        ]
    }()

    /// Bounds every message has (`schemas/messages/envelope.json`).
    public static let envelope: [String: Bound] = ["signature.value": .string(maxLength: 1024)]

    /// Every path that leads to a bounded field, by message type (the fields' own paths too):
    /// below any other, no path is built (a long member name costs its length once).
    static let pathsToBounds: [MessageType: Set<String>] = {
        var out: [MessageType: Set<String>] = [:]
        for type in MessageType.allCases {
            var paths = Set<String>([""])
            for key in Array((fields[type] ?? [:]).keys) + Array(envelope.keys) {
                var prefix = ""
                for part in key.split(separator: ".") {
                    prefix = prefix.isEmpty ? String(part) : prefix + "." + part
                    paths.insert(prefix)
                    if prefix.hasSuffix("[]") { paths.insert(String(prefix.dropLast(2))) }
                }
            }
            out[type] = paths
        }
        return out
    }()

    /// The first value of a provider's message (its whole JSON, envelope and body) that breaks
    /// a bound, as a reason naming its field — never its value — or nil. Besides the table:
    /// no string anywhere may hold U+0000, and no number anywhere may lie beyond ±(2^53 − 1).
    /// Linear in the message's size.
    public static func violation(in message: JSONValue, type: MessageType) -> String? {
        let table = fields[type] ?? [:]
        let known = pathsToBounds[type] ?? [""]
        // `path`: the value's path while it may lead to a bounded field, else nil.
        func check(_ value: JSONValue, _ path: String?, _ bound: Bound?) -> String? {
            switch value {
            case .string(let s):
                if s.utf8.contains(0) { return "malformed: \(bound != nil ? path! : "a string") holds a NUL character (U+0000)" }
                if case .string(let max)? = bound, s.unicodeScalars.count > max {
                    return "malformed: \(path!) is longer than \(max) characters"
                }
            case .number(let d):
                if case .integer(let range)? = bound {
                    guard d.rounded() == d, d >= Double(range.lowerBound), d <= Double(range.upperBound) else {
                        return "malformed: \(path!) must be an integer from \(range.lowerBound) to \(range.upperBound)"
                    }
                } else if !(abs(d) <= Double(safeInteger)) {
                    return "malformed: a number is beyond ±(2^53 − 1)"
                }
            case .array(let items):
                let itemPath = path.map { $0 + "[]" }
                let itemBound = itemPath.flatMap { table[$0] ?? envelope[$0] }
                let next = itemPath.flatMap { known.contains($0) ? $0 : nil }
                for item in items { if let v = check(item, next, itemBound) { return v } }
            case .object(let members):
                for (key, member) in members.sorted(by: { $0.key < $1.key }) {
                    if key.utf8.contains(0) { return "malformed: a member name holds a NUL character (U+0000)" }
                    let childPath = path.flatMap { p -> String? in
                        let c = p.isEmpty ? key : p + "." + key
                        return known.contains(c) ? c : nil
                    }
                    if let v = check(member, childPath, childPath.flatMap { table[$0] ?? envelope[$0] }) { return v }
                }
            case .null, .bool:
                break
            }
            return nil
        }
        return check(message, "", nil)
    }
}
