//! What each route needs done before its handler runs, declared once per route and done by
//! the pipeline (ARCHITECTURE §9), so no handler re-does (or forgets) a check.

use crate::endpoint::Endpoint;

/// The credential a route requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// None: preflight, the demo page, and the stream routes (their sealed ticket is in the
    /// URL; the route opens it).
    None,
    /// `tokens/generate`: the identity provider's JWT when the bot is in signed-in mode
    /// (`[auth]`), nothing otherwise (anyone may ask, rate-limited per IP). Its bucket is
    /// charged *before* the check: a signature verification is the costliest thing an
    /// anonymous caller can ask for.
    SignIn,
    /// A live gateway token of the request's bot.
    Token,
    /// A live gateway token of the request's bot for the endpoint's conversation.
    ConversationToken,
    /// A gateway token of the bot, also one expired less than `resume_window` ago; in
    /// signed-in mode an expired one also needs a current sign-in of the same person.
    RefreshableToken,
}

/// The rate bucket a request of the route takes a token from, once its credential passed
/// (so forged calls cannot spend a real caller's rate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    None,
    /// Per bot and client IP: minting tokens and starting conversations.
    Sessions,
    /// Per bot and conversation: posting activities and uploads.
    Activities,
    /// Per bot and conversation (the token's), and per bot and client IP: tokens/refresh.
    Refresh,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    pub credential: Credential,
    pub bucket: Bucket,
    /// Browsers on origins outside `allowed_origins` are refused (token minting and starts).
    pub origin_checked: bool,
    /// Served while draining (preflights only: they touch nothing).
    pub while_draining: bool,
}

impl Needs {
    const fn new(credential: Credential, bucket: Bucket) -> Self {
        Self {
            credential,
            bucket,
            origin_checked: false,
            while_draining: false,
        }
    }
}

/// The table: one row per route.
pub fn of(endpoint: &Endpoint) -> Needs {
    use Bucket::{Activities, Sessions};
    use Credential::{ConversationToken, RefreshableToken, Token};
    match endpoint {
        Endpoint::Preflight(_) => Needs {
            while_draining: true,
            ..Needs::new(Credential::None, Bucket::None)
        },
        Endpoint::TokensGenerate => Needs {
            origin_checked: true,
            ..Needs::new(Credential::SignIn, Sessions)
        },
        Endpoint::StartConversation => Needs {
            origin_checked: true,
            ..Needs::new(Token, Sessions)
        },
        Endpoint::TokensRefresh => Needs::new(RefreshableToken, Bucket::Refresh),
        Endpoint::Reconnect(_) | Endpoint::GetActivities(_) => {
            Needs::new(ConversationToken, Bucket::None)
        }
        Endpoint::PostActivity(_) | Endpoint::Upload(_) => {
            Needs::new(ConversationToken, Activities)
        }
        Endpoint::SessionId => Needs::new(Token, Bucket::None),
        Endpoint::Stream { .. } => Needs::new(Credential::None, Bucket::None),
    }
}
