//! What `restatus check` prints: the config summary, every route's rules in evaluation order,
//! and warnings about rules that can never fire.

use crate::config::{self, Config};
use crate::rules::condition::Conditions;
use crate::rules::Rule;
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
        for rule in route.rules.rules().iter().filter(|r| only_interim(&r.when)) {
            warnings.push(format!(
                "route {}: rule `{}` can never fire: rules never see 1xx responses",
                route.name, rule.name
            ));
        }
        for (earlier, later) in route.rules.shadowed() {
            warnings.push(format!(
                "route {}: rule `{}` can never fire: `{}` comes first and matches everything it does",
                route.name, later.name, earlier.name
            ));
        }
    }
    for warning in &warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

/// A status condition that only holds for 1xx: hyper handles those before any rule runs.
fn only_interim(when: &Conditions) -> bool {
    when.has_status && when.statuses.codes().all(|code| code < 200)
}

/// One line: name, origin, conditions and the resulting status.
pub fn describe_rule(rule: &Rule) -> String {
    format!(
        "{} [{}] when {} -> {}",
        rule.name,
        rule.origin.as_str(),
        describe_conditions(&rule.when),
        rule.then.status.as_u16()
    )
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
    use super::compact_codes;

    #[test]
    fn codes_are_compacted_into_ranges() {
        assert_eq!(compact_codes(&[200, 201, 202, 204]), "200-202, 204");
        assert_eq!(compact_codes(&[500]), "500");
        assert_eq!(compact_codes(&[]), "");
    }
}
