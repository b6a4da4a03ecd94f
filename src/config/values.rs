//! Value types of the configuration and the parsers that read them from text.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use url::Url;

use super::errors::{ConfigError, invalid};

/// Where the gateway sends Direct Line calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// The built-in emulator with an echo bot, started in-process on a loopback port.
    Embedded,
    /// A Direct Line base URL without `/v3/directline`.
    Url(Url),
    /// The Direct Line base a Copilot Studio environment names in its regional channel
    /// settings (the bot has a `token_endpoint`), found at run time.
    Discovered,
}

/// Who chooses the user id bound into a conversation's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserIdPolicy {
    /// The gateway mints `dl_` + 128 random bits per token; whatever the caller says is ignored.
    #[default]
    Minted,
    /// `user.id` from the tokens/generate body when it is a well-formed `dl_` id (PROTOCOL §1.1),
    /// else minted. Only for deployments where tokens/generate is called by the site's own
    /// backend, which has authenticated the user: any caller can claim any id otherwise.
    Caller,
}

/// A token bucket: `per_minute` tokens a minute, up to `burst` at once; 0 a minute is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    pub fn is_unlimited(self) -> bool {
        self.per_minute == 0
    }

    pub fn per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

/// An address or CIDR block (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

pub fn parse_user_ids(text: &str) -> Result<UserIdPolicy, ConfigError> {
    match text {
        "minted" => Ok(UserIdPolicy::Minted),
        "caller" => Ok(UserIdPolicy::Caller),
        other => Err(invalid(
            "user_ids",
            format!("{other:?}: must be \"minted\" or \"caller\""),
        )),
    }
}

/// A host name as it appears in `Host` without the port, lower-cased.
pub fn parse_host(text: &str) -> Result<String, ConfigError> {
    let host = text.trim().to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(host)
    } else {
        Err(invalid(
            "bots.host",
            format!("{text:?}: a host name without scheme or port"),
        ))
    }
}

pub fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(key, format!("{text:?} is not an IP:port address")))
}

pub fn parse_upstream(text: &str) -> Result<UpstreamTarget, ConfigError> {
    if text == "embedded" {
        return Ok(UpstreamTarget::Embedded);
    }
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => invalid(
            "upstream",
            format!("{text:?} must start with https:// (e.g. https://{text}), or be \"embedded\""),
        ),
        e => invalid("upstream", format!("{text:?}: {e}")),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "upstream",
            "must be an http(s) URL or \"embedded\"",
        ));
    }
    if url.query().is_some() || url.path().contains("/v3/directline") {
        return Err(invalid(
            "upstream",
            "give the base URL without /v3/directline and without a query",
        ));
    }
    Ok(UpstreamTarget::Url(url))
}

pub fn parse_public_url(text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => invalid(
            "public_url",
            format!("{text:?} must start with https:// or http://"),
        ),
        e => invalid("public_url", format!("{text:?}: {e}")),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.query().is_some() {
        return Err(invalid(
            "public_url",
            "must be an http(s) URL without a query",
        ));
    }
    Ok(url)
}

pub fn parse_prefix(text: &str) -> Result<String, ConfigError> {
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    // Every segment non-empty and not `.` or `..`: URL parsers (browsers included) normalise
    // those away, so stream URLs under such a prefix would come back on a path the router
    // refuses (found by fuzzing).
    let valid = trimmed.starts_with('/')
        && trimmed[1..]
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if valid {
        Ok(trimmed.to_owned())
    } else {
        Err(invalid("path_prefix", "must look like /bots/support"))
    }
}

/// `250ms`, `15s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// `512`, `512B`, `64KiB`, `16MiB`, `1GiB` (binary units; `KB`/`MB` are read as the same).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        "GiB" | "GB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

// Setting a slot from the text a key gave (file, environment or flag), naming the key on error.

/// `default` with what `value` says, or the error naming `key`.
pub(super) fn duration_or(
    default: Duration,
    key: &'static str,
    value: Option<String>,
) -> Result<Duration, ConfigError> {
    let mut slot = default;
    set_duration(&mut slot, key, value)?;
    Ok(slot)
}

pub(super) fn read_trimmed(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim().to_owned())
}

pub(super) fn set_duration(
    slot: &mut Duration,
    key: &'static str,
    value: Option<String>,
) -> Result<(), ConfigError> {
    if let Some(text) = value {
        *slot = parse_duration(&text)
            .ok_or_else(|| invalid(key, format!("{text:?} is not a duration like 15s or 250ms")))?;
    }
    Ok(())
}

pub(super) fn set_size(
    slot: &mut u64,
    key: &'static str,
    value: Option<String>,
) -> Result<(), ConfigError> {
    if let Some(text) = value {
        *slot = parse_size(&text)
            .ok_or_else(|| invalid(key, format!("{text:?} is not a size like 256KiB")))?;
    }
    Ok(())
}

pub(super) fn set_usize(
    slot: &mut usize,
    key: &'static str,
    value: Option<String>,
) -> Result<(), ConfigError> {
    let mut wide = *slot as u64;
    set_size(&mut wide, key, value)?;
    *slot = usize::try_from(wide).map_err(|_| invalid(key, "too large"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefixes_must_survive_url_normalisation() {
        for bad in ["/a/./b", "/a/../b", "/a//b", "/.", "bots", "/bots/sup port"] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_prefix("/bots/support.v2/").unwrap(),
            "/bots/support.v2"
        );
        assert_eq!(parse_prefix("/").unwrap(), "");
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_size("256KiB"), Some(262_144));
        assert_eq!(parse_size("16MiB"), Some(16 * 1024 * 1024));
        assert_eq!(parse_size("1e3"), None);
    }

    #[test]
    fn cidr() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(IpNet::parse("1.2.3.4/33").is_none());
    }
}
