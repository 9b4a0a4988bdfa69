//! Stopping on Ctrl-C or SIGTERM, for every long-running command.

/// Completes on Ctrl-C or SIGTERM. The handlers are installed when this is
/// called, not when it is first awaited: a signal in between is not lost.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).expect("install the SIGINT handler");
    let mut term = signal(SignalKind::terminate()).expect("install the SIGTERM handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}
