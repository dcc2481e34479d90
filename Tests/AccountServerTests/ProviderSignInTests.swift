@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import Habilitation
@testable import OpenIDConnect
import JWTKit
import NIOHTTP1
import Storage
import Testing

/// Sign-in through Pro Santé Connect against a real OpenID Connect provider (LemonLDAP::NG,
/// started by the suite in a PSC shape; see ProviderSupport.swift): the SAS journey, silent
/// re-authentication, every refusal, sign-out and back-channel logout.
@Suite("Pro Santé Connect sign-in", .serialized)
struct ProviderSignInTests {
    static let agenda = "https://agenda.example/rdv/42?origin=sas"
    static let nationalID = "810002673899"
    static let clientID = "account-server"
    static let clientSecret = "psc-client-secret-for-tests"

    final class World: Sendable {
        let pki: TestPKI
        let provider: OIDCTestProvider
        let server: RunningServer
        let fhir: FHIRClient
        let publicURL: String
        /// With `mail`: the reset mails, for a password sign-in beside the provider's.
        let smtp: SMTPSink?
        /// The server's configuration, for ``startAgain()``.
        let configure: @Sendable (inout ServerConfiguration) -> Void

        /// Another server with the same configuration on the same database, key and web port
        /// (a restart): call after stopping ``server``; the caller stops what it returns.
        func startAgain() async throws -> RunningServer {
            let (configure, database) = (self.configure, server.databaseArgument)
            return try await RunningServer.start(pki: pki) { configuration in
                configure(&configuration)
                configuration.database = try! StorageLocation(database)
            }
        }

        init(acr: String = "eidas1", mail: Bool = false, sessionIDPerSubject: Bool = false) async throws {
            pki = try TestPKI()
            let smtp = mail ? try await SMTPSink() : nil
            self.smtp = smtp
            let webPort = freeLoopbackPort()
            let publicURL = "https://localhost:\(webPort)"
            self.publicURL = publicURL
            provider = try await OIDCTestProvider(pki: pki, clients: [
                .init(id: ProviderSignInTests.clientID, secret: ProviderSignInTests.clientSecret, redirect: publicURL + "/connexion/psc/retour",
                      post_logout: publicURL + "/deconnexion/terminee", backchannel: publicURL + "/connexion/psc/backchannel-logout"),
            ], sessionIDPerSubject: sessionIDPerSubject)
            let secretPath = pki.directory.appendingPathComponent("oidc-secret").path
            try PrivateFile.create(path: secretPath, contents: Array((ProviderSignInTests.clientSecret + "\n").utf8))
            let issuer = provider.issuer, caPath = pki.caPath
            let configure: @Sendable (inout ServerConfiguration) -> Void = { configuration in
                configuration.web.port = webPort
                configuration.web.publicURL = publicURL
                configuration.allowedReturnHosts = ["localhost", "agenda.example"]
                configuration.rateLimitPerMinute = 120
                var sso = SSOConfiguration(issuer: issuer, clientID: ProviderSignInTests.clientID)
                sso.clientSecretPath = secretPath
                sso.caPath = caPath
                sso.acr = acr
                configuration.sso = sso
                if let smtp {
                    configuration.smtpURL = "smtp://127.0.0.1:\(smtp.port)"
                    configuration.mailPollInterval = .milliseconds(100)
                }
            }
            self.configure = configure
            do {
                server = try await RunningServer.start(pki: pki, configure: configure)
            } catch {
                provider.stop()
                smtp?.stop()
                throw error
            }
            fhir = try FHIRClient(pki: pki, certificate: "valid", server: server)
            let created = try await fhir.send(.POST, "/Practitioner", body: Bodies.practitioner(national: ProviderSignInTests.nationalID, email: WebSignInTests.email))
            guard created.status == 201 else {
                await stop()
                throw FixtureFailure("the SAS create answered \(created.status): \(created.body)")
            }
        }

        func browser() throws -> Browser { try Browser(pki: pki, base: server.webURL) }

        func stop() async {
            await fhir.shutdown()
            await server.stop()
            provider.stop()
            smtp?.stop()
        }

        /// Live sessions in the database.
        func liveSessions() async throws -> Int {
            try await server.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session WHERE revoked_at IS NULL") ?? 0 }
        }
    }

    /// A click on one of our own pages (« Réessayer avec Pro Santé Connect »…), as a browser
    /// sends it.
    static let click = [("Sec-Fetch-Site", "same-origin"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document"), ("Sec-Fetch-User", "?1")]

    static var entryPath: String { "/connexion?origin=sas&retour=\(agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)" }

    /// The SAS link, up to the provider: returns the authorization URL the browser was sent to.
    static func followSASLink(_ browser: Browser, world: World) async throws -> String {
        let navigation = [("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
        let entry = try await browser.request(.GET, entryPath, headers: navigation + [("Sec-Fetch-Site", "cross-site")])
        #expect(entry.status == 303 && entry.location == "/connexion/psc", "a SAS entry goes to the provider: \(entry.status) \(entry.location ?? "")")
        let start = try await browser.request(.GET, "/connexion/psc", headers: navigation + [("Sec-Fetch-Site", "cross-site")])
        let authorize = try #require(start.location, "the start redirects: \(start.status) \(start.body.prefix(300))")
        #expect(start.status == 303 && authorize.hasPrefix(world.provider.issuer + "/oauth2/authorize?"))
        return authorize
    }

    /// Provider answer → our callback; returns our answer.
    static func callback(_ browser: Browser, _ providerAnswer: Browser.Page, world: World) async throws -> Browser.Page {
        let location = try #require(providerAnswer.location, "the provider redirects back: \(providerAnswer.status) \(providerAnswer.body.prefix(400))")
        #expect(location.hasPrefix(world.publicURL + "/connexion/psc/retour?"))
        // As a browser sends it: a navigation, from another site (the provider's redirect).
        return try await browser.request(.GET, location, headers: [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")])
    }

    /// The whole first journey: SAS link, provider login, callback, CGU; returns our last
    /// answer and the authorization code the provider issued.
    static func firstSignIn(_ browser: Browser, world: World, login: String = "dwho") async throws -> (page: Browser.Page, code: String?) {
        let authorize = try await followSASLink(browser, world: world)
        let form = try await browser.get(authorize)
        let answer = try await browser.signInAtProvider(form, url: authorize, login: login)
        let code = URLComponents(string: answer.location ?? "")?.queryItems?.first { $0.name == "code" }?.value
        let back = try await callback(browser, answer, world: world)
        guard back.location == "/connexion/cgu" else { return (back, code) }
        let version = try #require(try await browser.get("/connexion/cgu").capture(#"name="version" value="([^"]+)""#))
        return (try await browser.submit("/connexion/cgu", ["accepte": "oui", "version": version]), code)
    }

    static func forwardAuth(_ browser: Browser, world: World) async throws -> Browser.Page {
        try await browser.request(.GET, world.server.forwardAuthURL + "/forward-auth", headers: ForwardAuthTests.forwardedHeaders, cookiesOf: browser.base)
    }

    // MARK: The journey

    /// Kit V2 (2): the agenda URL with the SAS origin, opened by an unidentified browser,
    /// ends (redirects followed) on the provider's login page; the request is a PSC one.
    @Test func anUnidentifiedSASLinkEndsOnTheProviderLoginPage() async throws {
        let world = try await World()
        let browser = try world.browser()
        let authorize = try await Self.followSASLink(browser, world: world)
        let query = try #require(URLComponents(string: authorize)?.queryItems)
        func item(_ name: String) -> String? { query.first { $0.name == name }?.value }
        #expect(item("response_type") == "code" && item("client_id") == Self.clientID)
        #expect(item("redirect_uri") == world.publicURL + "/connexion/psc/retour")
        #expect(item("scope") == "openid scope_all" && item("acr_values") == "eidas1")
        #expect(item("code_challenge_method") == "S256" && (item("code_challenge")?.count ?? 0) == 43)
        #expect((item("state")?.count ?? 0) >= 43 && (item("nonce")?.count ?? 0) >= 43 && item("state") != item("nonce"))
        let page = try await browser.get(authorize)
        #expect(page.status == 200 && page.body.contains("id=\"lform\"") && page.body.contains("name=\"password\""), "the provider's login form")
        // The plain sign-in page offers both doors.
        let plain = try world.browser()
        let signIn = try await plain.get("/connexion")
        #expect(signIn.body.contains("id=\"lien-psc\"") && signIn.body.contains("id=\"form-connexion\""))
        await plain.shutdown()
        await browser.shutdown()
        await world.stop()
    }

    /// Signed in at the provider → back with a SAS session holding the habilitation, no
    /// password and no TOTP; a second SAS link with the provider's session live → no prompt.
    @Test func signingInAtTheProviderOpensAHabilitatedSASSession() async throws {
        let world = try await World()
        let browser = try world.browser()
        let done = try await Self.firstSignIn(browser, world: world).page
        let lastEvent = try await world.server.auditEvents().last.map { "\($0.outcome) \($0.detail ?? "")" } ?? ""
        #expect(done.status == 303 && done.location == Self.agenda, "back to the agenda: \(done.status) \(done.location ?? "") \(lastEvent)")
        #expect(browser.cookies["__Host-as-session"] != nil)
        let granted = try await Self.forwardAuth(browser, world: world)
        #expect(granted.status == 200 && granted.headers.first(name: "X-Auth-Habilitations") == "regulateur", "\(granted.status) \(granted.headers)")
        #expect(granted.headers.first(name: "X-Auth-National-Id") == Self.nationalID)
        let account = try await browser.get("/compte")
        #expect(account.body.contains("data-habilitation=\"oui\"") && account.body.contains("data-origine=\"sas\""))

        // The audit trail: the claims used and the decision, never a token.
        let events = try await world.server.auditEvents()
        let accepted = try #require(events.last { $0.action == "sign-in-psc" })
        #expect(accepted.outcome == "accepted" && accepted.detail?.contains("SubjectNameID=\(Self.nationalID)") == true && accepted.detail?.contains("acr=eidas1") == true)
        #expect(events.contains { $0.action == "sign-in" && $0.outcome.contains("Pro Santé Connect") })
        #expect(events.contains { $0.action == "habilitation-granted" })
        #expect(!events.contains { ($0.detail ?? "").contains("eyJ") || $0.outcome.contains("eyJ") }, "no JWT in the audit trail")
        #expect(!world.server.logs.all.contains { $0.contains("eyJ") }, "no JWT in the logs")

        // Our session gone (cookies cleared), the provider's kept: the next SAS link signs in
        // without any prompt, and the CGU already accepted are not asked again.
        browser.cookies = [:]
        let authorize = try await Self.followSASLink(browser, world: world)
        let silent = try await browser.get(authorize)
        #expect(silent.status == 302, "no login form the second time: \(silent.status)")
        let back = try await Self.callback(browser, silent, world: world)
        #expect(back.status == 303 && back.location == Self.agenda)
        #expect(try await Self.forwardAuth(browser, world: world).status == 200)
        await browser.shutdown()
        await world.stop()
    }

    /// A provider flow waiting on the terms of use when the SAS deactivates the account opens
    /// no session at the terms' acceptance, which is not recorded: the provider sign-in's own
    /// refusal, audited once as such; a form sent again only restarts. A flow that asks for
    /// the terms after the withdrawal is refused at once, not shown terms it could accept
    /// only to be refused.
    @Test func aProviderFlowRefusedAtTheTermsOpensNothing() async throws {
        let world = try await World()
        let browser = try world.browser(), other = try world.browser()
        for browser in [browser, other] {
            let authorize = try await Self.followSASLink(browser, world: world)
            let answer = try await browser.signInAtProvider(try await browser.get(authorize), url: authorize, login: "dwho")
            let back = try await Self.callback(browser, answer, world: world)
            #expect(back.status == 303 && back.location == "/connexion/cgu", "\(back.status) \(back.location ?? "-")")
        }
        let cgu = try await browser.get("/connexion/cgu")
        let version = try #require(cgu.capture(#"name="version" value="([^"]+)""#))
        let deactivated = try await world.fhir.send(.PUT, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C\(Self.nationalID)",
                                                    body: Bodies.practitioner(national: Self.nationalID, active: false, email: WebSignInTests.email))
        #expect(deactivated.status == 200)
        let form = ["csrf": cgu.csrf ?? "", "accepte": "oui", "version": version]
        let refused = try await browser.request(.POST, "/connexion/cgu", form: form)
        #expect(refused.status == 403 && refused.body.contains("Habilitation retirée") && browser.cookies["__Host-as-session"] == nil, "\(refused.status)")
        let again = try await browser.request(.POST, "/connexion/cgu", form: form)
        #expect(again.status == 303 && again.location?.hasPrefix("/connexion") == true && browser.cookies["__Host-as-session"] == nil, "\(again.status)")
        let page = try await other.get("/connexion/cgu")
        #expect(page.status == 403 && page.body.contains("Habilitation retirée") && !page.body.contains("name=\"accepte\""), "\(page.status)")
        #expect(try await world.liveSessions() == 0)
        let accepted = try await world.server.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM cgu_acceptance") ?? -1 }
        #expect(accepted == 0, "a refused account accepts nothing")
        let refusals = try await world.server.auditEvents().filter { $0.outcome.contains("deactivated-by-sas") }
        #expect(refusals.count == 2 && refusals.allSatisfy { $0.action == "sign-in-psc" && $0.outcome == "refused: deactivated-by-sas" },
                "one per flow: \(refusals.map { "\($0.action) \($0.outcome)" })")
        await other.shutdown()
        await browser.shutdown()
        await world.stop()
    }

    /// The provider's authentication stands for both factors: its flow never reaches the
    /// TOTP pages (an enrolment there would replace the recovery codes and clear the lockout,
    /// after a reset of the second factor, without the mailbox).
    @Test func aProviderFlowNeverReachesTheSecondFactorPages() async throws {
        let world = try await World()
        let browser = try world.browser()
        let authorize = try await Self.followSASLink(browser, world: world)
        let answer = try await browser.signInAtProvider(try await browser.get(authorize), url: authorize, login: "dwho")
        let back = try await Self.callback(browser, answer, world: world)
        #expect(back.status == 303 && back.location == "/connexion/cgu", "\(back.status) \(back.location ?? "")")
        for path in ["/connexion/totp", "/connexion/second-facteur"] {
            let page = try await browser.get(path)
            #expect(page.status == 303 && page.location == "/connexion/cgu", "GET \(path): \(page.status) \(page.location ?? "")")
            let posted = try await browser.submit("/connexion/cgu", to: path, ["code": "123456"])
            #expect(posted.status == 303 && posted.location == "/connexion/cgu", "POST \(path): \(posted.status) \(posted.location ?? "")")
        }
        let secrets = try await world.server.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM totp_credential") }
        #expect(secrets == 0, "no TOTP secret was made for the account")
        await browser.shutdown()
        await world.stop()
    }

    /// A sign-in ends the session the browser held (its cookie is replaced: nobody holds it
    /// any more); and with a live session and no sign-in under way, the provider's start
    /// opens nothing (another site sending the browser there would have its SAS session
    /// silently replaced by a direct one).
    @Test func aNewSignInEndsTheBrowsersPreviousSessionAndAStrayStartOpensNothing() async throws {
        let world = try await World()
        let browser = try world.browser()
        let start = try await browser.get("/connexion/psc")
        let authorize = try #require(start.location, "\(start.status)")
        let answer = try await browser.signInAtProvider(try await browser.get(authorize), url: authorize, login: "dwho")
        var back = try await Self.callback(browser, answer, world: world)
        if back.location == "/connexion/cgu" {
            let version = try #require(try await browser.get("/connexion/cgu").capture(#"name="version" value="([^"]+)""#))
            back = try await browser.submit("/connexion/cgu", ["accepte": "oui", "version": version])
        }
        #expect(back.status == 303 && back.location == world.publicURL + "/compte", "a direct session: \(back.status) \(back.location ?? "")")
        let direct = try #require(browser.cookies["__Host-as-session"])
        #expect(try await world.liveSessions() == 1)

        let stray = try await browser.get("/connexion/psc")
        #expect(stray.status == 303 && stray.location == "/compte", "nothing started: \(stray.status) \(stray.location ?? "")")
        let clicked = try await browser.request(.GET, "/connexion/psc", headers: [("Sec-Fetch-Site", "same-origin")])
        #expect(clicked.status == 303 && clicked.location?.hasPrefix(world.provider.issuer) == true,
                "a click on our own page (another regulator at the workstation) goes to the provider: \(clicked.location ?? "")")

        // The SAS link: a SAS session replaces the direct one, which ends.
        let sasAuthorize = try await Self.followSASLink(browser, world: world)
        let silent = try await browser.get(sasAuthorize)
        let sas = try await Self.callback(browser, silent, world: world)
        #expect(sas.status == 303 && sas.location == Self.agenda, "\(sas.status) \(sas.location ?? "")")
        #expect(browser.cookies["__Host-as-session"] != direct)
        #expect(try await world.liveSessions() == 1, "the direct session ended with the SAS sign-in")
        let replaced = try await world.server.auditEvents().filter { $0.action == "session-replaced" }
        #expect(replaced.count == 1 && replaced[0].outcome == "session ended", "\(replaced.map(\.outcome))")
        #expect(try await Self.forwardAuth(browser, world: world).status == 200)
        await browser.shutdown()
        await world.stop()
    }

    /// « Fermer mes autres sessions » in one browser ends the other's Pro Santé Connect
    /// session here, but the provider's own session lives on in that browser: the SAS link
    /// there comes back from the provider without anyone typing. The callback sends it back
    /// to the provider to authenticate the user again (`prompt=login`, `max_age`), and a
    /// session opens only after that. A provider that does not ask again gets a refusal, not
    /// a loop. The browser that closed the others is not asked again.
    ///
    /// Run twice: with the test provider's `sid`, which a new authentication changes, and
    /// with one `sid` per subject, kept across a new authentication (as Keycloak, which PSC
    /// runs, keeps its session's on `prompt=login`): then only the ID token's `auth_time`
    /// tells the new authentication from the old one, and the laptop, whose `sid` is the
    /// workstation's, is asked again too.
    @Test(arguments: [false, true]) func aSessionClosedRemotelyOpensAgainOnlyAfterTypingAtTheProvider(sharedSID: Bool) async throws {
        let world = try await World(sessionIDPerSubject: sharedSID)
        let workstation = try world.browser(), laptop = try world.browser()
        let first = try await Self.firstSignIn(workstation, world: world).page
        #expect(first.status == 303 && first.location == Self.agenda, "\(first.status) \(first.location ?? "-")")
        // Another second: the test provider derives its `sid` from the authentication's time.
        try await Task.sleep(for: .milliseconds(1100))
        let second = try await Self.firstSignIn(laptop, world: world).page
        #expect(second.status == 303 && second.location == Self.agenda, "\(second.status) \(second.location ?? "-")")
        let closing = try await laptop.submit("/compte", to: "/compte/sessions/fermer-autres", [:])
        #expect(closing.status == 303 && closing.location?.hasPrefix("/compte?avis=autres-1.") == true, "\(closing.status) \(closing.location ?? "-")")
        #expect(try await Self.forwardAuth(workstation, world: world).status == 401)
        let closedCookie = workstation.cookies["__Host-as-session"]
        // `max_age` counts whole seconds since the close.
        try await Task.sleep(for: .milliseconds(1100))

        // The SAS link at the workstation: the provider answers at once, from its session...
        func sentBack(_ answer: Browser.Page) throws -> String {
            let location = try #require(answer.location, "\(answer.status) \(answer.body.prefix(300))")
            let query = URLComponents(string: location)?.queryItems ?? []
            #expect(answer.status == 303 && location.hasPrefix(world.provider.issuer + "/oauth2/authorize?"), "\(answer.status) \(location)")
            #expect(query.first { $0.name == "prompt" }?.value == "login", "\(location)")
            #expect((query.first { $0.name == "max_age" }?.value).flatMap(Int.init).map { $0 >= 1 } == true, "\(location)")
            return location
        }
        let authorize = try await Self.followSASLink(workstation, world: world)
        #expect(!authorize.contains("prompt="), "an ordinary sign-in does not ask for one")
        let silent = try await workstation.get(authorize)
        #expect(silent.status == 302, "no login form: the provider's session lives (\(silent.status))")
        // ...and is sent back there to authenticate the user again; nothing opens.
        let again = try sentBack(try await Self.callback(workstation, silent, world: world))
        #expect(workstation.cookies["__Host-as-session"] == closedCookie, "no new session")
        // Another site looping the browser through the SAS link is paused at the password page.
        #expect(workstation.cookies["__Host-as-methode"] == "mot-de-passe")
        let looped = try await workstation.request(.GET, "/connexion/psc", headers: [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")])
        #expect(looped.status == 303 && looped.location == "/connexion", "\(looped.status) \(looped.location ?? "-")")
        #expect(try await world.liveSessions() == 1)

        // A provider that ignores the request (here: the request without it) answers from
        // the same old authentication: refused, not sent back again.
        var ignored = try #require(URLComponents(string: again))
        ignored.queryItems = ignored.queryItems?.filter { $0.name != "prompt" && $0.name != "max_age" }
        let unasked = try await workstation.get(try #require(ignored.string))
        #expect(unasked.status == 302, "\(unasked.status)")
        let refused = try await Self.callback(workstation, unasked, world: world)
        #expect(refused.status == 401 && refused.body.contains("Nouvelle identification requise") && refused.location == nil,
                "\(refused.status) \(refused.location ?? "") \(refused.body.prefix(300))")
        #expect(try await world.liveSessions() == 1)

        // Tried again from our page: back at the provider, which now asks for the password.
        let retry = try await workstation.request(.GET, "/connexion/psc", headers: Self.click)
        let retryAuthorize = try #require(retry.location, "\(retry.status)")
        let retrySilent = try await workstation.get(retryAuthorize)
        let retryAgain = try sentBack(try await Self.callback(workstation, retrySilent, world: world))
        // LemonLDAP::NG asks to confirm the renewal of its session, then for the password.
        let renewal = try await workstation.get(retryAgain)
        #expect(renewal.status == 200 && renewal.body.contains("id=\"upgrd\""), "the provider asks again: \(renewal.status) \(renewal.body.prefix(300))")
        var fields: [String: String] = [:]
        for name in ["confirm", "forceUpgrade", "url"] {
            fields[name] = renewal.capture(#"name="\#(name)"[^>]*value="([^"]*)""#)
        }
        let renew = world.provider.issuer + "/renewsession"
        let form = try await workstation.request(.POST, renew, form: fields)
        let typed = try await workstation.signInAtProvider(form, url: renew, login: "dwho")
        // Back to its authorization endpoint, which answers the request it kept.
        let resumed = try #require(typed.location, "\(typed.status) \(typed.body.prefix(300))")
        #expect(resumed.hasPrefix(world.provider.issuer), "\(resumed)")
        let opened = try await Self.callback(workstation, try await workstation.get(resumed), world: world)
        #expect(opened.status == 303 && opened.location == Self.agenda, "\(opened.status) \(opened.location ?? "-") \(opened.body.prefix(300))")
        #expect(try await Self.forwardAuth(workstation, world: world).status == 200)
        #expect(workstation.cookies["__Host-as-methode"] == nil, "the pause set by the send-back ends with the session opened")

        let sids = try await world.server.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(DISTINCT oidc_session_id) FROM web_session")
        }
        #expect(sids == (sharedSID ? 1 : 3), "the provider's sids: \(sids ?? -1)")

        // The laptop, whose session closed the others, is not asked again, unless its `sid`
        // is the workstation's.
        laptop.cookies = [:]
        let laptopAuthorize = try await Self.followSASLink(laptop, world: world)
        let laptopSilent = try await laptop.get(laptopAuthorize)
        let laptopBack = try await Self.callback(laptop, laptopSilent, world: world)
        if sharedSID {
            _ = try sentBack(laptopBack)
        } else {
            #expect(laptopBack.status == 303 && laptopBack.location == Self.agenda, "\(laptopBack.status) \(laptopBack.location ?? "-")")
        }

        let events = try await world.server.auditEvents().filter { $0.action == "sign-in-psc" }
        #expect(events.filter { $0.outcome == "reauthentication-asked" }.count == (sharedSID ? 3 : 2), "\(events.map(\.outcome))")
        #expect(events.filter { $0.outcome == "refused: not-reauthenticated" }.count == 1, "\(events.map(\.outcome))")
        #expect(events.contains { $0.outcome == "reauthentication-asked" && ($0.detail ?? "").contains("ended here remotely") })
        await laptop.shutdown()
        await workstation.shutdown()
        await world.stop()
    }

    // MARK: Refusals through the callback

    @Test func refusalsOpenNothing() async throws {
        let world = try await World()
        // Unknown IDNPS: a health professional with no account here.
        let stranger = try world.browser()
        let refused = try await Self.firstSignIn(stranger, world: world, login: "rtyler").page
        #expect(refused.status == 403 && refused.body.contains("Compte introuvable") && refused.body.contains("id=\"lien-sans-psc\""), "\(refused.status)")
        #expect(stranger.cookies["__Host-as-session"] == nil && stranger.cookies["__Host-as-flow"] == nil)
        #expect(try await world.server.auditEvents().contains { $0.action == "sign-in-psc" && $0.outcome == "refused: unknown-national-id" && $0.detail?.contains("810009999999") == true })
        #expect(try await world.liveSessions() == 0)
        // « Se connecter sans Pro Santé Connect » keeps the SAS intent and is remembered: the
        // regulator's choice (a click, or a bookmark), never another site's navigation.
        let navigatedThere = try await stranger.request(.GET, "/connexion/sans-psc", headers: [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"),
                                                                                              ("Sec-Fetch-Dest", "document")])
        #expect(navigatedThere.status == 303 && !navigatedThere.headers["Set-Cookie"].contains { $0.hasPrefix("__Host-as-methode") })
        stranger.cookies["__Host-as-methode"] = nil   // (set for an hour by the refusal)
        let without = try await stranger.get("/connexion/sans-psc")
        #expect(without.status == 303 && without.location == "/connexion" && stranger.cookies["__Host-as-methode"] == "mot-de-passe")
        let page = try await stranger.get("/connexion")
        #expect(page.body.contains("id=\"origine-sas\""), "the SAS intent is kept for the password sign-in")
        let again = try await stranger.get(Self.entryPath)
        #expect(again.status == 303 && again.location == "/connexion", "the choice is remembered")
        await stranger.shutdown()

        // State mismatch: a callback started in browser A, replayed in browser B.
        let a = try world.browser(), b = try world.browser()
        let authorize = try await Self.followSASLink(a, world: world)
        let answer = try await a.signInAtProvider(try await a.get(authorize), url: authorize, login: "dwho")
        let callbackURL = try #require(answer.location)
        let eventsBeforePlanting = try await world.server.auditEvents().count
        let planted = try await b.get(callbackURL)
        #expect(planted.status == 400 && b.cookies["__Host-as-session"] == nil && b.cookies["__Host-as-flow"] == nil, "another browser's callback opens nothing")
        #expect(try await world.server.auditEvents().count == eventsBeforePlanting, "nor writes anything: anyone can plant one")
        // Nor spends the login: the browser that started it still completes it, once.
        let own = try await a.get(callbackURL)
        #expect(own.status == 303 && own.location == "/connexion/cgu" && a.cookies["__Host-as-flow"] != nil, "\(own.status) \(own.location ?? "")")
        let late = try await a.get(callbackURL)
        #expect(late.status == 400 && a.cookies["__Host-as-session"] == nil, "a state works once")
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: state" && $0.detail == "state already used" })
        #expect(try await world.liveSessions() == 0)

        // Replayed code: a used code, presented with a fresh state of this browser.
        let c = try world.browser()
        let (first, code) = try await Self.firstSignIn(c, world: world)
        #expect(first.status == 303 && first.location == Self.agenda)
        let usedCode = try #require(code)
        let sessionsBefore = try await world.liveSessions()
        let live = c.cookies["__Host-as-session"]
        c.cookies["__Host-as-session"] = nil   // a browser with a live session starts nothing
        let fresh = try await c.request(.GET, "/connexion/psc", headers: Self.click)
        let freshState = try #require(URLComponents(string: fresh.location ?? "")?.queryItems?.first { $0.name == "state" }?.value)
        let replay = try await c.get("/connexion/psc/retour?state=\(freshState)&code=\(usedCode)")
        #expect(replay.status == 401 && replay.body.contains("Connexion refusée"))
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: code-refused" })
        #expect(try await world.liveSessions() == sessionsBefore)

        // The provider's own error (e.g. the regulator cancelled at PSC).
        let cancelled = try await c.request(.GET, "/connexion/psc", headers: Self.click)
        let cancelledState = try #require(URLComponents(string: cancelled.location ?? "")?.queryItems?.first { $0.name == "state" }?.value)
        let error = try await c.get("/connexion/psc/retour?state=\(cancelledState)&error=access_denied")
        #expect(error.status == 401 && error.body.contains("id=\"lien-sans-psc\""))

        // RFC 9207: an answer naming another issuer (a mix-up) is refused before the code is used.
        let mixed = try await c.request(.GET, "/connexion/psc", headers: Self.click)
        let mixedState = try #require(URLComponents(string: mixed.location ?? "")?.queryItems?.first { $0.name == "state" }?.value)
        let mixUp = try await c.get("/connexion/psc/retour?state=\(mixedState)&code=x&iss=https%3A%2F%2Fevil.example")
        #expect(mixUp.status == 400 && mixUp.body.contains("ne vient pas de Pro Santé Connect"), "\(mixUp.status)")
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: issuer" && $0.detail?.contains("evil.example") == true })
        c.cookies["__Host-as-session"] = live

        // Suspended by a vendor admin: refused, nothing opened; restored, the next sign-in works.
        let admin = AdminClient(server: world.server, token: world.server.adminToken)
        #expect(try await admin.send(.POST, "/api/accounts/\(Self.nationalID)/suspend", body: #"{"reason":"test"}"#).status == 200)
        let e = try world.browser()
        let suspended = try await Self.firstSignIn(e, world: world).page
        #expect(suspended.status == 403 && suspended.body.contains("Habilitation suspendue") && e.cookies["__Host-as-session"] == nil)
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: suspended-by-vendor" })
        #expect(try await admin.send(.POST, "/api/accounts/\(Self.nationalID)/restore", body: "{}").status == 200)
        await admin.shutdown()
        await e.shutdown()

        // Deactivated by the SAS: no session at all, and the live one loses the habilitation.
        let deactivated = try await world.fhir.send(.PUT, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C\(Self.nationalID)",
                                                    body: Bodies.practitioner(national: Self.nationalID, active: false, email: WebSignInTests.email))
        #expect(deactivated.status == 200)
        #expect(try await Self.forwardAuth(c, world: world).status == 403, "the live session loses the habilitation at once")
        let d = try world.browser()
        let withdrawn = try await Self.firstSignIn(d, world: world).page
        #expect(withdrawn.status == 403 && withdrawn.body.contains("Habilitation retirée") && d.cookies["__Host-as-session"] == nil)
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: deactivated-by-sas" })

        // Images or frames of another site's page carrying the start or a made-up answer:
        // refused before any budget is spent, any row or audit event written.
        let eventsBefore = try await world.server.auditEvents().count
        let rows = { try await world.server.database.read { db in
            [try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM login_intent") ?? 0, try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM oidc_login") ?? 0]
        } }
        let rowsBefore = try await rows()
        for path in ["/connexion/psc", "/connexion/psc/retour?state=forged&code=x"] {
            for (mode, destination, purpose) in [("no-cors", "image", ""), ("navigate", "iframe", ""), ("navigate", "document", "prefetch")] {
                let page = try await d.request(.GET, path, headers: [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", mode), ("Sec-Fetch-Dest", destination)]
                                                                    + (purpose.isEmpty ? [] : [("Sec-Purpose", purpose)]))
                #expect(page.status == 403 && page.body.contains("Requête refusée") && page.location == nil, "\(path) \(destination): \(page.status)")
            }
        }
        let eventsAfter = try await world.server.auditEvents().count, rowsAfter = try await rows()
        #expect(eventsAfter == eventsBefore && rowsAfter == rowsBefore, "\(eventsAfter) \(rowsAfter)")
        for browser in [a, b, c, d] { await browser.shutdown() }
        await world.stop()
    }

    /// A page of another site can navigate a window, again and again, to the SAS entry, the
    /// provider start, and our callback with a made-up state or another browser's (its
    /// author starts logins of his own at will): each looks exactly like the real thing.
    /// Intents and states are sealed, so none of it writes a row or an audit event, or spends
    /// the address's budget: the regulators behind it still sign in.
    @Test func aWindowNavigatedInALoopWritesNothingAndLocksNobodyOut() async throws {
        let world = try await World()
        let navigation = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
        let author = try world.browser(), window = try world.browser()
        let foreign = try await author.request(.GET, "/connexion/psc", headers: navigation)
        let foreignState = try #require(URLComponents(string: foreign.location ?? "")?.queryItems?.first { $0.name == "state" }?.value)
        let rows = { try await world.server.database.read { db in
            try ["login_intent", "oidc_login", "sign_in_flow", "web_session"].map { try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \($0)") ?? -1 }
        } }
        let rowsBefore = try await rows(), eventsBefore = try await world.server.auditEvents().count
        var statuses: [String: [Int: Int]] = [:]
        // More than the address's budget (120 a minute) of each.
        for index in 0..<130 {
            for (name, path) in [("entry", Self.entryPath), ("start", "/connexion/psc"), ("made-up", "/connexion/psc/retour?state=forged\(index)&code=x"),
                                 ("foreign", "/connexion/psc/retour?state=\(foreignState)&code=x"), ("no state", "/connexion/psc/retour?code=x")] {
                statuses[name, default: [:]][try await window.request(.GET, path, headers: navigation).status, default: 0] += 1
            }
        }
        #expect(statuses == ["entry": [303: 130], "start": [303: 130], "made-up": [400: 130], "foreign": [400: 130], "no state": [400: 130]], "\(statuses)")
        let rowsAfter = try await rows(), eventsAfter = try await world.server.auditEvents().count
        #expect(rowsAfter == rowsBefore && eventsAfter == eventsBefore, "\(rowsBefore) → \(rowsAfter), \(eventsBefore) → \(eventsAfter) events")
        // A regulator behind the same address signs in through the provider.
        let regulator = try world.browser()
        let (page, _) = try await Self.firstSignIn(regulator, world: world)
        #expect(page.status == 303 && page.location == Self.agenda, "\(page.status) \(page.location ?? "")")
        for browser in [author, window, regulator] { await browser.shutdown() }
        await world.stop()
    }

    /// The same loop in a browser whose provider session is live: the provider answers at
    /// once, with a code, every time. When the sign-in here ends in no session (the terms of
    /// use owed, no account for the national id), each answer would cost a callback (the
    /// address's budget, a row, audit events, a code redeemed at the provider). After one
    /// answer, the SAS link leads to the terms, or to the password page (which offers the
    /// provider: a click on it starts again).
    @Test func aLoopThroughALiveProviderSessionCostsOneAnswer() async throws {
        let world = try await World()
        let navigation = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
        /// A navigation followed as a browser follows it: the callbacks it reached, its last page.
        func follow(_ browser: Browser, _ start: String) async throws -> (callbacks: Int, last: Browser.Page) {
            var url = start, callbacks = 0
            for _ in 0..<10 {
                if url.contains("/connexion/psc/retour") { callbacks += 1 }
                let page = url.hasPrefix(world.provider.issuer) ? try await browser.get(url) : try await browser.request(.GET, url, headers: navigation)
                guard [302, 303].contains(page.status), let next = page.location else { return (callbacks, page) }
                url = next
            }
            throw FixtureFailure("a redirect loop from \(start)")
        }
        let rows = { try await world.server.database.read { db in
            try ["oidc_login", "sign_in_flow", "web_session"].map { try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \($0)") ?? -1 }
        } }
        for (login, expected) in [("dwho", "/connexion/cgu"), ("rtyler", "/connexion")] {
            let browser = try world.browser()
            // Signed in at the provider once (its form): its session is live from then on.
            let authorize = try await Self.followSASLink(browser, world: world)
            let first = try await Self.callback(browser, try await browser.signInAtProvider(try await browser.get(authorize), url: authorize, login: login), world: world)
            #expect(first.status == (login == "dwho" ? 303 : 403), "\(login): \(first.status)")
            let rowsBefore = try await rows(), eventsBefore = try await world.server.auditEvents().count
            var callbacks = 0, ends: Set<String> = []
            // The SAS link, and the start itself (a loop may aim at either).
            for path in Array(repeating: Self.entryPath, count: 10) + Array(repeating: "/connexion/psc", count: 10) {
                let (count, last) = try await follow(browser, path)
                callbacks += count
                ends.insert("\(last.status) \(last.body.contains("id=\"form-connexion\"") ? "/connexion" : last.body.contains("name=\"accepte\"") ? "/connexion/cgu" : "?")")
            }
            #expect(callbacks == 0 && ends == ["200 \(expected)"], "\(login): \(callbacks) callbacks, ends \(ends)")
            let rowsAfter = try await rows(), eventsAfter = try await world.server.auditEvents().count
            #expect(rowsAfter == rowsBefore && eventsAfter == eventsBefore, "\(login): \(rowsBefore) → \(rowsAfter), \(eventsBefore) → \(eventsAfter) events")
            guard login == "rtyler" else { await browser.shutdown(); continue }
            // The regulator's own click on « Se connecter avec Pro Santé Connect » starts again,
            // told by `Sec-Fetch-Site`, or by the link's token in a browser that sends no such
            // header; a made-up token is no click.
            let page = try await browser.get("/connexion")
            let link = try #require(page.capture(#"href="(/connexion/psc\?clic=[^"]+)""#), "the page's link carries its token")
            let forged = try await browser.request(.GET, "/connexion/psc?clic=" + String(repeating: "A", count: 43), headers: navigation)
            #expect(forged.status == 303 && forged.location == "/connexion", "\(forged.status)")
            let byToken = try await browser.get(link)
            browser.cookies["__Host-as-methode"] = "mot-de-passe"   // (the click forgets the choice)
            let byHeader = try await browser.request(.GET, "/connexion/psc", headers: Self.click)
            #expect([byToken, byHeader].allSatisfy { $0.status == 303 && $0.location?.hasPrefix(world.provider.issuer) == true }, "\([byToken, byHeader].map(\.status))")
            await browser.shutdown()
        }
        await world.stop()
    }

    /// The terms of use a cross-site start leads to are those of a sign-in through the
    /// provider only. A regulator whose *password* sign-in stopped at the terms, then follows
    /// the SAS link, goes to the provider with the SAS intent: sent to the password flow's
    /// terms instead, accepting them would open that flow's session, without the habilitation
    /// the SAS link asked for.
    @Test func aPasswordSignInOwingTheTermsIsNotWhereTheSASLinkLeads() async throws {
        let world = try await World(mail: true)
        let smtp = try #require(world.smtp)
        let browser = try world.browser()
        // A password of the regulator's own (« Mot de passe oublié »), then the password step
        // and the TOTP enrolment of a first sign-in: the flow stops at the terms of use.
        let sent = try await browser.submit("/mot-de-passe-oublie", ["email": WebSignInTests.email])
        #expect(sent.status == 200)
        let token = try #require(try await smtp.resetToken(number: 1), "the reset mail reached the SMTP server")
        let form = try await browser.get("/reinitialisation?jeton=\(token)")
        let chosen = try await browser.request(.POST, "/reinitialisation", form: ["csrf": form.csrf ?? "", "jeton": token,
                                                                                  "password": WebSignInTests.password, "confirmation": WebSignInTests.password])
        #expect(chosen.status == 200, "\(chosen.status)")
        let afterPassword = try await browser.submit("/connexion", ["email": WebSignInTests.email, "password": WebSignInTests.password])
        #expect(afterPassword.status == 303 && afterPassword.location == "/connexion/totp", "\(afterPassword.status) \(afterPassword.location ?? "")")
        let enrol = try await browser.get("/connexion/totp")
        let secret = try #require(enrol.capture(#"id="cle-secrete">([A-Z2-7 ]+)<"#).flatMap(Base32.decode))
        let totp = TOTP()
        let codes = try await browser.request(.POST, "/connexion/totp", form: ["csrf": enrol.csrf ?? "", "code": totp.code(secret: secret, step: totp.step(at: Date()))])
        let owing = try await browser.request(.POST, "/connexion/suite", form: ["csrf": codes.csrf ?? ""])
        #expect(owing.status == 303 && owing.location == "/connexion/cgu", "the password flow owes the terms: \(owing.status) \(owing.location ?? "")")
        #expect(browser.cookies["__Host-as-flow"] != nil && browser.cookies["__Host-as-session"] == nil)

        // The SAS link, as the browser follows it from the SAS's page: to the provider.
        let authorize = try await Self.followSASLink(browser, world: world)
        let back = try await Self.callback(browser, try await browser.signInAtProvider(try await browser.get(authorize), url: authorize, login: "dwho"), world: world)
        // The provider's flow owes the terms too (nobody accepted them yet): accepting them
        // opens a SAS session, back on the page the SAS linked to.
        #expect(back.status == 303 && back.location == "/connexion/cgu", "\(back.status) \(back.location ?? "")")
        let version = try #require(try await browser.get("/connexion/cgu").capture(#"name="version" value="([^"]+)""#))
        let accepted = try await browser.submit("/connexion/cgu", ["accepte": "oui", "version": version])
        #expect(accepted.status == 303 && accepted.location == Self.agenda, "\(accepted.status) \(accepted.location ?? "")")
        let account = try await browser.get("/compte")
        #expect(account.body.contains("data-habilitation=\"oui\"") && account.body.contains("data-origine=\"sas\""))
        await browser.shutdown()
        await world.stop()
    }

    /// The ID token's `acr` must be the configured one.
    @Test func aWeakerAcrIsRefused() async throws {
        let world = try await World(acr: "eidas2")
        let browser = try world.browser()
        let refused = try await Self.firstSignIn(browser, world: world).page
        #expect(refused.status == 401 && browser.cookies["__Host-as-session"] == nil)
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: claim-acr" && $0.detail?.contains("eidas1") == true })
        #expect(try await world.liveSessions() == 0)
        await browser.shutdown()
        await world.stop()
    }

    // MARK: Sign-out

    /// « Se déconnecter » ends our session and the provider's (RP-initiated logout with
    /// `id_token_hint`), then the provider sends the browser to our "déconnecté" page.
    @Test func signingOutEndsTheProviderSessionToo() async throws {
        let world = try await World()
        let browser = try world.browser()
        #expect(try await Self.firstSignIn(browser, world: world).page.location == Self.agenda)
        let account = try await browser.get("/compte")
        let policy = account.headers.first(name: "Content-Security-Policy") ?? ""
        let formAction = policy.split(separator: ";").first { $0.trimmingCharacters(in: .whitespaces).hasPrefix("form-action ") }
            .map { $0.split(separator: " ").map(String.init) } ?? []
        #expect(formAction.contains("'self'") && formAction.contains(world.provider.issuer), "the sign-out form may end at the provider: \(policy)")
        let out = try await browser.request(.POST, "/deconnexion", form: ["csrf": account.csrf ?? ""])
        let endSession = try #require(out.location)
        #expect(out.status == 303 && endSession.hasPrefix(world.provider.issuer + "/oauth2/logout?"))
        let items = URLComponents(string: endSession)?.queryItems ?? []
        #expect(items.contains { $0.name == "id_token_hint" && ($0.value?.split(separator: ".").count ?? 0) == 3 })
        #expect(items.contains { $0.name == "post_logout_redirect_uri" && $0.value == world.publicURL + "/deconnexion/terminee" })
        #expect(try await Self.forwardAuth(browser, world: world).status == 401, "our session ended first")
        let atProvider = try await browser.get(endSession)
        let back = try #require(atProvider.location, "the provider sends the browser back: \(atProvider.status) \(atProvider.body.prefix(300))")
        #expect(back.hasPrefix(world.publicURL + "/deconnexion/terminee"))
        let page = try await browser.get(back)
        #expect(page.status == 200 && page.body.contains("Vous êtes déconnecté(e)"))
        // The provider's session is gone too: the next SAS link asks for the login again.
        let authorize = try await Self.followSASLink(browser, world: world)
        #expect(try await browser.get(authorize).body.contains("id=\"lform\""))
        await browser.shutdown()
        await world.stop()
    }

    /// A sign-out whose provider session cannot be ended from here (the provider unreachable
    /// since this server started, so no metadata and no logout endpoint) ends ours and says
    /// the provider's may stay open: on a shared workstation, the next SAS link would sign the
    /// next person in as this regulator without asking.
    @Test func aSignOutThatCannotEndTheProviderSessionSaysSo() async throws {
        let world = try await World()
        let browser = try world.browser()
        #expect(try await Self.firstSignIn(browser, world: world).page.location == Self.agenda)
        let account = try await browser.get("/compte")
        world.provider.stop()
        await world.server.stop()
        let again = try await world.startAgain()
        let out = try await browser.request(.POST, "/deconnexion", form: ["csrf": account.csrf ?? ""])
        #expect(out.status == 303 && out.location == "/deconnexion/psc-ouverte", "\(out.status) \(out.location ?? "-") \(out.body.prefix(300))")
        #expect(browser.cookies["__Host-as-session"] == nil)
        let live = try await again.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session WHERE revoked_at IS NULL") ?? -1 }
        #expect(live == 0, "our session ended")
        let page = try await browser.get("/deconnexion/psc-ouverte")
        #expect(page.status == 200 && page.body.contains("id=\"psc-ouverte\"") && page.body.contains("Pro Santé Connect n’a pas pu être fermée"))
        #expect(again.logs.all.contains { $0.contains("the Pro Santé Connect session could not be ended") })
        await browser.shutdown()
        await again.stop()
        await world.fhir.shutdown()
        world.smtp?.stop()
    }

    /// Signing out at the provider (another application, or PSC itself) ends our session at
    /// once through OpenID Connect Back-Channel Logout; a forged logout token ends nothing.
    @Test func backChannelLogoutEndsTheSession() async throws {
        let world = try await World()
        let browser = try world.browser()
        #expect(try await Self.firstSignIn(browser, world: world).page.location == Self.agenda)
        #expect(try await Self.forwardAuth(browser, world: world).status == 200)
        // Forged: no signature, then a real token's payload under another signature.
        let attacker = try world.browser()
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJkd2hvIn0."
        #expect(try await attacker.request(.POST, "/connexion/psc/backchannel-logout", form: ["logout_token": unsigned]).status == 400)
        #expect(try await attacker.request(.POST, "/connexion/psc/backchannel-logout", form: [:]).status == 400)
        // A NUL, in the form or in the address, gets the endpoint's own JSON refusal (its
        // client is the provider), not the web surface's French page.
        for (path, form) in [("/connexion/psc/backchannel-logout?x=%00", ["logout_token": unsigned]),
                             ("//connexion/psc/backchannel-logout/?x=%00", ["logout_token": unsigned]),
                             ("/connexion/psc/backchannel-logout", ["logout_token": unsigned + "\u{0}"])] {
            let refused = try await attacker.request(.POST, path, form: form)
            #expect(refused.status == 400 && refused.body == #"{"error":"invalid_request"}"#
                    && refused.headers.first(name: "Content-Type") == "application/json", "\(path): \(refused.status) \(refused.body)")
        }
        // A body past the endpoint's 64 KiB: JSON too, with its 413.
        let large = try await attacker.request(.POST, "/connexion/psc/backchannel-logout", form: ["logout_token": String(repeating: "a", count: 70_000)])
        #expect(large.status == 413 && large.body == #"{"error":"invalid_request"}"# && large.headers.first(name: "Content-Type") == "application/json",
                "\(large.status) \(large.body.prefix(200))")
        // Another method: JSON 405 naming POST (HEAD: the same, without a body), not the
        // French "page not found" a browser gets for an unknown page.
        for method in [HTTPMethod.GET, .HEAD, .PUT, .DELETE, .PATCH, .OPTIONS, .TRACE] {
            let other = try await attacker.request(method, "/connexion/psc/backchannel-logout")
            #expect(other.status == 405 && other.headers.first(name: "Allow") == "POST" && other.headers.first(name: "Content-Type") == "application/json"
                    && other.body == (method == .HEAD ? "" : #"{"error":"invalid_request"}"#), "\(method): \(other.status) \(other.body.prefix(200))")
        }
        // A header whose algorithm is 40,000 characters: refused, and its log line stays short
        // (the algorithm is cut in the error, every logged value is bounded).
        let longAlgorithm = Data(#"{"alg":"\#(String(repeating: "X", count: 40_000))"}"#.utf8).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
        #expect(try await attacker.request(.POST, "/connexion/psc/backchannel-logout", form: ["logout_token": longAlgorithm + ".eyJzdWIiOiJkd2hvIn0.c2ln"]).status == 400)
        let longest = world.server.logs.all.map(\.utf8.count).max() ?? 0
        #expect(longest < 8_192, "a log line of \(longest) bytes")
        #expect(try await Self.forwardAuth(browser, world: world).status == 200, "nothing ended")
        await attacker.shutdown()

        let logout = try await browser.get(world.provider.issuer + "/?logout=1")
        #expect(logout.status < 500, "the provider signs out: \(logout.status)")
        #expect(try await eventually(timeout: .seconds(10)) { try await Self.forwardAuth(browser, world: world).status == 401 },
                "the provider's back-channel logout ended the session")
        let ended = try #require(try await world.server.auditEvents().last { $0.action == "provider-logout" })
        #expect(ended.outcome == "session ended" && ended.actorSubject == "provider")
        await browser.shutdown()
        await world.stop()
    }

    // MARK: Token checks on real tokens

    /// The relying party's checks, on tokens the real provider issued: each alteration is
    /// refused with the claim or signature it breaks.
    /// RFC 9207 §2.4: an answer naming another issuer is refused; one naming none is refused
    /// from a provider whose discovery says it always names itself (Keycloak does; the test
    /// provider, LemonLDAP::NG 2.16, does not say so, so the live path is the unit here).
    @Test func anAnswerWithoutIssIsRefusedFromAProviderThatAdvertisesIt() throws {
        let issuer = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"
        #expect(ProviderSignIn.issuerAnswers(issuer, configured: issuer, advertised: true))
        #expect(ProviderSignIn.issuerAnswers(issuer, configured: issuer, advertised: false))
        #expect(ProviderSignIn.issuerAnswers(nil, configured: issuer, advertised: false))
        #expect(!ProviderSignIn.issuerAnswers(nil, configured: issuer, advertised: true))
        #expect(!ProviderSignIn.issuerAnswers("https://evil.example", configured: issuer, advertised: false))
        let document = #"{"issuer":"\#(issuer)","authorization_endpoint":"\#(issuer)/a","token_endpoint":"\#(issuer)/t","jwks_uri":"\#(issuer)/k","authorization_response_iss_parameter_supported":true}"#
        let metadata = try JSONDecoder().decode(ProviderMetadata.self, from: Data(document.utf8))
        #expect(metadata.authorizationResponseIssParameterSupported == true)
    }

/// `auth_time` (OpenID Connect Core §2): read when the ID token carries it (the test
    /// provider's always do), refused when it is not a number, before 1970 or in the future
    /// (a value past the `Date` range would otherwise trap), absent when the provider
    /// leaves it out. Tokens signed with the provider's own key.
    @Test func theAuthenticationTimeIsReadAndChecked() async throws {
        let world = try await World()
        let owned = try HTTPClient.testClient(pki: world.pki)
        let rp = RelyingParty(configuration: RelyingPartyConfiguration(issuer: world.provider.issuer, clientID: Self.clientID,
                                                                       clientAuthentication: .clientSecretBasic(secret: Self.clientSecret),
                                                                       redirectURI: world.publicURL + "/connexion/psc/retour"),
                              httpClient: owned.client)
        let sign = try await Self.logoutTokenSigner(world)
        let now = Date().timeIntervalSince1970.rounded(.down), nonce = SecretToken.generate()
        func idToken(_ authTime: ClaimValue?) async throws -> String {
            try await sign(now, ["events": nil, "jti": nil, "nonce": .string(nonce), "acr": .string("eidas1"), "auth_time": authTime])
        }
        func refusal(_ authTime: ClaimValue?) async -> OpenIDConnectError? {
            do { _ = try await rp.validateIDToken(try await idToken(authTime), nonce: nonce); return nil } catch let error as OpenIDConnectError { return error } catch { return .provider("\(error)") }
        }
        let read = try await rp.validateIDToken(try await idToken(.number(now - 30)), nonce: nonce)
        #expect(read.authenticatedAt == Date(timeIntervalSince1970: now - 30))
        #expect(try await rp.validateIDToken(try await idToken(nil), nonce: nonce).authenticatedAt == nil)
        #expect(await refusal(.string("hier")) == .claim("auth_time", "not a number"))
        #expect(await refusal(.number(-1e300)) == .claim("auth_time", "before 1970"))
        #expect(await refusal(.number(now + 3600)) == .claim("auth_time", "in the future"))
        #expect(await refusal(.number(1e300)) == .claim("auth_time", "in the future"))
        await owned.shutdown()
        await world.stop()
    }

    @Test func realTokensAreCheckedClaimByClaim() async throws {
        let world = try await World()
        let owned = try HTTPClient.testClient(pki: world.pki)
        let client = owned.client
        func party(clientID: String = Self.clientID, clock: @escaping @Sendable () -> Date = Date.init) -> RelyingParty {
            RelyingParty(configuration: RelyingPartyConfiguration(issuer: world.provider.issuer, clientID: clientID,
                                                                  clientAuthentication: .clientSecretBasic(secret: Self.clientSecret),
                                                                  redirectURI: world.publicURL + "/connexion/psc/retour"),
                         httpClient: client, clock: clock)
        }
        let rp = party()
        let browser = try world.browser()
        func random() -> String { SecretToken.generate() }
        func code(state: String, nonce: String, verifier: String) async throws -> String {
            let url = try await rp.authorizationURL(state: state, nonce: nonce, codeVerifier: verifier)
            let page = try await browser.get(url)
            let answer = page.status == 302 ? page : try await browser.signInAtProvider(page, url: url, login: "dwho")
            return try #require(URLComponents(string: answer.location ?? "")?.queryItems?.first { $0.name == "code" }?.value)
        }
        func refusal<T>(_ body: () async throws -> T) async -> OpenIDConnectError? {
            do { _ = try await body(); return nil } catch let error as OpenIDConnectError { return error } catch { return .provider("unexpected \(error)") }
        }

        let (state, nonce, verifier) = (random(), random(), random())
        let first = try await code(state: state, nonce: nonce, verifier: verifier)
        let tokens = try await rp.redeem(code: first, codeVerifier: verifier)
        let idToken = try await rp.validateIDToken(tokens.idToken, nonce: nonce)
        #expect(idToken.subject == "dwho" && idToken.acr == "eidas1")
        #expect(idToken.authenticatedAt.map { abs($0.timeIntervalSinceNow) < 120 } == true, "the provider says when it authenticated the user")
        let info = try await rp.userinfo(accessToken: try #require(tokens.accessToken), subject: idToken.subject)
        #expect(info.string("SubjectNameID") == Self.nationalID && info.string("given_name") == "Jules" && info.string("family_name") == "Marius")
        #expect(!"\(tokens)".contains(tokens.idToken), "tokens never print")

        // The code is single use, and bound to its PKCE verifier.
        #expect(await refusal { try await rp.redeem(code: first, codeVerifier: verifier) }?.label == "code-refused")
        let second = try await code(state: random(), nonce: random(), verifier: verifier)
        #expect(await refusal { try await rp.redeem(code: second, codeVerifier: random()) }?.label == "code-refused")

        // Nonce, audience, expiry, subject of userinfo.
        #expect(await refusal { try await rp.validateIDToken(tokens.idToken, nonce: random()) } == .claim("nonce", "does not match the request"))
        #expect(await refusal { try await party(clientID: "another-client").validateIDToken(tokens.idToken, nonce: nonce) }?.label == "claim-aud")
        let later = party(clock: { Date().addingTimeInterval(3600) })
        #expect(await refusal { try await later.validateIDToken(tokens.idToken, nonce: nonce) }?.label == "claim-exp")
        #expect(await refusal { try await rp.userinfo(accessToken: tokens.accessToken!, subject: "someone-else") }?.label == "claim-sub")

        // Signatures: altered, stripped, re-signed with another key under the provider's kid.
        let parts = tokens.idToken.split(separator: ".").map(String.init)
        // A character in the middle (the last one may only carry padding bits).
        var signature = Array(parts[2])
        signature[signature.count / 2] = signature[signature.count / 2] == "A" ? "B" : "A"
        let tampered = parts[0] + "." + parts[1] + "." + String(signature)
        #expect(await refusal { try await rp.validateIDToken(tampered, nonce: nonce) }?.label == "signature")
        var payload = try #require(try JSONSerialization.jsonObject(with: Data(base64URL: parts[1])) as? [String: Any])
        payload["sub"] = "someone-else"
        let swapped = parts[0] + "." + (try JSONSerialization.data(withJSONObject: payload)).base64URL + "." + parts[2]
        #expect(await refusal { try await rp.validateIDToken(swapped, nonce: nonce) }?.label == "signature")
        let none = (try JSONSerialization.data(withJSONObject: ["alg": "none", "typ": "JWT"])).base64URL + "." + parts[1] + "."
        #expect(await refusal { try await rp.validateIDToken(none, nonce: nonce) }?.label == "signature")
        let header = try #require(try JSONSerialization.jsonObject(with: Data(base64URL: parts[0])) as? [String: Any])
        let keyPath = world.pki.directory.appendingPathComponent("forger.pem").path
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", keyPath]
        try openssl.run()
        openssl.waitUntilExit()
        let forger = try await ClientAssertionKey.load(pem: try String(contentsOfFile: keyPath, encoding: .utf8), kid: header["kid"] as? String)
        let forgedClaims = try JSONDecoder().decode(ClaimSet.self, from: Data(base64URL: parts[1]))
        let forged = try await forger.sign(forgedClaims)
        #expect(await refusal { try await rp.validateIDToken(forged, nonce: nonce) } == .signature("the signature does not verify"))
        // Forged `kid`s, many at once: refused, and the provider is read again at most once.
        let loadsBefore = await rp.loads
        let unknownKids = try await withThrowingTaskGroup(of: OpenIDConnectError?.self) { group in
            for index in 0..<40 {
                let header = (try JSONSerialization.data(withJSONObject: ["alg": "RS256", "kid": "forged-\(index)"])).base64URL
                let token = header + "." + parts[1] + "." + parts[2]
                group.addTask {
                    do { _ = try await rp.validateIDToken(token, nonce: nonce); return nil } catch { return error as? OpenIDConnectError ?? .provider("\(error)") }
                }
            }
            return try await group.reduce(into: [OpenIDConnectError?]()) { $0.append($1) }
        }
        #expect(unknownKids.allSatisfy { $0?.label == "signature" })
        let reads = await rp.loads - loadsBefore
        #expect(reads <= 1, "one shared re-read at most: \(reads)")
        await browser.shutdown()
        await owned.shutdown()
        await world.stop()
    }

    // MARK: A real browser

    /// Headless Chromium: SAS link → the provider's login form → CGU → "Mon compte" with the
    /// habilitation; then, our session cookie dropped, the SAS link again → signed in with no
    /// form at all (the provider's session is live).
    @Test func chromiumSignsInThroughTheProvider() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), "scripts/install-deps.sh installs chromium")
        let world = try await World()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Browser/cdp_psc.py").path
        let entry = "\(world.server.webURL)/connexion?origin=sas&retour=%2Fcompte%3Forigin%3Dsas"
        let run = try await HeadlessBrowserTests.runScript(script, [entry, "dwho"])
        let events = try await world.server.auditEvents().suffix(3).map { "\($0.action) \($0.outcome) \($0.detail ?? "")" }
        #expect(run.status == 0, "\(run.errors) \(events)")
        let result = run.result
        #expect(result["provider_login_form"] as? Bool == true && result["provider_origin"] as? String == world.provider.issuer, "\(result)")
        let first = result["first"] as? [String: Any] ?? [:]
        #expect(first["habilitation"] as? String == "oui" && first["origine"] as? String == "sas", "\(result)")
        #expect(first["nom"] as? String == "Jules MARIUS" && first["lang"] as? String == "fr")
        #expect(first["session_cookie_visible_to_script"] as? Bool == false)
        #expect(result["second_habilitation"] as? String == "oui" && result["second_path"] as? String == "/compte")
        await world.stop()
    }

    /// Discovery: every endpoint https, except on loopback for a development issuer that is
    /// itself http on loopback; a real provider's document naming an http endpoint on this
    /// host is refused.
    @Test func discoveryAcceptsHTTPOnlyForALoopbackIssuer() throws {
        func document(issuer: String, token: String) throws -> ProviderMetadata {
            let json = """
                {"issuer": "\(issuer)", "authorization_endpoint": "\(issuer)/authorize", "token_endpoint": "\(token)",
                 "jwks_uri": "\(issuer)/jwks"}
                """
            return try JSONDecoder().decode(ProviderMetadata.self, from: Data(json.utf8))
        }
        let psc = "https://auth.esw.esante.gouv.fr/auth/realms/esante-wallet"
        #expect(throws: Never.self) { try document(issuer: psc, token: psc + "/token").validate(expectedIssuer: psc) }
        #expect(throws: OpenIDConnectError.self) { try document(issuer: psc, token: "http://127.0.0.1:8080/token").validate(expectedIssuer: psc) }
        #expect(throws: OpenIDConnectError.self) { try document(issuer: psc, token: "http://auth.esw.esante.gouv.fr/token").validate(expectedIssuer: psc) }
        let development = "http://127.0.0.1:9000"
        #expect(throws: Never.self) { try document(issuer: development, token: "http://localhost:9000/token").validate(expectedIssuer: development) }
        #expect(throws: OpenIDConnectError.self) { try document(issuer: development, token: "http://example.org/token").validate(expectedIssuer: development) }
    }

    /// A provider that sends its answer's head and then trickles the body (a byte a second,
    /// never done): the exchange is cut at the request timeout, body included, instead of
    /// holding the discovery (and every callback waiting on it) for as long as it sends.
    @Test func aTricklingProviderIsCutAtTheRequestTimeout() async throws {
        let port = freeLoopbackPort()
        let script = """
            import socket, sys, time
            server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", int(sys.argv[1]))); server.listen(1)
            print("ready", flush=True)
            connection, _ = server.accept(); connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: 100000\\r\\n\\r\\n")
            for _ in range(60):
                connection.sendall(b" "); time.sleep(1)
            """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", script, "\(port)"]
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        defer { process.terminate() }
        _ = output.fileHandleForReading.availableData   // "ready"
        let owned = OwnedHTTPClient()
        let client = owned.client
        var configuration = RelyingPartyConfiguration(issuer: "http://127.0.0.1:\(port)", clientID: Self.clientID,
                                                      clientAuthentication: .clientSecretBasic(secret: Self.clientSecret), redirectURI: "https://as.example/cb")
        configuration.requestTimeout = 2
        let party = RelyingParty(configuration: configuration, httpClient: client)
        let started = ContinuousClock.now
        do {
            _ = try await party.providerMetadata()
            Issue.record("a body that never ends was accepted")
        } catch {
            #expect("\(error)".contains("ProviderDeadline"), "cut by our deadline, not by the trickle's end: \(error.label) \(error)")
        }
        // Not a timing assertion: the trickle lasts 60 s, and a request that ignored the
        // cancellation would hold the call until then.
        #expect(ContinuousClock.now - started < .seconds(30), "the request itself was cancelled at the deadline")
        await owned.shutdown()
    }

    // MARK: Logout tokens

    /// Logout tokens signed with the provider's own key (read from its configuration folder)
    /// but broken one way each: refused, nothing ended; the valid one ends the session, once.
    @Test func logoutTokensAreCheckedClaimByClaim() async throws {
        let world = try await World()
        let browser = try world.browser()
        #expect(try await Self.firstSignIn(browser, world: world).page.location == Self.agenda)
        let now = Date().timeIntervalSince1970.rounded(.down)
        let sign = try await Self.logoutTokenSigner(world)
        func token(_ changes: [String: ClaimValue?]) async throws -> String { try await sign(now, changes) }
        func post(_ token: String) async throws -> Int {
            try await browser.request(.POST, "/connexion/psc/backchannel-logout", form: ["logout_token": token]).status
        }
        #expect(try await post(try await token(["aud": .string("another-client")])) == 400)
        #expect(try await post(try await token(["iss": .string("https://evil.example")])) == 400)
        #expect(try await post(try await token(["events": nil])) == 400)
        #expect(try await post(try await token(["nonce": .string("n")])) == 400)
        #expect(try await post(try await token(["sub": nil])) == 400, "neither sub nor sid")
        #expect(try await post(try await token(["iat": .number(now - 3600)])) == 400)
        #expect(try await post(try await token(["jti": nil])) == 400)
        #expect(try await post(try await token(["exp": .number(now - 120)])) == 400, "an exp that is past")
        #expect(try await Self.forwardAuth(browser, world: world).status == 200, "nothing ended")
        let valid = try await token([:])
        #expect(try await post(valid) == 200)
        #expect(try await Self.forwardAuth(browser, world: world).status == 401)
        #expect(try await post(valid) == 400, "a logout token works once")
        await browser.shutdown()
        await world.stop()
    }

    /// Signs logout tokens with the provider's own key (read from its configuration folder):
    /// a valid one for `dwho` issued at the given time, changed as asked.
    static func logoutTokenSigner(_ world: World) async throws -> @Sendable (_ issuedAt: TimeInterval, _ changes: [String: ClaimValue?]) async throws -> String {
        let run = try #require(try FileManager.default.contentsOfDirectory(atPath: world.provider.directory.path).first { $0.hasPrefix("run-") })
        let folder = world.provider.directory.appendingPathComponent(run)
        let configuration = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: folder.appendingPathComponent("conf/lmConf-1.json"))) as? [String: Any])
        let providerKey = try await ClientAssertionKey.load(pem: try String(contentsOf: folder.appendingPathComponent("oidc-sig.key"), encoding: .utf8),
                                                            kid: configuration["oidcServiceKeyIdSig"] as? String)
        let (issuer, clientID) = (world.provider.issuer, Self.clientID)
        return { now, changes in
            var claims: [String: ClaimValue] = [
                "iss": .string(issuer), "aud": .string(clientID), "iat": .number(now), "exp": .number(now + 120),
                "jti": .string(SecretToken.generate()), "sub": .string("dwho"),
                "events": .object(["http://schemas.openid.net/event/backchannel-logout": .object([:])]),
            ]
            for (name, value) in changes { claims[name] = value }
            return try await providerKey.sign(ClaimSet(claims: claims))
        }
    }

    /// A back-channel logout that comes while a sign-in is between the provider and our
    /// callback (the code issued, the flow not yet written) refuses that callback: the
    /// session the provider ended is not opened here afterwards. A sign-in started after the
    /// logout opens normally, in the same provider session when the provider kept it (as
    /// here: the logout tokens are the test's own, the provider's session lives on).
    /// Logout tokens as PSC sends them (`sid` and `sub`), then by subject alone.
    @Test func aLogoutDuringTheCallbackOpensNothing() async throws {
        let world = try await World()
        let browser = try world.browser()
        let sign = try await Self.logoutTokenSigner(world)
        let margin = Duration.seconds(SessionConfiguration().providerLogoutClockMargin)
        #expect(try await Self.firstSignIn(browser, world: world).page.location == Self.agenda)
        let sid = try #require(try await world.server.database.read { db in
            try String.fetchOne(db, sql: "SELECT oidc_session_id FROM web_session WHERE revoked_at IS NULL")
        }, "the provider's ID tokens carry a sid")
        /// Our cookies dropped, the provider's kept: a SAS link up to the provider's answer.
        func silentLogin() async throws -> Browser.Page {
            browser.cookies = [:]
            let authorize = try await Self.followSASLink(browser, world: world)
            let answer = try await browser.get(authorize)
            #expect(answer.status == 302, "no login form: \(answer.status)")
            return answer
        }
        func logout(_ claims: [String: ClaimValue?]) async throws -> Int {
            let token = try await sign(Date().timeIntervalSince1970.rounded(.down), claims)
            return try await browser.request(.POST, "/connexion/psc/backchannel-logout", form: ["logout_token": token]).status
        }

        for claims: [String: ClaimValue?] in [["sid": .string(sid)], [:]] {
            let answer = try await silentLogin()
            #expect(try await logout(claims) == 200)
            let back = try await Self.callback(browser, answer, world: world)
            #expect(back.status == 401 && back.body.contains("Session Pro Santé Connect terminée"), "\(claims): \(back.status) \(back.location ?? "") \(back.body.prefix(300))")
            #expect(try await world.liveSessions() == 0)
            let refusal = try #require(try await world.server.auditEvents().last { $0.action == "sign-in-psc" })
            #expect(refusal.outcome == "refused: logged-out-at-provider" && refusal.accountId != nil, "\(refusal)")
            // Started after the logout (and the instances' clock margin): it opens, in the same
            // provider session.
            try await Task.sleep(for: margin + .milliseconds(500))
            let opened = try await Self.callback(browser, try await silentLogin(), world: world)
            #expect(opened.status == 303 && opened.location == Self.agenda, "\(claims): \(opened.status) \(opened.location ?? "") \(opened.body.prefix(300))")
            #expect(try await world.liveSessions() == 1)
        }
        let sessions = try await world.server.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session WHERE oidc_session_id = ?", arguments: [sid])
        }
        #expect(sessions == 3, "the first sign-in and the two after the logouts")
        await browser.shutdown()
        await world.stop()
    }

    /// `private_key_jwt`: the client assertion is a JWT our public key verifies, naming us
    /// as issuer and subject and the token endpoint as audience, short-lived and unique.
    /// (LemonLDAP::NG 2.16 does not accept this method, so it is checked here, not against it.)
    @Test(arguments: ["EC", "RSA"]) func clientAssertionsVerifyUnderThePublishedKey(_ kind: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("assertion-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let keyPath = directory.appendingPathComponent("key.pem").path
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = kind == "EC" ? ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", keyPath]
                                         : ["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", keyPath]
        try openssl.run()
        openssl.waitUntilExit()
        let key = try await ClientAssertionKey.load(pem: try String(contentsOfFile: keyPath, encoding: .utf8), kid: "as-1")
        #expect(key.algorithm == (kind == "EC" ? "ES256" : "RS256") && key.publicJWK["kid"] == "as-1" && key.publicJWK["d"] == nil)
        let owned = OwnedHTTPClient()
        let client = owned.client
        let rp = RelyingParty(configuration: RelyingPartyConfiguration(issuer: "https://psc.example", clientID: "as-client",
                                                                       clientAuthentication: .privateKeyJWT(key), redirectURI: "https://as.example/cb"),
                              httpClient: client)
        let first = try await rp.clientAssertion(key: key, audience: "https://psc.example/token")
        let second = try await rp.clientAssertion(key: key, audience: "https://psc.example/token")
        let verifier = JWTKeyCollection()
        try await verifier.add(jwk: JWK(json: String(decoding: try JSONEncoder().encode(key.publicJWK), as: UTF8.self)))
        let claims = try await verifier.verify(first, as: ClaimSet.self)
        #expect(claims.string("iss") == "as-client" && claims.string("sub") == "as-client" && claims.string("aud") == "https://psc.example/token")
        let lifetime = (claims["exp"]?.seconds ?? 0) - (claims["iat"]?.seconds ?? 0)
        #expect(lifetime > 0 && lifetime <= 60)
        #expect(claims.string("jti") != (try await verifier.verify(second, as: ClaimSet.self)).string("jti"))
        await owned.shutdown()
    }
}
