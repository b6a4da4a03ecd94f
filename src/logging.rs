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

/// A line the process writes itself rather than through `tracing` (the start-up banner, a
/// fatal configuration error): in JSON mode an object shaped like the log lines
/// (`timestamp`, `level`, `message`, `target`, then `fields`), so that every line the
/// process writes parses as JSON.
pub fn json_line(
    level: &str,
    target: &str,
    message: &str,
    fields: serde_json::Map<String, serde_json::Value>,
) -> String {
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    let mut timestamp = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut timestamp));
    let mut line = serde_json::Map::new();
    line.insert("timestamp".into(), timestamp.into());
    line.insert("level".into(), level.into());
    line.insert("message".into(), message.into());
    line.insert("target".into(), target.into());
    line.extend(fields);
    serde_json::Value::Object(line).to_string()
}

/// The one stderr line of a failure before or instead of serving (exit 64 and the like):
/// `directline-gateway: …` for a person, an ERROR object in JSON mode.
pub fn report_failure(format: LogFormat, message: &str) {
    match format {
        LogFormat::Human => eprintln!("directline-gateway: {message}"),
        LogFormat::Json => eprintln!(
            "{}",
            json_line("ERROR", "directline_gateway", message, Default::default())
        ),
    }
}
