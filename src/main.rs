use std::process::ExitCode;

use clap::Parser;
use directline_gateway::cli::{Cli, Command};
use directline_gateway::config::{Config, ConfigError, ProcessEnv, UpstreamTarget};
use directline_gateway::{emulator, logging, server, signals};

/// sysexits EX_CONFIG-ish "usage/config error" code the operator interface promises.
const EXIT_CONFIG: u8 = 64;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let (mut shutdown, mut reload) = match signals::install() {
        Ok(handlers) => handlers,
        Err(error) => {
            eprintln!("directline-gateway: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Emulator(args)) = &cli.command {
        return run_emulator(args, shutdown).await;
    }
    let config = match Config::load(cli.config.as_deref(), &cli.overrides(), &ProcessEnv) {
        Ok(config) => config,
        Err(error) => return config_error(&error),
    };
    let embedded = config.upstream == UpstreamTarget::Embedded;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let running = match server::start(config).await {
        Ok(running) => running,
        Err(error) => {
            eprintln!("directline-gateway: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let domain = format!("{scheme}://{}/v3/directline", running.client_addr);
    tracing::info!(client = %running.client_addr, admin = %running.admin_addr, "gateway listening");
    println!(
        "directline-gateway listening on {scheme}://{}",
        running.client_addr
    );
    println!("  Direct Line domain for clients: {domain}");
    println!("  metrics: http://{}/metrics", running.admin_addr);
    if embedded {
        println!("  upstream: embedded Direct Line emulator with an echo bot (no secret needed)");
        println!("  chat in a browser: {scheme}://{}/", running.client_addr);
    }
    let overrides = cli.overrides();
    loop {
        tokio::select! {
            () = shutdown.recv() => break,
            () = reload.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = running.reload(Config::load(cli.config.as_deref(), &overrides, &ProcessEnv));
            }
        }
    }
    tracing::info!("shutdown signal received, draining");
    running.shutdown().await;
    ExitCode::SUCCESS
}

fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("directline-gateway: {error}");
    ExitCode::from(EXIT_CONFIG)
}

async fn run_emulator(args: &emulator::EmulatorArgs, mut shutdown: signals::Shutdown) -> ExitCode {
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
    match emulator::run(
        listener,
        args.config(),
        async move { shutdown.recv().await },
    )
    .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("directline-gateway emulator: {error}");
            ExitCode::FAILURE
        }
    }
}
