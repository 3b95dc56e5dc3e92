/// The verdict on a package against the four criteria of Directive 57 — đúng, đủ, sạch, sống
/// (correct, complete, clean, live) — each pass, warn or fail with reason codes and counts.
/// A package is admissible only when all four pass. Canonical JSON, stored and carried in
/// the export bundle as it was computed.
public struct Verdict: Codable, Sendable, Hashable {
    public static let currentFormat = "custos.verdict.v1"

    public enum Status: String, Codable, Sendable, Comparable {
        case pass, warn, fail
        public static func < (a: Status, b: Status) -> Bool { a.order < b.order }
        var order: Int { switch self { case .pass: 0; case .warn: 1; case .fail: 2 } }
    }

    public enum Criterion: String, Codable, Sendable, CaseIterable {
        case correct, complete, clean, live
        /// The criterion's name in the Directive.
        public var name: String {
            switch self {
            case .correct: "đúng"
            case .complete: "đủ"
            case .clean: "sạch"
            case .live: "sống"
            }
        }
    }

    public struct Reason: Codable, Sendable, Hashable {
        public var code: String
        public var status: Status
        /// How many records, results or chunks it concerns (1 for a package-wide one).
        public var count: Int
        public init(code: String, status: Status, count: Int) {
            self.code = code
            self.status = status
            self.count = count
        }
    }

    public struct CriterionVerdict: Codable, Sendable, Hashable {
        public var name: String
        public var status: Status
        public var reasons: [Reason]
        public init(_ criterion: Criterion, reasons: [Reason]) {
            name = criterion.name
            self.reasons = reasons.sorted { ($0.status, $0.code) > ($1.status, $1.code) }
            status = reasons.map(\.status).max() ?? .pass
        }
    }

    /// Per category and field: how many records have it (`present`) of how many (`records`).
    public struct FieldQuality: Codable, Sendable, Hashable {
        public var records: Int
        public var present: Int
        public init(records: Int, present: Int) {
            self.records = records
            self.present = present
        }
    }

    public struct Counts: Codable, Sendable, Hashable {
        public var records: Int
        /// Outside the request's targets, categories or window: quarantined (auditors only).
        public var quarantined: Int
        public var duplicates: Int
        /// Not valid against their schema (`unreadable` ones included).
        public var invalid: Int
        /// So malformed that their target, category or time cannot be read: withheld from
        /// investigators with the quarantined ones, since nobody can tell they are in scope.
        public var unreadable: Int
        public init(records: Int, quarantined: Int, duplicates: Int, invalid: Int, unreadable: Int = 0) {
            self.records = records
            self.quarantined = quarantined
            self.duplicates = duplicates
            self.invalid = invalid
            self.unreadable = unreadable
        }
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            records = try c.decode(Int.self, forKey: .records)
            quarantined = try c.decode(Int.self, forKey: .quarantined)
            duplicates = try c.decode(Int.self, forKey: .duplicates)
            invalid = try c.decode(Int.self, forKey: .invalid)
            // Verdicts from before it was counted.
            unreadable = try c.decodeIfPresent(Int.self, forKey: .unreadable) ?? 0
        }
        /// Records investigators do not see (SPEC §11): quarantined or unreadable.
        public var withheld: Int { quarantined + unreadable }
    }

    /// What sống was judged against: the delivery, its clock and time-stamp, and the bounds.
    public struct Delivery: Codable, Sendable, Hashable {
        public var deliveredAt: String
        public var deadline: String?
        public var timeStampedAt: String?
        public var maximumExtractionAgeSeconds: Int
        public var maximumTimeStampDistanceSeconds: Int
        public init(deliveredAt: String, deadline: String?, timeStampedAt: String?, maximumExtractionAgeSeconds: Int, maximumTimeStampDistanceSeconds: Int) {
            self.deliveredAt = deliveredAt
            self.deadline = deadline
            self.timeStampedAt = timeStampedAt
            self.maximumExtractionAgeSeconds = maximumExtractionAgeSeconds
            self.maximumTimeStampDistanceSeconds = maximumTimeStampDistanceSeconds
        }
    }

    public var format: String
    public var admissible: Bool
    public var criteria: [String: CriterionVerdict]
    public var counts: Counts
    /// `<category>.<field>` → how often it is present: the field-level data-quality report.
    public var quality: [String: FieldQuality]
    public var delivery: Delivery
    public var judgedAt: String

    public init(criteria: [Criterion: CriterionVerdict], counts: Counts, quality: [String: FieldQuality], delivery: Delivery, judgedAt: String) {
        self.delivery = delivery
        format = Self.currentFormat
        self.criteria = Dictionary(uniqueKeysWithValues: criteria.map { ($0.key.rawValue, $0.value) })
        admissible = Criterion.allCases.allSatisfy { criteria[$0]?.status == .pass }
        self.counts = counts
        self.quality = quality
        self.judgedAt = judgedAt
    }

    public func status(_ c: Criterion) -> Status? { criteria[c.rawValue]?.status }
    public func reasons(_ c: Criterion) -> [Reason] { criteria[c.rawValue]?.reasons ?? [] }
}
