import Foundation
import Storage

/// The erasure of an account's personal data from Accounts' tables (GDPR article 17), inside
/// the caller's transaction: ``VendorAdministration`` first removes Habilitation's rows (the
/// sessions and sign-ins that reference the account), then calls this, then records the
/// erasure in the audit trail, all in one write.
///
/// What goes: the account row (names, e-mail address, password hash, lockout state), its
/// identifiers and their history (the IDNPS and SAS technical id it held), its TOTP secret
/// and recovery codes, its password reset links, its CGU acceptances (with the address they
/// came from), and the mails still in the outbox for its current address (in any case) when
/// no other account has that address (mails to an address the SAS replaced earlier go at the
/// retention purge; a mail the mailer already took is still sent, with a link that opens
/// nothing). What stays: the audit trail, which is append-only by design (the database
/// refuses to delete from it); its events of the account keep the account id and what each
/// change carried. Its retention is the deployment's traceability policy, not this action's
/// (`docs/personal-data.md`).
///
/// An identifier the erased account took from another one (a reattribution) stays in that
/// other account's history, without the erased account's id: the history says the value was
/// reattributed, no longer to whom.
public struct AccountErasure: Sendable {
    public init() {}

    /// What an erasure removed, for the operator's answer and the audit event (counts only:
    /// the event must not carry what was erased).
    public struct Erased: Sendable, Equatable {
        /// Identifier rows, current and past.
        public var identifiers: Int
        public var totpSecrets: Int
        public var recoveryCodes: Int
        /// Reset links, live or dead.
        public var resetLinks: Int
        public var cguAcceptances: Int
        /// Outbox rows addressed to the account's address.
        public var mails: Int
    }

    /// Whether the account exists and is active at the SAS; nil when there is no such account.
    public func isActive(_ accountID: String, in db: any SQLTransaction) throws -> Bool? {
        try Bool.fetchOne(db, sql: "SELECT active FROM account WHERE id = ?", arguments: [accountID])
    }

    /// Deletes the account and what Accounts holds of it. The caller has removed the rows of
    /// other modules that reference it (foreign keys refuse the delete otherwise, and the
    /// transaction rolls back whole). Nil when there is no such account.
    public func erase(accountID: String, in db: any SQLTransaction) throws -> Erased? {
        guard let row = try SQLRow.fetchOne(db, sql: "SELECT email, email_key FROM account WHERE id = ?", arguments: [accountID]) else { return nil }
        let email: String = row["email"], emailKey: String = row["email_key"]
        // Mails for the address, unless another account (active or not) has it too: its
        // mails are indistinguishable from this one's and are not this erasure's to remove.
        // (They are purged after --retention-days anyway; bodies are sealed, then scrubbed.)
        var mails = 0
        if try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM account WHERE email_key = ? AND id <> ?)", arguments: [emailKey, accountID]) == false {
            // Folded by the same function on both sides (SQLite's lower() folds ASCII only).
            try db.execute(sql: "DELETE FROM mail_outbox WHERE lower(recipient) = lower(?)", arguments: [email])
            mails = try db.changesCount
        }
        try db.execute(sql: "DELETE FROM recovery_code WHERE account_id = ?", arguments: [accountID])
        let codes = try db.changesCount
        try db.execute(sql: "DELETE FROM totp_credential WHERE account_id = ?", arguments: [accountID])
        let totp = try db.changesCount
        try db.execute(sql: "DELETE FROM password_reset_token WHERE account_id = ?", arguments: [accountID])
        let links = try db.changesCount
        try db.execute(sql: "DELETE FROM cgu_acceptance WHERE account_id = ?", arguments: [accountID])
        let cgu = try db.changesCount
        try db.execute(sql: "UPDATE account_identifier SET ended_by_account_id = NULL WHERE ended_by_account_id = ?", arguments: [accountID])
        try db.execute(sql: "DELETE FROM account_identifier WHERE account_id = ?", arguments: [accountID])
        let identifiers = try db.changesCount
        try db.execute(sql: "DELETE FROM account WHERE id = ?", arguments: [accountID])
        return Erased(identifiers: identifiers, totpSecrets: totp, recoveryCodes: codes, resetLinks: links, cguAcceptances: cgu, mails: mails)
    }
}
