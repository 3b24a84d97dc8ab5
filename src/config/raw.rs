//! The serde mirror of the TOML file: every table and key a user may write, nothing more.

use super::units::{ByteSize, HumanDuration, Timeout};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::marker::PhantomData;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub log: RawLog,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub deviations: RawDeviations,
    #[serde(default)]
    pub rules: Vec<crate::rules::raw::RawRule>,
    #[serde(default)]
    pub checks: Vec<crate::rules::raw::RawCheck>,
    pub admin: Option<Spanned<RawAdmin>>,
    #[serde(default)]
    pub cors: RawCors,
}

/// `[cors]`: which pages may read the answers restatus makes itself.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCors {
    #[serde(default)]
    pub allow_origins: Vec<Spanned<String>>,
    pub allow_credentials: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeviations {
    pub mode: Option<Mode>,
    pub sink: Option<Spanned<String>>,
    pub original_status_header: Option<Spanned<String>>,
}

/// Whether rules change responses or only record what they would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<OneOrMany<String>>>,
    pub workers: Option<Spanned<usize>>,
    pub header_timeout: Option<Timeout>,
    pub idle_timeout: Option<Timeout>,
    pub body_timeout: Option<Timeout>,
    pub send_timeout: Option<Timeout>,
    pub shutdown_grace: Option<HumanDuration>,
    pub max_header_bytes: Option<Spanned<ByteSize>>,
    #[serde(default)]
    pub watch_config: bool,
    pub tls: Option<RawServerTls>,
}

/// `[server.tls]`: HTTPS listeners and their certificates.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    pub listen: Spanned<OneOrMany<String>>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    pub min_version: Option<Spanned<String>>,
    #[serde(default)]
    pub certs: Vec<RawSniCert>,
}

/// `[[server.tls.certs]]`: a certificate served to clients asking for `host` by SNI.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    pub host: Spanned<String>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub format: Option<LogFormat>,
    pub level: Option<Spanned<String>>,
    pub access: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub request_body: Option<ByteSize>,
    pub held_bodies: Option<Spanned<ByteSize>>,
    pub uri: Option<Spanned<ByteSize>>,
    pub inspect_body: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub name: Spanned<String>,
    pub targets: Spanned<Vec<Spanned<String>>>,
    pub connect_timeout: Option<Timeout>,
    pub response_timeout: Option<Timeout>,
    pub host: Option<HostMode>,
    pub expect: Option<ExpectMode>,
    pub expect_timeout: Option<HumanDuration>,
    pub idle_connections: Option<usize>,
    pub idle_timeout: Option<Timeout>,
    pub reuse_after_body: Option<ReuseAfterBody>,
    pub chunked_requests: Option<bool>,
    pub max_connections: Option<Spanned<usize>>,
    pub queue_timeout: Option<HumanDuration>,
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
}

/// How `Expect: 100-continue` requests are handled toward an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectMode {
    /// Send `Expect` upstream and relay its `100` (or its early final answer) to the client.
    #[default]
    Forward,
    /// Strip `Expect`; the proxy itself answers `100` once its checks pass.
    Local,
}

/// Who may reuse an upstream connection whose request carried a body (`reuse_after_body`).
/// A service that answers without reading a body reads it as the next request on the
/// connection (a CL.0 desync); the answer to it goes to whoever sends next on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReuseAfterBody {
    /// `true`: any request, from any client.
    Any,
    /// `"same_client"`: only requests from the client connection whose request it carried.
    #[default]
    SameClient,
    /// `false`: no one; the connection is closed after its answer.
    Never,
}

impl<'de> Deserialize<'de> for ReuseAfterBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Choice;
        impl Visitor<'_> for Choice {
            type Value = ReuseAfterBody;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"same_client\"")
            }
            fn visit_bool<E: serde::de::Error>(self, any: bool) -> Result<Self::Value, E> {
                Ok(match any {
                    true => ReuseAfterBody::Any,
                    false => ReuseAfterBody::Never,
                })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Self::Value, E> {
                // In any case, like the other named values.
                match text.to_ascii_lowercase().as_str() {
                    "same_client" => Ok(ReuseAfterBody::SameClient),
                    "true" => Ok(ReuseAfterBody::Any),
                    "false" => Ok(ReuseAfterBody::Never),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(text), &self)),
                }
            }
        }
        deserializer.deserialize_any(Choice)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostMode {
    /// Forward the client's Host header unchanged.
    #[default]
    Preserve,
    /// Send the target's authority as Host.
    Target,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub upstream: Spanned<String>,
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub strip_prefix: bool,
    pub profile: Option<Spanned<String>>,
    pub mode: Option<Mode>,
    #[serde(default)]
    pub validate_json: bool,
}

/// A value that may be written either alone or as a list: `listen = "a"` or `listen = ["a", "b"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(OneOrManyVisitor(PhantomData))
    }
}

struct OneOrManyVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
    type Value = OneOrMany<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("one value or a list of values")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(OneOrMany(items))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        let one = T::deserialize(serde::de::value::StrDeserializer::<E>::new(v))?;
        Ok(OneOrMany(vec![one]))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
        let one = T::deserialize(serde::de::value::I64Deserializer::<E>::new(v))?;
        Ok(OneOrMany(vec![one]))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
        let one = T::deserialize(serde::de::value::U64Deserializer::<E>::new(v))?;
        Ok(OneOrMany(vec![one]))
    }
}
