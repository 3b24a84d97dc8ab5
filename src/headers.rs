//! Header work on forwarded messages, as pure functions over `HeaderMap`.

use http::header::{
    HeaderName, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION, CACHE_CONTROL, CONNECTION,
    CONTENT_LENGTH, COOKIE, HOST, LOCATION, SET_COOKIE, TE, TRANSFER_ENCODING, UPGRADE, VIA,
};
use http::{HeaderMap, Version};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) -> Present {
    strip(headers, None)
}

/// [`strip_hop_by_hop`] for an upstream's response, which also loses the fields restatus
/// sets on responses itself: `X-Restatus-Source` and the configured original-status field
/// (`original_status`). Clients and the service's owners read them as restatus's word (a
/// proxy-made answer, a rewritten status), so an upstream's own copy would mislead them.
pub fn strip_response(headers: &mut HeaderMap, original_status: Option<&HeaderName>) -> Present {
    strip(
        headers,
        Some(original_status.map_or("", HeaderName::as_str)),
    )
}

/// Both of the above: `own` is the original-status field's name (`""` for none) when
/// restatus's own fields go too. Inlined into each, so that a request's pass (`None`) tests
/// nothing more than it did before responses had their own.
#[inline(always)]
fn strip(headers: &mut HeaderMap, own: Option<&str>) -> Present {
    // One pass over the names finds which of these are there; only those are looked up again
    // (most messages carry none, or only `Connection: keep-alive`).
    let mut hops = [false; HOP_BY_HOP.len()];
    let (mut connection, mut close, mut mine) = (false, false, false);
    let mut present = Present::default();
    for name in headers.keys() {
        match classify(name.as_str()) {
            Some(Kind::Connection) => connection = true,
            Some(Kind::Close) => close = true,
            Some(Kind::HopByHop(i)) => hops[i] = true,
            Some(Kind::Via) => present.via = true,
            Some(Kind::ForwardedFor) => present.forwarded_for = true,
            Some(Kind::ForwardedProto) => present.forwarded_proto = true,
            Some(Kind::ForwardedHost) => present.forwarded_host = true,
            Some(Kind::ForwardedPrefix) => present.forwarded_prefix = true,
            Some(Kind::RequestId) => present.request_id = true,
            Some(Kind::AllowOrigin) => present.allow_origin = true,
            Some(Kind::Source) => mine |= own.is_some(),
            None => mine |= own.is_some_and(|own| own == name.as_str()),
        }
    }
    if mine {
        headers.remove(&X_RESTATUS_SOURCE);
        if let Some(name) = own.filter(|name| !name.is_empty()) {
            headers.remove(name);
        }
    }
    if hops[TRANSFER_ENCODING_AT] {
        headers.remove(CONTENT_LENGTH);
    }
    if connection {
        remove_named(headers, close);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(hops).filter(|(_, there)| *there) {
        headers.remove(*name);
    }
    present
}

/// Which of the fields the proxy sets or extends a message held when its hop-by-hop fields
/// were stripped; one a `Connection` option named is gone by then, so these say "maybe".
#[derive(Clone, Copy, Debug, Default)]
pub struct Present {
    pub via: bool,
    pub forwarded_for: bool,
    pub forwarded_proto: bool,
    pub forwarded_host: bool,
    pub forwarded_prefix: bool,
    pub request_id: bool,
    /// `Access-Control-Allow-Origin`: the service lets a page read this response.
    pub allow_origin: bool,
}

/// What a field name is to [`strip_hop_by_hop`].
enum Kind {
    Connection,
    /// A field named like the `close` option, which goes if `Connection` lists it.
    Close,
    /// A hop-by-hop field by definition, at this place in [`HOP_BY_HOP`].
    HopByHop(usize),
    Via,
    ForwardedFor,
    ForwardedProto,
    ForwardedHost,
    ForwardedPrefix,
    RequestId,
    /// `X-Restatus-Source`.
    Source,
    AllowOrigin,
}

/// Classifies a (lowercase) field name by its length first: most names are none of these,
/// and one or two comparisons settle each.
fn classify(name: &str) -> Option<Kind> {
    let (kind, known) = match name.len() {
        2 => (Kind::HopByHop(2), "te"),
        3 => (Kind::Via, "via"),
        5 => (Kind::Close, "close"),
        7 => (Kind::HopByHop(4), "upgrade"),
        10 if name == "connection" => return Some(Kind::Connection),
        10 => (Kind::HopByHop(KEEP_ALIVE_AT), "keep-alive"),
        12 => (Kind::RequestId, "x-request-id"),
        15 => (Kind::ForwardedFor, "x-forwarded-for"),
        16 if name == "x-forwarded-host" => return Some(Kind::ForwardedHost),
        16 => (Kind::HopByHop(1), "proxy-connection"),
        17 if name == "x-forwarded-proto" => return Some(Kind::ForwardedProto),
        17 if name == "x-restatus-source" => return Some(Kind::Source),
        17 => (Kind::HopByHop(TRANSFER_ENCODING_AT), "transfer-encoding"),
        18 if name == "x-forwarded-prefix" => return Some(Kind::ForwardedPrefix),
        18 => (Kind::HopByHop(6), "proxy-authenticate"),
        19 => (Kind::HopByHop(5), "proxy-authorization"),
        27 => (Kind::AllowOrigin, "access-control-allow-origin"),
        _ => return None,
    };
    (name == known).then_some(kind)
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
        for token in crate::wire::value_tokens(value.as_bytes()) {
            if token.eq_ignore_ascii_case(b"keep-alive") {
                continue;
            }
            if token.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if let Ok(name) = HeaderName::from_bytes(token) {
                if !is_end_to_end(&name) {
                    named.push(name);
                }
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

/// Fields meant for every recipient, which a `Connection` option cannot remove. RFC 9110
/// §7.6.1 forbids naming such a field as an option (its example is `Cache-Control`); a client
/// that does is not trusted with it, since `Connection: X-Forwarded-For` would strip the
/// address a proxy in front added, and `Connection: Host` the name a route was chosen by.
fn is_end_to_end(name: &HeaderName) -> bool {
    static END_TO_END: [HeaderName; 8] = [
        HOST,
        AUTHORIZATION,
        COOKIE,
        SET_COOKIE,
        CACHE_CONTROL,
        LOCATION,
        HeaderName::from_static("forwarded"),
        HeaderName::from_static("x-real-ip"),
    ];
    let text = name.as_str();
    END_TO_END.contains(name)
        || text.starts_with("content-")
        || text.starts_with("x-forwarded-")
        || name == X_REQUEST_ID
}

/// Whether a field may be relayed in a trailer section. RFC 9110 §6.5.1: fields that frame the
/// message, route it, authenticate, modify the request, control the response or describe the
/// content must be known before the content, so they may not come after it; a recipient that
/// merged them (§6.5.2) could reframe, reroute or re-authenticate a message after the proxy
/// judged it. Hop-by-hop fields, the fields a proxy sets on its hop and the end-to-end ones a
/// `Connection` option may not remove go too. The rest (checksums, timings, gRPC's
/// `grpc-status`) pass.
pub fn trailer_allowed(name: &HeaderName) -> bool {
    static HEAD_ONLY: [&str; 9] = [
        "age",
        "expect",
        "expires",
        "max-forwards",
        "range",
        "retry-after",
        "trailer",
        "vary",
        "www-authenticate",
    ];
    let text = name.as_str();
    !(is_end_to_end(name)
        || classify(text).is_some()
        || HEAD_ONLY.contains(&text)
        || text.starts_with("if-")
        || text.starts_with("x-restatus-"))
}

/// A field named like the `close` option goes with it.
static CLOSE: HeaderName = HeaderName::from_static("close");

/// The fields that are hop-by-hop by definition, besides `Connection`; [`classify`] knows
/// their places.
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

/// Appends this hop to `Via` (RFC 9110 §7.6.3), naming the protocol version received.
/// `present`: the map may hold a `Via` already; if not, it is not looked up.
pub fn append_via(headers: &mut HeaderMap, received: Version, present: bool) {
    let hop = via_hop(received);
    if !present || !headers.contains_key(VIA) {
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

/// What this hop puts in a forwarded request's X-Forwarded-* and request id fields.
pub struct ThisHop<'a> {
    pub client: IpAddr,
    pub https: bool,
    /// The host the client asked for, if any.
    pub host: Option<&'a HeaderValue>,
    pub received: Version,
    pub request_id: &'a HeaderValue,
}

/// The fields the proxy adds to a forwarded request that did not have them; the upstream
/// client writes them after the request's own, so they cost no insertion into its map.
#[derive(Default)]
pub struct Added {
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
    forwarded_host: Option<HeaderValue>,
    via: Option<HeaderValue>,
    request_id: Option<HeaderValue>,
}

impl Added {
    pub fn iter(&self) -> impl Iterator<Item = (&HeaderName, &HeaderValue)> {
        [
            (&X_FORWARDED_FOR, &self.forwarded_for),
            (&X_FORWARDED_PROTO, &self.forwarded_proto),
            (&X_FORWARDED_HOST, &self.forwarded_host),
            (&VIA, &self.via),
            (&X_REQUEST_ID, &self.request_id),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, value.as_ref()?)))
    }
}

/// Sets what a forwarded request says of this hop: its client appended to
/// `X-Forwarded-For`, `X-Forwarded-Proto` and `-Host` replaced by what the proxy saw, this
/// hop appended to `Via` (RFC 9110 §7.6.3) and the request id. Fields the client sent are
/// extended or dropped in `headers` (`present` says which may be there); new ones are
/// returned.
pub fn forwarding(headers: &mut HeaderMap, present: Present, hop: &ThisHop<'_>) -> Added {
    let mut added = Added::default();
    if present.forwarded_for {
        append_forwarded_for(headers, hop.client);
    } else {
        added.forwarded_for = Some(ip_value(hop.client));
    }
    if present.via {
        append_via(headers, hop.received, true);
    } else {
        added.via = Some(HeaderValue::from_static(via_hop(hop.received)));
    }
    // Replaced, not extended: these describe this hop only.
    for (there, name) in [
        (present.forwarded_proto, &X_FORWARDED_PROTO),
        (present.forwarded_host, &X_FORWARDED_HOST),
        // A client's would tell a service that reads it where to send its redirects.
        (present.forwarded_prefix, &X_FORWARDED_PREFIX),
        (present.request_id, &X_REQUEST_ID),
    ] {
        if there {
            headers.remove(name);
        }
    }
    let proto = if hop.https { "https" } else { "http" };
    added.forwarded_proto = Some(HeaderValue::from_static(proto));
    added.forwarded_host = hop.host.cloned();
    added.request_id = Some(hop.request_id.clone());
    added
}

fn via_hop(received: Version) -> &'static str {
    match received {
        Version::HTTP_09 => "0.9 restatus",
        Version::HTTP_10 => "1.0 restatus",
        Version::HTTP_2 => "2 restatus",
        Version::HTTP_3 => "3 restatus",
        _ => "1.1 restatus",
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

/// On a route whose rules read response bodies, the client's `Accept-Encoding` (RFC 9110
/// §12.5.3) is narrowed to the codings restatus can inspect: `gzip` (`x-gzip`) and
/// `identity`, with their weights; `*` becomes `gzip` when `gzip` is not listed itself (RFC
/// 9110 §12.5.3: `*` stands for the codings not named). Otherwise a browser's `gzip, deflate,
/// br, zstd` gets a `br` body no rule can read, and body rules stop firing for it. When
/// nothing acceptable is left (none, or only `;q=0` ones), `identity` is asked for. A
/// request without the field is left alone.
pub fn narrow_accept_encoding(headers: &mut HeaderMap) {
    if !headers.contains_key(ACCEPT_ENCODING) {
        return;
    }
    let items: Vec<(&str, &str)> = (headers.get_all(ACCEPT_ENCODING).iter())
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|item| {
            let (coding, weight) = item.split_once(';').unwrap_or((item, ""));
            (coding.trim(), weight.trim())
        })
        .collect();
    let is_gzip =
        |coding: &str| coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip");
    let named_gzip = items.iter().any(|(coding, _)| is_gzip(coding));
    let mut kept: Vec<String> = Vec::new();
    let mut acceptable = false;
    for (coding, weight) in &items {
        let coding = match *coding {
            "*" if !named_gzip => "gzip",
            c if is_gzip(c) || c.eq_ignore_ascii_case("identity") => c,
            _ => continue,
        };
        acceptable |= !refused(weight);
        kept.push(match weight.is_empty() {
            true => coding.to_string(),
            false => format!("{coding};{weight}"),
        });
    }
    let value = match acceptable {
        false => HeaderValue::from_static("identity"),
        true => {
            HeaderValue::from_str(&kept.join(", ")).unwrap_or(HeaderValue::from_static("identity"))
        }
    };
    headers.insert(ACCEPT_ENCODING, value);
}

/// A weight of zero (`q=0`, `q=0.000`): "not acceptable" (RFC 9110 §12.4.2).
fn refused(weight: &str) -> bool {
    let Some((name, value)) = weight.split_once('=') else {
        return false;
    };
    name.trim().eq_ignore_ascii_case("q")
        && value.trim().strip_prefix('0').is_some_and(|rest| {
            rest.is_empty()
                || rest
                    .strip_prefix('.')
                    .is_some_and(|d| d.bytes().all(|b| b == b'0'))
        })
}

/// RFC 9113 §8.2.3: HTTP/2 clients may split `Cookie` into one field per cookie; before the
/// request goes to an HTTP/1.1 upstream, which may read only the first, they are joined with
/// `"; "` into one field.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for value in headers.get_all(COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_narrowed_to_inspectable_codings() {
        let cases = [
            ("gzip, deflate, br, zstd", "gzip"),
            // `*` stands for the codings not named: gzip is named, so `*` adds nothing.
            ("br;q=1.0, gzip;q=0.8, *;q=0.1", "gzip;q=0.8"),
            ("br, *;q=0.1", "gzip;q=0.1"),
            // Nothing acceptable left: identity rather than a list of refusals.
            ("identity;q=0, br", "identity"),
            ("gzip;q=0.000, br", "identity"),
            ("gzip;q=0.001, br", "gzip;q=0.001"),
            ("GZIP", "GZIP"),
            ("x-gzip, identity;q=0.5", "x-gzip, identity;q=0.5"),
            ("br", "identity"),
            ("*", "gzip"),
            ("", "identity"),
        ];
        for (sent, forwarded) in cases {
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static(sent));
            narrow_accept_encoding(&mut headers);
            assert_eq!(headers[ACCEPT_ENCODING], forwarded, "{sent}");
        }
        let mut two = HeaderMap::new();
        two.append(ACCEPT_ENCODING, HeaderValue::from_static("br"));
        two.append(ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        narrow_accept_encoding(&mut two);
        assert_eq!(two.get_all(ACCEPT_ENCODING).iter().count(), 1);
        assert_eq!(two[ACCEPT_ENCODING], "gzip");
        let mut none = HeaderMap::new();
        narrow_accept_encoding(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn every_name_is_classified_at_its_place() {
        for (at, name) in HOP_BY_HOP.iter().enumerate() {
            assert!(matches!(classify(name.as_str()), Some(Kind::HopByHop(i)) if i == at));
        }
        assert_eq!(*HOP_BY_HOP[TRANSFER_ENCODING_AT], TRANSFER_ENCODING);
        assert_eq!(*HOP_BY_HOP[KEEP_ALIVE_AT], KEEP_ALIVE);
        assert!(matches!(classify("connection"), Some(Kind::Connection)));
        assert!(matches!(classify("close"), Some(Kind::Close)));
        assert!(matches!(classify("via"), Some(Kind::Via)));
        assert!(matches!(
            classify("x-forwarded-for"),
            Some(Kind::ForwardedFor)
        ));
        assert!(matches!(
            classify("x-forwarded-proto"),
            Some(Kind::ForwardedProto)
        ));
        assert!(matches!(
            classify("x-forwarded-host"),
            Some(Kind::ForwardedHost)
        ));
        assert!(matches!(classify("x-request-id"), Some(Kind::RequestId)));
        assert!(matches!(classify("x-restatus-source"), Some(Kind::Source)));
        for other in [
            "host",
            "ten",
            "upgrades",
            "keep-alivf",
            "proxy-authorizatiom",
            "",
        ] {
            assert!(classify(other).is_none(), "{other}");
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
    fn restatus_fields_of_an_upstream_are_stripped() {
        let renamed = HeaderName::from_static("x-legacy-status");
        let mut headers = map(&[
            ("x-restatus-source", "proxy"),
            ("x-legacy-status", "500"),
            ("x-restatus-original-status", "404"),
            ("content-type", "text/plain"),
        ]);
        strip_response(&mut headers, Some(&renamed));
        let mut names: Vec<&str> = headers.keys().map(|n| n.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["content-type", "x-restatus-original-status"]);
        strip_response(&mut headers, None);
        assert_eq!(headers.len(), 2, "nothing of restatus's left to remove");
        let mut request = map(&[("x-restatus-source", "proxy"), ("x-legacy-status", "1")]);
        strip_hop_by_hop(&mut request);
        assert_eq!(request.len(), 2, "a request keeps them");
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
            let headers = forwarded(map(&pairs), ip);
            assert_eq!(headers.get_all("x-forwarded-for").iter().count(), 1);
            assert_eq!(headers["x-forwarded-for"], want);
        }
    }

    /// `headers` as they go upstream from a plain-HTTP/1.1 client at `client` that asked for
    /// host `h`, with request id `id`: the map and the added fields together.
    fn forwarded(mut headers: HeaderMap, client: IpAddr) -> HeaderMap {
        let present = strip_hop_by_hop(&mut headers);
        let host = HeaderValue::from_static("h");
        let hop = ThisHop {
            client,
            https: false,
            host: Some(&host),
            received: Version::HTTP_11,
            request_id: &HeaderValue::from_static("id"),
        };
        let added = forwarding(&mut headers, present, &hop);
        for (name, value) in added.iter() {
            headers.append(name, value.clone());
        }
        headers
    }

    #[test]
    fn each_forwarding_field_appears_once_with_this_hops_value() {
        let client: IpAddr = "10.0.0.9".parse().unwrap();
        let fresh = forwarded(map(&[("accept", "*/*")]), client);
        let sent = forwarded(
            map(&[
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "evil"),
                ("x-request-id", "theirs"),
                ("via", "1.0 edge"),
                ("x-forwarded-for", "192.0.2.7"),
            ]),
            client,
        );
        // A Connection option removes the client's field before it is extended.
        let named = forwarded(map(&[("connection", "via"), ("via", "1.0 x")]), client);
        let wants = [
            ("x-forwarded-for", "10.0.0.9", "192.0.2.7, 10.0.0.9"),
            ("x-forwarded-proto", "http", "http"),
            ("x-forwarded-host", "h", "h"),
            ("via", "1.1 restatus", "1.0 edge, 1.1 restatus"),
            ("x-request-id", "id", "id"),
        ];
        for (name, alone, extended) in wants {
            for (headers, want) in [(&fresh, alone), (&sent, extended), (&named, alone)] {
                let values: Vec<_> = headers.get_all(name).iter().collect();
                assert_eq!(values, [want], "{name} in {headers:?}");
            }
        }
        assert_eq!(fresh["accept"], "*/*");
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
        append_via(&mut headers, Version::HTTP_2, false);
        assert_eq!(headers["via"], "2 restatus");
        append_via(&mut headers, Version::HTTP_11, true);
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
        let headers = forwarded(headers, "10.0.0.1".parse().unwrap());
        assert!(!headers.contains_key("x-secret"));
        assert_eq!(
            headers["x-forwarded-for"].as_bytes(),
            b"192.0.2.1, \xff, 10.0.0.1"
        );
        assert_eq!(headers["via"].as_bytes(), b"1.1 caf\xe9, 1.1 restatus");
    }
}
