//! Rule evaluation through the public API (issue 5): a route with 200 rules of its own plus
//! the documented profile.
//!
//! - `no_candidate/*`: a GET answered 200, which no rule can match: the candidate list is
//!   empty, so the normalize stage takes its fast path (target < 100 ns).
//! - `body_json/*`: a POST answered 200 with a ~1 KiB JSON body that a `body_json` rule
//!   matches, evaluated the way the normalize stage does it: first without the body
//!   ([`Step::NeedBody`]), then again from that candidate with the body (target < 2 µs).
//!   `after_150` has the body rule behind 150 candidates whose path does not match (a
//!   realistic route with a create rule per service); `first` has it as the first candidate.
//!
//! Run: `cargo bench --bench rules`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method};
use restatus::config::Config;
use restatus::rules::{BodyState, Facts, RuleSet, Step};
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

/// Non-matching POST rules placed before the body rule in the `after_150` config.
const CREATE_RULES: usize = 150;
/// Route rules in total: create rules, filler rules on other methods and statuses, the body rule.
const TOTAL_RULES: usize = 200;

/// A config whose route `api` has 200 rules. With `body_rule_first` the body rule comes
/// first, else after the 150 create rules.
fn config_text(body_rule_first: bool) -> String {
    let mut text = String::from(
        r#"
[server]
listen = "127.0.0.1:0"

[deviations]
sink = "stderr"

[[upstreams]]
name = "legacy"
targets = ["http://127.0.0.1:9"]

[[routes]]
name = "api"
upstream = "legacy"
path_prefix = "/"
"#,
    );
    let body_rule = r#"
[[rules]]
name = "duplicate-order-is-409"
routes = ["api"]
when = { method = "POST", path = "/orders", status = 200, body_json = { pointer = "/error/code", equals = "DUPLICATE" } }
then = { status = 409 }
"#;
    if body_rule_first {
        text.push_str(body_rule);
    }
    // POST creates that answer 200, one per service: candidates for POST 200.
    for i in 0..CREATE_RULES {
        write!(
            text,
            r#"
[[rules]]
name = "svc{i}-create-is-201"
routes = ["api"]
when = {{ method = "POST", path = "/svc{i}/items", status = 200 }}
then = {{ status = 201 }}
"#
        )
        .unwrap();
    }
    // Filler on other methods and statuses, never GET 200 nor POST 200.
    let filler = [
        (r#"["PUT", "PATCH"]"#, "[500, 502]", 409),
        (r#""DELETE""#, "500", 404),
        (r#""GET""#, r#""4xx""#, 404),
        (r#""GET""#, "[500, 503]", 500),
    ];
    for i in 0..TOTAL_RULES - CREATE_RULES - 1 {
        let (method, status, then) = filler[i % filler.len()];
        write!(
            text,
            r#"
[[rules]]
name = "svc{i}-filler"
routes = ["api"]
when = {{ method = {method}, path = "/svc{i}/items/*", status = {status} }}
then = {{ status = {then} }}
"#
        )
        .unwrap();
    }
    if !body_rule_first {
        text.push_str(body_rule);
    }
    text
}

fn rule_set(body_rule_first: bool) -> Arc<RuleSet> {
    let config = Config::parse(Path::new("bench.toml"), &config_text(body_rule_first))
        .expect("the benchmark config is valid");
    let route = config
        .routes
        .iter()
        .find(|r| r.name == "api")
        .expect("route api");
    assert_eq!(
        route
            .rules
            .rules()
            .iter()
            .filter(|r| r.routes.iter().any(|n| n == "api"))
            .count(),
        TOTAL_RULES
    );
    route.rules.clone()
}

/// A legacy "duplicate" answer: 200 with an error object, padded to about 1 KiB.
fn duplicate_body() -> Vec<u8> {
    let head = r#"{"error":{"code":"DUPLICATE","message":"an order with this reference exists","field":"reference"},"order":{"reference":"A-1042","lines":[{"sku":"W-1","qty":2},{"sku":"W-7","qty":1}]},"padding":""#;
    let mut body = head.to_string();
    body.push_str(&"x".repeat(1024 - head.len() - 2));
    body.push_str("\"}");
    assert_eq!(body.len(), 1024);
    serde_json::from_str::<serde_json::Value>(&body).expect("valid JSON");
    body.into_bytes()
}

fn response_headers(len: usize) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
    headers
}

/// The normalize stage's evaluation: without the body, then from the candidate that needs it.
fn evaluate_with_body<'r>(rules: &'r RuleSet, facts: &Facts, body: &[u8]) -> Option<&'r str> {
    match rules.evaluate(facts, BodyState::Unread, 0, None) {
        Step::Matched(rule) => Some(&rule.name),
        Step::NoMatch => None,
        Step::NeedBody { resume } => {
            match rules.evaluate(facts, BodyState::Inspected(body), resume, None) {
                Step::Matched(rule) => Some(&rule.name),
                _ => None,
            }
        }
    }
}

fn no_candidate(c: &mut Criterion) {
    let rules = rule_set(false);
    let headers = response_headers(35);
    let method = Method::GET;
    assert!(rules.candidates(&method, 200).is_empty());
    let mut group = c.benchmark_group("no_candidate");
    group.bench_function("candidates_is_empty", |b| {
        b.iter(|| {
            black_box(&rules)
                .candidates(black_box(&method), black_box(200))
                .is_empty()
        })
    });
    group.bench_function("evaluate", |b| {
        b.iter(|| {
            let facts = Facts {
                method: black_box(&method),
                path: black_box("/svc7/items/42"),
                status: black_box(200),
                request_headers: None,
                response_headers: &headers,
            };
            matches!(
                black_box(&rules).evaluate(&facts, BodyState::Unread, 0, None),
                Step::NoMatch
            )
        })
    });
    group.finish();
}

fn body_json(c: &mut Criterion) {
    let body = duplicate_body();
    let headers = response_headers(body.len());
    let method = Method::POST;
    let mut group = c.benchmark_group("body_json");
    for (name, first) in [("after_150", false), ("first", true)] {
        let rules = rule_set(first);
        let facts = Facts {
            method: &method,
            path: "/orders",
            status: 200,
            request_headers: None,
            response_headers: &headers,
        };
        let candidates = rules.candidates(&method, 200).len();
        assert_eq!(
            candidates,
            CREATE_RULES + 2,
            "the create rules, the body rule and the profile's create-is-201"
        );
        assert_eq!(
            evaluate_with_body(&rules, &facts, &body),
            Some("duplicate-order-is-409")
        );
        group.bench_function(name, |b| {
            b.iter(|| {
                let facts = Facts {
                    method: black_box(&method),
                    path: black_box("/orders"),
                    status: black_box(200),
                    request_headers: None,
                    response_headers: &headers,
                };
                evaluate_with_body(&rules, &facts, black_box(&body)).is_some()
            })
        });
    }
    // For scale: the 150 non-matching candidates without any body rule behind them, and the
    // JSON parse of the body alone.
    let rules = rule_set(false);
    group.bench_function("150_path_misses_only", |b| {
        b.iter(|| {
            let facts = Facts {
                method: black_box(&method),
                path: black_box("/svc-unknown/items"),
                status: black_box(200),
                request_headers: None,
                response_headers: &headers,
            };
            // the profile's create-is-201 matches at the end
            matches!(
                rules.evaluate(&facts, BodyState::Unread, 0, None),
                Step::Matched(_)
            )
        })
    });
    group.bench_function("serde_json_parse_1KiB", |b| {
        b.iter(|| serde_json::from_slice::<serde_json::Value>(black_box(&body)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, no_candidate, body_json);
criterion_main!(benches);
