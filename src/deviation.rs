//! Deviation records: one JSON line per difference between what the upstream said and what
//! the contract says. The thread that handles the request makes the line in memory; a
//! background thread writes the lines out, so the request path never waits on IO.

mod line;

use crate::config::SinkTarget;
use crate::metrics::Metrics;
use crate::wire::digits3;
use http::Method;
pub use line::rfc3339_ms;
use line::{json_line, json_line_shaped, rfc3339_ms_digits, Stamps};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many records may wait for the writer, per worker thread, before new ones are dropped
/// (and counted).
pub const QUEUE_CAPACITY: usize = 16_384;

/// How long the writer lets lines gather after writing a batch: records reach the sink at
/// most this much later, and under load the request path never has to wake the writer. The
/// writer may share a CPU with a worker, and each wake-up costs both of them a context switch;
/// its work per batch is a write of lines already made, so a batch of 10 ms (about 750
/// records at 75k requests/s) holds a worker off its requests for well under a millisecond.
const BATCH_PAUSE: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The status was changed.
    Rewrote,
    /// Audit mode: the status would have been changed.
    WouldRewrite,
    /// No rule matched and the status is outside the documented set.
    Left,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Rewrote => "rewrote",
            Action::WouldRewrite => "would_rewrite",
            Action::Left => "left",
        }
    }
}

/// Who produced the status the rules looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Upstream,
    Proxy,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Proxy => "proxy",
        }
    }
}

/// What kind of deviation a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The status code differs from the contract.
    Status,
    /// The upstream answered an `Expect: 100-continue` request only after the body.
    ExpectIgnored,
    /// The upstream sent `100 Continue` to a request that did not ask for it.
    #[serde(rename = "unsolicited_100")]
    Unsolicited100,
    /// The upstream answered `417 Expectation Failed` to `Expect: 100-continue`; the request
    /// was sent again without it (RFC 9110 §10.1.1).
    ExpectRefused,
    /// The upstream's response head had field lines that are not valid HTTP; they were not
    /// relayed (RFC 9110 §5.1, §5.5).
    InvalidHeader,
    /// The upstream's response had both `Transfer-Encoding` and `Content-Length`; the body
    /// was read as chunked and the length dropped (RFC 9112 §6.3).
    ConflictingFraming,
    /// The upstream's body ended before its framing said it would, or stalled past its
    /// `response_timeout`, after the head had gone to the client; the client's response was
    /// aborted (RFC 9112 §8: an incomplete message).
    TruncatedBody,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::ExpectIgnored => "expect_ignored",
            Kind::Unsolicited100 => "unsolicited_100",
            Kind::ExpectRefused => "expect_refused",
            Kind::InvalidHeader => "invalid_header",
            Kind::ConflictingFraming => "conflicting_framing",
            Kind::TruncatedBody => "truncated_body",
        }
    }
}

/// One deviation. Holds no header values and no body bytes, so secrets stay out of logs. The
/// request path writes records that borrow its text (nothing is allocated or reference
/// counted per record); records read back are `Record<'static>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record<'a> {
    pub ts: Timestamp,
    pub request_id: Cow<'a, str>,
    pub route: Cow<'a, str>,
    pub rule: Option<Cow<'a, str>>,
    pub action: Action,
    pub kind: Kind,
    pub source: Source,
    /// Why restatus answered itself, when it did (`"source": "proxy"`): the failure's kind,
    /// such as `connect`, `timeout` or `invalid_response` (the labels of
    /// `restatus_upstream_errors_total`), or `check`, `body_too_large`, ... for the client's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cow<'a, str>>,
    #[serde(serialize_with = "method_str", deserialize_with = "method_from_str")]
    pub method: Method,
    pub path: Cow<'a, str>,
    pub upstream: Cow<'a, str>,
    pub upstream_status: u16,
    pub status: u16,
    /// In audit mode (`"action": "would_rewrite"`), the status the rule would have answered;
    /// `status` is the upstream's, which the client got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub would_status: Option<u16>,
    pub body_inspected: bool,
    /// Written as `null` when it is not a finite number, and read back from it as NaN.
    #[serde(deserialize_with = "number_or_null")]
    pub duration_ms: f64,
}

/// When a record was made, written as RFC 3339 in UTC with milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp(SystemTime::now())
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match rfc3339_ms_digits(self.0) {
            Some(digits) => f.write_str(std::str::from_utf8(&digits).unwrap_or_default()),
            None => f.write_str(&rfc3339_ms(self.0)),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn method_str<S: serde::Serializer>(method: &Method, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(method.as_str())
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Timestamp, D::Error> {
        let text = <&str>::deserialize(deserializer)?;
        let ms = crate::report::time::parse(text).map_err(serde::de::Error::custom)?;
        let offset = Duration::from_millis(ms.unsigned_abs());
        let time = match ms >= 0 {
            true => UNIX_EPOCH.checked_add(offset),
            false => UNIX_EPOCH.checked_sub(offset),
        };
        time.map(Timestamp)
            .ok_or_else(|| serde::de::Error::custom("timestamp out of range"))
    }
}

fn method_from_str<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Method, D::Error> {
    let text = <&str>::deserialize(deserializer)?;
    Method::from_bytes(text.as_bytes()).map_err(serde::de::Error::custom)
}

fn number_or_null<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// What a record is counted under in the metrics and in the admin page's totals.
#[derive(Debug, Clone)]
pub struct Labels {
    pub route: Arc<str>,
    pub rule: Option<Arc<str>>,
    pub action: Action,
    pub kind: Kind,
    pub upstream_status: u16,
    pub status: u16,
    pub would_status: Option<u16>,
    /// Who made `upstream_status`: the service, or restatus itself (a 502, a check's 403).
    pub source: Source,
}

impl Labels {
    fn of(record: &Record) -> Labels {
        Labels {
            route: Arc::from(&*record.route),
            rule: record.rule.as_deref().map(Arc::from),
            action: record.action,
            kind: record.kind,
            upstream_status: record.upstream_status,
            status: record.status,
            would_status: record.would_status,
            source: record.source,
        }
    }

    /// Whether `record` counts under these labels.
    fn matches(&self, record: &Record) -> bool {
        self.upstream_status == record.upstream_status
            && self.status == record.status
            && self.would_status == record.would_status
            && self.source == record.source
            && self.action == record.action
            && self.kind == record.kind
            && *self.route == *record.route
            && self.rule.as_deref() == record.rule.as_deref()
    }
}

/// A request to the writer, carried out after the records written before it.
enum Control {
    Flush(mpsc::Sender<()>),
    /// Reopen the sink (logrotate moved the file away) or switch to a new one (reload).
    Reopen(SinkTarget),
}

/// How many slots records are written into. A thread keeps to one slot, so worker threads
/// rarely share a lock; more threads than slots share slots, which is correct, only slower.
const SLOTS: usize = 16;

/// Most shapes tallied per batch in a slot; records past it are made whole and counted one
/// by one.
const MAX_TALLIES: usize = 32;

/// Lines waiting for the writer, and their records counted by shape.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    lines: usize,
    tallies: Vec<Tally>,
}

/// The records of one shape in a batch: what they are counted under, and the text their
/// lines share (all but the time, request id, path and duration). A steady stream of
/// deviations has a handful of shapes, so a line is mostly copied rather than made.
struct Tally {
    labels: Labels,
    method: Method,
    upstream: Box<str>,
    body_inspected: bool,
    cause: Option<Box<str>>,
    /// The line's text from the route to the path, and from the upstream to the duration.
    middle: Vec<u8>,
    tail: Vec<u8>,
    count: u64,
}

impl Tally {
    fn of(record: &Record) -> Tally {
        let (mut middle, mut tail) = (Vec::new(), Vec::new());
        line::middle(&mut middle, record);
        line::tail(&mut tail, record);
        Tally {
            labels: Labels::of(record),
            method: record.method.clone(),
            upstream: Box::from(&*record.upstream),
            body_inspected: record.body_inspected,
            cause: record.cause.as_deref().map(Box::from),
            middle,
            tail,
            count: 0,
        }
    }

    /// Whether `record`'s line shares this text.
    fn matches(&self, record: &Record) -> bool {
        self.labels.matches(record)
            && self.body_inspected == record.body_inspected
            && self.method == record.method
            && *self.upstream == *record.upstream
            && self.cause.as_deref() == record.cause.as_deref()
    }
}

impl Batch {
    /// Adds `record`'s line and counts it under its shape; `false` if it was not counted,
    /// because `MAX_TALLIES` other shapes are held.
    fn add(&mut self, record: &Record, stamps: &mut Stamps) -> bool {
        self.lines += 1;
        let at = match self.tallies.iter().position(|t| t.matches(record)) {
            Some(at) => at,
            None if self.tallies.len() < MAX_TALLIES => {
                self.tallies.push(Tally::of(record));
                self.tallies.len() - 1
            }
            None => {
                json_line(&mut self.bytes, record, stamps);
                return false;
            }
        };
        let tally = &mut self.tallies[at];
        tally.count += 1;
        json_line_shaped(
            &mut self.bytes,
            record,
            stamps,
            (&tally.middle, &tally.tail),
        );
        true
    }
}

/// Where records go. A record is made into its line by the thread that writes it: the line
/// costs the same on any thread, and made in place it takes no allocation, no copy of the
/// record and no memory freed on another thread.
#[derive(Default)]
struct Lines {
    batch: Batch,
    stamps: Stamps,
}

/// A slot on cache lines of its own, so threads on neighbouring slots do not slow each other.
#[repr(align(128))]
#[derive(Default)]
struct Slot(Mutex<Lines>);

/// Where each slot's batch stood when a control was asked for: (bytes, lines).
type Marks = [(usize, usize); SLOTS];

#[derive(Default)]
struct Pending {
    /// Each control with the place in every slot's batch it comes after.
    controls: Vec<(Marks, Control)>,
    /// The log was dropped: the writer writes what is left and ends.
    closed: bool,
}

#[derive(Default)]
struct Queue {
    slots: [Slot; SLOTS],
    pending: Mutex<Pending>,
    /// The writer waits on `ready` and must be woken for the next record.
    parked: AtomicBool,
    ready: Condvar,
}

/// Locks `mutex`; a thread that panicked while holding it leaves it usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The slot of the calling thread: threads are dealt slots in turn.
fn slot_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|slot| *slot)
}

impl Queue {
    /// Wakes the writer if it waits (it is not woken per record while it is busy or paused).
    /// The writer sets `parked` before it looks at the slots, and a record is in its slot
    /// before `parked` is read here, so either the writer sees the record or this sees it
    /// parked.
    fn wake(&self) {
        if self.parked.load(Ordering::SeqCst) {
            let _pending = lock(&self.pending);
            if self.parked.swap(false, Ordering::SeqCst) {
                self.ready.notify_one();
            }
        }
    }

    fn control(&self, control: Control) {
        let mut pending = lock(&self.pending);
        let marks = std::array::from_fn(|at| {
            let lines = lock(&self.slots[at].0);
            (lines.batch.bytes.len(), lines.batch.lines)
        });
        pending.controls.push((marks, control));
        self.parked.store(false, Ordering::SeqCst);
        self.ready.notify_one();
    }

    /// Waits for records or a control and takes them all, swapping each slot's batch with an
    /// empty one of `batches`; `false` once closed and empty.
    fn take(&self, batches: &mut [Batch; SLOTS], controls: &mut Vec<(Marks, Control)>) -> bool {
        let mut pending = lock(&self.pending);
        loop {
            self.parked.store(true, Ordering::SeqCst);
            let found = self.swap_slots(batches);
            if found || !pending.controls.is_empty() {
                self.parked.store(false, Ordering::SeqCst);
                std::mem::swap(&mut pending.controls, controls);
                return true;
            }
            if pending.closed {
                return false;
            }
            pending = self
                .ready
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
    }

    fn swap_slots(&self, batches: &mut [Batch; SLOTS]) -> bool {
        let mut found = false;
        for (slot, batch) in self.slots.iter().zip(batches.iter_mut()) {
            let mut lines = lock(&slot.0);
            if !lines.batch.bytes.is_empty() {
                std::mem::swap(&mut lines.batch, batch);
                found = true;
            }
        }
        found
    }
}

/// State the writer thread updates and readers look at.
#[derive(Default)]
struct Shared {
    written: AtomicU64,
    recent: Mutex<Recent>,
    counts: Mutex<Counts>,
    metrics: OnceLock<Arc<Metrics>>,
}

/// Running totals of the records written, for the admin page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// route -> rule -> records. A status left as it was counts under `-`, a protocol
    /// record no rule made under its kind in parentheses, like `(expect_ignored)`.
    pub by_rule: BTreeMap<String, BTreeMap<String, u64>>,
    /// route -> `upstream->final` status pair -> records, of status records only: a
    /// protocol record's statuses say nothing about the code. A pair whose first status the
    /// proxy made itself (a 502 for a dead service, a check's 403) starts with `proxy `.
    pub by_status: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Counts {
    /// Adds `count` records labelled `labels`.
    fn add(&mut self, labels: &Labels, count: u64) {
        let rule = match (labels.rule.as_deref(), labels.kind) {
            (Some(rule), _) => rule,
            (None, Kind::Status) => "-",
            (None, Kind::ExpectIgnored) => "(expect_ignored)",
            (None, Kind::Unsolicited100) => "(unsolicited_100)",
            (None, Kind::ExpectRefused) => "(expect_refused)",
            (None, Kind::InvalidHeader) => "(invalid_header)",
            (None, Kind::ConflictingFraming) => "(conflicting_framing)",
            (None, Kind::TruncatedBody) => "(truncated_body)",
        };
        bump(&mut self.by_rule, &labels.route, rule, count);
        if labels.kind != Kind::Status {
            return;
        }
        let mut pair = [0u8; 12];
        let pair = match labels.would_status {
            // Audit mode: what the rule would have answered, in parentheses.
            Some(would) => audit_pair(labels.upstream_status, would, &mut pair),
            None => status_pair(labels.upstream_status, labels.status, &mut pair),
        };
        match labels.source {
            Source::Upstream => bump(&mut self.by_status, &labels.route, pair, count),
            // The service never saw these: its owners must not read them as its own.
            Source::Proxy => {
                let pair = format!("{PROXY_MADE}{pair}");
                bump(&mut self.by_status, &labels.route, &pair, count);
            }
        }
    }
}

/// Marks a status pair in `Counts::by_status` whose first status restatus made itself.
pub const PROXY_MADE: &str = "proxy ";

/// `"200->201"`, written without formatting (statuses are three digits).
fn status_pair(from: u16, to: u16, out: &mut [u8; 12]) -> &str {
    out[..3].copy_from_slice(&digits3(u32::from(from)));
    out[3..5].copy_from_slice(b"->");
    out[5..8].copy_from_slice(&digits3(u32::from(to)));
    std::str::from_utf8(&out[..8]).unwrap_or("")
}

/// `"200->(404)"`: in audit mode, the status the rule would have answered.
fn audit_pair(from: u16, would: u16, out: &mut [u8; 12]) -> &str {
    out[..3].copy_from_slice(&digits3(u32::from(from)));
    out[3..6].copy_from_slice(b"->(");
    out[6..9].copy_from_slice(&digits3(u32::from(would)));
    out[9] = b')';
    std::str::from_utf8(&out[..10]).unwrap_or("")
}

/// Adds `count` to `map[route][key]`, allocating keys only the first time they are seen.
fn bump(map: &mut BTreeMap<String, BTreeMap<String, u64>>, route: &str, key: &str, count: u64) {
    if !map.contains_key(route) {
        map.insert(route.to_string(), BTreeMap::new());
    }
    let Some(inner) = map.get_mut(route) else {
        return;
    };
    match inner.get_mut(key) {
        Some(total) => *total += count,
        None => {
            inner.insert(key.to_string(), count);
        }
    }
}

/// How many of the latest records are kept in memory (for the admin page and the demo).
pub const RECENT_CAPACITY: usize = 1000;

/// The written batches that hold the latest `RECENT_CAPACITY` records, kept as lines: they
/// are read back only when someone looks, which is rare next to writing them.
#[derive(Default)]
struct Recent {
    batches: VecDeque<(Vec<u8>, usize)>,
    lines: usize,
}

/// Largest buffer kept for reuse; one that grew past it while the sink was stuck is freed.
const SPARE_CAPACITY: usize = 1 << 20;

impl Recent {
    /// Keeps `bytes` (`lines` lines) and returns an empty buffer to fill next, one that falls
    /// out of the latest records if there is one.
    fn keep(&mut self, bytes: Vec<u8>, lines: usize) -> Vec<u8> {
        self.batches.push_back((bytes, lines));
        self.lines += lines;
        let mut spare = Vec::new();
        while let Some(&(_, oldest)) = self.batches.front() {
            if self.lines - oldest < RECENT_CAPACITY {
                break;
            }
            if let Some((bytes, _)) = self.batches.pop_front() {
                spare = bytes;
            }
            self.lines -= oldest;
        }
        spare.clear();
        if spare.capacity() > SPARE_CAPACITY {
            spare = Vec::new();
        }
        spare
    }

    /// The lines of the latest records, copied: parsing them takes far longer than the copy,
    /// and the writer waits on this lock.
    fn lines(&self) -> Vec<u8> {
        let mut lines = Vec::with_capacity(self.batches.iter().map(|(b, _)| b.len()).sum());
        for (bytes, _) in &self.batches {
            lines.extend_from_slice(bytes);
        }
        lines
    }
}

/// The latest records, oldest first: read back from their lines.
fn records(lines: &[u8]) -> Vec<Record<'static>> {
    let lines = lines.split(|b| *b == b'\n').filter(|line| !line.is_empty());
    let mut records: Vec<Record<'static>> = lines
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    // Batches of different threads interleave; the sort is stable, so a thread's records of
    // one millisecond keep their order.
    records.sort_by_key(|record| record.ts.0);
    let skip = records.len().saturating_sub(RECENT_CAPACITY);
    records.drain(..skip);
    records
}

/// The deviation log: lines made by the threads that handle requests, written out by a
/// writer thread.
pub struct DeviationLog {
    queue: Arc<Queue>,
    capacity: usize,
    shared: Arc<Shared>,
    dropped: AtomicU64,
}

impl DeviationLog {
    /// Starts the writer for `target`. A file is opened for appending now, so a bad path is
    /// reported at start rather than lost later.
    pub fn start(target: &SinkTarget) -> std::io::Result<DeviationLog> {
        DeviationLog::with_writer(open(target)?)
    }

    /// Starts the writer on any byte sink.
    pub fn with_writer(out: Box<dyn Write + Send>) -> std::io::Result<DeviationLog> {
        DeviationLog::with_capacity(out, QUEUE_CAPACITY)
    }

    /// Starts the writer on any byte sink, with room for `capacity` waiting records per
    /// worker thread.
    pub fn with_capacity(
        out: Box<dyn Write + Send>,
        capacity: usize,
    ) -> std::io::Result<DeviationLog> {
        let queue = Arc::new(Queue::default());
        let shared = Arc::new(Shared::default());
        let (taken, state) = (queue.clone(), shared.clone());
        std::thread::Builder::new()
            .name("restatus-deviations".into())
            .spawn(move || write_loop(&taken, out, &state))?;
        Ok(DeviationLog {
            queue,
            capacity,
            shared,
            dropped: AtomicU64::new(0),
        })
    }

    /// The latest records written, oldest first.
    pub fn recent(&self) -> Vec<Record<'static>> {
        let lines = lock(&self.shared.recent).lines();
        records(&lines)
    }

    /// Makes the record's line for the writer; never blocks on IO. When the writer is that
    /// far behind, the record is dropped and counted.
    pub fn write(&self, record: &Record) {
        let slot = &self.queue.slots[slot_index()];
        let tallied = {
            let mut lines = lock(&slot.0);
            if lines.batch.lines >= self.capacity {
                drop(lines);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let Lines { batch, stamps } = &mut *lines;
            batch.add(record, stamps)
        };
        if !tallied {
            account(&self.shared, [(&Labels::of(record), 1)]);
        }
        self.queue.wake();
    }

    /// Totals per route of the records written so far.
    pub fn counts(&self) -> Counts {
        lock(&self.shared.counts).clone()
    }

    /// Counts every record written in `metrics` from now on (once; later calls are ignored).
    pub fn observe(&self, metrics: Arc<Metrics>) {
        let _ = self.shared.metrics.set(metrics);
    }

    /// Asks the writer to reopen `target`; if it cannot be opened the old sink is kept.
    pub fn reopen(&self, target: SinkTarget) {
        self.queue.control(Control::Reopen(target));
    }

    /// Records written to the sink so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Records dropped because the writer was too far behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until every record written so far is in the sink and flushed.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        self.queue.control(Control::Flush(ack));
        done.recv_timeout(timeout).is_ok()
    }
}

impl Drop for DeviationLog {
    /// The writer writes what is waiting, then ends.
    fn drop(&mut self) {
        let mut pending = lock(&self.queue.pending);
        pending.closed = true;
        self.queue.parked.store(false, Ordering::SeqCst);
        self.queue.ready.notify_one();
    }
}

fn open(target: &SinkTarget) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match target {
        SinkTarget::Stdout => Box::new(std::io::stdout()),
        SinkTarget::Stderr => Box::new(std::io::stderr()),
        SinkTarget::File(path) => {
            let file: File = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|err| {
                    std::io::Error::new(
                        err.kind(),
                        format!("cannot open deviation sink {}: {err}", path.display()),
                    )
                })?;
            Box::new(file)
        }
    })
}

fn write_loop(queue: &Queue, out: Box<dyn Write + Send>, shared: &Shared) {
    let mut sink = Sink {
        out,
        written: &shared.written,
    };
    let mut batches: [Batch; SLOTS] = Default::default();
    let mut controls = Vec::new();
    let mut acks = Vec::new();
    while queue.take(&mut batches, &mut controls) {
        let mut done: Marks = [(0, 0); SLOTS];
        for (marks, control) in controls.drain(..) {
            // The records written before the control go to the sink before it is carried out.
            sink.write_to(&batches, &mut done, &marks);
            match control {
                // Answered once the batch is counted and among the latest records too.
                Control::Flush(ack) => acks.push(ack),
                Control::Reopen(target) => sink.reopen(&target),
            }
        }
        let ends = std::array::from_fn(|at| (batches[at].bytes.len(), batches[at].lines));
        sink.write_to(&batches, &mut done, &ends);
        sink.flush();
        finish(shared, &mut batches);
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        // A writer waiting on the queue is woken (a futex call and a context switch) by the
        // next record; pausing after each batch lets records gather, so a steady stream costs
        // one wake-up per pause instead of one per record.
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// Counts the written batches and keeps their lines among the latest records, leaving each
/// batch empty for the next round.
fn finish(shared: &Shared, batches: &mut [Batch; SLOTS]) {
    for batch in batches.iter_mut() {
        account(shared, batch.tallies.iter().map(|t| (&t.labels, t.count)));
        batch.tallies.clear();
    }
    let mut recent = lock(&shared.recent);
    for batch in batches.iter_mut().filter(|batch| batch.lines > 0) {
        let bytes = std::mem::take(&mut batch.bytes);
        batch.bytes = recent.keep(bytes, std::mem::take(&mut batch.lines));
    }
}

/// Counts records in the metrics and the totals, once per label set.
fn account<'a>(shared: &Shared, tallies: impl IntoIterator<Item = (&'a Labels, u64)>) {
    let mut tallies = tallies.into_iter().peekable();
    if tallies.peek().is_none() {
        return;
    }
    let metrics = shared.metrics.get();
    let mut counts = lock(&shared.counts);
    for (labels, count) in tallies {
        if let Some(metrics) = metrics {
            metrics.deviation(labels, count);
        }
        counts.add(labels, count);
    }
}

/// The sink, and how many records have reached it.
struct Sink<'a> {
    out: Box<dyn Write + Send>,
    written: &'a AtomicU64,
}

impl Sink<'_> {
    /// Writes each batch from where `done` says up to `marks`. Lines that cannot be written
    /// are dropped with an error, so a broken sink does not hold memory.
    fn write_to(&mut self, batches: &[Batch; SLOTS], done: &mut Marks, marks: &Marks) {
        for ((batch, done), &(to, lines)) in batches.iter().zip(done.iter_mut()).zip(marks) {
            let (from, before) = *done;
            if to <= from {
                continue;
            }
            *done = (to, lines);
            let count = (lines - before) as u64;
            match self.out.write_all(&batch.bytes[from..to]) {
                Ok(()) => {
                    self.written.fetch_add(count, Ordering::Relaxed);
                }
                Err(err) => {
                    tracing::error!(error = %err, records = count, "cannot write deviation records");
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Err(err) = self.out.flush() {
            tracing::error!(error = %err, "cannot flush deviation records");
        }
    }

    fn reopen(&mut self, target: &SinkTarget) {
        self.flush();
        match open(target) {
            Ok(new) => {
                self.out = new;
                tracing::info!(sink = ?target, "deviation sink reopened");
            }
            Err(err) => {
                tracing::error!(sink = ?target, error = %err, "cannot reopen the deviation sink; keeping the old one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::line::tests::record;
    use super::*;

    /// A sink that keeps what is written, for tests to look at.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Vec<u8>>>);

    impl Write for Kept {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_are_counted_per_record_whatever_their_mix() {
        let metrics = Arc::new(Metrics::new());
        let log = DeviationLog::with_writer(Box::new(Kept::default())).expect("log");
        log.observe(metrics.clone());
        // 35 routes: more label sets than a batch tallies, so some are counted one by one.
        let records = (0..40)
            .map(|i| record(&format!("route{}", i % 35), 201))
            .chain([record("route0", 404), record("route0", 201)]);
        for record in records {
            log.write(&record);
        }
        assert!(log.flush(Duration::from_secs(10)));
        let text = metrics.encode(0);
        let line = |route: &str, status: u16| {
            text.lines()
                .find(|l| {
                    l.starts_with("restatus_deviations_total{")
                        && l.contains(&format!("route=\"{route}\""))
                        && l.contains(&format!("status=\"{status}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap_or("").to_string())
        };
        // route0..route4 appear twice in the first 40, route0 once more with 201.
        assert_eq!(line("route0", 201).as_deref(), Some("3"), "{text}");
        assert_eq!(line("route4", 201).as_deref(), Some("2"), "{text}");
        assert_eq!(line("route34", 201).as_deref(), Some("1"), "{text}");
        assert_eq!(line("route0", 404).as_deref(), Some("1"), "{text}");
        assert!(text.contains("source=\"upstream\""), "{text}");
        let counts = log.counts();
        assert_eq!(counts.by_status["route0"]["200->201"], 3);
        assert_eq!(counts.by_status["route0"]["200->404"], 1);
        assert_eq!(counts.by_status["route34"]["200->201"], 1);
        assert_eq!(counts.by_rule["route0"]["r"], 4);
        assert_eq!(log.recent().len(), 42);
        assert_eq!(log.written(), 42);
    }

    #[test]
    fn records_counted_together_keep_their_own_fields() {
        let kept = Kept::default();
        let log = DeviationLog::with_writer(Box::new(kept.clone())).expect("log");
        // The same labels (route, rule, statuses): one count, but every field of every
        // line is its record's own.
        let first = record("app", 201);
        let mut records = vec![first.clone(); 5];
        records[1].method = Method::POST;
        records[2].upstream = "other".into();
        records[3].source = Source::Proxy;
        records[4].body_inspected = true;
        records.push(first.clone());
        records.push(Record {
            source: Source::Proxy,
            cause: Some("timeout".into()),
            ..first.clone()
        });
        records.push(Record {
            source: Source::Proxy,
            cause: Some("connect".into()),
            ..first
        });
        for (at, record) in records.iter_mut().enumerate() {
            record.request_id = format!("id-{at}").into();
            record.path = format!("/item/{at}").into();
            record.duration_ms = at as f64;
            log.write(record);
        }
        assert!(log.flush(Duration::from_secs(10)));
        let written = String::from_utf8(lock(&kept.0).clone()).expect("utf-8");
        let want: String = records
            .iter()
            .map(|r| serde_json::to_string(r).expect("serializes") + "\n")
            .collect();
        assert_eq!(written, want);
        let counts = log.counts();
        assert_eq!(counts.by_status["app"]["200->201"], 5);
        assert_eq!(
            counts.by_status["app"]["proxy 200->201"], 3,
            "the proxy's own apart"
        );
    }

    #[test]
    fn records_read_back_as_they_were_written() {
        let kept = Kept::default();
        let log = DeviationLog::with_writer(Box::new(kept.clone())).expect("log");
        let mut first = record("app", 201);
        first.ts = Timestamp(UNIX_EPOCH + Duration::from_millis(1_795_556_470_456));
        first.request_id = "tab\there".into();
        first.method = Method::from_bytes(b"PROPFIND").expect("method");
        first.duration_ms = 0.412;
        let mut second = record("app", 404);
        second.ts = Timestamp(first.ts.0 + Duration::from_millis(1));
        second.rule = None;
        second.duration_ms = f64::NAN;
        log.write(&first);
        log.write(&second);
        assert!(log.flush(Duration::from_secs(10)));
        let recent = log.recent();
        let text = |r: &Record| serde_json::to_string(r).expect("serializes");
        assert_eq!(recent.len(), 2);
        assert_eq!(text(&recent[0]), text(&first));
        assert_eq!(text(&recent[1]), text(&second));
        let written = String::from_utf8(lock(&kept.0).clone()).expect("utf-8");
        assert_eq!(written, format!("{}\n{}\n", text(&first), text(&second)));
    }

    #[test]
    fn only_the_latest_records_are_kept() {
        let log = DeviationLog::with_writer(Box::new(Kept::default())).expect("log");
        let total = RECENT_CAPACITY as u64 * 3 + 17;
        for i in 0..total {
            let mut record = record("app", 201);
            record.ts = Timestamp(UNIX_EPOCH + Duration::from_millis(i));
            log.write(&record);
            if i % 700 == 0 {
                // Several batches, so old ones are let go and their buffers used again.
                assert!(log.flush(Duration::from_secs(10)));
            }
        }
        assert!(log.flush(Duration::from_secs(10)));
        let recent = log.recent();
        assert_eq!(recent.len(), RECENT_CAPACITY);
        let first = total - RECENT_CAPACITY as u64;
        assert_eq!(
            recent[0].ts,
            Timestamp(UNIX_EPOCH + Duration::from_millis(first))
        );
        assert_eq!(log.written(), total);
    }

    #[test]
    fn records_of_many_threads_all_reach_the_sink() {
        let kept = Kept::default();
        let log = Arc::new(DeviationLog::with_writer(Box::new(kept.clone())).expect("log"));
        let threads: Vec<_> = (0..SLOTS + 3)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..500 {
                        log.write(&record(&format!("route{t}"), 201));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().expect("thread");
        }
        assert!(log.flush(Duration::from_secs(10)));
        let total = (SLOTS as u64 + 3) * 500;
        assert_eq!(log.written(), total);
        let text = String::from_utf8(lock(&kept.0).clone()).expect("utf-8");
        assert_eq!(text.lines().count() as u64, total);
        for t in 0..SLOTS + 3 {
            let route = format!("\"route\":\"route{t}\"");
            assert_eq!(text.lines().filter(|l| l.contains(&route)).count(), 500);
            assert_eq!(log.counts().by_rule[&format!("route{t}")]["r"], 500);
        }
    }

    #[test]
    fn a_reopen_comes_between_the_records_queued_around_it() {
        let dir = std::env::temp_dir().join(format!("restatus-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (old, new) = (dir.join("old.jsonl"), dir.join("new.jsonl"));
        let log = DeviationLog::start(&SinkTarget::File(old.clone())).expect("log");
        let lines = |path: &std::path::Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            text.lines()
                .map(|l| l.contains("\"status\":201"))
                .collect::<Vec<_>>()
        };
        // Queued in one go, so the writer takes them as one batch.
        log.write(&record("app", 201));
        log.write(&record("app", 201));
        log.reopen(SinkTarget::File(new.clone()));
        log.write(&record("app", 404));
        assert!(log.flush(Duration::from_secs(10)));
        assert_eq!(lines(&old), [true, true]);
        assert_eq!(lines(&new), [false]);
        assert_eq!(log.written(), 3);
        assert_eq!(log.recent().len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn status_pairs() {
        assert_eq!(status_pair(200, 201, &mut [0; 12]), "200->201");
        assert_eq!(status_pair(599, 100, &mut [0; 12]), "599->100");
    }
}
