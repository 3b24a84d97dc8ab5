//! CORS: the answers restatus makes itself are readable to the pages `[cors]` allows, and
//! restatus's own fields are exposed where the service lets a page read its response.
mod support;

use http::{HeaderMap, HeaderValue, Response};
use std::net::SocketAddr;
use support::*;
use tokio::net::TcpListener;

const APP: &str = "https://app.example.com";

/// `[cors]` for the app's page, and a check that refuses `/api/admin/**` without a token.
const ALLOW_APP: &str = r#"
[[checks]]
name = "token-required"
when = { path = "/api/admin/**", request_header = { "x-token" = { present = false } } }
then = { status = 403 }

[cors]
allow_origins = ["https://app.example.com", "http://localhost:3000"]
"#;

/// An address nothing listens on: the upstream is down.
async fn dead_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

async fn from_page(url: &str, origin: &str) -> Reply {
    send("GET", url, &[("origin", origin)], "").await
}

fn assert_readable_by(reply: &Reply, origin: &str) {
    assert_eq!(
        reply.header("x-restatus-source"),
        Some("proxy"),
        "{reply:?}"
    );
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some(origin),
        "{reply:?}"
    );
    assert_eq!(reply.header("vary"), Some("origin"), "{reply:?}");
    let exposed = reply
        .header("access-control-expose-headers")
        .unwrap_or_default();
    for name in [
        "x-request-id",
        "x-restatus-source",
        "x-restatus-original-status",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {reply:?}");
    }
}

/// A page the config allows can read a 500 for a dead upstream, a check's 403 and a 404 for
/// a path no route serves; another page, or a request without `Origin`, gets no CORS field
/// but `Vary: Origin`.
#[tokio::test]
async fn an_allowed_page_can_read_the_proxys_own_answers() {
    let mut config = simple_config(dead_address().await, r#"path_prefix = "/api""#);
    config = config.replace("path_prefix = \"/\"\n", "") + ALLOW_APP;
    let proxy = spawn_proxy(&config).await;

    let down = from_page(&proxy.url("/api/items"), APP).await;
    assert_eq!(down.status, 500, "{down:?}");
    assert_readable_by(&down, APP);
    let refused = from_page(&proxy.url("/api/admin/keys"), "http://localhost:3000").await;
    assert_eq!(refused.status, 403, "{refused:?}");
    assert_readable_by(&refused, "http://localhost:3000");
    let unrouted = from_page(&proxy.url("/elsewhere"), APP).await;
    assert_eq!(unrouted.status, 404, "{unrouted:?}");
    assert_readable_by(&unrouted, APP);

    for origin in [Some("https://evil.example"), None] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
        let reply = send("GET", &proxy.url("/api/items"), &headers, "").await;
        assert_eq!(reply.status, 500);
        let cors: Vec<_> = reply
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .collect();
        assert!(cors.is_empty(), "{origin:?}: {reply:?}");
        // The answer depends on `Origin` all the same: a cache must not reuse it for the app.
        assert_eq!(
            reply.header("vary"),
            Some("origin"),
            "{origin:?}: {reply:?}"
        );
    }
    proxy.stop().await;
}

/// Without `[cors]`, the proxy's answers carry no CORS field, whatever the page.
#[tokio::test]
async fn without_cors_the_proxys_answers_have_no_cors_fields() {
    let proxy = spawn_proxy(&simple_config(dead_address().await, "")).await;
    let reply = from_page(&proxy.url("/items"), APP).await;
    assert_eq!(reply.status, 500);
    assert!(
        reply.header("access-control-allow-origin").is_none(),
        "{reply:?}"
    );
    assert!(
        reply.header("access-control-expose-headers").is_none(),
        "{reply:?}"
    );
    proxy.stop().await;
}

/// The service allows the page: its CORS fields pass as they are, and restatus adds its own
/// fields to what the page may read, so the page sees the status the service sent.
#[tokio::test]
async fn the_services_cors_response_exposes_restatus_fields_too() {
    let upstream = spawn_upstream(|seen| async move {
        let origin = seen.headers.get("origin").cloned();
        let mut response: Response<UpBody> = json(200, r#"{"id":7}"#);
        let headers: &mut HeaderMap = response.headers_mut();
        if let Some(origin) = origin {
            headers.insert("access-control-allow-origin", origin);
            headers.insert(
                "access-control-expose-headers",
                HeaderValue::from_static("ETag"),
            );
        }
        response
    })
    .await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let created = send("POST", &proxy.url("/items"), &[("origin", APP)], "{}").await;
    assert_eq!(created.status, 201, "{created:?}");
    assert_eq!(created.header("access-control-allow-origin"), Some(APP));
    assert_eq!(created.header("x-restatus-original-status"), Some("200"));
    let exposed: Vec<&str> = created
        .headers
        .get_all("access-control-expose-headers")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    assert_eq!(
        exposed,
        ["ETag", "x-request-id, x-restatus-original-status"]
    );

    let plain = send("POST", &proxy.url("/items"), &[], "{}").await;
    assert_eq!(plain.status, 201);
    assert!(
        plain.header("access-control-expose-headers").is_none(),
        "{plain:?}"
    );
    proxy.stop().await;
}
