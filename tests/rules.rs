//! Status normalization over real sockets: every condition kind, rule order and exceptions,
//! audit mode, the documented profile, rewrites, body inspection limits, gzip, HEAD, the
//! deviation record and its sink, and config errors in rules.
mod support;

use bytes::Bytes;
use http::{HeaderName, Response};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use restatus::config::{Config, ConfigError};
use restatus::deviation::DeviationLog;
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

// ---------------------------------------------------------------------------------------------
// Helpers

/// A config with one upstream and one route `main` for `/`: `route` is added to the route's
/// table, `rest` after it (more tables: rules, limits, other routes).
fn config_text(upstream: SocketAddr, route: &str, rest: &str) -> String {
    simple_config(upstream, &format!("{route}\n\n{rest}"))
}

/// The `status=N` parameter of a request target, if any.
fn status_param(uri: &str) -> Option<u16> {
    let (_, query) = uri.split_once('?')?;
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("status="))
        .and_then(|code| code.parse().ok())
}

/// An upstream that answers with the status in the `status` query parameter (200 without
/// one), the request body as its body, and a header `NAME` for every request header
/// `x-reply-NAME`.
async fn echo_upstream() -> Upstream {
    spawn_upstream(|seen| async move {
        let mut response = reply(status_param(&seen.uri).unwrap_or(200), seen.body.clone());
        for (name, value) in &seen.headers {
            if let Some(name) = name.as_str().strip_prefix("x-reply-") {
                let name = HeaderName::from_bytes(name.as_bytes()).expect("header name");
                response.headers_mut().append(name, value.clone());
            }
        }
        response
    })
    .await
}

/// A proxy with `route` settings and `rest` tables in front of an [`echo_upstream`].
async fn echo_proxy(route: &str, rest: &str) -> (Upstream, TestProxy) {
    let upstream = echo_upstream().await;
    let proxy = spawn_proxy(&config_text(upstream.addr, route, rest)).await;
    (upstream, proxy)
}

/// The record written for the request with id `id`; panics unless there is exactly one.
fn record_of<'a>(records: &'a [Value], id: &str) -> &'a Value {
    let found: Vec<&Value> = records.iter().filter(|r| r["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "one record for {id}: {records:#?}");
    found[0]
}

/// Sends a request tagged with request id `id`.
async fn tagged(
    client: &TestClient,
    id: &str,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut all = vec![("x-request-id", id)];
    all.extend_from_slice(headers);
    send_with(client, method, url, &all, body.to_owned()).await
}

/// A raw upstream that writes `response` as is and closes the connection, for status lines
/// hyper would not write (a custom reason phrase).
async fn canned_upstream(response: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(response).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A raw HTTP/1.1 exchange: the status line, the header lines (lower-cased) and the bytes
/// after the head.
async fn raw_exchange(addr: SocketAddr, method: &str, path: &str) -> (String, Vec<String>, String) {
    let request = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    let text = raw(addr, request.as_bytes()).await;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .expect("a complete response head");
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or("").to_string();
    let headers = lines.map(|l| l.to_ascii_lowercase()).collect();
    (status_line, headers, body.to_string())
}

fn gzip(data: &[u8]) -> Bytes {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).expect("gzip");
    Bytes::from(encoder.finish().expect("gzip"))
}

/// 1 MiB that starts with `NOT_FOUND`, so a rule that saw any of it would fire.
fn big_body() -> Bytes {
    let mut data = b"NOT_FOUND ".to_vec();
    data.extend((0..(1usize << 20) - data.len()).map(|i| (i % 251) as u8));
    Bytes::from(data)
}

// ---------------------------------------------------------------------------------------------
// Conditions

#[tokio::test]
async fn method_condition_takes_one_method_or_a_list() {
    let rules = r#"
[[rules]]
name = "post-is-201"
when = { method = "POST", status = 200 }
then = { status = 201 }

[[rules]]
name = "edits-are-202"
when = { method = ["PUT", "patch"], status = 200 }
then = { status = 202 }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    let cases = [
        ("POST", 201, Some("post-is-201")),
        ("PUT", 202, Some("edits-are-202")),
        ("PATCH", 202, Some("edits-are-202")),
        ("GET", 200, None),
        ("DELETE", 200, None),
    ];
    let client = client();
    for (method, want, rule) in cases {
        let reply = tagged(&client, method, method, &proxy.url("/items"), &[], "").await;
        assert_eq!(reply.status, want, "{method}");
        let records = proxy.records();
        match rule {
            Some(rule) => assert_eq!(record_of(&records, method)["rule"], rule),
            None => assert!(records.iter().all(|r| r["request_id"] != method)),
        }
    }
    proxy.stop().await;
}

#[tokio::test]
async fn path_conditions_exact_globs_and_regex_ignore_the_query() {
    let rules = r#"
[[rules]]
name = "exact"
when = { path = "/items", status = 200 }
then = { status = 201 }

[[rules]]
name = "one-segment"
when = { path = "/items/*", status = 200 }
then = { status = 202 }

[[rules]]
name = "any-rest"
when = { path = "/deep/**", status = 200 }
then = { status = 409 }

[[rules]]
name = "middle-segment"
when = { path = "/*/parts", status = 200 }
then = { status = 404 }

[[rules]]
name = "regex"
when = { path_regex = "^/v[0-9]+/orders$", status = 200 }
then = { status = 403 }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    let cases = [
        ("/items", 201),
        ("/items?status=200&x=/items/7", 201),
        ("/items/", 200),
        ("/items/7", 202),
        ("/items/7?q=1", 202),
        ("/items/7/parts", 200),
        ("/itemsx", 200),
        ("/deep", 409),
        ("/deep/a/b/c", 409),
        ("/deeper", 200),
        ("/v1/parts", 404),
        ("/v1/v2/parts", 200),
        ("/v2/orders", 403),
        ("/v2/orders?status=200", 403),
        ("/v2/orders/1", 200),
        ("/vx/orders", 200),
    ];
    for (path, want) in cases {
        assert_eq!(get(&proxy.url(path)).await.status, want, "{path}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn path_conditions_see_the_path_before_strip_prefix() {
    let rest = r#"
[[routes]]
name = "inventory"
upstream = "backend"
path_prefix = "/inventory"
strip_prefix = true
profile = "none"

[[rules]]
name = "upstream-path"
routes = ["inventory"]
when = { path = "/items", status = 200 }
then = { status = 409 }

[[rules]]
name = "client-path"
routes = ["inventory"]
when = { path = "/inventory/items", status = 200 }
then = { status = 201 }
"#;
    let (upstream, proxy) = echo_proxy(r#"profile = "none""#, rest).await;
    let reply = get(&proxy.url("/inventory/items?page=2")).await;
    assert_eq!(reply.status, 201);
    assert_eq!(upstream.requests()[0].uri, "/items?page=2");
    let records = proxy.records();
    assert_eq!(records[0]["rule"], "client-path");
    assert_eq!(records[0]["path"], "/inventory/items");
    // The main route's `/items` is not the inventory route's: its rules do not apply there.
    assert_eq!(get(&proxy.url("/items")).await.status, 200);
    proxy.stop().await;
}

#[tokio::test]
async fn status_conditions_take_a_code_a_list_a_class_or_a_range() {
    let rules = r#"
[[rules]]
name = "code"
when = { status = 418 }
then = { status = 400 }

[[rules]]
name = "list"
when = { status = [401, 407] }
then = { status = 403 }

[[rules]]
name = "range"
when = { status = "500-503" }
then = { status = 409 }

[[rules]]
name = "class"
when = { status = "5xx" }
then = { status = 404 }

[[rules]]
name = "mixed"
when = { status = [203, "205-206", "3XX"] }
then = { status = 200 }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    let cases = [
        (418, 400),
        (417, 417),
        (401, 403),
        (407, 403),
        (403, 403),
        (500, 409),
        (503, 409),
        (504, 404),
        (599, 404),
        (203, 200),
        (205, 200),
        (206, 200),
        (204, 204),
        (302, 200),
        (399, 200),
    ];
    for (status, want) in cases {
        let reply = get(&proxy.url(&format!("/x?status={status}"))).await;
        assert_eq!(reply.status, want, "upstream {status}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn header_conditions_exact_regex_and_absent() {
    let rules = r#"
[[rules]]
name = "client-exact"
when = { path = "/a", request_header = { "X-Client" = "legacy" } }
then = { status = 201 }

[[rules]]
name = "client-regex"
when = { path = "/b", request_header = { "x-version" = { regex = "^v1\\." } } }
then = { status = 202 }

[[rules]]
name = "token-absent"
when = { path = "/c", request_header = { "x-token" = { present = false } } }
then = { status = 403 }

[[rules]]
name = "reply-exact"
when = { path = "/d", response_header = { "x-kind" = "error" } }
then = { status = 500 }

[[rules]]
name = "reply-regex"
when = { path = "/e", response_header = { "x-error-code" = { regex = "^E4[0-9]{2}$" } } }
then = { status = 400 }

[[rules]]
name = "reply-absent"
when = { path = "/f", response_header = { "x-checked" = { present = false } } }
then = { status = 409 }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    type Case = (&'static str, &'static [(&'static str, &'static str)], u16);
    let cases: [Case; 14] = [
        ("/a", &[("x-client", "legacy")], 201),
        ("/a", &[("x-client", "Legacy")], 200),
        ("/a", &[], 200),
        ("/b", &[("x-version", "v1.2")], 202),
        ("/b", &[("x-version", "v10")], 200),
        ("/c", &[], 403),
        ("/c", &[("x-token", "t")], 200),
        ("/d", &[("x-reply-x-kind", "error")], 500),
        ("/d", &[("x-reply-x-kind", "ok")], 200),
        ("/e", &[("x-reply-x-error-code", "E404")], 400),
        ("/e", &[("x-reply-x-error-code", "E5000")], 200),
        ("/f", &[], 409),
        ("/f", &[("x-reply-x-checked", "yes")], 200),
        // A request header is not a response header.
        ("/d", &[("x-kind", "error")], 200),
    ];
    for (path, headers, want) in cases {
        let reply = send("GET", &proxy.url(path), headers, "").await;
        assert_eq!(reply.status, want, "{path} {headers:?}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn body_regex_matches_the_response_body() {
    let rules = r#"
[[rules]]
name = "duplicate-is-409"
when = { status = 500, body_regex = "(?i)duplicate key" }
then = { status = 409 }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    let url = proxy.url("/items?status=500");
    let reply = send("POST", &url, &[], "ERROR: Duplicate KEY value violates").await;
    assert_eq!(reply.status, 409);
    assert_eq!(reply.text(), "ERROR: Duplicate KEY value violates");
    let reply = send("POST", &url, &[], "ERROR: disk full").await;
    assert_eq!(reply.status, 500);
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["body_inspected"], true);
    proxy.stop().await;
}

#[tokio::test]
async fn body_json_equals_exists_and_in() {
    let rules = r#"
[[rules]]
name = "equals"
when = { path = "/a", body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }

[[rules]]
name = "exists"
when = { path = "/b", body_json = { pointer = "/error", exists = true } }
then = { status = 400 }

[[rules]]
name = "missing"
when = { path = "/c", body_json = { pointer = "/data", exists = false } }
then = { status = 500 }

[[rules]]
name = "one-of"
when = { path = "/d", body_json = { pointer = "/code", in = [40, 41, "conflict"] } }
then = { status = 409 }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    let cases = [
        ("/a", r#"{"error":{"code":"NOT_FOUND"}}"#, 404),
        ("/a", r#"{"error":{"code":"GONE"}}"#, 200),
        ("/a", r#"{"error":"NOT_FOUND"}"#, 200),
        ("/a", "NOT_FOUND", 200),
        // A leading byte-order mark (.NET, IIS) is ignored, as RFC 8259 §8.1 allows.
        ("/a", "\u{feff}{\"error\":{\"code\":\"NOT_FOUND\"}}", 404),
        ("/b", r#"{"error":null}"#, 400),
        ("/b", r#"{"data":[]}"#, 200),
        ("/c", r#"{"error":"x"}"#, 500),
        ("/c", r#"{"data":null}"#, 200),
        // A body that is not JSON holds no value at any pointer.
        ("/c", "<html>oops</html>", 500),
        ("/d", r#"{"code":41}"#, 409),
        ("/d", r#"{"code":"conflict"}"#, 409),
        ("/d", r#"{"code":42}"#, 200),
        ("/d", r#"{"code":"41"}"#, 200),
    ];
    for (path, body, want) in cases {
        let reply = send("PUT", &proxy.url(path), &[], body).await;
        assert_eq!(reply.status, want, "{path} {body}");
        assert_eq!(reply.text(), body, "the body passes unchanged");
    }
    proxy.stop().await;
}

#[test]
fn dotted_keys_and_subtables_compile_like_inline_tables() {
    let head = "[[upstreams]]\nname = \"a\"\ntargets = [\"http://127.0.0.1:1\"]\n\
                [[routes]]\nname = \"main\"\nupstream = \"a\"\nprofile = \"none\"\n";
    let inline = format!(
        "{head}[[rules]]\nname = \"r\"\n\
         when = {{ method = \"GET\", status = [200, 203], response_header = {{ \"x-a\" = \"b\" }}, body_json = {{ pointer = \"/e\", exists = true }} }}\n\
         then = {{ status = 404, headers = {{ set = {{ \"x-b\" = \"c\" }} }} }}\n"
    );
    let dotted = format!(
        "{head}[[rules]]\nname = \"r\"\nwhen.method = \"GET\"\nwhen.status = [200, 203]\n\
         when.response_header.x-a = \"b\"\nwhen.body_json.pointer = \"/e\"\nwhen.body_json.exists = true\n\
         then.status = 404\nthen.headers.set.x-b = \"c\"\n"
    );
    let tables = format!(
        "{head}[[rules]]\nname = \"r\"\n[rules.when]\nmethod = \"GET\"\nstatus = [200, 203]\n\
         response_header = {{ \"x-a\" = \"b\" }}\nbody_json = {{ pointer = \"/e\", exists = true }}\n\
         [rules.then]\nstatus = 404\nheaders.set.x-b = \"c\"\n"
    );
    let describe = |text: &str| {
        let config = Config::parse(Path::new("rules.toml"), text)
            .unwrap_or_else(|err| panic!("{err}\n{text}"));
        let rule = &config.rules[0];
        let set: Vec<String> = rule
            .then
            .set_headers
            .iter()
            .map(|(n, v)| format!("{n}={v:?}"))
            .collect();
        format!("{} {set:?}", restatus::check::describe_rule(rule))
    };
    let want = describe(&inline);
    assert!(want.contains("x-a"), "{want}");
    assert_eq!(describe(&dotted), want);
    assert_eq!(describe(&tables), want);
}

// ---------------------------------------------------------------------------------------------
// Order, exceptions, audit

#[tokio::test]
async fn route_rules_then_global_then_profile_and_the_first_match_wins() {
    // Written out of order on purpose: a global rule first, route rules after it.
    let rest = r#"
[[routes]]
name = "other"
upstream = "backend"
path_prefix = "/other"

[[rules]]
name = "global-post"
when = { method = "POST", status = 200 }
then = { status = 202 }

[[rules]]
name = "route-post-x"
routes = ["main"]
when = { method = "POST", path = "/x", status = 200 }
then = { status = 409 }

[[rules]]
name = "route-post-x-later"
routes = ["main"]
when = { method = "POST", path = "/x", status = 200 }
then = { status = 403 }

[[rules]]
name = "other-only"
routes = ["other"]
when = { method = "POST", status = 200 }
then = { status = 400 }

[[rules]]
name = "global-get-201"
when = { method = "GET", status = 201 }
then = { status = 202 }
"#;
    let (_upstream, proxy) = echo_proxy("", rest).await;
    let cases = [
        ("a", "POST", "/x", 409, "route-post-x"),
        ("b", "POST", "/y", 202, "global-post"),
        ("c", "POST", "/other/x", 400, "other-only"),
        ("d", "GET", "/z?status=201", 202, "global-get-201"),
        (
            "e",
            "DELETE",
            "/z?status=201",
            200,
            "documented/success-is-200",
        ),
    ];
    let client = client();
    for (id, method, path, want, _) in cases {
        let reply = tagged(&client, id, method, &proxy.url(path), &[], "").await;
        assert_eq!(reply.status, want, "{method} {path}");
    }
    let records = proxy.records();
    for (id, _, _, want, rule) in cases {
        let record = record_of(&records, id);
        assert_eq!(record["rule"], rule, "{id}");
        assert_eq!(record["status"], want, "{id}");
    }
    proxy.stop().await;
}

#[tokio::test]
async fn a_rule_that_keeps_the_status_is_an_allowed_exception() {
    let rules = r#"
[[rules]]
name = "legacy-post-stays-200"
when = { method = "POST", path = "/legacy", status = 200 }
then = { status = 200 }

[[rules]]
name = "teapot-stays"
when = { status = 418 }
then = { status = 418 }
"#;
    let (_upstream, proxy) = echo_proxy("", rules).await;
    let client = client();
    let reply = tagged(&client, "legacy", "POST", &proxy.url("/legacy"), &[], "").await;
    assert_eq!(reply.status, 200, "the profile would make it 201");
    assert_eq!(reply.header("x-restatus-original-status"), None);
    let reply = tagged(
        &client,
        "teapot",
        "GET",
        &proxy.url("/t?status=418"),
        &[],
        "",
    )
    .await;
    assert_eq!(reply.status, 418, "the profile would make it 400");
    // The same request elsewhere is still normalized and recorded.
    let reply = tagged(&client, "normal", "POST", &proxy.url("/new"), &[], "").await;
    assert_eq!(reply.status, 201);
    let records = proxy.records();
    assert_eq!(records.len(), 1, "exceptions write no record: {records:?}");
    assert_eq!(records[0]["request_id"], "normal");
    proxy.stop().await;
}

#[tokio::test]
async fn audit_mode_changes_nothing_and_records_what_it_would_do() {
    let rules = r#"
[deviations]
mode = "audit"

[[rules]]
name = "replace-body"
when = { path = "/body", status = 200 }
then = { status = 404, body = "replaced", headers = { set = { "x-added" = "1" } } }
"#;
    let (_upstream, proxy) = echo_proxy("", rules).await;
    let client = client();
    let reply = tagged(&client, "post", "POST", &proxy.url("/items"), &[], "made").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "made");
    assert_eq!(reply.header("x-restatus-original-status"), None);
    let reply = tagged(&client, "body", "GET", &proxy.url("/body"), &[], "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "");
    assert_eq!(reply.header("x-added"), None);
    let reply = tagged(&client, "left", "GET", &proxy.url("/r?status=302"), &[], "").await;
    assert_eq!(reply.status, 302);
    let records = proxy.records();
    let post = record_of(&records, "post");
    assert_eq!(post["action"], "would_rewrite");
    assert_eq!(post["rule"], "documented/create-is-201");
    assert_eq!(post["upstream_status"], 200);
    assert_eq!(post["status"], 200, "what the client got");
    assert_eq!(post["would_status"], 201, "what the rule would answer");
    let body = record_of(&records, "body");
    assert_eq!(body["action"], "would_rewrite");
    assert_eq!(body["would_status"], 404);
    let left = record_of(&records, "left");
    assert_eq!(left["action"], "left");
    assert!(left.get("would_status").is_none(), "{left}");
    // The counts say what would change: `200->(201)`, not `200->200`.
    let counts = proxy.log.counts();
    let pairs = &counts.by_status["main"];
    assert_eq!(pairs.get("200->(201)"), Some(&1), "{pairs:?}");
    assert_eq!(pairs.get("200->(404)"), Some(&1), "{pairs:?}");
    assert!(!pairs.contains_key("200->200"), "{pairs:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn mode_can_be_overridden_per_route() {
    let upstream = echo_upstream().await;
    let routes = |global: &str| {
        let rest = format!(
            "[deviations]\nmode = \"{global}\"\n\n[[routes]]\nname = \"flipped\"\n\
             upstream = \"backend\"\npath_prefix = \"/flipped\"\nmode = \"{}\"\n",
            if global == "audit" {
                "enforce"
            } else {
                "audit"
            }
        );
        config_text(upstream.addr, "", &rest)
    };
    for (global, main_status, flipped_status) in [("enforce", 201, 200), ("audit", 200, 201)] {
        let proxy = spawn_proxy(&routes(global)).await;
        let client = client();
        let main = tagged(&client, "main", "POST", &proxy.url("/items"), &[], "").await;
        let flipped = tagged(&client, "flip", "POST", &proxy.url("/flipped/i"), &[], "").await;
        assert_eq!(main.status, main_status, "global {global}");
        assert_eq!(flipped.status, flipped_status, "global {global}");
        let records = proxy.records();
        let action = |status| {
            if status == 201 {
                "rewrote"
            } else {
                "would_rewrite"
            }
        };
        assert_eq!(record_of(&records, "main")["action"], action(main_status));
        assert_eq!(
            record_of(&records, "flip")["action"],
            action(flipped_status)
        );
        proxy.stop().await;
    }
}

// ---------------------------------------------------------------------------------------------
// The documented profile

/// (method, upstream status, status the client gets, rule, action); `None` action: no record.
type Row = (
    &'static str,
    u16,
    u16,
    Option<&'static str>,
    Option<&'static str>,
);

fn profile_rows() -> Vec<Row> {
    let mut rows: Vec<Row> = Vec::new();
    let rewrote = Some("rewrote");
    for status in [200, 203, 204] {
        rows.push((
            "POST",
            status,
            201,
            Some("documented/create-is-201"),
            rewrote,
        ));
    }
    for method in ["GET", "HEAD", "PUT", "PATCH", "DELETE"] {
        for status in [201, 203, 204] {
            rows.push((
                method,
                status,
                200,
                Some("documented/success-is-200"),
                rewrote,
            ));
        }
        rows.push((method, 200, 200, None, None));
    }
    rows.push(("POST", 201, 201, None, None));
    for method in ["GET", "POST", "DELETE"] {
        rows.push((method, 202, 202, None, None));
    }
    for status in [401, 407] {
        rows.push((
            "GET",
            status,
            403,
            Some("documented/bad-token-is-403"),
            rewrote,
        ));
    }
    rows.push(("DELETE", 410, 404, Some("documented/gone-is-404"), rewrote));
    rows.push((
        "PUT",
        412,
        409,
        Some("documented/precondition-is-409"),
        rewrote,
    ));
    for status in [400, 403, 404, 409, 500] {
        rows.push(("POST", status, status, None, None));
    }
    for status in [402, 405, 406, 408, 411, 413, 415, 418, 422, 429, 451, 499] {
        rows.push((
            "POST",
            status,
            400,
            Some("documented/client-error-is-400"),
            rewrote,
        ));
    }
    for status in [501, 502, 503, 504, 505, 511, 599] {
        rows.push((
            "GET",
            status,
            500,
            Some("documented/server-error-is-500"),
            rewrote,
        ));
    }
    for status in [206, 300, 301, 302, 303, 304, 307, 308] {
        rows.push(("GET", status, status, None, Some("left")));
    }
    // No row of the table covers a 204 to OPTIONS: it is left and recorded.
    rows.push(("OPTIONS", 204, 204, None, Some("left")));
    rows
}

#[tokio::test]
async fn documented_profile_maps_every_row_of_the_table() {
    let (_upstream, proxy) = echo_proxy(r#"profile = "documented""#, "").await;
    let client = client();
    let rows = profile_rows();
    for (i, (method, upstream, want, _, _)) in rows.iter().enumerate() {
        let url = proxy.url(&format!("/resource?status={upstream}"));
        let reply = tagged(&client, &format!("row-{i}"), method, &url, &[], "").await;
        assert_eq!(reply.status, *want, "{method} {upstream}");
    }
    let records = proxy.records();
    for (i, (method, upstream, want, rule, action)) in rows.iter().enumerate() {
        let id = format!("row-{i}");
        let Some(action) = action else {
            let found = records.iter().find(|r| r["request_id"] == id.as_str());
            assert!(found.is_none(), "{method} {upstream}: {found:?}");
            continue;
        };
        let record = record_of(&records, &id);
        assert_eq!(record["action"], *action, "{method} {upstream}");
        assert_eq!(record["rule"], rule.map_or(Value::Null, Value::from));
        assert_eq!(record["upstream_status"], *upstream);
        assert_eq!(record["status"], *want);
        assert_eq!(record["source"], "upstream");
    }
    proxy.stop().await;
}

/// A 304 to a conditional GET, a 206 to a range request and a 204 to a CORS preflight are
/// the answers the client's own HTTP mechanisms ask for, so browsers and caches do not fill
/// the log with `left` records; the same statuses unasked still are recorded (see the
/// profile table above).
#[tokio::test]
async fn answers_the_client_asked_for_are_not_recorded_as_left() {
    let (_upstream, proxy) = echo_proxy(r#"profile = "documented""#, "").await;
    let client = client();
    type Asked<'a> = (&'a str, u16, &'a [(&'a str, &'a str)]);
    let asked: [Asked; 4] = [
        ("GET", 304, &[("if-none-match", "\"v1\"")]),
        (
            "HEAD",
            304,
            &[("if-modified-since", "Tue, 01 Dec 2026 00:00:00 GMT")],
        ),
        ("GET", 206, &[("range", "bytes=0-1")]),
        (
            "OPTIONS",
            204,
            &[
                ("origin", "https://app.example"),
                ("access-control-request-method", "PUT"),
            ],
        ),
    ];
    for (i, (method, status, headers)) in asked.iter().enumerate() {
        let url = proxy.url(&format!("/resource?status={status}"));
        let reply = tagged(&client, &format!("asked-{i}"), method, &url, headers, "").await;
        assert_eq!(reply.status, *status, "{method}");
    }
    let unasked = proxy.url("/resource?status=304");
    let reply = tagged(&client, "unasked", "GET", &unasked, &[], "").await;
    assert_eq!(reply.status, 304);
    let records = proxy.records();
    assert_eq!(record_of(&records, "unasked")["action"], "left");
    assert_eq!(records.len(), 1, "{records:?}");
    proxy.stop().await;
}

#[tokio::test]
async fn proxy_errors_go_through_the_profile_with_source_proxy() {
    // Nothing listens on the first address; the second never answers.
    let dead = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let dead_addr = dead.local_addr().expect("addr");
    drop(dead);
    let silent = spawn_streaming_upstream(|_| std::future::pending()).await;
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "dead"
targets = ["http://{dead_addr}"]
connect_timeout = "2s"

[[upstreams]]
name = "silent"
targets = ["http://{}"]
response_timeout = "300ms"

[[routes]]
name = "dead"
upstream = "dead"
path_prefix = "/dead"

[[routes]]
name = "silent"
upstream = "silent"
path_prefix = "/silent"
"#,
        silent.addr
    );
    let proxy = spawn_proxy(&text).await;
    let client = client();
    let cases = [
        ("dead", "/dead/x?token=s", 502, "connect"),
        ("slow", "/silent/x", 504, "timeout"),
    ];
    for (id, path, proxy_status, cause) in cases {
        let reply = tagged(&client, id, "GET", &proxy.url(path), &[], "").await;
        assert_eq!(reply.status, 500, "{path}");
        assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
        let records = proxy.records();
        let record = record_of(&records, id);
        assert_eq!(record["source"], "proxy");
        assert_eq!(record["upstream_status"], proxy_status);
        assert_eq!(record["cause"], cause, "why restatus answered");
        assert_eq!(record["status"], 500);
        assert_eq!(record["rule"], "documented/server-error-is-500");
        assert_eq!(record["path"], path.split('?').next().unwrap_or(path));
    }
    proxy.stop().await;
}

/// RFC 9110 §15: a code from 600 to 999 is invalid and to be taken as a 5xx, so the
/// profile's server-error rule makes it a 500; the service's body is kept.
#[tokio::test]
async fn a_status_beyond_599_is_taken_as_a_5xx() {
    let upstream =
        canned_upstream(b"HTTP/1.1 600 Beyond\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
    let proxy = spawn_proxy(&config_text(upstream, "", "")).await;
    let reply = get(&proxy.url("/x")).await;
    assert_eq!((reply.status, reply.text().as_str()), (500, "ok"));
    assert_eq!(reply.header("x-restatus-original-status"), Some("600"));
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["source"], "upstream");
    assert!(records[0].get("cause").is_none(), "{records:?}");
    assert_eq!(records[0]["upstream_status"], 600);
    assert_eq!(records[0]["rule"], "documented/server-error-is-500");
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Rewrites

#[tokio::test]
async fn then_sets_and_removes_headers_and_replaces_the_body() {
    let rules = r#"
[[rules]]
name = "headers"
when = { path = "/h", status = 200 }
then = { status = 201, headers = { set = { "x-added" = "yes", "cache-control" = "no-store" }, remove = ["x-internal"] } }

[[rules]]
name = "json-body"
when = { path = "/j", status = 500 }
then = { status = 404, body = { error = { code = "NOT_FOUND", retry = false } } }

[[rules]]
name = "text-body"
when = { path = "/t", status = 200 }
then = { status = 409, body = "conflict" }

[[rules]]
name = "tagged-body"
when = { path = "/tagged", status = 200 }
then = { status = 404, body = "gone", headers = { set = { "etag" = "\"rule-1\"" } } }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    let upstream_headers = [
        ("x-reply-x-internal", "secret-host-7"),
        ("x-reply-cache-control", "max-age=60"),
        ("x-reply-x-kept", "kept"),
    ];
    let reply = send("POST", &proxy.url("/h"), &upstream_headers, "payload").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.header("x-added"), Some("yes"));
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("x-internal"), None);
    assert_eq!(reply.header("x-kept"), Some("kept"));
    assert_eq!(reply.text(), "payload", "no then.body: the upstream's body");
    assert_eq!(reply.header("x-restatus-original-status"), Some("200"));

    let long = "a much longer body from the upstream than the replacement".repeat(20);
    let url = proxy.url("/j?status=500");
    let headers = [
        ("x-reply-content-encoding", "gzip"),
        ("x-reply-trailer", "x-checksum"),
    ];
    let reply = send("POST", &url, &headers, &long).await;
    assert_eq!(reply.status, 404);
    let want = r#"{"error":{"code":"NOT_FOUND","retry":false}}"#;
    assert_eq!(
        reply.json(),
        serde_json::from_str::<Value>(want).expect("json")
    );
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let length = reply.body.len().to_string();
    assert_eq!(reply.header("content-length"), Some(length.as_str()));
    assert_eq!(
        reply.header("content-encoding"),
        None,
        "the new body is not gzip"
    );
    assert_eq!(
        reply.header("trailer"),
        None,
        "the new body has no trailers"
    );

    // RFC 9110 §8.8: the upstream's validators and digests go with its body, or a cache
    // revalidating with the old ETag would get a 304 for the new body.
    let about_the_body = [
        ("x-reply-etag", "\"v1\""),
        ("x-reply-last-modified", "Mon, 07 Dec 2026 10:00:00 GMT"),
        ("x-reply-content-digest", "sha-256=:abc=:"),
        ("x-reply-x-kept", "kept"),
    ];
    let reply = send("POST", &proxy.url("/t"), &about_the_body, &long).await;
    assert_eq!((reply.status, reply.text().as_str()), (409, "conflict"));
    assert_eq!(reply.header("content-length"), Some("8"));
    for name in ["etag", "last-modified", "content-digest"] {
        assert_eq!(reply.header(name), None, "{name}");
    }
    assert_eq!(reply.header("x-kept"), Some("kept"));
    // Without a new body they stay; a rule's own ETag stays with its body.
    let reply = send("POST", &proxy.url("/h"), &about_the_body, "payload").await;
    assert_eq!(reply.header("etag"), Some("\"v1\""));
    let reply = send("POST", &proxy.url("/tagged"), &about_the_body, "payload").await;
    assert_eq!(
        (reply.status, reply.header("etag")),
        (404, Some("\"rule-1\""))
    );
    proxy.stop().await;
}

#[tokio::test]
async fn rewrites_are_framed_correctly_over_http2() {
    let rules = r#"
[[rules]]
name = "replace"
when = { path = "/replace", status = 500 }
then = { status = 404, body = { error = "not found" } }
"#;
    let (_upstream, proxy) = echo_proxy("", rules).await;
    let client = h2_client();
    let reply = send_with(&client, "POST", &proxy.url("/items"), &[], "created").await;
    assert_eq!((reply.status, reply.text().as_str()), (201, "created"));
    let url = proxy.url("/replace?status=500");
    let reply = send_with(&client, "PUT", &url, &[], "a longer upstream body").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json(), serde_json::json!({ "error": "not found" }));
    let reply = send_with(&client, "DELETE", &proxy.url("/x?status=204"), &[], "").await;
    assert_eq!((reply.status, reply.body.len()), (200, 0));
    assert_eq!(proxy.records().len(), 3);
    proxy.stop().await;
}

/// Rewrites a 200 on `/rewrite` to 201 and leaves every other path alone.
const REWRITE_RULE: &str = r#"
[[rules]]
name = "rewrite"
when = { path = "/rewrite", status = 200 }
then = { status = 201 }
"#;

#[tokio::test]
async fn a_rewrite_drops_the_reason_phrase() {
    let upstream = canned_upstream(
        b"HTTP/1.1 200 Fine By Me\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .await;
    let proxy = spawn_proxy(&config_text(upstream, r#"profile = "none""#, REWRITE_RULE)).await;
    let (status_line, _, body) = raw_exchange(proxy.addr, "GET", "/keep").await;
    assert_eq!(
        status_line, "HTTP/1.1 200 Fine By Me",
        "kept when unchanged"
    );
    assert_eq!(body, "ok");
    let (status_line, headers, body) = raw_exchange(proxy.addr, "GET", "/rewrite").await;
    assert_eq!(status_line, "HTTP/1.1 201 Created");
    assert!(headers.contains(&"x-restatus-original-status: 200".to_string()));
    assert_eq!(body, "ok");
    proxy.stop().await;
}

#[tokio::test]
async fn original_status_header_can_be_renamed_or_disabled() {
    let upstream = echo_upstream().await;
    for (setting, header) in [
        ("", Some("x-restatus-original-status")),
        (
            "original_status_header = \"x-legacy-status\"",
            Some("x-legacy-status"),
        ),
        ("original_status_header = \"\"", None),
    ] {
        let rest = format!("[deviations]\n{setting}\n");
        let proxy = spawn_proxy(&config_text(upstream.addr, "", &rest)).await;
        let reply = send("GET", &proxy.url("/x?status=503"), &[], "").await;
        assert_eq!(reply.status, 500);
        let names: Vec<&str> = reply
            .headers
            .keys()
            .map(|n| n.as_str())
            .filter(|n| n.contains("status"))
            .collect();
        match header {
            Some(name) => {
                assert_eq!(reply.header(name), Some("503"), "{setting}");
                assert_eq!(names, [name], "{setting}");
            }
            None => assert!(names.is_empty(), "{setting}: {names:?}"),
        }
        // Not on a response that was left alone.
        let reply = send("GET", &proxy.url("/x?status=404"), &[], "").await;
        assert!(reply.headers.keys().all(|n| !n.as_str().contains("status")));
        proxy.stop().await;
    }
}

#[tokio::test]
async fn an_upstreams_copies_of_restatus_fields_do_not_reach_the_client() {
    // The fields mean "restatus made this answer" and "restatus rewrote this status"; an
    // upstream's own copies would tell the client and the log reader something untrue.
    let upstream = canned_upstream(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-restatus-source: proxy\r\n\
          x-restatus-original-status: 500\r\nx-legacy-status: 418\r\nx-kept: 1\r\n\
          connection: close\r\n\r\nok",
    )
    .await;
    let proxy = spawn_proxy(&config_text(upstream, r#"profile = "none""#, REWRITE_RULE)).await;
    let (status_line, headers, body) = raw_exchange(proxy.addr, "GET", "/keep").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert_eq!(body, "ok");
    let restatus_fields = |headers: &[String]| -> Vec<String> {
        let own = headers.iter().filter(|h| h.starts_with("x-restatus"));
        own.cloned().collect()
    };
    let own = restatus_fields(&headers);
    assert!(own.is_empty(), "left alone, yet marked: {own:?}");
    assert!(headers.contains(&"x-kept: 1".to_string()), "{headers:?}");
    let (status_line, headers, _) = raw_exchange(proxy.addr, "GET", "/rewrite").await;
    assert_eq!(status_line, "HTTP/1.1 201 Created");
    let own = restatus_fields(&headers);
    assert_eq!(own, ["x-restatus-original-status: 200"], "{headers:?}");
    proxy.stop().await;

    // Renamed, the configured field is restatus's and the default name is the upstream's.
    let rest =
        format!("{REWRITE_RULE}\n[deviations]\noriginal_status_header = \"x-legacy-status\"\n");
    let proxy = spawn_proxy(&config_text(upstream, r#"profile = "none""#, &rest)).await;
    let (_, headers, _) = raw_exchange(proxy.addr, "GET", "/keep").await;
    assert!(
        !headers.iter().any(|h| h.starts_with("x-legacy-status")),
        "{headers:?}"
    );
    assert!(headers.contains(&"x-restatus-original-status: 500".to_string()));
    assert!(!headers.iter().any(|h| h.starts_with("x-restatus-source")));
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Bodies: limits, gzip, HEAD, 204/304

const BIG_BODY_RULES: &str = r#"
[limits]
inspect_body = "64KiB"

[[rules]]
name = "not-found-body"
when = { path = "/big", status = 200, body_regex = "NOT_FOUND" }
then = { status = 404 }

[[rules]]
name = "big-is-accepted"
when = { path = "/big", status = 200 }
then = { status = 202 }
"#;

#[tokio::test]
async fn a_body_over_inspect_body_streams_through_intact() {
    let body = big_body();
    let sent = body.clone();
    let upstream = spawn_upstream(move |seen| {
        let body = sent.clone();
        async move {
            if seen.uri.contains("chunked") {
                // No Content-Length: the proxy finds out the size while reading.
                let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..16)
                    .map(|i| Ok(Frame::data(body.slice(i << 16..(i + 1) << 16))))
                    .collect();
                let stream = StreamBody::new(futures_util::stream::iter(chunks));
                Response::new(BodyExt::boxed(stream))
            } else if seen.uri.contains("small") {
                reply(200, "NOT_FOUND")
            } else {
                reply(200, body)
            }
        }
    })
    .await;
    let rules = format!("{BIG_BODY_RULES}\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let proxy = spawn_proxy(&config_text(upstream.addr, r#"profile = "none""#, &rules)).await;
    let client = client();
    for id in ["sized", "chunked"] {
        let url = proxy.url(&format!("/big?{id}"));
        let reply = tagged(&client, id, "GET", &url, &[], "").await;
        assert_eq!(reply.status, 202, "{id}: the body rule never saw the body");
        assert_eq!(reply.body.len(), body.len(), "{id}");
        assert!(reply.body == body, "{id}: the body arrives byte for byte");
    }
    let reply = tagged(&client, "small", "GET", &proxy.url("/big?small"), &[], "").await;
    assert_eq!(reply.status, 404, "a body within the limit is inspected");
    let records = proxy.records();
    for (id, rule, inspected) in [
        ("sized", "big-is-accepted", false),
        ("chunked", "big-is-accepted", false),
        ("small", "not-found-body", true),
    ] {
        let record = record_of(&records, id);
        assert_eq!(record["rule"], rule, "{id}");
        assert_eq!(record["body_inspected"], inspected, "{id}");
    }
    // The two bodies the rule could not read are counted, so that a rule that never gets
    // to look shows even where no record is written.
    let admin = proxy.admin.expect("admin listener");
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    let series = r#"restatus_bodies_not_inspected_total{route="main"} "#;
    let line = metrics.lines().find(|l| l.starts_with(series));
    assert_eq!(line, Some(&*format!("{series}2")), "{metrics}");
    proxy.stop().await;
}

#[tokio::test]
async fn a_body_no_rule_needs_is_streamed_not_buffered() {
    // The upstream sends its head and a first chunk, then waits for the test to release the
    // rest: a proxy that buffered the body would hold the head back until then.
    let release = Arc::new(tokio::sync::Notify::new());
    let gate = release.clone();
    let upstream = spawn_streaming_upstream(move |_| {
        let gate = gate.clone();
        async move {
            let first = futures_util::stream::iter([Ok::<_, BoxError>(Frame::data(
                Bytes::from_static(b"first "),
            ))]);
            let rest = futures_util::stream::once(async move {
                gate.notified().await;
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"rest")))
            });
            let stream = futures_util::StreamExt::chain(first, rest);
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
    })
    .await;
    let rules = r#"
[[rules]]
name = "needs-body-elsewhere"
when = { path = "/other", status = 200, body_regex = "first" }
then = { status = 404 }

[[rules]]
name = "no-body-needed"
when = { path = "/stream", status = 200 }
then = { status = 202 }
"#;
    let proxy = spawn_proxy(&config_text(upstream.addr, r#"profile = "none""#, rules)).await;
    let request = http::Request::get(proxy.url("/stream"))
        .body(full(""))
        .expect("request");
    let head = tokio::time::timeout(Duration::from_secs(10), client().request(request)).await;
    let response = head
        .expect("the head arrives before the body ends")
        .expect("response");
    assert_eq!(response.status(), 202);
    let mut body = response.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame()).await;
    let first = frame
        .expect("the first chunk arrives")
        .expect("frame")
        .expect("data");
    assert_eq!(first.into_data().expect("data"), "first ");
    release.notify_one();
    let rest = body.collect().await.expect("the rest").to_bytes();
    assert_eq!(rest, "rest");
    let records = proxy.records();
    assert_eq!(records[0]["body_inspected"], false);
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_failing_while_its_body_is_inspected_gets_a_proxy_error() {
    // Promises 100 bytes, sends 7 and closes.
    let cut = canned_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial").await;
    let rules = r#"
[[rules]]
name = "needs-body"
when = { status = 200, body_regex = "NOT_FOUND" }
then = { status = 404 }
"#;
    let proxy = spawn_proxy(&config_text(cut, "", rules)).await;
    let reply = get(&proxy.url("/x")).await;
    assert_eq!(reply.status, 500);
    assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["source"], "proxy");
    assert_eq!(records[0]["upstream_status"], 502);
    assert_eq!(records[0]["rule"], "documented/server-error-is-500");
    proxy.stop().await;
}

/// A browser asks for `gzip, deflate, br, zstd`. An upstream that honours it would answer in
/// `br`, which no body rule can read; on a route with body rules the upstream is asked for
/// what restatus can inspect, so the rule still fires. A route without body rules forwards
/// the field as it came.
#[tokio::test]
async fn body_rules_keep_working_for_browsers_that_accept_br() {
    let upstream = spawn_upstream(|seen| async move {
        let accepted = seen
            .headers
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = br#"{"error":{"code":"NOT_FOUND"}}"#;
        let mut response = json(200, "");
        // What a negotiating legacy server does: its first choice that the client accepts.
        let coding = ["br", "gzip"].into_iter().find(|c| accepted.contains(c));
        *response.body_mut() = match coding {
            Some("gzip") => full(gzip(body)),
            _ => full(Bytes::from_static(body)),
        };
        if let Some(coding) = coding {
            let value = http::HeaderValue::from_static(coding);
            response.headers_mut().insert("content-encoding", value);
        }
        response
            .headers_mut()
            .insert("x-seen-accept-encoding", accepted.parse().expect("value"));
        response
    })
    .await;
    let rules = r#"
[[routes]]
name = "plain"
upstream = "backend"
path_prefix = "/plain"
profile = "none"

[[rules]]
name = "missing-is-404"
routes = ["main"]
when = { status = 200, body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }
"#;
    let proxy = spawn_proxy(&config_text(upstream.addr, r#"profile = "none""#, rules)).await;
    let browser = [("accept-encoding", "gzip, deflate, br, zstd")];
    let reply = send("GET", &proxy.url("/items/9"), &browser, "").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(reply.header("x-seen-accept-encoding"), Some("gzip"));
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    let only_br = [("accept-encoding", "br")];
    let reply = send("GET", &proxy.url("/items/9"), &only_br, "").await;
    assert_eq!(reply.status, 404, "{}", reply.text());
    assert_eq!(reply.header("x-seen-accept-encoding"), Some("identity"));
    let reply = send("GET", &proxy.url("/plain/items/9"), &browser, "").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("x-seen-accept-encoding"),
        Some("gzip, deflate, br, zstd")
    );
    proxy.stop().await;
}

#[tokio::test]
async fn gzip_bodies_are_inspected_decompressed_and_sent_as_they_came() {
    let small = gzip(br#"{"error":{"code":"NOT_FOUND"}}"#);
    // Small on the wire, but larger than inspect_body once decompressed.
    let bomb = gzip(&[b' '; 256 << 10]);
    assert!(bomb.len() < 4096);
    let (small_sent, bomb_sent) = (small.clone(), bomb.clone());
    let upstream = spawn_upstream(move |seen| {
        let (body, coding) = match seen.uri.as_str() {
            "/bomb" => (bomb_sent.clone(), "gzip"),
            "/upper" => (small_sent.clone(), "GZIP"),
            // Plain JSON labelled with a coding restatus cannot decode: not inspected.
            "/br" => (
                Bytes::from_static(br#"{"error":{"code":"NOT_FOUND"}}"#),
                "br",
            ),
            _ => (small_sent.clone(), "gzip"),
        };
        async move {
            let mut response = json(200, "");
            *response.body_mut() = full(body);
            let coding = http::HeaderValue::from_static(coding);
            response.headers_mut().insert("content-encoding", coding);
            response
        }
    })
    .await;
    let rules = r#"
[limits]
inspect_body = "64KiB"

[[rules]]
name = "missing-is-404"
when = { status = 200, body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }

[[rules]]
name = "uninspected"
when = { status = 200 }
then = { status = 202 }
"#;
    let proxy = spawn_proxy(&config_text(upstream.addr, r#"profile = "none""#, rules)).await;
    let client = client();
    let reply = tagged(&client, "small", "GET", &proxy.url("/small"), &[], "").await;
    assert_eq!(reply.status, 404);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    assert!(
        reply.body == small,
        "the client gets the upstream's gzip bytes"
    );
    let reply = tagged(&client, "bomb", "GET", &proxy.url("/bomb"), &[], "").await;
    assert_eq!(
        reply.status, 202,
        "decompressed past the limit: not inspected"
    );
    assert!(reply.body == bomb);
    let reply = tagged(&client, "upper", "GET", &proxy.url("/upper"), &[], "").await;
    assert_eq!(reply.status, 404, "content codings are case-insensitive");
    let reply = tagged(&client, "br", "GET", &proxy.url("/br"), &[], "").await;
    assert_eq!(
        reply.status, 202,
        "a coding restatus cannot read is not inspected"
    );
    assert_eq!(reply.header("content-encoding"), Some("br"));
    let records = proxy.records();
    for (id, inspected) in [
        ("small", true),
        ("bomb", false),
        ("upper", true),
        ("br", false),
    ] {
        assert_eq!(record_of(&records, id)["body_inspected"], inspected, "{id}");
    }
    proxy.stop().await;
}

/// A HEAD that a body rule could match goes upstream as GET, so the rule sees the body a GET
/// gets: the client gets the GET's status and length and no body (RFC 9110 §9.3.2), over
/// HTTP/1.1 and HTTP/2. A HEAD elsewhere on the route goes as HEAD.
#[tokio::test]
async fn head_meets_the_body_rules_of_get() {
    let upstream =
        spawn_upstream(|_| async move { json(200, r#"{"error":{"code":"NOT_FOUND"}}"#) }).await;
    let rules = r#"
[[rules]]
name = "missing-is-404"
when = { method = "GET", path = "/items/*", status = 200, body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }
"#;
    let proxy = spawn_proxy(&config_text(upstream.addr, r#"profile = "none""#, rules)).await;
    let get = send("GET", &proxy.url("/items/9"), &[], "").await;
    assert_eq!(get.status, 404);
    let (status_line, headers, body) = raw_exchange(proxy.addr, "HEAD", "/items/9").await;
    assert_eq!(status_line, "HTTP/1.1 404 Not Found");
    let length = format!("content-length: {}", get.body.len());
    assert!(headers.contains(&length), "{headers:?}");
    assert_eq!(body, "");
    let reply = send_with(&h2_client(), "HEAD", &proxy.url("/items/9"), &[], "").await;
    assert_eq!(reply.status, 404);
    assert!(reply.body.is_empty());
    let (status_line, _, _) = raw_exchange(proxy.addr, "HEAD", "/other").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    let methods: Vec<String> = (upstream.requests().iter())
        .map(|r| r.method.to_string())
        .collect();
    assert_eq!(methods, ["GET", "GET", "GET", "HEAD"]);
    let records = proxy.records();
    let heads: Vec<&Value> = records.iter().filter(|r| r["method"] == "HEAD").collect();
    assert_eq!(heads.len(), 2, "{records:?}");
    assert!(heads
        .iter()
        .all(|r| r["body_inspected"] == true && r["status"] == 404));
    proxy.stop().await;
}

#[tokio::test]
async fn head_responses_stay_bodiless_and_correctly_framed() {
    let rules = r#"
[[rules]]
name = "body-rule"
when = { path = "/inspect", status = 200, body_regex = "." }
then = { status = 409 }

[[rules]]
name = "replace"
when = { path = "/replace", status = 200 }
then = { status = 404, body = "not here" }
"#;
    let (upstream, proxy) = echo_proxy("", rules).await;
    // Profile: a HEAD answered 204 becomes 200, still without a body.
    let (status_line, headers, body) = raw_exchange(proxy.addr, "HEAD", "/x?status=204").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert_eq!(body, "");
    assert!(headers.iter().all(|h| !h.starts_with("transfer-encoding")));
    // then.body on HEAD: the length of what GET would send, and no bytes.
    let (status_line, headers, body) = raw_exchange(proxy.addr, "HEAD", "/replace").await;
    assert_eq!(status_line, "HTTP/1.1 404 Not Found");
    assert!(
        headers.contains(&"content-length: 8".to_string()),
        "{headers:?}"
    );
    assert_eq!(body, "");
    assert!(upstream.requests().iter().all(|r| r.method == "HEAD"));
    // GET 204 -> 200 gets an explicit empty body, so the connection stays usable.
    let (status_line, headers, body) = raw_exchange(proxy.addr, "GET", "/x?status=204").await;
    assert_eq!(status_line, "HTTP/1.1 200 OK");
    assert!(
        headers.contains(&"content-length: 0".to_string()),
        "{headers:?}"
    );
    assert_eq!(body, "");
    proxy.stop().await;
}

#[tokio::test]
async fn no_body_is_ever_added_to_204_or_304() {
    let rules = r#"
[[rules]]
name = "to-204"
when = { path = "/to204", status = 200 }
then = { status = 204, body = "must not be sent" }

[[rules]]
name = "to-304"
when = { path = "/to304", status = 200 }
then = { status = 304, body = { never = true } }
"#;
    let (_upstream, proxy) = echo_proxy(r#"profile = "none""#, rules).await;
    for (path, want) in [
        ("/to204", "HTTP/1.1 204 No Content"),
        ("/to304", "HTTP/1.1 304 Not Modified"),
        ("/x?status=304", "HTTP/1.1 304 Not Modified"),
        ("/x?status=204", "HTTP/1.1 204 No Content"),
    ] {
        let (status_line, headers, body) = raw_exchange(proxy.addr, "GET", path).await;
        assert_eq!(status_line, want, "{path}");
        assert_eq!(body, "", "{path}");
        let framing = headers
            .iter()
            .filter(|h| h.starts_with("content-length") || h.starts_with("transfer-encoding"));
        assert_eq!(framing.count(), 0, "{path}: {headers:?}");
        assert!(headers
            .iter()
            .all(|h| !h.starts_with("content-type: application/json")));
    }
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The record

#[tokio::test]
async fn records_carry_every_field_and_no_secrets() {
    let upstream = spawn_upstream(|_| async {
        let mut response = json(200, r#"{"id":1,"secret":"SECRET-RESPONSE-BODY"}"#);
        let cookie = http::HeaderValue::from_static("sid=SECRET-SET-COOKIE");
        response.headers_mut().insert("set-cookie", cookie);
        response
    })
    .await;
    let rules = r#"
[[rules]]
name = "created"
when = { method = "POST", path = "/items", status = 200, body_regex = "SECRET", request_header = { authorization = { present = true } } }
then = { status = 201 }
"#;
    let proxy = spawn_proxy(&config_text(upstream.addr, "", rules)).await;
    let headers = [
        ("authorization", "Bearer SECRET-AUTHORIZATION"),
        ("cookie", "session=SECRET-COOKIE"),
        ("x-api-key", "SECRET-API-KEY"),
    ];
    let url = proxy.url("/items?token=SECRET-QUERY");
    let reply = send(
        "POST",
        &url,
        &headers,
        r#"{"password":"SECRET-REQUEST-BODY"}"#,
    )
    .await;
    assert_eq!(reply.status, 201);
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    let ts = record["ts"].as_str().expect("ts");
    let shape = regex::Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$").expect("re");
    assert!(shape.is_match(ts), "RFC 3339 with milliseconds: {ts}");
    assert_eq!(
        record["request_id"],
        reply.header("x-request-id").expect("id")
    );
    assert_eq!(record["route"], "main");
    assert_eq!(record["rule"], "created");
    assert_eq!(record["action"], "rewrote");
    assert_eq!(record["source"], "upstream");
    assert_eq!(record["method"], "POST");
    assert_eq!(record["path"], "/items");
    assert_eq!(record["upstream"], "backend");
    assert_eq!(record["upstream_status"], 200);
    assert_eq!(record["status"], 201);
    assert_eq!(record["body_inspected"], true);
    let duration = record["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!(duration >= 0.0);
    let line = String::from_utf8(proxy.sink.0.lock().expect("sink").clone()).expect("utf-8");
    assert_eq!(line.lines().count(), 1);
    assert!(
        !line.contains("SECRET"),
        "a secret leaked into the record: {line}"
    );
    proxy.stop().await;
}

/// A sink that blocks every write until it is opened.
#[derive(Clone, Default)]
struct GatedSink {
    gate: Arc<(Mutex<bool>, Condvar)>,
    inner: SharedSink,
}

impl GatedSink {
    fn open(&self) {
        let (open, changed) = &*self.gate;
        *open.lock().expect("gate") = true;
        changed.notify_all();
    }
}

impl Write for GatedSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let (open, changed) = &*self.gate;
        let mut is_open = open.lock().expect("gate");
        while !*is_open {
            is_open = changed.wait(is_open).expect("gate");
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_stuck_sink_never_stalls_requests_and_drops_are_counted() {
    let upstream = echo_upstream().await;
    let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
    let config = config(&config_text(upstream.addr, "", admin));
    let sink = GatedSink::default();
    let log = DeviationLog::with_capacity(Box::new(sink.clone()), 8).expect("log");
    let proxy = spawn_proxy_with_log(config, Arc::new(log), sink.inner.clone()).await;
    let client = client();
    let total = 300;
    for i in 0..total {
        let reply = send_with(&client, "POST", &proxy.url("/items"), &[], format!("{i}")).await;
        assert_eq!(reply.status, 201, "request {i} while the sink is stuck");
    }
    // Every request above was answered while the sink could not take a single byte.
    assert!(sink.inner.0.lock().expect("sink").is_empty());
    let dropped = proxy.log.dropped();
    assert!(
        dropped > 0 && dropped < total,
        "dropped {dropped} of {total}"
    );
    let admin = proxy.admin.expect("admin listener");
    let metrics = get(&format!("http://{admin}/metrics")).await.text();
    let counted = metrics
        .lines()
        .find(|l| l.contains("deviation_records_dropped") && !l.starts_with('#'))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u64>().ok());
    assert_eq!(counted, Some(dropped), "{metrics}");
    sink.open();
    assert!(proxy.log.flush(Duration::from_secs(10)));
    assert_eq!(
        proxy.log.written() + dropped,
        total,
        "each record written or counted"
    );
    assert_eq!(proxy.records().len() as u64, proxy.log.written());
    proxy.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Config errors in rules

const ROUTES: &str = r#"[[upstreams]]
name = "a"
targets = ["http://127.0.0.1:1"]

[[routes]]
name = "main"
upstream = "a"
"#;

fn rule_error(rules: &str) -> (String, ConfigError) {
    let text = format!("{ROUTES}\n{rules}");
    match Config::parse(Path::new("rules.toml"), &text) {
        Ok(_) => panic!("should be refused:\n{text}"),
        Err(err) => (text, err),
    }
}

/// Asserts that `err` names rules.toml, the line holding `needle`, `key`, and `message`.
fn assert_rule_error(text: &str, err: &ConfigError, needle: &str, key: &str, message: &str) {
    let line = text
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("`{needle}` not in the config"))
        + 1;
    let shown = err.to_string();
    assert_eq!(err.line, line, "{shown}");
    assert!(shown.starts_with(&format!("rules.toml:{line}:")), "{shown}");
    assert_eq!(err.key, key, "{shown}");
    assert!(shown.contains(&format!("key `{key}`")), "{shown}");
    assert!(err.message.contains(message), "{shown}");
}

#[test]
fn bad_rules_are_refused_with_file_line_and_key() {
    let cases = [
        (
            "when = { body_regex = \"(unclosed\" }\nthen = { status = 500 }",
            "body_regex",
            "rules[0].when.body_regex",
            "bad body_regex",
        ),
        (
            "when = { path_regex = \"[a-\" }\nthen = { status = 500 }",
            "path_regex",
            "rules[0].when.path_regex",
            "bad path_regex",
        ),
        (
            "when = { response_header = { \"x-a\" = { regex = \"(\" } } }\nthen = { status = 500 }",
            "x-a",
            "rules[0].when.response_header.x-a",
            "bad regex for header `x-a`",
        ),
        (
            "when = { body_json = { pointer = \"error/code\", exists = true } }\nthen = { status = 500 }",
            "pointer",
            "rules[0].when.body_json.pointer",
            "body_json pointer `error/code` must be empty or start with '/'",
        ),
        (
            "when = { body_json = { pointer = \"/a~2\", exists = true } }\nthen = { status = 500 }",
            "pointer",
            "rules[0].when.body_json.pointer",
            "`~` that is not `~0` or `~1`",
        ),
        (
            "when = { status = 200 }\nthen = { status = 100 }",
            "status = 100",
            "rules[0].then.status",
            "then.status 100 must be a final status between 200 and 599",
        ),
        (
            "when = { status = 200 }\nthen = { status = 600 }",
            "status = 600",
            "rules[0].then.status",
            "then.status 600 must be a final status",
        ),
        (
            "when = { status = 200 }\nthen.status = 101",
            "then.status",
            "rules[0].then.status",
            "then.status 101",
        ),
        (
            "when = { status = \"6xx\" }\nthen = { status = 500 }",
            "6xx",
            "rules[0].when.status",
            "`6xx` is not a status class",
        ),
        (
            "routes = [\"main\", \"mian\"]\nwhen = {}\nthen = { status = 500 }",
            "mian",
            "rules[0].routes",
            "rule refers to unknown route `mian`",
        ),
        (
            "routes = []\nwhen = {}\nthen = { status = 500 }",
            "routes = []",
            "rules[0].routes",
            "routes is empty",
        ),
        (
            "when = { path = \"/a\", path_regex = \"^/a$\" }\nthen = { status = 500 }",
            "path_regex",
            "rules[0].when.path_regex",
            "give either `path` or `path_regex`, not both",
        ),
        (
            "when = { path = \"/items/*x\" }\nthen = { status = 500 }",
            "/items/*x",
            "rules[0].when.path",
            "`*` and `**` must be whole segments",
        ),
        (
            "when = { body_json = { pointer = \"/a\", equals = 1, exists = true } }\nthen = { status = 500 }",
            "pointer",
            "rules[0].when.body_json.pointer",
            "exactly one of `equals`, `exists` or `in`",
        ),
        (
            "when = {}\nthen = { status = 500, headers = { set = { \"bad header\" = \"x\" } } }",
            "bad header",
            "rules[0].then.headers.set.bad header",
            "then.headers.set: `bad header` is not a header name",
        ),
        (
            "when = {}\nthen = { status = 500, headers = { set = { \"Content-Length\" = \"5\" } } }",
            "Content-Length",
            "rules[0].then.headers.set.Content-Length",
            "`content-length` frames the message",
        ),
        (
            "when = {}\nthen = { status = 500, headers = { remove = [\"transfer-encoding\"] } }",
            "transfer-encoding",
            "rules[0].then.headers.remove",
            "`transfer-encoding` frames the message",
        ),
        (
            "when = { methd = \"GET\" }\nthen = { status = 500 }",
            "methd",
            "rules[0].when.methd",
            "unknown field `methd`",
        ),
    ];
    for (body, needle, key, message) in cases {
        let (text, err) = rule_error(&format!("[[rules]]\nname = \"r\"\n{body}\n"));
        assert_rule_error(&text, &err, needle, key, message);
    }
}

#[test]
fn duplicate_rule_names_are_refused() {
    let rules = "[[rules]]\nname = \"same\"\nwhen = {}\nthen = { status = 500 }\n\n\
                 [[rules]]\nname = \"same\"\nwhen = { status = 418 }\nthen = { status = 400 }\n";
    let (text, err) = rule_error(rules);
    // The second definition is the one at fault.
    let second = text.rfind("name = \"same\"").expect("second name");
    let line = text[..second].lines().count() + 1;
    assert_eq!(err.line, line, "{err}");
    assert_eq!(err.key, "rules[1].name", "{err}");
    assert!(err.message.contains("duplicate rule name `same`"), "{err}");
}

/// A `[rules.when]` table belongs to the rule above it, and its error says which rule.
#[test]
fn an_error_in_a_rules_when_table_names_its_rule() {
    let rules = "[[rules]]\nname = \"a\"\nwhen = { status = 200 }\nthen = { status = 201 }\n\n[[rules]]\nname = \"b\"\nthen = { status = 404 }\n[rules.when]\nstatus = 99\n";
    let (text, err) = rule_error(rules);
    assert_rule_error(&text, &err, "status = 99", "rules[1].when.status", "99");
}

/// A TOML date in `then.body` has no JSON form: refused, not sent as serde's internal object.
#[test]
fn a_date_in_a_json_body_is_refused() {
    let rules = "[[rules]]\nname = \"a\"\nwhen = { status = 200 }\nthen = { status = 404, body = { at = 1970-01-01T00:00:00Z } }\n";
    let (text, err) = rule_error(rules);
    assert_rule_error(
        &text,
        &err,
        "1970",
        "rules[0].then.body",
        "has no JSON form",
    );
    let rules = "[[rules]]\nname = \"a\"\nwhen = { body_json = { pointer = \"/a\", equals = 1979-05-27 } }\nthen = { status = 404 }\n";
    let (text, err) = rule_error(rules);
    assert_rule_error(
        &text,
        &err,
        "1979",
        "rules[0].when.body_json.equals",
        "has no JSON form",
    );
}

/// A misspelt header test is told in the config's terms, not serde's.
#[test]
fn a_misspelt_header_test_is_told_in_plain_words() {
    let rules = "[[rules]]\nname = \"a\"\nwhen = { response_header = { \"x-a\" = { regx = \"^a\" } } }\nthen = { status = 404 }\n";
    let (_, err) = rule_error(rules);
    let shown = err.to_string();
    assert!(
        shown.contains("header test: unknown field `regx`"),
        "{shown}"
    );
    assert!(!shown.contains("untagged"), "{shown}");
}

/// A 401's challenge goes with it: after 401 -> 403 the client is not asked to log in for a
/// request that logging in cannot fix (RFC 9110 §11.6.1). An audit-mode or unchanged 401
/// keeps it.
#[tokio::test]
async fn a_rewritten_401_loses_its_challenge() {
    let (_upstream, proxy) = echo_proxy("", "").await;
    let challenge = [("x-reply-www-authenticate", "Basic realm=\"legacy\"")];
    let url = proxy.url("/admin?status=401");
    let reply = send("GET", &url, &challenge, "").await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.header("www-authenticate"), None);

    let (_upstream, proxy) = echo_proxy("mode = \"audit\"", "").await;
    let reply = send("GET", &proxy.url("/admin?status=401"), &challenge, "").await;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Basic realm=\"legacy\"")
    );
}
