//! TLS both ways: to a PostgreSQL started with `ssl = on` and a certificate
//! made here (`sslmode`, `sslrootcert`, for queries and the replication
//! stream), and to clients (native gRPC over HTTP/2, grpc-web over
//! HTTP/1.1, mutual TLS, certificate reload).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arcana::app::{App, DEMO_CONFIG, DEMO_SCHEMA};
use arcana::config::{ChangeMode, Config, ServerTls};
use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use arcana::proto::{self as pb, arcana_service_client::ArcanaServiceClient};
use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A certificate for `names` signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let cert = CertificateParams::new(names)
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A private scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("arcana-tls-test-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn ssl_cluster(ca: &Ca) -> EmbeddedPostgres {
    // Names only, no address: connecting to 127.0.0.1 tells verify-full from
    // verify-ca. The name does not resolve, so connections need hostaddr.
    let (cert, key) = leaf(ca, &["db.arcana.test"]);
    EmbeddedPostgres::start(EmbeddedOptions {
        fast: true,
        settings: vec![
            ("ssl".into(), "on".into()),
            ("ssl_cert_file".into(), "server.crt".into()),
            ("ssl_key_file".into(), "server.key".into()),
        ],
        files: vec![
            ("server.crt".into(), cert.into_bytes()),
            ("server.key".into(), key.into_bytes()),
        ],
    })
    .await
    .expect("start PostgreSQL with ssl = on")
}

/// Whether the pool's connection for `url` is encrypted.
async fn pool_uses_ssl(url: &str) -> Result<bool, String> {
    let pool = arcana::postgres::pool(url, 1)?;
    let c = pool
        .get()
        .await
        .map_err(|e| arcana::postgres::tls::error_chain(&e))?;
    let row = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_follow_sslmode_and_sslrootcert() {
    let good = ca("db ca");
    let wrong = ca("someone else");
    let pg = ssl_cluster(&good).await;
    let files = Scratch::new();
    let good_ca = files.write("good.pem", &good.pem);
    let wrong_ca = files.write("wrong.pem", &wrong.pem);
    let port = pg.port();
    let by_name = |q: &str| {
        format!("postgres://postgres@db.arcana.test:{port}/postgres?hostaddr=127.0.0.1&{q}")
    };
    let by_ip = |q: &str| format!("postgres://postgres@127.0.0.1:{port}/postgres?{q}");

    let url = by_name(&format!(
        "sslmode=verify-full&sslrootcert={}",
        good_ca.display()
    ));
    assert_eq!(
        pool_uses_ssl(&url).await,
        Ok(true),
        "verify-full with the right CA"
    );
    arcana::postgres::execute_script(&url, "SELECT 1")
        .await
        .unwrap();

    let url = by_name(&format!(
        "sslmode=verify-full&sslrootcert={}",
        wrong_ca.display()
    ));
    let e = pool_uses_ssl(&url).await.unwrap_err();
    assert!(
        e.contains("sslmode=verify-full") && e.contains("UnknownIssuer"),
        "a certificate from another CA is refused, saying why: {e}"
    );
    let e = arcana::postgres::execute_script(&url, "SELECT 1")
        .await
        .unwrap_err();
    assert!(e.contains("UnknownIssuer"), "{e}");

    // The certificate names db.arcana.test, not 127.0.0.1.
    let url = by_ip(&format!(
        "sslmode=verify-full&sslrootcert={}",
        good_ca.display()
    ));
    let e = pool_uses_ssl(&url).await.unwrap_err();
    assert!(e.contains("not valid for name"), "{e}");
    let url = by_ip(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        good_ca.display()
    ));
    assert_eq!(
        pool_uses_ssl(&url).await,
        Ok(true),
        "verify-ca ignores the name"
    );
    let url = by_ip(&format!(
        "sslmode=verify-ca&sslrootcert={}",
        wrong_ca.display()
    ));
    assert!(
        pool_uses_ssl(&url).await.is_err(),
        "verify-ca checks the chain"
    );

    assert_eq!(pool_uses_ssl(&by_ip("sslmode=require")).await, Ok(true));
    assert_eq!(pool_uses_ssl(&by_ip("sslmode=prefer")).await, Ok(true));
    assert_eq!(pool_uses_ssl(&by_ip("sslmode=disable")).await, Ok(false));

    // A server without TLS.
    let plain = cluster();
    let url = format!("{}?sslmode=require", plain.url("postgres"));
    let e = pool_uses_ssl(&url).await.unwrap_err();
    assert!(e.contains("does not support TLS"), "{e}");
    let url = format!("{}?sslmode=prefer", plain.url("postgres"));
    assert_eq!(pool_uses_ssl(&url).await, Ok(false), "prefer falls back");
    pg.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replication_stream_runs_over_tls() {
    let good = ca("db ca");
    let pg = ssl_cluster(&good).await;
    let files = Scratch::new();
    let good_ca = files.write("good.pem", &good.pem);
    arcana::postgres::execute_script(&pg.url("postgres"), "CREATE DATABASE app")
        .await
        .unwrap();
    let url = format!(
        "postgres://postgres@db.arcana.test:{}/app?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        pg.port(),
        good_ca.display()
    );
    arcana::postgres::execute_script(&url, DEMO_SCHEMA)
        .await
        .unwrap();
    let mut config = Config::parse(DEMO_CONFIG).unwrap();
    config.changes.mode = ChangeMode::Wal;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = App::start(&config, &url, listener).await.unwrap();
    let probe = arcana::postgres::pool(&format!("{}?sslmode=disable", pg.url("app")), 1).unwrap();
    let probe = probe.get().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = probe
            .query(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            assert!(
                r.get::<_, bool>(0),
                "the WAL sender's connection is encrypted"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replication connection appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.stop().await.unwrap();
    pg.stop();
}

/// Server certificate files in `dir`, for `localhost`, signed by `ca`.
fn server_files(dir: &Scratch, ca: &Ca) -> (PathBuf, PathBuf) {
    let (cert, key) = leaf(ca, &["localhost"]);
    (
        dir.write("server.crt", &cert),
        dir.write("server.key", &key),
    )
}

async fn tls_server(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Harness {
    let tls = ServerTls {
        cert: cert.to_owned(),
        key: key.to_owned(),
        client_ca: client_ca.map(Path::to_owned),
        reload_interval_ms: 100,
    };
    Harness::with(move |c| c.server.tls = Some(tls)).await
}

/// Calls Describe over TLS trusting `ca`, optionally with a client identity.
async fn describe_over_tls(
    h: &Harness,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Channel::from_shared(format!("https://{}", h.app().addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let mut client = ArcanaServiceClient::with_interceptor(channel, Bearer("dev-alice".into()));
    client
        .describe(pb::DescribeRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_over_tls_with_grpc_and_grpc_web() {
    let server_ca = ca("server ca");
    let other = ca("other");
    let dir = Scratch::new();
    let (cert, key) = server_files(&dir, &server_ca);
    let h = tls_server(&cert, &key, None).await;

    describe_over_tls(&h, &server_ca.pem, None)
        .await
        .expect("native gRPC over TLS");
    assert!(
        describe_over_tls(&h, &other.pem, None).await.is_err(),
        "a client trusting another CA refuses the server"
    );
    let plain = Channel::from_shared(h.endpoint()).unwrap().connect().await;
    let refused = match plain {
        Err(_) => true,
        Ok(ch) => ArcanaServiceClient::new(ch)
            .describe(pb::DescribeRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plaintext is not served on a TLS listener");

    // grpc-web over HTTP/1.1, negotiated by ALPN.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(server_ca.pem.as_bytes()).unwrap())
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(h.app().addr).await.unwrap();
    let mut s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(s.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    s.write_all(
        b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nhost: localhost\r\n\
          content-type: application/grpc-web+proto\r\nx-grpc-web: 1\r\n\
          content-length: 5\r\nconnection: close\r\n\r\n\0\0\0\0\0",
    )
    .await
    .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply).to_lowercase();
    assert!(reply.starts_with("http/1.1 200"), "{reply}");
    assert!(reply.contains("grpc-status:0"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_certificate() {
    let server_ca = ca("server ca");
    let client_ca = ca("client ca");
    let stranger_ca = ca("stranger ca");
    let dir = Scratch::new();
    let (cert, key) = server_files(&dir, &server_ca);
    let client_ca_file = dir.write("clients.pem", &client_ca.pem);
    let h = tls_server(&cert, &key, Some(&client_ca_file)).await;

    let e = describe_over_tls(&h, &server_ca.pem, None)
        .await
        .unwrap_err();
    assert!(!e.is_empty());
    let (stranger_cert, stranger_key) = leaf(&stranger_ca, &["stranger"]);
    assert!(
        describe_over_tls(&h, &server_ca.pem, Some((&stranger_cert, &stranger_key)))
            .await
            .is_err(),
        "a certificate from another CA is refused"
    );
    let (c, k) = leaf(&client_ca, &["app"]);
    describe_over_tls(&h, &server_ca.pem, Some((&c, &k)))
        .await
        .expect("a client certificate from client_ca is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let first = ca("first");
    let second = ca("second");
    let dir = Scratch::new();
    let (cert, key) = server_files(&dir, &first);
    let h = tls_server(&cert, &key, None).await;
    describe_over_tls(&h, &first.pem, None).await.unwrap();

    // Renew: the files are rewritten in place.
    let (c2, k2) = leaf(&second, &["localhost"]);
    std::fs::write(&key, k2).unwrap();
    std::fs::write(&cert, c2).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while describe_over_tls(&h, &second.pem, None).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        describe_over_tls(&h, &first.pem, None).await.is_err(),
        "the old certificate is no longer served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate() {
    let first = ca("first");
    let second = ca("second");
    let dir = Scratch::new();
    let (cert, key) = server_files(&dir, &first);
    let tls = ServerTls {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
        // No polling: only the signal reloads.
        reload_interval_ms: 0,
    };
    let h = Harness::with(move |c| c.server.tls = Some(tls)).await;
    // The same files, polled every 100 ms.
    let poller = tls_server(&cert, &key, None).await;
    describe_over_tls(&h, &first.pem, None).await.unwrap();
    describe_over_tls(&poller, &first.pem, None).await.unwrap();
    let (c2, k2) = leaf(&second, &["localhost"]);
    std::fs::write(&key, k2).unwrap();
    std::fs::write(&cert, c2).unwrap();
    // Once the poller serves the new certificate, the rewrite was complete
    // and visible to a server that looks: the one that does not look still
    // serves the old one.
    let deadline = tokio::time::Instant::now() + WAIT;
    while describe_over_tls(&poller, &second.pem, None).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the polling server did not pick up the new certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    describe_over_tls(&h, &first.pem, None)
        .await
        .expect("without polling, the old certificate is served until the signal");
    assert!(
        describe_over_tls(&h, &second.pem, None).await.is_err(),
        "without polling, nothing reloads before the signal"
    );
    // SAFETY: kill has no memory-safety preconditions; the server installed
    // a SIGHUP handler, so the test process is not terminated.
    assert_eq!(unsafe { libc::kill(libc::getpid(), libc::SIGHUP) }, 0);
    let deadline = tokio::time::Instant::now() + WAIT;
    while describe_over_tls(&h, &second.pem, None).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_certificate_stops_startup_with_its_name() {
    let dir = Scratch::new();
    let mut config = Config::parse(DEMO_CONFIG).unwrap();
    config.changes.mode = ChangeMode::None;
    config.server.tls = Some(ServerTls {
        cert: dir.0.join("missing.crt"),
        key: dir.0.join("missing.key"),
        client_ca: None,
        reload_interval_ms: 0,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = match App::start(&config, &fresh_database().await, listener).await {
        Ok(_) => panic!("started without its certificate"),
        Err(e) => e,
    };
    assert!(
        e.contains("server.tls.cert") && e.contains("missing.crt"),
        "{e}"
    );

    let parsed = Config::parse(&format!(
        "{DEMO_CONFIG}\n[server.tls]\ncert = \"a.crt\"\nkey = \"a.key\"\n"
    ))
    .unwrap();
    let tls = parsed.server.tls.expect("[server.tls] parsed");
    assert_eq!(tls.reload_interval_ms, 5000);
    assert!(tls.client_ca.is_none());
}
