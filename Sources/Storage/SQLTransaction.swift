/// The one way stores speak SQL: a transaction on one engine, valid only inside the
/// `read`/`write` block that received it (never keep it, never hand it to another task).
///
/// SQL is written once for both engines, with `?` placeholders; the PostgreSQL engine numbers
/// them (`$1`, `$2`…). The dialect both engines share is small and explicit: `TRUE`/`FALSE`,
/// `IS [NOT] DISTINCT FROM`, `ON CONFLICT … DO NOTHING/UPDATE`, `RETURNING`, partial
/// indexes; no `INSERT OR …`, no engine-specific functions.
public protocol SQLTransaction {
    /// Runs one statement; ``changesCount`` then holds the rows it inserted, updated or deleted.
    ///
    /// An engine may hold the statement back and send it with the transaction's next one (or
    /// its COMMIT), in order, in one exchange with the server: a write's error may then be
    /// thrown by the next statement, by ``changesCount`` or by the commit instead of here.
    /// Either way the transaction fails and nothing of it is kept, even if the block catches
    /// that error.
    func execute(sql: String, arguments: SQLArguments) throws
    /// Rows changed by the last ``execute(sql:arguments:)`` of an INSERT, UPDATE or DELETE
    /// (0 after DDL; sends what is held back first); a ``fetchAll(sql:arguments:)`` between
    /// them leaves it as it was, on both engines, even one that writes (`INSERT … RETURNING`:
    /// count its rows instead). 0 before any. (A SELECT run by `execute` is not counted
    /// alike: use `fetchAll`.)
    var changesCount: Int { get throws }
    /// Runs one query and returns all its rows.
    func fetchAll(sql: String, arguments: SQLArguments) throws -> [SQLRow]
    /// Which engine runs the statements (for the rare statement that cannot be shared).
    var engine: StorageKind { get }
}

extension SQLTransaction {
    public func execute(sql: String) throws {
        try execute(sql: sql, arguments: [])
    }

    public func fetchOne(sql: String, arguments: SQLArguments = []) throws -> SQLRow? {
        try fetchAll(sql: sql, arguments: arguments).first
    }
}

extension SQLRow {
    public static func fetchAll(_ db: any SQLTransaction, sql: String, arguments: SQLArguments = []) throws -> [SQLRow] {
        try db.fetchAll(sql: sql, arguments: arguments)
    }

    public static func fetchOne(_ db: any SQLTransaction, sql: String, arguments: SQLArguments = []) throws -> SQLRow? {
        try db.fetchOne(sql: sql, arguments: arguments)
    }
}

extension SQLDecodable {
    /// The first column of the first row; nil when there is no row or the value is NULL.
    public static func fetchOne(_ db: any SQLTransaction, sql: String, arguments: SQLArguments = []) throws -> Self? {
        guard let row = try db.fetchOne(sql: sql, arguments: arguments), let first = row.values.first else { return nil }
        return Self.decode(first)
    }

    /// The first column of every row (NULLs and values of another type are skipped).
    public static func fetchAll(_ db: any SQLTransaction, sql: String, arguments: SQLArguments = []) throws -> [Self] {
        try db.fetchAll(sql: sql, arguments: arguments).compactMap { row in row.values.first.flatMap(Self.decode) }
    }
}

/// A type read from a row, such as the record structs of the stores.
public protocol SQLRecord {
    init(row: SQLRow) throws
}

extension SQLRecord {
    public static func fetchOne(_ db: any SQLTransaction, sql: String, arguments: SQLArguments = []) throws -> Self? {
        try db.fetchOne(sql: sql, arguments: arguments).map(Self.init(row:))
    }

    public static func fetchAll(_ db: any SQLTransaction, sql: String, arguments: SQLArguments = []) throws -> [Self] {
        try db.fetchAll(sql: sql, arguments: arguments).map(Self.init(row:))
    }
}
