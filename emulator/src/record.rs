//! The emulator's record of what it was sent: each request and the credential it carried.

use serde_json::Value;

/// One REST request or stream upgrade attempt, as the emulator saw and answered it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// What the `Authorization` header was; for stream upgrades without one, what `t` was.
    pub credential: SeenCredential,
    /// The `Host` header as received.
    pub host: Option<String>,
    /// The `x-request-id` header as received (the gateway forwards its caller's).
    pub request_id: Option<String>,
    /// The parsed JSON body, when there was one.
    pub body: Option<Value>,
    /// Every header as received (values lossily as text), so a test can assert that
    /// nothing it did not mean to send reached Direct Line.
    pub headers: Vec<(String, String)>,
    /// What the emulator answered (101 for accepted upgrades).
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeenCredential {
    Missing,
    Secret,
    /// The site's second secret.
    SecondSecret,
    ConversationToken {
        conversation_id: String,
    },
    StreamToken,
    Invalid,
}
