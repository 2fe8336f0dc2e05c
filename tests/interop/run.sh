#!/usr/bin/env bash
# Interop suite: sallyport against software nobody here wrote. Installs what it needs
# from Debian, builds the binary, runs every tests/interop/*.sh topic, and prints one
# "N passed, N failed" line. Exit status is non-zero if anything failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

need=()
command -v curl >/dev/null || need+=(curl)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v python3 >/dev/null || need+=(python3)
if [ ${#need[@]} -gt 0 ]; then
    echo "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --quiet --bin sallyport
export SALLYPORT="$ROOT/target/debug/sallyport"
WORK=$(mktemp -d)
export WORK
trap 'rm -rf "$WORK"; jobs -p | xargs -r kill 2>/dev/null || true' EXIT

PASSED=0
FAILED=0
FAILURES=""
# shellcheck source=tests/interop/lib.sh
source "$ROOT/tests/interop/lib.sh"

trap 'echo "interop: aborted in $(basename "${topic:-run.sh}") at line $LINENO"' ERR
for topic in "$ROOT"/tests/interop/[0-9]*.sh; do
    echo "== $(basename "$topic")"
    # shellcheck disable=SC1090
    source "$topic"
done

trap - ERR
echo
if [ "$FAILED" -gt 0 ]; then
    printf 'failures:%b\n' "$FAILURES"
fi
echo "interop: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
