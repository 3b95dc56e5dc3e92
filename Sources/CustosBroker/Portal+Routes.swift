import CustosCustody
import CustosMerkle
import CustosModel
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// Limits sign-in attempts per client address (in this instance's memory), beside the per-user
/// lock-out kept in PostgreSQL: `limit` attempts in `window`, whatever names they try.
actor SignInThrottle {
    let limit: Int
    let window: TimeInterval
    private var attempts: [String: [Date]] = [:]

    init(limit: Int = 20, window: TimeInterval = 300) {
        self.limit = limit
        self.window = window
    }

    /// Counts one attempt from `address`; false when it is over the limit.
    func allow(_ address: String, now: Date = Date()) -> Bool {
        var list = (attempts[address] ?? []).filter { now.timeIntervalSince($0) < window }
        guard list.count < limit else { attempts[address] = list; return false }
        list.append(now)
        attempts[address] = list
        if attempts.count > 10_000 { attempts = attempts.filter { !$0.value.isEmpty && now.timeIntervalSince($0.value.last!) < window } }
        return true
    }
}

/// A redirect the portal answers with (303 See Other after a POST, or to the sign-in page).
struct PortalRedirect: Error {
    var location: String
}

/// One page request: the person's language, time zone and session.
struct PortalVisit {
    var resources: PortalResources
    var language: PortalLanguage
    var time: PortalTime
    var session: PortalSession?
    var token: String?
    var cookies: [Cookie] = []

    var user: AuthenticatedUser? { session?.user }
    func t(_ key: String) -> String { resources.text(key, language) }
}

/// The web portal (`/portal/`): server-rendered pages over the same `BrokerStore` calls as the
/// API, so that every rule (agency isolation, four eyes, roles, seals) is the same code.
/// Sign-in by password and TOTP, or by a registered TLS client certificate; sessions in
/// PostgreSQL (`PortalSignIn`); every form carries the session's CSRF token.
struct Portal: Sendable {
    let store: BrokerStore
    let api: BrokerAPI
    let settings: PortalSettings
    let liveFeed: LiveFeed?
    let throttle = SignInThrottle()
    let logger: Logger

    static let sessionCookie = "custos_session"
    static let signInCookie = "custos_signin"
    static let languageCookie = "custos_lang"
    static let timeZoneCookie = "custos_tz"

    func add(to router: Router<BrokerRequestContext>) {
        router.get("/") { _, _ in Response(status: .seeOther, headers: [.location: "/portal/"]) }
        let portal = router.group("portal")
        portal.get("assets/:name") { _, context -> Response in
            guard case .success(let resources) = PortalResources.shared, let name = context.parameters.get("name"),
                  let asset = resources.assets[name] else { return Response(status: .notFound) }
            var headers: HTTPFields = [.contentType: asset.contentType, .cacheControl: "public, max-age=31536000, immutable"]
            headers[.xContentTypeOptions] = "nosniff"
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: asset.bytes))
        }
        portal.get("sign-in") { request, context in await page(request, context, signedIn: false) { v in try await signInPage(request, context, &v) } }
        portal.post("sign-in") { request, context in await page(request, context, signedIn: false) { v in try await signIn(request, context, &v) } }
        portal.post("sign-in/certificate") { request, context in
            await page(request, context, signedIn: false) { v in try await signInWithCertificate(request, context, &v) }
        }
        portal.post("sign-out") { request, context in
            await page(request, context) { v in
                _ = try await form(request, v)
                try await store.signOut(token: v.token!, user: v.user!)
                v.cookies.append(cookie(Self.sessionCookie, "", maxAge: 0))
                throw PortalRedirect(location: "/portal/sign-in")
            }
        }
        portal.post("preferences") { request, context in
            await page(request, context) { v in
                let f = try await form(request, v)
                if let tz = f.value("tz"), PortalSettings.timeZones.contains(tz) { v.cookies.append(cookie(Self.timeZoneCookie, tz, maxAge: 31_536_000)) }
                throw PortalRedirect(location: "/portal/")
            }
        }
        portal.get("") { request, context in await page(request, context) { v in try await dashboard(request, context, &v) } }
        portal.get("inbox") { request, context in await page(request, context) { v in try await inbox(&v) } }
        portal.get("emergencies") { request, context in await page(request, context) { v in try await emergencies(&v) } }
        portal.get("reviews") { request, context in await page(request, context) { v in try await reviews(&v) } }
        portal.get("custody") { request, context in await page(request, context) { v in try await custody(request, &v) } }
        portal.get("admin/users") { request, context in await page(request, context) { v in try await users(&v) } }
        portal.get("requests/new") { request, context in await page(request, context) { v in try await newRequest(&v, form: nil, errors: [:]) } }
        portal.post("requests") { request, context in await page(request, context) { v in try await createRequest(request, context, &v) } }
        portal.get("requests/:id") { request, context in await page(request, context) { v in try await requestPage(try api.id(context), &v) } }
        portal.get("requests/:id/live") { request, context in
            await page(request, context, touch: false) { v in
                let id = try api.id(context)
                var c = try await requestContext(id, &v, record: false)
                c.merge(base(&v, title: "", nav: "")) { a, _ in a }
                return html200(try v.resources.render("request-live", c))
            }
        }
        portal.get("requests/:id/events") { request, context in
            await page(request, context, touch: false) { v in
                guard let liveFeed else { throw BrokerError(.unavailable, "live events are not served by this instance") }
                let id = try api.id(context)
                _ = try await store.requestState(id, viewer: v.user!)
                let last = request.headers[HTTPField.Name("Last-Event-ID")!].flatMap { Int64($0) }
                return liveFeed.response(LiveFeed.Filter(agency: v.user!.agency, requestId: id), lastEventId: last)
            }
        }
        portal.post("requests/:id/:action") { request, context in
            await page(request, context) { v in try await requestAction(request, context, &v) }
        }
        portal.get("documents/:sha256") { request, context in
            await page(request, context) { v in
                guard let sha = context.parameters.get("sha256"), sha.utf8.count == 64,
                      sha.utf8.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
                    throw BrokerError(.notFound, "no such document")
                }
                let (view, content) = try await store.document(sha, viewer: v.user!)
                // The request page shows it inline (same origin only); nothing in it runs.
                var headers: HTTPFields = [.contentType: view.document.mediaType, .contentDisposition: "inline",
                                           .contentSecurityPolicy: "default-src 'none'; frame-ancestors 'self'; sandbox",
                                           HTTPField.Name("X-Frame-Options")!: "SAMEORIGIN"]
                PortalHeaders.page(&headers)
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: content))
            }
        }
        portal.get("packages/:id/manifest") { request, context in
            await page(request, context) { v in
                let package = try await store.package(try api.id(context), viewer: v.user!)
                let bytes = try JSONEncoder().encode(package.manifest)
                var headers: HTTPFields = [.contentType: "application/json"]
                PortalHeaders.page(&headers)
                return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            }
        }
        portal.get("packages/:id/content") { request, context in
            await page(request, context) { v in
                var response = try await api.content(try api.id(context), for: v.user!)
                PortalHeaders.page(&response.headers)
                response.headers[.contentDisposition] = "attachment; filename=\"\(try api.id(context).lowercased).ndjson\""
                return response
            }
        }
        // Any other path under /portal: the portal's own "not found" page, not the API's JSON.
        portal.get("**") { request, context in
            await page(request, context, signedIn: false) { _ in throw BrokerError(.notFound, "no such page") }
        }
        portal.post("packages/:id/bundle") { request, context in
            await page(request, context) { v in
                let id = try api.id(context)
                let f = try await form(request, v)
                try await requireSecondFactor(f, &v, context)
                var response = try await api.bundle(id, for: v.user!)
                PortalHeaders.page(&response.headers)
                return response
            }
        }
    }

    // MARK: The frame of every page

    /// Runs `body` for a page: resolves language, time zone and session (sending people who are
    /// not signed in, or whose session ended, to the sign-in page), adds the security headers,
    /// and turns errors into pages (404 for another agency's ids, as the API answers).
    /// `touch`: false for what the page's script asks on its own (see `BrokerStore.session`).
    func page(_ request: Request, _ context: BrokerRequestContext, signedIn: Bool = true, touch: Bool = true,
              _ body: (inout PortalVisit) async throws -> Response) async -> Response {
        let resources: PortalResources
        switch PortalResources.shared {
        case .success(let r): resources = r
        case .failure(let e):
            logger.error("portal resources missing", metadata: ["error": "\(e)"])
            return Response(status: .internalServerError)
        }
        var language = PortalLanguage(rawValue: request.cookies[Self.languageCookie]?.value ?? "") ?? .vi
        var cookies: [Cookie] = []
        if let asked = request.uri.queryParameters.get("lang").flatMap(PortalLanguage.init(rawValue:)) {
            language = asked
            cookies.append(cookie(Self.languageCookie, asked.rawValue, maxAge: 31_536_000))
        }
        let zoneName = request.cookies[Self.timeZoneCookie].flatMap { PortalSettings.timeZones.contains($0.value) ? $0.value : nil } ?? settings.timeZone
        let zone = TimeZone(identifier: zoneName) ?? TimeZone(identifier: "UTC")!
        var v = PortalVisit(resources: resources, language: language, time: PortalTime(timeZone: zone, language: language), cookies: cookies)
        var response: Response
        do {
            if let token = request.cookies[Self.sessionCookie]?.value, !token.isEmpty, var session = try await store.session(token: token, touch: touch) {
                // As the API's staff routes: an outside witness reads the custody log there, and nothing here.
                guard !session.user.isOnlyWitness else { throw BrokerError(.forbidden, v.t("role_needed_staff")) }
                session.user.address = context.remoteAddress?.ipAddress
                session.user.agent = request.headers[.userAgent].map { String($0.prefix(200)) }
                v.session = session
                v.token = token
            }
            if signedIn, v.session == nil {
                let next = request.method == .get ? request.uri.path : "/portal/"
                throw PortalRedirect(location: "/portal/sign-in?next=\(next.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(.init(charactersIn: "/-"))) ?? "")")
            }
            response = try await body(&v)
        } catch let redirect as PortalRedirect {
            response = Response(status: .seeOther, headers: [.location: redirect.location])
        } catch let e as BrokerError {
            if e.code == .unauthorized {
                response = Response(status: .seeOther, headers: [.location: "/portal/sign-in"])
            } else {
                response = errorPage(e, &v)
            }
        } catch {
            logger.error("portal page failed", metadata: ["error": "\(type(of: error))"])
            response = errorPage(BrokerError(.unavailable, "the page could not be made; try again"), &v)
        }
        PortalHeaders.page(&response.headers)
        for c in v.cookies { response.setCookie(c) }
        return response
    }

    func cookie(_ name: String, _ value: String, maxAge: Int? = nil) -> Cookie {
        Cookie(name: name, value: value, maxAge: maxAge, path: "/portal", secure: settings.secureCookies, httpOnly: true, sameSite: .strict)
    }

    func errorPage(_ e: BrokerError, _ v: inout PortalVisit) -> Response {
        var c = base(&v, title: v.t("error_\(e.code.rawValue)"), nav: "")
        c["heading"] = v.t("error_\(e.code.rawValue)")
        c["error"] = ["title": v.t("error_\(e.code.rawValue)"), "detail": e.reason]
        let html = (try? v.resources.render("error", c)) ?? e.reason
        return html200(html, status: e.code.status)
    }

    func html200(_ html: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    /// What every page's layout reads.
    func base(_ v: inout PortalVisit, title: String, nav: String) -> [String: Any] {
        var c: [String: Any] = [
            "t": v.resources.catalogs[v.language] ?? [:],
            "lang": v.language.rawValue,
            "otherLang": v.language.other.rawValue,
            "otherLangName": v.language.other.name,
            "assets": ["css": v.resources.assetURLs["css"] ?? "", "js": v.resources.assetURLs["js"] ?? ""],
            "title": title,
            "nav": [nav: true],
            "timeZone": v.time.timeZone.identifier,
        ]
        if let s = v.session {
            let roles = s.user.roles
            c["user"] = ["name": s.user.name, "roleLabel": roles.map { v.t("role_\($0.rawValue)") }.sorted().joined(separator: ", ")]
            c["csrf"] = s.csrf
            c["roles"] = [
                "investigator": roles.contains(.investigator),
                "approver": roles.contains(.approver),
                "dutyApprover": roles.contains(.dutyApprover),
                "reviewer": roles.contains(.reviewer),
                "custody": roles.contains(.auditor) || roles.contains(.admin),
                "admin": roles.contains(.admin),
            ]
            c["timeZones"] = PortalSettings.timeZones.map { ["id": $0, "selected": $0 == v.time.timeZone.identifier] as [String: Any] }
        }
        return c
    }

    /// The body of a POST, checked against the session's CSRF token (`_csrf`). Throws
    /// `.forbidden` when the token is missing or wrong.
    func form(_ request: Request, _ v: PortalVisit, limit: Int? = nil) async throws -> PortalForm {
        let type = request.headers[.contentType]?.lowercased() ?? ""
        let body: ByteBuffer
        do { body = try await request.body.collect(upTo: limit ?? api.maxBodyBytes) } catch {
            throw BrokerError(.tooLarge, "the form is larger than this server accepts")
        }
        let parsed: PortalForm
        if type.hasPrefix("multipart/form-data") {
            guard let boundary = PortalForm.dispositionParameters("x; " + (request.headers[.contentType] ?? "").split(separator: ";").dropFirst().joined(separator: ";"))["boundary"] else {
                throw BrokerError(.invalid, "a multipart form names its boundary")
            }
            parsed = try PortalForm.multipart(body, boundary: boundary)
        } else {
            parsed = try PortalForm.urlEncoded(String(buffer: body))
        }
        let expected = v.session?.csrf ?? request.cookies[Self.signInCookie]?.value ?? ""
        guard let sent = parsed.value("_csrf"), !expected.isEmpty, Self.constantTimeEqual(sent, expected) else {
            throw BrokerError(.forbidden, v.t("csrf_refused"))
        }
        return parsed
    }

    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var diff: UInt8 = 0
        for i in 0..<x.count { diff |= x[i] ^ y[i] }
        return diff == 0
    }

    /// Approving, rejecting, reviewing and exporting need a second factor younger than
    /// `PortalSignIn.secondFactorFreshness`: the form's `code` is checked when it is older. A
    /// certificate session without TOTP counts the certificate this connection presents.
    func requireSecondFactor(_ f: PortalForm, _ v: inout PortalVisit, _ context: BrokerRequestContext) async throws {
        guard let session = v.session, !session.secondFactorFresh() else { return }
        if !session.hasTOTP, session.method == "certificate" {
            guard let presented = await context.clientCertificateSha256(), presented == session.certificateSha256 else {
                throw BrokerError(.forbidden, v.t("second_factor_required"))
            }
            return
        }
        guard let code = f.value("code"), try await store.confirmSecondFactor(token: v.token!, userId: session.user.id, code: code) else {
            throw BrokerError(.forbidden, v.t("second_factor_required"))
        }
        v.session?.secondFactorAt = Date()
    }

    /// What the code field partial reads: whether to ask, and a unique id.
    func codeField(_ v: PortalVisit, _ id: String) -> [String: Any] {
        ["needsCode": !(v.session?.secondFactorFresh() ?? false) && (v.session?.hasTOTP ?? true), "formId": id]
    }

    // MARK: Sign-in

    func signInPage(_ request: Request, _ context: BrokerRequestContext, _ v: inout PortalVisit, name: String = "", next: String? = nil,
                    error: String? = nil, status: HTTPResponse.Status = .ok) async throws -> Response {
        if v.session != nil { throw PortalRedirect(location: "/portal/") }
        let token = request.cookies[Self.signInCookie]?.value ?? BrokerStore.randomToken()
        v.cookies.append(cookie(Self.signInCookie, token, maxAge: 3600))
        var c = base(&v, title: v.t("signin_title"), nav: "")
        c["signinCsrf"] = token
        c["name"] = name
        c["next"] = Self.safeNext(next ?? request.uri.queryParameters.get("next").map { String($0) })
        c["certificate"] = await context.clientCertificateSha256() != nil
        if let error { c["error"] = ["title": v.t(error), "detail": ""] }
        return html200(try v.resources.render("signin", c), status: status)
    }

    /// Only the portal's own paths are followed after sign-in (no open redirect).
    static func safeNext(_ next: String?) -> String {
        guard let next, next.hasPrefix("/portal/"), !next.hasPrefix("//"), !next.contains("\\"), next.count < 300 else { return "/portal/" }
        return next
    }

    func signIn(_ request: Request, _ context: BrokerRequestContext, _ v: inout PortalVisit) async throws -> Response {
        let f = try await form(request, v)
        let address = context.remoteAddress?.ipAddress ?? "unknown"
        func again(_ key: String, status: HTTPResponse.Status) async throws -> Response {
            try await signInPage(request, context, &v, name: String((f.value("name") ?? "").prefix(100)), next: f.value("next"), error: key, status: status)
        }
        guard await throttle.allow(address) else { return try await again("signin_throttled", status: .tooManyRequests) }
        let result = try await store.signIn(name: f.value("name") ?? "", password: f.value("password") ?? "", code: f.value("code") ?? "",
                                            address: context.remoteAddress?.ipAddress, agent: request.headers[.userAgent].map { String($0.prefix(200)) })
        switch result {
        case .success(let token):
            v.cookies.append(cookie(Self.sessionCookie, token))
            v.cookies.append(cookie(Self.signInCookie, "", maxAge: 0))
            throw PortalRedirect(location: Self.safeNext(f.value("next")))
        case .failure(.lockedOut):
            // The same answer as a wrong password: a lock-out does not tell which names exist.
            return try await again("signin_failed", status: .unauthorized)
        case .failure(.wrongCredentials):
            return try await again("signin_failed", status: .unauthorized)
        }
    }

    func signInWithCertificate(_ request: Request, _ context: BrokerRequestContext, _ v: inout PortalVisit) async throws -> Response {
        let f = try await form(request, v)
        guard let fingerprint = await context.clientCertificateSha256(),
              let token = try await store.signIn(certificateSha256: fingerprint, address: context.remoteAddress?.ipAddress,
                                                 agent: request.headers[.userAgent].map { String($0.prefix(200)) }) else {
            throw BrokerError(.forbidden, v.t("certificate_not_registered"))
        }
        v.cookies.append(cookie(Self.sessionCookie, token))
        throw PortalRedirect(location: Self.safeNext(f.value("next")))
    }
}
