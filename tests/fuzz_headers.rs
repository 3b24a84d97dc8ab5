//! Fuzzing the header rewriter with proptest: arbitrary header maps go through the functions of
//! `restatus::headers` in the order `src/proxy.rs` applies them (`outbound_request` toward the
//! upstream, `client_response` toward the client), and the result
//!
//! - holds no CR, LF or NUL in any name or value;
//! - holds no hop-by-hop field (RFC 9110 §7.6.1): nothing named by any `Connection` value, and
//!   none of Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding, Upgrade,
//!   Proxy-Authorization, Proxy-Authenticate — except the fields the proxy itself writes
//!   afresh for the next hop (X-Forwarded-*, Via, X-Request-Id, Host); and no
//!   Content-Length beside a Transfer-Encoding (RFC 9112 §6.3);
//! - keeps every other field, values in order;
//! - keeps the earlier `X-Forwarded-For` entries in order, with the client's address appended.
//!
//! Cases per property come from `FUZZ_CASES` (default 4096, the bounded run CI makes). A longer run:
//!
//! ```sh
//! FUZZ_CASES=100000 cargo test --release --test fuzz_headers
//! ```

use http::header::{HeaderName, HeaderValue, HOST, VIA};
use http::{HeaderMap, Version};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use restatus::headers::{
    append_via, forwarding, request_id, strip_hop_by_hop, RequestIds, ThisHop, X_FORWARDED_FOR,
    X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REQUEST_ID,
};
use std::collections::HashSet;
use std::net::IpAddr;

/// Cases per property: `FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Hop-by-hop by definition (RFC 9110 §7.6.1, plus the de-facto Proxy-Connection).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Fields the proxy writes itself after stripping, whatever the client sent.
const PROXY_SET: &[&str] = &[
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
    "x-request-id",
    "host",
];

/// Names from the hop-by-hop vocabulary, the proxy's own fields, and random tokens.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::sample::select(&[
            "connection", "Connection", "keep-alive", "te", "transfer-encoding", "upgrade",
            "proxy-connection", "proxy-authorization", "proxy-authenticate", "x-forwarded-for",
            "X-Forwarded-For", "via", "host", "x-forwarded-host", "x-forwarded-proto",
            "x-request-id", "content-length", "accept", "cookie", "x-a", "x-b", "x-secret",
            "authorization", "content-type", "x-real-ip", "cache-control", "forwarded",
        ][..])
        .prop_map(String::from),
        2 => "[a-z0-9!#$%&'*+.^_`|~-]{1,12}",
        1 => "[A-Za-z][A-Za-z0-9-]{0,8}",
    ]
}

/// Valid field-value bytes: visible ASCII, SP, HTAB and obs-text.
fn value_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        6 => 0x20u8..0x7f,
        1 => Just(b'\t'),
        1 => 0x80u8..=0xff,
    ]
}

/// How a value is built.
#[derive(Debug, Clone)]
enum ValueSpec {
    /// Arbitrary valid bytes.
    Bytes(Vec<u8>),
    /// A comma list naming other fields, with odd spacing and case, maybe a stray byte.
    List(Vec<(String, String)>, Option<u8>),
    /// An address list for X-Forwarded-For.
    Addresses(Vec<String>),
}

fn ows() -> impl Strategy<Value = String> {
    proptest::sample::select(&["", " ", "  ", "\t", " \t "][..]).prop_map(String::from)
}

fn list_item() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![
            4 => name(),
            1 => proptest::sample::select(&["close", "keep-alive", "", "Upgrade", "X-A", "TE"][..])
                .prop_map(String::from),
            1 => "[ -~]{0,6}",
        ],
        ows(),
    )
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<[u8; 4]>().prop_map(|b| IpAddr::from(b).to_string()),
        1 => any::<[u8; 16]>().prop_map(|b| IpAddr::from(b).to_string()),
        1 => proptest::sample::select(&["unknown", "_hidden", "", " ", "[::1]:80"][..])
            .prop_map(String::from),
    ]
}

fn value_spec() -> impl Strategy<Value = ValueSpec> {
    prop_oneof![
        3 => proptest::collection::vec(value_byte(), 0..24).prop_map(ValueSpec::Bytes),
        3 => (
            proptest::collection::vec(list_item(), 1..5),
            proptest::option::weighted(0.1, 0x80u8..=0xff),
        )
            .prop_map(|(items, stray)| ValueSpec::List(items, stray)),
        2 => proptest::collection::vec(address(), 1..4).prop_map(ValueSpec::Addresses),
    ]
}

impl ValueSpec {
    fn bytes(&self) -> Vec<u8> {
        match self {
            ValueSpec::Bytes(bytes) => bytes.clone(),
            ValueSpec::List(items, stray) => {
                let mut out = Vec::new();
                for (i, (item, space)) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(space.as_bytes());
                    out.extend_from_slice(item.as_bytes());
                }
                out.extend(stray);
                out
            }
            ValueSpec::Addresses(list) => list.join(", ").into_bytes(),
        }
    }
}

/// A field as generated: a name (any case) and a value. Invalid ones are skipped when the map
/// is built, as a parser would refuse them.
fn fields() -> impl Strategy<Value = Vec<(String, ValueSpec)>> {
    proptest::collection::vec((name(), value_spec()), 0..16)
}

/// Builds the map; values may hold obs-text (0x80-0xff), in lists too.
fn build(fields: &[(String, ValueSpec)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, spec) in fields {
        let bytes = spec.bytes();
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&bytes),
        ) else {
            continue;
        };
        map.append(name, value);
    }
    map
}

/// Fields for every recipient, which a `Connection` option may not remove.
fn end_to_end(name: &str) -> bool {
    let fixed = [
        "host",
        "authorization",
        "cookie",
        "set-cookie",
        "cache-control",
        "location",
        "forwarded",
        "x-real-ip",
        "x-request-id",
    ];
    fixed.contains(&name) || name.starts_with("content-") || name.starts_with("x-forwarded-")
}

/// Every field name any `Connection` value names (RFC 9110 §7.6.1: `#connection-option`,
/// each a token; elements that are not tokens name nothing), less the end-to-end ones.
fn connection_options(headers: &HeaderMap) -> HashSet<String> {
    headers
        .get_all("connection")
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|item| item.trim_ascii())
        .filter_map(|item| HeaderName::from_bytes(item).ok())
        .map(|name| name.as_str().to_string())
        .filter(|name| !end_to_end(name))
        .collect()
}

/// The names that must not reach the next hop.
fn forbidden(input: &HeaderMap) -> HashSet<String> {
    let mut names = connection_options(input);
    names.extend(HOP_BY_HOP.iter().map(|n| n.to_string()));
    if input.contains_key("transfer-encoding") {
        // RFC 9112 §6.3: the length is overridden by the encoding and removed on forwarding.
        names.insert("content-length".to_string());
    }
    names
}

/// The comma-separated, trimmed, non-empty elements of every value of `name`.
fn elements(headers: &HeaderMap, name: &HeaderName) -> Vec<Vec<u8>> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|item| item.trim_ascii().to_vec())
        .filter(|item| !item.is_empty())
        .collect()
}

/// What `src/proxy.rs` does to a request's headers in `outbound_request`.
fn outbound(mut headers: HeaderMap, client: IpAddr, https: bool, version: Version) -> HeaderMap {
    let ids = RequestIds::new();
    let id = request_id(&headers, &ids);
    let host = headers.get(HOST).cloned();
    let present = strip_hop_by_hop(&mut headers);
    let hop = ThisHop {
        client,
        https,
        host: host.as_ref(),
        received: version,
        request_id: &id,
    };
    // The upstream client writes the added fields after the map's own.
    for (name, value) in forwarding(&mut headers, present, &hop).iter() {
        headers.append(name, value.clone());
    }
    if let Some(host) = host {
        headers.insert(HOST, host);
    }
    headers
}

/// What `src/proxy.rs` does to an upstream response's headers in `client_response`.
fn inbound(mut headers: HeaderMap, version: Version) -> HeaderMap {
    let present = strip_hop_by_hop(&mut headers);
    append_via(&mut headers, version, present.via);
    headers
}

fn assert_clean(output: &HeaderMap) -> Result<(), TestCaseError> {
    for (name, value) in output {
        for bytes in [name.as_str().as_bytes(), value.as_bytes()] {
            prop_assert!(
                !bytes.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
                "CR, LF or NUL in {name}: {value:?}"
            );
        }
    }
    Ok(())
}

fn assert_no_hop_by_hop(
    input: &HeaderMap,
    output: &HeaderMap,
    proxy_set: &[&str],
) -> Result<(), TestCaseError> {
    for name in forbidden(input) {
        if proxy_set.contains(&name.as_str()) {
            continue;
        }
        prop_assert!(
            !output.contains_key(name.as_str()),
            "hop-by-hop field {name} left in {output:?} (input {input:?})"
        );
    }
    Ok(())
}

/// Every end-to-end field that the proxy does not write itself comes through, values in order.
fn assert_end_to_end_kept(
    input: &HeaderMap,
    output: &HeaderMap,
    proxy_set: &[&str],
) -> Result<(), TestCaseError> {
    let forbidden = forbidden(input);
    for name in input.keys() {
        if forbidden.contains(name.as_str()) || proxy_set.contains(&name.as_str()) {
            continue;
        }
        let before: Vec<&HeaderValue> = input.get_all(name).iter().collect();
        let after: Vec<&HeaderValue> = output.get_all(name).iter().collect();
        prop_assert_eq!(before, after, "end-to-end field {} changed", name);
    }
    Ok(())
}

fn client() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    proptest::sample::select(&[Version::HTTP_10, Version::HTTP_11, Version::HTTP_2][..])
}

fn hop(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "1.0 restatus",
        Version::HTTP_2 => "2 restatus",
        _ => "1.1 restatus",
    }
}

fn check_request(
    input: &HeaderMap,
    client: IpAddr,
    https: bool,
    version: Version,
) -> Result<(), TestCaseError> {
    let output = outbound(input.clone(), client, https, version);
    assert_clean(&output)?;
    assert_no_hop_by_hop(input, &output, PROXY_SET)?;
    assert_end_to_end_kept(input, &output, PROXY_SET)?;

    // X-Forwarded-For: one field, the earlier entries (unless the client declared the field
    // hop-by-hop) and then the client's address.
    let forwarded: Vec<&HeaderValue> = output.get_all(&X_FORWARDED_FOR).iter().collect();
    prop_assert_eq!(forwarded.len(), 1, "one X-Forwarded-For field");
    let mut want = if forbidden(input).contains("x-forwarded-for") {
        Vec::new()
    } else {
        elements(input, &X_FORWARDED_FOR)
    };
    want.push(client.to_string().into_bytes());
    let got = elements(&output, &X_FORWARDED_FOR);
    prop_assert_eq!(
        &got,
        &want,
        "X-Forwarded-For {:?} from {:?}",
        forwarded,
        input.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>()
    );

    let proto: Vec<&HeaderValue> = output.get_all(&X_FORWARDED_PROTO).iter().collect();
    prop_assert_eq!(proto, vec![if https { "https" } else { "http" }]);
    prop_assert_eq!(output.get(&X_FORWARDED_HOST), input.get(HOST));
    prop_assert_eq!(output.get_all(&X_REQUEST_ID).iter().count(), 1);

    let via = output.get_all(VIA).iter().collect::<Vec<_>>();
    prop_assert_eq!(via.len(), 1, "one Via field");
    prop_assert!(
        via[0].as_bytes().ends_with(hop(version).as_bytes()),
        "Via {:?} names this hop last",
        via[0]
    );
    Ok(())
}

fn check_response(input: &HeaderMap, version: Version) -> Result<(), TestCaseError> {
    let output = inbound(input.clone(), version);
    assert_clean(&output)?;
    assert_no_hop_by_hop(input, &output, &["via"])?;
    assert_end_to_end_kept(input, &output, &["via"])?;
    let via = output.get_all(VIA).iter().collect::<Vec<_>>();
    prop_assert_eq!(via.len(), 1, "one Via field");
    prop_assert!(via[0].as_bytes().ends_with(hop(version).as_bytes()));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(4096),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Toward the upstream (`outbound_request`).
    #[test]
    fn request_headers_are_rewritten_safely(
        fields in fields(),
        client in client(),
        https in any::<bool>(),
        version in version(),
    ) {
        let input = build(&fields);
        check_request(&input, client, https, version)?;
    }

    /// Toward the client (`client_response`).
    #[test]
    fn response_headers_are_rewritten_safely(fields in fields(), version in version()) {
        let input = build(&fields);
        check_response(&input, version)?;
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the fuzzer

/// Found by `request_headers_are_rewritten_safely` (before obs-text was filtered out of
/// `Connection` values): `strip_hop_by_hop` (src/headers.rs) reads each `Connection` value with
/// `HeaderValue::to_str`, which fails for a value with any obs-text byte (0x80-0xff), and then
/// skips the whole value, so the fields it names are forwarded. A client (or an earlier proxy)
/// that marks `X-Secret` hop-by-hop in such a value had it reach the upstream. Fixed by splitting
/// `value.as_bytes()` on `,`, trimming OWS, and parsing each element with `HeaderName::from_bytes`.
#[test]
fn regression_connection_value_with_obs_text() {
    let mut input = HeaderMap::new();
    input.append(
        "connection",
        HeaderValue::from_bytes(b"x-secret, caf\xe9").expect("valid field value"),
    );
    input.append("x-secret", HeaderValue::from_static("1"));
    let output = outbound(input, IpAddr::from([10, 0, 0, 1]), false, Version::HTTP_11);
    assert!(
        !output.contains_key("x-secret"),
        "x-secret was named by Connection but reached the upstream: {output:?}"
    );
}

/// Found by `request_headers_are_rewritten_safely` (before obs-text was filtered out of
/// `X-Forwarded-For` values): `append_forwarded_for` (src/headers.rs) drops an earlier
/// `X-Forwarded-For` field whose value is not visible ASCII, with every address in it, so the
/// upstream lost the chain of earlier hops. Fixed by joining the earlier values as bytes
/// (`HeaderValue::from_bytes`).
#[test]
fn regression_forwarded_for_with_obs_text() {
    let mut input = HeaderMap::new();
    input.append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"192.0.2.1, \xff").expect("valid field value"),
    );
    let output = outbound(input, IpAddr::from([10, 0, 0, 1]), false, Version::HTTP_11);
    let forwarded = output.get("x-forwarded-for").expect("x-forwarded-for");
    assert!(
        forwarded.as_bytes().starts_with(b"192.0.2.1"),
        "the earlier address was lost: {forwarded:?}"
    );
}
