//! The gateway against nginx doing the closest job and against Direct Line direct (the
//! emulator), side by side in one run. Not a test: it prints markdown tables
//! and never fails on a figure. `bash benches/compare.sh [quick]` runs every mode; one mode:
//!
//!   cargo bench --bench compare -- rest    [--quick] [--repeat N] [--secs S] [--concurrency 32,256]
//!   cargo bench --bench compare -- wrk     [--quick] [--repeat N] [--secs S] [--connections 32]
//!   cargo bench --bench compare -- ws      [--quick] [--repeat N] [--secs S] [--conversations 100,1000] [--rate R]
//!   cargo bench --bench compare -- idle    [--quick] [--repeat N] [--counts 1000,9900]
//!   cargo bench --bench compare -- storm   [--quick] [--repeat N] [--conversations 1000]
//!   cargo bench --bench compare -- startup [--quick] [--repeat N]
//!   cargo bench --bench compare -- streamed [--quick] [--repeat N] [--conversations 100] [--answers A] [--slow 1000]
//!   cargo bench --bench compare -- profile --phase tokens|rest|ws|streamed|all [--count N] [--chunk-interval 50ms]  (under callgrind, see compare.sh)
//!
//! Every measurement starts fresh processes: an emulator inside this process (so a bot
//! message's send time and its arrival are read from one clock), and for `nginx` and
//! `gateway` the proxy under test as a child process (`benches/nginx.conf`, the release
//! gateway binary), whose CPU time and memory are read from `/proc` over the measured
//! window. The load generator and the emulator share the machine's cores with the proxy.

#[path = "compare/clients.rs"]
mod clients;
#[path = "compare/procs.rs"]
mod procs;
#[path = "compare/scenarios.rs"]
mod scenarios;
#[path = "compare/stats.rs"]
mod stats;

use std::collections::HashMap;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(mode) = args.first().cloned() else {
        usage();
        return;
    };
    let options = Options::parse(&args[1..]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    directline_gateway::server::install_crypto_provider();
    scenarios::print_header(&mode, &options);
    match mode.as_str() {
        "rest" => runtime.block_on(scenarios::rest(&options)),
        "ws" => runtime.block_on(scenarios::ws(&options)),
        "wrk" => runtime.block_on(scenarios::wrk(&options)),
        "idle" => runtime.block_on(scenarios::idle(&options)),
        "storm" => runtime.block_on(scenarios::storm(&options)),
        "startup" => scenarios::startup(&options),
        "streamed" => runtime.block_on(scenarios::streamed(&options)),
        "profile" => runtime.block_on(scenarios::profile(&options)),
        _ => usage(),
    }
    scenarios::print_footer();
}

fn usage() {
    eprintln!(
        "usage: cargo bench --bench compare -- rest|wrk|ws|idle|storm|startup|streamed|profile [--quick] [--repeat N] [...]\n\
         (see the top of benches/compare.rs)"
    );
}

/// `--name value` pairs and bare `--flag`s.
pub struct Options {
    values: HashMap<String, String>,
}

impl Options {
    fn parse(args: &[String]) -> Self {
        let mut values = HashMap::new();
        let mut iter = args.iter().peekable();
        while let Some(arg) = iter.next() {
            let Some(name) = arg.strip_prefix("--") else {
                eprintln!("ignored argument: {arg}");
                continue;
            };
            let value = match iter.peek() {
                Some(next) if !next.starts_with("--") => iter.next().cloned().unwrap_or_default(),
                _ => "true".to_owned(),
            };
            values.insert(name.to_owned(), value);
        }
        Self { values }
    }

    pub fn quick(&self) -> bool {
        self.values.contains_key("quick")
    }

    pub fn raw(&self) -> impl Iterator<Item = (&String, &String)> {
        self.values.iter()
    }

    /// `--name N`, else `quick` or `full` by mode.
    pub fn number(&self, name: &str, quick: f64, full: f64) -> f64 {
        self.values
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(if self.quick() { quick } else { full })
    }

    /// `--name 1,2,3`, else `quick` or `full` by mode.
    pub fn list(&self, name: &str, quick: &[usize], full: &[usize]) -> Vec<usize> {
        match self.values.get(name) {
            Some(v) => v.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
            None if self.quick() => quick.to_vec(),
            None => full.to_vec(),
        }
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}
