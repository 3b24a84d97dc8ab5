//! Per-connection timeouts: an idle keep-alive connection is closed after `idle_timeout`; a
//! request head that started arriving is cut off `header_timeout` after its first byte; a
//! connection with a response waiting to go out is closed once its client has taken none of
//! it for `send_timeout`.

use crate::server::ConnSettings;
use futures_util::task::AtomicWaker;
use futures_util::FutureExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the connection has been doing, shared by its IO, its requests and its watchdog.
pub struct Activity {
    opened: Instant,
    /// `header_timeout` in milliseconds, the unit of the clock below.
    header_ms: u64,
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` + 1 when the connection last became idle.
    idle_since: AtomicU64,
    /// Milliseconds since `opened` + 1 of the first byte read while idle; 0 = none yet.
    first_byte: AtomicU64,
    /// `send_timeout` in milliseconds.
    send_ms: u64,
    /// Responses whose last frame the connection took and whose next it has not asked for:
    /// the client's socket or its HTTP/2 flow-control window has no room for them.
    waiting: AtomicUsize,
    /// Milliseconds since `opened` + 1 when `waiting` last became non-zero, or when a
    /// response last moved while others waited.
    waiting_since: AtomicU64,
    /// When the watchdog next looks (same clock): a head whose header deadline falls later
    /// needs no wake-up, which spares one per request on a busy keep-alive connection.
    wake_at: AtomicU64,
    /// Wakes the watchdog when a deadline earlier than the one it waits for begins: a head
    /// starts (the idle timeout gives way to the usually shorter header timeout), or a
    /// response starts waiting on the client (the send timeout starts).
    sooner: tokio::sync::Notify,
    /// The connection speaks HTTP/2: its idle reads are frames of the connection (PING,
    /// SETTINGS, WINDOW_UPDATE), not the start of a request head, so they start no header
    /// timeout; `idle_timeout` alone bounds an idle HTTP/2 connection.
    h2: AtomicBool,
    /// Asks an HTTP/2 connection to close with a GOAWAY (its idle timeout passed).
    go_away: tokio::sync::Notify,
    /// A request has been in flight since the watchdog last looked: the HTTP/1 connection
    /// watches its client's socket for a hang-up from now on (see [`WATCH_AFTER_MS`]).
    watch: AtomicBool,
}

/// While a request is in flight the watchdog looks at least this often; a request still in
/// flight then has its client's socket watched, so that a client that hangs up ends it
/// (the upstream request aborted, its place in a `max_connections` queue given up), as
/// NGINX does. Fast requests never get there: watching costs a read per request.
pub const WATCH_AFTER_MS: u64 = 1000;

impl Activity {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    #[inline]
    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.first_byte.load(Ordering::Relaxed) == 0
            && !self.h2.load(Ordering::Relaxed)
        {
            let now = self.now_ms();
            self.first_byte.store(now, Ordering::Relaxed);
            if now + self.header_ms > self.wake_at.load(Ordering::Relaxed) {
                return;
            }
            self.sooner.notify_one();
        }
    }

    fn wait_started(&self) {
        if self.waiting.fetch_add(1, Ordering::Relaxed) == 0 {
            let now = self.now_ms();
            self.waiting_since.store(now, Ordering::Relaxed);
            if now + self.send_ms < self.wake_at.load(Ordering::Relaxed) {
                self.sooner.notify_one();
            }
        }
    }

    fn wait_ended(&self) {
        // Any response moving means the client is taking bytes: the clock starts again for
        // the others.
        if self.waiting.fetch_sub(1, Ordering::Relaxed) > 1 {
            self.waiting_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The connection speaks HTTP/2 from now on (see `h2`).
    pub fn speaks_h2(&self) {
        self.h2.store(true, Ordering::Relaxed);
        self.first_byte.store(0, Ordering::Relaxed);
    }

    pub fn is_h2(&self) -> bool {
        self.h2.load(Ordering::Relaxed)
    }

    /// Asks the HTTP/2 connection to go away gracefully.
    pub fn ask_to_go_away(&self) {
        self.go_away.notify_one();
    }

    /// Completes once the HTTP/2 connection is asked to go away.
    pub async fn asked_to_go_away(&self) {
        self.go_away.notified().await;
    }

    /// Whether the client's socket is to be watched for a hang-up (see `watch`).
    pub fn watches_hangup(&self) -> bool {
        self.watch.load(Ordering::Relaxed)
    }

    /// Marks a request as dispatched; the returned guard marks it finished when dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.first_byte.store(0, Ordering::Relaxed);
        self.watch.store(false, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
            waiting: false,
        }
    }
}

/// Held by a response body until it is sent or dropped.
pub struct RequestGuard {
    activity: Arc<Activity>,
    /// The connection took a frame of this response and has not asked for the next.
    waiting: bool,
}

impl RequestGuard {
    /// The connection took a frame and more are to come: until it asks for the next, the
    /// response waits on the client.
    pub fn frame_taken(&mut self) {
        if !self.waiting {
            self.waiting = true;
            self.activity.wait_started();
        }
    }

    /// The connection asks for the next frame: it had room for the last one.
    pub fn frame_asked(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.activity.wait_ended();
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.frame_asked();
        let activity = &self.activity;
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            activity.first_byte.store(0, Ordering::Relaxed);
            activity
                .idle_since
                .store(activity.now_ms(), Ordering::Relaxed);
        }
    }
}

/// The reason [`Watchdog::expired`] gives for a connection idle too long.
pub const IDLE_TIMEOUT: &str = "idle timeout";

pub struct Watchdog {
    activity: Arc<Activity>,
    idle_timeout: Duration,
}

impl Watchdog {
    pub fn new(settings: &ConnSettings) -> Self {
        Watchdog {
            activity: Arc::new(Activity {
                opened: Instant::now(),
                header_ms: settings.header_timeout.as_millis() as u64,
                send_ms: settings.send_timeout.as_millis() as u64,
                waiting: AtomicUsize::new(0),
                waiting_since: AtomicU64::new(0),
                wake_at: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                idle_since: AtomicU64::new(1),
                first_byte: AtomicU64::new(0),
                sooner: tokio::sync::Notify::new(),
                h2: AtomicBool::new(false),
                go_away: tokio::sync::Notify::new(),
                watch: AtomicBool::new(false),
            }),
            idle_timeout: settings.idle_timeout,
        }
    }

    pub fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Completes when the connection should be closed, naming why.
    pub async fn expired(self) -> &'static str {
        let activity = &self.activity;
        let header_ms = activity.header_ms;
        let idle_ms = self.idle_timeout.as_millis() as u64;
        // When the watchdog first saw the connection busy, since it last saw it idle.
        let mut busy_since: Option<u64> = None;
        loop {
            let now = activity.now_ms();
            if activity.in_flight.load(Ordering::Relaxed) == 0 {
                busy_since = None;
            }
            let (deadline, reason) = if activity.in_flight.load(Ordering::Relaxed) > 0 {
                if activity.waiting.load(Ordering::Relaxed) > 0 {
                    let since = activity.waiting_since.load(Ordering::Relaxed);
                    (since + activity.send_ms, "send timeout")
                } else {
                    // Busy for a while: the request in flight is a slow one, and its
                    // client's hang-up is watched for.
                    let since = *busy_since.get_or_insert(now);
                    if now - since >= WATCH_AFTER_MS {
                        activity.watch.store(true, Ordering::Relaxed);
                    }
                    let every = header_ms.min(idle_ms).min(WATCH_AFTER_MS);
                    (now + every.max(1), "")
                }
            } else {
                match activity.first_byte.load(Ordering::Relaxed) {
                    0 => (
                        activity.idle_since.load(Ordering::Relaxed) + idle_ms,
                        IDLE_TIMEOUT,
                    ),
                    first => (first + header_ms, "request header timeout"),
                }
            };
            if now >= deadline && !reason.is_empty() {
                return reason;
            }
            let wait = Duration::from_millis(deadline.saturating_sub(now).max(1));
            activity
                .wake_at
                .store(now + wait.as_millis() as u64, Ordering::Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = activity.sooner.notified() => {}
            }
        }
    }
}

/// A future that is polled only once it has asked to be, through its own waker.
///
/// The watchdog shares its connection's task, which is woken several times per request (by
/// the client's socket and the upstream's). Polled on each of those, its timer and `Notify`
/// cost about as much as parsing a request head; behind this, a wake-up that is not the
/// watchdog's costs one flag check.
pub struct WhenWoken<F> {
    inner: F,
    flag: Arc<WokenFlag>,
    waker: Waker,
}

struct WokenFlag {
    woken: AtomicBool,
    /// The task that polls [`WhenWoken`], woken when the inner future's waker is.
    task: AtomicWaker,
}

impl Wake for WokenFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> WhenWoken<F> {
    pub fn new(inner: F) -> Self {
        // Woken to start with: the first poll is the one that arms the inner future.
        let flag = Arc::new(WokenFlag {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(flag.clone());
        WhenWoken { inner, flag, waker }
    }
}

impl<F: Future + Unpin> Future for WhenWoken<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // Registered before the flag is read, so a wake-up in between is not lost.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        this.inner.poll_unpin(&mut Context::from_waker(&this.waker))
    }
}

/// A stream that tells [`Activity`] when bytes arrive.
pub struct ActivityIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> ActivityIo<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        ActivityIo { inner, activity }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S> crate::http1::Hangup for ActivityIo<S> {
    fn watch_for_hangup(&self) -> bool {
        self.activity.watches_hangup()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ActivityIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.on_read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ActivityIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Counts its polls and completes once `done` is set, waking the waker it last saw.
    struct Probe {
        polls: Arc<AtomicUsize>,
        done: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.done.load(Ordering::Relaxed) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn the_inner_future_is_polled_only_when_it_woke() {
        let (polls, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let inner_waker = Arc::new(Mutex::new(None));
        let probe = Probe {
            polls: polls.clone(),
            done: done.clone(),
            waker: inner_waker.clone(),
        };
        let mut future = WhenWoken::new(probe);
        let task = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        assert_eq!(polls.load(Ordering::Relaxed), 1, "the first poll arms it");
        for _ in 0..5 {
            // The task woke for something else: the inner future is not polled.
            assert!(Pin::new(&mut future).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        done.store(true, Ordering::Relaxed);
        let woken = inner_waker.lock().unwrap().take().expect("a waker");
        woken.wake();
        assert_eq!(
            task.0.load(Ordering::Relaxed),
            1,
            "its wake-up reaches the task"
        );
        assert!(Pin::new(&mut future).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }
}
