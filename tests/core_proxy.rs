//! The core proxy over real sockets: forwarding, streaming, forwarding headers, request ids,
//! HTTP/2 clients, the proxy's own error responses, legacy upstreams, routing and shutdown.
mod support;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// Route setting that turns the default contract profile off, so statuses pass unchanged.
const NO_PROFILE: &str = r#"profile = "none""#;

// ---------------------------------------------------------------------------------------------
// Helpers

/// An address nothing listens on: bound, then released.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

/// An upstream that answers 200 with the request body it received.
async fn echo_upstream() -> Upstream {
    spawn_upstream(|seen| async move { reply(200, seen.body) }).await
}

/// An upstream that answers 200 with its own name, so tests can tell who answered.
async fn named_upstream(name: &'static str) -> Upstream {
    spawn_upstream(move |_| async move { reply(200, name) }).await
}

/// A config with one upstream over `targets` and one route for `/` with `route_extra`.
fn targets_config(targets: &[SocketAddr], route_extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|a| format!("\"http://{a}\"")).collect();
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "pool"
targets = [{}]
connect_timeout = "2s"
response_timeout = "10s"

[[routes]]
name = "main"
upstream = "pool"
path_prefix = "/"
{route_extra}
"#,
        targets.join(", ")
    )
}

/// Reads a request head (up to the blank line) from a raw connection.
async fn read_head(stream: &mut TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
}

/// A hand-written upstream: for each connection it reads the request head, then runs `script`
/// on the connection. It serves until the test's runtime ends.
async fn raw_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                script(stream).await;
            });
        }
    });
    addr
}

/// A raw upstream that writes `response` as is and closes the connection.
async fn canned_upstream(response: &'static [u8]) -> SocketAddr {
    raw_upstream(move |mut stream| async move {
        let _ = stream.write_all(response).await;
        let _ = stream.shutdown().await;
    })
    .await
}

fn assert_proxy_error(reply: &Reply, status: u16, message: &str) {
    assert_eq!(reply.status, status, "{}", reply.text());
    assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let body = reply.json();
    let error = body["error"].as_str().expect("error is a string");
    assert!(error.contains(message), "{error}");
    let id = reply.header("x-request-id").expect("request id header");
    assert_eq!(body["request_id"], id, "the body names the request id");
}

// ---------------------------------------------------------------------------------------------
// Methods, bodies, streaming

#[tokio::test]
async fn methods_bodies_and_query_strings_are_forwarded_intact() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, NO_PROFILE)).await;
    let client = client();
    // Not valid UTF-8, with CR LF and NUL in it: the body must not be touched.
    let body = Bytes::from_static(b"{\"a\":1}\r\n\x00\xff\xfe binary");
    let path = "/items/7?q=a%20b&sort=-name&empty=";
    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        let reply = send_with(&client, method, &proxy.url(path), &[], body.clone()).await;
        assert_eq!(reply.status, 200, "{method}");
        assert_eq!(reply.body, body, "{method}: body back to the client");
        let seen = upstream.requests().pop().expect("upstream saw the request");
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, path, "{method}: path and query");
        assert_eq!(seen.body, body, "{method}: body to the upstream");
    }
    assert_eq!(upstream.requests().len(), 5);
    proxy.stop().await;
}

const CHUNK: usize = 64 << 10;
/// 256 MiB: far more than any buffer between client, proxy and upstream.
const LARGE_CHUNKS: u64 = 4096;
/// The most bytes allowed between sender and receiver at any moment: socket buffers and
/// hyper's buffers on two hops fit easily; a proxy holding the whole body would not.
const MAX_IN_TRANSIT: u64 = 96 << 20;

/// A generated body of `chunks` chunks of `CHUNK` bytes. Each chunk starts with its index, so
/// a lost, repeated or reordered chunk changes the checksum. `produced` counts the bytes
/// handed out so far.
struct Pattern {
    template: Bytes,
    next: u64,
    chunks: u64,
    /// Whether the length is announced (Content-Length) or left open (chunked).
    sized: bool,
    produced: Arc<AtomicU64>,
}

impl Pattern {
    fn new(chunks: u64, sized: bool, produced: Arc<AtomicU64>) -> Pattern {
        let template: Vec<u8> = (0..CHUNK).map(|i| (i * 7 % 251) as u8).collect();
        Pattern {
            template: Bytes::from(template),
            next: 0,
            chunks,
            sized,
            produced,
        }
    }

    fn chunk(&self, index: u64) -> Bytes {
        let mut chunk = BytesMut::from(&self.template[..]);
        chunk[..8].copy_from_slice(&index.to_le_bytes());
        chunk.freeze()
    }

    /// The length and checksum of the whole body, as the receiver should see them.
    fn expected(chunks: u64) -> (u64, u32) {
        let pattern = Pattern::new(chunks, false, Arc::default());
        let mut digest = Digest::default();
        for index in 0..chunks {
            digest.update(&pattern.chunk(index));
        }
        digest.value()
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.next == self.chunks {
            return Poll::Ready(None);
        }
        let chunk = self.chunk(self.next);
        self.next += 1;
        self.produced.fetch_add(CHUNK as u64, Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        match self.sized {
            true => SizeHint::with_exact((self.chunks - self.next) * CHUNK as u64),
            false => SizeHint::default(),
        }
    }
}

/// Length and CRC-32 of a received byte stream, and the most bytes that were ever produced
/// by the sender but not yet received.
#[derive(Default)]
struct Digest {
    len: u64,
    crc: flate2::Crc,
    max_in_transit: u64,
}

impl Digest {
    fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.crc.update(bytes);
    }

    fn value(&self) -> (u64, u32) {
        (self.len, self.crc.sum())
    }

    /// Reads `body` frame by frame without keeping it, comparing with what the sender
    /// `produced` after every frame.
    async fn of<B>(mut body: B, produced: &AtomicU64) -> Result<Digest, B::Error>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        let mut digest = Digest::default();
        while let Some(frame) = body.frame().await {
            if let Some(data) = frame?.data_ref() {
                digest.update(data);
                let in_transit = produced.load(Ordering::Relaxed).saturating_sub(digest.len);
                digest.max_in_transit = digest.max_in_transit.max(in_transit);
            }
        }
        Ok(digest)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_through() {
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    let upstream = spawn_streaming_upstream(move |_| {
        let body = Pattern::new(LARGE_CHUNKS, true, counter.clone());
        async move { Response::new(body.boxed()) }
    })
    .await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, NO_PROFILE)).await;
    let request = Request::get(proxy.url("/download"))
        .body(full(""))
        .expect("request");
    let response = client().request(request).await.expect("response head");
    assert_eq!(response.status(), 200);
    let length = (LARGE_CHUNKS * CHUNK as u64).to_string();
    assert_eq!(response.headers()["content-length"], length.as_str());
    let got = Digest::of(response.into_body(), &produced)
        .await
        .expect("whole body");
    assert_eq!(got.value(), Pattern::expected(LARGE_CHUNKS));
    assert!(
        got.max_in_transit < MAX_IN_TRANSIT,
        "{} MiB were held between upstream and client",
        got.max_in_transit >> 20
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_through() {
    let produced = Arc::new(AtomicU64::new(0));
    let counter = produced.clone();
    // The upstream reads the body as it arrives and answers with what it measured.
    let upstream = spawn_streaming_upstream(move |request: Request<Incoming>| {
        let counter = counter.clone();
        async move {
            match Digest::of(request.into_body(), &counter).await {
                Ok(got) => {
                    let (len, crc) = got.value();
                    reply(200, format!("{len} {crc} {}", got.max_in_transit))
                }
                Err(err) => reply(500, err.to_string()),
            }
        }
    })
    .await;
    let extra = format!("{NO_PROFILE}\n[limits]\nrequest_body = \"1GiB\"");
    let proxy = spawn_proxy(&streaming_chunked(&simple_config(upstream.addr, &extra))).await;
    // Chunked: the proxy cannot know the length in advance.
    let body = Pattern::new(LARGE_CHUNKS, false, produced);
    let request = Request::post(proxy.url("/upload"))
        .body(body.boxed())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(120), client().request(request))
        .await
        .expect("upload within 120s")
        .expect("response");
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    let got: Vec<u64> = text.split(' ').filter_map(|n| n.parse().ok()).collect();
    let (len, crc) = Pattern::expected(LARGE_CHUNKS);
    assert_eq!(got[..2], [len, u64::from(crc)], "{text}");
    assert!(
        got[2] < MAX_IN_TRANSIT,
        "{} MiB were held between client and upstream",
        got[2] >> 20
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Headers

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    // Two Connection headers, each naming a custom header; written raw so that no client
    // library tidies them up first.
    let request = "GET /hop HTTP/1.1\r\n\
        Host: hop.test\r\n\
        Connection: close, X-Secret-One\r\n\
        Connection: x-secret-two\r\n\
        X-Secret-One: 1\r\n\
        X-Secret-Two: 2\r\n\
        Keep-Alive: timeout=5\r\n\
        TE: trailers\r\n\
        Upgrade: websocket\r\n\
        Proxy-Connection: keep-alive\r\n\
        X-Kept: yes\r\n\
        \r\n";
    let answer = raw(proxy.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    for gone in [
        "connection",
        "x-secret-one",
        "x-secret-two",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(
            !seen.headers.contains_key(gone),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.headers["x-kept"], "yes");
    proxy.stop().await;
}

/// A `Connection` option cannot remove a field meant for every recipient (RFC 9110 §7.6.1):
/// `Connection: X-Forwarded-For` would strip the address a proxy in front added, and
/// `Connection: Authorization` the credentials, before the upstream read them.
#[tokio::test]
async fn connection_cannot_remove_end_to_end_fields() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let request = "GET /hop HTTP/1.1\r\n\
        Host: hop.test\r\n\
        Connection: close, X-Forwarded-For, x-real-ip, Authorization, Cookie, Forwarded, \
        Content-Type, Cache-Control, Host, X-Gone\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        X-Real-IP: 203.0.113.7\r\n\
        Forwarded: for=203.0.113.7\r\n\
        Authorization: Bearer t\r\n\
        Cookie: a=1\r\n\
        Content-Type: application/json\r\n\
        Cache-Control: no-cache\r\n\
        X-Gone: 1\r\n\
        \r\n";
    let answer = raw(proxy.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    let xff = seen.headers["x-forwarded-for"].to_str().expect("text");
    assert!(xff.starts_with("203.0.113.7, "), "{xff}");
    for (name, value) in [
        ("x-real-ip", "203.0.113.7"),
        ("forwarded", "for=203.0.113.7"),
        ("authorization", "Bearer t"),
        ("cookie", "a=1"),
        ("content-type", "application/json"),
        ("cache-control", "no-cache"),
        ("host", "hop.test"),
    ] {
        assert_eq!(
            seen.headers.get(name).map(|v| v.as_bytes()),
            Some(value.as_bytes()),
            "{name}"
        );
    }
    assert!(!seen.headers.contains_key("x-gone"), "{:?}", seen.headers);
    proxy.stop().await;
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let upstream = spawn_upstream(|_| async {
        let mut response = reply(200, "ok");
        let headers = response.headers_mut();
        headers.insert("connection", "x-upstream-secret".parse().unwrap());
        headers.insert("x-upstream-secret", "s".parse().unwrap());
        headers.insert("keep-alive", "timeout=99".parse().unwrap());
        headers.insert("x-kept", "yes".parse().unwrap());
        response
    })
    .await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-upstream-secret"),
        None,
        "{:?}",
        reply.headers
    );
    assert_eq!(reply.header("keep-alive"), None, "{:?}", reply.headers);
    assert_eq!(reply.header("x-kept"), Some("yes"));
    proxy.stop().await;
}

#[tokio::test]
async fn forwarding_headers_are_appended_and_set() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let headers = [
        ("host", "shop.example.com"),
        ("x-forwarded-for", "203.0.113.7, 198.51.100.1"),
        ("x-forwarded-proto", "https"),
        ("via", "1.1 edge"),
    ];
    let reply = send("GET", &proxy.url("/"), &headers, "").await;
    assert_eq!(reply.status, 200);
    let seen = upstream.requests().pop().expect("upstream saw the request");
    let h = &seen.headers;
    // Earlier hops are kept; this proxy adds the address it saw.
    assert_eq!(h["x-forwarded-for"], "203.0.113.7, 198.51.100.1, 127.0.0.1");
    // The proxy tells what it saw itself: the client spoke plain HTTP to it.
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "shop.example.com");
    assert_eq!(
        h["host"], "shop.example.com",
        "host is preserved by default"
    );
    assert_eq!(h["via"], "1.1 edge, 1.1 restatus");
    assert_eq!(reply.header("via"), Some("1.1 restatus"));
    proxy.stop().await;
}

#[tokio::test]
async fn forwarded_for_is_created_when_absent() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    get(&proxy.url("/")).await;
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    proxy.stop().await;
}

#[tokio::test]
async fn client_request_id_is_kept_forwarded_and_returned() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let headers = [("x-request-id", "order-42-retry-1")];
    let reply = send("GET", &proxy.url("/"), &headers, "").await;
    assert_eq!(reply.header("x-request-id"), Some("order-42-retry-1"));
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.headers["x-request-id"], "order-42-retry-1");
    assert_eq!(seen.headers.get_all("x-request-id").iter().count(), 1);
    proxy.stop().await;
}

#[tokio::test]
async fn request_id_is_made_when_the_client_sends_none() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let reply = get(&proxy.url("/")).await;
        let id = reply
            .header("x-request-id")
            .expect("request id")
            .to_string();
        let seen = upstream.requests().pop().expect("upstream saw the request");
        assert_eq!(
            seen.headers["x-request-id"],
            id.as_str(),
            "same id upstream"
        );
        assert!(
            !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric()),
            "{id}"
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "each request gets its own id");
    proxy.stop().await;
}

/// RFC 9110 §7.6.2: a TRACE or OPTIONS with `Max-Forwards: 0` is answered by the proxy as the
/// final recipient (a TRACE with its request echoed, credentials left out); a larger value is
/// forwarded less one; other methods pass the field through untouched.
#[tokio::test]
async fn max_forwards_is_counted_down_and_zero_is_answered_here() {
    let upstream = fixed_upstream(200, r#"{"ok":true}"#).await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let url = proxy.url("/items?x=1");
    let options = send("OPTIONS", &url, &[("max-forwards", "0")], "").await;
    assert_eq!(options.status, 200);
    assert_eq!(options.header("x-restatus-source"), Some("proxy"));
    assert_eq!(options.header("content-length"), Some("0"));
    assert!(options.body.is_empty(), "{}", options.text());
    let secret = [("max-forwards", "0"), ("authorization", "Bearer s3cret")];
    let trace = send("TRACE", &url, &secret, "").await;
    assert_eq!(trace.status, 200);
    assert_eq!(trace.header("content-type"), Some("message/http"));
    let echo = trace.text();
    assert!(echo.starts_with("TRACE /items?x=1 HTTP/1.1\r\n"), "{echo}");
    assert!(echo.contains("max-forwards: 0\r\n"), "{echo}");
    assert!(!echo.contains("s3cret"), "{echo}");
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());

    let forwarded = send("OPTIONS", &url, &[("max-forwards", "3")], "").await;
    assert_eq!(forwarded.status, 200);
    let get = send("GET", &url, &[("max-forwards", "0")], "").await;
    assert_eq!(get.status, 200);
    let seen: Vec<(String, Option<String>)> = upstream
        .requests()
        .iter()
        .map(|r| {
            let hops = r.headers.get("max-forwards");
            (
                r.method.to_string(),
                hops.map(|v| v.to_str().unwrap_or("?").to_string()),
            )
        })
        .collect();
    let want = [("OPTIONS", Some("2")), ("GET", Some("0"))];
    let want: Vec<_> = want
        .iter()
        .map(|(m, h)| (m.to_string(), h.map(str::to_string)))
        .collect();
    assert_eq!(seen, want);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 clients

/// RFC 9113 §8.2.3: the cookies an HTTP/2 client splits into several fields reach the
/// HTTP/1.1 upstream as one `Cookie` field.
#[tokio::test]
async fn http2_cookies_are_joined_into_one_field() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, NO_PROFILE)).await;
    let cookies = [("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")];
    let reply = send_with(&h2_client(), "GET", &proxy.url("/c"), &cookies, "").await;
    assert_eq!(reply.status, 200);
    let seen = upstream.requests().pop().expect("upstream saw the request");
    let values: Vec<_> = seen.headers.get_all("cookie").iter().collect();
    assert_eq!(values, ["a=1; b=2; c=3"]);
    proxy.stop().await;
}

/// Over HTTP/2 a HEAD answer carries no DATA and a 204 no `Content-Length`, or the client
/// resets the stream (RFC 9113 §8.1.1); HTTP/1 hides both by its framing.
#[tokio::test]
async fn http2_head_and_204_answers_are_well_formed() {
    let upstream = support::fault::spawn_fault(|mut conn| async move {
        while let Some(head) = conn.read_request().await {
            let answer: &[u8] = match head.contains("/no-content") {
                true => b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
                false => b"HTTP/1.1 410 Gone\r\nContent-Length: 4\r\n\r\n",
            };
            conn.send(answer).await;
            if !head.starts_with("HEAD") && !head.contains("/no-content") {
                conn.send(b"gone").await;
            }
        }
    })
    .await;
    let rule = format!(
        "{NO_PROFILE}\n[[rules]]\nname = \"gone\"\nwhen = {{ status = 410 }}\n\
         then = {{ status = 404, body = \"nope\\n\" }}\n"
    );
    let proxy = spawn_proxy(&simple_config(upstream.addr, &rule)).await;
    let client = h2_client();
    let head = send_with(&client, "HEAD", &proxy.url("/gone"), &[], "").await;
    assert_eq!(head.status, 404);
    assert_eq!(
        head.header("content-length"),
        Some("5"),
        "the length a GET gets"
    );
    assert!(head.body.is_empty());
    let got = send_with(&client, "GET", &proxy.url("/gone"), &[], "").await;
    assert_eq!((got.status, got.text().as_str()), (404, "nope\n"));
    let empty = send_with(&client, "GET", &proxy.url("/no-content"), &[], "").await;
    assert_eq!(empty.status, 204);
    assert_eq!(empty.header("content-length"), None);
    proxy.stop().await;
}

#[tokio::test]
async fn http2_client_is_served_from_an_http1_upstream() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, NO_PROFILE)).await;
    let request = Request::post(proxy.url("/h2?x=1"))
        .body(full("over h2"))
        .expect("request");
    let response = h2_client().request(request).await.expect("response");
    assert_eq!(response.version(), Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body, "over h2");
    let seen = upstream.requests().pop().expect("upstream saw the request");
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(
        (seen.method.as_str(), seen.uri.as_str()),
        ("POST", "/h2?x=1")
    );
    assert_eq!(seen.body, "over h2");
    // HTTP/2 has no Host header; the :authority becomes one.
    assert_eq!(seen.headers["host"], proxy.addr.to_string().as_str());
    assert_eq!(seen.headers["via"], "2 restatus");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The proxy's own answers to upstream failures

#[tokio::test]
async fn upstream_down_is_502() {
    let proxy = spawn_proxy(&simple_config(dead_address().await, NO_PROFILE)).await;
    let reply = get(&proxy.url("/items")).await;
    assert_proxy_error(&reply, 502, "refused");
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_down_is_500_under_the_default_profile() {
    // The documented contract knows no 502: the client gets 500, still marked as the proxy's.
    let proxy = spawn_proxy(&simple_config(dead_address().await, "")).await;
    let reply = get(&proxy.url("/items")).await;
    assert_proxy_error(&reply, 500, "refused");
    assert_eq!(reply.header("x-restatus-original-status"), Some("502"));
    proxy.stop().await;
}

#[tokio::test]
async fn slow_upstream_is_504_after_response_timeout() {
    let upstream = spawn_upstream(|_| std::future::pending()).await;
    let config = simple_config(upstream.addr, NO_PROFILE)
        .replace("response_timeout = \"10s\"", "response_timeout = \"300ms\"");
    let proxy = spawn_proxy(&config).await;
    let started = Instant::now();
    let reply = get(&proxy.url("/slow")).await;
    let waited = started.elapsed();
    assert_proxy_error(&reply, 504, "did not answer in time");
    assert!(waited >= Duration::from_millis(300), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn upstream_closing_before_the_head_is_502() {
    let upstream = raw_upstream(|stream| async move { drop(stream) }).await;
    let proxy = spawn_proxy(&simple_config(upstream, NO_PROFILE)).await;
    let reply = get(&proxy.url("/")).await;
    assert_proxy_error(&reply, 502, "closed the connection");
    proxy.stop().await;
}

/// How a dying upstream ends its connection.
#[derive(Clone, Copy, Debug)]
enum Death {
    Close,
    Reset,
}

/// An upstream that sends `partial` (a head and part of its body), waits for `go`, then
/// closes or resets the connection.
async fn dying_upstream(partial: &'static [u8], death: Death, go: Arc<Notify>) -> SocketAddr {
    raw_upstream(move |mut stream| {
        let go = go.clone();
        async move {
            let _ = stream.write_all(partial).await;
            go.notified().await;
            if let Death::Reset = death {
                let _ = stream.set_zero_linger();
            }
            drop(stream);
        }
    })
    .await
}

#[tokio::test]
async fn upstream_dying_mid_body_aborts_the_client_response() {
    let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst part of the body";
    let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
    let cases: [(&'static [u8], Death, &str); 3] = [
        (sized, Death::Close, "closed"),
        (sized, Death::Reset, "reset"),
        (chunked, Death::Close, "closed"),
    ];
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    for (partial, death, cause) in cases {
        let go = Arc::new(Notify::new());
        let upstream = dying_upstream(partial, death, go.clone()).await;
        let text = simple_config(upstream, &format!("{NO_PROFILE}\n{admin}"));
        let proxy = spawn_proxy(&text).await;
        let request = Request::get(proxy.url("/"))
            .body(full(""))
            .expect("request");
        let response = client().request(request).await.expect("response head");
        assert_eq!(response.status(), StatusCode::OK, "{death:?}");
        // The head is out; now the upstream dies.
        go.notify_one();
        let body = tokio::time::timeout(Duration::from_secs(10), response.collect())
            .await
            .expect("body ends within 10s");
        assert!(
            body.is_err(),
            "{death:?}: a truncated body must not look complete"
        );
        // The service's owners read it in the deviation log, with how it failed.
        let records = proxy.records_of_kind("truncated_body");
        assert_eq!(records.len(), 1, "{death:?}: {records:?}");
        let record = &records[0];
        assert_eq!(record["cause"], cause, "{record}");
        assert_eq!(record["source"], "upstream", "{record}");
        assert_eq!(
            (
                record["upstream_status"].as_u64(),
                record["status"].as_u64()
            ),
            (Some(200), Some(200))
        );
        assert_eq!(
            (record["route"].as_str(), record["path"].as_str()),
            (Some("main"), Some("/"))
        );
        let metrics = get(&format!("http://{}/metrics", proxy.admin.expect("admin")))
            .await
            .text();
        let series = r#"restatus_upstream_errors_total{upstream="backend",kind="truncated_body"}"#;
        assert_eq!(sample(&metrics, series), Some(1.0), "{death:?}");
        proxy.stop().await;
    }
}

/// A chunked body that turns invalid, or goes silent past `response_timeout`, is recorded
/// with that cause; bodies that end as framed, small or streamed, are not recorded.
#[tokio::test]
async fn a_body_cut_short_is_recorded_with_its_cause_and_a_whole_one_is_not() {
    let big = "x".repeat(300_000);
    let whole = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    let upstream = support::fault::spawn_fault(move |mut conn: support::fault::FaultConn| {
        let whole = whole.clone();
        async move {
            while let Some(request) = conn.read_request().await {
                let path = request.split(' ').nth(1).unwrap_or_default().to_string();
                let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n";
                match path.as_str() {
                    "/invalid" => conn.send(format!("{head}zz\r\n").as_bytes()).await,
                    "/silent" => {
                        conn.send(head.as_bytes()).await;
                        conn.hold().await;
                        return;
                    }
                    "/small" => conn.send(&support::fault::ok_response("{}")).await,
                    _ => conn.send(whole.as_bytes()).await,
                }
            }
        }
    })
    .await;
    let text = simple_config(upstream.addr, NO_PROFILE)
        .replace("response_timeout = \"10s\"", "response_timeout = \"300ms\"");
    let proxy = spawn_proxy(&text).await;
    for path in ["/small", "/big"] {
        let reply = get(&proxy.url(path)).await;
        assert_eq!(reply.status, 200, "{path}");
    }
    for path in ["/invalid", "/silent"] {
        let response = client()
            .get(proxy.url(path).parse().expect("url"))
            .await
            .expect("response head");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = tokio::time::timeout(Duration::from_secs(10), response.collect())
            .await
            .expect("body ends within 10s");
        assert!(body.is_err(), "{path}: a cut body must not look complete");
    }
    let records = proxy.records_of_kind("truncated_body");
    let causes: Vec<_> = records
        .iter()
        .map(|r| (r["path"].as_str(), r["cause"].as_str()))
        .collect();
    assert_eq!(
        causes,
        [
            (Some("/invalid"), Some("invalid_chunked")),
            (Some("/silent"), Some("timeout"))
        ],
        "{records:?}"
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Targets and legacy upstreams

#[tokio::test]
async fn requests_go_round_robin_over_targets() {
    let a = named_upstream("a").await;
    let b = named_upstream("b").await;
    let proxy = spawn_proxy(&targets_config(&[a.addr, b.addr], "")).await;
    let client = client();
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(
            send_with(&client, "GET", &proxy.url("/"), &[], "")
                .await
                .text(),
        );
    }
    assert_eq!(answers, ["a", "b", "a", "b"]);
    proxy.stop().await;
}

#[tokio::test]
async fn refused_target_is_skipped_and_the_body_still_arrives() {
    let a = echo_upstream().await;
    let b = echo_upstream().await;
    let targets = [a.addr, dead_address().await, b.addr];
    let proxy = spawn_proxy(&targets_config(&targets, NO_PROFILE)).await;
    let client = client();
    for n in 0..6 {
        let body = format!("request {n}");
        let reply = send_with(&client, "POST", &proxy.url("/"), &[], body.clone()).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        // The body went to the refused target first; it must reach the next one whole.
        assert_eq!(reply.text(), body);
    }
    assert_eq!(a.requests().len() + b.requests().len(), 6);
    assert!(!a.requests().is_empty() && !b.requests().is_empty());
    proxy.stop().await;
}

#[tokio::test]
async fn http10_close_delimited_upstream_is_relayed() {
    let upstream = canned_upstream(
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1996, no length",
    )
    .await;
    let proxy = spawn_proxy(&simple_config(upstream, NO_PROFILE)).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from 1996, no length");
    assert_eq!(reply.header("via"), Some("1.0 restatus"));
    proxy.stop().await;
}

#[tokio::test]
async fn obsolete_header_folding_is_tolerated() {
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nX-Folded: first\r\n  second\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    let proxy = spawn_proxy(&simple_config(upstream, NO_PROFILE)).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    let folded = reply.header("x-folded").expect("folded header kept");
    assert!(
        folded.starts_with("first") && folded.ends_with("second"),
        "{folded:?}"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_field_with_a_control_byte_is_dropped_and_the_rest_relayed() {
    // A bare-LF fold is unfolded; a field holding a DEL is left out, as hyper's client does
    // with `ignore_invalid_headers`.
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nX-Lf: one\n two\r\nX-Del: a\x7fb\r\nX-Kept: yes\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    let proxy = spawn_proxy(&simple_config(upstream, NO_PROFILE)).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    assert_eq!(reply.header("x-lf"), Some("one  two"));
    assert_eq!(reply.header("x-del"), None);
    assert_eq!(reply.header("x-kept"), Some("yes"));
    proxy.stop().await;
}

#[tokio::test]
async fn a_response_field_with_a_nul_is_a_bad_gateway() {
    // A NUL is never skipped over (httparse, like hyper, refuses the head): the client gets
    // an honest 502, not a response with the field's line half read.
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\nX-Nul: a\x00b\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
    )
    .await;
    let proxy = spawn_proxy(&simple_config(upstream, NO_PROFILE)).await;
    assert_eq!(get(&proxy.url("/")).await.status, 502);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Routing

fn routing_config(a: SocketAddr, b: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "a"
targets = ["http://{a}"]

[[upstreams]]
name = "b"
targets = ["http://{b}"]

[[routes]]
name = "root"
upstream = "a"
path_prefix = "/"

[[routes]]
name = "api"
upstream = "b"
path_prefix = "/api"

[[routes]]
name = "api-v2"
upstream = "a"
path_prefix = "/api/v2/"
strip_prefix = true

[[routes]]
name = "special"
upstream = "b"
host = "special.test"
path_prefix = "/"
"#
    )
}

#[tokio::test]
async fn longest_prefix_and_host_choose_the_route() {
    let a = spawn_upstream(|seen| async move { reply(200, format!("a {}", seen.uri)) }).await;
    let b = spawn_upstream(|seen| async move { reply(200, format!("b {}", seen.uri)) }).await;
    let proxy = spawn_proxy(&routing_config(a.addr, b.addr)).await;
    let cases = [
        (None, "/api/items", "b /api/items"),
        (None, "/api", "b /api"),
        // Longest prefix wins, and strip_prefix removes it (the query stays).
        (None, "/api/v2/items?q=1", "a /items?q=1"),
        (None, "/api/v2", "a /"),
        // Prefixes match whole segments only.
        (None, "/apiary", "a /apiary"),
        (None, "/other", "a /other"),
        // A host's own routes come first; hosts match without case or port.
        (Some("special.test"), "/other", "b /other"),
        (Some("SPECIAL.test:8080"), "/x", "b /x"),
        (Some("elsewhere.test"), "/x", "a /x"),
    ];
    for (host, path, want) in cases {
        let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let reply = send("GET", &proxy.url(path), &headers, "").await;
        assert_eq!(reply.status, 200, "{host:?} {path}");
        assert_eq!(reply.text(), want, "{host:?} {path}");
    }
    proxy.stop().await;
}

/// Behind `strip_prefix` the upstream is told the prefix (`X-Forwarded-Prefix`, a client's
/// own copy never passes), and its redirects to its own paths get the prefix back, so that a
/// client following them stays on the route.
#[tokio::test]
async fn strip_prefix_routes_send_the_prefix_and_keep_redirects_on_the_route() {
    let a = spawn_upstream(|seen| async move {
        let host = seen.headers.get("host").and_then(|h| h.to_str().ok());
        let location = match seen.uri.as_str() {
            "/old" => "/items/1".to_string(),
            "/absolute" => format!("http://{}/items/2", host.unwrap_or("-")),
            "/aware" => "/api/v2/items/3".to_string(),
            "/relative" => "items/4".to_string(),
            _ => "http://elsewhere.test/x".to_string(),
        };
        let prefix = seen.headers.get("x-forwarded-prefix");
        let told = prefix
            .and_then(|p| p.to_str().ok())
            .unwrap_or("none")
            .to_string();
        let mut response = reply(302, told);
        let value = http::HeaderValue::from_str(&location).expect("location");
        response.headers_mut().insert("location", value);
        response
    })
    .await;
    let b = spawn_upstream(|_| async move { reply(200, "b") }).await;
    let proxy = spawn_proxy(&routing_config(a.addr, b.addr)).await;
    let spoof = [("x-forwarded-prefix", "/evil")];
    let cases = [
        ("/api/v2/old", "/api/v2/items/1"),
        ("/api/v2/aware", "/api/v2/items/3"),
        ("/api/v2/relative", "items/4"),
        ("/api/v2/elsewhere", "http://elsewhere.test/x"),
    ];
    for (path, want) in cases {
        let reply = send("GET", &proxy.url(path), &spoof, "").await;
        assert_eq!(reply.status, 302, "{path}");
        assert_eq!(reply.header("location"), Some(want), "{path}");
        assert_eq!(
            reply.text(),
            "/api/v2",
            "{path}: the prefix the upstream was told"
        );
    }
    let reply = send("GET", &proxy.url("/api/v2/absolute"), &[], "").await;
    let want = format!("http://{}/api/v2/items/2", proxy.addr);
    assert_eq!(reply.header("location"), Some(want.as_str()));
    // A route that does not strip leaves the Location, and tells the upstream nothing.
    let reply = send("GET", &proxy.url("/old"), &spoof, "").await;
    assert_eq!(reply.header("location"), Some("/items/1"));
    assert_eq!(reply.text(), "none");
    proxy.stop().await;
}

/// On any route, an absolute `Location` of a redirect or a create on a target's own address,
/// which the client cannot reach, becomes a path on the client's host, as NGINX's default
/// `proxy_redirect` does; one on another host, and the `Location` of other answers, are left.
#[tokio::test]
async fn a_location_on_the_targets_own_address_becomes_a_path() {
    let own = Arc::new(std::sync::OnceLock::<String>::new());
    let known = own.clone();
    let upstream = spawn_upstream(move |seen| {
        let own = known.get().cloned().unwrap_or_default();
        async move {
            let (status, location) = match seen.uri.as_str() {
                "/moved" => (301, format!("http://{own}/new?x=1")),
                "/items" => (201, format!("http://{own}/items/5")),
                "/plain" => (200, format!("http://{own}/items/6")),
                _ => (302, "http://elsewhere.test/x".to_string()),
            };
            let mut response = reply(status, "");
            let value = http::HeaderValue::from_str(&location).expect("location");
            response.headers_mut().insert("location", value);
            response
        }
    })
    .await;
    own.set(upstream.addr.to_string()).expect("set once");
    let proxy = spawn_proxy(&simple_config(upstream.addr, NO_PROFILE)).await;
    let own_plain = format!("http://{}/items/6", upstream.addr);
    let cases = [
        ("GET", "/moved", 301, "/new?x=1"),
        ("POST", "/items", 201, "/items/5"),
        ("GET", "/plain", 200, own_plain.as_str()),
        ("GET", "/away", 302, "http://elsewhere.test/x"),
    ];
    for (method, path, status, want) in cases {
        let reply = send(method, &proxy.url(path), &[], "").await;
        assert_eq!(reply.status, status, "{path}");
        assert_eq!(reply.header("location"), Some(want), "{path}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn no_matching_route_is_404_from_the_proxy() {
    let upstream = fixed_upstream(200, "{}").await;
    let config = simple_config(upstream.addr, "").replace(
        "path_prefix = \"/\"",
        "path_prefix = \"/api\"\nhost = \"api.test\"",
    );
    let proxy = spawn_proxy(&config).await;
    for (host, path) in [("api.test", "/other"), ("other.test", "/api")] {
        let reply = send("GET", &proxy.url(path), &[("host", host)], "").await;
        assert_proxy_error(&reply, 404, "no route");
    }
    assert!(upstream.requests().is_empty());
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown

#[tokio::test]
async fn graceful_shutdown_finishes_the_request_in_flight() {
    let release = Arc::new(Notify::new());
    let gate = release.clone();
    let upstream = spawn_upstream(move |_| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            reply(200, "finished")
        }
    })
    .await;
    let mut proxy = spawn_proxy(&simple_config(upstream.addr, NO_PROFILE)).await;
    let addr = proxy.addr;
    let url = proxy.url("/slow");
    let in_flight = tokio::spawn(async move { get(&url).await });
    wait_until(Duration::from_secs(10), "request reaches upstream", || {
        upstream.requests().len() == 1
    })
    .await;

    let server = proxy.begin_shutdown();
    wait_until(Duration::from_secs(10), "listener closes", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    assert!(!server.is_finished(), "the server waits for the request");

    release.notify_one();
    let reply = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("request finishes")
        .expect("request task");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "finished");
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server finishes after the request")
        .expect("server task");
}
