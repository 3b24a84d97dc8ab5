//! `Expect: 100-continue` toward the upstream (RFC 9110 §10.1.1): the request head goes
//! upstream with `Expect` intact while the client's body is held back. The upstream's `100`
//! releases the body (and hyper then sends the client its own `100` as the body is first
//! read); an early final status withholds it for good; silence for `expect_timeout` sends it
//! anyway, as curl does.

use crate::body::{BoxError, Source};
use crate::deviation::Kind;
use crate::http1::Relay;
use crate::route::Route;
use crate::upstream::OutboundRequest;
use futures_util::task::AtomicWaker;
use http::header::EXPECT;
use http::{HeaderMap, StatusCode, Version};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// After an early final status, the held body is never sent. The upstream connection cannot
/// be reused (it still expects a body), so it is dropped after this long, which leaves the
/// upstream's final response time to be relayed in full.
const WITHHELD_LINGER: Duration = Duration::from_secs(5);

const WAITING: u8 = 0;
const RELEASED_BY_CONTINUE: u8 = 1;
const RELEASED_BY_TIMER: u8 = 2;
const WITHHELD: u8 = 3;
const RELEASED_LOCALLY: u8 = 4;

/// What the upstream did with a held request body, known once its final status arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The request had no held body.
    NotHeld,
    /// The upstream sent `100` and received the body.
    Continued,
    /// The upstream said nothing within `expect_timeout`; the body was sent anyway.
    TimedOut,
    /// The upstream answered before asking for the body; the client never uploads it.
    Withheld,
}

/// Interim-response state of one upstream request, shared by the request body, hyper's 1xx
/// callback and the proxy.
pub struct Interim {
    held: bool,
    /// Where interim responses other than `100` go, when the client can take them.
    relay: Option<Arc<Relay>>,
    state: AtomicU8,
    saw_continue: AtomicBool,
    /// The upstream answered 417 to the held request, which went again without `Expect`.
    refused: AtomicBool,
    waker: AtomicWaker,
}

impl Interim {
    /// `held`: the request body waits for the upstream's `100`; `relay`: where other interim
    /// responses go (none: they are dropped).
    pub fn new(held: bool, relay: Option<Arc<Relay>>) -> Arc<Interim> {
        Arc::new(Interim {
            held,
            relay,
            state: AtomicU8::new(WAITING),
            saw_continue: AtomicBool::new(false),
            refused: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        })
    }

    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Called for every 1xx response the upstream sends (a `101` is refused before, as an
    /// invalid response). A `100` is taken here, not relayed: the client gets its own when its
    /// body is read. The others are relayed (RFC 9110 §15.2).
    pub fn on_informational(&self, status: StatusCode, reason: Option<&[u8]>, fields: HeaderMap) {
        if status != StatusCode::CONTINUE {
            if let Some(relay) = &self.relay {
                relay.push(status, reason, fields);
            }
            return;
        }
        self.saw_continue.store(true, Ordering::Release);
        if self.transition(WAITING, RELEASED_BY_CONTINUE) {
            self.waker.wake();
        }
    }

    /// The target is known to speak HTTP/1.0: the body goes without waiting, and the client
    /// gets the proxy's own `100` as it is first read. Called before the request is sent.
    pub fn release_locally(&self) {
        if self.transition(WAITING, RELEASED_LOCALLY) {
            self.waker.wake();
        }
    }

    /// Whether a held body still waits for the upstream's `100`: none of it went out.
    pub fn is_waiting(&self) -> bool {
        self.held && self.state.load(Ordering::Acquire) == WAITING
    }

    /// The upstream refused the expectation with 417 while the body waited: the request goes
    /// again without `Expect`, and the client gets the proxy's own `100` as its body is read.
    pub fn refused(&self) {
        self.refused.store(true, Ordering::Release);
        self.release_locally();
    }

    /// Whether the upstream sent a `100` at all.
    pub fn saw_continue(&self) -> bool {
        self.saw_continue.load(Ordering::Acquire)
    }

    /// Called when the upstream's final status arrived (or the request failed): a body still
    /// waiting is withheld for good.
    pub fn on_final(&self) -> Held {
        if !self.held {
            return Held::NotHeld;
        }
        if self.transition(WAITING, WITHHELD) {
            self.waker.wake();
            return Held::Withheld;
        }
        match self.state.load(Ordering::Acquire) {
            RELEASED_BY_CONTINUE => Held::Continued,
            RELEASED_BY_TIMER => Held::TimedOut,
            RELEASED_LOCALLY => Held::NotHeld,
            _ => Held::Withheld,
        }
    }

    fn transition(&self, from: u8, to: u8) -> bool {
        self.state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// The gate in front of a held request body.
pub struct Hold {
    interim: Arc<Interim>,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    lingering: bool,
}

/// The upstream answered before asking for the body; it will not be sent.
#[derive(Debug, thiserror::Error)]
#[error("request body withheld: the upstream answered before asking for it")]
pub struct BodyWithheld;

impl Hold {
    pub fn new(interim: Arc<Interim>, timeout: Duration) -> Hold {
        Hold {
            interim,
            timeout,
            timer: None,
            lingering: false,
        }
    }

    /// Ready(Ok) once the body may be sent; Ready(Err) when it never will be.
    /// Whether the body still waits for the upstream's `100` (or its timer).
    pub fn is_waiting(&self) -> bool {
        self.interim.state.load(Ordering::Acquire) == WAITING
    }

    pub fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.interim.waker.register(cx.waker());
        loop {
            match self.interim.state.load(Ordering::Acquire) {
                RELEASED_BY_CONTINUE | RELEASED_BY_TIMER | RELEASED_LOCALLY => {
                    return Poll::Ready(Ok(()))
                }
                WAITING => {
                    let timeout = self.timeout;
                    let timer = self
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // Lost races are settled by the loop reading the state again.
                    self.interim.transition(WAITING, RELEASED_BY_TIMER);
                }
                _ => {
                    if !self.lingering {
                        self.lingering = true;
                        self.timer = Some(Box::pin(tokio::time::sleep(WITHHELD_LINGER)));
                    }
                    let Some(timer) = self.timer.as_mut() else {
                        return Poll::Ready(Err(BodyWithheld.into()));
                    };
                    return match timer.as_mut().poll(cx) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(()) => Poll::Ready(Err(BodyWithheld.into())),
                    };
                }
            }
        }
    }
}

/// Decides whether the request's body is held for the upstream's `100`, and removes `Expect`
/// from requests that will not wait: HTTP/1.0 and HTTP/2 clients, empty bodies, bodies already
/// read for validation, and upstreams with `expect = "local"`. (A target that last answered
/// HTTP/1.0 is left out once it is chosen, in `Upstream::attempts`.)
/// Returns whether the body is held.
pub fn plan(
    outbound: &mut OutboundRequest,
    body: &Source,
    route: &Route,
    client: Version,
    read: bool,
) -> bool {
    if !crate::admit::has_expect_continue(&outbound.headers) {
        return false;
    }
    let held = client == Version::HTTP_11
        && !read
        && !body.is_end_stream()
        && route.upstream.forwards_expect();
    if held {
        outbound.interim = Interim::new(true, outbound.interim.relay.clone());
    } else {
        outbound.headers.remove(EXPECT);
    }
    held
}

/// The upstream's 100-continue misbehaviour, if any: ignoring a forwarded `Expect` (no `100`
/// before the body went after `expect_timeout`), refusing it with 417, or a `100` nobody
/// asked for.
pub fn deviation(interim: &Interim, held: bool) -> Option<Kind> {
    if held && interim.refused.load(Ordering::Acquire) {
        return Some(Kind::ExpectRefused);
    }
    if held {
        // Released by the timer: whatever `100` came, it came after the body had gone (a
        // service that reads the body first and answers `100` late ignored the expectation).
        let ignored = interim.state.load(Ordering::Acquire) == RELEASED_BY_TIMER;
        ignored.then_some(Kind::ExpectIgnored)
    } else {
        interim.saw_continue().then_some(Kind::Unsolicited100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_releases_and_final_reports_it() {
        let interim = Interim::new(true, None);
        interim.on_informational(StatusCode::CONTINUE, None, HeaderMap::new());
        assert!(interim.saw_continue());
        assert_eq!(interim.on_final(), Held::Continued);
    }

    #[test]
    fn a_final_status_first_withholds_the_body() {
        let interim = Interim::new(true, None);
        assert_eq!(interim.on_final(), Held::Withheld);
        // A late 100 cannot release a withheld body.
        interim.on_informational(StatusCode::CONTINUE, None, HeaderMap::new());
        assert_eq!(interim.on_final(), Held::Withheld);
    }

    #[test]
    fn other_interim_codes_do_not_release() {
        let interim = Interim::new(true, None);
        interim.on_informational(StatusCode::EARLY_HINTS, None, HeaderMap::new());
        assert!(!interim.saw_continue());
        assert_eq!(interim.on_final(), Held::Withheld);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_releases_after_the_timeout() {
        let interim = Interim::new(true, None);
        let mut hold = Hold::new(interim.clone(), Duration::from_secs(1));
        let released = std::future::poll_fn(|cx| hold.poll_release(cx)).await;
        assert!(released.is_ok());
        assert_eq!(interim.on_final(), Held::TimedOut);
    }
}
