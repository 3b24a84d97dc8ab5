//! `Expect: 100-continue`, request checks and JSON validation, seen exactly as a client sees
//! them on the wire.
mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads from `stream` until `pattern` has arrived; returns everything read. Panics after 10 s.
async fn read_until(stream: &mut TcpStream, pattern: &str) -> String {
    let mut seen = Vec::new();
    let wait = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(pattern) {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(
                n > 0,
                "closed before {pattern:?}: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("no {pattern:?} within 10s"));
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads a response head and its Content-Length body.
async fn read_response(stream: &mut TcpStream) -> String {
    let mut text = read_until(stream, "\r\n\r\n").await;
    let length = text
        .lines()
        .find_map(|l| {
            let lower = l.to_ascii_lowercase();
            lower
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let head_end = text.find("\r\n\r\n").expect("head") + 4;
    let mut buf = [0u8; 4096];
    while text.len() < head_end + length {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("body within 10s")
            .expect("read body");
        assert!(n > 0, "closed mid-body: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    text
}

fn upload_head(path: &str, length: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: api.test\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\nExpect: 100-continue\r\n{extra}\r\n"
    )
}

/// What a scripted upstream saw: the request head and the body bytes that reached it.
#[derive(Default, Clone)]
struct Wire(Arc<Mutex<Vec<String>>>);

impl Wire {
    fn push(&self, text: String) {
        self.0.lock().expect("wire").push(text);
    }
    fn all(&self) -> String {
        self.0.lock().expect("wire").concat()
    }
}

/// An upstream driven by a script over raw TCP; `script` gets each accepted connection.
async fn raw_upstream<F, Fut>(script: F) -> SocketAddr
where
    F: Fn(TcpStream, Wire) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    raw_upstream_with(Wire::default(), script).await
}

async fn raw_upstream_with<F, Fut>(wire: Wire, script: F) -> SocketAddr
where
    F: Fn(TcpStream, Wire) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let script = Arc::new(script);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(script(stream, wire.clone()));
        }
    });
    addr
}

fn config_with(
    upstream: SocketAddr,
    upstream_extra: &str,
    route_extra: &str,
    tail: &str,
) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
{upstream_extra}

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
{route_extra}

{tail}
"#
    )
}

#[tokio::test]
async fn upstream_100_is_relayed_then_the_final_status() {
    let upstream = spawn_upstream(|seen| async move {
        assert_eq!(
            seen.headers["expect"], "100-continue",
            "Expect goes upstream"
        );
        json(200, r#"{"id":7}"#)
    })
    .await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(upload_head("/items", 13, "").as_bytes())
        .await
        .expect("head");
    let interim = read_until(&mut client, "\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{interim}"
    );
    client.write_all(br#"{"name":"a"}"#).await.expect("body");
    client.write_all(b" ").await.expect("body");
    let response = read_response(&mut client).await;
    assert!(
        response.starts_with("HTTP/1.1 201 "),
        "POST 200 becomes 201: {response}"
    );
    assert!(
        !response.contains("100 Continue"),
        "exactly one 100: {response}"
    );
    assert_eq!(upstream.requests()[0].body, &br#"{"name":"a"} "#[..]);
}

/// An upstream's 103 before its 100 reaches the client first; the client's own 100 follows
/// when the body is wanted, and the two interim heads never run into each other.
#[tokio::test]
async fn early_hints_before_the_upstreams_100_reach_the_client_in_order() {
    let wire = Wire::default();
    let upstream = raw_upstream_with(wire.clone(), |mut stream, wire| async move {
        read_until(&mut stream, "\r\n\r\n").await;
        let hints = "HTTP/1.1 103 Early Hints\r\nLink: </terms>; rel=preload\r\n\r\n";
        stream.write_all(hints.as_bytes()).await.expect("103");
        stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .expect("100");
        wire.push(read_until(&mut stream, "}").await);
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n{\"id\":7}";
        stream.write_all(answer.as_bytes()).await.expect("answer");
    })
    .await;
    let proxy = spawn_proxy(&simple_config(upstream, "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(upload_head("/items", 12, "").as_bytes())
        .await
        .expect("head");
    let interim = read_until(&mut client, "100 Continue\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 103 Early Hints\r\nlink: </terms>; rel=preload\r\n"),
        "{interim}"
    );
    let heads: Vec<&str> = interim.split_terminator("\r\n\r\n").collect();
    assert_eq!(heads.len(), 2, "{interim}");
    assert_eq!(heads[1], "HTTP/1.1 100 Continue", "{interim}");
    client.write_all(br#"{"name":"a"}"#).await.expect("body");
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 201 "), "{response}");
    assert!(response.ends_with("{\"id\":7}"), "{response}");
    assert!(wire.all().ends_with(r#"{"name":"a"}"#), "{}", wire.all());
}

#[tokio::test]
async fn early_final_status_is_normalized_without_100_and_closes() {
    // The upstream rejects from the head alone (a legacy 401) without asking for the body.
    let wire = Wire::default();
    let upstream = raw_upstream_with(wire.clone(), |mut stream, wire| async move {
        let head = read_until(&mut stream, "\r\n\r\n").await;
        wire.push(head);
        let body = r#"{"error":"bad token"}"#;
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.expect("answer");
        // Whatever arrives later would be the body: record it.
        let rest = read_to_close(&mut stream, Duration::from_secs(3)).await;
        wire.push(rest);
    })
    .await;
    let proxy = spawn_proxy(&config_with(upstream, "", "", "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(upload_head("/upload", 1000, "").as_bytes())
        .await
        .expect("head");
    let response = read_to_close(&mut client, Duration::from_secs(10)).await;
    assert!(
        response.starts_with("HTTP/1.1 403 "),
        "401 becomes 403, no 100 first: {response}"
    );
    assert!(!response.contains("100 Continue"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(
        response.ends_with(r#"{"error":"bad token"}"#),
        "body relayed whole: {response}"
    );
    wait_until(Duration::from_secs(10), "upstream connection ended", || {
        wire.all().contains("expect: 100-continue") && wire.0.lock().expect("wire").len() == 2
    })
    .await;
    let seen = wire.0.lock().expect("wire").clone();
    assert_eq!(seen[1], "", "the upstream never received body bytes");
}

#[tokio::test]
async fn check_refuses_before_100_and_upstream_sees_nothing() {
    let upstream = fixed_upstream(200, "{}").await;
    let tail = r#"
[[checks]]
name = "token-required"
when = { path = "/metadata/**", request_header = { "x-auth-token" = { present = false } } }
then = { status = 403, body = { error = "token required" } }
"#;
    let proxy = spawn_proxy(&config_with(upstream.addr, "", "", tail)).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(upload_head("/metadata/a/b", 100, "").as_bytes())
        .await
        .expect("head");
    let response = read_to_close(&mut client, Duration::from_secs(10)).await;
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    assert!(!response.contains("100 Continue"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(
        response.ends_with(r#"{"error":"token required"}"#),
        "{response}"
    );
    assert!(upstream.requests().is_empty());
    // With the token the request goes through.
    let reply = send(
        "POST",
        &proxy.url("/metadata/a"),
        &[("x-auth-token", "t")],
        "{}",
    )
    .await;
    assert_eq!(reply.status, 201);
}

#[tokio::test]
async fn no_route_and_oversized_body_are_answered_before_100() {
    let upstream = fixed_upstream(200, "{}").await;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[limits]
request_body = "1KiB"
[[upstreams]]
name = "backend"
targets = ["http://{}"]
[[routes]]
name = "api"
upstream = "backend"
path_prefix = "/api"
"#,
        upstream.addr
    );
    let proxy = spawn_proxy(&config).await;
    for (path, length, status) in [("/elsewhere", 10, "404"), ("/api/x", 4096, "400")] {
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        client
            .write_all(upload_head(path, length, "").as_bytes())
            .await
            .expect("head");
        let response = read_to_close(&mut client, Duration::from_secs(10)).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {response}"
        );
        assert!(!response.contains("100 Continue"), "{response}");
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
    }
    let response = raw(proxy.addr, upload_head("/api/x", 4096, "").as_bytes()).await;
    assert!(
        response.contains("larger than the limit of 1024 bytes"),
        "reason given: {response}"
    );
    assert!(upstream.requests().is_empty());
}

/// POSTs `{"n":1}` to `/items/1` with `Expect: 100-continue` through a proxy whose
/// `expect_timeout` is 200 ms, checks the client's `100` and its 201, and returns the records.
async fn upload_after_the_timeout(upstream: SocketAddr) -> Vec<serde_json::Value> {
    let config = config_with(upstream, r#"expect_timeout = "200ms""#, "", "");
    let proxy = spawn_proxy(&config).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(upload_head("/items/1", 7, "").as_bytes())
        .await
        .expect("head");
    let interim = read_until(&mut client, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    client.write_all(br#"{"n":1}"#).await.expect("body");
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 201 "), "{response}");
    proxy.records()
}

#[tokio::test]
async fn upstream_ignoring_expect_gets_the_body_after_the_timeout() {
    // A legacy upstream that waits for the body without ever sending 100.
    let upstream = raw_upstream(|mut stream, _| async move {
        let text = read_until(&mut stream, "{\"n\":1}").await;
        assert!(text.contains("expect: 100-continue"), "{text}");
        stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .await
            .expect("answer");
    })
    .await;
    let records = upload_after_the_timeout(upstream).await;
    assert!(
        records
            .iter()
            .any(|r| r["kind"] == "expect_ignored" && r["path"] == "/items/1"),
        "{records:?}"
    );
}

/// A legacy upstream that answers 417 to `Expect: 100-continue` (and closes), and serves the
/// same request without it. RFC 9110 §10.1.1: restatus, which still holds the body, sends the
/// request again without `Expect`; the client gets the service's answer, not a 417 turned
/// into 400, and the target gets no `Expect` from then on.
#[tokio::test]
async fn a_417_to_expect_is_answered_by_sending_the_request_again_without_it() {
    let wire = Wire::default();
    let upstream = raw_upstream_with(wire.clone(), |mut stream, wire| async move {
        let head = read_until(&mut stream, "\r\n\r\n").await;
        wire.push(head.clone());
        if head.to_ascii_lowercase().contains("expect: 100-continue") {
            let refusal =
                "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
            stream.write_all(refusal.as_bytes()).await.expect("417");
            return;
        }
        read_until(&mut stream, "}").await;
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{\"id\":7}";
        stream.write_all(answer.as_bytes()).await.expect("answer");
    })
    .await;
    let proxy = spawn_proxy(&simple_config(upstream, "")).await;
    for path in ["/items", "/items/again"] {
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        client
            .write_all(upload_head(path, 12, "").as_bytes())
            .await
            .expect("head");
        let interim = read_until(&mut client, "\r\n\r\n").await;
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{interim}"
        );
        client.write_all(br#"{"name":"a"}"#).await.expect("body");
        let response = read_response(&mut client).await;
        assert!(response.starts_with("HTTP/1.1 201 "), "{path}: {response}");
        assert!(response.ends_with("{\"id\":7}"), "{response}");
    }
    let seen = wire.all().to_ascii_lowercase();
    assert_eq!(seen.matches("expect: 100-continue").count(), 1, "{seen}");
    assert_eq!(seen.matches("post /items").count(), 3, "{seen}");
    let refused = proxy.records_of_kind("expect_refused");
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["path"], "/items", "{refused:?}");
    assert_eq!(refused[0]["upstream_status"], 200, "{refused:?}");
}

/// An upstream that reads the body first and only then sends `100` (and a final answer)
/// ignored the expectation all the same: the client waited `expect_timeout` for nothing.
#[tokio::test]
async fn a_100_after_the_body_still_records_the_expectation_ignored() {
    let upstream = raw_upstream(|mut stream, _| async move {
        read_until(&mut stream, "{\"n\":1}").await;
        let late = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        stream.write_all(late.as_bytes()).await.expect("answer");
    })
    .await;
    let records = upload_after_the_timeout(upstream).await;
    assert!(
        records.iter().any(|r| r["kind"] == "expect_ignored"),
        "{records:?}"
    );
}

#[tokio::test]
async fn an_over_limit_body_after_an_ignored_expect_is_recorded_as_the_proxys_answer() {
    // The upstream never sends 100 and never answers; the chunked body, sent after the
    // timeout, passes the limit, so the proxy answers 413 (normalized to 400) itself. The
    // upstream answers a GET first: before any target has answered, restatus answers the
    // expectation of a chunked body itself (see `upstream_wire`).
    let upstream = raw_upstream(|mut stream, _| async move {
        let head = read_until(&mut stream, "\r\n\r\n").await;
        if head.starts_with("GET ") {
            let ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
            stream.write_all(ok.as_bytes()).await.expect("answer");
            read_until(&mut stream, "\r\n\r\n").await;
        }
        read_to_close(&mut stream, Duration::from_secs(5)).await;
    })
    .await;
    let config = config_with(
        upstream,
        "expect_timeout = \"100ms\"\nchunked_requests = true",
        "",
        "[limits]\nrequest_body = \"16B\"",
    );
    let proxy = spawn_proxy(&config).await;
    assert_eq!(get(&proxy.url("/learn")).await.status, 200);
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = "POST /items HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\
                Expect: 100-continue\r\n\r\n";
    client.write_all(head.as_bytes()).await.expect("head");
    let interim = read_until(&mut client, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    let chunk = format!("28\r\n{}\r\n0\r\n\r\n", "x".repeat(40));
    client.write_all(chunk.as_bytes()).await.expect("body");
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    let records = proxy.records();
    let ignored = records
        .iter()
        .find(|r| r["kind"] == "expect_ignored")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(ignored["source"], "proxy", "{ignored}");
    assert_eq!(ignored["upstream_status"], 413, "{ignored}");
    assert_eq!(ignored["status"], 400, "{ignored}");
}

#[tokio::test]
async fn a_body_failing_under_inspection_after_an_ignored_expect_is_the_proxys_answer() {
    // The upstream ignores Expect, then promises 100 body bytes to a body rule and sends 9.
    let upstream = raw_upstream(|mut stream, _| async move {
        read_until(&mut stream, "{\"n\":1}").await;
        let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                    Content-Length: 100\r\n\r\n{\"error\":";
        stream.write_all(head.as_bytes()).await.expect("answer");
    })
    .await;
    let rule = r#"
[[rules]]
name = "error-body-is-404"
when = { status = 200, body_json = { pointer = "/error", exists = true } }
then = { status = 404 }
"#;
    let config = config_with(upstream, r#"expect_timeout = "100ms""#, "", rule);
    let proxy = spawn_proxy(&config).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = upload_head("/items/1", 7, "");
    client.write_all(head.as_bytes()).await.expect("head");
    read_until(&mut client, "100 Continue\r\n\r\n").await;
    client.write_all(br#"{"n":1}"#).await.expect("body");
    let response = read_response(&mut client).await;
    // The proxy's 502, normalized to the contract's 500.
    assert!(response.starts_with("HTTP/1.1 500 "), "{response}");
    assert!(response.contains("x-restatus-source: proxy"), "{response}");
    let records = proxy.records();
    let ignored = records
        .iter()
        .find(|r| r["kind"] == "expect_ignored")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(ignored["source"], "proxy", "{ignored}");
    assert_eq!(ignored["upstream_status"], 502, "{ignored}");
    assert_eq!(ignored["status"], 500, "{ignored}");
}

#[tokio::test]
async fn http10_upstream_and_local_mode_get_no_expect() {
    let heads = Wire::default();
    let answered = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let upstream = raw_upstream_with(heads.clone(), move |mut stream, wire| {
        let answered = answered.clone();
        async move {
            let head = read_until(&mut stream, "\r\n\r\n").await;
            if head.contains("expect: 100-continue") {
                stream
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                    .await
                    .expect("100");
            }
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().expect("length"));
            let have = head.len() - head.find("\r\n\r\n").expect("end") - 4;
            let mut body = vec![0u8; length - have];
            stream.read_exact(&mut body).await.expect("body");
            wire.push(head);
            // An HTTP/1.0 server for two answers (close-delimited), then upgraded to 1.1.
            let answer: &[u8] = match answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 | 1 => b"HTTP/1.0 200 OK\r\n\r\ndone",
                _ => b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\ndone",
            };
            let _ = stream.write_all(answer).await;
        }
    })
    .await;
    let proxy = spawn_proxy(&config_with(upstream, "", "profile = \"none\"", "")).await;
    // The first exchange teaches the proxy that the upstream speaks HTTP/1.0.
    assert_eq!(send("POST", &proxy.url("/a"), &[], "x").await.status, 200);
    let upload = |path: &'static str| async move {
        let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
        client
            .write_all(upload_head(path, 2, "").as_bytes())
            .await
            .expect("head");
        let interim = read_until(&mut client, "\r\n\r\n").await;
        assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
        client.write_all(b"{}").await.expect("body");
        let response = read_response(&mut client).await;
        assert!(response.contains("done"), "{response}");
    };
    // Answered locally; the upstream answers HTTP/1.0 once more, then HTTP/1.1.
    upload("/b").await;
    upload("/c").await;
    upload("/d").await;
    let seen = heads.0.lock().expect("heads").clone();
    assert_eq!(seen.len(), 4);
    let expects: Vec<bool> = seen
        .iter()
        .map(|head| head.to_ascii_lowercase().contains("expect:"))
        .collect();
    // /b and /c follow HTTP/1.0 answers; /d follows an HTTP/1.1 one and gets `Expect` again.
    assert_eq!(expects, [false, false, false, true], "{seen:?}");
    assert!(proxy.records().is_empty(), "{:?}", proxy.records());

    // expect = "local" strips it for any upstream.
    let upstream = spawn_upstream(|_| async move { reply(200, "ok") }).await;
    let proxy = spawn_proxy(&config_with(upstream.addr, r#"expect = "local""#, "", "")).await;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(upload_head("/c", 2, "").as_bytes())
        .await
        .expect("head");
    let interim = read_until(&mut client, "\r\n\r\n").await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    client.write_all(b"{}").await.expect("body");
    read_response(&mut client).await;
    assert!(!upstream.requests()[0].headers.contains_key("expect"));
}

#[tokio::test]
async fn invalid_json_is_refused_and_valid_json_forwarded_byte_for_byte() {
    let upstream = spawn_upstream(|_| async move { json(201, "{}") }).await;
    let proxy = spawn_proxy(&config_with(upstream.addr, "", "validate_json = true", "")).await;
    let bad = r#"{"name": "widget",}"#;
    let mut client = TcpStream::connect(proxy.addr).await.expect("connect");
    client
        .write_all(upload_head("/items", bad.len(), "").as_bytes())
        .await
        .expect("head");
    let interim = read_until(&mut client, "\r\n\r\n").await;
    assert!(
        interim.starts_with("HTTP/1.1 100 Continue"),
        "the body is needed: {interim}"
    );
    client.write_all(bad.as_bytes()).await.expect("body");
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 400 "), "{response}");
    assert!(response.contains("not valid JSON"), "{response}");
    assert!(upstream.requests().is_empty(), "the upstream saw nothing");

    let good = "{ \"name\" : \"w\\u00e9\",\n \"n\": [1, 2.50] }";
    let reply = send(
        "POST",
        &proxy.url("/items"),
        &[("content-type", "application/json")],
        good,
    )
    .await;
    assert_eq!(reply.status, 201);
    assert_eq!(upstream.requests()[0].body, good.as_bytes());
    // Bodies that are not JSON are not checked.
    let reply = send(
        "POST",
        &proxy.url("/items"),
        &[("content-type", "text/plain")],
        "{",
    )
    .await;
    assert_eq!(reply.status, 201);
}

fn gzip(text: &str) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(text.as_bytes()).expect("gzip");
    encoder.finish().expect("gzip")
}

/// A gzip-encoded JSON body is checked decompressed and forwarded as sent; one in a coding
/// restatus cannot read is refused (415), so no made-up coding turns the check off.
#[tokio::test]
async fn compressed_json_is_validated_decompressed() {
    let upstream = spawn_upstream(|_| async move { json(201, "{}") }).await;
    let proxy = spawn_proxy(&config_with(upstream.addr, "", "validate_json = true", "")).await;
    let client = client();
    let json_gzip = [
        ("content-type", "application/json"),
        ("content-encoding", "gzip"),
    ];
    let good = gzip(r#"{"a":1}"#);
    let reply = send_with(
        &client,
        "POST",
        &proxy.url("/items"),
        &json_gzip,
        good.clone(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text());
    assert_eq!(upstream.requests()[0].body, good, "forwarded as sent");
    let bad = gzip(r#"{"a":1,}"#);
    let reply = send_with(&client, "POST", &proxy.url("/items"), &json_gzip, bad).await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let reply = send_with(
        &client,
        "POST",
        &proxy.url("/items"),
        &json_gzip,
        "not gzip",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let brotli = [
        ("content-type", "application/json"),
        ("content-encoding", "br"),
    ];
    let reply = send_with(&client, "POST", &proxy.url("/items"), &brotli, "{").await;
    assert_eq!(
        reply.status,
        400,
        "415, normalized by the profile: {}",
        reply.text()
    );
    assert!(
        reply.text().contains("Content-Encoding cannot be read"),
        "{}",
        reply.text()
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test]
async fn http2_client_with_expect_is_forwarded_without_it() {
    let upstream = spawn_upstream(|_| async move { json(200, "{}") }).await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let reply = send_with(
        &h2_client(),
        "PUT",
        &proxy.url("/items/1"),
        &[("expect", "100-continue")],
        "{}",
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = &upstream.requests()[0];
    assert!(!seen.headers.contains_key("expect"), "{:?}", seen.headers);
    assert_eq!(seen.body, "{}");
}

#[tokio::test]
async fn unsolicited_100_is_recorded_and_not_relayed() {
    let upstream = raw_upstream(|mut stream, _| async move {
        read_until(&mut stream, "\r\n\r\n").await;
        let _ = stream
            .write_all(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            )
            .await;
        read_to_close(&mut stream, Duration::from_secs(5)).await;
    })
    .await;
    let config = config_with(upstream, "", "", "") + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let proxy = spawn_proxy(&config).await;
    let response = raw(
        proxy.addr,
        b"GET /items HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(!response.contains("100 Continue"), "{response}");
    let records = proxy.records();
    assert!(
        records.iter().any(|r| r["kind"] == "unsolicited_100"),
        "{records:?}"
    );
    // The admin counts file it as a protocol record, not as a status left unchanged.
    let admin = proxy.admin.expect("admin listener");
    let body = get(&format!("http://{admin}/deviations")).await.json();
    let route = body["counts"]["by_rule"]
        .as_object()
        .and_then(|routes| routes.values().next())
        .cloned()
        .expect("one route counted");
    assert_eq!(route, serde_json::json!({"(unsolicited_100)": 1}), "{body}");
    assert_eq!(body["counts"]["by_status"], serde_json::json!({}), "{body}");
    let html = get(&format!("http://{admin}/")).await.text();
    assert!(
        html.contains("<td>(unsolicited_100)</td><td class=n>1</td>"),
        "{html}"
    );
    assert!(
        html.contains("<td>unsolicited_100</td><td>upstream</td>"),
        "{html}"
    );
}

/// curl's own account of how many bytes it uploaded.
fn curl_upload(url: &str, file: &std::path::Path) -> (String, u64) {
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-H",
            "Expect: 100-continue",
            "-H",
            "content-type: application/octet-stream",
        ])
        .args([
            "--expect100-timeout",
            "10",
            "-w",
            "%{http_code} %{size_upload}",
        ])
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(url)
        .output()
        .expect("curl is installed (see .ci/run)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (code, size) = text.split_once(' ').expect("curl -w output");
    (
        code.to_string(),
        size.parse::<f64>().expect("size_upload") as u64,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_uploads_nothing_when_refused_and_everything_when_accepted() {
    let upstream = spawn_upstream(|seen| async move {
        json(200, &format!(r#"{{"received":{}}}"#, seen.body.len()))
    })
    .await;
    let tail = r#"
[[checks]]
name = "no-uploads-to-archive"
when = { method = "POST", path = "/archive/**" }
then = { status = 403 }
"#;
    let proxy = spawn_proxy(&config_with(upstream.addr, "", "", tail)).await;
    let file = std::env::temp_dir().join(format!("restatus-expect-{}.bin", std::process::id()));
    std::fs::write(&file, vec![b'x'; 4 << 20]).expect("write upload");
    let (refused_url, accepted_url) = (proxy.url("/archive/big"), proxy.url("/uploads/big"));
    let file_for_curl = file.clone();
    let (refused, accepted) = tokio::task::spawn_blocking(move || {
        (
            curl_upload(&refused_url, &file_for_curl),
            curl_upload(&accepted_url, &file_for_curl),
        )
    })
    .await
    .expect("curl");
    std::fs::remove_file(&file).ok();
    assert_eq!(
        refused,
        ("403".to_string(), 0),
        "refused upload sends nothing"
    );
    assert_eq!(
        accepted,
        ("201".to_string(), 4 << 20),
        "accepted upload sends everything"
    );
    assert_eq!(upstream.requests().len(), 1);
    assert_eq!(upstream.requests()[0].body.len(), 4 << 20);
}

#[tokio::test]
async fn http10_client_expect_is_ignored() {
    let upstream = spawn_upstream(|_| async move { json(200, "{}") }).await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    // RFC 9110 §10.1.1: an HTTP/1.0 request's expectation is ignored; the body follows at once.
    let response = raw(
        proxy.addr,
        b"PUT /items/1 HTTP/1.0\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n{}",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(!response.contains("100 Continue"), "{response}");
    assert!(!upstream.requests()[0].headers.contains_key("expect"));
}

#[test]
fn checks_accept_only_request_side_conditions_and_documented_codes() {
    let base = config_with("127.0.0.1:9".parse().expect("addr"), "", "", "");
    let response_side = format!(
        "{base}\n[[checks]]\nname = \"c\"\nwhen = {{ status = 500 }}\nthen = {{ status = 403 }}\n"
    );
    let err = restatus::config::Config::parse(std::path::Path::new("x.toml"), &response_side)
        .expect_err("a response-side check is refused");
    assert!(
        err.to_string()
            .contains("decided before the upstream answers"),
        "{err}"
    );
    assert!(err.line > 0, "{err}");
    let odd_code = format!(
        "{base}\n[[checks]]\nname = \"c\"\nwhen = {{ method = \"DELETE\" }}\nthen = {{ status = 418 }}\n"
    );
    let err = restatus::config::Config::parse(std::path::Path::new("x.toml"), &odd_code)
        .expect_err("an undocumented code is refused");
    assert!(err.to_string().contains("documented error code"), "{err}");
    assert!(err.to_string().contains("x.toml:"), "{err}");
}
