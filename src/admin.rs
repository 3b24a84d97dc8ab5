//! The admin listener: Prometheus metrics, health and readiness, recent deviations as JSON,
//! and a small self-refreshing HTML page for people.

use crate::deviation::{Counts, Record, PROXY_MADE};
use crate::live::Live;
use crate::report::html::escape;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

/// How many of the latest records the page and `/deviations` show.
const LATEST: usize = 50;

/// Most admin connections open at once; more are closed as they arrive, so that a flood of
/// them cannot take the file descriptors the proxy's own listener needs.
const MAX_CONNECTIONS: usize = 128;
/// Longest life of one admin connection; a scraper reconnects.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

/// Serves admin requests until `stop` turns true.
pub async fn serve(listener: TcpListener, live: Arc<Live>, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(err) => {
                // EMFILE and friends: back off instead of spinning on the error.
                tracing::warn!(error = %err, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin listener at {MAX_CONNECTIONS} connections; closing a new one");
            continue;
        };
        tokio::spawn(serve_connection(stream, live.clone(), slot));
    }
}

/// One admin connection: a request head must arrive within the server's `header_timeout`.
async fn serve_connection(stream: TcpStream, live: Arc<Live>, _slot: OwnedSemaphorePermit) {
    let header_timeout = live.proxy().settings.header_timeout;
    let service = service_fn(move |request| {
        let live = live.clone();
        async move { Ok::<_, Infallible>(route(&live, &request)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection).await;
}

fn route(live: &Live, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        // RFC 9110 §15.5.6: a 405 lists the methods that are allowed.
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
        let allow = HeaderValue::from_static("GET, HEAD");
        response.headers_mut().insert(http::header::ALLOW, allow);
        return response;
    }
    match request.uri().path() {
        "/metrics" => {
            let proxy = live.proxy();
            let capped = proxy.upstreams.iter();
            let capped = capped.filter(|u| u.config.max_connections.is_some());
            live.metrics
                .set_queued(capped.map(|u| (u.name(), u.queued())));
            live.metrics.set_held_bodies(proxy.held.used());
            let body = live.metrics.encode(live.deviations.dropped());
            with_type(
                StatusCode::OK,
                body,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if live.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        "/deviations" => deviations_json(live),
        "/" => with_type(StatusCode::OK, page(live), "text/html; charset=utf-8"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, body.to_string(), "text/plain; charset=utf-8")
}

fn with_type(
    status: StatusCode,
    body: String,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn latest(live: &Live) -> Vec<Record<'static>> {
    let mut recent = live.deviations.recent();
    let skip = recent.len().saturating_sub(LATEST);
    recent.drain(..skip);
    recent.reverse();
    recent
}

/// `{"written", "dropped", "counts": {"by_rule", "by_status"}, "recent": [...]}`, newest first.
fn deviations_json(live: &Live) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "written": live.deviations.written(),
        "dropped": live.deviations.dropped(),
        "counts": live.deviations.counts(),
        "recent": latest(live),
    });
    with_type(StatusCode::OK, body.to_string(), "application/json")
}

/// The page: per route, deviations per rule, the upstream -> final status matrix, and the
/// latest records. No scripts or external assets; it reloads itself every 5 seconds.
fn page(live: &Live) -> String {
    let counts = live.deviations.counts();
    let mut html = String::with_capacity(16 << 10);
    html.push_str(PAGE_HEAD);
    let _ = write!(
        html,
        "<p class=meta>config <code>{}</code> · {} records written · {} dropped · {}</p>",
        escape(&live.file().display().to_string()),
        live.deviations.written(),
        live.deviations.dropped(),
        if live.is_ready() { "ready" } else { "draining" }
    );
    if counts.by_rule.is_empty() {
        html.push_str("<p>No deviations recorded yet.</p>");
    }
    for route in counts.by_rule.keys() {
        route_section(&mut html, &counts, route);
    }
    latest_table(&mut html, &latest(live));
    html.push_str("</body></html>\n");
    html
}

fn route_section(html: &mut String, counts: &Counts, route: &str) {
    let _ = write!(
        html,
        "<section><h2>route {}</h2><div class=cols>",
        escape(route)
    );
    let rules = counts.by_rule.get(route).cloned().unwrap_or_default();
    let total: u64 = rules.values().sum();
    html.push_str("<table><tr><th>rule</th><th>records</th><th>share</th></tr>");
    let mut rules: Vec<(String, u64)> = rules.into_iter().collect();
    rules.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    for (rule, n) in rules {
        let share = n as f64 * 100.0 / total.max(1) as f64;
        let _ = write!(
            html,
            "<tr><td>{}</td><td class=n>{n}</td><td><span class=bar style=\"width:{share:.0}px\"></span> {share:.0}%</td></tr>",
            escape(rule_label(&rule))
        );
    }
    html.push_str("</table>");
    if let Some(pairs) = counts.by_status.get(route) {
        status_matrix(html, pairs);
    }
    html.push_str("</div></section>");
}

/// What the page shows for a status no rule changed, which the counts file under `-`.
const NO_RULE: &str = "(no rule)";

fn rule_label(rule: &str) -> &str {
    if rule == "-" {
        NO_RULE
    } else {
        rule
    }
}

/// A row of the status matrix: what the upstream said, and whether restatus said it instead
/// (the service never saw the request, or never answered it).
type Row = (bool, u16);

/// A column of the status matrix: what the client got, or (audit mode) what the rule would
/// have answered.
type Column = (bool, u16);

/// Rows are what the upstream said, columns what the client got; a cell counts the records.
/// The statuses restatus made itself come last, marked, so that nobody reads them as the
/// service's. Audit mode's `200->(404)` goes in a column `(404)` of its own.
fn status_matrix(html: &mut String, pairs: &BTreeMap<String, u64>) {
    let cells: BTreeMap<(Row, Column), u64> = pairs
        .iter()
        .filter_map(|(pair, n)| {
            let (by_proxy, pair) = match pair.strip_prefix(PROXY_MADE) {
                Some(pair) => (true, pair),
                None => (false, pair.as_str()),
            };
            let (upstream, status) = pair.split_once("->")?;
            let would = status.strip_prefix('(').and_then(|s| s.strip_suffix(')'));
            let column = (would.is_some(), would.unwrap_or(status).parse().ok()?);
            Some((((by_proxy, upstream.parse().ok()?), column), *n))
        })
        .collect();
    let rows: BTreeSet<Row> = cells.keys().map(|(row, _)| *row).collect();
    let columns: BTreeSet<Column> = cells.keys().map(|(_, column)| *column).collect();
    html.push_str("<table class=matrix><tr><th>upstream ↓ · final →</th>");
    for (would, status) in &columns {
        let _ = match would {
            true => write!(
                html,
                "<th class=n title=\"audit mode: what the rule would answer\">({status})</th>"
            ),
            false => write!(html, "<th class=n>{status}</th>"),
        };
    }
    html.push_str("</tr>");
    for row in &rows {
        match row {
            (false, upstream) => {
                let _ = write!(html, "<tr><th>{upstream}</th>");
            }
            (true, made) => {
                let _ = write!(html, "<tr><th>{made} made by restatus</th>");
            }
        }
        for column in &columns {
            match cells.get(&(*row, *column)) {
                Some(n) => {
                    let _ = write!(html, "<td class=n>{n}</td>");
                }
                None => html.push_str("<td class=\"n empty\">·</td>"),
            }
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
}

fn latest_table(html: &mut String, records: &[Record]) {
    html.push_str("<section><h2>latest records</h2><table><tr><th>time</th><th>route</th><th>request</th><th>kind</th><th>source</th><th>upstream</th><th>final</th><th>rule</th><th>action</th><th>cause</th></tr>");
    for r in records {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td class=n>{}</td><td class=n>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            r.ts,
            escape(&r.route),
            escape(r.method.as_str()),
            escape(&r.path),
            r.kind.as_str(),
            r.source.as_str(),
            r.upstream_status,
            match r.would_status {
                Some(would) => format!("{} (would be {would})", r.status),
                None => r.status.to_string(),
            },
            escape(r.rule.as_deref().unwrap_or("-")),
            r.action.as_str(),
            escape(r.cause.as_deref().unwrap_or("-"))
        );
    }
    html.push_str("</table></section>");
}

const PAGE_HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>restatus: deviations</title>
<style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d2430;background:#fafbfc}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}
.meta{color:#5a6270;margin:0 0 1rem}code{font-size:13px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.4rem 1rem 1rem;margin-bottom:1rem}
.cols{display:flex;flex-wrap:wrap;gap:2rem}
table{border-collapse:collapse}th,td{text-align:left;padding:.2rem .6rem;border-bottom:1px solid #eef0f3}
th{color:#5a6270;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}
.matrix th:first-child{white-space:nowrap}.empty{color:#c3c8cf}
.bar{display:inline-block;height:.7rem;background:#d9534f;border-radius:2px;vertical-align:middle}
</style></head><body>
<h1>restatus: what the service gets wrong</h1>
"#;

#[cfg(test)]
mod tests {
    use super::{escape, latest_table, status_matrix};
    use crate::deviation::{Action, Kind, Record, Source, Timestamp};
    use std::collections::BTreeMap;

    #[test]
    fn statuses_restatus_made_are_rows_of_their_own() {
        let pairs = BTreeMap::from([
            ("200->201".to_string(), 3),
            ("proxy 502->500".to_string(), 2),
            ("502->500".to_string(), 1),
        ]);
        let mut html = String::new();
        status_matrix(&mut html, &pairs);
        let rows: Vec<&str> = html.split("<tr>").skip(2).collect();
        assert_eq!(rows.len(), 3, "{html}");
        assert!(rows[0].starts_with("<th>200</th>"), "{html}");
        assert!(rows[1].starts_with("<th>502</th>"), "{html}");
        assert!(
            rows[2].starts_with("<th>502 made by restatus</th>"),
            "{html}"
        );
        assert!(rows[2].contains("<td class=n>2</td>"), "{html}");
    }

    #[test]
    fn audit_pairs_have_columns_of_their_own() {
        let pairs = BTreeMap::from([("200->404".to_string(), 3), ("200->(404)".to_string(), 2)]);
        let mut html = String::new();
        status_matrix(&mut html, &pairs);
        assert!(html.contains("<th class=n>404</th>"), "{html}");
        assert!(html.contains(">(404)</th>"), "{html}");
        let row = html.split("<tr>").nth(2).unwrap_or_default();
        assert!(
            row.contains("<td class=n>3</td><td class=n>2</td>"),
            "{html}"
        );
    }

    /// A cut body's cause and audit mode's would-be status are among the latest records.
    #[test]
    fn latest_records_show_the_cause_and_the_would_be_status() {
        let cut = Record {
            ts: Timestamp::now(),
            request_id: "1".into(),
            route: "main".into(),
            rule: None,
            action: Action::Left,
            kind: Kind::TruncatedBody,
            source: Source::Upstream,
            cause: Some("invalid_chunked".into()),
            method: http::Method::GET,
            path: "/items".into(),
            upstream: "backend".into(),
            upstream_status: 200,
            status: 200,
            would_status: None,
            body_inspected: false,
            duration_ms: 1.0,
        };
        let audit = Record {
            kind: Kind::Status,
            action: Action::WouldRewrite,
            cause: None,
            would_status: Some(404),
            ..cut.clone()
        };
        let mut html = String::new();
        latest_table(&mut html, &[cut, audit]);
        assert!(html.contains("<td>invalid_chunked</td>"), "{html}");
        assert!(html.contains("200 (would be 404)"), "{html}");
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
