@testable import AccountServer
import Accounts
import Foundation
import Storage
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
        #expect(BrowserDescription.french("Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1") == "Safari sur iPhone")
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

        // Its second-factor page is open, as an attacker past the password would have it.
        let codePage = try await halfWay.get("/connexion/second-facteur")
        let codeCSRF = try #require(codePage.csrf)

        let page = try await office.get("/compte")
        #expect(page.status == 200)
        let items = page.body.matches(of: /<li id="session-([0-9a-f]{12})" data-courante="(oui|non)">/).map { (String($0.1), String($0.2)) }
        #expect(items.count == 2 && items.first?.1 == "oui" && items.last?.1 == "non", "this one first, marked: \(items)")
        #expect(page.body.contains("<strong>Cette session</strong>") && page.body.contains("Firefox sous Windows"), "\(page.body)")
        #expect(!page.body.contains("<script>alert") && !page.body.contains("Gecko/20100101"), "the User-Agent itself is never shown")
        #expect(page.body.contains("adresse de connexion 127.0.0.1") && page.body.contains("Fermer mon autre session"))
        #expect(!page.body.contains("avertissement-psc"), "no Pro Santé Connect session here")
        let otherReference = try #require(items.last?.0)

        // A post without the form's token closes nothing.
        let forged = try await office.request(.POST, "/compte/sessions/fermer-autres", form: ["csrf": "forged"])
        #expect(forged.status == 403)
        // Asked just before: the habilitation is granted.
        #expect(try await ForwardAuthTests.ask(other, server: world.server).status == 200)

        let closing = try await office.submit("/compte", to: "/compte/sessions/fermer-autres", [:])
        #expect(closing.status == 303 && closing.location?.hasPrefix("/compte?avis=autres-1.") == true, "\(closing.status) \(closing.location ?? "-")")
        let closed = try await office.get(try #require(closing.location))
        #expect(closed.status == 200 && closed.body.contains("Votre autre session est fermée"), "\(closed.status) \(closed.body)")
        #expect(closed.body.matches(of: /<li id="session-/).count == 1 && !closed.body.contains("form-fermer-autres"))
        // The notice is bound to the session: a link made elsewhere cannot make the page claim it.
        let mac = try #require(closing.location?.split(separator: ".").last.map(String.init))
        #expect(try await office.get("/compte?avis=autres-5.\(mac)").body.contains("sont fermées") == false)
        #expect(try await office.get("/compte?avis=autres-1.forged").body.contains("est fermée") == false)
        // The other browser's very next request, with its cookie: refused by forward-auth.
        let gate = try await ForwardAuthTests.ask(other, server: world.server)
        #expect(gate.status == 401 && gate.headers.first(name: "X-Auth-Account-Id") == nil, "\(gate.status) \(gate.headers)")
        #expect(try await other.get("/compte").location == "/connexion")
        #expect(try await ForwardAuthTests.ask(office, server: world.server).status == 200, "this session keeps its habilitation")
        // The sign-in left half-way cannot be finished, even with a good code, from the page
        // it had open; and that code is not spent by the try.
        let attempt = try await halfWay.request(.POST, "/connexion/second-facteur", form: ["csrf": codeCSRF, "code": try #require(recoveryCodes.first)])
        #expect(attempt.status == 303 && attempt.location?.hasPrefix("/connexion") == true, "sent back to the sign-in: \(attempt.status) \(attempt.location ?? "-")")
        #expect(try await halfWay.get("/compte").location == "/connexion", "no session came of it")
        let spent = try await world.server.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM recovery_code WHERE used_at IS NOT NULL") ?? -1
        }
        #expect(spent == 0, "the recovery code was not looked at")

        // The notice's MAC is bound to the session: another session of the account, given the
        // same address, sees no notice.
        _ = try await other.get(entry)
        try await WebSignInTests.signIn(other, secret: secret, code: recoveryCodes[1])
        let elsewhere = try await other.get(try #require(closing.location))
        #expect(elsewhere.status == 200 && !elsewhere.body.contains("est fermée"), "\(elsewhere.status)")

        let event = try #require(try await world.server.auditEvents().last { $0.action == "other-sessions-revoked" })
        #expect(event.outcome == "1 revoked" && event.surface == "web", "\(event)")
        #expect(event.detail?.hasPrefix("kept session ") == true && event.detail?.contains("ended: \(otherReference)") == true
                && event.detail?.contains("1 sign-in(s) under way ended") == true, "\(event.detail ?? "-")")
        await office.shutdown()
        await other.shutdown()
        await halfWay.shutdown()
        await world.stop()
    }

    /// « Fermer cette autre session »: one other session ends, named by the reference the page
    /// lists; the others stay. A reference that names no live session of the account (ended
    /// already, made up, malformed, this session's own) ends nothing and says so.
    @Test func theRegulatorClosesOneOtherSession() async throws {
        let world = try await World()
        let entry = "/connexion?origin=sas&retour=\(WebSignInTests.agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)"
        let office = try world.browser(), laptop = try world.browser(), phone = try world.browser()
        try await WebSignInTests.choosePassword(office, world: world)
        _ = try await office.get(entry)
        let (_, secret, recoveryCodes) = try await WebSignInTests.signIn(office)
        _ = try await laptop.get(entry)
        try await WebSignInTests.signIn(laptop, secret: secret)
        _ = try await phone.get(entry)
        try await WebSignInTests.signIn(phone, secret: secret, code: recoveryCodes[0])
        func ownReference(_ browser: Browser) async throws -> String {
            let page = try await browser.get("/compte")
            return try #require(page.body.firstMatch(of: /<li id="session-([0-9a-f]{12})" data-courante="oui">/).map { String($0.1) })
        }
        let laptopReference = try await ownReference(laptop), officeReference = try await ownReference(office)
        let page = try await office.get("/compte")
        #expect(page.body.matches(of: /action="\/compte\/sessions\/fermer"/).count == 2, "a form for each other session, none for this one")

        let laptopCSRF = try #require(try await laptop.get("/compte").csrf)
        let forged = try await office.request(.POST, "/compte/sessions/fermer", form: ["csrf": "forged", "session": laptopReference])
        #expect(forged.status == 403)
        #expect(try await ForwardAuthTests.ask(laptop, server: world.server).status == 200)

        let closing = try await office.submit("/compte", to: "/compte/sessions/fermer", ["session": laptopReference])
        #expect(closing.status == 303 && closing.location?.hasPrefix("/compte?avis=une-1.") == true, "\(closing.status) \(closing.location ?? "-")")
        #expect(try await office.get(try #require(closing.location)).body.contains("La session choisie est fermée"))
        #expect(try await ForwardAuthTests.ask(laptop, server: world.server).status == 401, "the session closed")
        #expect(try await ForwardAuthTests.ask(phone, server: world.server).status == 200, "the others stay")
        #expect(try await ForwardAuthTests.ask(office, server: world.server).status == 200)

        // The closed browser, with the form it had open: sent to the sign-in, its cookie cleared.
        let dead = try await laptop.request(.POST, "/compte/sessions/fermer", form: ["csrf": laptopCSRF, "session": officeReference])
        #expect(dead.status == 303 && dead.location == "/connexion" && laptop.cookies["__Host-as-session"] == nil, "\(dead.status) \(dead.location ?? "-")")
        #expect(try await ForwardAuthTests.ask(office, server: world.server).status == 200)
        for reference in [laptopReference, "0123456789ab", officeReference.uppercased(), "<script>x", officeReference, ""] {
            let none = try await office.submit("/compte", to: "/compte/sessions/fermer", ["session": reference])
            #expect(none.status == 303 && none.location?.hasPrefix("/compte?avis=une-0.") == true, "\(reference): \(none.location ?? "-")")
        }
        #expect(try await office.get("/compte?avis=une-0.x").body.contains("n’était plus ouverte") == false, "the notice needs its MAC")
        let none = try await office.submit("/compte", to: "/compte/sessions/fermer", ["session": "0123456789ab"])
        #expect(try await office.get(try #require(none.location)).body.contains("La session choisie n’était plus ouverte"))
        #expect(try await ForwardAuthTests.ask(phone, server: world.server).status == 200)
        #expect(try await ForwardAuthTests.ask(office, server: world.server).status == 200, "its own reference does not close this session")

        let events = try await world.server.auditEvents().filter { $0.action == "other-sessions-revoked" }
        #expect(events.count == 1 && events[0].outcome == "1 revoked" && events[0].detail?.hasPrefix("chosen on the page; kept session ") == true
                && events[0].detail?.hasSuffix("ended: \(laptopReference)") == true,
                "\(events.map { "\($0.outcome) \($0.detail ?? "")" })")
        await office.shutdown()
        await laptop.shutdown()
        await phone.shutdown()
        await world.stop()
    }

    static let newPassword = "Chemin-des-cerisiers-en-fleurs"

    static func failedSignIns(_ world: World) async throws -> Int {
        try await world.server.database.read { db in try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account") ?? -1 }
    }

    /// « Changer mon mot de passe »: the current password required, the new one under the
    /// reset's rules; on success this session stays, the others end, the reset links die, a
    /// mail says so, and the old password no longer signs in.
    @Test func theRegulatorChangesTheirPasswordWithTheCurrentOne() async throws {
        let world = try await World()
        let office = try world.browser()
        try await WebSignInTests.choosePassword(office, world: world)
        let (_, secret, _) = try await WebSignInTests.signIn(office)
        let other = try world.browser()
        try await WebSignInTests.signIn(other, secret: secret)
        // A reset link asked meanwhile: the change voids it.
        #expect(try await other.submit("/mot-de-passe-oublie", ["email": WebSignInTests.email]).status == 200)
        let link = try #require(try await world.smtp.resetToken(number: 2))

        let anonymous = try world.browser()
        #expect(try await anonymous.get("/compte/mot-de-passe").location == "/connexion")
        let account = try await office.get("/compte")
        #expect(account.body.contains("href=\"/compte/mot-de-passe\""))
        let form = try await office.get("/compte/mot-de-passe")
        #expect(form.status == 200 && form.body.contains("form-mot-de-passe") && form.body.contains("autocomplete=\"current-password\""))

        // Refused before the current password is looked at: not counted.
        let mismatch = try await office.submit("/compte/mot-de-passe", ["actuel": "pas le bon mot de passe", "password": Self.newPassword, "confirmation": Self.newPassword + "!"])
        #expect(mismatch.status == 400 && mismatch.body.contains("ne sont pas identiques"))
        let weak = try await office.submit("/compte/mot-de-passe", ["actuel": "pas le bon mot de passe", "password": "azertyuiopqsdf", "confirmation": "azertyuiopqsdf"])
        #expect(weak.status == 400 && weak.body.contains("id=\"erreur\""), "\(weak.body)")
        #expect(try await Self.failedSignIns(world) == 0)
        let forged = try await office.request(.POST, "/compte/mot-de-passe", form: ["csrf": "forged", "actuel": WebSignInTests.password,
                                                                                    "password": Self.newPassword, "confirmation": Self.newPassword])
        #expect(forged.status == 403)
        // A wrong current password counts, as at the sign-in.
        let wrong = try await office.submit("/compte/mot-de-passe", ["actuel": "pas le bon mot de passe", "password": Self.newPassword, "confirmation": Self.newPassword])
        #expect(wrong.status == 401 && wrong.body.contains("Le mot de passe actuel est incorrect"))
        #expect(try await Self.failedSignIns(world) == 1)

        let oldCookie = try #require(office.cookies[WebCookie.session.rawValue])
        let changing = try await office.submit("/compte/mot-de-passe", ["actuel": WebSignInTests.password, "password": Self.newPassword, "confirmation": Self.newPassword])
        #expect(changing.status == 303 && changing.location?.hasPrefix("/compte?avis=mdp-1.") == true, "\(changing.status) \(changing.location ?? "-")")
        let changed = try await office.get(try #require(changing.location))
        #expect(changed.status == 200 && changed.body.contains("Votre mot de passe est changé et votre autre session est fermée"), "\(changed.body)")
        #expect(try await office.get("/compte").status == 200, "this session stays, under a new id")
        #expect(office.cookies[WebCookie.session.rawValue] != oldCookie)
        let stale = try world.browser()
        stale.cookies = [WebCookie.session.rawValue: oldCookie]
        #expect(try await stale.get("/compte").location == "/connexion", "the id before the change holds nothing")
        #expect(try await ForwardAuthTests.ask(stale, server: world.server).status == 401, "nor for forward-auth")
        #expect(try await other.get("/compte").location == "/connexion", "the other one ends")
        #expect(try await office.get("/reinitialisation?jeton=\(link)").status == 410, "the reset link asked before is void")
        // The owner is told, at the account's address.
        #expect(try await eventually { try world.smtp.messages().count == 3 })
        let mail = try #require(try world.smtp.messages().last)
        #expect(mail.contains("a été changé le") && mail.contains("Mot de passe oublié") && !mail.contains(Self.newPassword), "\(mail)")
        // The old password no longer signs in; the new one does.
        let fresh = try world.browser()
        #expect(try await fresh.submit("/connexion", ["email": WebSignInTests.email, "password": WebSignInTests.password]).status == 401)
        #expect(try await fresh.submit("/connexion", ["email": WebSignInTests.email, "password": Self.newPassword]).location == "/connexion/second-facteur")
        let event = try #require(try await world.server.auditEvents().last { $0.action == "password-changed" })
        #expect(event.outcome == "1 other session(s) revoked" && event.detail?.contains("1 password reset link(s) voided") == true
                && event.detail?.contains("notification queued") == true && event.detail?.contains("ended: ") == true, "\(event)")
        for browser in [office, other, anonymous, fresh, stale] { await browser.shutdown() }
        await world.stop()
    }

    /// Wrong current passwords lock the account as wrong sign-ins do; locked, even the right
    /// one changes nothing.
    @Test func wrongCurrentPasswordsLockTheAccount() async throws {
        let world = try await World()
        let office = try world.browser()
        try await WebSignInTests.choosePassword(office, world: world)
        try await WebSignInTests.signIn(office)
        var last: Browser.Page?
        for _ in 0..<5 {
            last = try await office.submit("/compte/mot-de-passe", ["actuel": "pas le bon mot de passe", "password": Self.newPassword, "confirmation": Self.newPassword])
        }
        #expect(last?.status == 403 && last?.body.contains("votre compte est bloqué") == true, "\(last?.status ?? 0)")
        let right = try await office.submit("/compte/mot-de-passe", ["actuel": WebSignInTests.password, "password": Self.newPassword, "confirmation": Self.newPassword])
        #expect(right.status == 403, "locked: the right password changes nothing")
        let events = try await world.server.auditEvents()
        #expect(events.contains { $0.action == "lockout" } && !events.contains { $0.action == "password-changed" })
        #expect(events.filter { $0.action == "password-change" }.map(\.outcome).suffix(2) == ["refused locked-now", "refused locked"], "\(events.filter { $0.action == "password-change" })")
        await office.shutdown()
        await world.stop()
    }

    /// A suspended account's password is not changed from a session (its habilitation is
    /// withdrawn, its sessions live): refused before anything is looked at or counted.
    @Test func aSuspendedAccountsPasswordIsNotChangedHere() async throws {
        let world = try await World()
        let office = try world.browser()
        try await WebSignInTests.choosePassword(office, world: world)
        try await WebSignInTests.signIn(office)
        let admin = AdminClient(server: world.server)
        #expect(try await admin.send(.POST, "/api/accounts/\(WebSignInTests.email)/suspend").status == 200)
        let refused = try await office.submit("/compte/mot-de-passe", ["actuel": "pas le bon mot de passe", "password": Self.newPassword, "confirmation": Self.newPassword])
        #expect(refused.status == 403 && refused.body.contains("suspendu"), "\(refused.status) \(refused.body)")
        #expect(try await Self.failedSignIns(world) == 0, "nothing counted")
        #expect(try await world.server.auditEvents().contains { $0.action == "password-change" && $0.outcome == "refused suspended" })
        await admin.shutdown()
        await office.shutdown()
        await world.stop()
    }
}
