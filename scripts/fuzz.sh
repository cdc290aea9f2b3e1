#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a set time, two at a time, and fails if any
# of them found a crash (panic, failed assert, overflow, timeout or out-of-memory).
#
#   scripts/fuzz.sh [seconds-per-target]     (default 600)
#
# Needs the nightly toolchain (`rustup toolchain install nightly`); installs cargo-fuzz
# when it is missing. The committed corpus in fuzz/corpus/<target> only seeds a run: new
# inputs go to fuzz/target/corpus/<target>, logs to fuzz/target/logs/<target>.log, and a
# crashing input to fuzz/artifacts/<target>/ (reproduce it with
# `cargo +nightly fuzz run -s none <target> <file>`). After a run that found much new
# coverage, fold it back: copy fuzz/target/corpus/<target>/* into fuzz/corpus/<target>/,
# then `cargo +nightly fuzz cmin -s none <target>` from fuzz/ (keep the corpus < 2 MB).
#
# Targets are built with optimizations, debug assertions and overflow checks, without a
# sanitizer: the code under test forbids unsafe, and a sanitizer costs executions.
# FUZZ_JOBS=<n> changes how many targets run at once; FUZZ_TARGETS="a b" picks targets.
set -euo pipefail

secs="${1:-600}"
jobs="${FUZZ_JOBS:-2}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build -s none
mkdir -p target/logs

run() {
    local t="$1"
    mkdir -p "target/corpus/$t" "corpus/$t"
    # One process, one worker; -timeout: a single input running 10 s is a finding too.
    cargo +nightly fuzz run -s none "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"target/logs/$t.log" 2>&1
}

started=$(date +%s)
for t in $targets; do
    rm -f "target/logs/$t.rc"
done
for t in $targets; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
        wait -n || true
    done
    echo "$(date -u +%H:%M:%S) fuzzing $t for ${secs}s"
    (
        rc=0
        from=$(date +%s)
        run "$t" || rc=$?
        echo "$rc $(($(date +%s) - from))" >"target/logs/$t.rc"
    ) &
done
wait

failed=0
printf '\n%-12s %8s %14s %8s %8s %8s  %s\n' target seconds execs cov ft rss_mb result
for t in $targets; do
    log="target/logs/$t.log"
    read -r rc wall <"target/logs/$t.rc" || { rc=1; wall='?'; }
    last="$(grep -E '^#[0-9]+.*cov: [0-9]+' "$log" | tail -1 || true)"
    # libFuzzer's own figures when it finished; after a crash, its last status line and
    # the wall time of the run (build included).
    execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' ||
        echo "$last" | grep -o '^#[0-9]*' | tr -d '#' || echo '?')"
    rss="$(grep -o 'stat::peak_rss_mb: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    took="$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o '[0-9]* second' |
        grep -o '[0-9]*' || echo "$wall")"
    cov="$(echo "$last" | grep -o 'cov: [0-9]*' | grep -o '[0-9]*' || echo '?')"
    ft="$(echo "$last" | grep -o 'ft: [0-9]*' | grep -o '[0-9]*' || echo '?')"
    if [ "$rc" = 0 ]; then
        result=ok
    else
        found="$(ls -t "artifacts/$t" 2>/dev/null | head -1 || true)"
        result="FAILED (rc $rc)${found:+: artifacts/$t/$found}"
        failed=1
    fi
    printf '%-12s %8s %14s %8s %8s %8s  %s\n' "$t" "$took" "$execs" "$cov" "$ft" "$rss" "$result"
done
echo "wall time: $(($(date +%s) - started))s; logs in fuzz/target/logs/"
if [ "$failed" != 0 ]; then
    echo "fuzzing failed: see fuzz/target/logs/ and fuzz/artifacts/" >&2
    exit 1
fi
