//! Waking follow streams: one connection LISTENs on the channel the commit
//! trigger notifies and broadcasts the committed scopes. Follow streams
//! wait on the broadcast and pull again when one of their scopes moved, so
//! an idle stream costs a parked task and no database connection.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{broadcast, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::AsyncMessage;

use super::schema::CHANNEL;

/// The broadcast message meaning "anything may have changed" (after the
/// listener reconnected and may have missed notifications).
pub const ANY: &str = "*";

/// Starts the listener; returns once it listens (or fails to the first
/// time).
pub async fn spawn_listener(
    url: String,
    tx: broadcast::Sender<Arc<str>>,
) -> Result<JoinHandle<()>, String> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut backoff = Duration::from_millis(100);
        loop {
            let e = listen_once(&url, &tx, &mut ready).await;
            if let Some(r) = ready.take() {
                let _ = r.send(Err(e));
                return;
            }
            tracing::warn!(error = %e, retry_in = ?backoff, "offline NOTIFY listener lost its connection");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    match ready_rx.await {
        Ok(Ok(())) => Ok(task),
        Ok(Err(e)) => Err(format!("offline: starting the NOTIFY listener: {e}")),
        Err(_) => Err("offline: the NOTIFY listener stopped during startup".into()),
    }
}

async fn listen_once(
    url: &str,
    tx: &broadcast::Sender<Arc<str>>,
    ready: &mut Option<oneshot::Sender<Result<(), String>>>,
) -> String {
    let (client, mut conn) = match crate::postgres::tls::connect(url).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let (ntx, mut nrx) = tokio::sync::mpsc::channel::<String>(1024);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(m) = messages.next().await {
            match m {
                Ok(AsyncMessage::Notification(n)) => {
                    if ntx.send(n.payload().to_owned()).await.is_err() {
                        return "listener stopped".to_owned();
                    }
                }
                Ok(_) => {}
                Err(e) => return e.to_string(),
            }
        }
        "connection closed".to_owned()
    });
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        driver.abort();
        return e.to_string();
    }
    match ready.take() {
        Some(r) => {
            let _ = r.send(Ok(()));
        }
        // Notifications may have been lost while reconnecting.
        None => {
            let _ = tx.send(ANY.into());
        }
    }
    while let Some(scope) = nrx.recv().await {
        let _ = tx.send(scope.into());
    }
    driver.await.unwrap_or_else(|e| e.to_string())
}
