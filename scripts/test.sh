#!/usr/bin/env bash
# One command to run the whole test suite: installs what is missing, builds, runs every test
# (unit and integration: real SQLite and PostgreSQL, real mTLS with a generated PKI, real HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
# What the build and the tests write in the temporary folder (databases, generated PKIs with
# their keys, mail folders, browser profiles, the build's scratch folders) goes in one folder
# for this run, removed when the run ends, however it ends: running the suite often does not
# fill /tmp with thousands of folders.
run_tmp=$(mktemp -d -t account-server-tests.XXXXXX)
# Traversable (not listable) by others: the throwaway PostgreSQL servers run as `postgres`
# in folders of their own inside it.
chmod 0711 "$run_tmp"
pgdir=
cleanup() {
    if [[ -n $pgdir ]]; then scripts/postgres.sh stop "$pgdir" || true; fi
    rm -rf "$run_tmp"
}
trap cleanup EXIT
export TMPDIR=$run_tmp
./scripts/install-deps.sh
./scripts/check-boundary.sh
# The durability test runs the real executable, so build it explicitly too.
swift build --product account-server
swift build --build-tests
# At most this many tests at once (ACCOUNT_SERVER_TEST_WIDTH; swift-testing's default is
# every test at once). On 2 cores, all 247 at once on PostgreSQL saturated the machine for
# minutes: on a slow hour (2026-12-01) 2 to 20 tests per run failed on timeouts (statements
# unanswered for 30 s, HTTP deadlines), and the run took 200-233 s; 8 at once passed them all
# in 183 s.
# The option exists from Swift 6.3's SwiftPM; an older toolchain runs without the bound.
swift_version=$(swift --version 2>&1 | sed -n 's/.*Swift version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p' | head -1)
read -r swift_major swift_minor <<< "${swift_version:-0 0}"
if (( swift_major > 6 || (swift_major == 6 && swift_minor >= 3) )); then
    width=(--experimental-maximum-parallelization-width "${ACCOUNT_SERVER_TEST_WIDTH:-8}")
else
    echo "note: this toolchain cannot bound how many tests run at once (Swift 6.3 can); on 2 cores PostgreSQL tests may then time out" >&2
    width=()
fi
# The whole suite on each store: SQLite (a file per test), then PostgreSQL (a database per
# test on a throwaway server started here). ACCOUNT_SERVER_TEST_STORES narrows the list.
for store in ${ACCOUNT_SERVER_TEST_STORES:-sqlite postgres}; do
    echo "== tests on $store"
    case $store in
    sqlite)
        ACCOUNT_SERVER_TEST_STORE=sqlite swift test --skip-build ${width[@]+"${width[@]}"} "$@"
        ;;
    postgres)
        pgdir=$(mktemp -d)
        url=$(scripts/postgres.sh start "$pgdir")
        ACCOUNT_SERVER_TEST_STORE=postgres ACCOUNT_SERVER_TEST_POSTGRES_URL=$url swift test --skip-build ${width[@]+"${width[@]}"} "$@"
        ;;
    *)
        echo "unknown store $store (sqlite, postgres)" >&2
        exit 2
        ;;
    esac
done
