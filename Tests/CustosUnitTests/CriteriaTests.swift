import Crypto
import CustosCanonicalJSON
@testable import CustosCriteria
import CustosEvidence
import CustosModel
import Foundation
import Testing

/// The four criteria as a pure function: a table of crafted packages, each breaking exactly one
/// rule and getting exactly the expected verdict and reason; and the record rules agreeing
/// with `schemas/records` on its examples.
@Suite("The four criteria")
struct CriteriaTests {
    static let a = Target(type: .msisdn, value: "+84912345678"), b = Target(type: .msisdn, value: "+84987654321")

    /// A package that passes all four: two targets × (traffic, location), every result with
    /// its records and full coverage, delivered in time, extracted an hour before, time-stamped.
    struct Crafted {
        var request: ApprovedRequest
        var results: [Manifest.Result]
        var lines: [String]
        var checks: [String] = []
        var asOf = "2026-11-20T09:00:00Z"
        var delivery = PackageJudge.Delivery(deliveredAt: Timestamp.parse("2026-11-20T10:00:00Z")!, deadline: Timestamp.parse("2026-11-30T00:00:00Z")!,
                                             timeStampedAt: Timestamp.parse("2026-11-20T09:59:00Z")!)

        init() {
            let spec = RequestSpec(caseId: UUID(uuidString: "00000000-0000-4000-8000-00000000000c")!, providerId: "prov-a",
                                   legalBasis: LegalBasis(decisionNumber: "QD-7/2026", issuingAuthority: "Test Authority", issuedOn: "2026-11-01"),
                                   targets: [CriteriaTests.a, CriteriaTests.b], categories: [.traffic, .location],
                                   window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"))
            request = ApprovedRequest(requestId: UUID(uuidString: "00000000-0000-4000-8000-000000000001")!, spec: spec, submittedBy: "inv",
                                      approvedBy: "appr", approvedAt: "2026-11-19T00:00:00Z")
            lines = []
            results = []
            for t in [CriteriaTests.a, CriteriaTests.b] {
                lines.append(Self.traffic(t, party: "+84907000123"))
                lines.append(Self.location(t))
                for category in [DataCategory.traffic, .location] {
                    results.append(Manifest.Result(target: t, category: category, status: .data, recordCount: 1, size: 0, recordsRoot: "",
                                                   coverage: .init(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z", retainedSince: "2025-11-01T00:00:00Z")))
                }
            }
        }

        static func frame(_ t: Target, _ category: String, _ time: String, _ record: String) -> String {
            "{\"category\":\"\(category)\",\"target\":{\"type\":\"\(t.type.rawValue)\",\"value\":\"\(t.value)\"},\"time\":\"\(time)\",\"record\":\(record)}"
        }
        static func traffic(_ t: Target, party: String, time: String = "2026-10-15T08:30:00Z", cell: Bool = true) -> String {
            frame(t, "traffic", time, "{\"direction\":\"outgoing\",\"otherParty\":\"\(party)\",\"durationSeconds\":61\(cell ? ",\"cellId\":\"452-04-1234-56\"" : "")}")
        }
        static func location(_ t: Target) -> String {
            frame(t, "location", "2026-10-16T09:00:00Z", "{\"cellId\":\"452-04-1234-56\",\"latitude\":21.0285,\"longitude\":105.8542}")
        }

        var notSent: [Manifest.NotSent]?

        var manifest: Manifest {
            var m = Manifest(packageId: UUID(uuidString: "00000000-0000-4000-8000-0000000000aa")!, requestId: request.requestId, requestHash: "",
                             providerId: "prov-a", asOf: asOf, createdAt: asOf, results: results,
                             content: .init(size: 0, recordCount: lines.count), chunks: [], chunksRoot: "")
            m.notSent = notSent
            return m
        }

        func judge() -> Verdict {
            var judge = PackageJudge(request: request, manifest: manifest)
            for line in lines { _ = Array(line.utf8).withUnsafeBytes { judge.consume(record: $0) } }
            return judge.finish(checks: checks, delivery: delivery, judgedAt: "2026-11-20T10:00:01Z")
        }
    }

    @Test func aGoodPackageIsAdmissible() {
        let v = Crafted().judge()
        #expect(v.admissible, "\(v.criteria)")
        #expect(Verdict.Criterion.allCases.allSatisfy { v.status($0) == .pass })
        #expect(v.counts == Verdict.Counts(records: 4, quarantined: 0, duplicates: 0, invalid: 0))
        #expect(v.criteria["correct"]?.name == "đúng" && v.criteria["complete"]?.name == "đủ" && v.criteria["clean"]?.name == "sạch" && v.criteria["live"]?.name == "sống")
    }

    /// Each breaks one rule: (name, change, criterion, status, reason code, count).
    static let table: [(String, @Sendable (inout Crafted) -> Void, Verdict.Criterion, Verdict.Status, String, Int)] = [
        // đúng
        ("a bad signature", { $0.checks = ["signature"] }, .correct, .fail, "signature", 1),
        ("another request's hash", { $0.checks = ["request-hash"] }, .correct, .fail, "request-hash", 1),
        ("signed by another provider", { $0.checks = ["wrong-provider"] }, .correct, .fail, "wrong-provider", 1),
        ("a chunk's hash", { $0.checks = ["chunk-hash", "chunk-hash"] }, .correct, .fail, "chunk-hash", 2),
        ("a record about another target", { $0.lines.append(Crafted.traffic(Target(type: .msisdn, value: "+84900000001"), party: "+84907000999")) },
         .correct, .fail, "target-out-of-scope", 1),
        ("a record of a category not asked for", { $0.lines.append(Crafted.frame(CriteriaTests.a, "subscriber", "2026-10-15T08:30:00Z",
                                                                                  "{\"name\":\"Synthetic\",\"contractStart\":\"2020-01-01\"}")) },
         .correct, .fail, "category-out-of-scope", 1),
        ("a record outside the window", { $0.lines.append(Crafted.traffic(CriteriaTests.a, party: "+84907000999", time: "2026-12-01T00:00:00Z")) },
         .correct, .fail, "time-out-of-window", 1),
        // đủ
        ("a (target × category) with no result", { $0.results.removeLast() }, .complete, .fail, "missing-result", 1),
        ("a signed cannot-execute", { $0.results[3].status = .cannotExecute; $0.results[3].coverage = nil }, .complete, .warn, "cannot-execute", 1),
        ("a result's count", { $0.checks = ["result-count"] }, .complete, .fail, "result-count", 1),
        ("a result's records root", { $0.checks = ["records-root"] }, .complete, .fail, "records-root", 1),
        ("a missing chunk", { $0.checks = ["chunk-missing"] }, .complete, .fail, "chunk-missing", 1),
        ("coverage undeclared", { $0.results[0].coverage = nil }, .complete, .warn, "coverage-undeclared", 1),
        ("a gap in coverage", { $0.results[1].coverage?.gaps = [.init(from: "2026-10-10T00:00:00Z", to: "2026-10-11T00:00:00Z", reason: "outage")] },
         .complete, .warn, "coverage-gap", 1),
        ("coverage that starts late", { $0.results[2].coverage?.from = "2026-10-05T00:00:00Z" }, .complete, .warn, "coverage-gap", 1),
        ("data no longer retained", { $0.results[0].coverage?.retainedSince = "2026-10-10T00:00:00Z" }, .complete, .warn, "retention-gap", 1),
        ("records of a data result not sent", { $0.results[0].notSent = [.init(reason: .unreadableTime, count: 2)] }, .complete, .warn, "records-not-sent", 2),
        ("records of a category not sent", { $0.notSent = [.init(category: .traffic, reason: .unreadableTarget, count: 1), .init(reason: .unreadableRecord, count: 3)] },
         .complete, .warn, "records-not-sent", 4),
        // sạch
        ("a record missing a required field", { $0.lines[0] = Crafted.frame(CriteriaTests.a, "traffic", "2026-10-15T08:30:00Z", "{\"direction\":\"outgoing\",\"durationSeconds\":1}") },
         .clean, .fail, "schema-invalid", 1),
        ("a line that is not JSON", { $0.lines.append("{\"category\":") }, .clean, .fail, "schema-invalid", 1),
        ("a number not in E.164", { $0.lines[0] = Crafted.traffic(CriteriaTests.a, party: "0907000123") }, .clean, .fail, "identifier-not-canonical", 1),
        ("a time not in UTC", { $0.lines[0] = Crafted.traffic(CriteriaTests.a, party: "+84907000123", time: "2026-10-15T15:30:00+07:00") },
         .clean, .fail, "time-not-utc", 1),
        ("a duplicate record", { $0.lines.append($0.lines[1]) }, .clean, .fail, "duplicate-record", 1),
        // sống
        ("delivered after its clock", { $0.delivery.deadline = Timestamp.parse("2026-11-20T09:00:00Z") }, .live, .fail, "delivered-late", 1),
        ("extracted long before delivery", { $0.asOf = "2026-11-18T09:00:00Z" }, .live, .fail, "extraction-stale", 1),
        ("time-stamped far from delivery", { $0.delivery.timeStampedAt = Timestamp.parse("2026-11-20T07:00:00Z") }, .live, .fail, "time-stamp-far", 1),
        ("no time-stamp", { $0.delivery.timeStampedAt = nil }, .live, .fail, "time-stamp-missing", 1),
    ]

    @Test(arguments: table.indices)
    func eachCraftedPackageBreaksExactlyOneRule(_ i: Int) {
        let (name, change, criterion, status, code, count) = Self.table[i]
        var crafted = Crafted()
        change(&crafted)
        let v = crafted.judge()
        #expect(!v.admissible, "\(name)")
        #expect(v.status(criterion) == status, "\(name): \(criterion) is \(String(describing: v.status(criterion)))")
        #expect(v.reasons(criterion).map(\.code) == [code] && v.reasons(criterion).first?.count == count, "\(name): \(v.reasons(criterion))")
        for other in Verdict.Criterion.allCases where other != criterion {
            #expect(v.status(other) == .pass, "\(name): \(other) is \(String(describing: v.status(other))) \(v.reasons(other))")
        }
    }

    /// "No data, 2 records not sent: unreadable target": a court sees both, and đủ warns.
    @Test func aNoDataResultWithRecordsNotSentIsWarnedAbout() {
        var crafted = Crafted()
        crafted.lines.removeLast()  // b's location: none
        crafted.results[3] = Manifest.Result(target: CriteriaTests.b, category: .location, status: .noData, recordCount: 0, size: 0, recordsRoot: "")
        // Unreadable traffic records cannot be b's location.
        crafted.notSent = [.init(category: .traffic, reason: .unreadableTarget, count: 2)]
        var v = crafted.judge()
        #expect(v.reasons(.complete).map(\.code) == ["records-not-sent"])
        // Unreadable location records may be.
        crafted.notSent = [.init(category: .location, reason: .unreadableTarget, count: 2)]
        v = crafted.judge()
        #expect(v.status(.complete) == .warn && !v.admissible)
        #expect(Set(v.reasons(.complete).map { "\($0.code) \($0.count)" }) == ["records-not-sent 2", "no-data-with-records-not-sent 1"])
        // So may records of no readable category, and the result's own.
        crafted.notSent = [.init(reason: .unreadableRecord, count: 1)]
        crafted.results[3].notSent = [.init(reason: .unreadableTime, count: 2)]
        v = crafted.judge()
        #expect(Set(v.reasons(.complete).map { "\($0.code) \($0.count)" }) == ["records-not-sent 3", "no-data-with-records-not-sent 1"])
        // The manifest's own check: counts of at least 1, no category inside a result.
        crafted.results[3].notSent = [.init(category: .location, reason: .unreadableTime, count: 0)]
        let failures = PackageVerifier.checkManifest(crafted.manifest, expectedProvider: "prov-a", expectedRequest: crafted.request.requestId, expectedRequestHash: "")
        #expect(failures.contains { $0.code == .manifestFormat && $0.detail.contains("notSent") })
    }

    @Test func outOfScopeRecordsAreCountedAsQuarantinedAndTheQualityReportCountsFields() {
        var c = Crafted()
        c.lines.append(Crafted.traffic(Target(type: .msisdn, value: "+84900000001"), party: "+84907000999"))
        c.lines[0] = Crafted.traffic(CriteriaTests.a, party: "+84907000123", cell: false)
        let v = c.judge()
        #expect(v.counts.quarantined == 1)
        #expect(v.quality["traffic.cellId"] == Verdict.FieldQuality(records: 3, present: 2))
        #expect(v.quality["location.latitude"] == Verdict.FieldQuality(records: 2, present: 2))
    }

    @Test func theVerdictIsCanonicalJSONThatDecodesToItself() throws {
        let v = Crafted().judge()
        let bytes = try CanonicalJSON.encode(v)
        #expect(try JSONDecoder().decode(Verdict.self, from: Data(bytes)) == v)
        #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("{\"admissible\":true"))
    }

    /// The judge's fast path must judge exactly as the strict parser does: every crafted record
    /// and schema example, and thousands of mutations of them (a byte flipped, dropped, doubled
    /// or swapped for a quote, brace, backslash, digit or non-ASCII byte), go through both.
    @Test func theFastPathJudgesAsTheFullParserDoes() async throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("schemas/records/examples")
        var seeds = Crafted().lines
        for (_, change, _, _, _, _) in Self.table { var c = Crafted(); change(&c); seeds += c.lines }
        for name in try FileManager.default.contentsOfDirectory(atPath: dir.path) where name.hasSuffix(".ndjson") {
            seeds += try String(contentsOf: dir.appendingPathComponent(name), encoding: .utf8).split(separator: "\n").map(String.init)
        }
        seeds.append(#"{"category":"traffic","record":{"direction":"outgoing","otherParty":"+84907000123","durationSeconds":6.1e1,"x":[1,{"y":"\u00e9"}],"z":null},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-15T08:30:00.5Z"}"#)
        var rng = SplitMix(seed: 57)
        let specials: [UInt8] = [0x22, 0x7B, 0x7D, 0x5C, 0x2C, 0x3A, 0x30, 0x39, 0x2D, 0x20, 0xC3, 0x00, 0x65, 0x2E]
        var lines: [[UInt8]] = seeds.map { Array($0.utf8) }
        for seed in seeds {
            for _ in 0..<60 {
                var b = Array(seed.utf8)
                let at = Int(rng.next() % UInt64(b.count))
                switch rng.next() % 4 {
                case 0: b[at] = specials[Int(rng.next() % UInt64(specials.count))]
                case 1: b.remove(at: at)
                case 2: b.insert(b[at], at: at)
                default: b.insert(specials[Int(rng.next() % UInt64(specials.count))], at: at)
                }
                lines.append(b)
            }
        }
        let request = Crafted().request, manifest = Crafted().manifest, all = lines
        // Seconds of pure computation: on a thread of its own, not the cooperative pool that the
        // other suites' tasks (some of them timed) share.
        let disagreements = await withCheckedContinuation { (done: CheckedContinuation<[String], Never>) in
            Thread {
                var out: [String] = []
                for line in all {
                    var fast = PackageJudge(request: request, manifest: manifest)
                    var full = fast
                    full.alwaysParse = true
                    line.withUnsafeBytes { fast.consume(record: $0); full.consume(record: $0) }
                    if !(fast.counts == full.counts && fast.scope == full.scope && fast.defects == full.defects
                         && fast.present.map(\.records) == full.present.map(\.records) && fast.present.map(\.fields) == full.present.map(\.fields)) {
                        out.append(String(decoding: line, as: UTF8.self))
                    }
                }
                done.resume(returning: out)
            }.start()
        }
        #expect(disagreements.isEmpty, "the paths disagree on: \(disagreements.prefix(5))")
        #expect(lines.count > 5_000)
    }

    /// The content checks hand the judge each record's leaf digest (`RecordLeaf`), so that the
    /// duplicate search hashes nothing again. The leaves are used where they match a line
    /// exactly, and only there: the verdict is the one hashing every line would reach, however
    /// the content is sliced and whatever leaves are missing or misplaced.
    @Test func leavesFromTheContentChecksKeyTheDuplicateSearchAsHashingDoes() throws {
        var crafted = Crafted()
        crafted.lines += [crafted.lines[0], crafted.lines[2], crafted.lines[0]]  // three duplicates
        let content = Array(crafted.lines.joined(separator: "\n").utf8) + [0x0A]
        // The leaves as the broker's content checks compute them (one chunk, one result).
        var arriving = ArrivingContent(collectsLeaves: true)
        arriving.consume(chunk: content, sha256: Array(SHA256.hash(data: content)), results: [.init(result: 0, offset: 0)])
        let leaves = arriving.takeLeaves()
        #expect(leaves.count == crafted.lines.count)
        #expect(arriving.takeLeaves().isEmpty)
        var end: Int64 = -1
        for (leaf, line) in zip(leaves, crafted.lines) {
            end += Int64(line.utf8.count) + 1
            let key = Array(line.utf8).withUnsafeBytes { RecordLeaf.key($0) }
            #expect(leaf.end == end && leaf.length == line.utf8.count && leaf.a == key.0 && leaf.b == key.1)
        }
        func judged(slice: Int, _ given: (Range<Int>) -> [RecordLeaf]) -> Verdict {
            var judge = PackageJudge(request: crafted.request, manifest: crafted.manifest)
            var at = 0
            while at < content.count {
                let range = at..<min(content.count, at + slice)
                content[range].withUnsafeBytes { judge.consume(content: $0, leaves: given(range)) }
                at = range.upperBound
            }
            return judge.finish(checks: [], delivery: crafted.delivery, judgedAt: "2026-11-20T10:00:01Z")
        }
        let hashed = crafted.judge()
        #expect(hashed.counts.duplicates == 3)
        func ending(in r: Range<Int>) -> [RecordLeaf] { leaves.filter { r.contains(Int($0.end)) } }
        for slice in [1, 7, 64, content.count] {
            #expect(judged(slice: slice, ending) == hashed)
            #expect(judged(slice: slice) { _ in [] } == hashed)
            // Misplaced: every leaf one byte off, or one byte short: none is used.
            #expect(judged(slice: slice) { r in ending(in: r).map { RecordLeaf(end: $0.end + 1, length: $0.length, a: $0.a, b: $0.b) } } == hashed)
            #expect(judged(slice: slice) { r in ending(in: r).map { RecordLeaf(end: $0.end, length: $0.length - 1, a: $0.a, b: $0.b) } } == hashed)
        }
        // A leaf that matches a line is taken as given: a wrong digest there changes the count.
        var wrong = leaves
        wrong[1] = RecordLeaf(end: wrong[1].end, length: wrong[1].length, a: leaves[0].a, b: leaves[0].b)
        #expect(judged(slice: content.count) { _ in wrong }.counts.duplicates == 4)
    }

    @Test func theDigestTableFindsEveryRepeatAcrossGrowthAndTheZeroDigest() {
        var set = DigestSet(capacity: 4)
        var rng = SplitMix(seed: 9)
        let keys = (0..<10_000).map { _ in (rng.next(), rng.next()) }
        var fresh = 0, repeated = 0
        for k in keys where set.insert(k.0, k.1) { fresh += 1 }
        for k in keys where !set.insert(k.0, k.1) { repeated += 1 }
        #expect(fresh == 10_000 && repeated == 10_000 && set.count == 10_000)
        let zeroFirst = set.insert(0, 0), zeroAgain = set.insert(0, 0)
        #expect(zeroFirst && !zeroAgain)
        let sameFirstHalf = set.insert(keys[0].0, keys[0].1 &+ 1)
        #expect(sameFirstHalf)
    }

    struct SplitMix {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    @Test func theFastTimeParserAgreesWithFoundation() {
        for text in ["2026-10-15T08:30:00Z", "1970-01-01T00:00:00Z", "2000-02-29T23:59:59.250Z", "2099-12-31T23:59:59.999999999Z"] {
            let parsed = RFC3339.parse(text)
            #expect(parsed?.canonical == true && abs(parsed!.seconds - Timestamp.parse(text)!.timeIntervalSince1970) < 1e-3, "\(text)")  // Foundation keeps milliseconds
        }
        #expect(RFC3339.parse("2026-10-15T15:30:00+07:00")?.seconds == RFC3339.parse("2026-10-15T08:30:00Z")?.seconds)
        #expect(RFC3339.parse("2026-10-15T15:30:00+07:00")?.canonical == false)
        for bad in ["2026-02-30T00:00:00Z", "2026-10-15 08:30:00Z", "2026-10-15T08:30:00", "2026-10-15T08:30:00.Z", "2026-13-01T00:00:00Z", "x"] {
            #expect(RFC3339.parse(bad) == nil, "\(bad)")
        }
    }

    /// One reader for every path, and what it writes (`schemas/records/record.json`'s time).
    @Test func timesAreWrittenInUTCWithEveryDigitKept() {
        let cases: [(String, String?)] = [
            // RFC 3339 §5.6 allows lower-case t and z: read, written in upper case.
            ("2026-11-05T08:30:00z", "2026-11-05T08:30:00Z"),
            ("2026-11-05t08:30:00Z", "2026-11-05T08:30:00Z"),
            ("2026-11-05t15:30:00+07:00", "2026-11-05T08:30:00Z"),
            // A leap second is kept as written (its offset applied).
            ("2016-12-31T23:59:60Z", "2016-12-31T23:59:60Z"),
            ("2017-01-01T06:59:60+07:00", "2016-12-31T23:59:60Z"),
            // Every fraction digit, up to nine: a microsecond apart stays apart.
            ("2026-11-05T15:30:00.123456+07:00", "2026-11-05T08:30:00.123456Z"),
            ("2026-11-05T15:30:00.123457+07:00", "2026-11-05T08:30:00.123457Z"),
            ("2026-11-05T08:30:00.123456789Z", "2026-11-05T08:30:00.123456789Z"),
            ("2026-11-05T08:30:00.1234567891Z", nil),
            // Offsets that cross a day, a month, a year and a leap day.
            ("2026-01-01T03:00:00+05:30", "2025-12-31T21:30:00Z"),
            ("2024-02-29T23:30:00-01:00", "2024-03-01T00:30:00Z"),
            ("2026-03-01T00:15:00+00:30", "2026-02-28T23:45:00Z"),
            ("2026-11-05T08:30:00-00:00", "2026-11-05T08:30:00Z"),
            ("2026-11-05T08:30:00", nil), ("2026-11-05 08:30:00Z", nil), ("2026-11-05T08:30:00+0700", nil),
        ]
        for (text, expected) in cases {
            #expect(RFC3339.utc(text)?.text == expected, "\(text)")
        }
        #expect(RFC3339.utc("2016-12-31T23:59:60Z")?.seconds == RFC3339.utc("2017-01-01T00:00:00Z")?.seconds)
        #expect(RFC3339.parse("2026-11-05T08:30:00z")?.canonical == false)  // the judge: time-not-utc until written as Custos writes it
        #expect(RFC3339.parse("2026-11-05T08:30:00.1234567891Z")?.canonical == false)
    }

    /// `schemas/records/examples`: what the JSON Schemas accept, the rules accept, and what
    /// they refuse, the rules find a defect in.
    @Test(arguments: DataCategory.allCases)
    func theRecordRulesAgreeWithTheSchemaExamples(_ category: DataCategory) throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("schemas/records/examples")
        for (suffix, valid) in [("valid", true), ("invalid", false)] {
            let text = try String(contentsOf: dir.appendingPathComponent("\(category.rawValue).\(suffix).ndjson"), encoding: .utf8)
            let lines = text.split(separator: "\n")
            #expect(!lines.isEmpty)
            for line in lines {
                var c = Crafted()
                c.request.categories = [category]
                c.lines = [String(line)]
                var judge = PackageJudge(request: c.request, manifest: Manifest(
                    packageId: UUID(), requestId: c.request.requestId, requestHash: "", providerId: "prov-a", asOf: c.asOf, createdAt: c.asOf, results: [],
                    content: .init(size: 0, recordCount: 1), chunks: [], chunksRoot: ""))
                _ = Array(line.utf8).withUnsafeBytes { judge.consume(record: $0) }
                let v = judge.finish(checks: [], delivery: c.delivery)
                #expect((v.counts.invalid == 0) == valid, "\(category.rawValue) \(suffix): \(line) → \(v.reasons(.clean))")
            }
        }
    }
}
