//! The engine's integration tests run on the shared fixture: real Redis
//! (standalone or a 3-master Cluster), the provider simulator in-process,
//! an engine with its consumer groups, workers on demand.

#![allow(dead_code)]

#[allow(unused_imports)]
pub use fixture::{Fixture as TestEnv, PARTITIONS, RecordingNotifier, fast_options};

/// A standalone or cluster fixture whose delayed tasks run on `timers`.
pub async fn with_timers(cluster: bool, timers: engine::Timers) -> TestEnv {
    let options = if cluster {
        fixture::Options::cluster()
    } else {
        fixture::Options::redis()
    };
    TestEnv::start(options, |config| config.timers = timers).await
}
