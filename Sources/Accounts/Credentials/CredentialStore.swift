import Foundation
import Storage
import Logging

/// The result of the password step. The person sees one answer for every refusal; the
/// reason is for the audit trail only.
public enum PasswordStepOutcome: Sendable, Equatable {
    case accepted(accountID: String)
    case refused(reason: Reason, accountID: String?)

    public enum Reason: String, Sendable {
        case unknownEmail = "unknown-email"
        case wrongPassword = "wrong-password"
        case locked
        /// This failure started a lockout.
        case lockedNow = "locked-now"
    }
}

/// What « Changer mon mot de passe » came to (``CredentialStore/changePassword(accountID:keepingSession:renewingSessionAs:currentPassword:newPassword:actor:notification:)``).
public enum PasswordChangeOutcome: Sendable, Equatable {
    /// Changed; the account's other live sessions ended (how many).
    case changed(otherSessions: Int)
    /// The current password was wrong (a failure counted towards the lockout).
    case wrongCurrentPassword
    /// The password changed elsewhere (another tab) while this one was checked: nothing
    /// counted, nothing changed.
    case changedMeanwhile
    /// The account is locked (`now`: by this failure): nothing changed.
    case locked(now: Bool)
    /// The account must choose its password through a reset link (« Mot de passe oublié »):
    /// nothing checked, nothing counted.
    case resetRequired
    /// The SAS deactivated the account: nothing checked, nothing counted.
    case deactivated
    /// A vendor admin suspended the account's habilitation: nothing checked, nothing counted.
    case suspended
    /// The new password breaks the policy: nothing checked, nothing counted.
    case policy([PasswordPolicyViolation])
    /// The session the change came from ended meanwhile: nothing changed.
    case sessionEnded
}

/// Why a password reset was refused.
public enum PasswordResetError: Error, Sendable, Equatable {
    /// Unknown, expired, already used, or voided (a password set through another link, the
    /// e-mail changed, the account deactivated): the same answer for all.
    case invalidToken
    case policy([PasswordPolicyViolation])
}

/// Settings of the credential rules.
public struct CredentialConfiguration: Sendable {
    public var lockout: LockoutPolicy = LockoutPolicy()
    public var resetTokenLifetime: TimeInterval = 30 * 60
    /// Hashes waiting or running beyond which a password check or reset throws
    /// ``PasswordHasher/Busy`` instead of queueing (`--argon2-queue`); nil: no limit.
    public var hashQueueLimit: Int?
    /// A request for an account whose newest live link is younger than this issues nothing
    /// and mails nothing: a bound on the links and mails anyone who knows an address can
    /// cause (older links stay usable: see ``ResetLinkLedger``).
    public var resetRequestInterval: TimeInterval = 2 * 60
    public var totp: TOTP = TOTP()

    public init() {}
}

/// Passwords, second factors, reset tokens and CGU acceptance: every credential rule of
/// sign-in, each change in one transaction with its audit event.
public final class CredentialStore: Sendable {
    public let database: AccountDatabase
    public let hasher: PasswordHasher
    public let configuration: CredentialConfiguration
    private let box: SecretBox
    private let policy: PasswordPolicy
    private let clock: @Sendable () -> Date
    private let audit = AuditLog()
    private let outbox: MailOutbox
    /// Sessions belong to Habilitation: revoked through it, in this store's transactions.
    private let sessions: any AccountSessions
    /// A real argon2id hash of nothing anyone knows, verified when the e-mail is unknown so
    /// that answer takes as long as a wrong password.
    private let decoyHash: String

    public init(database: AccountDatabase, hasher: PasswordHasher, box: SecretBox, sessions: any AccountSessions,
                policy: PasswordPolicy = PasswordPolicy(), configuration: CredentialConfiguration = CredentialConfiguration(),
                clock: @escaping @Sendable () -> Date = Date.init) throws {
        self.database = database
        self.sessions = sessions
        self.hasher = hasher
        self.box = box
        self.outbox = MailOutbox(box: box)
        self.policy = policy
        self.configuration = configuration
        self.clock = clock
        self.decoyHash = try PasswordHasher.hashNow(Array(SecretToken.generate().utf8), parameters: hasher.parameters)
    }

    private var now: Date { Date(epochMilliseconds: clock().epochMilliseconds) }

    /// The account signing in with `email`: the active one if any, else the most recently
    /// updated. A deactivated account's factors are checked as any other's (the same answers,
    /// the same lockout), but no session opens for it (`SessionStore.completeFlow`). Spaces
    /// around `email` are not part of it (no stored address has any: the SAS's are checked).
    public func account(forEmail email: String, in db: any SQLTransaction) throws -> AccountRow? {
        try AccountRow.fetchOne(db, sql: """
            SELECT * FROM account WHERE email_key = ? ORDER BY active DESC, updated_at DESC, id LIMIT 1
            """, arguments: [email.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()])
    }

    // MARK: Password step

    /// Verifies e-mail and password with lockout. argon2 runs in every case (decoy hash for
    /// an unknown e-mail, the real one for a locked account), off the event loop.
    public func checkPassword(email: String, password: String, actor: AuditActor) async throws -> PasswordStepOutcome {
        try await checkPassword(email: email, password: password, actor: actor) { _, _ in () }.outcome
    }

    /// ``checkPassword(email:password:actor:)``, then `whenAccepted` (the sign-in flow's
    /// opening) in the same transaction as the decision. The password is verified against the
    /// hash read before argon2; the transaction checks that this hash is still the account's:
    /// a password reset committed meanwhile (on this instance or another) voids the check,
    /// and since the flow is opened in that transaction, a reset either consumes it or comes
    /// first and refuses it. Nothing verified against an old password opens a flow.
    public func checkPassword<T: Sendable>(email: String, password: String, actor: AuditActor,
                                           whenAccepted: @escaping @Sendable (_ accountID: String, any SQLTransaction) throws -> T)
        async throws -> (outcome: PasswordStepOutcome, opened: T?) {
        let row = try await database.read { db in try self.account(forEmail: email, in: db) }
        let encoded = row?.passwordHash ?? decoyHash
        let normalized = Self.normalized(password)
        // Then, only when normalising changed it, as typed: a password set before
        // normalisation (the decoy too, so an unknown e-mail costs the same). One job, one
        // check: at most one failure counted. (Two argon2 runs for such input: the rate
        // limits and the hash queue bound what that costs.)
        var candidates = [Array(normalized.utf8)]
        if candidates[0] != Array(password.utf8) { candidates.append(Array(password.utf8)) }
        let matched = try await hasher.verifyAny(candidates, encoded: encoded, admittingUpTo: configuration.hashQueueLimit)
        let verified = matched != nil
        let legacy = matched == 1
        guard let row else {
            let at = now
            try await database.write { db in
                // The statements of a wrong password's transaction (settlePasswordCheck), on
                // an id no account has: an unknown e-mail costs the same round trips as a
                // known one, so answer times do not tell them apart on a networked database.
                let decoy = "unknown-" + SecretToken.generate()
                _ = try SQLRow.fetchOne(db, sql: """
                    SELECT failed_sign_ins, locked_until, last_failed_sign_in, password_hash, password_reset_required FROM account WHERE id = ?
                    """, arguments: [decoy])
                try db.execute(sql: "UPDATE account SET failed_sign_ins = ?, locked_until = ?, last_failed_sign_in = ? WHERE id = ?",
                               arguments: [1, nil as Int64?, at.epochMilliseconds, decoy])
                try self.audit.append(self.event("sign-in", "refused unknown-email", nil, actor, at), in: db)
            }
            return (.refused(reason: .unknownEmail, accountID: nil), nil)
        }
        let result = try await settlePasswordCheck(row, verified: verified, at: now, actor: actor, whenAccepted: whenAccepted)
        if case .accepted = result.outcome,
           legacy || PasswordHasher.parameters(of: row.passwordHash).map({ $0.isWeaker(than: hasher.parameters) }) == true {
            await upgradeHash(of: row, password: normalized, actor: actor, reason: legacy ? "normalised" : "argon2 parameters upgraded")
        }
        return result
    }

    /// The password as stored and checked: Unicode NFKC (NIST SP 800-63B 5.1.1.2), so that
    /// « é » typed as one character on one device and as « e » plus an accent on another (or
    /// a full-width letter from an Asian keyboard layout) is the same password, instead of a
    /// failure counted towards the lockout.
    static func normalized(_ password: String) -> String {
        password.precomposedStringWithCompatibilityMapping
    }

    /// Rehashes a password stored with weaker argon2 parameters than the current ones (only
    /// weaker: instances configured differently during a rolling change must not flip hashes
    /// back and forth), at the
    /// one moment the password is known: a correct sign-in (Keycloak does the same). Without
    /// it, raising the cost would leave every stored hash at the old cost while unknown
    /// e-mails are checked against a decoy at the new cost: one timed request per address
    /// would tell existing accounts apart. Best effort: if it fails, the next sign-in tries
    /// again; a hash changed meanwhile (a reset) is kept.
    /// A hash of a password set before normalisation is replaced the same way, by the
    /// normalised password's.
    private func upgradeHash(of row: AccountRow, password: String, actor: AuditActor, reason: String) async {
        do {
            let upgraded = try await hasher.hash(Array(password.utf8), admittingUpTo: configuration.hashQueueLimit)
            let at = now
            try await database.write { db in
                try db.execute(sql: "UPDATE account SET password_hash = ? WHERE id = ? AND password_hash = ?",
                               arguments: [upgraded, row.id, row.passwordHash])
                if try db.changesCount == 1 {
                    try self.audit.append(self.event("password-rehashed", reason, row.id, actor, at), in: db)
                }
            }
        } catch {
            // Left for the next sign-in: the password check itself succeeded.
        }
    }

    /// The decision of a password check, in one write transaction (see above).
    func settlePasswordCheck<T: Sendable>(_ row: AccountRow, verified: Bool, at: Date, actor: AuditActor,
                                          whenAccepted: @escaping @Sendable (String, any SQLTransaction) throws -> T)
        async throws -> (outcome: PasswordStepOutcome, opened: T?) {
        let lockout = configuration.lockout
        return try await database.write { db in
            let current = try SQLRow.fetchOne(db, sql: """
                SELECT failed_sign_ins, locked_until, last_failed_sign_in, password_hash, password_reset_required FROM account WHERE id = ?
                """, arguments: [row.id])
            let state = Self.lockoutState(of: current)
            if lockout.isLocked(state, at: at) {
                try self.audit.append(self.event("sign-in", "refused locked", row.id, actor, at), in: db)
                return (.refused(reason: .locked, accountID: row.id), nil)
            }
            guard let current, current["password_hash"] as String? == row.passwordHash else {
                // The password changed while argon2 ran: this check says nothing about the
                // current one. Refused, not counted (the right new password may follow).
                try self.audit.append(self.event("sign-in", "refused password-changed-meanwhile", row.id, actor, at), in: db)
                return (.refused(reason: .wrongPassword, accountID: row.id), nil)
            }
            if verified && (current["password_reset_required"] as Bool? ?? true) {
                // The right password of an account that must choose a new one (its second
                // factor removed, or never set): refused with the same answer, and not
                // counted — its owner retrying it after a `forget-secret-key` must not lock
                // themself out, and an attacker who knows it learns nothing from the page.
                try self.audit.append(self.event("sign-in", "refused password-reset-required", row.id, actor, at), in: db)
                return (.refused(reason: .wrongPassword, accountID: row.id), nil)
            }
            if verified {
                // The counter is not reset here: a correct password alone is not a sign-in.
                // Someone holding a phished password must not get a fresh run of second-
                // factor guesses by re-entering it; only a completed sign-in resets it.
                // A pending TOTP enrolment belongs to the flow that began it (`pending_step`:
                // no other flow is shown it or may confirm it). A new flow also discards it,
                // so whoever once saw a pending secret (a flow opened through a stolen reset
                // link, then left) does not know the one the regulator enrols.
                try db.execute(sql: "DELETE FROM totp_credential WHERE account_id = ? AND confirmed_at IS NULL", arguments: [row.id])
                return (.accepted(accountID: row.id), try whenAccepted(row.id, db))
            }
            let lockedNow = try self.countFailure(row.id, state, action: "sign-in", refusal: "refused wrong-password", actor: actor, at: at, in: db)
            return (.refused(reason: lockedNow ? .lockedNow : .wrongPassword, accountID: row.id), nil)
        }
    }

    /// A failed factor (a password at the sign-in or on « Changer mon mot de passe », a code),
    /// counted towards the lockout in the caller's transaction, with its audit event
    /// (`refusal`, or `refused locked-now` when it starts a lock, and then the `lockout` event).
    /// Returns whether it started a lock.
    func countFailure(_ accountID: String, _ state: LockoutPolicy.State, action: String, refusal: String, actor: AuditActor, at: Date,
                      in db: any SQLTransaction) throws -> Bool {
        let (next, lockedNow) = configuration.lockout.recordingFailure(state, at: at)
        try db.execute(sql: "UPDATE account SET failed_sign_ins = ?, locked_until = ?, last_failed_sign_in = ? WHERE id = ?",
                       arguments: [next.consecutiveFailures, next.lockedUntil?.epochMilliseconds, next.lastFailureAt?.epochMilliseconds, accountID])
        try audit.append(event(action, lockedNow ? "refused locked-now" : refusal, accountID, actor, at,
                               detail: "consecutive failures: \(next.consecutiveFailures)"), in: db)
        if lockedNow {
            try audit.append(event("lockout", "locked until \(AuditLog.timestamp(next.lockedUntil!))", accountID, actor, at), in: db)
        }
        return lockedNow
    }

    func lockoutState(_ accountID: String, in db: any SQLTransaction) throws -> LockoutPolicy.State {
        Self.lockoutState(of: try SQLRow.fetchOne(db, sql: "SELECT failed_sign_ins, locked_until, last_failed_sign_in FROM account WHERE id = ?", arguments: [accountID]))
    }

    /// The lockout columns of an account row (no row: never failed, not locked).
    static func lockoutState(of row: SQLRow?) -> LockoutPolicy.State {
        LockoutPolicy.State(consecutiveFailures: row?["failed_sign_ins"] ?? 0,
                            lockedUntil: (row?["locked_until"] as Int64?).map(Date.init(epochMilliseconds:)),
                            lastFailureAt: (row?["last_failed_sign_in"] as Int64?).map(Date.init(epochMilliseconds:)))
    }

    // MARK: Forgotten password

    /// Issues a reset link for the account using `email`, if there is one, and queues the
    /// mail in the same transaction. Nothing is issued while the account's newest live link
    /// is younger than `resetRequestInterval` (a bound on the mails anyone who knows the
    /// address can send). Older links stay usable until they expire or ``ResetLinkLedger``
    /// voids them all (a password set through any of them, among others): a request from
    /// someone else cannot void the link the regulator is about to open. The caller gives the
    /// same answer either way (no enumeration).
    public func requestPasswordReset(email: String, makeMail: @escaping @Sendable (_ token: String, _ account: AccountRow) -> OutgoingMail,
                                     actor: AuditActor) async throws {
        let at = now
        let lifetime = configuration.resetTokenLifetime
        let interval = configuration.resetRequestInterval
        try await database.write { db in
            guard let row = try self.account(forEmail: email, in: db) else {
                try self.audit.append(self.event("password-reset-requested", "unknown-email", nil, actor, at), in: db)
                return
            }
            // A link for an account the SAS deactivated would open nothing (no session opens
            // for it): no mail, the same answer. The SAS's reactivation makes it mailable again.
            guard row.active else {
                try self.audit.append(self.event("password-reset-requested", "not-mailed inactive", row.id, actor, at), in: db)
                return
            }
            // Nor for one a vendor admin suspended (as a disabled account in Keycloak): the
            // suspension voided its live links, and its `restore` makes it mailable again.
            guard try !self.sessions.isSuspendedByVendor(row.id, in: db) else {
                try self.audit.append(self.event("password-reset-requested", "not-mailed suspended", row.id, actor, at), in: db)
                return
            }
            if let latest = try Int64.fetchOne(db, sql: """
                SELECT MAX(created_at) FROM password_reset_token
                WHERE account_id = ? AND used_at IS NULL AND voided_at IS NULL AND expires_at > ?
                """, arguments: [row.id, at.epochMilliseconds]),
               at.timeIntervalSince(Date(epochMilliseconds: latest)) < interval {
                try self.audit.append(self.event("password-reset-requested", "not-mailed recent-link", row.id, actor, at), in: db)
                return
            }
            let token = SecretToken.generate()
            try db.execute(sql: "INSERT INTO password_reset_token (token_hash, account_id, created_at, expires_at) VALUES (?, ?, ?, ?)",
                           arguments: [SecretToken.hash(token), row.id, at.epochMilliseconds, at.addingTimeInterval(lifetime).epochMilliseconds])
            try self.outbox.enqueue(makeMail(token, row), resetLink: SecretToken.hash(token), at: at, in: db)
            try self.audit.append(self.event("password-reset-requested", "mailed", row.id, actor, at), in: db)
        }
    }

    /// The account a reset link belongs to, if the link is still usable.
    public func accountForResetToken(_ token: String) async throws -> AccountRow? {
        let at = now
        return try await database.read { db in try self.usableResetAccount(token, at: at, in: db) }
    }

    private func usableResetAccount(_ token: String, at: Date, in db: any SQLTransaction) throws -> AccountRow? {
        try AccountRow.fetchOne(db, sql: """
            SELECT account.* FROM password_reset_token t JOIN account ON account.id = t.account_id
            WHERE t.token_hash = ? AND t.used_at IS NULL AND t.voided_at IS NULL AND t.expires_at > ?
            """, arguments: [SecretToken.hash(token), at.epochMilliseconds])
    }

    /// Sets a new password through a reset link: policy checked, argon2id off the event loop,
    /// then one transaction that spends the link, voids the account's other live links (a
    /// link mailed before the password changed must not change it again), stores the hash,
    /// clears the reset flag and revokes every session of the account. The lockout stays: someone holding a phished
    /// password *and* the mailbox must not buy a fresh run of code guesses with a reset; only
    /// a completed sign-in (or the lockout's end, or an admin `unlock`) clears it.
    public func resetPassword(token: String, newPassword: String, actor: AuditActor) async throws -> Result<String, PasswordResetError> {
        guard let row = try await accountForResetToken(token) else { return .failure(.invalidToken) }
        let newPassword = Self.normalized(newPassword)
        let violations = policy.violations(of: newPassword, email: row.email)
        guard violations.isEmpty else { return .failure(.policy(violations)) }
        let hash = try await hasher.hash(Array(newPassword.utf8), admittingUpTo: configuration.hashQueueLimit)
        let at = now
        return try await database.write { db in
            // Re-checked inside the transaction: two tabs submitting the same link, one wins.
            guard let current = try self.usableResetAccount(token, at: at, in: db), current.id == row.id else { return .failure(.invalidToken) }
            try db.execute(sql: "UPDATE password_reset_token SET used_at = ? WHERE token_hash = ?", arguments: [at.epochMilliseconds, SecretToken.hash(token)])
            let voided = try ResetLinkLedger().voidAll(of: row.id, at: at, in: db)
            try db.execute(sql: """
                UPDATE account SET password_hash = ?, password_reset_required = FALSE, password_changed_at = ? WHERE id = ?
                """, arguments: [hash, at.epochMilliseconds, row.id])
            _ = try self.sessions.revokeAll(of: row.id, reason: .passwordChanged, at: at, in: db)
            // The flows just ended: so do their pending enrolments (see settlePasswordCheck).
            try db.execute(sql: "DELETE FROM totp_credential WHERE account_id = ? AND confirmed_at IS NULL", arguments: [row.id])
            try self.audit.append(self.event("password-reset-completed", "password set, sessions revoked", row.id, actor, at,
                                             detail: voided.summary(which: "other ")), in: db)
            return .success(row.id)
        }
    }

    // MARK: Password change

    /// « Changer mon mot de passe », from a live session (`keepingSession`, its id's hash):
    /// the current password is required (a session taken over, a workstation left signed in,
    /// must not be enough to change it), and a wrong one counts towards the lockout as at the
    /// sign-in (every failed factor counts). The policy is checked first (nothing counted).
    ///
    /// Two transactions, as the sign-in's check and its flow: the first settles the current
    /// password (locked: refused; wrong: counted), and only a right one, on an account not
    /// locked, gets the new password hashed: a locked account answers in the time of one
    /// argon2 run whether the password tried was right or not (hashing the new one first would
    /// tell the two apart, and make guesses during a lock free). The second commits, after
    /// checking again that the password, the lock and the session are as they were: the
    /// hash, the session renewed under `renewingSessionAs` (a cookie that leaked before the
    /// change does not outlive it), every other session and every sign-in under way ended,
    /// the reset links voided (their queued mails withdrawn), pending TOTP enrolments dropped,
    /// a notification mail queued to the account's address as it is at that moment, and the
    /// audit event. The failure count is left as it is: only a completed sign-in resets it.
    public func changePassword(accountID: String, keepingSession sessionHash: String, renewingSessionAs renewedHash: String,
                               currentPassword: String, newPassword: String, actor: AuditActor,
                               notification: @escaping @Sendable (AccountRow, Date) -> OutgoingMail) async throws -> PasswordChangeOutcome {
        let lockout = configuration.lockout
        // What refuses a change without looking at any password (the session holder learns
        // nothing they did not know: the account exists, and is locked, suspended …), audited,
        // nothing counted; looked at before argon2 and again in each transaction, against the
        // hash the check is made with (`expected`: changed meanwhile, refused).
        let recheck = { @Sendable (db: any SQLTransaction, at: Date, expected: String?) throws -> (account: AccountRow?, refusal: PasswordChangeOutcome?) in
            guard let account = try AccountRow.fetchOne(db, sql: "SELECT * FROM account WHERE id = ?", arguments: [accountID]) else {
                return (nil, .sessionEnded)
            }
            let refusal: PasswordChangeOutcome?
            if lockout.isLocked(try self.lockoutState(account.id, in: db), at: at) {
                refusal = .locked(now: false)
            } else if let expected, account.passwordHash != expected {
                refusal = .changedMeanwhile
            } else {
                refusal = try self.changeRefusal(account, in: db)
            }
            if let refusal {
                try self.audit.append(self.event("password-change", "refused \(Self.auditName(refusal))", account.id, actor, at), in: db)
            }
            return (account, refusal)
        }
        let checked = try await database.write { db in try recheck(db, self.now, nil) }
        if let refusal = checked.refusal { return refusal }
        guard let row = checked.account else { return .sessionEnded }
        let newPassword = Self.normalized(newPassword)
        let violations = policy.violations(of: newPassword, email: row.email)
        guard violations.isEmpty else { return .policy(violations) }
        let normalized = Self.normalized(currentPassword)
        var candidates = [Array(normalized.utf8)]
        if candidates[0] != Array(currentPassword.utf8) { candidates.append(Array(currentPassword.utf8)) }
        let verified = try await hasher.verifyAny(candidates, encoded: row.passwordHash, admittingUpTo: configuration.hashQueueLimit) != nil
        let settled: PasswordChangeOutcome? = try await database.write { db in
            let at = self.now
            if let refusal = try recheck(db, at, row.passwordHash).refusal { return refusal }
            guard verified else {
                let lockedNow = try self.countFailure(row.id, try self.lockoutState(row.id, in: db), action: "password-change",
                                                      refusal: "refused wrong-password", actor: actor, at: at, in: db)
                return lockedNow ? .locked(now: true) : .wrongCurrentPassword
            }
            return nil
        }
        if let settled { return settled }
        // Admitted already (the check above): a queue filled meanwhile must not turn a right
        // password into a silent 503.
        let hash = try await hasher.hash(Array(newPassword.utf8))
        do { return try await database.write { db in
            let at = self.now
            let checked = try recheck(db, at, row.passwordHash)
            if let refusal = checked.refusal { return refusal }
            guard let account = checked.account,
                  let ended = try self.sessions.revokeOthers(of: row.id, keeping: sessionHash, reason: .passwordChanged, at: at, in: db) else {
                try self.audit.append(self.event("password-change", "refused session-ended", row.id, actor, at), in: db)
                return .sessionEnded
            }
            // Thrown, not returned: the other sessions' ends above must not commit alone.
            guard try self.sessions.renew(sessionHash, as: renewedHash, of: row.id, in: db) else { throw SessionGone() }
            let voided = try ResetLinkLedger().voidAll(of: row.id, at: at, in: db)
            try db.execute(sql: "UPDATE account SET password_hash = ?, password_changed_at = ? WHERE id = ?",
                           arguments: [hash, at.epochMilliseconds, row.id])
            try db.execute(sql: "DELETE FROM totp_credential WHERE account_id = ? AND confirmed_at IS NULL", arguments: [row.id])
            try self.outbox.enqueue(notification(account, at), at: at, in: db)
            try self.audit.append(self.event("password-changed", "\(ended.sessions) other session(s) revoked", row.id, actor, at,
                                             detail: ["session \(String(sessionHash.prefix(12))) kept, renewed as \(String(renewedHash.prefix(12)))",
                                                      ended.summary.isEmpty ? nil : ended.summary, voided.summary,
                                                      "notification queued"].compactMap { $0 }.joined(separator: ", ")), in: db)
            return .changed(otherSessions: ended.sessions)
        } } catch is SessionGone {
            return .sessionEnded
        }
    }

    private struct SessionGone: Error {}

    /// A refusal's name in the audit trail (`refused locked`, `refused suspended` …).
    static func auditName(_ outcome: PasswordChangeOutcome) -> String {
        switch outcome {
        case .locked: return "locked"
        case .changedMeanwhile: return "password-changed-meanwhile"
        case .deactivated: return "deactivated"
        case .suspended: return "suspended"
        case .resetRequired: return "reset-required"
        default: return "\(outcome)"
        }
    }

    /// Accounts whose password cannot be changed from a session: one a vendor admin suspended
    /// (its habilitation withdrawn, its sessions live), one that must choose a new
    /// password through a reset link (its second factor was reset, or its password was never
    /// chosen: a session opened through Pro Santé Connect must not skip the mailbox's proof
    /// with an old, possibly phished, password, nor spend lockout tries on an unknown one),
    /// and one the SAS deactivated (no reset link is issued for it either).
    func changeRefusal(_ row: AccountRow, in db: any SQLTransaction) throws -> PasswordChangeOutcome? {
        if !row.active { return .deactivated }
        if row.passwordResetRequired { return .resetRequired }
        if try sessions.isSuspendedByVendor(row.id, in: db) { return .suspended }
        return nil
    }

    // MARK: Second factor

    /// Starts (or restarts) TOTP enrolment for the sign-in `step`: a new secret, stored sealed,
    /// not yet confirmed, and bound to that step. Returns the secret for the QR code and text
    /// display; nil once a factor is confirmed, or when the step has ended meanwhile. Another
    /// flow's pending enrolment is replaced (its secret is worth nothing from then on).
    public func beginTOTPEnrolment(accountID: String, for step: SignInStep = .outsideAnyFlow) async throws -> [UInt8]? {
        let secret = TOTP.generateSecret()
        let sealed = try box.seal(secret, context: "totp:\(accountID)")
        let at = now
        let started: Bool = try await database.write { db in
            guard try step.isOpen(db), try !self.hasConfirmedTOTP(accountID, in: db) else { return false }
            try self.storePendingEnrolment(accountID, sealed: sealed, for: step, at: at, in: db)
            return true
        }
        return started ? secret : nil
    }

    /// What the enrolment page of `step` shows: the step's own pending secret, else a new one
    /// bound to it, decided in one transaction, so two loads of the page at once (a reload, a
    /// second tab) show the same secret, the one stored. nil once a factor is confirmed, or
    /// when the step has ended.
    public func enrolmentSecret(accountID: String, for step: SignInStep) async throws -> [UInt8]? {
        let fresh = TOTP.generateSecret()
        let sealed = try box.seal(fresh, context: "totp:\(accountID)")
        let at = now
        let shown: Data? = try await database.write { db in
            guard try step.isOpen(db), try !self.hasConfirmedTOTP(accountID, in: db) else { return nil }
            if let pending = try self.pendingEnrolment(accountID, of: step, in: db) { return pending }
            try self.storePendingEnrolment(accountID, sealed: sealed, for: step, at: at, in: db)
            return Data(sealed)
        }
        return try shown.map { try box.open(Array($0), context: "totp:\(accountID)") }
    }

    /// Stores `sealed` as the account's pending enrolment, bound to `step`, replacing any
    /// other pending one.
    func storePendingEnrolment(_ accountID: String, sealed: [UInt8], for step: SignInStep, at: Date, in db: any SQLTransaction) throws {
        try db.execute(sql: """
            INSERT INTO totp_credential (account_id, sealed_secret, created_at, pending_step) VALUES (?, ?, ?, ?)
            ON CONFLICT(account_id) DO UPDATE SET sealed_secret = excluded.sealed_secret, created_at = excluded.created_at,
                                                  confirmed_at = NULL, last_used_step = NULL, pending_step = excluded.pending_step
            """, arguments: [accountID, Data(sealed), at.epochMilliseconds, step.id])
    }

    /// The pending enrolment of `step` (what its page shows again after a wrong code), and
    /// only its own: a pending secret another flow began is never shown here. Otherwise
    /// someone holding the password could begin one while the regulator's enrolment page is
    /// open, and the regulator's next wrong or late code would re-render the page with the
    /// other's secret, which the regulator would then enrol.
    public func pendingTOTPSecret(accountID: String, for step: SignInStep = .outsideAnyFlow) async throws -> [UInt8]? {
        let sealed = try await database.read { db in
            try self.pendingEnrolment(accountID, of: step, in: db)
        }
        return try sealed.map { try box.open(Array($0), context: "totp:\(accountID)") }
    }

    /// The sealed secret of the enrolment pending for `step` (a flow's own, or, outside any
    /// flow, one begun outside any).
    func pendingEnrolment(_ accountID: String, of step: SignInStep, in db: any SQLTransaction) throws -> Data? {
        if let id = step.id {
            return try Data.fetchOne(db, sql: "SELECT sealed_secret FROM totp_credential WHERE account_id = ? AND confirmed_at IS NULL AND pending_step = ?",
                                     arguments: [accountID, id])
        }
        return try Data.fetchOne(db, sql: "SELECT sealed_secret FROM totp_credential WHERE account_id = ? AND confirmed_at IS NULL AND pending_step IS NULL",
                                 arguments: [accountID])
    }

    /// Confirms enrolment with a first code, outside any sign-in flow (tooling and tests);
    /// returns the recovery codes, or nil when the code is wrong. The web sign-in uses
    /// ``confirmTOTPEnrolment(accountID:code:actor:for:)``.
    public func confirmTOTPEnrolment(accountID: String, code: String, actor: AuditActor) async throws -> [String]? {
        guard case .confirmed(let codes) = try await confirmTOTPEnrolment(accountID: accountID, code: code, actor: actor, for: .outsideAnyFlow) else { return nil }
        return codes
    }

    /// What a first code did to a pending enrolment.
    public enum EnrolmentOutcome: Sendable, Equatable {
        /// Confirmed: the recovery codes to show once (their hashes replace any earlier set).
        case confirmed([String])
        /// The confirming code sent again by the step that confirmed with it, before its
        /// regulator acknowledged the codes (``acknowledgeRecoveryCodes(accountID:for:)``): a
        /// double click on « Activer », whose first answer (the only copy of the codes) the
        /// browser drops, or a reload of the codes page. A new set, replacing the first (stored
        /// hashed, it cannot be shown again).
        case reissued([String])
        /// A wrong code (not counted: whoever sends it was just shown the secret).
        case refused
        /// No enrolment of this flow is pending: another sign-in of the account (a second
        /// tab, someone else holding the password) replaced it, or the account enrolled.
        case notPending
        /// The account is locked: nothing is checked; the flow should end, as a locked
        /// account's code ends its flow at the code step.
        case locked
        /// The sign-in flow ended before the code was looked at (a password reset, "sign out
        /// everywhere"): nothing was confirmed.
        case stepEnded
    }

    /// Confirms enrolment with a first code, for the sign-in `step` (still open, checked in
    /// the same transaction; confirming proves possession of the second factor, so the step
    /// records it there too).
    public func confirmTOTPEnrolment(accountID: String, code: String, actor: AuditActor, for step: SignInStep) async throws -> EnrolmentOutcome {
        let at = now
        let totp = configuration.totp
        let codes = RecoveryCodes.generate()
        return try await database.write { db in
            guard try step.isOpen(db) else { return .stepEnded }
            // Only the enrolment this flow began (see pendingTOTPSecret).
            guard let sealed = try self.pendingEnrolment(accountID, of: step, in: db) else {
                return try self.reissueForConfirmingCode(accountID: accountID, code: code, step: step, codes: codes, actor: actor, at: at, in: db) ?? .notPending
            }
            let secret = try self.box.open(Array(sealed), context: "totp:\(accountID)")
            guard !self.configuration.lockout.isLocked(try self.lockoutState(accountID, in: db), at: at) else { return .locked }
            guard let totpStep = totp.verify(code, secret: secret, at: at, lastUsedStep: nil) else { return .refused }
            // `pending_step` keeps naming the step on the confirmed row until the regulator
            // says the codes are noted (``acknowledgeRecoveryCodes``): until then that step,
            // and only it, may have them issued again, with the same code (`.reissued`).
            try db.execute(sql: "UPDATE totp_credential SET confirmed_at = ?, last_used_step = ?, pending_step = ? WHERE account_id = ?",
                           arguments: [at.epochMilliseconds, totpStep, step.id, accountID])
            // Both factors are proven: the sign-in is complete.
            try db.execute(sql: "UPDATE account SET failed_sign_ins = 0, locked_until = NULL, last_failed_sign_in = NULL WHERE id = ?", arguments: [accountID])
            try self.replaceRecoveryCodes(of: accountID, with: codes, at: at, in: db)
            try self.audit.append(self.event("second-factor-enrolled", "totp confirmed, \(codes.count) recovery codes issued", accountID, actor, at), in: db)
            try step.accept(db)
            return .confirmed(codes)
        }
    }

    /// ``EnrolmentOutcome/reissued(_:)``, decided in the transaction that would have confirmed:
    /// the account's factor was confirmed by `step` (`pending_step` still names it) and
    /// `code` is the very code that confirmed it (its TOTP step is the one recorded, so it
    /// matches for a minute or so at most). Anything else, nil: a stolen flow cookie alone
    /// does not void the regulator's codes, nor does a later sign-in's code.
    private func reissueForConfirmingCode(accountID: String, code: String, step: SignInStep, codes: [String], actor: AuditActor, at: Date,
                                          in db: any SQLTransaction) throws -> EnrolmentOutcome? {
        guard let stepID = step.id, let row = try SQLRow.fetchOne(db, sql: """
            SELECT sealed_secret, last_used_step FROM totp_credential WHERE account_id = ? AND confirmed_at IS NOT NULL AND pending_step = ?
            """, arguments: [accountID, stepID]), let confirmingStep = row["last_used_step"] as Int64? else { return nil }
        let secret = try box.open(Array(row["sealed_secret"] as Data), context: "totp:\(accountID)")
        guard configuration.totp.verify(code, secret: secret, at: at, lastUsedStep: nil) == confirmingStep else { return nil }
        try replaceRecoveryCodes(of: accountID, with: codes, at: at, in: db)
        try audit.append(event("recovery-codes-reissued", "\(codes.count) recovery codes issued again, the earlier set voided", accountID, actor, at,
                               detail: "the confirming code was sent again before the codes were acknowledged"), in: db)
        return .reissued(codes)
    }

    /// The account's recovery codes become `codes` (stored keyed, ``RecoveryCodes/storedForm``);
    /// any earlier set, used or not, is gone.
    private func replaceRecoveryCodes(of accountID: String, with codes: [String], at: Date, in db: any SQLTransaction) throws {
        try db.execute(sql: "DELETE FROM recovery_code WHERE account_id = ?", arguments: [accountID])
        for code in codes {
            try db.execute(sql: "INSERT INTO recovery_code (account_id, code_hash, created_at) VALUES (?, ?, ?)",
                           arguments: [accountID, RecoveryCodes.storedForm(code, accountID: accountID, box: box), at.epochMilliseconds])
        }
    }

    /// The regulator of `step` says the recovery codes are noted: they are not issued again.
    public func acknowledgeRecoveryCodes(accountID: String, for step: SignInStep) async throws {
        guard let stepID = step.id else { return }
        try await database.write { db in
            try db.execute(sql: "UPDATE totp_credential SET pending_step = NULL WHERE account_id = ? AND confirmed_at IS NOT NULL AND pending_step = ?",
                           arguments: [accountID, stepID])
        }
    }

    func hasConfirmedTOTP(_ accountID: String, in db: any SQLTransaction) throws -> Bool {
        try Bool.fetchOne(db, sql: "SELECT 1 FROM totp_credential WHERE account_id = ? AND confirmed_at IS NOT NULL", arguments: [accountID]) ?? false
    }

    public func hasConfirmedTOTP(accountID: String) async throws -> Bool {
        try await database.read { db in try self.hasConfirmedTOTP(accountID, in: db) }
    }

    /// Which second factor was used.
    public enum SecondFactor: String, Sendable { case totp, recoveryCode = "recovery-code" }

    /// Whether the account is locked out now (the sign-in flow ends when it is).
    public func isLocked(accountID: String) async throws -> Bool {
        let at = now
        let lockout = configuration.lockout
        return try await database.read { db in lockout.isLocked(try self.lockoutState(accountID, in: db), at: at) }
    }

    /// What a second-factor code did.
    public enum SecondFactorOutcome: Sendable, Equatable {
        case accepted(SecondFactor)
        /// Wrong, already used, or the account is locked (counted, see below); whether the
        /// sign-in flow stays open (it ends after a few wrong codes, or once the account is
        /// locked), as recorded in the same transaction.
        case refused(flowOpen: Bool)
        /// The sign-in flow ended before the code was looked at (a password reset, "sign out
        /// everywhere", on any instance): nothing was checked, spent or counted.
        case stepEnded
        /// The flow's second factor was already proven (a double click, or a second tab,
        /// whose first request won): the code is not looked at, so the same code sent twice
        /// is neither a replay refused nor a failure counted toward the lockout.
        case alreadyDone
    }

    /// ``verifySecondFactor(accountID:code:actor:for:)`` outside any sign-in flow (tooling
    /// and tests).
    public func verifySecondFactor(accountID: String, code: String, actor: AuditActor) async throws -> SecondFactor? {
        guard case .accepted(let factor) = try await verifySecondFactor(accountID: accountID, code: code, actor: actor, for: .outsideAnyFlow) else { return nil }
        return factor
    }

    /// Checks a TOTP code (never one already used: the last used step is stored in the same
    /// transaction) or else a recovery code (spent on use), for the sign-in `step`.
    ///
    /// Every wrong code counts in the account's consecutive-failure counter, like a wrong
    /// password, so guesses spread over many addresses still lock the account; a locked
    /// account's codes are refused unchecked, even the right one. A right code completes the
    /// sign-in, resets the counter and is recorded in the step; a wrong one is counted in the
    /// step too (which may end it). All in one transaction that first checks the step is
    /// still open: a password reset committed meanwhile ends the flow either before (the code
    /// is not looked at, so no recovery code or TOTP step is spent for a sign-in that cannot
    /// finish) or after (the reset ends the completed flow).
    public func verifySecondFactor(accountID: String, code: String, actor: AuditActor, for step: SignInStep) async throws -> SecondFactorOutcome {
        let at = now
        let totp = configuration.totp
        let lockout = configuration.lockout
        return try await database.write { db in
            guard try step.isOpen(db) else { return .stepEnded }
            if try step.isDone(db) { return .alreadyDone }
            let state = try self.lockoutState(accountID, in: db)
            if lockout.isLocked(state, at: at) {
                try self.audit.append(self.event("second-factor", "refused locked", accountID, actor, at), in: db)
                return .refused(flowOpen: try step.refuse(db, true))
            }
            if let factor = try self.checkSecondFactor(accountID: accountID, code: code, totp: totp, at: at, actor: actor, in: db) {
                try db.execute(sql: "UPDATE account SET failed_sign_ins = 0, locked_until = NULL, last_failed_sign_in = NULL WHERE id = ?", arguments: [accountID])
                try step.accept(db)
                return .accepted(factor)
            }
            let lockedNow = try self.countFailure(accountID, state, action: "second-factor", refusal: "refused", actor: actor, at: at, in: db)
            return .refused(flowOpen: try step.refuse(db, lockedNow))
        }
    }

    private func checkSecondFactor(accountID: String, code: String, totp: TOTP, at: Date, actor: AuditActor, in db: any SQLTransaction) throws -> SecondFactor? {
        if let row = try SQLRow.fetchOne(db, sql: "SELECT sealed_secret, last_used_step FROM totp_credential WHERE account_id = ? AND confirmed_at IS NOT NULL", arguments: [accountID]) {
            let secret = try self.box.open(Array(row["sealed_secret"] as Data), context: "totp:\(accountID)")
            if let step = totp.verify(code, secret: secret, at: at, lastUsedStep: row["last_used_step"]) {
                try db.execute(sql: "UPDATE totp_credential SET last_used_step = ? WHERE account_id = ?", arguments: [step, accountID])
                return .totp
            }
        }
        let normalized = RecoveryCodes.normalize(code)
        if normalized.count == 10 {
            let legacy = RecoveryCodes.legacyHash(code)
            try db.execute(sql: "UPDATE recovery_code SET used_at = ? WHERE account_id = ? AND code_hash IN (?, ?, ?) AND used_at IS NULL",
                           arguments: [at.epochMilliseconds, accountID, RecoveryCodes.storedForm(code, accountID: accountID, box: self.box),
                                       RecoveryCodes.rekeyedLegacyForm(legacy, accountID: accountID, box: self.box), legacy])
            if try db.changesCount == 1 {
                let left = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM recovery_code WHERE account_id = ? AND used_at IS NULL", arguments: [accountID]) ?? 0
                try self.audit.append(self.event("recovery-code-used", "\(left) left", accountID, actor, at), in: db)
                return .recoveryCode
            }
        }
        return nil
    }

    /// Rewrites recovery codes stored by versions before 2026-12 (plain SHA-256 of a 50-bit
    /// code, which a backup reader could reverse) into their keyed form
    /// (``RecoveryCodes/rekeyedLegacyForm(_:accountID:box:)``), used or not, in one
    /// transaction; returns how many. Run at start, before any listener, and by the retention
    /// job (codes an instance of the earlier version stores during a rolling upgrade): the
    /// codes keep working. Idempotent.
    public func rekeyLegacyRecoveryCodes() async throws -> Int {
        let box = self.box
        return try await database.write { db in
            let rows = try SQLRow.fetchAll(db, sql: "SELECT account_id, code_hash FROM recovery_code WHERE code_hash NOT LIKE 'h_:%'")
            for row in rows {
                let accountID: String = row["account_id"], legacy: String = row["code_hash"]
                try db.execute(sql: "UPDATE recovery_code SET code_hash = ? WHERE account_id = ? AND code_hash = ?",
                               arguments: [RecoveryCodes.rekeyedLegacyForm(legacy, accountID: accountID, box: box), accountID, legacy])
            }
            return rows.count
        }
    }

    // MARK: Retention

    /// Deletes reset links spent, voided or expired, and outbox rows (sent or not: a reset
    /// link is dead long before) older than `retention`. Returns the rows deleted.
    public func purge(retention: TimeInterval) async throws -> Int {
        let cutoff = now.addingTimeInterval(-retention).epochMilliseconds
        return try await database.write { db in
            try db.execute(sql: "DELETE FROM password_reset_token WHERE used_at <= ? OR voided_at <= ? OR expires_at <= ?",
                           arguments: [cutoff, cutoff, cutoff])
            let tokens = try db.changesCount
            try db.execute(sql: "DELETE FROM mail_outbox WHERE created_at <= ?", arguments: [cutoff])
            return try tokens + db.changesCount
        }
    }

    // MARK: CGU

    public func acceptCGU(accountID: String, version: String, address: String?, actor: AuditActor) async throws {
        let at = now
        try await database.write { db in
            try db.execute(sql: "INSERT INTO cgu_acceptance (account_id, version, accepted_at, address) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           arguments: [accountID, version, at.epochMilliseconds, address])
            try self.audit.append(self.event("cgu-accepted", "version \(version)", accountID, actor, at), in: db)
        }
    }

    public func hasAcceptedCGU(accountID: String, version: String) async throws -> Bool {
        try await database.read { db in
            try Bool.fetchOne(db, sql: "SELECT 1 FROM cgu_acceptance WHERE account_id = ? AND version = ?", arguments: [accountID, version]) ?? false
        }
    }

    // MARK: Audit helpers

    private func event(_ action: String, _ outcome: String, _ accountID: String?, _ actor: AuditActor, _ at: Date, detail: String? = nil) -> AuditEvent {
        AuditEvent(at: at, surface: "web", action: action, outcome: outcome, actor: actor, requestID: nil,
                   identifier: nil, accountID: accountID, changes: [], detail: detail)
    }
}

/// The sign-in flow a second factor is checked for, seen through the store that owns flows
/// (Habilitation; Accounts never names its tables): whether it is still open, and what
/// accepting the factor records in it. Both run in the transaction that checks the factor,
/// so a change that ends flows (a password reset, "sign out everywhere"), committed on any
/// instance, is either wholly before the check or wholly after it.
public struct SignInStep: Sendable {
    /// The step's identity where a row must be bound to it (a pending TOTP enrolment): the
    /// flow's id hash, opaque here. nil outside any flow.
    public let id: String?
    public let isOpen: @Sendable (any SQLTransaction) throws -> Bool
    public let accept: @Sendable (any SQLTransaction) throws -> Void
    /// Records a refused code in the flow (`accountLocked`: the account is locked, now or
    /// already); returns whether the flow stays open.
    public let refuse: @Sendable (any SQLTransaction, _ accountLocked: Bool) throws -> Bool
    /// Whether the step's factor was already accepted (read in the checking transaction).
    public let isDone: @Sendable (any SQLTransaction) throws -> Bool

    public init(id: String?, isOpen: @escaping @Sendable (any SQLTransaction) throws -> Bool, accept: @escaping @Sendable (any SQLTransaction) throws -> Void,
                refuse: @escaping @Sendable (any SQLTransaction, _ accountLocked: Bool) throws -> Bool,
                isDone: @escaping @Sendable (any SQLTransaction) throws -> Bool = { _ in false }) {
        self.id = id
        self.isOpen = isOpen
        self.accept = accept
        self.refuse = refuse
        self.isDone = isDone
    }

    /// No flow: always open, nothing recorded (tooling and tests only).
    public static let outsideAnyFlow = SignInStep(id: nil, isOpen: { _ in true }, accept: { _ in }, refuse: { _, _ in true })
}
