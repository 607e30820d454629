//! Resilience: retry budgets, retry plans (timeouts, backoff, what is retried). Circuit
//! breaking and outlier detection live with the pools they protect (`pool::breaker`,
//! `Pool::report`).

pub mod budget;
pub mod retry;

pub use budget::RetryBudget;
pub use retry::TryPlan;
