import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
@testable import Storage
import Testing

/// Which refusals end the wait at start (``PostgresConnectionPool/failingForGoodBecause``),
/// against a scripted server that speaks just enough of the PostgreSQL protocol to refuse in a
/// chosen way: the server's refusals one cannot reproduce on demand with a real server (a
/// restart's "starting up", a backend gone mid-TLS, alternating with a wrong password). Needs no
/// database, so it runs in both suites.
@Suite("PostgreSQL refusals at start")
struct PostgresRefusalTests {
    static let logger = Logger(label: "refusals")

    /// How the scripted server answers one connection.
    enum Answer: Sendable {
        /// Accept TLS ('S'), then close before the handshake ends (a backend killed mid-TLS).
        case tlsThenClose
        /// Decline TLS ('N'), read the startup message, answer an ErrorResponse with this
        /// SQLSTATE and close (28P01: password; 57P03: the server is starting up).
        case error(String, String)
        /// Close at once (a server going down).
        case close
    }

    /// The scripted server: connection n gets `script[n % script.count]`.
    final class Script: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let answer: Answer
        var buffer = ByteBuffer()
        var tlsAnswered = false

        init(_ answer: Answer) { self.answer = answer }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            var bytes = unwrapInboundIn(data)
            buffer.writeBuffer(&bytes)
            if case .close = answer {
                context.close(promise: nil)
                return
            }
            if !tlsAnswered {
                // SSLRequest: length 8, code 80877103.
                guard buffer.readableBytes >= 8 else { return }
                buffer.moveReaderIndex(forwardBy: 8)
                tlsAnswered = true
                if case .tlsThenClose = answer {
                    context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "S")), promise: nil)
                    return
                }
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "N")), promise: nil)
            }
            if case .tlsThenClose = answer {
                // The ClientHello read whole (a TLS record: 5-byte header, its length at 3)
                // before closing: unread bytes would make the close a reset, not an EOF.
                guard let length = buffer.getInteger(at: buffer.readerIndex + 3, as: UInt16.self),
                      buffer.readableBytes >= 5 + Int(length) else { return }
                buffer.moveReaderIndex(forwardBy: 5 + Int(length))
                context.close(promise: nil)
                return
            }
            // StartupMessage: length (itself included), then its body.
            guard case .error(let state, let message) = answer, let length = buffer.getInteger(at: buffer.readerIndex, as: Int32.self),
                  buffer.readableBytes >= Int(length) else { return }
            buffer.moveReaderIndex(forwardBy: Int(length))
            var fields = ByteBuffer()
            for (type, value) in [("S", "FATAL"), ("V", "FATAL"), ("C", state), ("M", message)] {
                fields.writeString(type)
                fields.writeString(value)
                fields.writeInteger(UInt8(0))
            }
            fields.writeInteger(UInt8(0))
            var reply = ByteBuffer(string: "E")
            reply.writeInteger(Int32(4 + fields.readableBytes))
            reply.writeBuffer(&fields)
            context.writeAndFlush(wrapOutboundOut(reply)).whenComplete { _ in context.close(promise: nil) }
        }
    }

    /// A server on a local port answering connection n with `script[n % script.count]`.
    static func server(_ script: [Answer]) async throws -> any Channel {
        let served = NIOLockedValueBox(0)
        return try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { channel in
                let n = served.withLockedValue { n in
                    defer { n += 1 }
                    return n
                }
                return channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(Script(script[n % script.count])) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    /// A pool of one connection against the scripted server, with a request waiting (so it
    /// keeps trying), until `failures` attempts in a row failed: what
    /// `failingForGoodBecause` said after each count of failures seen (a count the polling
    /// missed is absent), and the last reason.
    static func watch(_ script: [Answer], failures: Int, definiteAfter: TimeAmount = .zero) async throws -> (forGood: [Int: Bool], reason: String?) {
        let server = try await server(script)
        let port = try #require(server.localAddress?.port)
        let tls = try NIOSSLContext(configuration: .makeClientConfiguration())
        let configuration = PostgresConnection.Configuration(host: "127.0.0.1", port: port, username: "account", password: "secret",
                                                             database: "accounts", tls: .prefer(tls))
        let pool = PostgresConnectionPool(configuration: configuration, maximum: 1, keepOpen: 0, definiteAfter: definiteAfter, logger: logger)
        let waiter = Task { try await pool.lease() }
        var seen: [Int: Bool] = [:]
        let clock = ContinuousClock()
        let limit = clock.now + .seconds(60)
        while (seen.keys.max() ?? 0) < failures && clock.now < limit {
            // Both read under one lock: the verdict is the one for that count.
            let (count, forGood) = pool.refusals
            if count > 0 && seen[count] == nil { seen[count] = forGood != nil }
            try await Task.sleep(for: .milliseconds(2))
        }
        #expect((seen.keys.max() ?? 0) >= failures, "the pool kept trying: \(seen)")
        let reason = pool.failingBecause
        waiter.cancel()
        await pool.close()
        _ = try? await waiter.value
        try await server.close()
        return (seen, reason)
    }

    static let password = Answer.error("28P01", "password authentication failed for user \"account\"")
    static let startingUp = Answer.error("57P03", "the database system is starting up")

    /// The scripted server works, and refusals that only a change of configuration fixes are
    /// definite from the third in a row (the span is zero here).
    @Test(.timeLimit(.minutes(2)))
    func aWrongPasswordEveryTimeIsDefiniteFromTheThird() async throws {
        let (forGood, reason) = try await Self.watch([Self.password], failures: 5)
        #expect(forGood[forGood.keys.max() ?? 0] == true && forGood.allSatisfy { $0.value == ($0.key >= 3) }, "\(forGood)")
        #expect(reason?.contains("password authentication failed") == true, "\(reason ?? "-")")
    }

    /// A wrong password, then a closed connection, again and again: never three definite
    /// refusals in a row, so never "for good" (only the last failure definite is not enough).
    @Test(.timeLimit(.minutes(2)))
    func definiteRefusalsInterruptedByAnotherFailureStartOver() async throws {
        let (forGood, _) = try await Self.watch([Self.password, Self.password, .close], failures: 7)
        #expect(forGood[forGood.keys.max() ?? 0] == false && !forGood.values.contains(true), "\(forGood)")
    }

    /// A server starting up (57P03) and a backend gone in the middle of TLS (a restart) are
    /// waited for: a server coming up, not a configuration to fix.
    @Test(.timeLimit(.minutes(2)), arguments: ["starting-up", "tls-then-close"])
    func aServerComingUpIsWaitedFor(_ case: String) async throws {
        let answer = `case` == "starting-up" ? Self.startingUp : .tlsThenClose
        let (forGood, reason) = try await Self.watch([answer], failures: 5)
        #expect(forGood[forGood.keys.max() ?? 0] == false && !forGood.values.contains(true), "\(`case`): \(forGood)")
        // The refusal the script meant, not another failure that happens to be waited for.
        #expect(reason?.contains(`case` == "starting-up" ? "starting up" : "EOF during handshake") == true, "\(`case`): \(reason ?? "-")")
    }

    /// The span is measured between refusals seen, not up to now: three refusals, then no
    /// attempt for longer than the span (no request waits), are no proof the server still
    /// refuses; refusals seen over the span are.
    @Test(.timeLimit(.minutes(2)))
    func theSpanIsMeasuredBetweenRefusals() async throws {
        let server = try await Self.server([Self.password])
        let port = try #require(server.localAddress?.port)
        let configuration = PostgresConnection.Configuration(host: "127.0.0.1", port: port, username: "account", password: "secret",
                                                             database: "accounts", tls: .prefer(try NIOSSLContext(configuration: .makeClientConfiguration())))
        let pool = PostgresConnectionPool(configuration: configuration, maximum: 1, keepOpen: 0, definiteAfter: .seconds(2), logger: Self.logger)
        let clock = ContinuousClock()
        let limit = clock.now + .seconds(60)
        // Three refusals (about 0.3 s apart from first to last), then the request gives up.
        let first = Task { try await pool.lease() }
        while pool.refusals.failures < 3 && clock.now < limit { try await Task.sleep(for: .milliseconds(2)) }
        first.cancel()
        _ = try? await first.value
        #expect(pool.refusals.failures >= 3)
        // Longer than the span since the first refusal, with no new attempt (none while no
        // request waits, and a pool of none kept open has no sweep attempts).
        try await Task.sleep(for: .seconds(3))
        let quiet = pool.refusals
        #expect(quiet.forGood == nil, "no refusal seen over the span yet: \(quiet)")
        // A request waits again: refusals keep coming, and once they span 2 s, it is for good.
        let second = Task { try await pool.lease() }
        while pool.refusals.forGood == nil && clock.now < limit { try await Task.sleep(for: .milliseconds(10)) }
        let refused = pool.refusals
        #expect(refused.forGood?.contains("password authentication failed") == true, "\(refused)")
        second.cancel()
        await pool.close()
        _ = try? await second.value
        try await server.close()
    }

    /// Definite refusals are "for good" only once they lasted the span: a role or a database
    /// created just after the server listens (an init job) is still waited for.
    @Test(.timeLimit(.minutes(2)))
    func definiteRefusalsMustLastTheSpan() async throws {
        let (forGood, _) = try await Self.watch([Self.password], failures: 5, definiteAfter: .seconds(3600))
        #expect(forGood[forGood.keys.max() ?? 0] == false && !forGood.values.contains(true), "\(forGood)")
    }
}
