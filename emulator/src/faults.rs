//! Fault knobs: the settings a test or benchmark starts with, and their run-time switches.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Misbehaviours of the real service, all off by default (ARCHITECTURE §7).
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Close each stream after this many activity frames. Counted per socket: frames that
    /// carry an activity no socket of the conversation has sent before, and typing frames;
    /// pure replays and keepalives do not count (so this still makes progress with
    /// `replay_history`). Per conversation, odd drops abort the TCP connection with no
    /// close frame, even drops send a close frame with code 1011 and reason
    /// `fault: drop`. 0 acts as 1.
    pub drop_after_frames: Option<u32>,
    /// The next K reconnect GETs (`GET /conversations/{id}`) answer
    /// `502 {"error":{"code":"ServiceError",…}}`.
    pub fail_reconnects: u32,
    /// Pack up to 3 pending activities per ActivitySet frame (watermark = the last one's).
    pub batch: bool,
    /// Streams minted by a reconnect replay the whole history whatever their watermark
    /// (the 2021 service regression, PROTOCOL §0.6).
    pub replay_history: bool,
    /// Reconnect with the secret answers `400 MissingProperty "Missing user ID"`; a token works.
    pub enhanced_auth: bool,
    /// After this many activity frames (counted as for `drop_after_frames`) the stream goes
    /// silent: no frames, no close, no reads (so no pongs). It stops holding the
    /// conversation's one stream slot at once, and its TCP connection is dropped when the
    /// next socket of the conversation connects. 0 acts as 1.
    pub stall_after_frames: Option<u32>,
    /// The echo bot sends a typing activity (stream only, no watermark, never stored)
    /// before each echo.
    pub typing: bool,
    /// The next K stream upgrades answer 403, as a stale stream URL does (PROTOCOL §0.2).
    pub refuse_streams: u32,
    /// Pause between the interims of a streamed answer (`stream N`); zero sends them as
    /// fast as the runtime schedules the bot's task (the rate knob of tests and benchmarks).
    pub stream_interval: Duration,
}

/// Live fault settings shared by every task of one emulator; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct FaultControl(Arc<FaultCells>);

/// `Option<u32>` is kept as `n + 1` in a `u64`, with 0 meaning `None`.
#[derive(Debug, Default)]
struct FaultCells {
    drop_after_frames: AtomicU64,
    fail_reconnects: AtomicU32,
    batch: AtomicBool,
    replay_history: AtomicBool,
    enhanced_auth: AtomicBool,
    stall_after_frames: AtomicU64,
    typing: AtomicBool,
    refuse_streams: AtomicU32,
    /// Microseconds.
    stream_interval: AtomicU64,
}

/// What a stream does after sending an activity frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AfterFrame {
    Continue,
    Drop,
    Stall,
}

fn encode(value: Option<u32>) -> u64 {
    value.map_or(0, |n| u64::from(n) + 1)
}

fn decode(value: u64) -> Option<u32> {
    value.checked_sub(1).and_then(|n| u32::try_from(n).ok())
}

impl FaultControl {
    pub(super) fn new(faults: &Faults) -> Self {
        let control = Self::default();
        control.set(faults);
        control
    }

    /// Replaces every setting at once.
    pub fn set(&self, faults: &Faults) {
        self.set_drop_after_frames(faults.drop_after_frames);
        self.set_fail_reconnects(faults.fail_reconnects);
        self.set_batch(faults.batch);
        self.set_replay_history(faults.replay_history);
        self.set_enhanced_auth(faults.enhanced_auth);
        self.set_stall_after_frames(faults.stall_after_frames);
        self.set_typing(faults.typing);
        self.set_refuse_streams(faults.refuse_streams);
        self.set_stream_interval(faults.stream_interval);
    }

    /// The current settings (`fail_reconnects` = how many failures are still to come).
    pub fn snapshot(&self) -> Faults {
        let cells = &self.0;
        Faults {
            drop_after_frames: decode(cells.drop_after_frames.load(Ordering::Relaxed)),
            fail_reconnects: cells.fail_reconnects.load(Ordering::Relaxed),
            batch: self.batch(),
            replay_history: self.replay_history(),
            enhanced_auth: self.enhanced_auth(),
            stall_after_frames: decode(cells.stall_after_frames.load(Ordering::Relaxed)),
            typing: self.typing(),
            refuse_streams: cells.refuse_streams.load(Ordering::Relaxed),
            stream_interval: self.stream_interval(),
        }
    }

    pub fn set_drop_after_frames(&self, frames: Option<u32>) {
        self.0
            .drop_after_frames
            .store(encode(frames), Ordering::Relaxed);
    }

    pub fn set_fail_reconnects(&self, count: u32) {
        self.0.fail_reconnects.store(count, Ordering::Relaxed);
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

    pub fn set_stall_after_frames(&self, frames: Option<u32>) {
        self.0
            .stall_after_frames
            .store(encode(frames), Ordering::Relaxed);
    }

    pub fn set_refuse_streams(&self, count: u32) {
        self.0.refuse_streams.store(count, Ordering::Relaxed);
    }

    /// Consumes one pending stream refusal; true when this upgrade must get a 403.
    pub(super) fn take_stream_refusal(&self) -> bool {
        self.0
            .refuse_streams
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    pub fn set_stream_interval(&self, interval: Duration) {
        let micros = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        self.0.stream_interval.store(micros, Ordering::Relaxed);
    }

    pub(super) fn stream_interval(&self) -> Duration {
        Duration::from_micros(self.0.stream_interval.load(Ordering::Relaxed))
    }

    pub fn set_typing(&self, on: bool) {
        self.0.typing.store(on, Ordering::Relaxed);
    }

    pub(super) fn batch(&self) -> bool {
        self.0.batch.load(Ordering::Relaxed)
    }

    pub(super) fn replay_history(&self) -> bool {
        self.0.replay_history.load(Ordering::Relaxed)
    }

    pub(super) fn enhanced_auth(&self) -> bool {
        self.0.enhanced_auth.load(Ordering::Relaxed)
    }

    pub(super) fn typing(&self) -> bool {
        self.0.typing.load(Ordering::Relaxed)
    }

    /// Consumes one pending reconnect failure; true when this reconnect must fail.
    pub(super) fn take_reconnect_failure(&self) -> bool {
        self.0
            .fail_reconnects
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Decides the fate of a stream that has now sent `frames` activity frames.
    /// Drop wins over stall when both thresholds are reached by the same frame.
    pub(super) fn after_frame(&self, frames: u32) -> AfterFrame {
        let reached = |cell: &AtomicU64| {
            decode(cell.load(Ordering::Relaxed)).is_some_and(|limit| frames >= limit.max(1))
        };
        if reached(&self.0.drop_after_frames) {
            AfterFrame::Drop
        } else if reached(&self.0.stall_after_frames) {
            AfterFrame::Stall
        } else {
            AfterFrame::Continue
        }
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn snapshot_round_trips() {
        let faults = Faults {
            drop_after_frames: Some(0),
            fail_reconnects: 2,
            batch: true,
            replay_history: true,
            enhanced_auth: false,
            stall_after_frames: Some(u32::MAX),
            typing: true,
            refuse_streams: 3,
            stream_interval: Duration::from_millis(7),
        };
        let snapshot = FaultControl::new(&faults).snapshot();
        assert_eq!(snapshot.refuse_streams, 3);
        assert_eq!(snapshot.stream_interval, Duration::from_millis(7));
        assert_eq!(snapshot.drop_after_frames, Some(0));
        assert_eq!(snapshot.fail_reconnects, 2);
        assert!(snapshot.batch && snapshot.replay_history && snapshot.typing);
        assert!(!snapshot.enhanced_auth);
        assert_eq!(snapshot.stall_after_frames, Some(u32::MAX));
    }

    #[test]
    fn reconnect_failures_count_down_to_zero() {
        let control = FaultControl::default();
        control.set_fail_reconnects(2);
        assert!(control.take_reconnect_failure());
        assert!(control.take_reconnect_failure());
        assert!(!control.take_reconnect_failure());
        assert_eq!(control.snapshot().fail_reconnects, 0);
    }

    #[test]
    fn frame_thresholds() {
        let control = FaultControl::default();
        assert_eq!(control.after_frame(100), AfterFrame::Continue);
        control.set_stall_after_frames(Some(2));
        assert_eq!(control.after_frame(1), AfterFrame::Continue);
        assert_eq!(control.after_frame(2), AfterFrame::Stall);
        control.set_drop_after_frames(Some(2));
        assert_eq!(control.after_frame(2), AfterFrame::Drop);
        control.set_drop_after_frames(Some(0));
        assert_eq!(control.after_frame(1), AfterFrame::Drop);
    }
}
