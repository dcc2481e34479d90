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

    /// Queues `mail`. `resetLink` is the SHA-256 of the reset link it carries, if any: a mail
    /// whose link dies before delivery (voided, expired) is withdrawn instead of sent
    /// (``ResetLinkLedger``, ``withdrawDeadLinks(at:in:)``).
    public func enqueue(_ mail: OutgoingMail, resetLink: String? = nil, at now: Date, in db: any SQLTransaction) throws {
        let sealed = try box.seal(Array(mail.body.utf8), context: Self.context(mail.recipient))
        try db.execute(sql: """
            INSERT INTO mail_outbox (recipient, subject, body, created_at, next_attempt_at, reset_token_hash) VALUES (?, ?, ?, ?, ?, ?)
            """, arguments: [mail.recipient, mail.subject, Self.sealedPrefix + Data(sealed).base64EncodedString(),
                                     now.epochMilliseconds, now.epochMilliseconds, resetLink])
    }

    /// A queued mail withdrawn because its reset link died before it was delivered.
    public struct Withdrawn: Sendable, Equatable {
        public enum Why: String, Sendable {
            /// The link's lifetime passed while the mail waited (a relay down for that long).
            case expired = "link expired before delivery"
            /// Voided or spent meanwhile (normally withdrawn at that moment already), or gone
            /// (purged).
            case dead = "link no longer valid"
        }
        public var id: Int64
        public var accountID: String?
        public var why: Why
    }

    /// Withdraws the due mails whose reset link no longer opens anything, and says which:
    /// the mailer runs it before each claim, so a mail that outlived its link (a relay down
    /// for longer than a link lives) is never sent. Mails queued by a version before links
    /// were recorded (no `reset_token_hash`) are delivered as they were.
    /// `only`: that mail alone, due or not (the mailer's check just before it sends one it
    /// claimed).
    public func withdrawDeadLinks(at now: Date, only id: Int64? = nil, in db: any SQLTransaction) throws -> [Withdrawn] {
        let which = id == nil ? "o.next_attempt_at <= ?" : "o.id = ?"
        let rows = try SQLRow.fetchAll(db, sql: """
            SELECT o.id, t.account_id, t.used_at, t.voided_at, t.expires_at FROM mail_outbox o
            LEFT JOIN password_reset_token t ON t.token_hash = o.reset_token_hash
            WHERE o.sent_at IS NULL AND o.reset_token_hash IS NOT NULL AND \(which)
              AND (t.token_hash IS NULL OR t.used_at IS NOT NULL OR t.voided_at IS NOT NULL OR t.expires_at <= ?)
            ORDER BY o.id
            """, arguments: [id ?? now.epochMilliseconds, now.epochMilliseconds])
        return try rows.map { row in
            let id: Int64 = row["id"]
            try db.execute(sql: "DELETE FROM mail_outbox WHERE id = ?", arguments: [id])
            let live = (row["used_at"] as Int64?) == nil && (row["voided_at"] as Int64?) == nil && (row["account_id"] as String?) != nil
            return Withdrawn(id: id, accountID: row["account_id"], why: live ? .expired : .dead)
        }
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
    /// that must not outlive its delivery in the database. False when the row was gone
    /// (withdrawn with its link while the relay had it).
    @discardableResult
    public func markSent(id: Int64, at now: Date, in db: any SQLTransaction) throws -> Bool {
        try db.execute(sql: "UPDATE mail_outbox SET sent_at = ?, body = '', attempts = attempts + 1, last_error = NULL WHERE id = ?",
                       arguments: [now.epochMilliseconds, id])
        return try db.changesCount > 0
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

    /// What a claim found: the mails to send now, and those withdrawn (their link died).
    public struct Claim: Sendable {
        public var due: [MailOutbox.Due]
        public var withdrawn: [MailOutbox.Withdrawn]
    }

    /// Withdraws the due mails whose reset link died (each recorded in the audit trail),
    /// then claims the mails due now, oldest first; one transaction.
    public func claimDue(at now: Date = Date(), limit: Int = 20) async throws -> Claim {
        let leaseEnd = now.addingTimeInterval(lease).epochMilliseconds
        return try await database.write { db in
            let withdrawn = try outbox.withdrawDeadLinks(at: now, in: db)
            try Self.record(withdrawn, at: now, in: db)
            let due = try outbox.due(at: now, limit: limit, in: db)
            for item in due {
                try db.execute(sql: "UPDATE mail_outbox SET next_attempt_at = ? WHERE id = ?", arguments: [leaseEnd, item.id])
            }
            return Claim(due: due, withdrawn: withdrawn)
        }
    }

    /// What the check just before a claimed mail is sent found.
    public enum Recheck: Sendable, Equatable {
        /// Still queued, its link (if any) live: send it.
        case deliver
        /// Its link died since the claim (expired, or voided behind the ledger): withdrawn now.
        case withdrawn(MailOutbox.Withdrawn)
        /// Gone from the outbox since the claim (withdrawn with its link, erased).
        case gone
    }

    /// Checks a claimed mail just before it is sent: a batch takes up to the relay's timeout
    /// per mail, and a link may die meanwhile (a suspension voids it and takes its mail out of
    /// the outbox; it expires). One short write transaction per mail.
    public func recheck(id: Int64, at now: Date = Date()) async throws -> Recheck {
        try await database.write { db in
            let withdrawn = try outbox.withdrawDeadLinks(at: now, only: id, in: db)
            try Self.record(withdrawn, at: now, in: db)
            if let mail = withdrawn.first { return .withdrawn(mail) }
            return try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM mail_outbox WHERE id = ? AND sent_at IS NULL", arguments: [id]) == 1 ? .deliver : .gone
        }
    }

    /// Each withdrawn mail in the audit trail.
    private static func record(_ withdrawn: [MailOutbox.Withdrawn], at now: Date, in db: any SQLTransaction) throws {
        for mail in withdrawn {
            try AuditLog().append(AuditEvent(at: now, surface: "web", action: "password-reset-mail-withdrawn", outcome: mail.why.rawValue,
                                             actor: AuditActor(subject: "mailer"), requestID: nil, identifier: nil,
                                             accountID: mail.accountID, changes: [], detail: "outbox id \(mail.id)"), in: db)
        }
    }

    /// False when the row was gone meanwhile (see ``MailOutbox/markSent(id:at:in:)``).
    @discardableResult
    public func markSent(id: Int64, at now: Date = Date()) async throws -> Bool {
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
