import Foundation
import Logging
import Storage

/// The product's database, on whichever engine `--database` names: the one handle every
/// store of Accounts and Habilitation shares. Only stores call ``read(_:)``,
/// ``write(_:)`` and ``pointRead(_:)``; surfaces, middleware and listeners call stores
/// (`scripts/check-boundary.sh` keeps SQL out of them).
///
/// Every multi-step change runs inside a single ``write(_:)`` transaction; uniqueness is
/// enforced by unique indexes, never by a read-then-write check alone.
public final class AccountDatabase: Sendable {
    public let engine: any StorageEngine

    /// Wraps an engine whose schema is already migrated.
    public init(engine: any StorageEngine) {
        self.engine = engine
    }

    /// Opens (creating if needed) the SQLite database at `path` and applies pending
    /// migrations, synchronously (the command-line tools and tests).
    public convenience init(path: String, readOnly: Bool = false) throws {
        let engine = try SQLiteEngine(path: path, readOnly: readOnly)
        if !readOnly {
            try engine.migrateNow(AccountSchema.current)
        }
        self.init(engine: engine)
    }

    /// Opens the database `location` names and applies pending migrations (on PostgreSQL
    /// under an advisory lock, so instances starting together migrate once). `keepOpen`:
    /// PostgreSQL connections kept open when idle (the tools that open a database for one
    /// command keep none). `serving`: the server's own start, which warns when its role could
    /// rewrite the audit trail (the tools run as the owner on purpose).
    public static func open(_ location: StorageLocation, poolSize: Int = 10, keepOpen: Int = 0, serving: Bool = false,
                            logger: Logger) async throws -> AccountDatabase {
        switch location {
        case .sqlite(let path):
            return try AccountDatabase(path: path)
        case .postgres(let server):
            let engine = try PostgresEngine(location: server, poolSize: poolSize, keepOpen: keepOpen, logger: logger)
            do {
                try await engine.migrate(AccountSchema.current)
                try await checkAppendPrivileges(engine, role: server.username)
                if serving, try await mayRewriteTheAuditTrail(engine) {
                    logger.warning("""
                        the database role \(server.username) may rewrite the audit trail (it owns audit_event, or holds UPDATE, DELETE, \
                        TRUNCATE or TRIGGER on it): its triggers refuse changes, but this role may drop them; run `serve` as a runtime \
                        role granted with `account-server migrate --grant-to` (docs/deployment.md, "PostgreSQL set-up")
                        """)
                }
            } catch {
                await engine.close()
                throw error
            }
            return AccountDatabase(engine: engine)
        }
    }

    /// Opens the database `location` names **without** applying migrations, for the
    /// command-line tools (`admin`, `audit`, the source of `migrate-store`): refused unless
    /// its schema is exactly this binary's. A newer CLI binary must not migrate a live
    /// database behind the running servers' backs (the upgrade window `docs/deployment.md`
    /// keeps free of mixed-version writes), nor an older one write to a newer schema.
    public static func openCurrent(_ location: StorageLocation, poolSize: Int = 2, logger: Logger) async throws -> AccountDatabase {
        let engine: any StorageEngine
        let expected: [String]
        switch location {
        case .sqlite(let path):
            engine = try SQLiteEngine(path: path)
            expected = AccountSchema.current.sqlite.map(\.name)
        case .postgres(let server):
            engine = try PostgresEngine(location: server, poolSize: poolSize, keepOpen: 0, logger: logger)
            expected = AccountSchema.current.postgres.map(\.name)
        }
        do {
            let applied = try await appliedMigrations(of: engine)
            if Set(applied) != Set(expected) {
                if Set(applied).isStrictSubset(of: Set(expected)) {
                    throw StorageError.configuration("""
                        the database's schema is older than this version's (\(applied.count) of \(expected.count) migrations applied): \
                        run `account-server migrate` on it first, as the upgrade procedure says
                        """)
                }
                throw StorageError.configuration("""
                    the database's schema does not match this version's (it has \(Set(applied).subtracting(expected).sorted().joined(separator: ", "))): \
                    it was migrated by a newer version; use that version's binary
                    """)
            }
        } catch {
            await engine.close()
            throw error
        }
        return AccountDatabase(engine: engine)
    }

    /// The runtime role appends to the audit trail through column grants (every column but
    /// the identity, ``PostgresEngine/grantRuntimePrivileges(to:tables:appendOnly:)``), which,
    /// unlike a table grant, do not cover a column a later migration adds: without this check
    /// a `migrate` run without `--grant-to` would start a server whose every audited write
    /// fails. Read from `pg_attribute`, which lists the columns a role has no privilege on
    /// too (`information_schema` hides them).
    static func checkAppendPrivileges(_ engine: PostgresEngine, role: String) async throws {
        for table in AccountSchema.appendOnlyTables.sorted() {
            let missing = try await engine.read { db in
                try String.fetchAll(db, sql: """
                    SELECT a.attname::text FROM pg_attribute a
                    WHERE a.attrelid = to_regclass(?) AND a.attnum > 0 AND NOT a.attisdropped AND a.attidentity = ''
                      AND NOT has_column_privilege(a.attrelid, a.attnum, 'INSERT')
                    ORDER BY a.attnum
                    """, arguments: ["public.\(table)"])
            }
            guard missing.isEmpty else {
                throw StorageError.configuration("""
                    the role \(role) may not add rows to \(table) (no INSERT on \(missing.joined(separator: ", "))): run \
                    `account-server migrate --grant-to \(role)` as the schema owner, as every upgrade asks
                    """)
            }
        }
    }

    /// Whether the role connected may change the audit trail other than by appending to it:
    /// its owner (a single-role installation) can disable or drop the triggers that refuse
    /// changes, which the append-only promise then rests on.
    static func mayRewriteTheAuditTrail(_ engine: PostgresEngine) async throws -> Bool {
        try await engine.read { db in
            try Bool.fetchOne(db, sql: """
                SELECT pg_has_role(current_user, c.relowner, 'USAGE') OR has_any_column_privilege(c.oid, 'UPDATE')
                    OR has_table_privilege(c.oid, 'DELETE') OR has_table_privilege(c.oid, 'TRUNCATE') OR has_table_privilege(c.oid, 'TRIGGER')
                FROM pg_class c WHERE c.oid = to_regclass('public.audit_event')
                """) ?? false
        }
    }

    /// The migrations applied; none when the bookkeeping table does not exist yet. Any other
    /// failure (PostgreSQL's "permission denied" for a role without SELECT on it, or a role
    /// that may not use the product's schema) is thrown as it is, not taken for an empty database.
    static func appliedMigrations(of engine: any StorageEngine) async throws -> [String] {
        let exists = try await engine.read { db in
            switch db.engine {
            case .sqlite: try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'grdb_migrations')") ?? false
            case .postgres: try PostgresEngine.bookkeepingExists(db)
            }
        }
        return exists ? try await engine.appliedMigrations() : []
    }

    /// Whether any product table holds a row (a table not created yet counts as empty):
    /// checked before `migrate-store` migrates its target, so that a mistyped `--to`
    /// naming a live database is refused before anything changes in it.
    public static func holdsData(_ location: StorageLocation, logger: Logger) async throws -> (table: String, rows: Int)? {
        guard case .postgres(let server) = location else { return nil }
        let engine = try PostgresEngine(location: server, poolSize: 1, keepOpen: 0, logger: logger)
        let tables = AccountSchema.tables.filter { !$0.replacedOnCopy }.map(\.name)
        do {
            // One snapshot; closed before returning (a command exits right after).
            let found = try await engine.read { db -> (table: String, rows: Int)? in
                for table in tables where try Bool.fetchOne(db, sql: "SELECT to_regclass('\(table)') IS NOT NULL") ?? false {
                    let rows = try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM \(table)") ?? 0
                    if rows > 0 { return (table, rows) }
                }
                return nil
            }
            await engine.close()
            return found
        } catch {
            await engine.close()
            throw error
        }
    }

    /// Applies pending migrations to the database `location` names, as its owner, and on
    /// PostgreSQL grants `runtimeRole` (when given) what `serve` needs: every table read and
    /// write except the audit trail, which it may only read and append to. Returns the
    /// migrations applied in all.
    public static func migrate(_ location: StorageLocation, grantingTo runtimeRole: String?, logger: Logger) async throws -> [String] {
        switch location {
        case .sqlite(let path):
            if runtimeRole != nil {
                throw StorageError.configuration("--grant-to is for PostgreSQL: a SQLite file has no roles (its protection is the file's mode, 0600)")
            }
            let database = try AccountDatabase(path: path)
            let applied = try? await database.engine.appliedMigrations()
            await database.close()
            guard let applied else { throw StorageError.unavailable("cannot read the applied migrations of \(path)") }
            return applied
        case .postgres(let server):
            let engine = try PostgresEngine(location: server, poolSize: 1, logger: logger)
            do {
                try await engine.migrate(AccountSchema.current)
                if let runtimeRole {
                    try await engine.grantRuntimePrivileges(to: runtimeRole, tables: AccountSchema.tables.map(\.name),
                                                            appendOnly: AccountSchema.appendOnlyTables)
                }
                let applied = try await engine.appliedMigrations()
                await engine.close()
                return applied
            } catch {
                await engine.close()
                throw error
            }
        }
    }

    public var kind: StorageKind { engine.kind }

    /// A consistent read (a snapshot).
    public func read<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await engine.read(block)
    }

    /// See ``StorageEngine/readBetweenWrites(_:)``: for paging the audit trail.
    public func readBetweenWrites<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await engine.readBetweenWrites(block)
    }

    /// A short indexed read on the per-request hot path.
    public func pointRead<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await engine.pointRead(block)
    }

    /// A write transaction, all or nothing; the block may run again after a serialization
    /// failure (PostgreSQL), so it has no effect outside the database.
    public func write<T: Sendable>(_ block: @escaping @Sendable (any SQLTransaction) throws -> T) async throws -> T {
        try await engine.write(block)
    }

    /// Whether the database answers now (readiness).
    public func ping() async throws {
        _ = try await engine.pointRead { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }

    /// Gives free space back (after a purge).
    public func compact() async throws {
        try await engine.compact()
    }

    /// After an erasure: the engine's own older copies of what was deleted go where it can
    /// (``StorageEngine/scrubLog()``).
    public func scrubLog() async throws -> LogScrub {
        try await engine.scrubLog()
    }

    public func close() async {
        await engine.close()
    }
}
