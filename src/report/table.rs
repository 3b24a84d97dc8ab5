//! The plain-text report: aligned columns for a terminal.

use super::{printable, time, Comparison, Report, RouteReport};
use std::io::Write;

pub fn render(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    write!(out, "{}", summary(report))?;
    for route in &report.routes {
        writeln!(out)?;
        write!(out, "{}", route_table(route))?;
    }
    if let Some(comparison) = &report.comparison {
        writeln!(out)?;
        write!(out, "{}", comparison_table(comparison))?;
    }
    Ok(())
}

/// The lines above the tables: what was read, over which time, and what was not a record.
pub(super) fn summary(report: &Report) -> String {
    let mut text = format!(
        "restatus report: {} records from {}",
        report.records,
        printable(&report.inputs.join(", "))
    );
    if let Some((first, last)) = report.span() {
        text += &format!(", {} to {}", time::format(first), time::format(last));
    }
    text.push('\n');
    let stats = &report.stats;
    if stats.filtered > 0 {
        text += &format!(
            "{} records outside --since/--until/--route\n",
            stats.filtered
        );
    }
    if stats.malformed > 0 {
        text += &format!("{} malformed lines, skipped:\n", stats.malformed);
        for example in &stats.malformed_examples {
            text += &format!("  {}\n", printable(example));
        }
    }
    for error in &stats.errors {
        text += &format!("read error: {}\n", printable(error));
    }
    text
}

fn route_table(route: &RouteReport) -> String {
    let mut text = format!(
        "route {}: {} records, {} endpoints\n",
        printable(&route.route),
        route.records,
        route.endpoints.len() + route.hidden_endpoints
    );
    let mut rows = vec![row([
        "endpoint / rule",
        "upstream->final",
        "records",
        "share",
        "first seen",
        "last seen",
    ])];
    for endpoint in &route.endpoints {
        rows.push(vec![
            printable(&endpoint.name()).into_owned(),
            String::new(),
            endpoint.tally.count.to_string(),
            String::new(),
            time::format(endpoint.tally.first),
            time::format(endpoint.tally.last),
        ]);
        for group in &endpoint.groups {
            rows.push(vec![
                format!("  {}", printable(&group.label())),
                group.statuses("->"),
                group.tally.count.to_string(),
                format!("{:.1}%", group.share(endpoint)),
                time::format(group.tally.first),
                time::format(group.tally.last),
            ]);
        }
    }
    text += &aligned(&rows, &[false, false, true, true, false, false]);
    if route.hidden_endpoints > 0 {
        text += &format!(
            "  ({} more endpoints, {} records)\n",
            route.hidden_endpoints, route.hidden_records
        );
    }
    text
}

fn comparison_table(comparison: &Comparison) -> String {
    let mut text = format!(
        "compared: {} ({} records) -> {} ({} records)\n",
        printable(&comparison.before_label),
        comparison.before_records,
        printable(&comparison.after_label),
        comparison.after_records
    );
    let mut rows = vec![row(["change", "route", "endpoint", "before", "after"])];
    for change in &comparison.changes {
        rows.push(vec![
            change.verdict.as_str().to_string(),
            printable(&change.route).into_owned(),
            printable(&change.name()).into_owned(),
            change.before.to_string(),
            change.after.to_string(),
        ]);
    }
    if !comparison.changes.is_empty() {
        text += &aligned(&rows, &[false, false, false, true, true]);
    }
    text += &format!("{} endpoints unchanged\n", comparison.unchanged);
    text
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

/// Rows padded to the widest cell of each column (counted in characters), two spaces apart.
fn aligned(rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths = vec![0; right.len()];
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut text = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for ((cell, width), right) in row.iter().zip(&widths).zip(right) {
            let pad = " ".repeat(width - cell.chars().count());
            if *right {
                line += &format!("{pad}{cell}  ");
            } else {
                line += &format!("{cell}{pad}  ");
            }
        }
        text += line.trim_end();
        text.push('\n');
    }
    text
}
