//! Arcana: a reactive graph sync engine for PostgreSQL, served over gRPC.
#![warn(missing_docs)]

/// Messages and the client generated from `proto/arcana/v1`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("arcana.v1");
    /// The encoded file descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("arcana_descriptor");
}

pub mod app;
pub mod client;
pub mod codegen;
pub mod config;
pub mod engine;
pub mod grpc;
pub mod offline;
pub mod ops;
pub mod postgres;
