//! Progress deadlines: a stream or connection that waits on its client longer than the
//! service's `idle_timeout_ms` in the middle of a request is ended, so that a stalled or
//! vanished client cannot keep a slot or in-flight budget.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tonic::Status;

/// `fut`, or DEADLINE_EXCEEDED once it has waited `limit` on the client (`waiting_for`
/// says on what).
pub(crate) async fn within<T>(
    limit: Duration,
    waiting_for: &str,
    fut: impl Future<Output = T>,
) -> Result<T, Status> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| idle_status(limit, waiting_for))
}

pub(crate) fn idle_status(limit: Duration, waiting_for: &str) -> Status {
    Status::deadline_exceeded(format!(
        "no progress from the client for {limit:?} ({waiting_for}); request ended"
    ))
}

/// A reader or writer whose every read or write fails with `TimedOut` once it has made
/// no progress for `limit` while the limit is on; off, it waits as long as it takes
/// (a connection at rest between requests).
pub(crate) struct IdleLimit<T> {
    inner: T,
    limit: Duration,
    on: bool,
    /// Armed when an operation first found the peer not ready; reset on progress.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<T> IdleLimit<T> {
    pub(crate) fn new(inner: T, limit: Duration) -> IdleLimit<T> {
        IdleLimit {
            inner,
            limit,
            on: true,
            stall: None,
        }
    }

    /// Turns the limit on (inside a request) or off (between requests).
    pub(crate) fn set_on(&mut self, on: bool) {
        self.on = on;
        self.stall = None;
    }

    /// Called with the inner operation's poll: progress disarms the clock; a wait arms
    /// it (once) and, past the limit, becomes a `TimedOut` error.
    fn track<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() || !self.on {
            self.stall = None;
            return polled;
        }
        let limit = self.limit;
        let stall = self
            .stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        ready!(stall.as_mut().poll(cx));
        self.stall = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no progress from the client for {limit:?}"),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleLimit<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.track(cx, polled)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleLimit<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.track(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.track(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.track(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
