//! Sealed client tokens and stream tickets: authenticated encryption any replica can open.
//!
//! Format: `dlgw1.` + base64url(key id ‖ nonce ‖ ciphertext ‖ tag). The AEAD is
//! ChaCha20-Poly1305 from `ring`; keys come from the operator's key string through
//! HKDF-SHA256, so any string of at least 32 characters works and no key is ever stored.
//! The purpose (token or ticket) is bound as associated data, so a stream ticket can
//! never be presented as a client token or the other way round.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use std::fmt;

use crate::clock;

const PREFIX: &str = "dlgw1.";
const KEY_ID_LEN: usize = 4;
const TAG_LEN: usize = 16;
/// Shorter operator keys are refused at start (ARCHITECTURE §6).
pub const MIN_KEY_LEN: usize = 32;
/// The bot a token was sealed for when the token predates multi-bot support, and so the
/// name of the one bot a single-bot configuration describes.
pub const DEFAULT_BOT: &str = "default";
/// Sealed strings longer than this are refused before any decoding work.
const MAX_SEALED_LEN: usize = 8 * 1024;

/// What a sealed string is for; bound into the AEAD so the two cannot be swapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    ClientToken,
    StreamTicket,
    /// The gateway's own watermark for held polls (`stream::poll`).
    PollWatermark,
}

impl Purpose {
    fn tag(self) -> u8 {
        match self {
            Purpose::ClientToken => b'T',
            Purpose::StreamTicket => b'S',
            Purpose::PollWatermark => b'W',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("token key must be at least {MIN_KEY_LEN} characters")]
    TooShort,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("not a gateway-sealed value")]
    Malformed,
    #[error("sealed with a key this gateway does not hold")]
    UnknownKey,
    #[error("authentication failed")]
    Forged,
}

struct SealingKey {
    id: [u8; KEY_ID_LEN],
    aead: LessSafeKey,
    /// Unix seconds after which this key opens nothing (a key retired by a reload).
    accept_until: Option<u64>,
}

/// Seals and opens claims. The first key seals; every key opens (rotation).
pub struct Sealer {
    keys: Vec<SealingKey>,
    rng: SystemRandom,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

/// The one statement of the key-length rule: the sealer applies it, and the configuration
/// applies it at load so a short key is refused by the name of the setting that holds it.
pub fn check_key(material: &str) -> Result<(), KeyError> {
    if material.chars().count() < MIN_KEY_LEN {
        return Err(KeyError::TooShort);
    }
    Ok(())
}

impl Sealer {
    /// `current` seals new values; `previous` keys still open values sealed before a rotation.
    pub fn new(current: &str, previous: &[String]) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(1 + previous.len());
        for material in std::iter::once(current).chain(previous.iter().map(String::as_str)) {
            check_key(material)?;
            keys.push(derive_key(material.as_bytes()));
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// A key that lives only as long as this process: tokens then work on this replica only.
    pub fn ephemeral() -> Self {
        let rng = SystemRandom::new();
        let mut material = [0u8; 32];
        // SystemRandom only fails when the OS has no entropy source, where nothing secure can run.
        rng.fill(&mut material)
            .expect("OS random source unavailable");
        Self {
            keys: vec![derive_key(&material)],
            rng,
        }
    }

    /// Keeps opening values sealed with `material` until `until_unix` (seconds): the key a
    /// reload replaced stays accepted for the configured overlap, then stops by itself.
    pub fn with_retired(mut self, material: &str, until_unix: u64) -> Self {
        let mut key = derive_key(material.as_bytes());
        if self.keys.iter().all(|k| k.id != key.id) {
            key.accept_until = Some(until_unix);
            self.keys.push(key);
        }
        self
    }

    pub fn seal<T: Serialize>(&self, purpose: Purpose, claims: &T) -> String {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .expect("OS random source unavailable");
        // Claims are plain structs of strings and integers: serialising cannot fail.
        let plaintext = serde_json::to_vec(claims).expect("claims serialise");
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut in_out = plaintext;
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                aad(purpose, &key.id),
                &mut in_out,
            )
            .expect("ChaCha20-Poly1305 seals any length we produce");
        out.extend_from_slice(&in_out);
        let mut sealed = String::with_capacity(PREFIX.len() + out.len() * 4 / 3 + 4);
        sealed.push_str(PREFIX);
        URL_SAFE_NO_PAD.encode_string(&out, &mut sealed);
        sealed
    }

    /// [`Sealer::seal`] for claims that carry what upstream sent (its token, its stream URL):
    /// `None` when the result is longer than [`Sealer::open`] accepts, so that a hostile or
    /// broken upstream makes the call fail now rather than hand the client a token or a
    /// stream URL that every later use refuses.
    pub fn seal_openable<T: Serialize>(&self, purpose: Purpose, claims: &T) -> Option<String> {
        let sealed = self.seal(purpose, claims);
        (sealed.len() <= MAX_SEALED_LEN).then_some(sealed)
    }

    pub fn open<T: DeserializeOwned>(
        &self,
        purpose: Purpose,
        sealed: &str,
    ) -> Result<T, OpenError> {
        self.open_until(purpose, sealed).map(|(opened, _)| opened)
    }

    /// [`Sealer::open`], and the Unix second the key that opened it stops opening anything
    /// (`None`: the current key, or a previous one given without a deadline), so that a
    /// caller keeping the result knows how long this sealer would still open it.
    pub fn open_until<T: DeserializeOwned>(
        &self,
        purpose: Purpose,
        sealed: &str,
    ) -> Result<(T, Option<u64>), OpenError> {
        if sealed.len() > MAX_SEALED_LEN {
            return Err(OpenError::Malformed);
        }
        let encoded = sealed.strip_prefix(PREFIX).ok_or(OpenError::Malformed)?;
        let raw = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| OpenError::Malformed)?;
        if raw.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return Err(OpenError::Malformed);
        }
        let (key_id, rest) = raw.split_at(KEY_ID_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let key = self
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .filter(|k| {
                k.accept_until
                    .is_none_or(|until| clock::unix_seconds() < until)
            })
            .ok_or(OpenError::UnknownKey)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError::Malformed)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = key
            .aead
            .open_in_place(nonce, aad(purpose, &key.id), &mut in_out)
            .map_err(|_| OpenError::Forged)?;
        let opened = serde_json::from_slice(plaintext).map_err(|_| OpenError::Malformed)?;
        Ok((opened, key.accept_until))
    }
}

fn aad(purpose: Purpose, key_id: &[u8; KEY_ID_LEN]) -> Aad<[u8; 1 + KEY_ID_LEN]> {
    let mut bytes = [0u8; 1 + KEY_ID_LEN];
    bytes[0] = purpose.tag();
    bytes[1..].copy_from_slice(key_id);
    Aad::from(bytes)
}

fn derive_key(material: &[u8]) -> SealingKey {
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"directline-gateway/seal/v1").extract(material);
    let okm = prk
        .expand(&[b"chacha20-poly1305"], &CHACHA20_POLY1305)
        .expect("HKDF output length fits the AEAD key");
    let aead = LessSafeKey::new(UnboundKey::from(okm));
    let mut id_bytes = [0u8; 32];
    prk.expand(&[b"key-id"], hkdf::HKDF_SHA256)
        .and_then(|okm| okm.fill(&mut id_bytes))
        .expect("HKDF output length fits 32 bytes");
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&id_bytes[..KEY_ID_LEN]);
    SealingKey {
        id,
        aead,
        accept_until: None,
    }
}

fn default_bot() -> String {
    DEFAULT_BOT.to_owned()
}

/// What a gateway client token holds (ARCHITECTURE §2). Short field names keep tokens small.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientToken {
    /// The bot this token is for; tokens sealed before bots had names are the default bot's.
    #[serde(rename = "n", default = "default_bot")]
    pub bot: String,
    #[serde(rename = "c")]
    pub conversation_id: String,
    #[serde(rename = "u")]
    pub user_id: String,
    /// The upstream conversation token: never shown, never logged.
    #[serde(rename = "t")]
    pub upstream_token: String,
    /// Unix seconds; also the upstream token's own expiry.
    #[serde(rename = "x")]
    pub expires_at: u64,
    /// Signed-in mode: the name the identity provider vouched for at sign-in (`name_claim`),
    /// the only `from.name` the user's activities carry. Unused otherwise.
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl fmt::Debug for ClientToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientToken")
            .field("conversation_id", &self.conversation_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What a gateway stream ticket holds (ARCHITECTURE §4): the right to open one conversation's
/// stream for 60 s, and where the hub's first upstream connection should go.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamTicket {
    #[serde(rename = "n", default = "default_bot")]
    pub bot: String,
    #[serde(rename = "c")]
    pub conversation_id: String,
    #[serde(rename = "u")]
    pub user_id: String,
    /// The watermark the client asked to resume from; `None` means "from when this ticket was minted".
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// The upstream stream URL from the start or reconnect response that minted this ticket.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub upstream_stream_url: Option<String>,
    /// Upstream conversation token, for reconnects under enhanced authentication.
    /// The signed-in user's verified name, as in [`ClientToken::name`].
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "t")]
    pub upstream_token: String,
    /// Unix milliseconds when the ticket was minted.
    #[serde(rename = "i")]
    pub issued_at_ms: u64,
    /// Minted by start-conversation: everything in the conversation is new to this client,
    /// so a hub that cannot use the sealed URL backfills the whole history by REST.
    #[serde(rename = "b", default, skip_serializing_if = "std::ops::Not::not")]
    pub from_start: bool,
    /// Unix seconds.
    #[serde(rename = "x")]
    pub expires_at: u64,
}

impl fmt::Debug for StreamTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamTicket")
            .field("conversation_id", &self.conversation_id)
            .field("watermark", &self.watermark)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";
    const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210";

    fn token() -> ClientToken {
        ClientToken {
            bot: "support".into(),
            conversation_id: "conv-us".into(),
            user_id: "dl_user".into(),
            upstream_token: "upstream-secret-token".into(),
            expires_at: 1_900_000_000,
            name: None,
        }
    }

    /// Tokens sealed before bots had names stay valid across the upgrade, for the default bot.
    #[test]
    fn a_token_without_a_bot_is_the_default_bots() {
        #[derive(Serialize)]
        struct Earlier<'a> {
            c: &'a str,
            u: &'a str,
            t: &'a str,
            x: u64,
        }
        let sealer = Sealer::new(KEY, &[]).unwrap();
        let sealed = sealer.seal(
            Purpose::ClientToken,
            &Earlier {
                c: "conv-us",
                u: "dl_user",
                t: "upstream",
                x: 1_900_000_000,
            },
        );
        let opened: ClientToken = sealer.open(Purpose::ClientToken, &sealed).unwrap();
        assert_eq!(opened.bot, DEFAULT_BOT);
        assert_eq!(opened.conversation_id, "conv-us");
    }

    #[test]
    fn round_trip_and_no_clear_text() {
        let sealer = Sealer::new(KEY, &[]).unwrap();
        let sealed = sealer.seal(Purpose::ClientToken, &token());
        assert!(sealed.starts_with(PREFIX));
        assert!(!sealed.contains("upstream-secret-token"));
        let decoded = URL_SAFE_NO_PAD.decode(&sealed[PREFIX.len()..]).unwrap();
        assert!(!String::from_utf8_lossy(&decoded).contains("upstream"));
        let opened: ClientToken = sealer.open(Purpose::ClientToken, &sealed).unwrap();
        assert_eq!(opened, token());
    }

    #[test]
    fn what_open_would_refuse_is_not_sealed_for_a_client() {
        let sealer = Sealer::new(KEY, &[]).unwrap();
        let mut claims = token();
        claims.upstream_token = "u".repeat(5_000);
        let sealed = sealer.seal_openable(Purpose::ClientToken, &claims).unwrap();
        let opened: ClientToken = sealer.open(Purpose::ClientToken, &sealed).unwrap();
        assert_eq!(opened, claims);
        claims.upstream_token = "u".repeat(7_000);
        assert!(sealer.seal(Purpose::ClientToken, &claims).len() > MAX_SEALED_LEN);
        assert!(
            sealer
                .seal_openable(Purpose::ClientToken, &claims)
                .is_none()
        );
    }

    #[test]
    fn purposes_cannot_be_swapped() {
        let sealer = Sealer::new(KEY, &[]).unwrap();
        let sealed = sealer.seal(Purpose::ClientToken, &token());
        let err = sealer
            .open::<ClientToken>(Purpose::StreamTicket, &sealed)
            .unwrap_err();
        assert_eq!(err, OpenError::Forged);
    }

    #[test]
    fn rotation_opens_old_and_refuses_unknown() {
        let old = Sealer::new(OTHER_KEY, &[]).unwrap();
        let sealed_old = old.seal(Purpose::ClientToken, &token());
        let rotated = Sealer::new(KEY, &[OTHER_KEY.to_string()]).unwrap();
        assert_eq!(
            rotated
                .open::<ClientToken>(Purpose::ClientToken, &sealed_old)
                .unwrap(),
            token()
        );
        let fresh = Sealer::new(KEY, &[]).unwrap();
        assert_eq!(
            fresh
                .open::<ClientToken>(Purpose::ClientToken, &sealed_old)
                .unwrap_err(),
            OpenError::UnknownKey
        );
    }

    #[test]
    fn a_retired_key_opens_until_its_deadline_only() {
        let old = Sealer::new(OTHER_KEY, &[]).unwrap();
        let sealed_old = old.seal(Purpose::ClientToken, &token());
        let now = clock::unix_seconds();
        let within = Sealer::new(KEY, &[])
            .unwrap()
            .with_retired(OTHER_KEY, now + 60);
        assert_eq!(
            within
                .open::<ClientToken>(Purpose::ClientToken, &sealed_old)
                .unwrap(),
            token()
        );
        let past = Sealer::new(KEY, &[]).unwrap().with_retired(OTHER_KEY, now);
        assert_eq!(
            past.open::<ClientToken>(Purpose::ClientToken, &sealed_old)
                .unwrap_err(),
            OpenError::UnknownKey
        );
        // Retiring the current key changes nothing: it keeps sealing and opening.
        let same = Sealer::new(KEY, &[]).unwrap().with_retired(KEY, now);
        let sealed = same.seal(Purpose::ClientToken, &token());
        assert!(
            same.open::<ClientToken>(Purpose::ClientToken, &sealed)
                .is_ok()
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert_eq!(Sealer::new("short", &[]).unwrap_err(), KeyError::TooShort);
        assert_eq!(
            Sealer::new(KEY, &["short".into()]).unwrap_err(),
            KeyError::TooShort
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let sealer = Sealer::new(KEY, &[]).unwrap();
        for input in [
            "",
            "dlgw1.",
            "dlgw1.!!!",
            "dlgw1.AAAA",
            "Bearer x",
            &"a".repeat(10_000),
        ] {
            assert!(
                sealer
                    .open::<ClientToken>(Purpose::ClientToken, input)
                    .is_err(),
                "{input}"
            );
        }
    }

    #[test]
    fn debug_hides_upstream_token() {
        assert!(!format!("{:?}", token()).contains("upstream-secret-token"));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any change to any byte of a sealed token is refused (never accepted as another token).
            #[test]
            fn any_tampering_is_refused(index in 0usize..400, bit in 0u8..8) {
                let sealer = Sealer::new(KEY, &[]).unwrap();
                let sealed = sealer.seal(Purpose::ClientToken, &token());
                let mut raw = URL_SAFE_NO_PAD.decode(&sealed[PREFIX.len()..]).unwrap();
                let index = index % raw.len();
                raw[index] ^= 1 << bit;
                let tampered = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(&raw));
                prop_assert!(sealer.open::<ClientToken>(Purpose::ClientToken, &tampered).is_err());
            }
        }
    }
}
