import Accounts
import Foundation
import HTTPTypes
import Habilitation
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTPTypes

// The forward-auth contract (docs/forward-auth.md), answered on two listeners:
// ``ForwardAuthListener`` (loopback, plain HTTP, for a proxy on the same host) and the web
// listener's `/forward-auth` (``ForwardAuthRouteHandler``, over HTTPS):
//
// - `200` + identity headers when ``HabilitationPolicy`` holds for the session cookie;
// - `401` + `Location` (the sign-in entry, carrying the original URL so `origin=sas`
//   survives) when there is no live session;
// - `403` + `X-Auth-Denial` when signed in but not habilitated.
//
// Each answer is what one database read made for this request returns (on SQLite, possibly
// the facts read a moment ago, when SQLite's commit stamp proves nothing was committed since),
// so a withdrawal committed before the request starts is always seen.

/// A forward-auth answer, independent of the HTTP stack that sends it.
struct ForwardAuthAnswer: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: String?
}

/// The forward-auth contract itself (docs/forward-auth.md), shared by the web listener's
/// `/forward-auth` route and the dedicated forward-auth listener.
struct ForwardAuthResponder: Sendable {
    let habilitation: HabilitationService
    let configuration: WebConfiguration
    let metrics: ServerMetrics

    /// The habilitation name the agenda receives.
    static let regulatorHabilitation = "regulateur"

    func answer(_ check: HabilitationCheck, header: (String) -> String?, authority: String?, withBody: Bool,
                started: ContinuousClock.Instant) -> ForwardAuthAnswer {
        var headers: [(String, String)] = [("Cache-Control", "no-store")]
        let status: Int
        let decision: String
        switch check.decision {
        case .granted:
            status = 200
            decision = "granted"
            if let account = check.account {
                headers.append(("X-Auth-Account-Id", account.accountID))
                if let national = account.nationalID { headers.append(("X-Auth-National-Id", national)) }
                if let technical = account.sasTechnicalID { headers.append(("X-Auth-SAS-Technical-Id", technical)) }
            }
            headers.append(("X-Auth-Habilitations", Self.regulatorHabilitation))
            headers.append(("X-Auth-Session-Origin", SessionOrigin.sas.rawValue))
        case .denied(let reasons) where check.session == nil:
            status = 401
            decision = "no-session"
            headers.append(("Location", signInURL(originalURL: originalURL(header: header, authority: authority))))
            headers.append(("X-Auth-Denial", reasons.map(\.rawValue).joined(separator: ",")))
        case .denied(let reasons) where reasons == [.directSession] && followsSASLink(originalURL(header: header, authority: authority)):
            // Signed in directly (a doctor using the agenda for their own practice), then
            // following a SAS link: a 403 would send them back to the SAS, which links here
            // again. Sign in from this SAS entry instead: it opens a SAS session (a new id).
            status = 401
            decision = "direct-session-sas-link"
            headers.append(("Location", signInURL(originalURL: originalURL(header: header, authority: authority))))
            headers.append(("X-Auth-Denial", reasons.map(\.rawValue).joined(separator: ",")))
        case .denied(let reasons):
            status = 403
            decision = "denied"
            headers.append(("Location", configuration.publicURL + "/acces-refuse"))
            headers.append(("X-Auth-Denial", reasons.map(\.rawValue).joined(separator: ",")))
            if let account = check.account { headers.append(("X-Auth-Account-Id", account.accountID)) }
            if let origin = check.session?.origin { headers.append(("X-Auth-Session-Origin", origin.rawValue)) }
        }
        metrics.forwardAuth(decision: decision, duration: ContinuousClock.now - started)
        guard status != 200, withBody else { return ForwardAuthAnswer(status: status, headers: headers, body: nil) }
        // A body for proxies that pass the answer on to the browser (Traefik does).
        headers.append(("Content-Type", "text/html; charset=utf-8"))
        let location = headers.first { $0.0 == "Location" }?.1 ?? "/connexion"
        let page = status == 401
            ? Pages.error("Connexion requise", "Connectez-vous pour accéder à cette page.", link: (location, "Se connecter"))
            : Pages.error("Accès refusé", "Vous n’avez pas l’habilitation régulateur pour cette session.", link: (location, "Voir pourquoi l’accès est refusé"))
        return ForwardAuthAnswer(status: status, headers: headers, body: page.description)
    }

    /// A header's value when the proxy sent it once; nil when it sent it twice or more, which
    /// no proxy does (a client-supplied copy the proxy failed to drop, beside its own): which
    /// one is the proxy's cannot be told, so neither is used to build a return URL. Both
    /// listeners read headers through this (one joined the copies, the other took the first).
    static func sole(_ values: [String]) -> String? {
        values.count == 1 ? values[0] : nil
    }

    /// The URL the browser asked the proxy for: `X-Original-URL` (absolute), or
    /// `X-Forwarded-Proto` + `X-Forwarded-Host` + `X-Original-URI`/`X-Forwarded-Uri`.
    func originalURL(header: (String) -> String?, authority: String?) -> String? {
        if let full = header("X-Original-URL"), full.lowercased().hasPrefix("https://") { return full }
        guard let path = header("X-Original-URI") ?? header("X-Forwarded-Uri"), path.hasPrefix("/") else { return nil }
        let scheme = header("X-Forwarded-Proto")?.lowercased() == "http" ? "http" : "https"
        guard let host = header("X-Forwarded-Host") ?? authority, !host.isEmpty else { return nil }
        return "\(scheme)://\(host)\(path)"
    }

    /// Whether the original URL is a SAS link (an accepted `origin`) we may send the browser
    /// back to after sign-in.
    func followsSASLink(_ originalURL: String?) -> Bool {
        guard let originalURL, configuration.validatedReturnURL(originalURL) != nil else { return false }
        return configuration.acceptedOrigin(in: originalURL) != nil
    }

    /// The sign-in entry, with the original URL as `retour` when it is an allowed place to
    /// come back to (no open redirect); its `origin=sas`, if any, makes the sign-in a SAS one.
    func signInURL(originalURL: String?) -> String {
        let entry = configuration.publicURL + "/connexion"
        guard let originalURL, configuration.validatedReturnURL(originalURL) != nil else { return entry }
        // RFC 3986's unreserved characters, ASCII only (`CharacterSet.alphanumerics` holds
        // every Unicode letter and digit, which would stay raw in the address).
        let allowed = CharacterSet(charactersIn: "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
        return entry + "?retour=" + (originalURL.addingPercentEncoding(withAllowedCharacters: allowed) ?? "")
    }
}


/// `/forward-auth` on the web listener, answered on the connection's event loop like the
/// dedicated listener's, before Hummingbird's router (for proxies on another host, which
/// reach forward-auth over HTTPS: the router's task hops and middleware cost about as much
/// as the TLS itself). Sits after Hummingbird's connection-state handler, so idle time and
/// graceful shutdown count these requests; every other request passes to the router
/// unchanged. One request at a time, in order: a pipelined request waits for the answer
/// before it, and the connection's reads are held meanwhile.
final class ForwardAuthRouteHandler: ChannelDuplexHandler, RemovableChannelHandler {
    /// `Connection: close` among the request's connection options (the relay, on NIO's types,
    /// reads `isKeepAlive` instead).
    static func asksToClose(_ head: HTTPRequest) -> Bool {
        head.headerFields[values: .connection].contains { value in
            value.split(separator: ",").contains { $0.trimmingCharacters(in: .whitespaces).lowercased() == "close" }
        }
    }

    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private let responder: ForwardAuthResponder
    private let logger: Logger
    private var context: ChannelHandlerContext?
    private var queue = CircularBuffer<HTTPRequestPart>(initialCapacity: 4)
    /// The router's request being passed on, part by part.
    private var routerRequestOpen = false
    /// The router's answer is not complete yet.
    private var routerBusy = false
    /// A forward-auth request being read (its body is dropped), then answered.
    private var reading: (head: HTTPRequest, started: ContinuousClock.Instant)?
    private var answering = false
    private var closeAfterAnswer = false
    /// An answer said `Connection: close` (the router's, or one here to a request that asked
    /// for it): nothing read after it is a request (RFC 9112 §9.6), forward-auth included.
    private var discarding = false
    /// The router's answer being written says `Connection: close`.
    private var routerAnswerCloses = false
    private var processing = false
    private var readPending = false
    private var firedSinceReadComplete = false
    private var requestIDs = ConnectionRequestIDs()

    static let methods: Set<HTTPRequest.Method> = [.get, .head, .post, .put, .patch, .delete, .options]

    init(responder: ForwardAuthResponder, logger: Logger) {
        self.responder = responder
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    static func isForwardAuth(_ head: HTTPRequest) -> Bool {
        guard methods.contains(head.method), let path = head.path else { return false }
        return path == "/forward-auth" || path.hasPrefix("/forward-auth?")
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if discarding { return }
        queue.append(unwrapInboundIn(data))
        process()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        firedSinceReadComplete = false
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        queue.removeAll()
        context.fireChannelInactive()
    }

    private func process() {
        guard let context, !processing else { return }
        processing = true
        defer { processing = false }
        while let part = queue.first {
            if routerRequestOpen {
                queue.removeFirst()
                if case .end = part { routerRequestOpen = false }
                firedSinceReadComplete = true
                context.fireChannelRead(wrapInboundOut(part))
                continue
            }
            if let current = reading {
                queue.removeFirst()
                if case .end = part {
                    reading = nil
                    answer(current.head, started: current.started, context: context)
                }
                continue
            }
            guard !routerBusy, !answering else { break }
            queue.removeFirst()
            guard case .head(let head) = part else { continue }
            if Self.isForwardAuth(head) {
                reading = (head, .now)
            } else {
                routerBusy = true
                routerRequestOpen = true
                firedSinceReadComplete = true
                context.fireChannelRead(wrapInboundOut(part))
            }
        }
        if readPending, queue.isEmpty {
            readPending = false
            context.read()
        }
    }

    private func processOutsideRead() {
        firedSinceReadComplete = false
        process()
        if firedSinceReadComplete, let context {
            firedSinceReadComplete = false
            context.fireChannelReadComplete()
        }
    }

    private func answer(_ head: HTTPRequest, started: ContinuousClock.Instant, context: ChannelHandlerContext) {
        answering = true
        closeAfterAnswer = Self.asksToClose(head)
        let token = WebCookie.soleValue(named: WebCookie.session.rawValue, inHeaders: head.headerFields[values: .cookie])
        do {
            if let result = try responder.habilitation.checkNow(sessionToken: token, on: context.eventLoop) {
                write(answer(result, head: head, started: started))
                return
            }
        } catch {
            write(failed(error))
            return
        }
        let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
        responder.habilitation.check(sessionToken: token, on: context.eventLoop).whenComplete { result in
            let handler = loopBound.value
            switch result {
            case .success(let checked): handler.write(handler.answer(checked, head: head, started: started))
            case .failure(let error): handler.write(handler.failed(error))
            }
            handler.processOutsideRead()
        }
    }

    private func answer(_ result: (check: HabilitationCheck, facts: HabilitationService.SessionFacts?), head: HTTPRequest,
                        started: ContinuousClock.Instant) -> ForwardAuthAnswer {
        if let facts = result.facts { responder.habilitation.recordActivityInBackground(facts) }
        // The authority as the dedicated listener reads `Host`: NIO's conversion moves the
        // first `Host` into `authority` and leaves any other among the fields, so a second
        // one makes it unusable here too, instead of the first one winning.
        let authority = ForwardAuthResponder.sole(head.headerFields[values: HTTPField.Name("Host")!] + (head.authority.map { [$0] } ?? []))
        return responder.answer(result.check, header: { name in HTTPField.Name(name).flatMap { ForwardAuthResponder.sole(head.headerFields[values: $0]) } },
                                authority: authority, withBody: head.method != .head, started: started)
    }

    /// As on the dedicated listener: 503, so the proxy refuses the request.
    private func failed(_ error: any Error) -> ForwardAuthAnswer {
        logger.error("forward-auth check failed", metadata: ["error": "\(error)"])
        return ForwardAuthAnswer(status: 503, headers: [("Cache-Control", "no-store"), ("Retry-After", "1")], body: nil)
    }

    private func write(_ answer: ForwardAuthAnswer) {
        answering = false
        guard let context else { return }
        var fields = HTTPFields()
        for (name, value) in answer.headers {
            if let name = HTTPField.Name(name) { fields.append(HTTPField(name: name, value: value)) }
        }
        fields[.requestID] = requestIDs.next()
        let body = answer.body.map { ByteBuffer(string: $0) }
        fields[.contentLength] = String(body?.readableBytes ?? 0)
        responder.metrics.request(surface: "web", status: answer.status)
        context.write(wrapOutboundOut(.head(HTTPResponse(status: .init(code: answer.status), headerFields: fields))), promise: nil)
        if let body { context.write(wrapOutboundOut(.body(body)), promise: nil) }
        if closeAfterAnswer {
            // `Connection: close`: nothing after this answer.
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in loopBound.value.close(promise: nil) }
            queue.removeAll()
            discarding = true
            answering = true
            return
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    // The router's answers pass through; the end of one lets the next request in, unless it
    // said `Connection: close` (``ClosingAnswerHandler`` then ends the connection: a request
    // pipelined behind it, forward-auth or not, is not answered).
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let part = unwrapOutboundIn(data)
        if case .head(let head) = part, routerBusy, head.status.kind != .informational {
            routerAnswerCloses = ClosingAnswerHandler.saysClose(head.headerFields)
        }
        context.write(data, promise: promise)
        guard case .end = part, routerBusy else { return }
        routerBusy = false
        if routerAnswerCloses {
            discarding = true
            queue.removeAll()
            routerRequestOpen = false
            reading = nil
            // A read held back for the queue is let go: ``ClosingAnswerHandler`` reads and
            // drops what the client still sends until the connection closes (a client still
            // uploading must not be left blocked, nor the unread bytes turn the close into a
            // reset under the answer).
            if readPending {
                readPending = false
                context.read()
            }
            return
        }
        context.eventLoop.assumeIsolated().execute { [self] in processOutsideRead() }
    }

    func read(context: ChannelHandlerContext) {
        if discarding || queue.isEmpty { context.read() } else { readPending = true }
    }
}

/// Adds ``ForwardAuthRouteHandler`` to Hummingbird's HTTP/1 channel, after its
/// connection-state handler and before the router.
struct ForwardAuthRouteChannel<Base: ServerChildChannel & HTTPChannelHandler>: ServerChildChannel, HTTPChannelHandler {
    typealias Value = Base.Value

    let base: Base
    let forwardAuth: ForwardAuthResponder
    let logger: Logger

    var responder: HTTPChannelHandler.Responder { base.responder }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let (forwardAuth, handlerLogger) = (self.forwardAuth, self.logger)
        return base.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let operations = channel.pipeline.syncOperations
            let state = try operations.handler(type: HTTPConnectionStateHandler.self)
            try operations.addHandler(ForwardAuthRouteHandler(responder: forwardAuth, logger: handlerLogger), position: .after(state))
            return value
        }
    }

    func handle(value: Base.Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
