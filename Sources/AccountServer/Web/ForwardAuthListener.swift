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
/// The check is one indexed query, read fresh for every request, run by the store as close to
/// the loop as the engine allows. (On SQLite, the facts the loop read for the session a moment
/// ago are used again when SQLite's commit stamp, read for this request, proves nothing was
/// committed since: `FactsMemo`, the query's answer without the query.) On SQLite the query
/// runs on a read-only connection owned by that event loop (never shared, so it never waits
/// for a lock or another reader; WAL readers do not wait for the writer): a lookup of a few
/// pages kept in memory, microseconds, like the TLS record decryption around it. On
/// PostgreSQL it is sent from the loop and answered when the row arrives. Pipelined requests
/// are answered in order.
final class ForwardAuthListener: Service, Sendable {
    let host: String
    let port: Int
    let responder: ForwardAuthResponder
    /// Looked up per connection (SIGHUP reloads); nil serves plain HTTP on loopback.
    let sslContext: (@Sendable () -> NIOSSLContext)?
    /// A connection with nothing read or written for this long is closed (TLS handshake
    /// included), as on the other listeners: a client holding connections open must not take
    /// the process's file descriptors.
    let idleTimeout: Duration
    /// A request begun and not received whole within this is cut (slowloris), as elsewhere.
    let requestTimeout: Duration
    let logger: Logger
    let onListening: @Sendable (Int) async -> Void

    init(host: String, port: Int, responder: ForwardAuthResponder, sslContext: (@Sendable () -> NIOSSLContext)?,
         idleTimeout: Duration = .seconds(120), requestTimeout: Duration, logger: Logger,
         onListening: @escaping @Sendable (Int) async -> Void) {
        self.host = host
        self.port = port
        self.responder = responder
        self.sslContext = sslContext
        self.idleTimeout = idleTimeout
        self.requestTimeout = requestTimeout
        self.logger = logger
        self.onListening = onListening
    }

    func run() async throws {
        let handlerContext = ForwardAuthHandler.Shared(responder: responder, logger: logger)
        let sslContext = self.sslContext
        let (idle, request, logger) = (Self.timeAmount(idleTimeout), Self.timeAmount(requestTimeout), self.logger)
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let operations = channel.pipeline.syncOperations
                    // Before TLS: a handshake that never comes counts as idle too.
                    try operations.addHandler(IdleStateHandler(allTimeout: idle))
                    try operations.addHandler(IdleConnectionCloser(logger: logger))
                    if let sslContext {
                        try operations.addHandler(NIOSSLServerHandler(context: sslContext()))
                    }
                    let timeout = RequestReceiveTimeoutHandler(timeout: request, logger: logger)
                    try operations.addHandler(timeout)
                    // The decoder alone: answers are written as bytes by the handler, which also
                    // keeps pipelined answers in order and refuses malformed requests.
                    try operations.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)))
                    try operations.addHandler(RequestReceivedHandler(timeout: timeout))
                    try operations.addHandler(ForwardAuthHandler(shared: handlerContext))
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

extension ForwardAuthListener {
    static func timeAmount(_ duration: Duration) -> TimeAmount {
        .nanoseconds(duration.components.seconds * 1_000_000_000 + duration.components.attoseconds / 1_000_000_000)
    }
}

/// Closes a connection on ``IdleStateHandler``'s all-idle event: nothing read or written for
/// the idle timeout. A check under way writes its answer within the store's own deadlines
/// (30 s), well inside it.
final class IdleConnectionCloser: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .all {
            logger.debug("idle connection closed", metadata: ["peer": "\(context.remoteAddress?.description ?? "?")"])
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

/// Decodes a request, answers it from the habilitation check, keeps the connection alive.
///
/// Answers are encoded here, straight into one buffer per answer: NIO's response encoder and
/// pipelining handler cost 8 % of the listener's CPU for a fixed, small set of headers we
/// write ourselves. What they did is done here: pipelined requests are answered in order
/// (at most ``maximumPending`` waiting, then reads stop), `Connection: close` and HTTP/1.0
/// close after the answer, and a request the decoder refuses gets a 400 and a close.
final class ForwardAuthHandler: ChannelInboundHandler, ChannelOutboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    struct Shared: Sendable {
        let responder: ForwardAuthResponder
        let logger: Logger
    }

    /// Unanswered pipelined requests beyond which the connection's reads wait.
    static let maximumPending = 16

    private let shared: Shared
    private var head: HTTPRequestHead?
    private var started: ContinuousClock.Instant?
    /// The answer last sent or being prepared: the next one is written after it.
    private var lastAnswer: EventLoopFuture<Void>?
    private var pending = 0
    /// Checks started and not yet answered; requests beyond ``maximumPending`` wait here.
    private var inFlight = 0
    private var waiting: CircularBuffer<(HTTPRequestHead, ContinuousClock.Instant)> = []
    private var readPending = false
    private var closing = false

    init(shared: Shared) {
        self.shared = shared
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
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

    func read(context: ChannelHandlerContext) {
        if pending >= Self.maximumPending { readPending = true } else { context.read() }
    }

    /// A request the decoder cannot read: 400, then close (what NIO's protocol error handler
    /// did), after the answers already due.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard error is HTTPParserError, !closing else {
            context.fireErrorCaught(error)
            return
        }
        closing = true
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let previous = lastAnswer ?? context.eventLoop.makeSucceededVoidFuture()
        previous.whenComplete { _ in
            let context = loopBound.value
            var buffer = context.channel.allocator.buffer(capacity: 80)
            buffer.writeString("HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in loopBound.value.close(promise: nil) }
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, started: ContinuousClock.Instant) {
        guard inFlight < Self.maximumPending else {
            // Many pipelined requests decoded from one read: their checks start as earlier
            // answers are written, never more than `maximumPending` at once.
            waiting.append((head, started))
            pending += 1
            return
        }
        pending += 1
        start(context: context, head: head, started: started)
    }

    private func start(context: ChannelHandlerContext, head: HTTPRequestHead, started: ContinuousClock.Instant) {
        let shared = self.shared
        let responder = shared.responder
        inFlight += 1
        let token = Self.sessionCookie(head.headers)
        // Nothing pending and an engine that answers on the loop (SQLite): answered now.
        if lastAnswer == nil {
            do {
                if let result = try responder.habilitation.checkNow(sessionToken: token, on: context.eventLoop) {
                    write(answer(result, head: head, started: started), for: head, context: context)
                    return
                }
            } catch {
                write(Self.failed(error, logger: shared.logger), for: head, context: context)
                return
            }
        }
        let check = responder.habilitation.check(sessionToken: token, on: context.eventLoop)
        let loopBound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
        let answer = check.map { result -> ForwardAuthAnswer in
            loopBound.value.1.answer(result, head: head, started: started)
        }.flatMapErrorThrowing { error -> ForwardAuthAnswer in
            Self.failed(error, logger: shared.logger)
        }
        let written: EventLoopFuture<Void>
        if let previous = lastAnswer {
            written = previous.flatMap { answer }.map { answer in
                let (context, handler) = loopBound.value
                handler.write(answer, for: head, context: context)
            }
        } else {
            written = answer.map { answer in
                let (context, handler) = loopBound.value
                handler.write(answer, for: head, context: context)
            }
        }
        lastAnswer = written
        written.whenComplete { _ in
            let handler = loopBound.value.1
            if handler.pending == 0 { handler.lastAnswer = nil }
        }
    }

    private func answer(_ result: (check: HabilitationCheck, facts: HabilitationService.SessionFacts?), head: HTTPRequestHead,
                        started: ContinuousClock.Instant) -> ForwardAuthAnswer {
        let responder = shared.responder
        if let facts = result.facts { responder.habilitation.recordActivityInBackground(facts) }
        return responder.answer(result.check, header: { ForwardAuthResponder.sole(head.headers[$0]) }, authority: ForwardAuthResponder.sole(head.headers["Host"]),
                                withBody: head.method != .HEAD, started: started)
    }

    /// The store failing is the only error here: 503, so the proxy refuses the request
    /// (nginx's auth_request treats any status but 2xx/401/403 as an error) and an operator
    /// sees the cause; the check never answers "allowed" without its facts.
    private static func failed(_ error: any Error, logger: Logger) -> ForwardAuthAnswer {
        logger.error("forward-auth check failed", metadata: ["error": "\(error)"])
        return ForwardAuthAnswer(status: 503, headers: [("Cache-Control", "no-store"), ("Retry-After", "1")], body: nil)
    }

    private func write(_ answer: ForwardAuthAnswer, for head: HTTPRequestHead, context: ChannelHandlerContext) {
        shared.responder.metrics.forwardAuthRequest(status: answer.status)
        let keepAlive = head.isKeepAlive && !closing
        let buffer = Self.encode(answer, version: head.version, withBody: head.method != .HEAD, keepAlive: keepAlive,
                                 allocator: context.channel.allocator, logger: shared.logger)
        pending -= 1
        inFlight -= 1
        defer {
            // The next waiting request starts once this answer is written (its own answer,
            // immediate on SQLite, must come after).
            if !closing, let (next, started) = waiting.popFirst() {
                start(context: context, head: next, started: started)
            }
        }
        if keepAlive {
            context.writeAndFlush(NIOAny(buffer), promise: nil)
        } else {
            closing = true
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(NIOAny(buffer)).whenComplete { _ in loopBound.value.close(promise: nil) }
        }
        if readPending, pending < Self.maximumPending {
            readPending = false
            context.read()
        }
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: "OK"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 500: "Internal Server Error"
        case 503: "Service Unavailable"
        default: "Status"
        }
    }

    /// The answer's bytes: status line, our headers, `Content-Length`, `Connection`, body. A
    /// header value holding a line break (never one we write; a stored value gone wrong) is
    /// left out rather than allowed to split the answer.
    static func encode(_ answer: ForwardAuthAnswer, version: HTTPVersion, withBody: Bool, keepAlive: Bool,
                       allocator: ByteBufferAllocator, logger: Logger) -> ByteBuffer {
        let body = withBody ? answer.body : nil
        var buffer = allocator.buffer(capacity: 256 + (body?.utf8.count ?? 0))
        buffer.writeString(version.minor == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        buffer.writeString(String(answer.status))
        buffer.writeString(" ")
        buffer.writeString(reasonPhrase(answer.status))
        buffer.writeString("\r\n")
        for (name, value) in answer.headers {
            guard !value.utf8.contains(where: { $0 == 13 || $0 == 10 || $0 == 0 }) else {
                logger.error("forward-auth header left out: its value holds a line break", metadata: ["header": "\(name)"])
                continue
            }
            buffer.writeString(name)
            buffer.writeString(": ")
            buffer.writeString(value)
            buffer.writeString("\r\n")
        }
        buffer.writeString("Content-Length: ")
        buffer.writeString(String(body?.utf8.count ?? 0))
        buffer.writeString(keepAlive ? "\r\nConnection: keep-alive\r\n\r\n" : "\r\nConnection: close\r\n\r\n")
        if let body { buffer.writeString(body) }
        return buffer
    }

    /// The session cookie in the request's `Cookie` headers, when it is there once
    /// (``WebCookie/soleValue(named:inHeaders:)``).
    static func sessionCookie(_ headers: HTTPHeaders) -> String? {
        WebCookie.soleValue(named: WebCookie.session.rawValue, inHeaders: headers["Cookie"])
    }
}
