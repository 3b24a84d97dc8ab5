//! Compiling `[server.tls]` and the TLS keys of `[[upstreams]]`: certificate and key files are
//! read and checked here, so `check`, start and reload all name a bad file.

use super::raw::{RawServerTls, RawUpstream};
use super::{resolve, ConfigError, Locator};
use crate::tls::{self, MinVersion};
use rustls::pki_types::ServerName;
use rustls::sign::CertifiedKey;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::Spanned;

/// HTTPS listeners and the certificates they serve.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub listen: Vec<SocketAddr>,
    pub config: Arc<rustls::ServerConfig>,
}

/// How restatus speaks TLS to one upstream.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name verified (and sent as SNI) instead of the target's host.
    pub server_name: Option<ServerName<'static>>,
    /// Identifies the files and their contents, so a reload keeps an unchanged upstream.
    fingerprint: u64,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint && self.server_name == other.server_name
    }
}

fn path(raw: &Spanned<String>, at: &Locator) -> PathBuf {
    resolve(at.file, raw.get_ref())
}

/// Loads a certificate chain and its key, each error at the key of the file it is about: an
/// unreadable or wrong file at its own key, a key that does not match its certificate at the
/// key's.
fn key_pair(
    cert: &Spanned<String>,
    key: &Spanned<String>,
    at: &Locator,
) -> Result<Arc<CertifiedKey>, ConfigError> {
    let (cert_path, key_path) = (path(cert, at), path(key, at));
    tls::certificates(&cert_path).map_err(|err| at.at(cert.span(), err))?;
    tls::private_key(&key_path).map_err(|err| at.at(key.span(), err))?;
    warn_if_exposed(&key_path);
    tls::certified_key(&cert_path, &key_path).map_err(|err| at.at(key.span(), err))
}

/// Whether a private key file is open to its group or to others (any of the Unix mode bits
/// 0o077). Such a key still loads, with a warning: refusing it would break mounts that cannot
/// set modes, and a key that cannot be read at all is already an error naming the file.
pub fn key_is_exposed(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

fn warn_if_exposed(key: &Path) {
    if key_is_exposed(key) {
        tracing::warn!(
            key = %key.display(),
            "private key file is accessible to its group or others; restrict it (chmod 600)"
        );
    }
}

pub fn compile_server_tls(
    raw: Option<&RawServerTls>,
    at: &Locator,
) -> Result<Option<ServerTls>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let listen = super::parse_listen(&raw.listen, at)?;
    let min = match raw
        .min_version
        .as_ref()
        .map(|v| (v.get_ref().as_str(), v.span()))
    {
        None | Some(("1.2", _)) => MinVersion::Tls12,
        Some(("1.3", _)) => MinVersion::Tls13,
        Some((other, span)) => {
            return Err(at.at(
                span,
                format!("min_version `{other}`: use \"1.2\" or \"1.3\""),
            ))
        }
    };
    let mut by_host = Vec::with_capacity(raw.certs.len());
    for sni in &raw.certs {
        let key = key_pair(&sni.cert, &sni.key, at)?;
        let host = sni.host.get_ref().trim().to_ascii_lowercase();
        if by_host.iter().any(|(seen, _)| *seen == host) {
            return Err(at.at(
                sni.host.span(),
                format!(
                    "host `{host}` has a certificate already (host names are matched in any case)"
                ),
            ));
        }
        by_host.push((host, key));
    }
    let default = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => key_pair(cert, key, at)?,
        (None, None) => match by_host.first() {
            Some((_, key)) => key.clone(),
            None => {
                return Err(at.at(
                    raw.listen.span(),
                    "[server.tls] needs `cert` and `key`, or at least one [[server.tls.certs]]",
                ))
            }
        },
        (Some(one), None) | (None, Some(one)) => {
            return Err(at.at(one.span(), "give both `cert` and `key`"))
        }
    };
    let config =
        tls::server_config(default, by_host, min).map_err(|err| at.at(raw.listen.span(), err))?;
    Ok(Some(ServerTls { listen, config }))
}

/// The TLS settings of an upstream, when any target is `https://` (or TLS keys are given).
pub fn compile_upstream_tls(
    raw: &RawUpstream,
    any_https: bool,
    at: &Locator,
) -> Result<Option<UpstreamTls>, ConfigError> {
    if !any_https {
        if let Some(key) = [&raw.ca, &raw.server_name, &raw.client_cert, &raw.client_key]
            .into_iter()
            .flatten()
            .next()
        {
            return Err(at.at(key.span(), "TLS settings need an https:// target"));
        }
        return Ok(None);
    }
    let ca = raw.ca.as_ref().map(|ca| (path(ca, at), ca.span()));
    let client = match (&raw.client_cert, &raw.client_key) {
        (Some(cert), Some(key)) => {
            key_pair(cert, key, at)?;
            Some((path(cert, at), path(key, at), cert.span()))
        }
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => {
            return Err(at.at(one.span(), "give both `client_cert` and `client_key`"))
        }
    };
    let config = tls::client_config(
        ca.as_ref().map(|(p, _)| p.as_path()),
        client.as_ref().map(|(c, k, _)| (c.as_path(), k.as_path())),
    )
    .map_err(|err| {
        // Point at the key whose file the message names.
        let ca_named = ca
            .as_ref()
            .filter(|(p, _)| err.contains(&format!("`{}`", p.display())));
        let span = match (ca_named, &client) {
            (Some((_, span)), _) | (None, Some((_, _, span))) => span.clone(),
            (None, None) => raw.targets.span(),
        };
        at.at(span, err)
    })?;
    let server_name = match &raw.server_name {
        None => None,
        Some(name) => Some(ServerName::try_from(name.get_ref().clone()).map_err(|_| {
            at.at(
                name.span(),
                format!("`{}` is not a server name", name.get_ref()),
            )
        })?),
    };
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in ca
        .iter()
        .map(|(p, _)| p)
        .chain(client.iter().flat_map(|(c, k, _)| [c, k]))
    {
        file.hash(&mut hasher);
        std::fs::read(file).unwrap_or_default().hash(&mut hasher);
    }
    Ok(Some(UpstreamTls {
        config,
        server_name,
        fingerprint: hasher.finish(),
    }))
}
