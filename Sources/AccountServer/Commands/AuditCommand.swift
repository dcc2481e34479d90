import Accounts
import ArgumentParser
import Foundation
import Storage
import Habilitation

/// `account-server audit`: prints the audit trail as JSON lines, oldest first (the same as
/// `account-server admin audit`, kept for scripts). An account that nothing matches is an
/// error (exit 1), not an empty trail a script would take for "no event".
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "Print the audit trail as JSON lines.")

    @Option(help: "SQLite database file or postgres:// URL. Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
    var database: String?

    @Option(help: "Only the events of this account (id, IDNPS, SAS technical id or e-mail).")
    var account: String?

    @Option(help: "Only events after this sequence number.")
    var after: Int64 = 0

    @Option(help: "At most this many events.")
    var limit: Int?

    func validate() throws {
        try Self.validate(after: after, limit: limit)
    }

    static func validate(after: Int64, limit: Int?) throws {
        guard after >= 0 else { throw ValidationError("--after must be a sequence number, 0 or more") }
        if let limit, limit < 1 { throw ValidationError("--limit must be 1 or more") }
    }

    func run() async throws {
        let administration = VendorAdministration(database: try await StorageLocation.openExisting(
            try await Settings.database(database)))
        var accountID: String?
        if let account { accountID = try await AdminCommand.resolveInTrail(administration, account) }
        try await AdminCommand.exportTrail(administration, accountID: accountID, after: after, limit: limit)
    }
}

extension FileHandle: @retroactive TextOutputStream {
    public func write(_ string: String) {
        write(Data(string.utf8))
    }
}
