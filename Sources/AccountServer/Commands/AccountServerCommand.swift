import Foundation
import ArgumentParser

/// `account-server`: the SAS regulator account server and its operator commands.
@main
struct AccountServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "account-server",
        abstract: "SAS INT_R02 receiver and regulator account server.",
        subcommands: [ServeCommand.self, AdminCommand.self, AuditCommand.self, MigrateCommand.self, MigrateStoreCommand.self, BackupCommand.self],
        defaultSubcommand: ServeCommand.self
    )

    /// ArgumentParser's own `main`, with the log written out before an error is printed, so
    /// that the error comes after the lines that led to it (log lines go through a writer
    /// thread, ``LogLineSink``).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
            LogLineSink.standardError.flush(timeout: .seconds(2))
        } catch {
            LogLineSink.standardError.flush(timeout: .seconds(2))
            exit(withError: error)
        }
    }
}
