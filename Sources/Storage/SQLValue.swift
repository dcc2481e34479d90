import Foundation

/// A value crossing the storage boundary, the same on every engine.
///
/// The stores keep to five kinds so that one SQL text and one decoding serve SQLite and
/// PostgreSQL: timestamps are INTEGER milliseconds since the Unix epoch on both, booleans are
/// SQLite INTEGER 0/1 and PostgreSQL `boolean`, byte strings are BLOB / `bytea`.
public enum SQLValue: Sendable, Hashable {
    case null
    case integer(Int64)
    case text(String)
    case blob([UInt8])
    case bool(Bool)
}

extension SQLValue {
    /// `text`, or a refusal when it holds U+0000. Both engines refuse it the same way, before
    /// anything is sent: SQLite's C API would end the text there and store or compare what
    /// comes before it (a NUL-cut e-mail signing in as another, a suspension reason stored
    /// shorter than its audit event says), and PostgreSQL refuses such a text outright.
    /// Surfaces refuse it first as bad input; this is the engines' own guarantee.
    @inlinable public static func storableText(_ text: String) throws(StorageError) -> String {
        if text.utf8.contains(0) { throw StorageError.statementFailed("a text argument holds U+0000 (NUL), which no engine stores") }
        return text
    }
}

/// A Swift value that can be bound to a statement parameter.
public protocol SQLBindable: Sendable {
    var sqlValue: SQLValue { get }
}

/// A Swift value that can be read from a result column.
public protocol SQLDecodable {
    /// The value, or nil when the column's value is not of this type.
    static func decode(_ value: SQLValue) -> Self?
}

/// The parameters of a statement, bound in order to its `?` placeholders.
public typealias SQLArguments = [(any SQLBindable)?]

extension String: SQLBindable, SQLDecodable {
    public var sqlValue: SQLValue { .text(self) }
    @inlinable public static func decode(_ value: SQLValue) -> String? {
        if case .text(let text) = value { return text }
        return nil
    }
}

extension Int64: SQLBindable, SQLDecodable {
    public var sqlValue: SQLValue { .integer(self) }
    @inlinable public static func decode(_ value: SQLValue) -> Int64? {
        switch value {
        case .integer(let integer): integer
        case .bool(let bool): bool ? 1 : 0
        default: nil
        }
    }
}

extension Int: SQLBindable, SQLDecodable {
    public var sqlValue: SQLValue { .integer(Int64(self)) }
    @inlinable public static func decode(_ value: SQLValue) -> Int? { Int64.decode(value).map { Int($0) } }
}

extension Bool: SQLBindable, SQLDecodable {
    public var sqlValue: SQLValue { .bool(self) }
    /// SQLite has no boolean type: its booleans (columns, `EXISTS`) are the integers 0 and 1.
    @inlinable public static func decode(_ value: SQLValue) -> Bool? {
        switch value {
        case .bool(let bool): bool
        case .integer(let integer): integer != 0
        default: nil
        }
    }
}

extension Array: SQLBindable where Element == UInt8 {
    public var sqlValue: SQLValue { .blob(self) }
}

extension Array: SQLDecodable where Element == UInt8 {
    @inlinable public static func decode(_ value: SQLValue) -> [UInt8]? {
        if case .blob(let bytes) = value { return bytes }
        return nil
    }
}

extension Data: SQLBindable, SQLDecodable {
    public var sqlValue: SQLValue { .blob(Array(self)) }
    @inlinable public static func decode(_ value: SQLValue) -> Data? { [UInt8].decode(value).map { Data($0) } }
}

extension Optional: SQLBindable where Wrapped: SQLBindable {
    public var sqlValue: SQLValue { self?.sqlValue ?? .null }
}

extension Optional: SQLDecodable where Wrapped: SQLDecodable {
    /// NULL reads as `.some(nil)`: the column was read, and it was empty.
    @inlinable public static func decode(_ value: SQLValue) -> Wrapped?? {
        if case .null = value { return .some(nil) }
        return Wrapped.decode(value).map { .some($0) }
    }
}

extension RawRepresentable where RawValue == String {
    public var sqlValue: SQLValue { .text(rawValue) }
}

extension SQLValue: SQLBindable {
    public var sqlValue: SQLValue { self }
}

/// One result row: column names and values, in the statement's order.
public struct SQLRow: Sendable, Equatable {
    public let columns: [String]
    public let values: [SQLValue]

    public init(columns: [String], values: [SQLValue]) {
        precondition(columns.count == values.count)
        self.columns = columns
        self.values = values
    }

    /// The value of the named column (`.null` when the statement has no such column).
    @inlinable public func value(_ column: String) -> SQLValue {
        for index in columns.indices where columns[index] == column { return values[index] }
        return .null
    }

    /// The named column decoded as `T`. A column the statement does not select, or a value
    /// of another type, is a programming error in the store that wrote both the SQL and the
    /// decoding: it stops the process, as GRDB's row subscript does.
    // Inlinable: specialized where rows are decoded (forward-auth's, before every agenda
    // request, spent 2 % of its CPU looking generic metadata up).
    @inlinable public subscript<T: SQLDecodable>(_ column: String) -> T {
        guard let index = columns.firstIndex(of: column) else { preconditionFailure("no column \(column) in the row") }
        guard let value = T.decode(values[index]) else { preconditionFailure("column \(column) is not a \(T.self)") }
        return value
    }

    /// The named column decoded as `T`, nil when it is NULL or absent.
    @inlinable public subscript<T: SQLDecodable>(optional column: String) -> T? {
        T.decode(value(column))
    }
}
