import HummingbirdCore
import Logging
import NIOCore
import Synchronization

/// How many connections one client may hold open at once on a listener that faces the
/// outside (web, FHIR), as nginx's `limit_conn`. Without it, one address opening connections
/// and sending a byte now and then (each under the idle and receive timeouts) could hold
/// tens of thousands of them, each with its TLS state, until the process ran out of memory
/// or file descriptors, and the SAS and every regulator with it.
///
/// Counted per IPv4 address, per IPv6 /64 (what one subscriber is given) and per IPv6 /48
/// with ``networkFactor`` times the room (a site: free from tunnel brokers, with 65,536 /64s
/// in it), as the sign-in rate limits count. The listener's trusted proxies and the
/// addresses of `--connection-limit-exempt` (a load balancer that hides its clients'
/// addresses) are not counted: every client behind them arrives through their connections.
final class ConnectionLimiter: Sendable {
    /// Connections one client may hold at once; 0 turns the limit off.
    let perClient: Int
    let networkFactor: Int
    let exempt: [CIDR]
    let listener: String
    private let held = Mutex<[String: Int]>([:])
    /// Refusals are logged once a minute per client at most: a client that keeps trying
    /// must not flood the log.
    private let refusalLog = RateLimiter(perMinute: 1, burst: 1, maximumKeys: 10_000)
    private let metrics: ServerMetrics?
    private let logger: Logger

    init(listener: String, perClient: Int, exempt: [CIDR], networkFactor: Int = 16, metrics: ServerMetrics?, logger: Logger) {
        self.listener = listener
        self.perClient = perClient
        self.exempt = exempt
        self.networkFactor = networkFactor
        self.metrics = metrics
        self.logger = logger
    }

    /// The counts a new connection from `address` takes: nil when it is refused (a count at its
    /// limit), empty when it is not counted (no limit, a trusted proxy, no IP address).
    func acquire(_ address: SocketAddress?) -> [String]? {
        guard perClient > 0, let ip = address?.ipAddress, !exempt.contains(where: { $0.contains(ip) }) else { return [] }
        let keys = RateLimiter.keys(ip)
        var limits = [(keys.client, perClient)]
        if let network = keys.network { limits.append((network, perClient * networkFactor)) }
        let taken = held.withLock { held -> Bool in
            guard limits.allSatisfy({ held[$0.0, default: 0] < $0.1 }) else { return false }
            for (key, _) in limits { held[key, default: 0] += 1 }
            return true
        }
        guard taken else {
            metrics?.connectionRefused(listener: listener)
            if refusalLog.allow(keys.client) {
                logger.warning("connection refused: the client holds as many as allowed (--max-connections-per-client; a load balancer or NAT hiding its clients goes in --connection-limit-exempt; further refusals from it are not logged for a minute)",
                              metadata: ["listener": "\(listener)", "peer": "\(keys.client)", "limit": "\(perClient)"])
            }
            return nil
        }
        return limits.map(\.0)
    }

    func release(_ keys: [String]) {
        guard !keys.isEmpty else { return }
        held.withLock { held in
            for key in keys {
                let left = held[key, default: 1] - 1
                held[key] = left > 0 ? left : nil
            }
        }
    }

    /// For tests: the connections counted now, by key.
    var counts: [String: Int] { held.withLock { $0 } }
}

/// The first step of a listener's connections: takes the connection's place in the
/// ``ConnectionLimiter`` (given back when it closes, however it closes), or refuses it.
///
/// A refused connection is closed as soon as it is active, before TLS reads anything. Its
/// set-up still succeeds: Hummingbird sets a connection up inside NIO's async accept stream,
/// which drops a failed set-up without registering or closing the connection (the socket
/// stays open, its close never comes). For the same reason, a set-up of the layers below
/// that fails closes the connection here, which gives its place back.
struct ConnectionLimitChannel<Base: ServerChildChannel & HTTPChannelHandler>: ServerChildChannel, HTTPChannelHandler {
    typealias Value = Base.Value

    let base: Base
    let limiter: ConnectionLimiter

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let limiter = self.limiter
        return channel.eventLoop.makeCompletedFuture {
            if let keys = limiter.acquire(channel.remoteAddress) {
                if !keys.isEmpty { channel.closeFuture.whenComplete { _ in limiter.release(keys) } }
            } else {
                try channel.pipeline.syncOperations.addHandler(RefusedConnectionHandler())
            }
        }.flatMap {
            self.base.setup(channel: channel, logger: logger)
        }.flatMapErrorThrowing { error in
            channel.close(promise: nil)
            throw error
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// First in a refused connection's pipeline: closes it as soon as it is active and passes
/// nothing on. Not even the activity: TLS would begin its handshake, and the close would
/// then be logged as a handshake refused (a warning per connection, blaming the client's
/// certificate, where the refusal is logged once a minute).
final class RefusedConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny

    func channelActive(context: ChannelHandlerContext) {
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
