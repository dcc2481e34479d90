@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import HTTPTypes
import NIOCore
import NIOHTTP1
import NIOSSL
import Synchronization
import StorageTesting
import Testing

/// A plain-HTTP client for the admin listener.
struct AdminClient {
    private let owned: OwnedHTTPClient
    var client: HTTPClient { owned.client }
    let base: String
    let token: String?

    init(server: RunningServer, token: String? = nil) {
        owned = OwnedHTTPClient(.init(redirectConfiguration: .disallow))
        base = server.adminURL
        self.token = token ?? server.adminToken
    }

    func send(_ method: HTTPMethod, _ path: String, body: String? = nil, headers extra: [(String, String)] = [],
              authorization: String? = nil) async throws -> (status: Int, headers: HTTPHeaders, body: String) {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        if let authorization { request.headers.add(name: "Authorization", value: authorization) } else if let token {
            request.headers.add(name: "Authorization", value: "Bearer \(token)")
        }
        // A state change is JSON, as the API requires (a test may send its own Content-Type).
        if method == .POST && !extra.contains(where: { $0.0.lowercased() == "content-type" }) && path.hasPrefix("/api/") {
            request.headers.add(name: "Content-Type", value: "application/json")
        }
        for (name, value) in extra { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await client.execute(request, timeout: .seconds(20))
        let bytes = try await response.body.collect(upTo: 8 << 20)
        return (Int(response.status.code), response.headers, String(buffer: bytes))
    }

    func json(_ path: String) async throws -> JSONObject {
        let reply = try await send(.GET, path)
        guard case .object(let object) = try JSONParser().parse(Array(reply.body.utf8)) else { throw CocoaError(.coderReadCorrupt) }
        return object
    }

    func shutdown() async { await owned.shutdown() }
}

/// The forward-auth contract (docs/forward-auth.md) over real HTTPS against the real server:
/// identity headers on 200, 401 with the sign-in URL keeping `origin=sas`, 403 with the
/// reasons; withdrawal by the SAS and by the vendor admin applies on the next request.
@Suite("Forward-auth")
struct ForwardAuthTests {
    typealias World = WebSignInTests.World

    static let agendaPath = "/rdv/42?origin=sas&creneau=9"

    static let forwardedHeaders = [("X-Original-URI", agendaPath), ("X-Forwarded-Host", "agenda.example"), ("X-Forwarded-Proto", "https")]

    /// Asks both forward-auth endpoints (the dedicated listener and the web listener's route)
    /// and checks they answer alike; returns the listener's answer.
    static func ask(_ browser: Browser, server: RunningServer, method: HTTPMethod = .GET,
                    headers: [(String, String)] = forwardedHeaders) async throws -> Browser.Page {
        let listener = try await browser.request(method, server.forwardAuthURL + "/forward-auth", headers: headers, cookiesOf: browser.base)
        let route = try await browser.request(method, "/forward-auth", headers: headers)
        #expect(listener.status == route.status, "both endpoints give the same status")
        for name in ["X-Auth-Account-Id", "X-Auth-National-Id", "X-Auth-SAS-Technical-Id", "X-Auth-Habilitations", "X-Auth-Session-Origin",
                     "X-Auth-Denial", "Location", "Cache-Control"] {
            #expect(listener.headers.first(name: name) == route.headers.first(name: name), "both endpoints agree on \(name)")
        }
        return listener
    }

    /// A browser holding a live SAS session (password chosen, TOTP enrolled, CGU accepted).
    static func sasSession(_ world: World) async throws -> Browser {
        let browser = try world.browser()
        try await WebSignInTests.choosePassword(browser, world: world)
        let entry = try await browser.get("/connexion?origin=sas&retour=\(WebSignInTests.agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!)")
        #expect(entry.status == 303)
        let (location, _, _) = try await WebSignInTests.signIn(browser)
        #expect(location == WebSignInTests.agenda)
        return browser
    }

    @Test func sessionCookieParsing() {
        func parse(_ headers: [String]) -> String? {
            var fields = HTTPFields()
            for header in headers { fields.append(HTTPField(name: .cookie, value: header)) }
            return WebCookie.value(.session, in: fields)
        }
        #expect(parse(["__Host-as-session=abc"]) == "abc")
        #expect(parse(["a=1; __Host-as-session=abc ; b=2"]) == "abc")
        #expect(parse(["a=1", "b=2;__Host-as-session=x-y_z"]) == "x-y_z")
        #expect(parse(["__Host-as-session-other=abc"]) == nil && parse(["x__Host-as-session=abc"]) == nil)
        #expect(parse(["__Host-as-session="]) == nil && parse([""]) == nil && parse([]) == nil)
        #expect(parse(["__Host-as-session=first; __Host-as-session=second"]) == "first")
        // Forward-auth's reading: exactly one copy, across all the Cookie headers.
        func sole(_ headers: [String]) -> String? { WebCookie.soleValue(named: WebCookie.session.rawValue, inHeaders: headers) }
        #expect(sole(["a=1; __Host-as-session=abc ; b=2"]) == "abc" && sole(["a=1", "__Host-as-session=abc"]) == "abc")
        #expect(sole(["__Host-as-session=first; __Host-as-session=second"]) == nil)
        #expect(sole(["__Host-as-session=same", "__Host-as-session=same"]) == nil)
        #expect(sole(["__Host-as-session="]) == nil && sole([]) == nil && sole(["__Host-as-session-other=abc"]) == nil)
        // The shape of a session id: 43 base64url characters (256 bits).
        #expect(SecretToken.isWellFormed(SecretToken.generate()))
        for malformed in ["", "abc", String(repeating: "A", count: 42), String(repeating: "A", count: 44), String(repeating: "A", count: 42) + "=",
                          String(repeating: "A", count: 42) + "/", String(repeating: "é", count: 43), String(repeating: "A", count: 10_000)] {
            #expect(!SecretToken.isWellFormed(malformed), "\(malformed.prefix(50))")
        }
    }

    /// The dedicated listener over a raw socket: pipelined requests answered in order on one
    /// connection, HTTP/1.0 and `Connection: close` closed after their answer, a request the
    /// decoder refuses answered 400 and closed. The web listener's `/forward-auth`, answered
    /// before the router, keeps its place among pipelined requests for the router.
    @Test func theListenerKeepsHTTPSemanticsOnARawSocket() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki) { configuration in
            configuration.web.publicURL = "https://localhost"
            configuration.allowedReturnHosts = ["localhost", "agenda.example"]
        }
        let script = RawHTTP.preamble + """
            port, web, ca = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
            def exchange(data, expected, tls=False, closes=False):
                sock = connect(web, ca) if tls else connect(port)
                sock.sendall(data)
                received, closed = read_answers(sock, expected, closes=closes)
                return {"text": received.decode("utf-8", "replace"), "closed": closed}
            def drains():
                # The same, then 16 MB more (past what the kernels' buffers hold): what the
                # client still sends after the close answer is read and dropped, not left
                # unread with the client blocked.
                sock = connect(web, ca, timeout=20)
                sock.sendall(b"POST /connexion HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Type: application/x-www-form-urlencoded\\r\\nContent-Length: 20000\\r\\n\\r\\n"
                             + b"e" * 20000 + ask("/rdv/10?origin=sas"))
                try:
                    sock.sendall(b"POST /connexion HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Length: 16777216\\r\\n\\r\\n" + b"x" * (16 << 20))
                    sent = True
                except Exception as error:
                    sent = repr(error)
                received, closed = read_answers(sock, 2, closes=True)
                return {"text": received.decode("utf-8", "replace"), "closed": closed, "sent": sent}
            ask = lambda uri, extra="", method="GET": (method + " /forward-auth HTTP/1.1\\r\\nHost: fa\\r\\nX-Original-URI: " + uri + "\\r\\nX-Forwarded-Host: agenda.example\\r\\n" + extra + "\\r\\n").encode()
            print(json.dumps([
                exchange(ask("/rdv/1?origin=sas") + ask("/rdv/2?origin=sas", method="HEAD") + ask("/rdv/3?origin=sas"), 3),
                exchange(b"GET /forward-auth HTTP/1.0\\r\\nHost: fa\\r\\n\\r\\n", 1, closes=True),
                exchange(ask("/rdv/4?origin=sas", "Connection: close\\r\\n") + ask("/rdv/5?origin=sas"), 1, closes=True),
                exchange(b"GET /forward-auth HTTP/1.1\\r\\nHost fa\\r\\n\\r\\n", 1, closes=True),
                exchange(ask("/rdv/6?origin=sas") + b"GET /healthz HTTP/1.1\\r\\nHost: fa\\r\\n\\r\\n" + ask("/rdv/7?origin=sas", method="HEAD"), 3, tls=True),
                # Without X-Forwarded-Host, the return URL's host is Host's: once on both
                # listeners; sent twice, on neither (the web listener used to take the first).
                *[exchange(("GET /forward-auth HTTP/1.1\\r\\n" + hosts + "X-Original-URI: /rdv/8?origin=sas\\r\\nConnection: close\\r\\n\\r\\n").encode(), 1, tls=tls, closes=True)
                  for tls in (False, True) for hosts in ("Host: agenda.example\\r\\n", "Host: agenda.example\\r\\nHost: other.example\\r\\n")],
                # A form past the web listener's limit, whole, then /forward-auth pipelined:
                # the router's 413 says Connection: close, so nothing after it is answered.
                exchange(b"POST /connexion HTTP/1.1\\r\\nHost: localhost\\r\\nContent-Type: application/x-www-form-urlencoded\\r\\nContent-Length: 20000\\r\\n\\r\\n"
                         + b"e" * 20000 + ask("/rdv/9?origin=sas"), 2, tls=True, closes=True),
                drains(),
            ]))
            """
        let output = try await spawnAndWait("/usr/bin/python3", ["-c", script, RawHTTP.folder, String(server.forwardAuthPort), String(server.webPort), pki.caPath]).output
        let results = try #require(try JSONSerialization.jsonObject(with: output) as? [[String: Any]], "\(String(decoding: output, as: UTF8.self))")
        let texts = results.map { $0["text"] as? String ?? "" }
        let closed = results.map { $0["closed"] as? Bool ?? false }
        #expect(texts.count == 11)
        let pipelined = texts[0].components(separatedBy: "HTTP/1.1 401 Unauthorized").count - 1
        #expect(pipelined == 3, "three answers on one connection: \(texts[0].prefix(300))")
        // GET, HEAD, GET: only the middle answer has no body.
        let answers = texts[0].components(separatedBy: "HTTP/1.1 401 Unauthorized").dropFirst()
        #expect(answers.map { $0.contains("Content-Length: 0\r\n") } == [false, true, false], "answered in order: \(texts[0].prefix(600))")
        #expect(!closed[0] && texts[0].contains("Connection: keep-alive"))
        #expect(texts[1].hasPrefix("HTTP/1.0 401") && texts[1].contains("Connection: close") && closed[1], "HTTP/1.0: \(texts[1].prefix(200))")
        #expect(texts[2].components(separatedBy: "HTTP/1.1 401").count - 1 == 1 && closed[2],
                "nothing after Connection: close: \(texts[2].prefix(300))")
        #expect(texts[3].hasPrefix("HTTP/1.1 400 Bad Request") && closed[3], "\(texts[3].prefix(200))")
        // The web listener's /forward-auth, pipelined with a request for the router between.
        let statuses = texts[4].components(separatedBy: "HTTP/1.1 ").dropFirst().map { String($0.prefix(3)) }
        #expect(statuses == ["401", "200", "401"], "in order: \(texts[4].prefix(800))")
        #expect(texts[4].contains("\"alive\"") && !closed[4], "\(texts[4]) closed: \(closed[4])")
        func location(_ text: String) -> String? {
            text.split(separator: "\r\n").first { $0.lowercased().hasPrefix("location: ") }.map { String($0.dropFirst("location: ".count)) }
        }
        let withReturn = "https://localhost/connexion?retour=https%3A%2F%2Fagenda.example%2Frdv%2F8%3Forigin%3Dsas"
        #expect(location(texts[5]) == withReturn && location(texts[7]) == withReturn, "one Host: \(texts[5].prefix(300)) \(texts[7].prefix(300))")
        #expect(location(texts[6]) == "https://localhost/connexion" && location(texts[8]) == "https://localhost/connexion",
                "two Host: \(texts[6].prefix(300)) \(texts[8].prefix(300))")
        #expect(texts[9].hasPrefix("HTTP/1.1 413") && texts[9].components(separatedBy: "HTTP/1.1 ").count - 1 == 1 && closed[9],
                "one answer, then the end: \(texts[9].prefix(600)) closed: \(closed[9])")
        #expect(results[10]["sent"] as? Bool == true, "what follows the close answer is read: \(results[10]["sent"] ?? "-")")
        #expect(texts[10].hasPrefix("HTTP/1.1 413") && texts[10].components(separatedBy: "HTTP/1.1 ").count - 1 == 1, "\(texts[10].prefix(300))")
        // Nor was it decided: the web listener's forward-auth answers are the four above.
        let metrics = try await AdminClient(server: server, token: "").send(.GET, "/metrics", authorization: "").body
        let series = #"account_server_http_requests_total{surface="web",status="401"} "#
        let line = metrics.split(separator: "\n").first { $0.hasPrefix(series) }.map { String($0.dropFirst(series.count)) }
        #expect(line.flatMap(Double.init) == 4, "web 401 answers: \(line ?? "none")")
        await server.stop()
    }

    @Test func withoutSessionTheAnswerIs401WithTheSignInURLKeepingTheOrigin() async throws {
        let world = try await World()
        let browser = try world.browser()
        let answer = try await Self.ask(browser, server: world.server)
        #expect(answer.status == 401)
        let location = try #require(answer.location)
        #expect(location == "https://localhost/connexion?retour=https%3A%2F%2Fagenda.example%2Frdv%2F42%3Forigin%3Dsas%26creneau%3D9")
        #expect(answer.headers.first(name: "X-Auth-Account-Id") == nil && answer.headers.first(name: "Cache-Control") == "no-store")
        #expect(answer.body.contains("Se connecter"))

        // Following it creates a SAS login intent for the agenda URL.
        let entry = try await browser.get(String(location.dropFirst("https://localhost".count)))
        #expect(entry.status == 303 && entry.location == "/connexion")
        #expect(try await browser.get("/connexion").body.contains("id=\"origine-sas\""))

        // An original URL on a host that is not allowed is not echoed (no open redirect).
        let foreign = try await Self.ask(browser, server: world.server, headers: [("X-Original-URL", "https://evil.example/x?origin=sas")])
        #expect(foreign.status == 401 && foreign.location == "https://localhost/connexion")
        // A forged or unknown cookie is no session.
        let forged = try await Self.ask(browser, server: world.server, headers: [("Cookie", "__Host-as-session=\(SecretToken.generate())")])
        #expect(forged.status == 401)
        await browser.shutdown()
        await world.stop()
    }

    @Test func sasSessionIsGrantedWithIdentityHeadersAndEveryWithdrawalAppliesOnTheNextRequest() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        let browser = try await Self.sasSession(world)

        let granted = try await Self.ask(browser, server: world.server)
        #expect(granted.status == 200)
        let accountID = try #require(granted.headers.first(name: "X-Auth-Account-Id"))
        #expect(granted.headers.first(name: "X-Auth-National-Id") == "810002673899")
        #expect(granted.headers.first(name: "X-Auth-SAS-Technical-Id") == nil)
        #expect(granted.headers.first(name: "X-Auth-Habilitations") == "regulateur")
        #expect(granted.headers.first(name: "X-Auth-Session-Origin") == "sas")
        // Any method: Traefik forwards the original one.
        #expect(try await Self.ask(browser, server: world.server, method: .POST).status == 200)
        #expect(try await Self.ask(browser, server: world.server, method: .HEAD).status == 200)
        // The session cookie twice (a copy added by hand beside the browser's, which the
        // proxy's cookie filter would pass on to the agenda): no session on either endpoint.
        let doubled = try await Self.ask(browser, server: world.server, headers: Self.forwardedHeaders + [("Cookie", "__Host-as-session=\(SecretToken.generate())")])
        #expect(doubled.status == 401 && doubled.headers.first(name: "X-Auth-Account-Id") == nil)
        #expect(try await Self.ask(browser, server: world.server).status == 200, "the browser's own cookie alone still works")

        // The SAS withdraws (active:false over mTLS): refused on the very next request.
        try await world.setActive(false)
        let deactivated = try await Self.ask(browser, server: world.server)
        #expect(deactivated.status == 403 && deactivated.headers.first(name: "X-Auth-Denial") == "deactivated-by-sas")
        let refusalPage = try await browser.get("/acces-refuse")
        #expect(refusalPage.status == 403 && refusalPage.body.contains("La plateforme SAS a retiré votre habilitation"))
        try await world.setActive(true)
        #expect(try await Self.ask(browser, server: world.server).status == 200, "the same session is served again after reactivation")

        // The vendor admin suspends: refused; the SAS's active:true does not lift it.
        let suspended = try await admin.send(.POST, "/api/accounts/810002673899/suspend", body: #"{"reason":"départ du service"}"#)
        #expect(suspended.status == 200 && suspended.body.contains(#""changed":true"#) && suspended.body.contains(#""sessions":1"#))
        let refused = try await Self.ask(browser, server: world.server)
        #expect(refused.status == 403 && refused.headers.first(name: "X-Auth-Denial") == "suspended-by-vendor")
        try await world.setActive(true)
        #expect(try await Self.ask(browser, server: world.server).status == 403, "a SAS active:true does not lift a vendor suspension")
        let restored = try await admin.send(.POST, "/api/accounts/\(accountID)/restore")
        #expect(restored.status == 200 && restored.body.contains(#""changed":true"#))
        #expect(try await Self.ask(browser, server: world.server).status == 200)

        // Revoking the sessions ends it: back to 401 (sign in again).
        #expect(try await admin.send(.POST, "/api/accounts/\(accountID)/revoke-sessions").body.contains(#""sessions":1"#))
        #expect(try await Self.ask(browser, server: world.server).status == 401)

        let actions = try await world.server.auditEvents().filter { $0.accountId == accountID }.map(\.action)
        for expected in ["habilitation-granted", "habilitation-withdrawn", "habilitation-restored", "sessions-revoked", "cgu-accepted",
                         "password-reset-requested", "password-reset-completed", "sign-in"] {
            #expect(actions.contains(expected), "audit has \(expected)")
        }
        let withdrawals = try await world.server.auditEvents().filter { $0.action == "habilitation-withdrawn" }
        #expect(withdrawals.contains { $0.surface == "int_r02" && $0.actorSubject?.contains(TestPKI.allowedCN) == true && $0.actorAddress == "127.0.0.1" })
        #expect(withdrawals.contains { $0.surface == "admin" && $0.actorSubject == "admin-api" && $0.actorAddress == "127.0.0.1"
            && $0.detail?.contains("départ du service") == true })
        await admin.shutdown()
        await browser.shutdown()
        await world.stop()
    }

    /// The metrics say what answered each session lookup: on SQLite the memo (nothing
    /// committed since the loop last read) or a read, one statement each; on PostgreSQL
    /// always a read, several per statement when batched. Every lookup is counted once.
    @Test func theMetricsSayWhatAnsweredEachSessionLookup() async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server, token: "")
        let browser = try await Self.sasSession(world)
        func counts() async throws -> (memo: Int, database: Int, statements: Int) {
            let text = try await admin.send(.GET, "/metrics", authorization: "").body
            func value(_ series: String) throws -> Int {
                let line = try #require(text.split(separator: "\n").first { $0.hasPrefix(series + " ") }, "metrics have \(series)")
                return try #require(Double(line.dropFirst(series.count + 1)).map { Int($0) })
            }
            return (try value(#"account_server_forward_auth_session_lookups_total{answered_by="memo"}"#),
                    try value(#"account_server_forward_auth_session_lookups_total{answered_by="database"}"#),
                    try value("account_server_forward_auth_database_statements_total"))
        }
        let before = try await counts()
        // Each ask is two lookups (the listener, the web route), on whichever loops serve them;
        // a commit meanwhile (the session's first activity update) sends the next to the database.
        var asked = 0
        var now = before
        repeat {
            #expect(try await Self.ask(browser, server: world.server).status == 200)
            asked += 2
            now = try await counts()
        } while TestStore.kind == .sqlite && now.memo == before.memo && asked < 40
        #expect(now.memo + now.database - before.memo - before.database == asked, "every lookup counted once: \(before) → \(now) for \(asked)")
        #expect(now.database > before.database, "the first lookup reads")
        if TestStore.kind == .sqlite {
            #expect(now.memo > before.memo, "no lookup was answered from the memo in \(asked)")
            #expect(now.statements - before.statements == now.database - before.database, "one statement per read")
        } else {
            #expect(now.memo == before.memo, "PostgreSQL has no memo")
            let statements = now.statements - before.statements
            #expect(statements >= 1 && statements <= now.database - before.database)
        }
        // A second scrape with nothing asked in between changes nothing.
        let again = try await counts()
        #expect(again.memo == now.memo && again.database == now.database && again.statements == now.statements)
        // A cookie that does not have a session id's shape costs no lookup at all (a flood of
        // junk cookies sends no statement); one that has it is looked up.
        let stranger = try world.browser()
        for junk in ["x", String(repeating: "A", count: 42), String(repeating: "A", count: 44), String(repeating: "A", count: 42) + "+",
                     String(repeating: "é", count: 43)] {
            let refused = try await Self.ask(stranger, server: world.server, headers: Self.forwardedHeaders + [("Cookie", "__Host-as-session=\(junk)")])
            #expect(refused.status == 401, "\(junk)")
        }
        let afterJunk = try await counts()
        #expect(afterJunk.memo == again.memo && afterJunk.database == again.database && afterJunk.statements == again.statements,
                "\(again) → \(afterJunk)")
        let unknown = try await Self.ask(stranger, server: world.server, headers: Self.forwardedHeaders + [("Cookie", "__Host-as-session=\(SecretToken.generate())")])
        #expect(unknown.status == 401)
        let afterUnknown = try await counts()
        #expect(afterUnknown.memo + afterUnknown.database - afterJunk.memo - afterJunk.database == 2, "\(afterJunk) → \(afterUnknown)")
        #expect(afterUnknown.database > afterJunk.database && afterUnknown.statements > afterJunk.statements, "\(afterJunk) → \(afterUnknown)")
        await stranger.shutdown()
        await admin.shutdown()
        await browser.shutdown()
        await world.stop()
    }

    /// A direct session gets 403 on an agenda URL, and 401 to the SAS entry on a SAS link
    /// (a 403 there would send the regulator back to the SAS, which links here again).
    @Test func directSessionIsRefusedWith403UnlessFollowingASASLink() async throws {
        let world = try await World()
        let browser = try world.browser()
        try await WebSignInTests.choosePassword(browser, world: world)
        let (location, _, _) = try await WebSignInTests.signIn(browser)
        #expect(location == "/compte")
        let plain = [("X-Original-URI", "/rdv/42?creneau=9"), ("X-Forwarded-Host", "agenda.example"), ("X-Forwarded-Proto", "https")]
        let answer = try await Self.ask(browser, server: world.server, headers: plain)
        #expect(answer.status == 403 && answer.headers.first(name: "X-Auth-Denial") == "direct-session")
        #expect(answer.headers.first(name: "X-Auth-Habilitations") == nil && answer.headers.first(name: "X-Auth-Session-Origin") == "direct")
        let sasLink = try await Self.ask(browser, server: world.server)
        #expect(sasLink.status == 401 && sasLink.headers.first(name: "X-Auth-Denial") == "direct-session")
        #expect(sasLink.location == "https://localhost/connexion?retour=" + "https://agenda.example\(Self.agendaPath)".addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~")))!,
                "\(sasLink.location ?? "-")")
        // A header sent twice (a client's copy the proxy failed to drop, beside its own) is
        // used by neither endpoint: the sign-in entry carries no return URL.
        let doubled = [("X-Original-URI", Self.agendaPath), ("X-Original-URI", "/rdv/1?origin=sas"),
                       ("X-Forwarded-Host", "agenda.example"), ("X-Forwarded-Proto", "https")]
        let twice = try await Self.ask(browser, server: world.server, headers: doubled)
        #expect(twice.status == 403 && twice.location == "https://localhost/acces-refuse", "\(twice.location ?? "-")")
        let anonymous = try world.browser()
        let signIn = try await Self.ask(anonymous, server: world.server, headers: doubled)
        #expect(signIn.status == 401 && signIn.location == "https://localhost/connexion", "\(signIn.location ?? "-")")
        await anonymous.shutdown()
        // An origin this deployment does not accept is no SAS link.
        let otherOrigin = [("X-Original-URI", "/rdv/42?origin=elsewhere"), ("X-Forwarded-Host", "agenda.example"), ("X-Forwarded-Proto", "https")]
        #expect(try await Self.ask(browser, server: world.server, headers: otherOrigin).status == 403)
        let page = try await browser.get("/acces-refuse")
        #expect(page.status == 403 && page.body.contains("id=\"conseil\"") && page.body.contains("depuis la plateforme SAS"))
        let events = try await world.server.auditEvents()
        #expect(events.contains { $0.action == "habilitation-not-granted" && $0.outcome.contains("direct-session") })
        await browser.shutdown()
        await world.stop()
    }

    /// 50 forward-auth requests continuously in flight while the habilitation is withdrawn:
    /// none that starts after the withdrawal has committed is allowed.
    @Test(arguments: ["admin-suspension", "sas-deactivation", "session-revocation"])
    func withdrawalRacingFiftyInFlightRequests(_ withdrawal: String) async throws {
        let world = try await World()
        let admin = AdminClient(server: world.server)
        let browser = try await Self.sasSession(world)
        let cookie = "__Host-as-session=\(try #require(browser.cookies["__Host-as-session"]))"
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(try world.pki.ca.certificatePEM.utf8), format: .pem)])
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
        let owned = OwnedHTTPClient(configuration)
        let client = owned.client
        let url = world.server.forwardAuthURL + "/forward-auth"
        let clock = ContinuousClock()

        let results = Answers()
        let workers = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<50 {
                    group.addTask {
                        while !Task.isCancelled {
                            var request = HTTPClientRequest(url: url)
                            request.headers.add(name: "Cookie", value: cookie)
                            let started = clock.now
                            // A request that fails (a timeout on a loaded machine) is not an
                            // answer: the worker goes on (stopping would leave too few answers).
                            guard let response = try? await client.execute(request, timeout: .seconds(30)) else {
                                try? await Task.sleep(for: .milliseconds(50))
                                continue
                            }
                            _ = try? await response.body.collect(upTo: 1 << 16)
                            results.record(started, Int(response.status.code))
                        }
                    }
                }
            }
        }
        /// Waits until `count` answers to requests started after `instant` have arrived.
        func waitForAnswers(_ count: Int, after instant: ContinuousClock.Instant) async throws {
            let deadline = clock.now + .seconds(30)
            while results.all.filter({ $0.0 > instant }).count < count && clock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        try await waitForAnswers(100, after: clock.now)
        let accountID = try #require(try await admin.json("/api/accounts?q=810002673899")["accounts"].flatMap { value -> String? in
            guard case .array(let list) = value, case .object(let first)? = list.first, case .string(let id)? = first["id"] else { return nil }
            return id
        })
        switch withdrawal {
        case "admin-suspension": #expect(try await admin.send(.POST, "/api/accounts/\(accountID)/suspend").status == 200)
        case "sas-deactivation": try await world.setActive(false)
        default: #expect(try await admin.send(.POST, "/api/accounts/\(accountID)/revoke-sessions").status == 200)
        }
        // The withdrawal's answer has arrived, so its transaction has committed.
        let committed = clock.now
        try await waitForAnswers(200, after: committed)
        workers.cancel()
        await workers.value
        let all = results.all
        let before = all.filter { $0.0 < committed }
        let after = all.filter { $0.0 > committed }
        #expect(before.contains { $0.1 == 200 }, "requests were granted before the withdrawal")
        #expect(after.count >= 200, "enough requests started after the commit (\(after.count))")
        let stale = after.filter { $0.1 == 200 }
        #expect(stale.count == 0, "\(stale.count) of \(after.count) requests started after the commit were allowed")
        // Every answer after the commit refuses: the withdrawal's own status, or a fail-closed
        // 503 when the database did not answer a check in time (a loaded machine).
        let refusal = withdrawal == "session-revocation" ? 401 : 403
        #expect(after.allSatisfy { $0.1 == refusal || $0.1 == 503 }, "\(Set(after.map(\.1)))")
        #expect(after.filter { $0.1 == refusal }.count >= 100, "\(after.filter { $0.1 == refusal }.count) answers \(refusal)")
        await owned.shutdown()
        await admin.shutdown()
        await browser.shutdown()
        await world.stop()
    }
}

/// Forward-auth answers collected by concurrent workers: when each request started, and its status.
final class Answers: Sendable {
    private let answers = Mutex<[(ContinuousClock.Instant, Int)]>([])

    func record(_ started: ContinuousClock.Instant, _ status: Int) { answers.withLock { $0.append((started, status)) } }

    var all: [(ContinuousClock.Instant, Int)] { answers.withLock { $0 } }
}
