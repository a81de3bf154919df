//! Terms of a view's versions, claimed durably before they are used.
//!
//! A node that becomes a view's owner in the view's current epoch (taking
//! it over from a follower copy, going on from a checkpoint, or taking its
//! lease back after losing it) starts a new *term*: its first version is
//! `term << 32`. A term is only ever used once it is claimed here, with a
//! compare-and-set on the view's counter in the terms bucket, so two nodes
//! can never use one term, whatever reached the frames stream: an owner
//! whose first frame of a term never got out (NATS went away just then)
//! still holds that term, and the next owner claims a later one. A node
//! that cannot reach NATS cannot claim a term, so it produces no version
//! another node may produce too.
//!
//! The counters never expire (a view's epoch can go on as long as some node
//! holds a copy of it); the bucket is bounded by `cluster.terms_max_bytes`
//! and refuses claims once full: a view resumed from a checkpoint then
//! starts a new epoch, and a follower retries at its next check.

use async_nats::jetstream::kv::{self, CreateErrorKind, UpdateErrorKind};

use super::bus::{ensure_kv, Bus};

/// Attempts at a compare-and-set before giving up (others claiming the
/// same view's term at the same moment).
const ATTEMPTS: usize = 8;

/// The terms bucket.
#[derive(Clone)]
pub struct Terms {
    store: kv::Store,
}

fn key(hash: &str) -> String {
    format!("term-{hash}")
}

impl Terms {
    /// Opens the bucket, creating it when missing. Its keys never expire.
    pub async fn open(bus: &Bus) -> Result<Terms, String> {
        let c = &bus.config;
        let store = ensure_kv(
            &bus.js,
            &c.terms_bucket,
            std::time::Duration::ZERO,
            c.terms_max_bytes,
        )
        .await?;
        Ok(Terms { store })
    }

    /// Claims the next term of the view `hash`, greater than both the last
    /// one claimed and `above` (the term of the newest version the caller
    /// knows of). Once this returns, no other claim gets the same term.
    pub async fn claim(&self, hash: &str, above: u64) -> Result<u64, String> {
        let key = key(hash);
        for _ in 0..ATTEMPTS {
            let entry = self.store.entry(&key).await.map_err(|e| e.to_string())?;
            match entry.filter(|e| e.operation == kv::Operation::Put) {
                Some(e) => {
                    let last = parse(&e.value)?;
                    let next = last.max(above) + 1;
                    match self
                        .store
                        .update(&key, next.to_string().into(), e.revision)
                        .await
                    {
                        Ok(_) => return Ok(next),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
                None => {
                    let next = above + 1;
                    match self.store.create(&key, next.to_string().into()).await {
                        Ok(_) => return Ok(next),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
        }
        Err("other nodes kept claiming the view's term at the same moment".into())
    }
}

fn parse(value: &[u8]) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "a term counter that is not a number".into())
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn a_counter_is_a_decimal_number() {
        assert_eq!(parse(b"42"), Ok(42));
        assert!(parse(b"x").is_err());
        assert!(parse(&[0xff]).is_err());
    }
}
