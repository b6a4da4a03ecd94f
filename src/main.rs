use std::process::ExitCode;

use clap::Parser;
use directline_gateway::cli::{Cli, Command};
use directline_gateway::config::{Config, ConfigError, ProcessEnv, UpstreamTarget};
use directline_gateway::{emulator, logging, server};

/// sysexits EX_CONFIG-ish "usage/config error" code the operator interface promises.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    if let Some(Command::Emulator(args)) = &cli.command {
        return run_emulator(args).await;
    }
    let config = match Config::load(cli.config.as_deref(), &cli.overrides(), &ProcessEnv) {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    let embedded = config.upstream == UpstreamTarget::Embedded;
    let running = match server::start(config).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("directline-gateway: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let domain = format!("http://{}/v3/directline", running.client_addr);
    tracing::info!(client = %running.client_addr, admin = %running.admin_addr, "gateway listening");
    println!(
        "directline-gateway listening on http://{}",
        running.client_addr
    );
    println!("  Direct Line domain for clients: {domain}");
    println!("  metrics: http://{}/metrics", running.admin_addr);
    if embedded {
        println!("  upstream: embedded Direct Line emulator with an echo bot (no secret needed)");
        println!("  chat in a browser: http://{}/", running.client_addr);
    }
    let overrides = cli.overrides();
    let mut reloads = reload_signals();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(()) = reloads.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = running.reload(Config::load(cli.config.as_deref(), &overrides, &ProcessEnv));
            }
        }
    }
    tracing::info!("shutdown signal received, draining");
    running.shutdown().await;
    ExitCode::SUCCESS
}

/// One message per SIGHUP. A channel rather than a future in the select so a reload never
/// races a half-received shutdown signal.
fn reload_signals() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    // A reload already queued covers this one too.
                    let _ = tx.try_send(());
                }
            });
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("directline-gateway: {error}");
    ExitCode::from(EXIT_CONFIG)
}

async fn run_emulator(args: &emulator::EmulatorArgs) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(args.listen()).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "directline-gateway emulator: cannot listen on {}: {error}",
                args.listen()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("Direct Line emulator listening on http://{addr}");
    match emulator::run(listener, args.config(), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("directline-gateway emulator: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => term,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
