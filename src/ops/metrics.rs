//! Prometheus metrics. Most numbers are read from the engine, the pool and
//! the replication slot when `/metrics` is scraped; only what cannot be read
//! afterwards (durations, bytes sent, error codes) is recorded as it happens,
//! into process-wide metrics ([`hooks`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::engine::Engine;

/// Metrics recorded where things happen.
#[derive(Debug)]
pub struct Hooks {
    /// A view's first evaluation (subscribe, sync).
    pub evaluation_seconds: Histogram,
    /// One evaluation round of a graph (one query for any number of views).
    pub round_seconds: Histogram,
    /// From a transaction's commit (its WAL commit timestamp) until the
    /// frames of its changes are queued to the sessions.
    pub commit_to_frame_seconds: Histogram,
    /// Session stream bytes written (frames and replies).
    pub sent_bytes: Counter,
    /// Session stream messages written.
    pub sent_messages: Counter,
    /// Calls that ended with a non-OK status, by code.
    pub grpc_errors: Family<CodeLabel, Counter>,
    /// Requests on session streams answered with an error (the stream
    /// goes on), by code.
    pub reply_errors: Family<CodeLabel, Counter>,
    /// Frames of owned views not published because the frames stream
    /// did not keep up (`cluster.publish_queue`).
    pub frames_unpublished: Counter,
}

/// The `code` label of [`Hooks::grpc_errors`].
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The gRPC code's name, e.g. `Unavailable`.
    pub code: String,
}

fn seconds() -> Histogram {
    // 0.5 ms .. ~33 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

static HOOKS: LazyLock<Hooks> = LazyLock::new(|| Hooks {
    evaluation_seconds: seconds(),
    round_seconds: seconds(),
    commit_to_frame_seconds: seconds(),
    sent_bytes: Counter::default(),
    sent_messages: Counter::default(),
    grpc_errors: Family::default(),
    reply_errors: Family::default(),
    frames_unpublished: Counter::default(),
});

/// The process-wide metrics recorded as things happen.
pub fn hooks() -> &'static Hooks {
    &HOOKS
}

/// Records a call's end status (by the numeric code of `grpc-status`).
pub fn count_status(code: &[u8]) {
    if code == b"0" {
        return;
    }
    let n = std::str::from_utf8(code)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .unwrap_or(2);
    let name = format!("{:?}", tonic::Code::from_i32(n));
    hooks()
        .grpc_errors
        .get_or_create(&CodeLabel { code: name })
        .inc();
}

/// Records an error reply on a session stream.
pub fn count_reply_error(code: tonic::Code) {
    hooks()
        .reply_errors
        .get_or_create(&CodeLabel {
            code: format!("{code:?}"),
        })
        .inc();
}

/// Replication slot numbers read at scrape time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SlotNumbers {
    /// `confirmed_flush_lsn` as a byte position.
    pub confirmed: u64,
    /// `pg_current_wal_lsn() - confirmed_flush_lsn`.
    pub lag_bytes: i64,
    /// `pg_current_wal_lsn() - restart_lsn`: WAL the server must keep.
    pub retained_bytes: i64,
}

/// Gauges set from the engine and the database at each scrape.
#[derive(Debug, Default)]
struct Gauges {
    sessions: Gauge,
    subscriptions: Gauge,
    views: Gauge,
    store_rows: Gauge,
    queue_max: Gauge,
    queue_total: Gauge,
    pool_size: Gauge,
    pool_max: Gauge,
    pool_in_use: Gauge,
    pool_waiting: Gauge,
    listener_streaming: Gauge,
    wal_confirmed: Gauge,
    wal_lag: Gauge,
    wal_retained: Gauge,
    ready: Gauge,
}

/// Engine counters mirrored as Prometheus counters.
#[derive(Debug, Default)]
struct Mirrored {
    evaluations: Counter,
    rounds: Counter,
    patches: Counter,
    eval_errors: Counter,
    changes: Counter,
    batches: Counter,
    frames: Counter,
    resyncs: Counter,
}

/// One server's metrics registry.
#[derive(Debug)]
pub struct Exporter {
    registry: Registry,
    gauges: Gauges,
    mirrored: Mirrored,
    /// One scrape at a time: mirroring reads then adds.
    scrape: Mutex<()>,
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Exporter {
    /// A registry with every Arcana metric.
    pub fn new() -> Exporter {
        let mut r = Registry::with_prefix("arcana");
        let g = Gauges::default();
        let m = Mirrored::default();
        let h = hooks();
        for (name, help, gauge) in [
            ("sessions", "Open sessions", &g.sessions),
            (
                "subscriptions",
                "Subscriptions across sessions",
                &g.subscriptions,
            ),
            ("views", "Live views", &g.views),
            ("store_rows", "Rows in the normalized store", &g.store_rows),
            (
                "session_queue_max",
                "Longest session outbound queue (items)",
                &g.queue_max,
            ),
            (
                "session_queue_total",
                "Items queued across all sessions",
                &g.queue_total,
            ),
            (
                "db_pool_size",
                "Open pooled database connections",
                &g.pool_size,
            ),
            ("db_pool_max", "Pool size limit", &g.pool_max),
            (
                "db_pool_in_use",
                "Pooled connections in use",
                &g.pool_in_use,
            ),
            (
                "db_pool_waiting",
                "Callers waiting for a pooled connection",
                &g.pool_waiting,
            ),
            (
                "change_listener_streaming",
                "1 while the change listener (WAL or NOTIFY) is streaming",
                &g.listener_streaming,
            ),
            (
                "wal_confirmed_lsn",
                "Slot's confirmed flush position (bytes)",
                &g.wal_confirmed,
            ),
            (
                "wal_lag_bytes",
                "WAL written but not yet confirmed by the slot",
                &g.wal_lag,
            ),
            (
                "wal_retained_bytes",
                "WAL the slot makes the database keep",
                &g.wal_retained,
            ),
            (
                "ready",
                "1 while the server is ready (see /readyz)",
                &g.ready,
            ),
        ] {
            r.register(name, help, gauge.clone());
        }
        for (name, help, counter) in [
            ("evaluations", "View evaluations", &m.evaluations),
            (
                "evaluation_rounds",
                "Evaluation rounds (queries)",
                &m.rounds,
            ),
            (
                "patches",
                "View updates patched from change values",
                &m.patches,
            ),
            (
                "evaluation_errors",
                "Evaluations that failed",
                &m.eval_errors,
            ),
            ("changes", "Row changes received", &m.changes),
            ("change_batches", "Change batches processed", &m.batches),
            ("frames", "Frames queued to sessions", &m.frames),
            (
                "resyncs",
                "Sessions cut over to snapshots after falling behind",
                &m.resyncs,
            ),
            ("sent_bytes", "Session stream bytes written", &h.sent_bytes),
            (
                "sent_messages",
                "Session stream messages written",
                &h.sent_messages,
            ),
        ] {
            r.register(name, help, counter.clone());
        }
        r.register(
            "evaluation_seconds",
            "Duration of first evaluations (subscribe, sync)",
            h.evaluation_seconds.clone(),
        );
        r.register(
            "evaluation_round_seconds",
            "Duration of evaluation rounds",
            h.round_seconds.clone(),
        );
        r.register(
            "commit_to_frame_seconds",
            "From a WAL commit to its frames queued",
            h.commit_to_frame_seconds.clone(),
        );
        r.register(
            "grpc_errors",
            "Calls ended with a non-OK status, by code",
            h.grpc_errors.clone(),
        );
        r.register(
            "reply_errors",
            "Session stream requests answered with an error, by code",
            h.reply_errors.clone(),
        );
        r.register(
            "cluster_frames_unpublished",
            "Frames of owned views not published: the frames stream did not keep up",
            h.frames_unpublished.clone(),
        );
        super::offline_metrics::register(&mut r);
        Exporter {
            registry: r,
            gauges: g,
            mirrored: m,
            scrape: Mutex::new(()),
        }
    }

    /// The text exposition, after reading the engine, the pool and (when
    /// given) the slot.
    pub fn render(
        &self,
        engine: &Engine,
        pool: &Pool,
        slot: Option<SlotNumbers>,
        streaming: Option<bool>,
        ready: bool,
    ) -> String {
        let _one = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let s = engine.stats();
        let g = &self.gauges;
        let set = |gauge: &Gauge, v: usize| {
            gauge.set(i64::try_from(v).unwrap_or(i64::MAX));
        };
        set(&g.sessions, s.sessions);
        set(&g.subscriptions, s.subscriptions);
        set(&g.views, s.views);
        set(&g.store_rows, s.store_rows);
        set(&g.queue_max, s.session_queue_max);
        set(&g.queue_total, s.session_queue_total);
        let p = pool.status();
        set(&g.pool_size, p.size);
        set(&g.pool_max, p.max_size);
        set(&g.pool_in_use, p.size.saturating_sub(p.available));
        set(&g.pool_waiting, p.waiting);
        g.listener_streaming
            .set(i64::from(streaming.unwrap_or(false)));
        if let Some(n) = slot {
            g.wal_confirmed
                .set(i64::try_from(n.confirmed).unwrap_or(i64::MAX));
            g.wal_lag.set(n.lag_bytes);
            g.wal_retained.set(n.retained_bytes);
        }
        g.ready.set(i64::from(ready));
        let m = &self.mirrored;
        for (c, v) in [
            (&m.evaluations, s.evaluations),
            (&m.rounds, s.evaluation_rounds),
            (&m.patches, s.patches),
            (&m.eval_errors, s.eval_errors),
            (&m.changes, s.changes),
            (&m.batches, s.batches),
            (&m.frames, s.frames),
            (&m.resyncs, s.resyncs),
        ] {
            c.inc_by(v.saturating_sub(c.get()));
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The engine's timings, recorded into [`hooks`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineTimings;

impl crate::engine::observe::Observer for EngineTimings {
    fn evaluation(&self, took: Duration) {
        observe(&hooks().evaluation_seconds, took);
    }
    fn round(&self, took: Duration) {
        observe(&hooks().round_seconds, took);
    }
}

/// Observes `d` in `h`.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

/// Counts calls by their final `grpc-status`: in the response headers
/// (an error before any message) or in the trailers.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcCodesLayer;

impl<S> tower::Layer<S> for GrpcCodesLayer {
    type Service = GrpcCodes<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcCodes(inner)
    }
}

/// See [`GrpcCodesLayer`].
#[derive(Debug, Clone)]
pub struct GrpcCodes<S>(S);

impl<S, Req, B> tower::Service<Req> for GrpcCodes<S>
where
    S: tower::Service<Req, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let fut = self.0.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let counted = match resp.headers().get("grpc-status") {
                Some(code) => {
                    count_status(code.as_bytes());
                    true
                }
                None => false,
            };
            Ok(resp.map(|inner| CountedBody { inner, counted }))
        })
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts the `grpc-status` of its trailers.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        counted: bool,
    }
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &r {
            if let Some(code) = frame.trailers_ref().and_then(|t| t.get("grpc-status")) {
                if !*this.counted {
                    *this.counted = true;
                    count_status(code.as_bytes());
                }
            }
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
