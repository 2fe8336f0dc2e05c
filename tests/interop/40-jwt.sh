# shellcheck shell=bash
# JWT Bearer interop: keys made by openssl, tokens minted by PyJWT and by node `jose`
# (SignJWT), a JWKS served over HTTPS by Python's http.server behind a test CA, and curl
# as the client. Covers RS256/ES256/EdDSA via JWKS, HS256 via hs_secret_file, PEM keys
# with dotted claim paths, the RFC 6750 challenges, an attack table, throttling of bad
# signatures (but not of expired tokens), key rotation, an IdP outage, and Basic + Bearer
# offered side by side. Sourced by run.sh; helpers live in tests/interop/jwt/.

command -v htpasswd >/dev/null || install_packages apache2-utils

dir="$WORK/jwt"
jwt_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/jwt"
jwt_jwks_pid=
jwt_jwks_port=

jwt_py() { PYTHONPATH="$dir/pylib" python3 "$@"; }
jwt_tok() { cat "$dir/tokens/$1.jwt" 2>/dev/null || echo "missing-fixture-$1"; }

# jwt_req ADDR SOURCE AUTHORIZATION [CURL ARGS...]: one request to https://ADDR/ from the
# loopback address SOURCE; AUTHORIZATION "" sends none. Sets CODE and HDRS; the body is
# in $dir/body.
jwt_req() {
    local addr=$1 src=$2 auth=$3
    shift 3
    local args=(-sk --max-time 5 --interface "$src" -D "$dir/head" -o "$dir/body" -w '%{http_code}')
    [ -n "$auth" ] && args+=(-H "Authorization: $auth")
    rm -f "$dir/head" "$dir/body"
    CODE=$(curl "${args[@]}" "$@" "https://$addr/" 2>/dev/null || true)
    HDRS=$(tr -d '\r' <"$dir/head" 2>/dev/null || true)
}

# The WWW-Authenticate values of the last response, one a line, in order.
jwt_challenges() {
    printf '%s\n' "$HDRS" | grep -i '^www-authenticate:' | sed 's/^[^:]*:[[:space:]]*//' || true
}

# The last response's Bearer challenge as "none" (no error attribute), the error code when
# it has RFC 6750's shape, or "malformed: VALUE" / "absent".
jwt_bearer_error() {
    local chal re_err
    chal=$(jwt_challenges | grep -i '^bearer' | head -1 || true)
    re_err='^Bearer realm="api", error="([a-z_]+)"(, error_description="[^"\\]*")?$'
    if [ -z "$chal" ]; then
        echo absent
    elif [ "$chal" = 'Bearer realm="api"' ]; then
        echo none
    elif [[ $chal =~ $re_err ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo "malformed: $chal"
    fi
}

# Identity headers builtin:echo saw, as "user|email|groups" ("-" if the body is no echo).
jwt_ids() {
    python3 -c '
import json, sys
h = json.load(open(sys.argv[1]))["headers"]
print("|".join(",".join(h.get(k, [])) for k in
               ("x-forwarded-user", "x-forwarded-email", "x-forwarded-groups")))
' "$dir/body" 2>/dev/null || echo "-"
}

# jwt_accepts LABEL ADDR TOKEN-NAME "user|email|groups"
jwt_accepts() {
    jwt_req "$2" 127.0.0.1 "Bearer $(jwt_tok "$3")"
    expect "$1" "$CODE $(jwt_ids)" "200 $4"
}

# jwt_refuses LABEL ADDR TOKEN-NAME [STATUS ERROR]: refused with an RFC 6750 challenge.
jwt_refuses() {
    jwt_req "$2" 127.0.0.1 "Bearer $(jwt_tok "$3")"
    expect "$1" "$CODE $(jwt_bearer_error)" "${4:-401} ${5:-invalid_token}"
}

# jwt_start NAME CONFIG-BODY: the [server] and [auth] preamble plus CONFIG-BODY plus an
# echo route, started; sets SP_PID/SP_ADDR, or fails the check and returns 1.
jwt_start() {
    cat >"$dir/$1.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
[server.tls]
self_signed = ["localhost"]
[auth]
realm = "api"
$2
[[route]]
path = "/"
upstream = "builtin:echo"
TOML
    if start_sallyport "$dir/$1.toml" "$dir/$1.log"; then
        return 0
    fi
    SP_PID=
    fail "$1: sallyport starts with this config"
    return 1
}

jwt_stop() {
    [ -n "${SP_PID:-}" ] && { stop_sallyport || true; }
    SP_PID=
}

jwt_setup() {
    mkdir -p "$dir/www" "$dir/tokens" "$dir/node"

    # PyJWT (with cryptography) into a directory of its own; node jose likewise.
    if ! PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet --disable-pip-version-check \
        --target "$dir/pylib" 'pyjwt[crypto]>=2.8' >"$dir/pip.log" 2>&1; then
        cat "$dir/pip.log"
        fail "PyJWT installs from PyPI"
        return 1
    fi
    if ! npm install --prefix "$dir/node" --no-audit --no-fund --loglevel=error 'jose@6' \
        >"$dir/npm.log" 2>&1; then
        cat "$dir/npm.log"
        fail "jose installs from npm"
        return 1
    fi

    # Signing keys from openssl (PKCS#8 private, SubjectPublicKeyInfo public).
    local k
    for k in rsa-1 rsa-2 attacker; do
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/$k.pem" 2>/dev/null
    done
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ec-1.pem" 2>/dev/null
    openssl genpkey -algorithm ED25519 -out "$dir/ed-1.pem" 2>/dev/null
    for k in rsa-1 rsa-2 attacker ec-1 ed-1; do
        openssl pkey -in "$dir/$k.pem" -pubout -out "$dir/$k.pub.pem" 2>/dev/null
    done
    openssl rand -hex 32 >"$dir/hs.key"   # 64 bytes and the newline the proxy trims

    # The IdP's TLS: a test CA and a leaf for 127.0.0.1.
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=jwt interop CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=127.0.0.1" \
        -keyout "$dir/idp.key" -out "$dir/idp.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >"$dir/idp.ext"
    openssl x509 -req -in "$dir/idp.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
        -CAcreateserial -days 2 -extfile "$dir/idp.ext" -out "$dir/idp.crt" 2>/dev/null
    if [ ! -s "$dir/idp.crt" ] || [ ! -s "$dir/ed-1.pub.pem" ]; then
        fail "openssl makes the keys and certificates"
        return 1
    fi

    python3 "$jwt_here/jwks_server.py" "$dir/www" "$dir/idp.crt" "$dir/idp.key" \
        "$dir/jwks.port" 2>"$dir/jwks.log" &
    jwt_jwks_pid=$!
    for _ in $(seq 1 50); do
        [ -s "$dir/jwks.port" ] && break
        sleep 0.1
    done
    jwt_jwks_port=$(cat "$dir/jwks.port" 2>/dev/null || true)
    if [ -z "$jwt_jwks_port" ]; then
        cat "$dir/jwks.log"
        fail "the JWKS server starts"
        return 1
    fi

    if ! jwt_py "$jwt_here/mint.py" mint "$dir" "$jwt_jwks_port"; then
        fail "PyJWT mints the fixtures"
        return 1
    fi
    cp "$jwt_here/mint.mjs" "$dir/node/mint.mjs"
    if ! node "$dir/node/mint.mjs" "$dir" >"$dir/node.log" 2>&1; then
        cat "$dir/node.log"
        fail "node jose mints its tokens"
        return 1
    fi
    local out
    out=$(jwt_py "$jwt_here/mint.py" check "$dir" 2>&1 || true)
    expect_contains "fixtures: PyJWT accepts the valid tokens (its own and jose's) and refuses the bad" \
        "$out" ", 0 wrong"
    case "$out" in *", 0 wrong"*) ;; *) printf '%s\n' "$out" ;; esac

    local served
    served=$(curl -s --max-time 5 --cacert "$dir/ca.pem" \
        "https://127.0.0.1:$jwt_jwks_port/main/jwks.json" 2>/dev/null || true)
    expect_contains "the JWKS is served over HTTPS, verified against the test CA" "$served" '"kid": "ed-1"'
    return 0
}

jwt_idp() {
    cat <<TOML
[auth.jwt]
issuer = "https://idp.test"
audiences = ["sallyport-api"]
algorithms = ["RS256", "ES256", "EdDSA"]
jwks_url = "https://127.0.0.1:$jwt_jwks_port/$1/jwks.json"
jwks_ca = "ca.pem"
leeway = "30s"
claims = { user = "sub", email = "email", groups = "groups" }
TOML
}

# Tokens from both libraries, every JWKS key type, and the attack table.
jwt_main() {
    jwt_start main "$(jwt_idp main)
[rate_limit]
enabled = false" || return 0
    local a=$SP_ADDR t

    jwt_req "$a" 127.0.0.1 ""
    expect "no credentials: 401 with a bare Bearer challenge" "$CODE $(jwt_challenges)" '401 Bearer realm="api"'
    expect_contains "a 401 is not cached" "$(printf '%s\n' "$HDRS" | grep -i '^cache-control:' || true)" "no-store"

    jwt_accepts "PyJWT RS256 via JWKS: 200 with user, email, groups" "$a" py-rs256 "alice|alice@example.test|admins,dev"
    jwt_accepts "PyJWT ES256 via JWKS" "$a" py-es256 "bob|bob@example.test|staff,bob-team"
    jwt_accepts "PyJWT EdDSA (Ed25519) via JWKS" "$a" py-eddsa "carol|carol@example.test|staff,carol-team"
    jwt_accepts "jose RS256 via JWKS" "$a" jose-rs256 "oscar|oscar@example.test|staff,oscar-team"
    jwt_accepts "jose ES256 via JWKS" "$a" jose-es256 "peggy|peggy@example.test|staff,peggy-team"
    jwt_accepts "jose EdDSA via JWKS" "$a" jose-eddsa "trent|trent@example.test|staff,trent-team"
    jwt_accepts "aud as an array containing ours" "$a" aud-array "dan|dan@example.test|staff,dan-team"
    jwt_accepts "expired 5 s before minting, within the 30 s leeway" "$a" in-leeway "erin|erin@example.test|staff,erin-team"
    jwt_req "$a" 127.0.0.1 "bearer $(jwt_tok py-eddsa)"
    expect "the scheme name is case-insensitive" "$CODE $(jwt_ids)" "200 carol|carol@example.test|staff,carol-team"
    jwt_req "$a" 127.0.0.1 "Bearer $(jwt_tok py-es256)" -H "X-Forwarded-User: mallory" \
        -H "X-Forwarded-Email: mallory@evil.test" -H "X-Forwarded-Groups: admins"
    expect "client-sent identity headers are replaced by the token's" "$CODE $(jwt_ids)" "200 bob|bob@example.test|staff,bob-team"

    jwt_req "$a" 127.0.0.1 "Bearer $(jwt_tok expired)"
    expect "expired: 401 invalid_token" "$CODE $(jwt_bearer_error)" "401 invalid_token"
    expect_contains "expired: error_description says expired" "$(jwt_challenges)" "expired"

    jwt_refuses "bad signature (other key, kid rsa-1)" "$a" bad-sig
    jwt_refuses "payload changed after signing" "$a" tampered
    jwt_refuses "unknown kid" "$a" unknown-kid
    jwt_refuses "wrong iss" "$a" wrong-iss
    jwt_refuses "missing iss" "$a" missing-iss
    jwt_refuses "wrong aud" "$a" wrong-aud
    jwt_refuses "missing aud" "$a" missing-aud
    jwt_refuses "alg none" "$a" alg-none
    jwt_refuses "alg none with a known kid" "$a" alg-none-kid
    jwt_refuses "HS256 signed with the RSA public key PEM (algorithm confusion)" "$a" hs-confusion
    jwt_refuses "signature stripped (header.payload.)" "$a" stripped
    jwt_refuses "exp as a string" "$a" exp-string
    jwt_refuses "no exp" "$a" no-exp
    jwt_refuses "nbf 10 minutes ahead" "$a" nbf-future
    jwt_refuses "RS384 with a valid signature, but not a pinned algorithm" "$a" alg-not-pinned
    jwt_refuses "ES256 token naming the RSA key's kid" "$a" es256-rsa-kid
    jwt_refuses "attacker's key embedded in the header (jwk)" "$a" embedded-jwk
    jwt_refuses "attacker's JWKS named in the header (jku)" "$a" jku
    jwt_refuses "not a JWT at all" "$a" garbage

    jwt_req "$a" 127.0.0.1 "Bearer"
    expect "Bearer with no token: 400 invalid_request" "$CODE $(jwt_bearer_error)" "400 invalid_request"
    jwt_req "$a" 127.0.0.1 "Bearer abc def"
    expect "Bearer token with a space inside: 400 invalid_request" "$CODE $(jwt_bearer_error)" "400 invalid_request"
    jwt_req "$a" 127.0.0.1 "Bearer ab@cd"
    expect "Bearer token with a non-token68 character: 400 invalid_request" "$CODE $(jwt_bearer_error)" "400 invalid_request"

    jwt_req "$a" 127.0.0.1 "Bearer $(jwt_tok crlf-sub)"
    case "$CODE" in 200 | 401) pass "sub with CR LF: answered 200 or 401 (got $CODE)" ;;
        *) fail "sub with CR LF: answered 200 or 401 (got $CODE)" ;; esac
    expect_absent "sub with CR LF smuggles no header upstream" "$(cat "$dir/body" 2>/dev/null || true)" "x-evil"

    jwt_stop
    expect_absent "the proxy never fetched the jku URL" "$(cat "$dir/jwks.log")" "/evil/"
    t=$(jwt_tok py-rs256)
    expect_absent "no token in the log" "$(cat "$dir/main.log")" "${t##*.}"
}

# HS256 with hs_secret_file; load-time checks of the secret.
jwt_hs() {
    jwt_start hs '[auth.jwt]
algorithms = ["HS256"]
hs_secret_file = "hs.key"
[rate_limit]
enabled = false' || return 0
    local a=$SP_ADDR rc
    jwt_accepts "HS256 from PyJWT (iss and aud not configured, so not checked)" "$a" hs-valid "henry|henry@example.test|staff,henry-team"
    jwt_accepts "HS256 from jose" "$a" jose-hs256 "victor|victor@example.test|staff,victor-team"
    jwt_refuses "HS256 with the secret plus its newline (the file's newline is trimmed)" "$a" hs-newline
    jwt_refuses "HS256 with another secret" "$a" hs-wrong
    jwt_refuses "RS256 token at an HS256-only instance" "$a" py-rs256
    jwt_refuses "alg none at an HS256-only instance" "$a" alg-none
    jwt_stop

    rc=0
    "$SALLYPORT" check --config "$dir/hs.toml" >"$dir/check.out" 2>&1 || rc=$?
    expect "check accepts the HS256 config" "$rc" 0
    printf '0123456789abcdef\n' >"$dir/short.key"
    sed 's/hs\.key/short.key/' "$dir/hs.toml" >"$dir/short.toml"
    rc=0
    "$SALLYPORT" check --config "$dir/short.toml" >"$dir/check.out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then pass "check refuses a 16-byte hs secret"; else fail "check refuses a 16-byte hs secret"; fi
    sed 's/"HS256"/"RS256"/' "$dir/hs.toml" >"$dir/hs-rs.toml"
    rc=0
    "$SALLYPORT" check --config "$dir/hs-rs.toml" >"$dir/check.out" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then pass "check refuses hs_secret_file with RS256"; else fail "check refuses hs_secret_file with RS256"; fi
}

# keys = [PEM files], tokens without kid, Keycloak-style claims via dotted paths.
jwt_pem() {
    jwt_start pem '[auth.jwt]
issuer = "https://idp.test"
algorithms = ["RS256", "ES256", "EdDSA"]
keys = ["rsa-1.pub.pem", "ec-1.pub.pem", "ed-1.pub.pem"]
claims = { user = "preferred_username", email = "email", groups = "realm_access.roles" }
[rate_limit]
enabled = false' || return 0
    local a=$SP_ADDR
    jwt_accepts "PEM key, RS256, no kid, groups from realm_access.roles" "$a" pem-rs256 "grace|uuid-1@example.test|ops,viewers"
    jwt_accepts "PEM key, ES256, no kid" "$a" pem-es256 "grace|uuid-2@example.test|ops,viewers"
    jwt_accepts "PEM key, EdDSA, no kid" "$a" pem-eddsa "grace|uuid-3@example.test|ops,viewers"
    jwt_accepts "PEM key, jose RS256" "$a" jose-pem-rs256 "walter|uuid-9@example.test|ops"
    jwt_refuses "PEM key: HS256 signed with that PEM (algorithm confusion)" "$a" pem-hs-confusion
    jwt_refuses "PEM key: bad signature" "$a" pem-bad-sig
    jwt_stop
}

# Bad signatures are guesses and get throttled; expired tokens are not.
jwt_throttle() {
    jwt_start throttle "$(jwt_idp main)
[rate_limit]
max_failures = 3
window = \"1m\"
block_for = \"15m\"" || return 0
    local a=$SP_ADDR got="" i
    for i in 1 2 3; do
        jwt_req "$a" 127.0.0.50 "Bearer $(jwt_tok "thr-bad-$i")"
        got="$got$CODE "
    done
    expect "3 bad signatures from one client are answered" "$got" "401 401 401 "
    jwt_req "$a" 127.0.0.50 "Bearer $(jwt_tok thr-valid-1)"
    expect "then a valid token from that client is throttled" "$CODE" 429
    got=""
    for i in 1 2 3; do
        jwt_req "$a" 127.0.0.51 "Bearer $(jwt_tok "thr-expired-$i")"
        got="$got$CODE "
    done
    expect "3 expired tokens from another client are answered" "$got" "401 401 401 "
    jwt_req "$a" 127.0.0.51 "Bearer $(jwt_tok thr-valid-2)"
    expect "expired tokens do not count: a valid token then passes" "$CODE $(jwt_ids)" "200 alice|alice@example.test|staff,alice-team"
    jwt_stop
}

# Basic and Bearer on one instance: both challenges, Basic first.
jwt_both() {
    htpasswd -cbB -C 5 "$dir/users.htpasswd" basil 'basil-pw' 2>/dev/null || true
    jwt_start both "[auth.basic]
htpasswd = \"users.htpasswd\"
[auth.jwt]
issuer = \"https://idp.test\"
audiences = [\"sallyport-api\"]
jwks_url = \"https://127.0.0.1:$jwt_jwks_port/main/jwks.json\"
jwks_ca = \"ca.pem\"" || return 0
    local a=$SP_ADDR
    jwt_req "$a" 127.0.0.1 ""
    expect "Basic + Bearer: 401 with two challenges, Basic first" \
        "$CODE $(jwt_challenges | tr '\n' '|')" '401 Basic realm="api", charset="UTF-8"|Bearer realm="api"|'
    jwt_req "$a" 127.0.0.1 "" -u basil:basil-pw
    expect "Basic + Bearer: a Basic login passes" "$CODE $(jwt_ids | cut -d'|' -f1)" "200 basil"
    jwt_accepts "Basic + Bearer: an RS256 token passes (default algorithms)" "$a" jose-rs256 "oscar|oscar@example.test|staff,oscar-team"
    jwt_refuses "Basic + Bearer: ES256 is not in the default algorithms" "$a" py-es256
    jwt_stop
}

# A fresh instance: rotation (unknown kid -> refetch), then the IdP goes away.
jwt_rotation() {
    jwt_start rotation "$(jwt_idp rot)
[rate_limit]
enabled = false" || return 0
    local a=$SP_ADDR
    jwt_accepts "rotation: rsa-1 accepted before the rotation" "$a" rot-rsa1-a "ivan|ivan@example.test|staff,ivan-team"
    cp "$dir/jwks-rot-v2.json" "$dir/www/rot/jwks.json.new"
    mv "$dir/www/rot/jwks.json.new" "$dir/www/rot/jwks.json"
    jwt_accepts "rotation: a token from rsa-2, published after start, is accepted" "$a" rot-rsa2-a "judy|judy@example.test|staff,judy-team"
    jwt_refuses "rotation: a fresh rsa-1 token is refused once rsa-1 left the JWKS" "$a" rot-rsa1-b
    local fetches
    fetches=$(grep -c 'GET /rot/jwks.json' "$dir/jwks.log" || true)
    jwt_refuses "rotation: another unknown kid within the minute is refused" "$a" rot-unknown-2
    expect "rotation: ... without another JWKS fetch (at most one a minute)" \
        "$(grep -c 'GET /rot/jwks.json' "$dir/jwks.log" || true)" "$fetches"

    kill "$jwt_jwks_pid" 2>/dev/null || true
    wait "$jwt_jwks_pid" 2>/dev/null || true
    jwt_jwks_pid=
    local gone
    gone=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 --cacert "$dir/ca.pem" \
        "https://127.0.0.1:$jwt_jwks_port/rot/jwks.json" 2>/dev/null || true)
    expect "outage: the JWKS server is down" "$gone" "000"
    jwt_accepts "outage: a fresh token from a known key (rsa-2) still passes" "$a" rot-rsa2-b "judy|judy@example.test|staff,judy-team"
    jwt_accepts "outage: a fresh ES256 token still passes" "$a" rot-ec-b "kate|kate@example.test|staff,kate-team"
    jwt_refuses "outage: an unknown kid is refused, not a 5xx" "$a" rot-unknown
    jwt_accepts "outage: the first rsa-2 token still passes" "$a" rot-rsa2-a "judy|judy@example.test|staff,judy-team"
    if kill -0 "$SP_PID" 2>/dev/null; then pass "outage: the proxy is still running"; else fail "outage: the proxy is still running"; fi
    jwt_stop
}

jwt_cleanup() {
    jwt_stop
    if [ -n "$jwt_jwks_pid" ]; then
        kill "$jwt_jwks_pid" 2>/dev/null || true
        wait "$jwt_jwks_pid" 2>/dev/null || true
        jwt_jwks_pid=
    fi
}

SP_PID=
if jwt_setup; then
    jwt_main || true
    jwt_hs || true
    jwt_pem || true
    jwt_throttle || true
    jwt_both || true
    jwt_rotation || true
fi
jwt_cleanup
