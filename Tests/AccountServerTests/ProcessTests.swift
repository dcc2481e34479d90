@testable import AccountServer
import Accounts
import Crypto
import Foundation
import Habilitation
import Logging
import GRDB
import Storage
import StorageTesting
import Synchronization
import Testing
import X509

/// Tests on the real `account-server` process: durability across `kill -9`, signals.
@Suite("The account-server process")
struct ProcessTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let binary = repository.appendingPathComponent(".build/debug/account-server").path
    static let resources = repository.appendingPathComponent(".build/debug/\(PasswordPolicy.resourceFolder)").path

    /// The `--database` of the server(s) run in `directory`: created on first use (a file, or
    /// a PostgreSQL database), the same afterwards (a restart finds its data).
    static func databaseArgument(_ directory: URL) async throws -> String {
        let saved = directory.appendingPathComponent("database-argument")
        if let argument = try? String(contentsOf: saved, encoding: .utf8) { return argument }
        let argument = try await TestStore.argument(in: directory)
        try argument.write(to: saved, atomically: true, encoding: .utf8)
        return argument
    }

    /// Starts `account-server serve` on the development PKI in `directory`; returns the process
    /// and its port (read from its log).
    /// What a launched server logged, kept when a test asks for it (the log is drained either way).
    final class LogCapture: Sendable {
        private let text = Mutex("")
        func append(_ more: String) { text.withLock { $0 += more } }
        var contents: String { text.withLock { $0 } }
    }

    /// - Parameter wrapper: a command the server runs under (`setpriv` to another user), with
    ///   `executable` the server's binary.
    static func launch(directory: URL, extraArguments: [String] = [], webAddress: String = "127.0.0.1:0",
                       capture: LogCapture? = nil, wrapper: [String] = [], executable: String = binary) async throws -> (Process, Int) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: wrapper.first ?? executable)
        process.arguments = Array(wrapper.dropFirst()) + (wrapper.isEmpty ? [] : [executable]) + ["serve", "--database", try await databaseArgument(directory),
                             "--fhir-address", "127.0.0.1:0", "--dev-pki", directory.appendingPathComponent("pki").path,
                             "--argon2-memory-kib", "1024", "--argon2-iterations", "1",
                             "--web-address", webAddress, "--secret-key-file", directory.appendingPathComponent("secret.key").path,
                             "--admin-address", "127.0.0.1:0", "--admin-token-file", directory.appendingPathComponent("admin.token").path,
                             "--forward-auth-address", "127.0.0.1:0"] + extraArguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        var text = ""
        let reader = output.fileHandleForReading
        for _ in 0..<200 {
            text += String(decoding: try await onDedicatedThread { reader.availableData }, as: UTF8.self)
            if let match = text.firstMatch(of: /address=127\.0\.0\.1:(\d+)[^\n]*FHIR endpoint listening/), let port = Int(match.1) {
                // The log keeps coming (a line per request): drained until the process ends,
                // or a full pipe (64 KiB) would block the server's logging, and with it the
                // requests the test waits for.
                capture?.append(text)
                Thread.detachNewThread {
                    while true {
                        let more = reader.availableData
                        if more.isEmpty { break }
                        capture?.append(String(decoding: more, as: UTF8.self))
                    }
                }
                return (process, port)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        process.terminate()
        throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "server did not start: \(text)"])
    }

    /// An acknowledged INT_R02 write survives `kill -9` (WAL with `synchronous=FULL`), and the
    /// database is intact afterwards.
    @Test func acknowledgedWritesSurviveKill9() async throws {
        #expect(FileManager.default.isExecutableFile(atPath: Self.binary), "build the executable first (scripts/test.sh does)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("durability-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var acknowledged: [String] = []
        for round in 0..<2 {
            let (process, port) = try await Self.launch(directory: directory)
            let pki = directory.appendingPathComponent("pki")
            // Writes race the kill: some are in flight when SIGKILL lands. The kill comes once
            // a few writes were acknowledged (however slow the machine is), not after a fixed time.
            let progress = Atomic<Int>(0)
            let writer = Task { () -> [String] in
                var done: [String] = []
                for index in 0..<400 {
                    let uuid = UUID().uuidString.lowercased()
                    let status = try await Self.curlCreate(port: port, pki: pki, uuid: uuid, email: "k\(round)-\(index)@test.fr")
                    if status == "201" { done.append(uuid); progress.add(1, ordering: .relaxed) }
                    if status == nil { break }
                }
                return done
            }
            #expect(try await eventually(timeout: .seconds(60), every: .milliseconds(20)) { progress.load(ordering: .relaxed) >= 6 },
                    "writes were acknowledged before the kill")
            kill(process.processIdentifier, SIGKILL)
            // Asked of the kernel, and bounded: Foundation's wait was seen not to return when
            // the test process also spawns other children (see `Instance.isRunning`).
            var status: Int32 = 0
            for _ in 0..<300 where waitpid(process.processIdentifier, &status, WNOHANG) == 0 { try await Task.sleep(for: .milliseconds(100)) }
            acknowledged += try await writer.value
        }
        #expect(acknowledged.count > 5, "the test must have written something")
        let acknowledgedIDs = acknowledged
        if TestStore.kind == .sqlite {
            let file = try DatabaseQueue(path: try await Self.databaseArgument(directory))
            #expect(try await file.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") } == "ok")
        }
        let database = try await TestStore.open(try await Self.databaseArgument(directory), poolSize: 1)
        defer { Task { await database.close() } }
        try await database.read { db in
            let stored = Set(try String.fetchAll(db, sql: "SELECT value FROM account_identifier WHERE kind = 'INTRN'"))
            let lost = acknowledgedIDs.filter { !stored.contains($0) }
            #expect(lost.isEmpty, "acknowledged creates lost after kill -9: \(lost.count) of \(acknowledgedIDs.count)")
        }
    }

    /// SIGTERM: the server exits 0, says it closed the database, and (SQLite) leaves every
    /// commit in the database file itself, no `-wal` beside it, so a copy of that one file
    /// taken after a clean stop is whole. Its debug lines name services, never dump them.
    @Test func sigtermShutsDownGracefully() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sigterm-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let log = LogCapture()
        let (process, port) = try await Self.launch(directory: directory, extraArguments: ["--log-level", "debug"], capture: log)
        #expect(try await Self.curlCreate(port: port, pki: directory.appendingPathComponent("pki"), uuid: UUID().uuidString.lowercased(), email: "t@test.fr") == "201")
        kill(process.processIdentifier, SIGTERM)
        for _ in 0..<100 where process.isRunning { try await Task.sleep(for: .milliseconds(100)) }
        #expect(!process.isRunning, "the server must exit within 10 s of SIGTERM")
        if process.isRunning { process.terminate() } else { #expect(process.terminationStatus == 0) }
        try await Task.sleep(for: .milliseconds(200))  // the drain thread's last read
        let text = log.contents
        #expect(text.contains("database closed"))
        let services = text.matches(of: /sl-service=("[^"]*"|\S+)/).map { String($0.1) }
        #expect(!services.isEmpty && services.allSatisfy { !$0.contains("(") }, "\(Set(services))")
        guard TestStore.kind == .sqlite else { return }
        let file = try await Self.databaseArgument(directory)
        #expect(!FileManager.default.fileExists(atPath: file + "-wal"), "the WAL was checkpointed into the file and removed")
        let copy = directory.appendingPathComponent("copy.sqlite").path
        try FileManager.default.copyItem(atPath: file, toPath: copy)
        var readOnly = GRDB.Configuration()
        readOnly.readonly = true
        let queue = try DatabaseQueue(path: copy, configuration: readOnly)
        let count = try await queue.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account") }
        #expect(count == 1, "the copy of the file alone holds the account created before the stop")
    }

    /// The documented service runs as its own user, without root's capabilities: every
    /// listener must work so. (Forward-auth and the relay once set TCP_NODELAY at the socket
    /// level, where its number is SO_DEBUG: root's setsockopt succeeded, and set the wrong
    /// option; anyone else's failed, and forward-auth dropped every connection, the relay
    /// answered 502.) Run as root, the server is started as `nobody` with `setpriv`, from a
    /// copy of the binary and its resources in a folder of that user's.
    @Test func aServerRunAsAnUnprivilegedUserServesEveryListener() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("unprivileged-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        var wrapper: [String] = []
        var executable = Self.binary
        if geteuid() == 0 {
            let nobody = try #require(getpwnam("nobody"))
            let (uid, gid) = (nobody.pointee.pw_uid, nobody.pointee.pw_gid)
            executable = directory.appendingPathComponent("bin/account-server").path
            try FileManager.default.createDirectory(at: directory.appendingPathComponent("bin"), withIntermediateDirectories: true)
            try FileManager.default.copyItem(atPath: Self.binary, toPath: executable)
            try FileManager.default.copyItem(atPath: Self.resources, toPath: directory.appendingPathComponent("bin").appendingPathComponent(PasswordPolicy.resourceFolder).path)
            #expect(chown(directory.path, uid, gid) == 0)
            wrapper = ["/usr/bin/setpriv", "--reuid=\(uid)", "--regid=\(gid)", "--clear-groups", "--"]
            // PostgreSQL's CA (sslrootcert) sits in the test server's private folder: a copy
            // the server's user can read, named in the argument the launch will use.
            if TestStore.kind == .postgres {
                var location = try PostgresLocation(url: try await TestStore.argument(in: directory))
                if let root = location.rootCertificatePath {
                    let copy = directory.appendingPathComponent("db-ca.pem").path
                    try FileManager.default.copyItem(atPath: root, toPath: copy)
                    #expect(chmod(copy, 0o644) == 0)
                    location.rootCertificatePath = copy
                }
                try TestStore.url(location).write(to: directory.appendingPathComponent("database-argument"), atomically: true, encoding: .utf8)
            }
        }
        let upstream = try await SlotSearchStandIn.start()
        let log = LogCapture()
        let (process, port) = try await Self.launch(directory: directory, extraArguments: ["--fhir-upstream", "http://127.0.0.1:\(upstream.port)/fhir"],
                                                    capture: log, wrapper: wrapper, executable: executable)
        defer { process.terminate() }
        if geteuid() == 0 {
            let owner = try FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent("secret.key").path)[.ownerAccountName] as? String
            #expect(owner == "nobody", "the server ran as nobody")
        }
        var forwardAuthPort: Int?
        for _ in 0..<100 where forwardAuthPort == nil {
            forwardAuthPort = log.contents.firstMatch(of: /address=127\.0\.0\.1:(\d+)[^\n]*forward-auth listening/).flatMap { Int($0.1) }
            if forwardAuthPort == nil { try await Task.sleep(for: .milliseconds(50)) }
        }
        let forwardAuth = try await spawnAndWait("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                                                                   "http://127.0.0.1:\(try #require(forwardAuthPort))/forward-auth"])
        #expect(String(decoding: forwardAuth.output, as: UTF8.self) == "401", "forward-auth answers (no session: 401)")
        let pki = directory.appendingPathComponent("pki")
        let search = try await spawnAndWait("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                                                              "--cacert", pki.appendingPathComponent("ca.pem").path,
                                                              "--cert", pki.appendingPathComponent("sas-client.pem").path,
                                                              "--key", pki.appendingPathComponent("sas-client-key.pem").path,
                                                              "https://localhost:\(port)/Slot?start=ge2026-11-23"])
        #expect(String(decoding: search.output, as: UTF8.self) == "200", "the slot search is relayed")
        #expect(try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "u@test.fr") == "201")
        #expect(!log.contents.contains("Permission denied"), "\(log.contents)")
        await upstream.stop()
    }

    /// The binary copied without its resource folder: refused with the folder's name and
    /// exit status 1 (it trapped, exit 132, when `Bundle.module` looked for it).
    @Test func aBinaryWithoutItsResourcesIsRefusedNotCrashed() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("no-resources-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let alone = directory.appendingPathComponent("account-server").path
        try FileManager.default.copyItem(atPath: Self.binary, toPath: alone)
        let run = try await spawnAndWait(alone, ["serve", "--database", directory.appendingPathComponent("db.sqlite").path,
                                                 "--secret-key-file", directory.appendingPathComponent("secret.key").path,
                                                 "--dev-pki", directory.appendingPathComponent("pki").path,
                                                 "--admin-token-file", directory.appendingPathComponent("admin.token").path,
                                                 "--fhir-address", "127.0.0.1:0", "--web-address", "127.0.0.1:0",
                                                 "--admin-address", "127.0.0.1:0", "--forward-auth-address", "127.0.0.1:0"],
                                         environment: ["PATH": "/usr/bin:/bin"])
        let output = String(decoding: run.errors + run.output, as: UTF8.self)
        #expect(run.status == 1 && output.contains("account-server_Accounts.resources") && !output.contains("Fatal error"), "\(run.status): \(output)")
    }

    /// A listening address another process holds: the server names the addresses it wanted
    /// and exits with an error. (It used to stay up with its other listeners, serving no
    /// sign-in, until killed: the forward-auth listener did not stop on cancellation.)
    @Test func aTakenPortStopsTheServerWithAClearError() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("taken-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let taken = DeadPort()
        taken.listenSilently()
        defer { taken.release() }
        let ports = freeLoopbackPorts(3)
        let errors = directory.appendingPathComponent("errors.txt")
        _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.currentDirectoryURL = directory
        process.arguments = [
            "serve", "--database", directory.appendingPathComponent("db.sqlite").path, "--dev-pki", directory.appendingPathComponent("pki").path,
            "--secret-key-file", directory.appendingPathComponent("secret.key").path, "--admin-token-file", directory.appendingPathComponent("admin.token").path,
            "--fhir-address", "127.0.0.1:\(ports[0])", "--web-address", "127.0.0.1:\(taken.port)",
            "--admin-address", "127.0.0.1:\(ports[1])", "--forward-auth-address", "127.0.0.1:\(ports[2])",
            "--argon2-memory-kib", "1024", "--argon2-iterations", "1",
        ]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: errors)
        try process.run()
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(40)
        var status: Int32 = 0
        while waitpid(process.processIdentifier, &status, WNOHANG) == 0 && clock.now < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        let exited = clock.now < deadline
        if !exited {
            kill(process.processIdentifier, SIGKILL)
            _ = waitpid(process.processIdentifier, &status, 0)
        }
        let raw = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""
        // The other listeners' shutdown logs can land in the middle of the error line (two
        // writers on one stderr): their lines are taken out before reading it, and only they
        // (the error's own text after the cut, " in use…", keeps its leading space).
        let text = raw.replacingOccurrences(of: #"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z [^\n]*\n"#, with: "", options: .regularExpression)
        #expect(exited, "the server must exit when one of its ports is taken: \(raw.suffix(800))")
        #expect(text.contains("already in use") && text.contains("web 127.0.0.1:\(taken.port)"), "\(raw.suffix(800))")
    }

    /// A request that never ends (here a slot search whose upstream accepts and never
    /// answers) holds SIGTERM no longer than `--shutdown-timeout`: then the connection is cut
    /// and the process exits.
    @Test func sigtermDoesNotWaitForeverForAStuckRequest() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("stuck-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let upstream = DeadPort()
        upstream.listenSilently()
        defer { upstream.release() }
        let (process, port) = try await Self.launch(directory: directory, extraArguments: [
            "--fhir-upstream", "http://127.0.0.1:\(upstream.port)/fhir", "--fhir-upstream-timeout", "600", "--shutdown-timeout", "2",
        ])
        let pki = directory.appendingPathComponent("pki")
        let search = Task {
            try await spawnAndWait("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "120",
                                                     "--cacert", pki.appendingPathComponent("ca.pem").path,
                                                     "--cert", pki.appendingPathComponent("sas-client.pem").path,
                                                     "--key", pki.appendingPathComponent("sas-client-key.pem").path,
                                                     "https://localhost:\(port)/Slot?start=ge2026-11-23"])
        }
        // The search is in progress once the upstream holds a connection.
        try await Task.sleep(for: .seconds(2))
        let clock = ContinuousClock()
        let signalled = clock.now
        kill(process.processIdentifier, SIGTERM)
        var status: Int32 = 0
        while waitpid(process.processIdentifier, &status, WNOHANG) == 0 && clock.now < signalled + .seconds(60) {
            try await Task.sleep(for: .milliseconds(100))
        }
        let took = clock.now - signalled
        #expect(took < .seconds(30), "exited \(took) after SIGTERM with --shutdown-timeout 2")
        if took >= .seconds(60) { kill(process.processIdentifier, SIGKILL) }
        let answered = try await search.value
        #expect(String(decoding: answered.output, as: UTF8.self) != "200", "the stuck search was not answered as a success")
    }

    /// Settings are read through swift-configuration from three sources: the command line
    /// wins over the environment, which wins over the `--config-file` JSON; a malformed value
    /// is an error naming the flag and its variable, never a silent default.
    @Test func settingsComeFromTheCommandLineTheEnvironmentAndAFile() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("settings-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let ports = freeLoopbackPorts(5)
        let file = directory.appendingPathComponent("settings.json")
        try """
            {"web.address": "127.0.0.1:\(ports[0])", "admin.address": "127.0.0.1:\(ports[1])", "log": {"format": "json"},
             "database.pool.size": 3, "argon2": {"memory": {"kib": 1024}, "iterations": 1}}
            """.write(to: file, atomically: true, encoding: .utf8)
        var environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("ACCOUNT_SERVER_") }
        environment["ACCOUNT_SERVER_ADMIN_ADDRESS"] = "127.0.0.1:\(ports[2])"
        environment["ACCOUNT_SERVER_FORWARD_AUTH_ADDRESS"] = "127.0.0.1:\(ports[3])"
        let log = directory.appendingPathComponent("server.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["serve", "--config-file", file.path, "--database", try await Self.databaseArgument(directory),
                             "--fhir-address", "127.0.0.1:0", "--dev-pki", directory.appendingPathComponent("pki").path,
                             "--secret-key-file", directory.appendingPathComponent("secret.key").path,
                             "--admin-token-file", directory.appendingPathComponent("admin.token").path,
                             "--forward-auth-address", "127.0.0.1:\(ports[4])"]
        process.environment = environment
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        defer { kill(process.processIdentifier, SIGKILL) }
        var text = ""
        for _ in 0..<300 {
            text = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
            if text.contains("forward-auth listening") && text.contains("admin listener listening") && text.contains("web sign-in listening") { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        func line(_ message: String) -> String { text.split(separator: "\n").first { $0.contains(message) }.map(String.init) ?? "" }
        #expect(line("web sign-in listening").contains("127.0.0.1:\(ports[0])"), "the file's web.address: \(text.suffix(1500))")
        #expect(line("admin listener listening").contains("127.0.0.1:\(ports[2])"), "the environment over the file")
        #expect(line("forward-auth listening").contains("127.0.0.1:\(ports[4])"), "the command line over the environment")
        #expect(line("web sign-in listening").hasPrefix("{"), "the file's nested log.format (json)")

        // The refused starts below write nothing outside the test's folder (a development PKI
        // is generated before the settings are checked).
        environment["ACCOUNT_SERVER_DEV_PKI"] = directory.appendingPathComponent("pki").path
        environment["ACCOUNT_SERVER_SECRET_KEY_FILE"] = directory.appendingPathComponent("secret.key").path
        environment["ACCOUNT_SERVER_ADMIN_TOKEN_FILE"] = directory.appendingPathComponent("admin.token").path
        environment["ACCOUNT_SERVER_DATABASE_POOL_SIZE"] = "abc"
        let malformed = try await spawnAndWait(Self.binary, ["serve", "--database", directory.appendingPathComponent("other.sqlite").path], environment: environment)
        let complaint = String(decoding: malformed.errors, as: UTF8.self)
        #expect(malformed.status != 0 && complaint.contains("--database-pool-size (ACCOUNT_SERVER_DATABASE_POOL_SIZE) must be a whole number, got abc"), "\(complaint)")
        environment["ACCOUNT_SERVER_DATABASE_POOL_SIZE"] = nil
        let notJSON = directory.appendingPathComponent("settings.txt")
        try "fhir.address = 1".write(to: notJSON, atomically: true, encoding: .utf8)
        let badFile = try await spawnAndWait(Self.binary, ["serve", "--config-file", notJSON.path], environment: environment)
        #expect(badFile.status != 0 && String(decoding: badFile.errors, as: UTF8.self).contains("not a JSON object of settings"))
        let misspelt = directory.appendingPathComponent("misspelt.json")
        try #"{"fhir": {"upstream": {"url": "http://127.0.0.1:1/fhir"}}}"#.write(to: misspelt, atomically: true, encoding: .utf8)
        let unknownKey = try await spawnAndWait(Self.binary, ["serve", "--config-file", misspelt.path], environment: environment)
        #expect(unknownKey.status != 0 && String(decoding: unknownKey.errors, as: UTF8.self).contains("unknown setting(s) fhir.upstream.url"),
                "\(String(decoding: unknownKey.errors, as: UTF8.self))")
        let noFile = try await spawnAndWait(Self.binary, ["serve", "--config-file", directory.appendingPathComponent("none.json").path], environment: environment)
        #expect(noFile.status != 0 && String(decoding: noFile.errors, as: UTF8.self).contains("no file at"))
    }

    @Test func sighupReloadsTheCRLs() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sighup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // Polling effectively off: only the signal can bring the new CRL in.
        let (process, port) = try await Self.launch(directory: directory, extraArguments: ["--crl-poll-seconds", "3600"])
        defer { process.terminate() }
        let pki = directory.appendingPathComponent("pki")
        #expect(try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "h1@test.fr") == "201")

        // Revoke the development client certificate with the development CA.
        let caPEM = try String(contentsOf: pki.appendingPathComponent("ca.pem"), encoding: .utf8)
        let caKeyPEM = try String(contentsOf: pki.appendingPathComponent("ca-key.pem"), encoding: .utf8)
        let clientPEM = try String(contentsOf: pki.appendingPathComponent("sas-client.pem"), encoding: .utf8)
        let ca = IssuedCertificate(certificate: try Certificate(pemEncoded: caPEM), privateKey: try P256.Signing.PrivateKey(pemRepresentation: caKeyPEM))
        let client = try Certificate(pemEncoded: clientPEM)
        try PKIBuilder.crlPEM(try PKIBuilder.makeCRL(issuer: ca, revoked: [client.serialNumber]))
            .write(to: pki.appendingPathComponent("crl.pem"), atomically: true, encoding: .utf8)
        #expect(try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "h2@test.fr") == "201",
                "without SIGHUP (and with polling off) the old CRL is still in force")
        kill(process.processIdentifier, SIGHUP)
        var refused: String? = "201"
        _ = try await eventually {  // the #expect below says what was found
            refused = try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "h3-\(UUID().uuidString.prefix(6))@test.fr")
            return refused == nil || refused!.hasPrefix("4")
        }
        #expect(process.isRunning, "SIGHUP must not stop the server")
        #expect(refused == nil || refused!.hasPrefix("4"), "revoked after SIGHUP, got \(refused ?? "connection refused")")
    }

    /// Certificate rotation without downtime: new files, SIGHUP, and the next handshake gets
    /// the new certificate while the process never stops serving. A key that does not match
    /// its certificate (a half-done rotation) is refused and the previous pair stays.
    @Test func sighupRotatesTheServerCertificate() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rotation-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let (process, port) = try await Self.launch(directory: directory)
        defer { process.terminate() }
        let pki = directory.appendingPathComponent("pki")
        let before = try #require(try await Self.servedSerial(port: port, pki: pki))

        let ca = IssuedCertificate(certificate: try Certificate(pemEncoded: try String(contentsOf: pki.appendingPathComponent("ca.pem"), encoding: .utf8)),
                                   privateKey: try P256.Signing.PrivateKey(pemRepresentation: try String(contentsOf: pki.appendingPathComponent("ca-key.pem"), encoding: .utf8)))
        let renewed = try PKIBuilder.issue(commonName: "localhost", organizationalUnit: nil, usage: .server, dnsNames: ["localhost"], ipAddresses: [[127, 0, 0, 1]], issuer: ca)
        let other = try PKIBuilder.issue(commonName: "localhost", organizationalUnit: nil, usage: .server, dnsNames: ["localhost"], issuer: ca)

        // Half-done rotation: the new certificate with the key of another one.
        try renewed.certificatePEM.write(to: pki.appendingPathComponent("server.pem"), atomically: true, encoding: .utf8)
        try Self.writeKey(other.privateKeyPEM, to: pki.appendingPathComponent("server-key.pem"))
        kill(process.processIdentifier, SIGHUP)
        try await Task.sleep(for: .milliseconds(500))
        #expect(process.isRunning)
        #expect(try await Self.servedSerial(port: port, pki: pki) == before, "a mismatched pair is not taken into use")
        #expect(try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "r1@test.fr") == "201")

        // Completed rotation.
        try Self.writeKey(renewed.privateKeyPEM, to: pki.appendingPathComponent("server-key.pem"))
        kill(process.processIdentifier, SIGHUP)
        var after: String?
        _ = try await eventually {  // the #expect below says what was found
            after = try await Self.servedSerial(port: port, pki: pki)
            return after != nil && after != before
        }
        #expect(after == ClientIdentity.serialHex(renewed.certificate.serialNumber), "the renewed certificate is served: \(after ?? "-") (was \(before))")
        #expect(try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "r2@test.fr") == "201")
    }

    /// The topology flags, through the real command line: behind a proxy (certificate header,
    /// trusted proxy) and with an upstream that is down.
    @Test func topologyFlagsOnTheCommandLine() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("topology-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let closedPort = freeLoopbackPort()
        let log = LogCapture()
        let (process, port) = try await Self.launch(directory: directory, extraArguments: [
            "--fhir-client-certificate-header", "X-SSL-Client-Cert", "--fhir-trusted-proxy", "127.0.0.1",
            "--fhir-upstream", "http://127.0.0.1:\(closedPort)/fhir", "--fhir-upstream-timeout", "2",
        ], capture: log)
        defer { process.terminate() }
        // Without the proxy's own certificate, every start says what that leaves open.
        #expect(log.contents.contains("recognised by its address alone") && log.contents.contains("--fhir-proxy-client-ca"))
        let client = try Certificate(pemEncoded: try String(contentsOf: directory.appendingPathComponent("pki/sas-client.pem"), encoding: .utf8))
        let header = "X-SSL-Client-Cert: " + (ForwardedCertificate.escapedPEM(client) ?? "")
        let (missing, _) = try await onDedicatedThread { NginxMutualTLSProxyTests.curl(["http://127.0.0.1:\(port)/metadata"]) }
        #expect(missing == "403", "no certificate header")
        let (slot, body) = try await onDedicatedThread { NginxMutualTLSProxyTests.curl(["-H", header, "http://127.0.0.1:\(port)/Slot?start=ge2026-11-23"]) }
        #expect(slot == "502" && body.contains("OperationOutcome"), "\(slot) \(body)")
        let (practitioner, _) = try await onDedicatedThread {
            NginxMutualTLSProxyTests.curl(["-H", header, "-H", "Content-Type: application/fhir+json", "--data",
                                           Bodies.practitioner(technical: UUID().uuidString.lowercased(), email: "cli@test.fr"),
                                           "http://127.0.0.1:\(port)/Practitioner"])
        }
        #expect(practitioner == "201")
    }

    /// `--web-tls-certificate`/`--web-tls-key` give the web listener its own certificate (a
    /// public one, where the FHIR listener presents an IGC-Santé one), with the same TLS 1.2
    /// suites as the FHIR listener: forward secrecy and AEAD only.
    @Test func theWebListenerPresentsItsOwnCertificate() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("web-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let ca = try PKIBuilder.makeCA(commonName: "Public web CA")
        let web = try PKIBuilder.issue(commonName: "localhost", organizationalUnit: nil, usage: .server, dnsNames: ["localhost"],
                                       ipAddresses: [[127, 0, 0, 1]], issuer: ca)
        let certificate = directory.appendingPathComponent("web.pem"), key = directory.appendingPathComponent("web-key.pem")
        try web.certificatePEM.write(to: certificate, atomically: true, encoding: .utf8)
        try PrivateFile.create(path: key.path, contents: Array(web.privateKeyPEM.utf8))
        let webPort = freeLoopbackPort()
        let (process, _) = try await Self.launch(directory: directory, extraArguments: ["--web-tls-certificate", certificate.path, "--web-tls-key", key.path],
                                                 webAddress: "127.0.0.1:\(webPort)")
        defer { process.terminate() }
        func handshake(_ options: String) async throws -> String {
            let run = try await spawnAndWait("/bin/sh", ["-c", "openssl s_client -connect 127.0.0.1:\(webPort) -servername localhost \(options) </dev/null 2>&1"])
            return String(decoding: run.output, as: UTF8.self)
        }
        let served = try await spawnAndWait("/bin/sh", ["-c", "openssl s_client -connect 127.0.0.1:\(webPort) -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -serial"])
        #expect(String(decoding: served.output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).uppercased()
                == "SERIAL=" + ClientIdentity.serialHex(web.certificate.serialNumber), "the web certificate, not the FHIR one")
        #expect(try await handshake("-tls1_2 -cipher ECDHE-ECDSA-AES128-GCM-SHA256").contains("ECDHE-ECDSA-AES128-GCM-SHA256"))
        let cbc = try await handshake("-tls1_2 -cipher ECDHE-ECDSA-AES128-SHA")
        #expect(!cbc.contains("Cipher is ECDHE-ECDSA-AES128-SHA") && !cbc.contains("BEGIN CERTIFICATE"), "a CBC suite is refused: \(cbc)")
    }

    /// `serve` with another key than the database's, or none, stops with the reason (exit
    /// status 1, no trap, even with an upstream whose HTTP client was already made), and
    /// creates no key in place of the missing one.
    @Test func serveRefusesAKeyThatIsNotTheDatabases() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("key-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let (process, _) = try await Self.launch(directory: directory)
        process.terminate()
        process.waitUntilExit()
        let key = directory.appendingPathComponent("secret.key").path
        func start(_ keyPath: String) async throws -> (status: Int32, output: String) {
            let run = try await spawnAndWait(Self.binary, [
                "serve", "--database", try await Self.databaseArgument(directory), "--dev-pki", directory.appendingPathComponent("pki").path,
                "--secret-key-file", keyPath, "--admin-token-file", directory.appendingPathComponent("admin.token").path,
                "--fhir-upstream", "http://127.0.0.1:9/fhir",
                "--fhir-address", "127.0.0.1:0", "--web-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0", "--forward-auth-address", "127.0.0.1:0",
            ], environment: ["PATH": "/usr/bin:/bin"])
            return (run.status, String(decoding: run.errors + run.output, as: UTF8.self))
        }
        let other = directory.appendingPathComponent("other.key").path
        try PrivateFile.create(path: other, contents: (0..<32).map { _ in UInt8.random(in: 0...255) })
        let wrong = try await start(other)
        #expect(wrong.status == 1 && wrong.output.contains("is not the key this database was sealed with") && !wrong.output.contains("Fatal error"), "\(wrong.output)")
        let missing = directory.appendingPathComponent("missing.key").path
        let none = try await start(missing)
        #expect(none.status == 1 && none.output.contains("is missing") && !none.output.contains("Fatal error"), "\(none.output)")
        #expect(!FileManager.default.fileExists(atPath: missing))
        #expect(FileManager.default.fileExists(atPath: key))
    }

    /// Half a pair of web TLS flags stops the start: dropped, the web listener would present
    /// the FHIR certificate without a word.
    @Test func halfAWebCertificatePairIsRefused() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("web-tls-half-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let run = try await spawnAndWait(Self.binary, ["serve", "--web-tls-certificate", directory.appendingPathComponent("web.pem").path,
                                                       "--database", directory.appendingPathComponent("db.sqlite").path,
                                                       "--dev-pki", directory.appendingPathComponent("pki").path],
                                         environment: ["PATH": "/usr/bin:/bin"])
        let errors = String(decoding: run.errors, as: UTF8.self)
        #expect(run.status != 0 && errors.contains("--web-tls-certificate and --web-tls-key go together"), "\(run.status): \(errors)")
    }

    /// The relay's settings that could not work are refused at start, naming the flag: a
    /// timeout that is not a finite, bounded number (it would trap converting to
    /// milliseconds), and an upstream URL carrying credentials (never sent, and logged).
    @Test(arguments: [(["--fhir-upstream-timeout", "inf"], "--fhir-upstream-timeout must be between"),
                      (["--fhir-upstream-connect-timeout", "1e20"], "--fhir-upstream-connect-timeout must be between"),
                      (["--fhir-upstream", "https://user:secret-password@127.0.0.1:9/fhir"], "must not carry a user or password"),
                      (["--fhir-upstream-client-certificate", "/nonexistent/relay.pem"], "--fhir-upstream-client-certificate and --fhir-upstream-client-key go together"),
                      (["--fhir-upstream-client-certificate", "/nonexistent/relay.pem", "--fhir-upstream-client-key", "/nonexistent/relay-key.pem"],
                       "--fhir-upstream-client-certificate needs an https --fhir-upstream"),
                      // Refused after the upstream's HTTP client was made: closed, not a trap.
                      (["--trusted-proxy", "not-an-address"], "--trusted-proxy not-an-address is not an address or CIDR"),
                      (["--connection-limit-exempt", "10.0.0.0/33"], "--connection-limit-exempt 10.0.0.0/33 is not an address or CIDR"),
                      (["--max-connections-per-client", "1000001"], "--max-connections-per-client must be 0 (no limit) to 1000000")])
    func upstreamSettingsThatCannotWorkAreRefused(_ arguments: [String], _ message: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("upstream-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let upstream = arguments.contains("--fhir-upstream") ? [] : ["--fhir-upstream", "http://127.0.0.1:9/fhir"]
        let run = try await spawnAndWait(Self.binary, ["serve"] + upstream + arguments + [
            "--database", directory.appendingPathComponent("db.sqlite").path, "--secret-key-file", directory.appendingPathComponent("secret.key").path,
            "--dev-pki", directory.appendingPathComponent("pki").path, "--admin-token-file", directory.appendingPathComponent("admin.token").path,
            "--fhir-address", "127.0.0.1:0", "--web-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0", "--forward-auth-address", "127.0.0.1:0",
        ], environment: ["PATH": "/usr/bin:/bin"])
        let output = String(decoding: run.errors + run.output, as: UTF8.self)
        #expect(run.status != 0 && output.contains(message), "\(run.status): \(output)")
        #expect(!output.contains("secret-password"), "the password is not repeated")
        #expect(!output.contains("Fatal error"))
    }

    /// The serial number of the certificate the FHIR listener presents (openssl s_client).
    static func servedSerial(port: Int, pki: URL) async throws -> String? {
        let run = try await spawnAndWait("/bin/sh", ["-c", "openssl s_client -connect 127.0.0.1:\(port) -servername localhost -cert \(pki.path)/sas-client.pem -key \(pki.path)/sas-client-key.pem </dev/null 2>/dev/null | openssl x509 -noout -serial"])
        let text = String(decoding: run.output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.hasPrefix("serial=") else { return nil }
        return String(text.dropFirst("serial=".count)).uppercased()
    }

    /// Runs `account-server <arguments>` to completion; its exit status and standard output.
    static func run(_ arguments: [String]) async throws -> (status: Int32, output: String, errors: String) {
        let run = try await spawnAndWait(binary, arguments, environment: operatorEnvironment)
        return (run.status, String(decoding: run.output, as: UTF8.self), String(decoding: run.errors, as: UTF8.self))
    }

    /// A `$USER` that lies, and sudo's `SUDO_USER`: the audit trail names the real login.
    static let operatorEnvironment = ["USER": "forged", "SUDO_USER": "operator", "PATH": "/usr/bin:/bin"]
    static var operatorSubject: String { "cli:\(AdminCommand.login(of: getuid())) (sudo by operator)" }

    /// A duration setting out of range is refused at start with its flag named, rather than
    /// a huge value overflowing into a trap (signal 4) or an admin idle time past the 8-hour
    /// limit being silently cut.
    @Test(arguments: [("--session-idle-minutes", "99999999999999999"), ("--lockout-reset-hours", "0"),
                      ("--admin-session-idle-minutes", "481"), ("--crl-poll-seconds", "0"), ("--request-timeout", "10000000000"),
                      ("--shutdown-timeout", "0")])
    func durationsOutOfRangeAreRefused(_ flag: String, _ value: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("durations-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let run = try await spawnAndWait(Self.binary, ["serve", flag, value, "--database", directory.appendingPathComponent("db.sqlite").path,
                                                       "--secret-key-file", directory.appendingPathComponent("secret.key").path,
                                                       "--dev-pki", directory.appendingPathComponent("pki").path,
                                                       "--admin-token-file", directory.appendingPathComponent("admin.token").path],
                                         environment: ["PATH": "/usr/bin:/bin"])
        let errors = String(decoding: run.errors, as: UTF8.self)
        // (A trap would end it by a signal, with none of this on its standard error.)
        #expect(run.status != 0 && errors.contains(flag) && errors.contains("must be between"), "\(run.status): \(errors)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("db.sqlite").path), "refused before anything was created")
    }

    /// Without TLS flags the development PKI stands in, on a loopback FHIR address only: its
    /// CA key lies beside it. A server told to face a network (its environment file missing,
    /// say) refuses to start, exit 1, before creating anything.
    @Test(arguments: ["0.0.0.0:0", "[::]:0", "10.1.2.3:8443"])
    func theDevelopmentPKIServesLoopbackOnly(_ address: String) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dev-pki-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let run = try await spawnAndWait(Self.binary, ["serve", "--fhir-address", address, "--database", directory.appendingPathComponent("db.sqlite").path,
                                                       "--secret-key-file", directory.appendingPathComponent("secret.key").path,
                                                       "--dev-pki", directory.appendingPathComponent("pki").path,
                                                       "--admin-token-file", directory.appendingPathComponent("admin.token").path],
                                         environment: ["PATH": "/usr/bin:/bin"])
        let errors = String(decoding: run.errors, as: UTF8.self)
        #expect(run.status == 1 && errors.contains("development PKI serves a loopback --fhir-address only"), "\(run.status): \(errors)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("pki").path), "no development CA was generated")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("db.sqlite").path))
    }

    /// `account-server admin …` on the database of a running server: list, show, suspend,
    /// restore, unlock, revoke-sessions, audit export; every change audited as the Unix user.
    @Test func adminCommandsWorkOnTheDatabaseOfARunningServer() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("admin-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let (process, port) = try await Self.launch(directory: directory)
        defer { process.terminate() }
        let uuid = UUID().uuidString.lowercased()
        #expect(try await Self.curlCreate(port: port, pki: directory.appendingPathComponent("pki"), uuid: uuid, email: "cli@test.fr") == "201")
        let database = ["--database", try await Self.databaseArgument(directory)]

        let table = try await Self.run(["admin", "list"] + database)
        #expect(table.status == 0 && table.output.contains(uuid) && table.output.contains("active"))
        let listed = try await Self.run(["admin", "list", "cli@", "--json"] + database)
        let line = try #require(listed.output.split(separator: "\n").first)
        guard case .object(let account) = try JSONParser().parse(Array(line.utf8)), case .string(let id)? = account["id"] else {
            Issue.record("list --json: \(listed.output)")
            return
        }
        let suspended = try await Self.run(["admin", "suspend", uuid, "--reason", "contrôle"] + database)
        #expect(suspended.status == 0 && suspended.output.contains(#""changed":true"#))
        #expect(try await Self.run(["admin", "list", "--filter", "suspended", "--json"] + database).output.contains(id))
        let shown = try await Self.run(["admin", "show", "cli@test.fr"] + database)
        #expect(shown.status == 0 && shown.output.contains("\"by\": \"\(Self.operatorSubject)\"") && shown.output.contains("identifier_history"))
        #expect(try await Self.run(["admin", "restore", id, "--reason", "fin du contrôle"] + database).output.contains(#""changed":true"#))
        #expect(try await Self.run(["admin", "unlock", id] + database).output.contains(#""changed":false"#))
        let revoked = try await Self.run(["admin", "revoke-sessions", id] + database).output
        #expect(revoked.contains(#""sessions":0"#) && revoked.contains(#""reset_links":0"#), "\(revoked)")
        let missing = try await Self.run(["admin", "suspend", "nobody@nowhere.fr"] + database)
        #expect(missing.status != 0)
        let reset = try await Self.run(["admin", "reset-second-factor", id] + database)
        #expect(reset.status == 0 && reset.output.contains(#""action":"reset-second-factor""#) && reset.output.contains(#""changed":false"#), "\(reset.output)")
        // Discarding what the key sealed needs --confirm: without it, refused, nothing changed.
        let unconfirmed = try await spawnAndWait(Self.binary, ["admin", "forget-secret-key"] + database, environment: Self.operatorEnvironment)
        #expect(unconfirmed.status != 0 && String(decoding: unconfirmed.errors, as: UTF8.self).contains("give --confirm"))

        let audit = try await Self.run(["admin", "audit", "--account", id] + database)
        let actions = audit.output.split(separator: "\n").compactMap { line -> String? in
            guard case .object(let event)? = try? JSONParser().parse(Array(line.utf8)), case .string(let action)? = event["action"] else { return nil }
            return action
        }
        #expect(actions == ["create", "habilitation-withdrawn", "account-viewed", "habilitation-restored", "admin-action", "sessions-revoked", "admin-action"],
                "the unlock and the reset that changed nothing are recorded too, and the read by admin show: \(actions)")
        #expect(audit.output.contains(#""outcome":"unlock: unchanged""#) && audit.output.contains(#""outcome":"reset-second-factor: unchanged""#))
        // Both audit commands resolve any reference; an unknown one or a limit out of range
        // is an error, not an empty output taken for "no event".
        let byIdentifier = try await Self.run(["audit", "--account", uuid] + database)
        #expect(byIdentifier.status == 0 && byIdentifier.output.split(separator: "\n").count == actions.count + 1, "\(byIdentifier.output)")
        // The first export is traced before it prints (an export cut short is recorded too),
        // with the count it printed, and is not among its own lines.
        let trace = byIdentifier.output.split(separator: "\n").last ?? ""
        #expect(trace.contains(#""action":"audit-exported""#) && trace.contains(#""outcome":"\#(actions.count) event(s)""#), "\(trace)")
        // Reads through the tools are in the trail as the operator, as the API's are; a tail
        // from --after is not traced (it would read its own event at every poll).
        let everything = try await Self.run(["admin", "audit"] + database).output
        #expect(everything.contains(#""action":"accounts-listed""#) && everything.contains(#"q: \"cli@\""#), "\(everything)")
        let lastSeq = try #require(everything.split(separator: "\n").last.flatMap { line -> Int? in
            guard case .object(let event)? = try? JSONParser().parse(Array(line.utf8)), case .number(let seq)? = event["seq"] else { return nil }
            return Int(seq)
        })
        #expect(try await Self.run(["admin", "audit", "--after", String(lastSeq)] + database).status == 0)
        let tail = try await Self.run(["admin", "audit", "--after", String(lastSeq)] + database).output
        #expect(tail.split(separator: "\n").count == 1 && tail.contains(#""action":"audit-exported""#), "only the full export above, not the tails: \(tail)")
        // A limited export records what it printed, not the whole trail.
        let limited = try await Self.run(["admin", "audit", "--limit", "2"] + database)
        #expect(limited.status == 0 && limited.output.split(separator: "\n").count == 2)
        let traces = try await Self.run(["admin", "audit", "--after", String(lastSeq)] + database).output.split(separator: "\n")
        #expect(traces.count == 2 && traces.last?.contains(#""outcome":"2 event(s)""#) == true && traces.last?.contains("limit 2") == true, "\(traces)")
        for arguments in [["audit", "--account", "nosuch"], ["admin", "audit", "--limit", "-1"], ["audit", "--limit", "0"],
                          ["admin", "list", "--limit", "5000"], ["admin", "list", "--limit", "0"]] {
            let refused = try await Self.run(arguments + database)
            #expect(refused.status != 0 && refused.output.isEmpty, "\(arguments): \(refused.status) \(refused.output)")
        }
        #expect(audit.output.contains(#""actor_subject":"\#(Self.operatorSubject)""#) && !audit.output.contains("forged"), "\(audit.output)")
        #expect(audit.output.contains("reason: contrôle") && audit.output.contains("reason: fin du contrôle"))

        // erase: --confirm required; an account the SAS has active is refused; a deactivated
        // one goes, the trail keeps its events.
        let unconfirmedErase = try await Self.run(["admin", "erase", id] + database)
        #expect(unconfirmedErase.status == 1 && unconfirmedErase.errors.contains("give --confirm"), "\(unconfirmedErase)")
        let activeErase = try await Self.run(["admin", "erase", id, "--confirm"] + database)
        #expect(activeErase.status == 1 && activeErase.errors.contains("INT_R02 active:false") && activeErase.output.isEmpty, "\(activeErase)")
        let gone = UUID().uuidString.lowercased()
        #expect(try await Self.curlCreate(port: port, pki: directory.appendingPathComponent("pki"), uuid: gone, email: "gone@test.fr", active: false) == "201")
        // By its id only (admin list gives it), never by an identifier or e-mail.
        let byTechnicalID = try await Self.run(["admin", "erase", gone, "--confirm"] + database)
        #expect(byTechnicalID.status == 1 && byTechnicalID.errors.contains("account id"), "\(byTechnicalID)")
        let goneLine = try await Self.run(["admin", "list", "gone@", "--json"] + database).output
        guard case .object(let goneAccount)? = try? JSONParser().parse(Array(goneLine.utf8)), case .string(let goneID)? = goneAccount["id"] else {
            Issue.record("list: \(goneLine)")
            return
        }
        let erased = try await Self.run(["admin", "erase", goneID, "--confirm", "--reason", "fin de conservation"] + database)
        #expect(erased.status == 0 && erased.output.contains(#""action":"erase""#) && erased.output.contains(#""identifiers":1"#), "\(erased)")
        // Beside the running server the log is scrubbed too (truncated, unless one of the
        // server's own connections held it for the scrub's second: the in-process tests check
        // the truncation itself); PostgreSQL's WAL is the server's.
        let scrubbed = TestStore.kind == .sqlite ? [#""database_log":"truncated""#, #""database_log":"held-back""#] : [#""database_log":"not-applicable""#]
        #expect(scrubbed.contains { erased.output.contains($0) }, "\(erased)")
        #expect(try await Self.run(["admin", "show", goneID] + database).status == 1)
        #expect(try await Self.run(["admin", "list", "gone@"] + database).output.contains(gone) == false)
        // Its trail is still exported by its id, by both audit commands; its identifiers no
        // longer name anything.
        #expect(try await Self.run(["audit", "--account", gone] + database).status == 1)
        for command in [["audit"], ["admin", "audit"]] {
            let trail = try await Self.run(command + ["--account", goneID] + database)
            #expect(trail.status == 0 && trail.output.contains(#""action":"create""#) && trail.output.contains(#""action":"account-erased""#)
                    && trail.output.contains("reason: fin de conservation"), "\(command): \(trail)")
        }
        // erase-deactivated: every account deactivated before the date, one JSON line each;
        // the active one stays.
        let later = UUID().uuidString.lowercased()
        #expect(try await Self.curlCreate(port: port, pki: directory.appendingPathComponent("pki"), uuid: later, email: "later@test.fr", active: false) == "201")
        #expect(try await Self.run(["admin", "erase-deactivated", "--before", "2999-01-01", "--confirm"] + database).status == 64)
        let now = AuditLog.timestamp(Date())
        let dry = try await Self.run(["admin", "erase-deactivated", "--before", now, "--dry-run"] + database)
        #expect(dry.status == 0 && dry.output.split(separator: "\n").count == 2 && dry.output.contains(#""dry_run":true,"accounts":1"#)
                && dry.output.contains(#""deactivated_at""#), "\(dry)")
        #expect(try await Self.run(["admin", "list", "later@"] + database).output.contains(later), "a dry run erases nothing")
        let swept = try await Self.run(["admin", "erase-deactivated", "--before", now, "--confirm", "--reason", "fin de conservation"] + database)
        let sweptLines = swept.output.split(separator: "\n")
        #expect(swept.status == 0 && sweptLines.count == 2 && sweptLines.first?.contains(#""action":"erase""#) == true
                && sweptLines.last?.contains(#""erased":1"#) == true && scrubbed.contains { sweptLines.last?.contains($0) == true }, "\(swept)")
        #expect(try await Self.run(["admin", "list", "later@"] + database).output.contains(later) == false)
        #expect(try await Self.run(["admin", "show", id] + database).status == 0, "the active account stays")
    }

    /// `admin archive-audit`: the trail's older events moved to a file (0600, read back and
    /// checked) and removed, with a record naming the file's SHA-256, on the database of a
    /// running server that keeps appending; on PostgreSQL only as the schema owner.
    @Test func theAuditTrailIsArchivedToAFileAndRemoved() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("archive-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let (process, port) = try await Self.launch(directory: directory)
        defer { process.terminate() }
        let pki = directory.appendingPathComponent("pki")
        #expect(try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "old@test.fr") == "201")
        try await Task.sleep(for: .milliseconds(20))
        let cutoff = AuditLog.timestamp(Date())
        let runtime = try await Self.databaseArgument(directory)
        let owner = ["--database", try TestStore.ownerArgument(of: runtime)]
        let file = directory.appendingPathComponent("audit-2026.jsonl").path

        if TestStore.kind == .postgres {
            let refused = try await Self.run(["admin", "archive-audit", "--before", cutoff, "--to", file, "--confirm", "--database", runtime])
            #expect(refused.status == 1 && refused.errors.contains("schema owner"), "\(refused)")
            #expect(!FileManager.default.fileExists(atPath: file), "nothing written for a role that may not remove")
        }
        let unconfirmed = try await Self.run(["admin", "archive-audit", "--before", cutoff, "--to", file] + owner)
        #expect(unconfirmed.status == 1 && unconfirmed.errors.contains("give --confirm"), "\(unconfirmed)")
        for before in ["2999-01-01", "yesterday"] {
            #expect(try await Self.run(["admin", "archive-audit", "--before", before, "--to", file, "--confirm"] + owner).status == 64, "\(before)")
        }
        #expect(!FileManager.default.fileExists(atPath: file))

        let archived = try await Self.run(["admin", "archive-audit", "--before", cutoff, "--to", file, "--confirm"] + owner)
        #expect(archived.status == 0, "\(archived)")
        guard case .object(let answer)? = try? JSONParser().parse(Array(archived.output.utf8)), case .number(let count)? = answer["archived"],
              case .string(let digest)? = answer["sha256"] else {
            Issue.record("archive-audit: \(archived.output)")
            return
        }
        let bytes = try Data(contentsOf: URL(fileURLWithPath: file))
        let lines = bytes.split(separator: 0x0A)
        #expect(Int(count) == lines.count && lines.count >= 1 && lines.allSatisfy { (try? JSONParser().parse(Array($0))) != nil })
        #expect(lines.contains { String(decoding: $0, as: UTF8.self).contains(#""action":"create""#) })
        #expect(SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined() == digest)
        let attributes = try FileManager.default.attributesOfItem(atPath: file)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)

        // An existing file is never replaced: refused, nothing removed.
        let again = try await Self.run(["admin", "archive-audit", "--before", AuditLog.timestamp(Date()), "--to", file, "--confirm"] + owner)
        #expect(again.status == 1 && again.errors.contains("cannot create"), "\(again)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: file)) == bytes)

        // The server goes on appending; the trail starts with the record of the archive.
        #expect(try await Self.curlCreate(port: port, pki: pki, uuid: UUID().uuidString.lowercased(), email: "new@test.fr") == "201")
        let trail = try await Self.run(["audit", "--database", runtime])
        let events = trail.output.split(separator: "\n").map(String.init)
        #expect(events.count == 2 && events.first?.contains(#""action":"audit-archived""#) == true && events.first?.contains(digest) == true
                && events.last?.contains(#""action":"create""#) == true, "\(events)")
    }

    /// A key file as an operator's rotation writes it: a new file (0600) renamed into place.
    static func writeKey(_ pem: String, to url: URL) throws {
        let staged = url.deletingLastPathComponent().appendingPathComponent(".staged-\(UUID().uuidString)")
        try PrivateFile.create(path: staged.path, contents: Array(pem.utf8))
        guard rename(staged.path, url.path) == 0 else { throw POSIXError(.EIO) }
    }

    /// A SIGHUP while the server starts (before the reload service traps it) is ignored: its
    /// default action would end the process.
    @Test func aSIGHUPDuringStartUpDoesNotEndTheProcess() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("early-hup-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["serve", "--database", try await Self.databaseArgument(directory),
                             "--fhir-address", "127.0.0.1:0", "--dev-pki", directory.appendingPathComponent("pki").path,
                             "--web-address", "127.0.0.1:0", "--secret-key-file", directory.appendingPathComponent("secret.key").path,
                             "--admin-address", "127.0.0.1:0", "--admin-token-file", directory.appendingPathComponent("admin.token").path]
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        defer { process.terminate() }
        var text = ""
        let reader = errors.fileHandleForReading
        // "settings read" is the first line; the listeners (and the reload service) start well
        // after it: the development PKI, the database and its migrations come first.
        for _ in 0..<200 where !text.contains("settings read") {
            text += String(decoding: try await onDedicatedThread { reader.availableData }, as: UTF8.self)
        }
        #expect(!text.contains("listening"), "the signal must arrive during start-up: \(text)")
        kill(process.processIdentifier, SIGHUP)
        for _ in 0..<200 where !text.contains("FHIR endpoint listening") {
            text += String(decoding: try await onDedicatedThread { reader.availableData }, as: UTF8.self)
        }
        #expect(text.contains("FHIR endpoint listening"), "\(text)")
        #expect(kill(process.processIdentifier, 0) == 0, "the process is still running")
    }

    /// `--log-format json`: every line the server writes is one JSON object.
    @Test func jsonLogFormat() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("json-logs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.binary)
        process.arguments = ["serve", "--log-format", "json", "--database", try await Self.databaseArgument(directory),
                             "--fhir-address", "127.0.0.1:0", "--dev-pki", directory.appendingPathComponent("pki").path,
                             "--web-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0", "--forward-auth-address", "127.0.0.1:0",
                             "--secret-key-file", directory.appendingPathComponent("secret.key").path,
                             "--admin-token-file", directory.appendingPathComponent("admin.token").path]
        let errors = Pipe()
        process.standardOutput = FileHandle.nullDevice
        process.standardError = errors
        try process.run()
        var text = ""
        let reader = errors.fileHandleForReading
        // The listeners start concurrently: wait for each one's line, not for whichever is last.
        let listening = ["FHIR endpoint listening", "web sign-in listening", "admin listener listening", "forward-auth listening"]
        for _ in 0..<200 where !listening.allSatisfy({ text.contains($0) }) {
            text += String(decoding: try await onDedicatedThread { reader.availableData }, as: UTF8.self)
        }
        process.terminate()
        let lines = text.split(separator: "\n")
        #expect(lines.count >= 4)
        for line in lines {
            guard case .object(let object)? = try? JSONParser().parse(Array(line.utf8)) else {
                Issue.record("not a JSON object: \(line)")
                continue
            }
            #expect(object["ts"] != nil && object["level"] != nil && object["msg"] != nil)
        }
        #expect(text.contains(#""msg":"FHIR endpoint listening""#))
    }

    /// One create with curl (a real, separate client process); the HTTP status, or nil when
    /// the server is gone.
    static func curlCreate(port: Int, pki: URL, uuid: String, email: String, active: Bool = true) async throws -> String? {
        try await onDedicatedThread { curlCreateBlocking(port: port, pki: pki, uuid: uuid, email: email, active: active) }
    }

    static func curlCreateBlocking(port: Int, pki: URL, uuid: String, email: String, active: Bool = true) -> String? {
        let body = #"{"resourceType":"Practitioner","meta":{"source":"urn:oid:1.2.250.1.213.3.6"},"identifier":[{"type":{"coding":[{"system":"http://interopsante.org/fhir/CodeSystem/fr-v2-0203","code":"INTRN"}]},"system":"urn:oid:1.2.250.1.213.3.6","value":"\#(uuid)"}],"active":\#(active),"name":[{"family":"K","given":["N"]}],"telecom":[{"system":"email","value":"\#(email)"}]}"#
        // spawnAndWaitHere: output in a file, no pipe another test's child could hold open.
        let run = spawnAndWaitHere("/usr/bin/curl", ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "60",
                                                     "--cacert", pki.appendingPathComponent("ca.pem").path,
                                                     "--cert", pki.appendingPathComponent("sas-client.pem").path,
                                                     "--key", pki.appendingPathComponent("sas-client-key.pem").path,
                                                     "-H", "Content-Type: application/fhir+json", "--data", body,
                                                     "https://localhost:\(port)/Practitioner"])
        let code = String(decoding: run.output, as: UTF8.self)
        return code.isEmpty || code == "000" ? nil : code
    }
}

/// `account-server migrate-store`: a SQLite installation moved to PostgreSQL (the PostgreSQL
/// run of the suite only).
@Suite("Moving a SQLite installation to PostgreSQL", .enabled(if: TestStore.kind == .postgres))
struct MigrateStoreTests {
    @Test func everythingIsCopiedAndVerifiedOnce() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("migrate-store-\(UUID().uuidString)")
        let file = directory.appendingPathComponent("db.sqlite").path
        // A source with a row in every kind of table: accounts (booleans), identifiers and
        // their history, the audit trail, a queued reset mail and its token, a session.
        let source = try AccountDatabase(path: file)
        let provisioner = Provisioner(database: source, hasher: PasswordHasher(parameters: Argon2Parameters(memoryKiB: 64, iterations: 1, parallelism: 1), threads: 1), sessions: SessionLedger())
        let context = CallContext(actor: AuditActor(subject: "CN=test"), requestID: "migrate")
        var ids: [String] = []
        for index in 0..<5 {
            let record = RegulatorRecord(sasTechnicalID: SASTechnicalID(UUID().uuidString.lowercased()), active: index != 2, familyName: "NOM\(index)",
                                         givenName: "Prénom", email: EmailAddress("r\(index)@test.fr")!)
            ids.append(try await provisioner.provision(.create(record), context: context).account.id)
        }
        let credentials = try CredentialStore(database: source, hasher: provisioner.hasher, box: try SecretBox(key: Array(repeating: 5, count: 32)), sessions: SessionLedger())
        try await credentials.requestPasswordReset(email: "r0@test.fr", makeMail: { token, account in
            OutgoingMail(recipient: account.email, subject: "Réinitialisation", body: "jeton=\(token)")
        }, actor: AuditActor(subject: "browser"))
        let first = ids[0]
        try await source.write { db in
            try db.execute(sql: """
                INSERT INTO web_session (id_hash, account_id, origin, created_at, last_seen_at, absolute_expires_at, oidc_id_token)
                VALUES ('h1', ?, 'sas', 1, 2, 3, ?)
                """, arguments: [first, [UInt8]([0, 1, 2, 255])])
            try db.execute(sql: """
                INSERT INTO provider_logout (jti_hash, subject, session_id, received_at, expires_at) VALUES ('j1', 'psc-sub', NULL, 1, 2)
                """)
        }
        // The source's key fingerprint, and another one on the target (a server started on it
        // once with a key of its own): the source's replaces it, and the key goes along.
        let keys = directory.appendingPathComponent("keys")
        try PrivateFile.create(path: keys.appendingPathComponent("source.key").path, contents: Array(repeating: 5, count: 32))
        _ = try await SecretKeyCheck.loadKey(path: keys.appendingPathComponent("source.key").path, database: source)
        let target = try await TestStore.emptyArgument(in: directory)
        let started = try await TestStore.open(target, poolSize: 1)
        _ = try await SecretKeyCheck.loadKey(path: keys.appendingPathComponent("other.key").path, database: started)
        await started.close()
        let copied = try await ProcessTests.run(["migrate-store", "--from", file, "--to", target])
        #expect(copied.status == 0, "\(copied.output)")
        #expect(copied.output.contains(#""table":"secret_key_check","rows":1"#), "\(copied.output)")
        let lines = copied.output.split(separator: "\n")
        #expect(lines.count == AccountSchema.tables.count, "\(copied.output)")
        #expect(lines.allSatisfy { $0.contains(#""verified":true"#) })
        let accountLine = try #require(lines.first { $0.contains(#""table":"account""#) }, "\(copied.output)")
        guard case .object(let report)? = try? JSONParser().parse(Array(accountLine.utf8)) else {
            Issue.record("not JSON: \(accountLine)")
            return
        }
        #expect(report["rows"] == .number("5") && report["verified"] == .bool(true), "\(accountLine)")
        #expect(lines.contains { $0.contains(#""table":"provider_logout""#) && $0.contains(#""rows":1"#) }, "\(copied.output)")

        let database = try await TestStore.open(target, poolSize: 1)
        let (accounts, inactive, audit, session) = try await database.read { db in
            (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account"),
             try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account WHERE NOT active"),
             try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit_event"),
             try [UInt8].fetchOne(db, sql: "SELECT oidc_id_token FROM web_session WHERE id_hash = 'h1'"))
        }
        #expect(accounts == 5 && inactive == 1 && audit == 6 && session == [0, 1, 2, 255])
        // Generated ids go on after the copied ones.
        try await database.write { db in
            try db.execute(sql: "INSERT INTO audit_event (at, surface, action, outcome) VALUES (0, 'cli', 'note', 'ok')")
        }
        let seqs = try await database.read { db in try Int.fetchAll(db, sql: "SELECT seq FROM audit_event ORDER BY seq") }
        #expect(seqs == Array(1...7), "\(seqs)")
        #expect(try await SecretKeyCheck.loadKey(path: keys.appendingPathComponent("source.key").path, database: database) == Array(repeating: 5, count: 32))
        await #expect(throws: SecretBoxError.self) { try await SecretKeyCheck.loadKey(path: keys.appendingPathComponent("other.key").path, database: database) }
        // Into a database that is not empty: refused, nothing added.
        let again = try await ProcessTests.run(["migrate-store", "--from", file, "--to", target])
        #expect(again.status != 0)
        #expect(try await database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account") } == 5)
        await database.close()
    }

    /// A `--to` naming a database that holds data is refused before anything changes in it:
    /// no migration applied to it, no row copied.
    @Test func aTargetHoldingDataIsRefusedBeforeItIsMigrated() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("migrate-store-busy-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("db.sqlite").path
        let source = try AccountDatabase(path: file)
        await source.close()
        let target = try await TestStore.emptyArgument(in: directory)
        let older = Array(AccountSchema.current.postgres.dropLast())
        let engine = try PostgresEngine(location: try PostgresLocation(url: target), poolSize: 1, logger: Logger(label: "test"))
        try await engine.migrate(Schema(sqlite: [], postgres: older))
        try await engine.write { db in
            try db.execute(sql: "INSERT INTO audit_event (at, surface, action, outcome) VALUES (0, 'cli', 'note', 'live')")
        }
        let refused = try await ProcessTests.run(["migrate-store", "--from", file, "--to", target])
        #expect(refused.status != 0)
        #expect(Set(try await engine.appliedMigrations()) == Set(older.map(\.name)), "the target was not migrated")
        await engine.close()
    }

    /// `account-server migrate --grant-to`: the owner migrates and grants; the runtime role
    /// then serves (its privileges checked in PostgresEngineTests); mistakes are refused.
    @Test func migrateGrantsTheRuntimeRole() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("migrate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let owner = try await TestStore.emptyArgument(in: directory)
        // The role exists once any test made a database for it; make sure here.
        _ = try await TestStore.argument(in: directory)
        let migrated = try await ProcessTests.run(["migrate", "--database", owner, "--grant-to", TestStore.runtimeRole])
        #expect(migrated.status == 0, "\(migrated.output)")
        #expect(migrated.output.contains(#""granted_to":"account_runtime""#) && migrated.output.contains("pg-v1-schema"), "\(migrated.output)")
        let again = try await ProcessTests.run(["migrate", "--database", owner, "--grant-to", TestStore.runtimeRole])
        #expect(again.status == 0, "idempotent: \(again.output)")
        let unknown = try await spawnAndWait(ProcessTests.binary, ["migrate", "--database", owner, "--grant-to", "no_such_role"])
        #expect(unknown.status != 0 && String(decoding: unknown.errors, as: UTF8.self).contains("no role no_such_role"),
                "\(String(decoding: unknown.errors, as: UTF8.self))")
        // The owner itself (a superuser here) would make the grants meaningless: refused, nothing granted.
        let itself = try await spawnAndWait(ProcessTests.binary, ["migrate", "--database", owner, "--grant-to", try TestStore.administrator().username])
        #expect(itself.status != 0 && String(decoding: itself.errors, as: UTF8.self).contains("cannot be the runtime role"),
                "\(String(decoding: itself.errors, as: UTF8.self))")
        let injected = try await spawnAndWait(ProcessTests.binary, ["migrate", "--database", owner, "--grant-to", "x; DROP TABLE account"])
        #expect(injected.status != 0)
        let mistyped = try await spawnAndWait(ProcessTests.binary, ["migrate", "--database", "postgress://u:secret@localhost/x"])
        #expect(mistyped.status != 0 && !FileManager.default.fileExists(atPath: "postgress:"), "a mistyped scheme is refused, not a file")
        #expect(!String(decoding: mistyped.errors + mistyped.output, as: UTF8.self).contains("secret"), "the password is not echoed")
        let sqlite = try await spawnAndWait(ProcessTests.binary, ["migrate", "--database", directory.appendingPathComponent("db.sqlite").path, "--grant-to", "x"])
        #expect(sqlite.status != 0 && String(decoding: sqlite.errors, as: UTF8.self).contains("PostgreSQL"))
        var runtime = try PostgresLocation(url: owner)
        runtime.username = TestStore.runtimeRole
        let database = try await TestStore.open(StorageLocation.postgres(runtime).argument, poolSize: 1)
        #expect(try await database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account") } == 0)
        await database.close()
    }
}

/// `account-server backup`: a verified, private copy of a SQLite installation, taken while
/// it is written to (docs/deployment.md, "Backup and restore"). SQLite files on both runs.
@Suite("Backing up a SQLite installation")
struct BackupCommandTests {
    @Test func aBackupIsOneVerifiedSnapshotReadableByItsOwnerOnly() async throws {
        let (directory, file, source, provisioner) = try SQLiteInstallation.make("backup", path: "state/account-server.sqlite")
        defer { try? FileManager.default.removeItem(at: directory) }
        let context = CallContext(actor: AuditActor(subject: "CN=test"), requestID: "backup")
        for index in 0..<5 {
            let record = RegulatorRecord(sasTechnicalID: SASTechnicalID(UUID().uuidString.lowercased()), active: true, familyName: "NOM\(index)",
                                         givenName: "Prénom", email: EmailAddress("b\(index)@test.fr")!)
            _ = try await provisioner.provision(.create(record), context: context)
        }
        // The server goes on writing while the copy is taken: the copy is one snapshot.
        let writing = Task {
            var written = 0
            while !Task.isCancelled {
                // A write interrupted by the cancellation at the end throws; it is not counted.
                if (try? await source.write({ db in
                    try db.execute(sql: "INSERT INTO audit_event (at, surface, action, outcome) VALUES (0, 'cli', 'note', 'ok')")
                })) != nil { written += 1 }
            }
            return written
        }
        let previous = umask(0o022)
        let copy = directory.appendingPathComponent("backups/copy.sqlite").path
        let backup = try await ProcessTests.run(["backup", "--database", file, "--to", copy])
        umask(previous)
        writing.cancel()
        let written = await writing.value
        #expect(backup.status == 0, "\(backup.output)")
        let lines = backup.output.split(separator: "\n")
        #expect(lines.count == AccountSchema.tables.count && lines.allSatisfy { $0.contains(#""verified":true"#) }, "\(backup.output)")
        #expect(lines.contains { $0.contains(#""table":"account""#) && $0.contains(#""rows":5,"#) }, "\(backup.output)")
        var status = stat()
        #expect(lstat(copy, &status) == 0 && status.st_mode & 0o777 == 0o600, "the copy holds password hashes and the audit trail")
        #expect(lstat(directory.appendingPathComponent("backups").path, &status) == 0 && status.st_mode & 0o777 == 0o700)
        #expect(!FileManager.default.fileExists(atPath: copy + "-wal") && !FileManager.default.fileExists(atPath: copy + "-shm"))
        let copied = try AccountDatabase(path: copy)
        let (accounts, audit) = try await copied.read { db in
            (try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM account"), try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit_event"))
        }
        let total = try await source.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit_event") }
        #expect(accounts == 5 && (audit ?? 0) >= 5 && (audit ?? 0) <= (total ?? 0), "audit \(String(describing: audit)) of \(String(describing: total)), \(written) written meanwhile")
        await copied.close()

        // A leftover -wal at the destination is refused (SQLite would replay it onto a copy).
        let leftover = directory.appendingPathComponent("backups/leftover.sqlite").path
        #expect(FileManager.default.createFile(atPath: leftover + "-wal", contents: Data("not ours".utf8)))
        let refusedLeftover = try await ProcessTests.run(["backup", "--database", file, "--to", leftover])
        #expect(refusedLeftover.status != 0 && !FileManager.default.fileExists(atPath: leftover))
        // A dangling symlink is a leftover too, named as such (and left in place).
        let dangling = directory.appendingPathComponent("backups/dangling.sqlite").path
        #expect(symlink(directory.appendingPathComponent("nowhere").path, dangling + "-journal") == 0)
        let refusedDangling = try await ProcessTests.run(["backup", "--database", file, "--to", dangling])
        #expect(refusedDangling.status == 1 && refusedDangling.errors.contains("dangling.sqlite-journal exists"), "\(refusedDangling)")
        #expect(lstat(dangling + "-journal", &status) == 0 && !FileManager.default.fileExists(atPath: dangling))
        // Never over an existing file; a missing source creates nothing.
        let again = try await ProcessTests.run(["backup", "--database", file, "--to", copy])
        // A failure exits 1 with its message alone; a malformed command line 64 with the usage.
        #expect(again.status == 1 && again.errors.contains("a backup never replaces a file") && !again.errors.contains("Usage:"), "\(again)")
        let malformed = try await ProcessTests.run(["backup", "--database", file])
        #expect(malformed.status == 64 && malformed.errors.contains("Usage:"), "\(malformed)")
        #expect(lstat(copy, &status) == 0 && status.st_size > 0)
        let missing = directory.appendingPathComponent("state/mistyped.sqlite").path
        let other = directory.appendingPathComponent("backups/other.sqlite").path
        let typo = try await ProcessTests.run(["backup", "--database", missing, "--to", other])
        #expect(typo.status == 1 && typo.errors.contains("no database at") && !typo.errors.contains("Usage:"), "\(typo)")
        #expect(!FileManager.default.fileExists(atPath: missing) && !FileManager.default.fileExists(atPath: other))
        await source.close()
    }
}

/// `account-server admin list` prints SAS-supplied names to the operator's terminal.
@Suite("The admin CLI's table")
struct AdminTableTests {
    /// A name stored before control characters were refused (the validator refuses them now)
    /// is printed escaped: no escape sequence reaches the terminal, no line is faked.
    @Test func namesAreEscapedInTheTable() async throws {
        let (directory, file, database, provisioner) = try SQLiteInstallation.make("admin-table", path: "account-server.sqlite")
        defer { try? FileManager.default.removeItem(at: directory) }
        let record = RegulatorRecord(sasTechnicalID: SASTechnicalID(UUID().uuidString.lowercased()), active: true,
                                     familyName: "Dupont\u{1B}[2J\u{1B}]52;c;AAAA\u{07}\nFAKE-ROW 810002673899", givenName: "Jean",
                                     email: EmailAddress("jean@test.fr")!)
        _ = try await provisioner.provision(.create(record), context: CallContext(actor: AuditActor(subject: "CN=test"), requestID: "table"))
        await database.close()
        let listed = try await ProcessTests.run(["admin", "list", "--database", file])
        #expect(listed.status == 0)
        #expect(!listed.output.unicodeScalars.contains { $0.value == 0x1B || $0.value == 0x07 }, "\(listed.output.debugDescription)")
        #expect(listed.output.split(separator: "\n").count == 2, "the header and one row: \(listed.output.debugDescription)")
        #expect(listed.output.contains("Dupont\\u{1b}[2J"))
    }
}

/// The command-line tools never migrate: a newer binary must not change a live database's
/// schema behind the running servers, nor an older one write to a newer schema.
@Suite("Tools and the schema version")
struct ToolSchemaTests {
    @Test func toolsRefuseADatabaseOfAnotherSchemaAndChangeNothing() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tool-schema-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let file = directory.appendingPathComponent("older.sqlite").path
        let older = Array(AccountSchema.current.sqlite.dropLast(2))
        let engine = try SQLiteEngine(path: file)
        try engine.migrateNow(Schema(sqlite: older, postgres: []))
        await engine.close()
        for arguments in [["admin", "list"], ["audit"], ["admin", "audit"]] {
            let run = try await ProcessTests.run(arguments + ["--database", file])
            #expect(run.status != 0, "\(arguments) on an older schema")
        }
        let after = try SQLiteEngine(path: file)
        #expect(try await after.appliedMigrations() == older.map(\.name), "nothing migrated")
        try after.migrateNow(AccountSchema.current)
        await after.close()
        let current = try await ProcessTests.run(["admin", "list", "--database", file])
        #expect(current.status == 0, "once migrated knowingly, the tools work: \(current.output)")
    }
}

/// A SQLite installation in a folder of its own, with a provisioner on it (cheap argon2), for
/// the command-line tools' tests.
enum SQLiteInstallation {
    static func make(_ name: String, path: String) throws -> (directory: URL, file: String, database: AccountDatabase, provisioner: Provisioner) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("\(name)-\(UUID().uuidString)")
        let file = directory.appendingPathComponent(path).path
        let database = try AccountDatabase(path: file)
        let hasher = PasswordHasher(parameters: Argon2Parameters(memoryKiB: 64, iterations: 1, parallelism: 1), threads: 1)
        return (directory, file, database, Provisioner(database: database, hasher: hasher, sessions: SessionLedger()))
    }
}
