//! `restatus explain`: runs one made-up exchange through a route's rules exactly as the proxy
//! would, and says which rule fires, why earlier candidates did not, and what gets recorded.

use crate::admit;
use crate::body::ResponseBody;
use crate::config::{Config, RouteConfig};
use crate::deviation::{self, Kind, Record, Source};
use crate::normalize::{self, Asked, Outcome, RequestFacts, Settings};
use crate::respond::ProxyError;
use crate::rules::check::Check;
use crate::rules::profile::Profile;
use crate::rules::{BodyState, Facts, RuleSet, Step, TraceLine};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use std::fmt::Write;
use std::sync::Arc;

/// The exchange to explain.
pub struct Query {
    pub route: String,
    pub method: Method,
    /// As the client would send it; a query string is ignored like the proxy ignores it.
    pub path: String,
    pub status: u16,
    pub request_headers: HeaderMap,
    pub response_headers: HeaderMap,
    pub body: Option<Bytes>,
}

/// Explains `query` against `config`; an error names what was wrong with the query.
pub async fn explain(config: &Config, query: &Query) -> Result<String, String> {
    let route = find_route(config, &query.route)?;
    let status = StatusCode::from_u16(query.status)
        .ok()
        .filter(|s| (200..=999).contains(&s.as_u16()))
        .ok_or_else(|| format!("--status {} is not a final status (200-999)", query.status))?;
    let sent = query.path.split('?').next().unwrap_or("/");
    if !sent.starts_with('/') {
        return Err(format!("--path {sent} must start with /"));
    }
    let mut out = String::new();
    if admit::path_is_ambiguous(sent) {
        let _ = writeln!(
            out,
            "{} {sent}: the proxy refuses this path with 400 before routing (a dot-segment, an \
             empty segment, an encoded slash or an encoded unreserved character); no rule sees it",
            query.method
        );
        return Ok(out);
    }
    // Rules see the path without `;` parameters, as the proxy gives it to them.
    let bare = admit::without_parameters(sent);
    let path = &*bare;
    let _ = writeln!(
        out,
        "route {} (profile {}, mode {}), upstream {}",
        route.name,
        route.profile.as_str(),
        route.mode.as_str(),
        config.upstream(route).name
    );
    if !crate::route::prefix_matches(&route.path_prefix, path) {
        let _ = writeln!(
            out,
            "note: this route's path_prefix {} does not cover {path}: the proxy would send it to \
             another route, or answer 404",
            route.path_prefix
        );
    }
    let refused;
    let (query, source) = match refusing_check(route, query, path) {
        Some(check) => {
            let _ = writeln!(
                out,
                "{} {} is refused by check `{}`: the proxy answers {} itself, and the service is never asked",
                query.method,
                path,
                check.name,
                check.then.status.as_u16()
            );
            refused = check_answer(query, check);
            (&refused, Source::Proxy)
        }
        None => {
            let (method, status) = (&query.method, query.status);
            let _ = writeln!(out, "{method} {path} answered {status} by the service");
            (query, Source::Upstream)
        }
    };
    let status = StatusCode::from_u16(query.status).unwrap_or(status);
    let matched = write_trace(&mut out, config, route, query, path);
    let (response, outcome) = run(config, route, query, path, status).await?;
    match outcome {
        Some(outcome) => {
            let answer = Answer {
                query,
                path: sent,
                response: &response,
                source,
            };
            write_record(&mut out, config, route, &answer, outcome)
        }
        None => {
            let _ = writeln!(out, "\nthe client gets: {}", response.status());
            let _ = writeln!(
                out,
                "record: none ({})",
                no_record_reason(route, query, matched)
            );
        }
    }
    Ok(out)
}

/// What the rule that rewrote the status also changed (its `then.body` and `then.headers`).
fn write_changes(out: &mut String, route: &RouteConfig, outcome: &Outcome) {
    if outcome.action != deviation::Action::Rewrote {
        return;
    }
    let rules = route.rules.rules();
    let Some(rule) = rules
        .iter()
        .find(|r| Some(&*r.name) == outcome.rule.as_deref())
    else {
        return;
    };
    let changes = crate::check::describe_changes(&rule.then);
    if !changes.is_empty() {
        let _ = writeln!(out, "also: {}", changes.join(", "));
    }
    if rule.then.body.is_some() {
        // RFC 9110 §8.8: validators and digests of the upstream's body would now be false.
        let _ = writeln!(
            out,
            "      the upstream's {} go with its body, unless the rule sets them",
            crate::normalize::ABOUT_THE_BODY.join(", ")
        );
    }
}

/// The first of the route's checks that refuses the request, as the proxy tries them.
fn refusing_check<'a>(route: &'a RouteConfig, query: &Query, path: &str) -> Option<&'a Arc<Check>> {
    route
        .checks
        .iter()
        .find(|check| check.refuses(&query.method, path, &query.request_headers))
}

/// The exchange as the rules then see it: the check's own response in place of the service's.
fn check_answer(query: &Query, check: &Arc<Check>) -> Query {
    let refusal = ProxyError::Refused(check.clone());
    let response = refusal.response(&HeaderValue::from_static("explain"));
    let body = match response.body() {
        ResponseBody::Full(bytes) => bytes.clone(),
        _ => None,
    };
    Query {
        route: query.route.clone(),
        method: query.method.clone(),
        path: query.path.clone(),
        status: response.status().as_u16(),
        request_headers: query.request_headers.clone(),
        response_headers: response.headers().clone(),
        body,
    }
}

fn find_route<'a>(config: &'a Config, name: &str) -> Result<&'a RouteConfig, String> {
    config
        .routes
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = config.routes.iter().map(|r| r.name.as_str()).collect();
            format!(
                "no route named `{name}`; routes in this config: {}",
                names.join(", ")
            )
        })
}

/// Writes every candidate the proxy would look at, in order, with why it did or did not match.
/// Returns the rule that matched, if any.
fn write_trace(
    out: &mut String,
    config: &Config,
    route: &RouteConfig,
    query: &Query,
    path: &str,
) -> Option<String> {
    let rules = &route.rules;
    let candidates = rules.candidates(&query.method, query.status).len();
    let _ = writeln!(
        out,
        "\n{candidates} of {} rules are candidates for {} {} (the others are never looked at):",
        rules.rules().len(),
        query.method,
        query.status
    );
    let facts = Facts {
        method: &query.method,
        path,
        status: query.status,
        request_headers: Some(&query.request_headers),
        response_headers: &query.response_headers,
    };
    let copy = inspected(config, route, query, path);
    let body = match &copy {
        Some(bytes) => BodyState::Inspected(bytes),
        None => BodyState::NotInspected,
    };
    let lines = trace(rules, &facts, body);
    for line in &lines {
        let _ = writeln!(
            out,
            "  {} [{}]: {}",
            line.rule,
            line.origin.as_str(),
            line.outcome
        );
    }
    lines
        .last()
        .filter(|line| line.outcome == "matched")
        .map(|line| line.rule.clone())
}

/// What the proxy would inspect of the body: nothing past the limit or for a HEAD (unless the
/// route's body rules make it go upstream as GET), and the decompressed bytes of a gzip body,
/// exactly as the normalize stage does.
fn inspected(config: &Config, route: &RouteConfig, query: &Query, path: &str) -> Option<Bytes> {
    if query.method == Method::HEAD && !route.rules.head_reads_body(path) {
        return None;
    }
    let body = query.body.clone().unwrap_or_default();
    normalize::inspection_copy(body, &query.response_headers, config.limits.inspect_body)
}

fn trace(rules: &RuleSet, facts: &Facts, body: BodyState) -> Vec<TraceLine> {
    let mut lines = Vec::new();
    if let Step::NeedBody { resume } = rules.evaluate(facts, BodyState::Unread, 0, Some(&mut lines))
    {
        // The proxy reads the body at this point and carries on from the same candidate.
        lines.pop();
        rules.evaluate(facts, body, resume, Some(&mut lines));
    }
    lines
}

/// Runs the real normalize stage on the made-up response.
async fn run(
    config: &Config,
    route: &RouteConfig,
    query: &Query,
    path: &str,
    status: StatusCode,
) -> Result<(Response<ResponseBody>, Option<Outcome>), String> {
    let mut response = Response::new(match &query.body {
        Some(body) => ResponseBody::full(body.clone()),
        None => ResponseBody::Empty,
    });
    *response.status_mut() = status;
    *response.headers_mut() = query.response_headers.clone();
    let request = RequestFacts {
        method: &query.method,
        path,
        headers: Some(&query.request_headers),
        head_as_get: query.method == Method::HEAD && route.rules.head_reads_body(path),
        asked: Asked::of(&query.method, &query.request_headers),
    };
    let settings = Settings {
        rules: &route.rules,
        mode: route.mode,
        contract: route.profile != Profile::None,
        inspect_limit: config.limits.inspect_body,
        original_status_header: config.deviations.original_status_header.as_ref(),
    };
    normalize::normalize(&request, response, &settings)
        .await
        .map_err(|err| format!("the response body could not be read: {err:?}"))
}

/// The exchange whose record is written: the query, and who answered it.
struct Answer<'a> {
    query: &'a Query,
    path: &'a str,
    response: &'a Response<ResponseBody>,
    source: Source,
}

fn write_record(
    out: &mut String,
    config: &Config,
    route: &RouteConfig,
    answer: &Answer<'_>,
    outcome: Outcome,
) {
    let (query, path, response) = (answer.query, answer.path, answer.response);
    let _ = writeln!(out, "\nthe client gets: {}", response.status());
    let _ = writeln!(
        out,
        "rule: {} ({})",
        outcome.rule.as_deref().unwrap_or("none"),
        action_text(outcome.action)
    );
    write_changes(out, route, &outcome);
    if let Some(header) = &config.deviations.original_status_header {
        if let Some(value) = response.headers().get(header) {
            let _ = writeln!(out, "header: {header}: {}", value.to_str().unwrap_or(""));
        }
    }
    let record = Record {
        ts: deviation::Timestamp::now(),
        request_id: "explain".into(),
        route: route.name.as_str().into(),
        rule: outcome.rule.as_deref().map(Into::into),
        action: outcome.action,
        kind: Kind::Status,
        source: answer.source,
        cause: None,
        method: query.method.clone(),
        path: path.into(),
        upstream: config.upstream(route).name.as_str().into(),
        upstream_status: outcome.upstream_status.as_u16(),
        status: outcome.status.as_u16(),
        would_status: outcome.would_status.map(|s| s.as_u16()),
        body_inspected: outcome.body_inspected,
        duration_ms: 0.0,
    };
    let json = serde_json::to_string(&record).unwrap_or_default();
    let _ = writeln!(out, "record: {json}");
}

fn action_text(action: deviation::Action) -> &'static str {
    match action {
        deviation::Action::Rewrote => "rewrote the status",
        deviation::Action::WouldRewrite => "audit mode: would rewrite, the status is unchanged",
        deviation::Action::Left => "no rule matched and the status is outside the contract",
    }
}

fn no_record_reason(route: &RouteConfig, query: &Query, matched: Option<String>) -> String {
    if let Some(rule) = matched {
        return format!("rule `{rule}` keeps the status: an allowed exception");
    }
    if crate::rules::is_documented(query.status) {
        "the status is in the documented contract and no rule changes it".to_string()
    } else if route.profile == Profile::None {
        "no rule matched, and without a profile undocumented codes are not recorded".to_string()
    } else {
        "no rule matched".to_string()
    }
}
