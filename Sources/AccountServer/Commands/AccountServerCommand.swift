import Foundation
import ArgumentParser

/// `account-server`: the SAS regulator account server and its operator commands.
@main
struct AccountServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "account-server",
        abstract: "SAS INT_R02 receiver and regulator account server.",
        subcommands: [ServeCommand.self, AdminCommand.self, AuditCommand.self, MigrateCommand.self, MigrateStoreCommand.self],
        defaultSubcommand: ServeCommand.self
    )
}

/// Flag values fall back to environment variables (`ACCOUNT_SERVER_<FLAG>`), then defaults.
/// Repeatable flags take a comma-separated list from the environment.
enum EnvironmentFallback {
    static func value(_ flag: String?, _ variable: String) -> String? {
        if let flag { return flag }
        guard let text = ProcessInfo.processInfo.environment[variable], !text.isEmpty else { return nil }
        return text
    }

    /// A switch: set by its flag, or by its variable being 1, true or yes.
    static func flag(_ flag: Bool, _ variable: String) -> Bool {
        flag || ["1", "true", "yes"].contains(ProcessInfo.processInfo.environment[variable]?.lowercased() ?? "")
    }

    static func list(_ flags: [String], _ variable: String) -> [String] {
        if !flags.isEmpty { return flags }
        guard let text = ProcessInfo.processInfo.environment[variable] else { return [] }
        return text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }
}
