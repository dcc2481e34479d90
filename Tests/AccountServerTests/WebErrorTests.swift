@testable import AccountServer
import AsyncHTTPClient
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Storage
import Testing

/// The web surface's error middleware: a browser gets a French page, the back-channel logout's
/// client (the provider) gets JSON with an OAuth 2.0 error code whatever refuses the request,
/// also what refuses it outside the handler (the database down, a body past the limit, a NUL
/// the router-level check finds). The real endpoint's own refusals are exercised against a
/// real provider in ``ProviderSignInTests``; this drives each failure the middleware maps.
@Suite("Web errors")
struct WebErrorTests {
    enum Failure: String, CaseIterable {
        case storage, lost, conflict, large, unexpected, badRequest, forbidden, notAllowed, overloaded, gateway
    }

    static func fail(_ request: Request, _ failure: Failure) async throws -> Response {
        switch failure {
        case .storage: throw StorageError.unavailable("connection refused")
        case .lost: throw StorageError.outcomeUnknown("connection lost after COMMIT")
        case .conflict: throw StorageError.conflict("kept colliding")
        case .large: _ = try await request.body.collect(upTo: 16)
        case .unexpected: throw StorageError.statementFailed("syntax error")
        case .badRequest: throw HTTPError(.badRequest)
        case .forbidden: throw HTTPError(.forbidden)
        case .notAllowed: throw HTTPError(.methodNotAllowed)
        case .overloaded: throw HTTPError(.serviceUnavailable)
        case .gateway: throw HTTPError(.badGateway)
        }
        return Response(status: .ok)
    }

    /// A browser's page for a failure: the endpoint's status, but "page not found" for a
    /// method a page does not take (a browser cannot act on 405).
    static func pageStatus(_ failure: Failure, endpoint: Int) -> Int {
        failure == .notAllowed ? 404 : endpoint
    }

    @Test func theBackChannelLogoutIsRefusedInJSONAndBrowsersGetAPage() async throws {
        let router = Router(context: WebRequestContext.self)
        router.add(middleware: WebErrorMiddleware())
        router.add(middleware: UnstorableInputMiddleware<WebRequestContext>())
        router.post(RouterPath(ProviderSignInController.backChannelLogoutPath)) { request, _ in
            try await Self.fail(request, Failure(rawValue: request.uri.queryParameters["fail"].map(String.init) ?? "") ?? .unexpected)
        }
        router.post("connexion") { request, _ in
            try await Self.fail(request, Failure(rawValue: request.uri.queryParameters["fail"].map(String.init) ?? "") ?? .unexpected)
        }
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = Application(router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
                              onServerRunning: { continuation.yield($0.localAddress?.port ?? 0) }, logger: Logger(label: "web-errors"))
        let group = ServiceGroup(configuration: .init(services: [app], logger: Logger(label: "web-errors")))
        let task = Task { try await group.run() }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())

        func post(_ path: String, body: String = "logout_token=x") async throws -> (status: Int, body: String, type: String?, retryAfter: String?, allow: String?) {
            var request = HTTPClientRequest(url: "http://127.0.0.1:\(port)\(path)")
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.body = .bytes(ByteBuffer(string: body))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
            return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 100_000)),
                    response.headers.first(name: "Content-Type"), response.headers.first(name: "Retry-After"),
                    response.headers.first(name: "Allow"))
        }

        let expected: [Failure: (status: Int, error: String)] = [
            .storage: (503, "temporarily_unavailable"), .lost: (503, "temporarily_unavailable"), .conflict: (503, "temporarily_unavailable"),
            .large: (413, "invalid_request"), .unexpected: (500, "server_error"), .badRequest: (400, "invalid_request"),
            // An HTTP error thrown around the handler keeps its class: the provider retries 5xx only.
            .forbidden: (400, "invalid_request"), .notAllowed: (405, "invalid_request"), .overloaded: (503, "temporarily_unavailable"),
            .gateway: (500, "server_error"),
        ]
        for failure in Failure.allCases {
            let want = try #require(expected[failure])
            // The matched route decides, so the address's spellings of the endpoint answer alike.
            for path in [ProviderSignInController.backChannelLogoutPath, "/" + ProviderSignInController.backChannelLogoutPath + "/"] {
                let answer = try await post("\(path)?fail=\(failure.rawValue)", body: "logout_token=" + String(repeating: "a", count: 100))
                #expect(answer.status == want.status && answer.body == #"{"error":"\#(want.error)"}"# && answer.type == "application/json",
                        "\(path) \(failure): \(answer.status) \(answer.type ?? "-") \(answer.body.prefix(200))")
                #expect((answer.retryAfter != nil) == (want.status == 503), "\(failure): Retry-After \(answer.retryAfter ?? "none")")
                #expect((answer.allow == "POST") == (want.status == 405), "\(failure): Allow \(answer.allow ?? "none")")
            }
            // The same failure on a browser's route: a French page (its statuses are the page's own).
            let page = try await post("/connexion?fail=\(failure.rawValue)", body: "email=" + String(repeating: "a", count: 100))
            #expect(page.status == Self.pageStatus(failure, endpoint: want.status) && page.type?.hasPrefix("text/html") == true && page.body.contains("<html"),
                    "/connexion \(failure): \(page.status) \(page.type ?? "-")")
            #expect((page.retryAfter != nil) == (page.status == 503), "/connexion \(failure): Retry-After \(page.retryAfter ?? "none")")
            #expect(!page.body.contains("syntax error") && !page.body.contains("connection refused"), "no internal detail leaks")
        }
        // A NUL, found by the router-level check before any handler runs.
        let nul = try await post(ProviderSignInController.backChannelLogoutPath + "?fail=storage&x=%00")
        #expect(nul.status == 400 && nul.body == #"{"error":"invalid_request"}"#, "\(nul.status) \(nul.body)")
        let nulPage = try await post("/connexion?fail=storage&x=%00")
        #expect(nulPage.status == 400 && nulPage.type?.hasPrefix("text/html") == true, "\(nulPage.status) \(nulPage.type ?? "-")")

        await group.triggerGracefulShutdown()
        try await task.value
    }
}
