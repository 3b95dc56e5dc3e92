import CustosCanonicalJSON
import CustosCriteria
@testable import CustosConnector
import CustosModel
import Foundation
import Synchronization
import Testing

/// Normalisation and scope (`RecordGate`) and the adapters' formats (`AdapterOutput`).
@Suite("Record gate: canonical form and scope")
struct RecordGateTests {
    static let request = ExecAdapterTests.request
    static let gate = RecordGate(request: request, category: .traffic, settings: .init(defaultCountryCode: "84"))

    static func line(_ value: String, time: String = "2026-10-15T08:30:00Z", category: String = "traffic", type: String = "msisdn") -> String {
        #"{"category":"\#(category)","target":{"type":"\#(type)","value":"\#(value)"},"time":"\#(time)","record":{"direction":"outgoing","durationSeconds":61,"otherParty":"+84907000123"}}"#
    }

    func admitted(_ text: String) -> (Target, String)? {
        var gate = Self.gate
        if case .record(let t, let bytes) = gate.admit(line: Array(text.utf8)) { return (t, String(decoding: bytes, as: UTF8.self)) }
        return nil
    }

    func dropped(_ text: String) -> RecordGate.Drop? {
        var gate = Self.gate
        return gate.admit(line: Array(text.utf8)).drop
    }

    /// What the fast path takes, it decides as the full look does.
    @Test func theFastPathAgreesWithTheFullLook() throws {
        var gate = Self.gate
        let canonical = #"{"category":"traffic","record":{"direction":"outgoing","durationSeconds":61,"otherParty":"+84907000123"},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-15T08:30:00Z"}"#
        var taken = 0
        for text in [canonical, canonical.replacingOccurrences(of: "2026-10-15", with: "2026-12-15"),
                     canonical.replacingOccurrences(of: "+84912345678", with: "+84900000001"),
                     canonical.replacingOccurrences(of: "08:30:00Z", with: "15:30:00+07:00"),
                     canonical.replacingOccurrences(of: "\"traffic\"", with: "\"location\""),
                     canonical.replacingOccurrences(of: "+84912345678", with: "0912345678"),
                     Self.line("+84912345678")] {
            let line = Array(text.utf8)
            guard case .object(let frame)? = try? JSONParser.parse(line) else { Issue.record("not JSON: \(text)"); continue }
            let full = Self.gate.admit(frame, original: line)
            guard let fast = line.withUnsafeBytes({ gate.admitFast($0) }) else { continue }
            taken += 1
            switch (fast, full) {
            case (.keep(let a), .record(let b, let y)): #expect(a == b && line == y, "\(text)")
            case (.drop(let a), .dropped(let b)): #expect(a == b, "\(text)")
            default: Issue.record("fast and full disagree on \(text)")
            }
        }
        #expect(taken == 2)  // the canonical record, and the one outside the window
    }

    @Test func aCanonicalRecordKeepsItsBytes() {
        let text = Self.line("+84912345678")
        #expect(admitted(text)?.1 == text)
    }

    @Test func identifiersAndTimesArePutInCanonicalForm() throws {
        for raw in ["0912 345 678", "0084912345678", "+84 912-345-678", "(091) 2345678"] {
            let (target, out) = try #require(admitted(Self.line(raw)), "\(raw)")
            #expect(target == Target(type: .msisdn, value: "+84912345678"))
            #expect(out.contains(#""value":"+84912345678""#))
        }
        // A time with an offset is UTC afterwards; the record is canonical JSON again.
        let (_, out) = try #require(admitted(Self.line("+84912345678", time: "2026-10-15T15:30:00+07:00")))
        #expect(out.contains(#""time":"2026-10-15T08:30:00Z""#))
        #expect(Array(out.utf8) == (try CanonicalJSON.canonicalize(Array(out.utf8))))
        func canonical(_ type: TargetType, _ value: String, _ cc: String? = nil) -> String? {
            RecordGate.canonical(type, value, countryCode: cc).map { "\($0.type.rawValue):\($0.value)" }
        }
        #expect(canonical(.ipv4, "010.000.000.001") == "ipv4:10.0.0.1")
        #expect(canonical(.ipv6, "2001:DB8:0:0:0:0:0:1") == "ipv6:2001:db8::1")
        #expect(canonical(.email, "Someone@Example.VN") == "email:Someone@example.vn")
        #expect(canonical(.imei, "35-209900-176148-1") == "imei:352099001761481")
        // Without a country code, a national number cannot be read as a number at all.
        #expect(canonical(.msisdn, "0912345678") == nil)
    }

    /// Identifiers as providers write them (issue: records of a target were dropped as out of
    /// scope, and the package judged complete on a signed "no data").
    @Test func telephoneNumbersInEverySpellingProvidersUse() {
        func e164(_ value: String, _ cc: String? = "84") -> String? {
            RecordGate.canonical(.msisdn, value, countryCode: cc)?.value
        }
        for spelling in ["+84 (0) 912 345 678", "912345678", "84912345678", "0912345678", "0084912345678", "+84-912-345-678",
                         "+84.912.345.678", "(+84) 912 345 678", "+840912345678", "\u{00A0}+84 912 345 678"] {
            #expect(e164(spelling) == "+84912345678", "\(spelling)")
        }
        // Another country's number written in full is that country's, whatever the default.
        #expect(e164("+44 20 7946 0018") == "+442079460018")
        #expect(e164("+44 20 7946 0018", nil) == "+442079460018")
        // Not numbers: unreadable, never a made-up target.
        for bad in ["", "+", "hello", "+84 12", "0000000000000000000000", "+999 123 456 789"] {
            #expect(e164(bad) == nil, "\(bad)")
        }
        // The broker refuses what is not a valid number in E.164.
        #expect(TargetFormat.isValid(Target(type: .msisdn, value: "+84912345678")))
        for bad in ["+840912345678", "+84 912345678", "84912345678", "+8491234567890123", "+99912345678", "+1555"] {
            #expect(!TargetFormat.isValid(Target(type: .msisdn, value: bad)), "\(bad)")
        }
        // Records in those spellings reach their target through the gate.
        let (target, out) = admitted(Self.line("+84 (0) 912 345 678"))!
        #expect(target.value == "+84912345678" && out.contains(#""value":"+84912345678""#))
        #expect(admitted(Self.line("912345678"))?.0.value == "+84912345678")
        #expect(admitted(Self.line("84912345678"))?.0.value == "+84912345678")
        #expect(dropped(Self.line("hello")) == .unreadable)
    }

    /// RFC 4291 §2.5.5.2: an IPv4-mapped IPv6 address is the IPv4 address it carries.
    @Test func addressesThroughInetPton() throws {
        let request = ExecAdapterTests.request
        var ip = request
        ip.targets = [Target(type: .ipv4, value: "203.0.113.7")]
        ip.categories = [.ipSession]
        let gate = RecordGate(request: ip, category: .ipSession)
        func line(_ type: String, _ value: String) -> [UInt8] {
            Array(#"{"category":"ip-session","record":{},"target":{"type":"\#(type)","value":"\#(value)"},"time":"2026-10-15T08:30:00Z"}"#.utf8)
        }
        for (type, value) in [("ipv4", "203.0.113.7"), ("ipv6", "::ffff:203.0.113.7"), ("ipv4", "::ffff:203.0.113.7"), ("ipv6", "::FFFF:cb00:7107"),
                              ("ipv4", "203.000.113.007")] {
            var g = gate
            guard case .record(let t, let bytes) = g.admit(line: line(type, value)) else { Issue.record("\(type) \(value) not kept"); continue }
            #expect(t == Target(type: .ipv4, value: "203.0.113.7"), "\(type) \(value)")
            #expect(String(decoding: bytes, as: UTF8.self).contains(#""target":{"type":"ipv4","value":"203.0.113.7"}"#), "\(type) \(value)")
        }
        for (type, value) in [("ipv4", "203.0.113.256"), ("ipv4", "203.0.113"), ("ipv6", "::gggg"), ("ipv4", "1.2.3.4.5")] {
            var g = gate
            guard case .unreadable(let why, nil, .ipSession) = g.admit(line: line(type, value)) else { Issue.record("\(type) \(value) kept"); continue }
            #expect(why == .unreadableTarget, "\(type) \(value)")
        }
        // Not an IPv4-mapped address: an IPv6 one (IPv4-compatible ::a.b.c.d is deprecated).
        #expect(RecordGate.canonical(.ipv6, "::203.0.113.7", countryCode: nil)?.type == .ipv6)
        #expect(canonicalIPv4("203.0.113.07") == nil && canonicalIPv4("203.0.113.7") == "203.0.113.7")
    }

    /// UAX #15: identifiers are compared, hashed and stored in NFC, on every path.
    @Test func textIdentifiersInNFC() throws {
        let nfc = "nguy\u{1EC5}n@example.vn"          // "nguyễn", precomposed
        let nfd = "nguye\u{0302}\u{0303}n@Example.VN" // decomposed, domain in capitals
        #expect(nfc.utf8.count != nfd.utf8.count)
        var request = ExecAdapterTests.request
        request.targets = [Target(type: .email, value: nfc)]
        request.categories = [.subscriber]
        #expect(Target(type: .email, value: nfd).normalized.value.utf8.elementsEqual(nfc.utf8))
        let gate = RecordGate(request: request, category: .subscriber)
        for value in [nfc, nfd] {
            var g = gate
            let text = #"{"category":"subscriber","record":{},"target":{"type":"email","value":"\#(value)"},"time":"2026-10-15T08:30:00Z"}"#
            guard case .record(_, let bytes) = g.admit(line: Array(text.utf8)) else { Issue.record("not kept"); continue }
            #expect(String(decoding: bytes, as: UTF8.self).utf8.elementsEqual(text.replacingOccurrences(of: value, with: nfc).utf8))
        }
    }

    /// The JSON fast path, the JSON tree, CSV and SQL give the same result for the same time.
    @Test func oneReaderOfTimesForEveryPath() throws {
        let times: [(String, String?)] = [
            ("2026-10-15T08:30:00z", "2026-10-15T08:30:00Z"), ("2016-12-31T23:59:60Z", nil),
            ("2026-10-15T15:30:00.123456+07:00", "2026-10-15T08:30:00.123456Z"), ("2026-10-15T15:30:00.123457+07:00", "2026-10-15T08:30:00.123457Z"),
        ]
        var leap = ExecAdapterTests.request
        leap.window = TimeWindow(from: "2016-12-01T00:00:00Z", to: "2017-01-31T00:00:00Z")
        for (time, expected) in times {
            let request = expected == nil ? leap : ExecAdapterTests.request
            let written = expected ?? time
            // JSON: the fast path's line and the tree's (members in another order).
            let fastLine = #"{"category":"traffic","record":{"direction":"outgoing"},"target":{"type":"msisdn","value":"+84912345678"},"time":"\#(time)"}"#
            let treeLine = #"{"time":"\#(time)","category":"traffic","target":{"type":"msisdn","value":"+84912345678"},"record":{"direction":"outgoing"}}"#
            let csv = "\u{FEFF}category,target_type,target_value,time,direction\ntraffic,msisdn,+84912345678,\(time),outgoing\n"
            for text in [fastLine + "\n", treeLine + "\n", csv] {
                let out = try read(text, request: request)
                #expect(out.records.count == 1 && out.records.first?.contains(#""time":"\#(written)""#) == true, "\(text)")
            }
        }
    }

    /// Excel's "CSV UTF-8" starts with a byte-order mark; one bad row is counted, not fatal.
    @Test func realExportFiles() throws {
        let bom = "\u{FEFF}category,target_type,target_value,time,direction\ntraffic,msisdn,+84912345678,2026-10-15T08:30:00Z,outgoing\n"
        #expect(try read(bom).records.count == 1)
        let mixed = """
            category,target_type,target_value,time,direction
            traffic,msisdn,+84912345678,2026-10-15T08:30:00Z,outgoing
            traffic,msisdn,not a number,2026-10-15T08:30:00Z,outgoing
            traffic,msisdn,+84912345678,yesterday,outgoing
            traffic,msisdn
            traffic,msisdn,"+84912345678,2026-10-15T08:31:00Z,outgoing
            traffic,msisdn,+84912345678,2026-10-15T08:32:00Z,incoming

            """
        let out = try read(mixed)
        #expect(out.records.count == 2)
        #expect(out.dropped == [.unreadable: 4])
        #expect(out.unreadableLines == [3, 4, 5, 6])
        // Where each belongs, for the manifest's notSent: the wrong-width row and the broken
        // quote are no records at all (this adapter returns traffic only); the unreadable
        // number is traffic of some target; the unreadable time is this result's.
        let target = Target(type: .msisdn, value: "+84912345678")
        #expect(out.notSent == [.init(reason: .unreadableRecord, category: .traffic, target: nil): 2,
                                .init(reason: .unreadableTarget, category: .traffic, target: nil): 1,
                                .init(reason: .unreadableTime, category: .traffic, target: target): 1])
        // A file drop holds every category: a row that is no record at all belongs to none.
        #expect(try read(mixed, fileDrop: true).notSent[.init(reason: .unreadableRecord, category: nil, target: nil)] == 2)
        // Another category's rows are that category's business, readable or not.
        #expect(try read(mixed.replacingOccurrences(of: "traffic,msisdn,not a number", with: "location,msisdn,not a number")).notSent
            == [.init(reason: .unreadableRecord, category: .traffic, target: nil): 2, .init(reason: .unreadableTime, category: .traffic, target: target): 1])
        let json = Self.line("+84912345678") + "\nnot json\n" + Self.line("+84912345678", time: "2026-10-15 08:30") + "\n" + Self.line("+84912345678", time: "2026-10-15T08:31:00Z") + "\n"
        let j = try read(json)
        #expect(j.records.count == 2 && j.dropped == [.unreadable: 2] && j.unreadableLines == [2, 3])
    }

    @Test func recordsOutsideTheRequestAreDroppedWithTheirReason() {
        #expect(dropped(Self.line("+84900000001")) == .target)
        #expect(dropped(Self.line("+84912345678", time: "2026-11-02T00:00:00Z")) == .window)
        #expect(dropped(Self.line("+84912345678", time: "2026-10-31T23:30:00-01:00")) == .window)  // 00:30 UTC on 1 November... after the end
        #expect(dropped(Self.line("+84912345678", category: "location")) == .category)
        #expect(dropped(Self.line("+84912345678", time: "2026-10-15 08:30:00")) == .unreadable)  // no offset: which zone?
        #expect(dropped(Self.line("+84912345678", time: "2026-10-15T08:30:00")) == .unreadable)
        #expect(dropped("[1,2]") == .unreadable)
    }

    func read(_ text: String, category: DataCategory = .traffic, request: ApprovedRequest = Self.request, fileDrop: Bool = false) throws
        -> (records: [String], dropped: [RecordGate.Drop: Int], unreadableLines: [Int], notSent: [ExecAdapter.NotSentKey: Int])
    {
        let records = Mutex<[String]>([])
        var output = AdapterOutput(gate: RecordGate(request: request, category: category, settings: .init(defaultCountryCode: "84")),
                                   category: category, holdsOtherCategories: fileDrop, sink: { _, r in records.withLock { $0.append(String(decoding: r, as: UTF8.self)) } },
                                   coverage: { _, _ in })
        // In awkward slices, as a pipe delivers them.
        let bytes = Array(text.utf8)
        for start in stride(from: 0, to: bytes.count, by: 7) { try output.consume(bytes[start..<min(start + 7, bytes.count)]) }
        try output.finish()
        return (records.withLock { $0 }, output.dropped, output.unreadableLines, output.notSent)
    }

    @Test func csvExportsBecomeTypedRecords() throws {
        let out = try read("""
            category,target_type,target_value,time,direction,otherParty,durationSeconds,cellId\r
            traffic,msisdn,0912345678,2026-10-15T15:30:00+07:00,outgoing,+84907000123,61,"452-04-1234-56"\r
            traffic,msisdn,+84912345678,2026-10-16T08:30:00Z,incoming,"+84907000124",7,\r
            traffic,msisdn,+84900000001,2026-10-16T08:30:00Z,incoming,+84907000124,7,\r

            """)
        #expect(out.records == [
            #"{"category":"traffic","record":{"cellId":"452-04-1234-56","direction":"outgoing","durationSeconds":61,"otherParty":"+84907000123"},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-15T08:30:00Z"}"#,
            #"{"category":"traffic","record":{"direction":"incoming","durationSeconds":7,"otherParty":"+84907000124"},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-16T08:30:00Z"}"#,
        ])
        #expect(out.dropped == [.target: 1])
        #expect(try AdapterOutput.cells(Array(#"a,"b,""c""",,d"#.utf8)[...], 1) == ["a", #"b,"c""#, "", "d"])
    }

    @Test func badInputIsAnErrorNamingTheLineNotItsContent() throws {
        // What makes the whole output unreadable is an error; a bad row is counted (above).
        #expect { try read("category,target_type,time\n") } throws: { String(describing: $0).contains("no target_value column") }
        #expect { try read(Self.line("+84912345678")) } throws: { String(describing: $0).contains("does not end with a newline") }
        #expect(try read("category,target_type,target_value,time\ntraffic,msisdn\n").unreadableLines == [2])
        #expect(try read(#"category,target_type,target_value,time"# + "\n" + #"traffic,msisdn,"+849123"# + "\n").unreadableLines == [2])
        #expect { try read("\u{FEFF}category,target_type,time\n") } throws: { String(describing: $0).contains("no target_value column") }
    }

    @Test func digestsSpilledToDiskCountTheSameDuplicatesAsTheTableInMemory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("custos-digests-\(UUID().uuidString)")
        let spilled = try SpillingDigests(directory: dir)
        var memory = DigestSet()
        var rng = SystemRandomNumberGenerator()
        var digests: [(UInt64, UInt64)] = (0..<50_000).map { _ in (rng.next(), rng.next()) }
        digests += digests.prefix(1234)  // repeats, in another order
        digests += [(0, 0), (0, 0)]      // the zero digest, twice
        digests.shuffle()
        var inMemory = 0
        for (a, b) in digests {
            _ = spilled.insert(a, b)
            if !memory.insert(a, b) { inMemory += 1 }
        }
        #expect(inMemory == 1235)
        #expect(spilled.finish() == inMemory)
        #expect(!spilled.failed)
    }

    /// A request member this connector's types would drop (one a later broker added, which
    /// may narrow what was approved) is named, so that the request is refused, not obeyed in part.
    @Test func membersTheConnectorDoesNotKnowAreNamed() throws {
        let known = try CanonicalJSON.tree(Self.request)
        #expect(ProviderConnector.unknownMembers(known, known).isEmpty)
        guard case .object(var members) = known, case .object(var window)? = members["window"] else { Issue.record("not an object"); return }
        window["onlyBetween"] = .string("08:00-09:00")
        members["window"] = .object(window)
        members["narrowing"] = .array([.object(["x": .null])])
        #expect(ProviderConnector.unknownMembers(.object(members), known) == ["request.narrowing", "request.window.onlyBetween"])
    }
}
