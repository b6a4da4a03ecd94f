//! The upstream body scrubber (`src/scrub.rs`) over arbitrary bodies, needles and chunkings.
//!
//! Input (`arbitrary`): up to six needles (what the gateway sent upstream: a secret, tokens,
//! a host), a body made of raw pieces and planted needles, and the points where the body is
//! cut into chunks as they would arrive from upstream.
//!
//! Invariants checked, against a naive search as the oracle (not memmem):
//! - streamed through `StreamScrub` in those chunks, and scrubbed whole with `Needles::scrub`,
//!   no needle is left in the output;
//! - the output has the body's length (a streamed body keeps its `Content-Length`);
//! - a body with no needle comes out byte for byte, streamed or whole (and whole without a
//!   copy);
//! - bytes that are not part of a match are kept in place.

#![no_main]

use std::borrow::Cow;

use arbitrary::Arbitrary;
use bytes::Bytes;
use directline_gateway::scrub::{MAX_NEEDLES, Needles, StreamScrub};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Piece {
    Raw(Vec<u8>),
    /// The needle at this index (modulo the count), planted whole.
    Needle(u8),
    /// A needle's first `len` bytes only: a prefix the stream must not hold forever.
    Prefix(u8, u8),
}

#[derive(Arbitrary, Debug)]
struct Input {
    needles: Vec<String>,
    pieces: Vec<Piece>,
    cuts: Vec<u16>,
}

fn naive_contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fuzz_target!(|input: Input| {
    let list: Vec<String> = input
        .needles
        .into_iter()
        .filter(|n| !n.is_empty() && n.len() <= 128)
        .take(MAX_NEEDLES)
        .collect();
    if list.is_empty() {
        return;
    }
    let mut body = Vec::new();
    for piece in input.pieces.iter().take(64) {
        match piece {
            Piece::Raw(bytes) => body.extend_from_slice(&bytes[..bytes.len().min(512)]),
            Piece::Needle(i) => {
                body.extend_from_slice(list[usize::from(*i) % list.len()].as_bytes())
            }
            Piece::Prefix(i, len) => {
                let needle = list[usize::from(*i) % list.len()].as_bytes();
                body.extend_from_slice(&needle[..usize::from(*len).min(needle.len())]);
            }
        }
    }
    let needles = list
        .iter()
        .fold(Needles::default(), |n, s| n.with(s.as_str()));
    let dirty = list.iter().any(|n| naive_contains(&body, n.as_bytes()));

    let mut cuts: Vec<usize> = input
        .cuts
        .iter()
        .map(|&c| usize::from(c) % (body.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut scrub = StreamScrub::new(needles.clone());
    let mut streamed = Vec::with_capacity(body.len());
    let mut start = 0;
    for cut in cuts.into_iter().chain([body.len()]) {
        streamed.extend_from_slice(&scrub.push(Bytes::copy_from_slice(&body[start..cut])));
        start = cut;
    }
    streamed.extend_from_slice(&scrub.finish());
    let whole = needles.scrub(&body);

    for out in [&streamed[..], &whole[..]] {
        assert_eq!(out.len(), body.len());
        for needle in &list {
            assert!(
                !naive_contains(out, needle.as_bytes()),
                "{needle:?} survived"
            );
        }
        // Whatever changed was filled with one byte no needle has.
        let changed: Vec<u8> = out
            .iter()
            .zip(&body)
            .filter(|(o, b)| o != b)
            .map(|(o, _)| *o)
            .collect();
        if let Some(&fill) = changed.first() {
            assert!(changed.iter().all(|&c| c == fill));
            assert!(list.iter().all(|n| !n.as_bytes().contains(&fill)));
        }
    }
    if !dirty {
        assert_eq!(streamed, body);
        assert!(matches!(whole, Cow::Borrowed(_)));
    }
});
