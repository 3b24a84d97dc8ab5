//! The command line: `check` exit codes and output, `--version`, `--help`.
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const VALID: &str = r#"
[server]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:9901"

[[upstreams]]
name = "inventory"
targets = ["http://127.0.0.1:8081"]

[[routes]]
name = "items"
upstream = "inventory"
path_prefix = "/items"
"#;

/// A config file unique to this process and test, removed when dropped.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let path =
            std::env::temp_dir().join(format!("restatus-cli-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config");
        TempConfig(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn restatus(args: &[&str]) -> Output {
    Command::new(support::binary())
        .args(args)
        .output()
        .expect("run restatus")
}

fn check(path: &Path) -> Output {
    restatus(&["check", "--config", path.to_str().expect("utf-8 path")])
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_accepts_a_valid_config_and_summarizes_it() {
    let config = TempConfig::new("valid", VALID);
    let output = check(config.path());
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}{}", stderr(&output));
    // The summary's exact layout may change; what it must mention may not.
    for part in [
        "listeners",
        "127.0.0.1:0",
        "upstreams",
        "inventory",
        "http://127.0.0.1:8081",
        "routes",
        "items",
        "/items",
        "admin: 127.0.0.1:9901",
    ] {
        assert!(out.contains(part), "{part} in {out}");
    }
}

/// `check` says which pages may read restatus's own answers, and which upstreams never reuse
/// a connection after a body: both change what clients see.
#[test]
fn check_summarizes_cors_reuse_after_body_and_max_connections() {
    let text = VALID.replace(
        "targets = [\"http://127.0.0.1:8081\"]",
        "targets = [\"http://127.0.0.1:8081\"]\nreuse_after_body = false\nmax_connections = 32",
    )
        + "\n[cors]\nallow_origins = [\"https://app.example.com\"]\nallow_credentials = true\n";
    assert!(text.contains("reuse_after_body = false"), "{text}");
    let config = TempConfig::new("cors", &text);
    let output = check(config.path());
    let out = stdout(&output);
    assert_eq!(output.status.code(), Some(0), "{out}{}", stderr(&output));
    let wanted =
        "cors: restatus's own answers readable by https://app.example.com, with credentials";
    assert!(out.contains(wanted), "{out}");
    assert!(out.contains(", no reuse after a body)"), "{out}");
    let capped = ", at most 32 connections per target, queue 10s";
    assert!(out.contains(capped), "{out}");
    let plain = stdout(&check(TempConfig::new("plain", VALID).path()));
    assert!(
        !plain.contains("cors:") && !plain.contains("no reuse") && !plain.contains("at most"),
        "{plain}"
    );
}

#[test]
fn check_refuses_an_invalid_config_naming_file_and_line() {
    let text = VALID.replace("upstream = \"inventory\"", "upstream = \"inventroy\"");
    let line = 1 + text.lines().position(|l| l.contains("inventroy")).unwrap();
    let config = TempConfig::new("invalid", &text);
    let output = check(config.path());
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    let place = format!("{}:{line}:", config.path().display());
    assert!(err.contains(&place), "wanted {place} in {err}");
    assert!(err.contains("routes[0].upstream"), "{err}");
    assert!(err.contains("unknown upstream `inventroy`"), "{err}");
}

#[test]
fn check_of_a_missing_file_fails_naming_it() {
    let path =
        std::env::temp_dir().join(format!("restatus-cli-{}-missing.toml", std::process::id()));
    let output = check(&path);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
}

#[test]
fn version_prints_the_crate_version() {
    let output = restatus(&["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output).trim(),
        format!("restatus {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn run_and_check_have_help_with_the_config_option() {
    for command in ["run", "check"] {
        let output = restatus(&[command, "--help"]);
        let out = stdout(&output);
        assert_eq!(output.status.code(), Some(0), "{command}: {out}");
        assert!(
            out.contains(&format!("Usage: restatus {command}")),
            "{command}: {out}"
        );
        assert!(out.contains("--config <CONFIG>"), "{command}: {out}");
        assert!(out.contains("config/restatus.toml"), "{command}: {out}");
    }
}

/// A reader that goes away (`restatus demo | head -1`) ends the command quietly, with status
/// 0 and no panic, as a Unix tool ends on SIGPIPE.
#[test]
fn output_into_a_closed_pipe_ends_quietly() {
    use std::io::BufRead;
    use std::process::Stdio;
    let mut child = Command::new(support::binary())
        .args(["demo", "--tour-only", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run restatus demo");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first line");
    assert!(first.starts_with("sample legacy service"), "{first}");
    drop(out);
    let output = child.wait_with_output().expect("wait");
    let err = stderr(&output);
    assert!(output.status.success(), "{:?}: {err}", output.status);
    assert!(!err.contains("panicked"), "{err}");
}
