import Foundation
import GRDB
import NIOConcurrencyHelpers
import NIOCore
import Synchronization

/// The embedded engine: one SQLite file (GRDB), one process.
///
/// WAL journal with `synchronous=FULL`, so a commit is on disk before the request that made
/// it is acknowledged (an acknowledged write survives `kill -9` and power loss). SQLite runs
/// one writer at a time, so write transactions are serializable without retries.
public final class SQLiteEngine: StorageEngine {
    public var kind: StorageKind { .sqlite }
    public let path: String
    let pool: DatabasePool
    private let readOnly: Bool

    /// Reader connections of the pool; `read` admits this many at once.
    public static let readerCount = 8
    private let readGate = AsyncGate(permits: SQLiteEngine.readerCount)
    private let writeGate = AsyncGate(permits: 1)
    private let loopReaders = LoopReaders()

    /// Opens (creating if needed, unless `readOnly`) the database file at `path`.
    public init(path: String, readOnly: Bool = false) throws {
        if !readOnly {
            try DatabaseFiles.prepare(path: path)
        }
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(10)
        configuration.foreignKeysEnabled = true
        configuration.maximumReaderCount = Self.readerCount
        configuration.prepareDatabase { db in
            // FULL: the WAL is fsync'ed at every commit (NORMAL may lose the last commits
            // on power loss, which an acknowledged INT_R02 call must never do).
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // Deleted and overwritten content (scrubbed mail bodies, spent tokens' rows,
            // purged sessions) is zeroed, not left in free pages for a file copy to find.
            try db.execute(sql: "PRAGMA secure_delete = ON")
        }
        self.path = path
        self.readOnly = readOnly
        do {
            self.pool = try DatabasePool(path: path, configuration: configuration)
        } catch {
            throw Self.storageError(error)
        }
    }

    /// A read transaction (a WAL snapshot). GRDB waits for a free reader connection by
    /// *blocking* the calling thread, and a reader is only given back once its task resumes on
    /// a cooperative thread; with more concurrent reads than readers, every cooperative thread
    /// (one per core) could end up blocked and the whole process would deadlock. The gate
    /// makes excess reads suspend instead.
    public func read<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await Self.mapping { try await readGate.withPermit { try await pool.read { db in try block(SQLiteTransaction(db)) } } }
    }

    /// Run on the calling thread: the hop to GRDB's reader queue and back costs more than a
    /// short indexed query. Safe from the deadlock described in ``read(_:)``: the gate admits
    /// at most as many reads as there are reader connections, so GRDB never waits for a
    /// reader, and a reader is given back as soon as the synchronous call returns.
    public func pointRead<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await Self.mapping { try await readGate.withPermit { try Self.readOnCallingThread(pool, block) } }
    }

    private static func readOnCallingThread<T>(_ pool: DatabasePool, _ block: (any SQLTransaction) throws -> T) throws -> T {
        try pool.read { db in try block(SQLiteTransaction(db)) }
    }

    /// Writes are serialised by SQLite anyway; the gate makes waiting writers suspend rather
    /// than hold a cooperative thread.
    public func write<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await Self.mapping { try await writeGate.withPermit { try await pool.write { db in try block(SQLiteTransaction(db)) } } }
    }

    /// One read-only connection per event loop, used on the loop's thread: a point query in
    /// a memory-mapped file costs microseconds, less than any hop. Its implicit transaction
    /// is already a consistent snapshot.
    public func loopRead(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) -> EventLoopFuture<[SQLRow]> {
        do {
            let queue = try loopReaders.connection(for: eventLoop, path: path)
            let rows = try queue.unsafeRead { db in try SQLiteTransaction(db).fetchAll(sql: sql, arguments: arguments) }
            return eventLoop.makeSucceededFuture(rows)
        } catch {
            return eventLoop.makeFailedFuture(Self.storageError(error))
        }
    }

    public func migrate(_ schema: Schema) async throws {
        var migrator = DatabaseMigrator()
        for migration in schema.sqlite {
            migrator.registerMigration(migration.name) { db in try db.execute(sql: migration.sql) }
        }
        try await Self.mapping { try await writeGate.withPermit { try migrator.migrate(pool) } }
    }

    public func appliedMigrations() async throws -> [String] {
        try await read { db in
            try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY rowid")
        }
    }

    public func compact() async throws {
        try await Self.mapping { try await writeGate.withPermit { try await pool.writeWithoutTransaction { db in try db.execute(sql: "VACUUM") } } }
    }

    /// GRDB's `close()` blocks until every connection is idle: it runs on a thread of its own,
    /// never on one of the few threads of Swift's cooperative pool (which the last accesses
    /// may need to finish).
    public func close() async {
        let pool = self.pool, loopReaders = self.loopReaders
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                loopReaders.closeAll()
                try? pool.close()
                continuation.resume()
            }
        }
    }

    /// GRDB's errors as the stores' engine-neutral ones; anything else (a store's own typed
    /// error thrown from its block) passes through unchanged.
    private static func mapping<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw storageError(error)
        }
    }

    static func storageError(_ error: any Error) -> any Error {
        guard let error = error as? DatabaseError else { return error }
        switch error.resultCode {
        case .SQLITE_CONSTRAINT:
            return StorageError.constraintViolation(error.message ?? "constraint")
        case .SQLITE_BUSY, .SQLITE_LOCKED, .SQLITE_CANTOPEN, .SQLITE_IOERR, .SQLITE_FULL, .SQLITE_READONLY, .SQLITE_NOTADB, .SQLITE_CORRUPT:
            return StorageError.unavailable(error.message ?? "\(error.resultCode)")
        default:
            return error
        }
    }
}

/// A GRDB connection seen through the engine-neutral transaction. Every statement is prepared
/// once per connection and kept (`cachedStatement`): the stores' SQL is a fixed set of texts.
struct SQLiteTransaction: SQLTransaction {
    let db: Database

    init(_ db: Database) {
        self.db = db
    }

    var engine: StorageKind { .sqlite }

    func execute(sql: String, arguments: SQLArguments) throws {
        try db.cachedStatement(sql: sql).execute(arguments: Self.arguments(arguments))
    }

    var changesCount: Int { db.changesCount }

    func fetchAll(sql: String, arguments: SQLArguments) throws -> [SQLRow] {
        let statement = try db.cachedStatement(sql: sql)
        let columns = statement.columnNames
        return try Row.fetchAll(statement, arguments: Self.arguments(arguments)).map { row in
            SQLRow(columns: columns, values: row.databaseValues.map(Self.value))
        }
    }

    func fetchAll(sql: String, arguments: [SQLValue]) throws -> [SQLRow] {
        try fetchAll(sql: sql, arguments: arguments.map { $0 as (any SQLBindable)? })
    }

    static func arguments(_ arguments: SQLArguments) -> StatementArguments {
        StatementArguments(arguments.map { argument -> (any DatabaseValueConvertible)? in
            switch argument?.sqlValue ?? .null {
            case .null: nil
            case .integer(let integer): integer
            case .text(let text): text
            case .blob(let bytes): Data(bytes)
            case .bool(let bool): bool
            }
        })
    }

    static func value(_ value: DatabaseValue) -> SQLValue {
        switch value.storage {
        case .null: .null
        case .int64(let integer): .integer(integer)
        case .double(let double): .integer(Int64(double))
        case .string(let text): .text(text)
        case .blob(let data): .blob(Array(data))
        }
    }
}

/// One read-only SQLite connection per event loop, opened on first use.
final class LoopReaders: Sendable {
    private let byLoop = NIOLockedValueBox<[ObjectIdentifier: DatabaseQueue]>([:])

    func connection(for loop: any EventLoop, path: String) throws -> DatabaseQueue {
        let key = ObjectIdentifier(loop)
        if let existing = byLoop.withLockedValue({ $0[key] }) { return existing }
        var configuration = Configuration()
        configuration.readonly = true
        configuration.busyMode = .timeout(1)
        configuration.label = "loop-reader"
        let queue = try DatabaseQueue(path: path, configuration: configuration)
        return byLoop.withLockedValue { connections in
            if let raced = connections[key] { return raced }
            connections[key] = queue
            return queue
        }
    }

    func closeAll() {
        let all = byLoop.withLockedValue { connections in
            defer { connections = [:] }
            return Array(connections.values)
        }
        for queue in all { try? queue.close() }
    }
}

extension SQLiteEngine {
    /// ``migrate(_:)`` on the calling thread, for tools and tests that open a file
    /// synchronously.
    public func migrateNow(_ schema: Schema) throws {
        var migrator = DatabaseMigrator()
        for migration in schema.sqlite {
            migrator.registerMigration(migration.name) { db in try db.execute(sql: migration.sql) }
        }
        do {
            try migrator.migrate(pool)
        } catch {
            throw Self.storageError(error)
        }
    }
}

/// Creation and permissions of the SQLite file.
enum DatabaseFiles {
    /// The database holds password hashes, sealed secrets and the audit trail: its directory
    /// is created 0700 and the file 0600 whatever the umask, and an existing file (or its
    /// `-wal`/`-shm`) left wider by an earlier version is narrowed. SQLite creates `-wal` and
    /// `-shm` with the main file's mode, so they follow.
    static func prepare(path: String) throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let manager = FileManager.default
        if !manager.fileExists(atPath: directory) {
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
            guard chmod(directory, 0o700) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: directory]) }
        }
        let descriptor = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
        defer { close(descriptor) }
        guard fchmod(descriptor, 0o600) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
        for suffix in ["-wal", "-shm", "-journal"] where manager.fileExists(atPath: path + suffix) {
            _ = chmod(path + suffix, 0o600)
        }
    }
}
