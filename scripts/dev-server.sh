#!/usr/bin/env bash
# One command to try account-server: installs what is missing, builds, and serves on the
# embedded defaults (SQLite under ./data, development PKI generated on first run). It prints
# a ready-to-paste curl that creates a regulator over mTLS. Extra arguments go to `serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
swift build -c release --product account-server
exec .build/release/account-server serve "$@"
