import Accounts
import Foundation
import Habilitation
import Storage

/// The JSON shapes of the admin surfaces, shared by the CLI (`--json`) and the admin API so
/// both say the same thing the same way. Never contains a secret: no password hash, no TOTP
/// secret, no session id (only a prefix of its hash).
enum AdminJSON {
    static func string(_ value: String?) -> JSONValue { value.map(JSONValue.string) ?? .null }
    static func time(_ date: Date?) -> JSONValue { date.map { .string(AuditLog.timestamp($0)) } ?? .null }
    static func int(_ value: Int) -> JSONValue { .number(String(value)) }

    static func listing(_ listing: AccountListing, at now: Date = Date()) -> JSONValue {
        var object: JSONObject = [:]
        object["id"] = .string(listing.accountID)
        object["given_name"] = .string(listing.givenName)
        object["family_name"] = .string(listing.familyName)
        object["email"] = .string(listing.email)
        object["national_id"] = string(listing.nationalID)
        object["sas_technical_id"] = string(listing.sasTechnicalID)
        object["active"] = .bool(listing.active)
        if let suspension = listing.suspension {
            object["suspension"] = .object(["at": time(suspension.at), "by": string(suspension.by), "reason": string(suspension.reason)])
        } else {
            object["suspension"] = .null
        }
        object["locked_until"] = time(listing.lockedUntil.flatMap { $0 > now ? $0 : nil })
        object["live_sessions"] = int(listing.liveSessions)
        object["updated_at"] = time(listing.updatedAt)
        return .object(object)
    }

    static func detail(_ detail: AccountDetail) -> JSONValue {
        guard case .object(var object) = listing(detail.listing) else { return .null }
        object["version"] = int(detail.version)
        object["created_at"] = time(detail.createdAt)
        object["password_reset_required"] = .bool(detail.passwordResetRequired)
        object["failed_sign_ins"] = int(detail.failedSignIns)
        object["second_factor_enrolled"] = .bool(detail.secondFactorEnrolled)
        object["cgu_acceptances"] = .array(detail.cguAcceptances.map { .object(["version": .string($0.version), "at": time($0.at)]) })
        object["identifier_history"] = .array(detail.identifierHistory.map { assignment in
            .object([
                "kind": .string(assignment.kind), "value": .string(assignment.value), "assigned_at": time(assignment.assignedAt),
                "ended_at": time(assignment.endedAt), "ended_reason": string(assignment.endedReason?.rawValue),
                "ended_in_favour_of": string(assignment.endedByAccountId),
            ])
        })
        object["sessions"] = .array(detail.sessions.map { session in
            .object([
                "reference": .string(session.reference), "origin": .string(session.origin.rawValue), "live": .bool(session.live),
                "created_at": time(session.createdAt), "last_seen_at": time(session.lastSeenAt),
                "absolute_expires_at": time(session.absoluteExpiresAt), "revoked_at": time(session.revokedAt),
                "revoked_reason": string(session.revokedReason), "address": string(session.address), "user_agent": string(session.userAgent),
            ])
        })
        object["audit"] = .array(detail.audit.map(\.jsonValue))
        return .object(object)
    }

    /// An erasure's answer: what went, in counts (nothing of what was erased).
    /// `log`: what became of the database's own older copies (``LogScrub``), when the erasure
    /// scrubbed it itself; `erase-deactivated` scrubs once, after its last erasure, and says so
    /// on its count line.
    static func erasure(accountID: String, _ erased: AccountErasure.Erased, sessions: Int, log: LogScrub? = nil) -> JSONValue {
        var object: JSONObject = [
            "id": .string(accountID), "action": .string("erase"), "changed": .bool(true), "sessions": int(sessions),
            "identifiers": int(erased.identifiers), "totp_secrets": int(erased.totpSecrets), "recovery_codes": int(erased.recoveryCodes),
            "reset_links": int(erased.resetLinks), "cgu_acceptances": int(erased.cguAcceptances), "queued_mails": int(erased.mails)]
        if let log { object["database_log"] = .string(log.rawValue) }
        return .object(object)
    }

    static func action(_ name: String, _ result: AdminActionResult) -> JSONValue {
        .object(["id": .string(result.accountID), "action": .string(name), "changed": .bool(result.changed), "sessions": int(result.sessions),
                 "reset_links": int(result.resetLinks)])
    }
}
