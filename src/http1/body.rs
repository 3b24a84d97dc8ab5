//! A request body read by the connection: the connection decodes it from its socket only
//! once the request's handler asks for it, and hands it over one frame at a time.
//!
//! The first ask is what sends `100 Continue` (RFC 9110 §10.1.1): a handler that answers
//! without reading the body never makes the client send it.

use super::Wire;
use crate::wire::{self, BodyError, Fill, Framing};
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::io::{AsyncRead, AsyncWrite};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The handler's side of a request body.
pub struct RequestBody {
    inner: Inner,
}

enum Inner {
    /// Read by the connection as the handler asks for it.
    Channel(Arc<Mutex<State>>),
    /// The whole body, read with the head: there is nothing for the connection to hand over.
    Whole(Option<Bytes>),
}

impl RequestBody {
    /// A body all of whose bytes are at hand.
    pub fn whole(data: Bytes) -> RequestBody {
        RequestBody {
            inner: Inner::Whole((!data.is_empty()).then_some(data)),
        }
    }

    /// The whole body, if it came with the head; it is then taken and the body is at its end.
    pub fn take_whole(&mut self) -> Option<Bytes> {
        match &mut self.inner {
            Inner::Whole(data) => data.take(),
            Inner::Channel(_) => None,
        }
    }
}

/// The connection's side: reads the body off the wire while the handler wants it.
pub struct Pump {
    shared: Arc<Mutex<State>>,
    framing: Framing,
    interim: Interim,
    /// The body could not be read to its end: the connection cannot carry another request.
    pub failed: bool,
}

/// `100 Continue` for a request that asked for it.
enum Interim {
    None,
    /// Owed, with how many of its bytes went out.
    Due(usize),
}

/// Bytes already read, and no more.
struct Buffered<'a>(&'a mut BytesMut);

impl Fill for Buffered<'_> {
    fn buffer(&mut self) -> &mut BytesMut {
        self.0
    }

    fn poll_fill(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
}

#[derive(Default)]
struct State {
    /// One decoded frame, waiting for the handler.
    slot: Option<Result<Frame<Bytes>, BodyError>>,
    end: bool,
    /// The handler asked for the body (from then on the connection reads ahead one frame).
    wanted: bool,
    /// The handler dropped its side.
    dropped: bool,
    /// Bytes not yet handed over, when the length is known.
    remaining: Option<u64>,
    reader: Option<Waker>,
    conn: Option<Waker>,
}

fn lock(shared: &Mutex<State>) -> MutexGuard<'_, State> {
    shared
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn remember(slot: &mut Option<Waker>, cx: &Context<'_>) {
    if !slot.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
        *slot = Some(cx.waker().clone());
    }
}

/// A body framed by `framing`; `expects_continue`: the client waits for `100 Continue`.
pub fn channel(framing: Framing, expects_continue: bool) -> (Pump, RequestBody) {
    let remaining = match framing {
        Framing::Length(n) => Some(n),
        _ => None,
    };
    let shared = Arc::new(Mutex::new(State {
        remaining,
        ..State::default()
    }));
    let pump = Pump {
        shared: shared.clone(),
        framing,
        interim: if expects_continue {
            Interim::Due(0)
        } else {
            Interim::None
        },
        failed: false,
    };
    let body = RequestBody {
        inner: Inner::Channel(shared),
    };
    (pump, body)
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let shared = match &mut self.get_mut().inner {
            Inner::Channel(shared) => shared,
            Inner::Whole(data) => return Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        };
        let mut state = lock(shared);
        if let Some(item) = state.slot.take() {
            if let (Ok(frame), Some(left)) = (&item, state.remaining.as_mut()) {
                *left -= frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            if let Some(conn) = state.conn.take() {
                conn.wake();
            }
            return Poll::Ready(Some(item));
        }
        if state.end {
            return Poll::Ready(None);
        }
        state.wanted = true;
        remember(&mut state.reader, cx);
        if let Some(conn) = state.conn.take() {
            conn.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Channel(shared) => {
                let state = lock(shared);
                state.end && state.slot.is_none()
            }
            Inner::Whole(data) => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let left = match &self.inner {
            Inner::Channel(shared) => lock(shared).remaining,
            Inner::Whole(data) => Some(data.as_ref().map_or(0, |d| d.len() as u64)),
        };
        match left {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        let Inner::Channel(shared) = &self.inner else {
            return;
        };
        let mut state = lock(shared);
        state.dropped = true;
        if let Some(conn) = state.conn.take() {
            conn.wake();
        }
    }
}

impl Pump {
    /// The whole body was read off the wire.
    pub fn is_done(&self) -> bool {
        self.framing.is_over()
    }

    /// Whether a `100 Continue` is partly written: nothing else may be written until it is
    /// whole.
    pub fn continue_started(&self) -> bool {
        matches!(self.interim, Interim::Due(sent) if sent > 0)
    }

    /// Called before the final response goes out: a `100 Continue` not started by now is
    /// not sent; one partly written is finished first.
    pub fn poll_before_final<I>(
        &mut self,
        wire: &mut Wire<I>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        if matches!(self.interim, Interim::Due(0)) {
            self.interim = Interim::None;
        }
        self.poll_continue(wire, cx)
    }

    /// Hands over the first frame when its bytes arrived with the head, before the handler
    /// asks: the request then goes upstream with its body in one write. Never reads the
    /// socket, and never for a client waiting for `100 Continue`.
    pub fn prefill<I>(&mut self, wire: &mut Wire<I>) {
        if !matches!(self.interim, Interim::None) || wire.buf.is_empty() {
            return;
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut buffered = Buffered(&mut wire.buf);
        if let Poll::Ready(item) = wire::poll_frame(&mut self.framing, &mut buffered, &mut cx) {
            self.hand_over(item);
        }
    }

    /// Reads the body while the handler wants it and has room. Returns whether a frame was
    /// handed over (the handler may then make progress).
    pub fn drive<I>(&mut self, wire: &mut Wire<I>, cx: &mut Context<'_>) -> bool
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let mut moved = false;
        loop {
            if self.failed || self.framing.is_over() {
                return moved;
            }
            {
                let mut state = lock(&self.shared);
                if state.dropped {
                    return moved;
                }
                if state.slot.is_some() || !state.wanted {
                    remember(&mut state.conn, cx);
                    return moved;
                }
            }
            match self.poll_continue(wire, cx) {
                Poll::Pending => return moved,
                Poll::Ready(Err(err)) => {
                    self.hand_over(Some(Err(BodyError::Io(err))));
                    return true;
                }
                Poll::Ready(Ok(())) => {}
            }
            match wire::poll_frame(&mut self.framing, wire, cx) {
                Poll::Pending => return moved,
                Poll::Ready(item) => {
                    self.hand_over(item);
                    moved = true;
                }
            }
        }
    }

    fn hand_over(&mut self, item: Option<Result<Frame<Bytes>, BodyError>>) {
        let mut state = lock(&self.shared);
        match item {
            None => state.end = true,
            Some(Ok(frame)) => {
                state.slot = Some(Ok(frame));
                state.end = self.framing.is_over();
            }
            Some(Err(err)) => {
                self.failed = true;
                state.slot = Some(Err(err));
                state.end = true;
            }
        }
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
    }

    /// Writes the owed `100 Continue` before the first body read.
    fn poll_continue<I>(
        &mut self,
        wire: &mut Wire<I>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        while let Interim::Due(sent) = &mut self.interim {
            if *sent == CONTINUE.len() {
                std::task::ready!(Pin::new(&mut wire.io).poll_flush(cx))?;
                self.interim = Interim::None;
                break;
            }
            match std::task::ready!(Pin::new(&mut wire.io).poll_write(cx, &CONTINUE[*sent..]))? {
                0 => return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into())),
                n => *sent += n,
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_whole_body_gives_its_bytes_once_with_an_exact_size() {
        let mut body = RequestBody::whole(Bytes::from_static(b"{\"a\":1}"));
        assert_eq!(body.size_hint().exact(), Some(7));
        assert!(!body.is_end_stream());
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(
            frame.into_data().ok(),
            Some(Bytes::from_static(b"{\"a\":1}"))
        );
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.frame().await.is_none());
        let empty = RequestBody::whole(Bytes::new());
        assert!(empty.is_end_stream());
    }
}
