//! Reliability and security: hostile or broken clients over raw TCP, failing upstreams from a
//! scriptable fault upstream, HTTP/2 abuse, and what must never reach a log. Each test states
//! what the upstream received, not only what the client got.
mod support;

use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::fault::{ok_response, spawn_fault, FaultConn};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Route setting that turns the contract profile off, so the proxy's own statuses show.
const NO_PROFILE: &str = r#"profile = "none""#;

/// A config with one upstream and one route; `server` goes into `[server]`, `route` into the
/// route, `tail` after it (more tables).
fn config_for(upstream: SocketAddr, server: &str, route: &str, tail: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
{server}

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
connect_timeout = "1s"
response_timeout = "5s"

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
{route}
{tail}
"#
    )
}

/// Writes `bytes`, half-closes, and reads what comes back until the proxy closes.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let _ = stream.shutdown().await;
    read_to_close(&mut stream, Duration::from_secs(10)).await
}

/// The in-flight requests gauge, read from the metrics text.
fn in_flight(proxy: &TestProxy) -> i64 {
    let text = proxy.live.metrics.encode(proxy.log.dropped());
    text.lines()
        .find_map(|line| line.strip_prefix("restatus_in_flight_requests "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Reads until a response head has arrived (at most 10 s); returns everything read.
async fn read_response_head(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while !out.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(at, _)| text.get(at + 9..at + 12)?.parse().ok())
        .collect()
}

/// An upstream that records each request and answers 200 with `uri body` as its body.
async fn echo_upstream() -> Upstream {
    spawn_upstream(|seen| async move {
        let body = format!("{} {}", seen.uri, String::from_utf8_lossy(&seen.body));
        reply(200, body)
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Hostile or broken clients

/// What a smuggling attempt must come to.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    /// 400 from the parser; the upstream sees nothing.
    Refused,
    /// Ambiguous framing read one way: exactly one request reaches the upstream, with this
    /// body, and the connection closes after it, so the bytes after it are never read.
    Forwarded(&'static str),
    /// Unambiguous framing: the request with this body, then the next request read exactly
    /// where the body ends.
    Pipelined(&'static str),
}

/// Request smuggling (RFC 9112 §6.1-6.3, §11.2): each head below is followed by the bytes of
/// a second request, placed so that a wrong reading of the framing would hide it inside the
/// body or reveal a request inside the body. The upstream sees one well-framed request per
/// case (two when the framing is unambiguous), and never a request from inside a body.
#[tokio::test]
async fn smuggling_attempts_reach_the_upstream_only_as_well_framed_requests() {
    use Verdict::*;
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    // With Content-Length: 48 read instead of the chunked framing, this would be body bytes.
    let hidden = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let chunked_abc = "3\r\nabc\r\n0\r\n\r\n";
    let cases: &[(&str, String, Verdict)] = &[
        (
            "Content-Length with Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_abc}"),
            Forwarded("abc"),
        ),
        (
            "Transfer-Encoding with Content-Length",
            format!("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 48\r\n\r\n{chunked_abc}"),
            Forwarded("abc"),
        ),
        (
            "duplicate differing Content-Length",
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc".into(),
            Refused,
        ),
        (
            "Content-Length list",
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 40\r\n\r\nabc".into(),
            Refused,
        ),
        ("signed Content-Length", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc".into(), Refused),
        ("negative Content-Length", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nabc".into(), Refused),
        ("hex Content-Length", "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc".into(), Refused),
        (
            "space before the colon",
            "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc".into(),
            Refused,
        ),
        (
            "unknown Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n{chunked_abc}"),
            Refused,
        ),
        (
            "chunked not last",
            format!("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n{chunked_abc}"),
            Refused,
        ),
        (
            "Transfer-Encoding: Chunked, in another case",
            format!("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n{chunked_abc}"),
            Pipelined("abc"),
        ),
        (
            "doubled Transfer-Encoding",
            format!("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_abc}"),
            Refused,
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!("POST /a HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{chunked_abc}"),
            Refused,
        ),
        (
            "obs-fold",
            "POST /a HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\nContent-Length: 3\r\n\r\nabc".into(),
            Refused,
        ),
        (
            "NUL in a value",
            "POST /a HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\nContent-Length: 3\r\n\r\nabc".into(),
            Refused,
        ),
        (
            "NUL in the request line",
            "POST /a\0b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc".into(),
            Refused,
        ),
    ];
    for (what, head, verdict) in cases {
        let before = upstream.requests().len();
        let got = exchange(proxy.addr, format!("{head}{hidden}").as_bytes()).await;
        let seen = &upstream.requests()[before..];
        match verdict {
            Refused => {
                assert_eq!(statuses(&got), [400], "{what}: {got:?}");
                assert!(seen.is_empty(), "{what}: the upstream saw {seen:?}");
            }
            Forwarded(body) | Pipelined(body) => {
                let pipelined = matches!(verdict, Pipelined(_));
                let want = if pipelined { 2 } else { 1 };
                assert_eq!(seen.len(), want, "{what}: the upstream saw {seen:?}");
                assert_eq!(seen[0].uri, "/a", "{what}");
                assert_eq!(&seen[0].body[..], body.as_bytes(), "{what}");
                if pipelined {
                    assert_eq!(seen[1].uri, "/smuggled", "{what}");
                    assert!(seen[1].body.is_empty(), "{what}");
                }
                assert_eq!(statuses(&got), vec![200; want], "{what}: {got:?}");
            }
        }
    }
    proxy.stop().await;
}

/// Pipelined requests (RFC 9112 §9.3.2) are answered in the order sent, each with its own
/// body, and the upstream sees them in that order, even when the client shuts down its
/// sending side right after the last one (RFC 9112 §9.6).
#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let got = exchange(
        proxy.addr,
        b"GET /p/1 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /p/2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
          GET /p/3 HTTP/1.1\r\nHost: a\r\n\r\n\
          POST /p/4 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
          GET /p/5 HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&got), [200; 5], "{got}");
    let answers = ["/p/1 ", "/p/2 hello", "/p/3 ", "/p/4 hi", "/p/5 "];
    let positions: Vec<usize> = answers
        .iter()
        .map(|a| {
            got.find(a)
                .unwrap_or_else(|| panic!("{a} missing from {got}"))
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{got}");
    let uris: Vec<String> = upstream.requests().into_iter().map(|s| s.uri).collect();
    assert_eq!(uris, ["/p/1", "/p/2", "/p/3", "/p/4", "/p/5"]);
    proxy.stop().await;
}

/// The proxy answers before reading the body (no route; a declared body over the limit); the
/// client sends its body afterwards, and that body holds what looks like a request. It is
/// drained or the connection closed: never parsed as a request.
#[tokio::test]
async fn early_answers_never_parse_the_body_as_a_request() {
    let upstream = echo_upstream().await;
    let route = format!("{NO_PROFILE}\npath_prefix = \"/api\"");
    let config = config_for(upstream.addr, "", "", "[limits]\nrequest_body = \"1KiB\"")
        .replace("path_prefix = \"/\"\n", &format!("{route}\n"));
    let proxy = spawn_proxy(&config).await;
    let hidden = "GET /api/smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    for (path, length, status) in [("/other", 200, 404), ("/api/up", 5000, 413)] {
        let body: String = hidden.repeat(length / hidden.len() + 1)[..length].to_string();
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        let head = format!("POST {path} HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n");
        stream.write_all(head.as_bytes()).await.expect("write head");
        let first = read_response_head(&mut stream).await;
        assert_eq!(statuses(&first), [status], "{path}: {first}");
        // The proxy may already have closed; the body then goes nowhere.
        let _ = stream.write_all(body.as_bytes()).await;
        let _ = stream.shutdown().await;
        let rest = read_to_close(&mut stream, Duration::from_secs(10)).await;
        let all = format!("{first}{rest}");
        assert_eq!(statuses(&all), [status], "{path}: one response only: {all}");
    }
    assert!(
        upstream
            .requests()
            .iter()
            .all(|s| !s.uri.contains("smuggled")),
        "{:?}",
        upstream.requests()
    );
    proxy.stop().await;
}

/// restatus has no upgrade support: `Upgrade`, `Connection` and what it names (such as
/// `HTTP2-Settings` for h2c) are hop-by-hop (RFC 9110 §7.6.1, §7.8) and never reach the
/// upstream; the request is served as plain HTTP/1.1.
#[tokio::test]
async fn upgrade_and_h2c_headers_never_reach_the_upstream() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let requests = [
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        "GET /h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
    ];
    for request in requests {
        let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
        stream.write_all(request.as_bytes()).await.expect("write");
        let head = read_response_head(&mut stream).await;
        assert_eq!(statuses(&head), [200], "{head}");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for request in &seen {
        for name in ["upgrade", "connection", "http2-settings"] {
            assert!(
                !request.headers.contains_key(name),
                "{name} reached the upstream: {:?}",
                request.headers
            );
        }
    }
    proxy.stop().await;
}

/// An upstream that answers `101 Switching Protocols` although it was never asked to switch
/// gets no tunnel: the client gets a 502 and bytes it sends afterwards never reach it.
#[tokio::test]
async fn no_tunnel_opens_on_an_unrequested_101() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            conn.send(b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
                .await;
            conn.hold().await;
        }
    })
    .await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .expect("write");
    let head = read_response_head(&mut stream).await;
    assert_eq!(statuses(&head), [502], "{head}");
    let _ = stream.write_all(b"TUNNELLED BYTES\r\n\r\n").await;
    // Whatever the proxy made of those bytes, it has made it once it answers the next request.
    let _ = stream
        .write_all(b"GET /after HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await;
    let _ = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(
        !upstream.all_bytes().contains("TUNNELLED"),
        "{}",
        upstream.all_bytes()
    );
    proxy.stop().await;
}

/// A URI over `limits.uri` and a header section over `server.max_header_bytes` or with more
/// than 100 fields are refused before the upstream is contacted: 414 and 431 without a
/// profile, and normalized to the contract's 400 under the default profile, over HTTP/1.1
/// and HTTP/2.
#[tokio::test]
async fn uri_and_header_limits_are_refused_and_normalized_by_the_profile() {
    let upstream = spawn_fault(|conn: FaultConn| conn.hold()).await;
    let server = "max_header_bytes = \"2KiB\"";
    let tail = "[limits]\nuri = \"1KiB\"";
    let long_uri = format!("/{}", "a".repeat(2000));
    let big_header = "b".repeat(3000);
    let many: Vec<(String, String)> = (0..150).map(|i| (format!("x-h{i}"), "1".into())).collect();
    for (profile, uri_status, header_status) in [(NO_PROFILE, 414, 431), ("", 400, 400)] {
        let proxy = spawn_proxy(&config_for(upstream.addr, server, profile, tail)).await;
        let reply = get(&proxy.url(&long_uri)).await;
        assert_eq!(reply.status, uri_status, "{}", reply.text());
        assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
        let reply = send("GET", &proxy.url("/"), &[("x-big", &big_header)], "").await;
        assert_eq!(reply.status, header_status, "{}", reply.text());
        let headers: Vec<(&str, &str)> =
            many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        let reply = send("GET", &proxy.url("/"), &headers, "").await;
        assert_eq!(reply.status, header_status, "{}", reply.text());
        // Over HTTP/2 too: the protocol layer lets the head through to the same check.
        let big = [("x-big", big_header.as_str())];
        let reply = send_with(&h2_client(), "GET", &proxy.url("/"), &big, String::new()).await;
        assert_eq!(reply.status, header_status, "HTTP/2: {}", reply.text());
        assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
        if profile.is_empty() {
            let originals: Vec<u64> = proxy
                .records()
                .iter()
                .filter_map(|r| r["upstream_status"].as_u64())
                .collect();
            assert_eq!(originals, [414, 431, 431, 431], "{:?}", proxy.records());
        }
        proxy.stop().await;
    }
    assert_eq!(upstream.connections(), 0, "the upstream was contacted");
}

/// A declared body over `limits.request_body` is refused before the upstream is contacted.
#[tokio::test]
async fn declared_body_over_the_limit_never_contacts_the_upstream() {
    let upstream = spawn_fault(|conn: FaultConn| conn.hold()).await;
    let tail = "[limits]\nrequest_body = \"1KiB\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, tail)).await;
    let got = exchange(
        proxy.addr,
        format!(
            "POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 2048\r\n\r\n{}",
            "x".repeat(2048)
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&got), [413], "{got}");
    assert!(
        got.to_ascii_lowercase().contains("connection: close"),
        "{got}"
    );
    assert_eq!(upstream.connections(), 0);
    proxy.stop().await;
}

/// A short chunked body over `limits.request_body` is refused with 413 before anything goes
/// upstream: the start of a body of unknown length is read ahead.
#[tokio::test]
async fn a_short_chunked_body_over_the_limit_never_reaches_the_upstream() {
    let upstream = spawn_fault(|conn: FaultConn| conn.hold()).await;
    let tail = "[limits]\nrequest_body = \"1KiB\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, tail)).await;
    let chunk = format!("200\r\n{}\r\n", "y".repeat(512));
    let request = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(8)
    );
    let got = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(statuses(&got), [413], "{got}");
    assert_eq!(upstream.connections(), 0);
    proxy.stop().await;
}

/// Polls until the request bodies held whole come to `want` bytes or more (`at_most`: to
/// `want` or fewer).
async fn held_reaches(proxy: &TestProxy, want: u64, at_most: bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = proxy.live.proxy().held.used();
        if (at_most && held <= want) || (!at_most && held >= want) {
            return;
        }
        assert!(Instant::now() < deadline, "{held} bytes held, not {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The head of a chunked upload on a connection that closes after it.
const CHUNKED_UPLOAD: &str =
    "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";

/// A proxy whose `request_body` and `held_bodies` are both 1 MiB, in front of an upstream
/// that answers with the length of the body it got.
async fn with_held_bodies_of_1mib() -> (Upstream, TestProxy) {
    let upstream =
        spawn_upstream(|seen| async move { reply(200, seen.body.len().to_string()) }).await;
    let tail = "[limits]\nrequest_body = \"1MiB\"\nheld_bodies = \"1MiB\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, tail)).await;
    (upstream, proxy)
}

/// Request bodies read whole before they go upstream (chunked, to a service that reads no
/// chunked body) take at most `limits.held_bodies` together: a body that would pass it gets
/// 503 with `Retry-After`, the body held goes on, and its memory is given back once it has
/// gone.
#[tokio::test]
async fn bodies_read_whole_are_bounded_by_held_bodies() {
    let (_upstream, proxy) = with_held_bodies_of_1mib().await;
    let head = CHUNKED_UPLOAD;
    let chunk = format!("{:x}\r\n{}\r\n", 600 << 10, "a".repeat(600 << 10));
    let mut first = TcpStream::connect(proxy.addr).await.expect("connect");
    first
        .write_all(format!("{head}{chunk}").as_bytes())
        .await
        .expect("first body");
    held_reaches(&proxy, 600 << 10, false).await;
    let whole = format!("{head}{chunk}0\r\n\r\n");
    let second = exchange(proxy.addr, whole.as_bytes()).await;
    assert!(
        second.starts_with("HTTP/1.1 503 "),
        "{}",
        &second[..second.len().min(300)]
    );
    assert!(
        second.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{second}"
    );
    assert!(second.contains("held_bodies"), "{second}");
    first.write_all(b"0\r\n\r\n").await.expect("end");
    let answer = read_to_close(&mut first, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with(&(600 << 10).to_string()), "{answer}");
    held_reaches(&proxy, 0, true).await;
    let again = exchange(proxy.addr, whole.as_bytes()).await;
    assert!(
        again.starts_with("HTTP/1.1 200 "),
        "{}",
        &again[..again.len().min(300)]
    );
    proxy.stop().await;
}

/// Chunked `size` bytes in pieces of 40,000 (not a power of two), with the last chunk.
fn chunked_of(size: usize) -> String {
    let mut body = String::new();
    let mut left = size;
    while left > 0 {
        let piece = left.min(40_000);
        body.push_str(&format!("{piece:x}\r\n{}\r\n", "b".repeat(piece)));
        left -= piece;
    }
    body + "0\r\n\r\n"
}

/// One body as large as `request_body` fits a `held_bodies` of the same size, in whatever
/// pieces it comes; one byte more is a 413, not a 503 to send again.
#[tokio::test]
async fn a_body_as_large_as_the_limit_fits_held_bodies() {
    let (_upstream, proxy) = with_held_bodies_of_1mib().await;
    let head = CHUNKED_UPLOAD;
    let whole = exchange(
        proxy.addr,
        format!("{head}{}", chunked_of(1 << 20)).as_bytes(),
    )
    .await;
    assert!(
        whole.starts_with("HTTP/1.1 200 "),
        "{}",
        &whole[..whole.len().min(300)]
    );
    assert!(whole.ends_with(&(1 << 20).to_string()), "{whole}");
    let over = exchange(
        proxy.addr,
        format!("{head}{}", chunked_of((1 << 20) + 1)).as_bytes(),
    )
    .await;
    assert!(
        over.starts_with("HTTP/1.1 413 "),
        "{}",
        &over[..over.len().min(300)]
    );
    held_reaches(&proxy, 0, true).await;
    proxy.stop().await;
}

/// A proxy with `server` settings in front of an upstream that holds every connection.
async fn before_a_holding_upstream(server: &str) -> (support::fault::FaultUpstream, TestProxy) {
    let upstream = spawn_fault(|conn: FaultConn| conn.hold()).await;
    let proxy = spawn_proxy(&config_for(upstream.addr, server, NO_PROFILE, "")).await;
    (upstream, proxy)
}

/// A body read whole must arrive within `server.body_timeout` in all: a client that
/// trickles one, never silent for that long, gets 408 all the same, and gives its memory back.
#[tokio::test]
async fn a_trickled_body_read_whole_is_cut_at_body_timeout() {
    let (upstream, proxy) = before_a_holding_upstream("body_timeout = \"500ms\"").await;
    let stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let head = "POST /slow HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    write.write_all(head.as_bytes()).await.expect("head");
    // A byte every 100 ms, for up to 10 s: never silent for the 500 ms between reads.
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            if write.write_all(b"1\r\na\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
            Ok(Ok(n @ 1..)) => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(
        !trickle.is_finished(),
        "the answer came only once the client stopped"
    );
    trickle.abort();
    held_reaches(&proxy, 0, true).await;
    assert_eq!(upstream.connections(), 0, "the upstream was contacted");
    proxy.stop().await;
}

/// A chunked body that crosses `limits.request_body` mid-stream: the client gets 413, and the
/// upstream's request is cut off (its connection closed) before the body completes.
#[tokio::test]
async fn chunked_body_over_the_limit_is_aborted_mid_stream() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_head().await.is_some() {
            conn.hold().await;
        }
    })
    .await;
    // Over the 1 MiB read ahead for a target not heard from yet, so that it streams.
    let tail = "[limits]\nrequest_body = \"1536KiB\"";
    let config = streaming_chunked(&config_for(upstream.addr, "", NO_PROFILE, tail));
    let proxy = spawn_proxy(&config).await;
    let chunk = format!("40000\r\n{}\r\n", "y".repeat(0x40000));
    let request = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(8)
    );
    let got = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(statuses(&got), [413], "{got}");
    wait_until(
        Duration::from_secs(10),
        "the upstream request aborted",
        || upstream.logs().first().is_some_and(|l| l.closed_by_peer),
    )
    .await;
    let received = upstream.all_bytes();
    let start = &received[..received.len().min(200)];
    assert!(received.starts_with("POST /up"), "{start}");
    assert!(
        !received.ends_with("0\r\n\r\n"),
        "the body was completed upstream"
    );
    assert!(
        received.len() < 8 * 0x40000,
        "{} bytes went upstream",
        received.len()
    );
    proxy.stop().await;
}

/// A request head trickled a field at a time is closed at `header_timeout` (measured from its
/// first byte), however steadily bytes keep coming.
#[tokio::test]
async fn trickled_headers_are_closed_at_header_timeout() {
    let (upstream, proxy) = before_a_holding_upstream("header_timeout = \"500ms\"").await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .expect("write");
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 1024];
        loop {
            tokio::select! {
                _ = pace.tick() => {
                    if stream.write_all(b"X-Trickle: 1\r\n").await.is_err() {
                        return;
                    }
                }
                read = stream.read(&mut buf) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        return;
                    }
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "a trickled head kept its connection open");
    assert_eq!(upstream.connections(), 0);
    proxy.stop().await;
}

/// A body that stops arriving for longer than `body_timeout`: the client gets 408 and its
/// connection closes, the upstream request is aborted (its connection closed by the proxy),
/// and that upstream connection is not used again.
#[tokio::test]
async fn stalled_body_is_cut_at_body_timeout_and_its_upstream_connection_dropped() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.index == 0 {
            if conn.read_head().await.is_some() {
                conn.hold().await;
            }
            return;
        }
        while conn.read_request().await.is_some() {
            conn.send(&ok_response("fresh")).await;
        }
    })
    .await;
    let server = "body_timeout = \"300ms\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, server, NO_PROFILE, "")).await;
    let got = exchange_holding_open(
        proxy.addr,
        b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await;
    assert_eq!(statuses(&got), [408], "{got}");
    wait_until(
        Duration::from_secs(10),
        "the upstream request aborted",
        || upstream.logs().first().is_some_and(|l| l.closed_by_peer),
    )
    .await;
    let reply = get(&proxy.url("/next")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "fresh"));
    let logs = upstream.logs();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(logs[1].text().starts_with("GET /next"), "{logs:?}");
    proxy.stop().await;
}

const BIG_BODY: usize = 32 << 20;

/// An upstream that answers with a `BIG_BODY`-byte body, more than the sockets on the way can
/// hold, then waits for the proxy to close the connection.
async fn serving_a_big_body() -> support::fault::FaultUpstream {
    spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            let mut bytes =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {BIG_BODY}\r\n\r\n").into_bytes();
            bytes.resize(bytes.len() + BIG_BODY, b'x');
            conn.send(&bytes).await;
            conn.hold().await;
        }
    })
    .await
}

/// A client with a small receive buffer that asks for the big body.
async fn asking_for_the_big_body(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    stream
}

/// A client that asks for a response and then reads none of it: once `send_timeout` passes
/// with the proxy's writes blocked, the proxy closes the client connection and the upstream
/// one, instead of holding both (and the upstream's response) open for good.
#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_send_timeout() {
    let upstream = serving_a_big_body().await;
    let server = "send_timeout = \"300ms\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, server, NO_PROFILE, "")).await;
    let stream = asking_for_the_big_body(proxy.addr).await;
    wait_until(
        Duration::from_secs(10),
        "the upstream connection closed by the proxy",
        || upstream.logs().first().is_some_and(|l| l.closed_by_peer),
    )
    .await;
    drop(stream);
    proxy.stop().await;
}

/// The same over HTTP/2, where a client that reads nothing keeps its flow-control window shut
/// rather than its socket: the stream waits on the window, and the connection is closed at
/// `send_timeout` all the same.
#[tokio::test]
async fn an_http2_client_that_keeps_its_window_shut_is_closed_at_send_timeout() {
    let upstream = serving_a_big_body().await;
    let server = "send_timeout = \"300ms\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, server, NO_PROFILE, "")).await;
    let request = http::Request::get(proxy.url("/big"))
        .body(full(""))
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), h2_client().request(request))
        .await
        .expect("a response head in time")
        .expect("a response head");
    assert_eq!(response.status(), 200);
    // The body is held, not read: no WINDOW_UPDATE goes out for it.
    wait_until(
        Duration::from_secs(10),
        "the upstream connection closed by the proxy",
        || upstream.logs().first().is_some_and(|l| l.closed_by_peer),
    )
    .await;
    drop(response);
    proxy.stop().await;
}

/// A client that reads with pauses, each shorter than `send_timeout` but longer in all, gets
/// the whole body: the timeout is the time a write may stay blocked, not a bound on the body.
#[tokio::test]
async fn a_client_that_reads_with_pauses_gets_the_whole_body() {
    let upstream = serving_a_big_body().await;
    let server = "send_timeout = \"500ms\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, server, NO_PROFILE, "")).await;
    let mut stream = asking_for_the_big_body(proxy.addr).await;
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    let mut next_pause = BIG_BODY / 4;
    while let Ok(Ok(n @ 1..)) =
        tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await
    {
        got += n;
        if got >= next_pause {
            // Not synchronization: the pause is the behaviour under test.
            tokio::time::sleep(Duration::from_millis(250)).await;
            next_pause += BIG_BODY / 4;
        }
    }
    assert!(got > BIG_BODY, "only {got} bytes of head and body arrived");
    proxy.stop().await;
}

/// Writes `bytes` without half-closing, and reads until the proxy closes (at most 10 s).
async fn exchange_holding_open(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_to_close(&mut stream, Duration::from_secs(10)).await
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 abuse, spoken frame by frame (RFC 9113 §4, §6)

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA_HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// One frame: its type, flags and payload; `None` at EOF or on error.
async fn read_frame(stream: &mut tokio::net::tcp::OwnedReadHalf) -> Option<(u8, u8, Vec<u8>)> {
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).await.ok()?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.ok()?;
    Some((head[3], head[4], payload))
}

/// HPACK for `GET http://a/` from the static table (RFC 7541 Appendix A), `:authority`
/// as a literal.
const GET_BLOCK: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x01, b'a'];

/// Opens an h2c connection (prior knowledge) and returns the server's SETTINGS.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
    Vec<(u16, u32)>,
) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write.write_all(H2_PREFACE).await.expect("preface");
    write
        .write_all(&frame(SETTINGS, 0, 0, &[]))
        .await
        .expect("settings");
    let settings = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (kind, flags, payload) = read_frame(&mut read).await.expect("server settings");
            if kind == SETTINGS && flags & 0x1 == 0 {
                return payload
                    .chunks_exact(6)
                    .map(|c| {
                        let id = u16::from_be_bytes([c[0], c[1]]);
                        (id, u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
                    })
                    .collect::<Vec<_>>();
            }
        }
    })
    .await
    .expect("SETTINGS within 10s");
    write
        .write_all(&frame(SETTINGS, 0x1, 0, &[]))
        .await
        .expect("ack");
    (read, write, settings)
}

/// Reads frames until a HEADERS or DATA frame ends a stream: a whole response.
async fn until_answered(read: &mut tokio::net::tcp::OwnedReadHalf) {
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some((kind, flags, _)) = read_frame(read).await {
            if kind <= DATA_HEADERS && flags & END_STREAM != 0 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "no whole response");
}

/// Reads frames until GOAWAY or the end of the connection (at most `limit`); returns the
/// GOAWAY error code, or `None` when the connection ended without one.
async fn until_goaway(
    read: &mut tokio::net::tcp::OwnedReadHalf,
    limit: Duration,
) -> Result<Option<u32>, &'static str> {
    tokio::time::timeout(limit, async {
        while let Some((kind, _, payload)) = read_frame(read).await {
            if kind == GOAWAY && payload.len() >= 8 {
                return Some(u32::from_be_bytes([
                    payload[4], payload[5], payload[6], payload[7],
                ]));
            }
        }
        None
    })
    .await
    .map_err(|_| "the connection stayed open")
}

/// An idle HTTP/2 connection that keeps sending connection frames (PINGs here, as clients
/// send to keep a connection alive) is not cut at `header_timeout`, which is for request
/// heads: it lasts its `idle_timeout`, then ends with a GOAWAY (NO_ERROR), so that the client
/// knows no request was lost (RFC 9113 §6.8).
#[tokio::test]
async fn an_idle_http2_connection_lasts_its_idle_timeout_and_ends_with_goaway() {
    let upstream = echo_upstream().await;
    let server = "header_timeout = \"300ms\"\nidle_timeout = \"2s\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, server, NO_PROFILE, "")).await;
    let (mut read, mut write, _) = h2_connect(proxy.addr).await;
    write
        .write_all(&frame(DATA_HEADERS, END_STREAM | END_HEADERS, 1, GET_BLOCK))
        .await
        .expect("headers");
    until_answered(&mut read).await;
    let idle_from = std::time::Instant::now();
    let pinger = tokio::spawn(async move {
        let mut pace = tokio::time::interval(Duration::from_millis(100));
        loop {
            pace.tick().await;
            if write.write_all(&frame(PING, 0, 0, &[7; 8])).await.is_err() {
                return;
            }
        }
    });
    let goaway = until_goaway(&mut read, Duration::from_secs(10)).await;
    pinger.abort();
    assert_eq!(goaway, Ok(Some(0)), "no GOAWAY NO_ERROR");
    let lasted = idle_from.elapsed();
    assert!(
        lasted >= Duration::from_millis(1500),
        "closed after {lasted:?}"
    );
    proxy.stop().await;
}

/// HPACK for `POST http://a/` with `content-length: 50000` (static table, RFC 7541
/// Appendix A; the length as a literal with indexing of name 28).
const POST_BLOCK: &[u8] = &[
    0x83, 0x86, 0x84, 0x41, 0x01, b'a', 0x5c, 0x05, b'5', b'0', b'0', b'0', b'0',
];

/// An early answer (a 413 for a declared body over the limit) to an HTTP/2 client that goes
/// on sending its body: the rest of the body is read and thrown away, so the stream ends
/// without a reset, and a client that reads the answer only after sending its whole body
/// (Python's httpx) gets it instead of an error.
#[tokio::test]
async fn an_http2_body_after_an_early_answer_is_read_instead_of_reset() {
    let upstream = echo_upstream().await;
    let tail = "[limits]\nrequest_body = \"1KiB\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, tail)).await;
    let (mut read, mut write, _) = h2_connect(proxy.addr).await;
    write
        .write_all(&frame(DATA_HEADERS, END_HEADERS, 1, POST_BLOCK))
        .await
        .expect("headers");
    until_answered(&mut read).await;
    // The whole body, within the initial flow-control window, then a PING: frames come
    // back in order, so its ACK follows anything the body caused.
    for (at, size) in [(0, 16_384), (1, 16_384), (2, 16_384), (3, 848)] {
        let flags = if at == 3 { END_STREAM } else { 0 };
        write
            .write_all(&frame(0x0, flags, 1, &vec![b'x'; size]))
            .await
            .expect("data");
    }
    write
        .write_all(&frame(PING, 0, 0, &[9; 8]))
        .await
        .expect("ping");
    let kinds = tokio::time::timeout(Duration::from_secs(10), async {
        let mut kinds = Vec::new();
        while let Some((kind, flags, _)) = read_frame(&mut read).await {
            if kind == PING && flags & 0x1 != 0 {
                return kinds;
            }
            kinds.push(kind);
        }
        kinds
    })
    .await
    .expect("PING ACK within 10s");
    assert!(
        !kinds.contains(&RST_STREAM),
        "the stream was reset: {kinds:?}"
    );
    assert!(
        !kinds.contains(&GOAWAY),
        "the connection went away: {kinds:?}"
    );
    proxy.stop().await;
}

/// RFC 9113 §8.3.1: an HTTP/2 request whose `Host` field names another host than its
/// `:authority` is refused, before the upstream is contacted; one that names the same host
/// (a default port, another case) goes through.
#[tokio::test]
async fn http2_host_that_disagrees_with_authority_is_refused() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let client = h2_client();
    let url = proxy.url("/x");
    let refused = send_with(&client, "GET", &url, &[("host", "b.example")], "").await;
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert!(refused.text().contains(":authority"), "{}", refused.text());
    let own = proxy.addr.to_string();
    let same = send_with(&client, "GET", &url, &[("host", own.as_str())], "").await;
    assert_eq!(same.status, 200, "{}", same.text());
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the agreeing request went upstream"
    );
    proxy.stop().await;
}

/// The server advertises its stream and header-list limits, and a header block continued
/// without end (CONTINUATION flood) ends the connection instead of growing a buffer.
#[tokio::test]
async fn http2_limits_are_advertised_and_an_endless_continuation_ends_the_connection() {
    let upstream = echo_upstream().await;
    let server = "max_header_bytes = \"8KiB\"";
    let proxy = spawn_proxy(&config_for(upstream.addr, server, NO_PROFILE, "")).await;
    let (mut read, mut write, settings) = h2_connect(proxy.addr).await;
    assert!(
        settings.contains(&(0x3, 256)),
        "MAX_CONCURRENT_STREAMS: {settings:?}"
    );
    // Twice `max_header_bytes` plus `limits.uri` (8 KiB by default), as for HTTP/1.1.
    assert!(
        settings.contains(&(0x6, 2 * 8192 + 8192)),
        "MAX_HEADER_LIST_SIZE: {settings:?}"
    );

    write
        .write_all(&frame(DATA_HEADERS, END_STREAM, 1, GET_BLOCK))
        .await
        .expect("headers");
    // Literal fields without indexing, about 16 KB per frame, sent until the server stops it.
    let field: Vec<u8> = [&[0x00, 0x05][..], b"x-pad", &[100], &[b'v'; 100]].concat();
    let block = field.repeat(16_000 / field.len());
    let writer = tokio::spawn(async move {
        let mut sent = 0usize;
        while sent < 256 << 20 {
            if write
                .write_all(&frame(CONTINUATION, 0, 1, &block))
                .await
                .is_err()
            {
                break;
            }
            sent += block.len();
        }
        sent
    });
    let ended = until_goaway(&mut read, Duration::from_secs(30)).await;
    assert!(
        ended.is_ok(),
        "an endless CONTINUATION kept the connection open"
    );
    drop(read);
    let sent = writer.await.expect("writer");
    assert!(
        sent < 64 << 20,
        "the server read {sent} bytes of one header block"
    );
    assert!(upstream.requests().is_empty());
    let reply = send_with(&h2_client(), "GET", &proxy.url("/after"), &[], "").await;
    assert_eq!(reply.status, 200, "the proxy still serves");
    proxy.stop().await;
}

/// Malformed HTTP/2 requests (RFC 9113 §8.2.1: an uppercase field name; §8.3: an unknown
/// pseudo-header; §8.2.1: NUL in a value) are never forwarded (§8.1.1). The HTTP/2 layer
/// answers PROTOCOL_ERROR: it ends the whole connection with GOAWAY where the RFC asks for a
/// stream error, so other streams on that connection end too (see docs/reliability.md).
#[tokio::test]
async fn malformed_http2_requests_are_never_forwarded() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let literal = |name: &[u8], value: &[u8]| {
        [
            &[0x00, name.len() as u8][..],
            name,
            &[value.len() as u8],
            value,
        ]
        .concat()
    };
    for field in [
        literal(b"X-Up", b"1"),
        literal(b":secret", b"1"),
        literal(b"x-nul", b"a\0b"),
    ] {
        let (mut read, mut write, _) = h2_connect(proxy.addr).await;
        let block = [GET_BLOCK, &field].concat();
        write
            .write_all(&frame(DATA_HEADERS, END_STREAM | END_HEADERS, 1, &block))
            .await
            .expect("headers");
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some((kind, _, payload)) = read_frame(&mut read).await {
                match kind {
                    RST_STREAM => return Some(u32::from_be_bytes(payload[..4].try_into().ok()?)),
                    GOAWAY => return Some(u32::from_be_bytes(payload[4..8].try_into().ok()?)),
                    _ => {}
                }
            }
            None
        })
        .await
        .expect("an answer within 10s");
        assert_eq!(answer, Some(0x1), "PROTOCOL_ERROR for {field:?}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    proxy.stop().await;
}

/// Rapid reset (CVE-2023-44487): streams opened and reset at once, thousands of them. The
/// connection is told to go away, the upstream sees far fewer requests than were opened, and
/// the proxy keeps serving with nothing left in flight.
#[tokio::test]
async fn http2_rapid_reset_flood_is_cut_off() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let (mut read, mut write, _) = h2_connect(proxy.addr).await;
    let opened = 5_000u32;
    let writer = tokio::spawn(async move {
        for batch in 0..opened / 100 {
            let mut bytes = Vec::new();
            for i in 0..100 {
                let stream = 2 * (batch * 100 + i) + 1;
                bytes.extend(frame(
                    DATA_HEADERS,
                    END_STREAM | END_HEADERS,
                    stream,
                    GET_BLOCK,
                ));
                bytes.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            }
            if write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let goaway = until_goaway(&mut read, Duration::from_secs(30)).await;
    drop(read);
    let _ = writer.await;
    // ENHANCE_YOUR_CALM (0xb), or the connection ended outright.
    assert!(
        matches!(goaway, Ok(Some(0xb)) | Ok(None)),
        "no GOAWAY after {opened} reset streams: {goaway:?}"
    );
    let forwarded = upstream.requests().len();
    assert!(
        forwarded < 1_000,
        "{forwarded} of {opened} reset streams went upstream"
    );
    let reply = send_with(&h2_client(), "GET", &proxy.url("/after"), &[], "").await;
    assert_eq!(reply.status, 200, "the proxy still serves");
    wait_until(Duration::from_secs(10), "no request left in flight", || {
        in_flight(&proxy) == 0
    })
    .await;
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Failing upstreams

/// An upstream that sends `bytes` in answer to each request, then keeps the connection.
async fn answering(bytes: &'static [u8]) -> support::fault::FaultUpstream {
    spawn_fault(move |mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            conn.send(bytes).await;
            conn.hold().await;
        }
    })
    .await
}

/// Invalid responses are the upstream's fault (502): two differing Content-Lengths, a
/// status line that is not one, something that is not HTTP, an unasked 101. The connection
/// they came on is closed by the proxy, never pooled: the next request opens a new one.
/// (Both framings at once are read as chunked: `upstream_wire`.)
#[tokio::test]
async fn invalid_upstream_responses_are_502_and_their_connections_closed() {
    let cases: &[(&str, &[u8])] = &[
        (
            "two Content-Lengths",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde",
        ),
        (
            "garbage status code",
            b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",
        ),
        ("not HTTP at all", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
        (
            "a 101 nobody asked for",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let upstream = answering(bytes).await;
        let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
        let reply = get(&proxy.url("/")).await;
        assert_eq!(reply.status, 502, "{what}: {}", reply.text());
        assert_eq!(reply.header("x-restatus-source"), Some("proxy"), "{what}");
        wait_until(
            Duration::from_secs(10),
            &format!("{what}: the broken connection closed"),
            || upstream.logs().first().is_some_and(|l| l.closed_by_peer),
        )
        .await;
        assert_eq!(get(&proxy.url("/")).await.status, 502, "{what}");
        assert_eq!(
            upstream.connections(),
            2,
            "{what}: a broken connection was reused"
        );
        proxy.stop().await;
    }
}

/// A connect that never completes (the upstream's accept queue is full, so its SYNs go
/// unanswered) is cut at `connect_timeout`: 504.
#[tokio::test]
async fn connect_that_never_completes_is_504_at_connect_timeout() {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("addr");
    // Fill the accept queue; connects past it hang, which is the point.
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr)).await
        {
            fillers.push(stream);
        }
    }
    let config = config_for(addr, "", NO_PROFILE, "")
        .replace("connect_timeout = \"1s\"", "connect_timeout = \"300ms\"");
    let proxy = spawn_proxy(&config).await;
    let reply = get(&proxy.url("/")).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert!(
        reply.text().contains("connection timed out"),
        "{}",
        reply.text()
    );
    proxy.stop().await;
    drop((listener, fillers));
}

/// An upstream that reads the request and never answers: 504 at `response_timeout`, and the
/// connection it holds is closed by the proxy, not used for the next request.
#[tokio::test]
async fn silent_upstream_is_504_and_its_connection_is_not_reused() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.index == 0 {
            if conn.read_request().await.is_some() {
                conn.hold().await;
            }
            return;
        }
        while conn.read_request().await.is_some() {
            conn.send(&ok_response("fresh")).await;
        }
    })
    .await;
    let config = config_for(upstream.addr, "", NO_PROFILE, "")
        .replace("response_timeout = \"5s\"", "response_timeout = \"300ms\"");
    let proxy = spawn_proxy(&config).await;
    assert_eq!(get(&proxy.url("/silent")).await.status, 504);
    wait_until(
        Duration::from_secs(10),
        "the timed-out connection closed",
        || upstream.logs().first().is_some_and(|l| l.closed_by_peer),
    )
    .await;
    let reply = get(&proxy.url("/next")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "fresh"));
    assert_eq!(upstream.connections(), 2);
    proxy.stop().await;
}

/// Writes `head`, then `pieces` pieces of `piece` bytes `pace` apart, and reads what comes
/// back until the proxy closes.
async fn trickled_upload(
    addr: SocketAddr,
    head: &[u8],
    pieces: usize,
    piece: usize,
    pace: Duration,
) -> String {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    write.write_all(head).await.expect("write head");
    let sending = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(pace);
        for _ in 0..pieces {
            ticks.tick().await;
            if write.write_all(&vec![b'x'; piece]).await.is_err() {
                return;
            }
        }
        // Held open: the proxy, not the client, decides when the exchange is over.
        std::future::pending::<()>().await;
    });
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut out)).await;
    sending.abort();
    String::from_utf8_lossy(&out).into_owned()
}

/// An upload that takes longer than `response_timeout` but never pauses for it is answered:
/// the response timeout runs from the request's last byte.
#[tokio::test]
async fn slow_upload_is_not_cut_by_the_response_timeout() {
    let upstream = echo_upstream().await;
    let config = config_for(upstream.addr, "", NO_PROFILE, "")
        .replace("response_timeout = \"5s\"", "response_timeout = \"300ms\"");
    let proxy = spawn_proxy(&config).await;
    let head = b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: 80\r\n\r\n";
    let started = Instant::now();
    let got = trickled_upload(proxy.addr, head, 8, 10, Duration::from_millis(120)).await;
    assert!(
        started.elapsed() > Duration::from_millis(800),
        "the upload was not slow"
    );
    assert_eq!(statuses(&got), [200], "{got}");
    assert!(got.ends_with(&format!("/up {}", "x".repeat(80))), "{got}");
    proxy.stop().await;
}

/// A client that stops sending its body gets 408 at `body_timeout`, even when the upstream's
/// `response_timeout` is shorter: the upstream is not blamed for the client's silence.
#[tokio::test]
async fn stalled_body_is_408_even_under_a_shorter_response_timeout() {
    let upstream = echo_upstream().await;
    let config = config_for(upstream.addr, "body_timeout = \"600ms\"", NO_PROFILE, "")
        .replace("response_timeout = \"5s\"", "response_timeout = \"200ms\"");
    let proxy = spawn_proxy(&config).await;
    let head = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 80\r\n\r\n";
    let got = trickled_upload(proxy.addr, head, 2, 10, Duration::from_millis(10)).await;
    assert_eq!(statuses(&got), [408], "{got}");
    proxy.stop().await;
}

/// An upstream that takes none of a large body is given up at `response_timeout` of no
/// progress: 504, though the client is still sending.
#[tokio::test]
async fn upstream_that_reads_no_body_is_504_at_response_timeout() {
    // Reads the first bytes of each request and then nothing more.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let upstream = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.read(&mut [0u8; 1024]).await;
                std::future::pending::<()>().await;
                drop(stream);
            });
        }
    });
    let config = config_for(
        upstream,
        "",
        NO_PROFILE,
        "[limits]\nrequest_body = \"256MiB\"",
    )
    .replace("response_timeout = \"5s\"", "response_timeout = \"300ms\"");
    let proxy = spawn_proxy(&config).await;
    let length = 200 << 20;
    let head = format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n");
    let got = trickled_upload(
        proxy.addr,
        head.as_bytes(),
        length / (1 << 20),
        1 << 20,
        Duration::from_millis(1),
    )
    .await;
    assert_eq!(statuses(&got), [504], "{got}");
    proxy.stop().await;
}

/// The upstream answers one request, keeps the connection, then closes it as the next
/// request arrives on it (the idle-close race). Later connections answer normally.
async fn closing_after_first() -> support::fault::FaultUpstream {
    spawn_fault(|mut conn: FaultConn| async move {
        if conn.index == 0 {
            if conn.read_request().await.is_some() {
                conn.send(&ok_response("first")).await;
                // The next request is read, then the connection closes unanswered.
                let _ = conn.read_head().await;
            }
            return;
        }
        while conn.read_request().await.is_some() {
            conn.send(&ok_response("retried")).await;
        }
    })
    .await
}

/// A GET sent on a pooled connection the upstream closes before answering is retried once on
/// a fresh connection (RFC 9110 §9.2.2), and the client never sees the failure.
#[tokio::test]
async fn get_on_a_stale_pooled_connection_is_retried_once() {
    let upstream = closing_after_first().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let client = client();
    let first = send_with(&client, "GET", &proxy.url("/one"), &[], "").await;
    assert_eq!(first.text(), "first");
    let second = send_with(&client, "GET", &proxy.url("/two"), &[], "").await;
    assert_eq!((second.status, second.text().as_str()), (200, "retried"));
    let logs = upstream.logs();
    assert_eq!(logs.len(), 2, "{logs:?}");
    assert!(
        logs[0].text().contains("GET /two"),
        "first sent on the pooled one"
    );
    assert!(
        logs[1].text().starts_with("GET /two"),
        "then retried on a new one"
    );
    proxy.stop().await;
}

/// The same race with a request whose body was sent: never retried, so the upstream gets
/// the body at most once; the client gets a 502.
#[tokio::test]
async fn request_whose_body_was_sent_is_never_retried() {
    let upstream = closing_after_first().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let client = client();
    let first = send_with(&client, "POST", &proxy.url("/one"), &[], "a").await;
    assert_eq!(first.text(), "first");
    let second = send_with(&client, "POST", &proxy.url("/two"), &[], "payload").await;
    assert_eq!(second.status, 502, "{}", second.text());
    assert_eq!(upstream.connections(), 1, "the POST was retried");
    assert_eq!(upstream.all_bytes().matches("POST /two").count(), 1);
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Security posture

/// Captures every log line of the current thread (all targets, all levels) while alive.
fn capture_logs() -> (SharedSink, tracing::subscriber::DefaultGuard) {
    let sink = SharedSink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (sink, tracing::subscriber::set_default(subscriber))
}

fn text_of(sink: &SharedSink) -> String {
    String::from_utf8_lossy(&sink.0.lock().expect("sink lock")).into_owned()
}

/// A response the upstream cut short ends the client's connection with a reset, not a FIN,
/// so that an HTTP/1.0 client, which reads a body without a length to the close, cannot
/// take the part it got for the whole.
#[tokio::test]
async fn a_response_cut_short_resets_the_client_connection() {
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                .await;
        }
    })
    .await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /cut HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                Err(err) => return Err(err.kind()),
            }
        }
    })
    .await
    .expect("the connection ends");
    assert_eq!(ended, Err(std::io::ErrorKind::ConnectionReset));
    proxy.stop().await;
}

/// Authorization, Cookie, Proxy-Authorization and Set-Cookie values, and body bytes, appear
/// in no log line at any level (access lines, warnings for failed upstreams, debug lines for
/// refused requests) and in no deviation record.
#[tokio::test]
async fn credentials_and_bodies_never_appear_in_logs_or_records() {
    let (logs, _guard) = capture_logs();
    let upstream = spawn_upstream(|_| async {
        let mut response = reply(418, "SECRET-BODY-5");
        response.headers_mut().insert(
            http::header::SET_COOKIE,
            http::HeaderValue::from_static("id=SECRET-SETCOOKIE-4; HttpOnly"),
        );
        response
    })
    .await;
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[log]
access = true
[limits]
request_body = "1KiB"
[[upstreams]]
name = "teapot"
targets = ["http://{}"]
[[upstreams]]
name = "down"
targets = ["http://{dead}"]
connect_timeout = "1s"
[[routes]]
name = "main"
upstream = "teapot"
path_prefix = "/"
[[routes]]
name = "down"
upstream = "down"
path_prefix = "/down"
"#,
        upstream.addr
    );
    let proxy = spawn_proxy(&config).await;
    let secrets = [
        ("authorization", "Bearer SECRET-AUTH-1"),
        ("cookie", "session=SECRET-COOKIE-2"),
        ("proxy-authorization", "Basic SECRET-PROXY-3"),
    ];
    let big = format!("SECRET-REQBODY-6{}", "x".repeat(2000));
    let requests = [
        ("POST", "/items", "SECRET-REQBODY-6"),
        ("GET", "/down/x", ""),
        ("GET", "/a/../b", ""),
        ("POST", "/items", big.as_str()),
    ];
    for (method, path, body) in requests {
        let reply = send(method, &proxy.url(path), &secrets, body).await;
        assert!(reply.status >= 400, "{method} {path}: {}", reply.status);
    }
    let records = serde_json::to_string(&proxy.records()).expect("records as JSON");
    proxy.stop().await;
    let logged = text_of(&logs);
    assert!(
        logged.contains("access"),
        "access lines were captured: {logged}"
    );
    assert!(
        logged.contains("upstream failed"),
        "warnings were captured: {logged}"
    );
    assert!(
        records.contains("teapot"),
        "records were written: {records}"
    );
    for secret in [
        "SECRET-AUTH-1",
        "SECRET-COOKIE-2",
        "SECRET-PROXY-3",
        "SECRET-SETCOOKIE-4",
        "SECRET-BODY-5",
        "SECRET-REQBODY-6",
    ] {
        assert!(!logged.contains(secret), "{secret} logged:\n{logged}");
        assert!(!records.contains(secret), "{secret} in a record: {records}");
    }
}

/// The admin listener exists only with an `[admin]` table, and then listens on loopback
/// unless an address is given.
#[test]
fn admin_listens_on_loopback_by_default() {
    let base = "[[upstreams]]\nname = \"a\"\ntargets = [\"http://127.0.0.1:1\"]\n\
                [[routes]]\nname = \"r\"\nupstream = \"a\"\npath_prefix = \"/\"\n";
    assert!(config(base).admin.is_none());
    let admin = config(&format!("{base}[admin]\n")).admin.expect("admin");
    assert!(admin.listen.ip().is_loopback(), "{}", admin.listen);
    assert_eq!(admin.listen.port(), 9901);
}

/// The path restatus routes on is the path it forwards: dot-segments (RFC 3986 §5.2.4), raw
/// or percent-encoded, and encoded slashes or backslashes are refused with 400 before
/// routing, so no `..` trick reaches a route its prefix did not allow.
#[tokio::test]
async fn dot_segment_paths_are_refused_before_routing() {
    let upstream = echo_upstream().await;
    let route = format!("{NO_PROFILE}\npath_prefix = \"/public\"");
    let config = config_for(upstream.addr, "", "", "")
        .replace("path_prefix = \"/\"\n", &format!("{route}\n"));
    let proxy = spawn_proxy(&config).await;
    for path in [
        "/public/../admin",
        "/public/./../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2e/admin",
        "/public/.%2e/admin",
        "/public/..%2fadmin",
        "/public%2f..%2fadmin",
        "/public/..%5cadmin",
        "/public/..",
        "/public/..;/admin",
        "/public/%61dmin",
        "/%70ublic/x",
        "/public//admin",
        "//public/admin",
        "/public/;x/admin",
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let got = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&got), [400], "{path}: {got}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    let reply = get(&proxy.url("/public/a..b/.well-known")).await;
    assert_eq!(reply.status, 200, "dots inside a segment are fine");
    proxy.stop().await;
}

/// A Host (or absolute-form authority, or HTTP/2 `:authority`) that is not `host[:port]` is
/// refused with 400 before routing (RFC 9112 §3.2): `u@admin.example` would miss a route
/// for `admin.example` and its checks, and an upstream reading it as a URL would see that host.
#[tokio::test]
async fn invalid_hosts_are_refused_before_routing() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", "", "")).await;
    for host in [
        "u@admin.example",
        "admin.example/x",
        "admin.example?x",
        "admin.example#x",
        "admin.example,public.example",
        "adm in.example",
        "admin.example:80:80",
        "admin.example:99999",
        "",
        ":80",
    ] {
        let request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let got = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&got), [400], "{host}: {got}");
        assert!(got.contains("not a valid host"), "{got}");
    }
    let absolute = "GET http://u:p@admin.example/x HTTP/1.1\r\nHost: admin.example\r\n\
                    Connection: close\r\n\r\n";
    let got = exchange(proxy.addr, absolute.as_bytes()).await;
    assert_eq!(statuses(&got), [400], "{got}");
    let url = format!("http://u@{}/x", proxy.addr);
    let reply = send_with(&h2_client(), "GET", &url, &[], "").await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    for host in [
        "api.example",
        "API.example:8080",
        "10.0.0.7",
        "[::1]:8443",
        "legacy_app",
    ] {
        let request = format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        let got = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&got), [200], "{host}: {got}");
    }
    proxy.stop().await;
}

/// `;` parameters (`;jsessionid=...`) are forwarded, but routes, checks and rules see the
/// path without them, as servlet containers do: `/admin;x/keys` meets the check on
/// `/admin/**`, and a route's prefix still matches and strips with them.
#[tokio::test]
async fn path_parameters_do_not_slip_past_checks() {
    let upstream = echo_upstream().await;
    let route = format!("{NO_PROFILE}\npath_prefix = \"/app\"\nstrip_prefix = true");
    let check = r#"
[[checks]]
name = "admin-token"
when = { path = "/app/admin/**", request_header = { "x-token" = { present = false } } }
then = { status = 403 }
"#;
    let config = config_for(upstream.addr, "", "", check)
        .replace("path_prefix = \"/\"\n", &format!("{route}\n"));
    let proxy = spawn_proxy(&config).await;
    for path in ["/app/admin;x/keys", "/app;jsessionid=1/admin/keys"] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let got = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&got), [403], "{path}: {got}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    let reply = get(&proxy.url("/app;jsessionid=A1/items;v=2")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let seen = upstream.requests();
    assert_eq!(
        seen[0].uri, "/items;v=2",
        "prefix stripped, parameters kept"
    );
    proxy.stop().await;
}

/// A check (or rule) for GET holds for HEAD too: HEAD gets GET's status and fields (RFC 9110
/// §9.3.2), so asking with HEAD cannot learn what the check keeps from GET.
#[tokio::test]
async fn a_check_on_get_also_refuses_head() {
    let upstream = echo_upstream().await;
    let check = r#"
[[checks]]
name = "admin-token"
when = { method = "GET", path = "/admin/**", request_header = { "x-token" = { present = false } } }
then = { status = 403 }
"#;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", "", check)).await;
    for method in ["GET", "HEAD"] {
        let request =
            format!("{method} /admin/keys HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
        let got = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&got), [403], "{method}: {got}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    let request =
        "POST /admin/keys HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    // POST is not held by the GET check; the profile turns its 200 into 201 (a create).
    assert_eq!(
        statuses(&exchange(proxy.addr, request.as_bytes()).await),
        [201]
    );
    proxy.stop().await;
}

/// CONNECT is refused (a 2xx would tell the client a tunnel is open), in authority form and
/// origin form, and never reaches the upstream.
#[tokio::test]
async fn connect_requests_are_refused_and_never_forwarded() {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", "", "")).await;
    for target in ["example.com:443", "/"] {
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
        let got = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(statuses(&got), [400], "{target}: {got}");
        assert!(got.contains("opens no tunnels"), "{got}");
    }
    assert!(upstream.requests().is_empty(), "{:?}", upstream.requests());
    proxy.stop().await;
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("restatus-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Key files: one open to group or others still loads, with a warning naming it; one that
/// cannot be read is an error naming the file and the reason.
#[cfg(unix)]
#[test]
fn key_files_with_loose_permissions_warn_and_unreadable_ones_fail_clearly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("keys");
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    let set_mode = |mode| {
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let source = |key: &std::path::Path| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[server.tls]\nlisten = \"127.0.0.1:0\"\n\
             cert = \"{}\"\nkey = \"{}\"\n\
             [[upstreams]]\nname = \"a\"\ntargets = [\"http://127.0.0.1:1\"]\n\
             [[routes]]\nname = \"r\"\nupstream = \"a\"\npath_prefix = \"/\"\n",
            cert_path.display(),
            key.display()
        )
    };
    let parse = |text: &str| restatus::config::Config::parse(std::path::Path::new("t.toml"), text);

    set_mode(0o644);
    assert!(restatus::config::key_is_exposed(&key_path));
    let (logs, guard) = capture_logs();
    parse(&source(&key_path)).expect("an exposed key still loads");
    drop(guard);
    let logged = text_of(&logs);
    assert!(logged.contains("WARN"), "{logged}");
    assert!(logged.contains(&key_path.display().to_string()), "{logged}");

    set_mode(0o600);
    assert!(!restatus::config::key_is_exposed(&key_path));
    let (logs, guard) = capture_logs();
    parse(&source(&key_path)).expect("a private key loads");
    drop(guard);
    assert!(!text_of(&logs).contains("WARN"), "{}", text_of(&logs));

    // A directory stands in for an unreadable file (permission bits do not stop root).
    let err = parse(&source(&dir.0)).expect_err("a key that cannot be read");
    let shown = err.to_string();
    assert!(shown.contains("cannot read the key"), "{shown}");
    assert!(shown.contains(&dir.0.display().to_string()), "{shown}");
    assert_eq!(
        (err.line, err.key.as_str()),
        (6, "server.tls.key"),
        "{shown}"
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown

/// On shutdown an HTTP/2 connection gets GOAWAY with NO_ERROR (RFC 9113 §6.8) while its
/// stream in flight still completes; the server exits within the grace period. (The HTTP/1
/// side, `Connection: close` on in-flight responses and idle keep-alive closed, is
/// `load::c_graceful_shutdown_under_load_loses_no_accepted_request`.)
#[tokio::test]
async fn shutdown_sends_goaway_and_finishes_the_http2_stream_in_flight() {
    let (release, released) = tokio::sync::watch::channel(false);
    let upstream = spawn_streaming_upstream(move |_| {
        let mut released = released.clone();
        async move {
            let _ = released.wait_for(|r| *r).await;
            reply(200, "held")
        }
    })
    .await;
    let mut proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let h2 = h2_client();
    let url = proxy.url("/hold");
    let held = tokio::spawn(async move { send_with(&h2, "GET", &url, &[], "").await });
    let (mut read, write, _) = h2_connect(proxy.addr).await;
    wait_until(Duration::from_secs(10), "the request in flight", || {
        in_flight(&proxy) == 1
    })
    .await;
    let server = proxy.begin_shutdown();
    let goaway = until_goaway(&mut read, Duration::from_secs(10)).await;
    assert_eq!(
        goaway,
        Ok(Some(0)),
        "GOAWAY(NO_ERROR) on the idle HTTP/2 connection"
    );
    // This bare client answers no PING, so it leaves rather than hold the drain up.
    drop((read, write));
    let _ = release.send(true);
    let reply = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("answered within 10 s")
        .expect("request task");
    assert_eq!((reply.status, reply.text().as_str()), (200, "held"));
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server exits within the grace period")
        .expect("server task");
}

/// An upstream that resets mid-body under an HTTP/2 client: the client's stream is reset
/// (RST_STREAM), never ended as if the body were complete; the connection keeps serving.
#[tokio::test]
async fn upstream_reset_mid_body_resets_the_http2_stream() {
    let go = Arc::new(tokio::sync::Notify::new());
    let die = go.clone();
    let upstream = spawn_fault(move |mut conn: FaultConn| {
        let die = die.clone();
        async move {
            if conn.index > 0 {
                while conn.read_request().await.is_some() {
                    conn.send(&ok_response("fine")).await;
                }
                return;
            }
            if conn.read_request().await.is_some() {
                conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nfirst part")
                    .await;
                die.notified().await;
                conn.reset();
            }
        }
    })
    .await;
    let proxy = spawn_proxy(&config_for(upstream.addr, "", NO_PROFILE, "")).await;
    let h2 = h2_client();
    let request = http::Request::get(proxy.url("/"))
        .body(full(""))
        .expect("request");
    let response = h2.request(request).await.expect("response head");
    assert_eq!(response.status(), 200);
    go.notify_one();
    let body = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the body ends within 10 s");
    let err = body.expect_err("a truncated body must not look complete");
    assert!(
        format!("{err:?}").contains("Reset"),
        "a stream reset: {err:?}"
    );
    // Reset the stream, not the connection: the same HTTP/2 connection serves on.
    let reply = send_with(&h2, "GET", &proxy.url("/again"), &[], "").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "fine"));
    proxy.stop().await;
}
