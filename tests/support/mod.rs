//! Shared test harness: upstreams and proxies on 127.0.0.1:0, an HTTP client, raw TCP helpers.
//! Every helper stops by itself: servers end when their handle is dropped or shut down, and
//! waits poll with a deadline instead of sleeping.
#![allow(dead_code)]

pub mod fault;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use restatus::config::Config;
use restatus::deviation::DeviationLog;
use restatus::server::Server;
use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type UpBody = BoxBody<Bytes, BoxError>;

/// A response body from bytes.
pub fn full(body: impl Into<Bytes>) -> UpBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A response with `status` and `body`.
pub fn reply(status: u16, body: impl Into<Bytes>) -> Response<UpBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
    response
}

/// A JSON response with `status` and `body`.
pub fn json(status: u16, body: &str) -> Response<UpBody> {
    let mut response = reply(status, body.to_owned());
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// What an upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A hyper HTTP/1.1 upstream on 127.0.0.1:0 that serves until dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl Upstream {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an upstream that hands every request to `handler` without reading its body first.
pub async fn spawn_streaming_upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let handler = Arc::new(handler);
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let response = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(response.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Upstream {
        addr,
        seen: Arc::new(Mutex::new(Vec::new())),
        task,
    }
}

/// Starts an upstream that reads each request whole, records it, then asks `handler`.
pub async fn spawn_upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let handler = Arc::new(handler);
    let mut upstream = spawn_streaming_upstream(move |request: Request<Incoming>| {
        let record = record.clone();
        let handler = handler.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            let request = Seen {
                method: parts.method,
                uri: parts.uri.to_string(),
                version: parts.version,
                headers: parts.headers,
                body,
            };
            record.lock().expect("seen lock").push(request.clone());
            handler(request).await
        }
    })
    .await;
    upstream.seen = seen;
    upstream
}

/// An upstream that always answers `status` with `body` (as JSON).
pub async fn fixed_upstream(status: u16, body: &'static str) -> Upstream {
    spawn_upstream(move |_| async move { json(status, body) }).await
}

/// A byte sink that tests can read while the deviation writer appends to it.
#[derive(Clone, Default)]
pub struct SharedSink(pub Arc<Mutex<Vec<u8>>>);

impl Write for SharedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("sink lock").extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running proxy, shut down gracefully by `stop` or aborted when dropped.
pub struct TestProxy {
    pub addr: SocketAddr,
    /// The admin listener, when the config has an `[admin]` table.
    pub admin: Option<SocketAddr>,
    /// The first HTTPS listener, when the config has `[server.tls]`.
    pub tls: Option<SocketAddr>,
    pub live: Arc<restatus::live::Live>,
    pub log: Arc<DeviationLog>,
    pub sink: SharedSink,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestProxy {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every deviation record written so far, parsed from the JSON lines of the sink.
    pub fn records(&self) -> Vec<serde_json::Value> {
        assert!(
            self.log.flush(Duration::from_secs(10)),
            "deviation log flush"
        );
        let bytes = self.sink.0.lock().expect("sink lock").clone();
        String::from_utf8(bytes)
            .expect("utf-8 records")
            .lines()
            .map(|line| serde_json::from_str(line).expect("each record is one JSON object"))
            .collect()
    }

    /// The deviation records written so far whose `kind` is `kind`.
    pub fn records_of_kind(&self, kind: &str) -> Vec<serde_json::Value> {
        let mut records = self.records();
        records.retain(|r| r["kind"] == kind);
        records
    }

    /// Starts a graceful shutdown and returns the task serving until it completes.
    pub fn begin_shutdown(&mut self) -> JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("proxy still running")
    }

    /// Shuts down gracefully and waits (bounded) for the server to finish.
    pub async fn stop(mut self) {
        let task = self.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("proxy stops within 30s")
            .expect("proxy task");
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Parses `toml` as a config file named `test.toml`; panics with the error if invalid.
pub fn config(toml: &str) -> Config {
    Config::parse(Path::new("test.toml"), toml).unwrap_or_else(|err| panic!("config: {err}"))
}

/// Starts a proxy from config text. `listen` should be `127.0.0.1:0`.
pub async fn spawn_proxy(toml: &str) -> TestProxy {
    spawn_proxy_with(config(toml)).await
}

/// Starts a proxy from a compiled config, with deviation records captured in memory.
pub async fn spawn_proxy_with(config: Config) -> TestProxy {
    let sink = SharedSink::default();
    let log = Arc::new(DeviationLog::with_writer(Box::new(sink.clone())).expect("deviation log"));
    spawn_proxy_with_log(config, log, sink).await
}

/// Starts a proxy that writes its deviation records to `log` (a custom or slow sink).
/// `records()` reads `sink`, so pass the sink behind `log` when it is a [`SharedSink`].
pub async fn spawn_proxy_with_log(
    config: Config,
    log: Arc<DeviationLog>,
    sink: SharedSink,
) -> TestProxy {
    let server = Server::bind_with(&config, log.clone())
        .await
        .expect("bind proxy");
    let addr = server.local_addrs()[0];
    let admin = server.admin_addr();
    let tls = server.tls_addrs().first().copied();
    let live = server.live();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    TestProxy {
        addr,
        admin,
        tls,
        live,
        log,
        sink,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// A minimal config: one upstream at `upstream`, one route for `/`, extra TOML appended.
pub fn simple_config(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "10s"

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
connect_timeout = "2s"
response_timeout = "10s"

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
{extra}
"#
    )
}

/// `config` with `chunked_requests = true` on every upstream, for tests of request bodies
/// that stream chunked to the service.
pub fn streaming_chunked(config: &str) -> String {
    config.replace("\ntargets = [", "\nchunked_requests = true\ntargets = [")
}

/// A complete response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

pub type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, UpBody>;

/// An HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// Sends `method url` with `headers` and `body` on a fresh HTTP/1.1 client.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    send_with(&client(), method, url, headers, body.to_owned()).await
}

pub async fn get(url: &str) -> Reply {
    send("GET", url, &[], "").await
}

pub async fn send_with(
    client: &TestClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let mut request = Request::builder()
        .method(method)
        .uri(url)
        .body(full(body))
        .expect("request");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            http::HeaderValue::from_str(value).expect("header value"),
        );
    }
    let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("response within 30s")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("whole body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    }
}

/// Writes `bytes` on a new connection and reads until the peer closes (at most 10 s).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    read_to_close(&mut stream, Duration::from_secs(10)).await
}

/// Reads until EOF, an error, or `limit` passes; returns what arrived.
pub async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `check` every 10 ms until it holds; panics after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Path of the built `restatus` binary, for CLI tests.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_restatus")
}

/// The value of the series whose line starts with `series` (name and labels, in order).
pub fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}
