import ArgumentParser
import CustosCanonicalJSON
import CustosClient
import CustosCustody
import CustosEvidence
import CustosPKI
import CustosModel
import Foundation

@main
struct Custos: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "custos",
        abstract: "Custos command line for investigators, approvers, auditors and witnesses.",
        discussion: "The broker's address comes from --url or CUSTOS_URL; your bearer token from --token or CUSTOS_TOKEN, or, with mutual TLS, your client certificate from --client-certificate and --client-key (CUSTOS_CLIENT_CERTIFICATE, CUSTOS_CLIENT_KEY).",
        subcommands: [WhoAmI.self, Case.self, Request.self, Package.self, Download.self, Export.self, Verify.self, Custody.self, Witness.self])
}

struct Connection: ParsableArguments {
    @Option(help: "Broker URL (default: CUSTOS_URL, else http://127.0.0.1:8080).") var url: String?
    @Option(help: "Bearer token (default: CUSTOS_TOKEN). Not needed with a registered client certificate.") var token: String?
    @Option(help: "CA certificates (PEM) the broker's HTTPS certificate chains to, when not a public one (default: CUSTOS_CA_FILE).")
    var caFile: String?
    @Option(help: "Your TLS client certificate, PEM, for mutual TLS (default: CUSTOS_CLIENT_CERTIFICATE).") var clientCertificate: String?
    @Option(help: "Its private key, PEM (default: CUSTOS_CLIENT_KEY).") var clientKey: String?
    @Flag(help: "Print JSON instead of text.") var json = false

    var client: CustosClient {
        get throws {
            let env = ProcessInfo.processInfo.environment
            let url = url ?? env["CUSTOS_URL"] ?? "http://127.0.0.1:8080", token = token ?? env["CUSTOS_TOKEN"]
            let ca = caFile ?? env["CUSTOS_CA_FILE"], certificate = clientCertificate ?? env["CUSTOS_CLIENT_CERTIFICATE"]
            let key = clientKey ?? env["CUSTOS_CLIENT_KEY"]
            guard ca != nil || certificate != nil || key != nil else { return CustosClient(baseURL: url, token: token) }
            return CustosClient(baseURL: url, token: token, http: try CustosClient.httpClient(caFile: ca, certificateFile: certificate, keyFile: key))
        }
    }

    func emit<T: Encodable>(_ value: T, text: () -> String) throws {
        if json {
            print(CanonicalJSON.pretty(try CanonicalJSON.tree(value)))
        } else {
            print(text())
        }
    }
}

func parseID(_ text: String) throws -> UUID {
    guard let id = UUID(uuidString: text) else { throw ValidationError("'\(text)' is not an id (UUID)") }
    return id
}

struct WhoAmI: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "whoami", abstract: "Show the user the token belongs to.")
    @OptionGroup var connection: Connection
    func run() async throws {
        let me = try await connection.client.me()
        try connection.emit(me) { "\(me.name) (\(me.role.rawValue))" }
    }
}

struct Case: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cases.", subcommands: [Create.self])
    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Open a case; prints its id.")
        @OptionGroup var connection: Connection
        @Option(help: "Case title.") var title: String
        func run() async throws {
            let c = try await connection.client.createCase(title: title)
            try connection.emit(c) { c.id.lowercased }
        }
    }
}

struct Request: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Requests for evidence.", subcommands: [Create.self, Submit.self, Approve.self, Reject.self, Withdraw.self, Review.self, Answer.self, Extend.self, Release.self, Status.self, Timeline.self])

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Draft a request (and submit it with --submit); prints its id.")
        @OptionGroup var connection: Connection
        @Option(name: .customLong("case"), help: "Case id.") var caseId: String
        @Option(help: "Provider id (repeat for several: one part per provider, each tracked on its own, decided on as one).") var provider: [String]
        @Option(help: "Number of the decision that authorises the request.") var decisionNumber: String
        @Option(help: "Authority that issued the decision.") var authority: String
        @Option(help: "Date of the decision, YYYY-MM-DD.") var issuedOn: String
        @Option(help: ArgumentHelp("The decision itself: a .pdf, .png, .jpg or .tif file (required to submit).",
                                   discussion: "It is uploaded to the broker, and its SHA-256 is bound into the request as approved."))
        var decisionFile: String?
        @Option(help: ArgumentHelp(
            "Target as TYPE:VALUE[,port=N][,at=TIME][,platform=ID], e.g. msisdn:+84912345678 (repeat for several). Types: \(TargetType.allCases.map(\.rawValue).joined(separator: ", ")).",
            discussion: "An ipv4/ipv6 target behind CGNAT takes port= and at= (RFC 3339 UTC); an account takes platform=."))
        var target: [String]
        @Option(help: "Data category (repeat for several): \(DataCategory.allCases.map(\.rawValue).joined(separator: ", ")).") var category: [String]
        @Option(help: "Start of the time window, RFC 3339 UTC (…Z).") var from: String
        @Option(help: "End of the time window, RFC 3339 UTC (…Z).") var to: String
        @Option(help: "Notes for the approver and the provider.") var notes: String?
        @Option(help: "Make it an emergency (the fast track), on this ground: \(EmergencyGrounds.Ground.allCases.map(\.rawValue).joined(separator: ", ")).")
        var emergency: String?
        @Option(help: "With --emergency: the facts that make it one (\(EmergencyGrounds.statementLength.lowerBound) to \(EmergencyGrounds.statementLength.upperBound) characters).")
        var statement: String?
        @Flag(help: "A preservation order: the provider freezes the data for 60 days (extendable once by 30) and delivers nothing.")
        var preservation = false
        @Flag(help: "Submit for approval right away.") var submit = false

        func run() async throws {
            let targets = try target.map(Request.parseTarget)
            let categories = try category.map { c -> DataCategory in
                guard let d = DataCategory(rawValue: c) else {
                    throw ValidationError("--category must be one of \(DataCategory.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                return d
            }
            let grounds = try emergency.map { g -> EmergencyGrounds in
                guard let ground = EmergencyGrounds.Ground(rawValue: g) else {
                    throw ValidationError("--emergency must be one of \(EmergencyGrounds.Ground.allCases.map(\.rawValue).joined(separator: ", "))")
                }
                guard let statement else { throw ValidationError("--emergency needs --statement: the facts that make it an emergency") }
                return EmergencyGrounds(ground: ground, statement: statement)
            }
            var document: LegalDocument?
            if let decisionFile {
                guard let type = LegalDocument.mediaType(forFileName: decisionFile) else {
                    throw ValidationError("--decision-file must end in .pdf, .png, .jpg, .jpeg, .tif or .tiff")
                }
                guard let bytes = FileManager.default.contents(atPath: decisionFile) else { throw ValidationError("cannot read \(decisionFile)") }
                document = try await connection.client.uploadDocument(Array(bytes), mediaType: type).document
            }
            guard let first = provider.first else { throw ValidationError("--provider is required") }
            var spec = RequestSpec(caseId: try parseID(caseId), providerId: first,
                                   legalBasis: LegalBasis(decisionNumber: decisionNumber, issuingAuthority: authority, issuedOn: issuedOn, document: document),
                                   targets: targets, categories: categories, window: TimeWindow(from: from, to: to),
                                   priority: grounds == nil ? .normal : .emergency, emergency: grounds, notes: notes,
                                   kind: preservation ? .preservation : nil)
            if provider.count > 1 { spec.providerIds = provider }
            var view = try await connection.client.createRequest(spec)
            if submit { view = try await connection.client.submit(view.id) }
            try connection.emit(view) { view.id.lowercased }
        }
    }

    /// `TYPE:VALUE[,port=N][,at=TIME][,platform=ID]`.
    static func parseTarget(_ t: String) throws -> Target {
        guard let colon = t.firstIndex(of: ":"), let type = TargetType(rawValue: String(t[..<colon])) else {
            throw ValidationError("--target must be TYPE:VALUE with TYPE one of \(TargetType.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        var parts = t[t.index(after: colon)...].split(separator: ",", omittingEmptySubsequences: false)
        var target = Target(type: type, value: String(parts.removeFirst()))
        for part in parts {
            let kv = part.split(separator: "=", maxSplits: 1).map(String.init)
            switch (kv.first, kv.count) {
            case ("port", 2):
                guard let n = Int(kv[1]) else { throw ValidationError("--target: port= must be a number") }
                target.port = n
            case ("at", 2): target.at = kv[1]
            case ("platform", 2): target.platform = kv[1]
            default: throw ValidationError("--target: after the value come only port=N, at=TIME or platform=ID, separated by commas")
            }
        }
        return target
    }

    struct Submit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Submit a draft for approval.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        func run() async throws {
            let v = try await connection.client.submit(try parseID(id))
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue)" }
        }
    }

    struct Approve: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Approve a submitted request (not your own); it is dispatched to the provider.",
            discussion: "Normal requests need the approver role; emergencies the duty-approver role, and go out on the urgent topic at once.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        func run() async throws {
            let v = try await connection.client.approve(try parseID(id))
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue)" }
        }
    }

    struct Reject: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Reject a submitted request.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        @Option(help: "Reason, for the record.") var reason: String?
        func run() async throws {
            let v = try await connection.client.reject(try parseID(id), reason: reason)
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue)" }
        }
    }

    struct Withdraw: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Withdraw your own request while it is a draft or awaiting approval.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        @Option(help: "Reason, for the record (kept in the timeline; the custody log keeps its hash).") var reason: String?
        func run() async throws {
            let v = try await connection.client.withdraw(try parseID(id), reason: reason)
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue)" }
        }
    }

    struct Review: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Confirm or revoke an emergency request after the fact (reviewers; not its submitter or approver).",
            discussion: "Revoking, or leaving the review clock to run out, seals the request's packages for good and tells the provider to stop.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        @Flag(help: "The decision.") var decision: API.Review.Decision
        @Option(help: "Why (required to revoke; kept in the timeline, the custody log keeps its hash).") var reason: String?
        func run() async throws {
            let v = try await connection.client.review(try parseID(id), decision: decision, reason: reason)
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue), emergency \(v.review?.state.rawValue ?? "-")" }
        }
    }

    struct Answer: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Answer a provider's question about a request (investigators of the request's agency).",
            discussion: "`custos request status` lists the questions and their ids. The answer is signed and sent to the provider; once no question is open, the provider's clocks run again, their deadlines moved by the time waited.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        @Option(help: "The question's id.") var question: String
        @Option(help: "The answer (1 to 4000 characters).") var answer: String
        func run() async throws {
            let v = try await connection.client.answer(try parseID(id), question: try parseID(question), answer: answer)
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue), \(v.clarifications.filter { $0.answer == nil }.count) question(s) open" }
        }
    }

    struct Extend: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Extend a running preservation order once, by 30 days (investigators of its agency); the provider is told the new end.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        func run() async throws {
            let v = try await connection.client.extendPreservation(try parseID(id))
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue), frozen until \(v.clocks.first { $0.clock == "preservation" }?.deadline ?? "-")" }
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Release a preservation order before its end (investigators of its agency); the provider is told it may let the data go.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        @Option(help: "Why (kept in the timeline; the custody log keeps its hash).") var reason: String?
        func run() async throws {
            let v = try await connection.client.releasePreservation(try parseID(id), reason: reason)
            try connection.emit(v) { "\(v.id.lowercased) \(v.state.rawValue)" }
        }
    }

    struct Timeline: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a request's timeline: every transition, decision and provider response.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        func run() async throws {
            let t = try await connection.client.timeline(try parseID(id))
            try connection.emit(t) {
                (["request \(t.requestId.lowercased): \(t.state.rawValue)"] + t.timeline.map(Status.line)).joined(separator: "\n")
            }
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a request's state, timeline and packages; --watch follows it live.")
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        @Flag(help: "Print each change until the request is verified (a preservation order: preserved), rejected, refused, withdrawn, expired, revoked or released.") var watch = false
        @Option(help: "With --watch: give up after this many seconds (exit status 3).") var timeout: Int = 3600

        func run() async throws {
            let requestId = try parseID(id)
            let client = try connection.client
            if !watch {
                let v = try await client.request(requestId)
                try connection.emit(v) { Self.render(v) }
                return
            }
            let deadline = ContinuousClock.now + .seconds(timeout)
            var shown = 0
            while true {
                let v = try await client.request(requestId)
                for e in v.timeline.dropFirst(shown) { print(Self.line(e)) }
                fflush(nil)
                shown = v.timeline.count
                if v.state == .verified || v.state == .preserved || RequestState.ended.contains(v.state) { return }
                if ContinuousClock.now > deadline { throw ExitCode(3) }
                try await Task.sleep(for: .milliseconds(500))
            }
        }

        static func line(_ e: API.TimelineEntry) -> String {
            "\(e.at)  \(e.state.count < 13 ? e.state.padding(toLength: 13, withPad: " ", startingAt: 0) : e.state) \(e.actor)\(e.note.map { "  — \($0)" } ?? "")"
        }

        static func render(_ v: API.RequestView) -> String {
            var lines = ["\(v.spec.isPreservation ? "preservation order" : "request") \(v.id.lowercased): \(v.state.rawValue)\(v.spec.priority == .emergency ? " (emergency: \(v.spec.emergency?.ground.rawValue ?? ""))" : "")",
                         "  provider \(v.spec.providerId), \(v.spec.targets.count) target(s), categories \(v.spec.categories.map(\.rawValue).joined(separator: ","))"]
            if let p = v.progress, v.state == .inProgress || v.state == .acknowledged {
                lines.append("  provider: \(p.phase) \(p.percent)% (\(p.at))")
            }
            if let parts = v.parts {
                lines.append("  parts: " + parts.map { "\($0.providerId) \($0.id.lowercased) \($0.state.rawValue)" }.joined(separator: "; "))
            }
            if let r = v.review {
                lines.append("  review: \(r.state.rawValue)\(r.dueAt.map { ", due \($0)" } ?? "")\(r.reviewedBy.map { " by \($0)" } ?? "")")
            }
            lines += v.clocks.map { c in
                let status = c.expiredAt != nil ? "expired" : c.stoppedAt != nil ? "stopped" : c.pausedAt != nil ? "paused (a question is open)" : c.escalatedAt != nil ? "escalated" : c.lateAt != nil ? "late" : "running"
                return "  clock \(c.clock): deadline \(c.deadline), \(status)"
            }
            lines += v.clarifications.map { q in
                "  question \(q.id.lowercased) (\(q.askedAt)): \(q.question)" + (q.answer.map { "\n    answer by \(q.answeredBy ?? "?"): \($0)" } ?? "\n    (not answered)")
            }
            lines += v.timeline.map { "  " + line($0) }
            lines += v.packages.map { p in
                guard let count = p.chunkCount, let size = p.contentSize, let root = p.chunksRoot else {
                    return "  package \(p.id.lowercased): \(p.state.rawValue), \(p.chunksReceived) chunks so far, manifest not yet received"
                }
                return "  package \(p.id.lowercased): \(p.state.rawValue), \(p.chunksReceived)/\(count) chunks, \(size) bytes, chunks root \(root)"
            }
            return lines.joined(separator: "\n")
        }
    }
}

struct Package: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Packages.", subcommands: [Show.self, Seal.self, Unseal.self])
    struct Seal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Seal a package (approvers and admins): it stays stored, but its content and bundle are refused until unsealed.")
        @OptionGroup var connection: Connection
        @Argument(help: "Package id.") var id: String
        @Option(help: "Why (kept in the timeline; the custody log keeps its hash).") var reason: String
        func run() async throws {
            let p = try await connection.client.setSealed(true, package: try parseID(id), reason: reason)
            try connection.emit(p) { "package \(p.id.lowercased) sealed" }
        }
    }
    struct Unseal: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Unseal a sealed package (approvers and admins).")
        @OptionGroup var connection: Connection
        @Argument(help: "Package id.") var id: String
        @Option(help: "Why (kept in the timeline; the custody log keeps its hash).") var reason: String
        func run() async throws {
            let p = try await connection.client.setSealed(false, package: try parseID(id), reason: reason)
            try connection.emit(p) { "package \(p.id.lowercased) unsealed" }
        }
    }
    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a package's manifest summary, verification and the four criteria (đúng, đủ, sạch, sống).")
        @OptionGroup var connection: Connection
        @Argument(help: "Package id.") var id: String
        func run() async throws {
            let p = try await connection.client.package(try parseID(id))
            try connection.emit(p) {
                var s = "package \(p.id.lowercased): \(p.state.rawValue)\n  request \(p.requestId.lowercased), provider \(p.providerId)\n"
                s += "  \(p.manifest.content.recordCount) records, \(p.manifest.content.size) bytes in \(p.manifest.chunks.count) chunks\n"
                s += "  chunks Merkle root \(p.manifest.chunksRoot)\n  manifest sha256 \(p.manifestSha256)"
                if let v = p.verification { s += "\n  verification: \(v.valid ? "valid" : "INVALID") at \(v.checkedAt)" + v.failures.map { "\n    - \($0)" }.joined() }
                if let c = p.criteria {
                    s += "\n  criteria: \(c.admissible ? "ADMISSIBLE" : "NOT ADMISSIBLE") (\(c.counts.records) records, \(c.counts.quarantined) quarantined)"
                    for criterion in Verdict.Criterion.allCases {
                        let reasons = c.reasons(criterion).map { "\($0.code) ×\($0.count)" }.joined(separator: ", ")
                        s += "\n    \(criterion.name) (\(criterion.rawValue)): \(c.status(criterion)?.rawValue ?? "-")\(reasons.isEmpty ? "" : " — " + reasons)"
                    }
                }
                return s
            }
        }
    }
}

struct Download: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Download a verified package, checking every chunk and the whole against its manifest as it arrives.",
        discussion: "Records outside the request (quarantined) or unreadable are shown to auditors only: anyone else gets a redacted copy, each withheld record replaced by a line with its leaf hash, checked against every result's signed records root.")
    @OptionGroup var connection: Connection
    @Argument(help: "Package id.") var id: String
    @Option(help: "Directory to write into.") var out: String = "."
    @Flag(help: "No progress on stderr.") var quiet = false

    func run() async throws {
        let quiet = self.quiet
        let d = try await connection.client.download(try parseID(id), into: out) { done, total in
            guard !quiet, total > 0 else { return }
            FileHandle.standardError.write(Data("\rdownloading \(done * 100 / total)% (\(done)/\(total) bytes)".utf8))
        }
        if !quiet { FileHandle.standardError.write(Data("\n".utf8)) }
        try connection.emit(["path": d.contentPath, "manifest": d.manifestPath, "sha256": d.sha256, "size": "\(d.size)",
                             "records": "\(d.recordCount)", "chunksRoot": d.chunksRoot, "redacted": "\(d.redacted)", "withheld": "\(d.withheld)"]) {
            guard d.redacted else {
                return "\(d.contentPath)\n  \(d.recordCount) records, \(d.size) bytes; every chunk and record matches the signed manifest\n  sha256 \(d.sha256)"
            }
            return "\(d.contentPath) (redacted)\n  \(d.recordCount - d.withheld) records shown, \(d.withheld) withheld (quarantined or unreadable; auditors only), "
                + "each stands in by its leaf hash;\n  every record matches its result's signed records root (chunk hashes cover the whole content, so they are not checked)\n  sha256 \(d.sha256)"
        }
    }
}

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a package's export bundle: one tar file with the records, the signed manifest, its time-stamp and a README for a court's expert.")
    @OptionGroup var connection: Connection
    @Argument(help: "Package id.") var id: String
    @Option(help: "The bundle file to write (default: custos-<id>.tar).") var out: String?
    @Flag(help: "No progress on stderr.") var quiet = false

    func run() async throws {
        let packageId = try parseID(id)
        let path = out ?? "custos-\(packageId.lowercased).tar"
        let quiet = self.quiet
        let size = try await connection.client.exportBundle(packageId, to: path) { done, total in
            guard !quiet, total > 0 else { return }
            FileHandle.standardError.write(Data("\rexporting \(done * 100 / total)%".utf8))
        }
        if !quiet { FileHandle.standardError.write(Data("\n".utf8)) }
        try connection.emit(["path": path, "size": "\(size)"]) { "\(path) (\(size) bytes); check it with: custos verify \(path) --trust DIR" }
    }
}

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check an export bundle offline: signature, time-stamp, request binding, every chunk and record, both Merkle roots, the chain of custody, the four criteria.",
        discussion: """
            Trust anchors come only from --trust, never from the bundle: a folder holding provider-ca.pem (the provider's \
            CA certificates), tsa-ca.pem (the time-stamping authority's CA certificates), custody-ca.pem (the CA of the \
            broker's custody log) and, optionally, witnesses.pem (the certificates of the outside witnesses you trust; \
            other co-signatures are shown as untrusted). Every custody event is checked against its inclusion proof and \
            the signed, time-stamped checkpoint. When the bundle carries the broker's verdict (criteria.json), the four \
            criteria — đúng, đủ, sạch, sống — are judged again from the content, in constant memory: the duplicate search \
            keeps its record digests (16 bytes a record) in temporary files under TMPDIR, removed afterwards. Every \
            failure is reported, not only the \
            first. Exit status: 0 valid, 1 invalid, 2 unusable input (unreadable file, not a bundle, missing trust \
            anchors), 3 inadmissible (authentic and intact, but the four criteria do not all pass).
            """)
    @Argument(help: "The bundle file (custos export writes one).") var bundle: String
    @Option(help: "Folder with provider-ca.pem, tsa-ca.pem, custody-ca.pem and optionally witnesses.pem.") var trust: String
    @Flag(help: "Print the report as JSON.") var json = false

    func run() throws {
        func unusable(_ why: String) throws -> Never {
            if json {
                let report = BundleReport(outcome: .unusable, format: EvidenceBundle.format, checks: [:], failures: [], unusable: why)
                try printJSON(report)
            } else {
                FileHandle.standardError.write(Data("custos verify: UNUSABLE: \(why)\n".utf8))
            }
            throw ExitCode(2)
        }
        guard let providerTrust = try? String(contentsOfFile: trust + "/provider-ca.pem", encoding: .utf8) else {
            try unusable("cannot read \(trust)/provider-ca.pem")
        }
        guard let tsaTrust = try? String(contentsOfFile: trust + "/tsa-ca.pem", encoding: .utf8) else {
            try unusable("cannot read \(trust)/tsa-ca.pem")
        }
        guard let custodyTrust = try? String(contentsOfFile: trust + "/custody-ca.pem", encoding: .utf8) else {
            try unusable("cannot read \(trust)/custody-ca.pem")
        }
        var witnesses: [CertificateInfo] = []
        if let pem = try? String(contentsOfFile: trust + "/witnesses.pem", encoding: .utf8) {
            do { witnesses = try CustodyVerifier.certificates(pem: pem) } catch { try unusable("\(trust)/witnesses.pem holds something other than certificates") }
        }
        guard let handle = FileHandle(forReadingAtPath: bundle) else { try unusable("cannot read \(bundle)") }
        var verifier = BundleVerifier(providerTrust: providerTrust, tsaTrust: tsaTrust, custodyTrust: custodyTrust, witnesses: witnesses)
        // 1 MiB reads: the judge's queue holds a few of them (peak RSS under 64 MiB).
        while let block = try handle.read(upToCount: 1 << 20), !block.isEmpty {
            block.withUnsafeBytes { verifier.consume($0) }
        }
        let report = verifier.finish()
        if json { try printJSON(report) } else { print(Self.render(report)) }
        switch report.outcome {
        case .valid: return
        case .invalid: throw ExitCode(1)
        case .unusable: throw ExitCode(2)
        case .inadmissible: throw ExitCode(3)
        }
    }

    func printJSON(_ report: BundleReport) throws {
        print(CanonicalJSON.pretty(try CanonicalJSON.tree(report)))
    }

    static func render(_ r: BundleReport) -> String {
        var lines = ["custos verify: \(r.outcome.rawValue.uppercased())"]
        if let u = r.unusable { lines.append("  \(u)"); return lines.joined(separator: "\n") }
        lines.append("  package     \(r.packageId ?? "?")")
        lines.append("  request     \(r.requestId ?? "?")")
        lines.append("  provider    \(r.providerId ?? "?")\(r.signer.map { ", signed by \"\($0)\"" } ?? "")")
        lines.append("  time-stamp  \(r.timeStampedAt ?? "not verified")   (extracted as of \(r.asOf ?? "?"))")
        lines.append("  content     \(r.recordCount ?? 0) records, \(r.contentSize ?? 0) bytes, \(r.chunkCount ?? 0) chunks")
        if let c = r.custody {
            lines.append("  custody     \(c.events.count) events proven in checkpoint \(c.origin) #\(c.checkpointSize) of \(c.checkpointTime)" +
                         "\(c.logSigner.map { ", signed by \"\($0)\"" } ?? ""), time-stamped \(c.timeStampedAt ?? "(not verified)")")
            lines += c.events.map { "    \($0)" }
            lines += c.witnesses.map {
                "  witness     \($0.name): co-signed checkpoint #\($0.checkpointSize)\($0.signer.map { " as \"\($0)\"" } ?? " (INVALID)")"
                    + ($0.trusted ? ", a trusted witness" : ", NOT in witnesses.pem")
            }
        }
        if let v = r.criteria {
            lines.append("  criteria    \(v.admissible ? "ADMISSIBLE" : "NOT ADMISSIBLE") (judged again here; delivered \(v.delivery.deliveredAt))")
            for criterion in Verdict.Criterion.allCases {
                let reasons = v.reasons(criterion).map { "\($0.code) ×\($0.count)" }.joined(separator: ", ")
                lines.append("    \(criterion.name) (\(criterion.rawValue)): \(v.status(criterion)?.rawValue ?? "-")\(reasons.isEmpty ? "" : " — " + reasons)")
            }
        }
        for (name, passed) in r.checks.sorted(by: { $0.key < $1.key }) { lines.append("  [\(passed ? "ok" : "FAILED")] \(name)") }
        if !r.failures.isEmpty {
            lines.append("  failures:")
            lines += r.failures.map { "    - \($0)" }
        }
        return lines.joined(separator: "\n")
    }
}

extension API.Review.Decision: EnumerableFlag {}
