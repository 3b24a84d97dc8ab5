//! The upstream leg: HTTP/1.1 over pooled keep-alive connections, driven inside the request's
//! own task. No connection task and no channel sit between the request and its upstream
//! connection, so a request costs no extra wake-ups; the response body, once returned, owns
//! the connection and gives it back to the pool when the body has been read to its end.

mod body;
mod exchange;
mod io;
mod limit;

pub use crate::wire::BodyError;
pub use body::UpstreamBody;
pub use exchange::{send, DroppedLines, FramedTwice, Outgoing, SendError, Unsent};

use crate::config::{ReuseAfterBody, Target, UpstreamConfig};
use bytes::BytesMut;
use http::uri::Scheme;
use io::{IdleState, Io};
use limit::{Limit, Room, Slot};
use rustls::pki_types::ServerName;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// Read buffers start at this size and double while reads fill them, up to `MAX_READ`: a
/// response streamed to a client that reads slowly holds one read ahead, so it is kept small
/// (256 KiB cost 560 KiB per such client, and streamed no faster: docs/performance.md).
const FIRST_READ: usize = 8 << 10;
const MAX_READ: usize = 64 << 10;
/// A pooled connection keeps a read buffer up to this large; a larger one is let go.
const KEPT_BUFFER: usize = 16 << 10;

/// One connection to an upstream target.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    next_read: usize,
    /// The connection served a request before: a failure before any response byte may mean
    /// the upstream closed it while it sat idle.
    reused: bool,
    /// Its last request carried a body.
    carried_body: bool,
    /// The client connection it is kept for, once it carried a body under
    /// `reuse_after_body = "same_client"`; no other client's request goes on it.
    owner: Option<Weak<Owner>>,
    /// Counts it against its target's `max_connections` while it is open.
    slot: Option<Slot>,
}

/// Stands for one client connection, which holds it while it lasts. The upstream
/// connections kept for that client (`reuse_after_body = "same_client"`) are idle here, not
/// in their pools, so that only its requests find them and they close when it goes.
#[derive(Default)]
pub struct Owner {
    kept: Mutex<Vec<Kept>>,
    /// Whether `kept` may hold any: most clients never have one, and pay no lock.
    any: AtomicBool,
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Owner")
    }
}

/// An idle connection kept for a client, and the pool (its `id`) of its target.
struct Kept {
    pool: u64,
    /// Gone once the pool is (a reload replaced its upstream): the connection can serve no
    /// request any more.
    alive: Weak<()>,
    idle: Idle,
}

/// Connections kept for one client connection at most; a client that needs more at once
/// (concurrent HTTP/2 streams) opens them, and the extra ones are closed after use.
const KEPT_PER_CLIENT: usize = 4;

impl Owner {
    /// The most recently kept connection of `pool` that is still fresh.
    fn take(&self, pool: &Pool) -> Option<Conn> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        // Before the lock: connections close after it is released (see `limit`).
        let mut stale = Vec::new();
        let mut kept = self.kept.lock().ok()?;
        while let Some(at) = kept.iter().position(|k| k.alive.strong_count() == 0) {
            stale.push(kept.remove(at).idle);
        }
        while let Some(at) = kept.iter().rposition(|k| k.pool == pool.id) {
            let mut entry = kept.remove(at).idle;
            if pool.fresh(&mut entry) {
                return Some(entry.conn);
            }
            stale.push(entry);
        }
        None
    }

    /// The least recently kept connection of `pool`, taken away to be closed.
    fn give_up(&self, pool: &Pool) -> Option<Conn> {
        let mut kept = self.kept.lock().ok()?;
        let at = kept.iter().position(|k| k.pool == pool.id)?;
        Some(kept.remove(at).idle.conn)
    }

    fn keep(&self, pool: &Pool, conn: Conn) {
        let idle = Idle {
            conn,
            since: Instant::now(),
        };
        // Closed here, after the lock is released (see `limit`).
        drop(self.push(Kept {
            pool: pool.id,
            alive: Arc::downgrade(&pool.alive),
            idle,
        }));
    }

    /// Adds a kept connection; returns the oldest one if it made one too many.
    fn push(&self, entry: Kept) -> Option<Kept> {
        let Ok(mut kept) = self.kept.lock() else {
            return Some(entry);
        };
        let evicted = (kept.len() == KEPT_PER_CLIENT).then(|| kept.remove(0));
        kept.push(entry);
        self.any.store(true, Ordering::Relaxed);
        evicted
    }
}

impl Conn {
    fn new(io: Io) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            next_read: FIRST_READ,
            reused: false,
            carried_body: false,
            owner: None,
            slot: None,
        }
    }

    /// Keeps the connection for `owner`'s requests alone from now on.
    pub fn keep_for(&mut self, owner: &Arc<Owner>) {
        if self.owner.is_none() {
            self.owner = Some(Arc::downgrade(owner));
        }
    }

    /// Reads more bytes into the buffer; `Ok(0)` is the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < self.next_read / 2 {
            self.buf.reserve(self.next_read);
        }
        let spare = self.buf.capacity() - self.buf.len();
        let read =
            tokio_util::io::poll_read_buf(std::pin::Pin::new(&mut self.io), cx, &mut self.buf);
        if let Poll::Ready(Ok(n)) = read {
            // A read that filled all the room asks for a bigger one next time (bulk bodies).
            if n == spare && self.next_read < MAX_READ {
                self.next_read *= 2;
            }
        }
        read
    }
}

/// The idle connections of one target, most recently used last (but for those kept for a
/// client connection, which wait with it: see [`Owner`]).
pub struct Pool {
    /// Tells the pool apart from every other, past ones included (a reload replaces pools).
    id: u64,
    idle: Mutex<Vec<Idle>>,
    max: usize,
    /// How long an idle connection is kept (the upstream's `idle_timeout`).
    timeout: Duration,
    /// A connection that carried a request body may be reused (the upstream's
    /// `reuse_after_body` is not `false`). Turned off for good when the target answers a
    /// request nobody sent on such a connection: it left a body unread and read it as a
    /// request.
    reuse_after_body: AtomicBool,
    /// Such a connection is kept for the client connection whose request it carried.
    same_client: bool,
    /// The upstream's name and the target's address, for logs.
    upstream: String,
    address: String,
    /// The target's `max_connections`, if it has one.
    limit: Option<Arc<Limit>>,
    /// Held while the pool lasts (see [`Kept::alive`]).
    alive: Arc<()>,
}

impl Drop for Pool {
    /// A reload replaced the upstream: the connections kept for clients under its cap are
    /// closed now, so that they do not stay open beside the new pool's and exceed its cap.
    fn drop(&mut self) {
        if let Some(limit) = &self.limit {
            limit.close_kept(self);
        }
    }
}

static NEXT_POOL: AtomicU64 = AtomicU64::new(0);

struct Idle {
    conn: Conn,
    since: Instant,
}

impl Pool {
    /// `address` is the target's, for logs.
    pub fn new(config: &UpstreamConfig, address: String) -> Self {
        let reuse = config.reuse_after_body;
        Pool {
            id: NEXT_POOL.fetch_add(1, Ordering::Relaxed),
            idle: Mutex::new(Vec::new()),
            max: config.idle_connections,
            timeout: config.idle_timeout,
            reuse_after_body: AtomicBool::new(reuse != ReuseAfterBody::Never),
            same_client: reuse == ReuseAfterBody::SameClient,
            upstream: config.name.clone(),
            address,
            limit: config
                .max_connections
                .map(|max| Limit::new(max, config.queue_timeout)),
            alive: Arc::new(()),
        }
    }

    /// The most recently used idle connection that is still open: one kept for `owner` if
    /// there is one, else a shared one.
    pub fn take(&self, owner: &Owner) -> Option<Conn> {
        if let Some(conn) = owner.take(self) {
            return Some(conn);
        }
        // Before the lock: connections close after it is released (see `limit`).
        let mut stale = Vec::new();
        self.take_shared(&mut stale)
    }

    /// The most recently used shared idle connection that is still open; the ones found
    /// closed or idle too long go to `stale`.
    #[inline(always)]
    fn take_shared(&self, stale: &mut Vec<Idle>) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(mut entry) = idle.pop() {
            if self.fresh(&mut entry) {
                return Some(entry.conn);
            }
            stale.push(entry);
        }
        None
    }

    /// A new connection to `target`; under `max_connections`, once it is this request's
    /// turn (which may bring an idle connection instead).
    pub async fn connect(
        &self,
        connector: &Connector,
        target: &Target,
    ) -> Result<Conn, ConnectError> {
        let Some(limit) = &self.limit else {
            return connector.connect(target).await;
        };
        match limit.room(self).await? {
            Room::Idle(conn) => Ok(conn),
            Room::New(slot) => {
                let mut conn = connector.connect(target).await?;
                conn.slot = Some(slot);
                Ok(conn)
            }
        }
    }

    /// Whether a request would get a connection at once (always, without
    /// `max_connections`).
    pub fn has_room(&self) -> bool {
        self.limit.as_ref().is_none_or(|limit| limit.has_room(self))
    }

    /// Whether a shared connection is idle (it may have been closed meanwhile).
    fn has_idle(&self) -> bool {
        self.idle.lock().is_ok_and(|idle| !idle.is_empty())
    }

    /// Requests waiting for a connection under `max_connections`.
    pub fn waiting(&self) -> usize {
        self.limit.as_ref().map_or(0, |limit| limit.waiting())
    }

    /// Whether a connection that carried a request body may be reused.
    pub fn reuses_after_body(&self) -> bool {
        self.reuse_after_body.load(Ordering::Relaxed)
    }

    /// Whether a connection with a request body is kept for its client connection alone.
    pub fn keeps_for_client(&self) -> bool {
        self.same_client
    }

    /// Whether an idle connection has not been idle too long and can take a request.
    fn fresh(&self, entry: &mut Idle) -> bool {
        entry.since.elapsed() < self.timeout && self.usable(&mut entry.conn)
    }

    /// Whether an idle connection can take a request.
    fn usable(&self, conn: &mut Conn) -> bool {
        match conn.io.idle_state() {
            IdleState::Usable => true,
            IdleState::Closed => false,
            IdleState::Unasked => {
                self.unasked(conn.carried_body);
                false
            }
        }
    }

    /// The target sent bytes nobody asked for on a connection after its response. After a
    /// request with a body they are an answer to that body read as a request (a CL.0
    /// desync): had the next request gone out first, its client would have got that answer.
    /// From then on no connection of this target is reused after a request with a body.
    fn unasked(&self, carried_body: bool) {
        if carried_body && self.reuse_after_body.swap(false, Ordering::Relaxed) {
            tracing::warn!(upstream = %self.upstream, address = %self.address, "the upstream answered a request nobody sent after a request with a body: it may leave bodies unread and read them as requests; connections that carry a body are no longer reused (set reuse_after_body = false to start that way)");
        }
    }

    /// Keeps `conn` for the next request (with its client connection if it is kept for one),
    /// unless `max` connections are idle already. Under `max_connections` it goes to the
    /// oldest waiting request instead, if there is one.
    fn put(&self, mut conn: Conn) {
        conn.reused = true;
        if conn.buf.capacity() > KEPT_BUFFER {
            conn.buf = BytesMut::new();
            conn.next_read = FIRST_READ;
        }
        if let Some(owner) = conn.owner.take() {
            self.keep_for_owner(owner, conn);
            return;
        }
        let Some(limit) = &self.limit else {
            drop(self.add_idle(conn));
            return;
        };
        drop(limit.offer(conn, |conn| self.add_idle(conn)));
    }

    /// Keeps a connection with the client connection it is kept for; closed if that client
    /// is gone, or if a request waits for its slot under `max_connections`.
    fn keep_for_owner(&self, owner: Weak<Owner>, mut conn: Conn) {
        let Some(alive) = owner.upgrade() else {
            return;
        };
        if let Some(limit) = &self.limit {
            if limit.has_waiters() {
                return;
            }
            limit.add_keeper(&owner);
        }
        conn.owner = Some(owner);
        alive.keep(self, conn);
    }

    /// Adds `conn` to the idle connections; returns it if `max` are idle already.
    #[inline(always)]
    fn add_idle(&self, conn: Conn) -> Option<Conn> {
        let Ok(mut idle) = self.idle.lock() else {
            return Some(conn);
        };
        if idle.len() >= self.max {
            return Some(conn);
        }
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
        None
    }

    /// Closes the connections idle too long or closed by the upstream.
    fn prune(&self) {
        // Before the lock: connections close after it is released (see `limit`).
        let mut stale = Vec::new();
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        for mut entry in std::mem::take(&mut *idle) {
            match self.fresh(&mut entry) {
                true => idle.push(entry),
                false => stale.push(entry),
            }
        }
    }
}

/// Closes idle connections in the background while the pools exist, so that a quiet upstream
/// does not keep sockets its side closed long ago. Without a runtime (as in `check`), nothing
/// is started: such pools never get a connection.
pub fn start_pruning(pools: &[Arc<Pool>]) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Some(every) = pools.iter().map(|p| p.timeout / 4).min() else {
        return;
    };
    let pools: Vec<Weak<Pool>> = pools.iter().map(Arc::downgrade).collect();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let mut alive = false;
            for pool in pools.iter().filter_map(Weak::upgrade) {
                pool.prune();
                alive = true;
            }
            if !alive {
                return;
            }
        }
    });
}

/// Why no connection could be made.
#[derive(Debug)]
pub enum ConnectError {
    Refused(std::io::Error),
    Timeout,
    Tls(String),
    /// `max` connections were open and none came free in `waited` (`max_connections`).
    Busy {
        max: usize,
        waited: Duration,
    },
}

/// Makes new connections to the targets of one upstream.
pub struct Connector {
    timeout: Duration,
    tls: Option<tokio_rustls::TlsConnector>,
    /// The name verified instead of the target's host.
    server_name: Option<ServerName<'static>>,
}

impl Connector {
    pub fn new(
        timeout: Duration,
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: Option<ServerName<'static>>,
    ) -> Self {
        let tls = tls.map(|config| {
            let mut config = (*config).clone();
            // The upstream leg speaks HTTP/1.1 only (RFC 7301 ALPN).
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            tokio_rustls::TlsConnector::from(Arc::new(config))
        });
        Connector {
            timeout,
            tls,
            server_name,
        }
    }

    /// TCP (with `TCP_NODELAY`) within the connect timeout, then TLS for `https://` targets.
    pub async fn connect(&self, target: &Target) -> Result<Conn, ConnectError> {
        let https = target.scheme == Scheme::HTTPS;
        let host = target.authority.host();
        let port = target
            .authority
            .port_u16()
            .unwrap_or(if https { 443 } else { 80 });
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let connecting = async {
            match bare.parse::<IpAddr>() {
                Ok(ip) => TcpStream::connect((ip, port)).await,
                Err(_) => TcpStream::connect((bare, port)).await,
            }
        };
        let tcp = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(err)) => return Err(ConnectError::Refused(err)),
            Err(_) => return Err(ConnectError::Timeout),
        };
        let _ = tcp.set_nodelay(true);
        if !https {
            return Ok(Conn::new(Io::Plain(tcp)));
        }
        // The handshake is part of connecting, and bounded by the same timeout.
        match tokio::time::timeout(self.timeout, self.handshake(tcp, bare)).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout),
        }
    }

    async fn handshake(&self, tcp: TcpStream, host: &str) -> Result<Conn, ConnectError> {
        let Some(tls) = &self.tls else {
            return Err(ConnectError::Tls(
                "no TLS settings for an https target".into(),
            ));
        };
        let name = match &self.server_name {
            Some(name) => name.clone(),
            None => ServerName::try_from(host.to_string())
                .map_err(|err| ConnectError::Tls(format!("invalid server name {host}: {err}")))?,
        };
        match tls.connect(name, tcp).await {
            Ok(stream) => Ok(Conn::new(Io::Tls(Box::new(stream)))),
            Err(err) => match tls_error(&err) {
                Some(tls) => Err(ConnectError::Tls(describe_tls(tls))),
                None => Err(ConnectError::Refused(err)),
            },
        }
    }
}

/// A certificate failure in words an operator can act on; rustls prints some of them in
/// Rust's debug notation (`Other(OtherError(CaUsedAsEndEntity))`).
fn describe_tls(err: &rustls::Error) -> String {
    use rustls::CertificateError as Cert;
    let rustls::Error::InvalidCertificate(cert) = err else {
        return err.to_string();
    };
    let why = match cert {
        Cert::UnknownIssuer => "it is not signed by a CA this upstream trusts (see `ca`)",
        Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
            "it is not valid for the name asked for (see `server_name`)"
        }
        Cert::Expired | Cert::ExpiredContext { .. } => "it has expired",
        Cert::NotValidYet | Cert::NotValidYetContext { .. } => "it is not valid yet",
        Cert::BadSignature => "its signature does not verify",
        Cert::Revoked => "it is revoked",
        Cert::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
            "it is a CA certificate used as the server's own; the server needs one issued by that CA"
        }
        _ => return err.to_string(),
    };
    format!("the upstream's certificate was refused: {why}")
}

/// The rustls error inside (possibly nested) io errors. `io::Error::source` skips the error
/// it wraps, so the wrapped errors are looked at directly.
fn tls_error(io: &std::io::Error) -> Option<&rustls::Error> {
    let inner = io.get_ref()?;
    match inner.downcast_ref::<std::io::Error>() {
        Some(nested) => tls_error(nested),
        None => inner.downcast_ref::<rustls::Error>(),
    }
}

impl crate::wire::Fill for Conn {
    fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        Conn::poll_fill(self, cx)
    }

    fn lenient(&self) -> bool {
        true
    }
}
