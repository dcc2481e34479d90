@testable import AccountServer
import Accounts
import Foundation
import Testing

/// « Mon compte »: the regulator sees their open sessions (this one marked, the others with
/// their browser, address and times) and ends the others in one click; the sessions ended
/// lose their habilitation at their next request.
@Suite("Account page")
struct AccountPageTests {
    typealias World = WebSignInTests.World

    static let firefoxOnWindows = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"

    @Test func browsersAreNamedFromTheirUserAgent() {
        #expect(BrowserDescription.french(Self.firefoxOnWindows) == "Firefox sous Windows")
        #expect(BrowserDescription.french("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Safari/605.1.15") == "Safari sous macOS")
        #expect(BrowserDescription.french("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36 Edg/131.0.0.0") == "Edge sous Windows")
        #expect(BrowserDescription.french("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Mobile Safari/537.36") == "Chrome sous Android")
        #expect(BrowserDescription.french("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1") == "Safari sous iPhone")
        #expect(BrowserDescription.french("curl/8.5.0") == "Navigateur non reconnu")
        #expect(BrowserDescription.french(nil) == "Navigateur non identifié" && BrowserDescription.french("") == "Navigateur non identifié")
    }

    @Test func theRegulatorSeesTheirSessionsAndEndsTheOthers() async throws {
        let world = try await World()
        let entry = "/connexion?origin=sas&retour=\(WebSignInTests.agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)"
        let office = try world.browser()
        try await WebSignInTests.choosePassword(office, world: world)
        _ = try await office.get(entry)
        let (_, secret, recoveryCodes) = try await WebSignInTests.signIn(office)
        // A second browser: Firefox on Windows, with a User-Agent that tries markup.
        let other = try world.browser()
        other.defaultHeaders = [("User-Agent", Self.firefoxOnWindows + " <script>alert(1)</script>")]
        _ = try await other.get(entry)
        try await WebSignInTests.signIn(other, secret: secret)
        #expect(try await ForwardAuthTests.ask(other, server: world.server).status == 200)
        // A third, left half-way: past the password, before its second factor.
        let halfWay = try world.browser()
        #expect(try await halfWay.submit("/connexion", ["email": WebSignInTests.email, "password": WebSignInTests.password]).location == "/connexion/second-facteur")

        let page = try await office.get("/compte")
        #expect(page.status == 200)
        let items = page.body.matches(of: /<li id="session-([0-9a-f]{12})" data-courante="(oui|non)">/).map { (String($0.1), String($0.2)) }
        #expect(items.count == 2 && items.first?.1 == "oui" && items.last?.1 == "non", "this one first, marked: \(items)")
        #expect(page.body.contains("<strong>Cette session</strong>") && page.body.contains("Firefox sous Windows"), "\(page.body)")
        #expect(!page.body.contains("<script>alert") && !page.body.contains("Gecko/20100101"), "the User-Agent itself is never shown")
        #expect(page.body.contains("adresse 127.0.0.1") && page.body.contains("form-fermer-autres"))
        let otherReference = try #require(items.last?.0)

        // A post without the form's token closes nothing.
        let forged = try await office.request(.POST, "/compte/sessions/fermer-autres", form: ["csrf": "forged"])
        #expect(forged.status == 403)
        #expect(try await other.get("/compte").status == 200)

        let closed = try await office.submit("/compte", to: "/compte/sessions/fermer-autres", [:])
        #expect(closed.status == 303 && closed.location == "/compte?message=autres-sessions-fermees", "\(closed.status) \(closed.location ?? "-")")
        let after = try await office.get(try #require(closed.location))
        #expect(after.status == 200 && after.body.contains("Vos autres sessions sont fermées"))
        #expect(after.body.matches(of: /<li id="session-/).count == 1 && !after.body.contains("form-fermer-autres"))
        // The other browser is signed out, and forward-auth refuses it at once.
        let otherPage = try await other.get("/compte")
        #expect(otherPage.status == 303 && otherPage.location == "/connexion")
        let gate = try await ForwardAuthTests.ask(other, server: world.server)
        #expect(gate.status == 401 || gate.status == 403, "\(gate.status)")
        #expect(try await ForwardAuthTests.ask(office, server: world.server).status == 200, "this session keeps its habilitation")
        // The sign-in left half-way cannot be finished, even with a good code.
        _ = try await halfWay.submit("/connexion/second-facteur", ["code": try #require(recoveryCodes.first)])
        #expect(try await halfWay.get("/compte").location == "/connexion", "no session came of it")

        let event = try #require(try await world.server.auditEvents().last { $0.action == "other-sessions-revoked" })
        #expect(event.outcome == "1 revoked" && event.surface == "web" && event.detail?.contains("1 sign-in(s) under way ended") == true, "\(event)")
        #expect(event.detail?.contains(otherReference) == false && event.detail?.hasPrefix("kept session ") == true)
        await office.shutdown()
        await other.shutdown()
        await halfWay.shutdown()
        await world.stop()
    }
}
