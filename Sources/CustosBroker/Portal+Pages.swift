import Crypto
import CustosCanonicalJSON
import CustosCustody
import CustosMerkle
import CustosModel
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

extension Portal {
    // MARK: Labels

    func stateLabel(_ state: String, _ v: PortalVisit) -> String { v.t("state_\(state)") }
    func shortId(_ id: UUID) -> String { String(id.lowercased.prefix(8)) }

    /// A clock as the pages show it: its name, time left (or its end), overdue or not.
    func clock(_ c: API.ClockView, _ v: PortalVisit, now: Date = Date()) -> [String: Any] {
        var out: [String: Any] = ["name": v.t("clock_\(c.clock)"), "deadline": v.time.show(c.deadline)]
        let running = c.stoppedAt == nil && c.expiredAt == nil && c.pausedAt == nil
        out["running"] = running
        if running, let deadline = PortalTime.parse(c.deadline) {
            let left = v.time.left(until: deadline, now: now, resources: v.resources)
            out["left"] = left.text
            out["overdue"] = left.overdue
        } else {
            out["status"] = c.expiredAt != nil ? v.t("clock_expired") : c.pausedAt != nil ? v.t("clock_paused") : v.t("clock_stopped")
        }
        return out
    }

    func deadline(_ text: String?, _ v: PortalVisit) -> [String: Any]? {
        guard let text, let date = PortalTime.parse(text) else { return nil }
        let left = v.time.left(until: date, resources: v.resources)
        return ["left": left.text, "overdue": left.overdue]
    }

    // MARK: Dashboard

    func dashboard(_ request: Request, _ context: BrokerRequestContext, _ v: inout PortalVisit) async throws -> Response {
        let user = v.user!
        let q = request.uri.queryParameters
        var filter = BrokerStore.RequestFilter()
        filter.limit = 50
        if let s = q.get("state"), !s.isEmpty {
            guard let state = RequestState(rawValue: String(s)) else { throw BrokerError(.invalid, "state: unknown request state") }
            filter.states = [state]
        }
        if let p = q.get("priority"), !p.isEmpty { filter.priority = Priority(rawValue: String(p)) }
        if let k = q.get("kind"), !k.isEmpty { filter.kind = RequestKind(rawValue: String(k)) }
        filter.mine = q.get("mine") == "true"
        var caseTitle: String?
        if let c = q.get("case"), !c.isEmpty {
            let id = try api.uuid(String(c), "case")
            filter.caseId = id
            caseTitle = try await store.caseSummary(id, viewer: user).title
        }
        if let cursor = q.get("cursor") { filter.cursor = try api.cursor(String(cursor)) }
        let page = try await store.listRequests(filter, viewer: user)
        let cases = user.roles.contains(.investigator) ? try await store.listCases(mine: false, limit: 50, cursor: nil, viewer: user).items : []
        var c = base(&v, title: v.t("dashboard_title"), nav: "dashboard")
        let rows: [[String: Any]] = page.items.map { r in
            var row: [String: Any] = [
                "id": r.id.lowercased, "shortId": shortId(r.id), "providerId": r.providerId, "state": r.state.rawValue,
                "stateLabel": stateLabel(r.state.rawValue, v), "priorityLabel": v.t("priority_\(r.priority.rawValue)"),
                "emergency": r.priority == .emergency, "kindLabel": v.t("kind_\(r.kind.rawValue)"), "updated": v.time.show(r.updatedAt),
            ]
            if var d = deadline(r.nextDeadline, v) {
                d["clock"] = r.nextClock.map { v.t("clock_\($0)") } ?? ""
                row["deadline"] = d
            }
            return row
        }
        c["requests"] = rows
        c["hasRequests"] = !rows.isEmpty
        if let next = page.next {
            var items = [("cursor", next)]
            for key in ["state", "priority", "kind", "case", "mine"] { if let value = q.get(key), !value.isEmpty { items.append((key, String(value))) } }
            c["next"] = "/portal/?" + items.map { "\($0.0)=\($0.1.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? "")" }.joined(separator: "&")
        }
        c["caseTitle"] = caseTitle
        c["caseId"] = filter.caseId?.lowercased
        c["mine"] = filter.mine
        c["states"] = RequestState.allCases.map { ["value": $0.rawValue, "label": stateLabel($0.rawValue, v), "selected": filter.states.first == $0] as [String: Any] }
        c["priorities"] = Priority.allCases.map { ["value": $0.rawValue, "label": v.t("priority_\($0.rawValue)"), "selected": filter.priority == $0] as [String: Any] }
        c["kinds"] = RequestKind.allCases.map { ["value": $0.rawValue, "label": v.t("kind_\($0.rawValue)"), "selected": filter.kind == $0] as [String: Any] }
        c["showCases"] = user.roles.contains(.investigator)
        c["cases"] = cases.map { ["id": $0.id.lowercased, "title": $0.title, "requests": $0.requests, "open": $0.open, "members": $0.members.joined(separator: ", ")] as [String: Any] }
        c["hasCases"] = !cases.isEmpty
        return html200(try v.resources.render("dashboard", c))
    }

    // MARK: Inbox, emergencies, reviews

    func inbox(_ v: inout PortalVisit) async throws -> Response {
        let inbox = try await store.inbox(for: v.user!)
        var c = base(&v, title: v.t("inbox_title"), nav: "inbox")
        let items: [[String: Any]] = inbox.items.map { i in
            var item: [String: Any] = [
                "requestId": i.requestId.lowercased, "shortId": shortId(i.requestId), "taskLabel": v.t("task_\(i.task.rawValue)"),
                "emergency": i.priority == .emergency, "priorityLabel": v.t("priority_\(i.priority.rawValue)"),
                "state": i.state.rawValue, "stateLabel": stateLabel(i.state.rawValue, v), "since": v.time.show(i.since),
            ]
            if let d = deadline(i.deadline, v) { item["deadline"] = d }
            if let p = i.packageId { item["anchor"] = "package-\(p.lowercased)" }
            return item
        }
        c["items"] = items
        c["hasItems"] = !items.isEmpty
        return html200(try v.resources.render("inbox", c))
    }

    /// The duty approver's queue, laid out for a phone: each emergency with its ground,
    /// statement, decision and clocks, and approval with the second factor in the same form.
    func emergencies(_ v: inout PortalVisit) async throws -> Response {
        let user = v.user!
        guard user.roles.contains(.dutyApprover) else { throw BrokerError(.forbidden, v.t("role_needed_duty")) }
        let inbox = try await store.inbox(for: user)
        var items: [[String: Any]] = []
        for i in inbox.items where i.task == .approveEmergency {
            let r = try await store.request(i.requestId, viewer: user)
            var item: [String: Any] = [
                "id": r.id.lowercased, "shortId": shortId(r.id), "ground": r.spec.emergency.map { v.t("ground_\($0.ground.rawValue)") } ?? "",
                "statement": r.spec.emergency?.statement ?? "", "decisionNumber": r.spec.legalBasis.decisionNumber,
                "authority": r.spec.legalBasis.issuingAuthority, "issuedOn": r.spec.legalBasis.issuedOn,
                "submittedBy": r.submittedBy ?? "", "providerId": r.spec.providerId,
                "clocks": r.clocks.map { clock($0, v) }, "canApprove": r.submittedBy != user.name,
            ]
            if let d = r.spec.legalBasis.document { item["document"] = ["sha256": d.sha256] }
            item.merge(codeField(v, "approve-\(r.id.lowercased)")) { a, _ in a }
            items.append(item)
        }
        var c = base(&v, title: v.t("emergencies_title"), nav: "emergencies")
        c["items"] = items
        c["hasItems"] = !items.isEmpty
        return html200(try v.resources.render("emergencies", c))
    }

    func reviews(_ v: inout PortalVisit) async throws -> Response {
        let user = v.user!
        guard user.roles.contains(.reviewer) else { throw BrokerError(.forbidden, v.t("role_needed_reviewer")) }
        let inbox = try await store.inbox(for: user)
        var items: [[String: Any]] = []
        for i in inbox.items where i.task == .review {
            let r = try await store.request(i.requestId, viewer: user)
            var item: [String: Any] = [
                "id": r.id.lowercased, "shortId": shortId(r.id), "state": r.state.rawValue, "stateLabel": stateLabel(r.state.rawValue, v),
                "ground": r.spec.emergency.map { v.t("ground_\($0.ground.rawValue)") } ?? "", "statement": r.spec.emergency?.statement ?? "",
                "approvedBy": r.approvedBy ?? "",
            ]
            if let d = deadline(r.review?.dueAt, v) { item.merge(d) { a, _ in a } }
            item.merge(codeField(v, "review-\(r.id.lowercased)")) { a, _ in a }
            items.append(item)
        }
        var c = base(&v, title: v.t("reviews_title"), nav: "reviews")
        c["items"] = items
        c["hasItems"] = !items.isEmpty
        return html200(try v.resources.render("reviews", c))
    }

    // MARK: Custody, users

    func custody(_ request: Request, _ v: inout PortalVisit) async throws -> Response {
        let user = v.user!
        guard !user.roles.isDisjoint(with: [.auditor, .admin]) else { throw BrokerError(.forbidden, v.t("role_needed_auditor")) }
        var c = base(&v, title: v.t("custody_title"), nav: "custody")
        if let cp = try await store.latestCheckpoint() {
            c["checkpoint"] = ["origin": cp.origin, "size": cp.size, "root": cp.root, "time": v.time.show(cp.time),
                               "witnesses": cp.cosignatures.map { ["name": $0.witness, "at": v.time.show($0.at)] }] as [String: Any]
        }
        if let a = try await store.lastAudit() {
            c["audit"] = ["status": v.t(a.consistent ? "audit_consistent" : "audit_divergent"), "statusClass": a.consistent ? "pass" : "fail",
                          "at": v.time.show(a.at), "events": a.events, "checkpoints": a.checkpoints, "chunks": a.chunks, "problems": a.problems] as [String: Any]
        }
        let q = request.uri.queryParameters
        var events: [API.CustodyEventView] = []
        if let p = q.get("package"), !p.isEmpty {
            let id = try api.uuid(String(p), "package")
            events = try await store.custodyEvents(package: id, viewer: user)
            c["packageId"] = id.lowercased
        } else if let r = q.get("request"), !r.isEmpty {
            let id = try api.uuid(String(r), "request")
            events = try await store.custodyEvents(request: id, viewer: user)
            c["requestId"] = id.lowercased
        }
        c["events"] = events.map { e -> [String: Any] in
            let event = try? CustodyEvent.decode(entry: Array(e.entry.utf8))
            var row: [String: Any] = ["index": e.index, "kind": event?.kind.rawValue ?? "?", "at": v.time.show(event?.at),
                                      "actor": event.map { "\($0.actor.type.rawValue) \($0.actor.id)" } ?? ""]
            // Set only when there is one: Mustache takes an empty string as true.
            if let p = c["packageId"] { row["packageId"] = p }
            return row
        }
        c["hasEvents"] = !events.isEmpty
        if let text = q.get("event"), !text.isEmpty {
            guard let index = UInt64(text) else { throw BrokerError(.invalid, "event: an index is a whole number") }
            c["eventIndex"] = index
            // Checked here, in the page's server: entry → leaf hash → audit path → the checkpoint's root.
            let proof = try await store.inclusionProof(index: index, size: nil, viewer: user)
            let entry = Array(proof.entry.utf8)
            let leaf = CustodyEvent.leafHash(entry: entry)
            var ok = false
            var result = v.t("proof_failed")
            do {
                let checkpoint = try Checkpoint(text: Array(proof.checkpoint.text.utf8))
                let path = try proof.proof.map { b64 -> SHA256Digest in
                    guard let d = Data(base64Encoded: b64).flatMap({ SHA256Digest(bytes: $0) }) else { throw BrokerError(.unavailable, "a proof hash is not SHA-256") }
                    return d
                }
                try MerkleProof.verifyInclusion(leafHash: leaf, index: proof.index, size: checkpoint.size, proof: path, root: checkpoint.root)
                ok = true
                result = v.t("proof_ok")
            } catch {
                result = v.t("proof_failed")
            }
            c["proof"] = ["ok": ok, "result": result, "index": index, "leaf": Data(leaf).base64EncodedString(), "size": proof.checkpoint.size,
                          "root": proof.checkpoint.root] as [String: Any]
        }
        let dead = try await store.deadLettersByReason(viewer: user)
        c["deadLetters"] = dead.map { ["reason": $0.reason, "count": $0.count, "latest": v.time.show($0.latest)] as [String: Any] }
        c["hasDeadLetters"] = !dead.isEmpty
        return html200(try v.resources.render("custody", c))
    }

    func users(_ v: inout PortalVisit) async throws -> Response {
        let list = try await store.agencyUsers(viewer: v.user!)
        var c = base(&v, title: v.t("users_title"), nav: "users")
        c["users"] = list.map { u -> [String: Any] in
            ["name": u.name, "roleLabel": v.t("role_\(u.role)"), "enrolled": v.t(u.enrolled ? "yes" : "no"), "certificates": u.certificates,
             "locked": u.lockedUntil.map { v.time.show($0) } ?? "—", "created": v.time.show(u.createdAt)]
        }
        return html200(try v.resources.render("users", c))
    }

    // MARK: The request form

    /// The form's fields as the person typed them (shown again with the errors).
    struct RequestForm {
        var caseId = ""
        var caseTitle = ""
        var providers: [String] = []
        var decisionNumber = ""
        var authority = ""
        var issuedOn = ""
        var targets: [(type: String, value: String)] = []
        var categories: [String] = []
        var from = ""
        var to = ""
        var preservation = false
        var emergency = false
        var ground = ""
        var statement = ""
    }

    static let targetRows = 5

    func newRequest(_ v: inout PortalVisit, form: RequestForm?, errors: [String: [String]], status: HTTPResponse.Status = .ok) async throws -> Response {
        let user = v.user!
        guard user.roles.contains(.investigator) else { throw BrokerError(.forbidden, v.t("role_needed_investigator")) }
        let f = form ?? RequestForm()
        var c = base(&v, title: v.t("new_request_title"), nav: "newRequest")
        let cases = try await store.listCases(mine: false, limit: 200, cursor: nil, viewer: user).items
        c["cases"] = cases.map { ["id": $0.id.lowercased, "title": $0.title, "selected": $0.id.lowercased == f.caseId] as [String: Any] }
        c["providers"] = try await store.providerIds().map { ["id": $0, "checked": f.providers.contains($0)] as [String: Any] }
        c["form"] = ["caseTitle": f.caseTitle, "decisionNumber": f.decisionNumber, "authority": f.authority, "issuedOn": f.issuedOn,
                     "from": f.from, "to": f.to, "preservation": f.preservation, "emergency": f.emergency, "statement": f.statement] as [String: Any]
        c["targets"] = (0..<max(Self.targetRows, f.targets.count)).map { i -> [String: Any] in
            let t = i < f.targets.count ? f.targets[i] : (type: "msisdn", value: "")
            var row: [String: Any] = ["index": i, "number": i + 1, "value": t.value,
                                      "types": TargetType.allCases.map { ["value": $0.rawValue, "label": v.t("target_\($0.rawValue)"), "selected": $0.rawValue == t.type] as [String: Any] }]
            // Always set: a missing key would be looked up in the page's context (Mustache).
            row["rowError"] = errors["targets[\(i)]"]?.joined(separator: " ") ?? false
            return row
        }
        c["categories"] = DataCategory.allCases.map { ["value": $0.rawValue, "label": v.t("category_\($0.rawValue)"), "checked": f.categories.contains($0.rawValue)] as [String: Any] }
        c["grounds"] = EmergencyGrounds.Ground.allCases.map { ["value": $0.rawValue, "label": v.t("ground_\($0.rawValue)"), "selected": $0.rawValue == f.ground] as [String: Any] }
        c["fieldErrors"] = errors.filter { !$0.key.hasPrefix("targets[") }
        if !errors.isEmpty { c["error"] = ["title": v.t("form_has_errors"), "detail": ""] }
        return html200(try v.resources.render("new-request", c), status: status)
    }

    /// Creates the case (when new), uploads the decision, and creates and optionally submits
    /// the request, through the same store calls as the API. Violations are shown beside their
    /// fields, each naming its rule.
    func createRequest(_ request: Request, _ context: BrokerRequestContext, _ v: inout PortalVisit) async throws -> Response {
        let user = v.user!
        let body = try await form(request, v, limit: LegalDocument.maximumSize + 1_048_576)
        var f = RequestForm()
        f.caseId = body.value("case") ?? ""
        f.caseTitle = body.value("caseTitle") ?? ""
        f.providers = body.values("provider")
        f.decisionNumber = body.value("decisionNumber") ?? ""
        f.authority = body.value("authority") ?? ""
        f.issuedOn = body.value("issuedOn") ?? ""
        f.targets = zip(body.values("targetType"), body.values("targetValue")).map { (type: $0, value: $1.trimmingCharacters(in: .whitespaces)) }
        f.categories = body.values("category")
        f.from = body.value("from") ?? ""
        f.to = body.value("to") ?? ""
        f.preservation = body.value("preservation") == "true"
        f.emergency = body.value("emergency") == "true"
        f.ground = body.value("ground") ?? ""
        f.statement = body.value("statement") ?? ""

        var errors: [String: [String]] = [:]
        func fail(_ field: String, _ message: String) { errors[field, default: []].append(message) }
        // What the form itself must settle before the request can be built; the request's own
        // rules are the store's (RequestSpec.validate), reported the same way below.
        if f.caseId.isEmpty, f.caseTitle.trimmingCharacters(in: .whitespaces).isEmpty { fail("caseTitle", v.t("err_case_needed")) }
        if f.providers.isEmpty { fail("providerId", v.t("err_provider_needed")) }
        let from = v.time.utc(fromLocal: f.from), to = v.time.utc(fromLocal: f.to)
        if from == nil || to == nil { fail("window", v.t("err_window_format")) }
        var targets: [Target] = []
        var targetRow: [Int] = []
        for (i, t) in f.targets.enumerated() where !t.value.isEmpty {
            guard let type = TargetType(rawValue: t.type) else { fail("targets[\(i)]", v.t("err_target_type")); continue }
            // A telephone number as people write it ("0912 345 678") is read as Vietnam's
            // (libphonenumber); the API itself takes E.164 only.
            let value = type == .msisdn ? PhoneNumber.e164(t.value, defaultCountryCode: PortalSettings.defaultCountryCode) ?? t.value : t.value
            targets.append(Target(type: type, value: value))
            targetRow.append(i)
        }
        if targets.isEmpty { fail("targets", v.t("err_target_needed")) }
        var emergency: EmergencyGrounds?
        if f.emergency {
            if let ground = EmergencyGrounds.Ground(rawValue: f.ground) {
                emergency = EmergencyGrounds(ground: ground, statement: f.statement)
            } else { fail("emergency", v.t("err_ground_needed")) }
        }
        let file = body.files["document"].flatMap { $0.bytes.readableBytes > 0 ? $0 : nil }
        guard errors.isEmpty else { return try await newRequest(&v, form: f, errors: errors, status: .badRequest) }

        var caseId: UUID
        if let id = UUID(uuidString: f.caseId) {
            caseId = id
        } else {
            caseId = UUID()  // replaced below; the case is created only once the request is valid
        }
        var spec = RequestSpec(
            caseId: caseId, providerId: f.providers[0],
            legalBasis: LegalBasis(decisionNumber: f.decisionNumber, issuingAuthority: f.authority, issuedOn: f.issuedOn),
            targets: targets, categories: f.categories.compactMap(DataCategory.init(rawValue:)),
            window: TimeWindow(from: from!, to: to!), priority: f.emergency ? .emergency : .normal, emergency: emergency,
            kind: f.preservation ? .preservation : nil)
        if f.providers.count > 1 { spec.providerIds = f.providers }
        if f.categories.count != spec.categories.count { fail("categories", v.t("err_category_unknown")) }
        // The request's own rules first, so that no case is created for a request refused.
        var violations: [FieldViolation] = []
        do { try spec.validate() } catch { violations = error.violations }
        for violation in violations {
            var field = violation.field
            if field.hasPrefix("targets["), let close = field.firstIndex(of: "]"), let i = Int(field[field.index(field.startIndex, offsetBy: 8)..<close]), i < targetRow.count {
                field = "targets[\(targetRow[i])]"
            } else if field.hasPrefix("legalBasis.") {
                field = String(field.dropFirst("legalBasis.".count))
            } else if field.hasPrefix("window") {
                field = "window"
            } else if field.hasPrefix("emergency") {
                field = "emergency"
            }
            fail(field, "\(violation.field): \(violation.rule)")
        }
        if body.value("then") == "submit", file == nil { fail("document", v.t("err_document_needed")) }
        guard errors.isEmpty else { return try await newRequest(&v, form: f, errors: errors, status: .badRequest) }
        // The decision is stored (a custody event) only for a request that passed its rules.
        if let file {
            let type = LegalDocument.mediaType(forFileName: file.fileName) ?? file.contentType.lowercased()
            do { spec.legalBasis.document = try await store.uploadDocument(file.bytes, mediaType: type, by: user).document } catch let e as BrokerError {
                fail("document", e.reason)
                return try await newRequest(&v, form: f, errors: errors, status: .badRequest)
            }
        }
        if UUID(uuidString: f.caseId) == nil {
            caseId = try await store.createCase(title: f.caseTitle, by: user).id
            spec.caseId = caseId
            f.caseId = caseId.lowercased  // sent again after a refusal, the form names this case
        }
        let id: UUID
        do { id = try await store.createRequest(spec, by: user) } catch let e as BrokerError where e.code == .invalid {
            for violation in e.violations { fail("caseTitle", "\(violation.field): \(violation.rule)") }
            if e.violations.isEmpty { fail("caseTitle", e.reason) }
            return try await newRequest(&v, form: f, errors: errors, status: .badRequest)
        }
        if body.value("then") == "submit" { try await store.submit(id, by: user) }
        throw PortalRedirect(location: "/portal/requests/\(id.lowercased)")
    }
}
