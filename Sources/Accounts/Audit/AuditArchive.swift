import Foundation
import Storage

/// The retention of the audit trail: its oldest events moved out to a file the operator keeps
/// (`account-server admin archive-audit`), for a deployment whose policy bounds how long the
/// trail stays in the database (names, addresses and identifiers of people long gone).
///
/// The trail stays append-only for the running server: SQLite's triggers and PostgreSQL's
/// trigger and grants (no `DELETE` for the runtime role) are untouched for every other
/// writer. Only this operation, in one transaction, sets the deletion guard aside for the
/// events being archived and puts it back, which on PostgreSQL takes the schema owner (the
/// one role allowed to alter the table). The range removed is a prefix of the trail (every
/// event up to a `seq`), so an export paging with `after=` never misses one, and the removal
/// is itself an event (`audit-archived`, with the archive's SHA-256), which stays.
public struct AuditArchive: Sendable {
    public let database: AccountDatabase

    public init(database: AccountDatabase) {
        self.database = database
    }

    /// A prefix of the trail: events `firstSeq…lastSeq`, `count` of them (seq has gaps where
    /// transactions rolled back), whose seqs add up to `seqSum`: with the count, what the
    /// removal checks the events still are.
    public struct Range: Sendable, Equatable {
        public var firstSeq: Int64
        public var lastSeq: Int64
        public var count: Int
        public var seqSum: Int64
        /// The newest event of the range (before the cut-off, by construction).
        public var newest: Date
    }

    /// Why an archived range was not removed.
    public enum Refusal: Error, Equatable, CustomStringConvertible {
        /// The events up to `lastSeq` are not those archived (another archive ran meanwhile, or
        /// an event drawn before the export committed after it).
        case rangeChanged(expected: Int, found: Int)
        /// PostgreSQL: the table stayed locked by other transactions past the wait allowed.
        case busy

        public var description: String {
            switch self {
            case .rangeChanged(let expected, let found):
                "the trail changed since the export (\(expected) event(s) archived, \(found) now in that range, or other ones): nothing was removed; archive again to a new file"
            case .busy:
                "the audit table stayed busy for 5 s (a long transaction holds it): nothing was removed; archive again to a new file"
            }
        }
    }

    /// The events to archive: the longest prefix of the trail (in `seq` order) whose every
    /// event is dated before `cutoff`, or nil when there is none. An event dated before the
    /// cut-off that comes after a younger one (on PostgreSQL, `seq` is drawn before commit; an
    /// instance with a wrong clock) stays, with everything after it: never is an event dated
    /// after the cut-off archived, whatever the dates of the others. Read between writes, so
    /// that no event below the prefix's end is still to commit.
    public func range(before cutoff: Date) async throws -> Range? {
        try await database.readBetweenWrites { db in
            let end: Int64
            if let young = try Int64.fetchOne(db, sql: "SELECT MIN(seq) FROM audit_event WHERE at >= ?", arguments: [cutoff.epochMilliseconds]) {
                end = young - 1
            } else {
                guard let last = try Int64.fetchOne(db, sql: "SELECT MAX(seq) FROM audit_event") else { return nil }
                end = last
            }
            return try Self.describe(upTo: end, in: db)
        }
    }

    /// The events up to `end` as a range, nil when there are none.
    static func describe(upTo end: Int64, in db: any SQLTransaction) throws -> Range? {
        guard let row = try SQLRow.fetchOne(db, sql: """
            SELECT MIN(seq) AS first, MAX(seq) AS last, COUNT(*) AS n, CAST(SUM(seq) AS BIGINT) AS total, MAX(at) AS newest FROM audit_event WHERE seq <= ?
            """, arguments: [end]), let first = row["first"] as Int64?, let last = row["last"] as Int64? else { return nil }
        return Range(firstSeq: first, lastSeq: last, count: row["n"], seqSum: row["total"], newest: Date(epochMilliseconds: row["newest"]))
    }

    /// The range's events in order, a page at a time (a trail of years does not fit in memory).
    public func forEachEvent(in range: Range, pageSize: Int = 5_000, _ body: (AuditEvent) throws -> Void) async throws {
        var cursor = range.firstSeq - 1
        while true {
            let after = cursor
            let page = try await database.read { db in
                try AuditLog().events(afterSeq: after, upToSeq: range.lastSeq, limit: pageSize, in: db)
            }
            for event in page { try body(event) }
            guard page.count == pageSize, let last = page.last?.seq else { return }
            cursor = last
        }
    }

    /// Whether this connection's role may remove archived events: on PostgreSQL, only the
    /// table's owner (or a member of its role) may set the trigger aside; asked before an
    /// export, so that the runtime role is told at once instead of after writing the file.
    public func mayRemove() async throws -> Bool {
        try await database.read { db in
            switch db.engine {
            case .sqlite: return true
            case .postgres:
                return try Bool.fetchOne(db, sql: """
                    SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = 'audit_event'::regclass
                    """) ?? false
            }
        }
    }

    /// Deletes the archived range and appends `record` (the `audit-archived` event), in one
    /// transaction, after checking under the table's lock that the range still holds exactly
    /// the events archived. Throws ``Refusal`` otherwise, and the storage error of a role that
    /// may not alter the table (PostgreSQL: not the schema owner), with nothing removed.
    public func remove(_ range: Range, record: AuditEvent) async throws {
        try await database.write { db in
            switch db.engine {
            case .sqlite:
                // Dropped and created again in this transaction: every other connection sees
                // the trigger before and after, never without it.
                try db.execute(sql: "DROP TRIGGER audit_event_no_delete")
            case .postgres:
                // SHARE ROW EXCLUSIVE until the commit: audit inserts (ROW EXCLUSIVE) wait for
                // it, readers do not. Waited for at most 5 s, so that a long transaction
                // holding the table does not queue every audited write behind this one.
                try db.execute(sql: "SET LOCAL lock_timeout = '5s'")
                do {
                    try db.execute(sql: "ALTER TABLE audit_event DISABLE TRIGGER audit_event_no_update")
                } catch let error as StorageError where "\(error)".contains("55P03") || "\(error)".contains("lock timeout") {
                    throw Refusal.busy
                }
            }
            // The same events as exported: count and seqs (this transaction's view; an event
            // still to commit below the range's end is neither exported nor deleted).
            let found = try Self.describe(upTo: range.lastSeq, in: db)
            guard let found, found.count == range.count, found.seqSum == range.seqSum, found.firstSeq == range.firstSeq else {
                throw Refusal.rangeChanged(expected: range.count, found: found?.count ?? 0)
            }
            try db.execute(sql: "DELETE FROM audit_event WHERE seq <= ?", arguments: [range.lastSeq])
            switch db.engine {
            case .sqlite: try db.execute(sql: AccountSchema.sqliteAuditNoDelete)
            case .postgres: try db.execute(sql: "ALTER TABLE audit_event ENABLE TRIGGER audit_event_no_update")
            }
            try AuditLog().append(record, in: db)
        }
    }
}
