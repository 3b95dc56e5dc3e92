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
        if case .dropped(let why) = gate.admit(line: Array(text.utf8)) { return why }
        return nil
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
        #expect(RecordGate.canonical(.ipv4, "010.000.000.001", countryCode: nil) == "10.0.0.1")
        #expect(RecordGate.canonical(.ipv6, "2001:DB8:0:0:0:0:0:1", countryCode: nil) == "2001:db8::1")
        #expect(RecordGate.canonical(.email, "Someone@Example.VN", countryCode: nil) == "Someone@example.vn")
        #expect(RecordGate.canonical(.imei, "35-209900-176148-1", countryCode: nil) == "352099001761481")
        // Without a country code, a national number stays as it is — and is not a target.
        #expect(RecordGate.canonical(.msisdn, "0912345678", countryCode: nil) == "0912345678")
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

    func read(_ text: String, category: DataCategory = .traffic) throws -> (records: [String], dropped: [RecordGate.Drop: Int]) {
        let records = Mutex<[String]>([])
        var output = AdapterOutput(gate: RecordGate(request: Self.request, category: category, settings: .init(defaultCountryCode: "84")),
                                   category: category, sink: { _, r in records.withLock { $0.append(String(decoding: r, as: UTF8.self)) } },
                                   coverage: { _, _ in })
        // In awkward slices, as a pipe delivers them.
        let bytes = Array(text.utf8)
        for start in stride(from: 0, to: bytes.count, by: 7) { try output.consume(bytes[start..<min(start + 7, bytes.count)]) }
        try output.finish()
        return (records.withLock { $0 }, output.dropped)
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

    @Test func badInputIsAnErrorNamingTheLineNotItsContent() {
        #expect { try read("category,target_type,time\n") } throws: { String(describing: $0).contains("no target_value column") }
        #expect { try read("category,target_type,target_value,time\ntraffic,msisdn\n") } throws: { String(describing: $0).contains("CSV line 2 has 2 cells") }
        #expect { try read(Self.line("+84912345678", time: "2026-10-15 08:30") + "\n") } throws: {
            String(describing: $0).contains("line 1 is not a record") && !String(describing: $0).contains("+849")
        }
        #expect { try read(#"category,target_type,target_value,time"# + "\n" + #"traffic,msisdn,"+849123"# + "\n") } throws: { String(describing: $0).contains("quote is not closed") }
        #expect { try read(Self.line("+84912345678")) } throws: { String(describing: $0).contains("does not end with a newline") }
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
}
