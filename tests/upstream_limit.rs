//! `max_connections`: at most that many connections open to a target; further requests wait
//! in turn for one, up to `queue_timeout`, then get a 503.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What an upstream saw of its connections and requests.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
}

/// An upstream that reads each request (head and `Content-Length` body) and answers it with
/// 200 once `open` is true.
async fn gated_upstream(open: bool) -> (SocketAddr, Arc<Counts>, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let (gate, _) = watch::channel(open);
    let (shared, opened) = (counts.clone(), gate.subscribe());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(answer_when_open(stream, shared.clone(), opened.clone()));
        }
    });
    (addr, counts, gate)
}

async fn answer_when_open(
    mut stream: TcpStream,
    counts: Arc<Counts>,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    counts.closed.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + length);
        counts.requests.fetch_add(1, Ordering::SeqCst);
        // While it holds the answer, it notices the proxy closing the connection.
        let mut chunk = [0u8; 4096];
        let read = tokio::select! {
            _ = open.wait_for(|open| *open) => None,
            read = stream.read(&mut chunk) => Some(read),
        };
        match read {
            Some(Ok(0) | Err(_)) => {
                counts.closed.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Some(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                let _ = open.wait_for(|open| *open).await;
            }
            None => {}
        }
        let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        if stream.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn capped_config(upstream: SocketAddr, max: usize, queue_timeout: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"

[admin]
listen = "127.0.0.1:0"

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
max_connections = {max}
queue_timeout = "{queue_timeout}"

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
profile = "none"
"#
    )
}

/// Sends a request that the (closed) gated upstream holds, once it is there.
async fn held_request(proxy: &TestProxy, counts: &Counts) -> tokio::task::JoinHandle<Reply> {
    let url = proxy.url("/items");
    let request = tokio::spawn(async move { get(&url).await });
    wait_until(
        Duration::from_secs(10),
        "the first request upstream",
        || counts.requests.load(Ordering::SeqCst) == 1,
    )
    .await;
    request
}

async fn metric(proxy: &TestProxy, series: &str) -> Option<f64> {
    let admin = proxy.admin.expect("admin listener");
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    sample(&metrics, series)
}

#[tokio::test]
async fn max_connections_caps_the_connections_and_queues_the_rest() {
    let (upstream, counts, gate) = gated_upstream(false).await;
    let proxy = spawn_proxy(&capped_config(upstream, 2, "30s")).await;
    let url = proxy.url("/items");
    let requests: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    // Two requests hold the two connections; the other four wait their turn.
    let queued = r#"restatus_upstream_queued_requests{upstream="backend"}"#;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while metric(&proxy, queued).await != Some(4.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "four requests never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(counts.requests.load(Ordering::SeqCst), 2);
    gate.send_replace(true);
    for request in requests {
        let reply = request.await.expect("request task");
        assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    }
    // The waiting requests went on the two connections as they came back.
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(counts.requests.load(Ordering::SeqCst), 6);
    assert_eq!(metric(&proxy, queued).await, Some(0.0));
    proxy.stop().await;
}

#[tokio::test]
async fn a_request_that_waits_past_queue_timeout_gets_a_503() {
    let (upstream, counts, gate) = gated_upstream(false).await;
    let proxy = spawn_proxy(&capped_config(upstream, 1, "200ms")).await;
    let first = held_request(&proxy, &counts).await;
    let reply = get(&proxy.url("/items/2")).await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
    assert_eq!(reply.header("retry-after"), Some("1"));
    let error = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(error.contains("max_connections (1)"), "{error}");
    let failures = r#"restatus_upstream_errors_total{upstream="backend",kind="queue_timeout"}"#;
    assert_eq!(metric(&proxy, failures).await, Some(1.0));
    gate.send_replace(true);
    let reply = first.await.expect("first request");
    assert_eq!(reply.status, 200);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    proxy.stop().await;
}

/// Under `reuse_after_body = "same_client"` (the default) a connection that carried a body
/// stays with its client connection; while that client is quiet, a request that would
/// otherwise wait for a slot closes it and takes its slot.
#[tokio::test]
async fn a_connection_kept_for_a_quiet_client_gives_its_slot_to_a_waiting_request() {
    let (upstream, counts, _gate) = gated_upstream(true).await;
    let proxy = spawn_proxy(&capped_config(upstream, 1, "5s")).await;
    let quiet = client();
    let reply = send_with(&quiet, "POST", &proxy.url("/items"), &[], "{}").await;
    assert_eq!(reply.status, 200);
    let reply = get(&proxy.url("/items/1")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    wait_until(
        Duration::from_secs(10),
        "the kept connection closed",
        || counts.closed.load(Ordering::SeqCst) == 1,
    )
    .await;
    // The quiet client still gets answers: on a connection of its own again.
    let reply = send_with(&quiet, "POST", &proxy.url("/items"), &[], "{}").await;
    assert_eq!(reply.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn a_queue_timeout_is_a_500_under_the_documented_profile() {
    let (upstream, counts, gate) = gated_upstream(false).await;
    let text = capped_config(upstream, 1, "100ms").replace("profile = \"none\"", "");
    let proxy = spawn_proxy(&text).await;
    let first = held_request(&proxy, &counts).await;
    let reply = get(&proxy.url("/items/2")).await;
    assert_eq!(reply.status, 500);
    // Still a fair hint to a client that retries: RFC 9110 §10.2.3 does not tie it to 503.
    assert_eq!(reply.header("retry-after"), Some("1"));
    gate.send_replace(true);
    assert_eq!(first.await.expect("first request").status, 200);
    let records = proxy.records();
    let busy = records
        .iter()
        .find(|r| r["upstream_status"] == 503 && r["cause"] == "queue_timeout");
    assert!(busy.is_some(), "{records:?}");
    proxy.stop().await;
}

/// Many clients at once, HTTP/1.1 and HTTP/2, POSTs (whose connections are kept for their
/// client) among GETs, through three connections: every request is answered and none is
/// left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_requests_all_get_through_a_small_cap() {
    let (upstream, counts, _gate) = gated_upstream(true).await;
    let proxy = spawn_proxy(&capped_config(upstream, 3, "20s")).await;
    let clients: Vec<TestClient> = (0..8)
        .map(|n| if n % 2 == 0 { client() } else { h2_client() })
        .collect();
    let requests = (0..400).map(|n| {
        let (client, url) = (clients[n % 8].clone(), proxy.url(&format!("/items/{n}")));
        tokio::spawn(async move {
            match n % 3 {
                0 => send_with(&client, "POST", &url, &[], "{\"n\":1}").await,
                _ => send_with(&client, "GET", &url, &[], "").await,
            }
        })
    });
    for reply in futures_util::future::join_all(requests).await {
        assert_eq!(reply.expect("request task").status, 200);
    }
    assert_eq!(counts.requests.load(Ordering::SeqCst), 400);
    assert_eq!(proxy.live.proxy().upstreams[0].queued(), 0);
    proxy.stop().await;
}

/// With several targets, a request whose turn falls on a target with all its connections
/// busy goes to one that has room, instead of waiting.
#[tokio::test]
async fn a_busy_target_is_passed_over_for_one_with_room() {
    let (busy, busy_counts, gate) = gated_upstream(false).await;
    let (free, free_counts, _open) = gated_upstream(true).await;
    let text = capped_config(busy, 1, "300ms").replace(
        &format!("targets = [\"http://{busy}\"]"),
        &format!("targets = [\"http://{busy}\", \"http://{free}\"]"),
    );
    let proxy = spawn_proxy(&text).await;
    // Round-robin: the first request to the busy target (held there), the second to the
    // free one.
    let url = proxy.url("/items/1");
    let held = tokio::spawn(async move { get(&url).await });
    wait_until(Duration::from_secs(10), "the held request upstream", || {
        busy_counts.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(get(&proxy.url("/items/2")).await.status, 200);
    // The third request's turn is the busy target's: it goes to the free one.
    let reply = get(&proxy.url("/items/3")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    assert_eq!(free_counts.requests.load(Ordering::SeqCst), 2);
    assert_eq!(busy_counts.requests.load(Ordering::SeqCst), 1);
    gate.send_replace(true);
    assert_eq!(held.await.expect("held request").status, 200);
    proxy.stop().await;
}

/// Sends `GET path` on a raw connection of its own and returns it, unread.
async fn raw_get(proxy: &TestProxy, path: &str) -> TcpStream {
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let head = format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("send");
    stream
}

/// An HTTP/1.1 client that hangs up while its request waits for a connection gives up its
/// place in the queue (at once, not at `queue_timeout`), as NGINX drops such a request.
#[tokio::test]
async fn a_client_that_hangs_up_leaves_the_queue() {
    let (upstream, counts, gate) = gated_upstream(false).await;
    let proxy = spawn_proxy(&capped_config(upstream, 1, "60s")).await;
    let held = raw_get(&proxy, "/items/1").await;
    wait_until(
        Duration::from_secs(10),
        "the first request upstream",
        || counts.requests.load(Ordering::SeqCst) == 1,
    )
    .await;
    let queued = raw_get(&proxy, "/items/2").await;
    let upstreams = proxy.live.proxy().upstreams.clone();
    wait_until(Duration::from_secs(10), "the second request queued", || {
        upstreams[0].queued() == 1
    })
    .await;
    drop(queued);
    wait_until(Duration::from_secs(10), "the hung-up request gone", || {
        upstreams[0].queued() == 0
    })
    .await;
    gate.send_replace(true);
    drop(held);
    // The connection comes back, or closes: either way the next request gets through.
    let reply = get(&proxy.url("/items/3")).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ok"));
    assert!(
        counts.requests.load(Ordering::SeqCst) <= 2,
        "a dropped request went upstream"
    );
    proxy.stop().await;
}

/// A client that hangs up while the service is still working on its request: the upstream
/// request is aborted (its connection closed), not left to run for a client that is gone.
#[tokio::test]
async fn a_client_that_hangs_up_aborts_its_upstream_request() {
    let (upstream, counts, _gate) = gated_upstream(false).await;
    // The service would be given a minute.
    let text = simple_config(upstream, "").replace("\"10s\"", "\"60s\"");
    let proxy = spawn_proxy(&text).await;
    let client = raw_get(&proxy, "/slow").await;
    wait_until(Duration::from_secs(10), "the request upstream", || {
        counts.requests.load(Ordering::SeqCst) == 1
    })
    .await;
    drop(client);
    wait_until(
        Duration::from_secs(10),
        "the upstream request aborted",
        || counts.closed.load(Ordering::SeqCst) == 1,
    )
    .await;
    proxy.stop().await;
}

/// A reload that changes the cap replaces the upstream's pools: connections the old pool
/// kept for clients (`reuse_after_body = "same_client"`) are closed with it, so that they do
/// not stay open beside the new pool's and exceed its cap.
#[tokio::test]
async fn a_reload_closes_the_connections_kept_under_the_old_cap() {
    let (upstream, counts, _gate) = gated_upstream(true).await;
    let proxy = spawn_proxy(&capped_config(upstream, 2, "5s")).await;
    let (first, second) = (client(), client());
    for quiet in [&first, &second] {
        let reply = send_with(quiet, "POST", &proxy.url("/items"), &[], "{}").await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    proxy.live.apply(config(&capped_config(upstream, 3, "5s")));
    wait_until(
        Duration::from_secs(10),
        "the kept connections closed",
        || counts.closed.load(Ordering::SeqCst) == 2,
    )
    .await;
    // The clients are still there, and get answers on connections of the new pool.
    let reply = send_with(&first, "POST", &proxy.url("/items"), &[], "{}").await;
    assert_eq!(reply.status, 200);
    proxy.stop().await;
}
