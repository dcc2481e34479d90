import Foundation
import GRDB

/// The product's one SQLite database: accounts, identifier history, audit trail.
///
/// WAL journal with `synchronous=FULL`, so a commit is on disk before the request that made
/// it is acknowledged (an acknowledged write survives `kill -9` and power loss). Every
/// multi-step change runs inside a single `write` transaction; uniqueness is enforced by
/// unique indexes, never by a read-then-write check alone.
public final class AccountDatabase: Sendable {
    /// The GRDB pool: one serialised writer, concurrent readers (WAL snapshots).
    public let pool: DatabasePool
    public let path: String

    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    public init(path: String, readOnly: Bool = false) throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        if !readOnly {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        }
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(10)
        configuration.foreignKeysEnabled = true
        configuration.prepareDatabase { db in
            // FULL: the WAL is fsync'ed at every commit (NORMAL may lose the last commits
            // on power loss, which an acknowledged INT_R02 call must never do).
            try db.execute(sql: "PRAGMA synchronous = FULL")
        }
        self.path = path
        self.pool = try DatabasePool(path: path, configuration: configuration)
        if !readOnly {
            try Self.migrator.migrate(pool)
        }
    }

    /// Named, append-only migrations. A released migration is never edited: add a new one.
    public static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1-accounts-identifiers-audit") { db in
            // Timestamps are INTEGER milliseconds since the Unix epoch (UTC): exact round trips.
            try db.execute(sql: """
                CREATE TABLE account (
                    id TEXT PRIMARY KEY NOT NULL,
                    version INTEGER NOT NULL,
                    active INTEGER NOT NULL,
                    family_name TEXT NOT NULL,
                    given_name TEXT NOT NULL,
                    email TEXT NOT NULL,
                    email_key TEXT NOT NULL,
                    password_hash TEXT NOT NULL,
                    password_reset_required INTEGER NOT NULL,
                    created_at INTEGER NOT NULL,
                    updated_at INTEGER NOT NULL,
                    active_changed_at INTEGER NOT NULL
                ) STRICT;
                -- An e-mail address (case-folded) belongs to at most one active account.
                CREATE UNIQUE INDEX account_email_active ON account(email_key) WHERE active;
                CREATE INDEX account_email_key ON account(email_key);

                CREATE TABLE account_identifier (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    account_id TEXT NOT NULL REFERENCES account(id),
                    kind TEXT NOT NULL CHECK (kind IN ('IDNPS', 'INTRN')),
                    value TEXT NOT NULL,
                    assigned_at INTEGER NOT NULL,
                    ended_at INTEGER,
                    ended_reason TEXT CHECK (ended_reason IN ('replaced', 'reattributed')),
                    ended_by_account_id TEXT REFERENCES account(id),
                    CHECK ((ended_at IS NULL) = (ended_reason IS NULL))
                ) STRICT;
                -- An identifier has at most one current holder...
                CREATE UNIQUE INDEX identifier_current ON account_identifier(kind, value) WHERE ended_at IS NULL;
                -- ...and an account at most one current identifier of each kind.
                CREATE UNIQUE INDEX identifier_current_per_account ON account_identifier(account_id, kind) WHERE ended_at IS NULL;
                CREATE INDEX identifier_history ON account_identifier(account_id, assigned_at);

                CREATE TABLE audit_event (
                    seq INTEGER PRIMARY KEY AUTOINCREMENT,
                    at INTEGER NOT NULL,
                    surface TEXT NOT NULL,
                    action TEXT NOT NULL,
                    outcome TEXT NOT NULL,
                    actor_subject TEXT,
                    actor_serial TEXT,
                    actor_address TEXT,
                    request_id TEXT,
                    identifier TEXT,
                    account_id TEXT,
                    changes TEXT,
                    detail TEXT
                ) STRICT;
                CREATE INDEX audit_event_account ON audit_event(account_id, seq);
                CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON audit_event
                    BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
                CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
                    BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
                """)
        }
        return migrator
    }
}
