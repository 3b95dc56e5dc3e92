import Crypto
import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import Foundation

/// Judges a package on the four criteria. Records stream through `consume` one line at a
/// time (memory grows only with the set of record digests kept to find duplicates, 16 bytes
/// each); `finish` adds what the manifest, the signature checks and the delivery say. Pure:
/// the broker, the connector (before it sends) and `custos verify` (offline) run the same code.
public struct PackageJudge: Sendable {
    /// `criteria.*` bounds for sống (live).
    public struct Bounds: Sendable, Hashable {
        /// The extraction's as-of time may be at most this long before delivery.
        public var maximumExtractionAge: Duration = .seconds(24 * 3600)
        /// The time-stamp may be at most this far from delivery.
        public var maximumTimeStampDistance: Duration = .seconds(3600)
        public init() {}
    }

    /// When the package arrived, the clock it had to beat, and its time-stamp's time.
    public struct Delivery: Sendable, Hashable {
        public var deliveredAt: Date
        public var deadline: Date?
        public var timeStampedAt: Date?
        public init(deliveredAt: Date, deadline: Date?, timeStampedAt: Date?) {
            self.deliveredAt = deliveredAt
            self.deadline = deadline
            self.timeStampedAt = timeStampedAt
        }
    }

    /// Reason codes, by criterion. Each is documented in `schemas/package/SPEC.md` §10.
    public enum Code {
        // đúng — correct
        public static let targetOutOfScope = "target-out-of-scope"
        public static let categoryOutOfScope = "category-out-of-scope"
        public static let timeOutOfWindow = "time-out-of-window"
        // đủ — complete
        public static let missingResult = "missing-result"
        public static let cannotExecute = "cannot-execute"
        public static let coverageUndeclared = "coverage-undeclared"
        public static let coverageGap = "coverage-gap"
        public static let retentionGap = "retention-gap"
        // sạch — clean
        public static let duplicateRecord = "duplicate-record"
        // sống — live
        public static let deliveredLate = "delivered-late"
        public static let extractionStale = "extraction-stale"
        public static let extractionInFuture = "extraction-in-future"
        public static let timeStampMissing = "time-stamp-missing"
        public static let timeStampFar = "time-stamp-far"
    }

    let request: ApprovedRequest
    let manifest: Manifest
    let targets: Set<Target>
    let categories: Set<DataCategory>
    let window: ClosedRange<Date>
    var counts = Verdict.Counts(records: 0, quarantined: 0, duplicates: 0, invalid: 0)
    var scope: [String: Int] = [:]
    var defects: [RecordRules.Defect: Int] = [:]
    var seen: Set<RecordDigest> = []
    var present: [DataCategory: (records: Int, fields: [Int])] = [:]

    struct RecordDigest: Hashable, Sendable {
        var a: UInt64
        var b: UInt64
    }

    public init(request: ApprovedRequest, manifest: Manifest) {
        self.request = request
        self.manifest = manifest
        targets = Set(request.targets)
        categories = Set(request.categories)
        let from = Timestamp.parse(request.window.from) ?? .distantPast, to = Timestamp.parse(request.window.to) ?? .distantFuture
        window = min(from, to)...max(from, to)
    }

    /// One record: its line's bytes without the newline.
    public mutating func consume(record line: UnsafeRawBufferPointer) {
        counts.records += 1
        // Byte-identical records are duplicates (SHA-256, first 128 bits kept).
        let digest = SHA256.hash(data: line)
        let key = digest.withUnsafeBytes { RecordDigest(a: $0.load(as: UInt64.self), b: $0.load(fromByteOffset: 8, as: UInt64.self)) }
        if !seen.insert(key).inserted { counts.duplicates += 1 }

        guard case .object(let top)? = try? JSONParser.parse(line) else { return invalid(.schemaInvalid) }
        guard top.count == 4, let c = top["category"]?.stringValue, let category = DataCategory(rawValue: c),
              case .object(let t)? = top["target"], let target = Self.target(t),
              let timeText = top["time"]?.stringValue, let (seconds, utc) = RFC3339.parse(timeText),
              case .object(let record)? = top["record"]
        else { return invalid(.schemaInvalid) }
        var recordDefects: Set<RecordRules.Defect> = []
        if !utc { recordDefects.insert(.timeNotUTC) }
        let time = Date(timeIntervalSince1970: seconds)
        if !TargetFormat.isValid(target) { recordDefects.insert(.identifierNotCanonical) }
        var entry = present[category] ?? (0, Array(repeating: 0, count: RecordRules.fields[category]?.count ?? 0))
        var has = Array(repeating: false, count: entry.fields.count)
        recordDefects.formUnion(RecordRules.check(record, category: category, present: &has))
        entry.records += 1
        for (i, h) in has.enumerated() where h { entry.fields[i] += 1 }
        present[category] = entry
        if !recordDefects.isEmpty {
            counts.invalid += 1
            for d in recordDefects { defects[d, default: 0] += 1 }
        }
        // Scope: outside the request's targets, categories or window, a record is quarantined.
        var outside: String?
        if !categories.contains(category) { outside = Code.categoryOutOfScope }
        else if !targets.contains(target) { outside = Code.targetOutOfScope }
        else if !window.contains(time) { outside = Code.timeOutOfWindow }
        if let outside {
            scope[outside, default: 0] += 1
            counts.quarantined += 1
        }
    }

    private mutating func invalid(_ defect: RecordRules.Defect) {
        counts.invalid += 1
        defects[defect, default: 0] += 1
    }

    static func target(_ t: [String: JSONValue]) -> Target? {
        guard let type = t["type"]?.stringValue.flatMap(TargetType.init(rawValue:)), let value = t["value"]?.stringValue else { return nil }
        var port: Int?
        if case .number(let n)? = t["port"] {
            guard n == n.rounded(), (1...65535).contains(n) else { return nil }
            port = Int(n)
        }
        return Target(type: type, value: value, port: port, at: t["at"]?.stringValue, platform: t["platform"]?.stringValue)
    }

    /// Where each package check belongs: the signature, the signer, the request binding and the
    /// content's hashes are đúng; the chunks and every result's count and records root are đủ.
    static let correctChecks: Set<PackageVerification.Failure.Code> = [
        .manifestFormat, .signature, .certificateExpired, .untrustedSigner, .timeStamp, .wrongProvider, .wrongRequest, .requestHash,
        .chunkHash, .chunkSize, .chunksRoot, .trailingData,
    ]
    static let completeChecks: Set<PackageVerification.Failure.Code> = [.chunkMissing, .contentSize, .resultSize, .resultCount, .recordsRoot, .resultCounts]

    public func finish(checks: [PackageVerification.Failure], delivery: Delivery, bounds: Bounds = Bounds(), judgedAt: String = Timestamp.now()) -> Verdict {
        func tally(_ codes: [PackageVerification.Failure.Code]) -> [Verdict.Reason] {
            Dictionary(codes.map { ($0.rawValue, 1) }, uniquingKeysWith: +).map { Verdict.Reason(code: $0.key, status: .fail, count: $0.value) }
        }
        // đúng
        var correct = tally(checks.map(\.code).filter(Self.correctChecks.contains))
        correct += scope.map { Verdict.Reason(code: $0.key, status: .fail, count: $0.value) }

        // đủ: every (target × category) answered, counts and roots as declared, coverage declared.
        var complete = tally(checks.map(\.code).filter(Self.completeChecks.contains))
        let answered = Set(manifest.results.map { ResultKey(target: $0.target, category: $0.category) })
        let missing = request.targets.flatMap { t in request.categories.map { ResultKey(target: t, category: $0) } }.filter { !answered.contains($0) }.count
        if missing > 0 { complete.append(.init(code: Code.missingResult, status: .fail, count: missing)) }
        let cannot = manifest.results.filter { $0.status == .cannotExecute }.count
        if cannot > 0 { complete.append(.init(code: Code.cannotExecute, status: .warn, count: cannot)) }
        var undeclared = 0, gaps = 0, retention = 0
        for result in manifest.results where result.status == .data {
            guard let coverage = result.coverage, let from = Timestamp.parse(coverage.from), let to = Timestamp.parse(coverage.to) else {
                undeclared += 1
                continue
            }
            gaps += coverage.gaps?.count ?? 0
            if from > window.lowerBound || to < window.upperBound { gaps += 1 }
            if let horizon = coverage.retainedSince.flatMap(Timestamp.parse), horizon > window.lowerBound { retention += 1 }
        }
        if undeclared > 0 { complete.append(.init(code: Code.coverageUndeclared, status: .warn, count: undeclared)) }
        if gaps > 0 { complete.append(.init(code: Code.coverageGap, status: .warn, count: gaps)) }
        if retention > 0 { complete.append(.init(code: Code.retentionGap, status: .warn, count: retention)) }

        // sạch
        var clean = defects.map { Verdict.Reason(code: $0.key.rawValue, status: .fail, count: $0.value) }
        if counts.duplicates > 0 { clean.append(.init(code: Code.duplicateRecord, status: .fail, count: counts.duplicates)) }
        // Out-of-scope records are đúng's failure; quarantining them (counts.quarantined) is how
        // sạch is kept, so they are not counted against it twice.

        // sống
        var live: [Verdict.Reason] = []
        if let deadline = delivery.deadline, delivery.deliveredAt > deadline { live.append(.init(code: Code.deliveredLate, status: .fail, count: 1)) }
        if let asOf = Timestamp.parse(manifest.asOf) {
            let age = delivery.deliveredAt.timeIntervalSince(asOf)
            if age > Self.seconds(bounds.maximumExtractionAge) { live.append(.init(code: Code.extractionStale, status: .fail, count: 1)) }
            if age < -Self.seconds(bounds.maximumTimeStampDistance) { live.append(.init(code: Code.extractionInFuture, status: .fail, count: 1)) }
        } else {
            live.append(.init(code: Code.extractionStale, status: .fail, count: 1))
        }
        if let stamped = delivery.timeStampedAt {
            if abs(delivery.deliveredAt.timeIntervalSince(stamped)) > Self.seconds(bounds.maximumTimeStampDistance) {
                live.append(.init(code: Code.timeStampFar, status: .fail, count: 1))
            }
        } else {
            live.append(.init(code: Code.timeStampMissing, status: .fail, count: 1))
        }

        var quality: [String: Verdict.FieldQuality] = [:]
        for (category, entry) in present {
            for (i, field) in (RecordRules.fields[category] ?? []).enumerated() {
                quality["\(category.rawValue).\(field.name)"] = .init(records: entry.records, present: entry.fields[i])
            }
        }
        return Verdict(criteria: [.correct: .init(.correct, reasons: correct), .complete: .init(.complete, reasons: complete),
                                  .clean: .init(.clean, reasons: clean), .live: .init(.live, reasons: live)],
                       counts: counts, quality: quality, judgedAt: judgedAt)
    }

    struct ResultKey: Hashable {
        var target: Target
        var category: DataCategory
    }

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
}
