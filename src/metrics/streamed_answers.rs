//! The metrics of livestreamed answers (ARCHITECTURE §14), unlabelled so every series
//! exists from the start.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter};

pub struct StreamedAnswers {
    /// Interims written to client sockets (one per client that got it).
    pub interims_relayed: IntCounter,
    /// Interims a client never got because a newer one of its stream, or its final, came
    /// first (the client was behind, or `stream.chunk_interval` held it back), or because
    /// they came after their final or out of order.
    pub interims_coalesced: IntCounter,
    pub streams_finalized: IntCounter,
    pub streams_abandoned: IntCounter,
    pub first_interim: Histogram,
}

impl StreamedAnswers {
    pub fn new() -> Self {
        let counter = |name: &str, help: &str| IntCounter::new(name, help).expect("valid metric");
        Self {
            interims_relayed: counter(
                "stream_interims_relayed_total",
                "Interim activities of livestreamed answers written to client sockets.",
            ),
            interims_coalesced: counter(
                "stream_interims_coalesced_total",
                "Interim activities a client did not get because a newer one or the final replaced it, or that came after their final or out of order.",
            ),
            streams_finalized: counter(
                "streams_finalized_total",
                "Livestreamed answers whose final activity arrived from upstream.",
            ),
            streams_abandoned: counter(
                "streams_abandoned_total",
                "Livestreamed answers forgotten without a final: silent for 120 s, or pushed out by newer streams of the conversation.",
            ),
            first_interim: Histogram::with_opts(
                HistogramOpts::new(
                    "stream_first_interim_seconds",
                    "From the frame before a livestreamed answer (usually the user's message) to its first interim.",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0,
                ]),
            )
            .expect("valid metric"),
        }
    }

    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.interims_relayed.clone()),
            Box::new(self.interims_coalesced.clone()),
            Box::new(self.streams_finalized.clone()),
            Box::new(self.streams_abandoned.clone()),
            Box::new(self.first_interim.clone()),
        ]
    }

    /// What one upstream frame did to the hub's streams.
    pub fn observe(&self, published: &Published) {
        if published.dropped {
            self.interims_coalesced.inc();
        }
        if let Some(after) = published.first_interim_after {
            self.first_interim.observe(after.as_secs_f64());
        }
        if published.finalized {
            self.streams_finalized.inc();
        }
        if published.abandoned > 0 {
            self.streams_abandoned.inc_by(published.abandoned as u64);
        }
    }
}

impl Default for StreamedAnswers {
    fn default() -> Self {
        Self::new()
    }
}

/// What publishing a frame did, for the relay's metrics.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// An interim after its final or out of order: not published.
    pub dropped: bool,
    /// A stream's first interim, this long after the frame before it.
    pub first_interim_after: Option<Duration>,
    pub finalized: bool,
    pub abandoned: usize,
}
