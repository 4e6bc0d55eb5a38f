//! Logs a guest can trigger are rate limited: the first few occurrences, then every 1000th,
//! with the running count, so a hostile guest cannot flood the host's logs.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Limiter(AtomicU64);

impl Limiter {
    pub const fn new() -> Self {
        Limiter(AtomicU64::new(0))
    }

    /// Counts one occurrence; returns the count when this one should be logged.
    pub fn hit(&self) -> Option<u64> {
        let n = self.0.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= 5 || n.is_multiple_of(1000)).then_some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_few_then_every_thousandth() {
        let l = Limiter::new();
        let logged: Vec<u64> = (0..3000).filter_map(|_| l.hit()).collect();
        assert_eq!(logged, vec![1, 2, 3, 4, 5, 1000, 2000, 3000]);
    }
}
