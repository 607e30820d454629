//! Retry budgets, as Linkerd and Finagle have them: retries may add at most a share of the
//! original traffic (`ratio`), plus a small floor (`min_per_second`) so that low-traffic
//! services can still retry. When every endpoint fails, retries stop at the budget instead of
//! multiplying the load on a service that is already down.
//!
//! Lock-free: one slot of counters per second over the window, reset lazily by whoever first
//! touches a slot in a new second.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// Default share of requests that may be retries (Linkerd's default).
pub const DEFAULT_RETRY_RATIO: f64 = 0.2;
/// Default retries allowed per second whatever the traffic (Linkerd's default).
pub const DEFAULT_MIN_RETRIES_PER_SECOND: u32 = 10;
/// Default window the budget is computed over (Linkerd's default).
pub const DEFAULT_BUDGET_WINDOW: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Slot {
    /// The second (since the budget's start) the counters belong to.
    second: AtomicI64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A retry budget shared by the requests of one target.
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    start: Instant,
    slots: Box<[Slot]>,
}

impl RetryBudget {
    /// A budget allowing `ratio` × requests plus `min_per_second` retries per second, over a
    /// window of `window` (rounded up to whole seconds).
    pub fn new(ratio: f64, min_per_second: u32, window: Duration) -> Self {
        let seconds = window.as_secs().max(1) + u64::from(window.subsec_nanos() > 0);
        let slots = (0..seconds).map(|_| Slot { second: AtomicI64::new(-1), ..Slot::default() }).collect();
        RetryBudget { ratio: ratio.max(0.0), min_per_second, start: Instant::now(), slots }
    }

    fn now(&self) -> i64 {
        self.start.elapsed().as_secs() as i64
    }

    /// The slot for `second`, cleared if it still holds an older second.
    fn slot(&self, second: i64) -> &Slot {
        let slot = &self.slots[second as usize % self.slots.len()];
        let seen = slot.second.load(Relaxed);
        if seen != second && slot.second.compare_exchange(seen, second, Relaxed, Relaxed).is_ok() {
            slot.requests.store(0, Relaxed);
            slot.retries.store(0, Relaxed);
        }
        slot
    }

    /// Counts an original (not retried) request.
    pub fn deposit(&self) {
        self.slot(self.now()).requests.fetch_add(1, Relaxed);
    }

    /// Asks for one retry; true (and counted) if the budget allows it.
    pub fn try_withdraw(&self) -> bool {
        let now = self.now();
        let (requests, retries) = self.window_totals(now);
        let allowed = self.ratio * requests as f64 + f64::from(self.min_per_second) * self.slots.len() as f64;
        if (retries as f64) + 1.0 > allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Relaxed);
        true
    }

    fn window_totals(&self, now: i64) -> (u64, u64) {
        let oldest = now - self.slots.len() as i64 + 1;
        self.slots
            .iter()
            .filter(|s| (oldest..=now).contains(&s.second.load(Relaxed)))
            .fold((0, 0), |(q, r), s| (q + s.requests.load(Relaxed), r + s.retries.load(Relaxed)))
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(DEFAULT_RETRY_RATIO, DEFAULT_MIN_RETRIES_PER_SECOND, DEFAULT_BUDGET_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_are_bounded_by_the_ratio_plus_the_floor() {
        let budget = RetryBudget::new(0.2, 1, Duration::from_secs(10));
        for _ in 0..1000 {
            budget.deposit();
        }
        let granted = (0..1000).filter(|_| budget.try_withdraw()).count();
        // 20% of 1000 requests plus 1/s over a 10 s window
        assert_eq!(granted, 210);
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_service_still_gets_its_floor() {
        let budget = RetryBudget::new(0.2, 10, Duration::from_secs(10));
        assert_eq!((0..500).filter(|_| budget.try_withdraw()).count(), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn spent_budget_comes_back_as_the_window_moves_on() {
        let budget = RetryBudget::new(0.0, 1, Duration::from_secs(2));
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw(), "2 retries per 2 s window");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(!budget.try_withdraw(), "the first second's retries still count");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(budget.try_withdraw(), "they left the window");
    }

    #[tokio::test(start_paused = true)]
    async fn old_requests_stop_earning_retries() {
        let budget = RetryBudget::new(0.5, 0, Duration::from_secs(3));
        for _ in 0..10 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(!budget.try_withdraw(), "requests older than the window earn nothing");
    }
}
