#!/usr/bin/env bash
# sallyport benchmark: sallyport against nginx and Caddy, in one run, on one machine.
# See bench/README.md. Writes the report to stdout and to bench/RESULTS.md.
#
#   bash bench/run.sh                                  # the full run (~7 min plus the build)
#   BENCH_DURATION=3 BENCH_ROUNDS=1 bash bench/run.sh  # a smoke run
#
# Settings (environment):
#   BENCH_DURATION=10          seconds of wrk per row and round
#   BENCH_CONNECTIONS=64       wrk connections (fixed for every row)
#   BENCH_THREADS=2            wrk threads
#   BENCH_ROUNDS=5             rounds; every row once per round, in rotated order; medians reported
#   BENCH_WARMUP=1             seconds of wrk warm-up before each measurement (not row 3)
#   BENCH_ROW3_DURATION        seconds of wrk for row 3 (nginx auth_basic); default max(20, BENCH_DURATION)
#   BENCH_TIMEOUT=10           wrk --timeout, seconds (row 3 answers in seconds)
#   BENCH_IDLE_CONNECTIONS=10000   idle TLS connections for the memory row (0 skips it)
#   BENCH_FLOOD_CONCURRENCY=32 concurrent attacker connections in row 8
#   BENCH_ROWS="1 2 3 4 5 6 7 8"   a subset, for debugging
#   BENCH_RESULTS=bench/RESULTS.md where the markdown goes
#   BENCH_NO_INSTALL=1         do not apt-get install missing tools
#   BENCH_KEEP=1               keep the work directory (configs, raw wrk output, logs)
#   SALLYPORT=/path/to/binary  skip the build; CARGO_TARGET_DIR is honoured otherwise

set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

DURATION=${BENCH_DURATION:-10}
CONNECTIONS=${BENCH_CONNECTIONS:-64}
THREADS=${BENCH_THREADS:-2}
ROUNDS=${BENCH_ROUNDS:-5}
WARMUP=${BENCH_WARMUP:-1}
WRK_TIMEOUT=${BENCH_TIMEOUT:-10}
IDLE=${BENCH_IDLE_CONNECTIONS:-10000}
FLOOD_CONCURRENCY=${BENCH_FLOOD_CONCURRENCY:-32}
# nginx auth_basic (row 3) needs a few seconds before its first answers (64 requests
# queue behind bcrypt), so it runs longer than the others, which can only favour nginx.
ROW3_DURATION=${BENCH_ROW3_DURATION:-$((DURATION > 20 ? DURATION : 20))}
ROWS=${BENCH_ROWS:-1 2 3 4 5 6 7 8}
RESULTS=${BENCH_RESULTS:-$here/RESULTS.md}

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# Every setting is a bounded integer.
check_int() { # NAME VALUE MIN MAX
    if ! [[ $2 =~ ^[0-9]+$ ]] || [ "$2" -lt "$3" ] || [ "$2" -gt "$4" ]; then
        die "$1=$2: want an integer in $3..$4"
    fi
}
check_int BENCH_DURATION "$DURATION" 1 600
check_int BENCH_CONNECTIONS "$CONNECTIONS" 1 10000
check_int BENCH_THREADS "$THREADS" 1 64
check_int BENCH_ROUNDS "$ROUNDS" 1 20
check_int BENCH_WARMUP "$WARMUP" 0 60
check_int BENCH_TIMEOUT "$WRK_TIMEOUT" 1 120
check_int BENCH_IDLE_CONNECTIONS "$IDLE" 0 50000
check_int BENCH_FLOOD_CONCURRENCY "$FLOOD_CONCURRENCY" 1 1000
check_int BENCH_ROW3_DURATION "$ROW3_DURATION" 1 600
[ "$THREADS" -le "$CONNECTIONS" ] || die "BENCH_THREADS must not exceed BENCH_CONNECTIONS"
for row in $ROWS; do [[ $row =~ ^[1-8]$ ]] || die "BENCH_ROWS: rows are 1..8"; done

# --- tools, from Debian ----------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
command -v caddy >/dev/null || need+=(caddy)
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v pgrep >/dev/null || need+=(procps)
if [ ${#need[@]} -gt 0 ]; then
    [ -z "${BENCH_NO_INSTALL:-}" ] || die "missing: ${need[*]} (BENCH_NO_INSTALL is set)"
    [ "$(id -u)" = 0 ] || die "missing: ${need[*]}; install them (apt-get install ${need[*]}) or run as root"
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

# --- sallyport, as shipped: the dist profile (release plus fat LTO, see Cargo.toml) -------
if [ -n "${SALLYPORT:-}" ]; then
    bin=$SALLYPORT
else
    log "building sallyport (dist profile: release with LTO; about 5 minutes from clean)"
    (cd "$repo" && cargo build --profile dist --quiet)
    target_dir=${CARGO_TARGET_DIR:-target}
    case $target_dir in /*) ;; *) target_dir=$repo/$target_dir ;; esac
    bin=$target_dir/dist/sallyport
fi
[ -x "$bin" ] || die "no sallyport binary at $bin"

# --- limits, work directory, cleanup ---------------------------------------------------
# The memory row holds BENCH_IDLE_CONNECTIONS connections in one client and one server.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
nofile=$(ulimit -n)
if [ "$nofile" != unlimited ] && [ "$IDLE" -gt 0 ] && [ $((IDLE + 1000)) -gt "$nofile" ]; then
    log "open-file limit $nofile: the memory row uses $((nofile - 1000)) connections, not $IDLE"
    IDLE=$((nofile - 1000))
    [ "$IDLE" -gt 0 ] || IDLE=0
fi

work=$(mktemp -d /tmp/sallyport-bench.XXXXXX)
mkdir -p "$work/tmp"
started=()   # PIDs this script started; all are stopped on exit

# stop_tree PID: SIGTERM, wait (bounded), then SIGKILL the process and its children.
stop_tree() {
    local pid=$1 kids
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kids=$(pgrep -P "$pid" || true)
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
    fi
    for k in $kids; do kill -KILL "$k" 2>/dev/null || true; done
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local code=$?
    trap - EXIT INT TERM
    for pid in "${started[@]}"; do stop_tree "$pid"; done
    if [ -n "${BENCH_KEEP:-}" ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
    exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# launch LOGFILE CMD...: start in the background; sets LAST_PID.
launch() {
    local logfile=$1
    shift
    "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    started+=("$LAST_PID")
}

# forget PID: it was stopped; drop it from the cleanup list.
forget() {
    local keep=() p
    for p in "${started[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    started=("${keep[@]}")
}

# tree_pids PID: the process and its direct children (nginx: master and workers).
tree_pids() {
    echo "$1"
    pgrep -P "$1" || true
}

# tree_sum PID FILE AWK_PROGRAM: a number read from /proc/P/FILE by AWK_PROGRAM, summed
# over the process and its children (gone processes count 0).
tree_sum() {
    local total=0 p v
    for p in $(tree_pids "$1"); do
        v=$(awk "$3" "/proc/$p/$2" 2>/dev/null || true)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# peak_kib PID: VmHWM, the peak resident set.
peak_kib() { tree_sum "$1" status '/^VmHWM:/ {print $2}'; }

# cpu_ticks PID: user + system clock ticks so far.
cpu_ticks() { tree_sum "$1" stat '{print $14 + $15}'; }

# wait_ready URL [curl args...]: poll (bounded, 10 s) until the URL answers at all, then
# require a 200 with the given arguments. This also fills caches (Basic, Bearer).
wait_ready() {
    local url=$1 code=000
    shift
    for _ in $(seq 1 100); do
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 2 "$url" || true)
        [ "$code" != 000 ] && break
        sleep 0.1
    done
    [ "$code" != 000 ] || { echo "no answer from $url"; return 1; }
    for _ in 1 2 3; do
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 15 "$@" "$url" || true)
        [ "$code" = 200 ] || { echo "$url answered $code, not 200"; return 1; }
    done
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# render TEMPLATE OUT @KEY@=VALUE...: substitute placeholders; refuse leftovers.
render() {
    python3 - "$@" <<'PY'
import re, sys
tpl, out, *pairs = sys.argv[1:]
s = open(tpl).read()
for pair in pairs:
    key, _, value = pair.partition("=")
    s = s.replace(key, value)
left = re.findall(r"@[A-Z_]+@", s)
if left:
    sys.exit("render %s: unfilled %s" % (tpl, left))
open(out, "w").write(s)
PY
}

# --- material: certificate, htpasswd, JWT key and token -------------------------------
cd "$work"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout tls.key -out tls.crt 2>/dev/null
user=bench
password=$(openssl rand -hex 12)
htpasswd -nbB -C 10 "$user" "$password" | sed '/^$/d' >users.htpasswd
hash=$(cut -d: -f2- users.htpasswd)
# shellcheck disable=SC2016 # a literal bcrypt prefix
case $hash in '$2y$10$'*) ;; *) die "htpasswd did not write a cost-10 bcrypt hash" ;; esac
basic="Authorization: Basic $(printf '%s:%s' "$user" "$password" | base64 -w0)"

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt.key.pem 2>/dev/null
openssl pkey -in jwt.key.pem -pubout -out jwt.pub.pem
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
jwt_head=$(printf '{"alg":"RS256","typ":"JWT"}' | b64url)
jwt_body=$(printf '{"iss":"sallyport-bench","aud":"sallyport-bench","sub":"bench","iat":%d,"exp":%d}' \
    "$now" $((now + 86400)) | b64url)
jwt_sig=$(printf '%s.%s' "$jwt_head" "$jwt_body" | openssl dgst -sha256 -sign jwt.key.pem -binary | b64url)
bearer="Authorization: Bearer $jwt_head.$jwt_body.$jwt_sig"

# --- ports and configs -----------------------------------------------------------------
ports=()
for _ in $(seq 1 20); do
    p=$(free_port)
    case " ${ports[*]} " in *" $p "*) ;; *) ports+=("$p") ;; esac
    [ ${#ports[@]} -ge 4 ] && break
done
[ ${#ports[@]} -ge 4 ] || die "could not find four free loopback ports"
UP_PORT=${ports[0]} NGX_PORT=${ports[1]} CADDY_PORT=${ports[2]} SP_PORT=${ports[3]}

caddy_ver=$(caddy version 2>/dev/null | head -1 | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+' | head -1)
caddy_directive=basicauth
if [ -n "$caddy_ver" ] && printf '2.8.0\n%s\n' "$caddy_ver" | sort -V -C; then
    caddy_directive=basic_auth   # renamed in 2.8
fi
max_conn=$((IDLE + 1000))
[ "$max_conn" -ge 10000 ] || max_conn=10000

render "$here/conf/upstream.nginx.conf" upstream.conf "@DIR@=$work" "@UPSTREAM_PORT@=$UP_PORT"
render "$here/conf/proxy.nginx.conf" nginx-plain.conf "@DIR@=$work" "@UPSTREAM_PORT@=$UP_PORT" \
    "@PORT@=$NGX_PORT" "@AUTH@="
render "$here/conf/proxy.nginx.conf" nginx-auth.conf "@DIR@=$work" "@UPSTREAM_PORT@=$UP_PORT" \
    "@PORT@=$NGX_PORT" "@AUTH@=auth_basic \"bench\"; auth_basic_user_file $work/users.htpasswd;"
render "$here/conf/Caddyfile" Caddyfile "@DIR@=$work" "@UPSTREAM_PORT@=$UP_PORT" \
    "@PORT@=$CADDY_PORT" "@DIRECTIVE@=$caddy_directive" "@USER@=$user" \
    "@CADDY_HASH@=$(printf '%s' "$hash" | base64 -w0)"
render "$here/conf/sallyport.toml" sallyport.toml "@DIR@=$work" "@UPSTREAM_PORT@=$UP_PORT" \
    "@PORT@=$SP_PORT" "@MAX_CONNECTIONS@=$max_conn"

# Caddy keeps state under $HOME / XDG dirs: keep it in the work directory.
caddy_env=(HOME="$work" XDG_DATA_HOME="$work/caddy-data" XDG_CONFIG_HOME="$work/caddy-config")

for c in upstream.conf nginx-plain.conf nginx-auth.conf; do
    nginx -t -q -c "$work/$c" -p "$work" >"$work/$c.check" 2>&1 || { cat "$work/$c.check"; die "nginx rejects $c"; }
done
env "${caddy_env[@]}" caddy validate --config Caddyfile --adapter caddyfile >caddy.check 2>&1 || { cat caddy.check; die "caddy rejects the Caddyfile"; }
"$bin" check --config sallyport.toml >sallyport.check 2>&1 || { cat sallyport.check; die "sallyport check fails"; }

# How busy the machine is before anything of ours runs (2 s sample of /proc/stat): other
# work on the same CPUs shows up as drift, and the report says so.
cpu_busy() {
    local a b
    a=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    sleep 2
    b=$(awk '/^cpu / {print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat)
    echo "$a $b" | awk '{busy = $3 - $1; idle = $4 - $2; printf "%.0f%%", (busy + idle) ? 100 * busy / (busy + idle) : 0}'
}
busy_before=$(cpu_busy)
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the shared upstream ---------------------------------------------------------------
launch upstream.log nginx -c "$work/upstream.conf" -p "$work"
UP_PID=$LAST_PID
wait_ready "http://127.0.0.1:$UP_PORT/" >upstream.ready 2>&1 || { cat upstream.ready upstream.log; die "upstream did not start"; }

# --- one measurement -------------------------------------------------------------------
WRK_ARGS="-t$THREADS -c$CONNECTIONS -d${DURATION}s --timeout ${WRK_TIMEOUT}s"

# start_server KIND: nginx-plain | nginx-auth | caddy | sallyport; sets SRV_PID.
start_server() {
    case $1 in
        nginx-plain | nginx-auth) launch "$1.log" nginx -c "$work/$1.conf" -p "$work" ;;
        caddy) launch caddy.log env "${caddy_env[@]}" caddy run --config "$work/Caddyfile" --adapter caddyfile ;;
        sallyport) launch sallyport.log "$bin" --config "$work/sallyport.toml" ;;
    esac
    SRV_PID=$LAST_PID
}

stop_server() {
    stop_tree "$1"
    forget "$1"
}

# measure ROUND ROW: writes rR-rowN.{wrk,rss[,flood.json]} or rR-rowN.err.
measure() {
    local round=$1 row=$2 kind="" url hdr=() pid out="r$1-row$2"
    case $row in
        1) url="http://127.0.0.1:$UP_PORT/" ;;
        2) kind=nginx-plain url="https://127.0.0.1:$NGX_PORT/" ;;
        3) kind=nginx-auth url="https://127.0.0.1:$NGX_PORT/" hdr=(-H "$basic") ;;
        4) kind=caddy url="https://127.0.0.1:$CADDY_PORT/" hdr=(-H "$basic") ;;
        5) kind=sallyport url="https://127.0.0.1:$SP_PORT/public/" ;;
        6 | 8) kind=sallyport url="https://127.0.0.1:$SP_PORT/" hdr=(-H "$basic") ;;
        7) kind=sallyport url="https://127.0.0.1:$SP_PORT/" hdr=(-H "$bearer") ;;
    esac
    if [ -n "$kind" ]; then
        start_server "$kind"
        pid=$SRV_PID
    else
        pid=$UP_PID
        for p in $(tree_pids "$pid"); do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
    fi
    if ! wait_ready "$url" "${hdr[@]}" >"$out.ready" 2>&1; then
        { cat "$out.ready"; [ -z "$kind" ] || tail -5 "$kind.log"; } | tr '\n' ' ' >"$out.err"
        [ -z "$kind" ] || stop_server "$pid"
        log "round $round row $row: FAILED ($(cat "$out.err"))"
        return 0
    fi
    if [ -n "$kind" ] && [ ! -e "tls-$kind.txt" ]; then
        # What each server negotiates with an OpenSSL client (wrk's library), for the report.
        local hostport=${url#https://}
        hostport=${hostport%%/*}
        echo | timeout 10 openssl s_client -connect "$hostport" -brief 2>&1 |
            awk -F': ' '/^Protocol version|^Ciphersuite/ {v = v (v ? " " : "") $2} END {print v}' >"tls-$kind.txt" || true
    fi
    if [ "$row" != 3 ] && [ "$WARMUP" -gt 0 ]; then
        timeout $((WARMUP + WRK_TIMEOUT + 30)) wrk -t"$THREADS" -c"$CONNECTIONS" -d"${WARMUP}s" \
            "${hdr[@]}" "$url" >/dev/null 2>&1 || true
    fi
    local flood_pid=""
    if [ "$row" = 8 ]; then
        launch "$out.flood.log" python3 "$here/flood.py" --port "$SP_PORT" --user "$user" \
            --duration $((DURATION + 2)) --concurrency "$FLOOD_CONCURRENCY" --out "$work/$out.flood.json"
        flood_pid=$LAST_PID
        sleep 1
    fi
    local dur=$DURATION ticks
    [ "$row" != 3 ] || dur=$ROW3_DURATION
    ticks=$(cpu_ticks "$pid")
    timeout $((dur + WRK_TIMEOUT + 30)) wrk --latency -t"$THREADS" -c"$CONNECTIONS" -d"${dur}s" \
        --timeout "${WRK_TIMEOUT}s" "${hdr[@]}" "$url" >"$out.wrk" 2>&1 || true
    # CPU time per request moves far less with the machine's other load than requests/s.
    echo "$(($(cpu_ticks "$pid") - ticks)) $(getconf CLK_TCK)" >"$out.cpu"
    if [ -n "$flood_pid" ]; then
        # flood.py bounds itself (duration + grace + 5 s); give it that long, then stop it.
        for _ in $(seq 1 200); do kill -0 "$flood_pid" 2>/dev/null || break; sleep 0.1; done
        stop_tree "$flood_pid"
        forget "$flood_pid"
    fi
    peak_kib "$pid" >"$out.rss"
    [ -z "$kind" ] || stop_server "$pid"
    local rps
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out.wrk")
    log "round $round row $row: ${rps:-no result} req/s"
}

# --- the rounds: every row once per round, rotated so each row runs at a different
# position (and after different neighbours) in each round --------------------------------
read -r -a rows <<<"$ROWS"
n=${#rows[@]}
orders=()
for ((r = 1; r <= ROUNDS; r++)); do
    off=$(((r - 1) * (n / ROUNDS > 0 ? n / ROUNDS : 1) % n))
    order=()
    for ((i = 0; i < n; i++)); do order+=("${rows[$(((i + off) % n))]}"); done
    orders+=("round $r: ${order[*]}")
    log "round $r of $ROUNDS: rows ${order[*]}"
    for row in "${order[@]}"; do measure "$r" "$row"; done
done

# --- the idle-connection memory row ----------------------------------------------------
idle_row() { # NAME KIND URL_PATH PORT
    local name=$1 kind=$2 path=$3 port=$4 pid pids
    start_server "$kind"
    pid=$SRV_PID
    if ! wait_ready "https://127.0.0.1:$port$path" >"idle-$name.ready" 2>&1; then
        echo "$name: $(cat "idle-$name.ready")" >>idle.err
        stop_server "$pid"
        return 0
    fi
    pids=$(tree_pids "$pid" | paste -sd, -)
    timeout 600 python3 "$here/idle_conns.py" --port "$port" --path "$path" --count "$IDLE" \
        --pids "$pids" --timeout 300 --out "$work/idle-$name.json" >"idle-$name.log" 2>&1 ||
        echo "$name: idle_conns.py failed: $(tail -3 "idle-$name.log" | tr '\n' ' ')" >>idle.err
    stop_server "$pid"
    log "idle connections, $name: $(cat "idle-$name.json" 2>/dev/null || echo failed)"
}
if [ "$IDLE" -gt 0 ]; then
    log "memory row: $IDLE idle TLS connections, sallyport then nginx"
    idle_row sallyport sallyport /public/ "$SP_PORT"
    idle_row nginx nginx-plain / "$NGX_PORT"
else
    echo "skipped (BENCH_IDLE_CONNECTIONS=0)" >idle.err
fi

# --- the machine, and the report -------------------------------------------------------
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -z "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit, with uncommitted changes"
{
    printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
    printf 'nproc\t%s\n' "$(nproc)"
    printf 'cpu\t%s\n' "$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    printf 'ram\t%s\n' "$(awk '/^MemTotal:/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    printf 'kernel\t%s\n' "$(uname -r)"
    # shellcheck disable=SC1091
    printf 'os\t%s\n' "$(. /etc/os-release 2>/dev/null && echo "${PRETTY_NAME:-unknown}")"
    printf 'nginx\t%s\n' "$(nginx -v 2>&1 | sed 's/^nginx version: //')"
    printf 'caddy\t%s\n' "caddy $(caddy version 2>/dev/null | awk '{print $1}')"
    printf 'wrk\t%s\n' "$(wrk -v 2>&1 | head -1 | awk '{print $1, $2}')"
    printf 'rustc\t%s\n' "$(rustc --version 2>/dev/null | awk '{print $1, $2}' || echo 'rustc ?')"
    printf 'sallyport\t%s\n' "$("$bin" --version 2>/dev/null | awk '{print $NF}')"
    printf 'commit\t%s\n' "$commit"
    printf 'settings\t%s\n' "BENCH_DURATION=$DURATION BENCH_CONNECTIONS=$CONNECTIONS BENCH_THREADS=$THREADS BENCH_ROUNDS=$ROUNDS BENCH_IDLE_CONNECTIONS=$IDLE"
    printf 'duration\t%s\n' "$DURATION"
    printf 'row3_duration\t%s\n' "$ROW3_DURATION"
    printf 'wrk_args\t%s\n' "$WRK_ARGS"
    printf 'warmup\t%s\n' "${WARMUP}s"
    printf 'orders\t%s\n' "$(IFS=';'; o="${orders[*]}"; echo "${o//;/; }")"
    printf 'idle_count\t%s\n' "$IDLE"
    printf 'load\t%s\n' "CPU $busy_before busy (load average $load_before) in the 2 s before the first row"
    printf 'tls\t%s\n' "$(for k in nginx-plain nginx-auth caddy sallyport; do if [ -s "tls-$k.txt" ]; then printf '%s %s; ' "$k" "$(cat "tls-$k.txt")"; fi; done | sed 's/; $//')"
    printf 'flood\t%s\n' "\`bench/flood.py\`: $FLOOD_CONCURRENCY concurrent TLS connections, each from a random address of a pool of 2048 in 127.0.0.0/8 (never 127.0.0.1, the legitimate client's), 4 wrong-password requests per connection, half for the real user name and half for random ones; it starts 1 s before wrk and stops 1 s after."
} >meta.tsv

python3 "$here/report.py" "$work" >report.md
cat report.md
mkdir -p "$(dirname "$RESULTS")"
cp report.md "$RESULTS"
log "written to $RESULTS"
