//! Body types on both legs: what goes to the client and what goes upstream, without boxing,
//! plus bounded buffering that falls back to streaming when a body is larger than the bound.

use crate::client::{BodyError, UpstreamBody};
use crate::expect::Hold;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// The body of a response sent to the client.
pub enum ResponseBody {
    Empty,
    Full(Option<Bytes>),
    /// The upstream's body, streamed untouched.
    Upstream(UpstreamBody),
    /// Bytes already read from the upstream, then the rest of its body.
    Prefixed {
        prefix: Option<Bytes>,
        rest: UpstreamBody,
    },
    /// A fully read upstream body that kept its trailers.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl ResponseBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ResponseBody::Full(Some(bytes.into()))
    }

    /// Whether the body is still to be read from the upstream, which may cut it short.
    pub fn may_fail(&self) -> bool {
        match self {
            ResponseBody::Upstream(body) | ResponseBody::Prefixed { rest: body, .. } => {
                body.may_fail()
            }
            _ => false,
        }
    }

    /// The upstream's body. A chunked body read with the head has its first frame taken
    /// (polled once, never waited for): if that chunk is malformed the error is reported, so
    /// that the client gets an honest 502 instead of a response cut off before it began.
    /// Any other body streams as it comes.
    pub async fn upstream(mut body: UpstreamBody) -> Result<ResponseBody, BodyError> {
        if !body.has_buffered_chunks() {
            return Ok(ResponseBody::Upstream(body));
        }
        let polled = std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut body).poll_frame(cx) {
                Poll::Ready(frame) => Some(frame),
                Poll::Pending => None,
            })
        })
        .await;
        match polled {
            None | Some(None) => Ok(ResponseBody::Upstream(body)),
            Some(Some(Err(err))) => Err(err),
            Some(Some(Ok(frame))) => Ok(match frame.into_data() {
                Ok(data) => ResponseBody::Prefixed {
                    prefix: Some(data),
                    rest: body,
                },
                // Trailers are the last frame: the body is over.
                Err(frame) => ResponseBody::Buffered {
                    data: None,
                    trailers: frame.into_trailers().ok(),
                },
            }),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ResponseBody::Empty => Poll::Ready(None),
            ResponseBody::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            ResponseBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ResponseBody::Prefixed { prefix, rest } => match prefix.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Pin::new(rest).poll_frame(cx),
            },
            ResponseBody::Buffered { data, trailers } => match data.take() {
                Some(bytes) => Poll::Ready(Some(Ok(Frame::data(bytes)))),
                None => Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t)))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Empty => true,
            ResponseBody::Full(data) => data.is_none(),
            ResponseBody::Upstream(body) => body.is_end_stream(),
            ResponseBody::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
            ResponseBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Empty => SizeHint::with_exact(0),
            ResponseBody::Full(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64))
            }
            ResponseBody::Upstream(body) => body.size_hint(),
            ResponseBody::Prefixed { prefix, rest } => {
                let extra = prefix.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + extra);
                }
                hint
            }
            ResponseBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

/// What bounded buffering read from a body.
pub enum Buffered<B> {
    /// The whole body fit within the bound.
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    /// The body is larger than the bound: `prefix` was read, `rest` still streams.
    TooLarge { prefix: Bytes, rest: B },
}

/// Reads `body` while it stays within `limit` bytes. Unlike `Limited` + `collect`, nothing read
/// so far is lost when the limit is crossed: the caller can stream prefix and rest onwards.
pub async fn buffer_bounded<B>(body: B, limit: usize) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    buffer_bounded_after(Bytes::new(), body, limit).await
}

/// `buffer_bounded` for a body whose first bytes, `start`, were read already.
pub async fn buffer_bounded_after<B>(
    start: Bytes,
    mut body: B,
    limit: usize,
) -> Result<Buffered<B>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    if start.len() as u64 + body.size_hint().lower() > limit as u64 {
        return Ok(Buffered::TooLarge {
            prefix: start,
            rest: body,
        });
    }
    if body.is_end_stream() {
        return Ok(Buffered::Complete {
            data: start,
            trailers: None,
        });
    }
    let mut data = BytesMut::from(&start[..]);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    return Ok(Buffered::TooLarge {
                        prefix: data.freeze(),
                        rest: body,
                    });
                }
            }
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
    }
    Ok(Buffered::Complete {
        data: data.freeze(),
        trailers,
    })
}

/// The request body read so far was larger than `limits.request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

/// The error type of bodies sent upstream.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body as the client sends it: read by restatus's own HTTP/1.1 codec, or by
/// hyper's HTTP/2.
pub enum ClientBody {
    Empty,
    Http1(crate::http1::RequestBody),
    Http2(Http2Body),
}

/// An HTTP/2 request body. Dropped before its end (restatus, or the upstream, answered
/// before the body was all sent), it is read and thrown away in the background, up to
/// `H2_DRAIN_LIMIT` bytes within `H2_DRAIN_TIME`, before the stream is reset. RFC 9113 §8.1
/// allows either, but clients that send a whole body before they read the answer (Python's
/// httpx) fail on the reset and lose the answer they were sent.
pub struct Http2Body(Option<Incoming>);

/// Most of an unread HTTP/2 request body read and thrown away after an early answer.
const H2_DRAIN_LIMIT: u64 = 4 << 20;
/// Longest time spent on it; after either, the stream is reset.
const H2_DRAIN_TIME: Duration = Duration::from_secs(2);

impl Http2Body {
    pub fn new(body: Incoming) -> Self {
        Http2Body(Some(body))
    }
}

impl Drop for Http2Body {
    fn drop(&mut self) {
        let Some(mut body) = self.0.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                let mut seen = 0u64;
                while let Some(Ok(frame)) = body.frame().await {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if seen > H2_DRAIN_LIMIT {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(H2_DRAIN_TIME, drain).await;
        });
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Http1(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ClientBody::Http2(Http2Body(Some(body))) => {
                Pin::new(body).poll_frame(cx).map_err(Into::into)
            }
            ClientBody::Http2(Http2Body(None)) => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Http1(body) => body.is_end_stream(),
            ClientBody::Http2(body) => body.0.as_ref().is_none_or(|b| b.is_end_stream()),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Http1(body) => body.size_hint(),
            ClientBody::Http2(body) => body
                .0
                .as_ref()
                .map_or(SizeHint::with_exact(0), |b| b.size_hint()),
        }
    }
}

/// Where the bytes of an upstream request body come from.
pub enum Source {
    Empty,
    Full(Option<Bytes>),
    /// The client's body, counted against `limit` as it streams, and cut off when the
    /// client sends nothing for `idle.timeout`.
    Client {
        body: ClientBody,
        seen: u64,
        limit: u64,
        idle: IdleTimer,
    },
    /// The start of a body of unknown length, read ahead (see [`ForwardBody::settle`]), then
    /// the rest of it. Boxed: every request's body has room for the largest variant.
    Prefixed(Box<Ahead>),
}

/// How much of a body of unknown length [`ForwardBody::settle`] reads.
pub enum ReadAhead<'a> {
    /// Up to this many bytes; a longer body, or one with trailers, streams on.
    Upto(usize),
    /// All of it, for a server that cannot take a chunked body; its trailers, which a length
    /// cannot carry, are dropped. The bytes are held within `budget`.
    Whole(&'a Arc<Budget>),
}

/// What [`ForwardBody::settle`] read of a longer body, and the rest of it.
pub struct Ahead {
    prefix: Option<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Source,
    /// The part of the budget a body read whole holds (its length), given back when the body
    /// is dropped.
    _held: Option<Held>,
}

/// Memory that request bodies read whole before they go upstream may take together
/// (`limits.held_bodies`): without it, many large uploads at once could take the process's
/// memory, each within `limits.request_body`.
#[derive(Debug)]
pub struct Budget {
    max: AtomicU64,
    used: AtomicU64,
}

/// A body would pass `limits.held_bodies`.
#[derive(Debug, thiserror::Error)]
#[error("request bodies held in memory reached limits.held_bodies ({0} bytes)")]
pub struct BudgetSpent(pub u64);

impl Budget {
    pub fn new(max: u64) -> Self {
        Budget {
            max: AtomicU64::new(max),
            used: AtomicU64::new(0),
        }
    }

    /// A reload's new limit; bodies held already keep what they have.
    pub fn set_max(&self, max: u64) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` more, unless that would pass the limit.
    fn take(&self, bytes: u64) -> Result<(), BudgetSpent> {
        let max = self.max.load(Ordering::Relaxed);
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= max)
            })
            .map(|_| ())
            .map_err(|_| BudgetSpent(max))
    }
}

/// The bytes of a [`Budget`] one body holds, given back when it is dropped.
#[derive(Debug)]
pub struct Held {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Held {
    fn new(budget: &Arc<Budget>) -> Self {
        Held {
            budget: budget.clone(),
            bytes: 0,
        }
    }

    /// Holds `total` bytes in all, taking what it does not hold yet.
    fn cover(&mut self, total: usize) -> Result<(), BudgetSpent> {
        let total = total as u64;
        if total > self.bytes {
            self.budget.take(total - self.bytes)?;
            self.bytes = total;
        }
        Ok(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Time allowed between two reads of a request body (`server.body_timeout`). The timer is
/// armed only when the body is actually waited for, so a fast upload never allocates one.
pub struct IdleTimer {
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    pub fn new(timeout: Duration) -> Self {
        IdleTimer {
            timeout,
            sleep: None,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Called when the body is pending: true once the other side has been silent too long.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let timeout = self.timeout;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        sleep.as_mut().poll(cx).is_ready()
    }

    /// Called when bytes arrived: the next wait starts from now.
    pub fn reset(&mut self) {
        if let Some(sleep) = self.sleep.as_mut() {
            sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + self.timeout);
        }
    }
}

/// The client stopped sending its request body for longer than `server.body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body bytes for {0:?}")]
pub struct BodyTimeout(pub Duration);

/// A request body sent upstream, held back while `Expect: 100-continue` is pending.
pub struct ForwardBody {
    /// Holds the body back until the upstream asks for it (`Expect: 100-continue`).
    hold: Option<Hold>,
    source: Source,
}

impl Source {
    /// The longest the client may be silent while its body is read, if it is the client's.
    fn body_timeout(&self) -> Option<Duration> {
        match self {
            Source::Client { idle, .. } => Some(idle.timeout()),
            Source::Prefixed(ahead) => ahead.rest.body_timeout(),
            Source::Empty | Source::Full(_) => None,
        }
    }

    fn hint(&self) -> SizeHint {
        match self {
            Source::Empty => SizeHint::with_exact(0),
            Source::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |b| b.len() as u64)),
            Source::Client { body, .. } => body.size_hint(),
            Source::Prefixed(ahead) => {
                let read = ahead.prefix.as_ref().map_or(0, |b| b.len() as u64);
                // A body read whole is as long as what was read.
                if ahead.trailers.is_none() && ahead.rest.is_end_stream() {
                    return SizeHint::with_exact(read);
                }
                let mut hint = SizeHint::new();
                hint.set_lower(read);
                hint
            }
        }
    }
    pub fn is_end_stream(&self) -> bool {
        match self {
            Source::Empty => true,
            Source::Full(data) => data.is_none(),
            Source::Client { body, .. } => body.is_end_stream(),
            Source::Prefixed(ahead) => {
                ahead.prefix.is_none() && ahead.trailers.is_none() && ahead.rest.is_end_stream()
            }
        }
    }

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self {
            Source::Empty => Poll::Ready(None),
            Source::Full(data) => Poll::Ready(data.take().map(|b| Ok(Frame::data(b)))),
            Source::Prefixed(ahead) => {
                if let Some(data) = ahead.prefix.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                match ahead.trailers.take() {
                    Some(fields) => Poll::Ready(Some(Ok(Frame::trailers(fields)))),
                    None => ahead.rest.poll_frame(cx),
                }
            }
            Source::Client {
                body,
                seen,
                limit,
                idle,
            } => {
                let frame = match Pin::new(body).poll_frame(cx) {
                    Poll::Pending if idle.expired(cx) => {
                        let err = BodyTimeout(idle.timeout);
                        return Poll::Ready(Some(Err(err.into())));
                    }
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Ready(Some(Err(err))) => return Poll::Ready(Some(Err(err))),
                    Poll::Ready(Some(Ok(frame))) => frame,
                };
                idle.reset();
                if let Some(data) = frame.data_ref() {
                    *seen += data.len() as u64;
                    if *seen > *limit {
                        let err = BodyTooLarge { limit: *limit };
                        return Poll::Ready(Some(Err(err.into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }
}

impl ForwardBody {
    pub fn new(source: Source) -> Self {
        ForwardBody { hold: None, source }
    }

    /// The whole body when it is already in memory, `length` bytes long and not held back,
    /// taken at once so that it is written with the head instead of polled for; `None`
    /// leaves the body as it was.
    pub fn take_whole(&mut self, length: u64) -> Option<Bytes> {
        if self.hold.is_some() || self.source.hint().exact() != Some(length) {
            return None;
        }
        match &mut self.source {
            Source::Full(data) => data.take(),
            // Within the limit (the declared length was checked against it), as streaming
            // it would have counted.
            Source::Client {
                body: ClientBody::Http1(body),
                limit,
                ..
            } if length <= *limit => body.take_whole(),
            _ => None,
        }
    }

    pub fn empty() -> Self {
        ForwardBody::new(Source::Empty)
    }

    /// Whether [`ForwardBody::settle`] has anything to do: a body of unknown length that
    /// nothing holds back (or whose `100 Continue` restatus answered itself).
    pub fn unsettled(&self) -> bool {
        let held = self.hold.as_ref().is_some_and(Hold::is_waiting);
        !held && self.unknown_length()
    }

    /// Chunked from the client, or an HTTP/2 upload without `content-length`.
    pub fn unknown_length(&self) -> bool {
        !self.is_end_stream() && self.size_hint().exact().is_none()
    }

    /// Reads ahead a body of unknown length (chunked from the client, an HTTP/2 upload
    /// without `content-length`): one that ends within what `ahead` allows becomes a whole
    /// body, sent with a `Content-Length`, which every server reads, one that only speaks
    /// HTTP/1.0 (RFC 9112 §6.1) or does not take chunked requests as much as any other. A
    /// longer one goes on streaming, what was read first; so does one with trailers, which a
    /// length cannot carry, unless the whole body is asked for. Errors are the client's: its
    /// body too large, too slow, or broken.
    pub async fn settle(self, ahead: ReadAhead<'_>) -> Result<Self, BoxError> {
        match (&ahead, self.source.body_timeout()) {
            // A body held whole must arrive within the body timeout in all, like a JSON body
            // `validate_json` reads: one trickled a byte at a time would otherwise keep its
            // share of `held_bodies` for as long as its client likes.
            (ReadAhead::Whole(_), Some(limit)) => tokio::time::timeout(limit, self.read(ahead))
                .await
                .unwrap_or_else(|_| Err(BodyTimeout(limit).into())),
            _ => self.read(ahead).await,
        }
    }

    async fn read(mut self, ahead: ReadAhead<'_>) -> Result<Self, BoxError> {
        // The pieces as they came, joined once at the end: a buffer grown by doubling would
        // hold up to twice the body, and a body of `request_body` would not fit its budget.
        let mut pieces = Vec::new();
        let mut read = 0;
        let mut held = match ahead {
            ReadAhead::Whole(budget) => Some(Held::new(budget)),
            ReadAhead::Upto(_) => None,
        };
        let trailers = loop {
            let Some(frame) = self.frame().await.transpose()? else {
                return Ok(ForwardBody::new(read_whole(joined(pieces, read), held)));
            };
            match (frame.into_data(), &ahead) {
                (Ok(chunk), _) => {
                    if let Some(held) = held.as_mut() {
                        held.cover(read + chunk.len())?;
                    }
                    read += chunk.len();
                    pieces.push(chunk);
                }
                // The last frame: the loop ends with the body, its trailers dropped.
                (Err(_), ReadAhead::Whole(_)) => {}
                (Err(frame), ReadAhead::Upto(_)) => break frame.into_trailers().ok(),
            }
            if matches!(ahead, ReadAhead::Upto(within) if read > within) {
                break None;
            }
        };
        let rest = std::mem::replace(&mut self.source, Source::Empty);
        Ok(ForwardBody::new(Source::Prefixed(Box::new(Ahead {
            prefix: (read > 0).then(|| joined(pieces, read)),
            trailers,
            rest,
            _held: None,
        }))))
    }

    /// Holds the body back behind `hold` (see [`crate::expect`]).
    pub fn held(mut self, hold: Option<Hold>) -> Self {
        self.hold = hold;
        self
    }
}

/// `pieces`, `length` bytes in all, as one buffer of exactly that size.
fn joined(mut pieces: Vec<Bytes>, length: usize) -> Bytes {
    if pieces.len() <= 1 {
        return pieces.pop().unwrap_or_default();
    }
    let mut whole = BytesMut::with_capacity(length);
    for piece in pieces {
        whole.extend_from_slice(&piece);
    }
    whole.freeze()
}

/// A body read to its end: whole in memory, holding its part of the budget while it goes.
fn read_whole(data: Bytes, held: Option<Held>) -> Source {
    match held {
        None => Source::Full(Some(data)),
        Some(held) => Source::Prefixed(Box::new(Ahead {
            prefix: (!data.is_empty()).then_some(data),
            trailers: None,
            rest: Source::Empty,
            _held: Some(held),
        })),
    }
}

impl Body for ForwardBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(hold) = this.hold.as_mut() {
            match hold.poll_release(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(err)) => return Poll::Ready(Some(Err(err))),
                Poll::Ready(Ok(())) => this.hold = None,
            }
        }
        this.source.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.source.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.source.hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expect::{Hold, Interim};
    use crate::http1::RequestBody;

    fn client(data: &'static [u8], limit: u64) -> ForwardBody {
        ForwardBody::new(Source::Client {
            body: ClientBody::Http1(RequestBody::whole(Bytes::from_static(data))),
            seen: 0,
            limit,
            idle: IdleTimer::new(Duration::from_secs(1)),
        })
    }

    #[test]
    fn a_whole_body_is_taken_only_as_it_would_have_streamed() {
        let mut full = ForwardBody::new(Source::Full(Some(Bytes::from_static(b"hello"))));
        assert_eq!(full.take_whole(4), None, "not the length the head says");
        assert_eq!(full.take_whole(5).as_deref(), Some(&b"hello"[..]));
        assert!(full.is_end_stream());

        let mut within = client(b"{\"a\":1}", 7);
        assert_eq!(within.take_whole(7).as_deref(), Some(&b"{\"a\":1}"[..]));
        assert!(within.is_end_stream());

        // Past the limit it streams, and the stream refuses it.
        let mut over = client(b"{\"a\":1}", 6);
        assert_eq!(over.take_whole(7), None);
        assert!(!over.is_end_stream());

        // Held for 100-continue: it waits for the upstream.
        let hold = Hold::new(Interim::new(true, None), Duration::from_secs(1));
        let mut held = client(b"{}", 10).held(Some(hold));
        assert_eq!(held.take_whole(2), None);
        assert!(!held.is_end_stream());
    }
}
