//! TLS with rustls (ring): certificates for clients, chosen by SNI, with ALPN `h2` and
//! `http/1.1`; and client configurations for HTTPS upstreams that trust the platform's roots
//! plus an optional private CA, with an optional client certificate.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The one crypto provider restatus uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The lowest TLS version offered to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinVersion {
    Tls12,
    Tls13,
}

/// Reads a PEM certificate chain.
pub fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|err| format!("cannot read `{}`: {}", path.display(), pem_error(&err)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| format!("`{}` is not valid PEM: {}", path.display(), pem_error(&err)))?;
    if chain.is_empty() {
        return Err(format!("`{}` holds no PEM certificate", path.display()));
    }
    Ok(chain)
}

/// Reads a PEM private key: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => {
            format!("`{}` holds no PEM private key", path.display())
        }
        other => format!(
            "cannot read the key `{}`: {}",
            path.display(),
            pem_error(&other)
        ),
    })
}

fn pem_error(err: &rustls::pki_types::pem::Error) -> String {
    match err {
        rustls::pki_types::pem::Error::Io(io) => io.to_string(),
        other => format!("{other:?}"),
    }
}

/// A certificate chain and its key, checked to belong together.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = certificates(cert)?;
    let key_der = private_key(key)?;
    CertifiedKey::from_der(chain, key_der, &provider())
        .map(Arc::new)
        .map_err(|err| match err {
            rustls::Error::InconsistentKeys(_) => format!(
                "the key `{}` does not match the certificate `{}`",
                key.display(),
                cert.display()
            ),
            other => format!("`{}` / `{}`: {other}", cert.display(), key.display()),
        })
}

/// Picks the certificate for the name the client asked for; the default one otherwise.
#[derive(Debug)]
struct SniResolver {
    by_host: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello
            .server_name()
            .and_then(|name| self.by_host.get(&name.to_ascii_lowercase()));
        Some(named.unwrap_or(&self.default).clone())
    }
}

/// The server side: `default` for clients without a matching SNI name, `by_host` otherwise.
pub fn server_config(
    default: Arc<CertifiedKey>,
    by_host: Vec<(String, Arc<CertifiedKey>)>,
    min: MinVersion,
) -> Result<Arc<ServerConfig>, String> {
    let versions: &[&rustls::SupportedProtocolVersion] = match min {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let resolver = SniResolver {
        by_host: by_host.into_iter().collect(),
        default,
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(|err| err.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The platform's trusted roots, read once per process.
fn platform_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for err in &found.errors {
            tracing::debug!(error = %err, "while reading the platform's root certificates");
        }
        found.certs
    })
}

/// The upstream side: platform roots plus `ca`, and a client certificate when given.
pub fn client_config(
    ca: Option<&Path>,
    client: Option<(&Path, &Path)>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(platform_roots().iter().cloned());
    if let Some(ca) = ca {
        for cert in certificates(ca)? {
            roots
                .add(cert)
                .map_err(|err| format!("`{}`: not a usable CA certificate: {err}", ca.display()))?;
        }
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            // Checked here so that a mismatch is named at load rather than at the handshake.
            certified_key(cert, key)?;
            builder
                .with_client_auth_cert(certificates(cert)?, private_key(key)?)
                .map_err(|err| format!("`{}`: {err}", cert.display()))?
        }
    };
    Ok(Arc::new(config))
}
