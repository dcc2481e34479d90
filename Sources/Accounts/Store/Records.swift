import Foundation
import Storage

/// A row of `account`: one regulator account. The password hash never leaves the Accounts
/// module's store and credential code; FHIR rendering uses ``AccountSnapshot``.
public struct AccountRow: Sendable, Equatable, SQLRecord {
    public static let databaseTableName = "account"

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

    public init(id: String, version: Int, active: Bool, familyName: String, givenName: String, email: String, emailKey: String,
                passwordHash: String, passwordResetRequired: Bool, createdAt: Date, updatedAt: Date, activeChangedAt: Date) {
        self.id = id
        self.version = version
        self.active = active
        self.familyName = familyName
        self.givenName = givenName
        self.email = email
        self.emailKey = emailKey
        self.passwordHash = passwordHash
        self.passwordResetRequired = passwordResetRequired
        self.createdAt = createdAt
        self.updatedAt = updatedAt
        self.activeChangedAt = activeChangedAt
    }

    /// The columns ``init(row:)`` reads, named: a prepared `SELECT *` would break on a
    /// connection that outlives a migration adding a column (another instance upgraded).
    static let columns = "id, version, active, family_name, given_name, email, email_key, password_hash, password_reset_required, created_at, updated_at, active_changed_at"
    static let qualifiedColumns = "account.id, account.version, account.active, account.family_name, account.given_name, account.email, account.email_key, account.password_hash, account.password_reset_required, account.created_at, account.updated_at, account.active_changed_at"

    // Hand-written decoding: the hot path reads rows on every INT_R02 call.
    public init(row: SQLRow) throws {
        id = row["id"]
        version = row["version"]
        active = row["active"]
        familyName = row["family_name"]
        givenName = row["given_name"]
        email = row["email"]
        emailKey = row["email_key"]
        passwordHash = row["password_hash"]
        passwordResetRequired = row["password_reset_required"]
        createdAt = Date(epochMilliseconds: row["created_at"])
        updatedAt = Date(epochMilliseconds: row["updated_at"])
        activeChangedAt = Date(epochMilliseconds: row["active_changed_at"])
    }

}

/// A row of `account_identifier`: one period during which an account held an identifier.
/// Rows are never deleted; ending one records when, why and in favour of whom.
public struct IdentifierAssignment: Sendable, Equatable, SQLRecord {
    public static let databaseTableName = "account_identifier"
    /// The columns ``init(row:)`` reads (see ``AccountRow/columns``).
    static let columns = "id, account_id, kind, value, assigned_at, ended_at, ended_reason, ended_by_account_id"

    /// Why an assignment ended.
    public enum EndReason: String, Sendable, SQLBindable, SQLDecodable {
        /// The same account received another identifier of the same kind.
        case replaced
        /// Another account took the identifier after this one was deactivated.
        case reattributed

        public static func decode(_ value: SQLValue) -> EndReason? { String.decode(value).flatMap(Self.init(rawValue:)) }
    }

    public var id: Int64?
    public var accountId: String
    public var kind: String
    public var value: String
    public var assignedAt: Date
    public var endedAt: Date?
    public var endedReason: EndReason?
    public var endedByAccountId: String?

    public init(row: SQLRow) throws {
        id = row["id"]
        accountId = row["account_id"]
        kind = row["kind"]
        value = row["value"]
        assignedAt = Date(epochMilliseconds: row["assigned_at"])
        endedAt = (row["ended_at"] as Int64?).map(Date.init(epochMilliseconds:))
        endedReason = row["ended_reason"]
        endedByAccountId = row["ended_by_account_id"]
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
    /// Only for an account left without a current identifier (each was re-attributed to
    /// another account after its withdrawal): the identifiers it held last, so that what it
    /// shows still says who it was (as `use: old`, with their period), national id first.
    public var lastHeldIdentifiers: [HeldIdentifier] = []

    /// An identifier an account held from `assignedAt` until `endedAt`.
    public struct HeldIdentifier: Sendable, Equatable {
        public var identifier: RegulatorIdentifier
        public var assignedAt: Date
        public var endedAt: Date
    }

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
/// These run on every INT_R02 call, inside the write transaction (on SQLite each statement
/// is prepared once per connection).
public struct AccountQueries: Sendable {
    public init() {}

    /// The account currently holding `identifier` (deactivated or not), if any.
    public func holder(of identifier: RegulatorIdentifier, in db: any SQLTransaction) throws -> AccountRow? {
        try AccountRow.fetchOne(db, ProvisioningSQL.Holder.self, arguments: [identifier.kind.rawValue, identifier.value])
    }

    public func account(id: String, in db: any SQLTransaction) throws -> AccountRow? {
        try AccountRow.fetchOne(db, ProvisioningSQL.AccountByID.self, arguments: [id])
    }

    /// Every assignment the account ever had, oldest first.
    public func identifierHistory(of accountID: String, in db: any SQLTransaction) throws -> [IdentifierAssignment] {
        try IdentifierAssignment.fetchAll(db, ProvisioningSQL.IdentifierHistory.self, arguments: [accountID])
    }

    /// The latest period anyone held `identifier` (current or ended), if any.
    public func latestAssignment(of identifier: RegulatorIdentifier, in db: any SQLTransaction) throws -> IdentifierAssignment? {
        try IdentifierAssignment.fetchAll(db, ProvisioningSQL.LatestAssignment.self, arguments: [identifier.kind.rawValue, identifier.value]).first
    }

    public func currentIdentifiers(of accountID: String, in db: any SQLTransaction) throws -> [IdentifierAssignment] {
        try IdentifierAssignment.fetchAll(db, ProvisioningSQL.CurrentIdentifiers.self, arguments: [accountID])
    }

    public func snapshot(id: String, in db: any SQLTransaction) throws -> AccountSnapshot? {
        guard let row = try account(id: id, in: db) else { return nil }
        let current = try currentIdentifiers(of: id, in: db)
        var snapshot = AccountSnapshot(row: row, identifiers: current)
        if current.isEmpty {
            // Every identifier went to other accounts: the last one held of each kind.
            let held = try identifierHistory(of: id, in: db).compactMap { assignment in
                assignment.identifier.flatMap { identifier in
                    assignment.endedAt.map { AccountSnapshot.HeldIdentifier(identifier: identifier, assignedAt: assignment.assignedAt, endedAt: $0) }
                }
            }
            snapshot.lastHeldIdentifiers = [RegulatorIdentifier.Kind.national, .sasTechnical].compactMap { kind in
                held.filter { $0.identifier.kind == kind }.max { $0.endedAt < $1.endedAt }
            }
        }
        return snapshot
    }

    public func snapshot(holding identifier: RegulatorIdentifier, in db: any SQLTransaction) throws -> AccountSnapshot? {
        try holderWithIdentifiers(of: identifier, in: db).map { AccountSnapshot(row: $0.account, identifiers: $0.identifiers) }
    }

    /// The account currently holding `identifier`, with its current identifiers, in one
    /// statement: a PUT's first read is one exchange with PostgreSQL instead of two.
    func holderWithIdentifiers(of identifier: RegulatorIdentifier, in db: any SQLTransaction) throws -> (account: AccountRow, identifiers: [IdentifierAssignment])? {
        let rows = try db.fetchAll(ProvisioningSQL.HolderWithIdentifiers.self, arguments: [identifier.kind.rawValue, identifier.value])
        guard let first = rows.first else { return nil }
        let account = try AccountRow(row: first)
        let identifiers = try rows.map { row in
            // The identifier's columns, named `i_<column>` beside the account's.
            let named = row.columns.indices.filter { row.columns[$0].hasPrefix("i_") }
            return try IdentifierAssignment(row: SQLRow(columns: named.map { String(row.columns[$0].dropFirst(2)) }, values: named.map { row.values[$0] }))
        }
        return (account, identifiers)
    }

    /// The active account using this e-mail (case-insensitive), other than `excluding`.
    public func activeAccount(withEmailKey key: String, excluding accountID: String?, in db: any SQLTransaction) throws -> AccountRow? {
        try AccountRow.fetchOne(db, ProvisioningSQL.ActiveAccountByEmail.self, arguments: [key, accountID, accountID])
    }
}

/// The writes of the provisioning rules, as prepared statements.
struct AccountWrites {
    func insert(_ row: AccountRow, in db: any SQLTransaction) throws {
        try db.execute(ProvisioningSQL.InsertAccount.self, arguments: [row.id, row.version, row.active, row.familyName, row.givenName, row.email, row.emailKey,
                                     row.passwordHash, row.passwordResetRequired, row.createdAt.epochMilliseconds,
                                     row.updatedAt.epochMilliseconds, row.activeChangedAt.epochMilliseconds])
    }

    /// Writes the fields INT_R02 may change, plus the version and timestamps.
    func update(_ row: AccountRow, in db: any SQLTransaction) throws {
        try db.execute(ProvisioningSQL.UpdateAccount.self, arguments: [row.version, row.active, row.familyName, row.givenName, row.email, row.emailKey,
                                     row.updatedAt.epochMilliseconds, row.activeChangedAt.epochMilliseconds, row.id])
    }

    func assign(_ identifier: RegulatorIdentifier, to accountID: String, at date: Date, in db: any SQLTransaction) throws {
        try db.execute(ProvisioningSQL.AssignIdentifier.self, arguments: [accountID, identifier.kind.rawValue, identifier.value, date.epochMilliseconds])
    }

    func endAssignment(of identifier: RegulatorIdentifier, at date: Date, reason: IdentifierAssignment.EndReason, by accountID: String?, in db: any SQLTransaction) throws {
        try db.execute(ProvisioningSQL.EndAssignment.self, arguments: [date.epochMilliseconds, reason, accountID, identifier.kind.rawValue, identifier.value])
    }

    /// A new version of an account that another write changed (it lost an identifier to a
    /// re-attribution): what it shows changed, so its version and `lastUpdated` move, and a
    /// conditional write holding its former ETag is refused. Once per transaction: a write
    /// that takes both of its identifiers moves it by one version (the transaction's `date`
    /// is already its `updated_at` the second time).
    func newVersion(of accountID: String, at date: Date, in db: any SQLTransaction) throws {
        try db.execute(ProvisioningSQL.NewVersion.self, arguments: [date.epochMilliseconds, accountID, date.epochMilliseconds])
    }
}


/// The statements of every INT_R02 call, prepared once per connection.
enum ProvisioningSQL {
    enum Holder: PreparedSQL {
        static let sql = """
            SELECT \(AccountRow.qualifiedColumns) FROM account_identifier ai
            JOIN account ON account.id = ai.account_id
            WHERE ai.kind = ? AND ai.value = ? AND ai.ended_at IS NULL
            """
    }

    enum AccountByID: PreparedSQL {
        static let sql = "SELECT \(AccountRow.columns) FROM account WHERE id = ?"
    }

    /// The latest assignment of an identifier, whoever held it (a rare path: a PUT that
    /// matches nothing and names another identifier of the same kind).
    enum LatestAssignment: PreparedSQL {
        static let sql = """
            SELECT \(IdentifierAssignment.columns) FROM account_identifier WHERE kind = ? AND value = ? ORDER BY assigned_at DESC, id DESC LIMIT 1
            """
    }

    enum IdentifierHistory: PreparedSQL {
        static let sql = """
            SELECT \(IdentifierAssignment.columns) FROM account_identifier WHERE account_id = ? ORDER BY assigned_at, id
            """
    }

    /// ``Holder`` joined with ``CurrentIdentifiers``: a row per current identifier (the
    /// holder has at least the one asked for). The identifier's columns are those of
    /// ``IdentifierAssignment/columns``, prefixed `i_`.
    enum HolderWithIdentifiers: PreparedSQL {
        static let sql = """
            SELECT \(AccountRow.qualifiedColumns),
                   held.id AS i_id, held.account_id AS i_account_id, held.kind AS i_kind, held.value AS i_value,
                   held.assigned_at AS i_assigned_at, held.ended_at AS i_ended_at, held.ended_reason AS i_ended_reason,
                   held.ended_by_account_id AS i_ended_by_account_id
            FROM account_identifier ai
            JOIN account ON account.id = ai.account_id
            JOIN account_identifier held ON held.account_id = account.id AND held.ended_at IS NULL
            WHERE ai.kind = ? AND ai.value = ? AND ai.ended_at IS NULL
            ORDER BY held.kind
            """
    }

    enum CurrentIdentifiers: PreparedSQL {
        static let sql = """
            SELECT \(IdentifierAssignment.columns) FROM account_identifier WHERE account_id = ? AND ended_at IS NULL ORDER BY kind
            """
    }

    enum ActiveAccountByEmail: PreparedSQL {
        static let sql = """
            SELECT \(AccountRow.columns) FROM account WHERE email_key = ? AND active AND (CAST(? AS TEXT) IS NULL OR id <> ?)
            """
    }

    enum InsertAccount: PreparedSQL {
        static let sql = """
            INSERT INTO account (id, version, active, family_name, given_name, email, email_key, password_hash,
                                 password_reset_required, created_at, updated_at, active_changed_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """
    }

    enum UpdateAccount: PreparedSQL {
        static let sql = """
            UPDATE account SET version = ?, active = ?, family_name = ?, given_name = ?, email = ?, email_key = ?,
                               updated_at = ?, active_changed_at = ?
            WHERE id = ?
            """
    }

    enum NewVersion: PreparedSQL {
        static let sql = "UPDATE account SET version = version + 1, updated_at = ? WHERE id = ? AND updated_at <> ?"
    }

    enum AssignIdentifier: PreparedSQL {
        static let sql = """
            INSERT INTO account_identifier (account_id, kind, value, assigned_at) VALUES (?, ?, ?, ?)
            """
    }

    enum EndAssignment: PreparedSQL {
        static let sql = """
            UPDATE account_identifier SET ended_at = ?, ended_reason = ?, ended_by_account_id = ?
            WHERE kind = ? AND value = ? AND ended_at IS NULL
            """
    }
}

extension Date {
    /// Milliseconds since the Unix epoch, the storage form of every timestamp.
    public var epochMilliseconds: Int64 { Int64((timeIntervalSince1970 * 1000).rounded()) }

    public init(epochMilliseconds: Int64) {
        self.init(timeIntervalSince1970: Double(epochMilliseconds) / 1000)
    }
}
