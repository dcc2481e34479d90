import Accounts
import Foundation
import Logging
@testable import Storage
import StorageTesting
import Testing

/// The SQL both engines share, as the PostgreSQL engine rewrites it.
@Suite("Shared SQL")
struct SharedSQLTests {
    @Test func placeholdersAreNumberedOutsideLiteralsAndComments() throws {
        let query = try PostgresTransaction.query("SELECT '?', \"a?b\", ? -- what?\n FROM t WHERE x = ?", [1, "two"])
        #expect(query.sql == "SELECT '?', \"a?b\", $1 -- what?\n FROM t WHERE x = $2")
        #expect(throws: StorageError.self) { try PostgresTransaction.query("SELECT ?", []) }
    }

    @Test func migrationsSplitAtStatementEnds() {
        let migration = Migration("m", """
            CREATE TABLE a (x TEXT DEFAULT ';'); -- a comment; with a semicolon
            CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'no; never'; END;
            $$;
            CREATE INDEX i ON a(x)
            """)
        #expect(migration.statements.count == 3, "\(migration.statements)")
        #expect(migration.statements[1].hasSuffix("$$") && migration.statements[1].contains("END;"))
    }
}

/// The PostgreSQL engine against a real server (the PostgreSQL run of the suite).
@Suite("PostgreSQL engine", .enabled(if: TestStore.kind == .postgres))
struct PostgresEngineTests {
    static let logger = Logger(label: "test")

    /// Instances started together: the advisory lock makes one migrate, the other find it done.
    @Test func instancesStartingTogetherMigrateOnce() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("together-\(UUID().uuidString)")
        let location = try StorageLocation(try await TestStore.emptyArgument(in: directory))
        let opened = try await withThrowingTaskGroup(of: AccountDatabase.self) { group in
            for _ in 0..<3 { group.addTask { try await AccountDatabase.open(location, poolSize: 1, logger: Self.logger) } }
            return try await group.reduce(into: [AccountDatabase]()) { $0.append($1) }
        }
        #expect(try await opened[0].engine.appliedMigrations() == AccountSchema.current.postgres.map(\.name))
        for database in opened { await database.close() }
    }

    /// The audit trail is append-only in the database itself, twice over: the runtime role
    /// has no UPDATE, DELETE or TRUNCATE privilege on it, and triggers refuse all three even
    /// to the schema owner.
    @Test func auditTrailRefusesUpdateDeleteAndTruncate() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("append-only-\(UUID().uuidString)")
        let runtimeArgument = try await TestStore.argument(in: directory)
        let runtime = try await TestStore.open(runtimeArgument, poolSize: 1)
        guard case .postgres(var ownerLocation) = try StorageLocation(runtimeArgument) else {
            Issue.record("not PostgreSQL")
            return
        }
        #expect(ownerLocation.username == TestStore.runtimeRole)
        ownerLocation.username = try TestStore.administrator().username
        let owner = try await TestStore.open(StorageLocation.postgres(ownerLocation).argument, poolSize: 1)
        try await runtime.write { db in try db.execute(sql: "INSERT INTO audit_event (at, surface, action, outcome) VALUES (0, 'cli', 'x', 'x')") }
        for sql in ["UPDATE audit_event SET outcome = 'y'", "DELETE FROM audit_event", "TRUNCATE audit_event"] {
            for (who, database, reason) in [("runtime role", runtime, "permission denied"), ("owner", owner, "append-only")] {
                do {
                    try await database.write { db in try db.execute(sql: sql) }
                    Issue.record("\(who): \(sql) was accepted")
                } catch let error as StorageError {
                    #expect("\(error)".contains(reason), "\(who): \(sql): \(error)")
                }
            }
        }
        // Neither may change the schema behind the server's back; the runtime role not at all.
        await #expect(throws: StorageError.self) { try await runtime.write { db in try db.execute(sql: "DROP TRIGGER audit_event_no_update ON audit_event") } }
        await #expect(throws: StorageError.self) { try await runtime.write { db in try db.execute(sql: "CREATE TABLE intruder (x INT)") } }
        #expect(try await runtime.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM audit_event") } == 1)
        await runtime.close()
        await owner.close()
    }

    /// `serve` connecting as the runtime role to a database one migration behind does not try
    /// DDL it may not run: it refuses to start and says to run `account-server migrate`.
    @Test func theRuntimeRoleAsksForTheOwnerWhenAMigrationIsPending() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("pending-\(UUID().uuidString)")
        let runtimeArgument = try await TestStore.argument(in: directory)
        guard case .postgres(var ownerLocation) = try StorageLocation(runtimeArgument) else { return }
        ownerLocation.username = try TestStore.administrator().username
        let owner = try await TestStore.open(StorageLocation.postgres(ownerLocation).argument, poolSize: 1)
        let last = try #require(AccountSchema.current.postgres.last?.name)
        try await owner.write { db in try db.execute(sql: "DELETE FROM schema_migration WHERE name = ?", arguments: [last]) }
        await owner.close()
        do {
            let opened = try await TestStore.open(runtimeArgument, poolSize: 1)
            await opened.close()
            Issue.record("opened with a migration pending")
        } catch let error as StorageError {
            #expect("\(error)".contains(last) && "\(error)".contains("account-server migrate"), "\(error)")
        }
    }

    /// A server certificate that does not chain to `sslrootcert`, a wrong password, or no TLS
    /// at all (the server wants it): refused within seconds, with the reason.
    @Test(arguments: ["wrong-ca", "wrong-password", "no-tls"])
    func misconfigurationsAreReportedQuickly(_ case: String) async throws {
        var location = try TestStore.administrator()
        switch `case` {
        case "wrong-ca": location.rootCertificatePath = "/etc/ssl/certs/ca-certificates.crt"
        case "wrong-password": location.password = "not-the-password"
        default: location.tls = .disable
        }
        let engine = try PostgresEngine(location: location, poolSize: 1, logger: Self.logger)
        let clock = ContinuousClock()
        let started = clock.now
        do {
            _ = try await engine.pointRead { db in try Int.fetchOne(db, sql: "SELECT 1") }
            Issue.record("\(`case`): the query was answered")
        } catch let error as StorageError {
            guard case .unavailable(let reason) = error else {
                Issue.record("\(`case`): \(error)")
                await engine.close()
                return
            }
            // Well before the 30 s a merely busy pool is waited for: the probe answered, with
            // the reason (on a loaded 2-core machine a TLS and SCRAM handshake takes seconds).
            #expect(clock.now - started < .seconds(25), "\(`case`): \(clock.now - started)")
            #expect(!reason.contains("not-the-password"), "the password is never part of a message")
            if `case` == "wrong-password" { #expect(reason.contains("password"), "\(reason)") }
        }
        await engine.close()
    }
}
