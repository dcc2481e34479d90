import Accounts
import Foundation
import GRDB

/// The answer for one request, with the facts it was computed from (for pages and logs).
public struct HabilitationCheck: Sendable, Equatable {
    public var session: WebSession?
    public var accountActive: Bool
    public var suspendedByVendor: Bool
    public var pendingActions: [RequiredAction]
    public var decision: HabilitationDecision
}

/// Evaluates ``HabilitationPolicy`` against the database for a session token: one indexed
/// query reads every fact at the moment of the request — nothing cached — so a withdrawal
/// (SAS `active:false`, vendor suspension, session revocation) applies on the next request.
public final class HabilitationService: Sendable {
    public let database: AccountDatabase
    public let sessions: SessionStore
    /// The CGU version in force; an acceptance of another version does not count.
    public let cguVersion: String
    private let clock: @Sendable () -> Date

    public init(database: AccountDatabase, sessions: SessionStore, cguVersion: String, clock: @escaping @Sendable () -> Date = Date.init) {
        self.database = database
        self.sessions = sessions
        self.cguVersion = cguVersion
        self.clock = clock
    }

    public func check(sessionToken: String?) async throws -> HabilitationCheck {
        let noSession = HabilitationCheck(session: nil, accountActive: false, suspendedByVendor: false, pendingActions: [],
                                          decision: .denied([.noLiveSession]))
        guard let sessionToken, let session = try await sessions.session(sessionToken) else { return noSession }
        let at = clock()
        let idle = sessions.configuration.idleTimeout
        let version = cguVersion
        let hash = SecretToken.hash(sessionToken)
        guard let facts = try await database.read({ db -> (active: Bool, suspended: Bool, resetRequired: Bool, hasTOTP: Bool, hasCGU: Bool)? in
            guard let row = try Row.fetchOne(db.cachedStatement(sql: """
                SELECT a.active, a.suspended_by_vendor_at, a.password_reset_required,
                       EXISTS (SELECT 1 FROM totp_credential t WHERE t.account_id = a.id AND t.confirmed_at IS NOT NULL) AS has_totp,
                       EXISTS (SELECT 1 FROM cgu_acceptance c WHERE c.account_id = a.id AND c.version = ?) AS has_cgu
                FROM web_session s JOIN account a ON a.id = s.account_id
                WHERE s.id_hash = ? AND s.revoked_at IS NULL AND s.absolute_expires_at > ? AND s.last_seen_at > ?
                """), arguments: [version, hash, at.epochMilliseconds, at.addingTimeInterval(-idle).epochMilliseconds]) else { return nil }
            return (row["active"], (row["suspended_by_vendor_at"] as Int64?) != nil, row["password_reset_required"], row["has_totp"], row["has_cgu"])
        }) else { return noSession }
        var pending: [RequiredAction] = []
        if facts.resetRequired { pending.append(.setPassword) }
        if !facts.hasTOTP { pending.append(.enrolSecondFactor) }
        if !facts.hasCGU { pending.append(.acceptCGU) }
        let inputs = HabilitationFacts(sessionLive: true, sessionOrigin: session.origin, accountActive: facts.active,
                                       suspendedByVendor: facts.suspended, pendingActions: pending)
        return HabilitationCheck(session: session, accountActive: inputs.accountActive, suspendedByVendor: inputs.suspendedByVendor,
                                 pendingActions: pending, decision: HabilitationPolicy.evaluate(inputs))
    }
}
