//! Fault knobs, changeable while the emulator runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Close each stream after N activity frames: odd drops abort TCP with no close frame,
    /// even drops send close code 1011.
    pub drop_after_frames: Option<u32>,
    /// The next K reconnect GETs answer 502 `ServiceError`.
    pub fail_reconnects: u32,
    /// Pack up to 3 pending activities per frame (watermark of the last).
    pub batch: bool,
    /// Reconnect streams replay the whole history whatever the watermark (the 2021 regression).
    pub replay_history: bool,
    /// Reconnect with the secret answers 400 `MissingProperty`; the conversation token works.
    pub enhanced_auth: bool,
    /// After N activity frames the stream goes silent: no frames, no close, no reads.
    pub stall_after_frames: Option<u32>,
    /// The echo bot sends a typing activity (stream only, no watermark) before each echo.
    pub typing: bool,
}

/// Shared, lock-free view of [`Faults`]; 0 means "off" for the counts.
#[derive(Clone, Debug, Default)]
pub struct FaultControl(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    drop_after_frames: AtomicU32,
    fail_reconnects: AtomicU32,
    batch: AtomicBool,
    replay_history: AtomicBool,
    enhanced_auth: AtomicBool,
    stall_after_frames: AtomicU32,
    typing: AtomicBool,
}

impl FaultControl {
    pub fn new(faults: &Faults) -> Self {
        let control = Self::default();
        control.set_drop_after_frames(faults.drop_after_frames);
        control.set_fail_reconnects(faults.fail_reconnects);
        control.set_batch(faults.batch);
        control.set_replay_history(faults.replay_history);
        control.set_enhanced_auth(faults.enhanced_auth);
        control.set_stall_after_frames(faults.stall_after_frames);
        control.set_typing(faults.typing);
        control
    }

    pub fn set_drop_after_frames(&self, n: Option<u32>) {
        self.0
            .drop_after_frames
            .store(n.unwrap_or(0), Ordering::Relaxed);
    }
    pub fn set_fail_reconnects(&self, k: u32) {
        self.0.fail_reconnects.store(k, Ordering::Relaxed);
    }
    pub fn set_batch(&self, on: bool) {
        self.0.batch.store(on, Ordering::Relaxed);
    }
    pub fn set_replay_history(&self, on: bool) {
        self.0.replay_history.store(on, Ordering::Relaxed);
    }
    pub fn set_enhanced_auth(&self, on: bool) {
        self.0.enhanced_auth.store(on, Ordering::Relaxed);
    }
    pub fn set_stall_after_frames(&self, n: Option<u32>) {
        self.0
            .stall_after_frames
            .store(n.unwrap_or(0), Ordering::Relaxed);
    }
    pub fn set_typing(&self, on: bool) {
        self.0.typing.store(on, Ordering::Relaxed);
    }

    pub fn drop_after_frames(&self) -> Option<u32> {
        Some(self.0.drop_after_frames.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }
    pub fn stall_after_frames(&self) -> Option<u32> {
        Some(self.0.stall_after_frames.load(Ordering::Relaxed)).filter(|&n| n > 0)
    }
    pub fn batch(&self) -> bool {
        self.0.batch.load(Ordering::Relaxed)
    }
    pub fn replay_history(&self) -> bool {
        self.0.replay_history.load(Ordering::Relaxed)
    }
    pub fn enhanced_auth(&self) -> bool {
        self.0.enhanced_auth.load(Ordering::Relaxed)
    }
    pub fn typing(&self) -> bool {
        self.0.typing.load(Ordering::Relaxed)
    }

    /// Takes one pending reconnect failure, if any is left.
    pub fn take_reconnect_failure(&self) -> bool {
        self.0
            .fail_reconnects
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |k| k.checked_sub(1))
            .is_ok()
    }
}
