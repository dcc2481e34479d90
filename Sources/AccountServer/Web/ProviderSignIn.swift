import Accounts
import Crypto
import Foundation
import HTTPTypes
import Habilitation
import Hummingbird
import Logging
import OpenIDConnect

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
        router.post("connexion/psc/backchannel-logout") { request, context in try await self.backChannelLogout(request, context) }
        router.get("connexion/sans-psc") { request, _ in self.withoutProvider(request) }
        router.get("deconnexion/terminee") { request, _ in WebController.page(Pages.signedOut, cookies: []) }
    }

    var sessions: SessionStore { web.sessions }

    func refused(_ status: HTTPResponse.Status, _ title: String, _ message: String, retry: Bool = true) -> Response {
        WebController.page(Pages.providerRefused(title, message, retry: retry), status: status)
    }

    /// `GET /connexion/psc`: to the provider, for this browser's intent (a direct one when it
    /// has none). The choice of the password sign-in is forgotten.
    func start(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        // Each start commits a row before anyone has signed in: bounded per client (its own
        // budget, so a SAS link's entry and its start do not share one).
        guard WebController.isDocumentNavigation(request.headers) else { return web.notANavigation }
        guard web.limiter.allow("provider-start", client: context.clientAddress) else { return web.tooManyRequests }
        var cookies = [WebCookie.method.clear]
        var intentToken = WebCookie.value(.intent, in: request.headers)
        var state: String? = nil
        if let intentToken { state = try await sessions.createProviderLogin(intentToken: intentToken) }
        if state == nil, request.headers[HTTPField.Name("Sec-Fetch-Site")!] != "same-origin",
           let session = WebCookie.value(.session, in: request.headers), try await sessions.session(session) != nil {
            // No sign-in under way, a live session, and not a click on our own page (a
            // regulator taking over a shared workstation from « Connexion »): nothing to start.
            // A page of another site sending the browser here would otherwise have the
            // provider sign it in silently and replace its SAS session with a direct one.
            return WebController.redirect("/compte")
        }
        if state == nil {
            let token = try await sessions.createIntent(LoginIntent(origin: .direct, originValue: nil, returnURL: web.configuration.publicURL + "/compte"))
            cookies.append(WebCookie.intent.set(token, maxAge: Int(sessions.configuration.intentLifetime)))
            intentToken = token
            state = try await sessions.createProviderLogin(intentToken: token)
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
            return refused(.serviceUnavailable, "Pro Santé Connect indisponible",
                           "Pro Santé Connect ne répond pas pour le moment. Réessayez dans un instant, ou connectez-vous sans Pro Santé Connect.")
        }
    }

    /// `GET /connexion/psc/retour`: the provider's answer. Every check fails closed with a
    /// French page and an audit row, and opens nothing.
    func callback(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let started = ContinuousClock.now
        let timer = ProviderTimer()
        let query = (try? QueryParameters(query: request.uri.query)) ?? QueryParameters.empty
        let actor = web.actor(context)
        // A budget of its own, not the password's: a callback is worth nothing without a live
        // state of this browser (checked next), and a regulation centre behind one address
        // signing in through the provider at a shift change spent the sign-in budget twice
        // (password page and callback) for each regulator.
        // Nor may another site's page spend it, or write refusals to the audit trail, with
        // images or frames carrying a made-up state: the provider's answer is a navigation.
        guard WebController.isDocumentNavigation(request.headers) else { return web.notANavigation }
        guard web.limiter.allow("provider-callback", client: context.clientAddress) else { return web.tooManyRequests }
        guard let state = query.first("state"), !state.isEmpty else {
            try await sessions.auditProviderSignIn(outcome: "refused: state", accountID: nil, detail: "callback without state", actor: actor)
            web.metrics.providerSignIn(result: "state")
            return refused(.badRequest, "Connexion refusée", "La réponse de Pro Santé Connect est incomplète. Recommencez la connexion.")
        }
        let lookup = try await sessions.consumeProviderLogin(state: state, intentToken: WebCookie.value(.intent, in: request.headers))
        let intentHash: String, loginStartedAt: Date
        switch lookup {
        case .unknown:
            try await sessions.auditProviderSignIn(outcome: "refused: state", accountID: nil, detail: "unknown, expired or already used state", actor: actor)
            web.metrics.providerSignIn(result: "state")
            return refused(.badRequest, "Connexion expirée", "Cette connexion a expiré ou a déjà été utilisée. Recommencez.")
        case .otherBrowser:
            try await sessions.auditProviderSignIn(outcome: "refused: state", accountID: nil, detail: "state of a login started by another browser", actor: actor)
            web.metrics.providerSignIn(result: "state")
            return refused(.badRequest, "Connexion refusée", "Cette réponse ne correspond pas à une connexion commencée dans ce navigateur. Recommencez.")
        case .accepted(let hash, let loginStart):
            (intentHash, loginStartedAt) = (hash, loginStart)
        }
        // RFC 9207: a provider that names itself in its answer must be ours (a mix-up attack
        // has another provider's answer, or a code meant for it, arrive here).
        if let issuer = query.first("iss"), issuer != provider.relyingParty.configuration.issuer {
            try await sessions.auditProviderSignIn(outcome: "refused: issuer", accountID: nil,
                                                   detail: "answer from issuer \(String(issuer.prefix(200)).debugDescription)", actor: actor)
            web.metrics.providerSignIn(result: "issuer")
            return refused(.badRequest, "Connexion refusée", "Cette réponse ne vient pas de Pro Santé Connect. Recommencez la connexion.")
        }
        if let error = query.first("error") {
            let code = String(error.prefix(64))
            try await sessions.auditProviderSignIn(outcome: "refused: provider-error", accountID: nil, detail: "provider answered error \(code)", actor: actor)
            web.metrics.providerSignIn(result: "provider-error")
            return refused(.unauthorized, "Connexion interrompue", "La connexion avec Pro Santé Connect n’a pas abouti. Vous pouvez réessayer, ou vous connecter sans Pro Santé Connect.")
        }
        guard let code = query.first("code"), !code.isEmpty else {
            try await sessions.auditProviderSignIn(outcome: "refused: no-code", accountID: nil, detail: "callback without code", actor: actor)
            web.metrics.providerSignIn(result: "no-code")
            return refused(.badRequest, "Connexion refusée", "La réponse de Pro Santé Connect est incomplète. Recommencez la connexion.")
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
            return refused(.unauthorized, "Connexion refusée", "La réponse de Pro Santé Connect n’a pas pu être vérifiée. Aucune session n’a été ouverte. Recommencez la connexion.")
        }
        let claimsUsed = "\(provider.nationalIDClaim)=\(identity.nationalID ?? "absent"), sub=\(identity.token.subject), acr=\(identity.token.acr ?? "absent")"
        guard let nationalID = identity.nationalID, !nationalID.isEmpty else {
            try await sessions.auditProviderSignIn(outcome: "refused: no-national-id", accountID: nil, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "no-national-id")
            return refused(.forbidden, "Compte introuvable", "Pro Santé Connect n’a pas transmis votre identifiant national. Connectez-vous sans Pro Santé Connect.", retry: false)
        }
        let sealed = try? provider.box.seal(Array(identity.token.raw.utf8), context: ProviderSignIn.sealContext)
        // One transaction: the account match, the check that the provider has not ended this
        // session meanwhile (back-channel logout), the flow and, when the CGU in force is
        // accepted, the session (from the intent: its origin, a new id), as the password
        // sign-in's last step makes it.
        let habilitation = web.habilitation
        let opened = try await sessions.startProviderFlow(
            match: { db in try habilitation.providerAccount(nationalID: nationalID, in: db) },
            intentIDHash: intentHash, loginStartedAt: loginStartedAt,
            identity: ProviderIdentity(subject: identity.token.subject, sessionID: identity.token.sessionID, sealedIDToken: sealed),
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
            return refused(.forbidden, "Compte introuvable",
                           "Aucun compte régulateur ne correspond à votre identifiant national. Si votre compte a été créé avec un identifiant technique SAS, connectez-vous sans Pro Santé Connect.",
                           retry: false)
        case .refused(.deactivatedBySAS(let id)):
            try await sessions.auditProviderSignIn(outcome: "refused: deactivated-by-sas", accountID: id, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "deactivated-by-sas")
            return refused(.forbidden, "Habilitation retirée", "La plateforme SAS a retiré votre habilitation régulateur : aucune session n’a été ouverte.", retry: false)
        case .refused(.suspendedByVendor(let id)):
            try await sessions.auditProviderSignIn(outcome: "refused: suspended-by-vendor", accountID: id, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "suspended-by-vendor")
            return refused(.forbidden, "Habilitation suspendue", "L’éditeur a suspendu votre habilitation régulateur : aucune session n’a été ouverte.", retry: false)
        case .loggedOutAtProvider(let id):
            try await sessions.auditProviderSignIn(outcome: "refused: logged-out-at-provider", accountID: id, detail: claimsUsed, actor: actor)
            web.metrics.providerSignIn(result: "logged-out-at-provider")
            return refused(.unauthorized, "Session Pro Santé Connect terminée",
                           "Votre session Pro Santé Connect a pris fin pendant la connexion : aucune session n’a été ouverte. Recommencez la connexion.")
        case .opened(_, let session?):
            web.metrics.sessionOpened(origin: session.origin.rawValue)
            context.logger.info("session opened", metadata: ["origin": "\(session.origin.rawValue)"])
            response = WebController.redirect(session.returnURL ?? "/compte", cookies: [
                WebCookie.session.set(session.token), WebCookie.flow.clear, WebCookie.intent.clear, WebCookie.method.clear,
                WebCookie.csrf.set(SecretToken.generate()),
            ])
        case .opened(let flowToken, nil):
            response = WebController.redirect("/connexion/cgu", cookies: [
                WebCookie.flow.set(flowToken, maxAge: Int(sessions.configuration.flowLifetime)), WebCookie.method.clear,
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

    /// `POST /connexion/psc/backchannel-logout` (OpenID Connect Back-Channel Logout 1.0): the
    /// provider, not a browser, ends the sessions its logout token names. No CSRF token (no
    /// browser is involved); the token's signature is the authentication.
    func backChannelLogout(_ request: Request, _ context: WebRequestContext) async throws -> Response {
        let body = try await request.body.collect(upTo: 64 * 1024)
        let fields = FormBody.parse(Array(body.readableBytesView))
        let headers: HTTPFields = [.cacheControl: "no-store", .contentType: "application/json"]
        guard let token = fields["logout_token"] else {
            return Response(status: .badRequest, headers: headers, body: .init(byteBuffer: .init(string: #"{"error":"invalid_request"}"#)))
        }
        let logout: LogoutToken
        do { logout = try await provider.relyingParty.validateLogoutToken(token) } catch {
            context.logger.notice("back-channel logout refused", metadata: ["reason": "\(error)"])
            web.metrics.providerLogout(result: error.label)
            return Response(status: .badRequest, headers: headers, body: .init(byteBuffer: .init(string: #"{"error":"invalid_request"}"#)))
        }
        guard let ended = try await sessions.recordProviderLogout(ProviderLogout(jti: logout.jti, subject: logout.subject, sessionID: logout.sessionID),
                                                                  actor: AuditActor(subject: "provider", address: context.clientAddress)) else {
            context.logger.notice("back-channel logout refused", metadata: ["reason": "jti: this logout token was already used"])
            web.metrics.providerLogout(result: "claim-jti")
            return Response(status: .badRequest, headers: headers, body: .init(byteBuffer: .init(string: #"{"error":"invalid_request"}"#)))
        }
        context.logger.info("back-channel logout", metadata: ["sessions": "\(ended)"])
        web.metrics.providerLogout(result: "accepted")
        return Response(status: .ok, headers: headers)
    }

    /// « Se connecter sans Pro Santé Connect »: remembered for this browser, so the next SAS
    /// entries show the password sign-in; the intent (origin, return URL) is kept.
    func withoutProvider(_ request: Request) -> Response {
        WebController.redirect("/connexion", cookies: [WebCookie.method.set("mot-de-passe", maxAge: 30 * 86400)])
    }
}

extension ProviderSignInController {
    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        return String(format: "%.3f", Double(seconds) * 1000 + Double(attoseconds) / 1e15)
    }
}
