//! The gRPC surface: the tonic service, proto conversions, authentication,
//! grpc-web, health and reflection. The engine knows none of this.

pub mod caller;
pub mod codec;
pub mod connect;
pub mod deadline;
mod holding;
pub mod limits;
pub mod listener;
mod requests;
pub mod server;
pub mod service;
pub mod sse;
mod stream;
pub mod tls;

pub use limits::{IpNet, Limits};
pub use server::{serve, ServeOptions};
pub use service::{Service, DEFAULT_BATCH_BYTES};
