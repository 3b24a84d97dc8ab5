//! The upstream HTTP/1.1 client on the wire: raw TCP upstreams answer with hand-written bytes
//! (chunked with extensions and trailers, close-delimited, HTTP/1.0, invalid heads, folded
//! fields, custom reasons, HEAD), and each test checks what the client got and how the proxy
//! framed and pooled its upstream connections.
mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::fault::{ok_response, spawn_fault, FaultConn, FaultUpstream};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Route setting that turns the contract profile off, so the proxy's own statuses show.
const NO_PROFILE: &str = r#"profile = "none""#;

/// How long any single wait in these tests may take before it counts as a hang.
const LIMIT: Duration = Duration::from_secs(10);

async fn proxy_for(upstream: &FaultUpstream) -> TestProxy {
    spawn_proxy(&simple_config(upstream.addr, NO_PROFILE)).await
}

/// A proxy whose upstream has `chunked_requests = true`: a long body of unknown length
/// streams chunked.
async fn streaming_proxy_for(upstream: &FaultUpstream) -> TestProxy {
    spawn_proxy(&streaming_chunked(&simple_config(
        upstream.addr,
        NO_PROFILE,
    )))
    .await
}

/// The proxy's own 502, saying `why`.
fn assert_bad_gateway(reply: &Reply, why: &str) {
    let text = reply.text();
    assert_eq!(reply.status, 502, "{text}");
    assert!(text.contains(why), "{text}");
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

/// An upstream that answers one request per connection with `bytes`, then closes it.
async fn answering_then_closing(bytes: &'static [u8]) -> FaultUpstream {
    spawn_fault(move |mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            conn.send(bytes).await;
        }
    })
    .await
}

/// An upstream that answers one request with `bytes`, then keeps the connection open, so
/// only the proxy can end it.
async fn answering_then_holding(bytes: &'static [u8]) -> FaultUpstream {
    spawn_fault(move |mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            conn.send(bytes).await;
            conn.hold().await;
        }
    })
    .await
}

/// Reads up to the end of a response head (bounded); returns the head and any bytes after it.
async fn read_head(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(LIMIT, async {
        let mut buf = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(out.len(), |p| p + 4);
    let rest = out.split_off(end);
    (String::from_utf8_lossy(&out).into_owned(), rest)
}

/// Writes `bytes` on a new connection and reads until the proxy closes it; a proxy that
/// keeps it open past `LIMIT` fails the test (a hang, not an abort).
async fn until_closed(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the proxy closes the connection in time");
    String::from_utf8_lossy(&out).into_owned()
}

/// One request as the upstream received it, parsed and with its body decoded.
#[derive(Debug)]
struct Sent {
    method: String,
    path: String,
    version: u8,
    /// Lowercased names, in order, repeats kept.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Sent {
    fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Every request in the bytes one upstream connection received, parsed strictly.
fn parse_requests(mut bytes: &[u8]) -> Vec<Sent> {
    let mut sent = Vec::new();
    while !bytes.is_empty() {
        let (request, used) = parse_request(bytes);
        sent.push(request);
        bytes = &bytes[used..];
    }
    sent
}

fn parse_request(bytes: &[u8]) -> (Sent, usize) {
    let mut slots = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut slots);
    let head = match parsed.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "not a whole request head ({other:?}): {:?}",
            String::from_utf8_lossy(bytes)
        ),
    };
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            let value = std::str::from_utf8(h.value).expect("ASCII field value");
            (h.name.to_ascii_lowercase(), value.to_owned())
        })
        .collect();
    let mut request = Sent {
        method: parsed.method.expect("method").to_owned(),
        path: parsed.path.expect("path").to_owned(),
        version: parsed.version.expect("version"),
        headers,
        body: Vec::new(),
    };
    let rest = &bytes[head..];
    let used = if request.values("transfer-encoding") == ["chunked"] {
        decode_chunked(rest, &mut request.body)
    } else {
        let length = match request.values("content-length").as_slice() {
            [] => 0,
            [one] => one.parse::<usize>().expect("numeric Content-Length"),
            many => panic!("several Content-Length fields: {many:?}"),
        };
        request.body = rest[..length].to_vec();
        length
    };
    (request, head + used)
}

/// Decodes a chunked body at the start of `bytes` into `body`; returns the bytes it took.
fn decode_chunked(bytes: &[u8], body: &mut Vec<u8>) -> usize {
    let mut at = 0;
    loop {
        let (line, size) = match httparse::parse_chunk_size(&bytes[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            other => panic!("bad chunk size at {at}: {other:?}"),
        };
        at += line;
        if size == 0 {
            break;
        }
        let size = size as usize;
        body.extend_from_slice(&bytes[at..at + size]);
        assert_eq!(&bytes[at + size..at + size + 2], b"\r\n", "chunk data end");
        at += size + 2;
    }
    let mut slots = [httparse::EMPTY_HEADER; 16];
    match httparse::parse_headers(&bytes[at..], &mut slots) {
        Ok(httparse::Status::Complete((used, _))) => at + used,
        other => panic!("bad trailer section: {other:?}"),
    }
}

/// Every request the upstream received, over all its connections.
fn received(upstream: &FaultUpstream) -> Vec<Sent> {
    upstream
        .logs()
        .iter()
        .flat_map(|log| parse_requests(&log.bytes))
        .collect()
}

fn sent_to<'a>(requests: &'a [Sent], path: &str) -> &'a Sent {
    requests
        .iter()
        .find(|r| r.path == path)
        .unwrap_or_else(|| panic!("{path} never reached the upstream: {requests:?}"))
}

// ---------------------------------------------------------------------------------------------
// Response bodies and connection reuse

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
    5;foo=bar\r\nhello\r\n1;a=b;flag\r\n \r\n6\r\nworld!\r\n\
    0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n";

/// Chunk extensions are skipped and trailers read to the end of the body, so the client gets
/// the whole body and the connection, read to its end, carries the next request.
#[tokio::test]
async fn chunked_body_with_extensions_and_trailers_is_relayed_and_its_connection_reused() {
    let upstream = serving(CHUNKED).await;
    let proxy = proxy_for(&upstream).await;
    for path in ["/one", "/two"] {
        let reply = get(&proxy.url(path)).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "hello world!"));
    }
    assert_eq!(upstream.connections(), 1, "the connection was not reused");
    proxy.stop().await;
}

/// With no length and no chunking the body runs to the close (RFC 9112 §6.3 rule 8); such a
/// connection is over, so the next request opens another.
#[tokio::test]
async fn close_delimited_body_is_relayed_whole_and_never_reused() {
    let upstream = answering_then_closing(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nall of this, up to the close",
    )
    .await;
    let proxy = proxy_for(&upstream).await;
    for path in ["/one", "/two"] {
        let reply = get(&proxy.url(path)).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.text(), "all of this, up to the close");
    }
    assert_eq!(upstream.connections(), 2);
    proxy.stop().await;
}

/// An HTTP/1.0 response closes its connection unless it says keep-alive (RFC 9112 §9.3). The
/// upstream here never closes, so only the proxy's reading of the version decides.
#[tokio::test]
async fn http10_response_is_reused_only_with_keep_alive() {
    let cases: &[(&[u8], usize)] = &[
        (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nold!", 2),
        (
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nold!",
            1,
        ),
    ];
    for &(bytes, connections) in cases {
        let upstream = serving(bytes).await;
        let proxy = proxy_for(&upstream).await;
        for path in ["/one", "/two"] {
            let reply = get(&proxy.url(path)).await;
            assert_eq!((reply.status, reply.text().as_str()), (200, "old!"));
        }
        assert_eq!(upstream.connections(), connections, "{bytes:?}");
        if connections == 2 {
            wait_until(LIMIT, "the proxy closed the HTTP/1.0 connection", || {
                upstream.logs().first().is_some_and(|l| l.closed_by_peer)
            })
            .await;
        }
        proxy.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Invalid responses

/// Invalid heads are the upstream's fault: the proxy answers 502 itself, as
/// tests/reliability.rs expects of invalid upstream responses.
#[tokio::test]
async fn invalid_upstream_heads_are_502() {
    let cases: &[(&str, &[u8])] = &[
        (
            "conflicting Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef",
        ),
        (
            "status below 100",
            b"HTTP/1.1 099 Too Low\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "unasked 101",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n",
        ),
        // Any coding but chunked would reach the client still applied and unannounced.
        (
            "gzip then chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        (
            "chunked then gzip",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nabc",
        ),
        (
            "chunked twice",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let upstream = answering_then_holding(bytes).await;
        let proxy = proxy_for(&upstream).await;
        let reply = get(&proxy.url("/")).await;
        assert_eq!(reply.status, 502, "{what}: {}", reply.text());
        assert_eq!(reply.header("x-restatus-source"), Some("proxy"), "{what}");
        proxy.stop().await;
    }
}

/// A response head with `fields` header fields, `Content-Length` among them.
fn head_with_fields(fields: usize) -> &'static [u8] {
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
    for i in 1..fields {
        head.push_str(&format!("Set-Cookie: c{i}=v{i}; Path=/\r\n"));
    }
    head.push_str("\r\nok");
    Box::leak(head.into_bytes().into_boxed_slice())
}

/// Legacy services send many `Set-Cookie` fields: up to 256 fields are relayed, more make the
/// head invalid (HAProxy's default stops at 101, `tune.http.maxhdr`).
#[tokio::test]
async fn response_heads_of_up_to_256_fields_are_relayed() {
    // Read raw: hyper's own client refuses more than 100 fields.
    const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let upstream = serving(head_with_fields(256)).await;
    let proxy = proxy_for(&upstream).await;
    let reply = until_closed(proxy.addr, REQUEST).await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert_eq!(reply.matches("\r\nset-cookie: c").count(), 255, "{reply}");
    assert!(
        reply.contains("set-cookie: c255=v255; Path=/\r\n"),
        "{reply}"
    );
    assert!(reply.ends_with("\r\n\r\nok"), "{reply}");
    proxy.stop().await;

    let upstream = serving(head_with_fields(257)).await;
    let proxy = proxy_for(&upstream).await;
    let reply = until_closed(proxy.addr, REQUEST).await;
    assert!(reply.starts_with("HTTP/1.1 502 "), "{reply}");
    assert!(reply.contains("x-restatus-source: proxy\r\n"), "{reply}");
    assert!(
        reply.contains("upstream sent an invalid response: more than 256 header fields"),
        "{reply}"
    );
    proxy.stop().await;

    // 200 fields of 1.5 KB: a 300 KB head, over the 256 KiB limit however it arrives.
    let mut head = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
    for i in 0..200 {
        head.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(1500)));
    }
    head.push_str("\r\nok");
    let upstream = serving(Box::leak(head.into_bytes().into_boxed_slice())).await;
    let proxy = proxy_for(&upstream).await;
    let reply = until_closed(proxy.addr, REQUEST).await;
    assert!(
        reply.starts_with("HTTP/1.1 502 "),
        "{}",
        &reply[..reply.len().min(300)]
    );
    assert!(reply.contains("response head over 256 KiB"), "{reply}");
    proxy.stop().await;
}

const BAD_CHUNK: &[u8] = b"zz\r\nmore\r\n0\r\n\r\n";

/// Sends a chunked head and one good chunk, then, once `go` is notified, a malformed chunk
/// size; keeps the connection open, so only the proxy can end it.
async fn breaking_after_first_chunk(go: Arc<Notify>) -> FaultUpstream {
    spawn_fault(move |mut conn: FaultConn| {
        let go = go.clone();
        async move {
            if conn.read_request().await.is_some() {
                conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                    .await;
                go.notified().await;
                conn.send(BAD_CHUNK).await;
                conn.hold().await;
            }
        }
    })
    .await
}

/// A malformed chunk size that comes after the client has the head: the client's body is cut
/// off, never completed as if the upstream's body had ended well, and the upstream
/// connection is closed rather than pooled.
#[tokio::test]
async fn malformed_chunk_size_after_the_head_aborts_the_body() {
    let go = Arc::new(Notify::new());
    let upstream = breaking_after_first_chunk(go.clone()).await;
    let proxy = proxy_for(&upstream).await;
    let request = Request::get(proxy.url("/"))
        .body(full(""))
        .expect("request");
    let response = tokio::time::timeout(LIMIT, client().request(request))
        .await
        .expect("a response head in time")
        .expect("a response head");
    assert_eq!(response.status(), 200, "the head was already relayed");
    go.notify_one();
    let body = tokio::time::timeout(LIMIT, response.into_body().collect())
        .await
        .expect("the body ends (in error) instead of hanging");
    assert!(
        body.is_err(),
        "a broken chunked body reached the client as complete: {:?}",
        body.map(|b| b.to_bytes())
    );
    wait_until(LIMIT, "the broken connection closed", || {
        upstream.logs().first().is_some_and(|l| l.closed_by_peer)
    })
    .await;
    proxy.stop().await;
}

/// The same malformed chunk in the upstream's first write, after a good one: the client gets
/// the head and the good chunk, then the connection closes without a last chunk.
#[tokio::test]
async fn malformed_chunk_size_with_the_head_cuts_the_body_after_the_good_chunk() {
    let upstream = answering_then_holding(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n",
    )
    .await;
    let proxy = proxy_for(&upstream).await;
    let text = until_closed(proxy.addr, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
    assert!(text.ends_with("\r\n\r\n5\r\nhello\r\n"), "{text:?}");
    wait_until(LIMIT, "the broken connection closed", || {
        upstream.logs().first().is_some_and(|l| l.closed_by_peer)
    })
    .await;
    proxy.stop().await;
}

/// A body known to be broken before any of it could be relayed (its first chunk size is
/// malformed, in the same write as the head) is answered 502 by the proxy: the client gets an
/// error it can read, not a connection closed before a status line.
#[tokio::test]
async fn body_broken_before_its_first_byte_is_a_502() {
    let upstream = answering_then_holding(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nmore\r\n0\r\n\r\n",
    )
    .await;
    let proxy = proxy_for(&upstream).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
    wait_until(LIMIT, "the broken connection closed", || {
        upstream.logs().first().is_some_and(|l| l.closed_by_peer)
    })
    .await;
    proxy.stop().await;
}

const MISSING_RULE: &str = r#"profile = "none"

[[rules]]
name = "missing"
when = { status = 200, body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }
"#;

/// A chunked body that came in the same write as its head, split over two chunks, is still
/// read whole by a body rule (its first chunk was taken with the head) and relayed intact.
#[tokio::test]
async fn chunked_body_read_with_its_head_is_inspected_whole() {
    let upstream = serving(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"error\":\r\n15\r\n{\"code\":\"NOT_FOUND\"}}\r\n0\r\n\r\n",
    )
    .await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, MISSING_RULE)).await;
    let reply = get(&proxy.url("/item")).await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(reply.text(), r#"{"error":{"code":"NOT_FOUND"}}"#);
    proxy.stop().await;
}

/// A chunked body that turns out malformed while a body rule reads it is a 502 that says the
/// response was invalid (nothing of it had been sent).
#[tokio::test]
async fn chunked_body_malformed_under_inspection_is_an_invalid_response() {
    let upstream =
        serving(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n{\"error\":\r\nzz\r\n")
            .await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, MISSING_RULE)).await;
    let reply = get(&proxy.url("/item")).await;
    assert_bad_gateway(&reply, "invalid response");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Head fields and status line

/// An obs-folded field value (RFC 9112 §5.2) is unfolded into spaces, never relayed with its
/// line break (which would be a header injection on the client side).
#[tokio::test]
async fn folded_header_reaches_the_client_unfolded() {
    let upstream =
        serving(b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(&upstream).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    let value = reply.header("x-folded").expect("x-folded relayed");
    assert!(value.starts_with('a') && value.ends_with('b'), "{value:?}");
    assert!(!value.contains(['\r', '\n']), "{value:?}");
    proxy.stop().await;
}

/// Field lines that are not valid HTTP (no colon, a space in the name) are not relayed, the
/// valid ones around them are, and the service's owners get an `invalid_header` record.
#[tokio::test]
async fn invalid_header_lines_are_dropped_and_recorded() {
    let upstream = serving(
        b"HTTP/1.1 200 OK\r\nX-Before: 1\r\nnot a field\r\nBad Name: 2\r\nX-After: 3\r\n\
          Content-Length: 2\r\n\r\nok",
    )
    .await;
    let proxy = proxy_for(&upstream).await;
    let text = raw(
        proxy.addr,
        b"GET /things HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("x-before: 1\r\n") && lower.contains("x-after: 3\r\n"),
        "{text}"
    );
    assert!(
        !lower.contains("not a field") && !lower.contains("bad name"),
        "{text}"
    );
    let invalid = proxy.records_of_kind("invalid_header");
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    assert_eq!(invalid[0]["path"], "/things");
    assert_eq!(invalid[0]["status"], 200);
    // A well-formed head writes no record.
    let upstream = serving(b"HTTP/1.1 200 OK\r\nX-Fine: 1\r\nContent-Length: 2\r\n\r\nok").await;
    let clean = proxy_for(&upstream).await;
    assert_eq!(get(&clean.url("/")).await.status, 200);
    assert!(clean.records().is_empty(), "{:?}", clean.records());
    clean.stop().await;
    proxy.stop().await;
}

/// Status lines hand-written servers send: two spaces after the version (relayed, as NGINX
/// and HAProxy do), and a control character in the reason phrase (the status is kept, with
/// its standard reason phrase, and recorded).
#[tokio::test]
async fn odd_status_lines_of_legacy_servers_are_relayed() {
    let upstream = serving(b"HTTP/1.1  201  Made It\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(&upstream).await;
    let request = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    let text = raw(proxy.addr, request).await;
    assert!(text.starts_with("HTTP/1.1 201 Made It\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    proxy.stop().await;
    let upstream = serving(b"HTTP/1.1 200 O\x01K\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(&upstream).await;
    let text = raw(proxy.addr, request).await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
    let invalid = proxy.records_of_kind("invalid_header");
    assert_eq!(invalid.len(), 1, "{invalid:?}");
    proxy.stop().await;
}

/// RFC 9110 §15: a code from 600 to 999 is invalid and to be taken as a 5xx. Without a
/// profile it is relayed, as NGINX and HAProxy do; the documented profile makes it a 500.
#[tokio::test]
async fn a_status_above_599_is_relayed_and_read_as_a_5xx() {
    let upstream = serving(b"HTTP/1.1 600 Whatever\r\nContent-Length: 2\r\n\r\nno").await;
    let proxy = proxy_for(&upstream).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!((reply.status, reply.text().as_str()), (600, "no"));
    proxy.stop().await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 500);
    let records = proxy.records_of_kind("status");
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["upstream_status"], 600);
    assert_eq!(records[0]["rule"], "documented/server-error-is-500");
    proxy.stop().await;
}

/// Chunked framing with bare LF line ends, as some hand-written servers send it (RFC 9112
/// §2.2 lets a recipient accept them), and a chunk size with more leading zeros than
/// digits: the body is relayed whole and the connection reused.
#[tokio::test]
async fn chunked_framing_with_bare_lf_and_leading_zeros_is_read() {
    let bodies: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n6\r\n world\n0\n\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          00000000000000005\r\nhello\r\n6\r\n world\r\n0\r\nX-Sum: 1\n\n",
    ];
    for bytes in bodies {
        let upstream = serving(bytes).await;
        let proxy = proxy_for(&upstream).await;
        for path in ["/one", "/two"] {
            let reply = get(&proxy.url(path)).await;
            assert_eq!((reply.status, reply.text().as_str()), (200, "hello world"));
        }
        assert_eq!(upstream.connections(), 1, "the connection was not reused");
        proxy.stop().await;
    }
}

/// RFC 9112 §6.3 (3): with both `Transfer-Encoding` and `Content-Length`, chunked framing
/// wins and the length is removed before the response goes on, as HAProxy does. It hints at
/// response splitting, so the connection is closed and the service's owners get a record.
#[tokio::test]
async fn a_length_beside_chunked_is_dropped_and_recorded() {
    let upstream = serving(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = proxy_for(&upstream).await;
    for path in ["/one", "/two"] {
        let reply = get(&proxy.url(path)).await;
        assert_eq!((reply.status, reply.text().as_str()), (200, "hello"));
        assert_ne!(reply.header("content-length"), Some("3"));
    }
    assert_eq!(upstream.connections(), 2, "a connection was reused");
    let records = proxy.records_of_kind("conflicting_framing");
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["upstream_status"], 200);
    proxy.stop().await;
}

/// A dropped line that names `Content-Length` or `Transfer-Encoding` would leave the body's
/// framing to a guess (RFC 9112 §6.3): the response is refused as invalid, at once.
#[tokio::test]
async fn an_invalid_framing_line_is_a_502_not_a_dropped_line() {
    let heads: [&'static [u8]; 2] = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\x01\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\x01\r\n\r\nhello",
    ];
    for head in heads {
        let upstream = serving(head).await;
        let proxy = proxy_for(&upstream).await;
        let reply = tokio::time::timeout(LIMIT, get(&proxy.url("/")))
            .await
            .expect("answered at once");
        assert_bad_gateway(&reply, "Content-Length or Transfer-Encoding");
        proxy.stop().await;
    }
}

/// A trailer section that is not valid fields is dropped; the body before it is complete and
/// reaches the client whole, with its last chunk.
#[tokio::test]
async fn an_invalid_trailer_section_is_dropped_and_the_body_ends_normally() {
    let upstream = serving(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\
          0\r\nBad Trailer\r\nX-Sum: 1\r\n\r\n",
    )
    .await;
    let proxy = proxy_for(&upstream).await;
    let text = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("5\r\nhello\r\n0\r\n\r\n"), "{text}");
    // The upstream connection stays usable: the next request is answered on it.
    assert_eq!(get(&proxy.url("/again")).await.text(), "hello");
    assert_eq!(upstream.connections(), 1);
    proxy.stop().await;
}

/// RFC 9112 §6.1: with `chunked_requests = true`, a body of unknown length (chunked from the
/// client) goes to a server that may speak only HTTP/1.0 whole, with a `Content-Length`, not chunked, which it would read
/// as no body at all: before the target has answered at all (the very first request, read
/// ahead up to 1 MiB) and once it has answered HTTP/1.0.
#[tokio::test]
async fn a_chunked_body_goes_with_a_length_to_a_target_that_speaks_http10() {
    let upstream = serving(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = streaming_proxy_for(&upstream).await;
    let chunk = format!("4000\r\n{}\r\n", "z".repeat(0x4000));
    let long = chunk.repeat(6) + "0\r\n\r\n";
    let small = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    for (path, body, length) in [("/long", long.as_str(), 6 * 0x4000), ("/small", small, 11)] {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        let text = raw(proxy.addr, (head + body).as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 200 "), "{path}: {text}");
        let seen = upstream.all_bytes();
        let start = seen
            .find(&format!("POST {path} "))
            .expect("the POST went upstream");
        let post = &seen[start..];
        let post = &post[..post.find("\r\n\r\n").expect("a head") + 4 + length];
        let lower = post.to_ascii_lowercase();
        assert!(
            lower.contains(&format!("content-length: {length}\r\n")),
            "{path}: {post}"
        );
        assert!(!lower.contains("transfer-encoding"), "{path}: {post}");
    }
    let seen = upstream.all_bytes();
    assert!(seen.contains("\r\n\r\nhello world"), "{seen}");
    proxy.stop().await;
}

/// With `chunked_requests = true`, a body longer than the 1 MiB read-ahead goes chunked to a
/// target not heard from yet. When
/// that target answers HTTP/1.0, it cannot have read the body (RFC 9112 §6.1): its 200 is not
/// relayed as a success, and the upload sent again goes with a `Content-Length`.
#[tokio::test]
async fn a_chunked_body_an_http10_target_cannot_have_read_is_a_502() {
    let upstream = serving(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = streaming_proxy_for(&upstream).await;
    let chunk = format!("10000\r\n{}\r\n", "z".repeat(0x10000));
    let body = chunk.repeat(17) + "0\r\n\r\n";
    let head = "POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
                Connection: close\r\n\r\n";
    let first = raw(proxy.addr, (head.to_string() + &body).as_bytes()).await;
    assert!(first.starts_with("HTTP/1.1 502 "), "{first}");
    assert!(first.contains("cannot have read"), "{first}");
    let again = raw(proxy.addr, (head.to_string() + &body).as_bytes()).await;
    assert!(again.starts_with("HTTP/1.1 200 "), "{again}");
    let requests = received(&upstream);
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0].values("transfer-encoding"), ["chunked"]);
    assert_eq!(
        requests[1].values("content-length"),
        [(17 * 0x10000).to_string()]
    );
    assert!(requests[1].values("transfer-encoding").is_empty());
    proxy.stop().await;
}

/// Sends `request` (method and path) with a chunked `body` as `curl -T -` does: `Expect:
/// 100-continue`, the body only after the `100`. Returns the answer, read to the close.
async fn upload_after_100(proxy: &TestProxy, request: &str, body: &str) -> String {
    let head = format!(
        "{request} HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    let mut conn = TcpStream::connect(proxy.addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("head");
    let mut interim = [0u8; 25];
    conn.read_exact(&mut interim)
        .await
        .expect("an interim answer");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.write_all(body.as_bytes()).await.expect("body");
    read_to_close(&mut conn, Duration::from_secs(10)).await
}

/// `curl -T -` sends a chunked body with `Expect: 100-continue`. To a target that has not
/// answered yet, which may speak only HTTP/1.0, restatus answers the expectation itself and
/// reads the body first, so that it goes with a `Content-Length` (RFC 9110 §10.1.1).
#[tokio::test]
async fn an_expecting_chunked_upload_to_a_new_target_goes_with_a_length() {
    let upstream = serving(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = streaming_proxy_for(&upstream).await;
    let answer = upload_after_100(&proxy, "PUT /file", "5\r\nhello\r\n0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let requests = received(&upstream);
    let sent = requests.last().expect("the PUT went upstream");
    assert_eq!(sent.values("content-length"), ["5"]);
    assert!(sent.values("transfer-encoding").is_empty());
    assert!(sent.values("expect").is_empty());
    assert_eq!(sent.body, b"hello");
    proxy.stop().await;
}

/// By default (`chunked_requests = false`), as many legacy services cannot read a chunked
/// request and take it as none: a body of unknown length of any size goes whole with a
/// `Content-Length`, to a target that answers HTTP/1.1 too, and `Expect: 100-continue` is
/// answered by restatus (the service could only answer after the body).
#[tokio::test]
async fn by_default_every_body_goes_with_a_length() {
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(&upstream).await;
    assert_eq!(get(&proxy.url("/learn")).await.status, 200);
    let chunk = format!("40000\r\n{}\r\n", "z".repeat(0x40000));
    let body = chunk.repeat(8) + "0\r\n\r\n";
    let answer = upload_after_100(&proxy, "POST /big", &body).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "{}",
        &answer[..answer.len().min(200)]
    );
    let requests = received(&upstream);
    let sent = requests.last().expect("the POST went upstream");
    assert_eq!(sent.path, "/big");
    assert_eq!(sent.values("content-length"), [(8 * 0x40000).to_string()]);
    assert!(sent.values("transfer-encoding").is_empty());
    assert!(sent.values("expect").is_empty());
    assert_eq!(sent.body.len(), 8 * 0x40000);
    proxy.stop().await;
}

/// With `chunked_requests = true`, a chunked body longer than what is read ahead streams
/// chunked, with the same bytes, to a target that has answered HTTP/1.1.
#[tokio::test]
async fn a_chunked_body_longer_than_64_kib_streams_chunked() {
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = streaming_proxy_for(&upstream).await;
    assert_eq!(get(&proxy.url("/learn")).await.status, 200);
    let chunk = format!("4000\r\n{}\r\n", "z".repeat(0x4000));
    let request = format!(
        "POST /long HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(6)
    );
    let answer = raw(proxy.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let requests = received(&upstream);
    let sent = requests.last().expect("the POST went upstream");
    assert_eq!(sent.path, "/long");
    assert_eq!(sent.values("transfer-encoding"), ["chunked"]);
    assert!(sent.values("content-length").is_empty());
    assert!(
        sent.body == "z".repeat(6 * 0x4000).as_bytes(),
        "{} bytes",
        sent.body.len()
    );
    proxy.stop().await;
}

/// A status the proxy does not rewrite keeps the upstream's own reason phrase.
#[tokio::test]
async fn custom_reason_phrase_is_relayed() {
    let upstream = serving(b"HTTP/1.1 200 Fine By Me\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(&upstream).await;
    let text = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let status_line = text.lines().next().unwrap_or_default();
    assert_eq!(status_line, "HTTP/1.1 200 Fine By Me", "{text}");
    proxy.stop().await;
}

/// A reason phrase with bytes above 0x7F (obs-text, RFC 9112 §4: here UTF-8) is relayed as
/// sent, as NGINX and HAProxy relay it.
#[tokio::test]
async fn a_reason_phrase_with_obs_text_is_relayed_as_sent() {
    let upstream =
        serving("HTTP/1.1 200 \u{e9}t\u{e9} OK\r\nContent-Length: 2\r\n\r\nok".as_bytes()).await;
    let proxy = proxy_for(&upstream).await;
    let text = raw(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    let status_line = text.lines().next().unwrap_or_default();
    assert_eq!(status_line, "HTTP/1.1 200 \u{e9}t\u{e9} OK", "{text}");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Interim responses (RFC 9110 §15.2: a proxy forwards 1xx responses it did not ask for)

const EARLY_HINTS: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </app.css>; rel=preload\r\n\
Connection: x-hop\r\nX-Hop: 1\r\n\r\n";

/// An upstream that sends a 103 and a 102, then its final answer only once `go` is notified.
async fn hinting(go: Arc<Notify>) -> FaultUpstream {
    spawn_fault(move |mut conn: FaultConn| {
        let go = go.clone();
        async move {
            if conn.read_request().await.is_some() {
                conn.send(EARLY_HINTS).await;
                conn.send(b"HTTP/1.1 102 Still Working\r\n\r\n").await;
                go.notified().await;
                conn.send(&ok_response("done")).await;
            }
        }
    })
    .await
}

/// The 103 and 102 reach an HTTP/1.1 client while the upstream is still working, with their
/// own fields (less the hop-by-hop ones) and reason, and the final answer follows them.
#[tokio::test]
async fn interim_responses_reach_an_http11_client_before_the_final_one() {
    let go = Arc::new(Notify::new());
    let upstream = hinting(go.clone()).await;
    let proxy = proxy_for(&upstream).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    let request = b"GET /page HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n";
    client.write_all(request).await.expect("write");
    let (hints, mut rest) = read_head(&mut client).await;
    assert!(hints.starts_with("HTTP/1.1 103 Early Hints\r\n"), "{hints}");
    assert!(
        hints.contains("link: </app.css>; rel=preload\r\n"),
        "{hints}"
    );
    assert!(hints.contains("via: 1.1 restatus\r\n"), "{hints}");
    assert!(
        !hints.contains("x-hop") && !hints.contains("connection"),
        "{hints}"
    );
    while !String::from_utf8_lossy(&rest).contains("\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(LIMIT, client.read(&mut buf))
            .await
            .expect("the 102 arrives before the final answer is sent")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&rest));
        rest.extend_from_slice(&buf[..n]);
    }
    let processing = String::from_utf8_lossy(&rest).into_owned();
    assert!(
        processing.starts_with("HTTP/1.1 102 Still Working\r\n"),
        "{processing}"
    );
    go.notify_one();
    let mut final_answer = Vec::new();
    tokio::time::timeout(LIMIT, client.read_to_end(&mut final_answer))
        .await
        .expect("the final answer arrives")
        .expect("read");
    let final_answer = String::from_utf8_lossy(&final_answer);
    assert!(
        final_answer.starts_with("HTTP/1.1 200 OK\r\n"),
        "{final_answer}"
    );
    assert!(final_answer.ends_with("\r\n\r\ndone"), "{final_answer}");
    proxy.stop().await;
}

/// RFC 9110 §15.2: no 1xx goes to an HTTP/1.0 client, and none over HTTP/2, which this
/// server cannot send; both get the final answer alone.
#[tokio::test]
async fn http10_and_http2_clients_get_the_final_answer_alone() {
    let upstream = serving(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n\
HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone",
    )
    .await;
    let proxy = proxy_for(&upstream).await;
    let text = until_closed(proxy.addr, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n").await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(!text.contains("103"), "{text}");
    let reply = send_with(&h2_client(), "GET", &proxy.url("/"), &[], String::new()).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "done"));
    proxy.stop().await;
}

/// Interim responses are relayed per request: more than the limit are dropped, and the next
/// request on the connection is relayed its own again.
#[tokio::test]
async fn at_most_sixteen_interim_responses_are_relayed_per_request() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        while conn.read_request().await.is_some() {
            for _ in 0..20 {
                conn.send(b"HTTP/1.1 102 Processing\r\n\r\n").await;
            }
            conn.send(&ok_response("done")).await;
        }
    })
    .await;
    let proxy = proxy_for(&upstream).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    for _ in 0..2 {
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .expect("write");
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).ends_with("\r\n\r\ndone") {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout(LIMIT, client.read(&mut buf))
                .await
                .expect("the answer arrives")
                .expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&seen);
        assert_eq!(
            text.matches("HTTP/1.1 102 Processing\r\n").count(),
            16,
            "{text}"
        );
        assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 1, "{text}");
    }
    proxy.stop().await;
}

/// An upstream that floods interim responses and never answers still meets the response
/// timeout: a 504, not a request that runs, parsing, for as long as the flood lasts. The
/// upstream writes from a thread of its own, so the proxy's socket never runs dry.
#[tokio::test]
async fn a_flood_of_interim_responses_ends_at_the_response_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let Ok((mut stream, _)) = listener.accept() else {
            return;
        };
        let mut head = [0u8; 4096];
        let _ = stream.read(&mut head);
        let flood = b"HTTP/1.1 102 Processing\r\n\r\n".repeat(40_000);
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_secs(30) && stream.write_all(&flood).is_ok() {}
    });
    let config = simple_config(addr, NO_PROFILE)
        .replace("response_timeout = \"10s\"", "response_timeout = \"300ms\"");
    let proxy = spawn_proxy(&config).await;
    let reply = tokio::time::timeout(LIMIT, get(&proxy.url("/slow")))
        .await
        .expect("answered long before the flood ends");
    assert_eq!(reply.status, 504, "{reply:?}");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Pool staleness

/// The first connection answers once (without `Connection: close`) and then closes; later
/// connections answer "second". `closed` is set once the first connection is closed.
async fn closing_while_idle(closed: Arc<AtomicBool>) -> FaultUpstream {
    spawn_fault(move |mut conn: FaultConn| {
        let closed = closed.clone();
        async move {
            if conn.index == 0 {
                if conn.read_request().await.is_some() {
                    conn.send(&ok_response("first")).await;
                }
                drop(conn);
                closed.store(true, Ordering::SeqCst);
                return;
            }
            while conn.read_request().await.is_some() {
                conn.send(&ok_response("second")).await;
            }
        }
    })
    .await
}

/// A pooled connection the upstream closed while idle is not used for the next request (or,
/// if it is, the GET is retried): the client gets a 200 served on a new connection.
#[tokio::test]
async fn connection_closed_while_idle_is_replaced() {
    let closed = Arc::new(AtomicBool::new(false));
    let upstream = closing_while_idle(closed.clone()).await;
    let proxy = proxy_for(&upstream).await;
    let first = get(&proxy.url("/one")).await;
    assert_eq!((first.status, first.text().as_str()), (200, "first"));
    wait_until(LIMIT, "the upstream closed the idle connection", || {
        closed.load(Ordering::SeqCst)
    })
    .await;
    let second = get(&proxy.url("/two")).await;
    assert_eq!((second.status, second.text().as_str()), (200, "second"));
    let logs = upstream.logs();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs[1].text().starts_with("GET /two "), "{logs:?}");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Request framing toward the upstream

/// Sends `request` (head and body, with `Connection: close`) through a proxy and returns it as
/// the upstream received it, checked to be HTTP/1.1.
async fn forwarded(request: &[u8]) -> Sent {
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(&upstream).await;
    let answer = raw(proxy.addr, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut requests = received(&upstream);
    assert_eq!(requests.len(), 1, "{requests:?}");
    proxy.stop().await;
    let sent = requests.remove(0);
    assert_eq!(sent.version, 1, "{sent:?}");
    sent
}

/// A chunked request body is re-framed with the same bytes and exactly one framing field: a
/// `Content-Length`, as it is short.
#[tokio::test]
async fn chunked_request_body_arrives_with_the_same_bytes() {
    let sent = forwarded(
        b"POST /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\
          Connection: close\r\n\r\n4\r\nwiki\r\n5;ext=1\r\npedia\r\n3\r\n in\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(
        (sent.method.as_str(), sent.path.as_str()),
        ("POST", "/chunked")
    );
    assert_eq!(sent.body, b"wikipedia in", "{sent:?}");
    assert_eq!(sent.values("content-length"), ["12"], "{sent:?}");
    assert!(sent.values("transfer-encoding").is_empty(), "{sent:?}");
}

/// A target with quotes or angle brackets, which a URI may not hold but scripts send
/// (`?filter={"a":1}`), is forwarded with them percent-encoded, not refused.
#[tokio::test]
async fn quotes_in_a_query_go_upstream_percent_encoded() {
    let sent = forwarded(
        b"GET /items?filter={\"a\":1}&q=<b> HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(sent.path, "/items?filter={%22a%22:1}&q=%3Cb%3E", "{sent:?}");
}

/// A chunked body read whole goes with a length, without its trailers, which a length cannot
/// carry, nor the `Trailer` field that announced them (RFC 9110 §6.6.2).
#[tokio::test]
async fn a_body_read_whole_loses_its_trailer_field_with_its_trailers() {
    let sent = forwarded(
        b"POST /trail HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\
          Connection: close\r\n\r\n3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n",
    )
    .await;
    assert_eq!(sent.body, b"abc", "{sent:?}");
    assert_eq!(sent.values("content-length"), ["3"], "{sent:?}");
    assert!(sent.values("trailer").is_empty(), "{sent:?}");
    assert!(sent.values("x-sum").is_empty(), "{sent:?}");
}

/// A sized body arrives with one Content-Length and no Transfer-Encoding.
#[tokio::test]
async fn sized_request_body_arrives_with_one_content_length() {
    let sent = forwarded(
        b"POST /length HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(sent.values("content-length"), ["5"], "{sent:?}");
    assert!(sent.values("transfer-encoding").is_empty(), "{sent:?}");
    assert_eq!(sent.body, b"hello");
}

/// A GET says nothing about a body (RFC 9110 §8.6): no Content-Length, no Transfer-Encoding.
#[tokio::test]
async fn get_arrives_without_framing_fields() {
    let sent = forwarded(b"GET /get HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").await;
    assert!(sent.values("content-length").is_empty(), "{sent:?}");
    assert!(sent.values("transfer-encoding").is_empty(), "{sent:?}");
}

/// With `host = "preserve"` (the default) the client's Host arrives once, as it was sent; the
/// authority of an absolute-form target replaces it (RFC 9112 §3.2.2).
#[tokio::test]
async fn host_is_the_clients_unless_the_target_names_an_authority() {
    let sent =
        forwarded(b"GET /h HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n").await;
    assert_eq!(sent.values("host"), ["shop.example"], "{sent:?}");
    let sent = forwarded(
        b"GET http://api.example/h HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(sent.values("host"), ["api.example"], "{sent:?}");
}

/// A POST without a body, whether it said `Content-Length: 0` or nothing, arrives with
/// `content-length: 0`, so the upstream need not guess.
#[tokio::test]
async fn empty_post_arrives_with_content_length_zero() {
    let requests: [&[u8]; 2] = [
        b"POST /empty HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        b"POST /bare HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    ];
    for request in requests {
        let sent = forwarded(request).await;
        assert_eq!(sent.values("content-length"), ["0"], "{sent:?}");
        assert!(sent.values("transfer-encoding").is_empty(), "{sent:?}");
    }
}

/// A chunked request body sent by a hyper client (a body of unknown length) arrives
/// re-framed with the same bytes.
#[tokio::test]
async fn streamed_request_body_arrives_with_the_same_bytes() {
    let upstream = serving(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
    let proxy = proxy_for(&upstream).await;
    let frames = ["first part, ", "second part, ", "last part"]
        .map(|s| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(s.as_bytes()))));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    let request = Request::post(proxy.url("/stream"))
        .body(BodyExt::boxed(body))
        .expect("request");
    let response = tokio::time::timeout(LIMIT, client().request(request))
        .await
        .expect("response in time")
        .expect("response");
    assert_eq!(response.status(), 200);
    let requests = received(&upstream);
    let sent = sent_to(&requests, "/stream");
    assert_eq!(sent.body, b"first part, second part, last part", "{sent:?}");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// HEAD

/// The answer to a HEAD has no body whatever its Content-Length says (RFC 9110 §9.3.2): the
/// proxy relays the head without waiting for 100 bytes, the client connection carries the
/// next request, and the upstream connection is reused with nothing left to misread.
#[tokio::test]
async fn head_response_with_a_length_has_no_body() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        while let Some(head) = conn.read_request().await {
            if head.starts_with("HEAD ") {
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
                    .await;
            } else {
                conn.send(&ok_response("after")).await;
            }
        }
    })
    .await;
    let proxy = proxy_for(&upstream).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"HEAD /head HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let (head, rest) = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200"), "no HEAD answer: {head:?}");
    stream
        .write_all(b"GET /next HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let next =
        String::from_utf8_lossy(&rest).into_owned() + &read_to_close(&mut stream, LIMIT).await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next:?}");
    assert!(next.ends_with("after"), "{next:?}");
    assert_eq!(upstream.connections(), 1, "the connection was not reused");
    proxy.stop().await;
}

/// The pooled connection answers the second request with a 103, then closes. Something came
/// back, so the connection was not stale: the GET is not sent again, and the client gets 502.
#[tokio::test]
async fn an_interim_answer_then_a_close_is_not_retried() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.index > 0 {
            if conn.read_request().await.is_some() {
                conn.send(&ok_response("retried")).await;
            }
            return;
        }
        if conn.read_request().await.is_some() {
            conn.send(&ok_response("first")).await;
        }
        if conn.read_request().await.is_some() {
            conn.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
                .await;
            // Not synchronization: it puts the 103 and the close in separate reads, the case
            // in which an answer seen in an earlier read must still count.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let proxy = proxy_for(&upstream).await;
    let first = get(&proxy.url("/one")).await;
    assert_eq!((first.status, first.text().as_str()), (200, "first"));
    let second = get(&proxy.url("/two")).await;
    assert_eq!(second.status, 502, "{}", second.text());
    assert_eq!(upstream.logs().len(), 1, "no second connection: no retry");
    proxy.stop().await;
}

fn config_with_response_timeout(upstream: &FaultUpstream, timeout: &str) -> String {
    simple_config(upstream.addr, NO_PROFILE).replace(
        r#"response_timeout = "10s""#,
        &format!("response_timeout = {timeout:?}"),
    )
}

/// An upstream that sends its head and part of its body, then goes silent: the proxy ends the
/// client's response (never completing it) once `response_timeout` passes without a byte,
/// and closes the upstream connection, instead of holding both open for good.
#[tokio::test]
async fn a_body_that_stalls_is_cut_at_the_response_timeout() {
    let upstream =
        answering_then_holding(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhello").await;
    let proxy = spawn_proxy(&config_with_response_timeout(&upstream, "300ms")).await;
    let request = Request::get(proxy.url("/"))
        .body(full(""))
        .expect("request");
    let response = tokio::time::timeout(LIMIT, client().request(request))
        .await
        .expect("a response head in time")
        .expect("a response head");
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(LIMIT, response.into_body().collect())
        .await
        .expect("the body ends at the response timeout instead of hanging");
    assert!(
        body.is_err(),
        "a stalled body reached the client as complete"
    );
    wait_until(LIMIT, "the stalled upstream connection closed", || {
        upstream.logs().first().is_some_and(|l| l.closed_by_peer)
    })
    .await;
    proxy.stop().await;
}

/// A body that keeps coming, however slowly in all, is never cut: the response timeout is
/// the silence allowed between two reads, not a bound on the whole body.
#[tokio::test]
async fn a_slow_but_steady_body_is_relayed_whole() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n")
                .await;
            for _ in 0..12 {
                // Not synchronization: the pace is the behaviour under test.
                tokio::time::sleep(Duration::from_millis(50)).await;
                conn.send(b"x").await;
            }
            conn.hold().await;
        }
    })
    .await;
    let proxy = spawn_proxy(&config_with_response_timeout(&upstream, "400ms")).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "xxxxxxxxxxxx"));
    proxy.stop().await;
}

/// A body rule reads a body that takes longer in all than `response_timeout` but never goes
/// silent that long: it is read whole and the rule fires. One that does go silent mid-body is
/// a 504 that says so, and nothing of it reached the client.
#[tokio::test]
async fn a_body_rule_reads_a_slow_body_and_gives_up_only_on_silence() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        while let Some(head) = conn.read_request().await {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
                .await;
            let pause = if head.starts_with("GET /stalls") {
                1000
            } else {
                60
            };
            for byte in b"error-----" {
                // Not synchronization: the pace is the behaviour under test.
                tokio::time::sleep(Duration::from_millis(pause)).await;
                conn.send(&[*byte]).await;
            }
        }
    })
    .await;
    let rule = r#"
[[rules]]
name = "error-body-is-404"
when = { status = 200, body_regex = "^error" }
then = { status = 404 }
"#;
    let text = simple_config(upstream.addr, &format!("{NO_PROFILE}\n{rule}")).replace(
        r#"response_timeout = "10s""#,
        r#"response_timeout = "400ms""#,
    );
    let proxy = spawn_proxy(&text).await;
    let slow = get(&proxy.url("/slow")).await;
    assert_eq!((slow.status, slow.text().as_str()), (404, "error-----"));
    let stalled = get(&proxy.url("/stalls")).await;
    assert_eq!(stalled.status, 504, "{}", stalled.text());
    assert!(
        stalled
            .text()
            .contains("stopped sending its response body for 400ms"),
        "{}",
        stalled.text()
    );
    proxy.stop().await;
}
