//! What the cluster keeps of a view beyond the node that evaluates it: the
//! owner's frames in the frames stream (the last `history_len` per view), and
//! a checkpoint (a snapshot and the diffs before it) in an object store
//! bucket, written when the view closes on its owner, when the owner stops,
//! and often enough that the frames after it are always still in the stream.
//! A node that takes a view over reads both and goes on in the same epoch.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::{self, GetErrorKind, ObjectStore};
use async_nats::jetstream::stream::{DirectGetErrorKind, Stream};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use super::bus::Bus;
use crate::engine::{Claim, Frame, FrameBody};
use crate::wire::convert::{encoded_frame, frame_from_encoded};

/// A node's handles on the kept frames and checkpoints.
#[derive(Clone)]
pub struct Kept {
    frames: Stream,
    checkpoints: ObjectStore,
    subject: String,
    /// Frames read back per view at most (the stream keeps no more).
    history_len: usize,
}

impl Kept {
    /// Opens the checkpoint bucket, creating it when missing; the frames
    /// stream must exist already.
    pub async fn open(bus: &Bus, history_len: usize) -> Result<Kept, String> {
        let c = &bus.config;
        let frames = bus
            .js
            .get_stream(&c.frames_stream)
            .await
            .map_err(|e| format!("opening the stream {}: {e}", c.frames_stream))?;
        let checkpoints = match bus.js.get_object_store(&c.checkpoint_bucket).await {
            Ok(s) => s,
            Err(_) => {
                let made = bus
                    .js
                    .create_object_store(object_store::Config {
                        bucket: c.checkpoint_bucket.clone(),
                        description: Some("Arcana view checkpoints".into()),
                        max_age: Duration::from_secs(c.frames_max_age_s.max(1)),
                        max_bytes: c.checkpoint_max_bytes,
                        ..Default::default()
                    })
                    .await;
                match made {
                    Ok(s) => s,
                    // Another node starting at the same time made it first.
                    Err(e) => bus
                        .js
                        .get_object_store(&c.checkpoint_bucket)
                        .await
                        .map_err(|_| format!("creating the bucket {}: {e}", c.checkpoint_bucket))?,
                }
            }
        };
        Ok(Kept {
            frames,
            checkpoints,
            subject: c.frames_subject.clone(),
            history_len: history_len.max(1),
        })
    }

    /// Stores `frames` (a snapshot, then the diffs before it) as the view's
    /// checkpoint, replacing the last one.
    pub async fn save(&self, hash: &str, frames: &[Arc<Frame>]) -> Result<(), String> {
        let mut bytes = &pack(frames)[..];
        self.checkpoints
            .put(hash, &mut bytes)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The view's checkpoint, if one is kept.
    pub async fn load(&self, hash: &str) -> Result<Option<Vec<Arc<Frame>>>, String> {
        let mut object = match self.checkpoints.get(hash).await {
            Ok(o) => o,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.to_string()),
        };
        let mut bytes = Vec::new();
        object
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| e.to_string())?;
        unpack(Bytes::from(bytes))
            .map(Some)
            .ok_or_else(|| "an unreadable checkpoint".into())
    }

    /// The view's frames the stream still holds of `epoch` after `version`,
    /// in order: the chain that ends at the newest one of that epoch. A
    /// frame off that chain (an owner's last frame that a new owner did not
    /// see before going on) is left out.
    pub async fn after(
        &self,
        hash: &str,
        epoch: u64,
        version: u64,
    ) -> Result<Vec<Arc<Frame>>, String> {
        let subject = format!("{}.{hash}", self.subject);
        let mut stored: Vec<Arc<Frame>> = Vec::new();
        let mut next = None;
        // The stream keeps at most `history_len` frames per view, plus
        // whatever arrives while reading.
        for _ in 0..self.history_len * 2 {
            let m = match self
                .frames
                .direct_get_next_for_subject(subject.clone(), next)
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => break,
                Err(e) => return Err(e.to_string()),
            };
            next = Some(m.sequence + 1);
            let f = frame_from_encoded(m.payload).map_err(|e| e.to_string())?;
            if f.epoch == epoch && f.version > version && matches!(f.body, FrameBody::Diff(_)) {
                stored.push(Arc::new(f));
            }
        }
        Ok(chain(stored, version))
    }

    /// The view as the cluster kept it, as a claim to go on from: the
    /// checkpoint, and the stream's frames after it to apply on top; `None`
    /// when there is no checkpoint.
    pub async fn resume(&self, hash: &str) -> Result<Option<Claim>, String> {
        let Some(frames) = self.load(hash).await? else {
            return Ok(None);
        };
        let mut frames = frames.into_iter();
        let Some(snapshot) = frames.next() else {
            return Ok(None);
        };
        let after = self.after(hash, snapshot.epoch, snapshot.version).await?;
        Ok(Some(Claim::Resume {
            snapshot,
            history: frames.collect(),
            after,
            // Claimed by the caller, which holds the lease.
            term: 0,
        }))
    }
}

/// Of `frames` (in stream order, all after `from`), those on the chain from
/// `from` to the newest: walked back from the newest by `prev_version`.
/// Empty when the newest does not lead back to `from`.
fn chain(frames: Vec<Arc<Frame>>, from: u64) -> Vec<Arc<Frame>> {
    let Some(last) = frames.last().cloned() else {
        return Vec::new();
    };
    let by_version: std::collections::HashMap<u64, Arc<Frame>> =
        frames.into_iter().map(|f| (f.version, f)).collect();
    let mut out = vec![last];
    loop {
        let prev = out[out.len() - 1].prev_version;
        if prev == from {
            out.reverse();
            return out;
        }
        match by_version.get(&prev) {
            Some(f) if out.len() <= by_version.len() => out.push(f.clone()),
            _ => return Vec::new(),
        }
    }
}

/// Frames as one message: each one's length (4 bytes) then its bytes.
pub fn pack(frames: &[Arc<Frame>]) -> Bytes {
    let mut out = BytesMut::new();
    for f in frames {
        let b = encoded_frame(f);
        out.put_u32(b.len() as u32);
        out.put_slice(&b);
    }
    out.freeze()
}

/// The frames [`pack`] made; `None` when the bytes are not such.
pub fn unpack(mut b: Bytes) -> Option<Vec<Arc<Frame>>> {
    let mut out = Vec::new();
    while b.remaining() >= 4 {
        let n = b.get_u32() as usize;
        if b.remaining() < n {
            return None;
        }
        out.push(Arc::new(frame_from_encoded(b.split_to(n)).ok()?));
    }
    Some(out)
}
