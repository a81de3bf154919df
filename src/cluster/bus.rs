//! The connection to NATS and the JetStream objects the cluster uses: the
//! change stream and the lease bucket, created when missing.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};

use tokio::sync::watch;

use crate::config::ClusterConfig;

/// A node's handles on NATS.
#[derive(Clone)]
pub struct Bus {
    /// The client (reconnects by itself).
    pub client: async_nats::Client,
    /// JetStream on it.
    pub js: jetstream::Context,
    /// The lease bucket.
    pub leases: kv::Store,
    /// The cluster's settings.
    pub config: ClusterConfig,
    /// Counts the connections made to NATS (1 after the first): a change
    /// means the client reconnected, and server-side consumers may be gone.
    pub connections: watch::Receiver<u64>,
}

/// Checks the settings a person can get wrong before anything connects.
pub fn validate(c: &ClusterConfig) -> Result<(), String> {
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    };
    if !token(&c.node_id) {
        return Err(format!(
            "cluster.node_id `{}` must be non-empty letters, digits, `-` or `_`",
            c.node_id
        ));
    }
    if !token(&c.lease_bucket) || !token(&c.changes_stream) || !token(&c.terms_bucket) {
        return Err(
            "cluster.lease_bucket, cluster.terms_bucket and cluster.changes_stream must be non-empty letters, digits, `-` or `_`"
                .into(),
        );
    }
    if c.changes_subject.is_empty()
        || c.changes_subject
            .chars()
            .any(|ch| ch.is_whitespace() || ch == '*' || ch == '>')
    {
        return Err(format!(
            "cluster.changes_subject `{}` must be a plain NATS subject (no spaces or wildcards)",
            c.changes_subject
        ));
    }
    for (key, subject) in [
        ("frames_subject", &c.frames_subject),
        ("snapshot_subject", &c.snapshot_subject),
    ] {
        if subject.is_empty()
            || subject.starts_with(&c.changes_subject)
            || subject
                .chars()
                .any(|ch| ch.is_whitespace() || ch == '*' || ch == '>')
        {
            return Err(format!(
                "cluster.{key} `{subject}` must be a plain NATS subject (no spaces or wildcards) apart from cluster.changes_subject"
            ));
        }
    }
    if !token(&c.frames_stream) || !token(&c.checkpoint_bucket) {
        return Err(
            "cluster.frames_stream and cluster.checkpoint_bucket must be non-empty letters, digits, `-` or `_`"
                .into(),
        );
    }
    if c.lease_ttl_ms < 300 {
        return Err(format!(
            "cluster.lease_ttl_ms is {}, but must be at least 300",
            c.lease_ttl_ms
        ));
    }
    if c.duplicate_window_ms < 1000 {
        return Err("cluster.duplicate_window_ms must be at least 1000".into());
    }
    if c.duplicate_window_ms > c.stream_max_age_s.saturating_mul(1000) {
        return Err(format!(
            "cluster.duplicate_window_ms ({}) must not exceed cluster.stream_max_age_s ({}) in milliseconds",
            c.duplicate_window_ms, c.stream_max_age_s
        ));
    }
    Ok(())
}

/// Creates the stream, or brings an existing one's limits in line with the
/// config (a changed `lease_ttl_ms` must change the bucket's max age).
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    want: stream::Config,
) -> Result<(), String> {
    let s = js
        .get_or_create_stream(want.clone())
        .await
        .map_err(|e| e.to_string())?;
    let have = &s.cached_info().config;
    // Limits left at 0 in `want` are the server's to choose.
    let differs = |w: bool, same: bool| w && !same;
    if differs(!want.max_age.is_zero(), have.max_age == want.max_age)
        || differs(want.max_bytes > 0, have.max_bytes == want.max_bytes)
        || differs(
            !want.duplicate_window.is_zero(),
            have.duplicate_window == want.duplicate_window,
        )
        || differs(want.allow_direct, have.allow_direct)
    {
        tracing::info!(stream = %want.name, "updating the stream's limits to the config's");
        js.update_stream(&want).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Creates the key-value bucket `name` when missing (one value per key,
/// keys expiring after `max_age` unless zero, at most `max_bytes` unless
/// zero) and opens it. The bucket's stream is created here as the client
/// would create it: the client's own bucket creation first asks for account
/// details that older servers (Debian's 2.9) answer in a form it cannot
/// read.
pub(crate) async fn ensure_kv(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
    max_bytes: i64,
) -> Result<kv::Store, String> {
    ensure_stream(
        js,
        stream::Config {
            name: format!("KV_{name}"),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            max_age,
            max_bytes,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            num_replicas: 1,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| format!("creating the JetStream key-value bucket {name}: {e}"))?;
    js.get_key_value(name)
        .await
        .map_err(|e| format!("opening the JetStream key-value bucket {name}: {e}"))
}

impl Bus {
    /// Connects and makes sure the stream and the bucket exist. Fails if
    /// NATS cannot be reached now; once connected, the client reconnects by
    /// itself whenever the connection is lost.
    pub async fn connect(c: &ClusterConfig) -> Result<Bus, String> {
        validate(c)?;
        let (count, connections) = watch::channel(0u64);
        let client = async_nats::ConnectOptions::new()
            .name(format!("arcana-{}", c.node_id))
            .event_callback(move |event| {
                if matches!(event, async_nats::Event::Connected) {
                    count.send_modify(|n| *n += 1);
                }
                std::future::ready(())
            })
            .connection_timeout(Duration::from_secs(5))
            .connect(c.nats_url.as_str())
            .await
            .map_err(|e| {
                format!(
                    "cannot reach NATS at {} (cluster.nats_url): {e}",
                    c.nats_url
                )
            })?;
        let js = jetstream::new(client.clone());
        ensure_stream(
            &js,
            stream::Config {
                name: c.changes_stream.clone(),
                subjects: vec![c.changes_subject.clone()],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::Limits,
                discard: stream::DiscardPolicy::Old,
                max_age: Duration::from_secs(c.stream_max_age_s.max(1)),
                max_bytes: c.stream_max_bytes,
                duplicate_window: Duration::from_millis(c.duplicate_window_ms),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| {
            format!(
                "creating the JetStream stream {} (is JetStream enabled on the NATS server?): {e}",
                c.changes_stream
            )
        })?;
        let leases = ensure_kv(
            &js,
            &c.lease_bucket,
            // A lease nobody renews disappears after its TTL.
            Duration::from_millis(c.lease_ttl_ms),
            0,
        )
        .await?;
        Ok(Bus {
            client,
            js,
            leases,
            config: c.clone(),
            connections,
        })
    }

    /// The change stream's last sequence number (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, String> {
        let mut s = self
            .js
            .get_stream(self.config.changes_stream.as_str())
            .await
            .map_err(|e| e.to_string())?;
        Ok(s.info()
            .await
            .map_err(|e| e.to_string())?
            .state
            .last_sequence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_a_person_can_get_wrong_are_named() {
        let ok = ClusterConfig::default();
        assert!(validate(&ok).is_ok());
        let bad = |f: fn(&mut ClusterConfig)| {
            let mut c = ClusterConfig::default();
            f(&mut c);
            validate(&c).unwrap_err()
        };
        assert!(bad(|c| c.node_id = "".into()).contains("cluster.node_id"));
        assert!(bad(|c| c.node_id = "a.b".into()).contains("cluster.node_id `a.b`"));
        assert!(bad(|c| c.changes_subject = "a.*".into()).contains("cluster.changes_subject"));
        assert!(bad(|c| c.lease_ttl_ms = 10).contains("cluster.lease_ttl_ms is 10"));
        assert!(bad(|c| c.frames_subject = "a.>".into()).contains("cluster.frames_subject"));
        assert!(bad(|c| c.duplicate_window_ms = 10).contains("cluster.duplicate_window_ms"));
        assert!(
            bad(|c| c.stream_max_age_s = 60).contains("must not exceed cluster.stream_max_age_s")
        );
    }
}
