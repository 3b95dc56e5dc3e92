import CustosCustody
import CustosEvidence
import CustosModel
import CustosPKI
import CustosTestSupport
import Foundation
import Testing

/// The package test vectors in schemas/package/vectors, and bundles made afresh the same way.
@Suite("Export bundles and test vectors")
struct BundleVectorTests {
    static let vectors = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("schemas/package/vectors")
    static func trust(_ name: String) throws -> String {
        try String(contentsOf: vectors.appendingPathComponent("trust/\(name)"), encoding: .utf8)
    }
    static func files(_ dir: String) throws -> [URL] {
        try FileManager.default.contentsOfDirectory(at: vectors.appendingPathComponent(dir), includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "tar" }.sorted { $0.path < $1.path }
    }

    static func verify(_ bytes: [UInt8], providerTrust: String, tsaTrust: String, custodyTrust: String, witnesses: [CertificateInfo] = [],
                       slice: Int = 4096) -> BundleReport {
        var v = BundleVerifier(providerTrust: providerTrust, tsaTrust: tsaTrust, custodyTrust: custodyTrust, witnesses: witnesses)
        var i = 0
        while i < bytes.count { let n = min(slice, bytes.count - i); Array(bytes[i..<i + n]).withUnsafeBytes { v.consume($0) }; i += n }
        return v.finish()
    }

    static func verifyFile(_ url: URL) throws -> BundleReport {
        verify(Array(try Data(contentsOf: url)), providerTrust: try trust("provider-ca.pem"), tsaTrust: try trust("tsa-ca.pem"),
               custodyTrust: try trust("custody-ca.pem"), witnesses: try CustodyVerifier.certificates(pem: try trust("witnesses.pem")))
    }

    @Test func everyValidVectorVerifies() throws {
        let valid = try Self.files("valid")
        #expect(valid.count >= 2)
        for url in valid {
            let r = try Self.verifyFile(url)
            #expect(r.outcome == .valid, "\(url.lastPathComponent): \(r.failures) \(r.unusable ?? "")")
            #expect(r.checks.values.allSatisfy { $0 })
            // The chain of custody: approval, dispatch, manifest, every chunk, completion, the
            // criteria (when judged), verdict and export, proven; the witness trusted.
            let custody = try #require(r.custody)
            #expect(custody.events.count == 6 + (r.chunkCount ?? 0) + (r.criteria == nil ? 0 : 1))
            #expect(custody.witnesses.map(\.trusted) == [true])
            // A bundle with the broker's verdict is judged again here: the standard one is admissible.
            if url.lastPathComponent == "standard.tar" {
                let verdict = try #require(r.criteria)
                #expect(verdict.admissible && verdict.counts.records == 26 && r.checks["admissible on the four criteria"] == true, "\(verdict.criteria)")
            }
        }
    }

    @Test func everyInvalidVectorIsRejectedWithItsOwnReason() throws {
        let expected = try JSONDecoder().decode([String: String].self, from: Data(contentsOf: Self.vectors.appendingPathComponent("invalid/EXPECTED.json")))
        let invalid = try Self.files("invalid")
        #expect(Set(invalid.map { $0.deletingPathExtension().lastPathComponent }) == Set(expected.keys))
        #expect(Set(expected.keys) == Set(BundleFactory.Defect.allCases.map(\.rawValue)))
        var reasons: [String: Set<String>] = [:]
        for url in invalid {
            let name = url.deletingPathExtension().lastPathComponent
            let r = try Self.verifyFile(url)
            var codes = Set(r.failures.map(\.code.rawValue))
            #expect(codes.contains(expected[name]!), "\(name): expected \(expected[name]!), got \(codes)")
            if let defect = BundleFactory.Defect(rawValue: name), let (criterion, reason) = defect.criterion {
                // Authentic, but one criterion fails (or warns) for its reason, and only that one.
                #expect(r.outcome == .inadmissible && codes == ["not-admissible"], "\(name): \(r.outcome) \(codes)")
                let verdict = try #require(r.criteria)
                #expect(verdict.status(criterion) == defect.criterionStatus, "\(name): \(verdict.criteria)")
                #expect(verdict.reasons(criterion).map(\.code) == [reason] || (defect == .criteriaCompleteRecordsNotSent
                    && Set(verdict.reasons(criterion).map(\.code)) == [reason, "records-not-sent"]), "\(name): \(verdict.criteria)")
                #expect(Verdict.Criterion.allCases.filter { verdict.status($0) != .pass } == [criterion], "\(name): \(verdict.criteria)")
            } else {
                #expect(r.outcome == .invalid, "\(name) was not rejected")
            }
            // What the criteria, judged again, found wrong is part of the reason.
            for criterion in Verdict.Criterion.allCases { codes.formUnion(r.criteria?.reasons(criterion).map { "\(criterion.rawValue):\($0.code)×\($0.count)" } ?? []) }
            reasons[name] = codes
        }
        // Own reason: no two defects are reported with the same failures and criteria reasons.
        #expect(Set(reasons.values).count == reasons.count)
    }

    @Test func freshBundlesBehaveLikeTheCommittedVectors() throws {
        let factory = try BundleFactory()
        let check = { (bytes: [UInt8]) in
            Self.verify(bytes, providerTrust: factory.pki.providerCA, tsaTrust: factory.pki.tsaCA, custodyTrust: factory.pki.custodyCA, slice: 777)
        }
        #expect(check(try factory.bundle(.standard)).outcome == .valid)
        #expect(check(try factory.bundle(.withCannotExecute)).outcome == .valid)
        for defect in BundleFactory.Defect.allCases {
            let r = check(try factory.bundle(.standard, defect: defect))
            #expect(r.outcome == (defect.criterion == nil ? .invalid : .inadmissible) && r.failures.contains { $0.code == defect.expected }, "\(defect)")
        }
    }

    @Test func trustComesOnlyFromTheCaller() throws {
        let bytes = Array(try Data(contentsOf: try Self.files("valid")[0]))
        let other = try BundleFactory()
        let r = Self.verify(bytes, providerTrust: other.pki.providerCA, tsaTrust: other.pki.tsaCA, custodyTrust: other.pki.custodyCA,
                            witnesses: [try CertificateInfo(pem: other.pki.witnessCertificate)])
        #expect(Set(r.failures.map(\.code)) == [.untrustedSigner, .timeStamp, .checkpointSignature, .checkpointTimeStamp, .cosignature])
        // A co-signature by a witness the caller does not trust is shown, not counted.
        #expect(r.custody?.witnesses.map(\.trusted) == [false])
    }

    @Test func unusableInputIsReportedAsSuch() throws {
        let good = Array(try Data(contentsOf: try Self.files("valid")[0]))
        let p = try Self.trust("provider-ca.pem"), t = try Self.trust("tsa-ca.pem"), c = try Self.trust("custody-ca.pem")
        #expect(Self.verify([], providerTrust: p, tsaTrust: t, custodyTrust: c).outcome == .unusable)
        #expect(Self.verify(Array("this is not a bundle at all".utf8) + [UInt8](repeating: 1, count: 600), providerTrust: p, tsaTrust: t, custodyTrust: c).outcome == .unusable)
        #expect(Self.verify(Array(good.prefix(good.count / 2)), providerTrust: p, tsaTrust: t, custodyTrust: c).outcome == .unusable)
        var badChecksum = good
        badChecksum[10] ^= 1  // inside the first header's name
        #expect(Self.verify(badChecksum, providerTrust: p, tsaTrust: t, custodyTrust: c).unusable?.contains("checksum") == true)
    }

    /// The README's openssl commands, exactly as written, on every valid vector.
    @Test func theReadmesOpensslCommandsPassOnTheValidVectors() throws {
        for url in try Self.files("valid") {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("custos-vector-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            #expect(try shell("tar -xf '\(url.path)'", in: dir) == 0)
            let folder = try #require(try FileManager.default.contentsOfDirectory(atPath: dir.path).first)
            let bundleDir = dir.appendingPathComponent(folder)
            let readme = try String(contentsOf: bundleDir.appendingPathComponent("README.txt"), encoding: .utf8)
            let commands = readme.split(separator: "\n").filter { $0.hasPrefix("openssl ") }.map(String.init)
            #expect(commands.count == 5)
            for command in commands {
                #expect(try shell(command, in: bundleDir, trust: Self.vectors.appendingPathComponent("trust").path) == 0, "\(command)")
            }
        }
    }

    func shell(_ command: String, in dir: URL, trust: String = "") throws -> Int32 {
        try runQuietly("/bin/sh", ["-c", command], in: dir, environment: ["TRUST": trust, "PATH": "/usr/bin:/bin"])
    }
}
