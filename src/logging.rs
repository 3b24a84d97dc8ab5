//! Process-wide log setup: text or JSON lines through tracing, level from the config or RUST_LOG.

use crate::config::{is_log_filter, Log, LogFormat};
use std::io::IsTerminal;
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `log.level`. Lines are
/// written to stderr by a background thread, so a request never waits on the terminal or
/// the journal; keep the returned guard alive until exit, it flushes what is queued.
pub fn init(log: &Log) -> WorkerGuard {
    // A RUST_LOG that is not levels and directives is refused, as `log.level` would be, and
    // said once logging works.
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let refused = env
        .as_ref()
        .filter(|v| !is_log_filter(&v.to_ascii_lowercase()))
        .cloned();
    let level = match (&env, &refused) {
        (Some(value), None) => value.to_ascii_lowercase(),
        _ => log.level.clone(),
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .buffered_lines_limit(LINES_QUEUED)
        .lossy(true)
        .finish(std::io::stderr());
    // Colour codes only for a terminal: in a file or the journal they are noise.
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(writer);
    let result = match log.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if let Err(err) = result {
        eprintln!("logging already initialised: {err}");
    }
    if let Some(value) = refused {
        tracing::warn!("RUST_LOG `{value}` is not a log level or filter (use off, error, warn, info, debug or trace, or target=level directives); using log.level `{level}`");
    }
    guard
}

/// Log lines waiting for the writer; beyond this, lines are dropped rather than slowing
/// requests.
const LINES_QUEUED: usize = 128 * 1024;
