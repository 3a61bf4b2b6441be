//! Test-only fault injection: `DHT_STORE_FAULT=<step>` makes the node stop dead at that step of
//! a handoff (it logs `fault point <step> reached` and then never moves again), so that a test
//! can SIGKILL it exactly there. `DHT_STORE_FAULT=<step>/<ms>` pauses there for that many
//! milliseconds instead (it logs `fault point <step> reached: pausing`), so that a test can make
//! something else happen meanwhile. Without the variable every point is a no-op. The steps are
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

/// How long `DHT_STORE_FAULT=<step>/<ms>` pauses at `step`.
fn pause(step: &str) -> Option<std::time::Duration> {
    let ms = armed()?
        .strip_prefix(step)?
        .strip_prefix('/')?
        .parse()
        .ok()?;
    Some(std::time::Duration::from_millis(ms))
}

/// A named step of CON or DIS (see ARCHITECTURE.md for the list).
pub async fn point(step: &str) {
    if armed() == Some(step) {
        tracing::error!("fault point {step} reached: stopping here (DHT_STORE_FAULT)");
        std::future::pending::<()>().await;
    }
    if let Some(d) = pause(step) {
        tracing::error!("fault point {step} reached: pausing {d:?} (DHT_STORE_FAULT)");
        tokio::time::sleep(d).await;
    }
}

/// [`point`] for a step inside a blocking thread (the storage's writes): the thread sleeps
/// for good, or for the pause.
pub fn point_blocking(step: &str) {
    if armed() == Some(step) {
        tracing::error!("fault point {step} reached: stopping here (DHT_STORE_FAULT)");
        loop {
            std::thread::park();
        }
    }
    if let Some(d) = pause(step) {
        tracing::error!("fault point {step} reached: pausing {d:?} (DHT_STORE_FAULT)");
        std::thread::sleep(d);
    }
}
