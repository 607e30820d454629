//! Resilience policies: retry budgets today; retries with backoff, circuit breaking and
//! outlier detection for the mesh tier build on them.

pub mod budget;

pub use budget::RetryBudget;
