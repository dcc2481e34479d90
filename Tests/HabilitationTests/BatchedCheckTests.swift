import Accounts
import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import Habilitation
import NIOCore
import NIOPosix
import Storage
import StorageTesting
import Testing

/// The forward-auth listener's check (``HabilitationService/check(sessionToken:on:)``) reads
/// the checks that arrive together, on any event loop, with one statement. A mistake there would
/// hand one session's identity to another request, so every answer is compared with the
/// session's own, read alone. (On SQLite the loop's own connection answers each check before
/// the next is asked, so every batch holds one check; on PostgreSQL they pile up behind the
/// statement out, and a batch holds several.)
@Suite("Batched forward-auth checks")
struct BatchedCheckTests {
    /// What identifies an answer: whose session it is, and the decision.
    struct Answer: Equatable, CustomStringConvertible {
        var accountID: String?
        var origin: SessionOrigin?
        var createdAt: Date?
        var decision: HabilitationDecision
        init(_ check: HabilitationCheck) {
            accountID = check.account?.accountID
            origin = check.session?.origin
            createdAt = check.session?.createdAt
            decision = check.decision
        }
        var description: String { "\(accountID ?? "-") \(origin?.rawValue ?? "-") \(decision)" }
    }

    /// Two accounts (one habilitated, one with steps still due), sessions of each from the SAS
    /// and from elsewhere, created at different times, a signed-out session and tokens no
    /// session has: more than one statement's worth, sent at once on one loop, three times
    /// over in different orders, and each answer is its own session's.
    @Test func everyCheckGetsItsOwnSessionsAnswer() async throws {
        let world = try await World()
        let other = try await world.provisioner.provision(.create(RegulatorRecord(
            sasTechnicalID: SASTechnicalID("0d5d7b8e-4a55-4bd0-9a43-0f8a2a7e2b11"), active: true, familyName: "DURAND", givenName: "Alice",
            email: EmailAddress("alice.durand@test.com")!)), context: CallContext(actor: world.actor)).account.id
        var tokens: [String] = []
        for index in 0..<4 {
            tokens.append(try await world.signIn(origin: .sas))
            tokens.append(try await world.signIn(origin: index.isMultiple(of: 2) ? nil : .sas))
            let flow = try await world.sessions.startFlow(accountID: other, intentToken: nil)
            try await world.sessions.markSecondFactorDone(flowToken: flow)
            tokens.append(try #require(try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: "test", actor: world.actor)).token)
            tokens.append(FactsMemoTests.shaped("not-a-session-\(index)"))
            world.clock.advance(1)
        }
        let signedOut = try await world.signIn(origin: .sas)
        _ = try await world.sessions.revoke(signedOut, reason: .signOut)
        tokens.append(signedOut)

        var expected: [String: Answer] = [:]
        for token in tokens { expected[token] = Answer(try await world.habilitation.check(sessionToken: token)) }
        // The answers differ enough that a mix-up shows.
        #expect(Set(expected.values.map(\.description)).count >= 4)
        #expect(expected.values.contains { $0.accountID == world.accountID && $0.decision == .granted })
        #expect(expected.values.contains { $0.accountID == other })
        #expect(expected[signedOut]?.accountID == nil)

        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let habilitation = world.habilitation
        for round in 0..<3 {
            // Each token twice: checks of one session share its row.
            let order = (tokens + tokens).shuffled()
            let futures = try await loop.submit {
                order.map { token in habilitation.check(sessionToken: token, on: loop).map { (token, Answer($0.check)) } }
            }.get()
            for future in futures {
                let (token, answer) = try await future.get()
                #expect(answer == expected[token], "round \(round): \(token.prefix(8))… got \(answer), expected \(expected[token].map(\.description) ?? "?")")
            }
        }
    }

    /// A withdrawal committed before a request arrives applies to it, batched or not: checks
    /// sent after the commit, together, all see it.
    @Test func aBatchSeesWhatWasCommittedBeforeItsRequests() async throws {
        let world = try await World()
        let tokens = [try await world.signIn(origin: .sas), try await world.signIn(origin: .sas), try await world.signIn(origin: .sas)]
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let habilitation = world.habilitation
        func checkAll() async throws -> [HabilitationDecision] {
            let futures = try await loop.submit { (tokens + tokens + tokens).map { habilitation.check(sessionToken: $0, on: loop) } }.get()
            var decisions: [HabilitationDecision] = []
            for future in futures { decisions.append(try await future.get().check.decision) }
            return decisions
        }
        #expect(try await checkAll().allSatisfy { $0 == .granted })
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, World.record(active: false), ifMatch: nil),
                                                  context: CallContext(actor: world.actor))
        #expect(try await checkAll().allSatisfy { $0 == .denied([.deactivatedBySAS]) })
        // And from another thread than the loop's: the check goes to the loop first.
        #expect(try await habilitation.check(sessionToken: tokens[0], on: loop).get().check.decision == .denied([.deactivatedBySAS]))
    }

    /// Holds a lock every check's statement needs (PostgreSQL), until ``release()``: the
    /// statements sent meanwhile wait inside PostgreSQL.
    final class CheckBlocker: Sendable {
        let database: AccountDatabase
        private let gate = DispatchSemaphore(value: 0)
        private let holder: Task<Void, any Error>

        init(_ database: AccountDatabase) async throws {
            self.database = database
            let gate = self.gate
            holder = Task {
                try await database.write { db in
                    try db.execute(sql: "LOCK TABLE cgu_acceptance IN ACCESS EXCLUSIVE MODE")
                    // (The engine holds a write back until the next statement: this one sends it.)
                    _ = try Int.fetchOne(db, sql: "SELECT 1")
                    gate.wait()
                }
            }
            var locked = false
            for _ in 0..<1000 where !locked {
                locked = try await database.read { db in
                    try Bool.fetchOne(db, sql: """
                        SELECT EXISTS (SELECT 1 FROM pg_locks WHERE relation = 'cgu_acceptance'::regclass AND mode = 'AccessExclusiveLock' AND granted)
                        """) ?? false
                }
                if !locked { try await Task.sleep(for: .milliseconds(10)) }
            }
            if !locked { gate.signal() }
            try #require(locked)
        }

        /// The backends of this test's database whose check statement waits for the lock
        /// (other tests run beside it on the same server), once there are `count`.
        func waiting(count: Int) async throws -> [Int32] {
            var backends: [Int32] = []
            for _ in 0..<1000 where backends.count < count {
                backends = try await waitingNow()
                if backends.count < count { try await Task.sleep(for: .milliseconds(10)) }
            }
            try #require(backends.count == count)
            return backends
        }

        /// Those backends now.
        func waitingNow() async throws -> [Int32] {
            try await database.read { db in
                try Int.fetchAll(db, sql: """
                    SELECT pid FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%id_hash IN%'
                    """)
            }.map { Int32($0) }
        }

        func release() async throws {
            gate.signal()
            try await holder.value
        }
    }

    typealias Check = EventLoopFuture<(check: HabilitationCheck, facts: HabilitationService.SessionFacts?)>

    /// One SAS session on PostgreSQL with ``FactsBatcher/maximumOut`` (4) statements out, each
    /// sent once the one before had been out for 250 ms, all waiting for the lock of
    /// ``blocker``: no more statements are sent until one answers.
    struct LoopWithStatementsHeld {
        let world: World
        let token: String
        let loop: any EventLoop
        let blocker: CheckBlocker
        let out: [Check]

        init() async throws {
            world = try await World(poolSize: 8)
            token = try await world.signIn(origin: .sas)
            loop = MultiThreadedEventLoopGroup.singleton.next()
            blocker = try await CheckBlocker(world.database)
            var out: [Check] = []
            let (habilitation, token, loop) = (world.habilitation, token, loop)
            for count in 1...4 {
                out.append(try await loop.submit { habilitation.check(sessionToken: token, on: loop) }.get())
                _ = try await blocker.waiting(count: count)
                try await Task.sleep(for: .milliseconds(300))
            }
            self.out = out
        }

        /// A check of the session, started on the loop.
        func check() async throws -> Check {
            let (habilitation, token, loop) = (world.habilitation, token, loop)
            return try await loop.submit { habilitation.check(sessionToken: token, on: loop) }.get()
        }
    }

    /// A statement that stalls in PostgreSQL holds back the checks of its own batch only: a
    /// check that arrives later is sent beside it once it has been out for
    /// ``FactsBatcher/stallAfter`` (its backend is stopped with SIGSTOP while it waits for the
    /// lock, so it cannot answer until it is resumed).
    @Test(.enabled(if: TestStore.kind == .postgres, "PostgreSQL only")) func aStalledStatementHoldsBackOnlyItsOwnChecks() async throws {
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let habilitation = world.habilitation
        let blocker = try await CheckBlocker(world.database)
        let first = try await loop.submit { habilitation.check(sessionToken: token, on: loop) }.get()
        let stalled = try #require(try await blocker.waiting(count: 1).first)
        #expect(kill(stalled, SIGSTOP) == 0)
        defer { kill(stalled, SIGCONT) }
        // Resumed in any case after 8 s, so that a failure of this test cannot hang the suite.
        let safety = loop.scheduleTask(in: .seconds(8)) { kill(stalled, SIGCONT) }
        defer { safety.cancel() }
        try await blocker.release()
        // The lock is gone, but the first statement's backend is stopped: it cannot answer.
        let second = try await loop.submit { habilitation.check(sessionToken: token, on: loop) }.get()
        let started = ContinuousClock.now
        #expect(try await second.get().check.decision == .granted)
        #expect(ContinuousClock.now - started < .seconds(5), "the second check waited for the stalled statement")
        kill(stalled, SIGCONT)
        #expect(try await first.get().check.decision == .granted)
    }

    /// While PostgreSQL does not answer, checks do not pile up: at most
    /// ``FactsBatcher/maximumOut`` statements are out, a check waits at most
    /// ``FactsBatcher/queueTimeout`` to be sent, and when a statement fails, the checks then
    /// waiting fail with it (503) instead of being sent one batch after another.
    @Test(.enabled(if: TestStore.kind == .postgres, "PostgreSQL only")) func checksWaitingForAnUnansweringDatabaseFailInsteadOfPilingUp() async throws {
        let held = try await LoopWithStatementsHeld()
        let (world, blocker, out) = (held.world, held.blocker, held.out)
        func check() async throws -> Check { try await held.check() }
        // A fifth is not sent: it fails once it has waited 5 s.
        let queued = try await check()
        let queuedAt = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(600))
        #expect(try await blocker.waiting(count: 4).count == 4, "a fifth statement was sent")
        await #expect(throws: StorageError.self) { try await queued.get() }
        #expect(ContinuousClock.now - queuedAt >= .seconds(4))
        #expect(ContinuousClock.now - queuedAt < .seconds(20), "the queued check waited for the statements' own deadline")
        // Two more wait; one of the statements out fails (its connection is ended): they fail
        // with it, at once, though the others are still out.
        let waitingChecks = [try await check(), try await check()]
        let waitedAt = ContinuousClock.now
        let backends = try await blocker.waiting(count: 4)
        try await world.database.write { db in
            _ = try Bool.fetchOne(db, sql: "SELECT pg_terminate_backend(CAST(? AS integer))", arguments: [Int(backends[0])])
        }
        for waiting in waitingChecks {
            await #expect(throws: (any Error).self) { try await waiting.get() }
        }
        #expect(ContinuousClock.now - waitedAt < .seconds(4), "the waiting checks waited for their own time-out")
        try await blocker.release()
        // The statements that were not ended are answered once the lock is gone.
        var answered = 0
        for future in out {
            if let result = try? await future.get() {
                #expect(result.check.decision == .granted)
                answered += 1
            }
        }
        #expect(answered == 3)
    }

    /// At most 4,096 checks wait while the statements are out: the next one fails at
    /// once (503) instead of adding to a queue an outage would let grow without bound. Once the
    /// statements answer, the waiting checks are answered and new checks are taken again.
    @Test(.enabled(if: TestStore.kind == .postgres, "PostgreSQL only")) func checksBeyondTheCapFailAtOnce() async throws {
        let held = try await LoopWithStatementsHeld()
        let (token, loop, blocker, out, habilitation) = (held.token, held.loop, held.blocker, held.out, held.world.habilitation)
        let cap = 4096
        let (queued, beyond) = try await loop.submit { () -> ([Check], Check) in
            let queued = (0..<cap).map { _ in habilitation.check(sessionToken: token, on: loop) }
            return (queued, habilitation.check(sessionToken: token, on: loop))
        }.get()
        let refusedAt = ContinuousClock.now
        await #expect(throws: StorageError.unavailable("too many forward-auth checks waiting for the database")) { try await beyond.get() }
        #expect(ContinuousClock.now - refusedAt < .seconds(2), "the check beyond the cap waited")
        try await blocker.release()
        var granted = 0
        for check in out + queued {
            if let result = try? await check.get(), result.check.decision == .granted { granted += 1 }
        }
        // Every waiting check was answered (none waited the 5 s the queue allows).
        #expect(granted == cap + 4)
        #expect(try await habilitation.check(sessionToken: token, on: loop).get().check.decision == .granted)
    }

    /// Two event loops of their own, for the tests where checks come from several loops.
    static func twoLoops() -> (MultiThreadedEventLoopGroup, any EventLoop, any EventLoop) {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var loops = group.makeIterator()
        return (group, loops.next()!, loops.next()!)
    }

    /// The service of `world` with statements that never count as stalled during the test, so
    /// that what is sent beside a statement out is only what the batching decides.
    static func patientService(_ world: World) -> HabilitationService {
        HabilitationService(database: world.database, sessions: world.sessions, cguVersion: "v1", clock: { world.clock.now },
                            batchStallAfter: .seconds(600))
    }

    /// On PostgreSQL, one batcher for the process; on SQLite, one per loop, so that each loop
    /// reads on its own connection, answered inside the call.
    @Test func oneBatcherForTheProcessOnPostgreSQLOnePerLoopOnSQLite() async throws {
        let world = try await World()
        let habilitation = world.habilitation
        let (group, first, second) = Self.twoLoops()
        defer { group.shutdownGracefully { _ in } }
        let (ofFirst, ofSecond) = (habilitation.batcher(for: first), habilitation.batcher(for: second))
        #expect(ofFirst === habilitation.batcher(for: first))
        #expect(ofFirst.eventLoop === first)
        switch TestStore.kind {
        case .postgres:
            #expect(ofSecond === ofFirst)
        case .sqlite:
            #expect(ofSecond !== ofFirst)
            #expect(ofSecond.eventLoop === second)
        }
        // Either way, a check made on a loop is answered on it.
        let token = try await world.signIn(origin: .sas)
        for loop in [first, second] {
            let check = try await loop.submit { habilitation.check(sessionToken: token, on: loop) }.get()
            #expect(check.eventLoop === loop)
            #expect(try await check.get().check.decision == .granted)
        }
    }

    /// Checks made on another loop wait for the statement out like those of its own loop, go
    /// in the next statement with them, and are answered on the loop they were made on.
    @Test(.enabled(if: TestStore.kind == .postgres, "PostgreSQL only")) func checksFromEveryLoopShareTheStatementOut() async throws {
        let world = try await World()
        let habilitation = Self.patientService(world)
        let tokens = [try await world.signIn(origin: .sas), try await world.signIn(origin: nil), FactsMemoTests.shaped("not-a-session")]
        var expected: [String: Answer] = [:]
        for token in tokens { expected[token] = Answer(try await habilitation.check(sessionToken: token)) }
        let (group, first, second) = Self.twoLoops()
        defer { group.shutdownGracefully { _ in } }
        let blocker = try await CheckBlocker(world.database)
        let out = try await first.submit { habilitation.check(sessionToken: tokens[0], on: first) }.get()
        _ = try await blocker.waiting(count: 1)
        let fromSecond = try await second.submit { tokens.map { token in (token, habilitation.check(sessionToken: token, on: second)) } }.get()
        let fromFirst = try await first.submit { tokens.map { token in (token, habilitation.check(sessionToken: token, on: first)) } }.get()
        // Counted on the batcher's loop, after the second loop's checks reached it (they were
        // handed to that loop before `fromSecond` returned): still one statement sent, and
        // every check of both loops waiting for the next.
        let batcher = habilitation.batcher(for: second)
        #expect(batcher === habilitation.batcher(for: first))
        let (sent, waiting) = try await batcher.eventLoop.submit { (batcher.statementsSent, batcher.checksWaiting) }.get()
        #expect(sent == 1, "a statement was sent beside the one out")
        #expect(waiting == 2 * tokens.count)
        #expect(try await blocker.waitingNow().count == 1)
        try await blocker.release()
        #expect(try await out.get().check.decision == .granted)
        for (loop, checks) in [(second, fromSecond), (first, fromFirst)] {
            for (token, check) in checks {
                #expect(check.eventLoop === loop)
                #expect(Answer(try await check.get().check) == expected[token])
            }
        }
    }

    /// With a statement out, a full statement's worth of distinct sessions waiting goes out
    /// beside it at once; fewer wait for it.
    @Test(.enabled(if: TestStore.kind == .postgres, "PostgreSQL only")) func aFullBatchOfSessionsGoesBesideTheStatementOut() async throws {
        let world = try await World()
        let habilitation = Self.patientService(world)
        let size = HabilitationService.FactsBatchQuery.size
        // SAS sessions, and a direct one last, so that an answer given to the wrong session
        // shows.
        var tokens: [String] = []
        for index in 0..<size { tokens.append(try await world.signIn(origin: index == size - 1 ? nil : .sas)) }
        var expected: [String: Answer] = [:]
        for token in tokens { expected[token] = Answer(try await habilitation.check(sessionToken: token)) }
        #expect(expected[tokens[0]]?.decision == .granted && expected[tokens[size - 1]]?.decision != .granted)
        let (group, loop, _) = Self.twoLoops()
        defer { group.shutdownGracefully { _ in } }
        let blocker = try await CheckBlocker(world.database)
        let out = try await loop.submit { habilitation.check(sessionToken: tokens[0], on: loop) }.get()
        _ = try await blocker.waiting(count: 1)
        let batcher = habilitation.batcher(for: loop)
        // One session short of a statement's worth (the first twice): they wait.
        let short = try await loop.submit { tokens.dropLast().map { (token: $0, check: habilitation.check(sessionToken: $0, on: loop)) } }.get()
        var counted = try await loop.submit { (batcher.statementsSent, batcher.checksWaiting) }.get()
        #expect(counted.0 == 1, "fewer sessions than a statement's worth were sent beside the one out")
        #expect(counted.1 == size - 1)
        // One more session: the waiting checks go out together, beside the statement out.
        let last = try await loop.submit { habilitation.check(sessionToken: tokens[size - 1], on: loop) }.get()
        counted = try await loop.submit { (batcher.statementsSent, batcher.checksWaiting) }.get()
        #expect(counted.0 == 2 && counted.1 == 0, "a full statement's worth of sessions waited for the one out")
        _ = try await blocker.waiting(count: 2)
        try await blocker.release()
        #expect(Answer(try await out.get().check) == expected[tokens[0]])
        for (token, check) in short + [(tokens[size - 1], last)] {
            #expect(Answer(try await check.get().check) == expected[token])
        }
    }
}
