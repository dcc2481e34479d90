import Accounts
import ArgumentParser
import Foundation
import Storage
import Habilitation

/// `account-server audit`: prints the audit trail as JSON lines, oldest first (the same as
/// `account-server admin audit`, kept for scripts; takes an account id only).
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "Print the audit trail as JSON lines.")

    @Option(help: "SQLite database file or postgres:// URL. Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
    var database: String?

    @Option(help: "Only the events of this account (its FHIR id).")
    var account: String?

    @Option(help: "Only events after this sequence number.")
    var after: Int64 = 0

    @Option(help: "At most this many events.")
    var limit: Int?

    func run() async throws {
        let administration = VendorAdministration(database: try await StorageLocation.openExisting(
            try await Settings.database(database)))
        try await administration.forEachAuditEvent(accountID: account, afterSeq: after, limit: limit) { event in
            AdminCommand.emit(event.jsonValue)
        }
    }
}

extension FileHandle: @retroactive TextOutputStream {
    public func write(_ string: String) {
        write(Data(string.utf8))
    }
}
