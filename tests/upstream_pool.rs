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
