@testable import AccountServer
import Accounts
import Foundation
import Testing

/// The sign-in driven by a real browser: headless Chromium (Debian's `chromium`) over the
/// DevTools protocol, from the SAS redirect to "Mon compte", asserting on the DOM.
@Suite("Headless Chromium")
struct HeadlessBrowserTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Browser/cdp_sign_in.py").path
    static let adminScript = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Browser/cdp_admin.py").path

    /// Runs a DevTools script; its exit status, the JSON object it printed, and its errors.
    static func runScript(_ script: String, _ arguments: [String]) async throws -> (status: Int32, result: [String: Any], errors: String) {
        let (status, data, errorData) = try await spawnAndWait("/usr/bin/python3", [script] + arguments)
        let result = (try? JSONSerialization.jsonObject(with: data) as? [String: Any]) ?? [:]
        return (status, result, String(decoding: errorData, as: UTF8.self))
    }

    /// The vendor admin's page in a real browser: sign-in with the token in the page's form, search, one
    /// click withdraws the habilitation (the form's CSRF token and same-origin checks pass as
    /// a browser sends them), the page then shows the suspension and the restore button; a
    /// reload keeps the page, and its address without the session's token shows the sign-in.
    @Test func chromiumWithdrawsAHabilitationFromTheAdminPage() async throws {
        let pki = try TestPKI()
        let server = try await RunningServer.start(pki: pki)
        let fhir = try FHIRClient(pki: pki, certificate: "valid", server: server)
        #expect(try await fhir.send(.POST, "/Practitioner", body: Bodies.practitioner(national: "810002673899", email: WebSignInTests.email)).status == 201)
        await fhir.shutdown()
        let run = try await Self.runScript(Self.adminScript, [server.adminURL, server.adminToken, "marius"])
        #expect(run.status == 0, "\(run.errors)")
        let before = run.result["before"] as? [String: Any] ?? [:]
        #expect(before["rows"] as? Int == 1 && before["withdraw_button"] as? Bool == true && before["lang"] as? String == "fr", "\(run.result)")
        #expect((run.result["message"] as? String)?.contains("Habilitation retirée") == true, "\(run.result)")
        #expect(run.result["suspended_shown"] as? Bool == true && run.result["restore_button"] as? Bool == true)
        #expect(run.result["query_kept"] as? String == "marius")
        #expect(run.result["token_in_address"] as? Bool == true && run.result["reload_kept_the_page"] as? Bool == true, "\(run.result)")
        #expect(run.result["cookie_alone"] as? String == "sign-in form", "\(run.result)")
        let event = try #require(try await server.auditEvents().last { $0.action == "habilitation-withdrawn" })
        #expect(event.actorSubject == "admin-page" && event.detail?.contains("Départ du service") == true)
        await server.stop()
    }

    @Test func chromiumSignsInFromTheSASRedirect() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium"), "scripts/install-deps.sh installs chromium")
        // With every notice linked: the footer reflows at 320 px too.
        let footer = try PageFooter(privacyNotice: "https://agenda.example/donnees-personnelles", legalNotice: "https://agenda.example/mentions-legales",
                                    accessibilityStatement: "https://agenda.example/declaration-accessibilite", accessibilityCompliance: "partial")
        let (server, smtp) = try await Self.regulatorWithPassword { $0.footer = footer }
        let entry = "\(server.webURL)/connexion?origin=sas&retour=%2Fcompte%3Forigin%3Dsas"
        let run = try await Self.runScript(Self.script, [entry, WebSignInTests.email, WebSignInTests.password])
        #expect(run.status == 0, "\(run.errors)")
        let result = run.result
        #expect(result["sas_banner"] as? Bool == true)
        #expect(result["qr_code"] as? Bool == true)
        #expect(result["recovery_codes"] as? Int == 10)
        #expect(result["second_submit_blocked"] as? Bool == true, "the pages' script loads under their CSP and sends a form once")
        #expect(try await server.auditEvents().filter { $0.action == "recovery-codes-reissued" }.isEmpty)
        #expect(result["path"] as? String == "/compte")
        #expect(result["habilitation"] as? String == "oui", "\(result)")
        #expect(result["origine"] as? String == "sas")
        #expect(result["nom"] as? String == "Jules MARIUS")
        #expect(result["lang"] as? String == "fr")
        #expect(result["session_cookie_visible_to_script"] as? Bool == false, "the session cookie is HttpOnly")
        #expect(result["sessions"] as? Int == 1 && result["current_session"] as? String == "oui", "« Mon compte » lists this session: \(result)")
        #expect((result["session_text"] as? String)?.contains("Chrome sous Linux") == true, "\(result["session_text"] ?? "-")")
        #expect((result["too_wide_at_320"] as? [Any])?.isEmpty == true, "every page reflows at 320 px: \(result["too_wide_at_320"] ?? "-")")
        await server.stop()
        smtp.stop()
    }

    /// The agenda on another origin (`--allowed-return-host`, another host or port): the
    /// sign-in's last form answers a redirect there, and browsers apply the page's CSP
    /// `form-action` to a form's redirects too, so the page must name that origin, or the
    /// regulator gets Chromium's "blocked" page instead of the agenda right after a correct
    /// code. Here the other origin is the same listener reached as 127.0.0.1.
    @Test func chromiumReturnsToAnAgendaOnAnotherOrigin() async throws {
        let webPort = freeLoopbackPort()
        let (server, smtp) = try await Self.regulatorWithPassword(webPort: webPort) {
            $0.allowedReturnHosts = ["localhost:\(webPort)", "127.0.0.1:\(webPort)"]
        }
        let agenda = "https://127.0.0.1:\(webPort)/connexion?origin=sas"
        let entry = "https://localhost:\(webPort)/connexion?origin=sas&retour=" + agenda.addingPercentEncoding(withAllowedCharacters: .alphanumerics)!
        let run = try await Self.runScript(Self.script, [entry, WebSignInTests.email, WebSignInTests.password, "/connexion", "#form-connexion"])
        #expect(run.status == 0, "\(run.errors)")
        #expect(run.result["origin"] as? String == "https://127.0.0.1:\(webPort)", "\(run.result) \(run.errors.suffix(400))")
        await server.stop()
        smtp.stop()
    }

    /// A server whose public URL carries its real port (the browser follows absolute links),
    /// holding one regulator who chose a password through the mailed link (cookie client):
    /// the browser does the rest.
    static func regulatorWithPassword(webPort: Int = freeLoopbackPort(), _ configure: (inout ServerConfiguration) -> Void = { _ in })
        async throws -> (RunningServer, SMTPSink) {
        let pki = try TestPKI()
        let smtp = try await SMTPSink()
        let server = try await RunningServer.start(pki: pki) {
            $0.web.port = webPort
            $0.web.publicURL = "https://localhost:\(webPort)"
            $0.smtpURL = "smtp://127.0.0.1:\(smtp.port)"
            $0.mailPollInterval = .milliseconds(100)
            configure(&$0)
        }
        let fhir = try FHIRClient(pki: pki, certificate: "valid", server: server)
        #expect(try await fhir.send(.POST, "/Practitioner", body: Bodies.practitioner(national: "810002673899", email: WebSignInTests.email)).status == 201)
        await fhir.shutdown()
        let client = try Browser(pki: pki, base: server.webURL)
        _ = try await client.submit("/mot-de-passe-oublie", ["email": WebSignInTests.email])
        let token = try #require(try await smtp.resetToken(number: 1))
        let form = try await client.get("/reinitialisation?jeton=\(token)")
        _ = try await client.request(.POST, "/reinitialisation", form: ["csrf": form.csrf ?? "", "jeton": token,
                                                                           "password": WebSignInTests.password, "confirmation": WebSignInTests.password])
        await client.shutdown()
        return (server, smtp)
    }
}
