//! Operations: the admin HTTP listener with Prometheus metrics and health
//! checks, readiness for the gRPC health service, replication slot care,
//! and log output.

pub mod admin;
pub mod health;
pub mod logs;
pub mod metrics;
pub mod slot;
