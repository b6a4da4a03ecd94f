//! Durable resume (ARCHITECTURE §12): a page reloaded after every token of its conversation expired
//! gets the conversation back through `tokens/refresh` inside `resume_window`, with exactly
//! the activities it missed, on any replica; an expired token is good for nothing else.

mod support;

use std::time::Duration;

use directline_emulator::Faults;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::process::GatewayProcess;
use support::{
    Conversation, Harness, Seen, TOKEN_KEY, eventually, metric, open_stream, read_until,
};

/// Direct Line tokens (and so the gateway's) live this long in these tests.
const TOKEN_TTL: Duration = Duration::from_secs(2);

async fn short_lived(edit: impl FnOnce(&mut directline_gateway::config::Config)) -> Harness {
    Harness::builder()
        .token_ttl(TOKEN_TTL)
        .config(edit)
        .start()
        .await
}

async fn refresh(base: &str, h: &Harness, token: &str) -> support::Reply {
    let request = http::Request::builder()
        .method(Method::POST)
        .uri(format!("{base}/v3/directline/tokens/refresh"));
    h.send(support::api_request(request, Some(token), None))
        .await
}

/// Waits until `conversation.token` is refused as expired, as a page reloaded late finds it.
async fn wait_until_expired(h: &Harness, conversation: &Conversation) {
    eventually("the gateway token expired", async || {
        let reply = h
            .activities(&conversation.id, None, &conversation.token)
            .await;
        reply.status == StatusCode::FORBIDDEN && reply.error_code() == "TokenExpired"
    })
    .await;
}

/// A conversation with one exchange read on the stream; returns it with its last watermark.
async fn chatted(h: &Harness) -> (Conversation, String) {
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    h.post_message(&conversation, "before").await;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: before".to_owned())
    })
    .await;
    let watermark = seen.watermark.clone().expect("a watermark");
    (conversation, watermark)
}

#[tokio::test]
async fn a_page_reloaded_after_its_tokens_expired_gets_exactly_what_it_missed() {
    let h = short_lived(|c| c.bot_mut().resume_window = Duration::from_secs(600)).await;
    let (conversation, watermark) = chatted(&h).await;
    // While the page is closed, the bot speaks.
    let missed = h
        .emulator
        .send_bot_message(&conversation.id, "while you were away")
        .unwrap();
    wait_until_expired(&h, &conversation).await;

    // The expired token is good for nothing but a refresh: refused before Direct Line.
    let before = h.emulator.requests().len();
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let post = h
        .request(
            Method::POST,
            &path,
            Some(&conversation.token),
            Some(json!({"type": "message", "text": "late"})),
        )
        .await;
    assert_eq!(post.status, StatusCode::FORBIDDEN);
    assert_eq!(post.error_code(), "TokenExpired");
    let reconnect = h
        .request(
            Method::GET,
            &format!("/v3/directline/conversations/{}", conversation.id),
            Some(&conversation.token),
            None,
        )
        .await;
    assert_eq!(reconnect.status, StatusCode::FORBIDDEN);
    assert_eq!(
        h.emulator.requests().len(),
        before,
        "an expired token reached upstream"
    );

    let reply = refresh(&h.base, &h, &conversation.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let json = reply.json();
    assert_eq!(json["conversationId"], conversation.id.as_str());
    assert!(json["expires_in"].as_u64().unwrap() > 0);
    let fresh = Conversation {
        id: conversation.id.clone(),
        token: json["token"].as_str().unwrap().to_owned(),
        stream_url: String::new(),
    };
    // The page reconnects from its stored watermark: the missed activity once, then live.
    let resumed = h.reconnect(&fresh, Some(&watermark)).await;
    let mut ws = open_stream(resumed["streamUrl"].as_str().unwrap()).await;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.ids().contains(&missed)).await;
    h.post_message(&fresh, "after").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: after".to_owned())
    })
    .await;
    assert_eq!(
        seen.texts(),
        ["while you were away", "after", "echo: after"],
        "exactly what was missed, then live"
    );
    seen.assert_no_duplicate_ids();
    // Same user as before: Direct Line stored both posts under one id.
    let stored = h.emulator.activities(&conversation.id);
    let sender = |text: &str| {
        stored
            .iter()
            .find(|a| a["text"] == text)
            .map(|a| a["from"]["id"].clone())
            .unwrap()
    };
    assert_eq!(sender("before"), sender("after"));
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_token_resumes_total{bot=\"default\",result=\"ok\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_resume_is_for_the_owner_only_and_only_inside_the_window() {
    let h = short_lived(|c| c.bot_mut().resume_window = Duration::from_secs(3)).await;
    let (ours, _) = chatted(&h).await;
    let (theirs, _) = chatted(&h).await;
    wait_until_expired(&h, &ours).await;
    wait_until_expired(&h, &theirs).await;
    // Their expired token resumes their conversation, never ours.
    let reply = refresh(&h.base, &h, &theirs.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["conversationId"], theirs.id.as_str());
    let theirs_fresh = reply.json()["token"].as_str().unwrap().to_owned();
    let crossed = h.activities(&ours.id, None, &theirs_fresh).await;
    assert_eq!(crossed.status, StatusCode::FORBIDDEN);
    // A forged token gets nothing.
    let mut forged = ours.token.clone();
    forged.pop();
    forged.push(if ours.token.ends_with('A') { 'B' } else { 'A' });
    let reply = refresh(&h.base, &h, &forged).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // Past the window, our token is dead for good.
    eventually("the resume window passed", async || {
        refresh(&h.base, &h, &ours.token).await.status == StatusCode::FORBIDDEN
    })
    .await;
    let reply = refresh(&h.base, &h, &ours.token).await;
    assert_eq!(reply.error_code(), "TokenExpired");
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_token_resumes_total{bot=\"default\",result=\"past_window\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn any_replica_sharing_the_token_key_resumes_it() {
    let h = short_lived(|c| c.bot_mut().resume_window = Duration::from_secs(600)).await;
    let (conversation, _) = chatted(&h).await;
    wait_until_expired(&h, &conversation).await;
    let other = GatewayProcess::in_front_of(&h.emulator.base_url(), TOKEN_KEY, &[], &[]);
    let reply = refresh(&other.base, &h, &conversation.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    // The fresh token works on the first replica as well.
    let reply = h.activities(&conversation.id, None, &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn off_gone_and_enhanced_authentication_answer_clearly() {
    // resume_window = 0: off, as before.
    let h = short_lived(|c| c.bot_mut().resume_window = Duration::ZERO).await;
    let (conversation, _) = chatted(&h).await;
    wait_until_expired(&h, &conversation).await;
    let reply = refresh(&h.base, &h, &conversation.token).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "TokenExpired");

    // A conversation Direct Line no longer knows: 404 as Direct Line says it.
    let h = short_lived(|c| c.bot_mut().resume_window = Duration::from_secs(600)).await;
    let (conversation, _) = chatted(&h).await;
    assert!(h.emulator.end_conversation(&conversation.id));
    wait_until_expired(&h, &conversation).await;
    let reply = refresh(&h.base, &h, &conversation.token).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}", reply.text());

    // Enhanced authentication: the secret cannot reconnect, an expired token cannot either.
    let h = Harness::builder()
        .token_ttl(TOKEN_TTL)
        .faults(Faults {
            enhanced_auth: true,
            ..Faults::default()
        })
        .config(|c| c.bot_mut().resume_window = Duration::from_secs(600))
        .start()
        .await;
    let (conversation, _) = chatted(&h).await;
    wait_until_expired(&h, &conversation).await;
    let reply = refresh(&h.base, &h, &conversation.token).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let json: Value = reply.json();
    assert_eq!(json["error"]["code"], "TokenExpired");
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("enhanced authentication"),
        "{json}"
    );
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_token_resumes_total{bot=\"default\",result=\"unavailable\"}"
        ),
        1.0
    );
}
