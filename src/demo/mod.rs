//! `restatus demo`: the sample legacy service, restatus in front of it, and a scripted tour
//! that shows each deviation being put right.

mod service;

use crate::config::{Config, Target};
use crate::deviation::{DeviationLog, Record};
use crate::say::say;
use crate::server::Server;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The demo configuration, built in so the demo runs from any directory.
pub const DEMO_CONFIG: &str = include_str!("../../config/demo.toml");

/// The upstream in the demo config that is pointed at the sample service.
pub const SAMPLE_UPSTREAM: &str = "sample";

pub struct Options {
    /// A config to use instead of the built-in `config/demo.toml`.
    pub config: Option<PathBuf>,
    /// Overrides `server.listen`.
    pub listen: Option<SocketAddr>,
    /// Exit after the tour instead of serving until Ctrl-C.
    pub tour_only: bool,
}

/// Loads the demo config: the given file, else the built-in one.
pub fn load_config(options: &Options) -> Result<Config, String> {
    let mut config = match &options.config {
        Some(path) => Config::load(path),
        None => Config::parse(Path::new("config/demo.toml (built in)"), DEMO_CONFIG),
    }
    .map_err(|err| err.to_string())?;
    if let Some(listen) = options.listen {
        config.server.listen = vec![listen];
        // A chosen address says where the demo may listen: the admin page goes there too,
        // on a port the system picks (printed with the tour).
        if let Some(admin) = &mut config.admin {
            admin.listen = SocketAddr::new(listen.ip(), 0);
        }
    }
    if !config.upstreams.iter().any(|u| u.name == SAMPLE_UPSTREAM) {
        return Err(format!(
            "the demo config needs an upstream named `{SAMPLE_UPSTREAM}` for the sample service"
        ));
    }
    Ok(config)
}

/// Runs the demo; returns when the tour is over (`tour_only`) or on Ctrl-C/SIGTERM.
pub async fn run(mut config: Config, tour_only: bool) -> Result<(), String> {
    let sample = service::start()
        .await
        .map_err(|err| format!("cannot start the sample service: {err}"))?;
    point_at(&mut config, sample)?;
    let gate = Arc::new(AtomicBool::new(false));
    let writer = GatedStdout { open: gate.clone() };
    let log = DeviationLog::with_writer(Box::new(writer))
        .map_err(|err| format!("cannot start the deviation log: {err}"))?;
    let log = Arc::new(log);
    let server = Server::bind_with(&config, log.clone())
        .await
        .map_err(|err| format!("{err} (choose another address with --listen)"))?;
    let addr = server.local_addrs()[0];
    let admin = server.admin_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve(async {
        let _ = stopped.await;
    }));
    say(&format!("sample legacy service on http://{sample}\n"));
    say(&format!("restatus on http://{addr}, in front of it\n"));
    if let Some(admin) = admin {
        say(&format!(
            "admin page on http://{admin}/ (metrics on http://{admin}/metrics)\n"
        ));
    }
    say("\n");
    let rows = tour(addr).await?;
    let log_flushed = log.clone();
    let _ = tokio::task::spawn_blocking(move || log_flushed.flush(Duration::from_secs(5))).await;
    say(&table(&rows, &log.recent()));
    if !tour_only {
        // Handlers go in before the invitation says Ctrl-C stops, so a quick Ctrl-C is not
        // left to the default action (killing the process without a clean shutdown).
        let stopped = stop_signals()?;
        gate.store(true, Ordering::Release);
        say(&invitation(addr));
        stopped.await;
    }
    let _ = stop.send(());
    let _ = serving.await;
    Ok(())
}

/// Watches SIGINT and SIGTERM from now on; the future completes on the first of them.
fn stop_signals() -> Result<impl std::future::Future<Output = ()>, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let watch = |kind| signal(kind).map_err(|err| format!("cannot watch signals: {err}"));
    let (mut interrupt, mut terminate) = (
        watch(SignalKind::interrupt())?,
        watch(SignalKind::terminate())?,
    );
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Replaces the sample upstream's targets with the sample service's real address.
fn point_at(config: &mut Config, sample: SocketAddr) -> Result<(), String> {
    let authority: Authority = sample
        .to_string()
        .parse()
        .map_err(|err| format!("sample address: {err}"))?;
    let host_header = HeaderValue::from_str(authority.as_str())
        .map_err(|err| format!("sample address: {err}"))?;
    for upstream in config.upstreams.iter_mut() {
        if upstream.name == SAMPLE_UPSTREAM {
            let mut patched = (**upstream).clone();
            patched.targets = vec![Target {
                scheme: Scheme::HTTP,
                authority: authority.clone(),
                host_header: host_header.clone(),
            }];
            *upstream = Arc::new(patched);
        }
    }
    Ok(())
}

/// Stdout for deviation records, closed during the tour so the table is printed alone.
struct GatedStdout {
    open: Arc<AtomicBool>,
}

impl Write for GatedStdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.open.load(Ordering::Acquire) {
            // The records are the demo's output: with no one left to read them, it is over.
            if let Err(err) = std::io::stdout().write_all(buf) {
                crate::say::quit_on(&err);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().flush()
    }
}

/// One scripted request of the tour.
struct Step {
    method: Method,
    path: &'static str,
    token: bool,
    body: &'static str,
}

const fn step(method: Method, path: &'static str, body: &'static str) -> Step {
    Step {
        method,
        path,
        token: false,
        body,
    }
}

fn steps() -> Vec<Step> {
    vec![
        step(Method::POST, "/items", r#"{"name":"widget"}"#),
        step(Method::POST, "/items", r#"{"name":"widget"}"#),
        step(Method::GET, "/items/1", ""),
        step(Method::GET, "/items/42", ""),
        step(Method::PUT, "/items/42", r#"{"name":"gadget"}"#),
        step(Method::PUT, "/items/1", r#"{"title":"no name"}"#),
        step(Method::DELETE, "/items/1", ""),
        step(Method::GET, "/items/1", ""),
        step(Method::GET, "/admin/stats", ""),
        Step {
            token: true,
            ..step(Method::GET, "/admin/stats", "")
        },
        step(Method::POST, "/orders", r#"{"item":2}"#),
        step(Method::GET, "/reports/daily", ""),
        step(Method::GET, "/catalog", ""),
    ]
}

/// A tour request and what the client got.
struct Row {
    request: String,
    request_id: String,
    status: u16,
}

async fn tour(addr: SocketAddr) -> Result<Vec<Row>, String> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut rows = Vec::new();
    for (i, step) in steps().into_iter().enumerate() {
        let request_id = format!("tour-{}", i + 1);
        let mut request = Request::builder()
            .method(step.method.clone())
            .uri(format!("http://{addr}{}", step.path))
            .header("x-request-id", &request_id)
            .header("content-type", "application/json");
        if step.token {
            request = request.header("x-auth-token", "demo");
        }
        let request = request
            .body(Full::new(Bytes::from_static(step.body.as_bytes())))
            .map_err(|err| format!("tour request: {err}"))?;
        let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
            .await
            .map_err(|_| "the tour got no answer within 10s".to_string())?
            .map_err(|err| format!("tour request failed: {err}"))?;
        let status = response.status().as_u16();
        let _ = response.into_body().collect().await;
        let token = if step.token { " (with token)" } else { "" };
        rows.push(Row {
            request: format!("{} {}{token}", step.method, step.path),
            request_id,
            status,
        });
    }
    Ok(rows)
}

/// The tour as a table: request | service said | restatus answered | rule.
fn table(rows: &[Row], records: &[Record]) -> String {
    let mut lines = vec![[
        "request".to_string(),
        "service said".to_string(),
        "restatus answered".to_string(),
        "rule".to_string(),
    ]];
    for row in rows {
        let record = records.iter().find(|r| r.request_id == row.request_id);
        let said = record.map_or(row.status, |r| r.upstream_status);
        let rule = match record {
            Some(r) => r.rule.as_deref().unwrap_or("(left, recorded)").to_string(),
            None => "-".to_string(),
        };
        lines.push([
            row.request.clone(),
            said.to_string(),
            row.status.to_string(),
            rule,
        ]);
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| lines.iter().map(|l| l[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn invitation(addr: SocketAddr) -> String {
    format!(
        "\nrestatus keeps serving on http://{addr}. Try your own requests, for example:\n\
         \x20 curl -i -X POST http://{addr}/items -H 'content-type: application/json' -d '{{\"name\":\"gadget\"}}'\n\
         \x20 curl -i http://{addr}/items/999\n\
         Each deviation record is printed below as one JSON line. Ctrl-C stops.\n\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_config_is_valid_and_has_the_sample_upstream() {
        let options = Options {
            config: None,
            listen: None,
            tour_only: true,
        };
        let config = load_config(&options).expect("built-in demo config");
        assert!(config.upstreams.iter().any(|u| u.name == SAMPLE_UPSTREAM));
    }
}
