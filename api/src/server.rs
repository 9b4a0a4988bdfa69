//! The HTTP server: hyper's HTTP/1 connections under our own accept loop,
//! so that no client can hold the process's resources without bound.
//!
//! - **Connections are capped** (`Limits::connections_max`, itself kept
//!   under the process's file-descriptor limit). Past the cap a new
//!   connection gets one `503 overloaded` problem document and is closed:
//!   refused politely, never queued.
//! - **A request head must arrive in time** (`Limits::header_read_timeout`):
//!   the clock runs from the moment a connection is ready for a request —
//!   right after connecting or after its previous response — so it bounds
//!   slow heads and idle keep-alive connections alike.
//! - **Protocol-level refusals are problem+json.** hyper answers a request
//!   it cannot parse (a malformed request line, headers over the limit, a
//!   URI too long) by itself, before any handler runs, with a bare status
//!   line; [`ProblemIo`] recognises those answers on their way out and
//!   replaces them with a problem document of the same status.
//! - Memory a flood of connections took is handed back to the system once
//!   they are gone ([`Connections`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::AppState;

/// The request head (request line and headers) is at most this many bytes;
/// larger heads are refused with 431. hyper's read buffer never grows past it.
pub const HEAD_BYTES_MAX: usize = 64 * 1024;
/// At most this many header fields per request (431 past it): hyper's own
/// bound, kept because its header array then lives on the stack.
pub const HEADERS_MAX: usize = 100;
/// File descriptors kept out of the connection cap: Redis and PostgreSQL
/// connections, the log, the provider client.
const FDS_RESERVED: usize = 256;
/// After an accept error (say the descriptor table is full), wait this long
/// before accepting again, instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);
/// On shutdown, connections get this long to finish their requests.
const DRAIN_GRACE: Duration = Duration::from_secs(10);
/// Memory is handed back once connections fall to a quarter of a peak at
/// least this high.
const TRIM_PEAK_MIN: usize = 512;

/// The answer to a connection past the cap: a whole HTTP response, written
/// in one go without reading the request.
static REFUSAL: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
    let body = serde_json::json!({
        "type": "https://lunchrush.dev/problems/overloaded",
        "title": "Service unavailable",
        "status": 503,
        "detail": "too many open connections to this engine; retry shortly",
        "code": "overloaded",
    })
    .to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: {}\r\nretry-after: 1\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        crate::problem::CONTENT_TYPE,
        body.len()
    )
    .into_bytes()
});

/// The connection cap the process can honour: `wanted`, lowered to fit the
/// file-descriptor limit (raised to its hard maximum first).
pub fn connections_cap(wanted: usize) -> usize {
    let fds = raise_fd_limit();
    match fds {
        Some(fds) if fds.saturating_sub(FDS_RESERVED) < wanted => {
            let cap = fds.saturating_sub(FDS_RESERVED).max(16);
            tracing::warn!(
                wanted,
                cap,
                fds,
                "The file-descriptor limit lowers the connection cap."
            );
            cap
        }
        _ => wanted,
    }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard one; returns the soft limit now in force.
fn raise_fd_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return None;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    usize::try_from(limit.rlim_cur).ok()
}

/// Open connections, and the memory they leave behind.
#[derive(Debug, Default)]
struct Connections {
    open: AtomicUsize,
    peak: AtomicUsize,
}

impl Connections {
    fn opened(&self) {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        ::metrics::gauge!("lunchrush_http_connections").set(open as f64);
    }

    /// After a flood, hands the freed heap back to the system (see
    /// [`crate::heap`]).
    fn closed(&self) {
        let open = self.open.fetch_sub(1, Ordering::Relaxed) - 1;
        ::metrics::gauge!("lunchrush_http_connections").set(open as f64);
        let peak = self.peak.load(Ordering::Relaxed);
        if peak >= TRIM_PEAK_MIN
            && open <= peak / 4
            && self
                .peak
                .compare_exchange(peak, open, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            crate::heap::request_trim();
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then lets the
/// requests in flight finish (at most [`DRAIN_GRACE`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let limits = state.limiter.limits().clone();
    let cap = connections_cap(limits.connections_max);
    let permits = Arc::new(tokio::sync::Semaphore::new(cap));
    let refusals = Arc::new(tokio::sync::Semaphore::new(REFUSALS_DRAINING_MAX));
    let connections = Arc::new(Connections::default());
    let router = crate::router(state.clone());
    let (budget_stop, budget_stopped) = tokio::sync::watch::channel(false);
    let budget = tokio::spawn(engine::budget::watch(state.engine.clone(), budget_stopped));
    let gatherer = tokio::spawn(crate::metrics::gather(state));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(HEAD_BYTES_MAX)
        .max_buf_size(HEAD_BYTES_MAX)
        .keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "Accepting a connection failed.");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            ::metrics::counter!("lunchrush_requests_shed_total", "reason" => "connections")
                .increment(1);
            // One write into an empty socket buffer does not block; what
            // does not fit is dropped with the connection.
            let _ = stream.try_write(&REFUSAL);
            // Closing with the request unread would reset the connection and
            // could destroy the refusal before the client reads it: drain
            // briefly — a bounded number of refusals at a time.
            if let Ok(draining) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    linger(stream).await;
                    drop(draining);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        // The permit goes with the socket: it is given back only when the
        // socket is closed, drain included.
        let io = ProblemIo::new(stream, permit);
        let connection = http.serve_connection(TokioIo::new(io), service);
        let connection = graceful.watch(connection);
        let connections = connections.clone();
        connections.opened();
        tokio::spawn(async move {
            let _ = connection.await;
            connections.closed();
        });
    }
    drop(listener);
    gatherer.abort();
    let _ = budget_stop.send(true);
    budget.abort();
    if tokio::time::timeout(DRAIN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?DRAIN_GRACE, "Connections still open after the grace period; closing them.");
    }
    Ok(())
}

/// A request body that remembers whether it was read to its end.
struct Tracked {
    inner: axum::body::Body,
    done: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() {
            self.done.store(true, Ordering::Relaxed);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers `Connection: close` when the request's body was not read to its
/// end (refused before it was read: 401, 413, 415, 429, 503, 404): the
/// connection cannot carry another request, and a client must not put one
/// on it (it would find the connection closed under it).
pub async fn close_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let request = request.map(|inner| {
        axum::body::Body::new(Tracked {
            inner,
            done: done.clone(),
        })
    });
    let mut response = next.run(request).await;
    if !done.load(Ordering::Relaxed) {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// A TCP stream that turns hyper's own bare refusals (written before any
/// handler runs: 400 for a malformed head, 414, 431) into problem+json.
///
/// hyper writes such an answer as one status line plus `content-length: 0`
/// and no `content-type`, then closes; every answer of ours carries a
/// `content-type`. So a write that starts a response with one of those
/// statuses and has no `content-type` in its head is replaced, whole, by a
/// problem document of the same status. Writes are not vectored, so a head
/// always reaches us in one buffer.
///
/// It also closes politely: when hyper is done with a connection whose
/// client is still sending (a body refused before it was read: 413, 401,
/// 415), the socket is not closed at once (which would reset it and could
/// destroy the answer before the client read it) but drained for at most
/// [`LINGER_MAX`] or [`LINGER_BYTES_MAX`] first.
pub struct ProblemIo {
    inner: Option<TcpStream>,
    /// A replacement still being written, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
    /// This connection's place under the cap, held until the socket closes.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    /// Since a write could not proceed: a client that stops reading its
    /// answers is cut off after [`WRITE_STALL_MAX`].
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// How long a write may wait for the client to read, with no progress at all.
const WRITE_STALL_MAX: Duration = Duration::from_secs(30);

/// Refused connections drained at once at most (past it, closed at once).
const REFUSALS_DRAINING_MAX: usize = 64;

/// Reads and discards what a closing connection still sends, for at most
/// [`LINGER_MAX`] or [`LINGER_BYTES_MAX`], so that closing it does not reset
/// it before the client read our last answer.
async fn linger(mut stream: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    let mut drained = 0;
    let _ = tokio::time::timeout(LINGER_MAX, async {
        while drained < LINGER_BYTES_MAX {
            match tokio::io::AsyncReadExt::read(&mut stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

/// How long a closed connection's unread input is drained at most.
const LINGER_MAX: Duration = Duration::from_secs(2);
/// How many bytes of it at most.
const LINGER_BYTES_MAX: usize = 1024 * 1024;

impl ProblemIo {
    pub fn new(inner: TcpStream, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self {
            inner: Some(inner),
            pending: None,
            permit: Some(permit),
            stalled: None,
        }
    }

    /// Turns a write that made no progress for [`WRITE_STALL_MAX`] into an
    /// error (so the connection ends); any progress resets the clock.
    fn watch_stall<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let stall = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_MAX)));
        if stall.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading its answers",
            )));
        }
        Poll::Pending
    }

    fn stream(&mut self) -> &mut TcpStream {
        self.inner.as_mut().expect("taken only on drop")
    }

    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(
                Pin::new(self.inner.as_mut().expect("taken only on drop"))
                    .poll_write(cx, &bytes[*written..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }
}

/// hyper's own answer for a head it could not take, as a problem document.
pub fn replace_bare_refusal(buf: &[u8]) -> Option<Vec<u8>> {
    let rest = buf.strip_prefix(b"HTTP/1.1 ")?;
    let (code, status, title, detail) = match rest.get(..3)? {
        b"400" => (
            "malformed_request",
            "400 Bad Request",
            "Bad request",
            "the request line or a header is not valid HTTP/1.1",
        ),
        b"414" => (
            "uri_too_long",
            "414 URI Too Long",
            "URI too long",
            "the request target is too long",
        ),
        b"431" => (
            "headers_too_large",
            "431 Request Header Fields Too Large",
            "Request headers too large",
            "the request head is over 64 KiB or has more than 100 header fields",
        ),
        _ => return None,
    };
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") {
        return None;
    }
    let body = serde_json::json!({
        "type": format!("https://lunchrush.dev/problems/{}", code.replace('_', "-")),
        "title": title,
        "status": status[..3].parse::<u16>().unwrap_or(400),
        "detail": detail,
        "code": code,
    })
    .to_string();
    Some(
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            crate::problem::CONTENT_TYPE,
            body.len()
        )
        .into_bytes(),
    )
}

impl AsyncRead for ProblemIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.stream()).poll_read(cx, buf)
    }
}

impl AsyncWrite for ProblemIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let pending = self.poll_pending(cx);
        ready!(self.watch_stall(cx, pending))?;
        if let Some(replacement) = replace_bare_refusal(buf) {
            self.pending = Some((replacement, 0));
            // What hyper wrote is taken whole; the replacement goes out instead.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        let poll = Pin::new(self.stream()).poll_write(cx, buf);
        self.watch_stall(cx, poll)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let pending = self.poll_pending(cx);
        ready!(self.watch_stall(cx, pending))?;
        let poll = Pin::new(self.stream()).poll_flush(cx);
        self.watch_stall(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_pending(cx))?;
        Pin::new(self.stream()).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Drop for ProblemIo {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        let permit = self.permit.take();
        // Input still arriving: drain it for a while before closing.
        let mut probe = [0u8; 1];
        if !matches!(stream.try_read(&mut probe), Ok(n) if n > 0) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            // Still counted under the cap while it drains.
            let _permit = permit;
            linger(stream).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hyper's bare refusals are replaced; our own answers never are.
    #[test]
    fn only_bare_refusals_are_replaced() {
        let bare =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let replaced = String::from_utf8(replace_bare_refusal(bare).unwrap()).unwrap();
        assert!(replaced.starts_with("HTTP/1.1 431 "), "{replaced}");
        assert!(replaced.contains("application/problem+json"));
        assert!(replaced.contains("\"code\":\"headers_too_large\""));
        let (head, body) = replaced.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(replace_bare_refusal(ours).is_none());
        assert!(replace_bare_refusal(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
    }

    /// The canned refusal past the cap declares its body length exactly.
    #[test]
    fn the_refusal_is_well_formed() {
        let text = std::str::from_utf8(&REFUSAL).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{}",
            body.len()
        );
        let problem: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(problem["status"], 503);
    }
}
