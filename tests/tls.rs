//! TLS on both legs, with certificates made for each test run (none are committed).
mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use support::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority that issues certificates into a temporary folder.
struct Pki {
    dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("restatus-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("CA");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write CA");
        Pki { dir, ca }
    }

    fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Issues a certificate for `names`; returns the cert and key paths.
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("params");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.ca).expect("sign");
        let (cert_path, key_path) = (
            self.dir.join(format!("{file}.pem")),
            self.dir.join(format!("{file}-key.pem")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_tls(ca: CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).expect("root");
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

async fn tls_connect(
    addr: SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(sni.to_string()).expect("name");
    tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("handshake")
}

fn served_names(stream: &tokio_rustls::client::TlsStream<TcpStream>) -> String {
    let (_, session) = stream.get_ref();
    let cert = &session.peer_certificates().expect("peer certs")[0];
    String::from_utf8_lossy(cert.as_ref()).into_owned()
}

/// One GET over an established TLS stream, as HTTP/1.1 or HTTP/2 by the negotiated ALPN.
async fn get_over(
    stream: tokio_rustls::client::TlsStream<TcpStream>,
    path: &str,
) -> (u16, http::Version) {
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let request = Request::get(format!("https://localhost{path}"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = if h2 {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        sender.send_request(request).await.expect("h2 response")
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("h1 handshake");
        tokio::spawn(conn);
        let mut request = request;
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("localhost"),
        );
        sender.send_request(request).await.expect("h1 response")
    };
    let (status, version) = (response.status().as_u16(), response.version());
    response.into_body().collect().await.expect("body");
    (status, version)
}

fn tls_server_config(upstream: SocketAddr, tls: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
header_timeout = "500ms"
{tls}

[[upstreams]]
name = "backend"
targets = ["http://{upstream}"]

[[routes]]
name = "main"
upstream = "backend"
{extra}
"#
    )
}

fn cert_block(cert: &Path, key: &Path) -> String {
    format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

/// Starts a proxy from config text and returns it with its HTTPS address.
async fn spawn_tls_proxy(text: &str) -> (TestProxy, SocketAddr) {
    let proxy = spawn_proxy(text).await;
    let tls = proxy.tls.expect("the proxy has an HTTPS listener");
    (proxy, tls)
}

#[tokio::test]
async fn https_clients_over_http1_and_h2_reach_a_plain_upstream() {
    let pki = Pki::new("alpn");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let upstream = fixed_upstream(200, "{}").await;
    let (_proxy, addr) = spawn_tls_proxy(&tls_server_config(
        upstream.addr,
        &cert_block(&cert, &key),
        "",
    ))
    .await;
    for (alpn, version) in [
        (&b"http/1.1"[..], http::Version::HTTP_11),
        (&b"h2"[..], http::Version::HTTP_2),
    ] {
        let stream = tls_connect(addr, "localhost", client_tls(pki.ca_der(), &[alpn])).await;
        assert_eq!(
            stream.get_ref().1.alpn_protocol(),
            Some(alpn),
            "ALPN negotiated"
        );
        assert_eq!(get_over(stream, "/items").await, (200, version));
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].headers["x-forwarded-proto"], "https");
}

#[tokio::test]
async fn sni_picks_the_certificate_for_the_name() {
    let pki = Pki::new("sni");
    let (default_cert, default_key) = pki.issue("default", &["default.test"]);
    let (a_cert, a_key) = pki.issue("a", &["a.test"]);
    let (b_cert, b_key) = pki.issue("b", &["b.test"]);
    let upstream = fixed_upstream(200, "{}").await;
    let tls = format!(
        "{}\n[[server.tls.certs]]\nhost = \"a.test\"\ncert = \"{}\"\nkey = \"{}\"\n\n[[server.tls.certs]]\nhost = \"B.test\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_block(&default_cert, &default_key),
        a_cert.display(),
        a_key.display(),
        b_cert.display(),
        b_key.display()
    );
    let (_proxy, addr) = spawn_tls_proxy(&tls_server_config(upstream.addr, &tls, "")).await;
    for name in ["a.test", "b.test", "default.test"] {
        let stream = tls_connect(addr, name, client_tls(pki.ca_der(), &[b"http/1.1"])).await;
        assert!(
            served_names(&stream).contains(name),
            "certificate for {name}"
        );
    }
}

/// An HTTPS upstream with a certificate from `pki`, optionally requiring client certificates.
async fn https_upstream(pki: &Pki, require_client_cert: bool) -> SocketAddr {
    let (cert, key) = pki.issue("upstream", &["legacy.internal"]);
    let chain = restatus::tls::certificates(&cert).expect("chain");
    let key = restatus::tls::private_key(&key).expect("key");
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let config = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der()).expect("root");
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .expect("verifier");
        builder
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
    } else {
        builder.with_no_client_auth().with_single_cert(chain, key)
    }
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_certs = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map_or(0, |c| c.len());
                let service = service_fn(move |_request| async move {
                    Ok::<_, std::convert::Infallible>(json(
                        200,
                        &format!(r#"{{"client_certs":{client_certs}}}"#),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn https_upstream_config(upstream: SocketAddr, tls_keys: &str, route: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"

[[upstreams]]
name = "legacy"
targets = ["https://{upstream}"]
server_name = "legacy.internal"
{tls_keys}

[[routes]]
name = "main"
upstream = "legacy"
{route}
"#
    )
}

#[tokio::test]
async fn https_upstream_with_a_private_ca() {
    let pki = Pki::new("upstream");
    let upstream = https_upstream(&pki, false).await;
    let keys = format!("ca = \"{}\"", pki.ca_path().display());
    let proxy = spawn_proxy(&https_upstream_config(upstream, &keys, "")).await;
    let reply = get(&proxy.url("/items")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["client_certs"], 0);
}

#[tokio::test]
async fn an_upstream_certificate_from_an_unknown_ca_is_a_502() {
    let (real, other) = (Pki::new("real"), Pki::new("other"));
    let upstream = https_upstream(&real, false).await;
    let keys = format!("ca = \"{}\"", other.ca_path().display());
    let proxy = spawn_proxy(&https_upstream_config(
        upstream,
        &keys,
        "profile = \"none\"",
    ))
    .await;
    let reply = get(&proxy.url("/items")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("x-restatus-source"), Some("proxy"));
    let error = reply.json()["error"].as_str().expect("error").to_string();
    assert!(
        error.contains("TLS with the upstream failed: the upstream's certificate was refused: it is not signed by a CA this upstream trusts (see `ca`)"),
        "{error}"
    );
    // Behind the documented profile the client sees 500, and the record says the proxy made it.
    let proxy = spawn_proxy(&https_upstream_config(upstream, &keys, "")).await;
    assert_eq!(get(&proxy.url("/items")).await.status, 500);
    let records = proxy.records();
    assert_eq!(records[0]["upstream_status"], 502);
    assert_eq!(records[0]["source"], "proxy");
}

#[tokio::test]
async fn mutual_tls_to_the_upstream() {
    let pki = Pki::new("mtls");
    let upstream = https_upstream(&pki, true).await;
    let ca = format!("ca = \"{}\"", pki.ca_path().display());
    // Without a client certificate the upstream refuses the handshake.
    let proxy = spawn_proxy(&https_upstream_config(upstream, &ca, "profile = \"none\"")).await;
    assert_eq!(get(&proxy.url("/x")).await.status, 502);
    let (cert, key) = pki.issue("restatus-client", &["restatus"]);
    let keys = format!(
        "{ca}\nclient_cert = \"{}\"\nclient_key = \"{}\"",
        cert.display(),
        key.display()
    );
    let proxy = spawn_proxy(&https_upstream_config(upstream, &keys, "")).await;
    let reply = get(&proxy.url("/x")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["client_certs"], 1);
}

#[tokio::test]
async fn reload_swaps_the_served_certificate_and_a_bad_file_keeps_the_old_one() {
    let pki = Pki::new("rotate");
    let (cert, key) = pki.issue("server", &["localhost", "old.test"]);
    let upstream = fixed_upstream(200, "{}").await;
    let file = pki.dir.join("restatus.toml");
    let text = tls_server_config(upstream.addr, &cert_block(&cert, &key), "");
    std::fs::write(&file, &text).expect("config");
    let (proxy, addr) = spawn_tls_proxy(&text).await;
    let client = client_tls(pki.ca_der(), &[b"http/1.1"]);
    assert!(
        served_names(&tls_connect(addr, "localhost", client.clone()).await).contains("old.test")
    );

    // Rotate: same paths, new contents.
    let (new_cert, new_key) = pki.issue("next", &["localhost", "new.test"]);
    std::fs::copy(&new_cert, &cert).expect("rotate cert");
    std::fs::copy(&new_key, &key).expect("rotate key");
    proxy.live.reload(&file).expect("reload");
    assert!(
        served_names(&tls_connect(addr, "localhost", client.clone()).await).contains("new.test")
    );

    // A broken key file at reload keeps the certificate in force, and says why.
    std::fs::write(&key, "not a key").expect("break key");
    let err = proxy.live.reload(&file).expect_err("bad key refused");
    assert!(
        err.to_string().contains(&key.display().to_string()),
        "{err}"
    );
    assert!(served_names(&tls_connect(addr, "localhost", client).await).contains("new.test"));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_disconnected() {
    let pki = Pki::new("stall");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let upstream = fixed_upstream(200, "{}").await;
    let (proxy, addr) = spawn_tls_proxy(&tls_server_config(
        upstream.addr,
        &cert_block(&cert, &key),
        "",
    ))
    .await;
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    // Half a ClientHello record header, then silence.
    tokio::io::AsyncWriteExt::write_all(&mut stalled, &[0x16, 0x03])
        .await
        .expect("write");
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("closed by header_timeout, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // Others are not affected.
    let stream = tls_connect(addr, "localhost", client_tls(pki.ca_der(), &[b"http/1.1"])).await;
    assert_eq!(get_over(stream, "/").await.0, 200);
    let metrics = proxy.live.metrics.encode(0);
    assert!(
        metrics.contains("restatus_tls_handshake_failures_total 1"),
        "{metrics}"
    );
}

#[test]
fn tls_config_errors_name_the_file() {
    let pki = Pki::new("errors");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let (_, other_key) = pki.issue("other", &["other"]);
    let bad_pem = pki.dir.join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let missing = pki.dir.join("missing.pem");
    let upstream: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    // Each error names the key of the file it is about.
    let cases = [
        (
            cert_block(&missing, &key),
            missing.display().to_string(),
            "cert",
        ),
        (
            cert_block(&cert, &missing),
            missing.display().to_string(),
            "key",
        ),
        (
            cert_block(&cert, &other_key),
            "does not match".to_string(),
            "key",
        ),
        (
            cert_block(&bad_pem, &key),
            bad_pem.display().to_string(),
            "cert",
        ),
        // A certificate given as the key.
        (cert_block(&cert, &cert), cert.display().to_string(), "key"),
    ];
    for (tls, expected, key) in cases {
        let err = restatus::config::Config::parse(
            Path::new("tls.toml"),
            &tls_server_config(upstream, &tls, ""),
        )
        .expect_err("invalid TLS files are refused");
        let text = err.to_string();
        assert!(text.contains(&expected), "{text}");
        assert!(
            text.starts_with("tls.toml:"),
            "names the config file and line: {text}"
        );
        assert_eq!(err.key, format!("server.tls.{key}"), "{text}");
    }
    let upstream_ca =
        https_upstream_config(upstream, &format!("ca = \"{}\"", missing.display()), "");
    let err = restatus::config::Config::parse(Path::new("tls.toml"), &upstream_ca)
        .expect_err("missing CA");
    assert!(err.to_string().contains("missing.pem"), "{err}");
}

#[test]
fn two_certificates_for_one_host_are_refused() {
    let pki = Pki::new("twice");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let upstream: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let entry = |host: &str| {
        format!(
            "[[server.tls.certs]]\nhost = \"{host}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            cert.display(),
            key.display()
        )
    };
    let tls = format!(
        "{}{}{}",
        cert_block(&cert, &key),
        entry("other.test"),
        entry("OTHER.test")
    );
    let err = restatus::config::Config::parse(
        Path::new("tls.toml"),
        &tls_server_config(upstream, &tls, ""),
    )
    .expect_err("one host, two certificates");
    assert_eq!(err.key, "server.tls.certs[1].host", "{err}");
    assert!(
        err.to_string().contains("has a certificate already"),
        "{err}"
    );
}

#[test]
fn an_https_listener_may_not_share_a_port_with_the_others() {
    let pki = Pki::new("clash");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let upstream: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let tls = cert_block(&cert, &key).replace("127.0.0.1:0", "0.0.0.0:18443");
    let base = tls_server_config(upstream, &tls, "");
    let plain = base.replace(
        "listen = \"127.0.0.1:0\"\nheader",
        "listen = \"127.0.0.1:18443\"\nheader",
    );
    let err = restatus::config::Config::parse(Path::new("tls.toml"), &plain)
        .expect_err("same port as the plain listener");
    assert_eq!(err.key, "server.tls.listen", "{err}");
    assert!(
        err.to_string()
            .contains("would share the port of server.listen 127.0.0.1:18443"),
        "{err}"
    );
    let admin = format!("{base}\n[admin]\nlisten = \"127.0.0.1:18443\"\n");
    let err = restatus::config::Config::parse(Path::new("tls.toml"), &admin)
        .expect_err("same port as the admin listener");
    assert_eq!(err.key, "admin.listen", "{err}");
}

#[test]
fn check_summary_names_the_https_listener() {
    let pki = Pki::new("summary");
    let (cert, key) = pki.issue("server", &["localhost"]);
    let upstream: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let config = restatus::config::Config::parse(
        Path::new("tls.toml"),
        &tls_server_config(upstream, &cert_block(&cert, &key), ""),
    )
    .expect("valid TLS config");
    let summary = restatus::config::summary(&config);
    let https = config.server.tls.as_ref().expect("tls").listen[0];
    assert!(
        summary.contains(&format!("https listeners: {https}")),
        "{summary}"
    );
}
