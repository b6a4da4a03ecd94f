//! The real binary as a child process: started with flags and environment, its addresses
//! read from what it prints, signalled like an operator would, killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_directline-gateway");

pub struct GatewayProcess {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of the client listener (`https://` with TLS).
    pub base: String,
    /// `http://127.0.0.1:PORT` of the admin listener.
    pub admin: String,
    /// Every line the process wrote to stderr (its logs), as they come.
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// Every line it wrote to stdout (the human banner), as they come.
    pub stdout: Arc<Mutex<Vec<String>>>,
}

impl GatewayProcess {
    /// Starts the binary and waits until it has printed its listening and metrics lines.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> GatewayProcess {
        let mut child = Command::new(BIN)
            .args(args)
            .env_remove("DIRECTLINE_SECRET")
            .env_remove("DIRECTLINE_GATEWAY_TOKEN_KEY")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr_lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = stderr_lines.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let json_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // With --log-format json the banner is a JSON event on stderr.
                if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line)
                    && event["message"] == "gateway listening"
                    && let (Some(listen), Some(admin)) =
                        (event["listen"].as_str(), event["admin"].as_str())
                {
                    let _ = json_tx.send((listen.to_owned(), admin.to_owned()));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let stdout_lines = Arc::new(Mutex::new(Vec::new()));
        let stdout_sink = stdout_lines.clone();
        std::thread::spawn(move || {
            let mut base = None;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                stdout_sink.lock().unwrap().push(line.clone());
                if line.starts_with("directline-gateway listening on ") {
                    base = line.rsplit(' ').next().map(str::to_owned);
                }
                if let Some(metrics) = line.trim().strip_prefix("metrics: ") {
                    let admin = metrics.trim_end_matches("/metrics").to_owned();
                    let _ = tx.send((base.clone().unwrap_or_default(), admin));
                }
            }
        });
        let (base, admin) = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                panic!(
                    "the gateway printed no addresses; stderr: {:?}",
                    stderr_lines.lock().unwrap()
                )
            });
        GatewayProcess {
            child,
            base,
            admin,
            stderr: stderr_lines,
            stdout: stdout_lines,
        }
    }

    /// The stderr lines so far.
    pub fn logs(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// On loopback ports with a config file and nothing secret in the environment.
    pub fn with_config(config: &str) -> GatewayProcess {
        Self::start(
            &[
                "--config",
                config,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ],
            &[],
        )
    }

    /// On loopback ports in front of `upstream` with the test secret and `token_key`.
    pub fn in_front_of(
        upstream: &str,
        token_key: &str,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> GatewayProcess {
        let mut args = vec![
            "--upstream",
            upstream,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra_args);
        let mut env = vec![
            ("DIRECTLINE_SECRET", super::SECRET),
            ("DIRECTLINE_GATEWAY_TOKEN_KEY", token_key),
        ];
        env.extend_from_slice(extra_env);
        Self::start(&args, &env)
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the gateway did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!(
            "dlgw-{name}-{}-{:x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory (replacing it) and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write temp file");
        path.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
