//! `[record]`: the conversation record (both directions as delivered, after the activity
//! policy) as JSON lines in a directory, and optionally sent in batches to an HTTP receiver
//! through a bounded on-disk spool.

use std::path::PathBuf;

use serde::Deserialize;
use url::Url;

use super::errors::{ConfigError, invalid};
use super::values::parse_size;

#[derive(Debug, Clone, PartialEq)]
pub struct RecordConfig {
    /// The directory of the daily files (`YYYY-MM-DD.jsonl`, UTC) and of the spool.
    pub path: PathBuf,
    /// Daily files older than this many days are removed.
    pub retention_days: u32,
    /// Receives the records in batches (POST, `application/x-ndjson`).
    pub url: Option<Url>,
    /// The most bytes the spool of unsent batches may hold; past it a record is dropped
    /// from the spool (still in the daily file) and counted.
    pub spool_bytes: u64,
    /// Records a batch holds at most.
    pub batch: usize,
    /// Records waiting for the writer; past it one is refused (counted), never waited for.
    pub queue: usize,
    /// Bot activities remembered by (conversation, id) so a replay or a poll after the
    /// stream records one once.
    pub dedupe: usize,
}

impl Default for RecordConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::new(),
            retention_days: 30,
            url: None,
            spool_bytes: 256 * 1024 * 1024,
            batch: 500,
            queue: 10_000,
            dedupe: 100_000,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRecord {
    pub path: PathBuf,
    pub retention: Option<u32>,
    pub url: Option<String>,
    pub spool_size: Option<String>,
    pub batch: Option<usize>,
    pub queue: Option<usize>,
    pub dedupe: Option<usize>,
}

/// The section as the gateway runs it; every value is checked.
pub fn section(file: FileRecord) -> Result<RecordConfig, ConfigError> {
    let defaults = RecordConfig::default();
    if file.path.as_os_str().is_empty() {
        return Err(invalid("record.path", "must name a directory"));
    }
    let url = match file.url {
        None => None,
        Some(text) => Some(
            Url::parse(&text)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| invalid("record.url", "must be an http:// or https:// URL"))?,
        ),
    };
    let retention_days = match file.retention {
        None => defaults.retention_days,
        Some(0) => return Err(invalid("record.retention", "must be at least 1 (days)")),
        Some(days) => days,
    };
    let spool_bytes = match file.spool_size {
        None => defaults.spool_bytes,
        Some(text) => parse_size(&text)
            .filter(|n| *n >= 1024)
            .ok_or_else(|| invalid("record.spool_size", "must be a size of at least 1KiB"))?,
    };
    let positive = |value: Option<usize>, default: usize, key: &'static str| match value {
        None => Ok(default),
        Some(0) => Err(invalid(key, "must be at least 1")),
        Some(n) => Ok(n),
    };
    Ok(RecordConfig {
        path: file.path,
        retention_days,
        url,
        spool_bytes,
        batch: positive(file.batch, defaults.batch, "record.batch")?,
        queue: positive(file.queue, defaults.queue, "record.queue")?,
        dedupe: positive(file.dedupe, defaults.dedupe, "record.dedupe")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The commented block in config/gateway.toml, uncommented, states the defaults.
    #[test]
    fn the_shipped_example_parses() {
        let shipped = include_str!("../../config/gateway.toml");
        let block: String = shipped
            .lines()
            .skip_while(|line| *line != "# [record]")
            .take_while(|line| line.starts_with('#'))
            .map(|line| format!("{}\n", line.trim_start_matches("# ")))
            .collect();
        let file: FileRecord = toml::from_str(block.trim_start_matches("[record]\n")).unwrap();
        let parsed = section(file).unwrap();
        assert_eq!(
            parsed.retention_days,
            RecordConfig::default().retention_days
        );
        assert_eq!(parsed.spool_bytes, RecordConfig::default().spool_bytes);
        assert_eq!(parsed.batch, RecordConfig::default().batch);
        assert_eq!(parsed.queue, RecordConfig::default().queue);
        assert_eq!(parsed.dedupe, RecordConfig::default().dedupe);
        assert!(parsed.url.is_some());
    }

    #[test]
    fn defaults_and_refusals() {
        let ok = section(FileRecord {
            path: "/var/lib/gw".into(),
            ..FileRecord::default()
        })
        .unwrap();
        assert_eq!(ok.retention_days, 30);
        assert!(section(FileRecord::default()).is_err());
        assert!(
            section(FileRecord {
                path: "/x".into(),
                url: Some("ftp://x".into()),
                ..FileRecord::default()
            })
            .is_err()
        );
        assert!(
            section(FileRecord {
                path: "/x".into(),
                retention: Some(0),
                ..FileRecord::default()
            })
            .is_err()
        );
    }
}
