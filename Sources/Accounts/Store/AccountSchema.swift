import Storage

/// The product's schema on both engines: one history per engine, applied in order at start.
///
/// Table owners (the only modules whose SQL names them): Accounts — `account`,
/// `account_identifier`, `audit_event`, `totp_credential`, `recovery_code`,
/// `password_reset_token`, `cgu_acceptance`, `mail_outbox`, `secret_key_check`; Habilitation — `login_intent`,
/// `sign_in_flow`, `web_session`, `oidc_login`, `vendor_suspension`, `provider_logout`. Habilitation reads
/// Accounts' tables (its checks join them) but never writes them; Accounts never names
/// Habilitation's (`scripts/check-boundary.sh`). The schema is one history because the tables
/// reference each other (a session belongs to an account) and a database is migrated as a
/// whole. Named and append-only: a released migration is never edited, a change is a new
/// migration on both engines.
public enum AccountSchema {
    public static let current = Schema(sqlite: sqlite, postgres: postgres)

    /// Every table, parents before children (foreign keys), with the key that orders its rows:
    /// what `account-server migrate-store` copies and verifies.
    public static let tables: [CopiedTable] = [
        CopiedTable("account", orderBy: ["id"]),
        CopiedTable("vendor_suspension", orderBy: ["account_id"]),
        CopiedTable("account_identifier", orderBy: ["id"], identity: "id"),
        CopiedTable("audit_event", orderBy: ["seq"], identity: "seq"),
        CopiedTable("totp_credential", orderBy: ["account_id"]),
        CopiedTable("recovery_code", orderBy: ["account_id", "code_hash"]),
        CopiedTable("password_reset_token", orderBy: ["token_hash"]),
        CopiedTable("cgu_acceptance", orderBy: ["account_id", "version"]),
        CopiedTable("login_intent", orderBy: ["id_hash"]),
        CopiedTable("sign_in_flow", orderBy: ["id_hash"]),
        CopiedTable("web_session", orderBy: ["id_hash"]),
        CopiedTable("mail_outbox", orderBy: ["id"], identity: "id"),
        CopiedTable("oidc_login", orderBy: ["state_hash"]),
        CopiedTable("provider_logout", orderBy: ["jti_hash"]),
        // A server started once on the target left its key's fingerprint there: replaced.
        CopiedTable("secret_key_check", orderBy: ["id"], replacedOnCopy: true),
    ]

    /// Tables the running server may only read and append to (the audit trail): on
    /// PostgreSQL the runtime role gets no UPDATE or DELETE on them, and triggers refuse
    /// both (and TRUNCATE) to the owner too.
    public static let appendOnlyTables: Set<String> = ["audit_event"]

    /// v1's guard against deleting audit events on SQLite, as v1 created it: what
    /// ``AuditArchive/remove(_:record:)`` puts back in the transaction that set it aside.
    static let sqliteAuditNoDelete = """
        CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON audit_event
            BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
        """

    static let sqlite: [Migration] = [
        // Timestamps are INTEGER milliseconds since the Unix epoch (UTC): exact round trips.
        Migration("v1-accounts-identifiers-audit", """
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
            """),
        Migration("v2-sign-in", """
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
            """),
        Migration("v3-vendor-admin", """
                -- Who suspended the habilitation and why (the audit trail has the full story;
                -- these make the current state readable without it).
                ALTER TABLE account ADD COLUMN suspended_by TEXT;
                ALTER TABLE account ADD COLUMN suspension_reason TEXT;
            """),
        // `INSERT OR REPLACE` (and `REPLACE INTO`) with an existing seq deletes the old row
        // without firing the DELETE trigger (recursive triggers are off), so v1's triggers
        // alone let a row be rewritten. Refuse any insert that names an existing seq.
        Migration("v4-audit-no-replace", """
                CREATE TRIGGER audit_event_no_replace BEFORE INSERT ON audit_event
                    WHEN NEW.seq IS NOT NULL AND EXISTS (SELECT 1 FROM audit_event WHERE seq = NEW.seq)
                    BEGIN SELECT RAISE(ABORT, 'audit_event is append-only'); END;
            """),
        // Wrong second-factor codes within one sign-in flow: the flow ends after a few.
        Migration("v5-sign-in-flow-failed-codes", """
                ALTER TABLE sign_in_flow ADD COLUMN failed_codes INTEGER NOT NULL DEFAULT 0
            """),
        // Sign-in through an OpenID Connect provider (Pro Santé Connect). A login at the
        // provider is known by the SHA-256 of its `state`, bound to the login intent it
        // serves; flows and sessions record how they were authenticated, and for a
        // provider sign-in the provider's subject and session id (back-channel logout
        // finds sessions by them) and the ID token sealed with the server key (only sent
        // back to the provider as `id_token_hint` at sign-out).
        Migration("v6-provider-sign-in", """
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
            """),
        Migration("v7-vendor-suspension", vendorSuspension(timestamp: "INTEGER", strict: " STRICT")),
        Migration("v8-provider-logout", providerLogout(timestamp: "INTEGER", strict: " STRICT")),
        Migration("v9-secret-key-check", secretKeyCheck(timestamp: "INTEGER", strict: " STRICT")),
        // An insert naming its own seq could still date an event before others (seq -1, or a
        // value below the last), where exports paging with `after=` never see it. Checked
        // after the insert, where NEW.seq is the row's real one. (PostgreSQL: the runtime role
        // has no INSERT on the identity column, so the database always chooses it.)
        Migration("v10-audit-in-order", """
                CREATE TRIGGER audit_event_in_order AFTER INSERT ON audit_event
                    WHEN NEW.seq <= 0 OR EXISTS (SELECT 1 FROM audit_event WHERE seq > NEW.seq)
                    BEGIN SELECT RAISE(ABORT, 'audit_event is append-only: an event goes after the last one'); END;
            """),
        Migration("v11-totp-pending-step", totpPendingStep),
        Migration("v12-sign-in-flow-intent", signInFlowIntent),
        Migration("v13-last-failed-sign-in", lastFailedSignIn(timestamp: "INTEGER")),
        Migration("v14-live-flow-indexes", liveFlowIndexes),
        Migration("v15-web-session-return-url", webSessionReturnURL),
        Migration("v16-erasure-indexes", erasureIndexes),
        Migration("v17-outbox-reset-link", outboxResetLink),
        Migration("v18-sign-in-flow-ended-reason", signInFlowEndedReason),
    ]

    /// A reset mail names its link (SHA-256, as `password_reset_token` keys it): when the link
    /// dies before the mail is delivered (voided by a suspension, an address change, a
    /// password set through another link; or expired while the relay was down), the mail is
    /// withdrawn instead of sending the regulator to « Lien invalide ». Mails queued before
    /// the upgrade have none and are delivered as before. Partial index: only queued mails
    /// with a link are looked up by it.
    static let outboxResetLink = """
        ALTER TABLE mail_outbox ADD COLUMN reset_token_hash TEXT;
        CREATE INDEX mail_outbox_reset_link ON mail_outbox(reset_token_hash) WHERE sent_at IS NULL AND reset_token_hash IS NOT NULL;
        """

    /// Why a sign-in flow was ended before it completed, when something else than its own
    /// browser ended it (a session ledger's reason: « Fermer mes autres sessions », a password
    /// change, an admin). A Pro Santé Connect flow ended so is kept for the retention period,
    /// as an ended session is, so that its provider session cannot open a new one silently.
    /// Flows ended before the upgrade have none.
    static let signInFlowEndedReason = "ALTER TABLE sign_in_flow ADD COLUMN ended_reason TEXT"

    /// An account's erasure finds every row that names it by index: the live-only indexes of
    /// v14 do not cover ended sessions and flows, and an identifier's `ended_by_account_id`
    /// had none. Without them each erasure (and, on PostgreSQL, the foreign-key checks of
    /// its `DELETE FROM account`) scans those tables, and on PostgreSQL a scan under
    /// SERIALIZABLE conflicts with every concurrent write to them (retried, but a monthly batch
    /// of erasures would make sign-ins retry). The partial one on identifiers: few rows have it.
    static let erasureIndexes = """
        CREATE INDEX web_session_account_all ON web_session(account_id);
        CREATE INDEX sign_in_flow_account_all ON sign_in_flow(account_id);
        CREATE INDEX identifier_ended_by ON account_identifier(ended_by_account_id) WHERE ended_by_account_id IS NOT NULL;
        """

    /// Where the sign-in that opened a session sent the browser: a form of that sign-in sent
    /// again moments later (a double click whose first answer the browser dropped, without
    /// the pages' script) is sent there again instead of being told the sign-in expired.
    static let webSessionReturnURL = "ALTER TABLE web_session ADD COLUMN return_url TEXT"

    /// A withdrawal ends the account's sign-ins under way, and a Pro Santé Connect back-channel
    /// logout naming only its `sid` ends that session's: both inside a write transaction (a
    /// PUT's, a logout's), which without these indexes scans every live flow or session while
    /// every other write waits. Partial, as the rows they find are.
    static let liveFlowIndexes = """
        CREATE INDEX sign_in_flow_account ON sign_in_flow(account_id) WHERE consumed_at IS NULL;
        CREATE INDEX web_session_oidc_session ON web_session(oidc_session_id) WHERE revoked_at IS NULL AND oidc_session_id IS NOT NULL;
        """

    /// When the last counted sign-in failure happened, so that failures below the lockout
    /// threshold expire after the policy's quiet time (``LockoutPolicy``). Counts left by the
    /// previous version have no time: they stay until the next failure or sign-in.
    static func lastFailedSignIn(timestamp: String) -> String {
        "ALTER TABLE account ADD COLUMN last_failed_sign_in \(timestamp)"
    }

    /// Login intents are sealed into the browser's cookie (the entries write nothing): a
    /// sign-in flow keeps a copy of the intent it started from. Flows open at the upgrade
    /// take theirs from `login_intent`, which nothing writes any more (its rows expire and the
    /// purge removes them; the table goes in a later version).
    static let signInFlowIntent = """
        ALTER TABLE sign_in_flow ADD COLUMN origin TEXT CHECK (origin IN ('sas', 'direct'));
        ALTER TABLE sign_in_flow ADD COLUMN origin_value TEXT;
        ALTER TABLE sign_in_flow ADD COLUMN return_url TEXT;
        """ + signInFlowIntentCopy

    /// The intent a flow of the previous version would have given its session: unspent, and
    /// live when the flow opened (the previous version extended a live intent to its flow's
    /// lifetime then, and gave nothing for one already expired).
    static let liveIntentOfFlow = "i.id_hash = sign_in_flow.intent_id_hash AND i.consumed_at IS NULL AND i.expires_at > sign_in_flow.created_at"

    /// The data step of ``signInFlowIntent`` (a test runs it on rows as the previous version
    /// left them).
    static let signInFlowIntentCopy = """
        UPDATE sign_in_flow SET
            origin = (SELECT i.origin FROM login_intent i WHERE \(liveIntentOfFlow)),
            origin_value = (SELECT i.origin_value FROM login_intent i WHERE \(liveIntentOfFlow)),
            return_url = (SELECT i.return_url FROM login_intent i WHERE \(liveIntentOfFlow))
        WHERE consumed_at IS NULL AND intent_id_hash IS NOT NULL;
        """

    /// A pending TOTP enrolment is bound to the sign-in step that began it (the flow's id
    /// hash, opaque to Accounts): only that flow is shown its secret again or may confirm it.
    /// Enrolments pending at the upgrade belong to no flow and are replaced at the next page.
    static let totpPendingStep = "ALTER TABLE totp_credential ADD COLUMN pending_step TEXT"

    /// The fingerprint of the server key the database's secrets are sealed with (one row,
    /// ``SecretKeyCheck``): a start with another key, or none, is refused. Owned by Accounts.
    static func secretKeyCheck(timestamp: String, strict: String) -> String {
        """
        CREATE TABLE secret_key_check (
            id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
            fingerprint TEXT NOT NULL,
            created_at \(timestamp) NOT NULL
        )\(strict);
        """
    }

    /// Back-channel logouts received from the OpenID Connect provider, remembered for a while
    /// in the database rather than in one instance's memory: the SHA-256 of the token's `jti`
    /// (a replay to any instance is refused), and what it ended (its subject and session id),
    /// so a provider callback already under way when the logout came, on any instance, opens
    /// nothing. Owned by Habilitation; rows are purged once `expires_at` is past.
    static func providerLogout(timestamp: String, strict: String) -> String {
        """
        CREATE TABLE provider_logout (
            jti_hash TEXT PRIMARY KEY NOT NULL,
            subject TEXT,
            session_id TEXT,
            received_at \(timestamp) NOT NULL,
            expires_at \(timestamp) NOT NULL,
            CHECK (subject IS NOT NULL OR session_id IS NOT NULL)
        )\(strict);
        CREATE INDEX provider_logout_session ON provider_logout(session_id) WHERE session_id IS NOT NULL;
        CREATE INDEX provider_logout_subject ON provider_logout(subject, received_at) WHERE subject IS NOT NULL;
        """
    }

    /// A vendor admin's suspension of the habilitation moves out of `account` into a table of
    /// its owner, Habilitation (one row per suspended account), with the suspensions in force
    /// copied. The three columns stay in `account`, unused, for one release: an instance of
    /// the previous release still running during a rolling upgrade reads them, and a later
    /// migration drops them.
    static func vendorSuspension(timestamp: String, strict: String) -> String {
        """
        CREATE TABLE vendor_suspension (
            account_id TEXT PRIMARY KEY NOT NULL REFERENCES account(id),
            suspended_at \(timestamp) NOT NULL,
            suspended_by TEXT,
            reason TEXT
        )\(strict);
        INSERT INTO vendor_suspension (account_id, suspended_at, suspended_by, reason)
            SELECT id, suspended_by_vendor_at, suspended_by, suspension_reason FROM account WHERE suspended_by_vendor_at IS NOT NULL;
        """
    }

    static let postgres: [Migration] = [
        // PostgreSQL support starts from the shape SQLite reached after v6, in one step.
        // Same tables, columns, checks and indexes; booleans are `boolean`, byte strings
        // `bytea`, timestamps BIGINT milliseconds as on SQLite; generated ids are identity
        // columns (never reused, as SQLite's AUTOINCREMENT).
        Migration("pg-v1-schema", """
            CREATE TABLE account (
                id TEXT PRIMARY KEY NOT NULL,
                version BIGINT NOT NULL,
                active BOOLEAN NOT NULL,
                family_name TEXT NOT NULL,
                given_name TEXT NOT NULL,
                email TEXT NOT NULL,
                email_key TEXT NOT NULL,
                password_hash TEXT NOT NULL,
                password_reset_required BOOLEAN NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                active_changed_at BIGINT NOT NULL,
                failed_sign_ins BIGINT NOT NULL DEFAULT 0,
                locked_until BIGINT,
                password_changed_at BIGINT,
                suspended_by_vendor_at BIGINT,
                suspended_by TEXT,
                suspension_reason TEXT
            );
            CREATE UNIQUE INDEX account_email_active ON account(email_key) WHERE active;
            CREATE INDEX account_email_key ON account(email_key);

            CREATE TABLE account_identifier (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                account_id TEXT NOT NULL REFERENCES account(id),
                kind TEXT NOT NULL CHECK (kind IN ('IDNPS', 'INTRN')),
                value TEXT NOT NULL,
                assigned_at BIGINT NOT NULL,
                ended_at BIGINT,
                ended_reason TEXT CHECK (ended_reason IN ('replaced', 'reattributed')),
                ended_by_account_id TEXT REFERENCES account(id),
                CHECK ((ended_at IS NULL) = (ended_reason IS NULL))
            );
            CREATE UNIQUE INDEX identifier_current ON account_identifier(kind, value) WHERE ended_at IS NULL;
            CREATE UNIQUE INDEX identifier_current_per_account ON account_identifier(account_id, kind) WHERE ended_at IS NULL;
            CREATE INDEX identifier_history ON account_identifier(account_id, assigned_at);

            CREATE TABLE audit_event (
                seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                at BIGINT NOT NULL,
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
            );
            CREATE INDEX audit_event_account ON audit_event(account_id, seq);
            -- Append-only, whoever asks: UPDATE, DELETE and TRUNCATE are refused by triggers
            -- (the runtime role also lacks the privileges; see `docs/deployment.md`).
            CREATE FUNCTION audit_event_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN RAISE EXCEPTION 'audit_event is append-only'; END;
            $$;
            CREATE TRIGGER audit_event_no_update BEFORE UPDATE OR DELETE ON audit_event
                FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
            CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
                FOR EACH STATEMENT EXECUTE FUNCTION audit_event_append_only();

            CREATE TABLE totp_credential (
                account_id TEXT PRIMARY KEY NOT NULL REFERENCES account(id),
                sealed_secret BYTEA NOT NULL,
                created_at BIGINT NOT NULL,
                confirmed_at BIGINT,
                last_used_step BIGINT
            );

            CREATE TABLE recovery_code (
                account_id TEXT NOT NULL REFERENCES account(id),
                code_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                used_at BIGINT,
                PRIMARY KEY (account_id, code_hash)
            );

            CREATE TABLE password_reset_token (
                token_hash TEXT PRIMARY KEY NOT NULL,
                account_id TEXT NOT NULL REFERENCES account(id),
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                used_at BIGINT,
                voided_at BIGINT
            );
            CREATE INDEX password_reset_token_account ON password_reset_token(account_id);

            CREATE TABLE cgu_acceptance (
                account_id TEXT NOT NULL REFERENCES account(id),
                version TEXT NOT NULL,
                accepted_at BIGINT NOT NULL,
                address TEXT,
                PRIMARY KEY (account_id, version)
            );

            CREATE TABLE login_intent (
                id_hash TEXT PRIMARY KEY NOT NULL,
                origin TEXT NOT NULL CHECK (origin IN ('sas', 'direct')),
                origin_value TEXT,
                return_url TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                consumed_at BIGINT
            );

            CREATE TABLE sign_in_flow (
                id_hash TEXT PRIMARY KEY NOT NULL,
                account_id TEXT NOT NULL REFERENCES account(id),
                intent_id_hash TEXT,
                second_factor_at BIGINT,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                consumed_at BIGINT,
                failed_codes BIGINT NOT NULL DEFAULT 0,
                authentication TEXT NOT NULL DEFAULT 'password' CHECK (authentication IN ('password', 'psc')),
                oidc_subject TEXT,
                oidc_session_id TEXT,
                oidc_id_token BYTEA
            );

            CREATE TABLE web_session (
                id_hash TEXT PRIMARY KEY NOT NULL,
                account_id TEXT NOT NULL REFERENCES account(id),
                origin TEXT NOT NULL CHECK (origin IN ('sas', 'direct')),
                created_at BIGINT NOT NULL,
                last_seen_at BIGINT NOT NULL,
                absolute_expires_at BIGINT NOT NULL,
                revoked_at BIGINT,
                revoked_reason TEXT,
                address TEXT,
                user_agent TEXT,
                authentication TEXT NOT NULL DEFAULT 'password' CHECK (authentication IN ('password', 'psc')),
                oidc_subject TEXT,
                oidc_session_id TEXT,
                oidc_id_token BYTEA
            );
            CREATE INDEX web_session_account ON web_session(account_id) WHERE revoked_at IS NULL;
            CREATE INDEX web_session_oidc_subject ON web_session(oidc_subject) WHERE revoked_at IS NULL AND oidc_subject IS NOT NULL;

            CREATE TABLE mail_outbox (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                recipient TEXT NOT NULL,
                subject TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                attempts BIGINT NOT NULL DEFAULT 0,
                next_attempt_at BIGINT NOT NULL,
                sent_at BIGINT,
                last_error TEXT
            );
            CREATE INDEX mail_outbox_due ON mail_outbox(next_attempt_at) WHERE sent_at IS NULL;

            CREATE TABLE oidc_login (
                state_hash TEXT PRIMARY KEY NOT NULL,
                intent_id_hash TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NOT NULL,
                consumed_at BIGINT
            );
            """),
        Migration("pg-v2-vendor-suspension", vendorSuspension(timestamp: "BIGINT", strict: "")),
        Migration("pg-v3-provider-logout", providerLogout(timestamp: "BIGINT", strict: "")),
        Migration("pg-v4-secret-key-check", secretKeyCheck(timestamp: "BIGINT", strict: "")),
        Migration("pg-v5-totp-pending-step", totpPendingStep),
        Migration("pg-v6-sign-in-flow-intent", signInFlowIntent),
        // The searches' case and accent folding, the same whatever the database's locale:
        // SQLite's connections register the same function (Storage's TextFolding, frozen).
        Migration("pg-v7-fold-text", """
            CREATE FUNCTION fold_text(value text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
                AS $$ SELECT translate(value, '\(TextFolding.from + TextFolding.dropped)', '\(TextFolding.to)') $$;
            -- Said outright: a site whose default privileges withhold EXECUTE would otherwise
            -- leave the runtime role unable to search. A pure function, nothing to protect.
            GRANT EXECUTE ON FUNCTION fold_text(text) TO PUBLIC
            """),
        Migration("pg-v8-last-failed-sign-in", lastFailedSignIn(timestamp: "BIGINT")),
        Migration("pg-v9-live-flow-indexes", liveFlowIndexes),
        Migration("pg-v10-web-session-return-url", webSessionReturnURL),
        Migration("pg-v11-erasure-indexes", erasureIndexes),
        Migration("pg-v12-outbox-reset-link", outboxResetLink),
        Migration("pg-v13-sign-in-flow-ended-reason", signInFlowEndedReason),
    ]
}
