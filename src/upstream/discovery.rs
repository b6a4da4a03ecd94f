//! Discovering a Copilot Studio agent's Direct Line host (ARCHITECTURE §10): `GET
//! {environment}/powervirtualagents/regionalchannelsettings?api-version=…` names it in
//! `channelUrlsById.directline`. Done in the background from start (the gateway does not
//! wait for it), for a bot a reload added or changed, every
//! [`REDISCOVER_EVERY`](super::base::REDISCOVER_EVERY), and after the host stopped
//! answering. The answer is hostile until checked: bounded, and only a Direct Line host form
//! the gateway accepts is used (never an arbitrary URL), so stream URL pinning then pins to
//! it. A failure never stops the gateway: the last good host keeps serving, or requests get
//! 503 with `Retry-After` while nothing was ever found; readiness is not touched.

use std::sync::Arc;
use std::time::{Duration, Instant};

use url::Url;

use super::answer_body::read_body_within;
use super::base::{Discovered, Environment};
use super::call::UpstreamCall;
use super::client::Upstream;
use crate::config::is_loopback;
use crate::error::GatewayError;
use crate::live::{Bot, Live, LiveSettings};
use crate::metrics::{Metrics, NO_HOST};

/// The regional settings are a few hundred bytes; anything past this is not them.
const MAX_SETTINGS_BYTES: usize = 64 * 1024;
/// The longest `directline` URL taken from them.
const MAX_URL_BYTES: usize = 512;
/// How often the loop looks for due discoveries: cheap (a lock per Copilot Studio bot),
/// and a reload's new bot waits at most this long for its first one.
const POLL: Duration = Duration::from_millis(250);

/// Why an answer was not used; each is a `discoveries_total{result}` label.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unusable {
    #[error("not the regional channel settings JSON, or no channelUrlsById.directline URL")]
    Invalid,
    #[error("{0:?} is not a Direct Line host")]
    ForeignHost(String),
}

/// Runs discoveries as they fall due, for as long as the gateway runs.
pub async fn run(gateway: Arc<dyn LiveSettings>) {
    loop {
        round(&*gateway).await;
        tokio::time::sleep(POLL).await;
    }
}

/// Discovers every bot whose discovery is due, concurrently (one environment that hangs
/// must not hold up another bot's), each bounded by the default upstream timeout.
pub async fn round(gateway: &dyn LiveSettings) {
    let live = gateway.live_owned();
    let now = Instant::now();
    let due = live.bots.iter().filter_map(|bot| {
        let discovered = bot.upstream.discovered()?;
        let environment = bot.environment.as_deref()?;
        discovered.due(now).then(|| {
            discovered.begin(now);
            discover(gateway.metrics(), &live, bot, discovered, environment)
        })
    });
    futures_util::future::join_all(due).await;
}

/// One discovery of `bot`'s host: asked, checked, installed, counted and logged.
async fn discover(
    metrics: &Metrics,
    live: &Live,
    bot: &Bot,
    discovered: &Discovered,
    environment: &Environment,
) {
    let path = environment.endpoint.regional_settings_path();
    let outcome = ask(live, bot, &path, metrics).await.and_then(|base| {
        let tls = environment.client.tls().clone();
        let connect = live.config.timeouts.connect;
        discovered
            .succeeded(base.clone(), |base| Upstream::new(base, connect, tls))
            .map(|changed| (base, changed))
            .map_err(|_| Failure::Invalid(Unusable::Invalid))
    });
    let result = match &outcome {
        Ok(_) => "ok",
        Err(failure) => failure.label(),
    };
    metrics
        .discoveries
        .with_label_values(&[&*bot.name, result])
        .inc();
    let settings_url = format!(
        "{}{}",
        environment.endpoint.origin().as_str().trim_end_matches('/'),
        path
    );
    match outcome {
        Ok((base, changed)) => {
            let host = host_label(&base);
            if changed {
                // One series per bot: the host before this one goes (also the one of a
                // token endpoint a reload replaced, which this slot never knew).
                for old in hosts_of(&metrics.discovered_upstream, &bot.name) {
                    if old != host && old != NO_HOST {
                        let _ = metrics
                            .discovered_upstream
                            .remove_label_values(&[&*bot.name, &old]);
                    }
                }
                tracing::info!(bot = &*bot.name, url = %settings_url, host, "Direct Line host discovered");
            }
            metrics
                .discovered_upstream
                .with_label_values(&[&*bot.name, &host])
                .set(1);
        }
        Err(failure) => {
            discovered.failed();
            let retry_in = discovered.retry_after_secs(Instant::now());
            let keeping = discovered.base().map(|b| host_label(&b));
            tracing::warn!(
                bot = &*bot.name,
                url = %settings_url,
                cause = %failure,
                retry_in_secs = retry_in,
                serving = keeping.as_deref().unwrap_or("nothing yet: requests get 503"),
                "Direct Line host discovery failed"
            );
        }
    }
}

/// Why a discovery failed, for its log line and metric.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{}", .0.log_line())]
    Unreachable(GatewayError),
    #[error("the environment answered {0}")]
    Refused(u16),
    #[error("{0}")]
    Invalid(Unusable),
}

impl Failure {
    fn label(&self) -> &'static str {
        match self {
            Failure::Unreachable(_) => "unreachable",
            Failure::Refused(_) => "refused",
            Failure::Invalid(Unusable::Invalid) => "invalid",
            Failure::Invalid(Unusable::ForeignHost(_)) => "foreign_host",
        }
    }
}

async fn ask(live: &Live, bot: &Bot, path: &str, metrics: &Metrics) -> Result<Url, Failure> {
    let timeout = live.config.timeouts.default;
    let reply = UpstreamCall::environment(bot, path, "discovery", timeout, MAX_SETTINGS_BYTES)
        .send(metrics)
        .await
        .map_err(Failure::Unreachable)?;
    let super::call::Answer::Streaming(response) = reply.answer else {
        return Err(Failure::Invalid(Unusable::Invalid));
    };
    if !response.status().is_success() {
        return Err(Failure::Refused(response.status().as_u16()));
    }
    let (_, body) = read_body_within(response, timeout, MAX_SETTINGS_BYTES)
        .await
        .map_err(Failure::Unreachable)?;
    let body = body.ok_or(Failure::Invalid(Unusable::Invalid))?;
    // A loopback Direct Line host is a test set-up (the emulator); from an environment that
    // is not itself on loopback it can only be an answer meant to aim the secret elsewhere.
    let loopback_allowed = bot
        .environment
        .as_deref()
        .and_then(|environment| environment.endpoint.url().host_str())
        .is_some_and(is_loopback);
    directline_base(&body, loopback_allowed).map_err(Failure::Invalid)
}

/// The Direct Line base named by a regional channel settings answer
/// (`{"channelUrlsById": {"directline": "https://europe.directline.botframework.com/"}}`),
/// if it is one the gateway accepts: https to `directline.botframework.com`, `…azure.us`
/// or `…azure.cn` or one region label below them, on the default port, with no path,
/// query, fragment or user; or, when `loopback_allowed` (the token endpoint is itself on
/// loopback: tests, the emulator), http(s) to a loopback address.
pub fn directline_base(body: &[u8], loopback_allowed: bool) -> Result<Url, Unusable> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|_| Unusable::Invalid)?;
    let urls = json
        .get("channelUrlsById")
        .and_then(serde_json::Value::as_object)
        .ok_or(Unusable::Invalid)?;
    let text = urls
        .get("directline")
        .or_else(|| {
            urls.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("directline"))
                .map(|(_, v)| v)
        })
        .and_then(serde_json::Value::as_str)
        .filter(|t| !t.is_empty() && t.len() <= MAX_URL_BYTES)
        .ok_or(Unusable::Invalid)?;
    let url = Url::parse(text).map_err(|_| Unusable::Invalid)?;
    let host = url
        .host_str()
        .ok_or(Unusable::Invalid)?
        .to_ascii_lowercase();
    let foreign = || Unusable::ForeignHost(host.clone());
    let plain = url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && matches!(url.path(), "" | "/");
    if !plain {
        return Err(foreign());
    }
    let accepted = match url.scheme() {
        "https" if url.port().is_none() => {
            is_directline_host(&host) || (loopback_allowed && is_loopback(&host))
        }
        "https" | "http" => loopback_allowed && is_loopback(&host),
        _ => false,
    };
    if !accepted {
        return Err(foreign());
    }
    Ok(url)
}

/// `directline.botframework.com` or `<region>.directline.botframework.com` (and the same
/// under the government and China clouds).
fn is_directline_host(host: &str) -> bool {
    const ROOTS: [&str; 3] = [
        "directline.botframework.com",
        "directline.botframework.azure.us",
        "directline.botframework.azure.cn",
    ];
    ROOTS.iter().any(|root| {
        host == *root
            || host
                .strip_suffix(root)
                .and_then(|rest| rest.strip_suffix('.'))
                .is_some_and(is_region_label)
    })
}

fn is_region_label(label: &str) -> bool {
    (1..=63).contains(&label.len())
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The `host` labels `bot` has in `family` now.
fn hosts_of(family: &prometheus::IntGaugeVec, bot: &str) -> Vec<String> {
    use prometheus::core::Collector;
    let label = |metric: &prometheus::proto::Metric, name: &str| {
        metric
            .get_label()
            .iter()
            .find(|pair| pair.name() == name)
            .map(|pair| pair.value().to_owned())
    };
    family
        .collect()
        .iter()
        .flat_map(|f| f.get_metric().iter())
        .filter(|m| label(m, "bot").as_deref() == Some(bot))
        .filter_map(|m| label(m, "host"))
        .collect()
}

/// The metric label for a base: its host, with the port when it has one (loopback only).
fn host_label(base: &Url) -> String {
    match (base.host_str(), base.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_owned(),
        (None, _) => NO_HOST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(url: &str) -> Vec<u8> {
        serde_json::json!({"channelUrlsById": {"directline": url, "webchat": "https://x.test/"}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn direct_line_hosts_are_taken() {
        for good in [
            "https://directline.botframework.com/",
            "https://europe.directline.botframework.com/",
            "https://india.directline.botframework.com",
            "https://unitedstates.directline.botframework.com/",
            "https://directline.botframework.azure.us/",
            "https://gcc.directline.botframework.azure.us/",
            "http://127.0.0.1:3978/",
            "http://localhost:1/",
        ] {
            let base =
                directline_base(&answer(good), true).unwrap_or_else(|e| panic!("{good}: {e}"));
            assert!(matches!(base.path(), "/" | ""), "{good}");
        }
    }

    /// A loopback host is taken only from an environment that is itself on loopback: from
    /// a real one, `http://127.0.0.1:<port>/` would be dialled with the secret.
    #[test]
    fn a_loopback_host_is_refused_unless_the_token_endpoint_is_on_loopback() {
        for loopback in [
            "http://127.0.0.1:3978/",
            "http://localhost:1/",
            "https://127.0.0.1/",
            "http://[::1]:80/",
        ] {
            assert!(
                matches!(
                    directline_base(&answer(loopback), false),
                    Err(Unusable::ForeignHost(_))
                ),
                "{loopback}"
            );
        }
        assert!(
            directline_base(
                &answer("https://europe.directline.botframework.com/"),
                false
            )
            .is_ok()
        );
    }

    #[test]
    fn anything_else_is_refused() {
        let foreign = [
            "https://evil.example/",
            "https://directline.botframework.com.evil.example/",
            "https://evildirectline.botframework.com/",
            "https://a.b.directline.botframework.com/",
            "https://europe.directline.botframework.com:8443/",
            "https://europe.directline.botframework.com/v3/directline",
            "https://europe.directline.botframework.com/?x=1",
            "https://user@europe.directline.botframework.com/",
            "http://europe.directline.botframework.com/",
            "http://10.0.0.1/",
            "wss://europe.directline.botframework.com/",
            "https://-x.directline.botframework.com/",
        ];
        for bad in foreign {
            assert!(
                matches!(
                    directline_base(&answer(bad), true),
                    Err(Unusable::ForeignHost(_))
                ),
                "{bad}"
            );
        }
        let long = format!("https://{}.directline.botframework.com/", "a".repeat(600));
        for invalid in [
            b"not json".to_vec(),
            b"{}".to_vec(),
            br#"{"channelUrlsById": {"webchat": "https://x/"}}"#.to_vec(),
            br#"{"channelUrlsById": {"directline": 7}}"#.to_vec(),
            br#"{"channelUrlsById": {"directline": "not a url"}}"#.to_vec(),
            answer(&long),
        ] {
            assert_eq!(
                directline_base(&invalid, true),
                Err(Unusable::Invalid),
                "{}",
                String::from_utf8_lossy(&invalid)
            );
        }
    }
}
