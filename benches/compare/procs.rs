//! The processes under test (gateway, nginx, an emulator process) and what `/proc` says
//! about them. Every child is written to the pid file `benches/compare.sh` kills from on
//! exit, and is stopped by its `Drop` (SIGTERM, then SIGKILL after a grace).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
pub const TOKEN_KEY: &str = "bench-token-key-0123456789abcdef0123456789";

/// Rate limits and the per-IP connection cap off: every connection of the bench comes from
/// one loopback address (9,900 idle conversations are 9,900 sockets from it), and nginx has
/// neither. A short drain so each measurement stops quickly.
const GATEWAY_CONFIG: &str = "shutdown_grace = \"2s\"\n\
[limits]\n\
max_connections_per_ip = 0\n\
[rate_limits]\n\
sessions_per_minute = 0\n\
activities_per_minute = 0\n";

/// With `COMPARE_TRACING=1`, the gateway traces requests to [`trace_sink`], every one of
/// them unless `COMPARE_TRACING_RATIO` says otherwise: what tracing costs
/// (docs/BENCHMARKS.md, "Tracing cost"). With `COMPARE_POLICY=1`, every activity is asked
/// of [`policy_sink`] (allow-all); with `COMPARE_RECORD=1`, the conversation is recorded
/// under the run directory: what they cost when used (docs/BENCHMARKS.md, "Policy and
/// records").
fn gateway_config() -> String {
    let mut config = GATEWAY_CONFIG.to_owned();
    let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    if on("COMPARE_TRACING") {
        let ratio: f64 = std::env::var("COMPARE_TRACING_RATIO")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1.0);
        config.push_str(&format!(
            "\n[tracing]\nendpoint = \"{}\"\nsampling_ratio = {ratio:?}\n",
            trace_sink()
        ));
    }
    if on("COMPARE_POLICY") {
        config.push_str(&format!(
            "\n[policy]\nwebhook = \"{}/verdict\"\n",
            policy_sink()
        ));
    }
    if on("COMPARE_RECORD") {
        config.push_str(&format!(
            "\n[record]\npath = {:?}\n",
            run_dir().join("record").display().to_string()
        ));
    }
    config
}

/// An OTLP/HTTP receiver that accepts every export and keeps nothing, in the bench process:
/// the gateway's side of the export (encoding, the request, the answer) is what is
/// measured, not a collector's.
fn trace_sink() -> &'static str {
    static SINK: OnceLock<String> = OnceLock::new();
    SINK.get_or_init(|| {
        answering_sink(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n",
        )
    })
}

/// A policy webhook that allows every activity, in the bench process: the gateway's side
/// of the verdict (the request, its JSON both ways) is what is measured.
fn policy_sink() -> &'static str {
    static SINK: OnceLock<String> = OnceLock::new();
    SINK.get_or_init(|| {
        answering_sink(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 18\r\n\r\n{\"action\":\"allow\"}",
        )
    })
}

/// A loopback HTTP/1.1 server answering every request with `answer`; its base URL.
fn answering_sink(answer: &'static [u8]) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("sink");
    let url = format!("http://{}", listener.local_addr().expect("sink address"));
    std::thread::spawn(move || {
        for connection in listener.incoming().map_while(Result::ok) {
            std::thread::spawn(move || answer_each(connection, answer));
        }
    });
    url
}

/// Answers each HTTP/1.1 request on `connection` with `answer` after reading its body.
fn answer_each(connection: TcpStream, answer: &[u8]) {
    use std::io::BufRead as _;
    let mut reader = std::io::BufReader::new(match connection.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut writer = connection;
    loop {
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() || writer.write_all(answer).is_err() {
            return;
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Scratch space of this run: configs, logs, nginx temp dirs.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::var_os("COMPARE_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_TARGET_TMPDIR"))
                    .join(format!("compare-{}", std::process::id()))
            });
        std::fs::create_dir_all(&dir).expect("run dir");
        dir
    })
}

/// The shell wrapper's safety net: it kills what is listed here if the bench dies
/// without running its destructors.
fn record_pid(pid: u32) {
    if let Some(file) = std::env::var_os("COMPARE_PIDFILE")
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
    {
        let _ = writeln!(f, "{pid}");
    }
}

pub fn gateway_bin() -> String {
    std::env::var("COMPARE_GATEWAY_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_directline-gateway").to_owned())
}

pub fn nginx_bin() -> String {
    std::env::var("COMPARE_NGINX_BIN").unwrap_or_else(|_| "nginx".to_owned())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Nginx,
    Emulator,
}

/// A child process of the bench, stopped when dropped.
pub struct Proc {
    pub kind: Kind,
    child: Child,
    /// Client port (gateway, nginx) or listen port (emulator).
    pub port: u16,
    /// The gateway's admin port.
    pub admin_port: Option<u16>,
}

impl Proc {
    /// The release gateway in front of `upstream` (`http://127.0.0.1:PORT`), optionally
    /// behind a wrapper such as `valgrind --tool=callgrind`.
    pub fn gateway(upstream: &str, wrapper: &[String]) -> Self {
        Self::gateway_with(upstream, wrapper, "")
    }

    /// [`Proc::gateway`] with `extra` appended to its configuration (whole TOML tables, such
    /// as `[stream]` settings a scenario compares).
    pub fn gateway_with(upstream: &str, wrapper: &[String], extra: &str) -> Self {
        let (port, admin) = (free_port(), free_port());
        let config = run_dir().join(format!("gateway-{port}.toml"));
        std::fs::write(&config, gateway_config() + "\n" + extra).expect("gateway config");
        let log = run_dir().join(format!("gateway-{port}.log"));
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(gateway_bin());
                c
            }
            None => Command::new(gateway_bin()),
        };
        command
            .arg("--config")
            .arg(&config)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
                "--upstream",
                upstream,
            ])
            .env("DIRECTLINE_SECRET", SECRET)
            .env("DIRECTLINE_GATEWAY_TOKEN_KEY", TOKEN_KEY)
            .env("RUST_LOG", "warn");
        Self::spawn(Kind::Gateway, command, &log, port, Some(admin))
    }

    /// nginx from `benches/nginx.conf`, in front of the emulator on `upstream_port`.
    pub fn nginx(upstream_port: u16) -> Self {
        let port = free_port();
        let dir = run_dir().join(format!("nginx-{port}"));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let template = include_str!("../nginx.conf");
        let conf = template
            .replace("@DIR@", &dir.display().to_string())
            .replace("@UPSTREAM_PORT@", &upstream_port.to_string())
            .replace("@PORT@", &port.to_string())
            .replace("@SECRET@", SECRET);
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("nginx.conf");
        let mut command = Command::new(nginx_bin());
        command
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-e")
            .arg(dir.join("error.log"));
        Self::spawn(Kind::Nginx, command, &dir.join("stderr.log"), port, None)
    }

    /// `directline-gateway emulator` as its own process (the idle scenario: the bench
    /// process then holds only the client sockets, not the emulator's too).
    pub fn emulator() -> Self {
        let port = free_port();
        let mut command = Command::new(gateway_bin());
        command.args([
            "emulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--secret",
            SECRET,
        ]);
        let log = run_dir().join(format!("emulator-{port}.log"));
        Self::spawn(Kind::Emulator, command, &log, port, None)
    }

    fn spawn(kind: Kind, mut command: Command, log: &Path, port: u16, admin: Option<u16>) -> Self {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {kind:?}: {e}"));
        record_pid(child.id());
        Self {
            kind,
            child,
            port,
            admin_port: admin,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until it serves: the gateway's `/readyz` answers 200, nginx answers on its
    /// port with both workers up, the emulator accepts.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{:?} exited at start: {status}", self.kind);
            }
            let ready = match self.kind {
                Kind::Gateway => http_status(self.admin_port.unwrap_or(0), "/readyz") == Some(200),
                Kind::Nginx => {
                    http_status(self.port, "/nginx-ready") == Some(200)
                        && children(self.pid()).len() >= 2
                }
                Kind::Emulator => accepts(self.port),
            };
            if ready {
                // Orphaned workers of a killed master would live on: the shell wrapper
                // must know them too.
                if self.kind == Kind::Nginx {
                    children(self.pid()).into_iter().for_each(record_pid);
                }
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{:?} never became ready",
                self.kind
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every process doing the work: the gateway, or nginx's master and workers.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.pid()];
        pids.extend(children(self.pid()));
        pids
    }

    /// Only the processes that hold connections (nginx workers; the gateway itself).
    pub fn worker_pids(&self) -> Vec<u32> {
        match self.kind {
            Kind::Nginx => children(self.pid()),
            _ => vec![self.pid()],
        }
    }

    /// utime + stime of every process doing the work.
    pub fn cpu(&self) -> Duration {
        self.pids().into_iter().map(cpu_time).sum()
    }

    /// stime alone: the part of [`Proc::cpu`] spent in the kernel (syscalls, wake-ups,
    /// loopback TCP), to tell it from the proxy's own code.
    pub fn kernel_cpu(&self) -> Duration {
        self.pids().into_iter().map(kernel_time).sum()
    }

    pub fn memory(&self) -> Memory {
        Memory::sum(self.pids())
    }

    /// Voluntary and involuntary context switches of every thread of every process: how
    /// often it went to sleep and was woken (threads that exited are not counted).
    pub fn context_switches(&self) -> u64 {
        self.pids().into_iter().map(context_switches).sum()
    }

    pub fn worker_memory(&self) -> Memory {
        Memory::sum(self.worker_pids())
    }

    /// SIGTERM and wait (the gateway drains; nginx exits fast), SIGKILL past the grace.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        signal(self.pid(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(100),
    )
    .is_ok()
}

/// A blocking one-shot `GET` on loopback: the status code, if any answer came.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Direct children of `pid` (nginx's workers).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&candidate| {
            stat_fields(candidate).is_some_and(|f| f.get(1) == Some(&pid.to_string()))
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name: `[state, ppid, …]`.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100)
    })
}

/// utime + stime (fields 14 and 15 of `/proc/PID/stat`), threads included, exited
/// threads too.
pub fn cpu_time(pid: u32) -> Duration {
    let Some(fields) = stat_fields(pid) else {
        return Duration::ZERO;
    };
    let ticks: u64 = fields[11..13]
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

/// stime (field 15 of `/proc/PID/stat`), threads included.
pub fn kernel_time(pid: u32) -> Duration {
    let Some(fields) = stat_fields(pid) else {
        return Duration::ZERO;
    };
    let ticks: u64 = fields[12].parse().unwrap_or(0);
    Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64)
}

fn context_switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// `strace -c -f` attached to running processes (every thread), until [`Strace::finish`]:
/// a syscall census of the measured window. It slows the traced process a lot, so the
/// timings of a traced run mean nothing; only the counts do.
pub struct Strace {
    child: Child,
    pub output: PathBuf,
}

impl Strace {
    /// `args` replace the default `-c -f` (e.g. `-f -k -e trace=mprotect` for stacks).
    pub fn attach(pids: &[u32], output: PathBuf, args: Option<&str>) -> Option<Self> {
        let mut command = Command::new("strace");
        command.args(args.unwrap_or("-c -f").split_whitespace());
        command.arg("-o").arg(&output);
        for pid in pids {
            command.args(["-p", &pid.to_string()]);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        record_pid(child.id());
        // Attaching takes a moment; what is missed is the window's first milliseconds.
        std::thread::sleep(Duration::from_millis(200));
        Some(Self { child, output })
    }

    /// Detaches (strace writes its summary on SIGINT) and returns the summary.
    pub fn finish(mut self) -> String {
        signal(self.child.id(), "INT");
        let _ = self.child.wait();
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }
}

/// The `total` calls of an `strace -c` summary.
pub fn strace_total_calls(summary: &str) -> Option<u64> {
    summary
        .lines()
        .find(|l| l.trim_end().ends_with("total"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|calls| calls.parse().ok())
}

/// Resident memory in KiB, summed over processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    pub rss_kib: u64,
    /// Peak RSS (`VmHWM`), summed: an upper bound when processes peak at different times.
    pub hwm_kib: u64,
    /// Proportional set size: pages shared between nginx's master and workers (or with
    /// other processes) are counted once, split among their users.
    pub pss_kib: u64,
}

impl Memory {
    fn sum(pids: Vec<u32>) -> Self {
        let mut total = Self::default();
        for pid in pids {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let field = |name: &str| -> u64 {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            total.rss_kib += field("VmRSS:");
            total.hwm_kib += field("VmHWM:");
            total.pss_kib += std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                .ok()
                .and_then(|rollup| {
                    rollup
                        .lines()
                        .find_map(|l| l.strip_prefix("Pss:"))
                        .and_then(|v| v.split_whitespace().next())
                        .and_then(|v| v.parse().ok())
                })
                .unwrap_or(0);
        }
        total
    }
}

/// Established TCP connections whose local port is `port` (the upstream side of bridged
/// streams, counted at the emulator), from `/proc/net/tcp`.
pub fn established_to(port: u16) -> usize {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return 0;
    };
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let mut fields = line.split_whitespace();
            let local_address = fields.nth(1).unwrap_or("");
            let state = fields.nth(1).unwrap_or("");
            local_address.ends_with(&local) && state == "01"
        })
        .count()
}

/// The kernel's `TcpExt ListenOverflows` counter (connections dropped because an accept
/// queue was full, machine-wide): a storm that overflows one pays 1 s SYN retransmits.
pub fn listen_overflows() -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/netstat") else {
        return 0;
    };
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

/// The soft open-file limit of this process.
pub fn open_file_limit() -> u64 {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits.lines().find_map(|l| {
                l.strip_prefix("Max open files")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|soft| soft.parse().ok())
            })
        })
        .unwrap_or(1024)
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
