//! The `restatus` command line.

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use restatus::config::{Config, DEFAULT_PATH};
use restatus::server::Server;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => run(&config),
        Command::Check { config } => check(&config),
        Command::Explain(args) => explain(args),
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
            print!("{}", restatus::check::report(&config));
            println!("{}: configuration is valid", path.display());
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
            print!("{text}");
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

fn run(path: &Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(err) => return fail(err),
    };
    let _logs = restatus::logging::init(&config.log);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.server.workers {
        runtime.worker_threads(workers);
    }
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
