//! Header work on forwarded messages, as pure functions over `HeaderMap`.

use http::header::{
    HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TE, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::{HeaderMap, Version};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Marks a response the proxy made itself rather than relayed from the upstream.
pub static X_RESTATUS_SOURCE: HeaderName = HeaderName::from_static("x-restatus-source");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");
static PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");

/// Removes the hop-by-hop fields of RFC 9110 §7.6.1: every field named by any value of any
/// `Connection` header, then the fields that are hop-by-hop by definition.
///
/// A message framed by `Transfer-Encoding` loses its `Content-Length` too: RFC 9112 §6.3 has
/// the encoding override the length, and a proxy must remove the length before forwarding,
/// or the next hop could frame the body by it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which of these are there; only those are looked up again
    // (most messages carry none, or only `Connection: keep-alive`).
    let mut present = [false; HOP_BY_HOP.len()];
    let (mut connection, mut close) = (false, false);
    for name in headers.keys() {
        match hop_by_hop_at(name.as_str()) {
            Some(Hop::Connection) => connection = true,
            Some(Hop::Close) => close = true,
            Some(Hop::Listed(i)) => present[i] = true,
            None => {}
        }
    }
    if present[TRANSFER_ENCODING_AT] {
        headers.remove(CONTENT_LENGTH);
    }
    if connection {
        remove_named(headers, close);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, there)| *there) {
        headers.remove(*name);
    }
}

/// What a field name is to [`strip_hop_by_hop`].
enum Hop {
    Connection,
    /// A field named like the `close` option, which goes if `Connection` lists it.
    Close,
    /// A hop-by-hop field by definition, at this place in [`HOP_BY_HOP`].
    Listed(usize),
}

/// Classifies a (lowercase) field name by its length first: most names are none of these,
/// and one comparison settles each.
fn hop_by_hop_at(name: &str) -> Option<Hop> {
    let at = match name.len() {
        10 if name == "connection" => return Some(Hop::Connection),
        5 if name == "close" => return Some(Hop::Close),
        10 => KEEP_ALIVE_AT,
        16 => 1,
        2 => 2,
        17 => TRANSFER_ENCODING_AT,
        7 => 4,
        19 => 5,
        18 => 6,
        _ => return None,
    };
    (name == HOP_BY_HOP[at].as_str()).then_some(Hop::Listed(at))
}

/// Removes `Connection` and every field it names (RFC 9110 §7.6.1), in one lookup of it.
/// The usual options are matched without building a name: `keep-alive`'s field is removed as
/// a hop-by-hop one anyway, and `close` only matters when a field has that name.
fn remove_named(headers: &mut HeaderMap, close_field: bool) {
    let http::header::Entry::Occupied(entry) = headers.entry(CONNECTION) else {
        return;
    };
    let mut close = false;
    let mut named: Vec<HeaderName> = Vec::new();
    for value in entry.remove_entry_mult().1 {
        for token in value
            .as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
        {
            if token.is_empty() || token.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if let Ok(name) = HeaderName::from_bytes(token) {
                named.push(name);
            }
        }
    }
    if close && close_field {
        headers.remove(&CLOSE);
    }
    for name in named {
        headers.remove(name);
    }
}

/// A field named like the `close` option goes with it.
static CLOSE: HeaderName = HeaderName::from_static("close");

/// The fields that are hop-by-hop by definition, besides `Connection`; [`hop_by_hop_at`]
/// knows their places.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &TE,
    &TRANSFER_ENCODING,
    &UPGRADE,
    &PROXY_AUTHORIZATION,
    &PROXY_AUTHENTICATE,
];

/// Where `Keep-Alive` and `Transfer-Encoding` stand in [`HOP_BY_HOP`].
const KEEP_ALIVE_AT: usize = 0;
const TRANSFER_ENCODING_AT: usize = 3;

/// Appends the client's address to `X-Forwarded-For`, keeping what earlier proxies wrote.
/// Earlier values are joined as bytes, so one holding obs-text keeps its addresses.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: IpAddr) {
    if !headers.contains_key(&X_FORWARDED_FOR) {
        headers.insert(&X_FORWARDED_FOR, ip_value(client));
        return;
    }
    let mut value: Vec<u8> = Vec::new();
    for existing in headers.get_all(&X_FORWARDED_FOR) {
        let text = existing.as_bytes().trim_ascii();
        if !text.is_empty() {
            value.extend_from_slice(text);
            value.extend_from_slice(b", ");
        }
    }
    value.extend_from_slice(client.to_string().as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&value) {
        headers.insert(&X_FORWARDED_FOR, value);
    }
}

/// An address as a field value, without a formatted string in between.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut text = [0u8; 48];
    let len = match ip {
        IpAddr::V4(v4) => ipv4_text(v4, &mut text),
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
            cursor.position() as usize
        }
    };
    HeaderValue::from_bytes(&text[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Dotted-quad text of `ip` into `out`, digit by digit (the formatter costs more than the
/// rest of setting the field); returns its length.
fn ipv4_text(ip: std::net::Ipv4Addr, out: &mut [u8; 48]) -> usize {
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            out[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            out[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        out[len] = b'0' + octet % 10;
        len += 1;
    }
    len
}

/// Sets `X-Forwarded-Proto` and `X-Forwarded-Host` to what this proxy saw.
pub fn set_forwarded_origin(headers: &mut HeaderMap, https: bool, host: Option<&HeaderValue>) {
    let proto = if https { "https" } else { "http" };
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => headers.insert(&X_FORWARDED_HOST, host.clone()),
        None => headers.remove(&X_FORWARDED_HOST),
    };
}

/// Appends this hop to `Via` (RFC 9110 §7.6.3), naming the protocol version received.
pub fn append_via(headers: &mut HeaderMap, received: Version) {
    let hop = match received {
        Version::HTTP_09 => "0.9 restatus",
        Version::HTTP_10 => "1.0 restatus",
        Version::HTTP_2 => "2 restatus",
        Version::HTTP_3 => "3 restatus",
        _ => "1.1 restatus",
    };
    if !headers.contains_key(VIA) {
        headers.insert(VIA, HeaderValue::from_static(hop));
        return;
    }
    // Joined as bytes, like X-Forwarded-For, so no earlier hop is lost to obs-text.
    let mut joined: Vec<u8> = Vec::new();
    for existing in headers.get_all(VIA) {
        joined.extend_from_slice(existing.as_bytes());
        joined.extend_from_slice(b", ");
    }
    joined.extend_from_slice(hop.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(VIA, value);
    }
}

/// The client's request id if it sent a usable one, else a new one.
pub fn request_id(headers: &HeaderMap, ids: &RequestIds) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(value) if is_usable_id(value) => value.clone(),
        _ => ids.next(),
    }
}

fn is_usable_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// Makes request ids unique within the process and, through a random prefix, across replicas.
pub struct RequestIds {
    prefix: u32,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIds {
    pub fn new() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        RequestIds {
            prefix: hasher.finish() as u32,
            counter: AtomicU64::new(1),
        }
    }

    pub fn next(&self) -> HeaderValue {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        // 8 hex digits of prefix, then 12 of counter, written without a format string.
        let mut text = [0u8; 20];
        hex_into(&mut text[..8], u64::from(self.prefix));
        hex_into(&mut text[8..], n);
        HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// Writes the low digits of `value` as lowercase hex, filling `out`.
fn hex_into(out: &mut [u8], mut value: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b"0123456789abcdef"[(value & 0xf) as usize];
        value >>= 4;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_hop_by_hop_name_is_found_at_its_place() {
        for (at, name) in HOP_BY_HOP.iter().enumerate() {
            assert!(matches!(hop_by_hop_at(name.as_str()), Some(Hop::Listed(i)) if i == at));
        }
        assert_eq!(*HOP_BY_HOP[TRANSFER_ENCODING_AT], TRANSFER_ENCODING);
        assert_eq!(*HOP_BY_HOP[KEEP_ALIVE_AT], KEEP_ALIVE);
        assert!(matches!(hop_by_hop_at("connection"), Some(Hop::Connection)));
        assert!(matches!(hop_by_hop_at("close"), Some(Hop::Close)));
        for other in [
            "host",
            "ten",
            "upgrades",
            "keep-alivf",
            "proxy-authorizatiom",
            "",
        ] {
            assert!(hop_by_hop_at(other).is_none(), "{other}");
        }
    }

    #[test]
    fn connection_options_remove_the_fields_named_like_them() {
        let mut headers = map(&[
            ("connection", "close, Keep-Alive, x-hop"),
            ("close", "1"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "a"),
            ("x-end", "b"),
        ]);
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-end"]);
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_fields_are_stripped() {
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[
                    ("connection", "x-a, x-b"),
                    ("connection", "X-C"),
                    ("x-a", "1"),
                    ("x-b", "2"),
                    ("x-c", "3"),
                    ("x-d", "4"),
                ],
                &["x-d"],
                &["connection", "x-a", "x-b", "x-c"],
            ),
            (
                &[
                    ("keep-alive", "5"),
                    ("te", "trailers"),
                    ("upgrade", "h2c"),
                    ("proxy-connection", "x"),
                    ("proxy-authorization", "Basic x"),
                    ("transfer-encoding", "chunked"),
                    ("accept", "*/*"),
                ],
                &["accept"],
                &[
                    "keep-alive",
                    "te",
                    "upgrade",
                    "proxy-connection",
                    "proxy-authorization",
                    "transfer-encoding",
                ],
            ),
            (&[("connection", "close, , bad name")], &[], &["connection"]),
            (
                &[("content-length", "100"), ("transfer-encoding", "chunked")],
                &[],
                &["content-length", "transfer-encoding"],
            ),
            (&[("content-length", "100")], &["content-length"], &[]),
        ];
        for (input, kept, gone) in cases {
            let mut headers = map(input);
            strip_hop_by_hop(&mut headers);
            for name in *kept {
                assert!(
                    headers.contains_key(*name),
                    "{name} should stay in {input:?}"
                );
            }
            for name in *gone {
                assert!(
                    !headers.contains_key(*name),
                    "{name} should go from {input:?}"
                );
            }
        }
    }

    #[test]
    fn forwarded_for_is_appended() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let cases = [
            (vec![], "10.1.2.3"),
            (vec!["1.1.1.1"], "1.1.1.1, 10.1.2.3"),
            (
                vec!["1.1.1.1, 2.2.2.2", "3.3.3.3"],
                "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3",
            ),
        ];
        for (existing, want) in cases {
            let pairs: Vec<(&str, &str)> =
                existing.iter().map(|v| ("x-forwarded-for", *v)).collect();
            let mut headers = map(&pairs);
            append_forwarded_for(&mut headers, ip);
            assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
            assert_eq!(headers["x-forwarded-for"], want);
        }
    }

    #[test]
    fn addresses_are_written_as_their_display_text() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "9.10.99.100",
            "255.255.255.255",
            "::1",
            "2001:db8::8:800:200c:417a",
            "::ffff:10.0.0.1",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(ip_value(ip), ip.to_string().as_str(), "{text}");
        }
    }

    #[test]
    fn via_names_the_received_version() {
        let mut headers = HeaderMap::new();
        append_via(&mut headers, Version::HTTP_2);
        assert_eq!(headers["via"], "2 restatus");
        append_via(&mut headers, Version::HTTP_11);
        assert_eq!(headers["via"], "2 restatus, 1.1 restatus");
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let ids = RequestIds::new();
        let kept = request_id(&map(&[("x-request-id", "abc-1")]), &ids);
        assert_eq!(kept, "abc-1");
        let made = request_id(&map(&[("x-request-id", "")]), &ids);
        let other = request_id(&HeaderMap::new(), &ids);
        assert_eq!(made.len(), 20);
        let want = format!("{:08x}{:012x}", ids.prefix, 1u64);
        assert_eq!(made.to_str().unwrap(), want, "prefix, then the counter");
        assert_ne!(made, other);
    }

    #[test]
    fn obs_text_values_keep_their_meaning() {
        let mut headers = HeaderMap::new();
        headers.append(
            CONNECTION,
            HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap(),
        );
        headers.append("x-secret", HeaderValue::from_static("1"));
        headers.append(
            &X_FORWARDED_FOR,
            HeaderValue::from_bytes(b"192.0.2.1, \xff").unwrap(),
        );
        headers.append(VIA, HeaderValue::from_bytes(b"1.1 caf\xe9").unwrap());
        strip_hop_by_hop(&mut headers);
        append_forwarded_for(&mut headers, "10.0.0.1".parse().unwrap());
        append_via(&mut headers, Version::HTTP_11);
        assert!(!headers.contains_key("x-secret"));
        assert_eq!(
            headers["x-forwarded-for"].as_bytes(),
            b"192.0.2.1, \xff, 10.0.0.1"
        );
        assert_eq!(headers["via"].as_bytes(), b"1.1 caf\xe9, 1.1 restatus");
    }
}
