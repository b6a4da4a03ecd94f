//! The switches of the emulator's Copilot Studio environment (served by `copilot`): web
//! channel security (the token endpoint refuses; only the secrets work), an environment
//! that is down (503), and a hostile regional settings answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Run-time switches of the environment; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct EnvironmentControl(pub(super) Arc<Cells>);

#[derive(Debug, Default)]
pub(super) struct Cells {
    pub(super) web_channel_security: AtomicBool,
    pub(super) unavailable: AtomicBool,
    /// Replaces the whole regional settings body (a foreign host, garbage).
    pub(super) settings_body: Mutex<Option<String>>,
    /// The Direct Line base the settings name; `None`: the emulator's own.
    pub(super) directline: Mutex<Option<String>>,
}

impl EnvironmentControl {
    pub(super) fn new(web_channel_security: bool) -> Self {
        let control = Self::default();
        control.set_web_channel_security(web_channel_security);
        control
    }

    /// Web channel security ("require secured access"): the token endpoint answers 403 and
    /// only the Direct Line secrets work.
    pub fn set_web_channel_security(&self, on: bool) {
        self.0.web_channel_security.store(on, Ordering::Relaxed);
    }

    /// Both environment routes answer 503, as an environment in an outage does.
    pub fn set_unavailable(&self, on: bool) {
        self.0.unavailable.store(on, Ordering::Relaxed);
    }

    /// The regional settings answer this body verbatim (`None`: the real answer).
    pub fn set_settings_body(&self, body: Option<String>) {
        *lock(&self.0.settings_body) = body;
    }

    /// The Direct Line base the regional settings name (`None`: the emulator's own).
    pub fn set_directline(&self, base: Option<String>) {
        *lock(&self.0.directline) = base;
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cells {
    pub(super) fn secured(&self) -> bool {
        self.web_channel_security.load(Ordering::Relaxed)
    }

    pub(super) fn down(&self) -> bool {
        self.unavailable.load(Ordering::Relaxed)
    }
}
