/// How a session began: only a session started from the SAS redirect (`origin=sas`) can
/// ever carry the regulator habilitation. Fixed when the session is created.
public enum SessionOrigin: String, Sendable, Equatable {
    case sas
    case direct
}

/// How a session's holder proved who they are. Fixed when the session is created.
public enum SessionAuthentication: String, Sendable, Equatable {
    /// Password and a second factor (TOTP or a recovery code), on this server.
    case password
    /// Pro Santé Connect (e-CPS or CPS card): the provider's authentication stands for both
    /// factors, so neither a password of ours nor a TOTP is required of such a session.
    case psc
}

/// A first-sign-in step that must be completed before the habilitation holds
/// (Keycloak's "required actions").
public enum RequiredAction: String, Sendable, Equatable, CaseIterable {
    /// The password is still the generated one nobody knows.
    case setPassword = "set-password"
    /// No second factor enrolled yet.
    case enrolSecondFactor = "enrol-second-factor"
    /// The current CGU version has not been accepted.
    case acceptCGU = "accept-cgu"
}

/// Every fact the decision depends on, read from the database at the moment of the request.
public struct HabilitationFacts: Sendable, Equatable {
    /// Not expired (idle or absolute) and not revoked.
    public var sessionLive: Bool
    public var sessionOrigin: SessionOrigin
    /// The SAS's last `active` value for the account.
    public var accountActive: Bool
    /// A vendor admin's suspension, independent of the SAS's `active`.
    public var suspendedByVendor: Bool
    public var pendingActions: [RequiredAction]

    public init(sessionLive: Bool, sessionOrigin: SessionOrigin, accountActive: Bool, suspendedByVendor: Bool, pendingActions: [RequiredAction]) {
        self.sessionLive = sessionLive
        self.sessionOrigin = sessionOrigin
        self.accountActive = accountActive
        self.suspendedByVendor = suspendedByVendor
        self.pendingActions = pendingActions
    }
}

/// Why the habilitation does not hold; several may apply at once.
public enum HabilitationDenial: String, Sendable, Equatable, CaseIterable {
    case noLiveSession = "no-live-session"
    case directSession = "direct-session"
    case deactivatedBySAS = "deactivated-by-sas"
    case suspendedByVendor = "suspended-by-vendor"
    case requiredActionPending = "required-action-pending"
}

/// The answer for one request.
public enum HabilitationDecision: Sendable, Equatable {
    case granted
    case denied([HabilitationDenial])

    public var isGranted: Bool { self == .granted }
}

/// The one predicate that decides whether a request may use the regulator features:
/// live session ∧ origin is SAS ∧ account active ∧ not suspended by the vendor ∧ no pending
/// first-sign-in step. Pure and total, so it is trivially testable, and because its inputs are
/// read fresh on every request a withdrawal applies on the very next one.
public enum HabilitationPolicy {
    public static func evaluate(_ facts: HabilitationFacts) -> HabilitationDecision {
        var reasons: [HabilitationDenial] = []
        if !facts.sessionLive { reasons.append(.noLiveSession) }
        if facts.sessionOrigin != .sas { reasons.append(.directSession) }
        if !facts.accountActive { reasons.append(.deactivatedBySAS) }
        if facts.suspendedByVendor { reasons.append(.suspendedByVendor) }
        if !facts.pendingActions.isEmpty { reasons.append(.requiredActionPending) }
        return reasons.isEmpty ? .granted : .denied(reasons)
    }
}
