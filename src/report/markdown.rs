//! The Markdown report, for a ticket or a pull request description.

use super::{printable, time, Comparison, Report, RouteReport};
use std::io::Write;

pub fn render(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(out, "# Deviation report\n")?;
    let mut summary = format!(
        "{} records from {}",
        report.records,
        report
            .inputs
            .iter()
            .map(|i| format!("`{}`", code(i)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some((first, last)) = report.span() {
        summary += &format!(", {} to {}", time::format(first), time::format(last));
    }
    writeln!(out, "{summary}.\n")?;
    let stats = &report.stats;
    if stats.filtered > 0 {
        writeln!(
            out,
            "{} records outside `--since`/`--until`/`--route`.\n",
            stats.filtered
        )?;
    }
    if stats.malformed > 0 {
        writeln!(out, "{} malformed lines, skipped:\n", stats.malformed)?;
        for example in &stats.malformed_examples {
            writeln!(out, "- {}", text(example))?;
        }
        writeln!(out)?;
    }
    for error in &stats.errors {
        writeln!(out, "Read error: {}\n", text(error))?;
    }
    for route in &report.routes {
        route_table(route, out)?;
    }
    if let Some(comparison) = &report.comparison {
        comparison_table(comparison, out)?;
    }
    Ok(())
}

fn route_table(route: &RouteReport, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "## Route {}\n\n{} records, {} endpoints.\n",
        text(&route.route),
        route.records,
        route.endpoints.len() + route.hidden_endpoints
    )?;
    writeln!(
        out,
        "| endpoint | rule | upstream → final | records | share | first seen | last seen |"
    )?;
    writeln!(out, "|---|---|---|--:|--:|---|---|")?;
    for endpoint in &route.endpoints {
        writeln!(
            out,
            "| **{}** | | | **{}** | | {} | {} |",
            text(&endpoint.name()),
            endpoint.tally.count,
            time::format(endpoint.tally.first),
            time::format(endpoint.tally.last)
        )?;
        for group in &endpoint.groups {
            writeln!(
                out,
                "| | {} | {} | {} | {:.1}% | {} | {} |",
                text(&group.label()),
                group.statuses(" → "),
                group.tally.count,
                group.share(endpoint),
                time::format(group.tally.first),
                time::format(group.tally.last)
            )?;
        }
    }
    if route.hidden_endpoints > 0 {
        writeln!(
            out,
            "\n{} more endpoints with {} records not shown.",
            route.hidden_endpoints, route.hidden_records
        )?;
    }
    writeln!(out)
}

fn comparison_table(comparison: &Comparison, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "## Compared\n\n{} ({} records) → {} ({} records).\n",
        text(&comparison.before_label),
        comparison.before_records,
        text(&comparison.after_label),
        comparison.after_records
    )?;
    if !comparison.changes.is_empty() {
        writeln!(out, "| change | route | endpoint | before | after |")?;
        writeln!(out, "|---|---|---|--:|--:|")?;
        for change in &comparison.changes {
            writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                change.verdict.as_str(),
                text(&change.route),
                text(&change.name()),
                change.before,
                change.after
            )?;
        }
        writeln!(out)?;
    }
    writeln!(out, "{} endpoints unchanged.", comparison.unchanged)
}

/// Untrusted text for a table cell: Markdown punctuation is backslash-escaped (CommonMark
/// §2.4) so a path cannot add cells, links, emphasis or HTML.
fn text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in printable(raw).chars() {
        if matches!(
            c,
            '\\' | '|'
                | '*'
                | '_'
                | '`'
                | '['
                | ']'
                | '<'
                | '>'
                | '#'
                | '!'
                | '~'
                | '&'
                | '('
                | ')'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Text inside a code span: a backtick would end it, so it becomes an apostrophe.
fn code(raw: &str) -> String {
    printable(raw).replace('`', "'").replace('|', "\\|")
}
