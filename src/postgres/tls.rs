//! TLS to PostgreSQL with rustls (ring provider), following libpq's
//! `sslmode` and `sslrootcert` URL parameters.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` and rejects
//! `sslrootcert`, so [`parse`] takes both parameters out of the URL and the
//! connector here does the certificate checks. The replication library
//! speaks only plain TCP or Unix sockets with the features we build it with
//! (its TLS feature would add a second crypto provider), so [`Relay`] carries
//! its connection to the server through a private Unix socket over the same
//! TLS code.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixListener};
use tokio::task::JoinHandle;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain connections only.
    Disable,
    /// TLS when the server offers it, unverified; plain otherwise (the default).
    Prefer,
    /// TLS, unverified (verified like `verify-ca` when `sslrootcert` is given).
    Require,
    /// TLS with a certificate signed by a trusted CA, for any host name.
    VerifyCa,
    /// TLS with a trusted certificate issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// The TLS settings of one database URL.
#[derive(Debug, Clone)]
pub struct PgTls {
    /// The requested mode.
    pub mode: SslMode,
    /// CA certificates (PEM) to trust; Mozilla's roots when absent or `system`.
    pub root_cert: Option<PathBuf>,
}

/// Splits `url` into the configuration tokio-postgres understands and the
/// TLS settings; accepts URLs (`postgres://…?sslmode=…`) and key=value strings.
pub fn parse(url: &str) -> Result<(tokio_postgres::Config, PgTls), String> {
    let mut tls = PgTls {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let mut take = |key: &str, value: &str| -> Result<bool, String> {
        match key {
            "sslmode" => {
                tls.mode = match value {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "invalid database URL: sslmode `{other}` is not one of disable, prefer, require, verify-ca, verify-full"
                        ))
                    }
                };
                Ok(true)
            }
            "sslrootcert" => {
                tls.root_cert = (value != "system").then(|| PathBuf::from(value));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    if !take(k, &percent_decode(v))? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (k, v) = token.split_once('=').unwrap_or((token, ""));
            if !take(k.trim(), v.trim_matches('\''))? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    let mut cfg: tokio_postgres::Config = rest
        .parse()
        .map_err(|e| format!("invalid database URL: {e}"))?;
    // Like libpq: PostgreSQL serves no TLS on Unix sockets, so sslmode
    // does not apply to them.
    let unix_only = !cfg.get_hosts().is_empty()
        && cfg
            .get_hosts()
            .iter()
            .all(|h| matches!(h, tokio_postgres::config::Host::Unix(_)));
    if unix_only {
        tls.mode = SslMode::Disable;
    }
    cfg.ssl_mode(match tls.mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    Ok((cfg, tls))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Opens one connection for `url`, with TLS as its `sslmode` asks.
pub async fn connect(
    url: &str,
) -> Result<
    (
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, RustlsStream<tokio_postgres::Socket>>,
    ),
    String,
> {
    let (cfg, tls) = parse(url)?;
    let make = MakeRustls::new(&tls)?;
    cfg.connect(make).await.map_err(|e| error_chain(&e))
}

/// An error with its causes: tokio-postgres and the pool print only their
/// outermost layer ("error performing TLS handshake"), which hides why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !text.contains(&s) {
            text = format!("{text}: {s}");
        }
        cause = c.source();
    }
    text
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(path: Option<&Path>) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    match path {
        Some(p) => {
            let certs = CertificateDer::pem_file_iter(p)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("reading sslrootcert {}: {e}", p.display()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!(
                    "sslrootcert {} holds no usable CA certificate",
                    p.display()
                ));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    Ok(roots)
}

/// The rustls client configuration for `tls`.
fn client_config(tls: &PgTls) -> Result<ClientConfig, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    // libpq: with a root certificate given, `require` verifies like `verify-ca`.
    let verify = match tls.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => true,
        SslMode::Require => tls.root_cert.is_some(),
        SslMode::Disable | SslMode::Prefer => false,
    };
    let cfg = if !verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
            .with_no_client_auth()
    } else {
        let inner = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(tls.root_cert.as_deref())?),
            provider(),
        )
        .build()
        .map_err(|e| e.to_string())?;
        if tls.mode == SslMode::VerifyFull {
            builder.with_webpki_verifier(inner).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
    };
    Ok(cfg)
}

/// A tokio-postgres TLS connector over rustls.
#[derive(Clone)]
pub struct MakeRustls {
    config: Arc<ClientConfig>,
    tls: Arc<PgTls>,
}

impl MakeRustls {
    /// A connector for the settings `tls`.
    pub fn new(tls: &PgTls) -> Result<MakeRustls, String> {
        Ok(MakeRustls {
            config: Arc::new(client_config(tls)?),
            tls: Arc::new(tls.clone()),
        })
    }

    async fn handshake<S>(
        &self,
        host: &str,
        stream: S,
    ) -> io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = match ServerName::try_from(host.to_owned()) {
            Ok(n) => n,
            Err(_) if self.tls.mode != SslMode::VerifyFull => {
                ServerName::try_from("localhost").expect("valid name")
            }
            Err(_) => {
                return Err(io::Error::other(format!(
                    "sslmode=verify-full needs a host name to check the certificate against, not `{host}`"
                )))
            }
        };
        tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(name, stream)
            .await
            .map_err(|e| {
                let root = match &self.tls.root_cert {
                    Some(p) => format!("sslrootcert={}", p.display()),
                    None => "no sslrootcert: Mozilla's roots".to_owned(),
                };
                io::Error::other(format!(
                    "TLS with PostgreSQL failed (sslmode={}, {root}): {e}",
                    self.tls.mode.name()
                ))
            })
    }
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect {
            make: self.clone(),
            host: domain.to_owned(),
        })
    }
}

/// One pending TLS connection (see [`MakeRustls`]).
pub struct RustlsConnect {
    make: MakeRustls,
    host: String,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let s = self.make.handshake(&self.host, stream).await?;
            Ok(RustlsStream(Box::new(s)))
        })
    }
}

/// A TLS connection to PostgreSQL.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // tls-server-end-point depends on the certificate's signature hash;
        // without it SCRAM runs unbound, as with libpq's channel_binding=prefer
        // against a client that lacks support.
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// `prefer` and `require` without a root certificate: encryption only.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: a trusted chain, whatever names the certificate carries.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // webpki checks the chain before the name, so a name error means
        // the chain was accepted.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            r => r,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A private Unix socket (in a directory only this user can enter) whose
/// connections are carried to a PostgreSQL server over TLS; stops when dropped.
pub struct Relay {
    dir: PathBuf,
    task: JoinHandle<()>,
}

impl Relay {
    /// Starts relaying to `host:port` (or `addr:port` when given, checking
    /// the certificate against `host`, like libpq's `hostaddr`) with the
    /// settings `tls`.
    pub fn start(
        host: &str,
        addr: Option<std::net::IpAddr>,
        port: u16,
        tls: &PgTls,
    ) -> Result<Relay, String> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "arcana-relay-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let listener = UnixListener::bind(dir.join(format!(".s.PGSQL.{port}")))
            .map_err(|e| format!("binding the replication relay socket: {e}"))?;
        let make = MakeRustls::new(tls)?;
        let mode = tls.mode;
        let host = host.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let mut local = match listener.accept().await {
                    Ok((s, _)) => s,
                    Err(e) => {
                        // Out of descriptors and the like: the listener retries.
                        tracing::warn!("replication relay: accepting failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (make, host) = (make.clone(), host.clone());
                tokio::spawn(async move {
                    if let Err(e) = relay_one(&make, mode, &host, addr, port, &mut local).await {
                        tracing::warn!("replication connection over TLS: {e}");
                    }
                });
            }
        });
        Ok(Relay { dir, task })
    }

    /// The directory to give the replication client as its host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn relay_one(
    make: &MakeRustls,
    mode: SslMode,
    host: &str,
    addr: Option<std::net::IpAddr>,
    port: u16,
    local: &mut tokio::net::UnixStream,
) -> io::Result<()> {
    let mut tcp = match addr {
        Some(a) => TcpStream::connect((a, port)).await?,
        None => TcpStream::connect((host, port)).await?,
    };
    tcp.set_nodelay(true)?;
    // SSLRequest: length 8, code 80877103.
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        if mode == SslMode::Prefer {
            tokio::io::copy_bidirectional(local, &mut tcp).await?;
            return Ok(());
        }
        return Err(io::Error::other(format!(
            "the server does not accept TLS (sslmode={})",
            mode.name()
        )));
    }
    let mut tls = make.handshake(host, tcp).await?;
    tokio::io::copy_bidirectional(local, &mut tls).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tls_parameters_out_of_urls() {
        let (cfg, tls) =
            parse("postgres://u:p@db.example.com:6543/app?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x")
                .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert.as_deref(), Some(Path::new("/tmp/ca.pem")));
        assert_eq!(cfg.get_application_name(), Some("x"));
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Require);

        let (cfg, tls) = parse("host=localhost dbname=app sslmode=disable").unwrap();
        assert_eq!(tls.mode, SslMode::Disable);
        assert_eq!(cfg.get_dbname(), Some("app"));

        let (_, tls) = parse("postgres://localhost/app").unwrap();
        assert_eq!(tls.mode, SslMode::Prefer);
        let (_, tls) =
            parse("postgres://localhost/app?sslrootcert=system&sslmode=require").unwrap();
        assert!(tls.root_cert.is_none());

        let (cfg, tls) = parse("host=/var/run/postgresql dbname=app sslmode=require").unwrap();
        assert_eq!(tls.mode, SslMode::Disable, "no TLS on Unix sockets");
        assert_eq!(cfg.get_ssl_mode(), tokio_postgres::config::SslMode::Disable);

        let e = parse("postgres://localhost/app?sslmode=strict").unwrap_err();
        assert!(e.contains("sslmode `strict`"), "{e}");
    }
}
