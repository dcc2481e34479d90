#!/usr/bin/env bash
# What pipelining would give a PUT on PostgreSQL, measured with pgbench (issue 13).
#
# A PUT that changes a name is four statements on PostgreSQL: BEGIN, the SELECT of the holder
# carrying the shared write lock, the UPDATE joined with the audit INSERT, and COMMIT.
# account-server sends them through postgres-nio, which sends a statement only once the one
# before it has answered: four round trips. A client that pipelines could send BEGIN with the
# SELECT, and the write with COMMIT: two round trips (the write needs the SELECT's rows).
# postgres-nio 1.33.2 offers no pipelining, so this script measures the difference on
# PostgreSQL's side with pgbench (`\startpipeline`), on a throwaway server with the real schema
# (`account-server migrate`) and the same TLS (verify-full), SCRAM, fsync and
# synchronous_commit as scripts/bench-stores.sh.
#
#   ./scripts/pgbench-pipeline.sh [--binaries DIR] [--rounds N] [--seconds S] [--clients C]
#
# Prints, per round, the transactions a second of both scripts, run one after the other.
set -euo pipefail
cd "$(dirname "$0")/.."

build=release
binaries=
rounds=3
seconds=8
clients=8
while (($#)); do
    case $1 in
        --binaries) binaries=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        *) echo "usage: $0 [--binaries DIR] [--rounds N] [--seconds S] [--clients C]" >&2; exit 2 ;;
    esac
done
source scripts/binaries.sh
command -v pgbench >/dev/null || { echo "pgbench is needed (apt-get install postgresql-client)" >&2; exit 1; }

work=$(mktemp -d)
chmod 0755 "$work"  # the server runs as `postgres` when this runs as root
trap 'scripts/postgres.sh stop "$work/pg" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
url=$(scripts/postgres.sh start "$work/pg")
"$bin/account-server" migrate --database "$url" >/dev/null

export PGHOST=localhost PGPORT PGUSER=account_admin PGDATABASE=postgres PGPASSWORD PGSSLMODE=verify-full PGSSLROOTCERT="$work/pg/ca.pem"
PGPORT=$(cat "$work/pg/port")
PGPASSWORD=$(cat "$work/pg/password")

# 200 accounts, each with a national identifier, as the load tool's PUTs find them.
psql -q -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO account (id, version, active, family_name, given_name, email, email_key, password_hash,
                     password_reset_required, created_at, updated_at, active_changed_at)
SELECT 'a' || g, 1, true, 'F', 'G', 'e' || g || '@x', 'e' || g || '@x', 'h', true, 0, 0, 0 FROM generate_series(1, 200) g;
INSERT INTO account_identifier (account_id, kind, value, assigned_at) SELECT 'a' || g, 'IDNPS', '8' || g, 0 FROM generate_series(1, 200) g;
SQL

# The statements as account-server sends them (Sources/Accounts/Store/Records.swift,
# Sources/Storage/PostgreSQL/PostgresEngine.swift), with fewer columns.
select="SELECT first_read.* FROM (SELECT account.id, account.version, account.family_name, held.id AS i_id, held.kind AS i_kind, held.value AS i_value FROM account_identifier ai JOIN account ON account.id = ai.account_id JOIN account_identifier held ON held.account_id = account.id AND held.ended_at IS NULL WHERE ai.kind = 'IDNPS' AND ai.value = '8' || (:n)::text AND ai.ended_at IS NULL ORDER BY held.kind) first_read WHERE EXISTS (SELECT 1 FROM pg_advisory_xact_lock_shared(4242))"
write="WITH joined_write AS (UPDATE account SET version = version + 1, family_name = 'F' || (:t)::text, updated_at = (:t)::bigint WHERE id = 'a' || (:n)::text) INSERT INTO audit_event (at, surface, action, outcome, actor_subject, request_id, identifier, account_id, changes) VALUES ((:t)::bigint, 'int_r02', 'update', '200', 'sas', 'req', '8' || (:n)::text, 'a' || (:n)::text, '[{\"field\":\"family\"}]') RETURNING 1"
printf '%s\n' '\set n random(1, 200)' '\set t random(1, 1000000000)' \
    'BEGIN ISOLATION LEVEL SERIALIZABLE;' "$select;" "$write;" 'COMMIT;' >"$work/four-round-trips.sql"
printf '%s\n' '\set n random(1, 200)' '\set t random(1, 1000000000)' \
    '\startpipeline' 'BEGIN ISOLATION LEVEL SERIALIZABLE;' "$select;" '\endpipeline' \
    '\startpipeline' "$write;" 'COMMIT;' '\endpipeline' >"$work/two-round-trips.sql"

tps() {
    pgbench -n -M prepared -c "$clients" -j 2 -T "$seconds" --max-tries=10 -f "$1" 2>&1 |
        awk '/^tps/ { printf "%.0f", $3 } /failed transactions/ { failed = $5 } END { printf " (failed %s)", failed }'
}
printf '%-6s %-26s %-26s %s\n' round "four round trips (tps)" "two, pipelined (tps)" ratio
for ((round = 1; round <= rounds; round++)); do
    four=$(tps "$work/four-round-trips.sql")
    two=$(tps "$work/two-round-trips.sql")
    printf '%-6s %-26s %-26s %.2f\n' "$round" "$four" "$two" "$(awk -v a="${two%% *}" -v b="${four%% *}" 'BEGIN { print a / b }')"
done
