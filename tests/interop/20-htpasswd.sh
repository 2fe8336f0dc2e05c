# htpasswd interop: hashes written by Debian's Apache `htpasswd` and by `openssl passwd`,
# verified through the running proxy with curl, side by side with nginx auth_basic reading
# the same file. Sourced by run.sh.

need=()
command -v htpasswd >/dev/null || need+=(apache2-utils)
command -v nginx >/dev/null || need+=(nginx-light)
install_packages "${need[@]}"

dir="$WORK/htpasswd"
mkdir -p "$dir"
users="$dir/users.htpasswd"
: >"$users"
pw='Pässwörd 1:x'   # non-ASCII, a space and a colon, as real passwords have

# Every format Apache htpasswd offers (DES and plain text are checked separately below).
htpasswd -bB -C 5 "$users" bcrypt "$pw" 2>/dev/null
htpasswd -bm "$users" apr1 "$pw" 2>/dev/null
htpasswd -bs "$users" sha1 "$pw" 2>/dev/null
htpasswd -b2 -r 5000 "$users" sha256 "$pw" 2>/dev/null
htpasswd -b5 "$users" sha512 "$pw" 2>/dev/null
# openssl passwd: MD5-crypt, apr1, SHA-256/512-crypt.
for fmt in 1 apr1 5 6; do
    printf 'openssl%s:%s\n' "$fmt" "$(openssl passwd -"$fmt" "$pw")" >>"$users"
done
# nginx's {SSHA}: base64(sha1(password + salt) + salt), and argon2id from sallyport itself.
printf 'ssha:%s\n' "$(python3 -c 'import hashlib,base64,os,sys; s=os.urandom(8); p=sys.argv[1].encode(); print("{SSHA}"+base64.b64encode(hashlib.sha1(p+s).digest()+s).decode())' "$pw")" >>"$users"
printf '%s\n' "$pw" | "$SALLYPORT" hash-password --user argon2 >>"$users"
printf '%s\n' "$pw" | "$SALLYPORT" hash-password --bcrypt --cost 5 --user ours-bcrypt >>"$users"

# Apache's own verifier accepts what `sallyport hash-password --bcrypt` writes.
if htpasswd -vb "$users" ours-bcrypt "$pw" >/dev/null 2>&1; then
    pass "htpasswd -v accepts sallyport hash-password --bcrypt output"
else
    fail "htpasswd -v accepts sallyport hash-password --bcrypt output"
fi

cat >"$dir/sallyport.toml" <<TOML
[server]
listen = ["127.0.0.1:0"]
[server.tls]
self_signed = ["localhost"]
[auth]
realm = "interop"
[auth.basic]
htpasswd = "users.htpasswd"
[[route]]
path = "/"
upstream = "builtin:echo"
TOML

# nginx auth_basic on the same file, as the reference behaviour.
nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$dir/nginx/www"
echo ok >"$dir/nginx/www/index.html"
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
        listen 127.0.0.1:$nginx_port;
        auth_basic "interop";
        auth_basic_user_file $users;
        # Not `return`: it runs in the rewrite phase, before auth_basic is consulted.
        location / { root $dir/nginx/www; }
    }
}
NGINX
# nginx's workers drop root; let them read the file (the temp dir is 0700).
chmod a+x "$WORK"
chmod -R a+rX "$dir"
nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" &
nginx_pid=$!

if start_sallyport "$dir/sallyport.toml" "$dir/sallyport.log"; then
    port=${SP_ADDR##*:}
    # Each user is tried from its own loopback address: the wrong-password checks below
    # would otherwise add up to a brute-force block for one client.
    src=1
    sp() { curl --silent -k --interface "127.0.0.$src" --resolve "localhost:$port:127.0.0.1" "$@"; }
    for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$nginx_port/" && break; sleep 0.1; done

    for user in bcrypt apr1 sha1 sha256 sha512 openssl1 opensslapr1 openssl5 openssl6 ssha argon2 ours-bcrypt; do
        src=$((src + 1))
        body=$(sp -u "$user:$pw" "https://localhost:$port/")
        expect_contains "$user: right password accepted, X-Forwarded-User set" "$body" "\"x-forwarded-user\": [
      \"$user\""
        code=$(sp -o /dev/null -w '%{http_code}' -u "$user:${pw}x" "https://localhost:$port/")
        expect "$user: wrong password refused" "$code" "401"
        if [ "$user" != argon2 ]; then
            # nginx (glibc crypt + its own apr1/SHA/SSHA) must agree on both outcomes.
            ngx_ok=$(curl -s -o /dev/null -w '%{http_code}' -u "$user:$pw" "http://127.0.0.1:$nginx_port/")
            ngx_bad=$(curl -s -o /dev/null -w '%{http_code}' -u "$user:${pw}x" "http://127.0.0.1:$nginx_port/")
            expect "$user: nginx auth_basic agrees on the same file" "$ngx_ok/$ngx_bad" "200/401"
        fi
    done
    code=$(sp -o /dev/null -w '%{http_code}' -u "nobody:$pw" "https://localhost:$port/")
    expect "unknown user refused like a wrong password" "$code" "401"
    challenge=$(sp -o /dev/null -D - "https://localhost:$port/" | tr -d '\r' | grep -i '^www-authenticate:')
    expect "challenge header" "$challenge" 'www-authenticate: Basic realm="interop", charset="UTF-8"'

    # A file nginx would accept with a line we refuse is a clear load-time error, naming it.
    htpasswd -cbd "$dir/des.htpasswd" olduser secret 2>/dev/null
    sed 's/users.htpasswd/des.htpasswd/' "$dir/sallyport.toml" >"$dir/des.toml"
    out=$("$SALLYPORT" check --config "$dir/des.toml" 2>&1 || true)
    expect_contains "crypt(3) DES is refused at load time with the line" "$out" "des.htpasswd: line 1: crypt(3) DES hashes are not supported"
    htpasswd -cbp "$dir/plain.htpasswd" olduser 'a-longer-plain-password' 2>/dev/null
    sed 's/users.htpasswd/plain.htpasswd/' "$dir/sallyport.toml" >"$dir/plain.toml"
    out=$("$SALLYPORT" check --config "$dir/plain.toml" 2>&1 || true)
    expect_contains "htpasswd -p plain text is refused at load time" "$out" "plain.htpasswd: line 1: unknown hash format"

    stop_sallyport || true
    expect_absent "no password or hash in the log" "$(cat "$dir/sallyport.log")" "Pässwörd\|\$2y\$\|\$apr1\$"
else
    fail "sallyport started with the htpasswd config"
fi
kill "$nginx_pid" 2>/dev/null || true
wait "$nginx_pid" 2>/dev/null || true
