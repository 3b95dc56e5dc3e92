@testable import CustosBroker
import CustosCanonicalJSON
import CustosEvidence
import CustosModel
import CustosPKI
import CustosTestSupport
import Foundation
import NIOCore
import PostgresNIO
import Testing

/// `custos-broker renew` against the real PostgreSQL: a package and a checkpoint stamped by a
/// TSA whose certificate expires soon get a renewal from the current TSA; a second pass
/// changes nothing; the stored chain proves the package after the expiry.
@Suite("Time-stamp renewal in the broker", .timeLimit(.minutes(3)))
struct RenewalIntegrationTests {
    @Test func expiringTimeStampsAreRenewedOnceAndTheChainOutlivesTheCertificate() async throws {
        let ingest = try IngestTests()
        let pki = ingest.pki
        let shortLived = try RenewalFixtures.tsa(pki, days: 2)
        try await TestServices.withStore(tsaTrust: pki.tsaCA) { store, client, _ in
            // A package whose manifest was time-stamped by the short-lived TSA.
            let r = try await ingest.approvedRequest(store)
            var p = try ingest.package(for: r)
            let manifestBytes = try CanonicalJSON.encode(p.manifest)
            let signature = try CMS.sign(manifestBytes, certificate: pki.signer, key: pki.signerKey)
            let t0 = try shortLived.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(signature), nonce: TimeStamp.makeNonce()), serial: 3)
            p.body = ManifestBody(manifest: p.manifest, signature: Data(signature).base64EncodedString(), timeStamp: Data(t0).base64EncodedString())
            let (manifest, chunks) = try ingest.messages(p, r)
            for m in chunks + [manifest] { _ = try await store.ingest(m, providerKeys: try await store.providers()) }
            #expect(try await store.package(p.manifest.packageId, viewer: nil).state == .verified)
            // A checkpoint stamped by the same short-lived TSA.
            let signer = try CheckpointSigner(origin: "tests.custos/custody", certificate: pki.custodyCertificate, key: pki.custodyKey,
                                              timeStamp: CheckpointSigner.stamping(with: shortLived))
            try await CustodyIntegrator(client: client, signer: signer, logger: TestServices.logger).integrateOnce()

            let current = CheckpointSigner.stamping(with: pki.tsa)
            let first = try await store.renewTimeStamps(horizon: 90 * 86_400, stamp: current)
            #expect(first.renewed == 2 && first.blocked == 0 && first.checked == 2)
            // Idempotent: the renewals' certificate outlives the horizon.
            let second = try await store.renewTimeStamps(horizon: 90 * 86_400, stamp: current)
            #expect(second.renewed == 0 && second.checked == first.checked)
            // A TSA whose own certificate would expire within the horizon is not used.
            let blocked = try await store.renewTimeStamps(horizon: 900 * 86_400, stamp: CheckpointSigner.stamping(with: shortLived))
            #expect(blocked.renewed == 0 && blocked.blocked == 2)

            // The stored chain proves the package thirty days on; the lone original does not.
            let id = p.manifest.packageId.uuidString.lowercased()
            let renewals = try await store.timeStampRenewals(subject: "package", id: id)
            #expect(renewals.count == 1)
            let later = Date(timeIntervalSinceNow: 30 * 86_400)
            let chain = TimeStampRenewal.check(object: "manifest.tsr", data: manifestBytes, signature: signature, original: t0, renewals: renewals,
                                               tsaTrust: pki.tsaCA, at: later)
            #expect(chain.failures.isEmpty, "\(chain.failures)")
            let alone = TimeStampRenewal.check(object: "manifest.tsr", data: manifestBytes, signature: signature, original: t0, renewals: [],
                                               tsaTrust: pki.tsaCA, at: later)
            #expect(alone.failures.count == 1 && alone.failures[0].contains("gap"))
            // Renewals are append-only.
            await #expect(throws: (any Error).self) { try await client.query("DELETE FROM time_stamp_renewals", logger: TestServices.logger) }
        }
    }
}

enum RenewalFixtures {
    static func tsa(_ pki: TestPKI, days: Double) throws -> TimeStamp.Authority {
        let key = try X509.generateKey()
        let cert = try X509.issue(commonName: "Short-lived TSA", subjectKey: key, issuerCertificate: pki.tsaCA, issuerKey: pki.tsaCAKey,
                                  notBefore: Date(timeIntervalSinceNow: -3600), notAfter: Date(timeIntervalSinceNow: days * 86_400), serial: 4242,
                                  role: .timeStamping)
        return TimeStamp.Authority(certificate: cert, key: key)
    }
}
