import Accounts
import ArgumentParser
import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// `account-server-load`: an mTLS HTTP/1.1 keep-alive load generator, because wrk, hey and
/// h2load cannot present a client certificate. The same tool drives nginx's static 200 and
/// account-server, so the ratios compare like with like.
@main
struct LoadTool: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "account-server-load", abstract: "mTLS load generator and argon2 baseline.")

    enum Mode: String, ExpressibleByArgument {
        /// GET the URL as is (nginx baseline).
        case get
        /// Conditional-update PUT of one regulator per worker, alternating names (a real write each time).
        case put
        /// POST a new regulator each time.
        case post
        /// Time in-process argon2id hashes (no HTTP).
        case argon2
        /// Alternate one in-process argon2id hash and one sequential POST, so the create
        /// latency and its baseline see the same machine conditions.
        case createVersusArgon2 = "create-vs-argon2"
        /// Web surface: choose the password through the mailed link (--maildir), then alternate
        /// one in-process argon2id hash and one sign-in POST (e-mail + password, argon2 verify).
        case signInVersusArgon2 = "sign-in-vs-argon2"
        /// Web surface: sign in from the SAS once, then load the pages that verify no password
        /// (sign-in page, Mon compte with its live habilitation check, forgotten-password page).
        case pages
        /// Web surface: sign in from the SAS once, then GET /forward-auth with the session
        /// cookie; then the same load while the habilitation is suspended through the admin API
        /// (--admin-url, --admin-token-file), counting allowed answers to requests started
        /// after the suspension committed (stale answers; must be 0).
        case forwardAuth = "forward-auth"
        /// Creates and updates while the server (--server-binary) is killed with SIGKILL at
        /// random moments and restarted, --cycles times; checks every acknowledged change.
        case durability
        /// Mixed load (PUT, POST, sign-in, forward-auth) for --duration seconds while the
        /// server's RSS (--server-pid) is sampled; --url is the web listener, --fhir-url the
        /// FHIR one, --forward-auth-url the forward-auth listener.
        case soak
        /// Raw SQLite baseline: single-row INSERT transactions, one after the other, on a
        /// fresh file with the server's durability settings (WAL, synchronous=FULL).
        case sqliteCommits = "sqlite-commits"
    }

    @Option(help: "forward-auth mode: measure at each of these concurrencies (comma-separated) instead of --concurrency, without the suspension race.")
    var concurrencyList: String?

    @Option(help: "soak mode: the FHIR listener's base URL.") var fhirURL: String?
    @Option(help: "soak mode: the server's process id (RSS sampling).") var serverPid: Int32?

    @Option(help: "durability mode: the account-server executable.") var serverBinary: String?
    @Option(help: "durability mode: kill/restart cycles.") var cycles: Int = 3
    @Option(help: "durability mode: working directory (database, development PKI).") var workdir: String?

    @Option(help: "forward-auth mode: the admin listener's base URL.") var adminURL: String?
    @Option(help: "forward-auth mode: base URL of the forward-auth endpoint (default: --url, the web listener).") var forwardAuthURL: String?
    @Option(help: "forward-auth mode: the admin token file.") var adminTokenFile: String?

    @Option(help: "Web modes: the regulator's e-mail.") var email: String = "bench.regulator@load.test"
    @Option(help: "Web modes: the password to choose.") var password: String = "Banc-d-essai-de-connexion-2026"
    @Option(help: "Web modes: maildir where the SMTP sink delivers (reset link).") var maildir: String?

    @Option var mode: Mode
    @Option var url: String = "https://127.0.0.1:8443"
    @Option var ca: String?
    @Option var cert: String?
    @Option var key: String?
    @Option var concurrency: Int = 8
    @Option(help: "Seconds of measurement (after 1 s of warm-up).") var duration: Double = 10
    @Option(help: "POST creators running in the background during the measurement.") var backgroundCreators: Int = 0
    @Option(help: "For --mode argon2: number of hashes.") var iterations: Int = 30
    @Option var argon2MemoryKib: UInt32 = 19456
    @Option var argon2Iterations: UInt32 = 2
    @Option var argon2Parallelism: UInt32 = 1
    @Option(help: "Label printed in the result line.") var label: String?

    func run() async throws {
        if mode == .argon2 {
            let parameters = Argon2Parameters(memoryKiB: argon2MemoryKib, iterations: argon2Iterations, parallelism: argon2Parallelism)
            _ = try PasswordHasher.hashNow(Array("warm-up".utf8), parameters: parameters)
            var samples: [Double] = []
            for _ in 0..<iterations {
                let start = ContinuousClock.now
                _ = try PasswordHasher.hashNow(PasswordGenerator.generate(), parameters: parameters)
                samples.append(Self.milliseconds(ContinuousClock.now - start))
            }
            Self.report(label: label ?? "argon2id in-process", samples: samples, seconds: nil, errors: 0)
            return
        }
        if mode == .durability {
            guard let serverBinary else { throw ValidationError("--server-binary is required") }
            let directory = URL(fileURLWithPath: workdir ?? FileManager.default.temporaryDirectory.appendingPathComponent("durability-\(UUID().uuidString)").path)
            try await DurabilityRun(binary: serverBinary, directory: directory, cycles: cycles, workers: concurrency).run()
            return
        }
        if mode == .sqliteCommits {
            let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sqlite-baseline-\(UUID().uuidString)")
            defer { try? FileManager.default.removeItem(at: directory) }
            let samples = try SQLiteBaseline.run(directory: directory, duration: duration)
            Self.report(label: label ?? "sqlite_commit", samples: samples, seconds: duration, errors: 0)
            return
        }
        if mode == .soak {
            guard let fhirURL, let serverPid, let maildir else { throw ValidationError("--fhir-url, --server-pid and --maildir are required") }
            var tls = TLSConfiguration.makeClientConfiguration()
            if let ca { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
            if let cert, let key {
                tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
                tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            let fhir = HTTPClient(eventLoopGroupProvider: .singleton, configuration: HTTPClient.Configuration(tlsConfiguration: tls))
            let web = try WebClient(base: url, ca: ca, connections: 4)
            try await web.choosePassword(email: email, password: password, maildir: maildir)
            let forward = try WebClient(base: forwardAuthURL ?? url, ca: ca, connections: 4)
            try await SoakRun(fhir: fhir, fhirURL: fhirURL, web: web, forwardAuth: forward, email: email, password: password,
                              duration: duration, serverPID: serverPid).run()
            try? await fhir.shutdown()
            try? await web.client.shutdown()
            try? await forward.client.shutdown()
            return
        }
        if mode == .signInVersusArgon2 || mode == .pages || mode == .forwardAuth {
            try await runWeb()
            return
        }
        var tls = TLSConfiguration.makeClientConfiguration()
        if let ca { tls.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(ca)) }
        if let cert, let key {
            tls.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
            tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
        }
        var configuration = HTTPClient.Configuration(tlsConfiguration: tls)
        configuration.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: concurrency + backgroundCreators + 2)
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)

        let run = UUID().uuidString.prefix(8).lowercased()
        if mode == .createVersusArgon2 {
            let parameters = Argon2Parameters(memoryKiB: argon2MemoryKib, iterations: argon2Iterations, parallelism: argon2Parallelism)
            var hashes: [Double] = []
            var creates: [Double] = []
            var errors = 0
            for index in 0..<(iterations + 3) {
                let hashStart = ContinuousClock.now
                _ = try PasswordHasher.hashNow(PasswordGenerator.generate(), parameters: parameters)
                let createStart = ContinuousClock.now
                let status = try? await Self.send(client, .POST, "\(url)/Practitioner", body: Self.body(technical: Self.uuid(), email: "c\(index)-\(run)@load.test", family: "CREATE"))
                let end = ContinuousClock.now
                guard index >= 3 else { continue }  // warm-up
                hashes.append(Self.milliseconds(createStart - hashStart))
                creates.append(Self.milliseconds(end - createStart))
                if !(status.map { (200..<300).contains($0) } ?? false) { errors += 1 }
            }
            Self.report(label: "argon2id_in_process", samples: hashes, seconds: nil, errors: 0)
            Self.report(label: label ?? "POST_create_sequential", samples: creates, seconds: nil, errors: errors)
            Self.reportRatios(label: (label ?? "POST_create_sequential") + "_over_hash", numerators: creates, denominators: hashes)
            try? await client.shutdown()
            return
        }
        let deadlineWarm = ContinuousClock.now + .seconds(1)
        let deadline = deadlineWarm + .milliseconds(Int(duration * 1000))
        let mode = self.mode
        let url = self.url

        let background = Task {
            await withTaskGroup(of: [Double].self) { group in
                for creator in 0..<backgroundCreators {
                    group.addTask {
                        var samples: [Double] = []
                        var n = 0
                        while ContinuousClock.now < deadline {
                            n += 1
                            let start = ContinuousClock.now
                            _ = try? await Self.send(client, .POST, "\(url)/Practitioner", body: Self.body(technical: Self.uuid(), email: "bg\(creator)-\(n)-\(run)@load.test", family: "BG"))
                            if start > deadlineWarm { samples.append(Self.milliseconds(ContinuousClock.now - start)) }
                        }
                        return samples
                    }
                }
                return await group.reduce(into: [Double]()) { $0 += $1 }
            }
        }

        let results = await withTaskGroup(of: ([Double], Int).self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var samples: [Double] = []
                    var errors = 0
                    let technical = Self.uuid()
                    var n = 0
                    while ContinuousClock.now < deadline {
                        n += 1
                        let start = ContinuousClock.now
                        let status: UInt?
                        switch mode {
                        case .get:
                            status = try? await Self.send(client, .GET, url, body: nil)
                        case .put:
                            let body = Self.body(technical: technical, email: "w\(worker)-\(run)@load.test", family: n % 2 == 0 ? "EVEN" : "ODD")
                            status = try? await Self.send(client, .PUT, "\(url)/Practitioner?identifier=urn:oid:1.2.250.1.213.3.6%7C\(technical)", body: body)
                        case .post:
                            status = try? await Self.send(client, .POST, "\(url)/Practitioner", body: Self.body(technical: Self.uuid(), email: "p\(worker)-\(n)-\(run)@load.test", family: "POST"))
                        case .argon2, .createVersusArgon2, .signInVersusArgon2, .pages, .forwardAuth, .durability, .soak, .sqliteCommits:
                            status = nil
                        }
                        let ok = status.map { (200..<300).contains($0) } ?? false
                        if start > deadlineWarm {
                            samples.append(Self.milliseconds(ContinuousClock.now - start))
                            if !ok { errors += 1 }
                        }
                    }
                    return (samples, errors)
                }
            }
            return await group.reduce(into: ([Double](), 0)) { $0.0 += $1.0; $0.1 += $1.1 }
        }
        let backgroundSamples = await background.value
        Self.report(label: label ?? mode.rawValue, samples: results.0, seconds: duration, errors: results.1)
        if backgroundCreators > 0 {
            Self.report(label: "background POST", samples: backgroundSamples, seconds: duration, errors: 0)
        }
        try? await client.shutdown()
    }

    func runWeb() async throws {
        let web = try WebClient(base: url, ca: ca, connections: concurrency + 2)
        if let maildir { try await web.choosePassword(email: email, password: password, maildir: maildir) }
        if mode == .signInVersusArgon2 {
            let parameters = Argon2Parameters(memoryKiB: argon2MemoryKib, iterations: argon2Iterations, parallelism: argon2Parallelism)
            let form = try await web.send(.GET, "/connexion")
            let fields = ["csrf": form.csrf ?? "", "email": email, "password": password]
            var hashes: [Double] = []
            var signIns: [Double] = []
            var errors = 0
            for index in 0..<(iterations + 3) {
                let hashStart = ContinuousClock.now
                _ = try PasswordHasher.hashNow(PasswordGenerator.generate(), parameters: parameters)
                let signInStart = ContinuousClock.now
                let page = try await web.send(.POST, "/connexion", form: fields, cookies: web.cookies)
                let end = ContinuousClock.now
                guard index >= 3 else { continue }
                hashes.append(Self.milliseconds(signInStart - hashStart))
                signIns.append(Self.milliseconds(end - signInStart))
                if page.status != 303 { errors += 1 }
            }
            Self.report(label: "argon2id_in_process_web", samples: hashes, seconds: nil, errors: 0)
            Self.report(label: label ?? "sign_in_password_step", samples: signIns, seconds: nil, errors: errors)
            Self.reportRatios(label: (label ?? "sign_in_password_step") + "_over_hash", numerators: signIns, denominators: hashes)
            // The three refusals must look alike, in answer and in time.
            func timeRefusals(email: String, password: String, count: Int) async throws -> [Double] {
                var samples: [Double] = []
                for _ in 0..<count {
                    let start = ContinuousClock.now
                    let page = try await web.send(.POST, "/connexion", form: ["csrf": form.csrf ?? "", "email": email, "password": password], cookies: web.cookies)
                    samples.append(Self.milliseconds(ContinuousClock.now - start))
                    guard page.status == 401 else { throw ValidationFailure("a refused sign-in answered \(page.status)") }
                }
                return samples
            }
            let unknown = try await timeRefusals(email: "nobody-\(UUID().uuidString.prefix(6))@load.test", password: password, count: 20)
            let wrong = try await timeRefusals(email: email, password: "not-the-password", count: 4)
            _ = try await timeRefusals(email: email, password: "not-the-password", count: 1)  // the lockout starts
            let locked = try await timeRefusals(email: email, password: password, count: 20)
            Self.report(label: "refusal_unknown_email", samples: unknown, seconds: nil, errors: 0)
            Self.report(label: "refusal_wrong_password", samples: wrong, seconds: nil, errors: 0)
            Self.report(label: "refusal_locked_account", samples: locked, seconds: nil, errors: 0)
        } else if mode == .forwardAuth {
            try await web.signInFromSAS(email: email, password: password)
            if let concurrencyList {
                for text in concurrencyList.split(separator: ",") {
                    guard let level = Int(text) else { throw ValidationError("--concurrency-list: \(text) is not a number") }
                    var copy = self
                    copy.concurrency = level
                    copy.label = "\(label ?? "forward_auth")_c\(level)"
                    copy.adminURL = nil
                    try await copy.forwardAuth(web)
                }
            } else {
                try await forwardAuth(web)
            }
        } else {
            try await web.signInFromSAS(email: email, password: password)
            let cookies = web.cookies
            let deadlineWarm = ContinuousClock.now + .seconds(1)
            let deadline = deadlineWarm + .milliseconds(Int(duration * 1000))
            let paths = ["/connexion", "/compte", "/mot-de-passe-oublie"]
            let results = await withTaskGroup(of: [(Int, Double, Bool)].self) { group in
                for worker in 0..<concurrency {
                    group.addTask {
                        var samples: [(Int, Double, Bool)] = []
                        var n = worker
                        while ContinuousClock.now < deadline {
                            n += 1
                            let which = n % paths.count
                            let start = ContinuousClock.now
                            let page = try? await web.send(.GET, paths[which], cookies: cookies)
                            if start > deadlineWarm {
                                let ok = page?.status == 200 && (which != 1 || page!.body.contains("data-habilitation=\"oui\""))
                                samples.append((which, Self.milliseconds(ContinuousClock.now - start), ok))
                            }
                        }
                        return samples
                    }
                }
                return await group.reduce(into: []) { $0 += $1 }
            }
            for (index, path) in paths.enumerated() {
                let mine = results.filter { $0.0 == index }
                Self.report(label: "GET_\(path.dropFirst())", samples: mine.map(\.1), seconds: duration, errors: mine.filter { !$0.2 }.count)
            }
            Self.report(label: label ?? "pages_all", samples: results.map(\.1), seconds: duration, errors: results.filter { !$0.2 }.count)
        }
        try? await web.client.shutdown()
    }

    /// Forward-auth throughput and latency, then a suspension racing the same load.
    func forwardAuth(_ signedIn: WebClient) async throws {
        let cookies = signedIn.cookies
        let web = try WebClient(base: forwardAuthURL ?? url, ca: ca, connections: concurrency + 2)
        defer { Task { [web] in try? await web.client.shutdown() } }
        let concurrency = self.concurrency
        /// `concurrency` workers until `deadline`; (start, latency ms, status) of each request.
        func hammer(until deadline: ContinuousClock.Instant) async -> [(ContinuousClock.Instant, Double, UInt)] {
            await withTaskGroup(of: [(ContinuousClock.Instant, Double, UInt)].self) { group in
                for _ in 0..<concurrency {
                    group.addTask {
                        var samples: [(ContinuousClock.Instant, Double, UInt)] = []
                        while ContinuousClock.now < deadline {
                            let start = ContinuousClock.now
                            let status = (try? await web.send(.GET, "/forward-auth", cookies: cookies))?.status ?? 0
                            samples.append((start, Self.milliseconds(ContinuousClock.now - start), status))
                        }
                        return samples
                    }
                }
                return await group.reduce(into: []) { $0 += $1 }
            }
        }
        let warm = ContinuousClock.now + .seconds(1)
        let measured = await hammer(until: warm + .milliseconds(Int(duration * 1000))).filter { $0.0 > warm }
        Self.report(label: label ?? "forward_auth", samples: measured.map(\.1), seconds: duration, errors: measured.filter { $0.2 != 200 }.count)

        guard let adminURL, let adminTokenFile else { return }
        let token = try String(contentsOfFile: adminTokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let race = Task { await hammer(until: ContinuousClock.now + .seconds(3)) }
        try await Task.sleep(for: .seconds(1))
        let admin = HTTPClient(eventLoopGroupProvider: .singleton)
        var request = HTTPClientRequest(url: "\(adminURL)/api/accounts/\(email)/suspend")
        request.method = .POST
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        request.headers.add(name: "Content-Type", value: "application/json")
        let response = try await admin.execute(request, timeout: .seconds(10))
        _ = try await response.body.collect(upTo: 1 << 16)
        let committed = ContinuousClock.now
        try? await admin.shutdown()
        guard response.status == .ok else { throw ValidationFailure("suspension answered \(response.status.code)") }
        let samples = await race.value
        let before = samples.filter { $0.0 < committed }
        let after = samples.filter { $0.0 > committed }
        print("STALE label=\(label ?? "forward_auth")_after_suspension granted_before=\(before.filter { $0.2 == 200 }.count) after=\(after.count) stale=\(after.filter { $0.2 == 200 }.count) refused_after=\(after.filter { $0.2 == 403 }.count)")
    }

    static func send(_ client: HTTPClient, _ method: HTTPMethod, _ url: String, body: String?) async throws -> UInt {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/fhir+json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await client.execute(request, timeout: .seconds(30))
        _ = try await response.body.collect(upTo: 1 << 20)
        return response.status.code
    }

    static func uuid() -> String { UUID().uuidString.lowercased() }

    static func body(technical: String, email: String, family: String) -> String {
        #"{"resourceType":"Practitioner","meta":{"source":"urn:oid:1.2.250.1.213.3.6"},"identifier":[{"type":{"coding":[{"system":"http://interopsante.org/fhir/CodeSystem/fr-v2-0203","code":"INTRN"}]},"system":"urn:oid:1.2.250.1.213.3.6","value":"\#(technical)"}],"active":true,"name":[{"family":"\#(family)","given":["Load"]}],"telecom":[{"system":"email","value":"\#(email)"}]}"#
    }

    static func milliseconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    }

    /// Per-pair ratios (each operation over the hash measured just before it): immune to
    /// the CPU-speed drift of shared machines, which moves both members of a pair together.
    static func reportRatios(label: String, numerators: [Double], denominators: [Double]) {
        let ratios = zip(numerators, denominators).map { $0 / $1 }.sorted()
        guard !ratios.isEmpty else { return }
        func percentile(_ p: Double) -> Double { ratios[min(ratios.count - 1, Int((p * Double(ratios.count)).rounded(.up)) - 1)] }
        print(String(format: "RATIO label=%@ n=%d p50=%.2f p95=%.2f", label, ratios.count, percentile(0.5), percentile(0.95)))
    }

    /// One machine-readable line: label, requests/s, p50, p95, p99 (ms), errors.
    static func report(label: String, samples: [Double], seconds: Double?, errors: Int) {
        let sorted = samples.sorted()
        func percentile(_ p: Double) -> Double {
            guard !sorted.isEmpty else { return .nan }
            return sorted[min(sorted.count - 1, Int((p * Double(sorted.count)).rounded(.up)) - 1)]
        }
        let rate = seconds.map { Double(sorted.count) / $0 } ?? .nan
        print(String(format: "RESULT label=%@ n=%d rps=%.1f p50=%.3f p95=%.3f p99=%.3f errors=%d",
                     label.replacingOccurrences(of: " ", with: "_"), sorted.count, rate, percentile(0.50), percentile(0.95), percentile(0.99), errors))
    }
}
