//! The cost of signed-in mode per `tokens/generate`. Not a test. Run with:
//!   cargo bench --bench sign_in [ITERATIONS] [REQUESTS]
//!
//! verify: the CPU work a sign-in adds, in-process and without the network: the header
//! checks, the signature and the claims (`identity::verify::{front, finish}`) and the
//! pseudonym, for RS256 (2048-bit) and ES256 tokens from the emulator's OIDC issuer, with
//! the keys already cached (the steady state: a JWKS fetch happens once per max-age). The
//! baseline, in the same run, is sealing the gateway token every generate already does.
//!
//! generate: REQUESTS sequential `tokens/generate` calls over loopback to a gateway in front
//! of the emulator, without `[auth]` and with it (an RS256 token each time, keys cached),
//! interleaved in rounds; the difference of the means is what a sign-in costs end to end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use directline_emulator::oidc::{Alg, DEFAULT_AUDIENCE};
use directline_emulator::{self as emulator, EmulatorConfig, OidcIssuer};
use directline_gateway::config::{BotConfig, Config, UpstreamTarget};
use directline_gateway::identity::jwks::Key;
use directline_gateway::identity::pseudonym::Pseudonyms;
use directline_gateway::identity::settings::{AuthSettings, IdentityLimits};
use directline_gateway::identity::verify;
use directline_gateway::seal::{ClientToken, Purpose, Sealer};
use directline_gateway::secret::Secret;
use directline_gateway::server;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use tokio::net::TcpListener;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const TOKEN_KEY: &str = "bench-token-key-0123456789abcdef0123456789";
const PSEUDONYM_KEY: &str = "bench-pseudonym-key-0123456789abcdef012345";

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let iterations = args.first().copied().unwrap_or(20_000);
    let requests = args.get(1).copied().unwrap_or(2_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(iterations, requests));
}

fn settings(issuer: &OidcIssuer) -> AuthSettings {
    AuthSettings {
        issuer: issuer.issuer(),
        audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        jwks_url: None,
        user_claim: "sub".into(),
        name_claim: Some("name".into()),
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        leeway: Duration::from_secs(60),
        pseudonym_key: Secret::new(PSEUDONYM_KEY),
        limits: IdentityLimits::default(),
    }
}

/// Mean nanoseconds of `work` over `iterations`, after a tenth as many warm-up runs.
fn time(iterations: usize, mut work: impl FnMut()) -> f64 {
    for _ in 0..iterations / 10 {
        work();
    }
    let started = Instant::now();
    for _ in 0..iterations {
        work();
    }
    started.elapsed().as_nanos() as f64 / iterations as f64
}

async fn run(iterations: usize, requests: usize) {
    let issuer = OidcIssuer::spawn(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let settings = settings(&issuer);
    let jwks = issuer.jwks();
    let key = |kid: &str| {
        let entry = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .unwrap();
        Key::from_jwk(entry).unwrap()
    };
    let pseudonyms = Pseudonyms::new(PSEUDONYM_KEY);
    println!("## verify ({iterations} iterations each, one thread, keys cached)\n");
    println!("| work | mean per call |");
    println!("|---|---|");
    for alg in [Alg::Rs256, Alg::Es256] {
        let token = issuer
            .token("alice")
            .alg(alg)
            .claim("name", serde_json::json!("Alice"))
            .sign();
        let key = key(&issuer.current_kid(alg));
        let ns = time(iterations, || {
            let front = verify::front(&token, 8192, &settings.algorithms).unwrap();
            let claims = verify::finish(&token, &front, &key, &settings).unwrap();
            std::hint::black_box(pseudonyms.user_id(&settings.issuer, &claims.user));
        });
        println!(
            "| {alg:?} token: front + signature + claims + pseudonym | {:.1} µs |",
            ns / 1000.0
        );
    }
    let sealer = Sealer::new(TOKEN_KEY, &[]).unwrap();
    let claims = ClientToken {
        bot: "default".into(),
        conversation_id: "JqvzojbEjLT4rEMW4HoUIx-us".into(),
        user_id: pseudonyms.user_id(&settings.issuer, "alice"),
        upstream_token: "x".repeat(200),
        expires_at: 1_900_000_000,
        name: None,
    };
    let ns = time(iterations, || {
        std::hint::black_box(sealer.seal(Purpose::ClientToken, &claims));
    });
    println!(
        "| baseline: sealing the gateway token (every generate) | {:.1} µs |",
        ns / 1000.0
    );

    // End to end over loopback: the same gateway process shape, with and without [auth].
    let upstream = emulator::spawn(
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        EmulatorConfig {
            secret: emulator::Secret::new(SECRET),
            ..EmulatorConfig::default()
        },
    );
    let start = |auth: Option<Arc<AuthSettings>>| {
        let mut config = Config {
            token_key: Some(Secret::new(TOKEN_KEY)),
            ..Config::single(BotConfig {
                upstream: UpstreamTarget::Url(url::Url::parse(&upstream.base_url()).unwrap()),
                secret: Some(Secret::new(SECRET)),
                auth,
                ..BotConfig::default()
            })
        };
        config.bot_mut().rate_limits.sessions.per_minute = 0;
        async move {
            let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
            server::start_on(config, client, admin).await.unwrap()
        }
    };
    let open = start(None).await;
    let signed = start(Some(Arc::new(settings.clone()))).await;
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let token = issuer.token("alice").sign();
    let generate = async |base: &str, bearer: Option<&str>| {
        let mut request = http::Request::post(format!("{base}/v3/directline/tokens/generate"));
        if let Some(bearer) = bearer {
            request = request.header("authorization", format!("Bearer {bearer}"));
        }
        let response = http
            .request(request.body(Full::new(Bytes::new())).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.into_body().collect().await.unwrap();
    };
    let open_base = format!("http://{}", open.client_addr);
    let signed_base = format!("http://{}", signed.client_addr);
    // Warm-up: connections pooled, keys fetched.
    for _ in 0..50 {
        generate(&open_base, None).await;
        generate(&signed_base, Some(&token)).await;
    }
    let rounds = 10;
    let per_round = (requests / rounds).max(1);
    let (mut open_total, mut signed_total) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..per_round {
            generate(&open_base, None).await;
        }
        open_total += started.elapsed();
        let started = Instant::now();
        for _ in 0..per_round {
            generate(&signed_base, Some(&token)).await;
        }
        signed_total += started.elapsed();
    }
    let count = (rounds * per_round) as f64;
    let open_us = open_total.as_secs_f64() * 1e6 / count;
    let signed_us = signed_total.as_secs_f64() * 1e6 / count;
    println!(
        "\n## tokens/generate over loopback ({} sequential calls each, {rounds} interleaved rounds)\n",
        rounds * per_round
    );
    println!("| gateway | mean per call |");
    println!("|---|---|");
    println!("| without [auth] | {open_us:.0} µs |");
    println!("| with [auth], RS256 | {signed_us:.0} µs |");
    println!("| difference | {:+.0} µs |", signed_us - open_us);
    open.shutdown().await;
    signed.shutdown().await;
    upstream.shutdown();
    issuer.shutdown();
}
