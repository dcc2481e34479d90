import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
@testable import Storage
import StorageTesting
import Testing

/// `backup` and `migrate-store` go a page at a time (bounded memory, whatever the size of the
/// audit trail), and their checksums are the ones of the whole table in key order: pages of
/// a few rows over a composite key, text keys whose bytewise order differs from a natural
/// language's, and (PostgreSQL) a target whose database collation is such a language's.
@Suite("Copies a page at a time")
struct StoreCopyTests {
    /// A composite key (text, integer) with keys that en-US orders differently from bytes:
    /// "B" < "a" bytewise, "a" < "B" in English; "é" after every ASCII letter bytewise.
    static let table = CopiedTable("probe", orderBy: ["name", "n"])
    static let sqliteSchema = Schema(sqlite: [Migration("probe", """
        CREATE TABLE probe (name TEXT NOT NULL, n INTEGER NOT NULL, flag INTEGER NOT NULL, note TEXT, PRIMARY KEY (name, n))
        """)], postgres: [])
    static let names = ["B", "a", "Z", "b", "é", "A-b", "Ab", "a b", "0"]

    static func source(in directory: URL) async throws -> SQLiteEngine {
        let engine = try SQLiteEngine(path: directory.appendingPathComponent("source.sqlite").path)
        try await engine.migrate(sqliteSchema)
        try await engine.write { db in
            for (index, name) in names.enumerated() {
                for n in 0..<3 {
                    try db.execute(sql: "INSERT INTO probe (name, n, flag, note) VALUES (?, ?, ?, ?)",
                                   arguments: [name, n, (index + n) % 2, n == 1 ? nil : "note \(name) \(n)"])
                }
            }
        }
        return engine
    }

    /// A new PostgreSQL database (`options`: its collation, say) with the probe table, and
    /// any table `alsoCreating` makes, as the administrator.
    static func postgresTarget(options: String = "", alsoCreating: String? = nil) async throws -> (PostgresLocation, PostgresEngine) {
        let admin = try TestStore.administrator()
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await TestStore.execute("CREATE DATABASE \(name)\(options)", on: admin)
        let location = admin.with(database: name)
        let engine = try PostgresEngine(location: location, poolSize: 2, logger: Logger(label: "test"))
        let probe = "CREATE TABLE probe (name TEXT NOT NULL, n BIGINT NOT NULL, flag BOOLEAN NOT NULL, note TEXT, PRIMARY KEY (name, n))"
        try await engine.migrate(Schema(sqlite: [], postgres: [Migration("probe", [probe, alsoCreating].compactMap { $0 }.joined(separator: ";\n"))]))
        return (location, engine)
    }

    static func directory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("copy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    /// The paged digest equals the checksum of the whole table read at once, for every page
    /// size, including sizes that end a page exactly at the last row.
    @Test func aPagedDigestIsTheWholeTablesChecksum() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let engine = try await Self.source(in: directory)
        let (whole, digests) = try await engine.read { db in
            let rows = try db.fetchAll(sql: "SELECT * FROM probe ORDER BY name, n", arguments: [])
            var pages: [Int: [[SQLRow]]] = [:]
            let digests = try [1, 2, 3, 4, 9, 27, 28, 1_000].map { size in
                try StoreCopy.digest(Self.table, pageSize: size, in: db) { page in pages[size, default: []].append(page) }
            }
            #expect(pages[4]?.count == 7 && pages[27]?.count == 2 && pages[1_000]?.count == 1, "\(pages.mapValues(\.count))")
            return (StoreCopy.Digest(rows: rows.count, checksum: StoreCopy.checksum(rows)), digests)
        }
        #expect(whole.rows == Self.names.count * 3)
        for digest in digests { #expect(digest == whole) }
        await engine.close()
    }

    /// A backup verified a few rows at a time matches, row for row.
    @Test func aBackupIsVerifiedAPageAtATime() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let engine = try await Self.source(in: directory)
        let copy = directory.appendingPathComponent("copy.sqlite").path
        let reports = try SQLiteBackup.copy(from: engine.path, to: copy, tables: [Self.table], pageSize: 4)
        #expect(reports.count == 1 && reports[0].matches && reports[0].targetRows == Self.names.count * 3)
        let expected = try await engine.read { db in StoreCopy.checksum(try db.fetchAll(sql: "SELECT * FROM probe ORDER BY name, n", arguments: [])) }
        #expect(reports[0].targetChecksum == expected)
        await engine.close()
    }

    /// A key that does not identify its rows would let pages skip some, and the copy and its
    /// check skip the same ones: refused instead.
    @Test func aKeyThatIsNotUniqueIsRefused() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let engine = try await Self.source(in: directory)
        // Every page size: one inside a group of equal keys, one ending exactly at each group's end.
        for size in [1, 2, 3, 1_000] {
            await #expect(throws: StoreCopyError.keyNotUnique(table: "probe")) {
                try await engine.read { db in try StoreCopy.digest(CopiedTable("probe", orderBy: ["name"]), pageSize: size, in: db) }
            }
        }
        await engine.close()
    }

    /// SQLite to PostgreSQL, two rows a page, into a database whose own collation is ICU's
    /// English (where "a" comes before "B"): every row arrives, booleans as booleans, and the
    /// checksums agree because both sides are read in byte order.
    @Test(.enabled(if: TestStore.kind == .postgres))
    func aCopyToPostgreSQLInAnotherCollationMatches() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = try await Self.source(in: directory)
        let (_, target) = try await Self.postgresTarget(options: " TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'")
        // The database's own order is not the bytes' order: what the copy must not depend on.
        let natural = try await target.read { db in
            try String.fetchAll(db, sql: "SELECT x FROM (VALUES ('B'), ('a')) AS v(x) ORDER BY x")
        }
        #expect(natural == ["a", "B"])

        let reports = try await StoreCopy(tables: [Self.table], pageSize: 2).copy(fromSQLiteFile: source.path, to: target)
        #expect(reports.count == 1 && reports[0].matches && reports[0].targetRows == Self.names.count * 3, "\(reports)")
        let flags = try await target.read { db in try db.fetchAll(sql: "SELECT flag FROM probe WHERE name = 'B' ORDER BY n", arguments: []) }
        #expect(flags.map { $0.values.first } == [.bool(false), .bool(true), .bool(false)])
        // Not empty any more: a second copy is refused, and changes nothing.
        await #expect(throws: StoreCopyError.self) { try await StoreCopy(tables: [Self.table], pageSize: 2).copy(fromSQLiteFile: source.path, to: target) }
        #expect(try await target.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM probe") } == Self.names.count * 3)
        await target.close()
        await source.close()
    }

    /// The target's identity sequences continue after the last id the source issued, not
    /// after the largest still stored: ids of deleted rows (purged outbox mails) are not
    /// issued again, and a table emptied by deletions keeps its count too. Before, the
    /// sequence restarted at MAX(id), or at 1 for an emptied table.
    @Test(.enabled(if: TestStore.kind == .postgres))
    func identitiesContinueAfterTheLastTheSourceIssued() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = try SQLiteEngine(path: directory.appendingPathComponent("ids.sqlite").path)
        try await source.migrate(Schema(sqlite: [Migration("ids", """
            CREATE TABLE kept (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT);
            CREATE TABLE emptied (id INTEGER PRIMARY KEY AUTOINCREMENT, note TEXT)
            """)], postgres: []))
        try await source.write { db in
            for n in 1...5 {
                try db.execute(sql: "INSERT INTO kept (note) VALUES (?)", arguments: ["k\(n)"])
                try db.execute(sql: "INSERT INTO emptied (note) VALUES (?)", arguments: ["e\(n)"])
            }
            try db.execute(sql: "DELETE FROM kept WHERE id > 3")
            try db.execute(sql: "DELETE FROM emptied")
        }
        let (_, target) = try await Self.postgresTarget(alsoCreating: """
            CREATE TABLE kept (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note TEXT);
            CREATE TABLE emptied (id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note TEXT)
            """)
        let tables = [CopiedTable("kept", orderBy: ["id"], identity: "id"), CopiedTable("emptied", orderBy: ["id"], identity: "id")]
        let reports = try await StoreCopy(tables: tables).copy(fromSQLiteFile: source.path, to: target)
        #expect(reports.allSatisfy(\.matches) && reports.map(\.targetRows) == [3, 0], "\(reports)")
        let next = try await target.write { db in
            [try Int64.fetchOne(db, sql: "INSERT INTO kept (note) VALUES ('new') RETURNING id"),
             try Int64.fetchOne(db, sql: "INSERT INTO emptied (note) VALUES ('new') RETURNING id")]
        }
        #expect(next == [6, 6], "SQLite would have issued 6 in both: \(next)")
        await target.close()
        await source.close()
    }

    /// The copy's transaction is serializable, and PostgreSQL may refuse its commit (another
    /// client read and wrote a table it copies, meanwhile): the engine runs it again, and the
    /// run again starts from nothing. Here a real serialization failure: after the first
    /// attempt has copied everything, another client (psql) reads a target table and writes
    /// to it (a row added and removed, so the table is empty again; an integer-keyed one: the
    /// text-keyed table's check index locks it until the copy ends), and a row is committed
    /// to the source file. The first attempt's commit is refused; the second copies the
    /// source as it is now (its new row included), in one piece, and its check agrees.
    @Test(.enabled(if: TestStore.kind == .postgres))
    func aCopyRefusedAtCommitIsRunAgainFromAFreshSnapshot() async throws {
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = try await Self.source(in: directory)
        let (location, inner) = try await Self.postgresTarget(alsoCreating: "CREATE TABLE tally (id BIGINT PRIMARY KEY, total BIGINT NOT NULL)")
        defer { Task { await inner.close(); await source.close() } }
        try await source.write { db in
            try db.execute(sql: "CREATE TABLE tally (id INTEGER PRIMARY KEY, total INTEGER NOT NULL)")
            for id in 1...5 { try db.execute(sql: "INSERT INTO tally (id, total) VALUES (?, ?)", arguments: [id, id * 10]) }
        }
        let tally = CopiedTable("tally", orderBy: ["id"])
        let sourcePath = source.path
        let target = InterleavedEngine(inner: inner) {
            let other = try TestStore.runInAnotherPostgresClient(location, """
                BEGIN ISOLATION LEVEL SERIALIZABLE;
                SELECT COUNT(*) FROM tally;
                INSERT INTO tally (id, total) VALUES (1000, 0);
                DELETE FROM tally WHERE id = 1000;
                COMMIT;
                """)
            #expect(other == 0, "the other client's transaction failed")
            #expect(try TestStore.commitFromAnotherProcess(path: sourcePath, "INSERT INTO probe (name, n, flag) VALUES ('late', 0, 1)") == 0)
        }

        let reports = try await StoreCopy(tables: [Self.table, tally], pageSize: 4).copy(fromSQLiteFile: source.path, to: target)
        #expect(target.attempts == 2, "the first commit was refused and the copy run again")
        let rows = Self.names.count * 3 + 1
        #expect(reports.count == 2 && reports.allSatisfy(\.matches), "\(reports)")
        #expect(reports.first?.sourceRows == rows && reports.first?.targetRows == rows && reports.last?.targetRows == 5, "\(reports)")
        let now = try await source.read { db in StoreCopy.checksum(try db.fetchAll(sql: "SELECT * FROM probe ORDER BY name, n", arguments: [])) }
        #expect(reports.first?.sourceChecksum == now, "the source as it is after the first attempt")
        #expect(try await inner.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM probe WHERE name = 'late'") } == 1)
        #expect(try await inner.read { db in try Int.fetchOne(db, sql: "SELECT SUM(total)::BIGINT FROM tally") } == 150)
    }
}

/// A PostgreSQL engine whose write blocks, at the end of their first attempt only, run
/// `interleave` (another client's work) before the transaction commits, and count attempts.
final class InterleavedEngine: ForwardingStorageEngine {
    let inner: PostgresEngine
    let interleave: @Sendable () throws -> Void
    private let count = NIOLockedValueBox(0)

    init(inner: PostgresEngine, interleave: @escaping @Sendable () throws -> Void) {
        self.inner = inner
        self.interleave = interleave
    }

    var forwardedTo: any StorageEngine { inner }
    var attempts: Int { count.withLockedValue { $0 } }

    func write<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await inner.write { [count, interleave] db in
            let result = try block(db)
            let attempt = count.withLockedValue { count in
                count += 1
                return count
            }
            if attempt == 1 { try interleave() }
            return result
        }
    }
}
