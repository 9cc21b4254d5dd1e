//! `tracing` output, filtered by `RUST_LOG` (default: warnings).

use std::io::IsTerminal;

/// Installs a stderr subscriber once; later calls do nothing. Colour codes
/// only when stderr is a terminal: log files and redirected stderr get
/// plain text.
pub(crate) fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
