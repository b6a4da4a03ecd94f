//! Durations and sizes as the file may write them: text with a unit (`"15s"`, `"64KiB"`) or a
//! bare number, which is seconds for a duration and bytes for a size (as documented). The
//! value stays text here; `values::parse_duration` and `values::parse_size` read it.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, Visitor};

/// For `#[serde(default, deserialize_with = "text_or_number")]` on an `Option<String>`.
pub fn text_or_number<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    deserializer.deserialize_any(TextOrNumber).map(Some)
}

struct TextOrNumber;

impl Visitor<'_> for TextOrNumber {
    type Value = String;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter
            .write_str("a string like \"15s\" or \"64KiB\", or a whole number (seconds or bytes)")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<String, E> {
        Ok(text.to_owned())
    }

    fn visit_u64<E: de::Error>(self, number: u64) -> Result<String, E> {
        Ok(number.to_string())
    }

    fn visit_i64<E: de::Error>(self, number: i64) -> Result<String, E> {
        u64::try_from(number)
            .map(|n| n.to_string())
            .map_err(|_| E::custom("must not be negative"))
    }
}
