import Accounts
import Foundation
import Storage

/// One pass of the retention job: what sign-in leaves behind once it is of no use goes
/// (``SessionStore/purge(retention:)``, ``CredentialStore/purge(retention:)``), and, when
/// anything went, the database's log is scrubbed (``AccountDatabase/scrubLog()``), as after an
/// erasure. Without the scrub, SQLite's `-wal` keeps earlier images of the pages the purged
/// rows were on (an ended session's address and browser, an outbox row's recipient) until
/// it happens to write over them: a copy of the data folder would hold what the retention
/// period promised to delete.
public struct Retention: Sendable {
    private let database: AccountDatabase
    private let sessions: SessionStore
    private let credentials: CredentialStore

    public init(database: AccountDatabase, sessions: SessionStore, credentials: CredentialStore) {
        self.database = database
        self.sessions = sessions
        self.credentials = credentials
    }

    /// What a pass did: rows deleted, and the scrub's outcome (nil when nothing was deleted,
    /// so nothing was scrubbed).
    public struct Pass: Sendable, Equatable {
        public var deleted: Int
        public var log: LogScrub?

        public init(deleted: Int, log: LogScrub?) {
            self.deleted = deleted
            self.log = log
        }
    }

    /// Deletes what is past `retention` (or spent), then scrubs the log if anything went. A
    /// failed scrub is reported, not thrown: the rows stay deleted.
    public func purge(retention: TimeInterval) async throws -> Pass {
        let deleted = try await sessions.purge(retention: retention) + credentials.purge(retention: retention)
        guard deleted > 0 else { return Pass(deleted: 0, log: nil) }
        return Pass(deleted: deleted, log: (try? await database.scrubLog()) ?? .failed)
    }
}
