//! The access lines of responses cut short and of requests whose client left. In a test
//! binary of its own: it installs the process-wide subscriber, which a per-thread one in a
//! binary of parallel tests cannot stand in for reliably.
mod support;

use std::sync::OnceLock;
use std::time::Duration;
use support::fault::{ok_response, spawn_fault, FaultConn};
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// `GET /cut` on a connection of its own: the head of the 200 arrives, then the close.
async fn get_cut(addr: std::net::SocketAddr) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /cut HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
}

/// The log lines of the whole test binary, JSON as `[log] format` is by default.
fn logs() -> &'static SharedSink {
    static LOGS: OnceLock<SharedSink> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = SharedSink::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        logs
    })
}

/// The access lines logged so far for `path`.
fn access_lines(path: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(&logs().0.lock().expect("logs")).into_owned();
    let needle = format!("\"path\":\"{path}\"");
    text.lines()
        .filter(|l| l.contains(&needle) && l.contains("\"message\":\"access\""))
        .map(str::to_string)
        .collect()
}

/// A response body the upstream cut short is logged with `complete=false` and the bytes
/// that were sent.
#[tokio::test]
async fn a_body_cut_short_is_logged_as_incomplete() {
    let logs = logs();
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        if conn.read_request().await.is_some() {
            conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nonly this much")
                .await;
        }
    })
    .await;
    let proxy = spawn_proxy(&format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "backend"
targets = ["http://{}"]

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
profile = "none"

[[routes]]
name = "inspected"
upstream = "backend"
path_prefix = "/inspected"
profile = "none"

[[rules]]
name = "error-body-is-404"
routes = ["inspected"]
when = {{ status = 200, body_json = {{ pointer = "/error", exists = true }} }}
then = {{ status = 404 }}
"#,
        upstream.addr
    ))
    .await;
    get_cut(proxy.addr).await;
    let access = || {
        let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
        text.lines()
            .find(|l| l.contains("\"path\":\"/cut\""))
            .map(str::to_string)
    };
    wait_until(Duration::from_secs(10), "the access line", || {
        access().is_some()
    })
    .await;
    let line = access().unwrap_or_default();
    assert!(line.contains("\"complete\":false"), "{line}");
    assert!(line.contains("\"bytes\":14"), "{line}");
    assert!(
        line.contains(
            "\"error\":\"upstream response body failed: connection closed before the end of the body\""
        ),
        "{line}"
    );
    // Whole microseconds: at most three decimals, never float noise.
    let duration = line
        .split(',')
        .find_map(|field| field.strip_prefix("\"duration_ms\":"))
        .unwrap_or_else(|| panic!("{line}"));
    let decimals = duration.split_once('.').map_or(0, |(_, d)| d.len());
    assert!(decimals <= 3, "{line}");
    // The warning about the cut body names the request as the access line does, so the two
    // can be joined.
    let id = line
        .split(',')
        .find(|field| field.starts_with("\"request_id\":"))
        .unwrap_or_else(|| panic!("{line}"));
    let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
    let warning = text
        .lines()
        .find(|l| l.contains("aborting the client response"))
        .unwrap_or_else(|| panic!("no warning in {text}"));
    assert!(warning.split(',').any(|f| f == id), "{id} in {warning}");
    // The same cut body under a body rule: the proxy answers, and its line says why.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /inspected/cut HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let got = read_to_close(&mut stream, Duration::from_secs(10)).await;
    assert!(got.starts_with("HTTP/1.1 502"), "{got}");
    let inspected = || {
        let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
        text.lines()
            .find(|l| l.contains("\"path\":\"/inspected/cut\""))
            .map(str::to_string)
    };
    wait_until(Duration::from_secs(10), "the second access line", || {
        inspected().is_some()
    })
    .await;
    let line = inspected().unwrap_or_default();
    assert!(line.contains("\"status\":502"), "{line}");
    assert!(line.contains("\"error\":\"upstream closed"), "{line}");
    proxy.stop().await;
    // Without an access log the cut body is still told, with no id to join.
    let quiet = spawn_proxy(
        &simple_config(upstream.addr, "")
            .replace("[[upstreams]]", "[log]\naccess = false\n\n[[upstreams]]"),
    )
    .await;
    let warnings = || {
        let text = String::from_utf8_lossy(&logs.0.lock().expect("logs")).into_owned();
        text.lines()
            .filter(|l| l.contains("aborting the client response"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let before = warnings().len();
    get_cut(quiet.addr).await;
    wait_until(
        Duration::from_secs(10),
        "a warning without an access log",
        || warnings().len() == before + 1,
    )
    .await;
    let warning = warnings().pop().unwrap_or_default();
    assert!(warning.contains("\"request_id\":\"-\""), "{warning}");
    quiet.stop().await;
}

/// A request whose client goes away before the answer is ready (an HTTP/1.1 hang-up, an
/// HTTP/2 stream reset, also halfway through its upload) still gets its access line: status 499, as NGINX logs it, no bytes,
/// not complete. A request answered gets one line, not a 499 besides.
#[tokio::test]
async fn a_request_whose_client_left_is_logged_as_499() {
    logs();
    // Answers `/fine`, and holds every other request until the proxy gives it up.
    let upstream = spawn_fault(|mut conn: FaultConn| async move {
        while let Some(request) = conn.read_request().await {
            if !request.starts_with("GET /fine ") {
                conn.hold().await;
                return;
            }
            conn.send(&ok_response("{}")).await;
        }
    })
    .await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    assert_eq!(get(&proxy.url("/fine")).await.status, 200);
    // An HTTP/1.1 client that hangs up.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /gone/h1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    wait_until(Duration::from_secs(10), "the request upstream", || {
        upstream.all_bytes().contains("GET /gone/h1 ")
    })
    .await;
    drop(stream);
    // An HTTP/2 client that cancels its request.
    let url = proxy.url("/gone/h2");
    let request = tokio::spawn(async move { h2_client().get(url.parse().expect("url")).await });
    wait_until(
        Duration::from_secs(10),
        "the HTTP/2 request upstream",
        || upstream.all_bytes().contains("GET /gone/h2 "),
    )
    .await;
    request.abort();
    // An HTTP/2 client that cancels its upload halfway.
    let (tx, rx) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, BoxError>>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|frame| (frame, rx))
    });
    let upload = http::Request::post(proxy.url("/gone/upload"))
        .header("content-length", "1000000")
        .body(http_body_util::BodyExt::boxed(
            http_body_util::StreamBody::new(frames),
        ))
        .expect("request");
    let request = tokio::spawn(async move { h2_client().request(upload).await });
    let half = bytes::Bytes::from(vec![b'x'; 64 << 10]);
    tx.send(Ok(http_body::Frame::data(half)))
        .await
        .expect("first half");
    wait_until(Duration::from_secs(10), "the upload upstream", || {
        upstream.all_bytes().contains("POST /gone/upload ")
    })
    .await;
    request.abort();
    // An HTTP/1.1 client whose connection is reset halfway through its upload.
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = "POST /gone/reset HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n";
    stream.write_all(head.as_bytes()).await.expect("head");
    stream
        .write_all(&[b'x'; 64 << 10])
        .await
        .expect("first half");
    wait_until(Duration::from_secs(10), "the reset upload upstream", || {
        upstream.all_bytes().contains("POST /gone/reset ")
    })
    .await;
    // A zero linger makes the close a reset; with no linger time, nothing blocks on drop.
    #[allow(deprecated)]
    stream.set_linger(Some(Duration::ZERO)).expect("linger");
    drop(stream);
    for path in ["/gone/h1", "/gone/h2", "/gone/upload", "/gone/reset"] {
        wait_until(Duration::from_secs(10), "the access line", || {
            !access_lines(path).is_empty()
        })
        .await;
        let lines = access_lines(path);
        assert_eq!(lines.len(), 1, "{lines:?}");
        for field in [
            "\"status\":499",
            "\"bytes\":0",
            "\"complete\":false",
            "\"route\":\"main\"",
            "\"error\":\"the connection ended before the response was ready\"",
        ] {
            assert!(lines[0].contains(field), "{field} in {}", lines[0]);
        }
    }
    let fine = access_lines("/fine");
    assert_eq!(fine.len(), 1, "{fine:?}");
    assert!(fine[0].contains("\"status\":200"), "{}", fine[0]);
    proxy.stop().await;
}
