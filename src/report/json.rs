//! The JSON report, for scripts.

use super::{time, Comparison, Endpoint, Report, RouteReport};
use serde_json::{json, Value};
use std::io::Write;

pub fn render(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let stats = &report.stats;
    let value = json!({
        "inputs": report.inputs,
        "records": report.records,
        "lines": stats.lines,
        "filtered": stats.filtered,
        "malformed": { "count": stats.malformed, "examples": stats.malformed_examples },
        "errors": stats.errors,
        "routes": report.routes.iter().map(route).collect::<Vec<_>>(),
        "comparison": report.comparison.as_ref().map(comparison),
    });
    serde_json::to_writer_pretty(&mut *out, &value)?;
    writeln!(out)
}

fn route(route: &RouteReport) -> Value {
    json!({
        "route": route.route,
        "records": route.records,
        "endpoints": route.endpoints.iter().map(endpoint).collect::<Vec<_>>(),
        "hidden_endpoints": route.hidden_endpoints,
        "hidden_records": route.hidden_records,
    })
}

fn endpoint(endpoint: &Endpoint) -> Value {
    let groups: Vec<Value> = endpoint
        .groups
        .iter()
        .map(|g| {
            json!({
                "rule": g.rule,
                "kind": g.kind,
                "upstream_status": g.upstream_status,
                "status": g.status,
                "would_status": g.would_status,
                "source": if g.by_proxy { "proxy" } else { "upstream" },
                "cause": g.cause,
                "records": g.tally.count,
                "share": (g.share(endpoint) * 10.0).round() / 10.0,
                "first_seen": time::format(g.tally.first),
                "last_seen": time::format(g.tally.last),
            })
        })
        .collect();
    json!({
        "method": endpoint.method,
        "path": endpoint.template,
        "records": endpoint.tally.count,
        "first_seen": time::format(endpoint.tally.first),
        "last_seen": time::format(endpoint.tally.last),
        "deviations": groups,
    })
}

fn comparison(comparison: &Comparison) -> Value {
    let changes: Vec<Value> = comparison
        .changes
        .iter()
        .map(|c| {
            json!({
                "route": c.route,
                "method": c.method,
                "path": c.template,
                "source": if c.by_proxy { "proxy" } else { "upstream" },
                "before": c.before,
                "after": c.after,
                "change": c.verdict.as_str(),
            })
        })
        .collect();
    json!({
        "before": comparison.before_label,
        "after": comparison.after_label,
        "before_records": comparison.before_records,
        "after_records": comparison.after_records,
        "changes": changes,
        "unchanged": comparison.unchanged,
    })
}
