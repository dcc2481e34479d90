#!/usr/bin/env bash
# kill -9 durability: creates and updates over mTLS while the server is killed with SIGKILL at
# random moments (0.3 to 2 s into each cycle) and restarted on the same database; after every
# kill, PRAGMA integrity_check must be ok and every acknowledged (2xx) change present.
# Usage: scripts/durability.sh [--cycles N] [--build debug|release]
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=3
build=debug
while (($#)); do
    case "$1" in
        --cycles) cycles=$2; shift 2 ;;
        --build) build=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
swift build -c "$build" --product account-server >/dev/null
swift build -c "$build" --product account-server-load >/dev/null
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
".build/$build/account-server-load" --mode durability --server-binary ".build/$build/account-server" \
    --cycles "$cycles" --concurrency 4 --workdir "$work/run"
