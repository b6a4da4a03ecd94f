//! Held polls (`[polling] hold`): `GET …/activities` served from the conversation's hub for
//! clients without WebSockets, on real processes (gateway and emulator on 127.0.0.1).

mod support;

use std::time::{Duration, Instant};

use directline_emulator::Faults;
use directline_gateway::config::Config;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// Long enough that a poll answered with an activity cannot have been a timed-out one.
const HOLD: Duration = Duration::from_secs(15);

fn holding(config: &mut Config) {
    config.polling.hold = HOLD;
    // Hubs outlive the pauses between polls even on a loaded machine, so the counts of
    // open hubs asserted below cannot change under a slow test.
    config.stream.linger = Duration::from_secs(60);
}

/// One polling client: its watermark and everything it was given, in order.
#[derive(Default)]
struct Poller {
    watermark: Option<String>,
    activities: Vec<Value>,
}

impl Poller {
    /// One poll; returns what it brought and how long it took.
    async fn poll(&mut self, h: &Harness, c: &Conversation) -> (Vec<Value>, Duration) {
        let started = Instant::now();
        let reply = h
            .activities(&c.id, self.watermark.as_deref(), &c.token)
            .await;
        let took = started.elapsed();
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        if let Some(w) = json["watermark"].as_str() {
            self.watermark = Some(w.to_owned());
        }
        let got = json["activities"].as_array().cloned().unwrap_or_default();
        self.activities.extend(got.iter().cloned());
        (got, took)
    }

    /// Polls until `done` holds for what was received, within [`WAIT`] per poll.
    async fn until(&mut self, h: &Harness, c: &Conversation, done: impl Fn(&[Value]) -> bool) {
        let deadline = Instant::now() + WAIT * 3;
        while !done(&self.activities) {
            assert!(
                Instant::now() < deadline,
                "not received: {:#?}",
                self.texts()
            );
            self.poll(h, c).await;
        }
    }

    fn texts(&self) -> Vec<String> {
        self.activities
            .iter()
            .filter(|a| a["type"] == "message")
            .filter_map(|a| a["text"].as_str().map(str::to_owned))
            .collect()
    }

    fn assert_no_duplicate_ids(&self) {
        let stored: Vec<&str> = self
            .activities
            .iter()
            .filter(|a| a["type"] == "message")
            .filter_map(|a| a["id"].as_str())
            .collect();
        let unique: std::collections::HashSet<&&str> = stored.iter().collect();
        assert_eq!(unique.len(), stored.len(), "doubled: {stored:?}");
    }
}

fn has_text(text: &str) -> impl Fn(&[Value]) -> bool + '_ {
    move |seen| {
        seen.iter()
            .any(|a| a["text"] == text && a["type"] == "message")
    }
}

async fn post(h: &Harness, c: &Conversation, body: Value) {
    let path = format!("/v3/directline/conversations/{}/activities", c.id);
    let reply = h
        .request(Method::POST, &path, Some(&c.token), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// Waits until `count` polls are held on the gateway behind `h`.
async fn held(h: &Harness, count: f64) {
    eventually("polls held", async || {
        metric(&h.metrics().await, "directline_gateway_polls_held") == count
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_poll_is_answered_when_the_bot_answers() {
    let h = Harness::builder().config(holding).start().await;
    let c = h.conversation().await;
    h.post_message(&c, "one").await;
    let mut poller = Poller::default();
    poller.until(&h, &c, has_text("echo: one")).await;
    assert!(
        poller
            .watermark
            .as_deref()
            .is_some_and(|w| w.starts_with("dlgw1.")),
        "the gateway's own watermark: {:?}",
        poller.watermark
    );

    // Nothing new: the poll waits on the hub, and is answered by what arrives.
    let (answered, ()) = tokio::join!(poller.poll(&h, &c), async {
        held(&h, 1.0).await;
        h.post_message(&c, "two").await;
    });
    let (got, took) = answered;
    assert!(
        got.iter().any(|a| a["text"] == "two"),
        "the held poll brought the new message: {got:#?}"
    );
    assert!(took < HOLD, "answered before the hold passed");
    poller.until(&h, &c, has_text("echo: two")).await;
    assert_eq!(poller.texts(), ["one", "echo: one", "two", "echo: two"]);
    poller.assert_no_duplicate_ids();
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"directline_gateway_polls_total{result="activities"}"#
        ) >= 2.0
    );
    assert_eq!(metric(&metrics, "directline_gateway_poll_hubs"), 1.0);
    assert_eq!(metric(&metrics, "directline_gateway_polls_held"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_polling_client_gets_interims_of_a_streamed_answer_then_the_final_once() {
    let h = Harness::builder()
        .faults(Faults {
            stream_interval: Duration::from_millis(30),
            ..Faults::default()
        })
        .config(holding)
        .start()
        .await;
    let c = h.conversation().await;
    h.post_message(&c, "hello").await;
    let mut poller = Poller::default();
    poller.until(&h, &c, has_text("echo: hello")).await;
    post(
        &h,
        &c,
        json!({"type": "message", "from": {"id": "user"}, "text": "stream 40", "deliveryMode": "stream"}),
    )
    .await;
    let final_text = (1..=40)
        .map(|n| format!("w{n}"))
        .collect::<Vec<_>>()
        .join(" ");
    poller.until(&h, &c, has_text(&final_text)).await;

    let interims: Vec<&Value> = poller
        .activities
        .iter()
        .filter(|a| a["type"] == "typing")
        .collect();
    assert!(!interims.is_empty(), "no interim reached the poller");
    let sequences: Vec<u64> = interims
        .iter()
        .map(|a| {
            a["entities"][0]["streamSequence"]
                .as_u64()
                .expect("a streaminfo entity")
        })
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "interims in order, none repeated: {sequences:?}"
    );
    let finals = poller.texts().iter().filter(|t| **t == final_text).count();
    assert_eq!(finals, 1, "the final exactly once");
    let last = poller.activities.last().unwrap();
    assert_eq!(
        last["text"],
        final_text.as_str(),
        "no interim after the final"
    );
    poller.assert_no_duplicate_ids();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_or_doubled_across_polls_and_upstream_drops() {
    let h = Harness::builder()
        .faults(Faults {
            drop_after_frames: Some(3),
            ..Faults::default()
        })
        .config(holding)
        .start()
        .await;
    let c = h.conversation().await;
    h.post_message(&c, "m0").await;
    let mut poller = Poller::default();
    poller.until(&h, &c, has_text("echo: m0")).await;
    let mut expected = vec!["m0".to_owned(), "echo: m0".to_owned()];
    for n in 1..=8 {
        let text = format!("m{n}");
        // Half the messages arrive while a poll is held, half between polls.
        if n % 2 == 0 {
            let (answered, ()) = tokio::join!(poller.poll(&h, &c), async {
                held(&h, 1.0).await;
                h.post_message(&c, &text).await;
            });
            assert!(!answered.0.is_empty());
        } else {
            h.post_message(&c, &text).await;
        }
        poller
            .until(&h, &c, has_text(&format!("echo: {text}")))
            .await;
        expected.push(text.clone());
        expected.push(format!("echo: {text}"));
    }
    assert_eq!(poller.texts(), expected);
    poller.assert_no_duplicate_ids();
    let drops: f64 = h
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("directline_gateway_upstream_stream_drops_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(drops >= 2.0, "the hub's upstream socket dropped: {drops}");
}

/// A second gateway in front of `h`'s emulator, sharing its token key.
async fn second_replica(h: &Harness) -> directline_gateway::server::Running {
    let mut config = config_with_upstream(&h.emulator.base_url());
    config.bot_mut().secret = Some(directline_gateway::secret::Secret::new(SECRET));
    config.bot_mut().rate_limits.activities.per_minute = 0;
    holding(&mut config);
    config.stream.linger = Duration::from_millis(500);
    start_gateway(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_alternate_between_two_replicas() {
    // Direct Line keeps one stream per conversation and closes a newcomer with `collision`:
    // each replica's hub lets its upstream socket go soon after its poll, so the other
    // replica's hub gets the stream (ARCHITECTURE §15 covers hubs that keep colliding).
    let a = Harness::builder()
        .config(|config| {
            holding(config);
            config.stream.linger = Duration::from_millis(500);
        })
        .start()
        .await;
    let running_b = second_replica(&a).await;
    let b = Harness::attach_in_process(a.emulator.clone(), &running_b);
    let c = a.conversation().await;
    let mut poller = Poller::default();
    let mut expected = Vec::new();
    for n in 0..6 {
        let text = format!("r{n}");
        let (via, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        if n == 0 {
            via.post_message(&c, &text).await;
        } else {
            // Held on one replica, answered from its hub, continued on the other.
            let (answered, ()) = tokio::join!(poller.poll(via, &c), async {
                held(via, 1.0).await;
                other.post_message(&c, &text).await;
            });
            assert!(!answered.0.is_empty());
        }
        let echo = format!("echo: {text}");
        // Alternate replicas poll by poll while collecting the echo.
        let deadline = Instant::now() + WAIT * 3;
        let mut turn = n;
        while !has_text(&echo)(&poller.activities) {
            assert!(
                Instant::now() < deadline,
                "not received: {:?}",
                poller.texts()
            );
            let via = if turn % 2 == 0 { &a } else { &b };
            poller.poll(via, &c).await;
            turn += 1;
        }
        expected.push(text);
        expected.push(echo);
    }
    assert_eq!(poller.texts(), expected);
    poller.assert_no_duplicate_ids();

    // A plain upstream watermark (a client from before the hold was turned on) still works.
    // The emulator's watermark N means "after the activity at index N".
    let plain = (a.emulator.activities(&c.id).len() - 3).to_string();
    let reply = b.activities(&c.id, Some(&plain), &c.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let texts: Vec<String> = reply.json()["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(texts, ["r5", "echo: r5"]);
    running_b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_past_their_bounds_get_a_direct_line_error() {
    let h = Harness::builder()
        .config(|config| {
            holding(config);
            config.polling.max_held_per_conversation = 1;
            config.polling.max_held_per_ip = 2;
            config.polling.max_hubs = 2;
        })
        .start()
        .await;
    let first = h.conversation().await;
    let second = h.conversation().await;
    let third = h.conversation().await;
    let mut pollers: Vec<Poller> = (0..3).map(|_| Poller::default()).collect();
    for (c, poller) in [&first, &second].into_iter().zip(pollers.iter_mut()) {
        h.post_message(c, "x").await;
        poller.until(&h, c, has_text("echo: x")).await;
    }
    let [p1, p2, _] = &mut pollers[..] else {
        unreachable!()
    };
    let (one, two, ()) = tokio::join!(p1.poll(&h, &first), p2.poll(&h, &second), async {
        held(&h, 2.0).await;
        // A second poll of one conversation at once, then a third from the same address.
        let again = h.activities(&first.id, None, &first.token).await;
        assert_eq!(
            again.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            again.text()
        );
        assert_eq!(again.error_code(), "TooManyRequests");
        assert!(again.headers.contains_key("retry-after"));
        let third_poll = h.activities(&third.id, None, &third.token).await;
        assert_eq!(third_poll.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(third_poll.error_code(), "TooManyRequests");
        h.post_message(&first, "y").await;
        h.post_message(&second, "y").await;
    });
    assert!(!one.0.is_empty() && !two.0.is_empty());
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"directline_gateway_polls_refused_total{reason="conversation"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            r#"directline_gateway_polls_refused_total{reason="ip"}"#
        ),
        1.0
    );

    // Two hubs are open: a third conversation's poll is passed through unheld (Direct
    // Line's own answer and watermark) rather than opening another upstream socket.
    h.post_message(&third, "z").await;
    let reply = h.activities(&third.id, None, &third.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let json = reply.json();
    assert!(
        !json["watermark"]
            .as_str()
            .unwrap_or_default()
            .starts_with("dlgw1."),
        "{json}"
    );
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"directline_gateway_polls_refused_total{reason="hubs"}"#
        ) >= 1.0
    );
    assert_eq!(metric(&metrics, "directline_gateway_poll_hubs"), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_poll_watermark_is_refused() {
    let h = Harness::builder().config(holding).start().await;
    let c = h.conversation().await;
    let reply = h
        .activities(
            &c.id,
            Some("dlgw1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            &c.token,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.error_code(), "BadArgument");
}
