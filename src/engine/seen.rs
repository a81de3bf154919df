//! Which committed transactions an evaluation read. A view's rows come
//! from two places, evaluations and patches (new values a change source
//! read from a commit). A patch of a commit its view's last evaluation
//! already read carries values that may since have been overwritten, so it
//! must be dropped; a patch of a later commit must be applied. The
//! database snapshot an evaluation ran in tells the two apart.

/// A database snapshot in PostgreSQL's terms (`txid_current_snapshot()`,
/// 64-bit transaction ids): every transaction below `xmax` had finished
/// when it was taken, except those listed in `running`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    xmax: u64,
    running: Vec<u64>,
}

impl Seen {
    /// Reads the text form `xmin:xmax:xip,...`; `None` if it is not one.
    pub fn parse(text: &str) -> Option<Seen> {
        let mut parts = text.trim().split(':');
        let (_xmin, xmax, xip) = (parts.next()?, parts.next()?, parts.next()?);
        let running = xip
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        Some(Seen {
            xmax: xmax.parse().ok()?,
            running,
        })
    }

    /// Whether the committed transaction `xid` (32 bits, as the WAL names
    /// it) is visible in this snapshot. The id is widened to the epoch that
    /// puts it within 2^31 of `xmax`, as PostgreSQL itself does.
    pub fn shows(&self, xid: u32) -> bool {
        let delta = xid.wrapping_sub(self.xmax as u32) as i32;
        if delta >= 0 {
            return false;
        }
        let full = self.xmax.wrapping_add_signed(i64::from(delta));
        !self.running.contains(&full)
    }
}

#[cfg(test)]
mod tests {
    use super::Seen;

    fn seen(s: &str) -> Seen {
        Seen::parse(s).expect("a snapshot")
    }

    #[test]
    fn visibility_follows_the_snapshot() {
        assert!(seen("100:105:").shows(104));
        assert!(!seen("100:105:").shows(105));
        assert!(!seen("100:105:101,103").shows(103));
        assert!(seen("100:105:101,103").shows(102));
        // Across a 32-bit wraparound: epoch 1.
        let xmax = (1u64 << 32) + 5;
        assert!(seen(&format!("{}:{xmax}:", xmax - 10)).shows(0xFFFF_FFFE));
        assert!(!seen(&format!("{}:{xmax}:{}", xmax - 10, xmax - 2)).shows(3));
        assert!(seen(&format!("{}:{xmax}:{}", xmax - 10, xmax - 2)).shows(4));
    }

    #[test]
    fn text_that_is_not_a_snapshot_is_refused() {
        assert_eq!(Seen::parse("100:105"), None);
        assert_eq!(Seen::parse("a:b:"), None);
        assert_eq!(Seen::parse("100:105:x"), None);
    }
}
