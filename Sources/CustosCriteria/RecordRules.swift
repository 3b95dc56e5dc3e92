import CustosCanonicalJSON
import CustosModel

/// What a record must hold, per category: the rules of `schemas/records/<category>.json`
/// (version 1), plus what JSON Schema cannot say: identifiers in canonical form (an IPv6
/// address in RFC 5952 text, E.164 numbers) and real calendar dates. A test checks both sides
/// agree on the schema folder's examples.
public enum RecordRules {
    /// A value's rule. `check` returns the reason code a violation gets, or nil.
    struct Field: Sendable {
        var name: String
        var required: Bool
        var check: @Sendable (JSONValue) -> Defect?
    }

    /// Why a record is not clean.
    public enum Defect: String, Sendable, Codable, CaseIterable {
        /// Not valid against its category's schema (a missing or malformed field).
        case schemaInvalid = "schema-invalid"
        /// An identifier not in its canonical form (E.164, RFC 5952, lower-case hex).
        case identifierNotCanonical = "identifier-not-canonical"
        /// A time not in UTC (RFC 3339 ending in Z).
        case timeNotUTC = "time-not-utc"
    }

    static func string(_ range: ClosedRange<Int>) -> @Sendable (JSONValue) -> Defect? {
        { v in
            guard case .string(let s) = v, range.contains(s.count) else { return .schemaInvalid }
            return nil
        }
    }

    static func integer(_ range: ClosedRange<Double>) -> @Sendable (JSONValue) -> Defect? {
        { v in
            guard case .number(let n) = v, n == n.rounded(), range.contains(n) else { return .schemaInvalid }
            return nil
        }
    }

    static func number(_ range: ClosedRange<Double>) -> @Sendable (JSONValue) -> Defect? {
        { v in
            guard case .number(let n) = v, range.contains(n) else { return .schemaInvalid }
            return nil
        }
    }

    static func oneOf(_ values: Set<String>) -> @Sendable (JSONValue) -> Defect? {
        { v in
            guard case .string(let s) = v, values.contains(s) else { return .schemaInvalid }
            return nil
        }
    }

    static let date: @Sendable (JSONValue) -> Defect? = { v in
        guard case .string(let s) = v, s.utf8.count == 10, RFC3339.parse(s + "T00:00:00Z") != nil else { return .schemaInvalid }
        return nil
    }

    static let e164: @Sendable (JSONValue) -> Defect? = { v in
        guard case .string(let s) = v else { return .schemaInvalid }
        return TargetFormat.isValid(Target(type: .msisdn, value: s)) ? nil : .identifierNotCanonical
    }

    static let cellId: @Sendable (JSONValue) -> Defect? = { v in
        guard case .string(let s) = v else { return .schemaInvalid }
        let parts = s.split(separator: "-", omittingEmptySubsequences: false)
        let sizes = [3...3, 2...3, 1...5, 1...9]
        guard parts.count == 4, zip(parts, sizes).allSatisfy({ p, n in n.contains(p.count) && p.utf8.allSatisfy { (0x30...0x39).contains($0) } }) else {
            return .schemaInvalid
        }
        return nil
    }

    static let ipAddress: @Sendable (JSONValue) -> Defect? = { v in
        guard case .string(let s) = v, (7...45).contains(s.utf8.count) else { return .schemaInvalid }
        if s.contains(":") { return canonicalIPv6(s) == s ? nil : (canonicalIPv6(s) == nil ? .schemaInvalid : .identifierNotCanonical) }
        return TargetFormat.isValid(Target(type: .ipv4, value: s)) ? nil : .schemaInvalid
    }

    static let sha256: @Sendable (JSONValue) -> Defect? = { v in
        guard case .string(let s) = v, s.utf8.count == 64 else { return .schemaInvalid }
        if s.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) { return nil }
        return s.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x41...0x46).contains($0) || (0x61...0x66).contains($0) }) ? .identifierNotCanonical : .schemaInvalid
    }

    static let fields: [DataCategory: [Field]] = [
        .subscriber: [
            Field(name: "name", required: true, check: string(1...200)),
            Field(name: "contractStart", required: true, check: date),
            Field(name: "contractEnd", required: false, check: date),
            Field(name: "address", required: false, check: string(0...500)),
            Field(name: "nationalId", required: false, check: string(0...128)),
        ],
        .traffic: [
            Field(name: "direction", required: true, check: oneOf(["incoming", "outgoing"])),
            Field(name: "otherParty", required: true, check: e164),
            Field(name: "durationSeconds", required: true, check: integer(0...604_800)),
            Field(name: "cellId", required: false, check: cellId),
        ],
        .location: [
            Field(name: "cellId", required: true, check: cellId),
            Field(name: "latitude", required: true, check: number(-90...90)),
            Field(name: "longitude", required: true, check: number(-180...180)),
            Field(name: "accuracyMeters", required: false, check: number(0...Double.greatestFiniteMagnitude)),
        ],
        .ipSession: [
            Field(name: "publicIp", required: true, check: ipAddress),
            Field(name: "publicPort", required: true, check: integer(1...65535)),
            Field(name: "bytesUp", required: false, check: integer(0...9.007_199_254_740_991e15)),
            Field(name: "bytesDown", required: false, check: integer(0...9.007_199_254_740_991e15)),
        ],
        .financial: [
            Field(name: "amount", required: true, check: integer(0...9.007_199_254_740_991e15)),
            Field(name: "currency", required: true, check: { v in
                guard case .string(let s) = v, s.utf8.count == 3, s.utf8.allSatisfy({ (0x41...0x5A).contains($0) }) else { return .schemaInvalid }
                return nil
            }),
            Field(name: "counterparty", required: true, check: string(1...128)),
        ],
        .kycDocument: [
            Field(name: "documentType", required: true, check: oneOf(["national-id-card", "passport", "driving-licence", "other"])),
            Field(name: "sha256", required: true, check: sha256),
            Field(name: "issuedOn", required: false, check: date),
        ],
    ]

    /// The record's defects (at most one of each), and which of its category's fields it has.
    static func check(_ record: [String: JSONValue], category: DataCategory, present: inout [Bool]) -> Set<Defect> {
        var defects: Set<Defect> = []
        for (i, field) in (fields[category] ?? []).enumerated() {
            guard let value = record[field.name] else {
                if field.required { defects.insert(.schemaInvalid) }
                continue
            }
            guard value != .null else { defects.insert(.schemaInvalid); continue }
            present[i] = true
            if let defect = field.check(value) { defects.insert(defect) }
        }
        return defects
    }
}
