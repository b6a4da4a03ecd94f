//! Errors in a configuration, and where in the file they stand (`file:line:column: key`).

use std::path::{Path, PathBuf};

use super::sources::{ENV_SECRET, Overrides};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML, or has a key the gateway does not know. `key` is the dotted
    /// path (`stream.liveness_timeout`) when the location names one.
    #[error("{}: {message}", at(path, *line, *column, key))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// An [`ConfigError::Invalid`] value that came from the file, with where it stands there.
    #[error("{}: invalid value: {message}", at(path, *line, *column, key))]
    InvalidAt {
        path: PathBuf,
        line: usize,
        column: usize,
        key: &'static str,
        message: String,
    },
    #[error("no Direct Line secret: set {ENV_SECRET} or secret_file (or use --upstream embedded)")]
    MissingSecret,
}

/// `file:line:column: key` (the form editors and compilers use, so a click opens the spot).
fn at(path: &Path, line: usize, column: usize, key: &str) -> String {
    if key.is_empty() {
        format!("{}:{line}:{column}", path.display())
    } else {
        format!("{}:{line}:{column}: {key}", path.display())
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The table a line of a TOML file is in (`stream`, `bots`, `bots.rate_limits`; empty at the
/// top), read from the headers above it. Enough for the gateway's own flat files.
fn table_at(text: &str, line: usize) -> String {
    text.lines()
        .take(line.saturating_sub(1))
        .filter_map(|l| {
            let l = l.trim();
            let header = l
                .strip_prefix("[[")
                .and_then(|h| h.split_once("]]"))
                .or_else(|| l.strip_prefix('[').and_then(|h| h.split_once(']')))?;
            Some(header.0.trim().to_owned())
        })
        .last()
        .unwrap_or_default()
}

/// The dotted key path of the `key = value` on `line` (1-based), if that line holds one.
pub fn key_path_at(text: &str, line: usize) -> String {
    let Some(key) = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split_once('='))
        .map(|(key, _)| key.trim().trim_matches('"'))
        .filter(|key| !key.is_empty() && !key.starts_with('['))
    else {
        return table_at(text, line + 1);
    };
    match table_at(text, line) {
        table if table.is_empty() => key.to_owned(),
        table => format!("{table}.{key}"),
    }
}

/// Where `key` (dotted, as in [`ConfigError::Invalid`]) is set in the file, if it is.
fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.contains('=') && key_path_at(text, number) == key {
            let column = line.len() - line.trim_start().len() + 1;
            return Some((number, column));
        }
    }
    None
}

/// toml's own message, one line, with a hint for the commonest slip: a string (an address,
/// a URL, a size or a duration) written without quotes.
pub fn parse_message(text: &str, error: &toml::de::Error, line: usize) -> String {
    let mut message = error.message().trim().replace('\n', "; ");
    let value = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split_once('='))
        .map(|(_, value)| value.trim());
    if let Some(value) = value {
        let bare = !value.is_empty()
            && !value.starts_with(['"', '\'', '[', '{'])
            && !matches!(value, "true" | "false")
            && value.parse::<f64>().is_err();
        if bare {
            let looks_like_address = value.contains(':') || value.contains('/');
            let what = if looks_like_address {
                "an address or URL"
            } else {
                "a text value"
            };
            message = format!("{message} ({what} needs quotes: \"{value}\")");
        }
    }
    message
}

pub fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl ConfigError {
    /// An invalid value with its place in the file, when the file set it (a flag that
    /// overrides the key has no place there).
    pub fn located_in(self, path: &Path, text: &str, overrides: &Overrides) -> ConfigError {
        let ConfigError::Invalid { key, message } = self else {
            return self;
        };
        let from_flag = match key {
            "listen" => overrides.listen.is_some(),
            "admin_listen" => overrides.admin_listen.is_some(),
            "upstream" => overrides.upstream.is_some(),
            "public_url" => overrides.public_url.is_some(),
            _ => false,
        };
        match locate_key(text, key).filter(|_| !from_flag) {
            Some((line, column)) => ConfigError::InvalidAt {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            },
            None => ConfigError::Invalid { key, message },
        }
    }
}

#[cfg(test)]
mod file_errors {
    use super::*;
    use crate::config::{Config, Env};

    fn load_file(text: &str) -> (String, ConfigError) {
        let dir = std::env::temp_dir().join(format!("dlgw-config-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let error = Config::load(Some(&path), &Overrides::default(), &NoEnv).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        (format!("{}", path.display()), error)
    }

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn an_unquoted_address_is_located_and_said_to_need_quotes() {
        let (path, error) = load_file("# gateway\nlisten = 127.0.0.1:18080\n");
        let line = error.to_string();
        // The column is toml's: where its value parser gave up.
        assert!(line.starts_with(&format!("{path}:2:")), "{line}");
        assert!(line.contains(": listen: "), "{line}");
        assert!(line.contains("needs quotes: \"127.0.0.1:18080\""), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn a_typo_in_a_section_names_the_section_line_and_column() {
        let (path, error) =
            load_file("listen = \"127.0.0.1:8080\"\n\n[stream]\n  liveness_timout = \"80s\"\n");
        let line = error.to_string();
        assert!(
            line.starts_with(&format!(
                "{path}:4:3: stream.liveness_timout: unknown field"
            )),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn an_invalid_value_from_the_file_says_where_it_is() {
        let (path, error) =
            load_file("[limits]\nmax_url = \"8KiB\"\n[stream]\nliveness_timeout = \"1s\"\n");
        assert!(
            matches!(
                error,
                ConfigError::InvalidAt {
                    key: "stream.liveness_timeout",
                    line: 4,
                    column: 1,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().starts_with(&format!(
            "{path}:4:1: stream.liveness_timeout: invalid value: "
        )));
    }

    #[test]
    fn the_same_address_for_both_listeners_is_refused_by_name() {
        let (_, error) =
            load_file("listen = \"127.0.0.1:18080\"\nadmin_listen = \"127.0.0.1:18080\"\n");
        let line = error.to_string();
        assert!(
            line.contains("admin_listen") && line.contains("(listen)"),
            "{line}"
        );
    }
}
