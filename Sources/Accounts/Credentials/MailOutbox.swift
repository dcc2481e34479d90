import Foundation
import GRDB

/// A message for a person, in French, plain text.
public struct OutgoingMail: Sendable, Equatable {
    public var recipient: String
    public var subject: String
    public var body: String

    public init(recipient: String, subject: String, body: String) {
        self.recipient = recipient
        self.subject = subject
        self.body = body
    }
}

/// The durable outbox: mails are inserted in the same transaction as the change that causes
/// them (so a committed reset request always gets its mail, and a rolled-back one never
/// does) and delivered later by a mailer with retries and backoff.
public struct MailOutbox: Sendable {
    public init() {}

    public func enqueue(_ mail: OutgoingMail, at now: Date, in db: Database) throws {
        try db.cachedStatement(sql: """
            INSERT INTO mail_outbox (recipient, subject, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)
            """).execute(arguments: [mail.recipient, mail.subject, mail.body, now.epochMilliseconds, now.epochMilliseconds])
    }

    /// Mails due for (another) attempt, oldest first.
    public func due(at now: Date, limit: Int = 20, in db: Database) throws -> [(id: Int64, mail: OutgoingMail, attempts: Int)] {
        try Row.fetchAll(db, sql: """
            SELECT id, recipient, subject, body, attempts FROM mail_outbox
            WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?
            """, arguments: [now.epochMilliseconds, limit]).map { row in
            (row["id"], OutgoingMail(recipient: row["recipient"], subject: row["subject"], body: row["body"]), row["attempts"])
        }
    }

    /// Marks a mail delivered and scrubs its body: it may carry a reset link, a bearer secret
    /// that must not outlive its delivery in the database.
    public func markSent(id: Int64, at now: Date, in db: Database) throws {
        try db.execute(sql: "UPDATE mail_outbox SET sent_at = ?, body = '', attempts = attempts + 1, last_error = NULL WHERE id = ?",
                       arguments: [now.epochMilliseconds, id])
    }

    /// Records a failed attempt; retries back off exponentially (30 s, 1 min, 2 min... at most 1 h).
    public func markFailed(id: Int64, attempts: Int, error: String, at now: Date, in db: Database) throws {
        let delay = min(3600.0, 30.0 * pow(2.0, Double(attempts)))
        try db.execute(sql: "UPDATE mail_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                       arguments: [String(error.prefix(500)), now.addingTimeInterval(delay).epochMilliseconds, id])
    }
}
