//! The `restatus` command line.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use restatus::config::{Config, DEFAULT_PATH};
use restatus::report;
use restatus::say::say;
use restatus::server::Server;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod alloc;

/// mimalloc: cheaper than glibc malloc for the many small, short-lived allocations of each
/// request (measured in docs/performance.md). Built without its transparent-huge-page
/// advice: with it, idle connections spread over huge pages and 10,000 of them cost
/// 120 MiB more resident memory, for no measurable gain per request.
#[global_allocator]
static ALLOCATOR: alloc::Mimalloc = alloc::Mimalloc;

#[derive(Parser)]
#[command(
    name = "restatus",
    version,
    about = "A reverse proxy that normalizes legacy REST status codes and logs every deviation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve until SIGTERM or SIGINT.
    Run {
        /// The config file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Validate a config file, print its listeners, upstreams, routes and rules; exit 1 if it
    /// is invalid.
    Check {
        /// The config file.
        #[arg(short, long, default_value = DEFAULT_PATH)]
        config: PathBuf,
    },
    /// Show which rule fires for a made-up exchange, the final status and the record written.
    Explain(ExplainArgs),
    /// Summarize deviation logs: records per endpoint, rule and status pair, and what changed.
    Report(ReportArgs),
    /// Run a sample legacy service with restatus in front of it, and take a short tour.
    Demo {
        /// Use this config instead of the built-in config/demo.toml.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Listen on this address instead of the config's (for example 127.0.0.1:0).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Exit after the tour instead of serving until Ctrl-C.
        #[arg(long)]
        tour_only: bool,
    },
}

#[derive(clap::Args)]
struct ExplainArgs {
    /// The config file.
    #[arg(short, long, default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// The route's name; may be left out when the config has one route.
    #[arg(long)]
    route: Option<String>,
    /// The request method.
    #[arg(long, default_value = "GET")]
    method: String,
    /// The request path as the client sends it.
    #[arg(long, default_value = "/")]
    path: String,
    /// The status the service answers.
    #[arg(long)]
    status: u16,
    /// A response header, `name: value` (repeatable).
    #[arg(long = "header", value_name = "K:V")]
    headers: Vec<String>,
    /// A request header, `name: value` (repeatable).
    #[arg(long = "request-header", value_name = "K:V")]
    request_headers: Vec<String>,
    /// The response body.
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// A file holding the response body.
    #[arg(long)]
    body_file: Option<PathBuf>,
}

/// `--top N`: clap's own range error reads "0 is not in 1..18446744073709551615".
fn at_least_one(text: &str) -> Result<u64, String> {
    match text.parse::<u64>() {
        Ok(0) => Err("N must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("`{text}` is not a whole number")),
    }
}

#[derive(clap::Args)]
struct ReportArgs {
    /// Deviation logs (JSON lines, plain or gzip); standard input when none is named or for `-`.
    files: Vec<PathBuf>,
    /// table, markdown, json or html.
    #[arg(long, default_value = "table")]
    format: report::Format,
    /// Only records at or after this RFC 3339 time (2026-11-24T10:00:00Z, or a date).
    #[arg(long, value_parser = report::time::parse)]
    since: Option<i64>,
    /// Only records before this RFC 3339 time.
    #[arg(long, value_parser = report::time::parse)]
    until: Option<i64>,
    /// Only this route.
    #[arg(long)]
    route: Option<String>,
    /// Show only the N endpoints with the most records in each route.
    #[arg(long, value_name = "N", value_parser = at_least_one)]
    top: Option<u64>,
    /// Compare with older logs (repeatable): which endpoints appeared, got worse, improved
    /// or disappeared.
    #[arg(long, value_name = "OLD", conflicts_with = "split")]
    compare: Vec<PathBuf>,
    /// Compare the records before this RFC 3339 time with those at or after it.
    #[arg(long, value_name = "T", value_parser = report::time::parse)]
    split: Option<i64>,
    /// Write the report to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    output: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Explain(args) => explain(args),
        Command::Report(args) => report(args),
        Command::Demo {
            config,
            listen,
            tour_only,
        } => demo(restatus::demo::Options {
            config,
            listen,
            tour_only,
        }),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn check(path: &Path) -> ExitCode {
    match Config::load(path) {
        Ok(config) => {
            say(&restatus::check::report(&config));
            say(&format!("{}: configuration is valid\n", path.display()));
            ExitCode::SUCCESS
        }
        Err(err) => fail(err),
    }
}

fn explain(args: ExplainArgs) -> ExitCode {
    let config = match Config::load(&args.config) {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    let query = match explain_query(&config, args) {
        Ok(query) => query,
        Err(err) => return fail(err),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the runtime: {err}")),
    };
    match runtime.block_on(restatus::explain::explain(&config, &query)) {
        Ok(text) => {
            say(&text);
            ExitCode::SUCCESS
        }
        Err(err) => fail(err),
    }
}

fn explain_query(config: &Config, args: ExplainArgs) -> Result<restatus::explain::Query, String> {
    let route = match args.route {
        Some(route) => route,
        None if config.routes.len() == 1 => config.routes[0].name.clone(),
        None => return Err("the config has several routes: name one with --route".into()),
    };
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("--method {}: not an HTTP method", args.method))?;
    let body = match (args.body, args.body_file) {
        (Some(text), _) => Some(Bytes::from(text)),
        (None, Some(path)) => Some(Bytes::from(
            std::fs::read(&path).map_err(|err| format!("{}: {err}", path.display()))?,
        )),
        (None, None) => None,
    };
    Ok(restatus::explain::Query {
        route,
        method,
        path: args.path,
        status: args.status,
        request_headers: header_map(&args.request_headers)?,
        response_headers: header_map(&args.headers)?,
        body,
    })
}

/// Parses `name: value` pairs given on the command line.
fn header_map(pairs: &[String]) -> Result<HeaderMap, String> {
    let mut map = HeaderMap::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once(':')
            .ok_or_else(|| format!("header `{pair}` should be `name: value`"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("header `{name}` has an invalid value"))?;
        map.append(name, value);
    }
    Ok(map)
}

fn report(args: ReportArgs) -> ExitCode {
    let options = report::Options {
        inputs: args.files,
        filter: report::Filter {
            since: args.since,
            until: args.until,
            route: args.route,
        },
        top: args.top.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        compare: args.compare,
        split: args.split,
    };
    let summary = match report::run(&options, std::io::stdin().lock()) {
        Ok(summary) => summary,
        Err(err @ report::Error::Usage(_)) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
        Err(err) => return fail(err),
    };
    if summary.stats.malformed > 0 {
        eprintln!(
            "warning: {} malformed lines skipped",
            summary.stats.malformed
        );
    }
    let written = match &args.output {
        Some(path) => std::fs::File::create(path)
            .and_then(|file| write_report(&summary, args.format, file))
            .map_err(|err| format!("{}: {err}", path.display())),
        None => write_report(&summary, args.format, std::io::stdout().lock())
            .map_err(|err| restatus::say::quit_on(&err)),
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(format!("cannot write the report: {err}")),
    }
}

fn write_report(
    summary: &report::Report,
    format: report::Format,
    out: impl std::io::Write,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(out);
    summary.render(format, &mut out)?;
    std::io::Write::flush(&mut out)
}

fn demo(options: restatus::demo::Options) -> ExitCode {
    let config = match restatus::demo::load_config(&options) {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    let _logs = restatus::logging::init(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the runtime: {err}")),
    };
    match runtime.block_on(restatus::demo::run(config, options.tour_only)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(err),
    }
}

/// One worker thread is a current-thread runtime: the same I/O driver and timers without the
/// work-stealing scheduler's cross-thread bookkeeping on every wake-up.
fn runtime_builder(workers: Option<usize>) -> tokio::runtime::Builder {
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    }
}

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    let _logs = restatus::logging::init(&config.log);
    let mut runtime = runtime_builder(config.server.workers);
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the runtime: {err}")),
    };
    runtime.block_on(async {
        let server = match Server::bind(&config).await {
            Ok(server) => server,
            Err(err) => {
                tracing::error!(error = %err, "cannot start");
                return ExitCode::FAILURE;
            }
        };
        let operations = tokio::spawn(restatus::signals::operate(
            server.live(),
            path.to_path_buf(),
            config.server.watch_config,
        ));
        server.serve(restatus::signals::shutdown()).await;
        operations.abort();
        ExitCode::SUCCESS
    })
}
