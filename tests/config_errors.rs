//! Config errors: every kind names the file, the line and the key, and a valid file parses.
use restatus::config::{Config, ConfigError};
use std::path::Path;
use std::time::Duration;

/// A valid config; each error case below changes one thing in it.
const VALID: &str = r#"
[server]
listen = "127.0.0.1:0"
idle_timeout = "250ms"
max_header_bytes = "64KiB"

[limits]
request_body = "16MiB"

[[upstreams]]
name = "backend"
targets = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]
response_timeout = "1.5s"

[[routes]]
name = "main"
upstream = "backend"
path_prefix = "/"

[[routes]]
name = "inventory"
upstream = "backend"
host = "API.example.com"
path_prefix = "/inventory/"
strip_prefix = true
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("x.toml"), text)
}

/// Parses `text`, which must be invalid, and returns the error.
fn error(text: &str) -> ConfigError {
    match parse(text) {
        Ok(_) => panic!("config should be invalid:\n{text}"),
        Err(err) => err,
    }
}

/// The 1-based number of the last line of `text` holding `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let (index, _) = text
        .lines()
        .enumerate()
        .filter(|(_, line)| line.contains(needle))
        .last()
        .unwrap_or_else(|| panic!("`{needle}` not in the config"));
    index + 1
}

/// Asserts that `err` points at the line holding `needle`, names `key`, and says `message`,
/// both in its fields and in the text a user reads.
fn assert_error(err: &ConfigError, text: &str, needle: &str, key: &str, message: &str) {
    let line = line_of(text, needle);
    let shown = err.to_string();
    assert_eq!(err.line, line, "line of {shown}");
    assert!(err.column > 0, "column of {shown}");
    assert_eq!(err.key, key, "key of {shown}");
    assert!(err.message.contains(message), "message of {shown}");
    assert!(
        shown.starts_with(&format!("x.toml:{line}:")),
        "file and line in {shown}"
    );
    assert!(shown.contains(&format!("key `{key}`")), "key in {shown}");
    assert!(shown.contains(message), "message in {shown}");
}

#[test]
fn valid_config_parses_with_units_and_defaults() {
    let config = parse(VALID).expect("valid config");
    assert_eq!(config.server.listen, vec!["127.0.0.1:0".parse().unwrap()]);
    assert_eq!(config.server.idle_timeout, Duration::from_millis(250));
    assert_eq!(config.server.max_header_bytes, 64 << 10);
    assert_eq!(config.limits.request_body, 16 << 20);
    let upstream = &config.upstreams[0];
    assert_eq!(upstream.targets.len(), 2);
    assert_eq!(upstream.response_timeout, Duration::from_millis(1500));
    // Unset keys take their documented defaults, not zero.
    assert_eq!(upstream.connect_timeout, Duration::from_secs(2));
    let inventory = &config.routes[1];
    assert_eq!(inventory.host.as_deref(), Some("api.example.com"));
    assert_eq!(inventory.path_prefix, "/inventory");
    assert!(inventory.strip_prefix);
    assert_eq!(config.upstream(inventory).name, "backend");
}

#[test]
fn unknown_key_is_named() {
    let text = VALID.replace("response_timeout", "respons_timeout");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "respons_timeout",
        "upstreams[0].respons_timeout",
        "unknown field `respons_timeout`",
    );
}

#[test]
fn bad_duration_is_named() {
    for bad in ["30", "30 seconds", "fast"] {
        let text = VALID.replace(r#""1.5s""#, &format!("{bad:?}"));
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "response_timeout",
            "upstreams[0].response_timeout",
            &format!("duration `{bad}`"),
        );
    }
}

#[test]
fn bad_size_is_named() {
    for bad in ["16MeB", "lots"] {
        let text = VALID.replace(r#""16MiB""#, &format!("{bad:?}"));
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "request_body",
            "limits.request_body",
            &format!("size `{bad}`"),
        );
    }
}

#[test]
fn unknown_upstream_in_a_route_is_named() {
    let text = VALID.replace(
        "name = \"inventory\"\nupstream = \"backend\"",
        "name = \"inventory\"\nupstream = \"backnd\"",
    );
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "backnd",
        "routes[1].upstream",
        "unknown upstream `backnd`",
    );
}

#[test]
fn duplicate_upstream_names_are_refused() {
    let text =
        format!("{VALID}\n[[upstreams]]\nname = \"backend\"\ntargets = [\"http://127.0.0.1:9\"]\n");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "name = \"backend\"",
        "upstreams[1].name",
        "duplicate upstream name `backend`",
    );
}

#[test]
fn duplicate_route_names_are_refused() {
    let text = format!(
        "{VALID}\n[[routes]]\nname = \"main\"\nupstream = \"backend\"\npath_prefix = \"/other\"\n"
    );
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "name = \"main\"",
        "routes[2].name",
        "duplicate route name `main`",
    );
}

#[test]
fn unparsable_target_url_is_named() {
    for bad in ["not a url", "ftp://127.0.0.1:21", "127.0.0.1:8081"] {
        let text = VALID.replace("http://127.0.0.1:8082", bad);
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "targets",
            "upstreams[0].targets",
            &format!("target `{bad}`"),
        );
    }
}

#[test]
fn two_routes_with_the_same_host_and_prefix_are_refused() {
    // The trailing slash is normalized away, so "/inventory" and "/inventory/" are the same
    // place; the host is compared without case.
    let text = format!(
        "{VALID}\n[[routes]]\nname = \"again\"\nupstream = \"backend\"\nhost = \"api.EXAMPLE.com\"\npath_prefix = \"/inventory\"\n"
    );
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "path_prefix = \"/inventory\"",
        "routes[2].path_prefix",
        "route `again` has the same host and path_prefix as an earlier route",
    );
}

#[test]
fn same_prefix_on_another_host_is_allowed() {
    let text = format!(
        "{VALID}\n[[routes]]\nname = \"other-host\"\nupstream = \"backend\"\nhost = \"other.example.com\"\npath_prefix = \"/inventory\"\n"
    );
    let config = parse(&text).expect("valid config");
    assert_eq!(config.routes.len(), 3);
}

#[test]
fn no_routes_is_refused() {
    let routes_start = VALID.find("[[routes]]").expect("routes in VALID");
    let text = &VALID[..routes_start];
    let err = error(text);
    // Nothing in the file is at fault, so the error names the file without a line.
    assert_eq!(err.line, 0);
    assert!(err.message.contains("no routes"), "{err}");
    assert!(err.to_string().starts_with("x.toml: "), "{err}");
}

#[test]
fn a_misspelt_log_level_is_refused() {
    for bad in ["verbose", "warn,restatus=loud", "restatus"] {
        let text = format!("{VALID}\n[log]\nlevel = {bad:?}\n");
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "level =",
            "log.level",
            "is not a log level or filter",
        );
    }
    for good in ["warn", "Debug", "warn,restatus=debug", "off"] {
        let text = format!("{VALID}\n[log]\nlevel = {good:?}\n");
        parse(&text).unwrap_or_else(|err| panic!("{good}: {err}"));
    }
}

#[test]
fn a_zero_timeout_is_refused() {
    let text = VALID.replace(r#""1.5s""#, r#""0ms""#);
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "response_timeout",
        "upstreams[0].response_timeout",
        "must be more than zero",
    );
    let text = VALID.replace(r#"idle_timeout = "250ms""#, r#"idle_timeout = "0s""#);
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "idle_timeout",
        "server.idle_timeout",
        "must be more than zero",
    );
}

#[test]
fn an_admin_listener_on_the_proxy_port_is_refused() {
    let base = VALID.replace(r#"listen = "127.0.0.1:0""#, r#"listen = "127.0.0.1:8080""#);
    for admin in [
        "127.0.0.1:8080",
        "0.0.0.0:8080",
        "[::]:8080",
        "[::ffff:127.0.0.1]:8080",
    ] {
        let text = format!("{base}\n[admin]\nlisten = \"{admin}\"\n");
        let err = error(&text);
        assert_error(
            &err,
            &text,
            admin,
            "admin.listen",
            "would share the port of the proxy's listener 127.0.0.1:8080",
        );
    }
    let text = format!("{base}\n[admin]\nlisten = \"127.0.0.1:8081\"\n");
    parse(&text).expect("another port is fine");
    let text = format!("{base}\n[admin]\nlisten = \"[::1]:8080\"\n");
    parse(&text).expect("another family's loopback is another socket");
    let text = VALID.replace(r#"listen = "127.0.0.1:0""#, r#"listen = "127.0.0.1:9901""#);
    let text = format!("{text}\n[admin]\n");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "[admin]",
        "admin.listen",
        "127.0.0.1:9901 would share",
    );
}

#[test]
fn settings_that_would_silently_misbehave_are_refused() {
    let text = VALID.replace(
        r#"host = "API.example.com""#,
        r#"host = "api.example.com:8080""#,
    );
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "host =",
        "routes[1].host",
        "has a port; write `api.example.com`",
    );

    let text = VALID.replace(r#"host = "API.example.com""#, r#"host = "::1""#);
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "host =",
        "routes[1].host",
        "in brackets, like \"[::1]\"",
    );
    for prefix in ["/inventory;v=2/", "/inventory//x", "/%69nventory"] {
        let text = VALID.replace(
            r#"path_prefix = "/inventory/""#,
            &format!("path_prefix = \"{prefix}\""),
        );
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "nventory",
            "routes[1].path_prefix",
            "can never match",
        );
    }
    for name in [
        "content-length",
        "x-request-id",
        "x-restatus-source",
        "content-type",
    ] {
        let text = format!("{VALID}\n[deviations]\noriginal_status_header = \"{name}\"\n");
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "original_status_header",
            "deviations.original_status_header",
            "has a meaning of its own",
        );
    }

    let text = VALID.replace(
        r#"max_header_bytes = "64KiB""#,
        "max_header_bytes = \"64KiB\"\nworkers = 100000",
    );
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "workers",
        "server.workers",
        "between 1 and 1024",
    );

    let rule = "[[rules]]\nname = \"spoof\"\nwhen = { status = 200 }\n\
                then = { status = 201, headers = { set = { \"x-restatus-source\" = \"upstream\" } } }\n";
    let text = format!("{VALID}\n{rule}");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "x-restatus-source",
        "rules[0].then.headers.set.x-restatus-source",
        "restatus's own header",
    );
}

#[test]
fn an_empty_body_json_in_list_is_refused() {
    let rule = "[[rules]]\nname = \"never\"\n\
                when = { status = 200, body_json = { pointer = \"/code\", in = [] } }\n\
                then = { status = 404 }\n";
    let text = format!("{VALID}\n{rule}");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "in = []",
        "rules[0].when.body_json.in",
        "`in` is empty",
    );
}

#[test]
fn type_errors_are_told_in_the_config_s_words() {
    // A number in quotes is told to lose them.
    for (value, message) in [
        ("\"two\"", "expected a whole number"),
        ("\"2\"", "(write the number without quotes)"),
    ] {
        let text = VALID.replace(
            r#"idle_timeout = "250ms""#,
            &format!("idle_timeout = \"250ms\"\nworkers = {value}"),
        );
        let err = error(&text);
        assert_error(&err, &text, "workers", "server.workers", message);
    }
    let text = format!("{VALID}\n[rules]\nname = \"x\"\n");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "[rules]",
        "rules",
        "write each entry as [[rules]]",
    );
}

#[test]
fn a_target_with_credentials_is_refused() {
    let text = VALID.replace("http://127.0.0.1:8082", "http://user:pw@127.0.0.1:8082");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "targets",
        "upstreams[0].targets",
        "must not hold a user or password",
    );
}

#[test]
fn stdout_and_stderr_sinks_are_streams_in_any_case() {
    let text = format!("{VALID}\n[deviations]\nsink = \"STDOUT\"\n");
    let config = parse(&text).expect("valid");
    assert!(matches!(
        config.deviations.sink,
        restatus::config::SinkTarget::Stdout
    ));
}

#[test]
fn one_listen_address_twice_is_refused() {
    let text = VALID.replace(
        r#"listen = "127.0.0.1:0""#,
        r#"listen = ["0.0.0.0:8080", "127.0.0.1:8080"]"#,
    );
    let err = error(&text);
    assert_error(&err, &text, "listen", "server.listen", "would share a port");
}

#[test]
fn a_sink_that_cannot_be_created_is_refused() {
    let dir = std::env::temp_dir();
    let missing = dir.join(format!("restatus-missing-{}", std::process::id()));
    for (sink, says) in [
        (missing.join("d.jsonl"), "directory"),
        (dir.clone(), "is a directory, not a file"),
    ] {
        let line = format!("[deviations]\nsink = {:?}\n", sink.display().to_string());
        let text = format!("{VALID}\n{line}");
        let err = error(&text);
        assert_error(&err, &text, "sink", "deviations.sink", says);
    }
    let fine = format!(
        "{VALID}\n[deviations]\nsink = {:?}\n",
        dir.join("d.jsonl").display().to_string()
    );
    parse(&fine).expect("a new file in an existing folder is fine");
}

#[test]
fn a_target_port_out_of_range_is_refused() {
    for bad in ["99999", "0"] {
        let text = VALID.replace("127.0.0.1:8082", &format!("127.0.0.1:{bad}"));
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "targets",
            "upstreams[0].targets",
            "has a port outside 1-65535",
        );
    }
    let text = VALID.replace("http://127.0.0.1:8082", "http://127.0.0.1");
    let config = parse(&text).expect("a target without a port takes the scheme's");
    assert_eq!(
        config.upstreams[0].targets[1].authority.as_str(),
        "127.0.0.1"
    );
}

#[test]
fn an_error_in_a_multi_line_array_names_the_array() {
    let text = VALID.replace(
        r#"targets = ["http://127.0.0.1:8081", "http://127.0.0.1:8082"]"#,
        "targets = [\n  \"http://127.0.0.1:8081\",\n  \"http://127.0.0.1:8082/path\",\n]",
    );
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "8082/path",
        "upstreams[0].targets",
        "must not have a path",
    );
}

/// The valid config with `line` added to its `[limits]`.
fn with_limit(line: &str) -> String {
    VALID.replace(
        "request_body = \"16MiB\"",
        &format!("request_body = \"16MiB\"\n{line}"),
    )
}

/// A request target longer than 65534 bytes cannot be held as a URI, so a `limits.uri` above
/// it would promise what the proxy cannot do.
#[test]
fn a_uri_limit_beyond_what_a_uri_holds_is_refused() {
    let with = |uri: &str| with_limit(&format!("uri = \"{uri}\""));
    let text = with("100KiB");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "uri = ",
        "limits.uri",
        "between 256B and 65534B",
    );
    assert!(parse(&with("65534B")).is_ok());
}

/// `limits.held_bodies` must hold one body of `request_body`'s size; by default it is 256 MiB,
/// or `request_body` when that is larger.
#[test]
fn held_bodies_holds_at_least_one_largest_body() {
    let text = with_limit("held_bodies = \"8MiB\"");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "held_bodies = ",
        "limits.held_bodies",
        "at least request_body",
    );
    let config = parse(&with_limit("held_bodies = \"16MiB\"")).expect("valid");
    assert_eq!(config.limits.held_bodies, 16 << 20);
    assert_eq!(parse(VALID).expect("valid").limits.held_bodies, 256 << 20);
    let large = VALID.replace("request_body = \"16MiB\"", "request_body = \"1GiB\"");
    assert_eq!(parse(&large).expect("valid").limits.held_bodies, 1 << 30);
}

#[test]
fn cors_origins_must_be_origins_and_credentials_need_named_ones() {
    // (the [cors] table, the line the error points at, its key, what it says)
    let cases = [
        (
            "allow_origins = [\"https://app.example.com/\"]",
            "allow_origins",
            "cors.allow_origins",
            "an origin has no path; write \"https://app.example.com\"",
        ),
        (
            "allow_origins = [\"*\"]\nallow_credentials = true",
            "allow_credentials",
            "cors.allow_credentials",
            "needs the pages named in allow_origins",
        ),
        (
            "allow_origin = [\"*\"]",
            "allow_origin =",
            "cors.allow_origin",
            "expected `allow_origins`",
        ),
        (
            "allow_origins = [\"https://App.example.com\", \"*\"]",
            "allow_origins",
            "cors.allow_origins",
            "list it alone",
        ),
    ];
    for (table, needle, key, message) in cases {
        let text = format!("{VALID}\n[cors]\n{table}\n");
        assert_error(&error(&text), &text, needle, key, message);
    }

    let text = format!(
        "{VALID}\n[cors]\nallow_origins = [\"https://App.example.com\"]\nallow_credentials = true\n"
    );
    let cors = parse(&text).expect("valid").cors;
    assert_eq!(cors.origins, ["https://app.example.com"]);
    assert!(!cors.any && cors.credentials);
}

#[test]
fn reuse_after_body_takes_true_false_or_same_client() {
    use restatus::config::ReuseAfterBody;
    let with = |value: &str| {
        VALID.replace(
            "response_timeout = \"1.5s\"",
            &format!("response_timeout = \"1.5s\"\nreuse_after_body = {value}"),
        )
    };
    let cases = [
        ("true", ReuseAfterBody::Any),
        ("false", ReuseAfterBody::Never),
        ("\"same_client\"", ReuseAfterBody::SameClient),
        ("\"Same_Client\"", ReuseAfterBody::SameClient),
        ("\"false\"", ReuseAfterBody::Never),
    ];
    for (value, want) in cases {
        let config = parse(&with(value)).expect("valid config");
        assert_eq!(config.upstreams[0].reuse_after_body, want, "{value}");
    }
    let config = parse(VALID).expect("valid config");
    assert_eq!(
        config.upstreams[0].reuse_after_body,
        ReuseAfterBody::SameClient
    );
    for bad in ["\"sometimes\"", "1"] {
        let text = with(bad);
        let err = error(&text);
        assert_error(
            &err,
            &text,
            "reuse_after_body",
            "upstreams[0].reuse_after_body",
            "expected true, false or \"same_client\"",
        );
    }
}

#[test]
fn max_connections_is_at_least_one_and_queue_timeout_a_duration() {
    let with = |value: &str| {
        VALID.replace(
            "response_timeout = \"1.5s\"",
            &format!("response_timeout = \"1.5s\"\n{value}"),
        )
    };
    let config = parse(VALID).expect("valid config");
    assert_eq!(config.upstreams[0].max_connections, None);
    assert_eq!(
        config.upstreams[0].queue_timeout,
        restatus::config::DEFAULT_QUEUE_WAIT
    );
    let config = parse(&with("max_connections = 8\nqueue_timeout = \"0s\"")).expect("valid");
    assert_eq!(config.upstreams[0].max_connections, Some(8));
    assert_eq!(config.upstreams[0].queue_timeout, Duration::ZERO);
    let cases = [
        ("max_connections = 0", "max_connections", "at least 1"),
        ("max_connections = -2", "max_connections", "invalid value"),
        ("queue_timeout = \"soon\"", "queue_timeout", "soon"),
    ];
    for (line, key, message) in cases {
        let text = with(line);
        let err = error(&text);
        let key_path = format!("upstreams[0].{key}");
        assert_error(&err, &text, line, &key_path, message);
    }
}

/// A number where a string goes (`listen = 8080`) is told to be quoted.
#[test]
fn an_unquoted_number_for_a_string_says_to_quote_it() {
    let text = VALID.replace(r#"listen = "127.0.0.1:0""#, "listen = 8080");
    let err = error(&text);
    assert_error(
        &err,
        &text,
        "listen = 8080",
        "server.listen",
        "expected a string (write the value in quotes)",
    );
}
