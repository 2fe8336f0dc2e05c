//! The binary as an operator runs it: `check`, `--version`, config errors, SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_sallyport");

fn check(config: &str) -> (i32, String, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        dir,
    )
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("sallyport {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn the_demo_config_checks_clean() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/sallyport.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", demo])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("OK"));
    assert!(stdout.contains("127.0.0.1:8443"));
    assert!(stdout.contains("builtin:echo"));
}

#[test]
fn the_example_config_checks_clean() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let out = Command::new(BIN)
        .args(["check", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/api -> http://127.0.0.1:3000 (public)"),
        "{stdout}"
    );
}

#[test]
fn a_missing_file_names_file_line_and_key() {
    let (code, _, stderr, _dir) = check(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[server.tls]\ncert = \"/nonexistent/tls.crt\"\nkey = \"/nonexistent/tls.key\"\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.toml:5: server.tls.cert: file not found"),
        "{stderr}"
    );
    assert!(
        stderr.contains("bad.toml:6: server.tls.key: file not found"),
        "{stderr}"
    );
}

#[test]
fn unknown_keys_are_errors_with_their_line() {
    let (code, _, stderr, _dir) = check(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nlisten_port = 8443\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.toml:3: server.listen_port:"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field"), "{stderr}");

    let (code, _, stderr, _dir) = check(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n\n[[route]]\npath = \"/x\"\nupstreem = \"builtin:echo\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.toml:11: route[1].upstreem:"),
        "{stderr}"
    );
}

#[test]
fn every_bad_value_is_reported_at_once_without_echoing_it() {
    let (code, _, stderr, _dir) = check(
        r#"[server]
listen = ["hunter2-secret-value"]
trusted_proxies = ["10.0.0.0/33"]
shutdown_grace = "soon"

[server.timeouts]
idle = "0s"

[log]
format = "xml"

[[route]]
path = "relative"
upstream = "ftp://example.com"
auth = "public"
"#,
    );
    assert_eq!(code, 1);
    for expected in [
        "bad.toml:2: server.listen:",
        "bad.toml:3: server.trusted_proxies:",
        "bad.toml:4: server.shutdown_grace:",
        "bad.toml:7: server.timeouts.idle: must be greater than zero",
        "bad.toml:10: log.format:",
        "bad.toml:13: route[0].path:",
        "bad.toml:14: route[0].upstream:",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
    assert!(
        !stderr.contains("hunter2"),
        "a config value was echoed:\n{stderr}"
    );
}

#[test]
fn the_admin_listener_needs_an_address_of_its_own() {
    let route = "[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n";
    let (code, _, stderr, _dir) = check(&format!("[admin]\ncheck_upstreams = false\n\n{route}"));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.toml:1: admin.listen: is required"),
        "{stderr}"
    );
    let (code, _, stderr, _dir) = check(&format!(
        "[server]\nlisten = [\"0.0.0.0:8443\"]\n[admin]\nlisten = \"127.0.0.1:8443\"\n\n{route}"
    ));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("admin.listen: 127.0.0.1:8443 overlaps"),
        "{stderr}"
    );
    let (code, stdout, stderr, _dir) =
        check(&format!("[admin]\nlisten = \"127.0.0.1:9090\"\n\n{route}"));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("admin:  http://127.0.0.1:9090/"),
        "{stdout}"
    );
}

/// Runs `sallyport explain` against `config` in `dir` with `stdin` as the password.
fn explain(dir: &std::path::Path, config: &str, args: &[&str], stdin: &str) -> (i32, String) {
    use std::io::Write;
    let path = dir.join("sallyport.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .arg("explain")
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn explain_walks_a_request_through_route_scheme_identity_rules_and_outcome() {
    use sallyport::auth::htpasswd::{NewHash, hash_password};
    let dir = tempfile::tempdir().unwrap();
    let hash = hash_password(b"alice-pw", NewHash::Bcrypt { cost: 4 }).unwrap();
    std::fs::write(dir.path().join("users"), format!("alice:{hash}\n")).unwrap();
    std::fs::write(dir.path().join("token"), "not.a.jwt\n").unwrap();
    let config = "[auth.basic]\nhtpasswd = \"users\"\n\
        [[route]]\npath = \"/health\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n\
        [[route]]\npath = \"/admin\"\nupstream = \"http://127.0.0.1:9\"\nallow_users = [\"bob\"]\n\
        [[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n";
    let request = |path: &str| format!("GET https://app.example.com{path}");

    let (code, out) = explain(
        dir.path(),
        config,
        &["--request", &request("/app/x"), "--basic", "alice"],
        "alice-pw\n",
    );
    assert_eq!(code, 0, "{out}");
    for line in [
        "path:     /app/x",
        "route:    / -> builtin:echo (authentication required)",
        "scheme:   basic",
        "identity: alice via basic",
        "rules:    allowed",
        "outcome:  forwarded to builtin:echo",
    ] {
        assert!(out.contains(line), "{line:?} in\n{out}");
    }
    assert!(
        !out.contains("alice-pw"),
        "the password is never printed:\n{out}"
    );

    let (_, out) = explain(
        dir.path(),
        config,
        &["--request", &request("/app"), "--basic", "alice"],
        "nope\n",
    );
    assert!(out.contains("outcome:  401 Unauthorized"), "{out}");
    assert!(out.contains("reason:   invalid_password"), "{out}");
    assert!(
        out.contains("fix:      the password does not match"),
        "{out}"
    );

    let (_, out) = explain(
        dir.path(),
        config,
        &["--request", &request("/admin/users"), "--basic", "alice"],
        "alice-pw\n",
    );
    assert!(
        out.contains("route:    /admin -> http://127.0.0.1:9"),
        "{out}"
    );
    assert!(out.contains("outcome:  403 Forbidden"), "{out}");
    assert!(out.contains("reason:   forbidden_identity"), "{out}");

    let (_, out) = explain(
        dir.path(),
        config,
        &["--request", &request("/health/../app")],
        "",
    );
    assert!(out.contains("path:     /app (normalised)"), "{out}");
    assert!(out.contains("reason:   missing"), "{out}");

    let (_, out) = explain(dir.path(), config, &["--request", &request("/health")], "");
    assert!(out.contains("public: no authentication"), "{out}");
    assert!(out.contains("outcome:  forwarded to builtin:echo"), "{out}");

    let token = dir.path().join("token");
    let token = token.to_str().unwrap();
    let (_, out) = explain(
        dir.path(),
        config,
        &["--request", &request("/x"), "--bearer-file", token],
        "",
    );
    assert!(out.contains("presents: Bearer token (9 bytes)"), "{out}");
    assert!(out.contains("reason:   unsupported_scheme"), "{out}");

    let (code, out) = explain(dir.path(), config, &["--request", "GET /no-host"], "");
    assert_eq!(code, 1);
    assert!(out.contains("give the full URL"), "{out}");
}

/// The bound address a log line announces as `addr=...`.
fn logged_addr(line: &str) -> Option<std::net::SocketAddr> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("addr="))
        .and_then(|a| a.parse().ok())
}

fn scrape(admin: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn sighup_reloads_the_running_process_and_healthcheck_probes_it() {
    let (mut child, mut stderr, dir) = spawn_proxy(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n",
    );
    let pid = child.id().to_string();
    let kill = |signal: &str| {
        assert!(
            Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    let mut line = String::new();
    let mut admin = None;
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("admin endpoints listening") {
            admin = logged_addr(&line);
            break;
        }
    }
    let Some(admin) = admin else {
        kill("-KILL");
        panic!("no admin address logged; last: {line}");
    };
    assert!(scrape(admin).contains("sallyport_config_last_reload_successful 1"));

    kill("-HUP");
    // Wait for the reload's log line (bounded by the line count and the read timeout).
    let mut reloaded = false;
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("config reloaded") {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "no reload logged; last: {line}");
    let metrics = scrape(admin);
    assert!(
        metrics.contains("sallyport_reloads_total{result=\"success\"} 1"),
        "{metrics}"
    );

    // The healthcheck subcommand reads the admin address from the config, so give it one
    // with the port that was bound.
    let probe_config = dir.path().join("probe.toml");
    std::fs::write(
        &probe_config,
        format!("[admin]\nlisten = \"{admin}\"\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n"),
    )
    .unwrap();
    let probe = Command::new(BIN)
        .arg("healthcheck")
        .env("SALLYPORT_CONFIG", &probe_config)
        .output()
        .unwrap();
    assert!(probe.status.success(), "{probe:?}");

    kill("-TERM");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let down = Command::new(BIN)
        .arg("healthcheck")
        .env("SALLYPORT_CONFIG", &probe_config)
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("cannot reach the admin listener"));
}

#[test]
fn syntax_errors_point_at_the_line() {
    let (code, _, stderr, _dir) = check("[server]\nlisten = [\"127.0.0.1:0\"\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("bad.toml:2: server.listen:"), "{stderr}");

    // A secret pasted under a key of the wrong type is not echoed back.
    let (code, _, stderr, _dir) = check("[server]\nlisten = \"hunter2-secret\"\n");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.toml:2: server.listen: invalid type"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// The binary running `config` (written into the returned dir), logging at info to a
/// pipe.
fn spawn_proxy(
    config: &str,
) -> (
    std::process::Child,
    BufReader<std::process::ChildStderr>,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("SALLYPORT_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    (child, stderr, dir)
}

#[test]
fn sigterm_drains_and_exits_zero() {
    let (mut child, mut stderr, _dir) = spawn_proxy(
        "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[server.tls]\nself_signed = [\"localhost\"]\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n",
    );
    // The first log line announces the bound address.
    let mut line = String::new();
    let mut listening = false;
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("listening") {
            listening = true;
            break;
        }
    }
    assert!(listening, "no 'listening' line; last: {line}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Wait for the exit status, bounded so a hung shutdown fails the test instead of CI.
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        let _ = tx.send((child.wait(), rest));
    });
    let (exit, rest) = match rx.recv_timeout(Duration::from_secs(10)) {
        Ok((status, rest)) => (status.unwrap(), rest),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("sallyport did not exit within 10 s of SIGTERM")
        }
    };
    assert_eq!(exit.code(), Some(0), "{rest}");
    assert!(rest.contains("SIGTERM"), "{rest}");
}

#[test]
fn workers_sets_how_many_threads_serve_connections() {
    let (mut child, mut stderr, _dir) = spawn_proxy(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 3\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n",
    );
    let mut announced = None;
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if stderr.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("serving connections on worker threads") {
            announced = Some(line.clone());
            break;
        }
    }
    // The threads as the kernel lists them (it cuts names at 15 bytes). Each thread names
    // itself once it runs, which may be a moment after the line.
    let serving = || {
        std::fs::read_dir(format!("/proc/{}/task", child.id()))
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.unwrap().path().join("comm")).ok())
            .filter(|name| name.starts_with("sallyport-work"))
            .count()
    };
    let mut seen = serving();
    for _ in 0..100 {
        if seen >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        seen = serving();
    }
    let serving = seen;
    let _ = child.kill();
    let _ = child.wait();
    let announced = announced.expect("no line announcing the worker threads");
    assert!(announced.contains("threads=3"), "{announced}");
    assert_eq!(serving, 3, "worker threads running");

    let (code, _, stderr, _dir) = check(
        "[server]\nworkers = 0\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n",
    );
    assert_eq!(code, 1);
    assert!(
        stderr.contains("bad.toml:2: server.workers: must be between 1 and 1024"),
        "{stderr}"
    );
}

#[test]
fn a_bad_htpasswd_line_is_named_with_the_config_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("users"),
        "alice:$2y$05$abcdefghijklmnopqrstuv\n\nbob:s3cr3t-plain\n",
    )
    .unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[auth.basic]\nhtpasswd = \"users\"\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("bad.toml:2: auth.basic.htpasswd:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("users: line 1: malformed bcrypt hash"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("abcdefghij"),
        "the hash must not be echoed: {stderr}"
    );
}

#[test]
fn required_routes_need_a_scheme() {
    let (code, _, stderr, _dir) = check("[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\n");
    assert_eq!(code, 1);
    assert!(stderr.contains("bad.toml:1: route[0].auth:"), "{stderr}");
    assert!(stderr.contains("[auth.basic]"), "{stderr}");
}

#[test]
fn hash_password_reads_stdin_and_writes_an_htpasswd_line() {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args([
            "hash-password",
            "--bcrypt",
            "--cost",
            "4",
            "--user",
            "alice",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pw\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let line = String::from_utf8(out.stdout).unwrap();
    let (user, hash) = line.trim_end().split_once(':').unwrap();
    assert_eq!(user, "alice");
    assert!(hash.starts_with("$2y$04$"), "{hash}");
    let file = sallyport::auth::htpasswd::HtpasswdFile::parse(&line, false).unwrap();
    assert!(
        file.verify("alice", b"s3cret pw"),
        "the trailing newline is not part of the password"
    );

    let empty = Command::new(BIN)
        .arg("hash-password")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(empty.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty password"));
}

#[test]
fn a_reload_applies_a_new_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sallyport.toml");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = |level: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{port}\"]\n[log]\nlevel = \"{level}\"\n\n[[route]]\npath = \"/\"\nupstream = \"builtin:echo\"\nauth = \"public\"\n"
        )
    };
    std::fs::write(&path, config("warn")).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env_remove("SALLYPORT_LOG")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    // Silent at warn: wait for the listener instead of a log line (bounded).
    let up = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the proxy did not start listening");
    assert!(received.try_recv().is_err(), "nothing is logged below warn");

    std::fs::write(&path, config("info")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut reloaded = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match received.recv_timeout(left) {
            Ok(line) if line.contains("config reloaded") => {
                reloaded = true;
                break;
            }
            Ok(line) => seen.push(line),
            Err(_) => break,
        }
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    assert!(
        reloaded,
        "the reload's info line appears once log.level is info; saw {seen:?}"
    );
}
