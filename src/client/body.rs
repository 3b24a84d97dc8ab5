//! The upstream's response body, decoded as RFC 9112 §6.3 frames it (length, chunked, or up
//! to the close), streamed without copies; the connection goes back to its pool at the end.

use super::exchange::{Head, SendError, Writer};
use super::{Conn, Pool};
use crate::body::IdleTimer;
use crate::wire::{self, BodyError, Chunk, Framing};
use bytes::Bytes;
use http::header::TRANSFER_ENCODING;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

impl Framing {
    pub fn of(head: &Head, head_request: bool) -> Result<Framing, SendError> {
        if head_request
            || head.status == StatusCode::NO_CONTENT
            || head.status == StatusCode::NOT_MODIFIED
        {
            return Ok(Framing::Empty);
        }
        let headers = &head.headers;
        if head.noted.transfer_encoding {
            // Only `chunked`, once, is decoded. Any other coding (`gzip, chunked`) would reach
            // the client still applied, with nothing saying so: the field is hop-by-hop and
            // stripped. HAProxy also refuses such a response.
            let mut codings = wire::tokens(headers, &TRANSFER_ENCODING);
            let chunked = codings
                .next()
                .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
                && codings.next().is_none();
            if !chunked {
                return Err(SendError::Invalid("a transfer coding other than chunked"));
            }
            return Ok(Framing::Chunked(Chunk::Size));
        }
        if !head.noted.content_length() {
            return Ok(Framing::Close);
        }
        match head
            .noted
            .length(headers, true)
            .map_err(SendError::Invalid)?
        {
            Some(0) => Ok(Framing::Empty),
            Some(length) => Ok(Framing::Length(length)),
            None => Ok(Framing::Close),
        }
    }

    /// A body ended by the close leaves nothing to reuse.
    pub fn allows_reuse(&self) -> bool {
        !matches!(self, Framing::Close)
    }
}

/// A response body read from an upstream connection.
pub struct UpstreamBody {
    live: Option<Box<Live>>,
}

struct Live {
    conn: Conn,
    /// The rest of the request, still sent while the response arrives.
    writer: Writer,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Pool>,
    /// The upstream's `response_timeout`, allowed between two reads of its body.
    idle: IdleTimer,
    /// The writer's steps when last looked at.
    steps: u64,
}

impl UpstreamBody {
    pub(super) fn new(
        conn: Conn,
        writer: Writer,
        framing: Framing,
        keep_alive: bool,
        pool: Arc<Pool>,
        timeout: Duration,
    ) -> Self {
        let mut body = UpstreamBody {
            live: Some(Box::new(Live {
                steps: writer.steps(),
                conn,
                writer,
                framing,
                keep_alive,
                pool,
                idle: IdleTimer::new(timeout),
            })),
        };
        if body.live.as_ref().is_some_and(|l| l.framing.is_over()) {
            body.finish();
        }
        body
    }

    /// Whether chunked framing has bytes waiting after the head: the one kind of body that
    /// can be found broken (a malformed size) before any of it is relayed, without a read.
    pub fn has_buffered_chunks(&self) -> bool {
        self.live.as_ref().is_some_and(|live| {
            matches!(live.framing, Framing::Chunked(_)) && !live.conn.buf.is_empty()
        })
    }

    /// Whether the body can still fail: the rest of it is yet to be read. A body whose
    /// `Content-Length` bytes all came with the head (most small answers) cannot.
    pub fn may_fail(&self) -> bool {
        self.live.as_ref().is_some_and(|live| match live.framing {
            Framing::Length(left) => (live.conn.buf.len() as u64) < left,
            _ => !live.framing.is_over(),
        })
    }

    /// The body is read to its end: the connection goes back to the pool if it can carry
    /// another request, and is closed otherwise.
    fn finish(&mut self) {
        let Some(live) = self.live.take() else {
            return;
        };
        let Live {
            mut conn,
            writer,
            keep_alive,
            pool,
            ..
        } = *live;
        if !keep_alive || !writer.finished() {
            return;
        }
        // Bytes past the end of the body are not a response anyone asked for.
        if conn.buf.is_empty() {
            conn.carried_body = writer.carries_body();
            pool.put(conn);
        } else {
            pool.unasked(writer.carries_body());
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let Some(live) = this.live.as_mut() else {
            return Poll::Ready(None);
        };
        // The upstream may want the whole request body before it finishes its answer.
        if live.writer.drive(&mut live.conn.io, cx).is_err() {
            live.writer.abandon();
        }
        let polled = live.poll_data(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if live.framing.is_over() => this.finish(),
            Poll::Ready(Some(Ok(_))) => live.idle.reset(),
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) => this.live = None,
            Poll::Pending if live.stalled(cx) => {
                let timeout = live.idle.timeout();
                this.live = None;
                return Poll::Ready(Some(Err(BodyError::Stalled(timeout))));
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.live.as_ref().is_none_or(|l| l.framing.is_over())
    }

    fn size_hint(&self) -> SizeHint {
        match self.live.as_ref().map(|l| &l.framing) {
            None | Some(Framing::Empty | Framing::Done) => SizeHint::with_exact(0),
            Some(Framing::Length(left)) => SizeHint::with_exact(*left),
            Some(_) => SizeHint::default(),
        }
    }
}

impl Live {
    /// Whether the upstream has sent nothing for its `response_timeout`. While the request
    /// still goes out, or waits on the client's body (which `body_timeout` bounds), the
    /// upstream may rightly wait for it, so the clock starts again.
    fn stalled(&mut self, cx: &mut Context<'_>) -> bool {
        let steps = self.writer.steps();
        if steps != self.steps || self.writer.waits_on_body() {
            self.steps = steps;
            self.idle.reset();
        }
        self.idle.expired(cx)
    }

    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        wire::poll_frame(&mut self.framing, &mut self.conn, cx)
    }
}
