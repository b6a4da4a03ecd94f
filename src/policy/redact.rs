//! The built-in redactions: e-mail addresses, phone numbers and payment card numbers (Luhn
//! checked) in an activity's text, replaced by a marker before the webhook, Direct Line or
//! the record see them. Hand-written scanners (no regular expressions): one pass per kind,
//! no allocation when nothing matches, and a fuzz target (`fuzz/fuzz_targets/redact.rs`).

use serde_json::Value;

use crate::config::Redactions;

pub const EMAIL_MARK: &str = "[email]";
pub const PHONE_MARK: &str = "[phone]";
pub const CARD_MARK: &str = "[credit card]";

/// How many of each were replaced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub email: u32,
    pub phone: u32,
    pub credit_card: u32,
}

impl Counts {
    pub fn total(self) -> u32 {
        self.email + self.phone + self.credit_card
    }

    fn add(&mut self, other: Counts) {
        self.email += other.email;
        self.phone += other.phone;
        self.credit_card += other.credit_card;
    }
}

/// `text` with what `which` names replaced, or `None` when nothing matched.
pub fn redact_text(text: &str, which: Redactions) -> Option<(String, Counts)> {
    let (mut out, mut counts) = redact_once(text, which)?;
    // Until nothing more matches: a marker can bring together what then reads as an e-mail
    // or a number (found by the `redact` fuzz target). Every pass that changes something
    // consumes at least one `@` or digit and the markers hold neither, so this ends; text
    // with nothing to redact pays one pass, as before.
    while let Some((next, more)) = redact_once(&out, which) {
        out = next;
        counts.add(more);
    }
    Some((out, counts))
}

/// One pass of [`redact_text`].
fn redact_once(text: &str, which: Redactions) -> Option<(String, Counts)> {
    let mut counts = Counts::default();
    let after_email = if which.email {
        emails(text, &mut counts.email)
    } else {
        None
    };
    let current = after_email.as_deref().unwrap_or(text);
    let after_numbers = if which.phone || which.credit_card {
        numbers(current, which, &mut counts)
    } else {
        None
    };
    match (after_email, after_numbers) {
        (_, Some(done)) | (Some(done), None) => Some((done, counts)),
        (None, None) => None,
    }
}

/// The fields of an activity that carry what a person wrote: `text`, `speak`, `summary`,
/// and every string inside `value` and the attachments' `content`. Ids, roles, names and
/// URLs are left alone (the gateway binds `from.id`; a URL is not free text).
pub fn redact_activity(activity: &mut Value, which: Redactions) -> Counts {
    let mut counts = Counts::default();
    if !which.any() {
        return counts;
    }
    let Some(object) = activity.as_object_mut() else {
        return counts;
    };
    for key in ["text", "speak", "summary"] {
        if let Some(field) = object.get_mut(key) {
            redact_string(field, which, &mut counts);
        }
    }
    if let Some(value) = object.get_mut("value") {
        redact_strings(value, which, &mut counts, 0);
    }
    if let Some(Value::Array(attachments)) = object.get_mut("attachments") {
        for attachment in attachments {
            if let Some(content) = attachment.get_mut("content") {
                redact_strings(content, which, &mut counts, 0);
            }
        }
    }
    counts
}

fn redact_string(field: &mut Value, which: Redactions, counts: &mut Counts) {
    if let Value::String(text) = field
        && let Some((redacted, found)) = redact_text(text, which)
    {
        *text = redacted;
        counts.add(found);
    }
}

/// Nesting past this is left alone: serde_json's own recursion limit (128) bounds what
/// arrives here, and an adaptive card's text is never this deep.
const MAX_DEPTH: usize = 64;

fn redact_strings(value: &mut Value, which: Redactions, counts: &mut Counts, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match value {
        Value::String(_) => redact_string(value, which, counts),
        Value::Array(items) => {
            for item in items {
                redact_strings(item, which, counts, depth + 1);
            }
        }
        Value::Object(map) => {
            for (_, item) in map.iter_mut() {
                redact_strings(item, which, counts, depth + 1);
            }
        }
        _ => {}
    }
}

fn is_local_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

/// `local@domain.tld`, the domain with at least one dot and a top-level label of two or more
/// letters. Every index is of an ASCII byte, so each cut is on a character boundary.
fn emails(text: &str, count: &mut u32) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut search = 0;
    while let Some(offset) = memchr::memchr(b'@', &bytes[search..]) {
        let at = search + offset;
        search = at + 1;
        let mut start = at;
        while start > copied && is_local_char(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < bytes.len() && is_domain_char(bytes[end]) {
            end += 1;
        }
        // A sentence's full stop or a hyphen is not part of the address.
        while end > at + 1 && matches!(bytes[end - 1], b'.' | b'-') {
            end -= 1;
        }
        let domain = &text[at + 1..end];
        let tld = domain.rsplit('.').next().unwrap_or("");
        let valid = start < at
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.contains("..")
            && tld.len() >= 2
            && tld.bytes().all(|b| b.is_ascii_alphabetic());
        if !valid {
            continue;
        }
        let buffer = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buffer.push_str(&text[copied..start]);
        buffer.push_str(EMAIL_MARK);
        copied = end;
        search = end;
        *count += 1;
    }
    let mut buffer = out?;
    buffer.push_str(&text[copied..]);
    Some(buffer)
}

fn is_separator(b: u8) -> bool {
    matches!(b, b' ' | b'-' | b'.' | b'(' | b')')
}

/// Runs of digits with separators (`+1 (555) 123-4567`, `4111 1111 1111 1111`): a card
/// number when it has 13 to 19 digits that pass the Luhn check (spaces or hyphens only); a
/// phone number when it has 9 to 15 digits (8 to 15 after a `+`), the E.164 maximum. A
/// Luhn-invalid 16-digit run is neither, and left alone.
fn numbers(text: &str, which: Redactions, counts: &mut Counts) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let starts = b.is_ascii_digit()
            || (matches!(b, b'+' | b'(') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit));
        let boundary_before = i == 0 || {
            let prev = bytes[i - 1];
            !(prev.is_ascii_alphanumeric() || prev == b'.' || prev == b'_')
        };
        if !starts || !boundary_before {
            i += 1;
            continue;
        }
        let start = i;
        let mut end = i;
        let mut j = i;
        let mut digits = 0u32;
        let mut separators_in_a_row = 0;
        let mut only_card_separators = true;
        if matches!(b, b'+' | b'(') {
            j += 1;
        }
        while j < bytes.len() {
            let c = bytes[j];
            if c.is_ascii_digit() {
                digits += 1;
                separators_in_a_row = 0;
                end = j + 1;
            } else if is_separator(c) && separators_in_a_row < 2 {
                separators_in_a_row += 1;
                if !matches!(c, b' ' | b'-') {
                    only_card_separators = false;
                }
            } else {
                break;
            }
            j += 1;
            if digits > 19 {
                break;
            }
        }
        // A closing parenthesis right after the last digit is part of nothing we replace.
        let boundary_after = bytes
            .get(end)
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
        let run = &text[start..end];
        let plus = b == b'+';
        let mark = if !boundary_after || digits > 19 {
            None
        } else if which.credit_card
            && !plus
            && (13..=19).contains(&digits)
            && only_card_separators
            && luhn(run)
        {
            counts.credit_card += 1;
            Some(CARD_MARK)
        } else if which.phone && (if plus { 8..=15 } else { 9..=15 }).contains(&digits) {
            counts.phone += 1;
            Some(PHONE_MARK)
        } else {
            None
        };
        if let Some(mark) = mark {
            let buffer = out.get_or_insert_with(|| String::with_capacity(text.len()));
            buffer.push_str(&text[copied..start]);
            buffer.push_str(mark);
            copied = end;
        }
        // Past the whole run either way: a run that is not a number is not one from its
        // middle either.
        i = end.max(start + 1);
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
    }
    let mut buffer = out?;
    buffer.push_str(&text[copied..]);
    Some(buffer)
}

/// The Luhn check over the digits of `run` (other characters skipped).
pub fn luhn(run: &str) -> bool {
    let mut sum = 0u32;
    let mut double = false;
    for b in run.bytes().rev().filter(u8::is_ascii_digit) {
        let mut d = u32::from(b - b'0');
        if double {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
        double = !double;
    }
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Redactions = Redactions {
        email: true,
        phone: true,
        credit_card: true,
    };

    fn redacted(text: &str) -> String {
        redact_text(text, ALL).map_or_else(|| text.to_owned(), |(t, _)| t)
    }

    #[test]
    fn emails_are_replaced() {
        assert_eq!(
            redacted("write to jane.doe+x@mail.example.com."),
            "write to [email]."
        );
        assert_eq!(redacted("a@b.c is too short"), "a@b.c is too short");
        assert_eq!(redacted("@handle and x@y"), "@handle and x@y");
    }

    #[test]
    fn cards_need_the_luhn_check() {
        assert_eq!(
            redacted("card 4111 1111 1111 1111 ok"),
            "card [credit card] ok"
        );
        assert_eq!(redacted("card 4111-1111-1111-1111"), "card [credit card]");
        // One digit off: not a card, and 16 digits is too long for a phone number.
        assert_eq!(
            redacted("card 4111 1111 1111 1112"),
            "card 4111 1111 1111 1112"
        );
        assert!(luhn("79927398713"));
        assert!(!luhn("79927398710"));
    }

    #[test]
    fn phones_are_replaced_dates_and_small_numbers_are_not() {
        assert_eq!(redacted("call +1 (555) 123-4567 now"), "call [phone] now");
        assert_eq!(redacted("call 555-123-4567"), "call [phone]");
        assert_eq!(redacted("on 2024-09-01 at 10"), "on 2024-09-01 at 10");
        assert_eq!(redacted("order A1234567890"), "order A1234567890");
        assert_eq!(redacted("3 cats"), "3 cats");
    }

    #[test]
    fn nothing_to_do_allocates_nothing() {
        assert!(redact_text("hello there", ALL).is_none());
        assert!(redact_text("jane@example.com", Redactions::default()).is_none());
    }

    #[test]
    fn activity_fields_and_counts() {
        let mut activity = serde_json::json!({
            "type": "message",
            "from": {"id": "dl_jane@example.com"},
            "text": "me: jane@example.com, 4111111111111111",
            "attachments": [{"content": {"body": [{"text": "+44 20 7946 0958"}]}}]
        });
        let counts = redact_activity(&mut activity, ALL);
        assert_eq!(
            counts,
            Counts {
                email: 1,
                phone: 1,
                credit_card: 1
            }
        );
        assert_eq!(activity["text"], "me: [email], [credit card]");
        assert_eq!(activity["from"]["id"], "dl_jane@example.com");
        assert_eq!(
            activity["attachments"][0]["content"]["body"][0]["text"],
            "[phone]"
        );
    }
}
