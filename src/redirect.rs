//! `Location` behind `strip_prefix`: the upstream names its own paths (`/items/1`), which the
//! client reaches under the route's prefix (`/f/items/1`). Without the prefix put back, a
//! client following the redirect would land on another route or a 404. NGINX's default
//! `proxy_redirect` does the same for absolute URLs naming the upstream.

use http::header::{CONTENT_LOCATION, LOCATION};
use http::{HeaderMap, HeaderValue};

/// Puts `prefix` (`/f`, no trailing slash; empty on a route that strips none) back in front
/// of the upstream's paths in `Location` and `Content-Location`: a path-absolute reference
/// (`/items/1`), or an absolute URL on `host` (the `Host` the upstream was sent) or on one of
/// the upstream's own targets (`is_target`, given the URL's scheme, `None` for a
/// scheme-relative one, and its authority), which the client cannot reach: the URL becomes a
/// path. A reference that already starts with the prefix (a service that reads
/// `X-Forwarded-Prefix`), a relative one (`items/1`, resolved against the client's own URL)
/// and one on another host are left.
pub fn restore_prefix(
    headers: &mut HeaderMap,
    prefix: &str,
    host: Option<&str>,
    is_target: impl Fn(Option<&str>, &str) -> bool,
) {
    for name in [LOCATION, CONTENT_LOCATION] {
        let Some(value) = headers.get(&name).and_then(|v| v.to_str().ok()) else {
            continue;
        };
        if let Some(fixed) = with_prefix(value, prefix, host, &is_target) {
            if let Ok(fixed) = HeaderValue::try_from(fixed) {
                headers.insert(name, fixed);
            }
        }
    }
}

/// The reference with the prefix put back, or `None` to leave it as it is.
fn with_prefix(
    value: &str,
    prefix: &str,
    host: Option<&str>,
    is_target: &impl Fn(Option<&str>, &str) -> bool,
) -> Option<String> {
    if value.starts_with('/') && !value.starts_with("//") {
        return (!has_prefix(value, prefix)).then(|| format!("{prefix}{value}"));
    }
    // `http://host/...`, `https://host/...`, or scheme-relative `//host/...` (RFC 3986 §4.2).
    let (lead, scheme, rest) = match value.strip_prefix("//") {
        Some(rest) => ("//", None, rest),
        None => {
            let (scheme, rest) = value.split_once("://")?;
            let web = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
            (
                &value[..web.then_some(scheme.len() + 3)?],
                Some(scheme),
                rest,
            )
        }
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    let path = match path.starts_with('/') {
        true => path.to_string(),
        false => format!("/{path}"),
    };
    if is_target(scheme, authority) {
        let path = match has_prefix(&path, prefix) {
            true => path,
            false => format!("{prefix}{path}"),
        };
        // `//evil.example/x` (or `/\evil.example`, as browsers read it) would name another
        // host: an open redirect made of the service's own `base + user path`.
        return (!path.starts_with("//") && !path.starts_with("/\\")).then_some(path);
    }
    let on_host = host.is_some_and(|host| same_authority(authority, host));
    (on_host && !has_prefix(&path, prefix)).then(|| format!("{lead}{authority}{prefix}{path}"))
}

/// Whether two authorities name the same server: without case, a trailing dot on the host,
/// or a default port (`:80`, `:443`), which a service writing its own URLs may add or drop.
pub fn same_authority(a: &str, b: &str) -> bool {
    fn bare(authority: &str) -> &str {
        let authority = (authority.strip_suffix(":80"))
            .or_else(|| authority.strip_suffix(":443"))
            .unwrap_or(authority);
        authority.strip_suffix('.').unwrap_or(authority)
    }
    bare(a).eq_ignore_ascii_case(bare(b))
}

/// Whether `path` (with any query) is `prefix` or lies under it, segment-wise; a segment's
/// `;` parameters are part of it, as routes match them.
fn has_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['/', '?', '#', ';']))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The target is `http://10.0.0.5:8080`.
    fn target(scheme: Option<&str>, authority: &str) -> bool {
        scheme.is_none_or(|s| s.eq_ignore_ascii_case("http")) && authority == "10.0.0.5:8080"
    }

    fn fixed(value: &str) -> Option<String> {
        with_prefix(value, "/f", Some("shop.example"), &target)
    }

    #[test]
    fn the_upstreams_own_paths_get_the_prefix_back() {
        assert_eq!(fixed("/items/1").as_deref(), Some("/f/items/1"));
        assert_eq!(fixed("/").as_deref(), Some("/f/"));
        assert_eq!(fixed("/login?next=/a").as_deref(), Some("/f/login?next=/a"));
        assert_eq!(
            fixed("http://shop.example/items/1").as_deref(),
            Some("http://shop.example/f/items/1")
        );
        assert_eq!(
            fixed("HTTPS://SHOP.EXAMPLE?x=1").as_deref(),
            Some("HTTPS://SHOP.EXAMPLE/f/?x=1")
        );
        // The upstream's own address is no use to the client: a path instead.
        assert_eq!(
            fixed("http://10.0.0.5:8080/items/1").as_deref(),
            Some("/f/items/1")
        );
        assert_eq!(
            fixed("//10.0.0.5:8080/items/1").as_deref(),
            Some("/f/items/1")
        );
        // Scheme-relative, a default port, a trailing dot: still the client's host.
        assert_eq!(
            fixed("//shop.example/items/1").as_deref(),
            Some("//shop.example/f/items/1")
        );
        assert_eq!(
            fixed("http://shop.example:80/items/1").as_deref(),
            Some("http://shop.example:80/f/items/1")
        );
        assert_eq!(
            fixed("https://Shop.Example.:443/a").as_deref(),
            Some("https://Shop.Example.:443/f/a")
        );
    }

    #[test]
    fn other_references_are_left() {
        for value in [
            "/f/items/1",
            "/f",
            "/f?x=1",
            "/f;v=1/x",
            "items/1",
            "//cdn.example/a",
            "ftp://shop.example/items/1",
            "http://other.example/items/1",
            "http://shop.example/f/items/1",
            "mailto:ops@example.com",
        ] {
            assert_eq!(fixed(value), None, "{value}");
        }
        // Segment-wise: `/fx` is not under `/f`.
        assert_eq!(fixed("/fx/1").as_deref(), Some("/f/fx/1"));
    }

    /// Without a prefix, only a URL on a target's own address changes, and only into a path
    /// that stays on the client's host.
    #[test]
    fn without_a_prefix_only_the_targets_urls_become_paths() {
        let bare = |value: &str| with_prefix(value, "", Some("shop.example"), &target);
        assert_eq!(
            bare("http://10.0.0.5:8080/a?b=1").as_deref(),
            Some("/a?b=1")
        );
        assert_eq!(bare("//10.0.0.5:8080/a").as_deref(), Some("/a"));
        for value in [
            "/items/1",
            "http://shop.example/items/1",
            // Another scheme is another server: an HTTP service sending its client to HTTPS.
            "https://10.0.0.5:8080/login",
            // A path that would leave the host is left as the service wrote it.
            "http://10.0.0.5:8080//evil.example/x",
            "//10.0.0.5:8080//evil.example",
            "http://10.0.0.5:8080/\\evil.example/x",
        ] {
            assert_eq!(bare(value), None, "{value}");
        }
        // Behind a prefix the same paths stay on the host.
        assert_eq!(
            fixed("http://10.0.0.5:8080//evil.example/x").as_deref(),
            Some("/f//evil.example/x")
        );
    }
}
