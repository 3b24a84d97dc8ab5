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
name = "outside-prefix"
routes = ["reports"]
when = { path = "/daily", status = 503 }
then = { status = 500 }

[[rules]]
name = "interim"
when = { status = "1xx" }
then = { status = 200 }

[[rules]]
name = "teapot"
routes = ["items"]
when = { status = 418 }
then = { status = 400, body = '{"error":"teapot"}', headers = { set = { "x-why" = "teapot" }, remove = ["server"] } }

[[rules]]
name = "misspelt"
routes = ["items"]
when = { method = ["GETT", "PROPFIND"], status = 200 }
then = { status = 404 }

[[rules]]
name = "with-query"
when = { path = "/reports?day=1", status = 503 }
then = { status = 500 }

[[rules]]
name = "regex-is-fine"
when = { path_regex = '^/reports/\d+/?$', status = 503 }
then = { status = 500 }

[[rules]]
name = "with-parameter"
when = { path = "/reports;v=2", status = 503 }
then = { status = 500 }

[[rules]]
name = "double-slash"
when = { path = "/reports//daily", status = 503 }
then = { status = 500 }

[[checks]]
name = "token-required"
routes = ["items"]
when = { path = "/private/**", request_header = { "x-token" = { present = false } } }
then = { status = 403 }

[[rules]]
name = "hide-private"
routes = ["items"]
when = { path = "/private/hidden", status = 403 }
then = { status = 404 }
"#;

const GLOBS_AND_CHECKS: &str = r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "legacy"
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "api"
upstream = "legacy"
path_prefix = "/api"
profile = "none"

[[rules]]
name = "anything-under-orders"
when = { path = "/api/orders/**", status = 500 }
then = { status = 409 }

[[rules]]
name = "one-order"
when = { path = "/api/orders/*/lines/*", status = 500 }
then = { status = 400 }

[[rules]]
name = "exact-order"
when = { path = "/api/orders/7", status = [500, 503] }
then = { status = 400 }

[[rules]]
name = "order-eight"
when = { path = "/api/orders/8", status = 500 }
then = { status = 400 }

[[rules]]
name = "any-item"
when = { path = "/api/*/items", status = 500 }
then = { status = 404 }

[[rules]]
name = "one-item"
when = { path = "/api/*/items/*", status = 500 }
then = { status = 404 }

[[checks]]
name = "no-admin"
when = { path = "/api/admin/**" }
then = { status = 403 }

[[checks]]
name = "no-admin-keys"
when = { path = "/api/admin/keys", method = "DELETE" }
then = { status = 403 }

[[checks]]
name = "elsewhere"
routes = ["api"]
when = { path = "/internal/*" }
then = { status = 403 }
"#;

#[test]
fn check_sees_globs_and_checks_that_can_never_fire() {
    let path = config_file("globs", GLOBS_AND_CHECKS);
    let output = restatus(&["check", "--config", path.to_str().expect("path")]);
    std::fs::remove_file(&path).ok();
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    let warning = |what: &str, name: &str, reason: &str| {
        format!("warning: route api: {what} `{name}` can never fire: {reason}")
    };
    let covered = "`anything-under-orders` comes first and matches everything it does";
    assert!(
        text.contains(&warning("rule", "one-order", covered)),
        "{text}"
    );
    assert!(
        text.contains(&warning("rule", "order-eight", covered)),
        "{text}"
    );
    // 503 is not covered by the earlier rule's 500.
    assert!(
        !text.contains("rule `exact-order` can never fire"),
        "{text}"
    );
    // `*/items` never matches a path one segment longer.
    assert!(!text.contains("rule `one-item` can never fire"), "{text}");
    let covered = "`no-admin` comes first and matches everything it does";
    assert!(
        text.contains(&warning("check", "no-admin-keys", covered)),
        "{text}"
    );
    let outside = "its path /internal/* is outside the route's path_prefix /api";
    assert!(
        text.contains(&warning("check", "elsewhere", outside)),
        "{text}"
    );
    assert_eq!(text.matches("can never fire").count(), 4, "{text}");
}

const OUTSIDE_THE_CONTRACT: &str = r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "legacy"
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "api"
upstream = "legacy"
path_prefix = "/api"

[[routes]]
name = "raw"
upstream = "legacy"
path_prefix = "/raw"
profile = "none"

[[rules]]
name = "invalid-is-422"
when = { status = 400, path = "/api/**" }
then = { status = 422 }

[[rules]]
name = "missing-is-404"
when = { status = 410 }
then = { status = 404 }
"#;

/// A rule that answers with a code outside the contract, on a route with the profile, is
/// allowed but warned about; on a route without a profile the operator defines the contract.
#[test]
fn check_warns_about_rules_answering_outside_the_contract() {
    let path = config_file("outside", OUTSIDE_THE_CONTRACT);
    let output = restatus(&["check", "--config", path.to_str().expect("path")]);
    std::fs::remove_file(&path).ok();
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(
            "warning: route api: rule `invalid-is-422` answers 422, a status outside the \
             documented contract"
        ),
        "{text}"
    );
    assert_eq!(
        text.matches("outside the documented contract").count(),
        1,
        "{text}"
    );
}

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
        items.contains(
            "  1. teapot [route] when status 418 -> 400, replaces the body, removes server, \
             sets x-why"
        ),
        "{text}"
    );
    assert!(
        items.contains(". documented/server-error-is-500 [profile] when status 500-599 -> 500"),
        "{text}"
    );
    // The other route has neither `teapot` (not named in its `routes`) nor the profile.
    let reports = reports.split("warning:").next().unwrap_or(reports);
    assert!(reports.contains("  1. outside-prefix [route]"), "{text}");
    assert!(reports.contains("  2. any-200-post [global]"), "{text}");
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
    assert!(
        text.contains("warning: route items: rule `interim` can never fire: rules never see 1xx"),
        "{text}"
    );
    assert!(
        text.contains(
            "warning: route reports: rule `outside-prefix` can never fire: its path /daily is \
             outside the route's path_prefix /reports"
        ),
        "{text}"
    );
    assert_eq!(
        text.matches("outside the route's path_prefix").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains(
            "route reports: rule `with-query` can never fire: its path /reports?day=1 holds a `?`"
        ),
        "{text}"
    );
    assert!(
        text.contains("rule `double-slash` can never fire: requests for its path /reports//daily are refused with 400"),
        "{text}"
    );
    assert!(
        text.contains("rule `with-parameter` can never fire: its path /reports;v=2 holds a `;`"),
        "{text}"
    );
    assert!(
        !text.contains("rule `regex-is-fine` can never fire"),
        "{text}"
    );
    // Any token is a method, so a misspelt one is accepted, and said.
    assert!(
        text.contains(
            "warning: route items: rule `misspelt` matches method GETT, which is not a \
             registered HTTP method: if it is a misspelling, the rule never fires"
        ),
        "{text}"
    );
    assert_eq!(
        text.matches("not a registered HTTP method").count(),
        1,
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

/// A status from 600 to 999, which the proxy relays as a 5xx, can be explained too.
#[test]
fn explain_takes_a_status_above_599() {
    let text = explain(&["--method", "GET", "--path", "/items/7", "--status", "600"]);
    assert!(text.contains("the client gets: 500"), "{text}");
}

/// What a rule's `then` changes besides the status is shown too.
#[test]
fn explain_shows_a_replaced_body_and_headers() {
    let text = explain(&["--method", "GET", "--path", "/t", "--status", "418"]);
    assert!(text.contains("the client gets: 400 Bad Request"), "{text}");
    assert!(
        text.contains("also: replaces the body, removes server, sets x-why"),
        "{text}"
    );
    assert!(
        text.contains("the upstream's etag, last-modified, content-range, content-md5, digest, content-digest, repr-digest go with its body"),
        "{text}"
    );
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
            "missing-is-404 [global]: skipped: body JSON at `/error/code` is \"FORBIDDEN\" \
             (a string), not \"NOT_FOUND\" (a string)"
        ),
        "{text}"
    );
    assert!(text.contains("the client gets: 200 OK"), "{text}");
    // Not one JSON document (here, text after it), and nothing at the pointer.
    let skipped = |body: &str| {
        let text = explain(&[
            "--method", "GET", "--path", "/items/7", "--status", "200", "--body", body,
        ]);
        let line = text.lines().find(|l| l.contains("missing-is-404 [global]"));
        line.unwrap_or_default().to_string()
    };
    let line = skipped("{\"error\":{}} and more");
    assert!(
        line.contains("skipped: body is not one JSON document ("),
        "{line}"
    );
    let line = skipped(r#"{"error":{}}"#);
    assert!(
        line.contains("skipped: body JSON has nothing at `/error/code`"),
        "{line}"
    );
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
fn explain_applies_the_checks_before_the_service() {
    let text = explain(&["--path", "/private/a", "--status", "200"]);
    assert!(
        text.contains("GET /private/a is refused by check `token-required`: the proxy answers 403"),
        "{text}"
    );
    assert!(text.contains("the client gets: 403 Forbidden"), "{text}");
    assert!(text.contains("record: none"), "{text}");

    // The check's own answer goes through the rules like any response the proxy makes.
    let text = explain(&["--path", "/private/hidden", "--status", "200"]);
    assert!(text.contains("hide-private [route]: matched"), "{text}");
    assert!(text.contains("the client gets: 404 Not Found"), "{text}");
    let record = text
        .lines()
        .find_map(|line| line.strip_prefix("record: "))
        .expect("record line");
    let record: serde_json::Value = serde_json::from_str(record).expect("record is JSON");
    assert_eq!(record["source"], "proxy");
    assert_eq!(record["upstream_status"], 403);

    let text = explain(&[
        "--path",
        "/private/a",
        "--status",
        "200",
        "--request-header",
        "x-token: t",
    ]);
    assert!(
        text.contains("GET /private/a answered 200 by the service"),
        "{text}"
    );
    assert!(text.contains("the client gets: 200 OK"), "{text}");
}

#[test]
fn explain_sees_the_path_as_the_proxy_does() {
    let text = explain(&["--path", "/private/%61", "--status", "200"]);
    assert!(
        text.contains("GET /private/%61: the proxy refuses this path with 400 before routing"),
        "{text}"
    );
    // `;` parameters are left out for the checks and rules, and kept in the record.
    let text = explain(&["--path", "/private;s=1/hidden", "--status", "200"]);
    assert!(text.contains("refused by check `token-required`"), "{text}");
    assert!(text.contains(r#""path":"/private;s=1/hidden""#), "{text}");
    let text = explain(&[
        "--route", "reports", "--path", "/items/1", "--status", "200",
    ]);
    assert!(
        text.contains("note: this route's path_prefix /reports does not cover /items/1"),
        "{text}"
    );
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
    assert_eq!(row("PUT /items/42 "), ["200", "404", "missing-item-is-404"]);
    assert_eq!(
        row("GET /admin/stats "),
        ["401", "403", "documented/bad-token-is-403"]
    );
    assert_eq!(
        row("GET /reports/daily "),
        ["503", "500", "documented/server-error-is-500"]
    );
    assert_eq!(row("GET /catalog "), ["301", "301", "(left,", "recorded)"]);
    let duplicate = text.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words == ["POST", "/items", "500", "409", "duplicate-is-409"]
    });
    assert!(duplicate, "the duplicate-key row:\n{text}");
    // Only the tour table goes to stdout with --tour-only: no record lines.
    assert!(!text.contains("\"request_id\""), "{text}");
}

/// Lines of a child's stdout, read on a thread so the test can wait with a deadline.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line for which `pick` gives a value, waiting at most 30 s for it.
fn wait_for_line<T>(
    lines: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    mut pick: impl FnMut(&str) -> Option<T>,
) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = pick(&line);
                seen.push(line);
                if let Some(found) = found {
                    return found;
                }
            }
            Err(_) => panic!("line not printed within 30 s:\n{}", seen.join("\n")),
        }
    }
}

/// Starts `restatus demo` on a free port: the process, its stdout's lines, the lines seen so
/// far and restatus's address.
fn start_demo() -> (
    std::process::Child,
    std::sync::mpsc::Receiver<String>,
    Vec<String>,
    String,
) {
    let mut child = Command::new(support::binary())
        .args(["demo", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the demo");
    let lines = stdout_lines(&mut child);
    let mut seen = Vec::new();
    let addr = wait_for_line(&lines, &mut seen, |line| {
        line.strip_prefix("restatus on http://")
            .and_then(|rest| rest.split(',').next())
            .map(str::to_owned)
    });
    (child, lines, seen, addr)
}

#[test]
fn demo_keeps_serving_prints_records_and_stops_on_ctrl_c() {
    use std::io::{Read, Write};
    let (mut child, lines, mut seen, addr) = start_demo();
    let admin = wait_for_line(&lines, &mut seen, |line| {
        line.strip_prefix("admin page on http://")
            .and_then(|rest| rest.split('/').next())
            .map(str::to_owned)
    });
    wait_for_line(&lines, &mut seen, |line| {
        line.contains("Ctrl-C stops").then_some(())
    });
    let mut page = std::net::TcpStream::connect(&admin).expect("connect to the admin page");
    page.write_all(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut html = String::new();
    page.read_to_string(&mut html).expect("admin page");
    assert!(html.starts_with("HTTP/1.1 200 "), "{html}");
    assert!(
        html.contains("missing-item-is-404"),
        "tour counts on the page: {html}"
    );
    let mut stream = std::net::TcpStream::connect(&addr).expect("connect to the demo");
    stream
        .write_all(b"GET /items/999?verbose=1 HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");
    let record: serde_json::Value = wait_for_line(&lines, &mut seen, |line| {
        serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .filter(|r| r["path"] == "/items/999")
    });
    assert_eq!(record["rule"], "missing-item-is-404");
    assert_eq!(record["upstream_status"], 200);
    assert_eq!(record["status"], 404);
    // Ctrl-C: SIGINT to the demo process started above, by its id.
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-INT", &pid]).status();
    assert!(sent.is_ok_and(|s| s.success()), "send SIGINT");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the demo did not stop on SIGINT");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// The statuses the contract documents (`../shared`'s source, README "The contract").
const DOCUMENTED: [&str; 8] = ["200", "201", "202", "400", "403", "404", "409", "500"];

/// `docs/demo-openapi.yaml` describes the demo service as its contract documents it: only
/// documented statuses, and every endpoint of the tour but the undocumented redirect.
#[test]
fn the_demo_spec_documents_only_contract_statuses() {
    use yaml_rust2::YamlLoader;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/demo-openapi.yaml");
    let text = std::fs::read_to_string(path).expect("read the spec");
    let spec = &YamlLoader::load_from_str(&text).expect("valid YAML")[0];
    let paths = spec["paths"].as_hash().expect("paths");
    let mut operations = Vec::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path");
        for (method, operation) in item.as_hash().expect("path item") {
            let method = method.as_str().expect("method");
            if method == "parameters" {
                continue;
            }
            let responses = operation["responses"].as_hash().expect("responses");
            for code in responses.keys() {
                let code = code.as_str().expect("status as a string");
                assert!(DOCUMENTED.contains(&code), "{method} {path}: {code}");
            }
            operations.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    for wanted in [
        "GET /items",
        "POST /items",
        "GET /items/{id}",
        "PUT /items/{id}",
        "DELETE /items/{id}",
        "POST /orders",
        "GET /admin/stats",
        "GET /reports/daily",
    ] {
        assert!(
            operations.iter().any(|o| o == wanted),
            "{wanted}: {operations:?}"
        );
    }
}

/// A contract tester run against the demo, as the README shows: every answer restatus gives
/// conforms to the spec (status, content type, body schema), where the service alone fails.
/// schemathesis is installed by `.ci/run`; without it, outside CI, the run is passed over.
#[test]
fn the_demo_passes_a_contract_tester() {
    // The lines are read on (into `_lines`) so that the demo never blocks on its stdout.
    let (mut child, _lines, _, addr) = start_demo();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/demo-openapi.yaml");
    let checks = "status_code_conformance,content_type_conformance,response_schema_conformance";
    let url = format!("http://{addr}");
    let run = Command::new("schemathesis")
        .args(["run", spec, "--url", &url, "--checks", checks])
        .args(["--max-examples", "20", "--seed", "1"])
        .env("NO_COLOR", "1")
        // It keeps a cache where it runs: not in the repository.
        .current_dir(std::env::temp_dir())
        .output();
    let _ = child.kill();
    let _ = child.wait();
    let output = match run {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let message =
                "schemathesis is not installed: `pip install schemathesis` (.ci/run does)";
            assert!(std::env::var_os("CI").is_none(), "{message}");
            eprintln!("note: {message}; contract run not done");
            return;
        }
        Err(err) => panic!("schemathesis: {err}"),
    };
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("No issues found"), "{report}");
}

/// The `strip_prefix` slip: global rules and checks written with the upstream's paths, outside
/// every route's prefix, are warned about (a check would leave its paths unguarded).
#[test]
fn check_warns_about_global_entries_outside_every_route() {
    let text = r#"
[server]
listen = "127.0.0.1:8080"

[[upstreams]]
name = "legacy"
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "flask"
upstream = "legacy"
path_prefix = "/f"
strip_prefix = true

[[routes]]
name = "node"
upstream = "legacy"
path_prefix = "/n"

[[rules]]
name = "upstream-path"
when = { method = "GET", path = "/items/*", status = 200 }
then = { status = 404 }

[[rules]]
name = "named-upstream-path"
routes = ["flask"]
when = { path = "/items/**", status = 200 }
then = { status = 404 }

[[rules]]
name = "client-path"
when = { method = "GET", path = "/f/items/*", status = 200 }
then = { status = 404 }

[[checks]]
name = "token-required"
when = { path = "/admin/**", request_header = { "x-token" = { present = false } } }
then = { status = 403 }
"#;
    let path = config_file("global-outside", text);
    let output = restatus(&["check", "--config", path.to_str().expect("path")]);
    std::fs::remove_file(&path).ok();
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    for (what, name, path) in [
        ("rule", "upstream-path", "/items/*"),
        ("check", "token-required", "/admin/**"),
    ] {
        let warning = format!(
            "warning: {what} `{name}` can never fire: its path {path} is outside every route's \
             path_prefix (/f, /n; paths are matched before strip_prefix)"
        );
        assert!(text.contains(&warning), "{warning}\n{text}");
    }
    assert!(!text.contains("`client-path` can never fire"), "{text}");
    // A rule that can never fire itself shadows nothing: no "comes first" for the global
    // one it would cover.
    assert!(
        text.contains(
            "route flask: rule `named-upstream-path` can never fire: its path /items/** is outside"
        ),
        "{text}"
    );
    assert!(
        !text.contains("`named-upstream-path` comes first"),
        "{text}"
    );
}
