//! `Max-Forwards` (RFC 9110 §7.6.2): on a TRACE or OPTIONS request, an intermediary that
//! receives 0 answers as the final recipient; otherwise it forwards the value less one. Other
//! methods pass the field through untouched, as the RFC leaves it to TRACE and OPTIONS.

use crate::body::ResponseBody;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, MAX_FORWARDS};
use http::{HeaderMap, HeaderValue, Method, Request, Response, Version};

/// What a TRACE or OPTIONS request's `Max-Forwards` asks of this hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hops {
    /// Not TRACE or OPTIONS, no field, or one that is not a single decimal number: forwarded
    /// as it came.
    Untouched,
    /// 0: this hop answers.
    Last,
    /// Forwarded with `Max-Forwards` set to this (one less than received).
    Forward(u64),
}

/// Reads `Max-Forwards` for `method`. Inlined, so that other requests pay only the method
/// test.
#[inline(always)]
pub fn hops(method: &Method, headers: &HeaderMap) -> Hops {
    if *method != Method::OPTIONS && *method != Method::TRACE {
        return Hops::Untouched;
    }
    counted(headers)
}

#[cold]
fn counted(headers: &HeaderMap) -> Hops {
    let mut values = headers.get_all(MAX_FORWARDS).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return Hops::Untouched;
    };
    // 1*DIGIT; a value that is not (or overflows) is not this hop's to reinterpret.
    let digits = value.as_bytes();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Hops::Untouched;
    }
    // Digits only, so parsing fails only past u64::MAX: such a count is as good as endless.
    match std::str::from_utf8(digits).map(|d| d.parse::<u64>().unwrap_or(u64::MAX)) {
        Ok(0) => Hops::Last,
        Ok(n) => Hops::Forward(n - 1),
        Err(_) => Hops::Untouched,
    }
}

/// Sets the forwarded request's `Max-Forwards` as `hops` says.
pub fn forward(hops: Hops, headers: &mut HeaderMap) {
    if let Hops::Forward(n) = hops {
        headers.insert(MAX_FORWARDS, HeaderValue::from(n));
    }
}

/// Fields whose values a TRACE echo shows; the others are echoed by name with their value
/// left out, since any of them may carry a credential (RFC 9110 §9.3.8: the final recipient
/// excludes fields that might contain sensitive data).
fn shows_value(name: &str) -> bool {
    const SHOWN: [&str; 17] = [
        "accept",
        "accept-charset",
        "accept-encoding",
        "accept-language",
        "cache-control",
        "content-length",
        "content-type",
        "forwarded",
        "host",
        "max-forwards",
        "pragma",
        "user-agent",
        "via",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-request-id",
    ];
    SHOWN.contains(&name)
}

/// What this hop answers as the final recipient: a TRACE gets its request head back as
/// `message/http` (RFC 9110 §9.3.8), less sensitive fields; an OPTIONS gets an empty 200.
pub fn echo<B>(request: &Request<B>) -> Option<Bytes> {
    if *request.method() != Method::TRACE {
        return None;
    }
    let mut echo = BytesMut::with_capacity(256);
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let version = match request.version() {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        _ => "HTTP/1.1",
    };
    echo.put_slice(format!("TRACE {target} {version}\r\n").as_bytes());
    let headers = request.headers();
    // An HTTP/2 request names its host in `:authority`, not in a field.
    if let (Some(authority), false) = (request.uri().authority(), headers.contains_key(HOST)) {
        crate::wire::field(&mut echo, b"host", authority.as_str().as_bytes());
    }
    for (name, value) in headers {
        let name = name.as_str();
        let value = match shows_value(name) {
            true => value.as_bytes(),
            false => b"(left out)",
        };
        crate::wire::field(&mut echo, name.as_bytes(), value);
    }
    echo.put_slice(b"\r\n");
    Some(echo.freeze())
}

/// Makes `response` (the proxy's own, with its JSON body) this hop's answer: the echo as
/// `message/http`, or no content.
pub fn answer(echo: Option<&Bytes>, response: &mut Response<ResponseBody>) {
    let headers = response.headers_mut();
    let content = echo.cloned().unwrap_or_default();
    match echo {
        Some(_) => headers.insert(CONTENT_TYPE, HeaderValue::from_static("message/http")),
        None => headers.remove(CONTENT_TYPE),
    };
    headers.insert(CONTENT_LENGTH, HeaderValue::from(content.len()));
    *response.body_mut() = ResponseBody::full(content);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(MAX_FORWARDS, HeaderValue::from_str(value).expect("value"));
        }
        headers
    }

    #[test]
    fn only_trace_and_options_count_hops() {
        let zero = headers(&["0"]);
        assert_eq!(hops(&Method::OPTIONS, &zero), Hops::Last);
        assert_eq!(hops(&Method::TRACE, &zero), Hops::Last);
        assert_eq!(hops(&Method::GET, &zero), Hops::Untouched);
        assert_eq!(hops(&Method::POST, &zero), Hops::Untouched);
        assert_eq!(hops(&Method::TRACE, &headers(&["5"])), Hops::Forward(4));
        assert_eq!(hops(&Method::TRACE, &headers(&[])), Hops::Untouched);
    }

    #[test]
    fn values_that_are_not_one_number_pass_untouched() {
        for bad in [&["-1"][..], &["1x"], &[""], &["1", "2"]] {
            assert_eq!(
                hops(&Method::OPTIONS, &headers(bad)),
                Hops::Untouched,
                "{bad:?}"
            );
        }
        let endless = headers(&["99999999999999999999999"]);
        assert_eq!(
            hops(&Method::OPTIONS, &endless),
            Hops::Forward(u64::MAX - 1)
        );
        let mut forwarded = headers(&["7"]);
        forward(hops(&Method::OPTIONS, &forwarded), &mut forwarded);
        assert_eq!(forwarded[MAX_FORWARDS], "6");
    }

    #[test]
    fn a_trace_echo_leaves_the_values_of_unknown_fields_out() {
        let request = Request::builder()
            .method(Method::TRACE)
            .uri("/a?b=1")
            .header("host", "svc")
            .header("authorization", "Bearer s")
            .header("cookie", "c=1")
            .header("x-api-key", "k")
            .header("max-forwards", "0")
            .body(())
            .expect("request");
        let echo = String::from_utf8(echo(&request).expect("echo").to_vec()).expect("text");
        assert_eq!(
            echo,
            "TRACE /a?b=1 HTTP/1.1\r\nhost: svc\r\nauthorization: (left out)\r\n\
             cookie: (left out)\r\nx-api-key: (left out)\r\nmax-forwards: 0\r\n\r\n"
        );
    }
}
