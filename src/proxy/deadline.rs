//! Read and write timeouts on an upstream connection (Kong's: the longest wait between two successive
//! reads, or writes), kept off the per-request cost. An operation that has to wait only records its
//! deadline; the connection's one timer is re-armed when it fires before that deadline, at most once
//! per timeout period. Written here because the general-purpose wrapper re-arms its timer on every
//! wait, two timer-wheel updates per proxied request.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pin_project! {
    /// A stream whose reads and writes fail with `TimedOut` after waiting longer than their timeout.
    #[derive(Debug)]
    pub struct DeadlineStream<S> {
        #[pin]
        inner: S,
        #[pin]
        timer: Sleep,
        // The timer will fire at its deadline (false once it fired with nothing waiting).
        armed: bool,
        read_timeout: Duration,
        write_timeout: Duration,
        // Deadlines of the read and the write that are waiting, if any.
        reading: Option<Instant>,
        writing: Option<Instant>,
        // Whether reads have a deadline (see `time_reads`).
        timed_reads: bool,
    }
}

impl<S> DeadlineStream<S> {
    pub fn new(inner: S, read_timeout: Duration, write_timeout: Duration) -> DeadlineStream<S> {
        DeadlineStream {
            inner,
            timer: tokio::time::sleep(Duration::ZERO),
            armed: false,
            read_timeout,
            write_timeout,
            reading: None,
            writing: None,
            timed_reads: true,
        }
    }

    /// Turns the read timeout on or off. Off while a request is still being written (the response is
    /// read early only to notice an upstream that answers before the whole body is sent; the read
    /// timeout counts from the end of the request, as nginx's does) and for an idle connection's
    /// liveness check.
    pub fn time_reads(self: Pin<&mut Self>, on: bool) {
        let this = self.project();
        *this.timed_reads = on;
        if !on {
            *this.reading = None;
        }
    }
}

/// Called when an operation must wait: records its deadline and makes sure the timer will wake the
/// task by then. Returns an error once the deadline has passed.
fn wait(
    mut timer: Pin<&mut Sleep>,
    armed: &mut bool,
    own: &mut Option<Instant>,
    other: Option<Instant>,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> io::Result<()> {
    let now = Instant::now();
    let deadline = *own.get_or_insert(crate::clock::deadline(now.into_std(), timeout).into());
    if deadline <= now {
        *own = None;
        return Err(io::ErrorKind::TimedOut.into());
    }
    loop {
        if !*armed || timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
            *armed = true;
        }
        if timer.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        // The timer fired before this deadline (it was set for an earlier wait): move it on.
        let next = other.map_or(deadline, |o| o.min(deadline));
        if next <= Instant::now() {
            *own = None;
            return Err(io::ErrorKind::TimedOut.into());
        }
        timer.as_mut().reset(next);
    }
}

impl<S: AsyncRead> AsyncRead for DeadlineStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        match this.inner.poll_read(cx, buf) {
            Poll::Ready(r) => {
                *this.reading = None;
                Poll::Ready(r)
            }
            Poll::Pending if !*this.timed_reads => Poll::Pending,
            Poll::Pending => {
                wait(this.timer, this.armed, this.reading, *this.writing, *this.read_timeout, cx)?;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite> AsyncWrite for DeadlineStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write(cx, buf) {
            Poll::Ready(r) => {
                *this.writing = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                wait(this.timer, this.armed, this.writing, *this.reading, *this.write_timeout, cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        match this.inner.poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                *this.writing = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                wait(this.timer, this.armed, this.writing, *this.reading, *this.write_timeout, cx)?;
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        ready!(this.inner.poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_read_that_waits_too_long_times_out() {
        let (a, _b) = tokio::io::duplex(64);
        let mut s = Box::pin(DeadlineStream::new(a, Duration::from_millis(100), Duration::from_secs(1)));
        let mut buf = [0u8; 8];
        let err = s.read(&mut buf).await.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_that_keep_coming_never_time_out() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = Box::pin(DeadlineStream::new(a, Duration::from_millis(100), Duration::from_secs(1)));
        let writer = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(60)).await;
                b.write_all(b"x").await.expect("write");
            }
            b
        });
        let mut buf = [0u8; 1];
        for _ in 0..10 {
            s.read_exact(&mut buf).await.expect("each byte arrives within the timeout");
        }
        drop(writer.await);
    }

    #[tokio::test(start_paused = true)]
    async fn reads_wait_without_a_deadline_while_read_timing_is_off() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut s = Box::pin(DeadlineStream::new(a, Duration::from_millis(100), Duration::from_secs(1)));
        s.as_mut().time_reads(false);
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            b.write_all(b"x").await.expect("write");
            b
        });
        let mut buf = [0u8; 1];
        s.read_exact(&mut buf).await.expect("no timeout while reads are untimed");
        s.as_mut().time_reads(true);
        let err = s.read(&mut buf).await.expect_err("timed again");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(writer.await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_that_cannot_proceed_times_out() {
        let (a, _b) = tokio::io::duplex(8);
        let mut s = Box::pin(DeadlineStream::new(a, Duration::from_secs(1), Duration::from_millis(100)));
        let err = s.write_all(&[0u8; 64]).await.expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
