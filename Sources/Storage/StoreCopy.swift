import Crypto
import Foundation

/// A table as the copy between engines sees it: its name, the columns that order its rows
/// (its key), and its generated identity column if any.
public struct CopiedTable: Sendable {
    public let name: String
    public let orderBy: [String]
    public let identity: String?

    public init(_ name: String, orderBy: [String], identity: String? = nil) {
        self.name = name
        self.orderBy = orderBy
        self.identity = identity
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

public enum StoreCopyError: Error, CustomStringConvertible {
    case targetNotEmpty(table: String, rows: Int)
    case mismatch([CopiedTableReport])

    public var description: String {
        switch self {
        case .targetNotEmpty(let table, let rows):
            "the target database is not empty (\(table) has \(rows) rows): copy into a new database"
        case .mismatch(let reports):
            "the copy does not match the source: " + reports.filter { !$0.matches }.map(\.table).joined(separator: ", ")
        }
    }
}

/// Copies every row of `tables` from one engine to another (SQLite to PostgreSQL), in one
/// write transaction on the target (all or nothing), then verifies counts and checksums.
/// Both schemas must be at the same version (the caller migrates both first); the target must
/// be empty. Generated ids keep their values, and the target's identity sequences continue
/// after them.
public struct StoreCopy: Sendable {
    public let tables: [CopiedTable]

    public init(tables: [CopiedTable]) {
        self.tables = tables
    }

    public func copy(from source: any StorageEngine, to target: any StorageEngine) async throws -> [CopiedTableReport] {
        let tables = self.tables
        // One snapshot of the source: a consistent copy even while a server writes to it.
        let rows = try await source.read { db in
            try tables.map { table in try db.fetchAll(sql: Self.select(table), arguments: []) }
        }
        let booleans = try await Self.booleanColumns(tables, in: target)
        // Written and verified in one transaction: a copy that does not match is rolled back.
        return try await target.write { db in
            for table in tables {
                if let count = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table.name)"), count > 0 {
                    throw StoreCopyError.targetNotEmpty(table: table.name, rows: count)
                }
            }
            for (table, tableRows) in zip(tables, rows) {
                guard let first = tableRows.first else { continue }
                let columns = first.columns
                let overriding = table.identity != nil && db.engine == .postgres ? " OVERRIDING SYSTEM VALUE" : ""
                let sql = "INSERT INTO \(table.name) (\(columns.joined(separator: ", ")))\(overriding) VALUES (\(columns.map { _ in "?" }.joined(separator: ", ")))"
                let flags = columns.map { booleans[table.name]?.contains($0) == true }
                for row in tableRows {
                    let values: SQLArguments = zip(row.values, flags).map { value, isBoolean in
                        if isBoolean, case .integer(let integer) = value { return SQLValue.bool(integer != 0) }
                        return value
                    }
                    try db.execute(sql: sql, arguments: values)
                }
                if let identity = table.identity, db.engine == .postgres {
                    _ = try db.fetchAll(sql: """
                        SELECT setval(pg_get_serial_sequence('\(table.name)', '\(identity)'), (SELECT MAX(\(identity)) FROM \(table.name)))
                        """, arguments: [])
                }
            }
            let copied = try tables.map { table in try db.fetchAll(sql: Self.select(table), arguments: []) }
            let reports = zip(tables, zip(rows, copied)).map { table, pair in
                CopiedTableReport(table: table.name, sourceRows: pair.0.count, targetRows: pair.1.count,
                                  sourceChecksum: Self.checksum(pair.0), targetChecksum: Self.checksum(pair.1))
            }
            guard reports.allSatisfy(\.matches) else { throw StoreCopyError.mismatch(reports) }
            return reports
        }
    }

    static func select(_ table: CopiedTable) -> String {
        "SELECT * FROM \(table.name) ORDER BY \(table.orderBy.joined(separator: ", "))"
    }

    /// Boolean columns of the target (PostgreSQL), whose SQLite values are the integers 0/1.
    static func booleanColumns(_ tables: [CopiedTable], in target: any StorageEngine) async throws -> [String: Set<String>] {
        guard target.kind == .postgres else { return [:] }
        let rows = try await target.read { db in
            try db.fetchAll(sql: "SELECT table_name, column_name FROM information_schema.columns WHERE data_type = 'boolean' AND table_schema = current_schema()",
                            arguments: [])
        }
        var result: [String: Set<String>] = [:]
        for row in rows {
            result[row["table_name"] as String, default: []].insert(row["column_name"])
        }
        return result
    }

    /// Rows in order, each column as `name=type:value`, normalised across engines.
    static func checksum(_ rows: [SQLRow]) -> String {
        var hash = SHA256()
        for row in rows {
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
        return hash.finalize().map { String(format: "%02x", $0) }.joined()
    }
}
