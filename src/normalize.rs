//! The normalize stage: find the rule for a response, inspect its body only when a candidate
//! rule needs it, and rewrite status, headers and body as the rule says.

use crate::body::{buffer_bounded_after, Buffered, ResponseBody};
use crate::client::{BodyError, UpstreamBody};
use crate::config::Mode;
use crate::deviation::Action;
use crate::rules::{is_documented, Action as RuleAction, BodyState, Facts, Rule, RuleSet, Step};
use bytes::Bytes;
use http::header::{
    CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, PROXY_AUTHENTICATE, TRAILER, TRANSFER_ENCODING,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use std::io::Read;

/// What the request looked like, for rules that look at it.
pub struct RequestFacts<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub headers: Option<&'a HeaderMap>,
    /// A HEAD that went upstream as GET: its response has the GET's body to inspect.
    pub head_as_get: bool,
    pub asked: Asked,
}

/// HTTP mechanisms the client invoked whose answers lie outside the REST contract: a `304`
/// to a conditional GET, a `206` to a range request, a `204` to a CORS preflight. Those
/// answers are what the client asked for, not the service deviating, so they are not
/// recorded as `left`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Asked {
    /// GET or HEAD with `If-None-Match` or `If-Modified-Since` (RFC 9110 §13.1.2-3).
    conditional: bool,
    /// GET with `Range` (RFC 9110 §14.2).
    range: bool,
    /// OPTIONS with `Origin` and `Access-Control-Request-Method` (Fetch standard).
    preflight: bool,
}

impl Asked {
    pub fn of(method: &Method, headers: &HeaderMap) -> Asked {
        use http::header::{ACCESS_CONTROL_REQUEST_METHOD, IF_MODIFIED_SINCE, IF_NONE_MATCH};
        use http::header::{ORIGIN, RANGE};
        let read = method == Method::GET || method == Method::HEAD;
        Asked {
            conditional: read
                && (headers.contains_key(IF_NONE_MATCH) || headers.contains_key(IF_MODIFIED_SINCE)),
            range: method == Method::GET && headers.contains_key(RANGE),
            preflight: method == Method::OPTIONS
                && headers.contains_key(ORIGIN)
                && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD),
        }
    }

    /// Whether some request could have asked for `status` (see [`Asked::answers`]).
    pub fn may_excuse(status: StatusCode) -> bool {
        matches!(
            status,
            StatusCode::NOT_MODIFIED | StatusCode::PARTIAL_CONTENT | StatusCode::NO_CONTENT
        )
    }

    /// Whether `status` is the answer the mechanism the client invoked defines.
    fn answers(&self, status: StatusCode) -> bool {
        match status {
            StatusCode::NOT_MODIFIED => self.conditional,
            StatusCode::PARTIAL_CONTENT => self.range,
            StatusCode::NO_CONTENT => self.preflight,
            _ => false,
        }
    }
}

/// How the rules treated a response.
pub struct Outcome {
    pub rule: Option<std::sync::Arc<str>>,
    pub action: Action,
    pub upstream_status: StatusCode,
    pub status: StatusCode,
    /// In audit mode, the status the rule would have answered.
    pub would_status: Option<StatusCode>,
    pub body_inspected: bool,
}

/// Settings of the stage, from the route and `[deviations]`.
pub struct Settings<'a> {
    pub rules: &'a RuleSet,
    pub mode: Mode,
    /// Whether the route applies a contract profile (then unmatched undocumented codes are
    /// recorded as `left`).
    pub contract: bool,
    pub inspect_limit: usize,
    pub original_status_header: Option<&'a HeaderName>,
}

/// The body could not be read from the upstream while inspecting it.
#[derive(Debug)]
pub enum InspectError {
    Upstream(BodyError),
}

/// Applies the rules to `response`. Returns the response to send and, when the exchange is a
/// deviation, what to record.
pub async fn normalize(
    request: &RequestFacts<'_>,
    mut response: Response<ResponseBody>,
    settings: &Settings<'_>,
) -> Result<(Response<ResponseBody>, Option<Outcome>), InspectError> {
    match normalize_head(request, &mut response, settings) {
        Ok(outcome) => Ok((response, outcome)),
        Err(resume) => {
            let (response, outcome, _) =
                normalize_body(request, response, resume, settings).await?;
            Ok((response, outcome))
        }
    }
}

/// [`normalize`] as far as the response head allows, in place and without waiting: most
/// responses end here, and moving the response (about 200 bytes with its body) in and out of
/// each step cost about 200 instructions per request. `Err` is the candidate whose rule needs
/// the body, for [`normalize_body`].
pub fn normalize_head(
    request: &RequestFacts<'_>,
    response: &mut Response<ResponseBody>,
    settings: &Settings<'_>,
) -> Result<Option<Outcome>, usize> {
    let upstream_status = response.status();
    let status = upstream_status.as_u16();
    if settings.rules.candidates(request.method, status).is_empty() {
        return Ok(left(request, settings, upstream_status, false));
    }
    let facts = facts(request, status, response.headers());
    let matched = match settings.rules.evaluate(&facts, BodyState::Unread, 0, None) {
        Step::Matched(rule) => Some(rule),
        Step::NoMatch => None,
        Step::NeedBody { resume } => return Err(resume),
    };
    Ok(apply(matched, response, false, request, settings))
}

/// The rest of [`normalize`] for a response whose rules need its body: reads it (up to the
/// inspect limit) and evaluates on from candidate `resume`, the one that asked. Also says
/// whether the body could be inspected.
pub async fn normalize_body(
    request: &RequestFacts<'_>,
    response: Response<ResponseBody>,
    resume: usize,
    settings: &Settings<'_>,
) -> Result<(Response<ResponseBody>, Option<Outcome>, bool), InspectError> {
    let (parts, body) = response.into_parts();
    let (body, copy) = inspect(body, request, &parts.headers, settings).await?;
    let mut response = Response::from_parts(parts, body);
    let state = match &copy {
        Some(bytes) => BodyState::Inspected(bytes),
        None => BodyState::NotInspected,
    };
    let facts = facts(request, response.status().as_u16(), response.headers());
    let matched = match settings.rules.evaluate(&facts, state, resume, None) {
        Step::Matched(rule) => Some(rule),
        _ => None,
    };
    let outcome = apply(matched, &mut response, copy.is_some(), request, settings);
    Ok((response, outcome, copy.is_some()))
}

/// What the rule that matched (if any) makes of the response, and what to record.
fn apply(
    matched: Option<&Rule>,
    response: &mut Response<ResponseBody>,
    inspected: bool,
    request: &RequestFacts<'_>,
    settings: &Settings<'_>,
) -> Option<Outcome> {
    let upstream_status = response.status();
    let Some(rule) = matched else {
        return left(request, settings, upstream_status, inspected);
    };
    if rule.then.status == upstream_status {
        // A rule that keeps the status is an allowed exception, not a deviation.
        return None;
    }
    let outcome = Outcome {
        rule: Some(rule.name.clone()),
        action: match settings.mode {
            Mode::Enforce => Action::Rewrote,
            Mode::Audit => Action::WouldRewrite,
        },
        upstream_status,
        status: match settings.mode {
            Mode::Enforce => rule.then.status,
            Mode::Audit => upstream_status,
        },
        would_status: (settings.mode == Mode::Audit).then_some(rule.then.status),
        body_inspected: inspected,
    };
    if settings.mode == Mode::Enforce {
        let header = settings.original_status_header;
        rewrite(rule, response, request.method, header);
    }
    Some(outcome)
}

fn facts<'a>(request: &RequestFacts<'a>, status: u16, headers: &'a HeaderMap) -> Facts<'a> {
    Facts {
        method: request.method,
        path: request.path,
        status,
        request_headers: request.headers,
        response_headers: headers,
    }
}

fn left(
    request: &RequestFacts<'_>,
    settings: &Settings,
    status: StatusCode,
    inspected: bool,
) -> Option<Outcome> {
    let undocumented = !is_documented(status.as_u16()) && !request.asked.answers(status);
    (settings.contract && undocumented).then_some(Outcome {
        rule: None,
        action: Action::Left,
        upstream_status: status,
        status,
        would_status: None,
        body_inspected: inspected,
    })
}

/// Buffers up to the inspect limit. Returns the body to send on (its bytes unchanged) and a
/// copy to inspect (decompressed when gzip), or `None` when the body could not be inspected.
async fn inspect(
    body: ResponseBody,
    request: &RequestFacts<'_>,
    headers: &HeaderMap,
    settings: &Settings<'_>,
) -> Result<(ResponseBody, Option<Bytes>), InspectError> {
    if *request.method == Method::HEAD && !request.head_as_get {
        return Ok((body, None));
    }
    let (body, raw) = match body {
        ResponseBody::Upstream(incoming) => read_upstream(Bytes::new(), incoming, settings).await?,
        // A chunked body whose first chunk came with the head (see `ResponseBody::upstream`).
        ResponseBody::Prefixed { prefix, rest } => {
            read_upstream(prefix.unwrap_or_default(), rest, settings).await?
        }
        ResponseBody::Full(Some(data)) => (ResponseBody::Full(Some(data.clone())), Some(data)),
        ResponseBody::Empty | ResponseBody::Full(None) => (body, Some(Bytes::new())),
        other => (other, None),
    };
    let copy = raw.and_then(|bytes| inspection_copy(bytes, headers, settings.inspect_limit));
    Ok((body, copy))
}

/// Reads an upstream body, `start` being its part read already, up to the inspect limit.
async fn read_upstream(
    start: Bytes,
    incoming: UpstreamBody,
    settings: &Settings<'_>,
) -> Result<(ResponseBody, Option<Bytes>), InspectError> {
    // No deadline of its own: the upstream body stops with `BodyError::Stalled` once the
    // upstream sends nothing for its `response_timeout`, however long the whole body takes.
    let read = buffer_bounded_after(start, incoming, settings.inspect_limit);
    Ok(match read.await {
        Err(err) => return Err(InspectError::Upstream(err)),
        Ok(Buffered::Complete { data, trailers }) => (
            ResponseBody::Buffered {
                data: Some(data.clone()),
                trailers,
            },
            Some(data),
        ),
        Ok(Buffered::TooLarge { prefix, rest }) => (
            ResponseBody::Prefixed {
                // Nothing was read when the declared length was already too large.
                prefix: (!prefix.is_empty()).then_some(prefix),
                rest,
            },
            None,
        ),
    })
}

/// What rules look at of a body read whole: the bytes, decompressed when the response is
/// gzip-encoded; `None` (not inspected) when that is more than `limit` bytes, not valid gzip,
/// or in another content coding that restatus cannot read.
pub fn inspection_copy(raw: Bytes, headers: &HeaderMap, limit: usize) -> Option<Bytes> {
    if raw.len() > limit {
        return None;
    }
    match coding(headers) {
        Coding::Identity => Some(raw),
        Coding::Gzip => gunzip_bounded(&raw, limit),
        Coding::Other => None,
    }
}

pub enum Coding {
    Identity,
    Gzip,
    Other,
}

/// A message's content coding (RFC 9110 §8.4); several codings count as unreadable.
pub fn coding(headers: &HeaderMap) -> Coding {
    let mut values = headers.get_all(CONTENT_ENCODING).iter();
    let value = match (values.next(), values.next()) {
        (None, _) => return Coding::Identity,
        (Some(value), None) => value,
        (Some(_), Some(_)) => return Coding::Other,
    };
    match value.to_str().map(|v| v.trim().to_ascii_lowercase()) {
        Ok(v) if v.is_empty() || v == "identity" => Coding::Identity,
        Ok(v) if v == "gzip" || v == "x-gzip" => Coding::Gzip,
        _ => Coding::Other,
    }
}

/// A decompressed copy of at most `limit` bytes; `None` if larger or not valid gzip.
pub fn gunzip_bounded(bytes: &[u8], limit: usize) -> Option<Bytes> {
    let mut out = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    let read = decoder.take(limit as u64 + 1).read_to_end(&mut out).ok()?;
    (read <= limit).then(|| Bytes::from(out))
}

/// Applies a rule's `then` to the response head and body.
fn rewrite(
    rule: &Rule,
    response: &mut Response<ResponseBody>,
    method: &Method,
    original_status_header: Option<&HeaderName>,
) {
    let action: &RuleAction = &rule.then;
    let original = response.status();
    *response.status_mut() = action.status;
    // A reason phrase belongs to the old status (hyper would write it back out).
    response
        .extensions_mut()
        .remove::<hyper::ext::ReasonPhrase>();
    let headers = response.headers_mut();
    if let Some(name) = original_status_header {
        headers.insert(name.clone(), status_value(original));
    }
    // A challenge belongs to its status (RFC 9110 §11.6.1, §11.7.1): after 401 -> 403 it
    // would ask the client to authenticate for a request that authentication cannot fix.
    if original != action.status {
        match original {
            StatusCode::UNAUTHORIZED => headers.remove(WWW_AUTHENTICATE),
            StatusCode::PROXY_AUTHENTICATION_REQUIRED => headers.remove(PROXY_AUTHENTICATE),
            _ => None,
        };
    }
    for name in &action.remove_headers {
        headers.remove(name);
    }
    for (name, value) in &action.set_headers {
        headers.insert(name.clone(), value.clone());
    }
    if !allows_body(action.status) {
        // RFC 9110 §8.6, §15.3.5, §15.4.5: no body and no Content-Length on a 204 or 304, even
        // when the rule gives a body.
        headers.remove(CONTENT_LENGTH);
        headers.remove(TRANSFER_ENCODING);
        if action.body.is_some() {
            headers.remove(CONTENT_ENCODING);
        }
        *response.body_mut() = ResponseBody::Empty;
        return;
    }
    if let Some((bytes, content_type)) = &action.body {
        // The new body is sent whole, uncoded and without the upstream's trailers.
        headers.remove(CONTENT_ENCODING);
        headers.remove(TRANSFER_ENCODING);
        headers.remove(TRAILER);
        // RFC 9110 §8.8: the upstream's validators and digests describe its body, not this
        // one; a cache revalidating with its ETag would keep the old body. A rule's own
        // `headers.set` still wins.
        for name in ABOUT_THE_BODY {
            if !action.set_headers.iter().any(|(set, _)| set == name) {
                headers.remove(name);
            }
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
        if let Some(content_type) = content_type {
            headers.insert(CONTENT_TYPE, content_type.clone());
        }
        // RFC 9110 §9.3.2: HEAD gets the length a GET would, and no body; HTTP/2 would send
        // one as DATA, which the client takes for a protocol error.
        *response.body_mut() = match *method == Method::HEAD {
            true => ResponseBody::Empty,
            false => ResponseBody::full(bytes.clone()),
        };
        return;
    }
    if !allows_body(original) && *method != Method::HEAD {
        // The upstream's 204/304 had no body; the new status needs a framed empty one.
        headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
        *response.body_mut() = ResponseBody::Empty;
    }
}

/// Fields that describe the upstream's body, dropped with it when a rule replaces it.
pub const ABOUT_THE_BODY: [&str; 7] = [
    "etag",
    "last-modified",
    "content-range",
    "content-md5",
    "digest",
    "content-digest",
    "repr-digest",
];

/// The digits of every status code, 100 to 999 (RFC 9110 §15: three digits), made once.
static STATUS_DIGITS: [u8; 2700] = status_digits();

/// The same digits as text, checked once when compiled rather than on every rewrite.
static STATUS_TEXT: &str = match std::str::from_utf8(&STATUS_DIGITS) {
    Ok(text) => text,
    Err(_) => panic!("status digits are ASCII"),
};

const fn status_digits() -> [u8; 2700] {
    let mut out = [0u8; 2700];
    let mut code = 100;
    while code < 1000 {
        let [hundreds, tens, ones] = crate::wire::digits3(code as u32);
        let at = (code - 100) * 3;
        (out[at], out[at + 1], out[at + 2]) = (hundreds, tens, ones);
        code += 1;
    }
    out
}

/// The status as a header value that points at static digits: a value made from the number
/// is formatted and allocated for every rewritten response.
fn status_value(status: StatusCode) -> HeaderValue {
    let code = status.as_u16();
    let digits = usize::from(code)
        .checked_sub(100)
        .and_then(|at| STATUS_TEXT.get(at * 3..at * 3 + 3));
    match digits {
        Some(digits) => HeaderValue::from_static(digits),
        None => HeaderValue::from(code),
    }
}

fn allows_body(status: StatusCode) -> bool {
    !(status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn status_values_are_the_codes() {
        for code in 100..=999u16 {
            let status = StatusCode::from_u16(code).expect("status");
            assert_eq!(status_value(status), HeaderValue::from(code), "{code}");
        }
    }

    #[test]
    fn gunzip_is_bounded() {
        let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&[b'a'; 1000]).unwrap();
        let gz = encoder.finish().unwrap();
        assert_eq!(gunzip_bounded(&gz, 1000).map(|b| b.len()), Some(1000));
        assert_eq!(gunzip_bounded(&gz, 999), None);
        assert_eq!(gunzip_bounded(b"not gzip", 1000), None);
    }
}
