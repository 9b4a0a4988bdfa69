//! PostgreSQL on loopback, from the binaries, as an unprivileged user.
//!
//! PostgreSQL refuses to run as root. When we are root (CI, containers) the
//! server and `initdb` run as the `postgres` user that Debian's package
//! creates, and the data directory is owned by it.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{Daemon, RunAs, run_to_end};
use crate::{StackError, binaries, ports};

/// The role and database lunchrush uses on the local stack.
pub const ROLE: &str = "lunchrush";
pub const DATABASE: &str = "lunchrush";

/// How long PostgreSQL may take to accept connections (crash recovery of a
/// busy WAL takes longer than a clean start; the bound allows for it).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the data lives when the chosen home is not reachable by the
/// `postgres` user (e.g. a home under `/root`, mode 0700).
const FALLBACK_DATA_ROOT: &str = "/var/lib/lunchrush";

/// Options for one PostgreSQL server.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Directory for the data directory and the log.
    pub dir: PathBuf,
    pub preferred_port: Option<u16>,
    /// `false` for tests: fsync off and the data directory copied from a
    /// cached `initdb` template (a cold `initdb` costs about a second).
    pub durable: bool,
}

/// One running PostgreSQL server.
#[derive(Debug)]
pub struct Postgres {
    daemon: Daemon,
    port: u16,
    data: PathBuf,
    options: PostgresOptions,
    run_as: Option<RunAs>,
    /// The data's directory outside the home, when the `postgres` user
    /// cannot reach the home: removed when a non-durable server stops.
    outside: Option<PathBuf>,
}

impl Postgres {
    /// Initializes the data directory if it is new, starts the server, waits
    /// until it accepts connections and creates the `lunchrush` database.
    pub async fn start(options: PostgresOptions) -> Result<Self, StackError> {
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| StackError::io(format!("create {}", options.dir.display()), e))?;
        let run_as = unprivileged_user()?;
        let data = data_directory(&options.dir, run_as)?;
        let outside = (!data.starts_with(&options.dir)).then(|| {
            data.parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| data.clone())
        });
        if !data.join("PG_VERSION").is_file() {
            initialize(&data, options.durable, run_as)?;
        }
        let port = ports::pick(options.preferred_port)?;
        let mut server = Self {
            daemon: spawn(&options, &data, port, run_as)?,
            port,
            data,
            options,
            run_as,
            outside,
        };
        server.wait_ready().await?;
        server.ensure_database(DATABASE).await?;
        Ok(server)
    }

    async fn wait_ready(&mut self) -> Result<(), StackError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match tokio_postgres::connect(&self.url_of("postgres"), tokio_postgres::NoTls).await {
                Ok((client, connection)) => {
                    drop(client);
                    let _ = connection.await;
                    return Ok(());
                }
                Err(_) if Instant::now() < deadline => {
                    self.daemon.ensure_running()?;
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(error) => {
                    return Err(StackError::Timeout {
                        what: format!(
                            "postgres on port {} to accept connections ({error})",
                            self.port
                        ),
                        tail: self.daemon.log_tail(),
                    });
                }
            }
        }
    }

    /// Creates database `name` unless it exists; returns its URL.
    pub async fn ensure_database(&self, name: &str) -> Result<String, StackError> {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "database names are plain identifiers"
        );
        let (client, connection) =
            tokio_postgres::connect(&self.url_of("postgres"), tokio_postgres::NoTls)
                .await
                .map_err(StackError::Postgres)?;
        let driver = tokio::spawn(connection);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(StackError::Postgres)?
            .is_some();
        if !exists {
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .await
                .map_err(StackError::Postgres)?;
        }
        drop(client);
        let _ = driver.await;
        Ok(self.url_of(name))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://lunchrush@127.0.0.1:<port>/lunchrush`
    pub fn url(&self) -> String {
        self.url_of(DATABASE)
    }

    fn url_of(&self, database: &str) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/{database}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Fast shutdown (SIGINT): open transactions roll back, committed ones stay.
    pub fn stop(&mut self) {
        self.daemon.stop(crate::process::STOP_TIMEOUT);
    }

    /// SIGKILL of the postmaster: a crash; the next start runs WAL recovery.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Starts again on the same port and data directory.
    pub async fn restart(&mut self) -> Result<(), StackError> {
        self.daemon.stop(crate::process::STOP_TIMEOUT);
        self.daemon = spawn(&self.options, &self.data, self.port, self.run_as)?;
        self.wait_ready().await
    }
}

fn spawn(
    options: &PostgresOptions,
    data: &Path,
    port: u16,
    run_as: Option<RunAs>,
) -> Result<Daemon, StackError> {
    let bin = binaries::postgres_bin_dir()?;
    let mut command = Command::new(bin.join("postgres"));
    command
        .arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "listen_addresses=127.0.0.1"])
        // TCP only: no socket file to clean up, no shared /var/run directory.
        .args(["-c", "unix_socket_directories="])
        .args(["-c", "max_connections=300"])
        .args(["-c", "timezone=UTC"]);
    if !options.durable {
        command
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"]);
    }
    let log = options.dir.join("postgres.log");
    Daemon::spawn("postgres", command, libc::SIGINT, &log, run_as)
}

/// Creates a fresh data directory: `initdb` for durable servers, a copy of a
/// cached template for test servers.
fn initialize(data: &Path, durable: bool, run_as: Option<RunAs>) -> Result<(), StackError> {
    if durable {
        return initdb(data, run_as, false);
    }
    let template = template(run_as)?;
    let _ = std::fs::remove_dir_all(data);
    let status = Command::new("cp")
        .arg("-a")
        .arg(&template)
        .arg(data)
        .status()
        .map_err(|e| StackError::io("copy the initdb template", e))?;
    if !status.success() {
        return Err(StackError::Helper {
            program: "cp -a".into(),
            status: status.to_string(),
            output: format!("{} -> {}", template.display(), data.display()),
        });
    }
    Ok(())
}

/// An `initdb` result cached in the temp directory and shared by every test
/// process; built once, atomically (build aside, then rename).
fn template(run_as: Option<RunAs>) -> Result<PathBuf, StackError> {
    let bin = binaries::postgres_bin_dir()?;
    let version = bin
        .parent()
        .and_then(Path::file_name)
        .and_then(|n| n.to_str())
        .unwrap_or("pg")
        .to_string();
    let uid = run_as
        .map(|u| u.uid)
        .unwrap_or_else(|| unsafe { libc::geteuid() });
    let root = std::env::temp_dir();
    let template = root.join(format!("lunchrush-initdb-{version}-{uid}"));
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    // One build per process: the tests of one binary start stacks on
    // several threads at once, and they would share `building`.
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = BUILD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if template.join("PG_VERSION").is_file() {
        return Ok(template);
    }
    let building = root.join(format!(
        "lunchrush-initdb-{version}-{uid}.{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&building);
    initdb(&building, run_as, true)?;
    if std::fs::rename(&building, &template).is_err() {
        // Another process won the race; its template is as good as ours.
        let _ = std::fs::remove_dir_all(&building);
    }
    Ok(template)
}

fn initdb(data: &Path, run_as: Option<RunAs>, fast: bool) -> Result<(), StackError> {
    std::fs::create_dir_all(data)
        .map_err(|e| StackError::io(format!("create {}", data.display()), e))?;
    if let Some(user) = run_as {
        chown(data, user)?;
    }
    let bin = binaries::postgres_bin_dir()?;
    let mut command = Command::new(bin.join("initdb"));
    command
        .arg("-D")
        .arg(data)
        .args(["-U", ROLE])
        .args(["--auth", "trust"])
        .args(["--encoding", "UTF8"])
        .arg("--no-locale")
        .arg("--no-instructions");
    if fast {
        command.arg("--no-sync");
    }
    run_to_end(command, run_as)
}

/// `Some(postgres)` when we are root, `None` otherwise.
fn unprivileged_user() -> Result<Option<RunAs>, StackError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let name = CString::new("postgres").expect("no NUL in a literal");
    // SAFETY: getpwnam returns a pointer to static storage or NULL; we copy
    // the two fields out before any other call can overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(StackError::NoUnprivilegedUser);
    }
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some(RunAs { uid, gid }))
}

/// Where the data directory goes: `<dir>/data`, unless the `postgres` user
/// cannot reach it (a parent directory without search permission for others),
/// in which case a directory under `/var/lib/lunchrush` named after `dir` and
/// the stack's id (`dir/STACK_ID`), noted in `dir/DATA_DIRECTORY`.
fn data_directory(dir: &Path, run_as: Option<RunAs>) -> Result<PathBuf, StackError> {
    let preferred = dir.join("data");
    let Some(user) = run_as else {
        return Ok(preferred);
    };
    let canonical = std::fs::canonicalize(dir)
        .map_err(|e| StackError::io(format!("resolve {}", dir.display()), e))?;
    if reachable_by(&canonical, user) {
        return Ok(preferred);
    }
    let name: String = canonical
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // A home made before stack ids existed keeps the data its note names.
    if !dir.join("STACK_ID").exists()
        && let Ok(note) = std::fs::read_to_string(dir.join("DATA_DIRECTORY"))
    {
        let data = PathBuf::from(note.trim());
        if data.starts_with(FALLBACK_DATA_ROOT) && data.join("PG_VERSION").is_file() {
            return Ok(data);
        }
    }
    // Named after the home *and* its id: a new home at the same path never
    // adopts the data of the one that was deleted.
    let id = stack_id(dir)?;
    let fallback = Path::new(FALLBACK_DATA_ROOT).join(format!("{}-{id}", name.trim_matches('_')));
    std::fs::create_dir_all(&fallback)
        .map_err(|e| StackError::io(format!("create {}", fallback.display()), e))?;
    chown(&fallback, user)?;
    let note = dir.join("DATA_DIRECTORY");
    let _ = std::fs::write(&note, format!("{}\n", fallback.join("data").display()));
    tracing::info!(
        data = %fallback.display(),
        "The postgres user cannot reach the stack home; PostgreSQL data lives elsewhere."
    );
    Ok(fallback.join("data"))
}

impl Drop for Postgres {
    /// A non-durable server's data outside its home goes with it (the
    /// home, a temporary directory, goes with its owner).
    fn drop(&mut self) {
        if self.options.durable {
            return;
        }
        if let Some(outside) = self.outside.take() {
            self.daemon.stop(crate::process::STOP_TIMEOUT);
            let _ = std::fs::remove_dir_all(&outside);
        }
    }
}

/// The id of the stack whose home holds `dir`: written once in
/// `dir/STACK_ID`, so a new home (even at the same path) gets a new one.
fn stack_id(dir: &Path) -> Result<String, StackError> {
    let path = dir.join("STACK_ID");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(id.to_string());
        }
    }
    let id = format!("{:016x}", rand::random::<u64>());
    std::fs::write(&path, format!("{id}\n"))
        .map_err(|e| StackError::io(format!("write {}", path.display()), e))?;
    Ok(id)
}

/// Removes a home's PostgreSQL data that lives outside it (the path its
/// `DATA_DIRECTORY` note names), if any. For `lunchrush down --purge`.
pub fn remove_outside_data(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let Ok(note) = std::fs::read_to_string(dir.join("DATA_DIRECTORY")) else {
        return Ok(None);
    };
    let data = PathBuf::from(note.trim());
    // Only a directory right below the fallback root, named as we name
    // them: a note that says anything else is not ours to remove.
    let Some(outside) = data.parent() else {
        return Ok(None);
    };
    let plain = outside.file_name().is_some_and(|name| {
        name.to_string_lossy()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if outside.parent() != Some(Path::new(FALLBACK_DATA_ROOT)) || !plain {
        return Ok(None);
    }
    if outside.exists() {
        std::fs::remove_dir_all(outside)?;
    }
    Ok(Some(outside.to_path_buf()))
}

/// Whether every ancestor of `dir` (and `dir` itself) lets `user` search it.
fn reachable_by(dir: &Path, user: RunAs) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().all(|ancestor| {
        let Ok(meta) = std::fs::metadata(ancestor) else {
            return false;
        };
        let mode = meta.mode();
        mode & 0o001 != 0
            || (meta.uid() == user.uid && mode & 0o100 != 0)
            || (meta.gid() == user.gid && mode & 0o010 != 0)
    })
}

fn chown(path: &Path, user: RunAs) -> Result<(), StackError> {
    std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
        .map_err(|e| StackError::io(format!("chown {} to postgres", path.display()), e))
}
