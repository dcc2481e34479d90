#!/usr/bin/env bash
# libFuzzer over FHIR JSON decoding + FrPractitionerRegul validation and over the identifier
# query parser (docs/performance.md, "Fuzzing"). Builds account-server-fuzz with
# -sanitize=fuzzer,address in its own build folder, runs each target for a bounded time from
# the committed seed corpus (copied: the committed corpus is not rewritten), and fails on the
# first crash, sanitizer report or property failure, leaving the input in .build-fuzz/findings/.
# Usage: scripts/fuzz.sh [--seconds N] [--target practitioner|identifier-query]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=60
targets=(practitioner identifier-query)
while (($#)); do
    case "$1" in
        --seconds) seconds=$2; shift 2 ;;
        --target) targets=("$2"); shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
swift build --scratch-path .build-fuzz -c debug --product account-server-fuzz \
    -Xswiftc -sanitize=fuzzer,address -Xswiftc -DFUZZING -Xswiftc -use-ld=lld 2>&1 | grep -E "error|warning: unre|Compiling Fuzz|Build complete" || true
binary=.build-fuzz/debug/account-server-fuzz
[[ -x $binary ]] || { echo "fuzz build failed" >&2; exit 1; }
mkdir -p .build-fuzz/findings
status=0
for target in "${targets[@]}"; do
    work=$(mktemp -d)
    cp -r "Fuzz/corpus/$target/." "$work/"
    echo "== $target: ${seconds}s from $(ls "$work" | wc -l) seeds"
    if ! "$binary" "$target" -max_total_time="$seconds" -max_len=65536 -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix=".build-fuzz/findings/$target-" -print_final_stats=1 "$work" >".build-fuzz/$target.log" 2>&1; then
        echo "FAILED: $target (input saved under .build-fuzz/findings/; replay it with .build/debug/account-server-fuzz $target FILE," \
             "then add it to Fuzz/regressions/$target/)" >&2
        grep -E "ERROR|property failed|Fatal error|SUMMARY" ".build-fuzz/$target.log" | head -5 >&2
        status=1
    fi
    grep -E "stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb|DONE" ".build-fuzz/$target.log" | sed "s/^/   $target: /"
    echo "   $target: corpus grew to $(ls "$work" | wc -l) inputs"
    rm -rf "$work"
done
exit $status
