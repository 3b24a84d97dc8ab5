//! Status rules: the model, compiled matchers, per-route candidate indexes and evaluation.

pub mod check;
pub mod condition;
mod json;
pub mod profile;
pub mod raw;

use crate::config::{ConfigError, Locator};
use bytes::Bytes;
use condition::{method_bucket, Conditions, PathMatcher, METHOD_BUCKETS};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use raw::{RawHeaderEdits, RawRule, RawThen};
use std::ops::Range;
use std::sync::Arc;
use toml::Spanned;

/// The final codes of the documented contract.
pub const DOCUMENTED: [u16; 8] = [200, 201, 202, 400, 403, 404, 409, 500];

pub fn is_documented(status: u16) -> bool {
    DOCUMENTED.contains(&status)
}

/// Where a rule came from; it decides its place in a route's evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Route,
    Global,
    Profile,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Route => "route",
            Origin::Global => "global",
            Origin::Profile => "profile",
        }
    }
}

#[derive(Debug)]
pub struct Rule {
    /// Shared with the deviation records that name it.
    pub name: Arc<str>,
    pub description: Option<String>,
    pub origin: Origin,
    /// Route names from `routes = [...]`; empty means every route.
    pub routes: Vec<String>,
    pub when: Conditions,
    pub then: Action,
}

/// What a matching rule does to the response.
#[derive(Debug, Clone)]
pub struct Action {
    pub status: StatusCode,
    pub set_headers: Vec<(HeaderName, HeaderValue)>,
    pub remove_headers: Vec<HeaderName>,
    /// A replacement body, with the content type to send it with.
    pub body: Option<(Bytes, Option<HeaderValue>)>,
}

/// Compiles one `[[rules]]` table (or a profile's rule).
pub fn compile_rule(raw: &RawRule, origin: Origin, at: &Locator) -> Result<Rule, ConfigError> {
    check_routes_list(raw.routes.as_ref(), "rule", at)?;
    let when = condition::compile(&raw.when, at)?;
    let then = compile_then(&raw.then, at)?;
    let routes = raw
        .routes
        .as_ref()
        .map(|list| list.get_ref().iter().map(|r| r.get_ref().clone()).collect())
        .unwrap_or_default();
    Ok(Rule {
        name: raw.name.get_ref().as_str().into(),
        description: raw.description.clone(),
        origin,
        routes,
        when,
        then,
    })
}

pub fn compile_then(raw: &RawThen, at: &Locator) -> Result<Action, ConfigError> {
    let code = *raw.status.get_ref();
    // hyper cannot send a 1xx as a final response (it would become a 500): never allow one.
    if !(200..=599).contains(&code) {
        return Err(at.at(
            raw.status.span(),
            format!("then.status {code} must be a final status between 200 and 599"),
        ));
    }
    let status = StatusCode::from_u16(code as u16).map_err(|_| {
        at.at(
            raw.status.span(),
            format!("then.status {code} is not a status"),
        )
    })?;
    let (set_headers, remove_headers) = match &raw.headers {
        Some(edits) => compile_header_edits(edits, at)?,
        None => (Vec::new(), Vec::new()),
    };
    let body = raw
        .body
        .as_ref()
        .map(|b| compile_body(b.get_ref(), b.span(), at))
        .transpose()?;
    Ok(Action {
        status,
        set_headers,
        remove_headers,
        body,
    })
}

/// Header edits to apply: `(set, remove)`.
type HeaderEdits = (Vec<(HeaderName, HeaderValue)>, Vec<HeaderName>);

fn compile_header_edits(edits: &RawHeaderEdits, at: &Locator) -> Result<HeaderEdits, ConfigError> {
    let mut set = Vec::new();
    for (name, value) in &edits.set {
        let span = name.span();
        let name = header_name(name, "then.headers.set", at)?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| at.at(span, format!("then.headers.set: bad value for `{name}`")))?;
        set.push((name, value));
    }
    let remove = edits
        .remove
        .iter()
        .map(|name| header_name(name, "then.headers.remove", at))
        .collect::<Result<_, _>>()?;
    Ok((set, remove))
}

/// `routes = []` would read as "no route" but mean "every route": refuse it.
pub fn check_routes_list(
    routes: Option<&Spanned<Vec<Spanned<String>>>>,
    kind: &str,
    at: &Locator,
) -> Result<(), ConfigError> {
    match routes {
        Some(list) if list.get_ref().is_empty() => Err(at.at(
            list.span(),
            format!("routes is empty: name at least one route, or leave it out to apply the {kind} to every route"),
        )),
        _ => Ok(()),
    }
}

/// Headers that frame the message or belong to one connection (RFC 9110 §7.6.1, §8.6;
/// RFC 9112 §6.1): restatus sets them itself, so a rule may not.
const FRAMING_HEADERS: [&str; 8] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn header_name(name: &Spanned<String>, key: &str, at: &Locator) -> Result<HeaderName, ConfigError> {
    let header = HeaderName::from_bytes(name.get_ref().trim().as_bytes()).map_err(|_| {
        at.at(
            name.span(),
            format!("{key}: `{}` is not a header name", name.get_ref()),
        )
    })?;
    if FRAMING_HEADERS.contains(&header.as_str()) {
        return Err(at.at(
            name.span(),
            format!("{key}: `{header}` frames the message and is set by restatus (use then.body to change the body)"),
        ));
    }
    if OWN_HEADERS.contains(&header.as_str()) {
        return Err(at.at(
            name.span(),
            format!("{key}: `{header}` is restatus's own header; its meaning would be lost"),
        ));
    }
    Ok(header)
}

/// Headers whose value restatus promises: who made the response, and the request's id.
pub const OWN_HEADERS: [&str; 2] = ["x-restatus-source", "x-request-id"];

/// Whether `name` frames the message or is one of restatus's own: no setting may write it.
pub fn is_reserved_header(name: &str) -> bool {
    FRAMING_HEADERS.contains(&name) || OWN_HEADERS.contains(&name)
}

/// A string body is sent as written; a table or array is sent as JSON.
fn compile_body(
    value: &toml::Value,
    span: Range<usize>,
    at: &Locator,
) -> Result<(Bytes, Option<HeaderValue>), ConfigError> {
    match value {
        toml::Value::String(text) => Ok((Bytes::from(text.clone()), None)),
        other if has_datetime(other) => Err(at.at(span, DATETIME_IN_JSON)),
        other => {
            let json =
                serde_json::to_vec(other).map_err(|e| at.at(span, format!("then.body: {e}")))?;
            Ok((
                Bytes::from(json),
                Some(HeaderValue::from_static("application/json")),
            ))
        }
    }
}

/// What a TOML date or time in a JSON value is told: serde would turn it into an object with
/// an internal key.
pub(crate) const DATETIME_IN_JSON: &str =
    "a TOML date or time has no JSON form; write it as a string (\"1970-01-01T00:00:00Z\")";

/// Whether `value` is or holds a TOML date or time.
pub(crate) fn has_datetime(value: &toml::Value) -> bool {
    match value {
        toml::Value::Datetime(_) => true,
        toml::Value::Array(items) => items.iter().any(has_datetime),
        toml::Value::Table(table) => table.values().any(has_datetime),
        _ => false,
    }
}

impl Action {
    pub fn content_type(&self) -> Option<&HeaderValue> {
        self.body.as_ref().and_then(|(_, ct)| ct.as_ref())
    }
}

/// The facts about one exchange that rules look at.
pub struct Facts<'a> {
    pub method: &'a Method,
    /// The path as the client sent it, without the query string.
    pub path: &'a str,
    pub status: u16,
    pub request_headers: Option<&'a HeaderMap>,
    pub response_headers: &'a HeaderMap,
}

/// What is known of the response body while evaluating.
#[derive(Clone, Copy)]
pub enum BodyState<'a> {
    /// Not read yet: a rule that needs it stops evaluation with [`Step::NeedBody`].
    Unread,
    Inspected(&'a [u8]),
    /// Could not be inspected (larger than `inspect_body`, HEAD, or unreadable).
    NotInspected,
}

pub enum Step<'r> {
    Matched(&'r Rule),
    NoMatch,
    /// Candidate `resume` needs the body: read it, then evaluate again from there.
    NeedBody {
        resume: usize,
    },
}

/// Why one candidate did or did not match, for `restatus explain`.
#[derive(Debug, Clone)]
pub struct TraceLine {
    pub rule: String,
    pub origin: Origin,
    pub outcome: String,
}

/// The rules that apply to one route, in evaluation order, indexed by method and status.
pub struct RuleSet {
    rules: Vec<Arc<Rule>>,
    /// `METHOD_BUCKETS * STATUS_SLOTS` lists of candidates (see [`status_slot`]).
    index: Vec<Box<[Candidate]>>,
    needs_request_headers: bool,
    needs_body: bool,
    head_reads_body: bool,
}

/// A rule that may match a method and status, with a digest of its exact path (0 when it
/// has none), so that candidates for other paths are passed over without being visited.
#[derive(Debug, Clone, Copy)]
pub struct Candidate {
    rule: u16,
    exact_path: u32,
}

/// Candidate lists per method bucket: one per status 100..=599, and one for 600..=999.
const STATUS_SLOTS: usize = 501;

/// Where a status's candidates are; the invalid codes 600..=999 share one list, since rules
/// take them all as a 5xx (RFC 9110 §15).
fn status_slot(status: u16) -> Option<usize> {
    match status {
        100..=599 => Some(usize::from(status - 100)),
        600..=999 => Some(STATUS_SLOTS - 1),
        _ => None,
    }
}

/// FNV-1a of a path, never 0 (0 marks "no exact path").
fn path_digest(path: &str) -> u32 {
    let hash = path.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    hash | 1
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.rules.iter().map(|r| &*r.name).collect();
        f.debug_struct("RuleSet").field("rules", &names).finish()
    }
}

impl RuleSet {
    pub fn new(rules: Vec<Arc<Rule>>) -> Self {
        let mut index = Vec::with_capacity(METHOD_BUCKETS * STATUS_SLOTS);
        for bucket in 0..METHOD_BUCKETS {
            // 600 stands for every code of the last slot.
            for status in 100..=600u16 {
                let list: Vec<Candidate> = rules
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| {
                        r.when.statuses.contains(status) && r.when.method_bucket_matches(bucket)
                    })
                    .map(|(i, r)| Candidate {
                        rule: i as u16,
                        exact_path: match &r.when.path {
                            Some(PathMatcher::Exact(path)) => path_digest(path),
                            _ => 0,
                        },
                    })
                    .collect();
                index.push(list.into_boxed_slice());
            }
        }
        let needs_request_headers = rules.iter().any(|r| !r.when.request_headers.is_empty());
        let needs_body = rules.iter().any(|r| r.when.needs_body());
        let head_reads_body = rules.iter().any(|r| reads_body_of_head(&r.when));
        RuleSet {
            rules,
            index,
            needs_request_headers,
            needs_body,
            head_reads_body,
        }
    }

    pub fn rules(&self) -> &[Arc<Rule>] {
        &self.rules
    }

    /// Whether some rule reads response bodies.
    pub fn needs_body(&self) -> bool {
        self.needs_body
    }

    /// Whether a rule that reads the body can match a HEAD for `path` (a rule for GET, or
    /// for any method): such a HEAD goes upstream as GET, so that the rule sees the body a
    /// GET would get.
    pub fn head_reads_body(&self, path: &str) -> bool {
        self.head_reads_body
            && self.rules.iter().any(|r| {
                reads_body_of_head(&r.when) && r.when.path.as_ref().is_none_or(|p| p.matches(path))
            })
    }

    /// Whether evaluation will look at request headers (so they must be kept).
    pub fn needs_request_headers(&self) -> bool {
        self.needs_request_headers
    }

    /// The rules that could match this method and status, in order.
    pub fn candidates(&self, method: &Method, status: u16) -> &[Candidate] {
        match status_slot(status) {
            Some(slot) => &self.index[method_bucket(method) * STATUS_SLOTS + slot],
            None => &[],
        }
    }

    /// Evaluates candidates from position `start` until the first match.
    pub fn evaluate(
        &self,
        facts: &Facts,
        body: BodyState,
        start: usize,
        mut trace: Option<&mut Vec<TraceLine>>,
    ) -> Step<'_> {
        let candidates = self.candidates(facts.method, facts.status);
        let mut digest = None;
        for (position, candidate) in candidates.iter().enumerate().skip(start) {
            // A trace (`explain`) lists every candidate, so it never skips.
            if candidate.exact_path != 0 && trace.is_none() {
                let digest = *digest.get_or_insert_with(|| path_digest(facts.path));
                if candidate.exact_path != digest {
                    continue;
                }
            }
            let rule = &self.rules[candidate.rule as usize];
            let outcome = check(rule, facts, body);
            if let Some(trace) = trace.as_deref_mut() {
                let text = match &outcome {
                    Check::Pass => "matched".to_string(),
                    Check::Fail(why) => format!("skipped: {}", why.describe(&rule.when, body)),
                    Check::NeedBody => "needs the response body".to_string(),
                };
                trace.push(TraceLine {
                    rule: rule.name.to_string(),
                    origin: rule.origin,
                    outcome: text,
                });
            }
            match outcome {
                Check::Pass => return Step::Matched(rule),
                Check::NeedBody => return Step::NeedBody { resume: position },
                Check::Fail(_) => {}
            }
        }
        Step::NoMatch
    }
}

/// A rule that reads the body and can match a HEAD.
fn reads_body_of_head(when: &Conditions) -> bool {
    when.needs_body() && when.method_matches(&Method::HEAD)
}

enum Check<'r> {
    Pass,
    Fail(Miss<'r>),
    NeedBody,
}

/// Why a candidate did not match. Kept as data so that the request path never formats a
/// reason; `explain` asks for the text.
enum Miss<'r> {
    Method,
    Path,
    RequestHeader(&'r HeaderName),
    ResponseHeader(&'r HeaderName),
    NotInspected,
    BodyRegex(&'r str),
    BodyJson(&'r condition::BodyJson),
}

impl Miss<'_> {
    fn describe(&self, when: &Conditions, body: BodyState) -> String {
        match self {
            Miss::Method => format!("method is not {:?}", when.methods.as_deref().unwrap_or(&[])),
            Miss::Path => format!(
                "path does not match {}",
                when.path_text.as_deref().unwrap_or("")
            ),
            Miss::RequestHeader(name) => format!("request header `{name}` does not match"),
            Miss::ResponseHeader(name) => format!("response header `{name}` does not match"),
            Miss::NotInspected => "response body was not inspected".into(),
            Miss::BodyRegex(regex) => format!("body does not match /{regex}/"),
            Miss::BodyJson(test) => match body {
                BodyState::Inspected(bytes) => test.why_not(bytes),
                _ => format!("body JSON at `{}` does not match", test.pointer),
            },
        }
    }
}

fn check<'r>(rule: &'r Rule, facts: &Facts, body: BodyState) -> Check<'r> {
    let when = &rule.when;
    if !when.method_matches(facts.method) {
        return Check::Fail(Miss::Method);
    }
    if let Some(path) = &when.path {
        if !path.matches(facts.path) {
            return Check::Fail(Miss::Path);
        }
    }
    for header in &when.request_headers {
        if !facts.request_headers.is_some_and(|h| header.matches(h)) {
            return Check::Fail(Miss::RequestHeader(&header.name));
        }
    }
    for header in &when.response_headers {
        if !header.matches(facts.response_headers) {
            return Check::Fail(Miss::ResponseHeader(&header.name));
        }
    }
    if !when.needs_body() {
        return Check::Pass;
    }
    let bytes = match body {
        BodyState::Unread => return Check::NeedBody,
        BodyState::NotInspected => return Check::Fail(Miss::NotInspected),
        BodyState::Inspected(bytes) => bytes,
    };
    if let Some(regex) = &when.body_regex {
        if !regex.is_match(bytes) {
            return Check::Fail(Miss::BodyRegex(regex.as_str()));
        }
    }
    if let Some(body_json) = &when.body_json {
        if !body_json.matches(bytes) {
            return Check::Fail(Miss::BodyJson(body_json));
        }
    }
    Check::Pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    const CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"

[deviations]
sink = "stderr"

[[upstreams]]
name = "app"
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "api"
upstream = "app"
path_prefix = "/"
profile = "none"

[[rules]]
name = "exact-a"
when = { path = "/a", status = 200 }
then = { status = 201 }

[[rules]]
name = "exact-b"
when = { path = "/b", status = 200 }
then = { status = 202 }

[[rules]]
name = "any"
when = { path = "/**", status = 200 }
then = { status = 203 }
"#;

    fn matched<'r>(rules: &'r RuleSet, path: &str, trace: Option<&mut Vec<TraceLine>>) -> &'r str {
        let headers = HeaderMap::new();
        let facts = Facts {
            method: &Method::GET,
            path,
            status: 200,
            request_headers: None,
            response_headers: &headers,
        };
        match rules.evaluate(&facts, BodyState::Unread, 0, trace) {
            Step::Matched(rule) => &rule.name,
            _ => "none",
        }
    }

    /// Candidates whose exact path differs are passed over by digest; the first match in
    /// rule order still wins, and a trace still lists every candidate.
    #[test]
    fn exact_paths_are_skipped_without_changing_the_order() {
        let config = Config::parse(Path::new("t.toml"), CONFIG).expect("valid config");
        let rules = &config.routes[0].rules;
        assert_eq!(rules.candidates(&Method::GET, 200).len(), 3);
        assert_eq!(matched(rules, "/a", None), "exact-a");
        assert_eq!(matched(rules, "/b", None), "exact-b");
        assert_eq!(matched(rules, "/c", None), "any");
        assert_eq!(matched(rules, "/a/x", None), "any");
        let mut trace = Vec::new();
        assert_eq!(matched(rules, "/c", Some(&mut trace)), "any");
        let names: Vec<&str> = trace.iter().map(|t| t.rule.as_str()).collect();
        assert_eq!(names, ["exact-a", "exact-b", "any"]);
    }

    #[test]
    fn path_digests_are_never_zero() {
        for path in ["", "/", "/a", "/orders", "/svc1/items"] {
            assert_ne!(path_digest(path), 0);
        }
        assert_ne!(path_digest("/a"), path_digest("/b"));
    }
}
