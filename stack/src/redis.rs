//! `redis-server` on loopback: standalone, or a real Redis Cluster of N
//! masters joined with `CLUSTER ADDSLOTSRANGE` / `CLUSTER MEET`.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::Daemon;
use crate::{StackError, binaries, ports};

/// How long a fresh redis-server may take to answer PING (AOF replay of a
/// large data set takes longer: that is what the bound is sized for).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a new cluster may take to agree that every slot is served.
const CLUSTER_OK_TIMEOUT: Duration = Duration::from_secs(30);

/// Redis Cluster has 16,384 hash slots.
const CLUSTER_SLOTS: u32 = 16_384;

/// A start is retried when another process grabbed the port meanwhile.
const START_ATTEMPTS_MAX: usize = 3;

/// Redis's AOF fsync policy: what a crash of Redis (not of lunchrush) may lose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AppendFsync {
    /// fsync before replying (one fsync per event-loop round, shared by every
    /// write of that round): nothing acknowledged is lost. The default.
    #[default]
    Always,
    /// fsync once a second in the background: a crash may lose up to ~2 s
    /// of acknowledged writes (a machine crash, or a Redis crash while the
    /// disk is busy).
    Everysec,
    /// leave it to the OS: a machine crash may lose ~30 s.
    No,
}

impl AppendFsync {
    pub fn as_str(self) -> &'static str {
        match self {
            AppendFsync::Always => "always",
            AppendFsync::Everysec => "everysec",
            AppendFsync::No => "no",
        }
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(Self::Always),
            "everysec" => Ok(Self::Everysec),
            "no" => Ok(Self::No),
            other => Err(format!(
                "appendfsync must be always, everysec or no, not {other:?}"
            )),
        }
    }
}

/// Options for one redis-server.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Data directory (AOF, cluster config, log).
    pub dir: PathBuf,
    /// A port to try first.
    pub preferred_port: Option<u16>,
    pub appendfsync: AppendFsync,
    /// Redis's `maxmemory` in bytes (`None`: no limit): past it Redis
    /// refuses writes that grow memory; lunchrush's budget refuses new
    /// orders before that.
    pub maxmemory: Option<u64>,
}

/// One running redis-server.
#[derive(Debug)]
pub struct RedisServer {
    daemon: Daemon,
    port: u16,
    cluster_port: Option<u16>,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts a standalone redis-server and waits until it answers PING.
    pub fn start(options: RedisOptions) -> Result<Self, StackError> {
        Self::start_with(options, false)
    }

    fn start_with(options: RedisOptions, cluster: bool) -> Result<Self, StackError> {
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| StackError::io(format!("create {}", options.dir.display()), e))?;
        let mut preferred = options.preferred_port;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS_MAX {
            let port = ports::pick(preferred.take())?;
            let cluster_port = if cluster {
                Some(ports::pick(None)?)
            } else {
                None
            };
            match Self::spawn(&options, port, cluster_port) {
                Ok(server) => return Ok(server),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or(StackError::NoFreePort))
    }

    fn spawn(
        options: &RedisOptions,
        port: u16,
        cluster_port: Option<u16>,
    ) -> Result<Self, StackError> {
        let binary = binaries::find("redis-server")?;
        let mut command = Command::new(binary);
        command
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(&options.dir)
            .args(["--appendonly", "yes"])
            .args(["--appendfsync", options.appendfsync.as_str()])
            // Any eviction policy silently drops queue entries and stock keys.
            .args(["--maxmemory-policy", "noeviction"])
            // An order's hash holds values of a few hundred bytes (its lines,
            // its event list): up to this size Redis keeps a hash as one
            // listpack (~430 B an order) instead of a hashtable (~1.4 KB).
            .args(["--hash-max-listpack-value", "1024"])
            // The AOF is the persistence; RDB snapshots would only add fork pauses.
            .args(["--save", ""])
            // Rewrite the AOF from 512 MB (and twice its last rewrite), not
            // from the default 64 MB: while the data set is small, a lunch
            // peak (~3 KB of AOF an order) would otherwise fork a rewrite
            // every few seconds, each a pause of the event loop and a child
            // taking a core. A restart replays at most that much.
            .args(["--auto-aof-rewrite-min-size", "512mb"])
            .args(["--daemonize", "no"])
            .args(["--protected-mode", "no"]);
        if let Some(bytes) = options.maxmemory {
            command.arg("--maxmemory").arg(bytes.to_string());
        }
        if let Some(bus) = cluster_port {
            command
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "5000"])
                .arg("--cluster-port")
                .arg(bus.to_string());
        }
        let log = options.dir.join("redis.log");
        let mut daemon = Daemon::spawn("redis-server", command, libc::SIGTERM, &log, None)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(reply) = command_once(port, &["PING"])
                && reply == "PONG"
            {
                break;
            }
            daemon.ensure_running()?;
            if Instant::now() > deadline {
                return Err(StackError::Timeout {
                    what: format!("redis-server on port {port} to answer PING"),
                    tail: daemon.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Self {
            daemon,
            port,
            cluster_port,
            options: options.clone(),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.pid()
    }

    pub fn dir(&self) -> &Path {
        &self.options.dir
    }

    /// SIGKILL: a crash. Whatever the AOF policy had not fsynced is gone.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    /// Graceful stop (SIGTERM: Redis fsyncs its AOF and exits).
    pub fn stop(&mut self) {
        self.daemon.stop(crate::process::STOP_TIMEOUT);
    }

    /// Starts again on the same port and data directory (after `kill` or `stop`).
    pub fn restart(&mut self) -> Result<(), StackError> {
        self.daemon.stop(crate::process::STOP_TIMEOUT);
        let server = Self::spawn(&self.options, self.port, self.cluster_port)?;
        *self = server;
        Ok(())
    }

    /// Sends one command and returns its reply as text.
    pub fn command(&self, args: &[&str]) -> Result<String, StackError> {
        command_once(self.port, args)
    }
}

/// A real Redis Cluster of N masters (no replicas) on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` nodes under `dir/node-<i>`, splits the 16,384 slots
    /// evenly between them and waits for `cluster_state:ok` on every node.
    pub fn start(
        dir: &Path,
        masters: usize,
        appendfsync: AppendFsync,
        maxmemory: Option<u64>,
    ) -> Result<Self, StackError> {
        assert!(masters >= 1, "a cluster needs at least one master");
        let mut nodes = Vec::with_capacity(masters);
        for index in 0..masters {
            nodes.push(RedisServer::start_with(
                RedisOptions {
                    dir: dir.join(format!("node-{index}")),
                    preferred_port: None,
                    appendfsync,
                    maxmemory,
                },
                true,
            )?);
        }
        let cluster = Self { nodes };
        cluster.join()?;
        Ok(cluster)
    }

    fn join(&self) -> Result<(), StackError> {
        let masters = self.nodes.len() as u32;
        for (index, node) in self.nodes.iter().enumerate() {
            let index = index as u32;
            let first = CLUSTER_SLOTS * index / masters;
            let last = CLUSTER_SLOTS * (index + 1) / masters - 1;
            expect_ok(node.command(&["CLUSTER", "SET-CONFIG-EPOCH", &(index + 1).to_string()]))?;
            expect_ok(node.command(&[
                "CLUSTER",
                "ADDSLOTSRANGE",
                &first.to_string(),
                &last.to_string(),
            ]))?;
        }
        let seed = &self.nodes[0];
        let seed_bus = seed.cluster_port.expect("cluster nodes have a bus port");
        for node in &self.nodes[1..] {
            expect_ok(node.command(&[
                "CLUSTER",
                "MEET",
                "127.0.0.1",
                &seed.port.to_string(),
                &seed_bus.to_string(),
            ]))?;
        }
        let deadline = Instant::now() + CLUSTER_OK_TIMEOUT;
        loop {
            let all_ok = self.nodes.iter().all(|node| {
                node.command(&["CLUSTER", "INFO"])
                    .map(|info| {
                        info.contains("cluster_state:ok")
                            && info.contains(&format!("cluster_known_nodes:{masters}"))
                    })
                    .unwrap_or(false)
            });
            if all_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StackError::Timeout {
                    what: format!("a {masters}-master cluster to reach cluster_state:ok"),
                    tail: self.nodes[0].daemon.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis-cluster://127.0.0.1:<p0>?node=127.0.0.1:<p1>&node=…`, the form
    /// lunchrush's configuration (and fred) accept.
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (index, node) in self.nodes[1..].iter().enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            url.push_str(&format!("node=127.0.0.1:{}", node.port));
        }
        url
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    pub fn nodes_mut(&mut self) -> &mut [RedisServer] {
        &mut self.nodes
    }
}

fn expect_ok(reply: Result<String, StackError>) -> Result<(), StackError> {
    let reply = reply?;
    if reply == "OK" {
        Ok(())
    } else {
        Err(StackError::Redis(reply))
    }
}

/// One command over a fresh connection, RESP2, reply flattened to text
/// (arrays joined by newlines). Enough for PING and CLUSTER set-up; the
/// engine itself talks to Redis through fred.
pub fn command_once(port: u16, args: &[&str]) -> Result<String, StackError> {
    let io = |e| StackError::io(format!("talk to redis on port {port}"), e);
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(io)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let mut request = format!("*{}\r\n", args.len());
    for arg in args {
        request.push_str(&format!("${}\r\n{}\r\n", arg.len(), arg));
    }
    stream.write_all(request.as_bytes()).map_err(io)?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader).map_err(io)
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']);
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Ok(format!("ERR {rest}")),
        "$" => {
            let len: i64 = rest.parse().unwrap_or(-1);
            if len < 0 {
                return Ok(String::new());
            }
            let mut body = vec![0u8; len as usize + 2];
            std::io::Read::read_exact(reader, &mut body)?;
            body.truncate(len as usize);
            Ok(String::from_utf8_lossy(&body).into_owned())
        }
        "*" => {
            let count: i64 = rest.parse().unwrap_or(0);
            let mut items = Vec::new();
            for _ in 0..count.max(0) {
                items.push(read_reply(reader)?);
            }
            Ok(items.join("\n"))
        }
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected RESP reply {line:?}"),
        )),
    }
}
