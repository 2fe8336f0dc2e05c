//! The command line: parse arguments, load the config, hand over to the server.
#![forbid(unsafe_code)]

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sallyport::install_crypto_provider();
    let Some(path) = cli.config else {
        eprintln!("sallyport: no config given: pass --config PATH or set SALLYPORT_CONFIG");
        return ExitCode::from(1);
    };
    match cli.command {
        Some(Command::Check) => check(&path),
        None => run(&path),
    }
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
    if let Err(e) = sallyport::gate::Gate::new(&config) {
        eprintln!("{}: {e}", path.display());
        return ExitCode::from(1);
    }
    println!("{}: OK", path.display());
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
    println!("  listen: {}", listen.join(", "));
    println!("  tls:    {tls}");
    println!("  routes:");
    for line in RouteTable::describe(&config.routes) {
        println!("    {line}");
    }
    ExitCode::SUCCESS
}

fn run(path: &Path) -> ExitCode {
    let Some(config) = load(path) else {
        return ExitCode::from(1);
    };
    sallyport::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
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
        let server = match Server::bind(&config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                return ExitCode::from(1);
            }
        };
        server.run(shutdown_signal()).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

/// Resolves on the first SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
