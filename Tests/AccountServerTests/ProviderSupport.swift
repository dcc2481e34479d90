@testable import AccountServer
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOSSL

/// A real OpenID Connect provider for the tests: Debian's LemonLDAP::NG, configured by
/// Provider/llng.py in a PSC shape (scope `scope_all` → SubjectNameID, given_name,
/// family_name; `acr` eidas1; PKCE required; back-channel logout through a small plugin),
/// served by starman over https on loopback with the test PKI's server certificate.
final class OIDCTestProvider: Sendable {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Provider/llng.py").path

    struct Client: Encodable {
        var id: String
        var secret: String
        var redirect: String
        var post_logout: String
        var backchannel: String
    }

    /// Demo logins (the password is the login). `dwho` is the regulator of the tests,
    /// `rtyler` a health professional with no account here.
    static let users: [String: [String: String]] = [
        "dwho": ["SubjectNameID": "810002673899", "given_name": "Jules", "family_name": "Marius"],
        "rtyler": ["SubjectNameID": "810009999999", "given_name": "Rose", "family_name": "Tyler"],
    ]

    let port: Int
    let directory: URL
    private let process: Process
    let logPath: String

    var issuer: String { "https://127.0.0.1:\(port)" }

    /// Starts the provider with `clients` registered; waits until its discovery document answers.
    /// `sessionIDPerSubject`: every token of a subject carries the same `sid`, kept across a
    /// new authentication (see Provider/perl/AccountServerTests/BackChannelLogout.pm).
    init(pki: TestPKI, clients: [Client], sessionIDPerSubject: Bool = false) async throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/starman") else {
            throw FixtureFailure("starman and LemonLDAP::NG are missing: run scripts/install-deps.sh")
        }
        directory = pki.directory.appendingPathComponent("llng-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let clientsPath = directory.appendingPathComponent("clients.json")
        let usersPath = directory.appendingPathComponent("users.json")
        try JSONEncoder().encode(clients).write(to: clientsPath)
        try JSONEncoder().encode(Self.users).write(to: usersPath)
        logPath = directory.appendingPathComponent("provider.log").path
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        var lastError = "did not start"
        for _ in 0..<3 {
            let candidate = freeLoopbackPort()
            let process = Process()
            // Foundation starts it in a process group of its own (python execs starman in
            // place): stopping the group stops starman's workers too.
            process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            process.arguments = [Self.script, "--dir", directory.appendingPathComponent("run-\(candidate)").path, "--port", "\(candidate)",
                                 "--cert", pki.serverCertificatePath, "--key", pki.serverKeyPath,
                                 "--clients", clientsPath.path, "--users", usersPath.path]
            var environment = ProcessInfo.processInfo.environment
            // The provider's back-channel calls reach our server, whose certificate the test CA issued.
            environment["PERL_LWP_SSL_CA_FILE"] = pki.caPath
            environment["HTTPS_CA_FILE"] = pki.caPath
            environment["ACCOUNT_SERVER_TEST_SID_PER_SUBJECT"] = sessionIDPerSubject ? "1" : nil
            process.environment = environment
            let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
            log.seekToEndOfFile()
            process.standardOutput = log
            process.standardError = log
            try process.run()
            if await Self.answers(port: candidate, pki: pki, process: process) {
                self.port = candidate
                self.process = process
                return
            }
            lastError = (try? String(contentsOfFile: logPath, encoding: .utf8).suffix(2000)).map(String.init) ?? lastError
            Self.terminate(process)
        }
        throw FixtureFailure("LemonLDAP::NG did not start: \(lastError)")
    }

    static func answers(port: Int, pki: TestPKI, process: Process) async -> Bool {
        guard let owned = try? HTTPClient.testClient(pki: pki) else { return false }
        let client = owned.client
        var answered = false
        // Up to about a minute: python, an RSA key and starman's Perl workers loading
        // LemonLDAP::NG take long on a loaded machine.
        for _ in 0..<450 where process.isRunning {
            if let response = try? await client.execute(HTTPClientRequest(url: "https://127.0.0.1:\(port)/.well-known/openid-configuration"), timeout: .seconds(5)),
               response.status == .ok {
                answered = true
                break
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
        await owned.shutdown()
        return answered
    }

    /// The provider's log (for assertions' messages).
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func stop() { Self.terminate(process) }

    /// SIGTERM to the whole group, SIGKILL after 3 s (a starman worker stuck in a TLS accept
    /// does not always honour SIGTERM).
    static func terminate(_ process: Process) {
        let group = -process.processIdentifier
        kill(group, SIGTERM)
        for _ in 0..<30 where process.isRunning { usleep(100_000) }
        kill(group, SIGKILL)  // a master that did not exit, or workers it left behind
        for _ in 0..<50 where process.isRunning { usleep(100_000) }
    }
}

extension HTTPClient {
    /// A client trusting the test CA only.
    /// Owned: shut down however the test ends (an HTTPClient dropped unshut traps, taking
    /// the whole test process down instead of failing one test).
    static func testClient(pki: TestPKI) throws -> OwnedHTTPClient {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(try pki.ca.certificatePEM.utf8), format: .pem)])
        return OwnedHTTPClient(.init(tlsConfiguration: tls, redirectConfiguration: .disallow))
    }
}

extension Browser {
    /// At the provider's login form (`page`, fetched from `url`): signs in as `login` (the
    /// Demo password is the login). Returns the provider's answer (a redirect to our callback).
    func signInAtProvider(_ page: Browser.Page, url: String, login: String) async throws -> Browser.Page {
        guard page.body.contains("id=\"lform\"") else { throw FixtureFailure("not the provider's login form: \(page.status) \(page.body.prefix(300))") }
        var fields = ["user": login, "password": login]
        for name in ["url", "skin", "token", "upgrading"] {
            if let value = page.capture(#"name="\#(name)" value="([^"]*)""#) { fields[name] = value }
        }
        return try await request(.POST, url, form: fields)
    }
}

extension Data {
    init(base64URL text: String) {
        var base64 = text.replacingOccurrences(of: "-", with: "+").replacingOccurrences(of: "_", with: "/")
        while base64.count % 4 != 0 { base64 += "=" }
        self = Data(base64Encoded: base64) ?? Data()
    }

    var base64URL: String {
        base64EncodedString().replacingOccurrences(of: "+", with: "-").replacingOccurrences(of: "/", with: "_").replacingOccurrences(of: "=", with: "")
    }
}
