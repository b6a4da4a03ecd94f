//! UTC dates for the daily file names and the records' `time`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Days since 1970-01-01 and the milliseconds into that day, now.
pub fn now() -> (i64, u64) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let millis = since.as_millis() as u64;
    ((millis / 86_400_000) as i64, millis % 86_400_000)
}

/// `YYYY-MM-DD` of a day number (the proleptic Gregorian calendar).
pub fn day_name(days: i64) -> String {
    let (y, m, d) = civil(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn timestamp(days: i64, millis: u64) -> String {
    let (y, m, d) = civil(days);
    let secs = millis / 1000;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        millis % 1000
    )
}

/// Year, month, day of a day count since the Unix epoch (Hinnant's civil-from-days).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days() {
        assert_eq!(day_name(0), "1970-01-01");
        assert_eq!(day_name(11_016), "2000-02-29");
        assert_eq!(day_name(20_429), "2025-12-07");
        assert_eq!(timestamp(0, 3_723_004), "1970-01-01T01:02:03.004Z");
    }
}
