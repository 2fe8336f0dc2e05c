//! The command line: parse arguments, load the config, hand over to the server.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use sallyport::config::Config;
use sallyport::routes::RouteTable;
use sallyport::server::Server;

#[derive(Parser)]
#[command(name = "sallyport", version, about = "An authenticating reverse proxy")]
struct Cli {
    /// Path to the TOML config file.
    #[arg(
        long,
        short = 'c',
        env = "SALLYPORT_CONFIG",
        global = true,
        value_name = "PATH"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config and every file it references, print a summary, exit 0 or 1.
    Check,
    /// Show the decision a request would get and why: route, scheme, identity, rules,
    /// outcome. Nothing is forwarded and no failure is counted.
    Explain {
        /// The request: method and full URL, e.g. "GET https://app.example.com/api".
        #[arg(long, value_name = "\"METHOD URL\"")]
        request: String,
        /// Present HTTP Basic credentials for USER; the password is read from stdin
        /// (prompted without echo on a terminal).
        #[arg(long, value_name = "USER", conflicts_with = "bearer_file")]
        basic: Option<String>,
        /// Present the Bearer token in this file.
        #[arg(long, value_name = "FILE")]
        bearer_file: Option<PathBuf>,
    },
    /// Exit 0 if the running proxy's admin /healthz answers 200 (for container
    /// HEALTHCHECKs in images without a shell).
    Healthcheck,
    /// Read a password from stdin (no echo on a terminal) and print an htpasswd hash:
    /// argon2id by default, or bcrypt ($2y$, as Apache htpasswd -B writes it).
    HashPassword {
        /// Write bcrypt instead of argon2id (for files also read by Apache or nginx).
        #[arg(long)]
        bcrypt: bool,
        /// bcrypt cost (4-31).
        #[arg(long, value_name = "N", requires = "bcrypt", default_value_t = 10)]
        cost: u32,
        /// Print NAME:HASH, a line ready for an htpasswd file.
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sallyport::install_crypto_provider();
    if let Some(Command::HashPassword { bcrypt, cost, user }) = &cli.command {
        return hash_password(*bcrypt, *cost, user.as_deref());
    }
    let Some(path) = cli.config else {
        eprintln!("sallyport: no config given: pass --config PATH or set SALLYPORT_CONFIG");
        return ExitCode::from(1);
    };
    match cli.command {
        Some(Command::Check) => check(&path),
        Some(Command::Explain {
            request,
            basic,
            bearer_file,
        }) => explain(&path, &request, basic, bearer_file),
        Some(Command::Healthcheck) => healthcheck(&path),
        Some(Command::HashPassword { .. }) | None => run(&path),
    }
}

fn hash_password(bcrypt: bool, cost: u32, user: Option<&str>) -> ExitCode {
    use sallyport::auth::htpasswd::{NewHash, hash_password};
    if let Some(name) = user {
        if name.is_empty() || name.contains(':') || name.chars().any(char::is_control) {
            eprintln!(
                "sallyport: --user: a user name cannot be empty or contain ':' or control characters"
            );
            return ExitCode::from(1);
        }
    }
    let password = match read_password() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("sallyport: {e}");
            return ExitCode::from(1);
        }
    };
    let scheme = if bcrypt {
        NewHash::Bcrypt { cost }
    } else {
        NewHash::Argon2id
    };
    match hash_password(password.as_bytes(), scheme) {
        Ok(hash) => {
            match user {
                Some(name) => println!("{name}:{hash}"),
                None => println!("{hash}"),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sallyport: {e}");
            ExitCode::from(1)
        }
    }
}

fn explain(
    path: &Path,
    request: &str,
    basic: Option<String>,
    bearer_file: Option<PathBuf>,
) -> ExitCode {
    use sallyport::explain::Presented;
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    let presented = match (basic, bearer_file) {
        (Some(user), _) => match read_secret_line("Password: ") {
            Ok(password) => Presented::Basic { user, password },
            Err(e) => {
                eprintln!("sallyport: {e}");
                return ExitCode::from(1);
            }
        },
        (None, Some(file)) => match std::fs::read_to_string(&file) {
            Ok(token) => Presented::Bearer(token),
            Err(e) => {
                eprintln!(
                    "sallyport: --bearer-file: cannot read {}: {e}",
                    file.display()
                );
                return ExitCode::from(1);
            }
        },
        (None, None) => Presented::None,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sallyport: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(sallyport::explain::explain(config, request, presented)) {
        Ok(report) => {
            let _ = std::io::Write::write_all(&mut std::io::stdout(), report.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sallyport: {e}");
            ExitCode::from(1)
        }
    }
}

/// One GET to the admin listener's `/healthz`, with no dependencies beyond std, so the
/// check works in a distroless image.
fn healthcheck(path: &Path) -> ExitCode {
    use std::io::{Read, Write};
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    let Some(admin) = config.admin else {
        eprintln!("sallyport: healthcheck needs [admin] listen in the config");
        return ExitCode::from(1);
    };
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        });
    }
    let timeout = std::time::Duration::from_secs(3);
    let answer = (|| -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut response = String::new();
        stream.take(4096).read_to_string(&mut response)?;
        Ok(response)
    })();
    match answer {
        Ok(response) if response.starts_with("HTTP/1.1 200") => ExitCode::SUCCESS,
        Ok(response) => {
            eprintln!(
                "sallyport: {addr}/healthz answered {}",
                response.lines().next().unwrap_or("nothing")
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("sallyport: cannot reach the admin listener at {addr}: {e}");
            ExitCode::from(1)
        }
    }
}

/// A password for one use: prompted once without echo on a terminal, else the first
/// line of stdin.
fn read_secret_line(prompt: &str) -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(prompt)
            .map_err(|e| format!("cannot read the password: {e}"));
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// On a terminal: prompt twice without echo. Otherwise: the first line of stdin, without
/// its line ending (so `echo pw | sallyport hash-password` and here-strings work).
fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let again = rpassword::prompt_password("Again: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != again {
            return Err("the passwords do not match".into());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
        trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string()
    };
    if password.is_empty() {
        return Err("empty password".into());
    }
    Ok(password)
}

fn load(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(c) => Some(c),
        Err(errors) => {
            eprintln!("{errors}");
            None
        }
    }
}

fn check(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    // Build what `run` would build (TLS pairing, upstream clients) without binding.
    if let Some(tls) = &config.server.tls {
        if let Err(e) = sallyport::server::tls_acceptor(tls) {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Err(e) = sallyport::gate::Gate::new(&config, sallyport::clock::WallClock::system()) {
        eprintln!("{}: {e}", path.display());
        return ExitCode::from(1);
    }
    // Written in one go, ignoring a closed pipe: `sallyport check | head -1` must not panic.
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", path.display());
    let listen: Vec<String> = config.server.listen.iter().map(|a| a.to_string()).collect();
    let tls = match &config.server.tls {
        None => "off (plain HTTP)".to_string(),
        Some(t) => match &t.source {
            sallyport::config::TlsSource::SelfSigned(names) => {
                format!("self-signed for {}", names.join(", "))
            }
            sallyport::config::TlsSource::Files { cert_path, .. } => {
                format!("certificate {}", cert_path.display())
            }
        },
    };
    let throttle = match &config.rate_limit {
        None => "off".to_string(),
        Some(r) => format!(
            "{} failures/{} per client (block {}), {} failures/{} per username, {} ({} entries max)",
            r.max_failures,
            humantime::format_duration(r.window),
            humantime::format_duration(r.block_for),
            r.max_failures_per_user,
            humantime::format_duration(r.user_window),
            if r.redis.is_some() {
                "shared in Redis"
            } else {
                "local counters"
            },
            r.max_tracked,
        ),
    };
    let _ = writeln!(out, "  listen: {}", listen.join(", "));
    let _ = writeln!(out, "  tls:    {tls}");
    let _ = match &config.admin {
        Some(admin) => writeln!(
            out,
            "  admin:  http://{}/ (healthz, readyz{}, metrics)",
            admin.listen,
            if admin.check_upstreams {
                " with upstream checks"
            } else {
                ""
            }
        ),
        None => writeln!(
            out,
            "  admin:  off (no health, readiness or metrics endpoints)"
        ),
    };
    let _ = writeln!(out, "  throttling: {throttle}");
    if let Some(basic) = &config.auth.basic {
        let _ = writeln!(
            out,
            "  basic:  {} ({} users)",
            basic.htpasswd.display(),
            basic.users.users()
        );
    }
    if let Some(jwt) = &config.auth.jwt {
        let mut sources = Vec::new();
        if let Some(jwks) = &jwt.jwks {
            sources.push(format!("JWKS {}", jwks.url));
        }
        sources.extend(jwt.static_keys.iter().map(|(name, _)| name.clone()));
        let algorithms: Vec<String> = jwt.algorithms.iter().map(|a| format!("{a:?}")).collect();
        let _ = writeln!(
            out,
            "  bearer: {} [{}], issuer {}, audiences {}",
            sources.join(", "),
            algorithms.join(", "),
            jwt.issuer.as_deref().unwrap_or("(any)"),
            if jwt.audiences.is_empty() {
                "(any)".to_string()
            } else {
                jwt.audiences.join(", ")
            },
        );
    }
    if let Some(oidc) = &config.auth.oidc {
        let _ = writeln!(
            out,
            "  oidc:   issuer {}, client {} ({}), scopes {}",
            oidc.issuer,
            oidc.client_id,
            if oidc.client_secret.is_some() {
                "confidential"
            } else {
                "public, PKCE only"
            },
            oidc.scopes.join(" "),
        );
        let _ = writeln!(
            out,
            "          redirect_uri {}/.sallyport/callback; sessions in {}, idle {}, max {}; Bearer audiences {}",
            oidc.public_url.to_string().trim_end_matches('/'),
            if oidc.session_store.is_some() {
                "Redis"
            } else {
                "encrypted cookies"
            },
            humantime::format_duration(oidc.session_idle),
            humantime::format_duration(oidc.session_max),
            oidc.audiences.join(", "),
        );
    }
    let _ = writeln!(out, "  routes:");
    for line in RouteTable::describe(&config.routes) {
        let _ = writeln!(out, "    {line}");
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
    ExitCode::SUCCESS
}

fn run(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    sallyport::logging::init(&config.log);
    // The control plane: signals, accepting, the admin endpoints, reloads and background
    // refreshes. Connections are served on worker threads of their own (`server.workers`,
    // by default one per CPU).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sallyport: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async {
        let signals = shutdown_signal().and_then(|shutdown| {
            let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            Ok((shutdown, hangup))
        });
        let (shutdown, mut hangup) = match signals {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sallyport: cannot install signal handlers: {e}");
                return ExitCode::from(1);
            }
        };
        let server = match Server::bind(&config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(1);
            }
        };
        let reloader = server.reloader();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the config");
                let reloader = std::sync::Arc::clone(&reloader);
                let _ = tokio::task::spawn_blocking(move || {
                    reloader.reload(sallyport::reload::Trigger::Signal)
                })
                .await;
            }
        });
        server
            .run_on_workers(shutdown, config.server.worker_threads())
            .await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Registers SIGTERM (Kubernetes, systemd) and SIGINT (Ctrl-C) handlers now, so a signal
/// that arrives while we are still starting is not fatal, and returns a future that
/// resolves on the first of them.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
