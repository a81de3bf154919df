//! Arcana: a reactive graph sync engine for PostgreSQL, served over gRPC.
#![warn(missing_docs)]

/// Messages and the client generated from `proto/arcana/v1`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("arcana.v1");
    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("arcana_descriptor");
    /// The full name of the Arcana service, as health checks and
    /// reflection name it.
    pub const ARCANA_SERVICE: &str = "arcana.v1.ArcanaService";
}

pub mod app;
pub mod auth;
pub mod client;
pub mod cluster;
pub mod codegen;
pub mod config;
pub mod engine;
pub mod grpc;
pub mod offline;
pub mod ops;
pub mod postgres;
pub mod wire;
