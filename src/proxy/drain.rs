//! Draining, shared by both tiers: every request in flight holds a [`InFlight`] from its context's
//! creation to its end, and shutdown waits until none is held (or the grace period ends). The
//! last release wakes the waiter: nothing polls.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

/// The requests in flight of one process (or one gateway).
#[derive(Clone, Default)]
pub struct Drain(Arc<Inner>);

#[derive(Default)]
struct Inner {
    held: AtomicUsize,
    idle: Notify,
}

/// One request in flight; released when dropped.
pub struct InFlight(Arc<Inner>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.held.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Counts a request in flight until the returned value is dropped.
    pub fn hold(&self) -> InFlight {
        self.0.held.fetch_add(1, Ordering::AcqRel);
        InFlight(self.0.clone())
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.0.held.load(Ordering::Acquire)
    }

    /// Waits until no request is in flight, at most `grace`; returns how many still are.
    pub async fn wait(&self, grace: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            // registered before the count is read, so a release in between is not missed
            let idle = self.0.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            let left = self.in_flight();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.in_flight();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_when_the_last_request_finishes() {
        let drain = Drain::default();
        let (a, b) = (drain.hold(), drain.hold());
        let waiter = tokio::spawn({
            let drain = drain.clone();
            async move {
                let started = tokio::time::Instant::now();
                (drain.wait(Duration::from_secs(30)).await, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(a);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!waiter.is_finished(), "one request is still in flight");
        drop(b);
        let (left, took) = waiter.await.unwrap();
        assert_eq!(left, 0);
        assert_eq!(took, Duration::from_secs(3), "woken by the last release, not at the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_gives_up_at_the_grace_period_and_says_what_is_left() {
        let drain = Drain::default();
        let _stuck = drain.hold();
        let started = tokio::time::Instant::now();
        assert_eq!(drain.wait(Duration::from_secs(5)).await, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(Drain::default().wait(Duration::from_secs(5)).await, 0, "nothing in flight: at once");
    }
}
