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
        subcommands: [WhoAmI.self, Inbox.self, Notifications.self, Case.self, Request.self, Package.self, Download.self, Export.self, Verify.self, Custody.self, Witness.self])
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

/// Columns padded to their widest cell, two spaces apart; the last column is not padded.
func table(_ header: [String], _ rows: [[String]]) -> String {
    let all = [header] + rows
    let widths = (0..<header.count).map { c in all.map { $0[c].count }.max() ?? 0 }
    return all.map { row in
        row.enumerated().map { c, cell in c == row.count - 1 ? cell : cell.padding(toLength: widths[c], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }.joined(separator: "\n")
}

/// Query parameters, percent-encoded.
func queryString(_ items: [(String, String?)]) -> String {
    var allowed = CharacterSet.alphanumerics
    allowed.insert(charactersIn: "-._~")
    return items.compactMap { name, value in
        value.map { "\(name)=\($0.addingPercentEncoding(withAllowedCharacters: allowed) ?? $0)" }
    }.joined(separator: "&")
}

/// A page from `cursor` on and, with `all`, every page after it: their items, and the
/// cursor after the last page fetched.
func pages<Item>(all: Bool, from cursor: String?, _ fetch: (String?) async throws -> API.Page<Item>) async throws -> API.Page<Item> {
    var page = try await fetch(cursor)
    var items = page.items
    while all, let next = page.next {
        page = try await fetch(next)
        items += page.items
    }
    return API.Page(items: items, next: page.next)
}

struct Notifications: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "What you are told by e-mail.",
        discussion: "Events reach you when your role or your cases concern them: request.submitted (approvers), emergency.submitted (duty approvers), review.due (reviewers), question.asked, package.delivered, clock.late, clock.escalated, clock.expired (the case's investigators). E-mails carry ids, states, deadlines and a link, never targets or free text.",
        subcommands: [Show.self, Set.self], defaultSubcommand: Show.self)
    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show your e-mail address and the events you get.")
        @OptionGroup var connection: Connection
        func run() async throws {
            let n = try await connection.client.notificationSettings()
            try connection.emit(n) { "e-mail: \(n.email ?? "(none: no e-mail is sent)")\nevents: \(n.events.joined(separator: ", "))" }
        }
    }
    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Choose your e-mail address and the events you get.")
        @OptionGroup var connection: Connection
        @Option(help: "Your e-mail address.") var email: String?
        @Flag(help: "Stop e-mail altogether.") var noEmail = false
        @Option(name: .customLong("event"), help: "An event to get (repeat for several; the others stop).") var events: [String] = []
        @Flag(help: "Get every event.") var allEvents = false
        func validate() throws {
            if email != nil && noEmail { throw ValidationError("--email and --no-email exclude each other") }
            if !events.isEmpty && allEvents { throw ValidationError("--event and --all-events exclude each other") }
        }
        func run() async throws {
            let client = try connection.client
            var change = API.SetNotifications()
            if let email { change.email = .some(email) }
            if noEmail { change.email = .some(nil) }
            if !events.isEmpty { change.events = events }
            if allEvents { change.events = try await client.notificationSettings().available }
            let n = try await client.setNotifications(change)
            try connection.emit(n) { "e-mail: \(n.email ?? "(none)")\nevents: \(n.events.joined(separator: ", "))" }
        }
    }
}

struct Inbox: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "What waits for you, nearest deadline first.",
        discussion: "An approver sees submitted requests to approve, a duty approver submitted emergencies, a reviewer emergencies awaiting review, an investigator provider questions to answer and packages nobody has opened yet in their cases.")
    @OptionGroup var connection: Connection
    func run() async throws {
        let inbox = try await connection.client.inbox()
        try connection.emit(inbox) {
            guard !inbox.items.isEmpty else { return "nothing waits for you" }
            return table(["TASK", "PRIORITY", "DEADLINE", "SINCE", "REQUEST", "STATE", "QUESTION/PACKAGE"], inbox.items.map { i in
                [i.task.rawValue, i.priority.rawValue, i.deadline ?? "-", i.since, i.requestId.lowercased, i.state.rawValue,
                 (i.questionId ?? i.packageId)?.lowercased ?? "-"]
            })
        }
    }
}

struct Case: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Cases.", subcommands: [Create.self, List.self, Show.self, Share.self])
    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List your agency's cases, newest first.")
        @OptionGroup var connection: Connection
        @Flag(help: "Only the cases you are a member of.") var mine = false
        @Option(help: "Cases per page, 1 to 200.") var limit: Int = 50
        @Option(help: "Start from this page cursor (a page's `next`).") var cursor: String?
        @Flag(help: "Follow the cursor to the last page.") var all = false
        func run() async throws {
            let client = try connection.client
            let shown = try await pages(all: all, from: cursor) {
                try await client.listCases(query: queryString([("mine", mine ? "true" : nil), ("limit", "\(limit)"), ("cursor", $0)]))
            }
            try connection.emit(shown) {
                table(["CASE", "CREATED", "BY", "REQUESTS", "OPEN", "TITLE"], shown.items.map { c in
                    [c.id.lowercased, c.createdAt, c.createdBy, "\(c.requests)", "\(c.open)", c.title]
                }) + (shown.next.map { "\nmore: --cursor \($0)" } ?? "")
            }
        }
    }
    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show a case: its members and request counts.")
        @OptionGroup var connection: Connection
        @Argument(help: "Case id.") var id: String
        func run() async throws {
            let c = try await connection.client.caseSummary(try parseID(id))
            try connection.emit(c) {
                "case \(c.id.lowercased): \(c.title)\n  created \(c.createdAt) by \(c.createdBy)\n  members: \(c.members.joined(separator: ", "))\n  requests: \(c.requests) (\(c.open) open)"
            }
        }
    }
    struct Share: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Share a case with a colleague of your agency (an investigator).",
            discussion: "They then see and act on its requests as their author does. Recorded in the custody log.")
        @OptionGroup var connection: Connection
        @Argument(help: "Case id.") var id: String
        @Option(help: "The colleague's user name.") var user: String
        func run() async throws {
            let c = try await connection.client.addCaseMember(try parseID(id), user: user)
            try connection.emit(c) { "members: \(c.members.joined(separator: ", "))" }
        }
    }
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
    static let configuration = CommandConfiguration(abstract: "Requests for evidence.", subcommands: [Create.self, List.self, Submit.self, Approve.self, Reject.self, Withdraw.self, Review.self, Answer.self, Extend.self, Release.self, Status.self, Timeline.self,
                                                                                                              ExportRequest.self, Import.self])

    struct ExportRequest: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "export",
            abstract: "Write a request as approved in a standard form: --etsi, an ETSI TS 103 120 (HI-1) message.",
            discussion: """
                The message CREATEs the AuthorisationObject (the decision: reference, timespan, the emergency flag) and one \
                LDTaskObject per provider (targets as RequestValues, categories, window, desired status), and DELIVERs one \
                DeliveryObject per verified package (reference, delivery id, sequence number, the signed manifest with its \
                SHA-256; the manifest lists every chunk's SHA-256). With --status, the task's status as an HI-1 GETResponse. \
                Mapping: schemas/etsi/README.md.
                """)
        @OptionGroup var connection: Connection
        @Argument(help: "Request id.") var id: String
        @Flag(help: "ETSI TS 103 120 (HI-1) XML (the only form there is; required, so that the form is named).") var etsi = false
        @Flag(help: "Only the task's status (GETResponse), not the whole message.") var status = false
        @Option(help: "Write to this file instead of standard output.") var out: String?
        func run() async throws {
            guard etsi else { throw ValidationError("name the form: --etsi") }
            let xml = try await connection.client.hi1(try parseID(id), statusOnly: status)
            if let out {
                guard FileManager.default.createFile(atPath: out, contents: Data(xml)) else { throw ValidationError("cannot write \(out)") }
                print("wrote \(out) (\(xml.count) bytes)")
            } else {
                FileHandle.standardOutput.write(Data(xml))
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import an authority's ETSI TS 103 120 (HI-1) CREATE message: a new case, and a draft per LDTaskObject; prints their ids.",
            discussion: "Violations name the XML path of the element they are about. Mapping: schemas/etsi/README.md.")
        @OptionGroup var connection: Connection
        @Argument(help: "The HI-1 XML file.") var file: String
        func run() async throws {
            guard let bytes = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(file)") }
            let imported = try await connection.client.importHI1(Array(bytes))
            try connection.emit(imported) {
                (["case \(imported.caseId.lowercased)"] + imported.requestIds.map { "draft request \($0.lowercased)" }).joined(separator: "\n")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List your agency's requests, newest first, without their targets.",
            discussion: "Every filter given must hold. Times are RFC 3339 (2026-11-30T08:00:00Z); --…-after is inclusive, --…-before exclusive.")
        @OptionGroup var connection: Connection
        @Option(help: "A state (repeat for several): \(RequestState.allCases.map(\.rawValue).joined(separator: ", ")).") var state: [String] = []
        @Option(help: "normal or emergency.") var priority: String?
        @Option(help: "production or preservation.") var kind: String?
        @Option(help: "A provider id.") var provider: String?
        @Option(name: .customLong("case"), help: "A case id.") var caseId: String?
        @Option(help: "The user name of who submitted them.") var submitter: String?
        @Flag(help: "Only requests of your cases, or that you submitted or approved.") var mine = false
        @Option(help: "Created at or after.") var createdAfter: String?
        @Option(help: "Created before.") var createdBefore: String?
        @Option(help: "Last changed at or after.") var updatedAfter: String?
        @Option(help: "Last changed before.") var updatedBefore: String?
        @Option(help: "updated (last change, the default) or created.") var sort: String?
        @Option(help: "Requests per page, 1 to 200.") var limit: Int = 50
        @Option(help: "Start from this page cursor (a page's `next`).") var cursor: String?
        @Flag(help: "Follow the cursor to the last page.") var all = false

        func query(cursor: String?) -> String {
            queryString(state.map { ("state", $0) } + [
                ("priority", priority), ("kind", kind), ("provider", provider), ("case", caseId), ("submitter", submitter), ("mine", mine ? "true" : nil),
                ("createdAfter", createdAfter), ("createdBefore", createdBefore), ("updatedAfter", updatedAfter), ("updatedBefore", updatedBefore),
                ("sort", sort), ("limit", "\(limit)"), ("cursor", cursor),
            ])
        }

        func run() async throws {
            let client = try connection.client
            let shown = try await pages(all: all, from: cursor) { try await client.listRequests(query: query(cursor: $0)) }
            try connection.emit(shown) {
                table(["REQUEST", "STATE", "PRIORITY", "KIND", "PROVIDER", "UPDATED", "NEXT DEADLINE", "CASE"], shown.items.map { r in
                    [r.id.lowercased, r.state.rawValue, r.priority.rawValue, r.kind.rawValue, r.providerId, r.updatedAt,
                     r.nextDeadline.map { "\($0) (\(r.nextClock ?? ""))" } ?? "-", r.caseId.lowercased]
                }) + (shown.next.map { "\nmore: --cursor \($0)" } ?? "")
            }
        }
    }

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
        @Option(help: "With --watch: give up after this many seconds (exit status 3). The live feed is followed, and the request read again every 15 s.")
        var timeout: Int = 3600

        func run() async throws {
            let requestId = try parseID(id)
            let client = try connection.client
            if !watch {
                let v = try await client.request(requestId)
                try connection.emit(v) { Self.render(v) }
                return
            }
            // The live feed (GET /v1/events), not polling: opened first, so that nothing happens
            // between the request as read (one view, in the custody log) and the feed.
            let outcome = try await withThrowingTaskGroup(of: Bool.self) { group in
                group.addTask {
                    try await Task.sleep(for: .seconds(timeout))
                    return false
                }
                group.addTask {
                    try await Self.follow(client, requestId)
                    return true
                }
                // A safety net under the live feed: should an event not reach this stream (a
                // broker instance that restarted between publishing and delivering it), the
                // request itself says when it is done. Every 15 s (each read is a view in the
                // custody log).
                group.addTask {
                    while true {
                        try await Task.sleep(for: .seconds(15))
                        let v = try await client.request(requestId)
                        if Self.done(v.state) {
                            if let last = v.timeline.last { print(Self.line(last)) }
                            fflush(nil)
                            return true
                        }
                    }
                }
                defer { group.cancelAll() }
                return try await group.next() ?? false
            }
            if !outcome { throw ExitCode(3) }
        }

        /// Whether a request in `state` has come to where `--watch` stops.
        static func done(_ state: RequestState) -> Bool { state == .verified || state == .preserved || RequestState.ended.contains(state) }

        /// Prints the request's timeline, then each step as the live feed announces it, until
        /// it is done; reconnects (from the last event) if the stream breaks.
        static func follow(_ client: CustosClient, _ requestId: UUID) async throws {
            var lastEventId: Int64?
            let (opened, open) = AsyncStream<Void>.makeStream()
            var stream = client.events(request: requestId, onOpen: { open.finish() }).makeAsyncIterator()
            for await _ in opened {}  // until the feed is open (or failed to open)
            let v = try await client.request(requestId)
            for e in v.timeline { print(line(e)) }
            fflush(nil)
            if done(v.state) { return }
            // A step the timeline already showed may come again on the feed (it happened between
            // opening the feed and reading the request): within a second of the timeline's last
            // entry, a state already shown is not printed again.
            let shown = Set(v.timeline.map(\.state))
            let horizon = v.timeline.last.flatMap { Timestamp.parse($0.at) }?.addingTimeInterval(1)
            var failures = 0
            while true {
                do {
                    while let event = try await stream.next() {
                        failures = 0
                        lastEventId = event.id
                        guard event.kind == .request, let state = event.state else {
                            if event.kind == .clock, let clock = event.clock, let phase = event.state {
                                print(line(API.TimelineEntry(at: event.at, state: "clock " + phase, actor: event.actor ?? "broker", note: clock)))
                            }
                            continue
                        }
                        if shown.contains(state), let horizon, let at = Timestamp.parse(event.at), at <= horizon { continue }
                        print(line(API.TimelineEntry(at: event.at, state: state, actor: event.actor ?? "", note: event.reason)))
                        fflush(nil)
                        if let s = RequestState(rawValue: state), done(s) { return }
                    }
                } catch let problem as API.Problem {
                    throw problem  // refused (not found, forbidden): no use trying again
                } catch {
                    failures += 1
                    if failures > 30 { throw error }
                }
                // The stream ended or broke (a broker restart): resume from the last event.
                try await Task.sleep(for: .seconds(min(failures + 1, 5)))
                stream = client.events(request: requestId, lastEventId: lastEventId).makeAsyncIterator()
                // With no event yet there is nothing to resume from: the request itself says.
                if lastEventId == nil, done(try await client.request(requestId).state) { return }
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
            first. With --at DATE, the bundle is checked as of that date: every certificate valid at the time its \
            time-stamp proves, and a renewal (renewals.json, RFC 4998-style) made before each time-stamping \
            certificate expired covering every expiry up to DATE; a missing renewal is a failure that names the gap. \
            Exit status: 0 valid, 1 invalid, 2 unusable input (unreadable file, not a bundle, missing trust \
            anchors), 3 inadmissible (authentic and intact, but the four criteria do not all pass).
            """)
    @Argument(help: "The bundle file (custos export writes one).") var bundle: String
    @Option(help: "Folder with provider-ca.pem, tsa-ca.pem, custody-ca.pem and optionally witnesses.pem.") var trust: String
    @Option(help: "Check as of this date (RFC 3339, e.g. 2036-01-01T00:00:00Z) instead of now.") var at: String?
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
        var date: Date?
        if let at {
            guard let d = Timestamp.parse(at), d.timeIntervalSince1970 >= 0 else { try unusable("--at \(at) is not an RFC 3339 UTC time ending in Z, from 1970 on") }
            date = d
        }
        var verifier = BundleVerifier(providerTrust: providerTrust, tsaTrust: tsaTrust, custodyTrust: custodyTrust, witnesses: witnesses, at: date)
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
