//! Change detection with LISTEN/NOTIFY: a dedicated connection listens on
//! the channel the generated triggers notify (see `triggers.rs`).
//!
//! Notifications of one transaction arrive together, in a row, after its
//! commit, and end with the marker the deferred trigger sends (see
//! `triggers.rs`). A transaction becomes one batch when its marker arrives,
//! or a notification of another transaction does, so a view never shows
//! half a transaction however the notifications are read. A transaction
//! without a marker (it only truncated) is handed over after a short quiet
//! period. The connection is re-opened with backoff
//! when lost; notifications sent meanwhile are gone for good, so after every
//! reconnect all live views are re-evaluated and clients converge anyway.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

use super::sink::ChangeSink;
use super::Listener;
use crate::engine::{Change, ChangeBatch};

/// One parsed notification.
#[derive(Debug, PartialEq)]
enum Note {
    /// A change of transaction `.0`.
    Change(String, Change),
    /// Transaction `.0` has sent all its changes.
    End(String),
}

/// How long a transaction without an end marker may wait for more of its
/// notifications: a truncate-only transaction has no marker, and triggers
/// installed by an older version send none.
const QUIET: Duration = Duration::from_millis(50);
/// How long a transaction that expects a marker waits for it at most.
const MARKER_WAIT: Duration = Duration::from_secs(2);

fn parse(payload: &str) -> Option<Note> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    if let Some(x) = v.get("end").and_then(|x| x.as_str()) {
        return Some(Note::End(x.to_owned()));
    }
    let table = v.get("t")?.as_str()?.to_owned();
    let op = v.get("op").and_then(|o| o.as_str()).unwrap_or("");
    let id = v.get("k").and_then(|k| k.as_str()).unwrap_or("").to_owned();
    let columns = match (op, v.get("c")) {
        ("UPDATE", Some(serde_json::Value::Array(cols))) => cols
            .iter()
            .filter_map(|c| c.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };
    let xid = v.get("x").and_then(|x| x.as_str()).unwrap_or("").to_owned();
    let change = Change {
        table,
        id,
        columns,
        ..Change::default()
    };
    Some(Note::Change(xid, change))
}

/// The transaction whose notifications are being read.
struct Open {
    xid: String,
    changes: Vec<Change>,
    /// Only truncates so far: no marker will come.
    truncates_only: bool,
    since: tokio::time::Instant,
}

impl Open {
    /// How long to wait for more of its notifications before handing it over.
    fn deadline(&self) -> tokio::time::Instant {
        self.since
            + if self.truncates_only {
                QUIET
            } else {
                MARKER_WAIT
            }
    }
}

/// Starts listening on `channel`. Returns once `LISTEN` is in effect, so
/// no change committed after startup can slip by; fails if the first
/// attempt does. Each transaction goes to `sink` as one batch.
pub async fn spawn(
    sink: std::sync::Arc<dyn ChangeSink>,
    url: String,
    channel: String,
) -> Result<Listener, String> {
    let (stop, mut stopped) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let streaming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = streaming.clone();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut outage = false;
        let mut ready = Some(ready_tx);
        loop {
            let r = tokio::select! {
                r = listen_once(sink.as_ref(), &url, &channel, outage, &mut backoff, &mut ready, &flag) => r,
                _ = stopped.wait_for(|s| *s) => return,
            };
            flag.store(false, std::sync::atomic::Ordering::Relaxed);
            if let Some(tx) = ready.take() {
                let _ = tx.send(Err(r));
                return;
            }
            tracing::warn!(error = %r, retry_in = ?backoff, "NOTIFY listener lost its connection");
            outage = true;
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(Listener {
            stop,
            task,
            streaming,
        }),
        Ok(Err(e)) => Err(format!("starting the NOTIFY listener: {e}")),
        Err(_) => Err("the NOTIFY listener stopped during startup".into()),
    }
}

/// Listens until the connection fails; returns why.
async fn listen_once(
    sink: &dyn ChangeSink,
    url: &str,
    channel: &str,
    after_outage: bool,
    backoff: &mut Duration,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
    streaming: &std::sync::atomic::AtomicBool,
) -> String {
    let (client, mut conn) = match super::tls::connect(url).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    // The connection must be polled for queries to complete; a task drives
    // it and forwards notifications through a bounded queue.
    let (tx, mut rx) = mpsc::channel::<tokio_postgres::Notification>(4096);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n).await.is_err() {
                        return "listener stopped".to_owned();
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_owned()
    });
    let quoted = format!("\"{}\"", channel.replace('"', "\"\""));
    if let Err(e) = client.batch_execute(&format!("LISTEN {quoted}")).await {
        driver.abort();
        return e.to_string();
    }
    tracing::info!(channel, "NOTIFY listener listening");
    streaming.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(tx) = ready.take() {
        let _ = tx.send(Ok(()));
    }
    *backoff = Duration::from_millis(100);
    if after_outage {
        if let Err(e) = sink.refresh_all().await {
            return e;
        }
    }
    let mut open: Option<Open> = None;
    loop {
        let next = match &open {
            Some(o) => match tokio::time::timeout_at(o.deadline(), rx.recv()).await {
                Ok(n) => n,
                Err(_) => {
                    if !o.truncates_only {
                        tracing::warn!(
                            xid = o.xid,
                            "no end marker for a transaction's notifications; reinstall the triggers (arcana triggers install)"
                        );
                    }
                    if let Err(e) = hand_over(sink, open.take()).await {
                        return e;
                    }
                    continue;
                }
            },
            None => rx.recv().await,
        };
        let Some(n) = next else {
            return driver.await.unwrap_or_else(|e| e.to_string());
        };
        let Some(note) = parse(n.payload()) else {
            tracing::warn!(
                payload = n.payload(),
                "ignoring a malformed change notification"
            );
            continue;
        };
        // A transaction's notifications come in a row: a note of another
        // transaction means the open one is complete.
        let (xid, change) = match note {
            Note::End(xid) => {
                if open.as_ref().is_some_and(|o| o.xid != xid) {
                    tracing::warn!("a transaction's notifications ended without its marker");
                }
                if let Err(e) = hand_over(sink, open.take()).await {
                    return e;
                }
                continue;
            }
            Note::Change(xid, change) => (xid, change),
        };
        if open.as_ref().is_some_and(|o| o.xid != xid) {
            if let Err(e) = hand_over(sink, open.take()).await {
                return e;
            }
        }
        let o = open.get_or_insert_with(|| Open {
            xid,
            changes: Vec::new(),
            truncates_only: true,
            since: tokio::time::Instant::now(),
        });
        o.truncates_only &= change.id.is_empty() && change.columns.is_empty();
        o.changes.push(change);
    }
}

/// Hands a complete transaction to the sink as one batch.
async fn hand_over(sink: &dyn ChangeSink, open: Option<Open>) -> Result<(), String> {
    match open {
        // The 64-bit transaction id names the transaction.
        Some(o) => {
            let id = (!o.xid.is_empty()).then(|| format!("tx-{}", o.xid));
            sink.changes(ChangeBatch::new(o.changes, None), id).await
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_into_changes() {
        let change = |p: &str| match parse(p) {
            Some(Note::Change(x, c)) => (x, c),
            other => panic!("{other:?}"),
        };
        let (x, c) =
            change(r#"{"t":"tasks","op":"UPDATE","k":"it's \"q\"","c":["title"],"x":"77"}"#);
        assert_eq!(x, "77");
        assert_eq!(
            c,
            Change {
                table: "tasks".into(),
                id: "it's \"q\"".into(),
                columns: vec!["title".into()],
                ..Change::default()
            }
        );
        let (_, c) = change(r#"{"t":"tasks","op":"INSERT","k":"1","c":null,"x":"78"}"#);
        assert!(c.columns.is_empty());
        let (_, c) = change(r#"{"t":"tasks","op":"TRUNCATE","x":"79"}"#);
        assert_eq!(c.id, "");
        assert_eq!(parse(r#"{"end":"80"}"#), Some(Note::End("80".into())));
        assert!(parse("not json").is_none());
    }
}
