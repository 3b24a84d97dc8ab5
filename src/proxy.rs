//! The per-request function: every stage of a request, in order, in one place.

use crate::access::{AccessRecord, LoggedBody};
use crate::body::{ResponseBody, Source};
use crate::config::{Config, HostMode};
use crate::headers::{self, RequestIds, X_REQUEST_ID};
use crate::respond::{close_connection, Culprit, ProxyError};
use crate::route::{Route, RouteTable};
use crate::upstream::{OutboundRequest, Upstream};
use http::header::{CONTENT_LENGTH, HOST};
use http::uri::PathAndQuery;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Everything the request path needs, compiled once from a [`Config`].
pub struct Proxy {
    pub routes: RouteTable,
    pub request_body_limit: u64,
    pub access_log: bool,
    pub ids: RequestIds,
}

/// What the listener knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct Connection {
    pub peer: SocketAddr,
    pub https: bool,
}

impl Proxy {
    pub fn new(config: &Config) -> Self {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u.clone())))
            .collect();
        Proxy {
            routes: RouteTable::build(config, &upstreams),
            request_body_limit: config.limits.request_body,
            access_log: config.log.access,
            ids: RequestIds::new(),
        }
    }
}

/// Per-request facts gathered by the stages, used for the response and the access line.
struct Exchange<'a> {
    request_id: HeaderValue,
    route: Option<&'a Route>,
    upstream_status: Option<StatusCode>,
}

/// Handles one request; never fails, every failure becomes a response.
pub async fn handle(
    proxy: Arc<Proxy>,
    conn: Connection,
    request: Request<Incoming>,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let mut exchange = Exchange {
        request_id: headers::request_id(request.headers(), &proxy.ids),
        route: None,
        upstream_status: None,
    };
    let response = match proxy_request(&proxy, conn, request, &mut exchange).await {
        Ok(response) => response,
        Err(err) => proxy_error_response(&err, &exchange),
    };
    let record = proxy.access_log.then(|| AccessRecord {
        started,
        method,
        path,
        route: exchange.route.map(|r| r.name.clone()),
        upstream: exchange.route.map(|r| r.upstream.name().to_string()),
        status: response.status(),
        upstream_status: exchange.upstream_status,
        request_id: exchange.request_id.clone(),
    });
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(parts, LoggedBody::new(body, record)))
}

async fn proxy_request<'a>(
    proxy: &'a Proxy,
    conn: Connection,
    request: Request<Incoming>,
    exchange: &mut Exchange<'a>,
) -> Result<Response<ResponseBody>, ProxyError> {
    // 2. route
    let host = request_host(&request);
    let route = proxy
        .routes
        .find(host.as_ref().and_then(|h| h.to_str().ok()), request.uri().path())
        .ok_or(ProxyError::NoRoute)?;
    exchange.route = Some(route);

    // 3. request checks from headers alone
    check_declared_length(&request, proxy.request_body_limit)?;

    // 5. forward
    let outbound = outbound_request(route, conn, request, &exchange.request_id, proxy.request_body_limit);

    // 6. upstream answers (or fails)
    let upstream_response = route.upstream.send(outbound).await?;
    exchange.upstream_status = Some(upstream_response.status());

    // 9. respond
    Ok(client_response(upstream_response, &exchange.request_id))
}

/// The host the client asked for: the URI authority (HTTP/2, absolute-form) or `Host`.
fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    match request.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => request.headers().get(HOST).cloned(),
    }
}

fn check_declared_length<B>(request: &Request<B>, limit: u64) -> Result<(), ProxyError> {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => Err(ProxyError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

fn outbound_request(
    route: &Route,
    conn: Connection,
    request: Request<Incoming>,
    request_id: &HeaderValue,
    limit: u64,
) -> OutboundRequest {
    let host = request_host(&request);
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers;
    headers::strip_hop_by_hop(&mut headers);
    headers::append_forwarded_for(&mut headers, conn.peer.ip());
    headers::set_forwarded_origin(&mut headers, conn.https, host.as_ref());
    headers::append_via(&mut headers, parts.version);
    headers.insert(&X_REQUEST_ID, request_id.clone());
    if route.upstream.config.host == HostMode::Preserve {
        if let Some(host) = host {
            headers.insert(HOST, host);
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
        body: Source::Client {
            body,
            seen: 0,
            limit,
        },
    }
}

fn client_response(upstream: Response<Incoming>, request_id: &HeaderValue) -> Response<ResponseBody> {
    let (mut parts, body) = upstream.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::append_via(&mut parts.headers, parts.version);
    // The client leg speaks its own version; hyper would echo an HTTP/1.0 upstream's.
    parts.version = Version::HTTP_11;
    parts.headers.insert(&X_REQUEST_ID, request_id.clone());
    Response::from_parts(parts, ResponseBody::Upstream(body))
}

fn proxy_error_response(err: &ProxyError, exchange: &Exchange) -> Response<ResponseBody> {
    let route = exchange.route.map_or("-", |r| r.name.as_str());
    match err.culprit() {
        Culprit::Upstream => tracing::warn!(
            request_id = exchange.request_id.to_str().unwrap_or("-"),
            route,
            kind = err.kind(),
            "upstream failed: {}",
            err.message()
        ),
        Culprit::Client => tracing::debug!(
            request_id = exchange.request_id.to_str().unwrap_or("-"),
            route,
            kind = err.kind(),
            "request refused: {}",
            err.message()
        ),
    }
    let mut response = err.response(&exchange.request_id);
    if matches!(err, ProxyError::BodyTooLarge { .. } | ProxyError::BadRequest(_)) {
        // The request body may be partly unread: the connection cannot carry another request.
        close_connection(&mut response);
    }
    response
}
