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
}
