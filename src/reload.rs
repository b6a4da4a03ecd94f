//! Turning a validated configuration into the settings a gateway serves with ([`Live`]), at
//! start and on every reload (SIGHUP, a watched file): bots with their secrets and upstream
//! clients, the token keys and the keys a reload retired. It sits with the upstream (it
//! builds each bot's client and policy) and knows nothing of listeners or requests.

use std::sync::Arc;

use crate::config::{BotConfig, Config, ConfigError, UpstreamTarget};
use crate::identity::Identity;
use crate::live::{Bot, Live};
use crate::metrics::Metrics;
use crate::seal::{KeyError, Sealer};
use crate::secret::Secret;
use crate::upstream::base::{DirectlineBase, Discovered, Environment};
use crate::upstream::client::Upstream;
use directline_emulator::EmulatorHandle;

/// Why settings could not be built from a configuration that parsed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("bot {bot}: no Direct Line secret")]
    NoSecret { bot: String },
    #[error("bot {bot}: no embedded emulator running")]
    NoEmulator { bot: String },
    #[error("bot {bot}: the embedded emulator's address {url} is no URL")]
    EmulatorUrl {
        bot: String,
        url: String,
        #[source]
        source: url::ParseError,
    },
    #[error("bot {bot}: upstream_ca_file: {message}")]
    UpstreamCa { bot: String, message: String },
    #[error("bot {bot}: the upstream URL cannot be used")]
    UpstreamUrl { bot: String },
    #[error("bot {bot}: policy.webhook: {message}")]
    PolicyWebhook { bot: String, message: String },
    #[error("token key: {0}")]
    TokenKey(#[from] KeyError),
}

/// Why a reload was refused; the settings in force keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Build(#[from] BuildError),
    #[error("{0} cannot change without a restart")]
    NeedsRestart(&'static str),
}

/// Turns a validated configuration into the settings a gateway serves with. On a reload
/// `previous` carries over what must survive: the upstream client (and its pool) when the
/// upstream is unchanged, and the token keys retired within their overlap.
pub fn build_live(
    config: Config,
    emulators: &[(String, EmulatorHandle)],
    previous: Option<&Live>,
    metrics: &Metrics,
) -> Result<Live, BuildError> {
    let mut bots = config
        .bots
        .clone()
        .into_iter()
        .map(|settings| build_bot(settings, &config, emulators, previous, metrics))
        .collect::<Result<Vec<_>, _>>()?;
    crate::live::most_specific_first(&mut bots);
    let now = crate::clock::unix_seconds();
    let mut retired_keys: Vec<(Secret, u64)> = previous
        .map(|p| {
            p.retired_keys
                .iter()
                .filter(|(_, until)| *until > now)
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    if let Some(previous) = previous
        && let Some(old) = &previous.config.token_key
        && config.token_key.as_ref().map(Secret::expose) != Some(old.expose())
    {
        retired_keys.push((old.clone(), now + config.token_key_overlap.as_secs()));
    }
    let sealer = match &config.token_key {
        Some(key) => {
            let previous_keys: Vec<String> = config
                .previous_token_keys
                .iter()
                .map(|k| k.expose().to_owned())
                .collect();
            let mut sealer = Sealer::new(key.expose(), &previous_keys)?;
            for (key, until) in &retired_keys {
                sealer = sealer.with_retired(key.expose(), *until);
            }
            Arc::new(sealer)
        }
        None => match previous {
            // Keep the per-process key: a reload must not invalidate every token.
            Some(previous) if previous.config.token_key.is_none() => previous.sealer.clone(),
            _ => {
                // A first run on the embedded emulator needs no key yet: say so once, as
                // information. In front of a real Direct Line it is a deployment mistake.
                let embedded_only = config
                    .bots
                    .iter()
                    .all(|bot| bot.upstream == UpstreamTarget::Embedded);
                if embedded_only {
                    tracing::info!(
                        "no token key configured: a random one per process (set DIRECTLINE_GATEWAY_TOKEN_KEY or token_key_file before running several replicas)"
                    );
                } else {
                    tracing::warn!(
                        "no token key configured: tokens are sealed with a random per-process key, so other replicas and restarts cannot open them"
                    );
                }
                Arc::new(Sealer::ephemeral())
            }
        },
    };
    Ok(Live {
        config,
        sealer,
        retired_keys,
        bots,
    })
}

/// One bot's secret and upstream client; an unchanged upstream keeps its connection pool,
/// and an unchanged Copilot Studio environment its discovered host.
fn build_bot(
    settings: BotConfig,
    config: &Config,
    emulators: &[(String, EmulatorHandle)],
    previous: Option<&Live>,
    metrics: &Metrics,
) -> Result<Arc<Bot>, BuildError> {
    let bot = || settings.name.clone();
    let (upstream_url, secret) = match &settings.upstream {
        UpstreamTarget::Url(url) => (Some(url.clone()), settings.secret.clone()),
        UpstreamTarget::Discovered => (None, settings.secret.clone()),
        UpstreamTarget::Embedded => {
            let (_, emulator) = emulators
                .iter()
                .find(|(name, _)| *name == settings.name)
                .ok_or_else(|| BuildError::NoEmulator { bot: bot() })?;
            let url = emulator.base_url();
            (
                Some(
                    url::Url::parse(&url).map_err(|source| BuildError::EmulatorUrl {
                        bot: bot(),
                        url,
                        source,
                    })?,
                ),
                Some(Secret::new(emulator.secret().expose())),
            )
        }
    };
    // Only a Copilot Studio token endpoint can stand in for the secret.
    if secret.is_none() && settings.token_endpoint.is_none() {
        return Err(BuildError::NoSecret { bot: bot() });
    }
    let same = previous
        .filter(|p| p.config.timeouts.connect == config.timeouts.connect)
        .and_then(|p| p.bot(&settings.name))
        .filter(|p| p.settings.upstream_ca_file == settings.upstream_ca_file);
    let tls = || {
        crate::upstream::client::tls_client_config(settings.upstream_ca_file.as_deref()).map_err(
            |message| BuildError::UpstreamCa {
                bot: bot(),
                message,
            },
        )
    };
    let client = |url: &url::Url| {
        Upstream::new(url, config.timeouts.connect, tls()?)
            .map(Arc::new)
            .map_err(|_| BuildError::UpstreamUrl { bot: bot() })
    };
    let environment = match &settings.token_endpoint {
        None => None,
        Some(endpoint) => match same
            .and_then(|p| p.environment.as_ref())
            .filter(|e| e.endpoint == *endpoint)
        {
            Some(kept) => Some(kept.clone()),
            None => Some(Arc::new(Environment {
                client: client(&endpoint.origin())?,
                endpoint: endpoint.clone(),
            })),
        },
    };
    let kept = same
        .filter(|p| {
            p.settings.upstream == settings.upstream
                && p.settings.token_endpoint == settings.token_endpoint
        })
        .map(|p| p.upstream.clone());
    let upstream = match (kept, upstream_url) {
        (Some(kept), _) => kept,
        (None, Some(url)) => DirectlineBase::Fixed(client(&url)?),
        // Empty until the discovery loop (started with the gateway) fills it.
        (None, None) => DirectlineBase::Discovered(Arc::new(Discovered::new())),
    };
    let identity = build_identity(&settings, config, previous, metrics)?;
    let policy = match &settings.policy {
        None => None,
        Some(wanted) => match previous
            .and_then(|p| p.bot(&settings.name))
            .and_then(|p| p.policy.clone())
            .filter(|kept| kept.serves(wanted))
        {
            Some(kept) => Some(kept),
            None => Some(Arc::new(
                crate::policy::Policy::new(wanted.clone()).map_err(|message| {
                    BuildError::PolicyWebhook {
                        bot: bot(),
                        message,
                    }
                })?,
            )),
        },
    };
    Ok(Arc::new(Bot {
        policy,
        name: Arc::from(settings.name.as_str()),
        settings,
        secret,
        upstream,
        identity,
        environment,
        credential: Default::default(),
    }))
}

/// A bot's signed-in mode; an unchanged `[auth]` keeps the previous one and its cached keys.
fn build_identity(
    settings: &BotConfig,
    config: &Config,
    previous: Option<&Live>,
    metrics: &Metrics,
) -> Result<Option<Arc<Identity>>, BuildError> {
    let Some(auth) = &settings.auth else {
        return Ok(None);
    };
    let ca_file = settings.upstream_ca_file.as_deref();
    let kept = previous
        .and_then(|p| p.bot(&settings.name))
        .and_then(|bot| bot.identity.clone())
        .filter(|identity| identity.serves(auth, ca_file));
    if let Some(identity) = kept {
        return Ok(Some(identity));
    }
    // The issuer is reached like the upstream: ring, the webpki roots and upstream_ca_file.
    let tls = crate::upstream::client::tls_client_config(ca_file).map_err(|message| {
        BuildError::UpstreamCa {
            bot: settings.name.clone(),
            message,
        }
    })?;
    Ok(Some(Arc::new(Identity::new(
        &settings.name,
        auth.clone(),
        &tls,
        ca_file,
        config.timeouts.connect,
        metrics.jwks_fetches.clone(),
    ))))
}

pub fn bot_names(live: &Live) -> Vec<&str> {
    live.bots.iter().map(|bot| &*bot.name).collect()
}

pub fn check_reloadable(current: &Config, next: &Config) -> Result<(), ReloadError> {
    if current.listen != next.listen {
        return Err(ReloadError::NeedsRestart("listen"));
    }
    if current.admin_listen != next.admin_listen {
        return Err(ReloadError::NeedsRestart("admin_listen"));
    }
    // Embedded emulators are started with the process, one per embedded bot.
    if embedded_bots(current) != embedded_bots(next) {
        return Err(ReloadError::NeedsRestart(
            "the set of bots with upstream = \"embedded\"",
        ));
    }
    if current.workers != next.workers {
        return Err(ReloadError::NeedsRestart("workers"));
    }
    // The certificate watcher follows the files it started with.
    if current.tls != next.tls {
        return Err(ReloadError::NeedsRestart("tls"));
    }
    // The exporter thread and its tracer are built once, at start.
    if current.tracing != next.tracing {
        return Err(ReloadError::NeedsRestart("tracing"));
    }
    // The record's writer and sender threads are started once, at start.
    if current.record != next.record {
        return Err(ReloadError::NeedsRestart("record"));
    }
    // These are baked into the HTTP connection builder when the listener starts.
    let (now, then) = (&current.limits, &next.limits);
    if now.header_read_timeout != then.header_read_timeout
        || now.max_header_count != then.max_header_count
        || now.max_header_bytes != then.max_header_bytes
        || now.max_url_bytes != then.max_url_bytes
    {
        return Err(ReloadError::NeedsRestart(
            "limits.header_read_timeout, max_header_count, max_headers or max_url",
        ));
    }
    Ok(())
}

fn embedded_bots(config: &Config) -> Vec<String> {
    config
        .bots
        .iter()
        .filter(|bot| bot.upstream == UpstreamTarget::Embedded)
        .map(|bot| bot.name.clone())
        .collect()
}
