//! `[tracing]`: where spans go, what they may carry, and the standard OpenTelemetry
//! environment variables. Off unless an endpoint is known, from the file or the environment.

use std::time::Duration;

use url::Url;

use super::errors::{ConfigError, invalid};
use super::file::FileTracing;
use super::sources::Env;
use super::values::parse_duration;

/// The OTLP/HTTP base URL of a collector (the gateway posts to `…/v1/traces`).
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
/// The whole traces URL, used as it is (the OpenTelemetry per-signal variable).
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";
/// `true` turns tracing off whatever else says (the OpenTelemetry convention).
pub const ENV_SDK_DISABLED: &str = "OTEL_SDK_DISABLED";

pub const DEFAULT_SERVICE_NAME: &str = "directline-gateway";

/// Tracing as the gateway runs it; `Config::tracing` is `None` when it is off.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The full URL spans are posted to (`…/v1/traces`).
    pub traces_url: Url,
    pub service_name: String,
    /// Share of new traces (no sampled caller) that are recorded, 0.0..=1.0; a caller's
    /// sampling decision is always followed (parent-based).
    pub sampling_ratio: f64,
    /// Send `traceparent` (and `tracestate`) on calls to Direct Line.
    pub propagate_upstream: bool,
    /// Put conversation ids on spans (off: they identify a user's conversation).
    pub include_conversation_ids: bool,
    /// How often queued spans are sent (a full batch goes at once).
    pub export_interval: Duration,
    /// One export request, retries included, must finish within this.
    pub export_timeout: Duration,
    /// Ended spans waiting to be sent; past it new spans are dropped and counted.
    pub queue_size: usize,
    /// Continue a caller's `traceparent` (its trace, its sampling decision). Off: every
    /// request starts a new trace (sampled by `sampling_ratio`) that links the caller's,
    /// since any client could otherwise force recording or pick the trace its spans join.
    pub trust_incoming_context: bool,
}

/// The section, with the environment filling what the file leaves unset: explicit
/// configuration wins, as the OpenTelemetry specification has it for SDK settings.
pub fn section(
    file: Option<FileTracing>,
    env: &dyn Env,
) -> Result<Option<TracingConfig>, ConfigError> {
    let file = file.unwrap_or_default();
    // Every value is checked even while tracing is off, so a mistake shows at once and not
    // on the day an endpoint is added.
    if let Some(protocol) = &file.protocol
        && protocol != "http/protobuf"
    {
        return Err(invalid(
            "tracing.protocol",
            format!(
                "{protocol:?} is not supported: the gateway exports OTLP over HTTP with protobuf (\"http/protobuf\", a collector's port 4318)"
            ),
        ));
    }
    let traces_url = match (
        file.endpoint,
        env.var(ENV_OTLP_TRACES_ENDPOINT),
        env.var(ENV_OTLP_ENDPOINT),
    ) {
        (Some(endpoint), _, _) => Some(traces_url("tracing.endpoint", &endpoint, true)?),
        (None, Some(url), _) => Some(traces_url(ENV_OTLP_TRACES_ENDPOINT, &url, false)?),
        (None, None, Some(endpoint)) => Some(traces_url(ENV_OTLP_ENDPOINT, &endpoint, true)?),
        (None, None, None) => None,
    };
    let service_name = file
        .service_name
        .or_else(|| env.var(ENV_SERVICE_NAME))
        .unwrap_or_else(|| DEFAULT_SERVICE_NAME.to_owned());
    if service_name.trim().is_empty() || service_name.len() > 256 {
        return Err(invalid(
            "tracing.service_name",
            "must be 1 to 256 characters",
        ));
    }
    let sampling_ratio = file.sampling_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sampling_ratio) {
        return Err(invalid(
            "tracing.sampling_ratio",
            format!("{sampling_ratio} is not between 0.0 and 1.0"),
        ));
    }
    let duration = |key: &'static str, value: Option<String>, default: Duration| match value {
        None => Ok(default),
        Some(text) => parse_duration(&text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                invalid(
                    key,
                    format!("{text:?} is not a duration above 0 like 5s or 500ms"),
                )
            }),
    };
    let export_interval = duration(
        "tracing.export_interval",
        file.export_interval,
        Duration::from_secs(5),
    )?;
    let export_timeout = duration(
        "tracing.export_timeout",
        file.export_timeout,
        Duration::from_secs(10),
    )?;
    let queue_size = file.queue_size.unwrap_or(2048);
    if !(1..=1_000_000).contains(&queue_size) {
        return Err(invalid("tracing.queue_size", "must be 1 to 1000000 spans"));
    }
    let disabled = env
        .var(ENV_SDK_DISABLED)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let Some(traces_url) = traces_url else {
        if file.enabled == Some(true) && !disabled {
            return Err(invalid(
                "tracing.enabled",
                format!(
                    "tracing is enabled but has no endpoint: set tracing.endpoint or {ENV_OTLP_ENDPOINT}"
                ),
            ));
        }
        return Ok(None);
    };
    if disabled || file.enabled == Some(false) {
        return Ok(None);
    }
    Ok(Some(TracingConfig {
        traces_url,
        service_name,
        sampling_ratio,
        propagate_upstream: file.propagate_upstream.unwrap_or(false),
        include_conversation_ids: file.include_conversation_ids.unwrap_or(false),
        export_interval,
        export_timeout,
        queue_size,
        trust_incoming_context: file.trust_incoming_context.unwrap_or(false),
    }))
}

/// An http(s) URL; a base URL (`http://collector:4318`) gets `/v1/traces` unless its path
/// already ends there.
fn traces_url(key: &'static str, text: &str, base: bool) -> Result<Url, ConfigError> {
    let mut url = Url::parse(text.trim()).map_err(|e| invalid(key, format!("{text:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            key,
            format!(
                "{text:?} must be an http(s) URL of an OTLP/HTTP receiver, like http://otel-collector:4318"
            ),
        ));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid(key, "must have no query, fragment or user"));
    }
    if base && !url.path().ends_with("/v1/traces") {
        let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Vars(HashMap<&'static str, &'static str>);

    impl Env for Vars {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| (*v).to_owned())
        }
    }

    fn vars(pairs: &[(&'static str, &'static str)]) -> Vars {
        Vars(pairs.iter().copied().collect())
    }

    fn with_endpoint(endpoint: &str) -> FileTracing {
        FileTracing {
            endpoint: Some(endpoint.to_owned()),
            ..FileTracing::default()
        }
    }

    #[test]
    fn off_without_an_endpoint_anywhere() {
        assert_eq!(section(None, &vars(&[])).unwrap(), None);
        assert_eq!(
            section(Some(FileTracing::default()), &vars(&[])).unwrap(),
            None
        );
        let enabled = FileTracing {
            enabled: Some(true),
            ..FileTracing::default()
        };
        assert!(section(Some(enabled), &vars(&[])).is_err());
    }

    #[test]
    fn the_file_wins_over_the_environment_which_fills_the_rest() {
        let env = vars(&[
            (ENV_OTLP_ENDPOINT, "http://env-collector:4318"),
            (ENV_SERVICE_NAME, "from-env"),
        ]);
        let from_env = section(None, &env).unwrap().unwrap();
        assert_eq!(
            from_env.traces_url.as_str(),
            "http://env-collector:4318/v1/traces"
        );
        assert_eq!(from_env.service_name, "from-env");
        assert_eq!(from_env.sampling_ratio, 1.0);
        assert!(!from_env.propagate_upstream && !from_env.include_conversation_ids);
        let file = FileTracing {
            service_name: Some("from-file".to_owned()),
            ..with_endpoint("https://file-collector/otlp/")
        };
        let from_file = section(Some(file), &env).unwrap().unwrap();
        assert_eq!(
            from_file.traces_url.as_str(),
            "https://file-collector/otlp/v1/traces"
        );
        assert_eq!(from_file.service_name, "from-file");
        let traces = vars(&[
            (ENV_OTLP_TRACES_ENDPOINT, "http://c:4318/custom"),
            (ENV_OTLP_ENDPOINT, "http://ignored:4318"),
        ]);
        let exact = section(None, &traces).unwrap().unwrap();
        assert_eq!(exact.traces_url.as_str(), "http://c:4318/custom");
    }

    #[test]
    fn disabled_wins_over_an_endpoint() {
        let env = vars(&[(ENV_SDK_DISABLED, "true")]);
        assert_eq!(
            section(Some(with_endpoint("http://c:4318")), &env).unwrap(),
            None
        );
        let off = FileTracing {
            enabled: Some(false),
            ..with_endpoint("http://c:4318")
        };
        assert_eq!(section(Some(off), &vars(&[])).unwrap(), None);
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases: Vec<(FileTracing, &str)> = vec![
            (with_endpoint("collector:4318"), "tracing.endpoint"),
            (with_endpoint("ftp://collector"), "tracing.endpoint"),
            (
                with_endpoint("http://collector:4318/?a=b"),
                "tracing.endpoint",
            ),
            (
                FileTracing {
                    sampling_ratio: Some(1.5),
                    ..with_endpoint("http://c:4318")
                },
                "tracing.sampling_ratio",
            ),
            (
                FileTracing {
                    protocol: Some("grpc".to_owned()),
                    ..with_endpoint("http://c:4318")
                },
                "tracing.protocol",
            ),
            (
                FileTracing {
                    export_timeout: Some("0s".to_owned()),
                    ..with_endpoint("http://c:4318")
                },
                "tracing.export_timeout",
            ),
            (
                FileTracing {
                    queue_size: Some(0),
                    ..with_endpoint("http://c:4318")
                },
                "tracing.queue_size",
            ),
            (
                FileTracing {
                    service_name: Some(" ".to_owned()),
                    ..with_endpoint("http://c:4318")
                },
                "tracing.service_name",
            ),
        ];
        for (file, key) in cases {
            match section(Some(file), &vars(&[])) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key),
                other => panic!("{key}: {other:?}"),
            }
        }
        let off_but_wrong = FileTracing {
            sampling_ratio: Some(-1.0),
            ..FileTracing::default()
        };
        assert!(
            section(Some(off_but_wrong), &vars(&[])).is_err(),
            "checked while off"
        );
        let env = vars(&[(ENV_OTLP_ENDPOINT, "not a url")]);
        match section(None, &env) {
            Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, ENV_OTLP_ENDPOINT),
            other => panic!("{other:?}"),
        }
    }
}
