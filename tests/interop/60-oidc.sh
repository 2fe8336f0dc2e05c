# shellcheck shell=bash
# OIDC interop: sallyport as a relying party of node `oidc-provider` (its development
# login form and consent page, refresh tokens with rotation, RP-initiated logout) over
# HTTPS behind a test CA, with Debian's Chromium driven headless by playwright-core as the
# user, and curl for what a browser would not do. Two sallyport instances: A for the login,
# cookies, hostile redirects, two tabs, refresh and logout; B with session_idle = "3s" for
# idle expiry. The IdP's access tokens live 2 s so the refresh path is exercised. The
# browser resolves nothing but loopback. Sallyport-free checks of the IdP and the browser
# come first, so a failure further down is sallyport's. Sourced by run.sh; the IdP and the
# browser driver live in tests/interop/oidc/.

oidc_need=()
command -v chromium >/dev/null || oidc_need+=(chromium)
command -v npm >/dev/null || oidc_need+=(npm)
install_packages "${oidc_need[@]}" || echo "  (installing ${oidc_need[*]} failed; the checks needing them will fail)"

dir="$WORK/oidc"
oidc_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/oidc"
oidc_at_ttl=2
oidc_idp_pid=
oidc_a_pid=
oidc_b_pid=
oidc_idp_port=
oidc_a_port=
oidc_b_port=
oidc_idp=
oidc_a=
oidc_b=
SP_PID=

oidc_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# oidc_req URL [CURL ARGS...]: one request to sallyport (localhost pinned to 127.0.0.1).
# Sets CODE and HDRS; the body is in $dir/body.
oidc_req() {
    local url=$1 port
    shift
    port=$(printf '%s' "$url" | sed -n 's#^https://localhost:\([0-9]*\).*#\1#p')
    rm -f "$dir/head" "$dir/body"
    CODE=$(curl -sk --max-time 5 --resolve "localhost:$port:127.0.0.1" -D "$dir/head" \
        -o "$dir/body" -w '%{http_code}' "$@" "$url" 2>/dev/null || true)
    HDRS=$(tr -d '\r' <"$dir/head" 2>/dev/null || true)
}

# oidc_hdr NAME: the last response's NAME header values, joined with "|" ("" if absent).
oidc_hdr() {
    printf '%s\n' "$HDRS" | awk -v n="$1" '
        { i = index($0, ":") }
        i > 0 && tolower(substr($0, 1, i - 1)) == tolower(n) {
            v = substr($0, i + 1); sub(/^[ \t]+/, "", v); sub(/[ \t]+$/, "", v)
            out = out (out == "" ? "" : "|") v
        }
        END { print out }'
}

# The Set-Cookie values of the last response that set a session cookie (a non-empty one).
oidc_session_set() {
    oidc_hdr set-cookie | tr '|' '\n' | grep -E '^__Host-sallyport_session(_[0-9]+)?=[^;]' || true
}

# oidc_cookie_attrs SET-COOKIE: its attributes lowercased, spaces dropped, as "|a|b=c|".
oidc_cookie_attrs() {
    printf '%s' "$1" | cut -d';' -f2- | tr '[:upper:]' '[:lower:]' | tr -d ' ' |
        awk -F';' '{ out = "|"; for (i = 1; i <= NF; i++) out = out $i "|"; print out }'
}

# What builtin:echo saw as x-forwarded-user ("absent", or "not-echo" for another body).
oidc_seen_user() {
    python3 -c '
import json, sys
try:
    h = json.load(open(sys.argv[1]))["headers"]
except Exception:
    print("not-echo"); sys.exit()
print(",".join(h.get("x-forwarded-user", [])) or "absent")
' "$dir/body" 2>/dev/null || echo "not-echo"
}

# oidc_login_redirect LOCATION BASE: "ok", or what is wrong with sallyport's redirect to
# the IdP (against the discovery document in $dir/discovery.json).
oidc_login_redirect() {
    python3 - "$1" "$2" "$dir/discovery.json" <<'PY'
import json, sys
from urllib.parse import urlsplit, parse_qs
loc, base, disc = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
u = urlsplit(loc)
if f"{u.scheme}://{u.netloc}{u.path}" != disc["authorization_endpoint"]:
    sys.exit(print(f"not the authorization_endpoint: {loc}"))
q = {k: v[0] for k, v in parse_qs(u.query).items()}
want = {"response_type": "code", "client_id": "sallyport",
        "redirect_uri": base + "/.sallyport/callback", "code_challenge_method": "S256"}
bad = [f"{k}={q.get(k)}" for k, v in want.items() if q.get(k) != v]
bad += [f"no {k}" for k in ("state", "nonce", "code_challenge") if not q.get(k)]
scopes = q.get("scope", "").split()
bad += [f"scope lacks {s}" for s in ("openid", "email", "profile", "offline_access") if s not in scopes]
if len(q.get("code_challenge", "")) != 43:
    bad.append(f"code_challenge is not a base64url SHA-256: {q.get('code_challenge')}")
print("; ".join(bad) or "ok")
PY
}

# A query parameter of URL.
oidc_param() {
    python3 -c 'import sys; from urllib.parse import urlsplit, parse_qs
print(parse_qs(urlsplit(sys.argv[1]).query).get(sys.argv[2], [""])[0])' "$1" "$2"
}

# oidc_driver MODE: runs tests/interop/oidc/browser.mjs and turns its lines into checks.
oidc_driver() {
    local mode=$1 line out="$dir/browser-$1.out"
    IDP_ISSUER="$oidc_idp" IDP_LOG="$dir/idp.log" IDP_SECRET_FILE="$dir/client-secret" \
        IDP_AT_TTL="$oidc_at_ttl" OUT_DIR="$dir" SP_A="$oidc_a" SP_B="$oidc_b" \
        CHROMIUM="$(command -v chromium)" \
        timeout -k 5 170 node "$dir/node/browser.mjs" "$mode" >"$out" 2>"$dir/browser-$mode.err" || true
    while IFS= read -r line; do
        case "$line" in
            "ok "*) pass "${line#ok }" ;;
            "FAIL "*) fail "${line#FAIL }" ;;
            "note "*) echo "  note  ${line#note }" ;;
        esac
    done <"$out"
    if ! grep -qx "done" "$out"; then
        fail "the browser driver ($mode) runs to the end"
        tail -20 "$dir/browser-$mode.err"
    fi
}

oidc_setup() {
    mkdir -p "$dir/node"
    local major
    major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
    if [ "$major" -lt 20 ]; then
        fail "node >= 20 is available for oidc-provider 9 (got $(node --version 2>/dev/null || echo none))"
        return 1
    fi
    cp "$oidc_here/package.json" "$oidc_here/package-lock.json" "$oidc_here/idp.mjs" \
        "$oidc_here/browser.mjs" "$dir/node/"
    if ! (cd "$dir/node" && npm ci --no-audit --no-fund --loglevel=error) >"$dir/npm.log" 2>&1; then
        cat "$dir/npm.log"
        fail "oidc-provider and playwright-core install from npm"
        return 1
    fi

    # The IdP's TLS: a test CA (given to sallyport as issuer_ca) and a leaf for localhost.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=oidc interop CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -keyout "$dir/idp.key" -out "$dir/idp.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\n' >"$dir/idp.ext"
    openssl x509 -req -in "$dir/idp.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/idp.ext" -out "$dir/idp.crt" 2>/dev/null
    openssl rand -hex 24 >"$dir/client-secret"
    openssl rand -hex 32 >"$dir/cookie-a"
    openssl rand -hex 32 >"$dir/cookie-b"
    if [ ! -s "$dir/idp.crt" ] || [ ! -s "$dir/cookie-b" ]; then
        fail "openssl makes the IdP certificate and the secrets"
        return 1
    fi

    oidc_idp_port=$(oidc_free_port)
    oidc_a_port=$(oidc_free_port)
    oidc_b_port=$(oidc_free_port)
    oidc_idp="https://localhost:$oidc_idp_port"
    oidc_a="https://localhost:$oidc_a_port"
    oidc_b="https://localhost:$oidc_b_port"

    IDP_PORT=$oidc_idp_port IDP_CERT="$dir/idp.crt" IDP_KEY="$dir/idp.key" \
        IDP_SECRET_FILE="$dir/client-secret" IDP_RP_BASES="$oidc_a,$oidc_b" \
        IDP_AT_TTL=$oidc_at_ttl node "$dir/node/idp.mjs" >"$dir/idp.log" 2>&1 &
    oidc_idp_pid=$!
    local up=
    # A cold first start (module loading, an RSA key) can take several seconds.
    for _ in $(seq 1 300); do
        grep -q '^ready ' "$dir/idp.log" 2>/dev/null && { up=1; break; }
        kill -0 "$oidc_idp_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$up" ]; then
        cat "$dir/idp.log"
        fail "the IdP (oidc-provider) starts"
        return 1
    fi

    curl -s --max-time 5 --cacert "$dir/ca.pem" --resolve "localhost:$oidc_idp_port:127.0.0.1" \
        -o "$dir/discovery.json" "$oidc_idp/.well-known/openid-configuration" 2>/dev/null || true
    expect "IdP: discovery over HTTPS, verified against the test CA, names issuer $oidc_idp" \
        "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["issuer"])' \
            "$dir/discovery.json" 2>/dev/null || echo none)" "$oidc_idp"

    # The IdP and Chromium alone, and the ID token for the Bearer check.
    oidc_driver idp
    return 0
}

# oidc_config NAME PORT COOKIE-SECRET IDLE: writes $dir/NAME.toml.
oidc_config() {
    cat >"$dir/$1.toml" <<TOML
[server]
listen = ["127.0.0.1:$2"]
public_url = "https://localhost:$2"
[server.tls]
self_signed = ["localhost"]
[log]
level = "info"
[auth.oidc]
issuer = "$oidc_idp"
issuer_ca = "$dir/ca.pem"
client_id = "sallyport"
client_secret_file = "$dir/client-secret"
scopes = ["openid", "email", "profile", "offline_access"]
cookie_secret_file = "$dir/$3"
session_idle = "$4"
session_max = "12h"
audiences = ["sallyport"]
claims = { user = "sub", email = "email" }
[rate_limit]
enabled = false
[[route]]
path = "/public"
upstream = "builtin:echo"
auth = "public"
[[route]]
path = "/"
upstream = "builtin:echo"
auth = "required"
TOML
}

oidc_start() {
    oidc_config a "$oidc_a_port" cookie-a 30m
    oidc_config b "$oidc_b_port" cookie-b 3s
    local rc=0
    "$SALLYPORT" check --config "$dir/a.toml" >"$dir/check.out" 2>&1 || rc=$?
    expect "check accepts the [auth.oidc] config" "$rc" 0
    [ "$rc" -eq 0 ] || cat "$dir/check.out"

    if ! start_sallyport "$dir/a.toml" "$dir/a.log"; then
        SP_PID=
        fail "sallyport A starts with [auth.oidc] (discovery against the IdP)"
        return 1
    fi
    oidc_a_pid=$SP_PID
    if ! start_sallyport "$dir/b.toml" "$dir/b.log"; then
        SP_PID=
        fail "sallyport B starts with [auth.oidc] and session_idle = 3s"
        return 1
    fi
    oidc_b_pid=$SP_PID
    SP_PID=
    return 0
}

# Without a session, with curl: the challenge, the redirect to login, the public route,
# the redirect to the IdP, and the login cookie.
oidc_curl_checks() {
    local a=$oidc_a loc rd c1 c2 n1 n2

    oidc_req "$a/app/x?y=1" -H 'Accept: application/json'
    expect "no session, Accept: application/json: 401" "$CODE" 401
    case "$(oidc_hdr www-authenticate)" in
        'Bearer realm="'*) pass "... with a Bearer challenge" ;;
        *) fail "... with a Bearer challenge (got '$(oidc_hdr www-authenticate)')" ;;
    esac

    oidc_req "$a/app/x?y=1" -H 'Accept: text/html,application/xhtml+xml,*/*;q=0.8'
    loc=$(oidc_hdr location)
    expect "no session, Accept: text/html: 302 to $a/.sallyport/login?rd=..." \
        "$CODE ${loc%%\?*}" "302 $a/.sallyport/login"
    rd=$(oidc_param "$loc" rd)
    expect "... with rd the original path and query" "$rd" "/app/x?y=1"
    # HTTP/1.1: this is about telling a browser's HEAD from an API call, not HEAD framing.
    oidc_req "$a/app/x" -I --http1.1 -H 'Accept: text/html'
    expect "no session, HEAD with Accept: text/html: 302 too" "$CODE" 302

    oidc_req "$a/public/x" -H 'Accept: text/html'
    expect "/public without a session: 200 from the upstream, no identity" \
        "$CODE $(oidc_seen_user)" "200 absent"
    oidc_req "$a/.sallyport/userinfo" -H 'Accept: application/json'
    expect "/.sallyport/userinfo without a session: 401" "$CODE" 401

    oidc_req "$a/.sallyport/login?rd=%2Fapp%2Fy"
    loc=$(oidc_hdr location)
    expect "/.sallyport/login: 302" "$CODE" 302
    expect "... to the IdP's authorization_endpoint with code, client_id, redirect_uri, scope, state, nonce, S256 PKCE" \
        "$(oidc_login_redirect "$loc" "$a")" ok
    c1=$(oidc_hdr set-cookie | tr '|' '\n' | grep '^__Host-sallyport_login_' | head -1 || true)
    n1=${c1%%=*}
    if [[ $n1 =~ ^__Host-sallyport_login_[0-9a-f]{16}$ ]]; then
        pass "... setting a __Host-sallyport_login_<16 hex> cookie"
    else
        fail "... setting a __Host-sallyport_login_<16 hex> cookie (got '$c1')"
    fi
    local attrs
    attrs=$(oidc_cookie_attrs "$c1")
    if [[ $attrs == *"|secure|"* && $attrs == *"|httponly|"* && $attrs == *"|path=/|"* && $attrs != *"|domain="* ]]; then
        pass "... which is Secure, HttpOnly, Path=/, without Domain"
    else
        fail "... which is Secure, HttpOnly, Path=/, without Domain (got '$c1')"
    fi
    printf '%s\n' "$loc" >"$dir/login1.loc"
    printf '%s\n' "${c1%%;*}" >"$dir/login1.cookie"

    oidc_req "$a/.sallyport/login?rd=%2Fapp%2Fz"
    c2=$(oidc_hdr set-cookie | tr '|' '\n' | grep '^__Host-sallyport_login_' | head -1 || true)
    n2=${c2%%=*}
    if [ -n "$n2" ] && [ "$n2" != "$n1" ]; then
        pass "a second login gets a login cookie of its own name"
    else
        fail "a second login gets a login cookie of its own name (got '$n1' and '$n2')"
    fi
    printf '%s\n' "$(oidc_hdr location)" >"$dir/login2.loc"
    printf '%s\n' "${c2%%;*}" >"$dir/login2.cookie"
}

# /.sallyport/callback abuse: 400 each, and never a session cookie.
oidc_callback_checks() {
    local a=$oidc_a s1 s2
    s1=$(oidc_param "$(cat "$dir/login1.loc")" state)
    s2=$(oidc_param "$(cat "$dir/login2.loc")" state)

    oidc_req "$a/.sallyport/callback?code=forged" -H 'Accept: text/html'
    expect "callback without state: 400, no session cookie" "$CODE [$(oidc_session_set)]" "400 []"
    oidc_req "$a/.sallyport/callback?code=forged&state=made-up-state" -H 'Accept: text/html'
    expect "callback with a made-up state: 400, no session cookie" "$CODE [$(oidc_session_set)]" "400 []"
    oidc_req "$a/.sallyport/callback?code=forged&state=made-up-state" -H 'Accept: text/html' \
        -H "Cookie: $(cat "$dir/login1.cookie")"
    expect "callback with a made-up state and a real login cookie: 400, no session cookie" \
        "$CODE [$(oidc_session_set)]" "400 []"
    oidc_req "$a/.sallyport/callback?code=forged&state=$s1" -H 'Accept: text/html'
    expect "callback with a real state but without its login cookie: 400, no session cookie" \
        "$CODE [$(oidc_session_set)]" "400 []"
    oidc_req "$a/.sallyport/callback?code=forged&state=$s1" -H 'Accept: text/html' \
        -H "Cookie: $(cat "$dir/login2.cookie")"
    expect "callback with login 1's state and login 2's cookie: 400, no session cookie" \
        "$CODE [$(oidc_session_set)]" "400 []"
    oidc_req "$a/.sallyport/callback?code=forged&state=$s2" -H 'Accept: text/html' \
        -H "Cookie: $(cat "$dir/login2.cookie")"
    case "$CODE" in
        2?? | 3??) fail "callback with a matching state but a forged code is refused (got $CODE)" ;;
        000) fail "callback with a matching state but a forged code is refused (no answer)" ;;
        *) expect "callback with a matching state but a forged code: refused ($CODE), no session cookie" \
            "[$(oidc_session_set)]" "[]" ;;
    esac
}

# The IdP's ID token (aud sallyport, with the login's nonce) as a Bearer token, from curl.
# An ID token is not an access token: it travels in browser history (logout's
# id_token_hint), so it must not open the API even with its audience configured.
oidc_bearer_checks() {
    local tok bad
    tok=$(cat "$dir/id_token.jwt" 2>/dev/null || echo missing-id-token)
    oidc_req "$oidc_a/app/bearer" -H "Authorization: Bearer $tok" -H 'Accept: application/json'
    expect "Bearer: the IdP's genuine ID token is refused as an access token: 401" "$CODE" 401
    expect_contains "... saying it is an ID token" "$(oidc_hdr www-authenticate)" "ID token"
    # The same token with its signature's first character changed.
    bad="${tok%.*}.$(printf '%s' "${tok##*.}" | sed 's/^A/B/;t;s/^./A/')"
    oidc_req "$oidc_a/app/bearer" -H "Authorization: Bearer $bad" -H 'Accept: application/json'
    expect "Bearer: the same ID token with a broken signature: 401" "$CODE" 401
    expect_contains "... as a bad signature" "$(oidc_hdr www-authenticate)" "signature"
}

oidc_cleanup() {
    local pid
    for pid in "$oidc_a_pid" "$oidc_b_pid"; do
        [ -n "$pid" ] || continue
        SP_PID=$pid
        stop_sallyport || true
    done
    SP_PID=
    oidc_a_pid=
    oidc_b_pid=
    if [ -n "$oidc_idp_pid" ]; then
        kill -TERM "$oidc_idp_pid" 2>/dev/null || true
        for _ in $(seq 1 30); do
            kill -0 "$oidc_idp_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$oidc_idp_pid" 2>/dev/null || true
        wait "$oidc_idp_pid" 2>/dev/null || true
        oidc_idp_pid=
    fi
}

# Nothing secret in sallyport's logs.
oidc_log_checks() {
    local secrets
    secrets="$(cat "$dir/client-secret")\|$(cat "$dir/cookie-a")\|$(cat "$dir/cookie-b")"
    secrets="$secrets\|$(cut -d. -f3 "$dir/id_token.jwt" 2>/dev/null || echo no-id-token)"
    expect_absent "no client secret, cookie secret or token in sallyport's logs" \
        "$(cat "$dir/a.log" "$dir/b.log" 2>/dev/null)" "$secrets"
}

if oidc_setup && oidc_start; then
    oidc_curl_checks || true
    oidc_callback_checks || true
    oidc_bearer_checks || true
    oidc_driver proxy || true
    oidc_cleanup || true
    oidc_log_checks || true
else
    oidc_cleanup || true
fi
