#!/usr/bin/env bash
# One command to run the whole test suite: installs what is missing, builds, runs every test
# (unit and integration: real SQLite, real mTLS with a generated PKI, real HTTP).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# The durability test runs the real executable, so build it explicitly too.
swift build --product account-server
swift build --build-tests
swift test --skip-build "$@"
