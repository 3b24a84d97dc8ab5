//! The compiled route table: host, then the longest matching path prefix.

use crate::config::{Config, Mode, UpstreamConfig};
use crate::metrics::{Metrics, RouteMetrics};
use crate::rules::check::Check;
use crate::rules::profile::Profile;
use crate::rules::RuleSet;
use crate::upstream::Upstream;
use http::uri::PathAndQuery;
use http::HeaderValue;
use std::sync::Arc;

pub struct Route {
    /// Shared with the deviation records that name it.
    pub name: Arc<str>,
    pub upstream: Arc<Upstream>,
    /// `/` or a prefix without trailing slash.
    pub prefix: String,
    pub strip_prefix: bool,
    /// `X-Forwarded-Prefix` for a route that strips its prefix: where the upstream's paths
    /// are, as the client sees them.
    pub forwarded_prefix: Option<HeaderValue>,
    pub rules: Arc<RuleSet>,
    /// Request checks, decided from the head before anything is forwarded.
    pub checks: Arc<[Arc<Check>]>,
    /// JSON request bodies must parse before they are forwarded.
    pub validate_json: bool,
    pub mode: Mode,
    /// Whether a contract profile applies (unmatched undocumented codes are recorded).
    pub contract: bool,
    pub metrics: RouteMetrics,
}

pub struct RouteTable {
    routes: Vec<Route>,
    /// Per host (lower case, no port): route indexes, longest prefix first.
    by_host: Vec<(String, Vec<usize>)>,
    /// Routes without a host, longest prefix first.
    any_host: Vec<usize>,
}

impl RouteTable {
    pub fn build(config: &Config, upstreams: &[Arc<Upstream>], metrics: &Metrics) -> Self {
        let routes: Vec<Route> = config
            .routes
            .iter()
            .map(|r| Route {
                name: r.name.as_str().into(),
                upstream: upstreams[r.upstream].clone(),
                prefix: r.path_prefix.clone(),
                strip_prefix: r.strip_prefix,
                forwarded_prefix: forwarded_prefix(r.strip_prefix, &r.path_prefix),
                rules: r.rules.clone(),
                checks: r.checks.clone(),
                validate_json: r.validate_json,
                mode: r.mode,
                contract: r.profile != Profile::None,
                metrics: metrics.route(&r.name),
            })
            .collect();
        let mut by_host: Vec<(String, Vec<usize>)> = Vec::new();
        let mut any_host = Vec::new();
        for (index, route) in config.routes.iter().enumerate() {
            match &route.host {
                None => any_host.push(index),
                Some(host) => match by_host.iter_mut().find(|(h, _)| h == host) {
                    Some((_, list)) => list.push(index),
                    None => by_host.push((host.clone(), vec![index])),
                },
            }
        }
        let longest_first = |list: &mut Vec<usize>| {
            list.sort_by_key(|&i| std::cmp::Reverse(routes[i].prefix.len()));
        };
        by_host.iter_mut().for_each(|(_, list)| longest_first(list));
        longest_first(&mut any_host);
        RouteTable {
            routes,
            by_host,
            any_host,
        }
    }

    /// An upstream in use by some route with exactly these settings, to keep its pool.
    pub fn upstream_like(&self, config: &UpstreamConfig) -> Option<Arc<Upstream>> {
        self.routes
            .iter()
            .map(|r| &r.upstream)
            .find(|u| *u.config == *config)
            .cloned()
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The route for a request: routes naming its host first, then routes for any host.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        // A trailing dot names the same host (RFC 1034 §3.1: an absolute name).
        let host = host.map(|h| {
            let name = host_without_port(h);
            name.strip_suffix('.').unwrap_or(name)
        });
        let host_routes = host.and_then(|host| {
            self.by_host
                .iter()
                .find(|(h, _)| h.eq_ignore_ascii_case(host))
                .map(|(_, list)| list.as_slice())
        });
        host_routes
            .into_iter()
            .chain(std::iter::once(self.any_host.as_slice()))
            .flat_map(|list| list.iter())
            .map(|&i| &self.routes[i])
            .find(|route| route.matches(path))
    }
}

/// Whether `path` lies at or below `prefix`, segment by segment (see [`Route::matches`]).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

impl Route {
    /// Segment-wise prefix match: `/inventory` matches `/inventory` and `/inventory/...`,
    /// not `/inventory-old`.
    pub fn matches(&self, path: &str) -> bool {
        prefix_matches(&self.prefix, path)
    }

    /// The path and query sent upstream.
    pub fn upstream_path(&self, original: &PathAndQuery) -> PathAndQuery {
        if !self.strip_prefix || self.prefix == "/" {
            return original.clone();
        }
        // Past as many segments as the prefix has: the same bytes as the prefix, unless
        // those segments carry `;` parameters, which the route matched without.
        let path = original.path();
        let segments = self.prefix.trim_end_matches('/').matches('/').count();
        let rest = match path.match_indices('/').nth(segments) {
            Some((at, _)) => &path[at..],
            None => "",
        };
        let mut out = String::with_capacity(original.as_str().len());
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        if let Some(query) = original.query() {
            out.push('?');
            out.push_str(query);
        }
        PathAndQuery::try_from(out).unwrap_or_else(|_| original.clone())
    }
}

fn forwarded_prefix(strip: bool, prefix: &str) -> Option<HeaderValue> {
    let prefix = prefix.trim_end_matches('/');
    (strip && !prefix.is_empty())
        .then(|| HeaderValue::from_str(prefix).ok())
        .flatten()
}

/// `example.com:8080` -> `example.com`; `[::1]:80` -> `[::1]`.
pub(crate) fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::Budget;
    use crate::config::Config;
    use std::path::Path;

    const CONFIG: &str = r#"
[[upstreams]]
name = "u"
targets = ["http://127.0.0.1:1"]

[[routes]]
name = "root"
upstream = "u"
path_prefix = "/"

[[routes]]
name = "inv"
upstream = "u"
path_prefix = "/inventory/"
strip_prefix = true

[[routes]]
name = "inv-items"
upstream = "u"
path_prefix = "/inventory/items"

[[routes]]
name = "api-inv"
upstream = "u"
host = "API.example.com"
path_prefix = "/inventory"
"#;

    fn table() -> RouteTable {
        let config = Config::parse(Path::new("t.toml"), CONFIG).unwrap();
        let upstreams: Vec<_> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(Upstream::new(u.clone(), Arc::new(Budget::new(1 << 20)))))
            .collect();
        RouteTable::build(&config, &upstreams, &crate::metrics::Metrics::new())
    }

    #[tokio::test]
    async fn longest_prefix_and_host_win() {
        let table = table();
        let cases = [
            (None, "/inventory/items/1", "inv-items"),
            (None, "/inventory/other", "inv"),
            (None, "/inventory", "inv"),
            (None, "/inventory-old", "root"),
            (
                Some("api.example.com:8080"),
                "/inventory/items/1",
                "api-inv",
            ),
            (Some("api.example.com"), "/else", "root"),
            (Some("API.example.com."), "/inventory/x", "api-inv"),
            (Some("api.example.com.:443"), "/inventory/x", "api-inv"),
            (Some("other.example.com"), "/inventory", "inv"),
        ];
        for (host, path, want) in cases {
            let got = table.find(host, path).map(|r| &*r.name);
            assert_eq!(got, Some(want), "{host:?} {path}");
        }
    }

    #[tokio::test]
    async fn strip_prefix_rewrites_path_and_keeps_query() {
        let table = table();
        let route = table.find(None, "/inventory/x").unwrap();
        let cases = [
            ("/inventory/items/1?a=b", "/items/1?a=b"),
            ("/inventory", "/"),
            ("/inventory?q=1", "/?q=1"),
        ];
        for (input, want) in cases {
            let got = route.upstream_path(&PathAndQuery::from_static(input));
            assert_eq!(got.as_str(), want);
        }
    }

    #[test]
    fn ports_are_ignored_in_hosts() {
        assert_eq!(host_without_port("a.b:80"), "a.b");
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        assert_eq!(host_without_port("a.b"), "a.b");
    }
}
