//! Free loopback ports.
//!
//! A port is "free" when we can bind it right now; another process may take it
//! before the server does, so starters retry on `EADDRINUSE`. Within one
//! process a port is never handed out twice.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::Mutex;

use crate::StackError;

/// Redis Cluster's bus listens on its own port; keep both below 65535.
const PORT_MAX: u16 = 60_000;

/// How many ephemeral ports we try before giving up.
const ATTEMPTS_MAX: usize = 200;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// Whether `port` can be bound on 127.0.0.1 right now.
pub fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// A port that is free now and was not handed out before in this process.
/// `preferred` is tried first (a second `lunchrush up` keeps its URLs) and
/// taken whenever it is free, even if this process used it before.
pub fn pick(preferred: Option<u16>) -> Result<u16, StackError> {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let handed_out = guard.get_or_insert_with(HashSet::new);
    if let Some(port) = preferred
        && port != 0
        && is_free(port)
    {
        handed_out.insert(port);
        return Ok(port);
    }
    for _ in 0..ATTEMPTS_MAX {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| StackError::io("bind an ephemeral port", e))?;
        let port = listener
            .local_addr()
            .map_err(|e| StackError::io("read an ephemeral port", e))?
            .port();
        if port <= PORT_MAX && handed_out.insert(port) {
            return Ok(port);
        }
    }
    Err(StackError::NoFreePort)
}
