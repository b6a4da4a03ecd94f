//! Scale-out: three gateway processes that share nothing but the token key, in front of one
//! Direct Line. Any replica serves any conversation, and a replica drained with SIGTERM
//! under a streaming client loses that client nothing.

mod support;

use directline_emulator::EmulatorConfig;
use support::process::{self, GatewayProcess};
use support::*;

const SHARED_KEY: &str = "scale-out-shared-token-key-0123456789abcdef";

/// A replica whose drain closes its remaining sockets after one second (the default keeps
/// serving them for 20 s; tests/drain.rs covers that).
fn replica(upstream: &str, dir: &process::TempDir) -> GatewayProcess {
    let config = dir.write(
        "gateway.toml",
        "[stream]\ndrain_period = \"1s\"\ndrain_spread = \"100ms\"\n",
    );
    GatewayProcess::in_front_of(upstream, SHARED_KEY, &["--config", &config], &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_moves_between_replicas_and_survives_a_drained_one() {
    let emulator = Harness::emulator(EmulatorConfig {
        secret: directline_emulator::Secret::new(SECRET),
        ..EmulatorConfig::default()
    })
    .await;
    let upstream = emulator.base_url();
    let dir = process::TempDir::new("scale-out");
    let mut a = replica(&upstream, &dir);
    let b = replica(&upstream, &dir);
    let c = replica(&upstream, &dir);
    let via_a = Harness::attach(emulator.clone(), &a);
    let via_b = Harness::attach(emulator.clone(), &b);
    let via_c = Harness::attach(emulator.clone(), &c);

    // Started on A, streamed from A.
    let conversation = via_a.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    via_a.post_message(&conversation, "one").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 2).await;

    // Continued on B with the same token: reconnect, post, read.
    let reconnected = via_b
        .reconnect(&conversation, seen.watermark.as_deref())
        .await;
    assert!(
        reconnected["streamUrl"]
            .as_str()
            .unwrap()
            .starts_with(&b.base.replace("http", "ws")),
        "B rewrites the stream URL to itself"
    );
    via_b.post_message(&conversation, "two").await;
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let listed = via_c
        .request(http::Method::GET, &path, Some(&conversation.token), None)
        .await;
    assert_eq!(listed.status, http::StatusCode::OK, "C serves it too");
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 4).await;

    // A is drained while its client streams; messages keep coming through C meanwhile.
    a.signal("TERM");
    read_until(&mut ws, &mut seen, |s| s.closed.is_some()).await;
    assert_eq!(
        seen.closed,
        Some(Some(1001)),
        "A closes its clients with 1001"
    );
    assert!(a.wait_exit(std::time::Duration::from_secs(30)).success());
    via_c.post_message(&conversation, "three").await;
    via_c.post_message(&conversation, "four").await;

    // The client resumes through B from its watermark, as DLJS does after a 1001.
    let resumed = via_b
        .reconnect(&conversation, seen.watermark.as_deref())
        .await;
    let mut ws = open_stream(resumed["streamUrl"].as_str().unwrap()).await;
    via_b.post_message(&conversation, "five").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 10).await;
    assert_eq!(
        seen.texts(),
        [
            "one",
            "echo: one",
            "two",
            "echo: two",
            "three",
            "echo: three",
            "four",
            "echo: four",
            "five",
            "echo: five"
        ]
    );
    seen.assert_no_duplicate_ids();
}
