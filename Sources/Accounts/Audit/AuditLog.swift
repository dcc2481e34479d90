import Foundation
import Storage

/// Who made a call: for INT_R02, the verified client certificate's subject and serial.
public struct AuditActor: Sendable, Equatable {
    public var subject: String?
    public var serial: String?
    public var address: String?

    public init(subject: String? = nil, serial: String? = nil, address: String? = nil) {
        self.subject = subject
        self.serial = serial
        self.address = address
    }

    /// The vendor's operator at the command line.
    public static let commandLine = AuditActor(subject: "cli")
}

/// One changed field: its name and its values before and after. Never carries a secret
/// (the password hash is not a field the audit knows about).
public struct FieldChange: Sendable, Equatable, Codable {
    public var field: String
    public var old: String?
    public var new: String?

    public init(field: String, old: String?, new: String?) {
        self.field = field
        self.old = old
        self.new = new
    }
}

/// A row of the append-only `audit_event` table (UPDATE and DELETE are refused by triggers).
public struct AuditEvent: Sendable, Equatable, SQLRecord {
    public static let databaseTableName = "audit_event"

    public var seq: Int64?
    public var at: Date
    /// Which surface produced it: `int_r02` for the SAS calls.
    public var surface: String
    /// The interaction: `create`, `conditional-update`...
    public var action: String
    /// The answer: the HTTP status for INT_R02 calls, plus a word (`201 created`).
    public var outcome: String
    public var actorSubject: String?
    public var actorSerial: String?
    public var actorAddress: String?
    public var requestId: String?
    /// The identifier the call addressed or carried (`system|value`).
    public var identifier: String?
    public var accountId: String?
    /// JSON array of ``FieldChange``.
    public var changes: String?
    /// Free text: refusal diagnostics, re-attribution notes.
    public var detail: String?

    public init(
        at: Date, surface: String, action: String, outcome: String, actor: AuditActor, requestID: String?,
        identifier: String?, accountID: String?, changes: [FieldChange], detail: String?
    ) {
        self.at = at
        self.surface = surface
        self.action = action
        self.outcome = outcome
        self.actorSubject = actor.subject.map { Self.bounded($0, Self.fieldLimit) }
        self.actorSerial = actor.serial.map { Self.bounded($0, Self.fieldLimit) }
        self.actorAddress = actor.address.map { Self.bounded($0, Self.fieldLimit) }
        self.requestId = requestID.map { Self.bounded($0, Self.fieldLimit) }
        self.identifier = identifier.map { Self.bounded($0, Self.fieldLimit) }
        self.accountId = accountID
        self.changes = changes.isEmpty ? nil : Self.encodeChanges(changes.map {
            FieldChange(field: $0.field, old: $0.old.map { Self.bounded($0, Self.fieldLimit) }, new: $0.new.map { Self.bounded($0, Self.fieldLimit) })
        })
        self.detail = detail.map { Self.bounded($0, Self.detailLimit) }
    }

    /// Bounds on what one event keeps of client-supplied text (characters). Every row of the
    /// trail is kept forever, so no request may make one arbitrarily large.
    public static let fieldLimit = 1024
    public static let detailLimit = 4096

    /// Also writes NUL as `\u{0}`: PostgreSQL's `text` cannot hold it, so an event carrying one
    /// (a certificate subject, a decoded URL parameter) would fail there, and with it the
    /// refusal's record or the write it belongs to, where SQLite would have stored it.
    static func bounded(_ text: String, _ limit: Int) -> String {
        let text = text.unicodeScalars.contains("\u{0}") ? text.replacingOccurrences(of: "\u{0}", with: "\\u{0}") : text
        // Counted in Unicode scalars: a character may carry any number of combining marks.
        let count = text.unicodeScalars.count
        guard count > limit else { return text }
        var kept = String.UnicodeScalarView()
        kept.append(contentsOf: text.unicodeScalars.prefix(limit))
        return String(kept) + "… [\(count - limit) more characters]"
    }

    public init(row: SQLRow) throws {
        seq = row["seq"]
        at = Date(epochMilliseconds: row["at"])
        surface = row["surface"]
        action = row["action"]
        outcome = row["outcome"]
        actorSubject = row["actor_subject"]
        actorSerial = row["actor_serial"]
        actorAddress = row["actor_address"]
        requestId = row["request_id"]
        identifier = row["identifier"]
        accountId = row["account_id"]
        changes = row["changes"]
        detail = row["detail"]
    }

    static func encodeChanges(_ changes: [FieldChange]) -> String {
        JSONWriter().string(.array(changes.map { change in
            var object: JSONObject = ["field": .string(change.field)]
            object["old"] = change.old.map(JSONValue.string) ?? .null
            object["new"] = change.new.map(JSONValue.string) ?? .null
            return .object(object)
        }))
    }

    /// The event as one JSON object, for `account-server audit` (JSON lines).
    public var jsonValue: JSONValue {
        var object: JSONObject = [:]
        object["seq"] = seq.map { .number(String($0)) } ?? .null
        object["at"] = .string(AuditLog.timestamp(at))
        object["surface"] = .string(surface)
        object["action"] = .string(action)
        object["outcome"] = .string(outcome)
        object["actor_subject"] = actorSubject.map(JSONValue.string) ?? .null
        object["actor_serial"] = actorSerial.map(JSONValue.string) ?? .null
        object["actor_address"] = actorAddress.map(JSONValue.string) ?? .null
        object["request_id"] = requestId.map(JSONValue.string) ?? .null
        object["identifier"] = identifier.map(JSONValue.string) ?? .null
        object["account_id"] = accountId.map(JSONValue.string) ?? .null
        if let changes, let parsed = try? JSONParser().parse(Array(changes.utf8)) {
            object["changes"] = parsed
        } else {
            object["changes"] = .array([])
        }
        object["detail"] = detail.map(JSONValue.string) ?? .null
        return .object(object)
    }
}

/// Appends to and reads the audit trail.
public struct AuditLog: Sendable {
    public init() {}

    /// Every call appends one: prepared once per connection. It reads nothing (no foreign
    /// key, no trigger on INSERT on PostgreSQL), so it goes with the write before it.
    enum Append: PreparedSQL {
        static let joinsTheWriteBefore = true
        static let sql = """
            INSERT INTO audit_event (at, surface, action, outcome, actor_subject, actor_serial, actor_address,
                                     request_id, identifier, account_id, changes, detail)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """
    }

    public func append(_ event: AuditEvent, in db: any SQLTransaction) throws {
        try db.execute(Append.self, arguments: [event.at.epochMilliseconds, event.surface, event.action, event.outcome, event.actorSubject, event.actorSerial,
                                                event.actorAddress, event.requestId, event.identifier, event.accountId, event.changes, event.detail])
    }

    /// Events in order, optionally for one account, after a sequence number and up to one.
    public func events(accountID: String? = nil, afterSeq: Int64 = 0, upToSeq: Int64? = nil, limit: Int? = nil,
                       in db: any SQLTransaction) throws -> [AuditEvent] {
        var sql = "SELECT * FROM audit_event WHERE seq > ?"
        var arguments: SQLArguments = [afterSeq]
        if let upToSeq {
            sql += " AND seq <= ?"
            arguments += [upToSeq]
        }
        if let accountID {
            sql += " AND account_id = ?"
            arguments += [accountID]
        }
        sql += " ORDER BY seq"
        if let limit {
            sql += " LIMIT ?"
            arguments += [limit]
        }
        return try AuditEvent.fetchAll(db, sql: sql, arguments: arguments)
    }

    /// How many events ``events(accountID:afterSeq:upToSeq:limit:in:)`` would return (without
    /// a limit).
    public func count(accountID: String? = nil, afterSeq: Int64 = 0, upToSeq: Int64, in db: any SQLTransaction) throws -> Int {
        var sql = "SELECT COUNT(*) FROM audit_event WHERE seq > ? AND seq <= ?"
        var arguments: SQLArguments = [afterSeq, upToSeq]
        if let accountID {
            sql += " AND account_id = ?"
            arguments += [accountID]
        }
        return try Int.fetchOne(db, sql: sql, arguments: arguments) ?? 0
    }

    /// The largest `seq` so far (0 for an empty trail): read between writes, every event up to
    /// it is committed (or was rolled back), so a page that stops there never skips one.
    public func horizon(in db: any SQLTransaction) throws -> Int64 {
        try Int64.fetchOne(db, Horizon.self) ?? 0
    }

    enum Horizon: PreparedSQL {
        static let sql = "SELECT COALESCE(MAX(seq), 0) FROM audit_event"
    }

    /// RFC 3339 UTC with milliseconds, the one timestamp format of the product's outputs.
    public static func timestamp(_ date: Date) -> String {
        date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true, timeZone: .gmt))
    }
}
