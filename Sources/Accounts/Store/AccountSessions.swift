import Foundation
import Storage

/// What Accounts needs from the module that owns sign-in sessions (Habilitation): Accounts
/// never names the session table. The calls run inside the caller's write transaction, so an
/// account change and its effect on sessions commit together or not at all (a password reset
/// that revoked no session cannot be acknowledged). The composition root passes
/// Habilitation's implementation (`SessionLedger`) to ``Provisioner`` and ``CredentialStore``.
public protocol AccountSessions: Sendable {
    /// Ends every live session of the account (`reason` recorded with each); returns how many.
    func revokeAll(of accountID: String, reason: String, at: Date, in db: any SQLTransaction) throws -> Int
    /// Live sessions of the account that started from the SAS redirect: the ones whose
    /// habilitation an INT_R02 change of `active` affects from their next request.
    func liveSASSessionCount(of accountID: String, at: Date, in db: any SQLTransaction) throws -> Int
}
