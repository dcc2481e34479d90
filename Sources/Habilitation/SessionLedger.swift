import Accounts
import Foundation
import Storage

/// Habilitation's side of ``AccountSessions``: the SQL on `web_session`, `sign_in_flow` and
/// `vendor_suspension` that account changes (password reset, INT_R02 deactivation) need, run
/// inside Accounts' transaction.
public struct SessionLedger: AccountSessions {
    /// The sessions' idle timeout (`--session-idle-minutes`): which sessions ``revokeOthers(of:keeping:reason:at:in:)``
    /// counts as live.
    public var idleTimeout: TimeInterval

    public init(idleTimeout: TimeInterval = SessionConfiguration().idleTimeout) {
        self.idleTimeout = idleTimeout
    }

    /// The recorded reasons (``SessionEndReason/requiresNewProviderAuthentication``) after
    /// which a Pro Santé Connect session does not open again from the provider's session it
    /// came from until the provider has authenticated the user anew
    /// (``SessionStore/endedRemotely(_:accountID:in:)``).
    public static let remoteEndReasons: Set<String> = Set(SessionEndReason.allCases.filter(\.requiresNewProviderAuthentication).map(\.rawValue))

    /// Also ends the account's sign-in flows still in progress: a flow that passed the old
    /// password must not become a session after a reset.
    public func revokeAll(of accountID: String, reason: SessionEndReason, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE account_id = ? AND revoked_at IS NULL",
                       arguments: [at.epochMilliseconds, reason.rawValue, accountID])
        let sessions = try db.changesCount
        try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ?, ended_reason = ?, oidc_id_token = NULL WHERE account_id = ? AND consumed_at IS NULL",
                       arguments: [at.epochMilliseconds, reason.rawValue, accountID])
        return sessions
    }

    /// "Sign out everywhere else" (« Fermer mes autres sessions », a password change): the
    /// live session `kept` (checked not revoked and within its absolute lifetime; its idle
    /// time was checked by the request that brought it) stays. Counted: the live ones. Expired
    /// ones are marked revoked too (a longer idle timeout configured later cannot bring one
    /// back), as the admin's revoke-sessions does.
    ///
    /// The browser that closes the others is not shut out of the provider sign-in by its own
    /// act: its own earlier session, expired, was ended as replaced when it signed in again
    /// (``SessionStore/completeFlow(flowToken:address:userAgent:actor:replacing:decide:)``,
    /// from its cookie), so it is not among those ended here. Told apart by the browser's
    /// cookie, not by the provider's `sid`: a provider giving several browsers one `sid`
    /// must not have them spared.
    public func revokeOthers(of accountID: String, keeping kept: String, reason: SessionEndReason, at: Date, in db: any SQLTransaction) throws -> EndedSessions? {
        guard try Bool.fetchOne(db, sql: """
            SELECT EXISTS (SELECT 1 FROM web_session WHERE id_hash = ? AND account_id = ? AND revoked_at IS NULL AND absolute_expires_at > ?)
            """, arguments: [kept, accountID, at.epochMilliseconds]) == true else { return nil }
        let idleSince = at.addingTimeInterval(-idleTimeout).epochMilliseconds
        let live = try String.fetchAll(db, sql: """
            SELECT id_hash FROM web_session WHERE account_id = ? AND id_hash <> ? AND revoked_at IS NULL AND absolute_expires_at > ?
            AND last_seen_at > ? ORDER BY last_seen_at DESC, id_hash
            """, arguments: [accountID, kept, at.epochMilliseconds, idleSince])
        try db.execute(sql: """
            UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE account_id = ? AND id_hash <> ? AND revoked_at IS NULL
            """, arguments: [at.epochMilliseconds, reason.rawValue, accountID, kept])
        // Counted: the flows still under way; expired ones waiting for the purge are closed
        // too, and not counted.
        let flows = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sign_in_flow WHERE account_id = ? AND consumed_at IS NULL AND expires_at > ?",
                                     arguments: [accountID, at.epochMilliseconds]) ?? 0
        try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ?, ended_reason = ?, oidc_id_token = NULL WHERE account_id = ? AND consumed_at IS NULL",
                       arguments: [at.epochMilliseconds, reason.rawValue, accountID])
        return EndedSessions(references: live.map(SessionStore.sessionReference(hash:)), flows: flows)
    }

    public func renew(_ kept: String, as renewed: String, of accountID: String, in db: any SQLTransaction) throws -> Bool {
        try db.execute(sql: "UPDATE web_session SET id_hash = ? WHERE id_hash = ? AND account_id = ? AND revoked_at IS NULL",
                       arguments: [renewed, kept, accountID])
        return try db.changesCount == 1
    }

    /// Every account's sessions and sign-ins under way (the server key was lost: what they
    /// hold sealed cannot be opened any more). Returns the sessions ended.
    public func revokeEverySession(reason: SessionEndReason, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE revoked_at IS NULL",
                       arguments: [at.epochMilliseconds, reason.rawValue])
        let sessions = try db.changesCount
        try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ?, ended_reason = ?, oidc_id_token = NULL WHERE consumed_at IS NULL",
                       arguments: [at.epochMilliseconds, reason.rawValue])
        return sessions
    }

    public func revokeProviderSessions(of accountID: String, reason: SessionEndReason, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: """
            UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL
            WHERE account_id = ? AND revoked_at IS NULL AND authentication = 'psc'
            """, arguments: [at.epochMilliseconds, reason.rawValue, accountID])
        let sessions = try db.changesCount
        try db.execute(sql: """
            UPDATE sign_in_flow SET consumed_at = ?, ended_reason = ?, oidc_id_token = NULL WHERE account_id = ? AND consumed_at IS NULL AND authentication = 'psc'
            """, arguments: [at.epochMilliseconds, reason.rawValue, accountID])
        return sessions
    }

    public func liveSASSessionCount(of accountID: String, at: Date, in db: any SQLTransaction) throws -> Int {
        try Int.fetchOne(db, sql: """
            SELECT COUNT(*) FROM web_session WHERE account_id = ? AND origin = 'sas' AND revoked_at IS NULL AND absolute_expires_at > ?
            """, arguments: [accountID, at.epochMilliseconds]) ?? 0
    }

    public func isSuspendedByVendor(_ accountID: String, in db: any SQLTransaction) throws -> Bool {
        try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM vendor_suspension WHERE account_id = ?)", arguments: [accountID]) ?? false
    }

    /// What Habilitation holds of an account being erased (``VendorAdministration/erase``):
    /// its sessions and sign-in flows, ended or not (their addresses, user agents, sealed
    /// ID tokens and Pro Santé Connect subjects go with them), and its vendor suspension.
    func eraseAll(of accountID: String, in db: any SQLTransaction) throws {
        try db.execute(sql: "DELETE FROM web_session WHERE account_id = ?", arguments: [accountID])
        try db.execute(sql: "DELETE FROM sign_in_flow WHERE account_id = ?", arguments: [accountID])
        try db.execute(sql: "DELETE FROM vendor_suspension WHERE account_id = ?", arguments: [accountID])
    }
}
