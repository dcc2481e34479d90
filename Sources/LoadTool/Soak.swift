import AsyncHTTPClient
import Foundation
import NIOCore
import Synchronization

/// `account-server-load --mode soak`: mixed load for `--duration` seconds — conditional-update
/// PUTs and creates over mTLS, sign-in password steps (argon2id) and forward-auth checks on
/// the web side — while the server's resident memory (`--server-pid`) is sampled every
/// second. Reports requests and errors per kind and the RSS at start, peak and end.
struct SoakRun {
    let fhir: HTTPClient
    let fhirURL: String
    let web: WebClient
    let forwardAuth: WebClient
    let email: String
    let password: String
    let duration: Double
    let serverPID: Int32

    final class Tally: Sendable {
        let counts = Mutex<[String: (requests: Int, errors: Int)]>([:])
        func record(_ kind: String, ok: Bool) {
            counts.withLock { $0[kind, default: (0, 0)].requests += 1; if !ok { $0[kind, default: (0, 0)].errors += 1 } }
        }
    }

    func run() async throws {
        let tally = Tally()
        let deadline = ContinuousClock.now + .milliseconds(Int(duration * 1000))
        let run = UUID().uuidString.prefix(8).lowercased()
        try await web.signInFromSAS(email: email, password: password)
        let sessionCookies = web.cookies
        let form = try await web.send(.GET, "/connexion")
        let signInFields = ["csrf": form.csrf ?? "", "email": email, "password": password]
        let formCookies = web.cookies
        let rss = Mutex<[Int]>([])
        let sampler = Task {
            while ContinuousClock.now < deadline {
                if let kib = Self.residentKiB(pid: serverPID) { rss.withLock { $0.append(kib) } }
                try? await Task.sleep(for: .seconds(1))
            }
        }
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<2 {
                group.addTask {
                    let technical = UUID().uuidString.lowercased()
                    var n = 0
                    while ContinuousClock.now < deadline {
                        n += 1
                        let body = LoadTool.body(technical: technical, email: "soak-put-\(worker)-\(run)@load.test", family: n % 2 == 0 ? "PAIR" : "IMPAIR")
                        let status = try? await LoadTool.send(fhir, .PUT, "\(fhirURL)/Practitioner?identifier=urn:oid:1.2.250.1.213.3.6%7C\(technical)", body: body)
                        tally.record("PUT", ok: status.map { (200..<300).contains($0) } ?? false)
                    }
                }
            }
            group.addTask {
                var n = 0
                while ContinuousClock.now < deadline {
                    n += 1
                    let body = LoadTool.body(technical: UUID().uuidString.lowercased(), email: "soak-post-\(n)-\(run)@load.test", family: "CREATION")
                    let status = try? await LoadTool.send(fhir, .POST, "\(fhirURL)/Practitioner", body: body)
                    tally.record("POST", ok: status == 201)
                }
            }
            group.addTask {
                while ContinuousClock.now < deadline {
                    // The password step of a sign-in (argon2id verify); 303 to the second factor.
                    let page = try? await web.send(.POST, "/connexion", form: signInFields, cookies: formCookies)
                    tally.record("sign-in", ok: page?.status == 303)
                }
            }
            for _ in 0..<2 {
                group.addTask {
                    while ContinuousClock.now < deadline {
                        let page = try? await forwardAuth.send(.GET, "/forward-auth", cookies: sessionCookies)
                        tally.record("forward-auth", ok: page?.status == 200)
                    }
                }
            }
        }
        await sampler.value
        let samples = rss.withLock { $0 }
        let counts = tally.counts.withLock { $0 }
        for kind in ["PUT", "POST", "sign-in", "forward-auth"] {
            let entry = counts[kind] ?? (0, 0)
            print(String(format: "SOAK kind=%@ requests=%d errors=%d rps=%.1f", kind, entry.requests, entry.errors, Double(entry.requests) / duration))
        }
        // RSS after the first 10 % of the run (warm caches, pools and connections) against the end.
        let settled = samples.dropFirst(max(1, samples.count / 10)).first ?? samples.first ?? 0
        print(String(format: "SOAK_RSS samples=%d start_kib=%d settled_kib=%d peak_kib=%d end_kib=%d growth_after_settling_kib=%d",
                     samples.count, samples.first ?? 0, settled, samples.max() ?? 0, samples.last ?? 0, (samples.last ?? 0) - settled))
        // The soak is a check, not only a figure: CI fails on an error or on memory that keeps
        // growing (runs measured 1–2 MiB of growth after settling; the bound is far above
        // that noise and far below a leak of a few hundred bytes per request).
        let errors = counts.values.reduce(0) { $0 + $1.errors }
        let growth = (samples.last ?? 0) - settled
        if errors > 0 { throw ValidationFailure("the soak saw \(errors) failed requests") }
        if growth > Self.maximumGrowthKiB { throw ValidationFailure("resident memory grew by \(growth) KiB after settling (bound \(Self.maximumGrowthKiB) KiB)") }
        if counts.values.contains(where: { $0.requests == 0 }) || counts.count < 4 { throw ValidationFailure("a kind of request never ran: \(counts.keys.sorted())") }
    }

    static let maximumGrowthKiB = 32 * 1024

    static func residentKiB(pid: Int32) -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
}
