//! lunchrush load scenarios (goose) and the benchmark runner. The scenarios
//! arrive with the load-testing issue; this crate holds their place in the
//! workspace so the layout is fixed from the start.
