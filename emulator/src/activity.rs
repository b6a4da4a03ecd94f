//! Activity details the service fills in: ids, timestamps, and lenient JSON field lookup.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// `<conversationId>|0000007`: the id shape seen on the real service (PROTOCOL §4.1).
pub(super) fn activity_id(conversation: &str, sequence: usize) -> String {
    format!("{conversation}|{sequence:07}")
}

/// The watermark of the activity at `sequence`: its decimal sequence number (PROTOCOL §4.1).
pub(super) fn watermark(sequence: usize) -> String {
    sequence.to_string()
}

/// A client watermark: absent, empty or `-` means "none"; otherwise a decimal sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Watermark {
    None,
    After(usize),
}

impl Watermark {
    /// `None` for anything that is not one of the watermarks this service hands out.
    pub(super) fn parse(raw: Option<&str>) -> Option<Self> {
        match raw {
            None | Some("" | "-") => Some(Self::None),
            Some(text) if text.bytes().all(|b| b.is_ascii_digit()) => {
                text.parse().ok().map(Self::After)
            }
            Some(_) => None,
        }
    }

    /// The first history index this watermark has not seen (`None` → 0).
    pub(super) fn next_index(self) -> usize {
        match self {
            Self::None => 0,
            Self::After(sequence) => sequence.saturating_add(1),
        }
    }
}

/// UTC now as the service writes it: `2024-05-01T12:34:56.1234567Z`.
pub(super) fn timestamp_now() -> String {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = since_epoch.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let of_day = seconds % 86_400;
    let mut text = String::with_capacity(28);
    let _ = write!(
        text,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:07}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        since_epoch.subsec_nanos() / 100
    );
    text
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// A property looked up case-insensitively, as the service binds `User`/`Id` like `user`/`id`
/// (PROTOCOL §1.2). An exact match wins.
pub(super) fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    let object = value.as_object()?;
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// `user.id` of a TokenParameters-like body, when it is a non-empty string.
pub(super) fn user_id(body: &Value) -> Option<String> {
    field(body, "user")
        .and_then(|user| field(user, "id"))
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned)
}

#[cfg(test)]
mod unit {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_and_watermarks() {
        assert_eq!(activity_id("abc-us", 7), "abc-us|0000007");
        assert_eq!(watermark(12), "12");
        assert_eq!(Watermark::parse(None), Some(Watermark::None));
        assert_eq!(Watermark::parse(Some("-")), Some(Watermark::None));
        assert_eq!(Watermark::parse(Some("")), Some(Watermark::None));
        assert_eq!(Watermark::parse(Some("3")), Some(Watermark::After(3)));
        assert_eq!(Watermark::parse(Some("0000a-42")), None);
        assert_eq!(Watermark::parse(Some("+3")), None);
        assert_eq!(Watermark::After(3).next_index(), 4);
        assert_eq!(Watermark::None.next_index(), 0);
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let now = timestamp_now();
        assert_eq!(now.len(), 28, "{now}");
        assert!(now.ends_with('Z') && now.as_bytes()[10] == b'T', "{now}");
    }

    #[test]
    fn case_insensitive_user() {
        assert_eq!(
            user_id(&json!({"User": {"Id": "dl_a"}})).as_deref(),
            Some("dl_a")
        );
        assert_eq!(
            user_id(&json!({"user": {"id": "dl_b", "Id": "x"}})).as_deref(),
            Some("dl_b")
        );
        assert_eq!(user_id(&json!({"user": {"id": ""}})), None);
        assert_eq!(user_id(&json!([1])), None);
    }
}
