//! The frame codec: engine values, rows and frames to protobuf and back,
//! snapshots in parts, pre-encoded server messages, and engine errors as
//! gRPC statuses. It sits below every transport (the gRPC service, the
//! offline service, the cluster's frames stream, the Rust client), so each
//! encodes a frame the same way and none depends on another.

pub mod convert;
pub mod encoded;
pub mod parts;
pub mod status;
