//! A fake of Azure AI Content Safety's text analysis on the emulator's own origin, for the
//! gateway's `[policy.content_safety]` tests and demo: `POST
//! /contentsafety/text:analyze?api-version=2024-09-01` with the key in
//! `Ocp-Apim-Subscription-Key` and `{"text": …}`, answered `{"blocklistsMatch": [],
//! "categoriesAnalysis": [{"category", "severity"}, …]}` for Hate, SelfHarm, Sexual and
//! Violence on the four-level scale (0, 2, 4, 6), as the service does by default.
//!
//! The severities are not a classifier's: a text naming a category in capitals with a level
//! (`HATE4`, `VIOLENCE6`, `SEXUAL2`, `SELFHARM6`) gets that severity for that category, every
//! other category 0, so a test chooses what the gateway sees.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::exchange::{Body, json_response, query_parameter};

pub const PATH: &str = "/contentsafety/text:analyze";
/// The subscription key the fake accepts.
pub const KEY: &str = "emulator-content-safety-key-0123456789";
/// The service's documented limit on one text.
const MAX_TEXT_CHARS: usize = 10_000;
const CATEGORIES: [(&str, &str); 4] = [
    ("Hate", "HATE"),
    ("SelfHarm", "SELFHARM"),
    ("Sexual", "SEXUAL"),
    ("Violence", "VIOLENCE"),
];

fn failure(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({"error": {"code": code, "message": message}}),
    )
}

pub(super) async fn analyze(request: Request<Incoming>) -> Response<Body> {
    if request.method() != Method::POST {
        return failure(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "Only POST is allowed.",
        );
    }
    if query_parameter(request.uri().query(), "api-version").as_deref() != Some("2024-09-01") {
        return failure(
            StatusCode::NOT_FOUND,
            "404",
            "Resource not found: unsupported api-version.",
        );
    }
    let key_ok = request
        .headers()
        .get("ocp-apim-subscription-key")
        .is_some_and(|v| v.as_bytes() == KEY.as_bytes());
    if !key_ok {
        return failure(
            StatusCode::UNAUTHORIZED,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint.",
        );
    }
    let Ok(collected) = Limited::new(request.into_body(), 256 * 1024)
        .collect()
        .await
    else {
        return failure(
            StatusCode::BAD_REQUEST,
            "InvalidRequestBody",
            "The request body is too large or unreadable.",
        );
    };
    let body: Value = serde_json::from_slice(&collected.to_bytes()).unwrap_or(Value::Null);
    let Some(text) = body.get("text").and_then(Value::as_str) else {
        return failure(
            StatusCode::BAD_REQUEST,
            "InvalidRequestBody",
            "The text field is required.",
        );
    };
    if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return failure(
            StatusCode::BAD_REQUEST,
            "InvalidRequestBody",
            "The text must be 1 to 10000 characters.",
        );
    }
    let analysis: Vec<Value> = CATEGORIES
        .iter()
        .map(|(category, word)| json!({"category": category, "severity": severity(text, word)}))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"blocklistsMatch": [], "categoriesAnalysis": analysis}),
    )
}

/// The level after `word` in `text` (`HATE4` → 4), rounded down to the four-level scale.
fn severity(text: &str, word: &str) -> u8 {
    text.match_indices(word)
        .filter_map(|(at, _)| text[at + word.len()..].chars().next()?.to_digit(10))
        .map(|level| (level.min(7) as u8) / 2 * 2)
        .max()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn severity_is_named_in_the_text() {
        assert_eq!(super::severity("calm", "HATE"), 0);
        assert_eq!(super::severity("x HATE4 y", "HATE"), 4);
        assert_eq!(super::severity("VIOLENCE7", "VIOLENCE"), 6);
    }
}
