//! Prometheus metrics. Each server owns its registry (tests build their own); the handles a
//! request touches are resolved once per route, so the request path only does atomic adds.

use crate::deviation::Labels;
use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeviationLabels {
    route: String,
    rule: String,
    upstream_status: u16,
    status: u16,
    action: String,
    kind: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnsweredLabels {
    route: String,
    reason: String,
    check: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Latency buckets in seconds: 0.5 ms to 30 s.
fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: HistogramFamily,
    upstream_duration: HistogramFamily,
    deviations: Family<DeviationLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    queued: Family<UpstreamLabels, Gauge>,
    not_inspected: Family<RouteLabels, Counter>,
    answered: Family<AnsweredLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    in_flight: Gauge,
    open_connections: Gauge,
    held_bodies: Gauge,
    deviations_dropped: Counter,
    dropped_seen: AtomicU64,
    tls_handshake_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("restatus");
        let metrics = Metrics {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            deviations: Family::default(),
            upstream_errors: Family::default(),
            queued: Family::default(),
            not_inspected: Family::default(),
            answered: Family::default(),
            reloads: Family::default(),
            in_flight: Gauge::default(),
            open_connections: Gauge::default(),
            held_bodies: Gauge::default(),
            deviations_dropped: Counter::default(),
            dropped_seen: AtomicU64::new(0),
            tls_handshake_failures: Counter::default(),
            registry: Registry::default(),
        };
        // Both results from the start, so that a dashboard sees 0 before the first reload.
        for result in ["success", "failure"] {
            let labels = ResultLabels {
                result: result.to_string(),
            };
            drop(metrics.reloads.get_or_create(&labels));
        }
        metrics.register(&mut registry);
        Metrics {
            registry,
            ..metrics
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests by route, method and final status class",
            self.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from the request to the response head, by route",
            self.request_duration.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time from sending upstream to its response head, by route",
            self.upstream_duration.clone(),
        );
        registry.register(
            "deviations",
            "Deviation records by route, rule, upstream status, final status, action and kind",
            self.deviations.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream requests by upstream and kind",
            self.upstream_errors.clone(),
        );
        registry.register(
            "upstream_queued_requests",
            "Requests waiting for a connection to an upstream with max_connections",
            self.queued.clone(),
        );
        registry.register(
            "bodies_not_inspected",
            "Responses a body rule wanted to read but could not (over limits.inspect_body, or in a coding restatus cannot read), by route",
            self.not_inspected.clone(),
        );
        registry.register(
            "answered_by_proxy",
            "Requests restatus answered itself without the upstream, by route, reason and check",
            self.answered.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            self.reloads.clone(),
        );
        registry.register(
            "in_flight_requests",
            "Requests being handled",
            self.in_flight.clone(),
        );
        registry.register(
            "open_connections",
            "Client connections open",
            self.open_connections.clone(),
        );
        registry.register(
            "held_body_bytes",
            "Bytes of request bodies read whole before they go upstream, held now (limit: limits.held_bodies)",
            self.held_bodies.clone(),
        );
        registry.register(
            "deviation_records_dropped",
            "Deviation records dropped because the sink could not keep up",
            self.deviations_dropped.clone(),
        );
        registry.register(
            "tls_handshake_failures",
            "TLS handshakes with clients that failed",
            self.tls_handshake_failures.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
    }

    /// The Prometheus text exposition of every metric. `dropped` is the deviation log's
    /// running count of dropped records.
    pub fn encode(&self, dropped: u64) -> String {
        let seen = self.dropped_seen.swap(dropped, Ordering::AcqRel);
        self.deviations_dropped.inc_by(dropped.saturating_sub(seen));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// The handles one route's requests use.
    pub fn route(&self, route: &str) -> RouteMetrics {
        let labels = RouteLabels {
            route: route.to_string(),
        };
        RouteMetrics {
            route: route.to_string(),
            requests: self.requests.clone(),
            by_method_class: (0..METHOD_SLOTS * 5).map(|_| OnceLock::new()).collect(),
            duration: self.request_duration.get_or_create(&labels).clone(),
            upstream_duration: self.upstream_duration.get_or_create(&labels).clone(),
            not_inspected: self.not_inspected.get_or_create(&labels).clone(),
        }
    }

    /// Counted by the deviation log's writer thread, off the request path.
    /// Counts `count` records that carry `labels`.
    pub fn deviation(&self, labels: &Labels, count: u64) {
        let labels = DeviationLabels {
            route: labels.route.to_string(),
            rule: labels.rule.as_deref().unwrap_or_default().to_string(),
            upstream_status: labels.upstream_status,
            status: labels.status,
            action: labels.action.as_str().to_string(),
            kind: labels.kind.as_str().to_string(),
            source: labels.source.as_str().to_string(),
        };
        self.deviations.get_or_create(&labels).inc_by(count);
    }

    pub fn upstream_error(&self, upstream: &str, kind: &str) {
        let labels = UpstreamErrorLabels {
            upstream: upstream.to_string(),
            kind: kind.to_string(),
        };
        self.upstream_errors.get_or_create(&labels).inc();
    }

    /// Sets the requests waiting for a connection, per upstream with `max_connections`;
    /// upstreams not given (gone with a reload) are dropped.
    /// Bytes of request bodies held whole now, set when the metrics are read.
    pub fn set_held_bodies(&self, bytes: u64) {
        self.held_bodies
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn set_queued<'a>(&self, upstreams: impl Iterator<Item = (&'a str, usize)>) {
        self.queued.clear();
        for (upstream, waiting) in upstreams {
            let labels = UpstreamLabels {
                upstream: upstream.to_string(),
            };
            self.queued.get_or_create(&labels).set(waiting as i64);
        }
    }

    /// A request restatus answered itself for the client's sake (no route, a check's refusal,
    /// a limit, `Max-Forwards: 0`); `check` names the check that refused it.
    pub fn answered(&self, route: &str, reason: &str, check: Option<&str>) {
        let labels = AnsweredLabels {
            route: route.to_string(),
            reason: reason.to_string(),
            check: check.unwrap_or("").to_string(),
        };
        self.answered.get_or_create(&labels).inc();
    }

    pub fn reload(&self, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        let labels = ResultLabels {
            result: result.to_string(),
        };
        self.reloads.get_or_create(&labels).inc();
    }

    pub fn tls_handshake_failed(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Counts a request in flight until the guard is dropped.
    pub fn in_flight(&self) -> GaugeGuard {
        self.in_flight.inc();
        GaugeGuard(self.in_flight.clone())
    }

    /// Counts an open client connection until the guard is dropped.
    pub fn connection(&self) -> GaugeGuard {
        self.open_connections.inc();
        GaugeGuard(self.open_connections.clone())
    }
}

/// Decrements its gauge when dropped.
pub struct GaugeGuard(Gauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

const METHOD_SLOTS: usize = 8;
const METHOD_NAMES: [&str; METHOD_SLOTS] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

fn method_slot(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// One route's metric handles. Counters for a method and status class are created on first
/// use, so `/metrics` lists only series that happened.
pub struct RouteMetrics {
    route: String,
    requests: Family<RequestLabels, Counter>,
    by_method_class: Box<[OnceLock<Counter>]>,
    duration: Histogram,
    upstream_duration: Histogram,
    not_inspected: Counter,
}

impl RouteMetrics {
    /// Counts a request that got its response head after `elapsed`. Inlined: it is on every
    /// request's path, and a second (cold) call site would otherwise make it a call.
    #[inline(always)]
    pub fn request(&self, method: &Method, status: u16, elapsed: Duration) {
        let class = usize::from((status / 100).clamp(1, 5)) - 1;
        let slot = method_slot(method) * 5 + class;
        self.by_method_class[slot]
            .get_or_init(|| {
                let labels = RequestLabels {
                    route: self.route.clone(),
                    method: METHOD_NAMES[method_slot(method)].to_string(),
                    class: format!("{}xx", class + 1),
                };
                self.requests.get_or_create(&labels).clone()
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed.as_secs_f64());
    }

    /// A response whose body a rule wanted but could not read.
    pub fn body_not_inspected(&self) {
        self.not_inspected.inc();
    }
}
