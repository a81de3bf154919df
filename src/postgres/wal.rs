//! Change detection from the WAL: logical replication with `pgoutput`.
//!
//! [`prepare`] checks the server (`wal_level`, replication rights) and
//! creates the publication and the permanent slot when missing. [`spawn`]
//! runs the listener: it decodes each transaction, works out which tracked
//! columns changed, and feeds the transaction to the engine as one batch.
//! The slot's confirmed position only advances once the engine reports the
//! batch's diffs queued, in commit order, so a crash replays rather than
//! skips. Lost connections are retried with backoff; after a reconnect every
//! live view is refreshed so clients converge whatever happened meanwhile.
//!
//! Built on `pgwire-replication`, which speaks the replication protocol
//! (tokio-postgres does not) and sends standby status on time, with our own
//! pgoutput decoder (`pgoutput.rs`), so values are decoded by the same code
//! as query results and compare exactly with what views hold.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use pgwire_replication::{Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio::sync::{oneshot, watch};

use super::pgoutput::{decode, Message, Relation};
use super::row_change::TxChanges;
use super::sink::ChangeSink;
use super::Listener;
use crate::engine::{Change, ChangeBatch, Seen};

/// Where the listener reads from.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The logical replication slot (created when missing and `create`).
    pub slot: String,
    /// The publication (created, or extended with missing tables, when `create`).
    pub publication: String,
    /// Create or extend the slot and publication.
    pub create: bool,
    /// How often standby status is sent at most while positions advance.
    pub status_interval: Duration,
    /// The replication connection's `application_name` (in
    /// `pg_stat_replication`); cluster nodes put their name in it.
    pub application_name: String,
}

impl WalOptions {
    /// The options `[changes]` sets, under `application_name`.
    pub fn from_config(changes: &crate::config::ChangesConfig, application_name: &str) -> Self {
        WalOptions {
            slot: changes.slot.clone(),
            publication: changes.publication.clone(),
            create: changes.create,
            status_interval: Duration::from_secs(1),
            application_name: application_name.to_owned(),
        }
    }
}

/// The defaults of `[changes]`.
impl Default for WalOptions {
    fn default() -> Self {
        WalOptions::from_config(&crate::config::ChangesConfig::default(), "arcana")
    }
}

/// Quotes an identifier, splitting `schema.table`.
pub fn quote_table(t: &str) -> String {
    t.split('.')
        .map(|p| format!("\"{}\"", p.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// Checks that logical replication can work, creates what is missing, and
/// returns each table's primary key columns from the catalog.
pub async fn prepare(
    url: &str,
    opts: &WalOptions,
    tables: &[String],
    routed: &[String],
) -> Result<HashMap<String, Vec<String>>, String> {
    let (c, conn) = super::tls::connect(url)
        .await
        .map_err(|e| format!("connecting for WAL setup: {e}"))?;
    let task = tokio::spawn(conn);
    let q = |e: tokio_postgres::Error| match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    };
    let level: String = c.query_one("SHOW wal_level", &[]).await.map_err(q)?.get(0);
    if level != "logical" {
        return Err(format!(
            "wal_level is `{level}`, but WAL change detection needs `logical`: run ALTER SYSTEM SET wal_level = logical \
             and restart PostgreSQL, or set changes.mode = \"notify\" to use triggers instead"
        ));
    }
    let rights: bool = c
        .query_one(
            "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    if !rights {
        let user: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(q)?
            .get(0);
        return Err(format!(
            "role `{user}` may not start replication: run ALTER ROLE \"{user}\" REPLICATION, or set changes.mode = \"notify\""
        ));
    }
    let keys = primary_keys(&c, tables).await?;
    warn_partial_identity(&c, routed).await;
    let pub_exists = c
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&opts.publication],
        )
        .await
        .map_err(q)?
        .is_some();
    let list = tables
        .iter()
        .map(|t| quote_table(t))
        .collect::<Vec<_>>()
        .join(", ");
    let pubname = quote_table(&opts.publication);
    if !pub_exists {
        if !opts.create {
            return Err(format!(
                "publication `{}` does not exist (and changes.create is false)",
                opts.publication
            ));
        }
        c.batch_execute(&format!("CREATE PUBLICATION {pubname} FOR TABLE {list}"))
            .await
            .map_err(q)?;
    } else {
        let have: BTreeSet<String> = c
            .query(
                "SELECT CASE WHEN schemaname = 'public' THEN tablename::text ELSE schemaname || '.' || tablename END \
                 FROM pg_publication_tables WHERE pubname = $1",
                &[&opts.publication],
            )
            .await
            .map_err(q)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let all: bool = c
            .query_one(
                "SELECT puballtables FROM pg_publication WHERE pubname = $1",
                &[&opts.publication],
            )
            .await
            .map_err(q)?
            .get(0);
        let missing: Vec<&String> = tables.iter().filter(|t| !have.contains(*t)).collect();
        if !all && !missing.is_empty() {
            if !opts.create {
                return Err(format!(
                    "publication `{}` lacks tables {missing:?} (and changes.create is false)",
                    opts.publication
                ));
            }
            let add = missing
                .iter()
                .map(|t| quote_table(t))
                .collect::<Vec<_>>()
                .join(", ");
            c.batch_execute(&format!("ALTER PUBLICATION {pubname} ADD TABLE {add}"))
                .await
                .map_err(q)?;
        }
    }
    let slot = c
        .query_opt(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&opts.slot],
        )
        .await
        .map_err(q)?;
    match slot {
        Some(row) => {
            let plugin: Option<String> = row.get(0);
            if plugin.as_deref() != Some("pgoutput") {
                return Err(format!(
                    "replication slot `{}` exists but does not use pgoutput",
                    opts.slot
                ));
            }
        }
        None if opts.create => {
            c.query_one(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')::text",
                &[&opts.slot],
            )
            .await
            .map_err(q)?;
        }
        None => {
            return Err(format!(
                "replication slot `{}` does not exist (and changes.create is false)",
                opts.slot
            ))
        }
    }
    drop(c);
    let _ = task.await;
    Ok(keys)
}

/// Each table's primary key columns, in key order, from the catalog. Fails
/// for a table that does not exist.
pub async fn primary_keys(
    c: &tokio_postgres::Client,
    tables: &[String],
) -> Result<HashMap<String, Vec<String>>, String> {
    let q = |e: tokio_postgres::Error| e.to_string();
    let mut keys = HashMap::new();
    for t in tables {
        let exists: Option<String> = c
            .query_one("SELECT to_regclass($1)::text", &[&quote_table(t)])
            .await
            .map_err(q)?
            .get(0);
        if exists.is_none() {
            return Err(format!(
                "a graph depends on table `{t}`, which does not exist"
            ));
        }
        let rows = c
            .query(
                "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                 WHERE i.indrelid = $1::text::regclass AND i.indisprimary ORDER BY array_position(i.indkey::int2[], a.attnum)",
                &[&quote_table(t)],
            )
            .await
            .map_err(q)?;
        keys.insert(
            t.clone(),
            rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        );
    }
    Ok(keys)
}

/// What the listener needs to know about tracked tables.
#[derive(Debug, Clone, Default)]
pub struct Tracking {
    /// table -> tracked columns (`None`: all).
    pub columns: HashMap<String, Option<BTreeSet<String>>>,
    /// table -> key columns (config first, then the primary key).
    pub keys: HashMap<String, Vec<String>>,
    /// table -> the columns graphs route it on (see `Route`).
    pub routes: HashMap<String, BTreeSet<String>>,
    /// table -> the order columns of windowed graphs over it: changes carry
    /// the rows' order keys so windows they cannot reach are skipped.
    pub orders: HashMap<String, Vec<Vec<String>>>,
    /// The column holding a row's workspace, in tables that have it: a
    /// change whose rows all name one workspace reaches only its views.
    pub workspace_column: Option<String>,
}

/// The replication client's settings for `url`, and the relay that carries
/// its connection over TLS when the URL's `sslmode` asks for TLS.
fn replication_config(
    url: &str,
    opts: &WalOptions,
) -> Result<(ReplicationConfig, Option<super::tls::Relay>), String> {
    let (cfg, tls) = super::tls::parse(url)?;
    let mut host = match cfg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let password = cfg
        .get_password()
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .unwrap_or_default();
    // PostgreSQL serves no TLS on Unix sockets.
    let relay = if tls.mode != super::tls::SslMode::Disable && !host.starts_with('/') {
        let addr = cfg.get_hostaddrs().first().copied();
        let relay = super::tls::Relay::start(&host, addr, port, &tls)?;
        host = relay.dir().display().to_string();
        Some(relay)
    } else {
        None
    };
    let cfg = ReplicationConfig::new(
        host,
        cfg.get_user().unwrap_or("postgres"),
        password,
        cfg.get_dbname().unwrap_or("postgres"),
        opts.slot.clone(),
        opts.publication.clone(),
    )
    .with_port(port)
    .with_binary(true)
    .with_status_interval(opts.status_interval)
    .with_application_name(&opts.application_name);
    Ok((cfg, relay))
}

/// Starts the listener task, which hands each transaction to `sink`.
pub fn spawn(
    sink: std::sync::Arc<dyn ChangeSink>,
    url: String,
    opts: WalOptions,
    tracking: Tracking,
) -> Result<Listener, String> {
    let (cfg, relay) = replication_config(&url, &opts)?;
    let (stop, mut stopped) = watch::channel(false);
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = streaming.clone();
    let task = tokio::spawn(async move {
        let _relay = relay;
        let mut backoff = Duration::from_millis(100);
        let mut outage = false;
        loop {
            let mut state = Stream::new(sink.as_ref(), &tracking, &flag);
            let r = tokio::select! {
                r = state.run(&url, cfg.clone(), outage) => r,
                _ = stopped.wait_for(|s| *s) => return,
            };
            flag.store(false, std::sync::atomic::Ordering::Relaxed);
            match r {
                Ok(()) => return,
                Err((e, progressed)) => {
                    if progressed {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(error = %e, retry_in = ?backoff, "WAL listener lost its connection");
                    outage = true;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stopped.wait_for(|s| *s) => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    });
    Ok(Listener {
        stop,
        task,
        streaming,
    })
}

/// Routing an update needs the row's old values, which the WAL carries only
/// with `REPLICA IDENTITY FULL`; says so for routed tables without it.
async fn warn_partial_identity(c: &tokio_postgres::Client, routed: &[String]) {
    for t in routed {
        let full = c
            .query_opt(
                "SELECT relreplident = 'f' FROM pg_class WHERE oid = to_regclass($1)",
                &[&quote_table(t)],
            )
            .await
            .ok()
            .flatten()
            .map(|r| r.get::<_, bool>(0));
        if full == Some(false) {
            tracing::warn!(
                table = %t,
                "graphs route changes of this table, but without REPLICA IDENTITY FULL the WAL lacks old values, \
                 so updates and deletes re-evaluate every view of those graphs; run ALTER TABLE {} REPLICA IDENTITY FULL",
                quote_table(t)
            );
        }
    }
}

/// A decoded transaction waiting to be handed to the engine.
struct Decoded {
    xid: u32,
    changes: Vec<Change>,
    end_lsn: Lsn,
    /// When it was first found not yet visible.
    since: Option<std::time::Instant>,
    /// The commit time the WAL reports.
    committed: Option<std::time::SystemTime>,
}

/// A batch handed to the engine: done when its frames are queued; the
/// position to confirm then, and its commit time.
type Pending = (oneshot::Receiver<()>, Lsn, Option<std::time::SystemTime>);

/// A WAL commit timestamp (microseconds since 2000-01-01) as a time.
fn commit_time(pg_micros: i64) -> Option<std::time::SystemTime> {
    // 2000-01-01T00:00:00Z in Unix seconds.
    const PG_EPOCH: u64 = 946_684_800;
    let unix = i64::try_from(PG_EPOCH * 1_000_000)
        .ok()?
        .checked_add(pg_micros)?;
    let unix = u64::try_from(unix).ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_micros(unix))
}

/// The latest `txid_current_snapshot()` seen. A transaction it shows as
/// finished stays visible to every later snapshot, so one query answers
/// for all the transactions committed before it was taken.
#[derive(Default)]
struct Visibility {
    snapshot: Option<Seen>,
}

impl Visibility {
    /// Whether the last snapshot already shows transaction `xid` (32-bit,
    /// as pgoutput reports it) as visible.
    fn visible(&self, xid: u32) -> bool {
        self.snapshot.as_ref().is_some_and(|s| s.shows(xid))
    }

    /// Takes a fresh snapshot.
    async fn refresh(&mut self, c: &tokio_postgres::Client) -> Result<(), String> {
        let snap: String = c
            .query_one("SELECT txid_current_snapshot()::text", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        self.snapshot =
            Some(Seen::parse(&snap).ok_or_else(|| format!("unreadable snapshot {snap:?}"))?);
        Ok(())
    }
}

struct Stream<'a> {
    sink: &'a dyn ChangeSink,
    tracking: &'a Tracking,
    relations: HashMap<u32, Relation>,
    /// Set once streaming (the spawning loop clears it on failure).
    streaming: &'a std::sync::atomic::AtomicBool,
}

type RunError = (String, bool);

impl<'a> Stream<'a> {
    fn new(
        sink: &'a dyn ChangeSink,
        tracking: &'a Tracking,
        streaming: &'a std::sync::atomic::AtomicBool,
    ) -> Self {
        Stream {
            sink,
            tracking,
            relations: HashMap::new(),
            streaming,
        }
    }

    async fn run(
        &mut self,
        url: &str,
        cfg: ReplicationConfig,
        after_outage: bool,
    ) -> Result<(), RunError> {
        let (checker, conn) = super::tls::connect(url).await.map_err(|e| (e, false))?;
        let conn_task = tokio::spawn(conn);
        let r = self.stream(&checker, cfg, after_outage).await;
        drop(checker);
        conn_task.abort();
        r
    }

    async fn stream(
        &mut self,
        checker: &tokio_postgres::Client,
        cfg: ReplicationConfig,
        after_outage: bool,
    ) -> Result<(), RunError> {
        let mut client = ReplicationClient::connect(cfg)
            .await
            .map_err(|e| (e.to_string(), false))?;
        client
            .wait_started()
            .await
            .map_err(|e| (e.to_string(), false))?;
        tracing::info!("WAL listener streaming");
        self.streaming
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if after_outage {
            // Whatever failed while we were away (evaluations, missed
            // notifications of other sources) converges now.
            self.sink.refresh_all().await.map_err(|e| (e, true))?;
        }
        // Batches handed to the engine, oldest first, with the position to
        // confirm once each is applied.
        let mut pending: VecDeque<Pending> = VecDeque::new();
        // Decoded transactions not yet visible to new snapshots, in commit order.
        let mut awaiting: VecDeque<Decoded> = VecDeque::new();
        let mut tx: Option<TxChanges> = None;
        let mut seen = Visibility::default();
        const MAX_PENDING: usize = 4096;
        const MAX_AWAITING: usize = 1024;
        loop {
            tokio::select! {
                biased;
                done = async { (&mut pending.front_mut().expect("guarded").0).await }, if !pending.is_empty() => {
                    let (_, lsn, committed) = pending.pop_front().expect("guarded");
                    if done.is_err() {
                        return Err(("the change sink stopped".into(), true));
                    }
                    if let Some(at) = committed {
                        // The frames of the batch are queued: that is the lag clients see.
                        let lag = std::time::SystemTime::now().duration_since(at).unwrap_or_default();
                        crate::ops::metrics::observe(&crate::ops::metrics::hooks().commit_to_frame_seconds, lag);
                    }
                    client.update_applied_lsn(lsn);
                }
                _ = std::future::ready(()), if awaiting.len() >= MAX_AWAITING => {
                    self.release(checker, &mut seen, &mut awaiting, &mut pending).await?;
                }
                ev = client.recv(), if pending.len() < MAX_PENDING => {
                    let ev = ev.map_err(|e| (e.to_string(), true))?;
                    match ev {
                        None => return Ok(()),
                        Some(ReplicationEvent::Begin { xid, .. }) => tx = Some(TxChanges::new(xid)),
                        Some(ReplicationEvent::XLogData { data, .. }) => {
                            let msg = decode(data).map_err(|e| (e, true))?;
                            tracing::trace!(?msg, "pgoutput");
                            if let Message::Relation(r) = msg {
                                self.relations.insert(r.id, r);
                            } else {
                                tx.get_or_insert_with(TxChanges::default).apply(&msg, &self.relations, self.tracking);
                            }
                        }
                        Some(ReplicationEvent::Commit { end_lsn, commit_time_micros, .. }) => {
                            let done = tx.take().unwrap_or_default();
                            let xid = done.xid;
                            let changes = done.into_changes();
                            tracing::debug!(?end_lsn, ?changes, "transaction decoded");
                            if changes.is_empty() && awaiting.is_empty() && pending.is_empty() {
                                client.update_applied_lsn(end_lsn);
                            } else {
                                let committed = commit_time(commit_time_micros);
                                awaiting.push_back(Decoded { xid, changes, end_lsn, since: None, committed });
                            }
                        }
                        Some(ReplicationEvent::KeepAlive { wal_end, .. }) => {
                            if tx.is_none() && pending.is_empty() && awaiting.is_empty() {
                                client.update_applied_lsn(wal_end);
                            }
                        }
                        Some(ReplicationEvent::Message { .. }) => {}
                        Some(ReplicationEvent::StoppedAt { .. }) => return Ok(()),
                    }
                }
                // Nothing more to read right now: hand over what is visible.
                _ = std::future::ready(()), if !awaiting.is_empty() => {
                    self.release(checker, &mut seen, &mut awaiting, &mut pending).await?;
                }
            }
        }
    }

    /// Hands the visible transactions at the front of `awaiting` to the
    /// engine, in commit order. The WAL can announce a commit a moment
    /// before new snapshots see the transaction, and evaluating then would
    /// miss it; one snapshot query answers for every transaction read so far.
    async fn release(
        &self,
        checker: &tokio_postgres::Client,
        seen: &mut Visibility,
        awaiting: &mut VecDeque<Decoded>,
        pending: &mut VecDeque<Pending>,
    ) -> Result<(), RunError> {
        let mut queried = false;
        while let Some(front) = awaiting.front_mut() {
            let ready = front.changes.is_empty() || seen.visible(front.xid);
            if !ready {
                let waited = front
                    .since
                    .get_or_insert_with(std::time::Instant::now)
                    .elapsed();
                if waited > Duration::from_secs(10) {
                    tracing::warn!(
                        xid = front.xid,
                        "transaction still not visible after 10s; evaluating anyway"
                    );
                } else if !queried {
                    seen.refresh(checker).await.map_err(|e| (e, true))?;
                    queried = true;
                    continue;
                } else {
                    // Committed but not yet visible: ask again shortly.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    return Ok(());
                }
            }
            let d = awaiting.pop_front().expect("front exists");
            let (t, r) = oneshot::channel();
            if d.changes.is_empty() {
                let _ = t.send(());
            } else {
                // The commit's position names the transaction: a replay
                // after a crash hands it over with the same id.
                let id = format!("wal-{}", d.end_lsn.as_u64());
                self.sink
                    .changes(
                        ChangeBatch::new(d.changes, Some(t)).committed_by(d.xid),
                        Some(id),
                    )
                    .await
                    .map_err(|e| (e, true))?;
            }
            pending.push_back((r, d.end_lsn, d.committed));
        }
        Ok(())
    }
}
