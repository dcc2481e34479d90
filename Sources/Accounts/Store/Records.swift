import Foundation
import GRDB

/// A row of `account`: one regulator account. The password hash never leaves the Accounts
/// module's store and credential code; FHIR rendering uses ``AccountSnapshot``.
public struct AccountRow: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "account"
    public static let databaseColumnDecodingStrategy = DatabaseColumnDecodingStrategy.convertFromSnakeCase
    public static let databaseColumnEncodingStrategy = DatabaseColumnEncodingStrategy.convertToSnakeCase

    /// The FHIR logical id: a random UUID, so ids reveal neither counts nor order.
    public var id: String
    /// FHIR `meta.versionId`, incremented by every change (not by a no-op update).
    public var version: Int
    /// The SAS's last `active` value: false means the habilitation is withdrawn.
    public var active: Bool
    public var familyName: String
    public var givenName: String
    public var email: String
    public var emailKey: String
    public var passwordHash: String
    /// True while the password is the unknown generated one: sign-in must go through
    /// "mot de passe oublié" first.
    public var passwordResetRequired: Bool
    public var createdAt: Date
    public var updatedAt: Date
    public var activeChangedAt: Date
}

/// A row of `account_identifier`: one period during which an account held an identifier.
/// Rows are never deleted; ending one records when, why and in favour of whom.
public struct IdentifierAssignment: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "account_identifier"
    public static let databaseColumnDecodingStrategy = DatabaseColumnDecodingStrategy.convertFromSnakeCase
    public static let databaseColumnEncodingStrategy = DatabaseColumnEncodingStrategy.convertToSnakeCase

    /// Why an assignment ended.
    public enum EndReason: String, Codable, Sendable {
        /// The same account received another identifier of the same kind.
        case replaced
        /// Another account took the identifier after this one was deactivated.
        case reattributed
    }

    public var id: Int64?
    public var accountId: String
    public var kind: String
    public var value: String
    public var assignedAt: Date
    public var endedAt: Date?
    public var endedReason: EndReason?
    public var endedByAccountId: String?

    public mutating func didInsert(_ inserted: InsertionSuccess) {
        id = inserted.rowID
    }

    public var identifier: RegulatorIdentifier? {
        RegulatorIdentifier.Kind(rawValue: kind).flatMap { RegulatorIdentifier(kind: $0, value: value) }
    }
}

/// What the FHIR surface shows of an account: its row without secrets, and its current
/// identifiers.
public struct AccountSnapshot: Sendable, Equatable {
    public var id: String
    public var version: Int
    public var active: Bool
    public var familyName: String
    public var givenName: String
    public var email: String
    public var passwordResetRequired: Bool
    public var createdAt: Date
    public var updatedAt: Date
    public var nationalID: NationalID?
    public var sasTechnicalID: SASTechnicalID?

    init(row: AccountRow, identifiers: [IdentifierAssignment]) {
        id = row.id
        version = row.version
        active = row.active
        familyName = row.familyName
        givenName = row.givenName
        email = row.email
        passwordResetRequired = row.passwordResetRequired
        createdAt = row.createdAt
        updatedAt = row.updatedAt
        for assignment in identifiers where assignment.endedAt == nil {
            switch assignment.identifier {
            case .national(let id)?: nationalID = id
            case .sasTechnical(let id)?: sasTechnicalID = id
            case nil: break
            }
        }
    }

    public var identifiers: [RegulatorIdentifier] {
        var result: [RegulatorIdentifier] = []
        if let nationalID { result.append(.national(nationalID)) }
        if let sasTechnicalID { result.append(.sasTechnical(sasTechnicalID)) }
        return result
    }
}

/// Read access to accounts, shared by the FHIR surface, the CLI and the later web surfaces.
public struct AccountQueries: Sendable {
    public init() {}

    /// The account currently holding `identifier` (deactivated or not), if any.
    public func holder(of identifier: RegulatorIdentifier, in db: Database) throws -> AccountRow? {
        try AccountRow.fetchOne(db, sql: """
            SELECT account.* FROM account
            JOIN account_identifier ai ON ai.account_id = account.id
            WHERE ai.kind = ? AND ai.value = ? AND ai.ended_at IS NULL
            """, arguments: [identifier.kind.rawValue, identifier.value])
    }

    public func account(id: String, in db: Database) throws -> AccountRow? {
        try AccountRow.fetchOne(db, key: id)
    }

    /// Every assignment the account ever had, oldest first.
    public func identifierHistory(of accountID: String, in db: Database) throws -> [IdentifierAssignment] {
        try IdentifierAssignment.fetchAll(db, sql: """
            SELECT * FROM account_identifier WHERE account_id = ? ORDER BY assigned_at, id
            """, arguments: [accountID])
    }

    public func currentIdentifiers(of accountID: String, in db: Database) throws -> [IdentifierAssignment] {
        try IdentifierAssignment.fetchAll(db, sql: """
            SELECT * FROM account_identifier WHERE account_id = ? AND ended_at IS NULL ORDER BY kind
            """, arguments: [accountID])
    }

    public func snapshot(id: String, in db: Database) throws -> AccountSnapshot? {
        guard let row = try account(id: id, in: db) else { return nil }
        return AccountSnapshot(row: row, identifiers: try currentIdentifiers(of: id, in: db))
    }

    public func snapshot(holding identifier: RegulatorIdentifier, in db: Database) throws -> AccountSnapshot? {
        guard let row = try holder(of: identifier, in: db) else { return nil }
        return AccountSnapshot(row: row, identifiers: try currentIdentifiers(of: row.id, in: db))
    }

    /// The active account using this e-mail (case-insensitive), other than `excluding`.
    public func activeAccount(withEmailKey key: String, excluding accountID: String?, in db: Database) throws -> AccountRow? {
        try AccountRow.fetchOne(db, sql: """
            SELECT * FROM account WHERE email_key = ? AND active AND id IS NOT ?
            """, arguments: [key, accountID])
    }
}
