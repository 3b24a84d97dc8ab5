//! What the renderers show: each route's endpoints sorted, cut to `--top`, and the
//! comparison of the two windows.

use super::{html, json, markdown, table, Comparison, Endpoint, Format, Reader, Stats};
use std::collections::HashMap;
use std::io::Write;

/// What the renderers show: sorted endpoints per route, and the comparison if any.
#[derive(Debug)]
pub struct Report {
    /// The inputs read, as named on the command line (`-` for stdin).
    pub inputs: Vec<String>,
    pub stats: Stats,
    pub records: u64,
    /// The first and last record's times, of every record counted.
    span: Option<(i64, i64)>,
    pub routes: Vec<RouteReport>,
    pub comparison: Option<Comparison>,
}

/// One route's endpoints, most records first.
#[derive(Debug)]
pub struct RouteReport {
    pub route: String,
    pub records: u64,
    /// The endpoints shown (all, or the `--top` ones), groups most records first.
    pub endpoints: Vec<Endpoint>,
    /// Endpoints left out by `--top`, and their records.
    pub hidden_endpoints: usize,
    pub hidden_records: u64,
}

impl Report {
    /// Sorts the report window's endpoints by route, then most records first, keeping `top`
    /// endpoints per route; compares the windows when `compare` holds a label for each.
    pub fn build(
        inputs: Vec<String>,
        reader: Reader,
        top: Option<usize>,
        compare: Option<(String, String)>,
    ) -> Report {
        let comparison =
            compare.map(|labels| Comparison::new(&reader.before, &reader.after, labels));
        let records = reader.after.records();
        let mut by_route: HashMap<String, Vec<Endpoint>> = HashMap::new();
        for (_, endpoint) in reader.after.endpoints {
            by_route
                .entry(endpoint.route.clone())
                .or_default()
                .push(endpoint);
        }
        // Before `--top` leaves endpoints out: the window is that of every record counted.
        let span = by_route
            .values()
            .flatten()
            .fold(None, |span, e| match span {
                None => Some((e.tally.first, e.tally.last)),
                Some((first, last)) => Some((first.min(e.tally.first), last.max(e.tally.last))),
            });
        let mut routes: Vec<RouteReport> = by_route
            .into_iter()
            .map(|(route, endpoints)| route_report(route, endpoints, top))
            .collect();
        routes.sort_by(|a, b| a.route.cmp(&b.route));
        Report {
            inputs,
            stats: reader.stats,
            records,
            span,
            routes,
            comparison,
        }
    }

    /// Writes the report in `format`.
    pub fn render(&self, format: Format, out: &mut impl Write) -> std::io::Result<()> {
        match format {
            Format::Table => table::render(self, out),
            Format::Markdown => markdown::render(self, out),
            Format::Json => json::render(self, out),
            Format::Html => html::render(self, out),
        }
    }

    /// The earliest and latest record in the report window.
    pub fn span(&self) -> Option<(i64, i64)> {
        self.span
    }
}

fn route_report(route: String, mut endpoints: Vec<Endpoint>, top: Option<usize>) -> RouteReport {
    let records = endpoints.iter().map(|e| e.tally.count).sum();
    endpoints.sort_by(|a, b| {
        b.tally
            .count
            .cmp(&a.tally.count)
            .then_with(|| (&a.template, &a.method).cmp(&(&b.template, &b.method)))
    });
    for endpoint in &mut endpoints {
        endpoint.groups.sort_by(|a, b| {
            b.tally
                .count
                .cmp(&a.tally.count)
                .then_with(|| a.label().cmp(&b.label()))
                .then_with(|| (a.upstream_status, a.status).cmp(&(b.upstream_status, b.status)))
        });
    }
    let shown = top.unwrap_or(usize::MAX).min(endpoints.len());
    let hidden: Vec<Endpoint> = endpoints.split_off(shown);
    RouteReport {
        route,
        records,
        endpoints,
        hidden_endpoints: hidden.len(),
        hidden_records: hidden.iter().map(|e| e.tally.count).sum(),
    }
}
