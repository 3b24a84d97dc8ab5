//! `restatus report`: grouping, path templates, malformed lines, gzip, filters, comparisons
//! and every output format, through the binary.
mod support;

#[path = "support/html.rs"]
mod html;

use html::assert_well_formed;

use flate2::write::GzEncoder;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// A file in the temp directory, removed when dropped.
struct Temp(PathBuf);

impl Temp {
    fn new(name: &str, bytes: &[u8]) -> Temp {
        let path =
            std::env::temp_dir().join(format!("restatus-report-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).expect("write temp file");
        Temp(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        std::fs::remove_file(&self.0).ok();
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|err| panic!("{err}: {}", self.stdout))
    }
}

fn restatus_report(args: &[&str], stdin: &[u8]) -> Run {
    let mut child = Command::new(support::binary())
        .arg("report")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start restatus report");
    let mut input = child.stdin.take().expect("stdin");
    let bytes = stdin.to_vec();
    let writer = std::thread::spawn(move || input.write_all(&bytes));
    let output = child.wait_with_output().expect("restatus report runs");
    writer.join().expect("stdin writer").expect("stdin written");
    Run {
        code: output.status.code().expect("exit code"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

/// One record as `restatus` writes it.
fn record(
    ts: &str,
    route: &str,
    method: &str,
    path: &str,
    rule: Option<&str>,
    pair: (u16, u16),
) -> String {
    json!({
        "ts": ts, "request_id": "0123456789abcdef", "route": route, "rule": rule,
        "action": "rewrote", "kind": "status", "source": "upstream", "method": method,
        "path": path, "upstream": "backend", "upstream_status": pair.0, "status": pair.1,
        "body_inspected": false, "duration_ms": 1.5,
    })
    .to_string()
        + "\n"
}

fn missing(ts: &str, id: u32) -> String {
    record(
        ts,
        "inventory",
        "GET",
        &format!("/items/{id}"),
        Some("missing-item-is-404"),
        (200, 404),
    )
}

fn created(ts: &str) -> String {
    record(
        ts,
        "inventory",
        "POST",
        "/items",
        Some("documented/create-is-201"),
        (200, 201),
    )
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Three days of a small service's log: six records on two routes.
fn sample() -> String {
    [
        missing("2026-11-24T10:00:00.000Z", 7),
        missing("2026-11-24T11:00:00.000Z", 9),
        record(
            "2026-11-24T12:00:00.000Z",
            "inventory",
            "GET",
            "/items/12",
            None,
            (418, 418),
        ),
        created("2026-11-25T09:30:00.000Z"),
        record(
            "2026-11-25T10:00:00.000Z",
            "billing",
            "GET",
            "/invoices/3f2504e0-4f89-11d3-9a0c-0305e82c3301",
            Some("documented/server-error-is-500"),
            (503, 500),
        ),
        missing("2026-11-26T08:00:00.000Z", 7),
    ]
    .concat()
}

fn endpoint<'a>(report: &'a Value, route: &str, name: &str) -> &'a Value {
    let routes = report["routes"].as_array().expect("routes");
    let route = routes
        .iter()
        .find(|r| r["route"] == route)
        .unwrap_or_else(|| panic!("route {route}: {report}"));
    route["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| {
            format!(
                "{} {}",
                e["method"].as_str().unwrap_or(""),
                e["path"].as_str().unwrap_or("")
            ) == name
        })
        .unwrap_or_else(|| panic!("endpoint {name}: {report}"))
}

/// Audit mode's records show what the rule would have answered: `200 -> (404)`, apart from
/// the same rule's enforced rewrites.
#[test]
fn audit_records_show_the_status_the_rule_would_answer() {
    let audit = missing("2026-11-24T10:00:00.000Z", 7)
        .replace("\"rewrote\"", "\"would_rewrite\"")
        .replace("\"status\":404", "\"status\":200,\"would_status\":404");
    let input = audit + &missing("2026-11-24T10:00:01.000Z", 8);
    let run = restatus_report(&["--format", "json"], input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let items = endpoint(&report, "inventory", "GET /items/{id}");
    let groups = items["deviations"].as_array().expect("deviations");
    let pairs: Vec<_> = groups
        .iter()
        .map(|g| (g["status"].clone(), g["would_status"].clone()))
        .collect();
    assert!(pairs.contains(&(json!(200), json!(404))), "{groups:?}");
    assert!(pairs.contains(&(json!(404), Value::Null)), "{groups:?}");
    let table = report_table(&input);
    assert!(table.contains("200->(404)"), "{table}");
    assert!(table.contains("200->404"), "{table}");
}

#[test]
fn groups_records_by_endpoint_then_rule_and_status_pair() {
    let run = restatus_report(&["--format", "json"], sample().as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["records"], 6);
    assert_eq!(report["malformed"]["count"], 0);
    let items = endpoint(&report, "inventory", "GET /items/{id}");
    assert_eq!(
        items["records"], 4,
        "/items/7, /items/9 and /items/12 are one endpoint"
    );
    assert_eq!(items["first_seen"], "2026-11-24T10:00:00.000Z");
    assert_eq!(items["last_seen"], "2026-11-26T08:00:00.000Z");
    let groups = items["deviations"].as_array().expect("deviations");
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert_eq!(
        groups[0]["rule"], "missing-item-is-404",
        "most records first"
    );
    assert_eq!(
        (
            groups[0]["upstream_status"].clone(),
            groups[0]["status"].clone()
        ),
        (json!(200), json!(404))
    );
    assert_eq!(groups[0]["records"], 3);
    assert_eq!(groups[0]["share"], 75.0);
    assert_eq!(groups[0]["last_seen"], "2026-11-26T08:00:00.000Z");
    assert_eq!(
        groups[1]["rule"],
        Value::Null,
        "a status left as it was has no rule"
    );
    assert_eq!(groups[1]["upstream_status"], 418);
    assert_eq!(groups[1]["share"], 25.0);
    let routes: Vec<&str> = report["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| r["route"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(routes, ["billing", "inventory"]);
    assert_eq!(endpoint(&report, "inventory", "POST /items")["records"], 1);
}

#[test]
fn numeric_uuid_and_long_hex_segments_become_placeholders() {
    let lines = [
        record(
            "2026-11-24T10:00:00Z",
            "r",
            "GET",
            "/orders/3F2504E0-4F89-11D3-9A0C-0305E82C3301/lines/2",
            None,
            (418, 418),
        ),
        record(
            "2026-11-24T10:00:01Z",
            "r",
            "GET",
            "/orders/6ba7b810-9dad-11d1-80b4-00c04fd430c8/lines/15",
            None,
            (418, 418),
        ),
        record(
            "2026-11-24T10:00:02Z",
            "r",
            "GET",
            "/blobs/507f1f77bcf86cd799439011",
            None,
            (418, 418),
        ),
        record(
            "2026-11-24T10:00:03Z",
            "r",
            "GET",
            "/blobs/da39a3ee5e6b4b0d3255bfef95601890afd80709",
            None,
            (418, 418),
        ),
        record(
            "2026-11-24T10:00:04Z",
            "r",
            "GET",
            "/blobs/cafe",
            None,
            (418, 418),
        ),
        record(
            "2026-11-24T10:00:05Z",
            "r",
            "GET",
            "/v2/items",
            None,
            (418, 418),
        ),
    ]
    .concat();
    let report = restatus_report(&["--format", "json"], lines.as_bytes()).json();
    assert_eq!(
        endpoint(&report, "r", "GET /orders/{id}/lines/{id}")["records"],
        2
    );
    assert_eq!(endpoint(&report, "r", "GET /blobs/{id}")["records"], 2);
    assert_eq!(
        endpoint(&report, "r", "GET /blobs/cafe")["records"],
        1,
        "short hex words stay"
    );
    assert_eq!(endpoint(&report, "r", "GET /v2/items")["records"], 1);
}

#[test]
fn malformed_lines_are_counted_and_reported_never_fatal() {
    let long = format!("{{\"ts\":\"{}\"}}\n", "x".repeat(100_000));
    let input = [
        missing("2026-11-24T10:00:00Z", 1),
        "not json at all\n".to_string(),
        "\n".to_string(),
        r#"{"ts":"2026-11-24T10:00:00Z","route":"inventory"}"#.to_string() + "\n",
        missing("yesterday", 2),
        long,
        missing("2026-11-24T10:00:01Z", 3),
        missing("2026-11-24T10:00:02Z", 4)[..40].to_string(),
    ]
    .concat();
    let run = restatus_report(&["--format", "json"], input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["records"], 2);
    assert_eq!(report["lines"], 7, "blank lines are not counted");
    assert_eq!(report["malformed"]["count"], 5, "{report}");
    let examples = report["malformed"]["examples"]
        .as_array()
        .expect("examples");
    assert_eq!(examples.len(), 5);
    assert!(
        examples[0]
            .as_str()
            .is_some_and(|e| e.starts_with("stdin:2: ")),
        "{examples:?}"
    );
    assert!(
        examples[2].as_str().is_some_and(|e| e.contains("RFC 3339")),
        "{examples:?}"
    );
    assert!(
        examples[3].as_str().is_some_and(|e| e.contains("too long")),
        "{examples:?}"
    );
    assert!(run.stderr.contains("5 malformed lines"), "{}", run.stderr);

    let table = report_table(&input);
    assert!(table.contains("5 malformed lines, skipped:"), "{table}");
    assert!(table.contains("stdin:2: not a deviation record"), "{table}");
}

fn report_table(input: &str) -> String {
    let run = restatus_report(&[], input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
}

#[test]
fn gzip_is_detected_by_its_magic_bytes_and_replica_logs_add_up() {
    let text = sample();
    let plain = Temp::new("replica-a.jsonl", text.as_bytes());
    // Compressed, under names that do and do not say so.
    let named = Temp::new("replica-b.jsonl.gz", &gzip(text.as_bytes()));
    let unnamed = Temp::new("replica-c.jsonl", &gzip(text.as_bytes()));
    let run = restatus_report(
        &["--format", "json", plain.arg(), named.arg(), unnamed.arg()],
        b"",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["records"], 18);
    assert_eq!(report["malformed"]["count"], 0);
    assert_eq!(
        endpoint(&report, "inventory", "GET /items/{id}")["records"],
        12
    );
    assert_eq!(report["inputs"].as_array().map(Vec::len), Some(3));

    let piped = restatus_report(&["--format", "json"], &gzip(text.as_bytes())).json();
    assert_eq!(piped["records"], 6, "gzip on stdin too");
}

#[test]
fn a_truncated_gzip_file_keeps_what_was_read_and_says_so() {
    let mut body = String::new();
    for i in 0..2000 {
        body += &missing("2026-11-24T10:00:00Z", i);
    }
    let mut bytes = gzip(body.as_bytes());
    bytes.truncate(bytes.len() / 2);
    let cut = Temp::new("cut.jsonl.gz", &bytes);
    let run = restatus_report(&["--format", "json", cut.arg()], b"");
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    let records = report["records"].as_u64().expect("records");
    assert!(records > 0 && records < 2000, "{records}");
    assert_eq!(
        report["errors"].as_array().map(Vec::len),
        Some(1),
        "{report}"
    );
}

#[test]
fn table_lists_endpoints_rules_counts_shares_and_times() {
    let table = report_table(&sample());
    assert!(table.starts_with("restatus report: 6 records from stdin, 2026-11-24T10:00:00.000Z to 2026-11-26T08:00:00.000Z\n"), "{table}");
    assert!(
        table.contains("route inventory: 5 records, 2 endpoints"),
        "{table}"
    );
    let line = table
        .lines()
        .find(|l| l.contains("missing-item-is-404"))
        .expect("rule row");
    let cells: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "missing-item-is-404",
            "200->404",
            "3",
            "75.0%",
            "2026-11-24T10:00:00.000Z",
            "2026-11-26T08:00:00.000Z"
        ]
    );
    let line = table
        .lines()
        .find(|l| l.trim_start().starts_with("GET /items/{id}"))
        .expect("endpoint row");
    assert!(line.split_whitespace().any(|c| c == "4"), "{line}");
    assert!(table.contains("(no rule)"), "{table}");
}

#[test]
fn markdown_is_a_table_per_route_and_escapes_paths() {
    let input = sample()
        + &record(
            "2026-11-24T10:00:00Z",
            "inventory",
            "GET",
            "/a|b/<img>",
            None,
            (418, 418),
        );
    let run = restatus_report(&["--format", "markdown"], input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    let md = run.stdout;
    assert!(md.starts_with("# Deviation report\n"), "{md}");
    assert!(md.contains("## Route inventory"), "{md}");
    assert!(md.contains("| | missing-item-is-404 | 200 → 404 | 3 | 75.0% | 2026-11-24T10:00:00.000Z | 2026-11-26T08:00:00.000Z |"), "{md}");
    assert!(md.contains("| **GET /items/{id}** | | | **4** |"), "{md}");
    assert!(md.contains(r"GET /a\|b/\<img\>"), "{md}");
    for line in md
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("GET /a"))
    {
        let cells = line.replace(r"\|", "").matches('|').count();
        assert_eq!(cells, 8, "a path adds no cell: {line}");
    }
}

#[test]
fn html_is_one_well_formed_self_contained_file_with_a_chart_per_route() {
    let hostile = "/x/\"><script>alert('x')</script>&amp;";
    let input = sample()
        + &record(
            "2026-11-24T10:00:00Z",
            "inventory",
            "GET",
            hostile,
            Some("<b>rule</b>"),
            (418, 418),
        );
    let out = Temp::new("report.html", b"");
    let run = restatus_report(&["--format", "html", "-o", out.arg()], input.as_bytes());
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "", "the report went to the file");
    let html = std::fs::read_to_string(&out.0).expect("report file");
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert_well_formed(&html);
    assert_eq!(html.matches("<svg").count(), 2, "one chart per route");
    assert!(html.contains("<h2>Route inventory</h2>") && html.contains("<h2>Route billing</h2>"));
    assert!(html.contains("<td class=\"rule\">missing-item-is-404</td><td>200 → 404</td><td class=\"n\">3</td><td class=\"n\">75.0%</td>"), "{html}");
    assert!(
        html.contains(
            "<tr class=\"endpoint\"><td>GET /items/{id}</td><td></td><td class=\"n\">4</td>"
        ),
        "{html}"
    );
    assert!(
        html.contains(">GET /items/{id}</text>"),
        "chart bar label: {html}"
    );
    assert!(
        !html.contains("<script") && !html.contains("<b>"),
        "untrusted text is escaped"
    );
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;amp;"),
        "{html}"
    );
    assert!(html.contains("&lt;b&gt;rule&lt;/b&gt;"));
    for external in ["http:", "https:", "src=", "href=", "url(", "@import"] {
        assert!(!html.contains(external), "no external asset: {external}");
    }
}

#[test]
fn route_and_top_narrow_the_report() {
    let only = restatus_report(
        &["--format", "json", "--route", "billing"],
        sample().as_bytes(),
    )
    .json();
    assert_eq!(only["records"], 1);
    assert_eq!(only["filtered"], 5);
    assert_eq!(only["routes"].as_array().map(Vec::len), Some(1));

    let top = restatus_report(&["--format", "json", "--top", "1"], sample().as_bytes()).json();
    let inventory = &top["routes"][1];
    assert_eq!(inventory["route"], "inventory");
    assert_eq!(inventory["records"], 5, "totals count every endpoint");
    assert_eq!(inventory["endpoints"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        inventory["endpoints"][0]["path"], "/items/{id}",
        "the busiest endpoint"
    );
    assert_eq!(inventory["hidden_endpoints"], 1);
    assert_eq!(inventory["hidden_records"], 1);
    let table = restatus_report(&["--top", "1"], sample().as_bytes()).stdout;
    assert!(table.contains("(1 more endpoints, 1 records)"), "{table}");
    // The time range is that of every record counted, shown or not.
    let early = record(
        "2026-11-23T08:00:00.000Z",
        "inventory",
        "GET",
        "/rarely",
        None,
        (418, 418),
    );
    let input = early + &sample();
    let first_line = |text: &str| text.lines().next().unwrap_or("").to_string();
    let whole = restatus_report(&[], input.as_bytes()).stdout;
    let top = restatus_report(&["--top", "1"], input.as_bytes()).stdout;
    assert!(
        first_line(&whole).contains("2026-11-23T08:00:00.000Z to "),
        "{whole}"
    );
    assert!(!top.contains("/rarely"), "{top}");
    assert_eq!(first_line(&top), first_line(&whole));
}

#[test]
fn since_is_inclusive_and_until_exclusive() {
    let run = |args: &[&str]| {
        let mut all = vec!["--format", "json"];
        all.extend_from_slice(args);
        restatus_report(&all, sample().as_bytes()).json()["records"].clone()
    };
    assert_eq!(run(&["--since", "2026-11-25T09:30:00Z"]), 3);
    assert_eq!(run(&["--until", "2026-11-25T09:30:00Z"]), 3);
    assert_eq!(
        run(&["--since", "2026-11-25", "--until", "2026-11-26"]),
        2,
        "bare dates are midnight UTC"
    );
    assert_eq!(
        run(&[
            "--since",
            "2026-11-24T12:00:00+01:00",
            "--until",
            "2026-11-24T11:00:00.001Z"
        ]),
        1,
        "offsets are honoured"
    );
}

#[test]
fn compare_tells_appeared_worse_improved_and_disappeared() {
    let old = [
        missing("2026-11-17T10:00:00Z", 1),
        missing("2026-11-17T10:00:01Z", 2),
        missing("2026-11-17T10:00:02Z", 3),
        created("2026-11-17T10:00:03Z"),
        record(
            "2026-11-17T10:00:04Z",
            "inventory",
            "DELETE",
            "/items/4",
            Some("documented/success-is-200"),
            (204, 200),
        ),
        record(
            "2026-11-17T10:00:05Z",
            "billing",
            "GET",
            "/invoices/1",
            None,
            (418, 418),
        ),
    ]
    .concat();
    let new = [
        missing("2026-11-24T10:00:00Z", 5),
        created("2026-11-24T10:00:01Z"),
        created("2026-11-24T10:00:02Z"),
        record(
            "2026-11-24T10:00:03Z",
            "inventory",
            "PUT",
            "/items/6",
            None,
            (418, 418),
        ),
        record(
            "2026-11-24T10:00:04Z",
            "billing",
            "GET",
            "/invoices/9",
            None,
            (418, 418),
        ),
    ]
    .concat();
    let old = Temp::new("old.jsonl", old.as_bytes());
    let new = Temp::new("new.jsonl", new.as_bytes());
    let run = restatus_report(
        &["--format", "json", "--compare", old.arg(), new.arg()],
        b"",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["records"], 5, "the report covers the new log");
    let comparison = &report["comparison"];
    assert_eq!(comparison["before_records"], 6);
    assert_eq!(comparison["after_records"], 5);
    assert_eq!(comparison["unchanged"], 1, "GET /invoices/{{id}}");
    let changes: Vec<(String, String, u64, u64)> = comparison["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap_or("").to_string(),
                format!(
                    "{} {}",
                    c["method"].as_str().unwrap_or(""),
                    c["path"].as_str().unwrap_or("")
                ),
                c["before"].as_u64().unwrap_or(99),
                c["after"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    let want = [
        ("appeared", "PUT /items/{id}", 0, 1),
        ("worse", "POST /items", 1, 2),
        ("improved", "GET /items/{id}", 3, 1),
        ("disappeared", "DELETE /items/{id}", 1, 0),
    ];
    let want: Vec<(String, String, u64, u64)> = want
        .iter()
        .map(|(v, e, b, a)| (v.to_string(), e.to_string(), *b, *a))
        .collect();
    assert_eq!(changes, want);

    let table = restatus_report(&["--compare", old.arg(), new.arg()], b"").stdout;
    assert!(
        table.contains("improved") && table.contains("1 endpoints unchanged"),
        "{table}"
    );
    let html = restatus_report(
        &["--format", "html", "--compare", old.arg(), new.arg()],
        b"",
    )
    .stdout;
    assert_well_formed(&html);
    assert!(html.contains("<td class=\"improved\">improved</td><td>inventory</td><td>GET /items/{id}</td><td class=\"n\">3</td><td class=\"n\">1</td>"), "{html}");
}

/// A service that went from not answering (restatus's own 502, normalized to 500) to
/// answering wrongly has as many records as before, but the comparison does not call it
/// unchanged: the statuses restatus made and the service's are counted apart.
#[test]
fn compare_counts_statuses_restatus_made_apart_from_the_services() {
    let made = |ts: &str| {
        record(ts, "orders", "GET", "/orders/1", None, (502, 500))
            .replace("\"source\":\"upstream\"", "\"source\":\"proxy\"")
    };
    let old = [made("2026-11-17T10:00:00Z"), made("2026-11-17T10:00:01Z")].concat();
    let wrong = |ts: &str| {
        record(
            ts,
            "orders",
            "GET",
            "/orders/1",
            Some("missing"),
            (200, 404),
        )
    };
    let new = [wrong("2026-11-24T10:00:00Z"), wrong("2026-11-24T10:00:01Z")].concat();
    assert!(old.contains("\"source\":\"proxy\""), "{old}");
    let old = Temp::new("old-made.jsonl", old.as_bytes());
    let new = Temp::new("new-wrong.jsonl", new.as_bytes());
    let run = restatus_report(
        &["--format", "json", "--compare", old.arg(), new.arg()],
        b"",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let comparison = &run.json()["comparison"];
    assert_eq!(comparison["unchanged"], 0, "{comparison}");
    let changes: Vec<(&str, &str, u64, u64)> = comparison["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap_or(""),
                c["source"].as_str().unwrap_or(""),
                c["before"].as_u64().unwrap_or(99),
                c["after"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("appeared", "upstream", 0, 2),
            ("disappeared", "proxy", 2, 0)
        ]
    );
    let table = restatus_report(&["--compare", old.arg(), new.arg()], b"").stdout;
    assert!(
        table.contains("GET /orders/{id} (statuses made by restatus)"),
        "{table}"
    );
}

#[test]
fn split_compares_the_records_before_and_after_a_time() {
    let run = restatus_report(
        &["--format", "json", "--split", "2026-11-25T00:00:00Z"],
        sample().as_bytes(),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(
        report["records"], 3,
        "the report covers the records from the split on"
    );
    let comparison = &report["comparison"];
    assert_eq!(comparison["before"], "before 2026-11-25T00:00:00.000Z");
    assert_eq!(comparison["before_records"], 3);
    let items = comparison["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .find(|c| c["path"] == "/items/{id}")
        .expect("items")
        .clone();
    assert_eq!(
        (
            items["before"].clone(),
            items["after"].clone(),
            items["change"].clone()
        ),
        (json!(3), json!(1), json!("improved"))
    );
}

#[test]
fn stdin_is_read_when_no_file_is_named_or_for_a_dash() {
    let file = Temp::new("dash.jsonl", sample().as_bytes());
    let report = restatus_report(
        &["--format", "json", file.arg(), "-"],
        missing("2026-11-27T00:00:00Z", 1).as_bytes(),
    )
    .json();
    assert_eq!(report["records"], 7);
    assert_eq!(report["inputs"][1], "stdin");
}

#[test]
fn bad_arguments_exit_2_with_a_clear_error() {
    let cases: [(&[&str], &str); 6] = [
        (&["--since", "last tuesday"], "RFC 3339"),
        (&["--until", "2026-11-24T10:00:00"], "RFC 3339"),
        (
            &["--since", "2026-11-25", "--until", "2026-11-24"],
            "--since must be earlier than --until",
        ),
        (&["--top", "0"], "--top <N>': N must be at least 1"),
        (&["--format", "pdf"], "table, json, markdown or html"),
        (
            &["--split", "2026-11-25", "--compare", "old.jsonl"],
            "--split",
        ),
    ];
    for (args, says) in cases {
        let run = restatus_report(args, b"");
        assert_eq!(run.code, 2, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "");
    }
    let directory = restatus_report(&[std::env::temp_dir().to_str().expect("path")], b"");
    assert_eq!(directory.code, 1, "{}", directory.stderr);
    assert!(
        directory.stderr.contains("it is a directory"),
        "{}",
        directory.stderr
    );
    let missing_file = restatus_report(&["/nonexistent/restatus/deviations.jsonl"], b"");
    assert_eq!(missing_file.code, 1);
    assert!(
        missing_file
            .stderr
            .contains("cannot open /nonexistent/restatus/deviations.jsonl"),
        "{}",
        missing_file.stderr
    );
}

/// A record of `GET /invoices` on `billing`: the service's 502, made a 500 by the profile.
fn invoice_502() -> String {
    record(
        "2026-11-24T10:00:00.000Z",
        "billing",
        "GET",
        "/invoices",
        Some("documented/server-error-is-500"),
        (502, 500),
    )
}

/// A 502 restatus made for a dead service and a 502 the service sent are told apart in every
/// format: the service's owners must not chase statuses their service never produced.
#[test]
fn statuses_restatus_made_are_marked_apart_from_the_services() {
    let served = invoice_502();
    let made = served
        .replace("\"source\":\"upstream\"", "\"source\":\"proxy\"")
        .replace("10:00:00", "10:05:00");
    assert_ne!(served, made);
    let input = [served.clone(), made.clone(), made].concat();
    let seen = records_by(&input, "source");
    assert_eq!(
        seen,
        [("proxy".to_string(), 2), ("upstream".to_string(), 1)]
    );
    let table = report_table(&input);
    assert!(table.contains(" proxy 502->500 "), "{table}");
    assert!(table.contains(" 502->500 "), "{table}");
    let markdown = restatus_report(&["--format", "markdown"], input.as_bytes()).stdout;
    assert!(markdown.contains("| proxy 502 → 500 |"), "{markdown}");
    // Records written before restatus wrote `source` count as the service's.
    let old = served.replace(",\"source\":\"upstream\"", "");
    assert!(!old.contains("source"), "{old}");
    let table = report_table(&old);
    assert!(!table.contains("proxy"), "{table}");
}

/// The records of `GET /invoices` on `billing` in `input`'s JSON report, per value of each
/// group's `field`, sorted.
fn records_by(input: &str, field: &str) -> Vec<(String, u64)> {
    let report = restatus_report(&["--format", "json"], input.as_bytes()).json();
    let groups = endpoint(&report, "billing", "GET /invoices")["deviations"]
        .as_array()
        .expect("groups")
        .clone();
    let mut seen: Vec<(String, u64)> = groups
        .iter()
        .map(|g| {
            let value = g[field].as_str().unwrap_or("?").to_string();
            (value, g["records"].as_u64().unwrap_or(0))
        })
        .collect();
    seen.sort();
    seen
}

/// Records of statuses restatus made say why (`cause`); the report keeps the causes apart,
/// so a service that could not be reached does not read like one that answered garbage.
#[test]
fn causes_of_statuses_restatus_made_are_shown_apart() {
    let served = invoice_502();
    let made = |cause: &str| {
        served.replace(
            "\"source\":\"upstream\"",
            &format!("\"source\":\"proxy\",\"cause\":\"{cause}\""),
        )
    };
    let input = [made("connect"), made("invalid_response"), made("connect")].concat();
    let table = report_table(&input);
    assert!(table.contains(" proxy 502->500 (connect) "), "{table}");
    assert!(
        table.contains(" proxy 502->500 (invalid_response) "),
        "{table}"
    );
    let seen = records_by(&input, "cause");
    assert_eq!(
        seen,
        [
            ("connect".to_string(), 2),
            ("invalid_response".to_string(), 1)
        ]
    );
}
