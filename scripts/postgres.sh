#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests and benchmarks, from Debian's packages: initdb in a
# folder, pg_ctl on a free port, TLS with a generated CA, SCRAM passwords. No system service,
# nothing outside the folder. As root, the server runs as the `postgres` user (initdb refuses
# root).
#
#   scripts/postgres.sh start DIR   # prints the admin URL (database `postgres`) on stdout
#   scripts/postgres.sh stop DIR    # stops the server (fast shutdown); DIR can then be removed
#   scripts/postgres.sh down DIR    # immediate stop, as a crash would (tests)
#   scripts/postgres.sh up DIR      # starts it again on the same port
set -euo pipefail

command=${1:?usage: postgres.sh start|stop|down|up DIR}
dir=${2:?usage: postgres.sh start|stop|down|up DIR}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[[ -x $bin/initdb ]] || { echo "PostgreSQL server binaries not found (apt-get install postgresql)" >&2; exit 1; }

as_server() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case $command in
start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    if [[ ! -f $dir/data/PG_VERSION ]]; then
        # A free port below the kernel's ephemeral range: the server keeps it across restarts
        # (`down`/`up`), and a port the kernel hands out for port 0 could be given to another
        # listener or an outgoing connection while the server is down.
        port=$(python3 - <<'PY'
import random, socket
low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
for _ in range(1000):
    candidate = random.randrange(10000, max(low, 20000))
    probe = socket.socket()
    try:
        probe.bind(("127.0.0.1", candidate))
    except OSError:
        continue
    finally:
        probe.close()
    print(candidate)
    break
PY
)
        password=$(openssl rand -hex 24)
        umask 077
        printf '%s\n' "$password" > "$dir/password"
        echo "$port" > "$dir/port"
        # A CA and a server certificate for localhost: clients verify the server (verify-full).
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=account-server test PostgreSQL CA" \
            -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
            -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
        printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > "$dir/server.ext"
        openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
            -extfile "$dir/server.ext" -out "$dir/server.pem" 2>/dev/null
        chmod 0644 "$dir/ca.pem"
        if [[ $(id -u) -eq 0 ]]; then chown -R postgres "$dir"; fi
        as_server "$bin/initdb" -D "$dir/data" -U account_admin --pwfile="$dir/password" -A scram-sha-256 -E UTF8 --locale=C >/dev/null
        cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = 'localhost'
port = $port
unix_socket_directories = '$dir'
ssl = on
ssl_cert_file = '$dir/server.pem'
ssl_key_file = '$dir/server.key'
max_connections = 400
fsync = on
synchronous_commit = on
log_min_messages = warning
CONF
        # TLS only, passwords only.
        printf 'local all all scram-sha-256\nhostssl all all localhost scram-sha-256\n' > "$dir/data/pg_hba.conf"
    fi
    if ! as_server "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    fi
    echo "postgres://account_admin:$(cat "$dir/password")@localhost:$(cat "$dir/port")/postgres?sslmode=verify-full&sslrootcert=$dir/ca.pem"
    ;;
stop)
    [[ -f $dir/data/postmaster.pid ]] && as_server "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
down)
    as_server "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
up)
    as_server "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    ;;
*)
    echo "usage: postgres.sh start|stop|down|up DIR" >&2
    exit 2
    ;;
esac
