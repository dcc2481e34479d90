import Foundation
import Storage

/// What ``AccountSessions/revokeOthers(of:keeping:reason:at:in:)`` ended.
public struct EndedSessions: Sendable, Equatable {
    /// The live sessions ended, by their audit reference (not secrets: the first 12 hex digits
    /// of the hash of their id).
    public var references: [String]
    /// Sign-ins under way (not expired) ended.
    public var flows: Int
    public var sessions: Int { references.count }

    public init(references: [String], flows: Int) {
        self.references = references
        self.flows = flows
    }

    /// For an audit event's `detail`: the sessions by reference (the first 20), the flows.
    public var summary: String {
        var parts: [String] = []
        if !references.isEmpty {
            parts.append("ended: " + references.prefix(20).joined(separator: " ") + (references.count > 20 ? " and \(references.count - 20) more" : ""))
        }
        if flows > 0 { parts.append("\(flows) sign-in(s) under way ended") }
        return parts.joined(separator: ", ")
    }
}

/// What Accounts needs from the module that owns sign-in sessions and vendor suspensions
/// (Habilitation): Accounts never names their tables. The calls run inside the caller's write transaction, so an
/// account change and its effect on sessions commit together or not at all (a password reset
/// that revoked no session cannot be acknowledged). The composition root passes
/// Habilitation's implementation (`SessionLedger`) to ``Provisioner`` and ``CredentialStore``.
public protocol AccountSessions: Sendable {
    /// Ends every live session of the account (`reason` recorded with each); returns how many.
    func revokeAll(of accountID: String, reason: String, at: Date, in db: any SQLTransaction) throws -> Int
    /// Ends every session of the account but the live one whose id hash is `kept`, and every
    /// sign-in flow of the account under way (one past the password must not become a session
    /// afterwards). Returns the live sessions ended (their references, for the audit trail)
    /// and the flows under way ended; nil, changing nothing, when `kept` is not a live session
    /// of the account (revoked or expired meanwhile).
    func revokeOthers(of accountID: String, keeping kept: String, reason: String, at: Date, in db: any SQLTransaction) throws -> EndedSessions?
    /// Gives the live session `kept` of the account the id hash `renewed` (a new cookie):
    /// whoever held the old id (a cookie that leaked) holds nothing after a password change.
    /// False, changing nothing, when `kept` is not a live session of the account.
    func renew(_ kept: String, as renewed: String, of accountID: String, in db: any SQLTransaction) throws -> Bool
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
