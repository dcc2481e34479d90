import Accounts
import Foundation
import Logging
import NIOSSL
import PostgresNIO
import Storage

/// The engine a test run uses, chosen by the environment, so one suite runs on both:
///
/// - `ACCOUNT_SERVER_TEST_STORE=sqlite` (the default): a fresh file per test.
/// - `ACCOUNT_SERVER_TEST_STORE=postgres`: a fresh database per test on the server named by
///   `ACCOUNT_SERVER_TEST_POSTGRES_URL` (an administrator URL, as `scripts/postgres.sh start`
///   prints; `scripts/test.sh` starts such a server).
public enum TestStore {
    /// Any other value stops the run: a misspelt `postgresql` must not quietly run the
    /// SQLite suite (and skip the PostgreSQL-only tests) under a green result.
    public static var kind: StorageKind {
        switch ProcessInfo.processInfo.environment["ACCOUNT_SERVER_TEST_STORE"] {
        case nil, "", "sqlite": .sqlite
        case "postgres": .postgres
        case let other?: fatalError("ACCOUNT_SERVER_TEST_STORE=\(other): expected sqlite or postgres")
        }
    }

    /// The role servers under test connect as on PostgreSQL: not the schema owner, no DDL,
    /// no UPDATE or DELETE on the audit trail (what docs/deployment.md recommends), so the
    /// whole suite proves that role is enough.
    public static let runtimeRole = "account_runtime"

    /// The `--database` argument a server under test gets: a file in `directory`, or a new
    /// PostgreSQL database migrated by its owner (`account-server migrate --grant-to`) and
    /// named with the runtime role.
    public static func argument(in directory: URL) async throws -> String {
        switch kind {
        case .sqlite:
            return directory.appendingPathComponent("db.sqlite").path
        case .postgres:
            let owner = try PostgresLocation(url: try await emptyArgument(in: directory))
            try await ensureRuntimeRole(on: owner)
            _ = try await AccountDatabase.migrate(.postgres(owner), grantingTo: runtimeRole, logger: quiet)
            var runtime = owner
            runtime.username = runtimeRole
            return url(runtime)
        }
    }

    /// The `--database` argument of a fresh, empty database (not opened here): a file in
    /// `directory`, or a new PostgreSQL database named with its owner (the administrator).
    public static func emptyArgument(in directory: URL) async throws -> String {
        switch kind {
        case .sqlite:
            return directory.appendingPathComponent("db.sqlite").path
        case .postgres:
            let admin = try administrator()
            let name = "t_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased()
            try await execute("CREATE DATABASE \(name)", on: admin)
            return url(admin.with(database: name))
        }
    }

    /// Creates the runtime login role once per server (roles are server-wide), with the
    /// administrator's password (a throwaway test server).
    public static func ensureRuntimeRole(on owner: PostgresLocation) async throws {
        let password = (owner.password ?? "").replacingOccurrences(of: "'", with: "''")
        try await execute("""
            DO $$ BEGIN
                IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '\(runtimeRole)') THEN
                    CREATE ROLE \(runtimeRole) LOGIN PASSWORD '\(password)';
                END IF;
            EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
            END $$
            """, on: owner)
    }

    /// A fresh, migrated database for one test.
    public static func database(in directory: URL, poolSize: Int = 4) async throws -> AccountDatabase {
        try await open(try await argument(in: directory), poolSize: poolSize)
    }

    /// Opens (and migrates) the database an argument names.
    public static func open(_ argument: String, poolSize: Int = 4) async throws -> AccountDatabase {
        try await AccountDatabase.open(try StorageLocation(argument), poolSize: poolSize, logger: quiet)
    }

    /// Warnings only: a test that stops a server on purpose need not fill the output with the
    /// pool's reconnection attempts.
    static var quiet: Logger {
        var logger = Logger(label: "test-store")
        logger.logLevel = .warning
        return logger
    }

    /// The schema owner's `--database` argument for a database `argument(in:)` named with the
    /// runtime role (the administrator owns the test databases; SQLite: the same file).
    public static func ownerArgument(of runtimeArgument: String) throws -> String {
        guard case .postgres(var location) = try StorageLocation(runtimeArgument) else { return runtimeArgument }
        let admin = try administrator()
        location.username = admin.username
        location.password = admin.password
        return url(location)
    }

    /// The administrator location of the test server.
    public static func administrator() throws -> PostgresLocation {
        guard let url = ProcessInfo.processInfo.environment["ACCOUNT_SERVER_TEST_POSTGRES_URL"] else {
            throw StorageError.configuration("ACCOUNT_SERVER_TEST_STORE=postgres needs ACCOUNT_SERVER_TEST_POSTGRES_URL (scripts/postgres.sh start DIR prints it)")
        }
        return try PostgresLocation(url: url)
    }

    /// The URL form of a location, password included (tests pass it to server processes).
    public static func url(_ location: PostgresLocation) -> String {
        var text = "postgres://\(location.username)"
        if let password = location.password { text += ":\(password)" }
        text += "@\(location.host.contains(":") ? "[\(location.host)]" : location.host):\(location.port)/\(location.database)?sslmode=\(location.tls.rawValue)"
        if let root = location.rootCertificatePath { text += "&sslrootcert=\(root)" }
        return text
    }

    /// Runs one statement outside a transaction (CREATE DATABASE, CREATE ROLE…) as the
    /// administrator.
    public static func execute(_ sql: String, on location: PostgresLocation) async throws {
        let engine = try PostgresEngine(location: location, poolSize: 1, logger: quiet)
        defer { Task { await engine.close() } }
        _ = try await engine.pointRead { db in try db.execute(sql: sql) }
    }
}

extension StorageLocation {
    /// The `--database` argument naming this location (a PostgreSQL URL with its password:
    /// test servers only).
    public var argument: String {
        switch self {
        case .sqlite(let path): path
        case .postgres(let location): TestStore.url(location)
        }
    }
}

extension TestStore {
    /// Runs `sql` in a transaction of another process (Python's `sqlite3` module, the system
    /// SQLite) on the SQLite file at `path`, and waits for it: a commit this process's
    /// connections did not make. Returns the process's exit status (0: committed).
    public static func commitFromAnotherProcess(path: String, _ sql: String) throws -> Int32 {
        let python = Process()
        python.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        python.arguments = ["python3", "-c", """
            import sqlite3, sys
            connection = sqlite3.connect(sys.argv[1], timeout=10)
            connection.execute(sys.argv[2])
            connection.commit()
            connection.close()
            """, path, sql]
        try python.run()
        python.waitUntilExit()
        return python.terminationStatus
    }
}

extension TestStore {
    /// Runs `sql` (statements, a transaction of its own) with `psql`, another PostgreSQL
    /// client, on the database `location` names, and waits for it: work no connection of
    /// this process did. Stops at the first error; returns psql's exit status (0: done).
    /// Bounded: no password prompt, 10 s to connect, 10 s for a lock, 30 s a statement,
    /// so a test whose psql waits for a lock the test itself holds fails instead of hanging.
    public static func runInAnotherPostgresClient(_ location: PostgresLocation, _ sql: String) throws -> Int32 {
        let psql = Process()
        psql.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        psql.arguments = ["psql", "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-h", location.host, "-p", "\(location.port)",
                          "-U", location.username, "-d", location.database, "-c", sql]
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = location.password ?? ""
        environment["PGSSLMODE"] = location.tls == .disable ? "disable" : "require"
        environment["PGCONNECT_TIMEOUT"] = "10"
        environment["PGOPTIONS"] = "-c lock_timeout=10s -c statement_timeout=30s"
        psql.environment = environment
        psql.standardOutput = FileHandle.nullDevice
        try psql.run()
        psql.waitUntilExit()
        return psql.terminationStatus
    }
}

/// Keys of the tests that build stores directly (servers under test make their own key file).
public enum TestKeys {
    /// The server key every "instance" of one test shares, as an installation's do.
    public static let server: [UInt8] = Array(repeating: 5, count: 32)
}
