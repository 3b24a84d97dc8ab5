//! One request on one upstream connection: the head and body written out while the response
//! head is read, as RFC 9112 frames them. The request body keeps flowing while the upstream
//! answers early; interim (1xx) responses are reported and skipped.

use super::body::UpstreamBody;
use super::io::Io;
use super::{Conn, Pool};
use crate::body::{BoxError, ForwardBody};
use crate::expect::Interim;
use crate::headers::Added;
use crate::wire::Framing;
use crate::wire::{
    chunk_size, decimal, encode_trailers, field, field_name, has_token, room_for_body, Noted, Queue,
};
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use http_body::{Body, Frame};
use hyper::ext::ReasonPhrase;
use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::AsyncWrite;
use tokio::time::Sleep;

/// Most header fields in a response head; more make it invalid (the error text below says 256).
const MAX_HEADERS: usize = 256;
/// Largest response head; a longer one is invalid.
const MAX_HEAD: usize = 256 << 10;
/// Bytes of request body queued for the socket before the body is asked for more.
const MAX_QUEUED: usize = 64 << 10;

/// The head of a request to send, borrowed from the proxy's rewritten request.
pub struct Outgoing<'a> {
    pub method: &'a Method,
    pub path: &'a PathAndQuery,
    pub headers: &'a HeaderMap,
    /// Fields the proxy adds, sent after `headers`.
    pub added: &'a Added,
    /// Sent as `Host` when `headers` has none (an HTTP/1.0 client's request).
    pub host: &'a HeaderValue,
}

/// A request body none of which went out (boxed: every `SendError` would carry its room).
pub struct Unsent(pub Box<ForwardBody>);

impl std::fmt::Debug for Unsent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Unsent(..)")
    }
}

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// The connection ended before a response head. `answered`: some of one had arrived.
    Closed {
        answered: bool,
        error: Option<std::io::Error>,
    },
    /// What came back is not an HTTP/1.1 response the proxy may relay.
    Invalid(&'static str),
    /// The request body failed (the client's body, its limits or timeouts).
    Body(BoxError),
    /// The upstream answered `417 Expectation Failed` while the body waited for its `100`:
    /// the body, none of it sent, comes back to be sent again without `Expect`.
    ExpectRefused(Unsent),
    /// No response head within the response timeout of the request's last byte, or the
    /// upstream took none of the request for that long.
    Timeout,
}

/// Sends `request` with `body` on `conn` and waits for the final response head. The returned
/// body owns the connection and returns it to `pool` once read to its end. A failure comes
/// with whether the connection had served a request before.
///
/// Not an `async fn`: one would keep its arguments twice in its state. The writer is made
/// before the future, so that the state holds it and not also the body it took.
pub fn send<'a>(
    mut conn: Conn,
    request: &'a Outgoing<'a>,
    body: ForwardBody,
    interim: &'a Interim,
    pool: &'a Arc<Pool>,
    timeout: Duration,
) -> impl Future<Output = Result<Response<UpstreamBody>, (SendError, bool)>> + 'a {
    let mut writer = Writer::new(request, body);
    async move {
        let reused = conn.reused;
        let mut answered = false;
        let sleep = tokio::time::sleep(timeout);
        tokio::pin!(sleep);
        let mut seen = None;
        let head = std::future::poll_fn(|cx| {
            match poll_head(&mut conn, &mut writer, interim, &mut answered, cx) {
                Poll::Pending => poll_timeout(&writer, &mut seen, sleep.as_mut(), timeout, cx),
                ready => ready,
            }
        })
        .await
        .map_err(|err| (err, reused))?;
        if head.status == StatusCode::EXPECTATION_FAILED && interim.is_waiting() {
            if let Some(body) = writer.body.take() {
                return Err((SendError::ExpectRefused(Unsent(Box::new(body))), reused));
            }
        }
        let framing =
            Framing::of(&head, request.method == Method::HEAD).map_err(|e| (e, reused))?;
        let unread = writer.may_be_unread(head.status, pool.reuses_after_body());
        let keep_alive =
            framing.allows_reuse() && keeps_alive(&head) && !unread && !head.framed_twice;
        let body = UpstreamBody::new(conn, writer, framing, keep_alive, pool.clone(), timeout);
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;
        if let Some(reason) = head.reason {
            response.extensions_mut().insert(reason);
        }
        if let Some(dropped) = head.dropped {
            response.extensions_mut().insert(dropped);
        }
        if head.framed_twice {
            response.extensions_mut().insert(FramedTwice);
        }
        Ok(response)
    }
}

/// The response timeout. It runs from the request's last byte. While the request is still
/// going out it starts again with each step (a body frame taken or bytes written), so only an
/// upstream that takes none of the request for that long fails it; and it does not run while
/// the writer waits on the client's body, which the server's `body_timeout` bounds. `seen`:
/// the writer's steps when last looked at, `None` before the first look.
fn poll_timeout(
    writer: &Writer,
    seen: &mut Option<u64>,
    mut sleep: Pin<&mut Sleep>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, SendError>> {
    if !writer.finished() {
        let restart = seen.is_some_and(|steps| steps != writer.steps || writer.waits_on_body());
        *seen = Some(writer.steps);
        if restart {
            sleep.as_mut().reset(tokio::time::Instant::now() + timeout);
        }
    }
    ready!(sleep.poll(cx));
    Poll::Ready(Err(SendError::Timeout))
}

/// Interim heads read in one poll before the exchange yields, so that an upstream flooding
/// them still meets the response timeout, which is looked at only between polls.
const INTERIM_PER_POLL: usize = 16;

/// `answered`: any byte of a response (an interim one included) has arrived.
fn poll_head(
    conn: &mut Conn,
    writer: &mut Writer,
    interim: &Interim,
    answered: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, SendError>> {
    let mut interims = 0;
    loop {
        writer.drive(&mut conn.io, cx).map_err(SendError::Body)?;
        if !conn.buf.is_empty() {
            if let Some(head) = parse_head(&mut conn.buf)? {
                if head.status.is_informational() {
                    let reason = head.reason.as_ref().map(|r| r.as_bytes());
                    interim.on_informational(head.status, reason, head.headers);
                    interims += 1;
                    if interims == INTERIM_PER_POLL {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    continue;
                }
                return Poll::Ready(Ok(head));
            }
        }
        match ready!(conn.poll_fill(cx)) {
            Ok(0) => {
                let error = writer.error.take();
                let answered = *answered;
                return Poll::Ready(Err(SendError::Closed { answered, error }));
            }
            Ok(_) => *answered = true,
            Err(error) => {
                let (answered, error) = (*answered, Some(error));
                return Poll::Ready(Err(SendError::Closed { answered, error }));
            }
        }
    }
}

/// A parsed response head.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub reason: Option<ReasonPhrase>,
    pub noted: Noted,
    /// Field lines that are not relayed, because they are not valid HTTP.
    pub dropped: Option<DroppedLines>,
    /// It had both `Transfer-Encoding` and `Content-Length`; the length was removed.
    pub framed_twice: bool,
}

/// Marks a response whose head had both `Transfer-Encoding` and `Content-Length`: the body
/// was read as chunked, the length dropped, and the connection is not reused.
#[derive(Clone, Copy, Debug)]
pub struct FramedTwice;

/// The field lines of an upstream's response head that were not relayed: lines that are not
/// `name: value` with a token name (RFC 9110 §5.1), or whose value holds control characters
/// (§5.5). Left on the response as an extension, so that the proxy can record them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedLines(pub Vec<usize>);

impl std::fmt::Display for DroppedLines {
    /// `"3, 5"`: the lines' numbers, the status line being line 1.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (at, line) in self.0.iter().enumerate() {
            let comma = if at == 0 { "" } else { ", " };
            write!(f, "{comma}{line}")?;
        }
        Ok(())
    }
}

/// The leniencies a legacy service needs, as hyper's client allows them; folded lines are
/// unfolded below (RFC 9112 §5.2). `skip_invalid`: lines that are not valid fields are
/// skipped instead of failing the head.
fn parser(skip_invalid: bool) -> httparse::ParserConfig {
    let mut config = httparse::ParserConfig::default();
    config
        .allow_obsolete_multiline_headers_in_responses(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .ignore_invalid_headers_in_responses(skip_invalid);
    config
}

type Slots<'b> = [MaybeUninit<httparse::Header<'b>>];

/// Parses a response head into `slots`; `skip_invalid` as for [`parser`].
fn parse_into<'h, 'b>(
    buf: &'b [u8],
    slots: &'h mut Slots<'b>,
    skip_invalid: bool,
) -> Result<(httparse::Response<'h, 'b>, httparse::Status<usize>), httparse::Error> {
    let mut parsed = httparse::Response::new(&mut []);
    let status =
        parser(skip_invalid).parse_response_with_uninit_headers(&mut parsed, buf, slots)?;
    Ok((parsed, status))
}

/// The reason phrase of the status line at the start of `head`, as its bytes, if it has one:
/// what follows `HTTP/1.1 200 ` (with one space or more) up to the line's end.
fn raw_reason(head: &[u8]) -> Option<&[u8]> {
    let line = &head[..memchr::memchr(b'\n', head)?];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    reason_at(line).map(|at| &line[at..])
}

/// Where the reason phrase of a status `line` starts, if it has one.
fn reason_at(line: &[u8]) -> Option<usize> {
    let spaces = |from: usize| {
        let rest = line.get(from..).unwrap_or_default();
        rest.iter().take_while(|b| **b == b' ').count()
    };
    let version = b"HTTP/1.1".len();
    let code = version + spaces(version);
    let reason = code + 3 + spaces(code + 3);
    (reason > code + 3 && reason < line.len()).then_some(reason)
}

/// Replaces control characters in the reason phrase of the status line at the start of
/// `buf` with spaces; whether there were any. The reason phrase is then not relayed: the
/// client gets the status's standard one (RFC 9112 §4: a client should ignore it anyway).
fn scrub_reason(buf: &mut [u8]) -> bool {
    let Some(end) = memchr::memchr(b'\n', buf) else {
        return false;
    };
    let line_end = if end > 0 && buf[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    let line = &mut buf[..line_end];
    let Some(at) = reason_at(line) else {
        return false;
    };
    let mut scrubbed = false;
    for byte in &mut line[at..] {
        if (byte.is_ascii_control() && *byte != b'\t') || *byte == 0x7f {
            *byte = b' ';
            scrubbed = true;
        }
    }
    scrubbed
}

const MALFORMED: &str = "malformed response head";

/// Parses a response head at the start of `buf`, taking its bytes; `None` until it is whole.
#[inline]
fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, SendError> {
    // A loop rather than a second call, so that the parse is inlined once.
    let mut scrubbed = false;
    loop {
        match parse_head_as(buf, scrubbed) {
            Err(SendError::Invalid(MALFORMED)) if !scrubbed && scrub_reason(buf) => {
                scrubbed = true;
            }
            parsed => return parsed,
        }
    }
}

/// [`parse_head`]; `scrubbed`: control characters in its reason phrase were replaced.
fn parse_head_as(buf: &mut BytesMut, scrubbed: bool) -> Result<Option<Head>, SendError> {
    // Left uninitialised: httparse writes the slots it uses, and filling 256 empty ones on
    // every response would cost more than the parse.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    // Strict first, so that a valid head (nearly all of them) is parsed once and needs no
    // check for skipped lines; a head that fails is parsed again skipping invalid lines.
    let (result, skipped) = match parse_into(buf, &mut slots, false) {
        Err(httparse::Error::TooManyHeaders) => (Err(httparse::Error::TooManyHeaders), false),
        Err(_) => (parse_into(buf, &mut slots, true), true),
        ok => (ok, false),
    };
    let (parsed, len) = match result {
        // A head that arrived whole in one read is held to the same limit.
        Ok((_, httparse::Status::Complete(len))) if len > MAX_HEAD => {
            return Err(SendError::Invalid("response head over 256 KiB"))
        }
        Ok((parsed, httparse::Status::Complete(len))) => (parsed, len),
        Ok((_, httparse::Status::Partial)) if buf.len() > MAX_HEAD => {
            return Err(SendError::Invalid("response head over 256 KiB"))
        }
        Ok((_, httparse::Status::Partial)) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(SendError::Invalid("more than 256 header fields"))
        }
        Err(_) => return Err(SendError::Invalid(MALFORMED)),
    };
    let code = parsed.code.unwrap_or(0);
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // hyper writes a reason phrase it is given instead of the canonical one.
    let canonical = StatusCode::from_u16(code)
        .ok()
        .and_then(|s| s.canonical_reason());
    let reason = match parsed.reason {
        _ if scrubbed => None,
        // httparse gives an empty reason for one with obs-text (RFC 9112 §4 allows bytes
        // 0x80-0xFF): it is read from the status line itself, and relayed as sent.
        Some("") => raw_reason(&buf[..len]).map(<[u8]>::to_vec),
        reason => reason
            .filter(|r| Some(*r) != canonical)
            .map(|r| r.as_bytes().to_vec()),
    };
    // Names now; values as offsets, to share the head's bytes once it is split off.
    let base = buf.as_ptr() as usize;
    // Sized for every field at once: collected through a filter, the vector would start
    // small and be reallocated on most responses.
    let mut fields: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(parsed.headers.len());
    for field in parsed.headers.iter() {
        if let Ok(name) = field_name(field.name.as_bytes()) {
            let start = field.value.as_ptr() as usize - base;
            fields.push((name, start, start + field.value.len()));
        }
    }
    let listed = parsed.headers.len();
    let head = buf.split_to(len).freeze();
    let status = status_of(code)?;
    let reason = reason.and_then(|r| ReasonPhrase::try_from(r).ok());
    // Room for what the proxy adds on the way back (Via, the request id, the original status,
    // Date), so that the map is not grown and rehashed.
    let mut headers = HeaderMap::with_capacity(fields.len() + crate::http1::ADDED_FIELDS);
    let mut noted = Noted::default();
    let mut suspect = skipped || fields.len() < listed;
    for (name, start, end) in fields {
        match header_value(&head, start, end) {
            Some(value) => {
                noted.note(&name, value.as_bytes());
                headers.append(name, value);
            }
            None => suspect = true,
        }
    }
    let framed_twice = noted.transfer_encoding && noted.content_length();
    if framed_twice {
        // RFC 9112 §6.3 (3): Transfer-Encoding overrides Content-Length, and an intermediary
        // that forwards such a message must remove the length first. It hints at response
        // splitting, so the connection is not reused and the response is recorded.
        headers.remove(CONTENT_LENGTH);
        noted.forget_lengths();
    }
    // Rare, so worked out again from the head's bytes only when a line may be missing.
    let mut dropped = match suspect {
        true => dropped_lines(&head)?,
        false => None,
    };
    if scrubbed {
        let mut lines = dropped.map_or_else(Vec::new, |d| d.0);
        lines.insert(0, 1);
        dropped = Some(DroppedLines(lines));
    }
    Ok(Some(Head {
        status,
        version,
        headers,
        reason,
        noted,
        dropped,
        framed_twice,
    }))
}

/// The field lines of a whole response `head` that [`parse_head`] does not relay, if any; an
/// error if one of them names a framing field.
fn dropped_lines(head: &Bytes) -> Result<Option<DroppedLines>, SendError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    if parser(true).parse_response(&mut parsed, head).is_err() {
        return Ok(None);
    }
    let base = head.as_ptr() as usize;
    // Where each relayed field's value starts: a line holding none of them was dropped.
    let kept: Vec<usize> = parsed
        .headers
        .iter()
        .map(|field| {
            let start = field.value.as_ptr() as usize - base;
            (field, start)
        })
        .filter(|(field, start)| {
            field_name(field.name.as_bytes()).is_ok()
                && header_value(head, *start, start + field.value.len()).is_some()
        })
        .map(|(_, start)| start)
        .collect();
    let mut lines = Vec::new();
    let mut at = memchr::memchr(b'\n', head).map_or(head.len(), |i| i + 1);
    let mut number = 1;
    while at < head.len() {
        let end = memchr::memchr(b'\n', &head[at..]).map_or(head.len(), |i| at + i + 1);
        number += 1;
        let line = &head[at..end];
        let blank = matches!(line, b"\r\n" | b"\n");
        // An obs-fold continues the field above it (RFC 9112 §5.2).
        let folded = matches!(line.first(), Some(b' ' | b'\t'));
        if !blank && !folded && !kept.iter().any(|k| (at..end).contains(k)) {
            if frames(line) {
                return Err(SendError::Invalid(
                    "a Content-Length or Transfer-Encoding line that is not valid HTTP",
                ));
            }
            lines.push(number);
        }
        at = end;
    }
    Ok((!lines.is_empty()).then_some(DroppedLines(lines)))
}

/// Whether a field line names `Content-Length` or `Transfer-Encoding`: dropped, the body's
/// framing would be guessed (RFC 9112 §6.3), so such a head is refused instead.
fn frames(line: &[u8]) -> bool {
    let name = &line[..memchr::memchr(b':', line).unwrap_or(line.len())];
    let name = name.trim_ascii();
    name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"transfer-encoding")
}

fn status_of(code: u16) -> Result<StatusCode, SendError> {
    if code == 101 {
        // The proxy strips Upgrade and never asks to switch (RFC 9110 §7.8: a server must
        // not switch unasked), so a 101 is invalid and no tunnel is opened.
        return Err(SendError::Invalid("101 Switching Protocols unasked"));
    }
    if !(100..=999).contains(&code) {
        // RFC 9112 §4: a status code is three digits. One from 600 to 999 is outside RFC
        // 9110 §15's range, but relayed as NGINX and HAProxy do; rules read it as a 5xx,
        // which is how §15 says a client should take it.
        return Err(SendError::Invalid("status code out of range"));
    }
    StatusCode::from_u16(code).map_err(|_| SendError::Invalid("status code out of range"))
}

/// A field value sharing the head's bytes; an obs-folded value is unfolded into spaces.
/// Inlined: it runs for every field of every response.
#[inline(always)]
fn header_value(head: &Bytes, start: usize, end: usize) -> Option<HeaderValue> {
    let raw = &head[start..end];
    // A fold is CR LF then SP or HTAB; httparse allows no CR without its LF in a value.
    if memchr::memchr(b'\n', raw).is_some() {
        let unfolded: Vec<u8> = raw
            .iter()
            .map(|b| if *b == b'\r' || *b == b'\n' { b' ' } else { *b })
            .collect();
        return HeaderValue::from_bytes(&unfolded).ok();
    }
    HeaderValue::from_maybe_shared(head.slice(start..end)).ok()
}

/// Whether the upstream keeps the connection open after this response (RFC 9112 §9.3).
fn keeps_alive(head: &Head) -> bool {
    if !head.noted.connection {
        return head.version != Version::HTTP_10;
    }
    match head.version {
        Version::HTTP_10 => has_token(&head.headers, &CONNECTION, b"keep-alive"),
        _ => !has_token(&head.headers, &CONNECTION, b"close"),
    }
}

/// How the request body is framed on the wire.
enum RequestFraming {
    Length(u64),
    Chunked,
}

/// The request side of an exchange: the head, then the body as it becomes available.
pub struct Writer {
    queue: Queue,
    body: Option<ForwardBody>,
    framing: RequestFraming,
    unflushed: bool,
    failed: bool,
    /// The write error, reported if the response then never comes.
    error: Option<std::io::Error>,
    /// Body frames taken and writes made so far, for the response timeout.
    steps: u64,
    /// The request has a body (before any of it went into the head's buffer).
    carries_body: bool,
}

/// The request body ended before, or went past, its declared length.
#[derive(Debug, thiserror::Error)]
#[error("the request body does not match its length")]
pub struct LengthMismatch;

impl Writer {
    fn new(request: &Outgoing<'_>, mut body: ForwardBody) -> Self {
        let hint = body.size_hint();
        let (framing, field) = if body.is_end_stream() {
            // RFC 9110 §8.6: a request whose method defines no meaning for a body (GET,
            // HEAD, ...) should not say Content-Length: 0; one with a body method does.
            let needs = request.headers.contains_key(CONTENT_LENGTH)
                || matches!(*request.method, Method::POST | Method::PUT | Method::PATCH);
            (RequestFraming::Length(0), needs.then_some(Some(0)))
        } else {
            match hint.exact() {
                Some(length) => (RequestFraming::Length(length), Some(Some(length))),
                None => (RequestFraming::Chunked, Some(None)),
            }
        };
        // A small body already in memory goes into the head's buffer: one write, and no
        // frame polled for it.
        let whole = match framing {
            RequestFraming::Length(n) if n > 0 && room_for_body(n) > 0 => body.take_whole(n),
            _ => None,
        };
        let carries_body = !matches!(framing, RequestFraming::Length(0));
        let mut queue = Queue::default();
        queue.push(encode_head(request, field, whole.as_deref()));
        let (framing, body) = match whole {
            Some(_) => (RequestFraming::Length(0), None),
            None => (framing, (!body.is_end_stream()).then_some(body)),
        };
        Writer {
            queue,
            body,
            framing,
            unflushed: false,
            failed: false,
            error: None,
            steps: 0,
            carries_body,
        }
    }

    /// Whether the upstream may have left some of the request body unread, given the status
    /// of its answer: it answered before the whole body went out, or refused the request.
    /// A legacy server that refuses early (a 401, a redirect, a 404) often skips the body and
    /// keeps the connection; the body would then be read as the next request on it, another
    /// client's request appended (RFC 9110 §10.1.1 asks such a server to say whether it
    /// closes; many never do). Such a connection is closed, not reused. `trusted`: the
    /// target is trusted to read the bodies of the requests it answers with a 2xx.
    fn may_be_unread(&self, status: StatusCode, trusted: bool) -> bool {
        self.carries_body && (!trusted || !self.finished() || !status.is_success())
    }

    /// Whether the request carried a body.
    pub(super) fn carries_body(&self) -> bool {
        self.carries_body
    }

    /// Whether the writer has written all it has and waits for more of the client's body.
    pub(super) fn waits_on_body(&self) -> bool {
        self.body.is_some() && self.queue.is_empty()
    }

    /// Body frames taken and writes made so far: it moves while the request goes out.
    pub(super) fn steps(&self) -> u64 {
        self.steps
    }

    /// Whether the whole request went out.
    pub fn finished(&self) -> bool {
        self.body.is_none() && self.queue.is_empty() && !self.unflushed && !self.failed
    }

    /// Stops sending; the connection cannot be reused.
    pub fn abandon(&mut self) {
        self.failed = true;
        self.body = None;
        self.queue.clear();
    }

    /// Writes what it can. Errors are the request body's own; a failed write only stops the
    /// writing, since the upstream's answer may already be on its way.
    pub fn drive(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Result<(), BoxError> {
        loop {
            if self.failed {
                return Ok(());
            }
            self.pull(cx)?;
            if self.queue.is_empty() {
                if self.unflushed {
                    match Pin::new(&mut *io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => self.unflushed = false,
                        Poll::Ready(Err(err)) => self.fail(err),
                        Poll::Pending => {}
                    }
                }
                return Ok(());
            }
            match self.queue.poll_write(io, cx) {
                Poll::Ready(Ok(0)) => self.fail(std::io::ErrorKind::WriteZero.into()),
                Poll::Ready(Ok(_)) => {
                    self.unflushed = true;
                    self.steps += 1;
                }
                Poll::Ready(Err(err)) => self.fail(err),
                Poll::Pending => return Ok(()),
            }
        }
    }

    fn fail(&mut self, err: std::io::Error) {
        self.error = Some(err);
        self.abandon();
    }

    /// Moves body frames into the queue while the body has them ready.
    fn pull(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        while self.queue.len() < MAX_QUEUED {
            let Some(body) = self.body.as_mut() else {
                return Ok(());
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => self.end()?,
                Poll::Ready(Some(Err(err))) => {
                    self.abandon();
                    return Err(err);
                }
                Poll::Ready(Some(Ok(frame))) => {
                    self.steps += 1;
                    self.frame(frame)?;
                }
            }
        }
        Ok(())
    }

    fn frame(&mut self, frame: Frame<Bytes>) -> Result<(), BoxError> {
        match frame.into_data() {
            Ok(data) => self.data(data),
            Err(frame) => {
                if let (Ok(trailers), RequestFraming::Chunked) =
                    (frame.into_trailers(), &self.framing)
                {
                    self.push(encode_trailers(&trailers));
                    self.body = None;
                }
                Ok(())
            }
        }
    }

    fn data(&mut self, data: Bytes) -> Result<(), BoxError> {
        if data.is_empty() {
            // An empty chunk would end a chunked body early.
            return Ok(());
        }
        match &mut self.framing {
            RequestFraming::Length(remaining) => {
                let Some(left) = remaining.checked_sub(data.len() as u64) else {
                    self.abandon();
                    return Err(LengthMismatch.into());
                };
                *remaining = left;
                self.push(data);
            }
            RequestFraming::Chunked => {
                self.push(chunk_size(data.len()));
                self.push(data);
                self.push(Bytes::from_static(b"\r\n"));
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), BoxError> {
        self.body = None;
        match self.framing {
            RequestFraming::Length(0) => Ok(()),
            RequestFraming::Length(_) => {
                self.abandon();
                Err(LengthMismatch.into())
            }
            RequestFraming::Chunked => {
                self.push(Bytes::from_static(b"0\r\n\r\n"));
                Ok(())
            }
        }
    }

    fn push(&mut self, bytes: Bytes) {
        self.queue.push(bytes);
    }
}

/// The request line and header section. `length`: `None` sends no framing field,
/// `Some(Some(n))` a Content-Length, `Some(None)` chunked Transfer-Encoding. The client's own
/// Content-Length is replaced by the one the body really has. `body`, a small whole body,
/// is written behind the head.
fn encode_head(request: &Outgoing<'_>, length: Option<Option<u64>>, body: Option<&[u8]>) -> Bytes {
    let room = match length {
        Some(Some(length)) => room_for_body(length),
        _ => 0,
    };
    let mut out = BytesMut::with_capacity(512 + room);
    out.extend_from_slice(request.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(request.path.as_str().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !request.headers.contains_key(HOST) {
        field(&mut out, b"host", request.host.as_bytes());
    }
    for (name, value) in request.headers {
        if name != CONTENT_LENGTH {
            field(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    for (name, value) in request.added.iter() {
        field(&mut out, name.as_str().as_bytes(), value.as_bytes());
    }
    match length {
        Some(Some(length)) => {
            field(&mut out, b"content-length", decimal(length, &mut [0; 20]));
        }
        Some(None) => field(&mut out, b"transfer-encoding", b"chunked"),
        None => {}
    }
    out.extend_from_slice(b"\r\n");
    if let Some(body) = body {
        out.extend_from_slice(body);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(head: &[u8]) -> Head {
        let mut buf = BytesMut::from(head);
        parse_head(&mut buf).expect("valid").expect("whole")
    }

    #[test]
    fn invalid_field_lines_are_dropped_and_numbered() {
        let head = parsed(
            b"HTTP/1.1 200 OK\r\nA: 1\r\nno colon here\r\nB: 2\r\nBad Name: 3\r\n\
              C: bell\x07\r\nD:\r\n\r\n",
        );
        let names: Vec<&str> = head.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["a", "b", "d"]);
        assert_eq!(head.dropped, Some(DroppedLines(vec![3, 5, 6])));
        assert_eq!(
            head.dropped.map(|d| d.to_string()).as_deref(),
            Some("3, 5, 6")
        );
    }

    #[test]
    fn an_invalid_framing_line_fails_the_head() {
        for head in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\x01\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\x01\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length : 5\x7f\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(head);
            assert!(
                matches!(parse_head(&mut buf), Err(SendError::Invalid(_))),
                "{head:?}"
            );
        }
    }

    #[test]
    fn reason_phrases_are_found_after_one_space_or_more() {
        let reason = |line: &[u8]| {
            reason_at(line).map(|at| String::from_utf8_lossy(&line[at..]).into_owned())
        };
        assert_eq!(reason(b"HTTP/1.1 200 OK").as_deref(), Some("OK"));
        assert_eq!(
            reason(b"HTTP/1.1  201  Made It").as_deref(),
            Some("Made It")
        );
        for line in [
            &b"HTTP/1.1 200"[..],
            b"HTTP/1.1 200 ",
            b"HTTP",
            b"",
            b"HTTP/1.1 20",
        ] {
            assert_eq!(reason(line), None, "{:?}", String::from_utf8_lossy(line));
        }
        let mut head = b"HTTP/1.1 200 O\x01K\x7f\r\nX: \x01\r\n\r\n".to_vec();
        assert!(scrub_reason(&mut head));
        assert_eq!(&head[..], b"HTTP/1.1 200 O K \r\nX: \x01\r\n\r\n");
        assert!(!scrub_reason(&mut b"HI\n".to_vec()));
        assert!(!scrub_reason(&mut b"HTTP/1.1 200 OK\r\n\r\n".to_vec()));
    }

    #[test]
    fn folded_and_empty_values_are_not_dropped_lines() {
        let head = parsed(b"HTTP/1.1 200 OK\r\nA: 1\r\n  more\r\n\tand more\r\nE:\r\nB: 2\n\n");
        assert_eq!(head.headers.len(), 3);
        assert_eq!(head.dropped, None);
        let head = parsed(b"HTTP/1.1 200 OK\r\nA: 1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(head.dropped, None);
    }
}
