import Accounts
import Crypto
import Foundation
import HTTPTypes
import Habilitation
import Hummingbird
import Logging
import NIOCore

/// Settings of the web surface.
struct WebConfiguration: Sendable {
    /// The web surface's own base URL as browsers see it (links in mails, Origin checks).
    var publicURL: String
    /// `origin` values that mark a SAS redirect (`sas`; add `sas-preprod` in pre-production).
    var acceptedOrigins: Set<String>
    /// Hosts the browser may be sent back to after sign-in: `host` for the https port (443),
    /// `host:port` for another port (an origin is host and port: another port of the same
    /// host may be another service, as Keycloak matches redirect URIs port included).
    var allowedReturnHosts: Set<String>
    var cguText: String
    var cguVersion: String
    var totpIssuer: String
    /// Wrong second-factor codes one sign-in flow accepts before it ends (each also counts
    /// toward the account's lockout).
    var codeAttemptsPerFlow: Int = 3

    /// An absolute https URL on an allowed host, or a local path made absolute; nil otherwise
    /// (no open redirect, no `//host` or `user@host` tricks), and nil beyond
    /// ``maximumReturnURLLength`` (the intent, return URL included, travels sealed in a
    /// cookie, 4 kB at most in browsers; an agenda's own addresses are far shorter).
    func validatedReturnURL(_ text: String) -> String? {
        guard text.utf8.count + publicURL.utf8.count <= Self.maximumReturnURLLength else { return nil }
        if text.hasPrefix("/") && !text.hasPrefix("//") && !text.hasPrefix("/\\") {
            // RFC 3986's characters only (Foundation's parser takes a quote, a space, even a
            // line break, and encodes them itself).
            let allowed = text.utf8.allSatisfy { (0x21...0x7E).contains($0) && !Array("\"<>\\^`{|}".utf8).contains($0) }
            return allowed ? publicURL + text : nil
        }
        guard let components = URLComponents(string: text), components.scheme?.lowercased() == "https",
              let host = components.host?.lowercased(), !host.isEmpty, components.user == nil, components.password == nil else { return nil }
        let port = components.port ?? 443
        guard allowedReturnHosts.contains("\(host):\(port)") || (port == 443 && allowedReturnHosts.contains(host)),
              let url = components.string, url.utf8.count + publicURL.utf8.count <= Self.maximumReturnURLLength else { return nil }
        // (Bounded as returned: Foundation percent-encodes what it takes, a space in 3 bytes.)
        return url
    }

    static let maximumReturnURLLength = 2_048

    /// The accepted `origin` a URL's query carries, if any.
    func acceptedOrigin(in url: String) -> String? {
        guard let value = URLComponents(string: url)?.queryItems?.first(where: { $0.name == "origin" })?.value,
              acceptedOrigins.contains(value) else { return nil }
        return value
    }

    /// The origins of the allowed return hosts other than this one's, for the pages' CSP
    /// `form-action`: the sign-in's last form (code, CGU, « Continuer ») is answered with a
    /// redirect to the return URL, and browsers apply `form-action` to a form's redirects,
    /// so an agenda on another host or port was blocked right after a correct code.
    var returnOrigins: [String] {
        Set(allowedReturnHosts.map { host -> String in
            host.hasSuffix(":443") ? "https://" + host.dropLast(4) : "https://" + host
        })
        .filter { $0 != publicOrigin }
        .sorted()
    }

    var publicOrigin: String {
        guard let components = URLComponents(string: publicURL), let scheme = components.scheme, let host = components.host else { return publicURL }
        return "\(scheme)://\(host)\(components.port.map { ":\($0)" } ?? "")"
    }
}

/// The regulators' web surface: SAS entry, sign-in with two factors and the first-sign-in
/// steps, forgotten password, "Mon compte", sign-out. See docs/web.md.
struct WebController: Sendable {
    let configuration: WebConfiguration
    let credentials: CredentialStore
    let sessions: SessionStore
    let habilitation: HabilitationService
    let csrf: CSRFProtection
    let limiter: RateLimiter
    let metrics: ServerMetrics
    /// Sign-in through Pro Santé Connect, when configured (`--oidc-issuer`).
    var provider: ProviderSignIn? = nil
    let totp = TOTP()
    /// Reset requests processed after their answer (``requestReset(_:_:)``).
    let resetRequests: BackgroundWork

    func addRoutes(to router: Router<WebRequestContext>) {
        router.get("static/style.css") { _, _ in
            // The pages' headers, but cacheable for an hour: the stylesheet holds nothing
            // personal, and every page loads it.
            var headers = Self.securityHeaders
            headers[.cacheControl] = "max-age=3600"
            headers[.contentType] = "text/css; charset=utf-8"
            return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: Pages.stylesheet)))
        }
        router.get("connexion") { request, context in try await self.signInPage(request, context) }
        router.post("connexion") { request, context in try await self.signIn(request, context) }
        router.get("connexion/second-facteur") { request, context in try await self.secondFactorPage(request, context) }
        router.post("connexion/second-facteur") { request, context in try await self.secondFactor(request, context) }
        router.get("connexion/totp") { request, context in try await self.enrolPage(request, context, error: nil) }
        router.post("connexion/totp") { request, context in try await self.enrol(request, context) }
        router.post("connexion/suite") { request, context in try await self.continueFlow(request, context) }
        router.get("connexion/cgu") { request, context in try await self.cguPage(request, context, error: nil) }
        router.post("connexion/abandon") { request, context in try await self.abandonFlow(request, context) }
        router.post("connexion/cgu") { request, context in try await self.acceptCGU(request, context) }
        router.get("mot-de-passe-oublie") { request, _ in self.respond(request) { Pages.forgotPassword(csrf: $0) } }
        router.post("mot-de-passe-oublie") { request, context in try await self.requestReset(request, context) }
        router.get("reinitialisation") { request, context in try await self.resetPage(request, context) }
        router.post("reinitialisation") { request, context in try await self.reset(request, context) }
        router.get("compte") { request, context in try await self.accountPage(request, context) }
        router.post("compte/sessions/fermer-autres") { request, context in try await self.closeOtherSessions(request, context) }
        router.post("compte/sessions/fermer") { request, context in try await self.closeOneSession(request, context) }
        router.get("compte/mot-de-passe") { request, context in try await self.changePasswordPage(request, context) }
        router.post("compte/mot-de-passe") { request, context in try await self.changePassword(request, context) }
        router.get("acces-refuse") { request, context in try await self.accessRefusedPage(request, context) }
        router.post("deconnexion") { request, context in try await self.signOut(request, context) }
        if let provider { ProviderSignInController(web: self, provider: provider).addRoutes(to: router) }
    }

    // MARK: Responses

    /// A page, with the security headers every page carries, and a CSRF cookie if the browser
    /// has none yet (`render` receives the form token).
    func respond(_ request: Request, status: HTTPResponse.Status = .ok, cookies: [String] = [], _ render: (String) -> HTML) -> Response {
        var cookies = cookies
        let csrfCookie: String
        if let existing = WebCookie.value(.csrf, in: request.headers) {
            csrfCookie = existing
        } else {
            csrfCookie = SecretToken.generate()
            cookies.append(WebCookie.csrf.set(csrfCookie))
        }
        let secret = WebCookie.value(.session, in: request.headers) ?? csrfCookie
        return Self.page(render(csrf.token(for: secret)), status: status, cookies: cookies,
                         formTargets: configuration.returnOrigins + (provider?.formTargets ?? []))
    }

    /// `formTargets`: origins a form of the page may end at besides this one (the sign-in's
    /// last form is redirected to the agenda, the sign-out form of a Pro Santé Connect
    /// session to the provider, and browsers apply `form-action` to a form's redirects too).
    static func page(_ html: HTML, status: HTTPResponse.Status = .ok, cookies: [String] = [], formTargets: [String] = []) -> Response {
        var headers = securityHeaders
        if !formTargets.isEmpty {
            headers[.contentSecurityPolicy] = headers[.contentSecurityPolicy]!.replacingOccurrences(
                of: "form-action 'self'", with: "form-action 'self' " + formTargets.joined(separator: " "))
        }
        headers[.contentType] = "text/html; charset=utf-8"
        for cookie in cookies { headers.append(HTTPField(name: .setCookie, value: cookie)) }
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: html.description)))
    }

    static func redirect(_ location: String, cookies: [String] = []) -> Response {
        var headers = securityHeaders
        headers[.location] = location
        for cookie in cookies { headers.append(HTTPField(name: .setCookie, value: cookie)) }
        return Response(status: .seeOther, headers: headers)
    }

    /// The CSP source that allows ``Pages/formScript`` and nothing else.
    static let formScriptSource = "'sha256-\(Data(SHA256.hash(data: Data(Pages.formScript.utf8))).base64EncodedString())'"

    static let securityHeaders: HTTPFields = [
        .contentSecurityPolicy: "default-src 'none'; script-src \(formScriptSource); style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        .cacheControl: "no-store",
        HTTPField.Name("Referrer-Policy")!: "no-referrer",
        HTTPField.Name("X-Content-Type-Options")!: "nosniff",
        HTTPField.Name("X-Frame-Options")!: "DENY",
        .strictTransportSecurity: "max-age=31536000",
    ]

    /// The time limits the pages announce, in this deployment's values.
    var pageLimits: Pages.Limits {
        let session = sessions.configuration, lockout = credentials.configuration.lockout
        func minutes(_ interval: Double) -> Int { max(1, Int((interval / 60).rounded())) }
        return Pages.Limits(intentMinutes: minutes(session.intentLifetime), flowMinutes: minutes(session.flowLifetime),
                            idleMinutes: minutes(session.idleTimeout), absoluteHours: max(1, Int((session.absoluteTimeout / 3600).rounded())),
                            lockoutFailures: lockout.maximumFailures, lockoutMinutes: minutes(Double(lockout.coolingPeriod.components.seconds)))
    }

    func errorPage(_ status: HTTPResponse.Status, _ title: String, _ message: String) -> Response {
        Self.page(Pages.error(title, message), status: status)
    }

    var csrfRefused: Response {
        errorPage(.forbidden, "Formulaire expiré", "Le formulaire a expiré ou ne provient pas de ce site. Revenez à la page précédente, puis recommencez la saisie.")
    }

    /// Whether the request is the browser loading a page in its own window, as far as it says
    /// (`Sec-Fetch-Mode`, `Sec-Fetch-Dest`, sent by every current browser; absent from other
    /// clients, which are let through). The entry points reached from another site (the SAS
    /// link, the provider's answer) write a row and spend a per-address budget: another site's
    /// page must not be able to do that with images or frames the regulator never sees.
    static func isDocumentNavigation(_ headers: HTTPFields) -> Bool {
        if let mode = headers[secFetchMode], mode != "navigate" { return false }
        if let destination = headers[secFetchDest], destination != "document" { return false }
        // A prefetch or prerender (speculation rules another site's page can ask for) is a
        // navigation nobody made yet: the real one follows if the regulator clicks.
        for name in [secPurpose, purpose] where headers[values: name].contains(where: { $0.lowercased().contains("prefetch") || $0.lowercased().contains("prerender") }) {
            return false
        }
        return true
    }

    /// The token the links of our pages to the provider carry (`clic`), derived from the
    /// page's form token: only this browser's pages know it. It tells the regulator's click on
    /// « Se connecter avec Pro Santé Connect » from a navigation another site's page makes, in
    /// every browser (`Sec-Fetch-Site`, which says so too, is not sent by all of them). Worth
    /// nothing but that: not a form token.
    func providerClick(formToken: String) -> String { csrf.token(for: "clic-psc:" + formToken) }

    func providerClickIfConfigured(_ formToken: String) -> String? { provider == nil ? nil : providerClick(formToken: formToken) }

    /// Whether a request to the provider's start (or « sans Pro Santé Connect ») is a click on
    /// one of our pages: `Sec-Fetch-Site: same-origin` (our pages cannot navigate by
    /// themselves: their one script only stops a second submit; no framing), or this browser's
    /// click token.
    func isClickOnOurPage(_ request: Request) -> Bool {
        if request.headers[Self.secFetchSite] == "same-origin" { return true }
        guard let click = (try? QueryParameters(query: request.uri.query))?.first("clic"),
              let secret = CSRFProtection.browserSecret(request.headers) else { return false }
        return SecretToken.constantTimeEquals(Array(providerClick(formToken: csrf.token(for: secret)).utf8), Array(click.utf8))
    }

    static let secFetchSite = HTTPField.Name("Sec-Fetch-Site")!
    static let secPurpose = HTTPField.Name("Sec-Purpose")!
    static let purpose = HTTPField.Name("Purpose")!

    static let secFetchMode = HTTPField.Name("Sec-Fetch-Mode")!
    static let secFetchDest = HTTPField.Name("Sec-Fetch-Dest")!

    var notANavigation: Response {
        errorPage(.forbidden, "Requête refusée", "Cette adresse s’ouvre dans la fenêtre du navigateur, depuis un lien. Suivez à nouveau le lien.")
    }

    /// The answer to ``UnstorableInput`` on the pages, regulators' and admin's alike.
    static var unstorableInputPage: Response {
        page(Pages.error("Requête invalide", "La requête contient un caractère non autorisé. Corrigez la saisie et réessayez."), status: .badRequest)
    }

    var tooManyRequests: Response {
        errorPage(.tooManyRequests, "Trop de tentatives", "Trop de tentatives depuis votre réseau. Patientez une minute avant de réessayer.")
    }

    /// Reads a form, checking its CSRF token. nil: refused.
    func form(_ request: Request, _ context: WebRequestContext) async throws -> [String: String]? {
        // A size declared beyond the limit is answered now, not after waiting for a body that
        // may never come (the request timeout).
        if let length = request.headers[.contentLength].flatMap(Int.init), length > context.maxUploadSize {
            throw NIOTooManyBytesError(maxBytes: context.maxUploadSize)
        }
        let body = try await request.body.collect(upTo: context.maxUploadSize)
        let fields = try FormBody.parse(Array(body.readableBytesView))
        guard csrf.isValid(fields: request.headers, submitted: fields["csrf"]) else {
            context.logger.notice("form refused: CSRF check failed")
            return nil
        }
        return fields
    }

    func actor(_ context: WebRequestContext) -> AuditActor {
        AuditActor(subject: "web", serial: nil, address: context.clientAddress)
    }

    // MARK: SAS entry and sign-in

    /// The intent's origin: an accepted `origin` on this request or on the return URL.
    func acceptedOrigin(query: QueryParameters, returnURL: String?) -> String? {
        if let value = query.first("origin"), configuration.acceptedOrigins.contains(value) { return value }
        return returnURL.flatMap(configuration.acceptedOrigin(in:))
    }

    func validatedReturnURL(_ text: String) -> String? { configuration.validatedReturnURL(text) }

    func signInPage(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let query = (try? QueryParameters(query: request.uri.query)) ?? QueryParameters.empty
        let retour = query.first("retour")
        if query.first("origin") != nil || retour != nil {
            var returnURL = configuration.publicURL + "/compte"
            if let retour {
                guard let valid = validatedReturnURL(retour) else {
                    return errorPage(.badRequest, "Adresse de retour refusée", "L’adresse de retour demandée n’est pas autorisée.")
                }
                returnURL = valid
            }
            let originValue = acceptedOrigin(query: query, returnURL: returnURL)
            let origin: SessionOrigin = originValue != nil ? .sas : .direct
            var cookies: [String] = []
            // An existing session of the right kind goes straight back; a direct session
            // reached by a SAS redirect signs in again to get a SAS session, and so does one
            // that owes a step (terms of use of a new version): going back would only meet
            // the agenda's refusal again, while a sign-in leads through the step.
            if let token = WebCookie.value(.session, in: request.headers) {
                let check = try await habilitation.check(sessionToken: token)
                if let session = check.session, check.pendingActions.isEmpty, origin == .direct || session.origin == .sas {
                    return Self.redirect(returnURL)
                }
            }
            // The intent is sealed into its cookie: the entry writes nothing and spends no
            // budget, so another site's page navigating a window here in a loop fills no table
            // and locks nobody behind the address out. An image or a frame of such a page is
            // refused all the same: it would replace the cookie of a sign-in under way.
            guard Self.isDocumentNavigation(request.headers) else { return notANavigation }
            // A direct entry keeps this browser's live SAS intent: its regulator followed the
            // SAS link minutes ago, and another site's page navigating a window here in a loop
            // would otherwise turn the sign-in under way into one without the habilitation.
            if origin == .direct, intentFromCookie(request)?.origin == .sas { return Self.redirect("/connexion") }
            let intent = sessions.createIntent(LoginIntent(origin: origin, originValue: originValue, returnURL: returnURL))
            // Debug only: anyone's page can have a browser come here as often as it likes.
            context.logger.debug("login intent created", metadata: ["origin": "\(origin.rawValue)"])
            cookies.append(WebCookie.intent.set(intent, maxAge: Int(sessions.configuration.intentLifetime)))
            // With Pro Santé Connect, a SAS entry goes to the provider (silently signed in when
            // its session is live), unless this browser chose the password sign-in.
            if provider != nil, origin == .sas, WebCookie.value(.method, in: request.headers) != "mot-de-passe" {
                return Self.redirect("/connexion/psc", cookies: cookies)
            }
            return Self.redirect("/connexion", cookies: cookies)
        }
        let fromSAS = intentFromCookie(request)?.origin == .sas
        let notice: Pages.Notice? = switch query.first("fin") {
        case "expiree": .refusal("Votre connexion a expiré ou a été interrompue : reconnectez-vous. Une connexion se termine dans les \(pageLimits.flowMinutes) minutes qui suivent la saisie du mot de passe.")
        case "codes": .refusal("Trop de codes erronés : recommencez votre connexion.")
        case "deconnexion": .info("Vous êtes déconnecté(e) de l’espace régulateur.")
        default: nil
        }
        return respond(request) { Pages.signIn(csrf: $0, fromSAS: fromSAS, error: false, notice: notice, providerClick: providerClickIfConfigured($0), limits: pageLimits) }
    }

    func intentFromCookie(_ request: Request) -> LoginIntent? {
        guard let token = WebCookie.value(.intent, in: request.headers) else { return nil }
        return sessions.intent(token)
    }

    func signIn(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        // The form's own checks first: a post another site makes a regulator's browser send
        // is refused without spending the address's budget (one SAMU's, behind its NAT).
        guard let fields = try await form(request, context) else { return csrfRefused }
        guard limiter.allow("sign-in", client: context.clientAddress) else { return tooManyRequests }
        let fromSAS = intentFromCookie(request)?.origin == .sas
        if fields["sas"] == "1" && !fromSAS {
            // The page promised a SAS sign-in, but its intent ran out meanwhile (a call taken
            // on the sign-in page): signing in now would open a session without the
            // habilitation, and the regulator would find out at the agenda. Said instead,
            // before the password is looked at (nothing counted).
            return respond(request, status: .badRequest) {
                Pages.signIn(csrf: $0, fromSAS: false, error: false,
                             notice: .refusal("Le lien de la plateforme SAS a expiré. Pour disposer de l’habilitation régulateur, retournez sur la plateforme SAS et suivez à nouveau le lien ; sinon, connectez-vous ici sans l’habilitation."),
                             providerClick: providerClickIfConfigured($0), limits: pageLimits)
            }
        }
        let sessions = self.sessions
        let intentToken = WebCookie.value(.intent, in: request.headers)
        let (outcome, opened) = try await credentials.checkPassword(email: fields["email"] ?? "", password: fields["password"] ?? "",
                                                                    actor: actor(context)) { accountID, db in
            try sessions.startFlow(accountID: accountID, intentToken: intentToken, in: db)
        }
        switch outcome {
        case .accepted: metrics.signIn(result: "accepted")
        case .refused(let reason, _):
            metrics.signIn(result: reason.rawValue)
            if reason == .lockedNow { metrics.lockout() }
        }
        guard case .accepted(let accountID) = outcome, let flow = opened else {
            if case .refused(let reason, _) = outcome { context.logger.info("sign-in refused", metadata: ["reason": "\(reason.rawValue)"]) }
            return respond(request, status: .unauthorized) {
                Pages.signIn(csrf: $0, fromSAS: fromSAS, error: true, providerClick: providerClickIfConfigured($0), limits: pageLimits,
                             email: fields["email"] ?? "")
            }
        }
        let next = try await credentials.hasConfirmedTOTP(accountID: accountID) ? "/connexion/second-facteur" : "/connexion/totp"
        // No Max-Age: the flow dies with the browser session, as the session cookie does (its
        // row expires after `flowLifetime` anyway).
        return Self.redirect(next, cookies: [WebCookie.flow.set(flow)])
    }

    /// The flow of this browser, or a redirect to start again.
    func currentFlow(_ request: Request) async throws -> (token: String, accountID: String, secondFactorDone: Bool)? {
        guard let token = WebCookie.value(.flow, in: request.headers), let flow = try await sessions.flow(token) else { return nil }
        return (token, flow.accountID, flow.secondFactorDone)
    }

    var restart: Response { Self.redirect("/connexion?fin=expiree", cookies: [WebCookie.flow.clear]) }

    /// A step of a sign-in that is over: « connexion expirée », unless the browser holds a
    /// session opened within the last minute. That is the same sign-in's form sent again (a
    /// double click the pages' script did not stop, the browser having dropped the first
    /// answer, which opened the session): sent where that answer sent it.
    func restartOrResume(_ request: Request) async throws -> Response {
        try await resume(request) ?? restart
    }

    /// A sign-in step's form refused by its CSRF check: the token of the page is the previous
    /// one when the sign-in it belongs to has just ended (a new session gets a new token), so
    /// a double click on a sign-in's last button gets the same answer as its first, instead of
    /// « Formulaire expiré ». Only a redirect to where the session's own sign-in went: a post
    /// from another site gains nothing by it.
    func csrfRefusedOrResume(_ request: Request) async throws -> Response {
        try await resume(request) ?? csrfRefused
    }

    /// Where the browser's session opened within the last minute sent it, if it holds one.
    private func resume(_ request: Request) async throws -> Response? {
        guard let token = WebCookie.value(.session, in: request.headers), let recent = try await sessions.justOpened(token, within: 60) else { return nil }
        return Self.redirect(recent.returnURL ?? "/compte", cookies: [WebCookie.flow.clear])
    }

    /// The name a sign-in step shows (« Connexion de Jules MARIUS »).
    func displayName(accountID: String) async throws -> String? {
        try await AccountDirectory(database: credentials.database).snapshot(id: accountID).map { "\($0.givenName) \($0.familyName)" }
    }

    /// « Ce n’est pas vous ? Recommencer la connexion »: the flow ends (it cannot be resumed
    /// by anyone), the SAS intent stays (a SAS sign-in stays one), back to the sign-in page.
    func abandonFlow(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard try await form(request, context) != nil else { return csrfRefused }
        if let token = WebCookie.value(.flow, in: request.headers) {
            try await sessions.abandonFlow(token, reason: "restarted", actor: actor(context))
        }
        return Self.redirect("/connexion", cookies: [WebCookie.flow.clear])
    }

    /// Where a flow whose second factor is done goes if it asks for a second-factor page: on
    /// to its next step (the terms of use, or the session). A Pro Santé Connect flow (the
    /// provider's authentication stands for both factors) never sees, nor changes, the
    /// account's TOTP: enrolling one there would replace the recovery codes and clear the
    /// lockout without the mailbox a reset of the second factor requires.
    func secondFactorAlreadyDone(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        try await nextStep(request, context)
    }

    func secondFactorPage(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard let flow = try await currentFlow(request) else { return try await restartOrResume(request) }
        guard !flow.secondFactorDone else { return try await secondFactorAlreadyDone(request, context) }
        let name = try await displayName(accountID: flow.accountID)
        return respond(request) { Pages.secondFactor(csrf: $0, error: false, name: name, limits: pageLimits) }
    }

    func secondFactor(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        // The form's own checks first: a post another site makes a regulator's browser send
        // is refused without spending the address's budget (one SAMU's, behind its NAT).
        guard let fields = try await form(request, context) else { return try await csrfRefusedOrResume(request) }
        guard limiter.allow("sign-in", client: context.clientAddress) else { return tooManyRequests }
        guard let flow = try await currentFlow(request) else { return try await restartOrResume(request) }
        guard !flow.secondFactorDone else { return try await secondFactorAlreadyDone(request, context) }
        // The code is checked, and the flow records it (accepted, or one more wrong code), in
        // one transaction that first checks the flow is still open: a password reset on any
        // instance meanwhile spends nothing.
        let step = sessions.secondFactorStep(flowToken: flow.token, wrongCodesAllowed: configuration.codeAttemptsPerFlow)
        switch try await credentials.verifySecondFactor(accountID: flow.accountID, code: fields["code"] ?? "", actor: actor(context), for: step) {
        case .accepted, .alreadyDone:
            return try await nextStep(request, context)
        case .stepEnded:
            return try await restartOrResume(request)
        case .refused(let flowOpen):
            // The account's counter has counted it; the flow itself ends after a few wrong
            // codes or at once when the account is locked, back to the password step.
            guard flowOpen else {
                context.logger.info("sign-in flow ended after wrong second-factor codes")
                return Self.redirect("/connexion?fin=codes", cookies: [WebCookie.flow.clear])
            }
            let name = try await displayName(accountID: flow.accountID)
            return respond(request, status: .unauthorized) { Pages.secondFactor(csrf: $0, error: true, name: name, limits: pageLimits) }
        }
    }

    func enrolPage(_ request: Request, _ context: WebRequestContext, error: Pages.EnrolmentError?) async throws -> Response {
        guard let flow = try await currentFlow(request) else { return try await restartOrResume(request) }
        guard !flow.secondFactorDone else { return try await secondFactorAlreadyDone(request, context) }
        // This flow's own pending secret, or a new one for it: never one another flow began.
        let step = sessions.secondFactorStep(flowToken: flow.token, wrongCodesAllowed: configuration.codeAttemptsPerFlow)
        guard let secret = try await credentials.enrolmentSecret(accountID: flow.accountID, for: step) else { return try await nextStep(request, context) }  // enrolled meanwhile, or the flow ended
        let email = try await AccountDirectory(database: credentials.database).email(accountID: flow.accountID) ?? ""
        let uri = totp.provisioningURI(secret: secret, account: email, issuer: configuration.totpIssuer)
        guard let svg = QRCode.svg(uri) else { return errorPage(.internalServerError, "Erreur", "Le code QR n’a pas pu être généré. Réessayez.") }
        let name = try await displayName(accountID: flow.accountID)
        return respond(request, status: error != nil ? .unauthorized : .ok) {
            Pages.enrolTOTP(csrf: $0, qrSVG: svg, secret: Base32.encode(secret), uri: uri, error: error, name: name, limits: pageLimits)
        }
    }

    func enrol(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        // The form's own checks first: a post another site makes a regulator's browser send
        // is refused without spending the address's budget (one SAMU's, behind its NAT).
        guard let fields = try await form(request, context) else { return try await csrfRefusedOrResume(request) }
        guard limiter.allow("sign-in", client: context.clientAddress) else { return tooManyRequests }
        guard let flow = try await currentFlow(request) else { return try await restartOrResume(request) }
        let step = sessions.secondFactorStep(flowToken: flow.token, wrongCodesAllowed: configuration.codeAttemptsPerFlow)
        // Confirming the enrolment proves possession of the second factor for this sign-in:
        // the flow records it in the transaction that confirms, which first checks the flow
        // is still open (a password reset meanwhile confirms nothing). A flow whose factor is
        // already proven goes through it too: the same code sent again (a double click on
        // « Activer », a reload of the codes page) is decided there, in order with the first.
        switch try await credentials.confirmTOTPEnrolment(accountID: flow.accountID, code: fields["code"] ?? "", actor: actor(context), for: step) {
        case .confirmed(let codes):
            return respond(request) { Pages.recoveryCodes(csrf: $0, codes: codes, limits: pageLimits) }
        case .reissued(let codes):
            // The browser shows this answer, not the first: it carries the codes.
            return respond(request) { Pages.recoveryCodes(csrf: $0, codes: codes, reissued: true, limits: pageLimits) }
        case .stepEnded:
            return try await restartOrResume(request)
        case .refused:
            return try await enrolPage(request, context, error: .wrongCode)
        case .notPending:
            // Another sign-in replaced this flow's secret: the entry the regulator added is
            // dead; this flow gets a new one, and the page says to replace the entry. (A flow
            // whose factor is proven is sent on by the page instead.)
            return try await enrolPage(request, context, error: .replaced)
        case .locked:
            // As at the code step: a locked account's flow ends, back to the password step.
            try await sessions.abandonFlow(flow.token, reason: "locked", actor: actor(context))
            return Self.redirect("/connexion?fin=codes", cookies: [WebCookie.flow.clear])
        }
    }

    /// « J’ai noté mes codes, continuer »: the codes are not issued again for this flow.
    func continueFlow(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard try await form(request, context) != nil else { return try await csrfRefusedOrResume(request) }
        if let flow = try await currentFlow(request) {
            try await credentials.acknowledgeRecoveryCodes(
                accountID: flow.accountID, for: sessions.secondFactorStep(flowToken: flow.token, wrongCodesAllowed: configuration.codeAttemptsPerFlow))
        }
        return try await nextStep(request, context)
    }

    func cguPage(_ request: Request, _ context: WebRequestContext, error: Pages.CGUError?) async throws -> Response {
        guard let flow = try await currentFlow(request) else { return try await restartOrResume(request) }
        // Asked for before the second factor (a link another site opens, a bookmark): sent to
        // the step the flow is at, which goes on. Ending the flow here let any site that can
        // open a page in the regulator's browser end a sign-in under way.
        guard flow.secondFactorDone else { return try await nextStep(request, context) }
        // A withdrawn or suspended account is refused now, not shown terms to accept first.
        if try await habilitation.refusesNewSessions(accountID: flow.accountID) { return try await nextStep(request, context) }
        let name = try await displayName(accountID: flow.accountID)
        return respond(request, status: error != nil ? .badRequest : .ok) {
            Pages.cgu(csrf: $0, version: configuration.cguVersion, text: configuration.cguText, error: error, name: name, limits: pageLimits)
        }
    }

    func acceptCGU(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard let fields = try await form(request, context) else { return try await csrfRefusedOrResume(request) }
        guard let flow = try await currentFlow(request) else { return try await restartOrResume(request) }
        guard flow.secondFactorDone else { return try await nextStep(request, context) }
        if try await habilitation.refusesNewSessions(accountID: flow.accountID) { return try await nextStep(request, context) }
        // The version accepted is the one in force now, whatever the form says.
        guard fields["version"] == configuration.cguVersion else {
            // The page was shown before the version changed (or the field was altered).
            return try await cguPage(request, context, error: .versionChanged)
        }
        guard fields["accepte"] == "oui" else { return try await cguPage(request, context, error: .notChecked) }
        try await credentials.acceptCGU(accountID: flow.accountID, version: configuration.cguVersion, address: context.clientAddress, actor: actor(context))
        return try await nextStep(request, context)
    }

    /// After the second factor: the CGU if the current version is not accepted, then the
    /// session (a new id), then back where the browser came from.
    func nextStep(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard let flow = try await currentFlow(request) else { return try await restartOrResume(request) }
        guard flow.secondFactorDone else {
            return Self.redirect(try await credentials.hasConfirmedTOTP(accountID: flow.accountID) ? "/connexion/second-facteur" : "/connexion/totp")
        }
        if try await !credentials.hasAcceptedCGU(accountID: flow.accountID, version: configuration.cguVersion),
           try await !habilitation.refusesNewSessions(accountID: flow.accountID) {
            return Self.redirect("/connexion/cgu")
        }
        let opened: (token: String, origin: SessionOrigin, returnURL: String?)?
        do {
            opened = try await sessions.completeFlow(flowToken: flow.token, address: context.clientAddress,
                                                     userAgent: request.headers[.userAgent], actor: actor(context),
                                                     replacing: WebCookie.value(.session, in: request.headers),
                                                     decide: { [habilitation] in try habilitation.decisionForNewSession(accountID: $0, origin: $1, authentication: $2, in: $3) })
        } catch let refused as SignInRefused {
            // The same answer as Pro Santé Connect's for such an account: only someone holding
            // both factors learns it.
            context.logger.info("sign-in refused", metadata: ["reason": "\(refused.reason.rawValue)"])
            if let failure = refused.recordFailure {
                context.logger.error("the sign-in's refusal was not recorded", metadata: ["error": "\(failure)"])
            }
            let (title, message) = refused.reason == .deactivatedBySAS
                ? ("Habilitation retirée", "La plateforme SAS a retiré votre habilitation régulateur : aucune session n’a été ouverte.")
                : ("Habilitation suspendue", "L’éditeur a suspendu votre habilitation régulateur : aucune session n’a été ouverte.")
            return Self.page(Pages.error(title, message), status: .forbidden, cookies: [WebCookie.flow.clear])
        }
        guard let session = opened else { return try await restartOrResume(request) }
        metrics.sessionOpened(origin: session.origin.rawValue)
        context.logger.info("session opened", metadata: ["origin": "\(session.origin.rawValue)"])
        // A new form secret for after the session (its expiry, a sign-out elsewhere): the
        // token of before the sign-in is never good again.
        return Self.redirect(session.returnURL ?? "/compte", cookies: [WebCookie.session.set(session.token), WebCookie.flow.clear, WebCookie.intent.clear,
                                                                       WebCookie.csrf.set(SecretToken.generate())])
    }

    // MARK: Forgotten password

    func requestReset(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        // The form's own checks first: a post another site makes a regulator's browser send
        // is refused without spending the address's budget (one SAMU's, behind its NAT).
        guard let fields = try await form(request, context) else { return csrfRefused }
        guard limiter.allow("reset", client: context.clientAddress) else { return tooManyRequests }
        let base = configuration.publicURL
        let credentials = self.credentials, email = fields["email"] ?? "", actor = actor(context), logger = context.logger
        let work: @Sendable () async -> Void = {
            do {
                try await credentials.requestPasswordReset(email: email, makeMail: { token, account in
            OutgoingMail(recipient: account.email, subject: "Espace régulateur SAS : choisissez votre mot de passe", body: FrenchTypography.apply(toText: """
                Bonjour \(account.givenName) \(account.familyName),

                Pour choisir votre mot de passe, ouvrez ce lien (valable 30 minutes, utilisable une seule fois) :

                \(base)/reinitialisation?jeton=\(token)

                Si vous n’êtes pas à l’origine de cette demande, ignorez ce message : votre mot de passe ne change pas.
                """))
                }, actor: actor)
            } catch {
                logger.error("password reset request failed", metadata: ["error": "\(error)"])
            }
        }
        // Answered before the account is looked up, whatever the load: a known address does
        // more work (a link, a sealed mail, the outbox) than an unknown one, and on PostgreSQL
        // each statement is a round trip, so waiting for it would tell the two apart by the time
        // of the answer. A full queue drops the request (the regulator asks again).
        if !resetRequests.submit(work) {
            context.logger.warning("password reset request dropped: the queue is full")
        }
        return Self.page(Pages.forgotPasswordSent)
    }

    func resetPage(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let token = (try? QueryParameters(query: request.uri.query))?.first("jeton") ?? ""
        guard try await credentials.accountForResetToken(token) != nil else { return Self.page(Pages.resetInvalid, status: .gone) }
        return respond(request) { Pages.resetPassword(csrf: $0, token: token, errors: []) }
    }

    func reset(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        // The form's own checks first: a post another site makes a regulator's browser send
        // is refused without spending the address's budget (one SAMU's, behind its NAT).
        guard let fields = try await form(request, context) else { return csrfRefused }
        guard limiter.allow("reset", client: context.clientAddress) else { return tooManyRequests }
        let token = fields["jeton"] ?? ""
        let password = fields["password"] ?? ""
        guard password == fields["confirmation"] else {
            return respond(request, status: .badRequest) { Pages.resetPassword(csrf: $0, token: token, errors: ["Les deux mots de passe ne sont pas identiques."]) }
        }
        switch try await credentials.resetPassword(token: token, newPassword: password, actor: actor(context)) {
        case .success:
            // The reset ended the account's own sessions and flows. The browser's, if another
            // account's (a shared workstation), end too: its cookies are cleared here, and a
            // session or flow nobody holds any more must not stay live on the server.
            if let session = WebCookie.value(.session, in: request.headers) {
                try await sessions.revoke(session, reason: .signOut, actor: actor(context))
            }
            if let flow = WebCookie.value(.flow, in: request.headers) {
                try await sessions.abandonFlow(flow, reason: "password-reset", actor: actor(context))
            }
            return Self.page(Pages.resetDone, cookies: [WebCookie.session.clear, WebCookie.flow.clear])
        case .failure(.invalidToken):
            return Self.page(Pages.resetInvalid, status: .gone)
        case .failure(.policy(let violations)):
            return respond(request, status: .badRequest) { Pages.resetPassword(csrf: $0, token: token, errors: violations.map(\.frenchMessage)) }
        }
    }

    // MARK: Account and sign-out

    func accountPage(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let token = WebCookie.value(.session, in: request.headers)
        let check = try await habilitation.check(sessionToken: token)
        guard let account = check.account, let token else { return Self.redirect("/connexion", cookies: [WebCookie.session.clear]) }
        let open = try await sessions.openSessions(of: token) ?? []
        let notice = (try? QueryParameters(query: request.uri.query))?.first("avis").flatMap { self.notice($0, session: token) }
        return respond(request) {
            Pages.account(csrf: $0, name: "\(account.givenName) \(account.familyName)", email: account.email, check: check, limits: pageLimits,
                          sessions: open, notice: notice)
        }
    }

    /// Where an action of « Mon compte » leads (post, then redirect: a reload does not send
    /// the form again, whose current password is no longer current after a change): the page,
    /// with the action's notice as `avis=CODE.MAC`, the MAC bound to the session, so that no
    /// link made elsewhere can make the page claim an action that did not happen.
    func accountAddress(notice code: String, session: String) -> String {
        "/compte?avis=\(code).\(csrf.mac("\(code) \(session)", purpose: "avis"))"
    }

    /// The notice `avis` names, if its MAC holds for this session.
    func notice(_ avis: String, session: String) -> String? {
        guard let dot = avis.firstIndex(of: ".") else { return nil }
        let code = String(avis[..<dot]), mac = String(avis[avis.index(after: dot)...])
        guard SecretToken.constantTimeEquals(Array(csrf.mac("\(code) \(session)", purpose: "avis").utf8), Array(mac.utf8)) else { return nil }
        let parts = code.split(separator: "-", maxSplits: 1)
        guard parts.count == 2, let count = Int(parts[1]), count >= 0 else { return nil }
        switch parts[0] {
        case "autres":
            return count == 0 ? "Aucune autre session n’était ouverte."
                : (count == 1 ? "Votre autre session est fermée" : "Vos \(count) autres sessions sont fermées")
                    + " : leurs navigateurs devront se reconnecter pour retrouver l’habilitation."
        case "une":
            return count == 0 ? "La session choisie n’était plus ouverte : rien n’a été fermé."
                : "La session choisie est fermée : son navigateur devra se reconnecter pour retrouver l’habilitation."
        case "mdp":
            return "Votre mot de passe est changé"
                + (count == 0 ? "" : count == 1 ? " et votre autre session est fermée" : " et vos \(count) autres sessions sont fermées")
                + ". Un courriel vous le confirme."
        default: return nil
        }
    }

    /// « Changer mon mot de passe »: the form, to a live session only.
    func changePasswordPage(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard let token = WebCookie.value(.session, in: request.headers), try await sessions.session(token) != nil else {
            return Self.redirect("/connexion", cookies: [WebCookie.session.clear])
        }
        return respond(request) { Pages.changePassword(csrf: $0, errors: []) }
    }

    /// « Changer mon mot de passe »: the current password, then the new one twice
    /// (``CredentialStore/changePassword(accountID:keepingSession:renewingSessionAs:currentPassword:newPassword:actor:notification:)``).
    func changePassword(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard let fields = try await form(request, context) else { return csrfRefused }
        guard let token = WebCookie.value(.session, in: request.headers), let session = try await sessions.session(token) else {
            return Self.redirect("/connexion", cookies: [WebCookie.session.clear])
        }
        // The address's budget, as the sign-in's: each try runs argon2.
        guard limiter.allow("password-change", client: context.clientAddress) else { return tooManyRequests }
        let newPassword = fields["password"] ?? ""
        func again(_ status: HTTPResponse.Status, _ errors: [String]) -> Response {
            respond(request, status: status) { Pages.changePassword(csrf: $0, errors: errors) }
        }
        guard newPassword == fields["confirmation"] else { return again(.badRequest, ["Les deux nouveaux mots de passe ne sont pas identiques."]) }
        let base = configuration.publicURL
        let renewed = SecretToken.generate()
        let outcome = try await credentials.changePassword(
            accountID: session.accountID, keepingSession: SecretToken.hash(token), renewingSessionAs: SecretToken.hash(renewed),
            currentPassword: fields["actuel"] ?? "", newPassword: newPassword,
            actor: actor(context), notification: { account, at in
                OutgoingMail(recipient: account.email, subject: "Espace régulateur SAS : votre mot de passe a été changé", body: FrenchTypography.apply(toText: """
                    Bonjour \(account.givenName) \(account.familyName),

                    Le mot de passe de votre compte de l’espace régulateur a été changé le \(Pages.dateAndTime(at)) (heure de Paris), depuis « Mon compte ». Vos autres sessions ont été fermées.

                    Si vous n’êtes pas à l’origine de ce changement, choisissez sans attendre un nouveau mot de passe avec « Mot de passe oublié » (\(base)/mot-de-passe-oublie) et prévenez l’éditeur de votre agenda.
                    """))
            })
        switch outcome {
        case .changed(let others):
            context.logger.notice("password changed by its holder", metadata: ["other_sessions": "\(others)"])
            // The session goes on under a new id: a cookie of it that leaked holds nothing now.
            return Self.redirect(accountAddress(notice: "mdp-\(others)", session: renewed), cookies: [WebCookie.session.set(renewed)])
        case .wrongCurrentPassword:
            context.logger.info("password change refused: wrong current password", metadata: ["account_id": "\(session.accountID)"])
            return again(.unauthorized, ["Le mot de passe actuel est incorrect. Chaque erreur compte, comme à la connexion : après plusieurs erreurs, le compte est bloqué pour un temps."])
        case .changedMeanwhile:
            return again(.conflict, ["Votre mot de passe vient d’être changé ailleurs (un autre onglet ?) pendant la vérification : rien n’a été compté ni changé ici. Rouvrez « Mon compte »."])
        case .locked(let now):
            if now { metrics.lockout() }
            context.logger.info("password change refused: account locked", metadata: ["account_id": "\(session.accountID)", "locked_now": "\(now)"])
            return again(.forbidden, ["Trop d’erreurs : votre compte est bloqué pour un temps, et votre mot de passe n’a pas changé. Réessayez plus tard, ou choisissez un nouveau mot de passe avec « Mot de passe oublié »."])
        case .suspended:
            return again(.forbidden, ["L’éditeur a suspendu l’habilitation de ce compte : son mot de passe ne peut pas être changé. Contactez l’éditeur de votre agenda."])
        case .resetRequired:
            return again(.forbidden, ["Le mot de passe de ce compte doit être choisi par un lien envoyé par courriel : utilisez « Mot de passe oublié ». Rien n’a été compté."])
        case .deactivated:
            return again(.forbidden, ["La plateforme SAS a désactivé ce compte : son mot de passe ne peut pas être changé."])
        case .policy(let violations):
            return again(.badRequest, violations.map(\.frenchMessage))
        case .sessionEnded:
            return Self.redirect("/connexion", cookies: [WebCookie.session.clear])
        }
    }

    /// « Fermer mes autres sessions » on « Mon compte »: the regulator ends every other session
    /// of theirs (a browser left open at the regulation centre, one they do not recognise) and
    /// every sign-in of theirs under way, keeping this one (``SessionStore/revokeOtherSessions(keeping:actor:)``).
    func closeOtherSessions(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard try await form(request, context) != nil else { return csrfRefused }
        guard let token = WebCookie.value(.session, in: request.headers),
              let ended = try await sessions.revokeOtherSessions(keeping: token, actor: actor(context)) else {
            return Self.redirect("/connexion", cookies: [WebCookie.session.clear])
        }
        context.logger.notice("other sessions ended by their holder", metadata: ["sessions": "\(ended)"])
        return Self.redirect(accountAddress(notice: "autres-\(ended)", session: token))
    }

    /// « Fermer cette autre session » on « Mon compte »: one other session of the regulator's, named
    /// by the reference the page lists (``SessionStore/revokeOtherSession(reference:keeping:actor:)``).
    func closeOneSession(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard let fields = try await form(request, context) else { return csrfRefused }
        guard let token = WebCookie.value(.session, in: request.headers),
              let ended = try await sessions.revokeOtherSession(reference: fields["session"] ?? "", keeping: token, actor: actor(context)) else {
            return Self.redirect("/connexion", cookies: [WebCookie.session.clear])
        }
        if ended { context.logger.notice("a session ended by its holder from another") }
        return Self.redirect(accountAddress(notice: "une-\(ended ? 1 : 0)", session: token))
    }

    /// The page a proxy shows after a 403 from forward-auth (403 itself unless the session is
    /// in fact habilitated).
    func accessRefusedPage(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let check = try await habilitation.check(sessionToken: WebCookie.value(.session, in: request.headers))
        return respond(request, status: check.decision.isGranted ? .ok : .forbidden) { Pages.accessRefused(csrf: $0, check: check) }
    }

    func signOut(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        guard try await form(request, context) != nil else { return csrfRefused }
        var sealedIDToken: [UInt8]?
        if let token = WebCookie.value(.session, in: request.headers) { sealedIDToken = try await sessions.revoke(token, reason: .signOut, actor: actor(context)) }
        // A sign-in under way in this browser ends too (a step left open, the terms of use
        // of a new version for instance, would otherwise be there for the next person to
        // finish), and the SAS intent goes with it: signing out forgets this browser's all.
        if let flow = WebCookie.value(.flow, in: request.headers) {
            try await sessions.abandonFlow(flow, reason: "sign-out", actor: actor(context))
        }
        let cleared = [WebCookie.session.clear, WebCookie.csrf.clear, WebCookie.flow.clear, WebCookie.intent.clear]
        // A Pro Santé Connect session also ends at the provider (RP-initiated logout), which
        // then sends the browser to "Vous êtes déconnecté(e)".
        if let provider, let sealedIDToken {
            if let url = await provider.relyingParty.endSessionURL(
                idTokenHint: (try? provider.box.open(sealedIDToken, context: ProviderSignIn.sealContext)).map { String(decoding: $0, as: UTF8.self) },
                postLogoutRedirectURI: provider.postLogoutRedirectURI) {
                return Self.redirect(url, cookies: cleared)
            }
            // The provider's session stays: say so rather than show the usual sign-in page.
            context.logger.warning("sign-out: the Pro Santé Connect session could not be ended (no provider metadata or no end_session_endpoint)")
            return Self.redirect("/deconnexion/psc-ouverte", cookies: cleared)
        }
        // The form secret of before the sign-in goes too: a token seen then (a page, a shared
        // screen) must not be good again after the sign-out; the next page sets a new one.
        // The sign-in page then says the sign-out happened (rather than just appearing).
        return Self.redirect("/connexion?fin=deconnexion", cookies: cleared)
    }
}
