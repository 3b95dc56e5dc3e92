import CustosConnector
import CustosModel
import CustosTestSupport
import Foundation
import Synchronization
import Testing

/// The exec adapter against a real program (/bin/sh): records and coverage declarations.
@Suite("Exec adapter")
struct ExecAdapterTests {
    static let spec = SyntheticRequest.spec
    static let request = SyntheticRequest.approved

    func run(_ script: String) async throws -> (records: Int, coverage: [(Target?, Manifest.Coverage)]) {
        let stderr = FileManager.default.temporaryDirectory.appendingPathComponent("custos-exec-\(UUID().uuidString).stderr")
        defer { try? FileManager.default.removeItem(at: stderr) }
        let records = Mutex(0), declared = Mutex<[(Target?, Manifest.Coverage)]>([])
        _ = try await ExecAdapter(command: ["/bin/sh", "-c", "cat >/dev/null; " + script], timeout: .seconds(30))
            .run(request: Self.request, category: .traffic, sink: { _, _ in records.withLock { $0 += 1 } },
                 coverage: { t, c in declared.withLock { $0.append((t, c)) } }, stderrFile: stderr)
        return (records.withLock { $0 }, declared.withLock { $0 })
    }

    @Test func coverageLinesAreDeclarationsNotRecords() async throws {
        let out = try await run(#"""
            echo '{"category":"traffic","target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-15T08:30:00Z","record":{}}'
            echo '{"coverage":{"from":"2026-10-01T00:00:00Z","to":"2026-11-01T00:00:00Z","retainedSince":"2025-10-01T00:00:00Z"}}'
            echo '{"coverage":{"from":"2026-10-05T00:00:00Z","to":"2026-11-01T00:00:00Z","gaps":[{"from":"2026-10-10T00:00:00Z","to":"2026-10-11T00:00:00Z","reason":"outage"}]},"target":{"type":"msisdn","value":"+84987654321"}}'
            """#)
        #expect(out.records == 1)
        #expect(out.coverage.count == 2)
        #expect(out.coverage[0].0 == nil && out.coverage[0].1.retainedSince == "2025-10-01T00:00:00Z")
        #expect(out.coverage[1].0 == Target(type: .msisdn, value: "+84987654321") && out.coverage[1].1.gaps?.first?.reason == "outage")
    }

    /// A program that never reads the request on its stdin (`cat export.csv`) used to end the
    /// whole connector, silently, with SIGPIPE about one run in four. The request is written to
    /// a pipe whose reader has gone: an error the adapter ignores, and its records are kept.
    /// The program itself keeps SIGPIPE's default action (not ignored, as it would inherit a
    /// process-wide ignore): it writes its record only if its SigIgn mask lacks bit 13.
    @Test func aProgramThatDoesNotReadItsInputStopsNothing() async throws {
        let line = #"{"category":"traffic","target":{"type":"msisdn","value":"+84912345678"},"time":"2026-10-15T08:30:00Z","record":{}}"#
        let sigpipeDefault = #"m=$(sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status); [ $(( 0x$m & 4096 )) -eq 0 ]"#
        for _ in 0..<20 {
            let stderr = FileManager.default.temporaryDirectory.appendingPathComponent("custos-exec-\(UUID().uuidString).stderr")
            defer { try? FileManager.default.removeItem(at: stderr) }
            let records = Mutex(0)
            // Its stdin closed at once, so the connector's write finds no reader.
            _ = try await ExecAdapter(command: ["/bin/sh", "-c", "exec 0<&-; \(sigpipeDefault) && echo '\(line)'"], timeout: .seconds(30))
                .run(request: Self.request, category: .traffic, sink: { _, _ in records.withLock { $0 += 1 } }, coverage: { _, _ in }, stderrFile: stderr)
            #expect(records.withLock { $0 } == 1)
        }
    }

    @Test func aMalformedDeclarationStopsTheAdapterWithAClearReason() async throws {
        await #expect { _ = try await run(#"echo '{"coverage":{"from":"yesterday","to":"2026-11-01T00:00:00Z"}}'"#) } throws: {
            String(describing: $0).contains("line 1 is not a coverage declaration")
        }
        await #expect { _ = try await run(#"echo '{"coverage":{"from":"2026-10-01T00:00:00Z","to":"2026-11-01T00:00:00Z"},"extra":1}'"#) } throws: {
            String(describing: $0).contains("not a coverage declaration")
        }
    }
}
