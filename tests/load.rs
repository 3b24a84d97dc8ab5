//! Load and lifecycle: many connections at once, a sustained mix of requests where rules fire,
//! and a graceful shutdown under load. The proxy, its upstream and the clients all run in this
//! process, on 127.0.0.1.
//!
//! By default each test runs a short form fit for CI (1,000 connections, a 5 s run). With
//! `RESTATUS_SOAK=1` they run the long form (10,000 connections, a 60 s run, heavier load
//! around the shutdown); `bench/soak` runs that in release mode and prints the figures:
//!
//! ```sh
//! RESTATUS_SOAK=1 cargo test --release --test load -- --nocapture --test-threads=1
//! ```
//!
//! The tests in this file take a lock so that they never run at the same time (their RSS and
//! timing figures would mix); each stops by itself. Their names start with a, b, c so that the
//! sustained run comes first with `--test-threads=1`: memory freed by the 10,000 connections
//! can stay resident, and would hide a leak of up to that size from the RSS comparison.
mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};

// ---------------------------------------------------------------------------------------------
// Helpers

fn soak() -> bool {
    std::env::var("RESTATUS_SOAK").is_ok_and(|v| v == "1")
}

/// Runs the tests of this file one at a time (each has its own runtime, so the lock is
/// tokio's, which a failed test releases without poisoning it).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Raises the open-files soft limit to `wanted` (and the hard limit too, when allowed);
/// returns the soft limit now in force.
fn raise_open_files(wanted: u64) -> u64 {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get().expect("getrlimit");
    if soft >= wanted {
        return soft;
    }
    if hard < wanted && rlimit::setrlimit(Resource::NOFILE, wanted, wanted).is_ok() {
        return wanted;
    }
    let soft = wanted.min(hard);
    rlimit::setrlimit(Resource::NOFILE, soft, hard).expect("setrlimit");
    soft
}

/// The resident set size of this process (proxy, upstream and clients), in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmRSS in /proc/self/status")
        * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// A gauge or counter from the proxy's metrics.
fn metric(proxy: &TestProxy, name: &str) -> f64 {
    let text = proxy.live.metrics.encode(proxy.log.dropped());
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// A proxy config for `upstream` with generous timeouts and `route_extra` on the one route.
fn load_config(upstream: SocketAddr, grace: &str, route_extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
header_timeout = "60s"
idle_timeout = "300s"
shutdown_grace = "{grace}"

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
connect_timeout = "60s"
response_timeout = "300s"

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
profile = "none"
{route_extra}
"#
    )
}

/// A response read off a raw connection.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

type Head = (usize, u16, Vec<(String, String)>);

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => Ok(Some((
            n,
            response.code.unwrap_or(0),
            response
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect(),
        ))),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(err) => Err(format!("bad response head: {err}")),
    }
}

/// Reads one final response (skipping interim ones) with a Content-Length or chunked body.
/// Bytes after it stay in `buf`.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limit: Duration,
) -> Result<RawReply, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((n, status, headers)) = parse_head(buf)? {
            if (100..200).contains(&status) {
                buf.drain(..n);
                continue;
            }
            let length = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.trim().parse::<usize>().ok());
            let chunked = headers
                .iter()
                .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
            let end = match (length, chunked) {
                (Some(length), _) => (buf.len() >= n + length).then_some(n + length),
                (None, true) => buf[n..]
                    .windows(5)
                    .position(|w| w == b"0\r\n\r\n")
                    .map(|p| n + p + 5),
                (None, false) => Some(n),
            };
            if let Some(end) = end {
                let body = buf[n..end].to_vec();
                buf.drain(..end);
                return Ok(RawReply {
                    status,
                    headers,
                    body,
                });
            }
        }
        let read = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .map_err(|_| "no complete response in time".to_string())?;
        match read {
            Ok(0) => return Err("connection closed before a complete response".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(err) => return Err(format!("read failed: {err}")),
        }
    }
}

/// Whether the peer closes the connection within `limit` (EOF or reset) without sending more.
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> Result<(), String> {
    let mut chunk = [0u8; 1024];
    match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(format!(
            "unexpected bytes instead of a close: {}",
            chunk[..n].escape_ascii()
        )),
        Err(_) => Err(format!("still open after {limit:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Many connections, each with a request in flight at the same time

/// Set in the child process that plays the clients and the upstream of test (a).
const CHILD_ENV: &str = "RESTATUS_LOAD_CHILD_CONNECTIONS";

/// N client connections each send a request; the upstream holds every request until the test
/// has seen all N arrive (so all N are in flight through the proxy at once), then all are
/// answered.
///
/// Every proxied request holds two sockets in the proxy (client and upstream side), and the
/// clients and the upstream two more, so the clients and the upstream run in a child process
/// (this test binary again, with `RESTATUS_LOAD_CHILD_CONNECTIONS` set) with its own
/// open-files limit; the proxy runs here. N is capped at what the hard limit allows (2 per
/// connection plus a margin), and the figures say so when it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_concurrent_connections_are_all_answered() {
    if let Some(n) = std::env::var(CHILD_ENV).ok().and_then(|n| n.parse().ok()) {
        return clients_and_upstream(n).await;
    }
    let _serial = serial().await;
    let wanted: usize = if soak() { 10_000 } else { 1_000 };
    let limit = raise_open_files(wanted as u64 * 2 + 256) as usize;
    let n = wanted.min(limit.saturating_sub(256) / 2);
    let note = if n < wanted {
        format!(
            " (not {wanted}: the open-files hard limit {limit} allows no more through one process)"
        )
    } else {
        String::new()
    };

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "b_concurrent_connections_are_all_answered",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, n.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the client process");
    let mut to_child = child.stdin.take().expect("child stdin");
    let mut from_child =
        tokio::io::BufReader::new(child.stdout.take().expect("child stdout")).lines();
    let wait = Duration::from_secs(if soak() { 600 } else { 120 });
    let upstream: SocketAddr = expect_from(&mut from_child, "upstream", wait)
        .await
        .parse()
        .expect("upstream address");
    let proxy = spawn_proxy(&load_config(upstream, "30s", "")).await;

    let started = Instant::now();
    to_child
        .write_all(format!("proxy {}\n", proxy.addr).as_bytes())
        .await
        .expect("tell the child");
    let arrived = expect_from(&mut from_child, "arrived", wait).await;
    let all_in_after = started.elapsed();
    let open = metric(&proxy, "restatus_open_connections");
    let in_flight = metric(&proxy, "restatus_in_flight_requests");
    to_child
        .write_all(b"release\n")
        .await
        .expect("tell the child");
    let done = expect_from(&mut from_child, "done", wait).await;
    let answered_after = started.elapsed();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the child exits")
        .expect("child status");

    let mut fields = done.splitn(3, ' ');
    let answered: usize = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let failed: usize = fields
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(usize::MAX);
    let first_failure = fields.next().unwrap_or("");
    println!(
        "load: {n} client connections{note} held open, {in_flight:.0} requests in flight through \
         the proxy at once ({open:.0} open client connections, all {arrived} held at the upstream) \
         after {:.2} s; {answered} answered 200 after {:.2} s; {failed} failed",
        all_in_after.as_secs_f64(),
        answered_after.as_secs_f64(),
    );
    assert_eq!(failed, 0, "{failed} of {n} failed, e.g. {first_failure}");
    assert_eq!(answered, n);
    assert_eq!(
        arrived,
        n.to_string(),
        "each request reached the upstream once"
    );
    assert!(
        in_flight >= n as f64 && open >= n as f64,
        "the proxy had {in_flight} requests in flight on {open} connections, not {n}"
    );
    assert!(status.success(), "the client process failed: {status}");
    proxy.stop().await;
}

/// One client of test (a): connect (at most 256 at once), send, wait for the answer.
async fn one_client(
    i: usize,
    proxy: SocketAddr,
    connecting: Arc<Semaphore>,
) -> Result<u16, String> {
    let permit = connecting.acquire_owned().await.expect("semaphore");
    let connect = tokio::time::timeout(Duration::from_secs(60), TcpStream::connect(proxy));
    let mut stream = connect
        .await
        .map_err(|_| format!("client {i}: connect timed out"))?
        .map_err(|err| format!("client {i}: connect: {err}"))?;
    let request = format!("GET /hold/{i} HTTP/1.1\r\nHost: load.test\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|err| format!("client {i}: write: {err}"))?;
    drop(permit);
    let mut buf = Vec::new();
    let reply = read_response(&mut stream, &mut buf, Duration::from_secs(600))
        .await
        .map_err(|err| format!("client {i}: {err}"))?;
    Ok(reply.status)
}

/// Waits for the child's line `@@{tag} ...` and returns the rest of it.
async fn expect_from(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    tag: &str,
    limit: Duration,
) -> String {
    let prefix = format!("@@{tag} ");
    let found = tokio::time::timeout(limit, async {
        while let Some(line) = lines.next_line().await.expect("read the child") {
            // libtest may print `test NAME ... ` before the line on the same line.
            if let Some((_, rest)) = line.split_once(&prefix) {
                return Some(rest.to_string());
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(rest)) => rest,
        Ok(None) => panic!("the client process ended before saying `{tag}`"),
        Err(_) => panic!("the client process did not say `{tag}` within {limit:?}"),
    }
}

/// The child's part: an upstream that holds every request until told, and `n` clients.
async fn clients_and_upstream(n: usize) {
    let limit = raise_open_files(n as u64 * 2 + 256);
    assert!(
        limit as usize >= n * 2,
        "open-files limit {limit} in the child"
    );
    let arrived = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let upstream = {
        let arrived = arrived.clone();
        spawn_streaming_upstream(move |_request: Request<Incoming>| {
            let (arrived, mut released) = (arrived.clone(), released.clone());
            async move {
                arrived.fetch_add(1, Ordering::SeqCst);
                let held =
                    tokio::time::timeout(Duration::from_secs(600), released.wait_for(|r| *r));
                match held.await {
                    Ok(Ok(_)) => reply(200, "released"),
                    _ => reply(503, "never released"),
                }
            }
        })
        .await
    };
    println!("@@upstream {}", upstream.addr);
    let mut from_parent = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let line = from_parent
        .next_line()
        .await
        .expect("stdin")
        .expect("proxy address");
    let proxy: SocketAddr = line
        .strip_prefix("proxy ")
        .and_then(|a| a.parse().ok())
        .expect("proxy address");

    // At most this many connects at once, so the listen backlog never overflows.
    let connecting = Arc::new(Semaphore::new(256));
    let gave_up = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..n {
        let (connecting, gave_up) = (connecting.clone(), gave_up.clone());
        clients.spawn(async move {
            let result = one_client(i, proxy, connecting).await;
            if result.is_err() {
                gave_up.fetch_add(1, Ordering::SeqCst);
            }
            result
        });
    }
    wait_until(
        Duration::from_secs(590),
        "every request at the upstream",
        || arrived.load(Ordering::SeqCst) + gave_up.load(Ordering::SeqCst) >= n,
    )
    .await;
    println!("@@arrived {}", arrived.load(Ordering::SeqCst));
    let line = from_parent.next_line().await.expect("stdin");
    assert_eq!(line.as_deref(), Some("release"));
    let _ = release.send(true);
    let (mut answered, mut failures) = (0usize, Vec::new());
    while let Some(joined) = clients.join_next().await {
        match joined.expect("client task") {
            Ok(200) => answered += 1,
            Ok(status) => failures.push(format!("status {status}")),
            Err(err) => failures.push(err),
        }
    }
    println!(
        "@@done {answered} {} {}",
        failures.len(),
        failures.first().map_or("", String::as_str)
    );
}

// ---------------------------------------------------------------------------------------------
// (b) A sustained mix of requests where rules fire

const MIX_RULES: &str = r#"
[[rules]]
name = "create-is-201"
when = { method = "POST", path = "/items", status = 200 }
then = { status = 201 }

[[rules]]
name = "missing-item-is-404"
when = { method = "GET", path = "/items/*", status = 200, body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }
"#;

/// One kind of request in the mix and the status the client must get.
struct Kind {
    method: Method,
    path: &'static str,
    body: &'static str,
    want: u16,
    /// A rule rewrites it, so it writes a deviation record.
    deviates: bool,
}

fn mix() -> [Kind; 3] {
    [
        Kind {
            method: Method::POST,
            path: "/items",
            body: r#"{"name":"x"}"#,
            want: 201,
            deviates: true,
        },
        Kind {
            method: Method::GET,
            path: "/items/missing",
            body: "",
            want: 404,
            deviates: true,
        },
        Kind {
            method: Method::GET,
            path: "/items/1",
            body: "",
            want: 200,
            deviates: false,
        },
    ]
}

/// Empties the in-memory deviation sink, returning how many complete lines it held. Keeping
/// the sink small keeps it out of the RSS figures.
fn drain_sink(sink: &SharedSink) -> u64 {
    let mut bytes = sink.0.lock().expect("sink lock");
    let lines = bytecount(&bytes, b'\n');
    bytes.clear();
    lines
}

fn bytecount(bytes: &[u8], byte: u8) -> u64 {
    bytes.iter().filter(|b| **b == byte).count() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sustained_mix_has_no_errors_leaks_or_lost_records() {
    let _serial = serial().await;
    let (run, window, clients, bound) = if soak() {
        (
            Duration::from_secs(60),
            Duration::from_secs(10),
            8,
            64 << 20,
        )
    } else {
        (Duration::from_secs(5), Duration::from_secs(1), 4, 64 << 20)
    };
    let upstream = spawn_streaming_upstream(|request: Request<Incoming>| async move {
        let (parts, body) = request.into_parts();
        let _ = body.collect().await;
        match (parts.method, parts.uri.path()) {
            (Method::POST, "/items") => json(200, r#"{"id":1}"#),
            (_, "/items/missing") => json(200, r#"{"error":{"code":"NOT_FOUND"}}"#),
            _ => json(200, r#"{"id":1,"name":"x"}"#),
        }
    })
    .await;
    let proxy = spawn_proxy(&load_config(upstream.addr, "10s", MIX_RULES)).await;
    let baseline = rss();

    let sent = Arc::new(AtomicU64::new(0));
    let deviations_sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    let end = started + run;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..clients {
        let (sent, deviations_sent, errors) =
            (sent.clone(), deviations_sent.clone(), errors.clone());
        let base = proxy.url("");
        workers.spawn(async move {
            let client = client();
            let kinds = mix();
            let mut i = worker;
            while Instant::now() < end {
                let kind = &kinds[i % kinds.len()];
                i += 1;
                let request = Request::builder()
                    .method(kind.method.clone())
                    .uri(format!("{base}{}", kind.path))
                    .header("content-type", "application/json")
                    .body(full(Bytes::from_static(kind.body.as_bytes())))
                    .expect("request");
                sent.fetch_add(1, Ordering::Relaxed);
                if kind.deviates {
                    deviations_sent.fetch_add(1, Ordering::Relaxed);
                }
                let outcome =
                    match tokio::time::timeout(Duration::from_secs(30), client.request(request))
                        .await
                    {
                        Err(_) => Err("no response within 30 s".to_string()),
                        Ok(Err(err)) => Err(format!("request failed: {err:?}")),
                        Ok(Ok(response)) => {
                            let status = response.status();
                            match response.into_body().collect().await {
                                Err(err) => Err(format!("body failed: {err}")),
                                Ok(_)
                                    if status
                                        != StatusCode::from_u16(kind.want).expect("status") =>
                                {
                                    Err(format!(
                                        "{} {}: status {status}, want {}",
                                        kind.method, kind.path, kind.want
                                    ))
                                }
                                Ok(_) => Ok(()),
                            }
                        }
                    };
                if let Err(err) = outcome {
                    errors.lock().expect("errors").push(err);
                }
            }
        });
    }

    // Sample RSS and empty the sink every 100 ms until the clients are done.
    let mut samples: Vec<(Duration, u64)> = Vec::new();
    let mut lines = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    while !workers.is_empty() {
        tokio::select! {
            _ = tick.tick() => {
                samples.push((started.elapsed(), rss()));
                lines += drain_sink(&proxy.sink);
            }
            joined = workers.join_next() => {
                joined.expect("workers left").expect("worker task");
            }
        }
    }
    let elapsed = started.elapsed();
    assert!(
        proxy.log.flush(Duration::from_secs(10)),
        "deviation log flush"
    );
    lines += drain_sink(&proxy.sink);

    let sent = sent.load(Ordering::Relaxed);
    let deviations_sent = deviations_sent.load(Ordering::Relaxed);
    let written = proxy.live.deviations.written();
    let dropped = proxy.live.deviations.dropped();
    let errors = errors.lock().expect("errors").clone();
    let peak = |from: Duration, to: Duration| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, rss)| *rss)
            .max()
            .unwrap_or(0)
    };
    let early = peak(Duration::ZERO, window);
    let late = peak(elapsed.saturating_sub(window), elapsed);
    println!(
        "sustained: {sent} requests in {:.1} s ({:.0}/s) from {clients} clients, {} errors; \
         RSS at start {:.1} MiB, peak first {:.0} s {:.1} MiB, last {:.0} s {:.1} MiB ({:+.1} MiB); \
         deviations sent {deviations_sent}, written {written} + dropped {dropped}, {lines} lines in the sink",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64(),
        errors.len(),
        mib(baseline),
        window.as_secs_f64(),
        mib(early),
        window.as_secs_f64(),
        mib(late),
        mib(late) - mib(early),
    );
    assert!(
        errors.is_empty(),
        "{} errors, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert!(sent > 0);
    assert_eq!(
        written + dropped,
        deviations_sent,
        "deviation records written + dropped = deviations sent"
    );
    assert_eq!(
        lines, written,
        "every record written is one line in the sink"
    );
    assert!(
        early > 0 && late <= early + bound,
        "RSS grew from {:.1} MiB to {:.1} MiB (bound +{:.0} MiB)",
        mib(early),
        mib(late),
        mib(bound)
    );
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// (c) Graceful shutdown under load

/// How one load request ended.
#[derive(Debug)]
enum Ended {
    Answered {
        status: u16,
        close: bool,
    },
    /// A new connection was refused: the listener is gone.
    Refused,
    /// The connection closed or reset before any response byte.
    Closed(String),
    Other(String),
}

fn classify(err: &hyper_util::client::legacy::Error) -> Ended {
    if err.is_connect() {
        return Ended::Refused;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(hyper) = cause.downcast_ref::<hyper::Error>() {
            if hyper.is_incomplete_message() || hyper.is_canceled() || hyper.is_closed() {
                return Ended::Closed(format!("{hyper}"));
            }
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionAborted
            ) {
                return Ended::Closed(format!("{io}"));
            }
        }
        source = cause.source();
    }
    Ended::Other(format!("{err:?}"))
}

/// One load request: its id, when it started and ended, and how.
struct Outcome {
    id: u64,
    ended_at: Instant,
    ended: Ended,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_graceful_shutdown_under_load_loses_no_accepted_request() {
    let _serial = serial().await;
    let (clients, warm_up) = if soak() { (32, 20_000) } else { (8, 300) };
    let grace = Duration::from_secs(10);

    // The upstream records every load request's id; `/hold` waits to be released.
    let seen_ids = Arc::new(Mutex::new(HashSet::<u64>::new()));
    let held = Arc::new(AtomicUsize::new(0));
    let (release, released) = watch::channel(false);
    let upstream = {
        let (seen_ids, held) = (seen_ids.clone(), held.clone());
        spawn_streaming_upstream(move |request: Request<Incoming>| {
            let (seen_ids, held, mut released) = (seen_ids.clone(), held.clone(), released.clone());
            async move {
                if let Some(id) = request
                    .headers()
                    .get("x-load-id")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                {
                    seen_ids.lock().expect("ids").insert(id);
                }
                if request.uri().path() == "/hold" {
                    held.fetch_add(1, Ordering::SeqCst);
                    let wait =
                        tokio::time::timeout(Duration::from_secs(60), released.wait_for(|r| *r));
                    let _ = wait.await;
                    return reply(200, "held");
                }
                reply(200, "fast")
            }
        })
        .await
    };
    let mut proxy = spawn_proxy(&load_config(upstream.addr, "10s", "")).await;

    // Load: keep-alive clients sending GETs until they see the proxy go away.
    let next_id = Arc::new(AtomicU64::new(1));
    let completed = Arc::new(AtomicU64::new(0));
    let shutdown_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (next_id, completed, shutdown_at, stop) = (
            next_id.clone(),
            completed.clone(),
            shutdown_at.clone(),
            stop.clone(),
        );
        let url = proxy.url("/fast");
        workers.spawn(async move {
            let client = client();
            let mut outcomes = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let id = next_id.fetch_add(1, Ordering::Relaxed);
                let request = Request::builder()
                    .uri(&url)
                    .header("x-load-id", id.to_string())
                    .body(full(Bytes::new()))
                    .expect("request");
                let result =
                    tokio::time::timeout(Duration::from_secs(30), client.request(request)).await;
                let ended = match result {
                    Err(_) => Ended::Other("no response within 30 s".into()),
                    Ok(Err(err)) => classify(&err),
                    Ok(Ok(response)) => {
                        let status = response.status().as_u16();
                        let close = response
                            .headers()
                            .get("connection")
                            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                        match response.into_body().collect().await {
                            Ok(_) => Ended::Answered { status, close },
                            Err(err) => Ended::Other(format!("body cut: {err}")),
                        }
                    }
                };
                let failed = !matches!(ended, Ended::Answered { .. });
                completed.fetch_add(1, Ordering::Relaxed);
                outcomes.push(Outcome {
                    id,
                    ended_at: Instant::now(),
                    ended,
                });
                // A client that saw the proxy go away stops.
                if failed && shutdown_at.lock().expect("shutdown_at").is_some() {
                    break;
                }
            }
            outcomes
        });
    }
    wait_until(Duration::from_secs(120), "the load to warm up", || {
        completed.load(Ordering::Relaxed) >= warm_up
    })
    .await;

    // A raw HTTP/1.1 request in flight (held by the upstream) when the shutdown starts.
    let mut in_flight = TcpStream::connect(proxy.addr).await.expect("connect");
    in_flight
        .write_all(b"GET /hold HTTP/1.1\r\nHost: load.test\r\n\r\n")
        .await
        .expect("write");
    // An HTTP/2 request in flight too.
    let h2 = h2_client();
    let h2_request = {
        let url = proxy.url("/hold");
        let h2 = h2.clone();
        tokio::spawn(async move {
            let request = Request::builder()
                .uri(url)
                .body(full(Bytes::new()))
                .expect("request");
            let response = h2.request(request).await.map_err(|e| format!("{e:?}"))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{e}"))?;
            Ok::<_, String>((status, body.to_bytes()))
        })
    };
    wait_until(
        Duration::from_secs(10),
        "both held requests at the upstream",
        || held.load(Ordering::SeqCst) == 2,
    )
    .await;
    // An idle keep-alive connection that has served one request.
    let mut idle = TcpStream::connect(proxy.addr).await.expect("connect");
    idle.write_all(b"GET /fast HTTP/1.1\r\nHost: load.test\r\n\r\n")
        .await
        .expect("write");
    let mut idle_buf = Vec::new();
    let first = read_response(&mut idle, &mut idle_buf, Duration::from_secs(10))
        .await
        .expect("the idle connection's first response");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("connection"),
        None,
        "keep-alive before the shutdown"
    );

    // SIGTERM-like: stop accepting, drain.
    let before = completed.load(Ordering::Relaxed);
    let t0 = Instant::now();
    *shutdown_at.lock().expect("shutdown_at") = Some(t0);
    let server = proxy.begin_shutdown();

    let idle_closed = closes_within(&mut idle, Duration::from_secs(5)).await;
    let idle_closed_after = t0.elapsed();
    assert!(
        idle_closed.is_ok(),
        "the idle keep-alive connection was not closed: {idle_closed:?}"
    );
    // The held requests are still in flight; release them now.
    assert_eq!(held.load(Ordering::SeqCst), 2);
    let _ = release.send(true);
    let mut buf = Vec::new();
    let in_flight_reply = read_response(&mut in_flight, &mut buf, Duration::from_secs(10))
        .await
        .expect("the in-flight HTTP/1.1 request is answered during the shutdown");
    let h2_reply = tokio::time::timeout(Duration::from_secs(10), h2_request)
        .await
        .expect("HTTP/2 answer within 10 s")
        .expect("h2 task");
    let in_flight_closed = closes_within(&mut in_flight, Duration::from_secs(5)).await;

    let finished = tokio::time::timeout(grace + Duration::from_secs(5), server).await;
    let stopped_after = t0.elapsed();
    stop.store(true, Ordering::Relaxed);
    let mut outcomes = Vec::new();
    while let Some(joined) = workers.join_next().await {
        outcomes.extend(joined.expect("worker task"));
    }

    // Every request the upstream received was answered 200; every failure is a request that
    // never reached the upstream, ended after the shutdown began, as a refused new connection
    // or a connection closed before any response.
    let seen = seen_ids.lock().expect("ids").clone();
    let (mut answered, mut answered_after, mut closing) = (0, 0, 0);
    let (mut refused, mut closed, mut bad) = (0, Vec::new(), Vec::new());
    for outcome in &outcomes {
        let after = outcome.ended_at >= t0;
        match &outcome.ended {
            Ended::Answered { status: 200, close } => {
                answered += 1;
                answered_after += usize::from(after);
                closing += usize::from(*close);
            }
            Ended::Answered { status, .. } => {
                bad.push(format!("id {}: status {status}", outcome.id))
            }
            _ if seen.contains(&outcome.id) => bad.push(format!(
                "id {} reached the upstream but failed: {:?}",
                outcome.id, outcome.ended
            )),
            _ if !after => bad.push(format!(
                "id {} failed before the shutdown: {:?}",
                outcome.id, outcome.ended
            )),
            Ended::Refused => refused += 1,
            Ended::Closed(why) => closed.push(why.as_str()),
            Ended::Other(why) => bad.push(format!("id {}: {why}", outcome.id)),
        }
    }
    println!(
        "shutdown: {} load requests from {clients} clients ({before} before the shutdown began); \
         {answered} answered 200 ({answered_after} after it began, {closing} with Connection: close); \
         after it began {refused} new connections refused and {} keep-alive connections closed \
         before any response byte {:?} (none of those reached the upstream or were counted by the \
         proxy); idle keep-alive connection \
         closed after {:.3} s; in-flight HTTP/1.1 answered {} with `Connection: {}`; in-flight \
         HTTP/2 answered {:?}; server finished after {:.3} s (grace {} s)",
        outcomes.len(),
        closed.len(),
        closed.iter().collect::<HashSet<_>>(),
        idle_closed_after.as_secs_f64(),
        in_flight_reply.status,
        in_flight_reply.header("connection").unwrap_or("(none)"),
        h2_reply.as_ref().map(|(s, _)| *s),
        stopped_after.as_secs_f64(),
        grace.as_secs()
    );
    assert!(
        bad.is_empty(),
        "{} bad outcomes, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(answered > 0);
    // The proxy handled exactly the requests that were answered: the load's, the idle
    // connection's first and the two held ones. A failed request it had taken would count too.
    let handled: f64 = proxy
        .live
        .metrics
        .encode(0)
        .lines()
        .filter(|line| line.starts_with("restatus_requests_total"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(handled as usize, answered + 3, "requests the proxy handled");
    assert_eq!(in_flight_reply.status, 200);
    assert_eq!(in_flight_reply.body, b"held");
    assert!(
        in_flight_closed.is_ok(),
        "the in-flight connection stays open after its response: {in_flight_closed:?}"
    );
    let (h2_status, h2_body) = h2_reply.expect("the in-flight HTTP/2 request is answered");
    assert_eq!((h2_status, &h2_body[..]), (200, &b"held"[..]));
    assert!(
        finished.is_ok() && stopped_after < grace,
        "the server did not finish within the grace period ({stopped_after:?})"
    );
    assert_eq!(
        in_flight_reply
            .header("connection")
            .map(|v| v.to_ascii_lowercase()),
        Some("close".to_string()),
        "the in-flight HTTP/1.1 response during the shutdown carries Connection: close; headers {:?}",
        in_flight_reply.headers
    );
}
