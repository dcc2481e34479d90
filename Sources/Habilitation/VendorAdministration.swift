import Accounts
import Foundation
import Storage

/// One line of an account list: enough to recognise the person and see at a glance whether
/// the habilitation can hold.
public struct AccountListing: Sendable, Equatable {
    public var accountID: String
    public var givenName: String
    public var familyName: String
    public var email: String
    /// The SAS's last `active`.
    public var active: Bool
    public var suspension: Suspension?
    public var nationalID: String?
    public var sasTechnicalID: String?
    public var lockedUntil: Date?
    /// Sessions neither revoked nor expired (idle or absolute).
    public var liveSessions: Int
    public var updatedAt: Date

    /// A vendor admin's suspension of the habilitation.
    public struct Suspension: Sendable, Equatable {
        public var at: Date
        public var by: String?
        public var reason: String?
    }
}

/// A session as an admin sees it; `reference` is a prefix of the hash of its id, never the id.
public struct SessionListing: Sendable, Equatable {
    public var reference: String
    public var origin: SessionOrigin
    public var createdAt: Date
    public var lastSeenAt: Date
    public var absoluteExpiresAt: Date
    public var revokedAt: Date?
    public var revokedReason: String?
    public var address: String?
    public var userAgent: String?
    public var live: Bool
}

/// Everything about one account an admin needs to answer a support call.
public struct AccountDetail: Sendable {
    public var listing: AccountListing
    public var version: Int
    public var createdAt: Date
    public var passwordResetRequired: Bool
    public var failedSignIns: Int
    public var secondFactorEnrolled: Bool
    public var cguAcceptances: [(version: String, at: Date)]
    public var identifierHistory: [IdentifierAssignment]
    public var sessions: [SessionListing]
    public var audit: [AuditEvent]
}

/// Which accounts a search returns.
public enum AccountFilter: String, Sendable, CaseIterable {
    case all
    case suspended
    case inactive
    case locked
}

/// The outcome of an admin action: whether it changed anything (a second suspension is a
/// no-op, reported as such rather than as an error, like Keycloak's idempotent admin calls).
public struct AdminActionResult: Sendable, Equatable {
    public var accountID: String
    public var changed: Bool
    /// Sessions affected (revoked, or whose habilitation changes from their next request).
    public var sessions: Int
    /// Live password reset links voided ("sign out everywhere", a suspension, a second
    /// factor reset).
    public var resetLinks: Int = 0
}

/// The vendor admin's operations, shared by `account-server admin …` and the admin HTTP API.
/// Each change is one write transaction with its audit event (who, from where), so the trail
/// and the state never disagree.
public final class VendorAdministration: Sendable {
    public let database: AccountDatabase
    public let sessionConfiguration: SessionConfiguration
    private let clock: @Sendable () -> Date
    private let audit = AuditLog()

    public init(database: AccountDatabase, sessionConfiguration: SessionConfiguration = SessionConfiguration(),
                clock: @escaping @Sendable () -> Date = Date.init) {
        self.database = database
        self.sessionConfiguration = sessionConfiguration
        self.clock = clock
    }

    private var now: Date { Date(epochMilliseconds: clock().epochMilliseconds) }

    private static let listingColumns = """
        a.id, a.given_name, a.family_name, a.email, a.active, v.suspended_at, v.suspended_by, v.reason AS suspension_reason,
        a.locked_until, a.updated_at,
        (SELECT value FROM account_identifier i WHERE i.account_id = a.id AND i.kind = 'IDNPS' AND i.ended_at IS NULL) AS national_id,
        (SELECT value FROM account_identifier i WHERE i.account_id = a.id AND i.kind = 'INTRN' AND i.ended_at IS NULL) AS technical_id,
        (SELECT COUNT(*) FROM web_session s WHERE s.account_id = a.id AND s.revoked_at IS NULL
             AND s.absolute_expires_at > ? AND s.last_seen_at > ?) AS live_sessions
        """

    /// An account with its suspension, if any (Habilitation's table beside Accounts').
    private static let listingTables = "account a LEFT JOIN vendor_suspension v ON v.account_id = a.id"

    private func listing(_ row: SQLRow) -> AccountListing {
        AccountListing(
            accountID: row["id"], givenName: row["given_name"], familyName: row["family_name"], email: row["email"], active: row["active"],
            suspension: (row["suspended_at"] as Int64?).map {
                AccountListing.Suspension(at: Date(epochMilliseconds: $0), by: row["suspended_by"], reason: row["suspension_reason"])
            },
            nationalID: row["national_id"], sasTechnicalID: row["technical_id"],
            lockedUntil: (row["locked_until"] as Int64?).map(Date.init(epochMilliseconds:)),
            liveSessions: row["live_sessions"], updatedAt: Date(epochMilliseconds: row["updated_at"]))
    }

    /// The arguments of ``listingColumns``' two placeholders (now, the idle cut-off).
    private static func timeArguments(_ at: Date, idle: TimeInterval) -> SQLArguments {
        [at.epochMilliseconds, at.addingTimeInterval(-idle).epochMilliseconds]
    }

    /// Accounts whose name, e-mail, id or identifier (current or past) contains `text`,
    /// case and accents aside (`fold_text`, the same on both engines: `elodie` finds
    /// `Élodie`), most recently updated first.
    public func search(_ text: String?, filter: AccountFilter = .all, limit: Int = 50) async throws -> [AccountListing] {
        let at = now
        let idle = sessionConfiguration.idleTimeout
        var conditions: [String] = []
        var conditionArguments: SQLArguments = []
        if let text = text?.trimmingCharacters(in: .whitespaces), !text.isEmpty {
            let pattern = "%" + TextFolding.fold(text).replacingOccurrences(of: "\\", with: "\\\\")
                .replacingOccurrences(of: "%", with: "\\%").replacingOccurrences(of: "_", with: "\\_") + "%"
            conditions.append("""
                (fold_text(a.given_name || ' ' || a.family_name) LIKE :pattern ESCAPE '\\' OR fold_text(a.family_name || ' ' || a.given_name) LIKE :pattern ESCAPE '\\'
                 OR fold_text(a.email_key) LIKE :pattern ESCAPE '\\' OR a.id LIKE :pattern ESCAPE '\\'
                 OR EXISTS (SELECT 1 FROM account_identifier i WHERE i.account_id = a.id AND fold_text(i.value) LIKE :pattern ESCAPE '\\'))
                """.replacingOccurrences(of: ":pattern", with: "?"))
            conditionArguments += Array(repeating: pattern, count: 5)
        }
        switch filter {
        case .all: break
        case .suspended: conditions.append("v.account_id IS NOT NULL")
        case .inactive: conditions.append("NOT a.active")
        case .locked:
            conditions.append("a.locked_until > ?")
            conditionArguments.append(at.epochMilliseconds)
        }
        let bounded = max(1, min(limit, 1000))
        let sql = "SELECT \(Self.listingColumns) FROM \(Self.listingTables)"
            + (conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND "))
            + " ORDER BY a.updated_at DESC, a.id LIMIT ?"
        let arguments = Self.timeArguments(at, idle: idle) + conditionArguments + [bounded]
        return try await database.read { db in
            try SQLRow.fetchAll(db, sql: sql, arguments: arguments).map(self.listing)
        }
    }

    /// The account an operator means: its id, a current identifier value (IDNPS or SAS
    /// technical id, with or without `system|`), or its e-mail (the active account first).
    public func resolve(_ reference: String) async throws -> String? {
        let text = reference.trimmingCharacters(in: .whitespaces)
        let value = text.split(separator: "|", maxSplits: 1).last.map(String.init) ?? text
        return try await database.read { db in
            if let id = try String.fetchOne(db, sql: "SELECT id FROM account WHERE id = ?", arguments: [text]) { return id }
            if let id = try String.fetchOne(db, sql: "SELECT account_id FROM account_identifier WHERE value = ? AND ended_at IS NULL LIMIT 1",
                                            arguments: [value]) { return id }
            return try String.fetchOne(db, sql: "SELECT id FROM account WHERE email_key = ? ORDER BY active DESC, updated_at DESC, id LIMIT 1",
                                       arguments: [text.lowercased()])
        }
    }

    /// The account an audit export means: as ``resolve(_:)``, or the id of an account that is
    /// no more (erased) whose events the trail still holds: its trail must stay exportable
    /// (a person's access request, an investigation) after the account is gone.
    public func resolveInTrail(_ reference: String) async throws -> String? {
        if let id = try await resolve(reference) { return id }
        let text = reference.trimmingCharacters(in: .whitespaces)
        return try await database.read { db in
            try String.fetchOne(db, sql: "SELECT account_id FROM audit_event WHERE account_id = ? LIMIT 1", arguments: [text])
        }
    }

    public func detail(accountID: String, auditLimit: Int = 200) async throws -> AccountDetail? {
        let at = now
        let idle = sessionConfiguration.idleTimeout
        return try await database.read { db -> AccountDetail? in
            guard let row = try SQLRow.fetchOne(db, sql: """
                SELECT \(Self.listingColumns), a.version, a.created_at, a.password_reset_required, a.failed_sign_ins,
                       EXISTS (SELECT 1 FROM totp_credential t WHERE t.account_id = a.id AND t.confirmed_at IS NOT NULL) AS has_totp
                FROM \(Self.listingTables) WHERE a.id = ?
                """, arguments: Self.timeArguments(at, idle: idle) + [accountID]) else { return nil }
            let cgu = try SQLRow.fetchAll(db, sql: "SELECT version, accepted_at FROM cgu_acceptance WHERE account_id = ? ORDER BY accepted_at",
                                       arguments: [accountID]).map { (version: $0["version"] as String, at: Date(epochMilliseconds: $0["accepted_at"])) }
            let sessions = try SQLRow.fetchAll(db, sql: """
                SELECT * FROM web_session WHERE account_id = ? ORDER BY created_at DESC LIMIT 50
                """, arguments: [accountID]).compactMap { session -> SessionListing? in
                guard let origin = SessionOrigin(rawValue: session["origin"]) else { return nil }
                let revokedAt = (session["revoked_at"] as Int64?).map(Date.init(epochMilliseconds:))
                let lastSeen = Date(epochMilliseconds: session["last_seen_at"])
                let absolute = Date(epochMilliseconds: session["absolute_expires_at"])
                return SessionListing(reference: SessionStore.sessionReference(hash: session["id_hash"]), origin: origin,
                                      createdAt: Date(epochMilliseconds: session["created_at"]), lastSeenAt: lastSeen, absoluteExpiresAt: absolute,
                                      revokedAt: revokedAt, revokedReason: session["revoked_reason"], address: session["address"],
                                      userAgent: session["user_agent"],
                                      live: revokedAt == nil && absolute > at && lastSeen > at.addingTimeInterval(-idle))
            }
            let events = try AuditEvent.fetchAll(db, sql: """
                SELECT * FROM (SELECT * FROM audit_event WHERE account_id = ? ORDER BY seq DESC LIMIT ?) AS recent ORDER BY seq
                """, arguments: [accountID, auditLimit])
            return AccountDetail(listing: self.listing(row), version: row["version"], createdAt: Date(epochMilliseconds: row["created_at"]),
                                 passwordResetRequired: row["password_reset_required"], failedSignIns: row["failed_sign_ins"],
                                 secondFactorEnrolled: row["has_totp"], cguAcceptances: cgu,
                                 identifierHistory: try AccountQueries().identifierHistory(of: accountID, in: db),
                                 sessions: sessions, audit: events)
        }
    }

    /// The account's SAS `active` and whether the vendor suspended it; no row without account.
    private static let suspensionStateSQL = """
        SELECT a.active, EXISTS (SELECT 1 FROM vendor_suspension v WHERE v.account_id = a.id) AS suspended FROM account a WHERE a.id = ?
        """

    /// Withdraws the habilitation, independently of the SAS's `active` (a later `active:true`
    /// does not lift it). Sessions stay open but lose the habilitation from their next request.
    /// The account's live password reset links are voided, as on the SAS's deactivation, and
    /// no new one is mailed while the suspension lasts (``CredentialStore``).
    public func suspend(accountID: String, reason: String?, actor: AuditActor, requestID: String? = nil) async throws -> AdminActionResult? {
        let at = now
        let reason = Self.recorded(reason)
        return try await database.write { db in
            guard let row = try SQLRow.fetchOne(db, sql: Self.suspensionStateSQL, arguments: [accountID]) else { return nil }
            let open = try self.liveSessions(accountID, sasOnly: true, at: at, in: db)
            guard !(row["suspended"] as Bool) else {
                try self.unchanged("suspend", Self.detail("already suspended", reason), accountID: accountID, actor: actor, requestID: requestID, at: at, in: db)
                return AdminActionResult(accountID: accountID, changed: false, sessions: open)
            }
            try db.execute(sql: "INSERT INTO vendor_suspension (account_id, suspended_at, suspended_by, reason) VALUES (?, ?, ?, ?)",
                           arguments: [accountID, at.epochMilliseconds, actor.subject, reason])
            let links = try ResetLinkLedger().voidAll(of: accountID, at: at, in: db)
            try self.audit.append(AuditEvent(at: at, surface: "admin", action: "habilitation-withdrawn", outcome: "suspended by the vendor",
                                             actor: actor, requestID: requestID, identifier: nil, accountID: accountID, changes: [],
                                             detail: Self.detail(["\(open) open SAS session(s) affected from their next request", links.summary]
                                                                 .compactMap { $0 }.joined(separator: "; "), reason)), in: db)
            return AdminActionResult(accountID: accountID, changed: true, sessions: open, resetLinks: links.links)
        }
    }

    /// Lifts a vendor suspension (the SAS's `active` still applies).
    public func restore(accountID: String, reason: String? = nil, actor: AuditActor, requestID: String? = nil) async throws -> AdminActionResult? {
        let at = now
        let reason = Self.recorded(reason)
        return try await database.write { db in
            guard let row = try SQLRow.fetchOne(db, sql: Self.suspensionStateSQL, arguments: [accountID]) else { return nil }
            let open = try self.liveSessions(accountID, sasOnly: true, at: at, in: db)
            guard row["suspended"] as Bool else {
                try self.unchanged("restore", Self.detail("not suspended", reason), accountID: accountID, actor: actor, requestID: requestID, at: at, in: db)
                return AdminActionResult(accountID: accountID, changed: false, sessions: open)
            }
            try db.execute(sql: "DELETE FROM vendor_suspension WHERE account_id = ?", arguments: [accountID])
            let active: Bool = row["active"]
            try self.audit.append(AuditEvent(at: at, surface: "admin", action: "habilitation-restored",
                                             outcome: active ? "suspension lifted" : "suspension lifted, still deactivated by the SAS",
                                             actor: actor, requestID: requestID, identifier: nil, accountID: accountID, changes: [],
                                             detail: Self.detail("\(open) open SAS session(s) affected from their next request", reason)), in: db)
            return AdminActionResult(accountID: accountID, changed: true, sessions: open)
        }
    }

    /// Ends every session of the account ("sign out everywhere"), the sign-ins under way
    /// (a flow waiting at its second factor or at the CGU would otherwise become a session
    /// after the revocation) and its live password reset links (one that leaked would
    /// otherwise let its holder set a password and sign in again).
    public func revokeSessions(accountID: String, reason: String? = nil, actor: AuditActor, requestID: String? = nil) async throws -> AdminActionResult? {
        let at = now
        let reason = Self.recorded(reason)
        return try await database.write { db in
            guard try Bool.fetchOne(db, sql: "SELECT 1 FROM account WHERE id = ?", arguments: [accountID]) != nil else { return nil }
            // Counted: the sessions still live. Expired ones (idle or absolute) are ended
            // already, and no change (as expired reset links); they are marked revoked too, so
            // that a longer idle timeout configured later cannot bring one back.
            let count = try self.liveSessions(accountID, at: at, in: db)
            _ = try SessionLedger().revokeAll(of: accountID, reason: .admin, at: at, in: db)
            let links = try ResetLinkLedger().voidAll(of: accountID, at: at, in: db)
            try self.audit.append(AuditEvent(at: at, surface: "admin", action: "sessions-revoked", outcome: "\(count) revoked", actor: actor,
                                             requestID: requestID, identifier: nil, accountID: accountID, changes: [],
                                             detail: Self.detail(links.summary, reason)), in: db)
            return AdminActionResult(accountID: accountID, changed: count > 0 || links.links > 0 || links.withdrawnMails > 0, sessions: count,
                                      resetLinks: links.links)
        }
    }

    /// Clears a sign-in lockout and the failure count.
    public func unlock(accountID: String, reason: String? = nil, actor: AuditActor, requestID: String? = nil) async throws -> AdminActionResult? {
        let at = now
        let reason = Self.recorded(reason)
        return try await database.write { db in
            guard let cleared = try LockoutLedger().clear(accountID: accountID, at: at, in: db) else { return nil }
            let failures = cleared.failures, locked = cleared.wasLocked
            guard failures > 0 || locked else {
                try self.unchanged("unlock", Self.detail("not locked, no failure counted", reason), accountID: accountID, actor: actor, requestID: requestID, at: at, in: db)
                return AdminActionResult(accountID: accountID, changed: false, sessions: 0)
            }
            try self.audit.append(AuditEvent(at: at, surface: "admin", action: "unlock", outcome: locked ? "lockout lifted" : "failure count reset",
                                             actor: actor, requestID: requestID, identifier: nil, accountID: accountID, changes: [],
                                             detail: Self.detail("\(failures) consecutive failure(s) cleared", reason)), in: db)
            return AdminActionResult(accountID: accountID, changed: true, sessions: 0)
        }
    }

    /// Removes the account's second factor (a lost phone, recovery codes used up): its TOTP
    /// secret and recovery codes are deleted, a new password is required, and its sessions,
    /// sign-ins under way and password reset links end, in one transaction. The regulator
    /// then chooses a password through a reset link ("mot de passe oublié"), which proves the
    /// mailbox, and the next sign-in enrols a new TOTP: a phished password and a convincing
    /// call to support are not enough to enrol a device.
    public func resetSecondFactor(accountID: String, reason: String? = nil, actor: AuditActor, requestID: String? = nil) async throws -> AdminActionResult? {
        let at = now
        let reason = Self.recorded(reason)
        return try await database.write { db in
            guard let removed = try SecondFactorLedger().remove(accountID: accountID, in: db) else { return nil }
            guard removed.totpSecrets > 0 || removed.unusedRecoveryCodes > 0 else {
                try self.unchanged("reset-second-factor", Self.detail("no second factor enrolled", reason), accountID: accountID, actor: actor, requestID: requestID, at: at, in: db)
                return AdminActionResult(accountID: accountID, changed: false, sessions: 0)
            }
            let count = try self.liveSessions(accountID, at: at, in: db)
            _ = try SessionLedger().revokeAll(of: accountID, reason: .secondFactorReset, at: at, in: db)
            let links = try ResetLinkLedger().voidAll(of: accountID, at: at, in: db)
            try self.audit.append(AuditEvent(at: at, surface: "admin", action: "second-factor-reset",
                                             outcome: "TOTP removed, \(removed.unusedRecoveryCodes) unused recovery code(s) removed",
                                             actor: actor, requestID: requestID, identifier: nil, accountID: accountID, changes: [],
                                             detail: Self.detail(["\(count) session(s) ended", links.summary].compactMap { $0 }.joined(separator: "; "), reason)), in: db)
            return AdminActionResult(accountID: accountID, changed: true, sessions: count, resetLinks: links.links)
        }
    }

    /// What ``erase(accountID:reason:actor:requestID:)`` did, or why it did nothing.
    public enum ErasureOutcome: Sendable, Equatable {
        /// The account and everything it had are gone; `sessions` were still live. `log` says
        /// whether the database's own log still holds older copies of what was erased
        /// (``StorageEngine/scrubLog()``).
        case erased(AccountErasure.Erased, sessions: Int, log: LogScrub)
        /// The SAS still has the account active: refused, nothing changed.
        case stillActive
    }

    /// Erases an account's personal data (GDPR article 17: a regulator's request, the end of
    /// the retention the deployment set for deactivated accounts): the account, its
    /// identifiers and their history, credentials, CGU acceptances, sessions, sign-ins under
    /// way, suspension and queued mails, in one transaction with an `account-erased` audit
    /// event that carries only the account id and counts. The audit trail itself is kept
    /// (append-only; ``AccountErasure``).
    ///
    /// Only an account the SAS has deactivated (INT_R02 `active:false`): the SAS manages the
    /// account's life, and would send its next update (an upsert) for an active one, creating a
    /// new account without its history, CGU acceptance or second factor. A vendor suspension
    /// is not enough. A later INT_R02 create or upsert for the same identifier makes a new
    /// account, as for a regulator never seen. Nil when there is no such account.
    ///
    /// Once committed, the database's log is scrubbed (``StorageEngine/scrubLog()``): on
    /// SQLite the `-wal` file kept the pages as they were before the delete.
    public func erase(accountID: String, reason: String?, actor: AuditActor, requestID: String? = nil) async throws -> ErasureOutcome? {
        switch try await eraseWithoutScrub(accountID: accountID, reason: reason, actor: actor, requestID: requestID) {
        case nil: return nil
        case .stillActive?: return .stillActive
        case .erased(let erased, let sessions)?: return .erased(erased, sessions: sessions, log: await scrubLog())
        }
    }

    /// What one erasure's transaction did, before the log is scrubbed.
    private enum Committed: Sendable {
        case erased(AccountErasure.Erased, sessions: Int)
        case stillActive
    }

    /// The erasure is committed whatever becomes of the scrub: its failure is said in the
    /// answer (`failed`), never thrown, which would report a done erasure as not done (and its
    /// retry finds no account).
    private func scrubLog() async -> LogScrub {
        (try? await database.scrubLog()) ?? .failed
    }

    private func eraseWithoutScrub(accountID: String, reason: String?, actor: AuditActor, requestID: String?) async throws -> Committed? {
        let at = now
        let reason = Self.recorded(reason)
        return try await database.write { db in
            let accounts = AccountErasure()
            guard let active = try accounts.isActive(accountID, in: db) else { return nil }
            guard !active else {
                try self.unchanged("erase", Self.detail("refused: the SAS has the account active", reason), accountID: accountID, actor: actor,
                                   requestID: requestID, at: at, in: db)
                return .stillActive
            }
            let sessions = try self.liveSessions(accountID, at: at, in: db)
            try SessionLedger().eraseAll(of: accountID, in: db)
            guard let erased = try accounts.erase(accountID: accountID, in: db) else { return nil }
            try self.audit.append(AuditEvent(at: at, surface: "admin", action: "account-erased", outcome: "erased", actor: actor,
                                             requestID: requestID, identifier: nil, accountID: accountID, changes: [],
                                             detail: Self.detail("\(erased.identifiers) identifier row(s), \(sessions) live session(s), "
                                                                 + "\(erased.totpSecrets) TOTP secret(s), \(erased.recoveryCodes) recovery code(s), "
                                                                 + "\(erased.resetLinks) reset link(s), \(erased.cguAcceptances) CGU acceptance(s), "
                                                                 + "\(erased.mails) queued mail(s) removed", reason)), in: db)
            return .erased(erased, sessions: sessions)
        }
    }

    /// The accounts ``eraseDeactivated(before:reason:actor:each:)`` would erase now: their ids
    /// and when the SAS deactivated them, oldest first (a dry run before an irreversible batch).
    public func deactivated(before cutoff: Date) async throws -> [(id: String, at: Date)] {
        try await database.read { db in
            try SQLRow.fetchAll(db, sql: "SELECT id, active_changed_at FROM account WHERE NOT active AND active_changed_at < ? ORDER BY active_changed_at, id",
                                arguments: [cutoff.epochMilliseconds]).map { (id: $0["id"] as String, at: Date(epochMilliseconds: $0["active_changed_at"])) }
        }
    }

    /// Erases every account the SAS deactivated before `cutoff` (by when its `active` last
    /// changed), as listed by ``deactivated(before:)``, oldest first, each in its own
    /// transaction as ``erase(accountID:reason:actor:requestID:)`` (which checks again that it
    /// is still deactivated: one the SAS reactivates meanwhile is kept). The retention of deactivated accounts, run by the operator (`docs/personal-data.md`).
    /// `each` is told of every erasure as it is made. Returns how many were erased and what
    /// the scrub of the database's log made, once after the last erasure; the log is scrubbed
    /// even when there was nothing to erase, so that a run on a timer also clears the older
    /// copies an erasure before it could not (``ErasureOutcome/erased(_:sessions:log:)``).
    @discardableResult
    public func eraseDeactivated(before cutoff: Date, reason: String?, actor: AuditActor,
                                 each: (String, AccountErasure.Erased, Int) throws -> Void = { _, _, _ in }) async throws -> (erased: Int, log: LogScrub) {
        var erased = 0
        do {
            for account in try await deactivated(before: cutoff) {
                guard case .erased(let what, let sessions)? = try await eraseWithoutScrub(accountID: account.id, reason: reason, actor: actor, requestID: nil)
                else { continue }
                erased += 1
                try each(account.id, what, sessions)
            }
        } catch {
            // A batch that stops half-way (the database gone, the operator's output closed):
            // what it erased until then is scrubbed all the same, if it can be.
            if erased > 0 { _ = await scrubLog() }
            throw error
        }
        return (erased, await scrubLog())
    }

    /// The server key is lost for good (no backup of the key file): what it sealed cannot be
    /// opened, and start-up refuses another key for this database. Discards every TOTP secret,
    /// recovery code and queued mail and the key's fingerprint, and ends every session and
    /// sign-in under way, in one transaction; the next start creates a new key, and each
    /// regulator who had a second factor chooses a new password through a reset link (proving
    /// the mailbox), then enrols a new TOTP. Every instance must be stopped first.
    public func forgetSecretKey(actor: AuditActor) async throws -> (discarded: SecondFactorLedger.Discarded, sessions: Int) {
        let at = now
        return try await database.write { db in
            let discarded = try SecondFactorLedger().discardEverythingSealed(in: db)
            let sessions = try SessionLedger().revokeEverySession(reason: .secretKeyForgotten, at: at, in: db)
            try self.audit.append(AuditEvent(at: at, surface: "admin", action: "secret-key-forgotten", outcome: "sealed data discarded",
                                             actor: actor, requestID: nil, identifier: nil, accountID: nil, changes: [],
                                             detail: "\(discarded.totpSecrets) TOTP secret(s), \(discarded.recoveryCodes) recovery code(s), "
                                                 + "\(discarded.queuedMails) mail(s) discarded; \(discarded.passwordsToReset) password(s) to reset; "
                                                 + "\(sessions) session(s) ended"), in: db)
            return (discarded, sessions)
        }
    }

    /// An operator's reason as recorded: trimmed, at most 500 characters, nil when empty.
    static func recorded(_ reason: String?) -> String? {
        guard let trimmed = reason?.trimmingCharacters(in: .whitespacesAndNewlines), !trimmed.isEmpty else { return nil }
        return String(trimmed.prefix(500))
    }

    /// An audit detail with the operator's reason after it, if any.
    static func detail(_ detail: String?, _ reason: String?) -> String? {
        guard let reason else { return detail }
        return (detail.map { $0 + "; " } ?? "") + "reason: " + reason
    }

    /// An admin action that found nothing to change is recorded too (Keycloak records every
    /// admin call): the trail shows who tried what, and when.
    private func unchanged(_ action: String, _ why: String?, accountID: String, actor: AuditActor, requestID: String?, at: Date,
                           in db: any SQLTransaction) throws {
        try audit.append(AuditEvent(at: at, surface: "admin", action: "admin-action", outcome: "\(action): unchanged",
                                    actor: actor, requestID: requestID, identifier: nil, accountID: accountID, changes: [],
                                    detail: why), in: db)
    }

    /// The admin surface's own access: page sign-in (accepted or refused), sign-out, and API
    /// calls refused for a missing or wrong token. Written by the surface (the API's refusals
    /// at most once a minute per address, so that guessing cannot grow the trail unbounded).
    public func recordAccess(_ action: String, outcome: String, actor: AuditActor, requestID: String?, detail: String? = nil) async throws {
        let event = AuditEvent(at: now, surface: "admin", action: action, outcome: outcome, actor: actor, requestID: requestID,
                               identifier: nil, accountID: nil, changes: [], detail: detail.map { String($0.prefix(500)) })
        try await database.write { db in try self.audit.append(event, in: db) }
    }

    /// A change to the vendor admins' own tokens (`account-server admin token add|role|remove`):
    /// who granted, changed or revoked an admin's access, in the trail as HDS traceability asks
    /// of access rights. The tokens live in a file, not the database, so the two cannot share a
    /// transaction; `apply` (the file's rewrite) runs inside the trail's write transaction,
    /// after the event is appended: an event that cannot be written leaves the file untouched,
    /// and a rewrite that fails rolls the event back. Only a commit failing after the rewrite
    /// leaves the file changed without its event, which the caller then undoes. `apply` must
    /// be idempotent: a transaction retried (PostgreSQL) runs it again.
    public func recordAdminTokenChange(_ action: String, outcome: String, detail: String, actor: AuditActor,
                                       apply: @escaping @Sendable () throws -> Void) async throws {
        let event = AuditEvent(at: now, surface: "admin", action: action, outcome: outcome, actor: actor, requestID: nil,
                               identifier: nil, accountID: nil, changes: [], detail: String(detail.prefix(500)))
        try await database.write { db in
            try self.audit.append(event, in: db)
            try apply()
        }
    }

    /// A vendor admin's read of personal data through the API, the page or the command-line
    /// tools (an account shown, a search, an audit export): who looked, at what, when. Access
    /// to regulators' data is traced as changes are (HDS / PGSSI-S traceability). The tools
    /// read the database itself, which no trail can stop: theirs records the operators who go
    /// through them.
    public func recordRead(_ action: String, outcome: String, accountID: String?, detail: String?, actor: AuditActor, requestID: String?) async throws {
        let event = AuditEvent(at: now, surface: "admin", action: action, outcome: outcome, actor: actor, requestID: requestID,
                               identifier: nil, accountID: accountID, changes: [], detail: detail.map { String($0.prefix(500)) })
        try await database.write { db in try self.audit.append(event, in: db) }
    }

    /// The trail from `afterSeq` (at most `limit` events), handed to `body` a page at a time
    /// in order, for exports of the whole trail: a trail kept for years does not fit in
    /// memory, and one long read would hold SQLite's checkpoints back for all of it. Every page
    /// stops at the horizon taken once at the start (``AuditLog/horizon(in:)``), so the export
    /// is the trail as it was then, none skipped.
    ///
    /// `starting`: called once before the first event, with how many will follow (the
    /// horizon read, the limit applied), so that a trace of the export is written before any
    /// of it is printed (an export cut short is recorded all the same).
    public func forEachAuditEvent(accountID: String? = nil, afterSeq: Int64 = 0, limit: Int? = nil, pageSize: Int = 5_000,
                                  starting: ((Int) async throws -> Void)? = nil,
                                  _ body: (AuditEvent) throws -> Void) async throws {
        let horizon = try await database.readBetweenWrites { db in try AuditLog().horizon(in: db) }
        if let starting {
            let count = try await database.read { db in try AuditLog().count(accountID: accountID, afterSeq: afterSeq, upToSeq: horizon, in: db) }
            try await starting(min(count, limit ?? Int.max))
        }
        var cursor = afterSeq
        var remaining = limit ?? Int.max
        while remaining > 0 {
            let (size, after) = (min(pageSize, remaining), cursor)
            let page = try await database.read { db in
                try AuditLog().events(accountID: accountID, afterSeq: after, upToSeq: horizon, limit: size, in: db)
            }
            for event in page { try body(event) }
            guard page.count == size, let last = page.last?.seq else { return }
            cursor = last
            remaining -= page.count
        }
    }

    /// The audit trail, oldest first, up to a horizon read between writes: a reader paging
    /// with `afterSeq` never skips an event committed after its page with a lower `seq`
    /// (PostgreSQL writers draw `seq` before they commit, in another order). Writes wait only
    /// for the horizon's one statement, not for the page.
    public func auditEvents(accountID: String? = nil, afterSeq: Int64 = 0, limit: Int? = nil) async throws -> [AuditEvent] {
        let horizon = try await database.readBetweenWrites { db in try AuditLog().horizon(in: db) }
        return try await database.read { db in
            try AuditLog().events(accountID: accountID, afterSeq: afterSeq, upToSeq: horizon, limit: limit, in: db)
        }
    }

    /// The account's sessions neither revoked nor expired (idle or absolute); those
    /// started from the SAS only, with `sasOnly` (the ones a suspension affects).
    private func liveSessions(_ accountID: String, sasOnly: Bool = false, at: Date, in db: any SQLTransaction) throws -> Int {
        try Int.fetchOne(db, sql: """
            SELECT COUNT(*) FROM web_session WHERE account_id = ? \(sasOnly ? "AND origin = 'sas' " : "")AND revoked_at IS NULL \
            AND absolute_expires_at > ? AND last_seen_at > ?
            """, arguments: [accountID, at.epochMilliseconds, at.addingTimeInterval(-sessionConfiguration.idleTimeout).epochMilliseconds]) ?? 0
    }
}
