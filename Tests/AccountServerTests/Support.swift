@testable import AccountServer
import Accounts
import AsyncHTTPClient
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOSSL
import ServiceLifecycle
import Synchronization
import X509

/// The PKI matrix of the integration tests, written to a temporary directory.
struct TestPKI {
    static let allowedCN = "sas.test.invalid"
    static let allowedOU = "SAS"
    static let forgedLogLine = "2026-11-29T00:00:00.000Z critical account-server: admin token rotated"

    let directory: URL
    let ca: IssuedCertificate
    let otherCA: IssuedCertificate
    /// Issued by `ca`; no CRL of its own is ever published.
    let intermediate: IssuedCertificate
    /// The vendor's internal CA for the proxy's own client certificate (proxy mTLS).
    let proxyCA: IssuedCertificate
    static let proxyCN = "fhir-proxy.internal"
    let server: IssuedCertificate
    let clients: [String: IssuedCertificate]

    var caPath: String { directory.appendingPathComponent("ca.pem").path }
    var proxyCAPath: String { directory.appendingPathComponent("proxy-ca.pem").path }
    var proxyCertificatePath: String { directory.appendingPathComponent("proxy.pem").path }
    var proxyKeyPath: String { directory.appendingPathComponent("proxy-key.pem").path }
    var crlPath: String { directory.appendingPathComponent("crl.pem").path }
    var serverCertificatePath: String { directory.appendingPathComponent("server.pem").path }
    var serverKeyPath: String { directory.appendingPathComponent("server-key.pem").path }

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("pki-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        ca = try PKIBuilder.makeCA(commonName: "Test IGC-Santé CA")
        otherCA = try PKIBuilder.makeCA(commonName: "Some other CA")
        intermediate = try PKIBuilder.makeCA(commonName: "Test IGC-Santé intermediate CA", issuer: ca)
        proxyCA = try PKIBuilder.makeCA(commonName: "Vendor internal CA")
        server = try PKIBuilder.issue(commonName: "localhost", organizationalUnit: nil, usage: .server, dnsNames: ["localhost"], ipAddresses: [[127, 0, 0, 1]], issuer: ca)
        let day: TimeInterval = 86400
        clients = [
            "valid": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .client, issuer: ca),
            "valid-later-revoked": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .client, issuer: ca),
            "wrong-cn": try PKIBuilder.issue(commonName: "intruder.invalid", organizationalUnit: Self.allowedOU, usage: .client, issuer: ca),
            "wrong-ou": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: "OTHER", usage: .client, issuer: ca),
            "revoked": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .client, issuer: ca),
            "expired": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .client,
                                            notBefore: Date().addingTimeInterval(-30 * day), notAfter: Date().addingTimeInterval(-day), issuer: ca),
            "not-yet-valid": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .client,
                                                  notBefore: Date().addingTimeInterval(day), notAfter: Date().addingTimeInterval(30 * day), issuer: ca),
            "other-ca": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .client, issuer: otherCA),
            "server-usage": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .server, issuer: ca),
            // A subject that tries to write its own log line.
            "via-intermediate": try PKIBuilder.issue(commonName: Self.allowedCN, organizationalUnit: Self.allowedOU, usage: .client, issuer: intermediate),
            "proxy": try PKIBuilder.issue(commonName: Self.proxyCN, organizationalUnit: nil, usage: .client, issuer: proxyCA),
            "crlf-subject": try PKIBuilder.issue(commonName: "x\r\n\(Self.forgedLogLine)", organizationalUnit: Self.allowedOU, usage: .client, issuer: ca),
        ]
        try write(try ca.certificatePEM, "ca.pem")
        try write(try proxyCA.certificatePEM, "proxy-ca.pem")
        try write(try clients["proxy"]!.certificatePEM, "proxy.pem")
        try write(clients["proxy"]!.privateKeyPEM, "proxy-key.pem")
        try write(try server.certificatePEM, "server.pem")
        try write(server.privateKeyPEM, "server-key.pem")
        try writeCRL(revoking: ["revoked"])
    }

    /// Private keys are written 0600, as the server requires of a key file.
    func write(_ text: String, _ name: String) throws {
        let url = directory.appendingPathComponent(name)
        try Data(text.utf8).write(to: url, options: .atomic)
        if name.hasSuffix("key.pem") { try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: url.path) }
    }

    /// Publishes a new CRL (atomic rename, as a PKI sync job would).
    func writeCRL(revoking names: [String]) throws {
        let serials = try names.map { name in
            guard let client = clients[name] else { throw FixtureFailure("no client certificate named \(name)") }
            return client.certificate.serialNumber
        }
        try write(PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: ca, revoked: serials)), "crl.pem")
    }

    /// Client TLS settings presenting `name`'s certificate (nil: no certificate).
    func clientTLS(_ name: String?, maximumVersion: TLSVersion = .tlsv13, minimumVersion: TLSVersion = .tlsv1) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.trustRoots = .certificates([try NIOSSLCertificate(bytes: Array(try ca.certificatePEM.utf8), format: .pem)])
        tls.minimumTLSVersion = minimumVersion
        tls.maximumTLSVersion = maximumVersion
        if let name {
            // A misspelt name must not quietly become "no certificate", which a refusal test
            // would then pass for the wrong reason.
            guard let client = clients[name] else { throw FixtureFailure("no client certificate named \(name)") }
            tls.certificateChain = [.certificate(try NIOSSLCertificate(bytes: Array(try client.certificatePEM.utf8), format: .pem))]
            if client.certificate.issuer == intermediate.certificate.subject {
                tls.certificateChain.append(.certificate(try NIOSSLCertificate(bytes: Array(try intermediate.certificatePEM.utf8), format: .pem)))
            }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: Array(client.privateKeyPEM.utf8), format: .pem))
        }
        return tls
    }
}

/// The server's logs in memory, written by the real text handler (escaping included).
final class CapturedLogs: Sendable {
    private let sink = LogLineSink(capturing: true)

    var all: [String] { sink.captured }

    func handler(label: String) -> some LogHandler {
        var handler = LogLineHandler(label: label, format: .text, sink: sink)
        handler.logLevel = .trace
        return handler
    }
}

/// The real server (``buildApplication``) on an ephemeral loopback port.
final class RunningServer: Sendable {
    let port: Int
    let webPort: Int
    let adminPort: Int
    let forwardAuthPort: Int
    let adminToken: String
    /// `--database` of the server, and a handle of the test's own on it (to look inside).
    let databaseArgument: String
    let database: AccountDatabase
    let logs: CapturedLogs
    private let group: ServiceGroup
    private let task: Task<Void, any Error>

    var baseURL: String { "https://localhost:\(port)" }

    private init(port: Int, webPort: Int, adminPort: Int, forwardAuthPort: Int, adminToken: String, databaseArgument: String, database: AccountDatabase, logs: CapturedLogs,
                 group: ServiceGroup, task: Task<Void, any Error>) {
        self.port = port
        self.webPort = webPort
        self.adminPort = adminPort
        self.forwardAuthPort = forwardAuthPort
        self.adminToken = adminToken
        self.logs = logs
        self.databaseArgument = databaseArgument
        self.database = database
        self.group = group
        self.task = task
    }

    var webURL: String { "https://localhost:\(webPort)" }
    var adminURL: String { "http://127.0.0.1:\(adminPort)" }
    var forwardAuthURL: String { "http://127.0.0.1:\(forwardAuthPort)" }

    static func start(pki: TestPKI, crlPollInterval: Duration = .seconds(5), logLevel: Logger.Level = .info, configure: (inout ServerConfiguration) -> Void = { _ in }) async throws -> RunningServer {
        let base = ServerConfiguration(
            database: try StorageLocation(try await TestStore.argument(in: pki.directory.appendingPathComponent("db-\(UUID().uuidString)"))),
            databasePoolSize: 4, databasePoolMinimum: 0,
            argon2: Argon2Parameters(memoryKiB: 256, iterations: 1, parallelism: 1), argon2Threads: 2,
            fhir: FHIRListenerConfiguration(host: "127.0.0.1", port: 0,
                                            tlsCertificatePath: pki.serverCertificatePath, tlsKeyPath: pki.serverKeyPath,
                                            clientCAPaths: [pki.caPath], clientCRLPaths: [pki.crlPath],
                                            allowedClientCommonNames: [TestPKI.allowedCN], allowedClientOrganizationalUnits: [TestPKI.allowedOU],
                                            crlPollInterval: crlPollInterval)
        )
        var configuration = base
        configuration.web.port = 0
        let keyNotChosen = "secret key chosen by the database"
        configuration.secretKeyPath = keyNotChosen
        configuration.admin.port = 0
        configuration.forwardAuth.port = 0
        configuration.admin.tokenPath = pki.directory.appendingPathComponent("admin-\(UUID().uuidString).token").path
        configure(&configuration)
        if configuration.secretKeyPath == keyNotChosen {
            // One key per database, as in a deployment: a server started again on a database
            // finds the key it was sealed with (start-up refuses another one).
            let name = configuration.database.argument.unicodeScalars.reduce(UInt64(14_695_981_039_346_656_037)) { ($0 ^ UInt64($1.value)) &* 1_099_511_628_211 }
            configuration.secretKeyPath = pki.directory.appendingPathComponent("secret-\(String(name, radix: 16)).key").path
        }
        let logs = CapturedLogs()
        var logger = Logger(label: "test-server", factory: logs.handler(label:))
        logger.logLevel = logLevel
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let (webPorts, webContinuation) = AsyncStream.makeStream(of: Int.self)
        let (adminPorts, adminContinuation) = AsyncStream.makeStream(of: Int.self)
        let (forwardPorts, forwardContinuation) = AsyncStream.makeStream(of: Int.self)
        let app = try await buildApplication(configuration, logger: logger, onFHIRListening: { port in continuation.yield(port) },
                                             onWebListening: { port in webContinuation.yield(port) },
                                             onAdminListening: { port in adminContinuation.yield(port) },
                                             onForwardAuthListening: { port in forwardContinuation.yield(port) })
        let group = ServiceGroup(configuration: .init(services: [.init(service: app)], logger: logger))
        let task = Task {
            // A run that ends (fails to bind, a service throws) ends the port streams too, so
            // the start below fails with the server's error instead of waiting forever.
            defer { for finish in [continuation.finish, webContinuation.finish, adminContinuation.finish, forwardContinuation.finish] { finish() } }
            try await group.run()
        }
        var iterator = ports.makeAsyncIterator()
        var webIterator = webPorts.makeAsyncIterator()
        var adminIterator = adminPorts.makeAsyncIterator()
        var forwardIterator = forwardPorts.makeAsyncIterator()
        guard let port = await iterator.next(), let webPort = await webIterator.next(), let adminPort = await adminIterator.next(),
              let forwardAuthPort = await forwardIterator.next() else {
            do { try await task.value } catch { throw ConfigurationError(description: "server did not start: \(error)") }
            throw ConfigurationError(description: "server did not start")
        }
        // No shared token (`--no-shared-admin-token`): the tests give a named one.
        let token = configuration.admin.sharedToken
            ? try String(contentsOfFile: configuration.admin.tokenPath, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) : ""
        return RunningServer(port: port, webPort: webPort, adminPort: adminPort, forwardAuthPort: forwardAuthPort, adminToken: token,
                             databaseArgument: configuration.database.argument, database: try await TestStore.open(configuration.database.argument, poolSize: 2),
                             logs: logs, group: group, task: task)
    }

    /// Stops the server; a server that had failed on its own (a service thrown out of the
    /// group mid-test) fails the test here rather than going unnoticed.
    func stop() async {
        await group.triggerGracefulShutdown()
        do { try await task.value } catch is CancellationError {} catch {
            Issue.record("the server under test ended with an error: \(error)")
        }
        await database.close()
    }

    func accountCount() async throws -> Int {
        try await database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account") ?? 0 }
    }

    func auditEvents() async throws -> [AuditEvent] {
        try await database.read { db in try AuditLog().events(in: db) }
    }
}

import Storage
import Testing
import StorageTesting

/// A FHIR answer as the tests look at it.
struct FHIRReply {
    var status: Int
    var headers: HTTPHeaders
    var body: String

    var json: JSONValue? { try? JSONParser().parse(Array(body.utf8)) }

    subscript(member: String) -> JSONValue? {
        guard case .object(let object)? = json else { return nil }
        return object[member]
    }

    /// The `expression`s of an OperationOutcome's issues.
    var issueExpressions: [String] { issueStrings("expression") }

    /// The `location`s of an OperationOutcome's issues (`http.identifier`).
    var issueLocations: [String] { issueStrings("location") }

    /// The `diagnostics` of an OperationOutcome's issues.
    var issueDiagnostics: [String] {
        guard case .array(let issues)? = self["issue"] else { return [] }
        return issues.compactMap { issue in
            guard case .object(let object) = issue, case .string(let text)? = object["diagnostics"] else { return nil }
            return text
        }
    }

    private func issueStrings(_ member: String) -> [String] {
        guard case .array(let issues)? = self["issue"] else { return [] }
        return issues.flatMap { issue -> [String] in
            guard case .object(let object) = issue, case .array(let values)? = object[member] else { return [] }
            return values.compactMap { if case .string(let text) = $0 { return text } else { return nil } }
        }
    }
}

/// An mTLS client for one certificate of the PKI.
struct FHIRClient {
    private let owned: OwnedHTTPClient
    var client: HTTPClient { owned.client }
    let server: RunningServer?
    /// The server's own listener, or a proxy in front of it.
    let baseURL: String

    /// - Parameter readTimeout: how long an answer may keep the client waiting for its next
    ///   bytes (raise it for requests sent many at once on a loaded machine).
    init(pki: TestPKI, certificate: String?, server: RunningServer?, baseURL: String? = nil,
         maximumVersion: TLSVersion = .tlsv13, minimumVersion: TLSVersion = .tlsv1, readTimeout: TimeAmount = .seconds(30)) throws {
        self.baseURL = baseURL ?? server?.baseURL ?? ""
        var configuration = HTTPClient.Configuration(tlsConfiguration: try pki.clientTLS(certificate, maximumVersion: maximumVersion, minimumVersion: minimumVersion))
        // Generous: AsyncHTTPClient also applies the connect timeout to a request waiting for a
        // pooled connection, and 40 concurrent calls on a loaded 2-core CI machine wait long.
        configuration.timeout = .init(connect: .seconds(30), read: readTimeout)
        // Calls sent at once go at once, each on its own connection (the default, 8, queued
        // the rest of the 40 of `concurrentCallsOverTheWire` behind the first: on PostgreSQL
        // with the whole suite beside it, one waited more than the connect timeout for a
        // connection, 2026-12-01).
        configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 48
        owned = OwnedHTTPClient(configuration)
        self.server = server
    }

    /// - Parameter timeout: for the whole exchange, the wait for a pooled connection included
    ///   (raise it for requests sent many at once on a loaded machine).
    func send(_ method: HTTPMethod, _ path: String, body: String? = nil, contentType: String? = "application/fhir+json",
              headers extra: [(String, String)] = [], timeout: TimeAmount = .seconds(30)) async throws -> FHIRReply {
        var request = HTTPClientRequest(url: baseURL + path)
        request.method = method
        if let contentType, body != nil { request.headers.add(name: "Content-Type", value: contentType) }
        for (name, value) in extra { request.headers.add(name: name, value: value) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await client.execute(request, timeout: timeout)
        let bytes = try await response.body.collect(upTo: 4 << 20)
        return FHIRReply(status: Int(response.status.code), headers: response.headers, body: String(buffer: bytes))
    }

    func shutdown() async {
        await owned.shutdown()
    }
}

enum Bodies {
    /// Tests/Examples: the published examples, kept in the repository.
    static let examples: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Examples")

    static func example(_ name: String) throws -> String {
        try String(contentsOf: examples.appendingPathComponent(name), encoding: .utf8)
    }

    static func practitioner(national: String? = nil, technical: String? = nil, active: Bool = true, family: String = "MARIUS",
                             given: String = "Jules", email: String = "jules.marius@test.com") -> String {
        var identifiers: [String] = []
        if let national {
            identifiers.append(#"{"type":{"coding":[{"system":"http://interopsante.org/fhir/CodeSystem/fr-v2-0203","code":"IDNPS"}]},"system":"urn:oid:1.2.250.1.71.4.2.1","value":"\#(national)"}"#)
        }
        if let technical {
            identifiers.append(#"{"type":{"coding":[{"system":"http://interopsante.org/fhir/CodeSystem/fr-v2-0203","code":"INTRN"}]},"system":"urn:oid:1.2.250.1.213.3.6","value":"\#(technical)"}"#)
        }
        return #"{"resourceType":"Practitioner","id":"example-regulator-1","meta":{"source":"urn:oid:1.2.250.1.213.3.6"},"identifier":[\#(identifiers.joined(separator: ","))],"active":\#(active),"name":[{"family":"\#(family)","given":["\#(given)"]}],"telecom":[{"system":"email","value":"\#(email)"}]}"#
    }
}

/// An `HTTPClient` that cannot be dropped un-shut-down. AsyncHTTPClient traps in debug builds
/// when a client is deinitialised before `shutdown()`, so a test that threw between creating a
/// client and shutting it down used to take the whole test process down with it. Owners call
/// `shutdown()` when they are done; if a throw skips that, the deinit starts the shutdown.
final class OwnedHTTPClient: Sendable {
    let client: HTTPClient
    private let closed = Atomic<Bool>(false)

    init(_ configuration: HTTPClient.Configuration = .init()) {
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    func shutdown() async {
        guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
        try? await client.shutdown()
    }

    deinit {
        // The client keeps itself alive until its shutdown completes.
        if !closed.load(ordering: .acquiring) { client.shutdown().whenComplete { _ in } }
    }
}

/// Runs `body` with a client that is shut down however `body` ends.
func withHTTPClient<T>(_ configuration: HTTPClient.Configuration = .init(),
                       _ body: (HTTPClient) async throws -> T) async throws -> T {
    let owned = OwnedHTTPClient(configuration)
    do {
        let result = try await body(owned.client)
        await owned.shutdown()
        return result
    } catch {
        await owned.shutdown()
        throw error
    }
}

/// A fixture that could not be set up: thrown (never `precondition`), so only its test fails.
struct FixtureFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held. Tests wait
/// for an observable effect this way instead of sleeping a fixed time and hoping.
func eventually(timeout: Duration = .seconds(10), every interval: Duration = .milliseconds(50),
                _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await condition() { return true }
        if ContinuousClock.now >= deadline { return false }
        try await Task.sleep(for: interval)
    }
}

/// Clients/raw_http.py, the raw HTTP/1.1 client of the tests' inline Python scripts: pass
/// ``folder`` as the script's first argument, and the script starts with
/// ``preamble``.
enum RawHTTP {
    static let folder = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Clients").path
    static let preamble = "import json, sys\nsys.path.insert(0, sys.argv[1])\nfrom raw_http import connect, read_answers, read_head, read_until_close\n"
}
