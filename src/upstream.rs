//! Upstreams: a pooled keep-alive client per upstream, round-robin over its targets, and the
//! mapping of every way a request to it can fail onto a [`ProxyError`].

use crate::body::{BodyTimeout, BodyTooLarge, ForwardBody, Source};
use crate::config::{ExpectMode, HostMode, Target, UpstreamConfig};
use crate::expect::{Hold, Interim};
use crate::respond::ProxyError;
use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{capture_connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Upstream {
    pub config: Arc<UpstreamConfig>,
    client: Client<HttpsConnector<HttpConnector>, ForwardBody>,
    next: AtomicUsize,
    /// Set once the upstream answered as HTTP/1.0: it cannot take part in 100-continue.
    http10: AtomicBool,
}

/// The parts of a request that go upstream, already rewritten by the proxy.
pub struct OutboundRequest {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    pub body: Source,
    /// Interim responses of this request; a held body waits on it.
    pub interim: Arc<Interim>,
}

impl OutboundRequest {
    pub fn body_is_empty(&self) -> bool {
        self.body.is_end_stream()
    }
}

impl Upstream {
    pub fn new(config: Arc<UpstreamConfig>) -> Self {
        let connector = connector(&config);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            // A burst of clients opens as many upstream connections; keeping all of them idle
            // afterwards costs memory per connection for nothing.
            .pool_max_idle_per_host(config.idle_connections)
            .http1_allow_obsolete_multiline_headers_in_responses(true)
            .http1_allow_spaces_after_header_name_in_responses(true)
            .http1_ignore_invalid_headers_in_responses(true)
            .build(connector);
        Upstream {
            config,
            client,
            next: AtomicUsize::new(0),
            http10: AtomicBool::new(false),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether `Expect: 100-continue` goes upstream. RFC 9110 §10.1.1 lets a proxy answer
    /// `100` itself for an HTTP/1.0 next hop, which knows nothing of it.
    pub fn forwards_expect(&self) -> bool {
        self.config.expect == ExpectMode::Forward && !self.http10.load(Ordering::Relaxed)
    }

    /// Sends the request to the next target in turn, moving on to the following target when
    /// a connection is refused, and waits at most `response_timeout` for the response head.
    pub async fn send(&self, outbound: OutboundRequest) -> Result<Response<Incoming>, ProxyError> {
        let attempt = self.attempts_with_retry(outbound);
        let result = match tokio::time::timeout(self.config.response_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(ProxyError::UpstreamTimeout),
        };
        if let Ok(response) = &result {
            if response.version() == Version::HTTP_10 && !self.http10.swap(true, Ordering::Relaxed)
            {
                tracing::info!(upstream = %self.config.name, "upstream answers HTTP/1.0: Expect is answered locally from now on");
            }
        }
        result
    }

    /// A pooled connection the upstream closed while idle fails the request sent on it as a
    /// reset before any response head. RFC 9110 §9.2.2 allows retrying an idempotent request
    /// then; only one without a body is retried (once, on a fresh connection: hyper never
    /// pools a connection that failed), so no request body is ever sent twice.
    async fn attempts_with_retry(
        &self,
        outbound: OutboundRequest,
    ) -> Result<Response<Incoming>, ProxyError> {
        let again = replayable(&outbound);
        match (self.attempts(outbound).await, again) {
            (Err(ProxyError::UpstreamReset), Some(again)) => {
                tracing::debug!(upstream = %self.config.name, "connection closed before the response head; retrying the idempotent request once");
                self.attempts(again).await
            }
            (result, _) => result,
        }
    }

    async fn attempts(&self, outbound: OutboundRequest) -> Result<Response<Incoming>, ProxyError> {
        let targets = &self.config.targets;
        let first = self.next.fetch_add(1, Ordering::Relaxed) % targets.len();
        let OutboundRequest {
            method,
            path_and_query,
            mut headers,
            mut body,
            interim,
        } = outbound;
        for tried in 0..targets.len() {
            let target = &targets[(first + tried) % targets.len()];
            let last = tried + 1 == targets.len();
            if self.config.host == HostMode::Target {
                headers.insert(HOST, target.host_header.clone());
            }
            let head = if last {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            let (forward, reclaim) = if last {
                (ForwardBody::new(body), None)
            } else {
                let (forward, reclaim) = ForwardBody::reclaimable(body);
                (forward, Some(reclaim))
            };
            let hold = interim
                .is_held()
                .then(|| Hold::new(interim.clone(), self.config.expect_timeout));
            let mut request =
                build_request(target, &method, &path_and_query, head, forward.held(hold))?;
            let observer = interim.clone();
            hyper::ext::on_informational(&mut request, move |response| {
                observer.on_informational(response.status());
            });
            let connection = capture_connection(&mut request);
            match self.client.request(request).await {
                Ok(response) => {
                    if let Err(err) = refuse_invalid(&response) {
                        // The connection's framing can no longer be trusted: never pool it.
                        if let Some(connected) = connection.connection_metadata().as_ref() {
                            connected.poison();
                        }
                        return Err(err);
                    }
                    return Ok(response);
                }
                Err(err) => {
                    let mapped = classify(&err);
                    let retry = matches!(mapped, ProxyError::UpstreamConnect) && !last;
                    match reclaim.and_then(|r| r.take()) {
                        Some(source) if retry => {
                            tracing::debug!(upstream = %self.config.name, target = %target.authority, error = %err, "connect refused, trying next target");
                            body = source;
                        }
                        _ => {
                            tracing::debug!(upstream = %self.config.name, target = %target.authority, error = ?err, "upstream request failed");
                            return Err(mapped);
                        }
                    }
                }
            }
        }
        Err(ProxyError::UpstreamConnect)
    }
}

/// Responses hyper parses but the proxy must not relay.
fn refuse_invalid(response: &Response<Incoming>) -> Result<(), ProxyError> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The proxy strips Upgrade and never asks to switch (RFC 9110 §7.8: a server must
        // not switch unasked), so a 101 is invalid and no tunnel is opened.
        return Err(ProxyError::UpstreamInvalid);
    }
    if response.status().as_u16() > 599 {
        // RFC 9110 §15: status codes run from 100 to 599; a client behind a profile must
        // never see anything else.
        return Err(ProxyError::UpstreamInvalid);
    }
    let headers = response.headers();
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        // RFC 9112 §6.3: both framings on one response hints at response splitting and
        // ought to be handled as an error.
        return Err(ProxyError::UpstreamInvalid);
    }
    Ok(())
}

/// A copy of a request that may be sent again: a safe method (RFC 9110 §9.2.1) with no body.
fn replayable(outbound: &OutboundRequest) -> Option<OutboundRequest> {
    let safe = matches!(
        outbound.method,
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    (safe && outbound.body_is_empty()).then(|| OutboundRequest {
        method: outbound.method.clone(),
        path_and_query: outbound.path_and_query.clone(),
        headers: outbound.headers.clone(),
        body: Source::Empty,
        interim: outbound.interim.clone(),
    })
}

/// TCP with the connect timeout and `TCP_NODELAY`, wrapped in TLS for `https://` targets.
fn connector(config: &UpstreamConfig) -> HttpsConnector<HttpConnector> {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    http.enforce_http(false);
    let tls_config = match &config.tls {
        Some(tls) => (*tls.config).clone(),
        // Plain-HTTP upstreams never use it; the connector still wants one.
        None => plain_client_config(),
    };
    let builder = HttpsConnectorBuilder::new()
        .with_tls_config(tls_config)
        .https_or_http();
    let builder = match config.tls.as_ref().and_then(|t| t.server_name.clone()) {
        Some(name) => builder.with_server_name_resolver(FixedServerNameResolver::new(name)),
        None => builder,
    };
    builder.enable_http1().wrap_connector(http)
}

fn plain_client_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
}

fn build_request(
    target: &Target,
    method: &Method,
    path_and_query: &PathAndQuery,
    headers: HeaderMap,
    body: ForwardBody,
) -> Result<Request<ForwardBody>, ProxyError> {
    let uri = Uri::builder()
        .scheme(target.scheme.clone())
        .authority(target.authority.clone())
        .path_and_query(path_and_query.clone())
        .build()
        .map_err(|_| ProxyError::BadRequest("request target cannot be forwarded"))?;
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = uri;
    // The upstream leg is always HTTP/1.1, whatever the client spoke.
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Ok(request)
}

/// The rustls error inside (possibly nested) io errors. `io::Error::source` skips the error
/// it wraps, so the wrapped errors are looked at directly.
fn tls_error(io: &std::io::Error) -> Option<&rustls::Error> {
    let inner = io.get_ref()?;
    match inner.downcast_ref::<std::io::Error>() {
        Some(nested) => tls_error(nested),
        None => inner.downcast_ref::<rustls::Error>(),
    }
}

/// Maps a client error onto the failure the proxy reports.
fn classify(err: &hyper_util::client::legacy::Error) -> ProxyError {
    let mut source: Option<&(dyn StdError + 'static)> = err.source();
    let mut timed_out = false;
    let mut hyper_err = None;
    while let Some(cause) = source {
        if cause.downcast_ref::<BodyTimeout>().is_some() {
            return ProxyError::BodyTimeout;
        }
        if let Some(too_large) = cause.downcast_ref::<BodyTooLarge>() {
            return ProxyError::BodyTooLarge {
                limit: too_large.limit,
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
            if let Some(tls) = tls_error(io) {
                return ProxyError::UpstreamTls(tls.to_string());
            }
        }
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return ProxyError::UpstreamTls(tls.to_string());
        }
        if hyper_err.is_none() {
            hyper_err = cause.downcast_ref::<hyper::Error>();
        }
        source = cause.source();
    }
    if err.is_connect() {
        return if timed_out {
            ProxyError::UpstreamConnectTimeout
        } else {
            ProxyError::UpstreamConnect
        };
    }
    match hyper_err {
        Some(e) if e.is_parse() || e.is_parse_status() => ProxyError::UpstreamInvalid,
        Some(e) if e.is_user() => {
            ProxyError::BadRequest("the request body could not be read from the client")
        }
        Some(e) if e.is_body_write_aborted() => {
            ProxyError::BadRequest("the request body could not be read from the client")
        }
        _ => ProxyError::UpstreamReset,
    }
}
