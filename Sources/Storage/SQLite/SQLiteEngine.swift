import Foundation
import GRDB
import GRDBSQLite
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
            // The searches' folding, as PostgreSQL's migration defines it (TextFolding).
            db.add(function: DatabaseFunction("fold_text", argumentCount: 1, pure: true) { values in
                String.fromDatabaseValue(values[0]).map(TextFolding.fold)
            })
        }
        self.path = path
        self.readOnly = readOnly
        do {
            // A new file's switch to WAL mode fails at once with "database is locked" (SQLite
            // calls no busy handler there) when another process opens it at the same moment.
            self.pool = try readOnly ? DatabasePool(path: path, configuration: configuration)
                : StartupLock.holding(forFileAt: path) { try DatabasePool(path: path, configuration: configuration) }
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

    /// One writer at a time commits in the order it draws `seq`: every snapshot is already
    /// between writes.
    public func readBetweenWrites<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await read(block)
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
        try await Self.mapping {
            try await writeGate.withPermit {
                try await pool.write { db in
                    // A statement that failed fails the transaction, even if the block caught
                    // its error and went on (as on PostgreSQL, where the server refuses what
                    // follows): GRDB would commit the other statements.
                    let state = SQLiteTransaction.WriteState()
                    let value = try block(SQLiteTransaction(db, state: state))
                    if let error = state.firstFailure { throw error }
                    return value
                }
            }
        }
    }

    /// One read-only connection per event loop, used on the loop's thread: a point query in
    /// a memory-mapped file costs microseconds, less than any hop. Its implicit transaction
    /// is already a consistent snapshot.
    ///
    /// The loop never waits for SQLite: its connection has no busy timeout, and a file that is
    /// momentarily locked (a WAL index being rebuilt, a checkpoint's brief exclusive moment)
    /// sends the read to the pool, whose connections may wait on their own threads. Waiting
    /// on the loop would stall every connection it serves.
    public func loopRead(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) -> EventLoopFuture<[SQLRow]> {
        // The reader has no mutex of its own: only its loop's thread may use it.
        eventLoop.preconditionInEventLoop()
        do {
            let reader = try loopReaders.connection(for: eventLoop, path: path)
            return eventLoop.makeSucceededFuture(try reader.fetchAll(sql: sql, arguments: arguments))
        } catch is LoopReader.WouldWait {
            return eventLoop.makeFutureWithTask {
                try await self.read { transaction in try transaction.fetchAll(sql: sql, arguments: arguments) }
            }
        } catch {
            return eventLoop.makeFailedFuture(Self.storageError(error))
        }
    }

    /// nil when the file is momentarily locked: the caller then takes ``loopRead(sql:arguments:on:)``,
    /// which goes to the pool.
    public func loopReadNow(sql: String, arguments: [SQLValue], on eventLoop: any EventLoop) throws -> [SQLRow]? {
        eventLoop.preconditionInEventLoop()
        do {
            return try loopReaders.connection(for: eventLoop, path: path).fetchAll(sql: sql, arguments: arguments)
        } catch is LoopReader.WouldWait {
            return nil
        } catch {
            throw Self.storageError(error)
        }
    }

    /// Read from the loop's own connection's view of the `-shm` file: a few loads from memory
    /// SQLite already maps, no file lock, no system call (``LoopReader/commitStamp()``).
    public func loopCommitStamp(on eventLoop: any EventLoop) -> CommitStamp? {
        eventLoop.preconditionInEventLoop()
        return try? loopReaders.connection(for: eventLoop, path: path).commitStamp()
    }

    public func migrate(_ schema: Schema) async throws {
        var migrator = DatabaseMigrator()
        for migration in schema.sqlite {
            migrator.registerMigration(migration.name) { db in try db.execute(sql: migration.sql) }
        }
        try await Self.mapping { try await writeGate.withPermit { try StartupLock.holding(forFileAt: path) { try migrator.migrate(pool) } } }
    }

    public func appliedMigrations() async throws -> [String] {
        try await read { db in
            try String.fetchAll(db, sql: "SELECT identifier FROM grdb_migrations ORDER BY rowid")
        }
    }

    public func compact() async throws {
        try await Self.mapping { try await writeGate.withPermit { try await pool.writeWithoutTransaction { db in try db.execute(sql: "VACUUM") } } }
    }

    /// On the writer connection, behind the write gate: no write of this process is in the
    /// middle of the log while it is copied. The checkpoint takes the write lock, then waits
    /// for the readers of older snapshots, and every writer waits while it does (SQLite's
    /// rule for a truncating checkpoint): it waits ``scrubWaitMilliseconds`` at most, not the
    /// connection's 10 s, then SQLite answers busy (`1` in the first column) with the log
    /// partly copied, intact, and the writes go on.
    public func scrubLog() async throws -> LogScrub {
        let wait = Self.scrubWaitMilliseconds
        return try await Self.mapping {
            try await writeGate.withPermit {
                try await pool.writeWithoutTransaction { db in
                    let usual = try Int.fetchOne(db, sql: "PRAGMA busy_timeout") ?? 10_000
                    try db.execute(sql: "PRAGMA busy_timeout = \(wait)")
                    defer { try? db.execute(sql: "PRAGMA busy_timeout = \(usual)") }
                    let row = try Row.fetchOne(db, sql: "PRAGMA wal_checkpoint(TRUNCATE)")
                    return (row?[0] as Int?) == 0 ? .truncated : .heldBack
                }
            }
        }
    }

    /// How long a scrub waits for readers of older snapshots, holding every writer back
    /// meanwhile: an erasure beside a backup must not stall the SAS's writes for long.
    static let scrubWaitMilliseconds = 1_000

    /// GRDB's `close()` blocks until every connection is idle: it runs on a thread of its own,
    /// never on one of the few threads of Swift's cooperative pool (which the last accesses
    /// may need to finish).
    public func close() async {
        let pool = self.pool, loopReaders = self.loopReaders
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                loopReaders.closeAll()
                // GRDB closes the writer before the readers, and the last connection to close
                // (then a read-only reader) cannot checkpoint: every commit since the last
                // automatic checkpoint (up to 4 MB of WAL) stayed in `-wal`, and a copy of the
                // database file alone, taken by an operator after a clean stop, missed them.
                // The readers are closed first, so the writer is the last connection of this
                // process: when no other process has the file open, SQLite's own close then
                // copies the WAL into the file and removes it. When another has (a tool run
                // beside the server), nothing is forced: that one's close does it later, and
                // no checkpoint here holds the other's writers back.
                pool.releaseMemory()
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
    /// A write transaction's bookkeeping (nil for reads: nothing is kept, nothing written).
    let state: WriteState?

    /// Only the transaction's own thread touches it.
    final class WriteState {
        /// The first error a statement of the transaction threw.
        var firstFailure: (any Error)?
        /// Rows changed by the last ``execute(sql:arguments:)``: SQLite's own count is the
        /// connection's last INSERT, UPDATE or DELETE, also one a `fetchAll` ran (`INSERT …
        /// RETURNING`) or one of an earlier transaction; PostgreSQL's engine counts
        /// `execute` only, so both say the same after any INSERT, UPDATE, DELETE or DDL.
        var changes = 0
    }

    init(_ db: Database, state: WriteState? = nil) {
        self.db = db
        self.state = state
    }

    var engine: StorageKind { .sqlite }

    private func recording<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch {
            if let state, state.firstFailure == nil { state.firstFailure = error }
            throw error
        }
    }

    func execute(sql: String, arguments: SQLArguments) throws {
        // SQLite's own count is the connection's last INSERT, UPDATE or DELETE, whenever it
        // ran: what this statement changed is read only if the total moved.
        let before = db.totalChangesCount
        try recording { try db.cachedStatement(sql: sql).execute(arguments: try Self.arguments(arguments)) }
        state?.changes = db.totalChangesCount == before ? 0 : db.changesCount
    }

    /// A read transaction changes nothing: 0.
    var changesCount: Int { state?.changes ?? 0 }

    func fetchAll(sql: String, arguments: SQLArguments) throws -> [SQLRow] {
        try recording {
            let statement = try db.cachedStatement(sql: sql)
            let columns = statement.columnNames
            return try Row.fetchAll(statement, arguments: try Self.arguments(arguments)).map { row in
                SQLRow(columns: columns, values: row.databaseValues.map(Self.value))
            }
        }
    }

    func fetchAll(sql: String, arguments: [SQLValue]) throws -> [SQLRow] {
        try fetchAll(sql: sql, arguments: arguments.map { $0 as (any SQLBindable)? })
    }

    static func arguments(_ arguments: SQLArguments) throws -> StatementArguments {
        StatementArguments(try arguments.map { argument throws -> (any DatabaseValueConvertible)? in
            switch argument?.sqlValue ?? .null {
            case .null: nil
            case .integer(let integer): integer
            case .text(let text): try SQLValue.storableText(text)
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
    private let byLoop = NIOLockedValueBox<[ObjectIdentifier: (loop: any EventLoop, reader: LoopReader)]>([:])
    /// Connections opened so far: each one's number goes into its ``CommitStamp``s.
    private let opened = Atomic<UInt64>(0)

    func connection(for loop: any EventLoop, path: String) throws -> LoopReader {
        let key = ObjectIdentifier(loop)
        if let existing = byLoop.withLockedValue({ $0[key]?.reader }) { return existing }
        let reader = try LoopReader(path: path, number: opened.add(1, ordering: .relaxed).newValue)
        return byLoop.withLockedValue { connections in
            if let raced = connections[key] { return raced.reader }
            connections[key] = (loop, reader)
            return reader
        }
    }

    /// Each connection is closed on its own loop, after whatever query that loop is running
    /// (the connections are opened without SQLite's own mutex: one thread uses each).
    func closeAll() {
        let all = byLoop.withLockedValue { connections in
            defer { connections = [:] }
            return Array(connections.values)
        }
        for (loop, reader) in all {
            if loop.inEventLoop {
                reader.close()
            } else {
                try? loop.submit { reader.close() }.wait()
            }
        }
    }
}

/// A read-only connection driven through the sqlite3 C API, used by one event loop only
/// (forward-auth's check, before every agenda request). GRDB's queue, row and argument
/// machinery around this one indexed query cost more than the query: 12 % of forward-auth's
/// CPU against 2 % for SQLite itself, measured. Statements are prepared once and kept; each
/// query resets its statement when done, so no read transaction outlives it (the writer's
/// checkpoints are never held back). Opened without SQLite's mutex (2 % of the check): only
/// its loop's thread uses it, closing included (``LoopReaders/closeAll()``).
final class LoopReader: @unchecked Sendable {
    private var db: OpaquePointer?
    private var statements: [String: (statement: OpaquePointer, columns: [String])] = [:]
    /// The statement used last: forward-auth runs one query, whose text need not be hashed
    /// each time (comparing the same string storage is immediate).
    private var last: (sql: String, statement: OpaquePointer, columns: [String])?
    /// SQLite's "copy the bound text now": the argument's storage is temporary.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    /// The file is locked for a moment (SQLITE_BUSY or SQLITE_LOCKED): the read must be made
    /// where waiting is allowed.
    struct WouldWait: Error {}

    /// This connection's number among those its engine opened (``CommitStamp/connection``).
    let number: UInt64

    init(path: String, number: UInt64) throws {
        self.number = number
        var handle: OpaquePointer?
        let opened = sqlite3_open_v2(path, &handle, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nil)
        guard opened == SQLITE_OK, let handle else {
            let message = handle.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close_v2(handle)
            throw StorageError.unavailable("SQLite read connection: \(message)")
        }
        // No busy timeout: a locked file is reported at once (``WouldWait``), never waited
        // for on the loop.
        sqlite3_busy_timeout(handle, 0)
        sqlite3_extended_result_codes(handle, 1)
        db = handle
    }

    func close() {
        for (statement, _) in statements.values { sqlite3_finalize(statement) }
        statements = [:]
        last = nil
        sqlite3_close_v2(db)
        db = nil
    }

    /// The WAL-index header (``CommitStamp``), as SQLite's own readers take it
    /// (`walIndexTryHdr`): the first copy, a memory barrier, the second copy (the writer
    /// writes them in the other order), both equal, initialised, and their checksum right. nil
    /// when not (a commit being written, the index being rebuilt), or before the connection's
    /// first read.
    ///
    /// The memory is SQLite's: region 0 of the `-shm` file as this process maps it, asked of
    /// the connection's file through the VFS's own `xShmMap` each time (it returns the mapping
    /// SQLite made at the connection's first read, under SQLite's in-process mutex for that
    /// file: no file lock, no system call), so the pointer is never kept past a call. The
    /// header is 48 bytes, stable since SQLite 3.7.0 (its version field says so: 3007000,
    /// checked).
    ///
    /// Equal headers mean "nothing committed" only while the `-shm` stays attached to this
    /// process: a wal-index rebuilt after every connection closed starts its counter again,
    /// and an empty log gives every database the same header. This connection keeps it
    /// attached from its first read to its close, and the stamp carries the connection's
    /// number, so stamps of two connections (one closed, one opened after) never compare equal.
    func commitStamp() -> CommitStamp? {
        guard let db, hasRead, inWALMode() else { return nil }
        var file: UnsafeMutablePointer<sqlite3_file>?
        guard sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &file) == SQLITE_OK, let file,
              let methods = file.pointee.pMethods, methods.pointee.iVersion >= 2, let map = methods.pointee.xShmMap else { return nil }
        var region: UnsafeMutableRawPointer?
        guard map(file, 0, Self.walIndexPageSize, 0, &region) == SQLITE_OK, let region else { return nil }
        var first = CommitStamp.Header()
        var second = CommitStamp.Header()
        withUnsafeMutableBytes(of: &first) { _ = memcpy($0.baseAddress!, region, 48) }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        withUnsafeMutableBytes(of: &second) { _ = memcpy($0.baseAddress!, region + 48, 48) }
        guard CommitStamp.Header.same(first, second), Self.isWhole(first) else { return nil }
        return CommitStamp(connection: number, header: first)
    }

    /// What `walIndexTryHdr` checks beyond the two copies being equal: the version SQLite
    /// writes (3007000), `isInit` (byte 12), and the checksum of the first 40 bytes (bytes
    /// 40–47; `walChecksumBytes` over native 32-bit words, without a starting value).
    static func isWhole(_ header: CommitStamp.Header) -> Bool {
        withUnsafeBytes(of: header) { bytes in
            guard bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self) == 3_007_000, bytes[12] == 1 else { return false }
            var s1: UInt32 = 0
            var s2: UInt32 = 0
            for offset in stride(from: 0, to: 40, by: 8) {
                s1 = s1 &+ bytes.loadUnaligned(fromByteOffset: offset, as: UInt32.self) &+ s2
                s2 = s2 &+ bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self) &+ s1
            }
            return s1 == bytes.loadUnaligned(fromByteOffset: 40, as: UInt32.self) && s2 == bytes.loadUnaligned(fromByteOffset: 44, as: UInt32.self)
        }
    }

    /// SQLite's wal-index region size (`WALINDEX_PGSZ`).
    private static let walIndexPageSize: Int32 = 32768
    /// Whether a statement has run: SQLite maps the `-shm` file at the connection's first read.
    private var hasRead = false

    /// Asked once, and kept once answered: only a WAL database has a wal-index (a
    /// rollback-journal one would get an empty `-shm` file created by the mapping). GRDB's
    /// pool always opens in WAL mode.
    private func inWALMode() -> Bool {
        if let walMode { return walMode }
        guard let rows = try? fetchAll(sql: "PRAGMA journal_mode", arguments: []) else { return false }
        let wal = rows.first?.values.first == .text("wal")
        walMode = wal
        return wal
    }
    private var walMode: Bool?

    func fetchAll(sql: String, arguments: [SQLValue]) throws -> [SQLRow] {
        guard let db else { throw StorageError.unavailable("SQLite read connection closed") }
        let (statement, columns) = try prepared(sql, db: db)
        defer {
            sqlite3_reset(statement)
            sqlite3_clear_bindings(statement)
        }
        for (offset, argument) in arguments.enumerated() {
            let index = Int32(offset + 1)
            let bound: Int32 = switch argument {
            case .null: sqlite3_bind_null(statement, index)
            case .integer(let value): sqlite3_bind_int64(statement, index, value)
            case .bool(let value): sqlite3_bind_int64(statement, index, value ? 1 : 0)
            case .text(let value): sqlite3_bind_text(statement, index, try SQLValue.storableText(value), -1, Self.transient)
            case .blob(let bytes): bytes.withUnsafeBytes { sqlite3_bind_blob(statement, index, $0.baseAddress, Int32($0.count), Self.transient) }
            }
            guard bound == SQLITE_OK else { throw failure(bound, db: db) }
        }
        var rows: [SQLRow] = []
        while true {
            let stepped = sqlite3_step(statement)
            guard stepped == SQLITE_ROW || stepped == SQLITE_DONE else { throw failure(stepped, db: db) }
            hasRead = true
            if stepped == SQLITE_DONE { return rows }
            var values: [SQLValue] = []
            values.reserveCapacity(columns.count)
            for column in 0..<Int32(columns.count) {
                switch sqlite3_column_type(statement, column) {
                case SQLITE_INTEGER: values.append(.integer(sqlite3_column_int64(statement, column)))
                case SQLITE_FLOAT: values.append(.integer(Int64(sqlite3_column_double(statement, column))))
                case SQLITE_TEXT: values.append(.text(String(cString: sqlite3_column_text(statement, column))))
                case SQLITE_BLOB:
                    let count = Int(sqlite3_column_bytes(statement, column))
                    let bytes = sqlite3_column_blob(statement, column).map { Array(UnsafeRawBufferPointer(start: $0, count: count)) } ?? []
                    values.append(.blob(bytes))
                default: values.append(.null)
                }
            }
            rows.append(SQLRow(columns: columns, values: values))
        }
    }

    private func prepared(_ sql: String, db: OpaquePointer) throws -> (statement: OpaquePointer, columns: [String]) {
        if let last, last.sql == sql { return (last.statement, last.columns) }
        if let known = statements[sql] {
            last = (sql, known.statement, known.columns)
            return known
        }
        var statement: OpaquePointer?
        let result = sqlite3_prepare_v3(db, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &statement, nil)
        guard result == SQLITE_OK, let statement else { throw failure(result, db: db) }
        let columns = (0..<sqlite3_column_count(statement)).map { String(cString: sqlite3_column_name(statement, $0)) }
        statements[sql] = (statement, columns)
        last = (sql, statement, columns)
        return (statement, columns)
    }

    /// The engine's errors, as GRDB's are mapped: a locked file is ``WouldWait`` (the pool
    /// reads instead), an unreadable one "unavailable" (503), anything else a failed statement.
    private func failure(_ code: Int32, db: OpaquePointer) -> any Error {
        let message = String(cString: sqlite3_errmsg(db))
        switch code & 0xff {
        case SQLITE_BUSY, SQLITE_LOCKED:
            return WouldWait()
        case SQLITE_CANTOPEN, SQLITE_IOERR, SQLITE_FULL, SQLITE_READONLY, SQLITE_NOTADB, SQLITE_CORRUPT:
            return StorageError.unavailable(message)
        default:
            return StorageError.statementFailed(message)
        }
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
            try StartupLock.holding(forFileAt: path) { try migrator.migrate(pool) }
        } catch {
            throw Self.storageError(error)
        }
    }
}

/// Serialises, between processes (and engines of one process), the two steps of opening a
/// SQLite file that SQLite and GRDB leave to a race: a new file's switch to WAL mode, which
/// fails at once with "database is locked" instead of waiting, and the migrations, whose list
/// GRDB reads outside any transaction, so two instances starting together on an empty file
/// both ran the first migration and one of them failed on "table account already exists".
/// PostgreSQL's equivalent is the advisory lock around its migrations.
///
/// The lock is `flock` on the file's directory (0700, ours): no extra file, and no
/// descriptor of the database file itself, whose closing would drop SQLite's POSIX locks.
/// It is only held while opening, so a serving instance never holds it.
enum StartupLock {
    /// How long a start waits for another one (a long migration) before giving up.
    static let patience: Duration = .seconds(120)

    static func holding<T>(forFileAt path: String, _ body: () throws -> T) throws -> T {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let descriptor = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        // A directory that cannot be opened for reading (or a file system without flock) is
        // opened unlocked, as before: the lock guards a start-up race, not the data.
        guard descriptor >= 0 else { return try body() }
        defer { close(descriptor) }
        let deadline = ContinuousClock.now + patience
        while flock(descriptor, LOCK_EX | LOCK_NB) != 0 {
            switch errno {
            case EINTR:
                continue
            case EWOULDBLOCK:
                guard ContinuousClock.now < deadline else {
                    throw StorageError.unavailable("another process has been opening or migrating \(path) for over \(patience): try again once it has started")
                }
                usleep(20_000)
            default:
                return try body()
            }
        }
        defer { flock(descriptor, LOCK_UN) }
        return try body()
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
            // Every directory created on the way is 0700, not only the last: a parent left
            // world-writable by the umask would let another user swap the last one.
            var missing: [String] = []
            var next = directory
            while !next.isEmpty && next != "/" && !manager.fileExists(atPath: next) {
                missing.append(next)
                next = URL(fileURLWithPath: next).deletingLastPathComponent().path
            }
            for created in missing.reversed() {
                guard mkdir(created, 0o700) == 0 else {
                    // Created meanwhile (another instance starting): not ours to narrow.
                    if errno == EEXIST { continue }
                    throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: created])
                }
                guard chmod(created, 0o700) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: created]) }
            }
        }
        // An existing file is narrowed by its path, never opened here: closing any descriptor
        // of a file drops every POSIX lock this process holds on it, SQLite's included (an
        // engine already open on it in this process would lose its WAL-mode shared lock, and
        // another process could then delete the `-wal` and `-shm` under it).
        let descriptor = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o600)
        if descriptor >= 0 {
            defer { close(descriptor) }
            guard fchmod(descriptor, 0o600) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
        } else {
            guard errno == EEXIST, chmod(path, 0o600) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
        }
        for suffix in ["-wal", "-shm", "-journal"] where manager.fileExists(atPath: path + suffix) {
            _ = chmod(path + suffix, 0o600)
        }
    }
}
