//! Command-line interface (DESIGN §6): gateway flags, and the `emulator` subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;
use crate::emulator::EmulatorArgs;
use crate::logging::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "directline-gateway",
    version,
    about = "Direct Line 3.0 gateway: server-held secrets, caller-bound tokens, seamless WebSocket resume"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file (see config/gateway.toml).
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Client listener address [default: 127.0.0.1:8080].
    #[arg(long)]
    pub listen: Option<String>,
    /// Admin listener (/metrics, /healthz, /readyz) [default: 127.0.0.1:9464].
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Direct Line base URL without /v3/directline, or `embedded` [default: embedded].
    #[arg(long)]
    pub upstream: Option<String>,
    /// How clients reach the gateway, e.g. https://chat.contoso.com.
    #[arg(long)]
    pub public_url: Option<String>,
    #[arg(long, value_enum, default_value = "human", global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded Direct Line emulator alone.
    Emulator(EmulatorArgs),
}

impl Cli {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            upstream: self.upstream.clone(),
            public_url: self.public_url.clone(),
        }
    }
}
