@testable import CustosBroker
import CustosCustody
import CustosEvidence
import CustosModel
import Foundation
import Hummingbird
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Testing

/// Records a provider should not have sent — about targets not asked for, outside the window,
/// or unreadable — are quarantined: investigators get the content redacted, every record they
/// see still provable against the signed records roots; auditors get it whole (SPEC §11).
@Suite("Quarantined records", .timeLimit(.minutes(2)))
struct QuarantineTests {
    @Test func investigatorsGetARedactedCopyThatStillProvesEveryRecordAndAuditorsGetItWhole() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, _, _ in
            let r = try await ingest.approvedRequest(store)
            let outside = [
                IngestTests.traffic(target: "+84900000001", seconds: 7),  // another person
                IngestTests.traffic(target: "+84912345678", seconds: 8, time: "2026-12-01T00:00:00Z"),  // after the window
                "{\"category\":\"traffic\",\"target\":",  // unreadable
            ]
            // The out-of-scope records sit between in-scope ones, across chunk boundaries.
            let p = try ingest.package(for: r, chunkSize: 333, extra: outside + [IngestTests.traffic(target: "+84912345678", seconds: 99)])
            let (m, chunks) = try ingest.messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: try await store.providers()) }
            let view = try await store.package(p.manifest.packageId, viewer: nil)
            #expect(view.state == .verified)
            let verdict = try #require(view.criteria)
            #expect(verdict.counts.quarantined == 2 && verdict.counts.unreadable == 1 && verdict.counts.withheld == 3)
            #expect(!verdict.admissible && view.withholdsRecords)

            let investigator = try await store.addUser(name: "inv-q", role: .investigator, by: .testAdmin).token
            let auditor = try await store.addUser(name: "aud-q", role: .auditor, by: .testAdmin).token
            let whole = p.chunks.flatMap { $0 }
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, logger: TestServices.logger))
            try await app.test(.router) { http in
                let path = "/v1/packages/\(p.manifest.packageId.uuidString.lowercased())"
                try await http.execute(uri: path + "/content", method: .get, headers: BrokerAPITests.auth(investigator)) { (res: TestResponse) throws in
                    #expect(res.status == .ok)
                    #expect(res.headers[HTTPField.Name("Custos-Content")!] == "redacted")
                    let text = String(buffer: res.body)
                    // Neither the other person's number nor the late record's time nor the unreadable bytes are there.
                    #expect(!text.contains("+84900000001") && !text.contains("2026-12-01") && !text.contains("\"target\":\n"))
                    let lines = text.split(separator: "\n")
                    #expect(lines.count == 44 && lines.filter { $0.hasPrefix("{\"withheld\":") }.count == 3)
                    // Every record shown is proven by the signed records root.
                    var check = RedactedContentVerifier(manifest: p.manifest)
                    Array(res.body.readableBytesView).withUnsafeBytes { check.consume($0) }
                    #expect(check.finish().isEmpty)
                    #expect(check.shown == 41 && check.withheld == 3)
                    // A record changed in the redacted copy is caught.
                    var bytes = Array(res.body.readableBytesView)
                    bytes[40] ^= 0x01
                    var tampered = RedactedContentVerifier(manifest: p.manifest)
                    bytes.withUnsafeBytes { tampered.consume($0) }
                    #expect(tampered.finish().map(\.code) == [.recordsRoot])
                    // So is a withheld record's leaf hash changed, or a marker that is not one.
                    let marker = try #require(text.range(of: "{\"withheld\":{\"leaf\":\""))
                    for (forged, code) in [(text.replacingCharacters(in: marker.upperBound..<text.index(marker.upperBound, offsetBy: 4), with: "0000"), PackageVerification.Failure.Code.recordsRoot),
                                           (text.replacingCharacters(in: marker.lowerBound..<marker.upperBound, with: "{\"withheld\":{\"leaf\":\"zz"), .resultSize)] {
                        var check = RedactedContentVerifier(manifest: p.manifest)
                        Array(forged.utf8).withUnsafeBytes { check.consume($0) }
                        #expect(check.finish().map(\.code).contains(code))
                    }
                }
                try await http.execute(uri: path + "/bundle", method: .get, headers: BrokerAPITests.auth(investigator)) { (res: TestResponse) throws in
                    #expect(res.status == .forbidden)
                    #expect(try BrokerAPITests.problem(res).detail?.contains("only an auditor exports it") == true)
                }
                try await http.execute(uri: path + "/content", method: .get, headers: BrokerAPITests.auth(auditor)) { (res: TestResponse) throws in
                    #expect(res.status == .ok)
                    #expect(res.headers[HTTPField.Name("Custos-Content")!] == nil)
                    #expect(Array(res.body.readableBytesView) == whole)
                }
            }
            // Each access is in custody, the redaction said so.
            let events = try await store.custodyEvents(package: p.manifest.packageId, viewer: nil).map(\.entry)
                .filter { $0.contains("\"\(CustodyEvent.Kind.packageDownloaded.rawValue)\"") }
            #expect(events.count == 2)
            #expect(events.filter { $0.contains("\"redacted\"") }.count == 1)
        }
    }

    @Test func aPackageWithNothingToWithholdIsReleasedWholeToInvestigators() async throws {
        let ingest = try IngestTests()
        try await TestServices.withStore(tsaTrust: ingest.pki.tsaCA) { store, _, _ in
            let r = try await ingest.approvedRequest(store)
            let p = try ingest.package(for: r)
            let (m, chunks) = try ingest.messages(p, r)
            for msg in chunks + [m] { _ = try await store.ingest(msg, providerKeys: try await store.providers()) }
            let investigator = try await store.addUser(name: "inv-w", role: .investigator, by: .testAdmin).token
            let app = Application(router: buildRouter(store: store, maxBodyBytes: 64 * 1024, logger: TestServices.logger))
            try await app.test(.router) { http in
                try await http.execute(uri: "/v1/packages/\(p.manifest.packageId.uuidString.lowercased())/content", method: .get,
                                       headers: BrokerAPITests.auth(investigator)) { (res: TestResponse) throws in
                    #expect(res.status == .ok && res.headers[HTTPField.Name("Custos-Content")!] == nil)
                    #expect(Array(res.body.readableBytesView) == p.chunks.flatMap { $0 })
                }
            }
        }
    }
}
