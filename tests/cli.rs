//! The `lunchrush` binary as a user runs it: `up` prints READY with working
//! URLs and writes stack.env; Ctrl-C leaves no process behind; `token`
//! prints a token the API accepts.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lunchrush");

/// Pids of every process whose command line mentions `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
                .unwrap_or(false)
        })
        .filter(|&pid| stack::process_alive(pid))
        .collect()
}

/// `out`, once asserted to be a success (its stderr otherwise).
fn succeeded(out: std::process::Output) -> std::process::Output {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .unwrap()
        .1
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The `LUNCHRUSH_*` variables of `home/stack.env` as the README sources
/// them: `set -a; . .lunchrush/stack.env; set +a` in a POSIX shell.
fn sourced(home: &std::path::Path, names: &[&str]) -> Vec<String> {
    let script = format!(
        "set -a; . \"$1\"; set +a; printf '%s\\n' {}",
        names
            .iter()
            .map(|n| format!("\"$LUNCHRUSH_{n}\""))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(home.join("stack.env"))
        .output()
        .unwrap();
    String::from_utf8(succeeded(out).stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts `lunchrush up ARGS` on `home`; returns the child and its READY fields.
fn up(
    home: &std::path::Path,
    args: &[&str],
) -> (
    std::process::Child,
    std::collections::HashMap<String, String>,
) {
    let mut child = Command::new(BIN)
        .arg("up")
        .args(args)
        .env("LUNCHRUSH_HOME", home)
        .env("LUNCHRUSH_LISTEN", "127.0.0.1:0")
        .env_remove("LUNCHRUSH_JWT_SECRET")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let fields = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("first line is READY: {line:?}"))
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (child, fields)
}

/// With a Redis Cluster the URL holds `&` and `?`: stack.env quotes it, so
/// sourcing the file as the README says and running `lunchrush check`
/// reaches the cluster (not the default `redis://127.0.0.1:6379`).
#[test]
fn stack_env_of_a_cluster_sources_whole() {
    let home = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut child, fields) = up(home.path(), &["--cluster-masters", "3"]);
    let redis = &fields["redis"];
    assert!(
        redis.starts_with("redis-cluster://") && redis.contains('&'),
        "{redis}"
    );
    assert_eq!(sourced(home.path(), &["REDIS_URL"])[0], *redis);
    let check = Command::new("sh")
        .args(["-c", "set -a; . \"$1\"; set +a; exec \"$2\" check", "sh"])
        .arg(home.path().join("stack.env"))
        .arg(BIN)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    assert!(child.wait().unwrap().success());
}

/// `lunchrush up` on a fresh home: READY line, stack.env with the same URLs,
/// Redis and Postgres answering, and after SIGINT nothing left running.
#[test]
fn up_prints_ready_serves_and_stops_cleanly() {
    let home = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (mut child, fields) = up(home.path(), &[]);
    let (api, redis, postgres) = (
        fields["api"].as_str(),
        fields["redis"].as_str(),
        fields["postgres"].as_str(),
    );
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");
    assert!(redis.starts_with("redis://127.0.0.1:"), "{redis}");
    assert!(postgres.starts_with("postgres://"), "{postgres}");

    let sourced = sourced(
        home.path(),
        &["API_URL", "REDIS_URL", "POSTGRES_URL", "JWT_SECRET"],
    );
    assert_eq!(
        &sourced[..3],
        &[api, redis, postgres],
        "stack.env as a shell reads it"
    );
    let secret = sourced[3].as_str();
    assert!(secret.len() >= 32);

    let pong = stack::redis::command_once(port_of(redis), &["PING"]).unwrap();
    assert_eq!(pong, "PONG");
    // Redis gets a memory limit (by default half the machine's), which the
    // engine's budget reads.
    let maxmemory =
        stack::redis::command_once(port_of(redis), &["CONFIG", "GET", "maxmemory"]).unwrap();
    let maxmemory: u64 = maxmemory.lines().nth(1).unwrap().parse().unwrap();
    let total_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert_eq!(maxmemory, total_kib * 1024 / 2, "half the machine's memory");
    let psql = Command::new("psql")
        .args([postgres, "-tAc", "select count(*) from lunchrush_meta"])
        .output();
    if let Ok(out) = psql {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
    }

    let token = Command::new(BIN)
        .args(["token", "--role", "admin", "--sub", "ops"])
        .env("LUNCHRUSH_JWT_SECRET", secret)
        .output()
        .unwrap();
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout).unwrap();
    let claims = api::auth::Keys::new(secret.as_bytes())
        .verify(token.trim())
        .unwrap();
    assert_eq!(claims.role, api::auth::Role::Admin);

    let servers: Vec<u32> = [port_of(redis), port_of(postgres)]
        .iter()
        .flat_map(|port| pids_mentioning(&port.to_string()))
        .collect();
    assert!(servers.len() >= 2, "found the servers: {servers:?}");

    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(status.success(), "up exits 0 on Ctrl-C: {status}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while servers.iter().any(|&pid| stack::process_alive(pid)) {
        assert!(
            Instant::now() < deadline,
            "servers still running after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Bad token requests fail with a precise message and print nothing on stdout.
#[test]
fn token_refuses_bad_requests_precisely() {
    let out = Command::new(BIN)
        .args(["token", "--role", "restaurant", "--sub", "u1"])
        .env("LUNCHRUSH_JWT_SECRET", "s".repeat(32))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--restaurant"));

    let out = Command::new(BIN)
        .args(["token", "--role", "admin", "--sub", "a"])
        .env("LUNCHRUSH_JWT_SECRET", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32"));
}

/// `lunchrush down --purge` stops the `up` of a home and removes all of its
/// data: the home, and PostgreSQL's data outside it when the `postgres`
/// user could not reach the home (a home in a mode-0700 directory, as root).
#[test]
fn down_purge_stops_up_and_leaves_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let home = parent.path().join("home");
    {
        use std::os::unix::fs::PermissionsExt;
        let closed = std::fs::Permissions::from_mode(0o700);
        std::fs::set_permissions(parent.path(), closed).unwrap();
    }
    let (mut child, _) = up(&home, &[]);
    let note = std::fs::read_to_string(home.join("postgres/DATA_DIRECTORY")).ok();
    let down = Command::new(BIN)
        .args(["down", "--purge", "--home"])
        .arg(&home)
        .output()
        .unwrap();
    succeeded(down);
    assert!(child.wait().unwrap().success(), "up stopped cleanly");
    assert!(!home.exists(), "the home is gone");
    if let Some(data) = note {
        let outside = std::path::Path::new(data.trim())
            .parent()
            .unwrap()
            .to_path_buf();
        assert!(!outside.exists(), "{} left behind", outside.display());
    }
}

/// `serve` against a Redis that may evict keys (an order or a stock count
/// could vanish) refuses to start: it exits with the reason and never prints
/// READY, so a supervisor waiting for READY does not route traffic to it.
#[test]
fn serve_refuses_an_evicting_redis_before_ready() {
    let dir = tempfile::tempdir().unwrap();
    let redis = stack::redis::RedisServer::start(stack::redis::RedisOptions {
        dir: dir.path().to_path_buf(),
        preferred_port: None,
        appendfsync: stack::redis::AppendFsync::Everysec,
        maxmemory: None,
    })
    .unwrap();
    redis
        .command(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lru"])
        .unwrap();
    let serve = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis.url(),
        ])
        .env("LUNCHRUSH_JWT_SECRET", "s".repeat(32))
        .env(
            "LUNCHRUSH_POSTGRES_URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .env("LUNCHRUSH_PSP_URL", "http://127.0.0.1:1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Its exit, with both pipes read meanwhile, awaited up to a deadline.
    let pid = serve.id();
    let (exited, exit) = std::sync::mpsc::channel();
    std::thread::spawn(move || exited.send(serve.wait_with_output()));
    let Ok(out) = exit.recv_timeout(Duration::from_secs(30)) else {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        panic!("serve kept running against an evicting Redis");
    };
    let out = out.unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(
        !stdout.contains("READY"),
        "READY before the check: {stdout}"
    );
    assert!(
        stderr.contains("allkeys-lru"),
        "the reason is named: {stderr}"
    );
}
