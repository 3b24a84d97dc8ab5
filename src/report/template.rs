//! Path templates: numeric, UUID and long hex segments become `{id}`, so `/items/7` and
//! `/items/9` are one endpoint.

/// Hex segments at least this long are ids (Mongo ObjectIds, MD5/SHA digests); shorter ones
/// may be words (`cafe`, `added`).
const LONG_HEX: usize = 16;

/// Writes the template of `path` into `out` (cleared first). A query string, which records
/// should not hold anyway, is dropped.
pub fn template(path: &str, out: &mut String) {
    out.clear();
    let path = path.split(['?', '#']).next().unwrap_or_default();
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        out.push_str(if is_id(segment) { "{id}" } else { segment });
    }
}

/// The template of `path` as a new string.
pub fn of(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    template(path, &mut out);
    out
}

fn is_id(segment: &str) -> bool {
    let b = segment.as_bytes();
    if b.is_empty() {
        return false;
    }
    b.iter().all(u8::is_ascii_digit)
        || is_uuid(b)
        || (b.len() >= LONG_HEX && b.iter().all(u8::is_ascii_hexdigit))
}

/// `8-4-4-4-12` hex digits, either case (RFC 9562 §4).
fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::of;

    #[test]
    fn ids_become_placeholders() {
        let cases = [
            ("/items/7", "/items/{id}"),
            ("/items/9", "/items/{id}"),
            ("/items/7/parts/12", "/items/{id}/parts/{id}"),
            (
                "/orders/3F2504E0-4F89-11D3-9A0C-0305E82C3301",
                "/orders/{id}",
            ),
            ("/blobs/507f1f77bcf86cd799439011", "/blobs/{id}"),
            (
                "/commits/da39a3ee5e6b4b0d3255bfef95601890afd80709",
                "/commits/{id}",
            ),
            ("/items/7?full=1", "/items/{id}"),
        ];
        for (path, want) in cases {
            assert_eq!(of(path), want, "{path}");
        }
    }

    #[test]
    fn words_stay() {
        for path in [
            "/",
            "/items",
            "/v1/items",
            "/cafe/added",
            "/items/7a",
            "/items/-7",
            "/items//x",
            "/deadbeef",
            "/3F2504E0-4F89-11D3-9A0C-0305E82C330",
        ] {
            assert_eq!(of(path), path.to_string(), "{path}");
        }
    }
}
