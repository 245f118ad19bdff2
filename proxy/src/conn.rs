//! Byte-for-byte splicing of two streams with half-close, byte counters and an idle timeout.
//!
//! Memory is spent only on connections that move data. Each direction borrows a copy buffer
//! from a small per-thread pool when it reads, keeps it while what it read is not yet written,
//! and gives it back as soon as its read would block with nothing left to write: an open but
//! quiet connection holds no copy buffer at all (with 1,000 open connections this took the two
//! proxies of `bench/proxy.sh` from about 40 to about 14 KiB per connection each). While data
//! streams, a direction reads whatever is ready up to a whole buffer before it writes, so TLS
//! records and socket writes are as large as possible (in alternating bulk runs of
//! `bench/proxy.sh`, 64 KiB buffers moved 464–795 MB/s, 16 KiB ones 307–475).

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Size of a copy buffer: the most a direction reads before it writes.
pub const BUF: usize = 64 * 1024;

/// Free buffers kept per runtime thread for reuse (the rest go back to the allocator).
const POOL_MAX: usize = 4;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A buffer of [`BUF`] bytes, from the pool when it has one.
fn take_buf() -> Box<[u8]> {
    POOL.try_with(|p| p.try_borrow_mut().ok().and_then(|mut p| p.pop()))
        .ok()
        .flatten()
        .unwrap_or_else(|| vec![0; BUF].into_boxed_slice())
}

/// Returns a buffer to the pool, or frees it when the pool is full.
fn give_buf(buf: Box<[u8]>) {
    let _ = POOL.try_with(|p| {
        if let Ok(mut p) = p.try_borrow_mut() {
            if p.len() < POOL_MAX {
                p.push(buf);
            }
        }
    });
}

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

/// One direction of a splice: reads from one side, writes to the other.
#[derive(Default)]
struct Half {
    /// Borrowed from the pool while `pos..cap` holds bytes not yet written.
    buf: Option<Box<[u8]>>,
    pos: usize,
    cap: usize,
    /// The reader reached end of stream.
    read_done: bool,
    /// The writer has accepted bytes since its last flush.
    need_flush: bool,
    /// End of stream passed on: the writer is shut down.
    done: bool,
    /// Bytes read (and, once done, written).
    amt: u64,
}

impl Drop for Half {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            give_buf(b);
        }
    }
}

impl Half {
    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            give_buf(b);
        }
    }

    /// Copies until the reader's end of stream has been passed on as the writer's shutdown.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
    ) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            // Write out what is held.
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    break;
                };
                match writer.as_mut().poll_write(cx, &buf[self.pos..self.cap]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "write zero bytes",
                        )))
                    }
                    Poll::Ready(Ok(n)) => {
                        self.pos += n;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.pos = 0;
            self.cap = 0;
            if self.read_done {
                self.release();
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                ready!(writer.as_mut().poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(self.amt));
            }
            // Read what is ready, up to a full buffer, so the writes are as large as possible.
            let buf = self.buf.get_or_insert_with(take_buf);
            let mut rb = ReadBuf::new(&mut buf[..]);
            let read_err = loop {
                let before = rb.filled().len();
                match reader.as_mut().poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => {
                        if rb.filled().len() == before {
                            self.read_done = true;
                            break None;
                        }
                        if rb.remaining() == 0 {
                            break None;
                        }
                    }
                    Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                    Poll::Ready(Err(e)) => break Some(e),
                    Poll::Pending => break None,
                }
            };
            self.cap = rb.filled().len();
            self.amt += self.cap as u64;
            if let Some(e) = read_err {
                return Poll::Ready(Err(e));
            }
            if self.cap == 0 && !self.read_done {
                // Nothing to write until the reader wakes us: the buffer goes back to the pool,
                // and what the writer still holds (rustls records) goes out.
                self.release();
                if self.need_flush {
                    ready!(writer.as_mut().poll_flush(cx))?;
                    self.need_flush = false;
                }
                return Poll::Pending;
            }
        }
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
    let (mut ab, mut ba) = (Half::default(), Half::default());
    let result = {
        let copy = std::future::poll_fn(|cx| {
            if !ab.done {
                if let Poll::Ready(Err(e)) = ab.poll_copy(cx, Pin::new(&mut a), Pin::new(&mut b)) {
                    return Poll::Ready(Err(e));
                }
                // Reading TLS records can queue records to send back with no data to carry
                // them (a no_renegotiation alert, a key update): send them now, not with the
                // next write. A no-op when nothing is queued; a failure shows on the next I/O.
                let _ = Pin::new(&mut a).poll_flush(cx);
            }
            if !ba.done {
                if let Poll::Ready(Err(e)) = ba.poll_copy(cx, Pin::new(&mut b), Pin::new(&mut a)) {
                    return Poll::Ready(Err(e));
                }
            }
            if ab.done && ba.done {
                Poll::Ready(Ok((ab.amt, ba.amt)))
            } else {
                Poll::Pending
            }
        });
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

    /// Polls one direction once.
    async fn poll_once<R, W>(half: &mut Half, r: &mut R, w: &mut W) -> Poll<io::Result<u64>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        std::future::poll_fn(|cx| {
            Poll::Ready(half.poll_copy(cx, Pin::new(&mut *r), Pin::new(&mut *w)))
        })
        .await
    }

    #[tokio::test]
    async fn a_quiet_direction_holds_no_copy_buffer() {
        let (mut peer, mut reader) = tokio::io::duplex(4096);
        let (mut writer, mut app) = tokio::io::duplex(4096);
        let mut half = Half::default();
        assert!(poll_once(&mut half, &mut reader, &mut writer)
            .await
            .is_pending());
        assert!(half.buf.is_none(), "nothing to read: no buffer");
        peer.write_all(b"request").await.expect("write");
        assert!(poll_once(&mut half, &mut reader, &mut writer)
            .await
            .is_pending());
        assert!(
            half.buf.is_none(),
            "all written, read would block: buffer returned"
        );
        let mut got = [0u8; 7];
        app.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"request");
        assert_eq!(half.amt, 7);
    }

    #[tokio::test]
    async fn a_blocked_writer_keeps_the_bytes_until_they_are_written() {
        let (mut peer, mut reader) = tokio::io::duplex(1 << 20);
        let (mut writer, mut app) = tokio::io::duplex(100);
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 253) as u8).collect();
        peer.write_all(&data).await.expect("write");
        drop(peer);
        let mut half = Half::default();
        let mut got = Vec::new();
        let mut chunk = [0u8; 1000];
        loop {
            match poll_once(&mut half, &mut reader, &mut writer).await {
                Poll::Ready(r) => {
                    assert_eq!(r.expect("copy"), 10_000);
                    break;
                }
                Poll::Pending => {
                    assert!(half.buf.is_some(), "bytes not yet written are kept");
                    let n = app.read(&mut chunk).await.expect("read");
                    got.extend_from_slice(&chunk[..n]);
                }
            }
        }
        assert!(half.buf.is_none());
        app.read_to_end(&mut got).await.expect("read to EOF");
        assert_eq!(got, data, "byte-exact, then end of stream");
    }

    #[tokio::test]
    async fn megabytes_both_ways_at_once_are_byte_exact() {
        let (client, remote) = tokio::io::duplex(7000);
        let (local, app) = tokio::io::duplex(3000);
        let task = tokio::spawn(splice(
            remote,
            local,
            Duration::from_secs(10),
            Counter::default(),
            Counter::default(),
        ));
        let up: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let down: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 241) as u8).collect();
        let send_recv = |s: tokio::io::DuplexStream, out: Vec<u8>| async move {
            let (mut r, mut w) = tokio::io::split(s);
            let writer = tokio::spawn(async move {
                for c in out.chunks(12_345) {
                    w.write_all(c).await?;
                }
                w.shutdown().await
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.expect("read");
            writer.await.expect("join").expect("write");
            back
        };
        let (at_app, at_client) =
            tokio::join!(send_recv(app, down.clone()), send_recv(client, up.clone()));
        assert!(at_app == up, "client → app");
        assert!(at_client == down, "app → client");
        assert!(matches!(
            task.await.expect("join"),
            SpliceEnd::Done(5_000_000, 3_000_000)
        ));
        let pooled = POOL.with(|p| p.borrow().len());
        assert!(pooled <= POOL_MAX, "pool bounded: {pooled}");
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
