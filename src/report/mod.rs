//! `restatus report`: reads deviation logs (JSON lines, plain or gzip), groups the records by
//! endpoint, rule and status pair, and renders the summary as a table, Markdown, JSON or HTML.

mod compare;
pub(crate) mod html;
mod json;
mod markdown;
mod table;
pub mod template;
pub mod time;
mod view;

pub use compare::{Change, Comparison, Verdict};
pub use view::{Report, RouteReport};

use flate2::read::MultiGzDecoder;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;

/// A line longer than this is not a record (records are a few hundred bytes); it is counted
/// as malformed without being held in memory.
const MAX_LINE: usize = 64 << 10;

/// How many malformed lines are named in the report; the rest are only counted.
const MALFORMED_EXAMPLES: usize = 5;

/// The output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
    Markdown,
    Html,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(text: &str) -> Result<Format, String> {
        match text {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "markdown" | "md" => Ok(Format::Markdown),
            "html" => Ok(Format::Html),
            _ => Err(format!(
                "`{text}` is not a format: use table, json, markdown or html"
            )),
        }
    }
}

/// Which records count, in milliseconds since the Unix epoch.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Records at or after this time.
    pub since: Option<i64>,
    /// Records before this time.
    pub until: Option<i64>,
    /// Only this route.
    pub route: Option<String>,
}

impl Filter {
    fn keeps(&self, route: &str, ts: i64) -> bool {
        self.since.is_none_or(|since| ts >= since)
            && self.until.is_none_or(|until| ts < until)
            && self.route.as_deref().is_none_or(|want| want == route)
    }
}

/// How many records, and when the first and last of them were written.
#[derive(Debug, Clone, Copy)]
pub struct Tally {
    pub count: u64,
    pub first: i64,
    pub last: i64,
}

impl Tally {
    fn new(ts: i64) -> Tally {
        Tally {
            count: 0,
            first: ts,
            last: ts,
        }
    }

    fn add(&mut self, ts: i64) {
        self.count += 1;
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
    }
}

/// Records of one endpoint with the same rule, kind and upstream -> final status.
#[derive(Debug, Clone)]
pub struct Group {
    /// `None` when no rule matched (the status was left, or a protocol deviation).
    pub rule: Option<String>,
    pub kind: String,
    pub upstream_status: u16,
    pub status: u16,
    /// In audit mode, the status the rule would have answered.
    pub would_status: Option<u16>,
    /// restatus made `upstream_status` itself (a 502 for a dead service, a check's 403): the
    /// service never saw the request, or never answered it.
    pub by_proxy: bool,
    /// Why restatus made it (`connect`, `timeout`, `invalid_response`, ...), when the
    /// records say.
    pub cause: Option<String>,
    pub tally: Tally,
}

impl Group {
    /// `200 → 404`, `200 → (404)` for what audit mode would have answered, or
    /// `proxy 502 → 500 (connect)` for a status restatus made, joined by `arrow`.
    pub fn statuses(&self, arrow: &str) -> String {
        let by = if self.by_proxy { "proxy " } else { "" };
        let pair = match self.would_status {
            // Audit mode: what the rule would have answered; the client got the upstream's.
            Some(would) => format!("{by}{}{arrow}({would})", self.upstream_status),
            None => format!("{by}{}{arrow}{}", self.upstream_status, self.status),
        };
        match &self.cause {
            Some(cause) => format!("{pair} ({cause})"),
            None => pair,
        }
    }

    /// The rule's name, or what the record was when no rule made it.
    pub fn label(&self) -> String {
        match (&self.rule, self.kind.as_str()) {
            (Some(rule), _) => rule.clone(),
            (None, "status") => "(no rule)".to_string(),
            (None, kind) => format!("({kind})"),
        }
    }

    /// This group's share of its endpoint's records, in percent.
    pub fn share(&self, endpoint: &Endpoint) -> f64 {
        self.tally.count as f64 * 100.0 / endpoint.tally.count.max(1) as f64
    }
}

/// One route, method and path template.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub route: String,
    pub method: String,
    pub template: String,
    pub tally: Tally,
    pub groups: Vec<Group>,
}

impl Endpoint {
    fn add(&mut self, record: &Line, ts: i64) {
        self.tally.add(ts);
        let rule = record.rule.as_deref();
        let by_proxy = record.source == "proxy";
        let cause = record.cause.as_deref();
        let found = self.groups.iter_mut().find(|g| {
            g.upstream_status == record.upstream_status
                && g.status == record.status
                && g.would_status == record.would_status
                && g.by_proxy == by_proxy
                && g.rule.as_deref() == rule
                && g.kind == record.kind
                && g.cause.as_deref() == cause
        });
        match found {
            Some(group) => group.tally.add(ts),
            None => {
                let mut tally = Tally::new(ts);
                tally.add(ts);
                self.groups.push(Group {
                    rule: rule.map(str::to_string),
                    kind: record.kind.to_string(),
                    upstream_status: record.upstream_status,
                    status: record.status,
                    would_status: record.would_status,
                    by_proxy,
                    cause: cause.map(str::to_string),
                    tally,
                });
            }
        }
    }

    /// `GET /items/{id}`.
    pub fn name(&self) -> String {
        format!("{} {}", self.method, self.template)
    }
}

/// The endpoints of one window of records. Memory grows with the number of distinct
/// endpoints and groups, never with the number of records.
#[derive(Debug, Default)]
pub struct Window {
    endpoints: HashMap<String, Endpoint>,
    /// Reused for every record, so a record of a known endpoint allocates nothing.
    key: String,
    path: String,
}

impl Window {
    fn add(&mut self, record: &Line, ts: i64) {
        template::template(&record.path, &mut self.path);
        self.key.clear();
        for part in [&*record.route, "\0", &*record.method, "\0", &self.path] {
            self.key.push_str(part);
        }
        if let Some(endpoint) = self.endpoints.get_mut(self.key.as_str()) {
            endpoint.add(record, ts);
            return;
        }
        let mut endpoint = Endpoint {
            route: record.route.to_string(),
            method: record.method.to_string(),
            template: self.path.clone(),
            tally: Tally::new(ts),
            groups: Vec::new(),
        };
        endpoint.add(record, ts);
        self.endpoints.insert(self.key.clone(), endpoint);
    }

    /// The endpoints, each with its groups, in no particular order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.endpoints.values()
    }

    pub fn records(&self) -> u64 {
        self.endpoints.values().map(|e| e.tally.count).sum()
    }
}

/// The fields of a deviation record the report uses (see `deviation::Record`).
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    ts: Cow<'a, str>,
    #[serde(borrow)]
    route: Cow<'a, str>,
    #[serde(borrow, default)]
    rule: Option<Cow<'a, str>>,
    #[serde(borrow, default = "status_kind")]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    upstream_status: u16,
    status: u16,
    #[serde(default)]
    would_status: Option<u16>,
    #[serde(borrow, default = "upstream_source")]
    source: Cow<'a, str>,
    #[serde(borrow, default)]
    cause: Option<Cow<'a, str>>,
}

fn upstream_source() -> Cow<'static, str> {
    Cow::Borrowed("upstream")
}

fn status_kind() -> Cow<'static, str> {
    Cow::Borrowed("status")
}

/// What reading the inputs found, besides the records themselves.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Non-blank lines read.
    pub lines: u64,
    /// Records left out by `--since`, `--until` or `--route`.
    pub filtered: u64,
    pub malformed: u64,
    /// `file:line: why` for the first few malformed lines.
    pub malformed_examples: Vec<String>,
    /// Inputs that could not be read to their end (a truncated gzip file, say).
    pub errors: Vec<String>,
}

impl Stats {
    fn malformed(&mut self, input: &str, line: u64, why: &str) {
        self.malformed += 1;
        if self.malformed_examples.len() < MALFORMED_EXAMPLES {
            self.malformed_examples
                .push(format!("{input}:{line}: {why}"));
        }
    }
}

/// Where a record goes once it passed the filter.
#[derive(Debug, Clone, Copy)]
pub enum Split {
    /// Every record into one window.
    None,
    /// Records before this time into the first window, the rest into the second.
    At(i64),
}

/// Reads records into windows: `before` (the comparison baseline) and `after` (the report).
#[derive(Debug)]
pub struct Reader {
    filter: Filter,
    split: Split,
    pub stats: Stats,
    pub before: Window,
    pub after: Window,
}

impl Reader {
    pub fn new(filter: Filter, split: Split) -> Reader {
        Reader {
            filter,
            split,
            stats: Stats::default(),
            before: Window::default(),
            after: Window::default(),
        }
    }

    /// Reads every record of `input` (plain or gzip, detected by its magic bytes) into the
    /// windows; `baseline` sends all of them to `before`, and then only `--route` applies.
    /// A read error ends this input and is noted in [`Stats::errors`].
    pub fn read(&mut self, name: &str, input: impl Read, baseline: bool) {
        let mut input = BufReader::with_capacity(256 << 10, input);
        let gzip = matches!(input.fill_buf(), Ok([0x1f, 0x8b, ..]));
        let result = if gzip {
            let decoder = MultiGzDecoder::new(input);
            self.read_lines(name, BufReader::with_capacity(256 << 10, decoder), baseline)
        } else {
            self.read_lines(name, input, baseline)
        };
        if let Err(err) = result {
            self.stats.errors.push(format!("{name}: {err}"));
        }
    }

    fn read_lines(
        &mut self,
        name: &str,
        mut input: impl BufRead,
        baseline: bool,
    ) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(1024);
        let mut number = 0u64;
        while next_line(&mut input, &mut buf)? {
            number += 1;
            if buf.len() > MAX_LINE {
                self.stats.lines += 1;
                self.stats.malformed(name, number, "line too long");
            } else if !buf.trim_ascii().is_empty() {
                self.stats.lines += 1;
                self.line(name, number, baseline, &buf);
            }
        }
        Ok(())
    }

    fn line(&mut self, name: &str, number: u64, baseline: bool, buf: &[u8]) {
        let record: Line = match serde_json::from_slice(buf) {
            Ok(record) => record,
            Err(err) => {
                let why = format!("not a deviation record ({err})");
                return self.stats.malformed(name, number, &why);
            }
        };
        let Ok(ts) = time::parse(&record.ts) else {
            return self
                .stats
                .malformed(name, number, "`ts` is not an RFC 3339 time");
        };
        let keep = if baseline {
            self.filter
                .route
                .as_deref()
                .is_none_or(|r| r == record.route)
        } else {
            self.filter.keeps(&record.route, ts)
        };
        if !keep {
            self.stats.filtered += 1;
            return;
        }
        match self.split {
            Split::At(at) if baseline || ts < at => self.before.add(&record, ts),
            Split::None if baseline => self.before.add(&record, ts),
            _ => self.after.add(&record, ts),
        }
    }
}

/// Reads one line into `buf` (without its newline), holding at most `MAX_LINE + 1` bytes of
/// it: a longer line is consumed but left truncated. False at the end of the input.
fn next_line(input: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    let mut seen = false;
    loop {
        let chunk = input.fill_buf()?;
        if chunk.is_empty() {
            return Ok(seen);
        }
        seen = true;
        let (take, done) = match chunk.iter().position(|&c| c == b'\n') {
            Some(at) => (at, true),
            None => (chunk.len(), false),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..take.min(room)]);
        input.consume(if done { take + 1 } else { take });
        if done {
            return Ok(true);
        }
    }
}

/// What `restatus report` was asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Deviation logs; standard input when empty or `-`.
    pub inputs: Vec<PathBuf>,
    pub filter: Filter,
    /// Endpoints shown per route.
    pub top: Option<usize>,
    /// Older logs to compare the inputs with.
    pub compare: Vec<PathBuf>,
    /// Compare the records before this time with those at or after it.
    pub split: Option<i64>,
}

/// Why a report could not be made.
#[derive(Debug)]
pub enum Error {
    /// The arguments contradict each other.
    Usage(String),
    /// An input could not be opened.
    Input(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Usage(text) | Error::Input(text) => f.write_str(text),
        }
    }
}

/// Reads every input (and the comparison baseline) and builds the report. `stdin` is read
/// when no input is named, or for `-`.
pub fn run(options: &Options, stdin: impl Read) -> Result<Report, Error> {
    check(options)?;
    let split = options.split.map_or(Split::None, Split::At);
    let mut reader = Reader::new(options.filter.clone(), split);
    for path in &options.compare {
        read_file(&mut reader, path, true)?;
    }
    let mut stdin = Some(stdin);
    let mut names = Vec::new();
    if options.inputs.is_empty() {
        if let Some(input) = stdin.take() {
            names.push("stdin".to_string());
            reader.read("stdin", input, false);
        }
    }
    for path in &options.inputs {
        if path.as_os_str() == "-" {
            let Some(input) = stdin.take() else {
                return Err(Error::Usage("`-` (standard input) is named twice".into()));
            };
            names.push("stdin".to_string());
            reader.read("stdin", input, false);
        } else {
            names.push(path.display().to_string());
            read_file(&mut reader, path, false)?;
        }
    }
    let labels = comparison_labels(options, &names);
    Ok(Report::build(names, reader, options.top, labels))
}

fn check(options: &Options) -> Result<(), Error> {
    let Filter { since, until, .. } = options.filter;
    if let (Some(since), Some(until)) = (since, until) {
        if since >= until {
            return Err(Error::Usage("--since must be earlier than --until".into()));
        }
    }
    if options.split.is_some() && !options.compare.is_empty() {
        return Err(Error::Usage("use --split or --compare, not both".into()));
    }
    if options.top == Some(0) {
        return Err(Error::Usage("--top must be at least 1".into()));
    }
    Ok(())
}

fn read_file(reader: &mut Reader, path: &std::path::Path, baseline: bool) -> Result<(), Error> {
    let cannot = |why: String| Error::Input(format!("cannot open {}: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|err| cannot(err.to_string()))?;
    // A directory opens on Linux and fails only at the first read.
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(cannot("it is a directory".into()));
    }
    reader.read(&path.display().to_string(), file, baseline);
    Ok(())
}

fn comparison_labels(options: &Options, names: &[String]) -> Option<(String, String)> {
    if let Some(at) = options.split {
        let at = time::format(at);
        return Some((format!("before {at}"), format!("from {at}")));
    }
    if options.compare.is_empty() {
        return None;
    }
    let old: Vec<String> = options
        .compare
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    Some((old.join(", "), names.join(", ")))
}

/// Replaces control characters (a terminal escape in an untrusted path, say) for plain text.
pub(crate) fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().any(char::is_control) {
        Cow::Owned(
            text.chars()
                .map(|c| if c.is_control() { '\u{fffd}' } else { c })
                .collect(),
        )
    } else {
        Cow::Borrowed(text)
    }
}
