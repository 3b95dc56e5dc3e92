import Crypto
import CustosCustody
import CustosMerkle
import CustosWitness
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import NIOCore
import Testing

/// C2SP signed notes, cosignatures and the tlog-witness protocol, against the specs' own
/// examples and the Go reference implementation's vector (golang.org/x/mod/sumdb/note, which
/// c2sp.org/signed-note specifies), and mutated negatives.
@Suite("C2SP signed notes and the witness protocol")
struct C2SPTests {
    // The Go reference vector: Ed25519 is deterministic, so signing must reproduce it byte for byte.
    static let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
    static let skey = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
    static let text = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
    static let line = "— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"

    @Test func theReferenceNoteIsSignedAndVerifiedByteForByte() throws {
        let signer = try NoteSigner(skey: Self.skey)
        #expect(signer.verifier.vkey == Self.vkey)
        #expect(signer.skey == Self.skey)
        #expect(try signer.sign(Array(Self.text.utf8)).line == Self.line)
        let note = try SignedNote(parsing: Array((Self.text + "\n" + Self.line).utf8))
        #expect(note.text == Array(Self.text.utf8))
        #expect(try note.verified(by: try NoteVerifierKey(vkey: Self.vkey)).count == 1)
        #expect(note.bytes == Array((Self.text + "\n" + Self.line).utf8))
    }

    @Test func mutatedNotesAndKeysAreRefused() throws {
        let key = try NoteVerifierKey(vkey: Self.vkey)
        // Text changed: the known key's signature fails, which rejects the note.
        let edited = try SignedNote(parsing: Array((Self.text.replacingOccurrences(of: "cryptography", with: "cryptographY") + "\n" + Self.line).utf8))
        #expect(throws: NoteError.self) { try edited.verified(by: key) }
        // A flipped signature byte.
        var blob = Array(Data(base64Encoded: "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=")!)
        blob[10] ^= 1
        let flipped = try SignedNote(parsing: Array((Self.text + "\n— PeterNeumann \(Data(blob).base64EncodedString())\n").utf8))
        #expect(throws: NoteError.self) { try flipped.verified(by: key) }
        // Another key id under the same name is another key: ignored, so nothing verifies.
        blob[10] ^= 1
        blob[0] ^= 1
        let otherID = try SignedNote(parsing: Array((Self.text + "\n— PeterNeumann \(Data(blob).base64EncodedString())\n").utf8))
        #expect(try otherID.verified(by: key).isEmpty)
        // Malformed notes.
        for bad in [Self.text + Self.line, Self.text + "\n", Self.text + "\n" + Self.line.replacingOccurrences(of: "— ", with: "- "),
                    Self.text + "\n" + Self.line.dropLast(), "a\u{1}b\n\n" + Self.line, Self.text + "\n— Peter Neumann AAAAAAA=\n"] {
            #expect(throws: NoteError.self, "\(bad.debugDescription)") { try SignedNote(parsing: Array(bad.utf8)) }
        }
        // Every truncation and every changed byte of the vkey is refused (as Go's test does).
        let b = Array(Self.vkey.utf8)
        for i in 0..<b.count {
            for j in (i + 1)...b.count where i != 0 || j != b.count {
                #expect((try? NoteVerifierKey(vkey: String(decoding: b[i..<j], as: UTF8.self))) == nil)
            }
            var changed = b
            changed[i] &+= 1
            #expect((try? NoteVerifierKey(vkey: String(decoding: changed, as: UTF8.self))) == nil, "byte \(i)")
        }
    }

    @Test func theSpecsCosignatureAndWitnessRequestExamplesParse() throws {
        // c2sp.org/tlog-cosignature: the example's timestamp is the one its signed-message example shows.
        let cosig = try NoteSignature(line: Array("— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXEhZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n".utf8))
        #expect(cosig.name == "witness.example.com/w1")
        #expect(TlogCosignature.time(of: cosig) == 1_679_315_147)
        #expect(Array(TlogCosignature.message(time: 1_679_315_147, checkpoint: Array("example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n".utf8)))
                == Array("cosignature/v1\ntime 1679315147\nexample.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n".utf8))
        // c2sp.org/tlog-witness: the example add-checkpoint body.
        let body = """
            old 20852014
            PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=
            jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=
            5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=
            /6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=

            example.com/behind-the-sofa
            20852163
            CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=

            — example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
            — example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=

            """
        let request = try AddCheckpointRequest(parsing: Array(body.utf8))
        #expect(request.oldSize == 20_852_014 && request.proof.count == 4)
        #expect(request.body == Array(body.utf8))
        let note = try SignedNote(parsing: request.checkpoint)
        #expect(note.signatures.count == 2)
        #expect(try TlogCheckpointHead(text: note.text).size == 20_852_163)
        // The example response's lines are cosignatures: a key ID, an 8-byte time and 64 bytes.
        let answer = try NoteSignature(line: Array("— witness.example/w1 CMp+6LWBU0anHGH5aNDTJkH/gj79sG+T6+iP2ThYN5krrDJbR1HDnucjL39QsZTSvVjyQLrdk3DXDqI5G2HgLatVs0pWh6Up69HVOw==\n".utf8))
        #expect(answer.signature.count == 72)
        // Malformed bodies.
        for bad in ["old 01\n\n", "old 5\n", "old x\n\n", "old 5\nnot-base64\n\n", "new 5\n\n",
                    "old 5\n" + String(repeating: "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n", count: 64) + "\n"] {
            #expect(throws: NoteError.self, "\(bad.debugDescription)") { try AddCheckpointRequest(parsing: Array(bad.utf8)) }
        }
    }

    @Test func aCosignatureVerifiesAndAnyChangeBreaksIt() throws {
        let witness = try NoteSigner.generate(name: "witness.test/w1", type: .cosignatureV1)
        let text = Array("log.test/one\n5\n\(Data(MerkleTree.emptyRoot).base64EncodedString())\n".utf8)
        let line = try TlogCosignature.sign(checkpoint: text, time: 1_700_000_000, by: witness)
        #expect(line.signature.count == 72 && TlogCosignature.time(of: line) == 1_700_000_000)
        #expect(witness.verifier.verify(line, over: text))
        var later = line
        later.signature[7] ^= 1  // another time
        #expect(!witness.verifier.verify(later, over: text))
        #expect(!witness.verifier.verify(line, over: Array("log.test/one\n6\n".utf8) + text.dropFirst(15)))
        // A cosigner key does not make plain note signatures, nor the reverse.
        #expect(throws: NoteError.self) { try witness.sign(text) }
        #expect(throws: NoteError.self) { try TlogCosignature.sign(checkpoint: text, time: 1, by: try NoteSigner(skey: Self.skey)) }
    }

    // MARK: - The witness over HTTP

    /// A log of `leaves` synthetic entries: its root after each size.
    struct Log {
        let signer: NoteSigner
        let leaves: [[UInt8]]

        init(origin: String = "log.test/custody", count: Int = 40, salt: String = "") throws {
            signer = try NoteSigner.generate(name: origin, type: .ed25519)
            leaves = (0..<count).map { MerkleTree.leafHash(Array("entry \($0)\(salt)".utf8)) }
        }

        func hash(_ node: NodeID) -> SHA256Digest {
            let lo = Int(node.index) << node.level
            return SHA256Digest(bytes: MerkleTree.root(leafHashes: leaves[lo..<(lo + (1 << node.level))]))!
        }

        func root(_ size: UInt64) -> SHA256Digest {
            SHA256Digest(bytes: MerkleTree.root(leafHashes: leaves[0..<Int(size)]))!
        }

        func checkpoint(_ size: UInt64, signer: NoteSigner? = nil) throws -> [UInt8] {
            let text = Array("\(self.signer.name)\n\(size)\n\(Data(root(size).bytes).base64EncodedString())\n".utf8)
            return SignedNote(text: text, signatures: [try (signer ?? self.signer).sign(text)]).bytes
        }

        func proof(_ from: UInt64, _ to: UInt64) throws -> [SHA256Digest] {
            try MerkleProof.consistencyPlan(from: from, to: to).build(hash)
        }

        func request(_ from: UInt64, _ to: UInt64) throws -> ByteBuffer {
            ByteBuffer(bytes: AddCheckpointRequest(oldSize: from, proof: try proof(from, to), checkpoint: try checkpoint(to)).body)
        }
    }

    static func witness(_ log: Log, state: String) throws -> (WitnessServer, NoteSigner) {
        let key = try NoteSigner.generate(name: "witness.test/w1", type: .cosignatureV1)
        return (try WitnessServer(settings: .init(signer: key, logs: [log.signer.verifier], stateDirectory: state), logger: Logger(label: "witness")), key)
    }

    @Test func theWitnessAnswersEveryCaseOfTheProtocol() async throws {
        let log = try Log()
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("witness-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let (server, key) = try Self.witness(log, state: state)
        try await Application(router: server.router()).test(.router) { http in
            func post(_ body: ByteBuffer) async throws -> TestResponse {
                try await http.execute(uri: "/add-checkpoint", method: .post, body: body)
            }
            // First sight: old size 0, no proof → cosigned.
            var r = try await post(try log.request(0, 10))
            #expect(r.status == .ok)
            let cosigned = try SignedNote(parsing: try log.checkpoint(10) + Array(r.body.readableBytesView))
            let lines = try cosigned.verified(by: key.verifier)
            #expect(lines.count == 1)
            let time = try #require(lines.first.flatMap(TlogCosignature.time(of:)))
            #expect(abs(Double(time) - Date().timeIntervalSince1970) < 60)
            // Then with a consistency proof from 10.
            #expect(try await post(try log.request(10, 25)).status == .ok)
            // A stale old size: 409, with the witness's size as text/x.tlog.size.
            r = try await post(try log.request(10, 30))
            #expect(r.status == .conflict)
            #expect(String(buffer: r.body) == "25\n" && r.headers[.contentType] == "text/x.tlog.size")
            // A bad proof: 422; the size stays.
            var proof = try log.proof(25, 30)
            proof[0] = SHA256Digest(bytes: log.leaves[0])!
            r = try await post(ByteBuffer(bytes: AddCheckpointRequest(oldSize: 25, proof: proof, checkpoint: try log.checkpoint(30)).body))
            #expect(r.status == .unprocessableContent)
            // Signed by another key under the log's name: 403.
            let impostor = try NoteSigner.generate(name: log.signer.name, type: .ed25519)
            r = try await post(ByteBuffer(bytes: AddCheckpointRequest(oldSize: 25, proof: try log.proof(25, 30), checkpoint: try log.checkpoint(30, signer: impostor)).body))
            #expect(r.status == .forbidden)
            // Another log: 404.
            let other = try Log(origin: "other.test/log")
            #expect(try await post(try other.request(0, 5)).status == .notFound)
            // Old size above the checkpoint's: 400; malformed: 400.
            r = try await post(ByteBuffer(bytes: AddCheckpointRequest(oldSize: 31, proof: [], checkpoint: try log.checkpoint(30)).body))
            #expect(r.status == .badRequest)
            #expect(try await post(ByteBuffer(string: "old 25\n\nnot a note")).status == .badRequest)
            // The same size with another root: 409.
            let forked = try Log(count: 40, salt: "fork")  // other leaves, signed by the real key below
            let text = Array("\(log.signer.name)\n25\n\(Data(forked.root(7).bytes).base64EncodedString())\n".utf8)
            let fork = SignedNote(text: text, signatures: [try log.signer.sign(text)]).bytes
            r = try await post(ByteBuffer(bytes: AddCheckpointRequest(oldSize: 25, proof: [], checkpoint: fork).body))
            #expect(r.status == .conflict && String(buffer: r.body) == "25\n")
            // A known key's bad signature beside a good one rejects the note: 403.
            let good = try log.checkpoint(25)
            var bad = try SignedNote(parsing: good)
            var broken = bad.signatures[0]
            broken.signature[3] ^= 1
            bad.signatures.append(broken)
            r = try await post(ByteBuffer(bytes: AddCheckpointRequest(oldSize: 25, proof: [], checkpoint: bad.bytes).body))
            #expect(r.status == .forbidden)
            // The same size and root again: cosigned again.
            #expect(try await post(try log.request(25, 25)).status == .ok)
            #expect(try await post(try log.request(25, 40)).status == .ok)
        }
        // The record survives a restart: a new server on the same directory answers 409 at 40.
        let (again, _) = try Self.witness(log, state: state)
        #expect(await again.record(origin: log.signer.name)?.size == 40)
        try await Application(router: again.router()).test(.router) { http in
            let r = try await http.execute(uri: "/add-checkpoint", method: .post, body: try log.request(0, 10))
            #expect(r.status == .conflict && String(buffer: r.body) == "40\n")
        }
    }

    /// Concurrent pushes never roll a log back: whatever order they land in, the stored size
    /// only grows, and every 200 is for a size at least the one stored before it.
    @Test func concurrentPushesNeverRollTheSizeBack() async throws {
        let log = try Log(count: 64)
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("witness-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: state) }
        let (server, _) = try Self.witness(log, state: state)
        try await Application(router: server.router()).test(.router) { http in
            #expect(try await http.execute(uri: "/add-checkpoint", method: .post, body: try log.request(0, 8)).status == .ok)
            let results = try await withThrowingTaskGroup(of: (UInt64, HTTPResponse.Status).self) { group in
                for to in UInt64(9)...64 {
                    group.addTask { (to, try await http.execute(uri: "/add-checkpoint", method: .post, body: try log.request(8, to)).status) }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            // Exactly one push from 8 wins; all others are stale.
            #expect(results.filter { $0.1 == .ok }.count == 1)
            #expect(results.filter { $0.1 == .conflict }.count == 55)
            let won = try #require(results.first { $0.1 == .ok }).0
            #expect(await server.record(origin: log.signer.name)?.size == won)
        }
    }
}
