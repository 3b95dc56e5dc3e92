import Crypto
import CustosBroker
import CustosEvidence
import CustosModel
import Foundation
import Testing

/// Package protocol v2 (SPEC §7): the content checked chunk by chunk before the manifest, and
/// the chunk store the broker keeps chunks in.
@Suite("Chunks as they arrive")
struct ChunkArrivalTests {
    /// Three results — 1,000 bytes, none, 300 bytes — as the SPEC's example cuts them into
    /// 700-byte chunks, and the manifest that goes with them.
    static func package(chunkSize: Int = 700) -> (manifest: Manifest, chunks: [[UInt8]], results: [[ChunkBody.ResultStart]]) {
        func records(_ n: Int, _ tag: String, length: Int) -> [[UInt8]] {
            (0..<n).map { i in Array("{\"\(tag)\":\(i),\"pad\":\"".utf8) + Array(repeating: UInt8(ascii: "x"), count: length - 14 - tag.count - String(i).count) + Array("\"}".utf8) }
        }
        let groups = [records(10, "a", length: 99), [], records(3, "c", length: 99)]
        var content: [UInt8] = []
        var starts: [(result: Int, at: Int)] = []
        var results: [Manifest.Result] = []
        for (r, group) in groups.enumerated() {
            var tree = RecordTree()
            if !group.isEmpty { starts.append((r, content.count)) }
            for record in group {
                record.withUnsafeBytes { tree.append(record: $0) }
                content += record + [0x0A]
            }
            results.append(.init(target: Target(type: .msisdn, value: "+8491234567\(r)"), category: .traffic, status: group.isEmpty ? .noData : .data,
                                 recordCount: group.count, size: tree.size, recordsRoot: tree.root))
        }
        var accumulator = ChunkAccumulator(chunkSize: chunkSize)
        accumulator.append(content)
        let (list, root, size) = accumulator.finish()
        let chunks = stride(from: 0, to: content.count, by: chunkSize).map { Array(content[$0..<min($0 + chunkSize, content.count)]) }
        let perChunk = chunks.indices.map { i -> [ChunkBody.ResultStart] in
            let from = i * chunkSize, to = from + chunks[i].count
            let current = starts.last { $0.at <= from }!
            return [.init(result: current.result, offset: 0)] + starts.filter { $0.at > from && $0.at < to }.map { .init(result: $0.result, offset: $0.at - from) }
        }
        let manifest = Manifest(packageId: UUID(), requestId: UUID(), requestHash: String(repeating: "0", count: 64), providerId: "prov-a",
                                asOf: "2026-11-30T00:00:00Z", createdAt: "2026-11-30T00:00:00Z", results: results,
                                content: .init(size: size, recordCount: 13), chunks: list, chunksRoot: root)
        return (manifest, chunks, perChunk)
    }

    func check(_ chunks: [[UInt8]], _ results: [[ChunkBody.ResultStart]], against manifest: Manifest) -> [String] {
        var arriving = ArrivingContent()
        for (bytes, starts) in zip(chunks, results) { arriving.consume(chunk: bytes, sha256: Digest.sha256Bytes(bytes), results: starts) }
        return arriving.finish(against: manifest).map(\.code.rawValue)
    }

    @Test func theSpecsExampleIsCutAsItSaysAndChecksWithoutFailure() {
        let p = Self.package()
        #expect(p.results[0] == [.init(result: 0, offset: 0)])
        #expect(p.results[1] == [.init(result: 0, offset: 0), .init(result: 2, offset: 300)])
        #expect(p.results.allSatisfy { starts in ChunkBody(packageId: UUID(), index: 0, size: 700, sha256: "", results: starts).resultsAreWellFormed })
        #expect(check(p.chunks, p.results, against: p.manifest) == [])
    }

    @Test func everyDifferenceFromTheManifestIsAFailureOfItsOwn() {
        let p = Self.package()
        // A boundary 100 bytes off: the results' sizes and roots differ, not the chunks.
        var moved = p.results
        moved[1][1].offset -= 100
        #expect(Set(check(p.chunks, moved, against: p.manifest)) == ["result-size", "result-count", "records-root"])
        // A flipped byte: the chunk list, its root and the records root.
        var flipped = p.chunks
        flipped[0][5] ^= 1
        #expect(Set(check(flipped, p.results, against: p.manifest)) == ["chunk-hash", "chunks-root", "records-root"])
        // A chunk short, and one too many.
        #expect(check(Array(p.chunks.dropLast()), Array(p.results.dropLast()), against: p.manifest).contains("chunk-missing"))
        #expect(check(p.chunks + [[0x0A]], p.results + [[.init(result: 2, offset: 0)]], against: p.manifest).contains("trailing-data"))
        // Chunk sizes that differ from the manifest's, with the same bytes.
        var sized = p.manifest
        sized.chunks[0].size -= 1
        sized.chunks[1].size += 1
        #expect(check(p.chunks, p.results, against: sized).contains("chunk-size"))
        // Results that go back, or that the manifest does not list.
        #expect(check(p.chunks, [[.init(result: 2, offset: 0)], [.init(result: 0, offset: 0)]], against: p.manifest).contains("result-size"))
    }

    @Test func malformedResultListsAreRefusedOnArrival() {
        func ok(_ starts: [ChunkBody.ResultStart], size: Int = 700) -> Bool {
            ChunkBody(packageId: UUID(), index: 0, size: size, sha256: "", results: starts).resultsAreWellFormed
        }
        #expect(!ok([]))
        #expect(!ok([.init(result: 0, offset: 1)]))
        #expect(!ok([.init(result: 1, offset: 0), .init(result: 1, offset: 10)]))
        #expect(!ok([.init(result: 0, offset: 0), .init(result: 2, offset: 700)]))
        #expect(!ok([.init(result: 0, offset: 0), .init(result: 2, offset: 10), .init(result: 3, offset: 10)]))
        #expect(!ok([.init(result: -1, offset: 0)]))
        #expect(ok([.init(result: 0, offset: 0), .init(result: 4, offset: 699)]))
    }

    @Test func theChunkStoreKeepsEachChunkOnceEncryptedAndNeverServesADamagedOne() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("custos-chunk-store-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let key = SymmetricKey(size: .bits256)
        let store = try DirectoryChunkStore(root: root, key: key)
        let chunk = Array("{\"a\":1}\n".utf8) + Array(repeating: UInt8(ascii: "z"), count: 5000)
        let sha = Digest.sha256Hex(chunk)
        let location = try chunk.withUnsafeBytes { try store.put($0, sha256: sha) }
        #expect(location == "file:\(sha.prefix(2))/\(sha)")
        #expect(try store.get(location: location, sha256: sha) == chunk)
        // Stored once, whatever the number of puts; at rest it is not the plain bytes.
        _ = try chunk.withUnsafeBytes { try store.put($0, sha256: sha) }
        let files = try FileManager.default.subpathsOfDirectory(atPath: root.path).filter { $0.contains("/") }
        #expect(files == ["\(sha.prefix(2))/\(sha)"])
        let file = root.appendingPathComponent(String(sha.prefix(2))).appendingPathComponent(sha)
        let atRest = try [UInt8](Data(contentsOf: file))
        #expect(atRest.count == 8 + 12 + chunk.count + 16 && atRest.starts(with: Array("CUSTOSC1".utf8)))
        #expect(!String(decoding: atRest, as: UTF8.self).contains("zzzzzzzz"))
        // Another key, a flipped byte, a missing file: each an error naming the location.
        #expect { try DirectoryChunkStore(root: root, key: SymmetricKey(size: .bits256)).get(location: location, sha256: sha) } throws: {
            ($0 as? ChunkStoreError)?.kind == .corrupted
        }
        var damaged = atRest
        damaged[40] ^= 1
        try Data(damaged).write(to: file)
        #expect { try store.get(location: location, sha256: sha) } throws: { ($0 as? ChunkStoreError)?.kind == .corrupted }
        // A damaged file is replaced by the next put of the same chunk.
        _ = try chunk.withUnsafeBytes { try store.put($0, sha256: sha) }
        #expect(try store.get(location: location, sha256: sha) == chunk)
        try FileManager.default.removeItem(at: file)
        #expect { try store.get(location: location, sha256: sha) } throws: {
            ($0 as? ChunkStoreError)?.kind == .missing && "\($0)".contains(sha)
        }
    }

    @Test func theStorageKeyFileHolds64HexDigits() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("custos-storage-key-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: file) }
        try DirectoryChunkStore.newKeyText().write(toFile: file, atomically: true, encoding: .utf8)
        #expect(try DirectoryChunkStore.loadKey(path: file).bitCount == 256)
        try "not a key\n".write(toFile: file, atomically: true, encoding: .utf8)
        #expect { try DirectoryChunkStore.loadKey(path: file) } throws: { "\($0)".contains("64 hexadecimal digits") }
    }
}
