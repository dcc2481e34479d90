import Accounts
import ArgumentParser
import Foundation
import Logging
import Storage

/// `account-server migrate-store --from FILE --to URL`: moves an installation from SQLite to
/// PostgreSQL (to run several instances). Everything is copied, the audit trail included, in
/// one transaction on the target, then every table's row count and checksum are compared.
struct MigrateStoreCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate-store",
        abstract: "Copy a SQLite database into an empty PostgreSQL database, audit trail included, and verify counts and checksums.",
        discussion: """
            Stop the server first (or accept that writes made during the copy stay behind: the \
            source is read in one snapshot, held for the whole copy, during which a running \
            server's SQLite log cannot be checkpointed and grows). The target must be empty; its \
            schema is created. \
            Prints one JSON line per table; exits non-zero if anything differs, leaving the \
            target empty.
            """
    )

    @Option(help: "The SQLite database file to copy.")
    var from: String

    @Option(help: "The PostgreSQL database to copy into (postgres:// URL; the password may come from PGPASSWORD or ~/.pgpass).")
    var to: String

    func run() async throws {
        guard case .sqlite = try StorageLocation.argument(from) else { throw ValidationError("--from must be a SQLite file") }
        guard case .postgres = try StorageLocation.argument(to) else { throw ValidationError("--to must be a postgres:// URL") }
        let source = try await StorageLocation.openExisting(from)
        let targetLocation = try StorageLocation.argument(to)
        // Checked before the target is migrated: a mistyped --to naming a live database is
        // refused with nothing changed in it (StoreCopy checks again, in its transaction).
        if let (table, rows) = try await AccountDatabase.holdsData(targetLocation, logger: LogLineHandler.toolLogger("migrate-store")) {
            await source.close()
            throw CommandFailure("--to is not empty (\(table) holds \(rows) rows): migrate-store copies into an empty database only; nothing was changed")
        }
        let target = try await AccountDatabase.open(targetLocation, poolSize: 2, logger: LogLineHandler.toolLogger("migrate-store"))
        defer { Task { await target.close() } }
        guard let sqlite = source.engine as? SQLiteEngine else { throw ValidationError("--from must be a SQLite file") }
        let reports = try await StoreCopy(tables: AccountSchema.tables).copy(fromSQLiteFile: sqlite.path, to: target.engine)
        for report in reports {
            AdminCommand.emit(.object([
                "table": .string(report.table), "rows": .number(String(report.targetRows)),
                "sha256": .string(report.targetChecksum), "verified": .bool(report.matches),
            ]))
        }
    }
}
