import Accounts
import Foundation
import HTTPTypes
import Habilitation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle
import Synchronization

/// The dedicated forward-auth listener (`--forward-auth-address`, loopback by default): the
/// same contract as the web listener's `/forward-auth`, served by a plain SwiftNIO pipeline
/// because the proxy asks before *every* agenda request. Measured on a 2-core machine, the
/// general-purpose router's per-request task hops cost several times the check itself and
/// gave tail latencies of tens of milliseconds; here a request is decoded, checked and
/// answered on its event loop.
///
/// The check is one indexed query, read fresh for every request (nothing is cached), run by
/// the store as close to the loop as the engine allows: on SQLite, on a read-only connection
/// owned by that event loop (never shared, so it never waits for a lock or another reader;
/// WAL readers do not wait for the writer) — a lookup of a few pages kept in memory,
/// microseconds, like the TLS record decryption around it; on PostgreSQL, sent from the loop
/// and answered when the row arrives. Pipelined requests are answered in order.
final class ForwardAuthListener: Service, Sendable {
    let host: String
    let port: Int
    let responder: ForwardAuthResponder
    /// Looked up per connection (SIGHUP reloads); nil serves plain HTTP on loopback.
    let sslContext: (@Sendable () -> NIOSSLContext)?
    let logger: Logger
    let onListening: @Sendable (Int) async -> Void

    init(host: String, port: Int, responder: ForwardAuthResponder, sslContext: (@Sendable () -> NIOSSLContext)?, logger: Logger,
         onListening: @escaping @Sendable (Int) async -> Void) {
        self.host = host
        self.port = port
        self.responder = responder
        self.sslContext = sslContext
        self.logger = logger
        self.onListening = onListening
    }

    func run() async throws {
        let handlerContext = ForwardAuthHandler.Shared(responder: responder, logger: logger)
        let sslContext = self.sslContext
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let sslContext {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext()))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(ForwardAuthHandler(shared: handlerContext))
                }
            }
            .bind(host: host, port: port).get()
        await onListening(channel.localAddress?.port ?? 0)
        // Closed on graceful shutdown, and on cancellation too: when another listener fails
        // to start (its port taken), the group is cancelled, and a listener waiting only for
        // a graceful shutdown kept the process up, unable to serve and not exiting.
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                try? await channel.closeFuture.get()
            } onCancel: {
                channel.close(promise: nil)
            }
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
    }
}

/// Decodes a request, answers it from the habilitation check, keeps the connection alive.
final class ForwardAuthHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    struct Shared: Sendable {
        let responder: ForwardAuthResponder
        let logger: Logger
    }

    private let shared: Shared
    private var head: HTTPRequestHead?
    private var started: ContinuousClock.Instant?
    /// The answer last sent or being prepared: the next one is written after it.
    private var lastAnswer: EventLoopFuture<Void>?

    init(shared: Shared) {
        self.shared = shared
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
            started = .now
        case .body:
            break  // forward-auth needs no body; it is dropped as it arrives
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context: context, head: head, started: started ?? .now)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, started: ContinuousClock.Instant) {
        let shared = self.shared
        let responder = shared.responder
        let check = responder.habilitation.check(sessionToken: Self.sessionCookie(head.headers), on: context.eventLoop)
        let answer = check.map { result -> ForwardAuthAnswer in
            if let facts = result.facts, responder.habilitation.activityDue(facts) {
                let habilitation = responder.habilitation
                Task { try? await habilitation.recordActivity(facts) }
            }
            return responder.answer(result.check, header: { head.headers.first(name: $0) }, authority: head.headers.first(name: "Host"),
                                    withBody: head.method != .HEAD, started: started)
        }.flatMapErrorThrowing { error -> ForwardAuthAnswer in
            // The store failing is the only error here: 503, so the proxy refuses the request
            // (nginx's auth_request treats any status but 2xx/401/403 as an error) and an
            // operator sees the cause; the check never answers "allowed" without its facts.
            shared.logger.error("forward-auth check failed", metadata: ["error": "\(error)"])
            return ForwardAuthAnswer(status: 503, headers: [("Cache-Control", "no-store"), ("Retry-After", "1")], body: nil)
        }
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let previous = lastAnswer ?? context.eventLoop.makeSucceededVoidFuture()
        let written = previous.flatMap { answer }.map { answer in
            responder.metrics.forwardAuthRequest(status: answer.status)
            Self.write(answer, for: head, context: loopBound.value)
        }
        lastAnswer = written
    }

    private static func write(_ answer: ForwardAuthAnswer, for head: HTTPRequestHead, context: ChannelHandlerContext) {
        var headers = HTTPHeaders(answer.headers)
        let body = answer.body.map { ByteBuffer(string: $0) }
        headers.add(name: "Content-Length", value: String(body?.readableBytes ?? 0))
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(NIOAny(HTTPServerResponsePart.head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: answer.status),
                                                                          headers: headers))), promise: nil)
        if let body, head.method != .HEAD { context.write(NIOAny(HTTPServerResponsePart.body(.byteBuffer(body))), promise: nil) }
        let done = context.writeAndFlush(NIOAny(HTTPServerResponsePart.end(nil)))
        if !keepAlive {
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            done.whenComplete { _ in loopBound.value.close(promise: nil) }
        }
    }

    /// The session cookie in the request's `Cookie` headers.
    static func sessionCookie(_ headers: HTTPHeaders) -> String? {
        for value in headers["Cookie"] {
            if let found = WebCookie.value(.session, inHeader: value) { return found.isEmpty ? nil : found }
        }
        return nil
    }
}
