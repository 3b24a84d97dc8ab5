//! Compiled conditions: everything a `when` table says, turned into matchers built once.

use super::raw::{HeaderConditions, RawBodyJson, RawHeaderCondition, RawWhen, StatusItem};
use crate::config::ConfigError;
use crate::config::Locator;
use http::{HeaderMap, HeaderName, Method};
use regex::bytes::Regex as BytesRegex;
use regex::Regex;
use serde_json::Value;
use std::ops::Range;

/// Methods are sorted into buckets so that candidate lists can be indexed by them.
pub const METHOD_BUCKETS: usize = 8;

pub fn method_bucket(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        Method::PUT => 3,
        Method::PATCH => 4,
        Method::DELETE => 5,
        Method::OPTIONS => 6,
        _ => 7,
    }
}

/// A set of status codes 100..=599 as a bitmap, and one more bit for the codes 600..=999.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet([u64; 8]);

/// The bit after 599's: codes 600..=999, which RFC 9110 §15 says are invalid and to be taken
/// as a 5xx. A set holding every 5xx holds them.
const BEYOND: usize = 500;

impl StatusSet {
    pub fn all() -> Self {
        let mut set = StatusSet([0; 8]);
        set.insert_range(100, 599);
        set
    }

    fn empty() -> Self {
        StatusSet([0; 8])
    }

    fn insert_range(&mut self, from: u16, to: u16) {
        for code in from..=to {
            self.insert_bit((code - 100) as usize);
        }
        if from <= 500 && to == 599 {
            self.insert_bit(BEYOND);
        }
    }

    fn insert_bit(&mut self, bit: usize) {
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    pub fn contains(&self, code: u16) -> bool {
        let bit = match code {
            100..=599 => (code - 100) as usize,
            600..=999 => BEYOND,
            _ => return false,
        };
        self.0[bit / 64] & (1 << (bit % 64)) != 0
    }

    pub fn is_superset(&self, other: &StatusSet) -> bool {
        self.0.iter().zip(other.0.iter()).all(|(a, b)| a & b == *b)
    }

    pub fn codes(&self) -> impl Iterator<Item = u16> + '_ {
        (100..=599).filter(|c| self.contains(*c))
    }
}

#[derive(Debug, Clone)]
pub enum PathMatcher {
    Exact(String),
    /// Segments of a glob: `*` is one segment, `**` any rest (zero or more segments).
    Glob(Vec<GlobSegment>),
    Regex(Regex),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GlobSegment {
    Literal(String),
    One,
    Rest,
}

impl PathMatcher {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(exact) => exact == path,
            PathMatcher::Glob(segments) => glob_matches(segments, path),
            PathMatcher::Regex(regex) => regex.is_match(path),
        }
    }
}

impl PathMatcher {
    /// Whether every path `other` matches is also matched by `self`, so that a rule with
    /// `other` after one with `self` can never fire. Conservative: `false` when unsure (a
    /// regex covers only the exact paths it matches).
    pub fn covers(&self, other: &PathMatcher) -> bool {
        match (self, other) {
            (_, PathMatcher::Exact(path)) => self.matches(path),
            (PathMatcher::Glob(mine), PathMatcher::Glob(theirs)) => glob_covers(mine, theirs),
            _ => false,
        }
    }
}

/// Whether glob `a` matches every path glob `b` matches, segment by segment.
fn glob_covers(a: &[GlobSegment], b: &[GlobSegment]) -> bool {
    match a.split_first() {
        None => b.is_empty(),
        // `**` takes any number of `b`'s segments, including a `**` of its own.
        Some((GlobSegment::Rest, rest)) => (0..=b.len()).any(|skip| glob_covers(rest, &b[skip..])),
        Some((first, rest)) => {
            let Some((theirs, others)) = b.split_first() else {
                return false;
            };
            let one = match (first, theirs) {
                // `*` never matches an empty segment.
                (GlobSegment::One, GlobSegment::Literal(literal)) => !literal.is_empty(),
                (GlobSegment::One, GlobSegment::One) => true,
                (GlobSegment::Literal(mine), GlobSegment::Literal(literal)) => mine == literal,
                _ => false,
            };
            one && glob_covers(rest, others)
        }
    }
}

fn glob_matches(glob: &[GlobSegment], path: &str) -> bool {
    let mut parts = path.strip_prefix('/').unwrap_or(path).split('/');
    for (i, segment) in glob.iter().enumerate() {
        match segment {
            GlobSegment::Rest => return i + 1 == glob.len() || rest_matches(&glob[i + 1..], parts),
            GlobSegment::One => match parts.next() {
                Some(part) if !part.is_empty() => {}
                _ => return false,
            },
            GlobSegment::Literal(literal) => match parts.next() {
                Some(part) if part == literal => {}
                _ => return false,
            },
        }
    }
    parts.next().is_none()
}

/// `**` followed by more segments: try every split point.
fn rest_matches<'a>(glob: &[GlobSegment], parts: impl Iterator<Item = &'a str>) -> bool {
    let parts: Vec<&str> = parts.collect();
    (0..=parts.len()).any(|skip| glob_matches(glob, &format!("/{}", parts[skip..].join("/"))))
}

#[derive(Debug, Clone)]
pub enum HeaderTest {
    Exact(String),
    Regex(Regex),
    Present(bool),
}

#[derive(Debug, Clone)]
pub struct HeaderCondition {
    pub name: HeaderName,
    pub test: HeaderTest,
}

impl HeaderCondition {
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        let mut values = headers.get_all(&self.name).iter().peekable();
        match &self.test {
            HeaderTest::Present(want) => values.peek().is_some() == *want,
            HeaderTest::Exact(exact) => values.any(|v| v.as_bytes() == exact.as_bytes()),
            HeaderTest::Regex(regex) => values.any(|v| v.to_str().is_ok_and(|s| regex.is_match(s))),
        }
    }
}

#[derive(Debug, Clone)]
pub enum JsonTest {
    Equals(Value),
    Exists(bool),
    In(Vec<Value>),
}

#[derive(Debug, Clone)]
pub struct BodyJson {
    pub pointer: String,
    /// The pointer's reference tokens, decoded at load.
    pub tokens: Vec<String>,
    pub test: JsonTest,
}

impl BodyJson {
    /// Whether the response body (`document`) passes the test at the pointer.
    pub fn matches(&self, document: &[u8]) -> bool {
        let found = super::json::lookup(document, &self.tokens);
        match &self.test {
            JsonTest::Exists(want) => found.is_some() == *want,
            JsonTest::Equals(value) => found.as_ref() == Some(value),
            JsonTest::In(values) => found.is_some_and(|f| values.contains(&f)),
        }
    }

    /// Why `document` fails the test, for `explain`: not JSON at all, nothing at the pointer,
    /// or which value (and of which type) is there instead.
    pub fn why_not(&self, document: &[u8]) -> String {
        let pointer = &self.pointer;
        let document = super::json::without_bom(document);
        if let Err(err) = serde_json::from_slice::<serde::de::IgnoredAny>(document) {
            return format!("body is not one JSON document ({err})");
        }
        let Some(found) = super::json::lookup(document, &self.tokens) else {
            return format!("body JSON has nothing at `{pointer}`");
        };
        let kind = json_kind(&found);
        match &self.test {
            JsonTest::Exists(_) => format!("body JSON has {found} ({kind}) at `{pointer}`"),
            JsonTest::Equals(want) => format!(
                "body JSON at `{pointer}` is {found} ({kind}), not {want} ({})",
                json_kind(want)
            ),
            JsonTest::In(values) => {
                let list: Vec<String> = values.iter().map(Value::to_string).collect();
                format!(
                    "body JSON at `{pointer}` is {found} ({kind}), not one of [{}]",
                    list.join(", ")
                )
            }
        }
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Every condition of one `when` table, compiled.
#[derive(Debug, Clone)]
pub struct Conditions {
    pub methods: Option<Vec<Method>>,
    pub path: Option<PathMatcher>,
    /// The path condition as written, to compare rules for shadowing.
    pub path_text: Option<String>,
    pub statuses: StatusSet,
    pub has_status: bool,
    pub request_headers: Vec<HeaderCondition>,
    pub response_headers: Vec<HeaderCondition>,
    pub body_regex: Option<BytesRegex>,
    pub body_json: Option<BodyJson>,
    /// Source text of header and body conditions, to compare rules for shadowing.
    pub detail_text: Vec<String>,
}

impl Conditions {
    pub fn needs_body(&self) -> bool {
        self.body_regex.is_some() || self.body_json.is_some()
    }

    pub fn is_request_side(&self) -> bool {
        !self.has_status && self.response_headers.is_empty() && !self.needs_body()
    }

    /// Whether the method condition holds. `GET` also means `HEAD`, whose answer has the
    /// same status and header fields (RFC 9110 §9.3.2), so a check on GET cannot be passed
    /// by asking with HEAD, and a GET rewrite is the HEAD one too.
    pub fn method_matches(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|list| {
            list.contains(method) || (method == Method::HEAD && list.contains(&Method::GET))
        })
    }

    /// Whether this rule could match a request in `bucket` (indexes candidate lists).
    pub fn method_bucket_matches(&self, bucket: usize) -> bool {
        let head = method_bucket(&Method::HEAD);
        match &self.methods {
            None => true,
            Some(list) => list
                .iter()
                .any(|m| method_bucket(m) == bucket || (bucket == head && m == Method::GET)),
        }
    }

    /// `self` matches at least every request and response `other` matches.
    pub fn covers(&self, other: &Conditions) -> bool {
        let methods = match (&self.methods, &other.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => theirs.iter().all(|m| mine.contains(m)),
        };
        let path = match (&self.path, &other.path) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(mine), Some(theirs)) => self.path_text == other.path_text || mine.covers(theirs),
        };
        let details = self
            .detail_text
            .iter()
            .all(|d| other.detail_text.contains(d));
        methods && path && details && self.statuses.is_superset(&other.statuses)
    }
}

/// Compiles a `when` table; errors point at the offending key.
pub fn compile(when: &RawWhen, at: &Locator) -> Result<Conditions, ConfigError> {
    let methods = when
        .method
        .as_ref()
        .map(|m| compile_methods(m.get_ref(), m.span(), at))
        .transpose()?;
    if let (Some(_), Some(regex)) = (&when.path, &when.path_regex) {
        return Err(at.at(regex.span(), "give either `path` or `path_regex`, not both"));
    }
    let (path, path_text) = compile_path(when, at)?;
    let (statuses, has_status) = match &when.status {
        None => (StatusSet::all(), false),
        Some(status) => (
            compile_statuses(&status.get_ref().0, status.span(), at)?,
            true,
        ),
    };
    let mut detail_text = Vec::new();
    let request_headers = compile_headers(&when.request_header, "request", &mut detail_text, at)?;
    let response_headers =
        compile_headers(&when.response_header, "response", &mut detail_text, at)?;
    let body_regex = match &when.body_regex {
        None => None,
        Some(text) => {
            detail_text.push(format!("body_regex {}", text.get_ref()));
            Some(
                BytesRegex::new(text.get_ref())
                    .map_err(|e| at.at(text.span(), format!("bad body_regex: {e}")))?,
            )
        }
    };
    let body_json = match &when.body_json {
        None => None,
        Some(raw) => {
            detail_text.push(describe_body_json(raw));
            Some(compile_body_json(raw, at)?)
        }
    };
    Ok(Conditions {
        methods,
        path,
        path_text,
        statuses,
        has_status,
        request_headers,
        response_headers,
        body_regex,
        body_json,
        detail_text,
    })
}

fn compile_methods(
    list: &super::super::config::raw::OneOrMany<String>,
    span: Range<usize>,
    at: &Locator,
) -> Result<Vec<Method>, ConfigError> {
    if list.0.is_empty() {
        return Err(at.at(span, "method needs at least one method"));
    }
    list.0
        .iter()
        .map(|m| {
            let upper = m.trim().to_ascii_uppercase();
            Method::from_bytes(upper.as_bytes())
                .map_err(|_| at.at(span.clone(), format!("`{m}` is not an HTTP method")))
        })
        .collect()
}

fn compile_path(
    when: &RawWhen,
    at: &Locator,
) -> Result<(Option<PathMatcher>, Option<String>), ConfigError> {
    if let Some(regex) = &when.path_regex {
        let compiled = Regex::new(regex.get_ref())
            .map_err(|e| at.at(regex.span(), format!("bad path_regex: {e}")))?;
        return Ok((
            Some(PathMatcher::Regex(compiled)),
            Some(format!("re:{}", regex.get_ref())),
        ));
    }
    let Some(path) = &when.path else {
        return Ok((None, None));
    };
    let text = path.get_ref();
    if !text.starts_with('/') {
        return Err(at.at(path.span(), format!("path `{text}` must start with '/'")));
    }
    if !text.contains('*') {
        return Ok((Some(PathMatcher::Exact(text.clone())), Some(text.clone())));
    }
    let segments: Vec<GlobSegment> = text[1..]
        .split('/')
        .map(|seg| match seg {
            "*" => Ok(GlobSegment::One),
            "**" => Ok(GlobSegment::Rest),
            s if s.contains('*') => Err(at.at(
                path.span(),
                format!("in path `{text}`, `*` and `**` must be whole segments (use path_regex for more)"),
            )),
            s => Ok(GlobSegment::Literal(s.to_string())),
        })
        .collect::<Result<_, _>>()?;
    Ok((Some(PathMatcher::Glob(segments)), Some(text.clone())))
}

fn compile_statuses(
    items: &[StatusItem],
    span: Range<usize>,
    at: &Locator,
) -> Result<StatusSet, ConfigError> {
    let mut set = StatusSet::empty();
    for item in items {
        let (from, to) = parse_status_item(item).map_err(|why| at.at(span.clone(), why))?;
        set.insert_range(from, to);
    }
    if items.is_empty() {
        return Err(at.at(span, "status needs at least one code"));
    }
    Ok(set)
}

fn parse_status_item(item: &StatusItem) -> Result<(u16, u16), String> {
    let code = |n: i64| -> Result<u16, String> {
        if (100..=599).contains(&n) {
            Ok(n as u16)
        } else {
            Err(format!("status {n} is not between 100 and 599"))
        }
    };
    match item {
        StatusItem::Code(n) => code(*n).map(|c| (c, c)),
        StatusItem::Text(text) => {
            let text = text.trim();
            if let Some(class) = text.strip_suffix("xx").or_else(|| text.strip_suffix("XX")) {
                // A class is one digit 1-5 (RFC 9110 §15); anything longer is refused before
                // any arithmetic, so no input can overflow.
                let from = match class.as_bytes() {
                    [digit @ b'1'..=b'5'] => u16::from(digit - b'0') * 100,
                    _ => {
                        return Err(format!(
                            "`{text}` is not a status class: use 1xx, 2xx, 3xx, 4xx or 5xx"
                        ))
                    }
                };
                return Ok((from, from + 99));
            }
            if let Some((a, b)) = text.split_once('-') {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("`{text}` is not a range like \"500-503\""))
                };
                let (from, to) = (code(parse(a)?)?, code(parse(b)?)?);
                if from > to {
                    return Err(format!("range `{text}` runs backwards"));
                }
                return Ok((from, to));
            }
            let n = text.parse::<i64>().map_err(|_| {
                format!("`{text}` is not a status, class (\"5xx\") or range (\"500-503\")")
            })?;
            code(n).map(|c| (c, c))
        }
    }
}

fn compile_headers(
    raw: &Option<HeaderConditions>,
    side: &str,
    detail_text: &mut Vec<String>,
    at: &Locator,
) -> Result<Vec<HeaderCondition>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (key, condition) in raw {
        let (name, span) = (key.get_ref(), key.span());
        let header = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| at.at(span.clone(), format!("`{name}` is not a header name")))?;
        let test = match condition {
            RawHeaderCondition::Exact(value) => HeaderTest::Exact(value.clone()),
            RawHeaderCondition::Test(test) => match (&test.regex, test.present) {
                (Some(regex), None) => HeaderTest::Regex(Regex::new(regex).map_err(|e| {
                    at.at(span.clone(), format!("bad regex for header `{name}`: {e}"))
                })?),
                (None, Some(present)) => HeaderTest::Present(present),
                _ => {
                    return Err(at.at(
                        span,
                        format!("header `{name}` needs exactly one of `regex` or `present`"),
                    ))
                }
            },
        };
        detail_text.push(format!("{side}_header {}", describe_header(&header, &test)));
        out.push(HeaderCondition { name: header, test });
    }
    Ok(out)
}

fn compile_body_json(raw: &RawBodyJson, at: &Locator) -> Result<BodyJson, ConfigError> {
    let (pointer, span) = (raw.pointer.get_ref(), raw.pointer.span());
    if let Err(why) = check_pointer(pointer) {
        return Err(at.at(
            span,
            format!("body_json pointer `{pointer}` {why} (RFC 6901)"),
        ));
    }
    // Errors point at the value they are about.
    let to_json = |v: &toml::Value, at_value: std::ops::Range<usize>| {
        if super::has_datetime(v) {
            return Err(at.at(at_value, super::DATETIME_IN_JSON));
        }
        serde_json::to_value(v).map_err(|e| at.at(at_value, format!("body_json value: {e}")))
    };
    let test = match (&raw.equals, raw.exists, &raw.one_of) {
        (Some(value), None, None) => JsonTest::Equals(to_json(value.get_ref(), value.span())?),
        (None, Some(exists), None) => JsonTest::Exists(exists),
        (None, None, Some(values)) if values.get_ref().is_empty() => {
            return Err(at.at(
                values.span(),
                "body_json `in` is empty, so the condition could never hold: list at least one value",
            ));
        }
        (None, None, Some(values)) => JsonTest::In(
            values
                .get_ref()
                .iter()
                .map(|v| to_json(v, values.span()))
                .collect::<Result<_, _>>()?,
        ),
        _ => {
            return Err(at.at(
                span,
                "body_json needs exactly one of `equals`, `exists` or `in`",
            ));
        }
    };
    Ok(BodyJson {
        pointer: pointer.clone(),
        tokens: super::json::tokens(pointer),
        test,
    })
}

/// RFC 6901 §3: a pointer is empty or `/`-separated tokens, where `~` only starts `~0` or `~1`.
fn check_pointer(pointer: &str) -> Result<(), &'static str> {
    if !(pointer.is_empty() || pointer.starts_with('/')) {
        return Err("must be empty or start with '/'");
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err("has a `~` that is not `~0` or `~1`");
        }
    }
    Ok(())
}

/// A header condition as the user reads it; also the key that shadowing compares.
fn describe_header(name: &HeaderName, test: &HeaderTest) -> String {
    match test {
        HeaderTest::Exact(value) => format!("{name} = {value:?}"),
        HeaderTest::Regex(regex) => format!("{name} ~ /{}/", regex.as_str()),
        HeaderTest::Present(true) => format!("{name} present"),
        HeaderTest::Present(false) => format!("{name} absent"),
    }
}

/// A `body_json` condition as the user reads it; also the key that shadowing compares.
fn describe_body_json(raw: &RawBodyJson) -> String {
    let mut text = format!("body_json {}", raw.pointer.get_ref());
    if let Some(value) = &raw.equals {
        text.push_str(&format!(" == {}", value.get_ref()));
    }
    if let Some(list) = &raw.one_of {
        let values: Vec<String> = list.get_ref().iter().map(|v| v.to_string()).collect();
        text.push_str(&format!(" in [{}]", values.join(", ")));
    }
    match raw.exists {
        Some(true) => text.push_str(" exists"),
        Some(false) => text.push_str(" missing"),
        None => {}
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(text: &str) -> PathMatcher {
        let segments = text[1..]
            .split('/')
            .map(|s| match s {
                "*" => GlobSegment::One,
                "**" => GlobSegment::Rest,
                s => GlobSegment::Literal(s.into()),
            })
            .collect();
        PathMatcher::Glob(segments)
    }

    #[test]
    fn globs() {
        let cases = [
            ("/items/*", "/items/7", true),
            ("/items/*", "/items", false),
            ("/items/*", "/items/7/parts", false),
            ("/items/**", "/items", true),
            ("/items/**", "/items/7/parts", true),
            ("/items/**/parts", "/items/7/x/parts", true),
            ("/items/**/parts", "/items/parts", true),
            ("/items/**/parts", "/items/7/x", false),
            ("/*/items", "/v1/items", true),
            ("/*/items", "/v1/other", false),
        ];
        for (pattern, path, want) in cases {
            assert_eq!(glob(pattern).matches(path), want, "{pattern} vs {path}");
        }
    }

    #[test]
    fn glob_cover() {
        let exact = |text: &str| PathMatcher::Exact(text.into());
        let cases = [
            (glob("/a/**"), glob("/a/*/b"), true),
            (glob("/a/**"), glob("/a/**"), true),
            (glob("/a/**"), exact("/a"), true),
            (glob("/a/*"), glob("/a/**"), false),
            (glob("/a/*"), glob("/a/b"), true),
            (glob("/a/*"), glob("/a/"), false),
            (glob("/a/*/c"), glob("/a/**/c"), false),
            (glob("/a/**/c"), glob("/a/*/x/c"), true),
            (glob("/a/**/c"), glob("/a/**/d"), false),
            (glob("/a/**/c"), glob("/a/**/b/c"), true),
            (glob("/*/items"), glob("/v1/items/*"), false),
            (exact("/a"), glob("/a/*"), false),
            (
                PathMatcher::Regex(Regex::new("^/a/").expect("regex")),
                exact("/a/b"),
                true,
            ),
            (
                PathMatcher::Regex(Regex::new("^/a/").expect("regex")),
                glob("/a/*"),
                false,
            ),
        ];
        for (mine, theirs, want) in cases {
            assert_eq!(mine.covers(&theirs), want, "{mine:?} covers {theirs:?}");
        }
    }

    #[test]
    fn status_items() {
        let cases = [
            (StatusItem::Code(200), Ok((200, 200))),
            (StatusItem::Text("5xx".into()), Ok((500, 599))),
            (StatusItem::Text("500-503".into()), Ok((500, 503))),
            (StatusItem::Text("503-500".into()), Err(())),
            (StatusItem::Code(99), Err(())),
            (StatusItem::Text("6xx".into()), Err(())),
            (StatusItem::Text("05xx".into()), Err(())),
            (StatusItem::Text("9223372036854775807xx".into()), Err(())),
            (StatusItem::Text("-1xx".into()), Err(())),
            (StatusItem::Text("1xx".into()), Ok((100, 199))),
            (StatusItem::Text("abc".into()), Err(())),
        ];
        for (item, want) in cases {
            assert_eq!(parse_status_item(&item).map_err(|_| ()), want, "{item:?}");
        }
    }

    #[test]
    fn status_sets() {
        let mut set = StatusSet::empty();
        set.insert_range(500, 503);
        assert!(set.contains(500) && set.contains(503) && !set.contains(504));
        assert!(StatusSet::all().is_superset(&set));
        assert!(!set.is_superset(&StatusSet::all()));
        assert!(!set.contains(600));
        let mut class = StatusSet::empty();
        class.insert_range(500, 599);
        assert!(class.contains(600) && class.contains(999) && !class.contains(1000));
        assert!(StatusSet::all().contains(777));
    }
}
