//! The serde mirror of `[[rules]]` and `[[checks]]` tables.
//!
//! Tables a user may write with dotted keys (`when.method = "GET"`) or as `[rules.when]` are
//! plain structs: TOML gives such tables no span, so `Spanned` could not hold them. Errors
//! point at the spans of the keys and values inside instead.

use crate::config::raw::OneOrMany;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ops::Range;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    pub description: Option<String>,
    pub when: RawWhen,
    pub then: RawThen,
}

/// Conditions shared by rules and checks; every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub method: Option<Spanned<OneOrMany<String>>>,
    pub path: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub status: Option<Spanned<OneOrMany<StatusItem>>>,
    pub request_header: Option<HeaderConditions>,
    pub response_header: Option<HeaderConditions>,
    pub body_regex: Option<Spanned<String>>,
    pub body_json: Option<RawBodyJson>,
}

impl RawWhen {
    /// Where the first condition on the response is written, if there is one.
    pub fn response_side_span(&self) -> Option<Range<usize>> {
        let header = self.response_header.as_ref().and_then(|m| m.keys().next());
        [
            self.status.as_ref().map(Spanned::span),
            header.map(Spanned::span),
            self.body_regex.as_ref().map(Spanned::span),
            self.body_json.as_ref().map(|j| j.pointer.span()),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|span| span.start)
    }
}

/// Header name (with its place in the file) -> condition.
pub type HeaderConditions = BTreeMap<Spanned<String>, RawHeaderCondition>;

/// `200`, `"5xx"` or `"500-503"`.
#[derive(Debug, Clone)]
pub enum StatusItem {
    Code(i64),
    Text(String),
}

// Written out rather than `#[serde(untagged)]`, whose error names the Rust type.
impl<'de> Deserialize<'de> for StatusItem {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match toml::Value::deserialize(deserializer)? {
            toml::Value::Integer(code) => Ok(StatusItem::Code(code)),
            toml::Value::String(text) => Ok(StatusItem::Text(text)),
            other => Err(serde::de::Error::custom(format!(
                "a status is a code like 404, or a string like \"4xx\" or \"500-503\", not {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Debug)]
pub enum RawHeaderCondition {
    Exact(String),
    Test(RawHeaderTest),
}

impl<'de> Deserialize<'de> for RawHeaderCondition {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match toml::Value::deserialize(deserializer)? {
            toml::Value::String(text) => Ok(RawHeaderCondition::Exact(text)),
            table @ toml::Value::Table(_) => RawHeaderTest::deserialize(table)
                .map(RawHeaderCondition::Test)
                .map_err(|err| D::Error::custom(format!("header test: {}", err.message()))),
            other => Err(D::Error::custom(format!(
                "a header test is a string (the exact value) or a table like {{ regex = \"^a\" }} or {{ present = true }}, not {}",
                other.type_str()
            ))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderTest {
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBodyJson {
    pub pointer: Spanned<String>,
    pub equals: Option<Spanned<toml::Value>>,
    pub exists: Option<bool>,
    #[serde(rename = "in")]
    pub one_of: Option<Spanned<Vec<toml::Value>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawThen {
    pub status: Spanned<i64>,
    pub headers: Option<RawHeaderEdits>,
    pub body: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeaderEdits {
    #[serde(default)]
    pub set: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub remove: Vec<Spanned<String>>,
}

/// A `[[checks]]` table: request-side conditions decided before the body is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: Spanned<String>,
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    pub description: Option<String>,
    pub when: RawWhen,
    pub then: RawThen,
}

/// The embedded profile file: a list of rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub rules: Vec<RawRule>,
}
