import HummingbirdCore
import Logging
import NIOCore

/// Closes a connection whose request does not arrive in time: armed by the first byte of a
/// request, disarmed by the first byte of the answer. A slow sender (slowloris: headers or a
/// body trickling in) cannot hold a connection, a worker and its buffers beyond `timeout`;
/// an idle keep-alive connection is the idle timeout's business, not this one's. It sits
/// between TLS and HTTP, so it sees the bytes as they come.
final class RequestReceiveTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias InboundOut = NIOAny
    typealias OutboundIn = NIOAny
    typealias OutboundOut = NIOAny

    private let timeout: TimeAmount
    private let logger: Logger
    private var scheduled: Scheduled<Void>?
    /// Once the deadline passed, nothing more reaches HTTP: closing a TLS connection first
    /// exchanges close_notify, and bytes still arriving meanwhile must not complete the
    /// request.
    private var expired = false

    init(timeout: TimeAmount, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !expired else { return }
        if scheduled == nil {
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
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        disarm()
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        disarm()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        disarm()
    }

    private func disarm() {
        scheduled?.cancel()
        scheduled = nil
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
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(RequestReceiveTimeoutHandler(timeout: .nanoseconds(nanoseconds), logger: handlerLogger))
        }.flatMap {
            self.base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
