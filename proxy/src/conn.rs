//! Byte-for-byte splicing of two streams with half-close, byte counters and an idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Buffer size of each direction.
const BUF: usize = 16 * 1024;

/// When either direction last moved a byte.
struct Activity {
    base: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }
    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream whose reads are counted.
struct Metered<S> {
    inner: S,
    counter: Counter,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.counter.inc_by(n);
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// How a splice ended.
#[derive(Debug)]
pub enum SpliceEnd {
    /// Both directions reached end of stream: (bytes from remote, bytes to remote).
    Done(u64, u64),
    /// Nothing moved for the idle timeout.
    Idle,
    /// A read or write failed.
    Error(io::Error),
}

/// Copies `remote` ⇄ `local` until both directions end. An end of stream on one side is passed
/// on as a shutdown of the other side's write half (TLS close_notify, TCP FIN) while the other
/// direction keeps flowing. `rx` counts bytes read from `remote`, `tx` bytes read from `local`.
pub async fn splice<R, L>(
    remote: R,
    local: L,
    idle: Duration,
    rx: Counter,
    tx: Counter,
) -> SpliceEnd
where
    R: AsyncRead + AsyncWrite + Unpin,
    L: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(Activity {
        base: Instant::now(),
        last_ms: AtomicU64::new(0),
    });
    let mut a = Metered {
        inner: remote,
        counter: rx,
        activity: activity.clone(),
    };
    let mut b = Metered {
        inner: local,
        counter: tx,
        activity: activity.clone(),
    };
    let result = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, BUF, BUF);
        tokio::pin!(copy);
        loop {
            let deadline = activity.last() + idle;
            tokio::select! {
                r = &mut copy => break Some(r),
                _ = tokio::time::sleep_until(deadline) => {
                    if activity.last() + idle <= Instant::now() {
                        break None;
                    }
                }
            }
        }
    };
    match result {
        Some(Ok((ab, ba))) => SpliceEnd::Done(ab, ba),
        Some(Err(e)) => SpliceEnd::Error(e),
        None => SpliceEnd::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn copies_both_ways_with_half_close() {
        let (mut client, remote) = tokio::io::duplex(1024);
        let (local, mut app) = tokio::io::duplex(1024);
        let rx = Counter::default();
        let tx = Counter::default();
        let task = tokio::spawn(splice(
            remote,
            local,
            Duration::from_secs(10),
            rx.clone(),
            tx.clone(),
        ));
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let d2 = data.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&d2).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        app.read_to_end(&mut got).await.expect("app reads to EOF");
        assert_eq!(got, data);
        // The app still writes after the client's half-close.
        app.write_all(b"reply after half-close")
            .await
            .expect("write");
        app.shutdown().await.expect("shutdown");
        assert_eq!(writer.await.expect("join"), b"reply after half-close");
        assert!(matches!(
            task.await.expect("join"),
            SpliceEnd::Done(100_000, 22)
        ));
        assert_eq!(rx.get(), 100_000);
        assert_eq!(tx.get(), 22);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_end() {
        let (_client, remote) = tokio::io::duplex(64);
        let (local, _app) = tokio::io::duplex(64);
        let end = splice(
            remote,
            local,
            Duration::from_secs(30),
            Counter::default(),
            Counter::default(),
        )
        .await;
        assert!(matches!(end, SpliceEnd::Idle));
    }
}
