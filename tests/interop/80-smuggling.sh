# shellcheck shell=bash
# Request smuggling through real front proxies: Debian's nginx and Caddy, each keeping a
# pool of keep-alive connections to sallyport (TLS), which proxies to a Python echo
# application. tests/interop/smuggling/attack.py sends CL.TE, TE.CL, obfuscated
# Transfer-Encoding, bare-LF, folded-header and bad-chunk requests to the front, each
# hiding a request for /public/smuggled-N, then checks that victims on fresh connections
# get the answers to their own requests. Finally, the application's log must show no
# smuggled request at all. Sourced by run.sh.

need=()
command -v nginx >/dev/null || need+=(nginx-light)
install_packages "${need[@]}"
if ! command -v caddy >/dev/null; then
    install_packages caddy || echo "  (installing caddy failed; its checks will fail)"
fi

sm_dir="$WORK/smuggling"
sm_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$sm_dir/nginx" "$sm_dir/caddy/data" "$sm_dir/caddy/config"
sm_pids=()
SP_PID=

sm_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# sm_wait_http URL PID LABEL: waits (bounded) until URL answers.
sm_wait_http() {
    for _ in $(seq 1 100); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        kill -0 "$2" 2>/dev/null || break
        sleep 0.1
    done
    fail "$3 starts"
    return 1
}

# sm_attack LABEL PORT: runs attack.py against the front on PORT; one check per line.
sm_attack() {
    local label=$1 port=$2 line
    while IFS= read -r line; do
        case "$line" in
            ok\ *) pass "$label: ${line#ok }" ;;
            *) fail "$label: ${line#FAIL }" ;;
        esac
    done < <(timeout 120 python3 "$sm_here/smuggling/attack.py" 127.0.0.1 "$port" 2>&1 || echo "FAIL attack.py did not finish")
}

sm_run() {
    python3 "$sm_here/forward-auth/echo_backend.py" "$sm_dir/echo.port" 2>"$sm_dir/echo.log" &
    sm_pids+=($!)
    for _ in $(seq 1 50); do
        [ -s "$sm_dir/echo.port" ] && break
        sleep 0.1
    done
    local echo_port
    echo_port=$(cat "$sm_dir/echo.port" 2>/dev/null || true)
    [ -n "$echo_port" ] || { fail "the echo application starts"; return 1; }

    htpasswd -cbB -C 5 "$sm_dir/users.htpasswd" alice 'alice-pw' 2>/dev/null
    cat >"$sm_dir/sallyport.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
trusted_proxies = ["127.0.0.1/32"]
[server.tls]
self_signed = ["localhost"]
[auth.basic]
htpasswd = "users.htpasswd"
[[route]]
path = "/public"
upstream = "http://127.0.0.1:$echo_port"
auth = "public"
[[route]]
path = "/"
upstream = "http://127.0.0.1:$echo_port"
TOML
    if ! start_sallyport "$sm_dir/sallyport.toml" "$sm_dir/sallyport.log"; then
        SP_PID=
        fail "sallyport starts with the smuggling config"
        return 1
    fi
    local sp_port=${SP_ADDR##*:}

    local nginx_port
    nginx_port=$(sm_free_port)
    cat >"$sm_dir/nginx/nginx.conf" <<NGINX
daemon off;
pid $sm_dir/nginx/nginx.pid;
error_log $sm_dir/nginx/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $sm_dir/nginx;
    proxy_temp_path $sm_dir/nginx;
    fastcgi_temp_path $sm_dir/nginx;
    uwsgi_temp_path $sm_dir/nginx;
    scgi_temp_path $sm_dir/nginx;
    upstream sallyport {
        server 127.0.0.1:$sp_port;
        keepalive 4;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location = /_ready { return 204; }
        location / {
            proxy_pass https://sallyport;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;
            proxy_ssl_verify off;
            proxy_ssl_session_reuse on;
        }
    }
}
NGINX
    chmod a+x "$WORK"
    chmod -R a+rX "$sm_dir"
    nginx -c "$sm_dir/nginx/nginx.conf" -p "$sm_dir/nginx" 2>"$sm_dir/nginx/stderr.log" &
    sm_pids+=($!)
    if sm_wait_http "http://127.0.0.1:$nginx_port/_ready" "${sm_pids[-1]}" "nginx in front"; then
        expect "nginx in front: a normal request reaches the application" \
            "$(curl -s --max-time 5 "http://127.0.0.1:$nginx_port/public/hello" | python3 -c 'import json,sys; print(json.load(sys.stdin)["path"])' 2>/dev/null)" \
            "/public/hello"
        sm_attack "nginx -> sallyport" "$nginx_port"
    fi

    if command -v caddy >/dev/null; then
        local caddy_port
        caddy_port=$(sm_free_port)
        cat >"$sm_dir/caddy/Caddyfile" <<CADDY
{
	admin off
	auto_https off
	storage file_system {
		root $sm_dir/caddy/data
	}
}

http://:$caddy_port {
	bind 127.0.0.1
	respond /_ready 204
	reverse_proxy https://127.0.0.1:$sp_port {
		header_up Host localhost
		transport http {
			tls_insecure_skip_verify
			keepalive 60s
		}
	}
}
CADDY
        HOME="$sm_dir/caddy" XDG_DATA_HOME="$sm_dir/caddy/data" XDG_CONFIG_HOME="$sm_dir/caddy/config" \
            caddy run --config "$sm_dir/caddy/Caddyfile" --adapter caddyfile >"$sm_dir/caddy/caddy.log" 2>&1 &
        sm_pids+=($!)
        if sm_wait_http "http://127.0.0.1:$caddy_port/_ready" "${sm_pids[-1]}" "Caddy in front"; then
            sm_attack "Caddy -> sallyport" "$caddy_port"
        fi
    else
        fail "caddy is installed"
    fi

    # What the application received, whatever the fronts and sallyport answered.
    expect_absent "no smuggled request ever reached the application" "$(cat "$sm_dir/echo.log")" "smuggled"
    expect_contains "the victims did reach it" "$(cat "$sm_dir/echo.log")" "/public/victim-"
}

sm_run || true
stop_sallyport >/dev/null 2>&1 || true
for pid in "${sm_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
wait 2>/dev/null || true
