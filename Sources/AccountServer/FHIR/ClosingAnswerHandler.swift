import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Ends the connection once an answer of the FHIR router whose head says `Connection: close`
/// is written. Hummingbird keeps a connection open unless the *request* asked to close it, so
/// without this a caller the router refuses for the connection's own sake (its certificate
/// revoked, expired or its CA removed since the handshake; see
/// ``CallerAuthenticator/Refusal/endsConnection``) could keep a connection that will never be
/// served again, and a client that ignores `Connection: close` would never make the new
/// handshake its renewed certificate needs. The slot-search relay closes its own answers'
/// connections itself; this sits above it, between Hummingbird's codec and the router.
final class ClosingAnswerHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private var closeAfterEnd = false

    /// `close` among a response's connection options.
    static func saysClose(_ fields: HTTPFields) -> Bool {
        fields[values: .connection].contains { value in
            value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "close" }
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            // An interim answer (`100 Continue`) says nothing of the final one's.
            if head.status.kind != .informational { closeAfterEnd = Self.saysClose(head.headerFields) }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            guard closeAfterEnd else {
                context.write(data, promise: promise)
                return
            }
            closeAfterEnd = false
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(data).whenComplete { result in
                promise?.completeWith(result)
                loopBound.value.close(promise: nil)
            }
        }
    }
}
