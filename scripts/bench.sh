#!/usr/bin/env bash
# Benchmark of the INT_R02 endpoint against baselines measured in the same run:
#   - nginx serving a static 200 over the same mTLS set-up (same CA, server certificate,
#     client certificate, CRL; TLS 1.2/1.3), driven by the same load generator;
#   - one in-process libargon2 argon2id hash at the server's parameters.
#   - nginx serving a static 200 over plain HTTP on loopback (the forward-auth listener's
#     set-up) and over TLS without client certificate (the web listener's), the baselines of
#     the two forward-auth endpoints.
# Prints one table. Usage: scripts/bench.sh [--duration S] [--concurrency N] [--only fhir|web|forward-auth]
set -euo pipefail
cd "$(dirname "$0")/.."
duration=10
concurrency=8
only=all
while (($#)); do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --concurrency) concurrency=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
./scripts/install-deps.sh
swift build -c release --product account-server >/dev/null
swift build -c release --product account-server-load >/dev/null
bin=.build/release
work=$(mktemp -d)
app_port=18543
nginx_port=18544
web_port=18545
smtp_port=18546
admin_port=18547
nginx_tls_port=18548
nginx_plain_port=18549
forward_port=18550
cleanup() {
    [[ -n "${app_pid:-}" ]] && kill "$app_pid" 2>/dev/null || true
    [[ -n "${smtp_pid:-}" ]] && kill "$smtp_pid" 2>/dev/null || true
    [[ -f "$work/nginx.pid" ]] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
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
    >"$work/server.out" 2>&1 &
app_pid=$!
for _ in $(seq 100); do
    grep -q "curl --cacert" "$work/server.out" 2>/dev/null && break
    sleep 0.1
done
pki=$work/pki
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
        ssl_certificate $pki/server.pem;
        ssl_certificate_key $pki/server-key.pem;
        ssl_client_certificate $pki/ca.pem;
        ssl_crl $pki/crl.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.2 TLSv1.3;
        location / { return 200 "ok\n"; }
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
nginx -c "$work/nginx.conf" -p "$work" -g 'daemon on;'
sleep 0.5

create_regulator() {
    curl -s -o /dev/null -w "%{http_code}" --cacert "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" \
        -H 'Content-Type: application/fhir+json' -X POST "https://localhost:$app_port/Practitioner" --data "{\"resourceType\":\"Practitioner\",\"meta\":{\"source\":\"urn:oid:1.2.250.1.213.3.6\"},\"identifier\":[{\"type\":{\"coding\":[{\"system\":\"http://interopsante.org/fhir/CodeSystem/fr-v2-0203\",\"code\":\"INTRN\"}]},\"system\":\"urn:oid:1.2.250.1.213.3.6\",\"value\":\"$(python3 -c 'import uuid; print(uuid.uuid4())')\"}],\"active\":true,\"name\":[{\"family\":\"BANC\",\"given\":[\"Essai\"]}],\"telecom\":[{\"system\":\"email\",\"value\":\"$1\"}]}"
}
load() { "$bin/account-server-load" --ca "$pki/ca.pem" --cert "$pki/sas-client.pem" --key "$pki/sas-client-key.pem" "$@" | grep -E '^(RESULT|RATIO)'; }
results=$work/results
want() { [[ $only == all || $only == "$1" ]]; }
load_tls() { "$bin/account-server-load" --ca "$pki/ca.pem" "$@" | grep -E '^(RESULT|RATIO|STALE)'; }
{
    if want fhir; then
        load --mode get --url "https://127.0.0.1:$nginx_port/" --concurrency "$concurrency" --duration "$duration" --label nginx_static_200
        load --mode put --url "https://127.0.0.1:$app_port" --concurrency "$concurrency" --duration "$duration" --label PUT_conditional_update
        load --mode create-vs-argon2 --url "https://127.0.0.1:$app_port" --iterations 60 --label POST_create_sequential
        load --mode put --url "https://127.0.0.1:$app_port" --concurrency "$concurrency" --duration "$duration" --background-creators 2 --label PUT_with_2_creators
    fi
    if want web; then
        [[ $(create_regulator bench.signin@load.test) == 201 && $(create_regulator bench.pages@load.test) == 201 ]] || { echo "could not create the benchmark regulators" >&2; exit 1; }
        load --mode sign-in-vs-argon2 --url "https://localhost:$web_port" --maildir "$work/maildir" --email bench.signin@load.test --iterations 60 --label sign_in_password_step
        load --mode pages --url "https://localhost:$web_port" --maildir "$work/maildir" --email bench.pages@load.test --concurrency "$concurrency" --duration "$duration" --label pages_without_password
    fi
    if want forward-auth; then
        [[ $(create_regulator bench.forward@load.test) == 201 && $(create_regulator bench.forward.web@load.test) == 201 ]] || { echo "could not create the forward-auth regulators" >&2; exit 1; }
        load_tls --mode get --url "http://127.0.0.1:$nginx_plain_port/" --concurrency "$concurrency" --duration "$duration" --label nginx_static_200_http
        load_tls --mode forward-auth --url "https://localhost:$web_port" --forward-auth-url "http://127.0.0.1:$forward_port" --maildir "$work/maildir" \
            --email bench.forward@load.test --concurrency "$concurrency" --duration "$duration" \
            --admin-url "http://127.0.0.1:$admin_port" --admin-token-file "$work/admin.token" --label forward_auth_listener
        load_tls --mode get --url "https://127.0.0.1:$nginx_tls_port/" --concurrency "$concurrency" --duration "$duration" --label nginx_static_200_tls
        load_tls --mode forward-auth --url "https://localhost:$web_port" --maildir "$work/maildir" --email bench.forward.web@load.test \
            --concurrency "$concurrency" --duration "$duration" --label forward_auth_web_route
    fi
} | tee "$results"

python3 - "$results" "$concurrency" <<'PY'
import sys
rows = {}
order = []
stale = None
ratios = {}
for line in open(sys.argv[1]):
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
print()
print(f"concurrency {sys.argv[2]} (HTTP/1.1 keep-alive over TLS, mTLS for the FHIR rows; one load generator for all rows)")
print(f"{'workload':28} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>6}  ratio / target")
for label in order:
    r = rows[label]
    note = ""
    if label == "PUT_conditional_update":
        note = f"{r['rps']/nginx:.1%} of nginx (≥10%), p99 {r['p99']:.1f} ms (≤20)"
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
    elif label == "forward_auth_listener":
        note = f"{r['rps']/nginx_http:.1%} of nginx HTTP (≥40%), p99 {r['p99']:.2f} ms (≤5)"
    elif label == "forward_auth_web_route":
        note = f"{r['rps']/nginx_tls:.1%} of nginx TLS (for cross-host proxies; not the nginx path)"
    elif label.startswith("nginx_static_200"):
        note = "baseline"
    rps = "-" if r["rps"] != r["rps"] else f"{r['rps']:.0f}"
    print(f"{label:28} {rps:>9} {r['p50']:>8.2f} {r['p95']:>8.2f} {r['p99']:>8.2f} {int(r['errors']):>6}  {note}")
if stale:
    print(f"forward-auth during a suspension: {stale['granted_before']} granted before the commit; of {stale['after']} requests started after it, "
          f"{stale['stale']} allowed (stale, must be 0), {stale['refused_after']} refused")
PY
