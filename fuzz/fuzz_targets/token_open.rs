//! Opening sealed client tokens and stream tickets (`src/seal.rs`).
//!
//! Input: byte 0 picks the mode.
//! - Even: the rest (lossy UTF-8) is presented as a token/ticket to sealers that have never
//!   sealed anything in this process (a fixed key with a rotated-out previous key, and an
//!   ephemeral key), as both types and both purposes: every one must be refused, never a panic,
//!   with `Malformed` for anything over the length cap or without the `dlgw1.` prefix.
//!   Seeds are readable: `\x00dlgw1.AAAA…`.
//! - Odd: the rest drives `arbitrary` to build claims (either type, any strings, numbers and
//!   flags), which a third key seals. The sealed value must open to exactly those claims, must
//!   be refused under the other purpose (`Forged`), by a sealer without the key (`UnknownKey`),
//!   and after any single edit: a character replaced, inserted or deleted, a truncation, or a
//!   bit flipped in the decoded bytes (`UnknownKey` in the key id, `Forged` elsewhere).
//!
//! The sealing key is never given to the sealers of the first mode, so a valid token the fuzzer
//! might learn from comparisons in the second mode can never open there.

#![no_main]

use std::sync::LazyLock;

use arbitrary::{Arbitrary, Unstructured};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use directline_gateway::seal::{
    ClientToken, KeyError, MIN_KEY_LEN, OpenError, Purpose, Sealer, StreamTicket,
};
use libfuzzer_sys::fuzz_target;

const PREFIX: &str = "dlgw1.";
const MAX_SEALED_LEN: usize = 8 * 1024;
const KEY_ID_LEN: usize = 4;

const KEY_A: &str = "fuzz-key-A-0123456789abcdef0123456789";
const KEY_A_OLD: &str = "fuzz-key-A-old-0123456789abcdef012345";
const KEY_B: &str = "fuzz-key-B-fedcba9876543210fedcba9876";

/// Sealers that only ever open.
static OPENERS: LazyLock<[Sealer; 2]> = LazyLock::new(|| {
    [
        Sealer::new(KEY_A, &[KEY_A_OLD.to_owned()]).unwrap(),
        Sealer::ephemeral(),
    ]
});
/// The sealer of the tamper mode, and one that still opens its values after a rotation.
static SEALER_B: LazyLock<Sealer> = LazyLock::new(|| Sealer::new(KEY_B, &[]).unwrap());
static ROTATED_B: LazyLock<Sealer> =
    LazyLock::new(|| Sealer::new(KEY_A_OLD, &[KEY_B.to_owned()]).unwrap());

const PURPOSES: [Purpose; 3] = [
    Purpose::ClientToken,
    Purpose::StreamTicket,
    Purpose::PollWatermark,
];

fn other(purpose: Purpose) -> Purpose {
    match purpose {
        Purpose::ClientToken => Purpose::StreamTicket,
        Purpose::StreamTicket => Purpose::PollWatermark,
        Purpose::PollWatermark => Purpose::ClientToken,
    }
}

/// Every way `sealer` could open `text`; all must be refused. Returns the errors seen.
fn refused(sealer: &Sealer, text: &str) -> Vec<OpenError> {
    let mut errors = Vec::new();
    for purpose in PURPOSES {
        match sealer.open::<ClientToken>(purpose, text) {
            Ok(t) => panic!("{text:?} opened as a client token ({purpose:?}): {t:?}"),
            Err(e) => errors.push(e),
        }
        match sealer.open::<StreamTicket>(purpose, text) {
            Ok(t) => panic!("{text:?} opened as a stream ticket ({purpose:?}): {t:?}"),
            Err(e) => errors.push(e),
        }
    }
    errors
}

fn check_arbitrary_string(text: &str) {
    for sealer in OPENERS.iter() {
        let errors = refused(sealer, text);
        if text.len() > MAX_SEALED_LEN || !text.starts_with(PREFIX) {
            assert!(
                errors.iter().all(|e| *e == OpenError::Malformed),
                "{errors:?}"
            );
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Claims {
    Token {
        conversation_id: String,
        user_id: String,
        upstream_token: String,
        expires_at: u64,
    },
    Ticket {
        conversation_id: String,
        user_id: String,
        watermark: Option<String>,
        upstream_stream_url: Option<String>,
        upstream_token: String,
        issued_at_ms: u64,
        from_start: bool,
        expires_at: u64,
    },
}

#[derive(Debug, Arbitrary)]
enum Edit {
    Replace { at: u16, with: u8 },
    Insert { at: u16, byte: u8 },
    Delete { at: u16 },
    Truncate { to: u16 },
    FlipDecoded { at: u16, bit: u8 },
}

#[derive(Debug, Arbitrary)]
struct Tamper {
    /// Key material for one more sealer, built from the input.
    key: String,
    claims: Claims,
    ticket_purpose: bool,
    edits: Vec<Edit>,
}

/// The edited string, or `None` when the edit would not change it.
fn apply(sealed: &str, edit: &Edit) -> Option<(String, Option<OpenError>)> {
    let bytes = sealed.as_bytes();
    let at = |i: u16| usize::from(i) % bytes.len();
    let (text, expected) = match *edit {
        Edit::Replace { at: i, with } => {
            let i = at(i);
            let with = with & 0x7f;
            if bytes[i] == with {
                return None;
            }
            let mut b = bytes.to_vec();
            b[i] = with;
            (b, None)
        }
        Edit::Insert { at: i, byte } => {
            let mut b = bytes.to_vec();
            b.insert(usize::from(i) % (bytes.len() + 1), byte & 0x7f);
            (b, None)
        }
        Edit::Delete { at: i } => {
            let mut b = bytes.to_vec();
            b.remove(at(i));
            (b, None)
        }
        Edit::Truncate { to } => (bytes[..at(to)].to_vec(), None),
        Edit::FlipDecoded { at: i, bit } => {
            let mut raw = URL_SAFE_NO_PAD.decode(&sealed[PREFIX.len()..]).unwrap();
            let i = usize::from(i) % raw.len();
            raw[i] ^= 1 << (bit % 8);
            let expected = if i < KEY_ID_LEN {
                OpenError::UnknownKey
            } else {
                OpenError::Forged
            };
            let text = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
            (text.into_bytes(), Some(expected))
        }
    };
    let text = String::from_utf8(text).expect("edits keep ASCII");
    assert_ne!(text, sealed);
    Some((text, expected))
}

/// Whether `secret` shows in clear after the fixed prefix (short secrets could match by chance).
fn leaks(sealed: &str, secret: &str) -> bool {
    secret.len() >= 12 && sealed[PREFIX.len()..].contains(secret)
}

fn check_tamper(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    let tamper = Tamper::arbitrary(u)?;
    let purpose = if tamper.ticket_purpose {
        Purpose::StreamTicket
    } else {
        Purpose::ClientToken
    };
    let sealed = match &tamper.claims {
        Claims::Token {
            conversation_id,
            user_id,
            upstream_token,
            expires_at,
        } => {
            let claims = ClientToken {
                bot: "default".into(),
                conversation_id: conversation_id.clone(),
                user_id: user_id.clone(),
                upstream_token: upstream_token.clone(),
                expires_at: *expires_at,
                name: None,
            };
            let sealed = SEALER_B.seal(purpose, &claims);
            if sealed.len() > MAX_SEALED_LEN {
                // `seal` does not bound its output; `open` refuses it before decoding.
                assert_eq!(
                    SEALER_B.open::<ClientToken>(purpose, &sealed).err(),
                    Some(OpenError::Malformed)
                );
                return Ok(());
            }
            assert!(SEALER_B.open::<ClientToken>(purpose, &sealed) == Ok(claims.clone()));
            assert!(ROTATED_B.open::<ClientToken>(purpose, &sealed) == Ok(claims));
            // The secret inside never shows through the sealed text.
            assert!(!leaks(&sealed, upstream_token));
            sealed
        }
        Claims::Ticket {
            conversation_id,
            user_id,
            watermark,
            upstream_stream_url,
            upstream_token,
            issued_at_ms,
            from_start,
            expires_at,
        } => {
            let claims = StreamTicket {
                bot: "default".into(),
                conversation_id: conversation_id.clone(),
                user_id: user_id.clone(),
                watermark: watermark.clone(),
                upstream_stream_url: upstream_stream_url.clone(),
                upstream_token: upstream_token.clone(),
                issued_at_ms: *issued_at_ms,
                from_start: *from_start,
                expires_at: *expires_at,
                name: None,
            };
            let sealed = SEALER_B.seal(purpose, &claims);
            if sealed.len() > MAX_SEALED_LEN {
                assert_eq!(
                    SEALER_B.open::<StreamTicket>(purpose, &sealed).err(),
                    Some(OpenError::Malformed)
                );
                return Ok(());
            }
            assert!(SEALER_B.open::<StreamTicket>(purpose, &sealed) == Ok(claims.clone()));
            assert!(ROTATED_B.open::<StreamTicket>(purpose, &sealed) == Ok(claims));
            assert!(!leaks(&sealed, upstream_token));
            sealed
        }
    };
    assert!(sealed.starts_with(PREFIX) && sealed.len() <= MAX_SEALED_LEN);
    // Purpose binding: never accepted for the other use.
    assert_eq!(
        SEALER_B.open::<ClientToken>(other(purpose), &sealed).err(),
        Some(OpenError::Forged)
    );
    assert_eq!(
        SEALER_B.open::<StreamTicket>(other(purpose), &sealed).err(),
        Some(OpenError::Forged)
    );
    // Keys the gateway does not hold.
    for sealer in OPENERS.iter() {
        let errors = refused(sealer, &sealed);
        assert!(
            errors.iter().all(|e| *e == OpenError::UnknownKey),
            "{errors:?}"
        );
    }
    // Operator key material: refused below the minimum, otherwise a key of its own.
    match Sealer::new(&tamper.key, &[]) {
        Err(e) => {
            assert_eq!(e, KeyError::TooShort);
            assert!(tamper.key.chars().count() < MIN_KEY_LEN);
        }
        Ok(sealer) => {
            assert!(tamper.key.chars().count() >= MIN_KEY_LEN);
            if ![KEY_A, KEY_A_OLD, KEY_B].contains(&tamper.key.as_str()) {
                refused(&sealer, &sealed);
                let own = sealer.seal(purpose, &tamper.key);
                if own.len() <= MAX_SEALED_LEN {
                    assert_eq!(
                        sealer.open::<String>(purpose, &own).as_ref(),
                        Ok(&tamper.key)
                    );
                }
                assert!(!leaks(&own, &tamper.key));
                refused(&SEALER_B, &own);
            }
        }
    }
    // Any single edit is refused.
    for edit in tamper.edits.iter().take(16) {
        let Some((text, expected)) = apply(&sealed, edit) else {
            continue;
        };
        let errors = refused(&SEALER_B, &text);
        if let Some(expected) = expected
            && text.len() <= MAX_SEALED_LEN
        {
            assert!(
                errors.iter().all(|e| *e == expected),
                "{edit:?}: {errors:?}"
            );
        }
        refused(&ROTATED_B, &text);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check_arbitrary_string(&String::from_utf8_lossy(rest));
    } else {
        let _ = check_tamper(&mut Unstructured::new(rest));
    }
});
