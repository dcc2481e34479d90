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
    let responder: ForwardAuthResponder

    func addRoutes(to router: Router<WebRequestContext>) {
        // nginx's subrequest is a GET, Traefik forwards the original method: accept them all.
        for method in [HTTPRequest.Method.get, .head, .post, .put, .patch, .delete, .options] {
            router.on("forward-auth", method: method) { request, context in try await self.answer(request, context) }
        }
    }

    func answer(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let check = try await responder.habilitation.check(sessionToken: WebCookie.value(.session, in: request.headers))
        let answer = responder.answer(check, header: { name in HTTPField.Name(name).flatMap { request.headers[$0] } },
                                      authority: request.head.authority, withBody: request.method != .head, started: started)
        var headers = HTTPFields()
        for (name, value) in answer.headers { headers.append(HTTPField(name: HTTPField.Name(name)!, value: value)) }
        return Response(status: HTTPResponse.Status(code: answer.status), headers: headers,
                        body: answer.body.map { ResponseBody(byteBuffer: ByteBuffer(string: $0)) } ?? ResponseBody())
    }
}

/// A forward-auth answer, independent of the HTTP stack that sends it.
struct ForwardAuthAnswer: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: String?
}

/// The forward-auth contract itself (docs/forward-auth.md), shared by the web listener's
/// `/forward-auth` route and the dedicated forward-auth listener.
struct ForwardAuthResponder: Sendable {
    let habilitation: HabilitationService
    let configuration: WebConfiguration
    let metrics: ServerMetrics

    /// The habilitation name the agenda receives.
    static let regulatorHabilitation = "regulateur"

    func answer(_ check: HabilitationCheck, header: (String) -> String?, authority: String?, withBody: Bool,
                started: ContinuousClock.Instant) -> ForwardAuthAnswer {
        var headers: [(String, String)] = [("Cache-Control", "no-store")]
        let status: Int
        let decision: String
        switch check.decision {
        case .granted:
            status = 200
            decision = "granted"
            if let account = check.account {
                headers.append(("X-Auth-Account-Id", account.accountID))
                if let national = account.nationalID { headers.append(("X-Auth-National-Id", national)) }
                if let technical = account.sasTechnicalID { headers.append(("X-Auth-SAS-Technical-Id", technical)) }
            }
            headers.append(("X-Auth-Habilitations", Self.regulatorHabilitation))
            headers.append(("X-Auth-Session-Origin", SessionOrigin.sas.rawValue))
        case .denied(let reasons) where check.session == nil:
            status = 401
            decision = "no-session"
            headers.append(("Location", signInURL(originalURL: originalURL(header: header, authority: authority))))
            headers.append(("X-Auth-Denial", reasons.map(\.rawValue).joined(separator: ",")))
        case .denied(let reasons) where reasons == [.directSession] && followsSASLink(originalURL(header: header, authority: authority)):
            // Signed in directly (a doctor using the agenda for their own practice), then
            // following a SAS link: a 403 would send them back to the SAS, which links here
            // again. Sign in from this SAS entry instead: it opens a SAS session (a new id).
            status = 401
            decision = "direct-session-sas-link"
            headers.append(("Location", signInURL(originalURL: originalURL(header: header, authority: authority))))
            headers.append(("X-Auth-Denial", reasons.map(\.rawValue).joined(separator: ",")))
        case .denied(let reasons):
            status = 403
            decision = "denied"
            headers.append(("Location", configuration.publicURL + "/acces-refuse"))
            headers.append(("X-Auth-Denial", reasons.map(\.rawValue).joined(separator: ",")))
            if let account = check.account { headers.append(("X-Auth-Account-Id", account.accountID)) }
            if let origin = check.session?.origin { headers.append(("X-Auth-Session-Origin", origin.rawValue)) }
        }
        metrics.forwardAuth(decision: decision, duration: ContinuousClock.now - started)
        guard status != 200, withBody else { return ForwardAuthAnswer(status: status, headers: headers, body: nil) }
        // A body for proxies that pass the answer on to the browser (Traefik does).
        headers.append(("Content-Type", "text/html; charset=utf-8"))
        let location = headers.first { $0.0 == "Location" }?.1 ?? "/connexion"
        let page = status == 401
            ? Pages.error("Connexion requise", "Connectez-vous pour accéder à cette page.", link: (location, "Se connecter"))
            : Pages.error("Accès refusé", "Vous n’avez pas l’habilitation régulateur pour cette session.", link: (location, "Pourquoi ?"))
        return ForwardAuthAnswer(status: status, headers: headers, body: page.description)
    }

    /// The URL the browser asked the proxy for: `X-Original-URL` (absolute), or
    /// `X-Forwarded-Proto` + `X-Forwarded-Host` + `X-Original-URI`/`X-Forwarded-Uri`.
    func originalURL(header: (String) -> String?, authority: String?) -> String? {
        if let full = header("X-Original-URL"), full.lowercased().hasPrefix("https://") { return full }
        guard let path = header("X-Original-URI") ?? header("X-Forwarded-Uri"), path.hasPrefix("/") else { return nil }
        let scheme = header("X-Forwarded-Proto")?.lowercased() == "http" ? "http" : "https"
        guard let host = header("X-Forwarded-Host") ?? authority, !host.isEmpty else { return nil }
        return "\(scheme)://\(host)\(path)"
    }

    /// Whether the original URL is a SAS link (an accepted `origin`) we may send the browser
    /// back to after sign-in.
    func followsSASLink(_ originalURL: String?) -> Bool {
        guard let originalURL, configuration.validatedReturnURL(originalURL) != nil else { return false }
        return configuration.acceptedOrigin(in: originalURL) != nil
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

