import NIOCore

/// A statement on a hot path, declared as a type so that the engine can prepare it once per
/// connection. PostgreSQL otherwise parses and plans every statement at every call: measured
/// with pgbench on forward-auth's check (8 clients, this machine), 5,200 calls/s parsed each
/// time against 30,900 prepared. SQLite needs nothing (GRDB's statements are cheap to
/// compile, and reads run in process). `sql` is the shared dialect (`?` placeholders).
public protocol PreparedSQL: Sendable {
    static var sql: String { get }
    /// Whether PostgreSQL may run this statement together with the declared write held just
    /// before it, as one statement (`WITH … AS (that write) <this one>`): one round trip
    /// fewer per transaction. Both then see the database as it was before either, and run in
    /// an order PostgreSQL does not specify, so only a statement that neither reads nor
    /// depends on that write may say yes: an `INSERT … VALUES` of parameters into a table
    /// none of whose constraints or triggers reads another table, and that no write of the
    /// transaction could make room for (the audit trail). Two such statements are never
    /// joined to each other: their rows' order (the audit trail's `seq`) must be the order
    /// they were made in. Default: no.
    static var joinsTheWriteBefore: Bool { get }
}

extension PreparedSQL {
    public static var joinsTheWriteBefore: Bool { false }
}

extension SQLTransaction {
    /// Runs a declared statement; engines that can prepare it do (the default runs its text).
    public func execute<S: PreparedSQL>(_ statement: S.Type, arguments: SQLArguments) throws {
        if let prepared = self as? any PreparingTransaction {
            try prepared.executePrepared(statement, arguments: arguments)
        } else {
            try execute(sql: S.sql, arguments: arguments)
        }
    }

    public func fetchAll<S: PreparedSQL>(_ statement: S.Type, arguments: SQLArguments) throws -> [SQLRow] {
        if let prepared = self as? any PreparingTransaction {
            return try prepared.fetchAllPrepared(statement, arguments: arguments)
        }
        return try fetchAll(sql: S.sql, arguments: arguments)
    }

    public func fetchOne<S: PreparedSQL>(_ statement: S.Type, arguments: SQLArguments) throws -> SQLRow? {
        try fetchAll(statement, arguments: arguments).first
    }
}

/// A transaction that prepares declared statements (PostgreSQL).
protocol PreparingTransaction: SQLTransaction {
    func executePrepared<S: PreparedSQL>(_ statement: S.Type, arguments: SQLArguments) throws
    func fetchAllPrepared<S: PreparedSQL>(_ statement: S.Type, arguments: SQLArguments) throws -> [SQLRow]
}

extension SQLDecodable {
    public static func fetchOne<S: PreparedSQL>(_ db: any SQLTransaction, _ statement: S.Type, arguments: SQLArguments = []) throws -> Self? {
        guard let row = try db.fetchOne(statement, arguments: arguments), let first = row.values.first else { return nil }
        return Self.decode(first)
    }
}

extension SQLRecord {
    public static func fetchOne<S: PreparedSQL>(_ db: any SQLTransaction, _ statement: S.Type, arguments: SQLArguments = []) throws -> Self? {
        try db.fetchOne(statement, arguments: arguments).map(Self.init(row:))
    }

    public static func fetchAll<S: PreparedSQL>(_ db: any SQLTransaction, _ statement: S.Type, arguments: SQLArguments = []) throws -> [Self] {
        try db.fetchAll(statement, arguments: arguments).map(Self.init(row:))
    }
}
