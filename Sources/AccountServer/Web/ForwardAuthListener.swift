import Accounts
import Foundation
import GRDB
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
/// The check is one indexed SQLite read on a read-only connection owned by that event loop
/// (one connection per loop, never shared, so it never waits for a lock or another reader;
/// WAL readers do not wait for the writer). It is a lookup of a few pages that SQLite and
/// the OS keep in memory — microseconds, like the TLS record decryption around it — and it
/// is read fresh for every request: nothing is cached.
final class ForwardAuthListener: Service, Sendable {
    let host: String
    let port: Int
    let databasePath: String
    let responder: ForwardAuthResponder
    /// Looked up per connection (SIGHUP reloads); nil serves plain HTTP on loopback.
    let sslContext: (@Sendable () -> NIOSSLContext)?
    let logger: Logger
    let onListening: @Sendable (Int) async -> Void
    private let connections = ReadConnections()

    init(host: String, port: Int, databasePath: String, responder: ForwardAuthResponder, sslContext: (@Sendable () -> NIOSSLContext)?, logger: Logger,
         onListening: @escaping @Sendable (Int) async -> Void) {
        self.host = host
        self.port = port
        self.databasePath = databasePath
        self.responder = responder
        self.sslContext = sslContext
        self.logger = logger
        self.onListening = onListening
    }

    func run() async throws {
        let handlerContext = ForwardAuthHandler.Shared(responder: responder, connections: connections, databasePath: databasePath, logger: logger)
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
        await withGracefulShutdownHandler {
            try? await channel.closeFuture.get()
        } onGracefulShutdown: {
            channel.close(promise: nil)
        }
        connections.closeAll()
    }
}

/// One read-only SQLite connection per event loop, opened on first use.
final class ReadConnections: Sendable {
    private let byLoop = Mutex<[ObjectIdentifier: DatabaseQueue]>([:])

    func connection(for loop: any EventLoop, path: String) throws -> DatabaseQueue {
        let key = ObjectIdentifier(loop)
        if let existing = byLoop.withLock({ $0[key] }) { return existing }
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(1)
        configuration.label = "forward-auth"
        let queue = try DatabaseQueue(path: path, configuration: configuration)
        return byLoop.withLock { connections in
            if let raced = connections[key] { return raced }
            connections[key] = queue
            return queue
        }
    }

    func closeAll() {
        let all = byLoop.withLock { connections in
            defer { connections = [:] }
            return Array(connections.values)
        }
        for queue in all { try? queue.close() }
    }
}

/// Decodes a request, answers it from the habilitation check, keeps the connection alive.
final class ForwardAuthHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    struct Shared: Sendable {
        let responder: ForwardAuthResponder
        let connections: ReadConnections
        let databasePath: String
        let logger: Logger
    }

    private let shared: Shared
    private var head: HTTPRequestHead?
    private var started: ContinuousClock.Instant?

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
        let responder = shared.responder
        let token = Self.sessionCookie(head.headers)
        var answer: ForwardAuthAnswer
        do {
            let database = try shared.connections.connection(for: context.eventLoop, path: shared.databasePath)
            // One SELECT: its implicit transaction is already a consistent snapshot, so GRDB's
            // explicit BEGIN/COMMIT around it would only add two statements per request.
            let result = try database.unsafeRead { db in try responder.habilitation.check(sessionToken: token, in: db) }
            if let facts = result.facts, responder.habilitation.activityDue(facts) {
                let habilitation = responder.habilitation
                Task { try? await habilitation.recordActivity(facts) }
            }
            answer = responder.answer(result.check, header: { head.headers.first(name: $0) }, authority: head.headers.first(name: "Host"),
                                      withBody: head.method != .HEAD, started: started)
        } catch {
            shared.logger.error("forward-auth check failed", metadata: ["error": "\(error)"])
            answer = ForwardAuthAnswer(status: 500, headers: [("Cache-Control", "no-store")], body: nil)
        }
        responder.metrics.forwardAuthRequest(status: answer.status)
        var headers = HTTPHeaders(answer.headers)
        let body = answer.body.map { ByteBuffer(string: $0) }
        headers.add(name: "Content-Length", value: String(body?.readableBytes ?? 0))
        let keepAlive = head.isKeepAlive
        headers.add(name: "Connection", value: keepAlive ? "keep-alive" : "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: HTTPResponseStatus(statusCode: answer.status), headers: headers))),
                      promise: nil)
        if let body, head.method != .HEAD { context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
        let done = context.writeAndFlush(wrapOutboundOut(.end(nil)))
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
