import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import PostgresNIO

/// A PostgreSQL connection owned by one event loop, for the reads answered on that loop
/// (``PostgresEngine/loopRead(sql:arguments:on:)``: the forward-auth checks). Only touched on
/// its loop.
///
/// The pool's connections live on any loop of the group, and each read leased one from a task:
/// the statement was written from the request's loop to the connection's, answered there, and
/// handed back through the task, two or three thread wake-ups per statement on top of the
/// round trip. This connection is opened *on* the request's loop, so a statement is written,
/// answered and handed to the caller without leaving it, and without a lease.
///
/// It serves one statement at a time. While it is busy, connecting or missing, the caller
/// uses the pool as before (``take()`` answers nil): a stalled statement here holds nothing
/// but itself, and the statement deadline closes it as it closes a pooled one. It is opened
/// at first use and again after it closes (a server restart, a failover, a statement past the
/// deadline), waiting longer after each failed attempt (1 s doubling to 60 s) so that a server
/// refusing connections (`max_connections` reached) is not hammered; meanwhile the pool, with
/// its fail-fast probe, answers.
final class LoopConnection: @unchecked Sendable {
    private enum State {
        /// None open; the next attempt not before `retryAfter`.
        case absent(retryAfter: NIODeadline)
        case connecting
        case idle(PostgresConnection)
        /// One statement out.
        case busy(PostgresConnection)
        /// The engine closed.
        case shutDown
    }

    let eventLoop: any EventLoop
    private let configuration: PostgresConnection.Configuration
    private let logger: Logger
    private var state = State.absent(retryAfter: .uptimeNanoseconds(0))
    /// Failed attempts to connect since the last success: the wait before the next one.
    private var failures = 0

    init(eventLoop: any EventLoop, configuration: PostgresConnection.Configuration, logger: Logger) {
        self.eventLoop = eventLoop
        self.configuration = configuration
        self.logger = logger
    }

    /// The connection, marked busy, or nil when it cannot take a statement now (the caller
    /// then uses the pool). Give it back with ``giveBack(_:after:)`` on the loop.
    func take() -> PostgresConnection? {
        eventLoop.preconditionInEventLoop()
        switch state {
        case .idle(let connection) where connection.isClosed:
            // Closed while idle; its close callback has not run yet.
            closed(connection)
            return nil
        case .idle(let connection):
            state = .busy(connection)
            return connection
        case .absent(let retryAfter):
            if NIODeadline.now() >= retryAfter { connect() }
            return nil
        case .connecting, .busy, .shutDown:
            return nil
        }
    }

    /// `connection`'s statement ended, with `error` if it failed: the connection serves the
    /// next, unless it closed or the error leaves it unusable.
    func giveBack(_ connection: PostgresConnection, after error: (any Error)?) {
        eventLoop.preconditionInEventLoop()
        guard case .busy(let current) = state, current === connection else { return }
        if connection.isClosed || error.map(PostgresTransaction.isPoisonous) == true {
            connection.close().whenComplete { _ in }
            closed(connection)
        } else {
            state = .idle(connection)
        }
    }

    private func connect() {
        state = .connecting
        let logger = self.logger
        PostgresConnection.connect(on: eventLoop, configuration: configuration, id: 0, logger: logger)
            .hop(to: eventLoop).assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success(let connection):
                    guard case .connecting = state else {
                        // The engine closed meanwhile.
                        connection.close().whenComplete { _ in }
                        return
                    }
                    if failures > 0 { logger.notice("forward-auth database connection open again", metadata: ["event_loop": "\(eventLoop)"]) }
                    failures = 0
                    state = .idle(connection)
                    connection.closeFuture.hop(to: eventLoop).assumeIsolated().whenComplete { [self] _ in closed(connection) }
                case .failure(let error):
                    guard case .connecting = state else { return }
                    failures += 1
                    // The pool's probe reports the server's state to callers; this says why the
                    // loop's own connection is missing (a server at max_connections, typically).
                    if failures == 1 {
                        logger.warning("cannot open a forward-auth database connection; the pool answers meanwhile",
                                       metadata: ["error": "\(String(describing: PostgresEngine.storageError(error)))"])
                    }
                    state = .absent(retryAfter: .now() + Self.retryDelay(afterFailures: failures))
                }
            }
    }

    /// 1 s, doubling, 60 s at most.
    static func retryDelay(afterFailures failures: Int) -> TimeAmount {
        .seconds(Int64(min(60, 1 << min(failures - 1, 6))))
    }

    /// `connection` is closed (or being closed): the next use after a second opens another.
    private func closed(_ connection: PostgresConnection) {
        switch state {
        case .idle(let current) where current === connection, .busy(let current) where current === connection:
            state = .absent(retryAfter: .now() + .seconds(1))
        default:
            break
        }
    }

    /// Closes the connection for good (the engine closes).
    func shutDown() -> EventLoopFuture<Void> {
        eventLoop.preconditionInEventLoop()
        let connection: PostgresConnection?
        switch state {
        case .idle(let current), .busy(let current): connection = current
        default: connection = nil
        }
        state = .shutDown
        return connection?.close() ?? eventLoop.makeSucceededVoidFuture()
    }
}

/// The loops' own connections, one per loop, made on first use.
final class LoopConnections: Sendable {
    private let connections = NIOLockedValueBox<[ObjectIdentifier: LoopConnection]>([:])
    private let closed = NIOLockedValueBox(false)
    private let configuration: PostgresConnection.Configuration
    private let logger: Logger

    init(configuration: PostgresConnection.Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// `eventLoop`'s connection, or nil once the engine closed.
    func connection(for eventLoop: any EventLoop) -> LoopConnection? {
        connections.withLockedValue { connections in
            guard !closed.withLockedValue({ $0 }) else { return nil }
            let key = ObjectIdentifier(eventLoop)
            if let connection = connections[key] { return connection }
            let connection = LoopConnection(eventLoop: eventLoop, configuration: configuration, logger: logger)
            connections[key] = connection
            return connection
        }
    }

    /// Closes every loop's connection; later calls get none.
    func shutDown() async {
        let all = connections.withLockedValue { connections in
            closed.withLockedValue { $0 = true }
            return Array(connections.values)
        }
        for connection in all {
            try? await connection.eventLoop.flatSubmit { connection.shutDown() }.get()
        }
    }
}
