//! Logging setup: `UIOMMUFD_LOG=debug` shows the reason behind every failed call.

use std::sync::Once;

/// Install a stderr subscriber filtered by `UIOMMUFD_LOG` (e.g. `debug`,
/// `uiommufd=trace`). Does nothing when the variable is unset or when a
/// subscriber is already installed. Safe to call many times.
pub fn init_from_env() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(spec) = std::env::var("UIOMMUFD_LOG") else {
            return;
        };
        let Ok(filter) = tracing_subscriber::EnvFilter::try_new(spec) else {
            return;
        };
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false)
            .try_init();
    });
}
