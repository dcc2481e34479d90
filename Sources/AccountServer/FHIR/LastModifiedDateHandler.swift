import Foundation
import HTTPTypes
import NIOCore
import NIOHTTPTypes

/// Gives an answer that carries `Last-Modified` a `Date` of the moment it is written.
/// Hummingbird stamps every answer with a `Date` it formats once a second, which can be up to
/// a second (more under load) behind the clock the `Last-Modified` was read against, so a
/// resource written just now was answered with a `Last-Modified` later than its `Date`: RFC 9110
/// §8.8.2.1 forbids that, and a cache computing heuristic freshness from the two gets it wrong.
/// Only answers with `Last-Modified` pay the formatting (INT_R02's resource answers); it sits
/// among the router's handlers, so the relay's answers (whose `Date` is the upstream's) never
/// pass here.
final class LastModifiedDateHandler: ChannelOutboundHandler, RemovableChannelHandler {
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard case .head(var head) = unwrapOutboundIn(data), head.headerFields[.lastModified] != nil else {
            context.write(data, promise: promise)
            return
        }
        head.headerFields[.date] = FHIRResponses.httpDate(Date())
        context.write(wrapOutboundOut(.head(head)), promise: promise)
    }
}
