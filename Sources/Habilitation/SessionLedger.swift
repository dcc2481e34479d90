import Accounts
import Foundation
import Storage

/// Habilitation's side of ``AccountSessions``: the SQL on `web_session`, `sign_in_flow` and
/// `vendor_suspension` that account changes (password reset, INT_R02 deactivation) need, run
/// inside Accounts' transaction.
public struct SessionLedger: AccountSessions {
    public init() {}

    /// Also ends the account's sign-in flows still in progress: a flow that passed the old
    /// password must not become a session after a reset.
    public func revokeAll(of accountID: String, reason: String, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE account_id = ? AND revoked_at IS NULL",
                       arguments: [at.epochMilliseconds, reason, accountID])
        let sessions = try db.changesCount
        try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ?, oidc_id_token = NULL WHERE account_id = ? AND consumed_at IS NULL",
                       arguments: [at.epochMilliseconds, accountID])
        return sessions
    }

    /// Every account's sessions and sign-ins under way (the server key was lost: what they
    /// hold sealed cannot be opened any more). Returns the sessions ended.
    public func revokeEverySession(reason: String, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE revoked_at IS NULL",
                       arguments: [at.epochMilliseconds, reason])
        let sessions = try db.changesCount
        try db.execute(sql: "UPDATE sign_in_flow SET consumed_at = ?, oidc_id_token = NULL WHERE consumed_at IS NULL",
                       arguments: [at.epochMilliseconds])
        return sessions
    }

    public func revokeProviderSessions(of accountID: String, reason: String, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: """
            UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL
            WHERE account_id = ? AND revoked_at IS NULL AND authentication = 'psc'
            """, arguments: [at.epochMilliseconds, reason, accountID])
        let sessions = try db.changesCount
        try db.execute(sql: """
            UPDATE sign_in_flow SET consumed_at = ?, oidc_id_token = NULL WHERE account_id = ? AND consumed_at IS NULL AND authentication = 'psc'
            """, arguments: [at.epochMilliseconds, accountID])
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
