import Foundation
import Storage

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
///
/// Bodies are sealed with the server key (AES-256-GCM, bound to the recipient): a reset mail
/// carries a bearer link that sits in the outbox until delivery, forever when no transport is
/// configured, so a copy of the database (a backup) must not yield it.
public struct MailOutbox: Sendable {
    private let box: SecretBox
    static let sealedPrefix = "sealed:v1:"

    public init(box: SecretBox) {
        self.box = box
    }

    public func enqueue(_ mail: OutgoingMail, at now: Date, in db: any SQLTransaction) throws {
        let sealed = try box.seal(Array(mail.body.utf8), context: Self.context(mail.recipient))
        try db.execute(sql: """
            INSERT INTO mail_outbox (recipient, subject, body, created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?)
            """, arguments: [mail.recipient, mail.subject, Self.sealedPrefix + Data(sealed).base64EncodedString(),
                                     now.epochMilliseconds, now.epochMilliseconds])
    }

    /// Seals bodies an earlier version queued in clear (run once at start, before delivery);
    /// returns how many. With `secure_delete` on, the clear text does not stay in free pages.
    public func sealLegacyBodies(in db: any SQLTransaction) throws -> Int {
        let rows = try SQLRow.fetchAll(db, sql: """
            SELECT id, recipient, body FROM mail_outbox WHERE sent_at IS NULL AND body <> '' AND body NOT LIKE 'sealed:v1:%'
            """)
        for row in rows {
            let recipient: String = row["recipient"], body: String = row["body"]
            let sealed = try box.seal(Array(body.utf8), context: Self.context(recipient))
            try db.execute(sql: "UPDATE mail_outbox SET body = ? WHERE id = ?",
                           arguments: [Self.sealedPrefix + Data(sealed).base64EncodedString(), row["id"] as Int64])
        }
        return rows.count
    }

    static func context(_ recipient: String) -> String { "mail-outbox:\(recipient)" }

    /// The clear body of a stored one; a body that does not open (another key, tampering)
    /// throws rather than send garbage.
    func open(_ stored: String, recipient: String) throws -> String {
        guard stored.hasPrefix(Self.sealedPrefix), let sealed = Data(base64Encoded: String(stored.dropFirst(Self.sealedPrefix.count))) else {
            throw SecretBoxError(description: "an outbox body is not sealed")
        }
        return String(decoding: try box.open(Array(sealed), context: Self.context(recipient)), as: UTF8.self)
    }

    /// A mail due for (another) attempt; `mail` is nil when its body does not open with this
    /// server's key (another key file, a restored database): the mailer records that row as
    /// failed instead of letting it block every other mail.
    public struct Due: Sendable {
        public var id: Int64
        public var attempts: Int
        public var mail: OutgoingMail?
    }

    /// Mails due for (another) attempt, oldest first.
    public func due(at now: Date, limit: Int = 20, in db: any SQLTransaction) throws -> [Due] {
        try SQLRow.fetchAll(db, sql: """
            SELECT id, recipient, subject, body, attempts FROM mail_outbox
            WHERE sent_at IS NULL AND next_attempt_at <= ? ORDER BY id LIMIT ?
            """, arguments: [now.epochMilliseconds, limit]).map { row in
            let recipient: String = row["recipient"]
            let body = try? open(row["body"], recipient: recipient)
            return Due(id: row["id"], attempts: row["attempts"], mail: body.map { OutgoingMail(recipient: recipient, subject: row["subject"], body: $0) })
        }
    }

    /// Marks a mail delivered and scrubs its body: it may carry a reset link, a bearer secret
    /// that must not outlive its delivery in the database.
    public func markSent(id: Int64, at now: Date, in db: any SQLTransaction) throws {
        try db.execute(sql: "UPDATE mail_outbox SET sent_at = ?, body = '', attempts = attempts + 1, last_error = NULL WHERE id = ?",
                       arguments: [now.epochMilliseconds, id])
    }

    /// Records a failed attempt; retries back off exponentially (30 s, 1 min, 2 min... at most 1 h).
    public func markFailed(id: Int64, attempts: Int, error: String, at now: Date, in db: any SQLTransaction) throws {
        let delay = min(3600.0, 30.0 * pow(2.0, Double(attempts)))
        try db.execute(sql: "UPDATE mail_outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? WHERE id = ?",
                       arguments: [String(error.prefix(500)), now.addingTimeInterval(delay).epochMilliseconds, id])
    }
}

/// The outbox as the mailer uses it. Several instances may deliver from one database: a mail
/// is *claimed* (its next attempt pushed past a lease) in a write transaction before it is
/// sent, so two instances never send the same mail; a mail whose sender died is retried
/// once its lease has passed.
public struct MailQueue: Sendable {
    public let database: AccountDatabase
    public let outbox: MailOutbox
    /// How long a claimed mail is reserved for the instance sending it.
    public var lease: TimeInterval = 300

    public init(database: AccountDatabase, outbox: MailOutbox) {
        self.database = database
        self.outbox = outbox
    }

    /// Claims the mails due now, oldest first.
    public func claimDue(at now: Date = Date(), limit: Int = 20) async throws -> [MailOutbox.Due] {
        let leaseEnd = now.addingTimeInterval(lease).epochMilliseconds
        return try await database.write { db in
            let due = try outbox.due(at: now, limit: limit, in: db)
            for item in due {
                try db.execute(sql: "UPDATE mail_outbox SET next_attempt_at = ? WHERE id = ?", arguments: [leaseEnd, item.id])
            }
            return due
        }
    }

    public func markSent(id: Int64, at now: Date = Date()) async throws {
        try await database.write { db in try outbox.markSent(id: id, at: now, in: db) }
    }

    public func markFailed(id: Int64, attempts: Int, error: String, at now: Date = Date()) async throws {
        try await database.write { db in try outbox.markFailed(id: id, attempts: attempts, error: error, at: now, in: db) }
    }

    /// Seals bodies an earlier version queued in clear (once, at start); returns how many.
    public func sealLegacyBodies() async throws -> Int {
        try await database.write { db in try outbox.sealLegacyBodies(in: db) }
    }
}
