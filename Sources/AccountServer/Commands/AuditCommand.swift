import Accounts
import ArgumentParser
import Foundation

/// `account-server audit`: prints the audit trail as JSON lines, oldest first.
struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "audit", abstract: "Print the audit trail as JSON lines.")

    @Option(help: "SQLite database file. Env: ACCOUNT_SERVER_DATABASE. Default: ./data/account-server.sqlite")
    var database: String?

    @Option(help: "Only the events of this account (its FHIR id).")
    var account: String?

    @Option(help: "Only events after this sequence number.")
    var after: Int64 = 0

    @Option(help: "At most this many events.")
    var limit: Int?

    func run() async throws {
        let path = EnvironmentFallback.value(database, "ACCOUNT_SERVER_DATABASE") ?? "./data/account-server.sqlite"
        guard FileManager.default.fileExists(atPath: path) else {
            throw ValidationError("no database at \(path)")
        }
        let store = try AccountDatabase(path: path)
        let events = try await store.read { db in
            try AuditLog().events(accountID: account, afterSeq: after, limit: limit, in: db)
        }
        let writer = JSONWriter()
        var output = FileHandle.standardOutput
        for event in events {
            print(writer.string(event.jsonValue), to: &output)
        }
    }
}

extension FileHandle: @retroactive TextOutputStream {
    public func write(_ string: String) {
        write(Data(string.utf8))
    }
}
