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

/// `lunchrush up` on a fresh home: READY line, stack.env with the same URLs,
/// Redis and Postgres answering, and after SIGINT nothing left running.
#[test]
fn up_prints_ready_serves_and_stops_cleanly() {
    let home = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new(BIN)
        .arg("up")
        .env("LUNCHRUSH_HOME", home.path())
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
    let fields: std::collections::HashMap<&str, &str> = line
        .trim()
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("first line is READY: {line:?}"))
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let (api, redis, postgres) = (fields["api"], fields["redis"], fields["postgres"]);
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");
    assert!(redis.starts_with("redis://127.0.0.1:"), "{redis}");
    assert!(postgres.starts_with("postgres://"), "{postgres}");

    let env = std::fs::read_to_string(home.path().join("stack.env")).unwrap();
    assert!(env.contains(&format!("LUNCHRUSH_API_URL={api}\n")), "{env}");
    assert!(
        env.contains(&format!("LUNCHRUSH_REDIS_URL={redis}\n")),
        "{env}"
    );
    assert!(
        env.contains(&format!("LUNCHRUSH_POSTGRES_URL={postgres}\n")),
        "{env}"
    );
    let secret = env
        .lines()
        .find_map(|l| l.strip_prefix("LUNCHRUSH_JWT_SECRET="))
        .expect("a generated secret");
    assert!(secret.len() >= 32);

    let pong = stack::redis::command_once(port_of(redis), &["PING"]).unwrap();
    assert_eq!(pong, "PONG");
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
