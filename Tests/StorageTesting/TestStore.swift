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
    public static var kind: StorageKind {
        ProcessInfo.processInfo.environment["ACCOUNT_SERVER_TEST_STORE"] == "postgres" ? .postgres : .sqlite
    }

    /// The `--database` argument of a fresh, empty database (not opened here): a file in
    /// `directory`, or a new PostgreSQL database.
    public static func argument(in directory: URL) async throws -> String {
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
        text += "@\(location.host):\(location.port)/\(location.database)?sslmode=\(location.tls.rawValue)"
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
