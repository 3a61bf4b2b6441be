//! Test-only fault injection: `DHT_STORE_FAULT=<step>` makes the node stop dead at that step of
//! a handoff (it logs `fault point <step> reached` and then never moves again), so that a test
//! can SIGKILL it exactly there. Without the variable every point is a no-op. The steps are
//! listed in ARCHITECTURE.md.

use std::sync::OnceLock;

fn armed() -> Option<&'static str> {
    static FAULT: OnceLock<Option<String>> = OnceLock::new();
    FAULT
        .get_or_init(|| {
            std::env::var("DHT_STORE_FAULT")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .as_deref()
}

/// A named step of CON or DIS (see ARCHITECTURE.md for the list).
pub async fn point(step: &str) {
    if armed() == Some(step) {
        tracing::error!("fault point {step} reached: stopping here (DHT_STORE_FAULT)");
        std::future::pending::<()>().await;
    }
}

/// [`point`] for a step inside a blocking thread (the storage's writes): the thread sleeps
/// for good.
pub fn point_blocking(step: &str) {
    if armed() == Some(step) {
        tracing::error!("fault point {step} reached: stopping here (DHT_STORE_FAULT)");
        loop {
            std::thread::park();
        }
    }
}
