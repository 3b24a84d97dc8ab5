//! The serde mirror of `[[rules]]` and `[[checks]]` tables.

use crate::config::raw::OneOrMany;
use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    pub description: Option<String>,
    pub when: Spanned<RawWhen>,
    pub then: Spanned<RawThen>,
}

/// Conditions shared by rules and checks; every condition given must hold.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    pub method: Option<Spanned<OneOrMany<String>>>,
    pub path: Option<Spanned<String>>,
    pub path_regex: Option<Spanned<String>>,
    pub status: Option<Spanned<OneOrMany<StatusItem>>>,
    pub request_header: Option<Spanned<BTreeMap<String, RawHeaderCondition>>>,
    pub response_header: Option<Spanned<BTreeMap<String, RawHeaderCondition>>>,
    pub body_regex: Option<Spanned<String>>,
    pub body_json: Option<Spanned<RawBodyJson>>,
}

/// `200`, `"5xx"` or `"500-503"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StatusItem {
    Code(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawHeaderCondition {
    Exact(String),
    Test(RawHeaderTest),
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
    pub pointer: String,
    pub equals: Option<toml::Value>,
    pub exists: Option<bool>,
    #[serde(rename = "in")]
    pub one_of: Option<Vec<toml::Value>>,
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
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A `[[checks]]` table: request-side conditions decided before the body is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub name: Spanned<String>,
    pub routes: Option<Spanned<Vec<Spanned<String>>>>,
    pub description: Option<String>,
    pub when: Spanned<RawWhen>,
    pub then: Spanned<RawThen>,
}

/// The embedded profile file: a list of rules.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    pub rules: Vec<RawRule>,
}
