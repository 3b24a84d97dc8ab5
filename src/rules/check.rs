//! Request checks: `[[checks]]` decided from the request line and headers alone, before any
//! body is read and before the upstream is contacted.

use super::condition::{self, Conditions};
use super::raw::RawCheck;
use super::{compile_then, Action};
use crate::config::{ConfigError, Locator};
use http::{HeaderMap, Method};

/// The codes a check may answer with: the documented contract's client and server errors.
pub const CHECK_CODES: [u16; 5] = [400, 403, 404, 409, 500];

#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub description: Option<String>,
    /// Route names from `routes = [...]`; empty means every route.
    pub routes: Vec<String>,
    pub when: Conditions,
    pub then: Action,
}

impl Check {
    /// Whether the check refuses this request.
    pub fn refuses(&self, method: &Method, path: &str, headers: &HeaderMap) -> bool {
        let when = &self.when;
        when.method_matches(method)
            && when.path.as_ref().is_none_or(|p| p.matches(path))
            && when.request_headers.iter().all(|h| h.matches(headers))
    }
}

/// Compiles one `[[checks]]` table; response-side conditions are refused here, since a check
/// is decided before there is a response.
pub fn compile_check(raw: &RawCheck, at: &Locator) -> Result<Check, ConfigError> {
    super::check_routes_list(raw.routes.as_ref(), "check", at)?;
    if let Some(span) = raw.when.response_side_span() {
        return Err(at.at(
            span,
            "a check is decided before the upstream answers: use only method, path, path_regex \
             and request_header (not status, response_header, body_regex or body_json)",
        ));
    }
    let when = condition::compile(&raw.when, at)?;
    let then = compile_then(&raw.then, at)?;
    if !CHECK_CODES.contains(&then.status.as_u16()) {
        return Err(at.at(
            raw.then.status.span(),
            format!(
                "a check answers with a documented error code: one of {CHECK_CODES:?}, not {}",
                then.status.as_u16()
            ),
        ));
    }
    Ok(Check {
        name: raw.name.get_ref().clone(),
        description: raw.description.clone(),
        routes: raw
            .routes
            .as_ref()
            .map(|list| list.get_ref().iter().map(|r| r.get_ref().clone()).collect())
            .unwrap_or_default(),
        when,
        then,
    })
}
