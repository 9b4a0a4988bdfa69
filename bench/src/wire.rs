//! A lean HTTP/1.1 client for open-model load: keep-alive connections
//! reused from a pool, each request written as bytes, each response read by
//! its `Content-Length`. What a load generator costs per request comes off
//! the cores the system under test shares with it, so it should cost what
//! wrk does, not what a general-purpose client does.

use std::sync::Mutex;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

/// A pool of connections to one `host:port`.
pub struct Wire {
    authority: String,
    idle: Mutex<Vec<BufStream<TcpStream>>>,
    idle_max: usize,
}

/// A response: its status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Wire {
    /// A pool for `base` (`http://host:port`), keeping at most `idle_max`
    /// idle connections.
    pub fn new(base: &str, idle_max: usize) -> anyhow::Result<Self> {
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("{base}: only http:// is supported"))?
            .trim_end_matches('/')
            .to_string();
        Ok(Self {
            authority,
            idle: Mutex::new(Vec::new()),
            idle_max,
        })
    }

    /// POSTs a JSON `body` to `path` with the given extra header lines
    /// (each `name: value\r\n`). A pooled connection the server closed
    /// meanwhile (its keep-alive timeout) is retried once on a new one: the
    /// requests this carries are idempotent (an Idempotency-Key each).
    pub async fn post(&self, path: &str, headers: &str, body: &[u8]) -> std::io::Result<Answer> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{headers}\r\n",
            self.authority,
            body.len()
        );
        let pooled = self.idle.lock().unwrap().pop();
        if let Some(conn) = pooled
            && let Ok(answer) = self.exchange(conn, head.as_bytes(), body).await
        {
            return Ok(answer);
        }
        let stream = TcpStream::connect(&self.authority).await?;
        stream.set_nodelay(true)?;
        self.exchange(BufStream::new(stream), head.as_bytes(), body)
            .await
    }

    /// One request and its response on `conn`, which goes back to the pool
    /// when it may carry another.
    async fn exchange(
        &self,
        mut conn: BufStream<TcpStream>,
        head: &[u8],
        body: &[u8],
    ) -> std::io::Result<Answer> {
        conn.write_all(head).await?;
        conn.write_all(body).await?;
        conn.flush().await?;
        let (answer, reusable) = read_answer(&mut conn).await?;
        if reusable {
            let mut idle = self.idle.lock().unwrap();
            if idle.len() < self.idle_max {
                idle.push(conn);
            }
        }
        Ok(answer)
    }
}

/// Reads one response; whether the connection may carry another.
async fn read_answer(conn: &mut BufStream<TcpStream>) -> std::io::Result<(Answer, bool)> {
    let broken =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if conn.read_line(&mut line).await? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| broken("status line"))?;
    let (mut length, mut reusable) = (0usize, true);
    loop {
        line.clear();
        if conn.read_line(&mut line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == "\r\n" {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(broken("header line"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| broken("content-length"))?;
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            reusable = false;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(broken("chunked bodies are not read"));
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok((Answer { status, body }, reusable))
}
