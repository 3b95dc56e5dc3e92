@testable import CustosBroker
import CustosEvidence
import CustosModel
import Foundation
import Testing

/// Package ingest's rules, with no database: what a chunk, a manifest part and a manifest must
/// be to be accepted, and how content failures are named.
@Suite("Package ingest rules")
struct PackageIngestTests {
    let package = UUID()

    func chunk(_ bytes: [UInt8], index: Int = 0, size: Int? = nil, sha256: String? = nil, results: [ChunkBody.ResultStart] = [.init(result: 0, offset: 0)]) -> ChunkBody {
        ChunkBody(packageId: package, index: index, size: size ?? bytes.count, sha256: sha256 ?? Digest.sha256Hex(bytes), results: results)
    }

    @Test func aChunkMustBeWhatItsEnvelopeSays() {
        let bytes = Array("{\"a\":1}\n".utf8), sha = Digest.sha256Hex(bytes)
        #expect(PackageIngest.rejection(of: chunk(bytes), count: bytes.count, sha256: sha) == nil)
        #expect(PackageIngest.rejection(of: chunk(bytes, size: 3), count: bytes.count, sha256: sha) == "chunk size differs from its envelope")
        #expect(PackageIngest.rejection(of: chunk([], size: 0), count: 0, sha256: Digest.sha256Hex([])) == "chunk size differs from its envelope")
        #expect(PackageIngest.rejection(of: chunk(bytes, sha256: String(repeating: "0", count: 64)), count: bytes.count, sha256: sha)
            == "chunk SHA-256 differs from its envelope")
        #expect(PackageIngest.rejection(of: chunk(bytes, sha256: "not hex"), count: bytes.count, sha256: "not hex") == "chunk SHA-256 differs from its envelope")
        #expect(PackageIngest.rejection(of: chunk(bytes, index: -1), count: bytes.count, sha256: sha) == "chunk index outside 0 to 999999")
        #expect(PackageIngest.rejection(of: chunk(bytes, index: PackageIngest.maximumChunks), count: bytes.count, sha256: sha) != nil)
        // Results must start at 0 and rise inside the chunk.
        #expect(PackageIngest.rejection(of: chunk(bytes, results: [.init(result: 0, offset: 2)]), count: bytes.count, sha256: sha)?.hasPrefix("malformed") == true)
        #expect(PackageIngest.rejection(of: chunk(bytes, results: [.init(result: 1, offset: 0), .init(result: 0, offset: 3)]), count: bytes.count,
                                        sha256: sha)?.hasPrefix("malformed") == true)
        #expect(PackageIngest.rejection(of: chunk(bytes, results: [.init(result: PackageIngest.maximumResults, offset: 0)]), count: bytes.count,
                                        sha256: sha)?.hasPrefix("malformed") == true)
    }

    @Test func aManifestPartMustBeWhatItsEnvelopeSays() {
        let bytes = Array("part".utf8), sha = Digest.sha256Hex(bytes), body = String(repeating: "a", count: 64)
        #expect(PackageIngest.rejection(of: ManifestPartBody(packageId: package, index: 0, count: 2, size: 4, sha256: sha, bodySha256: body), bytes: bytes) == nil)
        #expect(PackageIngest.rejection(of: ManifestPartBody(packageId: package, index: 0, count: 1, size: 4, sha256: sha, bodySha256: body), bytes: bytes)
            == "manifest part is malformed")  // one part is not parts
        #expect(PackageIngest.rejection(of: ManifestPartBody(packageId: package, index: 2, count: 2, size: 4, sha256: sha, bodySha256: body), bytes: bytes)
            == "manifest part is malformed")
        #expect(PackageIngest.rejection(of: ManifestPartBody(packageId: package, index: 0, count: 2, size: 5, sha256: sha, bodySha256: body), bytes: bytes)
            == "manifest part is malformed")
        #expect(PackageIngest.rejection(of: ManifestPartBody(packageId: package, index: 0, count: 2, size: 4, sha256: body, bodySha256: body), bytes: bytes)
            == "manifest part SHA-256 differs from its envelope")
    }

    @Test func partsMustMakeTheCanonicalBodyTheyName() {
        func reason(_ whole: [UInt8], _ sha: String? = nil) -> String? {
            do { _ = try PackageIngest.assemble(whole, bodySha256: sha ?? Digest.sha256Hex(whole)); return nil } catch { return "\(error)" }
        }
        #expect(reason(Array("{}".utf8), String(repeating: "0", count: 64)) == "manifest parts do not make the body their SHA-256 names")
        #expect(reason(Array("not json".utf8)) == "manifest parts do not make a manifest message body")
        #expect(reason(Array("{\"manifest\":{}}".utf8)) == "manifest parts do not make a manifest message body")
    }

    @Test func differingChunksAreNamedByIndex() {
        let good = String(repeating: "a", count: 64), bad = String(repeating: "b", count: 64)
        let manifest = Manifest(packageId: package, requestId: UUID(), requestHash: good, providerId: "p", asOf: "2026-01-01T00:00:00Z",
                                createdAt: "2026-01-01T00:00:00Z", results: [], content: .init(size: 3, recordCount: 0),
                                chunks: [.init(index: 0, size: 1, sha256: good), .init(index: 1, size: 1, sha256: good), .init(index: 2, size: 1, sha256: good)],
                                chunksRoot: good)
        let built = [PackageVerification.Failure(code: .chunkHash, detail: "the chunks root differs")]
        let named = PackageIngest.contentFailures(built, manifest: manifest, beyond: 0, chunkHashes: [(0, good), (1, bad), (2, good)])
        #expect(named.map(\.detail) == ["chunk 1 SHA-256 differs from the manifest"])
        // None of the index's hashes differs: the failure stays as built.
        #expect(PackageIngest.contentFailures(built, manifest: manifest, beyond: 0, chunkHashes: [(0, good)]).map(\.detail) == ["the chunks root differs"])
        // Chunks past the manifest's last are trailing data, counted once.
        let trailing = PackageIngest.contentFailures([], manifest: manifest, beyond: 2, chunkHashes: [])
        #expect(trailing.map(\.code) == [.trailingData] && trailing[0].detail == "2 chunks past the last chunk of the manifest")
    }
}
