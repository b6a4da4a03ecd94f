//! Several bots behind one gateway: two emulators (one with enhanced authentication) as two
//! upstreams, two bots routed by host and two by path prefix, each with its own secret.

mod support;

use std::time::Duration;

use bytes::Bytes;
use directline_emulator::{
    self as emulator, EmulatorConfig, EmulatorHandle, Faults, SeenCredential,
};
use directline_gateway::config::{BotConfig, Config, RateLimits, UpstreamTarget, UserIdPolicy};
use directline_gateway::secret::Secret;
use futures_util::StreamExt;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use support::process::{GatewayProcess, TempDir};
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const A_FIRST: &str = "site-a-first-secret-0123456789abcdef";
const A_SECOND: &str = "site-a-second-secret-0123456789abcdef";
const B_FIRST: &str = "site-b-first-secret-0123456789abcdef";
const B_SECOND: &str = "site-b-second-secret-0123456789abcdef";

/// Where a bot is reached: a `Host` name, a path prefix, or both.
#[derive(Clone, Copy)]
struct Route {
    host: Option<&'static str>,
    prefix: &'static str,
}

const ALPHA: Route = Route {
    host: Some("alpha.test"),
    prefix: "",
};
const BETA: Route = Route {
    host: Some("beta.test"),
    prefix: "",
};
const GAMMA: Route = Route {
    host: None,
    prefix: "/bots/gamma",
};
const DELTA: Route = Route {
    host: None,
    prefix: "/bots/delta",
};

fn bot(name: &str, route: Route, upstream: &EmulatorHandle, secret: &str) -> BotConfig {
    BotConfig {
        name: name.to_owned(),
        host: route.host.map(str::to_owned),
        path_prefix: route.prefix.to_owned(),
        upstream: UpstreamTarget::Url(url::Url::parse(&upstream.base_url()).unwrap()),
        secret: Some(Secret::new(secret)),
        public_url: None,
        allowed_origins: Vec::new(),
        allow_credentials: false,
        demo_page: false,
        trusted_origins: Vec::new(),
        rate_limits: RateLimits::default(),
        user_ids: UserIdPolicy::Minted,
        upstream_ca_file: None,
        resume_window: directline_gateway::config::DEFAULT_RESUME_WINDOW,
        auth: None,
        token_endpoint: None,
        policy: None,
        delivery_mode: Default::default(),
    }
}

async fn emulators() -> (EmulatorHandle, EmulatorHandle) {
    let a = Harness::emulator(EmulatorConfig {
        secret: emulator::Secret::new(A_FIRST),
        second_secret: Some(emulator::Secret::new(A_SECOND)),
        ..EmulatorConfig::default()
    })
    .await;
    let b = Harness::emulator(EmulatorConfig {
        secret: emulator::Secret::new(B_FIRST),
        second_secret: Some(emulator::Secret::new(B_SECOND)),
        faults: Faults {
            enhanced_auth: true,
            ..Faults::default()
        },
        ..EmulatorConfig::default()
    })
    .await;
    (a, b)
}

/// A client of one bot, talking to the gateway at `base` as a browser on `route` would.
struct Client<'a> {
    h: &'a Harness,
    route: Route,
}

impl Client<'_> {
    fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder()
            .method(method)
            .uri(self.h.url(&format!("{}{path}", self.route.prefix)));
        if let Some(host) = self.route.host {
            builder = builder.header("host", host);
        }
        api_request(builder, token, body)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.h.send(self.request(method, path, token, body)).await
    }

    /// tokens/generate → start: the conversation with its token and gateway stream URL.
    async fn conversation(&self, user: Value) -> Conversation {
        let reply = self
            .call(
                Method::POST,
                "/v3/directline/tokens/generate",
                None,
                Some(json!({ "user": user })),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let token = reply.json()["token"].as_str().unwrap().to_owned();
        let reply = self
            .call(
                Method::POST,
                "/v3/directline/conversations",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let json = reply.json();
        Conversation {
            id: json["conversationId"].as_str().unwrap().to_owned(),
            token: json["token"].as_str().unwrap().to_owned(),
            stream_url: json["streamUrl"].as_str().unwrap().to_owned(),
        }
    }

    async fn post(&self, conversation: &Conversation, token: &str, text: &str) -> Reply {
        let path = format!(
            "/v3/directline/conversations/{}/activities",
            conversation.id
        );
        let body = json!({"type": "message", "from": {"id": "user"}, "text": text});
        self.call(Method::POST, &path, Some(token), Some(body))
            .await
    }
}

/// Opens a gateway stream URL. Host-routed bots' URLs name their host, which does not
/// resolve here: the socket goes to the gateway's address with that `Host`, as DNS would send it.
async fn open(h: &Harness, stream_url: &str) -> Ws {
    let url = url::Url::parse(stream_url).unwrap();
    let gateway = url::Url::parse(&h.base).unwrap();
    let mut direct = url.clone();
    direct.set_host(gateway.host_str()).unwrap();
    direct.set_port(gateway.port()).unwrap();
    let mut request = direct.as_str().into_client_request().unwrap();
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap()),
        None => url.host_str().unwrap().to_owned(),
    };
    request.headers_mut().insert("host", host.parse().unwrap());
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("stream opened in time")
        .expect("stream upgrade accepted");
    ws
}

/// The status a stream upgrade to `url` (on the gateway, as `route`) is refused with.
async fn refused_upgrade(h: &Harness, route: Route, path_and_query: &str) -> u16 {
    let url = format!(
        "{}{}{path_and_query}",
        h.base.replace("http", "ws"),
        route.prefix
    );
    let mut request = url.into_client_request().unwrap();
    if let Some(host) = route.host {
        request.headers_mut().insert("host", host.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        other => panic!("expected a refused upgrade, got {:?}", other.map(|_| ())),
    }
}

fn config_for(bots: Vec<BotConfig>) -> Config {
    let mut config = Config {
        token_key: Some(Secret::new(TOKEN_KEY)),
        bots,
        ..Config::default()
    };
    config.stream.keepalive_interval = Duration::from_millis(500);
    config.stream.liveness_timeout = Duration::from_secs(2);
    config.stream.backoff_base = Duration::from_millis(20);
    config.stream.backoff_max = Duration::from_millis(200);
    config
}

/// The credentials an emulator saw on the requests after the first `from`.
fn credentials_since(emulator: &EmulatorHandle, from: usize) -> Vec<SeenCredential> {
    emulator.requests()[from..]
        .iter()
        .map(|r| r.credential.clone())
        .collect()
}

async fn echo_on(ws: &mut Ws, text: &str) {
    let mut seen = Seen::default();
    let wanted = format!("echo: {text}");
    read_until(ws, &mut seen, |s| s.texts().contains(&wanted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bot_reaches_only_its_own_upstream_with_its_own_secret() {
    let (a, b) = emulators().await;
    let mut delta = bot("delta", DELTA, &b, B_SECOND);
    delta.user_ids = UserIdPolicy::Caller;
    let config = config_for(vec![
        bot("alpha", ALPHA, &a, A_FIRST),
        bot("beta", BETA, &b, B_FIRST),
        bot("gamma", GAMMA, &a, A_SECOND),
        delta,
    ]);
    let running = start_gateway(config).await;
    let h = Harness::attach_in_process(a.clone(), &running);

    let cases = [
        ("alpha", ALPHA, &a, &b, SeenCredential::Secret),
        ("beta", BETA, &b, &a, SeenCredential::Secret),
        ("gamma", GAMMA, &a, &b, SeenCredential::SecondSecret),
        ("delta", DELTA, &b, &a, SeenCredential::SecondSecret),
    ];
    for (name, route, own, other, own_secret) in cases {
        let (own_before, other_before) = (own.requests().len(), other.requests().len());
        let client = Client { h: &h, route };
        let conversation = client.conversation(json!({"id": "dl_alice"})).await;
        assert!(
            conversation
                .stream_url
                .contains(&format!("{}/v3/directline/conversations/", route.prefix)),
            "{name}: stream URL under the bot's own prefix: {}",
            conversation.stream_url
        );
        if let Some(host) = route.host {
            assert!(
                conversation
                    .stream_url
                    .starts_with(&format!("ws://{host}/"))
            );
        }
        let mut ws = open(&h, &conversation.stream_url).await;
        let reply = client
            .post(&conversation, &conversation.token, &format!("hello {name}"))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{name}: {}", reply.text());
        echo_on(&mut ws, &format!("hello {name}")).await;

        assert_eq!(
            other.requests().len(),
            other_before,
            "{name}: nothing reached the other upstream"
        );
        let seen = credentials_since(own, own_before);
        assert!(
            seen.contains(&own_secret),
            "{name}: its secret was used: {seen:?}"
        );
        let wrong_secret = match own_secret {
            SeenCredential::Secret => SeenCredential::SecondSecret,
            _ => SeenCredential::Secret,
        };
        assert!(
            !seen.contains(&wrong_secret) && !seen.contains(&SeenCredential::Invalid),
            "{name}: never another bot's secret: {seen:?}"
        );
        // The user-id policy is the bot's: only delta lets the caller choose.
        let generated = own.requests()[own_before..]
            .iter()
            .find(|r| r.path.ends_with("/tokens/generate"))
            .and_then(|r| r.body.clone())
            .expect("tokens/generate reached upstream");
        let user_id = generated["user"]["id"].as_str().unwrap();
        if name == "delta" {
            assert_eq!(user_id, "dl_alice");
        } else {
            assert!(
                user_id.starts_with("dl_") && user_id != "dl_alice",
                "{user_id}"
            );
        }
    }

    let metrics = h.metrics().await;
    for name in ["alpha", "beta", "gamma", "delta"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("directline_gateway_tokens_total{{bot=\"{name}\",kind=\"generated\"}}")
            ),
            1.0,
            "{name}"
        );
        assert_eq!(
            metric(
                &metrics,
                &format!("directline_gateway_activities_relayed_total{{bot=\"{name}\"}}")
            ),
            2.0,
            "{name}: the message and its echo"
        );
    }

    // A host no bot serves, at a path no prefix matches: a Direct Line-shaped 404.
    let stranger = Client {
        h: &h,
        route: Route {
            host: Some("unknown.test"),
            prefix: "",
        },
    };
    let reply = stranger
        .call(Method::POST, "/v3/directline/tokens/generate", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "NotFound");
    assert!(
        metric(
            &h.metrics().await,
            "directline_gateway_http_requests_total{bot=\"none\",method=\"POST\",route=\"unknown\",status=\"4xx\"}"
        ) >= 1.0
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_tickets_of_one_bot_are_refused_on_another() {
    let (a, b) = emulators().await;
    // alpha and gamma share an upstream: the conversation exists there, so only the
    // gateway's binding of tokens to bots can refuse the crossing.
    let config = config_for(vec![
        bot("alpha", ALPHA, &a, A_FIRST),
        bot("beta", BETA, &b, B_FIRST),
        bot("gamma", GAMMA, &a, A_SECOND),
    ]);
    let running = start_gateway(config).await;
    let h = Harness::attach_in_process(a.clone(), &running);
    let alpha = Client {
        h: &h,
        route: ALPHA,
    };
    let conversation = alpha.conversation(json!({})).await;
    let path = url::Url::parse(&conversation.stream_url).unwrap();
    let stream_path = format!("{}?{}", path.path(), path.query().unwrap());
    let (a_before, b_before) = (a.requests().len(), b.requests().len());

    for route in [GAMMA, BETA] {
        let other = Client { h: &h, route };
        let reply = other
            .post(&conversation, &conversation.token, "crossing")
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
        assert_eq!(reply.error_code(), "BadArgument");
        let reconnect = format!(
            "/v3/directline/conversations/{}?watermark=0",
            conversation.id
        );
        let reply = other
            .call(Method::GET, &reconnect, Some(&conversation.token), None)
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        let reply = other
            .call(
                Method::POST,
                "/v3/directline/tokens/refresh",
                Some(&conversation.token),
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(refused_upgrade(&h, route, &stream_path).await, 403);
    }
    assert_eq!(
        a.requests().len(),
        a_before,
        "nothing crossed to upstream A"
    );
    assert_eq!(
        b.requests().len(),
        b_before,
        "nothing crossed to upstream B"
    );
    assert!(
        metric(
            &h.metrics().await,
            "directline_gateway_auth_refusals_total{bot=\"gamma\",reason=\"wrong_bot\"}"
        ) >= 2.0
    );

    // The token and ticket still work on their own bot.
    let mut ws = open(&h, &conversation.stream_url).await;
    let reply = alpha.post(&conversation, &conversation.token, "home").await;
    assert_eq!(reply.status, StatusCode::OK);
    echo_on(&mut ws, "home").await;
    running.shutdown().await;
}

/// The `[[bots]]` of a config file for a gateway process.
fn bots_toml(dir: &TempDir, bots: &[(&str, Route, &EmulatorHandle, &str)]) -> String {
    let mut text = format!(
        "token_key_file = {:?}\n[stream]\nkeepalive_interval = \"500ms\"\nliveness_timeout = \"2s\"\n",
        dir.write("token.key", TOKEN_KEY)
    );
    for (name, route, upstream, secret) in bots {
        let secret_file = dir.write(&format!("{name}.secret"), secret);
        text.push_str(&format!(
            "\n[[bots]]\nname = {name:?}\nupstream = {:?}\nsecret_file = {secret_file:?}\npath_prefix = {:?}\n",
            upstream.base_url(),
            route.prefix
        ));
        if let Some(host) = route.host {
            text.push_str(&format!("host = {host:?}\n"));
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_adds_and_removes_bots_while_other_streams_stay_open() {
    let (a, b) = emulators().await;
    let dir = TempDir::new("bots-reload");
    let two = bots_toml(
        &dir,
        &[
            ("alpha", ALPHA, &a, A_FIRST),
            ("gamma", GAMMA, &a, A_SECOND),
        ],
    );
    let path = dir.write("gateway.toml", &two);
    let gateway = GatewayProcess::with_config(&path);
    let h = Harness::attach(a.clone(), &gateway);

    let alpha = Client {
        h: &h,
        route: ALPHA,
    };
    let first = alpha.conversation(json!({})).await;
    let mut first_ws = open(&h, &first.stream_url).await;
    let gamma = Client {
        h: &h,
        route: GAMMA,
    };
    let doomed = gamma.conversation(json!({})).await;
    let mut doomed_ws = open(&h, &doomed.stream_url).await;
    assert_eq!(
        alpha.post(&first, &first.token, "before").await.status,
        StatusCode::OK
    );
    echo_on(&mut first_ws, "before").await;

    // A third bot, on the other upstream, added live; alpha's secret rotated to the site's
    // second one in the same reload.
    let epsilon = Route {
        host: None,
        prefix: "/bots/epsilon",
    };
    let three = bots_toml(
        &dir,
        &[
            ("alpha", ALPHA, &a, A_SECOND),
            ("gamma", GAMMA, &a, A_SECOND),
            ("epsilon", epsilon, &b, B_FIRST),
        ],
    );
    dir.write("gateway.toml", &three);
    let not_yet = Client {
        h: &h,
        route: epsilon,
    }
    .call(Method::POST, "/v3/directline/tokens/generate", None, None)
    .await;
    assert_eq!(
        not_yet.status,
        StatusCode::NOT_FOUND,
        "no epsilon before the reload"
    );
    gateway.signal("HUP");
    let added = Client {
        h: &h,
        route: epsilon,
    };
    eventually("epsilon serves after the reload", async || {
        added
            .call(Method::POST, "/v3/directline/tokens/generate", None, None)
            .await
            .status
            == StatusCode::OK
    })
    .await;
    let third = added.conversation(json!({})).await;
    let mut third_ws = open(&h, &third.stream_url).await;
    assert_eq!(
        added.post(&third, &third.token, "new bot").await.status,
        StatusCode::OK
    );
    echo_on(&mut third_ws, "new bot").await;
    assert!(
        b.activities(&third.id).len() >= 2,
        "epsilon's conversation lives upstream B"
    );

    // The stream opened before the reload is the same socket and still delivers, and
    // alpha's calls now carry the rotated secret.
    let before_rotation = a.requests().len();
    assert_eq!(
        alpha.post(&first, &first.token, "after").await.status,
        StatusCode::OK
    );
    echo_on(&mut first_ws, "after").await;
    let seen = credentials_since(&a, before_rotation);
    assert!(
        seen.contains(&SeenCredential::SecondSecret) && !seen.contains(&SeenCredential::Secret),
        "alpha uses its rotated secret: {seen:?}"
    );

    // Removing gamma closes its socket with 1001; alpha's and epsilon's stay.
    let without_gamma = bots_toml(
        &dir,
        &[
            ("alpha", ALPHA, &a, A_FIRST),
            ("epsilon", epsilon, &b, B_FIRST),
        ],
    );
    dir.write("gateway.toml", &without_gamma);
    gateway.signal("HUP");
    let close = loop {
        match tokio::time::timeout(WAIT, doomed_ws.next())
            .await
            .expect("gamma's socket closed in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));
    let reply = gamma.post(&doomed, &doomed.token, "gone").await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "gamma's routes are gone"
    );
    assert_eq!(
        alpha.post(&first, &first.token, "still here").await.status,
        StatusCode::OK
    );
    echo_on(&mut first_ws, "still here").await;
    assert_eq!(
        added.post(&third, &third.token, "me too").await.status,
        StatusCode::OK
    );
    echo_on(&mut third_ws, "me too").await;
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_config_reloads_total{result=\"ok\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_no_argument_run_serves_two_demo_bots_on_their_own_emulators() {
    let gateway = GatewayProcess::start(
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[],
    );
    let h = Harness::attach(
        // Not used for upstream checks: each demo bot has its own in-process emulator.
        Harness::emulator(EmulatorConfig::default()).await,
        &gateway,
    );
    let mut ids = Vec::new();
    for prefix in ["", "/bots/second"] {
        let route = Route { host: None, prefix };
        let client = Client { h: &h, route };
        let page = client.call(Method::GET, "/", None, None).await;
        assert_eq!(page.status, StatusCode::OK, "demo page at {prefix}/");
        // Each page names its bot.
        let name = if prefix.is_empty() {
            "default"
        } else {
            "second"
        };
        assert!(
            page.text().contains(&format!("<q id=\"bot\">{name}</q>")),
            "{prefix}/ names bot {name}"
        );
        let conversation = client.conversation(json!({})).await;
        let mut ws = open(&h, &conversation.stream_url).await;
        let reply = client.post(&conversation, &conversation.token, "hi").await;
        assert_eq!(reply.status, StatusCode::OK);
        echo_on(&mut ws, "hi").await;
        ids.push(conversation);
    }
    // Two emulators: the first bot's token means nothing to the second.
    let second = Client {
        h: &h,
        route: Route {
            host: None,
            prefix: "/bots/second",
        },
    };
    let reply = second.post(&ids[0], &ids[0].token, "crossing").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let metrics = h.metrics().await;
    for bot in ["default", "second"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("directline_gateway_tokens_total{{bot=\"{bot}\",kind=\"conversation\"}}")
            ),
            1.0
        );
    }
}
