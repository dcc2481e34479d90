import Foundation
import Storage

/// The sign-in lockout counters kept on `account`, for a module that acts on them from
/// outside Accounts (a vendor admin's unlock, in Habilitation): `account` is written by
/// Accounts' code only.
public struct LockoutLedger: Sendable {
    public init() {}

    /// Clears the consecutive-failure count and any lockout, inside the caller's transaction.
    /// Returns what was cleared (nothing is written when there was nothing to clear), or nil
    /// when there is no such account.
    public func clear(accountID: String, at: Date, in db: any SQLTransaction) throws -> (failures: Int, wasLocked: Bool)? {
        guard let row = try SQLRow.fetchOne(db, sql: "SELECT failed_sign_ins, locked_until FROM account WHERE id = ?", arguments: [accountID]) else { return nil }
        let failures: Int = row["failed_sign_ins"]
        let wasLocked = (row["locked_until"] as Int64?).map { $0 > at.epochMilliseconds } ?? false
        if failures > 0 || wasLocked {
            try db.execute(sql: "UPDATE account SET failed_sign_ins = 0, locked_until = NULL, last_failed_sign_in = NULL WHERE id = ?", arguments: [accountID])
        }
        return (failures, wasLocked)
    }
}
