# Shared helpers for the interop suite: counters, assertions, and starting sallyport.
# Sourced by run.sh and the per-topic scripts.

PASSED=${PASSED:-0}
FAILED=${FAILED:-0}
FAILURES=${FAILURES:-}

pass() { PASSED=$((PASSED + 1)); echo "  ok    $1"; }
fail() { FAILED=$((FAILED + 1)); FAILURES="$FAILURES\n  $1"; echo "  FAIL  $1"; }

# expect NAME ACTUAL EXPECTED
expect() {
    if [ "$2" = "$3" ]; then pass "$1"; else fail "$1 (got '$2', want '$3')"; fi
}

# expect_contains NAME HAYSTACK NEEDLE
expect_contains() {
    case "$2" in *"$3"*) pass "$1" ;; *) fail "$1 (missing '$3')" ;; esac
}

# expect_absent NAME HAYSTACK NEEDLE (case-insensitive)
expect_absent() {
    if printf '%s' "$2" | grep -qi -- "$3"; then fail "$1 (found '$3')"; else pass "$1"; fi
}

# install_packages PKG...: Debian packages, refreshing the package index first if an
# install from the current one fails (a fresh machine has none).
install_packages() {
    [ $# -gt 0 ] || return 0
    echo "  installing $*"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "$@" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq "$@" >/dev/null
    fi
}

# start_sallyport CONFIG LOGFILE: starts the binary, waits (bounded) for its listening line,
# and sets SP_PID and SP_ADDR.
start_sallyport() {
    local config=$1 log=$2
    "$SALLYPORT" --config "$config" >"$log" 2>&1 &
    SP_PID=$!
    SP_ADDR=
    for _ in $(seq 1 100); do
        SP_ADDR=$(grep -v 'admin endpoints' "$log" | grep -o 'addr=[0-9.:]*' | head -1 | cut -d= -f2 || true)
        [ -n "$SP_ADDR" ] && return 0
        kill -0 "$SP_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "sallyport did not start; log:"; cat "$log"
    return 1
}

stop_sallyport() {
    kill -TERM "$SP_PID" 2>/dev/null || true
    local code=0
    wait "$SP_PID" || code=$?
    return $code
}
