@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import ServiceLifecycle
import Synchronization
import Testing

/// A stand-in for the vendor's agenda: answers every path with the identity headers it
/// received, and counts the requests that reached it.
final class AgendaUpstream: Sendable {
    let port: Int
    private let hits: HitCounter
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    var requestCount: Int { hits.value }

    private init(port: Int, hits: HitCounter, group: ServiceGroup, task: Task<Void, any Error>) {
        self.port = port
        self.hits = hits
        self.group = group
        self.task = task
    }

    static func start() async throws -> AgendaUpstream {
        let hits = HitCounter()
        let router = Router()
        router.get("**") { request, _ -> Response in
            hits.increment()
            let names = ["X-Auth-Account-Id", "X-Auth-National-Id", "X-Auth-SAS-Technical-Id", "X-Auth-Habilitations", "X-Auth-Session-Origin"]
            let lines = (names + ["Cookie"]).map { name in "\(name): \(request.headers[values: HTTPField.Name(name)!].joined(separator: "; "))" }
            return Response(status: .ok, headers: [.contentType: "text/plain"],
                            body: ResponseBody(byteBuffer: ByteBuffer(string: "AGENDA \(request.uri.path)\n" + lines.joined(separator: "\n"))))
        }
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: Logger(label: "agenda"))
        let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "agenda")))
        let task = Task { try await group.run() }
        var iterator = ports.makeAsyncIterator()
        guard let port = await iterator.next() else { throw ConfigurationError(description: "agenda did not start") }
        return AgendaUpstream(port: port, hits: hits, group: group, task: task)
    }

    func stop() async {
        await group.triggerGracefulShutdown()
        _ = try? await task.value
    }
}

final class HitCounter: Sendable {
    private let count = Atomic<Int>(0)
    var value: Int { count.load(ordering: .relaxed) }
    func increment() { count.add(1, ordering: .relaxed) }
}

/// A real nginx (Debian package) running docs/nginx/agenda-forward-auth.conf.
final class NginxProxy: Sendable {
    let port: Int
    let directory: URL
    private let process: Process

    static let docs = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/nginx")

    convenience init(port: Int, pki: TestPKI, accountServerWebPort: Int, forwardAuthPort: Int, agendaPort: Int) async throws {
        try await self.init(port: port, pki: pki, template: "agenda-forward-auth.conf", values: [
            "LISTEN": "127.0.0.1:\(port)", "SERVER_NAME": "localhost", "CERTIFICATE": pki.serverCertificatePath, "KEY": pki.serverKeyPath,
            "ACCOUNT_SERVER_WEB": "127.0.0.1:\(accountServerWebPort)", "ACCOUNT_SERVER_FORWARD_AUTH": "127.0.0.1:\(forwardAuthPort)", "ACCOUNT_SERVER_NAME": "localhost", "ACCOUNT_SERVER_CA": pki.caPath,
            "AGENDA_UPSTREAM": "127.0.0.1:\(agendaPort)",
        ])
    }

    /// Runs `docs/nginx/<template>` (in the `http` context) with its `${...}` placeholders
    /// filled in from `values`; `streamTemplate`, if any, goes in a `stream` context.
    init(port: Int, pki: TestPKI, template: String, streamTemplate: String? = nil, values: [String: String]) async throws {
        self.port = port
        directory = pki.directory.appendingPathComponent("nginx-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("logs"), withIntermediateDirectories: true)
        let accessLog = directory.appendingPathComponent("logs/access.log").path
        func filled(_ template: String) throws -> String {
            var site = try String(contentsOf: Self.docs.appendingPathComponent(template), encoding: .utf8)
            for (name, value) in values.merging(["ACCESS_LOG": accessLog], uniquingKeysWith: { given, _ in given }) {
                site = site.replacingOccurrences(of: "${\(name)}", with: value)
            }
            #expect(!site.split(separator: "\n").contains { !$0.trimmingCharacters(in: .whitespaces).hasPrefix("#") && $0.contains("${") },
                    "every placeholder of the documented configuration is filled")
            return site
        }
        let site = try filled(template)
        let stream = try streamTemplate.map { "load_module /usr/lib/nginx/modules/ngx_stream_module.so;\nstream {\n\(try filled($0))\n}" } ?? ""
        let root = directory.path
        let main = """
            \(getuid() == 0 ? "user root;" : "")
            \(stream)
            worker_processes 1;
            daemon off;
            pid \(root)/nginx.pid;
            error_log \(root)/logs/error.log warn;
            events { worker_connections 512; }
            http {
                access_log \(root)/logs/access.log;
                client_body_temp_path \(root)/client_body;
                proxy_temp_path \(root)/proxy;
                fastcgi_temp_path \(root)/fastcgi;
                uwsgi_temp_path \(root)/uwsgi;
                scgi_temp_path \(root)/scgi;
            \(site)
            }
            """
        try main.write(to: directory.appendingPathComponent("nginx.conf"), atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/nginx")
        process.arguments = ["-p", root, "-c", directory.appendingPathComponent("nginx.conf").path, "-e", "\(root)/logs/error.log"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        // Up to 30 s: a loaded machine starts nginx slowly.
        for _ in 0..<600 {
            if SMTPSink.accepts(port: port) { return }
            if !process.isRunning { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let log = (try? String(contentsOf: directory.appendingPathComponent("logs/error.log"), encoding: .utf8)) ?? ""
        process.terminate()
        throw ConfigurationError(description: "nginx did not start: \(log)")
    }

    func stop() {
        process.terminate()
        process.waitUntilExit()
    }

    /// A test that threw before ``stop()`` would leave nginx running after the suite.
    deinit {
        if process.isRunning { process.terminate() }
    }
}

/// The vendor's nginx in front of its agenda, with `auth_request` to account-server, exactly
/// as docs/nginx/agenda-forward-auth.conf says: a SAS sign-in reaches the agenda with the
/// identity headers; a withdrawal by the SAS or by a vendor admin refuses the next request;
/// reactivation or restore serves it again; a direct session is refused.
@Suite("nginx auth_request in front of the agenda")
struct NginxForwardAuthTests {
    @Test func theRegulatorPageFollowsTheHabilitationRequestByRequest() async throws {
        let nginxPort = freeLoopbackPort()
        let front = "https://localhost:\(nginxPort)"
        let world = try await WebSignInTests.World {
            $0.web.publicURL = front
            $0.allowedReturnHosts = []
            $0.web.trustedProxies = ["127.0.0.1"]
        }
        let agenda = try await AgendaUpstream.start()
        let nginx = try await NginxProxy(port: nginxPort, pki: world.pki, accountServerWebPort: world.server.webPort,
                                   forwardAuthPort: world.server.forwardAuthPort, agendaPort: agenda.port)
        let admin = AdminClient(server: world.server)
        let browser = try Browser(pki: world.pki, base: front)
        let regulatorPage = "/regulation/rdv/42?origin=sas&creneau=7"

        // No session: nginx sends the browser to sign-in, with the agenda URL (origin=sas kept).
        let first = try await browser.get(regulatorPage)
        #expect(first.status == 302)
        let signIn = try #require(first.location)
        #expect(signIn == front + "/connexion?retour=" + (front + regulatorPage).addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~")))!)
        #expect(agenda.requestCount == 0)
        let entry = try await browser.get(String(signIn.dropFirst(front.count)))
        #expect(entry.status == 303 && entry.location == "/connexion")
        #expect(try await browser.get("/connexion").body.contains("id=\"origine-sas\""), "the sign-in through nginx is a SAS one")

        try await WebSignInTests.choosePassword(browser, world: world)
        let (location, secret, recoveryCodes) = try await WebSignInTests.signIn(browser)
        #expect(location == front + regulatorPage, "back to the agenda page")

        // Served, with the identity headers; headers a browser sends itself are overwritten.
        // The agenda gets its own cookies, never account-server's.
        // Decoys whose values look like our cookies (a page script could set them to use up
        // nginx's stripping passes) are left alone, and the real ones still go.
        let sessionID = try #require(browser.cookies["__Host-as-session"])
        let decoys = ["agenda-pref": "vue-semaine", "d1": "__Host-as-x=1", "d2": "__Host-as-x=2", "d3": "__Host-as-x=3", "d4": "__Host-as-x=4"]
        for (name, value) in decoys { browser.cookies[name] = value }
        let served = try await browser.request(.GET, regulatorPage, headers: [("X-Auth-Account-Id", "forged"), ("X-Auth-Habilitations", "forged"),
                                                                              ("X-Auth-Session-Origin", "forged")])
        for name in decoys.keys { browser.cookies[name] = nil }
        #expect(served.status == 200 && served.body.hasPrefix("AGENDA /regulation/rdv/42"))
        #expect(decoys.allSatisfy { served.body.contains("\($0.key)=\($0.value)") }, "\(served.body)")
        #expect(!served.body.contains(sessionID) && !served.body.contains("__Host-as-session") && !served.body.contains("__Host-as-csrf"), "\(served.body)")
        #expect(served.body.contains("X-Auth-Session-Origin: sas"))
        // Decoys by name: cookies a page script can set (__Host-as-a…e) placed before the real
        // one cannot use nginx's passes up: each pass removes one exact name.
        let decoyNames = (["a", "b", "c", "d", "e"].map { "__Host-as-\($0)=1" } + ["__Host-as-session=\(sessionID)", "agenda-pref=v"]).joined(separator: "; ")
        let byName = try await browser.request(.GET, regulatorPage, headers: [("Cookie", decoyNames)], cookiesOf: "https://no-cookies.invalid")
        #expect(byName.status == 200 && byName.body.contains("agenda-pref=v") && !byName.body.contains(sessionID), "\(byName.status) \(byName.body)")
        // Forty cookies of the agenda's: our maps read each cookie one way only (possessive
        // quantifiers), so the maps that find nothing fail at once instead of backtracking into
        // PCRE's match limit (an alert per map, the worker blocked meanwhile).
        let crowded = (0..<40).map { "c\($0)=v\($0)" }.joined(separator: "; ") + "; __Host-as-session=\(sessionID)"
        let many = try await browser.request(.GET, regulatorPage, headers: [("Cookie", crowded)], cookiesOf: "https://no-cookies.invalid")
        #expect(many.status == 200 && many.body.contains("c39=v39") && !many.body.contains(sessionID), "\(many.status) \(many.body.prefix(300))")
        // (Decoded leniently: nginx writes bytes of its own that are not UTF-8 into this log.)
        let errors = String(decoding: try Data(contentsOf: nginx.directory.appendingPathComponent("logs/error.log")), as: UTF8.self)
        #expect(!errors.contains("pcre"), "\(errors.suffix(500))")
        // Every cookie of ours has its map (a new cookie would otherwise reach the agenda).
        let configuration = try String(contentsOf: NginxProxy.docs.appendingPathComponent("agenda-forward-auth.conf"), encoding: .utf8)
        for cookie in WebCookie.allCases {
            #expect(configuration.contains(")\(cookie.rawValue)=[^;]*"), "no map strips \(cookie.rawValue)")
        }
        #expect(served.body.contains("X-Auth-National-Id: 810002673899") && served.body.contains("X-Auth-Habilitations: regulateur"))
        #expect(!served.body.contains("forged"))
        let accountID = try #require(served.body.firstMatch(of: /X-Auth-Account-Id: ([0-9a-f-]{36})/).map { String($0.1) })

        // The SAS withdraws over mTLS: the next request is refused with the French page.
        let hitsBefore = agenda.requestCount
        try await world.setActive(false)
        let refused = try await browser.get(regulatorPage)
        #expect(refused.status == 403 && refused.body.contains("La plateforme SAS a retiré votre habilitation") && refused.body.contains("lang=\"fr\""))
        #expect(agenda.requestCount == hitsBefore, "the agenda never saw the refused request")
        try await world.setActive(true)
        #expect(try await browser.get(regulatorPage).status == 200, "served again after reactivation, same session")

        // A vendor admin suspends: refused; the SAS's active:true does not lift it; restore does.
        #expect(try await admin.send(.POST, "/api/accounts/\(accountID)/suspend", body: #"{"reason":"test nginx"}"#).status == 200)
        let suspended = try await browser.get(regulatorPage)
        #expect(suspended.status == 403 && suspended.body.contains("L’éditeur a suspendu votre habilitation"))
        try await world.setActive(true)
        #expect(try await browser.get(regulatorPage).status == 403)
        #expect(try await admin.send(.POST, "/api/accounts/\(accountID)/restore").status == 200)
        #expect(try await browser.get(regulatorPage).status == 200, "served again after restore, same session")

        // Sessions revoked: this one needs a new sign-in (401 → the sign-in entry).
        #expect(try await admin.send(.POST, "/api/accounts/\(accountID)/revoke-sessions").status == 200)
        let afterRevocation = try await browser.get(regulatorPage)
        #expect(afterRevocation.status == 302 && afterRevocation.location?.hasPrefix(front + "/connexion?retour=") == true)

        // A direct session (sign-in page opened without the SAS) is refused on the agenda...
        let direct = try Browser(pki: world.pki, base: front)
        _ = try await direct.get("/connexion")
        let directSignIn = try await WebSignInTests.signIn(direct, secret: secret)
        #expect(directSignIn.location == "/compte")
        let directDirectSessionID = try #require(direct.cookies["__Host-as-session"])
        let withoutOrigin = try await direct.request(.GET, "/regulation/rdv/42", headers: [("X-Auth-Habilitations", "regulateur")])
        #expect(withoutOrigin.status == 403 && withoutOrigin.body.contains("pas été ouverte depuis la plateforme SAS"))
        // ...but following a SAS link it is sent to sign in from that SAS entry (no loop back
        // to the SAS), and signing in there opens a SAS session with a new id.
        let sasLink = try await direct.request(.GET, regulatorPage, headers: [("X-Auth-Habilitations", "regulateur")])
        #expect(sasLink.status == 302, "\(sasLink.status)")
        let sasEntry = try #require(sasLink.location)
        #expect(sasEntry == front + "/connexion?retour=" + (front + regulatorPage).addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~")))!)
        let intent = try await direct.get(String(sasEntry.dropFirst(front.count)))
        #expect(intent.status == 303 && intent.location == "/connexion", "the direct session does not short-circuit the SAS entry")
        // A TOTP step is used once: the second factor here is a recovery code.
        let resigned = try await WebSignInTests.signIn(direct, secret: secret, code: try #require(recoveryCodes.first))
        #expect(resigned.location == front + regulatorPage)
        #expect(direct.cookies["__Host-as-session"] != directDirectSessionID, "a new session id")
        let nowSAS = try await direct.get(regulatorPage)
        #expect(nowSAS.status == 200 && nowSAS.body.contains("X-Auth-Habilitations: regulateur"), "\(nowSAS.status)")

        // Behind the trusted proxy, the audit trail records the browser's address as nginx saw it.
        let events = try await world.server.auditEvents()
        #expect(events.contains { $0.action == "habilitation-granted" && $0.actorAddress == "127.0.0.1" })

        await direct.shutdown()
        await browser.shutdown()
        await admin.shutdown()
        nginx.stop()
        await agenda.stop()
        await world.stop()
    }
}
