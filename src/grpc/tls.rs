//! TLS for clients: the served certificate (and the CA client certificates
//! must chain to, for mutual TLS), reloaded when its files change or on
//! SIGHUP, so a renewed certificate needs no restart.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::task::JoinHandle;

use crate::config::ServerTls;

/// The current server configuration, swapped whole on reload.
#[derive(Clone)]
pub struct TlsSource(Arc<RwLock<Arc<ServerConfig>>>);

impl TlsSource {
    /// An acceptor for the next connection, with the latest certificate.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let cfg = self.0.read().unwrap_or_else(|e| e.into_inner()).clone();
        tokio_rustls::TlsAcceptor::from(cfg)
    }
}

fn certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("reading server.tls.{what} {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "server.tls.{what} {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// Builds the rustls configuration from the files `tls` names.
pub fn load(tls: &ServerTls) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&tls.cert, "cert")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("reading server.tls.key {}: {e}", tls.key.display()))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs(ca, "client_ca")?);
            if added == 0 {
                return Err(format!(
                    "server.tls.client_ca {} holds no usable CA certificate",
                    ca.display()
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("server.tls.client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "server.tls.cert {} and server.tls.key {} do not form a usable pair: {e}",
            tls.cert.display(),
            tls.key.display()
        )
    })?;
    // Native gRPC needs HTTP/2; grpc-web from browsers comes over HTTP/1.1.
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn stamps(tls: &ServerTls) -> Vec<Option<SystemTime>> {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut out = vec![mtime(&tls.cert), mtime(&tls.key)];
    out.extend(tls.client_ca.as_deref().map(mtime));
    out
}

/// Loads the certificate (failing at once if it cannot) and keeps it
/// current until the returned task is aborted. A reload that fails is
/// logged and the previous certificate stays in use.
pub fn watch(tls: &ServerTls) -> Result<(TlsSource, JoinHandle<()>), String> {
    let source = TlsSource(Arc::new(RwLock::new(Arc::new(load(tls)?))));
    let tls = tls.clone();
    let current = source.clone();
    // Registered before returning, so a SIGHUP sent once serving has begun
    // reloads rather than terminates.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("listening for SIGHUP: {e}"))?;
    let task = tokio::spawn(async move {
        let mut seen = stamps(&tls);
        // 0: reload on SIGHUP only.
        let mut tick = (tls.reload_interval_ms > 0).then(|| {
            let mut t = tokio::time::interval(Duration::from_millis(tls.reload_interval_ms));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        loop {
            let signalled = tokio::select! {
                _ = async { match tick.as_mut() {
                    Some(t) => t.tick().await,
                    None => std::future::pending().await,
                } } => false,
                Some(()) = hangup.recv() => true,
            };
            let now = stamps(&tls);
            if !signalled && now == seen {
                continue;
            }
            match load(&tls) {
                Ok(cfg) => {
                    seen = now;
                    *current.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(cfg);
                    tracing::info!("reloaded the TLS certificate {}", tls.cert.display());
                }
                Err(e) => {
                    // Likely caught mid-rewrite; retried on the next change or tick.
                    tracing::warn!(
                        "reloading the TLS certificate failed, keeping the previous one: {e}"
                    );
                }
            }
        }
    });
    Ok((source, task))
}
