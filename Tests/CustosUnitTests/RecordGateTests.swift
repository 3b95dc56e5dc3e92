import CustosCanonicalJSON
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
        if case .record(let t, let bytes) = Self.gate.admit(line: Array(text.utf8)) { return (t, String(decoding: bytes, as: UTF8.self)) }
        return nil
    }

    func dropped(_ text: String) -> RecordGate.Drop? {
        if case .dropped(let why) = Self.gate.admit(line: Array(text.utf8)) { return why }
        return nil
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
}
