import Crypto
import CustosCanonicalJSON
import CustosModel
import Foundation

/// Judges a package on the four criteria. Records stream through `consume` one line at a
/// time (memory grows only with the record digests kept to find duplicates: 16 bytes each,
/// 32 to 64 with the table's room); `finish` adds what the manifest, the signature checks and the delivery say. Pure:
/// the broker, the connector (before it sends) and `custos verify` (offline) run the same code.
public struct PackageJudge: Sendable {
    /// `criteria.*` bounds for sống (live).
    public struct Bounds: Sendable, Hashable {
        /// The extraction's as-of time may be at most this long before delivery.
        public var maximumExtractionAge: Duration = .seconds(24 * 3600)
        /// The time-stamp may be at most this far from delivery.
        public var maximumTimeStampDistance: Duration = .seconds(3600)
        public init() {}
        public init(_ facts: Verdict.Delivery) {
            maximumExtractionAge = .seconds(facts.maximumExtractionAgeSeconds)
            maximumTimeStampDistance = .seconds(facts.maximumTimeStampDistanceSeconds)
        }
    }

    /// When the package arrived, the clock it had to beat, and its time-stamp's time.
    public struct Delivery: Sendable, Hashable {
        /// The facts a verdict states it was judged on (to judge a bundle again offline).
        public init?(_ facts: Verdict.Delivery, timeStampedAt: Date?) {
            guard let delivered = Timestamp.parse(facts.deliveredAt) else { return nil }
            self.init(deliveredAt: delivered, deadline: facts.deadline.flatMap(Timestamp.parse), timeStampedAt: timeStampedAt)
        }

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
        public static let recordsNotSent = "records-not-sent"
        public static let noDataWithRecordsNotSent = "no-data-with-records-not-sent"
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
    /// The signed manifest, when it is known before the records (nil: it comes to `finish`).
    let manifest: Manifest?
    let targets: Set<Target>
    let window: ClosedRange<Double>
    /// When true, every record takes the full parser's path (the tests compare both paths).
    var alwaysParse = false
    var counts = Verdict.Counts(records: 0, quarantined: 0, duplicates: 0, invalid: 0)
    var scope: [String: Int] = [:]
    var defects = Array(repeating: 0, count: RecordRules.Defect.allCases.count)
    var seen = DigestSet()
    /// Set: the digests go there instead of `seen` (bounded memory; counted at the end).
    var store: (any DigestStore)?
    /// Per category (in `DataCategory.allCases` order): records seen, and per field how many had it.
    var present: [(records: Int, fields: [Int])]
    // The fast path's tables: names as bytes, and the request's plain targets by a hash of their value.
    let categoryNames: [[UInt8]]
    let fieldNames: [[[UInt8]]]
    let rules: [[RecordRules.Field]]
    let typeNames: [[UInt8]]
    let plainTargets: [UInt64: [(type: Int, value: [UInt8])]]
    /// Per category (in `DataCategory.allCases` order): whether the request asks for it.
    let asked: [Bool]
    var scan = ScannedRecord()
    /// Whether the record just judged may be shown to investigators.
    private var shown = false
    /// A record line split across content slices, until its end arrives.
    private var lines = RecordLines()
    /// Content bytes consumed so far (where the next slice begins).
    private var contentOffset: Int64 = 0

    /// `digests`: where to keep the records' digests for the duplicate count; by default in
    /// memory (16 to 64 bytes a record).
    public init(request: ApprovedRequest, manifest: Manifest, digests: (any DigestStore)? = nil) {
        self.init(request: request, manifest: Optional(manifest), digests: digests)
    }

    /// For records that arrive before their manifest (package protocol v2, SPEC §7): the
    /// manifest is given to `finish(manifest:checks:delivery:bounds:judgedAt:)`.
    public init(request: ApprovedRequest, digests: (any DigestStore)? = nil) {
        self.init(request: request, manifest: nil, digests: digests)
    }

    private init(request: ApprovedRequest, manifest: Manifest?, digests: (any DigestStore)?) {
        store = digests
        // The table in memory is used only without a store: then it need not be allocated.
        if digests != nil { seen = DigestSet(capacity: 0) }
        self.request = request
        self.manifest = manifest
        targets = Set(request.targets)
        let from = Timestamp.parse(request.window.from)?.timeIntervalSince1970 ?? -.infinity
        let to = Timestamp.parse(request.window.to)?.timeIntervalSince1970 ?? .infinity
        window = min(from, to)...max(from, to)
        let all = DataCategory.allCases
        categoryNames = all.map { Array($0.rawValue.utf8) }
        rules = all.map { RecordRules.fields[$0] ?? [] }
        fieldNames = rules.map { $0.map { Array($0.name.utf8) } }
        present = rules.map { (0, Array(repeating: 0, count: $0.count)) }
        typeNames = TargetType.allCases.map { Array($0.rawValue.utf8) }
        var plain: [UInt64: [(type: Int, value: [UInt8])]] = [:]
        for t in request.targets where t.port == nil && t.at == nil && t.platform == nil {
            let value = Array(t.value.utf8)
            plain[value.withUnsafeBytes { Self.fnv($0) }, default: []].append((TargetType.allCases.firstIndex(of: t.type)!, value))
        }
        plainTargets = plain
        asked = all.map { request.categories.contains($0) }
    }

    /// Whether `bytes` are exactly `name`.
    @inline(__always) static func same(_ name: [UInt8], _ bytes: UnsafeRawBufferPointer) -> Bool {
        name.count == bytes.count && name.withUnsafeBytes { memcmp($0.baseAddress!, bytes.baseAddress!, bytes.count) == 0 }
    }

    /// FNV-1a, 64 bits: a quick hash of a target value's bytes (confirmed byte by byte after).
    static func fnv(_ s: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for c in s { h = (h ^ UInt64(c)) &* 0x100_0000_01b3 }
        return h
    }

    /// Content, in slices of any size: cut into record lines and judged.
    public mutating func consume(content bytes: UnsafeRawBufferPointer) {
        consume(content: bytes, leaves: [])
    }

    /// Content, in slices of any size, with the Merkle leaf digests of the records that end in
    /// this slice, as the content checks computed them (`RecordLeaf`, in content order). A
    /// record whose line matches a leaf exactly (same end, same length) takes that leaf as its
    /// duplicate-search key instead of hashing its bytes again; any other is hashed here, so
    /// missing or misplaced leaves change nothing but the time taken.
    public mutating func consume(content bytes: UnsafeRawBufferPointer, leaves: [RecordLeaf]) {
        var pending = lines
        lines = RecordLines()
        let base = contentOffset
        var next = 0
        pending.consume(bytes) { line, newline in
            let end = base + Int64(newline)
            while next < leaves.count && leaves[next].end < end { next += 1 }
            if next < leaves.count, leaves[next].end == end, leaves[next].length == line.count {
                consume(record: line, key: (leaves[next].a, leaves[next].b))
                next += 1
            } else {
                consume(record: line, key: nil)
            }
        }
        lines = pending
        contentOffset += Int64(bytes.count)
    }

    /// One record: its line's bytes without the newline. Returns whether investigators may see
    /// it: a record the judge could read, inside the request's targets, categories and window.
    /// Every other one is withheld — quarantined when out of scope, or unreadable, so that
    /// nobody can tell whether the authorisation covers it.
    @discardableResult
    public mutating func consume(record line: UnsafeRawBufferPointer) -> Bool {
        consume(record: line, key: nil)
    }

    /// `key`: the record's leaf digest, first 128 bits, when the caller has it (nil: hashed here).
    @discardableResult
    private mutating func consume(record line: UnsafeRawBufferPointer, key: (UInt64, UInt64)?) -> Bool {
        counts.records += 1
        shown = false
        // Byte-identical records are duplicates: their Merkle leaf digests are equal (first
        // 128 bits kept). The content checks compute the same digest for the records root.
        let (a, b) = key ?? RecordLeaf.key(line)
        let fresh = store == nil ? seen.insert(a, b) : store!.insert(a, b)
        if !fresh { counts.duplicates += 1 }
        if !alwaysParse && RecordScanner.scan(line, categories: categoryNames, fieldNames: fieldNames, into: &scan) {
            judgeScanned()
        } else {
            judgeParsed(line)
        }
        return shown
    }

    /// The fast path: a record `RecordScanner` read.
    private mutating func judgeScanned() {
        guard case .index(let ci) = scan.category, let typeBytes = scan.targetType, let valueBytes = scan.targetValue, let timeBytes = scan.time,
              let typeIndex = typeNames.firstIndex(where: { Self.same($0, typeBytes) })
        else { return invalid() }
        // A request's target was checked canonical when it was submitted; another is checked here.
        let hash = Self.fnv(valueBytes)
        var inScope = plainTargets[hash]?.contains { $0.type == typeIndex && Self.same($0.value, valueBytes) } ?? false
        var canonical = inScope
        if !inScope {
            let target = Target(type: TargetType.allCases[typeIndex], value: String(decoding: valueBytes, as: UTF8.self))
            inScope = targets.contains(target)
            // The request's own targets were checked when it was submitted; only another
            // value needs the (slower) full check, libphonenumber's for a number.
            canonical = inScope || TargetFormat.isValid(target)
        }
        guard let time = RFC3339.parse(timeBytes.assumingMemoryBound(to: UInt8.self)) else { return invalid() }
        let seconds = time.seconds, utc = time.canonical
        var has: UInt8 = 0
        var found = RecordRules.check(scan.fields, rules: rules[ci], present: &has)
        if !utc { found |= RecordRules.Defect.timeNotUTC.bit }
        if !canonical { found |= RecordRules.Defect.identifierNotCanonical.bit }
        record(category: ci, inScope: inScope, seconds: seconds, defects: found, present: has)
    }

    /// The full path: the strict parser, for whatever the fast path does not take.
    private mutating func judgeParsed(_ line: UnsafeRawBufferPointer) {
        guard case .object(let top)? = try? JSONParser.parse(line) else { return invalid() }
        guard top.count == 4, let c = top["category"]?.stringValue, let category = DataCategory(rawValue: c),
              case .object(let t)? = top["target"], let target = Self.target(t),
              let timeText = top["time"]?.stringValue, let time = RFC3339.parse(timeText),
              case .object(let fields)? = top["record"]
        else { return invalid() }
        let seconds = time.seconds, utc = time.canonical
        let ci = DataCategory.allCases.firstIndex(of: category)!
        var has: UInt8 = 0
        var found = RecordRules.check(fields, rules: rules[ci], present: &has)
        if !utc { found |= RecordRules.Defect.timeNotUTC.bit }
        if !TargetFormat.isValid(target) { found |= RecordRules.Defect.identifierNotCanonical.bit }
        record(category: ci, inScope: targets.contains(target), seconds: seconds, defects: found, present: has)
    }

    /// What both paths record of a record they could read.
    private mutating func record(category ci: Int, inScope: Bool, seconds: Double, defects found: UInt8, present has: UInt8) {
        present[ci].records += 1
        for f in 0..<present[ci].fields.count where has & (1 << UInt8(f)) != 0 { present[ci].fields[f] += 1 }
        if found != 0 {
            counts.invalid += 1
            for d in RecordRules.Defect.allCases where found & d.bit != 0 { defects[d.rawValue] += 1 }
        }
        // Scope: outside the request's targets, categories or window, a record is quarantined.
        var outside: String?
        if !asked[ci] { outside = Code.categoryOutOfScope }
        else if !inScope { outside = Code.targetOutOfScope }
        else if !window.contains(seconds) { outside = Code.timeOutOfWindow }
        if let outside {
            scope[outside, default: 0] += 1
            counts.quarantined += 1
        } else {
            shown = true
        }
    }

    private mutating func invalid() {
        counts.invalid += 1
        counts.unreadable += 1
        defects[RecordRules.Defect.schemaInvalid.rawValue] += 1
    }

    static func target(_ t: [String: JSONValue]) -> Target? {
        guard Set(t.keys).isSubset(of: ["type", "value", "port", "at", "platform"]),
              let type = t["type"]?.stringValue.flatMap(TargetType.init(rawValue:)), let value = t["value"]?.stringValue else { return nil }
        var port: Int?
        if let p = t["port"] {
            guard case .number(let n) = p, n == n.rounded(), (1...65535).contains(n) else { return nil }
            port = Int(n)
        }
        return Target(type: type, value: value, port: port, at: t["at"]?.stringValue, platform: t["platform"]?.stringValue)
    }

    /// Where each package check belongs: the signature, the signer, the request binding and the
    /// content's hashes are đúng; the chunks and every result's count and records root are đủ.
    static let correctChecks: Set<String> = [
        "manifest-format", "signature", "certificate-expired", "untrusted-signer", "time-stamp", "wrong-provider", "wrong-request", "request-hash",
        "chunk-hash", "chunk-size", "chunks-root", "trailing-data",
    ]
    static let completeChecks: Set<String> = ["chunk-missing", "content-size", "result-size", "result-count", "records-root", "result-counts"]

    /// `checks`: the failure codes of the package's signature, binding and content checks
    /// (`PackageVerification`), sorted here into đúng and đủ.
    /// `manifest`: the signed manifest, when the judge was made without it.
    public mutating func finish(manifest given: Manifest? = nil, checks: [String], delivery: Delivery, bounds: Bounds = Bounds(),
                                judgedAt: String = Timestamp.now()) -> Verdict {
        guard let manifest = given ?? self.manifest else { preconditionFailure("PackageJudge.finish needs the manifest") }
        // A last line without its newline is still a record (the content checks report it).
        var pending = lines
        lines = RecordLines()
        pending.finish { consume(record: $0) }
        counts.duplicates += store?.finish() ?? 0
        func tally(_ codes: [String]) -> [Verdict.Reason] {
            Dictionary(codes.map { ($0, 1) }, uniquingKeysWith: +).map { Verdict.Reason(code: $0.key, status: .fail, count: $0.value) }
        }
        // đúng
        var correct = tally(checks.filter(Self.correctChecks.contains))
        correct += scope.map { Verdict.Reason(code: $0.key, status: .fail, count: $0.value) }

        // đủ: every (target × category) answered, counts and roots as declared, coverage declared.
        var complete = tally(checks.filter(Self.completeChecks.contains))
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
            if from.timeIntervalSince1970 > window.lowerBound || to.timeIntervalSince1970 < window.upperBound { gaps += 1 }
            if let horizon = coverage.retainedSince.flatMap(Timestamp.parse), horizon.timeIntervalSince1970 > window.lowerBound { retention += 1 }
        }
        if undeclared > 0 { complete.append(.init(code: Code.coverageUndeclared, status: .warn, count: undeclared)) }
        if gaps > 0 { complete.append(.init(code: Code.coverageGap, status: .warn, count: gaps)) }
        if retention > 0 { complete.append(.init(code: Code.retentionGap, status: .warn, count: retention)) }
        // Records the provider's systems returned but could not read are not in the package:
        // their count (every one the manifest declares), and the no-data results they may
        // belong to — their own, or any of their category's, or any at all when not even the
        // category could be read.
        let unattributed = manifest.notSent ?? []
        // The provider's counts, added without overflow (a count below 1 fails the manifest's
        // own check; here it adds nothing).
        let notSent = (unattributed + manifest.results.flatMap { $0.notSent ?? [] }).reduce(0) { total, entry in
            let (sum, overflow) = total.addingReportingOverflow(max(0, entry.count))
            return overflow ? Int.max : sum
        }
        if notSent > 0 { complete.append(.init(code: Code.recordsNotSent, status: .warn, count: notSent)) }
        let doubtfulNoData = manifest.results.filter { result in
            result.status == .noData
                && (!(result.notSent ?? []).isEmpty || unattributed.contains { $0.category == nil || $0.category == result.category })
        }.count
        if doubtfulNoData > 0 { complete.append(.init(code: Code.noDataWithRecordsNotSent, status: .warn, count: doubtfulNoData)) }

        // sạch
        var clean = RecordRules.Defect.allCases.filter { defects[$0.rawValue] > 0 }.map { Verdict.Reason(code: $0.code, status: .fail, count: defects[$0.rawValue]) }
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
        for (ci, entry) in present.enumerated() where entry.records > 0 {
            for (i, field) in rules[ci].enumerated() {
                quality["\(DataCategory.allCases[ci].rawValue).\(field.name)"] = .init(records: entry.records, present: entry.fields[i])
            }
        }
        let facts = Verdict.Delivery(deliveredAt: Timestamp.format(delivery.deliveredAt), deadline: delivery.deadline.map(Timestamp.format),
                                     timeStampedAt: delivery.timeStampedAt.map(Timestamp.format),
                                     maximumExtractionAgeSeconds: Int(Self.seconds(bounds.maximumExtractionAge)),
                                     maximumTimeStampDistanceSeconds: Int(Self.seconds(bounds.maximumTimeStampDistance)))
        return Verdict(criteria: [.correct: .init(.correct, reasons: correct), .complete: .init(.complete, reasons: complete),
                                  .clean: .init(.clean, reasons: clean), .live: .init(.live, reasons: live)],
                       counts: counts, quality: quality, delivery: facts, judgedAt: judgedAt)
    }

    struct ResultKey: Hashable {
        var target: Target
        var category: DataCategory
    }

    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
}

/// Cuts content, handed over in slices of any size, into record lines (without their
/// newlines) for the judge. Only a line split across slices is copied.
public struct RecordLines: Sendable {
    private var pending: [UInt8] = []
    public init() {}

    public mutating func consume(_ bytes: UnsafeRawBufferPointer, _ line: (UnsafeRawBufferPointer) -> Void) {
        consume(bytes) { l, _ in line(l) }
    }

    /// The same, also giving where in `bytes` each line's newline is.
    public mutating func consume(_ bytes: UnsafeRawBufferPointer, _ line: (UnsafeRawBufferPointer, Int) -> Void) {
        guard let base = bytes.baseAddress else { return }
        var start = 0
        while start < bytes.count {
            guard let nl = memchr(base + start, 0x0A, bytes.count - start) else {
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start...]))
                return
            }
            let end = base.distance(to: UnsafeRawPointer(nl))
            if pending.isEmpty {
                line(UnsafeRawBufferPointer(rebasing: bytes[start..<end]), end)
            } else {
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
                pending.withUnsafeBytes { line($0, end) }
                pending.removeAll(keepingCapacity: true)
            }
            start = end + 1
        }
    }

    /// A last line without its newline (a defect the content checks report), if any.
    public mutating func finish(_ line: (UnsafeRawBufferPointer) -> Void) {
        if !pending.isEmpty { pending.withUnsafeBytes { line($0) } }
        pending = []
    }
}
