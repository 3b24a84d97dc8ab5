//! Operations: metrics, health and readiness, the deviations endpoint and page, reload.
#[path = "support/html.rs"]
mod html;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::sync::Notify;

fn with_admin(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        simple_config(upstream, extra)
    )
}

fn admin_url(proxy: &TestProxy, path: &str) -> String {
    format!("http://{}{}", proxy.admin.expect("admin listener"), path)
}

#[tokio::test]
async fn metrics_count_known_traffic() {
    let upstream = spawn_upstream(|seen| async move {
        if seen.uri.starts_with("/missing") {
            json(200, r#"{"error":{"code":"NOT_FOUND"}}"#)
        } else {
            json(200, "{}")
        }
    })
    .await;
    let rules = r#"
[[rules]]
name = "missing-is-404"
when = { path = "/missing/*", status = 200, body_json = { pointer = "/error/code", equals = "NOT_FOUND" } }
then = { status = 404 }
"#;
    let proxy = spawn_proxy(&with_admin(upstream.addr, rules)).await;
    for _ in 0..3 {
        assert_eq!(get(&proxy.url("/items")).await.status, 200);
    }
    for _ in 0..2 {
        assert_eq!(
            send("POST", &proxy.url("/items"), &[], "{}").await.status,
            201
        );
    }
    assert_eq!(get(&proxy.url("/missing/1")).await.status, 404);
    proxy.records();
    let metrics = get(&admin_url(&proxy, "/metrics")).await.text();
    let requests = |labels: &str| sample(&metrics, &format!("restatus_requests_total{{{labels}}}"));
    assert_eq!(
        requests(r#"route="main",method="GET",class="2xx""#),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        requests(r#"route="main",method="POST",class="2xx""#),
        Some(2.0)
    );
    assert_eq!(
        requests(r#"route="main",method="GET",class="4xx""#),
        Some(1.0)
    );
    let deviations =
        |labels: &str| sample(&metrics, &format!("restatus_deviations_total{{{labels}}}"));
    assert_eq!(
        deviations(
            r#"route="main",rule="documented/create-is-201",upstream_status="200",status="201",action="rewrote",kind="status",source="upstream""#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        deviations(
            r#"route="main",rule="missing-is-404",upstream_status="200",status="404",action="rewrote",kind="status",source="upstream""#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"restatus_request_duration_seconds_count{route="main"}"#
        ),
        Some(6.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"restatus_upstream_duration_seconds_count{route="main"}"#
        ),
        Some(6.0)
    );
    assert_eq!(sample(&metrics, "restatus_in_flight_requests "), Some(0.0));
    assert_eq!(
        sample(&metrics, "restatus_deviation_records_dropped_total "),
        Some(0.0)
    );
    assert!(
        metrics.contains("restatus_build_info{version=\""),
        "{metrics}"
    );
    assert!(metrics.contains("restatus_open_connections"), "{metrics}");
}

#[tokio::test]
async fn upstream_errors_are_counted_by_kind() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let proxy = spawn_proxy(&with_admin(dead, "")).await;
    assert_eq!(get(&proxy.url("/x")).await.status, 500);
    let metrics = get(&admin_url(&proxy, "/metrics")).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"restatus_upstream_errors_total{upstream="backend",kind="connect"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

/// A check's refusal writes no deviation record (403 is documented), so the metrics count
/// what restatus answered itself, per check.
#[tokio::test]
async fn requests_restatus_answered_itself_are_counted_by_reason_and_check() {
    let upstream = fixed_upstream(200, r#"{"ok":true}"#).await;
    let check = r#"
[[checks]]
name = "token-required"
when = { path = "/private/**", request_header = { "x-token" = { present = false } } }
then = { status = 403 }
"#;
    let proxy = spawn_proxy(&with_admin(upstream.addr, check)).await;
    for _ in 0..2 {
        assert_eq!(get(&proxy.url("/private/a")).await.status, 403);
    }
    let hops = [("max-forwards", "0")];
    assert_eq!(
        send("OPTIONS", &proxy.url("/a"), &hops, "").await.status,
        200
    );
    assert_eq!(get(&proxy.url("/open")).await.status, 200);
    let metrics = get(&admin_url(&proxy, "/metrics")).await.text();
    let series = |reason: &str, check: &str| {
        let line = format!(
            r#"restatus_answered_by_proxy_total{{route="main",reason="{reason}",check="{check}"}}"#
        );
        sample(&metrics, &line)
    };
    assert_eq!(series("check", "token-required"), Some(2.0), "{metrics}");
    assert_eq!(series("max_forwards", ""), Some(1.0), "{metrics}");
    assert_eq!(upstream.requests().len(), 1);
}

/// A request head the HTTP/1 parser refuses (two different `Content-Length`s, a smuggling
/// attempt) gets a bare 400, and is counted for operators.
#[tokio::test]
async fn request_heads_the_parser_refuses_are_counted() {
    let upstream = fixed_upstream(200, r#"{"ok":true}"#).await;
    let proxy = spawn_proxy(&with_admin(upstream.addr, "")).await;
    let smuggle =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd";
    let text = raw(proxy.addr, smuggle).await;
    assert!(text.starts_with("HTTP/1.1 400 "), "{text}");
    let series =
        r#"restatus_answered_by_proxy_total{route="-",reason="malformed_request",check=""}"#;
    let mut metrics = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sample(&metrics, series) != Some(1.0) {
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::task::yield_now().await;
        metrics = get(&admin_url(&proxy, "/metrics")).await.text();
    }
    assert!(upstream.requests().is_empty());
}

/// A TCP upstream that reads the request head, then behaves as `after_head` says.
async fn raw_upstream(after_head: &'static [u8], close: bool) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream.write_all(after_head).await;
            if !close {
                // Keep the socket open and silent until the test ends.
                held.push(stream);
            }
        }
    });
    addr
}

#[tokio::test]
async fn upstream_timeouts_resets_and_tls_failures_are_counted_by_kind() {
    let silent = raw_upstream(b"", false).await;
    let hangs_up = raw_upstream(b"", true).await;
    let not_tls = raw_upstream(b"HTTP/1.1 400 Bad Request\r\n\r\n", true).await;
    let cases = [
        (silent, "http", "timeout", 500),
        (hangs_up, "http", "reset", 500),
        (not_tls, "https", "tls", 500),
    ];
    for (addr, scheme, kind, status) in cases {
        let config = with_admin(addr, "")
            .replace("response_timeout = \"10s\"", "response_timeout = \"300ms\"")
            .replace(&format!("http://{addr}"), &format!("{scheme}://{addr}"));
        let proxy = spawn_proxy(&config).await;
        assert_eq!(get(&proxy.url("/x")).await.status, status, "{kind}");
        let metrics = get(&admin_url(&proxy, "/metrics")).await.text();
        let series =
            format!("restatus_upstream_errors_total{{upstream=\"backend\",kind=\"{kind}\"}}");
        assert_eq!(sample(&metrics, &series), Some(1.0), "{kind}: {metrics}");
    }
}

/// An upstream that answers only when released: `arrived` turns true when a request reaches
/// it, and `release.notify_one()` lets the answer go.
async fn held_upstream() -> (Upstream, Arc<Notify>, Arc<AtomicBool>) {
    let release = Arc::new(Notify::new());
    let arrived = Arc::new(AtomicBool::new(false));
    let (gate, seen) = (release.clone(), arrived.clone());
    let upstream = spawn_upstream(move |_| {
        let (gate, seen) = (gate.clone(), seen.clone());
        async move {
            seen.store(true, Ordering::SeqCst);
            gate.notified().await;
            json(200, "{}")
        }
    })
    .await;
    (upstream, release, arrived)
}

#[tokio::test]
async fn in_flight_and_open_connections_follow_a_held_request() {
    let (upstream, release, arrived) = held_upstream().await;
    let routed = "path_prefix = \"/\"";
    let proxy =
        spawn_proxy(&with_admin(upstream.addr, "").replace(routed, "path_prefix = \"/api\"")).await;
    let metrics_url = admin_url(&proxy, "/metrics");
    let url = proxy.url("/api/slow");
    let held = tokio::spawn(async move { get(&url).await });
    wait_until(Duration::from_secs(10), "request at upstream", || {
        arrived.load(Ordering::SeqCst)
    })
    .await;
    let metrics = get(&metrics_url).await.text();
    assert_eq!(
        sample(&metrics, "restatus_in_flight_requests "),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        sample(&metrics, "restatus_open_connections ").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    release.notify_one();
    assert_eq!(held.await.expect("held request").status, 200);
    // A path no route serves is counted under route `-`.
    assert_eq!(get(&proxy.url("/elsewhere")).await.status, 404);
    let metrics = get(&metrics_url).await.text();
    assert_eq!(
        sample(&metrics, "restatus_in_flight_requests "),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"restatus_requests_total{route="-",method="GET",class="4xx"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn health_and_readiness_flip_while_draining() {
    let (upstream, release, arrived) = held_upstream().await;
    let mut proxy = spawn_proxy(&with_admin(upstream.addr, "")).await;
    assert_eq!(get(&admin_url(&proxy, "/healthz")).await.status, 200);
    assert_eq!(get(&admin_url(&proxy, "/readyz")).await.status, 200);
    let url = proxy.url("/slow");
    let slow = tokio::spawn(async move { get(&url).await });
    wait_until(Duration::from_secs(10), "request at upstream", || {
        arrived.load(Ordering::SeqCst)
    })
    .await;
    let serving = proxy.begin_shutdown();
    let ready_url = admin_url(&proxy, "/readyz");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(&ready_url).await;
        if reply.status == 503 {
            assert_eq!(reply.text(), "draining\n");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        get(&admin_url(&proxy, "/healthz")).await.status,
        200,
        "alive while draining"
    );
    release.notify_one();
    assert_eq!(slow.await.expect("slow request").status, 200);
    tokio::time::timeout(Duration::from_secs(20), serving)
        .await
        .expect("server stops")
        .expect("server task");
}

#[tokio::test]
async fn deviations_endpoint_and_page_show_counts_and_latest_records() {
    let upstream = spawn_upstream(|seen| async move {
        match seen.uri.as_str() {
            "/gone" => json(410, "{}"),
            _ => json(200, "{}"),
        }
    })
    .await;
    let proxy = spawn_proxy(&with_admin(upstream.addr, "")).await;
    for _ in 0..3 {
        send("POST", &proxy.url("/items"), &[], "{}").await;
    }
    get(&proxy.url("/gone")).await;
    proxy.records();
    let body = get(&admin_url(&proxy, "/deviations")).await.json();
    assert_eq!(body["written"], 4);
    assert_eq!(
        body["counts"]["by_rule"]["main"]["documented/create-is-201"],
        3
    );
    assert_eq!(
        body["counts"]["by_rule"]["main"]["documented/gone-is-404"],
        1
    );
    assert_eq!(body["counts"]["by_status"]["main"]["200->201"], 3);
    let recent = body["recent"].as_array().expect("recent");
    assert_eq!(recent.len(), 4);
    assert_eq!(recent[0]["path"], "/gone", "newest first");

    let page = get(&admin_url(&proxy, "/")).await;
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    let html = page.text();
    assert!(
        html.contains("<meta http-equiv=\"refresh\""),
        "refreshes itself"
    );
    assert!(html.contains("route main"), "{html}");
    assert!(
        html.contains("<td>documented/create-is-201</td><td class=n>3</td>"),
        "{html}"
    );
    html::assert_well_formed(&html);
    // The status matrix: upstream 200 became 201 three times, 410 became 404 once.
    assert!(
        html.contains("<th class=n>201</th><th class=n>404</th></tr>"),
        "{html}"
    );
    assert!(
        html.contains("<tr><th>200</th><td class=n>3</td><td class=\"n empty\">·</td></tr>"),
        "{html}"
    );
    assert!(
        html.contains("<tr><th>410</th><td class=\"n empty\">·</td><td class=n>1</td></tr>"),
        "{html}"
    );
    assert!(html.contains("<td>GET /gone</td>"), "{html}");
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("<script"),
        "no external assets"
    );
    assert_eq!(get(&admin_url(&proxy, "/nope")).await.status, 404);
}

/// Config A rewrites to 201, config B to 202, and each tags the response, so every response
/// says which config made it.
const RULE_A: &str = r#"
[[rules]]
name = "tag"
when = { method = "GET", status = 200 }
then = { status = 201, headers = { set = { "x-config" = "A" } } }
"#;

const RULE_B: &str = r#"
[[rules]]
name = "tag"
when = { method = "GET", status = 200 }
then = { status = 202, headers = { set = { "x-config" = "B" } } }
"#;

#[tokio::test]
async fn reload_swaps_rules_and_a_bad_file_keeps_the_old_config() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&with_admin(upstream.addr, RULE_B)).await;
    let first = get(&proxy.url("/x")).await;
    assert_eq!(first.status, 202);
    // Both series are there, at zero, before the first reload.
    let before = get(&admin_url(&proxy, "/metrics")).await.text();
    for result in ["success", "failure"] {
        let series = format!("restatus_config_reloads_total{{result=\"{result}\"}}");
        assert_eq!(sample(&before, &series), Some(0.0), "{before}");
    }
    let file = std::env::temp_dir().join(format!("restatus-reload-{}.toml", std::process::id()));
    std::fs::write(&file, with_admin(upstream.addr, "profile = \"none\"")).expect("write");
    let restart = proxy.live.reload(&file).expect("valid file reloads");
    assert!(restart.is_empty(), "{restart:?}");
    let second = get(&proxy.url("/x")).await;
    assert_eq!(second.status, 200, "new rules in force");
    // Request ids go on from where they were: unique for the whole process.
    let id = |reply: &Reply| reply.header("x-request-id").expect("id").to_string();
    let (a, b) = (id(&first), id(&second));
    assert_eq!(a[..8], b[..8], "{a} {b}");
    let count = |id: &str| u64::from_str_radix(&id[8..], 16).expect("hex");
    assert!(count(&b) > count(&a), "{a} {b}");

    std::fs::write(&file, "[server]\nlisten = 8080\n").expect("write");
    let err = proxy
        .live
        .reload(&file)
        .expect_err("invalid file is refused");
    assert_eq!(err.line, 2, "{err}");
    assert_eq!(
        get(&proxy.url("/x")).await.status,
        200,
        "old config still in force"
    );
    std::fs::remove_file(&file).ok();
    let metrics = get(&admin_url(&proxy, "/metrics")).await.text();
    assert_eq!(
        sample(
            &metrics,
            r#"restatus_config_reloads_total{result="success"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"restatus_config_reloads_total{result="failure"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn reload_reports_settings_that_need_a_restart() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let moved = simple_config(upstream.addr, "").replace("127.0.0.1:0", "127.0.0.1:1");
    let restart = proxy.live.apply(config(&moved));
    assert_eq!(restart, vec!["server.listen".to_string()]);
    // Told against what the process started with: changed back, nothing is left to restart.
    let back = simple_config(upstream.addr, "");
    assert!(proxy.live.apply(config(&back)).is_empty());
    let watched = back.replace("[server]", "[server]\nwatch_config = true");
    let restart = proxy.live.apply(config(&watched));
    assert_eq!(restart, vec!["server.watch_config".to_string()]);
}

/// Which of [A, B] is in force after `reloads` reloads: A at start, then B, A, B, ...
fn config_after(reloads: usize) -> usize {
    reloads % 2
}

/// The (status, tag) a response from config `index` carries.
fn answer_of(index: usize) -> (u16, &'static str) {
    [(201, "A"), (202, "B")][index]
}

/// Reload counters the clients read: `begun` is bumped before a reload swaps the config,
/// `done` after, so a request sent when `done == n` and answered when `begun == m` met one
/// of the configs in force after n..=m reloads.
#[derive(Default)]
struct Reloads {
    begun: std::sync::atomic::AtomicUsize,
    done: std::sync::atomic::AtomicUsize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_loses_no_request_and_mixes_no_config() {
    let upstream = fixed_upstream(200, "{}").await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, RULE_A)).await;
    let dir = std::env::temp_dir();
    // Reload n (from 1) loads B when n is odd, A when even: see `config_after`.
    let files = [("b", RULE_B), ("a", RULE_A)].map(|(tag, rule)| {
        let file = dir.join(format!("restatus-load-{}-{tag}.toml", std::process::id()));
        std::fs::write(&file, simple_config(upstream.addr, rule)).expect("write config");
        file
    });
    let reloads = Arc::new(Reloads::default());
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (proxy.url("/load"), stop.clone());
        let (reloads, served) = (reloads.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let client = client();
            let mut exact = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let before = reloads.done.load(Ordering::SeqCst);
                let reply = send_with(&client, "GET", &url, &[], "").await;
                let after = reloads.begun.load(Ordering::SeqCst);
                let got = (reply.status, reply.header("x-config").unwrap_or("none"));
                let allowed: Vec<_> = (before..=after)
                    .map(|n| answer_of(config_after(n)))
                    .collect();
                assert!(
                    allowed.contains(&got),
                    "sent after {before} reloads, answered before {after} ended: got {got:?}"
                );
                exact += usize::from(before == after);
                served.fetch_add(1, Ordering::SeqCst);
            }
            exact
        }));
    }
    for round in 0..40 {
        reloads.begun.fetch_add(1, Ordering::SeqCst);
        let restart = proxy
            .live
            .reload(&files[round % 2])
            .expect("valid config reloads");
        assert!(restart.is_empty(), "{restart:?}");
        reloads.done.fetch_add(1, Ordering::SeqCst);
        // Let every config in the cycle serve a few requests before the next reload.
        let target = served.load(Ordering::SeqCst) + 8;
        wait_until(Duration::from_secs(20), "requests between reloads", || {
            served.load(Ordering::SeqCst) >= target
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut exact = 0;
    for client in clients {
        exact += client
            .await
            .expect("client never saw a wrong or failed response");
    }
    assert!(
        exact > 40,
        "most requests did not overlap a reload: {exact}"
    );
    for file in files {
        std::fs::remove_file(file).ok();
    }
}

/// The admin listener holds at most 128 connections and gives each `header_timeout` for a
/// request head, so a flood of half-sent requests neither takes the file descriptors the
/// proxy needs nor keeps the admin endpoints down for longer than that.
#[tokio::test]
async fn admin_connections_are_capped_and_timed_out() {
    use tokio::io::AsyncWriteExt;
    let upstream = fixed_upstream(200, "{}").await;
    let config = with_admin(upstream.addr, "").replace(
        "shutdown_grace = \"10s\"",
        "shutdown_grace = \"10s\"\nheader_timeout = \"500ms\"",
    );
    let proxy = spawn_proxy(&config).await;
    let admin = proxy.admin.expect("admin listener");
    let mut held = Vec::new();
    for _ in 0..128 {
        let mut stream = tokio::net::TcpStream::connect(admin)
            .await
            .expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write");
        held.push(stream);
    }
    // The 129th is closed unanswered; the proxy's own listener still serves.
    let mut extra = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_to_close(&mut extra, Duration::from_secs(10)).await, "");
    assert_eq!(get(&proxy.url("/x")).await.status, 200);
    // The half-sent heads are cut off after header_timeout, and the admin answers again.
    for stream in held.iter_mut().take(3) {
        let got = read_to_close(stream, Duration::from_secs(10)).await;
        assert!(!got.contains("200 OK"), "{got}");
    }
    let healthz = admin_url(&proxy, "/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut stream = tokio::net::TcpStream::connect(admin)
            .await
            .expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        if read_to_close(&mut stream, Duration::from_secs(10))
            .await
            .starts_with("HTTP/1.1 200")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{healthz} never answered again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = send("POST", &healthz, &[], "").await;
    assert_eq!(refused.status, 405);
    assert_eq!(refused.header("allow"), Some("GET, HEAD"));
    proxy.stop().await;
}
