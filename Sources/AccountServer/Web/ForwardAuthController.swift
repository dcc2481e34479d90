import Accounts
import Foundation
import HTTPTypes
import Habilitation
import Hummingbird
import NIOCore

/// The forward-auth endpoint (`/forward-auth`) the vendor's reverse proxy asks before every
/// request to the agenda (nginx `auth_request`, Traefik `ForwardAuth`; contract in
/// docs/forward-auth.md):
///
/// - `200` + identity headers when ``HabilitationPolicy`` holds for the session cookie;
/// - `401` + `Location` (the sign-in entry, carrying the original URL so `origin=sas`
///   survives) when there is no live session;
/// - `403` + `X-Auth-Denial` when signed in but not habilitated.
///
/// Each answer comes from one database read made for this request: nothing is cached, so a
/// withdrawal committed before the request starts is always seen.
struct ForwardAuthController: Sendable {
    let habilitation: HabilitationService
    let configuration: WebConfiguration
    let metrics: ServerMetrics

    /// The habilitation name the agenda receives.
    static let regulatorHabilitation = "regulateur"

    func addRoutes(to router: Router<WebRequestContext>) {
        // nginx's subrequest is a GET, Traefik forwards the original method: accept them all.
        for method in [HTTPRequest.Method.get, .head, .post, .put, .patch, .delete, .options] {
            router.on("forward-auth", method: method) { request, context in try await self.answer(request, context) }
        }
    }

    func answer(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let check = try await habilitation.check(sessionToken: WebCookie.value(.session, in: request.headers))
        var headers: HTTPFields = [.cacheControl: "no-store"]
        let status: HTTPResponse.Status
        let decision: String
        switch check.decision {
        case .granted:
            status = .ok
            decision = "granted"
            if let account = check.account {
                headers[.authAccountID] = account.accountID
                if let national = account.nationalID { headers[.authNationalID] = national }
                if let technical = account.sasTechnicalID { headers[.authSASTechnicalID] = technical }
            }
            headers[.authHabilitations] = Self.regulatorHabilitation
            headers[.authSessionOrigin] = SessionOrigin.sas.rawValue
        case .denied(let reasons) where check.session == nil:
            status = .unauthorized
            decision = "no-session"
            headers[.location] = signInURL(originalURL: originalURL(request))
            headers[.authDenial] = reasons.map(\.rawValue).joined(separator: ",")
        case .denied(let reasons):
            status = .forbidden
            decision = "denied"
            headers[.location] = configuration.publicURL + "/acces-refuse"
            headers[.authDenial] = reasons.map(\.rawValue).joined(separator: ",")
            if let account = check.account { headers[.authAccountID] = account.accountID }
            headers[.authSessionOrigin] = check.session?.origin.rawValue
        }
        metrics.forwardAuth(decision: decision, duration: ContinuousClock.now - started)
        if status == .ok || request.method == .head {
            return Response(status: status, headers: headers)
        }
        // A body for proxies that pass the answer on to the browser (Traefik does).
        headers[.contentType] = "text/html; charset=utf-8"
        let page = status == .unauthorized
            ? Pages.error("Connexion requise", "Connectez-vous pour accéder à cette page.", link: (headers[.location] ?? "/connexion", "Se connecter"))
            : Pages.error("Accès refusé", "Vous n’avez pas l’habilitation régulateur pour cette session.", link: (configuration.publicURL + "/acces-refuse", "Pourquoi ?"))
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: page.description)))
    }

    /// The URL the browser asked the proxy for: `X-Original-URL` (absolute), or
    /// `X-Forwarded-Proto` + `X-Forwarded-Host` + `X-Original-URI`/`X-Forwarded-Uri`.
    func originalURL(_ request: Request) -> String? {
        let headers = request.headers
        if let full = headers[.xOriginalURL], full.lowercased().hasPrefix("https://") { return full }
        guard let path = headers[.xOriginalURI] ?? headers[.xForwardedURI], path.hasPrefix("/") else { return nil }
        let scheme = headers[.xForwardedProto]?.lowercased() == "http" ? "http" : "https"
        guard let host = headers[.xForwardedHost] ?? request.head.authority, !host.isEmpty else { return nil }
        return "\(scheme)://\(host)\(path)"
    }

    /// The sign-in entry, with the original URL as `retour` when it is an allowed place to
    /// come back to (no open redirect); its `origin=sas`, if any, makes the sign-in a SAS one.
    func signInURL(originalURL: String?) -> String {
        let entry = configuration.publicURL + "/connexion"
        guard let originalURL, configuration.validatedReturnURL(originalURL) != nil else { return entry }
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return entry + "?retour=" + (originalURL.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")
    }
}

extension HTTPField.Name {
    static let authAccountID = Self("X-Auth-Account-Id")!
    static let authNationalID = Self("X-Auth-National-Id")!
    static let authSASTechnicalID = Self("X-Auth-SAS-Technical-Id")!
    static let authHabilitations = Self("X-Auth-Habilitations")!
    static let authSessionOrigin = Self("X-Auth-Session-Origin")!
    static let authDenial = Self("X-Auth-Denial")!
    static let xOriginalURL = Self("X-Original-URL")!
    static let xOriginalURI = Self("X-Original-URI")!
    static let xForwardedURI = Self("X-Forwarded-Uri")!
    static let xForwardedProto = Self("X-Forwarded-Proto")!
    static let xForwardedHost = Self("X-Forwarded-Host")!
}
