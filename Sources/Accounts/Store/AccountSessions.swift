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

/// Why a session (or a sign-in under way) was ended before its time, recorded with it
/// (`revoked_reason`, `ended_reason`). One type, so that every way of ending one is
/// classified where it is added: see ``requiresNewProviderAuthentication``.
public enum SessionEndReason: String, Sendable, CaseIterable {
    /// The browser's own sign-out (« Se déconnecter »).
    case signOut = "sign-out"
    /// « Fermer mes autres sessions ».
    case signedOutElsewhere = "signed-out-elsewhere"
    /// A password change (the other sessions) or reset (all of them).
    case passwordChanged = "password-changed"
    /// An admin's `revoke-sessions`.
    case admin
    /// An admin's `reset-second-factor`.
    case secondFactorReset = "second-factor-reset"
    /// The SAS replaced the national id a Pro Santé Connect session was matched on.
    case nationalIDReplaced = "national-id-replaced"
    /// The SAS gave the national id to another account.
    case nationalIDReattributed = "national-id-reattributed"
    /// The server key was declared lost (`admin forget-secret-key`).
    case secretKeyForgotten = "secret-key-forgotten"
    /// The browser signed in again to the same account: its previous session (live, or
    /// expired and still in its cookie) ends.
    case sessionReplaced = "session-replaced"
    /// Someone signed in to another account in the browser: its previous session ends. Who
    /// held it may have left the workstation with their provider session open there.
    case replacedByAnotherAccount = "replaced-by-another-account"
    /// The provider's back-channel logout.
    case providerLogout = "provider-logout"

    /// Whether a Pro Santé Connect session ended so may open again from the provider's session
    /// it came from only once the provider has authenticated the user anew: ended by someone
    /// else than its browser, meaning to shut that browser out, or by another account's
    /// sign-in in that browser (a shared workstation) (Habilitation's
    /// `SessionStore.endedRemotely`). Not: the browser's own sign-out (it goes on to the
    /// provider's sign-out), the provider's logout (its session is over), a session replaced
    /// by its browser's next sign-in to the same account, a national id replaced or
    /// re-attributed (the provider's identity no longer leads to the account), the server
    /// key forgotten (nobody meant to end anyone).
    public var requiresNewProviderAuthentication: Bool {
        switch self {
        case .signedOutElsewhere, .passwordChanged, .admin, .secondFactorReset, .replacedByAnotherAccount: true
        case .signOut, .nationalIDReplaced, .nationalIDReattributed, .secretKeyForgotten, .sessionReplaced, .providerLogout: false
        }
    }
}

/// What Accounts needs from the module that owns sign-in sessions and vendor suspensions
/// (Habilitation): Accounts never names their tables. The calls run inside the caller's write transaction, so an
/// account change and its effect on sessions commit together or not at all (a password reset
/// that revoked no session cannot be acknowledged). The composition root passes
/// Habilitation's implementation (`SessionLedger`) to ``Provisioner`` and ``CredentialStore``.
public protocol AccountSessions: Sendable {
    /// Ends every live session of the account (`reason` recorded with each); returns how many.
    func revokeAll(of accountID: String, reason: SessionEndReason, at: Date, in db: any SQLTransaction) throws -> Int
    /// Ends every session of the account but the live one whose id hash is `kept`, and every
    /// sign-in flow of the account under way (one past the password must not become a session
    /// afterwards). Returns the live sessions ended (their references, for the audit trail)
    /// and the flows under way ended; nil, changing nothing, when `kept` is not a live session
    /// of the account (revoked or expired meanwhile).
    func revokeOthers(of accountID: String, keeping kept: String, reason: SessionEndReason, at: Date, in db: any SQLTransaction) throws -> EndedSessions?
    /// Gives the live session `kept` of the account the id hash `renewed` (a new cookie):
    /// whoever held the old id (a cookie that leaked) holds nothing after a password change.
    /// False, changing nothing, when `kept` is not a live session of the account.
    func renew(_ kept: String, as renewed: String, of accountID: String, in db: any SQLTransaction) throws -> Bool
    /// Ends the account's live sessions and sign-in flows opened through Pro Santé Connect
    /// (matched on the national id); returns how many sessions.
    func revokeProviderSessions(of accountID: String, reason: SessionEndReason, at: Date, in db: any SQLTransaction) throws -> Int
    /// Live sessions of the account that started from the SAS redirect: the ones whose
    /// habilitation an INT_R02 change of `active` affects from their next request.
    func liveSASSessionCount(of accountID: String, at: Date, in db: any SQLTransaction) throws -> Int
    /// Whether a vendor admin suspended the account's habilitation (an INT_R02 `active:true`
    /// does not lift it; the audit trail says so).
    func isSuspendedByVendor(_ accountID: String, in db: any SQLTransaction) throws -> Bool
}
