//! A Copilot Studio agent's token endpoint (ARCHITECTURE §10): the URL its "Mobile app" channel
//! page shows, and what the gateway derives from it (the environment's origin, the
//! `api-version`, the regional channel settings it discovers the Direct Line host from).

use std::net::IpAddr;

use url::Url;

/// The path every Power Platform environment serves agents under.
const AGENT_PATHS: &str = "/powervirtualagents/";

/// Most bytes of an `api-version` value; real ones are dates like `2022-03-01-preview`.
const MAX_API_VERSION: usize = 64;

/// `https://{env}.environment.api.powerplatform.com/powervirtualagents/botsbyschema/{schema}/directline/token?api-version=…`,
/// checked: https (or http to a loopback address, for the emulator), a path under
/// `/powervirtualagents/`, and one `api-version`. It holds no credential (the endpoint
/// takes none), so it may be logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenEndpoint {
    url: Url,
    api_version: String,
}

impl TokenEndpoint {
    /// Reads the URL as the operator pasted it; the message says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("{text:?}: {e}"))?;
        let host = url.host_str().ok_or_else(|| format!("{text:?}: no host"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(host) => {}
            "http" => {
                return Err(format!(
                    "{text:?}: must be https:// (http:// only to a loopback address)"
                ));
            }
            _ => return Err(format!("{text:?}: must be an https:// URL")),
        }
        if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
            return Err(format!("{text:?}: no user, password or fragment"));
        }
        if !url.path().starts_with(AGENT_PATHS) || !url.path().ends_with("/directline/token") {
            return Err(format!(
                "{text:?}: expected …/powervirtualagents/botsbyschema/<schema>/directline/token?api-version=… (the agent's Mobile app channel page)"
            ));
        }
        let versions: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "api-version")
            .map(|(_, v)| v.into_owned())
            .collect();
        let [api_version] = &versions[..] else {
            return Err(format!("{text:?}: needs exactly one api-version parameter"));
        };
        let valid_version = !api_version.is_empty()
            && api_version.len() <= MAX_API_VERSION
            && api_version
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'));
        if !valid_version {
            return Err(format!("{text:?}: the api-version is not a version"));
        }
        Ok(Self {
            api_version: api_version.clone(),
            url,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The environment's origin (`https://{env}.environment.api.powerplatform.com/`): the
    /// base of the client that calls it.
    pub fn origin(&self) -> Url {
        let mut origin = self.url.clone();
        origin.set_path("/");
        origin.set_query(None);
        origin
    }

    /// The token endpoint's path and query, as sent.
    pub fn path_and_query(&self) -> String {
        match self.url.query() {
            Some(query) => format!("{}?{query}", self.url.path()),
            None => self.url.path().to_owned(),
        }
    }

    /// Where the environment names its agents' Direct Line host: the same origin and
    /// `api-version` (a Copilot Studio convention WebChat samples follow).
    pub fn regional_settings_path(&self) -> String {
        let version: String =
            form_urlencoded::byte_serialize(self.api_version.as_bytes()).collect();
        format!("{AGENT_PATHS}regionalchannelsettings?api-version={version}")
    }
}

/// `localhost`, 127.0.0.0/8 or `::1`: the only hosts plain http may go to.
pub fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "https://contoso.environment.api.powerplatform.com/powervirtualagents/botsbyschema/cr123_agent/directline/token?api-version=2022-03-01-preview";

    #[test]
    fn a_real_endpoint_gives_its_origin_and_regional_settings() {
        let endpoint = TokenEndpoint::parse(REAL).unwrap();
        assert_eq!(
            endpoint.origin().as_str(),
            "https://contoso.environment.api.powerplatform.com/"
        );
        assert_eq!(
            endpoint.regional_settings_path(),
            "/powervirtualagents/regionalchannelsettings?api-version=2022-03-01-preview"
        );
        assert_eq!(
            endpoint.path_and_query(),
            "/powervirtualagents/botsbyschema/cr123_agent/directline/token?api-version=2022-03-01-preview"
        );
        let local = TokenEndpoint::parse("http://127.0.0.1:3978/powervirtualagents/botsbyschema/demo/directline/token?api-version=1").unwrap();
        assert_eq!(local.origin().as_str(), "http://127.0.0.1:3978/");
        assert!(TokenEndpoint::parse("http://localhost:1/powervirtualagents/botsbyschema/demo/directline/token?api-version=1").is_ok());
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            "contoso.environment.api.powerplatform.com/powervirtualagents/botsbyschema/x/directline/token?api-version=1",
            "http://contoso.example/powervirtualagents/botsbyschema/x/directline/token?api-version=1",
            "http://10.0.0.1/powervirtualagents/botsbyschema/x/directline/token?api-version=1",
            "ftp://127.0.0.1/powervirtualagents/botsbyschema/x/directline/token?api-version=1",
            "https://x.test/powervirtualagents/botsbyschema/x/directline/token",
            "https://x.test/powervirtualagents/botsbyschema/x/directline/token?api-version=1&api-version=2",
            "https://x.test/powervirtualagents/botsbyschema/x/directline/token?api-version=a%20b",
            "https://x.test/other/path?api-version=1",
            "https://user:pw@x.test/powervirtualagents/botsbyschema/x/directline/token?api-version=1",
        ] {
            assert!(TokenEndpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
