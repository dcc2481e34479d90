import Accounts
import Foundation
import Logging
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Storage

/// Where mail goes: an SMTP relay or a sendmail-compatible command.
protocol MailTransport: Sendable {
    func send(_ message: [UInt8], from: String, to: String) async throws
}

struct MailError: Error, CustomStringConvertible {
    var description: String
}

/// Builds the RFC 5322 message: UTF-8 text, base64 body (safe over any relay), RFC 2047
/// subject.
enum MailMessage {
    static func render(_ mail: OutgoingMail, from: String, date: Date = Date()) -> [UInt8] {
        let subject = encodedWords(mail.subject).joined(separator: "\r\n ")
        let body = Data(mail.body.utf8).base64EncodedString(options: [.lineLength76Characters, .endLineWithCarriageReturn, .endLineWithLineFeed])
        let host = from.split(separator: "@").last.map(String.init) ?? "localhost"
        let headers = [
            "From: \(from)",
            "To: \(mail.recipient)",
            "Subject: \(subject)",
            "Date: \(FHIRResponses.httpDate(date).replacingOccurrences(of: "GMT", with: "+0000"))",
            "Message-ID: <\(UUID().uuidString.lowercased())@\(host)>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: base64",
        ]
        return Array((headers.joined(separator: "\r\n") + "\r\n\r\n" + body + "\r\n").utf8)
    }

    /// `text` as RFC 2047 encoded words of at most 75 characters each (the RFC's limit, which
    /// strict clients and spam filters hold to): at most 45 bytes of UTF-8 per word, cut
    /// between characters, never inside one. The header folds between words; a reader joins
    /// adjacent encoded words without the space.
    static func encodedWords(_ text: String) -> [String] {
        var words: [String] = [], chunk: [UInt8] = []
        func flush() {
            guard !chunk.isEmpty else { return }
            words.append("=?UTF-8?B?" + Data(chunk).base64EncodedString() + "?=")
            chunk = []
        }
        for character in text {
            let bytes = Array(String(character).utf8)
            if chunk.count + bytes.count > 45 { flush() }
            chunk += bytes
        }
        flush()
        return words.isEmpty ? ["=?UTF-8?B??="] : words
    }
}

/// A minimal SMTP client (RFC 5321): EHLO, MAIL, RCPT, DATA, QUIT, over plain TCP (a local
/// relay) or implicit TLS (`smtps://`). No AUTH or STARTTLS: point it at the vendor's MTA.
struct SMTPTransport: MailTransport {
    let host: String
    let port: Int
    let implicitTLS: Bool
    let heloName: String
    var timeout: Duration = .seconds(30)

    /// A reset link is a bearer secret for its lifetime: `smtp://` (no TLS) is refused to any
    /// host but this machine's relay unless `allowCleartext` (`--smtp-allow-cleartext`).
    init(url: String, heloName: String, allowCleartext: Bool = false) throws {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let bracketed = components.host,
              scheme == "smtp" || scheme == "smtps" else {
            throw MailError(description: "--smtp-url must be smtp://host[:port] or smtps://host[:port], got \(shownURL(url))")
        }
        guard components.user == nil && components.password == nil, components.query == nil, components.fragment == nil,
              components.path.isEmpty || components.path == "/" else {
            // There is no AUTH to send them with: taken silently, they would be ignored.
            throw MailError(description: "--smtp-url takes no user, password, path or parameters (no SMTP AUTH: point it at the vendor's relay), got \(shownURL(url))")
        }
        let host = bracketed.withoutIPv6Brackets
        if scheme == "smtp", !allowCleartext, !isLoopback(host) {
            throw MailError(description: """
                --smtp-url smtp://\(host) would send reset links to another machine without TLS: use smtps://, \
                or a relay on this machine, or --smtp-allow-cleartext to accept that risk knowingly
                """)
        }
        self.host = host
        self.implicitTLS = scheme == "smtps"
        self.port = components.port ?? (scheme == "smtps" ? 465 : 25)
        self.heloName = heloName
    }

    func send(_ message: [UInt8], from: String, to: String) async throws {
        let tlsContext = implicitTLS ? try NIOSSLContext(configuration: .makeClientConfiguration()) : nil
        let serverName = host
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(10))
            .connect(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tlsContext, serverHostname: serverName))
                    }
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(LineBasedFrameDecoder()))
                    return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await channel.executeThenClose { inbound, outbound in
                    var lines = inbound.makeAsyncIterator()
                    func reply(expecting codes: Set<Int>) async throws {
                        while true {
                            guard let line = try await lines.next() else { throw MailError(description: "SMTP server closed the connection") }
                            let text = String(buffer: line).trimmingCharacters(in: .newlines)
                            guard text.count >= 3, let code = Int(text.prefix(3)) else { throw MailError(description: "bad SMTP reply: \(text.prefix(80))") }
                            if text.count > 3 && text[text.index(text.startIndex, offsetBy: 3)] == "-" { continue }
                            guard codes.contains(code) else { throw MailError(description: "SMTP refused: \(text.prefix(200))") }
                            return
                        }
                    }
                    func command(_ text: String, expecting codes: Set<Int>) async throws {
                        try await outbound.write(ByteBuffer(string: text + "\r\n"))
                        try await reply(expecting: codes)
                    }
                    try await reply(expecting: [220])
                    try await command("EHLO \(heloName)", expecting: [250])
                    try await command("MAIL FROM:<\(from)>", expecting: [250])
                    try await command("RCPT TO:<\(to)>", expecting: [250, 251])
                    try await command("DATA", expecting: [354])
                    // Dot-stuffing (RFC 5321 §4.5.2), then the terminating line.
                    var data = String(decoding: message, as: UTF8.self).replacingOccurrences(of: "\r\n.", with: "\r\n..")
                    if data.hasPrefix(".") { data = "." + data }
                    try await outbound.write(ByteBuffer(string: data + ".\r\n"))
                    try await reply(expecting: [250])
                    try? await command("QUIT", expecting: [221])
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                throw MailError(description: "SMTP exchange timed out after \(timeout)")
            }
            try await group.next()
            group.cancelAll()
        }
    }
}

/// A sendmail-compatible command (`/usr/sbin/sendmail -t -i` style): the message on stdin.
struct SendmailTransport: MailTransport {
    let command: [String]
    /// What the command's environment is made of: the server's, reduced to
    /// ``inheritedVariables``.
    var parentEnvironment: [String: String] = ProcessInfo.processInfo.environment

    /// The variables the command inherits, as Postfix's `export_environment` (plus what MTAs
    /// and their wrappers read: the path, the home folder for `~/.msmtprc`, the locale). The
    /// server's own environment holds `PGPASSWORD` and may hold the database URL: it is not a
    /// mail command's to read or log.
    static let inheritedVariables: Set<String> = ["PATH", "HOME", "USER", "LOGNAME", "LANG", "TZ", "TMPDIR", "MAIL_CONFIG"]

    static func childEnvironment(_ parent: [String: String]) -> [String: String] {
        parent.filter { inheritedVariables.contains($0.key) || $0.key.hasPrefix("LC_") }
    }

    func send(_ message: [UInt8], from: String, to: String) async throws {
        let command = self.command
        let environment = Self.childEnvironment(parentEnvironment)
        // Writing to the pipe and waiting for the process block: a thread of its own, never a
        // cooperative one.
        let status: Int32 = try await onDedicatedThread {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: command[0])
            process.arguments = Array(command.dropFirst()) + ["-f", from, "--", to]
            process.environment = environment
            let input = Pipe()
            process.standardInput = input
            try process.run()
            try input.fileHandleForWriting.write(contentsOf: Data(message))
            try input.fileHandleForWriting.close()
            process.waitUntilExit()
            return process.terminationStatus
        }
        guard status == 0 else { throw MailError(description: "\(command[0]) exited with \(status)") }
    }
}

/// Runs blocking work (process I/O) on a new thread and awaits it, so that the cooperative
/// thread pool (one thread per core) is never blocked.
func onDedicatedThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread { continuation.resume(with: Result { try work() }) }
        thread.start()
    }
}

enum MailOutboxError: Error, CustomStringConvertible {
    case unreadable
    var description: String { "the body does not open with this server's key (another --secret-key-file?)" }
}

/// Delivers the outbox: polls for due mails, sends each, marks it sent (body scrubbed) or
/// failed (retried with backoff). Runs until shutdown.
struct MailerService: Service {
    let queue: MailQueue
    let transport: (any MailTransport)?
    let from: String
    let pollInterval: Duration
    let logger: Logger

    func run() async throws {
        guard let transport else {
            logger.warning("no --smtp-url or --sendmail-command: password reset mails stay in the outbox")
            try? await gracefulShutdown()
            return
        }
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    let claim = try await queue.claimDue()
                    for mail in claim.withdrawn {
                        logger.notice("reset mail withdrawn, not sent: \(mail.why.rawValue)", metadata: ["outbox_id": "\(mail.id)"])
                    }
                    for item in claim.due {
                        do {
                            guard let mail = item.mail else { throw MailOutboxError.unreadable }
                            switch try await queue.recheck(id: item.id) {
                            case .deliver: break
                            case .withdrawn(let withdrawn):
                                logger.notice("reset mail withdrawn, not sent: \(withdrawn.why.rawValue)", metadata: ["outbox_id": "\(item.id)"])
                                continue
                            case .gone:
                                logger.info("mail no longer queued when its turn came (withdrawn with its link, its account erased, or sent by another instance): not sent", metadata: ["outbox_id": "\(item.id)"])
                                continue
                            }
                            try await transport.send(MailMessage.render(mail, from: from), from: from, to: mail.recipient)
                            if try await queue.markSent(id: item.id) {
                                logger.info("mail delivered", metadata: ["outbox_id": "\(item.id)"])
                            } else {
                                // Withdrawn in the moment the relay had it: the link it carries is dead.
                                logger.notice("mail delivered, though withdrawn from the outbox while the relay took it (its link is dead)", metadata: ["outbox_id": "\(item.id)"])
                            }
                        } catch {
                            try await queue.markFailed(id: item.id, attempts: item.attempts, error: "\(error)")
                            logger.warning("mail delivery failed; will retry", metadata: ["outbox_id": "\(item.id)", "error": "\(error)"])
                        }
                    }
                } catch {
                    logger.error("outbox read failed", metadata: ["error": "\(error)"])
                }
                try? await Task.sleep(for: pollInterval)
            }
        }
    }
}
