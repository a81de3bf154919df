//! Compiles the protos with protox (no system `protoc` needed).
//!
//! Messages and the client come from tonic-prost-build. The server trait is
//! generated separately with tonic-build's manual builder so that the two
//! streaming methods can send `WireServerMessage`, a byte-compatible twin of
//! `ServerMessage` whose view frames are encoded once and shared by every
//! subscriber of a view, and use the lean codec (small initial buffers) that
//! keeps idle sessions cheap.
//!
//! The offline sync service's server is generated the same way, with the
//! plain prost codec: its messages need no sharing.

use std::path::PathBuf;

use prost::Message;
use tonic_build::manual::{Method, Service};

const PROTOS: &[&str] = &[
    "arcana/v1/value.proto",
    "arcana/v1/view.proto",
    "arcana/v1/describe.proto",
    "arcana/v1/service.proto",
    "arcana/v1/offline.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["proto"])?;
    std::fs::write(out.join("arcana_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        // The rpc is named Connect, which would clash with the client's
        // `connect` constructor: build clients with `new(channel)` instead.
        .build_transport(false)
        .bytes(".arcana.v1.Value")
        .compile_fds(fds)?;

    let unary_with = |name: &str, route: &str, input: &str, output: &str, codec: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(input)
            .output_type(format!("crate::proto::{output}"))
            .codec_path(codec)
            .build()
    };
    let unary = |name: &str, route: &str, input: &str, output: &str| {
        unary_with(
            name,
            route,
            &format!("crate::proto::{input}"),
            output,
            "tonic_prost::ProstCodec",
        )
    };
    // Calls whose requests are small: larger ones are refused undecoded.
    let small = |name: &str, route: &str, input: &str, output: &str| {
        unary_with(
            name,
            route,
            &format!("crate::proto::{input}"),
            output,
            "crate::grpc::codec::SmallCodec",
        )
    };
    let service = Service::builder()
        .name("ArcanaService")
        .package("arcana.v1")
        .method(
            Method::builder()
                .name("connect")
                .route_name("Connect")
                .input_type("crate::grpc::codec::Inbound")
                .output_type("crate::wire::encoded::WireServerMessage")
                .codec_path("crate::grpc::codec::ConnectCodec")
                .client_streaming()
                .server_streaming()
                .build(),
        )
        .method(
            Method::builder()
                .name("open_session")
                .route_name("OpenSession")
                .input_type("crate::proto::OpenSessionRequest")
                .output_type("crate::wire::encoded::WireServerMessage")
                .codec_path("crate::grpc::codec::LeanCodec")
                .server_streaming()
                .build(),
        )
        .method(small(
            "subscribe",
            "Subscribe",
            "SubscribeRequest",
            "SubscribeResponse",
        ))
        .method(small(
            "unsubscribe",
            "Unsubscribe",
            "UnsubscribeRequest",
            "UnsubscribeResponse",
        ))
        .method(unary_with(
            "sync",
            "Sync",
            "crate::grpc::codec::LazySync",
            "SyncResponse",
            "crate::grpc::codec::SyncCodec",
        ))
        .method(small(
            "reanchor",
            "Reanchor",
            "ReanchorRequest",
            "ReanchorResponse",
        ))
        .method(unary("mutate", "Mutate", "MutateRequest", "MutateResponse"))
        .method(unary("notify", "Notify", "NotifyRequest", "NotifyResponse"))
        .method(small(
            "describe",
            "Describe",
            "DescribeRequest",
            "DescribeResponse",
        ))
        .method(small("stats", "Stats", "StatsRequest", "StatsResponse"))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .compile(&[service, offline_service()]);
    Ok(())
}

/// The `OfflineService` server trait, over the messages in `crate::proto`.
fn offline_service() -> Service {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::proto::{input}"))
            .output_type(format!("crate::proto::{output}"))
            .codec_path("tonic_prost::ProstCodec")
    };
    Service::builder()
        .name("OfflineService")
        .package("arcana.v1")
        .method(
            method(
                "capabilities",
                "Capabilities",
                "CapabilitiesRequest",
                "CapabilitiesResponse",
            )
            .build(),
        )
        .method(
            method(
                "register_client",
                "RegisterClient",
                "RegisterClientRequest",
                "RegisterClientResponse",
            )
            .build(),
        )
        .method(
            method("push", "Push", "PushChunk", "PushResponse")
                .client_streaming()
                .build(),
        )
        .method(
            method("pull", "Pull", "PullRequest", "PullResponse")
                .server_streaming()
                .build(),
        )
        .method(
            method("snapshot", "Snapshot", "SnapshotRequest", "SnapshotChunk")
                .server_streaming()
                .build(),
        )
        .build()
}
