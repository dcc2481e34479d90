@testable import Accounts
import Foundation
import NIOCore
import NIOPosix
import Storage
import StorageTesting
import Habilitation
import Synchronization
import Testing

struct ProviderLoginRefused: Error {}

/// A count several tasks add to.
final class SharedCount: Sendable {
    private let count = Atomic<Int>(0)
    var value: Int { count.load(ordering: .sequentiallyConsistent) }
    func add() { count.add(1, ordering: .sequentiallyConsistent) }
}

final class ManualClock: Sendable {
    private let current = Mutex(Date(timeIntervalSince1970: 1_800_000_000))
    var now: Date { current.withLock { $0 } }
    func advance(_ seconds: TimeInterval) { current.withLock { $0 = $0.addingTimeInterval(seconds) } }
}

/// A database with one regulator account that has set a password, enrolled TOTP and accepted
/// CGU v1, plus the stores under test, all on one manual clock.
struct World {
    let clock = ManualClock()
    let database: AccountDatabase
    let provisioner: Provisioner
    let credentials: CredentialStore
    let sessions: SessionStore
    let habilitation: HabilitationService
    let accountID: String
    /// Where the database lives (the SQLite file `db.sqlite` in it).
    let directory: URL
    let actor = AuditActor(subject: "browser")
    static let national = RegulatorIdentifier.national(NationalID("810002673899")!)
    static let key: [UInt8] = Array(repeating: 3, count: 32)

    init(complete: Bool = true, poolSize: Int = 4) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("habilitation-\(UUID().uuidString)")
        self.directory = directory
        database = try await TestStore.database(in: directory, poolSize: poolSize)
        let hasher = PasswordHasher(parameters: Argon2Parameters(memoryKiB: 64, iterations: 1, parallelism: 1), threads: 2)
        let clock = self.clock
        provisioner = Provisioner(database: database, hasher: hasher, sessions: SessionLedger(), clock: { clock.now })
        credentials = try CredentialStore(database: database, hasher: hasher, box: try SecretBox(key: Self.key), sessions: SessionLedger(), clock: { clock.now })
        sessions = SessionStore(database: database, serverKey: TestKeys.server, clock: { clock.now })
        habilitation = HabilitationService(database: database, sessions: sessions, cguVersion: "v1", clock: { clock.now })
        accountID = try await provisioner.provision(.create(World.record(active: true)), context: CallContext(actor: actor)).account.id
        if complete { try await completeRequiredActions() }
    }

    static func record(active: Bool) throws -> RegulatorRecord {
        RegulatorRecord(nationalID: NationalID("810002673899"), active: active, familyName: "MARIUS", givenName: "Jules",
                        email: EmailAddress("jules.marius@test.com")!)
    }

    func completeRequiredActions() async throws {
        try await credentials.requestPasswordReset(email: "jules.marius@test.com", makeMail: { token, _ in
            OutgoingMail(recipient: "x", subject: "x", body: token)
        }, actor: actor)
        let outbox = MailOutbox(box: try SecretBox(key: Self.key))
        let token = try #require(try await database.read { db in try outbox.due(at: .distantFuture, in: db) }.last?.mail?.body, "the reset mail was queued")
        _ = try await credentials.resetPassword(token: token, newPassword: "Vélo-rouge-sur-la-Loire", actor: actor)
        let secret = try #require(try await credentials.beginTOTPEnrolment(accountID: accountID))
        let totp = TOTP()
        _ = try await credentials.confirmTOTPEnrolment(accountID: accountID, code: totp.code(secret: secret, step: totp.step(at: clock.now)), actor: actor)
        try await credentials.acceptCGU(accountID: accountID, version: "v1", address: nil, actor: actor)
    }

    /// Signs in the way the web surface does: intent (if any) → flow → second factor → session.
    func signIn(origin: SessionOrigin?) async throws -> String {
        var intentToken: String?
        if let origin {
            intentToken = sessions.createIntent(LoginIntent(origin: origin, originValue: origin.rawValue, returnURL: "https://agenda.example/p"))
        }
        let flow = try await sessions.startFlow(accountID: accountID, intentToken: intentToken)
        try await sessions.markSecondFactorDone(flowToken: flow)
        return try #require(try await sessions.completeFlow(flowToken: flow, address: "192.0.2.1", userAgent: "test", actor: actor)).token
    }
}

@Suite("Sessions and the habilitation check")
struct SessionAndHabilitationTests {
    @Test func sasSessionWithEverythingDoneIsHabilitated() async throws {
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        let check = try await world.habilitation.check(sessionToken: token)
        #expect(check.decision == .granted)
        #expect(check.session?.origin == .sas)
    }

    /// A session opened moments ago tells where its sign-in sent the browser (a form of that
    /// sign-in sent again goes there too); after a minute, once ended, or for a session with
    /// no return URL, it says so.
    @Test func aJustOpenedSessionKnowsWhereItsSignInWent() async throws {
        let world = try await World()
        let sas = try await world.signIn(origin: .sas)
        let direct = try await world.signIn(origin: nil)
        #expect(try await world.sessions.justOpened(sas, within: 60) == RecentSignIn(returnURL: "https://agenda.example/p"))
        #expect(try await world.sessions.justOpened(direct, within: 60) == RecentSignIn(returnURL: nil))
        #expect(try await world.sessions.justOpened("not-a-session", within: 60) == nil)
        world.clock.advance(61)
        #expect(try await world.sessions.justOpened(sas, within: 60) == nil, "a minute later it is another sign-in")
        let ended = try await world.signIn(origin: .sas)
        try await world.sessions.revoke(ended, reason: .signOut)
        #expect(try await world.sessions.justOpened(ended, within: 60) == nil)
    }

    /// The purge deletes spent and expired intents and flows at once, ended sessions, dead
    /// reset links and outbox rows after the retention, and never the audit trail; a live
    /// session survives it.
    @Test func purgeRemovesWhatIsDeadAndKeepsTheAudit() async throws {
        let world = try await World()
        func count(_ table: String) async throws -> Int {
            try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0 }
        }
        // Rows the version before sealed intents left (nothing writes the table now).
        let intentExpiry = world.clock.now.addingTimeInterval(10 * 60).epochMilliseconds
        try await world.database.write { db in
            try db.execute(sql: """
                INSERT INTO login_intent (id_hash, origin, return_url, created_at, expires_at, consumed_at)
                VALUES ('spent', 'sas', 'https://agenda.example/p', 0, ?, 1), ('live', 'sas', 'https://agenda.example/p', 0, ?, NULL)
                """, arguments: [intentExpiry, intentExpiry])
        }
        // A spent provider state stays while it could be presented again.
        let intent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        guard case .accepted(let login) = world.sessions.providerLogin(state: try #require(world.sessions.createProviderLogin(intentToken: intent)), intentToken: intent),
              try await world.sessions.spendProviderLogin(login) else {
            Issue.record("a state of this browser")
            return
        }
        let ended = try await world.signIn(origin: .sas)
        try await world.sessions.revoke(ended, reason: .signOut)
        let live = try await world.signIn(origin: .sas)
        try await world.credentials.requestPasswordReset(email: "jules.marius@test.com", makeMail: { token, _ in
            OutgoingMail(recipient: "x", subject: "x", body: token)
        }, actor: world.actor)
        let audit = try await count("audit_event")
        #expect(try await count("login_intent") == 2)
        #expect(try await count("sign_in_flow") == 2)

        // Spent intents and flows go at once; the unexpired unused intent stays, and so does
        // the spent state.
        _ = try await world.sessions.purge(retention: 30 * 86400)
        #expect(try await count("login_intent") == 1)
        #expect(try await count("oidc_login") == 1)
        #expect(try await count("sign_in_flow") == 0)
        #expect(try await count("web_session") == 2)

        world.clock.advance(20 * 60)
        _ = try await world.habilitation.check(sessionToken: live)  // activity keeps it alive
        _ = try await world.sessions.purge(retention: 30 * 86400)
        #expect(try await count("login_intent") == 0, "expired intent")
        #expect(try await count("oidc_login") == 0, "a state past its intent's lifetime")
        world.clock.advance(31 * 86400)
        let deleted = try await world.sessions.purge(retention: 30 * 86400) + world.credentials.purge(retention: 30 * 86400)
        #expect(deleted >= 4)
        for table in ["web_session", "password_reset_token", "mail_outbox", "login_intent", "sign_in_flow"] {
            #expect(try await count(table) == 0, "\(table)")
        }
        #expect(try await count("audit_event") >= audit, "the audit trail is never purged")

        // Within the retention, an ended session is kept for the admin's view.
        let recent = try await world.signIn(origin: .sas)
        try await world.sessions.revoke(recent, reason: .signOut)
        _ = try await world.sessions.purge(retention: 30 * 86400)
        #expect(try await count("web_session") == 1)
    }

    /// The retention pass scrubs the database's log once it has deleted something: an ended
    /// session's browser string (personal data the retention period promises to delete) is
    /// then nowhere in SQLite's files. A purge alone leaves it in the `-wal` file's earlier
    /// page images, which the first half shows.
    @Test func theRetentionPassLeavesNoCopyOfWhatItPurged() async throws {
        let world = try await World()
        let purge = Retention(database: world.database, sessions: world.sessions, credentials: world.credentials)
        func endedSession(_ userAgent: String) async throws {
            let flow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: nil)
            try await world.sessions.markSecondFactorDone(flowToken: flow)
            let token = try #require(try await world.sessions.completeFlow(flowToken: flow, address: "192.0.2.1", userAgent: userAgent, actor: world.actor)).token
            try await world.sessions.revoke(token, reason: .signOut)
        }
        let files = ["db.sqlite", "db.sqlite-wal"].map { world.directory.appendingPathComponent($0).path }
        func copies(_ text: String) -> Int {
            files.reduce(0) { $0 + (FileManager.default.contents(atPath: $1).map { $0.ranges(of: Data(text.utf8)).count } ?? 0) }
        }
        let first = "Navigateur-\(UUID().uuidString)", second = "Navigateur-\(UUID().uuidString)"
        try await endedSession(first)
        world.clock.advance(31 * 86400)
        #expect(try await world.sessions.purge(retention: 30 * 86400) > 0)
        if TestStore.kind == .sqlite { #expect(copies(first) > 0, "a purge alone leaves earlier copies in the log") }
        try await endedSession(second)
        world.clock.advance(31 * 86400)
        let pass = try await purge.purge(retention: 30 * 86400)
        #expect(pass.deleted > 0 && pass.log == (TestStore.kind == .sqlite ? .truncated : .notApplicable), "\(pass)")
        if TestStore.kind == .sqlite {
            #expect(copies(first) == 0 && copies(second) == 0, "the purged sessions' browser strings are still in the files")
        }
        // Nothing to delete: no scrub (a pass every 10 minutes waits on no reader for nothing).
        #expect(try await purge.purge(retention: 30 * 86400) == Retention.Pass(deleted: 0, log: nil))
    }

    /// A scrub that did not complete is owed: the next pass scrubs even with nothing to
    /// delete, and once it completes no pass scrubs for nothing.
    @Test func aScrubThatFailedIsTriedAgainAtTheNextPass() async throws {
        let world = try await World()
        let purge = Retention(database: AccountDatabase(engine: ScrubFailingOnceEngine(inner: world.database.engine)),
                              sessions: world.sessions, credentials: world.credentials)
        try await world.sessions.revoke(try await world.signIn(origin: .sas), reason: .signOut)
        world.clock.advance(31 * 86400)
        let first = try await purge.purge(retention: 30 * 86400)
        #expect(first.deleted > 0 && first.log == .failed && first.failure != nil, "\(first)")
        let second = try await purge.purge(retention: 30 * 86400)
        #expect(second == Retention.Pass(deleted: 0, log: TestStore.kind == .sqlite ? .truncated : .notApplicable), "\(second)")
        #expect(try await purge.purge(retention: 30 * 86400) == Retention.Pass(deleted: 0, log: nil))
    }

    /// A Pro Santé Connect sign-in: no password of ours and no TOTP owed (the provider stands
    /// for both factors), the CGU still; its state works once and only for its own browser;
    /// back-channel logout ends it by subject, and its sealed ID token does not outlive it.
    @Test func providerSessionsOweOnlyTheCGU() async throws {
        let world = try await World(complete: false)
        let intent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        let state = try #require(world.sessions.createProviderLogin(intentToken: intent))
        // Sealed: decided without the database, and only for the intent the state names.
        let anotherIntent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        #expect(world.sessions.providerLogin(state: state, intentToken: "another-browser") == .otherBrowser)
        #expect(world.sessions.providerLogin(state: state, intentToken: anotherIntent) == .otherBrowser, "another intent of the same kind")
        #expect(world.sessions.providerLogin(state: state, intentToken: nil) == .otherBrowser)
        #expect(world.sessions.providerLogin(state: "made-up", intentToken: intent) == .unknown)
        // Altered (the seal's tag fails), or written otherwise: the last character of 52
        // bytes in base64url carries 4 unused bits, which Foundation ignores; a state spent by
        // the hash of its text must have one text only.
        var altered = Array(state.utf8)
        altered[20] = altered[20] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        #expect(world.sessions.providerLogin(state: String(decoding: altered, as: UTF8.self), intentToken: intent) == .unknown, "altered")
        let unusedBits: [Character: Character] = ["A": "B", "Q": "R", "g": "h", "w": "x"]
        let reencoded = String(state.dropLast()) + String(try #require(unusedBits[state.last!], "the last character of \(state.count)"))
        #expect(world.sessions.providerLogin(state: reencoded, intentToken: intent) == .unknown, "re-encoded")
        #expect(world.sessions.providerLogin(state: intent, intentToken: intent) == .unknown, "an intent is no state")
        #expect(world.sessions.createProviderLogin(intentToken: state) == nil, "nor a state an intent")
        let otherKey = SessionStore(database: world.database, serverKey: Array(repeating: 9, count: 32), clock: { world.clock.now })
        #expect(otherKey.providerLogin(state: state, intentToken: intent) == .unknown && otherKey.intent(intent) == nil, "another installation's key")
        guard case .accepted(let login) = world.sessions.providerLogin(state: state, intentToken: intent) else {
            Issue.record("this browser's state is accepted")
            return
        }
        #expect(login.intent.origin == .sas && login.intent.returnURL == "https://agenda.example/p")
        let rows = try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM oidc_login") }
        #expect(rows == 0, "nothing written until the state is spent")
        #expect(try await world.sessions.spendProviderLogin(login))
        let otherInstance = SessionStore(database: world.database, serverKey: TestKeys.server, clock: { world.clock.now })
        #expect(try await !otherInstance.spendProviderLogin(login), "a state works once, on any instance")
        _ = try await world.sessions.purge(retention: 0)
        #expect(try await !world.sessions.spendProviderLogin(login), "and stays spent while it could be presented")
        // A state lives as long as its intent.
        let late = try #require(world.sessions.createProviderLogin(intentToken: intent))
        world.clock.advance(world.sessions.configuration.intentLifetime + 1)
        #expect(world.sessions.providerLogin(state: late, intentToken: intent) == .unknown)
        #expect(world.sessions.createProviderLogin(intentToken: intent) == nil, "an expired intent starts nothing")
        let fresh = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        let second = try #require(world.sessions.createProviderLogin(intentToken: fresh))
        guard case .accepted(let secondLogin) = world.sessions.providerLogin(state: second, intentToken: fresh),
              try await world.sessions.spendProviderLogin(secondLogin) else {
            Issue.record("this browser's state is accepted")
            return
        }
        #expect(try await world.habilitation.providerAccount(nationalID: "810002673899") == .eligible(accountID: world.accountID))
        #expect(try await world.habilitation.providerAccount(nationalID: "810000000000") == .unknown)
        let habilitation = world.habilitation
        let decide: @Sendable (String, SessionOrigin, SessionAuthentication, any SQLTransaction) throws -> HabilitationDecision = {
            try habilitation.decisionForNewSession(accountID: $0, origin: $1, authentication: $2, in: $3)
        }
        // The CGU are not accepted yet: a flow, no session.
        let opened = try await world.sessions.startProviderFlow(
            match: { db in try habilitation.providerAccount(nationalID: "810002673899", in: db) },
            login: secondLogin, identity: ProviderIdentity(subject: "psc-sub", sessionID: nil, sealedIDToken: [1, 2, 3]),
            auditDetail: "SubjectNameID=810002673899", actor: world.actor,
            completeIf: { accountID, db in try habilitation.hasAcceptedCGU(accountID: accountID, in: db) }, address: nil, userAgent: nil, decide: decide)
        guard case .opened(let flowToken, nil) = opened else { Issue.record("a flow, no session: \(opened)"); return }
        let session = try #require(try await world.sessions.completeFlow(flowToken: flowToken, address: nil, userAgent: nil, actor: world.actor,
                                                                          decide: decide))
        #expect(session.origin == .sas)
        var check = try await world.habilitation.check(sessionToken: session.token)
        #expect(check.session?.authentication == .psc && check.pendingActions == [.acceptCGU], "\(check.pendingActions)")
        try await world.credentials.acceptCGU(accountID: world.accountID, version: "v1", address: nil, actor: world.actor)
        check = try await world.habilitation.check(sessionToken: session.token)
        #expect(check.decision == .granted, "no password, no TOTP, CGU accepted")
        // The same account signed in with a password still owes its own steps.
        let password = try await world.signIn(origin: .sas)
        #expect(try await world.habilitation.check(sessionToken: password).pendingActions == [.setPassword, .enrolSecondFactor])
        #expect(try await world.sessions.recordProviderLogout(ProviderLogout(jti: "logout-1", subject: "psc-sub", sessionID: nil), actor: world.actor) == 1)
        #expect(try await world.habilitation.check(sessionToken: session.token).decision == .denied([.noLiveSession]))
        #expect(try await world.habilitation.check(sessionToken: password).session != nil, "a password session is not the provider's")
        let sealed = try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session WHERE oidc_id_token IS NOT NULL") }
        #expect(sealed == 0)
    }

    /// A Pro Santé Connect session was matched on the account's national id: when the SAS
    /// replaces it (a correction: it was someone else's), that session and the sign-ins under
    /// way through the provider end in the same transaction; password sessions stay.
    @Test func providerSessionsEndWhenTheirNationalIDIsReplaced() async throws {
        let world = try await World()
        guard case .opened(_, let provider?) = try await providerCallback(world, identity: ProviderIdentity(subject: "psc-sub", sessionID: "s1", sealedIDToken: nil)) else {
            Issue.record("a provider session opens")
            return
        }
        let password = try await world.signIn(origin: .sas)
        #expect(try await world.habilitation.check(sessionToken: provider.token).decision.isGranted)
        let corrected = RegulatorRecord(nationalID: NationalID("810000000017"), active: true, familyName: "MARIUS", givenName: "Jules",
                                        email: EmailAddress("jules.marius@test.com")!)
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, corrected, ifMatch: nil), context: CallContext(actor: world.actor))
        #expect(try await world.habilitation.check(sessionToken: provider.token).decision == .denied([.noLiveSession]))
        #expect(try await world.habilitation.check(sessionToken: password).decision.isGranted, "a password session is the account's own")
        let event = try await world.database.read { db in
            try String.fetchOne(db, sql: "SELECT outcome FROM audit_event WHERE action = 'sessions-revoked' ORDER BY seq DESC LIMIT 1")
        }
        #expect(event == "national id replaced")
    }

    /// A provider callback as the web surface makes it: a login started now (or as given),
    /// then the flow for `identity`, the account matched in its transaction.
    func providerCallback(_ world: World, identity: ProviderIdentity, startedAt: Date? = nil, termsDue: Bool = false,
                          replacing previous: String? = nil) async throws -> ProviderFlowStart {
        let intent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        let state = try #require(world.sessions.createProviderLogin(intentToken: intent))
        guard case .accepted(var login) = world.sessions.providerLogin(state: state, intentToken: intent),
              try await world.sessions.spendProviderLogin(login) else {
            throw ProviderLoginRefused()
        }
        if let startedAt { login.startedAt = startedAt }
        let habilitation = world.habilitation
        return try await world.sessions.startProviderFlow(
            match: { db in try habilitation.providerAccount(nationalID: "810002673899", in: db) },
            login: login, identity: identity, auditDetail: "test", actor: world.actor,
            completeIf: { accountID, db in try !termsDue && habilitation.hasAcceptedCGU(accountID: accountID, in: db) }, address: nil, userAgent: nil,
            replacing: previous, decide: { try habilitation.decisionForNewSession(accountID: $0, origin: $1, authentication: $2, in: $3) })
    }

    /// A session opened through the provider and ended here by someone else than its browser
    /// (« Fermer mes autres sessions », an admin, a password change or reset) does not open
    /// again from the provider session it came from (its `sid`, or any when a `sid` is
    /// missing) until the provider has authenticated the user after the end; ended by its
    /// own browser's sign-out, by the provider, or replaced, it does. The login that asked
    /// the provider again carries the mark, so that its callback can be refused, not sent
    /// back in a loop.
    @Test func aSessionEndedRemotelyOpensAgainOnlyAfterANewAuthentication() async throws {
        let world = try await World()
        let administration = VendorAdministration(database: world.database, clock: { world.clock.now })
        let signedIn = world.clock.now
        func identity(_ sid: String?, at: Date? = signedIn) -> ProviderIdentity {
            ProviderIdentity(subject: "psc-sub", sessionID: sid, sealedIDToken: nil, authenticatedAt: at)
        }
        func opened(_ start: ProviderFlowStart) -> String? { if case .opened(_, let session?) = start { session.token } else { nil } }
        func endedAt(_ start: ProviderFlowStart) -> Date? {
            if case .reauthenticationRequired(let id, let at) = start, id == world.accountID { at } else { nil }
        }
        let kept = try await world.signIn(origin: .sas)
        #expect(opened(try await providerCallback(world, identity: identity("sid-a"))) != nil)
        #expect(opened(try await providerCallback(world, identity: identity("sid-b"))) != nil)
        world.clock.advance(5)
        let closedAt = world.clock.now
        #expect(try await world.sessions.revokeOtherSessions(keeping: kept, actor: world.actor) == 2)
        world.clock.advance(5)
        // The provider session of a session closed remotely: not without a new authentication.
        #expect(endedAt(try await providerCallback(world, identity: identity("sid-a"))) == closedAt)
        #expect(endedAt(try await providerCallback(world, identity: identity("sid-a", at: closedAt))) == closedAt, "authenticated at the end's millisecond")
        #expect(endedAt(try await providerCallback(world, identity: identity("sid-a", at: nil))) == closedAt, "no auth_time: not known to be after")
        #expect(endedAt(try await providerCallback(world, identity: identity(nil))) == closedAt, "no sid: any of the subject's")
        #expect(opened(try await providerCallback(world, identity: identity("sid-c"))) != nil, "another provider session opens")
        #expect(opened(try await providerCallback(world, identity: identity("sid-a", at: closedAt.addingTimeInterval(1)))) != nil,
                "authenticated again after the end")
        let refusedFlows = try await world.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow WHERE authentication = 'psc' AND (oidc_session_id = 'sid-a' OR oidc_session_id IS NULL)")
        }
        #expect(refusedFlows == 2, "the first and the one authenticated again; nothing for the refused callbacks: \(refusedFlows ?? -1)")

        // A sign-in through the provider waiting on the terms of use, ended remotely: the same.
        guard case .opened(_, nil) = try await providerCallback(world, identity: identity("sid-f"), termsDue: true) else {
            Issue.record("a flow waiting on the terms")
            return
        }
        world.clock.advance(5)
        let flowClosedAt = world.clock.now
        #expect(try await world.sessions.revokeOtherSessions(keeping: kept, actor: world.actor) != nil)
        world.clock.advance(5)
        _ = try await world.sessions.purge(retention: 3600)
        #expect(endedAt(try await providerCallback(world, identity: identity("sid-f"))) == flowClosedAt, "kept by the purge within the retention")

        // Ended by its own browser's sign-out: opens again from the same provider session.
        let ownSignIn = world.clock.now
        let own = try #require(opened(try await providerCallback(world, identity: identity("sid-e", at: ownSignIn))))
        world.clock.advance(5)
        _ = try await world.sessions.revoke(own, reason: .signOut, actor: world.actor)
        #expect(opened(try await providerCallback(world, identity: identity("sid-e", at: ownSignIn))) != nil)

        // An admin's revoke-sessions: every session of the account, each provider session.
        world.clock.advance(5)
        let revokedAt = world.clock.now
        _ = try #require(try await administration.revokeSessions(accountID: world.accountID, actor: AuditActor(subject: "cli:test")))
        world.clock.advance(5)
        #expect(endedAt(try await providerCallback(world, identity: identity("sid-e", at: revokedAt.addingTimeInterval(-1)))) == revokedAt)

        // A back-channel logout ends the provider's session: its next one opens.
        world.clock.advance(5)
        let fresh = world.clock.now
        #expect(opened(try await providerCallback(world, identity: identity("sid-d", at: fresh))) != nil)
        world.clock.advance(world.sessions.configuration.providerLogoutClockMargin + 1)
        #expect(try await world.sessions.recordProviderLogout(ProviderLogout(jti: "bcl", subject: "psc-sub", sessionID: "sid-d"), actor: world.actor) == 1)
        world.clock.advance(world.sessions.configuration.providerLogoutClockMargin + 1)
        #expect(opened(try await providerCallback(world, identity: identity("sid-d", at: fresh))) != nil, "not a remote end")

        // Remembered as long as the ended session is kept (the retention period).
        world.clock.advance(86400)
        _ = try await world.sessions.purge(retention: 3600)
        #expect(opened(try await providerCallback(world, identity: identity("sid-a", at: signedIn))) != nil, "purged: forgotten")

        // The login that asks the provider again is marked as such, sealed in its state.
        let intent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        for mark in [false, true] {
            let state = try #require(world.sessions.createProviderLogin(intentToken: intent, reauthentication: mark))
            guard case .accepted(let login) = world.sessions.providerLogin(state: state, intentToken: intent) else {
                Issue.record("the state opens")
                continue
            }
            #expect(login.reauthenticationAsked == mark)
        }
    }

    /// The browser that closes the others is not shut out by its own act: its earlier
    /// session, expired, was ended as replaced when it signed in again (told by its cookie),
    /// and its next provider sign-in opens without asking again. Told by the cookie, not the
    /// `sid`: another browser's expired session with the same `sid` (a provider sharing one)
    /// is ended as any other. A session replaced by another account's sign-in in its browser
    /// (a shared workstation) is recorded as such, and its provider session asked again.
    @Test func closingTheOthersSparesTheClosersOwnBrowser() async throws {
        let world = try await World()
        let signedIn = world.clock.now
        func identity(_ sid: String) -> ProviderIdentity {
            ProviderIdentity(subject: "psc-sub", sessionID: sid, sealedIDToken: nil, authenticatedAt: signedIn)
        }
        func opened(_ start: ProviderFlowStart) -> String? { if case .opened(_, let session?) = start { session.token } else { nil } }
        func askedAgain(_ start: ProviderFlowStart) -> Bool { if case .reauthenticationRequired = start { true } else { false } }
        func reasons() async throws -> [String: String] {
            try await world.database.read { db in
                try SQLRow.fetchAll(db, sql: "SELECT id_hash, revoked_reason FROM web_session WHERE revoked_reason IS NOT NULL")
                    .reduce(into: [:]) { $0[$1["id_hash"] as String] = $1["revoked_reason"] as String }
            }
        }
        let earlier = try #require(opened(try await providerCallback(world, identity: identity("sid-k"))))
        let elsewhere = try #require(opened(try await providerCallback(world, identity: identity("sid-x"))))
        world.clock.advance(world.sessions.configuration.idleTimeout + 1)
        let kept = try #require(opened(try await providerCallback(world, identity: identity("sid-k"), replacing: earlier)))
        #expect(try await world.sessions.revokeOtherSessions(keeping: kept, actor: world.actor) == 0, "the others had expired")
        var recorded = try await reasons()
        #expect(recorded[SecretToken.hash(earlier)] == SessionEndReason.sessionReplaced.rawValue, "\(recorded)")
        #expect(recorded[SecretToken.hash(elsewhere)] == SessionEndReason.signedOutElsewhere.rawValue, "\(recorded)")
        world.clock.advance(5)
        #expect(opened(try await providerCallback(world, identity: identity("sid-k"))) != nil, "the closer's browser is not asked again")
        #expect(askedAgain(try await providerCallback(world, identity: identity("sid-x"))), "the other browser is")

        // Another browser with the closer's `sid`, expired: ended as any other.
        let shared = try #require(opened(try await providerCallback(world, identity: identity("sid-k"))))
        world.clock.advance(world.sessions.configuration.idleTimeout + 1)
        let keptAgain = try #require(opened(try await providerCallback(world, identity: identity("sid-y"))))
        _ = try await world.sessions.revokeOtherSessions(keeping: keptAgain, actor: world.actor)
        recorded = try await reasons()
        #expect(recorded[SecretToken.hash(shared)] == SessionEndReason.signedOutElsewhere.rawValue, "\(recorded)")
        world.clock.advance(5)
        #expect(askedAgain(try await providerCallback(world, identity: identity("sid-k"))))

        // Replaced by another account's sign-in in its browser (a password one here).
        world.clock.advance(5)
        let workstation = try #require(opened(try await providerCallback(world, identity: identity("sid-w"), startedAt: nil)))
        let otherAccount = try await world.provisioner.provision(.create(RegulatorRecord(
            sasTechnicalID: SASTechnicalID(UUID().uuidString.lowercased()), active: true, familyName: "AUTRE", givenName: "Alice",
            email: EmailAddress("alice.autre@test.com")!)), context: CallContext(actor: world.actor)).account.id
        let flow = try await world.sessions.startFlow(accountID: otherAccount, intentToken: nil)
        try await world.sessions.markSecondFactorDone(flowToken: flow)
        let habilitation = world.habilitation
        _ = try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: nil, actor: world.actor, replacing: workstation,
                                                  decide: { try habilitation.decisionForNewSession(accountID: $0, origin: $1, authentication: $2, in: $3) })
        recorded = try await reasons()
        #expect(recorded[SecretToken.hash(workstation)] == SessionEndReason.replacedByAnotherAccount.rawValue, "\(recorded)")
        let replacedEvent = try await world.database.read { db in
            try String.fetchOne(db, sql: "SELECT detail FROM audit_event WHERE action = 'session-replaced' ORDER BY seq DESC LIMIT 1")
        }
        #expect(replacedEvent?.contains("another account") == true, "\(replacedEvent ?? "-")")
        world.clock.advance(5)
        #expect(askedAgain(try await providerCallback(world, identity: identity("sid-w"))), "its holder's provider session is asked again")
    }

    /// « Fermer cette autre session » ends only a live session of the account asking: another
    /// account's, named by its reference, stays.
    @Test func closingOneSessionStaysWithinTheAccount() async throws {
        let world = try await World()
        let mine = try await world.signIn(origin: .sas), other = try await world.signIn(origin: .sas)
        let otherAccount = try await world.provisioner.provision(.create(RegulatorRecord(
            sasTechnicalID: SASTechnicalID("3f0c2a1e-9b7d-4c55-8e21-6a4b3c2d1e0f"), active: true, familyName: "AUTRE", givenName: "Alice",
            email: EmailAddress("alice.autre@test.com")!)), context: CallContext(actor: world.actor)).account.id
        let flow = try await world.sessions.startFlow(accountID: otherAccount, intentToken: nil)
        try await world.sessions.markSecondFactorDone(flowToken: flow)
        let habilitation = world.habilitation
        let foreign = try #require(try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: nil, actor: world.actor,
                                                                        decide: { try habilitation.decisionForNewSession(accountID: $0, origin: $1, authentication: $2, in: $3) }))
        let foreignReference = SessionStore.sessionReference(hash: SecretToken.hash(foreign.token))
        #expect(try await world.sessions.revokeOtherSession(reference: foreignReference, keeping: mine, actor: world.actor) == false)
        #expect(try await world.sessions.session(foreign.token) != nil, "another account's session stays")
        #expect(try await world.sessions.revokeOtherSession(reference: SessionStore.sessionReference(hash: SecretToken.hash(other)), keeping: mine,
                                                           actor: world.actor) == true)
        #expect(try await world.sessions.session(other) == nil)
        #expect(try await world.sessions.session(mine) != nil)
        #expect(try await world.sessions.revokeOtherSession(reference: foreignReference, keeping: "not-a-session", actor: world.actor) == nil)
        // A Pro Santé Connect session closed so reopens only after a new authentication.
        let signedIn = world.clock.now
        let identity = ProviderIdentity(subject: "psc-sub", sessionID: "sid-one", sealedIDToken: nil, authenticatedAt: signedIn)
        guard case .opened(_, let provider?) = try await providerCallback(world, identity: identity) else {
            Issue.record("a provider session opens")
            return
        }
        world.clock.advance(5)
        #expect(try await world.sessions.revokeOtherSession(reference: SessionStore.sessionReference(hash: SecretToken.hash(provider.token)), keeping: mine,
                                                           actor: world.actor) == true)
        world.clock.advance(5)
        if case .reauthenticationRequired = try await providerCallback(world, identity: identity) {} else {
            Issue.record("its provider session is asked again")
        }
    }

    /// A back-channel logout that comes while a callback is under way (its login started,
    /// its flow not yet written; on any instance) makes that callback open nothing, if the
    /// logout would have ended the session the callback opens. A login started after the
    /// logout (beyond the instances' clock margin) opens normally, even in the provider
    /// session the logout named (a provider may end one client's part of a session only).
    @Test func aCallbackUnderWayWhenTheProviderLogsOutOpensNothing() async throws {
        let world = try await World()
        let margin = world.sessions.configuration.providerLogoutClockMargin
        let otherInstance = SessionStore(database: world.database, serverKey: TestKeys.server, clock: { world.clock.now })
        func identity(_ sid: String?) -> ProviderIdentity { ProviderIdentity(subject: "psc-sub", sessionID: sid, sealedIDToken: nil) }
        func refused(_ start: ProviderFlowStart) -> Bool { if case .loggedOutAtProvider(let id) = start { id == world.accountID } else { false } }
        func opened(_ start: ProviderFlowStart) -> Bool { if case .opened(_, _?) = start { true } else { false } }

        // By subject alone: every login of the subject started before it, with or without a
        // `sid`, and within the clock margin after it.
        let before = world.clock.now
        world.clock.advance(1)
        #expect(try await otherInstance.recordProviderLogout(ProviderLogout(jti: "by-subject", subject: "psc-sub", sessionID: nil), actor: world.actor) == 0)
        #expect(refused(try await providerCallback(world, identity: identity(nil), startedAt: before)))
        #expect(refused(try await providerCallback(world, identity: identity("sid-1"), startedAt: before)))
        world.clock.advance(margin / 2)
        #expect(refused(try await providerCallback(world, identity: identity(nil))), "within the clock margin")
        world.clock.advance(margin)
        #expect(opened(try await providerCallback(world, identity: identity(nil))), "a login started after the logout")
        #expect(opened(try await providerCallback(world, identity: identity("sid-1"))))

        // By `sid` and subject: that provider session's logins, and the subject's ID tokens
        // without a `sid` (the sessions it ends); not the subject's other provider sessions.
        let beforeSID = world.clock.now
        world.clock.advance(1)
        #expect(try await otherInstance.recordProviderLogout(ProviderLogout(jti: "by-sid", subject: "psc-sub", sessionID: "sid-2"), actor: world.actor) == 1,
                "it ends the session opened above without a sid")
        #expect(refused(try await providerCallback(world, identity: identity("sid-2"), startedAt: beforeSID)))
        #expect(refused(try await providerCallback(world, identity: identity(nil), startedAt: beforeSID)))
        #expect(opened(try await providerCallback(world, identity: identity("sid-3"), startedAt: beforeSID)))
        // By `sid` alone: that provider session only.
        world.clock.advance(margin + 1)
        let beforeSIDOnly = world.clock.now
        world.clock.advance(1)
        #expect(try await otherInstance.recordProviderLogout(ProviderLogout(jti: "sid-only", subject: nil, sessionID: "sid-4"), actor: world.actor) == 0)
        #expect(refused(try await providerCallback(world, identity: identity("sid-4"), startedAt: beforeSIDOnly)))
        #expect(opened(try await providerCallback(world, identity: identity(nil), startedAt: beforeSIDOnly)))
        // The provider kept the session the logout named: a login started later opens.
        world.clock.advance(margin + 1)
        #expect(opened(try await providerCallback(world, identity: identity("sid-2"))))
        #expect(opened(try await providerCallback(world, identity: identity("sid-4"))))
        let flows = try await world.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow WHERE oidc_session_id IN ('sid-2', 'sid-4')")
        }
        #expect(flows == 2, "nothing written for the refused callbacks")
        let sessions = try await world.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session WHERE oidc_subject = 'psc-sub'")
        }
        #expect(sessions == 6, "one session per callback opened, none for those refused")

        // Remembered for `providerLogoutMemory`, then purged.
        world.clock.advance(world.sessions.configuration.providerLogoutMemory)
        _ = try await world.sessions.purge(retention: 30 * 86400)
        let left = try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM provider_logout") }
        #expect(left == 0)
    }

    /// The logout and the callback at the same time: the callback has read the remembered
    /// logouts (none) and written its flow, and waits inside its transaction while the logout
    /// commits through another instance. Whichever order the engine settles on (PostgreSQL's
    /// SERIALIZABLE makes one of the two run again; SQLite's single writer runs them one
    /// after the other), the provider session does not survive here: the callback is
    /// refused, or the flow it opened is ended by the logout.
    @Test func aLogoutCommittedWhileACallbackWritesItsFlowLeavesNothingOpen() async throws {
        let world = try await World()
        let otherInstance = SessionStore(database: world.database, serverKey: TestKeys.server, clock: { world.clock.now })
        let intent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        let state = try #require(world.sessions.createProviderLogin(intentToken: intent))
        guard case .accepted(let login) = world.sessions.providerLogin(state: state, intentToken: intent) else {
            throw ProviderLoginRefused()
        }
        world.clock.advance(world.sessions.configuration.providerLogoutClockMargin + 1)
        let gate = DispatchSemaphore(value: 0)
        let waiting = Mutex(0)   // attempts of the callback's transaction that reached the gate
        let habilitation = world.habilitation, sessions = world.sessions
        let callback = Task {
            try await sessions.startProviderFlow(
                match: { db in try habilitation.providerAccount(nationalID: "810002673899", in: db) },
                login: login,
                identity: ProviderIdentity(subject: "psc-sub", sessionID: "sid-r", sealedIDToken: nil), auditDetail: "test", actor: AuditActor(subject: "browser"),
                completeIf: { _, db in
                    // The flow's INSERT goes out (a held-back write is sent with the next
                    // statement), then the first attempt waits for the logout.
                    _ = try Int.fetchOne(db, sql: "SELECT 1")
                    if waiting.withLock({ $0 += 1; return $0 }) == 1 { gate.wait() }
                    return false
                },
                address: nil, userAgent: nil, decide: { _, _, _, _ in .denied([]) })
        }
        while waiting.withLock({ $0 }) == 0 { try await Task.sleep(for: .milliseconds(5)) }
        let logout = Task {
            try await otherInstance.recordProviderLogout(ProviderLogout(jti: "racing", subject: "psc-sub", sessionID: "sid-r"), actor: AuditActor(subject: "provider"))
        }
        // Let the logout's first attempt run (PostgreSQL: it commits, or fails and waits for
        // the write lock the callback shares); SQLite queues it behind the writer.
        try await Task.sleep(for: .milliseconds(300))
        gate.signal()
        let outcome = try await callback.value
        #expect(try await logout.value == 0, "no session was open")
        switch outcome {
        case .loggedOutAtProvider:
            break
        case .opened(let flowToken, nil):
            #expect(try await world.sessions.flow(flowToken) == nil, "the logout ended the flow the callback wrote")
        default:
            Issue.record("unexpected: \(outcome)")
        }
        let open = try await world.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow WHERE oidc_session_id = 'sid-r' AND consumed_at IS NULL")
        }
        #expect(open == 0)
    }

    /// A logout token is acted on once, whichever instance it reaches first: delivered again
    /// to another instance, it ends nothing, not even a session of its subject opened since
    /// (which a logout acted on would end).
    @Test func aLogoutTokenIsActedOnOnceAcrossInstances() async throws {
        let world = try await World()
        let instanceB = SessionStore(database: world.database, serverKey: TestKeys.server, clock: { world.clock.now })
        let logout = ProviderLogout(jti: "jti-1", subject: "psc-sub", sessionID: nil)
        world.clock.advance(1)
        guard case .opened(_, let first?) = try await providerCallback(world, identity: ProviderIdentity(subject: "psc-sub", sessionID: "sid-1", sealedIDToken: nil)) else {
            Issue.record("the provider session opens"); return
        }
        #expect(try await world.sessions.recordProviderLogout(logout, actor: world.actor) == 1)
        #expect(try await world.habilitation.check(sessionToken: first.token).session == nil)
        world.clock.advance(world.sessions.configuration.providerLogoutClockMargin + 1)
        guard case .opened(_, let second?) = try await providerCallback(world, identity: ProviderIdentity(subject: "psc-sub", sessionID: "sid-9", sealedIDToken: nil)) else {
            Issue.record("a provider session started after the logout opens"); return
        }
        #expect(try await instanceB.recordProviderLogout(logout, actor: world.actor) == nil, "a replay to another instance")
        #expect(try await world.habilitation.check(sessionToken: second.token).session != nil, "the replay ended nothing")
        #expect(try await instanceB.recordProviderLogout(ProviderLogout(jti: "jti-2", subject: "psc-sub", sessionID: nil), actor: world.actor) == 1,
                "another token is acted on")
    }

    /// The provider callback matches the account (national id, withdrawal, suspension) in
    /// the transaction that writes the flow: a withdrawal committed after an earlier read
    /// said "eligible" is seen, and nothing opens.
    @Test func theProviderAccountIsMatchedWhereTheFlowIsWritten() async throws {
        let world = try await World()
        #expect(try await world.habilitation.providerAccount(nationalID: "810002673899") == .eligible(accountID: world.accountID))
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, World.record(active: false), ifMatch: nil),
                                                  context: CallContext(actor: world.actor))
        let withdrawn = try await providerCallback(world, identity: ProviderIdentity(subject: "psc-sub", sessionID: nil, sealedIDToken: nil))
        guard case .refused(.deactivatedBySAS(let id)) = withdrawn, id == world.accountID else { Issue.record("\(withdrawn)"); return }
        let flows = try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow") }
        #expect(flows == 0)
    }

    @Test func directSessionIsNot() async throws {
        let world = try await World()
        let check = try await world.habilitation.check(sessionToken: try await world.signIn(origin: nil))
        #expect(check.decision == .denied([.directSession]))
    }

    @Test func pendingActionsWithholdIt() async throws {
        let world = try await World(complete: false)
        let check = try await world.habilitation.check(sessionToken: try await world.signIn(origin: .sas))
        #expect(check.pendingActions == [.setPassword, .enrolSecondFactor, .acceptCGU])
        #expect(check.decision == .denied([.requiredActionPending]))
    }

    @Test func withdrawalAppliesOnTheNextCheck() async throws {
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        #expect(try await world.habilitation.check(sessionToken: token).decision.isGranted)
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, World.record(active: false), ifMatch: nil),
                                                  context: CallContext(actor: world.actor))
        #expect(try await world.habilitation.check(sessionToken: token).decision == .denied([.deactivatedBySAS]))
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, World.record(active: true), ifMatch: nil),
                                                  context: CallContext(actor: world.actor))
        #expect(try await world.habilitation.check(sessionToken: token).decision.isGranted)
        try await world.database.write { db in
            try db.execute(sql: "INSERT INTO vendor_suspension (account_id, suspended_at) VALUES (?, 1)", arguments: [world.accountID])
        }
        #expect(try await world.habilitation.check(sessionToken: token).decision == .denied([.suspendedByVendor]))
    }

    @Test func newCGUVersionMustBeAcceptedAgain() async throws {
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        let v2 = HabilitationService(database: world.database, sessions: world.sessions, cguVersion: "v2", clock: { world.clock.now })
        #expect(try await v2.check(sessionToken: token).pendingActions == [.acceptCGU])
    }

    /// An intent is sealed in its cookie: the entry writes nothing, the flow the password
    /// opens copies it (origin, way back), and its session takes them from the flow. A cookie
    /// altered, sealed under another key, or expired before the password step gives a direct
    /// session.
    @Test func intentsAreSealedExpireAndAreCopiedIntoTheirFlow() async throws {
        let world = try await World()
        let intent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/"))
        #expect(world.sessions.intent(intent) == LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/"))
        let written = try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM login_intent") }
        #expect(written == 0, "the entry writes nothing")
        let flow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: intent)
        try await world.sessions.markSecondFactorDone(flowToken: flow)
        let session = try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: nil, actor: world.actor)
        #expect(session?.origin == .sas && session?.returnURL == "https://agenda.example/")
        // Altered, or another installation's: no intent.
        var bytes = Array(intent.utf8)
        bytes[bytes.count / 2] = bytes[bytes.count / 2] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        let otherKey = SessionStore(database: world.database, serverKey: Array(repeating: 9, count: 32), clock: { world.clock.now })
        for forged in [String(decoding: bytes, as: UTF8.self), otherKey.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://evil.example/"))] {
            #expect(world.sessions.intent(forged) == nil)
            let forgedFlow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: forged)
            try await world.sessions.markSecondFactorDone(flowToken: forgedFlow)
            let opened = try await world.sessions.completeFlow(flowToken: forgedFlow, address: nil, userAgent: nil, actor: world.actor)
            #expect(opened?.origin == .direct && opened?.returnURL == nil)
        }
        // The longest return URL the entry takes, all slashes, still fits a cookie (4 kB).
        let longest = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas",
                                                              returnURL: "https://agenda.example/" + String(repeating: "/", count: 2_048 - 23)))
        #expect(longest.utf8.count < 3_500, "\(longest.utf8.count)")
        #expect(world.sessions.intent(longest)?.returnURL.utf8.count == 2_048)
        // An intent expired before the password step too (one that was live then lives as
        // long as its flow: aLongSignInKeepsItsSASOrigin).
        let late = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/"))
        world.clock.advance(10 * 60 + 1)
        let lateFlow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: late)
        try await world.sessions.markSecondFactorDone(flowToken: lateFlow)
        #expect(try await world.sessions.completeFlow(flowToken: lateFlow, address: nil, userAgent: nil, actor: world.actor)?.origin == .direct)
    }

    /// "Sign out everywhere" ends the sign-ins under way (a flow past its second factor would
    /// otherwise become a session after the revocation), and the account's live password
    /// reset links too (every one of them: a leaked link would otherwise set a password and
    /// sign in again), and says so in the trail.
    @Test func signingOutEverywhereEndsTheSignInsUnderWay() async throws {
        let world = try await World()
        let flow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: nil)
        try await world.sessions.markSecondFactorDone(flowToken: flow)
        let outbox = MailOutbox(box: try SecretBox(key: World.key))
        let before = try await world.database.read { db in try outbox.due(at: .distantFuture, in: db) }.count
        for _ in 0..<2 {
            try await world.credentials.requestPasswordReset(email: "jules.marius@test.com", makeMail: { token, account in
                OutgoingMail(recipient: account.email, subject: "Réinitialisation", body: token)
            }, actor: world.actor)
            world.clock.advance(2 * 60 + 1)
        }
        let links = try await world.database.read { db in try outbox.due(at: .distantFuture, in: db) }.dropFirst(before).compactMap { $0.mail?.body }
        #expect(links.count == 2)
        for link in links { #expect(try await world.credentials.accountForResetToken(link) != nil) }
        let administration = VendorAdministration(database: world.database, clock: { world.clock.now })
        let result = try await administration.revokeSessions(accountID: world.accountID, actor: AuditActor.commandLine)
        #expect(result?.accountID == world.accountID && result?.changed == true && result?.resetLinks == 2)
        #expect(try await world.sessions.flow(flow) == nil)
        #expect(try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: nil, actor: world.actor) == nil)
        for link in links { #expect(try await world.credentials.accountForResetToken(link) == nil, "no reset link outlives it") }
        let event = try #require(try await administration.auditEvents(accountID: world.accountID).last { $0.action == "sessions-revoked" })
        #expect(event.detail == "2 password reset link(s) voided, 2 reset mail(s) still queued withdrawn", "\(event)")
        // An expired link is dead already: not voided again, not counted; its mail, still
        // queued, is withdrawn (a change, said in the trail). Then nothing is left to change.
        try await world.credentials.requestPasswordReset(email: "jules.marius@test.com", makeMail: { token, account in
            OutgoingMail(recipient: account.email, subject: "Réinitialisation", body: token)
        }, actor: world.actor)
        world.clock.advance(30 * 60 + 1)
        let again = try await administration.revokeSessions(accountID: world.accountID, actor: AuditActor.commandLine)
        #expect(again?.changed == true && again?.resetLinks == 0, "\(String(describing: again))")
        let withdrawn = try #require(try await administration.auditEvents(accountID: world.accountID).last { $0.action == "sessions-revoked" })
        #expect(withdrawn.detail == "1 reset mail(s) still queued withdrawn", "\(withdrawn)")
        let nothing = try await administration.revokeSessions(accountID: world.accountID, actor: AuditActor.commandLine)
        #expect(nothing?.changed == false && nothing?.resetLinks == 0, "\(String(describing: nothing))")
    }

    @Test func aFlowNeedsTheSecondFactor() async throws {
        let world = try await World()
        let flow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: nil)
        #expect(try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: nil, actor: world.actor) == nil)
    }

    @Test func idleAndAbsoluteTimeouts() async throws {
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        world.clock.advance(20 * 60)
        #expect(try await world.sessions.session(token) != nil)   // activity at 20 min...
        world.clock.advance(20 * 60)
        #expect(try await world.sessions.session(token) != nil)   // ...keeps it alive at 40 min
        world.clock.advance(31 * 60)
        #expect(try await world.sessions.session(token) == nil)   // 31 idle minutes
        let other = try await world.signIn(origin: .sas)
        for _ in 0..<25 {
            world.clock.advance(29 * 60)
            _ = try await world.sessions.session(other)
        }
        #expect(try await world.sessions.session(other) == nil)   // past 12 h despite activity
        #expect(try await world.habilitation.check(sessionToken: other).decision == .denied([.noLiveSession]))
    }

    /// The checks that see a touch due before the first one commits all ask for it; only the
    /// first changes the row (and so commits anything): the others find it no longer due.
    @Test func aBurstOfDueTouchesChangesTheRowOnce() async throws {
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        world.clock.advance(61)
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let facts = try #require(try await world.habilitation.check(sessionToken: token, on: loop).get().facts)
        let due = world.clock.now
        try await world.habilitation.recordActivity(facts)
        world.clock.advance(1)
        try await world.habilitation.recordActivity(facts)   // the same, older, facts
        let stored = try await world.database.read { db in
            try Int64.fetchOne(db, sql: "SELECT last_seen_at FROM web_session WHERE id_hash = ?", arguments: [SecretToken.hash(token)])
        }
        #expect(stored == due.epochMilliseconds)
        world.clock.advance(60)
        try await world.habilitation.recordActivity(facts)   // due again a granularity later
        let later = try await world.database.read { db in
            try Int64.fetchOne(db, sql: "SELECT last_seen_at FROM web_session WHERE id_hash = ?", arguments: [SecretToken.hash(token)])
        }
        #expect(later == world.clock.now.epochMilliseconds)
    }

    /// A sign-in that takes longer than the intent's lifetime (a first one: password, TOTP
    /// enrolment, terms of use) keeps the SAS origin: the flow copied its intent.
    @Test func aLongSignInKeepsItsSASOrigin() async throws {
        let world = try await World()
        let intent = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        world.clock.advance(5 * 60)
        let flow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: intent)
        world.clock.advance(9 * 60)   // 14 minutes after the intent, 9 after the flow
        try await world.sessions.markSecondFactorDone(flowToken: flow)
        let session = try #require(try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: "test", actor: world.actor))
        #expect(session.origin == .sas && session.returnURL == "https://agenda.example/p")

        // The intent itself is not extended: a later password step (the same intent cookie
        // replayed) past its own 10 minutes gets nothing from it.
        let replayed = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        world.clock.advance(9 * 60)
        _ = try await world.sessions.startFlow(accountID: world.accountID, intentToken: replayed)
        world.clock.advance(2 * 60)   // 11 min: past its own 10 minutes
        let second = try await world.sessions.startFlow(accountID: world.accountID, intentToken: replayed)
        try await world.sessions.markSecondFactorDone(flowToken: second)
        let ended = try #require(try await world.sessions.completeFlow(flowToken: second, address: nil, userAgent: "test", actor: world.actor))
        #expect(ended.origin == .direct)

        // An intent already expired when the password step came gives nothing more.
        let late = world.sessions.createIntent(LoginIntent(origin: .sas, originValue: "sas", returnURL: "https://agenda.example/p"))
        world.clock.advance(11 * 60)
        let lateFlow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: late)
        try await world.sessions.markSecondFactorDone(flowToken: lateFlow)
        let direct = try #require(try await world.sessions.completeFlow(flowToken: lateFlow, address: nil, userAgent: "test", actor: world.actor))
        #expect(direct.origin == .direct)
    }

    /// A sign-in of a withdrawn account ended by many requests at once (a form sent twice,
    /// two tabs, two instances): none opens a session, and the refusal is audited once.
    @Test func aRefusedSignInIsAuditedOnceWhateverEndsItAtOnce() async throws {
        let world = try await World()
        let flow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: nil)
        try await world.sessions.markSecondFactorDone(flowToken: flow)
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, World.record(active: false), ifMatch: nil),
                                                  context: CallContext(actor: world.actor))
        let instanceB = SessionStore(database: world.database, serverKey: TestKeys.server, clock: { world.clock.now })
        let habilitation = world.habilitation, actor = world.actor, sessions = world.sessions
        let results = try await withThrowingTaskGroup(of: String.self) { group in
            for index in 0..<12 {
                let store = index % 2 == 0 ? sessions : instanceB
                group.addTask {
                    do {
                        let opened = try await store.completeFlow(flowToken: flow, address: nil, userAgent: nil, actor: actor,
                                                                  decide: { try habilitation.decisionForNewSession(accountID: $0, origin: $1, authentication: $2, in: $3) })
                        return opened == nil ? "ended" : "opened"
                    } catch let refused as SignInRefused {
                        return refused.recordFailure == nil ? "refused \(refused.reason.rawValue)" : "not recorded: \(refused.recordFailure!)"
                    }
                }
            }
            return try await group.reduce(into: [String]()) { $0.append($1) }
        }
        #expect(results.allSatisfy { $0 == "ended" || $0 == "refused deactivated-by-sas" } && results.contains("refused deactivated-by-sas"), "\(results)")
        let audited = try await world.database.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit_event WHERE action = 'sign-in' AND outcome = 'refused deactivated-by-sas'")
        }
        #expect(audited == 1, "\(results)")
        let opened = try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session") }
        #expect(opened == 0)
    }

    /// A sign-in under way at the upgrade, its intent a row the previous version wrote in
    /// `login_intent`, keeps its SAS origin and its way back: the migration copies them into
    /// the flow (an intent already spent then gives nothing).
    @Test func aFlowOpenAtTheUpgradeKeepsItsIntent() async throws {
        let world = try await World()
        let flow = try await world.sessions.startFlow(accountID: world.accountID, intentToken: nil)
        let spent = try await world.sessions.startFlow(accountID: world.accountID, intentToken: nil)
        let late = try await world.sessions.startFlow(accountID: world.accountID, intentToken: nil)
        let expires = world.clock.now.addingTimeInterval(600).epochMilliseconds
        try await world.database.write { db in
            try db.execute(sql: """
                INSERT INTO login_intent (id_hash, origin, origin_value, return_url, created_at, expires_at, consumed_at)
                VALUES ('legacy', 'sas', 'sas', 'https://agenda.example/legacy', 0, ?, NULL), ('spent', 'sas', 'sas', 'https://agenda.example/spent', 0, ?, 1),
                       ('expired', 'sas', 'sas', 'https://agenda.example/expired', 0, ?, NULL)
                """, arguments: [expires, expires, world.clock.now.epochMilliseconds - 1])
            for (token, intent) in [(flow, "legacy"), (spent, "spent"), (late, "expired")] {
                try db.execute(sql: "UPDATE sign_in_flow SET intent_id_hash = ? WHERE id_hash = ?", arguments: [intent, SecretToken.hash(token)])
            }
            try db.execute(sql: AccountSchema.signInFlowIntentCopy)
        }
        for token in [flow, spent, late] { try await world.sessions.markSecondFactorDone(flowToken: token) }
        let kept = try await world.sessions.completeFlow(flowToken: flow, address: nil, userAgent: nil, actor: world.actor)
        #expect(kept?.origin == .sas && kept?.returnURL == "https://agenda.example/legacy")
        for token in [spent, late] {
            let direct = try await world.sessions.completeFlow(flowToken: token, address: nil, userAgent: nil, actor: world.actor)
            #expect(direct?.origin == .direct && direct?.returnURL == nil, "an intent spent, or expired when the flow opened")
        }
    }

    /// A touch that commits after the idle timeout (queued behind other writes) records the
    /// activity seen in time, and never brings back a session that had expired when it was
    /// seen.
    @Test func aLateTouchNeverRevivesAnExpiredSession() async throws {
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        let signedIn = try #require(try await world.sessions.session(token)).lastSeenAt
        world.clock.advance(61)
        let seen = world.clock.now
        world.clock.advance(30 * 60 - 60)   // past the idle timeout since the last recorded activity, not since `seen`
        try await world.sessions.touchIfDue(hash: SecretToken.hash(token), lastSeenAt: signedIn, at: world.clock.now)
        #expect(try await world.sessions.session(token) == nil, "a touch dated after the expiry does not revive it")
        try await world.sessions.touchIfDue(hash: SecretToken.hash(token), lastSeenAt: signedIn, at: seen)
        let stored = try await world.database.read { db in
            try Int64.fetchOne(db, sql: "SELECT last_seen_at FROM web_session WHERE id_hash = ?", arguments: [SecretToken.hash(token)])
        }
        #expect(stored == seen.epochMilliseconds)
        #expect(try await world.sessions.session(token) != nil, "the activity seen in time, written late, extends it from then")
    }

    /// Touches of one session go one at a time in a process: while one waits to commit, the
    /// others due at the same moment (a page load fires dozens of forward-auth checks) return
    /// at once instead of queueing writes of their own, which on PostgreSQL each failed
    /// serialization and were retried holding every instance's writes back.
    @Test func touchesOfOneSessionGoOneAtATime() async throws {
        /// Polls `condition` for up to 10 s.
        func eventually(_ condition: () -> Bool) async throws -> Bool {
            for _ in 0..<500 where !condition() { try await Task.sleep(for: .milliseconds(20)) }
            return condition()
        }
        let world = try await World()
        let token = try await world.signIn(origin: .sas)
        let hash = SecretToken.hash(token)
        let signedIn = try #require(try await world.sessions.session(token)).lastSeenAt
        world.clock.advance(61)
        let at = world.clock.now
        // Holds the session's row (on SQLite, the writer) until the gate opens.
        let gate = DispatchSemaphore(value: 0)
        let holding = SharedCount()
        let holder = Task {
            try await world.database.write { db in
                try db.execute(sql: "UPDATE web_session SET origin = origin WHERE id_hash = ?", arguments: [hash])
                // (The PostgreSQL engine holds a write back until the next statement: this one sends it.)
                _ = try Int.fetchOne(db, sql: "SELECT 1")
                holding.add()
                gate.wait()
            }
        }
        defer { gate.signal() }   // (a second signal, after the one below, wakes nobody)
        #expect(try await eventually { holding.value == 1 }, "the row is held")
        let finished = SharedCount()
        let sessions = world.sessions
        let touches = (0..<10).map { _ in
            Task {
                try await sessions.touchIfDue(hash: hash, lastSeenAt: signedIn, at: at)
                finished.add()
            }
        }
        let othersReturned = try await eventually { finished.value == 9 }
        #expect(othersReturned, "nine of the ten returned while the first waits: \(finished.value)")
        #expect(finished.value == 9, "the first still waits for the row")
        gate.signal()
        try await holder.value
        for touch in touches { try await touch.value }
        let stored = try await world.database.read { db in
            try Int64.fetchOne(db, sql: "SELECT last_seen_at FROM web_session WHERE id_hash = ?", arguments: [hash])
        }
        #expect(stored == at.epochMilliseconds, "the one touch that ran recorded the activity")
        // Once it is done, the next due touch is not held back by the one before.
        world.clock.advance(61)
        try await sessions.touchIfDue(hash: hash, lastSeenAt: at, at: world.clock.now)
        let again = try await world.database.read { db in
            try Int64.fetchOne(db, sql: "SELECT last_seen_at FROM web_session WHERE id_hash = ?", arguments: [hash])
        }
        #expect(again == world.clock.now.epochMilliseconds)
    }

    /// The CLI's export reads the trail a page at a time (a trail kept for years does not fit
    /// in memory): the pages give the same events in the same order as one read, with the
    /// start, the limit and the account filter applied across page boundaries.
    @Test func theAuditExportPagesGiveTheWholeTrail() async throws {
        let world = try await World()
        let administration = VendorAdministration(database: world.database, clock: { world.clock.now })
        for _ in 0..<4 {
            _ = try await administration.suspend(accountID: world.accountID, reason: nil, actor: world.actor)
            _ = try await administration.restore(accountID: world.accountID, actor: world.actor)
        }
        let whole = try await administration.auditEvents()
        #expect(whole.count >= 9, "\(whole.count)")
        func paged(accountID: String? = nil, after: Int64 = 0, limit: Int? = nil) async throws -> [Int64] {
            var seen: [Int64] = []
            try await administration.forEachAuditEvent(accountID: accountID, afterSeq: after, limit: limit, pageSize: 2) { seen.append($0.seq ?? -1) }
            return seen
        }
        #expect(try await paged() == whole.compactMap(\.seq))
        try #require(whole.count >= 9)
        let start = try #require(whole[2].seq)
        #expect(try await paged(after: start, limit: 5) == Array(whole.compactMap(\.seq).filter { $0 > start }.prefix(5)))
        #expect(try await paged(limit: 4) == Array(whole.compactMap(\.seq).prefix(4)))
        #expect(try await paged(accountID: world.accountID) == whole.filter { $0.accountId == world.accountID }.compactMap(\.seq))
        #expect(try await paged(after: try #require(whole.last?.seq)).isEmpty)
    }

    /// A suspension reports the live sessions it affects: those started from the SAS, not a
    /// direct one (it never held the habilitation), nor one past its idle timeout.
    @Test func aSuspensionCountsTheLiveSASSessionsOnly() async throws {
        let world = try await World()
        let administration = VendorAdministration(database: world.database, clock: { world.clock.now })
        _ = try await world.signIn(origin: .sas)
        world.clock.advance(SessionConfiguration().idleTimeout + 1)
        _ = try await world.signIn(origin: .sas)
        _ = try await world.signIn(origin: nil)
        let suspended = try await administration.suspend(accountID: world.accountID, reason: nil, actor: world.actor)
        #expect(suspended?.changed == true && suspended?.sessions == 1, "\(String(describing: suspended))")
        let restored = try await administration.restore(accountID: world.accountID, actor: world.actor)
        #expect(restored?.changed == true && restored?.sessions == 1, "\(String(describing: restored))")
        #expect(try await administration.revokeSessions(accountID: world.accountID, actor: world.actor)?.sessions == 2)
    }

    /// Erasure (GDPR article 17) removes the account and everything that names it, in one
    /// transaction, only once the SAS has deactivated it; the audit trail keeps its events and
    /// records the erasure with counts only. An identifier the erased account had taken from
    /// another stays in that one's history, without the erased account's id.
    @Test func erasureRemovesADeactivatedAccountAndKeepsTheTrail() async throws {
        let world = try await World()
        let administration = VendorAdministration(database: world.database, clock: { world.clock.now })
        let session = try await world.signIn(origin: .sas)
        try await world.credentials.requestPasswordReset(email: "jules.marius@test.com", makeMail: { token, account in
            OutgoingMail(recipient: account.email, subject: "lien", body: token)
        }, actor: world.actor)
        _ = try await administration.suspend(accountID: world.accountID, reason: nil, actor: world.actor)
        // The suspension withdrew the reset mail with its link; a mail an earlier version
        // queued names no link and stays, until the erasure (by address).
        try await world.database.write { db in
            try MailOutbox(box: try SecretBox(key: World.key)).enqueue(OutgoingMail(recipient: "jules.marius@test.com", subject: "lien", body: "earlier"),
                                                                      at: world.clock.now, in: db)
        }
        func count(_ table: String, _ value: String, column: String = "account_id") async throws -> Int {
            try await world.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table) WHERE \(column) = ?", arguments: [value]) ?? 0 }
        }

        // Active at the SAS (a vendor suspension is not enough): refused, nothing removed.
        #expect(try await administration.erase(accountID: world.accountID, reason: nil, actor: world.actor) == .stillActive)
        let accountRows = try await count("account", world.accountID, column: "id"), sessionRows = try await count("web_session", world.accountID)
        #expect(accountRows == 1 && sessionRows == 1)
        #expect(try await administration.erase(accountID: "no-such-account", reason: nil, actor: world.actor) == nil)

        // The SAS deactivates A; B takes its IDNPS (a reattribution), then is deactivated too.
        let context = CallContext(actor: world.actor)
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, try World.record(active: false), ifMatch: nil), context: context)
        let other = RegulatorRecord(nationalID: NationalID("810002673899"), active: true, familyName: "MARIUS", givenName: "Jeanne",
                                    email: EmailAddress("jeanne.marius@test.com")!)
        let b = try await world.provisioner.provision(.create(other), context: context).account.id
        var deactivated = other
        deactivated.active = false
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, deactivated, ifMatch: nil), context: context)
        let historyBefore = try #require(try await administration.detail(accountID: world.accountID)).identifierHistory
        #expect(historyBefore.contains { $0.endedReason == .reattributed && $0.endedByAccountId == b }, "\(historyBefore)")

        // Erasing B leaves A's history saying the IDNPS was reattributed, no longer to whom.
        guard case .erased(let erasedB, _, _)? = try await administration.erase(accountID: b, reason: "fin de conservation", actor: world.actor) else {
            Issue.record("B was not erased"); return
        }
        #expect(erasedB.identifiers == 1)
        let historyAfter = try #require(try await administration.detail(accountID: world.accountID)).identifierHistory
        #expect(historyAfter.count == historyBefore.count && historyAfter.contains { $0.endedReason == .reattributed && $0.endedByAccountId == nil },
                "\(historyAfter)")

        // Erasing A removes every row that names it, its queued mail included.
        let hash = try #require(try await world.database.read { db in
            try String.fetchOne(db, sql: "SELECT password_hash FROM account WHERE id = ?", arguments: [world.accountID])
        })
        let files = [world.directory.appendingPathComponent("db.sqlite").path, world.directory.appendingPathComponent("db.sqlite-wal").path]
        func copiesOfTheHash() -> Int {
            files.reduce(0) { total, file in total + (FileManager.default.contents(atPath: file).map { $0.ranges(of: Data(hash.utf8)).count } ?? 0) }
        }
        let outcome = try await administration.erase(accountID: world.accountID, reason: "demande de la personne", actor: world.actor)
        guard case .erased(let erased, let sessions, let log)? = outcome else { Issue.record("A was not erased: \(String(describing: outcome))"); return }
        #expect(erased.totpSecrets == 1 && erased.recoveryCodes == 10 && erased.cguAcceptances == 1 && erased.identifiers == 1
                && erased.resetLinks == 2 && erased.mails == 1 && sessions == 1, "\(erased) \(sessions)")
        // Nothing of the account stays in SQLite's files, its log included: its password hash
        // (in no other table) was in the -wal file's pages from before the delete.
        #expect(log == (TestStore.kind == .sqlite ? .truncated : .notApplicable))
        if TestStore.kind == .sqlite { #expect(copiesOfTheHash() == 0, "the erased account's password hash is still in the files") }
        for table in ["account_identifier", "totp_credential", "recovery_code", "password_reset_token", "cgu_acceptance",
                      "web_session", "sign_in_flow", "vendor_suspension"] {
            #expect(try await count(table, world.accountID) == 0, "\(table)")
        }
        #expect(try await count("account", world.accountID, column: "id") == 0)
        #expect(try await count("mail_outbox", "jules.marius@test.com", column: "recipient") == 0)
        #expect(try await world.sessions.session(session) == nil, "its session is gone with it")
        #expect(try await administration.detail(accountID: world.accountID) == nil)
        #expect(try await administration.erase(accountID: world.accountID, reason: nil, actor: world.actor) == nil, "a second erasure finds nothing")

        // The trail keeps the account's events and says what happened, without personal data.
        let trail = try await administration.auditEvents(accountID: world.accountID)
        #expect(trail.contains { $0.action == "create" } && trail.last?.action == "account-erased", "\(trail.map(\.action))")
        let event = try #require(trail.last)
        #expect(event.identifier == nil && event.changes == nil, "\(event)")
        #expect(event.detail?.contains("reason: demande de la personne") == true && event.detail?.contains("jules") == false
                && event.detail?.contains("810002673899") == false, "\(String(describing: event.detail))")
        #expect(trail.contains { $0.outcome == "erase: unchanged" && $0.detail?.contains("the SAS has the account active") == true })

        // The SAS sending the regulator again makes a new account, as for one never seen.
        let again = try await world.provisioner.provision(.conditionalUpdate(World.national, try World.record(active: true), ifMatch: nil), context: context)
        #expect(again.account.id != world.accountID && again.account.id != b)
    }

    /// A scrub that fails after the erasure committed is said (`failed`), not thrown: the
    /// erasure is done, and an error would report it as not done (its retry finding no
    /// account). The batch goes on and says so on its count.
    @Test func aFailedScrubStillReportsTheErasure() async throws {
        let world = try await World()
        let context = CallContext(actor: world.actor)
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, try World.record(active: false), ifMatch: nil), context: context)
        let administration = VendorAdministration(database: AccountDatabase(engine: ScrubFailingEngine(inner: world.database.engine)),
                                                  clock: { world.clock.now })
        let outcome = try await administration.erase(accountID: world.accountID, reason: nil, actor: world.actor)
        guard case .erased(_, _, let log)? = outcome else { Issue.record("not erased: \(String(describing: outcome))"); return }
        #expect(log == .failed)
        #expect(try await administration.detail(accountID: world.accountID) == nil, "erased all the same")
        let batch = try await administration.eraseDeactivated(before: world.clock.now, reason: nil, actor: world.actor)
        #expect(batch.erased == 0 && batch.log == .failed)
    }

    /// The retention of deactivated accounts: those the SAS deactivated before the cut-off
    /// go, oldest first; one deactivated later, and an active one, stay.
    @Test func deactivatedAccountsAreErasedPastTheirRetention() async throws {
        let world = try await World(complete: false)
        let administration = VendorAdministration(database: world.database, clock: { world.clock.now })
        let context = CallContext(actor: world.actor)
        func record(_ national: String, active: Bool) -> RegulatorRecord {
            RegulatorRecord(nationalID: NationalID(national), active: active, familyName: "X", givenName: "Y",
                            email: EmailAddress("r\(national)@test.com")!)
        }
        let old = try await world.provisioner.provision(.create(record("810002673900", active: false)), context: context).account.id
        world.clock.advance(3600)
        let active = try await world.provisioner.provision(.create(record("810002673901", active: true)), context: context).account.id
        let cutoff = world.clock.now
        world.clock.advance(3600)
        // Deactivated after the cut-off, though created before it: kept.
        _ = try await world.provisioner.provision(.conditionalUpdate(World.national, try World.record(active: false), ifMatch: nil), context: context)
        var seen: [String] = []
        let result = try await administration.eraseDeactivated(before: cutoff, reason: "fin de conservation", actor: world.actor) { id, _, _ in seen.append(id) }
        #expect(result.erased == 1 && seen == [old], "\(seen)")
        #expect(result.log == (TestStore.kind == .sqlite ? .truncated : .notApplicable))
        #expect(try await administration.detail(accountID: old) == nil)
        let keptActive = try await administration.detail(accountID: active), keptLater = try await administration.detail(accountID: world.accountID)
        #expect(keptActive != nil && keptLater != nil)
        #expect(try await administration.eraseDeactivated(before: cutoff, reason: nil, actor: world.actor).erased == 0, "nothing left to erase")
    }

    @Test func signOutAndRevokeAll() async throws {
        let world = try await World()
        let first = try await world.signIn(origin: .sas)
        let second = try await world.signIn(origin: nil)
        #expect(first != second)
        try await world.sessions.revoke(first, reason: .signOut)
        #expect(try await world.sessions.session(first) == nil)
        #expect(try await world.sessions.session(second) != nil)
        let administration = VendorAdministration(database: world.database, clock: { world.clock.now })
        #expect(try await administration.revokeSessions(accountID: world.accountID, actor: world.actor)?.sessions == 1)
        #expect(try await world.sessions.session(second) == nil)
        // Tokens are stored hashed.
        let stored = try await world.database.read { db in try String.fetchAll(db, sql: "SELECT id_hash FROM web_session") }
        #expect(!stored.contains(first) && stored.contains(SecretToken.hash(first)))
        // A session past its idle timeout is ended already: marked revoked with the others,
        // but neither counted nor a change (as expired reset links).
        let idle = try await world.signIn(origin: nil)
        world.clock.advance(SessionConfiguration().idleTimeout + 1)
        let again = try await administration.revokeSessions(accountID: world.accountID, actor: world.actor)
        #expect(again?.sessions == 0 && again?.changed == false, "\(String(describing: again))")
        let revokedAt = try await world.database.read { db in
            try Int64.fetchOne(db, sql: "SELECT revoked_at FROM web_session WHERE id_hash = ?", arguments: [SecretToken.hash(idle)])
        }
        #expect(revokedAt == world.clock.now.epochMilliseconds)
        let event = try #require(try await administration.auditEvents(accountID: world.accountID).last { $0.action == "sessions-revoked" })
        #expect(event.outcome == "0 revoked", "\(event)")
    }
}

/// An engine whose log scrub fails (a full disk, an I/O error); everything else is the run's.
final class ScrubFailingEngine: ForwardingStorageEngine, Sendable {
    let forwardedTo: any StorageEngine
    init(inner: any StorageEngine) { self.forwardedTo = inner }
    struct ScrubFailure: Error {}
    func scrubLog() async throws -> LogScrub { throw ScrubFailure() }
}

/// An engine whose first log scrub fails; the later ones are the run's.
final class ScrubFailingOnceEngine: ForwardingStorageEngine, Sendable {
    let forwardedTo: any StorageEngine
    private let failed = Mutex(false)
    init(inner: any StorageEngine) { self.forwardedTo = inner }
    func scrubLog() async throws -> LogScrub {
        if !failed.withLock({ done in defer { done = true }; return done }) { throw ScrubFailingEngine.ScrubFailure() }
        return try await forwardedTo.scrubLog()
    }
}
