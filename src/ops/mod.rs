//! Operations: the admin HTTP listener with Prometheus metrics, health
//! checks and the DevTools page, readiness for the gRPC health service, replication slot care,
//! log output and trace export.

pub mod admin;
pub mod devtools;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod offline_metrics;
pub mod slot;
pub mod telemetry;
