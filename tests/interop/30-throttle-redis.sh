# Shared throttling: two sallyport processes count failed logins in one real redis-server
# (Debian's), so a guesser gets one budget across both; when Redis dies they keep serving
# on local counters, and share again once it is back. Clients are curl on distinct
# loopback source addresses (--interface 127.0.0.x). Sourced by run.sh.

need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v htpasswd >/dev/null || need+=(apache2-utils)
install_packages "${need[@]}"

dir="$WORK/throttle"
mkdir -p "$dir"
htpasswd -cbB -C 5 "$dir/users.htpasswd" alice 'alice-pw' 2>/dev/null
htpasswd -bB -C 5 "$dir/users.htpasswd" facade 'facade-pw' 2>/dev/null
htpasswd -bB -C 5 "$dir/users.htpasswd" carol 'carol-pw' 2>/dev/null

redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
start_redis() {
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        >"$dir/redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 1 50); do
        [ "$(redis-cli -p "$redis_port" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    echo "redis-server did not start"; cat "$dir/redis.log"; return 1
}
start_redis

for replica in a b; do
    cat >"$dir/$replica.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
[server.tls]
self_signed = ["localhost"]
[auth.basic]
htpasswd = "users.htpasswd"
[rate_limit]
max_failures = 4
window = "1m"
block_for = "15m"
max_failures_per_user = 6
user_window = "1h"
redis = "redis://127.0.0.1:$redis_port/0"
[[route]]
path = "/"
upstream = "builtin:echo"
TOML
done
start_sallyport "$dir/a.toml" "$dir/a.log"
pid_a=$SP_PID addr_a=$SP_ADDR
start_sallyport "$dir/b.toml" "$dir/b.log"
pid_b=$SP_PID addr_b=$SP_ADDR

# status REPLICA_ADDR SOURCE USER:PASSWORD -> HTTP status (000 on a transport error)
status() {
    curl -sk -o /dev/null -w '%{http_code}' --max-time 10 --interface "$2" \
        -u "$3" "https://$1/" || true
}

# One budget per client across replicas: 2 guesses at each, then both refuse.
got=""
for addr in "$addr_a" "$addr_a" "$addr_b" "$addr_b"; do
    got="$got$(status "$addr" 127.0.0.2 alice:wrong) "
done
expect "4 guesses from one client spread over two replicas are each answered" "$got" "401 401 401 401 "
expect "5th attempt at replica A is refused, right password or not" "$(status "$addr_a" 127.0.0.2 alice:alice-pw)" 429
expect "5th attempt at replica B is refused too" "$(status "$addr_b" 127.0.0.2 facade:facade-pw)" 429
retry=$(curl -sk -o /dev/null -D - --interface 127.0.0.2 -u alice:alice-pw "https://$addr_b/" | tr -d '\r' | awk -F': ' 'tolower($1)=="retry-after"{print $2}')
if [ -n "$retry" ] && [ "$retry" -ge 895 ] && [ "$retry" -le 900 ]; then
    pass "Retry-After from the shared block is the remaining block time ($retry s)"
else
    fail "Retry-After from the shared block is the remaining block time (got '$retry')"
fi
expect "another client is unaffected" "$(status "$addr_b" 127.0.0.3 alice:alice-pw)" 200
blocks=$(cat "$dir/a.log" "$dir/b.log" | grep -c 'client blocked' || true)
expect "the block is logged once, by the replica whose failure started it" "$blocks" 1
expect_absent "no password in either log" "$(cat "$dir/a.log" "$dir/b.log")" 'wrong'

# One budget per username across clients and replicas: 6 guesses, 3 per replica.
got=""
for i in 4 5 6; do
    got="$got$(status "$addr_a" "127.0.0.$i" facade:guess-a) $(status "$addr_b" "127.0.0.$i" facade:guess-b) "
done
expect "6 guesses on one name from 3 clients over 2 replicas are answered" "$got" "401 401 401 401 401 401 "
expect "facade is throttled for a fresh client at A" "$(status "$addr_a" 127.0.0.7 facade:facade-pw)" 429
expect "facade is throttled for a fresh client at B" "$(status "$addr_b" 127.0.0.7 facade:facade-pw)" 429
expect "alice is not, from the same client" "$(status "$addr_b" 127.0.0.7 alice:alice-pw)" 200
keys=$(redis-cli -p "$redis_port" --scan --pattern 'sallyport:*' | sort | tr '\n' ' ')
expect_contains "counters live in Redis under the prefix" "$keys" "sallyport:block:"
expect_absent "Redis keys hold no usernames" "$keys" 'facade'
if redis-cli -p "$redis_port" --scan --pattern 'sallyport:*' |
    xargs -r -n1 redis-cli -p "$redis_port" pttl | grep -qx -- '-1'; then
    fail "every Redis key expires by itself"
else
    pass "every Redis key expires by itself"
fi

# Redis dies: both replicas keep serving, counting locally.
kill -KILL "$REDIS_PID"
wait "$REDIS_PID" 2>/dev/null || true
expect "with Redis gone, a good login still works" "$(status "$addr_a" 127.0.0.8 alice:alice-pw)" 200
got=""
for _ in 1 2 3 4; do got="$got$(status "$addr_a" 127.0.0.9 alice:wrong) "; done
expect "with Redis gone, guesses are answered as usual" "$got" "401 401 401 401 "
expect "with Redis gone, the local budget still blocks" "$(status "$addr_a" 127.0.0.9 alice:alice-pw)" 429
expect_contains "the outage is logged" "$(cat "$dir/a.log")" "Redis unreachable"
expect_absent "no request failed with a 5xx during the outage" "$(grep -o 'status=5[0-9][0-9]' "$dir/a.log" || true)" 'status=5'

# Redis returns (empty, on the same port): sharing resumes by itself. (carol: alice and
# facade are throttled in the replicas' local counters, which answer before Redis is asked.)
start_redis
recovered=no
for _ in $(seq 1 50); do
    status "$addr_a" 127.0.0.10 carol:carol-pw >/dev/null
    status "$addr_b" 127.0.0.10 carol:carol-pw >/dev/null
    if grep -q 'Redis reachable again' "$dir/a.log" && grep -q 'Redis reachable again' "$dir/b.log"; then
        recovered=yes
        break
    fi
    sleep 0.2
done
expect "both replicas notice Redis is back" "$recovered" yes
got=""
for addr in "$addr_a" "$addr_b" "$addr_a" "$addr_b"; do
    got="$got$(status "$addr" 127.0.0.11 carol:wrong) "
done
expect "after recovery, guesses at both replicas are answered" "$got" "401 401 401 401 "
expect "after recovery, the budget is shared again" "$(status "$addr_a" 127.0.0.11 carol:carol-pw)" 429

SP_PID=$pid_a; stop_sallyport || true
SP_PID=$pid_b; stop_sallyport || true

# OIDC sessions in the same Redis (session_store): the cargo test plays the IdP and the
# browser, this real redis-server holds the sessions.
if SALLYPORT_TEST_REDIS="redis://127.0.0.1:$redis_port/1" \
    cargo test --quiet --test oidc -- --ignored --exact \
    redis_sessions_keep_cookies_small_and_logout_revokes_them >"$dir/redis-sessions.log" 2>&1 &&
    grep -q ' 1 passed' "$dir/redis-sessions.log"; then
    pass "OIDC sessions in Redis: small cookie, idle expiry, logout revokes copies, new login new reference"
else
    cat "$dir/redis-sessions.log"
    fail "OIDC sessions in Redis: small cookie, idle expiry, logout revokes copies, new login new reference"
fi
kill -TERM "$REDIS_PID" 2>/dev/null || true
wait "$REDIS_PID" 2>/dev/null || true
