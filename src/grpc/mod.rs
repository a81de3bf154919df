//! The gRPC surface: the tonic service, proto conversions, authentication,
//! grpc-web, health and reflection. The engine knows none of this.

pub mod auth;
pub mod codec;
pub mod convert;
mod jwks;
pub mod limits;
pub mod listener;
pub mod parts;
pub mod server;
pub mod service;
pub mod status;
pub mod tls;
pub mod wire;

pub use auth::{Authenticator, Credentials, TokenAuthenticator};
pub use limits::{IpNet, Limits};
pub use server::{serve, ServeOptions};
pub use service::{Service, DEFAULT_BATCH_BYTES};
