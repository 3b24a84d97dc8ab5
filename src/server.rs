//! Listeners, per-connection settings and timeouts, and graceful shutdown.

use crate::config::Config;
use crate::deviation::DeviationLog;
use crate::idle::{ActivityIo, Watchdog};
use crate::live::Live;
use crate::metrics::Metrics;
use crate::proxy::{self, Connection};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Connection settings taken from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
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
        let builder = Arc::new(http_builder(&self.settings));
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop_tx, stop_rx) = watch::channel(false);
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
                builder: builder.clone(),
                stop: stop_rx.clone(),
                tls,
            };
            accept_tasks.push(tokio::spawn(accept_loop(listener, ctx, graceful.clone())));
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
        drain(graceful, grace).await;
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

/// Waits for open connections to finish, at most `grace`.
async fn drain(graceful: Arc<GracefulShutdown>, grace: Duration) {
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        tracing::warn!("connections still being accepted; not waiting for them");
        return;
    };
    match tokio::time::timeout(grace, graceful.shutdown()).await {
        Ok(()) => tracing::info!("all connections closed"),
        Err(_) => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
}

struct AcceptContext {
    live: Arc<Live>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
    /// Connections on this listener start with a TLS handshake.
    tls: bool,
}

/// Concurrent HTTP/2 streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS).
pub const H2_MAX_STREAMS: u32 = 256;
const H2_MAX_PENDING_RESETS: usize = 20;
const H2_MAX_LOCAL_RESETS: usize = 1024;

fn http_builder(settings: &ConnSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Idle and header timeouts are kept by the connection watchdog, which can tell an idle
        // keep-alive connection from a slow request head (hyper's own timer cannot).
        .header_read_timeout(None)
        // The proxy checks the limits itself, so that the route's profile normalizes its
        // 414 and 431; hyper's buffer, with room to spare, only stops heads far beyond them
        // (with a bare 431).
        .max_buf_size((settings.max_header_bytes * 2 + settings.max_uri_bytes).max(16 << 10))
        // Likewise for the number of fields: the proxy refuses more than MAX_HEADER_FIELDS
        // itself (a normalized 431); hyper's bare 431 only stops heads far beyond that.
        .max_headers(crate::admit::MAX_HEADER_FIELDS * 4)
        // A client may shut down its sending side once its requests are out (RFC 9112 §9.6);
        // the requests already received are still answered.
        .half_close(true)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Bounds the decoded header block, so an endless CONTINUATION sequence ends the
        // connection instead of growing a buffer.
        .max_header_list_size(settings.max_header_bytes as u32)
        .max_concurrent_streams(H2_MAX_STREAMS)
        // Rapid reset (CVE-2023-44487): streams the client resets before they are served
        // count against this; past it the connection gets GOAWAY (ENHANCE_YOUR_CALM).
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        // Streams this side had to reset for protocol errors, likewise bounded.
        .max_local_error_reset_streams(H2_MAX_LOCAL_RESETS);
    builder
}

async fn accept_loop(
    listener: TcpListener,
    mut ctx: AcceptContext,
    graceful: Arc<GracefulShutdown>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = ctx.stop.changed() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let conn = Connection {
                    peer,
                    https: ctx.tls,
                };
                let (live, builder) = (ctx.live.clone(), ctx.builder.clone());
                let watcher = graceful.watcher();
                if ctx.tls {
                    tokio::spawn(serve_tls(stream, conn, live, builder, watcher));
                } else {
                    tokio::spawn(serve_connection(stream, conn, live, builder, watcher));
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
async fn serve_tls(
    stream: TcpStream,
    conn: Connection,
    live: Arc<Live>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) {
    let proxy = live.proxy();
    let Some(config) = proxy.tls.clone() else {
        tracing::debug!(peer = %conn.peer, "TLS is no longer configured; closing");
        return;
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let handshake = tokio::time::timeout(proxy.settings.header_timeout, acceptor.accept(stream));
    drop(proxy);
    match handshake.await {
        Ok(Ok(stream)) => serve_connection(stream, conn, live, builder, watcher).await,
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

async fn serve_connection<I>(
    io: I,
    conn: Connection,
    live: Arc<Live>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let settings = live.proxy().settings;
    let watchdog = Watchdog::new(settings.header_timeout, settings.idle_timeout);
    let io = TokioIo::new(ActivityIo::new(io, watchdog.activity()));
    let _open = live.metrics.connection();
    let activity = watchdog.activity();
    let service = service_fn(move |request| {
        let guard = activity.request_started();
        // Each request runs on the config in force when it arrived, even across a reload.
        let proxy = live.proxy();
        // Boxed: hyper keeps room for one in-flight future per connection for the connection's
        // whole life, so an idle keep-alive connection would otherwise hold a request's state.
        Box::pin(async move {
            let response = proxy::handle(proxy, conn, request).await;
            response.map(|r| r.map(|body| body.with_guard(guard)))
        })
    });
    let served = watcher.watch(builder.serve_connection(io, service).into_owned());
    let peer = conn.peer;
    tokio::select! {
        result = served => {
            if let Err(err) = result {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        }
        reason = watchdog.expired() => {
            tracing::debug!(%peer, reason, "closing connection");
        }
    }
}
