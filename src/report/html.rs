//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no external
//! assets) to attach to a ticket for the service's owners.

use super::{table, time, Comparison, Endpoint, Report, RouteReport};
use std::fmt::Write as _;
use std::io::Write;

/// Bars per route chart; the table below it lists every endpoint shown.
const CHART_BARS: usize = 20;
/// Endpoint labels in the chart are cut to this many characters (the table has them whole).
const LABEL_CHARS: usize = 44;

pub fn render(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    let mut html = String::with_capacity(64 << 10);
    html.push_str(HEAD);
    let _ = write!(
        html,
        "<pre class=\"meta\">{}</pre>",
        escape(&table::summary(report))
    );
    if report.routes.is_empty() {
        html.push_str("<p>No deviation records.</p>");
    }
    if let Some(comparison) = &report.comparison {
        comparison_section(&mut html, comparison);
    }
    for route in &report.routes {
        route_section(&mut html, route);
    }
    html.push_str("</body></html>\n");
    out.write_all(html.as_bytes())
}

fn route_section(html: &mut String, route: &RouteReport) {
    let _ = write!(
        html,
        "<section><h2>Route {}</h2><p class=\"meta\">{} records, {} endpoints</p>",
        escape(&route.route),
        route.records,
        route.endpoints.len() + route.hidden_endpoints
    );
    chart(html, &route.endpoints);
    html.push_str(
        "<table><thead><tr><th>endpoint / rule</th><th>upstream → final</th><th>records</th>\
         <th>share</th><th>first seen</th><th>last seen</th></tr></thead><tbody>",
    );
    for endpoint in &route.endpoints {
        endpoint_rows(html, endpoint);
    }
    html.push_str("</tbody></table>");
    if route.hidden_endpoints > 0 {
        let _ = write!(
            html,
            "<p class=\"meta\">{} more endpoints with {} records not shown.</p>",
            route.hidden_endpoints, route.hidden_records
        );
    }
    html.push_str("</section>");
}

fn endpoint_rows(html: &mut String, endpoint: &Endpoint) {
    let _ = write!(
        html,
        "<tr class=\"endpoint\"><td>{}</td><td></td><td class=\"n\">{}</td><td></td><td>{}</td><td>{}</td></tr>",
        escape(&endpoint.name()),
        endpoint.tally.count,
        time::format(endpoint.tally.first),
        time::format(endpoint.tally.last)
    );
    for group in &endpoint.groups {
        let _ = write!(
            html,
            "<tr><td class=\"rule\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{:.1}%</td><td>{}</td><td>{}</td></tr>",
            escape(&group.label()),
            group.statuses(" → "),
            group.tally.count,
            group.share(endpoint),
            time::format(group.tally.first),
            time::format(group.tally.last)
        );
    }
}

/// A horizontal bar per endpoint, scaled to the route's busiest endpoint.
fn chart(html: &mut String, endpoints: &[Endpoint]) {
    let bars = &endpoints[..endpoints.len().min(CHART_BARS)];
    let Some(max) = bars.iter().map(|e| e.tally.count).max() else {
        return;
    };
    let (row, label_width, bar_width) = (24, 330, 420);
    let height = bars.len() * row + 8;
    let _ = write!(
        html,
        "<svg class=\"chart\" width=\"{}\" height=\"{height}\" \
         viewBox=\"0 0 {} {height}\" role=\"img\" aria-label=\"records per endpoint\">",
        label_width + bar_width + 80,
        label_width + bar_width + 80
    );
    for (i, endpoint) in bars.iter().enumerate() {
        let y = i * row + 4;
        let width = (endpoint.tally.count as f64 / max as f64 * bar_width as f64).max(1.0);
        let _ = write!(
            html,
            "<g><title>{name}: {count}</title>\
             <text x=\"0\" y=\"{ty}\">{label}</text>\
             <rect x=\"{label_width}\" y=\"{y}\" width=\"{width:.1}\" height=\"{bh}\" rx=\"2\"></rect>\
             <text class=\"count\" x=\"{cx:.1}\" y=\"{ty}\">{count}</text></g>",
            name = escape(&endpoint.name()),
            count = endpoint.tally.count,
            label = escape(&shorten(&endpoint.name())),
            ty = y + 15,
            bh = row - 6,
            cx = label_width as f64 + width + 6.0,
        );
    }
    html.push_str("</svg>");
    if endpoints.len() > bars.len() {
        let _ = write!(
            html,
            "<p class=\"meta\">The chart shows the {} endpoints with the most records.</p>",
            bars.len()
        );
    }
}

fn comparison_section(html: &mut String, comparison: &Comparison) {
    let _ = write!(
        html,
        "<section><h2>Compared</h2><p class=\"meta\">{} ({} records) → {} ({} records); {} endpoints unchanged</p>",
        escape(&comparison.before_label),
        comparison.before_records,
        escape(&comparison.after_label),
        comparison.after_records,
        comparison.unchanged
    );
    if comparison.changes.is_empty() {
        html.push_str("</section>");
        return;
    }
    html.push_str(
        "<table><thead><tr><th>change</th><th>route</th><th>endpoint</th><th>before</th>\
         <th>after</th></tr></thead><tbody>",
    );
    for change in &comparison.changes {
        let verdict = change.verdict.as_str();
        let _ = write!(
            html,
            "<tr><td class=\"{verdict}\">{verdict}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            escape(&change.route),
            escape(&change.name()),
            change.before,
            change.after
        );
    }
    html.push_str("</tbody></table></section>");
}

fn shorten(text: &str) -> String {
    if text.chars().count() <= LABEL_CHARS {
        return text.to_string();
    }
    let mut short: String = text.chars().take(LABEL_CHARS - 1).collect();
    short.push('…');
    short
}

/// Escapes text for HTML content and attribute values (and SVG, which shares the rules).
/// Control characters, which XML forbids, become U+FFFD.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

const HEAD: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>restatus: deviation report</title>
<style>
body{font:14px/1.45 system-ui,sans-serif;margin:1.5rem auto;max-width:1100px;padding:0 1rem;color:#1d2430;background:#fafbfc}
h1{font-size:1.4rem;margin:0 0 .4rem}h2{font-size:1.1rem;margin:.6rem 0 .2rem}
.meta{color:#5a6270;margin:.2rem 0 .8rem;font:13px/1.45 system-ui,sans-serif;white-space:pre-wrap}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:.4rem 1rem 1rem;margin-bottom:1rem;overflow-x:auto}
table{border-collapse:collapse;margin-top:.6rem}th,td{text-align:left;padding:.2rem .7rem;border-bottom:1px solid #eef0f3;white-space:nowrap}
th{color:#5a6270;font-weight:600}.n{text-align:right;font-variant-numeric:tabular-nums}
tr.endpoint td{background:#f3f5f8}tr.endpoint td:first-child,tr.endpoint td.n{font-weight:600}td.rule{padding-left:1.6rem}
.chart{display:block;max-width:100%;height:auto;font:12px system-ui,sans-serif}
.chart rect{fill:#d9534f}.chart text{fill:#1d2430}.chart .count{fill:#5a6270}
.appeared,.worse{color:#b52b27;font-weight:600}.improved,.disappeared{color:#2b7a3d;font-weight:600}
</style></head><body>
<h1>restatus: deviation report</h1>
"#;

#[cfg(test)]
mod tests {
    use super::{escape, shorten};

    #[test]
    fn untrusted_text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script>&\"\u{1b}[2J"),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;\u{fffd}[2J"
        );
    }

    #[test]
    fn long_labels_are_cut_on_characters() {
        let long = "GET /é".repeat(20);
        let short = shorten(&long);
        assert_eq!(short.chars().count(), 44);
        assert!(short.ends_with('…'));
    }
}
