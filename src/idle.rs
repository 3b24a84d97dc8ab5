//! Per-connection timeouts: an idle keep-alive connection is closed after `idle_timeout`; a
//! request head that started arriving is cut off `header_timeout` after its first byte.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
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
    /// When the watchdog next looks (same clock): a head whose header deadline falls later
    /// needs no wake-up, which spares one per request on a busy keep-alive connection.
    wake_at: AtomicU64,
    /// Wakes the watchdog when a head starts, so that its deadline moves from the idle
    /// timeout to the (usually much shorter) header timeout.
    head_started: tokio::sync::Notify,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64 + 1
    }

    fn on_read(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self.first_byte.load(Ordering::Relaxed) == 0
        {
            let now = self.now_ms();
            self.first_byte.store(now, Ordering::Relaxed);
            if now + self.header_ms > self.wake_at.load(Ordering::Relaxed) {
                return;
            }
            self.head_started.notify_one();
        }
    }

    /// Marks a request as dispatched; the returned guard marks it finished when dropped.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.first_byte.store(0, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
        }
    }
}

/// Held by a response body until it is sent or dropped.
pub struct RequestGuard {
    activity: Arc<Activity>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let activity = &self.activity;
        if activity.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            activity.first_byte.store(0, Ordering::Relaxed);
            activity
                .idle_since
                .store(activity.now_ms(), Ordering::Relaxed);
        }
    }
}

pub struct Watchdog {
    activity: Arc<Activity>,
    idle_timeout: Duration,
}

impl Watchdog {
    pub fn new(header_timeout: Duration, idle_timeout: Duration) -> Self {
        Watchdog {
            activity: Arc::new(Activity {
                opened: Instant::now(),
                header_ms: header_timeout.as_millis() as u64,
                wake_at: AtomicU64::new(0),
                in_flight: AtomicUsize::new(0),
                idle_since: AtomicU64::new(1),
                first_byte: AtomicU64::new(0),
                head_started: tokio::sync::Notify::new(),
            }),
            idle_timeout,
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
        loop {
            let now = activity.now_ms();
            let (deadline, reason) = if activity.in_flight.load(Ordering::Relaxed) > 0 {
                (now + header_ms.min(idle_ms).max(1), "")
            } else {
                match activity.first_byte.load(Ordering::Relaxed) {
                    0 => (
                        activity.idle_since.load(Ordering::Relaxed) + idle_ms,
                        "idle timeout",
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
                _ = activity.head_started.notified() => {}
            }
        }
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
