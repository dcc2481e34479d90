@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import OpenIDConnect
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

        init(acr: String = "eidas1") async throws {
            pki = try TestPKI()
            let webPort = freeLoopbackPort()
            let publicURL = "https://localhost:\(webPort)"
            self.publicURL = publicURL
            provider = try await OIDCTestProvider(pki: pki, clients: [
                .init(id: ProviderSignInTests.clientID, secret: ProviderSignInTests.clientSecret, redirect: publicURL + "/connexion/psc/retour",
                      post_logout: publicURL + "/deconnexion/terminee", backchannel: publicURL + "/connexion/psc/backchannel-logout"),
            ])
            let secretPath = pki.directory.appendingPathComponent("oidc-secret").path
            try Data((ProviderSignInTests.clientSecret + "\n").utf8).write(to: URL(fileURLWithPath: secretPath))
            let issuer = provider.issuer, caPath = pki.caPath
            do {
                server = try await RunningServer.start(pki: pki) { configuration in
                    configuration.webPort = webPort
                    configuration.publicURL = publicURL
                    configuration.allowedReturnHosts = ["localhost", "agenda.example"]
                    configuration.rateLimitPerMinute = 120
                    var sso = SSOConfiguration(issuer: issuer, clientID: ProviderSignInTests.clientID)
                    sso.clientSecretPath = secretPath
                    sso.caPath = caPath
                    sso.acr = acr
                    configuration.sso = sso
                }
            } catch {
                provider.stop()
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
        }

        /// Live sessions in the database.
        func liveSessions() async throws -> Int {
            let database = try AccountDatabase(path: server.databasePath)
            return try await database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session WHERE revoked_at IS NULL") ?? 0 }
        }
    }

    static var entryPath: String { "/connexion?origin=sas&retour=\(agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)" }

    /// The SAS link, up to the provider: returns the authorization URL the browser was sent to.
    static func followSASLink(_ browser: Browser, world: World) async throws -> String {
        let entry = try await browser.get(entryPath)
        #expect(entry.status == 303 && entry.location == "/connexion/psc", "a SAS entry goes to the provider: \(entry.status) \(entry.location ?? "")")
        let start = try await browser.get("/connexion/psc")
        let authorize = try #require(start.location, "the start redirects: \(start.status) \(start.body.prefix(300))")
        #expect(start.status == 303 && authorize.hasPrefix(world.provider.issuer + "/oauth2/authorize?"))
        return authorize
    }

    /// Provider answer → our callback; returns our answer.
    static func callback(_ browser: Browser, _ providerAnswer: Browser.Page, world: World) async throws -> Browser.Page {
        let location = try #require(providerAnswer.location, "the provider redirects back: \(providerAnswer.status) \(providerAnswer.body.prefix(400))")
        #expect(location.hasPrefix(world.publicURL + "/connexion/psc/retour?"))
        return try await browser.get(location)
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
        // « Se connecter sans Pro Santé Connect » keeps the SAS intent and is remembered.
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
        let planted = try await b.get(callbackURL)
        #expect(planted.status == 400 && b.cookies["__Host-as-session"] == nil, "another browser's callback opens nothing")
        let late = try await a.get(callbackURL)
        #expect(late.status == 400 && a.cookies["__Host-as-session"] == nil, "a state works once")
        #expect(try await world.liveSessions() == 0)

        // Replayed code: a used code, presented with a fresh state of this browser.
        let c = try world.browser()
        let (first, code) = try await Self.firstSignIn(c, world: world)
        #expect(first.status == 303 && first.location == Self.agenda)
        let usedCode = try #require(code)
        let sessionsBefore = try await world.liveSessions()
        let fresh = try await c.get("/connexion/psc")
        let freshState = try #require(URLComponents(string: fresh.location ?? "")?.queryItems?.first { $0.name == "state" }?.value)
        let replay = try await c.get("/connexion/psc/retour?state=\(freshState)&code=\(usedCode)")
        #expect(replay.status == 401 && replay.body.contains("Connexion refusée"))
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: code-refused" })
        #expect(try await world.liveSessions() == sessionsBefore)

        // The provider's own error (e.g. the regulator cancelled at PSC).
        let cancelled = try await c.get("/connexion/psc")
        let cancelledState = try #require(URLComponents(string: cancelled.location ?? "")?.queryItems?.first { $0.name == "state" }?.value)
        let error = try await c.get("/connexion/psc/retour?state=\(cancelledState)&error=access_denied")
        #expect(error.status == 401 && error.body.contains("id=\"lien-sans-psc\""))

        // Deactivated by the SAS: no session at all, and the live one loses the habilitation.
        let deactivated = try await world.fhir.send(.PUT, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C\(Self.nationalID)",
                                                    body: Bodies.practitioner(national: Self.nationalID, active: false, email: WebSignInTests.email))
        #expect(deactivated.status == 200)
        #expect(try await Self.forwardAuth(c, world: world).status == 403, "the live session loses the habilitation at once")
        let d = try world.browser()
        let withdrawn = try await Self.firstSignIn(d, world: world).page
        #expect(withdrawn.status == 403 && withdrawn.body.contains("Habilitation retirée") && d.cookies["__Host-as-session"] == nil)
        #expect(try await world.server.auditEvents().contains { $0.outcome == "refused: deactivated-by-sas" })
        for browser in [a, b, c, d] { await browser.shutdown() }
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
}
