//! HTTP/1.1 message bodies on the wire, shared by both legs: the decoder of RFC 9112 §6-7
//! framing (length, chunked with trailers, up to the close) and the encoders of fields,
//! chunks and trailers.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4 << 10;
/// Largest trailer section accepted.
const MAX_TRAILERS: usize = 64 << 10;
const MAX_TRAILER_FIELDS: usize = 64;

/// How the body of a message is delimited.
pub enum Framing {
    /// No body: HEAD, 204, 304 (RFC 9112 §6.3 rule 1), or a request without one.
    Empty,
    /// `Content-Length`: this many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// No length: the body runs until the peer closes the connection.
    Close,
    Done,
}

/// Where the chunked decoder stands.
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl Framing {
    pub fn is_over(&self) -> bool {
        matches!(self, Framing::Empty | Framing::Done | Framing::Length(0))
    }
}

/// A body whose framing failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("connection failed during the body: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection closed before the end of the body")]
    Incomplete,
    #[error("invalid chunked framing")]
    Invalid,
    /// The upstream sent none of its body for this long (its `response_timeout`).
    #[error("no body bytes for {0:?}")]
    Stalled(std::time::Duration),
}

/// A connection's read side: its buffer and a way to add to it.
pub trait Fill {
    fn buffer(&mut self) -> &mut BytesMut;
    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>>;
    /// The body is an upstream's, read leniently, as a legacy service needs: its chunked
    /// framing may end lines with a bare LF (RFC 9112 §2.2 lets a recipient accept one), and
    /// a trailer section that is not valid fields is dropped whole instead of failing the
    /// body before it, which is complete. A client's body is held to CRLF.
    fn lenient(&self) -> bool {
        false
    }
}

type Polled = Poll<Option<Result<Frame<Bytes>, BodyError>>>;

/// The next frame of a body framed by `framing`, read from `src` without copies.
pub fn poll_frame<F: Fill>(framing: &mut Framing, src: &mut F, cx: &mut Context<'_>) -> Polled {
    loop {
        match framing {
            Framing::Empty | Framing::Done | Framing::Length(0) => return Poll::Ready(None),
            Framing::Length(left) => {
                if src.buffer().is_empty() {
                    ready!(fill(src, cx, false))?;
                }
                return Poll::Ready(Some(Ok(Frame::data(take(src.buffer(), left)))));
            }
            Framing::Close => {
                if src.buffer().is_empty() && ready!(fill(src, cx, true))? == 0 {
                    *framing = Framing::Done;
                    return Poll::Ready(None);
                }
                let all = src.buffer().split().freeze();
                return Poll::Ready(Some(Ok(Frame::data(all))));
            }
            Framing::Chunked(_) => {
                if let Some(frame) = ready!(poll_chunked(framing, src, cx)) {
                    return Poll::Ready(Some(frame));
                }
            }
        }
    }
}

/// One step of the chunked decoder (RFC 9112 §7.1): `Ready(None)` means "state changed, go
/// on"; the end of the body sets `Framing::Done`.
fn poll_chunked<F: Fill>(framing: &mut Framing, src: &mut F, cx: &mut Context<'_>) -> Polled {
    let Framing::Chunked(state) = framing else {
        return Poll::Ready(None);
    };
    let lenient = src.lenient();
    let buf = src.buffer();
    match state {
        Chunk::Size => match size_line(buf, lenient)? {
            Some((used, size)) => {
                buf.advance(used);
                *state = if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                };
            }
            None if buf.len() > MAX_CHUNK_LINE => {
                return Poll::Ready(Some(Err(BodyError::Invalid)))
            }
            None => {
                ready!(fill(src, cx, false))?;
            }
        },
        Chunk::Data(left) => {
            if buf.is_empty() {
                ready!(fill(src, cx, false))?;
                return Poll::Ready(None);
            }
            let data = take(buf, left);
            if *left == 0 {
                *state = Chunk::DataEnd;
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Chunk::DataEnd => match line_end(buf, lenient) {
            Some(0) => return Poll::Ready(Some(Err(BodyError::Invalid))),
            Some(used) => {
                buf.advance(used);
                *state = Chunk::Size;
            }
            None => {
                ready!(fill(src, cx, false))?;
            }
        },
        Chunk::Trailers => return poll_trailers(framing, src, cx),
    }
    Poll::Ready(None)
}

/// The line end at the start of `buf`: its length (CRLF, or a bare LF when `lenient`), `0`
/// if something else is there, `None` until enough is buffered to tell.
fn line_end(buf: &[u8], lenient: bool) -> Option<usize> {
    match buf {
        [b'\r', b'\n', ..] => Some(2),
        [b'\n', ..] if lenient => Some(1),
        [] | [b'\r'] => None,
        _ => Some(0),
    }
}

fn poll_trailers<F: Fill>(framing: &mut Framing, src: &mut F, cx: &mut Context<'_>) -> Polled {
    let lenient = src.lenient();
    let buf = src.buffer();
    if let Some(used @ 1..) = line_end(buf, lenient) {
        buf.advance(used);
        *framing = Framing::Done;
        return Poll::Ready(None);
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => {
            let trailers = trailer_map(fields);
            buf.advance(used);
            *framing = Framing::Done;
            Poll::Ready(Some(Ok(Frame::trailers(trailers))))
        }
        Ok(httparse::Status::Partial) if buf.len() <= MAX_TRAILERS => {
            ready!(fill(src, cx, false))?;
            Poll::Ready(None)
        }
        Err(httparse::Error::TooManyHeaders) => Poll::Ready(Some(Err(BodyError::Invalid))),
        Err(_) if lenient => skip_trailers(framing, src, cx),
        _ => Poll::Ready(Some(Err(BodyError::Invalid))),
    }
}

/// Drops a trailer section that is not valid fields. Trailers are optional metadata a
/// recipient may discard (RFC 9110 §6.5.1), and the section still ends at its first empty
/// line (RFC 9112 §7.1.2), so the body before it is relayed complete.
fn skip_trailers<F: Fill>(framing: &mut Framing, src: &mut F, cx: &mut Context<'_>) -> Polled {
    let buf = src.buffer();
    // The first empty line: two line ends in a row, each CRLF or a bare LF.
    let end = memchr::memmem::find_iter(buf, b"\n")
        .find(|&at| line_end(&buf[at + 1..], true).is_some_and(|used| used > 0));
    match end {
        Some(at) => {
            let used = line_end(&buf[at + 1..], true).unwrap_or(1);
            buf.advance(at + 1 + used);
            *framing = Framing::Done;
            tracing::debug!("dropped an upstream trailer section that is not valid fields");
            Poll::Ready(None)
        }
        None if buf.len() <= MAX_TRAILERS => {
            ready!(fill(src, cx, false))?;
            Poll::Ready(None)
        }
        None => Poll::Ready(Some(Err(BodyError::Invalid))),
    }
}

/// The trailer fields that may be relayed (see [`crate::headers::trailer_allowed`]).
fn trailer_map(fields: &[httparse::Header<'_>]) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len());
    for field in fields {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) {
            if crate::headers::trailer_allowed(&name) {
                map.append(name, value);
            }
        }
    }
    map
}

/// Up to `left` buffered bytes, counted off.
fn take(buf: &mut BytesMut, left: &mut u64) -> Bytes {
    let n = (*left).min(buf.len() as u64) as usize;
    *left -= n as u64;
    buf.split_to(n).freeze()
}

/// Reads more; the end of the stream is an error unless `eof_ends` (a close-delimited body).
fn fill<F: Fill>(
    src: &mut F,
    cx: &mut Context<'_>,
    eof_ends: bool,
) -> Poll<Result<usize, BodyError>> {
    match ready!(src.poll_fill(cx)) {
        Ok(0) if !eof_ends => Poll::Ready(Err(BodyError::Incomplete)),
        Ok(n) => Poll::Ready(Ok(n)),
        Err(err) => Poll::Ready(Err(BodyError::Io(err))),
    }
}

/// A whole chunk-size line at the start of `buf`: its length with its line end, and the
/// size. Extensions after `;` are ignored (RFC 9112 §7.1.1); a bare LF is refused unless
/// `lenient`. Leading zeros do not count toward the 15 digits a size may have.
fn size_line(buf: &[u8], lenient: bool) -> Result<Option<(usize, u64)>, BodyError> {
    let Some(end) = buf.iter().position(|b| *b == b'\n') else {
        // A CR not followed by LF ends no line: waiting for one would stall the body.
        return match memchr::memchr(b'\r', buf) {
            Some(cr) if cr + 1 < buf.len() => Err(BodyError::Invalid),
            _ => Ok(None),
        };
    };
    let line = match buf[..end].strip_suffix(b"\r") {
        Some(line) => line,
        None if lenient => &buf[..end],
        None => return Err(BodyError::Invalid),
    };
    let zeros = line.iter().take_while(|b| **b == b'0').count();
    let line = match zeros {
        0 => line,
        // One zero is kept: `000` is the last chunk.
        _ => &line[zeros - 1..],
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::Invalid);
    }
    let rest = line[digits..].trim_ascii_start();
    if !(rest.is_empty() || rest.starts_with(b";")) {
        return Err(BodyError::Invalid);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::Invalid)?;
    let size = u64::from_str_radix(text, 16).map_err(|_| BodyError::Invalid)?;
    Ok(Some((end + 1, size)))
}

/// RFC 9110 §8.6: several equal values are one length; differing or malformed ones make the
/// message invalid. `lists`: whether a comma-separated list of equal values is accepted.
pub fn content_length(headers: &HeaderMap, lists: bool) -> Result<Option<u64>, &'static str> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    // The usual case, a single value of digits only, read without the general parse.
    if values.next().is_none() {
        if let Some(length) = plain_digits(first.as_bytes()) {
            return Ok(Some(length));
        }
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        let bytes = value.as_bytes();
        if !lists && bytes.contains(&b',') {
            return Err("a list in Content-Length");
        }
        for item in bytes.split(|b| *b == b',') {
            let item = item.trim_ascii();
            let parsed = std::str::from_utf8(item)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("malformed Content-Length")?;
            if length.is_some_and(|l| l != parsed) {
                return Err("conflicting Content-Length values");
            }
            length = Some(parsed);
        }
    }
    Ok(length)
}

/// The number written by 1 to 19 decimal digits (too few to overflow a u64), else `None`.
fn plain_digits(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit().then(|| n * 10 + u64::from(b - b'0'))
    })
}

/// A field name as the `http` crate makes it, with the names most heads carry matched
/// first. `from_bytes` copies every name through a lowercasing table and then looks it up
/// among all the standard names; here a name of a common length is compared with at most two
/// candidates, eight bytes at a time. `name` is a token (httparse checked it).
pub fn field_name(name: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    use http::header::{ACCEPT, CONTENT_TYPE, DATE, SERVER, USER_AGENT};
    let known = match name.len() {
        4 if folds_to(name, b"host") => Some(HOST),
        4 if folds_to(name, b"date") => Some(DATE),
        6 if folds_to(name, b"accept") => Some(ACCEPT),
        6 if folds_to(name, b"server") => Some(SERVER),
        10 if folds_to(name, b"connection") => Some(CONNECTION),
        10 if folds_to(name, b"user-agent") => Some(USER_AGENT),
        12 if folds_to(name, b"content-type") => Some(CONTENT_TYPE),
        14 if folds_to(name, b"content-length") => Some(CONTENT_LENGTH),
        _ => None,
    };
    match known {
        Some(known) => Ok(known),
        None => HeaderName::from_bytes(name),
    }
}

/// Whether the token `name` is `want` (lowercase letters and `-`, of the same length) in
/// any case. Setting bit 5 lowercases a letter and leaves `-` as it is; of the other token
/// characters none becomes a lowercase letter or `-` by it.
fn folds_to(name: &[u8], want: &[u8]) -> bool {
    const LOWER: u64 = u64::from_ne_bytes([0x20; 8]);
    let len = name.len();
    if len < 8 {
        return name.iter().zip(want).all(|(a, b)| (a | 0x20) == *b);
    }
    let word = |text: &[u8], at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&text[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    let mut at = 0;
    while at + 8 < len {
        if (word(name, at) | LOWER) != word(want, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the words already compared.
    (word(name, len - 8) | LOWER) == word(want, len - 8)
}

/// Which framing and connection fields a head holds, noted while its fields are read, so
/// that the checks after it look up only the fields that are there.
#[derive(Clone, Copy, Debug, Default)]
pub struct Noted {
    pub hosts: usize,
    pub connection: bool,
    pub transfer_encoding: bool,
    pub expect: bool,
    /// `Content-Length` fields seen, and the last one's value if it is plain digits.
    lengths: usize,
    length: Option<u64>,
}

impl Noted {
    pub fn note(&mut self, name: &HeaderName, value: &[u8]) {
        if name == HOST {
            self.hosts += 1;
        } else if name == CONNECTION {
            self.connection = true;
        } else if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == CONTENT_LENGTH {
            self.lengths += 1;
            self.length = plain_digits(value);
        } else if name == EXPECT {
            self.expect = true;
        }
    }

    pub fn content_length(&self) -> bool {
        self.lengths > 0
    }

    /// The `Content-Length` fields were removed.
    pub fn forget_lengths(&mut self) {
        self.lengths = 0;
        self.length = None;
    }

    /// The head's `Content-Length` as [`content_length`] reads it. One field of plain digits,
    /// the usual case, was read as it went past; anything else (repeated, listed, malformed)
    /// is judged by `content_length` from `headers`.
    pub fn length(&self, headers: &HeaderMap, lists: bool) -> Result<Option<u64>, &'static str> {
        match self.length {
            Some(length) if self.lengths == 1 => Ok(Some(length)),
            _ => content_length(headers, lists),
        }
    }
}

/// The items of a comma-separated field, every line of it, trimmed, empty ones skipped.
/// Read as bytes: a value holding obs-text (0x80-0xff) still holds the tokens in it.
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value_tokens(value.as_bytes()))
}

/// The items of one line of a comma-separated field, trimmed, empty ones skipped.
pub fn value_tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a comma-separated field holds `token`, case-insensitively.
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &[u8]) -> bool {
    tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// The three decimal digits of `n` (below 1,000), as in a status code.
pub const fn digits3(n: u32) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// Decimal digits of `n`, written into `out` without a format string.
pub fn decimal(mut n: u64, out: &mut [u8; 20]) -> &[u8] {
    let mut at = out.len();
    loop {
        at -= 1;
        out[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &out[at..];
        }
    }
}

/// One `name: value` line.
pub fn field(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk with the trailer fields that may be relayed (RFC 9112 §7.1.2; an HTTP/2
/// client's request trailers come here unfiltered).
pub fn encode_trailers(trailers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::from(&b"0\r\n"[..]);
    for (name, value) in trailers {
        if crate::headers::trailer_allowed(name) {
            field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// The size line before a chunk of `len` bytes.
pub fn chunk_size(len: usize) -> Bytes {
    let mut line = BytesMut::with_capacity(18);
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for shift in (0..digits).rev() {
        line.extend_from_slice(&[b"0123456789ABCDEF"[(len >> (shift * 4)) & 0xf]]);
    }
    line.extend_from_slice(b"\r\n");
    line.freeze()
}

/// A piece at most this long is copied behind the queue's last piece when that one has the
/// room, so that a small response goes out as one buffer (see [`Queue::push`]).
pub const COALESCE: usize = 4 << 10;

/// Room to reserve behind a head for a body of `length` bytes: a small body is then copied
/// into it by [`Queue::push`], and both go out in one write.
pub fn room_for_body(length: u64) -> usize {
    if length <= COALESCE as u64 {
        length as usize
    } else {
        0
    }
}

/// Bytes waiting to be written: one buffer with a plain write, several with a vectored one.
#[derive(Default)]
pub struct Queue {
    /// The first piece, outside `rest`: most queues only ever hold one piece at a time, and
    /// then allocate nothing. `rest` is empty while this is `None`.
    first: Option<Bytes>,
    rest: VecDeque<Bytes>,
    len: usize,
}

impl Queue {
    /// Queues `bytes`. A small piece is copied into the spare room of the last piece, when
    /// that piece is not shared: a single buffer is written with `send`, which costs the
    /// kernel much less than `writev` with several.
    pub fn push(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        self.len += bytes.len();
        let last = self.rest.back_mut().or(self.first.as_mut());
        if let Some(last) = last {
            if bytes.len() <= COALESCE && append_in_place(last, &bytes) {
                return;
            }
            self.rest.push_back(bytes);
        } else {
            self.first = Some(bytes);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.first = None;
        self.rest.clear();
        self.len = 0;
    }

    /// One write of what is queued (vectored when there are several pieces); the written
    /// bytes are taken off.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<usize>> {
        let written = match &self.first {
            Some(first) if self.rest.is_empty() => ready!(Pin::new(io).poll_write(cx, first))?,
            first => {
                let mut slices = [IoSlice::new(&[]); 8];
                let mut count = 0;
                for (slot, bytes) in slices.iter_mut().zip(first.iter().chain(&self.rest)) {
                    *slot = IoSlice::new(bytes);
                    count += 1;
                }
                ready!(Pin::new(io).poll_write_vectored(cx, &slices[..count]))?
            }
        };
        self.advance(written);
        Poll::Ready(Ok(written))
    }

    fn advance(&mut self, mut written: usize) {
        self.len -= written;
        while written > 0 {
            let Some(front) = self.first.as_mut() else {
                return;
            };
            if written < front.len() {
                front.advance(written);
                return;
            }
            written -= front.len();
            self.first = self.rest.pop_front();
        }
    }
}

/// Copies `bytes` behind `last` when `last` is not shared and has the room.
fn append_in_place(last: &mut Bytes, bytes: &[u8]) -> bool {
    match std::mem::take(last).try_into_mut() {
        Ok(mut owned) if owned.capacity() - owned.len() >= bytes.len() => {
            owned.extend_from_slice(bytes);
            *last = owned.freeze();
            true
        }
        Ok(owned) => {
            *last = owned.freeze();
            false
        }
        Err(shared) => {
            *last = shared;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The token characters of RFC 9110 §5.6.2.
    const TCHAR: &[u8] =
        b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

    #[test]
    fn field_names_are_what_the_http_crate_makes_of_them() {
        let names = [
            "host",
            "date",
            "accept",
            "server",
            "connection",
            "user-agent",
            "content-type",
            "content-length",
            "Content-Length",
            "HOST",
            "User-Agent",
            "x-request-id",
            "expect",
        ];
        for name in names {
            // The name itself, and every name one token character away from it.
            let mut variants = vec![name.as_bytes().to_vec()];
            for at in 0..name.len() {
                for &c in TCHAR {
                    let mut bytes = name.as_bytes().to_vec();
                    bytes[at] = c;
                    variants.push(bytes);
                }
            }
            for bytes in variants {
                let want = HeaderName::from_bytes(&bytes).expect("a token");
                let got = field_name(&bytes).expect("a token");
                assert_eq!(got, want, "{:?}", String::from_utf8_lossy(&bytes));
            }
        }
        assert!(field_name(b"").is_err());
    }

    #[test]
    fn chunk_size_lines() {
        let strict = |line: &[u8]| size_line(line, false);
        assert_eq!(strict(b"1a\r\nrest").ok().flatten(), Some((4, 26)));
        assert_eq!(strict(b"0;ext=1\r\n").ok().flatten(), Some((9, 0)));
        assert_eq!(strict(b"5 ;x\r\n").ok().flatten(), Some((6, 5)));
        assert!(strict(b"5").is_ok_and(|r| r.is_none()));
        assert!(strict(b"5\n").is_err(), "bare LF");
        assert!(strict(b"\r\n").is_err(), "no digits");
        assert!(strict(b"-5\r\n").is_err());
        assert!(strict(b"5x\r\n").is_err());
        assert!(strict(b"1000000000000000\r\n").is_err(), "overflow");
        let zeros = b"00000000000000000005\r\n";
        assert_eq!(strict(zeros).ok().flatten(), Some((zeros.len(), 5)));
        assert_eq!(strict(b"0000\r\n").ok().flatten(), Some((6, 0)));
        assert!(strict(b"0001000000000000000\r\n").is_err(), "overflow");
        assert!(size_line(b"5\rhello\r", true).is_err(), "a bare CR");
        assert!(
            strict(b"5\r").is_ok_and(|r| r.is_none()),
            "its LF may come next"
        );
    }

    #[test]
    fn an_upstreams_chunk_lines_may_end_with_a_bare_lf() {
        assert_eq!(size_line(b"5\nhello", true).ok().flatten(), Some((2, 5)));
        assert_eq!(size_line(b"5\r\n", true).ok().flatten(), Some((3, 5)));
        assert_eq!(line_end(b"\nx", true), Some(1));
        assert_eq!(line_end(b"\nx", false), Some(0));
        assert_eq!(line_end(b"\r\n", false), Some(2));
        assert_eq!(line_end(b"\r", true), None);
        assert_eq!(line_end(b"x", true), Some(0));
    }

    #[test]
    fn chunk_size_lines_are_written_in_hex() {
        assert_eq!(&chunk_size(1)[..], b"1\r\n");
        assert_eq!(&chunk_size(26)[..], b"1A\r\n");
        assert_eq!(&chunk_size(4096)[..], b"1000\r\n");
        assert_eq!(&chunk_size(0xfffff)[..], b"FFFFF\r\n");
    }

    #[test]
    fn content_lengths() {
        let map = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(CONTENT_LENGTH, HeaderValue::from_str(v).expect("value"));
            }
            headers
        };
        assert_eq!(content_length(&map(&["12"]), false), Ok(Some(12)));
        assert_eq!(content_length(&map(&["0"]), false), Ok(Some(0)));
        let max = "9999999999999999999";
        assert_eq!(content_length(&map(&[max]), false), Ok(max.parse().ok()));
        let max = u64::MAX.to_string();
        assert_eq!(content_length(&map(&[&max]), false), Ok(Some(u64::MAX)));
        assert!(content_length(&map(&["18446744073709551616"]), false).is_err());
        assert_eq!(content_length(&map(&[" 7 "]), false), Ok(Some(7)));
        assert_eq!(content_length(&map(&["3", "3"]), false), Ok(Some(3)));
        assert_eq!(content_length(&map(&[]), false), Ok(None));
        assert!(content_length(&map(&["3, 3"]), false).is_err());
        assert_eq!(content_length(&map(&["3, 3"]), true), Ok(Some(3)));
        assert!(content_length(&map(&["3", "4"]), true).is_err());
        for bad in ["+3", "-1", "0x3", "", "3 4"] {
            assert!(content_length(&map(&[bad]), true).is_err(), "{bad}");
        }
    }

    /// One write a [`Recorder`] saw.
    #[derive(Debug, PartialEq)]
    enum Write {
        /// `poll_write`: `send` on a socket.
        Plain,
        /// `poll_write_vectored` with this many buffers: `writev`.
        Vectored(usize),
    }

    /// Records how it was written to.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Write>,
        bytes: Vec<u8>,
        /// Takes at most this many bytes per write, when set (a full socket buffer).
        limit: Option<usize>,
    }

    impl Recorder {
        /// Takes what one write may of `bufs`, in order.
        fn take(&mut self, bufs: &[&[u8]]) -> usize {
            let mut room = self.limit.unwrap_or(usize::MAX);
            let mut taken = 0;
            for buf in bufs {
                let part = buf.len().min(room);
                self.bytes.extend_from_slice(&buf[..part]);
                room -= part;
                taken += part;
            }
            taken
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.push(Write::Plain);
            Poll::Ready(Ok(self.take(&[buf])))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.push(Write::Vectored(bufs.len()));
            let bufs: Vec<&[u8]> = bufs.iter().map(|buf| &buf[..]).collect();
            Poll::Ready(Ok(self.take(&bufs)))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write_all(queue: &mut Queue) -> Recorder {
        let mut out = Recorder::default();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while !queue.is_empty() {
            assert!(queue.poll_write(&mut out, &mut cx).is_ready());
        }
        out
    }

    #[test]
    fn a_small_body_goes_out_in_the_heads_write() {
        let mut head = BytesMut::with_capacity(64);
        head.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        let mut queue = Queue::default();
        queue.push(head.freeze());
        queue.push(Bytes::from_static(b"{\"ok\":true}"));
        assert_eq!(queue.len(), 30);
        let out = write_all(&mut queue);
        assert_eq!(out.writes, [Write::Plain], "one plain write of one buffer");
        assert_eq!(out.bytes, b"HTTP/1.1 200 OK\r\n\r\n{\"ok\":true}");
    }

    #[test]
    fn pieces_without_room_or_too_big_or_shared_are_not_copied() {
        let mut queue = Queue::default();
        // No spare room behind the first piece.
        queue.push(Bytes::from(b"head".to_vec()));
        queue.push(Bytes::from_static(b"body"));
        assert_eq!(write_all(&mut queue).writes, [Write::Vectored(2)]);
        // Too big to be copied, even with the room.
        let mut head = BytesMut::with_capacity(2 * COALESCE);
        head.extend_from_slice(b"head");
        queue.push(head.freeze());
        queue.push(Bytes::from(vec![b'x'; COALESCE + 1]));
        assert_eq!(write_all(&mut queue).writes, [Write::Vectored(2)]);
        // The last piece is shared: writing into it would change the other holder's bytes.
        let mut head = BytesMut::with_capacity(64);
        head.extend_from_slice(b"head");
        let head = head.freeze();
        let other = head.clone();
        queue.push(head);
        queue.push(Bytes::from_static(b"body"));
        let out = write_all(&mut queue);
        assert_eq!(out.writes, [Write::Vectored(2)]);
        assert_eq!(out.bytes, b"headbody");
        assert_eq!(&other[..], b"head");
    }

    #[test]
    fn partial_writes_take_pieces_off_in_order() {
        let mut queue = Queue::default();
        // Ten pieces without room behind them: more than one vectored write holds.
        for piece in 0..10u8 {
            queue.push(Bytes::from(vec![b'a' + piece; 5]));
        }
        assert_eq!(queue.len(), 50);
        let mut out = Recorder {
            limit: Some(7),
            ..Recorder::default()
        };
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while !queue.is_empty() {
            let before = queue.len();
            assert!(queue.poll_write(&mut out, &mut cx).is_ready());
            assert_eq!(queue.len(), before - 7.min(before));
        }
        let expected: Vec<u8> = (0..10u8).flat_map(|piece| [b'a' + piece; 5]).collect();
        assert_eq!(out.bytes, expected);
        assert_eq!(out.writes.len(), 8, "50 bytes, 7 at a time");
        assert_eq!(
            out.writes[0],
            Write::Vectored(8),
            "at most 8 slices per write"
        );
        assert_eq!(out.writes[7], Write::Plain, "the last piece alone");
        // Empty again, the queue takes a new first piece.
        queue.push(Bytes::from_static(b"next"));
        assert_eq!(write_all(&mut queue).bytes, b"next");
    }
}
