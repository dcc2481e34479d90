import Foundation
import Storage

/// Read access to accounts for the surfaces (FHIR reads and searches, the relay's routing,
/// the enrolment page): each call is one snapshot read of the store.
public struct AccountDirectory: Sendable {
    public let database: AccountDatabase
    private let queries = AccountQueries()

    public init(database: AccountDatabase) {
        self.database = database
    }

    /// The account with this FHIR id, without secrets.
    public func snapshot(id: String) async throws -> AccountSnapshot? {
        try await database.read { db in try queries.snapshot(id: id, in: db) }
    }

    /// The accounts currently holding any of `identifiers`, each once, in the given order.
    public func snapshots(holdingAnyOf identifiers: [RegulatorIdentifier]) async throws -> [AccountSnapshot] {
        try await database.read { db in
            var found: [AccountSnapshot] = []
            for identifier in identifiers {
                if let account = try queries.snapshot(holding: identifier, in: db), !found.contains(where: { $0.id == account.id }) {
                    found.append(account)
                }
            }
            return found
        }
    }

    /// Whether an account has this FHIR id (the relay serves a held id and forwards others).
    public func exists(id: String) async throws -> Bool {
        try await database.pointRead { db in try Bool.fetchOne(db, sql: "SELECT TRUE FROM account WHERE id = ?", arguments: [id]) ?? false }
    }

    /// The account's e-mail address (the authenticator app's label).
    public func email(accountID: String) async throws -> String? {
        try await database.read { db in try String.fetchOne(db, sql: "SELECT email FROM account WHERE id = ?", arguments: [accountID]) }
    }
}
