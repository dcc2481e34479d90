import Foundation
import NIOCore
import Storage

/// The forward-auth checks of every event loop, read in batches. One per
/// ``HabilitationService``, living on one event loop (the first check's): checks made on
/// other loops come here and their answers go back. Only touched on its loop.
///
/// With one statement per check, PostgreSQL's round trip (the protocol, TLS, a wake-up of its
/// backend and of our loop) dominated the check: measured, 205 µs of our CPU and 117 µs of
/// PostgreSQL's per check, against 41 µs for a whole check on SQLite. Here, one statement is
/// out at a time; the checks that arrive meanwhile, on any loop, wait for it to come back, then
/// go together in the next (up to ``HabilitationService/FactsBatchQuery/size`` sessions per
/// statement). Under light load nothing waits: a lone check is sent at once, as before.
/// Another statement goes out beside the one out when that one stalls (``stallAfter``), or
/// when a full statement's worth of sessions is waiting (so that many distinct sessions, on a
/// machine with many cores, are not held to one statement per round trip).
///
/// An outage must not turn the queue into a wait: a failed statement fails every check then
/// waiting, on every loop (fail-closed, 503; in a healthy process those are the checks that
/// arrived during one round trip), a check waits at most ``queueTimeout`` to be sent, and at
/// most ``maximumWaiting`` wait; beyond, a check fails at once.
///
/// Fresh reads are kept: every check's statement is sent after its request arrived, so it sees
/// every commit acknowledged before then (a withdrawal applies on the next request). The rows
/// name their session (`id_hash`), and each check takes the row of its own session only;
/// several checks of one session share its row.
final class FactsBatcher: @unchecked Sendable {
    /// A statement out longer than this no longer holds the checks behind it: another is sent
    /// beside it. A connection that stalls (a lost packet, a stuck backend; the engine's own
    /// deadline is 30 s) then delays the checks of its batch only, as it did when every check
    /// had a statement of its own.
    static let stallAfter = TimeAmount.milliseconds(250)
    /// Statements out at once, at most (the engine's pool is shared with everything else).
    static let maximumOut = 4
    /// How many of the first checks waiting are looked at to find a full statement's worth of
    /// distinct sessions: bounded, so that a long queue (an outage) costs little per check.
    static let fullBatchLookahead = 64
    /// How long a check may wait to be sent before it fails as unavailable (503).
    static let queueTimeout = TimeAmount.seconds(5)
    /// Checks waiting, at most; one more fails at once as unavailable.
    static let maximumWaiting = 4096

    private struct Waiting {
        var hash: String
        var promise: EventLoopPromise<HabilitationService.SessionFacts?>
        var since: NIODeadline
    }

    let eventLoop: any EventLoop
    /// ``stallAfter``, unless a test asks for longer.
    let stallAfter: TimeAmount
    private unowned let service: HabilitationService
    private var waiting = CircularBuffer<Waiting>(initialCapacity: 16)
    /// The statements out, by number: when each was sent.
    private var out: [UInt64: NIODeadline] = [:]
    private var sent: UInt64 = 0
    /// Statements sent so far, for tests: the batching's effect, counted without timing.
    var statementsSent: UInt64 {
        eventLoop.preconditionInEventLoop()
        return sent
    }
    /// The checks this batcher sent and the statements they took (metrics).
    let counters = LookupCounters()
    /// Checks waiting now, for tests.
    var checksWaiting: Int {
        eventLoop.preconditionInEventLoop()
        return waiting.count
    }
    /// In ``sendWhilePossible()``: a statement answered at once (SQLite) comes back inside it,
    /// and its loop goes on instead of recursing.
    private var sending = false
    /// Ticks while checks wait, to send them beside a stalled statement or time them out.
    private var watchdog: RepeatedTask?

    init(eventLoop: any EventLoop, service: HabilitationService, stallAfter: TimeAmount) {
        self.eventLoop = eventLoop
        self.service = service
        self.stallAfter = stallAfter
    }

    /// The facts of the session stored as `hash`, or nil when no live session has it.
    func facts(hash: String) -> EventLoopFuture<HabilitationService.SessionFacts?> {
        eventLoop.preconditionInEventLoop()
        guard waiting.count < Self.maximumWaiting else {
            return eventLoop.makeFailedFuture(StorageError.unavailable("too many forward-auth checks waiting for the database"))
        }
        let promise = eventLoop.makePromise(of: HabilitationService.SessionFacts?.self)
        waiting.append(Waiting(hash: hash, promise: promise, since: .now()))
        sendWhilePossible()
        return promise.futureResult
    }

    /// Room for one more statement, and either no statement out younger than ``stallAfter``
    /// or a full statement's worth of distinct sessions waiting.
    private func maySend(at now: NIODeadline) -> Bool {
        guard out.count < Self.maximumOut else { return false }
        let stallAfter = self.stallAfter
        if !out.values.contains(where: { now - $0 < stallAfter }) { return true }
        guard waiting.count >= HabilitationService.FactsBatchQuery.size else { return false }
        var sessions: [String] = []
        sessions.reserveCapacity(HabilitationService.FactsBatchQuery.size)
        for check in waiting.prefix(Self.fullBatchLookahead) where !sessions.contains(check.hash) {
            sessions.append(check.hash)
            if sessions.count == HabilitationService.FactsBatchQuery.size { return true }
        }
        return false
    }

    private func sendWhilePossible() {
        guard !sending else { return }
        sending = true
        defer { sending = false }
        var now = NIODeadline.now()
        while let first = waiting.first, now - first.since >= Self.queueTimeout {
            waiting.removeFirst().promise.fail(StorageError.unavailable("no database answer for a forward-auth check within \(Self.queueTimeout.nanoseconds / 1_000_000_000) s"))
        }
        while !waiting.isEmpty, maySend(at: now) {
            sendOne(at: now)
            now = .now()
        }
        if waiting.isEmpty {
            watchdog?.cancel()
            watchdog = nil
        } else if watchdog == nil {
            let tick = min(stallAfter, Self.stallAfter)
            watchdog = eventLoop.scheduleRepeatedTask(initialDelay: tick, delay: tick) { [weak self] _ in
                self?.sendWhilePossible()
            }
        }
    }

    private func sendOne(at now: NIODeadline) {
        // The distinct sessions of the first checks waiting, up to one statement's worth.
        var hashes: [String] = []
        var batch: [Waiting] = []
        while let first = waiting.first {
            if !hashes.contains(first.hash) {
                guard hashes.count < HabilitationService.FactsBatchQuery.size else { break }
                hashes.append(first.hash)
            }
            batch.append(waiting.removeFirst())
        }
        sent += 1
        let number = sent
        out[number] = now
        let arguments = service.factsBatchArguments(hashes: hashes, at: service.now)
        service.database.engine.loopRead(HabilitationService.FactsBatchQuery.self, arguments: arguments, on: eventLoop)
            .hop(to: eventLoop)
            .assumeIsolated()
            .whenComplete { [self] result in
                out[number] = nil
                switch result {
                case .success(let rows):
                    // Counted once answered, as ``HabilitationService/checkNow(sessionToken:on:)``
                    // counts its reads (a failure shows as a 503, not as a lookup).
                    counters.read(checks: batch.count)
                    var found: [String: HabilitationService.SessionFacts] = [:]
                    for row in rows {
                        let hash: String = row["id_hash"]
                        // Only a session that was asked for (the statement cannot return
                        // another, but the answer is checked, not trusted).
                        guard hashes.contains(hash), let facts = HabilitationService.facts(row, hash: hash) else { continue }
                        found[hash] = facts
                    }
                    for check in batch { check.promise.succeed(found[check.hash]) }
                case .failure(let error):
                    // The database failed this statement: the checks waiting now would most
                    // likely meet the same failure one batch at a time. They fail now (503),
                    // which never grants anything.
                    for check in batch { check.promise.fail(error) }
                    while let check = waiting.popFirst() { check.promise.fail(error) }
                }
                sendWhilePossible()
            }
    }
}
