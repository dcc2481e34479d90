import Accounts
import ArgumentParser
import Foundation
import Logging
import Storage

/// A command whose command line was right but whose work failed (no database at that path,
/// a target that is not empty, a backup that could not be made): exit status 1 and the
/// message, without the usage text that `ValidationError` (exit 64) prints for a malformed
/// command line.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension StorageLocation {
    /// `--database` as the commands take it: a file path or a `postgres://` URL.
    static func argument(_ text: String) throws -> StorageLocation {
        do {
            return try StorageLocation(text)
        } catch {
            // A malformed argument is a usage error (64, with the usage); a sound URL whose
            // password file is refused (its mode, its owner) is a failure of the setting (1).
            if (try? StorageLocation(text, environment: ["PGPASSWORD": "unused"])) != nil {
                throw CommandFailure("--database: \(error)")
            }
            throw ValidationError("--database: \(error)")
        }
    }

    /// Opens the database of a running installation for a command-line tool: a SQLite file
    /// must exist (a typo must not create an empty database), and the schema must be this
    /// version's: a tool never migrates (`account-server migrate` does, knowingly).
    static func openExisting(_ text: String) async throws -> AccountDatabase {
        let location = try argument(text)
        if case .sqlite(let path) = location, !FileManager.default.fileExists(atPath: path) {
            throw CommandFailure("no database at \(path)")
        }
        do {
            return try await AccountDatabase.openCurrent(location, poolSize: 2, logger: LogLineHandler.toolLogger("account-server"))
        } catch let error as StorageError {
            throw CommandFailure("\(location): \(error)")
        }
    }
}
