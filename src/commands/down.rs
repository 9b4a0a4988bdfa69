//! `lunchrush down [--purge]`: stops the `lunchrush up` (or `demo`) running
//! on a home, and with `--purge` removes the home's data — Redis, the
//! provider ledger, stack.env, and PostgreSQL's data wherever it lives
//! (under `/var/lib/lunchrush` when the `postgres` user cannot reach the
//! home; the home's `postgres/DATA_DIRECTORY` names it).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

/// How long `down` waits for `up` to stop (it stops the servers first).
const STOP_WAIT_MAX: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// The stack's home (as for `up`).
    #[arg(long, env = "LUNCHRUSH_HOME", default_value = ".lunchrush")]
    pub home: PathBuf,
    /// Also remove every byte of the stack's data.
    #[arg(long)]
    pub purge: bool,
}

/// The pid file `up` writes in its home while it runs.
pub fn pid_file(home: &Path) -> PathBuf {
    home.join("up.pid")
}

/// Whether `pid` is a `lunchrush up` or `demo` (a stale pid file may name
/// any process by now).
fn is_lunchrush_up(pid: u32) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a));
    program == Some("lunchrush") && args.iter().skip(1).any(|a| a == "up" || a == "demo")
}

pub async fn run(args: DownArgs) -> anyhow::Result<ExitCode> {
    if !args.home.exists() {
        println!("nothing at {}", args.home.display());
        return Ok(ExitCode::SUCCESS);
    }
    let pid = std::fs::read_to_string(pid_file(&args.home))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .filter(|&pid| stack::process_alive(pid) && is_lunchrush_up(pid));
    if let Some(pid) = pid {
        // SAFETY: kill(2) on the pid `up` recorded for this home.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_WAIT_MAX;
        while stack::process_alive(pid) {
            anyhow::ensure!(
                Instant::now() < deadline,
                "lunchrush up (pid {pid}) did not stop within {STOP_WAIT_MAX:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        println!("stopped lunchrush up (pid {pid})");
    }
    if args.purge {
        if let Some(outside) = stack::postgres::remove_outside_data(&args.home.join("postgres"))
            .context("remove the PostgreSQL data outside the home")?
        {
            println!("removed {}", outside.display());
        }
        std::fs::remove_dir_all(&args.home)
            .with_context(|| format!("remove {}", args.home.display()))?;
        println!("removed {}", args.home.display());
    }
    Ok(ExitCode::SUCCESS)
}
