import Accounts
import Crypto
import Foundation
import Storage
import Synchronization

/// Timeouts of the web sign-in.
public struct SessionConfiguration: Sendable {
    public var intentLifetime: TimeInterval = 10 * 60
    public var flowLifetime: TimeInterval = 15 * 60
    public var idleTimeout: TimeInterval = 30 * 60
    public var absoluteTimeout: TimeInterval = 12 * 3600
    /// `last_seen_at` is written at most this often (a write per request would serialise
    /// every page view and forward-auth check on the database writer).
    public var touchGranularity: TimeInterval = 60
    /// How long a back-channel logout is remembered (its `jti`, against replays on any
    /// instance; its subject and session id, against a provider callback already under way
    /// when it came). Longer than every window it guards: a provider login lives as long as
    /// its intent (10 min), a logout token is accepted up to 11 min after it was issued.
    public var providerLogoutMemory: TimeInterval = 3600
    /// How far apart the instances' clocks may be (NTP keeps them milliseconds apart): a
    /// provider login started on one instance up to this long after a back-channel logout
    /// received by another still counts as started before it. A login started within this
    /// margin after a logout of its session is refused; the regulator starts again.
    public var providerLogoutClockMargin: TimeInterval = 2

    public init() {}
}

/// A login intent: where the browser came from (the SAS redirect or not) and where to send
/// it back. Sealed into the browser's cookie at the entry (``LoginSeal``: nothing is written
/// until a sign-in proves something), copied into the sign-in flow the password or the
/// provider opens, and from the flow into the session. It asserts nothing a stranger could
/// not: anyone may follow the SAS link, and the habilitation still needs an account's factors.
public struct LoginIntent: Sendable, Equatable {
    public var origin: SessionOrigin
    public var originValue: String?
    public var returnURL: String

    public init(origin: SessionOrigin, originValue: String?, returnURL: String) {
        self.origin = origin
        self.originValue = originValue
        self.returnURL = returnURL
    }
}

/// A live web session.
public struct WebSession: Sendable, Equatable {
    public var accountID: String
    public var origin: SessionOrigin
    public var createdAt: Date
    public var lastSeenAt: Date
    public var authentication: SessionAuthentication = .password
}

/// One of an account's live sessions as its holder sees them on « Mon compte »
/// (``SessionStore/openSessions(of:)``): enough to recognise a browser of theirs, or one that
/// is not. Never the session's id or its hash: `reference` is the audit trail's name for it.
public struct OpenSession: Sendable, Equatable {
    public var reference: String
    public var origin: SessionOrigin
    public var authentication: SessionAuthentication
    public var createdAt: Date
    public var lastSeenAt: Date
    public var address: String?
    public var userAgent: String?
    /// The session the request came with.
    public var isCurrent: Bool
}

/// A session opened moments ago (``SessionStore/justOpened(_:within:)``): where its sign-in
/// sent the browser (nil: the account page).
public struct RecentSignIn: Sendable, Equatable {
    public var returnURL: String?
    public init(returnURL: String?) { self.returnURL = returnURL }
}

/// Who the OpenID Connect provider says signed in, kept with the flow and then the session.
public struct ProviderIdentity: Sendable, Equatable {
    /// The ID token's `sub` (back-channel logout names sessions by it).
    public var subject: String
    /// The ID token's `sid`, when the provider sends one.
    public var sessionID: String?
    /// The ID token sealed with the server key (for `id_token_hint` at sign-out).
    public var sealedIDToken: [UInt8]?
    /// When the provider authenticated the user (the ID token's `auth_time`), when it says.
    public var authenticatedAt: Date?

    public init(subject: String, sessionID: String?, sealedIDToken: [UInt8]?, authenticatedAt: Date? = nil) {
        self.subject = subject
        self.sessionID = sessionID
        self.sealedIDToken = sealedIDToken
        self.authenticatedAt = authenticatedAt
    }
}

/// What the callback's `state` turned out to be. Decided without the database: the state is
/// sealed (``LoginSeal``), so a made-up one is refused before anything is spent or written.
public enum ProviderLoginLookup: Sendable, Equatable {
    /// No state of ours, or one past its intent's lifetime.
    case unknown
    /// A state of ours, but this browser holds no live intent, or not the one it names (a
    /// callback URL planted in another browser, or an intent that expired at the provider).
    case otherBrowser
    /// This browser's login. Not yet spent: ``SessionStore/spendProviderLogin(_:)`` makes it
    /// single use.
    case accepted(ProviderLogin)
}

/// A provider login a callback's `state` names, in the browser that started it.
public struct ProviderLogin: Sendable, Equatable {
    /// The SHA-256 of the state: what makes it single use, once spent.
    public var stateHash: String
    /// The intent it serves (origin, way back), and the SHA-256 of the intent's id.
    public var intent: LoginIntent
    public var intentIDHash: String
    /// When the login started: a back-channel logout of its provider session received since
    /// then refuses the callback.
    public var startedAt: Date
    /// Whether this login asked the provider to authenticate the user again (a session of
    /// its provider session had been ended here remotely): if the answer still predates that
    /// end, it is refused, not asked again.
    public var reauthenticationAsked: Bool = false
}

/// A back-channel logout the relying party validated: what the provider ended.
public struct ProviderLogout: Sendable, Equatable {
    /// The logout token's `jti`: each is acted on once, across all instances.
    public var jti: String
    public var subject: String?
    public var sessionID: String?

    public init(jti: String, subject: String?, sessionID: String?) {
        self.jti = jti
        self.subject = subject
        self.sessionID = sessionID
    }
}

/// What a provider callback opened, or why nothing.
public enum ProviderFlowStart: Sendable {
    /// No eligible account for the national id, as read in the transaction that would have
    /// opened the flow.
    case refused(HabilitationService.ProviderAccountMatch)
    /// The provider ended this sign-in's session (back-channel logout) before the flow was
    /// written: nothing opened for the account matched.
    case loggedOutAtProvider(accountID: String)
    /// A session of the account opened through this provider session was ended here in a way
    /// that shuts its browser out (``SessionEndReason/requiresNewProviderAuthentication``:
    /// « Fermer mes autres sessions » or « Fermer cette autre session », a password change or
    /// reset, an admin, another account's sign-in in that browser) at `endedAt`, and the
    /// provider has not authenticated the user since: nothing opened. The provider must be
    /// asked to authenticate the user again, or that browser would open a new session
    /// without anyone typing anything.
    case reauthenticationRequired(accountID: String, endedAt: Date)
    /// The flow, and the session when no step remained.
    case opened(flowToken: String, session: (token: String, origin: SessionOrigin, returnURL: String?)?)
}

/// Login intents, sign-in flows and sessions. Every id handed to a browser is a 256-bit
/// random token; only its SHA-256 is stored. A session's origin is fixed when it is created,
/// copied from the intent that started it, and never changes afterwards.
public final class SessionStore: Sendable {
    public let database: AccountDatabase
    private let seal: LoginSeal
    public let configuration: SessionConfiguration
    private let clock: @Sendable () -> Date
    private let audit = AuditLog()
    /// The sessions whose touch this process is writing now (their id hashes): a page load
    /// fires dozens of forward-auth checks at once, and every one that sees the touch due
    /// would otherwise open its own write. On PostgreSQL, those writes collide on the one
    /// row: each but the first fails its serialization check and is retried holding the
    /// write lock exclusively, one after the other, every instance's writes waiting behind.
    private let touchesInFlight = Mutex<Set<String>>([])

    /// `serverKey`: the installation's key (every instance's the same), from which the keys
    /// sealing intents and provider states are derived.
    public init(database: AccountDatabase, serverKey: [UInt8], configuration: SessionConfiguration = SessionConfiguration(),
                clock: @escaping @Sendable () -> Date = Date.init) {
        self.database = database
        self.seal = LoginSeal(serverKey: serverKey)
        self.configuration = configuration
        self.clock = clock
    }

    private var now: Date { Date(epochMilliseconds: clock().epochMilliseconds) }

    // MARK: Retention

    /// Deletes what can no longer be used: flows once spent or expired, spent provider states
    /// once past their intent's lifetime (the rows of `login_intent`, unused since intents are
    /// sealed, go as they expire), back-channel logouts once past ``SessionConfiguration/providerLogoutMemory``, sessions
    /// once ended (revoked, idle or past their absolute limit) for longer than `retention`
    /// (kept that long for the admin's view of recent sessions). The audit trail keeps the
    /// story; with `secure_delete` the rows' bytes are zeroed. Returns the rows deleted.
    public func purge(retention: TimeInterval) async throws -> Int {
        let at = now
        let cutoff = at.addingTimeInterval(-retention).epochMilliseconds
        let idle = Int64(configuration.idleTimeout * 1000)
        return try await database.write { db in
            try db.execute(sql: "DELETE FROM login_intent WHERE consumed_at IS NOT NULL OR expires_at <= ?", arguments: [at.epochMilliseconds])
            var deleted = try db.changesCount
            // A Pro Santé Connect flow ended remotely stays as an ended session does
            // (``endedRemotely(_:accountID:in:)`` reads it).
            let remote = SessionLedger.remoteEndReasons.sorted()
            try db.execute(sql: """
                DELETE FROM sign_in_flow WHERE (consumed_at IS NOT NULL OR expires_at <= ?)
                AND (authentication <> 'psc' OR ended_reason IS NULL OR ended_reason NOT IN (\(remote.map { _ in "?" }.joined(separator: ", "))) OR consumed_at <= ?)
                """, arguments: [at.epochMilliseconds] + remote.map { $0 as (any SQLBindable)? } + [cutoff])
            deleted += try db.changesCount
            // A spent state stays as long as it could be presented again.
            try db.execute(sql: "DELETE FROM oidc_login WHERE expires_at <= ?", arguments: [at.epochMilliseconds])
            deleted += try db.changesCount
            try db.execute(sql: "DELETE FROM provider_logout WHERE expires_at <= ?", arguments: [at.epochMilliseconds])
            deleted += try db.changesCount
            try db.execute(sql: """
                DELETE FROM web_session WHERE revoked_at <= ? OR absolute_expires_at <= ? OR last_seen_at + ? <= ?
                """, arguments: [cutoff, cutoff, idle, cutoff])
            return try deleted + db.changesCount
        }
    }

    // MARK: Intents

    /// The intent sealed for the browser's cookie (``LoginSeal``): nothing is written. It
    /// lives ``SessionConfiguration/intentLifetime`` from now, until a sign-in copies it into
    /// its flow.
    public func createIntent(_ intent: LoginIntent) -> String {
        var generator = SystemRandomNumberGenerator()
        let id = (0..<16).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
        return seal.sealIntent(intent, id: id, at: now)
    }

    /// The intent a cookie holds if it is ours and unexpired.
    public func intent(_ token: String) -> LoginIntent? { liveIntent(token)?.intent }

    private func liveIntent(_ token: String) -> (intent: LoginIntent, id: [UInt8], at: Date)? {
        guard let opened = seal.openIntent(token), now < opened.at.addingTimeInterval(configuration.intentLifetime) else { return nil }
        return opened
    }

    /// The stored name of an intent: the SHA-256 of its id (hex).
    static func idHash(_ id: [UInt8]) -> String { SecretToken.hex(Array(SHA256.hash(data: id))) }

    // MARK: Provider logins

    /// The `state` of a login at the OpenID Connect provider for a live intent: sealed, it
    /// names the intent and the login's start, and nothing is written. It lives as long as
    /// its intent. nil when the intent is not live.
    ///
    /// `reauthentication`: the login asks the provider to authenticate the user again
    /// (``ProviderFlowStart/reauthenticationRequired(accountID:endedAt:)``); its callback is
    /// refused, not sent back, if the provider did not.
    public func createProviderLogin(intentToken: String, reauthentication: Bool = false) -> String? {
        guard let intent = liveIntent(intentToken) else { return nil }
        return seal.sealState(intentID: intent.id, at: now, reauthentication: reauthentication)
    }

    /// What a callback's `state` is, for the browser whose intent cookie is `intentToken`
    /// (a callback URL planted in another browser signs nobody in there). Reads nothing and
    /// writes nothing: a state nobody sealed costs nothing to refuse.
    public func providerLogin(state: String, intentToken: String?) -> ProviderLoginLookup {
        let at = now
        guard let login = seal.openState(state), at < login.at.addingTimeInterval(configuration.intentLifetime) else { return .unknown }
        guard let intentToken, let intent = liveIntent(intentToken), SecretToken.constantTimeEquals(intent.id, login.intentID) else {
            return .otherBrowser
        }
        return .accepted(ProviderLogin(stateHash: SecretToken.hash(state), intent: intent.intent, intentIDHash: Self.idHash(intent.id),
                                       startedAt: login.at, reauthenticationAsked: login.reauthentication))
    }

    /// Spends a login's state: true the first time, on any instance; false once spent (a
    /// callback reloaded or replayed). The row lives as long as the state could be presented
    /// (its intent's lifetime from the login's start), plus a minute for the instances'
    /// clocks, then the purge removes it. `consumed_at` stays empty: the version before sealed
    /// states purged consumed rows at once, and an instance of it during a rolling upgrade
    /// would have made spent states good again.
    public func spendProviderLogin(_ login: ProviderLogin) async throws -> Bool {
        let expires = login.startedAt.addingTimeInterval(configuration.intentLifetime + 60)
        return try await database.write { db in
            try db.execute(sql: """
                INSERT INTO oidc_login (state_hash, intent_id_hash, created_at, expires_at) VALUES (?, ?, ?, ?)
                ON CONFLICT (state_hash) DO NOTHING
                """, arguments: [login.stateHash, login.intentIDHash, login.startedAt.epochMilliseconds, expires.epochMilliseconds])
            return try db.changesCount == 1
        }
    }

    /// One audit row for a provider sign-in's outcome: who (when known), the claims used and
    /// the decision. Never a token.
    public func auditProviderSignIn(outcome: String, accountID: String?, detail: String, actor: AuditActor) async throws {
        let at = now
        try await database.write { db in
            try self.audit.append(AuditEvent(at: at, surface: "web", action: "sign-in-psc", outcome: outcome, actor: actor, requestID: nil,
                                             identifier: nil, accountID: accountID, changes: [], detail: detail), in: db)
        }
    }

    // MARK: Flows

    public func startFlow(accountID: String, intentToken: String?) async throws -> String {
        try await database.write { db in try self.startFlow(accountID: accountID, intentToken: intentToken, in: db) }
    }

    /// ``startFlow(accountID:intentToken:)`` in the caller's transaction: the password step
    /// opens its flow in the transaction that accepts the password
    /// (`CredentialStore.checkPassword(email:password:actor:whenAccepted:)`), so a password
    /// reset committed meanwhile either consumes the flow or refuses it. Safe to run again
    /// (a new token each time).
    public func startFlow(accountID: String, intentToken: String?, in db: any SQLTransaction) throws -> String {
        let token = SecretToken.generate()
        let intent = intentToken.flatMap(liveIntent).map { (intent: $0.intent, idHash: Self.idHash($0.id)) }
        try insertFlow(token: token, accountID: accountID, intent: intent, provider: nil, auditDetail: nil, actor: nil, at: now, in: db)
        return token
    }

    /// A provider sign-in in one transaction, so nothing it relies on can change between the
    /// check and the write (on this instance or another):
    /// - the account `match` finds for the provider's national id, read here (an identifier
    ///   replaced, a withdrawal or a suspension committed meanwhile is seen);
    /// - no back-channel logout for this identity since the login started
    ///   (``recordProviderLogout(_:actor:)`` ends the flows that exist; this refuses the
    ///   callbacks still under way when it came);
    /// - the flow, with its audit row ("sign-in-psc" accepted, with the claims used): a flow
    ///   whose holder signed in at the provider, both factors done (the provider's
    ///   authentication stands for them), what remains is the CGU;
    /// - when `complete` says no step remains (the CGU in force accepted), the session at
    ///   once, as ``completeFlow(flowToken:address:userAgent:actor:decide:)`` would make it.
    public func startProviderFlow(match: @escaping @Sendable (any SQLTransaction) throws -> HabilitationService.ProviderAccountMatch,
                                  login: ProviderLogin, identity: ProviderIdentity, auditDetail: String, actor: AuditActor,
                                  completeIf complete: @escaping @Sendable (_ accountID: String, any SQLTransaction) throws -> Bool,
                                  address: String?, userAgent: String?, replacing previous: String? = nil,
                                  decide: @escaping @Sendable (String, SessionOrigin, SessionAuthentication, any SQLTransaction) throws -> HabilitationDecision)
        async throws -> ProviderFlowStart {
        let token = SecretToken.generate()
        let at = now
        do {
            return try await startProviderFlow(token: token, at: at, match: match, login: login, identity: identity, auditDetail: auditDetail, actor: actor, completeIf: complete,
                                               address: address, userAgent: userAgent, replacing: previous, decide: decide)
        } catch let refused as SignInRefused {
            // `match` and `decide` read one snapshot, so this cannot happen while they agree;
            // should they ever differ, the refusal is the provider sign-in's own, not a 500.
            return .refused(refused.reason == .deactivatedBySAS ? .deactivatedBySAS(accountID: refused.accountID) : .suspendedByVendor(accountID: refused.accountID))
        }
    }

    private func startProviderFlow(token: String, at: Date, match: @escaping @Sendable (any SQLTransaction) throws -> HabilitationService.ProviderAccountMatch,
                                   login: ProviderLogin, identity: ProviderIdentity, auditDetail: String, actor: AuditActor,
                                   completeIf complete: @escaping @Sendable (_ accountID: String, any SQLTransaction) throws -> Bool,
                                   address: String?, userAgent: String?, replacing previous: String?,
                                   decide: @escaping @Sendable (String, SessionOrigin, SessionAuthentication, any SQLTransaction) throws -> HabilitationDecision)
        async throws -> ProviderFlowStart {
        try await database.write { db in
            let found = try match(db)
            guard case .eligible(let accountID) = found else { return .refused(found) }
            if try Self.loggedOut(identity, since: login.startedAt.addingTimeInterval(-self.configuration.providerLogoutClockMargin), at: at, in: db) {
                return .loggedOutAtProvider(accountID: accountID)
            }
            if let ended = try Self.endedRemotely(identity, accountID: accountID, in: db),
               identity.authenticatedAt.map({ $0.epochMilliseconds <= ended.epochMilliseconds }) ?? true {
                return .reauthenticationRequired(accountID: accountID, endedAt: ended)
            }
            try self.insertFlow(token: token, accountID: accountID, intent: (login.intent, login.intentIDHash), provider: identity,
                                auditDetail: auditDetail, actor: actor, at: at, in: db)
            guard try complete(accountID, db) else { return .opened(flowToken: token, session: nil) }
            let session = try self.completeFlow(hash: SecretToken.hash(token), at: at, address: address, userAgent: userAgent, actor: actor,
                                                replacing: previous, decide: decide, in: db)
            return .opened(flowToken: token, session: session)
        }
    }

    /// Whether a back-channel logout received since `since` (the login's start, less the
    /// instances' clock margin) would have ended a session of this identity, had it been
    /// open: one naming the ID token's `sid` (with its subject, or none), or one naming its
    /// subject without a `sid`, or, when the ID token has no `sid`, any naming its subject.
    /// The same match as ``recordProviderLogout(_:actor:)`` uses for sessions. Logouts
    /// received before the login started are not held against it: the provider issued this
    /// login's code after them, so its session was live (some providers end only one
    /// client's part of a session and keep the session, and its `sid`, alive).
    static func loggedOut(_ identity: ProviderIdentity, since: Date, at: Date, in db: any SQLTransaction) throws -> Bool {
        // Two indexed lookups (by session id, by subject), not one OR: under SERIALIZABLE
        // a scan would lock the whole table against logouts being recorded.
        if let sid = identity.sessionID, try Bool.fetchOne(db, sql: """
            SELECT 1 FROM provider_logout WHERE session_id = ? AND (subject IS NULL OR subject = ?) AND received_at >= ? AND expires_at > ?
            """, arguments: [sid, identity.subject, since.epochMilliseconds, at.epochMilliseconds]) == true {
            return true
        }
        return try Bool.fetchOne(db, sql: """
            SELECT 1 FROM provider_logout WHERE subject = ? AND received_at >= ? AND expires_at > ?\(identity.sessionID == nil ? "" : " AND session_id IS NULL")
            """, arguments: [identity.subject, since.epochMilliseconds, at.epochMilliseconds]) == true
    }

    /// When a session of `accountID` opened through this provider identity was last ended
    /// here in a way that shuts its browser out (``SessionLedger/remoteEndReasons``), if one was
    /// within the retention period (ended sessions are kept that long, at least a day).
    ///
    /// Which sessions: those of the same subject and the same provider session (`sid`). When
    /// either `sid` is unknown (a provider that does not send it), every session of the
    /// subject: one browser's silent return must not be missed for want of a `sid`, at the
    /// cost of a regulator typing again at the provider in another browser.
    ///
    /// Why not end the provider's session instead: it lives in the ended session's browser,
    /// and only that browser can be sent to the provider's sign-out; OpenID Connect has no
    /// call from relying party to provider that ends one.
    static func endedRemotely(_ identity: ProviderIdentity, accountID: String, in db: any SQLTransaction) throws -> Date? {
        let reasons = SessionLedger.remoteEndReasons.sorted()
        let sid = identity.sessionID == nil ? "" : " AND (oidc_session_id IS NULL OR oidc_session_id = ?)"
        var arguments: SQLArguments = [accountID, identity.subject] + reasons.map { $0 as (any SQLBindable)? }
        if let session = identity.sessionID { arguments.append(session) }
        // The sessions, and the sign-ins that had not become one yet (a flow waiting on the
        // terms of use: its browser would otherwise come back through the provider and
        // accept them in the regulator's name).
        let matching = "account_id = ? AND authentication = 'psc' AND oidc_subject = ?"
        let ended = "IN (\(reasons.map { _ in "?" }.joined(separator: ", ")))"
        return try Int64.fetchOne(db, sql: """
            SELECT MAX(ended_at) FROM (
                SELECT revoked_at AS ended_at FROM web_session WHERE \(matching) AND revoked_reason \(ended)\(sid)
                UNION ALL
                SELECT consumed_at AS ended_at FROM sign_in_flow WHERE \(matching) AND ended_reason \(ended)\(sid)
            ) AS remote_ends
            """, arguments: arguments + arguments).map(Date.init(epochMilliseconds:))
    }

    /// The flow copies its intent (origin, way back): it lives as long as the flow, for a first
    /// sign-in (password, TOTP enrolment, recovery codes, the terms of use) easily takes
    /// longer than the intent's 10 minutes, and its session would otherwise open without the
    /// origin, hence without the habilitation, silently. The SAS link followed again meanwhile
    /// changes nothing for a flow already open.
    private func insertFlow(token: String, accountID: String, intent: (intent: LoginIntent, idHash: String)?, provider: ProviderIdentity?,
                            auditDetail: String?, actor: AuditActor?, at: Date, in db: any SQLTransaction) throws {
        try db.execute(sql: """
            INSERT INTO sign_in_flow (id_hash, account_id, intent_id_hash, origin, origin_value, return_url, created_at, expires_at,
                                      second_factor_at, authentication, oidc_subject, oidc_session_id, oidc_id_token)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """, arguments: [SecretToken.hash(token), accountID, intent?.idHash, intent?.intent.origin.rawValue, intent?.intent.originValue,
                             intent?.intent.returnURL, at.epochMilliseconds, at.addingTimeInterval(self.configuration.flowLifetime).epochMilliseconds,
                             provider == nil ? nil : at.epochMilliseconds,
                             provider == nil ? SessionAuthentication.password.rawValue : SessionAuthentication.psc.rawValue,
                             provider?.subject, provider?.sessionID, provider?.sealedIDToken.map { Data($0) }])
        if let auditDetail, let actor {
            try self.audit.append(AuditEvent(at: at, surface: "web", action: "sign-in-psc", outcome: "accepted", actor: actor, requestID: nil,
                                             identifier: nil, accountID: accountID, changes: [], detail: auditDetail), in: db)
        }
    }

    /// Ends the flow `token` before it completes: « Ce n’est pas vous ? » on a sign-in step, or
    /// a sign-out in the browser that holds it. A flow left open outlives its page (a shared
    /// workstation: the next person to follow a SAS link would reach the first one's terms of
    /// use and open a session in their name). Returns whether a live flow was ended.
    @discardableResult
    public func abandonFlow(_ token: String, reason: String, actor: AuditActor) async throws -> Bool {
        let at = now
        let hash = SecretToken.hash(token)
        return try await database.write { db in
            guard let accountID = try String.fetchOne(db, sql: """
                SELECT account_id FROM sign_in_flow WHERE id_hash = ? AND consumed_at IS NULL AND expires_at > ?
                """, arguments: [hash, at.epochMilliseconds]) else { return false }
            try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ? WHERE id_hash = ? AND consumed_at IS NULL", arguments: [at.epochMilliseconds, hash])
            try self.audit.append(AuditEvent(at: at, surface: "web", action: "sign-in-abandoned", outcome: reason, actor: actor, requestID: nil,
                                             identifier: nil, accountID: accountID, changes: [], detail: nil), in: db)
            return true
        }
    }

    public func flow(_ token: String) async throws -> (accountID: String, secondFactorDone: Bool, authentication: SessionAuthentication)? {
        let at = now
        return try await database.read { db in
            try SQLRow.fetchOne(db, sql: """
                SELECT account_id, second_factor_at, authentication FROM sign_in_flow
                WHERE id_hash = ? AND consumed_at IS NULL AND expires_at > ?
                """, arguments: [SecretToken.hash(token), at.epochMilliseconds]).map {
                ($0["account_id"], ($0["second_factor_at"] as Int64?) != nil,
                 SessionAuthentication(rawValue: $0["authentication"]) ?? .password)
            }
        }
    }

    /// Records the second factor of a live flow, on its own (tests and tooling; the web
    /// sign-in records it in the transaction that checks the code, through
    /// ``secondFactorStep(flowToken:wrongCodesAllowed:)``).
    public func markSecondFactorDone(flowToken: String) async throws {
        try await database.write { db in try self.secondFactorStep(flowToken: flowToken, wrongCodesAllowed: .max).accept(db) }
    }

    /// The flow `flowToken` as the step a second factor (a code, or a TOTP enrolment's first
    /// code) completes: open while live (not ended by a reset, a lockout, too many codes or
    /// "sign out everywhere", not expired); accepting the factor records it in the flow; a
    /// refused code is counted in the flow, which ends at `wrongCodesAllowed` of them or at
    /// once when the account is locked (back to the password step). `CredentialStore` runs
    /// these in the transaction that checks the code.
    public func secondFactorStep(flowToken: String, wrongCodesAllowed: Int) -> SignInStep {
        let hash = SecretToken.hash(flowToken)
        return SignInStep(id: hash, isOpen: { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM sign_in_flow WHERE id_hash = ? AND consumed_at IS NULL AND expires_at > ?",
                              arguments: [hash, self.now.epochMilliseconds]) ?? false
        }, accept: { db in
            try db.execute(sql: "UPDATE sign_in_flow SET second_factor_at = ? WHERE id_hash = ? AND consumed_at IS NULL",
                           arguments: [self.now.epochMilliseconds, hash])
        }, refuse: { db, accountLocked in
            try db.execute(sql: "UPDATE sign_in_flow SET failed_codes = failed_codes + 1 WHERE id_hash = ?", arguments: [hash])
            try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ? WHERE id_hash = ? AND consumed_at IS NULL AND failed_codes >= ?",
                           arguments: [self.now.epochMilliseconds, hash, accountLocked ? 0 : Int64(clamping: wrongCodesAllowed)])
            return try db.changesCount == 0
        }, isDone: { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM sign_in_flow WHERE id_hash = ? AND second_factor_at IS NOT NULL", arguments: [hash]) ?? false
        })
    }

    // MARK: Sessions

    /// Ends a flow in a new session (a new id: the session id rotates at sign-in). The origin
    /// is the intent's if the flow started from a live intent, `direct` otherwise; the intent
    /// is spent. Returns the session token and where to send the browser.
    /// `decide` evaluates the habilitation of the new session inside the same transaction, for
    /// the audit trail ("habilitation-granted" or why not).
    ///
    /// `previous`: the session the browser held until now (its cookie), ended in the same
    /// transaction: the cookie the browser gets replaces it, and a session nobody holds any
    /// more must not stay live on the server for hours (a shared workstation: the next user's
    /// sign-in ends the last one's session, whoever copied its id).
    public func completeFlow(flowToken: String, address: String?, userAgent: String?, actor: AuditActor, replacing previous: String? = nil,
                             decide: @escaping @Sendable (String, SessionOrigin, SessionAuthentication, any SQLTransaction) throws -> HabilitationDecision = { _, _, _, _ in .denied([]) })
        async throws -> (token: String, origin: SessionOrigin, returnURL: String?)? {
        let at = now
        let hash = SecretToken.hash(flowToken)
        do {
            return try await database.write { db in
                try self.completeFlow(hash: hash, at: at, address: address, userAgent: userAgent, actor: actor,
                                      replacing: previous, decide: decide, in: db)
            }
        } catch let caught as SignInRefused {
            var refused = caught
            // Nothing of the refused transaction stays; the flow ends here, with its reason in
            // the trail (the browser starts again from the password, and meets the same answer
            // while the account stays as it is). Recorded once, by whichever request ends the
            // flow (a form sent twice ends it once); the refusal stands even if this record
            // cannot be written (the caller logs why).
            do {
                try await database.write { db in
                    let authentication = try String.fetchOne(db, sql: "SELECT authentication FROM sign_in_flow WHERE id_hash = ? AND consumed_at IS NULL",
                                                             arguments: [hash])
                    try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ? WHERE id_hash = ? AND consumed_at IS NULL", arguments: [at.epochMilliseconds, hash])
                    guard try db.changesCount == 1 else { return }
                    let viaProvider = authentication == SessionAuthentication.psc.rawValue
                    try self.audit.append(AuditEvent(at: at, surface: "web", action: viaProvider ? "sign-in-psc" : "sign-in",
                                                     outcome: viaProvider ? "refused: \(caught.reason.rawValue)" : "refused \(caught.reason.rawValue)",
                                                     actor: actor, requestID: nil, identifier: nil, accountID: caught.accountID, changes: [],
                                                     detail: viaProvider ? "no session opened" : "both factors proven; no session opened"), in: db)
                }
            } catch {
                refused.recordFailure = "\(error)"
            }
            throw refused
        }
    }

    /// ``completeFlow(flowToken:address:userAgent:actor:decide:)`` inside the caller's transaction.
    /// Throws ``SignInRefused`` (the caller's transaction then changes nothing) for an account
    /// the SAS deactivated or the vendor suspended: no session is opened for it, whatever its
    /// origin, as the Pro Santé Connect match refuses it. A session opened while the
    /// habilitation is withdrawn would otherwise hold it again the moment the SAS reactivates
    /// the account, without anyone signing in (Keycloak and Kratos refuse a disabled
    /// account's sign-in too).
    private func completeFlow(hash flowHash: String, at: Date, address: String?, userAgent: String?, actor: AuditActor, replacing previous: String?,
                              decide: @Sendable (String, SessionOrigin, SessionAuthentication, any SQLTransaction) throws -> HabilitationDecision,
                              in db: any SQLTransaction) throws -> (token: String, origin: SessionOrigin, returnURL: String?)? {
        let token = SecretToken.generate()
        let absolute = configuration.absoluteTimeout
        do {
            guard let flow = try SQLRow.fetchOne(db, sql: """
                SELECT account_id, origin, return_url, second_factor_at, authentication, oidc_subject, oidc_session_id, oidc_id_token FROM sign_in_flow
                WHERE id_hash = ? AND consumed_at IS NULL AND expires_at > ?
                """, arguments: [flowHash, at.epochMilliseconds]),
                  (flow["second_factor_at"] as Int64?) != nil else { return nil }
            let accountID: String = flow["account_id"]
            let authentication = SessionAuthentication(rawValue: flow["authentication"]) ?? .password
            // The intent the flow copied when it opened; none (or no live one then): direct.
            let origin = (flow["origin"] as String?).flatMap(SessionOrigin.init(rawValue:)) ?? .direct
            let returnURL: String? = flow["return_url"]
            let decision = try decide(accountID, origin, authentication, db)
            if case .denied(let reasons) = decision, let refusal = reasons.first(where: SignInRefused.refusing.contains) {
                throw SignInRefused(accountID: accountID, reason: refusal)
            }
            try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ? WHERE id_hash = ?", arguments: [at.epochMilliseconds, flowHash])
            try db.execute(sql: """
                INSERT INTO web_session (id_hash, account_id, origin, created_at, last_seen_at, absolute_expires_at, address, user_agent,
                                         authentication, oidc_subject, oidc_session_id, oidc_id_token, return_url)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [SecretToken.hash(token), accountID, origin.rawValue, at.epochMilliseconds, at.epochMilliseconds,
                                 at.addingTimeInterval(absolute).epochMilliseconds, address, userAgent.map { String($0.prefix(300)) },
                                 authentication.rawValue, flow["oidc_subject"] as String?, flow["oidc_session_id"] as String?,
                                 flow["oidc_id_token"] as Data?, returnURL])
            let reference = Self.sessionReference(hash: SecretToken.hash(token))
            // The browser's previous session, live or expired (its cookie outlives the idle
            // timeout): ended as replaced. Another account's is recorded as such, so that its
            // holder's provider session, if left open on this workstation, does not reopen it
            // without a new authentication (``SessionEndReason/replacedByAnotherAccount``); the
            // same account's is not, so that a regulator who closes their other sessions later
            // is not asked again in this browser for its earlier session. Only a live one is
            // audited (an expired one had ended already).
            if let previous {
                let previousHash = SecretToken.hash(previous)
                if let replaced = try SQLRow.fetchOne(db, sql: """
                    SELECT account_id, absolute_expires_at > ? AND last_seen_at > ? AS live FROM web_session WHERE id_hash = ? AND revoked_at IS NULL
                    """, arguments: [at.epochMilliseconds, at.addingTimeInterval(-self.configuration.idleTimeout).epochMilliseconds, previousHash]) {
                    let owner: String = replaced["account_id"]
                    let reason: SessionEndReason = owner == accountID ? .sessionReplaced : .replacedByAnotherAccount
                    try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE id_hash = ?",
                                   arguments: [at.epochMilliseconds, reason.rawValue, previousHash])
                    if replaced["live"] as Bool {
                        try self.audit.append(AuditEvent(at: at, surface: "web", action: "session-replaced", outcome: "session ended", actor: actor,
                                                         requestID: nil, identifier: nil, accountID: owner, changes: [],
                                                         detail: "session \(Self.sessionReference(hash: previousHash)) replaced by session \(reference) in the same browser"
                                                             + (owner == accountID ? "" : ", signed in to another account")), in: db)
                    }
                }
            }
            try self.audit.append(AuditEvent(at: at, surface: "web", action: "sign-in",
                                             outcome: "session created (origin \(origin.rawValue), \(authentication == .psc ? "Pro Santé Connect" : "password and second factor"))",
                                             actor: actor, requestID: nil, identifier: nil, accountID: accountID, changes: [],
                                             detail: "session \(reference)"), in: db)
            switch decision {
            case .granted:
                try self.audit.append(AuditEvent(at: at, surface: "web", action: "habilitation-granted", outcome: "regulateur",
                                                 actor: actor, requestID: nil, identifier: nil, accountID: accountID, changes: [],
                                                 detail: "session \(reference) (origin sas)"), in: db)
            case .denied(let reasons):
                try self.audit.append(AuditEvent(at: at, surface: "web", action: "habilitation-not-granted",
                                                 outcome: reasons.map(\.rawValue).joined(separator: ","),
                                                 actor: actor, requestID: nil, identifier: nil, accountID: accountID, changes: [],
                                                 detail: "session \(reference) (origin \(origin.rawValue))"), in: db)
            }
            return (token, origin, returnURL)
        }
    }

    /// The session if live: not revoked, idle and absolute timeouts not reached. Touches
    /// `last_seen_at` (coarsely) so activity extends the idle timeout.
    public func session(_ token: String) async throws -> WebSession? {
        let at = now
        let idle = configuration.idleTimeout
        let hash = SecretToken.hash(token)
        guard let session = try await database.read({ db in try Self.liveSession(hash: hash, at: at, idle: idle, in: db) }) else { return nil }
        try await touchIfDue(hash: hash, lastSeenAt: session.lastSeenAt, at: at)
        return session
    }

    /// Where the browser holding `token` was sent when its sign-in ended, if that session is
    /// live and was opened less than `within` ago: a form of that sign-in sent again (a double
    /// click whose first answer the browser dropped) goes there too, instead of « connexion
    /// expirée » to a browser that is signed in. nil for an older session: its browser is
    /// starting another sign-in, whose expiry is real.
    public func justOpened(_ token: String, within: TimeInterval) async throws -> RecentSignIn? {
        let at = now
        let hash = SecretToken.hash(token)
        let idle = configuration.idleTimeout
        return try await database.read { db in
            guard let session = try Self.liveSession(hash: hash, at: at, idle: idle, in: db),
                  at.timeIntervalSince(session.createdAt) < within else { return nil }
            return RecentSignIn(returnURL: try String.fetchOne(db, sql: "SELECT return_url FROM web_session WHERE id_hash = ?", arguments: [hash]))
        }
    }

    /// Records activity (extending the idle timeout) at most every `touchGranularity`.
    ///
    /// Every forward-auth check made between the moment a touch falls due and its commit sees
    /// it due and asks for it (hundreds at a few thousand checks a second); the statement
    /// itself checks it is still due, so only the first changes the row, and the others commit
    /// nothing (no log written, no fsync).
    ///
    /// `at` is when the session was seen live (the request's time, not the touch's): a touch
    /// that commits late, after the idle timeout, records the activity that happened in time
    /// and never revives a session that had already expired when it was seen. One touch per
    /// session at a time in this process (``touchesInFlight``): the others have nothing to add.
    public func touchIfDue(hash: String, lastSeenAt: Date, at: Date) async throws {
        let granularity = configuration.touchGranularity
        guard at.timeIntervalSince(lastSeenAt) >= granularity else { return }
        guard touchesInFlight.withLock({ $0.insert(hash).inserted }) else { return }
        defer { touchesInFlight.withLock { _ = $0.remove(hash) } }
        let idle = configuration.idleTimeout
        try await database.write { db in
            try db.execute(sql: """
                UPDATE web_session SET last_seen_at = ? WHERE id_hash = ? AND revoked_at IS NULL AND last_seen_at <= ?
                AND last_seen_at > ? AND absolute_expires_at > ?
                """, arguments: [at.epochMilliseconds, hash, at.addingTimeInterval(-granularity).epochMilliseconds,
                                  at.addingTimeInterval(-idle).epochMilliseconds, at.epochMilliseconds])
        }
    }

    static func liveSession(hash: String, at: Date, idle: TimeInterval, in db: any SQLTransaction) throws -> WebSession? {
        guard let row = try SQLRow.fetchOne(db, sql: """
            SELECT account_id, origin, created_at, last_seen_at, authentication FROM web_session
            WHERE id_hash = ? AND revoked_at IS NULL AND absolute_expires_at > ? AND last_seen_at > ?
            """, arguments: [hash, at.epochMilliseconds, at.addingTimeInterval(-idle).epochMilliseconds]),
              let origin = SessionOrigin(rawValue: row["origin"]) else { return nil }
        return WebSession(accountID: row["account_id"], origin: origin, createdAt: Date(epochMilliseconds: row["created_at"]),
                          lastSeenAt: Date(epochMilliseconds: row["last_seen_at"]),
                          authentication: SessionAuthentication(rawValue: row["authentication"]) ?? .password)
    }

    /// The live sessions of the account whose live session `token` names, that one first, then
    /// the others by last activity (at most ``openSessionsShown``); nil when `token` names no
    /// live session.
    public func openSessions(of token: String) async throws -> [OpenSession]? {
        let at = now
        let idle = configuration.idleTimeout
        let hash = SecretToken.hash(token)
        return try await database.read { db in
            guard let current = try Self.liveSession(hash: hash, at: at, idle: idle, in: db) else { return nil }
            let columns = "id_hash, origin, authentication, created_at, last_seen_at, address, user_agent"
            let mine = try SQLRow.fetchAll(db, sql: "SELECT \(columns) FROM web_session WHERE id_hash = ?", arguments: [hash])
            let others = try SQLRow.fetchAll(db, sql: """
                SELECT \(columns) FROM web_session
                WHERE account_id = ? AND id_hash <> ? AND revoked_at IS NULL AND absolute_expires_at > ? AND last_seen_at > ?
                ORDER BY last_seen_at DESC, id_hash LIMIT ?
                """, arguments: [current.accountID, hash, at.epochMilliseconds, at.addingTimeInterval(-idle).epochMilliseconds, Self.openSessionsShown - 1])
            return (mine + others).compactMap { row in
                let rowHash: String = row["id_hash"]
                guard let origin = SessionOrigin(rawValue: row["origin"]) else { return nil }
                return OpenSession(reference: Self.sessionReference(hash: rowHash), origin: origin,
                                   authentication: SessionAuthentication(rawValue: row["authentication"]) ?? .password,
                                   createdAt: Date(epochMilliseconds: row["created_at"]), lastSeenAt: Date(epochMilliseconds: row["last_seen_at"]),
                                   address: row["address"], userAgent: row["user_agent"], isCurrent: rowHash == hash)
            }
        }
    }

    /// How many sessions « Mon compte » lists (the current one always among them).
    public static let openSessionsShown = 20

    /// « Fermer cette autre session » on « Mon compte »: the live session of the same account that
    /// `reference` names (as the page lists it: ``sessionReference(hash:)``) ends, with its
    /// audit event, as « Fermer mes autres sessions » ends each (reason
    /// ``SessionEndReason/signedOutElsewhere``: a Pro Santé Connect one does not reopen
    /// without a new authentication). Only a session the page could have listed: live, of
    /// the account, not this one. nil when the session `token` names is not live; false
    /// when no such session was there to end (ended meanwhile, or a reference of another
    /// account's, which is not told apart). Sign-ins under way are left alone (none is
    /// listed, and ending them all would end the regulator's own elsewhere): « Fermer mes
    /// autres sessions » ends them.
    public func revokeOtherSession(reference: String, keeping token: String, actor: AuditActor) async throws -> Bool? {
        let at = now
        let idle = configuration.idleTimeout
        let hash = SecretToken.hash(token)
        // A reference is 12 lowercase hexadecimal digits; anything else names nothing.
        let wellFormed = reference.utf8.count == 12 && reference.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
        return try await database.write { db in
            guard let current = try Self.liveSession(hash: hash, at: at, idle: idle, in: db) else { return nil }
            guard wellFormed else { return false }
            let ended = try String.fetchAll(db, sql: """
                SELECT id_hash FROM web_session
                WHERE account_id = ? AND id_hash <> ? AND revoked_at IS NULL AND absolute_expires_at > ? AND last_seen_at > ? AND substr(id_hash, 1, 12) = ?
                """, arguments: [current.accountID, hash, at.epochMilliseconds, at.addingTimeInterval(-idle).epochMilliseconds, reference])
            guard !ended.isEmpty else { return false }
            for endedHash in ended {
                try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE id_hash = ? AND revoked_at IS NULL",
                               arguments: [at.epochMilliseconds, SessionEndReason.signedOutElsewhere.rawValue, endedHash])
            }
            try self.audit.append(AuditEvent(at: at, surface: "web", action: "other-sessions-revoked", outcome: "\(ended.count) revoked", actor: actor,
                                             requestID: nil, identifier: nil, accountID: current.accountID, changes: [],
                                             detail: "chosen on the page; kept session \(Self.sessionReference(hash: hash)), ended: "
                                                 + ended.map(Self.sessionReference(hash:)).joined(separator: " ")), in: db)
            return true
        }
    }

    /// « Fermer mes autres sessions »: every other live session of the account whose live
    /// session `token` names ends, and every sign-in of the account under way (a browser past
    /// the password, before its second factor, must not become a session afterwards), in one
    /// transaction with its audit event. The habilitation they carried goes with them at their
    /// next request (forward-auth reads the ledger). Returns how many live sessions ended; nil
    /// when `token` names no live session (nothing changed).
    public func revokeOtherSessions(keeping token: String, actor: AuditActor) async throws -> Int? {
        let at = now
        let idle = configuration.idleTimeout
        let hash = SecretToken.hash(token)
        return try await database.write { db in
            guard let current = try Self.liveSession(hash: hash, at: at, idle: idle, in: db),
                  let ended = try SessionLedger(idleTimeout: idle).revokeOthers(of: current.accountID, keeping: hash, reason: .signedOutElsewhere,
                                                                                at: at, in: db) else { return nil }
            try self.audit.append(AuditEvent(at: at, surface: "web", action: "other-sessions-revoked", outcome: "\(ended.sessions) revoked", actor: actor,
                                             requestID: nil, identifier: nil, accountID: current.accountID, changes: [],
                                             detail: (["kept session \(Self.sessionReference(hash: hash))", ended.summary].filter { !$0.isEmpty }).joined(separator: ", ")), in: db)
            return ended.sessions
        }
    }

    /// A session's name in the audit trail and admin views: the first 12 hex digits of the
    /// hash of its id (the id itself is a bearer secret and never shown).
    public static func sessionReference(hash: String) -> String { String(hash.prefix(12)) }

    /// Sign-out: the session ends, and with it any habilitation it carried. Returns the sealed
    /// ID token of a provider session (for the provider's sign-out), nil otherwise.
    @discardableResult
    public func revoke(_ token: String, reason: SessionEndReason, actor: AuditActor = AuditActor(subject: "web")) async throws -> [UInt8]? {
        let at = now
        let hash = SecretToken.hash(token)
        return try await database.write { db in
            guard let row = try SQLRow.fetchOne(db, sql: "SELECT account_id, oidc_id_token FROM web_session WHERE id_hash = ? AND revoked_at IS NULL",
                                             arguments: [hash]) else { return nil }
            let accountID: String = row["account_id"]
            try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE id_hash = ? AND revoked_at IS NULL",
                           arguments: [at.epochMilliseconds, reason.rawValue, hash])
            try self.audit.append(AuditEvent(at: at, surface: "web", action: reason.rawValue, outcome: "session ended", actor: actor, requestID: nil,
                                             identifier: nil, accountID: accountID, changes: [], detail: "session \(Self.sessionReference(hash: hash))"), in: db)
            return (row["oidc_id_token"] as Data?).map { [UInt8]($0) }
        }
    }

    /// OpenID Connect back-channel logout, in one transaction: remembers the logout (its `jti`
    /// for ``SessionConfiguration/providerLogoutMemory``: a second delivery, to this instance
    /// or another, is a replay and returns nil, ending nothing), ends at once every live
    /// provider session and provider flow in progress of the provider's session `sid` when
    /// given, else of the subject `sub`, and leaves the mark that refuses a callback of that
    /// session already under way (``startProviderFlow(match:login:identity:auditDetail:actor:completeIf:address:userAgent:replacing:decide:)``).
    /// Returns the sessions ended. If the transaction fails, nothing is recorded, and the
    /// provider's retry of the same token is acted on (but if its COMMIT went out unanswered
    /// and had been applied, the retry is refused as a replay: the sessions are ended all the
    /// same, the provider only logs a failure).
    public func recordProviderLogout(_ logout: ProviderLogout, actor: AuditActor) async throws -> Int? {
        let at = now
        let subject = logout.subject, sessionID = logout.sessionID
        guard subject != nil || sessionID != nil else { return 0 }
        // With both: that provider session, or (for sessions whose ID token had no `sid`) that
        // subject's.
        let match = sessionID != nil ? (subject != nil ? "(oidc_session_id = ? OR oidc_session_id IS NULL) AND oidc_subject = ?" : "oidc_session_id = ?")
                                     : "oidc_subject = ?"
        let arguments = SQLArguments([sessionID, subject].compactMap { $0 })
        let expires = at.addingTimeInterval(configuration.providerLogoutMemory)
        return try await database.write { db in
            try db.execute(sql: """
                INSERT INTO provider_logout (jti_hash, subject, session_id, received_at, expires_at) VALUES (?, ?, ?, ?, ?)
                ON CONFLICT (jti_hash) DO NOTHING
                """, arguments: [SecretToken.hash(logout.jti), subject, sessionID, at.epochMilliseconds, expires.epochMilliseconds])
            guard try db.changesCount == 1 else { return nil }
            let rows = try SQLRow.fetchAll(db, sql: """
                SELECT id_hash, account_id FROM web_session WHERE authentication = 'psc' AND revoked_at IS NULL AND \(match)
                 ORDER BY created_at, id_hash
                """, arguments: arguments)
            for row in rows {
                let hash: String = row["id_hash"]
                try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE id_hash = ?",
                               arguments: [at.epochMilliseconds, SessionEndReason.providerLogout.rawValue, hash])
                try self.audit.append(AuditEvent(at: at, surface: "web", action: "provider-logout", outcome: "session ended", actor: actor,
                                                 requestID: nil, identifier: nil, accountID: row["account_id"], changes: [],
                                                 detail: "session \(Self.sessionReference(hash: hash)) (back-channel logout)"), in: db)
            }
            try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ? WHERE authentication = 'psc' AND consumed_at IS NULL AND \(match)",
                           arguments: [at.epochMilliseconds] + arguments)
            return rows.count
        }
    }
}

/// A sign-in that proved both factors for an account that may not hold a session: deactivated
/// by the SAS, or suspended by the vendor (see ``SessionStore/completeFlow(flowToken:address:userAgent:actor:replacing:decide:)``).
public struct SignInRefused: Error, Sendable, Equatable {
    public let accountID: String
    public let reason: HabilitationDenial
    /// Why the refusal could not be recorded (the flow's end, its audit row), if it could not.
    public internal(set) var recordFailure: String? = nil

    /// The denials that refuse the session itself; the others (a direct origin, a step owed)
    /// still open one, without the habilitation.
    static let refusing: Set<HabilitationDenial> = [.deactivatedBySAS, .suspendedByVendor]
}
