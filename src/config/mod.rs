//! Configuration: the TOML file is parsed into a raw mirror, then compiled once into this
//! validated runtime form. Nothing on the request path parses strings from the config again.

mod error;
mod keys;
pub mod raw;
mod tls;
mod units;

pub use error::{ConfigError, Locator};
pub use raw::{ExpectMode, HostMode, LogFormat, Mode, ReuseAfterBody};
pub use tls::{key_is_exposed, ServerTls, UpstreamTls};
pub use units::{parse_duration, parse_size, shown};

pub use crate::cors::Cors;
use crate::http1::MAX_TARGET;
use crate::rules::check::{compile_check, Check};
use crate::rules::profile::Profile;
use crate::rules::{compile_rule, Origin, Rule, RuleSet};
use http::uri::{Authority, Scheme};
use http::HeaderName;
use http::{HeaderValue, Uri};
use raw::{RawConfig, RawRoute, RawUpstream};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// The config path used when none is given on the command line.
pub const DEFAULT_PATH: &str = "config/restatus.toml";

/// Idle keep-alive connections kept per upstream target (NGINX's `keepalive` plays this part).
pub const DEFAULT_IDLE_CONNECTIONS: usize = 256;

/// How long an idle pooled upstream connection is kept by default: under the 5 s keep-alive
/// timeout of Apache httpd, Node.js and uvicorn, so that a request is not sent on a
/// connection such an upstream is closing at that moment (a POST on it would fail: it is
/// not retried).
pub const DEFAULT_POOL_IDLE: Duration = Duration::from_secs(4);
/// How long a request waits for a connection under `max_connections`, by default.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: Server,
    pub log: Log,
    pub limits: Limits,
    pub upstreams: Vec<Arc<UpstreamConfig>>,
    pub routes: Vec<RouteConfig>,
    pub deviations: Deviations,
    /// The user's `[[rules]]`, in file order.
    pub rules: Vec<Arc<Rule>>,
    /// The user's `[[checks]]`, in file order.
    pub checks: Vec<Arc<Check>>,
    /// The admin listener; `None` when the `[admin]` table is absent.
    pub admin: Option<Admin>,
    pub cors: Cors,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Deviations {
    pub mode: Mode,
    pub sink: SinkTarget,
    /// Set on rewritten responses to the upstream's status; `None` when disabled.
    pub original_status_header: Option<HeaderName>,
}

/// Where deviation records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkTarget {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: Vec<SocketAddr>,
    pub workers: Option<usize>,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    /// Longest silence allowed between two reads of a request body.
    pub body_timeout: Duration,
    /// Longest a write to a client may wait while a response is in progress.
    pub send_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_header_bytes: usize,
    /// Reload when the config file changes on disk.
    pub watch_config: bool,
    /// HTTPS listeners; `None` without `[server.tls]`.
    pub tls: Option<ServerTls>,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
    pub access: bool,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub request_body: u64,
    /// Most memory all request bodies read whole before they go upstream take together.
    pub held_bodies: u64,
    /// Most of a response body buffered for body conditions.
    pub inspect_body: usize,
    /// Longest request target (path and query) accepted.
    pub uri: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<Target>,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub host: HostMode,
    pub expect: ExpectMode,
    /// How long a held request body waits for the upstream's `100` before it is sent anyway.
    pub expect_timeout: Duration,
    /// Most idle keep-alive connections kept per target; more are closed once answered.
    pub idle_connections: usize,
    /// How long an idle pooled connection is kept; below the upstream's own keep-alive
    /// timeout, so that a request is not sent on a connection the upstream is closing.
    pub idle_timeout: Duration,
    /// Who may reuse a connection that carried a request body answered with a 2xx.
    pub reuse_after_body: ReuseAfterBody,
    /// `true` for a service known to read chunked request bodies, which then stream; with
    /// `false` (the default, as many legacy servers take a chunked body as none) every body
    /// of unknown length is read whole and sent with a `Content-Length`.
    pub chunked_requests: bool,
    /// Most connections open to each target at once; further requests wait their turn.
    pub max_connections: Option<usize>,
    /// How long a request waits for a connection under `max_connections`.
    pub queue_timeout: Duration,
    /// Set when a target is `https://`.
    pub tls: Option<UpstreamTls>,
}

/// One upstream address, pre-split so the request path only copies parts.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The value sent as `Host` when the upstream uses `host = "target"`.
    pub host_header: HeaderValue,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    /// Lower-cased host without port; `None` matches any host.
    pub host: Option<String>,
    /// Starts with `/`; a trailing `/` is removed except for the root prefix.
    pub path_prefix: String,
    pub strip_prefix: bool,
    pub profile: Profile,
    pub mode: Mode,
    /// Own rules, then global rules, then the profile's, compiled.
    pub rules: Arc<RuleSet>,
    /// Own checks, then global checks, in file order.
    pub checks: Arc<[Arc<Check>]>,
    /// JSON request bodies must parse before they are forwarded.
    pub validate_json: bool,
}

impl Config {
    /// Reads and compiles the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let source = std::fs::read_to_string(path).map_err(|err| ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key: String::new(),
            message: format!("cannot read config file: {err}"),
        })?;
        Config::parse(path, &source)
    }

    /// Compiles `source`, naming `path` in errors.
    pub fn parse(path: &Path, source: &str) -> Result<Config, ConfigError> {
        let locator = Locator { file: path, source };
        let raw: RawConfig = toml::from_str(source).map_err(|err| locator.from_toml(&err))?;
        compile(raw, &locator)
    }

    pub fn upstream(&self, route: &RouteConfig) -> &UpstreamConfig {
        &self.upstreams[route.upstream]
    }
}

fn compile(raw: RawConfig, at: &Locator) -> Result<Config, ConfigError> {
    let server = compile_server(raw.server, at)?;
    let mut taken = server.listen.clone();
    taken.extend(server.tls.iter().flat_map(|tls| tls.listen.iter().copied()));
    let admin = compile_admin(raw.admin.as_ref(), &taken, at)?;
    let log = compile_log(raw.log, at)?;
    let limits = compile_limits(&raw.limits, at)?;
    let deviations = compile_deviations(&raw.deviations, at)?;
    let cors = compile_cors(&raw.cors, at)?;
    let upstreams = compile_upstreams(raw.upstreams, at)?;
    let rules = compile_rules(&raw.rules, &raw.routes, at)?;
    let checks = compile_checks(&raw.checks, &raw.routes, at)?;
    let routes = compile_routes(
        raw.routes,
        &upstreams,
        (&rules, &checks),
        deviations.mode,
        at,
    )?;
    Ok(Config {
        file: at.file.to_path_buf(),
        server,
        log,
        limits,
        upstreams,
        routes,
        deviations,
        rules,
        checks,
        admin,
        cors,
    })
}

/// `[cors]`: each origin as a browser sends it, or `"*"`; credentials only for origins named.
fn compile_cors(raw: &raw::RawCors, at: &Locator) -> Result<Cors, ConfigError> {
    let (any, named): (Vec<_>, Vec<_>) =
        raw.allow_origins.iter().partition(|o| *o.get_ref() == "*");
    let mut cors = Cors {
        any: !any.is_empty(),
        ..Cors::default()
    };
    if let Some(origin) = named.first().filter(|_| cors.any) {
        return Err(at.at(
            origin.span(),
            "\"*\" already allows every page: list it alone, or name the pages without it",
        ));
    }
    for origin in named {
        let parsed =
            crate::cors::parse_origin(origin.get_ref()).map_err(|why| at.at(origin.span(), why))?;
        cors.origins.push(parsed);
    }
    if let Some(credentials) = &raw.allow_credentials {
        cors.credentials = *credentials.get_ref();
        if cors.credentials && cors.any {
            return Err(at.at(
                credentials.span(),
                "allow_credentials = true needs the pages named in allow_origins: with \"*\" any site could read answers to its visitors' requests",
            ));
        }
    }
    Ok(cors)
}

/// `[admin]` listens on loopback port 9901 unless told otherwise.
fn compile_admin(
    raw: Option<&Spanned<raw::RawAdmin>>,
    server: &[SocketAddr],
    at: &Locator,
) -> Result<Option<Admin>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let span = raw
        .get_ref()
        .listen
        .as_ref()
        .map_or(raw.span(), |t| t.span());
    let raw = raw.get_ref();
    let listen = match &raw.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9901)),
        Some(text) => text.get_ref().parse().map_err(|_| {
            at.at(
                text.span(),
                format!(
                    "`{}` is not an address with a port, like \"127.0.0.1:9901\"",
                    text.get_ref()
                ),
            )
        })?,
    };
    if let Some(taken) = server.iter().find(|addr| same_socket(addr, &listen)) {
        return Err(at.at_key(
            span,
            "admin.listen".to_string(),
            format!(
                "the admin listener {listen} would share the port of the proxy's listener {taken}"
            ),
        ));
    }
    Ok(Some(Admin { listen }))
}

/// Whether binding both addresses would collide: same port, and the same IP, or one of them
/// the unspecified address of its family, or `[::]`, which on Linux also takes IPv4.
fn same_socket(a: &SocketAddr, b: &SocketAddr) -> bool {
    let covers = |x: &SocketAddr, y: &SocketAddr| {
        x.ip().is_unspecified() && (x.is_ipv6() || x.is_ipv4() == y.is_ipv4())
    };
    // `[::ffff:127.0.0.1]` is 127.0.0.1 to a dual-stack socket.
    let same_ip = a.ip().to_canonical() == b.ip().to_canonical();
    a.port() == b.port() && a.port() != 0 && (same_ip || covers(a, b) || covers(b, a))
}

/// More worker threads than this only cost memory and start-up time.
const MAX_WORKERS: usize = 1024;

fn compile_server(raw: raw::RawServer, at: &Locator) -> Result<Server, ConfigError> {
    let listen = match raw.listen {
        None => vec![SocketAddr::from(([127, 0, 0, 1], 8080))],
        Some(list) => parse_listen(&list, at)?,
    };
    if let Some(workers) = &raw.workers {
        if !(1..=MAX_WORKERS).contains(workers.get_ref()) {
            return Err(at.at(
                workers.span(),
                format!("workers must be between 1 and {MAX_WORKERS} (one per core is the usual choice)"),
            ));
        }
    }
    let max_header_bytes = match raw.max_header_bytes {
        None => 32 << 10,
        Some(size) => {
            let bytes = size.get_ref().0;
            if !(1024..=1 << 20).contains(&bytes) {
                return Err(at.at(
                    size.span(),
                    "max_header_bytes must be between 1KiB and 1MiB",
                ));
            }
            bytes as usize
        }
    };
    Ok(Server {
        workers: raw.workers.map(|w| w.into_inner()),
        header_timeout: raw.header_timeout.map_or(Duration::from_secs(10), |d| d.0),
        idle_timeout: raw.idle_timeout.map_or(Duration::from_secs(60), |d| d.0),
        body_timeout: raw.body_timeout.map_or(Duration::from_secs(30), |d| d.0),
        send_timeout: raw.send_timeout.map_or(Duration::from_secs(60), |d| d.0),
        shutdown_grace: raw.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
        max_header_bytes,
        watch_config: raw.watch_config,
        tls: compile_listeners_tls(raw.tls.as_ref(), &listen, at)?,
        listen,
    })
}

/// `[server.tls]`, whose listeners may not share a port with the plain ones.
fn compile_listeners_tls(
    raw: Option<&raw::RawServerTls>,
    plain: &[SocketAddr],
    at: &Locator,
) -> Result<Option<tls::ServerTls>, ConfigError> {
    let compiled = tls::compile_server_tls(raw, at)?;
    if let (Some(raw), Some(compiled)) = (raw, &compiled) {
        for addr in &compiled.listen {
            if let Some(other) = plain.iter().find(|p| same_socket(p, addr)) {
                return Err(at.at(
                    raw.listen.span(),
                    format!("{addr} would share the port of server.listen {other}"),
                ));
            }
        }
    }
    Ok(compiled)
}

pub(crate) fn parse_listen(
    list: &Spanned<raw::OneOrMany<String>>,
    at: &Locator,
) -> Result<Vec<SocketAddr>, ConfigError> {
    let addrs = list.get_ref().0.iter().map(|text| {
        text.parse::<SocketAddr>().map_err(|_| {
            at.at(
                list.span(),
                format!("`{text}` is not an address with a port, like \"127.0.0.1:8080\" or \"[::1]:8080\""),
            )
        })
    });
    let addrs = addrs.collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(at.at(list.span(), "listen needs at least one address"));
    }
    for (i, addr) in addrs.iter().enumerate() {
        if let Some(other) = addrs[..i].iter().find(|o| same_socket(o, addr)) {
            return Err(at.at(
                list.span(),
                format!("{addr} and {other} would share a port"),
            ));
        }
    }
    Ok(addrs)
}

fn compile_log(raw: raw::RawLog, at: &Locator) -> Result<Log, ConfigError> {
    let level = match raw.level {
        None => "info".to_string(),
        Some(level) => {
            let text = level.get_ref().trim().to_ascii_lowercase();
            if !is_log_filter(&text) {
                return Err(at.at(
                    level.span(),
                    format!("`{text}` is not a log level or filter (use off, error, warn, info, debug or trace, or target=level directives)"),
                ));
            }
            text
        }
    };
    Ok(Log {
        format: raw.format.unwrap_or(LogFormat::Text),
        level,
        access: raw.access.unwrap_or(true),
    })
}

const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Whether `text` is a level, or `target=level` directives with a level each. `EnvFilter`
/// alone takes a misspelt level ("verbose") as a target's name and logs nothing at all.
pub fn is_log_filter(text: &str) -> bool {
    let level_of = |directive: &str| match directive.rsplit_once('=') {
        Some((_, level)) => level.trim().to_string(),
        None => directive.trim().to_string(),
    };
    !text.is_empty()
        && text
            .split(',')
            .all(|d| LOG_LEVELS.contains(&level_of(d).as_str()))
        && tracing_subscriber::EnvFilter::try_new(text).is_ok()
}

fn compile_upstreams(
    raws: Vec<RawUpstream>,
    at: &Locator,
) -> Result<Vec<Arc<UpstreamConfig>>, ConfigError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        check_name(&raw.name, "upstream", &mut seen, at)?;
        if raw.targets.get_ref().is_empty() {
            return Err(at.at(raw.targets.span(), "an upstream needs at least one target"));
        }
        let targets = raw
            .targets
            .get_ref()
            .iter()
            .map(|t| parse_target(t, at))
            .collect::<Result<Vec<_>, _>>()?;
        let any_https = targets.iter().any(|t| t.scheme == Scheme::HTTPS);
        let tls = tls::compile_upstream_tls(&raw, any_https, at)?;
        out.push(Arc::new(UpstreamConfig {
            name: raw.name.into_inner(),
            targets,
            connect_timeout: raw.connect_timeout.map_or(Duration::from_secs(2), |d| d.0),
            response_timeout: raw
                .response_timeout
                .map_or(Duration::from_secs(30), |d| d.0),
            host: raw.host.unwrap_or_default(),
            expect: raw.expect.unwrap_or_default(),
            expect_timeout: raw.expect_timeout.map_or(Duration::from_secs(1), |d| d.0),
            idle_connections: raw.idle_connections.unwrap_or(DEFAULT_IDLE_CONNECTIONS),
            idle_timeout: raw.idle_timeout.map_or(DEFAULT_POOL_IDLE, |d| d.0),
            reuse_after_body: raw.reuse_after_body.unwrap_or_default(),
            chunked_requests: raw.chunked_requests.unwrap_or(false),
            max_connections: max_connections(raw.max_connections.as_ref(), at)?,
            queue_timeout: raw.queue_timeout.map_or(DEFAULT_QUEUE_WAIT, |d| d.0),
            tls,
        }));
    }
    Ok(out)
}

/// `max_connections`: at least one, or no request could ever be sent.
fn max_connections(
    raw: Option<&Spanned<usize>>,
    at: &Locator,
) -> Result<Option<usize>, ConfigError> {
    match raw {
        Some(max) if *max.get_ref() == 0 => Err(at.at(
            max.span(),
            "max_connections must be at least 1 (leave it out for no cap)",
        )),
        Some(max) => Ok(Some(*max.get_ref())),
        None => Ok(None),
    }
}

fn check_name(
    name: &Spanned<String>,
    kind: &str,
    seen: &mut HashSet<String>,
    at: &Locator,
) -> Result<(), ConfigError> {
    let text = name.get_ref();
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(at.at(
            name.span(),
            format!("{kind} name `{text}` must be non-empty and use only letters, digits, '-', '_' or '.'"),
        ));
    }
    if !seen.insert(text.clone()) {
        return Err(at.at(name.span(), format!("duplicate {kind} name `{text}`")));
    }
    Ok(())
}

fn parse_target(text: &Spanned<String>, at: &Locator) -> Result<Target, ConfigError> {
    let bad = |why: &str| {
        at.at(
            text.span(),
            format!(
                "target `{}` {why} (write it like \"http://10.0.0.5:8081\")",
                text.get_ref()
            ),
        )
    };
    let uri: Uri = text.get_ref().parse().map_err(|_| bad("is not a URL"))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| bad("has no scheme"))?;
    if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
        return Err(bad("must use http:// or https://"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| bad("has no host"))?;
    // The user part would go out as the Host field, credentials and all.
    if authority.as_str().contains('@') {
        return Err(bad("must not hold a user or password"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad("must not have a path or query"));
    }
    // `port()` is `None` for a port that does not fit in 16 bits, so the text is looked at.
    let after_host = authority.as_str().rsplit(']').next().unwrap_or_default();
    if after_host.contains(':') && !matches!(authority.port_u16(), Some(1..)) {
        return Err(bad("has a port outside 1-65535"));
    }
    let host_header =
        HeaderValue::from_str(authority.as_str()).map_err(|_| bad("has a bad host"))?;
    Ok(Target {
        scheme,
        authority,
        host_header,
    })
}

fn compile_limits(raw: &raw::RawLimits, at: &Locator) -> Result<Limits, ConfigError> {
    let inspect_body = match &raw.inspect_body {
        None => 64 << 10,
        Some(size) if size.get_ref().0 > 64 << 20 => {
            return Err(at.at(size.span(), "inspect_body must be at most 64MiB"));
        }
        Some(size) => size.get_ref().0 as usize,
    };
    let uri = match &raw.uri {
        None => 8 << 10,
        Some(size) if !(256..=MAX_TARGET as u64).contains(&size.get_ref().0) => {
            return Err(at.at(
                size.span(),
                "uri must be between 256B and 65534B (the longest target a URI holds)",
            ));
        }
        Some(size) => size.get_ref().0 as usize,
    };
    let request_body = raw.request_body.map_or(16 << 20, |s| s.0);
    let held_bodies = match &raw.held_bodies {
        None => request_body.max(256 << 20),
        // One body of the largest size must fit, or it could never go.
        Some(size) if size.get_ref().0 < request_body => {
            return Err(at.at(
                size.span(),
                "held_bodies must be at least request_body, so that one body of that size fits",
            ));
        }
        Some(size) => size.get_ref().0,
    };
    Ok(Limits {
        request_body,
        held_bodies,
        inspect_body,
        uri,
    })
}

fn compile_deviations(raw: &raw::RawDeviations, at: &Locator) -> Result<Deviations, ConfigError> {
    let sink = raw.sink.as_ref().map(|s| (s.get_ref().as_str(), s.span()));
    // `STDOUT` means the stream too; a file by that name is written `./STDOUT`.
    let sink = sink.map(|(name, span)| match name.to_ascii_lowercase().as_str() {
        "stdout" => ("stdout", span),
        "stderr" => ("stderr", span),
        _ => (name, span),
    });
    let sink = match sink {
        None | Some(("stdout", _)) => SinkTarget::Stdout,
        Some(("stderr", _)) => SinkTarget::Stderr,
        Some(("", span)) => {
            return Err(at.at(span, "sink must be \"stdout\", \"stderr\" or a file path"))
        }
        Some((path, span)) => {
            let path = resolve(at.file, path);
            check_sink_path(&path).map_err(|why| at.at(span, why))?;
            SinkTarget::File(path)
        }
    };
    let original_status_header = match &raw.original_status_header {
        None => Some(HeaderName::from_static("x-restatus-original-status")),
        Some(name) if name.get_ref().is_empty() => None,
        Some(name) => {
            let header = HeaderName::from_bytes(name.get_ref().as_bytes()).map_err(|_| {
                at.at(
                    name.span(),
                    format!("`{}` is not a header name", name.get_ref()),
                )
            })?;
            let taken = crate::rules::is_reserved_header(header.as_str())
                || matches!(
                    header.as_str(),
                    "content-type" | "content-encoding" | "host"
                );
            if taken {
                return Err(at.at(
                    name.span(),
                    format!("`{header}` has a meaning of its own; use a header of yours, like \"x-original-status\""),
                ));
            }
            Some(header)
        }
    };
    Ok(Deviations {
        mode: raw.mode.unwrap_or_default(),
        sink,
        original_status_header,
    })
}

/// What would stop the sink from opening at startup, found before it is needed: a folder
/// that does not exist, or a path that is itself a folder. The file is created on start.
fn check_sink_path(path: &Path) -> Result<(), String> {
    if path.is_dir() {
        return Err(format!(
            "sink {} is a directory, not a file",
            path.display()
        ));
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(format!(
            "the sink's directory {} does not exist",
            dir.display()
        ));
    }
    Ok(())
}

/// A relative path in the config is relative to the config file's folder.
pub(crate) fn resolve(config_file: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        return path.to_path_buf();
    }
    match config_file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

fn compile_rules(
    raws: &[crate::rules::raw::RawRule],
    routes: &[RawRoute],
    at: &Locator,
) -> Result<Vec<Arc<Rule>>, ConfigError> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        check_name(&raw.name, "rule", &mut names, at)?;
        check_route_refs(raw.routes.as_ref(), "rule", routes, at)?;
        let origin = if raw.routes.is_some() {
            Origin::Route
        } else {
            Origin::Global
        };
        out.push(Arc::new(compile_rule(raw, origin, at)?));
    }
    Ok(out)
}

fn compile_checks(
    raws: &[crate::rules::raw::RawCheck],
    routes: &[RawRoute],
    at: &Locator,
) -> Result<Vec<Arc<Check>>, ConfigError> {
    let mut names = HashSet::new();
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        check_name(&raw.name, "check", &mut names, at)?;
        check_route_refs(raw.routes.as_ref(), "check", routes, at)?;
        out.push(Arc::new(compile_check(raw, at)?));
    }
    Ok(out)
}

/// Every name in a `routes = [...]` list must be a route of this file.
fn check_route_refs(
    list: Option<&Spanned<Vec<Spanned<String>>>>,
    kind: &str,
    routes: &[RawRoute],
    at: &Locator,
) -> Result<(), ConfigError> {
    for name in list.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
        if !routes.iter().any(|r| r.name.get_ref() == name.get_ref()) {
            return Err(at.at(
                name.span(),
                format!("{kind} refers to unknown route `{}`", name.get_ref()),
            ));
        }
    }
    Ok(())
}

/// A route's checks: its own in file order, then the global ones.
fn route_checks(route: &str, checks: &[Arc<Check>]) -> Arc<[Arc<Check>]> {
    let own = checks
        .iter()
        .filter(|c| c.routes.iter().any(|n| n == route));
    let global = checks.iter().filter(|c| c.routes.is_empty());
    own.chain(global).cloned().collect()
}

/// A route's evaluation order: its own rules in file order, global rules, then its profile.
fn route_rules(route: &str, rules: &[Arc<Rule>], profile: &[Arc<Rule>]) -> RuleSet {
    let own = rules.iter().filter(|r| r.routes.iter().any(|n| n == route));
    let global = rules.iter().filter(|r| r.routes.is_empty());
    RuleSet::new(own.chain(global).chain(profile.iter()).cloned().collect())
}

fn compile_routes(
    raws: Vec<RawRoute>,
    upstreams: &[Arc<UpstreamConfig>],
    (rules, checks): (&[Arc<Rule>], &[Arc<Check>]),
    default_mode: Mode,
    at: &Locator,
) -> Result<Vec<RouteConfig>, ConfigError> {
    let documented = Profile::Documented.rules()?;
    if raws.is_empty() {
        return Err(at.whole_file("no routes: add at least one [[routes]] table"));
    }
    let mut names = HashSet::new();
    let mut places = HashSet::new();
    let mut out = Vec::with_capacity(raws.len());
    for raw in raws {
        check_name(&raw.name, "route", &mut names, at)?;
        let upstream = upstreams
            .iter()
            .position(|u| u.name == *raw.upstream.get_ref())
            .ok_or_else(|| {
                at.at(
                    raw.upstream.span(),
                    format!("unknown upstream `{}`", raw.upstream.get_ref()),
                )
            })?;
        let host = raw
            .host
            .as_ref()
            .map(|h| parse_route_host(h, at))
            .transpose()?;
        let path_prefix = match &raw.path_prefix {
            None => "/".to_string(),
            Some(prefix) => parse_prefix(prefix, at)?,
        };
        if !places.insert((host.clone(), path_prefix.clone())) {
            let span = raw
                .path_prefix
                .as_ref()
                .map_or(raw.name.span(), |p| p.span());
            return Err(at.at(
                span,
                format!(
                    "route `{}` has the same host and path_prefix as an earlier route",
                    raw.name.get_ref()
                ),
            ));
        }
        let profile = match &raw.profile {
            None => Profile::Documented,
            Some(text) => Profile::parse(text.get_ref()).ok_or_else(|| {
                at.at(
                    text.span(),
                    format!(
                        "unknown profile `{}` (use \"documented\" or \"none\")",
                        text.get_ref()
                    ),
                )
            })?,
        };
        let profile_rules = if profile == Profile::Documented {
            &documented[..]
        } else {
            &[]
        };
        let rules = Arc::new(route_rules(raw.name.get_ref(), rules, profile_rules));
        let checks = route_checks(raw.name.get_ref(), checks);
        out.push(RouteConfig {
            name: raw.name.into_inner(),
            upstream,
            host,
            path_prefix,
            strip_prefix: raw.strip_prefix,
            profile,
            mode: raw.mode.unwrap_or(default_mode),
            rules,
            checks,
            validate_json: raw.validate_json,
        });
    }
    Ok(out)
}

fn parse_route_host(host: &Spanned<String>, at: &Locator) -> Result<String, ConfigError> {
    let text = host.get_ref().trim().to_ascii_lowercase();
    let valid = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '[' | ']' | ':'));
    if !valid {
        return Err(at.at(host.span(), format!("`{text}` is not a host name")));
    }
    if text.matches(':').count() > 1 && !text.starts_with('[') {
        return Err(at.at(
            host.span(),
            format!("host `{text}`: write an IPv6 address in brackets, like \"[::1]\""),
        ));
    }
    // A port is ignored in matching, so a host written with one would never match.
    let name = crate::route::host_without_port(&text);
    if name != text {
        return Err(at.at(
            host.span(),
            format!(
                "host `{text}` has a port; write `{name}` (routes match the host name, any port)"
            ),
        ));
    }
    Ok(text.trim_end_matches('.').to_string())
}

fn parse_prefix(prefix: &Spanned<String>, at: &Locator) -> Result<String, ConfigError> {
    let text = prefix.get_ref();
    if !text.starts_with('/') || text.contains(['?', '#', ' ']) {
        return Err(at.at(
            prefix.span(),
            format!(
                "path_prefix `{text}` must start with '/' and hold no query, fragment or space"
            ),
        ));
    }
    // Routes see paths without `;` parameters, and ambiguous paths never reach them.
    if text.contains(';') || crate::admit::path_is_ambiguous(text) {
        return Err(at.at(
            prefix.span(),
            format!("path_prefix `{text}` can never match: requests are routed without `;` parameters, and paths with `//`, dot-segments or needless escapes are refused"),
        ));
    }
    if text.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(at.at(
            prefix.span(),
            "path_prefix must not contain `.` or `..` segments",
        ));
    }
    let trimmed = text.trim_end_matches('/');
    Ok(if trimmed.is_empty() {
        "/".to_string()
    } else {
        trimmed.to_string()
    })
}

/// A short human summary of a compiled config, as printed by `restatus check`.
pub fn summary(config: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let listen: Vec<String> = config.server.listen.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "listeners: {}", listen.join(", "));
    if let Some(tls) = &config.server.tls {
        let listen: Vec<String> = tls.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(out, "https listeners: {}", listen.join(", "));
    }
    if let Some(admin) = &config.admin {
        let _ = writeln!(out, "admin: {}", admin.listen);
    }
    if config.cors.is_on() {
        let mut pages = config.cors.origins.clone();
        if config.cors.any {
            pages.push("any page".to_string());
        }
        let credentials = if config.cors.credentials {
            ", with credentials"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "cors: restatus's own answers readable by {}{credentials}",
            pages.join(", ")
        );
    }
    let _ = writeln!(out, "upstreams:");
    for upstream in &config.upstreams {
        let targets: Vec<String> = upstream
            .targets
            .iter()
            .map(|t| format!("{}://{}", t.scheme, t.authority))
            .collect();
        let _ = writeln!(
            out,
            "  {}: {} (connect {:?}, response {:?}{}{}{})",
            upstream.name,
            targets.join(", "),
            upstream.connect_timeout,
            upstream.response_timeout,
            match upstream.max_connections {
                Some(max) => format!(
                    ", at most {max} connection{} per target, queue {}",
                    if max == 1 { "" } else { "s" },
                    units::shown(upstream.queue_timeout)
                ),
                None => String::new(),
            },
            match upstream.reuse_after_body {
                ReuseAfterBody::SameClient => "",
                ReuseAfterBody::Any => ", reuse after a body by any client",
                ReuseAfterBody::Never => ", no reuse after a body",
            },
            match upstream.chunked_requests {
                true => ", long request bodies of unknown length streamed chunked",
                false => "",
            }
        );
    }
    let _ = writeln!(out, "routes:");
    for route in &config.routes {
        let _ = writeln!(
            out,
            "  {}: host {} prefix {}{} -> {}",
            route.name,
            route.host.as_deref().unwrap_or("*"),
            route.path_prefix,
            if route.strip_prefix {
                " (stripped)"
            } else {
                ""
            },
            config.upstream(route).name
        );
    }
    out
}
