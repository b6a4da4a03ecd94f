//! Process signals, registered once at start-up: SIGTERM/SIGINT drain, SIGHUP reloads.
//! Registering before anything is printed matters: until a handler exists, SIGHUP's
//! default action kills the process, so an early reload would take the gateway down.

#[cfg(unix)]
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM or SIGINT: drain and exit.
pub struct Shutdown {
    #[cfg(unix)]
    term: Signal,
    #[cfg(unix)]
    interrupt: Signal,
}

/// SIGHUP: reload the configuration.
pub struct Reload {
    #[cfg(unix)]
    hangup: Signal,
}

/// Installs the handlers now (call at the top of `main`, inside the runtime).
pub fn install() -> std::io::Result<(Shutdown, Reload)> {
    #[cfg(unix)]
    {
        Ok((
            Shutdown {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            },
            Reload {
                hangup: signal(SignalKind::hangup())?,
            },
        ))
    }
    #[cfg(not(unix))]
    {
        Ok((Shutdown {}, Reload {}))
    }
}

impl Shutdown {
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Reload {
    /// Resolves at each SIGHUP; several signals during one reload count as one.
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        {
            if self.hangup.recv().await.is_none() {
                std::future::pending::<()>().await;
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    }
}
