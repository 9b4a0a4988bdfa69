//! Rebuilds the crate when `migrations/` changes: `embed_migrations!` reads
//! the directory at compile time, but a new file in it would not make cargo
//! recompile on its own, and the build would silently lack the migration.

fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
