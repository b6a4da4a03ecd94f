//! Command-line interface (ARCHITECTURE §6): gateway flags, and the `emulator` subcommand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Overrides;
use crate::logging::LogFormat;
use directline_emulator::EmulatorArgs;

/// What `--help` adds after the flags: the settings that are not flags.
const AFTER_HELP: &str = "\
Environment:
  DIRECTLINE_SECRET             the Direct Line secret (or secret_file in the config);
                                needed unless the upstream is embedded
  DIRECTLINE_GATEWAY_TOKEN_KEY  at least 32 characters, the same on every replica (or
                                token_key_file); without it a random key per process
  DIRECTLINE_GATEWAY_PSEUDONYM_KEY
                                signed-in users ([auth]): at least 32 characters, the same
                                on every replica and never rotated (or pseudonym_key_file)
  RUST_LOG                      log filter (default: info)
  OTEL_EXPORTER_OTLP_ENDPOINT   an OTLP/HTTP collector: tracing on (unless [tracing] in
                                the config says otherwise); also OTEL_SERVICE_NAME,
                                OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_SDK_DISABLED

Signals: SIGTERM/SIGINT drain and exit 0, SIGHUP reloads the config file and key files.
A bad configuration or command line prints one line on stderr and exits 64;
`validate` checks a configuration the same way without starting anything.
With no arguments: the gateway on 127.0.0.1:8080 in front of an embedded Direct Line
emulator with an echo bot (open http://127.0.0.1:8080/), admin on 127.0.0.1:9464.";

#[derive(Debug, Parser)]
#[command(
    name = "directline-gateway",
    version,
    about = "Direct Line 3.0 gateway: server-held secrets, caller-bound tokens, seamless WebSocket resume",
    after_help = AFTER_HELP
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML configuration file (see config/gateway.toml).
    #[arg(long)]
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
    /// A Copilot Studio agent's token endpoint (its Mobile app channel page); without
    /// --upstream the Direct Line host is discovered from it, without a secret tokens come
    /// from it.
    #[arg(long)]
    pub token_endpoint: Option<String>,
    /// Log lines on stderr: human-readable, or one JSON object per line.
    #[arg(long, value_enum, default_value = "human", global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the embedded Direct Line emulator alone.
    Emulator(EmulatorArgs),
    /// Check the whole configuration (the file, the files it names, secrets and keys
    /// present, URLs, certificates) without binding anything: exit 0 with a one-line
    /// summary, or one line saying what is wrong and exit 64.
    Validate(ValidateArgs),
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// TOML configuration file (the same as the gateway's --config, which also works).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// A command line that does not parse, as the one stderr line the operator interface
/// promises (clap's own report is several lines with a usage block).
pub fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let mut line = rendered
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("For more information") && !l.starts_with("Usage:")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join(" ");
    line.push_str(" (see --help)");
    line
}

impl Cli {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            upstream: self.upstream.clone(),
            public_url: self.public_url.clone(),
            token_endpoint: self.token_endpoint.clone(),
        }
    }
}
