//! Signed-in users (ARCHITECTURE §11): with `[auth]`, tokens/generate mints tokens
//! only for people a real OpenID Connect issuer (the emulator's `OidcIssuer`, on
//! 127.0.0.1:0) signed in, under a stable pseudonym; forged, stale and foreign tokens are
//! refused with their reason counted; the issuer's keys are cached, refreshed and kept as
//! an RP should; the issuer's token never reaches Direct Line.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use directline_emulator::OidcIssuer;
use directline_emulator::oidc::{Alg, DEFAULT_AUDIENCE};
use directline_gateway::config::{Config, Env, Overrides};
use directline_gateway::identity::settings::{AuthSettings, IdentityLimits};
use directline_gateway::secret::Secret;
use http::{Method, Request, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::{Harness, Reply, eventually, metric};
use tokio::net::TcpListener;

const PSEUDONYM_KEY: &str = "test-pseudonym-key-0123456789abcdef0123";
const GENERATE: &str = "/v3/directline/tokens/generate";
const REFRESH: &str = "/v3/directline/tokens/refresh";

async fn issuer() -> OidcIssuer {
    OidcIssuer::spawn(TcpListener::bind("127.0.0.1:0").await.unwrap())
}

/// `[auth]` for `issuer` as a test writes it in code; `edit` changes what a test is about.
fn auth(issuer: &OidcIssuer, edit: impl FnOnce(&mut AuthSettings)) -> Arc<AuthSettings> {
    let mut settings = AuthSettings {
        issuer: issuer.issuer(),
        audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        jwks_url: None,
        user_claim: "sub".to_owned(),
        name_claim: Some("name".to_owned()),
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        leeway: Duration::from_secs(60),
        pseudonym_key: Secret::new(PSEUDONYM_KEY),
        limits: IdentityLimits::default(),
    };
    edit(&mut settings);
    Arc::new(settings)
}

/// A gateway in signed-in mode in front of a fresh emulator. Session rate limits are off:
/// these tests call tokens/generate far more often than a person would.
async fn gateway(auth: Arc<AuthSettings>) -> Harness {
    gateway_with(auth, |_| {}).await
}

async fn gateway_with(auth: Arc<AuthSettings>, edit: impl FnOnce(&mut Config)) -> Harness {
    Harness::builder()
        .config(|config| {
            config.bot_mut().rate_limits.sessions.per_minute = 0;
            config.bot_mut().auth = Some(auth);
            edit(config);
        })
        .start()
        .await
}

async fn generate(h: &Harness, jwt: Option<&str>, body: Option<Value>) -> Reply {
    h.request(Method::POST, GENERATE, jwt, body).await
}

/// The `user` the gateway sent Direct Line on its latest tokens/generate.
fn upstream_user(h: &Harness) -> Value {
    h.emulator
        .requests()
        .iter()
        .rev()
        .find(|r| r.path == GENERATE)
        .and_then(|r| r.body.clone())
        .expect("a tokens/generate reached the emulator")["user"]
        .clone()
}

fn refusals(text: &str, reason: &str) -> f64 {
    metric(
        text,
        &format!("directline_gateway_auth_refusals_total{{bot=\"default\",reason=\"{reason}\"}}"),
    )
}

fn assert_refused(reply: &Reply, status: StatusCode, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text());
    let json = reply.json();
    assert!(json["error"]["code"].is_string(), "{what}: {json}");
    assert!(json["error"]["message"].is_string(), "{what}: {json}");
}

#[tokio::test]
async fn an_anonymous_caller_gets_401_and_nothing_goes_upstream() {
    let idp = issuer().await;
    let h = gateway(auth(&idp, |_| {})).await;
    let reply = generate(&h, None, None).await;
    assert_refused(&reply, StatusCode::UNAUTHORIZED, "anonymous");
    assert_eq!(reply.error_code(), "BadArgument");
    assert!(reply.headers.contains_key("www-authenticate"));
    assert!(
        h.emulator.requests().iter().all(|r| r.path != GENERATE),
        "a refused caller cost an upstream call"
    );
    assert_eq!(refusals(&h.metrics().await, "idp_missing"), 1.0);
    // Without [auth] the same call mints a token as before.
    let open = Harness::start().await;
    assert_eq!(generate(&open, None, None).await.status, StatusCode::OK);
}

/// Every token an attacker or a broken client can present, and the check that stops it.
#[tokio::test]
async fn every_bad_token_is_refused_with_its_reason_counted() {
    let idp = issuer().await;
    let h = gateway(auth(&idp, |_| {})).await;
    // A good sign-in first, so the keys are cached and the refusals below are about the
    // token, not about fetching.
    let good = idp.token("alice").sign();
    assert_eq!(generate(&h, Some(&good), None).await.status, StatusCode::OK);
    let huge = format!("{good}{}", "A".repeat(9000));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            idp.token("alice").expires_in(-600).sign(),
            "idp_expired",
        ),
        (
            "not yet valid",
            idp.token("alice").not_before_in(600).sign(),
            "idp_not_yet_valid",
        ),
        (
            "wrong issuer",
            idp.token("alice")
                .issued_by("https://evil.example.com")
                .sign(),
            "idp_issuer",
        ),
        (
            "issuer as a list",
            idp.token("alice")
                .claim("iss", json!([idp.issuer()]))
                .sign(),
            "idp_issuer",
        ),
        (
            "wrong audience",
            idp.token("alice").audience("api://another-app").sign(),
            "idp_audience",
        ),
        (
            "no audience",
            idp.token("alice").without("aud").sign(),
            "idp_audience",
        ),
        (
            "no expiry",
            idp.token("alice").without("exp").sign(),
            "idp_claims",
        ),
        (
            "no subject",
            idp.token("alice").without("sub").sign(),
            "idp_claims",
        ),
        (
            "alg none",
            idp.token("alice").unsigned().sign(),
            "idp_algorithm",
        ),
        (
            "HS256 keyed with the public key",
            idp.token("alice").hmac_with_public_key().sign(),
            "idp_algorithm",
        ),
        (
            "ES256 header on the RSA key's kid",
            idp.token("alice")
                .alg(Alg::Es256)
                .kid(&idp.current_kid(Alg::Rs256))
                .sign(),
            "idp_algorithm",
        ),
        (
            "unknown kid",
            idp.token("alice").kid("no-such-key").sign(),
            "idp_unknown_kid",
        ),
        (
            "a stranger's key under a published kid",
            idp.token("alice").signed_by_stranger().sign(),
            "idp_signature",
        ),
        ("garbage", "not-a-jwt".to_owned(), "idp_malformed"),
        ("oversized", huge, "idp_too_large"),
    ];
    for (what, token, _) in &cases {
        let reply = generate(&h, Some(token), None).await;
        assert_refused(&reply, StatusCode::UNAUTHORIZED, what);
        assert!(
            !reply.text().contains(token.as_str()),
            "{what}: token echoed"
        );
    }
    let text = h.metrics().await;
    let mut expected: HashMap<&str, f64> = HashMap::new();
    for (_, _, reason) in &cases {
        *expected.entry(reason).or_default() += 1.0;
    }
    for (reason, count) in expected {
        assert_eq!(refusals(&text, reason), count, "{reason}");
    }
    assert!(!text.contains(&good), "a token in the metrics");
    // Only the good sign-in reached Direct Line.
    let generates = h
        .emulator
        .requests()
        .iter()
        .filter(|r| r.path == GENERATE)
        .count();
    assert_eq!(generates, 1);
}

/// The same person gets the same Direct Line id every time and on every replica, also one
/// with another token key (the id is not derived from it); another person another id.
#[tokio::test]
async fn the_user_id_is_a_stable_pseudonym_across_gateways() {
    let idp = issuer().await;
    let one = gateway(auth(&idp, |_| {})).await;
    let two = gateway_with(auth(&idp, |_| {}), |config| {
        config.token_key = Some(Secret::new("another-token-key-0123456789abcdef0123456"));
    })
    .await;
    let alice = idp
        .token("alice")
        .claim("name", json!("Alice Example"))
        .sign();
    assert_eq!(
        generate(&one, Some(&alice), None).await.status,
        StatusCode::OK
    );
    let first = upstream_user(&one);
    let id = first["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("dl_"), "{id}");
    assert!(!id.contains("alice"), "the raw claim is exposed: {id}");
    assert_eq!(first["name"], "Alice Example");
    // Again, with a fresh token of hers (ES256 this time) and a name the page made up: the
    // id is the same, and the name is the issuer's.
    let again = idp
        .token("alice")
        .alg(Alg::Es256)
        .claim("name", json!("Alice Example"))
        .sign();
    let body = json!({"user": {"id": "dl_chosen-by-the-page", "name": "Mallory"}});
    assert_eq!(
        generate(&one, Some(&again), Some(body)).await.status,
        StatusCode::OK
    );
    assert_eq!(upstream_user(&one)["id"], id.as_str());
    assert_eq!(upstream_user(&one)["name"], "Alice Example");
    assert_eq!(
        generate(&two, Some(&alice), None).await.status,
        StatusCode::OK
    );
    assert_eq!(upstream_user(&two)["id"], id.as_str(), "another replica");
    let bob = idp.token("bob").sign();
    assert_eq!(
        generate(&two, Some(&bob), None).await.status,
        StatusCode::OK
    );
    let bob_id = upstream_user(&two)["id"].as_str().unwrap().to_owned();
    assert_ne!(bob_id, id);
    assert!(
        upstream_user(&two).get("name").is_none(),
        "bob's token has no name"
    );
}

/// The activity `from.id` of a signed-in user is their pseudonym, whatever the page says,
/// and nothing of the issuer's token reaches Direct Line on any call.
#[tokio::test]
async fn the_identity_token_never_reaches_direct_line() {
    let idp = issuer().await;
    let h = gateway(auth(&idp, |_| {})).await;
    let jwt = idp.token("alice").sign();
    let reply = generate(&h, Some(&jwt), None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let id = upstream_user(&h)["id"].as_str().unwrap().to_owned();
    let json = reply.json();
    let token = json["token"].as_str().unwrap();
    let conversation_id = json["conversationId"].as_str().unwrap();
    let started = h
        .request(
            Method::POST,
            "/v3/directline/conversations",
            Some(token),
            Some(json!({"user": {}})),
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let token = started.json()["token"].as_str().unwrap().to_owned();
    let path = format!("/v3/directline/conversations/{conversation_id}/activities");
    let posted = h
        .request(
            Method::POST,
            &path,
            Some(&token),
            Some(json!({"type": "message", "from": {"id": "dl_someone-else"}, "text": "hi"})),
        )
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{}", posted.text());
    let stored = h.emulator.activities(conversation_id);
    assert_eq!(stored[0]["from"]["id"], id.as_str());
    let refreshed = h.request(Method::POST, REFRESH, Some(&token), None).await;
    assert_eq!(refreshed.status, StatusCode::OK);
    let signature = jwt.rsplit('.').next().unwrap();
    let requests = h.emulator.requests();
    // tokens/generate, conversations, activities (the live refresh needs no upstream call).
    assert_eq!(requests.len(), 3, "{requests:?}");
    for request in requests {
        for (name, value) in &request.headers {
            assert!(!value.contains(signature), "{} {name}", request.path);
            assert_ne!(name, "x-identity-token");
        }
        let body = request.body.map(|b| b.to_string()).unwrap_or_default();
        assert!(!body.contains(signature), "{}: {body}", request.path);
        assert!(
            !body.contains("alice"),
            "{}: the raw claim: {body}",
            request.path
        );
    }
}

/// The issuer rotates its keys: a token of the new key verifies once the gateway refreshed
/// (at most one fetch per cooldown), and the key rotated out stops verifying.
#[tokio::test]
async fn rotation_at_the_issuer_takes_effect_after_one_refresh() {
    let idp = issuer().await;
    let settings = auth(&idp, |s| {
        s.limits.jwks_cooldown = Duration::from_millis(300)
    });
    let h = gateway(settings).await;
    assert_eq!(
        generate(&h, Some(&idp.token("alice").sign()), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(idp.jwks_fetches(), 1);
    assert_eq!(idp.discovery_fetches(), 1);
    idp.rotate();
    let fresh = idp.token("alice").sign();
    eventually("the new key verifies", async || {
        generate(&h, Some(&fresh), None).await.status == StatusCode::OK
    })
    .await;
    // Refused at once inside the cooldown, then one fetch: never one per attempt.
    assert_eq!(idp.jwks_fetches(), 2);
    assert_eq!(
        idp.discovery_fetches(),
        1,
        "jwks_uri is kept once discovered"
    );
    let es256 = idp.token("alice").alg(Alg::Es256).sign();
    assert_eq!(
        generate(&h, Some(&es256), None).await.status,
        StatusCode::OK
    );
    let old = idp.token("alice").signed_by_retired().sign();
    let reply = generate(&h, Some(&old), None).await;
    assert_refused(&reply, StatusCode::UNAUTHORIZED, "rotated-out key");
    assert!(refusals(&h.metrics().await, "idp_unknown_kid") >= 1.0);
}

/// A flood of tokens with invented `kid`s costs the issuer one JWKS fetch per cooldown, also
/// when the flood is the very first traffic and arrives all at once.
#[tokio::test]
async fn a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown() {
    let idp = issuer().await;
    let h = Arc::new(gateway(auth(&idp, |_| {})).await);
    let mut flood = Vec::new();
    for n in 0..40 {
        let h = h.clone();
        let token = idp.token("mallory").kid(&format!("invented-{n}")).sign();
        flood.push(tokio::spawn(async move {
            generate(&h, Some(&token), None).await.status
        }));
    }
    for request in flood {
        assert_eq!(request.await.unwrap(), StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        idp.jwks_fetches(),
        1,
        "the concurrent flood shared one fetch"
    );
    for n in 0..40 {
        let token = idp.token("mallory").kid(&format!("more-{n}")).sign();
        assert_eq!(
            generate(&h, Some(&token), None).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(idp.jwks_fetches(), 1, "within the cooldown no fetch at all");
    assert_eq!(refusals(&h.metrics().await, "idp_unknown_kid"), 80.0);
    // Real users are served all along.
    let good = idp.token("alice").sign();
    assert_eq!(generate(&h, Some(&good), None).await.status, StatusCode::OK);
}

/// While the issuer is down, cached keys keep verifying (also past their freshness, with
/// failed refreshes counted); a gateway that never fetched answers 503, not 401.
#[tokio::test]
async fn an_issuer_that_is_down_leaves_cached_keys_working() {
    let idp = issuer().await;
    let settings = auth(&idp, |s| {
        // Always stale, so every sign-in past the cooldown tries a refresh.
        s.limits.jwks_min_ttl = Duration::ZERO;
        s.limits.jwks_default_ttl = Duration::ZERO;
        s.limits.jwks_cooldown = Duration::from_millis(100);
        s.limits.fetch_timeout = Duration::from_secs(2);
    });
    let h = gateway(settings.clone()).await;
    let alice = idp.token("alice").sign();
    assert_eq!(
        generate(&h, Some(&alice), None).await.status,
        StatusCode::OK
    );
    idp.set_down(true);
    let unreachable =
        "directline_gateway_jwks_fetches_total{bot=\"default\",result=\"unreachable\"}";
    eventually("a refresh failed while the issuer was down", async || {
        assert_eq!(
            generate(&h, Some(&alice), None).await.status,
            StatusCode::OK
        );
        metric(&h.metrics().await, unreachable) >= 1.0
    })
    .await;
    assert_eq!(
        generate(&h, Some(&alice), None).await.status,
        StatusCode::OK
    );
    let unknown = idp.token("alice").kid("not-cached").sign();
    let reply = generate(&h, Some(&unknown), None).await;
    assert_refused(&reply, StatusCode::UNAUTHORIZED, "unknown kid while down");
    let cold = gateway(settings).await;
    let reply = generate(&cold, Some(&alice), None).await;
    assert_refused(&reply, StatusCode::SERVICE_UNAVAILABLE, "no keys yet");
    assert_eq!(reply.error_code(), "ServiceUnavailable");
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(refusals(&cold.metrics().await, "idp_unavailable"), 1.0);
    idp.set_down(false);
    eventually(
        "the cold gateway fetches once the issuer is back",
        async || generate(&cold, Some(&alice), None).await.status == StatusCode::OK,
    )
    .await;
}

/// Durable resume in signed-in mode (ARCHITECTURE §12): refreshing an expired gateway
/// token needs a current sign-in of the same person in X-Identity-Token.
#[tokio::test]
async fn resuming_an_expired_token_needs_a_sign_in_of_the_same_person() {
    let idp = issuer().await;
    let h = Harness::builder()
        .token_ttl(Duration::from_secs(2))
        .config(|config| {
            config.bot_mut().rate_limits.sessions.per_minute = 0;
            config.bot_mut().auth = Some(auth(&idp, |_| {}));
        })
        .start()
        .await;
    let alice = idp.token("alice").sign();
    let reply = generate(&h, Some(&alice), None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let json = reply.json();
    let token = json["token"].as_str().unwrap().to_owned();
    let conversation = json["conversationId"].as_str().unwrap().to_owned();
    // A live token refreshes without any proof, as before.
    let live = h.request(Method::POST, REFRESH, Some(&token), None).await;
    assert_eq!(live.status, StatusCode::OK, "{}", live.text());
    let refresh = |proof: Option<String>| {
        let request = Request::builder().method(Method::POST).uri(h.url(REFRESH));
        let request = match proof {
            Some(proof) => request.header("x-identity-token", proof),
            None => request,
        };
        h.send(support::api_request(request, Some(&token), None))
    };
    let activities = format!("/v3/directline/conversations/{conversation}/activities");
    eventually("the gateway token expired", async || {
        let reply = h
            .request(Method::GET, &activities, Some(&token), None)
            .await;
        reply.status == StatusCode::FORBIDDEN && reply.error_code() == "TokenExpired"
    })
    .await;
    let reply = refresh(None).await;
    assert_refused(&reply, StatusCode::UNAUTHORIZED, "no proof");
    let reply = refresh(Some(idp.token("bob").sign())).await;
    assert_refused(&reply, StatusCode::FORBIDDEN, "another person's proof");
    let reply = refresh(Some(idp.token("alice").expires_in(-600).sign())).await;
    assert_refused(&reply, StatusCode::UNAUTHORIZED, "an expired proof");
    let text = h.metrics().await;
    assert_eq!(refusals(&text, "idp_proof_missing"), 1.0);
    assert_eq!(refusals(&text, "idp_other_user"), 1.0);
    assert_eq!(refusals(&text, "idp_expired"), 1.0);
    let reply = refresh(Some(idp.token("alice").sign())).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let resumed = reply.json()["token"].as_str().unwrap().to_owned();
    let reply = h
        .request(Method::GET, &activities, Some(&resumed), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// SSO inside a conversation is activity traffic: the bot's OAuthCard reaches the client
/// and the client's signin/tokenExchange invoke reaches the bot, both intact.
#[tokio::test]
async fn sso_cards_and_token_exchange_invokes_pass_intact() {
    let idp = issuer().await;
    let h = gateway(auth(&idp, |_| {})).await;
    let reply = generate(&h, Some(&idp.token("alice").sign()), None).await;
    let json = reply.json();
    let conversation = json["conversationId"].as_str().unwrap().to_owned();
    let started = h
        .request(
            Method::POST,
            "/v3/directline/conversations",
            json["token"].as_str(),
            None,
        )
        .await;
    assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
    let token = started.json()["token"].as_str().unwrap().to_owned();
    let card = json!({
        "contentType": "application/vnd.microsoft.card.oauth",
        "content": {
            "text": "Please sign in",
            "connectionName": "aad-connection",
            "buttons": [{"type": "signin", "title": "Sign in", "value": "https://token.botframework.com/api/oauth/signin?signin=abc"}],
            "tokenExchangeResource": {
                "id": "exchange-1",
                "uri": "api://botid-1234/access_as_user",
                "providerId": "provider-1"
            }
        }
    });
    h.emulator
        .send_bot_activity(
            &conversation,
            json!({"type": "message", "attachments": [card.clone()], "inputHint": "acceptingInput"}),
        )
        .expect("conversation exists");
    let path = format!("/v3/directline/conversations/{conversation}/activities");
    let history = h.request(Method::GET, &path, Some(&token), None).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text());
    let history = history.json();
    let oauth = history["activities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["attachments"].is_array())
        .expect("the OAuthCard arrived");
    assert_eq!(oauth["attachments"][0], card);
    let value = json!({
        "id": "exchange-1",
        "connectionName": "aad-connection",
        "token": "eyJ0eXAiOiJKV1QifQ.eyJhdWQiOiJhcGk6Ly9ib3RpZC0xMjM0In0.c2lnbmF0dXJl"
    });
    let invoke = json!({
        "type": "invoke",
        "name": "signin/tokenExchange",
        "from": {"id": "whatever"},
        "value": value.clone(),
    });
    let posted = h
        .request(Method::POST, &path, Some(&token), Some(invoke))
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{}", posted.text());
    let recorded = h
        .emulator
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .and_then(|r| r.body)
        .expect("the invoke reached Direct Line");
    assert_eq!(recorded["type"], "invoke");
    assert_eq!(recorded["name"], "signin/tokenExchange");
    assert_eq!(recorded["value"], value);
}

/// SIGHUP's path: a changed `[auth]` applies to the next sign-in.
#[tokio::test]
async fn a_reload_applies_a_changed_auth_section() {
    let idp = issuer().await;
    let h = gateway(auth(&idp, |_| {})).await;
    let for_new_app = idp.token("alice").audience("api://new-app").sign();
    let reply = generate(&h, Some(&for_new_app), None).await;
    assert_refused(&reply, StatusCode::UNAUTHORIZED, "before the reload");
    let running = h.gateway();
    let mut next = running.gateway.live().config.clone();
    next.bot_mut().auth = Some(auth(&idp, |s| s.audiences = vec!["api://new-app".into()]));
    running.reload(Ok(next)).expect("reload accepted");
    assert_eq!(
        generate(&h, Some(&for_new_app), None).await.status,
        StatusCode::OK
    );
    let for_old_app = idp.token("alice").sign();
    let reply = generate(&h, Some(&for_old_app), None).await;
    assert_refused(&reply, StatusCode::UNAUTHORIZED, "the old audience");
    // Removing [auth] turns signed-in mode off.
    let mut open = running.gateway.live().config.clone();
    open.bot_mut().auth = None;
    running.reload(Ok(open)).expect("reload accepted");
    assert_eq!(generate(&h, None, None).await.status, StatusCode::OK);
}

struct MapEnv(HashMap<&'static str, String>);

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

fn load(text: &str, env: &MapEnv) -> Result<Config, String> {
    let dir = std::env::temp_dir().join(format!(
        "dlgw-signed-in-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let loaded = Config::load(Some(&path), &Overrides::default(), env).map_err(|e| e.to_string());
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

/// The file form of `[auth]` and `[bots.auth]`, and the refusals that name their line.
#[test]
fn auth_sections_in_the_file() {
    let env = MapEnv(HashMap::from([(
        "DIRECTLINE_GATEWAY_PSEUDONYM_KEY",
        PSEUDONYM_KEY.to_owned(),
    )]));
    let config = load(
        "[auth]\nissuer = \"https://login.microsoftonline.com/tenant/v2.0\"\naudience = [\"api://a\", \"api://b\"]\nname_claim = \"name\"\nleeway = \"30s\"\n",
        &env,
    )
    .unwrap();
    let auth = config.bots[0].auth.as_ref().unwrap();
    assert_eq!(auth.audiences, ["api://a", "api://b"]);
    assert_eq!(auth.leeway, Duration::from_secs(30));
    assert_eq!(config.bots[0].auth.as_ref().unwrap().issuer, auth.issuer);
    let bots = load(
        "[[bots]]\nname = \"support\"\nupstream = \"embedded\"\n[bots.auth]\nissuer = \"https://idp.example.com\"\naudience = \"x\"\nuser_claim = \"oid\"\n[[bots]]\nname = \"open\"\nupstream = \"embedded\"\npath_prefix = \"/open\"\n",
        &env,
    )
    .unwrap();
    assert_eq!(bots.bots[0].auth.as_ref().unwrap().user_claim, "oid");
    assert!(bots.bots[1].auth.is_none());
    for (text, expected) in [
        (
            "[auth]\nissuer = \"http://idp.example.com\"\naudience = \"x\"\n",
            "gateway.toml:2:1: auth.issuer",
        ),
        (
            "[auth]\nissuer = \"https://idp.example.com\"\naudience = \"x\"\nalgorithms = [\"HS256\"]\n",
            "gateway.toml:4:1: auth.algorithms",
        ),
        (
            "[auth]\nissuer = \"https://idp.example.com\"\naudience = \"x\"\nsecret = \"s\"\n",
            "unknown field",
        ),
        (
            "user_ids = \"caller\"\n[auth]\nissuer = \"https://idp.example.com\"\naudience = \"x\"\n",
            "user_ids",
        ),
        (
            "[auth]\nissuer = \"https://idp.example.com\"\naudience = \"x\"\n[[bots]]\nname = \"a\"\nupstream = \"embedded\"\n",
            "[auth] is set at the top level",
        ),
        (
            "[[bots]]\nname = \"a\"\nupstream = \"embedded\"\n[bots.auth]\nissuer = \"https://idp.example.com\"\naudience = \"x\"\nleeway = \"1h\"\n",
            "bots.auth.leeway",
        ),
    ] {
        let error = load(text, &env).unwrap_err();
        assert!(error.contains(expected), "{text}\n→ {error}");
    }
    let error = load(
        "[auth]\nissuer = \"https://idp.example.com\"\naudience = \"x\"\n",
        &MapEnv(HashMap::new()),
    )
    .unwrap_err();
    assert!(
        error.contains("DIRECTLINE_GATEWAY_PSEUDONYM_KEY"),
        "{error}"
    );
}
