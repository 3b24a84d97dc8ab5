//! Request heads as RFC 9112 reads them: the request line, the fields, and from them how the
//! body is framed and whether the connection stays open. Anything ambiguous is refused.

use crate::admit::{has_expect_continue, MAX_HEADER_FIELDS};
use crate::wire::{field_name, has_token, tokens, Chunk, Framing, Noted};
use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version};
use std::mem::MaybeUninit;

/// Fields parsed per head; the proxy itself refuses more than [`MAX_HEADER_FIELDS`] with a
/// normalized 431, this only stops heads far beyond that.
const MAX_FIELDS: usize = MAX_HEADER_FIELDS * 4;

/// The longest request target a URI can hold (the `http` crate's limit); `limits.uri` may
/// not exceed it.
pub const MAX_TARGET: usize = u16::MAX as usize - 1;

/// Fields the proxy may add to a head it forwards.
pub const ADDED_FIELDS: usize = 6;

/// A parsed request head.
pub struct Head {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The client may send another request on this connection after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before its body.
    pub expects_continue: bool,
}

/// Why a head was refused; the connection closes after the answer.
#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than the parser's buffer, or too many fields: 431 (RFC 6585 §5).
    TooLarge,
    /// Not an HTTP/1.x request: 505.
    Version,
    /// A request target longer than any URI can be: 414 (RFC 9110 §15.5.15). Shorter ones
    /// over `limits.uri` get the proxy's normalized 414 instead.
    TargetTooLong,
    Malformed(&'static str),
}

impl HeadError {
    pub fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            HeadError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            HeadError::TargetTooLong => StatusCode::URI_TOO_LONG,
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// A short machine-friendly kind, for metrics labels (beside `ProxyError::kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            HeadError::TooLarge => "headers_too_large",
            HeadError::Version => "http_version",
            HeadError::TargetTooLong => "uri_too_long",
            HeadError::Malformed(_) => "malformed_request",
        }
    }

    /// What was wrong, for the log.
    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::TooLarge => "the request head is too large",
            HeadError::Version => "not an HTTP/1.x request",
            HeadError::TargetTooLong => "the request target is too long",
            HeadError::Malformed(why) => why,
        }
    }
}

/// Parses a request head at the start of `buf`, taking its bytes; `None` until it is whole.
pub fn parse(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, HeadError> {
    // Left uninitialised: httparse writes the slots it uses.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_head => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(httparse::Error::Version) if read_as_http11(buf) => return parse(buf, max_head),
        Err(httparse::Error::Version) => return Err(version_error(buf)),
        Err(_) => return Err(HeadError::Malformed("malformed request head")),
    };
    if len > max_head {
        return Err(HeadError::TooLarge);
    }
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    // Names now; the target and values as offsets, to share the head's bytes once split off.
    let base = buf.as_ptr() as usize;
    let span = |bytes: &[u8]| {
        let start = bytes.as_ptr() as usize - base;
        (start, start + bytes.len())
    };
    let target = span(parsed.path.unwrap_or("").as_bytes());
    if target.1 - target.0 > MAX_TARGET {
        return Err(HeadError::TargetTooLong);
    }
    let mut fields = Vec::with_capacity(parsed.headers.len());
    let mut noted = Noted::default();
    for field in parsed.headers.iter() {
        let name = field_name(field.name.as_bytes())
            .map_err(|_| HeadError::Malformed("invalid field name"))?;
        noted.note(&name, field.value);
        fields.push((name, span(field.value)));
    }
    let head = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
        .ok()
        .or_else(|| encoded_target(&head[target.0..target.1]))
        .filter(|uri| has_a_form(&method, &head[target.0..target.1], uri))
        .ok_or(HeadError::Malformed("invalid request target"))?;
    // Room for the fields the proxy adds (Via, X-Forwarded-*, the request id), so that the
    // map is not grown and rehashed on the way upstream.
    let mut headers = HeaderMap::with_capacity(fields.len() + ADDED_FIELDS);
    for (name, (start, end)) in fields {
        headers.append(name, value(&head, start, end)?);
    }
    frame(method, uri, version, headers, noted).map(Some)
}

/// RFC 9110 §2.5: a message of a higher minor version within a major one the recipient
/// implements (`HTTP/1.2`) is processed as the highest it conforms to. Rewrites the request
/// line's version to `HTTP/1.1` and says whether it did.
fn read_as_http11(buf: &mut BytesMut) -> bool {
    let line_end = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    let Some(at) = memchr::memmem::rfind(&buf[..line_end], b" HTTP/1.") else {
        return false;
    };
    let minor = at + b" HTTP/1.".len();
    let after = buf.get(minor + 1).copied();
    match buf.get(minor) {
        Some(b'2'..=b'9') if matches!(after, None | Some(b'\r' | b'\n')) => {
            buf[minor] = b'1';
            true
        }
        _ => false,
    }
}

/// A version httparse does not take: 505 for another `HTTP/` version (RFC 9110 §15.6.6), 400
/// for anything else, `http/1.1` included (RFC 9112 §2.3: the name is case-sensitive, so that
/// is a malformed request line, not a version restatus lacks).
fn version_error(buf: &[u8]) -> HeadError {
    let line = &buf[..memchr::memchr(b'\n', buf).unwrap_or(buf.len())];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    if version.starts_with(b"HTTP/") {
        HeadError::Version
    } else {
        HeadError::Malformed("malformed request line")
    }
}

/// An origin-form target with bytes RFC 3986 leaves out of a URI but clients send all the
/// same (`?filter={"a":1}` from a script, `<`, `>`), which the URI parser refuses: the same
/// target with the bytes it refuses percent-encoded (RFC 3986 §2.1), which a service decodes
/// to the same text. Only those: `<`, `>` and a backtick in the path, `"`, `<` and `>` in the
/// query (the parser takes a `"` in a path and a backtick in a query as they are), so that a
/// path reads the same whatever its query holds. NGINX and HAProxy forward them as sent.
fn encoded_target(target: &[u8]) -> Option<Uri> {
    if target.first() != Some(&b'/') {
        return None;
    }
    let mut out = Vec::with_capacity(target.len() + 16);
    let mut in_query = false;
    for &byte in target {
        in_query |= byte == b'?';
        let refused = match in_query {
            false => b"<>`".contains(&byte),
            true => b"\"<>".contains(&byte),
        };
        match refused {
            true => out.extend_from_slice(format!("%{byte:02X}").as_bytes()),
            false => out.push(byte),
        }
    }
    Uri::try_from(out).ok()
}

/// Whether the target has one of RFC 9112 §3.2's forms: origin-form (`/...`), absolute-form
/// (`scheme://...`), authority-form for CONNECT, asterisk-form for OPTIONS. Anything else
/// (`echo`, `evil.example:80` on a GET) would be read as an authority by the URI parser and
/// could name a host the Host field does not.
fn has_a_form(method: &Method, target: &[u8], uri: &Uri) -> bool {
    match target.first() {
        Some(b'/') => true,
        Some(b'*') => target.len() == 1 && method == Method::OPTIONS,
        _ => uri.scheme().is_some() || method == Method::CONNECT,
    }
}

fn value(head: &Bytes, start: usize, end: usize) -> Result<HeaderValue, HeadError> {
    HeaderValue::from_maybe_shared(head.slice(start..end))
        .map_err(|_| HeadError::Malformed("invalid field value"))
}

/// Works out the body's framing (RFC 9112 §6.3) and the connection's persistence (§9.3).
fn frame(
    method: Method,
    uri: Uri,
    version: Version,
    mut headers: HeaderMap,
    noted: Noted,
) -> Result<Head, HeadError> {
    // RFC 9112 §3.2: an HTTP/1.1 request needs exactly one Host; none may carry two.
    if noted.hosts > 1 || (noted.hosts == 0 && version == Version::HTTP_11) {
        return Err(HeadError::Malformed("Host is missing or repeated"));
    }
    let mut keep_alive = match version {
        Version::HTTP_10 => noted.connection && has_token(&headers, &CONNECTION, b"keep-alive"),
        _ => !(noted.connection && has_token(&headers, &CONNECTION, b"close")),
    };
    let framing = if noted.transfer_encoding {
        if version == Version::HTTP_10 {
            // §6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if !only_chunked(&headers) {
            // §6.3 rule 4: chunked must be the final (here: the only) coding, applied once.
            return Err(HeadError::Malformed("unsupported Transfer-Encoding"));
        }
        if headers.remove(CONTENT_LENGTH).is_some() {
            // §6.3 rule 3: chunked wins; the length goes, and so does the connection, since
            // whoever sent both may be smuggling a request.
            keep_alive = false;
        }
        Framing::Chunked(Chunk::Size)
    } else if noted.content_length() {
        match noted
            .length(&headers, false)
            .map_err(HeadError::Malformed)?
        {
            None | Some(0) => Framing::Empty,
            Some(length) => Framing::Length(length),
        }
    } else {
        Framing::Empty
    };
    let expects_continue = noted.expect
        && version == Version::HTTP_11
        && !matches!(framing, Framing::Empty)
        && has_expect_continue(&headers);
    Ok(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expects_continue,
    })
}

/// Every coding listed is `chunked` (applying it twice is the same framing).
/// Whether the codings are exactly one `chunked`: §6.1 forbids applying chunked twice, and a
/// `chunked, chunked` body read as chunked once would leave a framing the sender did not mean
/// (NGINX and HAProxy refuse it too; so does restatus in a response).
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = tokens(headers, &TRANSFER_ENCODING);
    codings
        .next()
        .is_some_and(|t| t.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, HeadError> {
        parse(&mut BytesMut::from(text.as_bytes()), 64 << 10)
    }

    #[test]
    fn a_simple_head_is_read_and_its_bytes_taken() {
        let mut buf = BytesMut::from(&b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\nNEXT"[..]);
        let parsed = parse(&mut buf, 1024).ok().flatten().expect("head");
        assert_eq!(parsed.method, Method::GET);
        assert_eq!(parsed.uri, "/a?b=1");
        assert_eq!(parsed.headers["host"], "x");
        assert!(parsed.keep_alive && !parsed.expects_continue);
        assert!(matches!(parsed.framing, Framing::Empty));
        assert_eq!(&buf[..], b"NEXT");
    }

    /// Bytes a URI may not hold but clients send are forwarded percent-encoded; a target
    /// that is wrong in another way is still refused.
    #[test]
    fn quotes_angle_brackets_and_backticks_in_a_target_are_encoded() {
        let cases: [(&[u8], &str); 6] = [
            (b"/a?q={\"a\":1}", "/a?q={%22a%22:1}"),
            // Each part keeps what the parser takes as it is: a backtick in the query, a `"`
            // in the path.
            (b"/a?x=<b>&y=`c`", "/a?x=%3Cb%3E&y=`c`"),
            (b"/q/\"x\"`?y=<", "/q/\"x\"%60?y=%3C"),
            // UTF-8 passes as it is.
            ("/caf\u{e9}?q=\u{e9}".as_bytes(), "/caf\u{e9}?q=\u{e9}"),
            (
                "/caf\u{e9}?q=\"\u{e9}\"".as_bytes(),
                "/caf\u{e9}?q=%22\u{e9}%22",
            ),
            (b"/100%25?a=%22", "/100%25?a=%22"),
        ];
        for (target, want) in cases {
            let mut head = b"GET ".to_vec();
            head.extend_from_slice(target);
            head.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut buf = BytesMut::from(&head[..]);
            let parsed = parse(&mut buf, 1024).ok().flatten().expect("head");
            assert_eq!(parsed.uri, want);
        }
        let mut buf = BytesMut::from(&b"GET a\"b HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
        assert!(matches!(
            parse(&mut buf, 1024),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn partial_heads_wait_and_large_ones_are_refused() {
        assert!(matches!(head("GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None)));
        assert!(matches!(
            head("GET / HTTP/1.1\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
        let two = "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n";
        assert!(matches!(head(two), Err(HeadError::Malformed(_))));
        assert!(
            head("GET / HTTP/1.0\r\n\r\n").is_ok_and(|h| h.is_some()),
            "1.0 needs none"
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(70 << 10));
        assert_eq!(head(&long).err(), Some(HeadError::TooLarge));
        assert_eq!(
            head("GET / HTTP/2.0\r\n\r\n").err(),
            Some(HeadError::Version)
        );
    }

    #[test]
    fn framing_and_persistence() {
        let chunked = head(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
        );
        let chunked = chunked.ok().flatten().expect("head");
        assert!(matches!(chunked.framing, Framing::Chunked(_)));
        assert!(!chunked.keep_alive, "TE with CL closes after the response");
        assert!(!chunked.headers.contains_key(CONTENT_LENGTH));
        let old = head("POST / HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
        let old = old.ok().flatten().expect("head");
        assert!(matches!(old.framing, Framing::Length(3)));
        assert!(!old.keep_alive && !old.expects_continue);
        let kept = head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(kept.ok().flatten().expect("head").keep_alive);
        let closed = head("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert!(!closed.ok().flatten().expect("head").keep_alive);
        let waits =
            head("PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-Continue\r\n\r\n");
        assert!(waits.ok().flatten().expect("head").expects_continue);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for text in [
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length : 3\r\n\r\n",
            "POST / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n",
            // Control characters in a value (RFC 9110 §5.5).
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nX: a\x0bb\r\n\r\n",
        ] {
            assert_eq!(
                head(text).err().map(|e| e.status()),
                Some(StatusCode::BAD_REQUEST),
                "{text:?}"
            );
        }
    }
}
