import Foundation
import Storage
import Logging

/// An INT_R02 write, as the SAS expresses it.
public enum ProvisioningRequest: Sendable, Equatable {
    /// `POST /Practitioner`: refused when an active account already holds one of the body's
    /// identifiers. With `ifNoneExist` (FHIR conditional create, `If-None-Exist:
    /// identifier=system|value`), an account holding that identifier, active or not, is
    /// answered as it is (200) and nothing is created or re-attributed.
    case create(RegulatorRecord, ifNoneExist: RegulatorIdentifier? = nil)
    /// `PUT /Practitioner?identifier=…`: updates the account currently holding the identifier,
    /// or creates one when none does. `ifMatch` comes from an `If-Match` header, `also` from
    /// `If-None-Match` and `If-Unmodified-Since`.
    case conditionalUpdate(RegulatorIdentifier, RegulatorRecord, ifMatch: VersionPrecondition?, also: UpdatePreconditions = .none)

    /// The audit trail's name for the interaction.
    public var action: String {
        switch self {
        case .create: return "create"
        case .conditionalUpdate: return "conditional-update"
        }
    }

    /// The identifier(s) the call is about, as audit text.
    public var auditIdentifier: String {
        switch self {
        case .create(let record, _): return record.identifiers.map(\.description).joined(separator: ", ")
        case .conditionalUpdate(let identifier, _, _, _): return identifier.description
        }
    }
}

/// An `If-Match` precondition on a conditional update (RFC 9110 §13.1.1).
public enum VersionPrecondition: Sendable, Equatable {
    /// `If-Match: *`: only if an account matches; never creates.
    case exists
    /// `If-Match: W/"3"` (or a list of them): only if the matched account is at one of these
    /// versions.
    case versions([Int])
}

/// The other preconditions of a conditional update (RFC 9110 §13.1.2 and §13.1.4), evaluated
/// in §13.2.2's order after `If-Match`. An origin server must evaluate them: ignored, a PUT
/// sent with `If-None-Match: *` to create only would overwrite the account it meant to avoid.
public struct UpdatePreconditions: Sendable, Equatable {
    /// `If-None-Match: *`: only if no account matches (creates, never updates); or versions
    /// the matched account must not be at (weak comparison, as RFC 9110 asks for this field).
    public var ifNoneMatch: VersionPrecondition?
    /// `If-Unmodified-Since`: only if the matched account did not change after this date
    /// (to the second, as `Last-Modified` says it). Not evaluated when `If-Match` is sent;
    /// without a matched account there is no modification date, and it is ignored.
    public var ifUnmodifiedSince: Date?

    public init(ifNoneMatch: VersionPrecondition? = nil, ifUnmodifiedSince: Date? = nil) {
        self.ifNoneMatch = ifNoneMatch
        self.ifUnmodifiedSince = ifUnmodifiedSince
    }

    public static let none = UpdatePreconditions()
}

/// What a successful provisioning call did.
public struct ProvisioningResult: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case created, updated, unchanged
    }

    public var kind: Kind
    public var account: AccountSnapshot
    public var changes: [FieldChange]
}

/// Who is calling and how to label the audit records.
public struct CallContext: Sendable {
    public var actor: AuditActor
    public var requestID: String?

    public init(actor: AuditActor, requestID: String? = nil) {
        self.actor = actor
        self.requestID = requestID
    }
}

/// The INT_R02 business rules (digest rules 1–6 and the storage side of 10).
///
/// - An identifier has at most one current holder; an active holder blocks every other
///   account from taking it (409), a deactivated one gives it up (re-attribution, rule 6):
///   the old holder keeps it in its history only.
/// - Identifiers absent from an update's body stay attached (the technical id remains a
///   secondary identifier when the national id arrives, rule 3); a new identifier of a kind
///   the account already has replaces it, and the old one goes to history.
/// - An e-mail address belongs to at most one *active* account (see docs/identifiers.md).
/// - Creating generates a 256-bit password, hashed with argon2id off the event loop; the
///   plaintext is dropped at once and the account is flagged for a password reset.
///
/// Every call is one write transaction that re-reads the current state, so concurrent calls
/// for the same regulator serialise: no duplicate account, no lost update, and a unique-index
/// violation (should one ever slip through) becomes a 409, never a 5xx.
public final class Provisioner: Sendable {
    public let database: AccountDatabase
    public let hasher: PasswordHasher
    /// Sessions belong to Habilitation: counted through it, in this module's transactions.
    private let sessions: any AccountSessions
    private let queries = AccountQueries()
    private let audit = AuditLog()
    private let writes = AccountWrites()
    private let clock: @Sendable () -> Date
    private let logger: Logger

    public init(database: AccountDatabase, hasher: PasswordHasher, sessions: any AccountSessions,
                logger: Logger = Logger(label: "accounts.provisioning"), clock: @escaping @Sendable () -> Date = Date.init) {
        self.database = database
        self.sessions = sessions
        self.hasher = hasher
        self.logger = logger
        self.clock = clock
    }

    private enum Attempt {
        case done(ProvisioningResult)
        case needsPasswordHash
    }

    /// Applies a create or conditional update; records the audit event in the same
    /// transaction. Throws ``FHIRError`` (conflict, unprocessable, precondition) with nothing
    /// written.
    public func provision(_ request: ProvisioningRequest, context: CallContext) async throws(FHIRError) -> ProvisioningResult {
        var passwordHash: String?
        // Two passes at most in practice: one to learn that a create is needed (nothing is
        // written then), one with the hash. A third covers a concurrent change in between.
        for _ in 0..<4 {
            let attempt: Attempt
            do {
                let hash = passwordHash
                attempt = try await database.write { db in
                    try self.apply(request, passwordHash: hash, context: context, db: db)
                }
            } catch let error as FHIRError {
                throw error
            } catch StorageError.outcomeUnknown(let message) {
                logger.error("provisioning outcome unknown: the database connection was lost at COMMIT", metadata: ["error": "\(message)"])
                throw .databaseOutcomeUnknown
            } catch let error as StorageError where error.isTransient {
                logger.error("provisioning failed: database unavailable", metadata: ["error": "\(error)"])
                throw .databaseUnavailable
            } catch StorageError.constraintViolation(let message) {
                // The database's own words name tables, columns and constraints (a trigger's
                // message too): for the log, not for the caller.
                logger.warning("provisioning refused by a database constraint", metadata: ["error": "\(message)"])
                throw FHIRError(.conflict, code: .duplicate,
                                "The change conflicts with another account's data (a uniqueness rule, or a change made at the same moment); nothing was changed.")
            } catch {
                logger.error("provisioning failed", metadata: ["error": "\(error)"])
                throw FHIRError(.internalError, code: .exception, "The change could not be stored; nothing was changed.")
            }
            switch attempt {
            case .done(let result):
                return result
            case .needsPasswordHash:
                var password = PasswordGenerator.generate()
                defer { for index in password.indices { password[index] = 0 } }
                do {
                    passwordHash = try await hasher.hash(password)
                } catch {
                    logger.error("password hashing failed", metadata: ["error": "\(error)"])
                    throw FHIRError(.internalError, code: .exception, "The account could not be created; nothing was changed.")
                }
            }
        }
        throw FHIRError(.internalError, code: .exception, "The change kept racing with other calls; nothing was changed. Retry.")
    }

    /// Records a refused call (validation, conflict, precondition...) in the audit trail.
    /// The event names the account the refusal is about (``FHIRError/accountID``), else the
    /// account holding the call's target identifier, if any: the account's own trail then
    /// shows the attempts against it (a stale version, its identifier asked for by a create).
    public func recordRefusal(action: String, identifier: String?, outcome: String, detail: String, accountID: String? = nil,
                              target: RegulatorIdentifier? = nil, context: CallContext) async {
        let at = clock()
        do {
            try await database.write { db in
                var concerned = accountID
                if concerned == nil, let target { concerned = try self.queries.holder(of: target, in: db)?.id }
                let event = AuditEvent(at: at, surface: "int_r02", action: action, outcome: outcome, actor: context.actor,
                                       requestID: context.requestID, identifier: identifier, accountID: concerned, changes: [], detail: detail)
                try self.audit.append(event, in: db)
            }
        } catch {
            logger.error("could not record refused call in audit trail", metadata: ["error": "\(error)"])
        }
    }

    // MARK: The transaction

    private func apply(_ request: ProvisioningRequest, passwordHash: String?, context: CallContext, db: any SQLTransaction) throws -> Attempt {
        // Millisecond precision, as stored: the snapshot answered must equal what a read returns.
        let now = Date(epochMilliseconds: clock().epochMilliseconds)
        switch request {
        case .create(let record, let ifNoneExist):
            if let ifNoneExist, let (holder, current) = try queries.holderWithIdentifiers(of: ifNoneExist, in: db) {
                // FHIR conditional create: one match is the answer; nothing is written but
                // the audit line (as for an unchanged update).
                try audit.append(AuditEvent(at: now, surface: "int_r02", action: "create", outcome: "200 matched If-None-Exist",
                                            actor: context.actor, requestID: context.requestID, identifier: ifNoneExist.description,
                                            accountID: holder.id, changes: [], detail: nil), in: db)
                return .done(ProvisioningResult(kind: .unchanged, account: AccountSnapshot(row: holder, identifiers: current), changes: []))
            }
            try checkCreatable(identifiers: record.identifiers, record: record, byPOST: true, db: db)
            guard let passwordHash else { return .needsPasswordHash }
            return .done(try insertAccount(record, identifiers: record.identifiers, passwordHash: passwordHash,
                                           now: now, action: request.action, auditIdentifier: request.auditIdentifier,
                                           context: context, db: db))

        case .conditionalUpdate(let target, let record, let ifMatch, let also):
            if let (holder, current) = try queries.holderWithIdentifiers(of: target, in: db) {
                try Self.check(ifMatch: ifMatch, also: also, against: holder, target: target)
                return .done(try update(holder, current: current, with: record, now: now, target: target, context: context, db: db))
            }
            // The retry of a change of identifier (PUT ?identifier=A with B in the body, its
            // answer lost): A was replaced by B on an account that still holds B. That account
            // is the one meant, and the retry is answered as the first call was (unchanged),
            // not as a contradiction (422) or a new account.
            if let sameKind = record.identifier(of: target.kind), sameKind != target,
               let latest = try queries.latestAssignment(of: target, in: db), latest.endedReason == .replaced,
               let (holder, current) = try queries.holderWithIdentifiers(of: sameKind, in: db), holder.id == latest.accountId {
                try Self.check(ifMatch: ifMatch, also: also, against: holder, target: target)
                return .done(try update(holder, current: current, with: record, now: now, target: target, context: context, db: db))
            }
            if ifMatch != nil {
                throw FHIRError(.preconditionFailed, code: .conflict, "If-Match was sent but no account holds \(target); nothing was created.", location: ["http.If-Match"])
            }
            // No match: the PUT creates (upsert). The URL's identifier joins the body's; if the
            // body names another identifier of the same kind, the request contradicts itself.
            var identifiers = record.identifiers
            if let sameKind = record.identifier(of: target.kind) {
                if sameKind != target {
                    throw FHIRError(.unprocessable, code: .invariant,
                                    "No account holds \(target), and the body carries a different \(target.kind.typeCode) (\(sameKind.value)): the request contradicts itself, nothing was created.",
                                    expression: ["Practitioner.identifier"])
                }
            } else {
                identifiers.append(target)
            }
            try checkCreatable(identifiers: identifiers, record: record, byPOST: false, db: db)
            guard let passwordHash else { return .needsPasswordHash }
            return .done(try insertAccount(record, identifiers: identifiers, passwordHash: passwordHash, now: now,
                                           action: request.action, auditIdentifier: target.description, context: context, db: db))
        }
    }

    /// `byPOST`: a create by POST, whose retries each create (a PUT's retry matches what its
    /// first call created, so it needs no such rule).
    private func checkCreatable(identifiers: [RegulatorIdentifier], record: RegulatorRecord, byPOST: Bool, db: any SQLTransaction) throws {
        for identifier in identifiers {
            guard let holder = try queries.holder(of: identifier, in: db) else { continue }
            if holder.active {
                throw FHIRError(.conflict, code: .duplicate,
                                "A regulator account with \(identifier) already exists (Practitioner/\(holder.id)); use PUT ?identifier=\(identifier) to update it.",
                                expression: [expression(for: identifier)]).concerning(holder.id)
            }
            // A withdrawn account gives its identifier up to an account that will be active
            // (re-attribution). Creating a withdrawn account would only move the identifier
            // from one withdrawn account to a new one, once per retry: refused, so that a
            // repeated POST leaves one account, as it does for an active one.
            if byPOST && !record.active {
                throw FHIRError(.conflict, code: .duplicate,
                                "A withdrawn regulator account with \(identifier) already exists (Practitioner/\(holder.id)); use PUT ?identifier=\(identifier) to update it.",
                                expression: [expression(for: identifier)]).concerning(holder.id)
            }
        }
        if record.active, let other = try queries.activeAccount(withEmailKey: record.email.key, excluding: nil, in: db) {
            throw emailConflict(record.email, other: other)
        }
    }

    private func emailConflict(_ email: EmailAddress, other: AccountRow) -> FHIRError {
        FHIRError(.conflict, code: .duplicate,
                  "The e-mail address \(email) is already used by another active account (Practitioner/\(other.id)).",
                  expression: ["Practitioner.telecom[0].value"]).concerning(other.id)
    }

    /// Names a body identifier by its system (FHIRPath), as its index is not known here.
    private func expression(for identifier: RegulatorIdentifier) -> String {
        "Practitioner.identifier.where(system='\(identifier.system)')"
    }

    private func insertAccount(_ record: RegulatorRecord, identifiers: [RegulatorIdentifier], passwordHash: String, now: Date,
                               action: String, auditIdentifier: String, context: CallContext, db: any SQLTransaction) throws -> ProvisioningResult {
        let row = AccountRow(
            id: UUID().uuidString.lowercased(), version: 1, active: record.active,
            familyName: record.familyName, givenName: record.givenName,
            email: record.email.value, emailKey: record.email.key,
            passwordHash: passwordHash, passwordResetRequired: true,
            createdAt: now, updatedAt: now, activeChangedAt: now
        )
        try writes.insert(row, in: db)
        var changes = [
            FieldChange(field: "active", old: nil, new: String(record.active)),
            FieldChange(field: "familyName", old: nil, new: record.familyName),
            FieldChange(field: "givenName", old: nil, new: record.givenName),
            FieldChange(field: "email", old: nil, new: record.email.value),
        ]
        for identifier in identifiers {
            try assign(identifier, to: row.id, now: now, context: context, db: db)
            changes.append(FieldChange(field: Self.fieldName(identifier.kind), old: nil, new: identifier.value))
        }
        try audit.append(AuditEvent(at: now, surface: "int_r02", action: action, outcome: "201 created", actor: context.actor,
                                    requestID: context.requestID, identifier: auditIdentifier, accountID: row.id,
                                    changes: changes, detail: ignoredDetail(record)), in: db)
        let snapshot = AccountSnapshot(row: row, identifiers: try queries.currentIdentifiers(of: row.id, in: db))
        return ProvisioningResult(kind: .created, account: snapshot, changes: changes)
    }

    /// RFC 9110 §13.2.2's order for the account a conditional update matched: `If-Match`,
    /// else `If-Unmodified-Since`; then `If-None-Match`. Any that fails is a 412, nothing written.
    static func check(ifMatch: VersionPrecondition?, also: UpdatePreconditions, against existing: AccountRow, target: RegulatorIdentifier) throws(FHIRError) {
        if case .versions(let versions) = ifMatch, !versions.contains(existing.version) {
            throw Self.preconditionFailed(existing.id, code: .conflict,
                                          "If-Match names version \(versions.map(String.init).joined(separator: ", ")) but Practitioner/\(existing.id) is at version \(existing.version); nothing was changed.",
                                          location: ["http.If-Match"])
        }
        if ifMatch == nil, let since = also.ifUnmodifiedSince,
           existing.updatedAt.timeIntervalSince1970.rounded(.down) > since.timeIntervalSince1970 {
            throw Self.preconditionFailed(existing.id, code: .conflict,
                                          "Practitioner/\(existing.id) changed after If-Unmodified-Since (its version \(existing.version) is of a later date); nothing was changed.",
                                          location: ["http.If-Unmodified-Since"])
        }
        switch also.ifNoneMatch {
        case .exists?:
            throw Self.preconditionFailed(existing.id, code: .conflict,
                                          "If-None-Match: * asks to create only, and Practitioner/\(existing.id) holds \(target); nothing was changed.",
                                          location: ["http.If-None-Match"])
        case .versions(let versions)? where versions.contains(existing.version):
            throw Self.preconditionFailed(existing.id, code: .conflict,
                                          "If-None-Match names version \(existing.version), the version Practitioner/\(existing.id) is at; nothing was changed.",
                                          location: ["http.If-None-Match"])
        default:
            break
        }
    }

    /// A 412 about `accountID`.
    static func preconditionFailed(_ accountID: String, code: FHIRIssue.Code, _ diagnostics: String, location: [String]) -> FHIRError {
        FHIRError(.preconditionFailed, code: code, diagnostics, location: location).concerning(accountID)
    }

    private func update(_ existing: AccountRow, current: [IdentifierAssignment], with record: RegulatorRecord, now: Date,
                        target: RegulatorIdentifier, context: CallContext, db: any SQLTransaction) throws -> ProvisioningResult {
        var row = existing
        var changes: [FieldChange] = []
        var identifiersChanged = false
        var nationalIDReplaced = false

        // Identifiers first: conflicts abort the transaction before anything else counts.
        for identifier in record.identifiers {
            let held = current.first { $0.kind == identifier.kind.rawValue }
            if held?.value == identifier.value { continue }
            if let holder = try queries.holder(of: identifier, in: db), holder.id != existing.id, holder.active {
                throw FHIRError(.conflict, code: .duplicate,
                                "\(identifier) belongs to another active account (Practitioner/\(holder.id)); it can move only once that account is deactivated. Nothing was changed.",
                                expression: [expression(for: identifier)]).concerning(holder.id)
            }
            if let held, let heldIdentifier = held.identifier {
                try writes.endAssignment(of: heldIdentifier, at: now, reason: .replaced, by: nil, in: db)
                if heldIdentifier.kind == .national { nationalIDReplaced = true }
            }
            try assign(identifier, to: existing.id, now: now, context: context, db: db)
            identifiersChanged = true
            changes.append(FieldChange(field: Self.fieldName(identifier.kind), old: held?.value, new: identifier.value))
        }

        if row.active != record.active {
            changes.append(FieldChange(field: "active", old: String(row.active), new: String(record.active)))
            row.active = record.active
            row.activeChangedAt = now
        }
        if row.familyName != record.familyName {
            changes.append(FieldChange(field: "familyName", old: row.familyName, new: record.familyName))
            row.familyName = record.familyName
        }
        if row.givenName != record.givenName {
            changes.append(FieldChange(field: "givenName", old: row.givenName, new: record.givenName))
            row.givenName = record.givenName
        }
        let emailChanged = row.email != record.email.value
        if emailChanged {
            changes.append(FieldChange(field: "email", old: row.email, new: record.email.value))
            row.email = record.email.value
            row.emailKey = record.email.key
        }
        if row.active && (emailChanged || !existing.active),
           let other = try queries.activeAccount(withEmailKey: row.emailKey, excluding: row.id, in: db) {
            throw emailConflict(record.email, other: other)
        }

        // A reset link was mailed to the address the account had when it was asked for: once
        // the SAS changes that address, or deactivates the account, a link still travelling
        // (or sitting in an old mailbox) must no longer set the password.
        var voidedLinks: VoidedLinks?
        if emailChanged || (existing.active && !row.active) {
            voidedLinks = try ResetLinkLedger().voidAll(of: row.id, at: now, in: db)
        }

        let kind: ProvisioningResult.Kind
        if changes.isEmpty {
            kind = .unchanged
        } else {
            kind = .updated
            row.version += 1
            row.updatedAt = now
            try writes.update(row, in: db)
        }
        try audit.append(AuditEvent(at: now, surface: "int_r02", action: "conditional-update", outcome: "200 \(kind.rawValue)",
                                    actor: context.actor, requestID: context.requestID, identifier: target.description,
                                    accountID: row.id, changes: changes,
                                    detail: [ignoredDetail(record), voidedLinks?.summary]
                                        .compactMap { $0 }.joined(separator: "; ").nilIfEmpty), in: db)
        if existing.active != row.active {
            try recordHabilitationChange(accountID: row.id, nowActive: row.active, now: now, target: target, context: context, db: db)
        }
        if nationalIDReplaced {
            // A Pro Santé Connect session was matched on the national id the SAS just
            // replaced (a correction: it was someone else's): it ends now, with its sign-ins
            // under way. Password sessions are the account's own and stay.
            let ended = try sessions.revokeProviderSessions(of: row.id, reason: .nationalIDReplaced, at: now, in: db)
            if ended > 0 {
                try audit.append(AuditEvent(at: now, surface: "int_r02", action: "sessions-revoked", outcome: "national id replaced",
                                            actor: context.actor, requestID: context.requestID, identifier: target.description,
                                            accountID: row.id, changes: [],
                                            detail: "\(ended) Pro Santé Connect session(s) ended"), in: db)
            }
        }
        // Read again only if this transaction changed them (one statement less per update).
        let snapshot = AccountSnapshot(row: row, identifiers: identifiersChanged ? try queries.currentIdentifiers(of: row.id, in: db) : current)
        return ProvisioningResult(kind: kind, account: snapshot, changes: changes)
    }

    /// The SAS's `active` flipped: the habilitation of every open SAS session of the account is
    /// withdrawn (or given back) from the next request on. Recorded with who did it and from
    /// where, and how many open sessions it touches.
    private func recordHabilitationChange(accountID: String, nowActive: Bool, now: Date, target: RegulatorIdentifier,
                                          context: CallContext, db: any SQLTransaction) throws {
        let open = try sessions.liveSASSessionCount(of: accountID, at: now, in: db)
        let suspended = try sessions.isSuspendedByVendor(accountID, in: db)
        let action = nowActive ? "habilitation-restored" : "habilitation-withdrawn"
        let outcome = nowActive ? (suspended ? "active again, still suspended by the vendor" : "active again") : "deactivated by the SAS"
        try audit.append(AuditEvent(at: now, surface: "int_r02", action: action, outcome: outcome, actor: context.actor,
                                    requestID: context.requestID, identifier: target.description, accountID: accountID, changes: [],
                                    detail: "\(open) open SAS session(s) affected from their next request"), in: db)
    }

    /// Gives `identifier` to `accountID`, taking it from a deactivated holder if there is one
    /// (re-attribution: the holder keeps it in its history, and its audit trail says so).
    private func assign(_ identifier: RegulatorIdentifier, to accountID: String, now: Date, context: CallContext, db: any SQLTransaction) throws {
        if let holder = try queries.holder(of: identifier, in: db), holder.id != accountID {
            precondition(!holder.active, "active holders are refused before assignment")
            try writes.endAssignment(of: identifier, at: now, reason: .reattributed, by: accountID, in: db)
            try writes.newVersion(of: holder.id, at: now, in: db)
            // Its Pro Santé Connect sessions were matched on this national id.
            let ended = identifier.kind == .national
                ? try sessions.revokeProviderSessions(of: holder.id, reason: .nationalIDReattributed, at: now, in: db) : 0
            try audit.append(AuditEvent(at: now, surface: "int_r02", action: "identifier-reattributed", outcome: "moved",
                                        actor: context.actor, requestID: context.requestID, identifier: identifier.description,
                                        accountID: holder.id,
                                        changes: [FieldChange(field: Self.fieldName(identifier.kind), old: identifier.value, new: nil)],
                                        detail: "re-attributed to Practitioner/\(accountID) after deactivation"
                                            + (ended > 0 ? "; \(ended) Pro Santé Connect session(s) ended" : "")), in: db)
        }
        try writes.assign(identifier, to: accountID, at: now, in: db)
    }

    private func ignoredDetail(_ record: RegulatorRecord) -> String? {
        record.ignoredIdentifierSystems.isEmpty ? nil
            : "ignored identifier systems: \(record.ignoredIdentifierSystems.joined(separator: ", "))"
    }

    static func fieldName(_ kind: RegulatorIdentifier.Kind) -> String {
        kind == .national ? "nationalId" : "sasTechnicalId"
    }
}

extension String {
    /// nil for the empty string: optional text columns store NULL rather than "".
    var nilIfEmpty: String? { isEmpty ? nil : self }
}
