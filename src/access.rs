//! The access log: one line per request, written when the response body has been sent (or
//! abandoned), so it can state the bytes actually sent and whether the body completed.

use crate::body::ResponseBody;
use crate::cut::Cut;
use crate::idle::RequestGuard;
use crate::metrics::GaugeGuard;
use bytes::Bytes;
use http::{HeaderValue, Method, StatusCode};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the access line says about one request.
pub struct AccessRecord {
    pub started: Instant,
    pub method: Method,
    pub path: String,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub status: StatusCode,
    pub upstream_status: Option<StatusCode>,
    pub request_id: HeaderValue,
    /// Why the proxy answered itself, when it did.
    pub error: Option<String>,
}

/// A response body that counts the bytes sent and writes the access line when it is dropped.
pub struct LoggedBody {
    inner: ResponseBody,
    record: Option<Box<AccessRecord>>,
    bytes: u64,
    complete: bool,
    /// The body failed: it never counts as complete, whatever the inner body says after.
    failed: bool,
    /// Keeps the connection counted as busy, and tells it when this response waits on the
    /// client (for `send_timeout`).
    guard: Option<RequestGuard>,
    _in_flight: Option<GaugeGuard>,
    /// The record of a body the upstream may yet cut short.
    cut: Option<Box<Cut>>,
}

/// An empty body that logs nothing.
impl Default for LoggedBody {
    fn default() -> Self {
        LoggedBody::new(ResponseBody::Empty, None)
    }
}

impl LoggedBody {
    // Inlined: built in place, as it is for every response.
    #[inline(always)]
    pub fn new(inner: ResponseBody, record: Option<AccessRecord>) -> Self {
        let complete = inner.is_end_stream();
        LoggedBody {
            inner,
            record: record.map(Box::new),
            bytes: 0,
            complete,
            failed: false,
            guard: None,
            _in_flight: None,
            cut: None,
        }
    }

    /// Keeps the request counted as in flight until the body is done.
    pub fn with_in_flight(mut self, guard: GaugeGuard) -> Self {
        self._in_flight = Some(guard);
        self
    }

    /// Records the body, should the upstream cut it short.
    pub fn with_cut(mut self, cut: Option<Box<Cut>>) -> Self {
        self.cut = cut;
        self
    }

    /// Keeps the connection counted as busy until this body is finished, and its send
    /// timeout informed of frames waiting on the client.
    pub fn with_guard(mut self, guard: RequestGuard) -> Self {
        self.guard = Some(guard);
        self
    }
}

impl Body for LoggedBody {
    type Data = Bytes;
    type Error = crate::client::BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::client::BodyError>>> {
        let this = self.get_mut();
        if let Some(guard) = this.guard.as_mut() {
            guard.frame_asked();
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
                if let Some(guard) = this.guard.as_mut().filter(|_| !this.inner.is_end_stream()) {
                    guard.frame_taken();
                }
            }
            Poll::Ready(None) => this.complete = true,
            Poll::Ready(Some(Err(err))) => {
                this.failed = true;
                // The id as text, as the access line writes it, so the two join; without an
                // access log there is none to join, but the failure is still told.
                let record = this.record.as_mut();
                let request_id = record
                    .as_ref()
                    .map_or("-", |r| r.request_id.to_str().unwrap_or("-"));
                tracing::warn!(request_id, error = %err, "upstream response body failed; aborting the client response");
                if let Some(cut) = this.cut.take() {
                    cut.report(err);
                }
                if let Some(record) = record {
                    record
                        .error
                        .get_or_insert_with(|| format!("upstream response body failed: {err}"));
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        let Some(record) = self.record.take() else {
            return;
        };
        let complete = !self.failed && (self.complete || self.inner.is_end_stream());
        // Dropped unsent: the client went away, or its connection was closed (send timeout,
        // shutdown).
        let unsent =
            (!complete).then_some("the connection ended before the whole response was sent");
        record.log(self.bytes, complete, unsent);
    }
}

/// The status logged for a request whose client went away before its response was ready,
/// as NGINX logs it ("client closed request"); no response was sent.
pub const CLIENT_CLOSED: u16 = 499;

impl AccessRecord {
    /// Writes the access line. `unsent` says why the response did not reach the client, when
    /// the record has no error of its own.
    pub fn log(&self, bytes: u64, complete: bool, unsent: Option<&str>) {
        let error = self.error.as_deref().or(unsent).unwrap_or("-");
        tracing::info!(
            target: "restatus::access",
            method = %self.method,
            path = %self.path,
            route = self.route.as_deref().unwrap_or("-"),
            upstream = self.upstream.as_deref().unwrap_or("-"),
            status = self.status.as_u16(),
            upstream_status = self.upstream_status.map_or(0, |s| s.as_u16()),
            // Whole microseconds, as the deviation record has them: `2.17` rather than
            // `2.1697100000000002`.
            duration_ms = self.started.elapsed().as_micros() as u64 as f64 / 1000.0,
            request_id = self.request_id.to_str().unwrap_or("-"),
            bytes,
            complete,
            error,
            "access"
        );
    }
}
