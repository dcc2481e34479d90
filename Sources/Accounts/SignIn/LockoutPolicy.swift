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
/// failure: counted from the last failure below the threshold (Keycloak's "failure reset
/// time"), from the end of the last lock past it. Without the former, two typos in March and
/// three in June locked the regulator out as five guesses in a row would.
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
        /// When the last counted failure happened (nil: none since the count was last
        /// cleared, or counted by a version that did not record it).
        public var lastFailureAt: Date?

        public init(consecutiveFailures: Int = 0, lockedUntil: Date? = nil, lastFailureAt: Date? = nil) {
            self.consecutiveFailures = consecutiveFailures
            self.lockedUntil = lockedUntil
            self.lastFailureAt = lastFailureAt
        }

        /// Where the quiet time that restarts the count is measured from: the later of the
        /// last failure and the end of the last lock (past the threshold, the lock ends after
        /// the failure that set it).
        var quietSince: Date? {
            switch (lockedUntil, lastFailureAt) {
            case let (lock?, failure?): max(lock, failure)
            case let (lock?, nil): lock
            case let (nil, failure?): failure
            case (nil, nil): nil
            }
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
        if let quietSince = state.quietSince, now >= quietSince.addingTimeInterval(Self.seconds(failureResetTime)) {
            previous = 0  // quiet long enough since the last failure or lock
        }
        let failures = previous + 1
        if let wait = wait(afterFailures: failures) {
            return (State(consecutiveFailures: failures, lockedUntil: now.addingTimeInterval(wait), lastFailureAt: now), true)
        }
        return (State(consecutiveFailures: failures, lockedUntil: nil, lastFailureAt: now), false)
    }

    public func recordingSuccess() -> State { State() }

    static func seconds(_ duration: Duration) -> TimeInterval {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
