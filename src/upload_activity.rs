//! The activity part of a multipart upload (PROTOCOL §4.3): found, bounded and handed out for
//! the same rewrite and screen as a posted activity, while every other part streams through.
//!
//! Hand-written rather than a multipart crate: those parse parts into values, and the gateway
//! must re-emit the body byte for byte around one rewritten part, without holding files.

use std::fmt;

use bytes::Bytes;

/// The media type botframework-directlinejs gives the activity part.
const ACTIVITY_CONTENT_TYPE: &[u8] = b"application/vnd.microsoft.activity";
/// Bound on one part's header block: headers are a few lines, never kilobytes.
pub const MAX_PART_HEADERS: usize = 8 * 1024;

/// A `multipart/form-data` Content-Type without a usable boundary.
#[derive(Debug, PartialEq, Eq)]
pub struct NoBoundary;

/// The boundary of a `multipart/form-data` Content-Type: `Ok(None)` for another media type
/// (a raw file upload), `Err` for a multipart without a usable boundary.
pub fn boundary(content_type: &str) -> Result<Option<Vec<u8>>, NoBoundary> {
    let mut params = content_type.split(';');
    let media = params.next().unwrap_or("").trim();
    if !media.eq_ignore_ascii_case("multipart/form-data") {
        return Ok(None);
    }
    for param in params {
        let Some((name, value)) = param.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("boundary") {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            // RFC 2046: 1 to 70 characters.
            if value.is_empty() || value.len() > 70 {
                return Err(NoBoundary);
            }
            return Ok(Some(value.as_bytes().to_vec()));
        }
    }
    Err(NoBoundary)
}

/// What the start of the body says about its first part.
#[derive(Debug, PartialEq, Eq)]
pub enum First {
    /// More bytes are needed; `activity` once the first part's headers name it the activity.
    NeedMore { activity: bool },
    /// The first part is a file: the body from here on goes to a [`Watcher`] (`resume` is
    /// where its content starts).
    File { resume: usize },
    /// The first part is the activity, its JSON at `body`; the body from `body.end` on (the
    /// delimiter after it) goes to a [`Watcher`].
    Activity { body: std::ops::Range<usize> },
    /// Not multipart/form-data as the boundary says.
    Malformed,
}

/// Looks at the buffered start of an upload body for its first part.
pub fn first_part(head: &[u8], boundary: &[u8]) -> First {
    let need = First::NeedMore { activity: false };
    // The first delimiter opens the body, or follows a preamble after a CRLF.
    let mut opening = Vec::with_capacity(boundary.len() + 4);
    opening.extend_from_slice(b"--");
    opening.extend_from_slice(boundary);
    let after_opening = if head.len() < opening.len() {
        if opening.starts_with(head) {
            return need;
        }
        None
    } else if head.starts_with(&opening) {
        Some(opening.len())
    } else {
        None
    };
    let after_opening = match after_opening {
        Some(at) => at,
        None => {
            let mut delimiter = b"\r\n".to_vec();
            delimiter.extend_from_slice(&opening);
            match memchr::memmem::find(head, &delimiter) {
                Some(at) => at + delimiter.len(),
                None if head.len() > MAX_PART_HEADERS => return First::Malformed,
                None => return need,
            }
        }
    };
    // The headers run to the first empty line; the CRLF ending the delimiter line counts
    // as the first of the two, so an empty header block is found too.
    let Some(end) = memchr::memmem::find(&head[after_opening..], b"\r\n\r\n") else {
        return if head.len() - after_opening > MAX_PART_HEADERS {
            First::Malformed
        } else {
            need
        };
    };
    if end > MAX_PART_HEADERS {
        return First::Malformed;
    }
    let headers = &head[after_opening..after_opening + end];
    let content = after_opening + end + 4;
    if !is_activity(headers) {
        return First::File { resume: content };
    }
    let mut delimiter = b"\r\n--".to_vec();
    delimiter.extend_from_slice(boundary);
    match memchr::memmem::find(&head[content..], &delimiter) {
        Some(len) => First::Activity {
            body: content..content + len,
        },
        None => First::NeedMore { activity: true },
    }
}

/// Whether a part's header block (the delimiter line's rest, then the header lines) marks the
/// activity: its media type, or the form field name `activity`.
fn is_activity(headers: &[u8]) -> bool {
    headers.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return false;
        };
        let (name, value) = (line[..colon].trim_ascii(), line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-type") {
            let media = value
                .split(|&b| b == b';')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            media.eq_ignore_ascii_case(ACTIVITY_CONTENT_TYPE)
        } else if name.eq_ignore_ascii_case(b"content-disposition") {
            value.split(|&b| b == b';').skip(1).any(|param| {
                let param = param.trim_ascii();
                param.eq_ignore_ascii_case(b"name=\"activity\"")
                    || param.eq_ignore_ascii_case(b"name=activity")
            })
        } else {
            false
        }
    })
}

/// An activity part after a file part: refused, since the files before it have already gone
/// upstream and the activity would reach Direct Line unscreened.
#[derive(Debug)]
pub struct LateActivity;

impl fmt::Display for LateActivity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an upload's activity part must be its first part")
    }
}

impl std::error::Error for LateActivity {}

/// Watches the rest of an upload as it streams, byte by byte, for a later activity part: a
/// delimiter or header block split across chunks is matched all the same (KMP over the
/// delimiter, the header block gathered up to [`MAX_PART_HEADERS`]).
pub struct Watcher {
    delimiter: Vec<u8>,
    failure: Vec<usize>,
    matched: usize,
    /// The bytes after a delimiter, while its header block is incomplete.
    headers: Option<Vec<u8>>,
    closed: bool,
}

impl Watcher {
    pub fn new(boundary: &[u8]) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary);
        let mut failure = vec![0; delimiter.len()];
        let mut k = 0;
        for i in 1..delimiter.len() {
            while k > 0 && delimiter[i] != delimiter[k] {
                k = failure[k - 1];
            }
            if delimiter[i] == delimiter[k] {
                k += 1;
            }
            failure[i] = k;
        }
        Self {
            delimiter,
            failure,
            matched: 0,
            headers: None,
            closed: false,
        }
    }

    /// Looks at the next bytes of the body; `Err` once a later part is the activity, or a
    /// part's header block is over the bound.
    pub fn observe(&mut self, chunk: &[u8]) -> Result<(), LateActivity> {
        for &byte in chunk {
            if self.closed {
                // The epilogue after the closing delimiter: nothing Direct Line reads.
                return Ok(());
            }
            if let Some(headers) = &mut self.headers {
                headers.push(byte);
                if headers.as_slice() == b"--" {
                    self.closed = true;
                } else if headers.ends_with(b"\r\n\r\n") {
                    if is_activity(headers) {
                        return Err(LateActivity);
                    }
                    self.headers = None;
                } else if headers.len() > MAX_PART_HEADERS {
                    return Err(LateActivity);
                }
                continue;
            }
            while self.matched > 0 && byte != self.delimiter[self.matched] {
                self.matched = self.failure[self.matched - 1];
            }
            if byte == self.delimiter[self.matched] {
                self.matched += 1;
            }
            if self.matched == self.delimiter.len() {
                self.matched = 0;
                self.headers = Some(Vec::with_capacity(64));
            }
        }
        Ok(())
    }
}

/// The body sent upstream in place of the client's first bytes: the buffered head with the
/// activity part's JSON swapped for `activity`.
pub fn replace_activity(head: &[u8], body: std::ops::Range<usize>, activity: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(head.len() - body.len() + activity.len());
    out.extend_from_slice(&head[..body.start]);
    out.extend_from_slice(activity);
    out.extend_from_slice(&head[body.end..]);
    Bytes::from(out)
}

/// The body sent upstream: the buffered head (the activity part rewritten), then the rest of
/// the client's body as it arrives, watched for a later activity part.
pub struct Continued<B> {
    head: Option<Bytes>,
    rest: B,
    watcher: Watcher,
}

impl<B> Continued<B> {
    pub fn new(head: Bytes, rest: B, watcher: Watcher) -> Self {
        Self {
            head: Some(head).filter(|h| !h.is_empty()),
            rest,
            watcher,
        }
    }
}

impl<B> http_body::Body for Continued<B>
where
    B: http_body::Body<Data = Bytes, Error = crate::boxed_body::BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = crate::boxed_body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::task::Poll;
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(head))));
        }
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref()
                    && let Err(late) = this.watcher.observe(data)
                {
                    return Poll::Ready(Some(Err(late.into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: &[u8] = b"XyZ";

    fn upload(parts: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (headers, body) in parts {
            out.extend_from_slice(b"--XyZ\r\n");
            out.extend_from_slice(headers.as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            out.extend_from_slice(body.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"--XyZ--\r\n");
        out
    }

    const ACTIVITY: &str = "Content-Disposition: form-data; name=\"activity\"\r\nContent-Type: application/vnd.microsoft.activity";
    const FILE: &str = "Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain";

    #[test]
    fn boundary_from_content_type() {
        assert_eq!(boundary("text/plain"), Ok(None));
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\""),
            Ok(Some(b"a b".to_vec()))
        );
        assert_eq!(
            boundary("Multipart/Form-Data;boundary=q"),
            Ok(Some(b"q".to_vec()))
        );
        assert_eq!(boundary("multipart/form-data"), Err(NoBoundary));
        assert_eq!(boundary("multipart/form-data; boundary="), Err(NoBoundary));
    }

    #[test]
    fn first_activity_part_found_at_every_prefix() {
        let body = upload(&[(ACTIVITY, "{\"type\":\"message\"}"), (FILE, "hello")]);
        let start = memchr::memmem::find(&body, b"{\"type").unwrap();
        let found = First::Activity {
            body: start..start + 18,
        };
        let complete = memchr::memmem::find(&body[start..], b"\r\n--XyZ").unwrap() + start + 7;
        for n in 0..body.len() {
            let seen = first_part(&body[..n], B);
            if n >= complete {
                assert_eq!(seen, found, "{n}");
            } else {
                assert!(matches!(seen, First::NeedMore { .. }), "{n}: {seen:?}");
            }
        }
    }

    #[test]
    fn first_file_part_resumes_at_its_content() {
        let body = upload(&[(FILE, "hello"), (ACTIVITY, "{}")]);
        let at = memchr::memmem::find(&body, b"hello").unwrap();
        assert_eq!(first_part(&body, B), First::File { resume: at });
    }

    #[test]
    fn preamble_and_garbage() {
        let mut body = b"preamble\r\n".to_vec();
        body.extend(upload(&[(ACTIVITY, "{}")]));
        assert!(matches!(first_part(&body, B), First::Activity { .. }));
        assert_eq!(
            first_part(&[b'x'; MAX_PART_HEADERS + 1], B),
            First::Malformed
        );
    }

    #[test]
    fn watcher_refuses_a_later_activity_however_split() {
        let body = upload(&[(FILE, "hello\r\n--XyZnot"), (ACTIVITY, "{}")]);
        let at = match first_part(&body, B) {
            First::File { resume } => resume,
            other => panic!("{other:?}"),
        };
        for size in 1..8 {
            let mut watcher = Watcher::new(B);
            let refused = body[at..].chunks(size).any(|c| watcher.observe(c).is_err());
            assert!(refused, "chunks of {size}");
        }
    }

    #[test]
    fn watcher_passes_files_and_the_epilogue() {
        let mut body = upload(&[(ACTIVITY, "{}"), (FILE, "a\r\n--Xy"), (FILE, "b")]);
        body.extend_from_slice(
            b"epilogue\r\n--XyZ\r\nContent-Type: application/vnd.microsoft.activity\r\n\r\n",
        );
        let First::Activity { body: range } = first_part(&body, B) else {
            panic!()
        };
        for size in 1..8 {
            let mut watcher = Watcher::new(B);
            for chunk in body[range.end..].chunks(size) {
                watcher.observe(chunk).unwrap();
            }
        }
    }

    #[test]
    fn replaced_activity_keeps_the_rest() {
        let body = upload(&[(ACTIVITY, "{}"), (FILE, "a")]);
        let First::Activity { body: range } = first_part(&body, B) else {
            panic!()
        };
        let out = replace_activity(&body, range, b"{\"x\":1}");
        assert_eq!(out, upload(&[(ACTIVITY, "{\"x\":1}"), (FILE, "a")]));
    }
}
