//! Every response the proxy makes itself: one enum, each case mapped to a status and a reason.

use crate::body::ResponseBody;
use crate::headers::{X_REQUEST_ID, X_RESTATUS_SOURCE};
use crate::max_forwards;
use crate::rules::check::Check;
use crate::wire::BodyError;
use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};
use std::sync::Arc;

/// Why the proxy answered instead of the upstream, and who caused it.
#[derive(Debug, Clone)]
pub enum ProxyError {
    /// No route matches the request's host and path.
    NoRoute,
    /// A `[[checks]]` entry refused the request from its head.
    Refused(Arc<Check>),
    /// `validate_json` is on and the JSON request body does not parse.
    InvalidJson(String),
    /// `validate_json` is on and the body is in a content coding restatus cannot read.
    UnreadableCoding,
    /// The declared or streamed request body is larger than `limits.request_body`.
    BodyTooLarge { limit: u64 },
    /// The request target is longer than `limits.uri`.
    UriTooLong,
    /// The request's header section is larger than `server.max_header_bytes`, or has more
    /// than `admit::MAX_HEADER_FIELDS` fields.
    HeadersTooLarge,
    /// The client stopped sending its request body for longer than `server.body_timeout`.
    BodyTimeout,
    /// The request is malformed in a way the proxy refuses to forward.
    BadRequest(&'static str),
    /// The client went away while its body was read: an HTTP/2 stream reset, a connection
    /// reset. Nobody reads an answer; the access line says 499.
    ClientGone,
    /// Every target refused the connection or could not be reached.
    UpstreamConnect,
    /// The connection to the upstream was not made within `connect_timeout`.
    UpstreamConnectTimeout,
    /// The upstream did not send a response head within `response_timeout`.
    UpstreamTimeout,
    /// The upstream stopped sending its response body for its `response_timeout`, while a
    /// rule was reading it (so nothing had reached the client).
    UpstreamStalled(std::time::Duration),
    /// The upstream closed or reset the connection before its response was complete (before
    /// its head, or before the client got any of its body).
    UpstreamReset,
    /// The upstream sent something that is not a valid HTTP response; says what was wrong.
    UpstreamInvalid(&'static str),
    /// The TLS handshake with the upstream failed (its certificate did not verify, ...).
    UpstreamTls(String),
    /// Reading the request body whole would pass `limits.held_bodies`, the memory all such
    /// bodies may take together.
    BodiesHeld { limit: u64 },
    /// The target had its `max_connections` open and none came free within `queue_timeout`.
    UpstreamBusy {
        max: usize,
        waited: std::time::Duration,
    },
    /// A TRACE or OPTIONS request with `Max-Forwards: 0`: restatus answers it as the final
    /// recipient (RFC 9110 §7.6.2), with a TRACE's echo. Not a failure, but answered the same
    /// way: by restatus, without the upstream.
    LastHop(Option<Bytes>),
}

/// Which side a failure came from, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Culprit {
    Client,
    Upstream,
}

impl ProxyError {
    /// What a failed read of the client's request body means: the client gone (a reset
    /// connection or HTTP/2 stream), or a body it sent wrong (bad chunked framing, or a
    /// close before its end, which a client that half-closes may still read the answer to).
    pub fn client_body(err: &(dyn std::error::Error + 'static)) -> ProxyError {
        let reset = match err.downcast_ref::<BodyError>() {
            Some(BodyError::Io(_)) => true,
            Some(_) => false,
            // An HTTP/2 body fails only when its stream or connection ends early.
            None => err.downcast_ref::<hyper::Error>().is_some(),
        };
        match reset {
            true => ProxyError::ClientGone,
            false => ProxyError::BadRequest("the request body could not be read from the client"),
        }
    }

    /// The upstream's response body failed before anything of it reached the client.
    pub fn body_failed(err: BodyError) -> ProxyError {
        match err {
            BodyError::Invalid => ProxyError::UpstreamInvalid("malformed body framing"),
            BodyError::Io(_) | BodyError::Incomplete => ProxyError::UpstreamReset,
            BodyError::Stalled(silence) => ProxyError::UpstreamStalled(silence),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::LastHop(_) => StatusCode::OK,
            ProxyError::Refused(check) => check.then.status,
            ProxyError::InvalidJson(_) => StatusCode::BAD_REQUEST,
            // RFC 9110 §15.5.16: 415 for a content coding the server does not accept.
            ProxyError::UnreadableCoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequest(_) | ProxyError::ClientGone => StatusCode::BAD_REQUEST,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UpstreamConnect
            | ProxyError::UpstreamReset
            | ProxyError::UpstreamInvalid(_)
            | ProxyError::UpstreamTls(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamConnectTimeout
            | ProxyError::UpstreamTimeout
            | ProxyError::UpstreamStalled(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::UpstreamBusy { .. } | ProxyError::BodiesHeld { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn culprit(&self) -> Culprit {
        match self {
            ProxyError::NoRoute
            | ProxyError::Refused(_)
            | ProxyError::InvalidJson(_)
            | ProxyError::UnreadableCoding
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::BadRequest(_)
            | ProxyError::ClientGone
            | ProxyError::BodyTimeout
            | ProxyError::UriTooLong
            | ProxyError::HeadersTooLarge
            | ProxyError::BodiesHeld { .. }
            | ProxyError::LastHop(_) => Culprit::Client,
            _ => Culprit::Upstream,
        }
    }

    /// A short machine-friendly kind, used in logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no_route",
            ProxyError::Refused(_) => "check",
            ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::UnreadableCoding => "unreadable_coding",
            ProxyError::BodyTooLarge { .. } => "body_too_large",
            ProxyError::BadRequest(_) => "bad_request",
            ProxyError::ClientGone => "client_closed",
            ProxyError::BodyTimeout => "body_timeout",
            ProxyError::UriTooLong => "uri_too_long",
            ProxyError::HeadersTooLarge => "headers_too_large",
            ProxyError::UpstreamConnect => "connect",
            ProxyError::UpstreamConnectTimeout => "connect_timeout",
            ProxyError::UpstreamTimeout | ProxyError::UpstreamStalled(_) => "timeout",
            ProxyError::UpstreamReset => "reset",
            ProxyError::UpstreamInvalid(_) => "invalid_response",
            ProxyError::UpstreamTls(_) => "tls",
            ProxyError::UpstreamBusy { .. } => "queue_timeout",
            ProxyError::BodiesHeld { .. } => "held_bodies",
            ProxyError::LastHop(_) => "max_forwards",
        }
    }

    pub fn message(&self) -> String {
        match self {
            ProxyError::NoRoute => "no route matches this host and path".into(),
            ProxyError::Refused(check) => refusal_message(check),
            ProxyError::InvalidJson(why) => format!("request body is not valid JSON: {why}"),
            ProxyError::UnreadableCoding => {
                "the JSON body's Content-Encoding cannot be read to check it: send it as gzip or uncoded".into()
            }
            ProxyError::BodyTooLarge { limit } => {
                format!("request body is larger than the limit of {limit} bytes")
            }
            ProxyError::BadRequest(why) => (*why).into(),
            ProxyError::ClientGone => "the client went away during its request body".into(),
            ProxyError::BodyTimeout => "the request body did not arrive in time".into(),
            ProxyError::UriTooLong => "the request target is too long".into(),
            ProxyError::HeadersTooLarge => "the request headers are too large".into(),
            ProxyError::UpstreamConnect => {
                "upstream refused the connection or is unreachable".into()
            }
            ProxyError::UpstreamConnectTimeout => "upstream connection timed out".into(),
            ProxyError::UpstreamTimeout => "upstream did not answer in time".into(),
            ProxyError::UpstreamStalled(silence) => format!(
                "upstream stopped sending its response body for {silence:?}"
            ),
            ProxyError::UpstreamReset => {
                "upstream closed the connection before sending a complete response".into()
            }
            ProxyError::UpstreamInvalid(why) => {
                format!("upstream sent an invalid response: {why}")
            }
            ProxyError::UpstreamTls(why) => format!("TLS with the upstream failed: {why}"),
            ProxyError::UpstreamBusy { max, waited } => format!(
                "upstream has its max_connections ({max}) busy, and none came free within {}",
                crate::config::shown(*waited)
            ),
            ProxyError::LastHop(_) => {
                "Max-Forwards is 0: answered by restatus, not forwarded (RFC 9110 §7.6.2)".into()
            }
            ProxyError::BodiesHeld { limit } => format!(
                "restatus holds as many request bodies as it may ({limit} bytes, limits.held_bodies); send again shortly"
            ),
        }
    }

    pub fn response(&self, request_id: &HeaderValue) -> Response<ResponseBody> {
        match self {
            ProxyError::Refused(check) => check_response(check, request_id),
            ProxyError::LastHop(echo) => {
                let mut response = proxy_response(StatusCode::OK, "", request_id);
                max_forwards::answer(echo.as_ref(), &mut response);
                response
            }
            ProxyError::UpstreamBusy { .. } | ProxyError::BodiesHeld { .. } => {
                let mut response = proxy_response(self.status(), &self.message(), request_id);
                // RFC 9110 §10.2.3: how long to wait before trying again. The queue moves as
                // requests finish, so a second is a fair guess, and it keeps retrying clients
                // (urllib3, browsers' fetch retries) from coming straight back.
                let wait = HeaderValue::from_static("1");
                response.headers_mut().insert(RETRY_AFTER, wait);
                response
            }
            _ => proxy_response(self.status(), &self.message(), request_id),
        }
    }
}

/// A JSON response `{"error": "...", "request_id": "..."}` tagged as the proxy's own.
pub fn proxy_response(
    status: StatusCode,
    message: &str,
    request_id: &HeaderValue,
) -> Response<ResponseBody> {
    let body = serde_json::json!({
        "error": message,
        "request_id": request_id.to_str().unwrap_or(""),
    })
    .to_string();
    let mut response = Response::new(ResponseBody::full(body.clone()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    headers.insert(&X_RESTATUS_SOURCE, HeaderValue::from_static("proxy"));
    headers.insert(&X_REQUEST_ID, request_id.clone());
    response
}

fn refusal_message(check: &Check) -> String {
    match &check.description {
        Some(description) => format!("refused by check `{}`: {description}", check.name),
        None => format!("refused by check `{}`", check.name),
    }
}

/// A check's refusal: its own `then.body` and headers when it has them, else the usual JSON.
fn check_response(check: &Check, request_id: &HeaderValue) -> Response<ResponseBody> {
    let then = &check.then;
    let mut response = proxy_response(then.status, &refusal_message(check), request_id);
    if let Some((body, content_type)) = &then.body {
        let headers = response.headers_mut();
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        match content_type {
            Some(value) => headers.insert(CONTENT_TYPE, value.clone()),
            None => headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain")),
        };
        *response.body_mut() = ResponseBody::full(body.clone());
    }
    for name in &then.remove_headers {
        response.headers_mut().remove(name);
    }
    for (name, value) in &then.set_headers {
        response.headers_mut().insert(name, value.clone());
    }
    response
}

/// Marks a response as the last on its connection (used when a request body was left unread).
pub fn close_connection<B>(response: &mut Response<B>) {
    response
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_failure() {
        let cases = [
            (ProxyError::NoRoute, 404),
            (ProxyError::BodyTooLarge { limit: 1 }, 413),
            (ProxyError::UpstreamConnect, 502),
            (ProxyError::UpstreamReset, 502),
            (ProxyError::UpstreamInvalid("x"), 502),
            (ProxyError::UpstreamTimeout, 504),
            (ProxyError::UpstreamConnectTimeout, 504),
            (
                ProxyError::UpstreamBusy {
                    max: 1,
                    waited: std::time::Duration::ZERO,
                },
                503,
            ),
        ];
        for (err, code) in cases {
            assert_eq!(err.status().as_u16(), code, "{err:?}");
            let response = err.response(&HeaderValue::from_static("id-1"));
            assert_eq!(response.headers()["x-restatus-source"], "proxy");
            let retry = response.headers().get(RETRY_AFTER);
            assert_eq!(retry.is_some(), code == 503, "{err:?}");
        }
    }
}
