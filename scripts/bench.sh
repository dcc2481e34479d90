#!/usr/bin/env bash
# Benchmark of the INT_R02 endpoint against baselines measured in the same run:
#   - nginx serving a static 200 over the same mTLS set-up (same CA, server certificate,
#     client certificate, CRL; TLS 1.2/1.3), driven by the same load generator;
#   - one in-process libargon2 argon2id hash at the server's parameters.
#   - nginx serving a static 200 over plain HTTP on loopback (the forward-auth listener's
#     set-up) and over TLS without client certificate (the web listener's), the baselines of
#     the two forward-auth endpoints, in interleaved rounds (each endpoint right after its
#     baseline; per-round ratios, RATIO_FORWARD_AUTH), then a suspension under load;
#   - for the relayed INT_R01 slot search (--fhir-upstream): the same Slot Bundle served by
#     nginx directly over the same mTLS set-up (the SAS calling the slot search directly), over
#     plain HTTP by a separate nginx (the upstream both relays use), and relayed by nginx itself, the
#     vendor's alternative: nginx terminating the same mutual TLS and proxy_pass-ing to the
#     same upstream over keep-alive connections. Interleaved rounds at concurrency 1 and N,
#     so the added latency is read per round and the relay compared with nginx's.
#   - raw SQLite commits with the server's durability settings (WAL, synchronous=FULL), the
#     floor under every INT_R02 write;
#   - latency against concurrency (--only curve, not part of the default run): forward-auth and
#     PUT at 1..32 concurrent clients beside their nginx baselines, drawn as an SVG (--plot FILE);
#   - soak (--only soak, not part of the default run): mixed PUT, POST, sign-in and
#     forward-auth load for --duration seconds with the server's RSS sampled every second.
# With --profile DIR, account-server is sampled by `perf record` during its hot-path rows
# (forward-auth on both listeners, the first relayed round at each concurrency, PUT), and each
# row's flame graph is written to DIR/<row>.svg (scripts/flamegraph.py), its samples to
# DIR/<row>.perf. Sampling slows the server (forward-auth by a quarter, measured): compare
# profiled figures only with profiled figures.
# Prints one table. Usage: scripts/bench.sh [--duration S] [--concurrency N] [--build release|debug]
#                                           [--only fhir|web|forward-auth|upstream|curve|soak] [--plot FILE]
#                                           [--profile DIR] [--binaries DIR]
# --binaries runs the account-server and account-server-load found in DIR (a copy of an
# earlier build, to compare two builds in alternating runs) instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=10
concurrency=8
only=all
build=release
plot=docs/latency-vs-concurrency.svg
profile=
binaries=
while (($#)); do
    case "$1" in
        --build) build=$2; shift 2 ;;
        --plot) plot=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --binaries) binaries=$2; shift 2 ;;
        --profile)
            profile=$(realpath -m "$2")
            command -v perf >/dev/null || { echo "--profile needs perf (Debian: apt-get install linux-perf)" >&2; exit 2; }
            shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
./scripts/install-deps.sh
source scripts/binaries.sh
work=$(mktemp -d)
app_port=18543
nginx_port=18544
web_port=18545
smtp_port=18546
admin_port=18547
nginx_tls_port=18548
nginx_plain_port=18549
forward_port=18550
upstream_port=18551
nginx_proxy_port=18552
cleanup() {
    [[ -n "${app_pid:-}" ]] && kill "$app_pid" 2>/dev/null || true
    [[ -n "${smtp_pid:-}" ]] && kill "$smtp_pid" 2>/dev/null || true
    [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
    [[ -f "$work/upstream/nginx.pid" ]] && kill "$(cat "$work/upstream/nginx.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/maildir/new" "$work/maildir/cur" "$work/maildir/tmp"
/usr/bin/python3 -m aiosmtpd -n -l "127.0.0.1:$smtp_port" -c aiosmtpd.handlers.Mailbox "$work/maildir" >/dev/null 2>&1 &
smtp_pid=$!
"$bin/account-server" serve --database "$work/db.sqlite" --fhir-address "127.0.0.1:$app_port" \
    --dev-pki "$work/pki" --log-level error --web-address "127.0.0.1:$web_port" --public-url "https://localhost:$web_port" \
    --secret-key-file "$work/secret.key" --smtp-url "smtp://127.0.0.1:$smtp_port" --rate-limit-per-minute 1000000 \
    --admin-address "127.0.0.1:$admin_port" --admin-token-file "$work/admin.token" --forward-auth-address "127.0.0.1:$forward_port" \
    --fhir-upstream "http://127.0.0.1:$upstream_port" \
    >"$work/server.out" 2>&1 &
app_pid=$!
for _ in $(seq 100); do
    grep -q "curl --cacert" "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
pki=$work/pki
# An INT_R01 Slot search answer of realistic size: 12 free slots of one practitioner, with the
# included Schedule and Practitioner (about 6 KB).
python3 - "$work/slot-bundle.json" <<'PY'
import json, sys
entries = [{"fullUrl": "https://agenda.example/fhir/Practitioner/p1", "resource": {"resourceType": "Practitioner", "id": "p1",
            "identifier": [{"system": "urn:oid:1.2.250.1.71.4.2.1", "value": "810002673899"}], "name": [{"family": "MARTIN", "given": ["Claire"]}]},
            "search": {"mode": "include"}},
           {"fullUrl": "https://agenda.example/fhir/Schedule/sc1", "resource": {"resourceType": "Schedule", "id": "sc1",
            "actor": [{"reference": "Practitioner/p1"}], "serviceType": [{"coding": [{"code": "consultation"}]}]}, "search": {"mode": "include"}}]
for i in range(12):
    entries.append({"fullUrl": f"https://agenda.example/fhir/Slot/s{i}", "resource": {"resourceType": "Slot", "id": f"s{i}",
        "meta": {"profile": ["https://interop.esante.gouv.fr/ig/fhir/sas/StructureDefinition/sas-slot-aggregator"]},
        "schedule": {"reference": "Schedule/sc1"}, "status": "free", "start": f"2026-11-23T{9 + i // 4:02d}:{(i % 4) * 15:02d}:00+01:00",
        "end": f"2026-11-23T{9 + i // 4:02d}:{(i % 4) * 15 + 14:02d}:00+01:00",
        "comment": f"https://agenda.example/rdv/s{i}?origin=sas"}, "search": {"mode": "match"}})
json.dump({"resourceType": "Bundle", "type": "searchset", "total": 12, "entry": entries}, open(sys.argv[1], "w"))
PY
# nginx's workers (not root) read the file.
chmod o+x "$work"
chmod o+r "$work/slot-bundle.json"
# The mutual TLS of the FHIR listener, shared by the nginx baselines that stand for it.
cat >"$work/mtls.conf" <<NGINX
ssl_certificate $pki/server.pem;
ssl_certificate_key $pki/server-key.pem;
ssl_client_certificate $pki/ca.pem;
ssl_crl $pki/crl.pem;
ssl_verify_client on;
ssl_protocols TLSv1.2 TLSv1.3;
NGINX
cat >"$work/nginx.conf" <<NGINX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$nginx_port ssl;
        include $work/mtls.conf;
        location / { return 200 "ok\n"; }
        location = /Slot { default_type application/fhir+json; alias $work/slot-bundle.json; }
    }
    # The vendor's alternative to the relay: the same mutual TLS, then proxy_pass to the same
    # upstream, keeping its connections alive as account-server does.
    upstream slot_upstream {
        server 127.0.0.1:$upstream_port;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$nginx_proxy_port ssl;
        include $work/mtls.conf;
        location / {
            proxy_pass http://slot_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen 127.0.0.1:$nginx_tls_port ssl;
        ssl_certificate $pki/server.pem;
        ssl_certificate_key $pki/server-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$nginx_plain_port;
        location / { return 200 "ok\n"; }
    }
}
NGINX
# The INT_R01 upstream is a server of its own, as the vendor's slot search is: a separate
# nginx (its own master and workers). Served by the proxying nginx itself, a proxied request
# could be answered by the very worker that relays it, in the same turn of its event loop,
# with no other process to wake: a shortcut neither the relay nor a real deployment has.
mkdir -p "$work/upstream"
cat >"$work/upstream/nginx.conf" <<NGINX
worker_processes 2;
pid $work/upstream/nginx.pid;
error_log $work/upstream/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $work/upstream/body; proxy_temp_path $work/upstream/proxy; fastcgi_temp_path $work/upstream/fastcgi;
    uwsgi_temp_path $work/upstream/uwsgi; scgi_temp_path $work/upstream/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$upstream_port;
        location = /Slot { default_type application/fhir+json; alias $work/slot-bundle.json; }
        location = /metadata { return 200 '{"resourceType":"CapabilityStatement","status":"active","kind":"instance","fhirVersion":"4.0.1","format":["json"],"rest":[{"mode":"server","resource":[{"type":"Slot","interaction":[{"code":"search-type"}]}]}]}'; }
    }
}
NGINX
nginx -c "$work/upstream/nginx.conf" -p "$work/upstream" -g 'daemon on;'
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon on;'
sleep 0.5

create_regulator() {
    curl -s -o /dev/null -w "%{http_code}" --cacert "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" \
        -H 'Content-Type: application/fhir+json' -X POST "https://localhost:$app_port/Practitioner" --data "{\"resourceType\":\"Practitioner\",\"meta\":{\"source\":\"urn:oid:1.2.250.1.213.3.6\"},\"identifier\":[{\"type\":{\"coding\":[{\"system\":\"http://interopsante.org/fhir/CodeSystem/fr-v2-0203\",\"code\":\"INTRN\"}]},\"system\":\"urn:oid:1.2.250.1.213.3.6\",\"value\":\"$(python3 -c 'import uuid; print(uuid.uuid4())')\"}],\"active\":true,\"name\":[{\"family\":\"BANC\",\"given\":[\"Essai\"]}],\"telecom\":[{\"system\":\"email\",\"value\":\"$1\"}]}"
}
# With --profile, a hot-path row runs under `perf record` of the server, for the row's
# duration, and its flame graph is drawn once the row is over.
profiled() {
    local label="" previous="" seconds=$duration
    for arg in "$@"; do
        [[ $previous == --label ]] && label=$arg
        [[ $previous == --duration ]] && seconds=$arg
        previous=$arg
    done
    if [[ -z $profile || ! $label =~ ^(fa_listener_r1|fa_web_route_r1|slot_relayed_c[0-9]+_r1|PUT_conditional_update)$ ]]; then
        "$@"
        return
    fi
    mkdir -p "$profile"
    perf record -F 999 -g -p "$app_pid" -o "$profile/$label.perf" -- sleep "$seconds" >/dev/null 2>&1 &
    local perf_pid=$!
    "$@"
    wait "$perf_pid" || true
    perf script -i "$profile/$label.perf" 2>/dev/null | swift demangle --simplified \
        | python3 scripts/flamegraph.py --title "account-server, $label ($(git rev-parse --short HEAD))" \
            --subtitle "perf record -F 999 -g, ${seconds} s, scripts/bench.sh --profile" >"$profile/$label.svg" \
        || echo "no flame graph for $label" >&2
}
load() { profiled "$bin/account-server-load" --ca "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" "$@" | grep -E '^(RESULT|RATIO|SOAK)'; }
results=$work/results
want() { [[ ($only == all && $1 != soak && $1 != curve) || $only == "$1" ]]; }
load_tls() { profiled "$bin/account-server-load" --ca "$pki/ca.pem" "$@" | grep -E '^(RESULT|RATIO|STALE)'; }
{
    if want fhir; then
        load --mode get --url "https://127.0.0.1:$nginx_port/" --concurrency "$concurrency" --duration "$duration" --label nginx_static_200
        "$bin/account-server-load" --mode sqlite-commits --duration "$duration" --label sqlite_commit_full | grep -E '^RESULT'
        load --mode put --url "https://127.0.0.1:$app_port" --concurrency "$concurrency" --duration "$duration" --label PUT_conditional_update
        load --mode post --url "https://127.0.0.1:$app_port" --concurrency "$concurrency" --duration "$duration" --label POST_create_concurrent
        load --mode create-vs-argon2 --url "https://127.0.0.1:$app_port" --iterations 60 --label POST_create_sequential
        load --mode put --url "https://127.0.0.1:$app_port" --concurrency "$concurrency" --duration "$duration" --background-creators 2 --label PUT_with_2_creators
    fi
    if want web; then
        [[ $(create_regulator bench.signin@load.test) == 201 && $(create_regulator bench.pages@load.test) == 201 ]] || { echo "could not create the benchmark regulators" >&2; exit 1; }
        load --mode sign-in-vs-argon2 --url "https://localhost:$web_port" --maildir "$work/maildir" --email bench.signin@load.test --iterations 60 --label sign_in_password_step
        load --mode pages --url "https://localhost:$web_port" --maildir "$work/maildir" --email bench.pages@load.test --concurrency "$concurrency" --duration "$duration" --label pages_without_password
    fi
    if want forward-auth; then
        # Interleaved rounds, each forward-auth endpoint right after its nginx baseline: the
        # machine's speed drifts by a third between minutes, so ratios are read per round.
        rounds=5
        round_seconds=$(python3 -c "print(max(2, $duration / 2))")
        # A regulator per run: each signs in anew (password reset through the maildir, TOTP
        # enrolment, CGU).
        for email in $(seq $rounds | sed 's/.*/bench.forward.&@load.test bench.forward.web.&@load.test/') bench.forward.suspension@load.test; do
            [[ $(create_regulator "$email") == 201 ]] || { echo "could not create the forward-auth regulator $email" >&2; exit 1; }
        done
        for round in $(seq $rounds); do
            load_tls --mode get --url "http://127.0.0.1:$nginx_plain_port/" --concurrency "$concurrency" --duration "$round_seconds" --label "fa_nginx_http_r$round"
            load_tls --mode forward-auth --url "https://localhost:$web_port" --forward-auth-url "http://127.0.0.1:$forward_port" --maildir "$work/maildir" \
                --email "bench.forward.$round@load.test" --concurrency "$concurrency" --duration "$round_seconds" --label "fa_listener_r$round"
            load_tls --mode get --url "https://127.0.0.1:$nginx_tls_port/" --concurrency "$concurrency" --duration "$round_seconds" --label "fa_nginx_tls_r$round"
            load_tls --mode forward-auth --url "https://localhost:$web_port" --maildir "$work/maildir" --email "bench.forward.web.$round@load.test" \
                --concurrency "$concurrency" --duration "$round_seconds" --label "fa_web_route_r$round"
        done
        # Then a suspension committed under load: no request started after it may be allowed.
        load_tls --mode forward-auth --url "https://localhost:$web_port" --forward-auth-url "http://127.0.0.1:$forward_port" --maildir "$work/maildir" \
            --email bench.forward.suspension@load.test --concurrency "$concurrency" --duration "$round_seconds" \
            --admin-url "http://127.0.0.1:$admin_port" --admin-token-file "$work/admin.token" --label forward_auth_listener_suspension
    fi
    if want upstream; then
        slot_query="/Slot?schedule.actor:Practitioner.identifier=urn:oid:1.2.250.1.71.4.2.1%7C810002673899&start=ge2026-11-23&status=free"
        for relay in "$app_port" "$nginx_proxy_port"; do
            cmp -s <(curl -s --cacert "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" "https://localhost:$relay$slot_query") "$work/slot-bundle.json" \
                || { echo "the Slot search relayed on port $relay differs from the upstream's Bundle:" >&2
                     curl -s -i --cacert "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" "https://localhost:$relay$slot_query" | head -c 600 >&2
                     exit 1; }
        done
        rounds=5
        round_seconds=$(python3 -c "print(max(2, $duration / 2))")
        for c in 1 "$concurrency"; do
            for round in $(seq $rounds); do
                load --mode get --url "https://127.0.0.1:$nginx_port$slot_query" --concurrency "$c" --duration "$round_seconds" --label "slot_direct_mtls_c${c}_r$round"
                load --mode get --url "https://127.0.0.1:$app_port$slot_query" --concurrency "$c" --duration "$round_seconds" --label "slot_relayed_c${c}_r$round"
                load --mode get --url "https://127.0.0.1:$nginx_proxy_port$slot_query" --concurrency "$c" --duration "$round_seconds" --label "slot_nginx_proxy_c${c}_r$round"
                load_tls --mode get --url "http://127.0.0.1:$upstream_port$slot_query" --concurrency "$c" --duration "$round_seconds" --label "slot_upstream_http_c${c}_r$round"
            done
        done
    fi
    if want curve; then
        [[ $(create_regulator bench.curve@load.test) == 201 ]] || { echo "could not create the curve regulator" >&2; exit 1; }
        for c in 1 2 4 8 16 32; do
            load_tls --mode get --url "http://127.0.0.1:$nginx_plain_port/" --concurrency "$c" --duration "$duration" --label "curve_nginx_http_c$c"
            load --mode get --url "https://127.0.0.1:$nginx_port/" --concurrency "$c" --duration "$duration" --label "curve_nginx_mtls_c$c"
            load --mode put --url "https://127.0.0.1:$app_port" --concurrency "$c" --duration "$duration" --label "curve_put_c$c"
        done
        load_tls --mode forward-auth --url "https://localhost:$web_port" --forward-auth-url "http://127.0.0.1:$forward_port" --maildir "$work/maildir" \
            --email bench.curve@load.test --concurrency-list 1,2,4,8,16,32 --duration "$duration" --label curve_forward_auth
    fi
    if want soak; then
        [[ $(create_regulator bench.soak@load.test) == 201 ]] || { echo "could not create the soak regulator" >&2; exit 1; }
        load --mode soak --url "https://localhost:$web_port" --fhir-url "https://localhost:$app_port" --forward-auth-url "http://127.0.0.1:$forward_port" \
            --maildir "$work/maildir" --email bench.soak@load.test --server-pid "$app_pid" --duration "$duration"
        kill -0 "$app_pid" || { echo "the server died during the soak" >&2; exit 1; }
    fi
} | tee "$results"

python3 - "$results" "$concurrency" "$plot" <<'PY'
import sys
rows = {}
order = []
stale = None
ratios = {}
soak = []
for line in open(sys.argv[1]):
    if line.startswith("SOAK"):
        soak.append(line.strip())
        continue
    fields = dict(part.split("=", 1) for part in line.split()[1:])
    if line.startswith("RATIO"):
        ratios[fields["label"]] = fields
        continue
    if line.startswith("STALE"):
        stale = fields
        continue
    label = fields["label"]
    if label in rows: label += "_2"
    rows[label] = {k: float(v) for k, v in fields.items() if k != "label"}
    order.append(label)
nginx = rows.get("nginx_static_200", {}).get("rps", float("nan"))
nginx_tls = rows.get("nginx_static_200_tls", {}).get("rps", float("nan"))
nginx_http = rows.get("nginx_static_200_http", {}).get("rps", float("nan"))
argon = rows.get("argon2id_in_process", {}).get("p50", float("nan"))
web_argon = rows.get("argon2id_in_process_web", {}).get("p50", argon)
if any(not label.startswith(("slot_", "curve_", "fa_", "forward_auth_listener_suspension")) for label in order):
    print()
    print(f"concurrency {sys.argv[2]} (HTTP/1.1 keep-alive over TLS, mTLS for the FHIR rows; one load generator for all rows)")
    print(f"{'workload':28} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}  ratio / target")
for label in order:
    r = rows[label]
    note = ""
    if label == "PUT_conditional_update":
        sql = rows.get("sqlite_commit_full", {}).get("p50", float("nan"))
        note = f"{r['rps']/nginx:.1%} of nginx (≥10%), p99 {r['p99']:.1f} ms (≤20); p50 = {r['p50']/sql:.1f}× a raw commit"
    elif label == "POST_create_concurrent":
        note = f"{r['rps']/nginx:.1%} of nginx; each create hashes (argon2id) on the bounded pool"
    elif label == "sqlite_commit_full":
        note = "baseline: one durable commit (WAL, synchronous=FULL), sequential"
    elif label == "POST_create_sequential":
        pair = ratios.get(label + "_over_hash", {})
        note = f"p95 = {r['p95']/argon:.2f}× hash p50 (≤1.5×); per-pair ratio p50 {pair.get('p50', '?')}, p95 {pair.get('p95', '?')}"
    elif label == "PUT_with_2_creators":
        note = f"p99 {r['p99']:.1f} ms (≤50)"
    elif label == "sign_in_password_step":
        pair = ratios.get(label + "_over_hash", {})
        note = f"p95 = {r['p95']/web_argon:.2f}× hash p50 (≤1.5×); per-pair ratio p50 {pair.get('p50', '?')}, p95 {pair.get('p95', '?')}"
    elif label.startswith("GET_") or label == "pages_without_password":
        note = f"p99 {r['p99']:.1f} ms (≤10)"
    elif label.startswith("refusal_"):
        note = "same page and status for all three refusals; compare the p50s"
    elif label.startswith("argon2id_in_process"):
        note = "baseline, interleaved with the creates"
    elif label.startswith("nginx_static_200"):
        note = "baseline"
    if label.startswith(("slot_", "curve_", "fa_", "forward_auth_listener_suspension")):
        continue
    rps = "-" if r["rps"] != r["rps"] else f"{r['rps']:.0f}"
    print(f"{label:28} {rps:>9} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} {int(r['errors']):>6}  {note}")
import re, statistics
slot = {}
for label in order:
    m = re.match(r"slot_(direct_mtls|relayed|nginx_proxy|upstream_http)_c(\d+)_r(\d+)$", label)
    if m:
        slot.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), {})[m.group(1)] = rows[label]
for c in sorted(slot):
    rounds = slot[c]
    print()
    print(f"Slot search relayed to the INT_R01 upstream, concurrency {c}, {len(rounds)} interleaved rounds (ms; added p50 = relayed − direct mTLS, per round)")
    print(f"{'round':>5} {'direct p50':>11} {'relayed p50':>12} {'added':>7} {'nginx p50':>10} {'nginx added':>12} {'upstream p50':>13} {'relayed p99':>12} {'req/s relayed':>14} {'req/s nginx':>12} {'ratio':>6} {'errors':>6}")
    added, nginx_added, ratio = [], [], []
    for n in sorted(rounds):
        d, r, x, u = (rounds[n].get(k) for k in ("direct_mtls", "relayed", "nginx_proxy", "upstream_http"))
        if not (d and r and x and u):
            continue
        added.append(r["p50"] - d["p50"])
        nginx_added.append(x["p50"] - d["p50"])
        ratio.append(r["rps"] / x["rps"])
        print(f"{n:>5} {d['p50']:>11.3f} {r['p50']:>12.3f} {added[-1]:>7.3f} {x['p50']:>10.3f} {nginx_added[-1]:>12.3f} {u['p50']:>13.3f} {r['p99']:>12.3f} "
              f"{r['rps']:>14.0f} {x['rps']:>12.0f} {ratio[-1]:>6.2f} {int(r['errors'] + d['errors'] + x['errors'] + u['errors']):>6}")
    if added:
        print(f"added p50: relay median {statistics.median(added):.3f} ms (worst round {max(added):.3f}), nginx proxy_pass median {statistics.median(nginx_added):.3f} ms; "
              f"relay over nginx proxy_pass throughput: median {statistics.median(ratio):.2f} (rounds {min(ratio):.2f}–{max(ratio):.2f})")
        print(f"RATIO_RELAY concurrency={c} relay_over_nginx_proxy={statistics.median(ratio):.2f} added_p50_relay_ms={statistics.median(added):.3f} added_p50_nginx_ms={statistics.median(nginx_added):.3f}")
fa = {}
for label in order:
    m = re.match(r"fa_(nginx_http|listener|nginx_tls|web_route)_r(\d+)$", label)
    if m:
        fa.setdefault(int(m.group(2)), {})[m.group(1)] = rows[label]
if fa:
    print()
    print(f"Forward-auth, concurrency {sys.argv[2]}, {len(fa)} interleaved rounds: the listener (plain HTTP, loopback) against nginx's static 200 over HTTP,")
    print("the web listener's /forward-auth (HTTPS) against nginx's static 200 over TLS")
    print(f"{'round':>5} {'nginx HTTP':>11} {'listener':>9} {'ratio':>6} {'p99 ms':>7} {'nginx TLS':>10} {'web route':>10} {'ratio':>6} {'p99 ms':>7} {'errors':>6}")
    listener_ratio, web_ratio, listener_p99, web_p99 = [], [], [], []
    for n in sorted(fa):
        h, l, t, w = (fa[n].get(k) for k in ("nginx_http", "listener", "nginx_tls", "web_route"))
        if not (h and l and t and w):
            continue
        listener_ratio.append(l["rps"] / h["rps"])
        web_ratio.append(w["rps"] / t["rps"])
        listener_p99.append(l["p99"])
        web_p99.append(w["p99"])
        print(f"{n:>5} {h['rps']:>11.0f} {l['rps']:>9.0f} {listener_ratio[-1]:>6.2f} {l['p99']:>7.2f} {t['rps']:>10.0f} {w['rps']:>10.0f} {web_ratio[-1]:>6.2f} {w['p99']:>7.2f} "
              f"{int(h['errors'] + l['errors'] + t['errors'] + w['errors']):>6}")
    if listener_ratio:
        print(f"listener over nginx HTTP: median {statistics.median(listener_ratio):.2f} (≥0.75), p99 median {statistics.median(listener_p99):.2f} ms (≤2); "
              f"web route over nginx TLS: median {statistics.median(web_ratio):.2f} (≥0.50)")
        print(f"RATIO_FORWARD_AUTH listener_over_nginx_http={statistics.median(listener_ratio):.2f} listener_p99_ms={statistics.median(listener_p99):.2f} "
              f"web_route_over_nginx_tls={statistics.median(web_ratio):.2f} web_route_p99_ms={statistics.median(web_p99):.2f}")
curve = {}
for label in order:
    m = re.match(r"curve_(nginx_http|nginx_mtls|put|forward_auth)_c(\d+)$", label)
    if m:
        curve.setdefault(m.group(1), {})[int(m.group(2))] = rows[label]
if curve:
    print()
    print("Latency against concurrency (ms)")
    names = {"forward_auth": "forward-auth listener", "nginx_http": "nginx HTTP (its baseline)", "put": "PUT (mTLS)", "nginx_mtls": "nginx mTLS (its baseline)"}
    for key in ["forward_auth", "nginx_http", "put", "nginx_mtls"]:
        for c, r in sorted(curve.get(key, {}).items()):
            print(f"  {names[key]:28} c={c:<3} {r['rps']:>8.0f} req/s  p50 {r['p50']:7.2f}  p99 {r['p99']:7.2f}  errors {int(r['errors'])}")
    # An SVG drawn by hand: two panels (forward-auth, PUT), log2 concurrency on x, p50 and p99 on y.
    import math
    width, height, margin = 920, 380, 60
    panel_w = (width - 3 * margin) / 2
    colours = {"forward_auth": "#1f6feb", "nginx_http": "#8b949e", "put": "#d1242f", "nginx_mtls": "#8b949e"}
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for index, (title, pair) in enumerate([("forward-auth listener vs nginx HTTP", ("forward_auth", "nginx_http")), ("INT_R02 PUT vs nginx mTLS", ("put", "nginx_mtls"))]):
        x0 = margin + index * (panel_w + margin)
        points = [r for key in pair for r in curve.get(key, {}).values()]
        if not points:
            continue
        # Log scale: p50s near a millisecond and p99 stalls of hundreds share one panel.
        y_min = 10 ** math.floor(math.log10(max(0.01, min(r["p50"] for r in points))))
        y_max = 10 ** math.ceil(math.log10(max(r["p99"] for r in points)))
        levels = sorted({c for key in pair for c in curve.get(key, {})})
        def x(c): return x0 + (math.log2(c) / math.log2(max(levels))) * panel_w if max(levels) > 1 else x0
        def y(v): return margin + (1 - (math.log10(max(v, y_min)) - math.log10(y_min)) / (math.log10(y_max) - math.log10(y_min))) * (height - 2 * margin)
        svg.append(f'<text x="{x0}" y="{margin - 20}" font-weight="bold">{title}</text>')
        svg.append(f'<line x1="{x0}" y1="{y(y_min)}" x2="{x0 + panel_w}" y2="{y(y_min)}" stroke="black"/><line x1="{x0}" y1="{y(y_min)}" x2="{x0}" y2="{y(y_max)}" stroke="black"/>')
        for c in levels:
            svg.append(f'<text x="{x(c)}" y="{y(y_min) + 16}" text-anchor="middle">{c}</text>')
        decade = y_min
        while decade <= y_max * 1.001:
            for factor in (1, 2, 5):
                v = decade * factor
                if v > y_max * 1.001:
                    break
                label = f"{v:g}"
                svg.append(f'<text x="{x0 - 6}" y="{y(v) + 4}" text-anchor="end">{label}</text><line x1="{x0}" y1="{y(v)}" x2="{x0 + panel_w}" y2="{y(v)}" stroke="#eee"/>')
            decade *= 10
        svg.append(f'<text x="{x0 + panel_w / 2}" y="{height - 15}" text-anchor="middle">concurrent clients</text>')
        svg.append(f'<text x="{x0 - 50}" y="{margin - 25}">ms (log)</text>')
        for key in pair:
            series = sorted(curve.get(key, {}).items())
            for metric, dash in (("p50", ""), ("p99", ' stroke-dasharray="5,4"')):
                path = " ".join(f"{x(c):.1f},{y(r[metric]):.1f}" for c, r in series)
                svg.append(f'<polyline points="{path}" fill="none" stroke="{colours[key]}" stroke-width="2"{dash}/>')
            last_c, last = series[-1]
            svg.append(f'<text x="{x(last_c) - 4}" y="{y(last["p99"]) - 6}" text-anchor="end" fill="{colours[key]}">{names[key]}</text>')
    svg.append(f'<text x="{margin}" y="{height - 2}" fill="#555">solid: p50, dashed: p99; one load generator for all series, same run</text>')
    svg.append("</svg>")
    open(sys.argv[3], "w").write("\n".join(svg) + "\n")
    print(f"plot written to {sys.argv[3]}")
if soak:
    print()
    print("Soak (mixed load; RSS of the server process):")
    for line in soak:
        print("  " + line)
if stale:
    print(f"forward-auth during a suspension: {stale['granted_before']} granted before the commit; of {stale['after']} requests started after it, "
          f"{stale['stale']} allowed (stale, must be 0), {stale['refused_after']} refused")
PY
