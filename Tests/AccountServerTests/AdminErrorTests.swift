@testable import AccountServer
import AsyncHTTPClient
import Hummingbird
import Logging
import NIOHTTP1
import ServiceLifecycle
import Storage
import Testing

/// The admin surface answers storage failures as the other surfaces do: 503 JSON with
/// Retry-After, and a lost COMMIT says the change may have been applied (the database's
/// outage itself is exercised on the FHIR and web surfaces by the PostgreSQL restart test).
@Suite("Admin errors")
struct AdminErrorTests {
    /// The router on an ephemeral loopback port, behind nothing else.
    static func serve(_ router: Router<AdminRequestContext>) async throws -> (port: Int, group: ServiceGroup, task: Task<Void, any Error>) {
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: Logger(label: "admin-errors"))
        let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "admin-errors")))
        let task = Task { try await group.run() }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        return (port, group, task)
    }

    @Test func storageFailuresAre503WithRetryAfter() async throws {
        let router = Router(context: AdminRequestContext.self)
        router.add(middleware: AdminErrorMiddleware())
        router.get("down") { _, _ -> Response in throw StorageError.unavailable("connection refused") }
        router.get("lost") { _, _ -> Response in throw StorageError.outcomeUnknown("connection lost after COMMIT") }
        router.get("busy") { _, _ -> Response in throw StorageError.conflict("kept colliding") }
        let (port, group, task) = try await Self.serve(router)
        for (path, expected) in [("down", "nothing was changed"), ("busy", "nothing was changed"), ("lost", "may or may not have been applied")] {
            let response = try await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/\(path)"), timeout: .seconds(10))
            let body = String(buffer: try await response.body.collect(upTo: 10_000))
            #expect(response.status.code == 503 && response.headers.first(name: "Retry-After") == "1", "\(path): \(response.status)")
            #expect(body.contains("\"error\"") && body.contains(expected), "\(path): \(body)")
        }
        await group.triggerGracefulShutdown()
        try await task.value
    }

    /// Whatever else fails is never Hummingbird's empty answer: a refusal made around the
    /// handlers keeps its status, as JSON on the API (a body past its size: 413); any other
    /// error is a JSON 500 on the API (with the request id, not the cause) and a page elsewhere.
    @Test func otherFailuresAreAnsweredNotEmpty() async throws {
        struct Unexpected: Error { let secret = "statement text" }
        let router = Router(context: AdminRequestContext.self)
        router.add(middleware: AdminErrorMiddleware())
        router.post("api/big") { _, _ -> Response in throw HTTPError(.contentTooLarge) }
        router.get("api/later") { _, _ -> Response in throw HTTPError(.tooManyRequests, headers: [.retryAfter: "7", .contentType: "text/plain"]) }
        router.get("api/broken") { _, _ -> Response in throw Unexpected() }
        router.get("page") { _, _ -> Response in throw Unexpected() }
        let (port, group, task) = try await Self.serve(router)
        for (method, path, status, fragment) in [(HTTPMethod.POST, "api/big", 413, "larger than the API accepts"),
                                                  (.GET, "api/broken", 500, "request id"), (.GET, "page", 500, "Erreur du serveur")] {
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)/\(path)")
            request.method = method
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            let body = String(buffer: try await response.body.collect(upTo: 100_000))
            #expect(Int(response.status.code) == status && body.contains(fragment) && !body.contains("statement text"), "\(path): \(response.status) \(body.prefix(300))")
        }
        // A refusal's headers are kept (what the client acts on), not its body's type.
        let later = try await HTTPClient.shared.execute(HTTPClientRequest(url: "http://127.0.0.1:\(port)/api/later"), timeout: .seconds(10))
        _ = try await later.body.collect(upTo: 10_000)
        #expect(later.status.code == 429 && later.headers.first(name: "Retry-After") == "7")
        #expect(later.headers[canonicalForm: "Content-Type"].count == 1 && later.headers.first(name: "Content-Type")?.hasPrefix("application/json") == true,
                "\(later.headers)")
        await group.triggerGracefulShutdown()
        try await task.value
    }
}
