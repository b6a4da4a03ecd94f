//! Authorising a caller: open the client token, check expiry and conversation ownership.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, header};

use crate::clock;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::seal::{ClientToken, OpenError, Purpose, Sealer, StreamTicket};

/// The bearer credential of a request, if it has exactly one well-formed one. Two
/// `Authorization` headers are refused rather than guessed between: a proxy in front may
/// have checked the other one.
pub fn bearer(headers: &HeaderMap) -> Result<&str, GatewayError> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let first = all.next().ok_or(GatewayError::MissingCredential)?;
    if all.next().is_some() {
        return Err(GatewayError::InvalidToken);
    }
    let value = first.to_str().map_err(|_| GatewayError::InvalidToken)?;
    let (scheme, credential) = value
        .split_once(' ')
        .ok_or(GatewayError::MissingCredential)?;
    if !scheme.eq_ignore_ascii_case("bearer") || credential.trim().is_empty() {
        return Err(GatewayError::MissingCredential);
    }
    Ok(credential.trim())
}

/// The client token a connection presented last, as it opened. A client sends the same
/// token on request after request of one keep-alive connection, and opening it (base64,
/// AEAD, the claims' JSON) is a tenth of a POST's work; a byte-equal token under the same
/// key set opens to the same claims, so the claims are kept instead of opened again.
/// Expiry, bot and conversation are still checked on every request. Only this connection's
/// own earlier token can match, so nothing is shared between callers.
#[derive(Default)]
pub struct OpenedTokens {
    last: Mutex<Option<Opened>>,
}

struct Opened {
    credential: Box<str>,
    /// The key set that opened it: a reload that changes the keys (a new `Live` and a new
    /// sealer) opens every token again. Held, not compared by address, so no later sealer
    /// can take the old one's address.
    sealer: Arc<Sealer>,
    /// When the key that opened it is retired (a key replaced by a reload opens tokens for
    /// `token_key_overlap` only).
    key_until: Option<u64>,
    token: ClientToken,
}

impl OpenedTokens {
    fn open(
        &self,
        sealer: &Arc<Sealer>,
        credential: &str,
        now: u64,
    ) -> Result<ClientToken, GatewayError> {
        if let Ok(last) = self.last.lock()
            && let Some(opened) = last.as_ref()
            && Arc::ptr_eq(&opened.sealer, sealer)
            && opened.key_until.is_none_or(|until| now < until)
            && *opened.credential == *credential
        {
            return Ok(opened.token.clone());
        }
        let (token, key_until): (ClientToken, _) = sealer
            .open_until(Purpose::ClientToken, credential)
            .map_err(open_error)?;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(Opened {
                credential: credential.into(),
                sealer: sealer.clone(),
                key_until,
                token: token.clone(),
            });
        }
        Ok(token)
    }
}

/// Opens the caller's gateway token (or takes it from the connection's last one) and checks
/// that it was sealed for `bot` and, for conversation-scoped routes, for `conversation`.
/// Everything that fails here is answered before any upstream call.
pub fn authorize(
    sealer: &Arc<Sealer>,
    opened: &OpenedTokens,
    bot: &str,
    headers: &HeaderMap,
    conversation: Option<&ConversationId>,
) -> Result<ClientToken, GatewayError> {
    let credential = bearer(headers)?;
    let now = clock::unix_seconds();
    let token = opened.open(sealer, credential, now)?;
    if token.expires_at <= now {
        return Err(GatewayError::TokenExpired);
    }
    // All bots share the token key, so the bot is a claim like the conversation: another
    // bot's conversation ids may even be equal to this one's.
    if token.bot != bot {
        return Err(GatewayError::WrongBot);
    }
    if let Some(conversation) = conversation
        && token.conversation_id != conversation.as_str()
    {
        return Err(GatewayError::WrongConversation);
    }
    Ok(token)
}

/// Opens the token of a `tokens/refresh` call: like [`authorize`], except that a token
/// that expired less than `resume_window` ago is accepted too (durable resume, ARCHITECTURE §12).
/// Returns whether it had expired: its upstream token has then expired with it.
pub fn authorize_refresh(
    sealer: &Sealer,
    bot: &str,
    headers: &HeaderMap,
    resume_window: std::time::Duration,
) -> Result<(ClientToken, bool), GatewayError> {
    let credential = bearer(headers)?;
    let token: ClientToken = sealer
        .open(Purpose::ClientToken, credential)
        .map_err(open_error)?;
    let now = clock::unix_seconds();
    let expired = token.expires_at <= now;
    if expired && token.expires_at.saturating_add(resume_window.as_secs()) <= now {
        return Err(GatewayError::TokenExpired);
    }
    if token.bot != bot {
        return Err(GatewayError::WrongBot);
    }
    Ok((token, expired))
}

/// Opens a stream ticket from the `t` query parameter for `bot`'s `conversation`.
pub fn open_ticket(
    sealer: &Sealer,
    bot: &str,
    ticket: &str,
    conversation: &ConversationId,
) -> Result<StreamTicket, GatewayError> {
    let ticket: StreamTicket = sealer
        .open(Purpose::StreamTicket, ticket)
        .map_err(|_| GatewayError::InvalidTicket)?;
    if ticket.expires_at <= clock::unix_seconds()
        || ticket.conversation_id != conversation.as_str()
        || ticket.bot != bot
    {
        return Err(GatewayError::InvalidTicket);
    }
    Ok(ticket)
}

fn open_error(error: OpenError) -> GatewayError {
    match error {
        OpenError::Malformed | OpenError::UnknownKey | OpenError::Forged => {
            GatewayError::InvalidToken
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn token(conversation: &str, expires_at: u64) -> ClientToken {
        ClientToken {
            bot: "support".into(),
            conversation_id: conversation.into(),
            user_id: "dl_u".into(),
            upstream_token: "up".into(),
            expires_at,
            name: None,
        }
    }

    const OTHER_KEY: &str = "fedcba9876543210fedcba9876543210";

    #[test]
    fn a_connection_s_last_token_is_kept_only_for_the_key_set_that_opened_it() {
        let now = clock::unix_seconds();
        let before = Arc::new(Sealer::new(KEY, &[]).unwrap());
        let sealed = before.seal(Purpose::ClientToken, &token("conv", now + 600));
        let opened = OpenedTokens::default();
        let first = opened.open(&before, &sealed, now).unwrap();
        assert_eq!(opened.open(&before, &sealed, now).unwrap(), first);
        // A reload that drops the key: the kept claims must not outlive it.
        let after = Arc::new(Sealer::new(OTHER_KEY, &[]).unwrap());
        assert_eq!(
            opened.open(&after, &sealed, now).unwrap_err(),
            GatewayError::InvalidToken
        );
    }

    #[test]
    fn another_token_on_the_same_connection_is_opened_not_matched() {
        let now = clock::unix_seconds();
        let sealer = Arc::new(Sealer::new(KEY, &[]).unwrap());
        let sealed = sealer.seal(Purpose::ClientToken, &token("conv", now + 600));
        let opened = OpenedTokens::default();
        opened.open(&sealer, &sealed, now).unwrap();
        let mut forged = sealed.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == 'A' { 'B' } else { 'A' });
        assert!(opened.open(&sealer, &forged, now).is_err());
        let other = sealer.seal(Purpose::ClientToken, &token("other", now + 600));
        assert_eq!(
            opened.open(&sealer, &other, now).unwrap().conversation_id,
            "other"
        );
    }

    #[test]
    fn a_token_opened_by_a_retired_key_is_kept_until_that_key_retires() {
        let now = clock::unix_seconds();
        let old = Sealer::new(OTHER_KEY, &[]).unwrap();
        let sealed = old.seal(Purpose::ClientToken, &token("conv", now + 600));
        let sealer = Arc::new(
            Sealer::new(KEY, &[])
                .unwrap()
                .with_retired(OTHER_KEY, now + 60),
        );
        let opened = OpenedTokens::default();
        opened.open(&sealer, &sealed, now).unwrap();
        let kept = opened.last.lock().unwrap();
        assert_eq!(kept.as_ref().map(|o| o.key_until), Some(Some(now + 60)));
    }

    #[test]
    fn a_refresh_takes_an_expired_token_only_inside_the_window() {
        let sealer = Arc::new(Sealer::new(KEY, &[]).unwrap());
        let now = clock::unix_seconds();
        let window = std::time::Duration::from_secs(600);
        let sealed = |expires_at| {
            headers(&format!(
                "Bearer {}",
                sealer.seal(Purpose::ClientToken, &token("conv", expires_at))
            ))
        };
        let live = authorize_refresh(&sealer, "support", &sealed(now + 60), window).unwrap();
        assert!(!live.1);
        let expired = authorize_refresh(&sealer, "support", &sealed(now - 300), window).unwrap();
        assert!(expired.1);
        assert_eq!(expired.0.conversation_id, "conv");
        for (expires_at, window) in [(now - 601, window), (now - 1, std::time::Duration::ZERO)] {
            assert_eq!(
                authorize_refresh(&sealer, "support", &sealed(expires_at), window).unwrap_err(),
                GatewayError::TokenExpired
            );
        }
        assert_eq!(
            authorize_refresh(&sealer, "sales", &sealed(now - 300), window).unwrap_err(),
            GatewayError::WrongBot
        );
        // Every other route keeps refusing the expired token.
        assert_eq!(
            authorize(
                &sealer,
                &OpenedTokens::default(),
                "support",
                &sealed(now - 300),
                None
            )
            .unwrap_err(),
            GatewayError::TokenExpired
        );
        // A huge expiry cannot wrap the window check around.
        assert!(authorize_refresh(&sealer, "support", &sealed(u64::MAX), window).is_ok());
    }

    #[test]
    fn refusals() {
        let sealer = Arc::new(Sealer::new(KEY, &[]).unwrap());
        let conv = ConversationId::parse("conv").unwrap();
        let good = sealer.seal(
            Purpose::ClientToken,
            &token("conv", clock::unix_seconds() + 60),
        );
        let expired = sealer.seal(
            Purpose::ClientToken,
            &token("conv", clock::unix_seconds() - 1),
        );
        let other = sealer.seal(
            Purpose::ClientToken,
            &token("other", clock::unix_seconds() + 60),
        );
        let other_bot = sealer.seal(
            Purpose::ClientToken,
            &ClientToken {
                bot: "sales".into(),
                ..token("conv", clock::unix_seconds() + 60)
            },
        );
        // One connection sends them all, the good token first: what it opened must not
        // make any later refusal pass.
        let cases = [
            (headers(&format!("Bearer {good}")), Ok(())),
            (HeaderMap::new(), Err(GatewayError::MissingCredential)),
            (headers("Basic abc"), Err(GatewayError::MissingCredential)),
            (headers("Bearer "), Err(GatewayError::MissingCredential)),
            (
                headers("Bearer the-raw-directline-secret"),
                Err(GatewayError::InvalidToken),
            ),
            (
                headers(&format!("Bearer {expired}")),
                Err(GatewayError::TokenExpired),
            ),
            (
                headers(&format!("Bearer {other}")),
                Err(GatewayError::WrongConversation),
            ),
            (
                headers(&format!("Bearer {other_bot}")),
                Err(GatewayError::WrongBot),
            ),
            (headers(&format!("bearer {good}")), Ok(())),
        ];
        let opened = OpenedTokens::default();
        for (headers, expected) in cases {
            let got = authorize(&sealer, &opened, "support", &headers, Some(&conv)).map(|_| ());
            assert_eq!(got, expected);
        }
    }
}
