import Crypto
import Foundation
import GRDB

/// A table as the copy between engines sees it: its name, the columns that order its rows
/// (its key), and its generated identity column if any.
public struct CopiedTable: Sendable {
    public let name: String
    public let orderBy: [String]
    public let identity: String?
    /// Rows a server writes about the installation itself at its first start (the server
    /// key's fingerprint): a target holding only those still counts as empty, and they are
    /// replaced by the source's.
    public let replacedOnCopy: Bool

    public init(_ name: String, orderBy: [String], identity: String? = nil, replacedOnCopy: Bool = false) {
        self.name = name
        self.orderBy = orderBy
        self.identity = identity
        self.replacedOnCopy = replacedOnCopy
    }
}

/// What was copied of one table, and the proof that the two sides hold the same rows.
public struct CopiedTableReport: Sendable, Equatable {
    public let table: String
    public let sourceRows: Int
    public let targetRows: Int
    /// SHA-256 over every row in key order, values normalised (booleans as 0/1), hex.
    public let sourceChecksum: String
    public let targetChecksum: String

    public var matches: Bool { sourceRows == targetRows && sourceChecksum == targetChecksum }
}

public enum StoreCopyError: Error, Equatable, CustomStringConvertible {
    case targetNotEmpty(table: String, rows: Int)
    case mismatch([CopiedTableReport])
    case missingKey(table: String, column: String)
    case keyNotUnique(table: String)

    public var description: String {
        switch self {
        case .targetNotEmpty(let table, let rows):
            "the target database is not empty (\(table) has \(rows) rows): copy into a new database"
        case .mismatch(let reports):
            "the copy does not match the source: " + reports.filter { !$0.matches }.map(\.table).joined(separator: ", ")
        case .missingKey(let table, let column):
            "\(table) has no column \(column) to order its rows by"
        case .keyNotUnique(let table):
            "\(table) has rows with the same key: its key does not identify its rows"
        }
    }
}

/// Copies every row of `tables` from a SQLite installation to another engine (PostgreSQL), in
/// one write transaction on the target (all or nothing), then verifies counts and checksums.
/// Both schemas must be at the same version (the caller migrates both first); the target must
/// be empty. Generated ids keep their values, and the target's identity sequences continue
/// after them.
///
/// Memory stays bounded whatever the size of the installation (years of audit trail): rows
/// go across ``pageSize`` at a time, in key order (keyset pages: `WHERE (key) > (last key)`),
/// read from one snapshot of the source held open for the whole copy (a read-only connection
/// of its own on the file), and the checksums are computed as the pages pass, on both sides.
public struct StoreCopy: Sendable {
    public let tables: [CopiedTable]
    /// Rows read and written at a time.
    public let pageSize: Int
    public static let defaultPageSize = 1_000

    public init(tables: [CopiedTable], pageSize: Int = StoreCopy.defaultPageSize) {
        precondition(pageSize > 0)
        self.tables = tables
        self.pageSize = pageSize
    }

    /// The last id each AUTOINCREMENT table of the source issued (`sqlite_sequence`, which
    /// SQLite keeps when rows are deleted), by table; empty when it has none.
    static func issuedIdentities(in db: Database) throws -> [String: Int64] {
        guard try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence')") == true else { return [:] }
        var issued: [String: Int64] = [:]
        for row in try Row.fetchAll(db, sql: "SELECT name, seq FROM sqlite_sequence") {
            if let name = row["name"] as String?, let seq = row["seq"] as Int64? { issued[name] = max(issued[name] ?? 0, seq) }
        }
        return issued
    }

    /// Copies the SQLite database at `sourcePath` (migrated to the same version as `target`).
    public func copy(fromSQLiteFile sourcePath: String, to target: any StorageEngine) async throws -> [CopiedTableReport] {
        let tables = self.tables
        let pageSize = self.pageSize
        let columns = try await Self.targetColumns(tables, in: target)
        var readOnly = Configuration()
        readOnly.readonly = true
        readOnly.busyMode = .timeout(10)
        let source = try DatabaseQueue(path: sourcePath, configuration: readOnly)
        defer { try? source.close() }
        // Written and verified in one transaction: a copy that does not match is rolled back.
        // The source is read inside it, from one snapshot (a consistent copy even while a
        // server writes to the file), page by page: a blocking read on the target
        // transaction's own thread (never one of Swift's cooperative pool), on a connection
        // nothing else uses. PostgreSQL may refuse the commit (a serialization failure): the
        // engine then runs this block again, which starts from nothing, on a new snapshot of
        // the source (`StoreCopyTests.aCopyRefusedAtCommitIsRunAgainFromAFreshSnapshot`).
        return try await target.write { db in
            for table in tables where !table.replacedOnCopy {
                if let count = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table.name)"), count > 0 {
                    throw StoreCopyError.targetNotEmpty(table: table.name, rows: count)
                }
            }
            for table in tables where table.replacedOnCopy {
                try db.execute(sql: "DELETE FROM \(table.name)")
            }
            let (sourceDigests, issued) = try source.read { sourceDB in
                let digests = try tables.map { table in
                    let booleanColumns = columns.booleans[table.name] ?? []
                    return try Self.digest(table, pageSize: pageSize, in: SQLiteTransaction(sourceDB)) { page in
                        try Self.insert(page, into: table, booleanColumns: booleanColumns, in: db)
                    }
                }
                return (digests, try Self.issuedIdentities(in: sourceDB))
            }
            // The target's identities continue after the last the source ever issued, not
            // after the largest still stored: rows the source deleted (purged outbox mails)
            // had ids that must not be issued again (logs name them), and an empty table
            // keeps its count too.
            for table in tables {
                if let identity = table.identity, db.engine == .postgres {
                    let largest = try Int64.fetchOne(db, sql: "SELECT COALESCE(MAX(\(identity)), 0) FROM \(table.name)") ?? 0
                    let last = max(largest, issued[table.name] ?? 0)
                    if last > 0 {
                        _ = try db.fetchAll(sql: "SELECT setval(pg_get_serial_sequence('\(table.name)', '\(identity)'), ?)", arguments: [last])
                    }
                }
            }
            let reports = try zip(tables, sourceDigests).map { table, sourceDigest in
                let textKeys = Set(table.orderBy).intersection(columns.texts[table.name] ?? [])
                // The key's index orders text in the database's collation; pages compared in
                // "C" would each scan and sort the whole table (quadratic in its rows). An
                // index in "C" for the check, made and dropped inside this transaction.
                let index = "store_copy_check_\(table.name)"
                if !textKeys.isEmpty {
                    try db.execute(sql: "CREATE INDEX \(index) ON \(table.name) (\(Self.orderedKeys(table, textKeys: textKeys)))")
                }
                let copied = try Self.digest(table, pageSize: pageSize, textKeys: textKeys, in: db)
                if !textKeys.isEmpty { try db.execute(sql: "DROP INDEX \(index)") }
                return CopiedTableReport(table: table.name, sourceRows: sourceDigest.rows, targetRows: copied.rows,
                                         sourceChecksum: sourceDigest.checksum, targetChecksum: copied.checksum)
            }
            guard reports.allSatisfy(\.matches) else { throw StoreCopyError.mismatch(reports) }
            return reports
        }
    }

    /// Inserts one page; SQLite's 0/1 become booleans in `booleanColumns` (PostgreSQL's).
    private static func insert(_ page: [SQLRow], into table: CopiedTable, booleanColumns: Set<String>, in db: any SQLTransaction) throws {
        guard let first = page.first else { return }
        let columns = first.columns
        let overriding = table.identity != nil && db.engine == .postgres ? " OVERRIDING SYSTEM VALUE" : ""
        let sql = "INSERT INTO \(table.name) (\(columns.joined(separator: ", ")))\(overriding) VALUES (\(columns.map { _ in "?" }.joined(separator: ", ")))"
        let isBoolean = columns.map { booleanColumns.contains($0) }
        for row in page {
            let values: SQLArguments = zip(row.values, isBoolean).map { value, isBoolean in
                if isBoolean, case .integer(let integer) = value { return SQLValue.bool(integer != 0) }
                return value
            }
            try db.execute(sql: sql, arguments: values)
        }
    }

    /// One page of `table` in key order: the first one, or the one after the row whose key is
    /// `after` (a row-value comparison). Both sides must give their rows in the same order for
    /// the checksums to compare: SQLite orders text bytewise, and so does PostgreSQL's "C"
    /// collation, which `textKeys` (the text key columns of a PostgreSQL table) are compared
    /// in, whatever the database's own collation (`en_US.UTF-8`, say, puts "a" before "B").
    static func page(_ table: CopiedTable, after: SQLArguments?, size: Int, textKeys: Set<String> = []) -> String {
        let keys = orderedKeys(table, textKeys: textKeys)
        let condition = after == nil ? "" : " WHERE (\(keys)) > (\(table.orderBy.map { _ in "?" }.joined(separator: ", ")))"
        return "SELECT * FROM \(table.name)\(condition) ORDER BY \(keys) LIMIT \(size)"
    }

    /// The key's columns, the text ones in the "C" collation.
    static func orderedKeys(_ table: CopiedTable, textKeys: Set<String>) -> String {
        table.orderBy.map { textKeys.contains($0) ? "\($0) COLLATE \"C\"" : $0 }.joined(separator: ", ")
    }

    /// A table's row count and checksum, computed a page at a time.
    public struct Digest: Sendable, Equatable {
        public var rows: Int
        public var checksum: String
    }

    /// The rows of `table` in key order, a page at a time (each given to `each` as it is read),
    /// with their count and ``checksum(_:)``, without holding more than a page.
    static func digest(_ table: CopiedTable, pageSize: Int, textKeys: Set<String> = [], in db: any SQLTransaction,
                       each: ([SQLRow]) throws -> Void = { _ in }) throws -> Digest {
        var hash = SHA256()
        var rows = 0
        var after: [SQLValue]?
        var keyIndexes: [Int]?
        while true {
            let arguments: SQLArguments? = after.map { $0.map { $0 as (any SQLBindable)? } }
            let page = try db.fetchAll(sql: Self.page(table, after: arguments, size: pageSize, textKeys: textKeys), arguments: arguments ?? [])
            for row in page {
                let indexes = try keyIndexes ?? table.orderBy.map { column in
                    guard let index = row.columns.firstIndex(of: column) else { throw StoreCopyError.missingKey(table: table.name, column: column) }
                    return index
                }
                keyIndexes = indexes
                // Pages skip nothing only if the key identifies its rows (each table's primary
                // key): rows with equal keys are next to each other in key order.
                let key = indexes.map { row.values[$0] }
                if key == after { throw StoreCopyError.keyNotUnique(table: table.name) }
                after = key
                Self.update(&hash, with: row)
            }
            rows += page.count
            try each(page)
            guard page.count == pageSize else { break }
        }
        // And a page that ended inside a group of equal keys has skipped the rest of it.
        guard let total = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table.name)"), total == rows else {
            throw StoreCopyError.keyNotUnique(table: table.name)
        }
        return Digest(rows: rows, checksum: Self.hex(hash.finalize()))
    }

    /// Columns of the target (PostgreSQL) by table: its booleans, whose SQLite values are the
    /// integers 0/1, and its text columns, ordered in the "C" collation (``page(_:after:size:textKeys:)``).
    static func targetColumns(_ tables: [CopiedTable], in target: any StorageEngine) async throws -> (booleans: [String: Set<String>], texts: [String: Set<String>]) {
        guard target.kind == .postgres else { return ([:], [:]) }
        let rows = try await target.read { db in
            try db.fetchAll(sql: """
                SELECT table_name, column_name, data_type FROM information_schema.columns
                WHERE data_type IN ('boolean', 'text', 'character varying', 'character') AND table_schema = current_schema()
                """, arguments: [])
        }
        var booleans: [String: Set<String>] = [:]
        var texts: [String: Set<String>] = [:]
        for row in rows {
            let table: String = row["table_name"]
            let type: String = row["data_type"]
            if type == "boolean" { booleans[table, default: []].insert(row["column_name"]) } else { texts[table, default: []].insert(row["column_name"]) }
        }
        return (booleans, texts)
    }

    /// Rows in order, each column as `name=type:value`, normalised across engines.
    static func checksum(_ rows: [SQLRow]) -> String {
        var hash = SHA256()
        for row in rows { update(&hash, with: row) }
        return hex(hash.finalize())
    }

    private static func update(_ hash: inout SHA256, with row: SQLRow) {
        for (column, value) in zip(row.columns, row.values) {
            let text: String
            switch value {
            case .null: text = "n"
            case .integer(let integer): text = "i\(integer)"
            case .bool(let bool): text = "i\(bool ? 1 : 0)"
            case .text(let string): text = "t\(string.utf8.count):\(string)"
            case .blob(let bytes): text = "b" + Data(bytes).base64EncodedString()
            }
            hash.update(data: Data("\(column)=\(text);".utf8))
        }
        hash.update(data: Data("\n".utf8))
    }

    private static func hex(_ digest: SHA256.Digest) -> String {
        digest.map { String(format: "%02x", $0) }.joined()
    }
}
