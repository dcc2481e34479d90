@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import Logging
import Synchronization
import NIOCore
import NIOHTTP1
import StorageTesting
import Testing

/// The admin listener: token, JSON API, French page, health, readiness, metrics.
@Suite("Admin listener")
struct AdminTests {
    typealias World = WebSignInTests.World

    @Test func theAPIRequiresTheToken() async throws {
        let world = try await World()
        let anonymous = AdminClient(server: world.server, token: "")
        #expect(try await anonymous.send(.GET, "/api/accounts", authorization: "").status == 401)
        let wrong = try await anonymous.send(.GET, "/api/accounts", authorization: "Bearer \(SecretToken.generate())")
        #expect(wrong.status == 401 && wrong.headers.first(name: "WWW-Authenticate")?.hasPrefix("Bearer") == true)
        #expect(try await anonymous.send(.POST, "/api/accounts/810002673899/suspend", authorization: "Bearer nope").status == 401)
        let page = try await anonymous.send(.GET, "/", authorization: "")
        #expect(page.status == 200 && page.body.contains("id=\"form-connexion\"") && page.headers.first(name: "WWW-Authenticate") == nil,
                "the page asks for the token in a form, never for Basic credentials")
        // Nothing was changed by the refused calls; the refusals are in the trail, once a
        // minute per address (three refused calls, one event).
        let adminEvents = try await world.server.auditEvents().filter { $0.surface == "admin" }
        #expect(adminEvents.map(\.action) == ["admin-api-refused"] && adminEvents.first?.actorAddress == "127.0.0.1", "\(adminEvents)")
        // Probes and metrics need no token.
        #expect(try await anonymous.send(.GET, "/healthz", authorization: "").status == 200)
        #expect(try await anonymous.send(.GET, "/metrics", authorization: "").status == 200)
        // ...but only under a loopback name: a DNS-rebinding page reaches 127.0.0.1 under its
        // own host name and reads nothing.
        for host in ["rebind.evil.example:\(world.server.adminPort)", "127.0.0.1.nip.io", "evil.example"] {
            #expect(try await anonymous.send(.GET, "/metrics", headers: [("Host", host)], authorization: "").status == 421, "\(host)")
        }
        #expect(try await anonymous.send(.GET, "/readyz", headers: [("Host", "localhost:\(world.server.adminPort)")], authorization: "").status == 200)
        #expect(LoopbackHostMiddleware.isLoopbackName("[::1]:8445") && LoopbackHostMiddleware.isLoopbackName("127.0.0.2")
                && !LoopbackHostMiddleware.isLoopbackName("127.0.0.1.evil.example") && !LoopbackHostMiddleware.isLoopbackName(nil))
        await anonymous.shutdown()
        await world.stop()
    }

    @Test func listShowSuspendRestoreUnlockAndAuditThroughTheAPI() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        let list = try await admin.json("/api/accounts?q=marius")
        let accounts = try #require(list["accounts"].flatMap { if case .array(let a) = $0 { a } else { nil } })
        let first = try #require(accounts.first.flatMap { if case .object(let o) = $0 { o } else { nil } })
        let id = try #require(first["id"].flatMap { if case .string(let s) = $0 { s } else { nil } })
        #expect(accounts.count == 1 && first["national_id"] == .string("810002673899") && first["active"] == .bool(true))
        #expect(try await admin.json("/api/accounts?q=nobody")["accounts"] == .array([]))
        #expect(try await admin.send(.GET, "/api/accounts?filter=bogus").status == 400)
        // A query string that cannot be read, or a limit out of range, is a 400, never the
        // unfiltered list.
        for query in ["filter=suspended&q=%E9", "q=marius&x=%FF", "limit=abc", "limit=0", "limit=-5", "limit=1001"] {
            let refused = try await admin.send(.GET, "/api/accounts?\(query)")
            #expect(refused.status == 400 && refused.body.contains("\"error\""), "\(query): \(refused.status) \(refused.body)")
        }

        // Lock the account with wrong passwords, then unlock it.
        let browser = try world.browser()
        for _ in 0..<5 { _ = try await browser.submit("/connexion", ["email": WebSignInTests.email, "password": "wrong password!"]) }
        #expect(try await admin.json("/api/accounts?filter=locked")["accounts"].map { if case .array(let a) = $0 { a.count } else { 0 } } == 1)
        let unlocked = try await admin.send(.POST, "/api/accounts/\(WebSignInTests.email)/unlock")
        #expect(unlocked.status == 200 && unlocked.body.contains(#""changed":true"#))
        #expect(try await admin.send(.POST, "/api/accounts/\(id)/unlock").body.contains(#""changed":false"#))
        // No second factor enrolled yet: nothing to reset, and said so (SecondFactorTests has the rest).
        let reset = try await admin.send(.POST, "/api/accounts/\(id)/reset-second-factor")
        #expect(reset.status == 200 && reset.body.contains(#""changed":false"#), "\(reset.body)")
        #expect(try await admin.send(.POST, "/api/accounts/no-such-account/reset-second-factor").status == 404)

        #expect(try await admin.send(.POST, "/api/accounts/\(id)/suspend", body: "not json").status == 400)
        // A member the API does not read is refused (the page's field name would otherwise
        // suspend without the reason), as a reason that is not a string; nothing changes.
        let large = try await admin.send(.POST, "/api/accounts/\(id)/suspend", body: #"{"reason":""# + String(repeating: "x", count: 70_000) + #""}"#)
        #expect(large.status == 413 && large.body.contains("\"error\""), "\(large.status) \(large.body.prefix(200))")
        for body in [#"{"motif":"x"}"#, #"{"reason":"x","force":true}"#, #"{"reason":5}"#] {
            let refused = try await admin.send(.POST, "/api/accounts/\(id)/suspend", body: body)
            #expect(refused.status == 400 && refused.body.contains("\"error\""), "\(body): \(refused.status) \(refused.body)")
        }
        #expect(try await admin.json("/api/accounts?filter=suspended")["accounts"] == .array([]), "nothing suspended by a refused body")
        #expect(try await admin.send(.POST, "/api/accounts/\(id)/suspend", body: #"{"reason":"test"}"#).body.contains(#""changed":true"#))
        #expect(try await admin.send(.POST, "/api/accounts/\(id)/suspend").body.contains(#""changed":false"#), "idempotent")
        #expect(try await admin.json("/api/accounts?filter=suspended")["accounts"].map { if case .array(let a) = $0 { a.count } else { 0 } } == 1)
        #expect(try await admin.send(.POST, "/api/accounts/no-such-account/suspend").status == 404)

        let detail = try await admin.json("/api/accounts/urn:oid:1.2.250.1.71.4.2.1%7C810002673899")
        #expect(detail["id"] == .string(id))
        let suspension = try #require(detail["suspension"].flatMap { if case .object(let o) = $0 { o } else { nil } }, "\(detail)")
        #expect(suspension["by"] == .string("admin-api") && suspension["reason"] == .string("test"))
        let history = try #require(detail["identifier_history"].flatMap { if case .array(let a) = $0 { a } else { nil } })
        let audit = try #require(detail["audit"].flatMap { if case .array(let a) = $0 { a } else { nil } })
        #expect(history.count == 1 && audit.count >= 8)
        let serialized = JSONWriter().string(.object(detail))
        #expect(!serialized.contains("argon2") && !serialized.contains("password_hash"), "no secret in the admin view")

        // Every action records its reason; a null reason is no reason.
        #expect(try await admin.send(.POST, "/api/accounts/\(id)/restore", body: #"{"reason":"contrôle terminé"}"#).body.contains(#""changed":true"#))
        #expect(try await admin.send(.POST, "/api/accounts/\(id)/revoke-sessions", body: #"{"reason":null}"#).status == 200)
        // A filtered export whose query cannot be read is refused, not answered with the
        // whole trail.
        #expect(try await admin.send(.GET, "/api/audit?account=\(id)&x=%C3%28").status == 400)
        let trail = try await admin.send(.GET, "/api/audit?account=\(id)")
        #expect(trail.status == 200 && trail.headers.first(name: "Content-Type") == "application/x-ndjson")
        let lines = trail.body.split(separator: "\n")
        #expect(lines.allSatisfy { (try? JSONParser().parse(Array($0.utf8))) != nil })
        for action in ["lockout", "unlock", "habilitation-withdrawn", "habilitation-restored"] {
            #expect(lines.contains { $0.contains(#""action":"\#(action)""#) }, "audit export has \(action)")
        }
        #expect(lines.contains { $0.contains(#""action":"habilitation-restored""#) && $0.contains("reason: contrôle terminé") }, "\(trail.body)")
        #expect(lines.allSatisfy { $0.contains(#""account_id":"\#(id)""#) }, "only this account's events")
        // Reads of personal data are traced too: the account shown, the searches, the exports.
        #expect(lines.contains { $0.contains(#""action":"account-viewed""#) && $0.contains(#""actor_subject":"admin-api""#) }, "\(trail.body)")
        let everything = try await admin.send(.GET, "/api/audit?limit=10000").body.split(separator: "\n")
        #expect(everything.contains { $0.contains(#""action":"accounts-listed""#) && $0.contains(#"q: \"marius\", filter: all"#) && $0.contains("1 account(s)") })
        #expect(everything.contains { $0.contains(#""action":"audit-exported""#) && $0.contains(#""account_id":"\#(id)""#) })
        await browser.shutdown()
        await admin.shutdown()
        await world.stop()
    }

    /// `POST /api/accounts/{account}/erase`: only with `{"confirm": true}`, only for an
    /// account the SAS deactivated; the account's session dies with it, the FHIR endpoint no
    /// longer finds it, its trail stays, and the SAS sending the regulator again creates a new
    /// account.
    @Test func anErasureNeedsConfirmationAndADeactivatedAccount() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        let browser = try world.browser()
        try await WebSignInTests.choosePassword(browser, world: world)
        try await WebSignInTests.signIn(browser)
        #expect(try await browser.get("/compte").status == 200)
        let id = try #require(try await admin.json("/api/accounts/\(WebSignInTests.email)")["id"].flatMap { if case .string(let s) = $0 { s } else { nil } })

        for body in ["", #"{"confirm":false}"#, #"{"reason":"x"}"#, #"{"confirm":"yes"}"#, #"{"confirm":true,"force":true}"#] {
            let refused = try await admin.send(.POST, "/api/accounts/\(id)/erase", body: body)
            #expect(refused.status == 400 && refused.body.contains("\"error\""), "\(body): \(refused.status) \(refused.body)")
        }
        let active = try await admin.send(.POST, "/api/accounts/\(id)/erase", body: #"{"confirm":true}"#)
        #expect(active.status == 409 && active.body.contains("INT_R02 active:false"), "\(active.status) \(active.body)")
        let shownStill = try await admin.send(.GET, "/api/accounts/\(id)").status, pageStill = try await browser.get("/compte").status
        #expect(shownStill == 200 && pageStill == 200, "nothing changed")
        #expect(try await admin.send(.POST, "/api/accounts/no-such-account/erase", body: #"{"confirm":true}"#).status == 404)

        try await world.setActive(false)
        // By its id only: an e-mail or identifier several deactivated accounts may share is
        // not an irreversible action's name.
        for other in [WebSignInTests.email, "810002673899", "urn:oid:1.2.250.1.71.4.2.1%7C810002673899"] {
            let refused = try await admin.send(.POST, "/api/accounts/\(other)/erase", body: #"{"confirm":true}"#)
            #expect(refused.status == 404 && refused.body.contains("account id"), "\(other): \(refused.status) \(refused.body)")
        }
        let erased = try await admin.send(.POST, "/api/accounts/\(id)/erase", body: #"{"confirm":true,"reason":"demande RGPD"}"#)
        #expect(erased.status == 200, "\(erased.body)")
        let answer = try JSONParser().parse(Array(erased.body.utf8))
        guard case .object(let result) = answer else { Issue.record("\(erased.body)"); return }
        #expect(result["action"] == .string("erase") && result["changed"] == .bool(true) && result["sessions"] == .number("1")
                && result["identifiers"] == .number("1") && result["cgu_acceptances"] == .number("1") && result["totp_secrets"] == .number("1")
                && result["database_log"] == .string(TestStore.kind == .sqlite ? "truncated" : "not-applicable"),
                "\(erased.body)")
        #expect(!erased.body.contains("marius") && !erased.body.contains("810002673899"), "counts only: \(erased.body)")

        let after = try await browser.get("/compte")
        #expect(after.status == 303 || after.status == 401 || after.location?.hasPrefix("/connexion") == true, "the session died with the account: \(after.status)")
        #expect(try await admin.send(.GET, "/api/accounts/\(id)").status == 404)
        #expect(try await admin.send(.POST, "/api/accounts/\(id)/erase", body: #"{"confirm":true}"#).status == 404)
        let search = try await world.fhir.send(.GET, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C810002673899")
        #expect(search.status == 200 && search.body.contains(#""total":0"#), "\(search.body)")
        #expect(try await world.fhir.send(.GET, "/Practitioner/\(id)").status == 404)
        let trail = try await admin.send(.GET, "/api/audit?account=\(id)")
        #expect(trail.status == 200 && trail.body.contains(#""action":"create""#) && trail.body.contains(#""action":"account-erased""#)
                && trail.body.contains("reason: demande RGPD"), "\(trail.body)")

        let recreated = try await world.fhir.send(.PUT, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C810002673899",
                                                  body: Bodies.practitioner(national: "810002673899", email: WebSignInTests.email))
        #expect(recreated.status == 201, "\(recreated.status) \(recreated.body)")
        #expect(!recreated.body.contains(id))
        await browser.shutdown()
        await admin.shutdown()
        await world.stop()
    }

    /// The audit export is paged: `limit` 1–10,000 (1,000 when absent), `after` a sequence
    /// number; anything else is a 400 instead of "everything" (SQLite) or a 500 (PostgreSQL);
    /// a full page says where the next one starts.
    @Test func theAuditExportIsPagedAndItsParametersChecked() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        for query in ["limit=-1", "limit=0", "limit=10001", "limit=abc", "after=-1", "after=x"] {
            let refused = try await admin.send(.GET, "/api/audit?\(query)")
            #expect(refused.status == 400 && refused.body.contains("\"error\""), "\(query): \(refused.status) \(refused.body)")
        }
        #expect(try await admin.send(.POST, "/api/accounts/810002673899/suspend").status == 200, "one event more than the create")
        let all = try await admin.send(.GET, "/api/audit")
        let lines = all.body.split(separator: "\n")
        #expect(all.status == 200 && lines.count >= 2 && all.headers.first(name: "X-Next-After") == nil, "a page not full has no next")
        let first = try await admin.send(.GET, "/api/audit?limit=1")
        #expect(first.body.split(separator: "\n").count == 1)
        let next = try #require(first.headers.first(name: "X-Next-After"))
        let second = try await admin.send(.GET, "/api/audit?limit=1&after=\(next)")
        #expect(second.body.split(separator: "\n").first == lines[1], "the next page starts after the first")
        // Exports from the start are each traced; reads on from a sequence number (its next
        // pages, a tailer's polls) once an hour per address, an export from the start
        // included: here the hour's trace is the first export's.
        _ = try await admin.send(.GET, "/api/audit?limit=1&after=\(next)")
        let exports = try await world.server.auditEvents().filter { $0.action == "audit-exported" }
        #expect(exports.filter { $0.detail?.hasPrefix("after 0") == true }.count == 2, "\(exports.map(\.detail))")
        let continued = exports.filter { $0.detail?.hasPrefix("after \(next)") == true }.count
        #expect(continued == 0, "\(exports.map(\.detail))")
        await admin.shutdown()
        await world.stop()
    }

    /// What a hostile site can make the admin's browser send never acts: Basic credentials
    /// (a browser caches and replays them) are refused by the API, a form-encoded or
    /// text/plain POST (what a cross-site form can send) too, and so is anything marked
    /// cross-site or from another Origin, even with the right bearer token.
    @Test func theAPIRefusesWhatABrowserCanBeMadeToSend() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        let basic = "Basic " + Data("admin:\(world.server.adminToken)".utf8).base64EncodedString()
        let path = "/api/accounts/810002673899/suspend"
        #expect(try await admin.send(.POST, path, authorization: basic).status == 401, "Basic is not accepted")
        #expect(try await admin.send(.GET, "/api/accounts", authorization: basic).status == 401)
        #expect(try await admin.send(.POST, path, headers: [("Content-Type", "application/x-www-form-urlencoded")]).status == 415)
        #expect(try await admin.send(.POST, path, body: #"{"reason":"x"}"#, headers: [("Content-Type", "text/plain")]).status == 415)
        #expect(try await admin.send(.POST, path, headers: [("Sec-Fetch-Site", "cross-site")]).status == 403)
        #expect(try await admin.send(.POST, path, headers: [("Origin", "https://evil.example")]).status == 403)
        #expect(try await admin.send(.POST, path, headers: [("Origin", "https://evil.example")]).status == 403, "refused again, audited once")
        #expect(try await world.server.auditEvents().allSatisfy { !$0.action.hasPrefix("habilitation-withdrawn") }, "nothing was suspended")
        // The cross-site attempts are in the trail (once a minute per address and reason).
        let refusals = try await world.server.auditEvents().filter { $0.action == "admin-api-refused" }.map(\.outcome)
        #expect(refusals.sorted() == ["cross-site", "foreign origin", "missing or wrong token"], "\(refusals)")
        #expect(try await admin.send(.POST, path, headers: [("Content-Type", "application/json; charset=utf-8")]).status == 200)
        await admin.shutdown()
        await world.stop()
    }

    /// The search ignores case and accents, the same on both stores whatever PostgreSQL's
    /// locale: `fold_text`, not SQL's `lower()`, which folded ASCII only on SQLite (`Élodie`
    /// did not find `Élodie`: the stored name kept its capital É, the text did not) and
    /// followed the locale on PostgreSQL. A name stored decomposed (`e` + U+0301) is found
    /// as the composed one, and the other way round.
    @Test func theSearchIgnoresCaseAndAccentsOnBothStores() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        for (national, family, given, email) in [("810002673880", "LEFÈVRE", "Élodie", "elodie.lefevre@test.com"),
                                                  ("810002673881", "Cle\u{0301}ment", "Anaïs", "anais.clement@test.com")] {
            let created = try await world.fhir.send(.POST, "/Practitioner", body: Bodies.practitioner(national: national, family: family, given: given, email: email))
            #expect(created.status == 201, "\(created.body)")
        }
        func found(_ text: String) async throws -> [String] {
            let query = text.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? ""
            guard case .array(let accounts)? = try await admin.json("/api/accounts?q=\(query)")["accounts"] else { return ["not a list"] }
            return accounts.compactMap { if case .object(let o) = $0, case .string(let name)? = o["family_name"] { name } else { nil } }.sorted()
        }
        for text in ["lefèvre", "LEFÈVRE", "lefevre", "Lefevre", "Élodie", "élodie", "ELODIE", "e\u{0301}lodie", "élodie lefèvre", "LEFEVRE ÉLODIE", "elodie.lefevre@"] {
            #expect(try await found(text) == ["LEFÈVRE"], "\(text)")
        }
        for text in ["clément", "Clément", "CLEMENT", "cle\u{0301}ment", "anais", "ANAÏS CLÉMENT"] {
            #expect(try await found(text) == ["Cle\u{0301}ment"], "\(text)")
        }
        #expect(try await found("marius") == ["MARIUS"])
        #expect(try await found("e") == ["Cle\u{0301}ment", "LEFÈVRE", "MARIUS"].sorted())
        for text in ["lefèvres", "%", "é_o"] {
            #expect(try await found(text).isEmpty, "no more than the text, wildcards literal: \(text)")
        }
        await admin.shutdown()
        await world.stop()
    }

    /// U+0000 anywhere an admin request carries text (path, query, JSON reason, the page's
    /// form) is a 400, a JSON one on the API and a French page on the page, and nothing
    /// changes, on both stores. Before, SQLite stored the reason cut at the NUL (the audit
    /// event said the whole of it) and searched with a cut pattern, PostgreSQL answered 500.
    @Test func anAdminRequestHoldingNULIsRefusedAndChangesNothing() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        for (method, path, body) in [(HTTPMethod.POST, "/api/accounts/810002673899/suspend", #"{"reason":"motif\u0000cach\u00e9"}"#),
                                     (.POST, "/api/accounts/810002673899%00/suspend", ""), (.GET, "/api/accounts/810002673899%00", ""),
                                     (.GET, "/api/accounts?q=810002673899%00x", ""), (.GET, "/api/audit?account=810002673899%00", "")] {
            let answer = try await admin.send(method, path, body: body.isEmpty ? nil : body)
            #expect(answer.status == 400 && answer.body.contains("U+0000") && answer.headers.first(name: "Content-Type")?.hasPrefix("application/json") == true,
                    "\(path): \(answer.status) \(answer.body)")
        }
        // Without the token, the token is what is refused first: a 401, and the refusal in the
        // trail, whatever the request holds.
        for path in ["/api/accounts?q=810002673899%00x", "//api/accounts?q=810002673899%00x", "/api/accounts/?q=%00"] {
            let unauthenticated = try await admin.send(.GET, path, authorization: "")
            #expect(unauthenticated.status == 401, "\(path): \(unauthenticated.status) \(unauthenticated.body)")
        }
        #expect(try await world.server.auditEvents().contains { $0.action == "admin-api-refused" })
        // The page's form, from a signed-in session.
        let (form, loginCookie, loginCSRF) = try await Self.signInForm(admin)
        let signedIn = try await admin.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(world.server.adminToken)", headers: form + [("Cookie", loginCookie)],
                                            authorization: "")
        let session = [("Cookie", String(try #require(signedIn.headers.first(name: "Set-Cookie")).split(separator: ";")[0]))]
        let pageToken = try #require(signedIn.headers.first(name: "Location")?.firstMatch(of: /csrf=([A-Za-z0-9_-]+)/).map { String($0.1) })
        let search = try await admin.send(.GET, "/?csrf=\(pageToken)&q=jules", headers: session, authorization: "")
        let action = try #require(search.body.firstMatch(of: /action="(\/comptes\/[^"]+\/suspendre)"/).map { String($0.1) })
        let page = try await admin.send(.POST, action, body: "csrf=\(pageToken)&q=jules&motif=fraude%00cach%C3%A9", headers: form + session, authorization: "")
        #expect(page.status == 400 && page.body.contains("Requête invalide") && page.body.contains("<html lang=\"fr\""), "\(page.status) \(page.body)")
        let searchNUL = try await admin.send(.GET, "/?csrf=\(pageToken)&q=jules%00", headers: session, authorization: "")
        #expect(searchNUL.status == 400 && searchNUL.body.contains("caractère non autorisé"))

        #expect(try await admin.json("/api/accounts?filter=suspended")["accounts"] == .array([]), "nothing was suspended")
        #expect(try await world.server.auditEvents().allSatisfy { !$0.action.hasPrefix("habilitation-withdrawn") })
        let done = try await admin.send(.POST, "/api/accounts/810002673899/suspend", body: #"{"reason":"motif cach\u00e9"}"#)
        #expect(done.status == 200 && done.body.contains(#""changed":true"#), "the same request without the NUL")
        await admin.shutdown()
        await world.stop()
    }

    /// The page's sign-in form: the form content type, the pre-session CSRF cookie and the
    /// token bound to it.
    static func signInForm(_ admin: AdminClient) async throws -> (form: [(String, String)], cookie: String, csrf: String) {
        let signInPage = try await admin.send(.GET, "/", authorization: "")
        let cookie = try #require(signInPage.headers.first(name: "Set-Cookie")?.split(separator: ";").first.map(String.init))
        let csrf = try #require(signInPage.body.firstMatch(of: /name="csrf" value="([^"]+)"/).map { String($0.1) })
        return ([("Content-Type", "application/x-www-form-urlencoded")], cookie, csrf)
    }

    /// A page session opened with the admin token: the form headers, the session cookie as
    /// a header, and the page address the sign-in led to (it carries the session's token).
    static func pageSession(_ admin: AdminClient, world: World) async throws -> (form: [(String, String)], session: [(String, String)], page: String) {
        let (form, loginCookie, loginCSRF) = try await signInForm(admin)
        let signedIn = try await admin.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(world.server.adminToken)",
                                            headers: form + [("Cookie", loginCookie)], authorization: "")
        let session = [("Cookie", try #require(signedIn.headers.first(name: "Set-Cookie")?.split(separator: ";").first.map(String.init)))]
        return (form, session, try #require(signedIn.headers.first(name: "Location")))
    }

    /// The page erases an account the SAS deactivated, once EFFACER is typed; an active
    /// account has no such form, and a forged post for one erases nothing.
    @Test func thePageErasesADeactivatedAccountOnceConfirmed() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server, token: "")
        let (form, session, page) = try await Self.pageSession(admin, world: world)
        let token = try #require(page.firstMatch(of: /csrf=([A-Za-z0-9_-]+)/).map { String($0.1) })
        let active = try await admin.send(.GET, "\(page)&q=marius", headers: session, authorization: "")
        #expect(active.status == 200 && active.body.contains("Retirer l’habilitation") && !active.body.contains("/effacer\""), "no erase form for an active account")
        let id = try #require(active.body.firstMatch(of: /action="\/comptes\/([^"\/]+)\/suspendre"/).map { String($0.1) })
        let forged = try await admin.send(.POST, "/comptes/\(id)/effacer", body: "csrf=\(token)&q=marius&confirmation=EFFACER", headers: form + session, authorization: "")
        #expect(forged.status == 303 && forged.headers.first(name: "Location")?.hasSuffix("message=effacement-refuse") == true, "\(forged.status)")

        try await world.setActive(false)
        let listed = try await admin.send(.GET, "\(page)&q=marius", headers: session, authorization: "")
        #expect(listed.body.contains("action=\"/comptes/\(id)/effacer\"") && listed.body.contains("tapez EFFACER"), "\(listed.body)")
        for confirmation in ["", "oui", "EFFACE"] {
            let refused = try await admin.send(.POST, "/comptes/\(id)/effacer", body: "csrf=\(token)&q=marius&confirmation=\(confirmation)",
                                               headers: form + session, authorization: "")
            #expect(refused.headers.first(name: "Location")?.hasSuffix("message=effacement-non-confirme") == true, "\(confirmation)")
        }
        #expect(try await admin.send(.POST, "/comptes/\(id)/effacer", body: "q=marius&confirmation=EFFACER", headers: form + session, authorization: "").status == 403,
                "no CSRF token, no erasure")
        #expect(try await world.server.accountCount() == 1, "nothing erased yet")
        let done = try await admin.send(.POST, "/comptes/\(id)/effacer", body: "csrf=\(token)&q=marius&confirmation=effacer&motif=demande+RGPD",
                                        headers: form + session, authorization: "")
        #expect(done.status == 303 && done.headers.first(name: "Location") == "/?csrf=\(token)&q=marius&message=efface", "\(done.status)")
        let after = try await admin.send(.GET, "/?csrf=\(token)&q=marius&message=efface", headers: session, authorization: "")
        #expect(after.body.contains("Compte effacé") && after.body.contains("id=\"aucun\""), "\(after.body)")
        #expect(try await world.server.accountCount() == 0)
        let event = try #require(try await world.server.auditEvents().last { $0.action == "account-erased" })
        #expect(event.actorSubject == "admin-page" && event.accountId == id && event.detail?.contains("reason: demande RGPD") == true, "\(event)")
        await admin.shutdown()
        await world.stop()
    }

    /// Token guesses on the page: 10 a minute per address, then 429; the trail gets one
    /// refusal event a minute per address, however many guesses.
    @Test func pageTokenGuessesAreLimited() async throws {
        let clock = ManualClock()
        let world = try await World { $0.rateLimitClock = clock.monotonic }
        let admin = AdminClient(server: world.server, token: "")
        let (form, loginCookie, loginCSRF) = try await Self.signInForm(admin)
        func guess() async throws -> Int {
            try await admin.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=wrong", headers: form + [("Cookie", loginCookie)],
                                 authorization: "").status
        }
        var statuses: [Int] = []
        for _ in 0..<12 { statuses.append(try await guess()) }
        #expect(statuses == Array(repeating: 401, count: 10) + [429, 429], "\(statuses)")
        var refusals = try await world.server.auditEvents().filter { $0.action == "admin-sign-in" }
        #expect(refusals.count == 1, "\(refusals.map(\.outcome))")
        // A guess comes back every 6 s; the trail gets one more refusal after a minute.
        clock.advance(by: .seconds(6) - .milliseconds(1))
        #expect(try await guess() == 429, "5.999 s")
        clock.advance(by: .milliseconds(1))
        statuses = [try await guess(), try await guess()]
        #expect(statuses == [401, 429], "6 s: \(statuses)")
        #expect(try await world.server.auditEvents().filter { $0.action == "admin-sign-in" }.count == 1, "still within the minute")
        clock.advance(by: .seconds(60))
        #expect(try await guess() == 401)
        refusals = try await world.server.auditEvents().filter { $0.action == "admin-sign-in" }
        #expect(refusals.count == 2, "\(refusals.map(\.outcome))")
        await admin.shutdown()
        await world.stop()
    }

    /// Posts another site makes the admin's browser send to the sign-in form (cross-site, no
    /// token) are refused without spending the address's budget: on the loopback listener the
    /// address is everyone's, and they would otherwise lock the admin out of signing in.
    @Test func crossSitePostsDoNotSpendTheSignInBudget() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server, token: "")
        let (form, loginCookie, loginCSRF) = try await Self.signInForm(admin)
        for headers in [[("Content-Type", "application/x-www-form-urlencoded"), ("Sec-Fetch-Site", "cross-site")],
                        [("Content-Type", "application/x-www-form-urlencoded"), ("Origin", "https://evil.example")],
                        [("Content-Type", "application/x-www-form-urlencoded")]] {
            for _ in 0..<6 {
                let status = try await admin.send(.POST, "/connexion", body: "jeton=x", headers: headers, authorization: "").status
                #expect(status == 403, "\(headers): \(status)")
            }
        }
        let signedIn = try await admin.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(world.server.adminToken)",
                                            headers: form + [("Cookie", loginCookie)], authorization: "")
        #expect(signedIn.status == 303, "the admin still signs in after 18 refused posts: \(signedIn.status)")
        await admin.shutdown()
        await world.stop()
    }

    @Test func thePageFindsAnAccountAndWithdrawsTheHabilitationInOneClick() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server, token: "")
        // Sign in: the token in the form, bound to the pre-session CSRF cookie.
        let (form, loginCookie, loginCSRF) = try await Self.signInForm(admin)
        for _ in 0..<3 {
            #expect(try await admin.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=wrong", headers: form + [("Cookie", loginCookie)], authorization: "").status == 401)
        }
        #expect(try await admin.send(.POST, "/connexion", body: "csrf=forged&jeton=\(world.server.adminToken)", headers: form + [("Cookie", loginCookie)],
                                     authorization: "").status == 403, "login CSRF")
        let signedIn = try await admin.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(world.server.adminToken)", headers: form + [("Cookie", loginCookie)],
                                            authorization: "")
        #expect(signedIn.status == 303)
        let sessionCookie = try #require(signedIn.headers.first(name: "Set-Cookie"))
        #expect(sessionCookie.contains("HttpOnly") && sessionCookie.contains("SameSite=Strict"))
        let session = [("Cookie", String(sessionCookie.split(separator: ";")[0]))]
        // The page wants the session's token in its address as well as the cookie: browsers
        // send the cookie to every port of localhost, and whoever reads it there gets the
        // sign-in form, not the page nor its forms' tokens.
        let landing = try #require(signedIn.headers.first(name: "Location"))
        let pageToken = try #require(landing.firstMatch(of: /^\/\?csrf=([A-Za-z0-9_-]{40,})$/).map { String($0.1) }, "\(landing)")
        for (what, path, headers) in [("the cookie alone", "/?q=jules", session), ("a wrong token", "/?q=jules&csrf=\(loginCSRF)", session),
                                      ("the token alone", "/?q=jules&csrf=\(pageToken)", [])] {
            let page = try await admin.send(.GET, path, headers: headers, authorization: "")
            #expect(page.body.contains("form-connexion") && !page.body.contains("Retirer") && !page.body.contains(pageToken), "\(what)")
        }
        // Nor does the sign-in form give it away: its token is bound to whatever the CSRF
        // cookie holds, here the captured session id, under a key of its own.
        let sessionID = String(sessionCookie.split(separator: ";")[0].split(separator: "=", maxSplits: 1)[1])
        let bait = try await admin.send(.GET, "/", headers: [("Cookie", "as-admin-csrf=\(sessionID)")], authorization: "")
        let baitToken = try #require(bait.body.firstMatch(of: /name="csrf" value="([^"]+)"/).map { String($0.1) })
        #expect(baitToken != pageToken)
        #expect(try await admin.send(.GET, "/?q=jules&csrf=\(baitToken)", headers: session, authorization: "").body.contains("form-connexion"))
        let search = try await admin.send(.GET, "/?csrf=\(pageToken)&q=jules", headers: session, authorization: "")
        #expect(search.status == 200 && search.body.contains("<html lang=\"fr\"") && search.body.contains("Retirer l’habilitation"))
        #expect(search.headers.first(name: "Content-Security-Policy")?.contains("default-src 'none'") == true)
        #expect(search.headers.first(name: "Referrer-Policy") == "no-referrer", "the token in the address goes nowhere else")
        // The search form sends a space as '+' (a GET form is form-encoded): first and last name.
        let twoWords = try await admin.send(.GET, "/?csrf=\(pageToken)&q=jules+marius", headers: session, authorization: "")
        #expect(twoWords.body.contains("Retirer l’habilitation") && !twoWords.body.contains("id=\"aucun\""), "\(twoWords.body)")
        let action = try #require(search.body.firstMatch(of: /action="(\/comptes\/[^"]+\/suspendre)"/).map { String($0.1) })
        let csrf = try #require(search.body.firstMatch(of: /name="csrf" value="([^"]+)"/).map { String($0.1) })
        #expect(csrf == pageToken, "the search form carries it on")

        // Without the CSRF token, from another site, without the session, or with the token
        // of another session: refused, nothing changes.
        #expect(try await admin.send(.POST, action, body: "q=jules", headers: form + session, authorization: "").status == 403)
        #expect(try await admin.send(.POST, action, body: "csrf=\(csrf)&q=jules", headers: form + session + [("Origin", "https://evil.example")],
                                     authorization: "").status == 403)
        #expect(try await admin.send(.POST, action, body: "csrf=\(csrf)&q=jules", headers: form + session + [("Sec-Fetch-Site", "cross-site")],
                                     authorization: "").status == 403)
        #expect(try await admin.send(.POST, action, body: "csrf=\(csrf)&q=jules", headers: form, authorization: "").status == 403)
        let basic = "Basic " + Data("admin:\(world.server.adminToken)".utf8).base64EncodedString()
        #expect(try await admin.send(.POST, action, body: "csrf=\(csrf)&q=jules", headers: form, authorization: basic).status == 403,
                "cached Basic credentials are no session")
        #expect(try await admin.send(.POST, action, body: "csrf=\(loginCSRF)&q=jules", headers: form + session, authorization: "").status == 403,
                "a token bound to another secret")
        #expect(try await admin.send(.POST, action, body: "csrf=\(baitToken)&q=jules", headers: form + session, authorization: "").status == 403,
                "the sign-in form's token for the session id")
        #expect(try await world.server.auditEvents().allSatisfy { $0.surface != "admin" || $0.action == "admin-sign-in" || $0.action == "accounts-listed" },
                "nothing but the page's sign-in and its search")
        #expect(try await world.server.auditEvents().contains { $0.action == "accounts-listed" && $0.actorSubject == "admin-page" && $0.detail?.contains("jules") == true })

        // An account that does not exist: a French page, and the way back keeps the search.
        let unknown = try await admin.send(.POST, "/comptes/no-such-account/suspendre", body: "csrf=\(csrf)&q=jules", headers: form + session, authorization: "")
        #expect(unknown.status == 404 && unknown.body.contains("Compte introuvable")
                && unknown.body.contains("href=\"/?csrf=\(pageToken)&amp;q=jules\""), "\(unknown.body)")

        // The way back percent-encodes a search beyond ASCII (no raw UTF-8 in an address).
        let accented = try await admin.send(.POST, "/comptes/no-such-account/suspendre", body: "csrf=\(csrf)&q=H%C3%A9l%C3%A8ne", headers: form + session, authorization: "")
        #expect(accented.status == 404 && accented.body.contains("q=H%C3%A9l%C3%A8ne\""), "\(accented.body)")

        let done = try await admin.send(.POST, action, body: "csrf=\(csrf)&q=jules&motif=fraude", headers: form + session + [("Origin", world.server.adminURL)],
                                        authorization: "")
        #expect(done.status == 303 && done.headers.first(name: "Location") == "/?csrf=\(pageToken)&q=jules&message=suspendu", "\(done.status) \(done.body)")
        let after = try await admin.send(.GET, "/?csrf=\(pageToken)&q=jules&message=suspendu", headers: session, authorization: "")
        #expect(after.body.contains("data-suspendu=\"oui\"") && after.body.contains("Rétablir l’habilitation") && after.body.contains("id=\"message\""))
        let event = try #require(try await world.server.auditEvents().last { $0.action == "habilitation-withdrawn" })
        #expect(event.actorSubject == "admin-page" && event.detail?.contains("fraude") == true && event.requestId != nil, "\(event)")
        // Sign-out ends the session.
        #expect(try await admin.send(.POST, "/deconnexion", body: "csrf=\(csrf)", headers: form + session, authorization: "").status == 303)
        // The page's access is in the trail: sign-ins (refused, accepted), sign-out.
        let access = try await world.server.auditEvents().filter { $0.action.hasPrefix("admin-sign") }.map { "\($0.action) \($0.outcome)" }
        #expect(access == ["admin-sign-in refused wrong-token", "admin-sign-in accepted", "admin-sign-out ok"],
                "three wrong tokens in a minute from one address, one event: \(access)")
        #expect(try await admin.send(.GET, "/?csrf=\(pageToken)&q=jules", headers: session, authorization: "").body.contains("form-connexion"))
        await admin.shutdown()
        await world.stop()
    }

    /// Signing in again from the same browser replaces its session: the one its cookie named
    /// ends, with its page token.
    @Test func signingInAgainEndsThePreviousSession() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server, token: "")
        let (form, loginCookie, loginCSRF) = try await Self.signInForm(admin)
        func signIn(_ cookies: String) async throws -> (cookie: String, page: String) {
            let answer = try await admin.send(.POST, "/connexion", body: "csrf=\(loginCSRF)&jeton=\(world.server.adminToken)",
                                              headers: form + [("Cookie", cookies)], authorization: "")
            let cookie = try #require(answer.headers.first(name: "Set-Cookie")?.split(separator: ";").first.map(String.init))
            return (cookie, try #require(answer.headers.first(name: "Location")))
        }
        let first = try await signIn(loginCookie)
        #expect(try await admin.send(.GET, first.page, headers: [("Cookie", first.cookie)], authorization: "").body.contains("form-recherche"))
        let second = try await signIn("\(loginCookie); \(first.cookie)")
        #expect(second.cookie != first.cookie)
        #expect(try await admin.send(.GET, first.page, headers: [("Cookie", first.cookie)], authorization: "").body.contains("form-connexion"),
                "the first session ended")
        #expect(try await admin.send(.GET, second.page, headers: [("Cookie", second.cookie)], authorization: "").body.contains("form-recherche"))
        await admin.shutdown()
        await world.stop()
    }

    /// Refusals made around the page's handlers (an unknown address, a body too large) are
    /// French pages with the pages' headers, not the framework's bare answers. The API's stay
    /// JSON.
    @Test func pageRefusalsAreFrenchPagesWithThePagesHeaders() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server, token: "")
        func checkHeaders(_ reply: (status: Int, headers: HTTPHeaders, body: String), _ label: String) {
            #expect(reply.headers.first(name: "Content-Security-Policy")?.contains("frame-ancestors 'none'") == true, "\(label): \(reply.headers)")
            #expect(reply.headers.first(name: "Cache-Control") == "no-store" && reply.headers.first(name: "X-Frame-Options") == "DENY", "\(label)")
            #expect(reply.headers.first(name: "Content-Type") == "text/html; charset=utf-8", "\(label)")
        }
        let missing = try await admin.send(.GET, "/nulle-part", authorization: "")
        #expect(missing.status == 404 && missing.body.contains("Page introuvable"), "\(missing.status) \(missing.body)")
        checkHeaders(missing, "404")
        // (A method a path does not take is a 404 too: Hummingbird's router answers so.)
        let wrongMethod = try await admin.send(.PUT, "/connexion", authorization: "")
        #expect(wrongMethod.status == 404 && wrongMethod.body.contains("Page introuvable"), "\(wrongMethod.status) \(wrongMethod.body)")
        checkHeaders(wrongMethod, "PUT")
        let (form, cookie, csrf) = try await Self.signInForm(admin)
        let large = try await admin.send(.POST, "/connexion", body: "csrf=\(csrf)&jeton=" + String(repeating: "x", count: 70_000),
                                         headers: form + [("Cookie", cookie)], authorization: "")
        #expect(large.status == 413 && large.body.contains("Requête trop volumineuse"), "\(large.status) \(large.body.prefix(300))")
        checkHeaders(large, "413")
        let api = try await admin.send(.GET, "/api/nulle-part", authorization: "Bearer \(world.server.adminToken)")
        #expect(api.status == 404 && api.headers.first(name: "Content-Type")?.contains("json") == true, "\(api.status) \(api.headers)")
        await admin.shutdown()
        await world.stop()
    }

    /// Only a request that carries the session's token keeps an admin page session alive: the
    /// cookie alone, on the page (as every other local service of the browser receives it over
    /// plain HTTP on localhost) or on a form without its token, neither extends nor ends it, so
    /// a session left alone ends on time however often such requests come.
    @Test func requestsWithoutTheTokenDoNotKeepTheSessionAlive() async throws {
        let idle = Duration.seconds(300)
        let clock = ManualClock()
        let world = try await World { $0.admin.sessionIdleTimeout = idle; $0.admin.sessionClock = clock.monotonic }
        let admin = AdminClient(server: world.server, token: "")
        let (form, session, page) = try await Self.pageSession(admin, world: world)
        let search = "/?q=jules&" + page.dropFirst(2)
        let action = try #require(try await admin.send(.GET, search, headers: session, authorization: "").body
            .firstMatch(of: /action="(\/comptes\/[^"]+\/suspendre)"/).map { String($0.1) })
        /// Requests without the token, one every 30 s for `span`: the page with the cookie
        /// alone, and a form with the cookie but not the token.
        func withoutTheToken(for span: Duration) async throws {
            var waited = Duration.zero
            while waited < span {
                clock.advance(by: .seconds(30))
                waited += .seconds(30)
                #expect(try await admin.send(.GET, "/?q=jules", headers: session, authorization: "").body.contains("form-connexion"))
                #expect(try await admin.send(.POST, action, body: "q=jules", headers: form + session, authorization: "").status == 403)
            }
        }
        // They do not end it: a request with the token, 1 s short of the idle time since the
        // last one that carried it, still finds it.
        try await withoutTheToken(for: .seconds(270))
        clock.advance(by: .seconds(29))
        #expect(try await admin.send(.GET, search, headers: session, authorization: "").body.contains("form-recherche"),
                "requests without the token ended the session")
        // Nor do they extend it: the session ends the idle time after the last request that
        // carried the token, however many came without it in between.
        try await withoutTheToken(for: .seconds(270))
        clock.advance(by: .seconds(29))
        #expect(try await admin.send(.GET, search, headers: session, authorization: "").body.contains("form-recherche"),
                "1 s before the idle time, the session is still there")
        try await withoutTheToken(for: .seconds(300))
        #expect(try await admin.send(.GET, search, headers: session, authorization: "").body.contains("form-connexion"), "the session ended on time")
        #expect(try await admin.send(.GET, page, headers: session, authorization: "").body.contains("form-connexion"))
        #expect(try await world.server.auditEvents().allSatisfy { $0.action != "habilitation-withdrawn" })
        await admin.shutdown()
        await world.stop()
    }

    /// However active, an admin page session ends 8 hours after its sign-in (the token is
    /// typed again), as Keycloak's SSO Session Max does.
    @Test func anActiveSessionEndsAtItsAbsoluteTimeout() async throws {
        let clock = ManualClock()
        let world = try await World { $0.admin.sessionClock = clock.monotonic }
        let admin = AdminClient(server: world.server, token: "")
        let (_, session, page) = try await Self.pageSession(admin, world: world)
        // A request with the token every 20 minutes (under the 30-minute idle time) for 8 hours.
        for _ in 0..<23 {
            clock.advance(by: .seconds(20 * 60))
            #expect(try await admin.send(.GET, page, headers: session, authorization: "").body.contains("form-recherche"))
        }
        clock.advance(by: .seconds(20 * 60) - .seconds(1))
        #expect(try await admin.send(.GET, page, headers: session, authorization: "").body.contains("form-recherche"), "7 h 59 min 59 s")
        clock.advance(by: .seconds(1))
        #expect(try await admin.send(.GET, page, headers: session, authorization: "").body.contains("form-connexion"), "8 h")
        await admin.shutdown()
        await world.stop()
    }

    /// Over --admin-tls (a listener that may face a network), /readyz gives its details to
    /// the token's holder only; anyone else gets the verdict and its status code.
    @Test func readinessDetailsNeedTheTokenOverTLS() async throws {
        let world = try await World { $0.admin.tls = true }
        let client = try Browser(pki: world.pki, base: "https://localhost:\(world.server.adminPort)")
        let anonymous = try await client.request(.GET, "/readyz")
        #expect(anonymous.status == 200 && anonymous.body == #"{"status":"ready"}"#, "\(anonymous.status) \(anonymous.body)")
        let wrong = try await client.request(.GET, "/readyz", headers: [("Authorization", "Bearer " + String(repeating: "x", count: 43))])
        #expect(wrong.body == #"{"status":"ready"}"#)
        #expect(try await world.server.auditEvents().contains { $0.action == "admin-api-refused" && $0.outcome == "missing or wrong token" },
                "a wrong token on /readyz is audited as on the API")
        let detailed = try await client.request(.GET, "/readyz", headers: [("Authorization", "Bearer \(world.server.adminToken)")])
        #expect(detailed.status == 200 && detailed.body.contains("certificate:fhir") && detailed.body.contains("crl:"), "\(detailed.body)")
        await client.shutdown()
        await world.stop()
    }

    @Test func healthReadinessAndMetrics() async throws {
        let world = try await World { $0.fhir.crlPollInterval = .milliseconds(100) }
        let admin = AdminClient(server: world.server, token: "")
        let ready = try await admin.send(.GET, "/readyz", authorization: "")
        #expect(ready.status == 200 && ready.body.contains(#""status":"ready""#) && ready.body.contains("certificate:fhir") && ready.body.contains("crl:"))
        let web = try world.browser()
        #expect(try await web.get("/healthz").status == 200)

        // Some traffic to count.
        _ = try await ForwardAuthTests.ask(web, server: world.server)
        _ = try await web.submit("/connexion", ["email": "nobody@test.com", "password": "x"])
        _ = try await world.fhir.send(.POST, "/Practitioner", body: "not json")
        let text = try await admin.send(.GET, "/metrics", authorization: "").body
        for line in [#"account_server_forward_auth_decisions_total{decision="no-session"} 2"#,
                     #"account_server_sign_ins_total{result="unknown-email"} 1"#,
                     #"account_server_int_r02_total{interaction="create",outcome="created"} 1"#,
                     #"account_server_int_r02_total{interaction="create",outcome="400"} 1"#,
                     #"account_server_http_requests_total{surface="fhir",status="201"} 1"#,
                     "account_server_forward_auth_duration_seconds_count 2", "account_server_argon2_queue_depth 0",
                     "account_server_log_lines_dropped_total 0"] {
            #expect(text.contains(line), "metrics have \(line)")
        }
        // The connection pool, on PostgreSQL only: some connection open and none waiting.
        if TestStore.kind == .postgres {
            #expect(text.contains("account_server_database_requests_waiting 0"), "\(text)")
            #expect(text.contains(#"account_server_database_connections{state="idle"}"#))
            let attempts = text.split(separator: "\n").first { $0.hasPrefix("account_server_database_connection_attempts_total ") }
            #expect((attempts.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0) >= 1, "\(String(describing: attempts))")
        } else {
            #expect(!text.contains("account_server_database_"), "SQLite has no connection pool to report")
        }
        #expect(try await web.get("/healthz").headers.first(name: "X-Request-Id")?.count == 16)

        // A CRL past its nextUpdate makes the instance not ready (mTLS fails closed with it).
        // (Newer than the list in force, which an older one would not replace.)
        let stale = try PKIBuilder.makeCRL(issuer: world.pki.ca, revoked: [], thisUpdate: Date().addingTimeInterval(-10), nextUpdate: Date().addingTimeInterval(-5))
        try world.pki.write(PKIBuilder.crlPEM(stale), "crl.pem")
        var notReady = try await admin.send(.GET, "/readyz", authorization: "")
        for _ in 0..<300 where notReady.status == 200 {
            try await Task.sleep(for: .milliseconds(100))
            notReady = try await admin.send(.GET, "/readyz", authorization: "")
        }
        #expect(notReady.status == 503 && notReady.body.contains(#""status":"not-ready""#) && notReady.body.contains("expired at"))
        await web.shutdown()
        await admin.shutdown()
        await world.stop()
    }

    @Test func theAdminListenerRefusesToLeaveLoopbackWithoutTLS() async throws {
        let pki = try TestPKI()
        await #expect(throws: ConfigurationError.self) {
            try await RunningServer.start(pki: pki) { $0.admin.host = "0.0.0.0" }
        }
        #expect(isLoopback("127.0.0.1") && isLoopback("::1") && isLoopback("localhost") && !isLoopback("10.1.2.3"))
    }

    @Test func tokenFileIsCreatedPrivateAndAGroupReadableOneIsRefused() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("token-\(UUID().uuidString)")
        let path = directory.appendingPathComponent("admin.token").path
        let (token, created) = try AdminToken.load(path: path)
        #expect(created)
        let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let text = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(token.matches(text) && !token.matches(text + "x"))
        #expect(AdminToken.bearer("Bearer \(text)") == text)
        #expect(AdminToken.bearer("Basic " + Data("anyone:\(text)".utf8).base64EncodedString()) == nil)
        try FileManager.default.setAttributes([.posixPermissions: 0o640], ofItemAtPath: path)
        #expect(throws: ConfigurationError.self) { try AdminToken.load(path: path) }
    }

    /// The date of `archive-audit` and `erase-deactivated`, read strictly: irreversible
    /// commands never move an impossible date to a neighbouring one.
    @Test func cutOffDatesAreReadStrictly() throws {
        let day = try #require(AdminCommand.ArchiveAudit.cutoff("2025-01-31"))
        #expect(day == Date(timeIntervalSince1970: 1_738_281_600))
        #expect(AdminCommand.ArchiveAudit.cutoff("2025-01-31T08:00:00Z") == day.addingTimeInterval(8 * 3600))
        #expect(AdminCommand.ArchiveAudit.cutoff("2025-01-31t09:00:00.250+01:00") == day.addingTimeInterval(8 * 3600 + 0.25))
        #expect(AdminCommand.ArchiveAudit.cutoff("2025-01-31T07:30:00-00:30") == day.addingTimeInterval(8 * 3600))
        for refused in ["2024-02-30", "2023-02-29", "2024-13-01", "2024-06-01T24:00:00Z", "2024-06-01T10:60:00Z", "2024-06-01T10:00:60Z",
                        "2024-6-1", "2024-06-01T10:00:00", "2024-06-01T10:00:00+25:00", "2024-06-01 10:00:00Z", "yesterday", ""] {
            #expect(AdminCommand.ArchiveAudit.cutoff(refused) == nil, "\(refused)")
        }
        #expect(AdminCommand.ArchiveAudit.cutoff("2024-02-29") != nil)
    }

    @Test func trustedProxyAddressesAndCIDRs() throws {
        let network = try #require(CIDR("10.0.0.0/8"))
        #expect(network.contains("10.200.3.4") && !network.contains("11.0.0.1") && network.contains("::ffff:10.1.1.1"))
        let loopback = try #require(CIDR("::1"))
        #expect(loopback.contains("::1") && !loopback.contains("::2"))
        #expect(try #require(CIDR("2001:db8::/32")).contains("2001:db8:ffff::1"))
        #expect(CIDR("10.0.0.0/33") == nil && CIDR("nonsense") == nil)
    }

    @Test func jsonLogLinesCarryRequestIDsAndNoSecrets() throws {
        let sink = LogLineSink(capturing: true)
        var logger = Logger(label: "account-server", factory: { LogLineHandler(label: $0, format: .json, sink: sink) })
        logger[metadataKey: "request_id"] = "0123456789abcdef"
        logger.info("session opened", metadata: ["origin": "sas", "msg": "collides"])
        let line = try #require(sink.captured.first)
        guard case .object(let object) = try JSONParser().parse(Array(line.utf8)) else { Issue.record("not an object"); return }
        #expect(object["msg"] == .string("session opened") && object["level"] == .string("info") && object["request_id"] == .string("0123456789abcdef"))
        #expect(object["origin"] == .string("sas") && object["meta_msg"] == .string("collides") && object["ts"] != nil)
    }
}

/// A clock the test moves by hand, for the admin page sessions' timeouts and the rate limiters.
final class ManualClock: Sendable {
    private let start = ContinuousClock.now
    private let offset = Mutex<Duration>(.zero)

    func advance(by duration: Duration) { offset.withLock { $0 += duration } }

    var monotonic: MonotonicClock {
        MonotonicClock { [self] in start + offset.withLock { $0 } }
    }
}
