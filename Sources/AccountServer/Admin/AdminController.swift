import Accounts
import Crypto
import Foundation
import HTTPTypes
import Habilitation
import Hummingbird
import NIOCore

/// Admin listener bodies are small JSON objects or forms.
enum AdminLimits: ListenerLimits {
    static let maximumBodyBytes = 64 * 1024
}

typealias AdminRequestContext = ListenerRequestContext<AdminLimits>

/// The vendor admin's listener (`--admin-address`, loopback by default):
///
/// - `/healthz`, `/readyz`, `/metrics` without authentication (probes and Prometheus);
/// - the JSON admin API under `/api/…` and the French admin page under `/`, behind the token
///   of `--admin-token-file` (`Authorization: Bearer`, or Basic with the token as password so
///   a browser can use the page without any script).
///
/// Every action goes through ``VendorAdministration``, the same code as `account-server admin`.
struct AdminController: Sendable {
    let administration: VendorAdministration
    let readiness: ReadinessProbe
    let metrics: ServerMetrics
    let token: AdminToken
    /// Key of the page's CSRF token (derived from the server secret key).
    let csrfKey: SymmetricKey

    init(administration: VendorAdministration, readiness: ReadinessProbe, metrics: ServerMetrics, token: AdminToken, secretKey: [UInt8]) {
        self.administration = administration
        self.readiness = readiness
        self.metrics = metrics
        self.token = token
        self.csrfKey = SymmetricKey(data: SHA256.hash(data: secretKey + Array("admin-csrf".utf8)))
    }

    func addRoutes(to router: Router<AdminRequestContext>) {
        router.get("healthz") { _, _ in Self.json(.object(["status": .string("alive")])) }
        router.get("readyz") { _, _ in
            let checks = await readiness.run()
            return Self.json(ReadinessProbe.json(checks), status: checks.allSatisfy(\.ok) ? .ok : .serviceUnavailable)
        }
        router.get("metrics") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8", .cacheControl: "no-store"],
                     body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.scrape())))
        }

        let api = router.group("api").add(middleware: AdminAuthenticationMiddleware(token: token, realm: .bearer))
        api.get("accounts") { request, _ in try await self.list(request) }
        api.get("accounts/:ref") { _, context in try await self.show(context) }
        api.post("accounts/:ref/suspend") { request, context in try await self.act("suspend", request, context) }
        api.post("accounts/:ref/restore") { request, context in try await self.act("restore", request, context) }
        api.post("accounts/:ref/revoke-sessions") { request, context in try await self.act("revoke-sessions", request, context) }
        api.post("accounts/:ref/unlock") { request, context in try await self.act("unlock", request, context) }
        api.get("audit") { request, _ in try await self.audit(request) }

        let page = router.group().add(middleware: AdminAuthenticationMiddleware(token: token, realm: .basic))
        page.get("/") { request, _ in try await self.searchPage(request, notice: nil) }
        page.post("comptes/:id/suspendre") { request, context in try await self.pageAction(suspend: true, request, context) }
        page.post("comptes/:id/retablir") { request, context in try await self.pageAction(suspend: false, request, context) }
    }

    // MARK: API

    static func json(_ value: JSONValue, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                 body: ResponseBody(byteBuffer: ByteBuffer(bytes: JSONWriter().encode(value))))
    }

    static func problem(_ status: HTTPResponse.Status, _ message: String) -> Response {
        json(.object(["error": .string(message)]), status: status)
    }

    func actor(_ context: AdminRequestContext, via surface: String) -> AuditActor {
        AuditActor(subject: surface, serial: nil, address: context.clientAddress)
    }

    func list(_ request: Request) async throws -> Response {
        let query = (try? QueryParameters(query: request.uri.query)) ?? .empty
        guard let filter = AccountFilter(rawValue: query.first("filter") ?? "all") else {
            return Self.problem(.badRequest, "filter must be one of: \(AccountFilter.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        let limit = query.first("limit").flatMap(Int.init) ?? 50
        let now = Date()
        let accounts = try await administration.search(query.first("q"), filter: filter, limit: limit)
        return Self.json(.object(["accounts": .array(accounts.map { AdminJSON.listing($0, at: now) })]))
    }

    func show(_ context: AdminRequestContext) async throws -> Response {
        let reference = Self.reference(context)
        guard let id = try await administration.resolve(reference), let detail = try await administration.detail(accountID: id) else {
            return Self.problem(.notFound, "no account matches \(reference)")
        }
        return Self.json(AdminJSON.detail(detail))
    }

    func act(_ action: String, _ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let reference = Self.reference(context)
        var reason: String?
        let body = try await request.body.collect(upTo: context.maxUploadSize)
        if body.readableBytes > 0 {
            guard case .object(let object)? = try? JSONParser().parse(Array(body.readableBytesView)) else {
                return Self.problem(.badRequest, "the body must be a JSON object, e.g. {\"reason\": \"…\"}")
            }
            if let value = object["reason"] {
                guard case .string(let text) = value else { return Self.problem(.badRequest, "reason must be a string") }
                reason = text
            }
        }
        guard let id = try await administration.resolve(reference) else { return Self.problem(.notFound, "no account matches \(reference)") }
        let actor = actor(context, via: "admin-api")
        let result: AdminActionResult?
        switch action {
        case "suspend": result = try await administration.suspend(accountID: id, reason: reason, actor: actor)
        case "restore": result = try await administration.restore(accountID: id, actor: actor)
        case "revoke-sessions": result = try await administration.revokeSessions(accountID: id, actor: actor)
        default: result = try await administration.unlock(accountID: id, actor: actor)
        }
        guard let result else { return Self.problem(.notFound, "no account matches \(reference)") }
        if result.changed { metrics.adminAction(action) }
        context.logger.notice("admin action", metadata: ["action": "\(action)", "account_id": "\(id)", "changed": "\(result.changed)"])
        return Self.json(AdminJSON.action(action, result))
    }

    /// The audit trail as JSON lines (`application/x-ndjson`), oldest first.
    func audit(_ request: Request) async throws -> Response {
        let query = (try? QueryParameters(query: request.uri.query)) ?? .empty
        var accountID: String?
        if let reference = query.first("account") {
            guard let id = try await administration.resolve(reference) else { return Self.problem(.notFound, "no account matches \(reference)") }
            accountID = id
        }
        let events = try await administration.auditEvents(accountID: accountID, afterSeq: query.first("after").flatMap(Int64.init) ?? 0,
                                                          limit: query.first("limit").flatMap(Int.init))
        var buffer = ByteBuffer()
        let writer = JSONWriter()
        for event in events {
            buffer.writeBytes(writer.encode(event.jsonValue))
            buffer.writeString("\n")
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson", .cacheControl: "no-store"], body: ResponseBody(byteBuffer: buffer))
    }

    /// The `:ref` path parameter, percent-decoded (`system%7Cvalue`).
    static func reference(_ context: AdminRequestContext) -> String {
        let raw = context.parameters.get("ref") ?? ""
        return raw.removingPercentEncoding ?? raw
    }

    // MARK: Page

    var csrfToken: String {
        Base64URL.encode(Array(HMAC<SHA256>.authenticationCode(for: Array("admin-form".utf8), using: csrfKey)))
    }

    func searchPage(_ request: Request, notice: String?) async throws -> Response {
        let query = (try? QueryParameters(query: request.uri.query)) ?? .empty
        let text = query.first("q") ?? ""
        let accounts = text.isEmpty ? [] : try await administration.search(text, limit: 50)
        let message = notice ?? query.first("message").flatMap(AdminPages.message(code:))
        return WebController.page(AdminPages.search(query: text, accounts: accounts, csrf: csrfToken, notice: message))
    }

    func pageAction(suspend: Bool, _ request: Request, _ context: AdminRequestContext) async throws -> Response {
        let body = try await request.body.collect(upTo: context.maxUploadSize)
        let fields = FormBody.parse(Array(body.readableBytesView))
        let crossSite = request.headers[HTTPField.Name("Sec-Fetch-Site")!] == "cross-site"
        let originMismatch = request.headers[.origin].map { origin in
            origin != "null" && URLComponents(string: origin).map { "\($0.host ?? ""):\($0.port.map(String.init) ?? "")" } != Self.authority(request)
        } ?? false
        guard !crossSite, !originMismatch, let submitted = fields["csrf"],
              SecretToken.constantTimeEquals(Array(submitted.utf8), Array(csrfToken.utf8)) else {
            return WebController.page(Pages.error("Formulaire refusé", "Le formulaire ne provient pas de cette page. Rechargez-la et réessayez.",
                                                  link: ("/", "Retour")), status: .forbidden)
        }
        let id = context.parameters.get("id") ?? ""
        let actor = actor(context, via: "admin-page")
        let result = suspend
            ? try await administration.suspend(accountID: id, reason: fields["motif"], actor: actor)
            : try await administration.restore(accountID: id, actor: actor)
        guard let result else {
            return WebController.page(Pages.error("Compte introuvable", "Ce compte n’existe pas.", link: ("/", "Retour")), status: .notFound)
        }
        if result.changed { metrics.adminAction(suspend ? "suspend" : "restore") }
        context.logger.notice("admin action", metadata: ["action": "\(suspend ? "suspend" : "restore")", "account_id": "\(id)", "via": "page"])
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        let back = (fields["q"] ?? "").addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
        let code = suspend ? (result.changed ? "suspendu" : "deja-suspendu") : (result.changed ? "retabli" : "deja-retabli")
        return WebController.redirect("/?q=\(back)&message=\(code)")
    }

    /// `host:port` of the request as the browser addressed it (for the Origin check).
    static func authority(_ request: Request) -> String {
        let authority = request.head.authority ?? ""
        return authority.contains(":") ? authority : authority + ":"
    }
}

/// Refuses admin requests without the admin token. API answers 401 with
/// `WWW-Authenticate: Bearer`; the page asks the browser for Basic credentials.
struct AdminAuthenticationMiddleware: RouterMiddleware {
    typealias Context = AdminRequestContext
    enum Realm: Sendable { case bearer, basic }
    let token: AdminToken
    let realm: Realm

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        if let presented = AdminToken.presented(request.headers[.authorization]), token.matches(presented) {
            return try await next(request, context)
        }
        context.logger.notice("admin request refused: missing or wrong token", metadata: ["address": "\(context.clientAddress)"])
        switch realm {
        case .bearer:
            var response = AdminController.problem(.unauthorized, "a valid admin token is required (Authorization: Bearer <token>)")
            response.headers[.wwwAuthenticate] = "Bearer realm=\"account-server admin\""
            return response
        case .basic:
            var response = WebController.page(Pages.error("Authentification requise", "Saisissez le jeton d’administration comme mot de passe (identifiant libre).",
                                                          link: ("/", "Réessayer")), status: .unauthorized)
            response.headers[.wwwAuthenticate] = "Basic realm=\"account-server admin\", charset=\"UTF-8\""
            return response
        }
    }
}
