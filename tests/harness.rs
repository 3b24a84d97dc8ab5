//! The test harness itself: a proxy in front of an upstream answers and records.
mod support;
use support::*;

#[tokio::test]
async fn proxy_forwards_and_records_a_rewrite() {
    let upstream = fixed_upstream(200, r#"{"id":1}"#).await;
    let proxy = spawn_proxy(&simple_config(upstream.addr, "")).await;
    let reply = send("POST", &proxy.url("/items"), &[], "{}").await;
    assert_eq!(reply.status, 201);
    assert_eq!(reply.text(), r#"{"id":1}"#);
    let records = proxy.records();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["upstream_status"], 200);
    assert_eq!(records[0]["status"], 201);
    assert_eq!(upstream.requests()[0].body, "{}");
    proxy.stop().await;
}
