@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Logging
import Foundation
import Storage
import StorageTesting
import Testing

/// End to end over real HTTPS with a cookie-keeping client: the SAS creates the account over
/// mTLS, the regulator sets a password through the mailed link (real SMTP server on loopback),
/// enrols TOTP, accepts the CGU, and ends in a session whose habilitation is computed live.
@Suite("Regulator sign-in")
struct WebSignInTests {
    static let email = "jules.marius@test.com"
    static let password = "Vélo-rouge-sur-la-Loire"
    static let agenda = "https://agenda.example/rdv/42?origin=sas"

    final class World: Sendable {
        let pki: TestPKI
        let smtp: SMTPSink
        let server: RunningServer
        let fhir: FHIRClient

        init(logLevel: Logger.Level = .info, configure: @escaping (inout ServerConfiguration) -> Void = { _ in }) async throws {
            pki = try TestPKI()
            smtp = try await SMTPSink()
            let smtpPort = smtp.port
            server = try await RunningServer.start(pki: pki, logLevel: logLevel) { configuration in
                configuration.smtpURL = "smtp://127.0.0.1:\(smtpPort)"
                configuration.mailPollInterval = .milliseconds(100)
                configuration.web.publicURL = "https://localhost"
                configuration.allowedReturnHosts = ["localhost", "agenda.example"]
                configuration.rateLimitPerMinute = 60
                configure(&configuration)
            }
            fhir = try FHIRClient(pki: pki, certificate: "valid", server: server)
            let created = try await fhir.send(.POST, "/Practitioner", body: Bodies.practitioner(national: "810002673899", email: WebSignInTests.email))
            guard created.status == 201 else {
                await stop()
                throw FixtureFailure("the SAS create answered \(created.status): \(created.body)")
            }
        }

        func browser() throws -> Browser { try Browser(pki: pki, base: server.webURL) }

        func setActive(_ active: Bool) async throws {
            let reply = try await fhir.send(.PUT, "/Practitioner?identifier=urn:oid:1.2.250.1.71.4.2.1%7C810002673899",
                                            body: Bodies.practitioner(national: "810002673899", active: active, email: WebSignInTests.email))
            guard reply.status == 200 else { throw FixtureFailure("the SAS update answered \(reply.status): \(reply.body)") }
        }

        func stop() async {
            await fhir.shutdown()
            await server.stop()
            smtp.stop()
        }
    }

    /// "Mot de passe oublié" → mail → link → new password.
    static func choosePassword(_ browser: Browser, world: World, mailNumber: Int = 1) async throws {
        let sent = try await browser.submit("/mot-de-passe-oublie", ["email": email])
        #expect(sent.status == 200 && sent.body.contains("Si un compte correspond"))
        let token = try #require(try await world.smtp.resetToken(number: mailNumber), "the reset mail reached the SMTP server")
        let form = try await browser.get("/reinitialisation?jeton=\(token)")
        #expect(form.status == 200)
        let done = try await browser.request(.POST, "/reinitialisation", form: ["csrf": form.csrf ?? "", "jeton": token, "password": password, "confirmation": password])
        #expect(done.status == 200 && done.body.contains("Mot de passe enregistré"), "\(done.body)")
        // The link works once.
        let again = try await browser.request(.POST, "/reinitialisation", form: ["csrf": form.csrf ?? "", "jeton": token, "password": password, "confirmation": password])
        #expect(again.status == 410)
    }

    /// Password, then TOTP (enrolment the first time; `code` instead when given, e.g. a
    /// recovery code), recovery codes, CGU; returns the final redirect, the TOTP secret and
    /// the recovery codes shown at enrolment.
    @discardableResult
    static func signIn(_ browser: Browser, secret: [UInt8]? = nil, code: String? = nil)
        async throws -> (location: String?, secret: [UInt8]?, recoveryCodes: [String]) {
        let afterPassword = try await browser.submit("/connexion", ["email": email, "password": password])
        #expect(afterPassword.status == 303)
        var secret = secret
        var recoveryCodes: [String] = []
        var page: Browser.Page
        if afterPassword.location == "/connexion/totp" {
            let enrol = try await browser.get("/connexion/totp")
            #expect(enrol.body.contains("<svg") && enrol.body.contains("otpauth://totp/"))
            let text = try #require(enrol.capture(#"id="cle-secrete">([A-Z2-7 ]+)<"#))
            secret = try #require(Base32.decode(text))
            let totp = TOTP()
            let codes = try await browser.request(.POST, "/connexion/totp", form: ["csrf": enrol.csrf ?? "", "code": totp.code(secret: try #require(secret), step: totp.step(at: Date()))])
            #expect(codes.status == 200 && codes.body.contains("codes-secours"))
            recoveryCodes = codes.body.matches(of: /<li><code>([^<]+)<\/code><\/li>/).map { String($0.1) }
            page = try await browser.request(.POST, "/connexion/suite", form: ["csrf": codes.csrf ?? ""])
        } else {
            #expect(afterPassword.location == "/connexion/second-facteur")
            let totp = TOTP()
            // The current step was used at enrolment; the next one is within the ±1 window.
            page = try await browser.submit("/connexion/second-facteur", ["code": try code ?? totp.code(secret: #require(secret), step: totp.step(at: Date()) + 1)])
        }
        if page.location == "/connexion/cgu" {
            let cgu = try await browser.get("/connexion/cgu")
            let version = try #require(cgu.capture(#"name="version" value="([^"]+)""#))
            page = try await browser.request(.POST, "/connexion/cgu", form: ["csrf": cgu.csrf ?? "", "accepte": "oui", "version": version])
        }
        #expect(page.status == 303)
        return (page.location, secret, recoveryCodes)
    }

    @Test func sasOriginSignInGrantsTheHabilitationAndWithdrawalIsInstant() async throws {
        let world = try await World()
        let browser = try world.browser()
        let entry = try await browser.get("/connexion?origin=sas&retour=\(Self.agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)")
        #expect(entry.status == 303 && entry.location == "/connexion")
        let signInPage = try await browser.get("/connexion")
        #expect(signInPage.body.contains("id=\"origine-sas\""))
        // The generated password is unknown: sign-in is refused, with the generic answer.
        let refused = try await browser.submit("/connexion", ["email": Self.email, "password": "whatever-it-was"])
        #expect(refused.status == 401 && refused.body.contains("id=\"erreur\""))

        try await Self.choosePassword(browser, world: world)
        let (location, _, _) = try await Self.signIn(browser)
        #expect(location == Self.agenda, "back to the agenda page the SAS linked to")
        #expect(browser.cookies["__Host-as-session"] != nil && browser.cookies["__Host-as-flow"] == nil && browser.cookies["__Host-as-intent"] == nil)

        let account = try await browser.get("/compte")
        #expect(account.body.contains("data-habilitation=\"oui\"") && account.body.contains("data-origine=\"sas\""), "\(account.body)")

        try await world.setActive(false)
        #expect(try await browser.get("/compte").body.contains("data-habilitation=\"non\""))
        try await world.setActive(true)
        #expect(try await browser.get("/compte").body.contains("data-habilitation=\"oui\""))
        await browser.shutdown()
        await world.stop()
    }

    /// `--privacy-notice-url` and the other notices are linked from every regulator page,
    /// error pages included, and from none of the admin listener's.
    @Test func everyRegulatorPageLinksTheDeploymentsNotices() async throws {
        let footer = try PageFooter(privacyNotice: "https://agenda.example/donnees-personnelles", legalNotice: "https://agenda.example/mentions",
                                    accessibilityStatement: "https://agenda.example/accessibilite", accessibilityCompliance: "none")
        let world = try await World { $0.footer = footer }
        let browser = try world.browser()
        for path in ["/connexion", "/mot-de-passe-oublie", "/page-inconnue", "/reinitialisation?jeton=faux"] {
            let page = try await browser.get(path)
            #expect(page.body.contains(#"href="https://agenda.example/donnees-personnelles" id="lien-donnees-personnelles""#)
                    && page.body.contains("id=\"lien-mentions-legales\"") && page.body.contains("non conforme</a>"), "\(path): \(page.status) \(page.body)")
        }
        let admin = AdminClient(server: world.server)
        #expect(try await !admin.send(.GET, "/", authorization: "").body.contains("lien-donnees-personnelles"))
        await admin.shutdown()
        await browser.shutdown()
        await world.stop()
    }

    /// `--log-level trace` shows the server's own trace lines but never the database
    /// driver's: postgres-nio logs every message at trace (bound values such as password and
    /// token hashes, data rows, the SCRAM exchange). Meaningful on the PostgreSQL run.
    @Test func aTraceLogHoldsNoDatabaseTraffic() async throws {
        let world = try await World(logLevel: .trace)
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        try await Self.signIn(browser)
        let session = try #require(browser.cookies["__Host-as-session"])
        #expect(try await browser.get("/compte").status == 200)
        let lines = world.server.logs.all
        #expect(lines.contains { $0.contains("trace") || $0.contains("debug") }, "the server logged below info: \(lines.count) lines")
        let leaks = lines.filter { $0.contains("$argon2id$") || $0.contains(session) || $0.contains("Run action") || $0.contains("Backend message") }
        #expect(leaks.isEmpty, "\(leaks.prefix(3))")
        await browser.shutdown()
        await world.stop()
    }

    @Test func directSignInHasNoHabilitationEvenWithOriginAddedLater() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let (location, secret, recoveryCodes) = try await Self.signIn(browser)
        #expect(location == "/compte")
        let account = try await browser.get("/compte")
        #expect(account.body.contains("data-habilitation=\"non\"") && account.body.contains("data-origine=\"direct\""))
        #expect(account.body.contains("pas été ouverte depuis la plateforme SAS"))
        let tampered = try await browser.get("/compte?origin=sas")
        #expect(tampered.body.contains("data-habilitation=\"non\""))

        // A SAS redirect reaching the direct session asks for a fresh sign-in, which then
        // creates a SAS session (with a new session id).
        let directCookie = browser.cookies["__Host-as-session"]
        let entry = try await browser.get("/connexion?origin=sas&retour=\(Self.agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)")
        #expect(entry.location == "/connexion")
        let again = try await Self.signIn(browser, secret: secret)
        #expect(again.location == Self.agenda)
        #expect(browser.cookies["__Host-as-session"] != directCookie)
        #expect(try await browser.get("/compte").body.contains("data-habilitation=\"oui\""))
        await browser.shutdown()
        await world.stop()
    }

    @Test func replayedTOTPCodeIsRefused() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let totp = TOTP()
        // The enrolment uses the step current at that moment, this one or a later one: the
        // code of this step is then the enrolment code, or older than it — never acceptable.
        // (Taking the step after the sign-in made the test fail whenever a 30 s step ended
        // in between.)
        let stepBeforeEnrolment = totp.step(at: Date())
        let (_, secret, _) = try await Self.signIn(browser)
        let secretBytes = try #require(secret)
        let second = try world.browser()
        let afterPassword = try await second.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(afterPassword.location == "/connexion/second-facteur")
        let used = totp.code(secret: secretBytes, step: stepBeforeEnrolment)
        let replay = try await second.submit("/connexion/second-facteur", ["code": used])
        #expect(replay.status == 401, "the enrolment code cannot be replayed")
        await browser.shutdown()
        await second.shutdown()
        await world.stop()
    }

    @Test func lockoutAfterConsecutiveFailures() async throws {
        let world = try await World { $0.lockout = LockoutPolicy(maximumFailures: 3, coolingPeriod: .seconds(900)) }
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        var answers: [String] = []
        for _ in 0..<3 {
            let page = try await browser.submit("/connexion", ["email": Self.email, "password": "wrong password!"])
            #expect(page.status == 401)
            answers.append(page.capture(#"(<p class="error".*?</p>)"#) ?? "")
        }
        let locked = try await browser.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(locked.status == 401, "the right password is refused while locked")
        let unknown = try await browser.submit("/connexion", ["email": "nobody@test.com", "password": Self.password])
        #expect(Set(answers + [locked.capture(#"(<p class="error".*?</p>)"#) ?? "", unknown.capture(#"(<p class="error".*?</p>)"#) ?? ""]).count == 1,
                "unknown e-mail, wrong password and locked account get the same answer")
        let events = try await world.server.auditEvents().map(\.action)
        #expect(events.contains("lockout"))
        await browser.shutdown()
        await world.stop()
    }

    /// Wrong second-factor codes count in the account's failure counter (a phished password
    /// plus many addresses must not guess codes forever): a flow ends after 3 wrong codes, a
    /// correct password does not reset the count, and once locked, the right password and
    /// the right code (on a flow opened before the lockout) are both refused.
    @Test func secondFactorFailuresCountTowardLockout() async throws {
        let world = try await World { $0.lockout = LockoutPolicy(maximumFailures: 5, coolingPeriod: .seconds(900)) }
        let first = try world.browser()
        try await Self.choosePassword(first, world: world)
        let secret = try #require(try await Self.signIn(first).secret)
        await first.shutdown()
        let totp = TOTP()
        let wrongCode = String(format: "%06d", ((Int(totp.code(secret: secret, step: totp.step(at: Date()))) ?? 0) + 500_000) % 1_000_000)

        // A flow opened now, whose right code comes after the lockout.
        let waiting = try world.browser()
        #expect(try await waiting.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")

        let attacker = try world.browser()
        #expect(try await attacker.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")
        for attempt in 1...3 {
            let page = try await attacker.submit("/connexion/second-facteur", ["code": wrongCode])
            if attempt < 3 {
                #expect(page.status == 401)
            } else {
                #expect(page.status == 303 && page.location == "/connexion?fin=codes", "the flow ends after 3 wrong codes")
            }
        }
        #expect(try await attacker.get("/connexion/second-facteur").location == "/connexion?fin=expiree", "that flow is gone")
        // The right password again: accepted, but the count goes on from 3.
        #expect(try await attacker.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")
        _ = try await attacker.submit("/connexion/second-facteur", ["code": wrongCode])
        let fifth = try await attacker.submit("/connexion/second-facteur", ["code": wrongCode])
        #expect(fifth.location == "/connexion?fin=codes", "the fifth failure locks the account and ends the flow")

        let rightPassword = try await attacker.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(rightPassword.status == 401, "the right password is refused during the lockout")
        let rightCode = try await waiting.submit("/connexion/second-facteur", ["code": totp.code(secret: secret, step: totp.step(at: Date()) + 1)])
        #expect(rightCode.location == "/connexion?fin=codes" && waiting.cookies["__Host-as-session"] == nil,
                "the right code is refused during the lockout: \(rightCode.status) \(rightCode.location ?? "-")")
        let events = try await world.server.auditEvents()
        #expect(events.filter { $0.action == "second-factor" && $0.outcome.hasPrefix("refused") }.count >= 6)
        #expect(events.contains { $0.action == "lockout" })
        await waiting.shutdown()
        await attacker.shutdown()
        await world.stop()
    }

    /// Behind a trusted proxy (`--trusted-proxy`), a regulator is the address the proxy
    /// appended to `X-Forwarded-For` (the right-most entry of the last header): what the audit
    /// trail records and what the rate limit counts, so one SAMU exhausting its budget leaves
    /// another's whole. What a client wrote before it is not believed, nor a last entry that
    /// is not an address, nor the header at all from a peer that is not trusted.
    @Test(arguments: [true, false])
    func theClientIsTheAddressATrustedProxyAppended(_ trusted: Bool) async throws {
        let clock = ManualClock()  // stands still: no budget comes back during the test
        let world = try await World {
            $0.rateLimitPerMinute = 2
            $0.rateLimitClock = clock.monotonic
            $0.web.trustedProxies = trusted ? ["127.0.0.1"] : []
        }
        let browser = try world.browser()
        func attempt(_ forwarded: [String]) async throws -> (status: Int, address: String?) {
            let page = try await browser.get("/connexion")
            let answer = try await browser.request(.POST, "/connexion", form: ["csrf": page.csrf ?? "", "email": Self.email, "password": "not-it"],
                                                   headers: forwarded.map { ("X-Forwarded-For", $0) })
            let event = try await world.server.auditEvents().last { $0.action == "sign-in" }
            return (answer.status, event?.actorAddress)
        }
        let first = try await attempt(["198.51.100.7, 203.0.113.9"])
        #expect(first.status == 401 && first.address == (trusted ? "203.0.113.9" : "127.0.0.1"), "\(first)")
        let second = try await attempt(["203.0.113.9", "192.0.2.1,203.0.113.10"])
        #expect(second.status == 401 && second.address == (trusted ? "203.0.113.10" : "127.0.0.1"), "\(second)")
        let notAnAddress = try await attempt(["203.0.113.9, unknown"])
        if trusted {
            #expect(notAnAddress.status == 401 && notAnAddress.address == "127.0.0.1", "\(notAnAddress)")
            let warnings = world.server.logs.all.filter { $0.contains("X-Forwarded-For entry is not an address") }
            #expect(warnings.count == 1 && warnings[0].contains("entry=unknown"), "said, with the entry: \(warnings)")
            // With the client's port, as some load balancers append it: the address.
            let withPort = try await attempt(["192.0.2.50:4711"])
            #expect(withPort.status == 401 && withPort.address == "192.0.2.50", "\(withPort)")
            let v6WithPort = try await attempt(["[2001:db8::7]:443"])
            #expect(v6WithPort.status == 401 && v6WithPort.address == "2001:db8::7", "\(v6WithPort)")
            // 203.0.113.9 has one attempt left of its two; 203.0.113.10 one; the proxy's own
            // address one. The first two run out, the third address is untouched.
            #expect(try await attempt(["203.0.113.9"]).status == 401)
            #expect(try await attempt(["203.0.113.9"]).status == 429)
            #expect(try await attempt(["198.51.100.20"]).status == 401, "another address behind the proxy keeps its budget")
        } else {
            // Every attempt is the proxy's (the peer's) address: its budget of two is spent.
            #expect(notAnAddress.status == 429, "\(notAnAddress)")
        }
        await browser.shutdown()
        await world.stop()
    }

    /// A form whose declared size is past the limit is answered at once (413, French page),
    /// not after waiting for a body that may never come, and the connection closes: the body
    /// is not read.
    @Test func aFormDeclaredTooLargeIsAnsweredAtOnceAndTheConnectionCloses() async throws {
        let world = try await World()
        let script = RawHTTP.preamble + """
            web, ca = int(sys.argv[2]), sys.argv[3]
            sock = connect(web, ca, timeout=20)
            sock.sendall(b"POST /connexion HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Type: application/x-www-form-urlencoded\\r\\nContent-Length: 100000000000\\r\\n\\r\\nemail=a")
            received, closed = read_answers(sock, 1, closes=True)
            print(json.dumps({"text": received.decode("utf-8", "replace"), "closed": closed}))
            """
        let run = try await spawnAndWait("/usr/bin/python3", ["-c", script, RawHTTP.folder, String(world.server.webPort), world.pki.caPath])
        let result = try #require(try JSONSerialization.jsonObject(with: run.output) as? [String: Any], "\(String(decoding: run.errors, as: UTF8.self))")
        let text = result["text"] as? String ?? ""
        #expect(text.hasPrefix("HTTP/1.1 413") && text.contains("Formulaire trop volumineux"), "\(text.prefix(300))")
        #expect(result["closed"] as? Bool == true, "the connection closes after the answer")
        await world.stop()
    }

    /// What counts as the address in a trusted proxy's entry.
    @Test func forwardedEntriesWithAPortGiveTheirAddress() {
        typealias M = ClientAddressMiddleware<WebLimits>
        #expect(M.address("192.0.2.7") == "192.0.2.7")
        #expect(M.address("192.0.2.7:51234") == "192.0.2.7")
        #expect(M.address("2001:db8::7") == "2001:db8::7")
        #expect(M.address("[2001:db8::7]") == "2001:db8::7")
        #expect(M.address("[2001:db8::7]:51234") == "2001:db8::7")
        for refused in ["unknown", "198.51.100.001", "192.0.2.7:", "192.0.2.7:123456", "192.0.2.7:80:80", "[192.0.2.7]:80", "[2001:db8::7]x",
                        "[2001:db8::7]:", "_hidden", "", "2001:db8::7:80x"] {
            #expect(M.address(refused) == nil, "\(refused)")
        }
    }

    /// A page of another site can navigate a window to the SAS entry again and again (one
    /// click gives it a window): each navigation looks exactly like the SAS link. The intent
    /// is sealed into its cookie, so the entry writes nothing and spends no budget: the loop
    /// fills no table, and the regulators behind the same address still sign in.
    @Test func aWindowNavigatedToTheEntryInALoopWritesNothingAndLocksNobodyOut() async throws {
        let clock = ManualClock()  // stands still: no budget comes back during the test
        let world = try await World { $0.rateLimitPerMinute = 2; $0.rateLimitClock = clock.monotonic }
        let window = try world.browser()
        let eventsBefore = try await world.server.auditEvents().count
        let navigation = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
        var statuses: [Int: Int] = [:]
        for index in 0..<200 {
            let page = try await window.request(.GET, "/connexion?origin=sas&retour=%2Fcompte%3Fn%3D\(index)", headers: navigation)
            statuses[page.status, default: 0] += 1
        }
        #expect(statuses == [303: 200], "\(statuses)")
        let rows = try await world.server.database.read { db in
            [try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM login_intent") ?? -1, try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow") ?? -1]
        }
        #expect(rows == [0, 0], "\(rows)")
        #expect(try await world.server.auditEvents().count == eventsBefore)
        // The last intent is the window's: its sign-in is a SAS one, and direct entries (the
        // same loop aiming at a sign-in without the habilitation) do not replace it.
        for _ in 0..<20 {
            let direct = try await window.request(.GET, "/connexion?retour=%2Fcompte", headers: navigation)
            #expect(direct.status == 303 && direct.location == "/connexion" && !direct.headers["Set-Cookie"].contains { $0.hasPrefix("__Host-as-intent") })
        }
        #expect(try await window.get("/connexion").body.contains("id=\"origine-sas\""))
        // Another regulator behind the same address: the whole budget is there.
        let regulator = try world.browser()
        _ = try await regulator.get("/connexion?origin=sas")
        let signIns = [try await regulator.submit("/connexion", ["email": Self.email, "password": "x"]),
                       try await regulator.submit("/connexion", ["email": Self.email, "password": "x"]),
                       try await regulator.submit("/connexion", ["email": Self.email, "password": "x"])].map(\.status)
        #expect(signIns == [401, 401, 429], "\(signIns)")
        await regulator.shutdown()
        await window.shutdown()
        await world.stop()
    }

    /// One installation (database, server key, mail sink) that servers are started on one
    /// after the other, as a restart or an upgrade does.
    struct Installation {
        let pki: TestPKI
        let smtp: SMTPSink
        let database: StorageLocation
        let key: String

        init() async throws {
            pki = try TestPKI()
            smtp = try await SMTPSink()
            database = try StorageLocation(try await TestStore.argument(in: pki.directory.appendingPathComponent("shared")))
            key = pki.directory.appendingPathComponent("shared.key").path
        }

        func start(_ configure: @escaping (inout ServerConfiguration) -> Void = { _ in }) async throws -> RunningServer {
            let (database, key, port) = (self.database, self.key, smtp.port)
            return try await RunningServer.start(pki: pki) {
                $0.database = database
                $0.secretKeyPath = key
                $0.smtpURL = "smtp://127.0.0.1:\(port)"
                $0.mailPollInterval = .milliseconds(100)
                $0.rateLimitPerMinute = 60
                configure(&$0)
            }
        }

        /// The SAS creates the regulator on `server`, who chooses a password and signs in
        /// (TOTP enrolled, CGU accepted); returns the TOTP secret.
        func firstSignIn(on server: RunningServer) async throws -> [UInt8]? {
            let fhir = try FHIRClient(pki: pki, certificate: "valid", server: server)
            #expect(try await fhir.send(.POST, "/Practitioner", body: Bodies.practitioner(national: "810002673899", email: WebSignInTests.email)).status == 201)
            await fhir.shutdown()
            let browser = try Browser(pki: pki, base: server.webURL)
            #expect(try await browser.submit("/mot-de-passe-oublie", ["email": WebSignInTests.email]).status == 200)
            let token = try #require(try await smtp.resetToken(number: 1))
            let form = try await browser.get("/reinitialisation?jeton=\(token)")
            _ = try await browser.request(.POST, "/reinitialisation", form: ["csrf": form.csrf ?? "", "jeton": token, "password": WebSignInTests.password,
                                                                             "confirmation": WebSignInTests.password])
            let (_, secret, _) = try await WebSignInTests.signIn(browser)
            await browser.shutdown()
            return secret
        }
    }

    /// A reset mail the relay has not taken yet dies with its link: asked for through the
    /// page, refused once by a relay that is down (retried in 30 s), then the SAS deactivates
    /// the account, which voids the link: the mail leaves the outbox, so nothing is left to
    /// deliver when the relay comes back, and the update's audit event says so.
    @Test func aResetMailWaitingForTheRelayDiesWithItsLink() async throws {
        let closed = freeLoopbackPort()
        let world = try await World { $0.smtpURL = "smtp://127.0.0.1:\(closed)" }
        let browser = try world.browser()
        let database = world.server.database
        #expect(try await browser.submit("/mot-de-passe-oublie", ["email": Self.email]).status == 200)
        var attempts = 0
        for _ in 0..<100 where attempts == 0 {
            try await Task.sleep(for: .milliseconds(100))
            attempts = try await database.read { db in try Int.fetchOne(db, sql: "SELECT MAX(attempts) FROM mail_outbox WHERE sent_at IS NULL") } ?? 0
        }
        #expect(attempts == 1, "the relay refused the mail once")
        // The mailer logs the failure after recording it: looked for a moment.
        var logged = false
        for _ in 0..<50 where !logged {
            logged = world.server.logs.all.contains { $0.contains("mail delivery failed") }
            if !logged { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(logged)
        try await world.setActive(false)
        let left = try await database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM mail_outbox") }
        #expect(left == 0, "the mail went with its link")
        let update = try await database.read { db in try AuditLog().events(in: db) }.last { $0.action == "conditional-update" }
        #expect(update?.detail == "1 password reset link(s) voided, 1 reset mail(s) still queued withdrawn", "\(String(describing: update))")
        await browser.shutdown()
        await world.stop()
    }

    @Test func cguMustBeAcceptedAgainAfterAVersionChange() async throws {
        let installation = try await Installation()
        let (pki, smtp) = (installation.pki, installation.smtp)
        func start(version: String) async throws -> RunningServer {
            try await installation.start { $0.cguVersion = version }
        }
        let first = try await start(version: "2026-01")
        let secret = try await installation.firstSignIn(on: first)
        await first.stop()

        let second = try await start(version: "2026-02")
        let later = try Browser(pki: pki, base: second.webURL)
        let afterPassword = try await later.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(afterPassword.location == "/connexion/second-facteur")
        let totp = TOTP()
        let afterCode = try await later.submit("/connexion/second-facteur", ["code": totp.code(secret: try #require(secret), step: totp.step(at: Date()) + 1)])
        #expect(afterCode.location == "/connexion/cgu", "a new CGU version must be accepted again")
        let cgu = try await later.get("/connexion/cgu")
        #expect(cgu.body.contains("Version 2026-02") && cgu.body.contains("id=\"qui-nom\">Jules MARIUS<"))
        // A form of the previous version (the page shown before the change) is told so.
        let stale = try await later.request(.POST, "/connexion/cgu", form: ["csrf": cgu.csrf ?? "", "accepte": "oui", "version": "2026-01"])
        #expect(stale.status == 400 && stale.body.contains("Les conditions ont changé") && stale.body.contains("Version 2026-02"))
        let unchecked = try await later.request(.POST, "/connexion/cgu", form: ["csrf": cgu.csrf ?? "", "version": "2026-02"])
        #expect(unchecked.status == 400 && unchecked.body.contains("Cochez la case"))
        await later.shutdown()
        await second.stop()
        smtp.stop()
    }

    /// A live SAS session that owes the terms of a new version has lost the habilitation; the
    /// SAS link no longer sends it straight back (the agenda would refuse it again, in a
    /// loop) but leads it through a sign-in to the new terms, after which it is habilitated.
    @Test func aLiveSessionOwingNewTermsIsLedToThemByTheSASLink() async throws {
        let installation = try await Installation()
        let first = try await installation.start { $0.cguVersion = "2026-01" }
        let fhir = try FHIRClient(pki: installation.pki, certificate: "valid", server: first)
        #expect(try await fhir.send(.POST, "/Practitioner", body: Bodies.practitioner(national: "810002673899", email: Self.email)).status == 201)
        await fhir.shutdown()
        let browser = try Browser(pki: installation.pki, base: first.webURL)
        #expect(try await browser.submit("/mot-de-passe-oublie", ["email": Self.email]).status == 200)
        let token = try #require(try await installation.smtp.resetToken(number: 1))
        let form = try await browser.get("/reinitialisation?jeton=\(token)")
        _ = try await browser.request(.POST, "/reinitialisation", form: ["csrf": form.csrf ?? "", "jeton": token, "password": Self.password,
                                                                         "confirmation": Self.password])
        #expect(try await browser.get("/connexion?origin=sas").location == "/connexion")
        let secret = try #require(try await Self.signIn(browser).secret)  // enrols with the current step's code
        #expect(try await browser.get("/compte").body.contains("data-habilitation=\"oui\""))
        #expect(try await browser.get("/connexion?origin=sas").location?.hasSuffix("/compte") == true, "a session owing nothing goes straight back")

        // A second server on the same database with new terms: the same session, there.
        let second = try await installation.start { $0.cguVersion = "2026-02" }
        let later = try Browser(pki: installation.pki, base: second.webURL)
        later.cookies = browser.cookies
        #expect(try await later.get("/compte").body.contains("data-habilitation=\"non\""), "the new terms are owed at once")
        let refused = try await later.get("/acces-refuse")
        #expect(refused.body.contains("conditions d’utilisation en vigueur") && refused.body.contains("l’étape restante"), "\(refused.body)")
        let entry = try await later.get("/connexion?origin=sas")
        #expect(entry.location == "/connexion", "led to a sign-in, not back to the refusal")
        let totp = TOTP()
        let afterPassword = try await later.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(afterPassword.location == "/connexion/second-facteur")
        let afterCode = try await later.submit("/connexion/second-facteur", ["code": totp.code(secret: secret, step: totp.step(at: Date()) + 1)])
        #expect(afterCode.location == "/connexion/cgu")
        let cgu = try await later.get("/connexion/cgu")
        #expect(cgu.body.contains("Version 2026-02"))
        let accepted = try await later.request(.POST, "/connexion/cgu", form: ["csrf": cgu.csrf ?? "", "accepte": "oui", "version": "2026-02"])
        #expect(accepted.status == 303)
        let account = try await later.get("/compte")
        #expect(account.body.contains("data-habilitation=\"oui\"") && account.body.contains("data-origine=\"sas\""), "\(account.body)")
        await later.shutdown()
        await browser.shutdown()
        await second.stop()
        await first.stop()
        installation.smtp.stop()
    }

    /// A recovery code stored by a version of before 2026-12 (plain SHA-256) is rewritten into
    /// its keyed form when the server starts, before any listener opens, and the regulator's
    /// printed code still signs them in, once.
    @Test func aLegacyRecoveryCodeIsKeyedAtStartAndStillSignsIn() async throws {
        let installation = try await Installation()
        let (pki, smtp) = (installation.pki, installation.smtp)
        // The first server's retention job must not key the code before the second starts.
        func start(purgeInterval: Duration) async throws -> RunningServer {
            try await installation.start { $0.purgeInterval = purgeInterval }
        }
        let first = try await start(purgeInterval: .seconds(3600))
        _ = try await installation.firstSignIn(on: first)
        // What an earlier version stored for a code it issued.
        let legacy = "QRSTV-WXYZ2"
        try await first.database.write { db in
            let accountID = try #require(try String.fetchOne(db, sql: "SELECT id FROM account"))
            try db.execute(sql: "INSERT INTO recovery_code (account_id, code_hash, created_at) VALUES (?, ?, 0)",
                           arguments: [accountID, RecoveryCodes.legacyHash(legacy)])
        }
        await first.stop()

        let second = try await start(purgeInterval: .milliseconds(100))
        let stored = try await second.database.read { db in try String.fetchAll(db, sql: "SELECT code_hash FROM recovery_code") }
        #expect(stored.count == 11 && !stored.contains(RecoveryCodes.legacyHash(legacy)) && stored.filter { $0.hasPrefix("h0:") }.count == 1,
                "\(stored.map { $0.prefix(3) })")
        // Keyed by the start itself (the retention job, which runs beside it, logs otherwise).
        #expect(second.logs.all.contains { $0.contains("sealed outbox bodies and keyed recovery codes") && $0.contains("recovery_codes=1") },
                "the start says what it did")
        let later = try Browser(pki: pki, base: second.webURL)
        _ = try await Self.signIn(later, code: legacy.lowercased())
        #expect(later.cookies["__Host-as-session"] != nil, "signed in with the printed code")
        let again = try Browser(pki: pki, base: second.webURL)
        #expect(try await again.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")
        let refused = try await again.submit("/connexion/second-facteur", ["code": legacy])
        #expect(refused.status != 303, "a recovery code works once")
        // A code an instance of the earlier version stores while this one runs (a rolling
        // upgrade) is keyed by the retention job.
        let meanwhile = RecoveryCodes.legacyHash("ABCDE-23456")
        try await second.database.write { db in
            try db.execute(sql: "INSERT INTO recovery_code (account_id, code_hash, created_at) SELECT id, ?, 0 FROM account", arguments: [meanwhile])
        }
        var plain = 1
        for _ in 0..<100 where plain > 0 {
            try await Task.sleep(for: .milliseconds(50))
            plain = try await second.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM recovery_code WHERE code_hash NOT LIKE 'h_:%'") } ?? 1
        }
        #expect(plain == 0, "the retention job keyed the code stored meanwhile")
        await later.shutdown()
        await again.shutdown()
        await second.stop()
        smtp.stop()
    }

    @Test func openRedirectsAndMissingCSRFAreRefused() async throws {
        let world = try await World()
        let browser = try world.browser()
        for target in ["https://evil.example/", "//evil.example/x", "https://agenda.example@evil.example/", "http://agenda.example/", "javascript:alert(1)"] {
            let page = try await browser.get("/connexion?origin=sas&retour=\(target.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)")
            #expect(page.status == 400, "\(target)")
            #expect(page.location == nil)
        }
        _ = try await browser.get("/connexion")
        let noToken = try await browser.request(.POST, "/connexion", form: ["email": Self.email, "password": Self.password])
        #expect(noToken.status == 403)
        let forged = try await browser.request(.POST, "/connexion", form: ["csrf": "forged", "email": Self.email, "password": Self.password])
        #expect(forged.status == 403)
        let crossSite = try await browser.request(.POST, "/connexion", form: ["csrf": (try await browser.get("/connexion")).csrf ?? "", "email": Self.email, "password": "x"],
                                                  headers: [("Origin", "https://evil.example")])
        #expect(crossSite.status == 403)
        await browser.shutdown()
        await world.stop()
    }

    /// What another site's page can make a regulator's browser send (a post without our form
    /// token, an image or a frame on the SAS entry) is refused before the address's budget is
    /// spent or anything is written: behind a SAMU's one address, such a page must not lock
    /// the regulators out of signing in. The browser's own navigation from the SAS link, a
    /// cross-site one, still passes.
    @Test func crossSiteRequestsSpendNoBudgetAndWriteNothing() async throws {
        let clock = ManualClock()  // stands still: no budget comes back during the test
        let world = try await World { $0.rateLimitPerMinute = 2; $0.rateLimitClock = clock.monotonic }
        let browser = try world.browser()
        _ = try await browser.get("/connexion")
        let crossSite = [("Origin", "https://evil.example"), ("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
        for path in ["/connexion", "/connexion/second-facteur", "/connexion/totp", "/mot-de-passe-oublie", "/reinitialisation"] {
            for _ in 0..<3 {
                let page = try await browser.request(.POST, path, form: ["csrf": "forged", "email": Self.email, "password": "x", "code": "000000", "jeton": "x"],
                                                     headers: crossSite)
                #expect(page.status == 403 && page.body.contains("Formulaire expiré"), "\(path): \(page.status)")
            }
        }
        for (mode, destination) in [("no-cors", "image"), ("navigate", "iframe"), ("cors", "empty"), ("no-cors", "script")] {
            for _ in 0..<3 {
                let page = try await browser.request(.GET, "/connexion?origin=sas", headers: [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", mode), ("Sec-Fetch-Dest", destination)])
                #expect(page.status == 403 && page.body.contains("Requête refusée") && page.location == nil, "\(mode) \(destination): \(page.status)")
            }
        }
        #expect(browser.cookies["__Host-as-intent"] == nil, "a refused entry sets no intent (it would replace a sign-in's)")
        let failures = try await world.server.database.read { db in try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account") ?? -1 }
        #expect(failures == 0, "nor counts against the account")

        // Every budget is whole: two of each pass, the third is refused.
        // A prefetch or prerender is no navigation either; the browser's own navigation from
        // another site (the SAS link) passes (it spends no budget: it writes nothing).
        let navigation = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
        for purpose in [("Sec-Purpose", "prefetch;prerender"), ("Sec-Purpose", "prefetch"), ("Purpose", "prefetch")] {
            #expect(try await browser.request(.GET, "/connexion?origin=sas", headers: navigation + [purpose]).status == 403, "\(purpose)")
        }
        let entries = [try await browser.request(.GET, "/connexion?origin=sas", headers: navigation).status, try await browser.get("/connexion?origin=sas").status]
        #expect(entries == [303, 303], "\(entries)")
        let signIns = [try await browser.submit("/connexion", ["email": Self.email, "password": "x"]),
                       try await browser.submit("/connexion", ["email": Self.email, "password": "x"]),
                       try await browser.submit("/connexion", ["email": Self.email, "password": "x"])].map(\.status)
        let resets = [try await browser.submit("/mot-de-passe-oublie", ["email": "nobody@test.com"]),
                      try await browser.submit("/mot-de-passe-oublie", ["email": "nobody@test.com"]),
                      try await browser.submit("/mot-de-passe-oublie", ["email": "nobody@test.com"])].map(\.status)
        #expect(signIns == [401, 401, 429], "\(signIns)")
        #expect(resets == [200, 200, 429], "\(resets)")
        await browser.shutdown()
        await world.stop()
    }

    /// The terms-of-use page asked for before the second factor (another site opening it in
    /// the regulator's browser, a bookmark) sends the sign-in on to its step instead of ending
    /// it: at enrolment, then at the code step.
    @Test func aStepPageOpenedEarlyLeadsToTheFlowsStepWithoutEndingIt() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let crossSite = [("Sec-Fetch-Site", "cross-site"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]
        let afterPassword = try await browser.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(afterPassword.location == "/connexion/totp")
        let early = try await browser.request(.GET, "/connexion/cgu", headers: crossSite)
        #expect(early.status == 303 && early.location == "/connexion/totp", "\(early.status) \(early.location ?? "-")")
        #expect(browser.cookies["__Host-as-flow"] != nil, "the flow's cookie stays")
        let enrol = try await browser.get("/connexion/totp")
        #expect(enrol.status == 200 && enrol.body.contains("<svg"), "the sign-in goes on: \(enrol.status)")
        let shown = try #require(enrol.capture(#"id="cle-secrete">([A-Z2-7 ]+)<"#))
        let secret = try #require(Base32.decode(shown))
        let totp = TOTP()
        let codes = try await browser.request(.POST, "/connexion/totp", form: ["csrf": enrol.csrf ?? "", "code": totp.code(secret: secret, step: totp.step(at: Date()))])
        #expect(codes.status == 200 && codes.body.contains("codes-secours"))
        let cgu = try await browser.request(.POST, "/connexion/suite", form: ["csrf": codes.csrf ?? ""])
        #expect(cgu.location == "/connexion/cgu")

        let second = try world.browser()
        #expect(try await second.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")
        let earlyAgain = try await second.request(.GET, "/connexion/cgu", headers: crossSite)
        #expect(earlyAgain.status == 303 && earlyAgain.location == "/connexion/second-facteur", "\(earlyAgain.status) \(earlyAgain.location ?? "-")")
        let page = try await second.submit("/connexion/second-facteur", ["code": totp.code(secret: secret, step: totp.step(at: Date()) + 1)])
        #expect(page.status == 303 && page.location == "/connexion/cgu", "the code step still takes the code: \(page.status) \(page.location ?? "-")")
        await browser.shutdown()
        await second.shutdown()
        await world.stop()
    }

    /// A TOTP secret shown to one sign-in is never shown to another: someone holding the
    /// password who signs in meanwhile gets a secret of their own, and the regulator's page,
    /// after the code that no longer matches, shows a new secret of the regulator's own, never
    /// the other's. The secret enrolled is one only the regulator saw.
    @Test func aTOTPSecretIsShownToOneSignInOnly() async throws {
        let world = try await World()
        let regulator = try world.browser()
        let other = try world.browser()
        try await Self.choosePassword(regulator, world: world)
        func secret(of page: Browser.Page) throws -> [UInt8] {
            let text = try #require(page.capture(#"id="cle-secrete">([A-Z2-7 ]+)<"#))
            return try #require(Base32.decode(text))
        }
        func code(_ secret: [UInt8]) -> String { let totp = TOTP(); return totp.code(secret: secret, step: totp.step(at: Date())) }

        #expect(try await regulator.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/totp")
        let regulatorPage = try await regulator.get("/connexion/totp")
        let scanned = try secret(of: regulatorPage)
        #expect(try await other.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/totp")
        let otherPage = try await other.get("/connexion/totp")
        let planted = try secret(of: otherPage)
        #expect(try secret(of: try await other.get("/connexion/totp")) == planted, "the same flow is shown its own secret again")

        let wrong = try await regulator.request(.POST, "/connexion/totp", form: ["csrf": regulatorPage.csrf ?? "", "code": code(scanned)])
        #expect(wrong.status == 401 && wrong.body.contains("a remplacé la clé affichée"), "the scanned secret was replaced by the other sign-in")
        let fresh = try secret(of: wrong)
        #expect(fresh != planted && fresh != scanned, "a new secret of the regulator's own, never the other's")
        let codes = try await regulator.request(.POST, "/connexion/totp", form: ["csrf": wrong.csrf ?? "", "code": code(fresh)])
        #expect(codes.status == 200 && codes.body.contains("codes-secours"), "\(codes.status)")
        let late = try await other.request(.POST, "/connexion/totp", form: ["csrf": otherPage.csrf ?? "", "code": code(planted)])
        #expect(late.status == 303 && late.location == "/connexion/second-facteur", "enrolled meanwhile: the other flow is sent to the code step")
        #expect(!late.body.contains("cle-secrete"))
        // The other sign-in's secret opens nothing; the regulator's does.
        let refused = try await other.submit("/connexion/second-facteur", ["code": code(planted)])
        #expect(refused.status == 401, "\(refused.status)")
        await regulator.shutdown()
        await other.shutdown()
        await world.stop()
    }

    /// « Activer » clicked twice: the browser shows the second answer, never the first, which
    /// held the only copy of the recovery codes. The second answer carries a new set (the
    /// first is void) and says so; once « J’ai noté mes codes » is sent, the same post only
    /// moves the sign-in on. The codes shown work; the voided ones do not.
    @Test func anEnrolmentSentTwiceStillShowsUsableRecoveryCodes() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        #expect(try await browser.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/totp")
        let enrol = try await browser.get("/connexion/totp")
        let text = try #require(enrol.capture(#"id="cle-secrete">([A-Z2-7 ]+)<"#))
        let secret = try #require(Base32.decode(text))
        let totp = TOTP()
        let form = ["csrf": enrol.csrf ?? "", "code": totp.code(secret: secret, step: totp.step(at: Date()))]
        func codes(of page: Browser.Page) -> [String] { page.body.matches(of: /<li><code>([^<]+)<\/code><\/li>/).map { String($0.1) } }
        let first = try await browser.request(.POST, "/connexion/totp", form: form)
        let second = try await browser.request(.POST, "/connexion/totp", form: form)
        #expect(first.status == 200 && !first.body.contains("codes-remplaces"))
        #expect(second.status == 200 && second.body.contains("id=\"codes-remplaces\""), "\(second.status) \(second.location ?? "")")
        let shown = codes(of: second)
        #expect(shown.count == 10 && Set(shown).isDisjoint(with: codes(of: first)))
        let next = try await browser.request(.POST, "/connexion/suite", form: ["csrf": second.csrf ?? ""])
        #expect(next.status == 303 && next.location == "/connexion/cgu", "\(next.status) \(next.location ?? "")")
        let late = try await browser.request(.POST, "/connexion/totp", form: form)
        #expect(late.status == 303 && late.location == "/connexion/cgu" && !late.body.contains("codes-secours"), "acknowledged: no codes again")
        let reissued = try await world.server.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit_event WHERE action = 'recovery-codes-reissued'")
        }
        #expect(reissued == 1)
        // A voided code opens nothing; one shown does.
        let fresh = try world.browser()
        #expect(try await fresh.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")
        #expect(try await fresh.submit("/connexion/second-facteur", ["code": try #require(codes(of: first).first)]).status == 401)
        let (location, _, _) = try await Self.signIn(fresh, secret: secret, code: try #require(shown.first))
        #expect(location != nil)
        await browser.shutdown()
        await fresh.shutdown()
        await world.stop()
    }

    /// The code step's form sent twice (a double click the pages' script did not stop: the
    /// browser dropped the first answer, which opened the session, then sent the form again
    /// with its cookie): the second post goes where the first sent the browser, not to
    /// « connexion expirée ».
    @Test func aCodeSentAgainByASignedInBrowserGoesWhereTheSignInWent() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let (_, secret, _) = try await Self.signIn(browser)
        let agenda = Self.agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        #expect(try await browser.get("/connexion?origin=sas&retour=\(agenda)").location == "/connexion", "a direct session signs in again for a SAS one")
        #expect(try await browser.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")
        let page = try await browser.get("/connexion/second-facteur")
        let totp = TOTP()
        let form = ["csrf": page.csrf ?? "", "code": totp.code(secret: try #require(secret), step: totp.step(at: Date()) + 1)]
        let first = try await browser.request(.POST, "/connexion/second-facteur", form: form)
        #expect(first.status == 303 && first.location == Self.agenda, "\(first.status) \(first.location ?? "")")
        let again = try await browser.request(.POST, "/connexion/second-facteur", form: form)
        #expect(again.status == 303 && again.location == Self.agenda, "\(again.status) \(again.location ?? "")")
        #expect(try await browser.get("/compte").body.contains("data-habilitation=\"oui\""), "the session the first post opened is the one kept")
        // A browser without that session is told the sign-in is over.
        let other = try world.browser()
        let stale = try await other.request(.POST, "/connexion/second-facteur", form: form)
        #expect(stale.location == "/connexion?fin=expiree" || stale.status == 403, "\(stale.status) \(stale.location ?? "")")
        await browser.shutdown()
        await other.shutdown()
        await world.stop()
    }

    /// An account the SAS deactivated opens no session (both factors checked, the same answers
    /// before them as any account's), as through Pro Santé Connect, and gets no reset link;
    /// the SAS's reactivation makes both work again. A session opened before the withdrawal
    /// keeps being refused the habilitation, on every request.
    @Test func aWithdrawnAccountOpensNoSession() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let (_, secret, recoveryCodes) = try await Self.signIn(browser)
        try await world.setActive(false)
        #expect(try await browser.get("/compte").body.contains("data-habilitation=\"non\""))

        let later = try world.browser()
        _ = try await later.get("/connexion?origin=sas")
        let sessionsBefore = try await world.server.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session") ?? 0 }
        let password = try await later.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(password.location == "/connexion/second-facteur", "the password step answers as for any account")
        let totp = TOTP()
        let refused = try await later.submit("/connexion/second-facteur", ["code": totp.code(secret: try #require(secret), step: totp.step(at: Date()) + 1)])
        #expect(refused.status == 403 && refused.body.contains("Habilitation retirée") && refused.body.contains("aucune session"), "\(refused.status)")
        #expect(later.cookies["__Host-as-session"] == nil && later.cookies["__Host-as-flow"] == nil)
        let sessionsAfter = try await world.server.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session") ?? 0 }
        #expect(sessionsAfter == sessionsBefore, "no session opened")
        let events = try await world.server.database.read { db in
            try String.fetchAll(db, sql: "SELECT outcome FROM audit_event WHERE action IN ('sign-in', 'password-reset-requested') ORDER BY seq")
        }
        #expect(events.last == "refused deactivated-by-sas", "\(events)")

        // No reset link either: the same answer, no mail. The request is handled after the
        // answer; its audit event and any mail's outbox row commit together, so once the event
        // is there, no mail can follow.
        let mailsBefore = try world.smtp.messages().count
        let (outboxBefore, resetsBefore) = try await Self.outboxAndResetRequests(world)
        let reset = try await later.submit("/mot-de-passe-oublie", ["email": Self.email])
        #expect(reset.status == 200 && reset.body.contains("Si un compte correspond"))
        #expect(try await eventually { try await Self.outboxAndResetRequests(world).resets > resetsBefore }, "the request was handled")
        #expect(try await Self.outboxAndResetRequests(world).outbox == outboxBefore, "no mail queued for a deactivated account")
        #expect(try world.smtp.messages().count == mailsBefore, "no mail for a deactivated account")
        let resetEvent = try await world.server.database.read { db in
            try String.fetchOne(db, sql: "SELECT outcome FROM audit_event WHERE action = 'password-reset-requested' ORDER BY seq DESC LIMIT 1")
        }
        #expect(resetEvent == "not-mailed inactive", "\(resetEvent ?? "-")")

        // Reactivated: the sign-in opens a habilitated SAS session again.
        try await world.setActive(true)
        _ = try await later.get("/connexion?origin=sas")
        let (location, _, _) = try await Self.signIn(later, secret: secret, code: try #require(recoveryCodes.first))
        #expect(location == "https://localhost/compte", "\(location ?? "-")")
        #expect(try await later.get("/compte").body.contains("data-habilitation=\"oui\""))

        // A reset link mailed now, then the account suspended by a vendor admin: the
        // suspension voids the link.
        let mailsBeforeLink = try world.smtp.messages().count
        _ = try await later.submit("/mot-de-passe-oublie", ["email": Self.email])
        let liveToken = try #require(try await world.smtp.resetToken(number: mailsBeforeLink + 1), "a reset link for the active account")
        #expect(try await later.get("/reinitialisation?jeton=\(liveToken)").status == 200, "the link works before the suspension")
        let admin = AdminClient(server: world.server, token: world.server.adminToken)
        let suspension = try await admin.send(.POST, "/api/accounts/810002673899/suspend", body: #"{"reason":"test"}"#)
        #expect(suspension.status == 200 && suspension.body.contains(#""reset_links":1"#), "\(suspension.body)")
        #expect(try await later.get("/reinitialisation?jeton=\(liveToken)").status == 410, "the suspension voided the link")
        // And no new link while it lasts: the same answer, no mail, audited.
        let (outboxSuspended, resetsSuspended) = try await Self.outboxAndResetRequests(world)
        let whileSuspended = try await later.submit("/mot-de-passe-oublie", ["email": Self.email])
        #expect(whileSuspended.status == 200 && whileSuspended.body.contains("Si un compte correspond"))
        #expect(try await eventually { try await Self.outboxAndResetRequests(world).resets > resetsSuspended }, "the request was handled")
        #expect(try await Self.outboxAndResetRequests(world).outbox == outboxSuspended, "no mail queued for a suspended account")
        let suspendedResetEvent = try await world.server.database.read { db in
            try String.fetchOne(db, sql: "SELECT outcome FROM audit_event WHERE action = 'password-reset-requested' ORDER BY seq DESC LIMIT 1")
        }
        #expect(suspendedResetEvent == "not-mailed suspended", "\(suspendedResetEvent ?? "-")")

        // Suspended: the same sign-in refusal, « suspendue ».
        let third = try world.browser()
        _ = try await third.submit("/connexion", ["email": Self.email, "password": Self.password])
        let suspended = try await third.submit("/connexion/second-facteur", ["code": recoveryCodes[1]])
        #expect(suspended.status == 403 && suspended.body.contains("Habilitation suspendue") && third.cookies["__Host-as-session"] == nil, "\(suspended.status)")
        let lastEvent = try await world.server.database.read { db in
            try String.fetchOne(db, sql: "SELECT outcome FROM audit_event WHERE action = 'sign-in' ORDER BY seq DESC LIMIT 1")
        }
        #expect(lastEvent == "refused suspended-by-vendor", "\(lastEvent ?? "-")")
        await admin.shutdown()
        await third.shutdown()
        await later.shutdown()
        await browser.shutdown()
        await world.stop()
    }

    /// A form token seen before sign-in is worth nothing after it: forms are bound to the
    /// session once there is one (and to the csrf cookie again after sign-out).
    @Test func aFormTokenFromBeforeSignInIsRefusedAfterIt() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let before = try #require(try await browser.get("/connexion").csrf)
        let cookieBefore = browser.cookies["__Host-as-csrf"]
        _ = try await Self.signIn(browser)
        #expect(browser.cookies["__Host-as-csrf"] != nil && browser.cookies["__Host-as-csrf"] != cookieBefore, "a new form secret at sign-in")
        let stale = try await browser.request(.POST, "/deconnexion", form: ["csrf": before])
        #expect(stale.status == 403, "a pre-sign-in token")
        #expect(try await browser.get("/compte").status == 200, "still signed in")
        let current = try #require(try await browser.get("/compte").csrf)
        #expect(current != before)
        let out = try await browser.request(.POST, "/deconnexion", form: ["csrf": current])
        #expect(out.location == "/connexion?fin=deconnexion")
        #expect(try await browser.get("/connexion?fin=deconnexion").body.contains("Vous êtes déconnecté(e) de l’espace régulateur."), "the sign-out is said")
        let afterOut = try await browser.request(.POST, "/deconnexion", form: ["csrf": current])
        #expect(afterOut.status == 403, "the session's token dies with it")
        _ = try await browser.get("/connexion")
        let beforeAgain = try await browser.request(.POST, "/connexion", form: ["csrf": before, "email": Self.email, "password": "x"])
        #expect(beforeAgain.status == 403, "nor is the token of before the sign-in good again after the sign-out")
        await browser.shutdown()
        await world.stop()
    }

    /// A form holding U+0000 (`%00`) is bad input: a French 400 page, on both stores, and
    /// nothing written. Before, SQLite kept what came before the NUL (this e-mail signed in
    /// as `jules.marius@test.com`) while PostgreSQL answered 500: two answers, neither right.
    @Test func aFormHoldingNULIsRefusedAndChangesNothing() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let eventsBefore = try await world.server.auditEvents().count
        let nul = "\u{0}"
        for (page, fields) in [("/connexion", ["email": Self.email + nul + "x", "password": Self.password]),
                               ("/connexion", ["email": Self.email, "password": Self.password, "note" + nul: ""]),
                               ("/mot-de-passe-oublie", ["email": Self.email + nul])] {
            let answer = try await browser.submit(page, fields)
            #expect(answer.status == 400 && answer.location == nil, "\(page): \(answer.status) \(answer.location ?? "")")
            #expect(answer.body.contains("Requête invalide") && answer.body.contains("caractère non autorisé"), "\(answer.body)")
        }
        #expect(try await world.server.auditEvents().count == eventsBefore, "nothing audited")
        let rows = try await world.server.database.read { db in
            [try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow") ?? -1, try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account") ?? -1]
        }
        #expect(rows == [0, 0], "no flow, no failure counted: \(rows)")
        // The address itself: a NUL in the query is refused the same way.
        let query = try await browser.get("/connexion?origin=sas&retour=%2Fcompte%00")
        #expect(query.status == 400 && query.body.contains("caractère non autorisé"))
        // The regulator's own sign-in is untouched.
        let afterPassword = try await browser.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(afterPassword.status == 303 && afterPassword.location == "/connexion/totp", "\(afterPassword.status) \(afterPassword.location ?? "")")
        await browser.shutdown()
        await world.stop()
    }

    /// Rows of the mail outbox (sent or not) and `password-reset-requested` audit events.
    static func outboxAndResetRequests(_ world: World) async throws -> (outbox: Int, resets: Int) {
        try await world.server.database.read { db in
            (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM mail_outbox") ?? -1,
             try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit_event WHERE action = 'password-reset-requested'") ?? -1)
        }
    }

    @Test func resetAnswersDoNotRevealAccounts() async throws {
        let world = try await World()
        let browser = try world.browser()
        let known = try await browser.submit("/mot-de-passe-oublie", ["email": Self.email])
        let unknown = try await browser.submit("/mot-de-passe-oublie", ["email": "nobody@test.com"])
        #expect(known.status == unknown.status && known.body == unknown.body)
        _ = try #require(await world.smtp.resetToken(number: 1), "the known address's mail arrives")
        // Both requests handled (each one's audit event commits with its outbox row, if any):
        // one mail queued, and the sink received it.
        #expect(try await eventually { try await Self.outboxAndResetRequests(world).resets == 2 })
        #expect(try await Self.outboxAndResetRequests(world).outbox == 1, "no mail queued for an unknown address")
        let messages = try world.smtp.messages()
        #expect(messages.count == 1, "no mail for an unknown address")
        #expect(messages.first?.contains("To: \(Self.email)") == true)
        await browser.shutdown()
        await world.stop()
    }

    @Test func signOutAndPasswordResetEndSessions() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let (_, secret, _) = try await Self.signIn(browser)
        #expect(try await browser.get("/compte").status == 200)
        let out = try await browser.submit("/compte", to: "/deconnexion", [:])
        #expect(out.location == "/connexion?fin=deconnexion")
        #expect(try await browser.get("/compte").location == "/connexion")

        // A live session in another browser ends when the password is reset.
        let other = try world.browser()
        let afterPassword = try await other.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(afterPassword.location == "/connexion/second-facteur")
        let totp = TOTP()
        let afterCode = try await other.submit("/connexion/second-facteur", ["code": totp.code(secret: try #require(secret), step: totp.step(at: Date()) + 1)])
        #expect(afterCode.status == 303)
        #expect(try await other.get("/compte").status == 200)
        try await Self.choosePassword(browser, world: world, mailNumber: 2)
        #expect(try await other.get("/compte").location == "/connexion", "resetting the password revokes every session")
        await browser.shutdown()
        await other.shutdown()
        await world.stop()
    }

    /// A sign-in step names whose sign-in it is, with « Ce n’est pas vous ? », which ends the
    /// flow for good; a sign-out ends the browser's flow under way too (a shared workstation:
    /// the next person must not finish the last one's sign-in), and clears its cookies.
    @Test func aSignInUnderWayEndsWithItsWayOutAndWithTheSignOut() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        let (_, secret, _) = try await Self.signIn(browser)
        #expect(try await browser.get("/compte").status == 200)

        // A new sign-in stopped at its code, then a sign-out from the account page.
        let afterPassword = try await browser.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(afterPassword.location == "/connexion/second-facteur")
        let flow = try #require(browser.cookies["__Host-as-flow"])
        let step = try await browser.get("/connexion/second-facteur")
        #expect(step.capture(#"id="qui-nom">([^<]+)<"#) == "Jules MARIUS" && step.body.contains("Ce n’est pas vous\u{202F}?"), "\(step.body)")
        let out = try await browser.submit("/compte", to: "/deconnexion", [:])
        #expect(out.location == "/connexion?fin=deconnexion")
        for name in ["__Host-as-session", "__Host-as-flow", "__Host-as-intent"] {
            #expect(out.headers[canonicalForm: "Set-Cookie"].contains { $0.hasPrefix("\(name)=;") && $0.contains("Max-Age=0") }, "\(name) cleared")
        }
        let next = try world.browser()
        next.cookies["__Host-as-flow"] = flow
        let totp = TOTP()
        let formToken = try #require(try await next.get("/connexion").csrf)
        let resumed = try await next.request(.POST, "/connexion/second-facteur",
                                             form: ["csrf": formToken, "code": totp.code(secret: try #require(secret), step: totp.step(at: Date()) + 1)])
        #expect(resumed.location == "/connexion?fin=expiree", "the signed-out browser's flow cannot be finished: \(resumed.status) \(resumed.location ?? "-")")

        // « Ce n’est pas vous ? » on the code step: the flow ends, back to the sign-in page.
        #expect(try await next.submit("/connexion", ["email": Self.email, "password": Self.password]).location == "/connexion/second-facteur")
        let other = try #require(next.cookies["__Host-as-flow"])
        let restarted = try await next.submit("/connexion/second-facteur", to: "/connexion/abandon", [:])
        #expect(restarted.status == 303 && restarted.location == "/connexion")
        let third = try world.browser()
        third.cookies = ["__Host-as-flow": other]
        #expect(try await third.get("/connexion/second-facteur").location == "/connexion?fin=expiree")
        let events = try await world.server.auditEvents().filter { $0.action == "sign-in-abandoned" }
        #expect(events.map(\.outcome) == ["sign-out", "restarted"], "\(events.map(\.outcome))")
        // A code the failed attempt to resume did not count.
        let failures = try await world.server.database.read { db in try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account") ?? -1 }
        #expect(failures == 0)
        for client in [browser, next, third] { await client.shutdown() }
        await world.stop()
    }

    /// A sign-in page shown from a SAS link whose intent runs out before the form is sent
    /// (the cookie's Max-Age is the intent's lifetime: the browser drops it) does not quietly
    /// open a session without the habilitation: it says the SAS link expired, before the
    /// password is looked at.
    @Test func aSASSignInWhoseLinkExpiredSaysSoInsteadOfSigningInWithout() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        #expect(try await browser.get("/connexion?origin=sas").location == "/connexion")
        let page = try await browser.get("/connexion")
        #expect(page.body.contains("name=\"sas\" value=\"1\"") && page.body.contains("id=\"origine-sas\""))
        browser.cookies["__Host-as-intent"] = nil
        let late = try await browser.request(.POST, "/connexion", form: ["csrf": page.csrf ?? "", "sas": "1", "email": Self.email, "password": Self.password])
        #expect(late.status == 400 && late.body.contains("Le lien de la plateforme SAS a expiré"), "\(late.status)")
        #expect(!late.body.contains("name=\"sas\""), "the page shown now is a direct sign-in")
        #expect(browser.cookies["__Host-as-flow"] == nil)
        let events = try await world.server.auditEvents()
        #expect(!events.contains { $0.action == "sign-in" }, "the password was not looked at")
        // The same form without the SAS promise signs in (directly).
        let direct = try await browser.submit("/connexion", ["email": Self.email, "password": Self.password])
        #expect(direct.status == 303 && direct.location == "/connexion/totp")
        await browser.shutdown()
        await world.stop()
    }

    @Test func signInAndResetAreRateLimitedPerClient() async throws {
        let clock = ManualClock()
        let world = try await World { $0.rateLimitPerMinute = 3; $0.rateLimitClock = clock.monotonic }
        let browser = try world.browser()
        // 3 at once, then none while the clock stands still.
        var pages: [Browser.Page] = []
        for _ in 0..<6 {
            pages.append(try await browser.submit("/connexion", ["email": "nobody@test.com", "password": "x"]))
        }
        #expect(pages.map(\.status) == [401, 401, 401, 429, 429, 429], "\(pages.map(\.status))")
        #expect(pages.filter { $0.status == 429 }.allSatisfy { $0.body.contains("Trop de tentatives") })
        // Then one every 20 s (3 a minute): not 1 s before, once at 20 s, not twice.
        clock.advance(by: .seconds(19))
        #expect(try await browser.submit("/connexion", ["email": "nobody@test.com", "password": "x"]).status == 429, "19 s")
        clock.advance(by: .seconds(1))
        let refilled = [try await browser.submit("/connexion", ["email": "nobody@test.com", "password": "x"]).status,
                        try await browser.submit("/connexion", ["email": "nobody@test.com", "password": "x"]).status]
        #expect(refilled == [401, 429], "20 s: \(refilled)")
        // Reset requests have a budget of their own, the same size.
        var resets: [Int] = []
        for _ in 0..<4 { resets.append(try await browser.submit("/mot-de-passe-oublie", ["email": "nobody@test.com"]).status) }
        #expect(resets == [200, 200, 200, 429], "\(resets)")
        clock.advance(by: .seconds(60))
        resets = []
        for _ in 0..<4 { resets.append(try await browser.submit("/mot-de-passe-oublie", ["email": "nobody@test.com"]).status) }
        #expect(resets == [200, 200, 200, 429], "a minute later, whole again (and no fuller): \(resets)")
        await browser.shutdown()
        await world.stop()
    }

    /// Password checks from many addresses are not bounded by the per-client limit: beyond
    /// `--argon2-queue` hashes waiting or running, a sign-in is answered 503 (French page,
    /// Retry-After) at once instead of queueing behind the flood.
    @Test func passwordChecksBeyondTheHashQueueAreAnswered503() async throws {
        let world = try await World {
            // About a second a check here, so that the requests sent at once overlap even on
            // a machine busy with the rest of the suite.
            $0.argon2 = Argon2Parameters(memoryKiB: 65_536, iterations: 12, parallelism: 1)
            $0.argon2Threads = 1
            $0.argon2QueueLimit = 1
            $0.rateLimitPerMinute = 1_000
        }
        var forms: [(Browser, String)] = []
        for _ in 0..<10 {
            let browser = try world.browser()
            forms.append((browser, try await browser.get("/connexion").csrf ?? ""))
        }
        let pages = try await withThrowingTaskGroup(of: Browser.Page.self) { group in
            for (browser, csrf) in forms {
                group.addTask {
                    try await browser.request(.POST, "/connexion", form: ["email": WebSignInTests.email, "password": "pas-le-bon", "csrf": csrf])
                }
            }
            return try await group.reduce(into: [Browser.Page]()) { $0.append($1) }
        }
        let statuses = pages.map(\.status).sorted()
        #expect(statuses.contains(401) && statuses.contains(503) && statuses.allSatisfy { $0 == 401 || $0 == 503 }, "\(statuses)")
        for page in pages where page.status == 503 {
            #expect(page.body.contains("Service très sollicité") && page.headers.first(name: "Retry-After") == "5")
        }
        for (browser, _) in forms { await browser.shutdown() }
        await world.stop()
    }

    /// A burst of concurrent page views on one session (each a live habilitation check) once
    /// hung the whole process; every one must be answered (the limit catches a hang, generous
    /// for a loaded machine).
    @Test(.timeLimit(.minutes(3)))
    func concurrentPageViewsAreAllAnswered() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await Self.choosePassword(browser, world: world)
        _ = try await browser.get("/connexion?origin=sas&retour=\(Self.agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)")
        try await Self.signIn(browser)
        let pages = try await browser.concurrentGets("/compte", count: 32)
        #expect(pages.count == 32 && pages.allSatisfy { $0.status == 200 && $0.body.contains("data-habilitation=\"oui\"") })
        await browser.shutdown()
        await world.stop()
    }

    @Test func pagesAreFrenchAndCookiesAreHardened() async throws {
        let world = try await World()
        let browser = try world.browser()
        let page = try await browser.get("/connexion")
        #expect(page.body.contains("<html lang=\"fr\">") && page.body.contains("Se connecter"))
        let cookie = try #require(page.headers["Set-Cookie"].first { $0.hasPrefix("__Host-as-csrf=") })
        #expect(cookie.contains("Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax") && cookie.contains("Path=/"))
        #expect(page.headers.first(name: "Content-Security-Policy")?.contains("frame-ancestors 'none'") == true)
        let missing = try await browser.get("/nulle-part")
        #expect(missing.status == 404 && missing.body.contains("Page introuvable"))
        #expect(try await browser.get("/compte").location == "/connexion")
        await browser.shutdown()
        await world.stop()
    }
}
