import Accounts
import Foundation
import Storage
import Synchronization

/// One pass of the retention job: what sign-in leaves behind once it is of no use goes
/// (``SessionStore/purge(retention:)``, ``CredentialStore/purge(retention:)``), and, when
/// anything went, the database's log is scrubbed (``AccountDatabase/scrubLog()``), as after an
/// erasure. Without the scrub, SQLite's `-wal` keeps earlier images of the pages the purged
/// rows were on (an ended session's address and browser, an outbox row's recipient) until
/// it happens to write over them: a copy of the data folder would hold what the retention
/// period promised to delete. A scrub that did not complete (a reader held the log back, or
/// it failed) is tried again at the next pass, whether or not that one deletes anything.
public final class Retention: Sendable {
    private let database: AccountDatabase
    private let sessions: SessionStore
    private let credentials: CredentialStore
    /// Whether the last scrub did not complete.
    private let scrubOwed = Mutex(false)

    public init(database: AccountDatabase, sessions: SessionStore, credentials: CredentialStore) {
        self.database = database
        self.sessions = sessions
        self.credentials = credentials
    }

    /// What a pass did: rows deleted, and the scrub's outcome (nil when none was needed).
    public struct Pass: Sendable, Equatable {
        public var deleted: Int
        public var log: LogScrub?
        /// Why the scrub failed, when it did (for the log).
        public var failure: String?

        public init(deleted: Int, log: LogScrub?, failure: String? = nil) {
            self.deleted = deleted
            self.log = log
            self.failure = failure
        }
    }

    /// Deletes what is past `retention` (or spent), then scrubs the log if anything went or
    /// the last scrub is owed. A failed scrub is reported, not thrown: the rows stay deleted.
    public func purge(retention: TimeInterval) async throws -> Pass {
        let deleted = try await sessions.purge(retention: retention) + credentials.purge(retention: retention)
        guard deleted > 0 || scrubOwed.withLock({ $0 }) else { return Pass(deleted: 0, log: nil) }
        let pass: Pass
        do {
            pass = Pass(deleted: deleted, log: try await database.scrubLog())
        } catch {
            pass = Pass(deleted: deleted, log: .failed, failure: "\(error)")
        }
        scrubOwed.withLock { $0 = pass.log == .heldBack || pass.log == .failed }
        return pass
    }
}
