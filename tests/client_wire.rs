//! The client leg's own HTTP/1.1 codec (`src/http1`) on the wire: raw TCP clients send
//! hand-written requests, and each test reads the proxy's answer byte by byte. It covers the
//! framing chosen from the body (chunked for HTTP/1.1, up to the close for HTTP/1.0, none for
//! HEAD and 204), persistence for HTTP/1.0 and HTTP/1.1 clients, `Date`, chunked trailers,
//! the heads the parser refuses, empty lines before a request line, and an early answer read
//! whole while the client is still sending its body.
//!
//! Covered elsewhere, so not repeated here: an HTTP/2 prior-knowledge client on the plain
//! listener (`core_proxy::http2_client_is_served_from_an_http1_upstream`), and HTTP/1.1
//! graceful shutdown, both the idle keep-alive connection closed and the request in flight
//! answered with `Connection: close`
//! (`load::c_graceful_shutdown_under_load_loses_no_accepted_request`).
mod support;

use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};
use support::fault::{ok_response, spawn_fault, FaultConn, FaultUpstream};
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Route setting that turns the contract profile off, so the codec's framing is all there is.
const NO_PROFILE: &str = r#"profile = "none""#;

/// How long any single wait in these tests may take before it counts as a hang.
const LIMIT: Duration = Duration::from_secs(10);

/// The body a close-delimited upstream sends.
const TO_THE_CLOSE: &str = "all of this, up to the close";

// ---------------------------------------------------------------------------------------------
// A raw client that parses responses strictly

/// One response as it came off the wire.
#[derive(Debug)]
struct Answer {
    /// The status line and fields, through the blank line.
    head: String,
    status: u16,
    /// Lowercased names, in order, repeats kept.
    fields: Vec<(String, String)>,
    /// The body bytes as sent, chunk framing included.
    raw: Vec<u8>,
    /// The body, decoded.
    body: Vec<u8>,
    trailers: Vec<(String, String)>,
}

impl Answer {
    fn values(&self, name: &str) -> Vec<&str> {
        self.fields
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection. What was read but not yet parsed stays buffered, so bytes the proxy
/// should not have written (a body after HEAD, say) sit in front of the next response.
struct Conn<R> {
    stream: R,
    buf: Vec<u8>,
}

async fn connect(addr: SocketAddr) -> Conn<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    Conn {
        stream,
        buf: Vec::new(),
    }
}

impl Conn<TcpStream> {
    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }
}

type Fields = Vec<(String, String)>;

fn owned_fields(fields: &[httparse::Header<'_>]) -> Fields {
    fields
        .iter()
        .map(|f| {
            let value = String::from_utf8_lossy(f.value).into_owned();
            (f.name.to_ascii_lowercase(), value)
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl<R: AsyncRead + Unpin> Conn<R> {
    /// One read, bounded by `LIMIT`: the bytes read (0 at the close), or why none came.
    async fn fill(&mut self) -> Result<usize, String> {
        let mut chunk = [0u8; 16 << 10];
        match tokio::time::timeout(LIMIT, self.stream.read(&mut chunk)).await {
            Err(_) => Err(format!("nothing within {LIMIT:?}")),
            Ok(Err(err)) => Err(format!("read failed: {err}")),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }

    /// Reads until `parse` finds its item at the start of the buffer, and takes its bytes.
    /// A close, a reset or a hang first fails the test.
    async fn take<T>(
        &mut self,
        what: &str,
        parse: impl Fn(&[u8]) -> Option<(usize, T)>,
    ) -> (Vec<u8>, T) {
        loop {
            if let Some((used, found)) = parse(&self.buf) {
                return (self.buf.drain(..used).collect(), found);
            }
            match self.fill().await {
                Ok(0) => panic!("closed before {what}: {:?}", text(&self.buf)),
                Ok(_) => {}
                Err(err) => panic!("{err} before {what}: {:?}", text(&self.buf)),
            }
        }
    }

    /// Reads one response. `bodiless`: it answers a HEAD or has a status with no body, so
    /// nothing may follow its head (RFC 9112 §6.3 rule 1).
    async fn response(&mut self, bodiless: bool) -> Answer {
        let (head, (status, fields)) = self.take("a response head", parse_head).await;
        let mut answer = Answer {
            head: text(&head),
            status,
            fields,
            raw: Vec::new(),
            body: Vec::new(),
            trailers: Vec::new(),
        };
        if bodiless {
            return answer;
        }
        let length = answer.values("content-length").first().map(|v| {
            v.parse::<usize>()
                .unwrap_or_else(|_| panic!("Content-Length: {v:?}"))
        });
        if answer.values("transfer-encoding") == ["chunked"] {
            self.chunked(&mut answer).await;
        } else if let Some(length) = length {
            let (body, ()) = self
                .take("the whole body", |b| {
                    (b.len() >= length).then_some((length, ()))
                })
                .await;
            answer.raw.clone_from(&body);
            answer.body = body;
        } else {
            self.until_close(&mut answer).await;
        }
        answer
    }

    /// A chunked body, checked line by line (RFC 9112 §7.1), with its trailer section.
    async fn chunked(&mut self, answer: &mut Answer) {
        loop {
            let (line, size) = self.take("a chunk-size line", parse_chunk_size).await;
            answer.raw.extend_from_slice(&line);
            if size == 0 {
                break;
            }
            let n = size as usize + 2;
            let (data, ()) = self
                .take("a whole chunk", |b| (b.len() >= n).then_some((n, ())))
                .await;
            assert!(data.ends_with(b"\r\n"), "chunk data end: {:?}", text(&data));
            answer.raw.extend_from_slice(&data);
            answer.body.extend_from_slice(&data[..n - 2]);
        }
        let (section, trailers) = self.take("the trailer section", parse_trailers).await;
        answer.raw.extend_from_slice(&section);
        answer.trailers = trailers;
    }

    /// A close-delimited body: everything up to a clean close, which a reset is not.
    async fn until_close(&mut self, answer: &mut Answer) {
        loop {
            match self.fill().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(err) => panic!("{err} in a close-delimited body: {:?}", text(&self.buf)),
            }
        }
        answer.body = std::mem::take(&mut self.buf);
        answer.raw.clone_from(&answer.body);
    }

    /// The proxy closes the connection cleanly (EOF, not a reset) and sends nothing more.
    async fn assert_closed(&mut self) {
        let got = self.fill().await;
        assert!(
            matches!(got, Ok(0)) && self.buf.is_empty(),
            "expected a clean close, got {got:?} with {:?}",
            text(&self.buf)
        );
    }
}

fn parse_head(buf: &[u8]) -> Option<(usize, (u16, Fields))> {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut slots);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let status = parsed.code.expect("status code");
            Some((len, (status, owned_fields(parsed.headers))))
        }
        Ok(httparse::Status::Partial) => None,
        Err(err) => panic!("not a response head ({err}): {:?}", text(buf)),
    }
}

fn parse_chunk_size(buf: &[u8]) -> Option<(usize, u64)> {
    match httparse::parse_chunk_size(buf) {
        Ok(httparse::Status::Complete(found)) => Some(found),
        Ok(httparse::Status::Partial) => None,
        Err(err) => panic!("bad chunk-size line ({err:?}): {:?}", text(buf)),
    }
}

fn parse_trailers(buf: &[u8]) -> Option<(usize, Fields)> {
    let mut slots = [httparse::EMPTY_HEADER; 16];
    match httparse::parse_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete((used, fields))) => Some((used, owned_fields(fields))),
        Ok(httparse::Status::Partial) => None,
        Err(err) => panic!("bad trailer section ({err}): {:?}", text(buf)),
    }
}

// ---------------------------------------------------------------------------------------------
// Upstreams and proxies

async fn proxy_for(upstream: SocketAddr) -> TestProxy {
    spawn_proxy(&simple_config(upstream, NO_PROFILE)).await
}

/// An upstream that answers every request on every connection with `bytes`.
async fn serving(bytes: &'static [u8]) -> FaultUpstream {
    spawn_fault(move |mut conn: FaultConn| async move {
        while conn.read_request().await.is_some() {
            conn.send(bytes).await;
        }
    })
    .await
}

/// An upstream that answers each connection's one request with a close-delimited body: no
/// length, no chunking, then the close (RFC 9112 §6.3 rule 8).
async fn close_delimited() -> FaultUpstream {
    spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n";
            conn.send(format!("{head}{TO_THE_CLOSE}").as_bytes()).await;
        }
    })
    .await
}

/// An upstream that records nothing but the connections made to it, and holds them.
async fn untouched() -> FaultUpstream {
    spawn_fault(|conn: FaultConn| conn.hold()).await
}

// ---------------------------------------------------------------------------------------------
// Framing chosen from the body

/// A body without a length goes to an HTTP/1.1 client chunked (RFC 9112 §7.1), ending in the
/// last chunk, so the connection survives the upstream's close and carries the next request.
#[tokio::test]
async fn close_delimited_body_is_chunked_to_an_http11_client_and_the_connection_kept() {
    let upstream = close_delimited().await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    for (path, close) in [("/one", ""), ("/two", "Connection: close\r\n")] {
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: a\r\n{close}\r\n").as_bytes())
            .await;
        let answer = conn.response(false).await;
        assert!(answer.head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
        assert_eq!(
            answer.values("transfer-encoding"),
            ["chunked"],
            "{answer:?}"
        );
        assert!(answer.values("content-length").is_empty(), "{answer:?}");
        assert_eq!(answer.text(), TO_THE_CLOSE);
        assert!(answer.raw.ends_with(b"\r\n0\r\n\r\n"), "{answer:?}");
        if close.is_empty() {
            assert!(answer.values("connection").is_empty(), "{answer:?}");
        }
    }
    conn.assert_closed().await;
    assert_eq!(upstream.connections(), 2);
    proxy.stop().await;
}

/// An HTTP/1.0 client cannot read chunked (RFC 9112 §7.1: not sent to HTTP/1.0), so the same
/// body runs to the close, in an answer that says `close`. Its status line says HTTP/1.1, the
/// highest version within the client's major one (RFC 9110 §2.5), as NGINX and HAProxy do.
#[tokio::test]
async fn close_delimited_body_runs_to_the_close_for_an_http10_client() {
    let upstream = close_delimited().await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    conn.send(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    // No length and no chunking: `response` reads to a clean close, or fails.
    let answer = conn.response(false).await;
    assert!(answer.head.starts_with("HTTP/1.1 200 OK\r\n"), "{answer:?}");
    assert!(answer.values("transfer-encoding").is_empty(), "{answer:?}");
    assert!(answer.values("content-length").is_empty(), "{answer:?}");
    assert_eq!(answer.values("connection"), ["close"], "{answer:?}");
    assert_eq!(answer.raw, TO_THE_CLOSE.as_bytes());
    proxy.stop().await;
}

/// An HTTP/1.0 client that asks for keep-alive gets it when the body has a length (RFC 9112
/// §9.3 and Appendix C.2.2), and its next request, without keep-alive, closes after.
#[tokio::test]
async fn http10_keep_alive_is_honoured_for_a_sized_response() {
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nsized").await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    conn.send(b"GET /one HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n")
        .await;
    let first = conn.response(false).await;
    assert!(first.head.starts_with("HTTP/1.1 200 OK\r\n"), "{first:?}");
    assert_eq!(first.values("connection"), ["keep-alive"], "{first:?}");
    assert_eq!(first.values("content-length"), ["5"], "{first:?}");
    assert_eq!(first.text(), "sized");
    conn.send(b"GET /two HTTP/1.0\r\nHost: a\r\n\r\n").await;
    let second = conn.response(false).await;
    assert!(second.head.starts_with("HTTP/1.1 200 OK\r\n"), "{second:?}");
    assert_eq!(second.values("connection"), ["close"], "{second:?}");
    assert_eq!(second.text(), "sized");
    conn.assert_closed().await;
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Date

/// A `Date` value is an IMF-fixdate (RFC 9110 §5.6.7), near enough to now.
fn assert_imf_fixdate(answer: &Answer) {
    let dates = answer.values("date");
    assert_eq!(dates.len(), 1, "one Date: {answer:?}");
    let date = dates[0];
    assert!(date.len() == 29 && date.ends_with(" GMT"), "{date:?}");
    let when = httpdate::parse_http_date(date).unwrap_or_else(|e| panic!("{date:?}: {e}"));
    // Formatting it again gives the same text only for the IMF-fixdate form.
    assert_eq!(httpdate::fmt_http_date(when), date);
    let skew = SystemTime::now()
        .duration_since(when)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(60), "{date:?} is {skew:?} off");
}

/// An origin server with a clock sends `Date` (RFC 9110 §6.6.1), and the proxy answers as one:
/// a relayed response from an upstream that sent none, the proxy's own error, and the
/// parser's refusal all carry it.
#[tokio::test]
async fn every_response_has_an_imf_fixdate_date() {
    // The upstream sends no `Date`: any the client gets is the proxy's.
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let config = simple_config(upstream.addr, NO_PROFILE)
        .replace("path_prefix = \"/\"", "path_prefix = \"/api\"");
    let proxy = spawn_proxy(&config).await;
    let cases: [(&[u8], u16); 3] = [
        (
            b"GET /api HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            200,
        ),
        (
            b"GET /other HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            404,
        ),
        (b"GET / HTTP/2.0\r\n\r\n", 505),
    ];
    for (request, status) in cases {
        let mut conn = connect(proxy.addr).await;
        conn.send(request).await;
        let answer = conn.response(false).await;
        assert_eq!(answer.status, status, "{answer:?}");
        assert_imf_fixdate(&answer);
    }
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Responses without a body

/// An upstream that answers HEAD with a length and no body, `/empty` with a 204 that wrongly
/// carries `Content-Length: 0`, and anything else with "after".
async fn bodiless_upstream() -> FaultUpstream {
    spawn_fault(|mut conn: FaultConn| async move {
        while let Some(head) = conn.read_request().await {
            if head.starts_with("HEAD ") {
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
                    .await;
            } else if head.starts_with("GET /empty ") {
                conn.send(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                    .await;
            } else {
                conn.send(&ok_response("after")).await;
            }
        }
    })
    .await
}

/// The answer to a HEAD keeps the length a GET would have (RFC 9110 §9.3.2) but has no body;
/// a 204 has neither a body nor a `Content-Length` (RFC 9110 §8.6, §15.3.5). All three
/// answers share one connection: a stray body byte would sit in front of the next status line.
#[tokio::test]
async fn head_and_204_responses_carry_no_body_bytes() {
    let upstream = bodiless_upstream().await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    conn.send(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let head = conn.response(true).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(head.values("content-length"), ["5"], "{head:?}");
    assert!(head.values("transfer-encoding").is_empty(), "{head:?}");
    conn.send(b"GET /empty HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let empty = conn.response(true).await;
    assert_eq!(empty.status, 204, "{empty:?}");
    assert!(empty.values("content-length").is_empty(), "{empty:?}");
    assert!(empty.values("transfer-encoding").is_empty(), "{empty:?}");
    conn.send(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let after = conn.response(false).await;
    assert_eq!((after.status, after.text().as_str()), (200, "after"));
    conn.assert_closed().await;
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Trailers

/// Trailer fields after the upstream's last chunk reach the client in the trailer section of
/// its own chunked body (RFC 9112 §7.1.2), and the body still ends where it should.
#[tokio::test]
async fn upstream_trailers_reach_the_client_in_the_chunked_trailer_section() {
    let upstream = serving(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n\
          5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
    )
    .await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    // The client says it accepts trailers (RFC 9110 §10.1.4), so nothing excuses dropping them.
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: TE, close\r\n\r\n")
        .await;
    let answer = conn.response(false).await;
    assert_eq!(
        answer.values("transfer-encoding"),
        ["chunked"],
        "{answer:?}"
    );
    assert_eq!(answer.text(), "hello");
    let want = [("x-checksum".to_string(), "abc".to_string())];
    assert_eq!(answer.trailers, want, "{:?}", text(&answer.raw));
    conn.assert_closed().await;
    proxy.stop().await;
}

/// Trailer fields that must be known before the content (RFC 9110 §6.5.1: framing, routing,
/// authentication, response controls, content format) and hop-by-hop ones are dropped from an
/// upstream's trailer section; the rest still reach the client.
const UNSAFE_TRAILERS: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
    5\r\nhello\r\n0\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\
    Set-Cookie: session=stolen\r\nConnection: close\r\nKeep-Alive: 5\r\nTE: trailers\r\n\
    Location: /elsewhere\r\nX-Checksum: abc\r\n\r\n";

#[tokio::test]
async fn trailers_that_belong_in_the_head_are_dropped() {
    let upstream = serving(UNSAFE_TRAILERS).await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: TE, close\r\n\r\n")
        .await;
    let answer = conn.response(false).await;
    assert_eq!(answer.text(), "hello");
    let want = [("x-checksum".to_string(), "abc".to_string())];
    assert_eq!(answer.trailers, want, "{:?}", text(&answer.raw));
    conn.assert_closed().await;
    proxy.stop().await;
}

/// The same trailers to an HTTP/2 client: before they were filtered, the connection-specific
/// ones made the HTTP/2 layer reset the stream (RFC 9113 §8.2.2) after the whole body.
#[tokio::test]
async fn an_http2_client_gets_the_body_and_the_safe_trailers() {
    let upstream = serving(UNSAFE_TRAILERS).await;
    let proxy = proxy_for(upstream.addr).await;
    let request = http::Request::get(proxy.url("/"))
        .header("te", "trailers")
        .body(full(""))
        .expect("request");
    let response = h2_client().request(request).await.expect("response");
    let collected = response
        .into_body()
        .collect()
        .await
        .expect("the stream ends cleanly, not reset");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(trailers["x-checksum"], "abc");
    assert_eq!(collected.to_bytes(), "hello");
    proxy.stop().await;
}

/// A client's request trailers lose the same fields before the upstream reads them: a
/// `Host` or `X-Forwarded-For` after the body must not re-route or re-attribute a request
/// the proxy has already routed.
#[tokio::test]
async fn request_trailers_that_belong_in_the_head_are_dropped() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_head().await.is_some() && conn.read_until(b"x-checksum: abc\r\n\r\n").await {
            conn.send(&ok_response("ok")).await;
        }
    })
    .await;
    let proxy = spawn_proxy(&streaming_chunked(&simple_config(
        upstream.addr,
        NO_PROFILE,
    )))
    .await;
    let mut conn = connect(proxy.addr).await;
    conn.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          3\r\nabc\r\n0\r\nHost: evil.example\r\nX-Forwarded-For: 10.0.0.1\r\n\
          Content-Length: 3\r\nAuthorization: Bearer x\r\nX-Checksum: abc\r\n\r\n",
    )
    .await;
    let answer = conn.response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "ok"));
    let seen = upstream.all_bytes();
    let trailer = &seen[seen.find("\r\n0\r\n").expect("last chunk")..];
    assert_eq!(trailer, "\r\n0\r\nx-checksum: abc\r\n\r\n", "{seen:?}");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Refused heads

/// Sends `request` (from a task, so that a large one cannot hold up the read) to a proxy whose
/// upstream must never be contacted; returns the answer, after checking that the proxy
/// closed the connection after it.
async fn refused(request: Vec<u8>) -> Answer {
    let upstream = untouched().await;
    let proxy = proxy_for(upstream.addr).await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    // The proxy may answer and stop reading before the whole request is written. The write
    // half is kept, not shut down, so that any close is the proxy's own.
    let writer = tokio::spawn(async move { write.write_all(&request).await.map(|()| write) });
    let mut conn = Conn {
        stream: read,
        buf: Vec::new(),
    };
    let answer = conn.response(false).await;
    conn.assert_closed().await;
    let _ = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("writer ends");
    assert_eq!(upstream.connections(), 0, "the upstream was contacted");
    proxy.stop().await;
    answer
}

/// A request line with a version other than HTTP/1.x (and not the HTTP/2 preface) is 505
/// (RFC 9110 §15.6.6), and the connection closes.
#[tokio::test]
async fn http2_request_line_is_505_and_closes() {
    let answer = refused(b"GET / HTTP/2.0\r\n\r\n".to_vec()).await;
    assert!(
        answer
            .head
            .starts_with("HTTP/1.1 505 HTTP Version Not Supported\r\n"),
        "{answer:?}"
    );
    assert_eq!(answer.values("connection"), ["close"], "{answer:?}");
}

/// `http/1.1` is not a version at all (RFC 9112 §2.3: the name is case-sensitive): a malformed
/// request line, 400, as NGINX and HAProxy answer, not 505.
#[tokio::test]
async fn a_lowercase_version_is_400() {
    let answer = refused(b"GET / http/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
    assert!(
        answer.head.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
}

/// RFC 9110 §2.5: a higher minor version of HTTP/1 is served as HTTP/1.1, not refused.
#[tokio::test]
async fn http_1_2_is_served_as_http_1_1() {
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    conn.send(b"GET /v HTTP/1.2\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let answer = conn.response(false).await;
    assert!(answer.head.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(
        upstream.all_bytes().starts_with("GET /v HTTP/1.1\r\n"),
        "{:?}",
        upstream.all_bytes()
    );
    proxy.stop().await;
}

/// A head far past what the parser reads (`server::max_head`: twice `max_header_bytes` plus
/// `limits.uri`, 72 KiB by default) is a bare 431 (RFC 6585 §5) and the connection closes.
#[tokio::test]
async fn head_far_over_the_limit_is_a_bare_431() {
    let value = "v".repeat(200 << 10);
    let request = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {value}\r\n\r\n");
    let answer = refused(request.into_bytes()).await;
    assert!(
        answer
            .head
            .starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer:?}"
    );
    assert_eq!(answer.values("connection"), ["close"], "{answer:?}");
    assert_eq!(answer.values("content-length"), ["0"], "{answer:?}");
    assert!(answer.body.is_empty(), "{answer:?}");
}

/// A NUL is not allowed in a request target (RFC 9112 §3.2, RFC 3986 §2): 400, and the
/// connection closes.
#[tokio::test]
async fn nul_in_the_request_line_is_400() {
    let answer = refused(b"GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec()).await;
    assert!(
        answer.head.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert_eq!(answer.values("connection"), ["close"], "{answer:?}");
}

/// A target in none of RFC 9112 §3.2's forms is 400: without a leading `/` the URI parser
/// would read `echo` or `evil.example:80` as an authority, a host the Host field does not
/// name. `*` is for OPTIONS only.
#[tokio::test]
async fn a_target_in_no_form_is_400() {
    let heads: [&[u8]; 4] = [
        b"DELETE echo HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET evil.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET ?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
    ];
    for head in heads {
        let answer = refused(head.to_vec()).await;
        assert!(
            answer.head.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{}: {answer:?}",
            String::from_utf8_lossy(head)
        );
    }
}

/// A target longer than any URI can hold (65534 bytes), in a head the parser still reads
/// whole, is 414 URI Too Long (RFC 9110 §15.5.15), not a 400.
#[tokio::test]
async fn a_target_beyond_what_a_uri_holds_is_414() {
    let request = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(70_000));
    let answer = refused(request.into_bytes()).await;
    assert!(
        answer.head.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
        "{answer:?}"
    );
}

/// RFC 9112 §3.2: an HTTP/1.1 request without Host, or any request with two, is answered 400
/// (a proxy must not guess which host was meant).
#[tokio::test]
async fn missing_or_repeated_host_is_400() {
    let heads: [&[u8]; 2] = [
        b"GET /a HTTP/1.1\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    ];
    for head in heads {
        let answer = refused(head.to_vec()).await;
        assert!(
            answer.head.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Leading empty lines

/// Empty lines before a request line are ignored (RFC 9112 §2.2): at the start of the
/// connection, and the extra CRLF some clients send after a POST body.
#[tokio::test]
async fn empty_lines_before_a_request_line_are_ignored() {
    let upstream = spawn_upstream(|seen| async move { reply(200, seen.uri) }).await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    conn.send(b"\r\n\r\nGET /first HTTP/1.1\r\nHost: a\r\n\r\n")
        .await;
    let first = conn.response(false).await;
    assert_eq!((first.status, first.text().as_str()), (200, "/first"));
    conn.send(
        b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi\r\n\
          GET /third HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    for path in ["/second", "/third"] {
        let answer = conn.response(false).await;
        assert_eq!((answer.status, answer.text().as_str()), (200, path));
    }
    conn.assert_closed().await;
    let uris: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/first", "/second", "/third"]);
    assert_eq!(upstream.requests()[1].body, "hi");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// An early answer while the client keeps sending

/// The proxy answers 413 from the declared length (RFC 9110 §15.5.14) while the client, not
/// reading, keeps writing 2 MiB of body. The client still reads the whole 413 and then a
/// clean close: a reset in its place could destroy the answer before it is read (RFC 9112
/// §9.6, on closing in stages).
#[tokio::test]
async fn early_413_is_read_whole_while_the_client_keeps_sending() {
    let upstream = untouched().await;
    let extra = format!("{NO_PROFILE}\n\n[limits]\nrequest_body = \"1KiB\"");
    let proxy = spawn_proxy(&simple_config(upstream.addr, &extra)).await;
    let size = 2 << 20;
    let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n");
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    // Ends on its own: done, or failed once the proxy is gone. The write half is kept, not
    // shut down, so that the close is the proxy's own.
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        write.write_all(&vec![b'x'; size]).await.map(|()| write)
    });
    let mut conn = Conn {
        stream: read,
        buf: Vec::new(),
    };
    let answer = conn.response(false).await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.values("connection"), ["close"], "{answer:?}");
    conn.assert_closed().await;
    let _ = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("writer ends");
    assert_eq!(upstream.connections(), 0, "the upstream was contacted");
    proxy.stop().await;
}

/// The upstream answers a large upload early, with a large body, without reading the upload.
/// The client keeps uploading while it reads: it still gets the whole answer and a clean
/// close, however much it sends meanwhile (a reset would destroy what it had not read yet).
#[tokio::test]
async fn an_early_upstream_answer_is_read_whole_while_the_client_keeps_uploading() {
    const ANSWER: usize = 256 << 10;
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_head().await.is_some() {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {ANSWER}\r\n\r\n");
            conn.send(head.as_bytes()).await;
            conn.send(&vec![b'a'; ANSWER]).await;
            conn.hold().await;
        }
    })
    .await;
    let proxy = proxy_for(upstream.addr).await;
    let size = 16 << 20;
    let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small window, like a client on a slower path: the answer waits in the proxy's
    // socket while the upload goes on.
    socket.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
    let stream = socket.connect(proxy.addr).await.expect("connect");
    let (read, mut write) = stream.into_split();
    let writer = tokio::spawn(async move {
        write.write_all(head.as_bytes()).await?;
        for _ in 0..size / (64 << 10) {
            write.write_all(&[b'x'; 64 << 10]).await?;
        }
        Ok::<_, std::io::Error>(write)
    });
    // Read in small steps, as a client busy uploading does: the proxy has sent the whole
    // answer long before this has read it.
    let mut read = read;
    let mut got = Vec::new();
    let ended = loop {
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(LIMIT, read.read(&mut buf)).await {
            Err(_) => break "no close in time".to_string(),
            Ok(Ok(0)) => break "closed".to_string(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(err)) => break err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let head_end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(0, |p| p + 4);
    assert!(
        got.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        text(&got[..head_end])
    );
    assert_eq!(
        got.len() - head_end,
        ANSWER,
        "the whole answer, then: {ended}"
    );
    assert_eq!(ended, "closed");
    let _ = tokio::time::timeout(LIMIT, writer)
        .await
        .expect("writer ends");
    proxy.stop().await;
}

/// `OPTIONS *` (asterisk-form, RFC 9112 §3.2.4) asks about the server as a whole; it is
/// forwarded as sent.
#[tokio::test]
async fn options_asterisk_is_forwarded_as_sent() {
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(upstream.addr).await;
    let mut conn = connect(proxy.addr).await;
    conn.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let answer = conn.response(false).await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "ok"));
    assert!(
        upstream.all_bytes().starts_with("OPTIONS * HTTP/1.1\r\n"),
        "{:?}",
        upstream.all_bytes()
    );
    proxy.stop().await;
}
