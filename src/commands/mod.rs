//! One module per subcommand.

pub mod migrate;
pub mod token;
pub mod up;
