@testable import Accounts
import Foundation
import Habilitation
import Storage
import StorageTesting
import Synchronization
import Testing

/// A clock tests move by hand.
final class TestClock: Sendable {
    private let current = Mutex(Date(timeIntervalSince1970: 1_800_000_000))
    var now: Date { current.withLock { $0 } }
    func advance(_ seconds: TimeInterval) { current.withLock { $0 = $0.addingTimeInterval(seconds) } }
}

struct CredentialHarness {
    let accounts: Harness
    let clock = TestClock()
    let store: CredentialStore
    let actor = AuditActor(subject: "browser", address: "192.0.2.1")
    let accountID: String
    let outbox: MailOutbox

    init(lockout: LockoutPolicy = LockoutPolicy(maximumFailures: 3, coolingPeriod: .seconds(900))) async throws {
        accounts = try await Harness()
        var configuration = CredentialConfiguration()
        configuration.lockout = lockout
        let clock = self.clock
        let box = try SecretBox(key: Array(repeating: 7, count: 32))
        outbox = MailOutbox(box: box)
        store = try CredentialStore(database: accounts.database, hasher: accounts.provisioner.hasher,
                                    box: box, sessions: SessionLedger(), configuration: configuration, clock: { clock.now })
        accountID = try await accounts.create(try Fixtures.record()).account.id
    }

    /// Requests a reset and returns the token read from the queued mail.
    func resetToken(email: String = "jules.marius@test.com") async throws -> String? {
        try await store.requestPasswordReset(email: email, makeMail: { token, account in
            OutgoingMail(recipient: account.email, subject: "Réinitialisation", body: "https://web.example/reinitialiser?jeton=\(token)")
        }, actor: actor)
        let outbox = self.outbox
        let mails = try await accounts.database.read { db in try outbox.due(at: .distantFuture, in: db) }
        return mails.last.flatMap { $0.mail?.body.components(separatedBy: "jeton=").last }
    }

    func setPassword(_ password: String) async throws {
        let token = try #require(try await resetToken())
        #expect(try await store.resetPassword(token: token, newPassword: password, actor: actor) == .success(accountID))
    }
}

@Suite("Credential store")
struct CredentialStoreTests {
    static let password = "Vélo-rouge-sur-la-Loire"

    /// A password verified against the hash read before argon2 opens nothing if a reset
    /// replaced that hash meanwhile (on this instance or another): refused, not counted as a
    /// failure, no flow. An accepted check opens its flow in the deciding transaction.
    @Test func aPasswordCheckedAgainstAReplacedHashOpensNoFlow() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let store = h.store
        let before = try #require(try await h.accounts.database.read { db in try store.account(forEmail: "jules.marius@test.com", in: db) })
        let accepted = try await store.settlePasswordCheck(before, verified: true, at: h.clock.now, actor: h.actor) { id, _ in "flow:\(id)" }
        #expect(accepted.outcome == .accepted(accountID: h.accountID))
        #expect(accepted.opened == "flow:\(h.accountID)")
        try await h.setPassword("Another-good-passphrase")  // the reset, committed while argon2 ran
        let stale = try await store.settlePasswordCheck(before, verified: true, at: h.clock.now, actor: h.actor) { id, _ in "flow:\(id)" }
        #expect(stale.outcome == .refused(reason: .wrongPassword, accountID: h.accountID))
        #expect(stale.opened == nil)
        let failures = try await h.accounts.database.read { [id = h.accountID] db in
            try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account WHERE id = ?", arguments: [id])
        }
        #expect(failures == 0)
    }

    /// Two typos in March and one in June are not three guesses in a row: each failure below
    /// the threshold is forgotten after the quiet time (`--lockout-reset-hours`), on the
    /// store as in the policy; failures within it still lock.
    @Test func typosMonthsApartDoNotAddUpToALock() async throws {
        let h = try await CredentialHarness(lockout: LockoutPolicy(maximumFailures: 3, coolingPeriod: .seconds(900), failureResetTime: .seconds(12 * 3600)))
        try await h.setPassword(Self.password)
        func wrong() async throws -> PasswordStepOutcome {
            try await h.store.checkPassword(email: "jules.marius@test.com", password: "wrong", actor: h.actor)
        }
        #expect(try await wrong() == .refused(reason: .wrongPassword, accountID: h.accountID))
        #expect(try await wrong() == .refused(reason: .wrongPassword, accountID: h.accountID))
        h.clock.advance(90 * 86_400)
        #expect(try await wrong() == .refused(reason: .wrongPassword, accountID: h.accountID), "the March typos are forgotten")
        let stored = try await h.accounts.database.read { [id = h.accountID] db in
            try SQLRow.fetchOne(db, sql: "SELECT failed_sign_ins, last_failed_sign_in FROM account WHERE id = ?", arguments: [id])
        }
        #expect(stored?["failed_sign_ins"] as Int64? == 1)
        #expect(stored?["last_failed_sign_in"] as Int64? == h.clock.now.epochMilliseconds)
        h.clock.advance(11 * 3600)
        #expect(try await wrong() == .refused(reason: .wrongPassword, accountID: h.accountID))
        #expect(try await wrong() == .refused(reason: .lockedNow, accountID: h.accountID), "three within the quiet time still lock")
        // An admin unlock clears the time with the count.
        let unlocked = try await h.accounts.database.write { [id = h.accountID, at = h.clock.now] db in try LockoutLedger().clear(accountID: id, at: at, in: db) }
        #expect(unlocked?.failures == 3 && unlocked?.wasLocked == true)
        let cleared = try await h.accounts.database.read { [id = h.accountID] db in
            try SQLRow.fetchOne(db, sql: "SELECT failed_sign_ins, last_failed_sign_in FROM account WHERE id = ?", arguments: [id])
        }
        #expect(cleared?["failed_sign_ins"] as Int64? == 0 && cleared?["last_failed_sign_in"] as Int64? == nil)
    }

    @Test func generatedPasswordNeverSignsInAndUnknownEmailGetsTheSameAnswer() async throws {
        let h = try await CredentialHarness()
        let unknown = try await h.store.checkPassword(email: "nobody@test.com", password: "whatever-password", actor: h.actor)
        #expect(unknown == .refused(reason: .unknownEmail, accountID: nil))
        let generated = try await h.store.checkPassword(email: "jules.marius@test.com", password: "anything-at-all", actor: h.actor)
        #expect(generated == .refused(reason: .wrongPassword, accountID: h.accountID))
    }

    @Test func resetThenSignInAndLockout() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        #expect(try await h.store.checkPassword(email: "JULES.MARIUS@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID))
        // Spaces around the address (pasted from a mail, a client that does not trim as
        // browsers do for type=email) are not part of it.
        #expect(try await h.store.checkPassword(email: " jules.marius@test.com\t\n", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID))
        for _ in 0..<2 {
            #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "wrong", actor: h.actor) == .refused(reason: .wrongPassword, accountID: h.accountID))
        }
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "wrong", actor: h.actor) == .refused(reason: .lockedNow, accountID: h.accountID))
        // Locked: even the right password is refused, until the cooling period ends.
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor) == .refused(reason: .locked, accountID: h.accountID))
        h.clock.advance(901)
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID))
        let events = try await h.accounts.auditEvents().map(\.action)
        #expect(events.contains("lockout") && events.contains("password-reset-completed"))
    }

    /// Only a completed sign-in (both factors) resets the failure count; a correct password
    /// alone does not, and wrong second-factor codes count like wrong passwords.
    @Test func onlyACompletedSignInResetsTheFailureCount() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        let totp = TOTP()
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: totp.code(secret: secret, step: totp.step(at: h.clock.now)), actor: h.actor) != nil)

        _ = try await h.store.checkPassword(email: "jules.marius@test.com", password: "wrong", actor: h.actor)
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID))
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: "000000", actor: h.actor) == nil)
        // Failures so far: a password and a code; the correct password between did not reset.
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "wrong", actor: h.actor) == .refused(reason: .lockedNow, accountID: h.accountID))
        #expect(try await h.store.isLocked(accountID: h.accountID))
        let rightCode = totp.code(secret: secret, step: totp.step(at: h.clock.now) + 1)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: rightCode, actor: h.actor) == nil, "refused unchecked while locked")

        h.clock.advance(901)
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID))
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: totp.code(secret: secret, step: totp.step(at: h.clock.now)), actor: h.actor) == .totp)
        for _ in 0..<2 {
            #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "wrong", actor: h.actor) == .refused(reason: .wrongPassword, accountID: h.accountID))
        }
    }

    /// A password reset does not lift a lockout (it would buy a fresh run of code guesses to
    /// whoever holds the password and the mailbox).
    @Test func aResetDoesNotUnlock() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        for _ in 0..<3 { _ = try await h.store.checkPassword(email: "jules.marius@test.com", password: "wrong", actor: h.actor) }
        #expect(try await h.store.isLocked(accountID: h.accountID))
        try await h.setPassword("Another-good-passphrase")
        #expect(try await h.store.isLocked(accountID: h.accountID))
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "Another-good-passphrase", actor: h.actor) == .refused(reason: .locked, accountID: h.accountID))
        h.clock.advance(901)
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "Another-good-passphrase", actor: h.actor) == .accepted(accountID: h.accountID))
    }

    /// Links are single use, expire, and all die when a password is set through any of them:
    /// a link mailed before the change must not change the password again.
    @Test func resetTokensAreSingleUseExpireAndDieWithAPasswordChange() async throws {
        let h = try await CredentialHarness()
        let first = try #require(try await h.resetToken())
        h.clock.advance(2 * 60)
        let second = try #require(try await h.resetToken())
        #expect(try await h.store.resetPassword(token: "not-a-token", newPassword: Self.password, actor: h.actor) == .failure(.invalidToken))
        #expect(try await h.store.resetPassword(token: second, newPassword: "short", actor: h.actor) == .failure(.policy([.tooShort])))
        #expect(try await h.store.accountForResetToken(first) != nil, "a newer link leaves the older one usable")
        #expect(try await h.store.accountForResetToken(second) != nil, "a refused password spends no link")
        #expect(try await h.store.resetPassword(token: second, newPassword: Self.password, actor: h.actor) == .success(h.accountID))
        #expect(try await h.store.resetPassword(token: second, newPassword: "Another-good-passphrase", actor: h.actor) == .failure(.invalidToken))
        #expect(try await h.store.resetPassword(token: first, newPassword: "Another-good-passphrase", actor: h.actor) == .failure(.invalidToken),
                "the older link died with the password it was sent for")
        let completed = try await h.accounts.auditEvents().last { $0.action == "password-reset-completed" }
        // Both mails are still queued here (nothing delivers in this harness): the spent link's
        // and the voided one's are withdrawn with it.
        #expect(completed?.detail == "1 other password reset link(s) voided, 2 reset mail(s) still queued withdrawn", "\(String(describing: completed))")
        let third = try #require(try await h.resetToken())
        h.clock.advance(30 * 60 + 1)
        #expect(try await h.store.resetPassword(token: third, newPassword: "Another-good-passphrase", actor: h.actor) == .failure(.invalidToken))
        // Only hashes are stored.
        let stored = try await h.accounts.database.read { db in try String.fetchAll(db, sql: "SELECT token_hash FROM password_reset_token") }
        #expect(!stored.contains(first) && stored.contains(SecretToken.hash(first)))
    }

    /// A password stored with other argon2 parameters is rehashed with the current ones at the
    /// next correct sign-in (raising the cost must not leave stored hashes cheaper than the
    /// decoy checked for unknown e-mails); a wrong password changes nothing.
    @Test func aCorrectSignInUpgradesAHashMadeWithOtherParameters() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let stronger = Argon2Parameters(memoryKiB: 128, iterations: 2, parallelism: 1)
        let upgraded = try CredentialStore(database: h.accounts.database, hasher: PasswordHasher(parameters: stronger, threads: 1),
                                           box: try SecretBox(key: Array(repeating: 7, count: 32)), sessions: SessionLedger())
        func stored() async throws -> String? {
            try await h.accounts.database.read { db in try String.fetchOne(db, sql: "SELECT password_hash FROM account") }
        }
        let before = try #require(try await stored())
        #expect(PasswordHasher.parameters(of: before) != stronger)
        _ = try await upgraded.checkPassword(email: "jules.marius@test.com", password: "not the password", actor: h.actor)
        #expect(try await stored() == before, "a wrong password changes nothing")
        #expect(try await upgraded.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID))
        let after = try #require(try await stored())
        #expect(PasswordHasher.parameters(of: after) == stronger && after != before)
        #expect(try await upgraded.checkPassword(email: "jules.marius@test.com", password: Self.password, actor: h.actor) == .accepted(accountID: h.accountID),
                "the upgraded hash verifies")
        #expect(try await h.accounts.auditEvents().contains { $0.action == "password-rehashed" })
    }

    /// A password is the same whichever Unicode form the keyboard produced: set composed
    /// (« é » one character), accepted decomposed (« e » + U+0301) and full-width, and the
    /// other way round; a hash stored before normalisation (of the decomposed form) is
    /// accepted as typed then, rehashed normalised, then accepted in any form. A wrong
    /// password typed decomposed counts one failure, not two.
    @Test func passwordsAreNormalised() async throws {
        let h = try await CredentialHarness()
        let composed = "Vélo-rouge-sur-la-Loire"
        let decomposed = "Ve\u{301}lo-rouge-sur-la-Loire"
        let fullWidth = "Ｖe\u{301}lo-rouge-sur-la-Loire"
        try #require(Array(composed.utf8) != Array(decomposed.utf8))
        try await h.setPassword(composed)
        for typed in [decomposed, fullWidth, composed] {
            #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: typed, actor: h.actor) == .accepted(accountID: h.accountID),
                    "\(Array(typed.unicodeScalars))")
        }
        try await h.setPassword("Bateau-" + decomposed)
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "Bateau-" + composed, actor: h.actor) == .accepted(accountID: h.accountID))

        // Stored before normalisation: the hash of the decomposed bytes.
        let legacy = try PasswordHasher.hashNow(Array(decomposed.utf8), parameters: h.accounts.provisioner.hasher.parameters)
        try await h.accounts.database.write { db in
            try db.execute(sql: "UPDATE account SET password_hash = ? WHERE id = ?", arguments: [legacy, h.accountID])
        }
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: decomposed, actor: h.actor) == .accepted(accountID: h.accountID))
        let rehashed = try await h.accounts.database.read { db in try String.fetchOne(db, sql: "SELECT password_hash FROM account") }
        let stored = try #require(rehashed)
        #expect(stored != legacy && PasswordHasher.verifyNow(Array(composed.utf8), encoded: stored))
        #expect(try await h.accounts.auditEvents().contains { $0.action == "password-rehashed" && $0.outcome == "normalised" })
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: composed, actor: h.actor) == .accepted(accountID: h.accountID))

        // A wrong password that normalising changes: two argon2 checks, one failure counted.
        func failures() async throws -> Int? {
            try await h.accounts.database.read { db in try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account") }
        }
        let before = try await failures()
        #expect(try await h.store.checkPassword(email: "jules.marius@test.com", password: "Ve\u{301}lo-bleu-sur-la-Loire", actor: h.actor)
                == .refused(reason: .wrongPassword, accountID: h.accountID))
        #expect(try await failures() == (before ?? 0) + 1)
    }

    /// An unknown e-mail runs a wrong password's statements on an id no account has: every
    /// account row stays as it was, and the one audit event is the refusal's.
    @Test func anUnknownEmailChangesNoAccount() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        func rows() async throws -> [String] {
            try await h.accounts.database.read { db in
                try SQLRow.fetchAll(db, sql: "SELECT id, version, failed_sign_ins, locked_until, password_hash, password_reset_required FROM account ORDER BY id")
                    .map { row -> String in
                        let id: String? = row["id"], version: Int64? = row["version"], failures: Int64? = row["failed_sign_ins"]
                        let locked: Int64? = row["locked_until"], hash: String? = row["password_hash"], reset: Bool? = row["password_reset_required"]
                        return "\(id ?? "-") \(version ?? -1) \(failures ?? -1) \(locked ?? -1) \(hash ?? "-") \(reset.map { "\($0)" } ?? "-")"
                    }
            }
        }
        let before = try await rows()
        let events = try await h.accounts.auditEvents().count
        #expect(try await h.store.checkPassword(email: "nobody@test.com", password: Self.password, actor: h.actor) == .refused(reason: .unknownEmail, accountID: nil))
        #expect(try await rows() == before)
        let after = try await h.accounts.auditEvents()
        #expect(after.count == events + 1 && after.last?.outcome == "refused unknown-email" && after.last?.accountId == nil)
    }

    /// Anyone who knows an address can ask for links: at most one (and one mail) every two
    /// minutes, and a newer link does not void the older one, so such requests can neither
    /// flood the mailbox nor kill the link the regulator is about to open.
    @Test func aResetRequestWithinTwoMinutesOfALiveLinkIssuesNothing() async throws {
        let h = try await CredentialHarness()
        let first = try #require(try await h.resetToken())
        h.clock.advance(119)
        #expect(try await h.resetToken() == first, "no new link, no new mail")
        let mails = try await h.accounts.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM mail_outbox") }
        #expect(mails == 1)
        #expect(try await h.store.accountForResetToken(first) != nil, "the regulator's link still works")
        let audit = try await h.accounts.auditEvents().last { $0.action == "password-reset-requested" }
        #expect(audit?.outcome == "not-mailed recent-link")
        h.clock.advance(2)
        let second = try #require(try await h.resetToken())
        #expect(second != first)
        #expect(try await h.store.accountForResetToken(first) != nil, "a newer link leaves the older one usable")
        #expect(try await h.store.accountForResetToken(second) != nil)
        // The regulator opens the first mail: it works, and the other link dies with it.
        #expect(try await h.store.resetPassword(token: first, newPassword: Self.password, actor: h.actor) == .success(h.accountID))
        #expect(try await h.store.accountForResetToken(second) == nil, "no link outlives a password change")
        // A spent link does not hold the next one back.
        let third = try await h.resetToken()
        #expect(third != nil && third != second && third != first)
    }

    /// A link mailed to the old address dies when the SAS changes the e-mail, and every link
    /// dies when the SAS deactivates the account; an update that changes neither keeps it.
    @Test func resetLinksDieWithTheirAddressOrTheAccount() async throws {
        let h = try await CredentialHarness()
        // Two live links each time: every one dies, not only the newest.
        let older = try #require(try await h.resetToken())
        h.clock.advance(2 * 60 + 1)
        let kept = try #require(try await h.resetToken())
        _ = try await h.accounts.put(national, try Fixtures.record(family: "MARIUS-DURAND"))
        for link in [older, kept] { #expect(try await h.store.accountForResetToken(link) != nil, "a name change keeps the links") }

        _ = try await h.accounts.put(national, try Fixtures.record(family: "MARIUS-DURAND", email: "jules.new@test.com"))
        for link in [older, kept] {
            #expect(try await h.store.resetPassword(token: link, newPassword: Self.password, actor: h.actor) == .failure(.invalidToken))
        }
        let audit = try await h.accounts.auditEvents().last { $0.action == "conditional-update" }
        #expect(audit?.detail?.contains("2 password reset link(s) voided") == true, "\(String(describing: audit))")

        let olderBeforeDeactivation = try #require(try await h.resetToken(email: "jules.new@test.com"))
        h.clock.advance(2 * 60 + 1)
        let beforeDeactivation = try #require(try await h.resetToken(email: "jules.new@test.com"))
        _ = try await h.accounts.put(national, try Fixtures.record(active: false, family: "MARIUS-DURAND", email: "jules.new@test.com"))
        for link in [olderBeforeDeactivation, beforeDeactivation] {
            #expect(try await h.store.resetPassword(token: link, newPassword: Self.password, actor: h.actor) == .failure(.invalidToken))
        }
    }

    /// Unsent rows of the outbox: id, and whether it names a link.
    static func queued(_ h: CredentialHarness) async throws -> [(id: Int64, link: String?)] {
        try await h.accounts.database.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT id, reset_token_hash FROM mail_outbox WHERE sent_at IS NULL ORDER BY id").map { ($0["id"], $0["reset_token_hash"]) }
        }
    }

    /// A reset mail still waiting in the outbox (the relay down) when its link is voided is
    /// withdrawn in the same transaction: it would only lead to « Lien invalide », and its
    /// sealed link leaves the database. A mail without a link (queued by an earlier version)
    /// is left to be delivered; a mail whose link lives on is untouched.
    @Test func aQueuedMailDiesWithItsLink() async throws {
        let h = try await CredentialHarness()
        try await h.accounts.database.write { [outbox = h.outbox, clock = h.clock] db in
            try outbox.enqueue(OutgoingMail(recipient: "jules.marius@test.com", subject: "Ancien", body: "queued by an earlier version"), at: clock.now, in: db)
        }
        let first = try #require(try await h.resetToken())
        h.clock.advance(2 * 60 + 1)
        _ = try #require(try await h.resetToken())
        let queued = try await Self.queued(h)
        #expect(queued.count == 3 && queued[0].link == nil && queued[1].link == SecretToken.hash(first), "\(queued)")
        // A name change voids nothing and withdraws nothing.
        _ = try await h.accounts.put(national, try Fixtures.record(family: "MARIUS-DURAND"))
        #expect(try await Self.queued(h).count == 3)
        // The address changes: both links die, and their mails with them.
        _ = try await h.accounts.put(national, try Fixtures.record(family: "MARIUS-DURAND", email: "jules.new@test.com"))
        #expect(try await Self.queued(h).map(\.id) == [queued[0].id], "only the mail without a link is left")
        let audit = try await h.accounts.auditEvents().last { $0.action == "conditional-update" }
        #expect(audit?.detail == "2 password reset link(s) voided, 2 reset mail(s) still queued withdrawn", "\(String(describing: audit))")
        // The same through a vendor admin's suspension (Habilitation's caller of the ledger).
        h.clock.advance(2 * 60 + 1)
        _ = try #require(try await h.resetToken(email: "jules.new@test.com"))
        #expect(try await Self.queued(h).count == 2)
        let administration = VendorAdministration(database: h.accounts.database, clock: { [clock = h.clock] in clock.now })
        let suspended = try #require(try await administration.suspend(accountID: h.accountID, reason: "test", actor: .commandLine))
        #expect(suspended.resetLinks == 1)
        #expect(try await Self.queued(h).map(\.id) == [queued[0].id])
        let event = try await h.accounts.auditEvents().last { $0.action == "habilitation-withdrawn" }
        #expect(event?.detail?.contains("1 password reset link(s) voided, 1 reset mail(s) still queued withdrawn") == true, "\(String(describing: event))")
    }

    /// A mail whose link expired while it waited (a relay down for longer than a link lives)
    /// is withdrawn when the mailer next claims it, and recorded; the others are claimed as
    /// usual, a mail without a link included.
    @Test func aMailWhoseLinkExpiredBeforeDeliveryIsWithdrawnNotSent() async throws {
        let h = try await CredentialHarness()
        let queue = MailQueue(database: h.accounts.database, outbox: h.outbox)
        _ = try #require(try await h.resetToken())
        let first = try await queue.claimDue(at: h.clock.now)
        #expect(first.due.count == 1 && first.withdrawn.isEmpty)
        // The relay refused it: retried in 30 s, then 1 min, 2 min... past the link's 30 min.
        try await queue.markFailed(id: first.due[0].id, attempts: 0, error: "connection refused", at: h.clock.now)
        h.clock.advance(30 * 60 + 1)
        try await h.accounts.database.write { [outbox = h.outbox, clock = h.clock] db in
            try outbox.enqueue(OutgoingMail(recipient: "jules.marius@test.com", subject: "Ancien", body: "no link recorded"), at: clock.now, in: db)
        }
        let live = try #require(try await h.resetToken())
        let claim = try await queue.claimDue(at: h.clock.now)
        #expect(claim.withdrawn == [MailOutbox.Withdrawn(id: first.due[0].id, accountID: h.accountID, why: .expired)], "\(claim.withdrawn)")
        #expect(claim.due.compactMap { $0.mail?.body } == ["no link recorded", "https://web.example/reinitialiser?jeton=\(live)"])
        #expect(try await Self.queued(h).count == 2, "the expired link's mail is gone, not kept as failed")
        let event = try #require(try await h.accounts.auditEvents().last { $0.action == "password-reset-mail-withdrawn" })
        #expect(event.outcome == "link expired before delivery" && event.accountId == h.accountID && event.actorSubject == "mailer", "\(event)")
        // A link voided behind the ledger's back (a row an operator edited) is caught too.
        try await h.accounts.database.write { [clock = h.clock] db in
            try db.execute(sql: "UPDATE password_reset_token SET voided_at = ? WHERE token_hash = ?", arguments: [clock.now.epochMilliseconds, SecretToken.hash(live)])
        }
        let late = try await queue.claimDue(at: h.clock.now.addingTimeInterval(301))
        #expect(late.withdrawn.map(\.why) == [.dead] && late.due.compactMap { $0.mail?.body } == ["no link recorded"], "\(late)")
    }

    /// A mail claimed for a batch is checked again just before it is sent: voided meanwhile
    /// (gone with its link), expired meanwhile (withdrawn then, and recorded), or still good.
    /// Marking sent a mail withdrawn while the relay had it says so.
    @Test func aClaimedMailIsCheckedAgainJustBeforeItIsSent() async throws {
        let h = try await CredentialHarness()
        let queue = MailQueue(database: h.accounts.database, outbox: h.outbox)
        _ = try #require(try await h.resetToken())
        let claimed = try #require(try await queue.claimDue(at: h.clock.now).due.first)
        #expect(try await queue.recheck(id: claimed.id, at: h.clock.now) == .deliver)
        _ = try await h.accounts.put(national, try Fixtures.record(email: "jules.new@test.com"))
        #expect(try await queue.recheck(id: claimed.id, at: h.clock.now) == .gone, "voided with its link while claimed")
        #expect(try await queue.markSent(id: claimed.id, at: h.clock.now) == false)

        h.clock.advance(2 * 60 + 1)
        _ = try #require(try await h.resetToken(email: "jules.new@test.com"))
        let second = try #require(try await queue.claimDue(at: h.clock.now).due.first)
        h.clock.advance(30 * 60 + 1)
        #expect(try await queue.recheck(id: second.id, at: h.clock.now)
                == .withdrawn(MailOutbox.Withdrawn(id: second.id, accountID: h.accountID, why: .expired)), "expired while claimed")
        #expect(try await h.accounts.auditEvents().last?.action == "password-reset-mail-withdrawn")
        #expect(try await Self.queued(h).isEmpty)
    }

    @Test func unknownEmailQueuesNoMail() async throws {
        let h = try await CredentialHarness()
        #expect(try await h.resetToken(email: "nobody@test.com") == nil)
    }

    @Test func resetRevokesEverySession() async throws {
        let h = try await CredentialHarness()
        try await h.accounts.database.write { db in
            for index in 0..<2 {
                try db.execute(sql: """
                    INSERT INTO web_session (id_hash, account_id, origin, created_at, last_seen_at, absolute_expires_at)
                    VALUES (?, ?, 'sas', 0, 0, 9999999999999)
                    """, arguments: ["s\(index)", h.accountID])
            }
        }
        // A sign-in that passed the old password and waits for its second factor.
        try await h.accounts.database.write { db in
            try db.execute(sql: """
                INSERT INTO sign_in_flow (id_hash, account_id, created_at, expires_at)
                VALUES ('f1', ?, 0, 9999999999999)
                """, arguments: [h.accountID])
        }
        try await h.setPassword(Self.password)
        let live = try await h.accounts.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM web_session WHERE revoked_at IS NULL") }
        #expect(live == 0)
        let openFlows = try await h.accounts.database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow WHERE consumed_at IS NULL") }
        #expect(openFlows == 0, "a flow that passed the old password cannot become a session after the reset")
    }

    @Test func totpEnrolmentRecoveryCodesAndReplay() async throws {
        let h = try await CredentialHarness()
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID) == secret)
        let totp = TOTP()
        let valid = totp.code(secret: secret, step: totp.step(at: h.clock.now))
        let acceptable = Set((-1...1).map { totp.code(secret: secret, step: totp.step(at: h.clock.now) + Int64($0)) })
        let wrong = (0..<1_000_000).lazy.map { String(format: "%06d", $0) }.first { !acceptable.contains($0) }!
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: wrong, actor: h.actor) == nil)
        #expect(valid.count == 6)
        let codes = try #require(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: totp.code(secret: secret, step: totp.step(at: h.clock.now)), actor: h.actor))
        #expect(codes.count == 10)
        #expect(try await h.store.hasConfirmedTOTP(accountID: h.accountID))
        #expect(try await h.store.beginTOTPEnrolment(accountID: h.accountID) == nil, "a confirmed factor is not replaced by a new enrolment")

        // The enrolment code itself cannot be replayed; the next step's code works once.
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: totp.code(secret: secret, step: totp.step(at: h.clock.now)), actor: h.actor) == nil)
        h.clock.advance(30)
        let next = totp.code(secret: secret, step: totp.step(at: h.clock.now))
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: next, actor: h.actor) == .totp)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: next, actor: h.actor) == nil)

        // A recovery code works once, in any case and spacing.
        let recovery = codes[3].lowercased().replacingOccurrences(of: "-", with: " ")
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: recovery, actor: h.actor) == .recoveryCode)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: codes[3], actor: h.actor) == nil)
        // Recovery codes are stored keyed (HMAC under the server key, bound to the account),
        // never as their plain SHA-256, which a backup reader could brute-force (50 bits).
        let hashes = try await h.accounts.database.read { db in try String.fetchAll(db, sql: "SELECT code_hash FROM recovery_code") }
        #expect(hashes.count == 10 && hashes.allSatisfy { $0.hasPrefix("h1:") })
        #expect(codes.allSatisfy { !hashes.contains(RecoveryCodes.legacyHash($0)) })
        // A code stored before (plain SHA-256) still works, once.
        let legacy = "ABCDE-FGHJK"
        try await h.accounts.database.write { db in
            try db.execute(sql: "INSERT INTO recovery_code (account_id, code_hash, created_at) VALUES (?, ?, 0)",
                           arguments: [h.accountID, RecoveryCodes.legacyHash(legacy)])
        }
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: legacy, actor: h.actor) == .recoveryCode)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: legacy, actor: h.actor) == nil)
        // Secrets are sealed at rest.
        let stored = try await h.accounts.database.read { db in try Data.fetchOne(db, sql: "SELECT sealed_secret FROM totp_credential") }
        #expect(stored.map { !Array($0).starts(with: secret) && $0.count > secret.count } == true)
    }

    /// Recovery codes an earlier version stored as plain SHA-256 (reversible from a backup:
    /// 50 bits) are rewritten at start into a keyed form, used or not, in one pass that a
    /// second start finds nothing for; the codes still work, once, and a used one stays used.
    /// Codes stored keyed already are left as they are.
    @Test func legacyRecoveryCodesAreKeyedAtStartAndKeepWorking() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let (spent, kept, current) = ("ABCDE-FGHJK", "MNPQR-STVWX", "23456-789YZ")
        let box = try SecretBox(key: Array(repeating: 7, count: 32))
        try await h.accounts.database.write { db in
            for code in [spent, kept] {
                try db.execute(sql: "INSERT INTO recovery_code (account_id, code_hash, created_at) VALUES (?, ?, 0)",
                               arguments: [h.accountID, RecoveryCodes.legacyHash(code)])
            }
            try db.execute(sql: "INSERT INTO recovery_code (account_id, code_hash, created_at) VALUES (?, ?, 0)",
                           arguments: [h.accountID, RecoveryCodes.storedForm(current, accountID: h.accountID, box: box)])
        }
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: spent, actor: h.actor) == .recoveryCode)

        #expect(try await h.store.rekeyLegacyRecoveryCodes() == 2)
        #expect(try await h.store.rekeyLegacyRecoveryCodes() == 0, "a second start finds nothing to do")
        let stored = try await h.accounts.database.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT code_hash, used_at FROM recovery_code WHERE account_id = ? ORDER BY code_hash", arguments: [h.accountID])
        }
        let hashes = stored.map { $0["code_hash"] as String }
        #expect(hashes.count == 3 && hashes.filter { $0.hasPrefix("h0:") }.count == 2 && hashes.filter { $0.hasPrefix("h1:") }.count == 1, "\(hashes)")
        #expect(!hashes.contains(RecoveryCodes.legacyHash(spent)) && !hashes.contains(RecoveryCodes.legacyHash(kept)), "no plain hash left")
        #expect(hashes.contains(RecoveryCodes.storedForm(current, accountID: h.accountID, box: box)), "a keyed code is not rewritten")
        #expect(stored.filter { ($0[optional: "used_at"] as Int64?) != nil }.count == 1, "the spent code stays spent")

        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: spent, actor: h.actor) == nil)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: kept.lowercased(), actor: h.actor) == .recoveryCode)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: kept, actor: h.actor) == nil)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: current, actor: h.actor) == .recoveryCode)
        // Bound to the account: the rewritten form of the same code differs for another.
        #expect(RecoveryCodes.rekeyedLegacyForm(RecoveryCodes.legacyHash(kept), accountID: h.accountID, box: box)
            != RecoveryCodes.rekeyedLegacyForm(RecoveryCodes.legacyHash(kept), accountID: "another", box: box))
    }

    /// A second factor for a flow that a password reset ended meanwhile (on any instance) is
    /// not even looked at: no TOTP step or recovery code spent, nothing counted, no enrolment
    /// confirmed. For a live flow, the accepted factor is recorded in the flow by the same
    /// transaction.
    @Test func aSecondFactorForAFlowEndedMeanwhileSpendsNothing() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let sessions = SessionStore(database: h.accounts.database, serverKey: TestKeys.server, clock: { h.clock.now })
        let totp = TOTP()
        let shown = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))

        // Enrolment: the flow ends (a reset) between the page and the first code.
        let enrolling = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        try await h.setPassword("Another-good-passphrase")
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: totp.code(secret: shown, step: totp.step(at: h.clock.now)),
                                                       actor: h.actor, for: sessions.secondFactorStep(flowToken: enrolling, wrongCodesAllowed: 3)) == .stepEnded)
        #expect(try await h.store.hasConfirmedTOTP(accountID: h.accountID) == false)
        #expect(try await h.store.pendingTOTPSecret(accountID: h.accountID) == nil, "the reset discarded the pending enrolment with its flow")
        let live = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID, for: sessions.secondFactorStep(flowToken: live, wrongCodesAllowed: 3)))
        let code = { totp.code(secret: secret, step: totp.step(at: h.clock.now)) }
        guard case .confirmed(let codes) = try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: code(), actor: h.actor,
                                                                                 for: sessions.secondFactorStep(flowToken: live, wrongCodesAllowed: 3)) else {
            Issue.record("the enrolment of a live flow is confirmed"); return
        }
        #expect(try await sessions.flow(live)?.secondFactorDone == true)

        // Second factor: a TOTP code and a recovery code sent for a flow a reset ended.
        h.clock.advance(30)
        let ended = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        try await h.setPassword("Yet-another-good-passphrase")
        #expect(try await sessions.flow(ended) == nil)
        let endedStep = sessions.secondFactorStep(flowToken: ended, wrongCodesAllowed: 3)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: code(), actor: h.actor, for: endedStep) == .stepEnded)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: codes[0], actor: h.actor, for: endedStep) == .stepEnded)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: "000000", actor: h.actor, for: endedStep) == .stepEnded)
        let failures = try await h.accounts.database.read { [id = h.accountID] db in
            try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account WHERE id = ?", arguments: [id])
        }
        #expect(failures == 0, "a code that was not looked at is not counted")
        // Neither code was spent: both still work, once each, on live flows.
        let first = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: code(), actor: h.actor,
                                                     for: sessions.secondFactorStep(flowToken: first, wrongCodesAllowed: 3)) == .accepted(.totp))
        #expect(try await sessions.flow(first)?.secondFactorDone == true)
        let second = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: codes[0], actor: h.actor,
                                                     for: sessions.secondFactorStep(flowToken: second, wrongCodesAllowed: 3)) == .accepted(.recoveryCode))
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: codes[0], actor: h.actor,
                                                     for: sessions.secondFactorStep(flowToken: second, wrongCodesAllowed: 3)) == .alreadyDone)
        let third = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: codes[0], actor: h.actor,
                                                     for: sessions.secondFactorStep(flowToken: third, wrongCodesAllowed: 3)) == .refused(flowOpen: true),
                "the recovery code was spent")
    }

    /// A double click on « Valider » (or a second tab): the request that lost the race finds
    /// the flow's factor already proven and neither checks the code (a replay by then) nor
    /// counts it toward the lockout.
    @Test func theSameCodeSentTwiceForOneFlowIsNotCountedAsAFailure() async throws {
        let h = try await CredentialHarness()
        try await h.setPassword(Self.password)
        let sessions = SessionStore(database: h.accounts.database, serverKey: TestKeys.server, clock: { h.clock.now })
        let totp = TOTP()
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: totp.code(secret: secret, step: totp.step(at: h.clock.now)), actor: h.actor) != nil)
        h.clock.advance(30)
        let flow = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        let code = totp.code(secret: secret, step: totp.step(at: h.clock.now))
        let step = sessions.secondFactorStep(flowToken: flow, wrongCodesAllowed: 3)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: code, actor: h.actor, for: step) == .accepted(.totp))
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: code, actor: h.actor, for: step) == .alreadyDone)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: "000000", actor: h.actor, for: step) == .alreadyDone)
        let failures = try await h.accounts.database.read { [id = h.accountID] db in
            try Int.fetchOne(db, sql: "SELECT failed_sign_ins FROM account WHERE id = ?", arguments: [id])
        }
        #expect(failures == 0)
        #expect(try await h.accounts.auditEvents().filter { $0.action == "second-factor" }.isEmpty)
        // Another flow of the account still checks its code: the same one is a replay there.
        let other = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        #expect(try await h.store.verifySecondFactor(accountID: h.accountID, code: code, actor: h.actor,
                                                     for: sessions.secondFactorStep(flowToken: other, wrongCodesAllowed: 3)) == .refused(flowOpen: true))
    }

    /// A wrong code is counted in the flow by the transaction that checks it: the flow ends
    /// at the third, or at once when the account locks (and a locked account's right code
    /// ends the flow it was sent for too).
    @Test func wrongCodesEndTheFlowInTheTransactionThatCountsThem() async throws {
        let h = try await CredentialHarness(lockout: LockoutPolicy(maximumFailures: 5, coolingPeriod: .seconds(900)))
        try await h.setPassword(Self.password)
        let sessions = SessionStore(database: h.accounts.database, serverKey: TestKeys.server, clock: { h.clock.now })
        let totp = TOTP()
        let secret = try #require(try await h.store.beginTOTPEnrolment(accountID: h.accountID))
        #expect(try await h.store.confirmTOTPEnrolment(accountID: h.accountID, code: totp.code(secret: secret, step: totp.step(at: h.clock.now)), actor: h.actor) != nil)
        h.clock.advance(30)
        let acceptable = Set((-1...1).map { totp.code(secret: secret, step: totp.step(at: h.clock.now) + Int64($0)) })
        let wrong = (0..<1_000_000).lazy.map { String(format: "%06d", $0) }.first { !acceptable.contains($0) }!
        func send(_ code: String, _ flow: String) async throws -> CredentialStore.SecondFactorOutcome {
            try await h.store.verifySecondFactor(accountID: h.accountID, code: code, actor: h.actor, for: sessions.secondFactorStep(flowToken: flow, wrongCodesAllowed: 3))
        }
        let first = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        let waiting = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        #expect(try await send(wrong, first) == .refused(flowOpen: true))
        #expect(try await send(wrong, first) == .refused(flowOpen: true))
        #expect(try await send(wrong, first) == .refused(flowOpen: false), "the third wrong code ends the flow")
        #expect(try await sessions.flow(first) == nil)
        let second = try await sessions.startFlow(accountID: h.accountID, intentToken: nil)
        #expect(try await send(wrong, second) == .refused(flowOpen: true))
        #expect(try await send(wrong, second) == .refused(flowOpen: false), "the fifth failure locks the account and ends the flow")
        #expect(try await h.store.isLocked(accountID: h.accountID))
        #expect(try await send(totp.code(secret: secret, step: totp.step(at: h.clock.now)), waiting) == .refused(flowOpen: false),
                "locked: the right code is refused and its flow ends")
        #expect(try await sessions.flow(waiting) == nil)
    }

    @Test func cguAcceptancePerVersion() async throws {
        let h = try await CredentialHarness()
        #expect(try await !h.store.hasAcceptedCGU(accountID: h.accountID, version: "v1"))
        try await h.store.acceptCGU(accountID: h.accountID, version: "v1", address: "192.0.2.1", actor: h.actor)
        #expect(try await h.store.hasAcceptedCGU(accountID: h.accountID, version: "v1"))
        #expect(try await !h.store.hasAcceptedCGU(accountID: h.accountID, version: "v2"))
        let row = try await h.accounts.database.read { db -> (String?, Int64?)? in
            try SQLRow.fetchOne(db, sql: "SELECT * FROM cgu_acceptance").map { ($0["address"], $0["accepted_at"]) }
        }
        #expect(row?.0 == "192.0.2.1" && row?.1 == h.clock.now.epochMilliseconds)
    }

    @Test func outboxScrubsSentMailsAndBacksOff() async throws {
        let h = try await CredentialHarness()
        let token = try #require(try await h.resetToken())
        let outbox = h.outbox
        // The link is nowhere in clear: not in the row, not in the database or WAL files.
        let stored = try await h.accounts.database.read { db in try String.fetchOne(db, sql: "SELECT body FROM mail_outbox") }
        #expect(stored?.contains(token) == false && stored?.hasPrefix("sealed:v1:") == true)
        for suffix in ["", "-wal"] {
            guard let engine = h.accounts.database.engine as? SQLiteEngine else { break }  // PostgreSQL: the row check above
            let bytes = (try? Data(contentsOf: URL(fileURLWithPath: engine.path + suffix))) ?? Data()
            #expect(bytes.range(of: Data(token.utf8)) == nil, "token in clear in db\(suffix)")
        }
        // Another server key cannot open it.
        let foreign = MailOutbox(box: try SecretBox(key: Array(repeating: 9, count: 32)))
        let foreignView = try await h.accounts.database.read { db in try foreign.due(at: .distantFuture, in: db) }
        #expect(foreignView.count == 1 && foreignView[0].mail == nil, "listed (so the mailer can record it as failed), not opened")
        try await h.accounts.database.write { db in
            let due = try outbox.due(at: h.clock.now, in: db)
            #expect(due.count == 1)
            try outbox.markFailed(id: due[0].id, attempts: due[0].attempts, error: "connection refused", at: h.clock.now, in: db)
            #expect(try outbox.due(at: h.clock.now, in: db).isEmpty)
            #expect(try outbox.due(at: h.clock.now.addingTimeInterval(31), in: db).count == 1)
            try outbox.markSent(id: due[0].id, at: h.clock.now, in: db)
            #expect(try String.fetchOne(db, sql: "SELECT body FROM mail_outbox") == "")
            #expect(try outbox.due(at: .distantFuture, in: db).isEmpty)
        }
    }

    @Test func secretBoxBindsToItsContext() throws {
        let box = try SecretBox(key: Array(repeating: 1, count: 32))
        let sealed = try box.seal([1, 2, 3], context: "totp:a")
        #expect(try box.open(sealed, context: "totp:a") == [1, 2, 3])
        #expect(throws: (any Error).self) { try box.open(sealed, context: "totp:b") }
        #expect(throws: (any Error).self) { try SecretBox(key: [1, 2]) }
    }
}
