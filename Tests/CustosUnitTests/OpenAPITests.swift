import CustosBroker
import CustosEvidence
import CustosTestSupport
import Foundation
import Hummingbird
import Logging
import Prometheus
import Testing

/// `schemas/openapi.yaml` against the router `custos-broker serve` builds: every registered
/// route is documented, and every documented operation exists.
@Suite("OpenAPI")
struct OpenAPITests {
    static let spec = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("schemas/openapi.yaml")

    /// "METHOD /path/{param}" for every operation under `paths:` (two-space path keys,
    /// four-space method keys, as the file is written).
    static func documented() throws -> Set<String> {
        let text = try String(contentsOf: spec, encoding: .utf8)
        var out = Set<String>(), path: String?, inPaths = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if !line.hasPrefix(" ") { inPaths = line.hasPrefix("paths:"); path = nil; continue }
            guard inPaths else { continue }
            if line.hasPrefix("  /"), line.hasSuffix(":") {
                path = String(line.dropFirst(2).dropLast())
            } else if let path, line.hasPrefix("    "), !line.hasPrefix("     ") {
                let key = line.dropFirst(4).prefix { $0 != ":" }
                if ["get", "post", "put", "patch", "delete"].contains(key) { out.insert("\(key.uppercased()) \(path)") }
            }
        }
        return out
    }

    @Test func everyRouteIsDocumentedAndEveryDocumentedRouteExists() throws {
        // Building the router connects to nothing: the pool is never run.
        let db = try DatabaseConfiguration(url: "postgres://nobody@127.0.0.1:1/none")
        let logger = Logger(label: "openapi-test")
        let store = BrokerStore(client: db.makeClient(logger: logger), signer: .generate(), tsaTrust: "", logger: logger)
        let pki = try TestPKI()
        let router = buildRouter(store: store, maxBodyBytes: 1024, timeStampAuthority: pki.tsa, metrics: PrometheusCollectorRegistry(), logger: logger)
        let served = Set(router.routes.map { route -> String in
            let path = route.path.description.split(separator: "/").map { $0.hasPrefix(":") ? "{\($0.dropFirst())}" : String($0) }
            return "\(route.method.rawValue) /" + path.joined(separator: "/")
        })
        let documented = try Self.documented()
        #expect(served.count >= 20)
        #expect(served.subtracting(documented).isEmpty, "served but not in schemas/openapi.yaml: \(served.subtracting(documented).sorted())")
        #expect(documented.subtracting(served).isEmpty, "in schemas/openapi.yaml but not served: \(documented.subtracting(served).sorted())")
    }

    /// Every `#/components/...` reference names a component the file defines.
    @Test func everyComponentReferenceResolves() throws {
        let text = try String(contentsOf: Self.spec, encoding: .utf8)
        let components = try #require(text.range(of: "\ncomponents:\n"))
        var defined = Set<String>(), section = ""
        for line in text[components.upperBound...].split(separator: "\n") {
            if line.hasPrefix("  "), !line.hasPrefix("   ") { section = String(line.dropFirst(2).prefix { $0 != ":" }) }
            if line.hasPrefix("    "), !line.hasPrefix("     ") { defined.insert(section + "/" + line.dropFirst(4).prefix { $0 != ":" }) }
        }
        let refs = text.matches(of: /#\/components\/([a-zA-Z]+\/[A-Za-z0-9._-]+)/).map { String($0.output.1) }
        #expect(refs.count > 50)
        #expect(Set(refs).subtracting(defined).isEmpty, "unresolved: \(Set(refs).subtracting(defined).sorted())")
    }
}
