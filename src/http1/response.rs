//! Response heads as RFC 9112 writes them, with the framing the body really has.

use crate::wire::{content_length, decimal, field, room_for_body, value_tokens};
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::response::Parts;
use http::{Method, StatusCode, Version};
use http_body::SizeHint;
use hyper::ext::ReasonPhrase;
use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

/// How a response body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// No body may follow: HEAD, 1xx, 204, 304 (RFC 9112 §6.3 rule 1).
    None,
    Length(u64),
    Chunked,
    /// An HTTP/1.0 client with no length to go by: the close ends the body.
    Close,
}

/// What the head writer needs to know about the request.
pub struct Asked<'a> {
    pub method: &'a Method,
    pub version: Version,
    pub keep_alive: bool,
}

/// The status line and fields; returns the head, the body's framing and whether the
/// connection stays open after the response.
pub fn encode(parts: &Parts, hint: &SizeHint, asked: &Asked<'_>) -> (Bytes, Out, bool) {
    let status = parts.status;
    let headers = &parts.headers;
    let out = framing(parts, hint, asked);
    let mut head = BytesMut::with_capacity(head_size(headers) + 128 + small_body(out));
    let reason = parts.extensions.get::<ReasonPhrase>();
    status_line(&mut head, status, reason);
    // Hyper's rule for framing fields: the one written is the one the body really has.
    let drop_length = !matches!(out, Out::None) || status == StatusCode::NO_CONTENT;
    // `Connection: close` and `Date` are noted on the way past, not looked up.
    let (mut closing, mut dated) = (false, false);
    for (name, value) in headers {
        if name == TRANSFER_ENCODING || (name == CONTENT_LENGTH && drop_length) {
            continue;
        }
        if name == CONNECTION {
            closing =
                closing || value_tokens(value.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"close"));
        } else if name == DATE {
            dated = true;
        }
        field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    match out {
        Out::Length(length) => {
            let mut digits = [0u8; 20];
            field(&mut head, b"content-length", decimal(length, &mut digits));
        }
        Out::Chunked => field(&mut head, b"transfer-encoding", b"chunked"),
        Out::None | Out::Close => {}
    }
    let keep_alive = asked.keep_alive && !closing && out != Out::Close;
    if !keep_alive && !closing {
        field(&mut head, b"connection", b"close");
    } else if keep_alive && asked.version == Version::HTTP_10 {
        field(&mut head, b"connection", b"keep-alive");
    }
    if !dated {
        with_date(|date| field(&mut head, b"date", date));
    }
    head.extend_from_slice(b"\r\n");
    (head.freeze(), out, keep_alive)
}

/// How the body goes: none where RFC 9112 §6.3 allows none, else its length when known,
/// else chunked to an HTTP/1.1 client and up to the close to an HTTP/1.0 one.
fn framing(parts: &Parts, hint: &SizeHint, asked: &Asked<'_>) -> Out {
    let status = parts.status;
    if *asked.method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Out::None
    } else if let Some(length) = hint.exact() {
        Out::Length(length)
    } else if let Ok(Some(length)) = content_length(&parts.headers, true) {
        Out::Length(length)
    } else if asked.version == Version::HTTP_11 {
        Out::Chunked
    } else {
        Out::Close
    }
}

fn small_body(out: Out) -> usize {
    match out {
        Out::Length(length) => room_for_body(length),
        _ => 0,
    }
}

/// The bytes of the fields as written, so that the head is allocated once.
fn head_size(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// A head the connection writes itself, for a request it could not read: no body, and the
/// connection closes after it.
pub fn refusal(status: StatusCode) -> Bytes {
    let mut head = BytesMut::with_capacity(128);
    status_line(&mut head, status, None);
    field(&mut head, b"content-length", b"0");
    field(&mut head, b"connection", b"close");
    with_date(|date| field(&mut head, b"date", date));
    head.extend_from_slice(b"\r\n");
    head.freeze()
}

/// Every answer says HTTP/1.1, an HTTP/1.0 client's too: RFC 9110 §2.5 has a server send the
/// highest version it conforms to within the request's major version. What an HTTP/1.0 client
/// cannot read is kept from it all the same: no chunked framing, and `Connection` always says
/// whether the connection stays open.
fn status_line(head: &mut BytesMut, status: StatusCode, reason: Option<&ReasonPhrase>) {
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.extend_from_slice(b" ");
    match reason {
        Some(reason) => head.extend_from_slice(reason.as_bytes()),
        None => head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes()),
    }
    head.extend_from_slice(b"\r\n");
}

thread_local! {
    /// The `Date` value (RFC 9110 §6.6.1), formatted once per second per thread.
    static DATE_CACHE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
}

fn with_date(write: impl FnOnce(&[u8])) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE_CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if cache.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cache.1.copy_from_slice(text.as_bytes());
                cache.0 = second;
            }
        }
        write(&cache.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::COALESCE;
    use http::HeaderValue;

    fn asked(method: &Method, version: Version) -> Asked<'_> {
        Asked {
            method,
            version,
            keep_alive: true,
        }
    }

    fn head_of(parts: &Parts, hint: SizeHint, asked: &Asked<'_>) -> (String, Out, bool) {
        let (head, out, keep) = encode(parts, &hint, asked);
        (String::from_utf8_lossy(&head).into_owned(), out, keep)
    }

    #[test]
    fn a_small_body_has_room_behind_its_head() {
        let parts = http::Response::new(()).into_parts().0;
        let get = Method::GET;
        let spare = |length: u64| {
            let hint = SizeHint::with_exact(length);
            let (head, _, _) = encode(&parts, &hint, &asked(&get, Version::HTTP_11));
            let head = head.try_into_mut().expect("the head is not shared");
            head.capacity() - head.len()
        };
        assert!(spare(1000) >= 1000);
        assert!(
            spare(COALESCE as u64 + 1) < COALESCE,
            "a big body is not copied"
        );
    }

    #[test]
    fn lengths_chunks_and_closes() {
        let mut parts = http::Response::new(()).into_parts().0;
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("99"));
        let get = Method::GET;
        let (head, out, keep) = head_of(
            &parts,
            SizeHint::with_exact(2),
            &asked(&get, Version::HTTP_11),
        );
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("content-length: 2\r\n") && !head.contains("99"),
            "{head}"
        );
        assert!(
            head.contains("\r\ndate: ") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert_eq!((out, keep), (Out::Length(2), true));
        parts.headers.clear();
        let (head, out, _) = head_of(&parts, SizeHint::default(), &asked(&get, Version::HTTP_11));
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert_eq!(out, Out::Chunked);
        let (head, out, keep) =
            head_of(&parts, SizeHint::default(), &asked(&get, Version::HTTP_10));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains("connection: close"));
        assert!(!head.contains("transfer-encoding"), "{head}");
        assert_eq!((out, keep), (Out::Close, false));
        let (head, _, keep) = head_of(
            &parts,
            SizeHint::with_exact(0),
            &asked(&get, Version::HTTP_10),
        );
        assert!(
            head.contains("connection: keep-alive\r\n") && keep,
            "{head}"
        );
    }

    #[test]
    fn bodiless_responses_keep_their_fields() {
        let mut parts = http::Response::new(()).into_parts().0;
        parts
            .headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("42"));
        let head_method = Method::HEAD;
        let (head, out, _) = head_of(
            &parts,
            SizeHint::with_exact(0),
            &asked(&head_method, Version::HTTP_11),
        );
        assert!(head.contains("content-length: 42\r\n"), "{head}");
        assert_eq!(out, Out::None);
        parts.status = StatusCode::NO_CONTENT;
        let get = Method::GET;
        let (head, out, _) = head_of(
            &parts,
            SizeHint::with_exact(0),
            &asked(&get, Version::HTTP_11),
        );
        assert!(!head.contains("content-length"), "{head}");
        assert_eq!(out, Out::None);
    }

    #[test]
    fn reason_phrases_and_refusals() {
        let mut parts = http::Response::new(()).into_parts().0;
        let reason = ReasonPhrase::try_from(&b"Fine By Me"[..]).expect("reason");
        parts.extensions.insert(reason);
        let get = Method::GET;
        let (head, _, _) = head_of(
            &parts,
            SizeHint::with_exact(0),
            &asked(&get, Version::HTTP_11),
        );
        assert!(head.starts_with("HTTP/1.1 200 Fine By Me\r\n"), "{head}");
        let refused = refusal(StatusCode::BAD_REQUEST);
        let text = String::from_utf8_lossy(&refused);
        assert!(text
            .starts_with("HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n"));
        assert_eq!(decimal(1234567, &mut [0; 20]), b"1234567");
        assert_eq!(decimal(0, &mut [0; 20]), b"0");
    }

    #[test]
    fn a_close_or_date_already_there_is_not_written_twice() {
        let mut parts = http::Response::new(()).into_parts().0;
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("x-a, Close"));
        parts.headers.insert(
            DATE,
            HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
        );
        let get = Method::GET;
        let ask = asked(&get, Version::HTTP_11);
        let (head, _, keep) = head_of(&parts, SizeHint::with_exact(0), &ask);
        assert!(!keep, "{head}");
        assert_eq!(head.matches("connection: ").count(), 1, "{head}");
        assert_eq!(head.matches("date: ").count(), 1, "{head}");
        assert!(
            head.contains("date: Tue, 01 Dec 2026 00:00:00 GMT\r\n"),
            "{head}"
        );
        parts.headers.remove(CONNECTION);
        let (head, _, keep) = head_of(&parts, SizeHint::with_exact(0), &ask);
        assert!(keep && !head.contains("connection"), "{head}");
    }
}
