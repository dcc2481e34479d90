import Foundation
import NIOCore

/// The engines a store runs on.
public enum StorageKind: String, Sendable {
    /// One file, one process: the embedded default.
    case sqlite
    /// A PostgreSQL server, shared by several instances.
    case postgres
}

/// Where the data lives, from `--database`: a file path (SQLite) or a `postgres://` URL.
public enum StorageLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(PostgresLocation)

    /// A `postgres://` or `postgresql://` URL (any case) is PostgreSQL; any other `scheme://`,
    /// and `postgres:` or `postgresql:` without `//`, is refused (a mistyped URL must not become
    /// a file named after it, password included); anything else is a file path.
    public init(_ argument: String, environment: [String: String] = ProcessInfo.processInfo.environment) throws(StorageError) {
        let lowered = argument.lowercased()
        if lowered.hasPrefix("postgres://") || lowered.hasPrefix("postgresql://") {
            let scheme = argument.prefix { $0 != ":" }
            self = .postgres(try PostgresLocation(url: scheme.lowercased() + argument.dropFirst(scheme.count), environment: environment))
        } else if ["postgres:", "postgresql:", "postgres//", "postgresql//"].contains(where: { lowered.hasPrefix($0) }) {
            // `postgres:/user:password@host/db`, `postgresql:user:…`: a URL missing a slash,
            // which as a path would become folders named after it, password included, and an
            // empty SQLite store beside the instances sharing PostgreSQL (the argument is not
            // repeated: it may hold the password).
            throw StorageError.configuration("--database starts like a PostgreSQL URL but is not a postgres:// one; write postgres://user@host:port/database")
        } else if let range = argument.range(of: "://"), !argument[..<range.lowerBound].contains("/") {
            throw StorageError.configuration("--database: \(argument[..<range.lowerBound])://… is not a database this server speaks (postgres:// or a file path)")
        } else {
            self = .sqlite(path: argument)
        }
    }

    /// Safe to log: a URL's password is never part of it.
    public var description: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let location): location.description
        }
    }
}

/// A failure the stores report the same way on both engines.
public enum StorageError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A unique index, a check, a foreign key or an append-only rule refused the change;
    /// nothing of the transaction was kept.
    case constraintViolation(String)
    /// The database cannot be reached or answer now (server down, restarting, file locked
    /// for too long); nothing of the transaction was kept. Callers answer 503.
    case unavailable(String)
    /// Concurrent transactions kept conflicting after every retry; nothing was kept.
    case conflict(String)
    /// The connection was lost after COMMIT was sent and before the server answered it: the
    /// transaction may or may not be stored (PostgreSQL only; SQLite commits in process).
    /// Callers answer 503 and say so, never "nothing was changed".
    case outcomeUnknown(String)
    /// The configuration (URL, TLS files) is wrong.
    case configuration(String)
    /// The database refused a statement for another reason (a fault of the store's SQL).
    case statementFailed(String)

    public var description: String {
        switch self {
        case .constraintViolation(let message): "constraint violation: \(message)"
        case .unavailable(let message): "database unavailable: \(message)"
        case .conflict(let message): "conflicting transactions: \(message)"
        case .outcomeUnknown(let message): "outcome unknown: \(message)"
        case .configuration(let message): "database configuration: \(message)"
        case .statementFailed(let message): "statement failed: \(message)"
        }
    }
}

extension StorageError {
    /// A failure the same call may overcome a moment later (the database restarting or
    /// failing over, transactions that kept colliding): answered 503 with `Retry-After`.
    public var isTransient: Bool {
        switch self {
        case .unavailable, .conflict, .outcomeUnknown: true
        case .constraintViolation, .configuration, .statementFailed: false
        }
    }
}

/// One named schema change. A released migration is never edited: add a new one.
public struct Migration: Sendable {
    public let name: String
    public let sql: String

    public init(_ name: String, _ sql: String) {
        self.name = name
        self.sql = sql
    }
}

/// A schema's history on each engine. The histories differ (PostgreSQL support started from
/// the shape SQLite reached in six steps) but end in the same tables, columns and rules.
public struct Schema: Sendable {
    public let sqlite: [Migration]
    public let postgres: [Migration]

    public init(sqlite: [Migration], postgres: [Migration]) {
        self.sqlite = sqlite
        self.postgres = postgres
    }
}

/// What ``StorageEngine/scrubLog()`` did.
public enum LogScrub: String, Sendable, Equatable {
    /// The log holds no older copy of any page: it was copied into the file and truncated.
    case truncated
    /// Another connection held the log past the wait (a reader of an older snapshot: a
    /// backup, a long export; a writer; another checkpoint): older copies stay in it until
    /// SQLite writes over them or truncates it later.
    case heldBack = "held-back"
    /// The scrub itself failed (an I/O error, a full disk, the engine closing): older copies
    /// stay as for ``heldBack``. What was deleted before it stays deleted.
    case failed
    /// The engine keeps no such log of its own (PostgreSQL: the server's WAL).
    case notApplicable = "not-applicable"
}

/// A database engine behind the stores: transactions, migrations, maintenance. Stores are
/// the only callers; surfaces, middleware and listeners receive stores.
public protocol StorageEngine: Sendable {
    var kind: StorageKind { get }
    /// A consistent read (a snapshot): every statement of the block sees the same state.
    func read<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T
    /// A consistent read taken between writes: it waits for the write transactions in flight
    /// to end and holds new ones back while it runs, so every write is in it or not begun.
    /// For the horizon of a read that pages by an order writers draw before they commit (the
    /// audit trail's `seq`): on PostgreSQL, concurrent writers draw `seq` in one order and
    /// commit in another, and a page read in between could skip, for good, a row committed
    /// later with a lower `seq`. Holds every write back while it runs: one short indexed
    /// statement (the largest `seq`), then the page itself with ``read(_:)`` up to it. Gives
    /// up as unavailable after waiting 2 s for the writes in flight.
    func readBetweenWrites<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T
    /// A short indexed read on the per-request hot path; the engine runs it as cheaply as it can.
    func pointRead<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T
    /// A write transaction, all or nothing. The block may run more than once (PostgreSQL
    /// retries serialization failures), so it must not have effects outside the database.
    func write<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T
    /// One query answered on `eventLoop` without leaving it when the engine can (SQLite: one
    /// read connection per event loop) — the forward-auth listener's path.
    func loopRead(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) -> EventLoopFuture<[SQLRow]>
    /// ``loopRead(sql:arguments:on:)`` answered before returning, when the engine answers on
    /// the loop itself (SQLite); nil when the answer comes later (PostgreSQL). Saves the
    /// futures of a read that is already done.
    func loopReadNow(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) throws -> [SQLRow]?
    /// The database's ``CommitStamp`` now, read on `eventLoop` without a transaction, when the
    /// engine has one (SQLite in WAL mode); nil otherwise (PostgreSQL), or when it cannot be
    /// read at this moment (a WAL index being rebuilt).
    func loopCommitStamp(on eventLoop: any EventLoop) -> CommitStamp?
    /// Applies the pending migrations; safe when several instances start at once.
    func migrate(_ schema: Schema) async throws
    /// The engine's connections now, when it holds a pool of them (PostgreSQL); nil
    /// otherwise (SQLite). For the metrics.
    var connectionCounts: DatabaseConnectionCounts? { get }
    /// Names of the applied migrations, in order.
    func appliedMigrations() async throws -> [String]
    /// Gives free space back (SQLite `VACUUM`; PostgreSQL leaves it to autovacuum).
    func compact() async throws
    /// After a delete that must leave no trace in the database's files (an erasure): removes
    /// the engine's own older copies of the deleted rows where it can. SQLite zeroes a
    /// deleted row in its page (`secure_delete`), but the page as it was before stays in the
    /// `-wal` file, even after a checkpoint and later writes, until SQLite happens to write
    /// over it; a copy of the folder's files (a file-level backup) found it. (Truncating a
    /// file does not overwrite the disk's blocks: an image of the disk is the disk
    /// encryption's business, as for everything the server ever deleted.)
    /// SQLite copies the log into the file and truncates it to nothing
    /// (`wal_checkpoint(TRUNCATE)`), waiting a second at most for other connections.
    /// PostgreSQL's WAL and dead row versions are the server's and its autovacuum's
    /// (`docs/personal-data.md`).
    func scrubLog() async throws -> LogScrub
    /// Closes every connection; further calls fail.
    func close() async
}

extension Migration {
    /// The migration's statements, split at the `;` that end them (not those inside quotes,
    /// dollar-quoted bodies or `--` comments): PostgreSQL's extended protocol, the one that
    /// binds parameters, runs one statement at a time.
    public var statements: [String] {
        var statements: [String] = []
        var current = ""
        var quote: Character?
        var dollarTag: String?
        var comment = false
        let characters = Array(sql)
        var index = 0
        while index < characters.count {
            let character = characters[index]
            if comment {
                if character == "\n" { comment = false }
            } else if let tag = dollarTag {
                if character == "$", String(characters[index...].prefix(tag.count)) == tag {
                    current += tag
                    index += tag.count
                    dollarTag = nil
                    continue
                }
            } else if let open = quote {
                if character == open { quote = nil }
            } else if character == "'" || character == "\"" {
                quote = character
            } else if character == "-", index + 1 < characters.count, characters[index + 1] == "-" {
                comment = true
            } else if character == "$", let end = characters[(index + 1)...].firstIndex(of: "$"),
                      characters[(index + 1)..<end].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) {
                let tag = String(characters[index...end])
                current += tag
                index = end + 1
                dollarTag = tag
                continue
            } else if character == ";" {
                let statement = current.trimmingCharacters(in: .whitespacesAndNewlines)
                if !statement.isEmpty { statements.append(statement) }
                current = ""
                index += 1
                continue
            }
            current.append(character)
            index += 1
        }
        let last = current.trimmingCharacters(in: .whitespacesAndNewlines)
        if !last.isEmpty, !last.split(separator: "\n").allSatisfy({ $0.trimmingCharacters(in: .whitespaces).hasPrefix("--") }) {
            statements.append(last)
        }
        return statements
    }
}

/// A connection pool's state at one moment (``StorageEngine/connectionCounts``).
public struct DatabaseConnectionCounts: Sendable, Equatable {
    /// Open and unused.
    public var idle: Int
    /// In use by a transaction or a statement.
    public var lent: Int
    /// Being opened.
    public var opening: Int
    /// Told to close, not closed yet.
    public var closing: Int
    /// Requests waiting for a connection.
    public var waiting: Int
    /// Attempts to open a connection so far (successful or not).
    public var attempts: Int

    public init(idle: Int, lent: Int, opening: Int, closing: Int, waiting: Int, attempts: Int) {
        (self.idle, self.lent, self.opening, self.closing, self.waiting, self.attempts) = (idle, lent, opening, closing, waiting, attempts)
    }
}

extension StorageEngine {
    public var connectionCounts: DatabaseConnectionCounts? { nil }

    public func loopReadNow(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) throws -> [SQLRow]? { nil }

    public func loopCommitStamp(on eventLoop: any EventLoop) -> CommitStamp? { nil }

    /// ``loopReadNow(sql:arguments:on:)`` for a declared statement.
    public func loopReadNow<S: PreparedSQL>(_ statement: S.Type, arguments: [SQLValue], on eventLoop: any EventLoop) throws -> [SQLRow]? {
        try loopReadNow(sql: S.sql, arguments: arguments, on: eventLoop)
    }

    /// ``loopRead(sql:arguments:on:)`` for a declared statement, which PostgreSQL prepares
    /// once per connection.
    public func loopRead<S: PreparedSQL>(_ statement: S.Type, arguments: [SQLValue], on eventLoop: any EventLoop) -> EventLoopFuture<[SQLRow]> {
        if let postgres = self as? PostgresEngine {
            return postgres.loopReadPrepared(statement, arguments: arguments, on: eventLoop)
        }
        return loopRead(sql: S.sql, arguments: arguments, on: eventLoop)
    }
}
