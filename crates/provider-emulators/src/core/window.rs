//! Fixed rate-limit windows per key (a token, a user), as the providers count requests.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The state of one key's fixed window after counting (or refusing) a request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Count {
    pub(crate) limit: u32,
    pub(crate) used: u32,
    pub(crate) reset_in: Duration,
    pub(crate) allowed: bool,
}

impl Count {
    pub(crate) fn remaining(&self) -> u32 {
        self.limit.saturating_sub(self.used)
    }

    /// Whole seconds until the window resets, at least 1.
    pub(crate) fn retry_after(&self) -> u64 {
        let d = self.reset_in;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// Fixed windows per key (a token, a user), starting at the key's first request.
#[derive(Debug)]
pub(crate) struct Window {
    limit: u32,
    length: Duration,
    keys: HashMap<String, (Instant, u32)>,
}

impl Window {
    /// `limit` 0 = unlimited.
    pub(crate) fn new(limit: u32, length: Duration) -> Self {
        Self {
            limit,
            length,
            keys: HashMap::new(),
        }
    }

    fn entry(&mut self, key: &str) -> &mut (Instant, u32) {
        let now = Instant::now();
        let length = self.length;
        let e = self.keys.entry(key.to_owned()).or_insert((now, 0));
        if now.saturating_duration_since(e.0) >= length {
            *e = (now, 0);
        }
        e
    }

    /// Counts a request unless the window is full.
    pub(crate) fn count(&mut self, key: &str) -> Count {
        let (limit, length) = (self.limit, self.length);
        let e = self.entry(key);
        let reset_in = length.saturating_sub(e.0.elapsed());
        if limit == 0 {
            e.1 = e.1.saturating_add(1);
            return Count {
                limit: u32::MAX,
                used: e.1,
                reset_in,
                allowed: true,
            };
        }
        let allowed = e.1 < limit;
        if allowed {
            e.1 += 1;
        }
        Count {
            limit,
            used: e.1,
            reset_in,
            allowed,
        }
    }

    /// The window's state without counting.
    pub(crate) fn peek(&mut self, key: &str) -> Count {
        let (limit, length) = (self.limit, self.length);
        let e = self.entry(key);
        Count {
            limit,
            used: e.1,
            reset_in: length.saturating_sub(e.0.elapsed()),
            allowed: limit == 0 || e.1 < limit,
        }
    }
}
