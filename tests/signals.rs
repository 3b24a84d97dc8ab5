//! The binary under real signals: SIGHUP reloads, SIGUSR1 reopens the deviation file,
//! SIGTERM drains and exits 0.
mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::*;

struct Running {
    child: Child,
    addr: String,
    /// The admin address, when the config has `[admin]`.
    admin: Option<String>,
    /// The `error` field of each error logged after start.
    errors: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `restatus run` and waits for it to log the address it listens on.
fn start(config: &Path) -> Running {
    start_with(config, false)
}

/// `restatus run --config CONFIG` with `env` set, its stderr piped.
fn spawn_run(config: &Path, env: &[(&str, &str)]) -> Child {
    Command::new(binary())
        .args(["run", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start restatus")
}

/// The child's stderr, a line at a time, read on a thread of its own.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

fn start_with(config: &Path, admin: bool) -> Running {
    let mut child = spawn_run(config, &[]);
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    let (errors_tx, errors) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) {
                let field = |name: &str| event[name].as_str().unwrap_or_default().to_string();
                let message = field("message");
                if message == "listening" || message == "admin listening" {
                    let _ = tx.send((message, field("addr")));
                } else if event["level"] == "ERROR" {
                    let _ = errors_tx.send(field("error"));
                }
            }
        }
    });
    let mut running = Running {
        child,
        addr: String::new(),
        admin: None,
        errors,
    };
    while running.addr.is_empty() || (admin && running.admin.is_none()) {
        let (message, addr) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("restatus logs its listening addresses");
        match message.as_str() {
            "listening" => running.addr = addr,
            _ => running.admin = Some(addr),
        }
    }
    running
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("restatus-signals-{}-{name}", std::process::id()))
}

fn config_text(upstream: std::net::SocketAddr, sink: &Path, rule_status: u16) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
shutdown_grace = "5s"
[log]
format = "json"
level = "info"
access = false
[deviations]
sink = "{}"
[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]
[[routes]]
name = "main"
upstream = "backend"
[[rules]]
name = "get-rule"
when = {{ method = "GET", status = 200 }}
then = {{ status = {rule_status} }}
"#,
        sink.display()
    )
}

/// Polls until `check` holds for a fresh GET of `url`.
async fn poll_status(url: &str, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if get(url).await.status == want {
            return;
        }
        assert!(Instant::now() < deadline, "status never became {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_sigusr1_reopens_sigterm_exits_cleanly() {
    signals_are_served("multi", "").await;
}

/// `workers = 1` runs a current-thread runtime: signals, reload, the sink thread and the
/// shutdown flush must work there too.
#[tokio::test]
async fn one_worker_runtime_serves_signals_too() {
    signals_are_served("single", "workers = 1").await;
}

async fn signals_are_served(tag: &str, server_line: &str) {
    let upstream = fixed_upstream(200, "{}").await;
    let (config, sink) = (
        temp(&format!("{tag}-config.toml")),
        temp(&format!("{tag}-deviations.jsonl")),
    );
    let text = |status| {
        config_text(upstream.addr, &sink, status).replace(
            "shutdown_grace = \"5s\"",
            &format!("shutdown_grace = \"5s\"\n{server_line}"),
        )
    };
    std::fs::write(&config, text(201)).expect("config");
    let mut running = start(&config);
    let url = format!("http://{}/items", running.addr);
    assert_eq!(get(&url).await.status, 201);

    // SIGHUP: the new rule applies without a restart.
    std::fs::write(&config, text(202)).expect("config");
    signal(&running.child, "HUP");
    poll_status(&url, 202).await;

    // SIGUSR1 after logrotate moved the file: a new file is created and written.
    let rotated = temp(&format!("{tag}-deviations.jsonl.1"));
    wait_until(Duration::from_secs(10), "records in the sink", || {
        std::fs::read_to_string(&sink).is_ok_and(|t| t.lines().count() >= 2)
    })
    .await;
    std::fs::rename(&sink, &rotated).expect("rotate");
    signal(&running.child, "USR1");
    wait_until(Duration::from_secs(10), "a new sink file", || {
        // Requests keep coming so the writer has something to write once reopened.
        std::fs::metadata(&sink).is_ok()
    })
    .await;
    assert_eq!(get(&url).await.status, 202);
    wait_until(Duration::from_secs(10), "a record in the new file", || {
        std::fs::read_to_string(&sink).is_ok_and(|t| t.contains("\"status\":202"))
    })
    .await;

    signal(&running.child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = running.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "restatus did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
    for path in [&config, &sink, &rotated] {
        std::fs::remove_file(path).ok();
    }
}

#[tokio::test]
async fn watched_config_file_reloads_on_change() {
    let upstream = fixed_upstream(200, "{}").await;
    let (config, sink) = (temp("watch.toml"), temp("watch.jsonl"));
    let text = config_text(upstream.addr, &sink, 201).replace(
        "shutdown_grace = \"5s\"",
        "shutdown_grace = \"5s\"\nwatch_config = true",
    ) + "[admin]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(&config, &text).expect("config");
    let running = start_with(&config, true);
    let metrics = format!(
        "http://{}/metrics",
        running.admin.as_deref().expect("admin")
    );
    let url = format!("http://{}/items", running.addr);
    assert_eq!(get(&url).await.status, 201);
    std::fs::write(&config, text.replace("status = 201", "status = 202")).expect("config");
    poll_status(&url, 202).await;
    // A broken edit keeps the last good config.
    std::fs::write(&config, "[server\n").expect("config");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !get(&metrics)
        .await
        .text()
        .contains("restatus_config_reloads_total{result=\"failure\"} 1")
    {
        assert!(Instant::now() < deadline, "the broken edit was never tried");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(&url).await.status, 202);
    let logged = running
        .errors
        .recv_timeout(Duration::from_secs(10))
        .expect("the failed reload is logged");
    let place = format!("{}:1:", config.display());
    assert!(logged.starts_with(&place), "names file and line: {logged}");
    drop(running);
    std::fs::remove_file(&config).ok();
    std::fs::remove_file(&sink).ok();
}

/// A RUST_LOG that is no filter (`restatus=loud`) is said, as a misspelt `log.level` is
/// refused, instead of silently logging nothing of `restatus`.
#[test]
fn a_misspelt_rust_log_is_warned_about() {
    let upstream: std::net::SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let config = temp("rust-log.toml");
    let sink = temp("rust-log.jsonl");
    std::fs::write(&config, config_text(upstream, &sink, 201)).expect("write config");
    let mut child = spawn_run(&config, &[("RUST_LOG", "restatus=loud")]);
    let rx = stderr_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("\"listening\"")) {
        let left = deadline.saturating_duration_since(Instant::now());
        seen.push(
            rx.recv_timeout(left)
                .expect("restatus logs that it listens"),
        );
    }
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_file(&config).ok();
    std::fs::remove_file(&sink).ok();
    let warning = seen
        .iter()
        .find(|l| l.contains("RUST_LOG `restatus=loud` is not a log level"))
        .unwrap_or_else(|| panic!("{seen:#?}"));
    assert!(warning.contains("\"WARN\""), "{warning}");
}

/// An upstream that answers 417 to a request with `Expect` and 200 to any other, reading
/// `Content-Length` bodies.
async fn refusing_expect() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = conn.read(&mut chunk).await {
                    seen.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&seen).to_ascii_lowercase();
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let answer = match text[..end].contains("expect: 100-continue") {
                        true => "HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n",
                        false if seen.len() < end + 4 + 3 => continue,
                        false => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                    };
                    seen.clear();
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// JSON log lines name the target in an `address` field: a field called `target` would
/// repeat the key the line's own target (the module) is written under, and a JSON reader
/// keeps only one of the two.
#[tokio::test]
async fn json_log_lines_about_a_target_name_its_address_once() {
    let upstream = refusing_expect().await;
    let config = temp("address-field.toml");
    let sink = temp("address-field.jsonl");
    std::fs::write(&config, config_text(upstream, &sink, 201)).expect("write config");
    let mut child = spawn_run(&config, &[]);
    let rx = stderr_lines(&mut child);
    let deadline = Instant::now() + Duration::from_secs(20);
    let next = |rx: &mpsc::Receiver<String>| {
        let left = deadline.saturating_duration_since(Instant::now());
        rx.recv_timeout(left).expect("a log line")
    };
    let listening = loop {
        let line = next(&rx);
        if line.contains("\"listening\"") {
            break line;
        }
    };
    let event: serde_json::Value = serde_json::from_str(&listening).expect("JSON");
    let proxy = event["addr"].as_str().expect("addr").to_string();
    let url = format!("http://{proxy}/upload");
    let reply = send("PUT", &url, &[("expect", "100-continue")], "abc").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let warning = loop {
        let line = next(&rx);
        if line.contains("answered 417") {
            break line;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_file(&config).ok();
    std::fs::remove_file(&sink).ok();
    assert_eq!(warning.matches("\"target\":").count(), 1, "{warning}");
    let event: serde_json::Value = serde_json::from_str(&warning).expect("JSON");
    assert_eq!(event["address"], upstream.to_string(), "{warning}");
    assert_eq!(event["upstream"], "backend", "{warning}");
}
