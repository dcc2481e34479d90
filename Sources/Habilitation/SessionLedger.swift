import Accounts
import Foundation
import Storage

/// Habilitation's side of ``AccountSessions``: the SQL on `web_session` that account changes
/// (password reset, INT_R02 deactivation) need, run inside Accounts' transaction.
public struct SessionLedger: AccountSessions {
    public init() {}

    public func revokeAll(of accountID: String, reason: String, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: "UPDATE web_session SET revoked_at = ?, revoked_reason = ?, oidc_id_token = NULL WHERE account_id = ? AND revoked_at IS NULL",
                       arguments: [at.epochMilliseconds, reason, accountID])
        return db.changesCount
    }

    public func liveSASSessionCount(of accountID: String, at: Date, in db: any SQLTransaction) throws -> Int {
        try Int.fetchOne(db, sql: """
            SELECT COUNT(*) FROM web_session WHERE account_id = ? AND origin = 'sas' AND revoked_at IS NULL AND absolute_expires_at > ?
            """, arguments: [accountID, at.epochMilliseconds]) ?? 0
    }
}
