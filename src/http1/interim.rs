//! Interim (1xx) responses relayed from the upstream to an HTTP/1.1 client: RFC 9110 §15.2
//! has a proxy forward them, unless it asked for them itself. `100 Continue` is not relayed
//! here: the client's own `100` comes from the connection when the body is first read
//! (`body.rs`), and `101` belongs to an upgrade, which restatus does not carry.
//!
//! The upstream's exchange runs inside the request's handler, in the connection's task: it
//! queues each interim head it reads, and the connection, which polls the handler, writes
//! the queue out as soon as the handler yields, and finishes it before the final response's
//! head. A request with no interim response pays one atomic load per poll.

use crate::headers;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode, Version};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::AsyncWrite;

/// Interim responses relayed per request; an upstream that sends more has the rest dropped
/// (and logged), so it cannot keep the client's connection busy with them.
pub const MAX_RELAYED: usize = 16;

/// A connection's interim responses waiting for the socket. One per HTTP/1.1 connection,
/// handed to each of its requests (never to an HTTP/1.0 one: RFC 9110 §15.2). What is being
/// written is kept here too, so that a request's state carries nothing for interim responses.
#[derive(Default)]
pub struct Relay {
    state: Mutex<State>,
    /// Heads queued and not yet written and flushed.
    pending: AtomicUsize,
    /// Heads queued for the request being answered.
    relayed: AtomicUsize,
}

#[derive(Default)]
struct State {
    heads: VecDeque<Bytes>,
    /// Bytes of the first head already written.
    written: usize,
}

impl Relay {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues the upstream's interim response for the client (`status` is 1xx, but neither
    /// `100` nor `101`). Hop-by-hop fields are removed and `Via` added, as on a final
    /// response (RFC 9110 §7.6).
    pub fn push(&self, status: StatusCode, reason: Option<&[u8]>, mut fields: HeaderMap) {
        let mut state = self.lock();
        if self.relayed.load(Ordering::Relaxed) == MAX_RELAYED {
            tracing::debug!(%status, "interim response dropped: {MAX_RELAYED} relayed already");
            return;
        }
        let present = headers::strip_response(&mut fields, None);
        headers::append_via(&mut fields, Version::HTTP_11, present.via);
        state.heads.push_back(encode(status, reason, &fields));
        self.relayed.fetch_add(1, Ordering::Relaxed);
        self.pending.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether a head waits to be written (or flushed).
    pub fn is_pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed) != 0
    }

    /// Whether a head is partly written: nothing else may be written until it is whole.
    pub fn is_partial(&self) -> bool {
        self.is_pending() && self.lock().written > 0
    }

    /// Writes the queued heads while the socket takes them, then flushes them, so that the
    /// client has them before the final response is ready. `may_start`: no other interim
    /// head (a `100 Continue`) is partly written. Ready once nothing is left to write.
    pub fn poll_write<W: AsyncWrite + Unpin>(
        &self,
        io: &mut W,
        may_start: bool,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut state = self.lock();
        let State { heads, written } = &mut *state;
        while let Some(head) = heads.front() {
            if *written == 0 && !may_start {
                return Poll::Ready(Ok(()));
            }
            let n = ready!(Pin::new(&mut *io).poll_write(cx, &head[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            *written += n;
            if *written == head.len() {
                heads.pop_front();
                *written = 0;
            }
        }
        ready!(Pin::new(io).poll_flush(cx))?;
        self.pending.store(0, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    /// The request's final response went out: the next request starts with none relayed.
    pub fn finish(&self) {
        if self.relayed.load(Ordering::Relaxed) != 0 {
            let mut state = self.lock();
            state.heads.clear();
            state.written = 0;
            self.pending.store(0, Ordering::Relaxed);
            self.relayed.store(0, Ordering::Relaxed);
        }
    }
}

/// The interim head as RFC 9112 §4 writes it: no body ever follows a 1xx.
fn encode(status: StatusCode, reason: Option<&[u8]>, fields: &HeaderMap) -> Bytes {
    let mut head = BytesMut::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    let canonical = status.canonical_reason().unwrap_or("").as_bytes();
    head.extend_from_slice(reason.unwrap_or(canonical));
    head.extend_from_slice(b"\r\n");
    for (name, value) in fields {
        crate::wire::field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn early_hints() -> StatusCode {
        StatusCode::from_u16(103).expect("103")
    }

    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    /// What the relay writes, split into its heads.
    fn drain(relay: &Relay) -> Vec<String> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut heads = Vec::new();
        let mut out = Vec::new();
        let written = relay.poll_write(&mut out, true, &mut cx);
        assert!(matches!(written, Poll::Ready(Ok(()))), "{written:?}");
        assert!(!relay.is_pending());
        let text = String::from_utf8_lossy(&out).into_owned();
        heads.extend(text.split_inclusive("\r\n\r\n").map(str::to_string));
        heads
    }

    #[test]
    fn an_interim_head_keeps_its_fields_and_loses_hop_by_hop_ones() {
        let relay = Relay::default();
        let link = ("link", "</style.css>; rel=preload; as=style");
        let sent = fields(&[link, ("connection", "x-hop"), ("x-hop", "1")]);
        relay.push(early_hints(), None, sent);
        assert_eq!(
            drain(&relay),
            ["HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload; as=style\r\nvia: 1.1 restatus\r\n\r\n"]
        );
    }

    #[test]
    fn the_upstreams_reason_phrase_is_kept() {
        let relay = Relay::default();
        relay.push(
            StatusCode::PROCESSING,
            Some(b"Still Working"),
            HeaderMap::new(),
        );
        assert_eq!(
            drain(&relay),
            ["HTTP/1.1 102 Still Working\r\nvia: 1.1 restatus\r\n\r\n"]
        );
    }

    #[test]
    fn at_most_max_relayed_heads_go_out_per_request() {
        let relay = Relay::default();
        for _ in 0..MAX_RELAYED + 3 {
            relay.push(early_hints(), None, HeaderMap::new());
        }
        assert_eq!(drain(&relay).len(), MAX_RELAYED);
        relay.push(early_hints(), None, HeaderMap::new());
        assert!(drain(&relay).is_empty(), "over the limit");
        relay.finish();
        relay.push(early_hints(), None, HeaderMap::new());
        assert!(relay.is_pending());
        assert_eq!(drain(&relay).len(), 1, "the next request starts afresh");
        relay.push(early_hints(), None, HeaderMap::new());
        relay.finish();
        assert!(
            !relay.is_pending(),
            "a head left at the final response is not kept"
        );
    }
}
