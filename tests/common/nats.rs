//! A real nats-server with JetStream for the cluster tests: a free port on
//! loopback, a store directory of its own, killed on drop. It can be
//! stopped and started again on the same port and directory, so clients
//! reconnect to the same server with its streams intact.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) nats-server.
pub struct Nats {
    /// Its client port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// The nats-server binary; installs it with `scripts/nats.sh` when missing.
fn binary() -> PathBuf {
    // Installed at most once per test process.
    static BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BINARY.get_or_init(find_or_install).clone()
}

fn find_or_install() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats.sh");
    let out = Command::new(&script)
        .arg("path")
        .stderr(Stdio::null())
        .output()
        .expect("run scripts/nats.sh");
    let out = if out.status.success() {
        out
    } else {
        let out = Command::new(&script)
            .arg("install")
            .output()
            .expect("run scripts/nats.sh install");
        assert!(
            out.status.success(),
            "installing nats-server failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().expect("a path").trim())
}

impl Nats {
    /// Starts a server on a free port with a fresh store directory.
    pub fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("arcana-nats-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut n = Nats {
            port,
            dir,
            child: None,
        };
        n.start_again();
        n
    }

    /// The URL clients connect to.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port and store directory.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.start_again();
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
