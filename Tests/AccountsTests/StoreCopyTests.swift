import Foundation
import Logging
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
    @Test func aCopyToPostgreSQLInAnotherCollationMatches() async throws {
        guard TestStore.kind == .postgres else { return }
        let directory = try Self.directory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let source = try await Self.source(in: directory)
        let admin = try TestStore.administrator()
        let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
        try await TestStore.execute("CREATE DATABASE \(name) TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'", on: admin)
        let target = try PostgresEngine(location: admin.with(database: name), poolSize: 2, logger: Logger(label: "test"))
        try await target.migrate(Schema(sqlite: [], postgres: [Migration("probe", """
            CREATE TABLE probe (name TEXT NOT NULL, n BIGINT NOT NULL, flag BOOLEAN NOT NULL, note TEXT, PRIMARY KEY (name, n))
            """)]))
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
}
