@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL

/// A loopback port free right now, for a process the test starts to listen on.
func freeLoopbackPort() -> Int {
    freeLoopbackPorts(1)[0]
}

/// `count` distinct free ports, chosen below the kernel's ephemeral range and never twice in
/// this process. A port the kernel hands out for port 0 can be handed out again to the next
/// listener bound to port 0, or to an outgoing connection, before the test's process binds
/// it: seen in a full run, where another test's in-process listener took nginx's port and
/// the test's TLS client reached that plain listener. Below the ephemeral range the kernel
/// never chooses a port itself.
func freeLoopbackPorts(_ count: Int) -> [Int] {
    var ports: [Int] = []
    while ports.count < count {
        let candidate = Int.random(in: 10_000..<ephemeralPortsStart)
        guard handedOutPorts.withLockedValue({ $0.insert(candidate).inserted }), let probe = DeadPort(port: candidate) else { continue }
        probe.release()
        ports.append(candidate)
    }
    return ports
}

/// The first port of the kernel's ephemeral range (ip_local_port_range).
private let ephemeralPortsStart: Int = {
    let text = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8)) ?? ""
    let low = text.split(whereSeparator: \.isWhitespace).first.flatMap { Int($0) } ?? 32_768
    return max(low, 20_000)
}()

private let handedOutPorts = NIOLockedValueBox<Set<Int>>([])

/// Runs a program to its end; its exit status and what it wrote. Spawned and reaped directly
/// (posix_spawn, waitpid), its output in files: with pipes, a process another test starts
/// meanwhile may inherit a pipe's write end and keep "end of file" from ever coming (seen:
/// a run stalled reading a browser script's output), and Foundation's `Process` wait was
/// seen not to return when tests spawn other children.
func spawnAndWait(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) async throws -> (status: Int32, output: Data, errors: Data) {
    try await onDedicatedThread { spawnAndWaitHere(executable, arguments, environment: environment) }
}

/// ``spawnAndWait(_:_:environment:)`` on the calling thread (which it blocks).
func spawnAndWaitHere(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) -> (status: Int32, output: Data, errors: Data) {
    let directory = FileManager.default.temporaryDirectory
    let output = directory.appendingPathComponent("spawn-\(UUID().uuidString).out"), errors = directory.appendingPathComponent("spawn-\(UUID().uuidString).err")
    defer {
        try? FileManager.default.removeItem(at: output)
        try? FileManager.default.removeItem(at: errors)
    }
    let status = { () -> Int32 in
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, errors.path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        // Nothing else of this process: a child inherits every descriptor not marked
        // close-on-exec (a probe's socket, another test's pipe or script being written), and a
        // long-lived one (PostgreSQL, a browser) would keep it open for its whole life.
        closeFromOnSpawn(&actions, 3)
        let words = [executable] + arguments
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        let environmentWords: [UnsafeMutablePointer<CChar>?]? = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { environmentWords?.forEach { free($0) } }
        var pid: pid_t = 0
        let spawned = environmentWords.map { words in posix_spawn(&pid, executable, &actions, nil, argv, words) } ?? posix_spawn(&pid, executable, &actions, nil, argv, environ)
        guard spawned == 0 else { return -1 }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 && errno == EINTR {}
        return (status >> 8) & 0xff
    }()
    return (status, (try? Data(contentsOf: output)) ?? Data(), (try? Data(contentsOf: errors)) ?? Data())
}

/// glibc's `posix_spawn_file_actions_addclosefrom_np` (2.34 and later; Debian 12 has 2.36),
/// which Swift's Glibc module does not import: looked up by name.
private let addCloseFrom: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np").map {
        unsafeBitCast($0, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    }
}()

/// Closes every descriptor from `lowest` in the spawned child (an older glibc without the call:
/// children inherit what is not close-on-exec, as before).
func closeFromOnSpawn(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ lowest: Int32) {
    _ = addCloseFrom?(actions, lowest)
}

/// A loopback port that refuses connections for as long as it is held: bound, never
/// listening, so no other listener can take it.
final class DeadPort: Sendable {
    let port: Int
    private let descriptor: Int32

    /// A port of the kernel's choice.
    convenience init() {
        self.init(port: 0)!
    }

    /// `port` (0: the kernel's choice), or nil if it is taken.
    init?(port requested: Int) {
        let descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.descriptor = descriptor
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(requested).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, length) } }
        guard bound == 0 else {
            close(descriptor)
            return nil
        }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) } }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    /// Accepts connections (in the kernel's backlog) and never answers: an upstream that hangs.
    func listenSilently() { _ = Glibc.listen(descriptor, 16) }

    func release() { close(descriptor) }
}

/// A real SMTP server on loopback (Debian's python3-aiosmtpd) delivering to a maildir.
final class SMTPSink: Sendable {
    let port: Int
    let maildir: URL
    private let process: Process

    init() async throws {
        maildir = FileManager.default.temporaryDirectory.appendingPathComponent("maildir-\(UUID().uuidString)")
        for sub in ["new", "cur", "tmp"] {
            try FileManager.default.createDirectory(at: maildir.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        for _ in 0..<20 {
            let candidate = freeLoopbackPort()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
            process.arguments = ["-m", "aiosmtpd", "-n", "-l", "127.0.0.1:\(candidate)", "-c", "aiosmtpd.handlers.Mailbox", maildir.path]
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            for _ in 0..<50 {
                try await Task.sleep(for: .milliseconds(100))
                if !process.isRunning { break }
                if Self.accepts(port: candidate) {
                    self.port = candidate
                    self.process = process
                    return
                }
            }
            kill(process.processIdentifier, SIGKILL)
        }
        throw MailError(description: "could not start aiosmtpd (is python3-aiosmtpd installed?)")
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }

    /// Every message delivered so far, oldest first: headers and decoded body as text.
    func messages() throws -> [String] {
        let directory = maildir.appendingPathComponent("new")
        let files = try FileManager.default.contentsOfDirectory(at: directory, includingPropertiesForKeys: [.contentModificationDateKey])
        let dated = try files.map { ($0, try $0.resourceValues(forKeys: [.contentModificationDateKey]).contentModificationDate ?? .distantPast) }
        return try dated.sorted { $0.1 < $1.1 }.map { file, _ in
            let raw = try String(contentsOf: file, encoding: .utf8).replacingOccurrences(of: "\r\n", with: "\n")
            let parts = raw.components(separatedBy: "\n\n")
            let body = parts.dropFirst().joined(separator: "\n\n").replacingOccurrences(of: "\n", with: "")
            let decoded = Data(base64Encoded: body).flatMap { String(data: $0, encoding: .utf8) } ?? body
            return parts[0] + "\n\n" + decoded
        }
    }

    /// Waits for the `number`-th message (1-based) and returns the reset token it carries.
    func resetToken(number: Int, timeout: Duration = .seconds(30)) async throws -> String? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            let all = try messages()
            if all.count >= number, let range = all[number - 1].range(of: #"jeton=[A-Za-z0-9_-]+"#, options: .regularExpression) {
                return String(all[number - 1][range].dropFirst("jeton=".count))
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        return nil
    }

    /// aiosmtpd does not exit on SIGTERM while its asyncio loop runs: SIGKILL, and reap it.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// A test that threw before ``stop()`` left its aiosmtpd running after the suite ended
    /// (seen: one per run on 2026-12-01).
    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

/// A browser-like HTTPS client: keeps cookies (one jar per origin, as a browser keeps them
/// per host), does not follow redirects, reads forms.
final class Browser: @unchecked Sendable {
    private let owned: OwnedHTTPClient
    var client: HTTPClient { owned.client }
    let base: String
    /// Cookies by origin (`https://host:port`).
    var jars: [String: [String: String]] = [:]
    /// Send `Connection: close`: each request on a new connection (behind a TCP load
    /// balancer, consecutive requests then reach different instances).
    var closeConnections = false
    /// Sent with every request (a `User-Agent`, as a real browser sends one).
    var defaultHeaders: [(String, String)] = []
    /// The cookies of the server under test (`base`).
    var cookies: [String: String] {
        get { jars[base] ?? [:] }
        set { jars[base] = newValue }
    }

    static func origin(of url: String) -> String {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let host = components.host else { return url }
        return "\(scheme)://\(host)\(components.port.map { ":\($0)" } ?? "")"
    }

    struct Page {
        var status: Int
        var headers: HTTPHeaders
        var body: String
        var location: String? { headers.first(name: "Location") }

        /// The CSRF token of the page's form.
        var csrf: String? { capture(#"name="csrf" value="([^"]+)""#) }

        func capture(_ pattern: String) -> String? {
            guard let regex = try? NSRegularExpression(pattern: pattern),
                  let match = regex.firstMatch(in: body, range: NSRange(body.startIndex..., in: body)),
                  let range = Range(match.range(at: 1), in: body) else { return nil }
            return String(body[range])
        }
    }

    init(pki: TestPKI, base: String) throws {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(try pki.ca.certificatePEM.utf8), format: .pem)])
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls, redirectConfiguration: .disallow)
        // AsyncHTTPClient applies the connect timeout to a request waiting for a pooled
        // connection too: generous, and a connection per page fetched at once (as FHIRClient).
        configuration.timeout = .init(connect: .seconds(30), read: .seconds(30))
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
        owned = OwnedHTTPClient(configuration)
        self.base = base
    }

    /// `cookiesOf`: send the cookies of that origin instead of the URL's own (a proxy's
    /// forward-auth subrequest carries the browser's cookies of the agenda's host).
    func request(_ method: HTTPMethod, _ path: String, form: [String: String]? = nil, headers extra: [(String, String)] = [],
                 cookiesOf: String? = nil) async throws -> Page {
        let url = path.hasPrefix("https://") || path.hasPrefix("http://") ? path : base + path
        let origin = Self.origin(of: url)
        var request = HTTPClientRequest(url: url)
        request.method = method
        let jar = jars[cookiesOf ?? origin] ?? [:]
        if !jar.isEmpty { request.headers.add(name: "Cookie", value: jar.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")) }
        for (name, value) in defaultHeaders + extra { request.headers.add(name: name, value: value) }
        if closeConnections { request.headers.add(name: "Connection", value: "close") }
        if let form {
            let allowed = CharacterSet.alphanumerics.union(CharacterSet(charactersIn: "-._~"))
            let body = form.map { "\($0.key)=\($0.value.addingPercentEncoding(withAllowedCharacters: allowed)!)" }.joined(separator: "&")
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await client.execute(request, timeout: .seconds(20))
        for header in response.headers["Set-Cookie"] {
            let pair = header.split(separator: ";")[0].split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(pair[0])
            let value = pair.count > 1 ? String(pair[1]) : ""
            let expired = header.contains("Max-Age=0") || header.contains("expires=Wed, 21 Oct 2015")
            if value.isEmpty || expired { jars[origin, default: [:]][name] = nil } else { jars[origin, default: [:]][name] = value }
        }
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return Page(status: Int(response.status.code), headers: response.headers, body: String(buffer: bytes))
    }

    func get(_ path: String) async throws -> Page { try await request(.GET, path) }

    /// `count` simultaneous GETs with the current cookies (the jar is not touched).
    func concurrentGets(_ path: String, count: Int) async throws -> [Page] {
        let cookieHeader = cookies.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")
        let client = self.client
        let url = base + path
        return try await withThrowingTaskGroup(of: Page.self) { group in
            for _ in 0..<count {
                group.addTask {
                    var request = HTTPClientRequest(url: url)
                    request.headers.add(name: "Cookie", value: cookieHeader)
                    let response = try await client.execute(request, timeout: .seconds(20))
                    let body = try await response.body.collect(upTo: 1 << 20)
                    return Page(status: Int(response.status.code), headers: response.headers, body: String(buffer: body))
                }
            }
            return try await group.reduce(into: [Page]()) { $0.append($1) }
        }
    }

    /// GETs `page`, then POSTs `fields` with the page's CSRF token to `action`.
    func submit(_ page: String, to action: String? = nil, _ fields: [String: String]) async throws -> Page {
        let form = try await get(page)
        var fields = fields
        fields["csrf"] = form.csrf ?? ""
        return try await request(.POST, action ?? page, form: fields)
    }

    func shutdown() async { await owned.shutdown() }
}
