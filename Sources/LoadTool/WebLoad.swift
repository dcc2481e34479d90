import Accounts
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// A cookie-keeping HTTPS client for the web surface benchmarks (no client certificate).
final class WebClient: @unchecked Sendable {
    let client: HTTPClient
    let base: String
    var cookies: [String: String] = [:]

    struct Page {
        var status: UInt
        var location: String?
        var body: String

        func capture(_ pattern: String) -> String? {
            guard let regex = try? NSRegularExpression(pattern: pattern),
                  let match = regex.firstMatch(in: body, range: NSRange(body.startIndex..., in: body)),
                  let range = Range(match.range(at: 1), in: body) else { return nil }
            return String(body[range])
        }

        var csrf: String? { capture(#"name="csrf" value="([^"]+)""#) }
    }

    init(base: String, ca: String?, connections: Int) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow)
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: connections)
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
        self.base = base
    }

    func send(_ method: HTTPMethod, _ path: String, form: [String: String]? = nil, cookies override: [String: String]? = nil) async throws -> Page {
        var request = HTTPClientRequest(url: base + path)
        request.method = method
        let jar = override ?? cookies
        if !jar.isEmpty { request.headers.add(name: "Cookie", value: jar.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")) }
        if let form {
            let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.body = .bytes(ByteBuffer(string: form.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: allowed)!)" }.joined(separator: "&")))
        }
        let response = try await client.execute(request, timeout: .seconds(30))
        if override == nil {
            for header in response.headers["Set-Cookie"] {
                let pair = header.split(separator: ";")[0].split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                if pair.count == 2, !pair[1].isEmpty, !header.contains("Max-Age=0") { cookies[String(pair[0])] = String(pair[1]) } else { cookies[String(pair[0])] = nil }
            }
        }
        let body = try await response.body.collect(upTo: 1 << 20)
        return Page(status: response.status.code, location: response.headers.first(name: "Location"), body: String(buffer: body))
    }

    func submit(_ page: String, to action: String? = nil, _ fields: [String: String]) async throws -> Page {
        var fields = fields
        fields["csrf"] = try await send(.GET, page).csrf ?? ""
        return try await send(.POST, action ?? page, form: fields)
    }

    /// "Mot de passe oublié" through the real mail: the token is read from a maildir.
    func choosePassword(email: String, password: String, maildir: String) async throws {
        _ = try await submit("/mot-de-passe-oublie", ["email": email])
        var token: String?
        for _ in 0..<100 where token == nil {
            try await Task.sleep(for: .milliseconds(100))
            let directory = URL(fileURLWithPath: maildir).appendingPathComponent("new")
            for file in (try? FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: nil)) ?? [] {
                let raw = try String(contentsOf: file, encoding: .utf8).replacingOccurrences(of: "\r\n", with: "\n")
                let body = raw.components(separatedBy: "\n\n").dropFirst().joined().replacingOccurrences(of: "\n", with: "")
                if let text = Data(base64Encoded: body).flatMap({ String(data: $0, encoding: .utf8) }), text.contains(email) || raw.contains(email),
                   let range = text.range(of: #"jeton=[A-Za-z0-9_-]+"#, options: .regularExpression) {
                    token = String(text[range].dropFirst(6))
                }
            }
        }
        guard let token else { throw ValidationFailure("no reset mail arrived in \(maildir)") }
        let form = try await send(.GET, "/reinitialisation?jeton=\(token)")
        let done = try await send(.POST, "/reinitialisation", form: ["csrf": form.csrf ?? "", "jeton": token, "password": password, "confirmation": password])
        guard done.status == 200 else { throw ValidationFailure("password reset answered \(done.status)") }
    }

    /// A full SAS sign-in (TOTP enrolment the first time, CGU); leaves the session cookie set.
    func signInFromSAS(email: String, password: String) async throws {
        _ = try await send(.GET, "/connexion?origin=sas&retour=%2Fcompte")
        let afterPassword = try await submit("/connexion", ["email": email, "password": password])
        guard afterPassword.location == "/connexion/totp" else { throw ValidationFailure("expected TOTP enrolment, got \(afterPassword.location ?? "\(afterPassword.status)")") }
        let enrol = try await send(.GET, "/connexion/totp")
        guard let text = enrol.capture(#"id="cle-secrete">([A-Z2-7 ]+)<"#), let secret = Base32.decode(text) else { throw ValidationFailure("no TOTP secret on the page") }
        let totp = TOTP()
        let codes = try await send(.POST, "/connexion/totp", form: ["csrf": enrol.csrf ?? "", "code": totp.code(secret: secret, step: totp.step(at: Date()))])
        _ = try await send(.POST, "/connexion/suite", form: ["csrf": codes.csrf ?? ""])
        let cgu = try await send(.GET, "/connexion/cgu")
        let final = try await send(.POST, "/connexion/cgu", form: ["csrf": cgu.csrf ?? "", "accepte": "oui", "version": cgu.capture(#"name="version" value="([^"]+)""#) ?? ""])
        guard final.status == 303, cookies["__Host-as-session"] != nil else { throw ValidationFailure("sign-in did not end in a session") }
    }
}

struct ValidationFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
