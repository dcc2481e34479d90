#!/usr/bin/env bash
# The storage boundary, checked: surfaces (the executable's controllers, middleware,
# listeners, commands) and the OpenID Connect module never see SQL, a transaction or an
# engine's driver; only the stores of Accounts and Habilitation (and the Storage module) do.
# Run by scripts/test.sh; exits non-zero with the offending lines.
set -euo pipefail
cd "$(dirname "$0")/.."
pattern='import GRDB|import PostgresNIO|SQLTransaction|SQLRow|\.pointRead *[({]|database\.(read|write) *[({]|\b(SELECT|INSERT INTO|UPDATE [a-z_]+ SET|DELETE FROM|CREATE TABLE)\b'
if grep -rnE "$pattern" Sources/AccountServer Sources/OpenIDConnect --include='*.swift'; then
    echo "check-boundary: SQL or a transaction outside the stores (above)" >&2
    exit 1
fi
# Table owners: Accounts' stores never name Habilitation's tables (sessions, intents, sign-in
# flows, provider logins); they reach them through the AccountSessions protocol, which
# Habilitation implements. The schema itself is one history (AccountSchema.swift).
if grep -rnE '\b(web_session|login_intent|sign_in_flow|oidc_login|vendor_suspension|provider_logout)\b' Sources/Accounts --include='*.swift' | grep -v '^Sources/Accounts/Store/AccountSchema.swift:'; then
    echo "check-boundary: Accounts names a table Habilitation owns (above)" >&2
    exit 1
fi
# Habilitation reads Accounts' tables (its checks join them in one query) but never writes
# them: a change to an account goes through Accounts' code (LockoutLedger, AuditLog…).
if grep -rnE '\b(INSERT INTO|UPDATE|DELETE FROM) +(account|account_identifier|audit_event|totp_credential|recovery_code|password_reset_token|cgu_acceptance|mail_outbox|secret_key_check)\b' Sources/Habilitation --include='*.swift'; then
    echo "check-boundary: Habilitation writes a table Accounts owns (above)" >&2
    exit 1
fi
echo "check-boundary: no SQL outside the stores; Accounts keeps to its own tables; Habilitation writes only its own"
