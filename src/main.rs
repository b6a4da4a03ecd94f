use std::hash::{Hash, Hasher};
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use directline_emulator::EmulatorArgs;
use directline_gateway::cli::{self, Cli, Command};
use directline_gateway::config::{Config, ConfigError, ProcessEnv, UpstreamTarget};
use directline_gateway::logging::{self, LogFormat};
use directline_gateway::{server, signals};

/// sysexits EX_CONFIG-ish "usage/config error" code the operator interface promises.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version are answers, not errors.
        Err(error) if !error.use_stderr() => {
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            eprintln!("directline-gateway: {}", cli::usage_error_line(&error));
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    logging::init(cli.log_format);
    if let Some(Command::Validate(args)) = &cli.command {
        return validate(&cli, args.config.as_deref().or(cli.config.as_deref()));
    }
    // The gateway serves connections on its own worker threads (`workers`); this thread
    // accepts, answers the admin listener, reloads and drains. The emulator alone runs on a
    // work-stealing pool, like any tokio server.
    let runtime = if matches!(cli.command, Some(Command::Emulator(_))) {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match runtime {
        Ok(runtime) => runtime.block_on(run(cli)),
        Err(error) => {
            logging::report_failure(
                cli.log_format,
                &format!("cannot start the runtime: {error}"),
            );
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> ExitCode {
    let (mut shutdown, mut reload) = match signals::install() {
        Ok(handlers) => handlers,
        Err(error) => {
            logging::report_failure(
                cli.log_format,
                &format!("cannot install signal handlers: {error}"),
            );
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Emulator(args)) = &cli.command {
        return run_emulator(args, shutdown).await;
    }
    let config = match load_config(&cli, cli.config.as_deref()) {
        Ok(config) => config,
        Err(error) => return config_error(cli.log_format, &error),
    };
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let running = match server::start(config).await {
        Ok(running) => running,
        Err(error) => {
            logging::report_failure(cli.log_format, &error.to_string());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if cli.log_format == LogFormat::Json {
        eprintln!("{}", json_banner(&running, scheme));
    } else {
        print_banner(&running, scheme);
    }
    // Read at start: a reload does not change how often the files are checked.
    let watch_every = running.gateway.live().config.file_watch_interval;
    let period = watch_every.max(Duration::from_millis(10));
    // The first check one period after start, not at once: the baseline is taken now.
    let mut watch = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fingerprint = files_fingerprint(&cli, &running.gateway.live().config);
    loop {
        tokio::select! {
            () = shutdown.recv() => break,
            () = reload.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = running.reload(load_config(&cli, cli.config.as_deref()));
                fingerprint = files_fingerprint(&cli, &running.gateway.live().config);
            }
            _ = watch.tick(), if !watch_every.is_zero() => {
                let now = files_fingerprint(&cli, &running.gateway.live().config);
                if now != fingerprint {
                    tracing::info!("a configuration, secret or key file changed: reloading");
                    let _ = running.reload(load_config(&cli, cli.config.as_deref()));
                    // Taken after the reload: the new configuration may name other files. A
                    // half-written file was refused; its next change triggers another try.
                    fingerprint = files_fingerprint(&cli, &running.gateway.live().config);
                }
            }
        }
    }
    tracing::info!("shutdown signal received, draining");
    // A second signal cuts the drain short (Ctrl-C twice at a terminal; an operator who
    // does not want to wait for stream.drain_period).
    tokio::select! {
        () = running.shutdown() => {}
        () = shutdown.recv() => tracing::info!("second shutdown signal: exiting without finishing the drain"),
    }
    ExitCode::SUCCESS
}

/// The start-up banner for a person at a terminal (stdout; the log lines go to stderr).
fn print_banner(running: &server::Running, scheme: &str) {
    tracing::info!(client = %running.client_addr, admin = %running.admin_addr, "gateway listening");
    println!(
        "directline-gateway listening on {scheme}://{}",
        running.client_addr
    );
    // Bound to every interface (a container, a server): 0.0.0.0 is no address to open, and
    // only the operator knows the one that reaches this machine.
    let all_interfaces = running.client_addr.ip().is_unspecified();
    if all_interfaces {
        println!(
            "  (listening on all interfaces: reach it at this machine's address, port {})",
            running.client_addr.port()
        );
    }
    for bot in &running.gateway.live().config.bots {
        let authority = match &bot.host {
            Some(host) => format!("{host}:{}", running.client_addr.port()),
            None if all_interfaces => format!("<this host>:{}", running.client_addr.port()),
            None => running.client_addr.to_string(),
        };
        let root = format!("{scheme}://{authority}{}", bot.path_prefix);
        println!(
            "  bot {}: Direct Line domain for clients: {root}/v3/directline",
            bot.name
        );
        if bot.upstream == UpstreamTarget::Embedded {
            println!(
                "    upstream: embedded Direct Line emulator with an echo bot (no secret needed)"
            );
            println!("    chat in a browser: {root}/");
        }
        if let Some(endpoint) = &bot.token_endpoint {
            let tokens = if bot.secret.is_some() {
                "with the secret (web channel security)"
            } else {
                "from the token endpoint"
            };
            let host = if bot.upstream == UpstreamTarget::Discovered {
                "discovered from the environment"
            } else {
                "as configured"
            };
            println!(
                "    Copilot Studio agent at {}: tokens {tokens}, Direct Line host {host}",
                endpoint.origin()
            );
        }
    }
    println!("  metrics: http://{}/metrics", running.admin_addr);
}

/// The start-up banner as one JSON log event (`--log-format json`, where every line the
/// process writes is JSON): version, listeners, and each bot with its Direct Line domain
/// and upstream. Upstream URLs without any user or password they were written with.
fn json_banner(running: &server::Running, scheme: &str) -> String {
    let live = running.gateway.live();
    let bots: Vec<serde_json::Value> = live
        .config
        .bots
        .iter()
        .map(|bot| {
            let authority = match &bot.host {
                Some(host) => format!("{host}:{}", running.client_addr.port()),
                None => running.client_addr.to_string(),
            };
            let root = format!("{scheme}://{authority}{}", bot.path_prefix);
            let upstream = match &bot.upstream {
                UpstreamTarget::Embedded => "embedded".to_owned(),
                UpstreamTarget::Url(url) => without_credentials(url),
                UpstreamTarget::Discovered => "discovered".to_owned(),
            };
            let mut entry = serde_json::json!({
                "name": bot.name,
                "domain": format!("{root}/v3/directline"),
                "upstream": upstream,
            });
            if bot.upstream == UpstreamTarget::Embedded || bot.demo_page {
                entry["demo_page"] = format!("{root}/").into();
            }
            if let Some(endpoint) = &bot.token_endpoint {
                entry["copilot_studio_environment"] = endpoint.origin().to_string().into();
            }
            entry
        })
        .collect();
    let upstreams: Vec<serde_json::Value> = bots.iter().map(|b| b["upstream"].clone()).collect();
    let fields = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "listen": format!("{scheme}://{}", running.client_addr),
        "admin": format!("http://{}", running.admin_addr),
        "metrics": format!("http://{}/metrics", running.admin_addr),
        "bots": bots,
        "upstreams": upstreams,
    });
    let serde_json::Value::Object(fields) = fields else {
        unreachable!("a json! object literal")
    };
    logging::json_line("INFO", "directline_gateway", "gateway listening", fields)
}

fn without_credentials(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// `directline-gateway validate`: the configuration read as a start would read it (the
/// file, the files it names, the environment, the flags), and the files only a start
/// reads (the listener's certificate and key, upstream CA files), without binding a port.
fn validate(cli: &Cli, path: Option<&std::path::Path>) -> ExitCode {
    let config = match load_config(cli, path) {
        Ok(config) => config,
        Err(error) => return config_error(cli.log_format, &error),
    };
    if let Err(error) = server::check_files(&config) {
        logging::report_failure(cli.log_format, &error.to_string());
        return ExitCode::from(EXIT_CONFIG);
    }
    let bots: Vec<String> = config
        .bots
        .iter()
        .map(|bot| {
            let upstream = match &bot.upstream {
                UpstreamTarget::Embedded => "embedded".to_owned(),
                UpstreamTarget::Url(url) => without_credentials(url),
                UpstreamTarget::Discovered => "discovered".to_owned(),
            };
            format!("{} → {upstream}", bot.name)
        })
        .collect();
    let source = path.map_or("no file".to_owned(), |p| p.display().to_string());
    let summary = format!(
        "configuration OK ({source}): listen {}, admin {}, {} bot{}: {}",
        config.listen,
        config.admin_listen,
        bots.len(),
        if bots.len() == 1 { "" } else { "s" },
        bots.join(", ")
    );
    match cli.log_format {
        LogFormat::Human => println!("directline-gateway: {summary}"),
        LogFormat::Json => println!(
            "{}",
            logging::json_line("INFO", "directline_gateway", &summary, Default::default())
        ),
    }
    ExitCode::SUCCESS
}

/// The configuration from the file, environment and flags; with none of them (no file, no
/// upstream, no secret) the two demo bots.
fn load_config(cli: &Cli, path: Option<&std::path::Path>) -> Result<Config, ConfigError> {
    let overrides = cli.overrides();
    let config = Config::load(path, &overrides, &ProcessEnv)?;
    let nothing_configured = path.is_none()
        && overrides.upstream.is_none()
        && config
            .bots
            .iter()
            .all(|bot| bot.secret.is_none() && bot.upstream == UpstreamTarget::Embedded);
    Ok(if nothing_configured {
        config.with_demo_bots()
    } else {
        config
    })
}

/// A hash of the configuration file and every file it names, contents included (a Kubernetes
/// volume update swaps a symlink and keeps mtimes meaningless). A few small files read every
/// `file_watch_interval`: cheap enough to read on the runtime.
fn files_fingerprint(cli: &Cli, config: &Config) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for path in cli.config.iter().chain(&config.watched_files) {
        path.hash(&mut hasher);
        std::fs::read(path).ok().hash(&mut hasher);
    }
    hasher.finish()
}

fn config_error(format: LogFormat, error: &ConfigError) -> ExitCode {
    logging::report_failure(format, &error.to_string());
    ExitCode::from(EXIT_CONFIG)
}

async fn run_emulator(args: &EmulatorArgs, mut shutdown: signals::Shutdown) -> ExitCode {
    directline_emulator::run_cli("directline-gateway emulator", args, async move {
        shutdown.recv().await
    })
    .await
}
