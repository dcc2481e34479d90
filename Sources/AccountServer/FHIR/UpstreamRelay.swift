import Accounts
import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOPosix
import NIOSSL
import Storage
import Synchronization

/// The INT_R01 slot-search relay (`--fhir-upstream`), on the FHIR connection's own event loop.
///
/// Every SAS slot search goes through here, so it is a SwiftNIO pipeline rather than a
/// router handler: measured on a 2-core machine, the router's task hops and the async HTTP
/// client cost about three times nginx's `proxy_pass` per request. A request is decided,
/// relayed and answered on the loop its bytes arrived on, over a keep-alive connection to
/// the upstream owned by that loop, with nothing copied or buffered beyond one read.
///
/// The decision is the router's: ``FHIRRouting/route(method:path:)`` says which
/// requests are INT_R02 (handed on, unchanged, to the router behind this handler) and which
/// are relayed; the caller is authenticated by the same ``CallerAuthenticator`` as the
/// router's requests, before anything is relayed. The relay's contract (docs/deployment.md,
/// topology 2):
/// - streamed both ways, with backpressure (a slow reader slows the upstream, nothing piles
///   up here);
/// - headers: RFC 9110 §7.6.1 hop-by-hop fields and those a `Connection` header names stop
///   here, in both directions; so do identity headers a caller sends and any name with an
///   underscore; the verified caller goes up in `X-SSL-Client-*` as nginx would set them;
/// - the connection time is bounded (`--fhir-upstream-connect-timeout`), and so are the wait
///   for the answer's head and each wait between two reads of its body
///   (`--fhir-upstream-timeout`);
/// - before the upstream's head: 502 (unreachable, refused TLS) or 504 (timed out)
///   OperationOutcome; after it, the connection is closed (the client sees a truncated body,
///   never a spliced one); the same for bytes that are not HTTP after a request: their 400
///   waits for the answers before it;
/// - an idempotent request without a body that meets a kept-alive connection the upstream
///   had just closed is sent once more on a new connection, as nginx does.
final class UpstreamRelay: Sendable {
    struct Target: Sendable {
        var host: String
        var port: Int
        /// The upstream's base path, without a trailing slash ("" or "/fhir").
        var basePath: String
        /// `Host` as the upstream expects it.
        var hostHeader: String
        var tls: NIOSSLContext?
        /// SNI and certificate name, nil for an IP address.
        var serverHostname: String?
    }

    let target: Target
    let connectTimeout: TimeAmount
    let responseTimeout: TimeAmount
    let authenticator: CallerAuthenticator
    let directory: AccountDirectory
    let metrics: ServerMetrics
    let logger: Logger
    /// Kept-alive upstream connections per event loop, and how long one may stay unused.
    let maximumIdlePerLoop = 64
    let idleTimeout: TimeAmount = .seconds(60)
    private let pools = Mutex<[ObjectIdentifier: UpstreamPool]>([:])

    init(configuration: UpstreamConfiguration, authenticator: CallerAuthenticator, directory: AccountDirectory,
         metrics: ServerMetrics, logger: Logger) throws {
        guard let components = URLComponents(string: configuration.url), let scheme = components.scheme?.lowercased(),
              ["http", "https"].contains(scheme), let rawHost = components.host, !rawHost.isEmpty else {
            throw ConfigurationError(description: "--fhir-upstream must be an http(s)://host[:port][/base] URL, got \(shownURL(configuration.url))")
        }
        guard components.user == nil && components.password == nil else {
            // They would never be sent, and the URL is logged at start: refused, without
            // repeating it.
            throw ConfigurationError(description: "--fhir-upstream must not carry a user or password (the relay authenticates the SAS, not itself); remove them from the URL")
        }
        guard components.query == nil && components.fragment == nil else {
            throw ConfigurationError(description: "--fhir-upstream must be an http(s)://host[:port][/base] URL, without a query or fragment")
        }
        let port = components.port ?? (scheme == "https" ? 443 : 80)
        // Foundation on Linux keeps an IPv6 literal's brackets in `host` (`[::1]`): taken off
        // to connect, put back once for the Host header.
        let host = rawHost.withoutIPv6Brackets
        let bracketed = host.contains(":") ? "[\(host)]" : host
        var tls: NIOSSLContext?
        if scheme == "https" {
            tls = try NIOSSLContext(configuration: try configuration.tlsConfiguration())
        }
        let isAddress = CIDR.bytes(host) != nil
        target = Target(host: host, port: port, basePath: components.percentEncodedPath.trimmingSuffix("/"),
                        hostHeader: components.port == nil ? bracketed : "\(bracketed):\(port)", tls: tls,
                        serverHostname: isAddress ? nil : host)
        connectTimeout = .nanoseconds(Int64(configuration.connectTimeout.components.seconds) * 1_000_000_000
            + configuration.connectTimeout.components.attoseconds / 1_000_000_000)
        responseTimeout = .nanoseconds(Int64(configuration.responseTimeout.components.seconds) * 1_000_000_000
            + configuration.responseTimeout.components.attoseconds / 1_000_000_000)
        self.authenticator = authenticator
        self.directory = directory
        self.metrics = metrics
        self.logger = logger
    }

    /// The pool of this event loop (made on first use; only ever used on that loop).
    func pool(on eventLoop: any EventLoop) -> UpstreamPool {
        let key = ObjectIdentifier(eventLoop)
        return pools.withLock { pools in
            if let pool = pools[key] { return pool }
            let pool = UpstreamPool(eventLoop: eventLoop, relay: self)
            pools[key] = pool
            return pool
        }
    }

    /// Closes the idle upstream connections (at shutdown, after the listeners have drained).
    func shutdown() async {
        let all = pools.withLock { Array($0.values) }
        for pool in all {
            try? await pool.eventLoop.submit { pool.closeAll() }.get()
        }
    }

    /// The request target for the upstream: its base path, then the path and query as
    /// received, with the characters a URL may not hold raw (the SAS sends
    /// `identifier=system|value` with a raw `|`) percent-encoded; what is already encoded
    /// stays as it is, so the upstream decodes the same query.
    func upstreamTarget(_ pathAndQuery: String) -> String {
        target.basePath + Self.encodingInvalidCharacters(pathAndQuery)
    }

    private static let keptInTarget: [Bool] = {
        var table = [Bool](repeating: false, count: 256)
        // Not `#`, `[` or `]`: a request target holds none of them raw (RFC 9112 §3.2, RFC 3986
        // §3.4), and backends disagree on where a query with a raw `#` ends; strict ones
        // (Tomcat) refuse raw brackets.
        for byte in "-._~:/?@!$&'()*+,;=%".utf8 { table[Int(byte)] = true }
        for byte in UInt8(ascii: "A")...UInt8(ascii: "Z") { table[Int(byte)] = true }
        for byte in UInt8(ascii: "a")...UInt8(ascii: "z") { table[Int(byte)] = true }
        for byte in UInt8(ascii: "0")...UInt8(ascii: "9") { table[Int(byte)] = true }
        return table
    }()

    static func encodingInvalidCharacters(_ target: String) -> String {
        let table = keptInTarget
        guard target.utf8.contains(where: { !table[Int($0)] }) else { return target }
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        bytes.reserveCapacity(target.utf8.count + 16)
        for byte in target.utf8 {
            if table[Int(byte)] {
                bytes.append(byte)
            } else {
                bytes += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0f)]]
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The kept-alive upstream connections of one event loop. Only touched on that loop.
final class UpstreamPool: @unchecked Sendable {
    let eventLoop: any EventLoop
    private unowned let relay: UpstreamRelay
    private var idle: [UpstreamConnection] = []
    private var sweeper: RepeatedTask?
    /// Exchanges under way, checked a few times per timeout for one that waits too long:
    /// a timer per exchange (scheduled, then cancelled) cost 2 % of the relay's CPU.
    private var watched: [RelayExchange] = []
    private var watchdog: RepeatedTask?

    init(eventLoop: any EventLoop, relay: UpstreamRelay) {
        self.eventLoop = eventLoop
        self.relay = relay
    }

    /// A connection to the upstream: the most recently used idle one (`reused`), or a new one.
    func acquire(fresh: Bool = false, _ done: @escaping (Result<(UpstreamConnection, reused: Bool), any Error>) -> Void) {
        eventLoop.preconditionInEventLoop()
        if !fresh {
            while let connection = idle.popLast() {
                if connection.isActive {
                    done(.success((connection, true)))
                    return
                }
            }
        }
        let target = relay.target
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(relay.connectTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls = target.tls {
                        try channel.pipeline.syncOperations.addHandler(try NIOSSLClientHandler(context: tls, serverHostname: target.serverHostname))
                    }
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(UpstreamConnection())
                }
            }
        bootstrap.connect(host: target.host, port: target.port).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                guard let connection = try? channel.pipeline.syncOperations.handler(type: UpstreamConnection.self) else {
                    channel.close(promise: nil)
                    done(.failure(ChannelError.ioOnClosedChannel))
                    return
                }
                connection.pool = self
                done(.success((connection, false)))
            case .failure(let error):
                done(.failure(error))
            }
        }
    }

    /// Back into the pool after a complete exchange on a kept-alive connection.
    func release(_ connection: UpstreamConnection) {
        eventLoop.preconditionInEventLoop()
        guard connection.isActive, idle.count < relay.maximumIdlePerLoop else {
            connection.close()
            return
        }
        connection.idleSince = .now()
        idle.append(connection)
        if sweeper == nil {
            let timeout = relay.idleTimeout
            sweeper = eventLoop.scheduleRepeatedTask(initialDelay: timeout, delay: .seconds(10)) { [weak self] _ in
                self?.sweep(olderThan: timeout)
            }
        }
    }

    func watch(_ exchange: RelayExchange) {
        watched.append(exchange)
        guard watchdog == nil else { return }
        let timeout = relay.responseTimeout
        let tick = TimeAmount.nanoseconds(max(TimeAmount.milliseconds(50).nanoseconds, min(TimeAmount.seconds(1).nanoseconds, timeout.nanoseconds / 8)))
        watchdog = eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { [weak self] _ in
            self?.checkWatched(timeout: timeout)
        }
    }

    private func checkWatched(timeout: TimeAmount) {
        let now = NIODeadline.now()
        let current = watched
        watched = current.filter { !$0.finished }
        for exchange in watched where exchange.lastActivity + timeout <= now {
            exchange.timedOut()
        }
        watched.removeAll { $0.finished }
        if watched.isEmpty {
            watchdog?.cancel()
            watchdog = nil
        }
    }

    func remove(_ connection: UpstreamConnection) {
        idle.removeAll { $0 === connection }
    }

    private func sweep(olderThan timeout: TimeAmount) {
        let limit = NIODeadline.now() - timeout
        let (stale, fresh) = (idle.filter { $0.idleSince < limit }, idle.filter { $0.idleSince >= limit })
        idle = fresh
        for connection in stale { connection.close() }
        if idle.isEmpty {
            sweeper?.cancel()
            sweeper = nil
        }
    }

    func closeAll() {
        let all = idle
        idle = []
        sweeper?.cancel()
        sweeper = nil
        for connection in all { connection.close() }
    }
}

/// One upstream connection: hands what the upstream answers to the exchange using it, and
/// holds its reads back while the client cannot take more.
final class UpstreamConnection: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundIn = HTTPClientRequestPart
    typealias OutboundOut = HTTPClientRequestPart

    private var context: ChannelHandlerContext?
    weak var pool: UpstreamPool?
    var exchange: RelayExchange?
    var idleSince = NIODeadline.now()
    private var holdingReads = false
    private var readPending = false

    var isActive: Bool { context?.channel.isActive ?? false }
    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        guard let exchange else {
            // An idle connection has nothing to say: whatever it sends, it is not reused.
            context.close(promise: nil)
            return
        }
        exchange.upstreamReceived(part)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        exchange?.upstreamReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        exchange?.upstreamWritabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        pool?.remove(self)
        let exchange = self.exchange
        self.exchange = nil
        exchange?.upstreamFailed(UpstreamClosed())
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let exchange = self.exchange
        self.exchange = nil
        exchange?.upstreamFailed(error)
        context.close(promise: nil)
    }

    func read(context: ChannelHandlerContext) {
        if holdingReads { readPending = true } else { context.read() }
    }

    func holdReads(_ hold: Bool) {
        holdingReads = hold
        if !hold, readPending {
            readPending = false
            context?.read()
        }
    }

    func send(_ part: HTTPClientRequestPart, flush: Bool, written: (() -> Void)? = nil) {
        guard let context else { return }
        if let written {
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.assumeIsolated().whenSuccess { written() }
            context.write(wrapOutboundOut(part), promise: promise)
        } else {
            context.write(wrapOutboundOut(part), promise: nil)
        }
        if flush { context.flush() }
    }

    func close() {
        exchange = nil
        context?.close(promise: nil)
    }

    struct UpstreamClosed: Error, CustomStringConvertible {
        var description: String { "the upstream closed the connection" }
    }
}

/// One relayed request and its answer. Lives on the client connection's event loop.
final class RelayExchange {
    /// Weak: the client connection may go away mid-exchange (its handler removed with it);
    /// the exchange, still held by its upstream connection and the watchdog, then ends quietly.
    private weak var handler: UpstreamRelayHandler?
    private let pool: UpstreamPool
    private let relay: UpstreamRelay
    let head: HTTPRequestHead
    /// The request's path and query in origin form (``UpstreamRelayHandler/originForm(_:)``).
    let target: String
    let requestID: String
    let caller: CallerAuthenticator.Caller
    let peer: String
    private var connection: UpstreamConnection?
    private var reused = false
    private var retried = false
    /// Request parts waiting for the connection (or for it to become writable).
    private var waiting: [HTTPClientRequestPart] = []
    private var waitingBytes = 0
    private var requestEnded = false
    private var requestHasBody = false
    private(set) var responseStarted = false
    private var keepAlive = true
    /// The request's end has reached the upstream's socket: only then may the connection be
    /// reused (an upstream that answers before reading the whole body would otherwise read its
    /// rest as the next request, perhaps another caller's).
    private var requestEndWritten = false
    private var receivedAnything = false
    /// The start, then the last sign of life from the upstream: the pool's watchdog times
    /// the exchange out `--fhir-upstream-timeout` after it.
    private(set) var lastActivity = NIODeadline.now()
    private(set) var finished = false

    init(handler: UpstreamRelayHandler, relay: UpstreamRelay, head: HTTPRequestHead, target: String, requestID: String,
         caller: CallerAuthenticator.Caller, peer: String) {
        self.handler = handler
        self.pool = handler.pool
        self.relay = relay
        self.head = head
        self.target = target
        self.requestID = requestID
        self.caller = caller
        self.peer = peer
    }

    /// Whether the client should stop sending for now (the upstream is slow to take the body).
    var wantsBackpressure: Bool { waitingBytes > 256 * 1024 || (connection.map { !$0.isWritable } ?? false) }

    func start() {
        pool.watch(self)
        waiting.append(.head(upstreamHead()))
        connect(fresh: false)
    }

    private func connect(fresh: Bool) {
        pool.acquire(fresh: fresh) { [self] result in
            guard !finished, let handler else {
                if case .success(let (connection, _)) = result { connection.close() }
                return
            }
            switch result {
            case .success(let (connection, reused)):
                self.connection = connection
                self.reused = reused
                connection.exchange = self
                connection.holdReads(!handler.clientIsWritable)
                armTimer()
                flushWaiting()
            case .failure(let error):
                fail(error)
            }
        }
    }

    /// The head sent upstream: the caller's fields minus what never crosses, then the identity.
    private func upstreamHead() -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.reserveCapacity(head.headers.count + 8)
        headers.add(name: "Host", value: relay.target.hostHeader)
        let namedByConnection = SlotSearchUpstream.connectionOptions(head.headers["connection"])
        var length: String?
        var chunked = false
        for (name, value) in head.headers {
            let lowered = name.lowercased()
            if lowered == "content-length" {
                length = length ?? value
            } else if lowered == "transfer-encoding" {
                chunked = true
            }
            // `Expect` was answered here (``UpstreamRelayHandler/startRelay``), as nginx does.
            guard !SlotSearchUpstream.isStripped(canonical: lowered), lowered != "expect",
                  namedByConnection.isEmpty || !namedByConnection.contains(lowered) else { continue }
            headers.add(name: name, value: value)
        }
        // The decoder has already refused conflicting or malformed framing.
        if chunked {
            headers.add(name: "Transfer-Encoding", value: "chunked")
            requestHasBody = true
        } else if let length {
            headers.add(name: "Content-Length", value: length)
            requestHasBody = length != "0"
        }
        SlotSearchUpstream.addIdentity(to: &headers, caller: caller.identity, clientAddress: caller.forwardedClientAddress ?? peer,
                                       host: head.headers.first(name: "host"), requestID: requestID)
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: relay.upstreamTarget(target), headers: headers)
    }

    /// A part of the client's request, in order.
    func requestPart(_ part: HTTPServerRequestPart) {
        guard !finished else { return }
        switch part {
        case .head:
            return
        case .body(let buffer):
            waiting.append(.body(.byteBuffer(buffer)))
            waitingBytes += buffer.readableBytes
        case .end:
            requestEnded = true
            waiting.append(.end(nil))
        }
        flushWaiting()
    }

    /// Sends what the client sent so far. NIO queues what the socket cannot take yet; the
    /// client's reads are held meanwhile (``wantsBackpressure``).
    private func flushWaiting() {
        if let connection, !waiting.isEmpty {
            let parts = waiting
            waiting = []
            waitingBytes = 0
            for (index, part) in parts.enumerated() {
                if case .end = part {
                    connection.send(part, flush: index == parts.count - 1) { [weak self] in self?.requestEndWritten = true }
                } else {
                    connection.send(part, flush: index == parts.count - 1)
                }
            }
            // A client still sending is activity too: a slow upload is not a silent upstream.
            lastActivity = .now()
        }
        handler?.relayBackpressureChanged()
    }

    /// GET, HEAD or OPTIONS without a body: safe to send again on a new connection.
    private var retryable: Bool {
        (head.method == .GET || head.method == .HEAD || head.method == .OPTIONS) && !requestHasBody
    }

    func upstreamWritabilityChanged() {
        flushWaiting()
    }

    func clientWritabilityChanged(_ writable: Bool) {
        connection?.holdReads(!writable)
    }

    func upstreamReceived(_ part: HTTPClientResponsePart) {
        guard !finished else { return }
        guard let handler else {
            clientClosed()
            return
        }
        receivedAnything = true
        switch part {
        case .head(let response):
            guard response.status.code >= 200 else { return }
            keepAlive = response.isKeepAlive
            responseStarted = true
            armTimer()
            // The decoder has checked every name and value; names with an underscore, the
            // hop-by-hop fields (but the length) and those `Connection` names stop here.
            var headers = HTTPHeaders()
            headers.reserveCapacity(response.headers.count + 2)
            let namedInAnswer = SlotSearchUpstream.connectionOptions(response.headers["connection"])
            for (name, value) in response.headers {
                guard !name.utf8.contains(UInt8(ascii: "_")) else { continue }
                let lowered = name.lowercased()
                guard lowered == "content-length" || !SlotSearchUpstream.hopByHop.contains(lowered),
                      lowered != "x-request-id", namedInAnswer.isEmpty || !namedInAnswer.contains(lowered) else { continue }
                headers.add(name: name, value: value)
            }
            headers.add(name: "X-Request-Id", value: requestID)
            // An HTTP/1.0 client cannot read a chunked body: one without a length is ended by
            // closing the connection after it.
            if head.version.minor == 0, head.method != .HEAD, response.status.mayHaveResponseBody, !headers.contains(name: "content-length") {
                handler.closeAfterThisAnswer()
            }
            relay.metrics.upstream(statusClass: Int(response.status.code) / 100)
            relay.metrics.request(surface: "fhir", status: Int(response.status.code))
            handler.writeHeadToClient(status: response.status, headers: headers)
        case .body(let buffer):
            armTimer()
            handler.writeToClient(.body(.byteBuffer(buffer)), flush: false)
        case .end:
            finish(returning: true)
            handler.writeToClient(.end(nil), flush: true)
            handler.exchangeFinished(self)
        }
    }

    func upstreamReadComplete() {
        if responseStarted, !finished { handler?.flushClient() }
    }

    func upstreamFailed(_ error: any Error) {
        guard !finished else { return }
        if !receivedAnything, reused, !retried, retryable, requestEnded {
            // A kept-alive connection the upstream closed as we reused it: once more, anew.
            retried = true
            connection = nil
            waiting = [.head(upstreamHead()), .end(nil)]
            connect(fresh: true)
            return
        }
        fail(error)
    }

    private func fail(_ error: any Error) {
        guard !finished else { return }
        let started = responseStarted
        finish(returning: false)
        guard let handler else { return }
        if started {
            relay.logger.warning("INT_R01 upstream failed after its answer began; connection closed",
                                 metadata: ["request_id": "\(requestID)", "upstream": "\(relay.target.hostHeader)", "error": "\(error)"])
            handler.closeClient()
            return
        }
        let timedOut: Bool = switch error {
        case is TimedOut: true
        case let channelError as ChannelError: if case .connectTimeout = channelError { true } else { false }
        default: false
        }
        relay.metrics.upstream(outcome: timedOut ? "timeout" : "unreachable")
        relay.logger.warning("INT_R01 upstream failed", metadata: [
            "request_id": "\(requestID)", "upstream": "\(relay.target.hostHeader)", "error": "\(error)", "timeout": "\(timedOut)",
        ])
        let refusal = timedOut
            ? FHIRError(.gatewayTimeout, code: .timeout, "The slot-search service behind this endpoint did not answer in time (request \(requestID)).")
            : FHIRError(.badGateway, code: .transient, "The slot-search service behind this endpoint is unreachable (request \(requestID)).")
        handler.writeOutcome(refusal, requestID: requestID)
        handler.exchangeFinished(self)
    }

    /// The client went away: the upstream connection cannot be reused mid-answer.
    func clientClosed() {
        guard !finished else { return }
        finish(returning: false)
    }

    private func finish(returning: Bool) {
        finished = true
        guard let connection else { return }
        self.connection = nil
        connection.exchange = nil
        connection.holdReads(false)
        if returning, keepAlive, requestEnded, requestEndWritten, let pool = connection.pool {
            // Back to the pool on the next turn of the loop, once the read that carried the
            // answer's end is fully processed: bytes after the answer then find no exchange
            // and close the connection, instead of reaching the next request's.
            pool.eventLoop.assumeIsolated().execute { pool.release(connection) }
        } else {
            connection.close()
        }
    }

    struct TimedOut: Error, CustomStringConvertible {
        var description: String { "no answer within the upstream timeout" }
    }

    /// The wait for the answer's head, then each wait between two reads of its body.
    private func armTimer() {
        lastActivity = .now()
    }

    func timedOut() {
        fail(TimedOut())
    }
}

/// Sits in the FHIR connection's pipeline right after the HTTP/1 decoder, before Hummingbird's
/// conversion to HTTP types and its connection-state handler: INT_R02 requests pass through
/// untouched to the router; INT_R01 requests are relayed here, from and to SwiftNIO's HTTP/1
/// parts, and never reach the router (measured: the conversions both ways and the state
/// handler cost about a tenth of the relay's CPU). One request at a time, in order: a request
/// that arrives while an earlier one is still being answered (pipelining) waits, and the
/// connection's reads are held meanwhile.
///
/// Being first, this handler also keeps the connection's idle time and graceful shutdown,
/// which Hummingbird's state handler, seeing only the router's requests, would get wrong (a
/// connection busy relaying would look idle): idle between requests for ``idleTimeout``, the
/// connection closes; on shutdown it closes at once if between requests, else after the
/// answer under way.
final class UpstreamRelayHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Stage {
        case idle
        /// Handed to the router: its parts pass until the end, then its answer is awaited.
        case toRouter(requestEnded: Bool, answered: Bool)
        /// The caller's authentication or the routing is being decided (asynchronously).
        case deciding
        case relaying(RelayExchange, requestEnded: Bool)
        /// Refused here; what is left of its body is dropped.
        case discarding
    }

    /// What FHIR's RESTful API uses; CONNECT, TRACE, WebDAV and the like are never relayed
    /// (a 2xx to CONNECT would leave the upstream connection in tunnel mode).
    static let relayedMethods: [NIOHTTP1.HTTPMethod] = [.GET, .HEAD, .POST, .PUT, .PATCH, .DELETE, .OPTIONS]

    private let relay: UpstreamRelay
    private let idleTimeout: TimeAmount
    private var context: ChannelHandlerContext?
    private var identity: ClientIdentityHandler?
    private var stage = Stage.idle
    private var queue = CircularBuffer<HTTPServerRequestPart>(initialCapacity: 4)
    private var readPending = false
    private var firedSinceReadComplete = false
    private var processing = false
    /// The request being answered here asked to close the connection after its answer.
    private var closeAfterAnswer = false
    /// The HTTP version of the request being relayed: its answer is written in it.
    private var version = HTTPVersion.http1_1
    private var peer = "unknown"
    /// The connection's last passed certificate revalidation (it stands until the CRLs change).
    private var revalidation: ClientCertificateVerifier.Revalidation?
    private var requestIDs = ConnectionRequestIDs()
    private var lastActivity = NIODeadline.now()
    private var idleCheck: Scheduled<Void>?
    /// The server is shutting down: the connection closes after the answer under way.
    private var quiescing = false
    /// The decoder met bytes that are not HTTP after the requests still queued or being
    /// answered here. Passed on (the server behind answers it `400` and closes) only once they
    /// are answered: passed at once, the 400 went out ahead of a relayed answer still awaited,
    /// or into one still streaming, and the connection closed under it.
    private var parseError: (any Error)?
    /// The client closed its side of the connection (a half-close after its last request):
    /// held like ``parseError``, since the server behind ends the connection on it.
    private var inputClosed = false
    /// The held parse error was passed on: the answer that follows (its 400) is the
    /// connection's last, and the connection closes once it is written.
    private var lastAnswerDue = false
    /// The connection closes once what is written is flushed (an answer with
    /// `Connection: close`, a shutdown): nothing may follow it.
    private var closing = false

    init(relay: UpstreamRelay, idleTimeout: TimeAmount) {
        self.relay = relay
        self.idleTimeout = idleTimeout
    }

    var eventLoop: any EventLoop { context!.eventLoop }
    /// This loop's upstream connections.
    private(set) var pool: UpstreamPool!
    var clientIsWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        identity = try? context.pipeline.syncOperations.handler(type: ClientIdentityHandler.self)
        pool = relay.pool(on: context.eventLoop)
        peer = context.channel.remoteAddress?.ipAddress ?? "unknown"
        scheduleIdleCheck(after: idleTimeout)
    }

    /// The connection is gone. An exchange under way closes its upstream connection, which
    /// cannot be reused mid-answer.
    func handlerRemoved(context: ChannelHandlerContext) {
        connectionEnded()
        self.context = nil
    }

    private func connectionEnded() {
        if case .relaying(let exchange, _) = stage { exchange.clientClosed() }
        stage = .discarding
        queue.removeAll()
        idleCheck?.cancel()
        idleCheck = nil
    }

    // MARK: idle time and graceful shutdown

    private var isBetweenRequests: Bool {
        if case .idle = stage, queue.isEmpty { return true }
        return false
    }

    private func scheduleIdleCheck(after delay: TimeAmount) {
        guard let context else { return }
        idleCheck = context.eventLoop.assumeIsolated().scheduleTask(in: delay) { [self] in
            idleCheck = nil
            guard let context = self.context else { return }
            let idleFor = NIODeadline.now() - lastActivity
            if isBetweenRequests, idleFor >= idleTimeout {
                context.close(promise: nil)
            } else {
                scheduleIdleCheck(after: isBetweenRequests ? idleTimeout - idleFor : idleTimeout)
            }
        }
    }

    /// A request whose answer went out before its body ended (refused, answered early) has
    /// just ended during a shutdown: the connection closes now.
    private func closeIfQuiescing() {
        if quiescing { context?.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .inputClosed = event as? ChannelEvent {
            // The server behind would end the connection at once, under a relayed answer
            // still due: passed on once the answers before it are written.
            inputClosed = true
            process()
            return
        }
        // Kept from the state handler behind, which would close a connection mid-relay.
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        quiescing = true
        if isBetweenRequests { context.close(promise: nil) }
    }

    // MARK: inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastActivity = .now()
        queue.append(unwrapInboundIn(data))
        process()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connectionEnded()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if parseError != nil, error is ByteToMessageDecoderError {
            // Bytes read after the malformed ones (reads stop once it is seen): the parse
            // error held says all there is to say.
            return
        }
        guard error is HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        parseError = error
        process()
    }

    /// Passes the held parse error and end of input on once nothing before them is left to
    /// answer here. When they cut the body of a request being relayed (whose end can no longer
    /// come), the exchange ends: its answer, if started, is cut with the connection, never
    /// spliced with a 400.
    private func passHeldIfDue() {
        guard parseError != nil || inputClosed, queue.isEmpty, let context else { return }
        if closing {
            // The answer written last closes the connection: nothing follows it.
            parseError = nil
            inputClosed = false
            return
        }
        switch stage {
        case .idle, .discarding, .toRouter(requestEnded: false, _):
            // Nothing of ours is under way (a refusal here is written whole at once); a request
            // handed to the router learns of it from the router's side.
            passHeld(context: context)
        case .relaying(let exchange, requestEnded: false):
            exchange.clientClosed()
            stage = .discarding
            if exchange.responseStarted || parseError == nil {
                // Part of the answer went out (or the client left mid-body): cut, never spliced.
                parseError = nil
                inputClosed = false
                context.close(promise: nil)
            } else {
                // Nothing of the answer went out: the 400 is the answer.
                passHeld(context: context)
            }
        case .toRouter(requestEnded: true, _), .relaying(_, requestEnded: true), .deciding:
            // An answer is still due before the 400 or the end.
            break
        }
    }

    /// The held parse error (the server behind answers it 400; the connection then closes),
    /// then the held end of input.
    private func passHeld(context: ChannelHandlerContext) {
        if let error = parseError {
            parseError = nil
            lastAnswerDue = true
            context.fireErrorCaught(error)
        }
        if inputClosed {
            inputClosed = false
            context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .relaying(let exchange, _) = stage { exchange.clientWritabilityChanged(context.channel.isWritable) }
        context.fireChannelWritabilityChanged()
    }

    /// Hands on or relays what was queued, outside a read (an asynchronous decision, the end
    /// of an answer): the router's side takes parts at the read's completion, so it gets one.
    private func processOutsideRead() {
        firedSinceReadComplete = false
        process()
        if firedSinceReadComplete, let context {
            firedSinceReadComplete = false
            context.fireChannelReadComplete()
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        firedSinceReadComplete = false
        context.fireChannelReadComplete()
    }

    private func process() {
        // Re-entered from an exchange or a decision made while the loop below runs: the loop
        // reads the stage afresh at each turn, so it carries on from there.
        guard let context, !processing else { return }
        processing = true
        defer { processing = false }
        while let part = queue.first {
            switch stage {
            case .idle:
                queue.removeFirst()
                guard case .head(let head) = part else { continue }
                begin(head, context: context)
            case .toRouter(requestEnded: false, let answered):
                queue.removeFirst()
                firedSinceReadComplete = true
                context.fireChannelRead(wrapInboundOut(part))
                if case .end = part {
                    stage = answered ? .idle : .toRouter(requestEnded: true, answered: false)
                    if answered { closeIfQuiescing() }
                }
            case .toRouter(requestEnded: true, _), .deciding, .relaying(_, requestEnded: true):
                resumeReadsIfPossible()
                passHeldIfDue()
                return
            case .relaying(let exchange, requestEnded: false):
                queue.removeFirst()
                if case .end = part { stage = .relaying(exchange, requestEnded: true) }
                exchange.requestPart(part)
            case .discarding:
                queue.removeFirst()
                if case .end = part {
                    stage = .idle
                    closeIfQuiescing()
                }
            }
        }
        resumeReadsIfPossible()
        passHeldIfDue()
    }

    /// The request target in origin form (`/path?query`): as received when it is one;
    /// the path and query of an absolute-form target (`http://host/path?query`), as the
    /// router's HTTP types read it; anything else (`*`, an authority) as received.
    static func originForm(_ uri: String) -> String {
        if uri.utf8.first == UInt8(ascii: "/") { return uri }
        guard let components = URLComponents(string: uri), let url = components.string, components.rangeOfScheme != nil else { return uri }
        let pathRange = components.rangeOfPath, queryRange = components.rangeOfQuery
        guard let lower = pathRange?.lowerBound ?? queryRange?.lowerBound, let upper = queryRange?.upperBound ?? pathRange?.upperBound else {
            return "/"
        }
        if let pathRange, !pathRange.isEmpty { return String(url[lower..<upper]) }
        return lower == upper ? "/" : "/" + url[lower..<upper]
    }

    /// The method in HTTP types' terms, for the routing table; nil for a method that is not
    /// a token (the decoder lets few of those through).
    static func routingMethod(_ method: NIOHTTP1.HTTPMethod) -> HTTPRequest.Method? {
        switch method {
        case .GET: .get
        case .HEAD: .head
        case .POST: .post
        case .PUT: .put
        case .PATCH: .patch
        case .DELETE: .delete
        case .OPTIONS: .options
        default: HTTPRequest.Method(method.rawValue)
        }
    }

    /// What the relay refuses to forward however the caller is: two `Host` fields (RFC 9112
    /// §3.2: 400; the upstream might read the other one), and a transfer coding other than
    /// `chunked` alone (the relay re-frames bodies as chunked, so a `gzip, chunked` body would
    /// reach the upstream as if it were plain; nginx answers 501).
    static func framingProblem(_ headers: HTTPHeaders) -> FHIRError? {
        if headers["host"].count > 1 {
            return FHIRError(.invalidRequest, code: .invalid, "The request carries more than one Host field.")
        }
        let codings = headers["transfer-encoding"].flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        if !codings.isEmpty, codings != ["chunked"] {
            return FHIRError(.notImplemented, code: .notSupported, "Only the chunked transfer coding is relayed.")
        }
        return nil
    }

    /// Routes a request: the router's local-or-relayed decision, the caller first.
    private func begin(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        let target = Self.originForm(head.uri)
        let pathOnly = target.firstIndex(of: "?").map { String(target[..<$0]) } ?? target
        // Only origin-form targets (`/…`): a `*` or authority-form target would be relayed
        // outside the upstream's base path, or steer a virtual-hosting upstream elsewhere.
        let ambiguous = !pathOnly.hasPrefix("/") || FHIRRouting.hasAmbiguousSegments(pathOnly)
        let method = Self.routingMethod(head.method)
        let route = method.map { FHIRRouting.route(method: $0, path: pathOnly) } ?? .upstream
        if route == .local, !ambiguous {
            toRouter(head, context: context)
            return
        }
        let requestID = requestIDs.next()
        closeAfterAnswer = !head.isKeepAlive
        version = head.version.major == 1 && head.version.minor == 0 ? .http1_0 : .http1_1
        let framing = Self.framingProblem(head.headers)
        let decided: (Result<CallerAuthenticator.Caller, FHIRError>) -> Void = { [self] result in
            guard self.context != nil else { return }
            switch result {
            case .failure(let refusal):
                // On a verified connection, a refusal means its certificate no longer passes
                // (revoked, expired, its CA removed): every later request would be refused
                // too, so the connection ends with this answer, and the client's next one
                // makes a handshake with what it holds now.
                // (Behind a proxy, ``CallerAuthenticator/Refusal/endsConnection`` said so.)
                if case .mutualTLS = relay.authenticator.mode { closeAfterAnswer = true }
                refuse(refusal, requestID: requestID)
            case .success where framing != nil:
                relay.logger.notice("FHIR request refused: framing", metadata: ["request_id": "\(requestID)", "reason": "\(framing!.issues.first?.diagnostics ?? "")"])
                refuse(framing!, requestID: requestID)
            case .success where ambiguous:
                relay.logger.notice("FHIR request refused: ambiguous path", metadata: ["path": "\(pathOnly)", "request_id": "\(requestID)"])
                refuse(FHIRError(.invalidContent, code: .invalid,
                                 "The request path contains a dot-segment, an encoded slash, a backslash, a ';', a '#' or a '%25'; no FHIR path does."),
                       requestID: requestID)
            case .success where !Self.relayedMethods.contains(head.method):
                refuse(FHIRError(.methodNotAllowed(allowed: Self.relayedMethods.map(\.rawValue).sorted()), code: .notSupported,
                                 "\(head.method.rawValue) is not relayed to the slot search."),
                       requestID: requestID)
            case .success(let caller):
                if case .practitionerRead(let id) = route, PractitionerValidator.isValidResourceID(id) {
                    decideHeld(id: id, head: head, target: target, caller: caller, requestID: requestID)
                } else {
                    startRelay(head, target: target, caller: caller, requestID: requestID)
                }
            }
        }
        if case .mutualTLS = relay.authenticator.mode, let settled = identity?.settledIdentity {
            decided(relay.authenticator.decide(handshake: settled, revalidation: &revalidation))
            return
        }
        stage = .deciding
        let authenticator = relay.authenticator
        var fields = HTTPFields()
        for (name, value) in head.headers {
            if let name = HTTPField.Name(name) { fields.append(HTTPField(name: name, value: value)) }
        }
        let (peer, identity, logger) = (self.peer, self.identity, relay.logger.withRequestID(requestID))
        let promise = context.eventLoop.makePromise(of: CallerAuthenticator.Caller.self)
        promise.completeWithTask { [fields] in
            try await authenticator.authenticate(headers: fields, peer: peer, handshakeIdentity: { await identity?.identity() }, logger: logger)
        }
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success(let caller): decided(.success(caller))
            case .failure(let refusal as CallerAuthenticator.Refusal):
                if refusal.endsConnection { closeAfterAnswer = true }
                decided(.failure(refusal.outcome))
            case .failure:
                closeAfterAnswer = true
                decided(.failure(FHIRError(.forbidden, code: .security, "The client certificate is not accepted.")))
            }
            processOutsideRead()
        }
    }

    /// `GET /Practitioner/{id}`: read here when this product holds the account, relayed otherwise.
    private func decideHeld(id: String, head: HTTPRequestHead, target: String, caller: CallerAuthenticator.Caller, requestID: String) {
        guard let context else { return }
        stage = .deciding
        let directory = relay.directory
        let promise = context.eventLoop.makePromise(of: Bool.self)
        promise.completeWithTask { try await directory.exists(id: id) }
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            guard let context = self.context else { return }
            switch result {
            case .success(false):
                startRelay(head, target: target, caller: caller, requestID: requestID)
            case .success(true), .failure:
                // Held, or the store failed: the router reads it (and answers the failure
                // as every INT_R02 read does).
                toRouter(head, context: context)
            }
            processOutsideRead()
        }
    }

    private func toRouter(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        stage = .toRouter(requestEnded: false, answered: false)
        firedSinceReadComplete = true
        context.fireChannelRead(wrapInboundOut(.head(head)))
    }

    private func startRelay(_ head: HTTPRequestHead, target: String, caller: CallerAuthenticator.Caller, requestID: String) {
        guard context != nil else { return }
        let exchange = RelayExchange(handler: self, relay: relay, head: head, target: target, requestID: requestID, caller: caller, peer: peer)
        stage = .relaying(exchange, requestEnded: false)
        // A client waiting for leave to send its body gets it now that the caller is accepted
        // and the request relayed (nginx answers `Expect` itself too; the body is streamed).
        if version == .http1_1, head.headers["expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            writeToClient(.head(HTTPResponseHead(version: .http1_1, status: .continue)), flush: true)
        }
        exchange.start()
    }

    private func refuse(_ error: FHIRError, requestID: String) {
        stage = .discarding
        writeOutcome(error, requestID: requestID)
    }

    // MARK: outbound (the router's answers)

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if lastAnswerDue, case .end = unwrapOutboundIn(data) {
            // The 400 for bytes that are not HTTP: nothing more will be read, the connection ends.
            lastAnswerDue = false
            closing = true
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(data).whenComplete { result in
                promise?.completeWith(result)
                loopBound.value.close(promise: nil)
            }
            return
        }
        guard case .end = unwrapOutboundIn(data), case .toRouter(let ended, _) = stage else {
            context.write(data, promise: promise)
            return
        }
        lastActivity = .now()
        if quiescing {
            // Shutting down: this answer is the connection's last.
            closing = true
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(data).whenComplete { result in
                promise?.completeWith(result)
                loopBound.value.close(promise: nil)
            }
            queue.removeAll()
            stage = .discarding
            return
        }
        context.write(data, promise: promise)
        if ended {
            stage = .idle
            // The next request may already be waiting.
            context.eventLoop.assumeIsolated().execute { [self] in processOutsideRead() }
        } else {
            stage = .toRouter(requestEnded: false, answered: true)
        }
    }

    func read(context: ChannelHandlerContext) {
        if holdsReads { readPending = true } else { context.read() }
    }

    private var holdsReads: Bool {
        if queue.count > 0 || parseError != nil || inputClosed { return true }
        if case .relaying(let exchange, requestEnded: false) = stage { return exchange.wantsBackpressure }
        return false
    }

    private func resumeReadsIfPossible() {
        guard readPending, !holdsReads, let context else { return }
        readPending = false
        context.read()
    }

    // MARK: called by the exchange

    func relayBackpressureChanged() {
        resumeReadsIfPossible()
    }

    func closeAfterThisAnswer() {
        closeAfterAnswer = true
    }

    /// An answer's head, in the request's HTTP version, saying whether the connection stays.
    func writeHeadToClient(status: HTTPResponseStatus, headers: HTTPHeaders) {
        var headers = headers
        if closeAfterAnswer || quiescing {
            headers.add(name: "Connection", value: "close")
        } else if version == .http1_0 {
            headers.add(name: "Connection", value: "keep-alive")
        }
        writeToClient(.head(HTTPResponseHead(version: version, status: status, headers: headers)), flush: false)
    }

    func writeToClient(_ part: HTTPServerResponsePart, flush: Bool) {
        guard let context else { return }
        if case .end = part, closeAfterAnswer || quiescing {
            // `Connection: close`, HTTP/1.0 or a shutdown: the answer, then the connection's end.
            closing = true
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(part)).whenComplete { _ in loopBound.value.close(promise: nil) }
            queue.removeAll()
            stage = .discarding
            return
        }
        context.write(wrapOutboundOut(part), promise: nil)
        if flush { context.flush() }
    }

    func flushClient() {
        context?.flush()
    }

    func closeClient() {
        context?.close(promise: nil)
    }

    func exchangeFinished(_ exchange: RelayExchange) {
        guard case .relaying(let current, let ended) = stage, current === exchange else { return }
        lastActivity = .now()
        // (During a shutdown the answer's end has already closed the connection.)
        stage = ended ? .idle : .discarding
        processOutsideRead()
    }

    /// An OperationOutcome answer written here (refused caller, ambiguous path, upstream failure).
    func writeOutcome(_ error: FHIRError, requestID: String) {
        let (status, fields, body) = FHIRResponses.outcomeParts(error)
        var headers = HTTPHeaders()
        for field in fields where field.name != .contentLength && field.name != .requestID {
            headers.add(name: field.name.rawName, value: field.value)
        }
        headers.add(name: "X-Request-Id", value: requestID)
        headers.add(name: "Content-Length", value: String(body.readableBytes))
        relay.metrics.request(surface: "fhir", status: status.code)
        writeHeadToClient(status: HTTPResponseStatus(statusCode: status.code, reasonPhrase: status.reasonPhrase), headers: headers)
        writeToClient(.body(.byteBuffer(body)), flush: false)
        writeToClient(.end(nil), flush: true)
    }
}

/// Request ids for the requests a handler answers on its connection: 16 hex digits, from a
/// random start per connection, then a fixed odd step (a random draw per request is a system
/// call, 1 % of the relay). Ids label logs and answers; they are not secrets.
struct ConnectionRequestIDs {
    private var last = UInt64.random(in: .min ... .max)

    mutating func next() -> String {
        last &+= 0x9E37_79B9_7F4A_7C15
        let value = last
        let digits = Array("0123456789abcdef".utf8)
        return String(unsafeUninitializedCapacity: 16) { buffer in
            for index in 0..<16 { buffer[index] = digits[Int((value >> UInt64(60 - 4 * index)) & 0xf)] }
            return 16
        }
    }
}

extension Logger {
    func withRequestID(_ requestID: String) -> Logger {
        var logger = self
        logger[metadataKey: "request_id"] = .string(requestID)
        return logger
    }
}

/// Adds ``UpstreamRelayHandler`` to Hummingbird's HTTP/1 channel, right after the decoder and
/// before the conversion to HTTP types. The handler keeps the connection's idle time and
/// graceful shutdown (``idleTimeout``): give `base` no idle timeout of its own. Without an
/// upstream it adds nothing.
struct UpstreamRelayChannel<Base: ServerChildChannel & HTTPChannelHandler>: ServerChildChannel, HTTPChannelHandler {
    typealias Value = Base.Value

    let base: Base
    let relay: UpstreamRelay?
    let idleTimeout: TimeAmount

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        guard let relay else { return base.setup(channel: channel, logger: logger) }
        return base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let operations = channel.pipeline.syncOperations
            // Right after the decoder (the receive timeout's handler, added later at the same
            // place, goes between them and still sees every request).
            let decoder = try operations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try operations.addHandler(UpstreamRelayHandler(relay: relay, idleTimeout: idleTimeout), position: .after(decoder))
            return value
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
