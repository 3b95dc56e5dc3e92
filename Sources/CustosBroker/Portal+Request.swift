import CustosModel
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

extension Portal {
    /// The request page: recorded as `request.viewed` (and each verified package shown as
    /// `package.viewed`), exactly as the API records the same reads.
    func requestPage(_ id: UUID, _ v: inout PortalVisit, error: BrokerError? = nil) async throws -> Response {
        var c = try await requestContext(id, &v, record: error == nil)
        c.merge(base(&v, title: "\(v.t("request")) \(shortId(id))", nav: "")) { a, _ in a }
        if let error {
            c["error"] = ["title": v.t("error_\(error.code.rawValue)"), "detail": error.reason]
        }
        return html200(try v.resources.render("request", c), status: error.map { $0.code.status } ?? .ok)
    }

    /// What the request page and its live part read. `record`: a full page view (custody
    /// events); the live part's refreshes record nothing more.
    func requestContext(_ id: UUID, _ v: inout PortalVisit, record: Bool) async throws -> [String: Any] {
        let user = v.user!
        let r = try await store.request(id, viewer: user)
        let summary = try await store.caseSummary(r.spec.caseId, viewer: user)
        if record { try await store.recordAccess(.requestViewed, by: user, subject: .init(caseId: r.spec.caseId, requestId: id)) }
        var packages: [[String: Any]] = []
        for p in r.packages {
            var item: [String: Any] = [
                "id": p.id.lowercased, "shortId": shortId(p.id), "state": p.state.rawValue, "stateLabel": v.t("package_\(p.state.rawValue)"),
                "chunks": p.chunkCount.map { "\(p.chunksReceived)/\($0) \(v.t("chunks"))" } ?? "\(p.chunksReceived) \(v.t("chunks"))",
                "size": p.contentSize.map { ByteCountFormatter.string(fromByteCount: $0, countStyle: .binary) } ?? "",
                "csrf": v.session?.csrf ?? "",
            ]
            if p.state != .receiving {
                let view = try await store.package(p.id, viewer: user)
                item["sealed"] = view.sealed
                if let verdict = view.criteria {
                    item["verdict"] = [
                        "admissible": v.t(verdict.admissible ? "admissible" : "not_admissible"), "admissibleClass": verdict.admissible ? "pass" : "fail",
                        "criteria": Verdict.Criterion.allCases.compactMap { criterion -> [String: Any]? in
                            guard let cv = verdict.criteria[criterion.rawValue] else { return nil }
                            return ["name": v.language == .vi ? criterion.name : "\(criterion.name) (\(v.t("criterion_\(criterion.rawValue)")))", "status": cv.status.rawValue,
                                    "statusLabel": v.t("status_\(cv.status.rawValue)"),
                                    "reasons": cv.reasons.map { ["code": $0.code, "statusLabel": v.t("status_\($0.status.rawValue)"), "count": $0.count] as [String: Any] }]
                        },
                    ] as [String: Any]
                }
                item["downloadable"] = view.state == .verified && !view.sealed && !user.roles.isDisjoint(with: [.investigator, .auditor])
                item.merge(codeField(v, "export-\(p.id.lowercased)")) { a, _ in a }
                if record, view.state == .verified {
                    try await store.recordAccess(.packageViewed, by: user, subject: .init(requestId: id, packageId: p.id))
                    try await store.markOpened(package: p.id, by: user)
                }
            }
            packages.append(item)
        }
        let isInvestigator = user.roles.contains(.investigator)
        let questions: [[String: Any]] = r.clarifications.map { q in
            var item: [String: Any] = ["id": q.id.lowercased, "requestId": id.lowercased, "question": q.question, "askedAt": v.time.show(q.askedAt),
                                       "canAnswer": isInvestigator, "csrf": v.session?.csrf ?? ""]
            if let a = q.answer { item["answer"] = a; item["answeredBy"] = q.answeredBy ?? ""; item["answeredAt"] = v.time.show(q.answeredAt) }
            return item
        }
        let document: [String: Any]? = r.spec.legalBasis.document.map {
            ["sha256": $0.sha256, "isImage": $0.mediaType.hasPrefix("image/") && $0.mediaType != "image/tiff", "isPdf": $0.mediaType == "application/pdf"]
        }
        var view: [String: Any] = [
            "id": id.lowercased, "shortId": shortId(id), "state": r.state.rawValue, "stateLabel": stateLabel(r.state.rawValue, v),
            "emergency": r.spec.priority == .emergency, "priorityLabel": v.t("priority_\(r.spec.priority.rawValue)"),
            "kindLabel": v.t("kind_\((r.spec.kind ?? .production).rawValue)"),
            "caseId": r.spec.caseId.lowercased, "caseTitle": summary.title, "members": summary.members.joined(separator: ", "),
            "providerId": (r.spec.providerIds ?? [r.spec.providerId]).joined(separator: ", "),
            "createdAt": v.time.show(r.createdAt),
            "decisionNumber": r.spec.legalBasis.decisionNumber, "authority": r.spec.legalBasis.issuingAuthority, "issuedOn": r.spec.legalBasis.issuedOn,
            "targets": r.spec.targets.map { t -> [String: Any] in
                var q: [String] = []
                if let port = t.port { q.append("port \(port)") }
                if let at = t.at { q.append(v.time.show(at)) }
                if let platform = t.platform { q.append(platform) }
                return ["typeLabel": v.t("target_\(t.type.rawValue)"), "value": t.value, "qualifier": q.joined(separator: ", ")]
            },
            "categories": r.spec.categories.map { v.t("category_\($0.rawValue)") }.joined(separator: ", "),
            "windowFrom": v.time.show(r.spec.window.from), "windowTo": v.time.show(r.spec.window.to),
            "clocks": r.clocks.map { clock($0, v) }, "hasClocks": !r.clocks.isEmpty,
            "packages": packages, "hasPackages": !packages.isEmpty,
            "questions": questions, "hasQuestions": !questions.isEmpty,
            "timeline": r.timeline.map { ["state": $0.state, "stateLabel": stateLabel($0.state, v), "at": v.time.show($0.at), "actor": $0.actor] },
        ]
        if let document { view["document"] = document }
        // Set only when known: Mustache would show an absent optional as text.
        if let s = r.submittedBy { view["submittedBy"] = s }
        if let a = r.approvedBy { view["approvedBy"] = a }
        if let e = r.spec.emergency { view["ground"] = v.t("ground_\(e.ground.rawValue)"); view["statement"] = e.statement }
        if let review = r.review { view["review"] = ["label": v.t("review_\(review.state.rawValue)")] }

        // Which actions to offer: the life cycle's own table (RequestLifecycle) and roles. The
        // server refuses any other anyway, with the same code as the API.
        let state = r.state
        let submitter = r.submittedBy == user.name
        let approverRole: Role = r.spec.priority == .emergency ? .dutyApprover : .approver
        var can: [String: Bool] = [
            "approve": RequestLifecycle.rule(.approve).from.contains(state) && user.roles.contains(approverRole) && !submitter,
            "review": r.review?.state == .pending && user.roles.contains(.reviewer),
            "submit": RequestLifecycle.rule(.submit).from.contains(state) && isInvestigator,
            "withdraw": RequestLifecycle.rule(.withdraw).from.contains(state) && isInvestigator,
            "extend": r.spec.isPreservation && RequestLifecycle.preservationRunning.contains(state) && isInvestigator,
            "release": r.spec.isPreservation && RequestLifecycle.rule(.release).from.contains(state) && isInvestigator,
            "share": isInvestigator && summary.members.contains(user.name),
        ]
        can["any"] = can.values.contains(true)
        var c: [String: Any] = ["r": view, "can": can, "csrf": v.session?.csrf ?? ""]
        for name in ["approve", "reject", "review"] { c["\(name)Code"] = codeField(v, name) }
        return c
    }

    /// `POST /portal/requests/{id}/{action}`: the same store calls as the API's request
    /// actions. A refusal is shown on the request page with its reason; success goes back to it.
    func requestAction(_ request: Request, _ context: BrokerRequestContext, _ v: inout PortalVisit) async throws -> Response {
        let id = try api.id(context)
        let action = context.parameters.get("action") ?? ""
        let f = try await form(request, v)
        let user = v.user!
        func reason() -> String? { f.value("reason").flatMap { $0.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? nil : $0 } }
        do {
            switch action {
            case "approve":
                try await requireSecondFactor(f, &v, context)
                try await store.approve(id, by: user)
            case "reject":
                try await requireSecondFactor(f, &v, context)
                try await store.reject(id, by: user, reason: reason())
            case "review":
                guard let decision = f.value("decision").flatMap(API.Review.Decision.init(rawValue:)) else {
                    throw BrokerError(.invalid, "decision: confirm or revoke")
                }
                try await requireSecondFactor(f, &v, context)
                try await store.review(id, decision: decision, reason: reason(), by: user)
            case "submit": try await store.submit(id, by: user)
            case "withdraw": try await store.withdraw(id, by: user, reason: reason())
            case "extend": try await store.extendPreservation(id, by: user)
            case "release": try await store.releasePreservation(id, reason: reason(), by: user)
            case "answer":
                guard let q = f.value("question").flatMap(UUID.init(uuidString:)) else { throw BrokerError(.invalid, "question: not a question id") }
                try await store.answer(id, question: q, answer: f.value("answer") ?? "", by: user)
            case "share":
                let request = try await store.request(id, viewer: user)
                _ = try await store.addCaseMember(request.spec.caseId, user: f.value("user") ?? "", by: user)
            default:
                throw BrokerError(.notFound, "no such action")
            }
        } catch let e as BrokerError where e.code != .notFound && e.code != .unauthorized {
            return try await requestPage(id, &v, error: e)
        }
        switch f.value("back") {
        case "emergencies": throw PortalRedirect(location: "/portal/emergencies")
        case "reviews": throw PortalRedirect(location: "/portal/reviews")
        default: throw PortalRedirect(location: "/portal/requests/\(id.lowercased)")
        }
    }
}
