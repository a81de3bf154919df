//! The server under test: `arcana serve` as a child process with a config
//! written for the benchmark, and its CPU and memory read from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running child server, stopped (SIGTERM) on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    dir: PathBuf,
    /// How it was started, for [`Server::restart`].
    bin: PathBuf,
    args: Vec<String>,
    port: u16,
}

/// How long a restart took.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    /// From SIGTERM until the process exited.
    pub stop: Duration,
    /// From the new process's start until it accepted connections.
    pub start: Duration,
    /// From the new process's start until its gRPC health check answered
    /// SERVING (changes flow in, the database answers).
    pub ready: Duration,
}

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// User + system CPU seconds so far.
    pub cpu_s: f64,
    /// Resident memory now, bytes.
    pub rss: u64,
    /// Peak resident memory, bytes.
    pub peak_rss: u64,
}

/// A free local port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

impl Server {
    /// A fresh directory of its own under the system temp dir, removed
    /// when the server stops.
    pub fn scratch_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("arcana-bench-{:08x}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Starts `bin` with `args` and waits until `port` accepts connections.
    /// `dir` (from [`Server::scratch_dir`]) is removed when it stops.
    pub async fn spawn(bin: &Path, args: &[String], port: u16, dir: PathBuf) -> Server {
        Server {
            child: start_child(bin, args, port).await,
            addr: format!("http://127.0.0.1:{port}"),
            dir,
            bin: bin.to_owned(),
            args: args.to_vec(),
            port,
        }
    }

    /// Stops the process (SIGTERM), waits until it exited, starts it
    /// again with the same arguments on the same port, and waits until it
    /// reports itself ready.
    pub async fn restart(&mut self) -> Restart {
        let t0 = Instant::now();
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        // Polled rather than a blocking wait, so the clients keep running.
        while self
            .child
            .try_wait()
            .expect("wait for the server")
            .is_none()
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let t1 = Instant::now();
        self.child = start_child(&self.bin, &self.args, self.port).await;
        let start = t1.elapsed();
        self.wait_ready().await;
        Restart {
            stop: t1 - t0,
            start,
            ready: t1.elapsed(),
        }
    }

    /// Polls the gRPC health check until it answers SERVING.
    pub async fn wait_ready(&self) {
        use tonic_health::pb::{
            health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let endpoint =
                tonic::transport::Channel::from_shared(self.addr.clone()).expect("address");
            if let Ok(ch) = endpoint.connect().await {
                let check = HealthClient::new(ch)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if check.is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32) {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} did not report ready within 60 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts `arcana serve` with `config` against `database_url`.
    pub async fn arcana(bin: &Path, config: &str, database_url: &str, port: u16) -> Server {
        let dir = Server::scratch_dir();
        let path = dir.join("arcana.toml");
        std::fs::write(&path, config).expect("write config");
        let args = vec![
            "serve".to_string(),
            "--config".to_string(),
            path.display().to_string(),
            "--database-url".to_string(),
            database_url.to_string(),
        ];
        Server::spawn(bin, &args, port, dir).await
    }

    /// The process's CPU time and memory.
    pub fn usage(&self) -> Usage {
        let pid = self.child.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        // SAFETY: sysconf has no preconditions.
        let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |key: &str| {
            status
                .lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        Usage {
            cpu_s: (ticks(11) + ticks(12)) / tck,
            rss: kib("VmRSS:"),
            peak_rss: kib("VmHWM:"),
        }
    }
}

/// Starts `bin` with `args` and waits until `port` accepts connections.
async fn start_child(bin: &Path, args: &[String], port: u16) -> Child {
    let mut child = Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
    for _ in 0..1500 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{} exited during startup: {status}", bin.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{} did not start listening", bin.display());
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A nats-server with JetStream for a cluster run, killed on drop.
pub struct Nats {
    child: Child,
    dir: PathBuf,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Nats {
    /// Starts one (installed by `scripts/nats.sh` when missing).
    pub async fn start() -> Nats {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/nats.sh");
        let out = Command::new("bash")
            .args([script, "install"])
            .stderr(Stdio::inherit())
            .output()
            .expect("scripts/nats.sh");
        let bin = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("nats-server")
            .trim()
            .to_owned();
        let port = free_port();
        let dir = Server::scratch_dir();
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {bin}: {e}"));
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Nats {
            child,
            dir,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

/// `n` servers on `database_url`: one standalone server when `n` is 1, else
/// a cluster of `n` nodes over a nats-server of their own. `config` gives
/// the config for a listen port; the `[cluster]` section is added to it,
/// ending with the `extra` lines.
pub async fn cluster(
    bin: &Path,
    n: usize,
    database_url: &str,
    extra: &str,
    config: impl Fn(u16) -> String,
) -> (Vec<Server>, Option<Nats>) {
    if n <= 1 {
        let port = free_port();
        return (
            vec![Server::arcana(bin, &config(port), database_url, port).await],
            None,
        );
    }
    let nats = Nats::start().await;
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        let port = free_port();
        let cfg = format!(
            "{}\n[cluster]\nnats_url = \"{}\"\nnode_id = \"bench-{i}\"\n{extra}",
            config(port),
            nats.url
        );
        nodes.push(Server::arcana(bin, &cfg, database_url, port).await);
    }
    (nodes, Some(nats))
}

/// The servers of a run, seen together.
pub struct Nodes(pub Vec<Server>);

impl Nodes {
    /// CPU and memory summed over the nodes.
    pub fn usage(&self) -> Usage {
        self.0.iter().map(Server::usage).fold(
            Usage {
                cpu_s: 0.0,
                rss: 0,
                peak_rss: 0,
            },
            |a, u| Usage {
                cpu_s: a.cpu_s + u.cpu_s,
                rss: a.rss + u.rss,
                peak_rss: a.peak_rss + u.peak_rss,
            },
        )
    }

    /// Connections for `sessions` sessions, spread over the nodes in turn.
    pub async fn channels(&self, sessions: usize) -> Vec<tonic::transport::Channel> {
        let mut out = Vec::new();
        for k in 0..sessions.div_ceil(super::SESSIONS_PER_CONNECTION) {
            let addr = &self.0[k % self.0.len()].addr;
            out.push(
                tonic::transport::Channel::from_shared(addr.clone())
                    .expect("address")
                    .connect()
                    .await
                    .expect("connect"),
            );
        }
        out
    }

    /// The engine counters summed over the nodes.
    pub async fn stats(&self) -> arcana::proto::StatsResponse {
        let mut sum = arcana::proto::StatsResponse::default();
        for s in &self.0 {
            let ch = tonic::transport::Channel::from_shared(s.addr.clone())
                .expect("address")
                .connect()
                .await
                .expect("connect");
            let st = super::engine_stats(&ch).await;
            sum.evaluations += st.evaluations;
            sum.evaluation_rounds += st.evaluation_rounds;
            sum.patches += st.patches;
            sum.frames_sent += st.frames_sent;
        }
        sum
    }
}
