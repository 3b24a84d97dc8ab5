//! The client leg's HTTP/1.1 (RFC 9112): one task per connection reads a head, runs the
//! request's handler, writes the response and reads the next head. The request body is read
//! off the socket only while the handler asks for it, in the same task.
//!
//! An idle connection holds no buffer: the next head is read into the stack and kept only
//! once its bytes have arrived. A connection opening with the HTTP/2 preface is handed back
//! to be served as HTTP/2.

mod body;
mod head;
mod interim;
mod response;

pub use body::RequestBody;
pub use head::{HeadError, ADDED_FIELDS, MAX_TARGET};
pub use interim::Relay;

use crate::body::{BoxError, ClientBody};
use crate::wire::{chunk_size, encode_trailers, Fill, Framing, Queue};
use body::Pump;
use bytes::{Bytes, BytesMut};
use head::Head;
use http::{Request, Response, Version};
use http_body::Body;
use response::{Asked, Out};
use std::future::{poll_fn, Future};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Read buffers start at this size and double while reads fill them, up to `MAX_READ`.
const FIRST_READ: usize = 8 << 10;
/// An upload streams faster with reads of 32 KiB than of 256 KiB (scenario 4 of bench/run:
/// 1.32-1.46 against 1.01-1.05 GB/s, and a third less CPU): the upstream is written while
/// the next read is still small, and the buffers stay in the allocator's reused pages.
const MAX_READ: usize = 32 << 10;
/// Response bytes queued for the socket before the body is asked for more: what a client
/// that reads slowly holds besides the upstream's read ahead.
const MAX_QUEUED: usize = 64 << 10;
/// After the last response on a connection, what the client still sends is read and dropped
/// until it closes, or is silent for `LINGER`, or for `LINGER_MAX` at most (RFC 9112 §9.6,
/// closing in stages): closed with unread bytes, the socket would answer them with a reset,
/// which destroys what of the response the client has not read yet. No byte limit: a client
/// that uploads while it slowly reads an early answer would lose its end past any such limit.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_MAX: Duration = Duration::from_secs(10);

/// Says when a connection's socket is to be watched for the client hanging up while its
/// request is in flight (see `idle::WATCH_AFTER_MS`).
pub trait Hangup {
    fn watch_for_hangup(&self) -> bool;
}

/// Pipelined bytes read while watching for a hang-up, at most: past them the socket is left
/// alone until the next head is read.
const MAX_WATCHED: usize = 64 << 10;

/// A connection's socket and what was read from it but not yet used.
pub struct Wire<I> {
    io: I,
    buf: BytesMut,
    next_read: usize,
}

/// How the connection ended.
pub enum Ended<I> {
    Closed,
    /// A request head was refused with a bare status (see [`HeadError`]), then the
    /// connection closed.
    Refused(HeadError),
    /// A response was cut short (its body failed): the caller should reset the connection,
    /// so that a client reading to the close (HTTP/1.0, no length) cannot take it as whole.
    Aborted(I),
    /// The client sent the HTTP/2 preface; `read` holds the bytes already read.
    Http2 {
        io: I,
        read: Bytes,
    },
}

/// Serves HTTP/1.1 requests on `io` with `handler` until the client is done, an answer says
/// close, or `stop` turns true (between requests; a request in progress is answered first,
/// with `Connection: close`). `max_head`: the largest request head read. The handler gets
/// the connection's relay for the upstream's interim responses with each HTTP/1.1 request.
pub async fn serve<I, S, F, B>(
    io: I,
    max_head: usize,
    mut stop: watch::Receiver<bool>,
    mut handler: S,
) -> Ended<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Hangup,
    S: FnMut(Request<ClientBody>, Option<Arc<Relay>>) -> F,
    F: Future<Output = Response<B>> + Unpin,
    B: Body<Data = Bytes> + Unpin + Default,
    B::Error: Into<BoxError>,
{
    let mut relay: Option<Arc<Relay>> = None;
    let mut wire = Wire {
        io,
        buf: BytesMut::new(),
        next_read: FIRST_READ,
    };
    let mut first = true;
    loop {
        let idle = wire.buf.is_empty();
        // In a block of its own, as is the version below: a local that was read, or borrowed,
        // keeps its room in the connection's state for as long as it is in scope, here across
        // the whole exchange.
        let head = {
            let read = tokio::select! {
                biased;
                read = poll_fn(|cx| wire.poll_head(cx, max_head, first)) => read,
                _ = stop.wait_for(|stopping| *stopping), if idle => return Ended::Closed,
            };
            match read {
                Ok(Read::Head(head)) => head,
                Ok(Read::Http2) => {
                    let read = wire.buf.split().freeze();
                    return Ended::Http2 { io: wire.io, read };
                }
                Ok(Read::Refused(err)) => {
                    let _ = wire.io.write_all(&response::refusal(err.status())).await;
                    // Boxed, like the close after a response: an idle connection's state
                    // would carry the linger's timers.
                    Box::pin(wire.close()).await;
                    return Ended::Refused(err);
                }
                Ok(Read::Eof) | Err(_) => return Ended::Closed,
            }
        };
        first = false;
        // RFC 9110 §15.2: no 1xx to an HTTP/1.0 client. Made on the first request, so that a
        // connection that never sends one holds none.
        let http11 = {
            let version = head.version;
            version == Version::HTTP_11
        };
        let relay = http11.then(|| relay.get_or_insert_with(Arc::default).clone());
        // Boxed: an idle connection does not hold room for a request's state.
        match Box::pin(exchange(&mut wire, head, &mut handler, &stop, relay)).await {
            Next::Request => {}
            Next::Close => return Ended::Closed,
            Next::Abort => return Ended::Aborted(wire.io),
        }
        if wire.buf.is_empty() {
            // Nothing is kept for an idle connection.
            wire.buf = BytesMut::new();
        }
    }
}

/// What the connection does after an exchange.
enum Next {
    Request,
    Close,
    Abort,
}

/// One request and its response, and what the connection does next.
///
/// The request is made and handed to `handler` before the future, which then holds only
/// what the response needs: not an `async fn`, whose state would also keep the head.
fn exchange<'w, I, S, F, B>(
    wire: &'w mut Wire<I>,
    head: Head,
    handler: &mut S,
    stop: &'w watch::Receiver<bool>,
    relay: Option<Arc<Relay>>,
) -> impl Future<Output = Next> + use<'w, I, S, F, B>
where
    I: AsyncRead + AsyncWrite + Unpin + Hangup,
    S: FnMut(Request<ClientBody>, Option<Arc<Relay>>) -> F,
    F: Future<Output = Response<B>> + Unpin,
    B: Body<Data = Bytes> + Unpin + Default,
    B::Error: Into<BoxError>,
{
    let (mut pump, body) = match head.framing {
        Framing::Empty => (None, ClientBody::Empty),
        // The whole body came with the head (a small POST): the handler gets it as it is, and
        // the connection has nothing to read or hand over. Not for a client waiting for
        // `100 Continue`, which must not be told to send what it already sent.
        Framing::Length(length) if !head.expects_continue && wire.buf.len() as u64 >= length => {
            let data = wire.buf.split_to(length as usize).freeze();
            (None, ClientBody::Http1(RequestBody::whole(data)))
        }
        framing => {
            let (mut pump, body) = body::channel(framing, head.expects_continue);
            pump.prefill(wire);
            (Some(pump), ClientBody::Http1(body))
        }
    };
    let method = head.method.clone();
    let (version, keep_alive) = (head.version, head.keep_alive);
    let mut request = Request::new(body);
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    let mut answer = handler(request, relay.clone());
    async move {
        // The final response, held (rarely) while interim heads still go out ahead of it.
        let mut held: Option<Box<Response<B>>> = None;
        let mut failed = false;
        // Whether the socket may still be watched for a hang-up: not once it has ended after
        // pipelined bytes, which are served first.
        let mut watchable = true;
        let mut hung_up = false;
        let response = poll_fn(|cx| loop {
            let ready = match held.take() {
                Some(response) => Poll::Ready(*response),
                None => Pin::new(&mut answer).poll(cx),
            };
            if let Poll::Ready(response) = ready {
                // What the upstream sent before its final response goes out before it.
                if relay.as_ref().is_some_and(|relay| relay.is_pending()) {
                    match poll_interim_before_final(relay.as_deref(), &mut pump, wire, cx) {
                        Poll::Pending => {
                            held = Some(Box::new(response));
                            return Poll::Pending;
                        }
                        Poll::Ready(written) => failed = written.is_err(),
                    }
                }
                return Poll::Ready(response);
            }
            if let Some(relay) = relay.as_ref().filter(|relay| relay.is_pending()) {
                let may_start = pump.as_ref().is_none_or(|p| !p.continue_started());
                // A failed write fails the final response's too, which aborts the connection.
                let _ = relay.poll_write(&mut wire.io, may_start, cx);
                if relay.is_partial() {
                    // The pump's `100 Continue` must not land inside the interim head.
                    return Poll::Pending;
                }
            }
            let body_read = pump.as_ref().is_none_or(|p| p.is_done());
            if watchable && body_read && wire.io.watch_for_hangup() {
                match wire.poll_hangup(cx) {
                    Poll::Ready(true) => {
                        // A stand-in: not sent, the connection ends below. (Not an `Option`
                        // around every response: moving it costs more than the rare case.)
                        hung_up = true;
                        return Poll::Ready(Response::new(B::default()));
                    }
                    Poll::Ready(false) => watchable = false,
                    Poll::Pending => {}
                }
            }
            if !pump.as_mut().is_some_and(|pump| pump.drive(wire, cx)) {
                return Poll::Pending;
            }
        })
        .await;
        drop(answer);
        if hung_up {
            // The request was dropped above, and its upstream request with it (NGINX's 499).
            tracing::debug!("the client hung up before its response; request abandoned");
            return Next::Abort;
        }
        if failed {
            return Next::Abort;
        }
        if let Some(relay) = &relay {
            relay.finish();
        }
        let asked = Asked {
            method: &method,
            version,
            keep_alive: keep_alive && !*stop.borrow(),
        };
        let (mut sending, keep_alive) = {
            let (parts, body) = response.into_parts();
            let (head, out, keep_alive) = response::encode(&parts, &body.size_hint(), &asked);
            (Sending::new(head, out, body), keep_alive)
        };
        if let Err(err) = poll_fn(|cx| sending.poll(wire, &mut pump, cx)).await {
            // The client sees the body cut short (no last chunk, or fewer bytes than the length).
            tracing::debug!(error = %err, "response not sent whole; resetting the connection");
            return Next::Abort;
        }
        let body_read = pump.as_ref().is_none_or(|p| p.is_done() && !p.failed);
        if keep_alive && body_read {
            return Next::Request;
        }
        // Boxed: the linger's two timers would make every request's state larger than the
        // allocator's small blocks (1 KiB), for a step most requests never reach.
        Box::pin(wire.close()).await;
        Next::Close
    }
}

/// Writes the interim heads still queued for the request (after a `100 Continue` already
/// begun), so that they precede its final response.
fn poll_interim_before_final<I>(
    relay: Option<&Relay>,
    pump: &mut Option<Pump>,
    wire: &mut Wire<I>,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Some(relay) = relay else {
        return Poll::Ready(Ok(()));
    };
    if let Some(pump) = pump.as_mut() {
        ready!(pump.poll_before_final(wire, cx))?;
    }
    relay.poll_write(&mut wire.io, true, cx)
}

// Moved once per request; boxing the head would cost an allocation each time.
#[allow(clippy::large_enum_variant)]
enum Read {
    Head(Head),
    Http2,
    Refused(HeadError),
    Eof,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Wire<I> {
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        max_head: usize,
        first: bool,
    ) -> Poll<std::io::Result<Read>> {
        loop {
            if !self.buf.is_empty() {
                let seen = self.buf.len().min(PREFACE.len());
                let preface = first && self.buf[..seen] == PREFACE[..seen];
                if preface && seen == PREFACE.len() {
                    return Poll::Ready(Ok(Read::Http2));
                }
                if !preface {
                    match head::parse(&mut self.buf, max_head) {
                        Ok(Some(head)) => return Poll::Ready(Ok(Read::Head(head))),
                        Ok(None) => {}
                        Err(err) => return Poll::Ready(Ok(Read::Refused(err))),
                    }
                }
            }
            let read = if self.buf.is_empty() {
                ready!(self.poll_fill_idle(cx))?
            } else {
                ready!(self.poll_fill(cx))?
            };
            if read == 0 {
                return Poll::Ready(Ok(Read::Eof));
            }
        }
    }

    /// Reads the start of a head into the stack, so that a connection waiting for its next
    /// request holds no buffer.
    fn poll_fill_idle(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
        let mut read = ReadBuf::uninit(&mut stack);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
        self.buf.extend_from_slice(read.filled());
        Poll::Ready(Ok(read.filled().len()))
    }

    /// Reads what the client sends while its request is in flight: `Ready(true)` once it
    /// has hung up (the end of its stream with nothing pipelined, or an error), `Ready(false)`
    /// when the stream ended after pipelined bytes, which are served as usual.
    fn poll_hangup(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        while self.buf.len() < MAX_WATCHED {
            match ready!(self.poll_fill_idle(cx)) {
                Ok(0) => return Poll::Ready(self.buf.is_empty()),
                Ok(_) => {}
                Err(_) => return Poll::Ready(true),
            }
        }
        Poll::Pending
    }

    /// Closes the sending side, then drops what the client still sends for a moment.
    async fn close(&mut self) {
        let _ = self.io.shutdown().await;
        // Read into the connection's buffer, not the stack: this future is part of every
        // connection's state.
        let linger = async {
            loop {
                self.buf.clear();
                self.buf.reserve(16 << 10);
                match tokio::time::timeout(LINGER, self.io.read_buf(&mut self.buf)).await {
                    Ok(Ok(0) | Err(_)) | Err(_) => return,
                    Ok(Ok(_)) => {}
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_MAX, linger).await;
    }
}

impl<I: AsyncRead + Unpin> Fill for Wire<I> {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.next_read / 2 {
            self.buf.reserve(self.next_read);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let read = tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = read {
            // A read that filled all the room asks for a bigger one next time (uploads).
            if n == spare && self.next_read < MAX_READ {
                self.next_read *= 2;
            }
        }
        read
    }
}

/// A response on its way out: the head, then the body as it becomes available, framed as
/// the head said.
struct Sending<B> {
    head: Option<Bytes>,
    queue: Queue,
    body: Option<B>,
    out: Out,
    /// Bytes the length still promises.
    left: u64,
    ended: bool,
    unflushed: bool,
    /// Why the body failed; reported once what was queued before the failure is sent.
    failed: Option<BoxError>,
}

/// The response body did not match the length its head announced.
#[derive(Debug, thiserror::Error)]
#[error("the response body does not match its Content-Length")]
struct LengthMismatch;

impl<B> Sending<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    fn new(head: Bytes, out: Out, body: B) -> Self {
        let left = match out {
            Out::Length(length) => length,
            _ => 0,
        };
        Sending {
            head: Some(head),
            queue: Queue::default(),
            // A body that may not be sent is not read (HEAD, 204, 304).
            body: (out != Out::None).then_some(body),
            out,
            left,
            ended: false,
            unflushed: false,
            failed: None,
        }
    }

    fn poll<I>(
        &mut self,
        wire: &mut Wire<I>,
        pump: &mut Option<Pump>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        if self.head.is_some() {
            if let Some(pump) = pump.as_mut() {
                ready!(pump.poll_before_final(wire, cx))?;
            }
            if let Some(head) = self.head.take() {
                self.queue.push(head);
            }
        }
        loop {
            if let Some(pump) = pump.as_mut() {
                // The upstream may still be reading the request body.
                pump.drive(wire, cx);
            }
            if let Err(err) = self.pull(cx) {
                // The head and the frames before the failure still go out, so the client
                // sees the response cut short rather than no response at all.
                self.failed = Some(err);
                self.body = None;
            }
            if self.queue.is_empty() {
                if self.unflushed {
                    ready!(Pin::new(&mut wire.io).poll_flush(cx))?;
                    self.unflushed = false;
                }
                if let Some(err) = self.failed.take() {
                    return Poll::Ready(Err(err));
                }
                return if self.ended {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            match ready!(self.queue.poll_write(&mut wire.io, cx))? {
                0 => {
                    return Poll::Ready(Err(
                        std::io::Error::from(std::io::ErrorKind::WriteZero).into()
                    ))
                }
                _ => self.unflushed = true,
            }
        }
    }

    /// Moves body frames into the queue while the body has them ready.
    fn pull(&mut self, cx: &mut Context<'_>) -> Result<(), BoxError> {
        while !self.ended && self.failed.is_none() && self.queue.len() < MAX_QUEUED {
            let Some(body) = self.body.as_mut() else {
                return self.finish();
            };
            match Pin::new(body).poll_frame(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(None) => self.finish()?,
                Poll::Ready(Some(Err(err))) => return Err(err.into()),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => self.data(data)?,
                    Err(frame) => {
                        if let (Ok(trailers), Out::Chunked) = (frame.into_trailers(), self.out) {
                            self.queue.push(encode_trailers(&trailers));
                            self.out = Out::None;
                        }
                    }
                },
            }
        }
        Ok(())
    }

    fn data(&mut self, data: Bytes) -> Result<(), BoxError> {
        if data.is_empty() {
            return Ok(());
        }
        match self.out {
            Out::Length(_) => {
                self.left = self
                    .left
                    .checked_sub(data.len() as u64)
                    .ok_or(LengthMismatch)?;
                self.queue.push(data);
            }
            Out::Chunked => {
                self.queue.push(chunk_size(data.len()));
                self.queue.push(data);
                self.queue.push(Bytes::from_static(b"\r\n"));
            }
            Out::Close => self.queue.push(data),
            Out::None => {}
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), BoxError> {
        self.ended = true;
        self.body = None;
        match self.out {
            Out::Length(_) if self.left > 0 => Err(LengthMismatch.into()),
            Out::Chunked => {
                self.queue.push(Bytes::from_static(b"0\r\n\r\n"));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
