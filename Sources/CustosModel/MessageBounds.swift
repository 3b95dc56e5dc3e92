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

    /// The first value of a provider's message (its whole JSON, envelope and body) that breaks
    /// a bound, as a reason naming its field — never its value — or nil. Besides the table:
    /// no string anywhere may hold U+0000, and no number anywhere may lie beyond ±(2^53 − 1).
    public static func violation(in message: JSONValue, type: MessageType) -> String? {
        let table = fields[type] ?? [:]
        func bound(_ path: String) -> Bound? { table[path] ?? envelope[path] }
        // A path is named only when it is one of the schema's: others are the sender's words.
        func named(_ path: String, _ what: String) -> String { bound(path) != nil ? path : what }
        func check(_ value: JSONValue, _ path: String) -> String? {
            switch value {
            case .string(let s):
                if s.utf8.contains(0) { return "malformed: \(named(path, "a string")) holds a NUL character (U+0000)" }
                if case .string(let max)? = bound(path), s.unicodeScalars.count > max {
                    return "malformed: \(path) is longer than \(max) characters"
                }
            case .number(let d):
                if case .integer(let range)? = bound(path) {
                    guard d.rounded() == d, d >= Double(range.lowerBound), d <= Double(range.upperBound) else {
                        return "malformed: \(path) must be an integer from \(range.lowerBound) to \(range.upperBound)"
                    }
                } else if !(abs(d) <= Double(safeInteger)) {
                    return "malformed: a number is beyond ±(2^53 − 1)"
                }
            case .array(let items):
                for item in items { if let v = check(item, path + "[]") { return v } }
            case .object(let members):
                for (key, member) in members.sorted(by: { $0.key < $1.key }) {
                    if key.utf8.contains(0) { return "malformed: a member name holds a NUL character (U+0000)" }
                    if let v = check(member, path.isEmpty ? key : path + "." + key) { return v }
                }
            case .null, .bool:
                break
            }
            return nil
        }
        return check(message, "")
    }
}
