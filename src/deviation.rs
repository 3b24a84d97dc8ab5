//! Deviation records: one JSON line per difference between what the upstream said and what
//! the contract says, written by a background thread so the request path never waits on IO.

use crate::config::SinkTarget;
use crate::metrics::Metrics;
use crate::wire::decimal;
use http::Method;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How many records may wait for the writer before new ones are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 16_384;

/// How long the writer lets records gather after writing a batch: records reach the sink at
/// most this much later, and under load the request path never has to wake the writer. Short,
/// because the writer may share a CPU with a worker: a 20 ms batch (1,500 records at 75k
/// requests/s) held the worker off its requests long enough to show in the p99 latency.
const BATCH_PAUSE: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The status code differs from the contract.
    Status,
    /// The upstream answered an `Expect: 100-continue` request only after the body.
    ExpectIgnored,
    /// The upstream sent `100 Continue` to a request that did not ask for it.
    #[serde(rename = "unsolicited_100")]
    Unsolicited100,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::ExpectIgnored => "expect_ignored",
            Kind::Unsolicited100 => "unsolicited_100",
        }
    }
}

/// One deviation. Holds no header values and no body bytes, so secrets stay out of logs.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub ts: Timestamp,
    pub request_id: String,
    pub route: Arc<str>,
    pub rule: Option<Arc<str>>,
    pub action: Action,
    pub kind: Kind,
    pub source: Source,
    #[serde(serialize_with = "method_str")]
    pub method: Method,
    pub path: String,
    pub upstream: Arc<str>,
    pub upstream_status: u16,
    pub status: u16,
    pub body_inspected: bool,
    pub duration_ms: f64,
}

/// When a record was made, written as RFC 3339 in UTC with milliseconds. It is kept as a time
/// and formatted when the record is written, so the request path does not format or allocate.
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

/// A request to the writer, kept in order with the records around it.
enum Control {
    Flush(mpsc::Sender<()>),
    /// Reopen the sink (logrotate moved the file away) or switch to a new one (reload).
    Reopen(SinkTarget),
}

/// What waits for the writer. Records go into a plain vector under a lock rather than through
/// a channel: no allocation per record, and one uncontended lock is the whole cost of queueing.
#[derive(Default)]
struct Pending {
    records: Vec<Record>,
    /// Each control with the number of `records` queued before it.
    controls: Vec<(usize, Control)>,
    /// The writer waits on the condition variable and must be woken for the next message.
    parked: bool,
    /// The log was dropped: the writer writes what is left and ends.
    closed: bool,
}

/// How many of the latest records are kept in memory (for the admin page and the demo).
pub const RECENT_CAPACITY: usize = 1000;

/// The deviation log: a bounded queue in front of a writer thread.
pub struct DeviationLog {
    queue: Arc<Queue>,
    capacity: usize,
    shared: Arc<Shared>,
    dropped: AtomicU64,
}

#[derive(Default)]
struct Queue {
    pending: Mutex<Pending>,
    ready: Condvar,
}

impl Queue {
    /// Locks the queue; a writer thread that panicked leaves it usable.
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the writer if it waits (it is not woken per record while it is busy or paused).
    fn wake(&self, pending: &mut Pending) {
        if pending.parked {
            pending.parked = false;
            self.ready.notify_one();
        }
    }

    fn control(&self, control: Control) {
        let mut pending = self.lock();
        let at = pending.records.len();
        pending.controls.push((at, control));
        self.wake(&mut pending);
    }

    /// Waits for something to write and takes all of it; `false` once closed and empty.
    fn take(&self, records: &mut Vec<Record>, controls: &mut Vec<(usize, Control)>) -> bool {
        let mut pending = self.lock();
        while pending.records.is_empty() && pending.controls.is_empty() {
            if pending.closed {
                return false;
            }
            pending.parked = true;
            pending = self
                .ready
                .wait(pending)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        pending.parked = false;
        std::mem::swap(&mut pending.records, records);
        std::mem::swap(&mut pending.controls, controls);
        true
    }
}

/// State the writer thread updates and readers look at.
#[derive(Default)]
struct Shared {
    written: AtomicU64,
    recent: Mutex<VecDeque<Record>>,
    counts: Mutex<Counts>,
    metrics: OnceLock<Arc<Metrics>>,
}

/// Running totals of the records written, for the admin page.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    /// route -> rule (or `-` for records without a rule) -> records.
    pub by_rule: BTreeMap<String, BTreeMap<String, u64>>,
    /// route -> `upstream->final` status pair -> records.
    pub by_status: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Counts {
    /// Adds `count` records labelled like `record`.
    fn add(&mut self, record: &Record, count: u64) {
        let rule = record.rule.as_deref().unwrap_or("-");
        bump(&mut self.by_rule, &record.route, rule, count);
        let mut pair = [0u8; 12];
        let pair = status_pair(record.upstream_status, record.status, &mut pair);
        bump(&mut self.by_status, &record.route, pair, count);
    }
}

/// `"200->201"`, written without formatting (statuses are three digits).
fn status_pair(from: u16, to: u16, out: &mut [u8; 12]) -> &str {
    out[..3].copy_from_slice(&digits3(u32::from(from)));
    out[3..5].copy_from_slice(b"->");
    out[5..8].copy_from_slice(&digits3(u32::from(to)));
    std::str::from_utf8(&out[..8]).unwrap_or("")
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

    /// Starts the writer on any byte sink, with room for `capacity` waiting records.
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
    pub fn recent(&self) -> Vec<Record> {
        match self.shared.recent.lock() {
            Ok(recent) => recent.iter().cloned().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Queues a record; never blocks. A full queue drops the record and counts it.
    pub fn write(&self, record: Record) {
        let mut pending = self.queue.lock();
        if pending.records.len() >= self.capacity {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.records.push(record);
        self.queue.wake(&mut pending);
    }

    /// Totals per route of the records written so far.
    pub fn counts(&self) -> Counts {
        match self.shared.counts.lock() {
            Ok(counts) => counts.clone(),
            Err(_) => Counts::default(),
        }
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

    /// Records dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Waits (at most `timeout`) until every record queued so far is written and flushed.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        self.queue.control(Control::Flush(ack));
        done.recv_timeout(timeout).is_ok()
    }
}

impl Drop for DeviationLog {
    /// The writer writes what is queued, then ends.
    fn drop(&mut self) {
        let mut pending = self.queue.lock();
        pending.closed = true;
        self.queue.wake(&mut pending);
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
    let mut sink = Sink::new(out, &shared.written);
    let mut records = Vec::new();
    let mut controls = Vec::new();
    while queue.take(&mut records, &mut controls) {
        let mut done = 0;
        for (at, control) in controls.drain(..) {
            // The records queued before the control are written before it is carried out.
            let rest = records.split_off(at - done);
            done = at;
            write_records(&mut sink, &mut records, shared);
            records = rest;
            match control {
                Control::Flush(ack) => {
                    sink.flush();
                    let _ = ack.send(());
                }
                Control::Reopen(target) => sink.reopen(&target),
            }
        }
        write_records(&mut sink, &mut records, shared);
        sink.flush();
        // A writer waiting on the queue is woken (a futex call and a context switch) by the
        // next record; pausing after each batch lets records gather, so a steady stream costs
        // one wake-up per pause instead of one per record. The queue holds far more than a
        // pause's worth.
        std::thread::sleep(BATCH_PAUSE);
    }
}

/// Writes a batch's lines and moves its records on to the counts and the recent list.
fn write_records(sink: &mut Sink, records: &mut Vec<Record>, shared: &Shared) {
    for record in records.iter() {
        sink.line(record);
    }
    account(shared, records);
}

/// How many bytes of lines are gathered before they are written.
const SINK_BUFFER: usize = 64 << 10;

/// The sink and the lines not yet written to it. Lines are made in place in the buffer, which
/// goes out in one write per batch (or whenever it is full).
struct Sink<'a> {
    out: Box<dyn Write + Send>,
    buffer: Vec<u8>,
    /// Lines in `buffer`, counted in `written` once the buffer is written.
    lines: u64,
    written: &'a AtomicU64,
    stamps: Stamps,
}

impl<'a> Sink<'a> {
    fn new(out: Box<dyn Write + Send>, written: &'a AtomicU64) -> Sink<'a> {
        Sink {
            out,
            buffer: Vec::with_capacity(SINK_BUFFER + 1024),
            lines: 0,
            written,
            stamps: Stamps::default(),
        }
    }

    fn line(&mut self, record: &Record) {
        json_line(&mut self.buffer, record, &mut self.stamps);
        self.lines += 1;
        if self.buffer.len() >= SINK_BUFFER {
            self.write();
        }
    }

    /// Writes the buffered lines. Lines that cannot be written are dropped with an error, so
    /// a broken sink does not hold memory.
    fn write(&mut self) {
        if self.buffer.is_empty() {
            return;
        }
        match self.out.write_all(&self.buffer) {
            Ok(()) => {
                self.written.fetch_add(self.lines, Ordering::Relaxed);
            }
            Err(err) => {
                tracing::error!(error = %err, records = self.lines, "cannot write deviation records");
            }
        }
        self.buffer.clear();
        self.lines = 0;
    }

    fn flush(&mut self) {
        self.write();
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

/// The RFC 3339 text of the second last written: the records of one second differ only in
/// their milliseconds, and working out a date costs more than the rest of a line.
#[derive(Default)]
struct Stamps {
    second: Option<u64>,
    text: [u8; 24],
}

impl Stamps {
    fn write(&mut self, line: &mut Vec<u8>, time: SystemTime) {
        let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        if self.second != Some(since.as_secs()) {
            let Some(text) = rfc3339_ms_digits(time) else {
                line.extend_from_slice(rfc3339_ms(time).as_bytes());
                return;
            };
            self.text = text;
            self.second = Some(since.as_secs());
        }
        let mut text = self.text;
        let ms = since.subsec_millis();
        text[20..23].copy_from_slice(&digits3(ms));
        line.extend_from_slice(&text);
    }
}

/// The three decimal digits of `n` (below 1,000).
fn digits3(n: u32) -> [u8; 3] {
    [
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]
}

/// The record as one line of JSON, the same text `serde_json` makes of it (a test holds the
/// two together). Written by hand because serde's escaping goes byte by byte, and this runs
/// once per record on the proxy's CPU.
fn json_line(line: &mut Vec<u8>, record: &Record, stamps: &mut Stamps) {
    line.extend_from_slice(b"{\"ts\":\"");
    stamps.write(line, record.ts.0);
    line.extend_from_slice(b"\",\"request_id\":");
    json_str(line, &record.request_id);
    line.extend_from_slice(b",\"route\":");
    json_str(line, &record.route);
    line.extend_from_slice(b",\"rule\":");
    match &record.rule {
        Some(rule) => json_str(line, rule),
        None => line.extend_from_slice(b"null"),
    }
    for (key, value) in [
        ("action", record.action.as_str()),
        ("kind", record.kind.as_str()),
        ("source", record.source.as_str()),
    ] {
        line.extend_from_slice(b",\"");
        line.extend_from_slice(key.as_bytes());
        line.extend_from_slice(b"\":\"");
        line.extend_from_slice(value.as_bytes());
        line.push(b'"');
    }
    // A method is a token (RFC 9110 §9.1), which holds nothing JSON escapes.
    line.extend_from_slice(b",\"method\":\"");
    line.extend_from_slice(record.method.as_str().as_bytes());
    line.push(b'"');
    line.extend_from_slice(b",\"path\":");
    json_str(line, &record.path);
    line.extend_from_slice(b",\"upstream\":");
    json_str(line, &record.upstream);
    line.extend_from_slice(b",\"upstream_status\":");
    line.extend_from_slice(decimal(u64::from(record.upstream_status), &mut [0; 20]));
    line.extend_from_slice(b",\"status\":");
    line.extend_from_slice(decimal(u64::from(record.status), &mut [0; 20]));
    line.extend_from_slice(match record.body_inspected {
        true => b",\"body_inspected\":true,\"duration_ms\":",
        false => b",\"body_inspected\":false,\"duration_ms\":",
    });
    duration_ms(line, record.duration_ms);
    line.extend_from_slice(b"}\n");
}

/// A duration in milliseconds as serde writes it: the shortest text that reads back as the
/// same number. A whole number of microseconds (what a record holds) below 10^12 is written
/// from its digits: below that size doubles lie much closer together than 0.001, so no
/// shorter text reads back as the same number. Anything else goes through serde.
fn duration_ms(line: &mut Vec<u8>, ms: f64) {
    let micros = (ms * 1000.0).round();
    if !((0.0..1e12).contains(&micros) && micros / 1000.0 == ms) {
        if serde_json::to_writer(&mut *line, &ms).is_err() {
            line.extend_from_slice(b"null");
        }
        return;
    }
    let micros = micros as u64;
    line.extend_from_slice(decimal(micros / 1000, &mut [0; 20]));
    line.push(b'.');
    let fraction = (micros % 1000) as u32;
    // At least one digit after the point, as in `1.0`; no trailing zeros after it.
    let keep = match fraction {
        f if f % 100 == 0 => 1,
        f if f % 10 == 0 => 2,
        _ => 3,
    };
    line.extend_from_slice(&digits3(fraction)[..keep]);
}

/// A JSON string; text that needs no escaping (the usual case) is copied whole. Inlined: as a
/// call, saving and restoring registers cost more than the copy.
#[inline(always)]
fn json_str(line: &mut Vec<u8>, text: &str) {
    if !needs_escape(text.as_bytes()) {
        line.push(b'"');
        line.extend_from_slice(text.as_bytes());
        line.push(b'"');
    } else if serde_json::to_writer(&mut *line, text).is_err() {
        line.extend_from_slice(b"null");
    }
}

/// Whether `text` holds a byte that JSON escapes: a control character, `"` or `\`. Text of
/// eight bytes or more is looked at eight bytes at a time.
fn needs_escape(text: &[u8]) -> bool {
    if text.len() < 8 {
        return text.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
    }
    let word = |at: usize| {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(&text[at..at + 8]);
        u64::from_ne_bytes(bytes)
    };
    let mut at = 0;
    while at + 8 <= text.len() {
        if special_in(word(at)) {
            return true;
        }
        at += 8;
    }
    // The last eight bytes, overlapping the words already looked at.
    at < text.len() && special_in(word(text.len() - 8))
}

/// Whether a word of eight bytes holds a control character, `"` or `\`. Each test is exact
/// for the word as a whole ("Bit Twiddling Hacks", `hasless`: a byte below `n`, n <= 128).
fn special_in(word: u64) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let has_below = |word: u64, n: u64| word.wrapping_sub(ONES * n) & !word & HIGH != 0;
    has_below(word, 0x20)
        || has_below(word ^ (ONES * u64::from(b'"')), 1)
        || has_below(word ^ (ONES * u64::from(b'\\')), 1)
}

/// Most distinct kinds of record tallied per batch; past it records are counted one by one.
const MAX_TALLIES: usize = 32;

/// Counts a batch of written records once per distinct label set (a steady stream is mostly
/// the same deviation): the metrics, the totals and the recent list under one lock each.
fn account(shared: &Shared, batch: &mut Vec<Record>) {
    if batch.is_empty() {
        return;
    }
    let mut tallies: Vec<(&Record, u64)> = Vec::new();
    let mut singles: Vec<&Record> = Vec::new();
    for record in batch.iter() {
        if let Some((_, count)) = tallies
            .iter_mut()
            .find(|(seen, _)| same_labels(seen, record))
        {
            *count += 1;
        } else if tallies.len() < MAX_TALLIES {
            tallies.push((record, 1));
        } else {
            singles.push(record);
        }
    }
    let groups = || {
        let singles = singles.iter().map(|record| (*record, 1));
        tallies.iter().copied().chain(singles)
    };
    if let Some(metrics) = shared.metrics.get() {
        for (record, count) in groups() {
            metrics.deviation(record, count);
        }
    }
    if let Ok(mut counts) = shared.counts.lock() {
        for (record, count) in groups() {
            counts.add(record, count);
        }
    }
    if let Ok(mut recent) = shared.recent.lock() {
        for record in batch.drain(..) {
            if recent.len() == RECENT_CAPACITY {
                recent.pop_front();
            }
            recent.push_back(record);
        }
    }
    batch.clear();
}

/// Whether two records count under the same metric labels.
fn same_labels(a: &Record, b: &Record) -> bool {
    a.upstream_status == b.upstream_status
        && a.status == b.status
        && a.action == b.action
        && a.kind == b.kind
        && a.route == b.route
        && a.rule == b.rule
}

/// `2026-11-24T21:41:10.123Z`: RFC 3339 in UTC with milliseconds.
pub fn rfc3339_ms(time: SystemTime) -> String {
    if let Some(digits) = rfc3339_ms_digits(time) {
        return digits.iter().map(|b| char::from(*b)).collect();
    }
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The RFC 3339 text written digit by digit (a format string costs more than the rest of
/// writing the record); `None` past year 9999.
fn rfc3339_ms_digits(time: SystemTime) -> Option<[u8; 24]> {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    if !(0..=9999).contains(&year) {
        return None;
    }
    let mut out = *b"0000-00-00T00:00:00.000Z";
    let fields: [(usize, usize, u64); 7] = [
        (0, 4, year as u64),
        (5, 2, u64::from(month)),
        (8, 2, u64::from(day)),
        (11, 2, rem / 3600),
        (14, 2, rem % 3600 / 60),
        (17, 2, rem % 60),
        (20, 3, u64::from(since.subsec_millis())),
    ];
    for (at, width, mut value) in fields {
        for slot in out[at..at + width].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    Some(out)
}

/// Days since 1970-01-01 to (year, month, day), after Howard Hinnant's civil calendar method.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let cases = [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_123, "2000-02-29T00:00:00.123Z"),
            (1_795_556_470_456, "2026-11-24T21:41:10.456Z"),
        ];
        for (ms, want) in cases {
            let time = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(rfc3339_ms(time), want);
            assert_eq!(Timestamp(time).to_string(), want);
            let json = serde_json::to_string(&Timestamp(time)).expect("serializes");
            assert_eq!(json, format!("\"{want}\""));
        }
    }

    fn record(route: &str, status: u16) -> Record {
        Record {
            ts: Timestamp(UNIX_EPOCH),
            request_id: String::new(),
            route: route.into(),
            rule: Some("r".into()),
            action: Action::Rewrote,
            kind: Kind::Status,
            source: Source::Upstream,
            method: Method::GET,
            path: "/".into(),
            upstream: "u".into(),
            upstream_status: 200,
            status,
            body_inspected: false,
            duration_ms: 0.0,
        }
    }

    #[test]
    fn a_batch_is_counted_per_record_whatever_its_mix() {
        let metrics = Arc::new(Metrics::new());
        let shared = Shared::default();
        let _ = shared.metrics.set(metrics.clone());
        let mut batch: Vec<Record> = (0..40)
            .map(|i| record(&format!("route{}", i % 35), 201))
            .chain([record("route0", 404), record("route0", 201)])
            .collect();
        account(&shared, &mut batch);
        assert!(batch.is_empty());
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
        let counts = shared.counts.lock().expect("counts");
        assert_eq!(counts.by_status["route0"]["200->201"], 3);
        assert_eq!(counts.by_status["route0"]["200->404"], 1);
        assert_eq!(counts.by_status["route34"]["200->201"], 1);
        assert_eq!(counts.by_rule["route0"]["r"], 4);
        assert_eq!(shared.recent.lock().expect("recent").len(), 42);
    }

    #[test]
    fn lines_are_what_serde_writes() {
        let mut plain = record("app", 201);
        plain.request_id = "0f3a9c".into();
        plain.duration_ms = 0.412;
        let mut odd = record("r\"oute", 404);
        odd.ts = Timestamp(UNIX_EPOCH + Duration::from_secs(400_000_000_000));
        odd.request_id = "tab\there \\ \u{1} é".into();
        odd.rule = None;
        odd.action = Action::Left;
        odd.kind = Kind::Unsolicited100;
        odd.source = Source::Proxy;
        odd.method = Method::from_bytes(b"PROPFIND").expect("method");
        odd.path = "/a\u{7f}/\"b\"/ü".into();
        odd.body_inspected = true;
        odd.upstream_status = 0;
        odd.duration_ms = 12_345.5;
        let mut whole = record("app", 500);
        whole.action = Action::WouldRewrite;
        whole.kind = Kind::ExpectIgnored;
        whole.duration_ms = 3.0;
        let mut stamps = Stamps::default();
        for record in [plain, odd, whole] {
            let mut line = Vec::new();
            json_line(&mut line, &record, &mut stamps);
            let mut want = serde_json::to_vec(&record).expect("serializes");
            want.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&want)
            );
        }
    }

    #[test]
    fn stamps_of_one_second_differ_in_milliseconds_only() {
        let mut stamps = Stamps::default();
        let base = 1_795_556_470_000u64;
        // Within a second, across a second, a day, and back to an earlier second.
        for ms in [
            base + 456,
            base + 7,
            base + 999,
            base + 1000,
            base + 86_399_999,
            base,
        ] {
            let time = UNIX_EPOCH + Duration::from_millis(ms);
            let mut line = Vec::new();
            stamps.write(&mut line, time);
            assert_eq!(String::from_utf8_lossy(&line), rfc3339_ms(time), "{ms}");
        }
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let mut line = Vec::new();
        stamps.write(&mut line, far);
        assert_eq!(String::from_utf8_lossy(&line), rfc3339_ms(far));
    }

    #[test]
    fn durations_are_what_serde_writes() {
        let micros = (0..3000u64)
            .chain((0..40).map(|i| 7u64.pow(i / 3) * (i as u64 % 3 + 1)))
            .chain([999_999_999_999, 1_000_000_000_000, 123_456_789_012_345]);
        let odd = [0.0004, 1.5e-7, 2.0f64.powi(60), 1e300, -1.0, f64::NAN];
        let values = micros.map(|m| m as f64 / 1000.0).chain(odd);
        for ms in values {
            let mut line = Vec::new();
            duration_ms(&mut line, ms);
            let want = serde_json::to_string(&ms).expect("serializes");
            assert_eq!(String::from_utf8_lossy(&line), want, "{ms:?}");
        }
    }

    #[test]
    fn escapes_are_found_at_every_position() {
        let plain = |b: u8| !(b < 0x20 || b == b'"' || b == b'\\');
        for len in 1..=19 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    assert_eq!(needs_escape(&text), !plain(b), "byte {b} at {at} of {len}");
                }
            }
        }
        assert!(!needs_escape(b""));
        assert!(!needs_escape("/caf\u{e9}/\u{7f}~ !#".as_bytes()));
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
        log.write(record("app", 201));
        log.write(record("app", 201));
        log.reopen(SinkTarget::File(new.clone()));
        log.write(record("app", 404));
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
