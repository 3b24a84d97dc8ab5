//! Fuzzing the config parser and rule compiler (`Config::parse`) on the stable toolchain with
//! proptest: it never panics, and every error names a place inside the file.
//!
//! Three generators: (a) arbitrary text (strings, and bytes read as lossy UTF-8); (b) the
//! shipped sample config with random byte-level edits; (c) structure-aware documents built from
//! the real key vocabulary (`[server]`, `[server.tls]`, `[[upstreams]]`, `[[routes]]`,
//! `[[rules]]` and `[[checks]]` with `when`/`then`, `[limits]`, `[deviations]`, `[admin]`, ...)
//! holding values of every TOML type, so that the validators and the rule compiler run deep.
//! A config that compiles is then summarized, checked for shadowed rules and evaluated against
//! a few exchanges.
//!
//! Cases per property come from `FUZZ_CASES` (default 1024, the bounded run CI makes). A longer run:
//!
//! ```sh
//! FUZZ_CASES=100000 cargo test --release --test fuzz_config
//! ```
//!
//! A failing case is shrunk and saved in `tests/fuzz_config.proptest-regressions`, which is
//! replayed first on every later run; commit that file.
use http::{HeaderMap, Method};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use restatus::config::{summary, Config};
use restatus::rules::{BodyState, Facts};
use std::path::Path;

/// Cases per property: `FUZZ_CASES` when set, else `default`.
fn cases(default: u32) -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The sample config shipped with the project: a realistic seed for byte-level mutation.
const SAMPLE: &str = include_str!("../config/restatus.toml");

/// Parses `source` and checks the error contract; on success exercises the compiled config.
fn check(source: &str) -> Result<(), TestCaseError> {
    match Config::parse(Path::new("fuzz.toml"), source) {
        Err(err) => {
            let lines = source.lines().count();
            prop_assert!(
                !err.message.trim().is_empty(),
                "empty error message: {err:?}"
            );
            prop_assert!(
                err.line <= lines + 1,
                "error line {} is past the end of a {lines}-line file: {err}",
                err.line
            );
            prop_assert!(
                err.line > 0 || err.column == 0,
                "column without a line: {err:?}"
            );
            let shown = err.to_string();
            prop_assert!(shown.starts_with("fuzz.toml"), "{shown}");
        }
        Ok(config) => exercise(&config),
    }
    Ok(())
}

/// Runs what `restatus check` and the request path do with a compiled config.
fn exercise(config: &Config) {
    let _ = summary(config);
    let _ = restatus::check::report(config);
    let empty = HeaderMap::new();
    for route in &config.routes {
        for (method, path, status) in [
            (Method::GET, "/items/1", 200),
            (Method::POST, "/", 500),
            (Method::DELETE, "/a/b/c", 404),
            (Method::from_bytes(b"PURGE").expect("method"), "/x", 599),
        ] {
            let facts = Facts {
                method: &method,
                path,
                status,
                request_headers: Some(&empty),
                response_headers: &empty,
            };
            let body = BodyState::Inspected(br#"{"error":{"code":"NOT_FOUND"}}"#);
            let _ = route.rules.evaluate(&facts, body, 0, None);
            let _ = route.rules.evaluate(&facts, BodyState::Unread, 0, None);
        }
        for check in route.checks.iter() {
            let _ = check.refuses(&Method::GET, "/items/1", &empty);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// (c) Structure-aware documents

/// A TOML value, rendered to text by [`render`].
#[derive(Debug, Clone)]
enum V {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Date(&'static str),
    Array(Vec<V>),
    Table(Vec<(String, V)>),
    /// Raw TOML text (other literal forms), possibly invalid.
    Raw(&'static str),
}

fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Keys are bare when they can be, quoted otherwise.
fn key(text: &str) -> String {
    let bare = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if bare {
        text.to_string()
    } else {
        quote(text)
    }
}

fn render(value: &V) -> String {
    match value {
        V::Str(text) => quote(text),
        V::Int(n) => n.to_string(),
        V::Float(f) if f.is_nan() => "nan".into(),
        V::Float(f) if f.is_infinite() => if *f > 0.0 { "inf" } else { "-inf" }.into(),
        V::Float(f) => {
            let text = format!("{f:?}");
            if text.contains(['.', 'e', 'E']) {
                text
            } else {
                format!("{text}.0")
            }
        }
        V::Bool(b) => b.to_string(),
        V::Date(d) => (*d).to_string(),
        V::Array(items) => {
            let items: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", items.join(", "))
        }
        V::Table(entries) => {
            let entries: Vec<String> = entries
                .iter()
                .map(|(k, v)| format!("{} = {}", key(k), render(v)))
                .collect();
            format!("{{ {} }}", entries.join(", "))
        }
        V::Raw(text) => (*text).to_string(),
    }
}

/// How wild a document is. Out of every 256 values, `wild` are of any type (instead of the type
/// the key wants) and `bad` are of the right type but invalid; the rest are meant to be valid,
/// so that clean documents compile and reach the rule compiler.
/// `loose` documents may also miss required keys, repeat keys and use dotted keys.
#[derive(Debug, Clone, Copy)]
struct Mix {
    wild: u32,
    bad: u32,
    loose: bool,
}

const CLEAN: Mix = Mix {
    wild: 0,
    bad: 2,
    loose: false,
};
const NOISY: Mix = Mix {
    wild: 32,
    bad: 48,
    loose: true,
};

impl Mix {
    /// Well-formed documents keep required keys, unique keys and inline tables.
    fn clean(self) -> bool {
        !self.loose
    }

    /// A value from `good`, sometimes from `bad`, sometimes of any type at all.
    fn value(
        self,
        good: impl Strategy<Value = V> + 'static,
        bad: impl Strategy<Value = V> + 'static,
    ) -> BoxedStrategy<V> {
        let mut arms: Vec<(u32, BoxedStrategy<V>)> =
            vec![(256 - self.wild - self.bad, good.boxed())];
        if self.bad > 0 {
            arms.push((self.bad, bad.boxed()));
        }
        if self.wild > 0 {
            arms.push((self.wild, any_value()));
        }
        proptest::strategy::Union::new_weighted(arms).boxed()
    }

    /// A value from `good`, sometimes from `bad`, a value of the wrong shape for the key (so
    /// only as often as values of any type).
    fn shape(
        self,
        good: impl Strategy<Value = V> + 'static,
        bad: impl Strategy<Value = V> + 'static,
    ) -> BoxedStrategy<V> {
        if self.wild == 0 {
            return good.boxed();
        }
        prop_oneof![256 - self.wild => good.boxed(), self.wild => bad.boxed()].boxed()
    }

    /// A string from `good` or `bad` (or a value of any type).
    fn pick(self, good: &'static [&'static str], bad: &'static [&'static str]) -> BoxedStrategy<V> {
        self.value(
            strings(good),
            prop_oneof![3 => strings(bad), 1 => odd_string()],
        )
    }
}

fn strings(choices: &'static [&'static str]) -> BoxedStrategy<V> {
    proptest::sample::select(choices)
        .prop_map(|text| V::Str(text.to_string()))
        .boxed()
}

/// Strings with a twist: empty, huge, control characters, non-ASCII, almost-numbers.
const ODD_STRINGS: &[&str] = &[
    "",
    " ",
    "\t",
    "\u{0}",
    "\n",
    "é",
    "日本",
    "\u{202e}",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551616",
    "1e309",
    "NaN",
    "0x10",
    "../../etc",
    "*",
    "**",
    "[",
    "(",
    "\\",
    "a\u{0}b",
    "%2e%2e",
];

fn odd_string() -> BoxedStrategy<V> {
    prop_oneof![
        3 => strings(ODD_STRINGS),
        3 => any::<String>().prop_map(V::Str),
        2 => "[ -~]{0,12}".prop_map(V::Str),
        1 => (1usize..3000).prop_map(|n| V::Str("a".repeat(n))),
    ]
    .boxed()
}

const EDGE_INTS: &[i64] = &[
    i64::MIN,
    -1,
    0,
    1,
    2,
    99,
    100,
    101,
    199,
    200,
    201,
    204,
    299,
    304,
    404,
    500,
    599,
    600,
    999,
    1000,
    1024,
    65535,
    65536,
    4_294_967_295,
    4_294_967_296,
    i64::MAX,
];

fn int() -> BoxedStrategy<V> {
    prop_oneof![
        3 => proptest::sample::select(EDGE_INTS).prop_map(V::Int),
        1 => any::<i64>().prop_map(V::Int),
        1 => (0i64..1000).prop_map(V::Int),
    ]
    .boxed()
}

fn scalar() -> BoxedStrategy<V> {
    prop_oneof![
        4 => odd_string(),
        3 => int(),
        1 => any::<f64>().prop_map(V::Float),
        1 => proptest::sample::select(&[0.5, -0.0, 1e300, f64::INFINITY, f64::NAN][..])
            .prop_map(V::Float),
        2 => any::<bool>().prop_map(V::Bool),
        1 => proptest::sample::select(&[
            "1979-05-27T07:32:00Z",
            "1979-05-27",
            "07:32:00",
            "1979-05-27T00:32:00.999999-07:00",
        ][..])
        .prop_map(V::Date),
        1 => proptest::sample::select(&[
            "0x1F", "0o17", "0b101", "1_000", "+inf", "-nan", "'literal \\ string'",
            "'''multi\nline'''", "\"\"\"basic\nmulti\"\"\"", "1e1000", "-0", "+5",
        ][..])
        .prop_map(V::Raw),
    ]
    .boxed()
}

/// A value of any type, nested arrays and inline tables included.
fn any_value() -> BoxedStrategy<V> {
    scalar()
        .prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..5).prop_map(V::Array),
                proptest::collection::vec((table_key(), inner), 0..5).prop_map(V::Table),
            ]
        })
        .boxed()
}

/// Keys for generated inline tables: real keys of `when`/`then` and others.
fn table_key() -> BoxedStrategy<String> {
    prop_oneof![
        3 => proptest::sample::select(&[
            "method", "path", "path_regex", "status", "request_header", "response_header",
            "body_regex", "body_json", "pointer", "equals", "exists", "in", "headers", "set",
            "remove", "body", "regex", "present", "x-token", "content-type", "name", "unknown",
        ][..])
        .prop_map(String::from),
        1 => "[a-z-]{1,8}",
        1 => any::<String>(),
    ]
    .boxed()
}

fn duration(m: Mix) -> BoxedStrategy<V> {
    m.value(
        prop_oneof![
            3 => strings(&["30s", "250ms", "1.5s", "2m", "1h", "1min", " 5s ", "8760h"]),
            // More than zero: a zero timeout is refused.
            1 => ("[1-9][0-9]{0,2}(\\.[0-9]{1,3})?", proptest::sample::select(&["ms", "s", "m", "h"][..]))
                .prop_map(|(n, u)| V::Str(format!("{n}{u}"))),
        ],
        prop_oneof![
            3 => strings(&[
                "10", "10x", "s", ".s", "1.2.3s", "99999999999999999999h", "8761h", "1e3s",
                "5 s", "-1s", "0.0000000001ms", "18446744073709551616s", "",
                "99999999999999999999999999999999999999999999999999999999999999999999ms",
            ]),
            1 => ("[0-9.]{0,24}", proptest::sample::select(&["ms", "s", "m", "h", "", "d"][..]))
                .prop_map(|(n, u)| V::Str(format!("{n}{u}"))),
        ],
    )
}

fn size(m: Mix) -> BoxedStrategy<V> {
    m.value(
        prop_oneof![
            3 => strings(&["64KiB", "1MiB", "1KB", "2K", "32KiB", "1024", "8KiB", "4096B"]),
            1 => (1024i64..65536).prop_map(V::Int),
        ],
        prop_oneof![
            3 => strings(&[
                "3TiB", "MiB", "", "0", "18446744073709551615", "18446744073709551616",
                "17179869184GiB", "18014398509481984KiB", "1023B", "1048577", " 1 KiB",
                "1GiB", "65MiB", "255B", "16MiB", "512B",
            ]),
            1 => int(),
            1 => ("[0-9]{0,21}", proptest::sample::select(&["B", "KiB", "MiB", "GiB", "KB", "x"][..]))
                .prop_map(|(n, u)| V::Str(format!("{n}{u}"))),
        ],
    )
}

fn boolean(m: Mix) -> BoxedStrategy<V> {
    m.value(any::<bool>().prop_map(V::Bool), int())
}

/// Each listener's own ports, so that valid documents never ask two listeners for one port.
const GOOD_ADDRESSES: &[&str] = &[
    "127.0.0.1:0",
    "127.0.0.1:8080",
    "[::1]:8080",
    "0.0.0.0:65535",
];
const TLS_ADDRESSES: &[&str] = &["127.0.0.1:0", "127.0.0.1:8443", "[::1]:8443"];
const ADMIN_ADDRESSES: &[&str] = &["127.0.0.1:0", "127.0.0.1:9901", "[::1]:9901"];
const BAD_ADDRESSES: &[&str] = &[
    "127.0.0.1:65536",
    "localhost:80",
    "127.0.0.1",
    "",
    ":80",
    "[::1]",
    "1.2.3.4:-1",
];

fn listen(m: Mix, good: &'static [&'static str]) -> BoxedStrategy<V> {
    let one = || m.pick(good, BAD_ADDRESSES);
    // Distinct addresses: one address twice is refused.
    let several = proptest::sample::subsequence(good, 2..=2)
        .prop_map(|list| V::Array(list.iter().map(|a| V::Str(a.to_string())).collect()));
    m.value(
        prop_oneof![
            3 => one(),
            1 => one().prop_map(|v| V::Array(vec![v])),
            1 => several,
        ],
        Just(V::Array(vec![])),
    )
}

/// Names of upstreams and routes come from small pools so that references resolve.
const UPSTREAM_NAMES: &[&str] = &["a", "backend", "x.y-z_1"];
const ROUTE_NAMES: &[&str] = &["main", "b", "inventory"];
const BAD_NAMES: &[&str] = &["", "bad name", "é", "a/b", "documented/create-is-201"];

fn rule_name(m: Mix) -> BoxedStrategy<V> {
    m.value(
        "[a-z][a-z0-9._-]{0,12}".prop_map(V::Str),
        strings(BAD_NAMES),
    )
}

fn route_refs(m: Mix) -> BoxedStrategy<V> {
    m.value(
        proptest::collection::vec(m.pick(ROUTE_NAMES, BAD_NAMES), 0..3).prop_map(V::Array),
        Just(V::Array(vec![V::Str("nowhere".into())])),
    )
}

/// Files that never exist, or are directories: reading them fails at once.
const FILES: &[&str] = &[
    "missing/cert.pem",
    "/nonexistent-restatus-fuzz/key.pem",
    "",
    ".",
    "/",
    "missing/../also-missing.pem",
];

fn file(m: Mix) -> BoxedStrategy<V> {
    m.value(strings(FILES), strings(FILES))
}

fn targets(m: Mix) -> BoxedStrategy<V> {
    let one = m.pick(
        &[
            "http://127.0.0.1:1",
            "http://127.0.0.1:8081",
            "http://[::1]:80",
            "http://localhost:9",
        ],
        &[
            "https://127.0.0.1:8443",
            "https://legacy.internal:443",
            "ftp://x:1",
            "http://x/path",
            "http://x:1?q",
            "127.0.0.1:80",
            "http://",
            "",
            "http://a b:1",
            "http://h:99999",
        ],
    );
    m.value(
        proptest::collection::vec(one, 1..3).prop_map(V::Array),
        Just(V::Array(vec![])),
    )
}

fn header_name(m: Mix) -> BoxedStrategy<String> {
    let good = proptest::sample::select(
        &[
            "x-token",
            "X-Auth-Token",
            "content-type",
            "x-restatus-original-status",
            "x-a",
        ][..],
    )
    .prop_map(String::from);
    if m.bad == 0 {
        return good.boxed();
    }
    let bad = prop_oneof![
        2 => proptest::sample::select(&["", "bad name", "é", "x\u{0}y", " x-pad "][..])
            .prop_map(String::from),
        1 => "[!-~]{1,10}",
        1 => any::<String>(),
    ];
    proptest::strategy::Union::new_weighted(vec![(256 - m.bad, good.boxed()), (m.bad, bad.boxed())])
        .boxed()
}

fn regex(m: Mix) -> BoxedStrategy<V> {
    m.pick(
        &[
            "^Bearer ",
            "(?P<n>x)",
            "\\p{Greek}",
            "^/items/[0-9]+$",
            "(a*)*b",
            "(?i)NOT_FOUND",
            "",
        ],
        &[
            "(?-u:\\xff)",
            "(",
            ")",
            "[",
            "a{1000}{1000}",
            "\\",
            "x{4294967296}",
            "\\xff\\",
            "(?P<>x)",
        ],
    )
}

fn header_condition(m: Mix) -> BoxedStrategy<V> {
    m.value(
        prop_oneof![
            2 => strings(&["abc", "Bearer x", "", "é"]),
            2 => regex(m).prop_map(|r| V::Table(vec![("regex".into(), r)])),
            2 => any::<bool>().prop_map(|b| V::Table(vec![("present".into(), V::Bool(b))])),
        ],
        prop_oneof![
            (regex(m), any::<bool>()).prop_map(|(r, b)| {
                V::Table(vec![("regex".into(), r), ("present".into(), V::Bool(b))])
            }),
            Just(V::Table(vec![])),
            odd_string().prop_map(|v| V::Table(vec![("regex".into(), v)])),
        ],
    )
}

fn header_map(m: Mix) -> BoxedStrategy<V> {
    m.shape(
        proptest::collection::vec((header_name(m), header_condition(m)), 0..3)
            .prop_map(move |entries| V::Table(if m.clean() { unique(entries) } else { entries })),
        Just(V::Array(vec![])),
    )
}

fn method(m: Mix) -> BoxedStrategy<V> {
    let one = m.pick(
        &[
            "GET", "POST", "put", " DELETE ", "HEAD", "PURGE", "OPTIONS", "PATCH",
        ],
        &["", "G ET", "GET\u{0}", "é", "GET,POST"],
    );
    m.value(
        prop_oneof![
            2 => one.clone(),
            1 => proptest::collection::vec(one, 1..4).prop_map(V::Array),
        ],
        Just(V::Array(vec![])),
    )
}

fn path(m: Mix) -> BoxedStrategy<V> {
    m.value(
        prop_oneof![
            4 => strings(&[
                "/items", "/items/*", "/items/**", "/items/**/parts", "/*/x", "/**/**/**",
                "/", "//", "/items/*/", "/é", "/%2e%2e", "/**",
            ]),
            1 => "/[a-z/]{0,10}(\\*{1,2})?(/[a-z]{0,3})?".prop_map(V::Str),
        ],
        prop_oneof![
            3 => strings(&["/a*", "items", "", "*", "/x/**y"]),
            1 => "/[a-z*/]{0,16}".prop_map(V::Str),
        ],
    )
}

fn status_item(m: Mix) -> BoxedStrategy<V> {
    m.value(
        prop_oneof![
            3 => (100i64..600).prop_map(V::Int),
            2 => strings(&["5xx", "4XX", "1xx", "2xx", "500-503", "100-599", " 404 ", "404"]),
        ],
        prop_oneof![
            2 => int(),
            3 => strings(&[
                "6xx", "0xx", "-1xx", "xx", "99999999999999999xx", "503-500", "1-2", "-", "500-",
                "-500", "abc", "99999999999999999999", "92233720368547758xx",
                "-92233720368547758xx", "9223372036854775807xx", "1xx-2xx",
            ]),
            1 => "-?[0-9]{0,20}(xx|XX|-[0-9]{0,20})?".prop_map(V::Str),
        ],
    )
}

fn status(m: Mix) -> BoxedStrategy<V> {
    m.value(
        prop_oneof![
            3 => status_item(m),
            2 => proptest::collection::vec(status_item(m), 1..4).prop_map(V::Array),
        ],
        Just(V::Array(vec![])),
    )
}

fn json_value(m: Mix) -> BoxedStrategy<V> {
    m.value(
        prop_oneof![
            strings(&["NOT_FOUND", "", "x"]),
            (0i64..100).prop_map(V::Int),
            any::<bool>().prop_map(V::Bool),
        ],
        any_value(),
    )
}

fn body_json(m: Mix) -> BoxedStrategy<V> {
    let pointer = m.pick(
        &["/error/code", "", "/", "/a~0b/~1c", "/0", "/~2"],
        &["error", "x/"],
    );
    let test = prop_oneof![
        json_value(m).prop_map(|v| vec![("equals".to_string(), v)]),
        boolean(m).prop_map(|v| vec![("exists".to_string(), v)]),
        proptest::collection::vec(json_value(m), 0..4)
            .prop_map(|v| vec![("in".to_string(), V::Array(v))]),
    ];
    let extra = proptest::collection::vec(
        prop_oneof![
            json_value(m).prop_map(|v| ("equals".to_string(), v)),
            boolean(m).prop_map(|v| ("exists".to_string(), v)),
            any_value().prop_map(|v| ("extra".to_string(), v)),
        ],
        if m.clean() { 0..1 } else { 0..2 },
    );
    let missing_pointer = if m.clean() { 1.0 } else { 0.9 };
    m.shape(
        (maybe(missing_pointer, pointer), test, extra).prop_map(|(pointer, mut test, extra)| {
            if let Some(pointer) = pointer {
                test.insert(0, ("pointer".to_string(), pointer));
            }
            test.extend(extra);
            V::Table(test)
        }),
        Just(V::Table(vec![])),
    )
}

/// Entries with the first of each key only (TOML refuses a key twice in a table).
fn unique(entries: Vec<(String, V)>) -> Vec<(String, V)> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|(k, _)| seen.insert(k.trim().to_ascii_lowercase()))
        .collect()
}

/// `Some` value of `strategy` with probability `p` (0 and 1 included).
fn maybe<S>(p: f64, strategy: S) -> BoxedStrategy<Option<S::Value>>
where
    S: Strategy + 'static,
    S::Value: Clone + 'static,
{
    if p <= 0.0 {
        Just(None).boxed()
    } else if p >= 1.0 {
        strategy.prop_map(Some).boxed()
    } else {
        proptest::option::weighted(p, strategy).boxed()
    }
}

/// Picks a random subset of `entries`, in order; each is present with probability `p`.
fn some_of(
    m: Mix,
    p: f64,
    entries: Vec<(&'static str, BoxedStrategy<V>)>,
) -> BoxedStrategy<Vec<(String, V)>> {
    let parts: Vec<BoxedStrategy<Option<(String, V)>>> = entries
        .into_iter()
        .map(|(k, strategy)| maybe(p, strategy.prop_map(move |v| (k.to_string(), v))).boxed())
        .collect();
    let unknown = if m.clean() {
        0.0
    } else {
        f64::from(m.wild) / 512.0
    };
    (parts, maybe(unknown, (table_key(), any_value())))
        .prop_map(|(parts, unknown)| parts.into_iter().flatten().chain(unknown).collect())
        .boxed()
}

/// Like [`some_of`], but always with the `required` entries.
fn with_required(
    m: Mix,
    required: Vec<(&'static str, BoxedStrategy<V>)>,
    optional: Vec<(&'static str, BoxedStrategy<V>)>,
) -> BoxedStrategy<Vec<(String, V)>> {
    let keep = if m.clean() { 1.0 } else { 0.95 };
    (some_of(m, keep, required), some_of(m, 0.4, optional))
        .prop_map(|(mut a, b)| {
            a.extend(b);
            a
        })
        .boxed()
}

fn when(m: Mix, request_side: bool) -> BoxedStrategy<V> {
    let mut entries = vec![
        ("method", method(m)),
        ("path", path(m)),
        ("path_regex", regex(m)),
        ("request_header", header_map(m)),
    ];
    if !request_side || !m.clean() {
        entries.extend([
            ("status", status(m)),
            ("response_header", header_map(m)),
            ("body_regex", regex(m)),
            ("body_json", body_json(m)),
        ]);
    }
    let conditions = some_of(m, 0.35, entries).prop_map(move |mut entries| {
        if m.clean() && entries.iter().any(|(k, _)| k == "path") {
            entries.retain(|(k, _)| k != "path_regex");
        }
        V::Table(entries)
    });
    m.shape(conditions, Just(V::Str("GET".into())))
}

fn then(m: Mix, codes: &'static [i64]) -> BoxedStrategy<V> {
    let set = proptest::collection::vec(
        (
            header_name(m),
            m.pick(&["1", "x", ""], &["\u{0}", "a\nb", "é"]),
        ),
        0..3,
    )
    .prop_map(move |entries| V::Table(if m.clean() { unique(entries) } else { entries }));
    let remove =
        proptest::collection::vec(header_name(m).prop_map(V::Str), 0..3).prop_map(V::Array);
    let headers = m.shape(
        some_of(
            m,
            0.5,
            vec![("set", set.boxed()), ("remove", remove.boxed())],
        )
        .prop_map(V::Table),
        Just(V::Array(vec![])),
    );
    let code = m.value(proptest::sample::select(codes).prop_map(V::Int), int());
    let body = m.value(
        prop_oneof![
            strings(&["", "{\"error\": \"gone\"}", "plain"]),
            proptest::collection::vec((table_key(), json_value(m)), 0..3).prop_map(V::Table),
        ],
        any_value(),
    );
    m.shape(
        with_required(
            m,
            vec![("status", code)],
            vec![("headers", headers), ("body", body)],
        )
        .prop_map(V::Table),
        Just(V::Int(200)),
    )
}

/// One table of the document: its header line and its entries.
#[derive(Debug, Clone)]
struct Section {
    header: &'static str,
    entries: Vec<(String, V)>,
    /// Write `when = { ... }` as `when.x = ...` lines instead of inline tables.
    dotted: bool,
}

fn section(
    m: Mix,
    header: &'static str,
    entries: impl Strategy<Value = Vec<(String, V)>> + 'static,
) -> BoxedStrategy<Section> {
    let dotted = if m.clean() { 0.0 } else { 0.2 };
    (entries, maybe(dotted, Just(())).prop_map(|d| d.is_some()))
        .prop_map(move |(entries, dotted)| Section {
            header,
            entries,
            dotted,
        })
        .boxed()
}

fn server(m: Mix) -> BoxedStrategy<Section> {
    let entries = some_of(
        m,
        0.4,
        vec![
            ("listen", listen(m, GOOD_ADDRESSES)),
            ("workers", m.value((1i64..64).prop_map(V::Int), int())),
            ("header_timeout", duration(m)),
            ("idle_timeout", duration(m)),
            ("body_timeout", duration(m)),
            ("shutdown_grace", duration(m)),
            ("max_header_bytes", size(m)),
            ("watch_config", boolean(m)),
        ],
    );
    section(m, "[server]", entries)
}

fn server_tls(m: Mix) -> BoxedStrategy<Section> {
    let entries = with_required(
        m,
        vec![("listen", listen(m, TLS_ADDRESSES))],
        vec![
            ("cert", file(m)),
            ("key", file(m)),
            (
                "min_version",
                m.pick(&["1.2", "1.3"], &["1.1", "", "tls1.3"]),
            ),
        ],
    );
    section(m, "[server.tls]", entries)
}

fn server_tls_cert(m: Mix) -> BoxedStrategy<Section> {
    let entries = some_of(
        m,
        0.8,
        vec![
            ("host", m.pick(&["api.example.com"], &["", "*.x", "é"])),
            ("cert", file(m)),
            ("key", file(m)),
        ],
    );
    section(m, "[[server.tls.certs]]", entries)
}

fn log(m: Mix) -> BoxedStrategy<Section> {
    let entries = some_of(
        m,
        0.5,
        vec![
            ("format", m.pick(&["json", "text"], &["xml", "JSON", ""])),
            (
                "level",
                m.pick(
                    &[
                        "info",
                        "DEBUG",
                        "warn,restatus=trace",
                        "off",
                        "restatus::proxy=debug",
                    ],
                    &[
                        "bogus[",
                        "",
                        "=",
                        "a=b=c",
                        "restatus[{x}]=info",
                        "info,[",
                        "x=foo",
                    ],
                ),
            ),
            ("access", boolean(m)),
        ],
    );
    section(m, "[log]", entries)
}

fn limits(m: Mix) -> BoxedStrategy<Section> {
    let entries = some_of(
        m,
        0.5,
        vec![
            ("request_body", size(m)),
            ("uri", size(m)),
            ("inspect_body", size(m)),
        ],
    );
    section(m, "[limits]", entries)
}

fn deviations(m: Mix) -> BoxedStrategy<Section> {
    let entries = some_of(
        m,
        0.5,
        vec![
            ("mode", m.pick(&["enforce", "audit"], &["Audit", ""])),
            (
                "sink",
                m.pick(
                    &["stdout", "stderr", "records.jsonl"],
                    &["", "missing/records.jsonl"],
                ),
            ),
            (
                "original_status_header",
                m.pick(
                    &["x-restatus-original-status", "", "X-Up"],
                    &["bad name", "é"],
                ),
            ),
        ],
    );
    section(m, "[deviations]", entries)
}

fn admin(m: Mix) -> BoxedStrategy<Section> {
    let entries = some_of(
        m,
        0.7,
        vec![("listen", m.pick(ADMIN_ADDRESSES, BAD_ADDRESSES))],
    );
    section(m, "[admin]", entries)
}

fn upstream(m: Mix) -> BoxedStrategy<Section> {
    let tls_keys = || {
        vec![
            ("ca", file(m)),
            (
                "server_name",
                m.pick(&["legacy.internal", "1.2.3.4"], &["", "a b", "é"]),
            ),
            ("client_cert", file(m)),
            ("client_key", file(m)),
        ]
    };
    let mut optional = vec![
        ("connect_timeout", duration(m)),
        ("response_timeout", duration(m)),
        ("host", m.pick(&["preserve", "target"], &["x"])),
        ("expect", m.pick(&["forward", "local"], &["x"])),
        ("expect_timeout", duration(m)),
    ];
    if !m.clean() {
        optional.extend(tls_keys());
    }
    let plain = with_required(
        m,
        vec![
            ("name", m.pick(UPSTREAM_NAMES, BAD_NAMES)),
            ("targets", targets(m)),
        ],
        optional,
    );
    // An https:// upstream whose files cannot be read: the TLS validators' error paths.
    let https = with_required(
        m,
        vec![
            ("name", m.pick(UPSTREAM_NAMES, BAD_NAMES)),
            (
                "targets",
                Just(V::Array(vec![V::Str("https://127.0.0.1:8443".into())])).boxed(),
            ),
        ],
        tls_keys(),
    );
    section(m, "[[upstreams]]", prop_oneof![15 => plain, 1 => https])
}

fn route(m: Mix) -> BoxedStrategy<Section> {
    let entries = with_required(
        m,
        vec![
            ("name", m.pick(ROUTE_NAMES, BAD_NAMES)),
            ("upstream", m.pick(UPSTREAM_NAMES, &["nowhere", ""])),
        ],
        vec![
            (
                "host",
                m.pick(
                    &["api.example.com", "API.example.com.", "[::1]"],
                    &["", "a b", "api.example.com:8080"],
                ),
            ),
            (
                "path_prefix",
                m.pick(
                    &["/", "/inventory", "/inventory/", "//", "/a/b"],
                    &["inventory", "/a?b", "/../x", "/a/./b", ""],
                ),
            ),
            ("strip_prefix", boolean(m)),
            ("profile", m.pick(&["documented", "none"], &["x", ""])),
            ("mode", m.pick(&["enforce", "audit"], &["x"])),
            ("validate_json", boolean(m)),
        ],
    );
    section(m, "[[routes]]", entries)
}

const RULE_CODES: &[i64] = &[200, 201, 202, 400, 403, 404, 409, 500, 599];
const CHECK_CODES: &[i64] = &[400, 403, 404, 409, 500];

fn rule(m: Mix, header: &'static str) -> BoxedStrategy<Section> {
    let check = header == "[[checks]]";
    let codes = if check { CHECK_CODES } else { RULE_CODES };
    let entries = with_required(
        m,
        vec![
            ("name", rule_name(m)),
            ("when", when(m, check)),
            ("then", then(m, codes)),
        ],
        vec![
            ("routes", route_refs(m)),
            ("description", m.value(strings(&["why"]), odd_string())),
        ],
    );
    section(m, header, entries)
}

/// Makes a clean document's names consistent: upstreams and routes get distinct names and
/// prefixes, and references point at what exists. Names from the bad lists are left alone.
fn tie_up(ups: &mut [Section], routes: &mut [Section], rules: &mut [Section]) {
    let pooled = |pool: &[&str], v: &V| matches!(v, V::Str(n) if pool.contains(&n.as_str()));
    let index = |pool: &[&str], v: &V| match v {
        V::Str(n) => pool.iter().position(|p| p == n).unwrap_or(0),
        _ => 0,
    };
    for (i, up) in ups.iter_mut().enumerate() {
        for (k, v) in up.entries.iter_mut() {
            if k == "name" && pooled(UPSTREAM_NAMES, v) {
                *v = V::Str(UPSTREAM_NAMES[i % UPSTREAM_NAMES.len()].into());
            }
        }
    }
    let (n_ups, n_routes) = (ups.len().max(1), routes.len().max(1));
    for (i, route) in routes.iter_mut().enumerate() {
        for (k, v) in route.entries.iter_mut() {
            if k == "name" && pooled(ROUTE_NAMES, v) {
                *v = V::Str(ROUTE_NAMES[i % ROUTE_NAMES.len()].into());
            }
            if k == "upstream" && pooled(UPSTREAM_NAMES, v) {
                *v = V::Str(UPSTREAM_NAMES[index(UPSTREAM_NAMES, v) % n_ups].into());
            }
        }
        if i > 0 {
            route.entries.retain(|(k, _)| k != "path_prefix");
            route
                .entries
                .push(("path_prefix".into(), V::Str(format!("/route{i}"))));
        }
    }
    for rule in rules.iter_mut() {
        for (k, v) in rule.entries.iter_mut() {
            if let (true, V::Array(items)) = (k == "routes", v) {
                for item in items.iter_mut() {
                    if pooled(ROUTE_NAMES, item) {
                        *item = V::Str(ROUTE_NAMES[index(ROUTE_NAMES, item) % n_routes].into());
                    }
                }
            }
        }
    }
}

/// Renders one section; `dotted` spreads inline tables over `key.sub = value` lines.
fn render_section(section: &Section, out: &mut String) {
    out.push_str(section.header);
    out.push('\n');
    for (k, v) in &section.entries {
        match v {
            V::Table(entries) if section.dotted && !entries.is_empty() => {
                for (sub, value) in entries {
                    out.push_str(&format!("{}.{} = {}\n", key(k), key(sub), render(value)));
                }
            }
            _ => out.push_str(&format!("{} = {}\n", key(k), render(v))),
        }
    }
    out.push('\n');
}

/// A whole document: the singleton tables (each maybe), then the arrays of tables, and
/// sometimes a byte-level edit of the result.
fn document(m: Mix) -> impl Strategy<Value = String> {
    let singletons = (
        maybe(0.7, server(m)),
        maybe(
            0.1,
            (
                server_tls(m),
                proptest::collection::vec(server_tls_cert(m), 0..2),
            ),
        ),
        maybe(0.3, log(m)),
        maybe(0.4, limits(m)),
        maybe(0.4, deviations(m)),
        maybe(0.2, admin(m)),
    );
    let arrays = (
        proptest::collection::vec(upstream(m), 1..3),
        proptest::collection::vec(route(m), 1..3),
        proptest::collection::vec(rule(m, "[[rules]]"), 0..6),
        proptest::collection::vec(rule(m, "[[checks]]"), 0..3),
    );
    let edit_rate = if m.clean() { 0.0 } else { 0.2 };
    (singletons, arrays, maybe(edit_rate, edit())).prop_map(
        move |((server, tls, log, limits, deviations, admin), arrays, edit)| {
            let (mut ups, mut routes, mut rules, mut checks) = arrays;
            if m.clean() {
                tie_up(&mut ups, &mut routes, &mut rules);
                tie_up(&mut [], &mut routes, &mut checks);
            }
            let mut out = String::new();
            for section in [server, log, limits, deviations, admin].iter().flatten() {
                render_section(section, &mut out);
            }
            if let Some((tls, certs)) = tls {
                render_section(&tls, &mut out);
                for cert in &certs {
                    render_section(cert, &mut out);
                }
            }
            for section in ups.iter().chain(&routes).chain(&rules).chain(&checks) {
                render_section(section, &mut out);
            }
            match edit {
                Some(edit) => apply(&out, &edit),
                None => out,
            }
        },
    )
}

/// A valid skeleton (one upstream, two routes) with many wild rules and checks: every value
/// in `when` and `then` reaches the rule compiler.
fn rules_document() -> impl Strategy<Value = String> {
    const RULES: Mix = Mix {
        wild: 2,
        bad: 48,
        loose: false,
    };
    let rules = proptest::collection::vec(rule(RULES, "[[rules]]"), 1..5);
    let checks = proptest::collection::vec(rule(RULES, "[[checks]]"), 0..4);
    (rules, checks).prop_map(|(rules, checks)| {
        let mut out = String::from(
            "[[upstreams]]\nname = \"a\"\ntargets = [\"http://127.0.0.1:1\"]\n\n\
             [[routes]]\nname = \"main\"\nupstream = \"a\"\n\n\
             [[routes]]\nname = \"b\"\nupstream = \"a\"\npath_prefix = \"/b\"\nprofile = \"none\"\n\n",
        );
        for section in rules.iter().chain(&checks) {
            render_section(section, &mut out);
        }
        out
    })
}

// ---------------------------------------------------------------------------------------------
// (b) Byte-level edits of a valid document

/// An edit at a relative position (0..1 of the text's length).
#[derive(Debug, Clone)]
enum Edit {
    Delete(f64, usize),
    Insert(f64, String),
    DuplicateLine(f64),
    Truncate(f64),
}

/// Fragments that tend to break TOML in interesting places.
const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "=",
    "\"",
    "'",
    "'''",
    "\"\"\"",
    "{",
    "}",
    ",",
    "\n",
    "\r\n",
    "\r",
    "#",
    ".",
    "\\",
    "\\u",
    "\u{0}",
    "é",
    "[[rules]]\n",
    "[server]\n",
    "name = ",
    "when = {",
    "then = {",
    "status = ",
    "= =",
    "\t",
    "0x",
    "1979-05-27",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0.0..1.0f64, 1usize..20).prop_map(|(at, n)| Edit::Delete(at, n)),
        (0.0..1.0f64, proptest::sample::select(TOKENS))
            .prop_map(|(at, t)| Edit::Insert(at, t.into())),
        (0.0..1.0f64, any::<String>()).prop_map(|(at, t)| Edit::Insert(at, t)),
        (0.0..1.0f64).prop_map(Edit::DuplicateLine),
        (0.0..1.0f64).prop_map(Edit::Truncate),
    ]
}

/// The char boundary nearest below `fraction` of the text.
fn boundary(text: &str, fraction: f64) -> usize {
    let mut at = ((text.len() as f64) * fraction) as usize;
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn apply(text: &str, edit: &Edit) -> String {
    match edit {
        Edit::Delete(at, n) => {
            let start = boundary(text, *at);
            let mut end = (start + n).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            format!("{}{}", &text[..start], &text[end..])
        }
        Edit::Insert(at, token) => {
            let at = boundary(text, *at);
            format!("{}{token}{}", &text[..at], &text[at..])
        }
        Edit::DuplicateLine(at) => {
            let lines: Vec<&str> = text.lines().collect();
            if lines.is_empty() {
                return text.to_string();
            }
            let i = ((lines.len() as f64) * at) as usize % lines.len();
            let mut out: Vec<&str> = lines.clone();
            out.insert(i, lines[i]);
            out.join("\n")
        }
        Edit::Truncate(at) => text[..boundary(text, *at)].to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(1024),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    })]

    /// (a) Any text at all.
    #[test]
    fn arbitrary_text_never_panics(text in any::<String>()) {
        check(&text)?;
    }

    /// (a) Any bytes, read as lossy UTF-8 (as a file with bad encoding would be repaired).
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        check(&String::from_utf8_lossy(&bytes))?;
    }

    /// (a) A soup of TOML tokens and key names: gets further into the TOML grammar.
    #[test]
    fn token_soup_never_panics(parts in proptest::collection::vec(
        prop_oneof![
            3 => proptest::sample::select(TOKENS).prop_map(String::from),
            1 => "[a-z_]{1,8}",
            1 => "[0-9]{1,4}",
        ],
        0..64,
    )) {
        check(&parts.concat())?;
    }

    /// (b) The shipped sample config with up to four random edits.
    #[test]
    fn edited_sample_never_panics(edits in proptest::collection::vec(edit(), 1..5)) {
        let text = edits.iter().fold(SAMPLE.to_string(), |text, edit| apply(&text, edit));
        check(&text)?;
    }

    /// (c) Structure-aware documents from the real key vocabulary, mostly valid ones.
    #[test]
    fn generated_documents_never_panic(doc in document(CLEAN)) {
        check(&doc)?;
    }

    /// (c) Rules and checks full of odd values, behind a valid skeleton.
    #[test]
    fn generated_rules_never_panic(doc in rules_document()) {
        check(&doc)?;
    }

    /// (c) Structure-aware documents with values of any type and edits.
    #[test]
    fn noisy_documents_never_panic(doc in document(NOISY)) {
        check(&doc)?;
    }
}

/// The clean generator must reach the rule compiler, not stop at the TOML layer: a good share
/// of its documents compile, with rules and checks.
#[test]
fn generated_documents_reach_the_compiler() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = document(CLEAN);
    let (total, mut valid, mut with_rules) = (400, 0, 0);
    for _ in 0..total {
        let doc = strategy
            .new_tree(&mut runner)
            .expect("generate a document")
            .current();
        match Config::parse(Path::new("fuzz.toml"), &doc) {
            Ok(config) => {
                valid += 1;
                if !config.rules.is_empty() && !config.checks.is_empty() {
                    with_rules += 1;
                }
            }
            Err(err) if std::env::var_os("FUZZ_DEBUG").is_some() => println!("{err}"),
            Err(_) => {}
        }
    }
    println!(
        "of {total} clean documents: {valid} compile, {with_rules} of them with rules and checks"
    );
    assert!(
        valid >= total / 4 && with_rules >= total / 10,
        "the generator rarely reaches the rule compiler: {valid} of {total} compile, {with_rules} with rules and checks"
    );
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the fuzzer

/// Found by `token_soup_never_panics`: the TOML parser (toml 0.8) reports a stray carriage
/// return with an empty message, and `Locator::from_toml` passed it on, so the user read
/// `restatus.toml:1:1: ` and nothing else. Fixed in src/config/error.rs (`from_toml`), which
/// now falls back to a message of its own when `err.message()` is empty.
#[test]
fn regression_toml_error_without_message() {
    for source in [
        "\r\r\n",
        "\r\0",
        "[server]\r\nlisten = \"127.0.0.1:0\"\r\r\n",
    ] {
        let err = Config::parse(Path::new("fuzz.toml"), source).expect_err("invalid TOML");
        assert!(!err.message.trim().is_empty(), "{source:?}: {err:?}");
    }
}

/// Found by `generated_rules_never_panic`: a status class whose number fits an `i64` but
/// overflows when multiplied by 100 panics (`attempt to multiply with overflow` at
/// src/rules/condition.rs, `parse_status_item`, `digit * 100`) in debug builds, and wraps to a
/// nonsense range check in release builds. Fix: `digit.checked_mul(100)`, or check that the
/// class is one digit (1-5) before multiplying.
#[test]
fn regression_status_class_overflow() {
    for class in [
        "9223372036854775807xx",
        "92233720368547759XX",
        "-92233720368547759xx",
    ] {
        let source = format!(
            "[[upstreams]]\nname = \"a\"\ntargets = [\"http://127.0.0.1:1\"]\n\
             [[routes]]\nname = \"main\"\nupstream = \"a\"\n\
             [[rules]]\nname = \"r\"\nwhen = {{ status = [\"{class}\"] }}\nthen = {{ status = 200 }}\n"
        );
        let err = Config::parse(Path::new("fuzz.toml"), &source).expect_err("not a status class");
        assert_eq!(err.line, 9, "{err}");
    }
}

/// Found by the structure-aware generator (dotted keys): `when.method = "GET"` is valid TOML
/// for `when = { method = "GET" }`, but is refused with `invalid type: string "method",
/// expected a borrowed string`, because `toml::Spanned` (around `when`, `then` and the header
/// maps in src/rules/raw.rs) cannot deserialize a table built from dotted keys. Either accept
/// it (deserialize these tables without `Spanned`, taking spans from elsewhere) or refuse it
/// with a message that says to write an inline table.
#[test]
fn regression_dotted_keys_in_rules() {
    let source = "[[upstreams]]\nname = \"a\"\ntargets = [\"http://127.0.0.1:1\"]\n\
                  [[routes]]\nname = \"main\"\nupstream = \"a\"\n\
                  [[rules]]\nname = \"r\"\nwhen.method = \"GET\"\nthen.status = 200\n";
    if let Err(err) = Config::parse(Path::new("fuzz.toml"), source) {
        assert!(
            !err.message.contains("borrowed string"),
            "dotted keys refused with a misleading message: {err}"
        );
    }
}

/// Found by the structure-aware generator: an error located on a table's header line (a
/// required key missing from `[server.tls]`) names the table above it: `key `limits`:
/// missing field `listen``. `Locator::key_path` (src/config/error.rs) looked for the table
/// header above the line, skipping the line itself when it is the header; it now counts it.
#[test]
fn regression_error_on_table_header_names_that_table() {
    let source = "[limits]\nuri = \"8KiB\"\n[server.tls]\ncert = \"a\"\n";
    let err = Config::parse(Path::new("fuzz.toml"), source).expect_err("listen is required");
    assert_eq!(err.line, 3, "{err}");
    assert!(err.key.starts_with("server.tls"), "{err}");
}
