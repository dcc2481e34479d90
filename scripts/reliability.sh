#!/usr/bin/env bash
# The reliability suite (docs/performance.md, "Reliability"): fuzzing, kill -9 durability and a
# soak under mixed load. Short mode (default, what CI runs): 60 s per fuzz target, 3 kill
# cycles, a 60 s soak on the debug build. Long mode (--long, on demand): 30 min per fuzz
# target, 100 kill cycles, a 30 min soak on the release build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ${1:-} == --long ]]; then
    fuzz_seconds=1800; cycles=100; soak_seconds=1800; build=release
else
    fuzz_seconds=60; cycles=3; soak_seconds=60; build=debug
fi
./scripts/install-deps.sh
echo "== fuzzing (${fuzz_seconds}s per target)"
./scripts/fuzz.sh --seconds "$fuzz_seconds"
echo "== kill -9 durability ($cycles cycles)"
./scripts/durability.sh --cycles "$cycles" --build "$build"
echo "== soak (${soak_seconds}s, $build build)"
./scripts/bench.sh --only soak --duration "$soak_seconds" --build "$build"
