//! Built-in profiles: the documented contract, shipped as `config/profiles/documented.toml`.

use super::raw::RawProfile;
use super::{compile_rule, Origin, Rule};
use crate::config::{ConfigError, Locator};
use std::path::Path;
use std::sync::Arc;

/// The documented profile's source, embedded at build time.
pub const DOCUMENTED_SOURCE: &str = include_str!("../../config/profiles/documented.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Documented,
    None,
}

impl Profile {
    pub fn parse(text: &str) -> Option<Profile> {
        match text {
            "documented" => Some(Profile::Documented),
            "none" => Some(Profile::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Documented => "documented",
            Profile::None => "none",
        }
    }

    /// The profile's rules, compiled.
    pub fn rules(self) -> Result<Vec<Arc<Rule>>, ConfigError> {
        match self {
            Profile::None => Ok(Vec::new()),
            Profile::Documented => compile_profile(
                DOCUMENTED_SOURCE,
                "config/profiles/documented.toml (built in)",
            ),
        }
    }
}

fn compile_profile(source: &str, name: &str) -> Result<Vec<Arc<Rule>>, ConfigError> {
    let at = Locator {
        file: Path::new(name),
        source,
    };
    let raw: RawProfile = toml::from_str(source).map_err(|e| at.from_toml(&e))?;
    raw.rules
        .iter()
        .map(|r| compile_rule(r, Origin::Profile, &at).map(Arc::new))
        .collect()
}
