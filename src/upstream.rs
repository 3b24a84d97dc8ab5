//! Upstreams: a pooled keep-alive client per upstream, round-robin over its targets, and the
//! mapping of every way a request to it can fail onto a [`ProxyError`].

use crate::body::{BodyTimeout, BodyTooLarge, Budget, BudgetSpent, ForwardBody, ReadAhead, Source};
use crate::client::{
    self, Conn, ConnectError, Connector, Outgoing, Owner, Pool, SendError, Unsent, UpstreamBody,
};
use crate::config::{ExpectMode, HostMode, Target, UpstreamConfig};
use crate::expect::{BodyWithheld, Hold, Interim};
use crate::headers::Added;
use crate::respond::ProxyError;
use futures_util::FutureExt;
use http::header::{EXPECT, HOST, TRAILER};
use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Response, Version};
use http_body::Body;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

pub struct Upstream {
    pub config: Arc<UpstreamConfig>,
    /// `config.name`, shared with the deviation records.
    name: Arc<str>,
    connector: Connector,
    /// Idle connections, one pool per target.
    pools: Vec<Arc<Pool>>,
    next: AtomicUsize,
    /// Per target: its latest response was HTTP/1.0, so it cannot take part in 100-continue.
    http10: Vec<AtomicBool>,
    /// Per target: it has answered at least once, so `http10` says what it speaks.
    heard: Vec<AtomicBool>,
    /// Per target: it refused `Expect: 100-continue` with 417, so restatus answers it itself.
    refuses_expect: Vec<AtomicBool>,
    /// The memory request bodies read whole may take, shared by every upstream.
    held: Arc<Budget>,
}

/// The head of a request that goes upstream, already rewritten by the proxy. The caller
/// keeps it while the request is sent (only the body is given away), so that the request's
/// state holds it once.
pub struct OutboundRequest {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub headers: HeaderMap,
    /// This hop's forwarding fields the client did not send, written after `headers`.
    pub added: Added,
    /// Interim responses of this request; a held body waits on it.
    pub interim: Arc<Interim>,
    /// The client connection the request came on (see `reuse_after_body`).
    pub owner: Arc<Owner>,
}

impl OutboundRequest {
    /// The head as it goes to `target`.
    fn outgoing<'a>(&'a self, target: &'a Target) -> Outgoing<'a> {
        Outgoing {
            method: &self.method,
            path: &self.path_and_query,
            headers: &self.headers,
            added: &self.added,
            host: &target.host_header,
        }
    }
}

impl Upstream {
    /// `held` bounds the memory of the bodies it reads whole (see `limits.held_bodies`).
    pub fn new(config: Arc<UpstreamConfig>, held: Arc<Budget>) -> Self {
        let tls = config.tls.as_ref();
        let connector = Connector::new(
            config.connect_timeout,
            tls.map(|t| t.config.clone()),
            tls.and_then(|t| t.server_name.clone()),
        );
        let pools: Vec<Arc<Pool>> = config
            .targets
            .iter()
            .map(|target| Arc::new(Pool::new(&config, target.authority.to_string())))
            .collect();
        client::start_pruning(&pools);
        Upstream {
            name: config.name.as_str().into(),
            http10: config
                .targets
                .iter()
                .map(|_| AtomicBool::default())
                .collect(),
            heard: config
                .targets
                .iter()
                .map(|_| AtomicBool::default())
                .collect(),
            refuses_expect: config
                .targets
                .iter()
                .map(|_| AtomicBool::default())
                .collect(),
            config,
            held,
            connector,
            pools,
            next: AtomicUsize::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Target `index`, or under `max_connections`, when it has all its connections busy,
    /// the next one that has room: a request waits only when every target is busy.
    fn with_room(&self, index: usize) -> usize {
        if self.config.max_connections.is_none() {
            return index;
        }
        let count = self.pools.len();
        (0..count)
            .map(|step| (index + step) % count)
            .find(|&at| self.pools[at].has_room())
            .unwrap_or(index)
    }

    /// Requests waiting for a connection to one of its targets (`max_connections`).
    pub fn queued(&self) -> usize {
        self.pools.iter().map(|pool| pool.waiting()).sum()
    }

    /// Whether `Expect: 100-continue` may go upstream; a target that last answered HTTP/1.0
    /// still gets none (see `attempts`).
    pub fn forwards_expect(&self) -> bool {
        self.config.expect == ExpectMode::Forward
    }

    /// Remembers whether target `index` answered HTTP/1.0 this time; the next response
    /// corrects it, so one odd answer does not change the target for good.
    fn note_version(&self, index: usize, version: Version) {
        let http10 = version == Version::HTTP_10;
        // Read first: a store on every response would bounce the line between cores.
        if !self.heard[index].load(Ordering::Relaxed) {
            self.heard[index].store(true, Ordering::Relaxed);
        }
        let flag = &self.http10[index];
        if flag.load(Ordering::Relaxed) != http10 && flag.swap(http10, Ordering::Relaxed) != http10
        {
            let target = &self.config.targets[index].authority;
            // Debug: a balancer over mixed backends would flip it on every request.
            match http10 {
                true => {
                    tracing::debug!(upstream = %self.config.name, address = %target, "target answers HTTP/1.0: Expect is answered locally for it")
                }
                false => {
                    tracing::debug!(upstream = %self.config.name, address = %target, "target answers HTTP/1.1 again: Expect goes to it")
                }
            }
        }
    }

    /// How much of a body of unknown length is read ahead (see [`ForwardBody::settle`]):
    /// more while a target has not answered yet, so it is not known to read chunked (RFC 9112
    /// §6.1), bounded all the same, as that much is held in memory.
    fn read_ahead(&self) -> usize {
        match self.all_heard() {
            true => READ_AHEAD,
            false => READ_AHEAD_UNHEARD,
        }
    }

    /// Every target has answered at least once, so what each speaks is known.
    fn all_heard(&self) -> bool {
        self.heard.iter().all(|heard| heard.load(Ordering::Relaxed))
    }

    /// RFC 9110 §10.1.1: a proxy that believes, from past interaction, that the next hop
    /// speaks only HTTP/1.0 (or refuses the expectation) may answer `100` itself; the body
    /// then flows without waiting.
    fn answer_expect_locally(&self, index: usize, outbound: &mut OutboundRequest, whole: bool) {
        // A body read whole before it goes (one of unknown length to a service that takes no
        // chunked body) cannot wait for the service's `100`: restatus answers for it.
        let local = self.http10[index].load(Ordering::Relaxed)
            || self.refuses_expect[index].load(Ordering::Relaxed)
            || whole;
        if outbound.interim.is_held() && local {
            outbound.headers.remove(EXPECT);
            outbound.interim.release_locally();
        }
    }

    /// Sends the request to the next target in turn, moving on to the following target when
    /// a connection is refused, and waits at most `response_timeout` for the response head (see `client::send`).
    ///
    /// Not an `async fn` (nor is `attempts`): one keeps its arguments twice in its state.
    pub fn send<'a>(
        &'a self,
        outbound: &'a mut OutboundRequest,
        body: Source,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + 'a {
        // Mapped: an `async` block awaiting the attempts would hold them twice.
        self.attempts(outbound, body).map(move |result| {
            result.map(|(index, response)| {
                self.note_version(index, response.version());
                response
            })
        })
    }

    fn attempts<'a>(
        &'a self,
        outbound: &'a mut OutboundRequest,
        body: Source,
    ) -> impl Future<Output = Result<(usize, Response<UpstreamBody>), ProxyError>> + 'a {
        let replayable = is_replayable(&outbound.method, &body);
        let hold = outbound
            .interim
            .is_held()
            .then(|| Hold::new(outbound.interim.clone(), self.config.expect_timeout));
        let mut body = ForwardBody::new(body).held(hold);
        let timeout = self.config.response_timeout;
        async move {
            if outbound.interim.is_held() && body.unknown_length() && !self.all_heard() {
                // RFC 9110 §10.1.1 lets a proxy answer `100` itself for a server it believes
                // speaks only HTTP/1.0. One not heard from yet may; a body it would read as
                // none (chunked) must not go to it, so the body is read first, the
                // expectation answered here, on the first requests only.
                outbound.headers.remove(EXPECT);
                outbound.interim.release_locally();
            }
            // Without chunked requests the body is read whole below, within `held_bodies`.
            if self.config.chunked_requests && body.unsettled() {
                // Boxed: most bodies have a length, and skip it.
                body = Box::pin(body.settle(ReadAhead::Upto(self.read_ahead())))
                    .await
                    .map_err(|err| body_error(&*err))?;
            }
            let targets = &self.config.targets;
            let first = self.with_room(self.next.fetch_add(1, Ordering::Relaxed) % targets.len());
            for tried in 0..targets.len() {
                let index = (first + tried) % targets.len();
                let target = &targets[index];
                if self.config.host == HostMode::Target {
                    outbound.headers.insert(HOST, target.host_header.clone());
                }
                // RFC 9112 §6.1: a request may not go chunked to a server not known to read
                // HTTP/1.1; one that last answered HTTP/1.0 would read no body at all.
                let chunked =
                    self.config.chunked_requests && !self.http10[index].load(Ordering::Relaxed);
                self.answer_expect_locally(index, outbound, !chunked && body.unknown_length());
                // Read before a connection is taken, so that no pooled one idles meanwhile.
                if !chunked && body.unknown_length() {
                    body = Box::pin(body.settle(ReadAhead::Whole(&self.held)))
                        .await
                        .map_err(|err| body_error(&*err))?;
                    // RFC 9110 §6.6.2: the trailers it announces are dropped with the length.
                    outbound.headers.remove(TRAILER);
                }
                let pool = &self.pools[index];
                let mut conn = match pool.take(&outbound.owner) {
                    Some(conn) => conn,
                    // Boxed: the connect and TLS handshake state is large, and most requests find
                    // a pooled connection.
                    None => match Box::pin(pool.connect(&self.connector, target)).await {
                        Ok(conn) => conn,
                        Err(ConnectError::Refused(err)) if tried + 1 < targets.len() => {
                            tracing::debug!(upstream = %self.config.name, address = %target.authority, error = %err, "connect refused, trying next target");
                            continue;
                        }
                        Err(err) => return Err(connect_error(err)),
                    },
                };
                keep_for_client(pool, &mut conn, &body, &outbound.owner);
                let went_chunked = chunked && body.unknown_length();
                let request = outbound.outgoing(target);
                let interim = &outbound.interim;
                return match client::send(conn, &request, body, interim, pool, timeout).await {
                    Ok(response) if went_chunked && response.version() == Version::HTTP_10 => {
                        Err(self.unread_chunked(index))
                    }
                    Ok(response) => Ok((index, response)),
                    Err((err, reused)) if replayable && reused && is_stale(&err) => {
                        // A pooled connection the upstream closed while idle fails the request
                        // before any response byte. RFC 9110 §9.2.2 allows retrying an idempotent
                        // request then; only one without a body is retried, once, on a new
                        // connection, so no request body is ever sent twice.
                        tracing::debug!(upstream = %self.config.name, "connection closed before the response head; retrying the idempotent request once");
                        // Boxed like the first connect: every request's future would otherwise
                        // carry room for it.
                        let conn = Box::pin(pool.connect(&self.connector, target))
                            .await
                            .map_err(connect_error)?;
                        client::send(conn, &request, ForwardBody::empty(), interim, pool, timeout)
                            .await
                            .map(|response| (index, response))
                            .map_err(|(err, _)| self.send_error(err))
                    }
                    Err((SendError::ExpectRefused(Unsent(body)), _)) => {
                        // Boxed: a second send's state, for a rare legacy answer.
                        Box::pin(self.without_expect(index, outbound, *body)).await
                    }
                    Err((err, _)) => Err(self.send_error(err)),
                };
            }
            Err(ProxyError::UpstreamConnect)
        }
    }

    /// A body longer than the read-ahead went chunked to a target not heard from since it
    /// last answered HTTP/1.1, and it answered HTTP/1.0: RFC 9112 §6.1 does not let it be
    /// taken to read chunked, and a legacy one reads no body at all and answers as if there
    /// were none. Its answer is not relayed as a success; the client gets a 502 and can send
    /// again, and the next body goes to the target whole, with a length.
    fn unread_chunked(&self, index: usize) -> ProxyError {
        self.note_version(index, Version::HTTP_10);
        let target = &self.config.targets[index].authority;
        tracing::warn!(upstream = %self.config.name, address = %target, "target answered HTTP/1.0 to a request whose body went chunked, which it cannot have read: the client gets a 502, and bodies go to it with a length from now on (set chunked_requests = false to start that way)");
        ProxyError::UpstreamInvalid(
            "answered HTTP/1.0 to a chunked request body, which it cannot have read",
        )
    }

    /// RFC 9110 §10.1.1: a client (restatus, here) that gets a 417 to a request with
    /// `100-continue` should repeat it without the expectation. Its body was held, so none of
    /// it went out; the client gets restatus's own `100` as the body is read, and the target
    /// gets no `Expect` from now on.
    async fn without_expect(
        &self,
        index: usize,
        outbound: &mut OutboundRequest,
        body: ForwardBody,
    ) -> Result<(usize, Response<UpstreamBody>), ProxyError> {
        let target = &self.config.targets[index];
        if !self.refuses_expect[index].swap(true, Ordering::Relaxed) {
            tracing::info!(upstream = %self.config.name, address = %target.authority, "target answered 417 to Expect: 100-continue; the request goes again without it, and restatus answers Expect for this target from now on");
        }
        outbound.headers.remove(EXPECT);
        outbound.interim.refused();
        let pool = &self.pools[index];
        let mut conn = match pool.take(&outbound.owner) {
            Some(conn) => conn,
            None => pool
                .connect(&self.connector, target)
                .await
                .map_err(connect_error)?,
        };
        keep_for_client(pool, &mut conn, &body, &outbound.owner);
        let request = outbound.outgoing(target);
        let timeout = self.config.response_timeout;
        client::send(conn, &request, body, &outbound.interim, pool, timeout)
            .await
            .map(|response| (index, response))
            .map_err(|(err, _)| self.send_error(err))
    }

    fn send_error(&self, err: SendError) -> ProxyError {
        tracing::debug!(upstream = %self.config.name, error = ?err, "upstream request failed");
        match err {
            SendError::Closed { .. } => ProxyError::UpstreamReset,
            SendError::Invalid(why) => ProxyError::UpstreamInvalid(why),
            SendError::Body(err) => body_error(&*err),
            SendError::Timeout => ProxyError::UpstreamTimeout,
            // Only a request still holding its body for `100` can get it, and the one sent
            // again has no `Expect`.
            SendError::ExpectRefused(_) => {
                ProxyError::UpstreamInvalid("417 to a request without Expect")
            }
        }
    }
}

/// Under `reuse_after_body = "same_client"`, a connection that carries a body goes back to
/// the pool for its client connection alone: should the service leave the body unread and
/// answer it as a request, only that client can get the answer.
fn keep_for_client(pool: &Pool, conn: &mut Conn, body: &ForwardBody, owner: &Arc<Owner>) {
    if pool.keeps_for_client() && !body.is_end_stream() {
        conn.keep_for(owner);
    }
}

/// A body of unknown length that ends within this many bytes goes upstream with a
/// `Content-Length` (see [`ForwardBody::settle`]): most request bodies of a REST service do,
/// and a legacy server that cannot read chunked requests reads them.
const READ_AHEAD: usize = 64 << 10;
/// The same for a target that has not answered yet (after a start or a reload), which may
/// speak only HTTP/1.0 and would read a chunked body as none.
const READ_AHEAD_UNHEARD: usize = 1 << 20;

/// A safe method (RFC 9110 §9.2.1) with no body: it may be sent again.
fn is_replayable(method: &Method, body: &Source) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) && body.is_end_stream()
}

/// Nothing at all came back: what a connection closed while idle looks like.
fn is_stale(err: &SendError) -> bool {
    matches!(
        err,
        SendError::Closed {
            answered: false,
            ..
        }
    )
}

fn connect_error(err: ConnectError) -> ProxyError {
    match err {
        ConnectError::Refused(_) => ProxyError::UpstreamConnect,
        ConnectError::Timeout => ProxyError::UpstreamConnectTimeout,
        ConnectError::Tls(message) => ProxyError::UpstreamTls(message),
        ConnectError::Busy { max, waited } => ProxyError::UpstreamBusy { max, waited },
    }
}

/// The failure of the request body, as the proxy reports it.
fn body_error(err: &(dyn std::error::Error + Send + Sync + 'static)) -> ProxyError {
    if err.downcast_ref::<BodyTimeout>().is_some() {
        return ProxyError::BodyTimeout;
    }
    if let Some(too_large) = err.downcast_ref::<BodyTooLarge>() {
        return ProxyError::BodyTooLarge {
            limit: too_large.limit,
        };
    }
    if err.downcast_ref::<BodyWithheld>().is_some() {
        return ProxyError::UpstreamReset;
    }
    if let Some(spent) = err.downcast_ref::<BudgetSpent>() {
        // Worth an operator's eye: the limit may be too low for the traffic, or someone is
        // sending many large uploads at once.
        tracing::warn!(
            limit = spent.0,
            "request bodies read whole reached limits.held_bodies: the request gets 503"
        );
        return ProxyError::BodiesHeld { limit: spent.0 };
    }
    ProxyError::client_body(err)
}
