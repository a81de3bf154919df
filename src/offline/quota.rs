//! Open streams (follows, snapshots) counted per client id and per
//! identity, each with its limit. A [`Held`] place is given back when it
//! drops, so a stream that ends in any way frees its place.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::Identity;

/// Counts of one kind of stream: per client id, and per identity under
/// `\0workspace\0user` (no client id has a NUL: PostgreSQL text cannot).
#[derive(Default, Clone)]
pub struct Quota(Arc<Mutex<HashMap<String, usize>>>);

/// Which limit a new stream would pass, and how many are open there.
#[derive(Debug, PartialEq, Eq)]
pub enum Over {
    /// The client id's.
    Client(usize),
    /// The identity's.
    Identity(usize),
}

/// A place taken in a [`Quota`], given back when dropped.
pub struct Held {
    quota: Quota,
    keys: [String; 2],
}

impl Quota {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place for `client_id` of `id`, unless the client already
    /// has `per_client` open or the identity `per_identity`.
    pub fn take(
        &self,
        id: &Identity,
        client_id: &str,
        per_client: usize,
        per_identity: usize,
    ) -> Result<Held, Over> {
        let owner = format!("\0{}\0{}", id.workspace_id, id.user_id);
        let mut counts = self.lock();
        let open = |k: &str| counts.get(k).copied().unwrap_or(0);
        let (by_client, by_identity) = (open(client_id), open(&owner));
        if by_client >= per_client {
            return Err(Over::Client(by_client));
        }
        if by_identity >= per_identity {
            return Err(Over::Identity(by_identity));
        }
        let keys = [client_id.to_owned(), owner];
        for k in &keys {
            *counts.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(Held {
            quota: self.clone(),
            keys,
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut counts = self.quota.lock();
        for k in &self.keys {
            if let Some(n) = counts.get_mut(k) {
                *n -= 1;
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(user: &str) -> Identity {
        Identity::new(user, "w")
    }

    #[test]
    fn places_are_counted_per_client_and_identity_and_given_back() {
        let q = Quota::default();
        let a = q.take(&who("u"), "c1", 1, 2).unwrap();
        assert_eq!(q.take(&who("u"), "c1", 1, 2).err(), Some(Over::Client(1)));
        let b = q.take(&who("u"), "c2", 1, 2).unwrap();
        assert_eq!(q.take(&who("u"), "c3", 1, 2).err(), Some(Over::Identity(2)));
        assert!(
            q.take(&who("v"), "c3", 1, 2).is_ok(),
            "another user has room"
        );
        drop(a);
        drop(b);
        assert!(q.lock().is_empty(), "every place given back");
    }
}
