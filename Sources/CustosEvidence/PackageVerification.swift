import CustosCanonicalJSON
import CustosModel
import Foundation

/// The outcome of checking a package: a value with every failure found, not a thrown error.
public struct PackageVerification: Codable, Sendable, Hashable {
    public struct Failure: Codable, Sendable, Hashable, CustomStringConvertible {
        public enum Code: String, Codable, Sendable {
            case manifestFormat = "manifest-format"
            case signature
            case wrongProvider = "wrong-provider"
            case wrongRequest = "wrong-request"
            case requestHash = "request-hash"
            case chunkMissing = "chunk-missing"
            case chunkHash = "chunk-hash"
            case chunkSize = "chunk-size"
            case contentHash = "content-hash"
            case contentSize = "content-size"
            case resultCounts = "result-counts"
        }
        public var code: Code
        public var detail: String
        public var description: String { "\(code.rawValue): \(detail)" }
    }

    public var valid: Bool { failures.isEmpty }
    public var failures: [Failure]
    public var manifestSha256: String
    public var checkedAt: String
}

/// What the verifier saw of the chunks, gathered in constant memory by streaming them.
public struct ObservedContent: Sendable {
    public var chunkHashes: [Int: (sha256: String, size: Int)]
    public var contentSha256: String
    public var contentSize: Int64

    public init(chunkHashes: [Int: (sha256: String, size: Int)], contentSha256: String, contentSize: Int64) {
        self.chunkHashes = chunkHashes
        self.contentSha256 = contentSha256
        self.contentSize = contentSize
    }
}

public enum PackageVerifier {
    /// Checks the manifest's signature with the provider's registered key, its binding to the
    /// request as approved, and the observed chunks against the manifest.
    public static func verify(
        manifest: Manifest, signature: String, providerKey: VerifyingKey,
        expectedProvider: String, expectedRequest: UUID, expectedRequestHash: String,
        observed: ObservedContent, now: Date = Date()
    ) -> PackageVerification {
        var failures: [PackageVerification.Failure] = []
        func fail(_ c: PackageVerification.Failure.Code, _ d: String) { failures.append(.init(code: c, detail: d)) }

        let manifestBytes = (try? CanonicalJSON.encode(manifest)) ?? []
        if manifest.format != Manifest.currentFormat { fail(.manifestFormat, "format is not \(Manifest.currentFormat)") }
        if !providerKey.isValidSignature(signature, for: manifestBytes) {
            fail(.signature, "manifest signature does not verify with the provider's registered key")
        }
        if manifest.providerId != expectedProvider { fail(.wrongProvider, "manifest names another provider than the one addressed") }
        if manifest.requestId != expectedRequest { fail(.wrongRequest, "manifest names another request") }
        if manifest.requestHash != expectedRequestHash { fail(.requestHash, "manifest's request hash differs from the request as approved") }

        for chunk in manifest.chunks {
            guard let seen = observed.chunkHashes[chunk.index] else {
                fail(.chunkMissing, "chunk \(chunk.index) was not received"); continue
            }
            if seen.sha256 != chunk.sha256 { fail(.chunkHash, "chunk \(chunk.index) SHA-256 differs from the manifest") }
            if seen.size != chunk.size { fail(.chunkSize, "chunk \(chunk.index) size differs from the manifest") }
        }
        let indices = manifest.chunks.map(\.index)
        if indices != Array(0..<manifest.chunks.count) { fail(.manifestFormat, "chunk indices are not 0..<\(manifest.chunks.count) in order") }
        if observed.chunkHashes.count > manifest.chunks.count { fail(.manifestFormat, "more chunks received than the manifest lists") }
        if observed.contentSha256 != manifest.content.sha256 { fail(.contentHash, "content SHA-256 differs from the manifest") }
        if observed.contentSize != manifest.content.size { fail(.contentSize, "content size differs from the manifest") }
        if manifest.results.reduce(0, { $0 + $1.recordCount }) != manifest.content.recordCount {
            fail(.resultCounts, "per-result record counts do not add up to the content's record count")
        }
        return PackageVerification(failures: failures, manifestSha256: Digest.sha256Hex(manifestBytes), checkedAt: Timestamp.format(now))
    }
}
