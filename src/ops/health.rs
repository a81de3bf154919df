//! Readiness: the database answers and the change listener is streaming.
//! Drives `/readyz` and the gRPC health service's status.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::proto::ARCANA_SERVICE as SERVICE_NAME;

/// What readiness looks at.
#[derive(Clone)]
pub struct Readiness {
    pool: Pool,
    /// The change listener's streaming flag; none without a listener.
    streaming: Option<Arc<AtomicBool>>,
    timeout: Duration,
    shutting_down: Arc<AtomicBool>,
    health: HealthReporter,
    /// The status last reported: watchers hear only changes.
    reported: Arc<tokio::sync::Mutex<Option<bool>>>,
}

impl Readiness {
    /// Readiness over `pool` and the listener flag `streaming`, reported to
    /// `health`; the database must answer within `timeout`.
    pub fn new(
        pool: Pool,
        streaming: Option<Arc<AtomicBool>>,
        timeout: Duration,
        health: HealthReporter,
    ) -> Readiness {
        Readiness {
            pool,
            streaming,
            timeout,
            shutting_down: Arc::default(),
            health,
            reported: Arc::default(),
        }
    }

    /// Whether the change listener is streaming (none without one).
    pub fn streaming(&self) -> Option<bool> {
        self.streaming.as_ref().map(|s| s.load(Ordering::Relaxed))
    }

    /// The pool checked.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Ready, or why not.
    pub async fn check(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("the server is shutting down".into());
        }
        let ping = async {
            let c = self.pool.get().await.map_err(|e| e.to_string())?;
            c.simple_query("SELECT 1").await.map_err(|e| e.to_string())
        };
        match tokio::time::timeout(self.timeout, ping).await {
            Err(_) => {
                return Err(format!(
                    "the database did not answer within {} ms",
                    self.timeout.as_millis()
                ))
            }
            Ok(Err(e)) => return Err(format!("the database does not answer: {e}")),
            Ok(Ok(_)) => {}
        }
        if self.streaming() == Some(false) {
            return Err(
                "the change listener is not streaming (connecting or reconnecting to the database)"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks and reports the outcome to the gRPC health service.
    pub async fn refresh(&self) -> Result<(), String> {
        let r = self.check().await;
        self.report(r.is_ok()).await;
        r
    }

    async fn report(&self, ready: bool) {
        // Held across the update, so concurrent reports land in order.
        let mut last = self.reported.lock().await;
        if *last == Some(ready) {
            return;
        }
        *last = Some(ready);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.health.set_service_status("", status).await;
        self.health.set_service_status(SERVICE_NAME, status).await;
    }

    /// From now on not ready, and says so to the gRPC health service.
    pub async fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.report(false).await;
    }

    /// Refreshes every `every` until the task is dropped, logging changes.
    pub async fn watch(self, every: Duration) {
        let mut was: Option<bool> = None;
        loop {
            let r = self.refresh().await;
            match (&r, was) {
                (Ok(()), None) => tracing::info!("ready"),
                (Ok(()), Some(false)) => tracing::info!("ready again"),
                // Not being ready at startup is normal for a moment.
                (Err(why), None) => tracing::info!(reason = %why, "not ready yet"),
                (Err(why), Some(true)) => tracing::warn!(reason = %why, "not ready"),
                _ => {}
            }
            was = Some(r.is_ok());
            tokio::time::sleep(every).await;
        }
    }
}
