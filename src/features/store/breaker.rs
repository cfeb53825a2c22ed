//! The circuit breaker in front of the shared store: after [`OPEN_AFTER`] consecutive failed
//! operations the store is skipped for a cool-down (requests go straight to their `on-error`
//! policy instead of each waiting out a timeout), then one request probes it; a success closes
//! the breaker, a failure opens it for another cool-down.
//!
//! Lock-free: three atomics, read on every store operation. Time is tokio's clock, so tests run
//! it paused.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failures that open the breaker.
pub const OPEN_AFTER: u32 = 3;

/// What the breaker says about the next operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: go ahead.
    Pass,
    /// Cool-down over: this caller (and only it) probes the store.
    Probe,
    /// Open: skip the store.
    Skip,
}

/// The store's state as the breaker sees it, for health and readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// No operation has finished yet.
    Unknown,
    /// The last operation succeeded.
    Up,
    /// Operations are failing, the breaker is still closed.
    Failing,
    /// Open: the store is skipped until the cool-down ends.
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Failing => "failing",
            Health::Down => "down",
        }
    }
}

pub struct Breaker {
    cool_down: Duration,
    base: Instant,
    /// Consecutive failures; `u32::MAX` before the first operation finished.
    failures: AtomicU32,
    /// While open: milliseconds after `base` when a probe may go.
    open_until: AtomicU64,
    open: AtomicBool,
    probing: AtomicBool,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("health", &self.health()).finish()
    }
}

impl Breaker {
    pub fn new(cool_down: Duration) -> Breaker {
        Breaker {
            cool_down,
            base: Instant::now(),
            failures: AtomicU32::new(u32::MAX),
            open_until: AtomicU64::new(0),
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the next operation may reach the store.
    pub fn gate(&self) -> Gate {
        if !self.open.load(Ordering::Acquire) {
            return Gate::Pass;
        }
        if self.now_ms() < self.open_until.load(Ordering::Acquire) {
            return Gate::Skip;
        }
        // One probe at a time; the others keep skipping until it reports.
        match self
            .probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Gate::Probe,
            Err(_) => Gate::Skip,
        }
    }

    /// An operation succeeded: closed, failures forgotten. Returns true when it was open.
    pub fn succeeded(&self) -> bool {
        self.failures.store(0, Ordering::Release);
        self.probing.store(false, Ordering::Release);
        self.open.swap(false, Ordering::AcqRel)
    }

    /// An operation failed (error or timeout). Returns true when this failure opened it.
    pub fn failed(&self) -> bool {
        let before = self
            .failures
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(if n == u32::MAX { 1 } else { n.saturating_add(1) })
            })
            .unwrap_or(0);
        let failures = if before == u32::MAX {
            1
        } else {
            before.saturating_add(1)
        };
        let was_probing = self.probing.swap(false, Ordering::AcqRel);
        if failures >= OPEN_AFTER || was_probing {
            self.open_until
                .store(self.now_ms() + self.cool_down.as_millis() as u64, Ordering::Release);
            return !self.open.swap(true, Ordering::AcqRel);
        }
        false
    }

    pub fn health(&self) -> Health {
        if self.open.load(Ordering::Acquire) {
            return Health::Down;
        }
        match self.failures.load(Ordering::Acquire) {
            u32::MAX => Health::Unknown,
            0 => Health::Up,
            _ => Health::Failing,
        }
    }

    /// The number of consecutive failures (0 before the first operation).
    pub fn failures(&self) -> u32 {
        match self.failures.load(Ordering::Acquire) {
            u32::MAX => 0,
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_once_after_the_cool_down() {
        let breaker = Breaker::new(Duration::from_secs(2));
        assert_eq!(breaker.health(), Health::Unknown);
        assert_eq!(breaker.gate(), Gate::Pass);
        assert!(!breaker.failed());
        assert!(!breaker.failed());
        assert_eq!(breaker.health(), Health::Failing);
        // A success in between resets the count.
        breaker.succeeded();
        assert_eq!(breaker.health(), Health::Up);
        for _ in 0..OPEN_AFTER - 1 {
            assert!(!breaker.failed());
        }
        assert!(breaker.failed(), "the third consecutive failure opens it");
        assert_eq!(breaker.health(), Health::Down);
        assert_eq!(breaker.gate(), Gate::Skip);

        tokio::time::advance(Duration::from_millis(2001)).await;
        assert_eq!(breaker.gate(), Gate::Probe);
        assert_eq!(breaker.gate(), Gate::Skip, "only one probe at a time");
        // The probe failed: another full cool-down.
        assert!(!breaker.failed());
        assert_eq!(breaker.gate(), Gate::Skip);
        tokio::time::advance(Duration::from_millis(2001)).await;
        assert_eq!(breaker.gate(), Gate::Probe);
        assert!(breaker.succeeded());
        assert_eq!(breaker.gate(), Gate::Pass);
        assert_eq!(breaker.health(), Health::Up);
    }
}
