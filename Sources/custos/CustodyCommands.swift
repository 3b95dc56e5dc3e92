import ArgumentParser
import CustosCanonicalJSON
import Crypto
import CustosClient
import CustosCustody
import CustosMerkle
import CustosModel
import CustosPKI
import CustosWitness
import Foundation
import Hummingbird
import Logging

/// Trust anchors for checking the custody log offline: custody-ca.pem and tsa-ca.pem in a folder.
struct CustodyTrust: ParsableArguments {
    @Option(help: "Folder with custody-ca.pem (the custody log's CA) and tsa-ca.pem (the time-stamping authority's CA).")
    var trust: String

    func load() throws -> (log: String, tsa: String) {
        guard let log = try? String(contentsOfFile: trust + "/custody-ca.pem", encoding: .utf8) else { throw ValidationError("cannot read \(trust)/custody-ca.pem") }
        guard let tsa = try? String(contentsOfFile: trust + "/tsa-ca.pem", encoding: .utf8) else { throw ValidationError("cannot read \(trust)/tsa-ca.pem") }
        return (log, tsa)
    }
}

func digest(_ b64: String) throws -> SHA256Digest {
    guard let d = Data(base64Encoded: b64).flatMap({ SHA256Digest(bytes: $0) }) else { throw ValidationError("the broker sent a hash that is not base64 SHA-256") }
    return d
}

/// Checks a served checkpoint offline; throws with every failure.
func verifyCheckpoint(_ c: API.CheckpointView, trust: (log: String, tsa: String)) throws -> (Checkpoint, CheckpointVerifier.Result) {
    let r = CheckpointVerifier.verify(text: Array(c.text.utf8), signature: Array(Data(base64Encoded: c.signature) ?? Data()),
                                      timeStamp: Array(Data(base64Encoded: c.timeStamp) ?? Data()), logTrust: trust.log, tsaTrust: trust.tsa)
    guard let cp = r.checkpoint, r.failures.isEmpty else {
        throw CustodyFailure(description: "checkpoint \(c.size) does NOT verify:\n" + r.failures.map { "  - \($0.code.rawValue): \($0.detail)" }.joined(separator: "\n"))
    }
    guard cp.size == c.size, try digest(c.root) == cp.root else { throw CustodyFailure(description: "the checkpoint's fields differ from its signed text") }
    return (cp, r)
}

struct CustodyFailure: Error, CustomStringConvertible { var description: String }

struct Custody: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The custody log: checkpoints, events, and proofs checked here, offline, against your own trust anchors.",
        subcommands: [Show.self, Events.self, Prove.self, Consistency.self])

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "checkpoint", abstract: "Show the newest checkpoint (or the one of --size), with its co-signatures; with --trust, check it.")
        @OptionGroup var connection: Connection
        @Option(help: "A checkpoint's tree size.") var size: UInt64?
        @Option(help: "Folder with custody-ca.pem and tsa-ca.pem: check the signature and time-stamp.") var trust: String?
        @Option(help: "A verifier key (vkey) to check the C2SP note with: the log's (custos-broker note-key show) or a witness's; repeatable.")
        var vkey: [String] = []
        func run() async throws {
            let client = try connection.client
            let c = if let size { try await client.checkpoint(size: size) } else { try await client.latestCheckpoint() }
            var verdict = ""
            if let trust {
                let (_, r) = try verifyCheckpoint(c, trust: try CustodyTrust.parse(["--trust", trust]).load())
                verdict = "\n  signature VALID (\(r.signer ?? "?")), time-stamped \(r.genTime.map(Timestamp.format) ?? "?")"
            }
            var noteLines = ""
            if let text = c.note {
                let note: SignedNote
                do { note = try SignedNote(parsing: Array(text.utf8)) } catch { throw CustodyFailure(description: "the checkpoint's signed note is malformed: \(error)") }
                guard note.text == Array(c.text.utf8) else { throw CustodyFailure(description: "the signed note's text differs from the checkpoint's") }
                let keys = try vkey.map { v in
                    do { return try NoteVerifierKey(vkey: v) } catch { throw ValidationError("--vkey \(v): \(error)") }
                }
                var checked: [NoteSignature] = []
                for key in keys {
                    do { checked += try note.verified(by: key) } catch { throw CustodyFailure(description: "C2SP note: \(error)") }
                }
                for s in note.signatures {
                    let state = checked.contains(s) ? "VALID" : "not checked"
                    if let t = TlogCosignature.time(of: s), s.name != c.origin {
                        noteLines += "\n  C2SP cosignature by \(s.name) at \(Timestamp.format(Date(timeIntervalSince1970: TimeInterval(t)))) (\(state))"
                    } else {
                        noteLines += "\n  C2SP note signed by \(s.name) (\(state))"
                    }
                }
            }
            try connection.emit(c) {
                "checkpoint \(c.origin) #\(c.size) at \(c.time)\n  root \(c.root)" + verdict
                    + c.cosignatures.map { "\n  co-signed by \($0.witness) at \($0.at)" }.joined() + noteLines
            }
        }
    }

    struct Events: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a package's custody events (and its request's), in log order.")
        @OptionGroup var connection: Connection
        @Option(help: "Package id.") var package: String
        func run() async throws {
            let list = try await connection.client.packageCustody(try parseID(package))
            try connection.emit(list) {
                list.events.map { e in
                    guard let ev = try? CustodyEvent.decode(entry: Array(e.entry.utf8)) else { return "\(e.index)  (unreadable entry)" }
                    let client = ev.actor.address.map { " from \($0)" } ?? ""
                    return "\(e.index)  \(ev.at)  \(ev.kind)  \(ev.actor.type.rawValue) \(ev.actor.id)\(client)"
                        + (ev.subject.chunk.map { "  chunk \($0)" } ?? "")
                }.joined(separator: "\n")
            }
        }
    }

    struct Prove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch an event's inclusion proof and check it here: entry → leaf hash → audit path → the signed, time-stamped checkpoint.",
            discussion: "Exit status 0 when proven, 1 when anything does not verify.")
        @OptionGroup var connection: Connection
        @OptionGroup var trust: CustodyTrust
        @Argument(help: "The event's index in the log.") var index: UInt64
        @Option(help: "Prove into the checkpoint of this size (default: the first that includes the event).") var size: UInt64?
        func run() async throws {
            let anchors = try trust.load()
            let p = try await connection.client.inclusionProof(index, size: size)
            do {
                let (cp, r) = try verifyCheckpoint(p.checkpoint, trust: anchors)
                let entry = Array(p.entry.utf8)
                let event = try CustodyEvent.decode(entry: entry)
                try MerkleProof.verifyInclusion(leafHash: CustodyEvent.leafHash(entry: entry), index: p.index, size: cp.size,
                                                proof: try p.proof.map(digest), root: cp.root)
                try connection.emit(p) {
                    "PROVEN: event \(p.index) (\(event.kind) by \(event.actor.type.rawValue) \(event.actor.id) at \(event.at))\n"
                        + "  is in checkpoint \(cp.origin) #\(cp.size), root \(p.checkpoint.root),\n"
                        + "  signed by \"\(r.signer ?? "?")\", time-stamped \(r.genTime.map(Timestamp.format) ?? "?")"
                }
            } catch {
                print("NOT PROVEN: event \(index): \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Consistency: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check here that the checkpoint of size FROM is a prefix of the checkpoint of size TO: the log was only appended to.",
            discussion: "Exit status 0 when consistent, 1 when anything does not verify.")
        @OptionGroup var connection: Connection
        @OptionGroup var trust: CustodyTrust
        @Argument(help: "The older checkpoint's size.") var from: UInt64
        @Argument(help: "The newer checkpoint's size.") var to: UInt64
        func run() async throws {
            let anchors = try trust.load()
            let client = try connection.client
            let (old, new) = (try await client.checkpoint(size: from), try await client.checkpoint(size: to))
            let proof = try await client.consistencyProof(from: from, to: to)
            do {
                let (a, _) = try verifyCheckpoint(old, trust: anchors)
                let (b, _) = try verifyCheckpoint(new, trust: anchors)
                try MerkleProof.verifyConsistency(oldSize: a.size, newSize: b.size, oldRoot: a.root, newRoot: b.root, proof: try proof.proof.map(digest))
                try connection.emit(proof) { "CONSISTENT: checkpoint #\(from) is a prefix of checkpoint #\(to) (\(proof.proof.count) hashes)" }
            } catch {
                print("NOT CONSISTENT: \(error)")
                throw ExitCode(1)
            }
        }
    }
}

struct Witness: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "For an outside witness: co-sign the log's checkpoints, pulled from the broker (cosign) or pushed to a C2SP witness (serve).",
        subcommands: [Cosign.self, Serve.self, KeyGenerate.self])

    struct KeyGenerate: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "keygen",
            abstract: "Write a new C2SP cosigning key (Ed25519, tlog-cosignature type 0x04), mode 0600, and print its vkey for the log's custody.witnesses.")
        @Option(help: "The witness's name, a schema-less URL such as witness.example/w1.") var name: String
        @Option(help: "Where to write the private key.") var out: String
        func run() throws {
            let signer = try NoteSigner.generate(name: name, type: .cosignatureV1)
            do { try signer.writeNewKeyFile(out) } catch let e as NoteError { throw ValidationError(e.description) }
            print(signer.verifier.vkey)
        }
    }

    struct Serve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a C2SP transparency-log witness (c2sp.org/tlog-witness): POST <prefix>/add-checkpoint.",
            discussion: """
                It checks each checkpoint's note signature against the log's key (--log, the vkey custos-broker note-key show \
                prints), its consistency with the last checkpoint it cosigned for that log, stores the new size atomically in \
                --state, and answers with a tlog-cosignature line. Refusals: 400 malformed, 403 no valid log signature, \
                404 unknown log, 409 stale old size (body: its size), 422 bad consistency proof. Prints \
                "custos witness listening on URL" once ready; stops on SIGINT or SIGTERM.
                """)
        @Option(help: "The cosigning key file (custos witness keygen).") var key: String
        @Option(help: "A log's verifier key (vkey); repeat for several logs.") var log: [String]
        @Option(help: "Directory for the latest cosigned checkpoint of each log.") var state: String
        @Option(help: "Address to listen on.") var host = "127.0.0.1"
        @Option(help: "Port to listen on (0: any free port).") var port = 7380
        @Option(help: "Submission prefix, e.g. /witness (default: none).") var prefix = ""

        func run() async throws {
            let signer: NoteSigner
            let logs: [NoteVerifierKey]
            do {
                signer = try NoteSigner(skey: try String(contentsOfFile: key, encoding: .utf8))
                logs = try log.map { try NoteVerifierKey(vkey: $0) }
            } catch let e as NoteError { throw ValidationError(e.description) }
            guard !logs.isEmpty else { throw ValidationError("give at least one --log") }
            guard prefix.isEmpty || (prefix.hasPrefix("/") && !prefix.hasSuffix("/")) else { throw ValidationError("--prefix starts with / and does not end with one") }
            LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
            let logger = Logger(label: "custos-witness")
            let server = try WitnessServer(settings: .init(signer: signer, logs: logs, stateDirectory: state, prefix: prefix), logger: logger)
            let app = Application(
                router: server.router(),
                configuration: .init(address: .hostname(host, port: port), serverName: "custos-witness"),
                onServerRunning: { channel in
                    print("custos witness listening on http://\(host):\(channel.localAddress?.port ?? port)\(prefix)")
                    fflush(nil)
                },
                logger: logger)
            try await app.runService()
        }
    }

    struct Cosign: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Fetch the newest checkpoint, check its signature and time-stamp, check it is consistent with the last one co-signed, then co-sign it.",
            discussion: """
                The state file keeps the last checkpoint co-signed (JSON; give it to custos-broker audit --checkpoint to hold the \
                log to it). A checkpoint that is not a consistent extension of it is refused and NOT co-signed: the log was rewritten. \
                Exit status 0 co-signed (or nothing new), 1 refused.
                """)
        @OptionGroup var connection: Connection
        @OptionGroup var trust: CustodyTrust
        @Option(help: "The witness's private key, PEM.") var key: String
        @Option(help: "The witness's certificate, PEM (the one registered with custos-broker witnesses add).") var certificate: String
        @Option(help: "State file: the last checkpoint co-signed.") var state: String

        func run() async throws {
            let anchors = try trust.load()
            let keyPEM = try String(contentsOfFile: key, encoding: .utf8)
            let certPEM = try String(contentsOfFile: certificate, encoding: .utf8)
            let client = try connection.client
            let latest = try await client.latestCheckpoint()
            let previous = FileManager.default.contents(atPath: state).flatMap { try? JSONDecoder().decode(API.CheckpointView.self, from: $0) }
            do {
                let (new, _) = try verifyCheckpoint(latest, trust: anchors)
                if let previous {
                    let (old, _) = try verifyCheckpoint(previous, trust: anchors)
                    guard old.origin == new.origin else { throw CustodyFailure(description: "the log's name changed from \(old.origin) to \(new.origin)") }
                    guard new.size >= old.size else {
                        throw CustodyFailure(description: "the newest checkpoint (#\(new.size)) is smaller than the one co-signed before (#\(old.size)): the log was truncated")
                    }
                    if new.size == old.size && new.root == old.root {
                        print("nothing new: checkpoint #\(new.size) was co-signed already")
                        return
                    }
                    let proof = try await client.consistencyProof(from: old.size, to: new.size)
                    try MerkleProof.verifyConsistency(oldSize: old.size, newSize: new.size, oldRoot: old.root, newRoot: new.root, proof: try proof.proof.map(digest))
                }
                let signature = try new.sign(certificate: certPEM, key: keyPEM)
                let stored = try await client.cosign(size: new.size, signature: signature)
                try Data((CanonicalJSON.pretty(try CanonicalJSON.tree(stored)) + "\n").utf8).write(to: URL(fileURLWithPath: state + ".tmp"))
                guard rename(state + ".tmp", state) == 0 else { throw ValidationError("cannot write the state file \(state)") }
                try connection.emit(stored) {
                    "co-signed checkpoint \(new.origin) #\(new.size)" + (previous.map { ", consistent with #\($0.size)" } ?? " (first one seen)")
                }
            } catch let failure as CustodyFailure {
                print("REFUSED: \(failure)")
                throw ExitCode(1)
            } catch let error as ProofError {
                print("REFUSED: the log is not consistent with the checkpoint co-signed before: \(error)")
                throw ExitCode(1)
            }
        }
    }
}
