import CustosModel
import CustosPKI
import CustosTestSupport
import Foundation
import Testing

@Suite("CMS, RFC 3161 and X.509 through OpenSSL")
struct PKITests {
    let data = Array("{\"format\":\"custos.manifest.v1\"}".utf8)

    @Test func certificatesCarryWhatWasAskedFor() throws {
        let pki = try TestPKI()
        let info = try CertificateInfo(pem: pki.signer)
        #expect(info.commonName == "prov-a")
        #expect(info.isValid(at: Date()))
        #expect(try CertificateInfo(info.der) == info)  // DER and PEM read alike
        #expect(throws: PKIError.self) { try CertificateInfo(Array("nonsense".utf8)) }
    }

    @Test func aSignatureVerifiesWithItsRootAndNothingElse() throws {
        let pki = try TestPKI()
        let sig = try CMS.sign(data, certificate: pki.signer, key: pki.signerKey)
        guard case .valid(let signer) = CMS.verify(signature: sig, data: data, trust: pki.providerCA, at: nil) else {
            Issue.record("a good signature did not verify"); return
        }
        #expect(signer.commonName == "prov-a")
        var edited = data
        edited[3] ^= 0x01
        #expect(CMS.verify(signature: sig, data: edited, trust: pki.providerCA, at: nil) != .valid(signer: signer))
        let stranger = try TestPKI()
        if case .valid = CMS.verify(signature: sig, data: data, trust: stranger.providerCA, at: nil) { Issue.record("untrusted CA accepted") }
        if case .valid = CMS.verify(signature: sig, data: data, trust: "", at: nil) { Issue.record("no anchors accepted") }
        if case .valid = CMS.verify(signature: Array(sig.dropLast()), data: data, trust: pki.providerCA, at: nil) { Issue.record("truncated signature accepted") }
        if case .valid = CMS.verify(signature: sig + [0], data: data, trust: pki.providerCA, at: nil) { Issue.record("trailing garbage accepted") }
    }

    @Test func theChainIsCheckedAtTheGivenTime() throws {
        let pki = try TestPKI(signerValidity: Date(timeIntervalSinceNow: -10 * 86_400)...Date(timeIntervalSinceNow: -5 * 86_400))
        let sig = try CMS.sign(data, certificate: pki.signer, key: pki.signerKey)
        if case .valid = CMS.verify(signature: sig, data: data, trust: pki.providerCA, at: nil) { Issue.record("expired certificate accepted now") }
        // While it was valid the same signature verifies (the CA, too, must have been valid then).
        let ca = try TestPKI(signerValidity: Date(timeIntervalSinceNow: -10 * 86_400)...Date(timeIntervalSinceNow: 86_400))
        let sig2 = try CMS.sign(data, certificate: ca.signer, key: ca.signerKey)
        if case .invalid(let why) = CMS.verify(signature: sig2, data: data, trust: ca.providerCA, at: Date(timeIntervalSinceNow: -3600)) {
            Issue.record("valid at that time but refused: \(why)")
        }
    }

    @Test func aKeyThatIsNotTheCertificatesIsRefused() throws {
        let pki = try TestPKI()
        #expect(throws: PKIError.self) { try CMS.sign(data, certificate: pki.signer, key: pki.tsaCAKey) }
    }

    @Test func timeStampsRoundTripWithNonceAndAccuracy() throws {
        let pki = try TestPKI()
        let digest = Digest.sha256Bytes(data)
        let nonce = TimeStamp.makeNonce()
        let response = try pki.tsa.respond(to: try TimeStamp.request(sha256: digest, nonce: nonce), serial: 42)
        guard case .valid(let token) = TimeStamp.verify(response: response, sha256: digest, trust: pki.tsaCA) else {
            Issue.record("a good time-stamp did not verify"); return
        }
        #expect(token.nonce == nonce)
        #expect(token.accuracyMicroseconds == 1_000_000)
        #expect(abs(token.genTime.timeIntervalSinceNow) < 60)
        if case .valid = TimeStamp.verify(response: response, sha256: Digest.sha256Bytes([1, 2, 3]), trust: pki.tsaCA) { Issue.record("time-stamp over other data accepted") }
        if case .valid = TimeStamp.verify(response: response, sha256: digest, trust: pki.providerCA) { Issue.record("untrusted TSA accepted") }
        // A garbage request gets a signed rejection, which does not verify as a time-stamp.
        let rejection = try pki.tsa.respond(to: [0x30, 0x03, 0x02, 0x01, 0x01], serial: 43)
        if case .valid = TimeStamp.verify(response: rejection, sha256: digest, trust: pki.tsaCA) { Issue.record("rejection accepted") }
    }

    /// The court expert's tools: stock openssl, no Custos code.
    @Test func stockOpensslVerifiesWhatCustosProduces() throws {
        let pki = try TestPKI()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("custos-openssl-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func write(_ name: String, _ bytes: [UInt8]) throws { try Data(bytes).write(to: dir.appendingPathComponent(name)) }
        let sig = try CMS.sign(data, certificate: pki.signer, key: pki.signerKey)
        try write("manifest.json", data)
        try write("manifest.p7s", sig)
        try write("provider-ca.pem", Array(pki.providerCA.utf8))
        try write("tsa-ca.pem", Array(pki.tsaCA.utf8))
        try write("manifest.tsr", try pki.tsa.respond(to: try TimeStamp.request(sha256: Digest.sha256Bytes(sig), nonce: TimeStamp.makeNonce()), serial: 1))
        #expect(try openssl(["cms", "-verify", "-binary", "-inform", "DER", "-in", "manifest.p7s", "-content", "manifest.json",
                             "-CAfile", "provider-ca.pem", "-out", "/dev/null"], in: dir) == 0)
        #expect(try openssl(["ts", "-verify", "-in", "manifest.tsr", "-data", "manifest.p7s", "-CAfile", "tsa-ca.pem"], in: dir) == 0)
        try write("manifest.json", Array(data.dropLast()))
        #expect(try openssl(["cms", "-verify", "-binary", "-inform", "DER", "-in", "manifest.p7s", "-content", "manifest.json",
                             "-CAfile", "provider-ca.pem", "-out", "/dev/null"], in: dir) != 0)
    }

    func openssl(_ args: [String], in dir: URL) throws -> Int32 {
        try runQuietly("/usr/bin/openssl", args, in: dir)
    }
}
