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
    /// counted), and withdraws from the outbox the mails of its dead links still waiting
    /// there (a relay down, no transport yet): a mail whose link no longer opens anything
    /// would only send the regulator to « Lien invalide », and its sealed link has no reason
    /// to stay in the database.
    public func voidAll(of accountID: String, at: Date, in db: any SQLTransaction) throws -> VoidedLinks {
        try db.execute(sql: """
            UPDATE password_reset_token SET voided_at = ? WHERE account_id = ? AND used_at IS NULL AND voided_at IS NULL AND expires_at > ?
            """, arguments: [at.epochMilliseconds, accountID, at.epochMilliseconds])
        let links = try db.changesCount
        try db.execute(sql: """
            DELETE FROM mail_outbox WHERE sent_at IS NULL AND reset_token_hash IN (
                SELECT token_hash FROM password_reset_token
                WHERE account_id = ? AND (used_at IS NOT NULL OR voided_at IS NOT NULL OR expires_at <= ?))
            """, arguments: [accountID, at.epochMilliseconds])
        return VoidedLinks(links: links, withdrawnMails: try db.changesCount)
    }
}

/// What ``ResetLinkLedger/voidAll(of:at:in:)`` did.
public struct VoidedLinks: Sendable, Equatable {
    /// Live links voided.
    public var links: Int
    /// Mails of the account's dead links (those just voided, or dead before) that were
    /// still in the outbox (not yet handed to the relay), withdrawn: not delivered.
    public var withdrawnMails: Int

    public init(links: Int, withdrawnMails: Int) {
        self.links = links
        self.withdrawnMails = withdrawnMails
    }

    /// For an audit event's `detail`; nil when nothing was voided or withdrawn.
    public var summary: String? { summary(which: "") }

    /// The same, the links qualified (`"other "`: those beside the one a password was just
    /// set through).
    public func summary(which: String) -> String? {
        var parts: [String] = []
        if links > 0 { parts.append("\(links) \(which)password reset link(s) voided") }
        if withdrawnMails > 0 { parts.append("\(withdrawnMails) reset mail(s) still queued withdrawn") }
        return parts.isEmpty ? nil : parts.joined(separator: ", ")
    }
}
