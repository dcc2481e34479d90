import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Ends the connection after an answer of the FHIR router whose head says `Connection: close`.
/// Hummingbird keeps a connection open unless the *request* asked to close it, so without this
/// a caller the router refuses for the connection's own sake (its certificate revoked, expired
/// or its CA removed since the handshake; see ``CallerAuthenticator/Refusal/endsConnection``)
/// could keep a connection that will never be served again, and a client that ignores
/// `Connection: close` would never make the new handshake its renewed certificate needs. The
/// slot-search relay closes its own answers' connections itself; this sits above it, between
/// Hummingbird's codec and the router.
///
/// As RFC 9112 §9.6 asks of a server that sends `close`: nothing read after that answer's head
/// reaches the router (a pipelined request is not processed; one Hummingbird had already
/// received finds the connection without a caller, ``ClientIdentityHandler/forget()``); once the answer is written,
/// the sending side closes (TLS `close_notify`, then FIN) and whatever the client still sends
/// is read and dropped for a moment before the connection closes, so that unread bytes (a body
/// the refusal did not wait for) do not make the kernel reset the connection under the answer
/// before the client has read it (nginx's lingering close).
final class ClosingAnswerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// How long what the client still sends is read and dropped after the answer.
    static let linger: TimeAmount = .seconds(2)

    private var closeAfterEnd = false
    private var closing = false
    private var lingerTimer: Scheduled<Void>?

    /// `close` among a response's connection options.
    static func saysClose(_ fields: HTTPFields) -> Bool {
        fields[values: .connection].contains { value in
            value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "close" }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After a `close` answer began, nothing more is a request.
        if closeAfterEnd || closing { return }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        lingerTimer?.cancel()
        lingerTimer = nil
        context.fireChannelInactive()
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            // An interim answer (`100 Continue`) says nothing of the final one's.
            if head.status.kind != .informational, Self.saysClose(head.headerFields) { closeAfterEnd = true }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        case .end:
            guard closeAfterEnd, !closing else {
                context.write(data, promise: promise)
                return
            }
            closeAfterEnd = false
            closing = true
            context.writeAndFlush(data).assumeIsolated().whenComplete { [self] result in
                promise?.completeWith(result)
                context.close(mode: .output, promise: nil)
                lingerTimer = context.eventLoop.assumeIsolated().scheduleTask(in: Self.linger) {
                    context.close(promise: nil)
                }
            }
        }
    }
}
