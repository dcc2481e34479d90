import Accounts
import Crypto
import Foundation
import HTTPTypes
import Habilitation
import Hummingbird
import Logging
import NIOCore
import OpenIDConnect
import Storage

/// Sign-in through Pro Santé Connect (an OpenID Connect provider): the web surface's second
/// front door. It ends where the password sign-in ends — a flow, the CGU if due, then a
/// session created from the login intent with the intent's origin and a new id — so the
/// habilitation predicate stays the only judge. See docs/sso.md.
struct ProviderSignIn: Sendable {
    let relyingParty: RelyingParty
    /// Derives each login's nonce and PKCE verifier from its `state`, so neither is stored:
    /// only the SHA-256 of the state is, and without this key it gives nothing away.
    let derivationKey: SymmetricKey
    let box: SecretBox
    /// The claim holding the national id (IDNPS): PSC's `SubjectNameID`.
    let nationalIDClaim: String
    /// Where the provider sends the browser back after its sign-out.
    let postLogoutRedirectURI: String
    /// The provider's origin, allowed as a form target (sign-out redirects there).
    let providerOrigin: String

    /// Origins the sign-out form may end at: the issuer's and, once discovery has named it,
    /// the `end_session_endpoint`'s.
    var formTargets: [String] {
        guard let other = relyingParty.endSessionOrigin, other != providerOrigin else { return [providerOrigin] }
        return [providerOrigin, other]
    }

    init(relyingParty: RelyingParty, serverKey: [UInt8], box: SecretBox, nationalIDClaim: String, postLogoutRedirectURI: String) {
        self.relyingParty = relyingParty
        self.derivationKey = HKDF<SHA256>.deriveKey(inputKeyMaterial: SymmetricKey(data: serverKey), info: Array("account-server oidc login v1".utf8),
                                                    outputByteCount: 32)
        self.box = box
        self.nationalIDClaim = nationalIDClaim
        self.postLogoutRedirectURI = postLogoutRedirectURI
        let issuer = URLComponents(string: relyingParty.configuration.issuer)
        self.providerOrigin = "\(issuer?.scheme ?? "https")://\(issuer?.host ?? "")\(issuer?.port.map { ":\($0)" } ?? "")"
    }

    /// RFC 9207 §2.4: an `iss` in the answer must be the configured issuer; without one, the
    /// answer is accepted only from a provider that does not advertise sending it.
    static func issuerAnswers(_ issuer: String?, configured: String, advertised: Bool) -> Bool {
        guard let issuer else { return !advertised }
        return issuer == configured
    }

    func derived(_ purpose: String, state: String) -> String {
        Base64URL.encode(Array(HMAC<SHA256>.authenticationCode(for: Array("\(purpose):\(state)".utf8), using: derivationKey)))
    }

    /// 43 base64url characters: the shortest verifier RFC 7636 allows, 256 bits.
    func codeVerifier(for state: String) -> String { derived("pkce", state: state) }
    func nonce(for state: String) -> String { derived("nonce", state: state) }

    static let sealContext = "oidc-id-token"
}

/// The routes of the provider sign-in, on the web listener.
struct ProviderSignInController: Sendable {
    let web: WebController
    let provider: ProviderSignIn

    func addRoutes(to router: Router<WebRequestContext>) {
        router.get("connexion/psc") { request, context in try await self.start(request, context) }
        router.get("connexion/psc/retour") { request, context in try await self.callback(request, context) }
        router.post(RouterPath(Self.backChannelLogoutPath)) { request, context in try await self.backChannelLogout(request, context) }
        // The provider's client reads JSON: another method gets a JSON 405 naming POST, not
        // the web surface's French "page not found" (HEAD: the same, without a body).
        for method in [HTTPRequest.Method.get, .head, .put, .delete, .patch, .options, .trace] {
            router.on(RouterPath(Self.backChannelLogoutPath), method: method) { request, context -> Response in
                let refusal = Self.refusal(for: HTTPError(.methodNotAllowed), context: context)
                return request.method == .head ? refusal.createHeadResponse() : refusal
            }
        }
        router.get("connexion/sans-psc") { request, _ in self.withoutProvider(request) }
        router.get("deconnexion/terminee") { request, _ in WebController.page(Pages.signedOut, cookies: []) }
        router.get("deconnexion/psc-ouverte") { request, _ in WebController.page(Pages.signedOutProviderStillOpen, cookies: []) }
    }

    var sessions: SessionStore { web.sessions }

    /// A refusal page. `pause`: for a refusal after a state of this browser was spent (the
    /// provider answered with a code): for ``automaticStartPause`` the SAS link goes to the
    /// password page, which offers Pro Santé Connect, instead of straight to the provider,
    /// and the start goes there too unless clicked on our own page. A window another site
    /// navigates to the SAS link in a loop, in a browser whose provider session is live and
    /// whose sign-in here is refused every time (no account for its national id, a withdrawn
    /// or suspended one), would otherwise have the provider answer at once each time, and
    /// each answer spend the address's callback budget and write its audit row.
    func refused(_ request: Request, _ status: HTTPResponse.Status, _ title: String, _ message: String, retry: Bool = true, pause: Bool = false) -> Response {
        web.respond(request, status: status, cookies: pause ? [WebCookie.method.set("mot-de-passe", maxAge: Self.automaticStartPause)] : []) {
            Pages.providerRefused(title, message, retry: retry, click: web.providerClick(formToken: $0))
        }
    }

    /// Seconds: see ``refused(_:_:_:_:retry:pause:)``.
    static let automaticStartPause = 3600

    /// `GET /connexion/psc`: to the provider, for this browser's intent (a direct one when it
    /// has none). The choice of the password sign-in is forgotten.
    ///
    /// The `state` is sealed (it names the intent and the login's start, ``LoginSeal``): the
    /// start writes nothing and spends no budget, so another site's page navigating a window
    /// here in a loop fills no table and locks nobody behind the address out. The callback
    /// spends the state, once it is known to be this browser's.
    func start(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        // An image or a frame would replace the intent cookie of a sign-in under way.
        guard WebController.isDocumentNavigation(request.headers) else { return web.notANavigation }
        // Not a click on our own page (the SAS link's redirect, another site's window, a
        // bookmark): a browser whose sign-in through the provider only owes the terms of use
        // goes on to them, and one the password page is chosen for (by the regulator, or for
        // a while after a refusal: ``refused(_:_:_:_:retry:pause:)``) goes there. Either way
        // the provider, whose session may be live, is not asked again for a sign-in that
        // would end the same way.
        let click = web.isClickOnOurPage(request)
        if !click {
            if let flowToken = WebCookie.value(.flow, in: request.headers), let flow = try await sessions.flow(flowToken),
               flow.secondFactorDone, flow.authentication == .psc,
               try await !web.credentials.hasAcceptedCGU(accountID: flow.accountID, version: web.configuration.cguVersion) {
                return WebController.redirect("/connexion/cgu")
            }
            if WebCookie.value(.method, in: request.headers) == "mot-de-passe" { return WebController.redirect("/connexion") }
        }
        var cookies = [WebCookie.method.clear]
        var state = WebCookie.value(.intent, in: request.headers).flatMap { sessions.createProviderLogin(intentToken: $0) }
        if state == nil, !click,
           let session = WebCookie.value(.session, in: request.headers), try await sessions.session(session) != nil {
            // No sign-in under way, a live session, and not a click on our own page (a
            // regulator taking over a shared workstation from « Connexion »): nothing to start.
            // A page of another site sending the browser here would otherwise have the
            // provider sign it in silently and replace its SAS session with a direct one.
            return WebController.redirect("/compte")
        }
        if state == nil {
            let token = sessions.createIntent(LoginIntent(origin: .direct, originValue: nil, returnURL: web.configuration.publicURL + "/compte"))
            cookies.append(WebCookie.intent.set(token, maxAge: Int(sessions.configuration.intentLifetime)))
            state = sessions.createProviderLogin(intentToken: token)
        }
        guard let state else { return web.errorPage(.internalServerError, "Erreur", "La connexion n’a pas pu commencer. Réessayez.") }
        do {
            let url = try await provider.relyingParty.authorizationURL(state: state, nonce: provider.nonce(for: state),
                                                                       codeVerifier: provider.codeVerifier(for: state))
            context.logger.info("sign-in sent to the provider")
            return WebController.redirect(url, cookies: cookies)
        } catch {
            context.logger.error("the provider is unavailable", metadata: ["error": "\(error)"])
            web.metrics.providerSignIn(result: error.label)
            return refused(request, .serviceUnavailable, "Pro Santé Connect indisponible",
                           "Pro Santé Connect ne répond pas pour le moment. Réessayez dans un instant, ou connectez-vous sans Pro Santé Connect.")
        }
    }

    /// `GET /connexion/psc/retour`: the provider's answer. Every check fails closed with a
    /// French page, and opens nothing. A `state` that is not this browser's own live login
    /// (absent, made up, expired, another browser's) is refused before anything is spent or
    /// written, with a log line and a metric: anyone's page can navigate a window here, as
    /// often as it likes. From there on, the address's budget is spent and every outcome has
    /// its audit row.
    func callback(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let timer = ProviderTimer()
        let query = (try? QueryParameters(query: request.uri.query)) ?? QueryParameters.empty
        let actor = web.actor(context)
        guard WebController.isDocumentNavigation(request.headers) else { return web.notANavigation }
        let login: ProviderLogin
        switch sessions.providerLogin(state: query.first("state") ?? "", intentToken: WebCookie.value(.intent, in: request.headers)) {
        case .unknown:
            // Debug only: anyone's page can have a browser send these, as often as it likes
            // (the metric counts them).
            context.logger.debug("provider callback refused: no state of ours, or an expired one")
            web.metrics.providerSignIn(result: "state")
            return refused(request, .badRequest, "Connexion expirée", "Cette connexion a expiré ou n’a pas été commencée ici. Recommencez.")
        case .otherBrowser:
            context.logger.debug("provider callback refused: the state is not of this browser's live intent")
            web.metrics.providerSignIn(result: "state")
            return refused(request, .badRequest, "Connexion refusée", "Cette réponse ne correspond pas à une connexion en cours dans ce navigateur. Recommencez.")
        case .accepted(let accepted):
            login = accepted
        }
        // A budget of its own, not the password's: a regulation centre behind one address
        // signing in through the provider at a shift change would spend the sign-in budget
        // twice (password page and callback) for each regulator. Only this browser's own
        // login gets here, and each redeems a code at the provider.
        guard web.limiter.allow("provider-callback", client: context.clientAddress) else { return web.tooManyRequests }
        guard try await sessions.spendProviderLogin(login) else {
            try await sessions.auditProviderSignIn(outcome: "refused: state", accountID: nil, detail: "state already used", actor: actor)
            web.metrics.providerSignIn(result: "state")
            // No pause: only this browser can present its own state (a reload while the
            // callback was slow), never another site's loop.
            return refused(request, .badRequest, "Connexion expirée", "Cette connexion a déjà été utilisée. Recommencez.")
        }
        let state = query.first("state") ?? ""
        // RFC 9207: a provider that names itself in its answer must be ours (a mix-up attack
        // has another provider's answer, or a code meant for it, arrive here), and one that
        // says it always does (Keycloak, which PSC runs) must have done so.
        let issuer = query.first("iss")
        let advertised = (try? await provider.relyingParty.providerMetadata())?.authorizationResponseIssParameterSupported == true
        if !ProviderSignIn.issuerAnswers(issuer, configured: provider.relyingParty.configuration.issuer, advertised: advertised) {
            try await sessions.auditProviderSignIn(outcome: "refused: issuer", accountID: nil,
                                                   detail: issuer.map { "answer from issuer \(String($0.prefix(200)).debugDescription)" }
                                                       ?? "answer without iss from a provider that advertises it", actor: actor)
            web.metrics.providerSignIn(result: "issuer")
            return refused(request, .badRequest, "Connexion refusée", "Cette réponse ne vient pas de Pro Santé Connect. Recommencez la connexion.", pause: true)
        }
        if let error = query.first("error") {
            let code = String(error.prefix(64))
            try await sessions.auditProviderSignIn(outcome: "refused: provider-error", accountID: nil, detail: "provider answered error \(code)", actor: actor)
            web.metrics.providerSignIn(result: "provider-error")
            return refused(request, .unauthorized, "Connexion interrompue", "La connexion avec Pro Santé Connect n’a pas abouti. Vous pouvez réessayer, ou vous connecter sans Pro Santé Connect.", pause: true)
        }
        guard let code = query.first("code"), !code.isEmpty else {
            try await sessions.auditProviderSignIn(outcome: "refused: no-code", accountID: nil, detail: "callback without code", actor: actor)
            web.metrics.providerSignIn(result: "no-code")
            return refused(request, .badRequest, "Connexion refusée", "La réponse de Pro Santé Connect est incomplète. Recommencez la connexion.", pause: true)
        }

        let identity: (token: IDToken, nationalID: String?, claims: ClaimSet)
        do {
            let tokens = try await provider.relyingParty.redeem(code: code, codeVerifier: provider.codeVerifier(for: state), timer: timer)
            let idToken = try await provider.relyingParty.validateIDToken(tokens.idToken, nonce: provider.nonce(for: state), timer: timer)
            var claims = idToken.claims
            if let accessToken = tokens.accessToken {
                claims = try await provider.relyingParty.userinfo(accessToken: accessToken, subject: idToken.subject, timer: timer)
            }
            identity = (idToken, claims.string(provider.nationalIDClaim) ?? idToken.claims.string(provider.nationalIDClaim), claims)
        } catch {
            context.logger.notice("provider sign-in refused", metadata: ["reason": "\(error)"])
            try await sessions.auditProviderSignIn(outcome: "refused: \(error.label)", accountID: nil, detail: error.description, actor: actor)
            web.metrics.providerSignIn(result: error.label)
            return refused(request, .unauthorized, "Connexion refusée", "La réponse de Pro Santé Connect n’a pas pu être vérifiée. Aucune session n’a été ouverte. Recommencez la connexion.", pause: true)
        }
        let claimsUsed = "\(provider.nationalIDClaim)=\(identity.nationalID ?? "absent"), sub=\(identity.token.subject), acr=\(identity.token.acr ?? "absent")"
        guard let nationalID = identity.nationalID, !nationalID.isEmpty else {
            try await sessions.auditProviderSignIn(outcome: "refused: no-national-id", accountID: nil, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "no-national-id")
            return refused(request, .forbidden, "Compte introuvable", "Pro Santé Connect n’a pas transmis votre identifiant national. Connectez-vous sans Pro Santé Connect.", retry: false, pause: true)
        }
        let sealed = try? provider.box.seal(Array(identity.token.raw.utf8), context: ProviderSignIn.sealContext)
        // One transaction: the account match, the check that the provider has not ended this
        // session meanwhile (back-channel logout), the flow and, when the CGU in force is
        // accepted, the session (from the intent: its origin, a new id), as the password
        // sign-in's last step makes it.
        let habilitation = web.habilitation
        let opened = try await sessions.startProviderFlow(
            match: { db in try habilitation.providerAccount(nationalID: nationalID, in: db) },
            login: login,
            identity: ProviderIdentity(subject: identity.token.subject, sessionID: identity.token.sessionID, sealedIDToken: sealed,
                                       authenticatedAt: identity.token.authenticatedAt),
            auditDetail: claimsUsed, actor: actor,
            completeIf: { accountID, db in try habilitation.hasAcceptedCGU(accountID: accountID, in: db) },
            address: context.clientAddress, userAgent: request.headers[.userAgent],
            replacing: WebCookie.value(.session, in: request.headers),
            decide: { try habilitation.decisionForNewSession(accountID: $0, origin: $1, authentication: $2, in: $3) })
        let response: Response
        switch opened {
        case .refused(.unknown), .refused(.eligible):  // (eligible opens: never refused)
            try await sessions.auditProviderSignIn(outcome: "refused: unknown-national-id", accountID: nil, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "unknown-national-id")
            return refused(request, .forbidden, "Compte introuvable",
                           "Aucun compte régulateur ne correspond à votre identifiant national. Si votre compte a été créé avec un identifiant technique SAS, connectez-vous sans Pro Santé Connect.",
                           retry: false, pause: true)
        case .refused(.deactivatedBySAS(let id)):
            try await sessions.auditProviderSignIn(outcome: "refused: deactivated-by-sas", accountID: id, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "deactivated-by-sas")
            return refused(request, .forbidden, "Habilitation retirée", "La plateforme SAS a retiré votre habilitation régulateur : aucune session n’a été ouverte.", retry: false, pause: true)
        case .refused(.suspendedByVendor(let id)):
            try await sessions.auditProviderSignIn(outcome: "refused: suspended-by-vendor", accountID: id, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "suspended-by-vendor")
            return refused(request, .forbidden, "Habilitation suspendue", "L’éditeur a suspendu votre habilitation régulateur : aucune session n’a été ouverte.", retry: false, pause: true)
        case .loggedOutAtProvider(let id):
            try await sessions.auditProviderSignIn(outcome: "refused: logged-out-at-provider", accountID: id, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "logged-out-at-provider")
            return refused(request, .unauthorized, "Session Pro Santé Connect terminée",
                           "Votre session Pro Santé Connect a pris fin pendant la connexion : aucune session n’a été ouverte. Recommencez la connexion.", pause: true)
        case .reauthenticationRequired(let id, let endedAt):
            return try await reauthenticate(request, context, accountID: id, endedAt: endedAt, login: login,
                                            authenticatedAt: identity.token.authenticatedAt, claimsUsed: claimsUsed, actor: actor)
        case .opened(_, let session?):
            web.metrics.sessionOpened(origin: session.origin.rawValue)
            context.logger.info("session opened", metadata: ["origin": "\(session.origin.rawValue)"])
            response = WebController.redirect(session.returnURL ?? "/compte", cookies: [
                WebCookie.session.set(session.token), WebCookie.flow.clear, WebCookie.intent.clear, WebCookie.method.clear,
                WebCookie.csrf.set(SecretToken.generate()),
            ])
        case .opened(let flowToken, nil):
            response = WebController.redirect("/connexion/cgu", cookies: [
                WebCookie.flow.set(flowToken), WebCookie.method.clear,
            ])
        }
        let own = ContinuousClock.now - started - timer.elapsed
        web.metrics.providerSignIn(result: "accepted")
        web.metrics.providerCallback(own: own, provider: timer.elapsed)
        context.logger.info("provider sign-in accepted", metadata: [
            "own_ms": "\(Self.milliseconds(own))", "provider_ms": "\(Self.milliseconds(timer.elapsed))",
        ])
        return response
    }

    /// A session opened through this provider session was ended here remotely since the
    /// provider last authenticated the user (``ProviderFlowStart/reauthenticationRequired(accountID:endedAt:)``):
    /// the browser goes back to the provider, asked to authenticate the user again
    /// (`prompt=login`, and `max_age` so that an answer from before the end cannot come
    /// back), under a new state of the same intent. A browser already sent back for this
    /// gets a refusal instead: a provider that ignores the request would otherwise bounce
    /// it between us and the provider until the address's budget ran out.
    func reauthenticate(_ request: Request, _ context: WebRequestContext, accountID: String, endedAt: Date, login: ProviderLogin,
                        authenticatedAt: Date?, claimsUsed: String, actor: AuditActor) async throws -> Response {
        let ended = AuditLog.timestamp(endedAt), authenticated = authenticatedAt.map(AuditLog.timestamp) ?? "absent"
        let detail = "\(claimsUsed), auth_time=\(authenticated); a session of this provider session was ended here remotely at \(ended)"
        if login.reauthenticationAsked {
            try await sessions.auditProviderSignIn(outcome: "refused: not-reauthenticated", accountID: accountID,
                                                   detail: detail + "; the provider did not authenticate the user again", actor: actor)
            web.metrics.providerSignIn(result: "not-reauthenticated")
            return refused(request, .unauthorized, "Nouvelle identification requise",
                           "Une session ouverte avec Pro Santé Connect dans ce navigateur a été fermée à distance, et Pro Santé Connect ne vous a pas demandé de vous identifier à nouveau : aucune session n’a été ouverte. Recommencez la connexion, ou connectez-vous sans Pro Santé Connect.",
                           pause: true)
        }
        guard let intentToken = WebCookie.value(.intent, in: request.headers),
              let state = sessions.createProviderLogin(intentToken: intentToken, reauthentication: true) else {
            return refused(request, .badRequest, "Connexion expirée", "Cette connexion a expiré. Recommencez.")
        }
        let url: String
        do {
            // Whole seconds since the end, rounded down: an authentication at the end's
            // second or before is too old (the provider's clock decides, as for any max_age).
            let age = Int(max(0, Date().timeIntervalSince(endedAt)).rounded(.down))
            url = try await provider.relyingParty.authorizationURL(state: state, nonce: provider.nonce(for: state), codeVerifier: provider.codeVerifier(for: state),
                                                                   maximumAuthenticationAge: age)
        } catch {
            context.logger.error("the provider is unavailable", metadata: ["error": "\(error)"])
            web.metrics.providerSignIn(result: error.label)
            return refused(request, .serviceUnavailable, "Pro Santé Connect indisponible",
                           "Pro Santé Connect ne répond pas pour le moment. Réessayez dans un instant, ou connectez-vous sans Pro Santé Connect.")
        }
        try await sessions.auditProviderSignIn(outcome: "reauthentication-asked", accountID: accountID,
                                               detail: detail + "; the provider is asked to authenticate the user again", actor: actor)
        web.metrics.providerSignIn(result: "reauthentication-asked")
        context.logger.info("sign-in sent back to the provider to authenticate the user again")
        // The pause of a refusal (``refused(_:_:_:_:retry:pause:)``): another site navigating
        // this browser to the SAS link in a loop would otherwise have each round come back
        // here from the provider, spending the address's callback budget and an audit row,
        // where before the first round opened a session and stopped it. A session opened
        // after the new authentication clears it.
        return WebController.redirect(url, cookies: [WebCookie.method.set("mot-de-passe", maxAge: Self.automaticStartPause)])
    }

    /// The back-channel logout endpoint's route: its refusals are JSON, also those the web
    /// surface's middleware makes (``WebErrorMiddleware``, which compares the matched route,
    /// so `//connexion/…` and a trailing `/` are the endpoint too), since its client is the
    /// provider.
    static let backChannelLogoutPath = "/connexion/psc/backchannel-logout"

    /// The endpoint's refusal of a request (OpenID Connect Back-Channel Logout 1.0, section
    /// 2.8: a 400, with an OAuth 2.0 error code); why is logged, never answered.
    static var invalidLogoutRequest: Response { logoutAnswer(.badRequest, error: "invalid_request") }

    static func logoutAnswer(_ status: HTTPResponse.Status, error: String) -> Response {
        Response(status: status, headers: [.cacheControl: "no-store", .contentType: "application/json"],
                 body: .init(byteBuffer: .init(string: #"{"error":"\#(error)"}"#)))
    }

    /// What the endpoint answers when something around its handler refuses the request (a NUL
    /// the router-level check found, a body past 64 KiB, the database down): JSON with an
    /// OAuth 2.0 error code, as its own refusals, never the web surface's French page. A 503
    /// carries `Retry-After`, so a provider that retries knows when (a logout token whose
    /// first delivery did commit is then refused as already used: its sessions are ended).
    static func refusal(for error: any Error, context: WebRequestContext) -> Response {
        switch error {
        case let error as UnstorableInput:
            context.logger.notice("back-channel logout refused: U+0000 in its \(error.part)")
            return invalidLogoutRequest
        case let error as HTTPError where error.status == .contentTooLarge:
            context.logger.notice("back-channel logout refused: body larger than 64 KiB")
            return logoutAnswer(.contentTooLarge, error: "invalid_request")
        case is NIOTooManyBytesError:
            context.logger.notice("back-channel logout refused: body larger than 64 KiB")
            return logoutAnswer(.contentTooLarge, error: "invalid_request")
        case let error as HTTPError where error.status == .methodNotAllowed:
            // Debug: anyone can send these (crawlers probing the address), at no cost.
            context.logger.debug("back-channel logout refused: not a POST")
            var response = logoutAnswer(.methodNotAllowed, error: "invalid_request")
            response.headers[.allow] = "POST"
            return response
        case let error as HTTPError where (400..<500).contains(error.status.code):
            context.logger.notice("back-channel logout refused", metadata: ["status": "\(error.status.code)"])
            return invalidLogoutRequest
        case let error as HTTPError where error.status == .serviceUnavailable:
            context.logger.error("back-channel logout: service unavailable")
            var response = logoutAnswer(.serviceUnavailable, error: "temporarily_unavailable")
            response.headers[.retryAfter] = "5"
            return response
        case let error as HTTPError:
            context.logger.error("back-channel logout failed", metadata: ["status": "\(error.status.code)"])
            return logoutAnswer(.internalServerError, error: "server_error")
        case let error as StorageError where error.isTransient:
            context.logger.error("database unavailable on the back-channel logout", metadata: ["error": "\(error)"])
            var response = logoutAnswer(.serviceUnavailable, error: "temporarily_unavailable")
            response.headers[.retryAfter] = "5"
            return response
        default:
            context.logger.error("unexpected error on the back-channel logout", metadata: ["error": "\(error)"])
            return logoutAnswer(.internalServerError, error: "server_error")
        }
    }

    /// `POST /connexion/psc/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0): the
    /// provider, not a browser, ends the sessions its logout token names. No CSRF token (no
    /// browser is involved); the token's signature is the authentication.
    func backChannelLogout(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let body = try await request.body.collect(upTo: 64 * 1024)
        let headers: HTTPFields = [.cacheControl: "no-store", .contentType: "application/json"]
        guard let fields = try? FormBody.parse(Array(body.readableBytesView)), let token = fields["logout_token"] else {
            return Self.invalidLogoutRequest
        }
        let logout: LogoutToken
        do { logout = try await provider.relyingParty.validateLogoutToken(token) } catch {
            context.logger.notice("back-channel logout refused", metadata: ["reason": "\(error)"])
            web.metrics.providerLogout(result: error.label)
            return Self.invalidLogoutRequest
        }
        guard let ended = try await sessions.recordProviderLogout(ProviderLogout(jti: logout.jti, subject: logout.subject, sessionID: logout.sessionID),
                                                                  actor: AuditActor(subject: "provider", address: context.clientAddress)) else {
            context.logger.notice("back-channel logout refused", metadata: ["reason": "jti: this logout token was already used"])
            web.metrics.providerLogout(result: "claim-jti")
            return Self.invalidLogoutRequest
        }
        context.logger.info("back-channel logout", metadata: ["sessions": "\(ended)"])
        web.metrics.providerLogout(result: "accepted")
        return Response(status: .ok, headers: headers)
    }

    /// « Se connecter sans Pro Santé Connect »: remembered for this browser, so the next SAS
    /// entries show the password sign-in; the intent (origin, return URL) is kept. Not from
    /// another site's navigation (the choice is the regulator's: a click on our page, or a
    /// bookmark).
    func withoutProvider(_ request: Request) -> Response {
        if let site = request.headers[WebController.secFetchSite], site == "cross-site" || site == "same-site", !web.isClickOnOurPage(request) {
            return WebController.redirect("/connexion")
        }
        return WebController.redirect("/connexion", cookies: [WebCookie.method.set("mot-de-passe", maxAge: 30 * 86400)])
    }
}

extension ProviderSignInController {
    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(format: "%.3f", Double(seconds) * 1000 + Double(attoseconds) / 1e15)
    }
}
