//! Fuzzing the wire with proptest: request bytes (valid requests, then mutated: injected
//! header lines, Content-Length / Transfer-Encoding combinations, chunk-size garbage,
//! pipelining, bare LF, truncation, random bytes) go through a live proxy to a raw-TCP upstream
//! that records every byte it receives. For each case:
//!
//! - everything the upstream received parses (httparse) as complete, well-framed HTTP/1.1
//!   requests — framed by exactly one plain Content-Length or by `Transfer-Encoding: chunked`
//!   alone, never both — possibly followed, on a connection the proxy then closed, by the
//!   beginning of one more (a forwarded body the proxy aborted);
//! - the upstream received no more requests than the client got responses from the upstream
//!   (marked `x-upstream-hit`), so no hidden request was ever smuggled through.
//!
//! Cases come from `FUZZ_CASES` (default 512, the bounded run CI makes; each case starts its
//! own proxy and upstream). A longer run:
//!
//! ```sh
//! FUZZ_CASES=20000 cargo test --release --test fuzz_wire
//! ```
mod support;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Cases: `FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The marker the upstream puts on every response it sends.
const MARKER: &[u8] = b"x-upstream-hit: 1\r\n";

// ---------------------------------------------------------------------------------------------
// The recording upstream

/// What one upstream connection received.
#[derive(Debug, Default, Clone)]
struct UpConn {
    bytes: Vec<u8>,
    /// Bytes of complete requests, from the start.
    parsed: usize,
    complete: usize,
    closed: bool,
    violation: Option<String>,
}

type Recording = Arc<Mutex<Vec<UpConn>>>;

enum Parsed {
    /// Not all there yet; whether the head is complete and asks for `100-continue`.
    Partial {
        wants_continue: bool,
    },
    Complete {
        len: usize,
        head: bool,
    },
}

/// Parses one request at the start of `buf`, strictly: anything but a well-framed HTTP/1.1
/// request (or the beginning of one) is a violation.
fn parse_request(buf: &[u8]) -> Result<Parsed, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return Ok(Parsed::Partial {
                wants_continue: false,
            })
        }
        Err(err) => return Err(format!("unparseable request head: {err}")),
    };
    if request.version != Some(1) {
        return Err(format!("not HTTP/1.1: version {:?}", request.version));
    }
    let head = request.method == Some("HEAD");
    let named = |name: &str| -> Vec<&[u8]> {
        request
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    let lengths = named("content-length");
    let encodings = named("transfer-encoding");
    let wants_continue = named("expect")
        .iter()
        .any(|v| v.eq_ignore_ascii_case(b"100-continue"));
    let body = &buf[head_len..];
    let body_len = match (lengths.as_slice(), encodings.as_slice()) {
        ([], []) => Some(0),
        ([length], []) => {
            if length.is_empty() || !length.iter().all(u8::is_ascii_digit) {
                return Err(format!(
                    "Content-Length is not a plain number: {:?}",
                    String::from_utf8_lossy(length)
                ));
            }
            let length: usize = std::str::from_utf8(length)
                .ok()
                .and_then(|l| l.parse().ok())
                .ok_or("Content-Length out of range")?;
            (body.len() >= length).then_some(length)
        }
        ([], [encoding]) => {
            if !encoding.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(format!(
                    "Transfer-Encoding other than chunked alone: {:?}",
                    String::from_utf8_lossy(encoding)
                ));
            }
            chunked_len(body)?
        }
        _ => {
            return Err(format!(
                "ambiguous framing: {} Content-Length and {} Transfer-Encoding fields",
                lengths.len(),
                encodings.len()
            ))
        }
    };
    Ok(match body_len {
        Some(len) => Parsed::Complete {
            len: head_len + len,
            head,
        },
        None => Parsed::Partial { wants_continue },
    })
}

/// The length of a complete chunked body at the start of `body`, `None` if incomplete.
fn chunked_len(body: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let (used, size) = match httparse::parse_chunk_size(&body[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err("invalid chunk size line".into()),
        };
        at += used;
        if size == 0 {
            // Trailer fields, then the empty line.
            loop {
                let Some(end) = body[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                let line = &body[at..at + end];
                at += end + 2;
                if line.is_empty() {
                    return Ok(Some(at));
                }
                if !line.contains(&b':') || line.iter().any(|b| *b == b'\r' || *b == b'\n') {
                    return Err("invalid trailer line".into());
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| "chunk too large")?;
        if body.len() < at + size + 2 {
            return Ok(None);
        }
        if &body[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        at += size + 2;
    }
}

/// A raw-TCP upstream on 127.0.0.1:0 that records every connection's bytes and answers each
/// complete request with a marked 200 (and `100 Continue` to a head that asks for it).
async fn recording_upstream() -> (SocketAddr, Recording, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let recording: Recording = Arc::default();
    let conns = recording.clone();
    let task = tokio::spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let index = {
                let mut all = conns.lock().expect("recording");
                all.push(UpConn::default());
                all.len() - 1
            };
            tasks.spawn(serve_recorded(stream, conns.clone(), index));
        }
    });
    (addr, recording, task)
}

async fn serve_recorded(mut stream: TcpStream, conns: Recording, index: usize) {
    let mut buf = vec![0u8; 16 << 10];
    let mut continued_at = None;
    loop {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut replies = Vec::new();
        let mut violated = false;
        {
            let mut all = conns.lock().expect("recording");
            let conn = &mut all[index];
            conn.bytes.extend_from_slice(&buf[..n]);
            loop {
                match parse_request(&conn.bytes[conn.parsed..]) {
                    Err(why) => {
                        conn.violation = Some(why);
                        violated = true;
                        break;
                    }
                    Ok(Parsed::Partial { wants_continue }) => {
                        if wants_continue && continued_at != Some(conn.parsed) {
                            continued_at = Some(conn.parsed);
                            replies.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                        }
                        break;
                    }
                    Ok(Parsed::Complete { len, head }) => {
                        conn.parsed += len;
                        conn.complete += 1;
                        replies.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
                        replies.extend_from_slice(MARKER);
                        replies.extend_from_slice(b"content-length: 2\r\n\r\n");
                        if !head {
                            replies.extend_from_slice(b"ok");
                        }
                    }
                }
            }
        }
        if violated || stream.write_all(&replies).await.is_err() {
            break;
        }
    }
    conns.lock().expect("recording")[index].closed = true;
}

// ---------------------------------------------------------------------------------------------
// Generated requests

#[derive(Debug, Clone)]
enum Framing {
    None,
    /// Content-Length off by `delta` from the body's real length.
    Length(i8),
    /// Chunks of the body, with a chunk-size line possibly replaced by garbage.
    Chunked(Vec<u8>, Option<&'static str>),
    /// Both framings at once.
    Both,
    /// Two Content-Length fields.
    TwoLengths(u8, u8),
    /// Some other Transfer-Encoding value.
    Encoding(&'static str),
}

#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    target: &'static str,
    version: &'static str,
    framing: Framing,
    body: Vec<u8>,
    /// Header lines injected as written (they may hold CR, LF, NUL, obs-fold ...).
    lines: Vec<&'static str>,
}

const INJECTED: &[&str] = &[
    "Transfer-Encoding: chunked",
    "Transfer-Encoding: gzip, chunked",
    "Transfer-Encoding: chunked, gzip",
    "Transfer-Encoding: identity",
    "Transfer-Encoding : chunked",
    "Transfer-Encoding:\tchunked",
    " Transfer-Encoding: chunked",
    "Transfer-Encoding: \x0bchunked",
    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
    "Transfer-Encoding: xchunked",
    "Content-Length: 0",
    "Content-Length: 5",
    "Content-Length: 5, 5",
    "Content-Length: 5, 6",
    "Content-Length: +5",
    "Content-Length: -1",
    "Content-Length: 0x5",
    "Content-Length: 99999999999999999999",
    "Content-Length:  5 ",
    "Content-Length: 5\r\nTransfer-Encoding: chunked",
    "Connection: close",
    "Connection: keep-alive, Transfer-Encoding",
    "Connection: Content-Length",
    "Upgrade: h2c",
    "Connection: Upgrade, HTTP2-Settings",
    "HTTP2-Settings: AAMAAABkAAQAAP__",
    "Expect: 100-continue",
    "Host: other.example",
    "Host: a\r\nHost: b",
    "X-A: \x00",
    "X-A: a\rb",
    "X-A: a\nb",
    "X-A: a\r\n b",
    "X-A: caf\u{e9}",
    "Trailer: X-T",
    "TE: trailers",
    "Keep-Alive: timeout=1",
    "Proxy-Connection: keep-alive",
    "X-Empty:",
    ": no-name",
    "No-Colon",
    "GET / HTTP/1.1",
];

const CHUNK_GARBAGE: &[&str] = &[
    "fffffffffffffffff",
    "-1",
    "0x10",
    "1;ext=\"a\"",
    "1 ",
    " 1",
    "",
    "z",
    "1\n",
    "0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n",
    "00000000000000000000001",
];

fn framing() -> impl Strategy<Value = Framing> {
    prop_oneof![
        3 => Just(Framing::None),
        4 => prop_oneof![4 => Just(0i8), 1 => -3i8..4].prop_map(Framing::Length),
        4 => (
            proptest::collection::vec(1u8..8, 0..4),
            proptest::option::weighted(0.3, proptest::sample::select(CHUNK_GARBAGE)),
        )
            .prop_map(|(sizes, garbage)| Framing::Chunked(sizes, garbage)),
        1 => Just(Framing::Both),
        1 => (0u8..8, 0u8..8).prop_map(|(a, b)| Framing::TwoLengths(a, b)),
        1 => proptest::sample::select(&["gzip", "chunked, chunked", "identity", "Chunked", "chunked;q=1"][..])
            .prop_map(Framing::Encoding),
    ]
}

/// A well-formed request: what most of a pipeline is made of.
fn clean_request() -> impl Strategy<Value = Req> {
    (
        proptest::sample::select(&["GET", "POST", "PUT", "HEAD", "DELETE"][..]),
        proptest::sample::select(&["/", "/items", "/items/1?x=y"][..]),
        prop_oneof![4 => Just("HTTP/1.1"), 1 => Just("HTTP/1.0")],
        prop_oneof![
            1 => Just(Framing::None),
            2 => Just(Framing::Length(0)),
            2 => proptest::collection::vec(1u8..8, 0..4).prop_map(|sizes| Framing::Chunked(sizes, None)),
        ],
        proptest::collection::vec(0x61u8..0x7b, 0..12),
        proptest::collection::vec(
            proptest::sample::select(&["Expect: 100-continue", "Connection: keep-alive", "X-A: b"][..]),
            0..2,
        ),
    )
        .prop_map(|(method, target, version, framing, body, lines)| Req {
            method,
            target,
            version,
            framing,
            body,
            lines,
        })
}

/// A request with odd parts: methods, targets, versions, framings and injected lines.
fn odd_request() -> impl Strategy<Value = Req> {
    (
        proptest::sample::select(&["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "G\u{e9}T", "get"][..]),
        proptest::sample::select(&["/", "/items", "/items/1?x=y", "/a%20b", "*", "http://h/abs", "/\u{7f}"][..]),
        prop_oneof![
            6 => Just("HTTP/1.1"),
            2 => Just("HTTP/1.0"),
            1 => proptest::sample::select(&["HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "http/1.1", ""][..]),
        ],
        framing(),
        proptest::collection::vec(prop_oneof![3 => 0x61u8..0x7b, 1 => any::<u8>()], 0..12),
        proptest::collection::vec(proptest::sample::select(INJECTED), 0..3),
    )
        .prop_map(|(method, target, version, framing, body, lines)| Req {
            method,
            target,
            version,
            framing,
            body,
            lines,
        })
}

fn request() -> impl Strategy<Value = Req> {
    prop_oneof![clean_request(), odd_request()]
}

fn render(req: &Req) -> Vec<u8> {
    let mut out = format!(
        "{} {} {}\r\nHost: fuzz.test\r\n",
        req.method, req.target, req.version
    )
    .into_bytes();
    let mut body = req.body.clone();
    match &req.framing {
        Framing::None => {}
        Framing::Length(delta) => {
            let length = (body.len() as i64 + i64::from(*delta)).max(0);
            out.extend_from_slice(format!("Content-Length: {length}\r\n").as_bytes());
        }
        Framing::Chunked(sizes, garbage) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
            let mut chunked = Vec::new();
            let mut rest = &body[..];
            for (i, size) in sizes.iter().enumerate() {
                let take = (*size as usize).min(rest.len());
                let line = match garbage {
                    Some(g) if i == 0 => g.to_string(),
                    _ => format!("{take:x}"),
                };
                chunked.extend_from_slice(line.as_bytes());
                chunked.extend_from_slice(b"\r\n");
                chunked.extend_from_slice(&rest[..take]);
                chunked.extend_from_slice(b"\r\n");
                rest = &rest[take..];
            }
            if !rest.is_empty() {
                chunked.extend_from_slice(format!("{:x}\r\n", rest.len()).as_bytes());
                chunked.extend_from_slice(rest);
                chunked.extend_from_slice(b"\r\n");
            }
            chunked.extend_from_slice(b"0\r\n\r\n");
            body = chunked;
        }
        Framing::Both => {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        Framing::TwoLengths(a, b) => {
            out.extend_from_slice(
                format!("Content-Length: {a}\r\nContent-Length: {b}\r\n").as_bytes(),
            );
        }
        Framing::Encoding(value) => {
            out.extend_from_slice(format!("Transfer-Encoding: {value}\r\n").as_bytes());
        }
    }
    for line in &req.lines {
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// An edit of the whole byte stream, at a position relative to its length.
#[derive(Debug, Clone)]
enum Mutation {
    Truncate(f64),
    Insert(f64, Vec<u8>),
    Replace(f64, u8),
    BareLf,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => (0.0..1.0f64).prop_map(Mutation::Truncate),
        2 => (0.0..1.0f64, proptest::collection::vec(any::<u8>(), 1..6))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        1 => (0.0..1.0f64, proptest::sample::select(&[b'\r', b'\n', 0, b' ', b':', b'0', 0xff][..]))
            .prop_map(|(at, byte)| Mutation::Replace(at, byte)),
        1 => Just(Mutation::BareLf),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    requests: Vec<Req>,
    mutations: Vec<Mutation>,
    /// Pure random bytes appended (or the whole input when there are no requests).
    tail: Vec<u8>,
    /// Where the client splits its writes, relative to the length.
    splits: Vec<f64>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(request(), 0..5),
        prop_oneof![
            2 => Just(Vec::new()),
            1 => proptest::collection::vec(mutation(), 1..3),
        ],
        prop_oneof![6 => Just(Vec::new()), 1 => proptest::collection::vec(any::<u8>(), 1..64)],
        proptest::collection::vec(0.0..1.0f64, 0..3),
    )
        .prop_map(|(requests, mutations, tail, splits)| Case {
            requests,
            mutations,
            tail,
            splits,
        })
}

fn at(len: usize, fraction: f64) -> usize {
    ((len as f64) * fraction) as usize
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.requests.iter().flat_map(render).collect();
        for mutation in &self.mutations {
            match mutation {
                Mutation::Truncate(f) => out.truncate(at(out.len(), *f)),
                Mutation::Insert(f, bytes) => {
                    let i = at(out.len(), *f);
                    out.splice(i..i, bytes.iter().copied());
                }
                Mutation::Replace(f, byte) => {
                    if !out.is_empty() {
                        let i = at(out.len(), *f).min(out.len() - 1);
                        out[i] = *byte;
                    }
                }
                Mutation::BareLf => {
                    out = String::from_utf8_lossy(&out)
                        .replace("\r\n", "\n")
                        .into_bytes()
                }
            }
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

fn escaped(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

// ---------------------------------------------------------------------------------------------
// Running one case

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fn proxy_config(upstream: SocketAddr) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
header_timeout = "1s"
body_timeout = "500ms"
shutdown_grace = "1s"

[limits]
request_body = "64KiB"

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
connect_timeout = "2s"
response_timeout = "3s"
expect_timeout = "200ms"

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"
profile = "none"
"#
    )
}

/// Requests the proxy is handling now, from its metrics.
fn in_flight(proxy: &TestProxy) -> i64 {
    let text = proxy.live.metrics.encode(proxy.log.dropped());
    text.lines()
        .find_map(|line| line.strip_prefix("restatus_in_flight_requests "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

/// What a case observed.
struct Outcome {
    client_got: Vec<u8>,
    upstream: Vec<UpConn>,
    settled: bool,
}

/// Nothing is moving: no request in the proxy, no upstream connection holding part of a
/// request while still open, and every complete upstream request's answer reached the client.
fn settled(proxy: &TestProxy, recording: &Recording, client_got: &[u8]) -> bool {
    let conns = recording.lock().expect("recording").clone();
    let received: usize = conns.iter().map(|c| c.complete).sum();
    in_flight(proxy) == 0
        && conns.iter().all(|c| c.closed || c.parsed == c.bytes.len())
        && count(client_got, MARKER) >= received
}

async fn run_case(input: &[u8], splits: &[f64]) -> Outcome {
    let (addr, recording, upstream) = recording_upstream().await;
    let proxy = spawn_proxy(&proxy_config(addr)).await;
    let mut stream = TcpStream::connect(proxy.addr).await.expect("connect");
    let mut cuts: Vec<usize> = splits.iter().map(|f| at(input.len(), *f)).collect();
    cuts.push(input.len());
    cuts.sort_unstable();
    let mut from = 0;
    for cut in cuts {
        if stream.write_all(&input[from..cut]).await.is_err() {
            break;
        }
        from = cut;
    }

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut client_got = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    let (mut open, mut quiet) = (true, 0);
    let mut settled_now = false;
    while Instant::now() < deadline {
        if open {
            match tokio::time::timeout(Duration::from_millis(20), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => open = false,
                Ok(Ok(n)) => {
                    client_got.extend_from_slice(&buf[..n]);
                    quiet = 0;
                    continue;
                }
                Err(_) => {}
            }
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if settled(&proxy, &recording, &client_got) {
            // Four times in a row (80 ms), so that a request read but not yet dispatched is not
            // missed, even when a busy machine leaves the proxy unscheduled for a while.
            quiet += 1;
            if quiet >= 4 {
                settled_now = true;
                break;
            }
        } else {
            quiet = 0;
        }
    }
    drop(stream);
    drop(proxy);
    upstream.abort();
    let upstream = recording.lock().expect("recording").clone();
    Outcome {
        client_got,
        upstream,
        settled: settled_now,
    }
}

fn check(case: &Case) -> Result<(), TestCaseError> {
    let input = case.bytes();
    let outcome = runtime().block_on(run_case(&input, &case.splits));
    let sent = escaped(&input);
    let got = escaped(&outcome.client_got);
    for (i, conn) in outcome.upstream.iter().enumerate() {
        let received = escaped(&conn.bytes);
        prop_assert!(
            conn.violation.is_none(),
            "upstream connection {i}: {}\nupstream received: {received}\nclient sent: {sent}\nclient got: {got}",
            conn.violation.as_deref().unwrap_or_default()
        );
        let rest = &conn.bytes[conn.parsed..];
        prop_assert!(
            rest.is_empty() || conn.closed,
            "upstream connection {i} holds part of a request and is still open\n\
             upstream received: {received}\nclient sent: {sent}"
        );
    }
    let received: usize = outcome.upstream.iter().map(|c| c.complete).sum();
    let answered = count(&outcome.client_got, MARKER);
    prop_assert!(
        received <= answered,
        "the upstream received {received} requests but the client got {answered} upstream responses\n\
         client sent: {sent}\nclient got: {got}\nupstream received: {:?}",
        outcome.upstream.iter().map(|c| escaped(&c.bytes)).collect::<Vec<_>>()
    );
    prop_assert!(
        outcome.settled,
        "the exchange did not settle within 10 s\nclient sent: {sent}\nclient got: {got}"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(512),
        max_shrink_iters: 512,
        max_shrink_time: 120_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn upstream_gets_only_well_framed_requests(case in case()) {
        check(&case)?;
    }
}

/// The recording upstream's parser itself: it accepts what it must and refuses the rest, so
/// that the property above means what it says.
#[test]
fn the_upstream_parser_is_strict() {
    let complete = |bytes: &[u8]| match parse_request(bytes) {
        Ok(Parsed::Complete { len, .. }) => Some(len),
        _ => None,
    };
    let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nokGET";
    assert_eq!(complete(req), Some(req.len() - 3));
    let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n";
    assert_eq!(complete(chunked), Some(chunked.len()));
    assert!(matches!(
        parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nok"),
        Ok(Parsed::Partial { .. })
    ));
    for bad in [
        &b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\nok",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nokX\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00\r\n\r\n",
    ] {
        assert!(parse_request(bad).is_err(), "{}", escaped(bad));
    }
}

/// The generator must not just produce garbage the proxy refuses: a share of cases gets
/// requests through to the upstream, and some pipelined ones get several through.
#[test]
fn generated_cases_reach_the_upstream() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = case();
    let (total, mut reached, mut several, mut requests) = (60, 0, 0, 0);
    for _ in 0..total {
        let case = strategy.new_tree(&mut runner).expect("case").current();
        let outcome = runtime().block_on(run_case(&case.bytes(), &case.splits));
        let received: usize = outcome.upstream.iter().map(|c| c.complete).sum();
        requests += received;
        reached += usize::from(received > 0);
        several += usize::from(received > 1);
    }
    println!("of {total} cases: {reached} reached the upstream, {several} with several requests; {requests} requests in all");
    assert!(
        reached >= total / 5 && several >= 1,
        "the generated cases rarely reach the upstream: {reached} of {total}, {several} with several"
    );
}
