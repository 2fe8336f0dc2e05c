#!/usr/bin/env bash
# Builds every fuzz target, then runs each for FUZZ_SECONDS (default 20) from its seeds
# and a fresh corpus. Exits non-zero if any target crashed, leaked past -rss_limit_mb or
# hit -timeout, after printing the input and the command that reproduces it.
#
#   bash fuzz/run.sh                       # all targets, 20 s each
#   FUZZ_SECONDS=600 bash fuzz/run.sh path # one target, longer
#
# Stable Rust with --sanitizer none: the main crate forbids unsafe code, so AddressSanitizer
# (which needs nightly) would mostly watch the C of aws-lc and libFuzzer itself, and CI
# should not depend on a nightly toolchain. libFuzzer's coverage instrumentation uses
# stable rustc flags only.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
# 16 codegen units instead of cargo-fuzz's 1: a cold build several minutes shorter, for
# a few percent of executions per second.
BUILD=(--sanitizer none --codegen-units 16)

if ! cargo fuzz --version 2>/dev/null | grep -qF " $CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION"
    cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

build_started=$SECONDS
cargo fuzz build "${BUILD[@]}"
echo "fuzz build: $((SECONDS - build_started)) s"

failed=()
summaries=()
for target in "${targets[@]}"; do
    corpus="corpus/$target"
    artifacts="artifacts/$target"
    log="corpus/$target.log"
    rm -rf "$corpus"
    mkdir -p "$corpus" "$artifacts"
    echo
    echo "--- $target (${FUZZ_SECONDS} s)"
    set +e
    cargo fuzz run "${BUILD[@]}" "$target" "$corpus" "seeds/$target" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -timeout=10 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    status=$?
    set -e
    # libFuzzer's last status line: "#123 DONE cov: 45 ft: 67 corp: 8/90b ... exec/s: 10".
    last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n 1 || true)
    runs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
    cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
    ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
    corp=$(sed -nE 's/.* corp: ([0-9]+\/[0-9]+[a-zA-Z]*).*/\1/p' <<<"$last")
    rate=$(sed -nE 's/.* exec\/s: ([0-9]+).*/\1/p' <<<"$last")
    summary=$(printf '%-14s runs %-9s exec/s %-7s cov %-6s ft %-6s corpus %s' \
        "$target" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}")
    if [ "$status" -ne 0 ]; then
        summary="$summary  FAILED (exit $status)"
        failed+=("$target")
        # The panic message, or libFuzzer's word on a timeout or memory limit.
        grep -E -A2 "panicked at|ERROR: libFuzzer|ALARM: working on the last Unit" "$log" |
            head -n 20 || true
        artifact=$(sed -nE 's/.*Test unit written to (.*)$/\1/p' "$log" | tail -n 1)
        if [ -n "$artifact" ]; then
            echo "input: fuzz/$artifact ($(wc -c <"$artifact") bytes)"
            grep -A2 'Output of `std::fmt::Debug`' "$log" | tail -n 1 | cut -c1-2000 || true
            echo "reproduce: (cd fuzz && cargo fuzz run ${BUILD[*]} $target $artifact)"
        fi
        echo "full log: fuzz/$log"
    fi
    echo "$summary"
    summaries+=("$summary")
done

echo
echo "=== fuzzing summary (${FUZZ_SECONDS} s per target)"
printf '%s\n' "${summaries[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
