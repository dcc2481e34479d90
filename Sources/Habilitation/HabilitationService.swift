import Accounts
import Foundation
import NIOCore
import Storage
import Synchronization

/// Who the session belongs to, as pages and identity headers show it.
public struct AccountSummary: Sendable, Equatable {
    public var accountID: String
    public var givenName: String
    public var familyName: String
    public var email: String
    /// Current IDNPS (national id), if the account has one.
    public var nationalID: String?
    /// Current SAS technical id, if the account has one.
    public var sasTechnicalID: String?
}

/// The answer for one request, with the facts it was computed from (for pages and logs).
public struct HabilitationCheck: Sendable, Equatable {
    public var session: WebSession?
    public var account: AccountSummary?
    public var pendingActions: [RequiredAction]
    public var decision: HabilitationDecision
}

/// Evaluates ``HabilitationPolicy`` against the database for a session token: one indexed
/// query reads every fact at the moment of the request, so a withdrawal (SAS `active:false`,
/// vendor suspension, session revocation) applies on the next request. (Forward-auth on SQLite
/// may answer from the facts it read a moment ago, only when the database proves nothing was
/// committed since: ``FactsMemo``; the answer is the query's.)
public final class HabilitationService: Sendable {
    public let database: AccountDatabase
    public let sessions: SessionStore
    /// The CGU version in force; an acceptance of another version does not count.
    public let cguVersion: String
    private let clock: @Sendable () -> Date
    /// The forward-auth checks, batched (``FactsBatcher``): on PostgreSQL one for every loop,
    /// on the loop of the first check; on SQLite one per loop (see ``batcher(for:)``).
    private let batchers = Mutex<Batchers>(Batchers())
    /// One ``FactsMemo`` per event loop (SQLite's forward-auth checks).
    private let memos = Mutex<[ObjectIdentifier: FactsMemo]>([:])
    private struct Batchers {
        var shared: FactsBatcher?
        var perLoop: [ObjectIdentifier: FactsBatcher] = [:]
    }
    /// How long a statement of the batcher is out before another may be sent beside it
    /// (``FactsBatcher/stallAfter``; tests lengthen it to watch the batching).
    let batchStallAfter: TimeAmount

    public convenience init(database: AccountDatabase, sessions: SessionStore, cguVersion: String, clock: @escaping @Sendable () -> Date = Date.init) {
        self.init(database: database, sessions: sessions, cguVersion: cguVersion, clock: clock, batchStallAfter: FactsBatcher.stallAfter)
    }

    init(database: AccountDatabase, sessions: SessionStore, cguVersion: String, clock: @escaping @Sendable () -> Date, batchStallAfter: TimeAmount) {
        self.database = database
        self.sessions = sessions
        self.cguVersion = cguVersion
        self.clock = clock
        self.batchStallAfter = batchStallAfter
    }

    /// What one read of the database says about a session.
    public struct SessionFacts: Sendable {
        var session: WebSession
        var account: AccountSummary
        var active: Bool
        var suspended: Bool
        var resetRequired: Bool
        var hasTOTP: Bool
        var hasCGU: Bool
        /// The stored form of the session id, to record activity.
        public var hash: String
        /// The session's two deadlines as stored (epoch milliseconds): the facts stand while
        /// `at < absoluteExpiresAt` and `lastSeenAt > at - idle timeout` (``FactsMemo``).
        var absoluteExpiresAt: Int64
        var lastSeenMilliseconds: Int64
    }

    public func check(sessionToken: String?) async throws -> HabilitationCheck {
        guard let sessionToken, SecretToken.isWellFormed(sessionToken) else { return Self.noSession }
        let at = now
        let hash = SecretToken.hash(sessionToken)
        guard let facts = try await database.pointRead({ [self] db in try self.facts(hash: hash, at: at, in: db) }) else { return Self.noSession }
        try await recordActivity(facts, at: at)
        return evaluate(facts)
    }

    static let noSession = HabilitationCheck(session: nil, account: nil, pendingActions: [], decision: .denied([.noLiveSession]))

    /// The check answered on `eventLoop`, for the forward-auth listener: one query the
    /// engine runs as close to the loop as it can (SQLite: on the loop's own read connection;
    /// PostgreSQL: sent from the loop). Everything but recording activity, which the caller
    /// schedules when due.
    ///
    /// The checks that arrive, on any loop, while a statement is out are read together by the
    /// next one (``FactsBatcher``): under load, one statement answers several requests, which
    /// is what PostgreSQL's round trip per request cannot afford. Each check is still a fresh
    /// read: its statement is sent after the request arrived. The answer comes back on
    /// `eventLoop`.
    public func check(sessionToken: String?, on eventLoop: any EventLoop) -> EventLoopFuture<(check: HabilitationCheck, facts: SessionFacts?)> {
        guard let sessionToken, SecretToken.isWellFormed(sessionToken) else { return eventLoop.makeSucceededFuture((Self.noSession, nil)) }
        let hash = SecretToken.hash(sessionToken)
        let batcher = batcher(for: eventLoop)
        let facts = batcher.eventLoop.inEventLoop ? batcher.facts(hash: hash) : batcher.eventLoop.flatSubmit { batcher.facts(hash: hash) }
        return facts.hop(to: eventLoop).map { [self] facts in
            guard let facts else { return (Self.noSession, nil) }
            return (evaluate(facts), facts)
        }
    }

    /// The batcher for a check made on `eventLoop`.
    ///
    /// On PostgreSQL, one for every loop, created on the loop of the first check: measured, a
    /// statement out per loop sent batches of 1.6 checks; one out for the process, 2.4 to 3.0,
    /// and 25 % more checks a second (`docs/performance.md`, *Eighth session*).
    ///
    /// On SQLite, one per loop, as before: each loop reads on a connection of its own and the
    /// answer comes back inside the call (nothing waits, so nothing batches), and one batcher
    /// for the process would put every loop's reads on one loop's connection, two hops away.
    func batcher(for eventLoop: any EventLoop) -> FactsBatcher {
        let shared = database.engine.kind == .postgres
        return batchers.withLock { batchers in
            if shared, let batcher = batchers.shared { return batcher }
            if !shared, let batcher = batchers.perLoop[ObjectIdentifier(eventLoop)] { return batcher }
            let created = FactsBatcher(eventLoop: eventLoop, service: self, stallAfter: batchStallAfter)
            if shared { batchers.shared = created } else { batchers.perLoop[ObjectIdentifier(eventLoop)] = created }
            return created
        }
    }

    /// The arguments of ``FactsBatchQuery`` for up to ``FactsBatchQuery/size`` session hashes;
    /// unused places hold an empty string, which no stored hash is.
    func factsBatchArguments(hashes: [String], at: Date) -> [SQLValue] {
        precondition(hashes.count <= FactsBatchQuery.size)
        var arguments: [SQLValue] = [.text(cguVersion)]
        arguments.reserveCapacity(FactsBatchQuery.size + 3)
        for index in 0..<FactsBatchQuery.size { arguments.append(.text(index < hashes.count ? hashes[index] : "")) }
        arguments.append(at.epochMilliseconds.sqlValue)
        arguments.append(at.addingTimeInterval(-sessions.configuration.idleTimeout).epochMilliseconds.sqlValue)
        return arguments
    }

    /// The current time, to the millisecond, as the checks read it.
    var now: Date { Date(epochMilliseconds: clock().epochMilliseconds) }

    /// ``check(sessionToken:on:)`` answered before returning when the engine answers on the
    /// loop itself (SQLite); nil when the answer comes later (PostgreSQL).
    ///
    /// On SQLite the facts last read for the session on this loop are used again when the
    /// database's ``CommitStamp``, read now, says nothing was committed since they were read
    /// (``FactsMemo``): the answer is the one the query would give, without the query and the
    /// file locks around it (measured at a fifth of the forward-auth listener's CPU). Any
    /// commit (by this process or another, such as the `admin` tool) sends the next check to
    /// the database.
    public func checkNow(sessionToken: String?, on eventLoop: any EventLoop) throws -> (check: HabilitationCheck, facts: SessionFacts?)? {
        guard let sessionToken, SecretToken.isWellFormed(sessionToken) else { return (Self.noSession, nil) }
        let at = now
        let hash = SecretToken.hash(sessionToken)
        let stamp = database.engine.loopCommitStamp(on: eventLoop)
        var memo: FactsMemo?
        if let stamp {
            let loopMemo = factsMemo(for: eventLoop)
            memo = loopMemo
            switch loopMemo.lookup(hash: hash, stamp: stamp, at: at, idleTimeout: sessions.configuration.idleTimeout) {
            case .live(let facts): return (evaluate(facts), facts)
            case .noSession: return (Self.noSession, nil)
            case .read: break
            }
        }
        let arguments = factsArguments(hash: hash, at: at).map { $0?.sqlValue ?? .null }
        guard let rows = try database.engine.loopReadNow(FactsQuery.self, arguments: arguments,
                                                         on: eventLoop) else { return nil }
        // The loop's memo holds its counters, used or not (a database without a stamp).
        let loopMemo = memo ?? factsMemo(for: eventLoop)
        loopMemo.counters.read(checks: 1)
        let facts = rows.first.flatMap({ Self.facts($0, hash: hash) })
        // Kept under the stamp read *before* the query: a commit in between makes the next
        // stamp differ from it, and the entry is never used.
        if let stamp { loopMemo.keep(facts, hash: hash, stamp: stamp, at: at) }
        guard let facts else { return (Self.noSession, nil) }
        return (evaluate(facts), facts)
    }

    /// How forward-auth's session lookups were answered so far, every loop together
    /// (metrics: scraped, so the hot path only adds to its own loop's counters).
    public func forwardAuthCounts() -> ForwardAuthCounts {
        let memos = self.memos.withLock { Array($0.values) }
        let batchers = self.batchers.withLock { batchers in
            Array(batchers.perLoop.values) + (batchers.shared.map { [$0] } ?? [])
        }
        return (memos.map(\.counters) + batchers.map(\.counters)).reduce(ForwardAuthCounts()) { $0 + $1.counts }
    }

    /// This loop's ``FactsMemo``, created on its first check.
    func factsMemo(for eventLoop: any EventLoop) -> FactsMemo {
        memos.withLock { memos in
            if let memo = memos[ObjectIdentifier(eventLoop)] { return memo }
            let created = FactsMemo(eventLoop: eventLoop)
            memos[ObjectIdentifier(eventLoop)] = created
            return created
        }
    }

    /// Whether the session's idle timeout should be extended now (coarse: at most every
    /// `touchGranularity`, so checks stay reads).
    public func activityDue(_ facts: SessionFacts) -> Bool {
        clock().timeIntervalSince(facts.session.lastSeenAt) >= sessions.configuration.touchGranularity
    }

    public func recordActivity(_ facts: SessionFacts, at: Date? = nil) async throws {
        try await sessions.touchIfDue(hash: facts.hash, lastSeenAt: facts.session.lastSeenAt, at: at ?? now)
    }

    /// ``recordActivity(_:at:)`` without making the answer wait: the time is taken now (the
    /// check's), the write happens in the background, and a failure only means the next
    /// check asks again.
    public func recordActivityInBackground(_ facts: SessionFacts) {
        guard activityDue(facts) else { return }
        let at = now
        Task { try? await self.recordActivity(facts, at: at) }
    }

    /// One indexed query: the session (live: not revoked, within its idle and absolute
    /// timeouts), its account, and every fact the predicate needs.
    func facts(hash: String, at: Date, in db: any SQLTransaction) throws -> SessionFacts? {
        try db.fetchOne(FactsQuery.self, arguments: factsArguments(hash: hash, at: at)).flatMap { Self.facts($0, hash: hash) }
    }

    /// Forward-auth's one query, on every agenda request: prepared once per connection.
    enum FactsQuery: PreparedSQL {
        static let sql = factsSQL
    }

    /// ``FactsQuery`` for up to `size` sessions at once, each row saying which (``FactsBatcher``).
    enum FactsBatchQuery: PreparedSQL {
        static let size = 8
        static let sql = factsSQL
            .replacingOccurrences(of: "SELECT s.account_id,", with: "SELECT s.id_hash, s.account_id,")
            .replacingOccurrences(of: "WHERE s.id_hash = ?", with: "WHERE s.id_hash IN (" + Array(repeating: "?", count: size).joined(separator: ", ") + ")")
    }

    static let factsSQL = """
            SELECT s.account_id, s.origin, s.created_at, s.last_seen_at, s.absolute_expires_at, s.authentication,
                   a.active, EXISTS (SELECT 1 FROM vendor_suspension v WHERE v.account_id = a.id) AS suspended, a.password_reset_required, a.given_name, a.family_name, a.email,
                   EXISTS (SELECT 1 FROM totp_credential t WHERE t.account_id = a.id AND t.confirmed_at IS NOT NULL) AS has_totp,
                   EXISTS (SELECT 1 FROM cgu_acceptance c WHERE c.account_id = a.id AND c.version = ?) AS has_cgu,
                   (SELECT value FROM account_identifier i WHERE i.account_id = a.id AND i.kind = 'IDNPS' AND i.ended_at IS NULL) AS national_id,
                   (SELECT value FROM account_identifier i WHERE i.account_id = a.id AND i.kind = 'INTRN' AND i.ended_at IS NULL) AS technical_id
            FROM web_session s JOIN account a ON a.id = s.account_id
            WHERE s.id_hash = ? AND s.revoked_at IS NULL AND s.absolute_expires_at > ? AND s.last_seen_at > ?
            """

    func factsArguments(hash: String, at: Date) -> SQLArguments {
        [cguVersion, hash, at.epochMilliseconds, at.addingTimeInterval(-sessions.configuration.idleTimeout).epochMilliseconds]
    }

    static func facts(_ row: SQLRow, hash: String) -> SessionFacts? {
        guard let origin = SessionOrigin(rawValue: row["origin"]) else { return nil }
        let session = WebSession(accountID: row["account_id"], origin: origin, createdAt: Date(epochMilliseconds: row["created_at"]),
                                 lastSeenAt: Date(epochMilliseconds: row["last_seen_at"]),
                                 authentication: SessionAuthentication(rawValue: row["authentication"]) ?? .password)
        return SessionFacts(session: session,
                            account: AccountSummary(accountID: row["account_id"], givenName: row["given_name"], familyName: row["family_name"], email: row["email"],
                                                    nationalID: row["national_id"], sasTechnicalID: row["technical_id"]),
                            active: row["active"], suspended: row["suspended"],
                            resetRequired: row["password_reset_required"], hasTOTP: row["has_totp"], hasCGU: row["has_cgu"], hash: hash,
                            absoluteExpiresAt: row["absolute_expires_at"], lastSeenMilliseconds: row["last_seen_at"])
    }

    /// The first-sign-in steps still due. A Pro Santé Connect session owes neither a password
    /// of ours nor a TOTP (the provider's authentication stands for both); the CGU it owes.
    static func pendingActions(authentication: SessionAuthentication, resetRequired: Bool, hasTOTP: Bool, hasCGU: Bool) -> [RequiredAction] {
        var pending: [RequiredAction] = []
        if authentication == .password {
            if resetRequired { pending.append(.setPassword) }
            if !hasTOTP { pending.append(.enrolSecondFactor) }
        }
        if !hasCGU { pending.append(.acceptCGU) }
        return pending
    }

    func evaluate(_ facts: SessionFacts) -> HabilitationCheck {
        let pending = Self.pendingActions(authentication: facts.session.authentication, resetRequired: facts.resetRequired,
                                          hasTOTP: facts.hasTOTP, hasCGU: facts.hasCGU)
        let inputs = HabilitationFacts(sessionLive: true, sessionOrigin: facts.session.origin, accountActive: facts.active,
                                       suspendedByVendor: facts.suspended, pendingActions: pending)
        return HabilitationCheck(session: facts.session, account: facts.account, pendingActions: pending, decision: HabilitationPolicy.evaluate(inputs))
    }

    /// What a provider sign-in (Pro Santé Connect) may open for the national id (IDNPS) the
    /// provider vouches for: matched against accounts' *current* national id only (a
    /// replaced or reattributed one opens nothing).
    public enum ProviderAccountMatch: Sendable, Equatable {
        case unknown
        case deactivatedBySAS(accountID: String)
        case suspendedByVendor(accountID: String)
        case eligible(accountID: String)
    }

    public func providerAccount(nationalID: String) async throws -> ProviderAccountMatch {
        try await database.read { db in try self.providerAccount(nationalID: nationalID, in: db) }
    }

    /// ``providerAccount(nationalID:)`` in the caller's transaction: the provider callback
    /// matches the account in the transaction that opens its flow, so an identifier replaced,
    /// a withdrawal or a suspension committed meanwhile (on any instance) is either seen or
    /// comes after the flow exists (and then ends its habilitation as it would a session's).
    public func providerAccount(nationalID: String, in db: any SQLTransaction) throws -> ProviderAccountMatch {
        guard let row = try SQLRow.fetchOne(db, sql: """
            SELECT a.id, a.active, EXISTS (SELECT 1 FROM vendor_suspension v WHERE v.account_id = a.id) AS suspended FROM account_identifier i JOIN account a ON a.id = i.account_id
            WHERE i.kind = 'IDNPS' AND i.value = ? AND i.ended_at IS NULL
            """, arguments: [nationalID]) else { return .unknown }
        let accountID: String = row["id"]
        if !(row["active"] as Bool) { return .deactivatedBySAS(accountID: accountID) }
        if row["suspended"] as Bool { return .suspendedByVendor(accountID: accountID) }
        return .eligible(accountID: accountID)
    }

    /// Whether the account accepted the CGU version in force (inside the caller's transaction).
    public func hasAcceptedCGU(accountID: String, in db: any SQLTransaction) throws -> Bool {
        try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM cgu_acceptance WHERE account_id = ? AND version = ?)",
                          arguments: [accountID, cguVersion]) ?? false
    }

    /// Whether a sign-in of this account ends refused, whatever it proves: the SAS deactivated
    /// it, or the vendor suspended it (``SignInRefused``). The web sign-in then goes to that
    /// refusal instead of asking for the terms of use, which the account would otherwise
    /// accept (and the acceptance be recorded) only to be refused after. The session's own
    /// transaction decides again.
    public func refusesNewSessions(accountID: String) async throws -> Bool {
        try await database.read { db in
            guard case .denied(let reasons) = try self.decisionForNewSession(accountID: accountID, origin: .sas, in: db) else { return false }
            return reasons.contains(where: SignInRefused.refusing.contains)
        }
    }

    /// The decision for a session being created now (inside its transaction), so the audit
    /// trail can say whether the new session holds the habilitation.
    public func decisionForNewSession(accountID: String, origin: SessionOrigin, authentication: SessionAuthentication = .password,
                                      in db: any SQLTransaction) throws -> HabilitationDecision {
        guard let row = try SQLRow.fetchOne(db, sql: """
            SELECT a.active, EXISTS (SELECT 1 FROM vendor_suspension v WHERE v.account_id = a.id) AS suspended, a.password_reset_required,
                   EXISTS (SELECT 1 FROM totp_credential t WHERE t.account_id = a.id AND t.confirmed_at IS NOT NULL) AS has_totp,
                   EXISTS (SELECT 1 FROM cgu_acceptance c WHERE c.account_id = a.id AND c.version = ?) AS has_cgu
            FROM account a WHERE a.id = ?
            """, arguments: [cguVersion, accountID]) else { return .denied([.noLiveSession]) }
        let pending = Self.pendingActions(authentication: authentication, resetRequired: row["password_reset_required"],
                                          hasTOTP: row["has_totp"], hasCGU: row["has_cgu"])
        return HabilitationPolicy.evaluate(HabilitationFacts(sessionLive: true, sessionOrigin: origin, accountActive: row["active"],
                                                             suspendedByVendor: row["suspended"],
                                                             pendingActions: pending))
    }
}
