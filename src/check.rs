//! What `restatus check` prints: the config summary, every route's rules in evaluation order,
//! and warnings about rules that can never fire.

use crate::config::{self, Config, RouteConfig};
use crate::rules::condition::{Conditions, GlobSegment, PathMatcher};
use crate::rules::profile::Profile;
use crate::rules::{Origin, Rule};
use std::fmt::Write;

/// The full `check` report for a valid config.
pub fn report(config: &Config) -> String {
    let mut out = config::summary(config);
    let _ = writeln!(out, "checks and rules, in evaluation order:");
    let mut warnings = Vec::new();
    for route in &config.routes {
        let _ = writeln!(
            out,
            "  route {} (profile {}, mode {}{}):",
            route.name,
            route.profile.as_str(),
            route.mode.as_str(),
            if route.validate_json {
                ", validate_json"
            } else {
                ""
            }
        );
        for check in route.checks.iter() {
            let _ = writeln!(
                out,
                "    check {} when {} -> {}",
                check.name,
                describe_conditions(&check.when),
                check.then.status.as_u16()
            );
        }
        for (i, rule) in route.rules.rules().iter().enumerate() {
            let _ = writeln!(out, "    {:>3}. {}", i + 1, describe_rule(rule));
        }
        warnings.extend(route_warnings(route));
        warnings.extend(method_warnings(route));
        warnings.extend(contract_warnings(route));
    }
    warnings.extend(global_warnings(config));
    for warning in &warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

/// A rule or a check, as far as telling whether it can fire.
struct Entry<'a> {
    name: &'a str,
    when: &'a Conditions,
    /// Named in its own `routes = [...]` (not global): its path should suit the route.
    named: bool,
}

/// Rules and checks of `route` that can never fire there, and why.
fn route_warnings(route: &RouteConfig) -> Vec<String> {
    let named = |routes: &[String]| routes.contains(&route.name);
    let rules: Vec<Entry> = (route.rules.rules().iter())
        .map(|r| Entry {
            name: &r.name,
            when: &r.when,
            named: named(&r.routes),
        })
        .collect();
    let checks: Vec<Entry> = (route.checks.iter())
        .map(|c| Entry {
            name: &c.name,
            when: &c.when,
            named: named(&c.routes),
        })
        .collect();
    let mut out = Vec::new();
    for (what, entries) in [("rule", rules), ("check", checks)] {
        for (name, reason) in never_fire(route, &entries) {
            out.push(format!(
                "route {}: {what} `{name}` can never fire: {reason}",
                route.name
            ));
        }
    }
    out
}

/// Global rules and checks (no `routes`) whose path lies outside every route's prefix: the
/// usual slip with `strip_prefix`, writing the path as the upstream sees it. For a check it
/// leaves open what it was meant to guard.
fn global_warnings(config: &Config) -> Vec<String> {
    let rules = (config.rules.iter()).map(|r| ("rule", &*r.name, &r.routes, &r.when));
    let checks = (config.checks.iter()).map(|c| ("check", c.name.as_str(), &c.routes, &c.when));
    let mut out = Vec::new();
    for (what, name, routes, when) in rules.chain(checks) {
        let Some(path) = when.path.as_ref().filter(|_| routes.is_empty()) else {
            continue;
        };
        if config
            .routes
            .iter()
            .any(|r| path_reachable(&r.path_prefix, path))
        {
            continue;
        }
        let prefixes: Vec<&str> = config
            .routes
            .iter()
            .map(|r| r.path_prefix.as_str())
            .collect();
        out.push(format!(
            "{what} `{name}` can never fire: its path {} is outside every route's path_prefix ({}; paths are matched before strip_prefix)",
            when.path_text.as_deref().unwrap_or(""),
            prefixes.join(", ")
        ));
    }
    out
}

/// Entries (in evaluation order) that can never fire on `route`, each with the reason.
fn never_fire<'a>(route: &RouteConfig, entries: &[Entry<'a>]) -> Vec<(&'a str, String)> {
    let mut why = Vec::new();
    // Entries that can never fire by themselves: they shadow nothing.
    let mut dead = vec![false; entries.len()];
    for (i, entry) in entries.iter().enumerate() {
        let before = why.len();
        if only_interim(entry.when) {
            why.push((entry.name, "rules never see 1xx responses".to_string()));
        }
        if let Some(reason) = unreachable_path(entry.when.path_text.as_deref()) {
            why.push((entry.name, reason));
        }
        if let (true, Some(path)) = (entry.named, &entry.when.path) {
            if !path_reachable(&route.path_prefix, path) {
                why.push((entry.name, format!(
                    "its path {} is outside the route's path_prefix {} (paths are matched before strip_prefix)",
                    entry.when.path_text.as_deref().unwrap_or(""),
                    route.path_prefix
                )));
            }
        }
        dead[i] = why.len() > before;
        let shadowing = (entries[..i].iter().zip(&dead))
            .find(|(earlier, dead)| !**dead && earlier.when.covers(entry.when));
        if let Some((earlier, _)) = shadowing {
            let reason = format!(
                "`{}` comes first and matches everything it does",
                earlier.name
            );
            why.push((entry.name, reason));
        }
    }
    why
}

/// Why no request could have this path: matched paths never hold the query, and the proxy
/// refuses ambiguous ones before routing.
fn unreachable_path(path: Option<&str>) -> Option<String> {
    // A regex (`re:...`) is matched against the path, not read as one.
    let path = path.filter(|p| !p.starts_with("re:"))?;
    if path.contains(';') {
        return Some(format!(
            "its path {path} holds a `;`, but paths are matched without their `;` parameters"
        ));
    }
    if path.contains('?') {
        return Some(format!(
            "its path {path} holds a `?`, but paths are matched without the query string"
        ));
    }
    if path.contains(' ') || crate::admit::path_is_ambiguous(path) {
        return Some(format!(
            "requests for its path {path} are refused with 400 before routing (see Paths in docs/configuration.md)"
        ));
    }
    None
}

/// The methods of the IANA HTTP Method Registry (RFC 9110 §16.1.1 and the WebDAV family).
const REGISTERED_METHODS: [&str; 40] = [
    "ACL",
    "BASELINE-CONTROL",
    "BIND",
    "CHECKIN",
    "CHECKOUT",
    "CONNECT",
    "COPY",
    "DELETE",
    "GET",
    "HEAD",
    "LABEL",
    "LINK",
    "LOCK",
    "MERGE",
    "MKACTIVITY",
    "MKCALENDAR",
    "MKCOL",
    "MKREDIRECTREF",
    "MKWORKSPACE",
    "MOVE",
    "OPTIONS",
    "ORDERPATCH",
    "PATCH",
    "POST",
    "PRI",
    "PROPFIND",
    "PROPPATCH",
    "PUT",
    "QUERY",
    "REBIND",
    "REPORT",
    "SEARCH",
    "TRACE",
    "UNBIND",
    "UNCHECKOUT",
    "UNLINK",
    "UNLOCK",
    "UPDATE",
    "UPDATEREDIRECTREF",
    "VERSION-CONTROL",
];

/// Rules of `route` that name a method outside the registry: any token is a valid method, so
/// the config is accepted, but a misspelt `GETT` would silently never match.
fn method_warnings(route: &RouteConfig) -> Vec<String> {
    let mut out = Vec::new();
    for rule in route.rules.rules() {
        let methods = rule.when.methods.iter().flatten();
        for method in methods.filter(|m| !REGISTERED_METHODS.contains(&m.as_str())) {
            out.push(format!(
                "route {}: rule `{}` matches method {method}, which is not a registered HTTP \
                 method: if it is a misspelling, the rule never fires",
                route.name, rule.name
            ));
        }
    }
    out
}

/// Rules on a route with a contract profile that answer with a code the contract does not
/// define: allowed (a rule may keep an exception), but likely a mistake.
fn contract_warnings(route: &RouteConfig) -> Vec<String> {
    if route.profile == Profile::None {
        return Vec::new();
    }
    let outside = |rule: &&std::sync::Arc<Rule>| {
        rule.origin != Origin::Profile && !crate::rules::is_documented(rule.then.status.as_u16())
    };
    (route.rules.rules().iter().filter(outside))
        .map(|rule| {
            format!(
                "route {}: rule `{}` answers {}, a status outside the documented contract \
                 ({:?}); clients will see a code the contract does not define",
                route.name,
                rule.name,
                rule.then.status.as_u16(),
                crate::rules::DOCUMENTED
            )
        })
        .collect()
}

/// Whether a path condition can hold for some path the route receives (`prefix` itself or
/// below it). Only literal segments are compared; a regex is assumed to be reachable.
fn path_reachable(prefix: &str, path: &PathMatcher) -> bool {
    let lead: Vec<&str> = match path {
        PathMatcher::Regex(_) => return true,
        PathMatcher::Exact(exact) => exact.split('/').filter(|s| !s.is_empty()).collect(),
        PathMatcher::Glob(segments) => segments
            .iter()
            .map_while(|segment| match segment {
                GlobSegment::Literal(literal) => Some(literal.as_str()),
                _ => None,
            })
            .collect(),
    };
    let route = prefix.split('/').filter(|s| !s.is_empty());
    match path {
        // An exact path must lie at or below the prefix.
        PathMatcher::Exact(_) => {
            let route: Vec<&str> = route.collect();
            lead.len() >= route.len() && lead.iter().zip(&route).all(|(a, b)| a == b)
        }
        // A glob's literal lead and the prefix must agree as far as both go.
        _ => lead.iter().zip(route).all(|(a, b)| *a == b),
    }
}

/// A status condition that only holds for 1xx: hyper handles those before any rule runs.
fn only_interim(when: &Conditions) -> bool {
    when.has_status && when.statuses.codes().all(|code| code < 200)
}

/// One line: name, origin, conditions, the resulting status and what else it changes.
pub fn describe_rule(rule: &Rule) -> String {
    let mut then = vec![rule.then.status.as_u16().to_string()];
    then.extend(describe_changes(&rule.then));
    format!(
        "{} [{}] when {} -> {}",
        rule.name,
        rule.origin.as_str(),
        describe_conditions(&rule.when),
        then.join(", ")
    )
}

/// `then.body` and `then.headers`, when given: `replaces the body`, `removes x-b`, `sets x-a`.
pub fn describe_changes(then: &crate::rules::Action) -> Vec<String> {
    let names = |list: Vec<&str>| list.join(", ");
    let mut out = Vec::new();
    if then.body.is_some() {
        out.push("replaces the body".to_string());
    }
    if !then.remove_headers.is_empty() {
        let removed = then.remove_headers.iter().map(|n| n.as_str()).collect();
        out.push(format!("removes {}", names(removed)));
    }
    if !then.set_headers.is_empty() {
        let set = then.set_headers.iter().map(|(n, _)| n.as_str()).collect();
        out.push(format!("sets {}", names(set)));
    }
    out
}

/// The conditions of a `when` table, as a user would read them.
pub fn describe_conditions(when: &Conditions) -> String {
    let mut parts = Vec::new();
    if let Some(methods) = &when.methods {
        let names: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
        parts.push(format!("method {}", names.join("|")));
    }
    if let Some(path) = &when.path_text {
        parts.push(match path.strip_prefix("re:") {
            Some(regex) => format!("path_regex {regex}"),
            None => format!("path {path}"),
        });
    }
    if when.has_status {
        let codes: Vec<u16> = when.statuses.codes().collect();
        parts.push(format!("status {}", compact_codes(&codes)));
    }
    parts.extend(when.detail_text.iter().cloned());
    if parts.is_empty() {
        "always".to_string()
    } else {
        parts.join(", ")
    }
}

/// `[200, 201, 202, 204]` as `200-202, 204`.
fn compact_codes(codes: &[u16]) -> String {
    let mut ranges: Vec<(u16, u16)> = Vec::new();
    for &code in codes {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == code => *end = code,
            _ => ranges.push((code, code)),
        }
    }
    let text: Vec<String> = ranges
        .iter()
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect();
    text.join(", ")
}

#[cfg(test)]
mod tests {
    use super::{compact_codes, path_reachable, GlobSegment, PathMatcher};

    #[test]
    fn paths_outside_the_prefix_are_unreachable() {
        let glob = |text: &str| {
            PathMatcher::Glob(
                text[1..]
                    .split('/')
                    .map(|s| match s {
                        "*" => GlobSegment::One,
                        "**" => GlobSegment::Rest,
                        s => GlobSegment::Literal(s.into()),
                    })
                    .collect(),
            )
        };
        let exact = |text: &str| PathMatcher::Exact(text.into());
        let cases = [
            ("/", exact("/items"), true),
            ("/inventory", exact("/inventory"), true),
            ("/inventory", exact("/inventory/items"), true),
            ("/inventory", exact("/items"), false),
            ("/inventory", exact("/inventory-old/items"), false),
            ("/inventory/v1", exact("/inventory"), false),
            ("/inventory", glob("/inventory/items/*"), true),
            ("/inventory", glob("/items/*"), false),
            ("/inventory", glob("/*/items"), true),
            ("/inventory/v1", glob("/inventory/**"), true),
            ("/inventory/v1", glob("/inventory/v2/*"), false),
        ];
        for (prefix, path, want) in cases {
            assert_eq!(path_reachable(prefix, &path), want, "{prefix} {path:?}");
        }
    }

    #[test]
    fn codes_are_compacted_into_ranges() {
        assert_eq!(compact_codes(&[200, 201, 202, 204]), "200-202, 204");
        assert_eq!(compact_codes(&[500]), "500");
        assert_eq!(compact_codes(&[]), "");
    }
}
