# Core proxying, checked with curl (HTTP/1.1 and HTTP/2), h2load, and Python's
# http.server as the upstream. Sourced by run.sh.

dir="$WORK/core"
mkdir -p "$dir/www"
# A real CA and leaf from openssl, so curl verifies the chain instead of using -k.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=interop CA" \
    -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/ext.cnf"
openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/ext.cnf" -out "$dir/tls.crt" 2>/dev/null

# Route prefixes are forwarded as-is, so /files/hello.txt is served from www/files/.
mkdir -p "$dir/www/files"
echo "hello from python" >"$dir/www/files/hello.txt"
python3 -m http.server --bind 127.0.0.1 0 --directory "$dir/www" >"$dir/py.log" 2>&1 &
py_pid=$!
py_port=
for _ in $(seq 1 100); do
    py_port=$(grep -o 'port [0-9]*' "$dir/py.log" | head -1 | cut -d' ' -f2 || true)
    [ -n "$py_port" ] && break
    sleep 0.1
done

cat >"$dir/sallyport.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]

[server.tls]
cert = "tls.crt"
key = "tls.key"

[[route]]
path = "/files"
upstream = "http://127.0.0.1:$py_port"
auth = "public"

[[route]]
path = "/"
upstream = "builtin:echo"
auth = "public"
TOML

if start_sallyport "$dir/sallyport.toml" "$dir/sallyport.log"; then
    base="https://localhost:${SP_ADDR##*:}"
    curl_opts=(--silent --show-error --cacert "$dir/ca.crt" --resolve "localhost:${SP_ADDR##*:}:127.0.0.1")

    out=$(curl "${curl_opts[@]}" --http2 -o "$dir/h2.json" -w '%{http_version} %{http_code}' "$base/h2?x=1")
    expect "curl --http2 negotiates HTTP/2 and gets 200" "$out" "2 200"
    expect_contains "echo saw the normalised path" "$(cat "$dir/h2.json")" '"path": "/h2"'
    expect_contains "echo saw X-Forwarded-Proto https" "$(cat "$dir/h2.json")" '"https"'

    out=$(curl "${curl_opts[@]}" --http1.1 -o /dev/null -w '%{http_version} %{http_code}' "$base/")
    expect "curl --http1.1 gets HTTP/1.1 200" "$out" "1.1 200"

    out=$(curl "${curl_opts[@]}" --http2 "$base/files/hello.txt")
    expect "python http.server content through the proxy over HTTP/2" "$out" "hello from python"

    out=$(curl "${curl_opts[@]}" --http1.1 -H 'X-Forwarded-User: admin' -H 'X_Forwarded_User: admin' \
        -H 'Connection: X-Hop' -H 'X-Hop: 1' "$base/spoof")
    expect_absent "client identity headers never reach the upstream" "$out" "forwarded-user\|forwarded_user"
    expect_absent "headers named in Connection are stripped" "$out" '"x-hop"'

    out=$(curl "${curl_opts[@]}" -o /dev/null -w '%{http_code}' "$base/a%2Fb")
    expect "encoded slash is refused" "$out" "400"

    out=$(curl "${curl_opts[@]}" -o /dev/null -w '%{http_code}' -H 'Accept: application/json' \
        "https://localhost:${SP_ADDR##*:}/.sallyport/nothing")
    expect "reserved /.sallyport/ path is not forwarded" "$out" "404"

    h2out=$(h2load -n 2000 -c 10 -m 10 "https://127.0.0.1:${SP_ADDR##*:}/load" 2>&1 || true)
    expect_contains "h2load: 2000 HTTP/2 requests succeed" "$h2out" "2000 succeeded, 0 failed, 0 errored"
    expect_contains "h2load negotiated h2" "$h2out" "Application protocol: h2"

    h1out=$(h2load --h1 -n 1000 -c 10 "https://127.0.0.1:${SP_ADDR##*:}/load" 2>&1 || true)
    expect_contains "h2load --h1: 1000 HTTP/1.1 requests succeed" "$h1out" "1000 succeeded, 0 failed, 0 errored"

    code=0
    stop_sallyport || code=$?
    expect "SIGTERM exits 0" "$code" "0"
    # 6 curl requests + 2000 + 1000 h2load requests, one access-log line each.
    expect "one access-log line per request" "$(grep -c 'sallyport::access' "$dir/sallyport.log")" "3006"
else
    fail "sallyport started with the core config"
fi
kill "$py_pid" 2>/dev/null || true
