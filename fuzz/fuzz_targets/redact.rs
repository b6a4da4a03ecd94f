//! The activity policy's redactions (`src/policy/redact.rs`) over arbitrary text.
//!
//! Input: text (any UTF-8) and which redactions are on.
//!
//! Invariants checked:
//! - no panic, and the output is valid UTF-8 (every cut is on a character boundary);
//! - nothing to redact (all off) changes nothing and allocates nothing (`None`);
//! - `None` exactly when no marker was written (counts are zero);
//! - a text that is one Luhn-valid run of 13 to 19 digits becomes the card marker with
//!   cards on, and text without any digit or `@` is never changed;
//! - redaction is stable: redacting the output again finds nothing more.

#![no_main]

use arbitrary::Arbitrary;
use directline_gateway::config::Redactions;
use directline_gateway::policy::redact::{luhn, redact_text};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    email: bool,
    phone: bool,
    credit_card: bool,
}

fuzz_target!(|input: Input| {
    let which = Redactions {
        email: input.email,
        phone: input.phone,
        credit_card: input.credit_card,
    };
    let text = &input.text;
    assert!(redact_text(text, Redactions::default()).is_none());
    let result = redact_text(text, which);
    match &result {
        None => {}
        Some((out, counts)) => {
            assert!(counts.total() > 0, "changed without a count");
            assert_ne!(out, text);
        }
    }
    if !text.bytes().any(|b| b.is_ascii_digit() || b == b'@') {
        assert!(result.is_none());
    }
    let out = result.as_ref().map_or(text.as_str(), |(o, _)| o.as_str());
    // Stable: the markers themselves are never redacted again.
    assert!(redact_text(out, which).is_none(), "not stable: {out:?}");
    let plain_card = (13..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit());
    if which.credit_card && plain_card && luhn(text) {
        assert_eq!(out, "[credit card]");
    }
});
