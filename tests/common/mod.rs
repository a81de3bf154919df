//! Test harness: one throwaway PostgreSQL per test binary, a fresh database
//! per test, the real server on a random port, and a live client over the
//! real bidirectional gRPC stream.
#![allow(dead_code)]

pub mod nats;
pub mod offline;

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use arcana::app::{App, DEMO_CONFIG, DEMO_SCHEMA};
use arcana::client::ViewState;
use arcana::config::Config;
use arcana::postgres::embedded::{EmbeddedOptions, EmbeddedPostgres};
use arcana::proto::{
    self as pb, arcana_service_client::ArcanaServiceClient, client_message::Kind as Req,
    server_message::Kind as Msg,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Request, Status, Streaming};

/// Limit for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(15);

pub fn cluster() -> &'static EmbeddedPostgres {
    static PG: OnceLock<EmbeddedPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(EmbeddedPostgres::start(EmbeddedOptions {
                fast: true,
                ..Default::default()
            }))
            .expect("start PostgreSQL")
        })
        .join()
        .unwrap()
    })
}

/// Creates a fresh database loaded with the demo schema; returns its URL.
pub async fn fresh_database() -> String {
    let pg = cluster();
    let name = format!("t_{:016x}", rand::random::<u64>());
    arcana::postgres::execute_script(&pg.url("postgres"), &format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = pg.url(&name);
    arcana::postgres::execute_script(&url, DEMO_SCHEMA)
        .await
        .unwrap();
    url
}

#[derive(Clone)]
pub struct Bearer(pub String);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if !self.0.is_empty() {
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", self.0).parse().unwrap(),
            );
        }
        Ok(req)
    }
}

pub type Client = ArcanaServiceClient<InterceptedService<Channel, Bearer>>;

pub struct Harness {
    pub app: Option<App>,
    pub db_url: String,
    pub config: Config,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::with(|_| {}).await
    }

    /// A harness whose server detects changes from the WAL, on its own slot.
    pub async fn wal() -> Harness {
        Self::with(|c| {
            c.changes.mode = arcana::config::ChangeMode::Wal;
            c.changes.slot = format!("slot_{:016x}", rand::random::<u64>());
        })
        .await
    }

    pub async fn with(f: impl FnOnce(&mut Config)) -> Harness {
        Self::with_extra("", "", f).await
    }

    /// Like `with`, plus extra schema SQL and extra config TOML (graphs,
    /// mutations) appended to the demo's.
    pub async fn with_extra(schema: &str, toml: &str, f: impl FnOnce(&mut Config)) -> Harness {
        if let Ok(filter) = std::env::var("ARCANA_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let db_url = fresh_database().await;
        if !schema.is_empty() {
            arcana::postgres::execute_script(&db_url, schema)
                .await
                .unwrap();
        }
        let mut config = Config::parse(&format!("{DEMO_CONFIG}\n{toml}")).unwrap();
        // Tests of the engine use explicit notifications; change-detection
        // tests opt into a mode.
        config.changes.mode = arcana::config::ChangeMode::None;
        f(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::start(&config, &db_url, listener).await.unwrap();
        Harness {
            app: Some(app),
            db_url,
            config,
        }
    }

    /// Stops the server and starts a new one on the same database and config.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await.unwrap();
        }
    }

    pub async fn start_again(&mut self) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.app = Some(
            App::start(&self.config, &self.db_url, listener)
                .await
                .unwrap(),
        );
    }

    pub fn app(&self) -> &App {
        self.app.as_ref().unwrap()
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.app().addr)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    pub async fn client(&self, token: &str) -> Client {
        ArcanaServiceClient::with_interceptor(self.channel().await, Bearer(token.into()))
    }

    pub async fn live(&self, token: &str) -> Live {
        Live::connect(self.client(token).await).await.unwrap()
    }

    /// Runs SQL on the test database from a plain connection.
    pub async fn sql(&self, q: &str) {
        arcana::postgres::execute_script(&self.db_url, q)
            .await
            .unwrap();
    }

    pub async fn query_i64(&self, q: &str) -> i64 {
        let (c, conn) = tokio_postgres::connect(&self.db_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c.query_one(q, &[]).await.unwrap().get(0)
    }

    /// Waits until the WAL listener has applied everything written so far.
    /// Its slot confirms a position only once every batch up to there is
    /// done, i.e. every view those batches touched finished evaluating: a
    /// check that something was not evaluated can then not pass by being
    /// early.
    pub async fn wal_applied(&self) {
        let written = self
            .query_i64("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .await;
        let confirmed = format!(
            "SELECT COALESCE((confirmed_flush_lsn - '0/0'::pg_lsn)::bigint, 0) \
             FROM pg_replication_slots WHERE slot_name = '{}'",
            self.config.changes.slot
        );
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let at = self.query_i64(&confirmed).await;
            if at >= written {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the WAL slot confirmed {at}, the writes ended at {written}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Tells the engine about changes, as a trusted service would.
    pub async fn notify(&self, table: &str, id: &str, columns: &[&str]) {
        let mut c = self.client("dev-service").await;
        c.notify(pb::NotifyRequest {
            changes: vec![pb::Change {
                table: table.into(),
                id: id.into(),
                columns: columns.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }],
        })
        .await
        .unwrap();
    }

    /// What a new subscriber of a window would get right now.
    pub async fn fresh_window(
        &self,
        token: &str,
        graph: &str,
        params: HashMap<String, pb::Value>,
        window: pb::Window,
    ) -> ViewState {
        let mut l = self.live(token).await;
        let r = l
            .subscribe_window(graph, params, Some(window))
            .await
            .unwrap();
        l.views.remove(&r.view_id).unwrap()
    }

    /// What a new subscriber would get right now.
    pub async fn fresh(
        &self,
        token: &str,
        graph: &str,
        params: HashMap<String, pb::Value>,
    ) -> ViewState {
        let mut l = self.live(token).await;
        let r = l.subscribe(graph, params).await.unwrap();
        l.views.remove(&r.view_id).unwrap()
    }
}

/// The demo on a throwaway cluster of the test's own, for tests that stop
/// or restart PostgreSQL (doing that to the shared cluster would disturb
/// other tests).
pub struct OwnCluster {
    pub pg: EmbeddedPostgres,
    pub url: String,
    pub app: App,
    pub channel: Channel,
}

impl OwnCluster {
    pub async fn start(mode: arcana::config::ChangeMode) -> OwnCluster {
        let pg = EmbeddedPostgres::start(EmbeddedOptions {
            fast: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let url = pg.url("postgres");
        arcana::postgres::execute_script(&url, DEMO_SCHEMA)
            .await
            .unwrap();
        let mut config = Config::parse(DEMO_CONFIG).unwrap();
        config.changes.mode = mode;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = App::start(&config, &url, listener).await.unwrap();
        let channel = Channel::from_shared(format!("http://{}", app.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        OwnCluster {
            pg,
            url,
            app,
            channel,
        }
    }

    pub fn client(&self, token: &str) -> Client {
        ArcanaServiceClient::with_interceptor(self.channel.clone(), Bearer(token.into()))
    }
}

/// Opens `GET path` on an HTTP/1.1 listener (the admin listener), with a
/// bearer token when given; the caller reads the response.
pub async fn http_request(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    s
}

/// `GET path` on an HTTP/1.1 listener: (status code, body).
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let mut s = http_request(addr, path, token).await;
    let mut buf = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut buf))
        .await
        .expect("the listener answered in time")
        .unwrap();
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {buf}"));
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (code, body.to_owned())
}

pub fn int(i: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::Int(i)),
    }
}

pub fn text(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::String(s.into())),
    }
}

/// The params of the demo's `project_tasks` for one project.
pub fn project(id: i64) -> HashMap<String, pb::Value> {
    params(&[("project_id", int(id))])
}

pub fn params(pairs: &[(&str, pb::Value)]) -> HashMap<String, pb::Value> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

/// A session over the bidirectional `Connect` call that applies every frame
/// it reads to per-view state.
pub struct Live {
    tx: mpsc::Sender<pb::ClientMessage>,
    rx: Streaming<pb::ServerMessage>,
    next_id: u64,
    pub session_id: String,
    pub views: HashMap<String, ViewState>,
    /// Every frame received, in order.
    pub frames: Vec<pb::ViewFrame>,
    /// Replies read while waiting for something else.
    replies: HashMap<u64, pb::Reply>,
    /// Batch messages (`frames`) received.
    pub batches: usize,
}

impl Live {
    pub async fn connect(mut client: Client) -> Result<Live, Status> {
        let (tx, rx) = mpsc::channel(16);
        let mut stream = client.connect(ReceiverStream::new(rx)).await?.into_inner();
        let first = tokio::time::timeout(WAIT, stream.message())
            .await
            .expect("opened in time")?;
        let session_id = match first.and_then(|m| m.kind) {
            Some(Msg::Opened(o)) => o.session_id,
            other => panic!("expected `opened` first, got {other:?}"),
        };
        Ok(Live {
            tx,
            rx: stream,
            next_id: 0,
            session_id,
            views: HashMap::new(),
            frames: Vec::new(),
            replies: HashMap::new(),
            batches: 0,
        })
    }

    /// Reads one message; frames are applied, replies stored.
    pub async fn read_one(&mut self) -> Result<(), Status> {
        let msg = tokio::time::timeout(WAIT, self.rx.message())
            .await
            .map_err(|_| Status::deadline_exceeded("test wait"))??;
        match msg.and_then(|m| m.kind) {
            Some(Msg::Frame(f)) => self.take_frame(f),
            Some(Msg::Frames(batch)) => {
                assert!(batch.frames.len() > 1, "a batch carries several frames");
                self.batches += 1;
                for f in batch.frames {
                    self.take_frame(f);
                }
            }
            Some(Msg::Reply(r)) => {
                self.replies.insert(r.request_id, r);
            }
            Some(Msg::Opened(_)) => panic!("second `opened`"),
            None => return Err(Status::aborted("stream ended")),
        }
        Ok(())
    }

    fn take_frame(&mut self, f: pb::ViewFrame) {
        let v = self.views.entry(f.view_id.clone()).or_default();
        v.apply(&f)
            .unwrap_or_else(|e| panic!("applying frame of {}: {e}", f.view_id));
        self.frames.push(f);
    }

    pub async fn send(&mut self, kind: Req) -> u64 {
        self.next_id += 1;
        self.tx
            .send(pb::ClientMessage {
                request_id: self.next_id,
                kind: Some(kind),
            })
            .await
            .expect("stream open");
        self.next_id
    }

    /// Sends a request and reads until its reply arrives.
    pub async fn request(&mut self, kind: Req) -> Result<pb::reply::Result, pb::Error> {
        let id = self.send(kind).await;
        loop {
            if let Some(r) = self.replies.remove(&id) {
                return match r.result.expect("reply has a result") {
                    pb::reply::Result::Error(e) => Err(e),
                    ok => Ok(ok),
                };
            }
            self.read_one().await.expect("stream alive");
        }
    }

    pub async fn subscribe(
        &mut self,
        graph: &str,
        params: HashMap<String, pb::Value>,
    ) -> Result<pb::SubscribeResponse, pb::Error> {
        self.subscribe_window(graph, params, None).await
    }

    /// Subscribes with a window (for windowed graphs).
    pub async fn subscribe_window(
        &mut self,
        graph: &str,
        params: HashMap<String, pb::Value>,
        window: Option<pb::Window>,
    ) -> Result<pb::SubscribeResponse, pb::Error> {
        let r = self
            .request(Req::Subscribe(pb::SubscribeRequest {
                graph: graph.into(),
                params,
                session_id: String::new(),
                window,
            }))
            .await?;
        let pb::reply::Result::Subscribe(s) = r else {
            panic!("wrong reply {r:?}")
        };
        self.wait_version(&s.view_id, s.version).await;
        Ok(s)
    }

    /// Moves a windowed subscription and waits until the client holds the
    /// new window.
    pub async fn reanchor(
        &mut self,
        view_id: &str,
        window: pb::Window,
    ) -> Result<pb::ReanchorResponse, pb::Error> {
        let r = self
            .request(Req::Reanchor(pb::ReanchorRequest {
                view_id: view_id.into(),
                window: Some(window),
                session_id: String::new(),
            }))
            .await?;
        let pb::reply::Result::Reanchor(r) = r else {
            panic!("wrong reply {r:?}")
        };
        let (epoch, version) = (r.epoch, r.version);
        self.wait_until(view_id, |s| s.epoch == epoch && s.version >= version)
            .await;
        Ok(r)
    }

    pub async fn unsubscribe(&mut self, view_id: &str) -> Result<(), pb::Error> {
        self.request(Req::Unsubscribe(pb::UnsubscribeRequest {
            view_id: view_id.into(),
            session_id: String::new(),
        }))
        .await
        .map(|_| ())
    }

    pub async fn mutate(
        &mut self,
        name: &str,
        params: HashMap<String, pb::Value>,
    ) -> Result<pb::MutateResponse, pb::Error> {
        match self
            .request(Req::Mutate(pb::MutateRequest {
                session_id: String::new(),
                mutation: name.into(),
                params,
            }))
            .await?
        {
            pb::reply::Result::Mutate(m) => Ok(m),
            other => panic!("wrong reply {other:?}"),
        }
    }

    pub async fn sync(&mut self, views: Vec<pb::SyncView>) -> pb::SyncResponse {
        match self
            .request(Req::Sync(pb::SyncRequest {
                views,
                session_id: String::new(),
            }))
            .await
            .expect("sync")
        {
            pb::reply::Result::Sync(s) => s,
            other => panic!("wrong reply {other:?}"),
        }
    }

    /// Resumes a view this client held before (`state`, as of another
    /// session) with Sync, as a reconnecting client does.
    pub async fn resume(
        &mut self,
        view_id: &str,
        state: &ViewState,
        graph: &str,
        params: HashMap<String, pb::Value>,
    ) -> pb::SyncResponse {
        self.views.insert(view_id.to_owned(), state.clone());
        self.sync(vec![pb::SyncView {
            graph: graph.into(),
            params,
            epoch: state.epoch,
            version: state.version,
            window: None,
        }])
        .await
    }

    /// A round trip: every frame queued before it has been applied after it.
    pub async fn ping(&mut self) {
        self.request(Req::Ping(pb::PingRequest {}))
            .await
            .expect("ping");
    }

    /// Reads until `view_id` is at `version` or later.
    pub async fn wait_version(&mut self, view_id: &str, version: u64) {
        while self.views.get(view_id).is_none_or(|v| v.version < version) {
            self.read_one().await.expect("stream alive");
        }
    }

    /// Reads until `pred` holds for the view.
    pub async fn wait_until(&mut self, view_id: &str, pred: impl Fn(&ViewState) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !self.views.get(view_id).is_some_and(&pred) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition not reached; view: {:?}",
                self.views.get(view_id)
            );
            self.read_one().await.expect("stream alive");
        }
    }

    /// Reads until `table/id` in the view has `field` equal to `value`.
    pub async fn wait_field(
        &mut self,
        view_id: &str,
        table: &str,
        id: &str,
        field: &str,
        value: impl Into<arcana::engine::Value>,
    ) {
        let (key, value) = (arcana::engine::RowKey::new(table, id), value.into());
        self.wait_until(view_id, |s| {
            s.rows
                .get(&key)
                .is_some_and(|r| r.get(field) == Some(&value))
        })
        .await;
    }

    pub fn view(&self, view_id: &str) -> &ViewState {
        self.views.get(view_id).expect("view present")
    }
}

/// Extra config: a mutation `slow_rename` that holds its transaction for
/// `secs` seconds, for deadline tests.
pub const SLOW_MUTATION: &str = r#"
[[mutations]]
name = "slow_rename"
description = "Renames task 1 after sleeping."
permissions = ["tasks:write"]
sql = """
UPDATE tasks SET title = :title
WHERE id = 1 AND workspace_id = :workspace_id AND (SELECT true FROM pg_sleep(:secs))
RETURNING id
"""
expect = "one"

[mutations.params.title]
type = "string"
required = true

[mutations.params.secs]
type = "float"
required = true
"#;
