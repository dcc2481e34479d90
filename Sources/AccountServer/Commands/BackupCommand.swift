import Accounts
import ArgumentParser
import Foundation
import Storage

/// `account-server backup --database FILE --to COPY`: a verified, private copy of a SQLite
/// installation, taken while it serves (``SQLiteBackup``). PostgreSQL has its own tools
/// (`pg_dump`, WAL archiving), described in docs/deployment.md.
struct BackupCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Copy a SQLite database while it serves, verified, to a new file readable by its owner only.",
        discussion: """
            The copy is one snapshot of the database (SQLite's online backup), created mode \
            0600 and never over an existing file; it is checked (integrity, foreign keys, every \
            table's rows and checksum against the same snapshot) before the command exits 0, \
            and deleted if a check fails. Prints one JSON line per table. On PostgreSQL, use \
            pg_dump (docs/deployment.md, "Backup and restore").
            """
    )

    @Option(help: "The SQLite database file. Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
    var database: String?

    @Option(help: "The copy to create (must not exist).")
    var to: String

    func run() async throws {
        guard case .sqlite(let path) = try StorageLocation.argument(try await Settings.database(database)) else {
            throw ValidationError("backup copies a SQLite database; on PostgreSQL use pg_dump (docs/deployment.md, \"Backup and restore\")")
        }
        let reports: [CopiedTableReport]
        do {
            reports = try SQLiteBackup.copy(from: path, to: to, tables: AccountSchema.tables)
        } catch {
            throw CommandFailure("backup failed: \(error)")
        }
        for report in reports {
            AdminCommand.emit(.object([
                "table": .string(report.table), "rows": .number(String(report.targetRows)),
                "sha256": .string(report.targetChecksum), "verified": .bool(report.matches),
            ]))
        }
    }
}
