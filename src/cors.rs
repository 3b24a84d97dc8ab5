//! CORS for what restatus adds to responses (the Fetch standard's CORS protocol). The service
//! answers CORS itself and its fields pass through untouched; restatus makes its own answers
//! readable to the pages `[cors]` allows, and exposes its own fields where the service
//! already lets a page read the response.

use crate::headers::{X_REQUEST_ID, X_RESTATUS_SOURCE};
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS,
    VARY,
};
use http::{HeaderMap, HeaderName, HeaderValue};

/// `[cors]`: the pages that may read the answers restatus makes itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cors {
    /// Origins as browsers send them (`https://app.example.com`), lowercase.
    pub origins: Vec<String>,
    /// `"*"`: any page.
    pub any: bool,
    /// Pages may read the answers to requests made with credentials (cookies).
    pub credentials: bool,
}

impl Cors {
    /// Whether any page may read restatus's own answers.
    pub fn is_on(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        let origin = origin.as_bytes();
        self.any
            || self
                .origins
                .iter()
                .any(|allowed| allowed.as_bytes().eq_ignore_ascii_case(origin))
    }

    /// Lets the page at `origin` read an answer restatus made (a `[[checks]]` refusal, a 502,
    /// a 504, ...), with `x-request-id`, `x-restatus-source` and the original-status field
    /// (`own`). A rule that set `Access-Control-Allow-Origin` on the answer has decided
    /// already: only restatus's fields are exposed then.
    pub fn own_answer(
        &self,
        headers: &mut HeaderMap,
        origin: Option<&HeaderValue>,
        own: Option<&HeaderName>,
    ) {
        if !self.is_on() {
            return;
        }
        // An answer that names the page depends on `Origin`: every answer says so, allowed or
        // not, so that a cache never gives one page's answer to another (Fetch, "CORS
        // protocol and HTTP caches").
        if !self.any || self.credentials {
            headers.append(VARY, HeaderValue::from_static("origin"));
        }
        let Some(origin) = origin.filter(|origin| self.allows(origin)) else {
            return;
        };
        if !headers.contains_key(ACCESS_CONTROL_ALLOW_ORIGIN) {
            if self.any && !self.credentials {
                let any = HeaderValue::from_static("*");
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, any);
            } else {
                headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            }
            if self.credentials {
                let yes = HeaderValue::from_static("true");
                headers.insert(ACCESS_CONTROL_ALLOW_CREDENTIALS, yes);
            }
        }
        expose(headers, &[&X_REQUEST_ID, &X_RESTATUS_SOURCE], own);
    }
}

/// The service allowed a page to read this response: restatus's own fields (`x-request-id`,
/// the original-status field `own`) are made readable to it too. Without this, a page sees
/// the rewritten status but neither the status the service sent nor the request's id.
pub fn expose_own_fields(headers: &mut HeaderMap, own: Option<&HeaderName>) {
    expose(headers, &[&X_REQUEST_ID], own);
}

/// Appends to `Access-Control-Expose-Headers` the names of `names` and `own` it lacks.
fn expose(headers: &mut HeaderMap, names: &[&HeaderName], own: Option<&HeaderName>) {
    let listed = |name: &HeaderName| {
        crate::wire::tokens(headers, &ACCESS_CONTROL_EXPOSE_HEADERS)
            .any(|token| token.eq_ignore_ascii_case(name.as_ref()))
    };
    let mut value = String::new();
    for name in names
        .iter()
        .copied()
        .chain(own)
        .filter(|name| !listed(name))
    {
        if !value.is_empty() {
            value.push_str(", ");
        }
        value.push_str(name.as_str());
    }
    // Names are tokens, so the value is always valid; an empty one says nothing.
    if let Ok(value) = HeaderValue::from_str(&value) {
        if !value.is_empty() {
            headers.append(ACCESS_CONTROL_EXPOSE_HEADERS, value);
        }
    }
}

/// Checks an entry of `[cors] allow_origins`; returns it lowercase. An origin is written
/// exactly as a browser sends it in `Origin` (the HTML standard's serialization): `http` or
/// `https`, `://`, an ASCII host (an internationalized name in its `xn--` form, an IPv6
/// address in brackets) and a port only when it is not the scheme's default, in plain digits.
/// Anything else could never equal what a browser sends, and would silently allow nothing.
pub fn parse_origin(text: &str) -> Result<String, String> {
    let fail = |hint: &str| Err(format!("`{text}` is not an origin: {hint}"));
    let Some((scheme, rest)) = text.split_once("://") else {
        return fail("write it as a browser sends it, like \"https://app.example.com\"");
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => "80",
        "https" => "443",
        _ => return fail("its scheme must be http or https"),
    };
    if let Some(at) = rest.find(['/', '?', '#']) {
        return fail(&format!(
            "an origin has no path; write \"{scheme}://{}\"",
            &rest[..at]
        ));
    }
    let (host, port) = split_port(rest);
    if host.is_empty() {
        return fail("it has no host");
    }
    if !host.is_ascii() {
        return fail("browsers send a non-ASCII host in its xn-- form (punycode)");
    }
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.');
    if !bracketed && !host.chars().all(plain) {
        return fail("its host holds a character no origin has (use \"*\" alone for any page)");
    }
    if let Some(port) = port {
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if !digits || port.starts_with('0') || port.parse::<u16>().is_err() {
            return fail("its port must be a number from 1 to 65535, without leading zeros");
        }
        if port == default_port {
            return fail(&format!(
                "browsers leave out the default port; write \"{scheme}://{host}\""
            ));
        }
    }
    Ok(text.to_ascii_lowercase())
}

/// `host[:port]` split at the port's colon (an IPv6 host keeps the colons in its brackets).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let after_host = authority.rfind(']').map_or(0, |end| end + 1);
    match authority[after_host..].find(':') {
        Some(at) => (
            &authority[..after_host + at],
            Some(&authority[after_host + at + 1..]),
        ),
        None => (authority, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(text: &'static str) -> HeaderValue {
        HeaderValue::from_static(text)
    }

    fn listed(origins: &[&str], credentials: bool) -> Cors {
        Cors {
            origins: origins.iter().map(|o| o.to_string()).collect(),
            any: false,
            credentials,
        }
    }

    fn get<'a>(headers: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("?"))
            .collect()
    }

    #[test]
    fn an_allowed_page_is_named_and_may_read_restatus_fields() {
        let cors = listed(&["https://app.example.com"], false);
        let mut headers = HeaderMap::new();
        let own = HeaderName::from_static("x-restatus-original-status");
        cors.own_answer(
            &mut headers,
            Some(&origin("https://APP.example.com")),
            Some(&own),
        );
        assert_eq!(
            get(&headers, "access-control-allow-origin"),
            ["https://APP.example.com"]
        );
        assert_eq!(get(&headers, "vary"), ["origin"]);
        assert!(get(&headers, "access-control-allow-credentials").is_empty());
        assert_eq!(
            get(&headers, "access-control-expose-headers"),
            ["x-request-id, x-restatus-source, x-restatus-original-status"]
        );
    }

    #[test]
    fn other_pages_and_requests_without_origin_get_only_vary() {
        let cors = listed(&["https://app.example.com"], false);
        for asked in [Some(origin("https://evil.example")), None] {
            let mut headers = HeaderMap::new();
            cors.own_answer(&mut headers, asked.as_ref(), None);
            assert_eq!(get(&headers, "vary"), ["origin"], "{asked:?}");
            assert_eq!(headers.len(), 1, "{asked:?}: {headers:?}");
        }
        let mut headers = HeaderMap::new();
        Cors::default().own_answer(&mut headers, Some(&origin("https://app.example.com")), None);
        assert!(headers.is_empty(), "without [cors]: {headers:?}");
    }

    #[test]
    fn any_page_gets_a_star_unless_credentials_are_allowed() {
        let mut cors = Cors {
            any: true,
            ..Cors::default()
        };
        let mut headers = HeaderMap::new();
        cors.own_answer(&mut headers, Some(&origin("http://localhost:3000")), None);
        assert_eq!(get(&headers, "access-control-allow-origin"), ["*"]);
        assert!(get(&headers, "vary").is_empty());
        cors.credentials = true;
        let mut headers = HeaderMap::new();
        cors.own_answer(&mut headers, Some(&origin("http://localhost:3000")), None);
        assert_eq!(
            get(&headers, "access-control-allow-origin"),
            ["http://localhost:3000"]
        );
        assert_eq!(get(&headers, "access-control-allow-credentials"), ["true"]);
    }

    #[test]
    fn a_rules_own_allow_origin_is_kept() {
        let cors = listed(&["https://app.example.com"], true);
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin("*"));
        cors.own_answer(&mut headers, Some(&origin("https://app.example.com")), None);
        assert_eq!(get(&headers, "access-control-allow-origin"), ["*"]);
        assert!(get(&headers, "access-control-allow-credentials").is_empty());
        assert_eq!(
            get(&headers, "access-control-expose-headers"),
            ["x-request-id, x-restatus-source"]
        );
    }

    #[test]
    fn names_already_exposed_are_not_added_again() {
        let mut headers = HeaderMap::new();
        headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, origin("ETag, X-Request-Id"));
        let own = HeaderName::from_static("x-original-status");
        expose_own_fields(&mut headers, Some(&own));
        assert_eq!(
            get(&headers, "access-control-expose-headers"),
            ["ETag, X-Request-Id", "x-original-status"]
        );
        expose_own_fields(&mut headers, Some(&own));
        assert_eq!(get(&headers, "access-control-expose-headers").len(), 2);
    }

    #[test]
    fn origins_are_checked_as_browsers_send_them() {
        let accepted = [
            (
                "https://App.Example.com:8443",
                "https://app.example.com:8443",
            ),
            ("http://localhost:3000", "http://localhost:3000"),
            ("http://[::1]:8080", "http://[::1]:8080"),
            (
                "https://xn--bcher-kva.example",
                "https://xn--bcher-kva.example",
            ),
        ];
        for (text, want) in accepted {
            assert_eq!(parse_origin(text).as_deref(), Ok(want), "{text}");
        }
        let refused = [
            ("app.example.com", "like \"https://app.example.com\""),
            (
                "https://app.example.com/",
                "write \"https://app.example.com\"",
            ),
            ("https://app.example.com/x?y", "no path"),
            ("ftp://files.example.com", "http or https"),
            ("https://", "no host"),
            ("https://*.example.com", "use \"*\" alone"),
            ("http://x:80", "write \"http://x\""),
            ("https://x:443", "leave out the default port"),
            ("http://x:", "from 1 to 65535"),
            ("http://x:0", "from 1 to 65535"),
            ("http://x:99999", "from 1 to 65535"),
            ("http://x:0080", "without leading zeros"),
            ("https://b\u{fc}cher.example", "xn--"),
            ("https://user@x", "no origin has"),
        ];
        for (text, hint) in refused {
            let err = parse_origin(text).expect_err(text);
            assert!(err.contains(hint), "{text}: {err}");
        }
    }
}
