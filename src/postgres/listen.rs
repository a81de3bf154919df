//! Change detection with LISTEN/NOTIFY: a dedicated connection listens on
//! the channel the generated triggers notify (see `triggers.rs`).
//!
//! Notifications of one transaction arrive together at its commit; those read
//! in one go are grouped by transaction id into one batch each, so a view
//! never shows half a transaction. The connection is re-opened with backoff
//! when lost; notifications sent meanwhile are gone for good, so after every
//! reconnect all live views are re-evaluated and clients converge anyway.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::AsyncMessage;

use super::Listener;
use crate::engine::{Change, ChangeBatch, Engine};

/// One parsed notification: its transaction and change.
fn parse(payload: &str) -> Option<(String, Change)> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
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
        route_values: Default::default(),
        values: None,
    };
    Some((xid, change))
}

/// Starts listening on `channel`. Returns once `LISTEN` is in effect, so
/// no change committed after startup can slip by; fails if the first
/// attempt does.
pub async fn spawn(engine: Engine, url: String, channel: String) -> Result<Listener, String> {
    let (stop, mut stopped) = watch::channel(false);
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let task = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(100);
        let mut outage = false;
        let mut ready = Some(ready_tx);
        loop {
            let r = tokio::select! {
                r = listen_once(&engine, &url, &channel, outage, &mut backoff, &mut ready) => r,
                _ = stopped.wait_for(|s| *s) => return,
            };
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
        Ok(Ok(())) => Ok(Listener { stop, task }),
        Ok(Err(e)) => Err(format!("starting the NOTIFY listener: {e}")),
        Err(_) => Err("the NOTIFY listener stopped during startup".into()),
    }
}

/// Listens until the connection fails; returns why.
async fn listen_once(
    engine: &Engine,
    url: &str,
    channel: &str,
    after_outage: bool,
    backoff: &mut Duration,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
) -> String {
    let (client, mut conn) = match tokio_postgres::connect(url, tokio_postgres::NoTls).await {
        Ok(c) => c,
        Err(e) => return e.to_string(),
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
    if let Some(tx) = ready.take() {
        let _ = tx.send(Ok(()));
    }
    *backoff = Duration::from_millis(100);
    if after_outage {
        if let Err(e) = engine.refresh_all().await {
            return e.to_string();
        }
    }
    loop {
        let Some(first) = rx.recv().await else {
            return driver.await.unwrap_or_else(|e| e.to_string());
        };
        let mut notes = vec![first];
        while let Ok(n) = rx.try_recv() {
            notes.push(n);
        }
        // Consecutive notifications of one transaction form one batch.
        let mut batches: Vec<(String, Vec<Change>)> = Vec::new();
        for n in &notes {
            let Some((xid, change)) = parse(n.payload()) else {
                tracing::warn!(
                    payload = n.payload(),
                    "ignoring a malformed change notification"
                );
                continue;
            };
            match batches.last_mut() {
                Some((x, changes)) if *x == xid => changes.push(change),
                _ => batches.push((xid, vec![change])),
            }
        }
        for (_, changes) in batches {
            if let Err(e) = engine.changes(ChangeBatch::new(changes, None)).await {
                return e.to_string();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_into_changes() {
        let (x, c) =
            parse(r#"{"t":"tasks","op":"UPDATE","k":"it's \"q\"","c":["title"],"x":"77"}"#)
                .unwrap();
        assert_eq!(x, "77");
        assert_eq!(
            c,
            Change {
                table: "tasks".into(),
                id: "it's \"q\"".into(),
                columns: vec!["title".into()],
                route_values: Default::default(),
                values: None,
            }
        );
        let (_, c) = parse(r#"{"t":"tasks","op":"INSERT","k":"1","c":null,"x":"78"}"#).unwrap();
        assert!(c.columns.is_empty());
        let (_, c) = parse(r#"{"t":"tasks","op":"TRUNCATE","x":"79"}"#).unwrap();
        assert_eq!(c.id, "");
        assert!(parse("not json").is_none());
    }
}
