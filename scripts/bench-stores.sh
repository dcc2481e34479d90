#!/usr/bin/env bash
# The stores compared, in one run on this machine (issue 13's performance figures):
#   - PUT_conditional_update and forward_auth on SQLite, then on PostgreSQL (one instance
#     each, same flags, same load): PostgreSQL over SQLite;
#   - the same two rows on PostgreSQL through nginx (docs/nginx/instances-*.conf) with one
#     instance behind it, then two: two over one, nginx in the path of both.
# PostgreSQL is a throwaway server (scripts/postgres.sh: TLS, SCRAM, fsync on, synchronous
# commit) on this machine, the instances connect as the runtime role (`migrate --grant-to`).
# Prints RESULT lines (account-server-load), CPU and COLLISIONS lines per row, PG_ERRORS lines
# (what PostgreSQL refused during the run, by message and statement) and one RATIO_STORES
# line per comparison.
# Usage: scripts/bench-stores.sh [--duration S] [--concurrency N] [--build release|debug]
#                                [--binaries DIR] [--stores-only] [--profile DIR]
# --binaries runs the account-server and account-server-load found in DIR instead of building
# (a copy of an earlier build: before/after comparisons on the same machine, same hour).
# --stores-only skips the nginx rows (one and two instances). --profile records the
# PostgreSQL instance with `perf record -g` during each of its rows, into DIR/PUT.perf and
# DIR/forward_auth.perf (flame graphs: docs/performance.md, "Profiling").
set -euo pipefail
cd "$(dirname "$0")/.."
duration=10
concurrency=8
build=release
binaries=
stores_only=
profile=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --build) build=$2; shift 2 ;;
        --binaries) binaries=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --stores-only) stores_only=1; shift ;;
        --profile) profile=$(realpath -m "$2"); mkdir -p "$profile"; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
./scripts/install-deps.sh
source scripts/binaries.sh
work=$(mktemp -d)
chmod 0755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    ./scripts/postgres.sh stop "$work/pg" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

mkdir -p "$work/maildir/new" "$work/maildir/cur" "$work/maildir/tmp" "$work/pg"
smtp_port=$(port)
/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$smtp_port" -c aiosmtpd.handlers.Mailbox "$work/maildir" >/dev/null 2>&1 &
pids+=($!)

# PostgreSQL: a database owned by the administrator, the instances as the runtime role.
admin_url=$(./scripts/postgres.sh start "$work/pg")
psql "$admin_url" -q -c "CREATE DATABASE bench" >/dev/null
password=$(cat "$work/pg/password")
psql "$admin_url" -q -c "CREATE ROLE bench_runtime LOGIN PASSWORD '$password'" >/dev/null
owner_url=${admin_url/\/postgres\?//bench?}
runtime_url=${owner_url/account_admin:/bench_runtime:}
"$bin/account-server" migrate --database "$owner_url" --grant-to bench_runtime >/dev/null

pki=$work/pki
# One instance: NAME DATABASE PUBLIC_URL; sets the ports in NAME_fhir, NAME_web, NAME_admin, NAME_forward.
start_instance() {
    local name=$1 database=$2 public_url=${3:-}
    local fhir web admin forward
    fhir=$(port); web=$(port); admin=$(port); forward=$(port)
    [[ -n $public_url ]] || public_url="https://localhost:$web"
    "$bin/account-server" serve --database "$database" --database-pool-size 10 --fhir-address "127.0.0.1:$fhir" \
        --dev-pki "$pki" --log-level error --web-address "127.0.0.1:$web" --public-url "$public_url" \
        --secret-key-file "$work/secret.key" --smtp-url "smtp://127.0.0.1:$smtp_port" --rate-limit-per-minute 1000000 \
        --admin-address "127.0.0.1:$admin" --admin-token-file "$work/$name.token" --forward-auth-address "127.0.0.1:$forward" \
        >"$work/$name.out" 2>&1 &
    pids+=($!)
    eval "${name}_pid=$!"
    for _ in $(seq 300); do
        grep -q "curl --cacert" "$work/$name.out" 2>/dev/null && break
        sleep 0.1
    done
    grep -q "curl --cacert" "$work/$name.out" || { echo "instance $name did not start:" >&2; cat "$work/$name.out" >&2; exit 1; }
    eval "${name}_fhir=$fhir ${name}_web=$web ${name}_admin=$admin ${name}_forward=$forward"
}
stop_instance() {
    local pid_var="${1}_pid"
    kill "${!pid_var}" 2>/dev/null || true
    wait "${!pid_var}" 2>/dev/null || true
}
create_regulator() { # FHIR_BASE EMAIL
    curl -s -o /dev/null -w "%{http_code}" --cacert "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" \
        -H 'Content-Type: application/fhir+json' -X POST "$1/Practitioner" --data "{\"resourceType\":\"Practitioner\",\"meta\":{\"source\":\"urn:oid:1.2.250.1.213.3.6\"},\"identifier\":[{\"type\":{\"coding\":[{\"system\":\"http://interopsante.org/fhir/CodeSystem/fr-v2-0203\",\"code\":\"INTRN\"}]},\"system\":\"urn:oid:1.2.250.1.213.3.6\",\"value\":\"$(python3 -c 'import uuid; print(uuid.uuid4())')\"}],\"active\":true,\"name\":[{\"family\":\"BANC\",\"given\":[\"Essai\"]}],\"telecom\":[{\"system\":\"email\",\"value\":\"$2\"}]}"
}
results=$work/results
# CPU seconds used so far by the account-server processes, the PostgreSQL processes, nginx,
# and the whole machine: what limits a row on 2 cores.
cpu_snapshot() {
    python3 - <<'PY'
import os
tick = os.sysconf("SC_CLK_TCK")
groups = {"account_server": 0, "postgres": 0, "nginx": 0}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0].decode(errors="replace")
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    used = int(fields[11]) + int(fields[12])
    name = os.path.basename(cmd)
    if name == "account-server": groups["account_server"] += used
    elif name.startswith("postgres"): groups["postgres"] += used
    elif name.startswith("nginx"): groups["nginx"] += used
total = sum(map(int, open("/proc/stat").readline().split()[1:4]))
print(" ".join(f"{k}={v / tick:.2f}" for k, v in groups.items()), f"machine={total / tick:.2f}")
PY
}
# The CPU each part used during one row, in cores (CPU seconds over wall seconds).
cpu_row() { # LABEL BEFORE AFTER SECONDS
    python3 - "$@" <<'PY' | tee -a "$results"
import sys
label, before, after, seconds = sys.argv[1], dict(x.split("=") for x in sys.argv[2].split()), dict(x.split("=") for x in sys.argv[3].split()), float(sys.argv[4])
used = {k: (float(after[k]) - float(before[k])) / seconds for k in before}
others = used.pop("machine") - sum(used.values())
print(f"CPU label={label} " + " ".join(f"{k}={v:.2f}" for k, v in used.items()) + f" load_tool_and_rest={others:.2f} (cores of 2)")
PY
}
# Transactions committed on the PostgreSQL server so far (every database).
committed() { psql "$admin_url" -Atc "SELECT sum(xact_commit) FROM pg_stat_database"; }
# perf record of PID (when --profile is given and PID is set) into $profile/NAME.perf.
recorder=
record() { # PID NAME
    [[ -n $profile && -n $1 ]] || return 0
    perf record -g -F 999 -p "$1" -o "$profile/$2.perf" >/dev/null 2>&1 &
    recorder=$!
    sleep 0.3
}
stop_recording() {
    [[ -n $recorder ]] || return 0
    kill -INT "$recorder" 2>/dev/null || true
    wait "$recorder" 2>/dev/null || true
    recorder=
}
# Both rows against one FHIR base and one web + forward-auth pair: LABEL FHIR_BASE WEB_BASE FORWARD_BASE [PID to profile]
measure() {
    local label=$1 fhir=$2 web=$3 forward=$4 email="forward.$1@load.test" pid=${5:-}
    [[ $(create_regulator "$fhir" "$email") == 201 ]] || { echo "$label: could not create the regulator" >&2; exit 1; }
    local before started
    before=$(cpu_snapshot); started=$(date +%s.%N)
    record "$pid" PUT
    local collisions
    collisions=$(grep -c "could not serialize\|deadlock detected" "$work/pg/server.log" || true)
    "$bin/account-server-load" --ca "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" \
        --mode put --url "$fhir" --concurrency "$concurrency" --duration "$duration" --label "PUT_$label" | grep '^RESULT' | tee -a "$results"
    stop_recording
    cpu_row "PUT_$label" "$before" "$(cpu_snapshot)" "$(python3 -c "import time; print(time.time() - $started)")"
    # Write transactions PostgreSQL refused as colliding (each is retried, alone).
    echo "COLLISIONS label=PUT_$label serialization_failures=$(( $(grep -c "could not serialize\|deadlock detected" "$work/pg/server.log" || true) - collisions ))" | tee -a "$results"
    before=$(cpu_snapshot); started=$(date +%s.%N)
    local statements
    statements=$(committed)
    record "$pid" forward_auth
    "$bin/account-server-load" --ca "$pki/ca.pem" --mode forward-auth --url "$web" --forward-auth-url "$forward" \
        --maildir "$work/maildir" --email "$email" --concurrency "$concurrency" --duration "$duration" \
        --label "forward_auth_$label" | grep '^RESULT' | tee -a "$results"
    stop_recording
    cpu_row "forward_auth_$label" "$before" "$(cpu_snapshot)" "$(python3 -c "import time; print(time.time() - $started)")"
    # Statements PostgreSQL ran for the row (each check's read is one transaction of its own;
    # a batch answers several checks): how full the batches were.
    if [[ $label != sqlite ]]; then
        python3 - "$label" "$statements" "$(committed)" "$results" <<'PY' | tee -a "$results"
import re, sys
label, before, after, results = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
n = [int(m.group(1)) for line in open(results) if (m := re.search(rf"label=forward_auth_{label} n=(\d+)", line))][-1]
print(f"STATEMENTS label=forward_auth_{label} transactions={after - before - 1} checks_per_transaction={n / max(1, after - before - 1):.2f}")
PY
    fi
}

# 1. SQLite, one instance (it also creates the development PKI the others reuse).
start_instance lite "$work/db.sqlite"
measure sqlite "https://localhost:$lite_fhir" "https://localhost:$lite_web" "http://127.0.0.1:$lite_forward"
stop_instance lite

# 2. PostgreSQL, one instance, direct.
start_instance solo "$runtime_url"
measure postgres "https://localhost:$solo_fhir" "https://localhost:$solo_web" "http://127.0.0.1:$solo_forward" "$solo_pid"
stop_instance solo

if [[ -z $stores_only ]]; then
# 3. PostgreSQL behind nginx (TCP round robin for TLS, HTTP for forward-auth): one instance,
#    then two, with the configuration files operators use.
nginx_fhir=$(port); nginx_web=$(port); nginx_forward=$(port)
start_instance a "$runtime_url" "https://localhost:$nginx_web"
start_instance b "$runtime_url" "https://localhost:$nginx_web"
render() { # TEMPLATE B_FHIR B_WEB B_FORWARD
    sed -e "s/\${FHIR_LISTEN}/127.0.0.1:$nginx_fhir/; s/\${WEB_LISTEN}/127.0.0.1:$nginx_web/; s/\${FORWARD_AUTH_LISTEN}/127.0.0.1:$nginx_forward/" \
        -e "s/\${INSTANCE_A_FHIR}/127.0.0.1:$a_fhir/; s/\${INSTANCE_A_WEB}/127.0.0.1:$a_web/; s/\${INSTANCE_A_FORWARD_AUTH}/127.0.0.1:$a_forward/" \
        -e "s/\${INSTANCE_B_FHIR}/127.0.0.1:$2/; s/\${INSTANCE_B_WEB}/127.0.0.1:$3/; s/\${INSTANCE_B_FORWARD_AUTH}/127.0.0.1:$4/" \
        "docs/nginx/$1"
}
run_nginx() { # B_FHIR B_WEB B_FORWARD
    [[ -f "$work/nginx.pid" ]] && { kill "$(cat "$work/nginx.pid")"; sleep 0.5; }
    mkdir -p "$work/nginx"
    cat >"$work/nginx.conf" <<NGINX
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 4096; }
stream {
$(render instances-stream.conf "$@")
}
http {
    access_log off;
    client_body_temp_path $work/nginx/body; proxy_temp_path $work/nginx/proxy; fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi; scgi_temp_path $work/nginx/scgi;
    keepalive_requests 1000000;
$(render instances-forward-auth.conf "$@")
}
NGINX
    nginx -c "$work/nginx.conf" -p "$work" -g 'daemon on;'
    sleep 0.5
}
# One instance: A listed twice (the same upstream blocks, one server behind them).
run_nginx "$a_fhir" "$a_web" "$a_forward"
measure one_instance_nginx "https://localhost:$nginx_fhir" "https://localhost:$nginx_web" "http://127.0.0.1:$nginx_forward"
run_nginx "$b_fhir" "$b_web" "$b_forward"
measure two_instances_nginx "https://localhost:$nginx_fhir" "https://localhost:$nginx_web" "http://127.0.0.1:$nginx_forward"

fi

# What PostgreSQL refused during the whole run, by message (serialization failures, deadlocks…).
grep -E "ERROR:|STATEMENT:" "$work/pg/server.log" | sed -E 's/^.*(ERROR|STATEMENT): +/\1 /' | cut -c1-160 | sort | uniq -c | sort -rn | head -12 | sed 's/^/PG_ERRORS /' || true
python3 - "$results" <<'PY'
import re, sys
rps = {}
for line in open(sys.argv[1]):
    m = re.search(r"label=(\S+) n=\d+ rps=([\d.]+)", line)
    if m: rps[m.group(1)] = float(m.group(2))
for row in ("PUT", "forward_auth"):
    for numerator, denominator in (("postgres", "sqlite"), ("two_instances_nginx", "one_instance_nginx")):
        a, b = rps.get(f"{row}_{numerator}"), rps.get(f"{row}_{denominator}")
        if a and b:
            print(f"RATIO_STORES row={row} {numerator}/{denominator}={a / b:.2f} ({a:.0f} / {b:.0f} req/s)")
PY
