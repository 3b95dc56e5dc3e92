import CustosCanonicalJSON
import CustosCustody
import CustosEvidence
import CustosModel
import CustosPKI
import CustosTestSupport
import Foundation
import Testing

/// Evidence that outlives its certificates: a time-stamp made by a short-lived TSA
/// certificate, renewed before it expired (RFC 4998-style), still proves the bundle after the
/// expiry; without the renewal, the check as of that date fails and names the gap.
@Suite("Time-stamp renewal")
struct RenewalTests {
    static func tsa(_ pki: TestPKI, days: Double, name: String) throws -> TimeStamp.Authority {
        let key = try X509.generateKey()
        let cert = try X509.issue(commonName: name, subjectKey: key, issuerCertificate: pki.tsaCA, issuerKey: pki.tsaCAKey,
                                  notBefore: Date(timeIntervalSinceNow: -3600), notAfter: Date(timeIntervalSinceNow: days * 86_400), serial: Int64.random(in: 100...1_000_000),
                                  role: .timeStamping)
        return TimeStamp.Authority(certificate: cert, key: key)
    }

    /// On a thread of its own, as the other bundle tests (never on the cooperative pool).
    static func verify(_ bytes: [UInt8], _ f: BundleFactory, at: Date?) async throws -> BundleReport {
        try await offPool { verifyBlocking(bytes, f, at: at) }
    }

    static func verifyBlocking(_ bytes: [UInt8], _ f: BundleFactory, at: Date?) -> BundleReport {
        var v = BundleVerifier(providerTrust: f.pki.providerCA, tsaTrust: f.pki.tsaCA, custodyTrust: f.pki.custodyCA,
                               witnesses: (try? CustodyVerifier.certificates(pem: f.pki.witnessCertificate)) ?? [], at: at)
        bytes.withUnsafeBytes { v.consume($0) }
        return v.finish()
    }

    @Test func aRenewedBundleStillVerifiesAfterItsTSACertificateExpiredAndAnUnrenewedOneNamesTheGap() async throws {
        let f = try BundleFactory()
        let shortLived = try Self.tsa(f.pki, days: 2, name: "Short-lived TSA")
        let successor = try Self.tsa(f.pki, days: 300, name: "Successor TSA")
        let unrenewed = try f.bundle(manifestTSA: shortLived)
        let renewed = try f.bundle(manifestTSA: shortLived, renewedBy: successor)
        let later = Date(timeIntervalSinceNow: 30 * 86_400)
        // Today both verify.
        for b in [unrenewed, renewed] {
            let r = try await Self.verify(b, f, at: nil)
            #expect(r.outcome == .valid, "\(r.failures)")
        }
        // Thirty days on, the short-lived certificate has expired.
        let after = try await Self.verify(unrenewed, f, at: later)
        #expect(after.outcome == .invalid)
        #expect(after.failures.contains { $0.code == .timeStamp && $0.detail.contains("manifest.tsr: its TSA certificate expired on") && $0.detail.contains("gap") },
                "\(after.failures)")
        let kept = try await Self.verify(renewed, f, at: later)
        #expect(kept.outcome == .valid, "\(kept.failures)")
        #expect(kept.checks["time-stamp"] == true && kept.timeStampedAt != nil)
        // Past the successor's own expiry, that gap is named in turn.
        let muchLater = try await Self.verify(renewed, f, at: Date(timeIntervalSinceNow: 320 * 86_400))
        #expect(muchLater.failures.contains { $0.detail.contains("manifest.tsr renewal 1: its TSA certificate expired on") }, "\(muchLater.failures)")
    }

    @Test func aRenewalOverOtherBytesOrAnEditedRenewalsFileIsCaught() async throws {
        let f = try BundleFactory()
        let shortLived = try Self.tsa(f.pki, days: 2, name: "Short-lived TSA")
        let renewed = try f.bundle(manifestTSA: shortLived, renewedBy: try Self.tsa(f.pki, days: 300, name: "Successor TSA"))
        // A token over another imprint, in place of the real one.
        let stranger = try f.pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(Array("other".utf8)), nonce: TimeStamp.makeNonce()), serial: 9)
        let members = BundleMutationHelpers.members(renewed)
        var swapped = members
        let i = try #require(members.firstIndex { $0.0.hasSuffix("/renewals.json") })
        swapped[i].1 = try CanonicalJSON.encode(RenewalsFile(manifest: [RenewalElement(token: stranger, index: 0, size: 1, path: [])]))
        let r = try await Self.verify(BundleMutationHelpers.rebuild(swapped), f, at: Date(timeIntervalSinceNow: 30 * 86_400))
        #expect(r.outcome == .invalid && r.failures.contains { $0.code == .timeStamp && $0.detail.contains("renewal 1") }, "\(r.failures)")
        // Dropped (its export's event names it): a failure, not an older-looking bundle.
        var dropped = members
        dropped.remove(at: i)
        #expect(try await Self.verify(BundleMutationHelpers.rebuild(dropped), f, at: nil).failures.contains {
            $0.code == .bundleMember && $0.detail.contains("renewals.json is missing")
        })
        // Not canonical, or not the format.
        swapped[i].1 = Array("{\"format\":\"x\",\"manifest\":[]}".utf8)
        #expect(try await Self.verify(BundleMutationHelpers.rebuild(swapped), f, at: nil).failures.contains { $0.code == .bundleFormat })
    }

    @Test func theImprintCoversTheDataTheSignatureAndEveryTokenSoFar() {
        let a = TimeStampRenewal.imprint(data: [1], signature: [2], tokens: [[3]])
        #expect(a.count == 32)
        #expect(a != TimeStampRenewal.imprint(data: [1], signature: [2], tokens: [[3], [4]]))
        #expect(a != TimeStampRenewal.imprint(data: [9], signature: [2], tokens: [[3]]))
        #expect(a != TimeStampRenewal.imprint(data: [1], signature: [9], tokens: [[3]]))
        #expect(a == TimeStampRenewal.imprint(data: [1], signature: [2], tokens: [[3]]))
    }
}

/// Tar members of a bundle, and a bundle made again from them (as custos writes them).
enum BundleMutationHelpers {
    static func members(_ tar: [UInt8]) -> [(String, [UInt8])] { BundleMutationTests.members(tar) }
    static func rebuild(_ members: [(String, [UInt8])]) -> [UInt8] { BundleMutationTests.rebuild(members) }
}
