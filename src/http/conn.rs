//! Connections: our own accept loop around warp's routes, because warp's `serve` builds hyper
//! without a timer (so hyper's header-read timeout is off), has no connection cap, and its
//! acceptor trait is sealed. Here:
//! - at most `max_connections` at once; past that, new connections get a plain `503` and are
//!   closed without reading a byte of their request;
//! - a request's headers must arrive within `header_timeout` (hyper's own timeout, with
//!   tokio's timer): a slowloris client is closed;
//! - a connection on which nothing moves either way for `idle_timeout` is closed (a keep-alive
//!   connection left open, a stalled upload). Viewers' streams send keepalives (WebSocket
//!   pings, Void elements on `/live.webm`) so a quiet broadcast never looks idle;
//! - a write that waits `write_timeout` for the peer to read is a stalled viewer (or
//!   download): the connection is closed and counted, for every kind of response alike;
//! - shutdown stops accepting and lets connections finish, within the caller's grace period;
//! - with TLS (`super::tls`), the handshake runs on the connection's task over the same
//!   timed stream, and must finish within `header_timeout`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use warp::Filter;

use super::bare;

/// Connection limits, from the command line.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Connections served at once; more get 503.
    pub max_connections: usize,
    /// Time for a request's headers to arrive.
    pub header_timeout: Duration,
    /// Time a connection may sit with nothing read or written.
    pub idle_timeout: Duration,
    /// Time a write may wait for the peer to read (`--viewer-timeout`): a viewer or download
    /// that accepts nothing this long is closed.
    pub write_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 10_000,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// The client's address, for handlers (warp's own `addr::remote` only works under its `serve`).
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub SocketAddr);

/// A filter giving the client's address, if known.
pub fn remote(
) -> impl Filter<Extract = (Option<SocketAddr>,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<RemoteAddr>().map(|remote: Option<RemoteAddr>| remote.map(|r| r.0))
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\
Content-Length: 36\r\nConnection: close\r\nRetry-After: 5\r\n\r\n\
too many connections; retry shortly\n";

/// Serves `filter` on `listener` until `stop` resolves, then stops accepting and waits for the
/// open connections to finish (the caller bounds that wait).
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: ConnLimits,
    on_stall: StallHook,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    stop: impl Future<Output = ()>,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let service = warp::service(filter);
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(stop);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(%remote, "connection refused: too many connections");
            tokio::spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(BUSY)).await;
            });
            continue;
        };
        let service = service.clone();
        let idle = Idle::new(stream, limits, on_stall.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let served = match tls {
                None => serve_connection(idle, remote, service, builder, watcher, limits).await,
                // Boxed: inline, the TLS stream's state would make every connection's task
                // twice as large (4.9 KiB instead of 2.4 KiB for a plain one), about 2.4 KiB of
                // RSS per viewer.
                Some(acceptor) => {
                    Box::pin(async move {
                        let handshake =
                            tokio::time::timeout(limits.header_timeout, acceptor.accept(idle))
                                .await;
                        let stream = match handshake {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%remote, %error, "TLS handshake failed");
                                return Ok(());
                            }
                            Err(_) => {
                                tracing::debug!(%remote, "TLS handshake too slow; closed");
                                return Ok(());
                            }
                        };
                        serve_connection(stream, remote, service, builder, watcher, limits).await
                    })
                    .await
                }
            };
            if let Err(error) = served {
                tracing::debug!(%remote, %error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one connection: an endless stream's `GET` is answered on the bare connection (see
/// [`super::bare`]); anything else goes to hyper, with what was read put back.
async fn serve_connection<S, Svc>(
    mut io: S,
    remote: SocketAddr,
    mut service: Svc,
    builder: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    limits: ConnLimits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    // warp's service, for both kinds of request (its type cannot be named).
    Svc: Service<bare::Request, Response = warp::reply::Response, Error = Infallible>
        + Service<Request<Incoming>, Response = warp::reply::Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <Svc as Service<Request<Incoming>>>::Future: Send + 'static,
{
    match bare::read_head(&mut io, limits.header_timeout).await {
        bare::Head::Gone => Ok(()),
        bare::Head::Endless { mut request, extra } => {
            request.extensions_mut().insert(RemoteAddr(remote));
            let Ok(response) = Service::<bare::Request>::call(&mut service, request).await;
            if let Err(error) = bare::respond(&mut io, response, extra).await {
                tracing::debug!(%remote, %error, "stream connection ended");
            }
            Ok(())
        }
        // Boxed: hyper's connection is large, and it would size every task, a `/live.webm`
        // viewer's too, although it lives only as long as plain requests (an upgraded
        // WebSocket runs on a task of its own).
        bare::Head::Other(read) => {
            Box::pin(async move {
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(RemoteAddr(remote));
                    let mut service = service.clone();
                    Service::<Request<Incoming>>::call(&mut service, request)
                });
                let io = TokioIo::new(bare::Rewind::new(read, io));
                let connection = builder.serve_connection_with_upgrades(io, service);
                watcher.watch(connection.into_owned()).await
            })
            .await
        }
    }
}

/// A stream that fails with `TimedOut` once nothing has been read or written for
/// `idle_timeout`, or once a write has waited `write_timeout` (the peer reads nothing: a
/// stalled viewer or download), counting the latter with `on_stall`.
///
/// Deadlines are lazy: progress only notes the time, and the one timer is re-armed when it
/// fires early or must fire sooner (a write starts waiting). So a busy connection costs a
/// clock read per operation, not a timer update per write.
struct Idle {
    stream: TcpStream,
    limits: ConnLimits,
    /// When something was last read or written.
    last_progress: Instant,
    /// Since when the current write has been waiting, if one is.
    write_waiting_since: Option<Instant>,
    timer: Pin<Box<Sleep>>,
    on_stall: StallHook,
    /// Set once the connection has failed, so a stall is counted once.
    failed: bool,
}

/// Called once for each connection closed because its writes stayed blocked.
pub type StallHook = Arc<dyn Fn() + Send + Sync>;

impl Idle {
    fn new(stream: TcpStream, limits: ConnLimits, on_stall: StallHook) -> Self {
        let now = Instant::now();
        Idle {
            stream,
            limits,
            last_progress: now,
            write_waiting_since: None,
            timer: Box::pin(tokio::time::sleep_until(now + limits.idle_timeout)),
            on_stall,
            failed: false,
        }
    }

    /// When the connection times out, and whether that would be a blocked write.
    fn deadline(&self) -> (Instant, bool) {
        let idle = self.last_progress + self.limits.idle_timeout;
        match self.write_waiting_since {
            Some(since) if since + self.limits.write_timeout < idle => {
                (since + self.limits.write_timeout, true)
            }
            _ => (idle, false),
        }
    }

    /// The one rule for every read and write: progress notes the time; a pending operation
    /// fails with `TimedOut` once its deadline has passed (polling the timer registers the
    /// waker, so the task wakes when it fires).
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
        progressed: impl FnOnce(&T) -> bool,
        writing: bool,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(Ok(value)) => {
                if progressed(&value) {
                    self.last_progress = Instant::now();
                    if writing {
                        self.write_waiting_since = None;
                    }
                }
                Poll::Ready(Ok(value))
            }
            Poll::Pending => {
                if writing && self.write_waiting_since.is_none() {
                    self.write_waiting_since = Some(Instant::now());
                }
                match self.expired(cx) {
                    Some(error) => Poll::Ready(Err(error)),
                    None => Poll::Pending,
                }
            }
            failed => failed,
        }
    }

    /// The timeout error if the deadline has passed; otherwise arms the timer for it.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<std::io::Error> {
        loop {
            let (deadline, stalled) = self.deadline();
            if self.failed || Instant::now() >= deadline {
                if stalled && !self.failed {
                    (self.on_stall)();
                }
                self.failed = true;
                let what = if stalled {
                    "the peer accepted nothing for too long"
                } else {
                    "connection idle too long"
                };
                return Some(std::io::Error::new(std::io::ErrorKind::TimedOut, what));
            }
            if self.timer.deadline() > deadline {
                self.timer.as_mut().reset(deadline);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return None,
                // Fired for an earlier deadline that progress has since moved: re-arm.
                Poll::Ready(()) => self.timer.as_mut().reset(deadline),
            }
        }
    }
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        let after = buf.filled().len();
        self.watch(cx, polled, |_| after > before, false)
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write(cx, data);
        self.watch(cx, polled, |n| *n > 0, true)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.stream).poll_write_vectored(cx, data);
        self.watch(cx, polled, |n| *n > 0, true)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
