//! A throwaway PostgreSQL cluster started from the local binaries, for the
//! demo and the tests.
//!
//! The cluster lives in a fresh directory under the system temp dir. As root,
//! it runs as the `postgres` user (Postgres refuses to run as root). The
//! server process is a child that dies with us (`PR_SET_PDEATHSIG`), so a
//! crashed test run leaves no server behind; leftover directories of dead
//! owners are swept at the next start. `stop` shuts down cleanly and removes
//! the directory.

use std::ffi::CString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Options for [`EmbeddedPostgres::start`].
#[derive(Debug, Clone, Default)]
pub struct EmbeddedOptions {
    /// Trade durability for speed (fsync off); for tests.
    pub fast: bool,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// Files written into the data directory before the first start (name,
    /// contents), readable only by the server's user: certificates and keys
    /// for `ssl = on`, named relative to the data directory in `settings`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A running throwaway cluster.
pub struct EmbeddedPostgres {
    dir: PathBuf,
    port: u16,
    pid: i32,
    waiter: Option<std::thread::JoinHandle<()>>,
    bin: PathBuf,
    ids: Option<(u32, u32)>,
    settings: Vec<(String, String)>,
}

const DIR_PREFIX: &str = "arcana-pg-";

/// Writes a file only its owner (the server's user) may read; PostgreSQL
/// refuses private keys that others can read.
fn write_private(path: &Path, contents: &[u8], ids: Option<(u32, u32)>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents)?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("postgres").is_file() {
                return Some(d);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

fn postgres_user() -> Option<(u32, u32)> {
    let name = CString::new("postgres").ok()?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy the ids out at once.
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: checked non-null above.
    unsafe { Some(((*pw).pw_uid, (*pw).pw_gid)) }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn sweep_stale(tmp: &Path) {
    let Ok(entries) = std::fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl EmbeddedPostgres {
    /// Creates and starts a cluster, waiting until it accepts connections.
    pub async fn start(opts: EmbeddedOptions) -> Result<EmbeddedPostgres, String> {
        tokio::task::spawn_blocking(move || Self::start_blocking(opts))
            .await
            .map_err(|e| e.to_string())?
    }

    fn start_blocking(opts: EmbeddedOptions) -> Result<EmbeddedPostgres, String> {
        let bin = find_bin_dir().ok_or(
            "PostgreSQL binaries (initdb, postgres) not found on PATH or under /usr/lib/postgresql/*/bin; \
             install PostgreSQL or pass --database-url",
        )?;
        let tmp = std::env::temp_dir();
        sweep_stale(&tmp);
        let dir = tmp.join(format!(
            "{DIR_PREFIX}{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // SAFETY: geteuid has no preconditions.
        let as_root = unsafe { libc::geteuid() } == 0;
        let ids = if as_root {
            let ids = postgres_user()
                .ok_or("running as root, but there is no `postgres` user to run PostgreSQL as")?;
            let c = CString::new(dir.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: c is a valid NUL-terminated path.
            if unsafe { libc::chown(c.as_ptr(), ids.0, ids.1) } != 0 {
                return Err(format!(
                    "chown {}: {}",
                    dir.display(),
                    std::io::Error::last_os_error()
                ));
            }
            Some(ids)
        } else {
            None
        };
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = ids {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }

        for (name, contents) in &opts.files {
            let path = data.join(name);
            write_private(&path, contents, ids)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        let mut settings: Vec<(String, String)> = vec![
            ("listen_addresses".into(), "127.0.0.1".into()),
            ("unix_socket_directories".into(), dir.display().to_string()),
            ("wal_level".into(), "logical".into()),
            ("max_wal_senders".into(), "64".into()),
            ("max_replication_slots".into(), "64".into()),
            ("max_connections".into(), "200".into()),
            ("synchronous_commit".into(), "on".into()),
        ];
        if opts.fast {
            settings.push(("fsync".into(), "off".into()));
            settings.push(("full_page_writes".into(), "off".into()));
        }
        settings.extend(opts.settings.iter().cloned());
        let mut pg = EmbeddedPostgres {
            dir: dir.clone(),
            port: 0,
            pid: 0,
            waiter: None,
            bin,
            ids,
            settings,
        };
        let mut last_err = String::new();
        for _ in 0..5 {
            pg.port = free_port().map_err(|e| e.to_string())?;
            match pg.launch() {
                Ok(()) => return Ok(pg),
                Err(e) => last_err = e,
            }
        }
        Err(format!("PostgreSQL did not start: {last_err}"))
    }

    /// Spawns the server on `self.port` and waits until it is ready.
    fn launch(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-p", &self.port.to_string()]);
        for (k, v) in &self.settings {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .stdin(Stdio::null());
        if let Some((uid, gid)) = self.ids {
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: prctl is async-signal-safe; it runs after setuid so the setting survives.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT);
                Ok(())
            });
        }
        // The death signal fires when the spawning *thread* exits, so a
        // dedicated thread spawns the server and waits for it.
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(child.id() as i32));
                let _ = child.wait();
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
            }
        });
        self.pid = rx.recv().map_err(|e| e.to_string())??;
        self.waiter = Some(waiter);
        if let Err(e) = self.wait_ready(Duration::from_secs(30)) {
            self.kill_and_wait(libc::SIGINT);
            self.waiter = None;
            return Err(e);
        }
        Ok(())
    }

    /// Stops the server (fast shutdown) and starts it again on the same port
    /// and data; clients see their connections drop. Blocks.
    pub fn restart(&mut self) -> Result<(), String> {
        self.restart_with(libc::SIGINT)
    }

    /// Stops the server in immediate mode (SIGQUIT: no checkpoint, as after
    /// a crash) and starts it again on the same port and data, which runs
    /// crash recovery. Blocks.
    pub fn restart_immediate(&mut self) -> Result<(), String> {
        self.restart_with(libc::SIGQUIT)
    }

    fn restart_with(&mut self, signal: i32) -> Result<(), String> {
        self.kill_and_wait(signal);
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
        self.launch()
    }

    fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        let pidfile = self.dir.join("data").join("postmaster.pid");
        loop {
            // postmaster.pid's 8th line reads "ready" once connections are accepted.
            if let Ok(s) = std::fs::read_to_string(&pidfile) {
                if s.lines().nth(7).is_some_and(|l| l.trim() == "ready") {
                    return Ok(());
                }
            }
            if self.waiter.as_ref().is_some_and(|w| w.is_finished()) {
                return Err("the server exited during startup".into());
            }
            if start.elapsed() > limit {
                return Err("timed out waiting for the server to accept connections".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The cluster directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sends `signal` (SIGINT: fast shutdown, SIGQUIT: immediate) and waits
    /// for the server to exit, killing it if it takes too long.
    fn kill_and_wait(&self, signal: i32) {
        // SAFETY: signalling our own child process.
        unsafe {
            libc::kill(self.pid, signal);
        }
        let start = Instant::now();
        while self.waiter.as_ref().is_some_and(|w| !w.is_finished()) {
            if start.elapsed() > Duration::from_secs(15) {
                // SAFETY: as above.
                unsafe {
                    libc::kill(self.pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (fast shutdown) and removes its files.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.waiter.is_none() {
            return;
        }
        self.kill_and_wait(libc::SIGINT);
        if let Some(w) = self.waiter.take() {
            let _ = w.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        self.shutdown();
    }
}
