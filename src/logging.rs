//! tracing setup: human or JSON lines, `RUST_LOG` filtering, and caps on wire-level crates.

use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Crates whose trace output can include raw header frames (and so the upstream
/// `Authorization`); they stay at `info` even under `RUST_LOG=trace`.
const WIRE_LEVEL_CAPS: [&str; 6] = [
    "h2=info",
    "hyper=info",
    "hyper_util=info",
    "rustls=info",
    "tungstenite=info",
    "tokio_tungstenite=info",
];

pub fn filter(directives: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(directives).unwrap_or_else(|_| EnvFilter::new("info"));
    for cap in WIRE_LEVEL_CAPS {
        if let Ok(directive) = cap.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

pub fn init(format: LogFormat) {
    let directives = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    // Colour codes only for a person at a terminal, not in files, journald or a collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(&directives))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
