import Accounts
import AsyncHTTPClient
import Foundation
import GRDB
import NIOCore
import NIOSSL
import Synchronization

/// `account-server-load --mode durability`: creates and updates over mTLS while the server is
/// killed with SIGKILL at random moments, restarted on the same database, and checked after
/// every kill: `PRAGMA integrity_check` is `ok`, every acknowledged (2xx) create is there, and
/// every regulator holds its last acknowledged family name — or the one whose request was in
/// flight when the server died (it may have committed without its answer getting out).
struct DurabilityRun {
    let binary: String
    let directory: URL
    let cycles: Int
    let workers: Int

    /// What one regulator is known to hold.
    struct Regulator {
        var acknowledged: String
        var inFlight: String?
    }

    final class StopFlag: Sendable {
        let raised = Atomic<Bool>(false)
    }

    final class Ledger: Sendable {
        let regulators = Mutex<[String: Regulator]>([:])
        let creates = Atomic<Int>(0)
        let updates = Atomic<Int>(0)
    }

    func run() async throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let ledger = Ledger()
        var killedAfter: [Double] = []
        for cycle in 1...cycles {
            let port = try Self.freePort()
            let server = try launch(port: port)
            let pki = directory.appendingPathComponent("pki")
            let client = try await waitUntilServing(port: port, pki: pki, server: server)
            let stop = StopFlag()
            let tasks = (0..<workers).map { worker in
                Task { await self.work(worker: worker, cycle: cycle, client: client, port: port, ledger: ledger, stop: stop) }
            }
            let delay = Double.random(in: 0.3...2.0)
            killedAfter.append(delay)
            try await Task.sleep(for: .milliseconds(Int(delay * 1000)))
            kill(server.processIdentifier, SIGKILL)
            server.waitUntilExit()
            stop.raised.store(true, ordering: .relaxed)
            for task in tasks { await task.value }
            try? await client.shutdown()
            try verify(ledger: ledger, cycle: cycle)
        }
        let count = ledger.regulators.withLock { $0.count }
        print(String(format: "DURABILITY cycles=%d regulators=%d acknowledged_creates=%d acknowledged_updates=%d lost=0 integrity=ok kill_after_s=%.2f-%.2f",
                     cycles, count, ledger.creates.load(ordering: .relaxed), ledger.updates.load(ordering: .relaxed),
                     killedAfter.min() ?? 0, killedAfter.max() ?? 0))
    }

    private func launch(port: Int) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        let path = directory.path
        process.arguments = ["serve", "--database", "\(path)/db.sqlite", "--dev-pki", "\(path)/pki", "--fhir-address", "127.0.0.1:\(port)",
                             "--web-address", "127.0.0.1:0", "--admin-address", "127.0.0.1:0", "--forward-auth-address", "127.0.0.1:0",
                             "--secret-key-file", "\(path)/secret.key", "--admin-token-file", "\(path)/admin.token",
                             "--argon2-memory-kib", "1024", "--argon2-iterations", "1", "--log-level", "error"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    private func waitUntilServing(port: Int, pki: URL, server: Process) async throws -> HTTPClient {
        for _ in 0..<300 {
            if FileManager.default.fileExists(atPath: pki.appendingPathComponent("sas-client-key.pem").path) {
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(pki.appendingPathComponent("ca.pem").path))
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(pki.appendingPathComponent("sas-client.pem").path).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: pki.appendingPathComponent("sas-client-key.pem").path, format: .pem))
                var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
                configuration.timeout = .init(connect: .seconds(1), read: .seconds(5))
                let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
                if let status = try? await LoadTool.send(client, .GET, "https://localhost:\(port)/metadata", body: nil), status == 200 {
                    return client
                }
                try? await client.shutdown()
            }
            guard server.isRunning else { throw ValidationFailure("the server exited at start") }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ValidationFailure("the server did not start")
    }

    private func work(worker: Int, cycle: Int, client: HTTPClient, port: Int, ledger: Ledger, stop: StopFlag) async {
        var counter = 0
        let base = "https://localhost:\(port)"
        while !stop.raised.load(ordering: .relaxed) {
            counter += 1
            let mine = ledger.regulators.withLock { regulators in regulators.keys.filter { $0.hasSuffix(String(format: "%012x", worker)) } }
            if mine.isEmpty || Int.random(in: 0..<10) < 3 {
                let uuid = String(UUID().uuidString.lowercased().dropLast(12)) + String(format: "%012x", worker)
                let family = "C\(cycle)N\(counter)"
                let status = try? await LoadTool.send(client, .POST, base + "/Practitioner",
                                                      body: LoadTool.body(technical: uuid, email: "\(uuid)@durability.test", family: family))
                guard let status else { return }  // the server is gone
                if status == 201 {
                    ledger.regulators.withLock { $0[uuid] = Regulator(acknowledged: family) }
                    ledger.creates.add(1, ordering: .relaxed)
                }
            } else if let uuid = mine.randomElement() {
                let family = "U\(cycle)N\(counter)"
                ledger.regulators.withLock { $0[uuid]?.inFlight = family }
                let status = try? await LoadTool.send(client, .PUT, base + "/Practitioner?identifier=urn:oid:1.2.250.1.213.3.6%7C\(uuid)",
                                                      body: LoadTool.body(technical: uuid, email: "\(uuid)@durability.test", family: family))
                guard let status else { return }  // in flight at the kill: either value is right
                ledger.regulators.withLock {
                    if status == 200 { $0[uuid] = Regulator(acknowledged: family) } else { $0[uuid]?.inFlight = nil }
                }
                if status == 200 { ledger.updates.add(1, ordering: .relaxed) }
            }
        }
    }

    private func verify(ledger: Ledger, cycle: Int) throws {
        let database = try DatabaseQueue(path: directory.appendingPathComponent("db.sqlite").path)
        defer { try? database.close() }
        let expected = ledger.regulators.withLock { $0 }
        let stored = try database.read { db -> [String: String] in
            let integrity = try String.fetchOne(db, sql: "PRAGMA integrity_check")
            guard integrity == "ok" else { throw ValidationFailure("cycle \(cycle): integrity_check said \(integrity ?? "nothing")") }
            let rows = try Row.fetchAll(db, sql: """
                SELECT i.value, a.family_name FROM account_identifier i JOIN account a ON a.id = i.account_id
                WHERE i.kind = 'INTRN' AND i.ended_at IS NULL
                """)
            return Dictionary(rows.map { (row: Row) -> (String, String) in (row["value"], row["family_name"]) }, uniquingKeysWith: { first, _ in first })
        }
        var problems: [String] = []
        for (uuid, regulator) in expected {
            guard let family = stored[uuid] else {
                problems.append("\(uuid): acknowledged create lost")
                continue
            }
            if family != regulator.acknowledged && family != regulator.inFlight {
                problems.append("\(uuid): holds \(family), acknowledged \(regulator.acknowledged), in flight \(regulator.inFlight ?? "-")")
            }
        }
        guard problems.isEmpty else {
            throw ValidationFailure("cycle \(cycle): \(problems.count) acknowledged change(s) lost: \(problems.prefix(5).joined(separator: "; "))")
        }
        // What the dead server had in flight is settled now: the database's value is the
        // acknowledged one for the next cycle.
        ledger.regulators.withLock { regulators in
            for uuid in expected.keys { regulators[uuid] = Regulator(acknowledged: stored[uuid]!) }
        }
        print("cycle \(cycle): ok (\(expected.count) regulators checked, integrity ok)")
    }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw ValidationFailure("no free port") }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
