//! The upload scanner (`src/upload_activity.rs`) over arbitrary multipart bodies.
//!
//! Input: a boundary, a body and the sizes of the chunks it arrives in.
//!
//! Invariants checked:
//! - no panic; a found activity lies inside the body, after its headers;
//! - what `first_part` says of a complete part does not change with more bytes after it;
//! - the watcher's verdict on the rest of the body does not depend on how it is chunked
//!   (a delimiter or header block split across chunks is seen all the same);
//! - replacing the activity keeps every byte around it.

#![no_main]

use arbitrary::Arbitrary;
use directline_gateway::upload_activity::{First, Watcher, first_part, replace_activity};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    boundary: String,
    body: Vec<u8>,
    chunks: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let boundary = input.boundary.as_bytes();
    if boundary.is_empty() || boundary.len() > 70 {
        return;
    }
    let body = &input.body;
    let rest = match first_part(body, boundary) {
        First::Activity { body: range } => {
            assert!(range.start <= range.end && range.end <= body.len());
            let mut longer = body.clone();
            longer.extend_from_slice(b"\r\n--more");
            assert_eq!(
                first_part(&longer, boundary),
                First::Activity { body: range.clone() }
            );
            let replaced = replace_activity(body, range.clone(), b"{}");
            assert_eq!(&replaced[..range.start], &body[..range.start]);
            assert_eq!(&replaced[range.start + 2..], &body[range.end..]);
            range.end
        }
        First::File { resume } => {
            assert!(resume <= body.len());
            resume
        }
        First::NeedMore { .. } | First::Malformed => 0,
    };
    let whole = Watcher::new(boundary).observe(&body[rest..]).is_ok();
    let mut watcher = Watcher::new(boundary);
    let mut at = rest;
    let mut sizes = input.chunks.iter().map(|&n| usize::from(n).max(1)).cycle();
    let mut chunked = true;
    while at < body.len() {
        let end = (at + sizes.next().unwrap_or(1)).min(body.len());
        if watcher.observe(&body[at..end]).is_err() {
            chunked = false;
            break;
        }
        at = end;
    }
    assert_eq!(whole, chunked);
});
