import Accounts
import Crypto
import Foundation
import HTTPTypes
import Habilitation
import Hummingbird
import Logging
import NIOCore

/// Admin listener bodies are small JSON objects or forms.
enum AdminLimits: ListenerLimits {
    static let maximumBodyBytes = 64 * 1024
}

typealias AdminRequestContext = ListenerRequestContext<AdminLimits>

/// The vendor admin's listener (`--admin-address`, loopback by default):
///
/// - `/healthz`, `/readyz`, `/metrics` without authentication (probes and Prometheus);
/// - the JSON admin API under `/api/…`: `Authorization: Bearer <token>` (the shared token of
///   `--admin-token-file`, or an admin's own from `--admin-tokens-file`: ``AdminKeyring``)
///   only, `Content-Type: application/json` on every state change, cross-site requests
///   (`Origin`, `Sec-Fetch-Site`) refused: nothing a browser sends by itself reaches it;
/// - the French admin page under `/`: the token typed once into a sign-in form opens an
///   admin session (``AdminSessions``), and every form carries a CSRF token bound to it.
///
/// Every action goes through ``VendorAdministration``, the same code as `account-server admin`.
struct AdminController: Sendable {
    let administration: VendorAdministration
    let readiness: ReadinessProbe
    let metrics: ServerMetrics
    let keyring: AdminKeyring
    let sessions: AdminSessions
    /// The regulator pages' CSRF mechanism, with its own key: the tokens of a session (its
    /// forms, and its page's address: ``pageSession(_:_:)``).
    let csrf: CSRFProtection
    /// The same for the sign-in form, under another key: its token is bound to whatever the
    /// `as-admin-csrf` cookie holds, so under the session's key a request whose CSRF cookie
    /// is a captured session id would be shown that session's token.
    let signInCSRF: CSRFProtection
    /// Whether the listener is served over TLS (cookies are then `Secure`).
    let secure: Bool
    /// Token guesses on the page, per address (the API's are bounded by the token's 256 bits
    /// alone; a page is what a person or a script hammers).
    let signInLimiter: RateLimiter
    /// Refused page sign-ins are audited at most once a minute per address: someone guessing
    /// shows in the trail, and guessing cannot grow the never-purged trail without bound.
    let refusalsAudited: RateLimiter
    /// Audit exports read on from a sequence number (`after` > 0: the next pages, a tailer's
    /// polls) are traced at most once an hour per address and filter: every one traced, a
    /// tailer's own events would be the next thing it reads, forever.
    let exportsTraced: RateLimiter
    /// A session's cookie seen without its page token is logged at most once a minute per
    /// address.
    let cookieAloneLogged: RateLimiter
    /// A `view` token's refused actions (API and page) are audited at most once a minute per
    /// admin, action and address.
    let roleRefusalsAudited: RateLimiter
    /// The API's gate, built once: its refusal budget lasts as long as the listener.
    let apiGate: AdminAPIAuthenticationMiddleware

    init(administration: VendorAdministration, readiness: ReadinessProbe, metrics: ServerMetrics, keyring: AdminKeyring, secretKey: [UInt8],
         secure: Bool, sessions: AdminSessions = AdminSessions(), limiterClock: MonotonicClock = .continuous) {
        self.signInLimiter = RateLimiter(perMinute: 10, burst: 10, maximumKeys: 10_000, clock: limiterClock)
        self.refusalsAudited = RateLimiter(perMinute: 1, burst: 1, maximumKeys: 10_000, clock: limiterClock)
        self.exportsTraced = RateLimiter(refillPerMinute: 1.0 / 60, burst: 1, maximumKeys: 10_000, clock: limiterClock)
        self.cookieAloneLogged = RateLimiter(perMinute: 1, burst: 1, maximumKeys: 10_000, clock: limiterClock)
        // A `view` token's refused actions have a budget of their own, shared by the API and
        // the page: they cannot crowd the audit of token guessing out of the other one.
        self.roleRefusalsAudited = RateLimiter(perMinute: 1, burst: 1, maximumKeys: 10_000, clock: limiterClock)
        self.apiGate = AdminAPIAuthenticationMiddleware(keyring: keyring, administration: administration,
                                                        refusalsAudited: RateLimiter(perMinute: 1, burst: 1, maximumKeys: 10_000, clock: limiterClock),
                                                        roleRefusalsAudited: roleRefusalsAudited)
        self.administration = administration
        self.readiness = readiness
        self.metrics = metrics
        self.keyring = keyring
        self.sessions = sessions
        self.secure = secure
        self.csrf = CSRFProtection(key: secretKey, publicOrigin: "", purpose: "admin-session")
        self.signInCSRF = CSRFProtection(key: secretKey, publicOrigin: "", purpose: "admin-sign-in")
    }

    func addRoutes(to router: Router<AdminRequestContext>) {
        router.get("healthz") { _, _ in Self.json(.object(["status": .string("alive")])) }
        router.get("readyz") { request, context in
            let checks = await readiness.run()
            let status: HTTPResponse.Status = checks.allSatisfy(\.ok) ? .ok : .serviceUnavailable
            // Over --admin-tls the listener may face a network: the checks' details (CRL and
            // provider errors, "revocation NOT checked", certificate expiry) go to the token's
            // holder only; a probe without it gets the verdict. A wrong token is a refusal as
            // on the API (logged, audited once a minute per address).
            if secure, AdminToken.bearer(request.headers[.authorization]).flatMap(keyring.identify) == nil {
                if request.headers[.authorization] != nil {
                    context.logger.notice("admin request refused: missing or wrong token", metadata: ["address": "\(context.clientAddress)", "path": "/readyz"])
                    if refusalsAudited.allow("admin-api missing or wrong token", client: context.clientAddress) {
                        await administration.recordAccessLogged("admin-api-refused", outcome: "missing or wrong token",
                                                                actor: AuditActor(subject: "admin-api", serial: nil, address: context.clientAddress),
                                                                requestID: context.requestID, logger: context.logger)
                    }
                }
                return Self.json(.object(["status": .string(status == .ok ? "ready" : "not ready")]), status: status)
            }
            return Self.json(ReadinessProbe.json(checks), status: status)
        }
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                     body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.scrape())))
        }

        let api = router.group("api").add(middleware: apiGate)
            .add(middleware: UnstorableInputMiddleware<AdminRequestContext>())
        api.get("accounts") { request, context in try await self.list(request, context) }
        api.get("accounts/:ref") { _, context in try await self.show(context) }
        api.post("accounts/:ref/suspend") { request, context in try await self.act("suspend", request, context) }
        api.post("accounts/:ref/restore") { request, context in try await self.act("restore", request, context) }
        api.post("accounts/:ref/revoke-sessions") { request, context in try await self.act("revoke-sessions", request, context) }
        api.post("accounts/:ref/unlock") { request, context in try await self.act("unlock", request, context) }
        api.post("accounts/:ref/reset-second-factor") { request, context in try await self.act("reset-second-factor", request, context) }
        api.post("accounts/:ref/erase") { request, context in try await self.apiErase(request, context) }
        api.get("audit") { request, context in try await self.audit(request, context) }

        router.get("/") { request, context in
            guard let session = self.pageSession(request, context) else { return self.signInPage(request, error: false) }
            return try await self.searchPage(request, context, session: session.id, identity: session.identity, notice: nil)
        }
        router.post("connexion") { request, context in try await self.signIn(request, context) }
        router.post("deconnexion") { request, context in try await self.signOut(request, context) }
        router.post("comptes/:id/suspendre") { request, context in try await self.pageAction(suspend: true, request, context) }
        router.post("comptes/:id/retablir") { request, context in try await self.pageAction(suspend: false, request, context) }
        router.post("comptes/:id/effacer") { request, context in try await self.pageErase(request, context) }
    }

    // MARK: API

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                 body: ResponseBody(byteBuffer: ByteBuffer(bytes: JSONWriter().encode(value))))
    }

    static func problem(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(.object(["error": .string(message)]), status: status)
    }

    /// Who acts, for the audit trail: `surface` (`admin-api`, `admin-page`), with the admin's
    /// name when their own token was used (`identity`, or the API gate's in the context).
    func actor(_ context: AdminRequestContext, via surface: String, as identity: AdminIdentity? = nil) -> AuditActor {
        AuditActor(subject: (identity ?? context.admin)?.subject(via: surface) ?? surface, serial: nil, address: context.clientAddress)
    }

    /// The query string, or nil when it cannot be read (a bad percent-escape, not UTF-8):
    /// answered 400 rather than read as no query, which would drop every filter and answer
    /// a filtered export with the whole list or trail.
    static func query(_ request: Request) -> QueryParameters? {
        try? QueryParameters(query: request.uri.query)
    }

    static let unreadableQuery = "the query string cannot be read (a bad percent-escape or text that is not UTF-8)"
    static let listMaximum = 1_000

    /// A search as the trail records it: the text (bounded) and the filter.
    static func searchDetail(_ text: String?, filter: AccountFilter) -> String {
        "q: \(String((text ?? "").prefix(200)).debugDescription), filter: \(filter.rawValue)"
    }

    func list(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        guard let query = Self.query(request) else { return Self.problem(.badRequest, Self.unreadableQuery) }
        guard let filter = AccountFilter(rawValue: query.first("filter") ?? "all") else {
            return Self.problem(.badRequest, "filter must be one of: \(AccountFilter.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let limit: Int
        switch query.first("limit") {
        case nil: limit = 50
        case let text?:
            guard let value = Int(text), (1...Self.listMaximum).contains(value) else {
                return Self.problem(.badRequest, "limit must be an integer from 1 to \(Self.listMaximum)")
            }
            limit = value
        }
        let now = Date()
        let accounts = try await administration.search(query.first("q"), filter: filter, limit: limit)
        try await administration.recordRead("accounts-listed", outcome: "\(accounts.count) account(s)", accountID: nil,
                                            detail: Self.searchDetail(query.first("q"), filter: filter), actor: actor(context, via: "admin-api"),
                                            requestID: context.requestID)
        return Self.json(.object(["accounts": .array(accounts.map { AdminJSON.listing($0, at: now) })]))
    }

    func show(_ context: AdminRequestContext) async throws -> Response {
        let reference = Self.reference(context)
        guard let id = try await administration.resolve(reference), let detail = try await administration.detail(accountID: id) else {
            return Self.problem(.notFound, "no account matches \(reference)")
        }
        try await administration.recordRead("account-viewed", outcome: "shown", accountID: id, detail: nil, actor: actor(context, via: "admin-api"),
                                            requestID: context.requestID)
        return Self.json(AdminJSON.detail(detail))
    }

    /// An account action's optional JSON body: `reason`, and `confirm` where the action takes
    /// it. A member the action does not read is refused, not ignored: {"motif": "…"} would
    /// otherwise act without the reason the operator believes recorded. Either the members
    /// read, or the `400` to answer.
    func actionBody(_ request: Request, _ context: AdminRequestContext, takesConfirm: Bool = false) async throws
        -> Result<(reason: String?, confirmed: Bool), ActionBodyRefusal> {
        var reason: String?
        var confirmed = false
        let body = try await request.body.collect(upTo: context.maxUploadSize)
        guard body.readableBytes > 0 else { return .success((nil, false)) }
        guard case .object(let object)? = try? JSONParser().parse(Array(body.readableBytesView)) else {
            return .failure(ActionBodyRefusal(response: Self.problem(.badRequest, "the body must be a JSON object, e.g. {\"reason\": \"…\"}")))
        }
        let members: Set<String> = takesConfirm ? ["reason", "confirm"] : ["reason"]
        if let unknown = object.keys.first(where: { !members.contains($0) }) {
            return .failure(ActionBodyRefusal(response: Self.problem(.badRequest, "unknown member \(String(unknown.prefix(64)).debugDescription): the body takes only "
                                                                     + members.sorted().map { "\"\($0)\"" }.joined(separator: " and "))))
        }
        switch object["confirm"] {
        case .bool(true)?: confirmed = true
        case nil, .bool(false)?: break
        default: return .failure(ActionBodyRefusal(response: Self.problem(.badRequest, "confirm must be true or false")))
        }
        switch object["reason"] {
        case nil, .null?: break
        case .string(let text)?:
            guard UnstorableInput.isStorable(text) else { throw UnstorableInput(part: "body") }
            reason = text
        default: return .failure(ActionBodyRefusal(response: Self.problem(.badRequest, "reason must be a string")))
        }
        return .success((reason, confirmed))
    }

    /// A refused action body: the `400` to send.
    struct ActionBodyRefusal: Error {
        let response: Response
    }

    /// `POST /api/accounts/{id}/erase`: the account id only, never an e-mail or identifier
    /// value that several (deactivated) accounts may share, and only with `{"confirm": true}`,
    /// checked before the account is looked up.
    func apiErase(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let id = Self.reference(context)
        let body: (reason: String?, confirmed: Bool)
        switch try await actionBody(request, context, takesConfirm: true) {
        case .failure(let refusal): return refusal.response
        case .success(let read): body = read
        }
        guard body.confirmed else {
            return Self.problem(.badRequest, "erase deletes the account and what it holds for good: send {\"confirm\": true}")
        }
        switch try await administration.erase(accountID: id, reason: body.reason, actor: actor(context, via: "admin-api"), requestID: context.requestID) {
        case nil: return Self.problem(.notFound, "no account with the id \(id) (erase takes the account id, nothing else)")
        case .stillActive?:
            return Self.problem(.conflict, "the SAS has this account active: only an account it deactivated (INT_R02 active:false) can be erased; nothing changed")
        case .erased(let erased, let sessions, let log)?:
            metrics.adminAction("erase")
            context.logger.notice("admin action", metadata: ["action": "erase", "account_id": "\(id)", "changed": "true", "database_log": "\(log.rawValue)"])
            return Self.json(AdminJSON.erasure(accountID: id, erased, sessions: sessions, log: log))
        }
    }

    func act(_ action: String, _ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let reference = Self.reference(context)
        let reason: String?
        switch try await actionBody(request, context) {
        case .failure(let refusal): return refusal.response
        case .success(let read): reason = read.reason
        }
        let actor = actor(context, via: "admin-api")
        guard let id = try await administration.resolve(reference) else { return Self.problem(.notFound, "no account matches \(reference)") }
        let result: AdminActionResult?
        switch action {
        case "suspend": result = try await administration.suspend(accountID: id, reason: reason, actor: actor, requestID: context.requestID)
        case "restore": result = try await administration.restore(accountID: id, reason: reason, actor: actor, requestID: context.requestID)
        case "revoke-sessions": result = try await administration.revokeSessions(accountID: id, reason: reason, actor: actor, requestID: context.requestID)
        case "reset-second-factor": result = try await administration.resetSecondFactor(accountID: id, reason: reason, actor: actor, requestID: context.requestID)
        default: result = try await administration.unlock(accountID: id, reason: reason, actor: actor, requestID: context.requestID)
        }
        guard let result else { return Self.problem(.notFound, "no account matches \(reference)") }
        if result.changed { metrics.adminAction(action) }
        context.logger.notice("admin action", metadata: ["action": "\(action)", "account_id": "\(id)", "changed": "\(result.changed)"])
        return Self.json(AdminJSON.action(action, result))
    }

    /// The audit trail as JSON lines (`application/x-ndjson`), oldest first.
    func audit(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        guard let query = Self.query(request) else { return Self.problem(.badRequest, Self.unreadableQuery) }
        var accountID: String?
        if let reference = query.first("account") {
            guard let id = try await administration.resolveInTrail(reference) else { return Self.problem(.notFound, "no account matches \(reference)") }
            accountID = id
        }
        // Bounded pages: the trail is never purged, and a whole trail held in memory at once
        // would weigh on the process that serves the regulators and forward-auth.
        let limit: Int
        switch query.first("limit") {
        case nil: limit = Self.auditPageDefault
        case let text?:
            guard let value = Int(text), (1...Self.auditPageMaximum).contains(value) else {
                return Self.problem(.badRequest, "limit must be an integer from 1 to \(Self.auditPageMaximum)")
            }
            limit = value
        }
        let after: Int64
        switch query.first("after") {
        case nil: after = 0
        case let text?:
            guard let value = Int64(text), value >= 0 else { return Self.problem(.badRequest, "after must be a sequence number (an integer, 0 or more)") }
            after = value
        }
        let events = try await administration.auditEvents(accountID: accountID, afterSeq: after, limit: limit)
        // An export from the start is always traced; its next pages and a tailer's polls at
        // most once an hour (``exportsTraced``).
        let traced = exportsTraced.allow("audit-export \(accountID ?? "all")", client: context.clientAddress)
        if after == 0 || traced {
            try await administration.recordRead("audit-exported", outcome: "\(events.count) event(s)", accountID: accountID,
                                                detail: "after \(after), limit \(limit)", actor: actor(context, via: "admin-api"), requestID: context.requestID)
        }
        var buffer = ByteBuffer()
        let writer = JSONWriter()
        for event in events {
            buffer.writeBytes(writer.encode(event.jsonValue))
            buffer.writeString("\n")
        }
        var headers: HTTPFields = [.contentType: "application/x-ndjson", .cacheControl: "no-store"]
        // A full page may have a next one: where to ask from.
        if events.count == limit, let last = events.last?.seq { headers[Self.nextAfterField] = String(last) }
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: buffer))
    }

    static let auditPageDefault = 1_000
    static let auditPageMaximum = 10_000
    static let nextAfterField = HTTPField.Name("X-Next-After")!

    /// The `:ref` path parameter, percent-decoded (`system%7Cvalue`).
    static func reference(_ context: AdminRequestContext) -> String {
        let raw = context.parameters.get("ref") ?? ""
        return raw.removingPercentEncoding ?? raw
    }

    // MARK: Page

    /// This listener's own origin as the browser addressed it: forms must come from it.
    func ownOrigin(_ request: Request) -> String {
        (secure ? "https://" : "http://") + (request.head.authority ?? "")
    }

    var formRefused: Response {
        WebController.page(Pages.error("Formulaire refusé", "Le formulaire ne provient pas de cette page. Rechargez-la et réessayez.",
                                       link: ("/", "Retour")), status: .forbidden)
    }

    /// The sign-in form; its CSRF token is bound to a random cookie (no session yet).
    func signInPage(_ request: Request, error: Bool) -> Response {
        var cookies: [String] = []
        let secret: String
        if let existing = WebCookie.value(named: AdminSessions.csrfCookie(secure: secure), in: request.headers) {
            secret = existing
        } else {
            secret = SecretToken.generate()
            cookies.append(AdminSessions.setCookie(AdminSessions.csrfCookie(secure: secure), secret, secure: secure))
        }
        return WebController.page(AdminPages.signIn(csrf: signInCSRF.token(for: secret), error: error, sharedToken: keyring.acceptsSharedToken), status: error ? .unauthorized : .ok, cookies: cookies)
    }

    func signIn(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let body = try await request.body.collect(upTo: context.maxUploadSize)
        let fields = try FormBody.parse(Array(body.readableBytesView))
        // The form's own checks first: a post another site makes the admin's browser send is
        // refused without spending the address's budget, which on the loopback listener is
        // everyone's, so such a page cannot lock the admin out of signing in. (A local process
        // can still fetch the form and spend it: local users are trusted that far.)
        guard signInCSRF.isValid(fields: request.headers, submitted: fields["csrf"],
                           boundTo: WebCookie.value(named: AdminSessions.csrfCookie(secure: secure), in: request.headers), origin: ownOrigin(request)) else {
            return formRefused
        }
        guard signInLimiter.allow("admin-sign-in", client: context.clientAddress) else {
            context.logger.notice("admin sign-in refused: too many attempts", metadata: ["address": "\(context.clientAddress)"])
            return WebController.page(Pages.error("Trop de tentatives", "Trop de tentatives depuis votre poste. Patientez une minute avant de réessayer."),
                                      status: .tooManyRequests)
        }
        guard let presented = fields["jeton"], let identity = keyring.identify(presented.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            context.logger.notice("admin sign-in refused: wrong token", metadata: ["address": "\(context.clientAddress)"])
            if refusalsAudited.allow("admin-sign-in", client: context.clientAddress) {
                await administration.recordAccessLogged("admin-sign-in", outcome: "refused wrong-token", actor: actor(context, via: "admin-page"),
                                                        requestID: context.requestID, logger: context.logger)
            }
            return signInPage(request, error: true)
        }
        // Signing in again replaces the browser's session: the one its cookie named ends.
        sessions.close(WebCookie.value(named: AdminSessions.cookie(secure: secure), in: request.headers))
        let session = sessions.open(identity)
        context.logger.notice("admin page session opened", metadata: ["address": "\(context.clientAddress)", "admin": "\(identity.name ?? "shared token")",
                                                                 "role": "\(identity.role.rawValue)"])
        await administration.recordAccessLogged("admin-sign-in", outcome: identity.role == .manage ? "accepted" : "accepted role \(identity.role.rawValue)",
                                                actor: actor(context, via: "admin-page", as: identity),
                                                requestID: context.requestID, logger: context.logger)
        return WebController.redirect(pageAddress(session: session), cookies: [AdminSessions.setCookie(AdminSessions.cookie(secure: secure), session, secure: secure)])
    }

    func signOut(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        guard let session = try await sessionForm(request, context) else { return formRefused }
        sessions.close(session.id)
        await administration.recordAccessLogged("admin-sign-out", outcome: "ok", actor: actor(context, via: "admin-page", as: session.identity),
                                                requestID: context.requestID, logger: context.logger)
        return WebController.redirect("/", cookies: [AdminSessions.setCookie(AdminSessions.cookie(secure: secure), "", secure: secure, clear: true)])
    }

    /// The form fields of a POST from a live admin session, CSRF-checked; nil: refused.
    func sessionForm(_ request: Request, _ context: AdminRequestContext) async throws -> (id: String, fields: [String: String], identity: AdminIdentity)? {
        let body = try await request.body.collect(upTo: context.maxUploadSize)
        let fields = try FormBody.parse(Array(body.readableBytesView))
        let id = WebCookie.value(named: AdminSessions.cookie(secure: secure), in: request.headers)
        // The token first: a cookie without it does not even extend the session.
        guard let id, csrf.isValid(fields: request.headers, submitted: fields["csrf"], boundTo: id, origin: ownOrigin(request)),
              let identity = liveIdentity(of: id, context) else {
            context.logger.notice("admin form refused: no session or CSRF check failed", metadata: ["address": "\(context.clientAddress)"])
            return nil
        }
        return (id, fields, identity)
    }

    /// The session a page request (a GET) belongs to: a live session cookie **and** that
    /// session's page token in the address (`csrf`, the token its forms carry). Browsers send
    /// cookies to every port of a host, so over plain HTTP on `localhost` the cookie also
    /// reaches the admin's other local services (a development server, a notebook); with the
    /// token required, whoever reads it there holds nothing usable: the page and its forms'
    /// tokens come only with the token, which only this page's own origin ever sees (no
    /// cookie, no Referer: `Referrer-Policy: no-referrer`). Nil: show the sign-in form.
    func pageSession(_ request: Request, _ context: AdminRequestContext) -> (id: String, identity: AdminIdentity)? {
        guard let cookie = WebCookie.value(named: AdminSessions.cookie(secure: secure), in: request.headers) else { return nil }
        let submitted = (try? QueryParameters(query: request.uri.query))?.first("csrf") ?? ""
        // Checked before the session is looked up: a cookie without its token does not even
        // extend the session's idle time.
        guard SecretToken.constantTimeEquals(Array(csrf.token(for: cookie).utf8), Array(submitted.utf8)) else {
            if sessions.isLive(cookie), cookieAloneLogged.allow("admin-page", client: context.clientAddress) {
                context.logger.notice("admin page: a live session's cookie without its page token (sign-in form shown)",
                                      metadata: ["address": "\(context.clientAddress)"])
            }
            return nil
        }
        return liveIdentity(of: cookie, context).map { (cookie, $0) }
    }

    /// Who the live page session `id` belongs to, while the token it was opened with holds:
    /// a session opened with a token removed since ends at its next request. The role is the
    /// one the file gives the token now.
    func liveIdentity(of id: String, _ context: AdminRequestContext) -> AdminIdentity? {
        guard let identity = sessions.validate(id) else { return nil }
        guard let current = keyring.current(identity) else {
            sessions.close(id)
            context.logger.notice("admin page session ended: the token it was opened with was removed",
                                  metadata: ["admin": "\(identity.name ?? "-")", "address": "\(context.clientAddress)"])
            return nil
        }
        return current
    }

    /// Where the page goes after a sign-in or an action: the search, with the session's page
    /// token (see ``pageSession(_:_:)``), the query kept and a message.
    func pageAddress(session: String, query: String = "", message: String? = nil) -> String {
        // ASCII only: `alphanumerics` holds é, which would go raw into the Location header.
        let allowed = CharacterSet(charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")
        var address = "/?csrf=\(csrf.token(for: session))"
        if !query.isEmpty { address += "&q=" + (query.addingPercentEncoding(withAllowedCharacters: allowed) ?? "") }
        if let message { address += "&message=\(message)" }
        return address
    }

    func searchPage(_ request: Request, _ context: AdminRequestContext, session: String, identity: AdminIdentity, notice: String?) async throws -> Response {
        // The page's search form is a GET form: its query is form-encoded ('+' is a space:
        // "Jean+Dupont" is Jean Dupont), unlike the API's.
        let fields = try FormBody.parse(Array((request.uri.query ?? "").utf8))
        let text = fields["q"] ?? ""
        let accounts = text.isEmpty ? [] : try await administration.search(text, limit: 50)
        if !text.isEmpty {
            try await administration.recordRead("accounts-listed", outcome: "\(accounts.count) account(s)", accountID: nil,
                                                detail: Self.searchDetail(text, filter: .all), actor: actor(context, via: "admin-page", as: identity),
                                                requestID: context.requestID)
        }
        let message = notice ?? fields["message"].flatMap(AdminPages.message(code:))
        return WebController.page(AdminPages.search(query: text, accounts: accounts, csrf: csrf.token(for: session), notice: message,
                                                    mayManage: identity.role == .manage))
    }

    /// A page action by a session whose token may only read: a French page, the attempt
    /// logged and audited (once a minute per admin, action and address). The role is the one
    /// read after the form's body arrived (``sessionForm(_:_:)``).
    func readOnlyRefusal(_ action: String, identity: AdminIdentity, session: String, query: String, _ context: AdminRequestContext) async -> Response {
        let id = String((context.parameters.get("id") ?? "").prefix(100))
        context.logger.notice("admin action refused: the token may only read", metadata: ["admin": "\(identity.name ?? "-")", "action": "\(action)", "via": "page"])
        // Keyed by the action, not the account: one event a minute however many ids are tried.
        if roleRefusalsAudited.allow("admin-page \(identity.name ?? "") \(action)", client: context.clientAddress) {
            await administration.recordAccessLogged("admin-action-refused", outcome: "role \(identity.role.rawValue)",
                                                    actor: actor(context, via: "admin-page", as: identity), requestID: context.requestID,
                                                    detail: "\(action) \(id)", logger: context.logger)
        }
        return WebController.page(Pages.error("Action non autorisée",
                                              "Votre jeton d’administration permet de consulter les comptes, pas de les modifier. Rien n’a été changé. "
                                              + "Demandez à l’administrateur du serveur un jeton qui le permet.",
                                              link: (pageAddress(session: session, query: query), "Retour")), status: .forbidden)
    }

    func pageAction(suspend: Bool, _ request: Request, _ context: AdminRequestContext) async throws -> Response {
        guard let (session, fields, identity) = try await sessionForm(request, context) else { return formRefused }
        guard identity.role == .manage else {
            return await readOnlyRefusal(suspend ? "suspend" : "restore", identity: identity, session: session, query: fields["q"] ?? "", context)
        }
        let id = context.parameters.get("id") ?? ""
        let actor = actor(context, via: "admin-page", as: identity)
        let result = suspend
            ? try await administration.suspend(accountID: id, reason: fields["motif"], actor: actor, requestID: context.requestID)
            : try await administration.restore(accountID: id, actor: actor, requestID: context.requestID)
        guard let result else {
            return WebController.page(Pages.error("Compte introuvable", "Ce compte n’existe pas.", link: (pageAddress(session: session, query: fields["q"] ?? ""), "Retour")), status: .notFound)
        }
        if result.changed { metrics.adminAction(suspend ? "suspend" : "restore") }
        context.logger.notice("admin action", metadata: ["action": "\(suspend ? "suspend" : "restore")", "account_id": "\(id)", "via": "page"])
        let code = suspend ? (result.changed ? "suspendu" : "deja-suspendu") : (result.changed ? "retabli" : "deja-retabli")
        return WebController.redirect(pageAddress(session: session, query: fields["q"] ?? "", message: code))
    }
}

extension AdminController {
    /// The page's erasure of an account the SAS deactivated: the word EFFACER typed in the
    /// form (any case) confirms it; anything else erases nothing and says so.
    func pageErase(_ request: Request, _ context: AdminRequestContext) async throws -> Response {
        guard let (session, fields, identity) = try await sessionForm(request, context) else { return formRefused }
        guard identity.role == .manage else { return await readOnlyRefusal("erase", identity: identity, session: session, query: fields["q"] ?? "", context) }
        let id = context.parameters.get("id") ?? ""
        let query = fields["q"] ?? ""
        guard (fields["confirmation"] ?? "").trimmingCharacters(in: .whitespaces).uppercased() == "EFFACER" else {
            return WebController.redirect(pageAddress(session: session, query: query, message: "effacement-non-confirme"))
        }
        switch try await administration.erase(accountID: id, reason: fields["motif"], actor: actor(context, via: "admin-page", as: identity), requestID: context.requestID) {
        case nil:
            return WebController.page(Pages.error("Compte introuvable", "Ce compte n’existe pas.", link: (pageAddress(session: session, query: query), "Retour")), status: .notFound)
        case .stillActive?:
            return WebController.redirect(pageAddress(session: session, query: query, message: "effacement-refuse"))
        case .erased(_, _, let log)?:
            metrics.adminAction("erase")
            context.logger.notice("admin action", metadata: ["action": "erase", "account_id": "\(id)", "via": "page", "database_log": "\(log.rawValue)"])
            let scrubbed = log == .truncated || log == .notApplicable
            return WebController.redirect(pageAddress(session: session, query: query, message: scrubbed ? "efface" : "efface-journal"))
        }
    }
}

/// On the plain-HTTP (loopback) admin listener, answers only requests addressed to a loopback
/// name (`localhost`, `127.0.0.1`, `[::1]`, any port). A DNS-rebinding page makes the admin's
/// browser reach 127.0.0.1 under the attacker's own host name, which it then cannot read
/// anything through: not `/metrics`, not `/readyz`, not the page. (Over TLS, with
/// `--admin-tls`, a rebound name fails certificate validation instead.)
struct LoopbackHostMiddleware: RouterMiddleware {
    typealias Context = AdminRequestContext

    static func isLoopbackName(_ authority: String?) -> Bool {
        guard var host = authority?.lowercased() else { return false }
        if host.hasPrefix("[") {
            guard let end = host.firstIndex(of: "]") else { return false }
            host = String(host[host.index(after: host.startIndex)..<end])
        } else if let colon = host.lastIndex(of: ":") {
            host = String(host[..<colon])
        }
        return host == "localhost" || host == "::1" || CIDR("127.0.0.0/8")!.contains(host)
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard Self.isLoopbackName(request.head.authority) else {
            context.logger.notice("admin request refused: not addressed to a loopback name", metadata: ["host": "\(request.head.authority ?? "-")"])
            return AdminController.problem(HTTPResponse.Status(code: 421, reasonPhrase: "Misdirected Request"),
                                           "the admin listener answers only requests addressed to localhost, 127.0.0.1 or [::1]")
        }
        return try await next(request, context)
    }
}

/// The admin API's gate: the admin token as a bearer token (never Basic, which browsers cache
/// and replay for any site), state changes only as `application/json` (which no cross-site
/// form can send), and nothing a browser marks as coming from another site.
struct AdminAPIAuthenticationMiddleware: RouterMiddleware {
    typealias Context = AdminRequestContext
    let keyring: AdminKeyring
    /// Where refusals for a missing or wrong token are audited, at most once a minute per
    /// address (``refusalsAudited``): someone guessing the token shows in the trail, and
    /// guessing cannot grow it unbounded.
    let administration: VendorAdministration
    let refusalsAudited: RateLimiter
    /// A `view` token's refused actions, audited once a minute per admin, route and address.
    let roleRefusalsAudited: RateLimiter

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let site = request.headers[HTTPField.Name("Sec-Fetch-Site")!], site == "cross-site" || site == "same-site" {
            context.logger.notice("admin API request refused: cross-site", metadata: ["address": "\(context.clientAddress)"])
            await auditRefusal(site, context: context)
            return AdminController.problem(.forbidden, "cross-site requests are refused")
        }
        if let origin = request.headers[.origin], origin != "http://\(request.head.authority ?? "")", origin != "https://\(request.head.authority ?? "")" {
            context.logger.notice("admin API request refused: foreign Origin", metadata: ["address": "\(context.clientAddress)"])
            await auditRefusal("foreign origin", context: context)
            return AdminController.problem(.forbidden, "requests from another origin are refused")
        }
        var context = context
        guard let presented = AdminToken.bearer(request.headers[.authorization]), var identity = keyring.identify(presented) else {
            context.logger.notice("admin request refused: missing or wrong token", metadata: ["address": "\(context.clientAddress)"])
            await auditRefusal("missing or wrong token", context: context)
            var response = AdminController.problem(.unauthorized, "a valid admin token is required (Authorization: Bearer <token>)")
            response.headers[.wwwAuthenticate] = "Bearer realm=\"account-server admin\""
            return response
        }
        var request = request
        if request.method != .get && request.method != .head {
            // Every state change of the API is an action on an account, and a `view` token
            // reads: refused whatever the request carries (its type, its body).
            guard identity.role == .manage else { return await refuseReader(identity, request, context: context) }
            let mediaType = request.headers[.contentType]?.split(separator: ";").first?.trimmingCharacters(in: .whitespaces).lowercased()
            guard mediaType == "application/json" else {
                return AdminController.problem(.unsupportedMediaType, "state changes must be sent as Content-Type: application/json")
            }
            // The body before the action, and the token looked at again once it has come: a
            // body trickled in until after `admin token role NAME view` or `remove` does not
            // act under the rights of the request's start.
            _ = try await request.collectBody(upTo: context.maxUploadSize)
            guard let now = keyring.current(identity) else {
                context.logger.notice("admin request refused: the token was removed while its body was received", metadata: ["admin": "\(identity.name ?? "-")"])
                return AdminController.problem(.unauthorized, "a valid admin token is required (Authorization: Bearer <token>)")
            }
            guard now.role == .manage else { return await refuseReader(now, request, context: context) }
            identity = now
        }
        context.admin = identity
        return try await next(request, context)
    }

    /// A `view` token's state change: `403`, logged, and audited under the admin's name at
    /// most once a minute per admin, route and address (``roleRefusalsAudited``, keyed by the
    /// route's template, not the path: a script trying every account id gets one event a
    /// minute, and its refusals have their own budget, so they cannot crowd out the audit of
    /// token guessing).
    private func refuseReader(_ identity: AdminIdentity, _ request: Request, context: Context) async -> Response {
        let route = context.endpointPath ?? "-"
        context.logger.notice("admin action refused: the token may only read", metadata: ["admin": "\(identity.name ?? "-")", "route": "\(route)"])
        if roleRefusalsAudited.allow("admin-api \(identity.name ?? "") \(route)", client: context.clientAddress) {
            await administration.recordAccessLogged("admin-action-refused", outcome: "role \(identity.role.rawValue)",
                                                    actor: AuditActor(subject: identity.subject(via: "admin-api"), serial: nil, address: context.clientAddress),
                                                    requestID: context.requestID, detail: "\(request.method) \(String(request.uri.path.prefix(200)))", logger: context.logger)
        }
        return AdminController.problem(.forbidden, "this admin token may only read (role view): ask for a token that may manage (account-server admin token role \(identity.name ?? "NAME") manage)")
    }

    /// A refusal in the trail, at most once a minute per address and reason: a hostile page
    /// driving an admin's browser at the listener (cross-site, foreign Origin) shows there as
    /// token guessing does, and neither can grow the trail unbounded (each is logged).
    private func auditRefusal(_ reason: String, context: Context) async {
        guard refusalsAudited.allow("admin-api \(reason)", client: context.clientAddress) else { return }
        await administration.recordAccessLogged("admin-api-refused", outcome: reason,
                                                actor: AuditActor(subject: "admin-api", serial: nil, address: context.clientAddress),
                                                requestID: context.requestID, logger: context.logger)
    }
}

extension VendorAdministration {
    /// ``recordAccess(_:outcome:actor:requestID:)`` whose failure is logged, never answered:
    /// a refused token stays a 401 and a sign-in stays a sign-in when the trail cannot be
    /// written (the database down), and the log keeps the line.
    func recordAccessLogged(_ action: String, outcome: String, actor: AuditActor, requestID: String?, detail: String? = nil, logger: Logger) async {
        do {
            try await recordAccess(action, outcome: outcome, actor: actor, requestID: requestID, detail: detail)
        } catch {
            logger.error("admin access not audited", metadata: ["action": "\(action)", "outcome": "\(outcome)", "error": "\(error)"])
        }
    }
}
