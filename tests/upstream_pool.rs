//! The upstream connection pool keeps at most `idle_connections` idle connections per target.
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Counts of what an upstream saw of its connections.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    closed_by_proxy: AtomicUsize,
}

/// An upstream that holds every answer until `burst` requests are in flight at once, so that
/// the proxy must open `burst` connections; then it answers each request at once.
async fn burst_upstream(burst: usize) -> (SocketAddr, Arc<Counts>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let (arrived, _) = watch::channel(0usize);
    let arrived = Arc::new(arrived);
    let shared = counts.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, shared.clone(), arrived.clone(), burst));
        }
    });
    (addr, counts)
}

async fn serve(
    mut stream: TcpStream,
    counts: Arc<Counts>,
    arrived: Arc<watch::Sender<usize>>,
    burst: usize,
) {
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 1024];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                counts.closed_by_proxy.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..end + 4);
            arrived.send_modify(|n| *n += 1);
            let mut seen = arrived.subscribe();
            let _ = seen.wait_for(|n| *n >= burst).await;
            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(reply).await.is_err() {
                return;
            }
        }
    }
}

fn pool_config(upstream: SocketAddr, idle: usize) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
idle_connections = {idle}

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
profile = "none"
"#
    )
}

#[tokio::test]
async fn idle_upstream_connections_above_the_limit_are_closed() {
    let (upstream, counts) = burst_upstream(3).await;
    let proxy = spawn_proxy(&pool_config(upstream, 1)).await;
    let url = proxy.url("/items");
    let replies = futures_util::future::join_all((0..3).map(|_| get(&url))).await;
    assert!(replies.iter().all(|r| r.status == 200), "{replies:?}");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    // Of the three connections the burst needed, one stays pooled; the proxy closes two.
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts.closed_by_proxy.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the pool kept every idle connection"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The one kept is reused: a later request opens no new connection.
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(counts.closed_by_proxy.load(Ordering::SeqCst), 2);
    proxy.stop().await;
}

#[test]
fn idle_connections_defaults_to_256() {
    let text = pool_config("127.0.0.1:9".parse().expect("addr"), 7);
    let config = restatus::config::Config::parse(std::path::Path::new("pool.toml"), &text)
        .expect("valid config");
    assert_eq!(config.upstreams[0].idle_connections, 7);
    let default = text.replace("idle_connections = 7\n", "");
    let config = restatus::config::Config::parse(std::path::Path::new("pool.toml"), &default)
        .expect("valid config");
    assert_eq!(
        config.upstreams[0].idle_connections,
        restatus::config::DEFAULT_IDLE_CONNECTIONS
    );
}

/// A legacy upstream that refuses `POST /refuse` with 403, and accepts `POST /ignore` with 200,
/// without reading either body, and keeps the connection: what is left of the body is read as
/// the start of the next request. Every other request has its `Content-Length` body read and
/// is answered with its request line; `answered LINE` is noted once that answer is written.
async fn body_skipping_upstream() -> (SocketAddr, Arc<Counts>, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let counts = Arc::new(Counts::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (shared, lines) = (counts.clone(), seen.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            shared.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(skip_bodies(stream, lines.clone(), shared.clone()));
        }
    });
    (addr, counts, seen)
}

async fn skip_bodies(
    mut stream: TcpStream,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    counts: Arc<Counts>,
) {
    let mut buf = Vec::new();
    // After `POST /late`: the next head (the body, read as a request) is answered only once
    // another request is in, so that its answer comes after that request went out.
    let mut late = false;
    loop {
        let heads = buf.windows(4).filter(|w| *w == b"\r\n\r\n").count();
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        let Some(end) = end.filter(|_| !late || heads >= 2) else {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    counts.closed_by_proxy.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let line = head.lines().next().unwrap_or_default().to_string();
        seen.lock().expect("seen").push(line.clone());
        late = line.starts_with("POST /late ");
        if line.starts_with("POST /refuse ") || line.starts_with("POST /ignore ") || late {
            let reply: &[u8] = if line.starts_with("POST /refuse ") {
                b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n"
            } else {
                b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nignored"
            };
            if stream.write_all(reply).await.is_err() {
                return;
            }
            continue;
        }
        let length = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..length);
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{line}",
            line.len()
        );
        if stream.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
        seen.lock().expect("seen").push(format!("answered {line}"));
    }
}

#[tokio::test]
async fn a_connection_whose_request_body_may_be_unread_is_not_reused() {
    let (upstream, counts, seen) = body_skipping_upstream().await;
    let proxy = spawn_proxy(&any_client_config(upstream)).await;
    // A body the upstream reads, and a 200: the connection is reused.
    let reply = send("POST", &proxy.url("/ok"), &[], "{}").await;
    assert_eq!(reply.text(), "POST /ok HTTP/1.1");
    assert_eq!(
        get(&proxy.url("/items/1")).await.text(),
        "GET /items/1 HTTP/1.1"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    // A refusal that leaves the body unread: the body holds the start of a request, which
    // the next request on that connection would complete.
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\nX-Junk: ";
    let reply = send("POST", &proxy.url("/refuse"), &[], smuggled).await;
    assert_eq!(reply.status, 403);
    let reply = get(&proxy.url("/items/2")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "GET /items/2 HTTP/1.1");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    let lines = seen.lock().expect("seen").clone();
    assert!(!lines.iter().any(|l| l.contains("/smuggled")), "{lines:?}");
    proxy.stop().await;
}

/// `reuse_after_body = true`: a connection that carried a body may go to any client.
fn any_client_config(upstream: SocketAddr) -> String {
    pool_config(upstream, 8).replace(
        "idle_connections = 8",
        "idle_connections = 8\nreuse_after_body = true",
    )
}

/// By default (`reuse_after_body = "same_client"`) a connection that carried a body is kept
/// for the client connection that sent it: that client's next requests reuse it, no other
/// client's request goes on it, and it is closed once that client is gone.
#[tokio::test]
async fn a_connection_that_carried_a_body_is_kept_for_its_client() {
    let (upstream, counts, _) = body_skipping_upstream().await;
    let proxy = spawn_proxy(&pool_config(upstream, 8)).await;
    let a = client();
    let reply = send_with(&a, "POST", &proxy.url("/ok"), &[], "{}").await;
    assert_eq!(reply.text(), "POST /ok HTTP/1.1");
    let reply = send_with(&a, "GET", &proxy.url("/items/1"), &[], "").await;
    assert_eq!(reply.text(), "GET /items/1 HTTP/1.1");
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1, "the same client");
    // Another client gets a connection of its own, which is shared: a third reuses it.
    assert_eq!(
        get(&proxy.url("/items/2")).await.text(),
        "GET /items/2 HTTP/1.1"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2, "another client");
    assert_eq!(
        get(&proxy.url("/items/3")).await.text(),
        "GET /items/3 HTTP/1.1"
    );
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        2,
        "a shared connection"
    );
    // The first client goes away: the connection kept for it is closed.
    drop(a);
    wait_until(
        Duration::from_secs(10),
        "the kept connection closed",
        || counts.closed_by_proxy.load(Ordering::SeqCst) == 1,
    )
    .await;
    proxy.stop().await;
}

/// A 2xx from an upstream that did not read the body (CL.0) and answers the hidden request
/// late, after the next request went out on the connection: by default that connection is
/// kept for the client that sent the body, so no other client can get the answer (with
/// `reuse_after_body = true` the next client would, and no warning would tell).
#[tokio::test]
async fn a_late_answer_to_a_body_read_as_a_request_reaches_no_other_client() {
    let (upstream, _, seen) = body_skipping_upstream().await;
    let proxy = spawn_proxy(&pool_config(upstream, 8)).await;
    let a = client();
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let reply = send_with(&a, "POST", &proxy.url("/late"), &[], smuggled).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ignored"));
    for n in 2..6 {
        let path = format!("/items/{n}");
        let reply = get(&proxy.url(&path)).await;
        assert_eq!(
            reply.text(),
            format!("GET {path} HTTP/1.1"),
            "another client"
        );
    }
    // The client that sent the body meets the answer to it, one behind.
    let reply = send_with(&a, "GET", &proxy.url("/items/9"), &[], "").await;
    assert_eq!(reply.text(), "GET /smuggled HTTP/1.1");
    let lines = seen.lock().expect("seen").clone();
    assert!(
        lines.contains(&"GET /smuggled HTTP/1.1".to_string()),
        "{lines:?}"
    );
    proxy.stop().await;
}

/// A 2xx from an upstream that did not read the body (CL.0): the body, a whole request, is
/// answered as one on the pooled connection. That answer never reaches another client, and
/// from then on no connection of the target is reused after a request with a body.
#[tokio::test]
async fn an_answer_to_a_body_read_as_a_request_stops_reuse_after_bodies() {
    let (upstream, counts, seen) = body_skipping_upstream().await;
    let proxy = spawn_proxy(&any_client_config(upstream)).await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let reply = send("POST", &proxy.url("/ignore"), &[], smuggled).await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "ignored"));
    let answered = || {
        let lines = seen.lock().expect("seen");
        lines.iter().any(|l| l == "answered GET /smuggled HTTP/1.1")
    };
    wait_until(Duration::from_secs(10), "the smuggled answer", answered).await;
    let reply = get(&proxy.url("/items/2")).await;
    assert_eq!(
        reply.text(),
        "GET /items/2 HTTP/1.1",
        "another client's answer"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    // A body the upstream reads, and a 200: its connection is closed all the same now.
    let reply = send("POST", &proxy.url("/ok"), &[], "{}").await;
    assert_eq!(reply.text(), "POST /ok HTTP/1.1");
    assert_eq!(
        get(&proxy.url("/items/3")).await.text(),
        "GET /items/3 HTTP/1.1"
    );
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        3,
        "reused after a body"
    );
    // Requests without a body still share connections.
    assert_eq!(
        get(&proxy.url("/items/4")).await.text(),
        "GET /items/4 HTTP/1.1"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    proxy.stop().await;
}

/// `reuse_after_body = false`: a connection that carried a body is never pooled, so a body
/// an upstream leaves unread cannot be answered to anyone, however late the answer comes.
#[tokio::test]
async fn reuse_after_body_false_never_pools_a_connection_that_carried_a_body() {
    let (upstream, counts, _) = body_skipping_upstream().await;
    let config = pool_config(upstream, 8).replace(
        "idle_connections = 8",
        "idle_connections = 8\nreuse_after_body = false",
    );
    let proxy = spawn_proxy(&config).await;
    assert_eq!(
        get(&proxy.url("/items/1")).await.text(),
        "GET /items/1 HTTP/1.1"
    );
    assert_eq!(
        get(&proxy.url("/items/2")).await.text(),
        "GET /items/2 HTTP/1.1"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let reply = send("POST", &proxy.url("/ignore"), &[], smuggled).await;
    assert_eq!(reply.text(), "ignored");
    assert_eq!(
        get(&proxy.url("/items/3")).await.text(),
        "GET /items/3 HTTP/1.1"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    let reply = send("POST", &proxy.url("/ok"), &[], "{}").await;
    assert_eq!(reply.text(), "POST /ok HTTP/1.1");
    assert_eq!(
        get(&proxy.url("/items/4")).await.text(),
        "GET /items/4 HTTP/1.1"
    );
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    proxy.stop().await;
}

/// A pooled connection idle for the upstream's `idle_timeout` is closed by the proxy, and the
/// next request opens a new one: a request is never sent on a connection idle longer than
/// that, which an upstream with a shorter keep-alive timeout may be closing just then.
#[tokio::test]
async fn a_connection_idle_for_idle_timeout_is_closed_and_not_reused() {
    let (upstream, counts) = burst_upstream(1).await;
    let text = pool_config(upstream, 8).replace(
        "idle_connections = 8\n",
        "idle_connections = 8\nidle_timeout = \"200ms\"\n",
    );
    let proxy = spawn_proxy(&text).await;
    let url = proxy.url("/items");
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(
        counts.accepted.load(Ordering::SeqCst),
        1,
        "reused while fresh"
    );
    wait_until(
        Duration::from_secs(10),
        "the idle connection closed",
        || counts.closed_by_proxy.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(get(&url).await.status, 200);
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    proxy.stop().await;
}

#[test]
fn pooled_connections_are_kept_4s_by_default() {
    let text = pool_config("127.0.0.1:9".parse().expect("addr"), 7);
    let config = restatus::config::Config::parse(std::path::Path::new("pool.toml"), &text)
        .expect("valid config");
    assert_eq!(config.upstreams[0].idle_timeout, Duration::from_secs(4));
}

/// After a reload that replaced the upstream, a connection its old pool kept for a client
/// can serve no request any more: that client's next request closes it.
#[tokio::test]
async fn a_connection_kept_by_a_replaced_pool_is_closed_on_its_clients_next_request() {
    let (upstream, counts, _) = body_skipping_upstream().await;
    let proxy = spawn_proxy(&pool_config(upstream, 8)).await;
    let a = client();
    let reply = send_with(&a, "POST", &proxy.url("/ok"), &[], "{}").await;
    assert_eq!(reply.text(), "POST /ok HTTP/1.1");
    proxy.live.apply(config(&pool_config(upstream, 9)));
    let reply = send_with(&a, "GET", &proxy.url("/items/1"), &[], "").await;
    assert_eq!(reply.text(), "GET /items/1 HTTP/1.1");
    // Closed by that request, not later by an idle timeout (4 s).
    wait_until(
        Duration::from_secs(2),
        "the old kept connection closed",
        || counts.closed_by_proxy.load(Ordering::SeqCst) == 1,
    )
    .await;
    assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    proxy.stop().await;
}
