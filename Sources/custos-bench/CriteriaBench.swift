import Crypto
import CustosCanonicalJSON
import CustosCriteria
import CustosModel
import Foundation

/// `custos-bench criteria [RECORDS]` (run by `ops/bench criteria`): verdict throughput on one
/// core over CDR-sized records (about 230 bytes, the verify benchmark's), held in memory so
/// that only the judging is timed. In the same run, two baselines over the same bytes: SHA-256
/// of every record (the least any check does: the duplicate search hashes each record) and
/// parsing every record into a JSON value. Best of 3. The last line is
/// `criteria records/s per core: N`.
enum CriteriaBench {
    static func run(records: Int) throws {
        let target = Target(type: .msisdn, value: "+84912345678")
        let spec = RequestSpec(caseId: UUID(), providerId: "bench-provider",
                               legalBasis: LegalBasis(decisionNumber: "QD-BENCH/2026", issuingAuthority: "Benchmark Authority", issuedOn: "2026-11-01"),
                               targets: [target], categories: [.traffic], window: TimeWindow(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"))
        let request = ApprovedRequest(requestId: UUID(), spec: spec, submittedBy: "bench", approvedBy: "bench", approvedAt: "2026-11-19T00:00:00Z")
        // The records, one buffer, with their offsets.
        var content: [UInt8] = []
        var bounds: [Range<Int>] = []
        content.reserveCapacity(records * 240)
        bounds.reserveCapacity(records)
        for n in 0..<records {
            let line = #"{"category":"traffic","record":{"cellId":"452-04-\#(n % 65535)-\#(n % 251)","direction":"\#(n % 2 == 0 ? "outgoing" : "incoming")","durationSeconds":\#(n % 3600),"otherParty":"+849\#(10_000_000 + n % 89_999_999)"},"target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-\#(10 + n % 20)T12:\#(10 + n % 50):\#(10 + n % 50)Z"}"#
            let start = content.count
            content += line.utf8
            bounds.append(start..<content.count)
        }
        let manifest = Manifest(packageId: UUID(), requestId: request.requestId, requestHash: "", providerId: "bench-provider", asOf: "2026-11-20T09:00:00Z",
                                createdAt: "2026-11-20T09:00:00Z",
                                results: [.init(target: target, category: .traffic, status: .data, recordCount: records, size: Int64(content.count), recordsRoot: "",
                                                coverage: .init(from: "2026-10-01T00:00:00Z", to: "2026-11-01T00:00:00Z"))],
                                content: .init(size: Int64(content.count), recordCount: records), chunks: [], chunksRoot: "")
        let delivery = PackageJudge.Delivery(deliveredAt: Timestamp.parse("2026-11-20T10:00:00Z")!, deadline: nil, timeStampedAt: Timestamp.parse("2026-11-20T10:00:00Z")!)
        print(String(format: "%d CDR-sized records, %.1f MB (%.0f bytes each), one core, best of 3", records, Double(content.count) / 1e6,
                     Double(content.count) / Double(records)))

        func best(_ label: String, _ body: () -> Void) -> Double {
            var fastest = Double.infinity
            for _ in 0..<3 {
                let start = ContinuousClock.now
                body()
                let d = ContinuousClock.now - start
                fastest = min(fastest, Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18)
            }
            print(String(format: "%@ %.3f s, %.0f records/s", label, fastest, Double(records) / fastest))
            return fastest
        }
        var sink = 0
        let hashing = best("baseline: SHA-256 of each record   ") {
            content.withUnsafeBytes { all in
                for r in bounds { sink &+= Int(SHA256.hash(data: UnsafeRawBufferPointer(rebasing: all[r])).withUnsafeBytes { $0[0] }) }
            }
        }
        let parsing = best("baseline: parse each record to JSON ") {
            content.withUnsafeBytes { all in
                for r in bounds { if case .object(let o)? = try? JSONParser.parse(UnsafeRawBufferPointer(rebasing: all[r])) { sink &+= o.count } }
            }
        }
        var verdict: Verdict?
        let judging = best("the four criteria (verdict)         ") {
            var judge = PackageJudge(request: request, manifest: manifest)
            content.withUnsafeBytes { all in
                for r in bounds { judge.consume(record: UnsafeRawBufferPointer(rebasing: all[r])) }
            }
            verdict = judge.finish(checks: [], delivery: delivery)
        }
        guard let verdict, verdict.admissible, verdict.counts.records == records, verdict.counts.invalid == 0 else {
            print("error: the benchmark's records did not pass: \(String(describing: verdict))")
            exit(1)
        }
        print(String(format: "judge/SHA-256 ratio: %.2f; judge/parse ratio: %.2f (sink %d)", judging / hashing, judging / parsing, sink & 1))
        print("target: >= 1,000,000 records/s per core")
        print(String(format: "criteria records/s per core: %.0f", Double(records) / judging))
    }
}
