//! A child process that can never outlive its owner.
//!
//! Every server the stack starts is a [`Daemon`]: it is spawned with
//! `PR_SET_PDEATHSIG`, so the kernel signals it when the thread that spawned
//! it dies (a test that panics, a `kill -9` of `lunchrush up`), and its
//! `Drop` stops it gracefully, then forcefully. No orphan survives either way.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::StackError;

/// How long a graceful stop may take before the process is killed.
/// Redis flushes its AOF and Postgres runs a fast-shutdown checkpoint within
/// this bound on a loaded laptop; past it something is wrong.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The bytes of a log's tail quoted in an error when a server fails to start.
const LOG_TAIL_BYTES: u64 = 2_000;

/// A unix user a server runs as (PostgreSQL refuses to run as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
}

/// A running server process owned by the stack.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Option<Child>,
    stop_signal: i32,
    log: PathBuf,
}

impl Daemon {
    /// Spawns `command` with stdout and stderr appended to `log`.
    ///
    /// `stop_signal` is what a graceful stop sends (and what the kernel sends
    /// when the owner dies): SIGTERM for Redis, SIGINT ("fast shutdown") for
    /// PostgreSQL.
    pub fn spawn(
        name: &str,
        mut command: Command,
        stop_signal: i32,
        log: &Path,
        run_as: Option<RunAs>,
    ) -> Result<Self, StackError> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| StackError::io(format!("open log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| StackError::io("clone log handle", e))?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        if let Some(user) = run_as {
            command.uid(user.uid).gid(user.gid);
        }
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Set after the uid change above: a credential change clears it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, stop_signal as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The owner may have died between fork and prctl.
                if libc::getppid() == 1 {
                    libc::_exit(1);
                }
                // Own process group: a Ctrl-C at the terminal reaches the owner,
                // which then stops its servers in order.
                libc::setpgid(0, 0);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            StackError::io(format!("spawn {name} ({:?})", command.get_program()), e)
        })?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            stop_signal,
            log: log.to_path_buf(),
        })
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still alive (reaps it if it exited).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fails with the log's tail when the process has exited.
    pub fn ensure_running(&mut self) -> Result<(), StackError> {
        if self.is_running() {
            return Ok(());
        }
        Err(StackError::Exited {
            name: self.name.clone(),
            log: self.log.clone(),
            tail: self.log_tail(),
        })
    }

    /// The last couple of kilobytes of the process's log.
    pub fn log_tail(&self) -> String {
        tail_of(&self.log)
    }

    /// Stops gracefully with the stop signal, then SIGKILL after `timeout`.
    pub fn stop(&mut self, timeout: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(child.id(), self.stop_signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(name = %self.name, "Server ignored its stop signal; killing it.");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, as a crash would: no flush, no goodbye. Used by fault tests.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop(STOP_TIMEOUT);
    }
}

fn signal(pid: u32, signal: i32) {
    // SAFETY: kill(2) with a pid we own.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// The tail of a file, lossily decoded; empty when it cannot be read.
pub fn tail_of(path: &Path) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Runs a short-lived helper (initdb) to completion, failing with its output.
pub fn run_to_end(mut command: Command, run_as: Option<RunAs>) -> Result<(), StackError> {
    if let Some(user) = run_as {
        command.uid(user.uid).gid(user.gid);
    }
    let program = format!("{:?}", command.get_program());
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| StackError::io(format!("run {program}"), e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(StackError::Helper {
        program,
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}
