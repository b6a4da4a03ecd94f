//! PLACEHOLDER until the real emulator lands (same public API).
use crate::secret::Secret;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Clone, Debug, Default)]
pub struct Faults;
pub struct EmulatorConfig {
    pub secret: Secret,
    pub faults: Faults,
    pub keepalive_interval: Duration,
    pub stream_url_ttl: Duration,
    pub token_ttl: Duration,
}
impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            secret: Secret::new("emulator-secret"),
            faults: Faults,
            keepalive_interval: Duration::from_secs(15),
            stream_url_ttl: Duration::from_secs(60),
            token_ttl: Duration::from_secs(3600),
        }
    }
}
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    #[arg(long, default_value = "127.0.0.1:3978")]
    listen: SocketAddr,
}
impl EmulatorArgs {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }
    pub fn config(&self) -> EmulatorConfig {
        EmulatorConfig::default()
    }
}
#[derive(Clone)]
pub struct EmulatorHandle {
    addr: SocketAddr,
}
impl EmulatorHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn shutdown(&self) {}
}
pub fn spawn(listener: tokio::net::TcpListener, _config: EmulatorConfig) -> EmulatorHandle {
    EmulatorHandle {
        addr: listener.local_addr().unwrap(),
    }
}
pub async fn run(
    _l: tokio::net::TcpListener,
    _c: EmulatorConfig,
    s: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    s.await;
    Ok(())
}
