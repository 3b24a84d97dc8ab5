//! Unix signals the process reacts to.

use crate::live::Live;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// Reloads the config on SIGHUP (and, with `watch`, when the file's contents change),
/// and reopens the deviation sink on SIGUSR1. The returned future runs until the process
/// exits. Handlers and the file's fingerprint are taken when this is called, not when the
/// future first runs: a signal or an edit that comes right after the listeners announce
/// themselves is not lost (nor does SIGHUP's default action end the process).
pub fn operate(live: Arc<Live>, path: PathBuf, watch: bool) -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::hangup()),
        signal(SignalKind::user_defined1()),
    );
    let seen = fingerprint(&path);
    async move {
        let (Ok(hangup), Ok(user1)) = handlers else {
            tracing::warn!("cannot watch SIGHUP/SIGUSR1: reload by signal is unavailable");
            return;
        };
        serve_signals(live, path, watch, (hangup, user1), seen).await;
    }
}

async fn serve_signals(
    live: Arc<Live>,
    path: PathBuf,
    watch: bool,
    (mut hangup, mut user1): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
    mut seen: Option<u64>,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = hangup.recv() => {
                tracing::info!("SIGHUP received: reloading the configuration");
                seen = fingerprint(&path);
                let _ = live.reload(&path);
            }
            _ = user1.recv() => {
                tracing::info!("SIGUSR1 received: reopening the deviation sink");
                live.reopen_sink();
            }
            _ = tick.tick(), if watch => {
                let now = fingerprint(&path);
                if now != seen {
                    seen = now;
                    tracing::info!(file = %path.display(), "configuration file changed: reloading");
                    let _ = live.reload(&path);
                }
            }
        }
    }
}

/// How often a watched config file is looked at. Polling the contents (not inotify) also
/// sees Kubernetes ConfigMap updates, which swap a symlink rather than write the file.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

fn fingerprint(path: &Path) -> Option<u64> {
    let bytes = std::fs::read(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut hasher);
    Some(hasher.finish())
}
