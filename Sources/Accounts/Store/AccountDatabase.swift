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

    /// Reader connections of the pool; `read` admits this many at once.
    public static let readerCount = 8
    private let readGate = AsyncGate(permits: AccountDatabase.readerCount)
    private let writeGate = AsyncGate(permits: 1)

    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    public init(path: String, readOnly: Bool = false) throws {
        if !readOnly {
            try Self.prepareFiles(path: path)
        }
        var configuration = Configuration()
        configuration.readonly = readOnly
        configuration.busyMode = .timeout(10)
        configuration.foreignKeysEnabled = true
        configuration.maximumReaderCount = Self.readerCount
        configuration.prepareDatabase { db in
            // FULL: the WAL is fsync'ed at every commit (NORMAL may lose the last commits
            // on power loss, which an acknowledged INT_R02 call must never do).
            try db.execute(sql: "PRAGMA synchronous = FULL")
            // Deleted and overwritten content (scrubbed mail bodies, spent tokens' rows,
            // purged sessions) is zeroed, not left in free pages for a file copy to find.
            try db.execute(sql: "PRAGMA secure_delete = ON")
        }
        self.path = path
        self.pool = try DatabasePool(path: path, configuration: configuration)
        if !readOnly {
            try Self.migrator.migrate(pool)
        }
    }

    /// The database holds password hashes, sealed secrets and the audit trail: its directory
    /// is created 0700 and the file 0600 whatever the umask, and an existing file (or its
    /// `-wal`/`-shm`) left wider by an earlier version is narrowed. SQLite creates `-wal` and
    /// `-shm` with the main file's mode, so they follow.
    static func prepareFiles(path: String) throws {
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let manager = FileManager.default
        if !manager.fileExists(atPath: directory) {
            try manager.createDirectory(atPath: directory, withIntermediateDirectories: true)
            guard chmod(directory, 0o700) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: directory]) }
        }
        let descriptor = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
        defer { close(descriptor) }
        guard fchmod(descriptor, 0o600) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path]) }
        for suffix in ["-wal", "-shm", "-journal"] where manager.fileExists(atPath: path + suffix) {
            _ = chmod(path + suffix, 0o600)
        }
    }

    /// A read transaction (a WAL snapshot). Always use this rather than `pool.read`: GRDB waits
    /// for a free reader connection by *blocking* the calling thread, and a reader is only
    /// given back once its task resumes on a cooperative thread; with more concurrent reads
    /// than readers, every cooperative thread (one per core) could end up blocked and the
    /// whole process would deadlock. The gate makes excess reads suspend instead.
    public func read<T: Sendable>(_ block: @Sendable (Database) throws -> T) async throws -> T {
        try await readGate.withPermit { try await pool.read(block) }
    }

    /// A short indexed read run on the calling thread, for the per-request hot path
    /// (forward-auth, live habilitation checks): the hop to GRDB's reader queue and back costs
    /// more than such a query. Safe from the deadlock described in ``read(_:)``: the gate
    /// admits at most as many reads as there are reader connections, so GRDB never waits for
    /// a reader, and a reader is given back as soon as the synchronous call returns.
    public func pointRead<T: Sendable>(_ block: @Sendable (Database) throws -> T) async throws -> T {
        try await readGate.withPermit { try Self.readOnCallingThread(pool, block) }
    }

    private static func readOnCallingThread<T>(_ pool: DatabasePool, _ block: (Database) throws -> T) throws -> T {
        try pool.read(block)
    }

    /// A write transaction. Writes are serialised by SQLite anyway; the gate makes waiting
    /// writers suspend rather than hold a cooperative thread.
    public func write<T: Sendable>(_ block: @Sendable (Database) throws -> T) async throws -> T {
        try await writeGate.withPermit { try await pool.write(block) }
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
        migrator.registerMigration("v2-sign-in") { db in
            try db.execute(sql: """
                -- Brute-force protection and password state, on the account.
                ALTER TABLE account ADD COLUMN failed_sign_ins INTEGER NOT NULL DEFAULT 0;
                ALTER TABLE account ADD COLUMN locked_until INTEGER;
                ALTER TABLE account ADD COLUMN password_changed_at INTEGER;
                -- A vendor admin's suspension of the habilitation, independent of the SAS's
                -- `active` (a later active:true does not lift it).
                ALTER TABLE account ADD COLUMN suspended_by_vendor_at INTEGER;

                -- The TOTP secret is needed in clear to verify codes, so it is stored
                -- encrypted (AES-GCM, key from --secret-key-file), never hashed.
                CREATE TABLE totp_credential (
                    account_id TEXT PRIMARY KEY NOT NULL REFERENCES account(id),
                    sealed_secret BLOB NOT NULL,
                    created_at INTEGER NOT NULL,
                    confirmed_at INTEGER,
                    last_used_step INTEGER
                ) STRICT;

                CREATE TABLE recovery_code (
                    account_id TEXT NOT NULL REFERENCES account(id),
                    code_hash TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    used_at INTEGER,
                    PRIMARY KEY (account_id, code_hash)
                ) STRICT;

                CREATE TABLE password_reset_token (
                    token_hash TEXT PRIMARY KEY NOT NULL,
                    account_id TEXT NOT NULL REFERENCES account(id),
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    used_at INTEGER,
                    voided_at INTEGER
                ) STRICT;
                CREATE INDEX password_reset_token_account ON password_reset_token(account_id);

                CREATE TABLE cgu_acceptance (
                    account_id TEXT NOT NULL REFERENCES account(id),
                    version TEXT NOT NULL,
                    accepted_at INTEGER NOT NULL,
                    address TEXT,
                    PRIMARY KEY (account_id, version)
                ) STRICT;

                -- Created by the SAS entry (origin=sas); consumed by the session it starts.
                CREATE TABLE login_intent (
                    id_hash TEXT PRIMARY KEY NOT NULL,
                    origin TEXT NOT NULL CHECK (origin IN ('sas', 'direct')),
                    origin_value TEXT,
                    return_url TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    consumed_at INTEGER
                ) STRICT;

                -- A sign-in in progress: password verified, second factor and required
                -- actions to go. Becomes a session (new id) when they are done.
                CREATE TABLE sign_in_flow (
                    id_hash TEXT PRIMARY KEY NOT NULL,
                    account_id TEXT NOT NULL REFERENCES account(id),
                    intent_id_hash TEXT,
                    second_factor_at INTEGER,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    consumed_at INTEGER
                ) STRICT;

                CREATE TABLE web_session (
                    id_hash TEXT PRIMARY KEY NOT NULL,
                    account_id TEXT NOT NULL REFERENCES account(id),
                    origin TEXT NOT NULL CHECK (origin IN ('sas', 'direct')),
                    created_at INTEGER NOT NULL,
                    last_seen_at INTEGER NOT NULL,
                    absolute_expires_at INTEGER NOT NULL,
                    revoked_at INTEGER,
                    revoked_reason TEXT,
                    address TEXT,
                    user_agent TEXT
                ) STRICT;
                CREATE INDEX web_session_account ON web_session(account_id) WHERE revoked_at IS NULL;

                -- Durable outbox: a mail is committed with the change that causes it and
                -- delivered (with retries) by the mailer; its body is scrubbed once sent.
                CREATE TABLE mail_outbox (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    recipient TEXT NOT NULL,
                    subject TEXT NOT NULL,
                    body TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    next_attempt_at INTEGER NOT NULL,
                    sent_at INTEGER,
                    last_error TEXT
                ) STRICT;
                CREATE INDEX mail_outbox_due ON mail_outbox(next_attempt_at) WHERE sent_at IS NULL;
                """)
        }
        migrator.registerMigration("v3-vendor-admin") { db in
            try db.execute(sql: """
                -- Who suspended the habilitation and why (the audit trail has the full story;
                -- these make the current state readable without it).
                ALTER TABLE account ADD COLUMN suspended_by TEXT;
                ALTER TABLE account ADD COLUMN suspension_reason TEXT;
                """)
        }
        migrator.registerMigration("v4-audit-no-replace") { db in
            // `INSERT OR REPLACE` (and `REPLACE INTO`) with an existing seq deletes the old row
            // without firing the DELETE trigger (recursive triggers are off), so v1's triggers
            // alone let a row be rewritten. Refuse any insert that names an existing seq.
            try db.execute(sql: """
                CREATE TRIGGER audit_event_no_replace BEFORE INSERT ON audit_event
                    WHEN NEW.seq IS NOT NULL AND EXISTS (SELECT 1 FROM audit_event WHERE seq = NEW.seq)
                    BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
                """)
        }
        migrator.registerMigration("v5-sign-in-flow-failed-codes") { db in
            // Wrong second-factor codes within one sign-in flow: the flow ends after a few.
            try db.execute(sql: "ALTER TABLE sign_in_flow ADD COLUMN failed_codes INTEGER NOT NULL DEFAULT 0")
        }
        migrator.registerMigration("v6-provider-sign-in") { db in
            // Sign-in through an OpenID Connect provider (Pro Santé Connect). A login at the
            // provider is known by the SHA-256 of its `state`, bound to the login intent it
            // serves; flows and sessions record how they were authenticated, and for a
            // provider sign-in the provider's subject and session id (back-channel logout
            // finds sessions by them) and the ID token sealed with the server key (only sent
            // back to the provider as `id_token_hint` at sign-out).
            try db.execute(sql: """
                CREATE TABLE oidc_login (
                    state_hash TEXT PRIMARY KEY NOT NULL,
                    intent_id_hash TEXT NOT NULL,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL,
                    consumed_at INTEGER
                ) STRICT;
                ALTER TABLE sign_in_flow ADD COLUMN authentication TEXT NOT NULL DEFAULT 'password' CHECK (authentication IN ('password', 'psc'));
                ALTER TABLE sign_in_flow ADD COLUMN oidc_subject TEXT;
                ALTER TABLE sign_in_flow ADD COLUMN oidc_session_id TEXT;
                ALTER TABLE sign_in_flow ADD COLUMN oidc_id_token BLOB;
                ALTER TABLE web_session ADD COLUMN authentication TEXT NOT NULL DEFAULT 'password' CHECK (authentication IN ('password', 'psc'));
                ALTER TABLE web_session ADD COLUMN oidc_subject TEXT;
                ALTER TABLE web_session ADD COLUMN oidc_session_id TEXT;
                ALTER TABLE web_session ADD COLUMN oidc_id_token BLOB;
                CREATE INDEX web_session_oidc_subject ON web_session(oidc_subject) WHERE revoked_at IS NULL AND oidc_subject IS NOT NULL;
                """)
        }
        return migrator
    }
}
