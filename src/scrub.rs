//! Scrubbing upstream bodies: what the gateway sent upstream (the secret, conversation tokens,
//! for error bodies the upstream host) never reaches a client, even when Direct Line or a
//! middlebox in front of it echoes a request into its answer.
//!
//! Matches are literal bytes (memmem) and each is overwritten by a run of one filler byte of
//! the same length. The filler is a byte no needle contains, so a filled run can never join
//! its neighbours into a new match, and the length is kept, so a streamed body keeps its
//! `Content-Length`. Streamed bodies are scrubbed chunk by chunk ([`StreamScrub`]): only a
//! chunk's tail that could still begin a needle is held back for the next chunk.

use std::borrow::Cow;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use memchr::memmem;

/// Needles one scrubber holds: the secret, the sealed and a fresh upstream token, the host
/// and the host with its port, and one spare.
pub const MAX_NEEDLES: usize = 6;

/// Fillers, in order of preference: printable ASCII that is neither `"` nor `\`, so a
/// filled JSON string stays a valid JSON string.
const FILLERS: &[u8] = b"*#~!^|`$%&'()+,;<=>?@{}";

/// memmem for long haystacks. For short ones (headers, a POST answer) memmem hashes the
/// whole needle first (Rabin-Karp), most of the cost for a long token: there the needle's
/// first byte is looked for with memchr instead and each hit compared.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.len() > hay.len() {
        return None;
    }
    if hay.len() >= 64 {
        return memmem::find(hay, needle);
    }
    let starts = &hay[..=hay.len() - needle.len()];
    memchr::memchr_iter(needle[0], starts).find(|&at| hay[at..].starts_with(needle))
}

/// One string that must not reach a client. Shared strings (the bot's secret) are not copied
/// per request; a request's own token is moved in.
#[derive(Clone, Default)]
pub enum Needle {
    #[default]
    None,
    Shared(Arc<str>),
    Owned(String),
}

impl Needle {
    fn bytes(&self) -> &[u8] {
        match self {
            Needle::None => b"",
            Needle::Shared(s) => s.as_bytes(),
            Needle::Owned(s) => s.as_bytes(),
        }
    }
}

impl From<Arc<str>> for Needle {
    fn from(value: Arc<str>) -> Self {
        Needle::Shared(value)
    }
}

impl From<String> for Needle {
    fn from(value: String) -> Self {
        Needle::Owned(value)
    }
}

impl From<&str> for Needle {
    fn from(value: &str) -> Self {
        Needle::Owned(value.to_owned())
    }
}

/// The strings one answer is scrubbed of. Fixed slots, so building one allocates nothing.
#[derive(Clone, Default)]
pub struct Needles {
    slots: [Needle; MAX_NEEDLES],
    count: usize,
    longest: usize,
}

impl Needles {
    /// Adds `needle`; empty ones are ignored (an empty string is in every body), and past
    /// [`MAX_NEEDLES`] the call is a programming error.
    pub fn with(mut self, needle: impl Into<Needle>) -> Self {
        self.push(needle);
        self
    }

    /// [`Needles::with`] in place: the set is a few hundred bytes, not worth moving per needle.
    pub fn push(&mut self, needle: impl Into<Needle>) {
        let needle = needle.into();
        let len = needle.bytes().len();
        if len == 0 {
            return;
        }
        debug_assert!(self.count < MAX_NEEDLES, "more needles than slots");
        if self.count < MAX_NEEDLES {
            self.longest = self.longest.max(len);
            self.slots[self.count] = needle;
            self.count += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn iter(&self) -> impl Iterator<Item = &[u8]> {
        self.slots[..self.count].iter().map(Needle::bytes)
    }

    pub fn contains_any(&self, hay: &[u8]) -> bool {
        self.iter().any(|needle| find(hay, needle).is_some())
    }

    /// `hay` with every match filled; borrowed (no copy) when nothing matched.
    pub fn scrub<'a>(&self, hay: &'a [u8]) -> Cow<'a, [u8]> {
        let mut out: Option<Vec<u8>> = None;
        let end = self.fill_matches(hay, &mut out);
        match out {
            None => Cow::Borrowed(hay),
            Some(mut out) => {
                out.extend_from_slice(&hay[end..]);
                Cow::Owned(out)
            }
        }
    }

    /// [`Needles::scrub`] for text: needles are whole strings, so matches lie on character
    /// boundaries and the filler is ASCII; the result is still UTF-8.
    pub fn scrub_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
        }
    }

    /// Finds the earliest match of any needle from the start, then the next one after it,
    /// and so on; copies the text before each match and a fill into `out` (created at the
    /// first match). Returns where the text after the last match starts (0 without one).
    fn fill_matches(&self, hay: &[u8], out: &mut Option<Vec<u8>>) -> usize {
        if self.count == 0 || hay.len() < self.shortest() {
            return 0;
        }
        // Each needle's next match at or after `from` (`Some(None)`: no more), found once
        // and reused until `from` passes it, so many matches cost one pass per needle.
        let mut next: [Option<Option<usize>>; MAX_NEEDLES] = [None; MAX_NEEDLES];
        let mut from = 0;
        let mut filler = None;
        loop {
            let mut best: Option<(usize, usize)> = None;
            for (i, needle) in self.iter().enumerate() {
                let search = match next[i] {
                    None => true,
                    Some(Some(at)) => at < from,
                    Some(None) => false,
                };
                if search {
                    next[i] = Some(find(&hay[from..], needle).map(|at| at + from));
                }
                if let Some(Some(at)) = next[i]
                    && best.is_none_or(|(b, _)| at < b)
                {
                    best = Some((at, needle.len()));
                }
            }
            let Some((at, len)) = best else {
                return from;
            };
            let fill = *filler.get_or_insert_with(|| self.filler());
            let buf = out.get_or_insert_with(|| Vec::with_capacity(hay.len()));
            buf.extend_from_slice(&hay[from..at]);
            buf.resize(buf.len() + len, fill);
            from = at + len;
        }
    }

    /// The shortest needle's length: a body shorter than it cannot hold any.
    pub fn shortest(&self) -> usize {
        self.iter().map(<[u8]>::len).min().unwrap_or(0)
    }

    /// The first filler byte no needle contains. Needles are credentials and host names
    /// (base64url, dots, colons, brackets), so this is `*` in practice. Needles are UTF-8,
    /// which never holds 0xFF: the last resort keeps the guarantee (at the cost of a body
    /// that is no longer text) for needles holding every printable filler.
    fn filler(&self) -> u8 {
        FILLERS
            .iter()
            .copied()
            .find(|&b| {
                self.iter()
                    .all(|needle| memchr::memchr(b, needle).is_none())
            })
            .unwrap_or(0xFF)
    }

    /// Where the tail of `data` that could still begin a needle starts, looking only at
    /// positions from `from` on: the earliest `p` such that `data[p..]` is a proper prefix of
    /// a needle, or `data.len()`. A needle starting before that point would have to be
    /// shorter than what follows it, so it was found whole.
    fn held_tail(&self, data: &[u8], from: usize) -> usize {
        let window = data
            .len()
            .saturating_sub(self.longest.saturating_sub(1))
            .max(from);
        let mut held = data.len();
        for needle in self.iter() {
            let tail = &data[window..held];
            for offset in memchr::memchr_iter(needle[0], tail) {
                let p = window + offset;
                let rest = &data[p..];
                if rest.len() < needle.len() && needle.starts_with(rest) {
                    held = held.min(p);
                    break;
                }
            }
        }
        held
    }
}

/// Scrubs a body that arrives in chunks. The concatenated output is the concatenated input
/// with every needle filled, whatever the chunk boundaries; without a match it is the input
/// byte for byte, and chunks without a match and without a held tail pass without a copy.
pub struct StreamScrub {
    needles: Needles,
    carry: Vec<u8>,
    /// Whether any match was filled so far (for the metric).
    pub scrubbed: bool,
}

impl StreamScrub {
    pub fn new(needles: Needles) -> Self {
        Self {
            needles,
            carry: Vec::new(),
            scrubbed: false,
        }
    }

    /// What may be sent of the stream so far; possibly empty while a tail is held.
    pub fn push(&mut self, chunk: Bytes) -> Bytes {
        if self.needles.is_empty() {
            return chunk;
        }
        let data = if self.carry.is_empty() {
            chunk
        } else {
            self.carry.extend_from_slice(&chunk);
            Bytes::from(std::mem::take(&mut self.carry))
        };
        let mut filled = None;
        let end = self.needles.fill_matches(&data, &mut filled);
        let held = self.needles.held_tail(&data, end);
        self.carry.extend_from_slice(&data[held..]);
        match filled {
            None => data.slice(..held),
            Some(mut out) => {
                self.scrubbed = true;
                out.extend_from_slice(&data[end..held]);
                Bytes::from(out)
            }
        }
    }

    /// The held tail once the stream has ended: a proper prefix of a needle, no needle.
    pub fn finish(&mut self) -> Bytes {
        Bytes::from(std::mem::take(&mut self.carry))
    }

    fn holds_nothing(&self) -> bool {
        self.carry.is_empty()
    }
}

/// A response body scrubbed as it streams. Lengths are kept, so the size hint (and with it
/// `Content-Length`) is the inner body's.
pub struct ScrubbedBody<B, F> {
    inner: B,
    scrub: StreamScrub,
    /// A trailers frame waiting behind the held tail.
    pending: Option<Frame<Bytes>>,
    ended: bool,
    /// Called once, when the first match is filled (a metric). A type parameter rather than
    /// a boxed closure: no allocation per response.
    on_scrub: Option<F>,
}

impl<B, F: FnOnce()> ScrubbedBody<B, F> {
    pub fn new(inner: B, needles: Needles, on_scrub: F) -> Self {
        Self {
            inner,
            scrub: StreamScrub::new(needles),
            pending: None,
            ended: false,
            on_scrub: Some(on_scrub),
        }
    }

    fn note_scrub(&mut self) {
        if self.scrub.scrubbed
            && let Some(callback) = self.on_scrub.take()
        {
            callback();
        }
    }
}

impl<B, F> Body for ScrubbedBody<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnOnce() + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if let Some(frame) = this.pending.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        loop {
            if this.ended {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(error))) => return Poll::Ready(Some(Err(error))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.scrub.push(data);
                        this.note_scrub();
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out))));
                        }
                    }
                    Err(trailers) => {
                        let tail = this.scrub.finish();
                        if tail.is_empty() {
                            return Poll::Ready(Some(Ok(trailers)));
                        }
                        this.pending = Some(trailers);
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                },
                Poll::Ready(None) => {
                    this.ended = true;
                    let tail = this.scrub.finish();
                    if !tail.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(tail))));
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none()
            && self.scrub.holds_nothing()
            && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn needles(list: &[&str]) -> Needles {
        list.iter().fold(Needles::default(), |n, s| n.with(*s))
    }

    fn streamed(needles: &Needles, body: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut scrub = StreamScrub::new(needles.clone());
        let mut out = Vec::new();
        let mut start = 0;
        for &cut in cuts {
            let cut = cut.clamp(start, body.len());
            out.extend_from_slice(&scrub.push(Bytes::copy_from_slice(&body[start..cut])));
            start = cut;
        }
        out.extend_from_slice(&scrub.push(Bytes::copy_from_slice(&body[start..])));
        out.extend_from_slice(&scrub.finish());
        out
    }

    #[test]
    fn fills_every_match_and_keeps_the_length() {
        let n = needles(&["s3cret", "tok.en"]);
        let body = br#"{"error":{"message":"Bearer s3cret and tok.en, s3crets3cret"}}"#;
        let out = n.scrub(body);
        assert_eq!(out.len(), body.len());
        assert_eq!(
            &out[..],
            &br#"{"error":{"message":"Bearer ****** and ******, ************"}}"#[..]
        );
        assert!(matches!(n.scrub(b"clean body"), Cow::Borrowed(_)));
        assert_eq!(n.scrub_str("x s3cret y"), "x ****** y");
    }

    #[test]
    fn overlapping_needles_leave_nothing() {
        let n = needles(&["abcdef", "cd", "efg"]);
        for body in [&b"abcdefg"[..], b"xxcdefgh", b"abcabcdef"] {
            let out = n.scrub(body);
            assert!(!n.contains_any(&out), "{:?}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn the_filler_is_a_byte_no_needle_has() {
        let n = needles(&["a*b", "c#d"]);
        let out = n.scrub(b"a*b c#d");
        assert_eq!(&out[..], b"~~~ ~~~");
    }

    #[test]
    fn a_needle_split_over_chunks_is_filled() {
        let n = needles(&["SECRET-VALUE"]);
        let body = b"<html>Authorization: Bearer SECRET-VALUE</html>";
        for cut in 0..body.len() {
            let out = streamed(&n, body, &[cut]);
            assert_eq!(out.len(), body.len());
            assert!(!n.contains_any(&out), "cut at {cut}");
        }
        // A clean chunk is passed on whole, without holding anything back.
        let mut scrub = StreamScrub::new(n);
        let clean = Bytes::from_static(br#"{"id":"c|0000001"}"#);
        assert_eq!(scrub.push(clean.clone()), clean);
        assert!(scrub.finish().is_empty());
    }

    #[tokio::test]
    async fn scrubbed_body_streams_with_the_inner_size() {
        use http_body_util::{BodyExt, Full};
        let inner = Full::new(Bytes::from_static(b"x SECRET y"));
        let scrubbed = std::sync::atomic::AtomicUsize::new(0);
        let count = || {
            scrubbed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let body = ScrubbedBody::new(inner, needles(&["SECRET"]), count);
        assert_eq!(body.size_hint().exact(), Some(10));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"x ****** y");
        assert_eq!(scrubbed.load(std::sync::atomic::Ordering::Relaxed), 1);
    }

    fn needle() -> impl Strategy<Value = String> {
        // Credentials and host names, and short ones that collide often.
        prop_oneof![
            "[A-Za-z0-9._-]{8,40}",
            "[a-c]{1,3}",
            "[a-z0-9.-]{1,12}(:[0-9]{1,5})?",
        ]
    }

    proptest! {
        /// Any body, any needles, any split into chunks: no needle survives, the length is
        /// kept, and a body without needles comes out byte for byte.
        #[test]
        fn no_needle_survives_any_split(
            list in proptest::collection::vec(needle(), 1..5),
            pieces in proptest::collection::vec(
                prop_oneof!["[a-d.:*-]{0,12}", "[ -~]{0,12}", Just(String::new())],
                0..12,
            ),
            plant in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
            cuts in proptest::collection::vec(0usize..200, 0..6),
        ) {
            let mut body = String::new();
            for (i, piece) in pieces.iter().enumerate() {
                body.push_str(piece);
                if let Some(index) = plant.get(i) {
                    body.push_str(index.get::<String>(&list));
                }
            }
            let refs: Vec<&str> = list.iter().map(String::as_str).collect();
            let n = needles(&refs);
            let mut cuts = cuts;
            cuts.sort_unstable();
            let whole = n.scrub(body.as_bytes());
            let out = streamed(&n, body.as_bytes(), &cuts);
            prop_assert_eq!(out.len(), body.len());
            prop_assert!(!n.contains_any(&out), "{:?} -> {:?}", body, String::from_utf8_lossy(&out));
            prop_assert!(!n.contains_any(&whole));
            if !n.contains_any(body.as_bytes()) {
                prop_assert_eq!(&out[..], body.as_bytes());
                prop_assert!(matches!(whole, Cow::Borrowed(_)));
            }
        }
    }
}
