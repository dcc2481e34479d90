import Accounts
import Foundation
@testable import Habilitation
import NIOCore
import NIOPosix
import Storage
import StorageTesting
import Synchronization
import Testing

/// Forward-auth's check on SQLite answers a session it read a moment ago from memory while the
/// database's commit stamp says nothing was committed since (``FactsMemo``). These tests hold it
/// to the promise that makes that safe: every answer is the one a fresh read would give. Each
/// withdrawal, a commit from another process, and time alone all show on the very next check,
/// and the memo is really used in between (its hit count moves), so the tests cannot pass by
/// never using it. On PostgreSQL there is no stamp: every check reads.
@Suite("Forward-auth's memo of session facts")
struct FactsMemoTests {
    struct Answer: Equatable {
        var decision: HabilitationDecision
        var accountID: String?
        var hits: Int
    }

    /// A made-up session id with a real one's shape (43 base64url characters): one of any
    /// other shape is refused before the memo and the database are asked.
    static func shaped(_ label: String) -> String {
        String((label + String(repeating: "A", count: 43)).prefix(43))
    }

    static let unknownSession = shaped("no-such-session")

    /// ``HabilitationService/checkNow(sessionToken:on:)`` on a loop, as the listener calls it.
    static func check(_ habilitation: HabilitationService, _ token: String, on loop: any EventLoop) async throws -> Answer {
        for _ in 0..<50 {
            let answer: Answer? = try await loop.submit {
                guard let result = try habilitation.checkNow(sessionToken: token, on: loop) else { return nil }
                return Answer(decision: result.check.decision, accountID: result.check.account?.accountID,
                              hits: habilitation.factsMemo(for: loop).hits)
            }.get()
            if let answer { return answer }
            // The file was locked for a moment (a checkpoint): the listener would read on the pool.
            try await Task.sleep(for: .milliseconds(20))
        }
        throw StorageError.unavailable("the loop's SQLite connection stayed locked")
    }

    /// Checks `token` until an answer comes from memory: the loop's connection reads first
    /// (SQLite maps its index then), the memo takes the stamp at the next check, and keeps
    /// the answer at the one after. Records an issue if that never happens.
    static func held(_ habilitation: HabilitationService, _ token: String, on loop: any EventLoop) async throws -> Answer {
        var previous = try await check(habilitation, token, on: loop)
        for _ in 0..<4 {
            let next = try await check(habilitation, token, on: loop)
            if next.hits == previous.hits + 1 { return next }
            previous = next
        }
        Issue.record("no check of \(token.prefix(8))… was answered from memory")
        return previous
    }

    /// The tests that use it run on SQLite only (their trait); another engine is a failure.
    static func sqliteWorld() async throws -> World? {
        let world = try await World()
        guard world.database.engine.kind == .sqlite else {
            Issue.record("the memo's tests need a SQLite world")
            return nil
        }
        return world
    }

    /// A repeated check is answered from the memo; any commit, even one about something else,
    /// sends the next check to the database, and the one after is answered from memory again.
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func aRepeatedCheckIsAnsweredFromMemoryUntilAnythingIsCommitted() async throws {
        guard let world = try await Self.sqliteWorld() else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let token = try await world.signIn(origin: .sas)
        let first = try await Self.check(world.habilitation, token, on: loop)
        #expect(first.decision == .granted)
        #expect(first.accountID == world.accountID)
        let second = try await Self.held(world.habilitation, token, on: loop)
        #expect(second.decision == .granted && second.accountID == world.accountID)

        // An unrelated commit: another regulator created.
        _ = try await world.provisioner.provision(.create(RegulatorRecord(
            sasTechnicalID: SASTechnicalID("0d5d7b8e-4a55-4bd0-9a43-0f8a2a7e2b11"), active: true, familyName: "DURAND", givenName: "Alice",
            email: EmailAddress("alice.durand@test.com")!)), context: CallContext(actor: world.actor))
        let afterCommit = try await Self.check(world.habilitation, token, on: loop)
        #expect(afterCommit.decision == .granted)
        #expect(afterCommit.hits == second.hits, "a check after a commit was answered from memory")
        let again = try await Self.check(world.habilitation, token, on: loop)
        #expect(again.hits == afterCommit.hits + 1)

        // A token no session has: refused from memory too, the same way.
        let unknown = try await Self.check(world.habilitation, Self.unknownSession, on: loop)
        #expect(unknown.decision == .denied([.noLiveSession]))
        let unknownAgain = try await Self.held(world.habilitation, Self.unknownSession, on: loop)
        #expect(unknownAgain.decision == .denied([.noLiveSession]))
    }

    /// Each way a habilitation ends applies on the very next check of a session the memo holds.
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores"), arguments: ["sas-deactivation", "vendor-suspension", "session-revocation"])
    func aWithdrawalAppliesOnTheNextCheck(_ withdrawal: String) async throws {
        guard let world = try await Self.sqliteWorld() else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let token = try await world.signIn(origin: .sas)
        let held = try await Self.held(world.habilitation, token, on: loop)
        #expect(held.decision == .granted)
        let expected: HabilitationDecision
        switch withdrawal {
        case "sas-deactivation":
            _ = try await world.provisioner.provision(.conditionalUpdate(World.national, World.record(active: false), ifMatch: nil),
                                                      context: CallContext(actor: world.actor))
            expected = .denied([.deactivatedBySAS])
        case "vendor-suspension":
            _ = try await VendorAdministration(database: world.database, clock: { world.clock.now })
                .suspend(accountID: world.accountID, reason: "test", actor: AuditActor(subject: "admin"))
            expected = .denied([.suspendedByVendor])
        default:
            _ = try await world.sessions.revoke(token, reason: .signOut)
            expected = .denied([.noLiveSession])
        }
        let after = try await Self.check(world.habilitation, token, on: loop)
        #expect(after.decision == expected)
        #expect(after.hits == held.hits)
    }

    /// A commit by another process (an operator's tool on the same file) is seen as surely as
    /// one of ours: the stamp lives in the shared `-shm` file, not in this process.
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func aCommitByAnotherProcessAppliesOnTheNextCheck() async throws {
        guard let world = try await Self.sqliteWorld(), let engine = world.database.engine as? SQLiteEngine else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let token = try await world.signIn(origin: .sas)
        let held = try await Self.held(world.habilitation, token, on: loop)
        #expect(held.decision == .granted)

        #expect(try TestStore.commitFromAnotherProcess(path: engine.path, """
            INSERT INTO vendor_suspension (account_id, suspended_at, suspended_by, reason) VALUES ('\(world.accountID)', 1, 'other-process', 'test')
            """) == 0)

        let after = try await Self.check(world.habilitation, token, on: loop)
        #expect(after.decision == .denied([.suspendedByVendor]))
        #expect(after.hits == held.hits)
    }

    /// The stamp a read is kept under is the one read *before* the read: a commit landing
    /// between the read and the moment its answer is kept must make the next check read again.
    /// (Kept under a stamp read after the read, the answer from before the commit would be used
    /// again, and a suspension committed before the next request would not apply to it.)
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func anAnswerIsKeptUnderTheStampReadBeforeItsRead() async throws {
        guard let world = try await Self.sqliteWorld(), let sqlite = world.database.engine as? SQLiteEngine else { return }
        let engine = CommitAfterReadEngine(sqlite, commit: """
            INSERT INTO vendor_suspension (account_id, suspended_at, suspended_by, reason) VALUES ('\(world.accountID)', 1, 'test', 'between')
            """)
        let habilitation = HabilitationService(database: AccountDatabase(engine: engine), sessions: world.sessions, cguVersion: "v1",
                                               clock: { world.clock.now })
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let token = try await world.signIn(origin: .sas)
        let held = try await Self.held(habilitation, token, on: loop)
        #expect(held.decision == .granted)
        // A commit, so that the next check reads; the suspension lands right after that read.
        try await world.sessions.revoke(try await world.signIn(origin: .sas), reason: .signOut)
        engine.arm()
        let raced = try await Self.check(habilitation, token, on: loop)
        #expect(raced.decision == .granted, "read before the suspension committed")
        #expect(engine.committed)
        let next = try await Self.check(habilitation, token, on: loop)
        #expect(next.decision == .denied([.suspendedByVendor]))
        #expect(next.hits == raced.hits)
    }

    /// Time ends a session without any commit: the idle timeout and the absolute one apply to
    /// a session the memo holds exactly when a read would apply them, to the millisecond.
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func timeEndsAHeldSessionWithoutACommit() async throws {
        guard let world = try await Self.sqliteWorld() else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        var configuration = SessionConfiguration()
        configuration.idleTimeout = 600
        configuration.absoluteTimeout = 900
        let sessions = SessionStore(database: world.database, serverKey: TestKeys.server, configuration: configuration, clock: { world.clock.now })
        let habilitation = HabilitationService(database: world.database, sessions: sessions, cguVersion: "v1", clock: { world.clock.now })
        func signIn() async throws -> String {
            let intent = sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
            let flow = try await sessions.startFlow(accountID: world.accountID, intentToken: intent)
            try await sessions.markSecondFactorDone(flowToken: flow)
            return try #require(try await sessions.completeFlow(flowToken: flow, address: nil, userAgent: "test", actor: world.actor)).token
        }

        // Idle: granted up to the last millisecond before the timeout, from memory; refused at it.
        let idle = try await signIn()
        try await Self.expectGrantedFromMemoryUntil(600, habilitation, idle, clock: world.clock, on: loop)

        // Absolute: activity recorded at 5 and 10 minutes keeps it from idling; it ends at 15.
        let absolute = try await signIn()
        for _ in 0..<2 {
            world.clock.advance(300)
            let answer = try await loop.submit { try habilitation.checkNow(sessionToken: absolute, on: loop) }.get()
            try await habilitation.recordActivity(try #require(answer?.facts))
        }
        try await Self.expectGrantedFromMemoryUntil(300, habilitation, absolute, clock: world.clock, on: loop)
    }

    /// The session held in memory now is granted from memory a millisecond before `seconds`
    /// from now, and refused by a read at `seconds`.
    static func expectGrantedFromMemoryUntil(_ seconds: TimeInterval, _ habilitation: HabilitationService, _ token: String,
                                            clock: ManualClock, on loop: any EventLoop) async throws {
        let held = try await Self.held(habilitation, token, on: loop)
        clock.advance(seconds - 0.001)
        let lastMoment = try await Self.check(habilitation, token, on: loop)
        #expect(lastMoment.decision == .granted)
        #expect(lastMoment.hits == held.hits + 1)
        clock.advance(0.001)
        let ended = try await Self.check(habilitation, token, on: loop)
        #expect(ended.decision == .denied([.noLiveSession]))
        #expect(ended.hits == lastMoment.hits, "an ended session was answered from memory")
    }

    /// A refusal kept in memory is not used once the clock has gone back before it was read
    /// (a session may be live at that earlier moment).
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func aClockGoingBackReadsAgain() async throws {
        guard let world = try await Self.sqliteWorld() else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let held = try await Self.held(world.habilitation, Self.unknownSession, on: loop)
        world.clock.advance(-1)
        let back = try await Self.check(world.habilitation, Self.unknownSession, on: loop)
        #expect(back.decision == .denied([.noLiveSession]))
        #expect(back.hits == held.hits)
    }

    /// Made-up cookies cannot grow it without bound.
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func theMemoIsBounded() async throws {
        guard let world = try await Self.sqliteWorld() else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let habilitation = world.habilitation
        _ = try await Self.check(habilitation, Self.shaped("first"), on: loop)
        let largest = try await loop.submit {
            var largest = 0
            for index in 0..<(FactsMemo.capacity + 100) {
                _ = try habilitation.checkNow(sessionToken: Self.shaped("made-up-\(index)"), on: loop)
                largest = max(largest, habilitation.factsMemo(for: loop).count)
            }
            return largest
        }.get()
        #expect(largest == FactsMemo.capacity)
    }

    /// PostgreSQL has no commit stamp: nothing is kept, every check is a read.
    @Test(.enabled(if: TestStore.kind == .postgres, "PostgreSQL only")) func postgreSQLKeepsNothing() async throws {
        let world = try await World()
        try #require(world.database.engine.kind == .postgres)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let token = try await world.signIn(origin: .sas)
        let engine = world.database.engine
        _ = try await world.habilitation.check(sessionToken: token, on: loop).get()
        #expect(try await loop.submit { engine.loopCommitStamp(on: loop) }.get() == nil)
        #expect(world.habilitation.forwardAuthCounts() == ForwardAuthCounts(memo: 0, database: 1, statements: 1))
    }

    /// A SQLite database that gives no stamp (not in WAL mode, or its index not mapped) keeps
    /// nothing either: every check reads, and is counted as a read.
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func withoutAStampEveryCheckReads() async throws {
        guard let world = try await Self.sqliteWorld(), case let sqlite as SQLiteEngine = world.database.engine else { return }
        let engine = CommitAfterReadEngine(sqlite, commit: "", stamps: false)
        let habilitation = HabilitationService(database: AccountDatabase(engine: engine), sessions: world.sessions, cguVersion: "v1",
                                               clock: { world.clock.now })
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let token = try await world.signIn(origin: .sas)
        for _ in 0..<4 {
            let answer = try await Self.check(habilitation, token, on: loop)
            #expect(answer.decision == .granted && answer.hits == 0)
        }
        #expect(habilitation.forwardAuthCounts() == ForwardAuthCounts(memo: 0, database: 4, statements: 4))
        #expect(try await loop.submit { habilitation.factsMemo(for: loop).count }.get() == 0, "nothing kept")
        try await world.sessions.revoke(token, reason: .signOut)
        #expect(try await Self.check(habilitation, token, on: loop).decision == .denied([.noLiveSession]))
    }

    /// The counts say what answered each check: the memo, or a read (one statement each on SQLite).
    @Test(.enabled(if: TestStore.kind == .sqlite, "the memo serves SQLite stores")) func everyCheckIsCountedOnceByWhatAnsweredIt() async throws {
        guard let world = try await Self.sqliteWorld() else { return }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let token = try await world.signIn(origin: .sas)
        let start = world.habilitation.forwardAuthCounts()
        var checks = 0
        var last = try await Self.check(world.habilitation, token, on: loop)
        checks += 1
        for _ in 0..<5 {
            last = try await Self.check(world.habilitation, token, on: loop)
            checks += 1
        }
        let counts = world.habilitation.forwardAuthCounts()
        #expect(counts.memo - start.memo == last.hits && last.hits >= 1, "\(start) → \(counts)")
        #expect(counts.memo + counts.database - start.memo - start.database == checks)
        #expect(counts.statements - start.statements == counts.database - start.database)
    }
}

/// The SQLite engine, except that once armed, its next loop read is followed by a commit made
/// by another process before the read's answer is returned: a commit racing a check. Without
/// `stamps`, it gives no commit stamp.
final class CommitAfterReadEngine: ForwardingStorageEngine, Sendable {
    let inner: SQLiteEngine
    let commit: String
    /// false: the engine gives no commit stamp, as a database not in WAL mode would not.
    let stamps: Bool
    private let state = Mutex<(armed: Bool, committed: Bool)>((false, false))

    init(_ inner: SQLiteEngine, commit: String, stamps: Bool = true) {
        self.inner = inner
        self.commit = commit
        self.stamps = stamps
    }

    var forwardedTo: any StorageEngine { inner }
    func arm() { state.withLock { $0.armed = true } }
    var committed: Bool { state.withLock { $0.committed } }

    func loopReadNow(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) throws -> [SQLRow]? {
        let rows = try inner.loopReadNow(sql: sql, arguments: arguments, on: eventLoop)
        guard state.withLock({ state in defer { state.armed = false }; return state.armed }) else { return rows }
        // Blocking the loop is what a test may do: the commit must land before this returns.
        let status = try TestStore.commitFromAnotherProcess(path: inner.path, commit)
        state.withLock { $0.committed = status == 0 }
        return rows
    }
    func loopCommitStamp(on eventLoop: any EventLoop) -> CommitStamp? { stamps ? inner.loopCommitStamp(on: eventLoop) : nil }
}
