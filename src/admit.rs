//! Request-side decisions that involve the body: validating JSON bodies before they are
//! forwarded, and what to do with a body left unread when the proxy answers early.

use crate::body::ClientBody;
use crate::body::{buffer_bounded, Buffered, IdleTimer, Source};
use crate::normalize::{self, Coding};
use crate::respond::ProxyError;
use crate::route::Route;
use http::header::{CONTENT_TYPE, EXPECT};
use http::{HeaderMap, Request, Version};
use http_body::Body;
use http_body_util::BodyExt;
use std::time::Duration;

/// An early answer reads at most this much of a request body to keep the connection usable.
const DRAIN_LIMIT: u64 = 64 * 1024;
/// ... and waits at most this long for it.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the request asks for `100 Continue` before sending its body (RFC 9110 §10.1.1:
/// only HTTP/1.1 and later; an HTTP/1.0 request's expectation is ignored).
pub fn expects_continue<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11 && has_expect_continue(request.headers())
}

pub fn has_expect_continue(headers: &HeaderMap) -> bool {
    headers
        .get_all(EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The proxy answered without forwarding: settles the unread request body. Returns whether
/// the connection can carry another request.
///
/// A client waiting for `100 Continue` is never asked for its body (reading it would make
/// hyper send the 100), so its connection closes. Otherwise a small body is read and dropped
/// so that keep-alive survives; a large or slow one closes the connection. An HTTP/2 body is
/// drained in the background when dropped (see `Http2Body`), without holding up the
/// connection.
pub async fn settle_unread(request: Request<ClientBody>) -> bool {
    let expects = expects_continue(&request);
    let version = request.version();
    let mut body = request.into_body();
    if body.is_end_stream() || version == Version::HTTP_2 {
        return true;
    }
    if expects || body.size_hint().lower() > DRAIN_LIMIT {
        return false;
    }
    let drain = async {
        let mut seen = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DRAIN_LIMIT {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIMEOUT, drain)
        .await
        .unwrap_or(false)
}

/// What the admission stage needs to know of a request path, from one pass over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathShape {
    /// Nothing to look at: routed, checked and forwarded as it is.
    Plain,
    /// Has `;` parameters: routes, checks and rules see it without them.
    Parameters,
    /// Could mean something else to the upstream: refused with 400.
    Ambiguous,
}

/// Sorts the path: ambiguous when it could mean something else to the upstream than it
/// meant to routing and rules. That is a dot-segment (RFC 3986 §5.2.4) raw or
/// percent-encoded, also before a `;` parameter (`/..;/`, which servlet containers resolve);
/// an encoded slash or backslash, or a raw backslash; an empty segment (`//`, which many
/// servers merge), also one made of parameters only (`/;x/`); or a percent-encoded
/// unreserved character (`%61` for `a`), which RFC 3986 §2.3 says producers should not create
/// and every upstream decodes. Such requests are refused rather than normalized.
pub fn path_shape(path: &str) -> PathShape {
    // Nearly every path has none of these: decided in one pass, without allocating.
    let (mut suspect, mut parameters, mut previous) = (false, false, 0);
    for &b in path.as_bytes() {
        match b {
            b'\\' | b'%' | b'.' => suspect = true,
            b'/' | b';' if previous == b'/' => suspect = true,
            b';' => parameters = true,
            _ => {}
        }
        previous = b;
    }
    match (suspect && is_ambiguous(path), parameters) {
        (true, _) => PathShape::Ambiguous,
        (false, true) => PathShape::Parameters,
        (false, false) => PathShape::Plain,
    }
}

/// Whether `path` would be refused: see [`path_shape`].
pub fn path_is_ambiguous(path: &str) -> bool {
    path_shape(path) == PathShape::Ambiguous
}

fn is_ambiguous(path: &str) -> bool {
    if path.contains('\\') || path.contains("//") || path.contains("/;") {
        return true;
    }
    if has_encoded_unreserved(path) {
        return true;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return true;
    }
    lower
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or("").replace("%2e", "."))
        .any(|segment| segment == "." || segment == "..")
}

/// Whether `path` has a `%XX` that decodes to a letter, digit, `-`, `_` or `~` (an encoded
/// `.` is a dot-segment question, answered above).
fn has_encoded_unreserved(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| {
        let hex = |at: usize| bytes.get(at).and_then(|&c| (c as char).to_digit(16));
        match (b, hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                let c = (high * 16 + low) as u8;
                c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'~')
            }
            _ => false,
        }
    })
}

/// The path as routes, checks and rules see it: each segment's parameters (`;jsessionid=...`,
/// RFC 3986 §3.3) removed, as Java servlet containers read it, so `/admin;x/keys` meets the
/// rules for `/admin/keys`. The path forwarded keeps them.
pub fn without_parameters(path: &str) -> Box<str> {
    let mut out = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(segment.split(';').next().unwrap_or(""));
    }
    out.into()
}

/// Whether `host` (a `Host` field or an authority) is `host [":" port]` as RFC 9110 §7.2 and
/// RFC 3986 §3.2.2 write it, held to what names a real host: a name of letters, digits, `-`,
/// `.`, `_` and `~`, an IPv4 address, or an IPv6 literal in brackets; a port of at most 5
/// digits up to 65535. Refused (RFC 9112 §3.2 asks for 400 for an invalid Host): userinfo
/// (`u@host`, RFC 9110 §4.2.4), `/`, `?`, `#`, spaces, a comma (read as two hosts by servers
/// that split `X-Forwarded-Host`), percent-escapes and other sub-delimiters, which routing
/// and an upstream could read differently. An empty host (`Host:`, `Host: :80`) is refused
/// too: RFC 9110 §4.2.1 has a recipient reject an `http` URI with an empty host, and every
/// request a reverse proxy forwards is for one.
pub fn host_is_valid(host: &[u8]) -> bool {
    let (name, port) = match host.strip_prefix(b"[") {
        Some(literal) => {
            let Some(end) = literal.iter().position(|&b| b == b']') else {
                return false;
            };
            let address = &literal[..end];
            let ip = address
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
            return ip && address.contains(&b':') && port_is_valid(&literal[end + 1..]);
        }
        None => match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &b""[..]),
        },
    };
    let name_ok = !name.is_empty()
        && (name.iter())
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    name_ok && port_is_valid(port)
}

/// `""` or `":" *DIGIT` (RFC 3986 §3.2.3), a number no larger than 65535.
fn port_is_valid(port: &[u8]) -> bool {
    let Some(digits) = port.strip_prefix(b":") else {
        return port.is_empty();
    };
    if digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return false;
    }
    digits
        .iter()
        .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
        <= 65535
}

/// Most header fields a request may carry; more is answered 431 (RFC 6585 §5).
pub const MAX_HEADER_FIELDS: usize = 100;

/// Whether the header section is over the limits: `max_bytes` in total, or more than
/// [`MAX_HEADER_FIELDS`] fields.
pub fn headers_too_large(headers: &HeaderMap, max_bytes: usize) -> bool {
    headers.len() > MAX_HEADER_FIELDS || header_bytes(headers) > max_bytes
}

/// Bytes of a request head's header section as sent: name, `: `, value, CRLF.
pub fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// `application/json` or any `application/*+json`, parameters ignored.
pub fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype.len() > 5 && subtype[subtype.len() - 5..].eq_ignore_ascii_case("+json"))
}

/// Whether the request body is read before forwarding: `validate_json` on the route and a
/// JSON body.
pub fn reads_body(route: &Route, headers: &HeaderMap, body: &ClientBody) -> bool {
    route.validate_json && !body.is_end_stream() && is_json(headers)
}

/// The client's body, streamed upstream within the body limit and timeout.
pub fn client_source(body: ClientBody, (limit, timeout): (u64, Duration)) -> Source {
    Source::Client {
        body,
        seen: 0,
        limit,
        idle: IdleTimer::new(timeout),
    }
}

/// Reads the JSON body (bounded by `limit`) and refuses it with 400 unless it parses.
/// Returns the body to forward.
pub async fn validate_json(
    body: ClientBody,
    coding: Coding,
    (limit, timeout): (u64, Duration),
) -> Result<Source, ProxyError> {
    let bound = usize::try_from(limit).unwrap_or(usize::MAX);
    // The whole body is needed here, so the body timeout bounds all of it.
    let data = match tokio::time::timeout(timeout, buffer_bounded(body, bound)).await {
        Ok(Ok(Buffered::Complete { data, .. })) => data,
        Ok(Ok(Buffered::TooLarge { .. })) => return Err(ProxyError::BodyTooLarge { limit }),
        Ok(Err(err)) => return Err(ProxyError::client_body(&*err)),
        Err(_) => return Err(ProxyError::BodyTimeout),
    };
    // A gzip body is checked decompressed (within the same limit) and forwarded as sent; a
    // coding restatus cannot read is refused, or any made-up coding would turn the check off.
    let plain = match coding {
        Coding::Identity => data.clone(),
        Coding::Gzip => normalize::gunzip_bounded(&data, bound).ok_or_else(|| {
            ProxyError::InvalidJson("the gzip body does not decompress within the limit".into())
        })?,
        Coding::Other => return Err(ProxyError::UnreadableCoding),
    };
    match serde_json::from_slice::<serde::de::IgnoredAny>(&plain) {
        Ok(_) => Ok(Source::Full(Some(data))),
        Err(err) => Err(ProxyError::InvalidJson(err.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn json_content_types_are_recognised() {
        let cases = [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            ("application/vnd.api+JSON", true),
            ("text/json", false),
            ("application/jsonp", false),
            ("application/x-www-form-urlencoded", false),
            ("+json", false),
        ];
        for (value, expected) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), expected, "{value}");
        }
        assert!(!is_json(&HeaderMap::new()));
    }

    #[test]
    fn hosts_are_held_to_host_and_port() {
        for host in [
            "api.example",
            "API.Example.com:8080",
            "10.0.0.7",
            "10.0.0.7:80",
            "[::1]",
            "[::1]:8443",
            "[2001:db8::7]",
            "legacy_app.internal",
            "a:",
            "a:65535",
        ] {
            assert!(host_is_valid(host.as_bytes()), "{host:?}");
        }
        for host in [
            "u@admin.example",
            "u:p@admin.example",
            "admin.example/x",
            "admin.example?x",
            "admin.example#x",
            "admin.example,public.example",
            "adm in.example",
            "admin.example:80:80",
            "admin.example:99999",
            "admin.example:8o",
            "admin.example:000080",
            "adm%69n.example",
            "admin.example;x",
            "[::1",
            "[::1]x",
            "[admin]",
            "[::1]:99999",
            "a\tb",
            "",
            ":80",
            "[]",
        ] {
            assert!(!host_is_valid(host.as_bytes()), "{host:?}");
        }
    }

    #[test]
    fn ambiguous_paths_are_recognised() {
        let ambiguous = [
            "/a/../admin",
            "/a/./b",
            "/..",
            "/a/%2e%2e/admin",
            "/a/%2E./admin",
            "/a/.%2e",
            "/public%2fadmin",
            "/a%5Cb",
            "/a\\b",
            "/inventory/%61dmin/x",
            "/%7Euser",
            "/a/%2D",
            "//admin",
            "/inventory//admin/x",
            "/raw/..;/echo",
            "/a/.;x/b",
            "/app/;x/admin",
            "/;x",
        ];
        for path in ambiguous {
            assert!(path_is_ambiguous(path), "{path}");
        }
        for path in [
            "/",
            "/items/1",
            "/a/..b/c",
            "/a/b..",
            "/.well-known/x",
            "/a%20b",
            "/a%2Cb",
            "/a%25b",
            "/a%e2%82%ac",
            "/a;jsessionid=1/b",
            "/v1.2/x",
        ] {
            assert!(!path_is_ambiguous(path), "{path}");
        }
    }

    #[test]
    fn parameters_are_left_out_of_the_matched_path() {
        assert_eq!(path_shape("/items/1"), PathShape::Plain);
        assert_eq!(path_shape("/admin;x/keys"), PathShape::Parameters);
        assert_eq!(
            &*without_parameters("/admin;x/keys;jsessionid=A1"),
            "/admin/keys"
        );
        assert_eq!(&*without_parameters("/a;b"), "/a");
    }

    #[test]
    fn expect_continue_is_case_insensitive() {
        let mut headers = HeaderMap::new();
        headers.insert(EXPECT, HeaderValue::from_static("100-Continue"));
        assert!(has_expect_continue(&headers));
        headers.insert(EXPECT, HeaderValue::from_static("something-else"));
        assert!(!has_expect_continue(&headers));
    }
}
