//! The quiescence check: drain the change stream, then compare every client
//! view with a fresh snapshot and with the graph's SQL run directly.

use std::time::Duration;

use tokio::time::Instant;

use arcana::client::ViewState;
use arcana::proto::{self as pb, client_message::Kind as Req, server_message::Kind as Msg};

use super::client;
use super::expected;
use super::model::{self, Axes, ViewSpec, Who, PEOPLE};
use super::stats::Stats;

/// How long a client view may take to converge once the stream drained.
const CONVERGE: Duration = Duration::from_secs(30);

/// One view subscribed on a session of its own, read on demand.
struct Probe {
    // Kept so the session stays open.
    _tx: tokio::sync::mpsc::Sender<pb::ClientMessage>,
    stream: tonic::Streaming<pb::ServerMessage>,
    spec: ViewSpec,
    state: ViewState,
}

impl Probe {
    /// Subscribes `spec` on a new session of `who`.
    async fn open(addr: &str, who: &Who, spec: &ViewSpec) -> Result<Probe, String> {
        let (tx, stream) = client::open(addr, who.token).await?;
        tx.send(pb::ClientMessage {
            request_id: 1,
            kind: Some(Req::Subscribe(pb::SubscribeRequest {
                graph: spec.graph.into(),
                params: spec.pb_params(),
                session_id: String::new(),
                window: spec.pb_window(),
            })),
        })
        .await
        .map_err(|e| e.to_string())?;
        Ok(Probe {
            _tx: tx,
            stream,
            spec: spec.clone(),
            state: ViewState::default(),
        })
    }

    /// Reads until the view has its snapshot and satisfies `done`.
    async fn until(
        &mut self,
        done: impl Fn(&ViewState) -> bool,
        limit: Duration,
    ) -> Result<&ViewState, String> {
        let deadline = Instant::now() + limit;
        loop {
            if self.state.version > 0 && done(&self.state) {
                return Ok(&self.state);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let m = tokio::time::timeout(left, self.stream.message())
                .await
                .map_err(|_| {
                    format!(
                        "{} not reached in {limit:?}; last: {:?}",
                        self.spec, self.state
                    )
                })?
                .map_err(|e| e.to_string())?
                .ok_or("stream ended")?;
            let frames = match m.kind {
                Some(Msg::Frame(f)) => vec![f],
                Some(Msg::Frames(b)) => b.frames,
                Some(Msg::Reply(r)) => match r.result {
                    Some(pb::reply::Result::Error(e)) => {
                        return Err(format!("subscribe {}: {} {}", self.spec, e.code, e.message))
                    }
                    _ => vec![],
                },
                _ => vec![],
            };
            for f in frames {
                self.state.apply(&f)?;
            }
        }
    }
}

/// What a new subscriber to `spec` gets now.
async fn fresh(addr: &str, who: &Who, spec: &ViewSpec) -> Result<ViewState, String> {
    let mut p = Probe::open(addr, who, spec).await?;
    p.until(|_| true, Duration::from_secs(10)).await.cloned()
}

/// Per workspace: subscribes to the marker, bumps it, and waits until the
/// subscription shows the bump as a change. The change stream has then
/// passed every earlier write.
pub async fn drain(addr: &str, url: &str) -> Result<(), String> {
    let marker = ViewSpec {
        graph: "markers",
        params: vec![],
        window: None,
    };
    let deadline = Instant::now() + CONVERGE;
    for who in [PEOPLE[0], PEOPLE[2]] {
        loop {
            let attempt = async {
                let mut p = Probe::open(addr, &who, &marker).await?;
                p.until(|_| true, Duration::from_secs(5)).await?;
                let n = bump_marker(url, who.ws).await?;
                let shows = |s: &ViewState| {
                    s.rows
                        .values()
                        .any(|f| f.get("n") == Some(&arcana::engine::Value::Int(n)))
                };
                p.until(shows, Duration::from_secs(10)).await.map(|_| ())
            };
            match attempt.await {
                Ok(()) => break,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the drain marker never showed: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

async fn bump_marker(url: &str, ws: &str) -> Result<i64, String> {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let row = c
        .query_one(
            "UPDATE markers SET n = n + 1 WHERE ws = $1 RETURNING n",
            &[&ws],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// Every client view must equal a fresh snapshot, and that the SQL run
/// directly; each view that does not within `CONVERGE` is a divergence.
/// With several nodes, the fresh snapshots are taken on each in turn.
pub async fn compare(
    seed: u64,
    axes: &Axes,
    addrs: &[String],
    url: &str,
    clients: &[client::ClientHandle],
    stats: &Stats,
) -> Result<(), String> {
    // Each distinct (identity, view) once; all clients holding it compared.
    let mut pairs: Vec<(Who, ViewSpec)> = Vec::new();
    for c in clients {
        let g = c.shared.lock().unwrap();
        for h in &g.views {
            if !pairs
                .iter()
                .any(|(w, s)| w.token == g.who.token && *s == h.spec)
            {
                pairs.push((g.who, h.spec.clone()));
            }
        }
    }
    let checks = pairs.iter().enumerate().map(|(k, (who, spec))| {
        let addr = &addrs[k % addrs.len()];
        converge(seed, axes, addr, url, clients, stats, who, spec)
    });
    futures_util::future::join_all(checks).await;
    // A sync whose announced frames never came, with nothing after them to
    // expose the gap.
    for c in clients {
        let g = c.shared.lock().unwrap();
        for h in &g.views {
            if h.late {
                Stats::inc(&stats.gaps);
                println!(
                    "GAP {} {}: a sync reply came before the frames it announced, and no resync snapshot followed",
                    g.label, h.spec
                );
            }
            if let Some((e, v)) = h.owed {
                if h.state.epoch == e && h.state.version < v {
                    Stats::inc(&stats.gaps);
                    println!(
                        "GAP {} {}: a sync announced version {v} but the view stayed at {}",
                        g.label, h.spec, h.state.version
                    );
                }
            }
        }
    }
    Ok(())
}

/// Waits until every client holding `spec` as `who` agrees with a fresh
/// snapshot and with the SQL; reports each that does not in time.
#[allow(clippy::too_many_arguments)]
async fn converge(
    seed: u64,
    axes: &Axes,
    addr: &str,
    url: &str,
    clients: &[client::ClientHandle],
    stats: &Stats,
    who: &Who,
    spec: &ViewSpec,
) {
    let deadline = Instant::now() + CONVERGE;
    // A connection of its own: the expected state is read in a transaction.
    let db = loop {
        match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
            Ok((db, conn)) => {
                tokio::spawn(conn);
                break db;
            }
            Err(e) if Instant::now() > deadline => {
                Stats::inc(&stats.divergences);
                println!("DIVERGENCE seed {seed}: cannot read {spec} from PostgreSQL: {e}");
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    loop {
        let fresh = fresh(addr, who, spec).await;
        let sql = expected::expected(&db, model::graph(spec.graph), who, spec).await;
        let holders: Vec<(String, ViewState)> = clients
            .iter()
            .filter_map(|c| {
                let g = c.shared.lock().unwrap();
                (g.who.token == who.token)
                    .then(|| {
                        g.views
                            .iter()
                            .find(|h| h.spec == *spec)
                            .map(|h| (format!("{} on n{}", g.label, g.node + 1), h.state.clone()))
                    })
                    .flatten()
            })
            .collect();
        let agree = |a: &ViewState, b: &ViewState| a.content() == b.content();
        let ok = match (&fresh, &sql) {
            (Ok(f), Ok(s)) => agree(f, s) && holders.iter().all(|(_, h)| agree(h, f)),
            _ => false,
        };
        if ok {
            for _ in &holders {
                Stats::inc(&stats.views_compared);
            }
            break;
        }
        if Instant::now() > deadline {
            // Clients holding the same state are reported together.
            let mut wrong: Vec<(Vec<&str>, &ViewState)> = Vec::new();
            for (label, h) in &holders {
                Stats::inc(&stats.views_compared);
                if matches!((&fresh, &sql), (Ok(f), Ok(s)) if agree(h, f) && agree(f, s)) {
                    continue;
                }
                Stats::inc(&stats.divergences);
                match wrong.iter_mut().find(|(_, s)| agree(s, h)) {
                    Some((labels, _)) => labels.push(label),
                    None => wrong.push((vec![label], h)),
                }
            }
            if wrong.is_empty() {
                break;
            }
            let mut text = format!(
                "DIVERGENCE seed {seed} ({axes}) as {} in {}: view {spec}\n  fresh ({addr}):  {}\n  sql:    {}",
                who.user,
                who.ws,
                fresh.as_ref().map_or_else(|e| format!("error: {e}"), show),
                sql.as_ref().map_or_else(|e| format!("error: {e}"), show),
            );
            for (labels, h) in wrong {
                text.push_str(&format!("\n  {}: {}", labels.join(", "), show(h)));
            }
            println!("{text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A view on one line: total, refs (with nested), rows.
fn show(s: &ViewState) -> String {
    fn r(x: &arcana::engine::Ref) -> String {
        let mut out = format!("{}/{}", x.key.table, x.key.id);
        for (n, nr) in &x.nested {
            out.push_str(&format!("{{{n}: {}}}", r(nr)));
        }
        out
    }
    let refs: Vec<String> = s.refs.iter().map(r).collect();
    let rows: Vec<String> = s
        .rows
        .iter()
        .map(|(k, f)| {
            let fields: Vec<String> = f.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
            format!("{}/{} {{{}}}", k.table, k.id, fields.join(", "))
        })
        .collect();
    format!(
        "v{} e{} total={:?} error={:?}\n    refs [{}]\n    rows [{}]",
        s.version,
        s.epoch,
        s.total,
        s.error,
        refs.join(", "),
        rows.join("; ")
    )
}
