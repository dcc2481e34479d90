import Foundation
import Storage

/// Removal of second factors, inside the caller's transaction: the vendor admin's answer to a
/// lost phone, and the operator's to a server key lost for good. Accounts owns the tables;
/// ``VendorAdministration`` ends the sessions and records the action in the same transaction.
public struct SecondFactorLedger: Sendable {
    public init() {}

    /// What a removal took away.
    public struct Removed: Sendable, Equatable {
        /// A TOTP secret, confirmed or pending enrolment.
        public var totpSecrets: Int
        /// Recovery codes not yet used.
        public var unusedRecoveryCodes: Int
    }

    /// Deletes the account's TOTP secret and recovery codes, and requires a new password
    /// through a reset link: the next sign-in then proves the mailbox, and enrols a new TOTP
    /// as a first sign-in does (the password alone, perhaps phished, must not be enough to
    /// enrol a device after a "lost phone" call). Nothing is written when nothing is
    /// enrolled. Nil when there is no such account.
    public func remove(accountID: String, in db: any SQLTransaction) throws -> Removed? {
        guard try Bool.fetchOne(db, sql: "SELECT 1 FROM account WHERE id = ?", arguments: [accountID]) != nil else { return nil }
        let totp = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM totp_credential WHERE account_id = ?", arguments: [accountID]) ?? 0
        let unused = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM recovery_code WHERE account_id = ? AND used_at IS NULL", arguments: [accountID]) ?? 0
        guard totp > 0 || unused > 0 else { return Removed(totpSecrets: 0, unusedRecoveryCodes: 0) }
        try db.execute(sql: "DELETE FROM recovery_code WHERE account_id = ?", arguments: [accountID])
        try db.execute(sql: "DELETE FROM totp_credential WHERE account_id = ?", arguments: [accountID])
        try db.execute(sql: "UPDATE account SET password_reset_required = TRUE WHERE id = ?", arguments: [accountID])
        return Removed(totpSecrets: totp, unusedRecoveryCodes: unused)
    }

    /// What discarding the secrets of a lost server key took away.
    public struct Discarded: Sendable, Equatable {
        public var totpSecrets: Int
        public var recoveryCodes: Int
        public var queuedMails: Int
        /// Accounts that had a second factor, now required to choose a new password (the
        /// regulators to tell).
        public var passwordsToReset: Int

        public init(totpSecrets: Int, recoveryCodes: Int, queuedMails: Int, passwordsToReset: Int) {
            self.totpSecrets = totpSecrets
            self.recoveryCodes = recoveryCodes
            self.queuedMails = queuedMails
            self.passwordsToReset = passwordsToReset
        }
    }

    /// Everything sealed or keyed with the server key, which nothing can open without it:
    /// every TOTP secret and recovery code, the mail outbox (sealed bodies), and the key's
    /// fingerprint (``SecretKeyCheck``), so that the next start creates a new key. An account
    /// that had a second factor must then choose a new password through a reset link, as after
    /// ``remove(accountID:in:)``: otherwise a password alone (perhaps phished) would enrol a
    /// device in the regulator's place at the next sign-in.
    public func discardEverythingSealed(in db: any SQLTransaction) throws -> Discarded {
        try db.execute(sql: """
            UPDATE account SET password_reset_required = TRUE
            WHERE id IN (SELECT account_id FROM totp_credential WHERE confirmed_at IS NOT NULL)
               OR id IN (SELECT account_id FROM recovery_code WHERE used_at IS NULL)
            """)
        let passwords = try db.changesCount
        try db.execute(sql: "DELETE FROM recovery_code")
        let codes = try db.changesCount
        try db.execute(sql: "DELETE FROM totp_credential")
        let totp = try db.changesCount
        try db.execute(sql: "DELETE FROM mail_outbox")
        let mails = try db.changesCount
        try db.execute(sql: "DELETE FROM secret_key_check")
        return Discarded(totpSecrets: totp, recoveryCodes: codes, queuedMails: mails, passwordsToReset: passwords)
    }
}
