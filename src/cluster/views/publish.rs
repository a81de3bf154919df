//! The owner's side: each frame published to the frames stream,
//! snapshot requests answered, and checkpoints kept in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::{HeaderMap, NATS_MESSAGE_ID};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::forward::{apply_write, WRITE};
use super::state::*;
use crate::cluster::kept::pack;
use crate::engine::{term_of, term_start};
use crate::wire::convert::encoded_frame;

/// How often views whose newest frame went unpublished are looked at.
const REPUBLISH_EVERY: Duration = Duration::from_millis(100);

/// Publishes owned views' frames to the frames stream, in the order made,
/// until `stopped` (the engine, which holds the sender, outlives the node).
pub(super) async fn publish(
    owners: ViewOwners,
    mut rx: mpsc::UnboundedReceiver<Publish>,
    mut stopped: watch::Receiver<bool>,
) {
    let bus = owners.shared.bus.clone();
    // Acks awaited here rather than in a task each: a frame keeps its
    // place in the queue until the stream has it.
    let mut acks = FuturesUnordered::new();
    let mut retry = tokio::time::interval(REPUBLISH_EVERY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Publish { hash, frame, place } = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return,
            Some(()) = acks.next(), if !acks.is_empty() => continue,
            _ = retry.tick() => {
                owners.republish();
                continue;
            }
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        if loses_term_starts()
            && frame.version > 0
            && frame.version == term_start(term_of(frame.version))
        {
            tracing::warn!(
                version = frame.version,
                "fault injection: a term's first frame is not published"
            );
            continue;
        }
        let mut headers = HeaderMap::new();
        if matches!(frame.body, crate::engine::FrameBody::Diff(_)) {
            // A frame published twice (a retry) is stored once.
            headers.insert(
                NATS_MESSAGE_ID,
                format!("{}-{}", frame.epoch, frame.version).as_str(),
            );
        }
        headers.insert("Arcana-Epoch", frame.epoch.to_string().as_str());
        headers.insert("Arcana-Version", frame.version.to_string().as_str());
        let subject = format!("{}.{hash}", bus.config.frames_subject);
        match bus
            .js
            .publish_with_headers(subject, headers, encoded_frame(&frame))
            .await
        {
            Ok(ack) => acks.push(async move {
                if let Err(e) = ack.await {
                    tracing::debug!(error = %e, "the frames stream did not store a frame");
                }
                drop(place);
            }),
            Err(e) => tracing::warn!(error = %e, "publishing a view frame failed"),
        }
    }
}

/// Fault injection for tests (`ARCANA_FAULT_LOSE_TERM_STARTS=1`): the first
/// frame of each term reaches this node's sessions but not the frames
/// stream, as when NATS goes away at that very moment.
pub(super) fn loses_term_starts() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("ARCANA_FAULT_LOSE_TERM_STARTS").is_ok_and(|v| v == "1"))
}

/// Answers other nodes' requests for the snapshot of a view this node owns;
/// an empty reply means "not here (yet)", and the asker retries.
pub(super) async fn answer(
    owners: ViewOwners,
    mut requests: async_nats::Subscriber,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let m = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return },
            _ = stopped.wait_for(|s| *s) => return,
        };
        let Some(reply) = m.reply else { continue };
        let hash = m.subject.rsplit('.').next().unwrap_or_default().to_owned();
        if hash == WRITE {
            let (o, client) = (owners.clone(), owners.shared.bus.client.clone());
            tokio::spawn(async move {
                let answer = apply_write(o, m.payload).await;
                let _ = client.publish(reply, answer).await;
            });
            continue;
        }
        let Some(frames) = owners.state_of(&hash) else {
            let _ = owners.shared.bus.client.publish(reply, Bytes::new()).await;
            continue;
        };
        let payload = pack(&frames);
        let client = owners.shared.bus.client.clone();
        // Room for the headers NATS adds.
        let limit = client.server_info().max_payload.saturating_sub(4096);
        if payload.len() <= limit {
            let _ = client.publish(reply, payload).await;
            continue;
        }
        // Too big for one message: written as the view's checkpoint (object
        // store chunks), which the asker reads.
        let kept = owners.shared.kept.clone();
        tokio::spawn(async move {
            match kept.save(&hash, &frames).await {
                Ok(()) => {
                    let mut headers = HeaderMap::new();
                    headers.insert(IN_CHECKPOINT, "1");
                    let _ = client
                        .publish_with_headers(reply, headers, Bytes::new())
                        .await;
                }
                Err(e) => {
                    tracing::warn!(view = %hash, error = %e, "writing a view's checkpoint failed")
                }
            }
        });
    }
}

/// Checkpoint writes and lease hand-backs at once, at most.
pub(super) const KEEPERS_AT_ONCE: usize = 32;

/// Does the checkpoint and lease jobs: those of one view in order, those of
/// different views side by side. Once the node stops, it finishes what is
/// queued (until [`Job::Done`], at most 10 s) so the next owner finds every
/// closed view's last state.
pub(super) async fn keeper(
    owners: ViewOwners,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    mut stopped: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(KEEPERS_AT_ONCE));
    let mut last: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        let job = match deadline {
            None => tokio::select! {
                j = jobs.recv() => j,
                _ = stopped.wait_for(|s| *s) => {
                    deadline = Some(tokio::time::Instant::now() + Duration::from_secs(10));
                    continue;
                }
            },
            Some(d) => tokio::time::timeout_at(d, jobs.recv()).await.ok().flatten(),
        };
        let hash = match &job {
            Some(Job::Save(h) | Job::Keep(h, _) | Job::Release(h, _)) => h.clone(),
            Some(Job::Done) | None => break,
        };
        let Some(job) = job else { break };
        if last.len() >= KEEPERS_AT_ONCE * 4 {
            last.retain(|_, t| !t.is_finished());
        }
        let before = last.remove(&hash);
        let (o, slots) = (owners.clone(), slots.clone());
        let task = tokio::spawn(async move {
            if let Some(b) = before {
                let _ = b.await;
            }
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            o.run(job).await;
        });
        last.insert(hash, task);
    }
    let until = deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(10));
    for (_, t) in last {
        let _ = tokio::time::timeout_at(until, t).await;
    }
}

impl ViewOwners {
    /// Does one keeper job.
    pub(super) async fn run(&self, job: Job) {
        let shared = &self.shared;
        let unqueue = |hash: &str| {
            shared
                .queued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(hash);
        };
        match job {
            Job::Save(hash) => {
                unqueue(&hash);
                if let Some(frames) = self.state_of(&hash) {
                    if let Err(e) = shared.kept.save(&hash, &frames).await {
                        tracing::debug!(view = %hash, error = %e, "writing a view's checkpoint failed");
                    }
                }
            }
            Job::Keep(hash, frames) => {
                unqueue(&hash);
                if let Err(e) = shared.kept.save(&hash, &frames).await {
                    tracing::warn!(view = %hash, error = %e, "writing a closed view's checkpoint failed");
                }
            }
            Job::Release(hash, revision) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), self.release(&hash, revision))
                    .await;
            }
            Job::Done => {}
        }
    }
}
