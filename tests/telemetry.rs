//! Trace export: a server started with an OTLP endpoint sends the spans of
//! its RPCs, mutations, change batches and evaluation rounds, with their
//! attributes, to a collector (a minimal OTLP/gRPC trace service here).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arcana::app::DEMO_CONFIG;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// One received span: its name, ids and attributes, and its service.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    span_id: Vec<u8>,
    parent: Vec<u8>,
    attrs: HashMap<String, Any>,
    service: Option<Any>,
}

impl Got {
    fn str(&self, key: &str) -> Option<&str> {
        match self.attrs.get(key) {
            Some(Any::StringValue(s)) => Some(s),
            _ => None,
        }
    }

    fn int(&self, key: &str) -> Option<i64> {
        match self.attrs.get(key) {
            Some(Any::IntValue(i)) => Some(*i),
            _ => None,
        }
    }

    fn bool(&self, key: &str) -> Option<bool> {
        match self.attrs.get(key) {
            Some(Any::BoolValue(b)) => Some(*b),
            _ => None,
        }
    }
}

fn attrs(kvs: &[KeyValue]) -> HashMap<String, Any> {
    kvs.iter()
        .filter_map(|kv| Some((kv.key.clone(), kv.value.clone()?.value?)))
        .collect()
}

/// Records every span it is sent.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Got>>>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| attrs(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    got.push(Got {
                        name: s.name,
                        span_id: s.span_id,
                        parent: s.parent_span_id,
                        attrs: attrs(&s.attributes),
                        service: resource.get("service.name").cloned(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Serves on a free local port; returns its `http://` endpoint.
    async fn start(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let svc = TraceServiceServer::new(self.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn spans(&self) -> Vec<Got> {
        self.0.lock().unwrap().clone()
    }

    /// Waits until a span satisfies `pred`; returns it.
    async fn wait_for(&self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        let start = Instant::now();
        loop {
            if let Some(s) = self.spans().into_iter().find(&pred) {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no span {what} arrived; got {:#?}",
                self.spans()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `arcana serve` child process.
struct Server {
    child: tokio::process::Child,
    addr: String,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    /// Starts the server on a fresh database with `extra` config appended
    /// and `env` set, and waits until it accepts gRPC connections.
    async fn start(extra: &str, env: &[(&str, &str)]) -> Server {
        let db = fresh_database().await;
        let dir = std::env::temp_dir().join(format!("arcana-otel-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("arcana.toml");
        std::fs::write(
            &path,
            format!("{DEMO_CONFIG}\n[changes]\nmode = \"none\"\n{extra}"),
        )
        .unwrap();
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let addr = format!("127.0.0.1:{port}");
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_arcana"));
        cmd.args([
            "serve",
            "--config",
            path.to_str().unwrap(),
            "--listen",
            &addr,
        ])
        .args(["--database-url", &db])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_SERVICE_NAME")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let server = Server {
            child,
            addr,
            _dir: TempDir(dir),
        };
        let start = Instant::now();
        while tonic::transport::Channel::from_shared(server.endpoint())
            .unwrap()
            .connect()
            .await
            .is_err()
        {
            assert!(start.elapsed() < WAIT, "the server did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn client(&self, token: &str) -> Client {
        let channel = tonic::transport::Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap();
        arcana::proto::arcana_service_client::ArcanaServiceClient::with_interceptor(
            channel,
            Bearer(token.into()),
        )
    }

    /// SIGTERM, then waits for a clean exit (which flushes the spans);
    /// returns what the server logged.
    async fn stop(mut self) -> String {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(self.child.id().unwrap() as i32, libc::SIGTERM);
        }
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the server exits")
            .unwrap();
        let logs = std::fs::read_to_string(self._dir.0.join("stderr.log")).unwrap();
        assert!(status.success(), "{status:?}: {logs}");
        logs
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_rpcs_mutations_batches_and_rounds_are_exported() {
    let collector = Collector::default();
    let otlp = collector.start().await;
    let server = Server::start(
        "[telemetry]\nbatch_delay_ms = 100\n",
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &otlp),
            ("OTEL_SERVICE_NAME", "arcana-under-test"),
        ],
    )
    .await;

    let mut live = Live::connect(server.client("dev-alice").await)
        .await
        .unwrap();
    live.subscribe("project_tasks", project(1)).await.unwrap();
    live.mutate(
        "create_task",
        params(&[("project_id", int(1)), ("title", text("traced"))]),
    )
    .await
    .unwrap();

    let sub = collector
        .wait_for("for Connect/Subscribe", |s| s.name == "Connect/Subscribe")
        .await;
    assert_eq!(sub.str("rpc.method"), Some("Connect/Subscribe"));
    assert_eq!(sub.str("session.id"), Some(live.session_id.as_str()));
    assert_eq!(
        sub.service,
        Some(Any::StringValue("arcana-under-test".into()))
    );

    let rpc = collector
        .wait_for("for Connect/Mutate", |s| s.name == "Connect/Mutate")
        .await;
    assert_eq!(rpc.str("session.id"), Some(live.session_id.as_str()));
    let mutation = collector
        .wait_for("for the mutation", |s| s.name == "mutation")
        .await;
    assert_eq!(mutation.str("mutation"), Some("create_task"));
    assert_eq!(
        mutation.parent, rpc.span_id,
        "the mutation's span is a child of its RPC's"
    );

    let batch = collector
        .wait_for("for the change batch", |s| s.name == "change_batch")
        .await;
    assert_eq!(batch.int("changes"), Some(1), "{batch:?}");
    assert_eq!(batch.int("views"), Some(1), "{batch:?}");
    let round = collector
        .wait_for("for an evaluation round of project_tasks", |s| {
            s.name == "evaluation_round" && s.str("graph") == Some("project_tasks")
        })
        .await;
    assert_eq!(round.int("views"), Some(1), "{round:?}");
    assert_eq!(round.int("evaluated"), Some(1), "{round:?}");
    assert_eq!(round.bool("lateral"), Some(false), "{round:?}");

    // A unary RPC without a session.
    server
        .client("dev-alice")
        .await
        .describe(arcana::proto::DescribeRequest {})
        .await
        .unwrap();
    let describe = collector
        .wait_for("for Describe", |s| s.name == "Describe")
        .await;
    assert_eq!(describe.str("rpc.method"), Some("Describe"));
    assert_eq!(describe.str("session.id"), None);

    // Two views of a graph due at once share a round and its lateral query.
    // Whether both are queued before the round starts depends on timing, so
    // report changes until they are.
    live.subscribe("project_tasks", project(2)).await.unwrap();
    let mut notifier = server.client("dev-service").await;
    let two = |s: &Got| s.name == "evaluation_round" && s.int("views") == Some(2);
    for _ in 0..20 {
        notifier
            .notify(arcana::proto::NotifyRequest {
                changes: vec![arcana::proto::Change {
                    table: "tasks".into(),
                    id: String::new(),
                    columns: vec![],
                    workspace_id: "acme".into(),
                }],
            })
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        if collector.spans().iter().any(two) {
            break;
        }
    }
    let round = collector.wait_for("for a round of two views", two).await;
    assert_eq!(round.bool("lateral"), Some(true), "{round:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_endpoint_exports_and_none_exports_nothing() {
    let collector = Collector::default();
    let otlp = collector.start().await;

    // No endpoint configured: export is off. The collector's address is in
    // the SDK's own variable, which an exporter built without an endpoint
    // falls back to, so a server that exported anyway would reach it (under
    // its own service name). Its spans would be flushed when it stops.
    let quiet = Server::start(
        "[telemetry]\nbatch_delay_ms = 100\n",
        &[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &otlp),
            ("OTEL_SERVICE_NAME", "arcana-quiet"),
        ],
    )
    .await;
    let mut live = Live::connect(quiet.client("dev-alice").await)
        .await
        .unwrap();
    live.subscribe("project_tasks", project(1)).await.unwrap();
    quiet.stop().await;

    // The endpoint from the config file, with the default service name.
    let server = Server::start(
        &format!("[telemetry]\notlp_endpoint = \"{otlp}\"\nbatch_delay_ms = 60000\n"),
        &[],
    )
    .await;
    let mut live = Live::connect(server.client("dev-alice").await)
        .await
        .unwrap();
    live.subscribe("project_tasks", project(1)).await.unwrap();
    // Spans still queued when the server stops are flushed on the way out.
    server.stop().await;
    let quiet_name = Some(Any::StringValue("arcana-quiet".into()));
    let sub = collector
        .wait_for("for Connect/Subscribe", |s| {
            s.name == "Connect/Subscribe" && s.service != quiet_name
        })
        .await;
    assert_eq!(sub.service, Some(Any::StringValue("arcana".into())));

    // The same work, flushed the same way by a server stopped later, has
    // arrived: the quiet server's would have too.
    let quiet_spans: Vec<Got> = collector
        .spans()
        .into_iter()
        .filter(|s| s.service == quiet_name)
        .collect();
    assert!(
        quiet_spans.is_empty(),
        "the server without an endpoint exported {quiet_spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_is_logged_once_and_requests_go_on() {
    // A collector that hangs up on every connection, counting them: each
    // is an export attempt that fails.
    let refusing = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = refusing.local_addr().unwrap();
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = attempts.clone();
    let hangup = tokio::spawn(async move {
        while let Ok((conn, _)) = refusing.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(conn);
        }
    });
    let server = Server::start(
        &format!(
            "[telemetry]\notlp_endpoint = \"http://{dead}\"\nbatch_delay_ms = 50\nexport_timeout_ms = 500\n"
        ),
        &[],
    )
    .await;
    let mut live = Live::connect(server.client("dev-alice").await)
        .await
        .unwrap();
    live.subscribe("project_tasks", project(1)).await.unwrap();
    // Requests go on while export rounds fail, until several have failed.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut i = 0;
    while attempts.load(std::sync::atomic::Ordering::Relaxed) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the exporter never tried the collector three times"
        );
        i += 1;
        live.mutate(
            "create_task",
            params(&[("project_id", int(1)), ("title", text(&format!("t{i}")))]),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = server.stop().await;
    hangup.abort();
    let warnings = logs
        .lines()
        .filter(|l| l.contains("exporting traces failed"))
        .count();
    assert_eq!(warnings, 1, "{logs}");
}
