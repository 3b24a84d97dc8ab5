//! Listeners, per-connection settings and timeouts, and graceful shutdown.

use crate::access::LoggedBody;
use crate::body::{ClientBody, Http2Body};
use crate::config::Config;
use crate::deviation::DeviationLog;
use crate::http1::{self, Ended, Relay};
use crate::idle::{Activity, ActivityIo, Watchdog, WhenWoken, IDLE_TIMEOUT};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::proxy::{self, Connection};
use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

/// Connection settings taken from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub send_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_header_bytes: usize,
    pub max_uri_bytes: usize,
}

impl ConnSettings {
    pub fn from_config(config: &Config) -> Self {
        ConnSettings {
            header_timeout: config.server.header_timeout,
            idle_timeout: config.server.idle_timeout,
            body_timeout: config.server.body_timeout,
            send_timeout: config.server.send_timeout,
            shutdown_grace: config.server.shutdown_grace,
            max_header_bytes: config.server.max_header_bytes,
            max_uri_bytes: config.limits.uri,
        }
    }
}

pub struct Server {
    listeners: Vec<TcpListener>,
    tls_listeners: Vec<TcpListener>,
    admin: Option<TcpListener>,
    live: Arc<Live>,
    settings: ConnSettings,
}

impl Server {
    /// Binds every `server.listen` address (and `[admin]`); fails if any cannot be bound.
    pub async fn bind(config: &Config) -> std::io::Result<Server> {
        let deviations = Arc::new(DeviationLog::start(&config.deviations.sink)?);
        Server::bind_with(config, deviations).await
    }

    /// Binds with a deviation log made by the caller.
    pub async fn bind_with(
        config: &Config,
        deviations: Arc<DeviationLog>,
    ) -> std::io::Result<Server> {
        let mut listeners = Vec::with_capacity(config.server.listen.len());
        for addr in &config.server.listen {
            listeners.push(bind(*addr).await?);
        }
        let mut tls_listeners = Vec::new();
        for addr in config.server.tls.iter().flat_map(|t| &t.listen) {
            tls_listeners.push(bind(*addr).await?);
        }
        let admin = match &config.admin {
            Some(admin) => Some(bind(admin.listen).await?),
            None => None,
        };
        let metrics = Arc::new(Metrics::new());
        Ok(Server {
            listeners,
            tls_listeners,
            admin,
            live: Arc::new(Live::new(config.clone(), deviations, metrics)),
            settings: ConnSettings::from_config(config),
        })
    }

    pub fn deviations(&self) -> Arc<DeviationLog> {
        self.live.deviations.clone()
    }

    /// The live configuration: reload it, reopen the deviation sink, read metrics.
    pub fn live(&self) -> Arc<Live> {
        self.live.clone()
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The HTTPS listeners' addresses.
    pub fn tls_addrs(&self) -> Vec<SocketAddr> {
        self.tls_listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting and lets in-flight requests
    /// finish for up to `shutdown_grace`. The admin listener answers until the end, with
    /// `/readyz` failing while connections drain.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let (drain_tx, drain_rx) = watch::channel(false);
        let admin = self.admin.map(|listener| {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(%addr, "admin listening");
            }
            tokio::spawn(crate::admin::serve(
                listener,
                self.live.clone(),
                stop_rx.clone(),
            ))
        });
        let shared = Arc::new(Shared {
            h2: h2_builder(&self.settings),
            drain: drain_rx,
        });
        let connections = TaskTracker::new();
        let mut accept_tasks = Vec::new();
        let plain = self.listeners.into_iter().map(|l| (l, false));
        let secure = self.tls_listeners.into_iter().map(|l| (l, true));
        for (listener, tls) in plain.chain(secure) {
            if let Ok(addr) = listener.local_addr() {
                let scheme = if tls { "https" } else { "http" };
                tracing::info!(%addr, scheme, "listening");
            }
            let ctx = AcceptContext {
                live: self.live.clone(),
                shared: shared.clone(),
                connections: connections.clone(),
                tls,
            };
            accept_tasks.push(tokio::spawn(accept_loop(listener, ctx)));
        }
        shutdown.await;
        self.live.start_draining();
        let grace = self.live.proxy().settings.shutdown_grace;
        tracing::info!(
            ?grace,
            "shutting down: no new connections, finishing in-flight requests"
        );
        for task in accept_tasks {
            task.abort();
            let _ = task.await;
        }
        let _ = drain_tx.send(true);
        connections.close();
        match tokio::time::timeout(grace, connections.wait()).await {
            Ok(()) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("shutdown grace period over; closing remaining connections"),
        }
        let _ = stop_tx.send(true);
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        let deviations = self.live.deviations.clone();
        let flushed =
            tokio::task::spawn_blocking(move || deviations.flush(Duration::from_secs(5))).await;
        if !matches!(flushed, Ok(true)) {
            tracing::warn!("deviation records may not all have been written");
        }
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}

struct AcceptContext {
    live: Arc<Live>,
    shared: Arc<Shared>,
    connections: TaskTracker,
    /// Connections on this listener start with a TLS handshake.
    tls: bool,
}

/// What every connection of the server shares.
struct Shared {
    h2: http2::Builder<TokioExecutor>,
    /// Turns true when the server shuts down: connections finish the request in progress
    /// and close (HTTP/2: GOAWAY).
    drain: watch::Receiver<bool>,
}

/// Concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
pub const H2_MAX_STREAMS: u32 = 256;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_RESETS: usize = 1024;

fn h2_builder(settings: &ConnSettings) -> http2::Builder<TokioExecutor> {
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // Bounds the decoded header block, so an endless CONTINUATION sequence ends the
        // connection instead of growing a buffer. With room above `max_header_bytes`, as for
        // HTTP/1.1 (`max_head`): a head over the limit reaches the proxy's own check, which
        // logs, counts and answers it through the route's profile; one far beyond it is
        // refused here with a bare 431.
        .max_header_list_size(max_head(settings) as u32)
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): streams the client resets before they are served
        // count against this; past it the connection gets GOAWAY (ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // Streams this side had to reset for protocol errors, likewise bounded.
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    builder
}

/// The largest HTTP/1.1 request head read. The proxy checks the limits itself, so that the
/// route's profile normalizes its 414 and 431; the parser, with room to spare, only stops
/// heads far beyond them (with a bare 431).
fn max_head(settings: &ConnSettings) -> usize {
    (settings.max_header_bytes * 2 + settings.max_uri_bytes).max(16 << 10)
}

async fn accept_loop(listener: TcpListener, ctx: AcceptContext) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    peer,
                    https: ctx.tls,
                    owner: Arc::default(),
                };
                let (live, shared) = (ctx.live.clone(), ctx.shared.clone());
                if ctx.tls {
                    ctx.connections.spawn(serve_tls(stream, conn, live, shared));
                } else {
                    ctx.connections
                        .spawn(serve_connection(stream, conn, live, shared, false));
                }
            }
            Err(err) => {
                // EMFILE and friends: back off briefly instead of spinning on the error.
                tracing::warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TLS handshake, cut off at `header_timeout`, then the connection as usual. Failures
/// are logged at debug and counted; they never touch other connections.
async fn serve_tls(stream: TcpStream, conn: Connection, live: Arc<Live>, shared: Arc<Shared>) {
    let proxy = live.proxy();
    let Some(config) = proxy.tls.clone() else {
        tracing::debug!(peer = %conn.peer, "TLS is no longer configured; closing");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(proxy.settings.header_timeout, acceptor.accept(stream));
    drop(proxy);
    match handshake.await {
        Ok(Ok(stream)) => {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            serve_connection(stream, conn, live, shared, h2).await
        }
        Ok(Err(err)) => {
            live.metrics.tls_handshake_failed();
            tracing::debug!(peer = %conn.peer, error = %err, "TLS handshake failed");
        }
        Err(_) => {
            live.metrics.tls_handshake_failed();
            tracing::debug!(peer = %conn.peer, "TLS handshake not finished within header_timeout");
        }
    }
}

/// A connection that can be closed with a reset (RST) instead of a FIN.
trait Reset {
    fn reset_on_close(&self);
}

impl Reset for TcpStream {
    fn reset_on_close(&self) {
        // SO_LINGER of zero: close sends RST and drops what is unsent (RFC 9293 §3.6.1).
        if let Err(err) = self.set_zero_linger() {
            tracing::debug!(error = %err, "cannot set SO_LINGER to reset the connection");
        }
    }
}

impl Reset for tokio_rustls::server::TlsStream<TcpStream> {
    fn reset_on_close(&self) {
        self.get_ref().0.reset_on_close();
    }
}

/// A request head the HTTP/1 parser refused (smuggling attempts and broken clients among
/// them): the client got a bare status; operators get a log line and a count.
fn refused_head(live: &Live, peer: std::net::SocketAddr, err: &http1::HeadError) {
    live.metrics.answered("-", err.kind(), None);
    let status = err.status().as_u16();
    tracing::info!(%peer, status, "refused a request head: {}", err.reason());
}

/// Serves one connection, HTTP/1.1 or (negotiated by ALPN, or by its preface) HTTP/2, until
/// it ends or its watchdog closes it.
async fn serve_connection<I>(
    io: I,
    conn: Connection,
    live: Arc<Live>,
    shared: Arc<Shared>,
    h2: bool,
) where
    I: AsyncRead + AsyncWrite + Reset + Unpin + Send + 'static,
{
    let settings = live.proxy().settings;
    let watchdog = Watchdog::new(&settings);
    let io = ActivityIo::new(io, watchdog.activity());
    let _open = live.metrics.connection();
    let activity = watchdog.activity();
    let served = async {
        if h2 {
            let io = Prefixed::new(Bytes::new(), io);
            return Box::pin(serve_h2(io, conn.clone(), &live, &activity, &shared)).await;
        }
        let handler = |request, relay| respond(&live, &activity, conn.clone(), request, relay);
        let drain = shared.drain.clone();
        match http1::serve(io, max_head(&settings), drain, handler).await {
            Ended::Http2 { io, read } => {
                // Boxed, like the HTTP/2 branch above: an HTTP/1.1 connection does not carry
                // room for an HTTP/2 connection's state.
                let io = Prefixed::new(read, io);
                Box::pin(serve_h2(io, conn.clone(), &live, &activity, &shared)).await;
            }
            Ended::Aborted(io) => io.get_ref().reset_on_close(),
            Ended::Refused(err) => refused_head(&live, conn.peer, &err),
            Ended::Closed => {}
        }
    };
    let peer = conn.peer;
    let expired = watchdog.expired();
    tokio::pin!(expired, served);
    tokio::select! {
        // The watchdog first: what it marks (a slow request's hang-up to watch for) is seen
        // by the connection in the same wake-up.
        biased;
        reason = WhenWoken::new(expired.as_mut()) => {
            tracing::debug!(%peer, reason, "closing connection");
            if reason == IDLE_TIMEOUT && activity.is_h2() {
                // RFC 9113 §6.8: a GOAWAY tells the client that no stream it opens from now
                // on will be served, so that it retries on a new connection.
                activity.ask_to_go_away();
                let _ = tokio::time::timeout(GO_AWAY_GRACE, served).await;
            }
        }
        () = served.as_mut() => {}
    }
}

/// How long an idle HTTP/2 connection is given to send its GOAWAY before it is dropped.
const GO_AWAY_GRACE: Duration = Duration::from_secs(1);

/// Runs one request through the proxy, on the config in force when it arrived (even across
/// a reload). Boxed, so that an idle connection holds no request's state.
fn respond(
    live: &Live,
    activity: &Arc<Activity>,
    conn: Connection,
    request: Request<ClientBody>,
    relay: Option<Arc<Relay>>,
) -> Pin<Box<impl Future<Output = Response<LoggedBody>> + Send>> {
    let guard = activity.request_started();
    // Mapped rather than awaited in an `async` block, which would hold the request a second
    // time in the boxed state.
    Box::pin(proxy::handle(live.proxy(), conn, request, relay).map(
        move |response| match response {
            Ok(response) => response.map(|body| body.with_guard(guard)),
            Err(never) => match never {},
        },
    ))
}

async fn serve_h2<I>(
    io: Prefixed<I>,
    conn: Connection,
    live: &Arc<Live>,
    activity: &Arc<Activity>,
    shared: &Shared,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    activity.speaks_h2();
    let go_away = activity.clone();
    let (live, activity, peer) = (live.clone(), activity.clone(), conn.peer);
    let service = service_fn(move |request: Request<Incoming>| {
        let request = request.map(|body| ClientBody::Http2(Http2Body::new(body)));
        // hyper's HTTP/2 server has no way to send an interim response other than `100`.
        let response = respond(&live, &activity, conn.clone(), request, None);
        async move { Ok::<_, Infallible>(response.await) }
    });
    let served = shared.h2.serve_connection(TokioIo::new(io), service);
    tokio::pin!(served);
    let mut drain = shared.drain.clone();
    let draining = async {
        tokio::select! {
            _ = drain.wait_for(|draining| *draining) => {}
            () = go_away.asked_to_go_away() => {}
        }
    };
    let finished = tokio::select! {
        result = served.as_mut() => Some(result),
        () = draining => None,
    };
    let result = match finished {
        Some(result) => result,
        None => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// A stream with bytes already read from it put back in front.
struct Prefixed<I> {
    read: Bytes,
    io: I,
}

impl<I> Prefixed<I> {
    fn new(read: Bytes, io: I) -> Self {
        Prefixed { read, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
