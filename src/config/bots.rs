//! The bots a configuration serves: the top-level bot (the single-bot form, and the defaults
//! every `[[bots]]` entry starts from) and each `[[bots]]` entry, validated.

use std::sync::Arc;

use url::Url;

use super::auth::{self, AuthConfigError, AuthSettings, FileAuth, Table};
use super::copilot::TokenEndpoint;
use super::errors::{ConfigError, invalid};
use super::file::{FileBot, FileConfig, FileRateLimits};
use super::sources::{ENV_SECRET, Env, Overrides};
use super::values::{
    UpstreamTarget, UserIdPolicy, parse_duration, parse_host, parse_prefix, parse_public_url,
    parse_upstream, parse_user_ids, read_trimmed, set_duration,
};
use super::{BotConfig, NO_BOT, RateLimits};
use crate::secret::Secret;

/// One place per fact: with [[bots]], what the single-bot form sets at the top level
/// belongs to each bot.
pub(super) fn refuse_top_level_bot_keys(
    file: &FileConfig,
    overrides: &Overrides,
    env: &dyn Env,
) -> Result<(), ConfigError> {
    let stray = [
        (
            "upstream",
            file.upstream.is_some() || overrides.upstream.is_some(),
        ),
        ("secret_file", file.secret_file.is_some()),
        (
            "token_endpoint",
            file.token_endpoint.is_some() || overrides.token_endpoint.is_some(),
        ),
        (ENV_SECRET, env.var(ENV_SECRET).is_some()),
        ("path_prefix", file.path_prefix.is_some()),
        (
            "public_url",
            file.public_url.is_some() || overrides.public_url.is_some(),
        ),
        ("allowed_origins", !file.allowed_origins.is_empty()),
        ("trusted_origins", !file.trusted_origins.is_empty()),
        ("allow_credentials", file.allow_credentials.is_some()),
        ("demo_page", file.demo_page.is_some()),
    ];
    match stray.iter().find(|(_, set)| *set) {
        Some((key, _)) => Err(invalid(
            "bots",
            format!("{key} is set at the top level; with [[bots]] give it to each bot"),
        )),
        None => Ok(()),
    }
}

/// The bot the top-level keys describe: the single-bot form's `default` bot, and with
/// [[bots]] the rate limits, user ids, resume window and CA file each bot starts from.
pub(super) fn top_level_bot(
    file: &FileConfig,
    overrides: &Overrides,
    env: &dyn Env,
) -> Result<BotConfig, ConfigError> {
    let mut top = BotConfig::default();
    let upstream = overrides.upstream.as_ref().or(file.upstream.as_ref());
    if let Some(upstream) = upstream {
        top.upstream = parse_upstream(upstream)?;
    }
    if let Some(endpoint) = overrides
        .token_endpoint
        .as_ref()
        .or(file.token_endpoint.as_ref())
    {
        top.token_endpoint = Some(parse_token_endpoint("token_endpoint", endpoint)?);
        top.upstream = copilot_upstream(top.upstream, upstream.is_some(), "token_endpoint")?;
    }
    if let Some(public) = overrides.public_url.as_ref().or(file.public_url.as_ref()) {
        top.public_url = Some(parse_public_url(public)?);
    }
    if let Some(prefix) = &file.path_prefix {
        top.path_prefix = parse_prefix(prefix)?;
    }
    top.secret = match env.var(ENV_SECRET) {
        Some(secret) => Some(Secret::new(secret)),
        None => match &file.secret_file {
            Some(path) => Some(Secret::new(read_trimmed(path)?)),
            None => None,
        },
    };
    // A Copilot Studio agent without web channel security needs no secret: its token
    // endpoint hands out tokens.
    if file.bots.is_empty()
        && top.secret.is_none()
        && top.upstream != UpstreamTarget::Embedded
        && top.token_endpoint.is_none()
    {
        return Err(ConfigError::MissingSecret);
    }
    top.upstream_ca_file = file.upstream_ca_file.clone();
    (top.allowed_origins, top.trusted_origins) =
        parse_origins(file.allowed_origins.clone(), file.trusted_origins.clone())?;
    top.allow_credentials = file.allow_credentials.unwrap_or(false);
    top.demo_page = file.demo_page.unwrap_or(false);
    check_credentials(top.allow_credentials, &top.allowed_origins)
        .map_err(|message| invalid("allow_credentials", message))?;
    set_duration(
        &mut top.resume_window,
        "resume_window",
        file.resume_window.clone(),
    )?;
    top.rate_limits = parse_rates(top.rate_limits, &file.rate_limits)?;
    if let Some(mode) = &file.delivery_mode {
        top.delivery_mode = super::streaming::parse_delivery_mode("delivery_mode", mode)?;
    }
    if let Some(policy) = &file.user_ids {
        top.user_ids = parse_user_ids(policy)?;
    }
    Ok(top)
}

/// `[[bots]]`, each starting from the top-level defaults; without them the top-level bot.
pub(super) fn bots(
    file: Vec<FileBot>,
    top: BotConfig,
    env: &dyn Env,
) -> Result<Vec<BotConfig>, ConfigError> {
    if file.is_empty() {
        return Ok(vec![top]);
    }
    file.into_iter()
        .map(|bot| parse_bot(bot, &top, env))
        .collect()
}

pub(super) fn parse_origins(
    allowed: Vec<String>,
    trusted: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    for origin in allowed.iter().chain(&trusted) {
        if origin != "*" && Url::parse(origin).is_err() {
            return Err(invalid("allowed_origins/trusted_origins", origin.clone()));
        }
    }
    let allowed = allowed
        .into_iter()
        .filter(|o| o != "*")
        .map(|o| o.trim_end_matches('/').to_owned())
        .collect();
    Ok((allowed, trusted))
}

/// `base` with what `file` sets; a bot's limits start from the top-level ones.
pub(super) fn parse_rates(
    base: RateLimits,
    file: &FileRateLimits,
) -> Result<RateLimits, ConfigError> {
    let mut rates = base;
    for (slot, key, per_minute, burst) in [
        (
            &mut rates.sessions,
            "rate_limits.sessions_burst",
            file.sessions_per_minute,
            file.sessions_burst,
        ),
        (
            &mut rates.activities,
            "rate_limits.activities_burst",
            file.activities_per_minute,
            file.activities_burst,
        ),
        (
            &mut rates.refresh,
            "rate_limits.refresh_burst",
            file.refresh_per_minute,
            file.refresh_burst,
        ),
        (
            &mut rates.refresh_per_ip,
            "rate_limits.refresh_per_ip_burst",
            file.refresh_per_ip_per_minute,
            file.refresh_per_ip_burst,
        ),
    ] {
        if let Some(per_minute) = per_minute {
            slot.per_minute = per_minute;
        }
        if let Some(burst) = burst {
            slot.burst = burst;
        }
        if !slot.is_unlimited() && slot.burst == 0 {
            return Err(invalid(key, "must be at least 1 when the rate is on"));
        }
    }
    Ok(rates)
}

/// A bot name: short, lower case, safe as a metric label and a log field.
pub(super) fn valid_bot_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name != NO_BOT
}

pub(super) fn parse_bot(
    file: FileBot,
    top: &BotConfig,
    env: &dyn Env,
) -> Result<BotConfig, ConfigError> {
    if !valid_bot_name(&file.name) {
        return Err(invalid(
            "bots.name",
            format!(
                "{:?}: 1 to 32 of a-z, 0-9, - and _, starting with a letter or digit, not {NO_BOT:?}",
                file.name
            ),
        ));
    }
    let name = file.name;
    let within = |error: ConfigError| match error {
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key,
            message: format!("bot {name:?}: {message}"),
        },
        other => other,
    };
    let token_endpoint = file
        .token_endpoint
        .as_deref()
        .map(|text| parse_token_endpoint("bots.token_endpoint", text))
        .transpose()
        .map_err(within)?;
    let upstream = match (&file.upstream, &token_endpoint) {
        (Some(upstream), None) => parse_upstream(upstream).map_err(within)?,
        (given, Some(_)) => {
            let parsed = match given {
                Some(upstream) => parse_upstream(upstream).map_err(within)?,
                None => UpstreamTarget::Embedded,
            };
            copilot_upstream(parsed, given.is_some(), "bots.token_endpoint").map_err(within)?
        }
        (None, None) => {
            return Err(within(invalid(
                "bots.upstream",
                "give upstream, or token_endpoint for a Copilot Studio agent",
            )));
        }
    };
    let secret = match (&file.secret_env, &file.secret_file) {
        (Some(_), Some(_)) => {
            return Err(within(invalid(
                "bots.secret_env",
                "give secret_env or secret_file, not both",
            )));
        }
        (Some(variable), None) => Some(Secret::new(env.var(variable).ok_or_else(|| {
            within(invalid(
                "bots.secret_env",
                format!("environment variable {variable} is not set"),
            ))
        })?)),
        (None, Some(path)) => Some(Secret::new(read_trimmed(path)?)),
        (None, None) => None,
    };
    if secret.is_none() && upstream != UpstreamTarget::Embedded && token_endpoint.is_none() {
        return Err(within(invalid(
            "bots.secret_file",
            "a bot with a real upstream needs secret_env or secret_file (or a Copilot Studio token_endpoint)",
        )));
    }
    let host = file
        .host
        .as_deref()
        .map(parse_host)
        .transpose()
        .map_err(within)?;
    let path_prefix = match &file.path_prefix {
        Some(prefix) => parse_prefix(prefix).map_err(within)?,
        None => String::new(),
    };
    let public_url = file
        .public_url
        .as_deref()
        .map(parse_public_url)
        .transpose()
        .map_err(within)?;
    let (allowed_origins, trusted_origins) =
        parse_origins(file.allowed_origins, file.trusted_origins).map_err(within)?;
    let allow_credentials = file.allow_credentials.unwrap_or(false);
    check_credentials(allow_credentials, &allowed_origins)
        .map_err(|message| within(invalid("bots.allow_credentials", message)))?;
    let rate_limits = match &file.rate_limits {
        Some(rates) => parse_rates(top.rate_limits.clone(), rates).map_err(within)?,
        None => top.rate_limits.clone(),
    };
    let user_ids = match &file.user_ids {
        Some(policy) => parse_user_ids(policy).map_err(within)?,
        None => top.user_ids,
    };
    let mut resume_window = top.resume_window;
    set_duration(&mut resume_window, "bots.resume_window", file.resume_window).map_err(within)?;
    let auth = parse_auth(file.auth, Table::Bot, env).map_err(within)?;
    let delivery_mode = match &file.delivery_mode {
        Some(mode) => {
            super::streaming::parse_delivery_mode("bots.delivery_mode", mode).map_err(within)?
        }
        None => top.delivery_mode,
    };
    if auth.is_some() && user_ids == UserIdPolicy::Caller {
        return Err(within(invalid(
            "bots.user_ids",
            "\"caller\" and [bots.auth] exclude each other: signed-in users get the pseudonym",
        )));
    }
    let policy = match file.policy {
        Some(own) => Some(Arc::new(super::policy::section(own).map_err(within)?)),
        None => top.policy.clone(),
    };
    Ok(BotConfig {
        policy,
        auth,
        resume_window,
        host,
        path_prefix,
        upstream,
        secret,
        public_url,
        allowed_origins,
        trusted_origins,
        rate_limits,
        user_ids,
        upstream_ca_file: file
            .upstream_ca_file
            .or_else(|| top.upstream_ca_file.clone()),
        token_endpoint,
        allow_credentials,
        demo_page: file.demo_page.unwrap_or(false),
        name,
        delivery_mode,
    })
}

/// Credentials with every origin allowed would let any site use a visitor's cookies for
/// this gateway: `allow_credentials` needs the list of origins it is for.
pub(super) fn check_credentials(
    allow_credentials: bool,
    allowed_origins: &[String],
) -> Result<(), &'static str> {
    if allow_credentials && allowed_origins.is_empty() {
        return Err("needs allowed_origins: credentials for any origin are refused");
    }
    Ok(())
}

/// A plain-http upstream off this machine would carry the secret (and every user's
/// messages) in clear: refused unless `allow_http_upstream = true` says the network is
/// trusted (a private link, a sidecar).
pub(super) fn plain_http_checked(
    bots: Vec<BotConfig>,
    allow_http_upstream: Option<bool>,
) -> Result<Vec<BotConfig>, ConfigError> {
    if allow_http_upstream == Some(true) {
        return Ok(bots);
    }
    for bot in &bots {
        if let UpstreamTarget::Url(url) = &bot.upstream
            && url.scheme() == "http"
            && !url.host_str().is_some_and(super::copilot::is_loopback)
        {
            let key = if bot.name == crate::seal::DEFAULT_BOT {
                "upstream"
            } else {
                "bots.upstream"
            };
            return Err(invalid(
                key,
                format!(
                    "bot {:?}: {url} is plain http to another machine, so the Direct Line secret would travel in clear; use https, or set allow_http_upstream = true",
                    bot.name
                ),
            ));
        }
    }
    Ok(bots)
}

/// `[auth]` through [`super::auth::parse`], with this file's duration syntax.
pub(super) fn parse_auth(
    file: Option<FileAuth>,
    table: Table,
    env: &dyn Env,
) -> Result<Option<Arc<AuthSettings>>, ConfigError> {
    let Some(file) = file else {
        return Ok(None);
    };
    let key = env.var(auth::ENV_PSEUDONYM_KEY);
    match auth::parse(file, table, key, parse_duration) {
        Ok(auth) => Ok(Some(Arc::new(auth))),
        Err(AuthConfigError::Invalid { key, message }) => {
            Err(ConfigError::Invalid { key, message })
        }
        Err(AuthConfigError::Read { path, source }) => Err(ConfigError::Read { path, source }),
    }
}

pub(super) fn parse_token_endpoint(
    key: &'static str,
    text: &str,
) -> Result<TokenEndpoint, ConfigError> {
    TokenEndpoint::parse(text).map_err(|message| invalid(key, message))
}

/// With a token endpoint, no `upstream` means "discovered from the environment"; an
/// explicit URL overrides discovery. The embedded emulator knows nothing of the agent's
/// tokens, so the two do not mix.
pub(super) fn copilot_upstream(
    upstream: UpstreamTarget,
    given: bool,
    key: &'static str,
) -> Result<UpstreamTarget, ConfigError> {
    match upstream {
        _ if !given => Ok(UpstreamTarget::Discovered),
        UpstreamTarget::Embedded => Err(invalid(
            key,
            "a token endpoint needs a real upstream: leave upstream out to discover it, or give its URL",
        )),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_str;
    use crate::config::{DEFAULT_BOT, DEFAULT_RESUME_WINDOW, Rate, UpstreamTarget, UserIdPolicy};
    use std::time::Duration;

    const TWO_BOTS: &str = r#"
resume_window = "2h"

[rate_limits]
sessions_per_minute = 30

[[bots]]
name = "support"
host = "Support.Contoso.com"
upstream = "https://europe.directline.botframework.com"
secret_env = "SUPPORT_SECRET"
allowed_origins = ["https://contoso.com/"]
user_ids = "caller"

[[bots]]
name = "sales"
path_prefix = "/bots/sales/"
upstream = "embedded"
resume_window = "0"
[bots.rate_limits]
activities_per_minute = 60
activities_burst = 5
"#;

    #[test]
    fn bots_take_their_own_settings_and_the_top_level_defaults() {
        let config = load_str(TWO_BOTS, &[("SUPPORT_SECRET", "s3cret")]).unwrap();
        let [support, sales] = &config.bots[..] else {
            panic!("two bots");
        };
        assert_eq!(support.name, "support");
        assert_eq!(support.host.as_deref(), Some("support.contoso.com"));
        assert_eq!(support.path_prefix, "");
        assert_eq!(support.secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(support.allowed_origins, ["https://contoso.com"]);
        assert_eq!(support.user_ids, UserIdPolicy::Caller);
        assert_eq!(
            support.rate_limits.sessions.per_minute, 30,
            "top-level default"
        );
        assert_eq!(
            support.resume_window,
            Duration::from_secs(7200),
            "top-level default"
        );
        assert_eq!(sales.resume_window, Duration::ZERO, "0 turns it off");
        assert_eq!(sales.path_prefix, "/bots/sales");
        assert_eq!(sales.upstream, UpstreamTarget::Embedded);
        assert!(sales.secret.is_none());
        assert_eq!(sales.user_ids, UserIdPolicy::Minted);
        assert_eq!(sales.rate_limits.sessions.per_minute, 30);
        assert_eq!(
            sales.rate_limits.activities,
            Rate {
                per_minute: 60,
                burst: 5
            }
        );
        // Without [[bots]] the top level is one bot named "default".
        let single = load_str("user_ids = \"caller\"", &[]).unwrap();
        let [default] = &single.bots[..] else {
            panic!("one bot");
        };
        assert_eq!(default.name, DEFAULT_BOT);
        assert_eq!(default.user_ids, UserIdPolicy::Caller);
        assert_eq!(default.resume_window, DEFAULT_RESUME_WINDOW);
    }

    #[test]
    fn bot_mistakes_are_named() {
        let bot = |extra: &str| format!("[[bots]]\nname = \"a\"\nupstream = \"embedded\"\n{extra}");
        let cases = [
            (format!("upstream = \"embedded\"\n{}", bot("")), "bots"),
            (format!("path_prefix = \"/x\"\n{}", bot("")), "bots"),
            (
                format!("{}{}", bot(""), bot("path_prefix = \"/b\"")),
                "bots",
            ),
            (
                format!(
                    "{}[[bots]]\nname = \"b\"\nupstream = \"embedded\"\n",
                    bot("")
                ),
                "bots",
            ),
            (
                "[[bots]]\nname = \"Bad Name\"\nupstream = \"embedded\"\n".to_owned(),
                "bots.name",
            ),
            (
                "[[bots]]\nname = \"none\"\nupstream = \"embedded\"\n".to_owned(),
                "bots.name",
            ),
            (bot("host = \"https://x.test\""), "bots.host"),
            (bot("user_ids = \"anyone\""), "user_ids"),
            (bot("secret_env = \"NOT_SET_ANYWHERE\""), "bots.secret_env"),
            (
                "[[bots]]\nname = \"a\"\nupstream = \"https://x.test\"\n".to_owned(),
                "bots.secret_file",
            ),
        ];
        for (text, key) in cases {
            match load_str(&text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // The environment's single-bot secret would be silently unused with [[bots]].
        assert!(matches!(
            load_str(&bot(""), &[(ENV_SECRET, "x")]),
            Err(ConfigError::Invalid { key: "bots", .. })
        ));
    }

    #[test]
    fn a_token_endpoint_stands_in_for_upstream_and_secret() {
        const ENDPOINT: &str = "https://contoso.environment.api.powerplatform.com/powervirtualagents/botsbyschema/cr_a/directline/token?api-version=2022-03-01-preview";
        let single = load_str(&format!("token_endpoint = \"{ENDPOINT}\""), &[]).unwrap();
        assert_eq!(single.bots[0].upstream, UpstreamTarget::Discovered);
        assert!(single.bots[0].secret.is_none());
        // The shipped file's `upstream = "embedded"` left in place is a mistake, named.
        let embedded = format!("upstream = \"embedded\"\ntoken_endpoint = \"{ENDPOINT}\"");
        assert!(matches!(
            load_str(&embedded, &[]),
            Err(ConfigError::Invalid {
                key: "token_endpoint",
                ..
            })
        ));
        let explicit = format!(
            "upstream = \"https://europe.directline.botframework.com\"\ntoken_endpoint = \"{ENDPOINT}\""
        );
        assert!(matches!(
            load_str(&explicit, &[]).unwrap().bots[0].upstream,
            UpstreamTarget::Url(_)
        ));
        let bots = format!(
            "[[bots]]\nname = \"agent\"\ntoken_endpoint = \"{ENDPOINT}\"\nsecret_env = \"AGENT_SECRET\"\n"
        );
        let config = load_str(&bots, &[("AGENT_SECRET", "s")]).unwrap();
        assert_eq!(config.bots[0].upstream, UpstreamTarget::Discovered);
        assert!(config.bots[0].secret.is_some());
        for (text, key) in [
            ("[[bots]]\nname = \"a\"\n".to_owned(), "bots.upstream"),
            (
                "[[bots]]\nname = \"a\"\ntoken_endpoint = \"http://example.com/powervirtualagents/botsbyschema/a/directline/token?api-version=1\"\n".to_owned(),
                "bots.token_endpoint",
            ),
            (
                format!("token_endpoint = \"{ENDPOINT}\"\n[[bots]]\nname = \"a\"\nupstream = \"embedded\"\n"),
                "bots",
            ),
        ] {
            match load_str(&text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn real_upstream_needs_a_secret() {
        let err = load_str("upstream = \"https://directline.botframework.com\"", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::MissingSecret));
        let ok = load_str(
            "upstream = \"https://europe.directline.botframework.com\"",
            &[(ENV_SECRET, "s")],
        )
        .unwrap();
        assert!(matches!(ok.bots[0].upstream, UpstreamTarget::Url(_)));
    }
}
