//! Finding the server binaries: `PATH` first, then Debian's versioned
//! PostgreSQL directories (`/usr/lib/postgresql/<major>/bin`), which are not on
//! `PATH` on a stock Debian install.

use std::path::{Path, PathBuf};

use crate::StackError;

/// Where Debian installs each PostgreSQL major version.
const POSTGRES_LIB_DIR: &str = "/usr/lib/postgresql";

/// The Debian package that provides each binary we need.
fn package_of(binary: &str) -> &'static str {
    match binary {
        "redis-server" | "redis-cli" => "redis-server",
        _ => "postgresql",
    }
}

/// Finds `binary` on `PATH`; for PostgreSQL binaries also in the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find(binary: &str) -> Result<PathBuf, StackError> {
    if let Some(found) = on_path(binary) {
        return Ok(found);
    }
    if package_of(binary) == "postgresql"
        && let Some(found) = in_postgres_lib(binary)
    {
        return Ok(found);
    }
    Err(StackError::MissingBinary {
        binary: binary.to_string(),
        package: package_of(binary),
    })
}

/// PostgreSQL's binaries must come from one installation: `initdb` of one
/// major version and `postgres` of another cannot share a data directory.
/// Returns the directory holding both `postgres` and `initdb`.
pub fn postgres_bin_dir() -> Result<PathBuf, StackError> {
    let postgres = find("postgres")?;
    let resolved = std::fs::canonicalize(&postgres).unwrap_or(postgres);
    let dir = resolved
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    if dir.join("initdb").is_file() {
        return Ok(dir);
    }
    Err(StackError::MissingBinary {
        binary: format!("initdb (beside {})", dir.display()),
        package: "postgresql",
    })
}

fn on_path(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
}

fn in_postgres_lib(binary: &str) -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(POSTGRES_LIB_DIR)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let major = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let candidate = entry.path().join("bin").join(binary);
            is_executable(&candidate).then_some((major, candidate))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, path)| path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
