import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1

/// Closes a connection whose request does not arrive in time: armed by the first byte of a
/// request (or, for a pipelined request whose first bytes came with the previous one, by its
/// head), disarmed once the decoder has the whole request (``RequestReceivedHandler``). A slow
/// sender (slowloris: headers or a body trickling in) cannot hold a connection, a worker and
/// its buffers beyond `timeout`; a request that arrived whole is never cut however long its
/// handling takes (argon2 on a loaded machine, a slow upstream), and an idle keep-alive
/// connection is the idle timeout's business, not this one's. It sits between TLS and HTTP,
/// so it sees the bytes as they come.
final class RequestReceiveTimeoutHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny

    private let timeout: TimeAmount
    private let logger: Logger
    private var scheduled: Scheduled<Void>?
    private var context: ChannelHandlerContext?
    /// Once the deadline passed, nothing more reaches HTTP: closing a TLS connection first
    /// exchanges close_notify, and bytes still arriving meanwhile must not complete the
    /// request.
    private var expired = false

    init(timeout: TimeAmount, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !expired else { return }
        arm()
        context.fireChannelRead(data)
    }

    /// A request has begun (its first bytes, or its head): the clock runs until its end.
    func arm() {
        guard scheduled == nil, let context else { return }
        let loopBound = NIOLoopBound((context, self), eventLoop: context.eventLoop)
        let timeout = self.timeout
        scheduled = context.eventLoop.scheduleTask(in: timeout) {
            let (context, handler) = loopBound.value
            handler.scheduled = nil
            handler.expired = true
            handler.logger.notice("request not received in time; connection closed", metadata: [
                "peer": "\(context.remoteAddress?.description ?? "?")", "timeout_ms": "\(timeout.nanoseconds / 1_000_000)",
            ])
            context.close(promise: nil)
        }
    }

    /// The decoder has the request's end: whatever the handler does now, the client is done.
    func requestReceived() {
        disarm()
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
        self.context = nil
    }

    private func disarm() {
        scheduled?.cancel()
        scheduled = nil
    }
}

/// Sits after the HTTP decoder and tells ``RequestReceiveTimeoutHandler`` where requests
/// begin and end. Both handlers live on the channel's event loop.
final class RequestReceivedHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    private let timeout: RequestReceiveTimeoutHandler

    init(timeout: RequestReceiveTimeoutHandler) {
        self.timeout = timeout
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            // A pipelined request whose bytes came in the same read as the previous end.
            timeout.arm()
        case .end:
            timeout.requestReceived()
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    /// Bytes that are not HTTP: the decoder reads nothing more, so no request is being
    /// received; the connection closes after the answers due (a 400 last). Left armed, the
    /// timer would cut those answers.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError { timeout.requestReceived() }
        context.fireErrorCaught(error)
    }
}

/// Adds ``RequestReceiveTimeoutHandler`` in front of a child channel's HTTP handlers.
struct RequestTimeoutChannel<Base: ServerChildChannel & HTTPChannelHandler>: ServerChildChannel, HTTPChannelHandler {
    typealias Value = Base.Value

    let base: Base
    let timeout: Duration
    let logger: Logger

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let nanoseconds = timeout.components.seconds * 1_000_000_000 + timeout.components.attoseconds / 1_000_000_000
        let handlerLogger = self.logger
        return channel.eventLoop.makeCompletedFuture { () -> NIOLoopBound<RequestReceiveTimeoutHandler> in
            let handler = RequestReceiveTimeoutHandler(timeout: .nanoseconds(nanoseconds), logger: handlerLogger)
            try channel.pipeline.syncOperations.addHandler(handler)
            return NIOLoopBound(handler, eventLoop: channel.eventLoop)
        }.flatMap { handler in
            self.base.setup(channel: channel, logger: logger).flatMapThrowing { value in
                let operations = channel.pipeline.syncOperations
                let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
                try operations.addHandler(RequestReceivedHandler(timeout: handler.value), position: .after(decoder))
                return value
            }
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
