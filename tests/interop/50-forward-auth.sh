# shellcheck shell=bash
# Forward auth: sallyport's GET /.sallyport/auth answering for an application that sits
# behind a proxy nobody here wrote: Debian's nginx (auth_request, ingress-nginx style
# X-Original-URL) and Debian's Caddy (forward_auth, Traefik-style X-Forwarded-*), with a
# Python echo application behind both that shows which identity headers arrived. Then the
# endpoint directly with curl: both header styles from a trusted proxy, malformed original
# URLs and path tricks, and the same headers from a peer that is not a trusted proxy.
# Clients use distinct loopback source addresses (--interface 127.0.x.y) so the proxies'
# X-Forwarded-For names each one and throttling is per original client. Sourced by run.sh;
# the echo application lives in tests/interop/forward-auth/.

need=()
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v nginx >/dev/null || need+=(nginx-light)
install_packages "${need[@]}"
# Debian's caddy postinst enables and tries to start caddy.service (the stock Caddyfile
# on :80); without systemd that is skipped or fails harmlessly (its calls end in
# `|| true`). We never use that service: our own `caddy run` listens on a free port.
if ! command -v caddy >/dev/null; then
    install_packages caddy || echo "  (installing caddy failed; its checks will fail)"
fi

dir="$WORK/forward-auth"
fa_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/forward-auth"
mkdir -p "$dir/nginx" "$dir/caddy/data" "$dir/caddy/config"
fa_echo_pid=
fa_nginx_pid=
fa_caddy_pid=
SP_PID=

fa_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# fa_req SOURCE URL [CURL ARGS...]: one request from loopback address SOURCE. Sets
# FA_CODE (000 on a transport error) and FA_HDRS; the body is in $dir/body.
fa_req() {
    local src=$1 url=$2
    shift 2
    rm -f "$dir/head" "$dir/body"
    FA_CODE=$(curl -sk --max-time 5 --interface "$src" -D "$dir/head" -o "$dir/body" \
        -w '%{http_code}' "$@" "$url" 2>/dev/null || true)
    FA_HDRS=$(tr -d '\r' <"$dir/head" 2>/dev/null || true)
}

# fa_hdr NAME: the last response's NAME header values, joined with "|" ("" if absent).
fa_hdr() {
    printf '%s\n' "$FA_HDRS" | awk -v n="$1" '
        { i = index($0, ":") }
        i > 0 && tolower(substr($0, 1, i - 1)) == tolower(n) {
            v = substr($0, i + 1); sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v)
            out = out (out == "" ? "" : "|") v
        }
        END { print out }'
}

# fa_seen NAME: what the echo application received as NAME: its values joined with "|",
# "absent" if it got none, or "not-reached" if the last body is not from the application.
fa_seen() {
    python3 -c '
import json, sys
try:
    b = json.load(open(sys.argv[1]))
    assert b.get("backend") == "echo"
except Exception:
    print("not-reached"); sys.exit()
print("|".join(b["headers"].get(sys.argv[2].lower(), [])) or "absent")
' "$dir/body" "$1" 2>/dev/null || echo "not-reached"
}

# fa_refused LABEL: the last answer was not 2xx and the application was not reached.
fa_refused() {
    case "$FA_CODE" in
        2??) fail "$1 (got $FA_CODE: let through)" ;;
        000) fail "$1 (no answer)" ;;
        *) expect "$1 (got $FA_CODE)" "$(fa_seen x-forwarded-for)" "not-reached" ;;
    esac
}

fa_setup() {
    htpasswd -cbB -C 5 "$dir/users.htpasswd" alice 'alice-pw' 2>/dev/null
    htpasswd -bB -C 5 "$dir/users.htpasswd" bob 'bob-pw' 2>/dev/null
    printf 'admins: alice\ndev: alice bob\n' >"$dir/groups"
    cat >"$dir/sallyport.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.1/32"]
[server.tls]
self_signed = ["localhost"]
[auth]
realm = "fa"
[auth.basic]
htpasswd = "users.htpasswd"
groups = "groups"
[rate_limit]
max_failures = 3
window = "1m"
block_for = "15m"
[[route]]
path = "/public"
upstream = "builtin:echo"
auth = "public"
[[route]]
path = "/admin"
upstream = "builtin:echo"
allow_groups = ["admins"]
[[route]]
path = "/readonly"
upstream = "builtin:echo"
methods = ["GET", "HEAD"]
[[route]]
path = "/"
upstream = "builtin:echo"
TOML

    python3 "$fa_here/echo_backend.py" "$dir/echo.port" 2>"$dir/echo.log" &
    fa_echo_pid=$!
    for _ in $(seq 1 50); do
        [ -s "$dir/echo.port" ] && break
        sleep 0.1
    done
    fa_echo_port=$(cat "$dir/echo.port" 2>/dev/null || true)
    if [ -z "$fa_echo_port" ]; then
        cat "$dir/echo.log"
        fail "the echo application starts"
        return 1
    fi

    if ! start_sallyport "$dir/sallyport.toml" "$dir/sallyport.log"; then
        SP_PID=
        fail "sallyport starts with the forward-auth config"
        return 1
    fi
    fa_sp_port=${SP_ADDR##*:}
    return 0
}

# nginx in front, the ingress-nginx way: an internal auth location proxies the subrequest
# (nginx always sends it as GET, with the client's headers, Authorization and Cookie
# included) and names the original request in X-Original-URL / X-Original-Method.
fa_start_nginx() {
    fa_nginx_port=$(fa_free_port)
    cat >"$dir/nginx/nginx.conf" <<NGINX
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $dir/nginx;
    proxy_temp_path $dir/nginx;
    fastcgi_temp_path $dir/nginx;
    uwsgi_temp_path $dir/nginx;
    scgi_temp_path $dir/nginx;
    server {
        listen 127.0.0.1:$fa_nginx_port;
        location = /_fa_ready { return 204; }
        location = /_sallyport_auth {
            internal;
            proxy_pass https://127.0.0.1:$fa_sp_port/.sallyport/auth;
            proxy_ssl_verify off;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URL \$scheme://\$http_host\$request_uri;
            proxy_set_header X-Original-Method \$request_method;
            # Replaces whatever the client sent, so the client cannot pick its address.
            proxy_set_header X-Forwarded-For \$remote_addr;
        }
        location / {
            auth_request /_sallyport_auth;
            # No add_header for WWW-Authenticate: on a 401 nginx copies the auth
            # response's challenge to the client by itself (adding it again doubles it).
            auth_request_set \$auth_user \$upstream_http_x_auth_request_user;
            auth_request_set \$auth_groups \$upstream_http_x_auth_request_groups;
            auth_request_set \$auth_email \$upstream_http_x_auth_request_email;
            # Always set (an empty value drops the header), so a client's own
            # X-Auth-Request-* never reaches the application.
            proxy_set_header X-Auth-Request-User \$auth_user;
            proxy_set_header X-Auth-Request-Groups \$auth_groups;
            proxy_set_header X-Auth-Request-Email \$auth_email;
            proxy_pass http://127.0.0.1:$fa_echo_port;
        }
    }
}
NGINX
    # nginx's workers drop root; let them read the config dir (the temp dir is 0700).
    chmod a+x "$WORK"
    chmod -R a+rX "$dir"
    nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" 2>"$dir/nginx/stderr.log" &
    fa_nginx_pid=$!
    for _ in $(seq 1 50); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$fa_nginx_port/_fa_ready" && return 0
        kill -0 "$fa_nginx_pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$dir/nginx/stderr.log" "$dir/nginx/error.log" 2>/dev/null || true
    fail "nginx starts with the auth_request config"
    return 1
}

# Caddy in front: forward_auth sends a GET with X-Forwarded-Method/-Uri (and reverse_proxy's
# X-Forwarded-For/-Proto/-Host), relays any non-2xx answer to the client as it is, and on
# a 2xx copies the listed headers onto the request for the application.
fa_start_caddy() {
    if ! command -v caddy >/dev/null; then
        fail "caddy is installed"
        return 1
    fi
    fa_caddy_port=$(fa_free_port)
    # `route` keeps this order. Debian's Caddy 2.6 copy_headers sets every listed header
    # on a 2xx, and one the auth response lacks (X-Auth-Request-User on a public route,
    # -Email for a Basic login) becomes the literal text "{http.reverse_proxy.header.NAME}";
    # newer releases skip those and delete the client's value instead. So: strip what the
    # client sent first, and after forward_auth drop any header still holding the literal
    # placeholder, which gives the application what newer Caddy would.
    cat >"$dir/caddy/Caddyfile" <<CADDY
{
	admin off
	auto_https off
	storage file_system {
		root $dir/caddy/data
	}
}

http://:$fa_caddy_port {
	bind 127.0.0.1
	route {
		respond /_fa_ready 204
		request_header -X-Auth-Request-User
		request_header -X-Auth-Request-Email
		request_header -X-Auth-Request-Groups
		forward_auth https://127.0.0.1:$fa_sp_port {
			uri /.sallyport/auth
			copy_headers X-Auth-Request-User X-Auth-Request-Email X-Auth-Request-Groups
			transport http {
				tls_insecure_skip_verify
			}
		}
		@fa_no_user header_regexp X-Auth-Request-User ^\\{http\\.reverse_proxy\\.
		request_header @fa_no_user -X-Auth-Request-User
		@fa_no_email header_regexp X-Auth-Request-Email ^\\{http\\.reverse_proxy\\.
		request_header @fa_no_email -X-Auth-Request-Email
		@fa_no_groups header_regexp X-Auth-Request-Groups ^\\{http\\.reverse_proxy\\.
		request_header @fa_no_groups -X-Auth-Request-Groups
		reverse_proxy 127.0.0.1:$fa_echo_port
	}
}
CADDY
    HOME="$dir/caddy" XDG_DATA_HOME="$dir/caddy/data" XDG_CONFIG_HOME="$dir/caddy/config" \
        caddy run --config "$dir/caddy/Caddyfile" --adapter caddyfile >"$dir/caddy/caddy.log" 2>&1 &
    fa_caddy_pid=$!
    for _ in $(seq 1 100); do
        curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$fa_caddy_port/_fa_ready" && return 0
        kill -0 "$fa_caddy_pid" 2>/dev/null || break
        sleep 0.1
    done
    cat "$dir/caddy/caddy.log" 2>/dev/null || true
    fail "caddy starts with the forward_auth config"
    return 1
}

# fa_proxy_checks NAME PORT NET THROTTLED-STATUS: the same story through either proxy.
# Clients come from 127.0.NET.x; THROTTLED-STATUS is what the client gets once sallyport
# answers the auth request with 429.
fa_proxy_checks() {
    local name=$1 port=$2 net=$3 throttled=$4
    local base="http://app.test:$port"
    local res=(--resolve "app.test:$port:127.0.0.1")
    local c="127.0.$net.1" got i

    fa_req "$c" "$base/app/x" "${res[@]}" -u alice:alice-pw
    expect "$name: alice passes; the application sees X-Auth-Request-User alice" \
        "$FA_CODE $(fa_seen x-auth-request-user)" "200 alice"
    expect "$name: ... and X-Auth-Request-Groups admins,dev" "$(fa_seen x-auth-request-groups)" "admins,dev"
    expect "$name: ... and no X-Auth-Request-Email (a Basic login has none)" \
        "$(fa_seen x-auth-request-email)" "absent"

    fa_req "$c" "$base/app/x" "${res[@]}"
    expect "$name: no credentials: 401 at the client" "$FA_CODE" 401
    expect_contains "$name: ... with sallyport's Basic challenge relayed" \
        "$(fa_hdr www-authenticate)" 'Basic realm="fa"'
    fa_refused "$name: ... and the application is not reached"

    fa_req "127.0.$net.2" "$base/app/x" "${res[@]}" -u alice:wrong
    expect "$name: wrong password: 401" "$FA_CODE" 401

    fa_req "$c" "$base/admin/x" "${res[@]}" -u bob:bob-pw
    expect "$name: bob (not in admins) on /admin: 403" "$FA_CODE" 403
    fa_refused "$name: ... and the application is not reached"
    fa_req "$c" "$base/admin/x" "${res[@]}" -u bob:bob-pw -H 'X-Auth-Request-Groups: admins'
    expect "$name: bob claiming admins in X-Auth-Request-Groups himself: still 403" "$FA_CODE" 403
    fa_req "$c" "$base/admin/x" "${res[@]}" -u alice:alice-pw
    expect "$name: alice (in admins) on /admin: 200 as alice" \
        "$FA_CODE $(fa_seen x-auth-request-user)" "200 alice"

    fa_req "$c" "$base/public/x" "${res[@]}"
    expect "$name: /public without credentials: 200, no identity" \
        "$FA_CODE $(fa_seen x-auth-request-user)" "200 absent"

    fa_req "$c" "$base/readonly/x" "${res[@]}" -u bob:bob-pw -X POST -d 'a=1'
    expect "$name: POST to /readonly (methods GET, HEAD): 403" "$FA_CODE" 403
    fa_refused "$name: ... and the application is not reached"
    fa_req "$c" "$base/readonly/x" "${res[@]}" -u bob:bob-pw
    expect "$name: GET on /readonly: 200 as bob" "$FA_CODE $(fa_seen x-auth-request-user)" "200 bob"
    fa_req "$c" "$base/app/x" "${res[@]}" -u bob:bob-pw -X POST -d 'a=1'
    expect "$name: POST elsewhere: 200, and the body still reaches the application" \
        "$FA_CODE $(fa_seen content-length)" "200 3"

    fa_req "$c" "$base/app/x" "${res[@]}" -u alice:alice-pw -H 'X-Auth-Request-User: mallory'
    expect "$name: alice sending X-Auth-Request-User: mallory reaches the app as alice only" \
        "$FA_CODE $(fa_seen x-auth-request-user)" "200 alice"
    fa_req "$c" "$base/public/x" "${res[@]}" -H 'X-Auth-Request-User: mallory'
    expect "$name: X-Auth-Request-User: mallory on /public never reaches the app" \
        "$FA_CODE $(fa_seen x-auth-request-user)" "200 absent"
    fa_req "$c" "$base/app/x" "${res[@]}" -H 'X-Auth-Request-User: mallory'
    expect "$name: X-Auth-Request-User: mallory alone is no credential" "$FA_CODE" 401

    # Paths the proxy resolves to /admin/x: sallyport must not see them as /public.
    fa_req "$c" "$base/public/../admin/x" "${res[@]}" --path-as-is
    fa_refused "$name: /public/../admin/x without credentials is refused"
    fa_req "$c" "$base/public/%2e%2e/admin/x" "${res[@]}"
    fa_refused "$name: /public/%2e%2e/admin/x without credentials is refused"
    fa_req "$c" "$base/public/..%2Fadmin/x" "${res[@]}"
    fa_refused "$name: /public/..%2Fadmin/x without credentials is refused"
    fa_req "$c" "$base/public/..;/admin/x" "${res[@]}" --path-as-is
    fa_refused "$name: /public/..;/admin/x without credentials is refused"
    fa_req "$c" "$base/public/x" "${res[@]}" -u bob:bob-pw
    expect "$name: ... while /public/x itself still passes" "$FA_CODE" 200

    # Throttling is per original client (X-Forwarded-For from the proxy), not per proxy.
    local t="127.0.$net.3"
    got=""
    for i in 1 2 3; do
        fa_req "$t" "$base/app/x" "${res[@]}" -u "alice:guess-$i"
        got="$got$FA_CODE "
    done
    expect "$name: 3 wrong passwords from one client are each answered 401" "$got" "401 401 401 "
    fa_req "$t" "$base/app/x" "${res[@]}" -u alice:alice-pw
    expect "$name: then the right password from that client: $throttled" "$FA_CODE" "$throttled"
    fa_refused "$name: ... and the application is not reached"
    if [ "$throttled" = 429 ]; then
        local retry
        retry=$(fa_hdr retry-after)
        if [ -n "$retry" ] && [ "$retry" -ge 1 ] 2>/dev/null && [ "$retry" -le 900 ]; then
            pass "$name: ... with sallyport's Retry-After relayed ($retry s)"
        else
            fail "$name: ... with sallyport's Retry-After relayed (got '$retry')"
        fi
    fi
    fa_req "$t" "$base/app/x" "${res[@]}" -u alice:alice-pw -H 'X-Forwarded-For: 198.51.100.7'
    expect "$name: the blocked client sending its own X-Forwarded-For is still refused" \
        "$FA_CODE" "$throttled"
    fa_req "127.0.$net.4" "$base/app/x" "${res[@]}" -u alice:alice-pw
    expect "$name: another client behind the same proxy still passes" \
        "$FA_CODE $(fa_seen x-auth-request-user)" "200 alice"
}

# The endpoint itself, straight from curl: from 127.0.0.1 (a trusted proxy) and from
# 127.0.0.2 (not one).
fa_direct_checks() {
    local url="https://127.0.0.1:$fa_sp_port/.sallyport/auth"
    local orig=(-H 'X-Original-URL: https://app.test/admin/x')
    local traefik=(-H 'X-Forwarded-Proto: https' -H 'X-Forwarded-Host: app.test'
        -H 'X-Forwarded-Uri: /admin/x' -H 'X-Forwarded-Method: GET')

    fa_req 127.0.0.1 "$url" "${orig[@]}" -u alice:alice-pw
    expect "direct, X-Original-URL: alice on /admin: 200 with X-Auth-Request-User alice" \
        "$FA_CODE $(fa_hdr x-auth-request-user)" "200 alice"
    expect "direct: ... X-Auth-Request-Groups comma-joined" "$(fa_hdr x-auth-request-groups)" "admins,dev"
    expect "direct: ... and the identity headers X-Forwarded-User/-Groups" \
        "$(fa_hdr x-forwarded-user) $(fa_hdr x-forwarded-groups)" "alice admins,dev"
    expect "direct: ... Basic gives no email, so no X-Auth-Request-Email" "$(fa_hdr x-auth-request-email)" ""

    fa_req 127.0.0.1 "$url" "${traefik[@]}" -u alice:alice-pw
    expect "direct, Traefik-style X-Forwarded-*: alice on /admin: 200 as alice" \
        "$FA_CODE $(fa_hdr x-auth-request-user) $(fa_hdr x-auth-request-groups)" "200 alice admins,dev"
    fa_req 127.0.0.1 "$url" "${traefik[@]}" -u bob:bob-pw
    expect "direct, Traefik-style: bob on /admin: 403" "$FA_CODE" 403
    fa_req 127.0.0.1 "$url" "${traefik[@]}"
    expect "direct, Traefik-style: no credentials: 401" "$FA_CODE" 401
    expect_contains "direct: ... with the Basic challenge" "$(fa_hdr www-authenticate)" 'Basic realm="fa"'

    fa_req 127.0.0.1 "$url" "${orig[@]}" -u bob:bob-pw
    expect "direct, X-Original-URL: bob on /admin: 403" "$FA_CODE" 403
    fa_req 127.0.0.1 "$url" -H 'X-Original-URL: https://app.test/public/x'
    expect "direct: /public without credentials: 200 and no X-Auth-Request-User" \
        "$FA_CODE [$(fa_hdr x-auth-request-user)]" "200 []"
    fa_req 127.0.0.1 "$url" -H 'X-Original-URL: https://app.test/readonly/x' \
        -H 'X-Original-Method: POST' -u bob:bob-pw
    expect "direct: X-Original-Method POST on /readonly: 403" "$FA_CODE" 403
    fa_req 127.0.0.1 "$url" -H 'X-Original-URL: https://app.test/readonly/x' \
        -H 'X-Original-Method: HEAD' -u bob:bob-pw
    expect "direct: X-Original-Method HEAD on /readonly: 200" "$FA_CODE" 200
    fa_req 127.0.0.1 "$url" -H 'X-Forwarded-Proto: https' -H 'X-Forwarded-Host: app.test' \
        -H 'X-Forwarded-Uri: /readonly/x' -H 'X-Forwarded-Method: DELETE' -u bob:bob-pw
    expect "direct: X-Forwarded-Method DELETE on /readonly: 403" "$FA_CODE" 403
    fa_req 127.0.0.1 "$url" "${orig[@]}" -u alice:alice-pw -X POST -d 'x=1'
    expect "direct: the auth request itself may be a POST" "$FA_CODE" 200
    fa_req 127.0.0.1 "$url" "${orig[@]}" -u alice:alice-pw -I
    expect "direct: ... or a HEAD" "$FA_CODE" 200

    # Malformed or ambiguous originals are never a 200 (400, or 401 for lack of credentials).
    local bad
    for bad in 'http://[::1' 'not a url' '/admin/x' 'https://app.test/public/..%2Fadmin/x' \
        'https://app.test/public/%2e%2e/admin/x' 'https://app.test/public/../admin/x' \
        'https://app.test/public/..;/admin/x' 'https://app.test/public%2F..%2Fadmin/x' \
        'https://app.test/public/%2E%2E%2fadmin/x' 'https://app.test/public\..\admin/x'; do
        fa_req 127.0.0.1 "$url" -H "X-Original-URL: $bad"
        case "$FA_CODE" in
            400 | 401) pass "direct: X-Original-URL '$bad' is refused ($FA_CODE)" ;;
            *) fail "direct: X-Original-URL '$bad' is refused (got $FA_CODE, want 400 or 401)" ;;
        esac
    done
    for bad in '/public/../admin/x' '/public/%2e%2e/admin/x' '/public/..%2Fadmin/x' 'admin/x'; do
        fa_req 127.0.0.1 "$url" -H 'X-Forwarded-Proto: https' -H 'X-Forwarded-Host: app.test' \
            -H "X-Forwarded-Uri: $bad" -H 'X-Forwarded-Method: GET'
        case "$FA_CODE" in
            400 | 401) pass "direct: X-Forwarded-Uri '$bad' is refused ($FA_CODE)" ;;
            *) fail "direct: X-Forwarded-Uri '$bad' is refused (got $FA_CODE, want 400 or 401)" ;;
        esac
    done

    # From a peer outside trusted_proxies the forwarding headers mean nothing: 400.
    fa_req 127.0.0.2 "$url" "${orig[@]}" -u alice:alice-pw
    expect "direct from 127.0.0.2 (untrusted), X-Original-URL: 400" "$FA_CODE" 400
    fa_req 127.0.0.2 "$url" "${traefik[@]}" -u alice:alice-pw
    expect "direct from 127.0.0.2 (untrusted), Traefik-style: 400" "$FA_CODE" 400
    fa_req 127.0.0.2 "$url" -H 'X-Original-URL: https://app.test/public/x'
    expect "direct from 127.0.0.2 (untrusted), even for a public URL: 400" "$FA_CODE" 400
}

fa_cleanup() {
    local pid
    for pid in "$fa_caddy_pid" "$fa_nginx_pid" "$fa_echo_pid"; do
        [ -n "$pid" ] || continue
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    fa_caddy_pid=''
    fa_nginx_pid=''
    fa_echo_pid=''
    if [ -n "${SP_PID:-}" ]; then
        stop_sallyport || true
        SP_PID=
    fi
}

if fa_setup; then
    fa_direct_checks || true
    # nginx auth_request keeps a 401 (copying WWW-Authenticate) and a 403, and turns every
    # other non-2xx answer, sallyport's 429 and 400 included, into a 500 of its own.
    if fa_start_nginx; then
        fa_proxy_checks nginx "$fa_nginx_port" 10 500 || true
    fi
    # Caddy forward_auth relays the 429 (and its Retry-After) as it is.
    if fa_start_caddy; then
        fa_proxy_checks caddy "$fa_caddy_port" 20 429 || true
    fi
    fa_cleanup
    expect_absent "no password in sallyport's log" "$(cat "$dir/sallyport.log")" 'alice-pw\|bob-pw\|guess-'
else
    fa_cleanup
fi
