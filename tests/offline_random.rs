//! Randomized offline sync: devices of two workspaces go offline and
//! online at random, write locally while offline, push their outboxes
//! (retrying the same bundle after failures), pull or snapshot when told
//! to, while psql writes and the server restarts. At the end every
//! device's copy equals the server's rows of its scope, and every pushed
//! event row exists exactly once at version 1 (no push lost or doubled).
//!
//! `cargo test --test offline_random` runs a few seeded schedules;
//! `-- --seed 7 --schedules 20` runs others.

mod common;
#[allow(dead_code)]
#[path = "convergence/rng.rs"]
mod rng;

use std::collections::BTreeSet;
use std::process::ExitCode;

use arcana::proto::{self as pb, IntentOp};
use common::offline::*;
use common::*;
use rng::Rng;

const SCHEMA: &str = r#"
CREATE TABLE lww_notes (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    title        text NOT NULL
);
CREATE TABLE events (
    id           text PRIMARY KEY,
    workspace_id text NOT NULL REFERENCES workspaces(id),
    device       text NOT NULL
);
GRANT SELECT, INSERT, UPDATE, DELETE ON lww_notes, events TO arcana_eval;
INSERT INTO lww_notes SELECT 'n' || i, CASE WHEN i % 2 = 0 THEN 'acme' ELSE 'globex' END, 'seed'
FROM generate_series(0, 7) i;
"#;

const CONFIG: &str = r#"
[offline]
retention_max_rows = 25
retention_interval_ms = 50
max_chunk_rows = 4

[[offline.tables]]
table = "lww_notes"
scope = "workspace"
conflict = "last_writer_wins"

[[offline.tables]]
table = "events"
scope = "workspace"
"#;

struct Sim {
    device: Device,
    token: &'static str,
    workspace: &'static str,
    online: bool,
    outbox: Vec<pb::RowIntent>,
    /// A bundle sent and not yet confirmed, replayed as is.
    sending: Option<(u64, Vec<pb::RowIntent>)>,
    events: BTreeSet<String>,
}

impl Sim {
    /// Pushes the outbox in chunks; keeps it when the push fails.
    /// Pushes what was sent before and not confirmed, then the outbox as a
    /// new bundle; a bundle once sent is frozen and replayed as is.
    /// `lose_answer`: the device acts as if the answer never arrived (a
    /// dropped connection) and sends the same bundle again later.
    async fn push(&mut self, max_chunk: usize, lose_answer: bool) -> Result<(), String> {
        loop {
            if self.sending.is_none() {
                if self.outbox.is_empty() {
                    return Ok(());
                }
                let b = self.device.next_bundle;
                self.device.next_bundle += 1;
                self.sending = Some((b, std::mem::take(&mut self.outbox)));
            }
            let (bundle, intents) = self.sending.clone().unwrap();
            let n = intents.len().div_ceil(max_chunk);
            let chunks = intents
                .chunks(max_chunk)
                .enumerate()
                .map(|(i, c)| pb::PushChunk {
                    client_id: self.device.id.clone(),
                    bundle_id: bundle,
                    chunk_index: i as u32,
                    last: i + 1 == n,
                    intents: c.to_vec(),
                })
                .collect();
            match self.device.push_chunks(chunks).await {
                Ok(r) if r.applied && lose_answer => return Ok(()),
                Ok(r) if r.applied => self.sending = None,
                Ok(r) => return Err(format!("bundle refused: {r:?}")),
                Err(e)
                    if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown =>
                {
                    return Ok(())
                }
                Err(e) => return Err(format!("push failed: {e}")),
            }
        }
    }

    async fn pull(&mut self) -> Result<(), String> {
        match self.device.pull().await {
            Ok(None) => Ok(()),
            Ok(Some(_)) => self.device.snapshot().await.map_err(|e| e.to_string()),
            Err(e) if e.code() == tonic::Code::Unavailable || e.code() == tonic::Code::Unknown => {
                Ok(())
            }
            Err(e) => Err(format!("pull failed: {e}")),
        }
    }
}

async fn reconnect(h: &Harness, sims: &mut [Sim]) {
    for s in sims {
        s.device.client = offline_client(h, s.token).await;
    }
}

async fn schedule(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let mut h = Harness::with_extra(SCHEMA, CONFIG, |_| {}).await;
    let mut sims = Vec::new();
    for (i, (token, ws)) in [
        ("dev-alice", "acme"),
        ("dev-bob", "acme"),
        ("dev-carol", "globex"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut device = Device::new(&h, token, &format!("dev{i}")).await;
        device.snapshot().await.map_err(|e| e.to_string())?;
        sims.push(Sim {
            device,
            token,
            workspace: ws,
            online: true,
            outbox: Vec::new(),
            sending: None,
            events: BTreeSet::new(),
        });
    }
    let mut counter = 0;
    for _ in 0..60 {
        counter += 1;
        let who = rng.range(0, sims.len() as i64 - 1) as usize;
        match rng.range(0, 9) {
            0 => sims[who].online = !sims[who].online,
            1..=4 => {
                let s = &mut sims[who];
                let n = rng.range(0, 3) * 2 + if s.workspace == "acme" { 0 } else { 1 };
                let id = format!("n{n}");
                let base = s.device.version("lww_notes", &id);
                let mut i = intent(
                    "lww_notes",
                    IntentOp::Update,
                    &[
                        ("id", text(&id)),
                        ("title", text(&format!("{seed}-{counter}"))),
                    ],
                    base,
                );
                i.client_time_unix_ms = 1_000_000 + counter;
                s.outbox.push(i);
                let ev = format!("e{who}-{counter}");
                s.outbox.push(intent(
                    "events",
                    IntentOp::Insert,
                    &[("id", text(&ev)), ("device", text(&s.device.id))],
                    0,
                ));
                s.events.insert(ev);
            }
            5..=7 => {
                let s = &mut sims[who];
                if s.online {
                    let lose = rng.chance(0.3);
                    s.push(4, lose).await?;
                    s.pull().await?;
                }
            }
            8 => {
                let n = rng.range(0, 7);
                h.sql(&format!(
                    "UPDATE lww_notes SET title = 'psql {counter}' WHERE id = 'n{n}'"
                ))
                .await;
            }
            _ => {
                h.restart().await;
                reconnect(&h, &mut sims).await;
            }
        }
    }
    // Everyone comes online and syncs; twice, so each sees the others.
    for _ in 0..2 {
        for s in sims.iter_mut() {
            s.online = true;
            s.push(4, false).await?;
            if !s.outbox.is_empty() || s.sending.is_some() {
                return Err(format!("{} could not push its outbox", s.device.id));
            }
        }
    }
    for s in sims.iter_mut() {
        s.pull().await?;
    }
    for s in &sims {
        let filter = format!("workspace_id = '{}'", s.workspace);
        let want = server_column(&h, "lww_notes", "title", &filter).await;
        let have = s.device.column("lww_notes", "title");
        if have != want {
            return Err(format!(
                "{}: lww_notes {have:?} != server {want:?}",
                s.device.id
            ));
        }
        let want = server_column(&h, "events", "device", &filter).await;
        let have = s.device.column("events", "device");
        if have != want {
            return Err(format!(
                "{}: events {have:?} != server {want:?}",
                s.device.id
            ));
        }
        let mine: BTreeSet<String> = want
            .iter()
            .filter(|(_, d)| d.as_deref() == Some(s.device.id.as_str()))
            .map(|(id, _)| id.clone())
            .collect();
        if mine != s.events {
            return Err(format!(
                "{}: events pushed {:?} but the server has {mine:?}",
                s.device.id, s.events
            ));
        }
    }
    let doubled = h
        .query_i64("SELECT count(*) FROM arcana_offline.rows WHERE tbl = 'events' AND version <> 1")
        .await;
    if doubled != 0 {
        return Err(format!("{doubled} event rows were written more than once"));
    }
    h.stop().await;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let get = |name: &str, default: u64| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let seed = get("--seed", 1);
    let schedules = get("--schedules", 3);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut failed = 0;
    for s in seed..seed + schedules {
        let started = std::time::Instant::now();
        match rt.block_on(schedule(s)) {
            Ok(()) => println!("offline schedule seed {s}: ok in {:?}", started.elapsed()),
            Err(e) => {
                println!("offline schedule seed {s}: FAILED: {e}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
