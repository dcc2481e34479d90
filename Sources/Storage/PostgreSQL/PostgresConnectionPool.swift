import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO

/// The engine's PostgreSQL connections: at most `maximum` open, each lent to one transaction
/// (or one forward-auth statement) at a time, in the order requests asked.
///
/// Why not postgres-nio's `PostgresClient` (used until 2026-12-03), in its version 1.33.2:
/// - with connections kept open (a minimum), it stops the process when requests wait just
///   after a PostgreSQL restart: failed attempts leave it below its minimum, and its
///   `precondition(minimum <= active)` fails (seen in CI, `postgresRestartUnderLoad`);
/// - without a minimum, it schedules a timer task at every return of a connection (its idle
///   timeout): measured on forward-auth, 13 % fewer checks a second than with a minimum.
///
/// Here the state is a few counters under one lock; idle connections beyond `keepOpen` are
/// closed by one sweep every few seconds, not a timer per use. The pool never fails for the
/// server's state: a connection is opened when a request waits and none is idle, attempts
/// that fail are retried with back-off while requests wait, and deciding that a waiting
/// request has waited enough is the engine's part (``PostgresEngine``'s watchdog and probe).
final class PostgresConnectionPool: Sendable {
    /// A request waiting for a connection; `loop` is where it would rather have one.
    private struct Waiter {
        let id: UInt64
        let continuation: CheckedContinuation<PostgresConnection, any Error>
        let loop: (any EventLoop)?
    }

    private struct Idle {
        let connection: PostgresConnection
        let since: NIODeadline
    }

    private struct State {
        var idle: [Idle] = []
        /// Lent, by identity: a lent connection that closes frees its place when it closes,
        /// not when (if ever) its user gives it back (a statement written to a connection
        /// that closed before the write is never answered, and its user never returns).
        var leased: [ObjectIdentifier: PostgresConnection] = [:]
        var connecting = 0
        /// Told to close and not closed yet: still a connection on the server.
        var closing: [ObjectIdentifier: PostgresConnection] = [:]
        var waiters: [Waiter] = []
        var nextWaiter: UInt64 = 0
        var nextConnection = 0
        /// Attempts started, for tests (how often a refusing server is tried).
        var attempts = 0
        /// Sweeps run, for tests (a check that the sweep left something alone is conclusive
        /// only once a sweep has run).
        var sweeps = 0
        /// Connections opened so far: an attempt started before the last success that fails
        /// (a round of several, one of which got through) is not a new outage.
        var successes = 0
        /// Attempts failed in a row, and when the last one failed: while it is above 0,
        /// one attempt at a time, after a back-off.
        var failures = 0
        var lastFailure = NIODeadline.distantPast
        /// Why the last attempt failed (``PostgresEngine/connectFailure(_:)``: no secret), while
        /// attempts fail; nil once one succeeds.
        var failureReason: String?
        /// Counted failures in a row that no retry overcomes
        /// (``PostgresEngine/isConfigurationFailure(_:)``), and when the first and the last
        /// of them happened: any other failure (a refused port, a server starting up) starts
        /// over.
        var definiteFailures = 0
        var definiteSince: NIODeadline?
        var definiteLast: NIODeadline?
        /// The last counted definite refusal's reason: an uncounted attempt of the same round
        /// that failed otherwise (a refused port) does not become the reason given up for.
        var definiteReason: String?
        var retry: Scheduled<Void>?
        var closed = false
        var open: Int { idle.count + leased.count + connecting + closing.count }
    }

    /// What to do once the lock is released.
    private enum Step {
        /// Attempts to start, on these loops; `retry` when made after failures.
        case connect([any EventLoop], retry: Bool)
        case retry(after: TimeAmount)
        case none
    }

    let maximum: Int
    let keepOpen: Int
    /// How long a connection beyond `keepOpen` stays open unused.
    let idleTimeout: TimeAmount
    private let configuration: PostgresConnection.Configuration
    /// A statement every new connection runs before it serves (``PostgresEngine/connectionBounds``);
    /// a connection that fails it is closed, as one that failed to open.
    private let setUp: String?
    private let group: any EventLoopGroup
    private let state = NIOLockedValueBox(State())
    private let sweeper: NIOLockedValueBox<RepeatedTask?> = NIOLockedValueBox(nil)
    private let logger: Logger

    init(configuration: PostgresConnection.Configuration, setUp: String? = nil, maximum: Int, keepOpen: Int, idleTimeout: TimeAmount = .seconds(60),
         sweepEvery: TimeAmount = .seconds(5), definiteAfter: TimeAmount = .seconds(5), group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
         logger: Logger) {
        precondition(maximum > 0 && (0...maximum).contains(keepOpen))
        self.configuration = configuration
        self.setUp = setUp
        self.maximum = maximum
        self.keepOpen = keepOpen
        self.idleTimeout = idleTimeout
        self.definiteAfter = definiteAfter
        self.group = group
        self.logger = logger
        sweep()
        let task = group.next().scheduleRepeatedTask(initialDelay: sweepEvery, delay: sweepEvery) { [weak self] task in
            guard let self else { return task.cancel() }
            self.sweep()
        }
        sweeper.withLockedValue { $0 = task }
    }

    /// Sweeps run so far, for tests.
    var sweeps: Int { state.withLockedValue { $0.sweeps } }

    /// Why connections cannot be opened now (the last attempt's failure), or nil when the
    /// last attempt succeeded: what a wait that gives up says instead of "busy".
    var failingBecause: String? { state.withLockedValue { $0.failures > 0 ? $0.failureReason : nil } }

    /// Why connections cannot be opened, when every round of attempts over at least
    /// ``definiteAfter`` (first to last refusal, three at least) was refused for a reason no retry
    /// overcomes: a password, a role or a database the server does not know, a certificate
    /// TLS does not trust. At start that is a configuration to fix, not a server still coming
    /// up. The span leaves room for set-ups that create the role or the database once the
    /// server listens (an init job, an operator): seconds, not the whole wait.
    var failingForGoodBecause: String? {
        state.withLockedValue { forGood($0) }
    }

    /// Failures in a row and ``failingForGoodBecause``, read together (for tests).
    var refusals: (failures: Int, forGood: String?) {
        state.withLockedValue { ($0.failures, forGood($0)) }
    }

    /// Measured between refusals seen, not up to now: a refusal seconds old (attempts back
    /// off, and stop while no request waits) says nothing about the server now.
    private func forGood(_ state: State) -> String? {
        guard state.definiteFailures >= 3, let since = state.definiteSince, let last = state.definiteLast, last - since >= definiteAfter else {
            return nil
        }
        return state.definiteReason
    }

    /// How long definite refusals last before ``failingForGoodBecause`` reports them.
    let definiteAfter: TimeAmount

    /// Counts, for tests and diagnostics.
    var counts: (idle: Int, leased: Int, connecting: Int, closing: Int, waiting: Int, attempts: Int) {
        state.withLockedValue { ($0.idle.count, $0.leased.count, $0.connecting, $0.closing.count, $0.waiters.count, $0.attempts) }
    }

    /// A connection of this pool, to give back with ``release(_:)``: an idle one (on
    /// `loop` if one is there), or the next one opened or given back. Waits as long as it
    /// takes; cancelling the task ends the wait (`CancellationError`).
    func lease(preferring loop: (any EventLoop)? = nil) async throws -> PostgresConnection {
        let id = state.withLockedValue { state in
            state.nextWaiter += 1
            return state.nextWaiter
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<PostgresConnection, any Error>) in
                enum Outcome {
                    case lend(PostgresConnection)
                    case fail(any Error)
                    case wait(Step)
                }
                let outcome = state.withLockedValue { state -> Outcome in
                    if state.closed { return .fail(StorageError.unavailable("the database connections are closed")) }
                    // Checked under the lock the cancellation handler takes: either it finds
                    // this waiter, or this sees the cancellation.
                    if Task.isCancelled { return .fail(CancellationError()) }
                    if let connection = Self.takeIdle(&state, preferring: loop) {
                        state.leased[ObjectIdentifier(connection)] = connection
                        return .lend(connection)
                    }
                    state.waiters.append(Waiter(id: id, continuation: continuation, loop: loop))
                    return .wait(self.plan(&state))
                }
                switch outcome {
                case .lend(let connection): continuation.resume(returning: connection)
                case .fail(let error): continuation.resume(throwing: error)
                case .wait(let step): perform(step)
                }
            }
        } onCancel: {
            let waiter = state.withLockedValue { state -> Waiter? in
                guard let index = state.waiters.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiters.remove(at: index)
            }
            waiter?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Gives a leased connection back: to the first waiting request, or to the idle ones. A
    /// closed one frees its place (a new one is opened if requests wait); one whose close
    /// freed it already is ignored.
    func release(_ connection: PostgresConnection) {
        let waiter = state.withLockedValue { state -> Waiter? in
            // Not lent any more: its close freed its place already, or `close()` took it.
            guard state.leased[ObjectIdentifier(connection)] != nil else { return nil }
            // Closed: its close (under way, or done and about to be seen) frees the place.
            if connection.isClosed { return nil }
            if !state.waiters.isEmpty { return state.waiters.removeFirst() }
            state.leased[ObjectIdentifier(connection)] = nil
            state.idle.append(Idle(connection: connection, since: .now()))
            return nil
        }
        waiter?.continuation.resume(returning: connection)
    }

    /// Stops lending: waiting requests fail, and every connection is told to close, lent ones
    /// included (their statements fail), as are those still opening once open. Returns once
    /// the idle and lent ones have closed.
    func close() async {
        let (waiters, connections) = state.withLockedValue { state -> ([Waiter], [PostgresConnection]) in
            state.closed = true
            state.retry?.cancel()
            state.retry = nil
            let connections = state.idle.map(\.connection) + Array(state.leased.values)
            let waiters = state.waiters
            state.waiters = []
            state.idle = []
            state.leased = [:]
            return (waiters, connections)
        }
        sweeper.withLockedValue { $0?.cancel() }
        for waiter in waiters { waiter.continuation.resume(throwing: StorageError.unavailable("the database connections are closed")) }
        // All told at once, then waited for together: a TLS close to a vanished server
        // waits for its peer (5 s), and ten in a row would outlast a stop's grace period.
        let closes = connections.map { connection in
            connection.close().flatMapError { _ in connection.closeFuture }
        }
        guard let loop = connections.first?.eventLoop else { return }
        try? await EventLoopFuture.andAllComplete(closes, on: loop).get()
    }

    // MARK: - Opening connections

    /// The attempts to start for the requests waiting, marked as started. While attempts
    /// fail, one at a time after a back-off (100 ms, doubling, 2 s at most, ±20 %): a server
    /// that is restarting is not flooded, and the first attempt that succeeds opens the rest.
    private func plan(_ state: inout State) -> Step {
        guard !state.closed, state.open < maximum else { return .none }
        if state.failures > 0 {
            guard !state.waiters.isEmpty, state.connecting == 0, state.retry == nil else { return .none }
            let wait = Self.backoff(after: state.failures) - (.now() - state.lastFailure)
            if wait > .zero { return .retry(after: Self.jittered(wait)) }
            state.connecting += 1
            return .connect([state.waiters[0].loop ?? group.next()], retry: true)
        }
        let wanted = min(state.waiters.count - state.connecting, maximum - state.open)
        guard wanted > 0 else { return .none }
        // For the waiters that no attempt in flight is for yet, on the loops they prefer.
        let loops = state.waiters[state.connecting..<(state.connecting + wanted)].map { $0.loop ?? group.next() }
        state.connecting += wanted
        return .connect(loops, retry: false)
    }

    static func backoff(after failures: Int) -> TimeAmount {
        .milliseconds(min(2_000, 100 << min(max(failures, 1) - 1, 5)))
    }

    /// ±20 %: instances that saw the same restart do not retry in step.
    private static func jittered(_ delay: TimeAmount) -> TimeAmount {
        .nanoseconds(Int64(Double(delay.nanoseconds) * Double.random(in: 0.8...1.2)))
    }

    private func perform(_ step: Step) {
        switch step {
        case .none:
            return
        case .connect(let loops, let retry):
            for loop in loops { connect(on: loop, retry: retry) }
        case .retry(let delay):
            // Scheduled under the lock: `close()` cancels it, and only one is ever pending.
            state.withLockedValue { state in
                guard !state.closed, state.retry == nil else { return }
                state.retry = group.next().scheduleTask(in: delay) { [weak self] in
                    guard let self else { return }
                    let step = self.state.withLockedValue { state -> Step in
                        state.retry = nil
                        // Due now: plan starts the attempt (or nothing, if no one waits any more).
                        state.lastFailure = .now() - Self.backoff(after: state.failures)
                        return self.plan(&state)
                    }
                    self.perform(step)
                }
            }
        }
    }

    private func connect(on loop: any EventLoop, retry: Bool) {
        let (id, epoch) = state.withLockedValue { state in
            state.nextConnection += 1
            state.attempts += 1
            return (state.nextConnection, state.successes)
        }
        let (setUp, logger) = (self.setUp, self.logger)
        PostgresConnection.connect(on: loop, configuration: configuration, id: id, logger: logger).flatMap { connection -> EventLoopFuture<PostgresConnection> in
            guard let setUp else { return loop.makeSucceededFuture(connection) }
            return connection.query(PostgresQuery(unsafeSQL: setUp), logger: logger).map { _ in connection }.flatMapError { error in
                connection.close().flatMapThrowing { throw error }
            }
        }.whenComplete { result in
            switch result {
            case .success(let connection): self.opened(connection, retry: retry, epoch: epoch)
            case .failure(let error): self.failedToOpen(error, retry: retry, epoch: epoch)
            }
        }
    }

    private func opened(_ connection: PostgresConnection, retry: Bool, epoch: Int) {
        // Closed already (the server or a proxy closed it right after authentication): a
        // failed attempt, not a recovery, or such a server would be reconnected in a loop.
        if connection.isClosed {
            failedToOpen(StorageError.unavailable("the server closed the connection as soon as it was open"), retry: retry, epoch: epoch)
            return
        }
        enum Outcome {
            case lend(Waiter, Step)
            case close
            case step(Step)
        }
        let (outcome, recovered) = state.withLockedValue { state -> (Outcome, Bool) in
            state.connecting -= 1
            let recovered = state.failures > 0
            state.failures = 0
            state.failureReason = nil
            state.definiteFailures = 0
            state.definiteSince = nil
            state.definiteLast = nil
            state.definiteReason = nil
            state.successes += 1
            if state.closed { return (.close, false) }
            if !state.waiters.isEmpty {
                state.leased[ObjectIdentifier(connection)] = connection
                let waiter = state.waiters.removeFirst()
                return (.lend(waiter, plan(&state)), recovered)
            }
            state.idle.append(Idle(connection: connection, since: .now()))
            return (.step(plan(&state)), recovered)
        }
        // After it is counted: a close that came first runs this at once, and finds it.
        connection.closeFuture.whenComplete { [weak self] _ in self?.closed(connection) }
        if recovered { logger.notice("database connections open again") }
        switch outcome {
        case .lend(let waiter, let step):
            waiter.continuation.resume(returning: connection)
            perform(step)
        case .close:
            connection.close().whenComplete { _ in }
        case .step(let step):
            perform(step)
        }
    }

    /// `retry`: the attempt was made after failures. The attempts of one round (several
    /// started together) count as one failure for the back-off, and an attempt started
    /// before the last success that fails is no outage (`epoch`: the successes then).
    private func failedToOpen(_ error: any Error, retry: Bool, epoch: Int) {
        let (step, first) = state.withLockedValue { state -> (Step, Bool) in
            state.connecting -= 1
            guard epoch == state.successes else { return (plan(&state), false) }
            let first = state.failures == 0
            if first || retry {
                state.failures += 1
                if PostgresEngine.isConfigurationFailure(error) {
                    state.definiteFailures += 1
                    if state.definiteSince == nil { state.definiteSince = .now() }
                    state.definiteLast = .now()
                    state.definiteReason = PostgresEngine.connectFailure(error)
                } else {
                    state.definiteFailures = 0
                    state.definiteSince = nil
                    state.definiteLast = nil
                    state.definiteReason = nil
                }
            }
            state.lastFailure = .now()
            state.failureReason = PostgresEngine.connectFailure(error)
            return (plan(&state), first)
        }
        // Once per outage: the requests that fail meanwhile say why (the engine's probe).
        if first { logger.warning("cannot open a database connection; retrying while requests wait", metadata: ["reason": "\(PostgresEngine.connectFailure(error))"]) }
        perform(step)
    }

    /// A connection closed (by the server: restart, failover, idle timeout of a proxy; or
    /// by its user or the sweep): its place is free.
    private func closed(_ connection: PostgresConnection) {
        let step = state.withLockedValue { state -> Step in
            let key = ObjectIdentifier(connection)
            state.idle.removeAll { $0.connection === connection }
            state.leased[key] = nil
            state.closing[key] = nil
            return plan(&state)
        }
        perform(step)
    }

    /// An idle connection, preferably on `loop` (its answers then arrive where the request
    /// runs), the most recently used first; closed ones found on the way are dropped (their
    /// close frees nothing more: they are no longer counted).
    private static func takeIdle(_ state: inout State, preferring loop: (any EventLoop)?) -> PostgresConnection? {
        state.idle.removeAll { $0.connection.isClosed }
        guard !state.idle.isEmpty else { return nil }
        if let loop, let index = state.idle.lastIndex(where: { $0.connection.eventLoop === loop }) {
            return state.idle.remove(at: index).connection
        }
        return state.idle.removeLast().connection
    }

    /// Closes connections idle for longer than ``idleTimeout`` beyond the `keepOpen`
    /// first, and opens connections up to `keepOpen`.
    private func sweep() {
        let (expired, step) = state.withLockedValue { state -> ([PostgresConnection], Step) in
            guard !state.closed else { return ([], .none) }
            state.sweeps += 1
            state.idle.removeAll { $0.connection.isClosed }
            var expired: [PostgresConnection] = []
            let limit = NIODeadline.now() - idleTimeout
            // Oldest first: the idle ones are in the order they were given back. Counted
            // until closed: the server still has them meanwhile.
            while state.open - state.closing.count > keepOpen, let oldest = state.idle.first, oldest.since < limit {
                let connection = state.idle.removeFirst().connection
                state.closing[ObjectIdentifier(connection)] = connection
                expired.append(connection)
            }
            let missing = keepOpen - state.open
            guard missing > 0, state.connecting == 0 else { return (expired, .none) }
            if state.failures > 0 {
                guard state.retry == nil, .now() - state.lastFailure >= Self.backoff(after: state.failures) else { return (expired, .none) }
                state.connecting += 1
                return (expired, .connect([group.next()], retry: true))
            }
            state.connecting += missing
            return (expired, .connect((0..<missing).map { _ in group.next() }, retry: false))
        }
        for connection in expired { connection.close().whenComplete { _ in } }
        perform(step)
    }
}
