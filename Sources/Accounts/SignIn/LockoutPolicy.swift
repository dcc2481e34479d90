import Foundation

/// Brute-force protection of sign-in (SAS onboarding criterion "sign-in restricted after X
/// failed attempts"; Keycloak's brute-force detector with "wait increment" and "failure reset
/// time"): after `maximumFailures` consecutive failures the account cannot sign in for
/// `coolingPeriod`. The count is **not** restarted when a lock runs out: every further failure
/// locks again, for twice as long each time (at most `maximumWait`). Without that, someone
/// holding a phished password and many addresses got a fresh run of `maximumFailures`
/// second-factor guesses every cooling period, 480 a day at the defaults; with it, about
/// 11 in the first day and about one a day after. The count starts again only after a
/// completed sign-in (both factors), an admin unlock, or `failureResetTime` without any
/// failure after the last lock ran out.
///
/// No column beyond the two counters is needed: while the count is at or past the threshold,
/// the last failure is the one that set `lockedUntil`.
public struct LockoutPolicy: Sendable, Equatable {
    public var maximumFailures: Int
    public var coolingPeriod: Duration
    /// The longest lock an escalation reaches.
    public var maximumWait: Duration
    /// Quiet time, counted from the end of the last lock, after which the count starts again.
    public var failureResetTime: Duration

    public init(maximumFailures: Int = 5, coolingPeriod: Duration = .seconds(15 * 60),
                maximumWait: Duration = .seconds(24 * 3600), failureResetTime: Duration = .seconds(12 * 3600)) {
        self.maximumFailures = maximumFailures
        self.coolingPeriod = coolingPeriod
        self.maximumWait = max(maximumWait, coolingPeriod)
        self.failureResetTime = failureResetTime
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

    /// How long the lock set by the `failures`-th consecutive failure lasts (nil below the
    /// threshold): `coolingPeriod`, doubled by each failure past the threshold, at most
    /// `maximumWait`.
    public func wait(afterFailures failures: Int) -> TimeInterval? {
        guard failures >= maximumFailures else { return nil }
        let doublings = min(failures - maximumFailures, 32)
        return min(Self.seconds(coolingPeriod) * pow(2, Double(doublings)), Self.seconds(maximumWait))
    }

    /// The state after a failed attempt; `locked` says whether this failure started a lockout.
    public func recordingFailure(_ state: State, at now: Date) -> (state: State, locked: Bool) {
        if isLocked(state, at: now) { return (state, false) }
        var previous = state.consecutiveFailures
        if let lockedUntil = state.lockedUntil, now >= lockedUntil.addingTimeInterval(Self.seconds(failureResetTime)) {
            previous = 0  // quiet long enough since the last lock ran out
        }
        let failures = previous + 1
        if let wait = wait(afterFailures: failures) {
            return (State(consecutiveFailures: failures, lockedUntil: now.addingTimeInterval(wait)), true)
        }
        return (State(consecutiveFailures: failures, lockedUntil: nil), false)
    }

    public func recordingSuccess() -> State { State() }

    static func seconds(_ duration: Duration) -> TimeInterval {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
