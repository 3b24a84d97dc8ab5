//! The configuration in force and its replacement on reload. Each request takes the current
//! [`Proxy`] once, so a reload never changes the rules under a request already in flight.

use crate::config::{Config, ConfigError};
use crate::deviation::DeviationLog;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use arc_swap::ArcSwap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct Live {
    proxy: ArcSwap<Proxy>,
    /// The config in force.
    config: Mutex<Config>,
    /// The config the process started with, which settings read once at start still follow:
    /// what a reload cannot change is told against it, not against the latest reload.
    started: Config,
    pub deviations: Arc<DeviationLog>,
    pub metrics: Arc<Metrics>,
    draining: AtomicBool,
}

impl Live {
    pub fn new(config: Config, deviations: Arc<DeviationLog>, metrics: Arc<Metrics>) -> Live {
        deviations.observe(metrics.clone());
        let proxy = Proxy::new(&config, deviations.clone(), metrics.clone(), None);
        Live {
            proxy: ArcSwap::from_pointee(proxy),
            started: config.clone(),
            config: Mutex::new(config),
            deviations,
            metrics,
            draining: AtomicBool::new(false),
        }
    }

    /// The proxy for a new request.
    pub fn proxy(&self) -> Arc<Proxy> {
        self.proxy.load_full()
    }

    /// Reads, validates and applies the file at `path`. On error the old config stays in
    /// force. Returns the changes that need a restart to take effect.
    pub fn reload(&self, path: &Path) -> Result<Vec<String>, ConfigError> {
        match Config::load(path) {
            Ok(config) => Ok(self.apply(config)),
            Err(err) => {
                self.metrics.reload(false);
                tracing::error!(error = %err, "reload failed; the previous configuration stays in force");
                Err(err)
            }
        }
    }

    /// Swaps in an already validated config.
    pub fn apply(&self, config: Config) -> Vec<String> {
        let previous = self.proxy.load_full();
        let proxy = Proxy::new(
            &config,
            self.deviations.clone(),
            self.metrics.clone(),
            Some(&previous),
        );
        let mut current = match self.config.lock() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        let restart = needs_restart(&self.started, &config);
        if current.deviations.sink != config.deviations.sink {
            self.deviations.reopen(config.deviations.sink.clone());
        }
        self.proxy.store(Arc::new(proxy));
        *current = config;
        self.metrics.reload(true);
        tracing::info!(file = %current.file.display(), "configuration reloaded");
        for change in &restart {
            tracing::warn!("{change} changed: takes effect after a restart");
        }
        restart
    }

    /// Reopens the deviation sink (SIGUSR1, after logrotate moved the file).
    pub fn reopen_sink(&self) {
        let target = match self.config.lock() {
            Ok(config) => config.deviations.sink.clone(),
            Err(poisoned) => poisoned.into_inner().deviations.sink.clone(),
        };
        self.deviations.reopen(target);
    }

    /// The file the config in force came from.
    pub fn file(&self) -> std::path::PathBuf {
        match self.config.lock() {
            Ok(config) => config.file.clone(),
            Err(poisoned) => poisoned.into_inner().file.clone(),
        }
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Ready to take traffic: listeners bound, config loaded, not draining.
    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Acquire)
    }
}

/// Settings read once at start; a reload reports them instead of applying them.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push("server.listen".to_string());
    }
    if old.server.workers != new.server.workers {
        out.push("server.workers".to_string());
    }
    if old.server.watch_config != new.server.watch_config {
        out.push("server.watch_config".to_string());
    }
    let tls_listen = |c: &Config| c.server.tls.as_ref().map(|t| t.listen.clone());
    if tls_listen(old) != tls_listen(new) {
        out.push("server.tls.listen".to_string());
    }
    if old.server.max_header_bytes != new.server.max_header_bytes {
        out.push("server.max_header_bytes".to_string());
    }
    if old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen) {
        out.push("admin.listen".to_string());
    }
    if old.log.format != new.log.format || old.log.level != new.log.level {
        out.push("log.format/log.level".to_string());
    }
    out
}
