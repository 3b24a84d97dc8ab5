//! The per-request function: every stage of a request, in order, in one place.

use crate::access::{AccessRecord, LoggedBody, CLIENT_CLOSED};
use crate::admit;
use crate::body::ResponseBody;
use crate::body::{Budget, ClientBody};
use crate::client::{DroppedLines, FramedTwice, Owner};
use crate::config::{Config, HostMode};
use crate::cut::Cut;
use crate::deviation::{self, DeviationLog, Kind, Record};
use crate::expect::{self, Held};
use crate::headers::{self, RequestIds, X_REQUEST_ID};
use crate::http1::Relay;
use crate::max_forwards::{self, Hops};
use crate::metrics::{Metrics, RouteMetrics};
use crate::normalize::{self, Asked, InspectError, Outcome, RequestFacts, Settings};
use crate::respond::{close_connection, Culprit, ProxyError};
use crate::route::{Route, RouteTable};
use crate::server::ConnSettings;
use crate::upstream::{OutboundRequest, Upstream};
use http::header::{CONTENT_LENGTH, HOST, ORIGIN};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Everything the request path needs, compiled once from a [`Config`].
pub struct Proxy {
    pub routes: RouteTable,
    /// Every upstream of the config, in file order.
    pub upstreams: Vec<Arc<Upstream>>,
    pub request_body_limit: u64,
    pub inspect_limit: usize,
    pub original_status_header: Option<HeaderName>,
    /// Which pages may read the proxy's own answers.
    pub cors: crate::cors::Cors,
    pub access_log: bool,
    pub ids: Arc<RequestIds>,
    pub deviations: Arc<DeviationLog>,
    pub metrics: Arc<Metrics>,
    /// Metrics of requests that matched no route.
    unrouted: RouteMetrics,
    /// Per-connection settings for connections accepted while this config is in force.
    pub settings: ConnSettings,
    /// Certificates for HTTPS listeners; replaced on reload.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The memory request bodies read whole may take (`limits.held_bodies`).
    pub held: Arc<Budget>,
}

/// What the listener knows about the connection a request came in on.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    pub https: bool,
    /// Stands for this client connection while it lasts (see `reuse_after_body`).
    pub owner: Arc<Owner>,
}

impl Proxy {
    /// Compiles `config`. Upstreams whose settings did not change are taken over from
    /// `previous`, with their pooled connections.
    pub fn new(
        config: &Config,
        deviations: Arc<DeviationLog>,
        metrics: Arc<Metrics>,
        previous: Option<&Proxy>,
    ) -> Self {
        // Kept across reloads, so that bodies held under the old config still count.
        let held = match previous {
            Some(previous) => previous.held.clone(),
            None => Arc::new(Budget::new(config.limits.held_bodies)),
        };
        held.set_max(config.limits.held_bodies);
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                previous
                    .and_then(|p| p.routes.upstream_like(u))
                    .unwrap_or_else(|| Arc::new(Upstream::new(u.clone(), held.clone())))
            })
            .collect();
        Proxy {
            routes: RouteTable::build(config, &upstreams, &metrics),
            upstreams,
            unrouted: metrics.route("-"),
            settings: ConnSettings::from_config(config),
            tls: config.server.tls.as_ref().map(|t| t.config.clone()),
            metrics,
            request_body_limit: config.limits.request_body,
            inspect_limit: config.limits.inspect_body,
            original_status_header: config.deviations.original_status_header.clone(),
            cors: config.cors.clone(),
            access_log: config.log.access,
            // Kept across reloads, so ids stay unique for the whole process.
            ids: previous.map_or_else(|| Arc::new(RequestIds::new()), |p| p.ids.clone()),
            deviations,
            held,
        }
    }
}

/// Facts about one request gathered by the stages, for rules, records and the access line.
struct Exchange<'a> {
    started: Instant,
    method: Method,
    /// The request's URI, shared rather than copied (its path is what records use).
    uri: http::Uri,
    /// The path without `;` parameters, when it had any: what routes, checks and rules see.
    bare_path: Option<Box<str>>,
    request_id: HeaderValue,
    route: Option<&'a Route>,
    /// Kept only when a rule of the route looks at request headers.
    request_headers: Option<HeaderMap>,
    upstream_status: Option<StatusCode>,
    /// The client's request body was left unread: its connection cannot carry another request.
    close: bool,
    /// A 100-continue protocol deviation of the upstream, recorded beside any status deviation.
    protocol: Option<Kind>,
    /// The upstream's response head had field lines that were not relayed.
    invalid_header: bool,
    /// The upstream's response had both `Transfer-Encoding` and `Content-Length`.
    framed_twice: bool,
    /// Why the proxy answered itself, for the access line.
    error: Option<String>,
    /// The kind of that answer, for its record.
    cause: Option<&'static str>,
    /// A HEAD sent upstream as GET for the route's body rules; the client gets no body.
    head_as_get: bool,
    /// Conditional, range and preflight requests, whose answers are not `left` records.
    asked: Asked,
    /// The request's `Origin`, kept only when `[cors]` lets pages read the proxy's answers
    /// (boxed: every request's state would carry its room).
    origin: Option<Box<HeaderValue>>,
}

/// Handles one request; never fails, every failure becomes a response. `relay`: where the
/// upstream's interim responses go, for a client that can take them.
#[allow(clippy::manual_async_fn)]
pub fn handle(
    proxy: Arc<Proxy>,
    conn: Connection,
    request: Request<ClientBody>,
    relay: Option<Arc<Relay>>,
) -> impl Future<Output = Result<Response<LoggedBody>, Infallible>> {
    // Not an `async fn`, for the reason given at `forward`.
    async move {
        let in_flight = proxy.metrics.in_flight();
        // Built in place: a separate `Exchange` moved into the `Call` costs a copy of it.
        let mut call = Call {
            proxy: &proxy,
            answered: false,
            exchange: Exchange {
                started: Instant::now(),
                method: request.method().clone(),
                uri: request.uri().clone(),
                bare_path: None,
                request_id: headers::request_id(request.headers(), &proxy.ids),
                route: None,
                request_headers: None,
                upstream_status: None,
                close: false,
                protocol: None,
                invalid_header: false,
                framed_twice: false,
                error: None,
                cause: None,
                head_as_get: false,
                asked: Asked::default(),
                origin: proxy
                    .cors
                    .is_on()
                    .then(|| request.headers().get(ORIGIN).cloned().map(Box::new))
                    .flatten(),
            },
        };
        let exchange = &mut call.exchange;
        // 1-6: route, checks, forward, and the upstream's answer (or the proxy's own).
        let (mut response, source) = match forward(&proxy, conn, request, relay, exchange).await {
            Ok(response) => (response, deviation::Source::Upstream),
            // No one reads an answer; `call`, not answered, logs the request as 499 as it goes.
            Err(ProxyError::ClientGone) => return Ok(unread()),
            Err(err) => {
                exchange.error = Some(err.message());
                exchange.cause = Some(err.kind());
                let response = error_response(&err, exchange, &proxy.metrics);
                (response, deviation::Source::Proxy)
            }
        };
        // 7-8: normalize and record.
        let mut made = (source, response.status());
        if let Some(route) = exchange.route {
            if let Err(resume) = normalize_head(&proxy, route, &mut response, source, exchange) {
                // Boxed: only responses whose rules need the body pay for the reading state.
                // (A helper returning `Either<Ready<_>, BoxFuture<_>>` for this and the same
                // step in `normalize_body` cost 180 instructions more per request.)
                let reading = normalize_body(&proxy, route, response, resume, source, exchange);
                (response, made) = Box::pin(reading).await;
            }
        }
        if made.0 == deviation::Source::Proxy {
            let (origin, own) = (
                exchange.origin.as_deref(),
                proxy.original_status_header.as_ref(),
            );
            proxy.cors.own_answer(response.headers_mut(), origin, own);
        }
        if let Some(route) = exchange.route {
            let invalid = exchange.invalid_header.then_some(Kind::InvalidHeader);
            let framing = exchange.framed_twice.then_some(Kind::ConflictingFraming);
            for kind in [exchange.protocol, invalid, framing].into_iter().flatten() {
                let status = response.status();
                protocol_record(&proxy.deviations, exchange, route, kind, made, status);
            }
        }
        if exchange.head_as_get {
            // RFC 9110 §9.3.2: the GET's status and fields, without its body.
            *response.body_mut() = ResponseBody::Empty;
        }
        if exchange.close {
            close_connection(&mut response);
        }
        // 9: respond, streaming.
        let metrics = exchange.route.map_or(&proxy.unrouted, |r| &r.metrics);
        let elapsed = exchange.started.elapsed();
        metrics.request(&exchange.method, response.status().as_u16(), elapsed);
        let record = proxy
            .access_log
            .then(|| access_record(exchange, response.status()));
        let (parts, body) = response.into_parts();
        let cut = (exchange.route)
            .filter(|_| body.may_fail())
            .map(|route| cut(&proxy, route, exchange, parts.status));
        let body = LoggedBody::new(body, record)
            .with_in_flight(in_flight)
            .with_cut(cut);
        call.answered = true;
        Ok(Response::from_parts(parts, body))
    }
}

/// The answer to a client that went away during its body: empty, closing the connection,
/// should its client still be there. Out of line, so that the request's state does not keep
/// room for it.
#[cold]
#[inline(never)]
fn unread() -> Response<LoggedBody> {
    let mut response = Response::new(LoggedBody::new(ResponseBody::Empty, None));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    close_connection(&mut response);
    response
}

/// What the record of a body the upstream cuts short will say. Out of line: only responses
/// whose body is not already whole in the buffer pay for it.
#[inline(never)]
fn cut(proxy: &Proxy, route: &Route, exchange: &Exchange, status: StatusCode) -> Box<Cut> {
    Box::new(Cut {
        log: proxy.deviations.clone(),
        metrics: proxy.metrics.clone(),
        route: route.name.clone(),
        upstream: route.upstream.clone(),
        method: exchange.method.clone(),
        uri: exchange.uri.clone(),
        request_id: exchange.request_id.clone(),
        upstream_status: exchange.upstream_status.unwrap_or(status),
        status,
        started: exchange.started,
    })
}

/// A request in the handler, and the access line of one whose client went away before its
/// response was ready: the handler is dropped then (an HTTP/1.1 hang-up, an HTTP/2 stream
/// reset), and this with it.
struct Call<'a> {
    proxy: &'a Proxy,
    exchange: Exchange<'a>,
    answered: bool,
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.abandoned();
        }
    }
}

impl Call<'_> {
    /// Counted and logged as NGINX logs it, 499, so that every request has its line.
    #[cold]
    fn abandoned(&self) {
        let exchange = &self.exchange;
        let metrics = exchange.route.map_or(&self.proxy.unrouted, |r| &r.metrics);
        metrics.request(&exchange.method, CLIENT_CLOSED, exchange.started.elapsed());
        if self.proxy.access_log {
            let status = StatusCode::from_u16(CLIENT_CLOSED).unwrap_or(StatusCode::BAD_REQUEST);
            let unsent = "the connection ended before the response was ready";
            access_record(exchange, status).log(0, false, Some(unsent));
        }
    }
}

// Written as a function returning an `async move` block rather than as an `async fn`: an
// `async fn` keeps its arguments twice in its state (once as passed, once as moved into its
// body), and this state is copied whenever the request's future moves.
#[allow(clippy::manual_async_fn)]
fn forward<'a, 'e>(
    proxy: &'a Proxy,
    conn: Connection,
    request: Request<ClientBody>,
    relay: Option<Arc<Relay>>,
    exchange: &'e mut Exchange<'a>,
) -> impl Future<Output = Result<Response<ResponseBody>, ProxyError>> + use<'a, 'e> {
    async move {
        // 2-3. route and checks, from the request head alone: with `Expect: 100-continue`, a
        // refusal goes out before any 100 and the body is never asked for.
        let route = match admit(proxy, &request, exchange) {
            Ok(route) => route,
            Err(err) => {
                exchange.close = !Box::pin(admit::settle_unread(request)).await;
                return Err(err);
            }
        };
        // 4-5. the request body check, and the request that goes upstream. In a block of its
        // own, so that what it leaves behind takes no room while the upstream answers.
        let (mut outbound, body, held) = {
            let (parts, body) = request.into_parts();
            let limits = (proxy.request_body_limit, proxy.settings.body_timeout);
            // The check reads the body, so the client gets its 100 first.
            let (body, validated) = if admit::reads_body(route, &parts.headers, &body) {
                // Boxed: only routes that validate JSON bodies pay for the reading state.
                match Box::pin(admit::validate_json(
                    body,
                    normalize::coding(&parts.headers),
                    limits,
                ))
                .await
                {
                    Ok(data) => (data, true),
                    Err(err) => {
                        let read = matches!(
                            err,
                            ProxyError::InvalidJson(_) | ProxyError::UnreadableCoding
                        );
                        exchange.close = !read;
                        return Err(err);
                    }
                }
            } else {
                (admit::client_source(body, limits), false)
            };
            let version = parts.version;
            exchange.head_as_get = parts.method == Method::HEAD
                && route
                    .rules
                    .head_reads_body(exchange.bare_path.as_deref().unwrap_or(parts.uri.path()));
            let mut outbound = outbound_request(route, conn, parts, &exchange.request_id, relay);
            if exchange.head_as_get {
                outbound.method = Method::GET;
            }
            let held = expect::plan(&mut outbound, &body, route, version, validated);
            (outbound, body, held)
        };

        // 6. upstream answers (or fails)
        let sent = Instant::now();
        let result = route.upstream.send(&mut outbound, body).await;
        route.metrics.upstream(sent.elapsed());
        let interim = &outbound.interim;
        exchange.protocol = expect::deviation(interim, held);
        if interim.on_final() == Held::Withheld {
            // The client was never asked for its body; it may still be sending some of it.
            exchange.close = true;
        }
        let (mut parts, body) = result?.into_parts();
        exchange.upstream_status = Some(parts.status);
        if let Some(dropped) = parts.extensions.remove::<DroppedLines>() {
            exchange.invalid_header = true;
            dropped_lines_warning(exchange, route, &dropped);
        }
        if parts.extensions.remove::<FramedTwice>().is_some() {
            exchange.framed_twice = true;
            tracing::warn!(
                request_id = exchange.request_id.to_str().unwrap_or("-"),
                route = &*route.name,
                upstream = route.upstream.name(),
                "upstream response has both Transfer-Encoding and Content-Length: its body was read as chunked and the length dropped (RFC 9112 §6.3); the connection is not reused"
            );
        }
        // Looked at only for the few statuses it can excuse, so other answers pay nothing.
        if route.contract && Asked::may_excuse(parts.status) {
            exchange.asked = Asked::of(&exchange.method, &outbound.headers);
        }
        let body = ResponseBody::upstream(body)
            .await
            .map_err(ProxyError::body_failed)?;
        // Without a prefix only a redirect or a create can name the upstream's own address.
        if route.forwarded_prefix.is_some() || points_somewhere(parts.status) {
            restore_prefix(route, &outbound, &mut parts.headers);
        }
        let own = proxy.original_status_header.as_ref();
        Ok(client_response(parts, body, &exchange.request_id, own))
    }
}

/// The record says that lines were dropped; the log says which, by number only, since a
/// line may hold a secret.
fn dropped_lines_warning(exchange: &Exchange, route: &Route, dropped: &DroppedLines) {
    tracing::warn!(
        request_id = exchange.request_id.to_str().unwrap_or("-"),
        route = &*route.name,
        upstream = route.upstream.name(),
        "upstream response head has lines that are not valid HTTP (lines {dropped}, the status line being 1); they were not relayed (a status line keeps its code and gets the standard reason phrase)"
    );
}

/// Routes the request and applies the header-level decisions: the route's checks and the
/// declared body size.
fn admit<'a>(
    proxy: &'a Proxy,
    request: &Request<ClientBody>,
    exchange: &mut Exchange<'a>,
) -> Result<&'a Route, ProxyError> {
    let host = request_host(request);
    if host
        .as_ref()
        .is_some_and(|h| !admit::host_is_valid(h.as_bytes()))
    {
        return Err(ProxyError::BadRequest(
            "the Host is not a valid host[:port] (no userinfo, path, comma or spaces)",
        ));
    }
    if request.version() == Version::HTTP_2 && names_two_hosts(request) {
        // RFC 9113 §8.3.1: a server should treat such a request as malformed; routing by one
        // while the service reads the other is how a request reaches a host it should not.
        return Err(ProxyError::BadRequest(
            "the Host field names another host than :authority",
        ));
    }
    // A 2xx to CONNECT means a tunnel is open (RFC 9110 §9.3.6); a reverse proxy opens none.
    if request.method() == Method::CONNECT {
        return Err(ProxyError::BadRequest(
            "CONNECT is not supported: this is a reverse proxy, it opens no tunnels",
        ));
    }
    match admit::path_shape(request.uri().path()) {
        admit::PathShape::Plain => {}
        admit::PathShape::Parameters => {
            exchange.bare_path = Some(admit::without_parameters(request.uri().path()));
        }
        admit::PathShape::Ambiguous => {
            return Err(ProxyError::BadRequest(
                "the path has dot-segments, empty segments or needless escapes; send it normalized",
            ))
        }
    }
    let path = exchange
        .bare_path
        .as_deref()
        .unwrap_or(request.uri().path());
    let route = proxy
        .routes
        .find(host.as_ref().and_then(|h| h.to_str().ok()), path)
        .ok_or(ProxyError::NoRoute)?;
    exchange.route = Some(route);
    // Limits are checked once routed, so that the route's profile normalizes the answer.
    let uri_bytes = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if uri_bytes > proxy.settings.max_uri_bytes {
        return Err(ProxyError::UriTooLong);
    }
    if admit::headers_too_large(request.headers(), proxy.settings.max_header_bytes) {
        return Err(ProxyError::HeadersTooLarge);
    }
    if route.rules.needs_request_headers() {
        exchange.request_headers = Some(request.headers().clone());
    }
    let (method, headers) = (request.method(), request.headers());
    if let Some(check) = route
        .checks
        .iter()
        .find(|c| c.refuses(method, path, headers))
    {
        return Err(ProxyError::Refused(check.clone()));
    }
    check_declared_length(request, proxy.request_body_limit)?;
    if max_forwards::hops(method, headers) == Hops::Last {
        return Err(ProxyError::LastHop(max_forwards::echo(request)));
    }
    Ok(route)
}

/// An HTTP/2 request whose `Host` field names another host than its `:authority`.
fn names_two_hosts<B>(request: &Request<B>) -> bool {
    let (Some(authority), Some(host)) = (request.uri().authority(), request.headers().get(HOST))
    else {
        return false;
    };
    host.to_str().map_or(true, |host| {
        !crate::redirect::same_authority(authority.as_str(), host)
    })
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers().get(HOST).cloned(),
    }
}

fn check_declared_length(request: &Request<ClientBody>, limit: u64) -> Result<(), ProxyError> {
    let declared = match request.body() {
        // The length the head's framing gave (RFC 9112 §6.3), read once already.
        ClientBody::Http1(body) => http_body::Body::size_hint(body).exact(),
        _ => request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok()),
    };
    match declared {
        Some(length) if length > limit => Err(ProxyError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

fn outbound_request(
    route: &Route,
    conn: Connection,
    parts: http::request::Parts,
    request_id: &HeaderValue,
    relay: Option<Arc<Relay>>,
) -> OutboundRequest {
    // RFC 9112 §3.2.2: the authority of an absolute-form target (and HTTP/2's :authority)
    // replaces any Host field; otherwise the client's Host is forwarded as it is.
    let authority = parts
        .uri
        .authority()
        .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
    let host = authority
        .clone()
        .or_else(|| parts.headers.get(HOST).cloned());
    let mut headers = parts.headers;
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut headers);
    }
    if route.rules.needs_body() {
        headers::narrow_accept_encoding(&mut headers);
    }
    max_forwards::forward(max_forwards::hops(&parts.method, &headers), &mut headers);
    let present = headers::strip_hop_by_hop(&mut headers);
    let hop = headers::ThisHop {
        client: conn.peer.ip(),
        https: conn.https,
        host: host.as_ref(),
        received: parts.version,
        request_id,
    };
    let added = headers::forwarding(&mut headers, present, &hop);
    if let Some(prefix) = &route.forwarded_prefix {
        // Inserted rather than added after the fields: only such routes pay for it.
        headers.insert(&headers::X_FORWARDED_PREFIX, prefix.clone());
    }
    if route.upstream.config.host == HostMode::Preserve {
        if let Some(authority) = authority {
            headers.insert(HOST, authority);
        }
    }
    let original = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    OutboundRequest {
        method: parts.method,
        path_and_query: route.upstream_path(&original),
        headers,
        added,
        interim: expect::Interim::new(false, relay),
        owner: conn.owner,
    }
}

/// A status whose `Location` sends the client somewhere: a redirect, or a create's new item.
fn points_somewhere(status: StatusCode) -> bool {
    status.is_redirection() || status == StatusCode::CREATED
}

/// `Location` under a route that strips its prefix, and on any route an absolute URL on a
/// target's own address, which the client cannot reach (see [`crate::redirect`]).
fn restore_prefix(route: &Route, outbound: &OutboundRequest, headers: &mut HeaderMap) {
    let host = outbound.headers.get(HOST).and_then(|h| h.to_str().ok());
    let prefix = match &route.forwarded_prefix {
        Some(prefix) => prefix.to_str().unwrap_or_default(),
        None => "",
    };
    let targets = &route.upstream.config.targets;
    // A URL names a target only with the target's scheme: `https://` on an HTTP target's
    // address is another server (a service sending its client to HTTPS).
    let is_target = |scheme: Option<&str>, authority: &str| {
        targets.iter().any(|t| {
            scheme.is_none_or(|s| s.eq_ignore_ascii_case(t.scheme.as_str()))
                && crate::redirect::same_authority(t.authority.as_str(), authority)
        })
    };
    crate::redirect::restore_prefix(headers, prefix, host, is_target);
}

fn client_response(
    mut parts: http::response::Parts,
    body: ResponseBody,
    request_id: &HeaderValue,
    original_status: Option<&HeaderName>,
) -> Response<ResponseBody> {
    let present = headers::strip_response(&mut parts.headers, original_status);
    if parts.status == StatusCode::NO_CONTENT {
        // RFC 9110 §8.6: a 204 has no Content-Length; over HTTP/2 a stray one is a stream
        // error at the client (RFC 9113 §8.1.1).
        parts.headers.remove(CONTENT_LENGTH);
    }
    headers::append_via(&mut parts.headers, parts.version, present.via);
    if present.allow_origin {
        crate::cors::expose_own_fields(&mut parts.headers, original_status);
    }
    // The client leg speaks its own version; hyper would echo an HTTP/1.0 upstream's.
    parts.version = Version::HTTP_11;
    parts.headers.insert(&X_REQUEST_ID, request_id.clone());
    Response::from_parts(parts, body)
}

fn error_response(
    err: &ProxyError,
    exchange: &Exchange,
    metrics: &Metrics,
) -> Response<ResponseBody> {
    let route = exchange.route.map_or("-", |r| &*r.name);
    let request_id = exchange.request_id.to_str().unwrap_or("-");
    match err.culprit() {
        Culprit::Upstream => {
            if let Some(route) = exchange.route {
                metrics.upstream_error(route.upstream.name(), err.kind());
            }
            tracing::warn!(
                request_id,
                route,
                kind = err.kind(),
                "upstream failed: {}",
                err.message()
            )
        }
        Culprit::Client => {
            let check = match err {
                ProxyError::Refused(check) => Some(&*check.name),
                _ => None,
            };
            metrics.answered(route, err.kind(), check);
            tracing::debug!(
                request_id,
                route,
                kind = err.kind(),
                "request refused: {}",
                err.message()
            )
        }
    }
    let mut response = err.response(&exchange.request_id);
    if matches!(
        err,
        ProxyError::BodyTooLarge { .. } | ProxyError::BadRequest(_) | ProxyError::BodyTimeout
    ) {
        // The request body may be partly unread: the connection cannot carry another request.
        close_connection(&mut response);
    }
    response
}

/// What the rules look at of the request, and how the route applies them.
fn facts_and_settings<'a>(
    proxy: &'a Proxy,
    route: &'a Route,
    exchange: &'a Exchange<'_>,
) -> (RequestFacts<'a>, Settings<'a>) {
    let request = RequestFacts {
        method: &exchange.method,
        path: exchange.bare_path.as_deref().unwrap_or(exchange.uri.path()),
        headers: exchange.request_headers.as_ref(),
        head_as_get: exchange.head_as_get,
        asked: exchange.asked,
    };
    let settings = Settings {
        rules: &route.rules,
        mode: route.mode,
        contract: route.contract,
        inspect_limit: proxy.inspect_limit,
        original_status_header: proxy.original_status_header.as_ref(),
    };
    (request, settings)
}

/// 7-8 for a response whose rules need no body, in place and without waiting (and without
/// making the state of an `async fn` on every request). `Err`: the candidate whose rule needs
/// the body.
fn normalize_head(
    proxy: &Proxy,
    route: &Route,
    response: &mut Response<ResponseBody>,
    source: deviation::Source,
    exchange: &Exchange<'_>,
) -> Result<(), usize> {
    let (request, settings) = facts_and_settings(proxy, route, exchange);
    let outcome = normalize::normalize_head(&request, response, &settings)?;
    recorded(proxy, route, source, exchange, outcome);
    Ok(())
}

/// 7-8 for a response whose rules need its body, going on from candidate `resume`.
/// Normalizes a response whose rules read its body. Returns the response and who made it,
/// with its status before the rules: the upstream, or the proxy when the upstream's body
/// failed while it was read.
async fn normalize_body(
    proxy: &Proxy,
    route: &Route,
    response: Response<ResponseBody>,
    resume: usize,
    source: deviation::Source,
    exchange: &mut Exchange<'_>,
) -> (Response<ResponseBody>, (deviation::Source, StatusCode)) {
    let produced = response.status();
    let (request, settings) = facts_and_settings(proxy, route, exchange);
    let err = match normalize::normalize_body(&request, response, resume, &settings).await {
        Ok((response, outcome, inspected)) => {
            // A HEAD answered as such has no body to read: nothing was missed.
            let bodiless = exchange.method == Method::HEAD && !exchange.head_as_get;
            if !inspected && !bodiless {
                route.metrics.body_not_inspected();
            }
            recorded(proxy, route, source, exchange, outcome);
            return (response, (source, produced));
        }
        Err(InspectError::Upstream(err)) => ProxyError::body_failed(err),
    };
    // The upstream failed while its body was being inspected; nothing was sent yet, so the
    // client gets an honest proxy error, itself normalized.
    exchange.error = Some(err.message());
    exchange.cause = Some(err.kind());
    let mut response = error_response(&err, exchange, &proxy.metrics);
    let made = (deviation::Source::Proxy, response.status());
    match normalize_head(proxy, route, &mut response, made.0, exchange) {
        Ok(()) => (response, made),
        Err(resume) => {
            let reading = normalize_body(proxy, route, response, resume, made.0, exchange);
            Box::pin(reading).await
        }
    }
}

/// Writes the record of a deviation, if the exchange is one.
fn recorded(
    proxy: &Proxy,
    route: &Route,
    source: deviation::Source,
    exchange: &Exchange<'_>,
    outcome: Option<Outcome>,
) {
    if let Some(outcome) = outcome {
        proxy
            .deviations
            .write(&record(exchange, route, source, &outcome));
    }
}

/// The record borrows the exchange's text: nothing is copied or allocated for it.
fn record<'a>(
    exchange: &'a Exchange,
    route: &'a Route,
    source: deviation::Source,
    outcome: &'a Outcome,
) -> Record<'a> {
    Record {
        ts: deviation::Timestamp::now(),
        // Ids are printable ASCII (made here, or a client's checked by `is_usable_id`), so
        // the UTF-8 check passes; it reads words where `to_str` tests byte by byte.
        request_id: Cow::Borrowed(
            std::str::from_utf8(exchange.request_id.as_bytes()).unwrap_or(""),
        ),
        route: Cow::Borrowed(&route.name),
        rule: outcome.rule.as_deref().map(Cow::Borrowed),
        action: outcome.action,
        kind: Kind::Status,
        source,
        cause: match source {
            deviation::Source::Proxy => exchange.cause.map(Cow::Borrowed),
            deviation::Source::Upstream => None,
        },
        method: exchange.method.clone(),
        path: Cow::Borrowed(exchange.uri.path()),
        upstream: Cow::Borrowed(route.upstream.name()),
        upstream_status: outcome.upstream_status.as_u16(),
        status: outcome.status.as_u16(),
        would_status: outcome.would_status.map(|s| s.as_u16()),
        body_inspected: outcome.body_inspected,
        // Whole microseconds: finer digits are noise, and a short number is cheaper to write.
        // Through u64 (enough for 584,000 years), as a u128 converts by a slow library call.
        duration_ms: exchange.started.elapsed().as_micros() as u64 as f64 / 1000.0,
    }
}

/// Writes a record of the upstream's 100-continue misbehaviour; `made` is who made the
/// response and its status before the rules, `status` what the client got. When the proxy
/// answered (the upstream never did), its own status stands in for the upstream's.
fn protocol_record(
    log: &DeviationLog,
    exchange: &Exchange,
    route: &Route,
    kind: Kind,
    made: (deviation::Source, StatusCode),
    status: StatusCode,
) {
    let (source, produced) = made;
    let upstream_status = match source {
        deviation::Source::Upstream => exchange.upstream_status.unwrap_or(produced),
        deviation::Source::Proxy => produced,
    };
    let outcome = Outcome {
        rule: None,
        action: deviation::Action::Left,
        upstream_status,
        status,
        would_status: None,
        body_inspected: false,
    };
    log.write(&Record {
        kind,
        ..record(exchange, route, source, &outcome)
    });
}

fn access_record(exchange: &Exchange, status: StatusCode) -> AccessRecord {
    AccessRecord {
        started: exchange.started,
        method: exchange.method.clone(),
        path: exchange.uri.path().to_string(),
        route: exchange.route.map(|r| r.name.to_string()),
        upstream: exchange.route.map(|r| r.upstream.name().to_string()),
        status,
        upstream_status: exchange.upstream_status,
        request_id: exchange.request_id.clone(),
        error: exchange.error.clone(),
    }
}
