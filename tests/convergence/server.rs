//! The real server as a child process, so it can be killed with SIGKILL and
//! started again on the same port, database and replication slot.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use arcana::proto::{self as pb, arcana_service_client::ArcanaServiceClient};
use tokio::process::{Child, Command};
use tonic::transport::{Channel, Endpoint};

use super::model::PEOPLE;

/// Adds the bearer token to every call.
#[derive(Clone)]
pub struct Bearer(pub &'static str);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.0).parse().unwrap(),
        );
        Ok(req)
    }
}

/// A gRPC client that sends a bearer token.
pub type Client =
    ArcanaServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// A channel with small HTTP/2 windows, so a client that stops reading
/// makes the server's session queue fill up soon.
pub async fn connect(addr: &str, token: &'static str) -> Result<Client, String> {
    let ch = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .initial_stream_window_size(Some(2 * 1024))
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(ArcanaServiceClient::with_interceptor(ch, Bearer(token)))
}

/// `arcana serve` as a child process on a fixed address.
pub struct Server {
    pub addr: String,
    config: PathBuf,
    db_url: String,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// A server (not started yet) logging to `<dir>/<name>.log`.
    pub fn new(dir: &std::path::Path, name: &str, config: PathBuf, db_url: String) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Server {
            addr: format!("127.0.0.1:{port}"),
            config,
            db_url,
            log: dir.join(format!("{name}.log")),
            child: None,
        }
    }

    /// Starts the process and waits until it answers `Describe`; retries a
    /// start that fails (a slot still held by a killed predecessor, the
    /// port not yet free, PostgreSQL restarting).
    pub async fn start(&mut self) -> Result<(), String> {
        let mut last = String::new();
        for attempt in 0..20 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .map_err(|e| e.to_string())?;
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_arcana"));
            cmd.arg("serve")
                .arg("--config")
                .arg(&self.config)
                .arg("--database-url")
                .arg(&self.db_url)
                .arg("--listen")
                .arg(&self.addr)
                .env(
                    "RUST_LOG",
                    std::env::var("ARCANA_TEST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .kill_on_drop(true);
            let mut child = cmd.spawn().map_err(|e| e.to_string())?;
            match self.wait_ready(&mut child).await {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(e) => {
                    let _ = child.kill().await;
                    last = e;
                }
            }
        }
        Err(format!(
            "the server did not start: {last} (log: {})",
            self.log.display()
        ))
    }

    async fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!("exited during startup: {status}"));
            }
            if let Ok(mut c) = connect(&self.addr, PEOPLE[0].token).await {
                if c.describe(pb::DescribeRequest {}).await.is_ok() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err("not ready after 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no drain, no goodbye to clients or PostgreSQL.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Whether the process exited without being told to.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            None => Some("not running".into()),
            _ => None,
        }
    }

    /// A graceful stop (SIGTERM), then SIGKILL if it hangs.
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Some(pid) = c.id() {
                // SAFETY: signalling our own child.
                unsafe {
                    libc::kill(pid as i32, libc::SIGTERM);
                }
            }
            if tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}
