import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// The shared engine: a PostgreSQL server several instances use at once (postgres-nio).
///
/// The stores' transactions are synchronous blocks, written once for both engines, so each
/// runs on a thread of a bounded pool (one per connection) and waits for each statement's
/// answer there, as GRDB's writer does for SQLite; event loops and the cooperative pool never
/// wait. Write transactions are `SERIALIZABLE` and retried on serialization failures and
/// deadlocks, so concurrent instances behave as SQLite's one writer does: as if one after the
/// other. The forward-auth path (``loopRead(sql:arguments:on:)``) sends its one query from the
/// event loop and answers when the rows arrive.
public final class PostgresEngine: StorageEngine {
    public var kind: StorageKind { .postgres }
    public let location: PostgresLocation
    /// Internal for tests (a connection lent apart from the engine's own uses).
    let pool: PostgresConnectionPool
    /// The pool's connection settings, with a shorter connect timeout: the probe's.
    private let probeConfiguration: PostgresConnection.Configuration
    private let threads: NIOThreadPool
    private let executors: EventLoopTaskExecutors
    /// How long a statement of the stores may go unanswered before its connection is closed
    /// (the request then fails as "unavailable"): a server that vanished without closing its
    /// connections (a host lost in a failover, a network cut) must not hold requests for the
    /// minutes TCP takes to give up. Far above any statement of the stores, lock waits
    /// included; migrations are not bound by it. Statements sent together (writes held back
    /// with the next statement or COMMIT, see `PostgresTransaction.pending`) each have it
    /// (``StatementTimer``).
    let statementDeadline: Duration
    public static let defaultStatementDeadline: Duration = .seconds(30)
    /// The loop whose timers watch the waits for a connection.
    private let timerLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next()
    private let logger: Logger
    /// The last probe's answer and when it was made: requests waiting together share one
    /// probe a second instead of each opening a connection to a server that may be loaded.
    private let lastProbe = NIOLockedValueBox<(at: ContinuousClock.Instant, problem: String?)?>(nil)
    /// Attempts of a write transaction that keeps meeting serialization failures.
    static let writeAttempts = 8
    /// Attempts of a write transaction refused by a unique index that a concurrent
    /// transaction's row made true after this one had looked.
    static let uniqueViolationAttempts = 3
    /// Key of the session advisory lock that serialises migrations across instances.
    static let migrationLock: Int64 = 0x6163_636f_756e_7473  // "accounts"
    /// Key of the advisory lock write transactions hold: shared by first attempts (for the
    /// transaction), exclusive for retries (for the session, from before BEGIN).
    static let writeLock: Int64 = 0x7772_6974_696e_6773  // "writings"

    /// Settings of every session, sent at connection. Every statement of the stores is an
    /// indexed lookup, but on small tables (a new deployment) the planner prefers sequential
    /// scans, and under SERIALIZABLE a sequential scan locks the whole table against writers
    /// (a relation-level predicate lock): measured with two instances, 1,579 serialization
    /// failures in 10 s of PUTs on 44 accounts, against 1 with index scans. PostgreSQL's
    /// documentation advises encouraging index scans for this reason; a statement that has
    /// no index still scans.
    ///
    /// And `search_path = public`: the product lives in schema `public` (the runtime role's
    /// grants name it), whatever search path the roles have (PostgreSQL's "$user" pattern
    /// would otherwise have a migration create tables in the role's own schema, or a role
    /// read another tool's tables of the same names).
    ///
    /// And `client_encoding = UTF8`: postgres-nio reads and writes text as UTF-8, whatever a
    /// site set as the default (`ALTER DATABASE … SET client_encoding`), under which the
    /// server would transcode names, and the searches' folding function as its migration
    /// creates it, from another encoding.
    ///
    /// And `standard_conforming_strings = on` (PostgreSQL's default, and SQLite's only way): a
    /// site that turned it off for the database would have `'\'` (the searches' `ESCAPE`)
    /// read as an unterminated string, and the admin search fail on PostgreSQL only.
    static let sessionSettings: [(String, String)] = [("enable_seqscan", "off"), ("search_path", productSchema), ("client_encoding", "UTF8"),
                                                      ("standard_conforming_strings", "on")]

    /// Bounds on what a lost instance leaves behind, set by every new connection before it
    /// serves. Every write holds the write lock (``writeLock``), so a transaction left open by
    /// an instance that froze (a paused VM, a host cut off mid-write) would hold every
    /// instance's writes back until TCP gave up, two hours later. The server ends a
    /// transaction idle in it for 60 s (the product's transactions pause between statements
    /// only to decode rows: argon2 and mail run outside them; a minute leaves room for the
    /// largest audit export), probes an idle connection after 30 s and gives up on
    /// unacknowledged data after 60 s, so a vanished host's connection, with the session lock
    /// a retry holds, goes within about a minute. A statement, not start-up parameters:
    /// PgBouncer refuses start-up parameters it does not know, and a `SET` lasts the session
    /// in its session mode.
    static let connectionBounds = """
        SELECT set_config('idle_in_transaction_session_timeout', '60s', false), set_config('tcp_keepalives_idle', '30', false),
               set_config('tcp_keepalives_interval', '10', false), set_config('tcp_keepalives_count', '3', false),
               set_config('tcp_user_timeout', '60000', false)
        """

    /// Never fails for the server's state: connections open in the background (the kept ones)
    /// or at first use, so a server that is down at start is reported by the first use
    /// (readiness), not by a crash.
    ///
    /// `keepOpen` connections stay open when idle. Connections beyond them are closed after a
    /// minute idle, by one sweep every few seconds (``PostgresConnectionPool``, not
    /// postgres-nio's client: see there why). No keep-alive query (a timer per use): a
    /// connection the server closed (restart, failover) is dropped when it closes, and one
    /// that stops answering is cut by ``statementDeadline``.
    public convenience init(location: PostgresLocation, poolSize: Int, keepOpen: Int = 0,
                            statementDeadline: Duration = PostgresEngine.defaultStatementDeadline, logger: Logger) throws(StorageError) {
        try self.init(location: location, poolSize: poolSize, keepOpen: keepOpen, statementDeadline: statementDeadline,
                      sessionSettings: Self.sessionSettings, logger: logger)
    }

    /// The logger given to postgres-nio (and used by the engine's own lines, all at info or
    /// above): never below `info`, whatever `--log-level` says. At `debug`/`trace` the driver
    /// logs every message it sends and receives: bound values (password hashes, token hashes,
    /// sealed secrets, e-mails), data rows and the SCRAM exchange (enough to guess the
    /// database password offline). A trace log must not become a database dump.
    static func driverLogger(_ logger: Logger) -> Logger {
        var driver = logger
        if driver.logLevel < .info { driver.logLevel = .info }
        return driver
    }

    /// `sessionSettings` other than the product's: for tests that stand for a pooler
    /// dropping the start-up parameters.
    init(location: PostgresLocation, poolSize: Int, keepOpen: Int, statementDeadline: Duration,
         sessionSettings: [(String, String)], logger: Logger) throws(StorageError) {
        precondition(poolSize > 0 && (0...poolSize).contains(keepOpen))
        self.location = location
        self.statementDeadline = statementDeadline
        self.logger = Self.driverLogger(logger)
        let configuration = try Self.connectionConfiguration(location, sessionSettings: sessionSettings, connectTimeout: .seconds(10))
        pool = PostgresConnectionPool(configuration: configuration, setUp: Self.connectionBounds, maximum: poolSize, keepOpen: keepOpen, logger: self.logger)
        var probeConfiguration = configuration
        probeConfiguration.options.connectTimeout = .seconds(5)
        probeConfiguration.options.additionalStartupParameters = []
        self.probeConfiguration = probeConfiguration
        executors = EventLoopTaskExecutors(statementDeadline: statementDeadline)
        threads = NIOThreadPool(numberOfThreads: poolSize)
        threads.start()
    }

    /// How the pool's connections (and the probe's) connect: the TLS context is made once.
    static func connectionConfiguration(_ location: PostgresLocation, sessionSettings: [(String, String)],
                                        connectTimeout: TimeAmount) throws(StorageError) -> PostgresConnection.Configuration {
        let tls: PostgresConnection.Configuration.TLS
        if let configuration = try tlsConfiguration(location) {
            do {
                tls = .require(try NIOSSLContext(configuration: configuration))
            } catch {
                throw .configuration("cannot use the TLS settings of the database URL: \(error)")
            }
        } else {
            tls = .disable
        }
        var configuration = PostgresConnection.Configuration(host: location.host, port: location.port, username: location.username,
                                                             password: location.password, database: location.database, tls: tls)
        configuration.options.connectTimeout = connectTimeout
        configuration.options.additionalStartupParameters = sessionSettings
        return configuration
    }

    /// The client TLS configuration `sslmode` and `sslrootcert` ask for; nil for `disable`.
    static func tlsConfiguration(_ location: PostgresLocation) throws(StorageError) -> TLSConfiguration? {
        switch location.tls {
        case .disable:
            return nil
        case .require, .verifyCA, .verifyFull:
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv12
            switch location.tls {
            // libpq: `require` with a root certificate file behaves as `verify-ca` (a URL
            // naming a CA is an operator expecting it to be checked).
            case .require: configuration.certificateVerification = location.rootCertificatePath == nil ? .none : .noHostnameVerification
            case .verifyCA: configuration.certificateVerification = .noHostnameVerification
            default: configuration.certificateVerification = .fullVerification
            }
            if let path = location.rootCertificatePath {
                do {
                    configuration.trustRoots = .certificates(try NIOSSLCertificate.fromPEMFile(path))
                } catch {
                    throw .configuration("cannot read sslrootcert \(path): \(error)")
                }
            }
            return configuration
        }
    }

    public func read<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        do {
            return try await transaction(begin: TransactionSQL.BeginReadOnly.sql, block)
        } catch let error as PostgresRetry {
            throw StorageError.conflict(error.message)
        }
    }

    /// The write lock taken exclusively for the transaction, after BEGIN: every write holds
    /// it (shared, or exclusive for a retry) from its first statement to its end, so this
    /// waits for the writes in flight and holds new ones back until COMMIT. READ COMMITTED:
    /// each statement's snapshot is taken when it starts, after the lock (a REPEATABLE READ
    /// snapshot would date from before the wait), and no write commits meanwhile, so every
    /// statement sees the same state. The wait is bounded (`lock_timeout`, 2 s): while this
    /// waits, new writes queue behind it.
    public func readBetweenWrites<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        do {
            return try await transaction(begin: TransactionSQL.BeginBetweenWrites.sql, writeLock: .exclusiveForTransaction, block)
        } catch let error as PostgresRetry {
            throw StorageError.conflict(error.message)
        }
    }

    /// The hot path's reads are single statements: no BEGIN/COMMIT around them.
    public func pointRead<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        do {
            return try await transaction(begin: nil, block)
        } catch let error as PostgresRetry {
            throw StorageError.conflict(error.message)
        }
    }

    public func write<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        var delay: UInt64 = 2_000_000
        for attempt in 1...Self.writeAttempts {
            do {
                // Every write holds the write lock, shared; a retry holds it exclusively, so it
                // runs alone and succeeds: transactions that collided make progress however
                // many collide, and a queued retry holds new writes back until it is done.
                return try await transaction(begin: TransactionSQL.BeginSerializable.sql, writeLock: attempt == 1 ? .shared : .exclusive, block)
            } catch let error as PostgresRetry {
                // A unique violation is retried a few times only: when the store checked
                // first (as every rule does), the retry sees the committed row and answers
                // as SQLite's serial order would; when the index alone refuses, it stays.
                if error.uniqueViolation, attempt >= Self.uniqueViolationAttempts {
                    throw StorageError.constraintViolation(error.message)
                }
                guard attempt < Self.writeAttempts else { throw StorageError.conflict(error.message) }
                // Jittered back-off, so the transactions that collided do not collide again.
                try await Task.sleep(nanoseconds: UInt64.random(in: delay / 2...delay))
                delay = min(delay * 2, 100_000_000)
            }
        }
        preconditionFailure("unreachable")
    }

    enum WriteLock {
        /// A write's first attempt: for the transaction, after BEGIN.
        case shared
        /// A write's retry: for the session, before BEGIN (see ``PostgresTransaction/begin(_:lock:)``).
        case exclusive
        /// ``readBetweenWrites(_:)``: for the transaction, after BEGIN.
        case exclusiveForTransaction
    }

    func transaction<T: Sendable>(begin: String?, writeLock: WriteLock? = nil,
                                          _ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        let logger = self.logger
        let executors = self.executors
        return try await Self.againIfClosedBeforeUse { timeout in
            try await self.transactionOnce(begin: begin, writeLock: writeLock, timeout: timeout, logger: logger, executors: executors, block)
        }
    }

    /// `attempt` run again, three tries at most, while it throws ``ConnectionClosedBeforeUse``:
    /// the pool lent a connection that closed before anything was sent on it (the server
    /// ended it, or its previous user's close completed), so the work goes on another. The
    /// attempts share one wait for a connection (``busyTimeout``): `attempt` is given what is
    /// left of it.
    static func againIfClosedBeforeUse<T: Sendable>(_ attempt: (Duration) async throws -> T) async throws -> T {
        let clock = ContinuousClock()
        let deadline = clock.now + busyTimeout
        var tries = 0
        while true {
            tries += 1
            do {
                return try await attempt(max(.zero, deadline - clock.now))
            } catch is ConnectionClosedBeforeUse {
                guard tries < 3 else { throw StorageError.unavailable("the database connections were closed") }
            }
        }
    }

    private func transactionOnce<T: Sendable>(begin: String?, writeLock: WriteLock?, timeout: Duration, logger: Logger,
                                              executors: EventLoopTaskExecutors,
                                              _ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        do {
            return try await withConnection(timeout: timeout) { connection in
                let abandoned = NIOLockedValueBox(false)
                do {
                    let result = try await self.run(begin: begin, writeLock: writeLock, on: connection, abandoned: abandoned,
                                                    logger: logger, executors: executors, block)
                    if abandoned.withLockedValue({ $0 }) { await Self.closed(connection) }
                    return result
                } catch {
                    // A connection this transaction closed (or found closing) goes back to the
                    // pool only once closed: the pool must not lend it again meanwhile.
                    if abandoned.withLockedValue({ $0 }) { await Self.closed(connection) }
                    throw error
                }
            }
        } catch {
            throw Self.storageError(error)
        }
    }

    /// Returns once `connection` has closed, or after 10 s (a TLS close waits for the peer's
    /// answer, and a vanished server never gives it; NIOSSL gives up after 5 s and closes the
    /// socket, so a connection handed back after this wait is closed, never closing).
    static func closed(_ connection: PostgresConnection) async {
        let promise = connection.eventLoop.makePromise(of: Void.self)
        let done = NIOLockedValueBox(false)
        let finish: @Sendable () -> Void = {
            if done.withLockedValue({ done in defer { done = true }; return !done }) { promise.succeed(()) }
        }
        let timer = connection.eventLoop.scheduleTask(in: .seconds(10)) { finish() }
        connection.closeFuture.whenComplete { _ in
            timer.cancel()
            finish()
        }
        _ = try? await promise.futureResult.get()
    }

    /// The transaction itself, on a thread of the pool.
    private func run<T: Sendable>(begin: String?, writeLock: WriteLock?, on connection: PostgresConnection, abandoned: NIOLockedValueBox<Bool>,
                                  logger: Logger, executors: EventLoopTaskExecutors,
                                  _ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await self.threads.runIfActive {
            let transaction = PostgresTransaction(connection: connection, logger: logger, executors: executors, abandoned: abandoned)
            guard let begin else {
                let result = try block(transaction)
                try transaction.flush()
                return result
            }
            // The write lock and BEGIN go with the block's first statement, and its writes
            // with the next statement or with COMMIT (and a retry's unlock): one hand-off
            // between this thread and the connection's loop for each group (see
            // PostgresTransaction.begin for which lock, and when).
            transaction.begin(begin, lock: writeLock)
            let result: T
            do {
                result = try block(transaction)
            } catch {
                transaction.rollback(unlock: writeLock)
                throw error
            }
            try transaction.commit(unlock: writeLock)
            return result
        }
    }

    public func loopRead(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) -> EventLoopFuture<[SQLRow]> {
        let logger = self.logger
        return loopRows(on: eventLoop, prepare: { try PostgresTransaction.query(sql, arguments.map { $0 as (any SQLBindable)? }) }) { connection, query in
            try await connection.query(query, logger: logger).get().rows.map(PostgresTransaction.row)
        }
    }

    /// ``loopRead(sql:arguments:on:)`` for a declared statement: prepared once per connection.
    func loopReadPrepared<S: PreparedSQL>(_ statement: S.Type, arguments: [SQLValue], on eventLoop: any EventLoop) -> EventLoopFuture<[SQLRow]> {
        let logger = self.logger
        return loopRows(on: eventLoop, prepare: {
            PreparedRows<S>(bindings: try PostgresTransaction.bindings(PreparedForm.of(S.self).placeholders, arguments.map { $0 as (any SQLBindable)? }))
        }) { connection, prepared in
            try await PostgresTransaction.rows(prepared, on: connection, logger: logger).map(PostgresTransaction.row)
        }
    }

    /// The rows of one statement, answered on `eventLoop`: `prepare` builds it (its errors
    /// fail the future at once), `run` sends it on a leased connection.
    private func loopRows<Statement: Sendable>(on eventLoop: any EventLoop, prepare: () throws -> Statement,
                                               run: @escaping @Sendable (PostgresConnection, Statement) async throws -> [SQLRow]) -> EventLoopFuture<[SQLRow]> {
        let promise = eventLoop.makePromise(of: [SQLRow].self)
        let statement: Statement
        do {
            statement = try prepare()
        } catch {
            promise.fail(error)
            return promise.futureResult
        }
        // On the request's loop: the lease, the statement's answer and the reply to the
        // request continue where they are, without visiting the cooperative pool.
        let executors = self.executors
        promise.completeWith(executors.run(on: eventLoop) { call in
            do {
                return try await Self.againIfClosedBeforeUse { timeout in
                    try await self.withConnection(timeout: timeout, on: eventLoop) { connection in
                        let deadline = call.armDeadline(closing: connection)
                        defer { deadline.cancel() }
                        let closing = NIOLockedValueBox(false)
                        do {
                            return try await ConnectionClosing.$marker.withValue(closing) {
                                try await Self.sendingOnItsLoop(connection, executors: executors) { try await run(connection, statement) }
                            }
                        } catch {
                            // Closed after its statement failed (see ConnectionClosing): the pool has
                            // it back once closed, or it would lend a connection that is closing.
                            if closing.withLockedValue({ $0 }) { await Self.closed(connection) }
                            throw error
                        }
                    }
                }
            } catch {
                throw Self.storageError(error)
            }
        })
        return promise.futureResult
    }

    /// `send` started in the same job of the connection's event loop as a check that the
    /// connection is open, or ``ConnectionClosedBeforeUse``. postgres-nio drops a statement
    /// written to a channel that has already closed without ever answering it; its channel
    /// closes only on its own loop, so a check and a write in one job of that loop cannot be
    /// separated by the close. A lent connection may have closed since the pool checked it:
    /// one handed over by a release waits for its new user's next job, and may be on another
    /// loop than the request's (hopped to, and back once answered).
    static func sendingOnItsLoop<T: Sendable>(_ connection: PostgresConnection, executors: EventLoopTaskExecutors,
                                               _ send: @Sendable () async throws -> T) async throws -> T {
        if connection.eventLoop.inEventLoop {
            guard !connection.isClosed else { throw ConnectionClosedBeforeUse() }
            return try await send()
        }
        return try await withTaskExecutorPreference(executors.executor(for: connection.eventLoop)) {
            guard !connection.isClosed else { throw ConnectionClosedBeforeUse() }
            return try await send()
        }
    }

    /// How long a request may wait for a connection while the server accepts connections
    /// (every connection busy): the load passes, the request is served late rather than lost.
    static let busyTimeout: Duration = .seconds(30)
    /// After this long without a connection, a connection is tried apart from the pool; if it
    /// fails (server down or restarting, or refusing our TLS or password) the request is
    /// answered "unavailable" with the reason at once: callers get a 503 within a few seconds
    /// rather than hang, and the log says why.
    static let probeAfter: Duration = .seconds(1)

    /// A leased connection for `body`, or ``StorageError/unavailable(_:)``: at once if the
    /// server refuses connections, after `timeout` if every connection stays busy. Once
    /// `body` has started it runs to its end: a transaction is never abandoned half-way.
    ///
    /// The wait is watched by a timer on an event loop, not by a sleeping task beside the
    /// lease: on the hot path (a connection is free) the timer is cancelled before it fires,
    /// and no task, thread or dispatch timer is woken for it. `eventLoop`, when given, is where
    /// the lease and `body` continue (the caller's loop).
    private func withConnection<T: Sendable>(timeout: Duration = PostgresEngine.busyTimeout, failFast: Bool = true,
                                             on eventLoop: (any EventLoop)? = nil,
                                             _ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        let started = NIOLockedValueBox(false)
        let problem = NIOLockedValueBox<String?>(nil)
        let pool = self.pool
        let logger = self.logger
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        let loop = eventLoop ?? timerLoop
        let lease = Task(executorPreference: eventLoop.map { executors.executor(for: $0) }) {
            let connection = try await pool.lease(preferring: eventLoop)
            // Cancelled while waiting: the lease came too late, give it back unused.
            let go = started.withLockedValue { started in
                if Task.isCancelled { return false }
                started = true
                return true
            }
            guard go else {
                pool.release(connection)
                throw CancellationError()
            }
            do {
                let result = try await body(connection)
                pool.release(connection)
                return result
            } catch {
                pool.release(connection)
                throw error
            }
        }
        // Gives up the wait (never a started transaction), saying why.
        // Under the lock the lease checks: a lease is either started or cancelled, never both.
        let giveUp: @Sendable (String) -> Void = { reason in
            started.withLockedValue { started in
                guard !started else { return }
                problem.withLockedValue { $0 = $0 ?? reason }
                lease.cancel()
            }
        }
        let watchdog = loop.scheduleRepeatedAsyncTask(initialDelay: .init(Self.probeAfter), delay: .init(Self.probeAfter)) { task in
            guard !started.withLockedValue({ $0 }) else {
                task.cancel()
                return loop.makeSucceededVoidFuture()
            }
            if clock.now >= deadline {
                // Connections that cannot be opened (a wrong password, a certificate not
                // trusted) are no busy pool: the operator reads why.
                if let reason = pool.failingBecause {
                    giveUp("no database connection could be opened for \(timeout); the last attempt failed: \(reason)")
                } else {
                    giveUp("every database connection stayed busy for \(timeout)")
                }
                task.cancel()
                return loop.makeSucceededVoidFuture()
            }
            guard failFast else {
                // At start (no fail-fast: the server may still be coming up), a refusal no
                // retry overcomes ends the wait at once rather than after `timeout`.
                if let reason = pool.failingForGoodBecause {
                    giveUp("no database connection could be opened; the server keeps refusing them for a reason waiting will not fix: \(reason)")
                    task.cancel()
                }
                return loop.makeSucceededVoidFuture()
            }
            return loop.makeFutureWithTask {
                if let reason = await self.probe(logger: logger, clock: clock) { giveUp(reason) }
            }
        }
        defer { watchdog.cancel() }
        do {
            return try await withTaskCancellationHandler {
                try await lease.value
            } onCancel: {
                giveUp("no database connection")
            }
        } catch where !started.withLockedValue({ $0 }) {
            if let reason = problem.withLockedValue({ $0 }) { throw StorageError.unavailable(reason) }
            throw error
        }
    }

    /// ``connectionProblem(_:logger:)``, reused for a second by every waiting request.
    private func probe(logger: Logger, clock: ContinuousClock) async -> String? {
        if let recent = lastProbe.withLockedValue({ $0 }), clock.now - recent.at < Self.probeAfter { return recent.problem }
        let problem = await Self.connectionProblem(probeConfiguration, logger: logger)
        // A cancelled probe failed for that reason only ("client closed the connection"): it
        // says nothing about the server and must not fail the other waiting requests. (Probes
        // run in their own task and a lease that arrives no longer cancels them; the guard
        // stays for cancellation at shutdown.)
        if Task.isCancelled { return nil }
        lastProbe.withLockedValue { $0 = (clock.now, problem) }
        return problem
    }

    /// Why a new connection cannot be made now, or nil if one can or if the attempt was merely
    /// slow (the server is up, or loaded: the pool is busy, and the request keeps waiting).
    /// Only a definite answer fails the request: refused, reset, or refused by the server
    /// (TLS, password, no such database).
    static func connectionProblem(_ configuration: PostgresConnection.Configuration, logger: Logger) async -> String? {
        do {
            let connection = try await PostgresConnection.connect(configuration: configuration, id: 0, logger: logger)
            try? await connection.close()
            return nil
        } catch {
            if let error = error as? PSQLError, error.code == .server { return connectFailure(error) }
            if String(reflecting: error).contains("timeout") || String(reflecting: error).contains("Timeout") { return nil }
            return connectFailure(error)
        }
    }

    /// Whether a failed connection attempt is a configuration to fix rather than a server
    /// restarting or loaded: the server refused the credentials, the role or the database
    /// (SQLSTATE class 28 — pg_hba, password —, 3D000, 42501: no CONNECT privilege), a client
    /// authentication method the client cannot do, or TLS refused the server's certificate
    /// (not trusted, another host's) or the server does not do TLS. A server starting up
    /// (57P03), full (53300) or unreachable is not.
    static func isConfigurationFailure(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError else { return false }
        switch error.code {
        case .server:
            guard let state = error.serverInfo?[.sqlState] else { return false }
            return state.hasPrefix("28") || state == "3D000" || state == "42501"
        case .sslUnsupported, .unsupportedAuthMechanism, .authMechanismRequiresPassword:
            return true
        default:
            switch error.underlying {
            case let tls as NIOSSLError:
                // A refused certificate is definite; a server that closed mid-handshake (a
                // backend killed during a restart) is not.
                guard case .handshakeFailed(.sslError(let stack)) = tls, !stack.isEmpty else { return false }
                return !stack.contains(.eofDuringHandshake) && !stack.contains(.eofDuringAdditionalCertficiateChainValidation)
            case is NIOSSLExtraError:
                return true
            default:
                return false
            }
        }
    }

    /// Why a connection attempt failed, in words that name no secret (the server's message,
    /// or the client's error code).
    static func connectFailure(_ error: any Error) -> String {
        if let error = error as? PSQLError {
            if error.code == .server, let message = error.serverInfo?[.message] {
                return "the database server refused the connection: \(message)"
            }
            if error.code == .authMechanismRequiresPassword {
                return "the database server asks for a password and none was given (the URL, PGPASSWORD and the password file PGPASSFILE or ~/.pgpass have none for this server, database and user)"
            }
            // The client's own cause (TLS: a certificate not trusted or naming another host;
            // DNS; a refused port) says what to fix; it holds no secret.
            if let underlying = error.underlying { return "cannot connect to the database server (\(error.code): \(underlying))" }
            return "cannot connect to the database server (\(error.code))"
        }
        if let error = error as? StorageError { return "\(error)" }
        return "cannot connect to the database server (\(error))"
    }

    public func migrate(_ schema: Schema) async throws {
        let logger = self.logger
        do {
            // At start the server may still be coming up (both started together): wait longer.
            try await withConnection(timeout: .seconds(30), failFast: false) { connection in
                try await self.threads.runIfActive {
                    // Schema changes may take long on a large database: an hour, not 30 s.
                    let transaction = PostgresTransaction(connection: connection, logger: logger, executors: self.executors,
                                                          deadline: .seconds(3600))
                    // A session lock: a second instance starting now waits here until the
                    // first has applied everything, then finds nothing left to do.
                    try transaction.run("SELECT pg_advisory_lock(\(Self.migrationLock))")
                    defer { try? transaction.run("SELECT pg_advisory_unlock(\(Self.migrationLock))") }
                    // Read before any DDL: the runtime role (no CREATE on the schema) opens an
                    // up-to-date database without needing a privilege it does not have.
                    let exists = try Self.bookkeepingExists(transaction)
                    let applied = exists ? Set(try String.fetchAll(transaction, sql: "SELECT name FROM schema_migration")) : []
                    let pending = schema.postgres.filter { !applied.contains($0.name) }
                    guard !pending.isEmpty else { return }
                    // Asked before any DDL (a failed statement ends what the transaction may send):
                    // whether this role may create tables, and whether it is (or acts as) the
                    // owner of the product's tables, to tell its refusal apart from the runtime
                    // role's.
                    let rights = try SQLRow.fetchOne(transaction, sql: """
                        SELECT has_schema_privilege('public', 'CREATE') AS may_create,
                               COALESCE((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c
                                          JOIN pg_namespace n ON n.oid = c.relnamespace
                                         WHERE n.nspname = 'public' AND c.relname = 'schema_migration'), FALSE) AS owner
                        """)
                    let ownerWithoutCreate = rights.map { !($0["may_create"] as Bool) && (!exists || $0["owner"] as Bool) } ?? false
                    do {
                        if !exists {
                            try transaction.run("CREATE TABLE schema_migration (name TEXT PRIMARY KEY, applied_at BIGINT NOT NULL)")
                        }
                        for migration in pending {
                            try transaction.run("BEGIN")
                            do {
                                for statement in migration.statements {
                                    try transaction.run(statement)
                                }
                                // Strictly after the one before, even within one millisecond: the
                                // order of application is read back from this column.
                                try transaction.execute(sql: """
                                    INSERT INTO schema_migration (name, applied_at)
                                    SELECT ?, GREATEST(?, COALESCE(MAX(applied_at), 0) + 1) FROM schema_migration
                                    """, arguments: [migration.name, Int64(Date().timeIntervalSince1970 * 1000)])
                                try transaction.run("COMMIT")
                            } catch {
                                try? transaction.run("ROLLBACK")
                                throw error
                            }
                            logger.info("migration applied", metadata: ["migration": "\(migration.name)"])
                        }
                    } catch let error as PSQLError where error.serverInfo?[.sqlState] == "42501" {
                        // PostgreSQL 15 and later give CREATE on `public` to the database's
                        // owner alone: a role meant to own the schema (a fresh database, or the
                        // owner of its tables) is told what it lacks. Never the runtime role,
                        // which must not be given it.
                        if ownerWithoutCreate {
                            throw StorageError.configuration("""
                                the schema needs \(pending.map(\.name).joined(separator: ", ")) and the role \(self.location.username) \
                                may not create tables in schema public (\(error.serverInfo?[.message] ?? "permission denied")): run \
                                `account-server migrate` as the schema owner, a role that may create tables in public (PostgreSQL 15 \
                                and later give that to the database's owner alone; it may grant it: docs/deployment.md, \
                                "PostgreSQL set-up"), never as the role the instances connect as
                                """)
                        }
                        throw StorageError.configuration("""
                            the schema needs \(pending.map(\.name).joined(separator: ", ")) and the role \(self.location.username) may not \
                            apply it (\(error.serverInfo?[.message] ?? "permission denied")): run `account-server migrate` with the \
                            schema owner's URL first
                            """)
                    }
                }
            }
        } catch is ConnectionClosedBeforeUse {
            throw StorageError.unavailable("the database connection was closed")
        } catch {
            // Migrations are not retried here (the next start applies what is left): a
            // collision is reported in the stores' terms, not as the engine's retry signal.
            switch Self.storageError(error) {
            case let retry as PostgresRetry where retry.uniqueViolation: throw StorageError.constraintViolation(retry.message)
            case let retry as PostgresRetry: throw StorageError.conflict(retry.message)
            case let other: throw other
            }
        }
    }

    /// The product lives in schema `public`: every connection's search path
    /// (``sessionSettings``), and the runtime role's grants
    /// (``grantRuntimePrivileges(to:tables:appendOnly:)``).
    public static let productSchema = "public"

    /// Whether the migrations' bookkeeping table exists; refuses to take a database for an
    /// empty one when the role merely cannot see it: with no USAGE on `public`, `to_regclass`
    /// finds nothing, and the database would pass for an empty one (`serve` would then fail
    /// saying to migrate it, or with a schema of its own create a second, empty product), so
    /// the catalog (`pg_class`, `pg_namespace`, readable whatever the privileges) is asked
    /// too. So is it for a product an earlier version created in another schema (its
    /// owner's search path put it there): refused, not taken for an empty database. The
    /// product is recognised there by three of its tables together (`schema_migration`,
    /// `account_identifier`, `audit_event`) in a schema not the system's, so that another
    /// tool's `schema_migration` alone, or a session's temporary tables, are not taken for it.
    ///
    /// And the connection must carry the product's session settings: a pooler that drops the
    /// start-up parameters (PgBouncer's `ignore_startup_parameters`) leaves the role's own
    /// search path in force, under which a migration would create tables in the role's own
    /// schema or a read find another tool's table of the same name, and sequential scans on
    /// (``sessionSettings``). Checked when a database is opened, not per connection.
    public static func bookkeepingExists(_ db: any SQLTransaction) throws -> Bool {
        guard let row = try SQLRow.fetchOne(db, sql: """
            SELECT quote_ident(current_user::text) AS role, quote_ident(current_database()::text) AS database,
                   to_regclass('schema_migration') IS NOT NULL AS found,
                   EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'public' AND has_schema_privilege(oid, 'USAGE')) AS usage,
                   array_to_string(current_schemas(false), ', ') AS schemas,
                   current_setting('search_path') AS search_path,
                   current_setting('enable_seqscan') AS seqscan,
                   current_setting('server_encoding') AS server_encoding, current_setting('client_encoding') AS client_encoding,
                   EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                            WHERE n.nspname = 'public' AND c.relname = 'schema_migration' AND c.relkind = 'r') AS in_public,
                   (SELECT string_agg(n.nspname::text, ', ' ORDER BY n.nspname) FROM pg_namespace n
                     WHERE n.nspname NOT IN ('public', 'information_schema') AND n.nspname !~ '^pg_'
                       AND (SELECT COUNT(DISTINCT c.relname) FROM pg_class c
                             WHERE c.relnamespace = n.oid AND c.relkind = 'r'
                               AND c.relname IN ('schema_migration', 'account_identifier', 'audit_event')) = 3) AS elsewhere
            """) else { throw StorageError.statementFailed("the bookkeeping query returned no row") }
        let role: String = row["role"]
        guard row["usage"] as Bool else {
            throw StorageError.configuration(row["in_public"] as Bool ? """
                this product's tables are in schema public, which the role \(role) may not use (no USAGE): the role \
                that owns the tables (the one that runs `account-server migrate`) grants it with `--grant-to \(role)`; \
                if \(role) is that role, the owner of schema public runs GRANT USAGE ON SCHEMA public TO \(role) WITH \
                GRANT OPTION (docs/deployment.md, "PostgreSQL set-up")
                """ : """
                the role \(role) may not use schema public (no USAGE), or it does not exist: the role that owns the \
                tables (the one that runs `account-server migrate`) grants it with `--grant-to \(role)`; if \(role) is \
                that role, the owner of schema public runs GRANT USAGE ON SCHEMA public TO \(role) WITH GRANT OPTION \
                (docs/deployment.md, "PostgreSQL set-up")
                """)
        }
        // Text is UTF-8 throughout (names, the searches' folding): a database of another
        // encoding (SQL_ASCII stores bytes unchecked, and `translate` folds them one by one)
        // would answer unlike SQLite. Refused before anything is read or created.
        let serverEncoding: String = row["server_encoding"]
        guard serverEncoding == "UTF8" else {
            throw StorageError.configuration("""
                the database's encoding is \(serverEncoding); account-server needs UTF8: create it with CREATE DATABASE … \
                ENCODING 'UTF8' LOCALE 'C.UTF-8' (or another UTF-8 locale the server has) TEMPLATE template0, restore a \
                dump of this one into it, then run \
                `account-server migrate` (docs/deployment.md, "PostgreSQL set-up", "The database's encoding")
                """)
        }
        let schemas: String = row["schemas"]
        let seqscan: String = row["seqscan"]
        let clientEncoding: String = row["client_encoding"]
        guard schemas == productSchema, seqscan == "off", clientEncoding == "UTF8" else {
            let searchPath: String = row["search_path"]
            let database: String = row["database"]
            var faults: [String] = []
            if schemas != productSchema { faults.append("its search_path '\(searchPath)' resolves names in '\(schemas)', not in public alone") }
            if seqscan != "off" { faults.append("enable_seqscan is \(seqscan), not off") }
            if clientEncoding != "UTF8" { faults.append("client_encoding is \(clientEncoding), not UTF8") }
            throw StorageError.configuration("""
                the connection's session settings are not the product's (\(faults.joined(separator: "; "))): the start-up \
                parameters were dropped on the way (a pooler's ignore_startup_parameters?); set them on the role: ALTER ROLE \
                \(role) IN DATABASE \(database) SET search_path = public; ALTER ROLE \(role) IN DATABASE \(database) SET \
                enable_seqscan = off; ALTER ROLE \(role) IN DATABASE \(database) SET client_encoding = 'UTF8'; then have the pooler open new server connections (PgBouncer: RECONNECT, or a restart), \
                which alone read them (docs/deployment.md, "Several instances on PostgreSQL", connections)
                """)
        }
        if row["found"] as Bool { return true }
        if let elsewhere: String = row[optional: "elsewhere"] {
            throw StorageError.configuration("""
                this product's tables are in schema \(elsewhere), not in public where this version keeps them (an earlier \
                version followed the owner's search_path): move them to public first (docs/deployment.md, "Upgrading to \
                the version of 2026-12-02")
                """)
        }
        return false
    }

    public func appliedMigrations() async throws -> [String] {
        // Migrations applied within one millisecond by an earlier version share `applied_at`:
        // those are ordered by their number ("pg-v9" before "pg-v10"), not as text.
        try await read { db in
            try String.fetchAll(db, sql: """
                SELECT name FROM schema_migration
                ORDER BY applied_at, substring(name FROM '^(?:pg-)?v([0-9]+)-')::INTEGER NULLS LAST, name
                """)
        }
    }

    /// Gives `role` what the running server needs and no more: read and write every table
    /// but the append-only ones, on which it may only read and insert; no DDL, no TRUNCATE.
    /// Run by the schema owner after each migration (idempotent). A server connecting as
    /// `role` cannot rewrite the audit trail even if it is compromised; the triggers stay as
    /// a second lock, against the owner.
    public func grantRuntimePrivileges(to role: String, tables: [String], appendOnly: Set<String>) async throws {
        guard role.range(of: "^[a-z_][a-z0-9_]{0,62}$", options: .regularExpression) != nil, !role.hasPrefix("pg_") else {
            throw StorageError.configuration("role name \(role.debugDescription): lower-case letters, digits and _ only, not a pg_ role")
        }
        try await write { db in
            guard try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = ?)", arguments: [role]) == true else {
                throw StorageError.configuration("no role \(role) on the server: create it first (CREATE ROLE \(role) LOGIN PASSWORD '…')")
            }
            // PostgreSQL before 15 lets every role create in `public`: not this one. (A
            // REVOKE the owner may not make only warns.)
            try db.execute(sql: "REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            try db.execute(sql: "REVOKE CREATE ON SCHEMA public FROM \(role)")
            try db.execute(sql: "GRANT USAGE ON SCHEMA public TO \(role)")
            try db.execute(sql: "GRANT SELECT ON schema_migration TO \(role)")
            for table in tables {
                // (Revoking on the table revokes its columns' privileges too.)
                try db.execute(sql: "REVOKE ALL ON \(table) FROM \(role)")
                guard appendOnly.contains(table) else {
                    try db.execute(sql: "GRANT SELECT, INSERT, UPDATE, DELETE ON \(table) TO \(role)")
                    continue
                }
                // INSERT on every column but the identity: the role appends rows whose `seq` the
                // database chooses. With INSERT on the table it could choose one itself
                // (`OVERRIDING SYSTEM VALUE`), dating a forged event between or before real
                // ones, where exports paging with `after=` would never see it.
                let columns = try String.fetchAll(db, sql: """
                    SELECT quote_ident(column_name) FROM information_schema.columns
                    WHERE table_schema = 'public' AND table_name = ? AND is_identity = 'NO' ORDER BY ordinal_position
                    """, arguments: [table])
                try db.execute(sql: "GRANT SELECT ON \(table) TO \(role)")
                try db.execute(sql: "GRANT INSERT (\(columns.joined(separator: ", "))) ON \(table) TO \(role)")
            }
            // Identity columns take their values without any privilege on their sequences: the
            // role gets none (an earlier version granted USAGE on them all).
            try db.execute(sql: "REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM \(role)")
            // What the grants mean depends on who the role is: checked, or nothing is granted.
            guard let row = try SQLRow.fetchOne(db, sql: """
                SELECT r.rolsuper AS superuser,
                       pg_has_role(r.rolname, current_user, 'MEMBER') AS owner_rights,
                       has_schema_privilege(r.rolname, 'public', 'CREATE') AS can_create,
                       has_schema_privilege(r.rolname, 'public', 'USAGE') AS can_use,
                       EXISTS (SELECT 1 FROM pg_tables t WHERE t.schemaname = 'public' AND t.tableowner = r.rolname) AS owns_tables
                FROM pg_roles r WHERE r.rolname = ?
                """, arguments: [role]) else { throw StorageError.configuration("no role \(role)") }
            var problems: [String] = []
            if row["superuser"] as Bool { problems.append("it is a superuser") }
            if row["owner_rights"] as Bool { problems.append("it has the schema owner's rights (it is \(self.location.username) or a member of it)") }
            if row["can_create"] as Bool { problems.append("it may CREATE in schema public (PostgreSQL before 15: run REVOKE CREATE ON SCHEMA public FROM PUBLIC as the schema's owner)") }
            if row["owns_tables"] as Bool { problems.append("it owns tables of schema public") }
            // A grantor holding USAGE without its grant option only gets a warning.
            if !(row["can_use"] as Bool) {
                problems.append("""
                    it may not use schema public: \(self.location.username) may not grant that (it needs to own the schema, or USAGE on \
                    it WITH GRANT OPTION: docs/deployment.md, "PostgreSQL set-up")
                    """)
            }
            for table in appendOnly {
                let rewrite = try Bool.fetchOne(db, sql: """
                    SELECT has_any_column_privilege(?, ?, 'UPDATE') OR has_table_privilege(?, ?, 'DELETE') OR has_table_privilege(?, ?, 'TRUNCATE')
                        OR has_table_privilege(?, ?, 'TRIGGER')
                    """, arguments: [role, table, role, table, role, table, role, table]) ?? true
                // UPDATE on one column is enough to rewrite it; TRIGGER, to add a trigger that
                // drops the rows it is given.
                if rewrite { problems.append("it may still UPDATE (any column of), DELETE, TRUNCATE or add triggers to \(table) (through PUBLIC or another role)") }
                let choosesOrder = try Bool.fetchOne(db, sql: """
                    SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' AND table_name = ? AND is_identity = 'YES'
                                   AND has_column_privilege(?, format('public.%I', table_name), column_name, 'INSERT'))
                    """, arguments: [table, role]) ?? true
                if choosesOrder { problems.append("it may still choose the sequence number of the rows it adds to \(table) (INSERT on the whole table, through PUBLIC or another role)") }
            }
            guard problems.isEmpty else {
                throw StorageError.configuration("\(role) cannot be the runtime role: \(problems.joined(separator: "; ")); nothing was granted")
            }
        }
    }

    /// Autovacuum gives dead rows' space back for reuse; nothing to do on demand.
    public func compact() async throws {}

    /// The WAL and the dead row versions are the server's: autovacuum, `VACUUM FULL` by the
    /// owner, the WAL's recycling and the archive's retention (`docs/personal-data.md`).
    public func scrubLog() async throws -> LogScrub { .notApplicable }

    /// Stops the pool (its connections close; waiting requests fail) and the threads. Waits
    /// 5 s at most for both: shutting the process down must not depend on the database's
    /// state (a task group would wait for the pool whatever the timer said).
    public func close() async {
        let pool = self.pool
        let once = NIOLockedValueBox(false)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resume: @Sendable () -> Void = {
                if once.withLockedValue({ done in defer { done = true }; return !done }) { continuation.resume() }
            }
            let timer = timerLoop.scheduleTask(in: .seconds(5)) { resume() }
            Task {
                await pool.close()
                // Transactions caught by the close end when their statements fail (or at
                // their deadline): within the same bound.
                try? await threads.shutdownGracefully()
                timer.cancel()
                resume()
            }
        }
    }

    public var connectionCounts: DatabaseConnectionCounts? {
        let counts = pool.counts
        return DatabaseConnectionCounts(idle: counts.idle, lent: counts.leased, opening: counts.connecting, closing: counts.closing,
                                        waiting: counts.waiting, attempts: counts.attempts)
    }

    /// postgres-nio's errors as the stores' engine-neutral ones.
    static func storageError(_ error: any Error) -> any Error {
        if error is PostgresRetry || error is StorageError { return error }
        if error is ConnectionClosedBeforeUse { return error }
        if let error = error as? AbortedTransaction { return StorageError.statementFailed(error.description) }
        guard let error = error as? PSQLError else { return error }
        guard error.code == .server, let state = error.serverInfo?[.sqlState] else {
            switch error.code {
            case .tooManyParameters, .invalidCommandTag, .messageDecodingFailure, .unexpectedBackendMessage:
                return error
            default:
                return StorageError.unavailable("\(error.code)")
            }
        }
        let message = error.serverInfo?[.message] ?? state
        switch state {
        case "40001", "40P01":
            return PostgresRetry(message: message, uniqueViolation: false)
        case "23505":
            return PostgresRetry(message: message, uniqueViolation: true)
        case _ where state.hasPrefix("23"), "P0001":
            // Integrity rules and the append-only trigger.
            return StorageError.constraintViolation(message)
        case "42501":
            // A privilege the role lacks: a deployment error (the runtime role was not granted
            // a new table, or something tried to rewrite the audit trail), never a conflict.
            return StorageError.statementFailed("""
                a privilege the database role lacks (SQLSTATE 42501: \(message)): the role that owns the tables (the one \
                that runs `account-server migrate`) gives the runtime role its grants with `account-server migrate \
                --grant-to <runtime role>`, after each upgrade
                """)
        case _ where state.hasPrefix("08"), _ where state.hasPrefix("53"), _ where state.hasPrefix("57"), "25006":
            return StorageError.unavailable(message)
        case "55P03":
            // lock_timeout: a read between writes waited too long for the writes in flight.
            return StorageError.unavailable("the writes in flight did not end within the lock timeout (\(message))")
        default:
            // The message only: the detail may quote the values of a row.
            return StorageError.statementFailed("SQLSTATE \(state): \(message)")
        }
    }
}

/// A declared statement as PostgreSQL runs it, worked out once per statement type: the
/// numbering of its placeholders walked the text at every call (about 1 % of a PUT's CPU).
/// The memo maps static text to what is derived from it, so it holds nothing anyone could
/// observe changing.
struct PreparedForm: Sendable {
    /// The text with `$1`, `$2`… placeholders.
    let text: String
    let placeholders: Int
    /// The text run by ``PreparedCommand``: ` RETURNING 1` appended to count the changed rows.
    let command: String
    /// Whether ``command`` may be used: not for a statement that returns rows already, or
    /// ends in a comment or `;` (it then runs unprepared).
    let countable: Bool
    /// An INSERT (only those may join the write before them).
    let isInsert: Bool
    /// For a SELECT, the text run by ``PreparedLockedRows`` (it carries the shared write lock);
    /// nil otherwise.
    let locked: String?

    private static let forms = NIOLockedValueBox<[ObjectIdentifier: PreparedForm]>([:])

    static func of<S: PreparedSQL>(_ statement: S.Type) -> PreparedForm {
        let key = ObjectIdentifier(statement)
        if let form = forms.withLockedValue({ $0[key] }) { return form }
        let numbered = PostgresTransaction.numbered(S.sql)
        let trimmed = S.sql.trimmingCharacters(in: .whitespacesAndNewlines)
        // Text that can be wrapped or extended: no trailing comment or `;` to swallow what follows.
        let extensible = !trimmed.contains("--") && !trimmed.hasSuffix(";")
        let head = trimmed.prefix(6).uppercased()
        let locked = head == "SELECT" && extensible
            ? "SELECT first_read.* FROM (\(numbered.text)) first_read WHERE EXISTS (SELECT 1 FROM pg_advisory_xact_lock_shared(\(PostgresEngine.writeLock)))"
            : nil
        let form = PreparedForm(text: numbered.text, placeholders: numbered.placeholders, command: numbered.text + " RETURNING 1",
                                countable: !PostgresTransaction.returnsRows(S.sql) && extensible, isInsert: head == "INSERT", locked: locked)
        forms.withLockedValue { $0[key] = form }
        return form
    }
}

/// Closes started while a connection is in use (a statement that may have poisoned it, an
/// unlock that failed) mark the use that started them (a task-local box): the user then
/// waits for the close before the pool has the connection back. A TLS close waits for the
/// server's answer, and meanwhile the connection is not yet `isClosed`: handed back at once,
/// the pool would lend it to the next transaction, whose statements would fail at once.
enum ConnectionClosing {
    @TaskLocal static var marker: NIOLockedValueBox<Bool>?

    static func close(_ connection: PostgresConnection) {
        marker?.withLockedValue { $0 = true }
        connection.close().whenComplete { _ in }
    }
}

/// The server answered COMMIT with ROLLBACK: a statement of the transaction had failed.
struct AbortedTransaction: Error, CustomStringConvertible {
    var description: String { "the transaction was rolled back: one of its statements had failed" }
}

/// The connection a transaction was lent was closed before the transaction sent anything:
/// it is run again on another connection.
struct ConnectionClosedBeforeUse: Error {}

/// A serialization failure, a deadlock or a unique violation: the write transaction is run
/// again.
struct PostgresRetry: Error {
    let message: String
    let uniqueViolation: Bool
}

/// One leased connection, used synchronously from a thread of the engine's pool.
final class PostgresTransaction: SQLTransaction, PreparingTransaction {
    let connection: PostgresConnection
    let logger: Logger
    let executors: EventLoopTaskExecutors

    /// Rows changed by the last ``execute(sql:arguments:)`` (or declared write), once sent:
    /// reading it sends what is held back. A query (`fetchAll`) leaves it as it was, as on
    /// SQLite's engine.
    var changesCount: Int {
        get throws {
            try flush()
            return changes.withLockedValue { $0 }
        }
    }
    private let changes = NIOLockedValueBox(0)

    /// Writes held back, in order, to be sent with the next statement (after ``opening``):
    /// the block does not read their outcome at once. Each hand-off between the block's
    /// thread and the connection's loop costs thread switches on both sides: a PUT that
    /// changes a name went through 6 and now goes through 3, for a quarter less CPU
    /// (docs/performance.md).
    private var pending: [@Sendable (PostgresConnection, Logger) async throws -> Void] = []
    /// At most this many statements are held (a bulk copy is not held whole in memory).
    static let maximumPending = 64
    /// The first error of a statement of this transaction. The block may have caught it
    /// where it surfaced (a held write's error surfaces at another statement's call); the
    /// transaction still must not send more, nor commit.
    private let failure = NIOLockedValueBox<(any Error)?>(nil)
    /// The held-back BEGIN or its lock failed, and cleaned up after itself (see ``begin``).
    private let beginFailed = NIOLockedValueBox(false)
    /// BEGIN and its lock, held back until the block's first statement.
    private var opening: Opening?

    struct Opening: Sendable {
        let sql: String
        let lock: PostgresEngine.WriteLock?
    }

    /// Each statement's deadline; nil: the engine's statement deadline.
    let deadline: Duration?

    init(connection: PostgresConnection, logger: Logger, executors: EventLoopTaskExecutors, deadline: Duration? = nil,
         abandoned: NIOLockedValueBox<Bool> = NIOLockedValueBox(false)) {
        self.connection = connection
        self.logger = logger
        self.executors = executors
        self.deadline = deadline
        self.abandoned = abandoned
    }

    var engine: StorageKind { .postgres }

    /// One statement without parameters (migrations' DDL, their lock and transaction control).
    /// Sent even after a failed statement: migrations send ROLLBACK and their unlock this way.
    func run(_ sql: String) throws {
        let query = PostgresQuery(unsafeSQL: sql)
        _ = try onLoop(evenAfterFailure: true) { connection, logger in try await connection.query(query, logger: logger).get().metadata }
    }

    /// Whether a statement was sent on this transaction's connection yet.
    private var sent = false

    /// Set once this transaction closed its connection (a poisoned statement, a deadline):
    /// nothing more is sent on it (postgres-nio would never answer a statement written to a
    /// closed channel), and the server ends the transaction and its session locks itself.
    private let abandoned: NIOLockedValueBox<Bool>

    /// `body` run on the connection's loop, after the statements held back, this thread
    /// waiting for its end: the statements are answered where they were sent. Bound by the
    /// statement deadline.
    /// After a statement of this transaction failed, nothing more is sent (its error is thrown again), unless
    /// `evenAfterFailure` (ROLLBACK, COMMIT's own handling): the block may have caught the
    /// error, and what it sends next would fail anyway, or, after a failed BEGIN, run outside
    /// any transaction and be kept.
    private func onLoop<T: Sendable>(sendingHeld: Bool = true, evenAfterFailure: Bool = false,
                                     _ body: @escaping @Sendable (PostgresConnection, Logger) async throws -> T) throws -> T {
        guard !abandoned.withLockedValue({ $0 }), !connection.isClosed else {
            abandoned.withLockedValue { $0 = true }
            if !sent { throw ConnectionClosedBeforeUse() }
            throw StorageError.unavailable("the database connection was closed")
        }
        if !evenAfterFailure, let earlier = failure.withLockedValue({ $0 }) { throw earlier }
        let sentBefore = sent
        sent = true
        let opening = sendingHeld ? takeOpening() : nil
        let held = sendingHeld ? takeHeld() : []
        let connection = self.connection, logger = self.logger, abandoned = self.abandoned, failure = self.failure
        let beginFailed = self.beginFailed
        do {
            return try executors.run(on: connection.eventLoop, deadline: deadline) { call in
                let timer = StatementTimer { call.armDeadline(closing: connection) }
                defer { timer.cancel() }
                // A close started by a statement of this call (a poisoned statement, a failed
                // unlock) marks the connection abandoned: the pool has it back once closed.
                return try await ConnectionClosing.$marker.withValue(abandoned) { try await StatementTimer.$current.withValue(timer) {
                    // Checked again on the connection's loop, in the same job as the write that
                    // follows: a statement written to a connection that closed a moment before
                    // (between the check on the thread and this job) is dropped by postgres-nio
                    // unanswered, and would wait for the statement deadline.
                    guard !connection.isClosed else {
                        abandoned.withLockedValue { $0 = true }
                        if !sentBefore { throw ConnectionClosedBeforeUse() }
                        throw StorageError.unavailable("the database connection was closed")
                    }
                    do {
                        let first = (opening.map { [Self.openStep($0, beginFailed: beginFailed)] } ?? []) + held
                        try await Self.send(first, on: connection, logger: logger, failure: failure)
                        if !first.isEmpty { timer.rearm() }
                        do {
                            return try await body(connection, logger)
                        } catch {
                            failure.withLockedValue { $0 = $0 ?? error }
                            throw error
                        }
                    } catch {
                        if Self.closeIfPoisoned(connection, after: error) { abandoned.withLockedValue { $0 = true } }
                        throw error
                    }
                } }
            }.wait()
        } catch let error as StorageError {
            abandoned.withLockedValue { $0 = true }
            throw error
        }
    }

    /// BEGIN and its lock if still held back, which the caller now sends.
    private func takeOpening() -> Opening? {
        defer { opening = nil }
        return opening
    }

    /// The statements held back, which the caller now sends.
    private func takeHeld() -> [@Sendable (PostgresConnection, Logger) async throws -> Void] {
        joinable = nil
        defer { pending = [] }
        return pending
    }

    /// Sends `held` in order; the first error is kept in `failure` and thrown.
    private static func send(_ held: [@Sendable (PostgresConnection, Logger) async throws -> Void], on connection: PostgresConnection,
                             logger: Logger, failure: NIOLockedValueBox<(any Error)?>) async throws {
        for (index, statement) in held.enumerated() {
            if index > 0 { StatementTimer.current?.rearm() }
            do {
                try await statement(connection, logger)
            } catch {
                failure.withLockedValue { $0 = $0 ?? error }
                throw error
            }
        }
    }

    /// Sends what is held back, if anything.
    func flush() throws {
        guard !pending.isEmpty else { return }
        try onLoop { _, _ in }
    }

    /// Holds `statement` back (see ``pending``); its count of changed rows becomes
    /// ``changesCount`` once sent.
    private func hold(_ statement: @escaping @Sendable (PostgresConnection, Logger) async throws -> Int) throws {
        joinable = nil
        let changes = self.changes
        pending.append { connection, logger in
            let count = try await statement(connection, logger)
            changes.withLockedValue { $0 = count }
        }
        if pending.count >= Self.maximumPending { try flush() }
    }

    /// Opens the transaction (`begin`) holding the write lock if asked: held back, sent with
    /// the first statement.
    ///
    /// The shared lock (a first attempt) is a transaction lock taken just after BEGIN, given
    /// back by COMMIT or ROLLBACK themselves: no statement of its own to release it. The
    /// exclusive lock (a retry) is a session lock taken before BEGIN, so that the retry's
    /// snapshot is taken after its wait for the others, and it sees what they committed. (A
    /// first attempt that waited for a retry has an older snapshot; if it touches what the
    /// retry changed, PostgreSQL refuses it and it becomes a retry itself.) If the lock or
    /// BEGIN fails, whatever was taken is given back, or the connection closed.
    func begin(_ begin: String, lock: PostgresEngine.WriteLock?) {
        opening = Opening(sql: begin, lock: lock)
    }

    /// ``open(_:lock:on:logger:)`` as a step sent before the others, marking its failure.
    private static func openStep(_ opening: Opening, beginFailed: NIOLockedValueBox<Bool>) -> @Sendable (PostgresConnection, Logger) async throws -> Void {
        { connection, logger in
            do {
                try await open(opening.sql, lock: opening.lock, on: connection, logger: logger)
            } catch {
                beginFailed.withLockedValue { $0 = true }
                throw error
            }
        }
    }

    private static func open(_ begin: String, lock: PostgresEngine.WriteLock?, on connection: PostgresConnection, logger: Logger) async throws {
        if lock == .exclusive {
            _ = try await Self.rows(PreparedRows<WriteLockSQL.Lock>(bindings: PostgresBindings()), on: connection, logger: logger)
        }
        do {
            try await TransactionSQL.run(begin, on: connection, logger: logger)
        } catch {
            if lock == .exclusive, Self.isServerError(error) { await Self.unlock(on: connection, logger: logger) }
            throw error
        }
        if lock == .shared || lock == .exclusiveForTransaction {
            do {
                if lock == .shared {
                    _ = try await Self.rows(PreparedRows<WriteLockSQL.LockSharedForTransaction>(bindings: PostgresBindings()), on: connection, logger: logger)
                } else {
                    _ = try await Self.rows(PreparedRows<WriteLockSQL.BoundLockWait>(bindings: PostgresBindings()), on: connection, logger: logger)
                    StatementTimer.current?.rearm()
                    _ = try await Self.rows(PreparedRows<WriteLockSQL.LockForTransaction>(bindings: PostgresBindings()), on: connection, logger: logger)
                }
            } catch {
                if Self.isServerError(error), !Self.isPoisonous(error), !connection.isClosed {
                    try? await TransactionSQL.run(TransactionSQL.Rollback.sql, on: connection, logger: logger)
                }
                throw error
            }
        }
    }

    /// The held-back statements and COMMIT, in one hand-off, then (a retry) the exclusive lock
    /// given back in another. A failed statement or COMMIT (a serialization failure is
    /// reported there too) leaves nothing behind: the transaction is rolled back, the lock
    /// given back, and the error thrown for the engine to retry. So does a statement that
    /// failed earlier, even if the block caught its error.
    ///
    /// Once the server has answered COMMIT the transaction is stored, and nothing after it
    /// may report it failed: the unlock has a hand-off of its own, and if it fails the
    /// connection is closed (the server drops a closed session's locks). When the answer to
    /// COMMIT never comes (the connection lost, the deadline) the outcome is unknown, and
    /// said so (``StorageError/outcomeUnknown(_:)``), never "nothing was kept".
    func commit(unlock lock: PostgresEngine.WriteLock?) throws {
        let failure = self.failure, beginFailed = self.beginFailed
        // A statement refused before it was sent (``failing``), whose error the block caught:
        // ended as when the block throws (ROLLBACK if BEGIN went out), on a connection that
        // still serves. (The server's own refusals are PSQLErrors, handled below.)
        if let earlier = failure.withLockedValue({ $0 }), earlier is StorageError {
            rollback(unlock: lock)
            throw earlier
        }
        let held = (takeOpening().map { [Self.openStep($0, beginFailed: beginFailed)] } ?? []) + takeHeld()
        // COMMIT went out and no answer came back (not even an error): only then is the outcome
        // unknown. (Should the deadline fire just as the last held statement answers, COMMIT
        // may be refused by postgres-nio on the closing connection and still count as sent:
        // "unknown" is then said of a transaction that was not stored, never the reverse.)
        let commitSent = NIOLockedValueBox(false), commitAnswered = NIOLockedValueBox(false), committed = NIOLockedValueBox(false)
        do {
            try onLoop(sendingHeld: false, evenAfterFailure: true) { connection, logger in
                do {
                    // After a failure (the block caught its error), nothing held is sent.
                    if let earlier = failure.withLockedValue({ $0 }) { throw earlier }
                    try await Self.send(held, on: connection, logger: logger, failure: failure)
                    if !held.isEmpty { StatementTimer.current?.rearm() }
                    commitSent.withLockedValue { $0 = true }
                    let result: PostgresQueryResult
                    do {
                        result = try await connection.query(PostgresQuery(unsafeSQL: "COMMIT"), logger: logger).get()
                    } catch {
                        if Self.isServerError(error) { commitAnswered.withLockedValue { $0 = true } }
                        throw error
                    }
                    commitAnswered.withLockedValue { $0 = true }
                    // The server answers the COMMIT of a transaction in which a statement failed
                    // with ROLLBACK, not with an error.
                    guard result.metadata.command == "COMMIT" else { throw AbortedTransaction() }
                    committed.withLockedValue { $0 = true }
                } catch {
                    // Only the server refused: on a lost connection the server ends both itself,
                    // and a failed BEGIN cleaned up after itself.
                    guard Self.isServerError(error) || error is AbortedTransaction, !connection.isClosed,
                          !beginFailed.withLockedValue({ $0 }) else { throw error }
                    StatementTimer.current?.rearm()
                    try? await TransactionSQL.run(TransactionSQL.Rollback.sql, on: connection, logger: logger)
                    if lock == .exclusive { await Self.unlock(on: connection, logger: logger) }
                    throw error
                }
            }
        } catch where committed.withLockedValue({ $0 }) {
            // The answer arrived as the deadline fired: stored. The deadline closed the
            // connection, and with it the session's lock.
            return
        } catch where commitSent.withLockedValue({ $0 }) && !commitAnswered.withLockedValue({ $0 }) {
            abandoned.withLockedValue { $0 = true }
            connection.close().whenComplete { _ in }
            // A read-only transaction changed nothing, whatever became of its COMMIT.
            guard lock == .shared || lock == .exclusive else { throw error }
            throw StorageError.outcomeUnknown("the connection to the database was lost before it answered COMMIT (\(Self.reason(error)))")
        }
        guard lock == .exclusive else { return }
        do {
            try onLoop(sendingHeld: false, evenAfterFailure: true) { connection, logger in
                await Self.unlock(on: connection, logger: logger)
            }
        } catch {
            // Stored all the same; a connection that may still hold the lock never serves again.
            abandoned.withLockedValue { $0 = true }
            connection.close().whenComplete { _ in }
        }
    }

    /// What a lost connection's error says, for the log (no values of the data in it).
    static func reason(_ error: any Error) -> String {
        if let error = error as? PSQLError { return "\(error.code)" }
        return "\(error)"
    }

    /// ROLLBACK and the exclusive lock given back, after the block failed; never throws (the
    /// block's error is the one that matters). What is held back is dropped unsent; if
    /// nothing was sent (not even BEGIN) or BEGIN failed, there is nothing to undo.
    func rollback(unlock lock: PostgresEngine.WriteLock?) {
        opening = nil
        pending = []
        joinable = nil
        guard sent, !beginFailed.withLockedValue({ $0 }) else { return }
        _ = try? onLoop(evenAfterFailure: true) { connection, logger in
            do {
                try await TransactionSQL.run(TransactionSQL.Rollback.sql, on: connection, logger: logger)
            } catch {
                // A lost connection: the server ends the transaction and its locks itself, and
                // a statement sent on it now would never be answered.
                guard Self.isServerError(error), !connection.isClosed else { return }
            }
            if lock == .exclusive { await Self.unlock(on: connection, logger: logger) }
        }
    }

    /// An error the server answered (the connection still serves), not a lost connection.
    static func isServerError(_ error: any Error) -> Bool {
        (error as? PSQLError)?.code == .server
    }

    /// Gives the exclusive session lock back; a connection that may still hold it never
    /// serves again.
    static func unlock(on connection: PostgresConnection, logger: Logger) async {
        do {
            _ = try await rows(PreparedRows<WriteLockSQL.Unlock>(bindings: PostgresBindings()), on: connection, logger: logger)
        } catch {
            ConnectionClosing.close(connection)
        }
    }

    /// A statement refused before it is sent (a text holding U+0000, placeholders that do not
    /// match) fails the transaction as a refusal by the server would: nothing of it is kept,
    /// even if the block catches the error and goes on.
    private func failing<T>(_ make: () throws -> T) throws -> T {
        do {
            return try make()
        } catch {
            failure.withLockedValue { $0 = $0 ?? error }
            throw error
        }
    }

    /// Held back (see ``pending``).
    func execute(sql: String, arguments: SQLArguments) throws {
        let query = try failing { try Self.query(sql, arguments) }
        try hold { connection, logger in try await connection.query(query, logger: logger).get().metadata.rows ?? 0 }
    }

    func fetchAll(sql: String, arguments: SQLArguments) throws -> [SQLRow] {
        let query = try failing { try Self.query(sql, arguments) }
        return try onLoop { connection, logger in try await connection.query(query, logger: logger).get().rows }.map(Self.row)
    }

    func fetchAllPrepared<S: PreparedSQL>(_ statement: S.Type, arguments: SQLArguments) throws -> [SQLRow] {
        let form = PreparedForm.of(S.self)
        let bindings = try failing { try Self.bindings(form.placeholders, arguments) }
        let rows: [PostgresRow]
        if form.locked != nil, pending.isEmpty, let opening, opening.lock == .shared {
            // The transaction's first statement, a declared SELECT: the shared write lock
            // goes in it (``PreparedLockedRows``) instead of in a statement of its own, one
            // round trip fewer. It is taken before the SELECT reads anything, and the
            // snapshot is the statement's, as it was the lock statement's.
            self.opening = Opening(sql: opening.sql, lock: nil)
            let locked = PreparedLockedRows<S>(bindings: bindings)
            rows = try onLoop { connection, logger in try await Self.rows(locked, on: connection, logger: logger) }
        } else {
            let prepared = PreparedRows<S>(bindings: bindings)
            rows = try onLoop { connection, logger in try await Self.rows(prepared, on: connection, logger: logger) }
        }
        return try rows.map(Self.row)
    }

    func executePrepared<S: PreparedSQL>(_ statement: S.Type, arguments: SQLArguments) throws {
        let form = PreparedForm.of(S.self)
        guard form.countable else { return try execute(sql: S.sql, arguments: arguments) }
        if S.joinsTheWriteBefore, form.isInsert, let before = joinable, !before.joinsTheWriteBefore {
            // One statement instead of two: an INSERT that reads nothing does not care that
            // it cannot see the write before it. Its count of rows is the INSERT's, as it
            // would be sent alone after that write.
            let joined = try failing { try before.joined(by: S.self, arguments: arguments) }
            pending.removeLast()
            try hold(joined)
            return
        }
        let command = PreparedCommand<S>(bindings: try failing { try Self.bindings(form.placeholders, arguments) })
        try hold { connection, logger in try await Self.rows(command, on: connection, logger: logger).count }
        if !pending.isEmpty { joinable = HeldWrite<S>(arguments: arguments) }
    }

    /// The declared write held last, while it is the last one held: a statement that
    /// ``PreparedSQL/joinsTheWriteBefore`` goes with it (see ``executePrepared(_:arguments:)``).
    private var joinable: (any JoinableWrite)?

    /// A prepared statement's rows (prepared first if the connection has not seen it).
    static func rows<P: PostgresPreparedStatement>(_ prepared: P, on connection: PostgresConnection, logger: Logger) async throws -> [PostgresRow] where P.Row == PostgresRow {
        do {
            var rows: [PostgresRow] = []
            for try await row in try await connection.execute(prepared, logger: logger) { rows.append(row) }
            return rows
        } catch {
            closeIfPoisoned(connection, after: error)
            throw error
        }
    }

    /// postgres-nio remembers a statement that failed to prepare and fails every later use of
    /// it on that connection: after an error that is not about the data (a timeout, a lock, a
    /// catalog change), the connection is closed so the pool replaces it.
    @discardableResult
    static func closeIfPoisoned(_ connection: PostgresConnection, after error: any Error) -> Bool {
        guard isPoisonous(error) else { return false }
        ConnectionClosing.close(connection)
        return true
    }

    /// Any postgres-nio error but the data's own refusals (constraints, serialization, the
    /// append-only trigger, a missing privilege).
    static func isPoisonous(_ error: any Error) -> Bool {
        guard let error = error as? PSQLError else { return false }
        let state = error.serverInfo?[.sqlState] ?? ""
        return !(state.hasPrefix("23") || state.hasPrefix("40") || state == "P0001" || state == "42501")
    }

    /// A SELECT, VALUES, or a write with RETURNING.
    static func returnsRows(_ sql: String) -> Bool {
        let head = sql.drop { $0.isWhitespace }.prefix(6).uppercased()
        return head.hasPrefix("SELECT") || head.hasPrefix("VALUES") || head.hasPrefix("WITH") || sql.range(of: "RETURNING", options: .caseInsensitive) != nil
    }

    static func bindings(_ placeholders: Int, _ arguments: SQLArguments) throws -> PostgresBindings {
        guard placeholders == arguments.count else {
            throw StorageError.configuration("statement has \(placeholders) placeholders for \(arguments.count) arguments")
        }
        var binds = PostgresBindings(capacity: arguments.count)
        for argument in arguments {
            switch argument?.sqlValue ?? .null {
            case .null: binds.appendNull()
            case .integer(let integer): binds.append(integer)
            case .text(let string): binds.append(try SQLValue.storableText(string))
            case .blob(let bytes): binds.append(ByteBuffer(bytes: bytes))
            case .bool(let bool): binds.append(bool)
            }
        }
        return binds
    }

    /// The shared SQL's `?` placeholders numbered for PostgreSQL (`$1`…), outside string
    /// literals, quoted identifiers and comments; and how many there are. On UTF-8 bytes:
    /// prepared statements renumber their text at every call.
    static func numbered(_ sql: String, after first: Int = 0) -> (text: String, placeholders: Int) {
        var output: [UInt8] = []
        output.reserveCapacity(sql.utf8.count + 16)
        var number = first
        var quote: UInt8?
        var lineComment = false
        for byte in sql.utf8 {
            if lineComment {
                if byte == UInt8(ascii: "\n") { lineComment = false }
            } else if let open = quote {
                if byte == open { quote = nil }
            } else if byte == UInt8(ascii: "'") || byte == UInt8(ascii: "\"") {
                quote = byte
            } else if byte == UInt8(ascii: "-"), output.last == UInt8(ascii: "-") {
                lineComment = true
            } else if byte == UInt8(ascii: "?") {
                number += 1
                output.append(UInt8(ascii: "$"))
                output.append(contentsOf: String(number).utf8)
                continue
            }
            output.append(byte)
        }
        return (String(decoding: output, as: UTF8.self), number - first)
    }

    static func query(_ sql: String, _ arguments: SQLArguments) throws -> PostgresQuery {
        let (text, placeholders) = numbered(sql)
        return PostgresQuery(unsafeSQL: text, binds: try bindings(placeholders, arguments))
    }

    static func row(_ row: PostgresRow) throws -> SQLRow {
        var columns: [String] = []
        var values: [SQLValue] = []
        for cell in row {
            columns.append(cell.columnName)
            values.append(try value(cell))
        }
        return SQLRow(columns: columns, values: values)
    }

    static func value(_ cell: PostgresCell) throws -> SQLValue {
        guard cell.bytes != nil else { return .null }
        switch cell.dataType {
        case .bool: return .bool(try cell.decode(Bool.self))
        case .int2, .int4, .int8: return .integer(try cell.decode(Int64.self))
        case .text, .varchar, .name, .bpchar: return .text(try cell.decode(String.self))
        case .bytea:
            var buffer = try cell.decode(ByteBuffer.self)
            return .blob(buffer.readBytes(length: buffer.readableBytes) ?? [])
        default:
            throw StorageError.configuration("column \(cell.columnName) has the unsupported type \(cell.dataType)")
        }
    }
}

/// What the prepared forms of declared statements share: bindings given as built, rows
/// handed on as they come.
protocol DeclaredStatement: PostgresPreparedStatement where Row == PostgresRow {
    var bindings: PostgresBindings { get }
}

extension DeclaredStatement {
    func makeBindings() throws -> PostgresBindings { bindings }
    func decodeRow(_ row: PostgresRow) throws -> PostgresRow { row }
}

/// A declared query as postgres-nio prepares it: named after its type, parsed and planned
/// once per connection, its parameter types those of the first call's binds (as an
/// unprepared statement's would be).
struct PreparedRows<S: PreparedSQL>: DeclaredStatement {
    static var sql: String { PreparedForm.of(S.self).text }
    /// postgres-nio names a statement `String(reflecting:)` its type by default, a demangling
    /// at every call (1.4 % of a PUT's CPU): the type's address is as unique, within the
    /// process that owns the connections.
    static var name: String { "r\(UInt(bitPattern: ObjectIdentifier(S.self)))" }
    let bindings: PostgresBindings
}

/// A declared INSERT, UPDATE or DELETE, prepared likewise, with `RETURNING 1` added so that
/// the rows it changed can be counted (postgres-nio gives a prepared command's tag only in a
/// form that must not be read before the rows are).
struct PreparedCommand<S: PreparedSQL>: DeclaredStatement {
    static var sql: String { PreparedForm.of(S.self).command }
    static var name: String { "c\(UInt(bitPattern: ObjectIdentifier(S.self)))" }
    let bindings: PostgresBindings
}

/// The statement deadline of one hand-off between a transaction's thread and its
/// connection's loop, armed again before each statement sent: each statement may go
/// unanswered for the whole deadline, however many go together (up to 64 held writes, in a
/// bulk copy). One deadline for them all failed a 200-row write on a loaded machine.
final class StatementTimer: Sendable {
    @TaskLocal static var current: StatementTimer?
    private let arm: @Sendable () -> Scheduled<Void>
    private let timer: NIOLockedValueBox<Scheduled<Void>?>

    init(arm: @escaping @Sendable () -> Scheduled<Void>) {
        self.arm = arm
        timer = NIOLockedValueBox(arm())
    }

    func rearm() {
        timer.withLockedValue { timer in
            timer?.cancel()
            timer = arm()
        }
    }

    func cancel() {
        timer.withLockedValue { timer in
            timer?.cancel()
            timer = nil
        }
    }
}

/// A declared write held back, which a statement that joins the write before it can go with.
protocol JoinableWrite {
    /// Whether the held write is itself a joining statement. Two of them are never joined:
    /// PostgreSQL runs a statement's parts in an order it does not specify, and two appends
    /// to the audit trail must take their `seq` in the order they were made.
    var joinsTheWriteBefore: Bool { get }
    /// The write and `statement` as one prepared statement, answering `statement`'s count.
    func joined<B: PreparedSQL>(by statement: B.Type, arguments: SQLArguments) throws -> @Sendable (PostgresConnection, Logger) async throws -> Int
}

struct HeldWrite<A: PreparedSQL>: JoinableWrite {
    let arguments: SQLArguments
    var joinsTheWriteBefore: Bool { A.joinsTheWriteBefore }

    func joined<B: PreparedSQL>(by statement: B.Type, arguments more: SQLArguments) throws -> @Sendable (PostgresConnection, Logger) async throws -> Int {
        let form = JoinedForm.of(A.self, B.self)
        let joined = PreparedJoined<A, B>(bindings: try PostgresTransaction.bindings(form.placeholders, arguments + more))
        return { connection, logger in try await PostgresTransaction.rows(joined, on: connection, logger: logger).count }
    }
}

/// `A` then `B` as one statement: `WITH joined_write AS (A) B RETURNING 1`. PostgreSQL runs a
/// data-modifying `WITH` whether or not the rest reads it; `B`'s placeholders follow `A`'s.
struct JoinedForm: Sendable {
    let text: String
    let placeholders: Int

    private static let forms = NIOLockedValueBox<[[ObjectIdentifier]: JoinedForm]>([:])

    static func of<A: PreparedSQL, B: PreparedSQL>(_ first: A.Type, _ second: B.Type) -> JoinedForm {
        let key = [ObjectIdentifier(first), ObjectIdentifier(second)]
        if let form = forms.withLockedValue({ $0[key] }) { return form }
        let write = PreparedForm.of(A.self)
        let then = PostgresTransaction.numbered(B.sql, after: write.placeholders)
        let form = JoinedForm(text: "WITH joined_write AS (\(write.text)) \(then.text) RETURNING 1", placeholders: write.placeholders + then.placeholders)
        forms.withLockedValue { $0[key] = form }
        return form
    }
}

struct PreparedJoined<A: PreparedSQL, B: PreparedSQL>: DeclaredStatement {
    static var sql: String { JoinedForm.of(A.self, B.self).text }
    static var name: String { "j\(UInt(bitPattern: ObjectIdentifier(A.self)))_\(UInt(bitPattern: ObjectIdentifier(B.self)))" }
    let bindings: PostgresBindings
}

/// A declared SELECT that takes the shared write lock first: the lock is a one-time filter
/// (an `EXISTS` on no column of the query), which PostgreSQL evaluates once, before it reads
/// a row, and the query's rows pass through unchanged, in its order.
struct PreparedLockedRows<S: PreparedSQL>: DeclaredStatement {
    /// Built only for forms that have a locked text (``PostgresTransaction/fetchAllPrepared(_:arguments:)``
    /// checks); running the plain text instead would drop the lock without a word.
    static var sql: String { PreparedForm.of(S.self).locked! }
    static var name: String { "l\(UInt(bitPattern: ObjectIdentifier(S.self)))" }
    let bindings: PostgresBindings
}

/// A transaction's opening statements, prepared like the stores' (named, parsed once per
/// connection): sent unprepared, each BEGIN was a Parse, a Describe, a Bind and an Execute,
/// and their answers, for the server to parse and for us to encode and decode. ROLLBACK goes
/// the same way (PostgreSQL accepts a prepared ROLLBACK in a failed transaction). COMMIT
/// stays unprepared: its command tag (COMMIT, or ROLLBACK when a statement of the
/// transaction had failed) is checked, and postgres-nio gives a prepared statement's tag only
/// in a form that traps when read (`PostgresConnection.execute` where `Row == ()`, 1.33.2).
enum TransactionSQL {
    enum BeginSerializable: PreparedSQL { static let sql = "BEGIN ISOLATION LEVEL SERIALIZABLE" }
    enum BeginReadOnly: PreparedSQL { static let sql = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY" }
    enum BeginBetweenWrites: PreparedSQL { static let sql = "BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY" }
    enum Rollback: PreparedSQL { static let sql = "ROLLBACK" }

    /// `sql`, prepared if it is one of the above (an error that may have left its preparation
    /// failed closes the connection, as for the stores' statements).
    static func run(_ sql: String, on connection: PostgresConnection, logger: Logger) async throws {
        let none = PostgresBindings()
        switch sql {
        case BeginSerializable.sql: _ = try await PostgresTransaction.rows(PreparedRows<BeginSerializable>(bindings: none), on: connection, logger: logger)
        case BeginReadOnly.sql: _ = try await PostgresTransaction.rows(PreparedRows<BeginReadOnly>(bindings: none), on: connection, logger: logger)
        case BeginBetweenWrites.sql: _ = try await PostgresTransaction.rows(PreparedRows<BeginBetweenWrites>(bindings: none), on: connection, logger: logger)
        case Rollback.sql: _ = try await PostgresTransaction.rows(PreparedRows<Rollback>(bindings: none), on: connection, logger: logger)
        default: try await connection.query(PostgresQuery(unsafeSQL: sql), logger: logger)
        }
    }
}

/// The write lock's statements, prepared like the stores'.
enum WriteLockSQL {
    enum LockSharedForTransaction: PreparedSQL { static let sql = "SELECT 1 FROM pg_advisory_xact_lock_shared(\(PostgresEngine.writeLock))" }
    enum Lock: PreparedSQL { static let sql = "SELECT 1 FROM pg_advisory_lock(\(PostgresEngine.writeLock))" }
    enum LockForTransaction: PreparedSQL { static let sql = "SELECT 1 FROM pg_advisory_xact_lock(\(PostgresEngine.writeLock))" }
    /// Before ``LockForTransaction``: writes queue behind a waiting exclusive request, so its
    /// wait is short (SQLSTATE 55P03 when it runs out: unavailable).
    enum BoundLockWait: PreparedSQL { static let sql = "SELECT set_config('lock_timeout', '2s', true)" }
    enum Unlock: PreparedSQL { static let sql = "SELECT 1 WHERE pg_advisory_unlock(\(PostgresEngine.writeLock))" }
}
