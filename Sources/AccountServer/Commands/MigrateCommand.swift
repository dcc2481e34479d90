import Accounts
import ArgumentParser
import Foundation
import Logging
import Storage

/// `account-server migrate --database URL [--grant-to ROLE]`: applies pending schema
/// migrations as the schema owner and, on PostgreSQL, grants the runtime role what `serve`
/// needs. With a runtime role, `serve` runs without DDL privileges and without UPDATE or
/// DELETE on the audit trail (docs/deployment.md, "PostgreSQL roles").
struct MigrateCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Apply pending schema migrations (as the schema owner) and grant the runtime role its privileges.",
        discussion: """
            `serve` applies pending migrations at start when its role may; with a separate \
            runtime role (recommended on PostgreSQL), run this with the owner's URL before \
            starting a new version. Idempotent: run it again after every upgrade. Prints every \
            migration the database records (those applied now included) as one JSON line.
            """
    )

    @Option(help: "The database: a SQLite file path or a postgres:// URL of the schema owner (the password may come from PGPASSWORD or ~/.pgpass).")
    var database: String

    @Option(name: .customLong("grant-to"),
            help: "PostgreSQL: the role `serve` connects as. It may then read, insert, update and delete in every table but audit_event, only read and insert in audit_event, and change no schema.")
    var grantTo: String?

    func run() async throws {
        let location = try StorageLocation.argument(database)
        if case .sqlite(let path) = location, !FileManager.default.fileExists(atPath: path) {
            // Creating the file is fine (a first install), but a typo in a path should be seen.
            FileHandle.standardError.write(Data("creating \(path)\n".utf8))
        }
        let logger = LogLineHandler.toolLogger("account-server.migrate", level: .warning)
        let applied = try await AccountDatabase.migrate(location, grantingTo: grantTo, logger: logger)
        var fields: JSONObject = ["migrations": .array(applied.map { .string($0) })]
        if let grantTo { fields["granted_to"] = .string(grantTo) }
        AdminCommand.emit(.object(fields))
    }
}
