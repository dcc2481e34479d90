import Foundation

/// Brute-force protection of sign-in (SAS onboarding criterion "sign-in restricted after X
/// failed attempts", Keycloak's "permanent lockout off, wait increment"): after
/// `maximumFailures` consecutive failures the account cannot sign in for `coolingPeriod`;
/// a success resets the count.
public struct LockoutPolicy: Sendable, Equatable {
    public var maximumFailures: Int
    public var coolingPeriod: Duration

    public init(maximumFailures: Int = 5, coolingPeriod: Duration = .seconds(15 * 60)) {
        self.maximumFailures = maximumFailures
        self.coolingPeriod = coolingPeriod
    }

    /// The account's counters, as stored on the account.
    public struct State: Sendable, Equatable {
        public var consecutiveFailures: Int
        public var lockedUntil: Date?

        public init(consecutiveFailures: Int = 0, lockedUntil: Date? = nil) {
            self.consecutiveFailures = consecutiveFailures
            self.lockedUntil = lockedUntil
        }
    }

    public func isLocked(_ state: State, at now: Date) -> Bool {
        guard let lockedUntil = state.lockedUntil else { return false }
        return now < lockedUntil
    }

    /// The state after a failed attempt; `locked` says whether this failure started a lockout.
    public func recordingFailure(_ state: State, at now: Date) -> (state: State, locked: Bool) {
        if isLocked(state, at: now) { return (state, false) }
        // A lockout that has run out starts a fresh count.
        let previous = state.lockedUntil == nil ? state.consecutiveFailures : 0
        let failures = previous + 1
        if failures >= maximumFailures {
            let seconds = Double(coolingPeriod.components.seconds) + Double(coolingPeriod.components.attoseconds) / 1e18
            return (State(consecutiveFailures: failures, lockedUntil: now.addingTimeInterval(seconds)), true)
        }
        return (State(consecutiveFailures: failures, lockedUntil: nil), false)
    }

    public func recordingSuccess() -> State { State() }
}
