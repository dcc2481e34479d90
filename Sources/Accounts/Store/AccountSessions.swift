import Foundation
import Storage

/// What Accounts needs from the module that owns sign-in sessions and vendor suspensions
/// (Habilitation): Accounts never names their tables. The calls run inside the caller's write transaction, so an
/// account change and its effect on sessions commit together or not at all (a password reset
/// that revoked no session cannot be acknowledged). The composition root passes
/// Habilitation's implementation (`SessionLedger`) to ``Provisioner`` and ``CredentialStore``.
public protocol AccountSessions: Sendable {
    /// Ends every live session of the account (`reason` recorded with each); returns how many.
    func revokeAll(of accountID: String, reason: String, at: Date, in db: any SQLTransaction) throws -> Int
    /// Ends the account's live sessions and sign-in flows opened through Pro Santé Connect
    /// (matched on the national id); returns how many sessions.
    func revokeProviderSessions(of accountID: String, reason: String, at: Date, in db: any SQLTransaction) throws -> Int
    /// Live sessions of the account that started from the SAS redirect: the ones whose
    /// habilitation an INT_R02 change of `active` affects from their next request.
    func liveSASSessionCount(of accountID: String, at: Date, in db: any SQLTransaction) throws -> Int
    /// Whether a vendor admin suspended the account's habilitation (an INT_R02 `active:true`
    /// does not lift it; the audit trail says so).
    func isSuspendedByVendor(_ accountID: String, in db: any SQLTransaction) throws -> Bool
}
