//! One module per subcommand.

pub mod archive;
pub mod check;
pub mod demo;
pub mod down;
pub mod import;
pub mod migrate;
pub mod psp_sim;
pub mod reconcile;
pub mod serve;
pub mod token;
pub mod up;
