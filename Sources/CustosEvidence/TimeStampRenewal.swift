import CustosModel
import CustosPKI
import Foundation

/// Time-stamp renewal in the manner of RFC 4998 §5.2 (Evidence Record Syntax): before the
/// certificate of a time-stamping authority (or of the signer) expires, a new RFC 3161
/// time-stamp is made over the signed data, its signature and every time-stamp so far, so
/// that the chain stays provable after each certificate has expired.
///
/// A chain is `[T0, T1, …, Tn]`: `T0` is the original token (over SHA-256 of the signature);
/// `Ti` (i ≥ 1) is over `imprint(data, signature, [T0 … Ti−1])`. Checked at a date D, `Ti` is
/// checked at the time `Ti+1` proves (its genTime), and `Tn` at D: each certificate must have
/// been valid when the next token proved the chain existed.
public enum TimeStampRenewal {
    /// Domain separation of the renewal imprint.
    public static let label = Array("custos.renewal.v1\n".utf8)

    /// SHA-256(label ‖ SHA-256(data) ‖ SHA-256(signature) ‖ SHA-256(T0) ‖ … ‖ SHA-256(Tk)),
    /// the imprint the renewal after `tokens` time-stamps (32 bytes).
    public static func imprint(data: [UInt8], signature: [UInt8], tokens: [[UInt8]]) -> [UInt8] {
        Digest.sha256Bytes(label + Digest.sha256Bytes(data) + Digest.sha256Bytes(signature) + tokens.flatMap(Digest.sha256Bytes))
    }

    /// What a chain proves at a date.
    public struct Check: Sendable {
        /// Each names the object, the token and, for an expiry, the gap.
        public var failures: [String]
        /// The original token's genTime, when it verifies (at the time the chain proves it).
        public var genTime: Date?
        public var accuracyMicroseconds: Int64?
    }

    /// Checks `[original] + renewals` at `date` (now when nil).
    /// - Parameters:
    ///   - object: how failures name it (`manifest.tsr`, `checkpoint 1234`).
    public static func check(object: String, data: [UInt8], signature: [UInt8], original: [UInt8], renewals: [[UInt8]],
                             tsaTrust: String, at date: Date?) -> Check {
        var result = Check(failures: [], genTime: nil, accuracyMicroseconds: nil)
        let tokens = [original] + renewals
        // Each renewal's own time first: it is when the token before it must still have been valid.
        var proven: [Date?] = []
        for (i, token) in tokens.enumerated() {
            let imprint = i == 0 ? Digest.sha256Bytes(signature) : self.imprint(data: data, signature: signature, tokens: Array(tokens[..<i]))
            // The time the next token proves, else the date asked about.
            let nextTime: Date? = i + 1 < tokens.count ? genTime(of: tokens[i + 1], imprint: self.imprint(data: data, signature: signature, tokens: Array(tokens[...i])), trust: tsaTrust) : date
            let name = i == 0 ? object : "\(object) renewal \(i)"
            switch TimeStamp.verify(response: token, sha256: imprint, trust: tsaTrust, at: nextTime) {
            case .valid(let t):
                proven.append(t.genTime)
                if i == 0 { result.genTime = t.genTime; result.accuracyMicroseconds = t.accuracyMicroseconds }
                if i > 0, let before = proven[i - 1], t.genTime < before {
                    result.failures.append("\(name) is dated before the time-stamp it renews")
                }
            case .invalid(let why):
                proven.append(nil)
                let when = nextTime ?? Date()
                if let notAfter = TimeStamp.signerNotAfter(response: token), notAfter < when {
                    result.failures.append("\(name): its TSA certificate expired on \(Timestamp.format(notAfter)), and no renewal made before then covers it "
                                           + "(a gap from \(Timestamp.format(notAfter)) to \(Timestamp.format(when)))")
                } else {
                    result.failures.append(i == 0 ? "time-stamp does not verify over the signature: \(why)" : "\(name) does not verify: \(why)")
                }
            }
        }
        return result
    }

    /// A token's genTime when its signature and imprint verify, whatever its certificate's
    /// validity now (the time it states is checked against the token before it).
    static func genTime(of token: [UInt8], imprint: [UInt8], trust: String) -> Date? {
        // Valid at some instant of its TSA certificate's life: its notAfter.
        let at = TimeStamp.signerNotAfter(response: token)?.addingTimeInterval(-1)
        if case .valid(let t) = TimeStamp.verify(response: token, sha256: imprint, trust: trust, at: at) { return t.genTime }
        return nil
    }
}

/// `renewals.json` in an export bundle: the renewal time-stamps of the manifest's chain, in
/// order (`manifest.tsr` is `T0`).
public struct RenewalsFile: Codable, Sendable, Equatable {
    public static let currentFormat = "custos.renewals.v1"
    public var format: String
    /// Base64 DER TimeStampResp, T1 first.
    public var manifest: [String]

    public init(manifest: [[UInt8]]) {
        format = Self.currentFormat
        self.manifest = manifest.map { Data($0).base64EncodedString() }
    }

    public var manifestTokens: [[UInt8]]? {
        let tokens = manifest.compactMap { Data(base64Encoded: $0).map(Array.init) }
        return tokens.count == manifest.count ? tokens : nil
    }
}
