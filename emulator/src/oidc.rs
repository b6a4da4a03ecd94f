//! A small OpenID Connect issuer for tests and demos: discovery, a JWKS whose keys rotate,
//! and ID tokens minted on request, honest and forged.
//!
//! It is a real HTTP server (loopback, plain HTTP) speaking the two documents a relying
//! party reads: `{issuer}/.well-known/openid-configuration` (OpenID Connect Discovery 1.0
//! §4) and the JWKS at its `jwks_uri` (RFC 7517). Tokens are compact JWS (RFC 7515) signed
//! with ring: RS256 with one of three fixed 2048-bit test keys (ring cannot generate RSA
//! keys; the PEM files beside this module are test keys and nothing else) and ES256 with a
//! P-256 key generated at start and at each rotation.
//!
//! It never signs anything it is not asked to: there is no login page and no user store;
//! a test says who the token is for. What it counts (discovery and JWKS fetches) is what a
//! test asserts about a relying party's caching.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::PrivatePkcs8KeyDer;
use rustls::pki_types::pem::PemObject;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The audience tokens carry unless a test says otherwise.
pub const DEFAULT_AUDIENCE: &str = "api://directline-gateway";

/// Where the issuer serves its JWKS, below the issuer URL.
const JWKS_PATH: &str = "/discovery/keys";
const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The fixed RSA test keys, used in turn as rotations go on.
const RSA_KEYS: [&str; 3] = [
    include_str!("oidc_keys/rsa-1.pem"),
    include_str!("oidc_keys/rsa-2.pem"),
    include_str!("oidc_keys/rsa-3.pem"),
];

/// The signature algorithms the issuer signs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// A running issuer. Cheap to clone; every clone controls the same server.
#[derive(Clone)]
pub struct OidcIssuer {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for OidcIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcIssuer")
            .field("issuer", &self.issuer())
            .finish_non_exhaustive()
    }
}

struct Inner {
    addr: SocketAddr,
    keys: Mutex<Keys>,
    discovery_fetches: AtomicU64,
    jwks_fetches: AtomicU64,
    /// While set, new connections are dropped unanswered and requests on open ones get 503:
    /// what a relying party sees of an issuer that is down.
    down: AtomicBool,
    /// `Cache-Control: max-age` on the JWKS, in seconds; `None` sends no such header.
    max_age: Mutex<Option<u64>>,
    shutdown: watch::Sender<bool>,
    rng: SystemRandom,
    /// `GET /demo/token?sub=NAME` signs a token for NAME (the emulator's `--issuer-listen`,
    /// loopback only); off for tests, which say themselves what they want signed.
    demo_tokens: bool,
}

struct SigningKey {
    kid: String,
    alg: Alg,
    material: Material,
    /// The public JWK, as published.
    jwk: Value,
}

enum Material {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

struct Keys {
    /// The keys the JWKS lists now, and that sign new tokens (one per algorithm).
    rsa: Arc<SigningKey>,
    ec: Arc<SigningKey>,
    /// Keys a rotation took out of the JWKS; they can still sign, so a test can present a
    /// token signed by a key the issuer no longer vouches for.
    retired: Vec<Arc<SigningKey>>,
    /// Keys published beside the current ones without signing yet (a rollover announced
    /// ahead, as Entra ID does).
    upcoming: Vec<Arc<SigningKey>>,
    generation: usize,
}

impl OidcIssuer {
    /// Serves on `listener` (bind `127.0.0.1:0`) in a background task; returns at once.
    pub fn spawn(listener: TcpListener) -> Self {
        Self::start(listener, false)
    }

    /// [`OidcIssuer::spawn`], and `GET /demo/token?sub=NAME` answers a token for NAME
    /// (with `name` = NAME) as plain text: the signed-in demo's stand-in for a login page.
    pub fn spawn_demo(listener: TcpListener) -> Self {
        Self::start(listener, true)
    }

    fn start(listener: TcpListener, demo_tokens: bool) -> Self {
        let addr = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let rng = SystemRandom::new();
        let keys = Keys {
            rsa: Arc::new(rsa_key(0)),
            ec: Arc::new(ec_key(0, &rng)),
            retired: Vec::new(),
            upcoming: Vec::new(),
            generation: 0,
        };
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            addr,
            keys: Mutex::new(keys),
            discovery_fetches: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
            down: AtomicBool::new(false),
            max_age: Mutex::new(None),
            shutdown,
            rng,
            demo_tokens,
        });
        tokio::spawn(accept(listener, inner.clone()));
        Self { inner }
    }

    /// The issuer identifier (`iss`), `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> String {
        format!("http://{}", self.inner.addr)
    }

    /// Where the JWKS is served (also given by discovery).
    pub fn jwks_url(&self) -> String {
        format!("{}{JWKS_PATH}", self.issuer())
    }

    /// A token for `subject`, signed RS256 by the current key, for [`DEFAULT_AUDIENCE`],
    /// valid for 10 minutes; change any of that on the request before [`TokenRequest::sign`].
    pub fn token(&self, subject: &str) -> TokenRequest {
        let now = unix_now();
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer()));
        claims.insert("sub".into(), json!(subject));
        claims.insert("aud".into(), json!(DEFAULT_AUDIENCE));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + 600));
        TokenRequest {
            issuer: self.clone(),
            claims,
            alg: Alg::Rs256,
            kid: None,
            signer: Signer::Current,
        }
    }

    /// The `kid` of the key that signs `alg` tokens now.
    pub fn current_kid(&self, alg: Alg) -> String {
        let keys = self.inner.keys();
        match alg {
            Alg::Rs256 => keys.rsa.kid.clone(),
            Alg::Es256 => keys.ec.kid.clone(),
        }
    }

    /// The JWKS as served now (`{"keys": [...]}`), for benchmarks that verify offline.
    pub fn jwks(&self) -> Value {
        let keys: Vec<Value> = self
            .inner
            .keys()
            .published()
            .map(|key| key.jwk.clone())
            .collect();
        json!({ "keys": keys })
    }

    /// Every `kid` the JWKS lists now.
    pub fn published_kids(&self) -> Vec<String> {
        self.inner
            .keys()
            .published()
            .map(|key| key.kid.clone())
            .collect()
    }

    /// Rotates both signing keys at once: new keys sign and are published, the old ones
    /// leave the JWKS (they can still sign for [`TokenRequest::signed_by_retired`]).
    pub fn rotate(&self) {
        let mut keys = self.inner.keys();
        keys.generation += 1;
        let generation = keys.generation;
        let rsa = std::mem::replace(&mut keys.rsa, Arc::new(rsa_key(generation)));
        let ec = std::mem::replace(&mut keys.ec, Arc::new(ec_key(generation, &self.inner.rng)));
        keys.retired.push(rsa);
        keys.retired.push(ec);
        keys.upcoming.clear();
    }

    /// Publishes a next RS256 key beside the current ones without signing with it yet.
    pub fn announce_next_key(&self) -> String {
        let mut keys = self.inner.keys();
        let generation = keys.generation + 1 + keys.upcoming.len();
        let key = Arc::new(rsa_key(generation));
        let kid = key.kid.clone();
        keys.upcoming.push(key);
        kid
    }

    /// Takes the issuer down (connections dropped, 503 on open ones) or brings it back.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
    }

    /// `Cache-Control: max-age` sent with the JWKS from now on; `None` sends none.
    pub fn set_jwks_max_age(&self, seconds: Option<u64>) {
        *self
            .inner
            .max_age
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = seconds;
    }

    /// How many times the JWKS was served (requests while down are not counted).
    pub fn jwks_fetches(&self) -> u64 {
        self.inner.jwks_fetches.load(Ordering::SeqCst)
    }

    /// How many times the discovery document was served.
    pub fn discovery_fetches(&self) -> u64 {
        self.inner.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Stops accepting and closes connections.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

impl Inner {
    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.keys
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl Keys {
    fn published(&self) -> impl Iterator<Item = &Arc<SigningKey>> {
        [&self.rsa, &self.ec].into_iter().chain(&self.upcoming)
    }
}

/// Which key signs a [`TokenRequest`].
enum Signer {
    Current,
    /// The most recently retired key of the request's algorithm.
    Retired,
    /// A key the issuer never published (a forger's), under a published `kid`.
    Stranger,
    /// `alg: none` and an empty signature.
    Unsigned,
    /// HS256 keyed with the published JWK of the current RSA key: the algorithm-confusion
    /// forgery that works on verifiers that take `alg` from the token.
    HmacWithPublicKey,
}

/// A token being put together; [`TokenRequest::sign`] makes it.
pub struct TokenRequest {
    issuer: OidcIssuer,
    claims: Map<String, Value>,
    alg: Alg,
    kid: Option<String>,
    signer: Signer,
}

impl TokenRequest {
    pub fn alg(mut self, alg: Alg) -> Self {
        self.alg = alg;
        self
    }

    /// Puts this `kid` in the header whatever key signs.
    pub fn kid(mut self, kid: &str) -> Self {
        self.kid = Some(kid.to_owned());
        self
    }

    /// Sets (or replaces) a claim.
    pub fn claim(mut self, name: &str, value: Value) -> Self {
        self.claims.insert(name.to_owned(), value);
        self
    }

    /// Leaves a claim out.
    pub fn without(mut self, name: &str) -> Self {
        self.claims.remove(name);
        self
    }

    pub fn audience(self, audience: &str) -> Self {
        self.claim("aud", json!(audience))
    }

    pub fn issued_by(self, issuer: &str) -> Self {
        self.claim("iss", json!(issuer))
    }

    /// `exp` this many seconds from now (negative: already expired).
    pub fn expires_in(self, seconds: i64) -> Self {
        let exp = unix_now() as i64 + seconds;
        self.claim("exp", json!(exp))
    }

    /// `nbf` this many seconds from now (positive: not valid yet).
    pub fn not_before_in(self, seconds: i64) -> Self {
        let nbf = unix_now() as i64 + seconds;
        self.claim("nbf", json!(nbf))
    }

    pub fn signed_by_retired(mut self) -> Self {
        self.signer = Signer::Retired;
        self
    }

    pub fn signed_by_stranger(mut self) -> Self {
        self.signer = Signer::Stranger;
        self
    }

    pub fn unsigned(mut self) -> Self {
        self.signer = Signer::Unsigned;
        self
    }

    pub fn hmac_with_public_key(mut self) -> Self {
        self.signer = Signer::HmacWithPublicKey;
        self
    }

    /// The compact JWS: `header.payload.signature`, base64url without padding.
    pub fn sign(self) -> String {
        let inner = &self.issuer.inner;
        let (key, alg_name): (Option<Arc<SigningKey>>, &str) = {
            let keys = inner.keys();
            let current = match self.alg {
                Alg::Rs256 => keys.rsa.clone(),
                Alg::Es256 => keys.ec.clone(),
            };
            match self.signer {
                Signer::Current => (Some(current), self.alg.name()),
                Signer::Retired => {
                    let retired = keys
                        .retired
                        .iter()
                        .rev()
                        .find(|key| key.alg == self.alg)
                        .cloned()
                        .expect("a rotation retired a key of this algorithm");
                    (Some(retired), self.alg.name())
                }
                Signer::Stranger => {
                    let stranger = match self.alg {
                        Alg::Rs256 => rsa_key(keys.generation + 1),
                        Alg::Es256 => ec_key(keys.generation + 1, &inner.rng),
                    };
                    let kid = current.kid.clone();
                    (
                        Some(Arc::new(SigningKey { kid, ..stranger })),
                        self.alg.name(),
                    )
                }
                Signer::Unsigned => (Some(current), "none"),
                Signer::HmacWithPublicKey => (Some(keys.rsa.clone()), "HS256"),
            }
        };
        let key = key.expect("a key was chosen");
        let kid = self.kid.clone().unwrap_or_else(|| key.kid.clone());
        let header = json!({ "alg": alg_name, "typ": "JWT", "kid": kid });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(self.claims).to_string())
        );
        let signature = match self.signer {
            Signer::Unsigned => Vec::new(),
            Signer::HmacWithPublicKey => {
                let secret = key.jwk.to_string();
                let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
                ring::hmac::sign(&hmac, signing_input.as_bytes())
                    .as_ref()
                    .to_vec()
            }
            _ => key.sign(signing_input.as_bytes(), &inner.rng),
        };
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

impl SigningKey {
    fn sign(&self, message: &[u8], rng: &SystemRandom) -> Vec<u8> {
        match &self.material {
            Material::Rsa(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(&signature::RSA_PKCS1_SHA256, rng, message, &mut signature)
                    .expect("RSA signing of a short message");
                signature
            }
            Material::Ec(pair) => pair
                .sign(rng, message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
        }
    }
}

/// The RSA test key for `generation` (three keys used in turn), with its own `kid`.
fn rsa_key(generation: usize) -> SigningKey {
    let pem = RSA_KEYS[generation % RSA_KEYS.len()];
    let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).expect("test key is PKCS#8 PEM");
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).expect("test key is RSA");
    let public: signature::RsaPublicKeyComponents<Vec<u8>> = pair.public().into();
    let kid = format!("rsa-{generation}");
    let jwk = json!({
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": URL_SAFE_NO_PAD.encode(&public.n),
        "e": URL_SAFE_NO_PAD.encode(&public.e),
    });
    SigningKey {
        kid,
        alg: Alg::Rs256,
        material: Material::Rsa(pair),
        jwk,
    }
}

/// A fresh P-256 key with its own `kid`.
fn ec_key(generation: usize, rng: &SystemRandom) -> SigningKey {
    let alg = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, rng).expect("P-256 key generation");
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), rng).expect("generated key parses");
    // The uncompressed point: 0x04 ‖ x ‖ y, 32 bytes each.
    let point = pair.public_key().as_ref();
    let kid = format!("ec-{generation}-{}", URL_SAFE_NO_PAD.encode(&point[1..7]));
    let jwk = json!({
        "kty": "EC",
        "use": "sig",
        "crv": "P-256",
        "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    SigningKey {
        kid,
        alg: Alg::Es256,
        material: Material::Ec(pair),
        jwk,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn accept(listener: TcpListener, inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.wait_for(|down| *down) => return,
        };
        let Ok((tcp, _)) = accepted else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        if inner.down.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let inner = inner.clone();
        tokio::spawn(async move {
            let mut shutdown = inner.shutdown.subscribe();
            let service = service_fn(move |request| {
                let inner = inner.clone();
                async move { Ok::<_, Infallible>(answer(&inner, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.wait_for(|down| *down) => {}
            }
        });
    }
}

fn answer(inner: &Arc<Inner>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if inner.down.load(Ordering::SeqCst) {
        return respond(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "down"}),
            None,
        );
    }
    let issuer = format!("http://{}", inner.addr);
    match (request.method().as_str(), request.uri().path()) {
        ("GET", DISCOVERY_PATH) => {
            inner.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            let document = json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}{JWKS_PATH}"),
                "authorization_endpoint": format!("{issuer}/authorize"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            });
            respond(StatusCode::OK, document, None)
        }
        ("GET", JWKS_PATH) => {
            inner.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = inner
                .keys()
                .published()
                .map(|key| key.jwk.clone())
                .collect();
            let max_age = *inner
                .max_age
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            respond(StatusCode::OK, json!({ "keys": keys }), max_age)
        }
        ("GET", DEMO_TOKEN_PATH) if inner.demo_tokens => demo_token(inner, request),
        _ => respond(StatusCode::NOT_FOUND, json!({"error": "not_found"}), None),
    }
}

/// Where the demo issuer hands out tokens (`--issuer-listen` only).
const DEMO_TOKEN_PATH: &str = "/demo/token";

/// A token for `?sub=NAME` (1 to 64 of a-z, A-Z, 0-9, `-`, `_`, `.`), as plain text.
fn demo_token(inner: &Arc<Inner>, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let subject = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("sub="))
        .unwrap_or("alice");
    let valid = (1..=64).contains(&subject.len())
        && subject
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid {
        return respond(
            StatusCode::BAD_REQUEST,
            json!({"error": "sub: 1 to 64 of a-z, A-Z, 0-9, -, _, ."}),
            None,
        );
    }
    let token = OidcIssuer {
        inner: inner.clone(),
    }
    .token(subject)
    .claim("name", json!(subject))
    .sign();
    let mut response = Response::new(Full::new(Bytes::from(token)));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

fn respond(status: StatusCode, body: Value, max_age: Option<u64>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if let Some(seconds) = max_age {
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_str(&format!("public, max-age={seconds}"))
                .unwrap_or_else(|_| http::HeaderValue::from_static("no-cache")),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(token: &str) -> (Value, Value, Vec<u8>) {
        let mut split = token.split('.');
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).unwrap();
        let header = serde_json::from_slice(&decode(split.next().unwrap())).unwrap();
        let claims = serde_json::from_slice(&decode(split.next().unwrap())).unwrap();
        let signature = decode(split.next().unwrap());
        assert!(split.next().is_none());
        (header, claims, signature)
    }

    /// The issuer's signatures verify with ring against the JWK it publishes.
    #[tokio::test]
    async fn tokens_verify_against_the_published_keys_and_forgeries_do_not() {
        let issuer = OidcIssuer::spawn(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let jwks: Vec<Value> = issuer
            .inner
            .keys()
            .published()
            .map(|k| k.jwk.clone())
            .collect();
        let verify = |token: &str| -> bool {
            let (header, _, signature) = parts(token);
            let input = token.rsplit_once('.').unwrap().0;
            let Some(jwk) = jwks.iter().find(|k| k["kid"] == header["kid"]) else {
                return false;
            };
            let b64 = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
            match header["alg"].as_str().unwrap() {
                "RS256" => signature::RsaPublicKeyComponents {
                    n: b64("n"),
                    e: b64("e"),
                }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    input.as_bytes(),
                    &signature,
                )
                .is_ok(),
                "ES256" => {
                    let mut point = vec![4];
                    point.extend(b64("x"));
                    point.extend(b64("y"));
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(input.as_bytes(), &signature)
                        .is_ok()
                }
                _ => false,
            }
        };
        assert!(verify(&issuer.token("alice").sign()));
        assert!(verify(&issuer.token("alice").alg(Alg::Es256).sign()));
        assert!(!verify(&issuer.token("alice").signed_by_stranger().sign()));
        assert!(!verify(
            &issuer
                .token("alice")
                .alg(Alg::Es256)
                .signed_by_stranger()
                .sign()
        ));
        let (header, claims, signature) = parts(&issuer.token("bob").unsigned().sign());
        assert_eq!(header["alg"], "none");
        assert_eq!(claims["sub"], "bob");
        assert!(signature.is_empty());
        let (header, _, _) = parts(&issuer.token("bob").hmac_with_public_key().sign());
        assert_eq!(header["alg"], "HS256");
        assert_eq!(header["kid"], issuer.current_kid(Alg::Rs256));
        issuer.shutdown();
    }

    #[tokio::test]
    async fn rotation_replaces_the_published_keys() {
        let issuer = OidcIssuer::spawn(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let before = issuer.published_kids();
        let old_rsa = issuer.current_kid(Alg::Rs256);
        issuer.rotate();
        let after = issuer.published_kids();
        assert_eq!(after.len(), 2);
        assert!(before.iter().all(|kid| !after.contains(kid)));
        let (header, _, _) = parts(&issuer.token("a").signed_by_retired().sign());
        assert_eq!(header["kid"], old_rsa.as_str());
        let next = issuer.announce_next_key();
        assert!(issuer.published_kids().contains(&next));
        issuer.shutdown();
    }
}
