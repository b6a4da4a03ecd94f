//! `directline-emulator`: an offline Direct Line 3.0 service with an echo bot, for trying
//! Direct Line clients and gateways without a bot or the internet.

use clap::Parser;
use directline_emulator::EmulatorArgs;

#[derive(Parser)]
#[command(name = "directline-emulator", version, about)]
struct Cli {
    #[command(flatten)]
    args: EmulatorArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    directline_emulator::run_cli("directline-emulator", &cli.args, stopped()).await
}

/// SIGTERM (containers) or Ctrl-C.
async fn stopped() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
