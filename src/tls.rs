//! TLS on the client listener: rustls with the ring provider, TLS 1.2 and 1.3, ALPN h2 and
//! http/1.1, and a certificate that is re-read when its files change. The swap happens in
//! the certificate resolver, so established connections are untouched and the next
//! handshake gets the new certificate.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;
use crate::metrics::Metrics;

/// Serves whichever certificate was loaded last.
#[derive(Debug)]
struct ReloadingCertificate {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The client listener's TLS side: the acceptor and the watcher that keeps it current.
pub struct ListenerTls {
    acceptor: TlsAcceptor,
    resolver: Arc<ReloadingCertificate>,
    files: TlsFiles,
}

impl ListenerTls {
    /// Loads the files once; a missing or invalid certificate is a start-up error.
    pub fn new(files: &TlsFiles) -> Result<Self, String> {
        let resolver = Arc::new(ReloadingCertificate {
            current: ArcSwap::new(Arc::new(load(files)?)),
        });
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_no_client_auth()
                .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            resolver,
            files: files.clone(),
        })
    }

    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// Checks the files every `watch_interval` and swaps the certificate when they change.
    /// A file caught half-written fails to parse and is retried at the next tick; the old
    /// certificate serves meanwhile.
    pub async fn watch(self: Arc<Self>, metrics: Arc<Metrics>) {
        let mut loaded = stamps(&self.files);
        // The stamps of a change that failed to load, so it is counted and logged once.
        let mut failed = None;
        let mut ticks = tokio::time::interval(self.files.watch_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            let now = stamps(&self.files);
            if now == loaded || failed == Some(now) {
                continue;
            }
            match load(&self.files) {
                Ok(key) => {
                    self.resolver.current.store(Arc::new(key));
                    loaded = now;
                    failed = None;
                    metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(cert = %self.files.cert_file.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    failed = Some(now);
                    metrics.tls_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(%error, "TLS certificate reload failed; the previous one keeps serving");
                }
            }
        }
    }
}

type Stamp = Option<(SystemTime, u64)>;

/// Modification time and length of the certificate and key files.
fn stamps(files: &TlsFiles) -> (Stamp, Stamp) {
    let stamp = |path: &std::path::Path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    };
    (stamp(&files.cert_file), stamp(&files.key_file))
}

fn load(files: &TlsFiles) -> Result<CertifiedKey, String> {
    let cert_pem = std::fs::read(&files.cert_file)
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", files.cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no PEM certificate", files.cert_file.display()));
    }
    let key_pem =
        std::fs::read(&files.key_file).map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: {e}", files.key_file.display()))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(certified)
}
