import CustosCanonicalJSON
import CustosModel

/// What a record must hold, per category: the rules of `schemas/records/<category>.json`
/// (version 1), plus what JSON Schema cannot say: identifiers in canonical form (an IPv6
/// address in RFC 5952 text, E.164 numbers, lower-case hex) and real calendar dates. They read
/// bytes, so the judge's fast path allocates nothing. A test checks both sides agree on the
/// schema folder's examples.
public enum RecordRules {
    /// Why a record is not clean.
    public enum Defect: Int, Sendable, CaseIterable {
        /// Not valid against its category's schema (a missing or malformed field).
        case schemaInvalid
        /// An identifier not in its canonical form (E.164, RFC 5952, lower-case hex).
        case identifierNotCanonical
        /// A time not in UTC as the record schema writes it (RFC 3339, upper-case `T`, ending
        /// in `Z`, at most nine fraction digits).
        case timeNotUTC

        public var code: String {
            switch self {
            case .schemaInvalid: "schema-invalid"
            case .identifierNotCanonical: "identifier-not-canonical"
            case .timeNotUTC: "time-not-utc"
            }
        }
        var bit: UInt8 { 1 << UInt8(rawValue) }
    }

    struct Field: Sendable {
        var name: String
        var required: Bool
        /// The defect a value has, or nil.
        var check: @Sendable (FieldValue) -> Defect?
    }

    static func characters(_ s: UnsafeRawBufferPointer) -> Int {
        var n = 0
        for c in s where c & 0xC0 != 0x80 { n += 1 }  // JSON Schema's lengths count code points
        return n
    }

    static func digits(_ s: Slice<UnsafeRawBufferPointer>) -> Bool { !s.isEmpty && s.allSatisfy { (0x30...0x39).contains($0) } }

    static func string(_ range: ClosedRange<Int>) -> @Sendable (FieldValue) -> Defect? {
        { v in
            guard case .string(let s) = v, range.contains(characters(s)) else { return .schemaInvalid }
            return nil
        }
    }

    static func integer(_ range: ClosedRange<Double>) -> @Sendable (FieldValue) -> Defect? {
        { v in
            guard case .number(let n) = v, n == n.rounded(), range.contains(n) else { return .schemaInvalid }
            return nil
        }
    }

    static func number(_ range: ClosedRange<Double>) -> @Sendable (FieldValue) -> Defect? {
        { v in
            guard case .number(let n) = v, range.contains(n) else { return .schemaInvalid }
            return nil
        }
    }

    static func oneOf(_ values: [String]) -> @Sendable (FieldValue) -> Defect? {
        let options = values.map { Array($0.utf8) }
        return { v in
            guard case .string(let s) = v, options.contains(where: { PackageJudge.same($0, s) }) else { return .schemaInvalid }
            return nil
        }
    }

    static let date: @Sendable (FieldValue) -> Defect? = { v in
        guard case .string(let s) = v, s.count == 10, s[4] == 0x2D, s[7] == 0x2D, digits(s[0..<4]), digits(s[5..<7]), digits(s[8..<10]) else {
            return .schemaInvalid
        }
        func value(_ r: Range<Int>) -> Int { s[r].reduce(0) { $0 * 10 + Int($1 - 0x30) } }
        let month = value(5..<7), day = value(8..<10)
        guard (1...12).contains(month), (1...RFC3339.daysIn(month, value(0..<4))).contains(day) else { return .schemaInvalid }
        return nil
    }

    static let e164: @Sendable (FieldValue) -> Defect? = { v in
        guard case .string(let s) = v else { return .schemaInvalid }
        // + then 7 to 15 digits, not starting with 0 (what TargetFormat accepts for an msisdn).
        guard s.count >= 8, s.count <= 16, s[0] == 0x2B, s[1] != 0x30, digits(s[1...]) else { return .identifierNotCanonical }
        return nil
    }

    static let cellId: @Sendable (FieldValue) -> Defect? = { v in
        guard case .string(let s) = v else { return .schemaInvalid }
        // MCC-MNC-LAC-CI: 3, 2 to 3, 1 to 5 and 1 to 9 digits (read without splitting: it is hot).
        let sizes: (ClosedRange<Int>, ClosedRange<Int>, ClosedRange<Int>, ClosedRange<Int>) = (3...3, 2...3, 1...5, 1...9)
        var part = 0, length = 0
        for c in s {
            if c == 0x2D {
                let ok = switch part { case 0: sizes.0.contains(length); case 1: sizes.1.contains(length); default: sizes.2.contains(length) }
                guard ok, part < 3 else { return .schemaInvalid }
                part += 1
                length = 0
            } else {
                guard (0x30...0x39).contains(c) else { return .schemaInvalid }
                length += 1
            }
        }
        guard part == 3, sizes.3.contains(length) else { return .schemaInvalid }
        return nil
    }

    static let ipAddress: @Sendable (FieldValue) -> Defect? = { v in
        guard case .string(let s) = v, (7...45).contains(s.count) else { return .schemaInvalid }
        let text = String(decoding: s, as: UTF8.self)
        if s.contains(0x3A) {
            guard let canonical = canonicalIPv6(text) else { return .schemaInvalid }
            return canonical == text ? nil : .identifierNotCanonical
        }
        return TargetFormat.isValid(Target(type: .ipv4, value: text)) ? nil : .schemaInvalid
    }

    static let sha256: @Sendable (FieldValue) -> Defect? = { v in
        guard case .string(let s) = v, s.count == 64 else { return .schemaInvalid }
        if s.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) { return nil }
        return s.allSatisfy({ (0x30...0x39).contains($0) || (0x41...0x46).contains($0) || (0x61...0x66).contains($0) }) ? .identifierNotCanonical : .schemaInvalid
    }

    static let currency: @Sendable (FieldValue) -> Defect? = { v in
        guard case .string(let s) = v, s.count == 3, s.allSatisfy({ (0x41...0x5A).contains($0) }) else { return .schemaInvalid }
        return nil
    }

    static let safeInteger: ClosedRange<Double> = 0...9_007_199_254_740_991

    /// The rules, in a fixed order per category (the order of `DataCategory.allCases`).
    /// The names of a category's fields whose values are numbers (so that a CSV export's
    /// cells can be typed as the schema wants them).
    public static func numericFields(_ category: DataCategory) -> Set<String> {
        Set((fields[category] ?? []).filter { $0.check(.number(0)) != .schemaInvalid }.map(\.name))
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
            Field(name: "bytesUp", required: false, check: integer(safeInteger)),
            Field(name: "bytesDown", required: false, check: integer(safeInteger)),
        ],
        .financial: [
            Field(name: "amount", required: true, check: integer(safeInteger)),
            Field(name: "currency", required: true, check: currency),
            Field(name: "counterparty", required: true, check: string(1...128)),
        ],
        .kycDocument: [
            Field(name: "documentType", required: true, check: oneOf(["national-id-card", "passport", "driving-licence", "other"])),
            Field(name: "sha256", required: true, check: sha256),
            Field(name: "issuedOn", required: false, check: date),
        ],
    ]

    /// The record's defects (a bit per `Defect`) from its fields' values in the rules' order
    /// (nil: absent); `present` gets a bit per field that is there.
    static func check(_ values: [FieldValue?], rules: [Field], present: inout UInt8) -> UInt8 {
        var defects: UInt8 = 0
        for (i, field) in rules.enumerated() {
            guard let value = values[i] else {
                if field.required { defects |= Defect.schemaInvalid.bit }
                continue
            }
            present |= 1 << UInt8(i)
            if let defect = field.check(value) { defects |= defect.bit }
        }
        return defects
    }

    /// The same, for a record the full parser read; its strings are handed over as bytes.
    static func check(_ record: [String: JSONValue], rules: [Field], present: inout UInt8) -> UInt8 {
        var defects: UInt8 = 0
        for (i, field) in rules.enumerated() {
            guard let value = record[field.name] else {
                if field.required { defects |= Defect.schemaInvalid.bit }
                continue
            }
            present |= 1 << UInt8(i)
            let defect: Defect?
            switch value {
            case .string(var s): defect = s.withUTF8 { field.check(.string(UnsafeRawBufferPointer($0))) }
            case .number(let d): defect = field.check(.number(d))
            default: defect = field.check(.other)
            }
            if let defect { defects |= defect.bit }
        }
        return defects
    }
}
