@testable import AccountServer
import Accounts
import Foundation
import Testing

@Suite("Mail transports")
struct MailTransportTests {
    @Test func sendmailCommandReceivesTheMessage() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sendmail-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // A sendmail-compatible command: reads the message on stdin, takes -f sender -- recipient.
        // It runs as `/bin/sh script`, not as an executable file of its own: a process another
        // test forks while this file is being written inherits its open descriptor, and
        // executing a file open for writing fails with ETXTBSY ("Text file busy").
        let script = directory.appendingPathComponent("sendmail").path
        try "cat > \"\(directory.path)/message\"\necho \"$@\" > \"\(directory.path)/arguments\"\n".write(toFile: script, atomically: true, encoding: .utf8)
        let mail = OutgoingMail(recipient: "jules.marius@test.com", subject: "Choisir votre mot de passe", body: "Bonjour,\n.\nLien : https://x/reinitialisation?jeton=abc")
        try await SendmailTransport(command: ["/bin/sh", script, "-i"]).send(MailMessage.render(mail, from: "no-reply@example.fr"), from: "no-reply@example.fr", to: mail.recipient)
        let message = try String(contentsOfFile: directory.appendingPathComponent("message").path, encoding: .utf8)
        #expect(message.contains("To: jules.marius@test.com") && message.contains("Subject: =?UTF-8?B?"))
        let body = message.components(separatedBy: "\r\n\r\n")[1].replacingOccurrences(of: "\r\n", with: "")
        #expect(String(data: try #require(Data(base64Encoded: body)), encoding: .utf8) == mail.body)
        let arguments = try String(contentsOfFile: directory.appendingPathComponent("arguments").path, encoding: .utf8)
        #expect(arguments.trimmingCharacters(in: .newlines) == "-i -f no-reply@example.fr -- jules.marius@test.com")
    }

    /// A subject longer than one RFC 2047 word (75 characters) is several words, folded, each
    /// within the limit, cut between characters, and reads back whole.
    @Test func aLongSubjectIsSeveralEncodedWordsWithinTheLimit() throws {
        let subject = "Espace régulateur SAS\u{00A0}: choisissez votre mot de passe — « é\u{301} » 🩺 ok"
        let message = String(decoding: MailMessage.render(OutgoingMail(recipient: "a@b.fr", subject: subject, body: "x"), from: "c@d.fr"), as: UTF8.self)
        let header = try #require(message.components(separatedBy: "\r\n\r\n").first)
        let start = try #require(header.range(of: "Subject: "))
        let folded = header[start.upperBound...].components(separatedBy: "\r\nDate:")[0]
        let words = folded.components(separatedBy: "\r\n ")
        #expect(words.count >= 2 && words.allSatisfy { $0.count <= 75 && $0.hasPrefix("=?UTF-8?B?") && $0.hasSuffix("?=") }, "\(words)")
        let decoded = try words.map { word -> String in
            let data = try #require(Data(base64Encoded: String(word.dropFirst(10).dropLast(2))))
            return try #require(String(data: data, encoding: .utf8), "each word is whole UTF-8")
        }.joined()
        #expect(decoded == subject)
    }

    /// The command sees the path, locale and home folder, never the server's secrets
    /// (`PGPASSWORD`, a database URL with its password).
    @Test func theCommandInheritsNoSecretFromTheServersEnvironment() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sendmail-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let script = directory.appendingPathComponent("sendmail").path
        try "cat > /dev/null\nenv > \"\(directory.path)/environment\"\n".write(toFile: script, atomically: true, encoding: .utf8)
        let parent = ["PATH": "/usr/bin:/bin", "HOME": "/var/lib/account-server", "LANG": "fr_FR.UTF-8", "LC_TIME": "fr_FR.UTF-8",
                      "MAIL_CONFIG": "/etc/postfix-out", "PGPASSWORD": "db-secret", "PGPASSFILE": "/etc/account-server/pgpass",
                      "ACCOUNT_SERVER_DATABASE": "postgres://account:db-secret@db/account_server", "AWS_SECRET_ACCESS_KEY": "other-secret"]
        try await SendmailTransport(command: ["/bin/sh", script], parentEnvironment: parent).send([], from: "a@b.fr", to: "c@d.fr")
        let lines = try String(contentsOfFile: directory.appendingPathComponent("environment").path, encoding: .utf8)
            .split(separator: "\n").map(String.init).filter { !$0.hasPrefix("PWD=") && !$0.hasPrefix("SHLVL=") && !$0.hasPrefix("_=") }
        #expect(Set(lines) == ["PATH=/usr/bin:/bin", "HOME=/var/lib/account-server", "LANG=fr_FR.UTF-8", "LC_TIME=fr_FR.UTF-8",
                               "MAIL_CONFIG=/etc/postfix-out"], "\(lines)")
        #expect(!lines.joined().contains("secret"))
    }

    @Test func failingCommandIsAnError() async throws {
        await #expect(throws: MailError.self) {
            try await SendmailTransport(command: ["/bin/false"]).send([], from: "a@b.fr", to: "c@d.fr")
        }
    }

    /// A URL's user, password, query and fragment are never repeated in an error; an SMTP
    /// URL with credentials is refused (there is no AUTH to use them), not quietly stripped.
    @Test func urlsInErrorsShowNoCredentials() throws {
        #expect(shownURL("smtps://mailer:hunter2@relay.example:465/x?token=t#f") == "smtps://relay.example:465/x (its user, query, fragment not shown)")
        #expect(shownURL("http://[2001:db8::1]:8080/fhir") == "http://[2001:db8::1]:8080/fhir")
        #expect(shownURL("no scheme here") == "a value that is not an absolute URL (not repeated)")
        #expect(shownURL("user:hunter2@mail.example:587") == "a value that is not an absolute URL (not repeated)", "no //: the rest is a path")
        #expect(shownURL("smtps:user:hunter2@relay") == "a value that is not an absolute URL (not repeated)")
        #expect(shownURL("https://agenda.example/x@hunter2") == "https://agenda.example/…")
        for url in ["user:hunter2@mail.example:587", "smtps:user:hunter2@relay"] {
            #expect { try SMTPTransport(url: url, heloName: "x") } throws: { !"\($0)".contains("hunter2") }
        }
        for url in ["smtps://mailer:hunter2@relay.example", "smtp://mailer:hunter2@127.0.0.1", "smtps://relay.example/?pass=hunter2"] {
            #expect("\(url)") { try SMTPTransport(url: url, heloName: "x") } throws: { error in
                "\(error)".contains("takes no user, password") && !"\(error)".contains("hunter2")
            }
        }
        #expect { try SMTPTransport(url: "ftp://mailer:hunter2@relay.example", heloName: "x") } throws: { !"\($0)".contains("hunter2") }
        #expect { try SlotSearchUpstream(configuration: UpstreamConfiguration(url: "https://agenda.example/fhir?api_key=hunter2"), metrics: ServerMetrics()) }
            throws: { "\($0)".contains("https://agenda.example/fhir (its query not shown)") && !"\($0)".contains("hunter2") }
    }

    @Test func smtpURLParsing() throws {
        let plain = try SMTPTransport(url: "smtp://127.0.0.1", heloName: "x")
        #expect(plain.port == 25 && !plain.implicitTLS)
        // A reset link must not cross a network in clear: smtp:// to another machine is
        // refused unless the operator accepts it by name.
        for url in ["smtp://relay.local", "smtp://192.0.2.10:587", "smtp://[2001:db8::1]"] {
            #expect(throws: MailError.self, "\(url)") { try SMTPTransport(url: url, heloName: "x") }
        }
        #expect(try SMTPTransport(url: "smtp://relay.local", heloName: "x", allowCleartext: true).port == 25)
        #expect(try SMTPTransport(url: "smtp://localhost:2525", heloName: "x").port == 2525)
        #expect(try SMTPTransport(url: "smtp://[::1]:2525", heloName: "x").port == 2525)
        let tls = try SMTPTransport(url: "smtps://relay.local:2465", heloName: "x")
        #expect(tls.port == 2465 && tls.implicitTLS)
        #expect(throws: MailError.self) { try SMTPTransport(url: "http://relay.local", heloName: "x") }
    }
}
