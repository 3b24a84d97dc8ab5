//! A response body the upstream cut short (closed or reset early, broken chunked framing, or
//! silent past its `response_timeout`) after the head went to the client: its deviation
//! record and its count in `restatus_upstream_errors_total`, so that the service's owners
//! see it in the same log as its wrong statuses.

use crate::deviation::{self, Action, DeviationLog, Kind, Record};
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::wire::BodyError;
use http::{HeaderValue, Method, StatusCode, Uri};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

/// The record's kind, and the `kind` label of the metric.
pub const KIND: &str = "truncated_body";

/// What the record needs once the head has gone; kept only for a response whose body is
/// still to be read from the upstream (a body already whole in the buffer cannot be cut).
pub struct Cut {
    pub log: Arc<DeviationLog>,
    pub metrics: Arc<Metrics>,
    pub route: Arc<str>,
    pub upstream: Arc<Upstream>,
    pub method: Method,
    pub uri: Uri,
    pub request_id: HeaderValue,
    pub upstream_status: StatusCode,
    pub status: StatusCode,
    pub started: Instant,
}

impl Cut {
    /// Writes the record and counts the failure.
    pub fn report(&self, err: &BodyError) {
        self.metrics.upstream_error(self.upstream.name(), KIND);
        self.log.write(&Record {
            ts: deviation::Timestamp::now(),
            request_id: Cow::Borrowed(self.request_id.to_str().unwrap_or("")),
            route: Cow::Borrowed(&self.route),
            rule: None,
            action: Action::Left,
            kind: Kind::TruncatedBody,
            source: deviation::Source::Upstream,
            cause: Some(Cow::Borrowed(cause(err))),
            method: self.method.clone(),
            path: Cow::Borrowed(self.uri.path()),
            upstream: Cow::Borrowed(self.upstream.name()),
            upstream_status: self.upstream_status.as_u16(),
            status: self.status.as_u16(),
            would_status: None,
            body_inspected: false,
            duration_ms: self.started.elapsed().as_micros() as u64 as f64 / 1000.0,
        });
    }
}

/// How the body failed, as the record's `cause` says it.
pub fn cause(err: &BodyError) -> &'static str {
    match err {
        BodyError::Incomplete => "closed",
        BodyError::Io(_) => "reset",
        BodyError::Invalid => "invalid_chunked",
        BodyError::Stalled(_) => "timeout",
    }
}
