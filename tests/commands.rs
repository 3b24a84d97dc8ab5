//! The rule-facing commands: `check` lists rules and shadowing, `explain`, `demo --tour-only`.
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Writes `text` to a config file unique to this test process and test.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "restatus-commands-{}-{name}.toml",
        std::process::id()
    ));
    std::fs::write(&path, text).expect("write config");
    path
}

fn restatus(args: &[&str]) -> Output {
    Command::new(support::binary())
        .args(args)
        .output()
        .expect("run restatus")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

const RULES: &str = r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "legacy"
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "items"
upstream = "legacy"
path_prefix = "/"

[[routes]]
name = "reports"
upstream = "legacy"
path_prefix = "/reports"
profile = "none"
mode = "audit"

[[rules]]
name = "any-200-post"
when = { method = "POST", status = 200 }
then = { status = 201 }

[[rules]]
name = "never-fires"
when = { method = "POST", path = "/items", status = 200 }
then = { status = 202 }

[[rules]]
name = "missing-is-404"
when = { method = "GET", path = "/items/*", status = 200, body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }

[[rules]]
name = "teapot"
routes = ["items"]
when = { status = 418 }
then = { status = 400 }
"#;

#[test]
fn check_lists_rules_in_order_and_warns_about_shadowed_ones() {
    let path = config_file("check", RULES);
    let output = restatus(&["check", "--config", path.to_str().expect("path")]);
    std::fs::remove_file(&path).ok();
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    let (items, reports) = text
        .split_once("  route reports ")
        .unwrap_or_else(|| panic!("both routes listed:\n{text}"));
    assert!(
        items.contains("  route items (profile documented, mode enforce):"),
        "{text}"
    );
    assert!(reports.starts_with("(profile none, mode audit):"), "{text}");
    // The route's own rule comes first although it is the last one in the file.
    assert!(
        items.contains("  1. teapot [route] when status 418 -> 400"),
        "{text}"
    );
    assert!(
        items.contains(". documented/server-error-is-500 [profile] when status 500-599 -> 500"),
        "{text}"
    );
    // The other route has neither `teapot` (not named in its `routes`) nor the profile.
    let reports = reports.split("warning:").next().unwrap_or(reports);
    assert!(reports.contains("  1. any-200-post [global]"), "{text}");
    assert!(!reports.contains("teapot"), "{text}");
    assert!(!reports.contains("documented/"), "{text}");
    let order: Vec<usize> = [
        "teapot",
        "any-200-post",
        "never-fires",
        "missing-is-404",
        "documented/create-is-201",
    ]
    .iter()
    .map(|name| {
        items
            .find(&format!(". {name} ["))
            .unwrap_or_else(|| panic!("{name} listed:\n{text}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "evaluation order:\n{text}"
    );
    for route in ["items", "reports"] {
        let warning =
            format!("warning: route {route}: rule `never-fires` can never fire: `any-200-post`");
        assert!(text.contains(&warning), "{text}");
    }
    assert!(
        !text.contains("rule `missing-is-404` can never fire"),
        "{text}"
    );
}

fn explain(extra: &[&str]) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = config_file(&format!("explain-{n}"), RULES);
    let mut args = vec!["explain", "--config", path.to_str().expect("path")];
    if !extra.contains(&"--route") {
        args.extend_from_slice(&["--route", "items"]);
    }
    args.extend_from_slice(extra);
    let output = restatus(&args);
    std::fs::remove_file(&path).ok();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout(&output)
}

#[test]
fn explain_names_the_rule_the_status_and_the_record() {
    let text = explain(&[
        "--method",
        "GET",
        "--path",
        "/items/7?verbose=1",
        "--status",
        "200",
        "--header",
        "content-type: application/json",
        "--body",
        r#"{"error":{"code":"NOT_FOUND"}}"#,
    ]);
    assert!(text.contains("missing-is-404 [global]: matched"), "{text}");
    assert!(text.contains("the client gets: 404 Not Found"), "{text}");
    let record = text
        .lines()
        .find_map(|line| line.strip_prefix("record: "))
        .expect("record line");
    let record: serde_json::Value = serde_json::from_str(record).expect("record is JSON");
    assert_eq!(record["rule"], "missing-is-404");
    assert_eq!(
        record["path"], "/items/7",
        "query string is not part of the path"
    );
    assert_eq!(record["upstream_status"], 200);
    assert_eq!(record["status"], 404);
    assert_eq!(record["body_inspected"], true);
}

#[test]
fn explain_says_why_earlier_candidates_did_not_match() {
    let text = explain(&[
        "--method",
        "GET",
        "--path",
        "/items/7",
        "--status",
        "200",
        "--body",
        r#"{"error":{"code":"FORBIDDEN"}}"#,
    ]);
    assert!(
        text.contains(
            "missing-is-404 [global]: skipped: body JSON at `/error/code` does not match"
        ),
        "{text}"
    );
    assert!(text.contains("the client gets: 200 OK"), "{text}");
    assert!(text.contains("record: none"), "{text}");

    let text = explain(&[
        "--method",
        "GET",
        "--path",
        "/other/7",
        "--status",
        "200",
        "--body",
        r#"{"error":{"code":"NOT_FOUND"}}"#,
    ]);
    assert!(
        text.contains("missing-is-404 [global]: skipped: path does not match /items/*"),
        "{text}"
    );

    // A body past `limits.inspect_body` (64KiB by default) is not looked at.
    let big = format!(
        r#"{{"error":{{"code":"NOT_FOUND"}},"pad":"{}"}}"#,
        "x".repeat(70_000)
    );
    let text = explain(&[
        "--method", "GET", "--path", "/items/7", "--status", "200", "--body", &big,
    ]);
    assert!(
        text.contains("missing-is-404 [global]: skipped: response body was not inspected"),
        "{text}"
    );
}

#[test]
fn explain_shows_the_left_record_and_audit_mode() {
    let text = explain(&["--method", "GET", "--path", "/moved", "--status", "302"]);
    assert!(text.contains("the client gets: 302 Found"), "{text}");
    let record = text
        .lines()
        .find_map(|line| line.strip_prefix("record: "))
        .expect("record line");
    let record: serde_json::Value = serde_json::from_str(record).expect("record is JSON");
    assert_eq!(record["action"], "left");
    assert_eq!(record["rule"], serde_json::Value::Null);

    let text = explain(&[
        "--route",
        "reports",
        "--method",
        "POST",
        "--path",
        "/reports/x",
        "--status",
        "200",
    ]);
    assert!(text.contains("any-200-post [global]: matched"), "{text}");
    assert!(text.contains("the client gets: 200 OK"), "{text}");
    let record = text
        .lines()
        .find_map(|line| line.strip_prefix("record: "))
        .expect("record line");
    let record: serde_json::Value = serde_json::from_str(record).expect("record is JSON");
    assert_eq!(record["action"], "would_rewrite");
    assert_eq!(record["status"], 200);
    assert_eq!(record["route"], "reports");
}

#[test]
fn explain_falls_through_to_the_profile() {
    let text = explain(&[
        "--method", "DELETE", "--path", "/items/7", "--status", "204",
    ]);
    assert!(
        text.contains("documented/success-is-200 [profile]: matched"),
        "{text}"
    );
    assert!(text.contains("the client gets: 200 OK"), "{text}");
}

#[test]
fn explain_rejects_an_unknown_route() {
    let path = config_file("explain-unknown", RULES);
    let output = restatus(&[
        "explain",
        "--config",
        path.to_str().expect("path"),
        "--route",
        "nope",
        "--status",
        "200",
    ]);
    std::fs::remove_file(&path).ok();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no route named `nope`"), "{stderr}");
    assert!(stderr.contains("items"), "lists the routes: {stderr}");
}

#[test]
fn demo_tour_shows_each_deviation_put_right_and_exits() {
    let output = restatus(&["demo", "--tour-only", "--listen", "127.0.0.1:0"]);
    let text = stdout(&output);
    assert!(
        output.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let row = |request: &str| -> Vec<String> {
        text.lines()
            .find(|line| line.starts_with(request))
            .unwrap_or_else(|| panic!("row {request}:\n{text}"))[request.len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        row("POST /items "),
        ["200", "201", "documented/create-is-201"]
    );
    assert_eq!(row("GET /items/42 "), ["200", "404", "missing-item-is-404"]);
    assert_eq!(
        row("GET /admin/stats "),
        ["401", "403", "documented/bad-token-is-403"]
    );
    assert_eq!(
        row("GET /reports/daily "),
        ["503", "500", "documented/server-error-is-500"]
    );
    // Only the tour table goes to stdout with --tour-only: no record lines.
    assert!(!text.contains("\"request_id\""), "{text}");
}
