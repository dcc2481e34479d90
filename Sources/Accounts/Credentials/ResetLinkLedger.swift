import Foundation
import Storage

/// An account's password reset links, voided together, inside the caller's transaction.
/// Several may be live at once (a newer link does not void the older ones, so that someone
/// else's request cannot kill the link the regulator is about to open); all die together
/// when they must: a password set through any of them, the address they were mailed to
/// changed, the account deactivated by the SAS or suspended by a vendor admin, or an admin's
/// "sign out everywhere" (the answer to an account thought compromised, a link that leaked
/// included).
public struct ResetLinkLedger: Sendable {
    public init() {}

    /// Voids every live link of the account (expired ones are dead already, and not
    /// counted); returns how many.
    public func voidAll(of accountID: String, at: Date, in db: any SQLTransaction) throws -> Int {
        try db.execute(sql: """
            UPDATE password_reset_token SET voided_at = ? WHERE account_id = ? AND used_at IS NULL AND voided_at IS NULL AND expires_at > ?
            """, arguments: [at.epochMilliseconds, accountID, at.epochMilliseconds])
        return try db.changesCount
    }
}
